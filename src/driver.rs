//! The driver: one select loop that gathers events (signals, worker exits, timers), applies
//! them to the [`AppState`], asks the pure [`policy::decide`] what to do and carries it out
//! (fork, scopes over D-Bus, signals, temp dirs, sd_notify, logs).
//!
//! Decisions never happen here; IO never happens in the policy. The loop re-decides after every
//! action batch (each action changes the state, so this terminates) and sleeps until the next
//! event or the policy's wake-up time.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal as NixSignal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::app::AppName;
use crate::config::{self, Config, Limit, Loaded, RealHost};
use crate::lifecycle::{Event, Exit, StopReason, WorkerState};
use crate::memory::{self, CgroupLayout, CgroupRoot};
use crate::notify::Notifier;
use crate::policy::{self, Action, AppState, Policy};
use crate::readiness::{self, NotifySocket};
use crate::sockets::{self, Listener};
use crate::spawn::{self, Prepared, WorkerCommand};
use crate::systemd::{KillWho, ScopeSpec, Systemd};
use crate::tmpdir::TmpDirs;
use crate::{control, exitcode};
use crate::{monitor, worker_env};

/// How long systemd may take to create a scope before the worker is given up.
const SCOPE_JOB_DEADLINE: Duration = Duration::from_secs(30);
/// How long one attempt to reconnect to systemd may hold the main loop: a bus daemon that
/// was just restarted answers at once, but the manager may take a while to come back on it.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(3);
/// How long to wait for the stop job of an exited worker's scope: its main process is gone,
/// so the job is quick; if the manager is slow, the scope stops anyway without us waiting
/// (and a scope left over is stopped when found, see `stop_stray_scopes`).
const CLEANUP_STOP_WAIT: Duration = Duration::from_secs(3);

/// How kechid was started.
#[derive(Debug, Clone)]
pub struct Options {
    pub app: AppName,
    pub config_path: PathBuf,
    /// kechid's own environment (KECHI_* overrides, aliases, LANG...).
    pub env: BTreeMap<String, String>,
    /// The unit whose `Environment=` a reload re-reads (`kechi@APP.service`), if any.
    pub unit: Option<String>,
    /// Where kechid keeps its runtime files (`/run/kechi` as root).
    pub runtime_dir: PathBuf,
}

/// What kechid knows about one running worker beyond the policy's view.
#[derive(Debug)]
struct Proc {
    pid: Pid,
    scope: Option<String>,
    /// The fingerprint of the configuration it was started with (see `config_fingerprint`).
    config: u64,
    jemalloc: Option<bool>,
    /// Set when kechid's monitor killed it for memory (foreground mode).
    monitor_oom: bool,
}

/// The identity workers run as.
#[derive(Debug, Clone)]
struct Identity {
    name: String,
    home: PathBuf,
    uid: Uid,
    gid: Gid,
    /// Whether kechid must switch to it (it is not kechid's own).
    switch: bool,
}

fn resolve_identity(c: &Config) -> Result<Identity, String> {
    let me = Uid::effective();
    let name = match (&c.user, me.is_root()) {
        (Some(u), _) => u.clone(),
        (None, true) => config::DEFAULT_USER.to_owned(),
        (None, false) => User::from_uid(me)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| me.to_string()),
    };
    let user = User::from_name(&name)
        .map_err(|e| format!("looking up user {name}: {e}"))?
        .ok_or_else(|| format!("user {name} does not exist"))?;
    let gid = match &c.group {
        Some(g) => {
            nix::unistd::Group::from_name(g)
                .map_err(|e| format!("looking up group {g}: {e}"))?
                .ok_or_else(|| format!("group {g} does not exist"))?
                .gid
        }
        None => user.gid,
    };
    if !me.is_root() && (user.uid != me || gid != Gid::effective()) {
        return Err(format!(
            "kechid runs as uid {me} and cannot start workers as {name}; run it as root or drop `user`"
        ));
    }
    Ok(Identity {
        name,
        home: user.dir,
        uid: user.uid,
        gid,
        switch: me.is_root(),
    })
}

/// The config as loaded from the file, kechid's environment and (on reload) the unit's.
fn load_config(
    opts: &Options,
    unit_env: Option<&BTreeMap<String, String>>,
) -> Result<Loaded, config::ConfigErrors> {
    let mut env = opts.env.clone();
    if let Some(u) = unit_env {
        // The unit's current Environment= wins over what kechid was started with: that is how
        // `systemctl edit` + daemon-reload + reload changes policy without a restart.
        env.retain(|k, _| !k.starts_with("KECHI_") && !config::ALIASES.contains(&k.as_str()));
        env.extend(u.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    config::load(&opts.config_path, &env, &RealHost)
}

/// Runs the app until stopped; returns kechid's exit code.
pub async fn run<S: Systemd>(
    opts: Options,
    systemd: Option<S>,
    loaded: Loaded,
    mut inherited: Vec<Listener>,
) -> i32 {
    // (looked up again for every worker; here a wrong user stops kechid before anything runs)
    if let Err(e) = resolve_identity(&loaded.config) {
        tracing::error!(APP = %opts.app, "{e}");
        return exitcode::CONFIG;
    }
    let mut listeners = match sockets::bind_configured(&loaded.config.listen, &mut inherited) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(APP = %opts.app, "{e}");
            return exitcode::FAILURE;
        }
    };
    // Socket activation first (fds 3.. in the order systemd gave them), then `listen`.
    inherited.append(&mut listeners);
    let listeners = inherited;
    for l in &listeners {
        tracing::info!(APP = %opts.app, "listening socket {} ({})", l.address, l.name);
    }
    let (exit_tx, exit_rx) = mpsc::unbounded_channel();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let control_gid = group_id(&loaded.config);
    let control_group: crate::control_server::ControlGroup =
        std::sync::Arc::new(std::sync::Mutex::new(control_gid));
    match crate::control_server::bind(&opts.runtime_dir, &opts.app, control_gid) {
        Ok(listener) => {
            tokio::spawn(crate::control_server::serve(
                listener,
                control_group.clone(),
                control_tx,
            ));
        }
        Err(e) => {
            tracing::warn!(APP = %opts.app, "no control socket ({e}): kechictl status and recycle will not reach this kechid")
        }
    }
    let c = &loaded.config;
    let tmpdirs = TmpDirs::new(
        &opts.app,
        c.tmpdir.size.0,
        Uid::effective().is_root(),
        &opts.runtime_dir,
    );
    let layout = if systemd.is_some() {
        memory::probe_layout(&CgroupRoot::new("/sys/fs/cgroup")).ok()
    } else {
        None
    };
    let mut d = Driver {
        policy: seeded(effective(Policy::from_config(c), &listeners, &opts.app)),
        loaded,
        systemd,
        state: AppState::default(),
        procs: HashMap::new(),
        tmpdirs,
        layout,
        notifier: Notifier,
        exit_tx,
        last_serial: 0,
        last_status: String::new(),
        last_event: None,
        history: std::collections::VecDeque::new(),
        control_rx,
        control_group,
        samples: 0,
        last_detailed: HashMap::new(),
        slice_oom_kills: None,
        global_oom_kills: read_vmstat_oom_kills(),
        notify_socket: None,
        listeners,
        link: crate::link::LinkWatch::default(),
        opts,
    };
    // Before the first worker: the slice may not exist yet, and then no kill has happened in it.
    d.slice_oom_kills = d.read_slice_oom_kills();
    d.notify_socket = match NotifySocket::bind(&d.opts.runtime_dir, &d.opts.app) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(APP = %d.opts.app, "cannot open the workers' notify socket in {}: {e}; READY=1 from workers will not be seen", d.opts.runtime_dir.display());
            None
        }
    };
    d.start().await;
    d.main_loop(exit_rx).await
}

struct Driver<S: Systemd> {
    opts: Options,
    loaded: Loaded,
    policy: Policy,
    systemd: Option<S>,
    state: AppState,
    procs: HashMap<u64, Proc>,
    tmpdirs: TmpDirs,
    layout: Option<CgroupLayout>,
    notifier: Notifier,
    exit_tx: mpsc::UnboundedSender<u64>,
    last_serial: u64,
    last_status: String,
    /// The last restart or recycle, for STATUS=.
    last_event: Option<(Instant, String)>,
    /// The last restarts and recycles, `UNIXTIME what`, oldest first.
    history: std::collections::VecDeque<String>,
    /// Memory samples taken so far.
    samples: u64,
    /// Each worker's last sample with full figures (PSS, USS, shared), for status and metrics.
    last_detailed: HashMap<u64, policy::MemSample>,
    /// Who may use the control socket besides root (follows reloads).
    control_group: crate::control_server::ControlGroup,
    /// Requests from kechictl, each with where to send the reply.
    control_rx: mpsc::UnboundedReceiver<(
        control::Request,
        tokio::sync::oneshot::Sender<control::Reply>,
    )>,
    /// OOM kills counted in the app's slice so far.
    slice_oom_kills: Option<u64>,
    /// OOM kills counted by the kernel (`/proc/vmstat`), for cgroup v1.
    global_oom_kills: Option<u64>,
    /// Where workers send READY=1.
    notify_socket: Option<NotifySocket>,
    /// The listening sockets handed to every worker.
    listeners: Vec<Listener>,
    /// Whether the D-Bus link to systemd is up, and when to retry it.
    link: crate::link::LinkWatch,
}

impl<S: Systemd> Driver<S> {
    fn app(&self) -> &AppName {
        &self.opts.app
    }

    fn config(&self) -> &Config {
        &self.loaded.config
    }

    /// The fingerprint of the configuration workers start with now (the config as loaded,
    /// overlay included), recorded per worker in the workers file.
    fn config_fingerprint(&self) -> u64 {
        crate::workers_file::fingerprint(&format!("{:?}", self.loaded.config))
    }

    fn serial_file(&self) -> PathBuf {
        self.opts
            .runtime_dir
            .join(self.app().as_str())
            .join("last-serial")
    }

    /// Continues the serial numbers of an earlier kechid, cleans what it left behind.
    async fn start(&mut self) {
        self.last_serial = std::fs::read_to_string(self.serial_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        self.adopt().await;
        for serial in self.tmpdirs.existing() {
            self.last_serial = self.last_serial.max(serial);
            if self.procs.contains_key(&serial) {
                continue;
            }
            if let Err(e) = self.tmpdirs.wipe(serial) {
                tracing::warn!(APP = %self.opts.app, "{e}");
            }
        }
        if self.systemd.is_none() {
            tracing::warn!(
                APP = %self.opts.app,
                "no systemd manager: workers run as plain children; memory.max is enforced by kechid's own monitor (sampled every {}), memory.high and memory.swap-max are not enforced",
                crate::quantity::format_duration(self.config().recycle.check_interval)
            );
        }
        if self.config().tmpdir.enabled && !self.tmpdirs.capped() {
            tracing::warn!(APP = %self.opts.app, "not root: temp dirs are not separate tmpfs mounts and tmpdir.size is not enforced");
        }
    }

    /// The listening sockets' `O_NONBLOCK` as the running workers have it ([`crate::sockflags`]).
    fn socket_flags_file(&self) -> PathBuf {
        self.opts
            .runtime_dir
            .join(self.app().as_str())
            .join("socket-flags")
    }

    fn record_socket_flags(&self) {
        // (every few seconds: a failure here is not worth a journal line each time; the next
        // kechid then leaves the flags as systemd gave them, as before)
        let _ = crate::sockflags::record(&self.socket_flags_file(), &self.listeners);
    }

    /// Returns the addresses of the listeners whose `O_NONBLOCK` came back on.
    fn restore_socket_flags(&self) -> Vec<String> {
        let mut on_again = Vec::new();
        for (address, on) in crate::sockflags::restore(&self.socket_flags_file(), &self.listeners) {
            tracing::info!(APP = %self.opts.app, "listening socket {address}: O_NONBLOCK {} again, as the running workers had it (systemd resets it at every start of kechid)", if on { "on" } else { "off" });
            if on {
                on_again.push(address);
            }
        }
        on_again
    }

    /// A worker thread that entered `accept` while systemd had `O_NONBLOCK` off (between the
    /// start of this kechid and [`Self::restore_socket_flags`]) stays blocked in it after the flag
    /// is back, and an event loop with it, its accepted connections unserved: under a load whose
    /// every connection it holds, no new connection comes to wake it (measured with uvicorn: no
    /// response for the whole step after a restart of kechid). One connection per such thread,
    /// closed at once, wakes them; a few rounds, as another process may take a knock first.
    async fn wake_blocked_accepts(&self, on_again: &[String]) {
        const ROUNDS: usize = 10;
        if on_again.is_empty() {
            return;
        }
        let pids: Vec<u32> = self
            .procs
            .keys()
            .flat_map(|s| self.worker_pids(*s))
            .collect();
        for l in self
            .listeners
            .iter()
            .filter(|l| on_again.contains(&l.address))
        {
            let Ok(st) = nix::sys::stat::fstat(&l.fd) else {
                continue;
            };
            let mut knocks = 0;
            for _ in 0..ROUNDS {
                let n = crate::accept::blocked_in_accept(Path::new("/proc"), &pids, st.st_ino);
                if n == 0 {
                    break;
                }
                knocks += (0..n)
                    .filter(|_| crate::sockflags::knock(l).is_ok())
                    .count();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if knocks > 0 {
                tracing::info!(APP = %self.opts.app, "listening socket {}: woke the worker threads blocked in accept() while O_NONBLOCK was off ({knocks} empty connections)", l.address);
            }
        }
    }

    fn workers_file(&self) -> PathBuf {
        self.opts
            .runtime_dir
            .join(self.app().as_str())
            .join("workers")
    }

    /// Records `SERIAL PID` of every worker, so a restarted kechid knows each scope's main
    /// process (the one it started) among the processes in it.
    fn save_workers(&self) {
        let entries: Vec<crate::workers_file::Entry> = self
            .procs
            .iter()
            .map(|(serial, p)| crate::workers_file::Entry {
                serial: *serial,
                pid: p.pid.as_raw(),
                // A draining worker must stay draining for the next kechid, not count as capacity.
                draining: match self.state.workers.get(serial).map(|w| &w.state) {
                    Some(WorkerState::Draining { reason, .. }) => Some(reason.clone()),
                    _ => None,
                },
                config: Some(p.config),
            })
            .collect();
        let text = crate::workers_file::render(&entries);
        let path = self.workers_file();
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::debug!("recording workers in {}: {e}", path.display());
        }
    }

    /// Takes over the workers an earlier kechid left running (restart, crash, upgrade):
    /// their scopes are found by name, their main process from the workers file (or as the
    /// session leader in the scope), and they are watched by pidfd. No second set is started.
    async fn adopt(&mut self) {
        let Some(sd) = &self.systemd else { return };
        let pattern = format!("kechi-{}-*.scope", self.opts.app);
        let units = match sd.list_units(&[pattern.as_str()]).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(APP = %self.opts.app, "listing earlier worker scopes: {e}");
                return;
            }
        };
        let entries = crate::workers_file::parse(
            &std::fs::read_to_string(self.workers_file()).unwrap_or_default(),
        );
        let mut draining: HashMap<u64, StopReason> = entries
            .iter()
            .filter_map(|e| Some((e.serial, e.draining.clone()?)))
            .collect();
        let recorded: HashMap<u64, i32> = entries.iter().map(|e| (e.serial, e.pid)).collect();
        let configs: HashMap<u64, u64> = entries
            .iter()
            .filter_map(|e| Some((e.serial, e.config?)))
            .collect();
        let current = self.config_fingerprint();
        let mut adopted = Vec::new();
        let mut stale = Vec::new();
        for u in units {
            let Some(serial) = self.opts.app.parse_scope_serial(&u.name) else {
                continue;
            };
            self.last_serial = self.last_serial.max(serial);
            if u.active_state != "active" {
                stale.push(u.name);
                continue;
            }
            let pids = sd.unit_pids(&u.name).await.unwrap_or_default();
            let main = recorded
                .get(&serial)
                .copied()
                .filter(|p| pids.contains(&(*p as u32)))
                .or_else(|| {
                    pids.iter().map(|p| *p as i32).find(|p| {
                        nix::unistd::getsid(Some(Pid::from_raw(*p))).ok() == Some(Pid::from_raw(*p))
                    })
                });
            match main
                .map(Pid::from_raw)
                .map(|pid| (pid, spawn::pidfd_open(pid)))
            {
                Some((pid, Ok(fd))) => adopted.push((serial, pid, fd, u.name)),
                _ => stale.push(u.name),
            }
        }
        let on_again = if adopted.is_empty() {
            Vec::new()
        } else {
            self.restore_socket_flags()
        };
        for name in stale {
            tracing::warn!(APP = %self.opts.app, "stopping {name}: no worker process to adopt in it");
            if let Err(e) = sd
                .stop_unit(&name, self.policy.stop_timeout + Duration::from_secs(5))
                .await
            {
                tracing::warn!(APP = %self.opts.app, "stopping {name}: {e}");
            }
        }
        let now = Instant::now();
        for (serial, pid, fd, scope) in adopted {
            tracing::info!(APP = %self.opts.app, WORKER = serial, PID = pid.as_raw(), "adopted running worker in {scope}");
            let started = process_start(pid).map_or(now, |age| now.checked_sub(age).unwrap_or(now));
            self.state
                .adopt(serial, started, draining.remove(&serial), now);
            let config = configs.get(&serial).copied().unwrap_or(current);
            if config != current
                && let Some(w) = self.state.workers.get_mut(&serial)
            {
                // Started with another configuration (a reload roll cut short, or the file
                // edited before this start): replaced as the reload would have.
                w.generation = self.state.generation.saturating_sub(1);
                tracing::info!(APP = %self.opts.app, WORKER = serial, "worker {serial} runs an older configuration: it will be replaced");
            }
            self.procs.insert(
                serial,
                Proc {
                    pid,
                    scope: Some(scope),
                    config,
                    jemalloc: None,
                    monitor_oom: false,
                },
            );
            self.watch_exit(serial, fd);
            self.check_jemalloc(serial);
        }
        self.save_workers();
        self.wake_blocked_accepts(&on_again).await;
    }

    async fn main_loop(&mut self, mut exits: mpsc::UnboundedReceiver<u64>) -> i32 {
        let (mut term, mut int, mut hup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            _ => {
                tracing::error!("cannot install signal handlers");
                return exitcode::FAILURE;
            }
        };
        let watchdog = self.notifier.watchdog_interval();
        let mut watchdog_tick =
            tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        let mut sample_tick = tokio::time::interval(self.config().recycle.check_interval);
        // While a worker starts in accept mode, look for it waiting on the sockets this often.
        let mut accept_tick = tokio::time::interval(Duration::from_millis(100));
        accept_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Decide and act until there is nothing left to do right now.
            let wake_at = loop {
                let decision = policy::decide(&self.state, &self.policy, Instant::now());
                if decision.actions.is_empty() {
                    break decision.wake_at;
                }
                for action in decision.actions {
                    if let Some(code) = self.act(action).await {
                        self.remove_runtime_files();
                        return code;
                    }
                }
            };
            self.update_status();
            let sleep = match wake_at {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = term.recv() => {
                    if self.is_restart().await {
                        tracing::info!(APP = %self.opts.app, "restarting: leaving {} workers running for the next kechid", self.procs.len());
                        self.save_workers();
                        self.record_socket_flags();
                        return exitcode::OK;
                    }
                    self.begin_shutdown("SIGTERM")
                }
                _ = int.recv() => self.begin_shutdown("SIGINT"),
                _ = hup.recv() => self.reload().await,
                Some(serial) = exits.recv() => self.on_exit(serial).await,
                Ok((pid, msg)) = recv_notify(self.notify_socket.as_ref()) => self.on_notify(pid, msg),
                Some((req, reply)) = self.control_rx.recv() => {
                    let r = self.on_control(req);
                    let _ = reply.send(r);
                }
                _ = sleep => {}
                _ = watchdog_tick.tick(), if watchdog.is_some() => self.notifier.watchdog(),
                _ = sample_tick.tick() => {
                    self.sample().await;
                    self.record_socket_flags();
                }
                _ = accept_tick.tick(), if self.awaiting_accept() => self.check_accept(),
                _ = link_lost(self.systemd.as_ref()), if self.link.is_up() => self.on_link_lost(),
                _ = sleep_until_opt(self.link.retry_at()) => { self.reconnect().await; }
            }
        }
    }

    fn on_control(&mut self, req: control::Request) -> control::Reply {
        match req {
            control::Request::Status {} => {
                // An operator asking gets the full figures, whatever the policies need.
                let serials: Vec<u64> = self.procs.keys().copied().collect();
                for serial in serials {
                    if let Some(sample) = self.sample_worker(serial, true)
                        && let Some(w) = self.state.workers.get_mut(&serial)
                    {
                        w.record_mem(sample, Instant::now());
                    }
                }
                control::Reply::ok(self.status())
            }
            control::Request::Recycle { worker, all } => {
                let candidates: Vec<u64> = self
                    .state
                    .live()
                    .map(|w| w.serial)
                    .filter(|s| {
                        !self
                            .state
                            .recycles
                            .iter()
                            .any(|r| r.new == *s || r.old == *s)
                    })
                    .collect();
                let serials = match (worker, all) {
                    (Some(n), false) if candidates.contains(&n) => vec![n],
                    (Some(n), false) => {
                        return control::Reply::error(
                            "NoSuchWorker",
                            format!(
                                "worker {n} is not a running worker of {} (running: {candidates:?})",
                                self.opts.app
                            ),
                        );
                    }
                    (None, true) => candidates,
                    _ => {
                        return control::Reply::error(
                            "InvalidParameter",
                            "give exactly one of worker or all",
                        );
                    }
                };
                tracing::info!(APP = %self.opts.app, REASON = "manual", "recycle requested for workers {serials:?}");
                self.state.requested.extend(serials.iter().copied());
                control::Reply::ok(control::RecycleReply { serials })
            }
        }
    }

    fn status(&self) -> control::Status {
        let now = Instant::now();
        let workers =
            self.state
                .workers
                .values()
                .map(|w| {
                    let p = self.procs.get(&w.serial);
                    control::WorkerStatus {
                        serial: w.serial,
                        pid: p.map_or(0, |p| p.pid.as_raw()),
                        scope: p.and_then(|p| p.scope.clone()),
                        state: w.state.name().to_owned(),
                        age_secs: now.saturating_duration_since(w.started).as_secs(),
                        generation: w.generation,
                        jemalloc: p.and_then(|p| p.jemalloc),
                        memory_bytes: self.worker_memory(w.serial),
                        memory: w.mem.as_ref().filter(|m| m.detailed).map(|m| {
                            control::WorkerMemory {
                                rss: m.total.rss,
                                pss: m.total.pss,
                                uss: m.total.uss,
                                shared: m.total.shared,
                                shared_percent: m.total.shared_percent(),
                                swap: m.total.swap,
                                cgroup: m.cgroup,
                                processes: m.processes,
                            }
                        }),
                        tmpdir_bytes: self
                            .loaded
                            .config
                            .tmpdir
                            .enabled
                            .then(|| tmpdir_used(&self.tmpdirs.path(w.serial)))
                            .flatten(),
                        tmpdir: self
                            .loaded
                            .config
                            .tmpdir
                            .enabled
                            .then(|| self.tmpdirs.path(w.serial)),
                    }
                })
                .collect();
        control::Status {
            app: self.opts.app.to_string(),
            kechid_pid: std::process::id(),
            generation: self.state.generation,
            workers_wanted: self.policy.workers,
            workers,
            summary: self.status_text(),
            events: self.history.iter().cloned().collect(),
            listening: self.listeners.iter().map(|l| l.address.clone()).collect(),
        }
    }

    /// After the last worker is gone: the control socket, workers file and metrics go; the last
    /// serial stays, so serials keep growing across stop and start. (A restart leaves all of
    /// them: the next kechid reads the workers file.)
    fn remove_runtime_files(&self) {
        let app = self.opts.app.as_str();
        let dir = &self.opts.runtime_dir;
        for f in [control::socket_path(dir, app), self.workers_file()] {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_file(
            crate::metrics::textfile_dir(dir).join(format!("kechi-{app}.prom")),
        );
        let _ = std::fs::remove_dir(dir.join(app).join("tmp"));
        // Without systemd no scope of this run can outlive it, so the next run owes nothing to
        // this one's serials: it starts at worker 1 again. (Under systemd the serial carries
        // over, so that a new kechid never names a worker after a scope still being torn down.)
        if self.systemd.is_none() && self.procs.is_empty() {
            let _ = std::fs::remove_file(self.serial_file());
            let _ = std::fs::remove_dir(dir.join(app));
        }
    }

    /// The bus daemon went away: workers keep running; reconnect with backoff.
    fn on_link_lost(&mut self) {
        self.link.lost(Instant::now());
        if self.systemd.as_ref().is_some_and(|sd| sd.can_reconnect()) {
            tracing::warn!(APP = %self.opts.app, "lost the D-Bus connection to systemd's manager; the workers keep running; reconnecting");
        } else {
            self.link.give_up();
            tracing::error!(APP = %self.opts.app, "lost the D-Bus connection to systemd's manager and cannot re-establish it");
        }
    }

    /// One attempt to re-establish a lost link; on success, stops the scopes that a failed
    /// stop left behind while the link was down. Returns whether the link is up.
    async fn reconnect(&mut self) -> bool {
        let Some(sd) = &self.systemd else { return true };
        if self.link.is_up() {
            return true;
        }
        let attempt = match tokio::time::timeout(RECONNECT_DEADLINE, sd.reconnect()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                crate::quantity::format_duration(RECONNECT_DEADLINE)
            )),
        };
        match attempt {
            Ok(()) => {
                let down = self.link.restored(Instant::now());
                tracing::info!(APP = %self.opts.app, "reconnected to systemd's manager after {}", crate::quantity::format_duration(down));
                self.stop_stray_scopes().await;
                true
            }
            Err(e) => {
                let next = self.link.failed(Instant::now());
                let msg = format!(
                    "reconnecting to systemd's manager (attempt {}): {e}; next in {}",
                    self.link.attempts,
                    crate::quantity::format_duration(
                        next.saturating_duration_since(Instant::now())
                    )
                );
                if self.link.attempts == 1 || self.link.attempts % 10 == 0 {
                    tracing::warn!(APP = %self.opts.app, "{msg}");
                } else {
                    tracing::debug!(APP = %self.opts.app, "{msg}");
                }
                false
            }
        }
    }

    /// Before a call that matters (a scope for a new worker, asking about a restart): a lost
    /// link gets one immediate attempt instead of waiting for its next retry.
    async fn ensure_link(&mut self) -> bool {
        // The main loop may not have seen the loss yet (it acts before it listens).
        if self.link.is_up() && self.systemd.as_ref().is_some_and(|sd| sd.link_is_closed()) {
            self.on_link_lost();
        }
        self.link.is_up() || self.reconnect().await
    }

    /// Stops this app's scopes that belong to no worker kechid knows: left behind when their
    /// stop could not reach systemd.
    async fn stop_stray_scopes(&mut self) {
        let Some(sd) = &self.systemd else { return };
        let pattern = format!("kechi-{}-*.scope", self.opts.app);
        let Ok(units) = sd.list_units(&[pattern.as_str()]).await else {
            return;
        };
        for u in units {
            let Some(serial) = self.opts.app.parse_scope_serial(&u.name) else {
                continue;
            };
            if self.procs.contains_key(&serial) || u.active_state != "active" {
                continue;
            }
            tracing::warn!(APP = %self.opts.app, WORKER = serial, "stopping {}: its worker is gone", u.name);
            if let Err(e) = sd
                .stop_unit(&u.name, self.policy.stop_timeout + Duration::from_secs(5))
                .await
            {
                tracing::warn!(APP = %self.opts.app, "stopping {}: {e}", u.name);
            }
        }
    }

    /// Whether this SIGTERM comes from `systemctl restart` (a restart job on kechid's unit).
    async fn is_restart(&mut self) -> bool {
        if !self.ensure_link().await {
            tracing::warn!(APP = %self.opts.app, "cannot ask systemd whether this is a restart (no D-Bus link); stopping the workers");
            return false;
        }
        let (Some(sd), Some(unit)) = (&self.systemd, &self.opts.unit) else {
            return false;
        };
        match sd.unit_job_type(unit).await {
            Ok(Some(t)) => t == "restart" || t == "try-restart" || t == "reload-or-restart",
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(APP = %self.opts.app, "asking systemd whether this is a restart: {e}; stopping the workers");
                false
            }
        }
    }

    /// Notes a restart or recycle for STATUS= and `kechictl status`.
    fn record(&mut self, what: String) {
        let now = Instant::now();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.history.push_back(format!("{wall} {what}"));
        while self.history.len() > 20 {
            self.history.pop_front();
        }
        self.last_event = Some((now, what));
    }

    fn begin_shutdown(&mut self, why: &str) {
        if !self.state.shutting_down {
            tracing::info!(APP = %self.opts.app, "{why}: stopping {} workers", self.state.live().count());
            self.state.shutting_down = true;
            self.notifier.stopping();
        }
    }

    async fn act(&mut self, action: Action) -> Option<i32> {
        match action {
            Action::Spawn => {
                self.spawn().await;
            }
            Action::MarkReady(serial) => {
                self.apply(serial, Event::BecameReady);
                self.check_jemalloc(serial);
                tracing::info!(APP = %self.opts.app, WORKER = serial, PID = self.pid_of(serial), "worker ready");
            }
            Action::Stop(serial, reason) => {
                let recycled = self.state.end_recycle(serial).is_some();
                self.stop(serial, reason.clone());
                if recycled {
                    self.record(format!("worker {serial} recycled ({})", reason.as_str()));
                }
            }
            Action::Replace { old, reason } => {
                self.state.requested.remove(&old);
                self.state.last_recycle = Some(Instant::now());
                let m = self
                    .state
                    .workers
                    .get(&old)
                    .and_then(|w| w.mem.clone())
                    .unwrap_or_default();
                tracing::info!(
                    APP = %self.opts.app, WORKER = old, PID = self.pid_of(old), REASON = reason.as_str(),
                    RSS = m.total.rss, PSS = m.total.pss, USS = m.total.uss, SHARED = m.total.shared, CGROUP = m.cgroup.unwrap_or(0),
                    "recycling worker ({}): starting its replacement first", self.figures(old)
                );
                let new = self.spawn().await;
                self.state
                    .recycles
                    .push(policy::Recycle { old, new, reason });
            }
            Action::SignalChild {
                serial,
                pid,
                signal,
            } => {
                let figures = self.figures(serial);
                tracing::info!(APP = %self.opts.app, WORKER = serial, PID = pid, REASON = "child-signal", "worker over memory.recycle-above ({figures}): signalling its largest child {pid} so the master replaces it");
                let sig = nix::sys::signal::Signal::try_from(signal).unwrap_or(NixSignal::SIGTERM);
                if let Err(e) = kill(Pid::from_raw(pid), sig) {
                    tracing::warn!(APP = %self.opts.app, WORKER = serial, "signalling child {pid}: {e}");
                }
                if let Some(w) = self.state.workers.get_mut(&serial) {
                    w.child_signaled = Some(Instant::now());
                }
                self.record(format!(
                    "child {pid} of worker {serial} signalled (child-signal)"
                ));
            }
            Action::DropRecycle {
                old,
                replacement_failed,
            } => {
                self.state.end_recycle(old);
                if replacement_failed {
                    tracing::warn!(APP = %self.opts.app, WORKER = old, "the replacement of worker {old} failed; worker {old} keeps serving");
                    self.record(format!("replacement of worker {old} failed"));
                }
            }
            Action::Kill(serial) => self.kill(serial).await,
            Action::NotifyReady => {
                self.state.ready_notified = true;
                let s = self.status_text();
                tracing::info!(APP = %self.opts.app, "all {} workers ready", self.policy.workers);
                self.notifier.ready(&s);
                self.last_status = s;
            }
            Action::Exit { code, why } => {
                if code == exitcode::OK {
                    tracing::info!(APP = %self.opts.app, "{why}");
                } else {
                    tracing::error!(APP = %self.opts.app, REASON = "crash-loop", "{why}; giving up");
                    self.stop_everything().await;
                }
                return Some(code);
            }
        }
        None
    }

    fn apply(&mut self, serial: u64, event: Event) {
        if let Err(e) = self
            .state
            .apply(serial, &event, Instant::now(), &self.policy)
        {
            // A bug, not an operational condition: log loudly, keep running.
            tracing::error!(APP = %self.opts.app, WORKER = serial, "{e}");
        } else if matches!(event, Event::BecameReady) {
            self.sample_on_ready(serial);
        }
    }

    /// A worker that just became ready is sampled at once: figures from before its readiness
    /// are not compared with others' (policy::Worker::fresh_metric), and this spares the
    /// memory policies a wait for the next periodic sample.
    fn sample_on_ready(&mut self, serial: u64) {
        if let Some(sample) = self.sample_worker(serial, true)
            && let Some(w) = self.state.workers.get_mut(&serial)
        {
            w.record_mem(sample, Instant::now());
        }
    }

    fn pid_of(&self, serial: u64) -> i32 {
        self.procs.get(&serial).map_or(0, |p| p.pid.as_raw())
    }

    /// Starts one worker; returns its serial (whether or not it started).
    async fn spawn(&mut self) -> u64 {
        self.last_serial += 1;
        let serial = self.last_serial;
        if let Some(parent) = self.serial_file().parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) = std::fs::write(self.serial_file(), serial.to_string()) {
            tracing::debug!("recording the serial: {e}");
        }
        self.state.add_spawning(serial, Instant::now());
        match self.start_worker(serial).await {
            Ok(proc) => {
                tracing::info!(APP = %self.opts.app, WORKER = serial, PID = proc.pid.as_raw(), "worker started{}", proc.scope.as_ref().map(|s| format!(" in {s}")).unwrap_or_default());
                self.procs.insert(serial, proc);
                self.save_workers();
                self.apply(serial, Event::Spawned);
            }
            Err(e) => {
                tracing::error!(APP = %self.opts.app, WORKER = serial, REASON = "spawn-failed", "worker failed to start: {e}");
                self.apply(serial, Event::SpawnFailed(e));
                self.record(format!("worker {serial} failed to start"));
                self.cleanup(serial, None).await;
            }
        }
        serial
    }

    async fn start_worker(&mut self, serial: u64) -> Result<Proc, String> {
        if self.systemd.is_some() && !self.ensure_link().await {
            return Err("systemd's manager is not reachable (the D-Bus link is down)".to_owned());
        }
        let c = self.loaded.config.clone();
        // Looked up again for every worker: a user deleted since kechid started must not leave
        // new workers running under a uid that no longer has a name (and may be reused).
        let id = resolve_identity(&c)?;
        let tmpdir = if c.tmpdir.enabled {
            Some(
                self.tmpdirs
                    .create(serial, id.uid, id.gid)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        let names: Vec<String> = self.listeners.iter().map(|l| l.name.clone()).collect();
        let ssp = sockets::server_starter_port(&self.listeners);
        let facts = worker_env::WorkerFacts {
            serial,
            user: Some((&id.name, &id.home)),
            tmpdir: tmpdir.as_deref(),
            notify_socket: self.notify_socket.as_ref().map(|n| n.path()),
            listen_names: &names,
            server_starter_port: ssp.as_deref(),
        };
        let env = worker_env::build(&c, &facts, &self.opts.env);
        let cmd = WorkerCommand {
            argv: c.command.clone(),
            env,
            directory: c.directory.clone(),
            ids: id.switch.then_some((id.uid, id.gid)),
            listen_fds: sockets::raw_fds(&self.listeners),
        };
        let mut prep = Prepared::new(&cmd).map_err(|e| e.to_string())?;
        let held = spawn::spawn_held(&mut prep).map_err(|e| e.to_string())?;
        let pid = held.pid;
        // Open the pidfd while the child is held: its exit can never be missed.
        let pidfd = spawn::pidfd_open(pid).map_err(|e| e.to_string());
        let scope = self.app().scope_unit(serial);
        let in_scope = if let Some(sd) = &self.systemd {
            let spec = ScopeSpec {
                unit: scope.clone(),
                slice: self.app().slice_unit(),
                description: format!("kechi {} worker {serial}", self.app()),
                pids: vec![pid.as_raw() as u32],
                memory_max: limit(c.memory.max),
                memory_high: limit(c.memory.high),
                memory_swap_max: c.memory.swap_max.map(limit),
                kill_signal: c.stop.signal.0 as i32,
                stop_timeout: c.stop.timeout,
            };
            Some(sd.start_scope(&spec, SCOPE_JOB_DEADLINE).await)
        } else {
            None
        };
        let fail = |e: String| {
            // Dropping the hold makes the child exit without running anything; reap it.
            let _ = waitpid(pid, None);
            e
        };
        match in_scope {
            Some(Err(e)) => {
                drop(held);
                return Err(fail(format!("creating {scope}: {e}")));
            }
            _ if pidfd.is_err() => {
                drop(held);
                return Err(fail(pidfd.err().unwrap_or_default()));
            }
            _ => {}
        }
        if let Err(e) = held.release().await {
            let _ = waitpid(pid, None);
            return Err(e.to_string());
        }
        if let Ok(fd) = pidfd {
            self.watch_exit(serial, fd);
        }
        Ok(Proc {
            pid,
            scope: self.systemd.as_ref().map(|_| scope),
            config: self.config_fingerprint(),
            jemalloc: None,
            monitor_oom: false,
        })
    }

    fn watch_exit(&self, serial: u64, pidfd: OwnedFd) {
        let tx = self.exit_tx.clone();
        tokio::spawn(async move {
            // SAFETY: the AsyncFd owns the pidfd; nothing else closes or replaces it.
            if let Ok(afd) =
                unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            {
                let _ = afd.readable().await;
            }
            let _ = tx.send(serial);
        });
    }

    fn stop(&mut self, serial: u64, reason: StopReason) {
        let was_live = self
            .state
            .workers
            .get(&serial)
            .is_some_and(|w| w.state.is_live());
        self.apply(serial, Event::StopRequested(reason.clone()));
        if !was_live {
            return;
        }
        let Some(pid) = self.procs.get(&serial).map(|p| p.pid) else {
            return;
        };
        let sig = self.loaded.config.stop.signal;
        tracing::info!(APP = %self.opts.app, WORKER = serial, PID = pid.as_raw(), REASON = reason.as_str(), "stopping worker with SIG{sig}");
        if matches!(reason, StopReason::Surplus | StopReason::ReadyTimeout) {
            self.record(format!("worker {serial} stopped ({})", reason.as_str()));
        }
        if let Err(e) = kill(pid, sig.0) {
            tracing::warn!(APP = %self.opts.app, WORKER = serial, "sending SIG{sig}: {e}");
        }
        self.save_workers();
    }

    async fn kill(&mut self, serial: u64) {
        self.apply(serial, Event::Killed);
        let Some(p) = self.procs.get(&serial) else {
            return;
        };
        tracing::warn!(APP = %self.opts.app, WORKER = serial, PID = p.pid.as_raw(), REASON = "stop-timeout", "worker did not stop within {}: SIGKILL", crate::quantity::format_duration(self.policy.stop_timeout));
        self.kill_all(serial).await;
    }

    /// SIGKILL to everything of a worker: its scope, or its session in foreground mode.
    async fn kill_all(&self, serial: u64) {
        let Some(p) = self.procs.get(&serial) else {
            return;
        };
        match (&self.systemd, &p.scope) {
            (Some(sd), Some(scope)) => {
                if let Err(e) = sd.kill_unit(scope, KillWho::All, libc::SIGKILL).await
                    && !matches!(e, crate::systemd::SystemdError::NoSuchUnit(_))
                {
                    tracing::warn!(APP = %self.opts.app, WORKER = serial, "killing {scope}: {e}");
                    let _ = kill(p.pid, NixSignal::SIGKILL);
                }
            }
            _ => {
                let _ = killpg(p.pid, NixSignal::SIGKILL);
            }
        }
    }

    async fn on_exit(&mut self, serial: u64) {
        let Some(p) = self.procs.get(&serial) else {
            return;
        };
        let pid = p.pid;
        let monitor_killed = p.monitor_oom;
        let exit = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Exit::Code { code },
            Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal { signal: sig as i32 },
            _ => Exit::Unknown,
        };
        let counters = if policy::needs_oom_counters(&exit, monitor_killed) {
            self.oom_counters(serial)
        } else {
            None
        };
        let exit = policy::classify_exit(exit, monitor_killed, counters.as_ref());
        let crashed = self
            .state
            .workers
            .get(&serial)
            .is_some_and(|w| w.state.is_live());
        let started = self.state.workers.get(&serial).map(|w| w.started);
        self.apply(serial, Event::Exited(exit.clone()));
        if crashed {
            let reason = policy::crash_reason(&exit);
            let backoff = self.policy.backoff_after(self.state.consecutive_crashes);
            tracing::warn!(APP = %self.opts.app, WORKER = serial, PID = pid.as_raw(), REASON = reason, "worker died unexpectedly: {exit}; replacing it after a backoff of {} ({} crashes in a row)", crate::quantity::format_duration(backoff), self.state.consecutive_crashes);
            self.record(format!("worker {serial} {reason}: {exit}"));
            // Died right after its start: the app's last stderr lines and a hint, off the loop.
            if let Some(started) = started {
                let (app, unit) = (&self.opts.app, self.opts.unit.as_deref());
                let (worker, command) = ((serial, pid.as_raw()), &self.config().command);
                crate::early_death::report(app, unit, worker, started, exit.to_string(), command);
            }
        } else {
            tracing::info!(APP = %self.opts.app, WORKER = serial, PID = pid.as_raw(), "worker stopped: {exit}");
        }
        self.cleanup(serial, Some(exit)).await;
    }

    /// The OOM-kill counters for [`policy::classify_exit`], moving the slice's and the kernel's
    /// baselines to now. The scope's own counter is gone as soon as systemd removes the emptied
    /// cgroup, so the app slice's counter is compared with its last known value. `None` without
    /// a memory controller.
    fn oom_counters(&mut self, serial: u64) -> Option<policy::OomCounters> {
        let layout = self.layout.as_ref()?;
        let scope = self
            .procs
            .get(&serial)
            .and_then(|p| p.scope.as_ref())
            .and_then(|scope| {
                let dirs = memory::scope_dir(layout, &self.opts.app.slice_unit(), scope).ok()?;
                memory::read_cgroup_mem(&dirs.memory, dirs.version)
                    .ok()?
                    .oom_kills
            });
        let cgroup_v1 = matches!(layout, CgroupLayout::V1 { .. });
        let slice_before = self.slice_oom_kills;
        self.slice_oom_kills = self.read_slice_oom_kills();
        let global_before = self.global_oom_kills;
        self.global_oom_kills = read_vmstat_oom_kills();
        Some(policy::OomCounters {
            scope,
            slice_before,
            slice_after: self.slice_oom_kills,
            global_before,
            global_after: self.global_oom_kills,
            cgroup_v1,
        })
    }

    fn read_slice_oom_kills(&self) -> Option<u64> {
        let layout = self.layout.as_ref()?;
        let dirs = layout
            .dirs(&memory::slice_path(&self.opts.app.slice_unit()).ok()?)
            .ok()?;
        memory::read_cgroup_mem(&dirs.memory, dirs.version)
            .ok()?
            .oom_kills
    }

    /// After a worker's main process ended: take down what is left of its scope, wipe its temp
    /// dir, forget it.
    async fn cleanup(&mut self, serial: u64, _exit: Option<Exit>) {
        if let Some(p) = self.procs.remove(&serial) {
            if let (Some(sd), Some(scope)) = (&self.systemd, &p.scope) {
                // Children a prefork master left behind must not keep serving on their own.
                match sd.stop_unit(scope, CLEANUP_STOP_WAIT).await {
                    Ok(_) | Err(crate::systemd::SystemdError::NoSuchUnit(_)) => {}
                    Err(e @ crate::systemd::SystemdError::JobTimeout { .. }) => {
                        tracing::debug!(APP = %self.opts.app, WORKER = serial, "stopping {scope}: {e}")
                    }
                    Err(e) => {
                        tracing::warn!(APP = %self.opts.app, WORKER = serial, "stopping {scope}: {e}")
                    }
                }
            } else if self.systemd.is_none() {
                let _ = killpg(p.pid, NixSignal::SIGKILL);
            }
        }
        if self.loaded.config.tmpdir.enabled
            && let Err(e) = self.tmpdirs.wipe(serial)
        {
            tracing::warn!(APP = %self.opts.app, WORKER = serial, "wiping temp dir: {e}");
        }
        self.state.reap_gone();
        self.save_workers();
    }

    /// Stops every worker at once without waiting for grace (used when giving up).
    async fn stop_everything(&mut self) {
        let serials: Vec<u64> = self.procs.keys().copied().collect();
        for serial in serials {
            self.kill_all(serial).await;
            if let Some(p) = self.procs.get(&serial) {
                let _ = waitpid(p.pid, None);
            }
            self.cleanup(serial, None).await;
        }
    }

    fn check_jemalloc(&mut self, serial: u64) {
        if !self.loaded.config.jemalloc.enabled {
            return;
        }
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{}/maps", p.pid)) else {
            return;
        };
        let loaded = crate::jemalloc::maps_has_jemalloc(&maps);
        if p.jemalloc.is_none() && !loaded {
            tracing::warn!(APP = %self.opts.app, WORKER = serial, PID = p.pid.as_raw(), "jemalloc is not loaded in the worker (a static or setuid binary ignores LD_PRELOAD); it runs with its own allocator");
        }
        p.jemalloc = Some(loaded);
    }

    /// Periodic sampling: every worker's memory (per process from smaps_rollup, and its
    /// cgroup's charge) for the memory policies, STATUS= and `kechictl status`; kechid's own
    /// memory.max enforcement without systemd; the jemalloc check of workers not yet checked.
    async fn sample(&mut self) {
        let serials: Vec<u64> = self.procs.keys().copied().collect();
        for serial in serials {
            if self
                .procs
                .get(&serial)
                .is_some_and(|p| p.jemalloc.is_none())
                && self
                    .state
                    .workers
                    .get(&serial)
                    .is_some_and(|w| matches!(w.state, WorkerState::Ready { .. }))
            {
                self.check_jemalloc(serial);
            }
            // Every sixth sample reads the full figures anyway, so status and metrics stay fresh.
            let Some(sample) = self.sample_worker(serial, self.samples % 6 == 0) else {
                continue;
            };
            if self.systemd.is_none()
                && let Limit::Bytes(max) = self.loaded.config.memory.max
                && sample.total.pss > max.0
                && let Some(p) = self.procs.get_mut(&serial)
                && !p.monitor_oom
            {
                p.monitor_oom = true;
                tracing::warn!(APP = %self.opts.app, WORKER = serial, PID = p.pid.as_raw(), REASON = "oom-kill", PSS = sample.total.pss, "worker uses {} (PSS) over memory.max {}: killed by kechid's monitor", crate::quantity::Bytes(sample.total.pss).human(), max);
                let _ = killpg(p.pid, NixSignal::SIGKILL);
            }
            if sample.detailed {
                self.last_detailed.insert(serial, sample.clone());
            }
            if let Some(w) = self.state.workers.get_mut(&serial) {
                w.record_mem(sample, Instant::now());
            }
        }
        self.samples += 1;
        self.last_detailed.retain(|s, _| self.procs.contains_key(s));
        self.write_metrics();
    }

    /// One worker's memory now. `/proc/PID/statm` (RSS, ~10 µs) for every process always;
    /// `smaps_rollup` (PSS, USS, shared; ~0.1 µs per resident page) only when `detailed` or a
    /// policy could fire: USS <= PSS <= RSS, so a worker whose RSS is under every threshold
    /// cannot be over it by any metric. See docs/MEMORY-SAMPLING.md for the costs.
    fn sample_worker(&self, serial: u64, detailed: bool) -> Option<policy::MemSample> {
        let p = self.procs.get(&serial)?;
        let proc_root = memory::ProcRoot::new("/proc");
        let pids = self.worker_pids(serial);
        let rss = memory::processes_rss(&proc_root, &pids);
        let pol = &self.policy;
        let full = detailed
            || self.systemd.is_none()
            || pol.min_shared.is_some()
            || pol.child_signal.is_some()
            || pol.recycle_above.is_some_and(|t| rss > t)
            // app-budget compares every worker by the metric: all need the full figures.
            || pol.app_budget.is_some();
        let mut sample = policy::MemSample {
            detailed: full,
            ..Default::default()
        };
        if !full {
            sample.total.rss = rss;
            sample.processes = pids.len();
        } else {
            for pid in pids {
                let Ok(m) = memory::read_proc_mem(&proc_root, pid) else {
                    continue;
                };
                sample.total += m;
                sample.processes += 1;
                let pid = pid as i32;
                if pid != p.pid.as_raw()
                    && sample.largest_child.is_none_or(|(_, c)| {
                        policy::proc_metric(&m, pol.metric) > policy::proc_metric(&c, pol.metric)
                    })
                {
                    sample.largest_child = Some((pid, m));
                }
                if pid != p.pid.as_raw()
                    && m.rss > 0
                    && sample.least_shared_child.is_none_or(|(_, c)| {
                        (m.shared as f64 / m.rss as f64) < (c.shared as f64 / c.rss.max(1) as f64)
                    })
                {
                    sample.least_shared_child = Some((pid, m));
                }
            }
        }
        if sample.processes == 0 {
            return None;
        }
        sample.cgroup = self.cgroup_memory(serial).map(|m| m.current);
        Some(sample)
    }

    fn cgroup_memory(&self, serial: u64) -> Option<memory::CgroupMem> {
        let (Some(layout), Some(scope)) = (
            &self.layout,
            self.procs.get(&serial).and_then(|p| p.scope.as_ref()),
        ) else {
            return None;
        };
        let dirs = memory::scope_dir(layout, &self.app().slice_unit(), scope).ok()?;
        memory::read_cgroup_mem(&dirs.memory, dirs.version).ok()
    }

    /// The measured figures of a worker and the thresholds they are held against, for the journal.
    fn figures(&self, serial: u64) -> String {
        let Some(m) = self.state.workers.get(&serial).and_then(|w| w.mem.as_ref()) else {
            return "not sampled yet".into();
        };
        let h = |b: u64| crate::quantity::Bytes(b).human();
        let mut out = format!(
            "rss {} pss {} uss {} shared {}",
            h(m.total.rss),
            h(m.total.pss),
            h(m.total.uss),
            m.total
                .shared_percent()
                .map_or("-".into(), |p| format!("{p:.0}%"))
        );
        if let Some(c) = m.cgroup {
            out.push_str(&format!(" cgroup {}", h(c)));
        }
        let p = &self.policy;
        if let Some(v) = p.recycle_above {
            out.push_str(&format!("; recycle-above {} of {:?}", h(v), p.metric));
        }
        if let Some(v) = p.app_budget {
            out.push_str(&format!(
                "; app-budget {} (app total {})",
                h(v),
                h(self.app_memory().unwrap_or(0))
            ));
        }
        if let Some(v) = p.min_shared {
            out.push_str(&format!("; min-shared {:.0}%", v * 100.0));
        }
        out
    }

    /// OpenMetrics for node exporter's textfile collector, rewritten atomically each sample.
    fn write_metrics(&self) {
        let text = crate::metrics::render(&self.status());
        let dir = crate::metrics::textfile_dir(&self.opts.runtime_dir);
        let path = crate::metrics::textfile_path(&dir, self.opts.app.as_str());
        if let Err(e) = crate::metrics::write_atomically(&path, &text) {
            tracing::debug!("writing {}: {e}", path.display());
        }
    }

    /// The app's memory for STATUS= and the logs: the sum of [`Self::worker_memory`] over its
    /// workers, from each one's latest figures (a total kept from the last periodic sample
    /// lagged behind the table of `kechictl status` by up to check-interval).
    fn app_memory(&self) -> Option<u64> {
        let figures: Vec<u64> = self
            .procs
            .keys()
            .filter_map(|s| self.worker_memory(*s))
            .collect();
        (!figures.is_empty()).then(|| figures.iter().sum())
    }

    /// A worker's memory for display: its cgroup's charge, or its PSS without systemd.
    fn worker_memory(&self, serial: u64) -> Option<u64> {
        let w = self.state.workers.get(&serial)?;
        w.mem.as_ref().map(|m| m.cgroup.unwrap_or(m.total.pss))
    }

    fn status_text(&self) -> String {
        let ready = self.state.ready_count();
        let mut s = format!("{ready}/{} workers ready", self.policy.workers);
        if let Some(m) = self.app_memory() {
            s.push_str(&format!(", {} total", crate::quantity::Bytes(m).human()));
        }
        if self.loaded.config.jemalloc.enabled {
            let with = self
                .procs
                .values()
                .filter(|p| p.jemalloc == Some(true))
                .count();
            s.push_str(&format!(", jemalloc in {with}"));
        }
        match &self.last_event {
            Some((at, what)) => {
                let ago = at.elapsed().as_secs();
                let ago = if ago == 0 {
                    "just now".to_owned()
                } else {
                    format!(
                        "{} ago",
                        crate::quantity::format_duration(Duration::from_secs(ago))
                    )
                };
                s.push_str(&format!(", last: {what} {ago}"));
            }
            None => s.push_str(", no restarts"),
        }
        s
    }

    fn update_status(&mut self) {
        if self.state.shutting_down {
            return;
        }
        let s = self.status_text();
        if s != self.last_status {
            self.notifier.status(&s);
            self.last_status = s;
        }
    }

    fn awaiting_accept(&self) -> bool {
        self.policy.ready_mode == crate::config::ReadyMode::Accept
            && self
                .state
                .workers
                .values()
                .any(|w| matches!(w.state, WorkerState::Starting { .. }))
    }

    /// Accept mode: a starting worker one of whose processes waits on a listening socket, or
    /// already holds a connection accepted from one, is ready.
    fn check_accept(&mut self) {
        let inodes: std::collections::HashSet<u64> = self
            .listeners
            .iter()
            .filter_map(|l| nix::sys::stat::fstat(&l.fd).ok().map(|st| st.st_ino))
            .collect();
        let addresses: Vec<_> = self
            .listeners
            .iter()
            .filter_map(|l| crate::accept::local_address(&l.fd))
            .collect();
        let starting: Vec<u64> = self
            .state
            .workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Starting { .. }))
            .map(|w| w.serial)
            .collect();
        for serial in starting {
            let pids = self.worker_pids(serial);
            let how = if crate::accept::waiting_on(Path::new("/proc"), &pids, &inodes) {
                "waiting for connections"
            } else if crate::accept::serving_on(Path::new("/proc"), &pids, &inodes, &addresses) {
                "serving a connection"
            } else {
                continue;
            };
            self.apply(serial, Event::BecameReady);
            self.check_jemalloc(serial);
            tracing::info!(APP = %self.opts.app, WORKER = serial, PID = self.pid_of(serial), "worker ready ({how})");
        }
    }

    /// The processes of a worker: its scope's members, or its session without systemd.
    fn worker_pids(&self, serial: u64) -> Vec<u32> {
        let Some(p) = self.procs.get(&serial) else {
            return vec![];
        };
        if let (Some(layout), Some(scope)) = (&self.layout, &p.scope)
            && let Ok(dirs) = memory::scope_dir(layout, &self.opts.app.slice_unit(), scope)
            && let Ok(pids) = memory::read_cgroup_procs(&dirs.procs)
        {
            return pids;
        }
        monitor::session_members(Path::new("/proc"), p.pid.as_raw())
    }

    /// A message on the notify socket: READY=1 from any process of a starting worker makes it
    /// ready, in any readiness mode (an app that says so is ready).
    fn on_notify(&mut self, pid: i32, msg: readiness::Message) {
        let Some(serial) = self.worker_of_pid(pid) else {
            tracing::debug!(APP = %self.opts.app, "notify message from pid {pid}, which is no worker of this app: ignored");
            return;
        };
        // READY=1 counts in notify mode only: in accept and delay modes the operator chose
        // another sign, and some servers send READY=1 before they take connections (gunicorn's
        // arbiter sends it before its workers have loaded the app).
        if msg.ready && self.policy.ready_mode != crate::config::ReadyMode::Notify {
            tracing::debug!(APP = %self.opts.app, WORKER = serial, PID = pid, "READY=1 ignored: ready.mode is not notify");
            return;
        }
        if msg.ready
            && self
                .state
                .workers
                .get(&serial)
                .is_some_and(|w| matches!(w.state, WorkerState::Starting { .. }))
        {
            self.apply(serial, Event::BecameReady);
            self.check_jemalloc(serial);
            tracing::info!(APP = %self.opts.app, WORKER = serial, PID = pid, "worker ready (READY=1)");
        }
    }

    /// The worker a process belongs to: by its scope (cgroup) under systemd, by its session
    /// without systemd (every worker leads its own session).
    fn worker_of_pid(&self, pid: i32) -> Option<u64> {
        if pid <= 0 {
            return None;
        }
        if let Some((serial, _)) = self.procs.iter().find(|(_, p)| p.pid.as_raw() == pid) {
            return Some(*serial);
        }
        if self.systemd.is_some() {
            let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            return readiness::serial_from_cgroup(&self.opts.app, &text)
                .filter(|s| self.procs.contains_key(s));
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let sid = monitor::parse_stat_session(&stat)?;
        self.procs
            .iter()
            .find(|(_, p)| p.pid.as_raw() == sid)
            .map(|(s, _)| *s)
    }

    /// SIGHUP: re-read the file and the unit's environment; a bad config keeps the running one.
    async fn reload(&mut self) {
        self.notifier.reloading();
        let unit_env = match (&self.systemd, &self.opts.unit) {
            (Some(sd), Some(unit)) => match sd.service_environment(unit).await {
                Ok(vars) => Some(
                    vars.iter()
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                ),
                Err(e) => {
                    tracing::warn!(APP = %self.opts.app, "reading {unit}'s environment: {e}; using kechid's own");
                    None
                }
            },
            _ => None,
        };
        match load_config(&self.opts, unit_env.as_ref()) {
            Ok(loaded) => match resolve_identity(&loaded.config) {
                Ok(_) => {
                    tracing::info!(APP = %self.opts.app, REASON = "reload", "configuration reloaded from {}", self.opts.config_path.display());
                    self.policy = Policy {
                        seed: self.policy.seed,
                        ..effective(
                            Policy::from_config(&loaded.config),
                            &self.listeners,
                            &self.opts.app,
                        )
                    };
                    self.tmpdirs = TmpDirs::new(
                        &self.opts.app,
                        loaded.config.tmpdir.size.0,
                        Uid::effective().is_root(),
                        &self.opts.runtime_dir,
                    );
                    self.loaded = loaded;
                    self.state.generation += 1;
                    let gid = group_id(&self.loaded.config);
                    if let Ok(mut g) = self.control_group.lock() {
                        *g = gid;
                    }
                    let path = control::socket_path(&self.opts.runtime_dir, self.opts.app.as_str());
                    if let Err(e) = crate::control_server::set_access(&path, gid) {
                        tracing::warn!(APP = %self.opts.app, "control socket access for control.group: {e}");
                    }
                }
                Err(e) => {
                    tracing::error!(APP = %self.opts.app, REASON = "reload", "reload refused, keeping the running configuration: {e}");
                    self.record(format!("reload refused: {e}"));
                }
            },
            Err(errors) => {
                for e in errors.errors() {
                    tracing::error!(APP = %self.opts.app, REASON = "reload", "{e}");
                }
                tracing::error!(APP = %self.opts.app, REASON = "reload", "reload refused, keeping the running configuration");
                let first = errors
                    .errors()
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                self.record(format!("reload refused: {first}"));
            }
        }
        // READY=1 after RELOADING=1 ends the reload for systemd.
        let s = self.status_text();
        self.notifier.ready(&s);
    }
}

/// Resolves when the systemd link is lost; never without systemd.
async fn link_lost<S: Systemd>(sd: Option<&S>) {
    match sd {
        Some(sd) => sd.link_lost().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

async fn recv_notify(sock: Option<&NotifySocket>) -> std::io::Result<(i32, readiness::Message)> {
    match sock {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Readiness by accept needs a listening socket to watch; without one it falls back to delay.
fn effective(mut p: Policy, listeners: &[Listener], app: &AppName) -> Policy {
    if p.ready_mode == crate::config::ReadyMode::Accept && listeners.is_empty() {
        tracing::warn!(APP = %app, "ready.mode = \"accept\" without a listening socket (no kechi@{app}.socket, no listen = [...]): a worker counts as ready after ready.delay ({})", crate::quantity::format_duration(p.ready_delay));
        p.ready_mode = crate::config::ReadyMode::Delay;
    }
    // Kernels built without it (e.g. User-mode Linux) have no /proc/PID/syscall to watch.
    if p.ready_mode == crate::config::ReadyMode::Accept && !Path::new("/proc/self/syscall").exists()
    {
        tracing::warn!(APP = %app, "ready.mode = \"accept\" needs /proc/PID/syscall, which this kernel lacks: a worker counts as ready after ready.delay ({})", crate::quantity::format_duration(p.ready_delay));
        p.ready_mode = crate::config::ReadyMode::Delay;
    }
    p
}

/// A per-process seed for the age jitter: workers of different kechids spread differently.
fn seeded(mut p: Policy) -> Policy {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    p.seed = t ^ (u64::from(std::process::id()) << 32);
    p
}

/// How long ago a process started (from /proc/PID/stat's starttime and /proc/uptime).
fn process_start(pid: Pid) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // fields after the command: state is 3rd overall, starttime the 22nd
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64(
        (uptime - start_ticks as f64 / hz).max(0.0),
    ))
}

fn read_vmstat_oom_kills() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// Bytes used in a worker's temp dir (its own tmpfs: the filesystem's used blocks).
fn tmpdir_used(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((st.blocks() - st.blocks_free()) * st.fragment_size())
}

/// The gid of `control.group`, if set and known.
fn group_id(c: &Config) -> Option<u32> {
    c.control
        .group
        .as_deref()
        .and_then(|g| nix::unistd::Group::from_name(g).ok().flatten())
        .map(|g| g.gid.as_raw())
}

fn limit(l: Limit) -> Option<u64> {
    match l {
        Limit::Bytes(b) => Some(b.0),
        Limit::Infinity => None,
    }
}

/// Loads the config for kechid's start, with kechid's own environment.
pub fn load_initial(opts: &Options) -> Result<Loaded, config::ConfigErrors> {
    load_config(opts, None)
}

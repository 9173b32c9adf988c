//! The driver: one select loop that gathers events (signals, worker exits, timers, control
//! requests, finished systemd operations), applies them to the [`AppState`], asks the pure
//! [`policy::decide`] what to do and carries it out (fork, signals, temp dirs, sd_notify, logs).
//!
//! Contract:
//! - Decisions never happen here; IO never happens in the policy. The loop re-decides after
//!   every action batch (each action changes the state, so this terminates) and sleeps until
//!   the next event or the policy's wake-up time.
//! - The loop never awaits the bus: every call to systemd's manager runs as a local task with
//!   its own deadline ([`ops`]), and its outcome comes back to the loop as an event. A frozen
//!   bus daemon delays scopes, never control requests, exits, readiness or timers.
//! - Filesystem roots (`/proc`, `/sys/fs/cgroup`) and kechid's signals come in through
//!   [`Environment`], so the whole driver runs in-process under `cargo test`.
//!
//! One job per file: [`startup`] (identity, config, adoption), [`event_loop`] (the loop and
//! action dispatch), [`requests`] (control requests, status and metrics text), [`ops`]
//! (systemd operations as tasks, the link), [`spawning`], [`exits`] (exits, OOM
//! classification, stops and kills), [`sampling`], [`ready`] (readiness), [`reload`] and
//! [`shutdown`].

mod boxwide;
mod event_loop;
mod exits;
mod idle;
mod idle_scope;
mod ops;
mod ready;
mod reload;
mod requests;
mod sampling;
mod shutdown;
mod socket_flags;
mod spawning;
mod startup;
mod steering;
mod stop_cap;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::unistd::{Pid, Uid};
use tokio::sync::mpsc;

use crate::app::AppName;
use crate::config::{self, Config, Loaded};
use crate::memory::{self, CgroupLayout, CgroupRoot, ProcRoot};
use crate::notify::Notifier;
use crate::policy::{self, AppState, Policy};
use crate::readiness::NotifySocket;
use crate::sockets::{self, Listener};
use crate::systemd::Systemd;
use crate::tmpdir::TmpDirs;
use crate::{control, exitcode};

pub use startup::{IdentityError, load_initial};

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

/// A signal kechid acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: stop, unless systemd is restarting kechid.
    Term,
    /// SIGINT: stop.
    Int,
    /// SIGHUP: reload.
    Hup,
}

/// What the driver reads from and listens to outside its own state: the filesystems it reads
/// workers' figures from, and the signals sent to kechid.
#[derive(Debug)]
pub struct Environment {
    pub proc_root: ProcRoot,
    pub cgroup_root: CgroupRoot,
    pub signals: mpsc::UnboundedReceiver<Signal>,
}

impl Environment {
    /// The real system: `/proc`, `/sys/fs/cgroup`, and SIGTERM, SIGINT, SIGHUP sent to kechid.
    pub fn system() -> std::io::Result<Environment> {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = mpsc::unbounded_channel();
        for (kind, sig) in [
            (SignalKind::terminate(), Signal::Term),
            (SignalKind::interrupt(), Signal::Int),
            (SignalKind::hangup(), Signal::Hup),
        ] {
            let mut stream = signal(kind)?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Environment {
            proc_root: ProcRoot::default(),
            cgroup_root: CgroupRoot::default(),
            signals: rx,
        })
    }
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

/// Runs the app until stopped, with the real signals and filesystems; returns kechid's exit
/// code.
pub async fn run<S: Systemd + 'static>(
    opts: Options,
    systemd: Option<S>,
    loaded: Loaded,
    inherited: Vec<Listener>,
) -> i32 {
    let env = match Environment::system() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return exitcode::FAILURE;
        }
    };
    run_in(opts, systemd, loaded, inherited, env).await
}

/// [`run`] in a given [`Environment`].
pub async fn run_in<S: Systemd + 'static>(
    opts: Options,
    systemd: Option<S>,
    loaded: Loaded,
    inherited: Vec<Listener>,
    env: Environment,
) -> i32 {
    // The systemd operations run as local tasks (the runtime is single-threaded; the
    // implementation of `Systemd` need not be `Send`).
    let local = tokio::task::LocalSet::new();
    // Boxed: the driver's future (its state and the loop's) lives on the heap once, rather
    // than being copied by value into each frame of the runtime's poll path on the stack.
    local
        .run_until(Box::pin(run_local(
            opts,
            systemd.map(Rc::new),
            loaded,
            inherited,
            env,
        )))
        .await
}

async fn run_local<S: Systemd + 'static>(
    opts: Options,
    systemd: Option<Rc<S>>,
    loaded: Loaded,
    inherited: Vec<Listener>,
    env: Environment,
) -> i32 {
    // (looked up again for every worker; here a wrong user stops kechid before anything runs)
    if let Err(e) = startup::resolve_identity(&loaded.config) {
        tracing::error!(APP = %opts.app, "{e}");
        return exitcode::CONFIG;
    }
    // the steering maps an earlier kechid kept in the fd store are not listeners
    let (maps, mut inherited): (Vec<Listener>, Vec<Listener>) = inherited
        .into_iter()
        .partition(|l| crate::steer::is_stored(&l.name));
    let stored_maps = maps.into_iter().map(|l| (l.name, l.fd)).collect();
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
    let (ops_tx, ops_rx) = mpsc::unbounded_channel();
    let control_gid = requests::group_id(&loaded.config);
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
        memory::probe_layout(&env.cgroup_root).ok()
    } else {
        None
    };
    let policy = reload::seeded(reload::effective(
        Policy::from_config(c),
        &listeners,
        &opts.app,
        &env.proc_root,
    ));
    let (pressure_tx, pressure_rx) = mpsc::unbounded_channel();
    let mut d = Driver {
        policy,
        loaded,
        systemd,
        state: AppState::default(),
        procs: HashMap::new(),
        holding: HashMap::new(),
        zombies: Vec::new(),
        early_ready: HashSet::new(),
        tmpdirs,
        layout,
        notifier: Notifier,
        exit_tx,
        ops_tx,
        in_flight: 0,
        op_slots: Rc::new(tokio::sync::Semaphore::new(ops::OPS_AT_ONCE)),
        loading_weight: HashSet::new(),
        cpu_idle_missing_noted: false,
        stop_caps: HashMap::new(),
        exiting_idle: HashMap::new(),
        last_serial: 0,
        last_status: String::new(),
        last_event: None,
        history: std::collections::VecDeque::new(),
        recycles: crate::metrics::Recycles::default(),
        control_rx,
        control_group,
        last_detailed: HashMap::new(),
        slice_oom_kills: None,
        global_oom_kills: memory::vmstat_oom_kills(&env.proc_root),
        notify_socket: None,
        listeners,
        link: crate::link::LinkWatch::default(),
        reconnecting: false,
        adopting: false,
        asking_restart: false,
        relinking_for_term: false,
        reload: reload::ReloadState::Idle,
        proc_root: env.proc_root,
        idle: idle::IdleWatch::new(Duration::ZERO, Instant::now()),
        box_lock: None,
        pressure_window: std::time::Duration::ZERO,
        pressure_tx,
        pressure_rx,
        steering: steering::Steering::with_stored(stored_maps),
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
    d.start();
    d.main_loop(exit_rx, ops_rx, env.signals).await
}

struct Driver<S: Systemd> {
    opts: Options,
    loaded: Loaded,
    policy: Policy,
    systemd: Option<Rc<S>>,
    state: AppState,
    procs: HashMap<u64, Proc>,
    /// Forked workers held until their scope exists (see [`spawning`]).
    holding: HashMap<u64, spawning::Pending>,
    /// Held children given up on before their scope's fate was known, with when: reaped only
    /// once systemd can no longer be about to move their pid into a scope.
    zombies: Vec<(Pid, Instant)>,
    /// Released workers whose READY=1 came before the loop heard that their exec went ahead
    /// (see [`ready`]): made ready as soon as it does.
    early_ready: HashSet<u64>,
    tmpdirs: TmpDirs,
    layout: Option<CgroupLayout>,
    notifier: Notifier,
    exit_tx: mpsc::UnboundedSender<u64>,
    /// Where systemd operations report back.
    ops_tx: mpsc::UnboundedSender<ops::Done>,
    /// Systemd operations started and not yet reported back.
    in_flight: usize,
    /// Turns to call the manager: at most [`ops::OPS_AT_ONCE`] calls await a reply at once.
    op_slots: Rc<tokio::sync::Semaphore>,
    /// Workers whose scope was created idle for the CPU ([`idle_scope`]), until ready.
    loading_weight: HashSet<u64>,
    /// Whether the journal has said that this kernel has no `cpu.idle` ([`idle_scope`]).
    cpu_idle_missing_noted: bool,
    /// Stopping workers whose CPU cap was asked of systemd (when), their signal to follow
    /// ([`stop_cap`]).
    stop_caps: HashMap<u64, Instant>,
    /// Stopped workers exiting idle for the CPU (since when, their scope), until gone or
    /// [`stop_cap`]'s fallback.
    exiting_idle: HashMap<u64, (Instant, String)>,
    last_serial: u64,
    last_status: String,
    /// The last restart or recycle, for STATUS=.
    last_event: Option<(Instant, String)>,
    /// The last restarts and recycles, `UNIXTIME what`, oldest first.
    history: std::collections::VecDeque<String>,
    /// Recycles completed so far, by reason, for the metrics.
    recycles: crate::metrics::Recycles,
    /// Each worker's last sample with full figures (PSS, USS, shared) and when it was taken: for
    /// status and metrics while the latest sample has the cheap figures only, and for the
    /// sampler, which refreshes them once they are [`crate::sample_plan::REFRESH`] old.
    last_detailed: HashMap<u64, (std::time::Instant, policy::MemSample)>,
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
    /// A reconnect attempt is under way.
    reconnecting: bool,
    /// The scan for an earlier kechid's workers is under way: no decisions until it is done,
    /// or a second set of workers would start beside the adopted ones.
    adopting: bool,
    /// SIGTERM came; systemd is being asked whether it is a restart.
    asking_restart: bool,
    /// That question re-establishes the lost link first (it is the reconnect attempt).
    relinking_for_term: bool,
    reload: reload::ReloadState,
    proc_root: ProcRoot,
    /// Scale to zero (`idle.stop-after`) and how this start went.
    idle: idle::IdleWatch,
    /// The box lock, while a worker of this app is recycled for the box's budget.
    box_lock: Option<boxwide::BoxLock>,
    /// The window of the armed memory pressure trigger of `[box] pressure` (zero: not armed);
    /// its firings arrive on `pressure_rx`.
    pressure_window: std::time::Duration,
    pressure_tx: mpsc::UnboundedSender<String>,
    pressure_rx: mpsc::UnboundedReceiver<String>,
    /// Each worker's own listening sockets and the serving list ([`steering`]).
    steering: steering::Steering,
}

impl<S: Systemd + 'static> Driver<S> {
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

    fn pid_of(&self, serial: u64) -> i32 {
        self.procs
            .get(&serial)
            .map(|p| p.pid.as_raw())
            .or_else(|| self.holding.get(&serial).map(|h| h.pid.as_raw()))
            .unwrap_or(0)
    }

    /// Whether the worker has been asked to stop (its stop signal sent or about to be).
    fn is_draining(&self, serial: u64) -> bool {
        self.draining_reason(serial).is_some()
    }

    /// Why a worker asked to stop was asked; `None` for one not asked to stop (or unknown).
    fn draining_reason(&self, serial: u64) -> Option<&crate::lifecycle::StopReason> {
        match &self.state.workers.get(&serial)?.state {
            crate::lifecycle::WorkerState::Draining { reason, .. } => Some(reason),
            _ => None,
        }
    }

    fn apply(&mut self, serial: u64, event: crate::lifecycle::Event) {
        if let Err(e) = self
            .state
            .apply(serial, &event, Instant::now(), &self.policy)
        {
            // A bug, not an operational condition: log loudly, keep running.
            tracing::error!(APP = %self.opts.app, WORKER = serial, "{e}");
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
}

/// The memory limit of a config value: `None` = infinity.
fn limit(l: config::Limit) -> Option<u64> {
    match l {
        config::Limit::Bytes(b) => Some(b.0),
        config::Limit::Infinity => None,
    }
}

//! The driver in-process: [`run_in`] with an in-memory [`FakeSystemd`] (delays and failures
//! injectable per operation), a fake cgroup root (an empty temp dir: no memory controller) and
//! real workers (`sleep`, each its own session, as in foreground mode). Signals come over a
//! channel; the control socket is the real one, asked as kechictl asks it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Environment, Options, Signal, load_initial, run_in};
use crate::app::AppName;
use crate::control::{self, Request};
use crate::memory::{CgroupRoot, ProcRoot};
use crate::systemd::{CpuCap, JobResult, KillWho, ScopeSpec, Systemd, SystemdError, UnitInfo};

/// One unit the fake manager knows.
#[derive(Debug, Clone)]
struct FakeUnit {
    active_state: String,
    pids: Vec<u32>,
}

#[derive(Debug, Default)]
struct FakeInner {
    units: RefCell<BTreeMap<String, FakeUnit>>,
    /// Every call, as `"start NAME"`, `"stop NAME"`, `"kill NAME"`, `"list"`, `"jobtype"`,
    /// `"reconnect"`.
    calls: RefCell<Vec<String>>,
    start_delay: Cell<Duration>,
    /// StartTransientUnit calls awaiting their answer now, and the most there ever were.
    starting: Cell<usize>,
    most_starting: Cell<usize>,
    start_fails: Cell<bool>,
    /// StopUnit answers only after this long (a manager busy with a long stop job).
    stop_delay: Cell<Duration>,
    /// SetUnitProperties of a CPU quota answers only after this long (a manager that stalls).
    quota_delay: Cell<Duration>,
    /// ListUnitsByPatterns answers only after this long (a loaded manager).
    list_delay: Cell<Duration>,
    job_type: RefCell<Option<String>>,
    closed: Cell<bool>,
    lost: tokio::sync::Notify,
}

/// systemd's manager in memory. Clones share one manager (the test keeps one to look in).
#[derive(Debug, Clone, Default)]
pub(super) struct FakeSystemd(Rc<FakeInner>);

impl FakeSystemd {
    fn add_unit(&self, name: &str, active: &str, pids: &[u32]) {
        self.0.units.borrow_mut().insert(
            name.to_owned(),
            FakeUnit {
                active_state: active.to_owned(),
                pids: pids.to_vec(),
            },
        );
    }

    fn calls(&self) -> Vec<String> {
        self.0.calls.borrow().clone()
    }

    fn called(&self, what: &str) -> bool {
        self.0.calls.borrow().iter().any(|c| c == what)
    }

    fn count(&self, prefix: &str) -> usize {
        self.0
            .calls
            .borrow()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    /// The bus daemon goes away.
    fn lose_link(&self) {
        self.0.closed.set(true);
        self.0.lost.notify_one();
    }

    fn note(&self, call: String) {
        self.0.calls.borrow_mut().push(call);
    }

    fn signal_unit(&self, unit: &str, sig: nix::sys::signal::Signal) {
        if let Some(u) = self.0.units.borrow().get(unit) {
            for pid in &u.pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), sig);
            }
        }
    }
}

fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        Some((head, tail)) => {
            name.len() >= head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail)
        }
        None => pattern == name,
    }
}

impl Systemd for FakeSystemd {
    async fn start_scope(&self, spec: &ScopeSpec, _deadline: Duration) -> Result<(), SystemdError> {
        self.note(format!("start {}", spec.unit));
        if let Some(w) = spec.cpu_weight {
            self.note(format!("loading-weight {} {w}", spec.unit));
        }
        let now = self.0.starting.get() + 1;
        self.0.starting.set(now);
        self.0
            .most_starting
            .set(self.0.most_starting.get().max(now));
        let delay = self.0.start_delay.get();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.0.starting.set(self.0.starting.get() - 1);
        if self.0.start_fails.get() {
            return Err(SystemdError::Job {
                unit: spec.unit.clone(),
                result: JobResult::Failed,
            });
        }
        self.add_unit(&spec.unit, "active", &spec.pids);
        Ok(())
    }

    async fn set_cpu_weight(&self, unit: &str, weight: Option<u64>) -> Result<(), SystemdError> {
        match weight {
            Some(w) => self.note(format!("cpu-weight {unit} {w}")),
            None => self.note(format!("cpu-weight {unit} default")),
        }
        Ok(())
    }

    async fn set_cpu_cap(&self, unit: &str, cap: Option<CpuCap>) -> Result<(), SystemdError> {
        tokio::time::sleep(self.0.quota_delay.get()).await;
        match cap {
            Some(c) => self.note(format!(
                "cpu-cap {unit} {}ms/{}ms{}",
                c.quota.as_millis(),
                c.period.as_millis(),
                if c.idle { " idle" } else { "" }
            )),
            None => self.note(format!("cpu-cap {unit} none")),
        }
        Ok(())
    }

    async fn stop_unit(&self, unit: &str, _deadline: Duration) -> Result<JobResult, SystemdError> {
        self.note(format!("stop {unit}"));
        let delay = self.0.stop_delay.get();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.signal_unit(unit, nix::sys::signal::Signal::SIGKILL);
        match self.0.units.borrow_mut().remove(unit) {
            Some(_) => Ok(JobResult::Done),
            None => Err(SystemdError::NoSuchUnit(unit.to_owned())),
        }
    }

    async fn kill_unit(&self, unit: &str, _who: KillWho, signal: i32) -> Result<(), SystemdError> {
        self.note(format!("kill {unit}"));
        if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
            self.signal_unit(unit, sig);
        }
        Ok(())
    }

    async fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitInfo>, SystemdError> {
        self.note("list".into());
        tokio::time::sleep(self.0.list_delay.get()).await;
        Ok(self
            .0
            .units
            .borrow()
            .iter()
            .filter(|(name, _)| patterns.iter().any(|p| glob_match(p, name)))
            .map(|(name, u)| UnitInfo {
                name: name.clone(),
                active_state: u.active_state.clone(),
                sub_state: "running".into(),
            })
            .collect())
    }

    async fn unit_pids(&self, unit: &str) -> Result<Vec<u32>, SystemdError> {
        self.0
            .units
            .borrow()
            .get(unit)
            .map(|u| u.pids.clone())
            .ok_or_else(|| SystemdError::NoSuchUnit(unit.to_owned()))
    }

    async fn service_environment(&self, _unit: &str) -> Result<Vec<String>, SystemdError> {
        Ok(vec![])
    }

    async fn unit_job_type(&self, _unit: &str) -> Result<Option<String>, SystemdError> {
        self.note("jobtype".into());
        Ok(self.0.job_type.borrow().clone())
    }

    async fn reset_failed(&self, _unit: &str) -> Result<(), SystemdError> {
        Ok(())
    }

    async fn link_lost(&self) {
        if !self.0.closed.get() {
            self.0.lost.notified().await;
        }
    }

    fn link_is_closed(&self) -> bool {
        self.0.closed.get()
    }

    fn can_reconnect(&self) -> bool {
        true
    }

    async fn reconnect(&self) -> Result<(), SystemdError> {
        self.note("reconnect".into());
        self.0.closed.set(false);
        Ok(())
    }
}

/// One app under test: its files in a temp dir, its signals, its control socket.
struct Rig {
    dir: tempfile::TempDir,
    app: AppName,
    signals: mpsc::UnboundedSender<Signal>,
    env: Option<Environment>,
    opts: Options,
}

impl Rig {
    /// An app of `workers` `sleep` workers, ready 200 ms after they start; `extra` is more TOML.
    fn new(tag: &str, workers: u32, extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let app = AppName::new(&format!("d{tag}{}", std::process::id())).unwrap();
        let user = if nix::unistd::Uid::effective().is_root() {
            "user = \"nobody\"\n"
        } else {
            ""
        };
        let config_path = dir.path().join(format!("{app}.toml"));
        std::fs::write(
            &config_path,
            format!(
                "{user}command = [\"sleep\", \"1000\"]\nworkers = {workers}\n{extra}\n[ready]\nmode = \"delay\"\ndelay = \"200ms\"\n[tmpdir]\nenabled = false\n[jemalloc]\nenabled = false\n"
            ),
        )
        .unwrap();
        let cgroup = dir.path().join("cgroup");
        std::fs::create_dir_all(&cgroup).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let opts = Options {
            app: app.clone(),
            config_path,
            env: std::env::vars()
                .filter(|(k, _)| k == "PATH")
                .collect::<BTreeMap<_, _>>(),
            unit: Some(app.service_unit()),
            runtime_dir: dir.path().join("run"),
        };
        Rig {
            env: Some(Environment {
                proc_root: ProcRoot::default(),
                cgroup_root: CgroupRoot::new(cgroup),
                signals: rx,
            }),
            dir,
            app,
            signals: tx,
            opts,
        }
    }

    fn scope(&self, serial: u64) -> String {
        self.app.scope_unit(serial)
    }

    fn socket(&self) -> PathBuf {
        control::socket_path(&self.opts.runtime_dir, self.app.as_str())
    }

    /// The driver, to be awaited beside the test's own steps.
    fn run(&mut self, sd: &FakeSystemd) -> impl std::future::Future<Output = i32> + use<> {
        self.run_with(sd, vec![])
    }

    /// [`Rig::run`] with listening sockets, as systemd passes them.
    fn run_with(
        &mut self,
        sd: &FakeSystemd,
        listeners: Vec<crate::sockets::Listener>,
    ) -> impl std::future::Future<Output = i32> + use<> {
        let loaded = load_initial(&self.opts).expect("the test config loads");
        run_in(
            self.opts.clone(),
            Some(sd.clone()),
            loaded,
            listeners,
            self.env.take().expect("run once"),
        )
    }
}

/// Asks the control socket as kechictl does (a blocking client, off the loop's thread);
/// returns the reply and how long it took.
async fn ask(path: &Path, req: Request) -> (Result<control::Reply, String>, Duration) {
    let path = path.to_owned();
    let t0 = Instant::now();
    let r = tokio::task::spawn_blocking(move || control::request(&path, &req))
        .await
        .unwrap()
        .map_err(|e| e.to_string());
    (r, t0.elapsed())
}

async fn status(path: &Path) -> Option<control::Status> {
    let (r, _) = ask(path, Request::Status {}).await;
    serde_json::from_value(r.ok()?.parameters).ok()
}

fn ready_serials(s: &control::Status) -> Vec<u64> {
    s.workers
        .iter()
        .filter(|w| w.state == "ready")
        .map(|w| w.serial)
        .collect()
}

/// Polls the status until `ok` holds of it; panics after `within`.
async fn until(
    path: &Path,
    what: &str,
    within: Duration,
    ok: impl Fn(&control::Status) -> bool,
) -> control::Status {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < within {
        if let Some(s) = status(path).await {
            if ok(&s) {
                return s;
            }
            last = Some(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {within:?}; last status {last:#?}");
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => crate::memory::parse_start_ticks(&s).is_some() && !s.contains(") Z "),
        Err(_) => false,
    }
}

/// A process like a worker an earlier kechid left: `sleep`, leading its own session.
fn earlier_worker() -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new("sleep");
    c.arg("1000");
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    c.spawn().unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn adopts_an_earlier_kechids_workers_and_replaces_a_dead_one() {
    let mut rig = Rig::new("a", 2, "");
    let sd = FakeSystemd::default();
    let mut a = earlier_worker();
    let mut b = earlier_worker();
    let (pa, pb) = (a.id(), b.id());
    // The workers file of the earlier kechid, its last serial, its scopes (and one stale).
    let appdir = rig.opts.runtime_dir.join(rig.app.as_str());
    std::fs::create_dir_all(&appdir).unwrap();
    let entries = [(4, pa), (5, pb)].map(|(serial, pid)| crate::workers_file::Entry {
        serial,
        pid: pid as i32,
        draining: None,
        config: None,
        steer: vec![],
    });
    std::fs::write(
        appdir.join("workers"),
        crate::workers_file::render(&entries),
    )
    .unwrap();
    std::fs::write(appdir.join("last-serial"), "5").unwrap();
    sd.add_unit(&rig.scope(4), "active", &[pa]);
    sd.add_unit(&rig.scope(5), "active", &[pb]);
    sd.add_unit(&rig.scope(3), "active", &[]);
    let sock = rig.socket();
    let driver = rig.run(&sd);
    let steps = async {
        let s = until(&sock, "adopted", Duration::from_secs(10), |s| {
            ready_serials(s) == [4, 5]
        })
        .await;
        let pids: Vec<i32> = s.workers.iter().map(|w| w.pid).collect();
        assert_eq!(pids, [pa as i32, pb as i32]);
        assert_eq!(sd.count("start "), 0, "no second set: {:?}", sd.calls());
        assert!(
            sd.called(&format!("stop {}", rig.scope(3))),
            "{:?}",
            sd.calls()
        );
        // One adopted worker dies: it is seen (pidfd) and replaced by serial 6.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pa as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        until(&sock, "replaced", Duration::from_secs(10), |s| {
            ready_serials(s) == [5, 6]
        })
        .await;
        assert!(sd.called(&format!("start {}", rig.scope(6))));
        rig.signals.send(Signal::Term).unwrap();
    };
    let (code, ()) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
    assert!(!alive(pb as i32), "adopted worker stopped on shutdown");
    let _ = a.wait();
    let _ = b.try_wait();
}

#[tokio::test(flavor = "current_thread")]
async fn memory_samples_during_adoption_leave_the_running_workers_socket_flags_alone() {
    // check-interval 100 ms and a scan that takes 1 s: ten samples come before the adoption ends
    let mut rig = Rig::new("f", 1, "[recycle]\ncheck-interval = \"100ms\"");
    let sd = FakeSystemd::default();
    sd.0.list_delay.set(Duration::from_secs(1));
    let mut a = earlier_worker();
    let pa = a.id();
    let appdir = rig.opts.runtime_dir.join(rig.app.as_str());
    std::fs::create_dir_all(&appdir).unwrap();
    let entry = crate::workers_file::Entry {
        serial: 1,
        pid: pa as i32,
        draining: None,
        config: None,
        steer: vec![],
    };
    std::fs::write(
        appdir.join("workers"),
        crate::workers_file::render(&[entry]),
    )
    .unwrap();
    std::fs::write(appdir.join("last-serial"), "1").unwrap();
    sd.add_unit(&rig.scope(1), "active", &[pa]);
    // the running worker had made the socket non-blocking, and the kechid before wrote so;
    // systemd cleared the flag when it started this kechid
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = l.local_addr().unwrap().to_string();
    let fd: std::os::fd::OwnedFd = l.into();
    let ours = fd.try_clone().unwrap();
    std::fs::write(
        appdir.join("socket-flags"),
        crate::sockflags::format(&[(address.clone(), true)]),
    )
    .unwrap();
    let nonblocking = |fd: &std::os::fd::OwnedFd| crate::sockflags::nonblocking(fd).unwrap();
    assert!(!nonblocking(&ours));
    let listener = crate::sockets::Listener {
        fd,
        name: "test".into(),
        address: address.clone(),
    };
    let sock = rig.socket();
    let driver = rig.run_with(&sd, vec![listener]);
    let steps = async {
        until(&sock, "adopted", Duration::from_secs(10), |s| {
            ready_serials(s) == [1]
        })
        .await;
        assert!(
            nonblocking(&ours),
            "the running worker's O_NONBLOCK is back after the adoption"
        );
        // a sample after the adoption records it as it is
        tokio::time::sleep(Duration::from_millis(300)).await;
        let saved = std::fs::read_to_string(appdir.join("socket-flags")).unwrap();
        assert_eq!(crate::sockflags::parse(&saved), [(address.clone(), true)]);
        rig.signals.send(Signal::Term).unwrap();
    };
    let (code, ()) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
    let _ = a.wait();
}

#[tokio::test(flavor = "current_thread")]
async fn a_stalled_bus_holds_no_control_request() {
    let mut rig = Rig::new("s", 1, "");
    let sd = FakeSystemd::default();
    sd.0.start_delay.set(Duration::from_secs(20));
    let sock = rig.socket();
    let driver = rig.run(&sd);
    let steps = async {
        let mut held = 0;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            let (r, took) = ask(&sock, Request::Status {}).await;
            let s: control::Status = match r {
                Ok(r) => serde_json::from_value(r.parameters).unwrap(),
                // The control socket may not be there yet in the very first moments.
                Err(_) if t0.elapsed() < Duration::from_millis(500) => continue,
                Err(e) => panic!("status failed: {e}"),
            };
            assert!(took < Duration::from_secs(1), "status took {took:?}");
            if let Some(w) = s.workers.first() {
                assert_eq!(w.state, "spawning", "held while its scope is created");
                held = w.pid;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(held > 0 && alive(held), "the child waits, held");
        assert_eq!(sd.count("start "), 1);
        // Stopping meanwhile: the held child goes without running, kechid leaves.
        let t1 = Instant::now();
        rig.signals.send(Signal::Term).unwrap();
        (held, t1)
    };
    let (code, (held, t1)) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
    assert!(
        t1.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t1.elapsed()
    );
    assert!(!alive(held), "the held child is gone");
}

#[tokio::test(flavor = "current_thread")]
async fn failed_scopes_are_failed_starts_and_a_loop_of_them_gives_up() {
    let mut rig = Rig::new(
        "f",
        1,
        "[restart]\nbackoff = \"50ms\"\nbackoff-max = \"100ms\"\nburst = 2\nwindow = \"60s\"\n",
    );
    let sd = FakeSystemd::default();
    sd.0.start_fails.set(true);
    let t0 = Instant::now();
    let code = rig.run(&sd).await;
    assert_eq!(code, crate::exitcode::CRASH_LOOP);
    assert_eq!(sd.count("start "), 3, "burst 2: the third failure gives up");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "current_thread")]
async fn many_workers_start_with_a_bounded_number_of_calls_awaiting_the_manager() {
    // More workers than the calls the loop lets await a reply at once: all of them start, the
    // later ones in turn, and the bus never has more than its share of calls pending.
    let n = super::ops::OPS_AT_ONCE + 36;
    let mut rig = Rig::new("m", n as u32, "");
    let sd = FakeSystemd::default();
    sd.0.start_delay.set(Duration::from_millis(300));
    let sock = rig.socket();
    let driver = rig.run(&sd);
    let steps = async {
        until(&sock, "every worker ready", Duration::from_secs(60), |s| {
            ready_serials(s).len() == n
        })
        .await;
        assert_eq!(sd.count("start "), n);
        assert_eq!(sd.0.most_starting.get(), super::ops::OPS_AT_ONCE);
        rig.signals.send(Signal::Term).unwrap();
    };
    let (code, ()) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
}

/// A fake /proc for `pid`: its real `stat` (session and start time, which the driver reads to
/// find the worker's processes) beside the memory figures the test chooses.
fn fake_proc_entry(root: &Path, pid: i32, statm_pages: [u64; 7], smaps_kb: [(&str, u64); 6]) {
    let dir = root.join(pid.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    std::fs::write(dir.join("stat"), stat).unwrap();
    let statm: Vec<String> = statm_pages.iter().map(u64::to_string).collect();
    std::fs::write(dir.join("statm"), statm.join(" ") + "\n").unwrap();
    let mut rollup = String::from("00400000-7fff0000 ---p 00000000 00:00 0    [rollup]\n");
    for (k, kb) in smaps_kb {
        rollup += &format!("{k}:{kb:>16} kB\n");
    }
    std::fs::write(dir.join("smaps_rollup"), rollup).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_worker_over_recycle_above_in_proc_figures_is_replaced_and_no_other() {
    // The memory decision in-process: the driver reads a fake /proc whose figures put worker 1
    // at ~309 MiB of USS (recycle-above 100M) and worker 2 at ~2 MiB; worker 1 is replaced,
    // replacement first, and worker 2 stays.
    let mut rig = Rig::new(
        "p",
        2,
        "[memory]\nrecycle-above = \"100M\"\n[recycle]\ncheck-interval = \"200ms\"\n",
    );
    let fake = rig.dir.path().join("proc");
    std::fs::create_dir_all(&fake).unwrap();
    rig.env.as_mut().unwrap().proc_root = ProcRoot(fake.clone());
    let sd = FakeSystemd::default();
    let sock = rig.socket();
    let driver = rig.run(&sd);
    let steps = async {
        let s = until(&sock, "ready", Duration::from_secs(10), |s| {
            ready_serials(s) == [1, 2]
        })
        .await;
        let pid = |serial: u64| s.workers.iter().find(|w| w.serial == serial).unwrap().pid;
        let big = [
            ("Rss", 320_000),
            ("Pss", 318_000),
            ("Shared_Clean", 4_000),
            ("Shared_Dirty", 0),
            ("Private_Clean", 0),
            ("Private_Dirty", 316_000),
        ];
        let small = [
            ("Rss", 2_400),
            ("Pss", 2_200),
            ("Shared_Clean", 400),
            ("Shared_Dirty", 0),
            ("Private_Clean", 0),
            ("Private_Dirty", 2_000),
        ];
        fake_proc_entry(
            &fake,
            pid(1),
            [100_000, 80_000, 1_000, 10, 0, 79_000, 0],
            big,
        );
        fake_proc_entry(&fake, pid(2), [5_000, 600, 100, 10, 0, 500, 0], small);
        let s = until(&sock, "worker 1 replaced", Duration::from_secs(15), |s| {
            s.workers.iter().all(|w| w.serial != 1) && ready_serials(s) == [2, 3]
        })
        .await;
        let w2 = s.workers.iter().find(|w| w.serial == 2).unwrap();
        let uss = w2.memory.as_ref().map(|m| m.uss);
        assert_eq!(
            uss,
            Some(2_000 << 10),
            "worker 2 judged by its fake figures"
        );
        assert!(sd.called(&format!("stop {}", rig.scope(1))));
        assert!(!sd.called(&format!("stop {}", rig.scope(2))));
        rig.signals.send(Signal::Term).unwrap();
    };
    let (code, ()) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_lost_link_is_reconnected_and_stray_scopes_stopped() {
    let mut rig = Rig::new("l", 1, "");
    let sd = FakeSystemd::default();
    let sock = rig.socket();
    let driver = rig.run(&sd);
    let steps = async {
        until(&sock, "ready", Duration::from_secs(10), |s| {
            ready_serials(s) == [1]
        })
        .await;
        // A scope whose stop could not reach systemd while the link was down.
        sd.add_unit(&rig.scope(77), "active", &[]);
        sd.lose_link();
        let t0 = Instant::now();
        while !sd.called(&format!("stop {}", rig.scope(77))) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no stray stop: {:?}",
                sd.calls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(sd.count("reconnect"), 1);
        // The worker is untouched; kechid still answers and stops cleanly.
        let s = status(&sock).await.unwrap();
        assert_eq!(ready_serials(&s), [1]);
        rig.signals.send(Signal::Term).unwrap();
    };
    let (code, ()) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_cpu_cap_the_manager_does_not_answer_delays_the_stop_signal_by_at_most_the_cap_wait() {
    // A recycle's old worker is capped before its stop signal; a manager that does not answer
    // the cap (10 s) holds the signal back STOP_CAP_WAIT at most, and the roll goes on.
    let mut rig = Rig::new("q", 1, "");
    let sd = FakeSystemd::default();
    sd.0.quota_delay.set(Duration::from_secs(10));
    let sock = rig.socket();
    let driver = rig.run(&sd);
    let steps = async {
        let s = until(&sock, "ready", Duration::from_secs(10), |s| {
            ready_serials(s) == [1]
        })
        .await;
        let old = s.workers[0].pid;
        let (r, _) = ask(
            &sock,
            Request::Recycle {
                worker: Some(1),
                all: false,
            },
        )
        .await;
        assert_eq!(r.unwrap().error, None);
        until(&sock, "replacement ready", Duration::from_secs(10), |s| {
            ready_serials(s) == [2]
        })
        .await;
        let t0 = Instant::now();
        while alive(old) && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = t0.elapsed();
        assert!(!alive(old), "the old worker got its stop signal");
        assert!(
            took < super::stop_cap::STOP_CAP_WAIT + Duration::from_secs(1),
            "stop signal held {took:?}"
        );
        rig.signals.send(Signal::Term).unwrap();
    };
    let (code, ()) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn slow_scope_stops_hold_neither_control_requests_nor_a_recycle_roll() {
    let mut rig = Rig::new("h", 2, "");
    let sd = FakeSystemd::default();
    sd.0.stop_delay.set(Duration::from_secs(4));
    let sock = rig.socket();
    let driver = rig.run(&sd);
    let steps = async {
        until(&sock, "ready", Duration::from_secs(10), |s| {
            ready_serials(s) == [1, 2]
        })
        .await;
        let (r, _) = ask(
            &sock,
            Request::Recycle {
                worker: None,
                all: true,
            },
        )
        .await;
        assert_eq!(r.unwrap().error, None);
        let t0 = Instant::now();
        loop {
            let (r, took) = ask(&sock, Request::Status {}).await;
            assert!(took < Duration::from_secs(1), "status took {took:?}");
            let s: control::Status = serde_json::from_value(r.unwrap().parameters).unwrap();
            if ready_serials(&s) == [3, 4] && s.workers.len() == 2 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{:#?}", s.workers);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            sd.count("stop ") >= 1,
            "the old scopes' stops were asked for (and are slow)"
        );
        rig.signals.send(Signal::Term).unwrap();
    };
    let (code, ()) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_recycle_roll_starts_each_replacement_first() {
    let mut rig = Rig::new("r", 2, "");
    let sd = FakeSystemd::default();
    let sock = rig.socket();
    let driver = rig.run(&sd);
    let steps = async {
        until(&sock, "ready", Duration::from_secs(10), |s| {
            ready_serials(s) == [1, 2]
        })
        .await;
        let (r, _) = ask(
            &sock,
            Request::Recycle {
                worker: None,
                all: true,
            },
        )
        .await;
        let r = r.unwrap();
        assert_eq!(r.error, None);
        assert_eq!(r.parameters["serials"], serde_json::json!([1, 2]));
        // Until both are replaced, never fewer than 2 ready workers.
        let t0 = Instant::now();
        let mut seen_more = false;
        loop {
            let s = status(&sock).await.unwrap();
            let ready = ready_serials(&s);
            assert!(ready.len() >= 2, "capacity dropped: {:#?}", s.workers);
            seen_more |= s.workers.len() > 2;
            if ready == [3, 4] && s.workers.len() == 2 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(15), "{:#?}", s.workers);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(seen_more, "a replacement ran beside the worker it replaced");
        // Each old worker was stopped only after its replacement's scope existed.
        let calls = sd.calls();
        let at = |c: String| calls.iter().position(|x| *x == c).unwrap();
        assert!(at(format!("start {}", rig.scope(3))) < at(format!("stop {}", rig.scope(1))));
        assert!(at(format!("start {}", rig.scope(4))) < at(format!("stop {}", rig.scope(2))));
        // The first workers loaded at the default CPU weight (none served yet); each
        // replacement at the loading weight beside a serving worker, then the default once ready.
        for first in [1, 2] {
            assert!(
                !calls
                    .iter()
                    .any(|c| c.starts_with(&format!("loading-weight {} ", rig.scope(first))))
            );
        }
        for new in [3, 4] {
            let w = super::spawning::LOADING_CPU_WEIGHT;
            assert!(at(format!("loading-weight {} {w}", rig.scope(new))) > 0);
            assert!(
                at(format!("cpu-weight {} default", rig.scope(new)))
                    > at(format!("start {}", rig.scope(new)))
            );
        }
        // Each old worker, stopped while others served, had its CPU capped before it ended.
        for old in [1, 2] {
            assert!(
                at(format!("cpu-cap {} 500ms/10ms idle", rig.scope(old)))
                    < at(format!("stop {}", rig.scope(old)))
            );
        }
        rig.signals.send(Signal::Term).unwrap();
    };
    let (code, ()) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn sigterm_from_a_restart_leaves_the_workers_and_from_a_stop_stops_them() {
    // restart: the workers stay, recorded for the next kechid
    let mut rig = Rig::new("t", 2, "");
    let sd = FakeSystemd::default();
    *sd.0.job_type.borrow_mut() = Some("restart".into());
    let sock = rig.socket();
    let driver = rig.run(&sd);
    let steps = async {
        let s = until(&sock, "ready", Duration::from_secs(10), |s| {
            ready_serials(s) == [1, 2]
        })
        .await;
        rig.signals.send(Signal::Term).unwrap();
        s.workers.iter().map(|w| w.pid).collect::<Vec<_>>()
    };
    let (code, pids) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
    assert!(sd.called("jobtype"));
    assert!(pids.iter().all(|p| alive(*p)), "left running on restart");
    let file = std::fs::read_to_string(rig.opts.runtime_dir.join(rig.app.as_str()).join("workers"))
        .unwrap();
    let recorded: Vec<i32> = crate::workers_file::parse(&file)
        .iter()
        .map(|e| e.pid)
        .collect();
    assert_eq!(recorded.len(), 2);
    assert!(pids.iter().all(|p| recorded.contains(p)), "{file}");
    assert_eq!(sd.count("stop "), 0);

    // stop: a new kechid adopts them, then stops them all and removes its runtime files
    let mut rig2 = Rig::new("t", 2, "");
    rig2.opts.runtime_dir = rig.opts.runtime_dir.clone();
    let sd2 = sd.clone();
    *sd2.0.job_type.borrow_mut() = Some("stop".into());
    let sock = rig2.socket();
    let driver = rig2.run(&sd2);
    let steps = async {
        until(&sock, "adopted", Duration::from_secs(10), |s| {
            ready_serials(s) == [1, 2]
        })
        .await;
        rig2.signals.send(Signal::Term).unwrap();
    };
    let (code, ()) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
    for p in &pids {
        let t0 = Instant::now();
        while alive(*p) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(*p), "worker {p} stopped");
    }
    assert!(!sock.exists(), "control socket removed");
    assert!(sd2.called(&format!("stop {}", rig2.scope(1))));
    // kechid's own stop stops every worker: none is capped (no worker serves on after it)
    assert_eq!(sd2.count("cpu-cap "), 0);
    drop(rig.dir);
}

#[tokio::test(flavor = "current_thread")]
async fn an_adopted_worker_left_idle_for_the_cpu_gets_the_default_weight_back() {
    // a kechid restarted while worker 1 loaded idle: the workers stay for the next one
    let mut rig = Rig::new("i", 2, "");
    let sd = FakeSystemd::default();
    *sd.0.job_type.borrow_mut() = Some("restart".into());
    let sock = rig.socket();
    let driver = rig.run(&sd);
    let steps = async {
        until(&sock, "ready", Duration::from_secs(10), |s| {
            ready_serials(s) == [1, 2]
        })
        .await;
        rig.signals.send(Signal::Term).unwrap();
    };
    let (code, ()) = tokio::join!(driver, steps);
    assert_eq!(code, 0);

    // the next kechid, on cgroup v2, finds worker 1's scope idle in the kernel and worker 2's not
    let mut rig2 = Rig::new("i", 2, "");
    rig2.opts.runtime_dir = rig.opts.runtime_dir.clone();
    let root = rig2.dir.path().join("cgroup");
    std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    for (serial, idle) in [(1, "1"), (2, "0")] {
        let dir = root
            .join("kechi.slice")
            .join(format!("kechi-{}.slice", rig2.app.as_str()))
            .join(rig2.scope(serial));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.idle"), idle).unwrap();
    }
    let sd2 = sd.clone();
    *sd2.0.job_type.borrow_mut() = Some("stop".into());
    let sock = rig2.socket();
    let driver = rig2.run(&sd2);
    let steps = async {
        until(&sock, "adopted", Duration::from_secs(10), |s| {
            ready_serials(s) == [1, 2]
        })
        .await;
        let t0 = Instant::now();
        while !sd2.called(&format!("cpu-weight {} default", rig2.scope(1)))
            && t0.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rig2.signals.send(Signal::Term).unwrap();
    };
    let (code, ()) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
    assert!(sd2.called(&format!("cpu-weight {} default", rig2.scope(1))));
    assert!(!sd2.called(&format!("cpu-weight {} default", rig2.scope(2))));
    drop(rig.dir);
}

/// The inode of a process's fd `fd`, if it is a socket.
fn socket_inode_of(pid: i32, fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    crate::accept::socket_inode(link.to_str()?)
}

#[tokio::test(flavor = "current_thread")]
async fn a_steered_worker_accepts_from_a_socket_of_its_own_and_leaves_no_connection_behind() {
    if !crate::steer::tests::root() {
        return;
    }
    let mut rig = Rig::new("s", 1, "");
    let sd = FakeSystemd::default();
    let sock = rig.socket();
    let l = crate::steer::tests::activated();
    let address = l.address.clone();
    let activated = nix::sys::stat::fstat(&l.fd).unwrap().st_ino;
    let driver = rig.run_with(&sd, vec![l]);
    let steps = async {
        let s = until(&sock, "ready", Duration::from_secs(10), |s| {
            ready_serials(s) == [1]
        })
        .await;
        // fd 3 of the worker: its own socket, on the activated socket's address
        let own1 = socket_inode_of(s.workers[0].pid, 3).expect("fd 3 is a socket");
        assert_ne!(own1, activated);
        let queued = |ino: u64| {
            crate::steer::queues(Path::new("/proc"), &[ino])
                .first()
                .map(|(_, q)| *q)
        };
        // `sleep` never accepts: a connection waits in worker 1's own queue
        let conn = std::net::TcpStream::connect(address.as_str()).unwrap();
        let t0 = Instant::now();
        while queued(own1) != Some(1) && t0.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(queued(own1), Some(1));
        let (r, _) = ask(
            &sock,
            Request::Recycle {
                worker: None,
                all: true,
            },
        )
        .await;
        assert_eq!(r.unwrap().error, None);
        // worker 2 serves; worker 1 gets no new connection, and its stop signal waits for its
        // queue to empty (here it never does: the signal goes after DRAIN_MAX)
        let s = until(&sock, "replacement ready", Duration::from_secs(10), |s| {
            ready_serials(s) == [2]
        })
        .await;
        let w2 = s.workers.iter().find(|w| w.serial == 2).unwrap().pid;
        let own2 = socket_inode_of(w2, 3).unwrap();
        assert_ne!(own2, own1);
        let stop_asked = Instant::now();
        let c2 = std::net::TcpStream::connect(address.as_str()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            queued(own1),
            Some(1),
            "a new connection went to the drained worker"
        );
        assert_eq!(queued(own2), Some(1));
        until(&sock, "worker 1 gone", Duration::from_secs(15), |s| {
            s.workers.len() == 1
        })
        .await;
        assert!(
            stop_asked.elapsed() >= crate::steer::DRAIN_MAX - Duration::from_millis(500),
            "worker 1 was stopped with a connection waiting for it, after {:?}",
            stop_asked.elapsed()
        );
        // the connection that waited for worker 1 was handed to worker 2's socket, not reset
        let t0 = Instant::now();
        while queued(own2) != Some(2) && t0.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(queued(own2), Some(2));
        conn.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let e = std::io::Read::read(&mut &conn, &mut [0u8; 1]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        drop(c2);
        rig.signals.send(Signal::Term).unwrap();
    };
    let (code, ()) = tokio::join!(driver, steps);
    assert_eq!(code, 0);
}

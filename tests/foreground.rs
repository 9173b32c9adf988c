//! kechid without a systemd manager (`--foreground`): workers as plain children, the one-time
//! notice about kechid's own memory monitor, TMPDIR per worker, the monitor's memory.max
//! enforcement, a clean stop on SIGTERM, what kechid tells a service manager on `NOTIFY_SOCKET`
//! (READY=1, STATUS=, STOPPING=1), and its refusal of every malformed configuration fixture.
//! Runs the real binary.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Kechid {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Kechid {
    fn start(config: &Path, runtime: &Path) -> Kechid {
        Kechid::start_with(config, runtime, &[])
    }

    fn start_with(config: &Path, runtime: &Path, env: &[(&str, &Path)]) -> Kechid {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kechid"))
            .arg("--foreground")
            .arg(config)
            .env("KECHI_RUNTIME_DIR", runtime)
            .env("KECHI_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kechid starts");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Kechid {
            child,
            lines: rx,
            seen: vec![],
        }
    }

    /// Waits for a log line containing `what`; returns it.
    fn expect(&mut self, what: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        if let Some(l) = self.seen.iter().find(|l| l.contains(what)) {
            return l.clone();
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(what) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no log line with {what:?} within {within:?}; saw:\n{}",
            self.seen.join("\n")
        );
    }

    fn count(&mut self, what: &str) -> usize {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen.iter().filter(|l| l.contains(what)).count()
    }

    fn stop(mut self) -> i32 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        status.code().unwrap_or(-1)
    }
}

/// The values of `key` (like "PID=") in the "worker started" log lines.
fn started_field<T: std::str::FromStr>(lines: &[String], key: &str) -> Vec<T> {
    lines
        .iter()
        .filter(|l| l.contains("worker started"))
        .filter_map(|l| l.split(key).nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

fn pids_of_worker_logs(lines: &[String]) -> Vec<i32> {
    started_field(lines, "PID=")
}

fn config(dir: &Path, app: &str, body: &str) -> std::path::PathBuf {
    let user = if nix::unistd::Uid::effective().is_root() {
        "user = \"nobody\"\n"
    } else {
        ""
    };
    let jemalloc = if kechi::jemalloc::find_auto().is_some() {
        ""
    } else {
        "[jemalloc]\nenabled = false\n"
    };
    let path = dir.join(format!("{app}.toml"));
    std::fs::write(&path, format!("{user}{body}\n{jemalloc}")).unwrap();
    path
}

fn app_name(tag: &str) -> String {
    format!("fg{tag}{}", std::process::id())
}

#[test]
fn runs_workers_as_children_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_name("a");
    let script = "import os,time\nopen(os.environ['TMPDIR']+'/f','w').write('x')\ntime.sleep(120)";
    let cfg = config(
        dir.path(),
        &app,
        &format!(
            "command = [\"python3\", \"-c\", {script:?}]\nworkers = 2\n[ready]\nmode = \"delay\"\ndelay = \"300ms\"\n"
        ),
    );
    let mut k = Kechid::start(&cfg, dir.path());
    let notice = k.expect("no systemd manager", Duration::from_secs(10));
    assert!(
        notice.contains("enforced by kechid's own monitor"),
        "{notice}"
    );
    k.expect("all 2 workers ready", Duration::from_secs(20));
    assert_eq!(k.count("no systemd manager"), 1, "the notice is given once");
    let pids = pids_of_worker_logs(&k.seen);
    assert_eq!(pids.len(), 2);
    let mut tmpdirs = vec![];
    for pid in &pids {
        // a plain child of kechid, leading its own session
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ppid: u32 = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(ppid, k.child.id());
        assert_eq!(kechi::monitor::parse_stat_session(&stat), Some(*pid));
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let env = String::from_utf8_lossy(&env);
        let tmp = env
            .split('\0')
            .find_map(|v| v.strip_prefix("TMPDIR="))
            .unwrap()
            .to_owned();
        assert!(env.split('\0').any(|v| v == format!("KECHI_APP={app}")));
        tmpdirs.push(tmp);
    }
    assert_ne!(tmpdirs[0], tmpdirs[1]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tmpdirs.iter().all(|t| Path::new(t).join("f").exists()) {
        assert!(
            Instant::now() < deadline,
            "workers did not write to their TMPDIR"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(k.stop(), 0);
    for t in &tmpdirs {
        assert!(!Path::new(t).exists(), "{t} was not wiped");
    }
    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} outlived kechid"
        );
    }
}

/// The WORKER= serials of the "worker started" log lines.
fn serials_started(lines: &[String]) -> Vec<u64> {
    started_field(lines, "WORKER=")
}

#[test]
fn each_foreground_run_starts_at_worker_1_and_leaves_no_serial_behind() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_name("s");
    let cfg = config(
        dir.path(),
        &app,
        "command = [\"sleep\", \"120\"]\nworkers = 2\n[ready]\nmode = \"delay\"\ndelay = \"200ms\"\n",
    );
    let serial_file = dir.path().join(&app).join("last-serial");
    for run in 1..=2 {
        let mut k = Kechid::start(&cfg, dir.path());
        k.expect("all 2 workers ready", Duration::from_secs(20));
        assert!(
            serial_file.exists(),
            "run {run}: kechid records the last serial while it runs"
        );
        // (in any order: each worker's start completes on its own)
        let mut serials = serials_started(&k.seen);
        serials.sort_unstable();
        assert_eq!(
            serials,
            vec![1, 2],
            "run {run}: serials carried over from an earlier run"
        );
        assert_eq!(k.stop(), 0);
        assert!(
            !serial_file.exists(),
            "run {run}: {} left behind",
            serial_file.display()
        );
        assert!(
            !dir.path().join(&app).exists(),
            "run {run}: the app's runtime directory left behind"
        );
    }
}

#[test]
fn monitor_enforces_memory_max_without_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_name("m");
    // grows to ~200 MB, far past memory.max
    let script = "import time\nb=[]\nfor i in range(50):\n    b.append(bytearray(4<<20)); time.sleep(0.05)\ntime.sleep(120)";
    let cfg = config(
        dir.path(),
        &app,
        &format!(
            "command = [\"python3\", \"-c\", {script:?}]\nworkers = 1\n[ready]\nmode = \"delay\"\ndelay = \"100ms\"\n[memory]\nmax = \"64M\"\n[recycle]\ncheck-interval = \"200ms\"\n"
        ),
    );
    let mut k = Kechid::start(&cfg, dir.path());
    let line = k.expect("killed by kechid's monitor", Duration::from_secs(30));
    assert!(line.contains("memory.max 64M"), "{line}");
    k.expect("oom-kill", Duration::from_secs(10));
    // and replaced
    k.expect("WORKER=2", Duration::from_secs(10));
    assert_eq!(k.stop(), 0);
}

#[test]
fn refuses_a_bad_config_with_file_line_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &app_name("b"),
        "command = [\"/bin/true\"]\nworkers = \"many\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kechid"))
        .arg("--foreground")
        .arg(&cfg)
        .env("XDG_RUNTIME_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(kechi::exitcode::CONFIG));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:", cfg.display())) && err.contains("workers"),
        "{err}"
    );
}

/// A service manager's end of `NOTIFY_SOCKET`: the datagrams kechid sends, as lists of
/// `KEY=VALUE` lines.
struct NotifySocket {
    sock: UnixDatagram,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        NotifySocket {
            sock: UnixDatagram::bind(path).unwrap(),
        }
    }

    /// The next message, or None when none comes within `within`.
    fn recv(&self, within: Duration) -> Option<Vec<String>> {
        self.sock.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Messages until one has the line `line`; returns that one. Panics after `within`.
    fn until(&self, line: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = vec![];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.recv(left) {
                Some(m) if m.iter().any(|l| l == line) => return m,
                Some(m) => seen.push(m),
                None => break,
            }
        }
        panic!("no {line:?} within {within:?}; got {seen:?}");
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn tells_the_service_manager_ready_status_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_name("n");
    let notify_path = dir.path().join("notify.sock");
    let manager = NotifySocket::bind(&notify_path);
    // Workers that ignore the stop signal: kechid is still waiting for them (stop.timeout) when
    // it has said STOPPING=1, which must come first, not once everything is gone.
    let script =
        "import signal,time\nsignal.signal(signal.SIGWINCH, signal.SIG_IGN)\ntime.sleep(120)";
    let cfg = config(
        dir.path(),
        &app,
        &format!(
            "command = [\"python3\", \"-c\", {script:?}]\nworkers = 2\n[ready]\nmode = \"delay\"\ndelay = \"300ms\"\n[stop]\nsignal = \"WINCH\"\ntimeout = \"2s\"\n"
        ),
    );
    let mut k = Kechid::start_with(&cfg, dir.path(), &[("NOTIFY_SOCKET", &notify_path)]);

    let ready = manager.until("READY=1", Duration::from_secs(20));
    let status = ready
        .iter()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("READY=1 without STATUS=: {ready:?}"));
    assert!(
        status.starts_with("2/2 workers ready") && status.ends_with(", no restarts"),
        "STATUS= with READY=1: {status:?}"
    );
    k.expect("all 2 workers ready", Duration::from_secs(5));
    let pids = pids_of_worker_logs(&k.seen);
    assert_eq!(pids.len(), 2);

    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(k.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut stopping = manager.until("STOPPING=1", Duration::from_secs(5));
    stopping.sort();
    assert_eq!(stopping, ["STATUS=stopping workers", "STOPPING=1"]);
    assert!(
        pids.iter().all(|&p| alive(p)),
        "STOPPING=1 came only after the workers ended"
    );
    assert!(
        k.child.try_wait().unwrap().is_none(),
        "STOPPING=1 came only after kechid exited"
    );
    let status = k.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // the workers ignored WINCH: SIGKILL after stop.timeout
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert!(pids.iter().all(|&p| !alive(p)), "a worker outlived kechid");
    // nothing more once stopping: no READY=1 or STATUS= of workers after STOPPING=1
    while let Some(m) = manager.recv(Duration::from_millis(100)) {
        assert!(!m.iter().any(|l| l == "READY=1"), "after STOPPING=1: {m:?}");
    }
}

#[path = "support/bad_configs.rs"]
mod bad_configs;

/// kechid run on FILE that must refuse it: (exit code, stderr). Panics if it keeps running.
fn refused(file: &Path, runtime: &Path, notify: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kechid"))
        .arg("--foreground")
        .arg(file)
        .env("KECHI_RUNTIME_DIR", runtime)
        .env("KECHI_LOG", "info")
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kechid starts");
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).unwrap();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kechid is still running on {}", file.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), reader.join().unwrap())
}

/// The lines of `stderr` that name `file`: the problems, one a line.
fn problem_lines<'a>(stderr: &'a str, file: &Path) -> Vec<&'a str> {
    let file = file.to_string_lossy();
    stderr.lines().filter(|l| l.contains(&*file)).collect()
}

#[test]
fn refuses_every_malformed_fixture_with_one_line_per_problem() {
    bad_configs::make_unsafe_library();
    let mut names = bad_configs::on_disk();
    names.push(bad_configs::MANY_PROBLEMS.to_owned());
    assert_eq!(names.len(), bad_configs::BAD.len() + 1);
    for name in &names {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("run");
        std::fs::create_dir(&runtime).unwrap();
        let notify_path = dir.path().join("notify.sock");
        let manager = NotifySocket::bind(&notify_path);
        let file = bad_configs::bad_dir().join(name);
        let (code, err) = refused(&file, &runtime, &notify_path);
        assert_eq!(
            code,
            Some(kechi::exitcode::CONFIG),
            "{name}: exit code; stderr:\n{err}"
        );
        let lines = problem_lines(&err, &file);
        // FILE:LINE: KEY: (FILE: KEY: for a problem of the whole file), FILE in full
        let dir = bad_configs::bad_dir();
        let heads: Vec<String> = match bad_configs::BAD.iter().find(|b| b.0 == name) {
            Some((_, line, key, _)) => {
                vec![format!(
                    "{}/{}",
                    dir.display(),
                    bad_configs::head(name, *line, key)
                )]
            }
            None => bad_configs::MANY_PROBLEMS_HEADS
                .iter()
                .map(|h| format!("{}:{h}: ", file.display()))
                .collect(),
        };
        assert_eq!(
            lines.len(),
            heads.len(),
            "{name}: want one line per problem naming the file; stderr:\n{err}"
        );
        for (l, h) in lines.iter().zip(&heads) {
            assert!(l.contains(h), "{name}: want {h:?} in {l:?}");
        }
        assert!(
            err.contains(&format!(
                "refusing to start: {} problem(s) in the configuration",
                heads.len()
            )),
            "{name}: {err}"
        );
        // nothing started: no worker, no control socket or TMPDIR, no word to a service manager
        assert!(!err.contains("worker started"), "{name}: {err}");
        let left: Vec<_> = std::fs::read_dir(&runtime).unwrap().collect();
        assert!(
            left.is_empty(),
            "{name}: kechid left {left:?} in its runtime directory"
        );
        assert_eq!(
            manager.recv(Duration::from_millis(1)),
            None,
            "{name}: kechid notified its service manager"
        );
    }
}

//! kechid without a systemd manager (`--foreground`): workers as plain children, the one-time
//! notice about kechid's own memory monitor, TMPDIR per worker, the monitor's memory.max
//! enforcement, and a clean stop on SIGTERM. Runs the real binary.

use std::io::{BufRead, BufReader};
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_kechid"))
            .arg("--foreground")
            .arg(config)
            .env("KECHI_RUNTIME_DIR", runtime)
            .env("KECHI_LOG", "info")
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

fn pids_of_worker_logs(lines: &[String]) -> Vec<i32> {
    lines
        .iter()
        .filter(|l| l.contains("worker started"))
        .filter_map(|l| {
            l.split("PID=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
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

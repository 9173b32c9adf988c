//! `kechictl`: inspect and steer kechi apps. A thin shell over the library: argument parsing,
//! choosing which environment to overlay, printing, exit codes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use kechi::app::AppName;
use kechi::config::{self, ConfigErrors, Loaded, RealHost};
use kechi::control::{self, Request};
use kechi::servers;

const EXIT_CODES: &str = "\
Exit status:
  0  success (for check: the configuration is valid; warnings may have been printed)
  1  the configuration is invalid (every problem is printed to stderr), or, for check
     --strict, it has warnings
  2  usage error (unknown command or option, malformed argument)
  3  cannot read a file, or another runtime error
  4  permission denied (the control socket is for root and members of control.group)
  5  kechid for the app is not running

FILE|APP: an argument containing '/' or ending in .toml is a file; anything else is an app
name and means /etc/kechi/APP.toml.";

#[derive(Debug, Parser)]
#[command(
    name = "kechictl",
    version,
    about = "Inspect and steer kechi apps (web-app workers kept lean under systemd)",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// List the apps (running kechids, and app files in /etc/kechi) with workers and memory.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Memory per process: RSS, PSS, USS (private), shared and shared %, swap — for PIDs, or
    /// for every process of an app's workers — and the kernel's dentry cache size.
    Mem {
        /// Process ids, or one app name.
        #[arg(required = true, value_name = "PID...|APP")]
        targets: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show an app's workers: serial, pid, scope, state, age, memory, jemalloc, recent events.
    Status {
        app: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Recycle workers gracefully: each replacement starts and gets ready before the old
    /// worker is stopped, one at a time; no connection is dropped.
    Recycle {
        app: String,
        /// Recycle this worker (its serial N, as in kechi-APP-N.scope).
        #[arg(
            long,
            value_name = "N",
            conflicts_with = "all",
            required_unless_present = "all"
        )]
        worker: Option<u64>,
        /// Recycle every worker.
        #[arg(long)]
        all: bool,
        /// Wait until every requested worker has been replaced.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (with --wait).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// Check an app's configuration (file, KECHI_* overrides of this shell, users, directory,
    /// program, jemalloc, and how the recognised app server is run) and print every problem
    /// with file, line and key. Warnings (the app may still work) do not fail the check
    /// unless --strict.
    Check {
        /// A config file, or an app name for /etc/kechi/APP.toml (then the sockets of
        /// kechi@APP.socket are checked against the app server too).
        #[arg(value_name = "FILE|APP")]
        target: String,
        /// Print JSON: {"file", "ok", "server", "sockets", "problems": [...]}.
        #[arg(long)]
        json: bool,
        /// Exit 1 on warnings too.
        #[arg(long)]
        strict: bool,
    },
    /// Print the effective value of every key and where it came from (default, file line,
    /// KECHI_* variable, or Server::Starter alias). For an app name, the overrides are read
    /// from the environment of kechi@APP.service.
    Config {
        /// An app name (overrides from its unit), or a config file (overrides from this shell).
        #[arg(value_name = "APP|FILE")]
        target: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// What a FILE|APP argument names.
struct Target {
    path: PathBuf,
    app: Option<AppName>,
}

enum Failure {
    Invalid(ConfigErrors),
    /// Invalid, and already printed (as JSON).
    Printed(ConfigErrors),
    /// `check` found errors, or warnings with --strict, and printed them.
    Reported,
    Control(control::ClientError),
    Usage(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Check {
            target,
            json,
            strict,
        } => check(&target, json, strict),
        Cmd::Config { target, json } => show_config(&target, json),
        Cmd::Status { app, json } => status(&app, json),
        Cmd::List { json } => list(json),
        Cmd::Mem { targets, json } => mem(&targets, json),
        Cmd::Recycle {
            app,
            worker,
            all,
            wait,
            timeout,
        } => recycle(&app, worker, all, wait, timeout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Reported) => ExitCode::from(1),
        Err(Failure::Printed(errors)) => ExitCode::from(if errors.is_read_error() { 3 } else { 1 }),
        Err(Failure::Invalid(errors)) => {
            eprintln!("{errors}");
            ExitCode::from(if errors.is_read_error() { 3 } else { 1 })
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("kechictl: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Control(e)) => {
            eprintln!("kechictl: {e}");
            ExitCode::from(match e {
                control::ClientError::Denied { .. } => 4,
                control::ClientError::NotRunning { .. } => 5,
                _ => 3,
            })
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("kechictl: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn resolve(target: &str) -> Result<Target, Failure> {
    if target.contains('/') || target.ends_with(".toml") {
        return Ok(Target {
            path: PathBuf::from(target),
            app: None,
        });
    }
    match AppName::new(target) {
        Ok(app) => Ok(Target {
            path: app.config_path(),
            app: Some(app),
        }),
        Err(e) => Err(Failure::Usage(format!(
            "{target:?} is neither a file (a path with '/' or ending in .toml) nor an app name: {e}"
        ))),
    }
}

/// This process's environment; variables that are not UTF-8 cannot be kechi settings.
fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// `Environment=` of the app's service unit, as systemd has it loaded.
fn unit_env(app: &AppName) -> anyhow::Result<BTreeMap<String, String>> {
    let unit = app.service_unit();
    let out = Command::new("systemctl")
        .args(["show", "-p", "Environment", "--value", &unit])
        .output()
        .context("cannot run systemctl")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        bail!("systemctl show {unit} failed: {}", err.join("; "));
    }
    Ok(config::parse_unit_environment(&String::from_utf8_lossy(
        &out.stdout,
    )))
}

fn load(target: &Target, env: &BTreeMap<String, String>) -> Result<Loaded, Failure> {
    config::load(&target.path, env, &RealHost).map_err(Failure::Invalid)
}

/// The listening sockets the workers of `target` get: for an app, those of its socket unit
/// (the template's default when systemd cannot be asked) plus `listen`; for a file alone,
/// only its `listen` (the socket unit it would run with is not known).
fn worker_sockets(target: &Target, listen: &[String]) -> (servers::Sockets, Option<String>) {
    let mut addresses = Vec::new();
    let mut shared_tcp = Vec::new();
    let mut note = None;
    let complete = match &target.app {
        Some(app) => {
            let unit = format!("kechi@{app}.socket");
            match socket_unit_listens(&unit) {
                Ok(found) => {
                    if !socket_unit_reuses_port(&unit) {
                        shared_tcp = found
                            .iter()
                            .filter(|a| !a.starts_with('/'))
                            .cloned()
                            .collect();
                    }
                    addresses = found;
                }
                Err(e) => {
                    addresses.push(format!("/run/kechi/{app}.sock"));
                    note = Some(format!(
                        "{e}; assuming {unit}'s default ListenStream=/run/kechi/{app}.sock"
                    ));
                }
            }
            true
        }
        None => false,
    };
    let mut sockets = servers::Sockets {
        addresses,
        complete,
        shared_tcp,
    };
    sockets.add_listen(listen);
    (sockets, note)
}

/// Whether a socket unit as systemd has it loaded sets `ReusePort=yes` (kechid steers its TCP
/// sockets then); `false` when systemd cannot be asked.
fn socket_unit_reuses_port(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["show", "-p", "ReusePort", "--value", unit])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "yes")
}

/// `Listen=` of a socket unit as systemd has it loaded: `/run/kechi/x.sock (Stream)` lines.
fn socket_unit_listens(unit: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("systemctl")
        .args(["show", "-p", "Listen", "--value", unit])
        .output()
        .context("cannot run systemctl")?;
    if !out.status.success() {
        bail!("systemctl show {unit} failed");
    }
    Ok(stream_listens(&String::from_utf8_lossy(&out.stdout)))
}

/// The stream addresses of `systemctl show -p Listen --value` output.
fn stream_listens(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let (addr, kind) = l.trim().rsplit_once(" (")?;
            (kind == "Stream)").then(|| addr.to_owned())
        })
        .collect()
}

fn check(target: &str, json: bool, strict: bool) -> Result<(), Failure> {
    let target = resolve(target)?;
    let loaded = match load(&target, &process_env()) {
        Ok(l) => l,
        Err(Failure::Invalid(errors)) if json => {
            let doc = serde_json::json!({
                "file": target.path.display().to_string(),
                "ok": false,
                "problems": errors.errors().iter().map(|e| e.to_json()).collect::<Vec<_>>(),
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).context("cannot encode JSON")?
            );
            return Err(Failure::Printed(errors));
        }
        Err(e) => return Err(e),
    };
    let (sockets, note) = worker_sockets(&target, &loaded.config.listen);
    let (server, problems) = servers::review(&loaded, &target.path, &sockets);
    let errors = problems.iter().filter(|p| !p.is_warning()).count();
    let warnings = problems.len() - errors;
    if json {
        let doc = serde_json::json!({
            "file": target.path.display().to_string(),
            "ok": errors == 0,
            "server": server.as_ref().map(|s| s.name()),
            "sockets": sockets.addresses,
            "sockets_complete": sockets.complete,
            "problems": problems.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).context("cannot encode JSON")?
        );
    } else {
        if let Some(n) = note {
            eprintln!("kechictl: {n}");
        }
        for p in &problems {
            eprintln!("{p}");
        }
        let server = server.map_or(String::new(), |s| format!(" ({})", s.name()));
        match (errors, warnings) {
            (0, 0) => println!("{}: ok{server}", target.path.display()),
            (0, w) => println!("{}: ok{server}, {w} warning(s)", target.path.display()),
            (e, _) => println!(
                "{}: {e} error(s){server}, {warnings} warning(s)",
                target.path.display()
            ),
        }
    }
    if errors > 0 {
        let errors = problems.into_iter().collect();
        return Err(if json {
            Failure::Printed(ConfigErrors::new(errors))
        } else {
            Failure::Reported
        });
    }
    if strict && warnings > 0 {
        return Err(Failure::Reported);
    }
    Ok(())
}

fn show_config(target: &str, json: bool) -> Result<(), Failure> {
    let target = resolve(target)?;
    let env = match &target.app {
        Some(app) => match unit_env(app) {
            Ok(env) => {
                eprintln!(
                    "kechictl: overrides from the environment of {} (its Environment= settings; \
                     EnvironmentFile= is not read)",
                    app.service_unit()
                );
                env
            }
            Err(e) => {
                eprintln!("kechictl: {e:#}; overrides from this shell's environment instead");
                process_env()
            }
        },
        None => {
            eprintln!("kechictl: overrides from this shell's environment");
            process_env()
        }
    };
    let loaded = load(&target, &env)?;
    if json {
        let text = serde_json::to_string_pretty(&config::render_json(&loaded))
            .context("cannot encode JSON")?;
        println!("{text}");
    } else {
        print!("{}", config::render_text(&loaded));
    }
    Ok(())
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    kechi::quantity::parse_duration(s).map_err(|e| e.to_string())
}

fn app_name(app: &str) -> Result<AppName, Failure> {
    AppName::new(app).map_err(|e| Failure::Usage(e.to_string()))
}

/// One request to the app's kechid; an error reply becomes a runtime failure (or exit 4 for
/// a permission refusal).
fn ask(app: &AppName, req: &Request) -> Result<serde_json::Value, Failure> {
    // A system kechid (root) is found under /run/kechi whoever asks; a user's own kechid under
    // the user's runtime directory.
    let system = control::socket_path(std::path::Path::new("/run/kechi"), app.as_str());
    let path = if system.exists() && std::env::var_os("KECHI_RUNTIME_DIR").is_none() {
        system
    } else {
        control::socket_path(&control::runtime_dir(), app.as_str())
    };
    let reply = control::request(&path, req).map_err(Failure::Control)?;
    match reply.error {
        None => Ok(reply.parameters),
        Some(kind) if kind.ends_with("PermissionDenied") => {
            Err(Failure::Control(control::ClientError::Denied { path }))
        }
        Some(kind) => {
            let msg = reply
                .parameters
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_owned();
            Err(Failure::Runtime(anyhow::anyhow!("{kind}: {msg}")))
        }
    }
}

/// The idle time of an app its last kechid stopped for idleness and no kechid started since.
fn idle_stopped(app: &AppName) -> Option<u64> {
    let text = std::fs::read_to_string(
        std::path::Path::new("/run/kechi")
            .join(app.as_str())
            .join("idle-stop"),
    )
    .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("pending "))
        .and_then(|s| s.trim().parse().ok())
}

/// `start:` and `idle:` lines of `kechictl status`.
fn start_lines(s: &control::StartInfo) -> Vec<String> {
    let dur = |secs: u64| kechi::quantity::format_duration(std::time::Duration::from_secs(secs));
    let mut out = vec![];
    let how = match s.after_idle_secs {
        Some(idle) => format!("a cold start after an idle stop ({} idle)", dur(idle)),
        None => "not after an idle stop".to_owned(),
    };
    match s.ready_secs {
        Some(r) => out.push(format!(
            "start: first worker ready {r:.3} s after kechid started ({how})"
        )),
        None => out.push(format!("start: no worker ready yet ({how})")),
    }
    if s.idle_stop_after_secs > 0 {
        out.push(format!(
            "idle: {} without a connection; stops after {}; {} idle stop(s) since boot",
            dur(s.idle_secs.unwrap_or(0)),
            dur(s.idle_stop_after_secs),
            s.idle_stops
        ));
    }
    out
}

fn fetch_status(app: &AppName) -> Result<control::Status, Failure> {
    let v = ask(app, &Request::Status {})?;
    serde_json::from_value(v)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("bad status reply: {e}")))
}

fn status(app: &str, json: bool) -> Result<(), Failure> {
    let app = app_name(app)?;
    let st = match fetch_status(&app) {
        Ok(st) => st,
        Err(e) => {
            // Not running because it was stopped for idleness: say so (and how it comes back).
            if let Some(idle) = idle_stopped(&app) {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "{app} is stopped for idleness (no connection for {}): kechi@{app}.socket starts it at the next connection",
                    kechi::quantity::format_duration(std::time::Duration::from_secs(idle))
                )));
            }
            return Err(e);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
        return Ok(());
    }
    println!("{} (kechid pid {}): {}", st.app, st.kechid_pid, st.summary);
    if !st.listening.is_empty() {
        println!("listening: {}", st.listening.join(", "));
    }
    for line in start_lines(&st.start) {
        println!("{line}");
    }
    println!(
        "{:>6} {:>8} {:<24} {:<9} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>7} {:>4}",
        "WORKER",
        "PID",
        "SCOPE",
        "STATE",
        "AGE",
        "RSS",
        "PSS",
        "USS",
        "SHARED",
        "SWAP",
        "CGROUP",
        "TMP",
        "JE"
    );
    for w in &st.workers {
        let h = |b: Option<u64>| b.map_or("-".to_owned(), |b| kechi::quantity::Bytes(b).human());
        let m = w.memory.as_ref();
        let je = match w.jemalloc {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let age = age_text(w.age_secs);
        println!(
            "{:>6} {:>8} {:<24} {:<9} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>7} {:>4}",
            w.serial,
            w.pid,
            w.scope.as_deref().unwrap_or("-"),
            w.state,
            age,
            h(m.map(|m| m.rss)),
            h(m.map(|m| m.pss)),
            h(m.map(|m| m.uss)),
            m.and_then(|m| m.shared_percent)
                .map_or("-".to_owned(), |p| format!("{p:.0}%")),
            h(m.map(|m| m.swap)),
            h(m.and_then(|m| m.cgroup)),
            h(w.tmpdir_bytes),
            je
        );
    }
    if !st.events.is_empty() {
        println!("recent:");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for e in st.events.iter().rev().take(10) {
            // "UNIXTIME what" -> "12s ago  what"
            match e
                .split_once(' ')
                .and_then(|(t, what)| Some((t.parse::<u64>().ok()?, what)))
            {
                Some((t, what)) => {
                    let ago = age_text(now.saturating_sub(t));
                    println!("  {ago:>8} ago  {what}");
                }
                None => println!("  {e}"),
            }
        }
    }
    Ok(())
}

/// A time span in whole seconds as the status table shows it, always with a unit ("0s", "42s",
/// "1h2m"): a bare "0" would read as a count.
fn age_text(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    kechi::quantity::format_duration(std::time::Duration::from_secs(secs))
}

fn list(json: bool) -> Result<(), Failure> {
    let mut apps: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for dir in [
        std::path::PathBuf::from("/run/kechi"),
        control::runtime_dir(),
    ] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            apps.extend(rd.flatten().filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".ctl")
                    .map(str::to_owned)
            }));
        }
    }
    if let Ok(rd) = std::fs::read_dir("/etc/kechi") {
        apps.extend(rd.flatten().filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".toml")
                .map(str::to_owned)
        }));
    }
    let mut rows = Vec::new();
    for a in apps {
        let Ok(app) = AppName::new(&a) else { continue };
        let row = match fetch_status(&app) {
            Ok(st) => {
                let ready = st.workers.iter().filter(|w| w.state == "ready").count();
                let memory: u64 = st.workers.iter().filter_map(|w| w.memory_bytes).sum();
                serde_json::json!({"app": a, "state": "running", "kechid_pid": st.kechid_pid, "ready": ready, "wanted": st.workers_wanted, "memory_bytes": memory, "summary": st.summary})
            }
            Err(Failure::Control(control::ClientError::Denied { .. })) => {
                serde_json::json!({"app": a, "state": "running (permission denied)"})
            }
            Err(_) => serde_json::json!({"app": a, "state": "stopped"}),
        };
        rows.push(row);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:>8} {:>9} {:>10}",
        "APP", "STATE", "PID", "WORKERS", "MEMORY"
    );
    for r in rows {
        let g = |k: &str| {
            r.get(k)
                .map(|v| v.to_string().trim_matches('"').to_owned())
                .unwrap_or_else(|| "-".into())
        };
        let workers = if r.get("ready").is_some() {
            format!("{}/{}", g("ready"), g("wanted"))
        } else {
            "-".into()
        };
        let mem = r
            .get("memory_bytes")
            .and_then(|v| v.as_u64())
            .map_or("-".into(), |b| kechi::quantity::Bytes(b).human());
        println!(
            "{:<20} {:<10} {:>8} {:>9} {:>10}",
            g("app"),
            g("state"),
            g("kechid_pid"),
            workers,
            mem
        );
    }
    Ok(())
}

/// The processes of each worker of a running app: its scope's members, or its session.
fn app_processes(app: &AppName) -> Result<Vec<(Option<u64>, u32)>, Failure> {
    let st = fetch_status(app)?;
    let layout =
        kechi::memory::probe_layout(&kechi::memory::CgroupRoot::new("/sys/fs/cgroup")).ok();
    let mut out = Vec::new();
    for w in &st.workers {
        let from_scope = match (&layout, &w.scope) {
            (Some(l), Some(scope)) => kechi::memory::scope_dir(l, &app.slice_unit(), scope)
                .ok()
                .and_then(|d| kechi::memory::read_cgroup_procs(&d.procs).ok()),
            _ => None,
        };
        let pids = from_scope.unwrap_or_else(|| {
            kechi::monitor::session_members(std::path::Path::new("/proc"), w.pid)
        });
        out.extend(pids.into_iter().map(|p| (Some(w.serial), p)));
    }
    Ok(out)
}

fn mem(targets: &[String], json: bool) -> Result<(), Failure> {
    let procs: Vec<(Option<u64>, u32)> = if targets.iter().all(|t| t.parse::<u32>().is_ok()) {
        targets
            .iter()
            .filter_map(|t| t.parse().ok())
            .map(|p| (None, p))
            .collect()
    } else if targets.len() == 1 {
        app_processes(&app_name(&targets[0])?)?
    } else {
        return Err(Failure::Usage("give process ids, or one app name".into()));
    };
    let root = kechi::memory::ProcRoot::new("/proc");
    let mut rows = Vec::new();
    let mut total = kechi::memory::ProcMem::default();
    for (worker, pid) in procs {
        match kechi::memory::read_proc_mem(&root, pid) {
            Ok(m) => {
                total += m;
                let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ")
                    .trim()
                    .chars()
                    .take(40)
                    .collect::<String>();
                rows.push((worker, pid, m, cmd));
            }
            Err(e) => eprintln!("kechictl: {pid}: {e}"),
        }
    }
    let dentry = kechi::memory::read_slabinfo(&root)
        .ok()
        .and_then(|s| s.dentry_bytes());
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(w, pid, m, cmd)| serde_json::json!({"worker": w, "pid": pid, "command": cmd, "rss": m.rss, "pss": m.pss, "uss": m.uss, "shared": m.shared, "shared_percent": m.shared_percent(), "swap": m.swap}))
            .collect();
        let v = serde_json::json!({"processes": list, "total": {"rss": total.rss, "pss": total.pss, "uss": total.uss, "shared": total.shared, "swap": total.swap}, "dentry_slab_bytes": dentry});
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let h = |b: u64| kechi::quantity::Bytes(b).human();
    println!(
        "{:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}  COMMAND",
        "WORKER", "PID", "RSS", "PSS", "USS", "SHARED", "SHARED%", "SWAP"
    );
    for (w, pid, m, cmd) in &rows {
        let pct = m
            .shared_percent()
            .map_or("-".into(), |p| format!("{p:.0}%"));
        println!(
            "{:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}  {cmd}",
            w.map_or("-".into(), |w| w.to_string()),
            pid,
            h(m.rss),
            h(m.pss),
            h(m.uss),
            h(m.shared),
            pct,
            h(m.swap)
        );
    }
    println!(
        "{:>15} {:>9} {:>9} {:>9} {:>9}",
        "total",
        h(total.rss),
        h(total.pss),
        h(total.uss),
        h(total.shared)
    );
    println!(
        "RSS summed over processes (what RSS-based tools report): {}; really in use (PSS sum): {}",
        h(total.rss),
        h(total.pss)
    );
    if let Some(d) = dentry {
        println!("dentry slab: {}", h(d));
    }
    Ok(())
}

fn recycle(
    app: &str,
    worker: Option<u64>,
    all: bool,
    wait: bool,
    timeout: std::time::Duration,
) -> Result<(), Failure> {
    let app = app_name(app)?;
    let v = ask(&app, &Request::Recycle { worker, all })?;
    let r: control::RecycleReply = serde_json::from_value(v)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("bad recycle reply: {e}")))?;
    if r.serials.is_empty() {
        println!("no worker to recycle");
        return Ok(());
    }
    println!("recycling workers {:?}", r.serials);
    if !wait {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let st = fetch_status(&app)?;
        let left: Vec<u64> = st
            .workers
            .iter()
            .filter(|w| r.serials.contains(&w.serial) && w.state != "gone")
            .map(|w| w.serial)
            .collect();
        let ready = st.workers.iter().filter(|w| w.state == "ready").count();
        if left.is_empty() && ready >= st.workers_wanted as usize {
            println!("done: {}", st.summary);
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "workers {left:?} not replaced within {}",
                kechi::quantity::format_duration(timeout)
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn socket_unit_addresses() {
        assert_eq!(
            stream_listens(
                "/run/kechi/demo.sock (Stream)\n127.0.0.1:8080 (Stream)\n[::]:9000 (Stream)\n127.0.0.1:53 (Datagram)\n"
            ),
            ["/run/kechi/demo.sock", "127.0.0.1:8080", "[::]:9000"]
        );
        assert!(stream_listens("").is_empty());
    }

    #[test]
    fn targets() {
        let t = resolve("demo").ok().unwrap();
        assert_eq!(t.path, PathBuf::from("/etc/kechi/demo.toml"));
        assert!(t.app.is_some());
        let t = resolve("./demo.toml").ok().unwrap();
        assert_eq!(t.path, PathBuf::from("./demo.toml"));
        assert!(t.app.is_none());
        assert!(resolve("x.toml").ok().unwrap().app.is_none());
        assert!(matches!(resolve("Bad App"), Err(Failure::Usage(_))));
    }

    #[test]
    fn ages_always_carry_a_unit() {
        assert_eq!(age_text(0), "0s");
        assert_eq!(age_text(42), "42s");
        assert_eq!(age_text(3720), "1h2m");
    }
}

//! A worker that dies within a second of its start: one journal line with the last lines the app
//! wrote to stderr and a hint, instead of only "exit code 1".
//!
//! Workers inherit kechid's stdout and stderr. Under systemd that is the journal stream of
//! `kechi@APP.service`, so what the app prints is already in the journal (`_TRANSPORT=stdout`;
//! kechid's own records are `_TRANSPORT=journal`). journald credits each line to the process
//! that wrote it: `_PID` is the worker's, and `_SYSTEMD_UNIT` its scope `kechi-APP-N.scope`
//! while journald can still see the process (seen in t_crash: `kechid[WORKER-PID]: boom`), so
//! the query asks for either. kechid does not
//! put itself between the app and its stderr: a pipe read by kechid would lose the app's output,
//! and make its writes fail, whenever kechid is restarted or killed while the workers live on.
//! Instead, when a worker dies early, a blocking task asks `journalctl` for the unit's stdout
//! lines since that worker started and logs them with a hint. The lines are the worker's own.
//!
//! The event loop only starts the task ([`report`]); the query runs on tokio's blocking pool
//! with its own deadline. Without systemd (`--foreground`) the app's stderr is on kechid's own
//! terminal already, and nothing is done.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::app::AppName;
use crate::servers::{self, Server};

/// A worker that lived less than this is reported with its stderr.
pub const EARLY: Duration = Duration::from_secs(1);
/// Lines of stderr quoted.
const LINES: usize = 8;
/// journald reads the stream asynchronously: give it this long to catch up with the app's
/// last writes before asking.
const SETTLE: Duration = Duration::from_millis(500);
/// The query gives up after this long.
const DEADLINE: Duration = Duration::from_secs(5);

/// The `journalctl` arguments for the stdout lines of worker process `pid` (in scope `scope`)
/// since `since` (wall clock): `A B + C D` is (A and B) or (C and D).
pub fn journal_args(scope: &str, pid: i32, user: bool, since: SystemTime) -> Vec<String> {
    let micros = since
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let mut args = vec![];
    if user {
        args.push("--user".to_owned());
    }
    args.extend([
        "--no-pager".to_owned(),
        "--quiet".to_owned(),
        "--output=cat".to_owned(),
        format!("--lines={LINES}"),
        format!("--since=@{}.{:06}", micros / 1_000_000, micros % 1_000_000),
        "_TRANSPORT=stdout".to_owned(),
        format!(
            "{}={scope}",
            if user {
                "_SYSTEMD_USER_UNIT"
            } else {
                "_SYSTEMD_UNIT"
            }
        ),
        "+".to_owned(),
        "_TRANSPORT=stdout".to_owned(),
        format!("_PID={pid}"),
    ]);
    args
}

/// What to look at first, from the server and what it printed.
pub fn hint(app: &str, server: Option<&Server>, lines: &[String]) -> String {
    let text = lines.join("\n");
    let has = |s: &str| text.contains(s);
    let check = format!("run `kechictl check {app}`");
    if matches!(server, Some(Server::Puma(_))) && has("EACCES") && has("unlink") {
        return format!(
            "puma could not unlink an activated unix socket it does not bind: add -b for every \
             socket of kechi@{app}.socket (or --bind-to-activated-sockets=only), or replace the \
             unix socket by TCP (an empty ListenStream= line first); {check}"
        );
    }
    if has("Address already in use") || has("EADDRINUSE") {
        return format!(
            "the app binds an address of its own, which another worker already holds: make it \
             use the sockets kechi passes (LISTEN_FDS from fd 3, or SERVER_STARTER_PORT); {check}"
        );
    }
    if has("ModuleNotFoundError")
        || has("cannot load such file")
        || has("Can't locate")
        || has("Cannot find module")
    {
        return format!(
            "the app cannot find its code or a library: check directory, command and \
             environment (PATH, PYTHONPATH, RUBYLIB, PERL5LIB, NODE_PATH); {check}"
        );
    }
    if has("Permission denied") || has("EACCES") {
        return format!(
            "the worker's user lacks a permission the app needs (see above); {check} and \
             compare user and group with the owners of the app's files"
        );
    }
    match server {
        Some(s) => format!(
            "{check} (it knows how {} should be run under kechi)",
            s.name()
        ),
        None => format!("{check}, then run the command by hand as the worker's user"),
    }
}

/// The journal line for a worker that died `lived` after its start.
pub fn message(serial: u64, lived: Duration, exit: &str, lines: &[String], hint: &str) -> String {
    let said = if lines.is_empty() {
        "it wrote nothing to stderr".to_owned()
    } else {
        format!("its last lines on stderr: {}", lines.join(" | "))
    };
    format!(
        "worker {serial} died {} ms after it started ({exit}); {said}; hint: {hint}",
        lived.as_millis()
    )
}

/// Reports worker `serial` (main process `pid`) if it died within [`EARLY`] of `started`.
/// `unit` is kechid's own service, `None` in foreground mode (nothing to do then).
pub fn report(
    app: &AppName,
    unit: Option<&str>,
    worker: (u64, i32),
    started: Instant,
    exit: String,
    command: &[String],
) {
    let (serial, pid) = worker;
    let lived = started.elapsed();
    if unit.is_none() {
        return;
    }
    if lived >= EARLY {
        return;
    }
    let since = SystemTime::now()
        .checked_sub(lived + Duration::from_millis(50))
        .unwrap_or(UNIX_EPOCH);
    let user = !nix::unistd::geteuid().is_root();
    let args = journal_args(&app.scope_unit(serial), pid, user, since);
    let server = servers::recognise(command);
    let app = app.to_string();
    tokio::task::spawn_blocking(move || {
        std::thread::sleep(SETTLE);
        let lines = query(&args).unwrap_or_else(|e| vec![format!("(journalctl: {e})")]);
        let hint = hint(&app, server.as_ref(), &lines);
        tracing::warn!(APP = %app, WORKER = serial, REASON = "early-exit", "{}", message(serial, lived, &exit, &lines, &hint));
    });
}

/// Runs journalctl with a deadline; its output lines.
fn query(args: &[String]) -> Result<Vec<String>, String> {
    let mut child = Command::new("journalctl")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", DEADLINE.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        o.read_to_string(&mut out).map_err(|e| e.to_string())?;
    }
    Ok(out
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    #[test]
    fn journal_query() {
        let since = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(
            journal_args("kechi-demo-7.scope", 4242, false, since),
            [
                "--no-pager",
                "--quiet",
                "--output=cat",
                "--lines=8",
                "--since=@1700000000.123456",
                "_TRANSPORT=stdout",
                "_SYSTEMD_UNIT=kechi-demo-7.scope",
                "+",
                "_TRANSPORT=stdout",
                "_PID=4242"
            ]
        );
        let user = journal_args("kechi-demo-7.scope", 4242, true, since);
        assert_eq!(user[0], "--user");
        assert!(user.contains(&"_SYSTEMD_USER_UNIT=kechi-demo-7.scope".to_owned()));
    }

    #[test]
    fn hints() {
        let puma = servers::recognise(&lines("puma\n-b\ntcp://127.0.0.1:8080"));
        let h = hint(
            "demo",
            puma.as_ref(),
            &lines(
                "/usr/lib/ruby/puma/binder.rb:304:in `unlink': Permission denied @ apply2files - /run/kechi/demo.sock (Errno::EACCES)",
            ),
        );
        assert!(
            h.starts_with("puma could not unlink an activated unix socket"),
            "{h}"
        );
        assert!(
            h.contains("kechi@demo.socket") && h.ends_with("run `kechictl check demo`"),
            "{h}"
        );
        let h = hint(
            "demo",
            None,
            &lines("OSError: [Errno 98] Address already in use"),
        );
        assert!(h.starts_with("the app binds an address of its own"), "{h}");
        let h = hint(
            "demo",
            None,
            &lines("ModuleNotFoundError: No module named 'flask'"),
        );
        assert!(h.starts_with("the app cannot find its code"), "{h}");
        let gunicorn = servers::recognise(&lines("gunicorn\napp:app"));
        assert_eq!(
            hint("demo", gunicorn.as_ref(), &lines("boom")),
            "run `kechictl check demo` (it knows how gunicorn should be run under kechi)"
        );
        assert_eq!(
            hint("demo", None, &[]),
            "run `kechictl check demo`, then run the command by hand as the worker's user"
        );
    }

    #[test]
    fn the_journal_line() {
        assert_eq!(
            message(
                7,
                Duration::from_millis(420),
                "exit code 1",
                &lines("Traceback (most recent call last):\nboom"),
                "run `kechictl check demo`"
            ),
            "worker 7 died 420 ms after it started (exit code 1); its last lines on stderr: Traceback (most recent call last): | boom; hint: run `kechictl check demo`"
        );
        assert!(
            message(1, Duration::ZERO, "exit code 1", &[], "h")
                .contains("it wrote nothing to stderr")
        );
    }
}

//! Logging setup: structured records to the journal when kechid's stderr is connected to it
//! (fields APP, WORKER, PID, REASON searchable with `journalctl APP=demo`), plain lines on
//! stderr otherwise (foreground, a terminal, a container).

use std::io::Write;
use std::sync::OnceLock;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// The sink `init` installed; `last_words` needs it.
static SINK: OnceLock<Sink> = OnceLock::new();

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Stderr,
}

/// Installs the global subscriber. `KECHI_LOG` sets the level: a level (`debug`), or targets with
/// levels (`info,kechi::driver=debug,zbus=warn`); default `info`. A value that does not parse is
/// reported once and `info` used. (A plain target filter rather than tracing's EnvFilter: the
/// latter brings a regex engine, some 170 KB of code in a daemon whose size is a goal.)
pub fn init() -> Sink {
    let raw = std::env::var("KECHI_LOG").ok();
    let (filter, bad) = parse_filter(raw.as_deref());
    let sink = install(filter);
    let _ = SINK.set(sink);
    if let Some(why) = bad {
        tracing::warn!("KECHI_LOG ignored ({why}); logging at info");
    }
    sink
}

/// How bad a last word is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// Logs a message kechid writes just before it exits (a refused configuration, no bus).
///
/// Under systemd these go to stderr as plain lines with a syslog priority prefix (`<3>`), not
/// as native journal records: journald attributes a native record to a unit by reading the
/// sender's /proc entry, which is gone when kechid has already exited, and the record then
/// misses `journalctl -u kechi@APP` (seen when the machine is busy). A stream line belongs to
/// the unit that systemd opened the stream for, however soon the writer exits.
pub fn last_words(app: &str, severity: Severity, message: &str) {
    if SINK.get() == Some(&Sink::Journal) {
        let prio = match severity {
            Severity::Error => 3,
            Severity::Warning => 4,
        };
        let _ = writeln!(std::io::stderr(), "<{prio}>{message}");
        return;
    }
    match severity {
        Severity::Error if app.is_empty() => tracing::error!("{message}"),
        Severity::Error => tracing::error!(APP = %app, "{message}"),
        Severity::Warning if app.is_empty() => tracing::warn!("{message}"),
        Severity::Warning => tracing::warn!(APP = %app, "{message}"),
    }
}

/// The filter for `KECHI_LOG`'s value, and why the value was refused if it was.
fn parse_filter(raw: Option<&str>) -> (Targets, Option<String>) {
    let default = || Targets::new().with_default(tracing::Level::INFO);
    match raw.map(str::trim) {
        None | Some("") => (default(), None),
        Some(v) => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (default(), Some(format!("{v:?}: {e}"))),
        },
    }
}

fn install(filter: Targets) -> Sink {
    if stderr_is_journal()
        && let Ok(layer) = tracing_journald::layer()
    {
        let layer = layer
            .with_field_prefix(None)
            .with_syslog_identifier("kechid".into());
        tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init();
        return Sink::Journal;
    }
    use std::io::IsTerminal;
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .init();
    Sink::Stderr
}

/// systemd sets JOURNAL_STREAM=DEV:INODE when stderr is a journal stream; compare it with
/// stderr itself so an inherited variable does not fool us.
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn default_is_info() {
        let (t, bad) = parse_filter(None);
        assert!(bad.is_none());
        assert!(t.would_enable("kechi::driver", &Level::INFO));
        assert!(!t.would_enable("kechi::driver", &Level::DEBUG));
    }

    #[test]
    fn a_level_and_per_target_levels() {
        let (t, bad) = parse_filter(Some("warn,kechi::driver=debug"));
        assert!(bad.is_none());
        assert!(t.would_enable("kechi::driver", &Level::DEBUG));
        assert!(!t.would_enable("zbus", &Level::INFO));
        assert!(t.would_enable("zbus", &Level::WARN));
    }

    #[test]
    fn nonsense_falls_back_to_info_and_says_why() {
        let (t, bad) = parse_filter(Some("kechi=loud"));
        assert!(bad.unwrap().contains("kechi=loud"));
        assert!(t.would_enable("kechi", &Level::INFO));
    }
}

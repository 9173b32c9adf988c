//! Logging setup: structured records to the journal when kechid's stderr is connected to it
//! (fields APP, WORKER, PID, REASON searchable with `journalctl APP=demo`), plain lines on
//! stderr otherwise (foreground, a terminal, a container).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Stderr,
}

/// Installs the global subscriber. `KECHI_LOG` (an EnvFilter) sets the level; default `info`.
pub fn init() -> Sink {
    let filter = EnvFilter::try_from_env("KECHI_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
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

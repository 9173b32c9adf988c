//! The validated, typed configuration of one app: what every other module reads.
//!
//! Values here are already checked (ranges, paths, names); nothing downstream re-validates.
//! Provenance (where each effective value came from) lives beside it in [`Provenance`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::app::AppName;
use crate::quantity::{Bytes, Percent, Signal};

/// The whole effective configuration of one app.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub app: AppName,
    /// argv of a worker; `command[0]` is an absolute path or a name looked up in PATH at spawn.
    pub command: Vec<String>,
    /// Absolute working directory of the workers (default `/`).
    pub directory: PathBuf,
    /// Worker user; `None` means "the default": `nobody` when kechid runs as root, else kechid's user.
    pub user: Option<String>,
    /// Worker group; `None` means the user's primary group.
    pub group: Option<String>,
    /// Number of worker processes wanted (1..=256).
    pub workers: u32,
    pub environment: BTreeMap<String, String>,
    /// Addresses kechid binds itself when no socket unit hands it sockets (`listen = [...]`):
    /// `"/path.sock"`, `"127.0.0.1:8080"`, `"[::1]:8080"`, `":8080"`.
    pub listen: Vec<String>,
    pub ready: Ready,
    pub stop: Stop,
    pub memory: Memory,
    pub recycle: Recycle,
    pub restart: Restart,
    pub jemalloc: Jemalloc,
    pub tmpdir: TmpDir,
    pub control: Control,
    pub idle: Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyMode {
    /// READY=1 on kechid's notify socket from any process of the worker.
    Notify,
    /// A process of the worker is seen waiting on the inherited listening socket.
    Accept,
    /// Alive after `delay` (Server::Starter's KILL_OLD_DELAY).
    Delay,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ready {
    pub mode: ReadyMode,
    pub delay: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stop {
    pub signal: Signal,
    pub timeout: Duration,
}

/// What memory thresholds measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Uss,
    Pss,
    Rss,
    Cgroup,
}

/// A memory limit that may be switched off (`"infinity"`/`"max"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Bytes(Bytes),
    Infinity,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub max: Limit,
    pub high: Limit,
    /// `None` = leave systemd's default.
    pub swap_max: Option<Limit>,
    pub metric: Metric,
    pub recycle_above: Option<Bytes>,
    pub app_budget: Option<Bytes>,
    pub min_shared: Option<Percent>,
    pub child_signal: Option<Signal>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recycle {
    /// `Duration::ZERO` = off.
    pub max_age: Duration,
    pub jitter: Percent,
    pub min_interval: Duration,
    pub max_concurrent: u32,
    pub check_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub burst: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JemallocPath {
    Auto,
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Jemalloc {
    pub enabled: bool,
    pub path: JemallocPath,
    /// MALLOC_CONF; empty = kechi's default (`crate::jemalloc::DEFAULT_CONF`).
    pub conf: String,
    /// The checked library file to put in `LD_PRELOAD` (symlinks resolved, root-owned, not
    /// writable by others): filled by the host checks of `config::load` when `enabled`,
    /// `None` when disabled. Spawn uses this, never `path`, so "auto" is searched only once.
    pub library: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TmpDir {
    pub enabled: bool,
    pub size: Bytes,
}

/// Scale to zero.
#[derive(Debug, Clone, PartialEq)]
pub struct Idle {
    /// With no connection open or waiting on the app's sockets for this long, kechid stops
    /// every worker and exits; `Duration::ZERO` = never.
    pub stop_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub group: Option<String>,
}

/// Where an effective value came from, lowest precedence first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    Default,
    File {
        path: PathBuf,
        line: usize,
    },
    /// A `KECHI_*` variable.
    Env {
        var: String,
    },
    /// A Server::Starter variable (`AUTO_RESTART_INTERVAL`, `KILL_OLD_DELAY`, ...).
    Alias {
        var: String,
    },
}

/// Source of every key, by dotted key path (`"workers"`, `"memory.max"`, `"recycle.max-age"`).
pub type Provenance = BTreeMap<String, Source>;

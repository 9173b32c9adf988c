//! kechi: keeps web-app workers lean on small servers.
//!
//! `kechid` runs one app's workers as transient systemd scopes with memory limits, jemalloc
//! and a tmpfs TMPDIR, and recycles them without dropping a connection. `kechictl` inspects
//! and steers it. Both binaries are thin; everything lives in this library:
//!
//! - [`config`]: `/etc/kechi/APP.toml` + `KECHI_*` overrides -> a validated [`config::Config`].
//! - [`systemd`]: the seam to systemd's manager (D-Bus), behind [`systemd::Systemd`].
//! - [`spawn`]: race-free fork/exec of a worker into its scope.
//! - [`lifecycle`] and [`policy`]: the worker state machine and the pure decision core.
//! - [`driver`]: gathers events, calls the policy, carries out its actions.
//! - [`memory`]: pure parsers and rooted readers for /proc and cgroup accounting.

pub mod accept;
pub mod app;
pub mod boxwide;
pub mod config;
pub mod control;
pub mod control_server;
pub mod cpu_idle;
pub mod daemon_cli;
pub mod driver;
pub mod early_death;
pub mod exitcode;
pub mod idle;
pub mod jemalloc;
pub mod lifecycle;
pub mod link;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod policy;
pub mod psi;
pub mod quantity;
pub mod readiness;
pub mod sample_plan;
pub mod servers;
pub mod sockets;
pub mod sockflags;
pub mod spawn;
pub mod steer;
pub mod systemd;
pub mod tmpdir;
pub mod trim;
pub mod worker_env;
pub mod workers_file;

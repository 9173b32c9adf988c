//! The seam between kechi and systemd's manager.
//!
//! Everything above this module speaks kechi's types ([`ScopeSpec`], [`JobResult`],
//! [`UnitInfo`]) through the [`Systemd`] trait; zbus and D-Bus names appear only below it
//! (`proxy` holds one zbus proxy trait per interface, `dbus` the implementation, `address`
//! where the bus is, `props` the pure translation of a scope spec into unit properties).

mod address;
mod dbus;
pub mod props;
mod proxy;

use std::time::Duration;

pub use dbus::{Bus, CALL_DEADLINE, Connector, DbusSystemd};

/// What a worker's transient scope is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeSpec {
    /// `kechi-APP-N.scope`.
    pub unit: String,
    /// `kechi-APP.slice`.
    pub slice: String,
    pub description: String,
    /// The processes to move into the scope when it is created.
    pub pids: Vec<u32>,
    /// `None` = no limit ("infinity").
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    /// `None` = leave systemd's default; `Some(None)` = infinity.
    pub memory_swap_max: Option<Option<u64>>,
    /// Signal systemd sends when it stops the scope itself (e.g. on `systemctl stop` of it).
    pub kill_signal: i32,
    /// How long systemd waits after `kill_signal` before SIGKILL.
    pub stop_timeout: Duration,
    /// `CPUWeight=` while the worker loads (`None`: systemd's default, 100;
    /// [`CPU_WEIGHT_IDLE`]: idle).
    pub cpu_weight: Option<u64>,
}

/// `CPUWeight=idle` as systemd's D-Bus API spells it: on cgroup v2 the unit's `cpu.idle` is
/// set, on v1 it gets the lowest `cpu.shares` (see [`crate::cpu_idle`]).
pub const CPU_WEIGHT_IDLE: u64 = 0;

/// What a unit's CPU is held to ([`Systemd::set_cpu_cap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuCap {
    /// CPU time per second (one CPU's worth is a second)...
    pub quota: Duration,
    /// ...enforced over periods this long.
    pub period: Duration,
    /// Besides, `CPUWeight=idle` ([`CPU_WEIGHT_IDLE`]).
    pub idle: bool,
}

/// How a systemd job ended (`JobRemoved`'s result string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    Done,
    Canceled,
    Timeout,
    Failed,
    Dependency,
    Skipped,
    /// A result string this version of kechi does not know.
    Other(String),
}

impl JobResult {
    pub fn parse(s: &str) -> Self {
        match s {
            "done" => JobResult::Done,
            "canceled" => JobResult::Canceled,
            "timeout" => JobResult::Timeout,
            "failed" => JobResult::Failed,
            "dependency" => JobResult::Dependency,
            "skipped" => JobResult::Skipped,
            other => JobResult::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            JobResult::Done => "done",
            JobResult::Canceled => "canceled",
            JobResult::Timeout => "timeout",
            JobResult::Failed => "failed",
            JobResult::Dependency => "dependency",
            JobResult::Skipped => "skipped",
            JobResult::Other(s) => s,
        }
    }
}

/// One loaded unit, as `ListUnitsByPatterns` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitInfo {
    pub name: String,
    pub active_state: String,
    pub sub_state: String,
}

/// Which processes of a unit a signal goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillWho {
    Main,
    All,
}

/// Why an operation on systemd's manager failed. (zbus's error is boxed: it is large, and these
/// errors travel in every result of the seam.)
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot connect to systemd's manager on the {bus} bus: {source}")]
    Connect {
        bus: &'static str,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("D-Bus call {method}({unit}) failed: {source}")]
    Call {
        method: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("job for {unit} ended with result '{}'", result.as_str())]
    Job { unit: String, result: JobResult },
    #[error("no answer from systemd about the job for {unit} within {waited:?}")]
    JobTimeout { unit: String, waited: Duration },
    #[error("unit {0} is not loaded")]
    NoSuchUnit(String),
}

/// The operations kechi needs from systemd's manager.
#[allow(async_fn_in_trait)]
pub trait Systemd {
    /// Creates the scope, moves `spec.pids` into it and waits until its start job is done,
    /// as `systemd-run --scope` does. Fails unless the job result is `done`.
    async fn start_scope(&self, spec: &ScopeSpec, deadline: Duration) -> Result<(), SystemdError>;
    /// Stops a unit and waits for the stop job (bounded by `deadline`).
    async fn stop_unit(&self, unit: &str, deadline: Duration) -> Result<JobResult, SystemdError>;
    /// Sends `signal` to the unit's processes.
    async fn kill_unit(&self, unit: &str, who: KillWho, signal: i32) -> Result<(), SystemdError>;
    /// Loaded units whose names match the glob patterns.
    async fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitInfo>, SystemdError>;
    /// The pids in a unit's cgroup.
    async fn unit_pids(&self, unit: &str) -> Result<Vec<u32>, SystemdError>;
    /// A service's `Environment=` (as `KEY=VALUE` strings), as systemd has it loaded now.
    async fn service_environment(&self, unit: &str) -> Result<Vec<String>, SystemdError>;
    /// The type of the job pending on a unit now (`"stop"`, `"restart"`, ...), if any: how
    /// kechid tells `systemctl restart` (leave the workers for the next kechid) from `stop`.
    async fn unit_job_type(&self, unit: &str) -> Result<Option<String>, SystemdError>;
    /// Forgets a failed unit so its name can be reused and `--failed` stays clean.
    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError>;
    /// Sets a running unit's `CPUWeight=` for as long as it runs (not saved to disk);
    /// `None` returns it to systemd's default.
    async fn set_cpu_weight(&self, unit: &str, weight: Option<u64>) -> Result<(), SystemdError>;
    /// Caps a running unit's CPU for as long as it runs (not saved to disk): `CPUQuota=` and,
    /// with [`CpuCap::idle`], `CPUWeight=idle`, in one call; `None` removes both.
    async fn set_cpu_cap(&self, unit: &str, cap: Option<CpuCap>) -> Result<(), SystemdError>;
    /// Resolves once the link to the manager is lost (the bus daemon went away); a link that
    /// cannot be lost never resolves.
    async fn link_lost(&self) {
        std::future::pending::<()>().await
    }
    /// Whether the link is known to be lost now (without waiting for [`Systemd::link_lost`]).
    fn link_is_closed(&self) -> bool {
        false
    }
    /// Whether [`Systemd::reconnect`] can re-establish a lost link.
    fn can_reconnect(&self) -> bool {
        false
    }
    /// Replaces a lost link with a new one (connect and subscribe again).
    async fn reconnect(&self) -> Result<(), SystemdError> {
        Ok(())
    }
}

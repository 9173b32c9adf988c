//! [`Systemd`] over D-Bus: the system bus when kechid runs as root, the user bus otherwise.
//!
//! Jobs are awaited the way `systemd-run` does it: subscribe, start listening for
//! `JobRemoved` *before* issuing the call (so a job that finishes before the reply arrives is
//! not missed), then wait for the signal naming our job path, with a deadline.

use std::time::Duration;

use futures_util::StreamExt;
use zbus::Connection;
use zbus::zvariant::{OwnedObjectPath, Value};

use super::proxy::{JobProxy, ManagerProxy, ServiceProxy, UnitProxy};
use super::{JobResult, KillWho, ScopeSpec, Systemd, SystemdError, UnitInfo, props};

/// Which bus the manager is reached on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// The system manager (kechid as root).
    System,
    /// The user's own manager (`--user`).
    User,
}

impl Bus {
    fn name(self) -> &'static str {
        match self {
            Bus::System => "system",
            Bus::User => "user",
        }
    }
}

/// A connection to systemd's manager.
#[derive(Debug, Clone)]
pub struct DbusSystemd {
    conn: Connection,
    manager: ManagerProxy<'static>,
}

impl DbusSystemd {
    /// Connects to the manager on `bus` and subscribes to its job signals.
    pub async fn connect(bus: Bus) -> Result<Self, SystemdError> {
        // Calls without a job of their own (KillUnit, ListUnits...) are bounded too.
        let builder = match bus {
            Bus::System => zbus::connection::Builder::system(),
            Bus::User => zbus::connection::Builder::session(),
        };
        let conn = match builder {
            Ok(b) => b.method_timeout(Duration::from_secs(25)).build().await,
            Err(e) => Err(e),
        }
        .map_err(|source| SystemdError::Connect {
            bus: bus.name(),
            source,
        })?;
        Self::on_connection(conn, bus.name()).await
    }

    /// Uses an existing connection (a peer-to-peer one in tests).
    pub async fn on_connection(conn: Connection, what: &'static str) -> Result<Self, SystemdError> {
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(|source| SystemdError::Connect { bus: what, source })?;
        // Without Subscribe() the manager does not emit JobRemoved to us.
        manager
            .subscribe()
            .await
            .map_err(|source| SystemdError::Connect { bus: what, source })?;
        Ok(DbusSystemd { conn, manager })
    }

    /// Runs `call`, which returns a job path, and waits for that job's `JobRemoved`.
    async fn run_job<F>(
        &self,
        method: &'static str,
        unit: &str,
        deadline: Duration,
        call: F,
    ) -> Result<JobResult, SystemdError>
    where
        F: std::future::Future<Output = zbus::Result<OwnedObjectPath>>,
    {
        let call_err = |source| SystemdError::Call {
            method,
            unit: unit.to_owned(),
            source,
        };
        // One deadline for the call and the wait together: a manager that does not answer the
        // call at all must not hold kechid longer than one that never finishes the job.
        let until = tokio::time::Instant::now() + deadline;
        let timed_out = || SystemdError::JobTimeout {
            unit: unit.to_owned(),
            waited: deadline,
        };
        let mut removed = self.manager.receive_job_removed().await.map_err(call_err)?;
        let job = tokio::time::timeout_at(until, call)
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| {
                if is_no_such_unit(&e) {
                    SystemdError::NoSuchUnit(unit.to_owned())
                } else {
                    call_err(e)
                }
            })?;
        let wait = async {
            while let Some(sig) = removed.next().await {
                let Ok(args) = sig.args() else { continue };
                if args.job.as_str() == job.as_str() {
                    return Some(JobResult::parse(args.result));
                }
            }
            None
        };
        match tokio::time::timeout_at(until, wait).await {
            Ok(Some(result)) => Ok(result),
            Ok(None) => Err(SystemdError::Call {
                method,
                unit: unit.to_owned(),
                source: zbus::Error::Failure(
                    "the bus connection closed while waiting for a job".into(),
                ),
            }),
            Err(_) => Err(timed_out()),
        }
    }

    /// The underlying connection, e.g. to watch for its loss.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

impl Systemd for DbusSystemd {
    async fn start_scope(&self, spec: &ScopeSpec, deadline: Duration) -> Result<(), SystemdError> {
        let props = props::scope_properties(spec);
        let aux: &[(&str, &[(&str, Value<'_>)])] = &[];
        let call = self
            .manager
            .start_transient_unit(&spec.unit, "fail", &props, aux);
        match self
            .run_job("StartTransientUnit", &spec.unit, deadline, call)
            .await?
        {
            JobResult::Done => Ok(()),
            result => Err(SystemdError::Job {
                unit: spec.unit.clone(),
                result,
            }),
        }
    }

    async fn stop_unit(&self, unit: &str, deadline: Duration) -> Result<JobResult, SystemdError> {
        let call = self.manager.stop_unit(unit, "replace");
        self.run_job("StopUnit", unit, deadline, call).await
    }

    async fn kill_unit(&self, unit: &str, who: KillWho, signal: i32) -> Result<(), SystemdError> {
        let whom = match who {
            KillWho::Main => "main",
            KillWho::All => "all",
        };
        self.manager
            .kill_unit(unit, whom, signal)
            .await
            .map_err(|e| {
                if is_no_such_unit(&e) {
                    SystemdError::NoSuchUnit(unit.to_owned())
                } else {
                    SystemdError::Call {
                        method: "KillUnit",
                        unit: unit.to_owned(),
                        source: e,
                    }
                }
            })
    }

    async fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitInfo>, SystemdError> {
        let rows = self
            .manager
            .list_units_by_patterns(&[], patterns)
            .await
            .map_err(|source| SystemdError::Call {
                method: "ListUnitsByPatterns",
                unit: patterns.join(" "),
                source,
            })?;
        Ok(rows
            .into_iter()
            .map(|r| UnitInfo {
                name: r.0,
                active_state: r.3,
                sub_state: r.4,
            })
            .collect())
    }

    async fn unit_pids(&self, unit: &str) -> Result<Vec<u32>, SystemdError> {
        match self.manager.get_unit_processes(unit).await {
            Ok(rows) => Ok(rows.into_iter().map(|(_, pid, _)| pid).collect()),
            Err(e) if is_no_such_unit(&e) => Err(SystemdError::NoSuchUnit(unit.to_owned())),
            Err(source) => Err(SystemdError::Call {
                method: "GetUnitProcesses",
                unit: unit.to_owned(),
                source,
            }),
        }
    }

    async fn service_environment(&self, unit: &str) -> Result<Vec<String>, SystemdError> {
        let err = |source| SystemdError::Call {
            method: "GetUnit",
            unit: unit.to_owned(),
            source,
        };
        let path = self.manager.get_unit(unit).await.map_err(|e| {
            if is_no_such_unit(&e) {
                SystemdError::NoSuchUnit(unit.to_owned())
            } else {
                err(e)
            }
        })?;
        let svc = ServiceProxy::builder(&self.conn)
            .path(path)
            .map_err(err)?
            .build()
            .await
            .map_err(err)?;
        svc.environment()
            .await
            .map_err(|source| SystemdError::Call {
                method: "Get(Environment)",
                unit: unit.to_owned(),
                source,
            })
    }

    async fn unit_job_type(&self, unit: &str) -> Result<Option<String>, SystemdError> {
        let err = |method, source| SystemdError::Call {
            method,
            unit: unit.to_owned(),
            source,
        };
        let path = self.manager.get_unit(unit).await.map_err(|e| {
            if is_no_such_unit(&e) {
                SystemdError::NoSuchUnit(unit.to_owned())
            } else {
                err("GetUnit", e)
            }
        })?;
        let u = UnitProxy::builder(&self.conn)
            .path(path)
            .map_err(|e| err("Unit", e))?
            .build()
            .await
            .map_err(|e| err("Unit", e))?;
        let (id, job) = u.job().await.map_err(|e| err("Get(Job)", e))?;
        if id == 0 {
            return Ok(None);
        }
        let j = JobProxy::builder(&self.conn)
            .path(job)
            .map_err(|e| err("Job", e))?
            .build()
            .await
            .map_err(|e| err("Job", e))?;
        match j.job_type().await {
            Ok(t) => Ok(Some(t)),
            // The job may have finished between the two reads.
            Err(_) => Ok(None),
        }
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        match self.manager.reset_failed_unit(unit).await {
            Ok(()) => Ok(()),
            Err(e) if is_no_such_unit(&e) => Ok(()),
            Err(source) => Err(SystemdError::Call {
                method: "ResetFailedUnit",
                unit: unit.to_owned(),
                source,
            }),
        }
    }
}

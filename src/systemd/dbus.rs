//! [`Systemd`] over D-Bus: the system bus when kechid runs as root, the user bus otherwise.
//!
//! Jobs are awaited the way `systemd-run` does it: subscribe, start listening for
//! `JobRemoved` *before* issuing the call (so a job that finishes before the reply arrives is
//! not missed), then wait for the signal naming our job path, with a deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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

/// How a new connection is made: called at start and again after the link is lost.
pub type Connector = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Connection, SystemdError>> + Send>>
        + Send
        + Sync,
>;

/// One connection and the manager proxy on it.
#[derive(Debug, Clone)]
struct Link {
    conn: Connection,
    manager: ManagerProxy<'static>,
}

/// A connection to systemd's manager that can be re-established.
///
/// The D-Bus daemon can be restarted under kechid; the link is then gone for good and every
/// call on it fails at once. [`Systemd::link_lost`] tells the driver, which calls
/// [`Systemd::reconnect`] until a new connection is up: the workers do not depend on the link
/// and keep running meanwhile. A `daemon-reload` or `daemon-reexec` of the manager keeps the
/// link (the bus daemon stays); calls made while the manager re-executes fail and are retried
/// by the driver's own logic.
#[derive(Clone)]
pub struct DbusSystemd {
    link: Arc<Mutex<Link>>,
    connector: Option<Connector>,
    what: &'static str,
}

impl std::fmt::Debug for DbusSystemd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbusSystemd")
            .field("what", &self.what)
            .field("reconnects", &self.connector.is_some())
            .finish()
    }
}

impl DbusSystemd {
    /// Connects to the manager on `bus` and subscribes to its job signals.
    pub async fn connect(bus: Bus) -> Result<Self, SystemdError> {
        let connector: Connector = Arc::new(move || Box::pin(open_bus(bus)));
        Self::with_connector(connector, bus.name()).await
    }

    /// Connects with `connector`, and again with it whenever the link is lost.
    pub async fn with_connector(
        connector: Connector,
        what: &'static str,
    ) -> Result<Self, SystemdError> {
        let link = open_link(connector().await?, what).await?;
        Ok(DbusSystemd {
            link: Arc::new(Mutex::new(link)),
            connector: Some(connector),
            what,
        })
    }

    /// Uses an existing connection (a peer-to-peer one in tests); it cannot be re-established.
    pub async fn on_connection(conn: Connection, what: &'static str) -> Result<Self, SystemdError> {
        let link = open_link(conn, what).await?;
        Ok(DbusSystemd {
            link: Arc::new(Mutex::new(link)),
            connector: None,
            what,
        })
    }

    fn link(&self) -> Link {
        self.link.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn manager(&self) -> ManagerProxy<'static> {
        self.link().manager
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
        let mut removed = self
            .manager()
            .receive_job_removed()
            .await
            .map_err(call_err)?;
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

    /// The current connection.
    pub fn connection(&self) -> Connection {
        self.link().conn
    }
}

async fn open_bus(bus: Bus) -> Result<Connection, SystemdError> {
    // Calls without a job of their own (KillUnit, ListUnits...) are bounded too.
    let builder = match bus {
        Bus::System => zbus::connection::Builder::system(),
        Bus::User => zbus::connection::Builder::session(),
    };
    match builder {
        Ok(b) => b.method_timeout(Duration::from_secs(25)).build().await,
        Err(e) => Err(e),
    }
    .map_err(|source| SystemdError::Connect {
        bus: bus.name(),
        source,
    })
}

async fn open_link(conn: Connection, what: &'static str) -> Result<Link, SystemdError> {
    let manager = ManagerProxy::new(&conn)
        .await
        .map_err(|source| SystemdError::Connect { bus: what, source })?;
    subscribe(&manager, what).await?;
    Ok(Link { conn, manager })
}

/// Without Subscribe() the manager does not emit JobRemoved to us. Subscribing twice is
/// harmless: the manager answers that we already are.
async fn subscribe(
    manager: &ManagerProxy<'static>,
    what: &'static str,
) -> Result<(), SystemdError> {
    match manager.subscribe().await {
        Ok(()) => Ok(()),
        Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" =>
        {
            Ok(())
        }
        Err(source) => Err(SystemdError::Connect { bus: what, source }),
    }
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

impl Systemd for DbusSystemd {
    async fn start_scope(&self, spec: &ScopeSpec, deadline: Duration) -> Result<(), SystemdError> {
        let props = props::scope_properties(spec);
        let aux: &[(&str, &[(&str, Value<'_>)])] = &[];
        let manager = self.manager();
        let call = manager.start_transient_unit(&spec.unit, "fail", &props, aux);
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
        let manager = self.manager();
        let call = manager.stop_unit(unit, "replace");
        self.run_job("StopUnit", unit, deadline, call).await
    }

    async fn kill_unit(&self, unit: &str, who: KillWho, signal: i32) -> Result<(), SystemdError> {
        let whom = match who {
            KillWho::Main => "main",
            KillWho::All => "all",
        };
        self.manager()
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
            .manager()
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
        match self.manager().get_unit_processes(unit).await {
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
        let path = self.manager().get_unit(unit).await.map_err(|e| {
            if is_no_such_unit(&e) {
                SystemdError::NoSuchUnit(unit.to_owned())
            } else {
                err(e)
            }
        })?;
        let svc = ServiceProxy::builder(&self.connection())
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
        let path = self.manager().get_unit(unit).await.map_err(|e| {
            if is_no_such_unit(&e) {
                SystemdError::NoSuchUnit(unit.to_owned())
            } else {
                err("GetUnit", e)
            }
        })?;
        let u = UnitProxy::builder(&self.connection())
            .path(path)
            .map_err(|e| err("Unit", e))?
            .build()
            .await
            .map_err(|e| err("Unit", e))?;
        let (id, job) = u.job().await.map_err(|e| err("Get(Job)", e))?;
        if id == 0 {
            return Ok(None);
        }
        let j = JobProxy::builder(&self.connection())
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
        match self.manager().reset_failed_unit(unit).await {
            Ok(()) => Ok(()),
            Err(e) if is_no_such_unit(&e) => Ok(()),
            Err(source) => Err(SystemdError::Call {
                method: "ResetFailedUnit",
                unit: unit.to_owned(),
                source,
            }),
        }
    }

    async fn link_lost(&self) {
        self.connection().closed().await
    }

    fn link_is_closed(&self) -> bool {
        self.connection().is_closed()
    }

    fn can_reconnect(&self) -> bool {
        self.connector.is_some()
    }

    async fn reconnect(&self) -> Result<(), SystemdError> {
        let Some(connector) = &self.connector else {
            return Err(SystemdError::Connect {
                bus: self.what,
                source: zbus::Error::Failure("this connection cannot be re-established".into()),
            });
        };
        let link = open_link(connector().await?, self.what).await?;
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = link;
        Ok(())
    }
}

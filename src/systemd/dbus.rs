//! [`Systemd`] over D-Bus: the system bus when kechid runs as root, the user bus otherwise.
//!
//! Jobs are awaited the way `systemd-run` does it: subscribe, start listening for
//! `JobRemoved` *before* issuing the call (so a job that finishes before the reply arrives is
//! not missed), then wait for the signal naming our job path, with a deadline. On a bus, a
//! `JobRemoved` counts only if it comes from the current owner of `org.freedesktop.systemd1`
//! (anyone may send us a signal directly).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixStream;

use super::{JobResult, KillWho, ScopeSpec, Systemd, SystemdError, UnitInfo, props};
use crate::dbus::{self, Connection, Value};

const SERVICE: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const BUS: &str = "org.freedesktop.DBus";
const BUS_PATH: &str = "/org/freedesktop/DBus";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

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

/// One connection, and the unique bus name that owned the manager's name when last asked.
#[derive(Debug, Clone)]
struct Link {
    conn: Connection,
    owner: Arc<Mutex<Option<String>>>,
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

    /// Speaks peer-to-peer on `stream` (the manager's own end of a socket, in tests); such a
    /// link cannot be re-established.
    pub async fn on_connection(
        stream: UnixStream,
        what: &'static str,
    ) -> Result<Self, SystemdError> {
        let conn = Connection::peer(stream)
            .await
            .map_err(|source| SystemdError::Connect { bus: what, source })?;
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

    /// The current connection.
    pub fn connection(&self) -> Connection {
        self.link().conn
    }

    async fn manager_call(
        &self,
        member: &str,
        body: Vec<Value>,
    ) -> Result<Vec<Value>, dbus::Error> {
        self.connection()
            .call(SERVICE, MANAGER_PATH, MANAGER, member, body)
            .await
    }

    /// A property of the object at `path`, through `org.freedesktop.DBus.Properties.Get`.
    async fn property(
        &self,
        path: &str,
        interface: &str,
        name: &str,
    ) -> Result<Value, dbus::Error> {
        let body = vec![Value::str(interface), Value::str(name)];
        let mut reply = self
            .connection()
            .call(SERVICE, path, PROPERTIES, "Get", body)
            .await?;
        match reply.pop() {
            Some(Value::Variant(v)) if reply.is_empty() => Ok(*v),
            _ => Err(dbus::Error::Reply("Get did not return one variant")),
        }
    }

    /// `GetUnit`: the unit's object path.
    async fn unit_path(&self, unit: &str) -> Result<String, SystemdError> {
        let reply = self.manager_call("GetUnit", vec![Value::str(unit)]).await;
        match reply.and_then(object_path) {
            Ok(p) => Ok(p),
            Err(e) => Err(call_error("GetUnit", unit, e)),
        }
    }

    /// Whether a signal from `sender` comes from systemd's manager.
    async fn from_manager(link: &Link, sender: Option<&str>) -> bool {
        if !link.conn.is_bus() {
            return true;
        }
        let Some(sender) = sender else { return false };
        if link
            .owner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            == Some(sender)
        {
            return true;
        }
        // Not the owner we knew: the manager may have re-executed and taken its name again.
        let owner = link
            .conn
            .call(
                BUS,
                BUS_PATH,
                BUS,
                "GetNameOwner",
                vec![Value::str(SERVICE)],
            )
            .await
            .ok()
            .and_then(|b| Some(b.first()?.as_str()?.to_owned()));
        let ok = owner.as_deref() == Some(sender);
        *link.owner.lock().unwrap_or_else(|e| e.into_inner()) = owner;
        ok
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
        F: Future<Output = Result<Vec<Value>, dbus::Error>>,
    {
        // One deadline for the call and the wait together: a manager that does not answer the
        // call at all must not hold kechid longer than one that never finishes the job.
        let until = tokio::time::Instant::now() + deadline;
        let timed_out = || SystemdError::JobTimeout {
            unit: unit.to_owned(),
            waited: deadline,
        };
        let link = self.link();
        let mut removed = link.conn.signals(MANAGER, "JobRemoved");
        let job = tokio::time::timeout_at(until, call)
            .await
            .map_err(|_| timed_out())?
            .and_then(object_path)
            .map_err(|e| call_error(method, unit, e))?;
        let wait = async {
            while let Some(sig) = removed.next().await {
                // JobRemoved(u id, o job, s unit, s result)
                let [_, Value::Path(path), _, Value::Str(result)] = &sig.body[..] else {
                    continue;
                };
                if *path == job && Self::from_manager(&link, sig.sender.as_deref()).await {
                    return Some(JobResult::parse(result));
                }
            }
            None
        };
        match tokio::time::timeout_at(until, wait).await {
            Ok(Some(result)) => Ok(result),
            Ok(None) => Err(SystemdError::Call {
                method,
                unit: unit.to_owned(),
                source: dbus::Error::Failure(
                    "the bus connection closed while waiting for a job".into(),
                ),
            }),
            Err(_) => Err(timed_out()),
        }
    }
}

/// `NoSuchUnit` as its own error, anything else as a failed call.
fn call_error(method: &'static str, unit: &str, e: dbus::Error) -> SystemdError {
    if e.is_named(NO_SUCH_UNIT) {
        SystemdError::NoSuchUnit(unit.to_owned())
    } else {
        SystemdError::Call {
            method,
            unit: unit.to_owned(),
            source: e,
        }
    }
}

/// A reply of one object path.
fn object_path(mut body: Vec<Value>) -> Result<String, dbus::Error> {
    match body.pop() {
        Some(Value::Path(p)) if body.is_empty() => Ok(p),
        _ => Err(dbus::Error::Reply("expected an object path")),
    }
}

async fn open_bus(bus: Bus) -> Result<Connection, SystemdError> {
    let address = match bus {
        Bus::System => Ok(dbus::system_bus_address()),
        Bus::User => dbus::session_bus_address(),
    };
    let conn = match address {
        Ok(a) => Connection::open_bus(&a).await,
        Err(e) => Err(e),
    };
    conn.map_err(|source| SystemdError::Connect {
        bus: bus.name(),
        source,
    })
}

async fn open_link(conn: Connection, what: &'static str) -> Result<Link, SystemdError> {
    let connect_err = |source| SystemdError::Connect { bus: what, source };
    if conn.is_bus() {
        // Ask the bus daemon for the manager's JobRemoved broadcasts.
        let rule = format!(
            "type='signal',sender='{SERVICE}',path='{MANAGER_PATH}',interface='{MANAGER}',member='JobRemoved'"
        );
        conn.call(BUS, BUS_PATH, BUS, "AddMatch", vec![Value::str(rule)])
            .await
            .map_err(connect_err)?;
    }
    // Without Subscribe() the manager does not emit JobRemoved to us. Subscribing twice is
    // harmless: the manager answers that we already are.
    match conn
        .call(SERVICE, MANAGER_PATH, MANAGER, "Subscribe", vec![])
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_named("org.freedesktop.systemd1.AlreadySubscribed") => {}
        Err(e) => return Err(connect_err(e)),
    }
    Ok(Link {
        conn,
        owner: Arc::new(Mutex::new(None)),
    })
}

impl Systemd for DbusSystemd {
    async fn start_scope(&self, spec: &ScopeSpec, deadline: Duration) -> Result<(), SystemdError> {
        let props = props::scope_properties(spec)
            .into_iter()
            .map(|(name, v)| Value::Struct(vec![Value::str(name), Value::Variant(Box::new(v))]))
            .collect();
        let body = vec![
            Value::str(spec.unit.as_str()),
            Value::str("fail"),
            Value::Array("(sv)".into(), props),
            Value::Array("(sa(sv))".into(), vec![]),
        ];
        let call = self.manager_call("StartTransientUnit", body);
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
        let call = self.manager_call("StopUnit", vec![Value::str(unit), Value::str("replace")]);
        self.run_job("StopUnit", unit, deadline, call).await
    }

    async fn kill_unit(&self, unit: &str, who: KillWho, signal: i32) -> Result<(), SystemdError> {
        let whom = match who {
            KillWho::Main => "main",
            KillWho::All => "all",
        };
        let body = vec![Value::str(unit), Value::str(whom), Value::I32(signal)];
        match self.manager_call("KillUnit", body).await {
            Ok(_) => Ok(()),
            Err(e) => Err(call_error("KillUnit", unit, e)),
        }
    }

    async fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitInfo>, SystemdError> {
        let err = |source| SystemdError::Call {
            method: "ListUnitsByPatterns",
            unit: patterns.join(" "),
            source,
        };
        let body = vec![Value::strs(&[]), Value::strs(patterns)];
        let reply = self
            .manager_call("ListUnitsByPatterns", body)
            .await
            .map_err(err)?;
        // a(ssssssouso): name, description, load, active, sub, ...
        let row = |r: &Value| {
            let f = r.as_struct()?;
            let s = |i: usize| f.get(i)?.as_str().map(str::to_owned);
            Some(UnitInfo {
                name: s(0)?,
                active_state: s(3)?,
                sub_state: s(4)?,
            })
        };
        let rows = reply.first().and_then(Value::as_array);
        rows.and_then(|rows| rows.iter().map(row).collect())
            .ok_or_else(|| err(dbus::Error::Reply("ListUnitsByPatterns: not a(ssssssouso)")))
    }

    async fn unit_pids(&self, unit: &str) -> Result<Vec<u32>, SystemdError> {
        let reply = self
            .manager_call("GetUnitProcesses", vec![Value::str(unit)])
            .await
            .map_err(|e| call_error("GetUnitProcesses", unit, e))?;
        // a(sus): cgroup path, pid, command line.
        let pid = |r: &Value| r.as_struct()?.get(1)?.as_u32();
        let rows = reply.first().and_then(Value::as_array);
        rows.and_then(|rows| rows.iter().map(pid).collect())
            .ok_or_else(|| {
                call_error(
                    "GetUnitProcesses",
                    unit,
                    dbus::Error::Reply("GetUnitProcesses: not a(sus)"),
                )
            })
    }

    async fn service_environment(&self, unit: &str) -> Result<Vec<String>, SystemdError> {
        let path = self.unit_path(unit).await?;
        let err = |source| SystemdError::Call {
            method: "Get(Environment)",
            unit: unit.to_owned(),
            source,
        };
        let env = self
            .property(&path, "org.freedesktop.systemd1.Service", "Environment")
            .await
            .map_err(err)?;
        let strings = env
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect());
        strings.ok_or_else(|| err(dbus::Error::Reply("Environment is not as")))
    }

    async fn unit_job_type(&self, unit: &str) -> Result<Option<String>, SystemdError> {
        let path = self.unit_path(unit).await?;
        let err = |source| SystemdError::Call {
            method: "Get(Job)",
            unit: unit.to_owned(),
            source,
        };
        let job = self
            .property(&path, "org.freedesktop.systemd1.Unit", "Job")
            .await
            .map_err(err)?;
        // (uo): 0 and "/" when no job is pending.
        let (id, job) = match job.as_struct() {
            Some([Value::U32(id), Value::Path(p)]) => (*id, p.clone()),
            _ => return Err(err(dbus::Error::Reply("Job is not (uo)"))),
        };
        if id == 0 {
            return Ok(None);
        }
        match self
            .property(&job, "org.freedesktop.systemd1.Job", "JobType")
            .await
        {
            Ok(Value::Str(t)) => Ok(Some(t)),
            // The job may have finished between the two reads.
            _ => Ok(None),
        }
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        match self
            .manager_call("ResetFailedUnit", vec![Value::str(unit)])
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_named(NO_SUCH_UNIT) => Ok(()),
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
                source: dbus::Error::Failure("this connection cannot be re-established".into()),
            });
        };
        let link = open_link(connector().await?, self.what).await?;
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = link;
        Ok(())
    }
}

//! [`Systemd`] over D-Bus with zbus: the system bus when kechid runs as root, the user bus
//! otherwise.
//!
//! Jobs are awaited the way `systemd-run` does it: subscribe, start listening for
//! `JobRemoved` *before* issuing the call (so a job that finishes before the reply arrives is
//! not missed), then wait for the signal naming our job path, with a deadline.
//!
//! Any local peer may send kechid a signal directly (the bus policy allows signals to anyone),
//! so a `JobRemoved` counts only if its sender is the unique name that owns
//! `org.freedesktop.systemd1` now, as the bus daemon says (`GetNameOwner`, asked again when a
//! signal for our job comes from another name: the manager may have re-executed). The check is
//! kechid's own ([`JobWatch`]) rather than zbus's proxy signal stream, which follows the
//! owner through `NameOwnerChanged` signals that a peer could forge as well.
//!
//! Every call has a deadline: a job's call and its wait share the caller's; any other call
//! has [`CALL_DEADLINE`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use zbus::message::Type as MessageType;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::{Connection, MatchRule, MessageStream};

use super::proxy::{JobProxy, JobRemoved, ManagerProxy, ServiceProxy, UnitProxy};
use super::{
    CpuCap, JobResult, KillWho, ScopeSpec, Systemd, SystemdError, UnitInfo, address, props,
};

const SERVICE: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
const ALREADY_SUBSCRIBED: &str = "org.freedesktop.systemd1.AlreadySubscribed";

/// How long any call without a job of its own may take (and the connection's own bound on
/// every method call).
pub const CALL_DEADLINE: Duration = Duration::from_secs(25);

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

/// One connection, its manager proxy, and the unique bus name that owned the manager's name
/// when last asked.
#[derive(Debug, Clone)]
struct Link {
    conn: Connection,
    manager: ManagerProxy<'static>,
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

    /// Uses an existing connection (a peer-to-peer one to a fake manager, in tests); such a
    /// link cannot be re-established.
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

    /// The current connection.
    pub fn connection(&self) -> Connection {
        self.link().conn
    }

    /// `SetUnitProperties` for as long as the unit runs (not saved to disk).
    async fn set_runtime_properties(
        &self,
        unit: &str,
        props: &[(&str, zbus::zvariant::Value<'_>)],
    ) -> Result<(), SystemdError> {
        let manager = self.manager();
        bounded(
            "SetUnitProperties",
            unit,
            manager.set_unit_properties(unit, true, props),
        )
        .await
    }

    /// `GetUnit`: the unit's object path.
    async fn unit_path(&self, unit: &str) -> Result<OwnedObjectPath, SystemdError> {
        bounded("GetUnit", unit, self.manager().get_unit(unit)).await
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
        F: Future<Output = zbus::Result<OwnedObjectPath>>,
    {
        // One deadline for the subscription, the call and the wait together: a manager that
        // does not answer the call at all must not hold kechid longer than one that never
        // finishes the job.
        let timed_out = || SystemdError::JobTimeout {
            unit: unit.to_owned(),
            waited: deadline,
        };
        let job = async {
            let mut watch = JobWatch::new(self.link())
                .await
                .map_err(|e| call_error(method, unit, e))?;
            let job = call.await.map_err(|e| call_error(method, unit, e))?;
            match watch.removed(&job).await {
                Some(result) => Ok(result),
                None => Err(SystemdError::Call {
                    method,
                    unit: unit.to_owned(),
                    source: Box::new(zbus::Error::Failure(
                        "the bus connection closed while waiting for a job".into(),
                    )),
                }),
            }
        };
        tokio::time::timeout(deadline, job)
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }
}

/// The manager's `JobRemoved` signals as they arrive on one link, from the moment it is made.
struct JobWatch {
    link: Link,
    signals: MessageStream,
}

impl JobWatch {
    async fn new(link: Link) -> zbus::Result<Self> {
        // The bus daemon forwards broadcasts from the manager's name only; a signal sent to
        // kechid directly passes this rule too (zbus cannot match a well-known sender
        // locally), hence the sender check in `sent_by_manager`.
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(SERVICE)?
            .path(MANAGER_PATH)?
            .interface(MANAGER)?
            .member("JobRemoved")?
            .build();
        let signals = MessageStream::for_match_rule(rule, &link.conn, None).await?;
        Ok(JobWatch { link, signals })
    }

    /// The result of `job`, once the manager reports it removed; `None` if the link closed.
    async fn removed(&mut self, job: &OwnedObjectPath) -> Option<JobResult> {
        while let Some(msg) = self.signals.next().await {
            let Ok(msg) = msg else { continue };
            let Some(signal) = JobRemoved::from_message(msg.clone()) else {
                continue;
            };
            let Ok(args) = signal.args() else { continue };
            if args.job != *job {
                continue;
            }
            let sender = msg.header().sender().map(|s| s.as_str().to_owned());
            if self.sent_by_manager(sender.as_deref()).await {
                return Some(JobResult::parse(&args.result));
            }
            tracing::warn!(
                sender = sender.as_deref().unwrap_or("-"),
                job = job.as_str(),
                "ignored a JobRemoved signal not sent by systemd's manager"
            );
        }
        None
    }

    /// Whether a signal from `sender` comes from systemd's manager.
    async fn sent_by_manager(&self, sender: Option<&str>) -> bool {
        if !self.link.conn.is_bus() {
            // Peer to peer: the only peer is the manager.
            return true;
        }
        let Some(sender) = sender else { return false };
        let known = |owner: &Mutex<Option<String>>| {
            owner.lock().unwrap_or_else(|e| e.into_inner()).as_deref() == Some(sender)
        };
        if known(&self.link.owner) {
            return true;
        }
        // Not the owner we knew: the manager may have re-executed and taken its name again.
        let owner = match zbus::fdo::DBusProxy::new(&self.link.conn).await {
            Ok(bus) => tokio::time::timeout(
                CALL_DEADLINE,
                bus.get_name_owner(SERVICE.try_into().expect("a valid bus name")),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(|o| o.as_str().to_owned()),
            Err(_) => None,
        };
        *self.link.owner.lock().unwrap_or_else(|e| e.into_inner()) = owner;
        known(&self.link.owner)
    }
}

/// `call`, bounded by [`CALL_DEADLINE`]; `NoSuchUnit` as its own error.
async fn bounded<T>(
    method: &'static str,
    unit: &str,
    call: impl Future<Output = zbus::Result<T>>,
) -> Result<T, SystemdError> {
    match tokio::time::timeout(CALL_DEADLINE, call).await {
        Ok(r) => r.map_err(|e| call_error(method, unit, e)),
        Err(_) => Err(SystemdError::Call {
            method,
            unit: unit.to_owned(),
            source: Box::new(zbus::Error::InputOutput(Arc::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply within {CALL_DEADLINE:?}"),
            )))),
        }),
    }
}

/// `NoSuchUnit` as its own error, anything else as a failed call.
fn call_error(method: &'static str, unit: &str, e: zbus::Error) -> SystemdError {
    if is_named(&e, NO_SUCH_UNIT) {
        SystemdError::NoSuchUnit(unit.to_owned())
    } else {
        SystemdError::Call {
            method,
            unit: unit.to_owned(),
            source: Box::new(e),
        }
    }
}

/// Whether `e` is an error reply named `name`.
fn is_named(e: &zbus::Error, name: &str) -> bool {
    matches!(e, zbus::Error::MethodError(n, _, _) if n.as_str() == name)
}

async fn open_bus(bus: Bus) -> Result<Connection, SystemdError> {
    let connect_err = |source| SystemdError::Connect {
        bus: bus.name(),
        source: Box::new(source),
    };
    let address = match bus {
        Bus::System => address::system_bus(),
        Bus::User => address::user_bus(),
    }
    .map_err(connect_err)?;
    let shown = address.to_string();
    let connect = async {
        builder(address)
            .await?
            .method_timeout(CALL_DEADLINE)
            .build()
            .await
    };
    match tokio::time::timeout(CALL_DEADLINE, connect).await {
        Ok(conn) => conn.map_err(connect_err),
        Err(_) => Err(connect_err(zbus::Error::Failure(format!(
            "no answer from {shown} within {CALL_DEADLINE:?}"
        )))),
    }
}

/// A connection builder for `address`. A socket path (the system bus, a user bus) is connected
/// here, on the event loop: zbus would connect it on a thread of tokio's blocking pool, and an
/// exited thread leaves its stack and malloc arena mapped in kechid for good. Anything else
/// (abstract sockets, TCP, an address with a guid to check) is left to zbus.
async fn builder(address: zbus::Address) -> zbus::Result<zbus::connection::Builder<'static>> {
    use zbus::address::transport::{Transport, UnixSocket};
    let path = match address.transport() {
        Transport::Unix(u) if address.guid().is_none() => match u.path() {
            UnixSocket::File(path) => Some(path.clone()),
            _ => None,
        },
        _ => None,
    };
    match path {
        Some(path) => match tokio::net::UnixStream::connect(&path).await {
            Ok(stream) => Ok(zbus::connection::Builder::unix_stream(stream)),
            Err(e) => Err(zbus::Error::Connection(Arc::new(e), address)),
        },
        None => zbus::connection::Builder::address(address),
    }
}

async fn open_link(conn: Connection, what: &'static str) -> Result<Link, SystemdError> {
    let connect_err = |source| SystemdError::Connect {
        bus: what,
        source: Box::new(source),
    };
    let manager = ManagerProxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(connect_err)?;
    // Without Subscribe() the manager does not emit JobRemoved to us. Subscribing twice is
    // harmless: the manager answers that we already are.
    match tokio::time::timeout(CALL_DEADLINE, manager.subscribe()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if is_named(&e, ALREADY_SUBSCRIBED) => {}
        Ok(Err(e)) => return Err(connect_err(e)),
        Err(_) => {
            return Err(connect_err(zbus::Error::Failure(format!(
                "Subscribe: no reply within {CALL_DEADLINE:?}"
            ))));
        }
    }
    Ok(Link {
        conn,
        manager,
        owner: Arc::new(Mutex::new(None)),
    })
}

/// A property proxy for the object at `path` (no cache: each property is read once).
async fn object<'p, P>(
    conn: &Connection,
    path: OwnedObjectPath,
    method: &'static str,
    unit: &str,
) -> Result<P, SystemdError>
where
    P: From<zbus::Proxy<'p>> + zbus::proxy::Defaults,
{
    let build = async {
        zbus::proxy::Builder::<P>::new(conn)
            .path(path)?
            .cache_properties(CacheProperties::No)
            .build()
            .await
    };
    bounded(method, unit, build).await
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
        let manager = self.manager();
        bounded("KillUnit", unit, manager.kill_unit(unit, whom, signal)).await
    }

    async fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitInfo>, SystemdError> {
        let manager = self.manager();
        let joined = patterns.join(" ");
        let call = manager.list_units_by_patterns(&[], patterns);
        let rows = bounded("ListUnitsByPatterns", &joined, call).await?;
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
        let manager = self.manager();
        let rows = bounded("GetUnitProcesses", unit, manager.get_unit_processes(unit)).await?;
        Ok(rows.into_iter().map(|(_, pid, _)| pid).collect())
    }

    async fn service_environment(&self, unit: &str) -> Result<Vec<String>, SystemdError> {
        let path = self.unit_path(unit).await?;
        let conn = self.connection();
        let svc: ServiceProxy<'_> = object(&conn, path, "Service", unit).await?;
        bounded("Get(Environment)", unit, svc.environment()).await
    }

    async fn unit_job_type(&self, unit: &str) -> Result<Option<String>, SystemdError> {
        let path = self.unit_path(unit).await?;
        let conn = self.connection();
        let u: UnitProxy<'_> = object(&conn, path, "Unit", unit).await?;
        let (id, job) = bounded("Get(Job)", unit, u.job()).await?;
        if id == 0 {
            return Ok(None);
        }
        let j: JobProxy<'_> = object(&conn, job, "Job", unit).await?;
        // The job may have finished between the two reads.
        Ok(bounded("Get(JobType)", unit, j.job_type()).await.ok())
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        let manager = self.manager();
        match bounded("ResetFailedUnit", unit, manager.reset_failed_unit(unit)).await {
            Err(SystemdError::NoSuchUnit(_)) => Ok(()),
            r => r,
        }
    }

    async fn set_cpu_weight(&self, unit: &str, weight: Option<u64>) -> Result<(), SystemdError> {
        self.set_runtime_properties(unit, &[props::cpu_weight(weight)])
            .await
    }

    async fn set_cpu_cap(&self, unit: &str, cap: Option<CpuCap>) -> Result<(), SystemdError> {
        self.set_runtime_properties(unit, &props::cpu_cap(cap))
            .await
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
                source: Box::new(zbus::Error::Failure(
                    "this connection cannot be re-established".into(),
                )),
            });
        };
        let link = open_link(connector().await?, self.what).await?;
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = link;
        Ok(())
    }
}

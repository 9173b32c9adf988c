//! A scriptable stand-in for systemd's `org.freedesktop.systemd1.Manager`, served with zbus on
//! one end of a peer-to-peer socket pair, so that `DbusSystemd`, its proxies and its job
//! waiting run unchanged on the other end.
//!
//! Every call is recorded (with the D-Bus signature of each `StartTransientUnit` property).
//! What the fake answers is set per test through [`Fake`]: the job result, when `JobRemoved`
//! is sent relative to the method reply, stray `JobRemoved` signals for other jobs, units that
//! are not loaded, and the rows of the listing calls.
//!
//! There is no bus daemon on a peer-to-peer connection: signals go straight to the peer.

#![allow(dead_code)] // Each test binary uses its own part of the fake.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kechi::systemd::DbusSystemd;
use tokio::net::UnixStream;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue};
use zbus::{Connection, Guid, connection};

pub const MANAGER_PATH: &str = "/org/freedesktop/systemd1";

/// When `JobRemoved` for the job a method call creates is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobTiming {
    /// Before the method reply (systemd can finish a job within the call).
    BeforeReply,
    /// This long after the method reply.
    AfterReply(Duration),
    /// Never: the caller's deadline has to end the wait.
    Never,
}

/// One call the fake received, with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Subscribe,
    StartTransientUnit {
        name: String,
        mode: String,
        properties: Vec<Property>,
        aux: usize,
    },
    StopUnit {
        name: String,
        mode: String,
    },
    KillUnit {
        name: String,
        whom: String,
        signal: i32,
    },
    GetUnit {
        name: String,
    },
    ListUnitsByPatterns {
        states: Vec<String>,
        patterns: Vec<String>,
    },
    GetUnitProcesses {
        name: String,
    },
    ResetFailedUnit {
        name: String,
    },
    SetUnitProperties {
        name: String,
        runtime: bool,
        properties: Vec<Property>,
    },
}

/// One unit property of `StartTransientUnit`, as it arrived on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    pub name: String,
    /// The D-Bus signature of the variant's content, e.g. `au` for `PIDs`.
    pub signature: String,
    pub value: OwnedValue,
}

/// Properties as they arrived on the wire (`StartTransientUnit`, `SetUnitProperties`).
fn wire_properties(properties: Vec<(String, OwnedValue)>) -> Vec<Property> {
    properties
        .into_iter()
        .map(|(name, value)| Property {
            name,
            signature: value.value_signature().to_string(),
            value,
        })
        .collect()
}

/// A `JobRemoved` the fake sends on its own, for a job that is not the caller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StraySignal {
    pub id: u32,
    pub job: String,
    pub unit: String,
    pub result: String,
}

/// A row of `ListUnitsByPatterns`; the remaining fields of systemd's row are filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRow {
    pub name: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
}

/// A row of `GetUnitProcesses`: (cgroup path, pid, command line).
pub type ProcessRow = (String, u32, String);

/// What the fake answers, and what it was asked.
#[derive(Debug)]
pub struct State {
    pub calls: Vec<Call>,
    /// The result string of every job's `JobRemoved` ("done", "failed", ...).
    pub job_result: String,
    pub timing: JobTiming,
    /// Sent just before the caller's own `JobRemoved` (or, with [`JobTiming::Never`], instead).
    pub stray: Vec<StraySignal>,
    /// Units that are not loaded: StartTransientUnit aside, calls on them fail with
    /// `org.freedesktop.systemd1.NoSuchUnit`.
    pub no_such_unit: HashSet<String>,
    /// Units for which StartTransientUnit fails with `org.freedesktop.systemd1.UnitExists`.
    pub unit_exists: HashSet<String>,
    /// How long every method waits before it answers.
    pub reply_delay: Duration,
    pub units: Vec<UnitRow>,
    pub processes: HashMap<String, Vec<ProcessRow>>,
    /// Service unit name -> object path of its `Service` object (see [`Fake::add_service`]).
    pub services: HashMap<String, OwnedObjectPath>,
    /// Names passed to ResetFailedUnit that the fake accepted.
    pub reset: Vec<String>,
    next_job: u32,
}

impl Default for State {
    fn default() -> Self {
        State {
            calls: Vec::new(),
            job_result: "done".into(),
            timing: JobTiming::BeforeReply,
            stray: Vec::new(),
            no_such_unit: HashSet::new(),
            unit_exists: HashSet::new(),
            reply_delay: Duration::ZERO,
            units: Vec::new(),
            processes: HashMap::new(),
            services: HashMap::new(),
            reset: Vec::new(),
            next_job: 100,
        }
    }
}

/// The errors systemd's manager answers with, as D-Bus error names.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
pub enum ManagerError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
    UnitExists(String),
}

/// The served object at [`MANAGER_PATH`].
struct Manager {
    state: Arc<Mutex<State>>,
}

impl Manager {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn check_loaded(&self, name: &str) -> Result<(), ManagerError> {
        if self.state().no_such_unit.contains(name) {
            return Err(ManagerError::NoSuchUnit(format!("Unit {name} not loaded.")));
        }
        Ok(())
    }

    async fn delay(&self) {
        let d = self.state().reply_delay;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// Creates a job for `unit` and sends the signals the script asks for; returns its path.
    async fn job(
        &self,
        emitter: &SignalEmitter<'_>,
        unit: &str,
    ) -> Result<OwnedObjectPath, ManagerError> {
        let (id, timing, result, stray) = {
            let mut s = self.state();
            s.next_job += 1;
            (s.next_job, s.timing, s.job_result.clone(), s.stray.clone())
        };
        let path = OwnedObjectPath::try_from(format!("{MANAGER_PATH}/job/{id}")).unwrap();
        let emitter = emitter.to_owned();
        let unit = unit.to_owned();
        let job = path.clone();
        let send = async move {
            for s in &stray {
                let stray_path = ObjectPath::try_from(s.job.as_str()).unwrap();
                Manager::job_removed(&emitter, s.id, stray_path, &s.unit, &s.result)
                    .await
                    .unwrap();
            }
            if timing != JobTiming::Never {
                Manager::job_removed(&emitter, id, job.clone().into_inner(), &unit, &result)
                    .await
                    .unwrap();
            }
        };
        match timing {
            // The signal is queued on the connection before the reply that follows.
            JobTiming::BeforeReply | JobTiming::Never => send.await,
            JobTiming::AfterReply(d) => {
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    send.await;
                });
            }
        }
        Ok(path)
    }
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    async fn subscribe(&self) {
        self.state().calls.push(Call::Subscribe);
    }

    async fn start_transient_unit(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        name: String,
        mode: String,
        properties: Vec<(String, OwnedValue)>,
        aux: Vec<(String, Vec<(String, OwnedValue)>)>,
    ) -> Result<OwnedObjectPath, ManagerError> {
        let exists = {
            let mut s = self.state();
            s.calls.push(Call::StartTransientUnit {
                name: name.clone(),
                mode,
                properties: wire_properties(properties),
                aux: aux.len(),
            });
            s.unit_exists.contains(&name)
        };
        self.delay().await;
        if exists {
            return Err(ManagerError::UnitExists(format!(
                "Unit {name} was already loaded or has a fragment file."
            )));
        }
        self.job(&emitter, &name).await
    }

    async fn stop_unit(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        name: String,
        mode: String,
    ) -> Result<OwnedObjectPath, ManagerError> {
        self.state().calls.push(Call::StopUnit {
            name: name.clone(),
            mode,
        });
        self.delay().await;
        self.check_loaded(&name)?;
        self.job(&emitter, &name).await
    }

    async fn kill_unit(&self, name: String, whom: String, signal: i32) -> Result<(), ManagerError> {
        self.state().calls.push(Call::KillUnit {
            name: name.clone(),
            whom,
            signal,
        });
        self.delay().await;
        self.check_loaded(&name)
    }

    async fn get_unit(&self, name: String) -> Result<OwnedObjectPath, ManagerError> {
        self.state()
            .calls
            .push(Call::GetUnit { name: name.clone() });
        self.delay().await;
        self.check_loaded(&name)?;
        let path = self.state().services.get(&name).cloned();
        path.ok_or_else(|| ManagerError::NoSuchUnit(format!("Unit {name} not loaded.")))
    }

    #[allow(clippy::type_complexity)]
    async fn list_units_by_patterns(
        &self,
        states: Vec<String>,
        patterns: Vec<String>,
    ) -> Vec<(
        String,
        String,
        String,
        String,
        String,
        String,
        OwnedObjectPath,
        u32,
        String,
        OwnedObjectPath,
    )> {
        self.state()
            .calls
            .push(Call::ListUnitsByPatterns { states, patterns });
        self.delay().await;
        let root = OwnedObjectPath::try_from("/").unwrap();
        self.state()
            .units
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    format!("fake unit {}", u.name),
                    u.load_state.clone(),
                    u.active_state.clone(),
                    u.sub_state.clone(),
                    String::new(),
                    unit_path(&u.name),
                    0,
                    String::new(),
                    root.clone(),
                )
            })
            .collect()
    }

    async fn get_unit_processes(&self, name: String) -> Result<Vec<ProcessRow>, ManagerError> {
        self.state()
            .calls
            .push(Call::GetUnitProcesses { name: name.clone() });
        self.delay().await;
        self.check_loaded(&name)?;
        Ok(self
            .state()
            .processes
            .get(&name)
            .cloned()
            .unwrap_or_default())
    }

    async fn set_unit_properties(
        &self,
        name: String,
        runtime: bool,
        properties: Vec<(String, OwnedValue)>,
    ) -> Result<(), ManagerError> {
        self.state().calls.push(Call::SetUnitProperties {
            name: name.clone(),
            runtime,
            properties: wire_properties(properties),
        });
        self.delay().await;
        self.check_loaded(&name)
    }

    async fn reset_failed_unit(&self, name: String) -> Result<(), ManagerError> {
        self.state()
            .calls
            .push(Call::ResetFailedUnit { name: name.clone() });
        self.delay().await;
        self.check_loaded(&name)?;
        self.state().reset.push(name);
        Ok(())
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

/// A service unit's object, for its `Environment` property.
struct Service {
    environment: Vec<String>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Service")]
impl Service {
    #[zbus(property)]
    fn environment(&self) -> Vec<String> {
        self.environment.clone()
    }
}

/// systemd's object path for a unit: bytes other than `[A-Za-z0-9]` become `_xx`.
pub fn unit_path(name: &str) -> OwnedObjectPath {
    let mut p = format!("{MANAGER_PATH}/unit/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            p.push(char::from(b));
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    OwnedObjectPath::try_from(p).unwrap()
}

/// A manager on `state`, served on `a` (one end of a socket pair); completes once a client on
/// the other end has authenticated, so it is awaited together with the client.
async fn serve(a: UnixStream, state: Arc<Mutex<State>>) -> Connection {
    let manager = Manager { state };
    connection::Builder::unix_stream(a)
        .server(Guid::generate())
        .unwrap()
        .p2p()
        .serve_at(MANAGER_PATH, manager)
        .unwrap()
        .build()
        .await
        .unwrap()
}

/// The client end of a peer-to-peer connection on `b`, as kechid's side of the fake.
async fn client(b: UnixStream) -> Connection {
    connection::Builder::unix_stream(b)
        .p2p()
        .build()
        .await
        .unwrap()
}

/// The server ends of a reconnecting fake's connections, and whether to refuse new ones.
#[derive(Clone, Default)]
pub struct Reconnects {
    pub conns: Arc<Mutex<Vec<Connection>>>,
    pub refuse: Arc<Mutex<bool>>,
}

/// The test's side of the fake: its script, its record, and the server connection.
#[derive(Debug, Clone)]
pub struct Fake {
    state: Arc<Mutex<State>>,
    server: Connection,
}

impl Fake {
    /// Serves a fresh fake on one end of a socket pair and connects `DbusSystemd` to the other.
    pub async fn start() -> (Fake, DbusSystemd) {
        Self::start_with(State::default()).await
    }

    pub async fn start_with(state: State) -> (Fake, DbusSystemd) {
        let state = Arc::new(Mutex::new(state));
        let (a, b) = UnixStream::pair().unwrap();
        // The handshake needs both ends at once.
        let (server, client) = tokio::join!(serve(a, state.clone()), client(b));
        let sd = DbusSystemd::on_connection(client, "test").await.unwrap();
        (Fake { state, server }, sd)
    }

    /// Like [`Fake::start`], but `DbusSystemd` reconnects through a connector that serves the
    /// same state on a fresh socket pair each time (like a bus daemon coming back). The
    /// returned list holds each connection's server end, the newest last; while `refuse` is
    /// set, connecting fails.
    pub async fn start_reconnectable() -> (Fake, DbusSystemd, Reconnects) {
        let state = Arc::new(Mutex::new(State::default()));
        let servers = Reconnects::default();
        let connector: kechi::systemd::Connector = {
            let state = state.clone();
            let servers = servers.clone();
            Arc::new(move || {
                let state = state.clone();
                let servers = servers.clone();
                Box::pin(async move {
                    if *servers.refuse.lock().unwrap() {
                        return Err(kechi::systemd::SystemdError::Connect {
                            bus: "test",
                            source: Box::new(zbus::Error::Failure("refused".into())),
                        });
                    }
                    let (a, b) = UnixStream::pair().unwrap();
                    let (server, client) = tokio::join!(serve(a, state), client(b));
                    servers.conns.lock().unwrap().push(server);
                    Ok(client)
                })
            })
        };
        let sd = DbusSystemd::with_connector(connector, "test")
            .await
            .unwrap();
        let server = servers.conns.lock().unwrap()[0].clone();
        (Fake { state, server }, sd, servers)
    }

    /// The script and record, to read or change.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The properties of the last StartTransientUnit call.
    pub fn last_start_properties(&self) -> Vec<Property> {
        self.calls()
            .into_iter()
            .rev()
            .find_map(|c| match c {
                Call::StartTransientUnit { properties, .. } => Some(properties),
                _ => None,
            })
            .expect("no StartTransientUnit call")
    }

    pub fn set_job_result(&self, result: &str) {
        self.state().job_result = result.to_owned();
    }

    pub fn set_timing(&self, timing: JobTiming) {
        self.state().timing = timing;
    }

    pub fn set_not_loaded(&self, unit: &str) {
        self.state().no_such_unit.insert(unit.to_owned());
    }

    /// Serves a `Service` object for `unit` with this `Environment`, found through GetUnit.
    pub async fn add_service(&self, unit: &str, environment: &[&str]) {
        let path = unit_path(unit);
        let service = Service {
            environment: environment.iter().map(|s| s.to_string()).collect(),
        };
        let added = self
            .server
            .object_server()
            .at(path.clone(), service)
            .await
            .unwrap();
        assert!(added, "a Service object for {unit} is already served");
        self.state().services.insert(unit.to_owned(), path);
    }

    /// The server's connection, e.g. to close it under the client.
    pub fn server(&self) -> &Connection {
        &self.server
    }
}

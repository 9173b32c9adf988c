//! Systemd operations as tasks, and the link to the manager.
//!
//! Contract: the loop never awaits the bus. Each operation ([`Driver::launch`]) runs as a
//! local task with an explicit deadline and reports back as one [`Done`] event on the loop's
//! channel, success, failure or deadline alike; the loop carries on meanwhile. A lost link
//! (the bus daemon went away) is retried with backoff ([`crate::link::LinkWatch`]), each
//! attempt an operation too; once back, scopes that belong to no worker are stopped.

use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::Driver;
use crate::systemd::{JobResult, KillWho, ScopeSpec, Systemd, SystemdError, UnitInfo};

/// How long one attempt to reconnect to systemd may take: a bus daemon that was just
/// restarted answers at once, but the manager may take a while to come back on it.
pub(super) const RECONNECT_DEADLINE: Duration = Duration::from_secs(3);
/// How long a SIGKILL through systemd (KillUnit) may take before kechid kills the main
/// process itself.
pub(super) const KILL_DEADLINE: Duration = Duration::from_secs(5);
/// How often a stop without an answer is asked again.
const STOP_ATTEMPTS: u32 = 10;
/// How long a call that makes no job (a property set) may take.
pub(super) const QUICK_CALL_DEADLINE: Duration = Duration::from_secs(10);
/// How long the stray scan after a reconnect may take.
const STRAY_SCAN_DEADLINE: Duration = Duration::from_secs(10);
/// How many operations may await the manager's reply at once; the others wait their turn in
/// order. The system bus lets one connection have 128 calls awaiting a reply
/// (dbus-daemon's `max_replies_per_connection`) and refuses or drops the rest: with 200 workers
/// started at once, the scopes past that never reported back and their workers stayed held
/// until systemd's start timeout. Half of it leaves room for the calls of other tasks.
pub(super) const OPS_AT_ONCE: usize = 64;

/// Why an operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error("no answer from systemd's manager within {}", crate::quantity::format_duration(*.0))]
    Deadline(Duration),
}

impl OpError {
    pub(super) fn is_no_such_unit(&self) -> bool {
        matches!(self, OpError::Systemd(SystemdError::NoSuchUnit(_)))
    }
}

/// One unit of the app found by a scan, with the pids in it (only when adopting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedUnit {
    pub unit: UnitInfo,
    pub pids: Vec<u32>,
}

/// What a scan of the app's scopes is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanPurpose {
    /// At start: take over an earlier kechid's workers.
    Adopt,
    /// After a reconnect: stop scopes whose worker is gone.
    Strays,
}

/// A finished systemd operation, as the loop receives it.
#[derive(Debug)]
pub enum Done {
    /// The scope of a held worker exists (its start job is done), or could not be created.
    ScopeStarted {
        serial: u64,
        result: Result<(), OpError>,
    },
    /// A unit was stopped (a worker's scope after its exit, a stale or stray scope).
    UnitStopped {
        serial: Option<u64>,
        unit: String,
        wait: Duration,
        /// 1 for the first attempt.
        attempt: u32,
        result: Result<JobResult, OpError>,
    },
    /// SIGKILL was sent through systemd to a worker's scope.
    UnitKilled {
        serial: u64,
        pid: nix::unistd::Pid,
        unit: String,
        result: Result<(), OpError>,
    },
    /// A ready worker's scope got the default CPU weight back (or not).
    CpuWeight {
        serial: u64,
        unit: String,
        result: Result<(), OpError>,
    },
    /// A stopping worker's scope got its CPU cap (or not); its stop signal follows.
    StopCapped {
        serial: u64,
        unit: String,
        result: Result<(), OpError>,
    },
    /// kechid's own unit's `Environment=`, for a reload.
    Environment(Result<Vec<String>, OpError>),
    /// The job pending on kechid's own unit, for SIGTERM; `reconnected` if the link had to be
    /// re-established first.
    JobType {
        result: Result<Option<String>, OpError>,
        reconnected: bool,
    },
    /// The app's scopes.
    Scanned {
        purpose: ScanPurpose,
        result: Result<Vec<ScannedUnit>, OpError>,
    },
    /// A reconnect attempt ended.
    Reconnected(Result<(), OpError>),
    /// A worker's own sockets have had no connection waiting for [`crate::steer::DRAIN_SETTLE`]
    /// (with how long that took), or still had some after [`crate::steer::DRAIN_MAX`].
    Drained {
        serial: u64,
        waited: Result<Duration, u32>,
    },
    /// A held worker was let go to exec (not a systemd operation, but as slow: it waits for
    /// the child's exec).
    Released {
        serial: u64,
        result: Result<nix::unistd::Pid, crate::spawn::SpawnError>,
    },
}

/// Runs `op` against `sd` within `deadline`.
async fn bounded<T>(
    deadline: Duration,
    op: impl Future<Output = Result<T, SystemdError>>,
) -> Result<T, OpError> {
    match tokio::time::timeout(deadline, op).await {
        Ok(r) => r.map_err(OpError::from),
        Err(_) => Err(OpError::Deadline(deadline)),
    }
}

impl<S: Systemd + 'static> Driver<S> {
    /// Starts one operation as a task; `done` turns its outcome into the loop's event. Without
    /// a manager nothing is started.
    pub(super) fn launch<T: 'static, F>(
        &mut self,
        deadline: Duration,
        op: impl FnOnce(Rc<S>) -> F + 'static,
        done: impl FnOnce(Result<T, OpError>) -> Done + 'static,
    ) where
        F: Future<Output = Result<T, SystemdError>> + 'static,
    {
        let Some(sd) = self.systemd.clone() else {
            return;
        };
        let tx = self.ops_tx.clone();
        let slots = Rc::clone(&self.op_slots);
        self.in_flight += 1;
        // Boxed before it is handed to tokio: an operation's future is kilobytes (zbus's call
        // and job wait), and passed by value down tokio's spawn path it was copied onto the
        // stack at each level, which left kechid's main stack tens of KiB deeper for good
        // (touched stack pages stay resident).
        tokio::task::spawn_local(Box::pin(async move {
            // The deadline is the manager's to keep, so it starts once the call is made: a
            // turn in the queue is bounded by the deadlines of the calls ahead of it.
            let _slot = slots.acquire().await;
            let r = bounded(deadline, op(sd)).await;
            let _ = tx.send(done(r));
        }));
    }

    /// Creates a held worker's scope; [`Done::ScopeStarted`] when its start job is done.
    pub(super) fn start_scope(&mut self, serial: u64, spec: ScopeSpec, deadline: Duration) {
        // The manager's own job deadline is the operation's; the task's is a little longer,
        // so a job that times out in systemd is reported as such rather than as silence.
        self.launch(
            deadline + Duration::from_secs(1),
            move |sd| async move { sd.start_scope(&spec, deadline).await },
            move |result| Done::ScopeStarted { serial, result },
        );
    }

    /// Stops a unit; [`Done::UnitStopped`] when its stop job is done.
    pub(super) fn stop_unit(&mut self, serial: Option<u64>, unit: String, wait: Duration) {
        self.stop_unit_attempt(serial, unit, wait, 1);
    }

    fn stop_unit_attempt(
        &mut self,
        serial: Option<u64>,
        unit: String,
        wait: Duration,
        attempt: u32,
    ) {
        let name = unit.clone();
        self.launch(
            wait + Duration::from_secs(1),
            move |sd| async move { sd.stop_unit(&name, wait).await },
            move |result| Done::UnitStopped {
                serial,
                unit,
                wait,
                attempt,
                result,
            },
        );
    }

    /// SIGKILL to everything in a worker's scope; [`Done::UnitKilled`].
    pub(super) fn kill_unit(&mut self, serial: u64, pid: nix::unistd::Pid, unit: String) {
        let name = unit.clone();
        self.launch(
            KILL_DEADLINE,
            move |sd| async move { sd.kill_unit(&name, KillWho::All, libc::SIGKILL).await },
            move |result| Done::UnitKilled {
                serial,
                pid,
                unit,
                result,
            },
        );
    }

    /// Lists the app's scopes (with their pids when adopting); [`Done::Scanned`].
    pub(super) fn scan_scopes(&mut self, purpose: ScanPurpose, deadline: Duration) {
        let pattern = format!("kechi-{}-*.scope", self.opts.app);
        self.launch(
            deadline,
            move |sd| async move {
                let units = sd.list_units(&[pattern.as_str()]).await?;
                let mut out = Vec::with_capacity(units.len());
                for unit in units {
                    let pids = if purpose == ScanPurpose::Adopt && unit.active_state == "active" {
                        sd.unit_pids(&unit.name).await.unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    out.push(ScannedUnit { unit, pids });
                }
                Ok(out)
            },
            move |result| Done::Scanned { purpose, result },
        );
    }

    /// Whether the link to the manager is down now (noticing a loss the loop has not seen yet:
    /// it acts before it listens).
    pub(super) fn link_down(&mut self) -> bool {
        if self.link.is_up() && self.systemd.as_ref().is_some_and(|sd| sd.link_is_closed()) {
            self.on_link_lost();
        }
        !self.link.is_up()
    }

    /// The bus daemon went away: workers keep running; reconnect with backoff.
    pub(super) fn on_link_lost(&mut self) {
        self.link.lost(Instant::now());
        if self.systemd.as_ref().is_some_and(|sd| sd.can_reconnect()) {
            tracing::warn!(APP = %self.opts.app, "lost the D-Bus connection to systemd's manager; the workers keep running; reconnecting");
        } else {
            self.link.give_up();
            tracing::error!(APP = %self.opts.app, "lost the D-Bus connection to systemd's manager and cannot re-establish it");
        }
    }

    /// One attempt to re-establish a lost link; [`Done::Reconnected`].
    pub(super) fn reconnect(&mut self) {
        if self.reconnecting || self.link.is_up() {
            return;
        }
        self.reconnecting = true;
        self.launch(
            RECONNECT_DEADLINE,
            |sd| async move { sd.reconnect().await },
            Done::Reconnected,
        );
    }

    /// On success, stops the scopes that a failed stop left behind while the link was down.
    pub(super) fn on_reconnected(&mut self, result: Result<(), OpError>) {
        self.reconnecting = false;
        match result {
            Ok(()) => self.link_restored(),
            Err(e) => {
                let next = self.link.failed(Instant::now());
                let msg = format!(
                    "reconnecting to systemd's manager (attempt {}): {e}; next in {}",
                    self.link.attempts,
                    crate::quantity::format_duration(
                        next.saturating_duration_since(Instant::now())
                    )
                );
                if self.link.attempts == 1 || self.link.attempts % 10 == 0 {
                    tracing::warn!(APP = %self.opts.app, "{msg}");
                } else {
                    tracing::debug!(APP = %self.opts.app, "{msg}");
                }
            }
        }
    }

    /// The link is back (by a reconnect attempt, or one made before a call that needed it).
    pub(super) fn link_restored(&mut self) {
        if self.link.is_up() {
            return;
        }
        let down = self.link.restored(Instant::now());
        tracing::info!(APP = %self.opts.app, "reconnected to systemd's manager after {}", crate::quantity::format_duration(down));
        self.scan_scopes(ScanPurpose::Strays, STRAY_SCAN_DEADLINE);
    }

    /// Stops this app's scopes that belong to no worker kechid knows: left behind when their
    /// stop could not reach systemd.
    pub(super) fn on_stray_scan(&mut self, result: Result<Vec<ScannedUnit>, OpError>) {
        let Ok(units) = result else { return };
        for u in units {
            let Some(serial) = self.opts.app.parse_scope_serial(&u.unit.name) else {
                continue;
            };
            if self.procs.contains_key(&serial)
                || self.holding.contains_key(&serial)
                || u.unit.active_state != "active"
            {
                continue;
            }
            tracing::warn!(APP = %self.opts.app, WORKER = serial, "stopping {}: its worker is gone", u.unit.name);
            self.stop_unit(
                Some(serial),
                u.unit.name,
                self.policy.stop_timeout + Duration::from_secs(5),
            );
        }
    }

    /// Logs how a stop ended.
    pub(super) fn on_unit_stopped(
        &mut self,
        serial: Option<u64>,
        unit: String,
        wait: Duration,
        attempt: u32,
        result: Result<JobResult, OpError>,
    ) {
        // A stop the manager did not answer (a frozen or busy bus) is asked again until it
        // is, a few times: nothing else would take down the scope of a worker that is gone,
        // with what its main process left in it, while the link itself stays up.
        let known = serial.is_some_and(|s| self.procs.contains_key(&s));
        if matches!(result, Err(OpError::Deadline(_))) && attempt < STOP_ATTEMPTS && !known {
            tracing::debug!(APP = %self.opts.app, "stopping {unit}: no answer yet (attempt {attempt}); asking again");
            self.stop_unit_attempt(serial, unit, wait, attempt + 1);
            return;
        }
        let serial = serial.unwrap_or(0);
        match result {
            Ok(_) => {}
            Err(e) if e.is_no_such_unit() => {}
            Err(e @ (OpError::Deadline(_) | OpError::Systemd(SystemdError::JobTimeout { .. }))) => {
                tracing::debug!(APP = %self.opts.app, WORKER = serial, "stopping {unit}: {e}")
            }
            Err(e) => {
                tracing::warn!(APP = %self.opts.app, WORKER = serial, "stopping {unit}: {e}")
            }
        }
    }

    /// Waits, at most `within`, for the operations still under way, handling their outcomes:
    /// on the way out, so the scopes being stopped are stopped before kechid is gone.
    pub(super) async fn drain_ops(
        &mut self,
        ops: &mut tokio::sync::mpsc::UnboundedReceiver<Done>,
        within: Duration,
    ) {
        let until = tokio::time::Instant::now() + within;
        while self.in_flight > 0 {
            match tokio::time::timeout_at(until, ops.recv()).await {
                Ok(Some(done)) => {
                    let _ = self.on_done(done);
                }
                _ => break,
            }
        }
    }
}

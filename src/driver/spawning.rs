//! Starting a worker, race-free: the child is forked held (blocked on a pipe), its scope is
//! created around it, and only then is it let go to exec; so every process of the worker is in
//! its scope from its first instruction on.
//!
//! Under systemd the scope is an operation like any other ([`super::ops`]): the held child
//! waits in [`Pending`] while the loop goes on, and is released on [`Done::ScopeStarted`]; a
//! scope that fails or does not come in time is a failed start for the state machine (crash
//! backoff, restart burst), and the held child exits without running anything.
//!
//! [`Done::ScopeStarted`]: super::ops::Done::ScopeStarted

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use super::ops::{Done, OpError};
use super::startup::{IdentityError, resolve_identity};
use super::{Driver, Proc, limit};
use crate::lifecycle::{Event, Exit, StopReason, WorkerState};
use crate::sockets;
use crate::spawn::{self, Held, Prepared, SpawnError, WorkerCommand};
use crate::systemd::{ScopeSpec, Systemd};
use crate::worker_env;

/// How long systemd may take to create a scope before the worker is given up.
pub(super) const SCOPE_JOB_DEADLINE: Duration = Duration::from_secs(30);
/// `CPUWeight=` of a worker that loads while others serve: idle ([`super::idle_scope`]).
/// Loading an app is a burst of CPU (an interpreter compiling the app's code) that, on a box of
/// one or two cores, takes the CPU from the workers answering requests, and a replacement is not
/// in a hurry (the worker it replaces serves meanwhile). Idle, it runs on the CPU time the
/// serving workers leave, and gives the CPU up the moment one of them wakes; it gets the default
/// once ready. A worker started with none serving (a cold start) loads at the default weight.
pub(super) const LOADING_CPU_WEIGHT: u64 = crate::systemd::CPU_WEIGHT_IDLE;
/// Whether a worker loading idle for `loading` should get the default weight: after a third of
/// `ready_timeout`.
fn loading_is_long(loading: Duration, ready_timeout: Duration) -> bool {
    loading >= ready_timeout / 3
}

/// How long a child given up on while held stays unreaped (a zombie: its pid cannot be
/// reused), in case a late StartTransientUnit still names it.
const ZOMBIE_HOLD: Duration = Duration::from_secs(90);

/// Why a worker did not start.
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    #[error("systemd's manager is not reachable (the D-Bus link is down)")]
    LinkDown,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    TmpDir(#[from] crate::tmpdir::TmpDirError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("creating {unit}: {source}")]
    Scope {
        unit: String,
        #[source]
        source: OpError,
    },
}

/// A forked worker held until its scope exists.
#[derive(Debug)]
pub(super) struct Pending {
    pub pid: Pid,
    /// `None` once given up on (the child exits without running anything).
    held: Option<Held>,
    /// Opened while the child is held: its exit can never be missed.
    pidfd: OwnedFd,
    scope: String,
    config: u64,
}

impl<S: Systemd + 'static> Driver<S> {
    /// Starts one worker, replacing `replacing` if given (the pair is recorded before the
    /// worker is up, so the old one is stopped only once the new one is ready). Returns its
    /// serial.
    pub(super) fn spawn(&mut self, replacing: Option<(u64, StopReason)>) -> u64 {
        self.last_serial += 1;
        let serial = self.last_serial;
        if let Some(parent) = self.serial_file().parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) = std::fs::write(self.serial_file(), serial.to_string()) {
            tracing::debug!("recording the serial: {e}");
        }
        self.state.add_spawning(serial, Instant::now());
        if let Some((old, reason)) = replacing
            && let Err(e) =
                self.state
                    .begin_recycle(old, serial, reason, Instant::now(), &self.policy)
        {
            // A bug, not an operational condition: log loudly, keep running.
            tracing::error!(APP = %self.opts.app, WORKER = old, "{e}");
        }
        match self.fork_held(serial) {
            Ok(pending) if self.systemd.is_some() => {
                let mut spec = self.scope_spec(serial, pending.pid);
                if self.any_ready() {
                    spec.cpu_weight = Some(LOADING_CPU_WEIGHT);
                    self.loading_weight.insert(serial);
                }
                self.holding.insert(serial, pending);
                self.start_scope(serial, spec, SCOPE_JOB_DEADLINE);
            }
            Ok(pending) => self.release(serial, pending),
            Err(e) => self.spawn_failed(serial, e),
        }
        serial
    }

    /// Forks the worker, held.
    fn fork_held(&mut self, serial: u64) -> Result<Pending, StartError> {
        if self.systemd.is_some() && self.link_down() {
            // Asking for the next attempt now: the next start (after the crash backoff)
            // finds the link back, most likely.
            return Err(StartError::LinkDown);
        }
        let c = self.loaded.config.clone();
        // Looked up again for every worker: a user deleted since kechid started must not leave
        // new workers running under a uid that no longer has a name (and may be reused).
        let id = resolve_identity(&c)?;
        let tmpdir = if c.tmpdir.enabled {
            Some(self.tmpdirs.create(serial, id.uid, id.gid)?)
        } else {
            None
        };
        let names: Vec<String> = self.listeners.iter().map(|l| l.name.clone()).collect();
        let ssp = sockets::server_starter_port(&self.listeners);
        let facts = worker_env::WorkerFacts {
            serial,
            user: Some((&id.name, &id.home)),
            tmpdir: tmpdir.as_deref(),
            notify_socket: self.notify_socket.as_ref().map(|n| n.path()),
            listen_names: &names,
            server_starter_port: ssp.as_deref(),
        };
        let env = worker_env::build(&c, &facts, &self.opts.env);
        let (listen_fds, own_sockets) = self.worker_listen_fds(serial);
        let cmd = WorkerCommand {
            argv: c.command.clone(),
            env,
            directory: c.directory.clone(),
            ids: id.switch.then_some((id.uid, id.gid)),
            listen_fds,
        };
        let mut prep = Prepared::new(&cmd)?;
        let held = spawn::spawn_held(&mut prep)?;
        // the child has its own sockets now: kechid's copies go, so each closes with its worker
        drop(own_sockets);
        let pid = held.pid;
        let pidfd = match spawn::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                // Dropping the hold makes the child exit without running anything; reap it.
                drop(held);
                let _ = waitpid(pid, None);
                return Err(e.into());
            }
        };
        Ok(Pending {
            pid,
            held: Some(held),
            pidfd,
            scope: self.app().scope_unit(serial),
            config: self.config_fingerprint(),
        })
    }

    fn scope_spec(&self, serial: u64, pid: Pid) -> ScopeSpec {
        let c = &self.loaded.config;
        ScopeSpec {
            unit: self.app().scope_unit(serial),
            slice: self.app().slice_unit(),
            description: format!("kechi {} worker {serial}", self.app()),
            pids: vec![pid.as_raw() as u32],
            memory_max: limit(c.memory.max),
            memory_high: limit(c.memory.high),
            memory_swap_max: c.memory.swap_max.map(limit),
            kill_signal: c.stop.signal.0 as i32,
            stop_timeout: c.stop.timeout,
            cpu_weight: None,
        }
    }

    /// Whether some worker of the app serves now: then a new one is a replacement (or stands
    /// in for one that died) and loads beside workers that answer requests.
    pub(super) fn any_ready(&self) -> bool {
        self.state
            .workers
            .values()
            .any(|w| matches!(w.state, WorkerState::Ready { .. }))
    }

    /// A worker that loaded idle is ready (or has loaded too long): it gets systemd's default
    /// weight back, as every serving worker has.
    pub(super) fn end_loading_weight(&mut self, serial: u64) {
        if !self.loading_weight.remove(&serial) {
            return;
        }
        let Some(unit) = self.procs.get(&serial).and_then(|p| p.scope.clone()) else {
            return;
        };
        self.unmark_scope_idle(serial, unit);
    }

    /// A worker still loading after a third of `ready.timeout` gets the default weight: on a
    /// CPU its serving peers keep busy, an idle scope could make it miss the timeout,
    /// and a replacement that never gets ready is worse than one that slows them a while.
    pub(super) fn loading_too_long(&mut self) {
        let now = Instant::now();
        let late: Vec<(u64, Duration)> = self
            .loading_weight
            .iter()
            .filter_map(|s| match self.state.workers.get(s)?.state {
                WorkerState::Starting { since } => Some((*s, now.saturating_duration_since(since))),
                _ => None,
            })
            .filter(|(_, loading)| loading_is_long(*loading, self.policy.ready_timeout))
            .collect();
        for (serial, loading) in late {
            tracing::info!(APP = %self.opts.app, WORKER = serial, "worker still loading after {}: it gets the default CPU weight, to be ready within ready.timeout", crate::quantity::format_duration(loading));
            self.end_loading_weight(serial);
        }
    }

    /// The default weight is back, or could not be set.
    pub(super) fn on_cpu_weight(&mut self, serial: u64, unit: &str, result: Result<(), OpError>) {
        match result {
            Ok(()) => {
                tracing::debug!(APP = %self.opts.app, WORKER = serial, "{unit}: CPU weight back to the default");
            }
            Err(e) if e.is_no_such_unit() => {}
            Err(e) => {
                tracing::warn!(APP = %self.opts.app, WORKER = serial, "{unit}: could not give the ready worker the default CPU weight back ({e}); it keeps CPUWeight=idle, so it gets only the CPU the other workers leave until it is replaced");
            }
        }
    }

    /// The scope of a held worker exists, or will not.
    pub(super) fn on_scope(&mut self, serial: u64, result: Result<(), OpError>) {
        let Some(mut p) = self.holding.remove(&serial) else {
            return;
        };
        if p.held.is_none() {
            // Given up on while its scope was being created (stopped before it started): the
            // child has exited; a scope made for it anyway goes too.
            self.zombies.push((p.pid, Instant::now()));
            if result.is_ok() {
                self.stop_unit(Some(serial), p.scope, Duration::from_secs(5));
            }
            return;
        }
        match result {
            Ok(()) => {
                if self.loading_weight.contains(&serial) {
                    // (v1: systemd has created its cpu cgroup, for the CPUWeight= of the scope)
                    self.mark_scope_idle(serial, &p.scope, true);
                }
                self.release(serial, p)
            }
            Err(source) => {
                let late = matches!(source, OpError::Deadline(_));
                drop(p.held.take());
                if late {
                    // The manager may still act on the request: keep the pid from being
                    // reused until it cannot.
                    self.zombies.push((p.pid, Instant::now()));
                } else {
                    let _ = waitpid(p.pid, None);
                }
                let unit = p.scope.clone();
                self.spawn_failed(serial, StartError::Scope { unit, source });
            }
        }
    }

    /// Lets a held worker go to exec; [`Done::Released`] once it has (or failed to).
    fn release(&mut self, serial: u64, mut p: Pending) {
        let Some(held) = p.held.take() else { return };
        let tx = self.ops_tx.clone();
        self.in_flight += 1;
        tokio::task::spawn_local(async move {
            let result = held.release().await;
            let _ = tx.send(Done::Released { serial, result });
        });
        self.holding.insert(serial, p);
    }

    /// The worker runs its command, or could not exec it.
    pub(super) fn on_released(&mut self, serial: u64, result: Result<Pid, SpawnError>) {
        let early_ready = self.early_ready.remove(&serial);
        let Some(p) = self.holding.remove(&serial) else {
            return;
        };
        if let Err(e) = result {
            let _ = waitpid(p.pid, None);
            self.spawn_failed(serial, e.into());
            return;
        }
        let proc = Proc {
            pid: p.pid,
            scope: self.systemd.as_ref().map(|_| p.scope),
            config: p.config,
            jemalloc: None,
            monitor_oom: false,
        };
        tracing::info!(APP = %self.opts.app, WORKER = serial, PID = proc.pid.as_raw(), "worker started{}", proc.scope.as_ref().map(|s| format!(" in {s}")).unwrap_or_default());
        self.procs.insert(serial, proc);
        self.watch_exit(serial, p.pidfd);
        self.save_workers();
        let stopped = self.is_draining(serial);
        if stopped {
            // Asked to stop while it was let go: stop it now that it runs.
            let sig = self.loaded.config.stop.signal;
            let _ = nix::sys::signal::kill(p.pid, sig.0);
        } else {
            self.apply(serial, Event::Spawned);
            if early_ready {
                self.became_ready(serial, Some("READY=1"));
            }
        }
    }

    /// Gives up on a held worker that was asked to stop before its scope existed: the child
    /// exits without running anything; the worker is gone, not crashed.
    pub(super) fn abandon(&mut self, serial: u64) -> bool {
        let Some(p) = self.holding.get_mut(&serial) else {
            return false;
        };
        if p.held.take().is_none() {
            // Released already: it is about to run; stopped like any worker once it does.
            return false;
        }
        tracing::info!(APP = %self.opts.app, WORKER = serial, PID = p.pid.as_raw(), "worker stopped before it started (its scope was not there yet)");
        self.apply(serial, Event::Exited(Exit::Unknown));
        self.cleanup(serial);
        true
    }

    fn spawn_failed(&mut self, serial: u64, e: StartError) {
        tracing::error!(APP = %self.opts.app, WORKER = serial, REASON = "spawn-failed", "worker failed to start: {e}");
        self.apply(serial, Event::SpawnFailed(e.to_string()));
        self.record(format!("worker {serial} failed to start"));
        self.cleanup(serial);
    }

    /// Reaps held children given up on, once no late scope request can name them.
    pub(super) fn reap_zombies(&mut self) {
        let now = Instant::now();
        self.zombies.retain(|(pid, since)| {
            if now.saturating_duration_since(*since) < ZOMBIE_HOLD {
                return true;
            }
            let _ = waitpid(*pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            false
        });
    }

    pub(super) fn watch_exit(&self, serial: u64, pidfd: OwnedFd) {
        let tx = self.exit_tx.clone();
        tokio::spawn(async move {
            // SAFETY: the AsyncFd owns the pidfd; nothing else closes or replaces it.
            if let Ok(afd) =
                unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            {
                let _ = afd.readable().await;
            }
            let _ = tx.send(serial);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_load_gets_the_default_weight_after_a_third_of_the_ready_timeout() {
        let timeout = Duration::from_secs(60);
        assert!(!loading_is_long(Duration::from_secs(19), timeout));
        assert!(loading_is_long(Duration::from_secs(20), timeout));
        assert!(loading_is_long(Duration::from_secs(61), timeout));
        // a zero timeout (none) must not leave a worker at the low weight
        assert!(loading_is_long(Duration::ZERO, Duration::ZERO));
    }
}

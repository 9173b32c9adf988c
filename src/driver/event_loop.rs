//! The loop: decide and act until nothing is left to do now, then wait for the next event
//! (signal, worker exit, READY=1, control request, finished systemd operation, timer) and
//! dispatch it. Nothing in here waits on the bus; see [`super::ops`].

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::ops::Done;
use super::{Driver, Signal};
use crate::exitcode;
use crate::lifecycle::Event;
use crate::policy::{self, Action};
use crate::readiness::{self, NotifySocket};
use crate::systemd::Systemd;

/// How long kechid waits, on its way out, for the systemd operations still under way (the
/// stops of the last workers' scopes).
const DRAIN_ON_EXIT: Duration = Duration::from_secs(5);

/// How long kechid must have had nothing to do but its timers (sampling, status, watchdog)
/// before it gives back the pages of its executable and heap that the work before needed (see
/// [`crate::trim`]). Short: giving back costs microseconds, and the steady state maps back
/// what it uses within a second.
const TRIM_WHEN_QUIET_FOR: Duration = Duration::from_secs(2);

impl<S: Systemd + 'static> Driver<S> {
    pub(super) async fn main_loop(
        &mut self,
        mut exits: mpsc::UnboundedReceiver<u64>,
        mut ops: mpsc::UnboundedReceiver<Done>,
        mut signals: mpsc::UnboundedReceiver<Signal>,
    ) -> i32 {
        let watchdog = self.notifier.watchdog_interval();
        let mut watchdog_tick =
            tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        let mut sample_tick = tokio::time::interval(self.config().recycle.check_interval);
        // While a worker starts in accept mode, look for it waiting on the sockets this often.
        let mut accept_tick = tokio::time::interval(Duration::from_millis(100));
        accept_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Looks for idleness (idle.stop-after; its period follows reloads).
        let mut idle_every = self.idle.clock.look_every();
        let mut idle_tick = tokio::time::interval(idle_every);
        idle_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Start-up is work: what it mapped goes once it is over.
        let mut trim_at = Some(Instant::now() + TRIM_WHEN_QUIET_FOR);
        let code = loop {
            if self.idle.clock.look_every() != idle_every {
                idle_every = self.idle.clock.look_every();
                idle_tick = tokio::time::interval(idle_every);
                idle_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            // Decide and act until there is nothing left to do right now (nothing at all while
            // an earlier kechid's workers are being looked for).
            let mut wake_at = None;
            let mut leave = None;
            // Anything but a timer of the steady state: an action, a signal, an exit, READY=1,
            // a control request, a finished systemd operation, the link.
            let mut busy = false;
            while !self.adopting {
                let decision = policy::decide(&self.state, &self.policy, Instant::now());
                if decision.actions.is_empty() {
                    wake_at = decision.wake_at;
                    break;
                }
                busy = true;
                for action in decision.actions {
                    if let Some(code) = self.act(action) {
                        leave = Some(code);
                        break;
                    }
                }
                if leave.is_some() {
                    break;
                }
            }
            if let Some(code) = leave {
                break code;
            }
            self.update_status();
            let sleep = match wake_at {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            if busy {
                trim_at = Some(Instant::now() + TRIM_WHEN_QUIET_FOR);
            }
            let reconnect_due = !self.reconnecting;
            let stop_cap_due = self.stop_cap_due();
            let step = tokio::select! {
                Some(sig) = signals.recv() => { busy = true; self.on_signal(sig) }
                Some(serial) = exits.recv() => { busy = true; self.on_exit(serial); None }
                Ok((pid, msg)) = recv_notify(self.notify_socket.as_ref()) => { busy = true; self.on_notify(pid, msg); None }
                Some((req, reply)) = self.control_rx.recv() => {
                    busy = true;
                    let r = self.on_control(req);
                    let _ = reply.send(r);
                    None
                }
                Some(done) = ops.recv() => { busy = true; self.on_done(done) }
                Some(psi) = self.pressure_rx.recv() => { busy = true; self.on_pressure(psi); None }
                _ = sleep => None,
                _ = watchdog_tick.tick(), if watchdog.is_some() => { self.notifier.watchdog(); None }
                _ = sample_tick.tick() => { self.sample(); self.loading_too_long(); self.exiting_too_long(); None }
                _ = idle_tick.tick(), if self.idle.clock.enabled() => { self.idle_look(); None }
                _ = accept_tick.tick(), if self.awaiting_accept() => { self.check_accept(); None }
                _ = link_lost(self.systemd.as_deref()), if self.link.is_up() => { busy = true; self.on_link_lost(); None }
                _ = sleep_until_opt(self.link.retry_at()), if reconnect_due => { busy = true; self.reconnect(); None }
                _ = sleep_until_opt(trim_at) => { trim_at = None; self.trim(); None }
                _ = sleep_until_opt(stop_cap_due) => { busy = true; self.stop_caps_overdue(); None }
            };
            if let Some(code) = step {
                break code;
            }
            if busy {
                trim_at = Some(Instant::now() + TRIM_WHEN_QUIET_FOR);
            }
        };
        self.drain_ops(&mut ops, DRAIN_ON_EXIT).await;
        code
    }

    fn on_signal(&mut self, sig: Signal) -> Option<i32> {
        match sig {
            Signal::Term => self.on_sigterm(),
            Signal::Int => self.begin_shutdown("SIGINT"),
            Signal::Hup => self.begin_reload(),
        }
        None
    }

    /// A finished systemd operation; `Some(code)` to leave.
    pub(super) fn on_done(&mut self, done: Done) -> Option<i32> {
        self.in_flight = self.in_flight.saturating_sub(1);
        match done {
            Done::ScopeStarted { serial, result } => self.on_scope(serial, result),
            Done::Released { serial, result } => self.on_released(serial, result),
            Done::UnitStopped {
                serial,
                unit,
                wait,
                attempt,
                result,
            } => self.on_unit_stopped(serial, unit, wait, attempt, result),
            Done::UnitKilled {
                serial,
                pid,
                unit,
                result,
            } => self.on_unit_killed(serial, pid, &unit, result),
            Done::CpuWeight {
                serial,
                unit,
                result,
            } => self.on_cpu_weight(serial, &unit, result),
            Done::StopCapped {
                serial,
                unit,
                result,
            } => self.on_stop_capped(serial, &unit, result),
            Done::Environment(result) => self.on_environment(result),
            Done::JobType {
                result,
                reconnected,
            } => return self.on_job_type(result, reconnected),
            Done::Scanned { purpose, result } => {
                self.on_scanned(purpose, result);
            }
            Done::Reconnected(result) => self.on_reconnected(result),
            Done::Drained { serial, waited } => self.on_drained(serial, waited),
        }
        None
    }

    /// What every recycle does as it begins, replacement first or stopped first: the worker is
    /// no longer asked for nor picked box-wide, min-interval counts from now, and the journal
    /// record carries the figures of the moment, in full (the latest sample may have had the
    /// cheap ones only: no policy needed more). `how` ends its message.
    fn begin_recycle(&mut self, serial: u64, reason: &crate::lifecycle::StopReason, how: &str) {
        self.state.requested.remove(&serial);
        if self
            .state
            .box_pick
            .as_ref()
            .is_some_and(|(s, _)| *s == serial)
        {
            self.state.box_pick = None;
        }
        self.state.last_recycle = Some(Instant::now());
        self.sample_full_now(serial);
        let m = self
            .state
            .workers
            .get(&serial)
            .and_then(|w| w.mem.clone())
            .unwrap_or_default();
        tracing::info!(
            APP = %self.opts.app, WORKER = serial, PID = self.pid_of(serial), REASON = reason.as_str(),
            RSS = m.total.rss, PSS = m.total.pss, USS = m.total.uss, SHARED = m.total.shared, CGROUP = m.cgroup.unwrap_or(0),
            "recycling worker ({}): {how}", self.figures(serial)
        );
    }

    /// Carries out one action; `Some(code)` to leave.
    fn act(&mut self, action: Action) -> Option<i32> {
        match action {
            Action::Spawn => {
                self.spawn(None);
            }
            Action::MarkReady(serial) => self.became_ready(serial, None),
            Action::Stop(serial, reason) => {
                // a box-wide pick stopped before its replacement starts (policy::stops_first)
                let stopped_first = self
                    .state
                    .box_pick
                    .as_ref()
                    .is_some_and(|(s, _)| *s == serial);
                if stopped_first {
                    self.begin_recycle(
                        serial,
                        &reason,
                        "stopping it first while the others serve, then its replacement starts (the box lacks the memory to load one beside it)",
                    );
                }
                let recycled = stopped_first || self.state.replacement_of(serial).is_some();
                self.stop(serial, reason.clone());
                if recycled {
                    self.recycles.note(reason.as_str());
                    self.record(format!("worker {serial} recycled ({})", reason.as_str()));
                }
            }
            Action::Replace { old, reason } => {
                self.begin_recycle(old, &reason, "starting its replacement first");
                self.spawn(Some((old, reason)));
            }
            Action::SignalChild {
                serial,
                pid,
                signal,
            } => self.signal_child(serial, pid, signal),
            Action::ReplacementFailed(old) => {
                self.apply(old, Event::ReplacementFailed);
                tracing::warn!(APP = %self.opts.app, WORKER = old, "the replacement of worker {old} failed; worker {old} keeps serving");
                self.record(format!("replacement of worker {old} failed"));
            }
            Action::Kill(serial) => self.kill(serial),
            Action::NotifyReady => {
                self.state.ready_notified = true;
                let s = self.status_text();
                tracing::info!(APP = %self.opts.app, "all {} workers ready", self.policy.workers);
                self.notifier.ready(&s);
                self.last_status = s;
            }
            Action::Exit { code, why } => {
                if code == exitcode::OK {
                    tracing::info!(APP = %self.opts.app, "{why}");
                } else {
                    tracing::error!(APP = %self.opts.app, REASON = "crash-loop", "{why}; giving up");
                    self.stop_everything();
                }
                self.remove_runtime_files();
                if code == exitcode::OK {
                    self.leave_idle_marker();
                }
                return Some(code);
            }
        }
        None
    }

    /// child-signal: one child of a prefork worker goes, its master forks a fresh one.
    fn signal_child(&mut self, serial: u64, pid: i32, signal: i32) {
        let figures = self.figures(serial);
        tracing::info!(APP = %self.opts.app, WORKER = serial, PID = pid, REASON = "child-signal", "worker over memory.recycle-above ({figures}): signalling its largest child {pid} so the master replaces it");
        let sig =
            nix::sys::signal::Signal::try_from(signal).unwrap_or(nix::sys::signal::Signal::SIGTERM);
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
            tracing::warn!(APP = %self.opts.app, WORKER = serial, "signalling child {pid}: {e}");
        }
        if let Some(w) = self.state.workers.get_mut(&serial) {
            w.child_signaled = Some(Instant::now());
        }
        self.record(format!(
            "child {pid} of worker {serial} signalled (child-signal)"
        ));
    }

    /// Gives back what the work since the last quiet spell mapped (see [`crate::trim`]).
    fn trim(&self) {
        let r = crate::trim::release();
        tracing::debug!(APP = %self.opts.app, "quiet: dropped {} KiB of read-only program pages{}", r.code_bytes / 1024, if r.heap { ", trimmed the heap" } else { "" });
    }

    /// STATUS= for systemd, when it changed.
    pub(super) fn update_status(&mut self) {
        if self.state.shutting_down {
            return;
        }
        let s = self.status_text();
        if s != self.last_status {
            self.notifier.status(&s);
            self.last_status = s;
        }
    }
}

/// Resolves when the systemd link is lost; never without systemd.
async fn link_lost<S: Systemd>(sd: Option<&S>) {
    match sd {
        Some(sd) => sd.link_lost().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

async fn recv_notify(sock: Option<&NotifySocket>) -> std::io::Result<(i32, readiness::Message)> {
    match sock {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

//! Ending workers: asking them to stop, SIGKILL after stop.timeout, their exits (classified
//! by [`policy::classify_exit`]: crash, stop, OOM kill) and what is left after them (their
//! scope, their temp dir).

use std::time::Duration;

use nix::sys::signal::{Signal as NixSignal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::Driver;
use super::ops::OpError;
use crate::lifecycle::{Event, Exit, StopReason};
use crate::memory::{self, CgroupLayout};
use crate::policy;
use crate::systemd::Systemd;

/// How long to wait for the stop job of an exited worker's scope: its main process is gone,
/// so the job is quick; if the manager is slow, the scope stops anyway without us waiting
/// (and a scope left over is stopped when found, see `on_stray_scan`).
const CLEANUP_STOP_WAIT: Duration = Duration::from_secs(3);

impl<S: Systemd + 'static> Driver<S> {
    pub(super) fn stop(&mut self, serial: u64, reason: StopReason) {
        let was_live = self
            .state
            .workers
            .get(&serial)
            .is_some_and(|w| w.state.is_live());
        self.apply(serial, Event::StopRequested(reason.clone()));
        if !was_live {
            return;
        }
        if matches!(reason, StopReason::Surplus | StopReason::ReadyTimeout) {
            self.record(format!("worker {serial} stopped ({})", reason.as_str()));
        }
        if self.abandon(serial) {
            return;
        }
        let Some(pid) = self.procs.get(&serial).map(|p| p.pid) else {
            return;
        };
        if self.steer_drain(serial) {
            tracing::info!(APP = %self.opts.app, WORKER = serial, PID = pid.as_raw(), REASON = reason.as_str(), "stopping worker: no new connection goes to it; its stop signal follows once none waits for it");
        } else {
            self.send_stop_signal(serial);
        }
        self.save_workers();
    }

    /// The stop signal itself (see [`Driver::send_stop_signal`]); `capped` if the worker's CPU
    /// was capped first. Nothing if the worker is gone meanwhile.
    pub(super) fn signal_stop(&mut self, serial: u64, capped: bool) {
        let Some(pid) = self.procs.get(&serial).map(|p| p.pid) else {
            return;
        };
        let sig = self.loaded.config.stop.signal;
        let reason = self.draining_reason(serial).map_or("stop", |r| r.as_str());
        let capped = if capped {
            " (its CPU capped at half a CPU, and idle, while it exits: other workers serve)"
        } else {
            ""
        };
        tracing::info!(APP = %self.opts.app, WORKER = serial, PID = pid.as_raw(), REASON = reason, "stopping worker with SIG{sig}{capped}");
        if let Err(e) = kill(pid, sig.0) {
            tracing::warn!(APP = %self.opts.app, WORKER = serial, "sending SIG{sig}: {e}");
        }
    }

    pub(super) fn kill(&mut self, serial: u64) {
        self.apply(serial, Event::Killed);
        // SIGKILL now: the stop signal its cap held back is not sent after it
        self.stop_caps.remove(&serial);
        let Some(p) = self.procs.get(&serial) else {
            return;
        };
        tracing::warn!(APP = %self.opts.app, WORKER = serial, PID = p.pid.as_raw(), REASON = "stop-timeout", "worker did not stop within {}: SIGKILL", crate::quantity::format_duration(self.policy.stop_timeout));
        self.kill_all(serial);
    }

    /// SIGKILL to everything of a worker: its scope, or its session in foreground mode.
    fn kill_all(&mut self, serial: u64) {
        let Some(p) = self.procs.get(&serial) else {
            return;
        };
        let pid = p.pid;
        match (&self.systemd, p.scope.clone()) {
            (Some(_), Some(scope)) => self.kill_unit(serial, pid, scope),
            _ => {
                let _ = killpg(pid, NixSignal::SIGKILL);
            }
        }
    }

    /// A SIGKILL through systemd failed: the main process at least goes.
    pub(super) fn on_unit_killed(
        &mut self,
        serial: u64,
        pid: Pid,
        unit: &str,
        result: Result<(), OpError>,
    ) {
        match result {
            Ok(()) => {}
            Err(e) if e.is_no_such_unit() => {}
            Err(e) => {
                tracing::warn!(APP = %self.opts.app, WORKER = serial, "killing {unit}: {e}");
                if self.procs.get(&serial).is_some_and(|p| p.pid == pid) {
                    let _ = kill(pid, NixSignal::SIGKILL);
                }
            }
        }
    }

    pub(super) fn on_exit(&mut self, serial: u64) {
        let Some(p) = self.procs.get(&serial) else {
            return;
        };
        let pid = p.pid;
        let monitor_killed = p.monitor_oom;
        let exit = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Exit::Code { code },
            Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal { signal: sig as i32 },
            _ => Exit::Unknown,
        };
        let counters = if policy::needs_oom_counters(&exit, monitor_killed) {
            self.oom_counters(serial)
        } else {
            None
        };
        let exit = policy::classify_exit(exit, monitor_killed, counters.as_ref());
        let crashed = self
            .state
            .workers
            .get(&serial)
            .is_some_and(|w| w.state.is_live());
        let started = self.state.workers.get(&serial).map(|w| w.started);
        self.apply(serial, Event::Exited(exit.clone()));
        if crashed {
            let reason = policy::crash_reason(&exit);
            let backoff = self.policy.backoff_after(self.state.consecutive_crashes);
            tracing::warn!(APP = %self.opts.app, WORKER = serial, PID = pid.as_raw(), REASON = reason, "worker died unexpectedly: {exit}; replacing it after a backoff of {} ({} crashes in a row)", crate::quantity::format_duration(backoff), self.state.consecutive_crashes);
            self.record(format!("worker {serial} {reason}: {exit}"));
            // Died right after its start: the app's last stderr lines and a hint, off the loop.
            if let Some(started) = started {
                let (app, unit) = (&self.opts.app, self.opts.unit.as_deref());
                let (worker, command) = ((serial, pid.as_raw()), &self.config().command);
                crate::early_death::report(app, unit, worker, started, exit.to_string(), command);
            }
        } else {
            tracing::info!(APP = %self.opts.app, WORKER = serial, PID = pid.as_raw(), "worker stopped: {exit}");
        }
        self.cleanup(serial);
    }

    /// The OOM-kill counters for [`policy::classify_exit`], moving the slice's and the kernel's
    /// baselines to now. The scope's own counter is gone as soon as systemd removes the emptied
    /// cgroup, so the app slice's counter is compared with its last known value. `None` without
    /// a memory controller.
    fn oom_counters(&mut self, serial: u64) -> Option<policy::OomCounters> {
        let layout = self.layout.as_ref()?;
        let scope = self
            .procs
            .get(&serial)
            .and_then(|p| p.scope.as_ref())
            .and_then(|scope| {
                let dirs = memory::scope_dir(layout, &self.opts.app.slice_unit(), scope).ok()?;
                memory::read_cgroup_mem(&dirs.memory, dirs.version)
                    .ok()?
                    .oom_kills
            });
        let cgroup_v1 = matches!(layout, CgroupLayout::V1 { .. });
        let slice_before = self.slice_oom_kills;
        self.slice_oom_kills = self.read_slice_oom_kills();
        let global_before = self.global_oom_kills;
        self.global_oom_kills = memory::vmstat_oom_kills(&self.proc_root);
        Some(policy::OomCounters {
            scope,
            slice_before,
            slice_after: self.slice_oom_kills,
            global_before,
            global_after: self.global_oom_kills,
            cgroup_v1,
        })
    }

    pub(super) fn read_slice_oom_kills(&self) -> Option<u64> {
        let layout = self.layout.as_ref()?;
        let dirs = layout
            .dirs(&memory::slice_path(&self.opts.app.slice_unit()).ok()?)
            .ok()?;
        memory::read_cgroup_mem(&dirs.memory, dirs.version)
            .ok()?
            .oom_kills
    }

    /// After a worker's main process ended (or it never started): take down what is left of
    /// its scope, wipe its temp dir, forget it.
    pub(super) fn cleanup(&mut self, serial: u64) {
        self.steer_forget(serial);
        // gone before its cap was answered: no signal is owed to it any more
        self.stop_caps.remove(&serial);
        self.exiting_idle.remove(&serial);
        if let Some(p) = self.procs.remove(&serial) {
            match (&self.systemd, p.scope) {
                // Children a prefork master left behind must not keep serving on their own.
                (Some(_), Some(scope)) => self.stop_unit(Some(serial), scope, CLEANUP_STOP_WAIT),
                (Some(_), None) => {}
                (None, _) => {
                    let _ = killpg(p.pid, NixSignal::SIGKILL);
                }
            }
        }
        if self.loaded.config.tmpdir.enabled
            && let Err(e) = self.tmpdirs.wipe(serial)
        {
            tracing::warn!(APP = %self.opts.app, WORKER = serial, "wiping temp dir: {e}");
        }
        self.state.reap_gone();
        self.save_workers();
    }

    /// Stops every worker at once without waiting for grace (used when giving up): SIGKILL to
    /// each scope (or session), the main processes directly too, their scopes stopped.
    pub(super) fn stop_everything(&mut self) {
        let serials: Vec<u64> = self.procs.keys().copied().collect();
        for serial in serials {
            self.kill_all(serial);
            if let Some(p) = self.procs.get(&serial) {
                let _ = kill(p.pid, NixSignal::SIGKILL);
            }
            self.cleanup(serial);
        }
        let held: Vec<u64> = self.holding.keys().copied().collect();
        for serial in held {
            self.stop(serial, StopReason::Shutdown);
        }
    }
}

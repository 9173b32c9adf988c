//! A worker stopped while others serve gives up the CPU before it exits: kechid caps its scope
//! at [`STOPPING_CPU_QUOTA`] of one CPU (`CPUQuota=`, over periods of [`STOPPING_CPU_PERIOD`]),
//! marks it idle for the CPU ([`super::idle_scope`]), and only then sends the stop signal.
//!
//! Why: an app server's exit is a burst of CPU. A gunicorn worker process tearing its Python
//! heap down takes 20-30 ms of CPU, its arbiter more, all at once; on two cores the old
//! worker's processes took 1.4-1.8 CPUs for the first 50-90 ms after the signal, and the
//! serving workers (and the clients or proxy on the same box) waited behind them: a third of
//! the requests due in those 50 ms were slower than 1.2x the steady p99 (bench/slowload,
//! measured with a `sched_switch` trace). A quota bounds what the exit takes at any moment,
//! whoever else is on the box; a lower `CPUWeight=` does not (it only ranks the app's own
//! scopes against each other, and was measured to make the exit's own last requests wait).
//!
//! The quota bounds the exit against everyone on the box, but within a period the exit still
//! runs unpreempted for up to its whole share (5 ms, seen in a `sched_switch` trace with four
//! serving processes queued behind it on its CPU); idle, it gives the CPU up the moment one of
//! the app's serving workers wakes. An exit that takes longer than a third of `stop.timeout`
//! gets the default weight back (the quota stays): on a CPU the serving workers keep busy, an
//! idle scope could otherwise not finish the requests it had accepted before `stop.timeout`.
//!
//! The cap goes on before the signal: set together with it, it landed 40 ms later, when most
//! of the burst was over (measured). The signal waits for systemd's answer at most
//! [`STOP_CAP_WAIT`]; a refusal, an error or a slow manager sends it uncapped. A request the
//! stopping worker is still answering gets its share first (the burst follows the last
//! request), and a short period keeps any wait behind the quota to a few milliseconds.
//!
//! Until its signal, the workers file records the worker as live (it is: nothing told it to
//! stop), so a kechid killed in between leaves the next one a serving worker to adopt, not a
//! draining one that would never get its signal and be killed with the requests it accepted
//! meanwhile. The cost: that next kechid finds one worker too many and stops one as surplus (the
//! newest), so the recycle is done again later.
//!
//! Not capped: a stop with a `stop.timeout` under four times [`STOP_CAP_WAIT`] (the SIGKILL
//! deadline counts from the stop request), a stop with no other worker serving (the cap would only slow an exit nobody
//! waits behind), kechid's own shutdown and an idle app's stop (every worker goes), and a stop
//! because the box is short of memory (pressure, the box budget), where the old worker's
//! memory is wanted back at once.

use std::time::{Duration, Instant};

use super::Driver;
use super::ops::{Done, OpError};
use crate::lifecycle::StopReason;
use crate::systemd::{CpuCap, Systemd};

/// The CPU a stopping worker may use while others serve: half of one CPU's time.
pub(super) const STOPPING_CPU_QUOTA: Duration = Duration::from_millis(500);
/// The period the quota is enforced over: short, so that a stopping worker over its quota
/// waits at most a few milliseconds for the next period (the kernel's default is 100 ms).
pub(super) const STOPPING_CPU_PERIOD: Duration = Duration::from_millis(10);
/// How long the stop signal waits for the cap.
pub(super) const STOP_CAP_WAIT: Duration = Duration::from_millis(500);
/// The cap of a worker stopped while others serve.
pub(super) const STOPPING_CAP: CpuCap = CpuCap {
    quota: STOPPING_CPU_QUOTA,
    period: STOPPING_CPU_PERIOD,
    idle: true,
};

/// Whether a worker exiting idle for `exiting` should get the default weight back: after a third
/// of `stop_timeout`.
fn exiting_is_long(exiting: Duration, stop_timeout: Duration) -> bool {
    exiting >= stop_timeout / 3
}

/// Whether a worker stopped for `reason` is capped before its signal, given whether another
/// worker of the app serves meanwhile and the app's `stop.timeout` (counted from the stop
/// request: one too short to spare [`STOP_CAP_WAIT`] gets its signal at once).
pub(super) fn capped_before_stop(
    reason: &StopReason,
    others_serve: bool,
    stop_timeout: Duration,
) -> bool {
    others_serve
        && stop_timeout >= 4 * STOP_CAP_WAIT
        && !matches!(
            reason,
            StopReason::Shutdown | StopReason::Idle | StopReason::Pressure | StopReason::BoxBudget
        )
}

impl<S: Systemd + 'static> Driver<S> {
    /// The stop signal, to a worker asked to stop: after its cap when
    /// [`capped_before_stop`], else at once.
    pub(super) fn send_stop_signal(&mut self, serial: u64) {
        let reason = self
            .draining_reason(serial)
            .cloned()
            .unwrap_or(StopReason::Shutdown);
        // the worker itself is draining by now: any ready worker is another one
        let others_serve = self.any_ready();
        let scope = self.procs.get(&serial).and_then(|p| p.scope.clone());
        match scope {
            Some(unit)
                if self.systemd.is_some()
                    && self.link.is_up()
                    && capped_before_stop(&reason, others_serve, self.policy.stop_timeout) =>
            {
                self.stop_caps.insert(serial, Instant::now());
                self.save_workers();
                let name = unit.clone();
                self.launch(
                    STOP_CAP_WAIT,
                    move |sd| async move { sd.set_cpu_cap(&name, Some(STOPPING_CAP)).await },
                    move |result| Done::StopCapped {
                        serial,
                        unit,
                        result,
                    },
                );
            }
            _ => self.signal_stop(serial, false),
        }
    }

    /// systemd answered the cap of a stopping worker: its signal follows (capped or not).
    pub(super) fn on_stop_capped(&mut self, serial: u64, unit: &str, result: Result<(), OpError>) {
        if self.stop_caps.remove(&serial).is_none() {
            return; // signalled already, uncapped, after STOP_CAP_WAIT
        }
        let capped = match result {
            Ok(()) => true,
            Err(e) if e.is_no_such_unit() => false,
            Err(e) => {
                tracing::warn!(APP = %self.opts.app, WORKER = serial, "{unit}: could not cap the CPU of the stopping worker ({e}); it is stopped uncapped, so its exit may slow the serving workers for a moment");
                false
            }
        };
        if capped {
            // (v1: systemd has created its cpu cgroup, for the quota)
            self.mark_scope_idle(serial, unit, true);
            self.exiting_idle
                .insert(serial, (Instant::now(), unit.to_owned()));
        }
        self.signal_stop(serial, capped);
        self.save_workers();
    }

    /// Workers exiting idle for longer than a third of `stop.timeout` get the default weight
    /// back (their quota stays), to finish before `stop.timeout`.
    pub(super) fn exiting_too_long(&mut self) {
        let now = Instant::now();
        let timeout = self.policy.stop_timeout;
        let late: Vec<(u64, String)> = self
            .exiting_idle
            .iter()
            .filter(|(_, (since, _))| {
                exiting_is_long(now.saturating_duration_since(*since), timeout)
            })
            .map(|(s, (_, unit))| (*s, unit.clone()))
            .collect();
        for (serial, unit) in late {
            self.exiting_idle.remove(&serial);
            tracing::info!(APP = %self.opts.app, WORKER = serial, "worker still exiting after {}: it gets the default CPU weight back (its quota stays), to be gone within stop.timeout", crate::quantity::format_duration(timeout / 3));
            self.unmark_scope_idle(serial, unit);
        }
    }

    /// When the oldest cap still unanswered is due to give up on.
    pub(super) fn stop_cap_due(&self) -> Option<Instant> {
        self.stop_caps.values().min().map(|at| *at + STOP_CAP_WAIT)
    }

    /// Caps unanswered for [`STOP_CAP_WAIT`]: their workers are signalled without them (an
    /// operation can wait in the queue behind others before its own deadline starts).
    pub(super) fn stop_caps_overdue(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .stop_caps
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= STOP_CAP_WAIT)
            .map(|(s, _)| *s)
            .collect();
        if late.is_empty() {
            return;
        }
        for serial in late {
            self.stop_caps.remove(&serial);
            tracing::warn!(APP = %self.opts.app, WORKER = serial, "systemd did not cap the CPU of the stopping worker within {}; it is stopped uncapped", crate::quantity::format_duration(STOP_CAP_WAIT));
            self.signal_stop(serial, false);
        }
        self.save_workers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_is_capped_and_a_stop_nobody_waits_behind_is_not() {
        const T: Duration = Duration::from_secs(30);
        let uncapped = [
            StopReason::Shutdown,
            StopReason::Idle,
            StopReason::Pressure,
            StopReason::BoxBudget,
        ];
        for r in StopReason::ALL {
            if uncapped.contains(&r) {
                assert!(!capped_before_stop(&r, true, T), "{r:?}");
                continue;
            }
            assert!(capped_before_stop(&r, true, T), "{r:?}");
            assert!(!capped_before_stop(&r, false, T), "{r:?} with none serving");
            // a stop.timeout that cannot spare the wait for the cap: signalled at once
            assert!(
                !capped_before_stop(&r, true, Duration::from_secs(1)),
                "{r:?}"
            );
            assert!(capped_before_stop(&r, true, 4 * STOP_CAP_WAIT), "{r:?}");
        }
    }

    #[test]
    fn an_exit_keeps_the_idle_weight_for_a_third_of_stop_timeout() {
        let t = Duration::from_secs(60);
        assert!(!exiting_is_long(Duration::from_secs(19), t));
        assert!(exiting_is_long(Duration::from_secs(20), t));
    }
}

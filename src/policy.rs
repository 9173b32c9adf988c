//! The decision core: given what is known about an app's workers and the time, what to do next.
//!
//! [`decide`] is pure (no IO, time passed in): the driver gathers events, applies them to
//! [`AppState`] through the lifecycle table, calls `decide`, and carries out the [`Action`]s.
//! Policies here: the wanted number of workers (capacity), readiness by delay and its timeout,
//! crash backoff (doubling, capped) and the crash-loop burst, stop escalation to SIGKILL,
//! orderly shutdown, and telling systemd READY=1 once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::{Config, ReadyMode};
use crate::exitcode;
use crate::lifecycle::{self, Event, IllegalTransition, StopReason, WorkerState};

/// The parts of the config the decisions need.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub workers: u32,
    pub ready_mode: ReadyMode,
    pub ready_delay: Duration,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub burst: u32,
    pub window: Duration,
}

impl Policy {
    pub fn from_config(c: &Config) -> Self {
        Policy {
            workers: c.workers,
            ready_mode: c.ready.mode,
            ready_delay: c.ready.delay,
            ready_timeout: c.ready.timeout,
            stop_timeout: c.stop.timeout,
            backoff: c.restart.backoff,
            backoff_max: c.restart.backoff_max,
            burst: c.restart.burst,
            window: c.restart.window,
        }
    }

    /// Delay before the next spawn after `consecutive` crashes in a row: backoff doubling,
    /// capped at backoff-max.
    pub fn backoff_after(&self, consecutive: u32) -> Duration {
        if consecutive == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32
            .checked_shl(consecutive.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.backoff
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

/// One worker as the decision core sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub serial: u64,
    pub pid: Option<i32>,
    /// The config generation it was started with (bumped by each reload).
    pub generation: u64,
    pub started: Instant,
    pub state: WorkerState,
    pub ever_ready: bool,
}

/// Everything known about one app's workers.
#[derive(Debug, Clone, PartialEq)]
pub struct AppState {
    pub workers: BTreeMap<u64, Worker>,
    /// When workers that never got ready crashed, within the last `restart.window`.
    pub loop_crashes: Vec<Instant>,
    /// Crashes since a worker last became ready.
    pub consecutive_crashes: u32,
    pub last_crash: Option<Instant>,
    pub shutting_down: bool,
    pub generation: u64,
    pub ready_notified: bool,
}

impl Default for AppState {
    fn default() -> Self {
        AppState {
            workers: BTreeMap::new(),
            loop_crashes: Vec::new(),
            consecutive_crashes: 0,
            last_crash: None,
            shutting_down: false,
            generation: 1,
            ready_notified: false,
        }
    }
}

impl AppState {
    /// Records a new worker in Spawning.
    pub fn add_spawning(&mut self, serial: u64, now: Instant) {
        self.workers.insert(
            serial,
            Worker {
                serial,
                pid: None,
                generation: self.generation,
                started: now,
                state: WorkerState::Spawning { since: now },
                ever_ready: false,
            },
        );
    }

    /// Applies one event to one worker through the lifecycle table, keeping the crash records.
    pub fn apply(
        &mut self,
        serial: u64,
        event: &Event,
        now: Instant,
        policy: &Policy,
    ) -> Result<&Worker, ApplyError> {
        let w = self
            .workers
            .get_mut(&serial)
            .ok_or(ApplyError::NoSuchWorker(serial))?;
        let next = lifecycle::next(&w.state, event, now, w.ever_ready)?;
        if matches!(next, WorkerState::Ready { .. }) {
            w.ever_ready = true;
            self.consecutive_crashes = 0;
        }
        let is_ready_timeout = matches!(event, Event::StopRequested(StopReason::ReadyTimeout));
        if let WorkerState::Gone {
            crashed, was_ready, ..
        } = &next
            && *crashed
        {
            self.consecutive_crashes = self.consecutive_crashes.saturating_add(1);
            self.last_crash = Some(now);
            if !*was_ready {
                self.loop_crashes.push(now);
            }
        }
        // A worker that never got ready in time is as much a failed start as a crash.
        if is_ready_timeout && !w.ever_ready {
            self.consecutive_crashes = self.consecutive_crashes.saturating_add(1);
            self.last_crash = Some(now);
            self.loop_crashes.push(now);
        }
        self.loop_crashes
            .retain(|t| now.saturating_duration_since(*t) <= policy.window);
        w.state = next;
        Ok(w)
    }

    /// Removes workers that are gone, returning them (for cleanup and history).
    pub fn reap_gone(&mut self) -> Vec<Worker> {
        let gone: Vec<u64> = self
            .workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Gone { .. }))
            .map(|w| w.serial)
            .collect();
        gone.into_iter()
            .filter_map(|s| self.workers.remove(&s))
            .collect()
    }

    pub fn live(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values().filter(|w| w.state.is_live())
    }

    pub fn ready_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Ready { .. }))
            .count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("no worker with serial {0}")]
    NoSuchWorker(u64),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start one more worker.
    Spawn,
    /// The worker passed its readiness check (delay mode).
    MarkReady(u64),
    /// Ask a worker to stop (stop.signal).
    Stop(u64, StopReason),
    /// stop.timeout passed: SIGKILL everything in the worker's scope.
    Kill(u64),
    /// Tell systemd READY=1.
    NotifyReady,
    /// Leave with this exit code.
    Exit { code: i32, why: String },
}

/// What to do now, and when to look again if nothing else happens first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub wake_at: Option<Instant>,
}

impl Decision {
    fn wake(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// The decision core.
pub fn decide(state: &AppState, policy: &Policy, now: Instant) -> Decision {
    let mut d = Decision::default();

    // Escalation of stops applies in every mode, shutdown included.
    for w in state.workers.values() {
        if let WorkerState::Draining {
            since,
            killed: false,
            ..
        } = w.state
        {
            let due = since + policy.stop_timeout;
            if now >= due {
                d.actions.push(Action::Kill(w.serial));
            } else {
                d.wake(due);
            }
        }
    }

    if state.shutting_down {
        for w in state.live() {
            d.actions.push(Action::Stop(w.serial, StopReason::Shutdown));
        }
        if state
            .workers
            .values()
            .all(|w| matches!(w.state, WorkerState::Gone { .. }))
        {
            d.actions.push(Action::Exit {
                code: exitcode::OK,
                why: "stopped".into(),
            });
        }
        return d;
    }

    let recent_loop_crashes = state
        .loop_crashes
        .iter()
        .filter(|t| now.saturating_duration_since(**t) <= policy.window)
        .count();
    if recent_loop_crashes > policy.burst as usize {
        d.actions.push(Action::Exit {
            code: exitcode::CRASH_LOOP,
            why: format!(
                "workers failed {recent_loop_crashes} times within {} without getting ready (restart.burst = {})",
                crate::quantity::format_duration(policy.window),
                policy.burst
            ),
        });
        return d;
    }

    // Readiness (delay mode here; notify and accept arrive as events) and its timeout.
    for w in state.workers.values() {
        if let WorkerState::Starting { since } = w.state {
            let timeout_at = since + policy.ready_timeout;
            if policy.ready_mode == ReadyMode::Delay && policy.ready_delay < policy.ready_timeout {
                let ready_at = since + policy.ready_delay;
                if now >= ready_at {
                    d.actions.push(Action::MarkReady(w.serial));
                    continue;
                }
                d.wake(ready_at);
            }
            if now >= timeout_at {
                d.actions
                    .push(Action::Stop(w.serial, StopReason::ReadyTimeout));
            } else {
                d.wake(timeout_at);
            }
        }
    }

    // Capacity: keep `workers` live workers, honouring crash backoff.
    let live = state.live().count();
    let wanted = policy.workers as usize;
    if live < wanted {
        let resume = state
            .last_crash
            .map(|t| t + policy.backoff_after(state.consecutive_crashes));
        match resume {
            Some(at) if now < at => d.wake(at),
            _ => d
                .actions
                .extend(std::iter::repeat_n(Action::Spawn, wanted - live)),
        }
    } else if live > wanted {
        // Stop the surplus, newest first: the oldest have proven themselves.
        let surplus = state.live().collect::<Vec<_>>();
        for w in surplus.iter().rev().take(live - wanted) {
            d.actions.push(Action::Stop(w.serial, StopReason::Surplus));
        }
    }

    let ready_after = state.ready_count()
        + d.actions
            .iter()
            .filter(|a| matches!(a, Action::MarkReady(_)))
            .count();
    if !state.ready_notified && ready_after >= wanted {
        d.actions.push(Action::NotifyReady);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Exit;

    fn policy() -> Policy {
        Policy {
            workers: 2,
            ready_mode: ReadyMode::Delay,
            ready_delay: Duration::from_secs(1),
            ready_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            burst: 3,
            window: Duration::from_secs(60),
        }
    }

    fn started(state: &mut AppState, serial: u64, t: Instant, p: &Policy) {
        state.add_spawning(serial, t);
        state.apply(serial, &Event::Spawned, t, p).unwrap();
    }

    #[test]
    fn spawns_up_to_wanted() {
        let p = policy();
        let t = Instant::now();
        let d = decide(&AppState::default(), &p, t);
        assert_eq!(d.actions, vec![Action::Spawn, Action::Spawn]);
    }

    #[test]
    fn ready_after_delay_then_notify_once() {
        let p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        started(&mut s, 1, t, &p);
        started(&mut s, 2, t, &p);
        let d = decide(&s, &p, t);
        assert!(d.actions.is_empty());
        assert_eq!(d.wake_at, Some(t + p.ready_delay));
        let t1 = t + p.ready_delay;
        let d = decide(&s, &p, t1);
        assert_eq!(
            d.actions,
            vec![
                Action::MarkReady(1),
                Action::MarkReady(2),
                Action::NotifyReady
            ]
        );
        s.apply(1, &Event::BecameReady, t1, &p).unwrap();
        s.apply(2, &Event::BecameReady, t1, &p).unwrap();
        s.ready_notified = true;
        assert!(decide(&s, &p, t1).actions.is_empty());
    }

    #[test]
    fn ready_timeout_stops_the_worker() {
        let mut p = policy();
        p.ready_mode = ReadyMode::Notify;
        let t = Instant::now();
        let mut s = AppState::default();
        started(&mut s, 1, t, &p);
        started(&mut s, 2, t, &p);
        let d = decide(&s, &p, t + p.ready_timeout);
        assert!(
            d.actions
                .contains(&Action::Stop(1, StopReason::ReadyTimeout))
        );
    }

    #[test]
    fn crash_backoff_doubles_and_caps() {
        let p = policy();
        assert_eq!(p.backoff_after(0), Duration::ZERO);
        assert_eq!(p.backoff_after(1), Duration::from_secs(1));
        assert_eq!(p.backoff_after(2), Duration::from_secs(2));
        assert_eq!(p.backoff_after(3), Duration::from_secs(4));
        assert_eq!(p.backoff_after(4), Duration::from_secs(8));
        assert_eq!(p.backoff_after(40), Duration::from_secs(8));
    }

    #[test]
    fn crash_waits_for_backoff_then_respawns() {
        let p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        started(&mut s, 1, t, &p);
        started(&mut s, 2, t, &p);
        s.apply(1, &Event::BecameReady, t, &p).unwrap();
        s.apply(1, &Event::Exited(Exit::Signal { signal: 9 }), t, &p)
            .unwrap();
        s.reap_gone();
        let d = decide(&s, &p, t);
        assert!(!d.actions.contains(&Action::Spawn));
        assert_eq!(d.wake_at, Some(t + Duration::from_millis(1000)));
        let d = decide(&s, &p, t + Duration::from_secs(1));
        assert!(d.actions.contains(&Action::Spawn));
    }

    #[test]
    fn crash_loop_past_burst_exits_non_zero() {
        let p = policy();
        let mut t = Instant::now();
        let mut s = AppState::default();
        for serial in 1..=4 {
            started(&mut s, serial, t, &p);
            s.apply(serial, &Event::Exited(Exit::Code { code: 1 }), t, &p)
                .unwrap();
            s.reap_gone();
            t += Duration::from_secs(2);
        }
        let d = decide(&s, &p, t);
        assert!(
            matches!(
                d.actions.last(),
                Some(Action::Exit {
                    code: exitcode::CRASH_LOOP,
                    ..
                })
            ),
            "{d:?}"
        );
        // ... but not when the crashes are spread beyond the window
        let d = decide(&s, &p, t + p.window + Duration::from_secs(60));
        assert!(!d.actions.iter().any(|a| matches!(a, Action::Exit { .. })));
    }

    #[test]
    fn crashes_of_ready_workers_are_not_a_loop() {
        let p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        for serial in 1..=10 {
            started(&mut s, serial, t, &p);
            s.apply(serial, &Event::BecameReady, t, &p).unwrap();
            s.apply(serial, &Event::Exited(Exit::Signal { signal: 9 }), t, &p)
                .unwrap();
        }
        s.reap_gone();
        assert!(
            !decide(&s, &p, t)
                .actions
                .iter()
                .any(|a| matches!(a, Action::Exit { .. }))
        );
    }

    #[test]
    fn stop_escalates_to_kill_after_timeout() {
        let p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        started(&mut s, 1, t, &p);
        s.apply(1, &Event::StopRequested(StopReason::Manual), t, &p)
            .unwrap();
        let d = decide(&s, &p, t + Duration::from_secs(1));
        assert!(!d.actions.contains(&Action::Kill(1)));
        assert!(
            decide(&s, &p, t + p.stop_timeout)
                .actions
                .contains(&Action::Kill(1))
        );
        s.apply(1, &Event::Killed, t + p.stop_timeout, &p).unwrap();
        assert!(
            !decide(&s, &p, t + p.stop_timeout * 2)
                .actions
                .contains(&Action::Kill(1))
        );
    }

    #[test]
    fn shutdown_stops_all_then_exits() {
        let p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        started(&mut s, 1, t, &p);
        started(&mut s, 2, t, &p);
        s.shutting_down = true;
        let d = decide(&s, &p, t);
        assert_eq!(
            d.actions,
            vec![
                Action::Stop(1, StopReason::Shutdown),
                Action::Stop(2, StopReason::Shutdown)
            ]
        );
        for serial in [1, 2] {
            s.apply(serial, &Event::StopRequested(StopReason::Shutdown), t, &p)
                .unwrap();
            s.apply(serial, &Event::Exited(Exit::Code { code: 0 }), t, &p)
                .unwrap();
        }
        let d = decide(&s, &p, t);
        assert!(matches!(
            d.actions.as_slice(),
            [Action::Exit { code: 0, .. }]
        ));
        // no crash was recorded for stopped workers
        assert_eq!(s.consecutive_crashes, 0);
    }

    #[test]
    fn surplus_stops_newest() {
        let mut p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        for serial in 1..=3 {
            started(&mut s, serial, t, &p);
        }
        p.workers = 1;
        let d = decide(&s, &p, t);
        assert!(d.actions.contains(&Action::Stop(3, StopReason::Surplus)));
        assert!(d.actions.contains(&Action::Stop(2, StopReason::Surplus)));
        assert!(!d.actions.contains(&Action::Stop(1, StopReason::Surplus)));
    }
}

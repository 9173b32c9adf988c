//! Scale to zero: when an app has gone unvisited long enough to stop it (`[idle] stop-after`).
//!
//! The contract: an app is *active* at an instant when a connection to one of its sockets is
//! open (served by a worker: a long request, a websocket, a kept-alive connection) or waiting
//! in a listening socket's queue, or when one arrived since the previous look. It is due to stop
//! once it has been inactive for `stop_after` without a break. The driver gathers those facts
//! (`driver/idle.rs`); this module only keeps the clock and decides, so it is tested without
//! sockets.
//!
//! Stopping only makes sense when something starts the app again: a socket unit that listens
//! while kechid is gone. [`Reach`] says whether the app has one; without it, idle stop is off
//! and the operator is told why.

use std::time::{Duration, Instant};

/// What starts the app again after an idle stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every socket comes from the socket unit: the next connection waits in its queue and
    /// starts the service.
    Activated,
    /// Some sockets come from the socket unit, some are `listen` addresses kechid binds: those
    /// refuse connections while the app is stopped (and do not start it).
    Partly,
    /// No socket comes from a socket unit: nothing would start the app again.
    Never,
}

impl Reach {
    /// From how many listening sockets came from the socket unit and how many kechid bound.
    pub fn of(activated: usize, bound: usize) -> Reach {
        match (activated, bound) {
            (0, _) => Reach::Never,
            (_, 0) => Reach::Activated,
            _ => Reach::Partly,
        }
    }
}

/// The idle clock of one app.
#[derive(Debug, Clone)]
pub struct IdleClock {
    stop_after: Duration,
    last_active: Instant,
}

impl IdleClock {
    /// A clock that starts counting at `now` (kechid's start counts as activity: it was started
    /// for a reason, usually a connection).
    pub fn new(stop_after: Duration, now: Instant) -> IdleClock {
        IdleClock {
            stop_after,
            last_active: now,
        }
    }

    /// Whether idle stop is on at all.
    pub fn enabled(&self) -> bool {
        !self.stop_after.is_zero()
    }

    pub fn stop_after(&self) -> Duration {
        self.stop_after
    }

    /// A reload's new `stop-after`; the time already idle still counts.
    pub fn set_stop_after(&mut self, stop_after: Duration) {
        self.stop_after = stop_after;
    }

    /// One look at the app: `active` as in the module's contract.
    pub fn observe(&mut self, now: Instant, active: bool) {
        if active && now > self.last_active {
            self.last_active = now;
        }
    }

    /// How long the app has been idle at `now`.
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_active)
    }

    /// `Some(idle time)` once the app has been idle for `stop_after` (never when off).
    pub fn due(&self, now: Instant) -> Option<Duration> {
        let idle = self.idle_for(now);
        (self.enabled() && idle >= self.stop_after).then_some(idle)
    }

    /// How often to look: often enough that the stop comes at most a tenth of `stop_after`
    /// late, at least once a second (a look costs a few system calls per worker process), at
    /// most every 10 s.
    pub fn look_every(&self) -> Duration {
        (self.stop_after / 10).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn off_by_default_and_never_due() {
        let t = Instant::now();
        let c = IdleClock::new(Duration::ZERO, t);
        assert!(!c.enabled());
        assert_eq!(c.due(t + MIN * 600), None);
    }

    #[test]
    fn due_after_stop_after_without_activity() {
        let t = Instant::now();
        let mut c = IdleClock::new(15 * MIN, t);
        c.observe(t + MIN, false);
        assert_eq!(c.due(t + 14 * MIN), None);
        assert_eq!(c.due(t + 15 * MIN), Some(15 * MIN));
    }

    #[test]
    fn activity_restarts_the_count() {
        let t = Instant::now();
        let mut c = IdleClock::new(15 * MIN, t);
        c.observe(t + 10 * MIN, true);
        assert_eq!(c.due(t + 20 * MIN), None);
        assert_eq!(c.idle_for(t + 20 * MIN), 10 * MIN);
        assert_eq!(c.due(t + 25 * MIN), Some(15 * MIN));
    }

    #[test]
    fn a_late_look_does_not_move_the_clock_back() {
        let t = Instant::now();
        let mut c = IdleClock::new(MIN, t + 5 * MIN);
        c.observe(t, true);
        assert_eq!(c.idle_for(t + 5 * MIN), Duration::ZERO);
    }

    #[test]
    fn a_reload_changes_the_threshold_not_the_time_idle() {
        let t = Instant::now();
        let mut c = IdleClock::new(15 * MIN, t);
        c.set_stop_after(5 * MIN);
        assert_eq!(c.due(t + 6 * MIN), Some(6 * MIN));
        c.set_stop_after(Duration::ZERO);
        assert_eq!(c.due(t + 60 * MIN), None);
    }

    #[test]
    fn looks_are_a_tenth_of_the_threshold_within_bounds() {
        let t = Instant::now();
        assert_eq!(
            IdleClock::new(15 * MIN, t).look_every(),
            Duration::from_secs(10)
        );
        assert_eq!(
            IdleClock::new(Duration::from_secs(30), t).look_every(),
            Duration::from_secs(3)
        );
        assert_eq!(
            IdleClock::new(Duration::from_secs(2), t).look_every(),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn reach() {
        assert_eq!(Reach::of(1, 0), Reach::Activated);
        assert_eq!(Reach::of(2, 1), Reach::Partly);
        assert_eq!(Reach::of(0, 1), Reach::Never);
        assert_eq!(Reach::of(0, 0), Reach::Never);
    }
}

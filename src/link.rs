//! The state of kechid's link to systemd's manager, and when to try again after losing it.
//!
//! Pure bookkeeping: the driver reports what happened (`lost`, `failed`, `restored`) and asks
//! when to try next. Attempts start at once and back off, doubling, to [`MAX_BACKOFF`]: a
//! restarted bus daemon is usually back within a second, and one that stays away must not
//! make kechid spin. Workers never depend on the link, so nothing else waits on it.

use std::time::{Duration, Instant};

/// The first retry after a failed attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkWatch {
    /// When the link was lost; `None` while it is up.
    lost_at: Option<Instant>,
    /// When to try to reconnect next.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Failed attempts since the link was lost.
    pub attempts: u32,
}

impl LinkWatch {
    pub fn is_up(&self) -> bool {
        self.lost_at.is_none()
    }

    /// The link went away at `now`: try again at once.
    pub fn lost(&mut self, now: Instant) {
        if self.lost_at.is_none() {
            self.lost_at = Some(now);
            self.retry_at = Some(now);
            self.backoff = FIRST_BACKOFF;
            self.attempts = 0;
        }
    }

    /// An attempt failed at `now`; returns when to try next.
    pub fn failed(&mut self, now: Instant) -> Instant {
        self.attempts = self.attempts.saturating_add(1);
        let at = now + self.backoff;
        self.retry_at = Some(at);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        at
    }

    /// Reconnected at `now`; returns how long the link was down.
    pub fn restored(&mut self, now: Instant) -> Duration {
        let down = self
            .lost_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        *self = LinkWatch::default();
        down
    }

    /// When to try to reconnect, while the link is down.
    pub fn retry_at(&self) -> Option<Instant> {
        self.lost_at.and(self.retry_at)
    }

    /// Gives up retrying (a link that cannot be re-established): stays down, never retries.
    pub fn give_up(&mut self) {
        self.retry_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_doubling_to_the_cap_and_resets_when_restored() {
        let t0 = Instant::now();
        let mut w = LinkWatch::default();
        assert!(w.is_up());
        assert_eq!(w.retry_at(), None);
        w.lost(t0);
        assert!(!w.is_up());
        assert_eq!(w.retry_at(), Some(t0), "the first attempt is immediate");
        let mut gaps = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            let next = w.failed(now);
            gaps.push(next - now);
            now = next;
        }
        assert_eq!(gaps[0], FIRST_BACKOFF);
        assert_eq!(gaps[1], FIRST_BACKOFF * 2);
        assert_eq!(*gaps.last().unwrap(), MAX_BACKOFF);
        assert_eq!(w.attempts, 8);
        // Losing it again while down changes nothing.
        w.lost(now);
        assert_eq!(w.attempts, 8);
        let down = w.restored(now + Duration::from_secs(1));
        assert_eq!(down, now + Duration::from_secs(1) - t0);
        assert_eq!(w, LinkWatch::default());
    }

    #[test]
    fn giving_up_stops_the_retries() {
        let mut w = LinkWatch::default();
        w.lost(Instant::now());
        w.give_up();
        assert!(!w.is_up());
        assert_eq!(w.retry_at(), None);
    }
}

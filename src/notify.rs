//! Talking to the service manager about kechid itself (sd_notify): READY=1, STATUS=,
//! STOPPING=1, WATCHDOG=1. Without `NOTIFY_SOCKET` (foreground, tests) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// kechid's own channel to its service manager.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifier;

impl Notifier {
    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!("sd_notify failed: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn reloading(&self) {
        self.send(&[NotifyState::Reloading]);
    }

    pub fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping workers"),
        ]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// How often to send WATCHDOG=1: half the unit's WatchdogSec, if it set one for us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        sd_notify::watchdog_enabled().map(|d| d / 2)
    }
}

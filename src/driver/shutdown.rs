//! Stopping kechid: SIGTERM from `systemctl restart` leaves the workers running for the next
//! kechid; any other stop stops them all. Which one it is, systemd says (the job pending on
//! kechid's unit), asked as an operation: control requests and exits are handled meanwhile,
//! and an answer that does not come in time counts as a stop.

use std::time::Duration;

use super::Driver;
use super::ops::{Done, OpError};
use crate::exitcode;
use crate::systemd::Systemd;

/// How long systemd may take to say whether a SIGTERM is a restart.
const RESTART_QUERY_DEADLINE: Duration = Duration::from_secs(10);

/// Whether a job type pending on kechid's unit restarts it.
pub(super) fn is_restart_job(job: Option<&str>) -> bool {
    matches!(job, Some("restart" | "try-restart" | "reload-or-restart"))
}

impl<S: Systemd + 'static> Driver<S> {
    pub(super) fn on_sigterm(&mut self) {
        if self.state.shutting_down || self.asking_restart {
            return;
        }
        let Some(unit) = self.opts.unit.clone().filter(|_| self.systemd.is_some()) else {
            self.begin_shutdown("SIGTERM");
            return;
        };
        if !self.link.is_up() && !self.systemd.as_ref().is_some_and(|sd| sd.can_reconnect()) {
            tracing::warn!(APP = %self.opts.app, "cannot ask systemd whether this is a restart (no D-Bus link); stopping the workers");
            self.begin_shutdown("SIGTERM");
            return;
        }
        self.asking_restart = true;
        // A lost link gets one immediate attempt here rather than waiting for its next retry
        // (unless an attempt is under way already: one at a time).
        let relink = self.link_down() && !self.reconnecting;
        if relink {
            self.reconnecting = true;
            self.relinking_for_term = true;
        }
        self.launch(
            RESTART_QUERY_DEADLINE,
            move |sd| async move {
                if relink {
                    sd.reconnect().await?;
                }
                Ok((sd.unit_job_type(&unit).await?, relink))
            },
            move |result| match result {
                Ok((job, reconnected)) => Done::JobType {
                    result: Ok(job),
                    reconnected,
                },
                Err(e) => Done::JobType {
                    result: Err(e),
                    reconnected: false,
                },
            },
        );
    }

    /// systemd said what the SIGTERM is; `Some(code)` to leave (a restart).
    pub(super) fn on_job_type(
        &mut self,
        result: Result<Option<String>, OpError>,
        reconnected: bool,
    ) -> Option<i32> {
        self.asking_restart = false;
        if std::mem::take(&mut self.relinking_for_term) {
            self.reconnecting = false;
            if reconnected {
                self.link_restored();
            } else {
                self.link.failed(std::time::Instant::now());
            }
        }
        if self.state.shutting_down {
            return None;
        }
        match result {
            Ok(job) if is_restart_job(job.as_deref()) => {
                tracing::info!(APP = %self.opts.app, "restarting: leaving {} workers running for the next kechid", self.procs.len());
                self.save_workers();
                self.record_socket_flags();
                return Some(exitcode::OK);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(APP = %self.opts.app, "asking systemd whether this is a restart: {e}; stopping the workers")
            }
        }
        self.begin_shutdown("SIGTERM");
        None
    }

    pub(super) fn begin_shutdown(&mut self, why: &str) {
        if !self.state.shutting_down {
            tracing::info!(APP = %self.opts.app, "{why}: stopping {} workers", self.state.live().count());
            self.state.shutting_down = true;
            self.notifier.stopping();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_jobs() {
        for j in ["restart", "try-restart", "reload-or-restart"] {
            assert!(is_restart_job(Some(j)), "{j}");
        }
        for j in [None, Some("stop"), Some("start"), Some("reload")] {
            assert!(!is_restart_job(j), "{j:?}");
        }
    }
}

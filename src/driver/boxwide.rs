//! The box-wide budget, the driver's side (the agreement is described in [`crate::boxwide`]):
//! publishes this app's figures at every sample, reads every app's, and when the box is over
//! its budget and the largest worker is one of ours, takes the box lock and has the policy
//! recycle it (reason `box-budget`); the lock goes when that worker is gone.
//!
//! All of it is a few small files under the runtime folder, read and written at the sample
//! tick; the lock is taken without waiting, so the loop never blocks on another kechid.

use std::fs::File;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

use super::Driver;
use crate::boxwide;
use crate::config::Metric;
use crate::lifecycle::{StopReason, WorkerState};
use crate::quantity::Bytes;
use crate::systemd::Systemd;

/// The box lock, held from the pick of a worker until it is gone.
pub(super) struct BoxLock {
    lock: Flock<File>,
    serial: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<S: Systemd + 'static> Driver<S> {
    pub(super) fn box_figures_file(&self) -> PathBuf {
        self.opts
            .runtime_dir
            .join(self.app().as_str())
            .join("box-figures")
    }

    fn box_lock_file(&self) -> PathBuf {
        self.opts.runtime_dir.join("box.lock")
    }

    /// At every sample: this app's figures for the other kechids, then the box-wide decision.
    pub(super) fn box_round(&mut self) {
        if self.loaded.boxed.budget.is_none() && self.box_lock.is_none() {
            // Nobody on this box is judged by a budget this kechid knows of; publishing costs
            // a file write per sample, so only apps under a budget do.
            return;
        }
        self.box_publish();
        self.box_release_if_done();
        self.box_pick();
    }

    fn box_publish(&self) {
        let metric = self.policy.metric;
        let figures: Vec<(u64, u64)> = self
            .state
            .workers
            .values()
            .filter(|w| w.state.is_live())
            .filter_map(|w| {
                // The private figures (USS, PSS) come from a full sample, which most ticks
                // skip: the last full one stands in until the next.
                let full = |m: &crate::policy::MemSample| {
                    let cheap = matches!(metric, Metric::Rss | Metric::Cgroup);
                    (m.detailed || cheap).then(|| m.metric(metric)).flatten()
                };
                let now = w.mem.as_ref().and_then(full);
                let last = || full(self.last_detailed.get(&w.serial)?);
                Some((w.serial, now.or_else(last)?))
            })
            .collect();
        let path = self.box_figures_file();
        let text = boxwide::render_figures(now_ms(), &figures);
        if let Err(e) = crate::metrics::write_atomically(&path, &text) {
            tracing::debug!("writing {}: {e}", path.display());
        }
    }

    /// Lets the box lock go once the worker it was taken for is gone (or no longer being
    /// replaced), recording when, so the next pick waits for figures that show it.
    fn box_release_if_done(&mut self) {
        let Some(held) = &self.box_lock else { return };
        let serial = held.serial;
        let live = self
            .state
            .workers
            .get(&serial)
            .is_some_and(|w| w.state.is_live());
        let pending = self
            .state
            .box_pick
            .as_ref()
            .is_some_and(|(s, _)| *s == serial);
        let replacing = self.state.replacement_of(serial).is_some();
        let draining = self
            .state
            .workers
            .get(&serial)
            .is_some_and(|w| matches!(w.state, WorkerState::Draining { .. }));
        if live && (pending || replacing || draining) {
            return;
        }
        if let Some(held) = self.box_lock.take() {
            let mut file: File = match held.lock.unlock() {
                Ok(f) => f,
                Err((_, e)) => {
                    tracing::debug!("unlocking the box lock: {e}");
                    return;
                }
            };
            use std::io::{Seek, Write};
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = writeln!(file, "done {}", now_ms());
            tracing::info!(APP = %self.opts.app, WORKER = serial, REASON = "box-budget", "box-wide recycle of worker {serial} over; box lock released");
        }
    }

    /// Over the box's budget with the largest worker ours: take the lock and pick it.
    fn box_pick(&mut self) {
        let Some(budget) = self.loaded.boxed.budget else {
            return;
        };
        if self.box_lock.is_some() || self.state.box_pick.is_some() || self.state.shutting_down {
            return;
        }
        let now = now_ms();
        let mut figures = Vec::new();
        let mut published = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.opts.runtime_dir) else {
            return;
        };
        for entry in dir.flatten() {
            let app = entry.file_name().to_string_lossy().into_owned();
            let Ok(text) = std::fs::read_to_string(entry.path().join("box-figures")) else {
                continue;
            };
            if let Some(f) = boxwide::parse_figures(&app, &text, now) {
                published.extend(boxwide::published_at(&text));
                figures.extend(f);
            }
        }
        let Some((total, worst)) = boxwide::over_budget(&figures, budget.0) else {
            return;
        };
        if worst.app != self.opts.app.as_str() {
            tracing::debug!(APP = %self.opts.app, "box budget: over ({total} bytes), the largest is {}'s worker {}", worst.app, worst.serial);
            return;
        }
        let serial = worst.serial;
        let bytes = worst.bytes;
        let path = self.box_lock_file();
        let done = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| boxwide::parse_done(&t));
        if !boxwide::settled(done, &published) {
            tracing::debug!(APP = %self.opts.app, "box budget: waiting for figures newer than the last box-wide recycle");
            return;
        }
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(APP = %self.opts.app, "box budget: cannot open {}: {e}", path.display());
                return;
            }
        };
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, e)) => {
                // Another kechid is recycling for the box: its result comes first.
                tracing::debug!(APP = %self.opts.app, "box budget: the box lock is taken ({e})");
                return;
            }
        };
        tracing::info!(
            APP = %self.opts.app, WORKER = serial, REASON = "box-budget", BOX_TOTAL = total, BOX_BUDGET = budget.0, METRIC_BYTES = bytes,
            "the box's workers use {} together, over the box budget {}: worker {serial} ({}) is the largest on the box; recycling it",
            Bytes(total).human(), Bytes(budget.0).human(), Bytes(bytes).human()
        );
        self.box_lock = Some(BoxLock { lock, serial });
        self.state.box_pick = Some((serial, StopReason::BoxBudget));
    }
}

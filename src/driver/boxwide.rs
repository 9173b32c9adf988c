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
use crate::lifecycle::StopReason;
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
        let boxed = &self.loaded.boxed;
        if boxed.budget.is_none() && boxed.pressure.is_none() && self.box_lock.is_none() {
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
                let last = || full(&self.last_detailed.get(&w.serial)?.1);
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
        // a stopped worker gives its memory back when it exits: until then the box has not
        // seen the recycle's effect (a pressure pick is stopped before its replacement starts)
        let draining = self.is_draining(serial);
        if (live && (pending || replacing)) || draining {
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

    /// Every app's published figures (fresh ones only), and when each file was written.
    fn box_figures(&self) -> (Vec<boxwide::Figure>, Vec<u64>) {
        let now = now_ms();
        let mut figures = Vec::new();
        let mut published = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.opts.runtime_dir) else {
            return (figures, published);
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
        (figures, published)
    }

    /// Over the box's budget with the largest worker ours: take the lock and pick it.
    fn box_pick(&mut self) {
        let Some(budget) = self.loaded.boxed.budget else {
            return;
        };
        if self.box_busy() {
            return;
        }
        let (figures, published) = self.box_figures();
        let Some((total, worst)) = boxwide::over_budget(&figures, budget.0) else {
            return;
        };
        let (serial, bytes) = (worst.serial, worst.bytes);
        if worst.app != self.opts.app.as_str() {
            tracing::debug!(APP = %self.opts.app, "box budget: over ({total} bytes), the largest is {}'s worker {serial}", worst.app);
            return;
        }
        if !self.box_lock_taken(serial, &published, StopReason::BoxBudget) {
            return;
        }
        tracing::info!(
            APP = %self.opts.app, WORKER = serial, REASON = "box-budget", BOX_TOTAL = total, BOX_BUDGET = budget.0, METRIC_BYTES = bytes,
            "the box's workers use {} together, over the box budget {}: worker {serial} ({}) is the largest on the box; recycling it",
            Bytes(total).human(), Bytes(budget.0).human(), Bytes(bytes).human()
        );
    }

    /// The memory pressure trigger fired: the largest worker of the box goes, if it is ours.
    pub(super) fn on_pressure(&mut self, psi: String) {
        if self.box_busy() {
            return;
        }
        let done = std::fs::read_to_string(self.box_lock_file())
            .ok()
            .and_then(|t| boxwide::parse_done(&t));
        let window_ms = self.pressure_window.as_millis() as u64;
        if !boxwide::pressure_after(done, now_ms(), window_ms) {
            tracing::debug!(APP = %self.opts.app, "memory pressure ({psi}) measured over a window that began before the last box-wide recycle ended: not acted on");
            return;
        }
        let (figures, published) = self.box_figures();
        let Some(worst) = boxwide::largest(&figures) else {
            return;
        };
        let (serial, bytes) = (worst.serial, worst.bytes);
        let total: u64 = figures.iter().map(|f| f.bytes).sum();
        if worst.app != self.opts.app.as_str() {
            tracing::debug!(APP = %self.opts.app, "memory pressure: the largest worker is {}'s worker {serial}", worst.app);
            return;
        }
        if !self.box_lock_taken(serial, &published, StopReason::Pressure) {
            return;
        }
        tracing::info!(
            APP = %self.opts.app, WORKER = serial, REASON = "pressure", BOX_TOTAL = total, METRIC_BYTES = bytes,
            "memory pressure on the box ({psi}): worker {serial} ({}) is the largest on the box (all workers: {}); recycling it before the OOM killer acts",
            Bytes(bytes).human(), Bytes(total).human()
        );
    }

    /// A box-wide recycle of this app is under way, or kechid is on its way out.
    fn box_busy(&self) -> bool {
        self.box_lock.is_some() || self.state.box_pick.is_some() || self.state.shutting_down
    }

    /// Takes the box lock for `serial` and picks it, unless another kechid holds the lock or
    /// the figures do not show the last box-wide recycle yet.
    fn box_lock_taken(&mut self, serial: u64, published: &[u64], reason: StopReason) -> bool {
        let path = self.box_lock_file();
        let done = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| boxwide::parse_done(&t));
        if !boxwide::settled(done, published) {
            tracing::debug!(APP = %self.opts.app, "box: waiting for figures newer than the last box-wide recycle");
            return false;
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
                tracing::warn!(APP = %self.opts.app, "box: cannot open {}: {e}", path.display());
                return false;
            }
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                self.box_lock = Some(BoxLock { lock, serial });
                self.state.box_pick = Some((serial, reason));
                true
            }
            Err((_, e)) => {
                // Another kechid is recycling for the box: its result comes first.
                tracing::debug!(APP = %self.opts.app, "box: the box lock is taken ({e})");
                false
            }
        }
    }

    /// Arms the memory pressure trigger of `[box] pressure` (at start; a reload that changes it
    /// takes effect at the next start of kechid).
    pub(super) fn arm_pressure(&mut self) {
        let Some(p) = self.loaded.boxed.pressure else {
            return;
        };
        if !self.pressure_window.is_zero() {
            return;
        }
        let path = psi_file();
        let mut window = p.window;
        let mut armed = crate::psi::Trigger::arm(&path, &p.trigger_line());
        if let Err(e) = &armed
            && e.kind() == std::io::ErrorKind::InvalidInput
            && let Some(wider) = whole_two_seconds(p)
        {
            // Without CAP_SYS_RESOURCE the kernel takes only windows of whole multiples of 2 s.
            tracing::warn!(APP = %self.opts.app, "box.pressure: the kernel refused a {} window (without CAP_SYS_RESOURCE it takes multiples of 2 s only): using {wider}", crate::quantity::format_duration(p.window));
            armed = crate::psi::Trigger::arm(&path, &wider.trigger_line());
            window = wider.window;
        }
        match armed {
            Ok(trigger) => {
                self.pressure_window = window;
                tracing::info!(APP = %self.opts.app, "memory pressure trigger armed on {}: {p}", path.display());
                let tx = self.pressure_tx.clone();
                tokio::task::spawn_local(async move {
                    while let Some(line) = trigger.fired().await {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(APP = %self.opts.app, "box.pressure: cannot arm a trigger on {}: {e}; memory pressure is not watched", path.display());
            }
        }
    }
}

/// The same share of a window rounded up to whole multiples of 2 s, if that is another window.
fn whole_two_seconds(
    p: crate::config::boxconf::Pressure,
) -> Option<crate::config::boxconf::Pressure> {
    let two = std::time::Duration::from_secs(2);
    let n = p.window.as_micros().div_ceil(two.as_micros()) as u32;
    let window = two * n.max(1);
    (window != p.window && window <= std::time::Duration::from_secs(10)).then(|| {
        let share = p.stall.as_secs_f64() / p.window.as_secs_f64();
        crate::config::boxconf::Pressure {
            full: p.full,
            stall: window.mul_f64(share),
            window,
        }
    })
}

/// Where the box's memory pressure is read ([`crate::psi::box_pressure_file`]): kechi.slice's
/// when the slice carries a memory limit of its own (its tasks then stall at that limit), else
/// the whole machine's, where kswapd's reclaim and swap-ins show (measured in the cgroup v2 VM:
/// the slice's file stayed at 0-2.8% while the machine's was at 12%; docs/benchmarks/pressure-v2.md).
fn psi_file() -> PathBuf {
    crate::psi::box_pressure_file(
        std::path::Path::new("/sys/fs/cgroup"),
        std::path::Path::new("/proc"),
    )
}

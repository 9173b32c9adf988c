//! Scopes marked idle for the CPU: a replacement's while it loads, a stopped worker's while it
//! exits, whenever other workers of the app serve ([`crate::cpu_idle`] says why and how).
//!
//! systemd is asked for `CPUWeight=idle` (its D-Bus value [`CPU_WEIGHT_IDLE`]): on cgroup v2
//! that is `cpu.idle`; on cgroup v1 it is the lowest weight, and kechid writes `cpu.idle` itself
//! here, once systemd has created the scope's cpu cgroup. A kernel without `cpu.idle` (older
//! than 5.15) leaves the lowest weight, said once in the journal.
//!
//! [`CPU_WEIGHT_IDLE`]: crate::systemd::CPU_WEIGHT_IDLE

use super::Driver;
use crate::cpu_idle::{self, Outcome};
use crate::systemd::Systemd;

impl<S: Systemd + 'static> Driver<S> {
    /// On cgroup v1, marks `unit` (worker `serial`'s scope) idle or not in the kernel; on v2
    /// there is nothing to do here (systemd did it). Best effort: a failure leaves the weight.
    pub(super) fn mark_scope_idle(&mut self, serial: u64, unit: &str, idle: bool) {
        let Some(layout) = &self.layout else { return };
        match cpu_idle::set(layout, &self.opts.app.slice_unit(), unit, idle) {
            Ok(Outcome::Written(f)) => {
                tracing::debug!(APP = %self.opts.app, WORKER = serial, "{}: {}", f.display(), u8::from(idle));
            }
            Ok(Outcome::NotMine) => {}
            Ok(Outcome::Missing) if idle && !self.cpu_idle_missing_noted => {
                self.cpu_idle_missing_noted = true;
                tracing::info!(APP = %self.opts.app, WORKER = serial, "{unit}: no cpu.idle in its cpu cgroup (Linux 5.15 and later have it): workers that load or exit beside serving ones run at the lowest CPU weight instead");
            }
            Ok(Outcome::Missing) => {}
            Err(e) => {
                tracing::warn!(APP = %self.opts.app, WORKER = serial, "{unit}: could not set cpu.idle to {} ({e}); it keeps its CPU weight", u8::from(idle));
            }
        }
    }

    /// An adopted worker whose scope an earlier kechid left idle (it stopped while the worker
    /// loaded, or while it exited): a serving one gets the default weight back, as it would have
    /// once ready; an exiting one stays idle, under the same fallback as if stopped by this
    /// kechid.
    pub(super) fn adopted_idle(&mut self, serial: u64, unit: &str, draining: bool) {
        let Some(layout) = &self.layout else { return };
        if !crate::cpu_idle::is_idle(layout, &self.opts.app.slice_unit(), unit) {
            return;
        }
        if draining {
            self.exiting_idle
                .insert(serial, (std::time::Instant::now(), unit.to_owned()));
            return;
        }
        tracing::info!(APP = %self.opts.app, WORKER = serial, "{unit} was left idle for the CPU by the earlier kechid: it gets the default weight back");
        self.loading_weight.insert(serial);
        self.end_loading_weight(serial);
    }

    /// Gives `unit` (worker `serial`'s scope) systemd's default CPU weight back: `cpu.idle` off
    /// first on v1, then `CPUWeight=` through systemd (which clears `cpu.idle` on v2).
    pub(super) fn unmark_scope_idle(&mut self, serial: u64, unit: String) {
        self.mark_scope_idle(serial, &unit, false);
        let name = unit.clone();
        self.launch(
            super::ops::QUICK_CALL_DEADLINE,
            move |sd| async move { sd.set_cpu_weight(&name, None).await },
            move |result| super::ops::Done::CpuWeight {
                serial,
                unit,
                result,
            },
        );
    }
}

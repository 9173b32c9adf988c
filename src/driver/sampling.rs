//! Periodic sampling: every worker's memory (per process from smaps_rollup, and its cgroup's
//! charge) for the memory policies, STATUS= and `kechictl status`; kechid's own memory.max
//! enforcement without systemd (decided by [`policy::monitor_kill`]); the jemalloc check.

use nix::sys::signal::{Signal as NixSignal, killpg};

use super::Driver;
use crate::lifecycle::WorkerState;
use crate::memory;
use crate::policy;
use crate::systemd::Systemd;

impl<S: Systemd + 'static> Driver<S> {
    /// Whether jemalloc is mapped in a worker's main process (warns once if not).
    pub(super) fn check_jemalloc(&mut self, serial: u64) {
        if !self.loaded.config.jemalloc.enabled {
            return;
        }
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        let Some(maps) = memory::read_maps(&self.proc_root, p.pid.as_raw() as u32) else {
            return;
        };
        let loaded = crate::jemalloc::maps_has_jemalloc(&maps);
        if p.jemalloc.is_none() && !loaded {
            tracing::warn!(APP = %self.opts.app, WORKER = serial, PID = p.pid.as_raw(), "jemalloc is not loaded in the worker (a static or setuid binary ignores LD_PRELOAD); it runs with its own allocator");
        }
        p.jemalloc = Some(loaded);
    }

    /// One round of sampling over all workers.
    pub(super) fn sample(&mut self) {
        self.reap_zombies();
        let serials: Vec<u64> = self.procs.keys().copied().collect();
        let max = super::limit(self.loaded.config.memory.max);
        for serial in serials {
            if self
                .procs
                .get(&serial)
                .is_some_and(|p| p.jemalloc.is_none())
                && self
                    .state
                    .workers
                    .get(&serial)
                    .is_some_and(|w| matches!(w.state, WorkerState::Ready { .. }))
            {
                self.check_jemalloc(serial);
            }
            // Every sixth sample reads the full figures anyway, so status and metrics stay fresh.
            let Some(sample) = self.sample_worker(serial, self.samples % 6 == 0) else {
                continue;
            };
            let enforced_by_kernel = self.systemd.is_some();
            if let Some(p) = self.procs.get_mut(&serial)
                && policy::monitor_kill(enforced_by_kernel, max, &sample, p.monitor_oom)
            {
                p.monitor_oom = true;
                let max_text = match self.loaded.config.memory.max {
                    crate::config::Limit::Bytes(b) => b.to_string(),
                    crate::config::Limit::Infinity => "infinity".to_owned(),
                };
                tracing::warn!(APP = %self.opts.app, WORKER = serial, PID = p.pid.as_raw(), REASON = "oom-kill", PSS = sample.total.pss, "worker uses {} (PSS) over memory.max {}: killed by kechid's monitor", crate::quantity::Bytes(sample.total.pss).human(), max_text);
                let _ = killpg(p.pid, NixSignal::SIGKILL);
            }
            if sample.detailed {
                self.last_detailed.insert(serial, sample.clone());
            }
            if let Some(w) = self.state.workers.get_mut(&serial) {
                w.record_mem(sample, std::time::Instant::now());
            }
        }
        self.samples += 1;
        self.last_detailed.retain(|s, _| self.procs.contains_key(s));
        self.write_metrics();
        self.box_round();
        self.record_socket_flags();
    }

    /// One worker's memory now. `/proc/PID/statm` (RSS, ~10 µs) for every process always;
    /// `smaps_rollup` (PSS, USS, shared; ~0.1 µs per resident page) only when `detailed` or a
    /// policy could fire: USS <= PSS <= RSS, so a worker whose RSS is under every threshold
    /// cannot be over it by any metric. See docs/MEMORY-SAMPLING.md for the costs.
    pub(super) fn sample_worker(&self, serial: u64, detailed: bool) -> Option<policy::MemSample> {
        let p = self.procs.get(&serial)?;
        let proc_root = &self.proc_root;
        let pids = self.worker_pids(serial);
        let rss = memory::processes_rss(proc_root, &pids);
        let pol = &self.policy;
        let full = detailed
            || self.systemd.is_none()
            || pol.min_shared.is_some()
            || pol.child_signal.is_some()
            || pol.recycle_above.is_some_and(|t| rss > t)
            // app-budget compares every worker by the metric: all need the full figures.
            || pol.app_budget.is_some();
        let mut sample = policy::MemSample {
            detailed: full,
            ..Default::default()
        };
        if !full {
            sample.total.rss = rss;
            sample.processes = pids.len();
        } else {
            for pid in pids {
                let Ok(m) = memory::read_proc_mem(proc_root, pid) else {
                    continue;
                };
                sample.total += m;
                sample.processes += 1;
                let pid = pid as i32;
                if pid != p.pid.as_raw()
                    && sample.largest_child.is_none_or(|(_, c)| {
                        policy::proc_metric(&m, pol.metric) > policy::proc_metric(&c, pol.metric)
                    })
                {
                    sample.largest_child = Some((pid, m));
                }
                if pid != p.pid.as_raw()
                    && m.rss > 0
                    && sample.least_shared_child.is_none_or(|(_, c)| {
                        (m.shared as f64 / m.rss as f64) < (c.shared as f64 / c.rss.max(1) as f64)
                    })
                {
                    sample.least_shared_child = Some((pid, m));
                }
            }
        }
        if sample.processes == 0 {
            return None;
        }
        sample.cgroup = self.cgroup_memory(serial).map(|m| m.current);
        Some(sample)
    }

    fn cgroup_memory(&self, serial: u64) -> Option<memory::CgroupMem> {
        let (Some(layout), Some(scope)) = (
            &self.layout,
            self.procs.get(&serial).and_then(|p| p.scope.as_ref()),
        ) else {
            return None;
        };
        let dirs = memory::scope_dir(layout, &self.app().slice_unit(), scope).ok()?;
        memory::read_cgroup_mem(&dirs.memory, dirs.version).ok()
    }
}

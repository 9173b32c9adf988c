//! Periodic sampling of every worker's memory, in two tiers: every tick the cheap figures
//! (`/proc/PID/statm` of each process, the scope cgroup's charge), and the full ones
//! (`smaps_rollup`: PSS, USS, shared, per child) only for the workers [`sample_plan::plan`] names
//! — those a memory policy could fire on, and those whose full figures are getting old. The
//! samples feed the memory policies, STATUS= and `kechictl status`, and kechid's own memory.max
//! enforcement without systemd (decided by [`policy::monitor_kill`]); also the jemalloc check.
//! Costs and the measurements behind this: docs/MEMORY-SAMPLING.md.

use std::sync::OnceLock;
use std::time::Instant;

use nix::sys::signal::{Signal as NixSignal, killpg};

use super::Driver;
use crate::lifecycle::WorkerState;
use crate::memory;
use crate::policy;
use crate::sample_plan::{self, Need, Seen};
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

    /// One round of sampling over all workers (the check-interval tick).
    pub(super) fn sample(&mut self) {
        self.sample_round(None);
    }

    /// A worker just became ready: its full figures now (a sample taken while it started does
    /// not describe the ready worker, and the policies judge ready workers by their last
    /// sample). With `app-budget`, which compares every worker, the others are sampled with it,
    /// as a tick would: the decision that follows rests on figures of one moment.
    pub(super) fn sample_ready(&mut self, serial: u64) {
        if self.policy.app_budget.is_some() {
            self.sample_round(Some(serial));
        } else if let Some(sample) = self.full_sample(serial) {
            self.record_sample(serial, sample, Instant::now());
        }
    }

    /// Full figures of one worker, now, recorded (`kechictl status`, a recycle's journal record).
    pub(super) fn sample_full_now(&mut self, serial: u64) {
        if let Some(sample) = self.full_sample(serial) {
            self.record_sample(serial, sample, Instant::now());
        }
    }

    /// Cheap figures of every worker, the plan, full figures where it says (and for `ready`).
    fn sample_round(&mut self, ready: Option<u64>) {
        self.reap_zombies();
        let serials: Vec<u64> = self.procs.keys().copied().collect();
        let mut seen = Vec::with_capacity(serials.len());
        let mut pids_of = Vec::with_capacity(serials.len());
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
            let Some((pids, cheap)) = self.cheap_figures(serial) else {
                continue;
            };
            seen.push(Seen {
                serial,
                cheap,
                full_at: self.last_detailed.get(&serial).map(|(at, _)| *at),
            });
            pids_of.push(pids);
        }
        let now = Instant::now();
        let limits = sample_plan::Limits {
            monitor_max: self
                .systemd
                .is_none()
                .then(|| super::limit(self.loaded.config.memory.max))
                .flatten(),
            interval: self.config().recycle.check_interval,
            refresh: sample_plan::REFRESH,
        };
        let mut need = sample_plan::plan(&self.policy, &limits, &seen, now);
        if let Some(serial) = ready {
            need.entry(serial).or_insert(Need::Refresh);
        }
        // The box-wide policies compare every worker of the machine by its private figure,
        // which only a full read gives: under them every worker is read in full each tick.
        // (The plan does not know the other apps' workers, so it cannot bound them yet.)
        let boxed = &self.loaded.boxed;
        let private = matches!(
            self.policy.metric,
            crate::config::Metric::Uss | crate::config::Metric::Pss
        );
        if private && (boxed.budget.is_some() || boxed.pressure.is_some()) {
            for s in &seen {
                need.entry(s.serial).or_insert(Need::Refresh);
            }
        }
        let max = super::limit(self.loaded.config.memory.max);
        for (s, pids) in seen.iter().zip(pids_of) {
            let serial = s.serial;
            let sample = if need.contains_key(&serial) {
                match self.full_figures(serial, &pids, s.cheap.cgroup) {
                    Some(full) => full,
                    None => continue,
                }
            } else {
                policy::MemSample::from_cheap(&s.cheap)
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
            self.record_sample(serial, sample, Instant::now());
        }
        self.last_detailed.retain(|s, _| self.procs.contains_key(s));
        self.loading_weight
            .retain(|s| self.state.workers.contains_key(s));
        self.write_metrics();
        self.box_round();
        self.record_socket_flags();
    }

    /// Records a worker's sample for the policies, and as its latest full figures if it has them.
    fn record_sample(&mut self, serial: u64, sample: policy::MemSample, at: Instant) {
        if sample.detailed {
            self.last_detailed.insert(serial, (at, sample.clone()));
        }
        if let Some(w) = self.state.workers.get_mut(&serial) {
            w.record_mem(sample, at);
        }
    }

    /// The sample to show for a worker (`kechictl status`, metrics): its latest if that has the
    /// full figures, else its last full one (at most [`sample_plan::REFRESH`] old).
    pub(super) fn shown_sample(&self, serial: u64) -> Option<&policy::MemSample> {
        let latest = self.state.workers.get(&serial)?.mem.as_ref();
        match latest {
            Some(m) if m.detailed => Some(m),
            _ => self.last_detailed.get(&serial).map(|(_, m)| m),
        }
    }

    /// One worker's full figures now (cheap ones first, for its processes and cgroup charge).
    fn full_sample(&self, serial: u64) -> Option<policy::MemSample> {
        let (pids, cheap) = self.cheap_figures(serial)?;
        self.full_figures(serial, &pids, cheap.cgroup)
    }

    /// A worker's cheap figures: `/proc/PID/statm` of each of its processes (~10 µs each,
    /// whatever their size) and its scope cgroup's charge (one file); `None` when none of its
    /// processes could be read.
    fn cheap_figures(&self, serial: u64) -> Option<(Vec<u32>, memory::Cheap)> {
        let pids = self.worker_pids(serial);
        let mut cheap = memory::Cheap {
            slack: counter_slack(),
            ..memory::Cheap::default()
        };
        for pid in &pids {
            if let Ok(s) = memory::read_proc_statm(&self.proc_root, *pid) {
                cheap.rss += s.resident;
                cheap.file_shmem += s.shared;
                cheap.processes += 1;
            }
        }
        if cheap.processes == 0 {
            return None;
        }
        cheap.cgroup = self.cgroup_charge(serial);
        Some((pids, cheap))
    }

    /// A worker's full figures: `smaps_rollup` of each process (~0.1 µs per resident page), its
    /// largest child and its least-shared child by the metric.
    fn full_figures(
        &self,
        serial: u64,
        pids: &[u32],
        cgroup: Option<u64>,
    ) -> Option<policy::MemSample> {
        let main = self.procs.get(&serial)?.pid.as_raw();
        let metric = self.policy.metric;
        let mut sample = policy::MemSample {
            detailed: true,
            cgroup,
            ..Default::default()
        };
        for &pid in pids {
            let Ok(m) = memory::read_proc_mem(&self.proc_root, pid) else {
                continue;
            };
            sample.total += m;
            sample.processes += 1;
            let pid = pid as i32;
            if pid != main
                && sample.largest_child.is_none_or(|(_, c)| {
                    policy::proc_metric(&m, metric) > policy::proc_metric(&c, metric)
                })
            {
                sample.largest_child = Some((pid, m));
            }
            if pid != main
                && m.rss > 0
                && sample.least_shared_child.is_none_or(|(_, c)| {
                    (m.shared as f64 / m.rss as f64) < (c.shared as f64 / c.rss.max(1) as f64)
                })
            {
                sample.least_shared_child = Some((pid, m));
            }
        }
        (sample.processes > 0).then_some(sample)
    }

    /// The scope cgroup's charge: v2 `memory.current`, v1 `memory.usage_in_bytes`.
    fn cgroup_charge(&self, serial: u64) -> Option<u64> {
        let (Some(layout), Some(scope)) = (
            &self.layout,
            self.procs.get(&serial).and_then(|p| p.scope.as_ref()),
        ) else {
            return None;
        };
        let dirs = memory::scope_dir(layout, &self.app().slice_unit(), scope).ok()?;
        memory::read_cgroup_current(&dirs.memory, dirs.version).ok()
    }
}

/// How far this machine's per-process RSS counters may be off, per counter
/// ([`memory::counter_slack`]); the CPUs counted once (glibc reads them from /sys).
fn counter_slack() -> u64 {
    static SLACK: OnceLock<u64> = OnceLock::new();
    *SLACK.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        memory::counter_slack(u64::try_from(cpus).unwrap_or(1), memory::page_size())
    })
}

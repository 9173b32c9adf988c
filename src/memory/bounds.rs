//! What a worker's cheap figures prove about its expensive ones.
//!
//! Contract: [`Cheap`] holds what costs a few µs a process whatever its size (each process's
//! `statm`, the scope cgroup's `memory.current` / `memory.usage_in_bytes`); its methods turn
//! them into bounds on the sums over the worker's processes of what only `smaps_rollup` has
//! (RSS by page walk, PSS, USS, shared), taken at the same moment. Pure arithmetic, no IO; every
//! bound is an inequality, so a policy held against a bound that cannot fire cannot fire on the
//! exact figures either (see `crate::sample_plan`).
//!
//! Why the bounds hold (pages; "worker" = the processes of one scope):
//! - USS <= PSS <= RSS, process by process.
//! - Every anonymous page a worker's process maps was charged to the worker's cgroup when it was
//!   faulted in: kechi puts a worker's first process in its scope before it executes anything
//!   (race-free spawn), and its children are forked there. So the distinct anonymous pages of
//!   the worker are at most the cgroup's charge (which also holds its page cache and kernel
//!   memory, and in both versions includes per-CPU pre-charges: only ever more).
//! - PSS shares each page among its mappers, so the worker's PSS from anonymous pages is at most
//!   those distinct pages; from file and shmem pages at most their resident count per process
//!   (statm's `shared`). Hence PSS, and USS below it, <= charge + file and shmem pages.
//! - The shared part, from anonymous pages alone: with `R` the anonymous resident pages summed
//!   over the worker's `P` processes, `U` the distinct ones mapped once (private) and `S` those
//!   mapped by 2..=P of them, `U + S <= charge` and `R - U <= P x S`. The shared mappings,
//!   `R - U`, are then at least `(R - charge) x P / (P - 1)`: at least `R - charge`, more so the
//!   fewer the processes (twice that for a master and one child). This is what makes
//!   `min-shared` checkable without a page walk: copy-on-write decay raises the charge (each
//!   un-shared page is a new page) and so lowers the bound, as it lowers the shared part.
//! - The kernel's RSS counters may lag the page tables by up to [`counter_slack`] per counter
//!   per process (per-CPU batching, Linux 6.2 and later; exact sums from 6.16 on, measured
//!   exact here on 6.18); three counters make up RSS, two `shared`.
//!
//! Assumptions, outside kechi's control: no KSM merging across workers (a merged page stays
//! charged to one cgroup), no process mapping one anonymous page twice, and exact per-page map
//! counts for deciding "private" (a kernel built without per-page map counts judges large
//! folios by an average, and may count one page private in two processes).

/// One worker's cheap figures, in bytes, summed over its processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Cheap {
    /// Processes whose `statm` was read.
    pub processes: usize,
    /// Resident pages (`statm` resident): anonymous, file and shmem.
    pub rss: u64,
    /// Resident file-backed and shmem pages (`statm` shared); the rest of `rss` is anonymous.
    pub file_shmem: u64,
    /// The scope cgroup's charge, when known (no cgroup without systemd).
    pub cgroup: Option<u64>,
    /// How far one RSS counter of one process may be off, in bytes ([`counter_slack`]).
    pub slack: u64,
}

impl Cheap {
    fn slack_of(&self, counters: u64) -> u64 {
        self.slack
            .saturating_mul(counters)
            .saturating_mul(self.processes as u64)
    }

    /// At least the worker's RSS as `smaps_rollup` counts it.
    pub fn rss_hi(&self) -> u64 {
        self.rss.saturating_add(self.slack_of(3))
    }

    /// At most the worker's RSS as `smaps_rollup` counts it.
    pub fn rss_lo(&self) -> u64 {
        self.rss.saturating_sub(self.slack_of(3))
    }

    /// At least the worker's PSS, hence its USS.
    pub fn private_hi(&self) -> u64 {
        let by_rss = self.rss_hi();
        match self.cgroup {
            Some(charge) => by_rss.min(
                charge
                    .saturating_add(self.file_shmem)
                    .saturating_add(self.slack_of(2)),
            ),
            None => by_rss,
        }
    }

    /// At most the worker's shared part (`Shared_Clean + Shared_Dirty`, summed); 0 when nothing
    /// is proven (no cgroup figure, a single process).
    pub fn shared_lo(&self) -> u64 {
        let Some(charge) = self.cgroup else {
            return 0;
        };
        if self.processes < 2 {
            return 0;
        }
        let anon = self
            .rss
            .saturating_sub(self.file_shmem)
            .saturating_sub(self.slack_of(1));
        // (R - charge) x P / (P - 1), rounded down
        let excess = anon.saturating_sub(charge);
        excess.saturating_add(excess / (self.processes as u64 - 1))
    }
}

/// How far the kernel's per-process RSS counters (`statm`, `status`) may be from the page
/// tables, per counter, in bytes, on a machine with `cpus` CPUs and pages of `page_size`: since
/// Linux 6.2 each counter is a per-CPU counter folded in batches of `max(32, 2 x CPUs)` pages, so
/// a reading without the fold (before 6.16) may be off by under one batch per CPU. 768 KiB a
/// process on 2 CPUs with 4 KiB pages; it grows with the square of the CPUs, which only makes
/// more workers "near" their thresholds on large machines, never a wrong decision.
pub fn counter_slack(cpus: u64, page_size: u64) -> u64 {
    let cpus = cpus.max(1);
    let batch = (2 * cpus).max(32);
    batch.saturating_mul(cpus).saturating_mul(page_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn cheap(processes: usize, rss: u64, file_shmem: u64, cgroup: Option<u64>) -> Cheap {
        Cheap {
            processes,
            rss,
            file_shmem,
            cgroup,
            slack: 0,
        }
    }

    #[test]
    fn without_a_cgroup_only_rss_bounds_the_private_part() {
        let c = cheap(2, 100 * MIB, 30 * MIB, None);
        assert_eq!(c.private_hi(), 100 * MIB);
        assert_eq!(c.shared_lo(), 0);
    }

    #[test]
    fn the_charge_bounds_a_prefork_worker_tighter_than_rss() {
        // 25 processes of 14 MiB: 10 anonymous each, shared copy-on-write but 1 MiB; 4 of files.
        let c = cheap(25, 25 * 14 * MIB, 25 * 4 * MIB, Some(40 * MIB));
        assert_eq!(c.rss_hi(), 350 * MIB);
        assert_eq!(c.private_hi(), 140 * MIB);
        assert_eq!(c.shared_lo(), 210 * MIB + 210 * MIB / 24);
        // a master and one child: each shared page is shared twice
        let pair = cheap(2, 2 * 14 * MIB, 2 * 4 * MIB, Some(12 * MIB));
        assert_eq!(pair.shared_lo(), 2 * (20 - 12) * MIB);
    }

    #[test]
    fn a_single_process_with_a_large_charge_keeps_the_rss_bound() {
        let c = cheap(1, 20 * MIB, 5 * MIB, Some(80 * MIB));
        assert_eq!(c.private_hi(), 20 * MIB);
        assert_eq!(c.shared_lo(), 0);
    }

    #[test]
    fn slack_widens_every_bound() {
        let mut c = cheap(4, 100 * MIB, 40 * MIB, Some(30 * MIB));
        let exact = (c.rss_hi(), c.rss_lo(), c.private_hi(), c.shared_lo());
        c.slack = 256 << 10;
        assert_eq!(c.rss_hi(), exact.0 + 3 * 4 * (256 << 10));
        assert_eq!(c.rss_lo(), exact.1 - 3 * 4 * (256 << 10));
        assert_eq!(c.private_hi(), exact.2 + 2 * 4 * (256 << 10));
        // the anonymous sum less its slack, times 4/3
        let excess = 60 * MIB - 4 * (256 << 10) - 30 * MIB;
        assert_eq!(c.shared_lo(), excess + excess / 3);
        assert!(c.shared_lo() < exact.3);
    }

    #[test]
    fn bounds_never_wrap() {
        let c = Cheap {
            processes: usize::MAX,
            rss: u64::MAX,
            file_shmem: u64::MAX,
            cgroup: Some(u64::MAX),
            slack: u64::MAX,
        };
        assert_eq!((c.rss_hi(), c.rss_lo(), c.shared_lo()), (u64::MAX, 0, 0));
        assert_eq!(c.private_hi(), u64::MAX);
    }

    #[test]
    fn slack_per_counter() {
        assert_eq!(counter_slack(2, 4096), 32 * 2 * 4096);
        assert_eq!(counter_slack(16, 4096), 32 * 16 * 4096);
        assert_eq!(counter_slack(64, 4096), 128 * 64 * 4096);
        assert_eq!(counter_slack(0, 4096), 32 * 4096);
    }
}

//! The plan against a page-level model of workers: each page mapped by a set of a worker's
//! processes (and, for file pages, maybe by processes outside it), the cgroup charged with the
//! worker's anonymous pages and maybe more. From the model come both the exact figures that
//! `smaps_rollup` would give and the cheap ones (`statm`, the charge), the latter off by up to
//! the counters' slack; `decide` must then make the same decision from the plan's mix of full
//! and cheap samples as from full figures of every worker.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::config::ReadyMode;
use crate::lifecycle::WorkerState;
use crate::memory::ProcMem;
use crate::policy::{AppState, MemSample, Worker, decide, monitor_kill, proc_metric};
use crate::quantity::Percent;

const PAGE: u64 = 1 << 20;
const MIB: u64 = 1 << 20;

fn policy(workers: u32) -> Policy {
    Policy {
        workers,
        ready_mode: ReadyMode::Notify,
        ready_delay: Duration::from_secs(1),
        ready_timeout: Duration::from_secs(60),
        stop_timeout: Duration::from_secs(5),
        backoff: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        burst: 3,
        window: Duration::from_secs(60),
        max_age: Duration::ZERO,
        jitter: Percent::from_whole(0),
        min_interval: Duration::from_secs(30),
        max_concurrent: 1,
        seed: 1,
        metric: Metric::Uss,
        recycle_above: None,
        app_budget: None,
        min_shared: None,
        child_signal: None,
    }
}

fn limits() -> Limits {
    Limits {
        monitor_max: None,
        interval: Duration::from_secs(1),
        refresh: REFRESH,
    }
}

/// One worker, page by page.
#[derive(Debug, Clone)]
struct Model {
    /// Processes; 0 is the main one (a prefork master), the rest its children.
    procs: usize,
    /// Anonymous pages: which of the worker's processes map each (a bit per process, never 0).
    anon: Vec<u8>,
    /// File and shmem pages: which of its processes map each, and how many outside mappers.
    file: Vec<(u8, u8)>,
    /// Charged besides the anonymous pages (page cache, kernel memory), in pages.
    extra_charge: u64,
    /// Per process, how far its anonymous and its file counters are off, in pages.
    drift: Vec<(i64, i64)>,
}

impl Model {
    fn maps(mask: u8, p: usize) -> bool {
        mask & (1 << p) != 0
    }

    /// What `smaps_rollup` of process `p` says.
    fn smaps(&self, p: usize) -> ProcMem {
        let mut m = ProcMem::default();
        let pages = self
            .anon
            .iter()
            .map(|&mask| (mask, 0u8))
            .chain(self.file.iter().copied());
        for (mask, outside) in pages {
            if !Self::maps(mask, p) {
                continue;
            }
            let mappers = u64::from(mask.count_ones()) + u64::from(outside);
            m.rss += PAGE;
            m.pss += PAGE / mappers;
            if mappers == 1 {
                m.uss += PAGE;
            } else {
                m.shared += PAGE;
            }
        }
        m
    }

    /// The full sample the driver would record.
    fn full(&self, metric: Metric) -> MemSample {
        let mut s = MemSample {
            detailed: true,
            processes: self.procs,
            cgroup: Some(self.charge()),
            ..MemSample::default()
        };
        for p in 0..self.procs {
            let m = self.smaps(p);
            s.total += m;
            let pid = p as i32 + 100;
            if p != 0
                && s.largest_child
                    .is_none_or(|(_, c)| proc_metric(&m, metric) > proc_metric(&c, metric))
            {
                s.largest_child = Some((pid, m));
            }
            if p != 0
                && m.rss > 0
                && s.least_shared_child.is_none_or(|(_, c)| {
                    (m.shared as f64 / m.rss as f64) < (c.shared as f64 / c.rss.max(1) as f64)
                })
            {
                s.least_shared_child = Some((pid, m));
            }
        }
        s
    }

    fn charge(&self) -> u64 {
        (self.anon.len() as u64 + self.extra_charge) * PAGE
    }

    /// What `statm` and the cgroup say, with each counter off by its drift.
    fn cheap(&self, slack: u64) -> Cheap {
        let mut c = Cheap {
            processes: self.procs,
            cgroup: Some(self.charge()),
            slack,
            ..Cheap::default()
        };
        for p in 0..self.procs {
            let anon = self.anon.iter().filter(|&&m| Self::maps(m, p)).count() as i64;
            let file = self.file.iter().filter(|(m, _)| Self::maps(*m, p)).count() as i64;
            let (da, df) = self.drift.get(p).copied().unwrap_or((0, 0));
            let anon = (anon * PAGE as i64 + da).max(0) as u64;
            let file = (file * PAGE as i64 + df).max(0) as u64;
            c.rss += anon + file;
            c.file_shmem += file;
        }
        c
    }
}

fn model_strategy() -> impl Strategy<Value = Model> {
    (1usize..=6).prop_flat_map(|procs| {
        let mask = 1u8..(1u8 << procs);
        (
            Just(procs),
            prop::collection::vec(mask.clone(), 0..40),
            prop_oneof![Just(vec![]), prop::collection::vec((mask, 0u8..3), 0..20)],
            prop_oneof![Just(0u64), 0u64..8],
            prop::collection::vec((-1i64..=1, -2i64..=2), procs),
        )
            .prop_map(|(procs, anon, file, extra_charge, drift)| Model {
                procs,
                anon,
                file,
                extra_charge,
                drift,
            })
    })
}

/// The slack of the models' counters: drift is at most one unit per counter.
const SLACK_UNIT: u64 = PAGE / 8;

fn with_drift(mut m: Model, slack: u64) -> Model {
    for d in &mut m.drift {
        *d = (d.0 * slack as i64, d.1 * slack as i64);
    }
    m
}

/// Ready workers, sampled at `at` by `sample(serial, model)`.
fn state(models: &[Model], at: Instant, sample: impl Fn(u64, &Model) -> MemSample) -> AppState {
    let mut s = AppState::default();
    let since = at - Duration::from_secs(10);
    for (i, m) in models.iter().enumerate() {
        let serial = i as u64 + 1;
        s.workers.insert(
            serial,
            Worker {
                serial,
                pid: Some(serial as i32 * 1000),
                generation: s.generation,
                started: since,
                state: WorkerState::Ready {
                    since,
                    replaced_by: None,
                },
                ever_ready: true,
                mem: None,
                mem_at: None,
                child_signaled: None,
            },
        );
        s.workers
            .get_mut(&serial)
            .unwrap()
            .record_mem(sample(serial, m), at);
    }
    s.ready_notified = true;
    s
}

/// The decision from full figures of every worker, and the one from the plan's mix.
fn both_ways(
    models: &[Model],
    p: &Policy,
    lim: &Limits,
    slack: u64,
) -> (
    crate::policy::Decision,
    crate::policy::Decision,
    BTreeMap<u64, Need>,
) {
    let now = Instant::now();
    let seen: Vec<Seen> = models
        .iter()
        .enumerate()
        .map(|(i, m)| Seen {
            serial: i as u64 + 1,
            cheap: m.cheap(slack),
            full_at: Some(now),
        })
        .collect();
    let need = plan(p, lim, &seen, now);
    let full = state(models, now, |_, m| m.full(p.metric));
    let mixed = state(models, now, |serial, m| {
        if need.contains_key(&serial) {
            m.full(p.metric)
        } else {
            MemSample::from_cheap(&m.cheap(slack))
        }
    });
    (decide(&full, p, now), decide(&mixed, p, now), need)
}

fn metric_of(i: u8) -> Metric {
    [Metric::Uss, Metric::Pss, Metric::Rss, Metric::Cgroup][usize::from(i % 4)]
}

/// An exact figure of the models, scaled: thresholds land near the figures, on both sides.
fn near(v: u64, scale: u8) -> u64 {
    v * u64::from(scale) / 16
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn recycle_above_decides_as_with_full_figures(
        models in prop::collection::vec(model_strategy(), 1..5),
        metric in 0u8..4, which in 0usize..4, scale in 8u8..24, child in any::<bool>(), slack in 0u64..3,
    ) {
        let slack = slack * SLACK_UNIT;
        let models: Vec<Model> = models.into_iter().map(|m| with_drift(m, slack)).collect();
        let mut p = policy(models.len() as u32);
        p.metric = metric_of(metric);
        let target = models[which % models.len()].full(p.metric).metric(p.metric).unwrap_or(0);
        p.recycle_above = Some(near(target, scale));
        p.child_signal = child.then_some(libc::SIGTERM);
        let (full, mixed, need) = both_ways(&models, &p, &limits(), slack);
        prop_assert_eq!(full, mixed, "plan {:?}", need);
    }

    #[test]
    fn app_budget_decides_as_with_full_figures(
        models in prop::collection::vec(model_strategy(), 1..6),
        metric in 0u8..4, scale in 8u8..24, slack in 0u64..3,
    ) {
        let slack = slack * SLACK_UNIT;
        let models: Vec<Model> = models.into_iter().map(|m| with_drift(m, slack)).collect();
        let mut p = policy(models.len() as u32);
        p.metric = metric_of(metric);
        let total: u64 = models.iter().filter_map(|m| m.full(p.metric).metric(p.metric)).sum();
        p.app_budget = Some(near(total, scale));
        let (full, mixed, need) = both_ways(&models, &p, &limits(), slack);
        prop_assert_eq!(full, mixed, "plan {:?}", need);
    }

    #[test]
    fn min_shared_decides_as_with_full_figures(
        models in prop::collection::vec(model_strategy(), 1..5),
        which in 0usize..4, scale in 12u8..20, child in any::<bool>(), slack in 0u64..3,
    ) {
        let slack = slack * SLACK_UNIT;
        let models: Vec<Model> = models.into_iter().map(|m| with_drift(m, slack)).collect();
        let mut p = policy(models.len() as u32);
        // near the shared fraction of one worker, on both sides
        let t = models[which % models.len()].full(p.metric).total;
        let fraction = t.shared as f64 / t.rss.max(1) as f64;
        p.min_shared = Some((fraction * f64::from(scale) / 16.0).min(1.0));
        p.child_signal = child.then_some(libc::SIGTERM);
        let (full, mixed, need) = both_ways(&models, &p, &limits(), slack);
        prop_assert_eq!(full, mixed, "plan {:?}", need);
    }

    #[test]
    fn all_policies_at_once_decide_as_with_full_figures(
        models in prop::collection::vec(model_strategy(), 1..5),
        metric in 0u8..4, above in 8u8..24, budget in 8u8..24, percent in 0u8..=100,
        child in any::<bool>(), slack in 0u64..3,
    ) {
        let slack = slack * SLACK_UNIT;
        let models: Vec<Model> = models.into_iter().map(|m| with_drift(m, slack)).collect();
        let mut p = policy(models.len() as u32);
        p.metric = metric_of(metric);
        let figures: Vec<u64> = models.iter().filter_map(|m| m.full(p.metric).metric(p.metric)).collect();
        p.recycle_above = Some(near(figures.iter().copied().max().unwrap_or(0), above));
        p.app_budget = Some(near(figures.iter().sum(), budget));
        p.min_shared = Some(f64::from(percent) / 100.0);
        p.child_signal = child.then_some(libc::SIGTERM);
        let (full, mixed, need) = both_ways(&models, &p, &limits(), slack);
        prop_assert_eq!(full, mixed, "plan {:?}", need);
    }

    #[test]
    fn the_monitor_kills_as_with_full_figures(
        model in model_strategy(), scale in 8u8..24, slack in 0u64..3,
    ) {
        let slack = slack * SLACK_UNIT;
        let model = with_drift(model, slack);
        let full = model.full(Metric::Pss);
        let max = near(full.total.pss, scale);
        let lim = Limits { monitor_max: Some(max), ..limits() };
        let now = Instant::now();
        let seen = [Seen { serial: 1, cheap: model.cheap(slack), full_at: Some(now) }];
        let sample = if plan(&policy(1), &lim, &seen, now).contains_key(&1) {
            full.clone()
        } else {
            MemSample::from_cheap(&model.cheap(slack))
        };
        prop_assert_eq!(
            monitor_kill(false, Some(max), &sample, false),
            monitor_kill(false, Some(max), &full, false)
        );
    }

    #[test]
    fn the_bounds_hold_on_the_model(model in model_strategy(), slack in 0u64..3) {
        let slack = slack * SLACK_UNIT;
        let model = with_drift(model, slack);
        let f = model.full(Metric::Uss).total;
        let c = model.cheap(slack);
        prop_assert!(c.rss_lo() <= f.rss && f.rss <= c.rss_hi(), "{c:?} {f:?}");
        prop_assert!(f.uss <= f.pss && f.pss <= c.private_hi(), "{c:?} {f:?}");
        prop_assert!(c.shared_lo() <= f.shared, "{c:?} {f:?}");
    }
}

fn seen(serial: u64, cheap: Cheap) -> Seen {
    Seen {
        serial,
        cheap,
        full_at: Some(Instant::now()),
    }
}

/// A prefork worker of 25 processes as the benchmark runs it: 14 MiB resident each, 4 of them
/// file pages, the anonymous rest shared copy-on-write but 1 MiB per child.
fn prefork() -> Cheap {
    Cheap {
        processes: 25,
        rss: 25 * 14 * MIB,
        file_shmem: 25 * 4 * MIB,
        cgroup: Some(40 * MIB),
        slack: 256 << 10,
    }
}

#[test]
fn far_thresholds_need_no_full_figures() {
    let mut p = policy(8);
    p.recycle_above = Some(512 * MIB);
    p.app_budget = Some(16 << 30);
    p.min_shared = Some(0.3);
    p.child_signal = Some(libc::SIGTERM);
    let workers: Vec<Seen> = (1..=8).map(|s| seen(s, prefork())).collect();
    assert_eq!(
        plan(&p, &limits(), &workers, Instant::now()),
        BTreeMap::new()
    );
}

#[test]
fn a_worker_near_recycle_above_is_read_alone() {
    let mut p = policy(8);
    // each worker's bound: charge 40 + file pages 100 + slack 2 x 25 x 256 KiB = 152.5 MiB
    p.recycle_above = Some(160 * MIB);
    let mut workers: Vec<Seen> = (1..=8).map(|s| seen(s, prefork())).collect();
    // worker 3 grew by 30 MiB of its own: its bound passes 160 MiB
    workers[2].cheap.cgroup = Some(70 * MIB);
    workers[2].cheap.rss += 30 * MIB;
    let need = plan(&p, &limits(), &workers, Instant::now());
    assert_eq!(need, BTreeMap::from([(3, Need::RecycleAbove)]));
}

#[test]
fn rss_bounds_a_worker_without_a_cgroup_figure() {
    let mut p = policy(1);
    p.recycle_above = Some(300 * MIB);
    let mut c = prefork();
    c.cgroup = None;
    // 350 MiB of RSS and more with slack: its USS may be over 300 MiB for all we know
    assert_eq!(
        plan(&p, &limits(), &[seen(1, c)], Instant::now()),
        BTreeMap::from([(1, Need::RecycleAbove)])
    );
    p.recycle_above = Some(400 * MIB);
    assert!(plan(&p, &limits(), &[seen(1, c)], Instant::now()).is_empty());
}

#[test]
fn an_app_near_its_budget_reads_every_worker() {
    let mut p = policy(8);
    // the bounds add up to 8 x 152.5 MiB (charge 40 + files 100 + slack 12.5): 1220 MiB
    p.app_budget = Some(1200 * MIB);
    let workers: Vec<Seen> = (1..=8).map(|s| seen(s, prefork())).collect();
    let need = plan(&p, &limits(), &workers, Instant::now());
    assert_eq!(need.len(), 8);
    assert!(need.values().all(|n| *n == Need::AppBudget));
    p.app_budget = Some(1220 * MIB);
    assert!(plan(&p, &limits(), &workers, Instant::now()).is_empty());
}

#[test]
fn the_cgroup_metric_needs_full_figures_only_to_aim_child_signal() {
    let mut p = policy(2);
    p.metric = Metric::Cgroup;
    p.recycle_above = Some(30 * MIB);
    p.app_budget = Some(10 * MIB);
    let workers = [seen(1, prefork()), seen(2, prefork())];
    assert!(plan(&p, &limits(), &workers, Instant::now()).is_empty());
    p.child_signal = Some(libc::SIGTERM);
    assert_eq!(plan(&p, &limits(), &workers, Instant::now()).len(), 2);
    p.recycle_above = Some(40 * MIB);
    assert!(
        plan(&p, &limits(), &workers, Instant::now()).is_empty(),
        "at the threshold is not over it"
    );
}

#[test]
fn min_shared_reads_a_prefork_worker_once_its_sharing_may_have_decayed() {
    let mut p = policy(1);
    p.min_shared = Some(0.5);
    let mut c = prefork();
    assert!(plan(&p, &limits(), &[seen(1, c)], Instant::now()).is_empty());
    // every child wrote its copy of 6 MiB: the charge grows by 24 x 6 MiB
    c.cgroup = Some(40 * MIB + 24 * 6 * MIB);
    assert_eq!(
        plan(&p, &limits(), &[seen(1, c)], Instant::now()),
        BTreeMap::from([(1, Need::MinShared)])
    );
    // a single process never counts for min-shared
    let single = Cheap {
        processes: 1,
        rss: 14 * MIB,
        file_shmem: 4 * MIB,
        cgroup: Some(14 * MIB),
        slack: 0,
    };
    assert!(plan(&p, &limits(), &[seen(1, single)], Instant::now()).is_empty());
}

#[test]
fn the_monitor_reads_only_workers_that_may_be_over_max() {
    let p = policy(2);
    let lim = Limits {
        monitor_max: Some(100 * MIB),
        ..limits()
    };
    let small = Cheap {
        processes: 1,
        rss: 90 * MIB,
        ..Cheap::default()
    };
    let big = Cheap {
        rss: 101 * MIB,
        ..small
    };
    assert_eq!(
        plan(&p, &lim, &[seen(1, small), seen(2, big)], Instant::now()),
        BTreeMap::from([(2, Need::Monitor)])
    );
}

#[test]
fn stale_full_figures_are_refreshed_a_few_a_tick_stalest_first() {
    let p = policy(200);
    let now = Instant::now();
    let lim = limits();
    let workers: Vec<Seen> = (1..=200)
        .map(|s| Seen {
            serial: s,
            cheap: prefork(),
            // 1..=100 read 61..160 s ago (worker 1 the stalest), 101..=200 just now
            full_at: if s <= 100 {
                Some(now - Duration::from_secs(161 - s))
            } else {
                Some(now)
            },
        })
        .collect();
    let need = plan(&p, &lim, &workers, now);
    // 200 workers x 1 s / 60 s: 4 a tick (3.33, rounded up)
    assert_eq!(need.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(need.values().all(|n| *n == Need::Refresh));

    // never read comes before any read, and nothing fresh is refreshed
    let mut few = workers[100..103].to_vec();
    few[1].full_at = None;
    assert_eq!(
        plan(&p, &lim, &few, now),
        BTreeMap::from([(102, Need::Refresh)])
    );
    few[1].full_at = Some(now - Duration::from_secs(59));
    assert!(plan(&p, &lim, &few, now).is_empty());
}

#[test]
fn refreshing_keeps_up_with_the_workers() {
    let lim = Limits {
        interval: Duration::from_secs(5),
        ..limits()
    };
    assert_eq!(refresh_per_tick(0, &lim), 1);
    assert_eq!(refresh_per_tick(8, &lim), 1);
    assert_eq!(refresh_per_tick(12, &lim), 1);
    assert_eq!(refresh_per_tick(13, &lim), 2);
    assert_eq!(refresh_per_tick(200, &lim), 17);
}

#[test]
fn a_cheap_sample_decides_nothing_on_uss_pss_or_sharing() {
    let c = prefork();
    let s = MemSample::from_cheap(&c);
    assert!(!s.detailed);
    assert_eq!(s.metric(Metric::Uss), None);
    assert_eq!(s.metric(Metric::Pss), None);
    assert_eq!(s.metric(Metric::Rss), Some(c.rss));
    assert_eq!(s.metric(Metric::Cgroup), c.cgroup);
    assert_eq!(s.processes, 25);
}

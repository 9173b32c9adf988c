//! Which workers need their full figures (`smaps_rollup`) this tick.
//!
//! Contract: [`plan`] is pure. Given each worker's cheap figures of this tick ([`Cheap`]: `statm`
//! of every process, the scope cgroup's charge), the memory policies and when each worker's full
//! figures were last read, it names the workers whose full figures must be read now, and why.
//! Every other worker is recorded with its cheap figures alone
//! ([`MemSample::from_cheap`](crate::policy::MemSample::from_cheap)), which no memory policy
//! decides on. The promise, tested below against a page-level model of workers: `decide` makes
//! the same decision from this mix as from full figures of every worker at the same moment.
//!
//! Why that holds, policy by policy (bounds from [`crate::memory::bounds`]):
//! - `recycle-above` fires when the worker's metric exceeds it. USS and PSS are at most
//!   [`Cheap::private_hi`], RSS at most [`Cheap::rss_hi`]; a worker whose bound is not above the
//!   threshold cannot fire, any other is read in full. The `cgroup` metric is read every tick
//!   anyway: full figures only when it is over and `child-signal` must pick a child.
//! - `app-budget` fires when the sum over the app's workers exceeds it. While the sum of the
//!   bounds does not, it cannot; otherwise every worker is read in full, so the total and the
//!   largest are compared on fresh figures of each (the guarantee of
//!   [`Worker::fresh_metric`](crate::policy::Worker::fresh_metric)). `cgroup`: never needed.
//! - `min-shared` fires when a prefork worker's shared part falls below a fraction of its RSS:
//!   not while [`Cheap::shared_lo`] is at least that fraction of [`Cheap::rss_hi`].
//! - kechid's own `memory.max` monitor (no systemd) kills above a PSS: as `recycle-above`.
//!
//! Besides, full figures for `kechictl status` and the metrics never get older than
//! [`Limits::refresh`]: the stalest workers are read in full a few a tick ([`Need::Refresh`]),
//! spread so that a tick reads about `workers x interval / refresh` of them, not all at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::Metric;
use crate::memory::Cheap;
use crate::policy::Policy;

/// One worker as sampled this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub serial: u64,
    pub cheap: Cheap,
    /// When its full figures were last read (`None`: never).
    pub full_at: Option<Instant>,
}

/// Why a worker's full figures are read this tick (the first reason found, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// Its metric may be over `recycle-above` (or over it, with `child-signal` to aim).
    RecycleAbove,
    /// The app's total may be over `app-budget`.
    AppBudget,
    /// Its shared part may be under `min-shared`.
    MinShared,
    /// Its PSS may be over `memory.max`, which kechid enforces itself without systemd.
    Monitor,
    /// Its full figures are older than [`Limits::refresh`].
    Refresh,
}

/// What the plan needs besides the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max` when kechid enforces it itself (no systemd): `None` otherwise.
    pub monitor_max: Option<u64>,
    /// The sampling interval (`recycle.check-interval`).
    pub interval: Duration,
    /// How old full figures may get for status and metrics.
    pub refresh: Duration,
}

/// How old full figures may get for `kechictl status` (which reads its own anyway) and the
/// metrics file: a minute, whatever the interval.
pub const REFRESH: Duration = Duration::from_secs(60);

/// The upper bound of `metric` over a worker's processes, from its cheap figures (`cgroup`:
/// the figure itself, exact; `None` without one, where no policy can fire on it).
pub fn metric_hi(cheap: &Cheap, metric: Metric) -> Option<u64> {
    match metric {
        Metric::Uss | Metric::Pss => Some(cheap.private_hi()),
        Metric::Rss => Some(cheap.rss_hi()),
        Metric::Cgroup => cheap.cgroup,
    }
}

/// The workers whose full figures are read this tick, each with the reason.
pub fn plan(policy: &Policy, limits: &Limits, seen: &[Seen], now: Instant) -> BTreeMap<u64, Need> {
    let mut need = BTreeMap::new();
    let metric = policy.metric;
    for s in seen {
        let c = &s.cheap;
        let hi = metric_hi(c, metric);
        let why = if policy.recycle_above.is_some_and(|t| {
            hi.is_some_and(|v| v > t) && (metric != Metric::Cgroup || policy.child_signal.is_some())
        }) {
            Some(Need::RecycleAbove)
        } else if policy.min_shared.is_some_and(|min| {
            // as policy::lost_sharing, with the shared part at its least and RSS at its most
            c.processes >= 2 && (c.shared_lo() as f64) < min * c.rss_hi() as f64
        }) {
            Some(Need::MinShared)
        } else if limits.monitor_max.is_some_and(|max| c.private_hi() > max) {
            Some(Need::Monitor)
        } else {
            None
        };
        if let Some(why) = why {
            need.insert(s.serial, why);
        }
    }
    if let Some(budget) = policy.app_budget
        && metric != Metric::Cgroup
    {
        let total = seen
            .iter()
            .filter_map(|s| metric_hi(&s.cheap, metric))
            .fold(0u64, u64::saturating_add);
        if total > budget {
            for s in seen {
                need.entry(s.serial).or_insert(Need::AppBudget);
            }
        }
    }
    // Refresh: the stalest first (never read before all others), a few a tick.
    let mut stale: Vec<&Seen> = seen
        .iter()
        .filter(|s| !need.contains_key(&s.serial))
        .filter(|s| {
            s.full_at
                .is_none_or(|t| now.saturating_duration_since(t) >= limits.refresh)
        })
        .collect();
    stale.sort_by_key(|s| (s.full_at, s.serial));
    for s in stale.into_iter().take(refresh_per_tick(seen.len(), limits)) {
        need.insert(s.serial, Need::Refresh);
    }
    need
}

/// How many stale workers one tick refreshes: enough that each is refreshed once per
/// `refresh` (`workers x interval / refresh`, rounded up), at least one.
fn refresh_per_tick(workers: usize, limits: &Limits) -> usize {
    let refresh = limits.refresh.as_secs_f64().max(f64::MIN_POSITIVE);
    let per_tick = (workers as f64 * limits.interval.as_secs_f64() / refresh).ceil();
    (per_tick as usize).max(1)
}

#[cfg(test)]
mod tests;

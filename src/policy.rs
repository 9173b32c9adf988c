//! The decision core: given what is known about an app's workers and the time, what to do next.
//!
//! [`decide`] is pure (no IO, time passed in): the driver gathers events, applies them to
//! [`AppState`] through the lifecycle table, calls `decide`, and carries out the [`Action`]s.
//! Policies here: the wanted number of workers (capacity), readiness by delay and its timeout,
//! crash backoff (doubling, capped) and the crash-loop burst, stop escalation to SIGKILL,
//! orderly shutdown, and telling systemd READY=1 once. [`classify_exit`] tells an OOM kill
//! from another SIGKILL, from the counters the driver read ([`OomCounters`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::{Config, Metric, ReadyMode};
use crate::exitcode;
use crate::lifecycle::{self, Event, Exit, IllegalTransition, StopReason, WorkerState};
use crate::memory::ProcMem;
use crate::quantity::Percent;

/// The parts of the config the decisions need.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub workers: u32,
    pub ready_mode: ReadyMode,
    pub ready_delay: Duration,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub burst: u32,
    pub window: Duration,
    /// `Duration::ZERO` = no age recycling.
    pub max_age: Duration,
    pub jitter: Percent,
    pub min_interval: Duration,
    pub max_concurrent: u32,
    /// Seeds the per-worker age jitter (fixed in tests, random in kechid).
    pub seed: u64,
    /// What memory thresholds measure.
    pub metric: Metric,
    pub recycle_above: Option<u64>,
    pub app_budget: Option<u64>,
    /// Minimum shared fraction of RSS (0.0..=1.0) for a prefork worker.
    pub min_shared: Option<f64>,
    /// Signal for an over-limit child of a prefork master, instead of recycling the worker.
    pub child_signal: Option<i32>,
}

impl Policy {
    pub fn from_config(c: &Config) -> Self {
        Policy {
            workers: c.workers,
            ready_mode: c.ready.mode,
            ready_delay: c.ready.delay,
            ready_timeout: c.ready.timeout,
            stop_timeout: c.stop.timeout,
            backoff: c.restart.backoff,
            backoff_max: c.restart.backoff_max,
            burst: c.restart.burst,
            window: c.restart.window,
            max_age: c.recycle.max_age,
            jitter: c.recycle.jitter,
            min_interval: c.recycle.min_interval,
            max_concurrent: c.recycle.max_concurrent.max(1),
            seed: 0,
            metric: c.memory.metric,
            recycle_above: c.memory.recycle_above.map(|b| b.0),
            app_budget: c.memory.app_budget.map(|b| b.0),
            min_shared: c.memory.min_shared.map(|p| p.fraction()),
            child_signal: c.memory.child_signal.map(|s| s.0 as i32),
        }
    }

    /// When worker `serial`, started at `started`, is due for age recycling: `max-age` shortened
    /// by up to `jitter`, by a fraction fixed per worker, so workers started together spread out.
    pub fn age_due(&self, serial: u64, started: Instant) -> Option<Instant> {
        if self.max_age.is_zero() {
            return None;
        }
        let u = (splitmix64(self.seed ^ serial) >> 11) as f64 / (1u64 << 53) as f64;
        Some(started + self.max_age.mul_f64(1.0 - self.jitter.fraction() * u))
    }

    /// Delay before the next spawn after `consecutive` crashes in a row: backoff doubling,
    /// capped at backoff-max.
    pub fn backoff_after(&self, consecutive: u32) -> Duration {
        if consecutive == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32
            .checked_shl(consecutive.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.backoff
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

/// A deterministic 64-bit mix (splitmix64's finaliser): spreads serials over the jitter range.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A worker's memory as last sampled: the sum over its processes, its cgroup's charge, and
/// its largest and its least-shared process other than the main one (a prefork master's
/// children).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemSample {
    pub total: ProcMem,
    pub cgroup: Option<u64>,
    pub processes: usize,
    pub largest_child: Option<(i32, ProcMem)>,
    /// Its child process with the smallest shared part of its RSS (for `min-shared` with
    /// `child-signal`: the child that un-shared most goes, the master forks a fresh one).
    pub least_shared_child: Option<(i32, ProcMem)>,
    /// Whether PSS/USS/shared were read (else only RSS, from statm).
    pub detailed: bool,
}

impl MemSample {
    /// A sample of the cheap figures alone (RSS from `statm`, the cgroup's charge): what the
    /// sampler records for a worker whose full figures no policy needs this tick
    /// ([`crate::sample_plan`]).
    pub fn from_cheap(cheap: &crate::memory::Cheap) -> MemSample {
        MemSample {
            total: ProcMem {
                rss: cheap.rss,
                ..ProcMem::default()
            },
            cgroup: cheap.cgroup,
            processes: cheap.processes,
            ..MemSample::default()
        }
    }

    /// The figure `metric` measures (for a child: its own smaps; `cgroup` is per worker only).
    /// USS and PSS only from full figures: a sample of the cheap ones has none (not 0).
    pub fn metric(&self, metric: Metric) -> Option<u64> {
        match metric {
            Metric::Uss => self.detailed.then_some(self.total.uss),
            Metric::Pss => self.detailed.then_some(self.total.pss),
            Metric::Rss => Some(self.total.rss),
            Metric::Cgroup => self.cgroup,
        }
    }
}

/// One process's figure for `metric` (`cgroup` is per worker: a process counts its PSS).
pub fn proc_metric(m: &ProcMem, metric: Metric) -> u64 {
    match metric {
        Metric::Uss => m.uss,
        Metric::Pss | Metric::Cgroup => m.pss,
        Metric::Rss => m.rss,
    }
}

/// A planned replacement: `new` takes over from `old`, which stops once `new` is ready. A view
/// of the pairings the old workers' states hold ([`AppState::recycles`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recycle {
    pub old: u64,
    pub new: u64,
    pub reason: StopReason,
}

/// One worker as the decision core sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub serial: u64,
    pub pid: Option<i32>,
    /// The config generation it was started with (bumped by each reload).
    pub generation: u64,
    pub started: Instant,
    pub state: WorkerState,
    pub ever_ready: bool,
    /// Last memory sample (`None` until the first).
    pub mem: Option<MemSample>,
    /// When `mem` was taken: figures older than the worker's readiness are not compared
    /// (see [`Worker::fresh_metric`]).
    pub mem_at: Option<Instant>,
    /// When kechi last signalled one of its children for memory (child-signal).
    pub child_signaled: Option<Instant>,
}

impl Worker {
    /// Records a memory sample taken at `at`.
    pub fn record_mem(&mut self, sample: MemSample, at: Instant) {
        self.mem = Some(sample);
        self.mem_at = Some(at);
    }

    /// Its figure for `metric`, when that figure is fresh: the worker is ready and was sampled
    /// after it became ready. A worker starts by loading its app, and its size at a sample taken
    /// a moment before its READY=1 says nothing about its size once serving (measured: a worker
    /// sampled 0.14 ms before READY=1, halfway through allocating, looked smaller than one
    /// holding 80 MiB, which app-budget then recycled first). Choices that compare workers
    /// (app-budget's largest-first) rest only on such figures.
    pub fn fresh_metric(&self, metric: Metric) -> Option<u64> {
        let WorkerState::Ready { since, .. } = self.state else {
            return None;
        };
        match (self.mem.as_ref(), self.mem_at) {
            (Some(m), Some(at)) if at >= since => m.metric(metric),
            _ => None,
        }
    }
}

/// Everything known about one app's workers.
#[derive(Debug, Clone, PartialEq)]
pub struct AppState {
    pub workers: BTreeMap<u64, Worker>,
    /// When workers that never got ready crashed, within the last `restart.window`.
    pub loop_crashes: Vec<Instant>,
    /// Crashes since a worker last became ready.
    pub consecutive_crashes: u32,
    pub last_crash: Option<Instant>,
    pub shutting_down: bool,
    /// Why the workers stop when `shutting_down`: `Idle` for scale to zero, else `Shutdown`.
    pub shutdown_reason: StopReason,
    pub generation: u64,
    pub ready_notified: bool,
    /// When the last automatic recycle began (for `recycle.min-interval`).
    pub last_recycle: Option<Instant>,
    /// Workers an operator asked to recycle (`kechictl recycle`), not yet begun.
    pub requested: std::collections::BTreeSet<u64>,
    /// The worker the box-wide policy picked (box budget or pressure; see `crate::boxwide`),
    /// not yet begun.
    pub box_pick: Option<(u64, StopReason)>,
}

impl Default for AppState {
    fn default() -> Self {
        AppState {
            workers: BTreeMap::new(),
            loop_crashes: Vec::new(),
            consecutive_crashes: 0,
            last_crash: None,
            shutting_down: false,
            shutdown_reason: StopReason::Shutdown,
            generation: 1,
            ready_notified: false,
            last_recycle: None,
            requested: std::collections::BTreeSet::new(),
            box_pick: None,
        }
    }
}

impl AppState {
    /// Records a new worker in Spawning.
    pub fn add_spawning(&mut self, serial: u64, now: Instant) {
        self.workers.insert(
            serial,
            Worker {
                serial,
                pid: None,
                generation: self.generation,
                started: now,
                state: WorkerState::Spawning { since: now },
                ever_ready: false,
                mem: None,
                mem_at: None,
                child_signaled: None,
            },
        );
    }

    /// Records a worker taken over from an earlier kechid: ready (it was serving), or
    /// draining if that kechid had asked it to stop (it is given a full stop.timeout again).
    pub fn adopt(
        &mut self,
        serial: u64,
        started: Instant,
        draining: Option<StopReason>,
        now: Instant,
    ) {
        let state = match draining {
            Some(reason) => WorkerState::Draining {
                since: now,
                reason,
                killed: false,
            },
            None => WorkerState::Ready {
                since: started,
                replaced_by: None,
            },
        };
        self.workers.insert(
            serial,
            Worker {
                serial,
                pid: None,
                generation: self.generation,
                started,
                state,
                ever_ready: true,
                mem: None,
                mem_at: None,
                child_signaled: None,
            },
        );
    }

    /// Applies one event to one worker through the lifecycle table, keeping the crash records.
    pub fn apply(
        &mut self,
        serial: u64,
        event: &Event,
        now: Instant,
        policy: &Policy,
    ) -> Result<&Worker, ApplyError> {
        let w = self
            .workers
            .get_mut(&serial)
            .ok_or(ApplyError::NoSuchWorker(serial))?;
        let next = lifecycle::next(&w.state, event, now, w.ever_ready)?;
        // Only a worker *becoming* ready ends a run of failed starts: a ready worker's pairing
        // with its replacement starting or failing is a Ready-to-Ready edge, and counting that
        // let a reload onto a command that cannot start retry as fast as it could fork.
        if matches!(next, WorkerState::Ready { .. })
            && !matches!(w.state, WorkerState::Ready { .. })
        {
            w.ever_ready = true;
            self.consecutive_crashes = 0;
        }
        let is_ready_timeout = matches!(event, Event::StopRequested(StopReason::ReadyTimeout));
        if let WorkerState::Gone {
            crashed, was_ready, ..
        } = &next
            && *crashed
        {
            self.consecutive_crashes = self.consecutive_crashes.saturating_add(1);
            self.last_crash = Some(now);
            if !*was_ready {
                self.loop_crashes.push(now);
            }
        }
        // A worker that never got ready in time is as much a failed start as a crash.
        if is_ready_timeout && !w.ever_ready {
            self.consecutive_crashes = self.consecutive_crashes.saturating_add(1);
            self.last_crash = Some(now);
            self.loop_crashes.push(now);
        }
        self.loop_crashes
            .retain(|t| now.saturating_duration_since(*t) <= policy.window);
        // An operator's recycle whose replacement failed is still wanted: asked again, it
        // waits out the crash backoff like any new start. (Other reasons come back by
        // themselves: the memory figure, the generation, the age still say so.)
        let manual_unpaired = matches!(event, Event::ReplacementFailed)
            && matches!(
                &w.state,
                WorkerState::Ready { replaced_by: Some(r), .. } if r.reason == StopReason::Manual
            );
        w.state = next;
        if manual_unpaired {
            self.requested.insert(serial);
        }
        Ok(self.workers.get(&serial).expect("present above"))
    }

    /// Removes workers that are gone, returning them (for cleanup and history).
    pub fn reap_gone(&mut self) -> Vec<Worker> {
        let gone: Vec<u64> = self
            .workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Gone { .. }))
            .map(|w| w.serial)
            .collect();
        for s in &gone {
            self.requested.remove(s);
            if self.box_pick.as_ref().is_some_and(|(p, _)| p == s) {
                self.box_pick = None;
            }
        }
        gone.into_iter()
            .filter_map(|s| self.workers.remove(&s))
            .collect()
    }

    pub fn live(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values().filter(|w| w.state.is_live())
    }

    pub fn ready_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Ready { .. }))
            .count()
    }

    fn is_ready(&self, serial: u64) -> bool {
        self.workers
            .get(&serial)
            .is_some_and(|w| matches!(w.state, WorkerState::Ready { .. }))
    }

    fn is_live(&self, serial: u64) -> bool {
        self.workers.get(&serial).is_some_and(|w| w.state.is_live())
    }

    /// The replacements in flight, oldest worker first.
    pub fn recycles(&self) -> Vec<Recycle> {
        self.workers
            .values()
            .filter_map(|w| match &w.state {
                WorkerState::Ready {
                    replaced_by: Some(r),
                    ..
                } => Some(Recycle {
                    old: w.serial,
                    new: r.by,
                    reason: r.reason.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Pairs `old` with its replacement `new` (through the lifecycle table).
    pub fn begin_recycle(
        &mut self,
        old: u64,
        new: u64,
        reason: StopReason,
        now: Instant,
        policy: &Policy,
    ) -> Result<(), ApplyError> {
        let event = Event::ReplacementStarted(lifecycle::Replacement { by: new, reason });
        self.apply(old, &event, now, policy).map(|_| ())
    }

    /// The replacement `serial` is paired with, if it is being replaced.
    pub fn replacement_of(&self, serial: u64) -> Option<u64> {
        match &self.workers.get(&serial)?.state {
            WorkerState::Ready {
                replaced_by: Some(r),
                ..
            } => Some(r.by),
            _ => None,
        }
    }

    fn in_recycle(&self, serial: u64) -> bool {
        self.recycles()
            .iter()
            .any(|r| r.old == serial || r.new == serial)
    }

    /// Whether `serial` counts toward the wanted number of workers: a replacement that is not
    /// ready yet does not, nor does an old worker whose replacement is ready (it is about to go).
    fn counts(&self, serial: u64) -> bool {
        self.is_live(serial)
            && !self.recycles().iter().any(|r| {
                (r.new == serial && !self.is_ready(r.new))
                    || (r.old == serial && self.is_ready(r.new))
            })
    }
}

/// Why a `kechictl recycle` request names no worker to recycle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecycleRefused {
    #[error("worker {worker} is not a running worker (running: {running:?})")]
    NoSuchWorker { worker: u64, running: Vec<u64> },
    #[error("give exactly one of worker or all")]
    Ambiguous,
}

/// The workers an operator may ask to recycle: live, and in no replacement already (neither
/// being replaced nor a replacement).
pub fn recyclable(state: &AppState) -> Vec<u64> {
    state
        .live()
        .map(|w| w.serial)
        .filter(|s| !state.in_recycle(*s))
        .collect()
}

/// The workers a `kechictl recycle` request (`worker` N, or `all`) names.
pub fn recycle_request(
    state: &AppState,
    worker: Option<u64>,
    all: bool,
) -> Result<Vec<u64>, RecycleRefused> {
    let candidates = recyclable(state);
    match (worker, all) {
        (Some(n), false) if candidates.contains(&n) => Ok(vec![n]),
        (Some(n), false) => Err(RecycleRefused::NoSuchWorker {
            worker: n,
            running: candidates,
        }),
        (None, true) => Ok(candidates),
        _ => Err(RecycleRefused::Ambiguous),
    }
}

/// kechid's own monitor (no systemd, so no kernel limit): whether a worker sampled over
/// `memory.max` (`max`; `None` = infinity) by PSS is to be killed now. Once per worker
/// (`already`); never where the kernel enforces the limit.
pub fn monitor_kill(
    enforced_by_kernel: bool,
    max: Option<u64>,
    sample: &MemSample,
    already: bool,
) -> bool {
    !enforced_by_kernel && !already && max.is_some_and(|max| sample.total.pss > max)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("no worker with serial {0}")]
    NoSuchWorker(u64),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start one more worker.
    Spawn,
    /// The worker passed its readiness check (delay mode).
    MarkReady(u64),
    /// Ask a worker to stop (stop.signal).
    Stop(u64, StopReason),
    /// Start a replacement for `old`; `old` stops once it is ready.
    Replace { old: u64, reason: StopReason },
    /// Signal one child process of a prefork worker (child-signal): its master replaces it with
    /// a fresh, fully shared fork.
    SignalChild { serial: u64, pid: i32, signal: i32 },
    /// The replacement of `old` failed: `old` keeps serving (the pairing ends).
    ReplacementFailed(u64),
    /// stop.timeout passed: SIGKILL everything in the worker's scope.
    Kill(u64),
    /// Tell systemd READY=1.
    NotifyReady,
    /// Leave with this exit code.
    Exit { code: i32, why: String },
}

/// What to do now, and when to look again if nothing else happens first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub wake_at: Option<Instant>,
}

impl Decision {
    fn wake(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// The largest worker (by the metric) while the app's total is over `app-budget`.
///
/// Only on fresh figures ([`Worker::fresh_metric`]) of every worker that counts: while one of
/// them is starting, or has not been sampled since it became ready, neither the total nor the
/// largest is known, and nothing is chosen (the next sample, every `check-interval`, and the
/// one kechid takes when a worker becomes ready, bring the figures).
fn over_budget(state: &AppState, policy: &Policy) -> Option<u64> {
    let budget = policy.app_budget?;
    let sized: Vec<(u64, u64)> = state
        .workers
        .values()
        .filter(|w| state.counts(w.serial))
        .map(|w| Some((w.serial, w.fresh_metric(policy.metric)?)))
        .collect::<Option<_>>()?;
    let total: u64 = sized.iter().map(|(_, v)| v).sum();
    (total > budget)
        .then(|| sized.iter().max_by_key(|(_, v)| *v).map(|(s, _)| *s))
        .flatten()
}

/// Copy-on-write decay: a prefork worker (several processes) whose shared part of RSS fell
/// below `min-shared`. A single process shares little but its libraries, so it never counts.
fn lost_sharing(w: &Worker, policy: &Policy) -> bool {
    let (Some(min), Some(m)) = (policy.min_shared, &w.mem) else {
        return false;
    };
    // (the shared part is known from full figures only; the sampler reads them whenever the
    // cheap ones cannot rule this out: crate::sample_plan)
    m.detailed
        && m.processes >= 2
        && m.total.rss > 0
        && (m.total.shared as f64) < min * m.total.rss as f64
}

/// `child-signal` to one child of a prefork worker, at most once per min-interval per worker.
fn signal_child(d: &mut Decision, w: &Worker, pid: i32, policy: &Policy, now: Instant) {
    match w.child_signaled.map(|t| t + policy.min_interval) {
        Some(at) if now < at => d.wake(at),
        _ => d.actions.push(Action::SignalChild {
            serial: w.serial,
            pid,
            signal: policy.child_signal.unwrap_or(libc::SIGTERM),
        }),
    }
}

/// The decision core.
pub fn decide(state: &AppState, policy: &Policy, now: Instant) -> Decision {
    let mut d = Decision::default();

    // Escalation of stops applies in every mode, shutdown included.
    for w in state.workers.values() {
        if let WorkerState::Draining {
            since,
            killed: false,
            ..
        } = w.state
        {
            let due = since + policy.stop_timeout;
            if now >= due {
                d.actions.push(Action::Kill(w.serial));
            } else {
                d.wake(due);
            }
        }
    }

    if state.shutting_down {
        for w in state.live() {
            d.actions
                .push(Action::Stop(w.serial, state.shutdown_reason.clone()));
        }
        if state
            .workers
            .values()
            .all(|w| matches!(w.state, WorkerState::Gone { .. }))
        {
            d.actions.push(Action::Exit {
                code: exitcode::OK,
                why: "stopped".into(),
            });
        }
        return d;
    }

    let recent_loop_crashes = state
        .loop_crashes
        .iter()
        .filter(|t| now.saturating_duration_since(**t) <= policy.window)
        .count();
    // A serving app is never given up on: only a start that never gets anywhere is a loop.
    if recent_loop_crashes > policy.burst as usize && state.ready_count() == 0 {
        d.actions.push(Action::Exit {
            code: exitcode::CRASH_LOOP,
            why: format!(
                "workers failed {recent_loop_crashes} times within {} without getting ready (restart.burst = {})",
                crate::quantity::format_duration(policy.window),
                policy.burst
            ),
        });
        return d;
    }

    // Readiness (delay mode here; notify and accept arrive as events) and its timeout.
    for w in state.workers.values() {
        if let WorkerState::Starting { since } = w.state {
            let timeout_at = since + policy.ready_timeout;
            if policy.ready_mode == ReadyMode::Delay && policy.ready_delay < policy.ready_timeout {
                let ready_at = since + policy.ready_delay;
                if now >= ready_at {
                    d.actions.push(Action::MarkReady(w.serial));
                    continue;
                }
                d.wake(ready_at);
            }
            if now >= timeout_at {
                d.actions
                    .push(Action::Stop(w.serial, StopReason::ReadyTimeout));
            } else {
                d.wake(timeout_at);
            }
        }
    }

    // Recycles in flight: finish those whose replacement is ready, drop failed ones.
    // (A pairing lives in the old worker's Ready state: it ends with the old worker.)
    for r in state.recycles() {
        if !state.is_live(r.new) {
            d.actions.push(Action::ReplacementFailed(r.old));
        } else if state.is_ready(r.new) {
            d.actions.push(Action::Stop(r.old, r.reason));
        }
    }

    // Capacity: keep `workers` counted workers, honouring crash backoff.
    let counted = state.workers.keys().filter(|s| state.counts(**s)).count();
    let wanted = policy.workers as usize;
    if counted < wanted {
        let resume = state
            .last_crash
            .map(|t| t + policy.backoff_after(state.consecutive_crashes));
        match resume {
            Some(at) if now < at => d.wake(at),
            _ => d
                .actions
                .extend(std::iter::repeat_n(Action::Spawn, wanted - counted)),
        }
    } else if counted > wanted {
        // Stop the surplus, newest first: the oldest have proven themselves.
        let surplus: Vec<u64> = state
            .workers
            .keys()
            .copied()
            .filter(|s| state.counts(*s) && !state.in_recycle(*s))
            .collect();
        for serial in surplus.iter().rev().take(counted - wanted) {
            d.actions.push(Action::Stop(*serial, StopReason::Surplus));
        }
    }

    // New recycles: one at a time up to max-concurrent, only with full ready capacity, so a
    // planned recycle never drops below `workers` ready workers.
    let ready_counted = state
        .workers
        .keys()
        .filter(|s| state.counts(**s) && state.is_ready(**s))
        .count();
    if state.recycles().len() < policy.max_concurrent as usize
        && ready_counted >= wanted
        && counted == wanted
    {
        let candidates = state.workers.values().filter(|w| {
            matches!(w.state, WorkerState::Ready { .. }) && !state.in_recycle(w.serial)
        });
        // Operator-asked first (manual, then reload), then memory, app budget, sharing, age.
        let mut due: Option<(u8, Instant, u64, StopReason)> = None;
        let budget_pick = over_budget(state, policy);
        for w in candidates {
            let over = w
                .mem
                .as_ref()
                .and_then(|m| m.metric(policy.metric))
                .zip(policy.recycle_above)
                .is_some_and(|(v, max)| v > max);
            let candidate = if state.requested.contains(&w.serial) {
                Some((0, w.started, StopReason::Manual))
            } else if w.generation < state.generation {
                Some((1, w.started, StopReason::Reload))
            } else if over
                && policy.child_signal.is_some()
                && let Some((pid, _)) = w.mem.as_ref().and_then(|m| m.largest_child)
            {
                // The child goes, not the worker.
                signal_child(&mut d, w, pid, policy, now);
                None
            } else if over {
                Some((2, w.started, StopReason::Memory))
            } else if budget_pick == Some(w.serial) {
                Some((3, w.started, StopReason::Budget))
            } else if let Some((_, reason)) =
                state.box_pick.as_ref().filter(|(s, _)| *s == w.serial)
            {
                Some((3, w.started, reason.clone()))
            } else if lost_sharing(w, policy)
                && policy.child_signal.is_some()
                && let Some((pid, _)) = w.mem.as_ref().and_then(|m| m.least_shared_child)
            {
                // The child that un-shared most goes; its fresh replacement shares again.
                signal_child(&mut d, w, pid, policy, now);
                None
            } else if lost_sharing(w, policy) {
                Some((4, w.started, StopReason::Sharing))
            } else {
                match policy.age_due(w.serial, w.started) {
                    Some(at) if now >= at => Some((5, at, StopReason::Age)),
                    Some(at) => {
                        d.wake(at);
                        None
                    }
                    None => None,
                }
            };
            if let Some((rank, at, reason)) = candidate
                && due
                    .as_ref()
                    .is_none_or(|(r, a, _, _)| (rank, at) < (*r, *a))
            {
                due = Some((rank, at, w.serial, reason));
            }
        }
        if let Some((rank, _, serial, reason)) = due {
            // min-interval spaces automatic recycles only; what an operator asks for goes now.
            let not_before = state.last_recycle.map(|t| t + policy.min_interval);
            // After failed starts (a replacement that crashed, could not exec, never got
            // ready), the next replacement waits out the crash backoff like any respawn:
            // otherwise a reload onto a broken command retries as fast as it can fork.
            let resume = state
                .last_crash
                .filter(|_| state.consecutive_crashes > 0)
                .map(|t| t + policy.backoff_after(state.consecutive_crashes));
            match (not_before, resume) {
                (_, Some(at)) if now < at => d.wake(at),
                (Some(at), _) if rank >= 2 && now < at => d.wake(at),
                _ if stops_first(state, serial, &reason) => {
                    d.actions.push(Action::Stop(serial, reason));
                }
                _ => d.actions.push(Action::Replace {
                    old: serial,
                    reason,
                }),
            }
        }
    }

    let ready_after = state.ready_count()
        + d.actions
            .iter()
            .filter(|a| matches!(a, Action::MarkReady(_)))
            .count();
    if !state.ready_notified && ready_after >= wanted {
        d.actions.push(Action::NotifyReady);
    }
    d
}

/// Whether the recycle of `serial` for `reason` stops it before its replacement starts, rather
/// than after the replacement is ready: for memory pressure, when another worker serves meanwhile.
/// The pressure trigger fires when the box is already short of memory; a replacement loaded
/// beside the worker it replaces needs memory the box does not have, and loads at the pace of
/// swap (measured in a 1 GiB VM at 9 MiB available: 27 s instead of 2-3 s, every worker's
/// requests stalling up to 8 s), while the stopped worker's exit gives its memory back at once.
/// With no other worker ready, it is replaced first like any recycle: someone must serve.
fn stops_first(state: &AppState, serial: u64, reason: &StopReason) -> bool {
    *reason == StopReason::Pressure
        && state
            .workers
            .keys()
            .any(|s| *s != serial && state.is_ready(*s))
}

/// The OOM-kill counters kechid read when a worker died of SIGKILL: the figures that tell the
/// kernel's OOM killer from any other SIGKILL (an operator's `kill -9`, a stop.timeout). Each
/// counter is `None` where it could not be read (no memory controller, a kernel before 4.13, a
/// cgroup systemd already removed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OomCounters {
    /// The worker scope's own count (v2 `memory.events` / v1 `memory.oom_control` `oom_kill`);
    /// mostly gone, since systemd removes the emptied scope before kechid reaps the worker.
    pub scope: Option<u64>,
    /// The app slice's count at the previous reading, and now.
    pub slice_before: Option<u64>,
    pub slice_after: Option<u64>,
    /// The kernel's count of every OOM kill (`/proc/vmstat` `oom_kill`), before and now.
    pub global_before: Option<u64>,
    pub global_after: Option<u64>,
    /// Whether the memory controller is cgroup v1.
    pub cgroup_v1: bool,
}

/// Whether the counters show an OOM kill in the worker's scope.
///
/// A count in the scope itself, or the slice's count going up, is one (v2's `memory.events`
/// counts the kills of every cgroup below, so the slice keeps the count of a removed scope).
/// A slice that did not exist at the previous reading had no kills then. cgroup v1 does not
/// count a child's OOM kills in its parents, and the scope's counter goes with the scope: there
/// the kernel's global count going up is taken as this worker's kill (the worker died of SIGKILL
/// at that very moment). On v2 the global count is never used: an OOM kill elsewhere on the host
/// says nothing about this worker.
pub fn oom_killed(c: &OomCounters) -> bool {
    if c.scope.is_some_and(|n| n > 0)
        || c.slice_after
            .is_some_and(|a| a > c.slice_before.unwrap_or(0))
    {
        return true;
    }
    c.cgroup_v1 && matches!((c.global_before, c.global_after), (Some(b), Some(a)) if a > b)
}

/// Whether a worker's end calls for reading the OOM counters: only a SIGKILL can be the OOM
/// killer's, and a kill by kechid's own memory monitor is known to be one already. The driver
/// reads the counters only then, since reading them moves their baselines.
pub fn needs_oom_counters(exit: &Exit, monitor_killed: bool) -> bool {
    *exit
        == (Exit::Signal {
            signal: libc::SIGKILL,
        })
        && !monitor_killed
}

/// How a worker's end is reported: a SIGKILL becomes [`Exit::OomKill`] when kechid's memory
/// monitor sent it (`monitor_killed`, without systemd) or the counters show an OOM kill;
/// anything else (other signals, exit codes, an adopted worker's unknown status) stays as it was.
pub fn classify_exit(exit: Exit, monitor_killed: bool, counters: Option<&OomCounters>) -> Exit {
    let sigkill = exit
        == Exit::Signal {
            signal: libc::SIGKILL,
        };
    if sigkill && (monitor_killed || counters.is_some_and(oom_killed)) {
        Exit::OomKill
    } else {
        exit
    }
}

/// The `REASON=` of an unexpected end: `oom-kill` or `crash`.
pub fn crash_reason(exit: &Exit) -> &'static str {
    if *exit == Exit::OomKill {
        "oom-kill"
    } else {
        "crash"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_kills_over_max_once_and_only_without_the_kernel() {
        let mut m = MemSample::default();
        m.total.pss = 101;
        assert!(monitor_kill(false, Some(100), &m, false));
        assert!(!monitor_kill(false, Some(100), &m, true), "once");
        assert!(
            !monitor_kill(true, Some(100), &m, false),
            "the kernel enforces it"
        );
        assert!(!monitor_kill(false, None, &m, false), "infinity");
        m.total.pss = 100;
        assert!(
            !monitor_kill(false, Some(100), &m, false),
            "at the limit is not over it"
        );
    }

    #[test]
    fn recycle_requests_name_live_workers_outside_replacements() {
        let t = Instant::now();
        let mut s = AppState::default();
        for serial in 1..=4 {
            s.add_spawning(serial, t);
            s.apply(serial, &Event::Spawned, t, &policy()).unwrap();
            s.apply(serial, &Event::BecameReady, t, &policy()).unwrap();
        }
        s.add_spawning(5, t);
        s.begin_recycle(2, 5, StopReason::Age, t, &policy())
            .unwrap();
        s.apply(4, &Event::StopRequested(StopReason::Surplus), t, &policy())
            .unwrap();
        assert_eq!(recyclable(&s), vec![1, 3]);
        assert_eq!(recycle_request(&s, None, true), Ok(vec![1, 3]));
        assert_eq!(recycle_request(&s, Some(3), false), Ok(vec![3]));
        assert_eq!(
            recycle_request(&s, Some(2), false),
            Err(RecycleRefused::NoSuchWorker {
                worker: 2,
                running: vec![1, 3]
            })
        );
        assert_eq!(
            recycle_request(&s, Some(1), true),
            Err(RecycleRefused::Ambiguous)
        );
        assert_eq!(
            recycle_request(&s, None, false),
            Err(RecycleRefused::Ambiguous)
        );
    }

    fn policy() -> Policy {
        Policy {
            workers: 2,
            ready_mode: ReadyMode::Delay,
            ready_delay: Duration::from_secs(1),
            ready_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            burst: 3,
            window: Duration::from_secs(60),
            max_age: Duration::ZERO,
            jitter: Percent::from_whole(10),
            min_interval: Duration::from_secs(30),
            max_concurrent: 1,
            seed: 42,
            metric: Metric::Uss,
            recycle_above: None,
            app_budget: None,
            min_shared: None,
            child_signal: None,
        }
    }

    fn started(state: &mut AppState, serial: u64, t: Instant, p: &Policy) {
        state.add_spawning(serial, t);
        state.apply(serial, &Event::Spawned, t, p).unwrap();
    }

    #[test]
    fn spawns_up_to_wanted() {
        let p = policy();
        let t = Instant::now();
        let d = decide(&AppState::default(), &p, t);
        assert_eq!(d.actions, vec![Action::Spawn, Action::Spawn]);
    }

    #[test]
    fn ready_after_delay_then_notify_once() {
        let p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        started(&mut s, 1, t, &p);
        started(&mut s, 2, t, &p);
        let d = decide(&s, &p, t);
        assert!(d.actions.is_empty());
        assert_eq!(d.wake_at, Some(t + p.ready_delay));
        let t1 = t + p.ready_delay;
        let d = decide(&s, &p, t1);
        assert_eq!(
            d.actions,
            vec![
                Action::MarkReady(1),
                Action::MarkReady(2),
                Action::NotifyReady
            ]
        );
        s.apply(1, &Event::BecameReady, t1, &p).unwrap();
        s.apply(2, &Event::BecameReady, t1, &p).unwrap();
        s.ready_notified = true;
        assert!(decide(&s, &p, t1).actions.is_empty());
    }

    #[test]
    fn ready_timeout_stops_the_worker() {
        let mut p = policy();
        p.ready_mode = ReadyMode::Notify;
        let t = Instant::now();
        let mut s = AppState::default();
        started(&mut s, 1, t, &p);
        started(&mut s, 2, t, &p);
        let d = decide(&s, &p, t + p.ready_timeout);
        assert!(
            d.actions
                .contains(&Action::Stop(1, StopReason::ReadyTimeout))
        );
    }

    #[test]
    fn crash_backoff_doubles_and_caps() {
        let p = policy();
        assert_eq!(p.backoff_after(0), Duration::ZERO);
        assert_eq!(p.backoff_after(1), Duration::from_secs(1));
        assert_eq!(p.backoff_after(2), Duration::from_secs(2));
        assert_eq!(p.backoff_after(3), Duration::from_secs(4));
        assert_eq!(p.backoff_after(4), Duration::from_secs(8));
        assert_eq!(p.backoff_after(40), Duration::from_secs(8));
    }

    #[test]
    fn crash_waits_for_backoff_then_respawns() {
        let p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        started(&mut s, 1, t, &p);
        started(&mut s, 2, t, &p);
        s.apply(1, &Event::BecameReady, t, &p).unwrap();
        s.apply(1, &Event::Exited(Exit::Signal { signal: 9 }), t, &p)
            .unwrap();
        s.reap_gone();
        let d = decide(&s, &p, t);
        assert!(!d.actions.contains(&Action::Spawn));
        assert_eq!(d.wake_at, Some(t + Duration::from_millis(1000)));
        let d = decide(&s, &p, t + Duration::from_secs(1));
        assert!(d.actions.contains(&Action::Spawn));
    }

    #[test]
    fn crash_loop_past_burst_exits_non_zero() {
        let p = policy();
        let mut t = Instant::now();
        let mut s = AppState::default();
        for serial in 1..=4 {
            started(&mut s, serial, t, &p);
            s.apply(serial, &Event::Exited(Exit::Code { code: 1 }), t, &p)
                .unwrap();
            s.reap_gone();
            t += Duration::from_secs(2);
        }
        let d = decide(&s, &p, t);
        assert!(
            matches!(
                d.actions.last(),
                Some(Action::Exit {
                    code: exitcode::CRASH_LOOP,
                    ..
                })
            ),
            "{d:?}"
        );
        // ... but not when the crashes are spread beyond the window
        let d = decide(&s, &p, t + p.window + Duration::from_secs(60));
        assert!(!d.actions.iter().any(|a| matches!(a, Action::Exit { .. })));
    }

    #[test]
    fn crashes_of_ready_workers_are_not_a_loop() {
        let p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        for serial in 1..=10 {
            started(&mut s, serial, t, &p);
            s.apply(serial, &Event::BecameReady, t, &p).unwrap();
            s.apply(serial, &Event::Exited(Exit::Signal { signal: 9 }), t, &p)
                .unwrap();
        }
        s.reap_gone();
        assert!(
            !decide(&s, &p, t)
                .actions
                .iter()
                .any(|a| matches!(a, Action::Exit { .. }))
        );
    }

    #[test]
    fn stop_escalates_to_kill_after_timeout() {
        let p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        started(&mut s, 1, t, &p);
        s.apply(1, &Event::StopRequested(StopReason::Manual), t, &p)
            .unwrap();
        let d = decide(&s, &p, t + Duration::from_secs(1));
        assert!(!d.actions.contains(&Action::Kill(1)));
        assert!(
            decide(&s, &p, t + p.stop_timeout)
                .actions
                .contains(&Action::Kill(1))
        );
        s.apply(1, &Event::Killed, t + p.stop_timeout, &p).unwrap();
        assert!(
            !decide(&s, &p, t + p.stop_timeout * 2)
                .actions
                .contains(&Action::Kill(1))
        );
    }

    #[test]
    fn shutdown_stops_all_then_exits() {
        let p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        started(&mut s, 1, t, &p);
        started(&mut s, 2, t, &p);
        s.shutting_down = true;
        let d = decide(&s, &p, t);
        assert_eq!(
            d.actions,
            vec![
                Action::Stop(1, StopReason::Shutdown),
                Action::Stop(2, StopReason::Shutdown)
            ]
        );
        for serial in [1, 2] {
            s.apply(serial, &Event::StopRequested(StopReason::Shutdown), t, &p)
                .unwrap();
            s.apply(serial, &Event::Exited(Exit::Code { code: 0 }), t, &p)
                .unwrap();
        }
        let d = decide(&s, &p, t);
        assert!(matches!(
            d.actions.as_slice(),
            [Action::Exit { code: 0, .. }]
        ));
        // no crash was recorded for stopped workers
        assert_eq!(s.consecutive_crashes, 0);
    }

    #[test]
    fn surplus_stops_newest() {
        let mut p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        for serial in 1..=3 {
            started(&mut s, serial, t, &p);
        }
        p.workers = 1;
        let d = decide(&s, &p, t);
        assert!(d.actions.contains(&Action::Stop(3, StopReason::Surplus)));
        assert!(d.actions.contains(&Action::Stop(2, StopReason::Surplus)));
        assert!(!d.actions.contains(&Action::Stop(1, StopReason::Surplus)));
    }

    fn ready_set(p: &Policy, n: u64, t: Instant) -> AppState {
        let mut s = AppState::default();
        for serial in 1..=n {
            started(&mut s, serial, t, p);
            s.apply(serial, &Event::BecameReady, t, p).unwrap();
        }
        s.ready_notified = true;
        s
    }

    fn replaces(d: &Decision) -> Vec<(u64, StopReason)> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Replace { old, reason } => Some((*old, reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// The whole choreography: replacement first, old stopped only once it is ready, and the
    /// ready count never below `workers`.
    #[test]
    fn recycle_replaces_before_stopping() {
        let mut p = policy();
        p.max_age = Duration::from_secs(100);
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        let t1 = t + Duration::from_secs(101);
        let d = decide(&s, &p, t1);
        assert_eq!(replaces(&d).len(), 1, "{d:?}");
        let (old, reason) = replaces(&d)[0].clone();
        assert_eq!(reason, StopReason::Age);
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::Stop(..) | Action::Spawn))
        );
        // the driver spawns serial 3 as its replacement
        started(&mut s, 3, t1, &p);
        s.begin_recycle(old, 3, StopReason::Age, t, &policy())
            .unwrap();
        s.last_recycle = Some(t1);
        let d = decide(&s, &p, t1);
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::Stop(..) | Action::Spawn | Action::Replace { .. })),
            "{d:?}"
        );
        assert_eq!(s.ready_count(), 2);
        // ready: now the old one stops, and nothing else
        s.apply(3, &Event::BecameReady, t1, &p).unwrap();
        let d = decide(&s, &p, t1);
        assert_eq!(d.actions, vec![Action::Stop(old, StopReason::Age)]);
    }

    #[test]
    fn a_pairing_is_the_old_workers_state_and_ends_with_it() {
        let p = policy();
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        started(&mut s, 3, t, &p);
        s.begin_recycle(1, 3, StopReason::Age, t, &p).unwrap();
        assert_eq!(s.replacement_of(1), Some(3));
        assert!(
            s.begin_recycle(1, 4, StopReason::Age, t, &p).is_err(),
            "one replacement per worker"
        );
        assert!(
            s.begin_recycle(3, 4, StopReason::Age, t, &p).is_err(),
            "only a ready worker is replaced"
        );
        // The replacement does not count yet: nothing to spawn, nothing surplus.
        let d = decide(&s, &p, t);
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::Spawn | Action::Stop(..))),
            "{d:?}"
        );
        // The old worker dies mid-recycle: the pairing goes with it, and its replacement is
        // an ordinary starting worker that counts.
        s.apply(1, &Event::Exited(Exit::Signal { signal: 9 }), t, &p)
            .unwrap();
        s.reap_gone();
        assert!(s.recycles().is_empty());
        let d = decide(&s, &p, t);
        assert!(
            !d.actions.iter().any(|a| matches!(
                a,
                Action::Spawn | Action::ReplacementFailed(_) | Action::Stop(..)
            )),
            "{d:?}"
        );
    }

    #[test]
    fn failed_replacement_keeps_the_old_worker() {
        let mut p = policy();
        p.ready_mode = ReadyMode::Notify;
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        s.requested.insert(1);
        assert_eq!(replaces(&decide(&s, &p, t)), vec![(1, StopReason::Manual)]);
        started(&mut s, 3, t, &p);
        s.begin_recycle(1, 3, StopReason::Manual, t, &policy())
            .unwrap();
        let late = t + p.ready_timeout;
        let d = decide(&s, &p, late);
        assert!(
            d.actions
                .contains(&Action::Stop(3, StopReason::ReadyTimeout)),
            "{d:?}"
        );
        assert!(!d.actions.contains(&Action::Stop(1, StopReason::Manual)));
        s.apply(3, &Event::StopRequested(StopReason::ReadyTimeout), late, &p)
            .unwrap();
        let d = decide(&s, &p, late);
        assert!(d.actions.contains(&Action::ReplacementFailed(1)), "{d:?}");
        assert!(!d.actions.iter().any(|a| matches!(a, Action::Stop(1, _))));
        // a failing replacement is no crash loop while the app serves
        for _ in 0..10 {
            s.loop_crashes.push(late);
        }
        assert!(
            !decide(&s, &p, late)
                .actions
                .iter()
                .any(|a| matches!(a, Action::Exit { .. }))
        );
    }

    #[test]
    fn reload_rolls_one_at_a_time_without_min_interval() {
        let p = policy();
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        s.generation += 1;
        s.last_recycle = Some(t);
        let d = decide(&s, &p, t);
        assert_eq!(replaces(&d), vec![(1, StopReason::Reload)]);
        started(&mut s, 3, t, &p);
        s.begin_recycle(1, 3, StopReason::Reload, t, &policy())
            .unwrap();
        // one in flight: no second one (max-concurrent = 1)
        assert!(replaces(&decide(&s, &p, t)).is_empty());
    }

    /// A reload of three workers with `max-concurrent = 2`, driven as the driver does: a second
    /// replacement starts while the first is in flight, never a third; the ready count never
    /// drops below `workers`; every old worker is replaced in the end.
    #[test]
    fn reload_rolls_two_at_a_time_with_max_concurrent_2() {
        let mut p = policy();
        p.workers = 3;
        p.max_concurrent = 2;
        p.ready_mode = ReadyMode::Notify;
        let t = Instant::now();
        let mut s = ready_set(&p, 3, t);
        s.generation += 1;
        let mut next_serial = 4;
        let mut most_in_flight = 0;
        for step in 0..50 {
            let d = decide(&s, &p, t);
            assert!(
                replaces(&d).len() <= 1,
                "one new replacement per decision: {d:?}"
            );
            for a in &d.actions {
                match a {
                    Action::Replace { old, reason } => {
                        started(&mut s, next_serial, t, &p);
                        s.begin_recycle(*old, next_serial, reason.clone(), t, &policy())
                            .unwrap();
                        next_serial += 1;
                    }
                    Action::Stop(old, reason) => {
                        assert_eq!(*reason, StopReason::Reload);
                        assert_eq!(s.replacement_of(*old).map(|_| ()), Some(()));
                        s.apply(*old, &Event::StopRequested(reason.clone()), t, &p)
                            .unwrap();
                    }
                    other => panic!("step {step}: unexpected {other:?}"),
                }
            }
            most_in_flight = most_in_flight.max(s.recycles().len());
            assert!(s.recycles().len() <= 2, "step {step}: {:?}", s.recycles());
            assert!(s.ready_count() >= 3, "step {step}: {s:?}");
            if d.actions.is_empty() {
                // nothing to do until something happens: the old stopped workers exit, then
                // the oldest replacement in flight gets ready
                let draining: Vec<u64> = s
                    .workers
                    .values()
                    .filter(|w| matches!(w.state, WorkerState::Draining { .. }))
                    .map(|w| w.serial)
                    .collect();
                for serial in draining {
                    s.apply(serial, &Event::Exited(Exit::Code { code: 0 }), t, &p)
                        .unwrap();
                }
                s.reap_gone();
                let Some(new) = s.recycles().first().map(|r| r.new) else {
                    break;
                };
                s.apply(new, &Event::BecameReady, t, &p).unwrap();
                assert!(s.ready_count() >= 3, "step {step}: {s:?}");
            }
        }
        assert_eq!(most_in_flight, 2, "two replacements were in flight at once");
        assert!(s.recycles().is_empty());
        let serials: Vec<u64> = s.live().map(|w| w.serial).collect();
        assert_eq!(serials, vec![4, 5, 6]);
        assert!(s.live().all(|w| w.generation == s.generation));
    }

    #[test]
    fn failed_replacements_are_retried_after_the_crash_backoff() {
        let p = policy();
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        s.generation += 1;
        // the reload's first replacement fails to start
        s.add_spawning(3, t);
        s.apply(3, &Event::SpawnFailed("exec".into()), t, &p)
            .unwrap();
        s.reap_gone();
        let d = decide(&s, &p, t + Duration::from_millis(100));
        assert!(replaces(&d).is_empty(), "{d:?}");
        assert_eq!(d.wake_at, Some(t + p.backoff));
        assert_eq!(
            replaces(&decide(&s, &p, t + p.backoff)),
            vec![(1, StopReason::Reload)]
        );
        // a second failure doubles the wait; the old workers serve on meanwhile
        let t2 = t + p.backoff;
        s.add_spawning(4, t2);
        s.apply(4, &Event::SpawnFailed("exec".into()), t2, &p)
            .unwrap();
        s.reap_gone();
        let d = decide(&s, &p, t2 + p.backoff);
        assert!(replaces(&d).is_empty(), "{d:?}");
        assert!(!d.actions.iter().any(|a| matches!(a, Action::Exit { .. })));
        assert_eq!(d.wake_at, Some(t2 + p.backoff * 2));
    }

    #[test]
    fn a_failed_replacement_unpaired_from_its_old_worker_keeps_the_backoff() {
        // The driver's round: Replace -> begin_recycle (old paired, Ready -> Ready), the new
        // worker fails to start, ReplacementFailed unpairs the old one (Ready -> Ready again).
        // Neither Ready-to-Ready edge may end the run of failed starts.
        let p = policy();
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        s.generation += 1;
        for (attempt, new) in [(1u32, 3u64), (2, 4), (3, 5)] {
            let at = t + Duration::from_secs(3600) * attempt;
            let d = decide(&s, &p, at);
            let (old, reason) = replaces(&d)[0].clone();
            s.add_spawning(new, at);
            s.begin_recycle(old, new, reason, at, &p).unwrap();
            s.apply(new, &Event::SpawnFailed("exec".into()), at, &p)
                .unwrap();
            s.reap_gone();
            let d = decide(&s, &p, at);
            assert!(d.actions.contains(&Action::ReplacementFailed(old)), "{d:?}");
            s.apply(old, &Event::ReplacementFailed, at, &p).unwrap();
            assert_eq!(s.consecutive_crashes, attempt);
            let d = decide(&s, &p, at + Duration::from_millis(1));
            assert!(replaces(&d).is_empty(), "attempt {attempt}: {d:?}");
            assert_eq!(d.wake_at, Some(at + p.backoff_after(attempt)));
        }
    }

    #[test]
    fn a_manual_recycle_whose_replacement_failed_is_asked_again_after_the_backoff() {
        // `kechictl recycle --wait` waits for the worker to go: a replacement that never got
        // ready must not quietly end the operator's request.
        let p = policy();
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        s.requested.insert(2);
        let d = decide(&s, &p, t);
        assert_eq!(replaces(&d), vec![(2, StopReason::Manual)]);
        s.requested.remove(&2); // as the driver does when it starts the replacement
        s.add_spawning(3, t);
        s.begin_recycle(2, 3, StopReason::Manual, t, &p).unwrap();
        s.apply(3, &Event::SpawnFailed("exec".into()), t, &p)
            .unwrap();
        s.reap_gone();
        let d = decide(&s, &p, t);
        assert!(d.actions.contains(&Action::ReplacementFailed(2)), "{d:?}");
        s.apply(2, &Event::ReplacementFailed, t, &p).unwrap();
        assert!(s.requested.contains(&2), "the request stands");
        let d = decide(&s, &p, t + Duration::from_millis(1));
        assert!(replaces(&d).is_empty(), "{d:?}");
        let again = t + p.backoff_after(1);
        assert_eq!(d.wake_at, Some(again));
        assert_eq!(
            replaces(&decide(&s, &p, again)),
            vec![(2, StopReason::Manual)]
        );
    }

    #[test]
    fn a_failed_replacement_for_another_reason_is_not_turned_into_a_request() {
        let p = policy();
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        s.generation += 1;
        s.add_spawning(3, t);
        s.begin_recycle(1, 3, StopReason::Reload, t, &p).unwrap();
        s.apply(3, &Event::SpawnFailed("exec".into()), t, &p)
            .unwrap();
        s.reap_gone();
        s.apply(1, &Event::ReplacementFailed, t, &p).unwrap();
        assert!(s.requested.is_empty());
    }

    #[test]
    fn the_box_wide_pick_is_recycled_with_its_reason_after_min_interval() {
        let p = policy();
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        s.box_pick = Some((2, StopReason::BoxBudget));
        assert_eq!(
            replaces(&decide(&s, &p, t)),
            vec![(2, StopReason::BoxBudget)]
        );
        s.last_recycle = Some(t);
        let d = decide(&s, &p, t + Duration::from_secs(1));
        assert!(replaces(&d).is_empty(), "automatic: min-interval applies");
        s.box_pick = Some((1, StopReason::Pressure));
        let d = decide(&s, &p, t + p.min_interval);
        assert!(
            replaces(&d).is_empty(),
            "pressure with another worker ready: stop first"
        );
        assert_eq!(d.actions, vec![Action::Stop(1, StopReason::Pressure)]);
    }

    #[test]
    fn pressure_stops_first_while_another_serves_and_replaces_first_a_lone_worker() {
        let p = policy();
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        s.box_pick = Some((2, StopReason::Pressure));
        assert_eq!(
            decide(&s, &p, t).actions,
            vec![Action::Stop(2, StopReason::Pressure)]
        );
        // once it drains it no longer counts: the replacement starts in the next round
        s.apply(2, &Event::StopRequested(StopReason::Pressure), t, &p)
            .unwrap();
        assert_eq!(decide(&s, &p, t).actions, vec![Action::Spawn]);

        let mut p1 = policy();
        p1.workers = 1;
        let mut s = ready_set(&p1, 1, t);
        s.box_pick = Some((1, StopReason::Pressure));
        assert_eq!(
            replaces(&decide(&s, &p1, t)),
            vec![(1, StopReason::Pressure)],
            "the only worker serves until its replacement is ready"
        );
        // a box budget pick is no emergency: replaced first even with another worker ready
        let mut s = ready_set(&p, 2, t);
        s.box_pick = Some((2, StopReason::BoxBudget));
        assert_eq!(
            replaces(&decide(&s, &p, t)),
            vec![(2, StopReason::BoxBudget)]
        );
    }

    #[test]
    fn manual_goes_before_reload_and_age() {
        let mut p = policy();
        p.max_age = Duration::from_secs(1);
        p.workers = 3;
        let t = Instant::now();
        let mut s = ready_set(&p, 3, t);
        s.generation += 1;
        s.requested.insert(3);
        assert_eq!(
            replaces(&decide(&s, &p, t + Duration::from_secs(5))),
            vec![(3, StopReason::Manual)]
        );
    }

    #[test]
    fn min_interval_spaces_age_recycles() {
        let mut p = policy();
        p.max_age = Duration::from_secs(100);
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        let t1 = t + Duration::from_secs(200);
        s.last_recycle = Some(t1 - Duration::from_secs(10));
        let d = decide(&s, &p, t1);
        assert!(replaces(&d).is_empty());
        assert_eq!(d.wake_at, Some(t1 + Duration::from_secs(20)));
    }

    #[test]
    fn age_jitter_spreads_workers_within_the_bound() {
        let mut p = policy();
        p.max_age = Duration::from_secs(3600);
        let t = Instant::now();
        let dues: Vec<Instant> = (1..=20).map(|s| p.age_due(s, t).unwrap()).collect();
        for d in &dues {
            let age = d.duration_since(t);
            assert!(age <= p.max_age && age >= p.max_age.mul_f64(0.9), "{age:?}");
        }
        let mut distinct = dues.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), dues.len());
        p.max_age = Duration::ZERO;
        assert_eq!(p.age_due(1, t), None);
    }

    #[test]
    fn adopted_draining_workers_do_not_count_and_get_killed_in_time() {
        let p = policy();
        let t = Instant::now();
        let mut s = AppState::default();
        s.adopt(1, t, None, t);
        s.adopt(2, t, Some(StopReason::Age), t);
        s.ready_notified = true;
        let d = decide(&s, &p, t);
        assert_eq!(
            d.actions,
            vec![Action::Spawn],
            "the draining one is no capacity"
        );
        assert!(
            decide(&s, &p, t + p.stop_timeout)
                .actions
                .contains(&Action::Kill(2))
        );
        assert_eq!(StopReason::parse("age"), Some(StopReason::Age));
        assert_eq!(StopReason::parse("nope"), None);
    }

    fn mem(uss: u64, rss: u64, shared: u64, processes: usize) -> MemSample {
        MemSample {
            total: ProcMem {
                rss,
                pss: uss + shared / 2,
                uss,
                shared,
                swap: 0,
                swap_pss: 0,
            },
            cgroup: Some(uss + shared),
            processes,
            largest_child: None,
            least_shared_child: None,
            detailed: true,
        }
    }

    #[test]
    fn recycle_above_by_metric() {
        let mut p = policy();
        p.recycle_above = Some(300);
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        s.workers.get_mut(&1).unwrap().mem = Some(mem(200, 1000, 800, 1));
        s.workers.get_mut(&2).unwrap().mem = Some(mem(400, 500, 100, 1));
        // USS: only worker 2 is over, though worker 1's RSS is far larger
        assert_eq!(replaces(&decide(&s, &p, t)), vec![(2, StopReason::Memory)]);
        p.metric = Metric::Rss;
        let got = replaces(&decide(&s, &p, t));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, StopReason::Memory);
        // and min-interval spaces memory recycles too
        s.last_recycle = Some(t);
        assert!(replaces(&decide(&s, &p, t)).is_empty());
    }

    #[test]
    fn app_budget_recycles_the_largest_first() {
        let mut p = policy();
        p.workers = 3;
        p.app_budget = Some(1000);
        let t = Instant::now();
        let later = t + Duration::from_millis(1);
        let mut s = ready_set(&p, 3, t);
        for (serial, uss) in [(1, 300), (2, 500), (3, 300)] {
            s.workers
                .get_mut(&serial)
                .unwrap()
                .record_mem(mem(uss, uss, 0, 1), later);
        }
        assert_eq!(
            replaces(&decide(&s, &p, later)),
            vec![(2, StopReason::Budget)]
        );
        s.workers
            .get_mut(&2)
            .unwrap()
            .record_mem(mem(300, 300, 0, 1), later);
        assert!(
            replaces(&decide(&s, &p, later)).is_empty(),
            "900 is within the budget"
        );
    }

    #[test]
    fn app_budget_compares_only_figures_taken_since_ready() {
        let mut p = policy();
        p.workers = 3;
        p.app_budget = Some(100);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = AppState::default();
        // workers 1 and 2 ready and sampled: 40 and 80
        for (serial, uss) in [(1, 40), (2, 80)] {
            started(&mut s, serial, t0, &p);
            s.apply(serial, &Event::BecameReady, ms(1), &p).unwrap();
            s.workers
                .get_mut(&serial)
                .unwrap()
                .record_mem(mem(uss, uss, 0, 1), ms(2));
        }
        // worker 3 sampled while still loading (64 of its 120), then READY=1 a moment later
        started(&mut s, 3, t0, &p);
        s.workers
            .get_mut(&3)
            .unwrap()
            .record_mem(mem(64, 64, 0, 1), ms(3));
        s.apply(3, &Event::BecameReady, ms(4), &p).unwrap();
        s.ready_notified = true;
        assert_eq!(
            s.workers[&3].fresh_metric(Metric::Uss),
            None,
            "a sample from before READY=1 is stale"
        );
        // 40 + 80 + 64 is over 100, and worker 2 would look the largest: nothing is chosen
        assert!(replaces(&decide(&s, &p, ms(5))).is_empty());
        // once sampled after its readiness, worker 3 is known to be the largest
        s.workers
            .get_mut(&3)
            .unwrap()
            .record_mem(mem(120, 120, 0, 1), ms(5));
        assert_eq!(s.workers[&3].fresh_metric(Metric::Uss), Some(120));
        assert_eq!(
            replaces(&decide(&s, &p, ms(6))),
            vec![(3, StopReason::Budget)]
        );
        // a worker without any figure (not sampled yet) also holds the choice back
        s.workers.get_mut(&1).unwrap().mem_at = None;
        assert!(replaces(&decide(&s, &p, ms(7))).is_empty());
    }

    #[test]
    fn min_shared_only_for_prefork_workers() {
        let mut p = policy();
        p.min_shared = Some(0.5);
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        s.workers.get_mut(&1).unwrap().mem = Some(mem(700, 1000, 300, 5)); // 30% shared, prefork
        s.workers.get_mut(&2).unwrap().mem = Some(mem(900, 1000, 100, 1)); // single process
        assert_eq!(replaces(&decide(&s, &p, t)), vec![(1, StopReason::Sharing)]);
        s.workers.get_mut(&1).unwrap().mem = Some(mem(300, 1000, 700, 5));
        assert!(replaces(&decide(&s, &p, t)).is_empty());
    }

    #[test]
    fn child_signal_instead_of_recycling() {
        let mut p = policy();
        p.recycle_above = Some(300);
        p.child_signal = Some(libc::SIGTERM);
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        let mut m = mem(400, 500, 100, 3);
        m.largest_child = Some((
            4242,
            ProcMem {
                uss: 250,
                ..Default::default()
            },
        ));
        s.workers.get_mut(&1).unwrap().mem = Some(m);
        let d = decide(&s, &p, t);
        assert!(replaces(&d).is_empty(), "{d:?}");
        assert!(d.actions.contains(&Action::SignalChild {
            serial: 1,
            pid: 4242,
            signal: libc::SIGTERM
        }));
        // not again within min-interval
        s.workers.get_mut(&1).unwrap().child_signaled = Some(t);
        let d = decide(&s, &p, t + Duration::from_secs(1));
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::SignalChild { .. }))
        );
        assert_eq!(d.wake_at, Some(t + p.min_interval));
    }

    /// `min-shared` with `child-signal`: the least-shared child is signalled, the worker stays.
    #[test]
    fn min_shared_with_child_signal_signals_the_least_shared_child() {
        let mut p = policy();
        p.min_shared = Some(0.5);
        p.child_signal = Some(libc::SIGTERM);
        let t = Instant::now();
        let mut s = ready_set(&p, 2, t);
        // 40% of RSS shared, below min-shared
        let mut m = mem(300, 500, 200, 3);
        m.least_shared_child = Some((777, ProcMem::default()));
        s.workers.get_mut(&1).unwrap().mem = Some(m.clone());
        let d = decide(&s, &p, t);
        assert!(replaces(&d).is_empty(), "{d:?}");
        assert!(d.actions.contains(&Action::SignalChild {
            serial: 1,
            pid: 777,
            signal: libc::SIGTERM
        }));
        // without child-signal the whole worker is recycled, as before
        p.child_signal = None;
        assert_eq!(replaces(&decide(&s, &p, t)), vec![(1, StopReason::Sharing)]);
    }

    const SIGKILL: Exit = Exit::Signal {
        signal: libc::SIGKILL,
    };

    /// v2, as seen after a worker hit memory.max: its scope is gone, the slice counted the kill.
    fn v2_counters(slice_before: u64, slice_after: u64) -> OomCounters {
        OomCounters {
            scope: None,
            slice_before: Some(slice_before),
            slice_after: Some(slice_after),
            global_before: Some(7),
            global_after: Some(7 + slice_after - slice_before),
            cgroup_v1: false,
        }
    }

    #[test]
    fn v2_oom_kill_counted_by_the_slice() {
        let c = v2_counters(2, 3);
        assert!(oom_killed(&c));
        let exit = classify_exit(SIGKILL, false, Some(&c));
        assert_eq!(exit, Exit::OomKill);
        assert_eq!(crash_reason(&exit), "oom-kill");
        // the slice did not exist at the previous reading: no kills then
        let first = OomCounters {
            slice_before: None,
            ..v2_counters(0, 1)
        };
        assert!(oom_killed(&first));
        // the scope was still there to read
        let scope = OomCounters {
            scope: Some(1),
            ..v2_counters(3, 3)
        };
        assert!(oom_killed(&scope));
    }

    #[test]
    fn v2_sigkill_without_a_count_is_a_crash() {
        // an operator's kill -9 while another cgroup of the host was OOM-killed: on v2 the
        // kernel's global count says nothing about this worker
        let c = OomCounters {
            global_after: Some(9),
            ..v2_counters(3, 3)
        };
        assert!(!oom_killed(&c));
        let exit = classify_exit(SIGKILL, false, Some(&c));
        assert_eq!(exit, SIGKILL);
        assert_eq!(crash_reason(&exit), "crash");
        // a scope counter read as 0 is no kill either
        let zero = OomCounters {
            scope: Some(0),
            ..v2_counters(3, 3)
        };
        assert!(!oom_killed(&zero));
    }

    #[test]
    fn v1_falls_back_to_the_kernels_count() {
        // v1: the slice does not count its scopes' kills and the scope is gone
        let c = OomCounters {
            scope: None,
            slice_before: Some(0),
            slice_after: Some(0),
            global_before: Some(4),
            global_after: Some(5),
            cgroup_v1: true,
        };
        assert_eq!(classify_exit(SIGKILL, false, Some(&c)), Exit::OomKill);
        let quiet = OomCounters {
            global_after: Some(4),
            ..c
        };
        assert_eq!(classify_exit(SIGKILL, false, Some(&quiet)), SIGKILL);
        // the scope's own memory.oom_control, when it could still be read
        let scope = OomCounters {
            scope: Some(1),
            ..quiet
        };
        assert_eq!(classify_exit(SIGKILL, false, Some(&scope)), Exit::OomKill);
        // unreadable counters (no oom_kill line before 4.13, no /proc/vmstat) prove nothing
        let unknown = OomCounters {
            cgroup_v1: true,
            ..OomCounters::default()
        };
        assert_eq!(classify_exit(SIGKILL, false, Some(&unknown)), SIGKILL);
    }

    #[test]
    fn only_a_sigkill_is_an_oom_kill() {
        let c = v2_counters(0, 1);
        for exit in [
            Exit::Signal {
                signal: libc::SIGTERM,
            },
            Exit::Code { code: 137 },
            Exit::Unknown,
        ] {
            assert!(!needs_oom_counters(&exit, false), "{exit:?}");
            assert_eq!(classify_exit(exit.clone(), true, Some(&c)), exit);
            assert_eq!(crash_reason(&exit), "crash");
        }
        assert!(needs_oom_counters(&SIGKILL, false));
    }

    #[test]
    fn kechids_own_monitor_kill_needs_no_counters() {
        // without systemd there is no memory.max: kechid's monitor sent the SIGKILL itself
        assert!(!needs_oom_counters(&SIGKILL, true));
        assert_eq!(classify_exit(SIGKILL, true, None), Exit::OomKill);
        // no memory controller: nothing to read, a plain SIGKILL
        assert_eq!(classify_exit(SIGKILL, false, None), SIGKILL);
    }
}

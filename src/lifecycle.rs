//! The life of one worker as an explicit state machine.
//!
//! ```text
//!                                        replacement started
//!                                          ┌───────────┐
//!                                          │           ▼
//! Spawning ──spawned──► Starting ──ready──► Ready ◄── Ready{replaced_by}
//!    │   │                 │                  │     replacement failed │
//!    │   │ stop            │ stop / exit      │ stop / exit            │ stop / exit
//!    │   └──────────────── ▼ ──────────────── ▼ ◄──────────────────────┘
//!    │ spawn failed     Draining ──exit──► Gone
//!    └─────────────────────────────────────► Gone
//! ```
//! Spawning lasts while the worker's scope is being created, which can take a while when
//! systemd is slow; a stop meanwhile lets the held child go without it ever running.
//! A worker that exits from Starting or Ready crashed; one that exits from Draining was
//! stopped. A recycle pairs a ready worker with its replacement (`Ready { replaced_by }`,
//! entered by `ReplacementStarted`, left by `ReplacementFailed` or by the old worker's stop
//! or exit): the pairing is part of the old worker's state, so it ends with it. Crash backoff
//! is not a worker state but an app-level delay before the next spawn (see
//! [`crate::policy`]). [`next`] is the whole transition table; anything else is refused.

use std::time::Instant;

/// Why kechi stops a worker on purpose.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// kechid is stopping (`systemctl stop`).
    Shutdown,
    /// More workers run than are wanted (a reload lowered `workers`).
    Surplus,
    /// Not ready within `ready.timeout`.
    ReadyTimeout,
    /// A newer config generation replaces it (`systemctl reload`).
    Reload,
    /// `recycle.max-age` reached.
    Age,
    /// `kechictl recycle`.
    Manual,
    /// Its memory passed `memory.recycle-above`.
    Memory,
    /// The app's total passed `memory.app-budget` and it was the largest.
    Budget,
    /// Its shared part of RSS fell below `memory.min-shared`.
    Sharing,
    /// The app went unvisited for `idle.stop-after`: every worker stops, then kechid.
    Idle,
    /// All apps' workers together passed the box's `[box] budget` and it was the largest.
    BoxBudget,
    /// The box's memory pressure trigger fired and it was the largest worker of the box.
    Pressure,
}

impl StopReason {
    /// Every reason.
    pub const ALL: [StopReason; 12] = [
        StopReason::Shutdown,
        StopReason::Surplus,
        StopReason::ReadyTimeout,
        StopReason::Reload,
        StopReason::Age,
        StopReason::Manual,
        StopReason::Memory,
        StopReason::Budget,
        StopReason::Sharing,
        StopReason::Idle,
        StopReason::BoxBudget,
        StopReason::Pressure,
    ];

    pub fn parse(s: &str) -> Option<StopReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::Shutdown => "shutdown",
            StopReason::Surplus => "surplus",
            StopReason::ReadyTimeout => "ready-timeout",
            StopReason::Reload => "reload",
            StopReason::Age => "age",
            StopReason::Manual => "manual",
            StopReason::Memory => "memory",
            StopReason::Budget => "app-budget",
            StopReason::Sharing => "min-shared",
            StopReason::Idle => "idle",
            StopReason::BoxBudget => "box-budget",
            StopReason::Pressure => "pressure",
        }
    }
}

/// How a worker's main process ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Exit {
    Code {
        code: i32,
    },
    Signal {
        signal: i32,
    },
    /// Killed by the kernel for exceeding its scope's memory.max.
    OomKill,
    /// Not our child (adopted): the status is not ours to read.
    Unknown,
    /// It never ran: the scope or the exec failed.
    SpawnFailed {
        error: String,
    },
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code { code } => write!(f, "exit code {code}"),
            Exit::Signal { signal } => match nix::sys::signal::Signal::try_from(*signal) {
                Ok(s) => write!(f, "signal {}", s.as_str()),
                Err(_) => write!(f, "signal {signal}"),
            },
            Exit::OomKill => f.write_str("oom-kill"),
            Exit::Unknown => f.write_str("exited"),
            Exit::SpawnFailed { error } => write!(f, "failed to start: {error}"),
        }
    }
}

/// The pairing of a recycle, held by the worker being replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The serial of the new worker.
    pub by: u64,
    /// Why the old one goes.
    pub reason: StopReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Forked and held; its scope is being created.
    Spawning { since: Instant },
    /// Running the app, not yet ready.
    Starting { since: Instant },
    /// Serving. `replaced_by`: a replacement is starting for it (a recycle); it stops once
    /// that one is ready, and keeps serving if that one fails.
    Ready {
        since: Instant,
        replaced_by: Option<Replacement>,
    },
    /// Asked to stop; `killed` once stop.timeout passed and SIGKILL was sent.
    Draining {
        since: Instant,
        reason: StopReason,
        killed: bool,
    },
    /// Ended. `crashed` if it ended without being asked to; `was_ready` if it ever got ready.
    Gone {
        at: Instant,
        exit: Exit,
        crashed: bool,
        was_ready: bool,
    },
}

impl WorkerState {
    pub fn name(&self) -> &'static str {
        match self {
            WorkerState::Spawning { .. } => "spawning",
            WorkerState::Starting { .. } => "starting",
            WorkerState::Ready { .. } => "ready",
            WorkerState::Draining { .. } => "draining",
            WorkerState::Gone { .. } => "gone",
        }
    }

    /// Counts toward the wanted number of workers.
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            WorkerState::Spawning { .. } | WorkerState::Starting { .. } | WorkerState::Ready { .. }
        )
    }
}

/// What happened to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// In its scope and exec'd.
    Spawned,
    SpawnFailed(String),
    BecameReady,
    StopRequested(StopReason),
    /// SIGKILL sent after stop.timeout.
    Killed,
    Exited(Exit),
    /// A replacement for this (ready) worker was started.
    ReplacementStarted(Replacement),
    /// Its replacement failed (crashed, never got ready, could not start): it keeps serving.
    ReplacementFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal worker transition: {from} on {event:?}")]
pub struct IllegalTransition {
    pub from: &'static str,
    pub event: Event,
}

/// The transition table.
pub fn next(
    state: &WorkerState,
    event: &Event,
    now: Instant,
    was_ready: bool,
) -> Result<WorkerState, IllegalTransition> {
    use Event as E;
    use WorkerState as S;
    let gone = |exit: Exit, crashed: bool| S::Gone {
        at: now,
        exit,
        crashed,
        was_ready,
    };
    Ok(match (state, event) {
        (S::Spawning { .. }, E::Spawned) => S::Starting { since: now },
        (S::Spawning { .. }, E::SpawnFailed(e)) => {
            gone(Exit::SpawnFailed { error: e.clone() }, true)
        }
        (S::Starting { .. }, E::BecameReady) => S::Ready {
            since: now,
            replaced_by: None,
        },
        (
            S::Ready {
                since,
                replaced_by: None,
            },
            E::ReplacementStarted(r),
        ) => S::Ready {
            since: *since,
            replaced_by: Some(r.clone()),
        },
        (
            S::Ready {
                since,
                replaced_by: Some(_),
            },
            E::ReplacementFailed,
        ) => S::Ready {
            since: *since,
            replaced_by: None,
        },
        // A worker still held while its scope is being created drains too: it is let go
        // of without ever running (or stopped as soon as it runs).
        (S::Spawning { .. } | S::Starting { .. } | S::Ready { .. }, E::StopRequested(r)) => {
            S::Draining {
                since: now,
                reason: r.clone(),
                killed: false,
            }
        }
        (S::Starting { .. } | S::Ready { .. }, E::Exited(x)) => gone(x.clone(), true),
        (S::Draining { since, reason, .. }, E::Killed) => S::Draining {
            since: *since,
            reason: reason.clone(),
            killed: true,
        },
        (S::Draining { .. }, E::Exited(x)) => gone(x.clone(), false),
        // A second stop request for a draining worker changes nothing (e.g. shutdown during a recycle).
        (S::Draining { .. }, E::StopRequested(_)) => state.clone(),
        _ => {
            return Err(IllegalTransition {
                from: state.name(),
                event: event.clone(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_states(t: Instant) -> Vec<WorkerState> {
        vec![
            WorkerState::Spawning { since: t },
            WorkerState::Starting { since: t },
            WorkerState::Ready {
                since: t,
                replaced_by: None,
            },
            WorkerState::Ready {
                since: t,
                replaced_by: Some(Replacement {
                    by: 9,
                    reason: StopReason::Age,
                }),
            },
            WorkerState::Draining {
                since: t,
                reason: StopReason::Manual,
                killed: false,
            },
            WorkerState::Gone {
                at: t,
                exit: Exit::Unknown,
                crashed: false,
                was_ready: false,
            },
        ]
    }

    fn all_events() -> Vec<Event> {
        vec![
            Event::Spawned,
            Event::SpawnFailed("x".into()),
            Event::BecameReady,
            Event::StopRequested(StopReason::Age),
            Event::Killed,
            Event::Exited(Exit::Code { code: 1 }),
            Event::ReplacementStarted(Replacement {
                by: 7,
                reason: StopReason::Manual,
            }),
            Event::ReplacementFailed,
        ]
    }

    /// A state's name in the table: "replaced" is a ready worker with a replacement starting.
    fn label(s: &WorkerState) -> &'static str {
        match s {
            WorkerState::Ready {
                replaced_by: Some(_),
                ..
            } => "replaced",
            other => other.name(),
        }
    }

    /// Every (state, event) pair: exactly the legal edges succeed, with the expected target.
    #[test]
    fn transition_table() {
        let t = Instant::now();
        let legal: &[(&str, usize, &str)] = &[
            ("spawning", 0, "starting"),
            ("spawning", 1, "gone"),
            ("spawning", 3, "draining"),
            ("starting", 2, "ready"),
            ("starting", 3, "draining"),
            ("starting", 5, "gone"),
            ("ready", 3, "draining"),
            ("ready", 5, "gone"),
            ("ready", 6, "replaced"),
            ("replaced", 3, "draining"),
            ("replaced", 5, "gone"),
            ("replaced", 7, "ready"),
            ("draining", 3, "draining"),
            ("draining", 4, "draining"),
            ("draining", 5, "gone"),
        ];
        for s in all_states(t) {
            for (i, e) in all_events().iter().enumerate() {
                let want = legal
                    .iter()
                    .find(|(from, ev, _)| *from == label(&s) && *ev == i)
                    .map(|l| l.2);
                match (next(&s, e, t, false), want) {
                    (Ok(n), Some(to)) => assert_eq!(label(&n), to, "{} on {e:?}", label(&s)),
                    (Err(_), None) => {}
                    (got, want) => panic!("{} on {e:?}: got {got:?}, want {want:?}", label(&s)),
                }
            }
        }
    }

    #[test]
    fn crash_versus_stop() {
        let t = Instant::now();
        let exit = Event::Exited(Exit::Signal { signal: 9 });
        let ready = WorkerState::Ready {
            since: t,
            replaced_by: None,
        };
        let crashed = next(&ready, &exit, t, true).unwrap();
        assert!(matches!(
            crashed,
            WorkerState::Gone {
                crashed: true,
                was_ready: true,
                ..
            }
        ));
        let d = WorkerState::Draining {
            since: t,
            reason: StopReason::Shutdown,
            killed: false,
        };
        assert!(matches!(
            next(&d, &exit, t, true).unwrap(),
            WorkerState::Gone { crashed: false, .. }
        ));
        let k = next(&d, &Event::Killed, t, true).unwrap();
        assert!(matches!(
            k,
            WorkerState::Draining {
                killed: true,
                reason: StopReason::Shutdown,
                ..
            }
        ));
    }
}

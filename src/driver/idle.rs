//! Scale to zero, the driver's side: gathers the facts [`crate::idle`] decides on, stops the
//! app when it is due, and remembers the stop for the next start (cold-start figures).
//!
//! Facts, each cheap and none blocking the loop:
//! - *arrivals*: a task per socket-activated listener waits, edge-triggered, for it to become
//!   readable (a connection arrived) on a duplicate of its fd; it notes the arrival and then
//!   sleeps one look interval before it waits again, so a busy app costs kechid at most one
//!   wake-up per interval, and a connection that comes and goes between two looks is seen;
//! - *waiting*: a zero-timeout poll of each listener (its accept queue is not empty);
//! - *open*: a worker process holds a connection accepted from a listener
//!   ([`crate::accept::serving_on`]: a long request, a websocket, a kept-alive connection).
//!
//! An idle stop is a shutdown with reason `idle`: every worker stops gracefully, kechid exits 0,
//! the unit is inactive, and the socket unit, which keeps listening, starts it again at the
//! next connection. A small file in the app's runtime folder (`idle-stop`) tells the next
//! kechid that its start was a cold start after an idle stop, and counts the stops.

use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use super::Driver;
use crate::control::StartInfo;
use crate::idle::{IdleClock, Reach};
use crate::lifecycle::StopReason;
use crate::systemd::Systemd;

/// The idle state of one kechid.
pub(super) struct IdleWatch {
    pub(super) clock: IdleClock,
    /// Whether a connection arrived since the last look (set by the listener tasks).
    arrived: Rc<Cell<bool>>,
    /// The listener tasks run (started once, when idle stop is first on).
    watching: bool,
    /// When this kechid started, for the time to its first ready worker.
    started: Instant,
    pub(super) start: StartInfo,
    /// This kechid is stopping the app for idleness, idle this long.
    pub(super) stopping_after: Option<Duration>,
}

impl IdleWatch {
    pub(super) fn new(stop_after: Duration, started: Instant) -> IdleWatch {
        IdleWatch {
            clock: IdleClock::new(stop_after, started),
            arrived: Rc::new(Cell::new(false)),
            watching: false,
            started,
            start: StartInfo::default(),
            stopping_after: None,
        }
    }
}

/// `idle-stop` in the app's runtime folder: `stops N` (idle stops so far, since boot: the
/// folder is on /run) and, until the next kechid has read it, `pending IDLE_SECS`.
fn parse_marker(text: &str) -> (u64, Option<u64>) {
    let mut stops = 0;
    let mut pending = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("stops", n)) => stops = n.trim().parse().unwrap_or(0),
            Some(("pending", s)) => pending = s.trim().parse().ok(),
            _ => {}
        }
    }
    (stops, pending)
}

fn render_marker(stops: u64, pending: Option<u64>) -> String {
    match pending {
        Some(s) => format!("stops {stops}\npending {s}\n"),
        None => format!("stops {stops}\n"),
    }
}

impl<S: Systemd + 'static> Driver<S> {
    fn idle_marker(&self) -> PathBuf {
        self.opts
            .runtime_dir
            .join(self.app().as_str())
            .join("idle-stop")
    }

    /// At start: whether the last kechid stopped the app for idleness (then this start is a
    /// cold start), and how many idle stops there were.
    pub(super) fn read_idle_marker(&mut self) {
        let path = self.idle_marker();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        let (stops, pending) = parse_marker(&text);
        self.idle.start.idle_stops = stops;
        self.idle.start.after_idle_secs = pending;
        if pending.is_some() {
            let _ = std::fs::write(&path, render_marker(stops, None));
        }
    }

    /// Whether the listeners can bring the app back after an idle stop.
    fn idle_reach(&self) -> Reach {
        let bound = self
            .listeners
            .iter()
            .filter(|l| crate::sockets::is_bound_by_kechid(&l.name))
            .count();
        Reach::of(self.listeners.len() - bound, bound)
    }

    /// Turns idle watching on when the config asks for it (at start and after a reload), or
    /// says why it cannot be.
    pub(super) fn arm_idle(&mut self) {
        let stop_after = self.loaded.config.idle.stop_after;
        self.idle.clock.set_stop_after(stop_after);
        if stop_after.is_zero() {
            return;
        }
        match self.idle_reach() {
            Reach::Never => {
                tracing::warn!(APP = %self.opts.app, "idle.stop-after is set, but no socket comes from kechi@{}.socket: nothing would start the app again, so it is never stopped for idleness", self.opts.app);
                self.idle.clock.set_stop_after(Duration::ZERO);
                return;
            }
            Reach::Partly => {
                tracing::warn!(APP = %self.opts.app, "idle.stop-after is set and some sockets are `listen` addresses kechid binds: while the app is stopped for idleness they refuse connections (only kechi@{}.socket's start it again)", self.opts.app);
            }
            Reach::Activated => {}
        }
        if self.idle.watching {
            return;
        }
        self.idle.watching = true;
        for l in &self.listeners {
            if crate::sockets::is_bound_by_kechid(&l.name) {
                continue;
            }
            // A duplicate: the listener itself is shared with every worker, and the reactor
            // must not own (or ever close) it.
            let Ok(fd) = l.fd.as_fd().try_clone_to_owned() else {
                continue;
            };
            let arrived = self.idle.arrived.clone();
            let pause = self.idle.clock.look_every();
            tokio::task::spawn_local(watch_arrivals(fd, arrived, pause));
        }
    }

    /// One look at the app; starts the idle stop when it is due.
    pub(super) fn idle_look(&mut self) {
        if !self.idle.clock.enabled() || self.state.shutting_down {
            return;
        }
        let now = Instant::now();
        let active =
            self.idle.arrived.replace(false) || self.connections_waiting() || self.serving();
        self.idle.clock.observe(now, active);
        let Some(idle) = self.idle.clock.due(now) else {
            return;
        };
        let secs = idle.as_secs();
        tracing::info!(
            APP = %self.opts.app, REASON = "idle", IDLE_SECS = secs,
            "no connection open or waiting for {}: stopping {} workers and kechid; kechi@{}.socket starts the app again at the next connection",
            crate::quantity::format_duration(idle), self.state.live().count(), self.opts.app
        );
        self.idle.stopping_after = Some(idle);
        self.state.shutdown_reason = StopReason::Idle;
        self.record(format!(
            "idle for {}: stopping",
            crate::quantity::format_duration(idle)
        ));
        self.begin_shutdown("idle");
    }

    /// On the way out after an idle stop: tells the next kechid, and leaves metrics that say
    /// the app is stopped for idleness (a scrape would otherwise just lose the app).
    pub(super) fn leave_idle_marker(&mut self) {
        let Some(idle) = self.idle.stopping_after else {
            return;
        };
        let path = self.idle_marker();
        self.idle.start.idle_stops += 1;
        self.idle.start.idle_stopped = true;
        let text = render_marker(self.idle.start.idle_stops, Some(idle.as_secs()));
        if let Err(e) = std::fs::write(&path, text) {
            tracing::debug!("writing {}: {e}", path.display());
        }
        self.write_metrics();
    }

    /// The first worker is ready: the start's figure for status and metrics.
    pub(super) fn note_first_ready(&mut self) {
        if self.idle.start.ready_secs.is_none() {
            let secs = self.idle.started.elapsed().as_secs_f64();
            self.idle.start.ready_secs = Some((secs * 1000.0).round() / 1000.0);
            self.write_metrics();
            if let Some(after) = self.idle.start.after_idle_secs {
                tracing::info!(APP = %self.opts.app, REASON = "idle", COLD_START_SECS = secs, "cold start after an idle stop ({} idle): first worker ready {secs:.3} s after kechid started", crate::quantity::format_duration(Duration::from_secs(after)));
            }
        }
    }

    /// A connection waits in one of the listeners' accept queues.
    fn connections_waiting(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds: Vec<PollFd> = self
            .listeners
            .iter()
            .map(|l| PollFd::new(l.fd.as_fd(), PollFlags::POLLIN))
            .collect();
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// A worker holds a connection accepted from one of the listeners.
    fn serving(&self) -> bool {
        let (inodes, addresses) = self.listener_identity();
        let root = self.proc_root.0.clone();
        self.procs.keys().any(|serial| {
            let pids = self.worker_pids(*serial);
            crate::accept::serving_on(&root, &pids, &inodes, &addresses)
        })
    }
}

/// Notes every arrival on `fd` (a listener's duplicate), at most one per `pause`.
async fn watch_arrivals(fd: OwnedFd, arrived: Rc<Cell<bool>>, pause: Duration) {
    let raw = fd.as_raw_fd();
    // SAFETY: the AsyncFd owns this duplicate; nothing else closes or replaces it.
    let Ok(afd) = (unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) })
    else {
        tracing::debug!("listener fd {raw}: cannot watch it for arrivals");
        return;
    };
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        arrived.set(true);
        // Readiness is edge-triggered: cleared here, the next connection raises it again,
        // including one that comes while this task sleeps.
        guard.clear_ready();
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() {
        assert_eq!(parse_marker(&render_marker(3, Some(900))), (3, Some(900)));
        assert_eq!(parse_marker(&render_marker(4, None)), (4, None));
        assert_eq!(parse_marker(""), (0, None));
        assert_eq!(parse_marker("stops x\npending\n"), (0, None));
    }
}

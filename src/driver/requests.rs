//! Control requests from kechictl (status, recycle), and the status text they and systemd's
//! STATUS= show, and the OpenMetrics textfile. Answered from what the loop knows now: never
//! waiting on systemd.

use std::time::{Duration, Instant};

use super::Driver;
use crate::config::Config;
use crate::control;
use crate::policy;
use crate::systemd::Systemd;

/// How old a worker's full figures may be for `kechictl status`: younger ones are shown as they
/// are, not read again.
pub(super) const STATUS_FRESH: Duration = Duration::from_secs(1);

impl<S: Systemd + 'static> Driver<S> {
    pub(super) fn on_control(&mut self, req: control::Request) -> control::Reply {
        match req {
            control::Request::Status {} => {
                // An operator asking gets full figures, whatever the policies need: read now
                // unless read within STATUS_FRESH. (A full read walks every page table of the
                // worker's processes, 2-3 ms of CPU for three Python processes, taken from the
                // serving workers; `kechictl recycle --wait` asks five times a second.)
                let now = Instant::now();
                let stale: Vec<u64> = self
                    .procs
                    .keys()
                    .filter(|s| {
                        self.last_detailed.get(s).is_none_or(|(at, _)| {
                            now.saturating_duration_since(*at) >= STATUS_FRESH
                        })
                    })
                    .copied()
                    .collect();
                for serial in stale {
                    self.sample_full_now(serial);
                }
                control::Reply::ok(self.status())
            }
            control::Request::Recycle { worker, all } => {
                let serials = match policy::recycle_request(&self.state, worker, all) {
                    Ok(s) => s,
                    Err(policy::RecycleRefused::NoSuchWorker { worker, running }) => {
                        return control::Reply::error(
                            "NoSuchWorker",
                            format!(
                                "worker {worker} is not a running worker of {} (running: {running:?})",
                                self.opts.app
                            ),
                        );
                    }
                    Err(e @ policy::RecycleRefused::Ambiguous) => {
                        return control::Reply::error("InvalidParameter", e.to_string());
                    }
                };
                tracing::info!(APP = %self.opts.app, REASON = "manual", "recycle requested for workers {serials:?}");
                self.state.requested.extend(serials.iter().copied());
                control::Reply::ok(control::RecycleReply { serials })
            }
        }
    }

    pub(super) fn status(&self) -> control::Status {
        self.status_with(true)
    }

    /// The status; `tmpdir_sizes`: with each worker's temp dir usage (a `statfs` per worker,
    /// which the metrics, rewritten every check-interval, do not show).
    fn status_with(&self, tmpdir_sizes: bool) -> control::Status {
        let now = Instant::now();
        let workers = self
            .state
            .workers
            .values()
            .map(|w| {
                let p = self.procs.get(&w.serial);
                control::WorkerStatus {
                    serial: w.serial,
                    pid: self.pid_of(w.serial),
                    scope: p.and_then(|p| p.scope.clone()),
                    state: w.state.name().to_owned(),
                    age_secs: now.saturating_duration_since(w.started).as_secs(),
                    generation: w.generation,
                    jemalloc: p.and_then(|p| p.jemalloc),
                    memory_bytes: self.worker_memory(w.serial),
                    memory: self.shown_sample(w.serial).map(|m| control::WorkerMemory {
                        rss: m.total.rss,
                        pss: m.total.pss,
                        uss: m.total.uss,
                        shared: m.total.shared,
                        shared_percent: m.total.shared_percent(),
                        swap: m.total.swap,
                        cgroup: m.cgroup,
                        processes: m.processes,
                    }),
                    tmpdir_bytes: (tmpdir_sizes && self.loaded.config.tmpdir.enabled)
                        .then(|| tmpdir_used(&self.tmpdirs.path(w.serial)))
                        .flatten(),
                    tmpdir: self
                        .loaded
                        .config
                        .tmpdir
                        .enabled
                        .then(|| self.tmpdirs.path(w.serial)),
                }
            })
            .collect();
        control::Status {
            app: self.opts.app.to_string(),
            kechid_pid: std::process::id(),
            generation: self.state.generation,
            workers_wanted: self.policy.workers,
            workers,
            summary: self.status_text(),
            events: self.history.iter().cloned().collect(),
            listening: self.listeners.iter().map(|l| l.address.clone()).collect(),
            start: crate::control::StartInfo {
                idle_stop_after_secs: self.idle.clock.stop_after().as_secs(),
                idle_secs: self.idle.clock.enabled().then(|| {
                    self.idle
                        .clock
                        .idle_for(std::time::Instant::now())
                        .as_secs()
                }),
                ..self.idle.start.clone()
            },
        }
    }

    /// After the last worker is gone: the control socket, workers file and metrics go; the last
    /// serial stays, so serials keep growing across stop and start. (A restart leaves all of
    /// them: the next kechid reads the workers file.)
    pub(super) fn remove_runtime_files(&self) {
        let app = self.opts.app.as_str();
        let dir = &self.opts.runtime_dir;
        for f in [
            control::socket_path(dir, app),
            self.workers_file(),
            self.box_figures_file(),
        ] {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_file(
            crate::metrics::textfile_dir(dir).join(format!("kechi-{app}.prom")),
        );
        let _ = std::fs::remove_dir(dir.join(app).join("tmp"));
        // Without systemd no scope of this run can outlive it, so the next run owes nothing to
        // this one's serials: it starts at worker 1 again. (Under systemd the serial carries
        // over, so that a new kechid never names a worker after a scope still being torn down.)
        if self.systemd.is_none() && self.procs.is_empty() {
            let _ = std::fs::remove_file(self.serial_file());
            let _ = std::fs::remove_file(self.socket_flags_file());
            let _ = std::fs::remove_dir(dir.join(app));
        }
    }

    /// The measured figures of a worker and the thresholds they are held against, for the journal.
    pub(super) fn figures(&self, serial: u64) -> String {
        let Some(m) = self.state.workers.get(&serial).and_then(|w| w.mem.as_ref()) else {
            return "not sampled yet".into();
        };
        let h = |b: u64| crate::quantity::Bytes(b).human();
        let mut out = format!(
            "rss {} pss {} uss {} shared {}",
            h(m.total.rss),
            h(m.total.pss),
            h(m.total.uss),
            m.total
                .shared_percent()
                .map_or("-".into(), |p| format!("{p:.0}%"))
        );
        if let Some(c) = m.cgroup {
            out.push_str(&format!(" cgroup {}", h(c)));
        }
        let p = &self.policy;
        if let Some(v) = p.recycle_above {
            out.push_str(&format!("; recycle-above {} of {:?}", h(v), p.metric));
        }
        if let Some(v) = p.app_budget {
            out.push_str(&format!(
                "; app-budget {} (app total {})",
                h(v),
                h(self.app_memory().unwrap_or(0))
            ));
        }
        if let Some(v) = p.min_shared {
            out.push_str(&format!("; min-shared {:.0}%", v * 100.0));
        }
        out
    }

    /// The metrics file for node exporter's textfile collector, rewritten atomically each sample.
    pub(super) fn write_metrics(&self) {
        let text = crate::metrics::render(
            &self.status_with(false),
            &self.loaded.config.memory,
            &self.recycles,
        );
        let dir = crate::metrics::textfile_dir(&self.opts.runtime_dir);
        let path = crate::metrics::textfile_path(&dir, self.opts.app.as_str());
        if let Err(e) = crate::metrics::write_atomically(&path, &text) {
            tracing::debug!("writing {}: {e}", path.display());
        }
    }

    /// The app's memory for STATUS= and the logs: the sum of [`Self::worker_memory`] over its
    /// workers, from each one's latest figures (a total kept from the last periodic sample
    /// lagged behind the table of `kechictl status` by up to check-interval).
    fn app_memory(&self) -> Option<u64> {
        let figures: Vec<u64> = self
            .procs
            .keys()
            .filter_map(|s| self.worker_memory(*s))
            .collect();
        (!figures.is_empty()).then(|| figures.iter().sum())
    }

    /// A worker's memory for display: its cgroup's charge, or its PSS without systemd (from
    /// its last full figures: a sample of the cheap ones has no PSS).
    fn worker_memory(&self, serial: u64) -> Option<u64> {
        let w = self.state.workers.get(&serial)?;
        let m = w.mem.as_ref()?;
        m.cgroup
            .or_else(|| self.shown_sample(serial).map(|full| full.total.pss))
    }

    pub(super) fn status_text(&self) -> String {
        let ready = self.state.ready_count();
        let mut s = format!("{ready}/{} workers ready", self.policy.workers);
        if let Some(m) = self.app_memory() {
            s.push_str(&format!(", {} total", crate::quantity::Bytes(m).human()));
        }
        if self.loaded.config.jemalloc.enabled {
            let with = self
                .procs
                .values()
                .filter(|p| p.jemalloc == Some(true))
                .count();
            s.push_str(&format!(", jemalloc in {with}"));
        }
        match &self.last_event {
            Some((at, what)) => {
                let ago = at.elapsed().as_secs();
                let ago = if ago == 0 {
                    "just now".to_owned()
                } else {
                    format!(
                        "{} ago",
                        crate::quantity::format_duration(Duration::from_secs(ago))
                    )
                };
                s.push_str(&format!(", last: {what} {ago}"));
            }
            None => s.push_str(", no restarts"),
        }
        s
    }
}

/// Bytes used in a worker's temp dir (its own tmpfs: the filesystem's used blocks).
fn tmpdir_used(dir: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((st.blocks() - st.blocks_free()) * st.fragment_size())
}

/// The gid of `control.group`, if set and known.
pub(super) fn group_id(c: &Config) -> Option<u32> {
    c.control
        .group
        .as_deref()
        .and_then(|g| nix::unistd::Group::from_name(g).ok().flatten())
        .map(|g| g.gid.as_raw())
}

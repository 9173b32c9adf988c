//! Readiness as events: READY=1 on the workers' notify socket, and (accept mode) a starting
//! worker seen waiting on, or serving from, a listening socket. Delay mode is a timer of the
//! policy's. Also which worker a process belongs to, and a worker's processes.

use super::Driver;
use crate::lifecycle::{Event, WorkerState};
use crate::systemd::Systemd;
use crate::{memory, monitor, readiness};

impl<S: Systemd + 'static> Driver<S> {
    /// A worker is ready (`how`, when a sign other than the delay said so). Its memory is
    /// sampled again at once: a sample taken while it started (a prefork master that loaded
    /// the app and had not forked yet holds it all privately) does not describe the ready
    /// worker, and the memory policies judge ready workers by their last sample.
    pub(super) fn became_ready(&mut self, serial: u64, how: Option<&str>) {
        self.apply(serial, Event::BecameReady);
        self.steer_serve(serial);
        self.end_loading_weight(serial);
        self.note_first_ready();
        self.check_jemalloc(serial);
        // (its time is recorded with it: policy::Worker::fresh_metric compares only figures
        // taken since a worker became ready)
        self.sample_ready(serial);
        let how = how.map(|h| format!(" ({h})")).unwrap_or_default();
        tracing::info!(APP = %self.opts.app, WORKER = serial, PID = self.pid_of(serial), "worker ready{how}");
    }

    pub(super) fn awaiting_accept(&self) -> bool {
        self.policy.ready_mode == crate::config::ReadyMode::Accept
            && self
                .state
                .workers
                .values()
                .any(|w| matches!(w.state, WorkerState::Starting { .. }))
    }

    /// Accept mode: a starting worker one of whose processes waits on a listening socket, or
    /// already holds a connection accepted from one, is ready.
    pub(super) fn check_accept(&mut self) {
        let (inodes, addresses) = self.listener_identity();
        let starting: Vec<u64> = self
            .state
            .workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Starting { .. }))
            .map(|w| w.serial)
            .collect();
        let root = self.proc_root.0.clone();
        for serial in starting {
            let pids = self.worker_pids(serial);
            let how = if crate::accept::waiting_on(&root, &pids, &inodes) {
                "waiting for connections"
            } else if crate::accept::serving_on(&root, &pids, &inodes, &addresses) {
                "serving a connection"
            } else {
                continue;
            };
            self.became_ready(serial, Some(how));
        }
    }

    /// How a worker's sockets are told apart: the listeners' inodes, and the local addresses
    /// a connection accepted from one of them has.
    pub(super) fn listener_identity(
        &self,
    ) -> (
        std::collections::HashSet<u64>,
        Vec<nix::sys::socket::SockaddrStorage>,
    ) {
        let inodes = self
            .listeners
            .iter()
            .filter_map(|l| nix::sys::stat::fstat(&l.fd).ok().map(|st| st.st_ino))
            .chain(self.own_inodes())
            .collect();
        let addresses = self
            .listeners
            .iter()
            .filter_map(|l| crate::accept::local_address(&l.fd))
            .collect();
        (inodes, addresses)
    }

    /// The processes of a worker: its scope's members, or its session without systemd.
    pub(super) fn worker_pids(&self, serial: u64) -> Vec<u32> {
        let Some(p) = self.procs.get(&serial) else {
            return vec![];
        };
        if let (Some(layout), Some(scope)) = (&self.layout, &p.scope)
            && let Ok(dirs) = memory::scope_dir(layout, &self.opts.app.slice_unit(), scope)
            && let Ok(pids) = memory::read_cgroup_procs(&dirs.procs)
        {
            return pids;
        }
        monitor::session_members(&self.proc_root.0, p.pid.as_raw())
    }

    /// A message on the notify socket: READY=1 from any process of a starting worker makes it
    /// ready, in notify mode.
    pub(super) fn on_notify(&mut self, pid: i32, msg: readiness::Message) {
        let Some(serial) = self.worker_of_pid(pid) else {
            tracing::debug!(APP = %self.opts.app, "notify message from pid {pid}, which is no worker of this app: ignored");
            return;
        };
        // READY=1 counts in notify mode only: in accept and delay modes the operator chose
        // another sign, and some servers send READY=1 before they take connections (gunicorn's
        // arbiter sends it before its workers have loaded the app).
        if msg.ready && self.policy.ready_mode != crate::config::ReadyMode::Notify {
            tracing::debug!(APP = %self.opts.app, WORKER = serial, PID = pid, "READY=1 ignored: ready.mode is not notify");
            return;
        }
        if !msg.ready {
            return;
        }
        match self.state.workers.get(&serial).map(|w| &w.state) {
            Some(WorkerState::Starting { .. }) => self.became_ready(serial, Some("READY=1")),
            // Released to exec, and fast: its READY=1 beat the news that the exec went ahead
            // (`Done::Released`, another source of the loop). Dropping it left the worker
            // starting until ready.timeout (seen under load, 1 recycle in ~150).
            Some(WorkerState::Spawning { .. }) if self.holding.contains_key(&serial) => {
                self.early_ready.insert(serial);
            }
            _ => {}
        }
    }

    /// The worker a process belongs to: by its scope (cgroup) under systemd, by its session
    /// without systemd (every worker leads its own session).
    fn worker_of_pid(&self, pid: i32) -> Option<u64> {
        if pid <= 0 {
            return None;
        }
        if let Some((serial, _)) = self.procs.iter().find(|(_, p)| p.pid.as_raw() == pid) {
            return Some(*serial);
        }
        if let Some((serial, _)) = self.holding.iter().find(|(_, p)| p.pid.as_raw() == pid) {
            return Some(*serial);
        }
        if self.systemd.is_some()
            && let Some(text) = memory::read_cgroup_membership(&self.proc_root, pid as u32)
            && let Some(serial) = readiness::serial_from_cgroup(&self.opts.app, &text)
        {
            return (self.procs.contains_key(&serial) || self.holding.contains_key(&serial))
                .then_some(serial);
        }
        let sid = memory::session_of(&self.proc_root, pid as u32)?;
        self.procs
            .iter()
            .find(|(_, p)| p.pid.as_raw() == sid)
            .map(|(s, _)| *s)
    }
}

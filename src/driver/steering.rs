//! Steering in the driver ([`crate::steer`]): which listeners are steered, each worker's own
//! sockets, the serving list, and the drain before a stop signal.
//!
//! Contract:
//! - A worker gets sockets of its own at its fork, for each steered listener; it is put on the
//!   serving list when it becomes ready, and taken off it when it is asked to stop or is gone.
//! - Its stop signal waits until its sockets' accept queues have been empty for
//!   [`steer::DRAIN_SETTLE`] (at most [`steer::DRAIN_MAX`]), watched by a local task whose end
//!   comes back as [`Done::Drained`]; a worker without sockets of its own is signalled at once.
//! - Anything that fails here costs steering, never a worker: a listener whose maps cannot be
//!   made is shared as before, with one journal line saying why.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::Driver;
use super::ops::Done;
use crate::lifecycle::WorkerState;
use crate::steer::{self, Group};
use crate::systemd::Systemd;

/// How often a drain looks at the accept queues.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// One socket of a worker's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Own {
    pub listener: usize,
    pub slot: u32,
    pub inode: u64,
}

/// The steering state of one kechid.
#[derive(Debug, Default)]
pub(super) struct Steering {
    /// Per listener (same index as the driver's listeners): its group, if steered.
    groups: Vec<Option<Group>>,
    /// Each worker's own sockets.
    own: HashMap<u64, Vec<Own>>,
    /// The workers on the serving list.
    serving: BTreeSet<u64>,
    /// Steering maps from the fd store, by name, until [`Driver::setup_steering`] takes them.
    stored: HashMap<String, OwnedFd>,
    /// Adopted workers' own sockets whose listener is not steered by this kechid: written to
    /// the workers file again, so the next kechid knows they exist.
    carried: HashMap<u64, Vec<(usize, u32, u64)>>,
}

impl Steering {
    pub fn with_stored(stored: HashMap<String, OwnedFd>) -> Steering {
        Steering {
            stored,
            ..Steering::default()
        }
    }

    fn any(&self) -> bool {
        self.groups.iter().any(Option::is_some)
    }
}

impl<S: Systemd + 'static> Driver<S> {
    /// Sets steering up for every listener that allows it: the maps an earlier kechid kept
    /// in the fd store for the very same socket, else new ones if no worker of an earlier
    /// kechid may hold a socket of its own. With such workers on record and no maps to go on
    /// with, steering stays off for this kechid's life: the earlier program still steers to
    /// the adopted workers, and new workers share the activated socket, which gets the
    /// connections once no adopted worker serves.
    pub(super) fn setup_steering(&mut self, workers_on_record: bool) {
        let mut stored = std::mem::take(&mut self.steering.stored);
        let mut groups = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !steer::steerable(std::os::fd::AsFd::as_fd(&l.fd)) {
                groups.push(None);
                continue;
            }
            let prefix = steer::store_prefix(i);
            let maps = (
                stored.remove(&format!("{prefix}-socks")),
                stored.remove(&format!("{prefix}-serving")),
            );
            let g = match maps {
                (Some(socks), Some(serving)) => Group::from_stored(l, socks, serving)
                    .map(|g| (g, false))
                    .map_err(|e| e.to_string()),
                _ => Err("no maps in the fd store".to_owned()),
            };
            let g = match g {
                Ok(g) => Ok(g),
                Err(e) if workers_on_record => Err(format!(
                    "{e}, and workers of an earlier kechid may hold sockets of their own: they keep what they have, new workers share the socket until kechid restarts"
                )),
                Err(_) => Group::create(l)
                    .map(|g| (g, true))
                    .map_err(|e| e.to_string()),
            };
            match g {
                Ok((g, new)) => {
                    if new {
                        g.store(&prefix);
                    }
                    tracing::info!(APP = %self.opts.app, "listening socket {}: each worker gets a socket of its own, and a worker is stopped only once no connection waits for it", l.address);
                    groups.push(Some(g));
                }
                Err(e) => {
                    tracing::warn!(APP = %self.opts.app, "listening socket {}: not steered ({e}); its workers share it", l.address);
                    groups.push(None);
                }
            }
        }
        // maps of a listener that is gone or no longer steerable: out of the store
        for name in stored.keys() {
            steer::unstore(name);
        }
        self.steering.groups = groups;
    }

    /// The fds a new worker gets for the listeners, in order: its own socket for a steered one,
    /// the listener itself otherwise. The returned sockets must stay open until the worker is
    /// forked.
    pub(super) fn worker_listen_fds(&mut self, serial: u64) -> (Vec<RawFd>, Vec<OwnedFd>) {
        let mut fds = Vec::new();
        let mut keep = Vec::new();
        let mut own = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let made = match self.steering.groups.get_mut(i) {
                Some(Some(g)) => match g.worker_socket(l) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!(APP = %self.opts.app, WORKER = serial, "{e}: the worker shares the listening socket");
                        None
                    }
                },
                _ => None,
            };
            match made {
                Some(w) => {
                    fds.push(w.fd.as_raw_fd());
                    own.push(Own {
                        listener: i,
                        slot: w.slot,
                        inode: w.inode,
                    });
                    keep.push(w.fd);
                }
                None => fds.push(l.fd.as_raw_fd()),
            }
        }
        if !own.is_empty() {
            self.steering.own.insert(serial, own);
        }
        (fds, keep)
    }

    /// The inodes of every worker's own sockets (for readiness by observation).
    pub(super) fn own_inodes(&self) -> Vec<u64> {
        self.steering
            .own
            .values()
            .flatten()
            .map(|o| o.inode)
            .collect()
    }

    /// A worker's own sockets, for the workers file.
    pub(super) fn own_sockets(&self, serial: u64) -> Vec<(usize, u32, u64)> {
        let mut v: Vec<(usize, u32, u64)> = self
            .steering
            .own
            .get(&serial)
            .map(|v| v.iter().map(|o| (o.listener, o.slot, o.inode)).collect())
            .unwrap_or_default();
        v.extend(self.steering.carried.get(&serial).into_iter().flatten());
        v
    }

    /// An adopted worker's own sockets, from the workers file; kept only if its listener is
    /// steered with the maps they are in.
    pub(super) fn adopt_own(&mut self, serial: u64, recorded: &[(usize, u32, u64)]) {
        let mut own = Vec::new();
        let mut carried = Vec::new();
        for &(listener, slot, inode) in recorded {
            if let Some(Some(g)) = self.steering.groups.get_mut(listener) {
                g.claim(slot);
                own.push(Own {
                    listener,
                    slot,
                    inode,
                });
            } else {
                carried.push((listener, slot, inode));
            }
        }
        if !own.is_empty() {
            self.steering.own.insert(serial, own);
        }
        if !carried.is_empty() {
            self.steering.carried.insert(serial, carried);
        }
    }

    /// Writes each group's serving list from [`Steering::serving`].
    fn write_serving(&mut self) {
        for (i, g) in self.steering.groups.iter().enumerate() {
            let Some(g) = g else { continue };
            let slots: Vec<u32> = self
                .steering
                .serving
                .iter()
                .filter_map(|s| self.steering.own.get(s))
                .flatten()
                .filter(|o| o.listener == i)
                .map(|o| o.slot)
                .collect();
            if let Err(e) = g.set_serving(&slots) {
                tracing::error!(APP = %self.opts.app, "listening socket {}: writing the serving list: {e}", g.address);
            }
        }
    }

    /// A ready worker serves: its sockets get new connections, and any that wait on the
    /// activated socket (parked while none served) move to the serving ones.
    pub(super) fn steer_serve(&mut self, serial: u64) {
        if !self.steering.own.contains_key(&serial) || !self.steering.serving.insert(serial) {
            return;
        }
        self.write_serving();
        // (also when others serve: the program parks a connection whenever every serving
        // socket it tried had closed, e.g. workers that crashed together)
        self.unpark();
    }

    /// Every serving worker, adopted ones included, on the lists (after adoption). An adopted
    /// worker the earlier kechid was stopping may have been waiting for its drain (its stop
    /// signal not sent yet): it is drained and signalled again (a graceful stop signal twice is
    /// the same stop for the servers of the matrix).
    pub(super) fn steer_adopted(&mut self) {
        if !self.steering.any() {
            return;
        }
        let mut stopping = Vec::new();
        let mut serving = BTreeSet::new();
        for w in self.state.workers.values() {
            if !self.steering.own.contains_key(&w.serial) {
                continue;
            }
            match w.state {
                WorkerState::Draining { .. } => stopping.push(w.serial),
                WorkerState::Ready { .. } => {
                    serving.insert(w.serial);
                }
                _ => {}
            }
        }
        self.steering.serving = serving;
        for serial in stopping {
            self.steer_drain(serial);
        }
        self.write_serving();
        if !self.steering.serving.is_empty() {
            self.unpark();
        }
    }

    fn unpark(&self) {
        for (i, g) in self.steering.groups.iter().enumerate() {
            let Some(g) = g else { continue };
            match g.unpark(&self.listeners[i]) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(APP = %self.opts.app, "listening socket {}: {n} connection(s) that waited while no worker served handed to the serving workers", g.address)
                }
                Err(e) => {
                    tracing::warn!(APP = %self.opts.app, "listening socket {}: handing waiting connections on: {e}", g.address)
                }
            }
        }
    }

    /// Takes a worker off the serving list and starts watching its queues drain; `false` if it
    /// has no sockets of its own (signal it at once).
    pub(super) fn steer_drain(&mut self, serial: u64) -> bool {
        let Some(own) = self.steering.own.get(&serial) else {
            return false;
        };
        let inodes: Vec<u64> = own.iter().map(|o| o.inode).collect();
        if self.steering.serving.remove(&serial) {
            self.write_serving();
        }
        let root = self.proc_root.0.clone();
        let tx = self.ops_tx.clone();
        self.in_flight += 1;
        tokio::task::spawn_local(async move {
            let start = Instant::now();
            let mut empty_since: Option<Instant> = None;
            let waited = loop {
                let now = Instant::now();
                let queued: u32 = steer::queues(&root, &inodes).iter().map(|(_, q)| q).sum();
                if queued > 0 {
                    empty_since = None;
                } else if now.saturating_duration_since(*empty_since.get_or_insert(now))
                    >= steer::DRAIN_SETTLE
                {
                    break Ok(now - start);
                }
                if now.saturating_duration_since(start) >= steer::DRAIN_MAX {
                    break Err(queued);
                }
                tokio::time::sleep(DRAIN_POLL).await;
            };
            let _ = tx.send(Done::Drained { serial, waited });
        });
        true
    }

    /// A worker's sockets are drained (or the wait ran out): its stop signal goes now.
    pub(super) fn on_drained(&mut self, serial: u64, waited: Result<Duration, u32>) {
        match waited {
            Ok(d) => {
                tracing::debug!(APP = %self.opts.app, WORKER = serial, "no connection waits for the worker (after {} ms)", d.as_millis())
            }
            Err(q) => {
                tracing::warn!(APP = %self.opts.app, WORKER = serial, "{q} connection(s) still wait in the worker's own queue after {}: stopping it anyway (they move to a serving worker when its socket closes)", crate::quantity::format_duration(steer::DRAIN_MAX))
            }
        }
        let draining = self.is_draining(serial);
        if draining {
            self.send_stop_signal(serial);
        }
    }

    /// A worker is gone: off the lists, its slots free.
    pub(super) fn steer_forget(&mut self, serial: u64) {
        self.steering.carried.remove(&serial);
        let Some(own) = self.steering.own.remove(&serial) else {
            return;
        };
        if self.steering.serving.remove(&serial) {
            self.write_serving();
        }
        for o in own {
            if let Some(Some(g)) = self.steering.groups.get_mut(o.listener) {
                g.release(o.slot);
            }
        }
    }
}

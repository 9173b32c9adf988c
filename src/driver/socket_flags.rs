//! The listening sockets' `O_NONBLOCK` across a restart of kechid ([`crate::sockflags`]):
//! systemd clears it on the shared sockets at every start of kechid, under workers that may
//! rely on it (event-loop servers). Recorded with each memory sample and before a restart,
//! put back once running workers are adopted, and worker threads left blocked in `accept`
//! meanwhile are woken by a background task (the loop never waits on it).

use std::path::PathBuf;
use std::time::Duration;

use super::Driver;
use crate::sockets::Listener;
use crate::systemd::Systemd;

impl<S: Systemd + 'static> Driver<S> {
    pub(super) fn socket_flags_file(&self) -> PathBuf {
        self.opts
            .runtime_dir
            .join(self.app().as_str())
            .join("socket-flags")
    }

    /// Only under systemd: without it no kechid adopts workers, and nobody resets the flags.
    /// Not while adopting: the file then holds the running workers' flags, written by the
    /// kechid before, and the sockets have systemd's until [`Self::restore_socket_flags`]; a
    /// memory sample that came first (seen on a loaded machine: the scan for the workers took
    /// longer than a check-interval) wrote systemd's cleared flag over them, the restore then
    /// found nothing to do, and an event-loop worker (Node) blocked in `accept` for good once
    /// its queue was empty, its loop with it: its connections unread, its stop signal unhandled
    /// until stop.timeout's SIGKILL.
    pub(super) fn record_socket_flags(&self) {
        if self.systemd.is_none() || self.adopting {
            return;
        }
        // (every few seconds: a failure here is not worth a journal line each time; the next
        // kechid then leaves the flags as systemd gave them)
        let _ = crate::sockflags::record(&self.socket_flags_file(), &self.listeners);
    }

    /// After adoption: the flags back as the running workers had them, and a task that wakes the
    /// worker threads that entered `accept` while the flag was off.
    pub(super) fn restore_socket_flags(&self) {
        let mut on_again = Vec::new();
        for (address, on) in crate::sockflags::restore(&self.socket_flags_file(), &self.listeners) {
            tracing::info!(APP = %self.opts.app, "listening socket {address}: O_NONBLOCK {} again, as the running workers had it (systemd resets it at every start of kechid)", if on { "on" } else { "off" });
            if on {
                on_again.push(address);
            }
        }
        if on_again.is_empty() {
            return;
        }
        let pids: Vec<u32> = self
            .procs
            .keys()
            .flat_map(|s| self.worker_pids(*s))
            .collect();
        let listeners: Vec<(Listener, u64)> = self
            .listeners
            .iter()
            .filter(|l| on_again.contains(&l.address))
            .filter_map(|l| {
                let ino = nix::sys::stat::fstat(&l.fd).ok()?.st_ino;
                let fd = l.fd.try_clone().ok()?;
                Some((
                    Listener {
                        fd,
                        name: l.name.clone(),
                        address: l.address.clone(),
                    },
                    ino,
                ))
            })
            .collect();
        let proc_root = self.proc_root.0.clone();
        let app = self.opts.app.to_string();
        tokio::task::spawn_local(wake_blocked_accepts(proc_root, app, pids, listeners));
    }
}

/// A worker thread that entered `accept` while systemd had `O_NONBLOCK` off stays blocked in it
/// after the flag is back (the flag is read when the call begins), and an event loop with it, its
/// accepted connections unserved: under a load whose every connection it holds, no new
/// connection comes to wake it (measured with uvicorn: no response for a whole step after a
/// restart of kechid). One connection per such thread, closed at once, wakes them; a few rounds
/// 50 ms apart, as another process may take a knock first.
async fn wake_blocked_accepts(
    proc_root: PathBuf,
    app: String,
    pids: Vec<u32>,
    listeners: Vec<(Listener, u64)>,
) {
    const ROUNDS: usize = 10;
    for (l, ino) in &listeners {
        let mut knocks = 0;
        for _ in 0..ROUNDS {
            let n = crate::accept::blocked_in_accept(&proc_root, &pids, *ino);
            if n == 0 {
                break;
            }
            knocks += (0..n)
                .filter(|_| crate::sockflags::knock(l).is_ok())
                .count();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if knocks > 0 {
            tracing::info!(APP = %app, "listening socket {}: woke the worker threads blocked in accept() while O_NONBLOCK was off ({knocks} empty connections)", l.address);
        }
    }
}

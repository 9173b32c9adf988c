//! Connection steering: each worker accepts from a listening socket of its own, and kechid
//! chooses which workers' sockets get new connections, so a worker that is about to be stopped
//! gets none for a while before its stop signal.
//!
//! Why: on one shared listening socket, whichever worker calls `accept` next takes the next
//! connection, up to the instant its stop signal arrives. A server that exits with a connection
//! it has just accepted and not yet read (Starman's children at HUP, uvicorn at TERM, a uWSGI
//! worker between `accept` and its request) loses it: docs/APP-SERVERS.md. Only a worker that
//! *cannot* be given new connections is safe to stop, and that takes a queue of its own.
//!
//! How, for a TCP socket of the socket unit that has `SO_REUSEPORT` (`ReusePort=yes`):
//! - kechid binds one more socket per worker to the same address, with `SO_REUSEPORT`: they
//!   join the activated socket's reuseport group, and the worker gets its own in place of the
//!   activated one (same fd number, same name in `LISTEN_FDNAMES`, same address);
//! - a BPF program on the group ([`bpf::steering_program`]) sends each new connection to one of
//!   the *serving* sockets (the ready workers'), listed in a map kechid writes; with none
//!   serving, to the activated socket, which holds them until a worker serves again;
//! - to stop a worker, kechid takes its sockets off the serving list, waits until their
//!   accept queues are empty and have stayed empty a moment ([`DRAIN_SETTLE`]), and only then
//!   sends the stop signal: the worker is idle in `accept` or busy with requests it has read;
//! - a socket that closes with connections in its queue (a worker that crashed) hands them to a
//!   serving socket: the program is of the "select or migrate" kind, which the kernel asks where
//!   a closed listener's queue goes.
//!
//! The maps are kept in systemd's fd store (`kechi-steer-N-socks`, `kechi-steer-N-serving`), so
//! a kechid that adopts running workers after a restart or a crash goes on steering with the
//! same maps; the store is emptied when the service stops. A Unix socket, or a TCP socket
//! without `SO_REUSEPORT`, is shared by the workers as before.

pub mod bpf;

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::sockets::Listener;

/// How long a drained worker's accept queues must have stayed empty before its stop signal: a
/// connection accepted just before the worker left the serving list has its request read by
/// then (the client sends it with the handshake), and a handshake the kernel steered to the
/// worker just before is complete.
pub const DRAIN_SETTLE: Duration = Duration::from_millis(150);
/// The longest kechid waits for a worker's accept queues to empty before it stops the worker
/// anyway (a worker that no longer accepts: its queue goes to a serving worker when it exits).
pub const DRAIN_MAX: Duration = Duration::from_secs(3);
/// Worker sockets per steered listener (the socket array's size); slot 0 is the activated socket.
pub const SLOTS: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("{0}: not a TCP socket with SO_REUSEPORT")]
    NotSteerable(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}: every worker socket slot is in use")]
    Full(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SteerError {
    let what = what.into();
    move |source| SteerError::Io { what, source }
}

/// `getsockopt` of a value of type `T`: one of the plain C types the kernel fills (an int, a
/// u64, `tcp_info`), for which all-zero bytes are a valid value.
fn getsockopt_as<T>(fd: BorrowedFd<'_>, level: i32, opt: i32) -> io::Result<T> {
    // SAFETY: T is a plain C type for which zeroed bytes are valid (see above).
    let mut v: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: v and len are valid for the kernel to write at most size_of::<T>() bytes into.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut T).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, opt: i32) -> io::Result<i32> {
    getsockopt_as::<libc::c_int>(fd, level, opt)
}

fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: v is a valid int for the kernel to read.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The socket's cookie: the kernel's id of it for its whole life (what a socket array gives back).
fn cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    getsockopt_as::<u64>(fd, libc::SOL_SOCKET, libc::SO_COOKIE)
}

fn local_address(fd: BorrowedFd<'_>) -> io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    // SAFETY: zeroed sockaddr_storage is a valid value; the kernel fills at most len bytes.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok((sa, len))
    }
}

/// `(accept queue length, its maximum)` of a listening TCP socket (`TCP_INFO`: `tcpi_unacked`,
/// `tcpi_sacked` hold them for a listener).
fn accept_queue(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let info = getsockopt_as::<libc::tcp_info>(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    Ok((info.tcpi_unacked, info.tcpi_sacked))
}

/// Whether kechid can steer this listener's connections: a listening TCP socket with
/// `SO_REUSEPORT`.
pub fn steerable(fd: BorrowedFd<'_>) -> bool {
    let opt = |level, opt| getsockopt_int(fd, level, opt).ok();
    opt(libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP)
        && opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
        && opt(libc::SOL_SOCKET, libc::SO_REUSEPORT) == Some(1)
}

/// The socket options a worker's socket takes from the activated one: those a socket unit can
/// set that matter to accepted connections (Linux copies them from the listener).
const COPIED: [(i32, i32); 6] = [
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_MARK),
];

/// One steered listener: its maps, and the slots in use.
#[derive(Debug)]
pub struct Group {
    /// The listener's address, for messages.
    pub address: String,
    socks: OwnedFd,
    serving: OwnedFd,
    used: BTreeSet<u32>,
}

/// A worker's socket: given to the worker, then closed by kechid (the worker holds it).
#[derive(Debug)]
pub struct WorkerSocket {
    pub fd: OwnedFd,
    pub slot: u32,
    pub inode: u64,
}

impl Group {
    /// Maps and program for `listener`. The program replaces whatever program the group had.
    pub fn create(listener: &Listener) -> Result<Group, SteerError> {
        let fd = listener.fd.as_fd();
        if !steerable(fd) {
            return Err(SteerError::NotSteerable(listener.address.clone()));
        }
        let a = &listener.address;
        let socks = bpf::create_map(bpf::MAP_REUSEPORT_SOCKARRAY, 4, 8, SLOTS, "kechi_socks")
            .map_err(io_err(format!("{a}: creating the socket map")))?;
        let serving = bpf::create_map(bpf::MAP_ARRAY, 4, 4, SLOTS + 1, "kechi_serving")
            .map_err(io_err(format!("{a}: creating the serving map")))?;
        let prog = bpf::load_steering(&bpf::steering_program(socks.as_fd(), serving.as_fd()))
            .map_err(io_err(format!("{a}: loading the steering program")))?;
        setsockopt_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_EBPF,
            prog.as_raw_fd(),
        )
        .map_err(io_err(format!("{a}: attaching the steering program")))?;
        // A socket is in one socket map at most: the map of a program this one just replaced
        // (an earlier kechid's, whose maps were lost) lets go of it once the kernel frees it,
        // shortly after the program goes.
        let value = (fd.as_raw_fd() as u64).to_ne_bytes();
        let mut tries = 0;
        loop {
            match bpf::update(socks.as_fd(), 0, &value) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => break r.map_err(io_err(format!("{a}: putting the socket in its map")))?,
            }
        }
        Ok(Group {
            address: a.clone(),
            socks,
            serving,
            used: BTreeSet::from([0]),
        })
    }

    /// The maps an earlier kechid kept in systemd's fd store for `listener`, if they are this
    /// very socket's (its cookie in slot 0): the program attached with them still steers.
    pub fn from_stored(
        listener: &Listener,
        socks: OwnedFd,
        serving: OwnedFd,
    ) -> Result<Group, SteerError> {
        let a = &listener.address;
        let mut c = [0u8; 8];
        bpf::lookup(socks.as_fd(), 0, &mut c)
            .map_err(io_err(format!("{a}: reading the stored socket map")))?;
        let mine = cookie(listener.fd.as_fd()).map_err(io_err(format!("{a}: SO_COOKIE")))?;
        if u64::from_ne_bytes(c) != mine {
            return Err(SteerError::Io {
                what: format!("{a}: the stored maps are another socket's"),
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        Ok(Group {
            address: a.clone(),
            socks,
            serving,
            used: BTreeSet::from([0]),
        })
    }

    /// Keeps the maps in systemd's fd store as `PREFIX-socks` and `PREFIX-serving` (replacing
    /// any stored under those names), so the next kechid steers on with them.
    pub fn store(&self, prefix: &str) {
        for (suffix, map) in [("socks", &self.socks), ("serving", &self.serving)] {
            let name = format!("{prefix}-{suffix}");
            unstore(&name);
            if let Err(e) = sd_notify::notify_with_fds(
                &[
                    sd_notify::NotifyState::FdStore,
                    sd_notify::NotifyState::FdName(&name),
                    // systemd watches a stored fd for errors, and a map that cannot be polled
                    // answers EPOLLERR at once: without this, it is dropped from the store
                    sd_notify::NotifyState::Custom("FDPOLL=0"),
                ],
                &[map.as_fd()],
            ) {
                tracing::debug!("FDSTORE=1 for {name}: {e}");
            }
        }
    }

    /// Records a slot an adopted worker's socket holds.
    pub fn claim(&mut self, slot: u32) {
        self.used.insert(slot);
    }

    /// A new socket for a worker, in the group and in the socket map, not serving yet.
    pub fn worker_socket(&mut self, listener: &Listener) -> Result<WorkerSocket, SteerError> {
        let a = &listener.address;
        let slot = (1..SLOTS)
            .find(|s| !self.used.contains(s))
            .ok_or_else(|| SteerError::Full(a.clone()))?;
        let from = listener.fd.as_fd();
        let (sa, len) = local_address(from).map_err(io_err(format!("{a}: getsockname")))?;
        // SAFETY: plain socket(2); the fd is owned at once.
        let raw = unsafe {
            libc::socket(
                i32::from(sa.ss_family),
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io_err(format!("{a}: socket"))(io::Error::last_os_error()));
        }
        // SAFETY: a new fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let b = fd.as_fd();
        setsockopt_int(b, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
            .map_err(io_err(format!("{a}: SO_REUSEPORT")))?;
        if i32::from(sa.ss_family) == libc::AF_INET6 {
            let v6only = getsockopt_int(from, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap_or(0);
            setsockopt_int(b, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only)
                .map_err(io_err(format!("{a}: IPV6_V6ONLY")))?;
        }
        for (level, opt) in COPIED {
            if let Ok(v) = getsockopt_int(from, level, opt) {
                let v = if opt == libc::SO_RCVBUF || opt == libc::SO_SNDBUF {
                    v / 2
                } else {
                    v
                };
                let _ = setsockopt_int(b, level, opt, v);
            }
        }
        // SAFETY: sa/len came from getsockname on a socket of the same family.
        let r = unsafe { libc::bind(raw, (&sa as *const libc::sockaddr_storage).cast(), len) };
        if r < 0 {
            return Err(io_err(format!("{a}: binding a worker's socket"))(
                io::Error::last_os_error(),
            ));
        }
        let backlog = accept_queue(from)
            .map(|(_, max)| max as i32)
            .unwrap_or(libc::SOMAXCONN);
        // SAFETY: plain listen(2) on our socket.
        if unsafe { libc::listen(raw, backlog) } < 0 {
            return Err(io_err(format!("{a}: listen"))(io::Error::last_os_error()));
        }
        bpf::update(self.socks.as_fd(), slot, &(raw as u64).to_ne_bytes())
            .map_err(io_err(format!("{a}: putting a worker's socket in the map")))?;
        let inode = nix::sys::stat::fstat(b).map(|s| s.st_ino).unwrap_or(0);
        self.used.insert(slot);
        Ok(WorkerSocket { fd, slot, inode })
    }

    /// A slot whose worker is gone (the kernel empties it when the socket closes; this is for
    /// a worker that never got to run).
    pub fn release(&mut self, slot: u32) {
        if slot == 0 {
            return;
        }
        let _ = bpf::delete(self.socks.as_fd(), slot);
        self.used.remove(&slot);
    }

    /// Makes `slots` the serving list. The count is written last when the list grows and first
    /// when it shrinks, so the program never reads a slot that is not in the list yet.
    pub fn set_serving(&self, slots: &[u32]) -> io::Result<()> {
        let n = slots.len().min(SLOTS as usize) as u32;
        let mut old = [0u8; 4];
        bpf::lookup(self.serving.as_fd(), 0, &mut old)?;
        let shrinking = n < u32::from_ne_bytes(old);
        if shrinking {
            bpf::update(self.serving.as_fd(), 0, &n.to_ne_bytes())?;
        }
        for (i, s) in slots.iter().take(n as usize).enumerate() {
            bpf::update(self.serving.as_fd(), i as u32 + 1, &s.to_ne_bytes())?;
        }
        if !shrinking {
            bpf::update(self.serving.as_fd(), 0, &n.to_ne_bytes())?;
        }
        Ok(())
    }

    /// Hands the connections waiting on the activated socket (parked while no worker served)
    /// to the serving workers: `shutdown` stops the listener, and the kernel migrates its
    /// queue through the program; `listen` puts it back in the group at once. Returns how many
    /// were waiting.
    pub fn unpark(&self, listener: &Listener) -> io::Result<u32> {
        let fd = listener.fd.as_fd();
        let (queued, backlog) = accept_queue(fd)?;
        if queued == 0 {
            return Ok(0);
        }
        // SAFETY: shutdown and listen on a socket we hold.
        if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if unsafe { libc::listen(fd.as_raw_fd(), backlog.max(1) as i32) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(queued)
    }
}

/// Removes what the fd store holds under `name`.
pub fn unstore(name: &str) {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::FdStoreRemove,
        sd_notify::NotifyState::FdName(name),
    ]);
}

/// The fd store name prefix of the maps of the listener at `index`.
pub fn store_prefix(index: usize) -> String {
    format!("{STORE_PREFIX}{index}")
}

/// What the names of stored steering maps start with (no socket unit is named so).
pub const STORE_PREFIX: &str = "kechi-steer-";

/// Whether an fd systemd passed under `name` is a steering map from the fd store, not a socket.
pub fn is_stored(name: &str) -> bool {
    name.starts_with(STORE_PREFIX)
}

/// The accept queue lengths of listening TCP sockets by inode, from `/proc/net/tcp` and
/// `tcp6` under `proc_root` (for a listener, the `rx_queue` column is its accept queue).
/// An inode not found (its socket closed) is absent.
pub fn queues(proc_root: &Path, inodes: &[u64]) -> Vec<(u64, u32)> {
    let mut found = Vec::new();
    for file in ["net/tcp", "net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(proc_root.join(file)) else {
            continue;
        };
        found.extend(parse_queues(&text, inodes));
    }
    found
}

/// [`queues`] of one `/proc/net/tcp` text.
pub fn parse_queues(text: &str, inodes: &[u64]) -> Vec<(u64, u32)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let inode: u64 = f[9].parse().ok()?;
            if !inodes.contains(&inode) {
                return None;
            }
            let rx = u32::from_str_radix(f[4].split_once(':')?.1, 16).ok()?;
            Some((inode, rx))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;

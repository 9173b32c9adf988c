//! Readiness by observation (`ready.mode = "accept"`): a worker is ready once one of its
//! processes is seen *waiting for connections* on an inherited listening socket, with no
//! change to the app.
//!
//! How: for every thread of every process in the worker, `/proc/PID/task/TID/syscall` names
//! the system call it is blocked in and its arguments. The thread is waiting on a listening
//! socket when it is in
//! - `accept`/`accept4` on an fd that is one of the sockets,
//! - `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on an epoll whose interest list
//!   (`/proc/PID/fdinfo/EPFD`, `tfd:` lines) holds one of the sockets,
//! - `poll`/`ppoll` with one of the sockets in its `pollfd` array, or
//! - `select`/`pselect6` with one of the sockets in its read set,
//!
//! the arrays being read from `/proc/PID/mem` (kechid runs as root). The sockets are known by
//! inode (`socket:[INODE]` links under `/proc/PID/fd`), so a worker that dup()s them is still
//! seen. Prefork servers (Starlet, gunicorn sync, uWSGI) block in accept or poll/select; event
//! loops (puma, uvicorn, node) in epoll. A worker that is busy loading is in none of these.
//!
//! A worker can also be too busy to be caught waiting: under keep-alive load every process of
//! a new prefork worker takes a queued connection the moment it first calls accept and keeps
//! it. Such a worker is plainly taking connections, so [`serving_on`] counts it ready too: one
//! of its processes holds a connection *accepted* from a listening socket. kechid borrows each
//! of the process's other sockets with `pidfd_getfd(2)` (root may) and compares its local
//! address with the listeners': an accepted connection has its listener's address (port or
//! path), an outgoing one an ephemeral port. Asking the sockets themselves costs a few system
//! calls per socket, where reading `/proc/net/tcp` costs the kernel a walk over every socket
//! of the host (tens of thousands in TIME_WAIT on a busy server).

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{SockaddrStorage, getsockname, getsockopt, sockopt};
use nix::unistd::Pid;

/// The system calls that mean "waiting for connections", by architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Accept,
    Epoll,
    Poll,
    Select,
}

#[cfg(target_arch = "x86_64")]
fn classify(nr: i64) -> Option<Wait> {
    match nr {
        43 | 288 => Some(Wait::Accept),
        232 | 281 | 441 => Some(Wait::Epoll),
        7 | 271 => Some(Wait::Poll),
        23 | 270 => Some(Wait::Select),
        _ => None,
    }
}

#[cfg(target_arch = "aarch64")]
fn classify(nr: i64) -> Option<Wait> {
    match nr {
        202 | 242 => Some(Wait::Accept),
        22 | 441 => Some(Wait::Epoll),
        73 => Some(Wait::Poll),
        72 => Some(Wait::Select),
        _ => None,
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn classify(_nr: i64) -> Option<Wait> {
    None
}

/// A `/proc/.../syscall` line: the call number and its six arguments; `None` when the thread
/// is running or not in a system call.
pub fn parse_syscall(line: &str) -> Option<(i64, [u64; 6])> {
    let mut it = line.split_whitespace();
    let nr: i64 = it.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
    }
    Some((nr, args))
}

/// The target fds (`tfd:`) of an epoll's fdinfo.
pub fn parse_epoll_targets(fdinfo: &str) -> Vec<i32> {
    fdinfo
        .lines()
        .filter_map(|l| {
            l.strip_prefix("tfd:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The fds of a `struct pollfd` array (8 bytes each: int fd, short events, short revents).
pub fn parse_pollfds(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(8)
        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The fds set in an fd_set bitmap.
pub fn parse_fd_set(bytes: &[u8]) -> Vec<i32> {
    let mut out = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        for bit in 0..8 {
            if b & (1 << bit) != 0 {
                out.push((i * 8 + bit) as i32);
            }
        }
    }
    out
}

/// The inode of a `socket:[INODE]` link target.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The fds of `pid` that are one of `inodes`.
fn socket_fds(proc_root: &Path, pid: u32, inodes: &HashSet<u64>) -> HashSet<i32> {
    let dir = proc_root.join(pid.to_string()).join("fd");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return HashSet::new();
    };
    rd.filter_map(|e| {
        let e = e.ok()?;
        let fd: i32 = e.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        inodes
            .contains(&socket_inode(target.to_str()?)?)
            .then_some(fd)
    })
    .collect()
}

fn read_mem(proc_root: &Path, pid: u32, addr: u64, len: usize) -> Option<Vec<u8>> {
    if len == 0 || len > 1 << 16 {
        return None;
    }
    let mut f = std::fs::File::open(proc_root.join(pid.to_string()).join("mem")).ok()?;
    f.seek(SeekFrom::Start(addr)).ok()?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Whether one of `pids` (processes of one worker) waits for connections on a socket whose
/// inode is in `inodes`.
pub fn waiting_on(proc_root: &Path, pids: &[u32], inodes: &HashSet<u64>) -> bool {
    pids.iter()
        .any(|pid| process_waits(proc_root, *pid, inodes))
}

fn process_waits(proc_root: &Path, pid: u32, inodes: &HashSet<u64>) -> bool {
    let fds = socket_fds(proc_root, pid, inodes);
    if fds.is_empty() {
        return false;
    }
    let Ok(tasks) = std::fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
        return false;
    };
    for t in tasks.flatten() {
        let Ok(line) = std::fs::read_to_string(t.path().join("syscall")) else {
            continue;
        };
        let Some((nr, args)) = parse_syscall(&line) else {
            continue;
        };
        let hit = match classify(nr) {
            Some(Wait::Accept) => fds.contains(&(args[0] as i32)),
            Some(Wait::Epoll) => std::fs::read_to_string(
                proc_root
                    .join(pid.to_string())
                    .join("fdinfo")
                    .join((args[0] as i32).to_string()),
            )
            .is_ok_and(|info| parse_epoll_targets(&info).iter().any(|fd| fds.contains(fd))),
            Some(Wait::Poll) => read_mem(
                proc_root,
                pid,
                args[0],
                (args[1] as usize).saturating_mul(8),
            )
            .is_some_and(|b| parse_pollfds(&b).iter().any(|fd| fds.contains(fd))),
            Some(Wait::Select) => read_mem(proc_root, pid, args[1], (args[0] as usize).div_ceil(8))
                .is_some_and(|b| parse_fd_set(&b).iter().any(|fd| fds.contains(fd))),
            None => false,
        };
        if hit {
            return true;
        }
    }
    false
}

/// How many threads of `pids` are blocked in `accept`/`accept4` on the socket of inode `inode`.
///
/// On a socket whose `O_NONBLOCK` the workers set, such a thread can only be one that entered
/// `accept` while the flag was cleared under it (a start of kechid, [`crate::sockflags`]): the
/// flag is read when the call begins, so putting it back does not wake the thread, and an event
/// loop stays stuck in that call, its accepted connections unserved, until a new connection
/// arrives.
pub fn blocked_in_accept(proc_root: &Path, pids: &[u32], inode: u64) -> usize {
    let inodes = HashSet::from([inode]);
    pids.iter()
        .map(|pid| {
            let fds = socket_fds(proc_root, *pid, &inodes);
            if fds.is_empty() {
                return 0;
            }
            let Ok(tasks) = std::fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
                return 0;
            };
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("syscall"))
                        .ok()
                        .and_then(|l| parse_syscall(&l))
                        .is_some_and(|(nr, args)| in_accept_on(nr, &args, &fds))
                })
                .count()
        })
        .sum()
}

/// Whether a thread in system call `nr` with `args` is in `accept`/`accept4` on one of `fds`.
pub fn in_accept_on(nr: i64, args: &[u64; 6], fds: &HashSet<i32>) -> bool {
    classify(nr) == Some(Wait::Accept) && fds.contains(&(args[0] as i32))
}

/// The local address of a socket, for comparing sockets.
pub fn local_address(fd: &impl AsFd) -> Option<SockaddrStorage> {
    getsockname::<SockaddrStorage>(fd.as_fd().as_raw_fd()).ok()
}

/// Whether a connection whose local address is `conn` can have been accepted from a socket
/// listening on `listener`: the same path (unix), or the same port and, unless the listener
/// is bound to every address, the same IP (a connection's local IP is the one it reached).
pub fn accepted_from(listener: &SockaddrStorage, conn: &SockaddrStorage) -> bool {
    if let (Some(l), Some(c)) = (listener.as_unix_addr(), conn.as_unix_addr()) {
        return l.path().is_some() && l.path() == c.path();
    }
    let ip_port = |a: &SockaddrStorage| -> Option<(std::net::IpAddr, u16)> {
        if let Some(v4) = a.as_sockaddr_in() {
            Some((std::net::IpAddr::V4(v4.ip()), v4.port()))
        } else {
            a.as_sockaddr_in6()
                .map(|v6| (std::net::IpAddr::V6(v6.ip()), v6.port()))
        }
    };
    match (ip_port(listener), ip_port(conn)) {
        (Some((lip, lport)), Some((cip, cport))) => {
            lport == cport
                && (lip.is_unspecified() || lip == cip || lip.to_canonical() == cip.to_canonical())
        }
        _ => false,
    }
}

/// The fds of `pid` that are sockets other than `listeners` (by inode).
fn other_socket_fds(proc_root: &Path, pid: u32, listeners: &HashSet<u64>) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let e = e.ok()?;
        let fd: i32 = e.file_name().to_str()?.parse().ok()?;
        let ino = socket_inode(std::fs::read_link(e.path()).ok()?.to_str()?)?;
        (!listeners.contains(&ino)).then_some(fd)
    })
    .collect()
}

/// A copy of `fd` of the process behind `pidfd` (`pidfd_getfd(2)`, Linux 5.6).
fn borrow_fd(pidfd: &OwnedFd, fd: i32) -> Option<OwnedFd> {
    // SAFETY: a plain syscall; on success it returns a new fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    // SAFETY: the fd was just returned by the kernel and is not owned elsewhere.
    (r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Whether one of `pids` holds a connection accepted from a listening socket: a socket that
/// does not listen and whose local address is one of `addresses` (the listeners' own).
/// `listeners` are the listening sockets' inodes, skipped without a look.
pub fn serving_on(
    proc_root: &Path,
    pids: &[u32],
    listeners: &HashSet<u64>,
    addresses: &[SockaddrStorage],
) -> bool {
    if addresses.is_empty() {
        return false;
    }
    pids.iter().any(|pid| {
        let fds = other_socket_fds(proc_root, *pid, listeners);
        if fds.is_empty() {
            return false;
        }
        let Ok(pidfd) = crate::spawn::pidfd_open(Pid::from_raw(*pid as i32)) else {
            return false;
        };
        fds.iter().any(|fd| {
            borrow_fd(&pidfd, *fd).is_some_and(|sock| {
                !getsockopt(&sock, sockopt::AcceptConn).unwrap_or(true)
                    && local_address(&sock)
                        .is_some_and(|a| addresses.iter().any(|l| accepted_from(l, &a)))
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    #[test]
    fn accept_on_a_listener_only() {
        let fds = HashSet::from([3, 5]);
        #[cfg(target_arch = "x86_64")]
        {
            assert!(in_accept_on(288, &[3, 0, 0, 0x80000, 0, 0], &fds));
            assert!(in_accept_on(43, &[5, 0, 0, 0, 0, 0], &fds));
            assert!(!in_accept_on(288, &[4, 0, 0, 0, 0, 0], &fds), "another fd");
            assert!(
                !in_accept_on(232, &[3, 0, 0, 0, 0, 0], &fds),
                "epoll_wait is not accept"
            );
        }
        assert!(!in_accept_on(-1, &[3, 0, 0, 0, 0, 0], &fds));
    }

    #[test]
    fn parsers() {
        assert_eq!(
            parse_syscall("288 0x3 0x7ffe 0x7ffd 0x80000 0x0 0x0 0x7ff 0x7ef")
                .map(|(n, a)| (n, a[0], a[3])),
            Some((288, 3, 0x80000))
        );
        assert_eq!(parse_syscall("running"), None);
        assert_eq!(parse_syscall("-1 0x7ffe 0x7ef"), None);
        assert_eq!(
            parse_epoll_targets(
                "pos:\t0\nflags:\t02\ntfd:        5 events:       19 data: 5  pos:0 ino:61e4 sdev:8\ntfd:        7 events: 19\n"
            ),
            vec![5, 7]
        );
        let mut pf = Vec::new();
        for fd in [4i32, 9] {
            pf.extend_from_slice(&fd.to_ne_bytes());
            pf.extend_from_slice(&[1, 0, 0, 0]);
        }
        assert_eq!(parse_pollfds(&pf), vec![4, 9]);
        assert_eq!(parse_fd_set(&[0b0000_1000, 0b0000_0001]), vec![3, 8]);
        assert_eq!(socket_inode("socket:[1064282]"), Some(1064282));
        assert_eq!(socket_inode("pipe:[5]"), None);
    }

    #[test]
    fn accepted_from_compares_port_path_and_bound_ip() {
        let inet = |s: &str| SockaddrStorage::from(s.parse::<std::net::SocketAddr>().unwrap());
        let unix = |p: &str| {
            use nix::sys::socket::SockaddrLike;
            let ua = nix::sys::socket::UnixAddr::new(p).unwrap();
            // SAFETY: the pointer and length describe `ua`, alive for the call.
            unsafe { SockaddrStorage::from_raw(ua.as_ptr().cast(), Some(ua.len())) }.unwrap()
        };
        assert!(accepted_from(
            &inet("127.0.0.1:8080"),
            &inet("127.0.0.1:8080")
        ));
        assert!(accepted_from(&inet("0.0.0.0:8080"), &inet("10.0.0.5:8080")));
        assert!(accepted_from(
            &inet("[::]:8080"),
            &inet("[::ffff:127.0.0.1]:8080")
        ));
        assert!(
            !accepted_from(&inet("127.0.0.1:8080"), &inet("127.0.0.1:43210")),
            "ephemeral"
        );
        assert!(
            !accepted_from(&inet("127.0.0.1:8080"), &inet("10.0.0.5:8080")),
            "another IP"
        );
        assert!(accepted_from(
            &unix("/run/kechi/demo.sock"),
            &unix("/run/kechi/demo.sock")
        ));
        assert!(!accepted_from(
            &unix("/run/kechi/demo.sock"),
            &unix("/run/other.sock")
        ));
        assert!(!accepted_from(
            &unix("/run/kechi/demo.sock"),
            &inet("127.0.0.1:8080")
        ));
    }

    /// A listening socket on loopback that children inherit (as workers do), and its inode.
    fn inherited_listener() -> (std::net::TcpListener, HashSet<u64>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
        let ino = socket_inode(link.to_str().unwrap()).unwrap();
        nix::fcntl::fcntl(
            &l,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
        (l, [ino].into())
    }

    /// A real child holding an accepted connection is serving; one that only listens is not.
    #[test]
    fn sees_a_real_accepted_connection() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: pidfd_getfd on another process needs root");
            return;
        }
        let (l, inodes) = inherited_listener();
        let port = l.local_addr().unwrap().port();
        let fd = l.as_raw_fd();
        let code = format!(
            "import socket,sys,time; s=socket.socket(fileno={fd}); c,_=s.accept(); print(1, flush=True); time.sleep(30)"
        );
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(code)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(300));
        let addrs = vec![local_address(&l).unwrap()];
        let before = serving_on(Path::new("/proc"), &[pid], &inodes, &addrs);
        let _conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut line = [0u8; 2];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut line)
            .unwrap();
        let after = serving_on(Path::new("/proc"), &[pid], &inodes, &addrs);
        // An outgoing connection of the same process is not an accepted one.
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = vec![local_address(&elsewhere).unwrap()];
        let unrelated = serving_on(Path::new("/proc"), &[pid], &inodes, &other);
        let _ = child.kill();
        let _ = child.wait();
        assert!(!before, "listening only");
        assert!(after, "holding an accepted connection");
        assert!(!unrelated, "a connection from another listener");
    }

    /// A real child blocked in accept(2), poll(2) and select(2) on a listening socket is seen;
    /// the same child sleeping is not.
    #[test]
    fn sees_real_waiters() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: reading another process's syscall and memory needs root");
            return;
        }
        let (l, inodes) = inherited_listener();
        let fd = l.as_raw_fd();
        let scripts = [
            format!("import socket; s=socket.socket(fileno={fd}); s.accept()"),
            format!("import select; p=select.poll(); p.register({fd}, select.POLLIN); p.poll()"),
            format!("import select; select.select([{fd}],[],[])"),
            format!("import select; e=select.epoll(); e.register({fd}, select.EPOLLIN); e.poll()"),
            "import time; time.sleep(30)".to_owned(),
        ];
        for (i, code) in scripts.iter().enumerate() {
            let mut child = std::process::Command::new("python3")
                .arg("-c")
                .arg(code)
                .spawn()
                .unwrap();
            let pid = child.id();
            let deadline = Instant::now() + Duration::from_secs(if i < 4 { 30 } else { 1 });
            let mut seen = false;
            while Instant::now() < deadline && !seen {
                seen = waiting_on(Path::new("/proc"), &[pid], &inodes);
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(seen, i < 4, "{code}");
        }
    }
}

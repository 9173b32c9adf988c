//! The listening sockets' `O_NONBLOCK` flag, kept across restarts of kechid.
//!
//! A socket's file status flags belong to its open file description, which kechid, systemd and
//! every worker share. At every start of kechid, systemd sets or clears `O_NONBLOCK` on the
//! sockets it passes, as the service's `NonBlocking=` says (clears, by default): a restart or a
//! crash of kechid clears the flag under the running workers. An event-loop server (uvicorn,
//! gunicorn's gthread workers, Node) made its listener non-blocking and accepts until `EAGAIN`;
//! with the flag cleared, its `accept` blocks once the queue is empty, and its whole loop with it:
//! its kept-alive connections stop being served, and each new connection it accepts waits for the
//! next one to arrive (measured with uvicorn: `flags: 04002` in `/proc/PID/fdinfo/3` before
//! `systemctl restart kechi@APP`, `02` after, and no new connection answered).
//!
//! So kechid writes down each socket's flag while its workers run ([`record`]: at every memory
//! sample, and before it exits for a restart), and a kechid that adopts running workers puts the
//! flags back at once ([`restore`]). A kechid that starts workers of its own leaves the sockets as
//! systemd gave them: a new worker sets what it needs.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::sockets::Listener;

/// Each listener's address and whether it is non-blocking, as the file has them: one line per
/// socket, `nonblock ADDRESS` or `block ADDRESS`.
pub fn format(flags: &[(String, bool)]) -> String {
    flags
        .iter()
        .map(|(a, nb)| format!("{} {a}\n", if *nb { "nonblock" } else { "block" }))
        .collect()
}

/// The lines of [`format`]; any other line is skipped (a file from another version).
pub fn parse(text: &str) -> Vec<(String, bool)> {
    text.lines()
        .filter_map(|l| {
            let (flag, addr) = l.split_once(' ')?;
            let nb = match flag {
                "nonblock" => true,
                "block" => false,
                _ => return None,
            };
            (!addr.is_empty()).then(|| (addr.to_string(), nb))
        })
        .collect()
}

/// Whether `fd`'s open file description has `O_NONBLOCK`; `None` if it cannot be read.
pub(crate) fn nonblocking(fd: impl AsFd) -> Option<bool> {
    let bits = fcntl(fd, FcntlArg::F_GETFL).ok()?;
    Some(OFlag::from_bits_truncate(bits).contains(OFlag::O_NONBLOCK))
}

fn set_nonblocking(fd: impl AsFd + Copy, on: bool) -> nix::Result<()> {
    let mut f = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    f.set(OFlag::O_NONBLOCK, on);
    fcntl(fd, FcntlArg::F_SETFL(f)).map(drop)
}

/// The flags of the listeners now.
pub fn current(listeners: &[Listener]) -> Vec<(String, bool)> {
    listeners
        .iter()
        .filter_map(|l| Some((l.address.clone(), nonblocking(&l.fd)?)))
        .collect()
}

/// Writes the listeners' flags to `path` when they differ from what it holds (a rename, so a
/// reader never sees half a file).
pub fn record(path: &Path, listeners: &[Listener]) -> std::io::Result<()> {
    let text = format(&current(listeners));
    if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Puts back the flags `path` recorded on the listeners of the same address whose flag differs
/// now; returns those listeners' addresses with the flag they got back.
pub fn restore(path: &Path, listeners: &[Listener]) -> Vec<(String, bool)> {
    let saved = parse(&std::fs::read_to_string(path).unwrap_or_default());
    let mut changed = Vec::new();
    for l in listeners {
        let Some((_, want)) = saved.iter().find(|(a, _)| *a == l.address) else {
            continue;
        };
        if nonblocking(&l.fd) != Some(*want) && set_nonblocking(l.fd.as_fd(), *want).is_ok() {
            changed.push((l.address.clone(), *want));
        }
    }
    changed
}

/// Connects to `listener` and hangs up at once: the connection wakes one thread blocked in
/// `accept` on it ([`crate::accept::blocked_in_accept`]), which gets a connection that ends
/// before a request, and an event loop's next `accept` then sees the flag back on. The connect is
/// non-blocking: it never waits on a full queue.
pub fn knock(listener: &Listener) -> nix::Result<()> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage, connect, getsockname,
        socket,
    };
    let addr: SockaddrStorage = getsockname(listener.fd.as_raw_fd())?;
    let family = addr.family().unwrap_or(AddressFamily::Unix);
    let s = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match connect(s.as_raw_fd(), &addr) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    fn listener() -> Listener {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = l.local_addr().unwrap().to_string();
        Listener {
            fd: l.into(),
            name: "test".into(),
            address,
        }
    }

    #[test]
    fn format_and_parse_round_trip() {
        let f = vec![
            ("127.0.0.1:8080".to_string(), true),
            ("/run/kechi/demo.sock".to_string(), false),
        ];
        assert_eq!(
            format(&f),
            "nonblock 127.0.0.1:8080\nblock /run/kechi/demo.sock\n"
        );
        assert_eq!(parse(&format(&f)), f);
        assert_eq!(
            parse("junk\nnonblock \nmaybe x\nblock [::1]:80\n"),
            vec![("[::1]:80".to_string(), false)]
        );
    }

    #[test]
    fn a_cleared_flag_is_put_back_and_a_blocking_socket_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket-flags");
        let (a, b) = (listener(), listener());
        // a worker made `a` non-blocking; `b` it left blocking
        set_nonblocking(a.fd.as_fd(), true).unwrap();
        let ls = vec![a, b];
        record(&path, &ls).unwrap();
        // systemd starts the next kechid: every flag cleared
        set_nonblocking(ls[0].fd.as_fd(), false).unwrap();
        assert_eq!(
            restore(&path, &ls),
            vec![(ls[0].address.clone(), true)],
            "only the socket whose flag changed"
        );
        assert_eq!(nonblocking(&ls[0].fd), Some(true));
        assert_eq!(nonblocking(&ls[1].fd), Some(false));
        // nothing recorded (a first start): nothing changed
        assert!(restore(&dir.path().join("none"), &ls).is_empty());
    }

    #[test]
    fn knock_wakes_a_thread_blocked_in_accept() {
        // a thread blocked in accept() on a blocking listener, as an event loop is after a
        // restart of kechid cleared the flag under it
        let l = listener();
        let raw = l.fd.as_raw_fd();
        let inode = nix::sys::stat::fstat(&l.fd).unwrap().st_ino;
        let me = std::process::id();
        let t = std::thread::spawn(move || {
            nix::sys::socket::accept(raw).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        });
        let path = Path::new("/proc");
        let t0 = std::time::Instant::now();
        while crate::accept::blocked_in_accept(path, &[me], inode) == 0 {
            assert!(
                t0.elapsed().as_secs() < 10,
                "the thread never blocked in accept"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        knock(&l).unwrap();
        assert!(
            t.join().unwrap().is_ok(),
            "the knock's connection was accepted"
        );
        assert_eq!(crate::accept::blocked_in_accept(path, &[me], inode), 0);
    }
}

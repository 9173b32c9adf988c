//! Fuzz target: the parsers behind `ready.mode = "accept"` (`kechi::accept`): a thread's
//! `/proc/PID/task/TID/syscall` line, an epoll's `fdinfo` (`tfd:` lines), `struct pollfd`
//! arrays and `fd_set` bitmaps read from the worker's memory, `socket:[INODE]` links, and the
//! comparison of a connection's local address with a listener's (`accepted_from`).
//!
//! Contract checked: no panic on any bytes; an `fd_set` gives exactly the set bits, in order;
//! a pollfd array gives one fd per whole 8-byte entry; a syscall line gives a call number that
//! is not negative; an address is accepted from itself, never from a listener on another port,
//! and always from a wildcard listener on its port.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use kechi::accept::{
    accepted_from, parse_epoll_targets, parse_fd_set, parse_pollfds, parse_syscall, socket_inode,
};
use libfuzzer_sys::fuzz_target;
use nix::sys::socket::SockaddrStorage;

/// An address from up to 18 bytes: 4 or 16 for the IP (by the first byte's parity), 2 for the port.
fn address(data: &[u8]) -> Option<SocketAddr> {
    let v6 = data.first()? & 1 == 1;
    let (ip, rest): (IpAddr, &[u8]) = if v6 {
        let b: [u8; 16] = data.get(1..17)?.try_into().ok()?;
        (Ipv6Addr::from(b).into(), data.get(17..)?)
    } else {
        let b: [u8; 4] = data.get(1..5)?.try_into().ok()?;
        (Ipv4Addr::from(b).into(), data.get(5..)?)
    };
    let port = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    Some(SocketAddr::new(ip, port))
}

fn check_text(data: &[u8]) {
    // Memory read from a worker: any bytes.
    let fds = parse_fd_set(data);
    let bits: u32 = data.iter().map(|b| b.count_ones()).sum();
    assert_eq!(fds.len(), bits as usize);
    assert!(fds.windows(2).all(|w| w[0] < w[1]), "fd_set not in order");
    assert_eq!(parse_pollfds(data).len(), data.len() / 8);

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((nr, _)) = parse_syscall(text) {
        assert!(nr >= 0);
    }
    let _ = parse_epoll_targets(text);
    for l in text.lines() {
        if let Some(i) = socket_inode(l) {
            assert!(
                l.starts_with("socket:[") && l.ends_with(']'),
                "inode {i} of {l:?}"
            );
        }
    }

}

fuzz_target!(|data: &[u8]| {
    check_text(data);
    let Some(conn) = address(data) else { return };
    let listener = address(data.get(19..).unwrap_or_default()).unwrap_or(conn);
    let (c, l) = (SockaddrStorage::from(conn), SockaddrStorage::from(listener));
    assert!(accepted_from(&c, &c), "{conn} from itself");
    if listener.port() != conn.port() {
        assert!(!accepted_from(&l, &c), "{conn} from {listener}");
    }
    let wildcard: IpAddr = if conn.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let any = SockaddrStorage::from(SocketAddr::new(wildcard, conn.port()));
    assert!(accepted_from(&any, &c), "{conn} from the wildcard");
});

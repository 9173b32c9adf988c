//! Fuzz target: the parsers behind `ready.mode = "accept"` (`kechi::accept`): a thread's
//! `/proc/PID/task/TID/syscall` line, an epoll's `fdinfo` (`tfd:` lines), `struct pollfd`
//! arrays and `fd_set` bitmaps read from the worker's memory, `socket:[INODE]` links, and the
//! socket tables `/proc/net/{tcp,tcp6,unix}` with the accepted-connection check over them.
//!
//! Contract checked: no panic on any bytes; an `fd_set` gives exactly the set bits, in order;
//! a pollfd array gives one fd per whole 8-byte entry; a syscall line gives a call number that
//! is not negative; a connection counts as accepted only if the tables hold a listener among
//! the given ones and a non-listening socket on its port or path.
#![no_main]

use std::collections::HashSet;

use kechi::accept::{
    SocketEntry, accepted_from, parse_epoll_targets, parse_fd_set, parse_net_tcp, parse_net_unix,
    parse_pollfds, parse_syscall, socket_inode,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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

    let mut entries: Vec<SocketEntry> = parse_net_tcp(text);
    entries.extend(parse_net_unix(text));
    // The listeners: every inode the tables mention as listening, and one that is not there.
    let listeners: HashSet<u64> = entries
        .iter()
        .filter(|e| e.listening)
        .map(|e| e.inode)
        .chain([u64::MAX])
        .collect();
    let held: Vec<u64> = entries.iter().map(|e| e.inode).collect();
    let accepted = accepted_from(&entries, &listeners, &held);
    if accepted {
        assert!(entries.iter().any(|e| e.listening) && entries.iter().any(|e| !e.listening));
    }
    assert!(!accepted_from(&entries, &HashSet::new(), &held));
});

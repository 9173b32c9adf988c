//! Steering on the real kernel: a reuseport group on loopback, connections counted in each
//! socket's accept queue. Loading a BPF program takes root (CAP_SYS_ADMIN or CAP_BPF).

use std::net::TcpStream;
use std::time::Instant;

use super::*;

pub(crate) fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: loading a BPF program needs root");
    false
}

/// A listening socket as systemd makes one with `ReusePort=yes`, on a free loopback port.
pub(crate) fn activated() -> Listener {
    // SAFETY: plain socket calls on a new fd we own.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0);
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).unwrap();
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    let r = unsafe {
        libc::bind(
            raw,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    assert_eq!(r, 0, "bind: {}", io::Error::last_os_error());
    assert_eq!(unsafe { libc::listen(raw, 128) }, 0);
    let address = crate::sockets::address_of(fd.as_fd());
    Listener {
        fd,
        name: "test".into(),
        address,
    }
}

fn queued(fd: BorrowedFd<'_>) -> u32 {
    accept_queue(fd).unwrap().0
}

/// Opens `n` connections and waits until `fd`'s queue holds `want`.
fn connect(l: &Listener, n: usize, conns: &mut Vec<TcpStream>, fd: BorrowedFd<'_>, want: u32) {
    for _ in 0..n {
        conns.push(TcpStream::connect(l.address.as_str()).unwrap());
    }
    let t = Instant::now();
    while queued(fd) < want && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn new_connections_go_to_the_serving_sockets_only_and_a_closed_ones_queue_moves_to_them() {
    if !root() {
        return;
    }
    let l = activated();
    assert!(steerable(l.fd.as_fd()));
    let mut g = Group::create(&l).unwrap();
    let w1 = g.worker_socket(&l).unwrap();
    let w2 = g.worker_socket(&l).unwrap();
    assert_ne!(w1.slot, w2.slot);
    assert_eq!(crate::sockets::address_of(w1.fd.as_fd()), l.address);
    let mut conns = Vec::new();

    // only w1 serves: every connection waits in w1's queue
    g.set_serving(&[w1.slot]).unwrap();
    connect(&l, 10, &mut conns, w1.fd.as_fd(), 10);
    assert_eq!(
        (
            queued(l.fd.as_fd()),
            queued(w1.fd.as_fd()),
            queued(w2.fd.as_fd())
        ),
        (0, 10, 0)
    );

    // w1 drained: w2 gets them all
    g.set_serving(&[w2.slot]).unwrap();
    connect(&l, 10, &mut conns, w2.fd.as_fd(), 10);
    assert_eq!((queued(w1.fd.as_fd()), queued(w2.fd.as_fd())), (10, 10));

    // none serves: they wait on the activated socket
    g.set_serving(&[]).unwrap();
    connect(&l, 5, &mut conns, l.fd.as_fd(), 5);
    assert_eq!(
        (
            queued(l.fd.as_fd()),
            queued(w1.fd.as_fd()),
            queued(w2.fd.as_fd())
        ),
        (5, 10, 10)
    );

    // a worker serves again: the parked ones go to it, the activated socket still listens
    g.set_serving(&[w2.slot]).unwrap();
    assert_eq!(g.unpark(&l).unwrap(), 5);
    assert_eq!((queued(l.fd.as_fd()), queued(w2.fd.as_fd())), (0, 15));
    assert!(
        steerable(l.fd.as_fd()),
        "the activated socket listens again"
    );
    connect(&l, 1, &mut conns, w2.fd.as_fd(), 16);
    assert_eq!(queued(w2.fd.as_fd()), 16);

    // w1 closes with 10 in its queue (a crash): they move to w2, none is reset
    let inode2 = w2.inode;
    drop(w1);
    let t = Instant::now();
    while queued(w2.fd.as_fd()) < 26 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(queued(w2.fd.as_fd()), 26);
    // and /proc/net/tcp tells the same, by inode
    assert_eq!(queues(Path::new("/proc"), &[inode2]), vec![(inode2, 26)]);
}

#[test]
fn a_serving_slot_whose_socket_closed_is_skipped() {
    if !root() {
        return;
    }
    let l = activated();
    let mut g = Group::create(&l).unwrap();
    let w1 = g.worker_socket(&l).unwrap();
    let w2 = g.worker_socket(&l).unwrap();
    g.set_serving(&[w1.slot, w2.slot]).unwrap();
    drop(w1);
    let mut conns = Vec::new();
    connect(&l, 20, &mut conns, w2.fd.as_fd(), 20);
    assert_eq!((queued(l.fd.as_fd()), queued(w2.fd.as_fd())), (0, 20));
}

#[test]
fn a_socket_without_reuseport_or_not_tcp_is_not_steered() {
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(!steerable(plain.as_fd()));
    let dir = tempfile::tempdir().unwrap();
    let unix = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
    assert!(!steerable(unix.as_fd()));
}

#[test]
fn queues_of_listeners_by_inode() {
    let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:9C40 01 00000000:00000007 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4244 1 0000000000000000 100 0 0 10 0
";
    assert_eq!(
        parse_queues(text, &[4242, 4243, 4244]),
        vec![(4242, 3), (4244, 0)]
    );
    assert_eq!(parse_queues(text, &[9]), vec![]);
}

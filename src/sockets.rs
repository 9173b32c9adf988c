//! The listening sockets: they belong to kechid (and systemd), never to a worker, so they
//! outlive every worker and kechid itself.
//!
//! Sources, in order: socket activation (`kechi@APP.socket`: `LISTEN_FDS`/`LISTEN_FDNAMES`,
//! passed again at every start of kechid), then the `listen` addresses of the config, which
//! kechid binds itself once and keeps in systemd's fd store (`FDSTORE=1`, named
//! `listen-ADDRESS` by [`store_name`]), so after a restart they come back through `LISTEN_FDS`
//! too and are never rebound. Workers get them as fds 3.. ([`crate::spawn`]) with `LISTEN_FDNAMES` and
//! `SERVER_STARTER_PORT` (Server::Starter's `HOST:PORT=FD;PATH=FD`).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::sys::socket::{SockaddrLike, SockaddrStorage, getsockname};

/// A listening socket held by kechid.
#[derive(Debug)]
pub struct Listener {
    pub fd: OwnedFd,
    /// Its name for `LISTEN_FDNAMES` (the socket unit's name, or [`store_name`] of the address).
    pub name: String,
    /// Where it listens, as Server::Starter writes it: `127.0.0.1:8080`, `[::1]:8080`, `/run/x.sock`.
    pub address: String,
}

const STORE_PREFIX: &str = "listen-";
/// systemd's longest `FDNAME=` (FDNAME_MAX).
const FDNAME_MAX: usize = 255;

/// The name a `listen` address's socket has in the fd store and in `LISTEN_FDNAMES`:
/// `listen-ADDRESS`, with `%`, `:`, control and non-ASCII bytes written `%XX`.
///
/// systemd ignores an `FDNAME=` with a `:` (the separator of `LISTEN_FDNAMES`) or a byte outside
/// printable ASCII and stores the fd as "stored": the next kechid would not recognise its socket,
/// try to bind the address again and fail while the adopted workers still listen on it. The `:`
/// would also split the name in two in the workers' `LISTEN_FDNAMES`. The escaping is one-to-one,
/// so two addresses never share a name; an address whose name would pass systemd's 255 bytes is
/// named by a hash of it instead.
/// Whether a listener of this name is a `listen` address kechid bound (kept in the fd store),
/// rather than a socket from the socket unit.
pub fn is_bound_by_kechid(name: &str) -> bool {
    name.starts_with(STORE_PREFIX)
}

pub fn store_name(address: &str) -> String {
    let mut name = String::from(STORE_PREFIX);
    for b in address.bytes() {
        match b {
            b'%' | b':' | ..0x20 | 0x7f.. => name.push_str(&format!("%{b:02X}")),
            _ => name.push(char::from(b)),
        }
    }
    if name.len() <= FDNAME_MAX {
        return name;
    }
    // FNV-1a, 64 bits: stable across builds, so a restarted kechid finds the same name
    let hash = address.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{STORE_PREFIX}hash-{hash:016x}")
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "listen address {0:?}: expected \"/path.sock\", \"HOST:PORT\", \"[V6]:PORT\" or \":PORT\""
    )]
    BadAddress(String),
    #[error("binding {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where a socket listens, from the kernel's own record of it.
pub fn address_of(fd: BorrowedFd<'_>) -> String {
    match getsockname::<SockaddrStorage>(fd.as_raw_fd()) {
        Ok(sa) => {
            if let Some(v4) = sa.as_sockaddr_in() {
                format!("{}:{}", v4.ip(), v4.port())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                format!("[{}]:{}", v6.ip(), v6.port())
            } else if let Some(un) = sa.as_unix_addr() {
                match (un.path(), un.as_abstract()) {
                    (Some(p), _) => p.display().to_string(),
                    (None, Some(a)) => format!("@{}", String::from_utf8_lossy(a)),
                    _ => "unnamed".into(),
                }
            } else {
                format!("family-{}", sa.family().map_or(0, |f| f as i32))
            }
        }
        Err(e) => format!("unknown ({e})"),
    }
}

/// Whether a socket is TCP (IPv4 or IPv6).
pub fn is_tcp(fd: BorrowedFd<'_>) -> bool {
    matches!(
        getsockname::<SockaddrStorage>(fd.as_raw_fd()).map(|sa| sa.family()),
        Ok(Some(
            nix::sys::socket::AddressFamily::Inet | nix::sys::socket::AddressFamily::Inet6
        ))
    )
}

/// Takes the sockets systemd passed (activation and fd store). Call before any thread starts:
/// it unsets `LISTEN_*` in kechid's own environment.
pub fn take_inherited() -> Vec<Listener> {
    // SAFETY: called from main before the runtime starts, while kechid has a single thread.
    let fds = match unsafe { sd_notify::listen_fds_with_names_and_unset_env() } {
        Ok(f) => f.collect::<Vec<_>>(),
        Err(e) => {
            eprintln!("kechid: ignoring malformed LISTEN_FDS: {e}");
            return vec![];
        }
    };
    fds.into_iter()
        .map(|(raw, name)| {
            // SAFETY: systemd passed us these fds; nothing else in kechid owns them.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let address = address_of(fd.as_fd());
            Listener { fd, name, address }
        })
        .collect()
}

/// Parses a `listen` entry into what to bind.
#[derive(Debug)]
pub enum Bindable {
    Unix(String),
    Tcp(SocketAddr),
}

pub fn parse_address(a: &str) -> Result<Bindable, SocketError> {
    if a.starts_with('/') {
        return Ok(Bindable::Unix(a.to_owned()));
    }
    let full = if let Some(port) = a.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        a.to_owned()
    };
    full.parse()
        .map(Bindable::Tcp)
        .map_err(|_| SocketError::BadAddress(a.to_owned()))
}

/// The sockets for the configured `listen` addresses: those systemd gave back from the fd
/// store are reused, the others bound now and stored. Inherited sockets not claimed by an
/// address stay in `inherited` (socket activation).
pub fn bind_configured(
    addresses: &[String],
    inherited: &mut Vec<Listener>,
) -> Result<Vec<Listener>, SocketError> {
    let mut out = Vec::new();
    for a in addresses {
        let name = store_name(a);
        if let Some(i) = inherited.iter().position(|l| l.name == name) {
            out.push(inherited.remove(i));
            continue;
        }
        // An earlier kechid stored its sockets under names systemd rejects, so systemd keeps
        // them as "stored": such a socket is recognised by its address (binding the address
        // again would fail, the workers still hold it). It stays in the store under that name
        // (systemd ignores the same socket stored twice); the workers see its proper name.
        if let Some(i) = inherited
            .iter()
            .position(|l| l.name == UNNAMED && same_address(a, &l.address))
        {
            let mut l = inherited.remove(i);
            l.name = name;
            out.push(l);
            continue;
        }
        let bind_err = |source| SocketError::Bind {
            address: a.clone(),
            source,
        };
        let fd: OwnedFd = match parse_address(a)? {
            Bindable::Unix(path) => {
                // A stale socket file from an earlier run would make bind fail; only a socket is removed.
                if std::fs::symlink_metadata(&path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(&path);
                }
                UnixListener::bind(Path::new(&path))
                    .map_err(bind_err)?
                    .into()
            }
            Bindable::Tcp(sa) => TcpListener::bind(sa).map_err(bind_err)?.into(),
        };
        let address = address_of(fd.as_fd());
        let l = Listener { fd, name, address };
        store(&l);
        out.push(l);
    }
    Ok(out)
}

/// The name systemd gives a stored fd that came without a valid `FDNAME=`.
const UNNAMED: &str = "stored";

/// Whether a configured `listen` entry is the address a socket is bound to.
fn same_address(configured: &str, bound: &str) -> bool {
    match parse_address(configured) {
        Ok(Bindable::Unix(path)) => path == bound,
        Ok(Bindable::Tcp(sa)) => sa.to_string() == bound,
        Err(_) => false,
    }
}

/// Keeps a socket in systemd's fd store so a restarted kechid gets the very same socket back.
fn store(l: &Listener) {
    if let Err(e) = sd_notify::notify_with_fds(
        &[
            sd_notify::NotifyState::FdStore,
            sd_notify::NotifyState::FdName(&l.name),
        ],
        &[l.fd.as_fd()],
    ) {
        tracing::debug!("FDSTORE=1 for {}: {e}", l.address);
    }
}

/// `SERVER_STARTER_PORT` for sockets placed at fds 3..: `ADDRESS=FD` joined by `;`.
pub fn server_starter_port(listeners: &[Listener]) -> Option<String> {
    if listeners.is_empty() {
        return None;
    }
    Some(
        listeners
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{}={}", l.address, 3 + i))
            .collect::<Vec<_>>()
            .join(";"),
    )
}

/// The raw fds, in order (they become 3.. in the worker).
pub fn raw_fds(listeners: &[Listener]) -> Vec<RawFd> {
    listeners.iter().map(|l| l.fd.as_raw_fd()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_server_starter_format() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a.sock").display().to_string();
        let mut inherited = vec![];
        let ls = bind_configured(&["127.0.0.1:0".into(), sock.clone()], &mut inherited).unwrap();
        assert!(ls[0].address.starts_with("127.0.0.1:"));
        assert_eq!(ls[1].address, sock);
        assert_eq!(ls[1].name, store_name(&sock));
        let ssp = server_starter_port(&ls).unwrap();
        assert_eq!(ssp, format!("{}=3;{sock}=4", ls[0].address));
        // rebinding the same path over a stale socket works
        drop(ls);
        assert!(bind_configured(std::slice::from_ref(&sock), &mut vec![]).is_ok());
    }

    #[test]
    fn stored_sockets_are_reused_not_rebound() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let fd: OwnedFd = l.into();
        let raw = fd.as_raw_fd();
        let mut inherited = vec![Listener {
            fd,
            name: store_name(&addr),
            address: addr.clone(),
        }];
        let out = bind_configured(std::slice::from_ref(&addr), &mut inherited).unwrap();
        assert_eq!(out[0].fd.as_raw_fd(), raw);
        assert!(inherited.is_empty());
    }

    #[test]
    fn sockets_stored_unnamed_are_recognised_by_address() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let other_addr = other.local_addr().unwrap().to_string();
        let fd: OwnedFd = l.into();
        let raw = fd.as_raw_fd();
        let mut inherited = vec![
            Listener {
                fd: other.into(),
                name: UNNAMED.into(),
                address: other_addr,
            },
            Listener {
                fd,
                name: UNNAMED.into(),
                address: addr.clone(),
            },
        ];
        let out = bind_configured(std::slice::from_ref(&addr), &mut inherited).unwrap();
        assert_eq!(
            out[0].fd.as_raw_fd(),
            raw,
            "the stored socket, not a new one"
        );
        assert_eq!(
            out[0].name,
            store_name(&addr),
            "the workers see its proper name"
        );
        assert_eq!(inherited.len(), 1, "the other address stays unclaimed");
        assert!(same_address(":8080", "0.0.0.0:8080"));
        assert!(same_address("/run/a.sock", "/run/a.sock"));
        assert!(!same_address("127.0.0.1:8080", "127.0.0.1:8081"));
    }

    /// systemd's rule for `FDNAME=` and `LISTEN_FDNAMES` entries (fdname_is_valid).
    fn valid_fdname(n: &str) -> bool {
        n.len() <= 255 && n.bytes().all(|b| (b' '..0x7f).contains(&b) && b != b':')
    }

    #[test]
    fn store_names_are_valid_fdnames_and_distinct() {
        assert_eq!(store_name("127.0.0.1:8080"), "listen-127.0.0.1%3A8080");
        assert_eq!(store_name("[::1]:80"), "listen-[%3A%3A1]%3A80");
        assert_eq!(store_name("/run/app.sock"), "listen-/run/app.sock");
        let long = format!("/run/{}.sock", "é:".repeat(60));
        let addresses = [
            "127.0.0.1:8080",
            "[::1]:80",
            ":8080",
            "/run/a:b.sock",
            "/run/a%3Ab.sock",
            "/run/tab\there",
            "/run/ünï.sock",
            long.as_str(),
        ];
        let names: Vec<String> = addresses.iter().map(|a| store_name(a)).collect();
        for (a, n) in addresses.iter().zip(&names) {
            assert!(valid_fdname(n), "{a:?} -> {n:?}");
            assert_eq!(store_name(a), *n, "the same name every time");
        }
        let distinct: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        assert!(names[7].starts_with("listen-hash-"), "{}", names[7]);
    }

    #[test]
    fn bad_addresses() {
        for a in ["nope", "1.2.3.4", "host:99999"] {
            assert!(parse_address(a).is_err(), "{a}");
        }
        assert!(matches!(parse_address(":8080"), Ok(Bindable::Tcp(_))));
        assert!(matches!(parse_address("[::1]:80"), Ok(Bindable::Tcp(_))));
    }
}

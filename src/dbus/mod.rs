//! A small D-Bus client: just what kechid needs to talk to systemd's manager.
//!
//! kechid's code is resident for its whole life, so its size is memory: a general D-Bus library
//! (proxies, an object server, typed serialization) costs far more code than the dozen method
//! calls and one signal kechid uses. This client does method calls matched to their replies by
//! serial, error replies carrying their name and text, and signals handed to whoever listens;
//! nothing else (no object server, no fd passing, no name ownership).
//!
//! - [`wire`]: the pure part, values and messages to and from bytes, robust against any input;
//! - [`auth`]: the SASL `EXTERNAL` handshake;
//! - [`conn`]: the connection on a unix socket, with a reader task that dispatches replies and
//!   signals and reports when the link is gone.
//!
//! Addresses ([`parse_address`]): `unix:path=` and `unix:abstract=` entries; the system bus is
//! `$DBUS_SYSTEM_BUS_ADDRESS` or `/run/dbus/system_bus_socket`, the user's bus
//! `$DBUS_SESSION_BUS_ADDRESS` or `$XDG_RUNTIME_DIR/bus`.

pub mod auth;
pub mod conn;
pub mod wire;

pub use conn::Connection;
pub use wire::{Message, Value};

/// Why a connection or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported D-Bus address {0:?} (only unix:path= and unix:abstract=)")]
    Address(String),
    #[error("D-Bus authentication refused: {0}")]
    Auth(String),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// The peer answered with an error reply.
    #[error("{name}: {message}")]
    Method { name: String, message: String },
    #[error("unexpected reply: {0}")]
    Reply(&'static str),
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the D-Bus connection is closed")]
    Closed,
    #[error("{0}")]
    Failure(String),
}

impl Error {
    /// Whether this is an error reply named `name` (e.g. `org.freedesktop.systemd1.NoSuchUnit`).
    pub fn is_named(&self, name: &str) -> bool {
        matches!(self, Error::Method { name: n, .. } if n == name)
    }
}

/// Where a bus listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddr {
    Path(std::path::PathBuf),
    /// A Linux abstract socket name (without the leading NUL).
    Abstract(Vec<u8>),
}

/// The first usable entry of a D-Bus address list (`;`-separated `transport:key=value,...`,
/// values %-escaped).
pub fn parse_address(address: &str) -> Result<SocketAddr, Error> {
    for entry in address.split(';') {
        let Some(params) = entry.strip_prefix("unix:") else {
            continue;
        };
        for kv in params.split(',') {
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            let value = unescape(value).ok_or_else(|| Error::Address(address.to_owned()))?;
            match key {
                "path" => {
                    use std::os::unix::ffi::OsStringExt;
                    let p = std::ffi::OsString::from_vec(value);
                    return Ok(SocketAddr::Path(p.into()));
                }
                "abstract" => return Ok(SocketAddr::Abstract(value)),
                _ => {}
            }
        }
    }
    Err(Error::Address(address.to_owned()))
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A value for an address (`%XX` for every byte outside the set the specification leaves
/// unescaped), so a `,`, `;` or `%` in a directory name cannot change what the address says.
fn escape(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-_/.*".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// The system bus's address.
pub fn system_bus_address() -> String {
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".into())
}

/// The user's (session) bus address, if there is one to try.
pub fn session_bus_address() -> Result<String, Error> {
    if let Ok(a) = std::env::var("DBUS_SESSION_BUS_ADDRESS") {
        return Ok(a);
    }
    match std::env::var("XDG_RUNTIME_DIR") {
        Ok(dir) => Ok(format!("unix:path={}/bus", escape(dir.as_bytes()))),
        Err(_) => Err(Error::Failure(
            "neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR is set".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("unix:path=/run/dbus/system_bus_socket").unwrap(),
            SocketAddr::Path("/run/dbus/system_bus_socket".into())
        );
        assert_eq!(
            parse_address("unix:abstract=/tmp/dbus-x%2cy,guid=00ff").unwrap(),
            SocketAddr::Abstract(b"/tmp/dbus-x,y".to_vec())
        );
        assert_eq!(
            parse_address("tcp:host=localhost,port=1;unix:guid=1,path=/run/user/0/bus").unwrap(),
            SocketAddr::Path("/run/user/0/bus".into())
        );
        let dir = b"/run/user/1000/a,b;c%d \xc3\xa9";
        assert_eq!(
            parse_address(&format!("unix:path={}/bus", escape(dir))).unwrap(),
            SocketAddr::Path(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
                b"/run/user/1000/a,b;c%d \xc3\xa9/bus"
            ))),
            "an escaped directory comes back byte for byte"
        );
        for bad in [
            "tcp:host=localhost,port=1",
            "unix:tmpdir=/tmp",
            "",
            "unix:path=%zz",
        ] {
            let err = parse_address(bad).unwrap_err();
            assert!(matches!(err, Error::Address(_)), "{bad}: {err}");
        }
    }
}

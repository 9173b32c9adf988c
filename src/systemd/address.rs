//! Where the manager's bus listens: the system bus when kechid runs as root, the user's bus
//! with `--user`.
//!
//! Computed here rather than left to zbus: the user bus found through `XDG_RUNTIME_DIR` is
//! handed over as a socket path, not as address text, so a directory holding `,`, `;` or `%`
//! cannot change what the address says; and a user bus with neither variable set is a clear
//! error rather than a guessed path.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;

use zbus::Address;
use zbus::address::transport::{Transport, Unix, UnixSocket};

/// The system bus: `$DBUS_SYSTEM_BUS_ADDRESS`, else the standard socket.
pub fn system_bus() -> zbus::Result<Address> {
    let text = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".into());
    Address::from_str(&text)
}

/// The user's bus: `$DBUS_SESSION_BUS_ADDRESS`, else `$XDG_RUNTIME_DIR/bus`.
pub fn user_bus() -> zbus::Result<Address> {
    user_bus_from(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS"),
        std::env::var_os("XDG_RUNTIME_DIR"),
    )
}

fn user_bus_from(
    session: Option<OsString>,
    runtime_dir: Option<OsString>,
) -> zbus::Result<Address> {
    if let Some(a) = session {
        let text = a
            .into_string()
            .map_err(|_| zbus::Error::Address("DBUS_SESSION_BUS_ADDRESS is not UTF-8".into()))?;
        return Address::from_str(&text);
    }
    match runtime_dir {
        Some(dir) => {
            let socket = PathBuf::from(dir).join("bus");
            Ok(Transport::Unix(Unix::new(UnixSocket::File(socket))).into())
        }
        None => Err(zbus::Error::Address(
            "neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR is set \
             (run kechid --user in the user's session, or set one of them)"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn socket(a: &Address) -> PathBuf {
        match a.transport() {
            Transport::Unix(u) => match u.path() {
                UnixSocket::File(p) => p.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn session_address_wins() {
        let a = user_bus_from(
            Some("unix:path=/run/user/7/bus".into()),
            Some("/elsewhere".into()),
        );
        assert_eq!(socket(&a.unwrap()), PathBuf::from("/run/user/7/bus"));
    }

    #[test]
    fn runtime_dir_is_taken_byte_for_byte() {
        let raw = b"/run/user/1000/a,b;c%d \xc3\xa9".to_vec();
        let a = user_bus_from(None, Some(OsString::from_vec(raw.clone()))).unwrap();
        let want = PathBuf::from(OsString::from_vec(raw)).join("bus");
        assert_eq!(socket(&a), want);
    }

    #[test]
    fn no_user_bus_is_an_error_naming_the_variables() {
        let e = user_bus_from(None, None).unwrap_err();
        assert!(e.to_string().contains("XDG_RUNTIME_DIR"), "{e}");
    }
}

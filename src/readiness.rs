//! kechid's own notify socket: workers (or any process of theirs) send `READY=1` here, as they
//! would to systemd (`NOTIFY_SOCKET`, sd_notify protocol).
//!
//! The sender is identified by the kernel-checked credentials on each datagram (SO_PASSCRED),
//! never by what the message says; the driver maps that pid to a worker by its cgroup (the
//! worker's scope) or its session (foreground mode). Anyone may write to the socket, but a
//! message from a process that is not in a worker is ignored.

use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, setsockopt, sockopt};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

use crate::app::AppName;

/// What a notify message says, as far as kechi cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub stopping: bool,
    pub status: Option<String>,
}

/// Parses newline-separated `KEY=VALUE` assignments (sd_notify's format). Unknown keys and
/// malformed lines are ignored, as systemd does.
pub fn parse(bytes: &[u8]) -> Message {
    let mut m = Message::default();
    for line in bytes.split(|b| *b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        match line.split_once('=') {
            Some(("READY", "1")) => m.ready = true,
            Some(("STOPPING", "1")) => m.stopping = true,
            Some(("STATUS", s)) => m.status = Some(s.chars().take(256).collect()),
            _ => {}
        }
    }
    m
}

/// The serial of `app`'s worker scope named in a `/proc/PID/cgroup` text, if any (the last
/// path component that is one of the app's scopes; v1 lines and the v2 line alike).
pub fn serial_from_cgroup(app: &AppName, proc_cgroup: &str) -> Option<u64> {
    proc_cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .find_map(|comp| app.parse_scope_serial(comp))
}

/// The bound socket.
#[derive(Debug)]
pub struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds `dir/APP.notify`, replacing a stale one.
    pub fn bind(dir: &Path, app: &AppName) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{app}.notify"));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path)?;
        setsockopt(&sock, sockopt::PassCred, &true)?;
        // Workers run as other users and must be able to send; senders are authenticated by
        // their credentials, not by the file mode.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok(NotifySocket { sock, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next message and the sender's pid (0 if the kernel gave no credentials).
    pub async fn recv(&self) -> std::io::Result<(i32, Message)> {
        loop {
            self.sock.readable().await?;
            let got = self.sock.try_io(Interest::READABLE, || {
                let mut buf = [0u8; 4096];
                let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<UnixAddr>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut pid = 0;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmCredentials(cred) = c {
                            pid = cred.pid();
                        }
                    }
                }
                let n = msg.bytes;
                Ok((pid, parse(&buf[..n])))
            });
            match got {
                Ok(v) => return Ok(v),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert!(parse(b"READY=1").ready);
        let m = parse(b"STATUS=warming up\nREADY=1\n");
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("warming up"));
        assert!(!parse(b"READY=0").ready);
        assert!(!parse(b"\xff\xfeREADY").ready);
        assert!(parse(b"X=1\nSTOPPING=1").stopping);
    }

    #[test]
    fn serial_by_cgroup() {
        let app = AppName::new("demo").unwrap();
        let v2 = "0::/kechi.slice/kechi-demo.slice/kechi-demo-12.scope\n";
        assert_eq!(serial_from_cgroup(&app, v2), Some(12));
        let v1 = "12:memory:/kechi.slice/kechi-demo.slice/kechi-demo-3.scope\n1:name=systemd:/kechi.slice/kechi-demo.slice/kechi-demo-3.scope\n0::/\n";
        assert_eq!(serial_from_cgroup(&app, v1), Some(3));
        assert_eq!(
            serial_from_cgroup(
                &app,
                "0::/kechi.slice/kechi-demo.slice/kechi@demo.service\n"
            ),
            None
        );
        assert_eq!(
            serial_from_cgroup(
                &app,
                "0::/kechi.slice/kechi-other.slice/kechi-other-3.scope\n"
            ),
            None
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn receives_with_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let app = AppName::new("demo").unwrap();
        let s = NotifySocket::bind(dir.path(), &app).unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1\nSTATUS=ok", s.path()).unwrap();
        let (pid, m) = s.recv().await.unwrap();
        assert_eq!(pid, std::process::id() as i32);
        assert!(m.ready);
    }
}

//! kechid's side of the control socket: binds `/run/kechi/APP.ctl`, checks each peer's kernel
//! credentials, reads one request and hands it to the driver's loop, then writes the reply.
//! Slow or hostile clients only ever hold their own task, never the driver.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::app::AppName;
use crate::control::{self, Reply, Request};

/// Requests go to the driver with a channel for the reply.
pub type Inbox = mpsc::UnboundedSender<(Request, oneshot::Sender<Reply>)>;

/// Who besides root may ask: a group id, or none. Shared with the serving task so a reload
/// that changes `control.group` takes effect for the next connection.
pub type ControlGroup = std::sync::Arc<std::sync::Mutex<Option<u32>>>;

/// Sets the socket's mode and group for `control_gid`: 0660 and that group, else 0600 (root).
pub fn set_access(path: &Path, control_gid: Option<u32>) -> std::io::Result<()> {
    let mode = if control_gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    nix::unistd::chown(
        path,
        None,
        Some(control_gid.map_or_else(nix::unistd::Gid::effective, nix::unistd::Gid::from_raw)),
    )?;
    Ok(())
}

/// Binds the socket: mode 0660 with group `control_gid` if set, else 0600 (root only).
pub fn bind(
    runtime_dir: &Path,
    app: &AppName,
    control_gid: Option<u32>,
) -> std::io::Result<UnixListener> {
    std::fs::create_dir_all(runtime_dir)?;
    let path = control::socket_path(runtime_dir, app.as_str());
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path)?;
    set_access(&path, control_gid)?;
    Ok(l)
}

/// Accepts connections forever.
pub async fn serve(listener: UnixListener, control_gid: ControlGroup, inbox: Inbox) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let inbox = inbox.clone();
        let control_gid = control_gid.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                handle(conn, control_gid.lock().map(|g| *g).unwrap_or(None), inbox),
            )
            .await;
        });
    }
}

/// The supplementary groups the peer had when it connected (SO_PEERGROUPS, Linux 4.13+), as
/// the kernel recorded them with its uid and gid. Reading `/proc/PID/status` instead would ask
/// about whatever process holds that pid by the time kechid looks (the peer may have exited and
/// its pid been reused) and fails for peers in another pid namespace (pid 0). `None` only when
/// the kernel does not know the option.
fn peer_groups(fd: std::os::fd::RawFd) -> Option<Vec<u32>> {
    const SIZE: usize = std::mem::size_of::<libc::gid_t>();
    let mut buf: Vec<libc::gid_t> = vec![0; 32];
    // The kernel says how much room it needs (ERANGE); groups can change between two calls only
    // for a different peer, never for this socket, so the second call fits.
    for _ in 0..3 {
        let mut len = (buf.len() * SIZE) as libc::socklen_t;
        // SAFETY: `buf` has room for `len` bytes; the kernel writes at most that and sets `len`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r == 0 {
            buf.truncate(len as usize / SIZE);
            return Some(buf);
        }
        if nix::Error::last() != nix::Error::ERANGE {
            return None;
        }
        buf.resize(len as usize / SIZE + 1, 0);
    }
    None
}

/// The supplementary groups of a process, from /proc: only for kernels without SO_PEERGROUPS.
fn groups_of(pid: i32) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return vec![];
    };
    text.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Reads and drops what a refused client sends, up to its request's end (or MAX_MESSAGE), so
/// that its write of the request completes and it reads the refusal instead of failing with
/// EPIPE on a connection closed under it. Nothing of it is parsed.
async fn drain_request(conn: &mut UnixStream) {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let mut total = 0;
    while total <= control::MAX_MESSAGE {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) if chunk[..n].contains(&0) => return,
            Ok(n) => total += n,
        }
    }
}

async fn handle(conn: UnixStream, control_gid: Option<u32>, inbox: Inbox) {
    let refusal = match conn.peer_cred() {
        Ok(cred) => {
            let mut groups = {
                use std::os::fd::AsRawFd;
                peer_groups(conn.as_raw_fd())
            }
            .unwrap_or_else(|| cred.pid().map(groups_of).unwrap_or_default());
            groups.push(cred.gid());
            (!control::allowed(cred.uid(), &groups, control_gid)).then(|| {
                Reply::error(
                    "PermissionDenied",
                    "only root or members of control.group may use kechid's control socket",
                )
            })
        }
        Err(e) => Some(Reply::error(
            "PermissionDenied",
            format!("cannot read peer credentials: {e}"),
        )),
    };
    answer(conn, refusal, inbox).await;
}

/// Answers one connection: with `refusal` if the peer may not ask (its request is read and
/// dropped, never parsed), else with the driver's reply to its request.
async fn answer(mut conn: UnixStream, refusal: Option<Reply>, inbox: Inbox) {
    let reply = if let Some(refusal) = refusal {
        drain_request(&mut conn).await;
        refusal
    } else {
        match control::read_message::<_, Request>(&mut conn).await {
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if inbox.send((req, tx)).is_err() {
                    Reply::error("Unavailable", "kechid is shutting down")
                } else {
                    rx.await
                        .unwrap_or_else(|_| Reply::error("Unavailable", "kechid is shutting down"))
                }
            }
            Err(e) => Reply::error("InvalidRequest", e.to_string()),
        }
    };
    let _ = conn.write_all(&control::encode(&reply)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn peer_groups_are_the_connecting_process_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut got = peer_groups(a.as_raw_fd()).expect("SO_PEERGROUPS (Linux 4.13+)");
        let mut want: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_client_reads_the_refusal() {
        // The request is larger than the socket's buffer, so the client is still writing when
        // kechid decides. Were the connection closed without reading, the client's write would
        // fail (EPIPE) and kechictl would report an I/O error instead of "denied" (exit 4).
        let (inbox, _rx) = mpsc::unbounded_channel();
        let (client, server) = UnixStream::pair().unwrap();
        let refusal = Reply::error("PermissionDenied", "no");
        let served = tokio::spawn(answer(server, Some(refusal), inbox));
        let reply = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut c = client.into_std().unwrap();
            c.set_nonblocking(false).unwrap();
            let mut req = control::encode(&Request::Status {});
            req.splice(0..0, std::iter::repeat_n(b' ', 300_000));
            c.write_all(&req).unwrap();
            let mut out = Vec::new();
            c.read_to_end(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        served.await.unwrap();
        let reply: Reply = control::decode(reply.strip_suffix(&[0]).unwrap()).unwrap();
        assert_eq!(reply.error.as_deref(), Some("io.kechi.PermissionDenied"));
    }
}

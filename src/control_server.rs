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

/// The supplementary groups of a process, from the kernel's view of it.
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

async fn handle(mut conn: UnixStream, control_gid: Option<u32>, inbox: Inbox) {
    let reply = match conn.peer_cred() {
        Ok(cred) => {
            let mut groups = cred.pid().map(groups_of).unwrap_or_default();
            groups.push(cred.gid());
            if !control::allowed(cred.uid(), &groups, control_gid) {
                Reply::error(
                    "PermissionDenied",
                    "only root or members of control.group may use kechid's control socket",
                )
            } else {
                match control::read_message::<_, Request>(&mut conn).await {
                    Ok(req) => {
                        let (tx, rx) = oneshot::channel();
                        if inbox.send((req, tx)).is_err() {
                            Reply::error("Unavailable", "kechid is shutting down")
                        } else {
                            rx.await.unwrap_or_else(|_| {
                                Reply::error("Unavailable", "kechid is shutting down")
                            })
                        }
                    }
                    Err(e) => Reply::error("InvalidRequest", e.to_string()),
                }
            }
        }
        Err(e) => Reply::error(
            "PermissionDenied",
            format!("cannot read peer credentials: {e}"),
        ),
    };
    let _ = conn.write_all(&control::encode(&reply)).await;
}

//! The control protocol between kechictl and kechid, on the Unix socket `/run/kechi/APP.ctl`.
//!
//! Varlink-shaped: each message is one JSON object terminated by a NUL byte; a request is
//! `{"method": "io.kechi.Status", "parameters": {...}}`, a reply `{"parameters": {...}}` or
//! `{"error": "io.kechi.PermissionDenied", "parameters": {"message": "..."}}`. One request per
//! connection. Who may ask is decided by the peer's kernel credentials (SO_PEERCRED): root, or
//! a member of `control.group` — never by the file mode alone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest message either side accepts.
pub const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", content = "parameters", deny_unknown_fields)]
pub enum Request {
    #[serde(rename = "io.kechi.Status")]
    Status {},
    /// Recycle one worker (`worker`) or all (`all`).
    #[serde(rename = "io.kechi.Recycle")]
    Recycle {
        #[serde(default)]
        worker: Option<u64>,
        #[serde(default)]
        all: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub parameters: serde_json::Value,
}

impl Reply {
    pub fn ok(p: impl Serialize) -> Reply {
        Reply {
            error: None,
            parameters: serde_json::to_value(p).unwrap_or(serde_json::Value::Null),
        }
    }
    pub fn error(kind: &str, message: impl Into<String>) -> Reply {
        Reply {
            error: Some(format!("io.kechi.{kind}")),
            parameters: serde_json::json!({ "message": message.into() }),
        }
    }
}

/// One worker in a status reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub serial: u64,
    pub pid: i32,
    pub scope: Option<String>,
    pub state: String,
    pub age_secs: u64,
    pub generation: u64,
    /// Whether jemalloc is mapped in the worker (`None`: not checked yet).
    pub jemalloc: Option<bool>,
    /// Its scope's cgroup charge, or its PSS without systemd.
    pub memory_bytes: Option<u64>,
    /// Sums over its processes, from smaps_rollup (`None` until sampled).
    pub memory: Option<WorkerMemory>,
    pub tmpdir: Option<PathBuf>,
    /// Bytes in its temp dir (they count as its memory).
    pub tmpdir_bytes: Option<u64>,
}

/// A worker's memory: sums over its processes, and its cgroup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerMemory {
    pub rss: u64,
    pub pss: u64,
    pub uss: u64,
    pub shared: u64,
    pub shared_percent: Option<f64>,
    pub swap: u64,
    pub cgroup: Option<u64>,
    pub processes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub app: String,
    pub kechid_pid: u32,
    pub generation: u64,
    pub workers_wanted: u32,
    pub workers: Vec<WorkerStatus>,
    /// The STATUS= line kechid sends to systemd.
    pub summary: String,
    /// Recent restarts and recycles, newest last.
    pub events: Vec<String>,
    pub listening: Vec<String>,
    /// This kechid's start (absent from kechids older than the field).
    #[serde(default)]
    pub start: StartInfo,
}

/// How this kechid's start went: a cold start after an idle stop, and how fast it served.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StartInfo {
    /// Seconds from kechid's start to its first ready worker (none yet: `None`).
    pub ready_secs: Option<f64>,
    /// The start followed an idle stop of the app, idle this many seconds.
    pub after_idle_secs: Option<u64>,
    /// Idle stops of the app since the machine booted.
    pub idle_stops: u64,
    /// `idle.stop-after` in seconds (0: off).
    pub idle_stop_after_secs: u64,
    /// Seconds since the app last had a connection open, waiting or arriving, when idle stop
    /// is on.
    pub idle_secs: Option<u64>,
    /// kechid has stopped the app for idleness (the last metrics written before it exits).
    #[serde(default)]
    pub idle_stopped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecycleReply {
    /// The workers that will be replaced.
    pub serials: Vec<u64>,
}

/// The control socket of `app` under `runtime_dir`.
pub fn socket_path(runtime_dir: &Path, app: &str) -> PathBuf {
    runtime_dir.join(format!("{app}.ctl"))
}

/// Encodes a message with its terminating NUL.
pub fn encode(v: &impl Serialize) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(0);
    b
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("connection closed before a complete message")]
    Truncated,
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads one NUL-terminated message.
pub async fn read_message<R: tokio::io::AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<T, ProtocolError> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(ProtocolError::Truncated);
        }
        if let Some(end) = chunk[..n].iter().position(|b| *b == 0) {
            buf.extend_from_slice(&chunk[..end]);
            return decode(&buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_MESSAGE {
            return Err(ProtocolError::TooLarge);
        }
    }
}

/// Decodes one message body (without its NUL).
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ProtocolError> {
    if body.len() > MAX_MESSAGE {
        return Err(ProtocolError::TooLarge);
    }
    Ok(serde_json::from_slice(body)?)
}

/// Whether a peer with `uid`, whose groups are `groups`, may use the control socket.
pub fn allowed(uid: u32, groups: &[u32], control_gid: Option<u32>) -> bool {
    uid == 0 || control_gid.is_some_and(|g| groups.contains(&g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_varlink_shaped() {
        let r = Request::Recycle {
            worker: None,
            all: true,
        };
        let bytes = encode(&r);
        assert_eq!(bytes.last(), Some(&0));
        let text = std::str::from_utf8(&bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(
            text,
            r#"{"method":"io.kechi.Recycle","parameters":{"worker":null,"all":true}}"#
        );
        assert_eq!(
            decode::<Request>(br#"{"method":"io.kechi.Status","parameters":{}}"#).unwrap(),
            Request::Status {}
        );
        assert_eq!(
            decode::<Request>(br#"{"method":"io.kechi.Recycle","parameters":{"worker":3}}"#)
                .unwrap(),
            Request::Recycle {
                worker: Some(3),
                all: false
            }
        );
        assert!(decode::<Request>(br#"{"method":"io.kechi.Nope"}"#).is_err());
        assert!(decode::<Request>(b"\xff").is_err());
    }

    #[test]
    fn permissions() {
        assert!(allowed(0, &[], None));
        assert!(!allowed(1000, &[1000], None));
        assert!(allowed(1000, &[1000, 50], Some(50)));
        assert!(!allowed(1000, &[1000], Some(50)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_messages_in_pieces_and_refuses_garbage() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        use tokio::io::AsyncWriteExt;
        let msg = encode(&Request::Status {});
        let (x, y) = msg.split_at(5);
        a.write_all(x).await.unwrap();
        a.write_all(y).await.unwrap();
        let got: Request = read_message(&mut b).await.unwrap();
        assert_eq!(got, Request::Status {});
        drop(a);
        assert!(matches!(
            read_message::<_, Request>(&mut b).await,
            Err(ProtocolError::Truncated)
        ));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Reply>(&bytes);
        }
    }
}

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kechid for this app is not running (no control socket at {}): {source}", path.display())]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("permission denied on {}: run as root or as a member of the app's control.group", path.display())]
    Denied { path: PathBuf },
    #[error("talking to kechid at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad reply from kechid: {0}")]
    Protocol(#[from] ProtocolError),
}

/// Sends one request and waits for its reply (blocking; for kechictl).
pub fn request(path: &Path, req: &Request) -> Result<Reply, ClientError> {
    use std::io::Write;
    let mut s =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied => ClientError::Denied {
                path: path.to_owned(),
            },
            _ => ClientError::NotRunning {
                path: path.to_owned(),
                source,
            },
        })?;
    let io = |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(io)?;
    // A kechid that refuses the peer may answer and close before the request is all written:
    // its answer is still there to read, and says more than the broken pipe.
    let written = match s.write_all(&encode(req)) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Err(e)
        }
        other => Ok(other.map_err(io)?),
    };
    read_message_blocking(&mut s).map_err(|e| match (e, written) {
        (ProtocolError::Truncated, Err(write)) => io(write),
        (ProtocolError::Io(source), _) => io(source),
        (other, _) => other.into(),
    })
}

/// Reads one NUL-terminated message from a blocking reader: the client's side of
/// [`read_message`], split from the socket so any reader (a test's byte slice) can drive it.
pub fn read_message_blocking<R: std::io::Read, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<T, ProtocolError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(ProtocolError::Truncated);
        }
        if let Some(end) = chunk[..n].iter().position(|b| *b == 0) {
            buf.extend_from_slice(&chunk[..end]);
            return decode(&buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_MESSAGE {
            return Err(ProtocolError::TooLarge);
        }
    }
}

/// The runtime directory kechid uses: `$KECHI_RUNTIME_DIR` if set, else `/run/kechi` as
/// root, else under `$XDG_RUNTIME_DIR`.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KECHI_RUNTIME_DIR") {
        return PathBuf::from(d);
    }
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/run/kechi");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| PathBuf::from(d).join("kechi"))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/kechi-{}", nix::unistd::Uid::effective())))
}

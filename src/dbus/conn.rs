//! A D-Bus connection on a unix socket: method calls and signals, over two tasks.
//!
//! A writer task owns the socket's write half and sends whole messages from a queue, so a
//! call abandoned halfway (its caller timed out) can never leave half a message on the
//! stream. A reader task owns the read half: it hands each method reply to the call waiting
//! for its serial, copies each signal to the listeners of its interface and member, and
//! answers method calls addressed to us with `UnknownMethod`. It decodes a message's body only
//! when somebody waits for it: replies nobody waits for, signals nobody listens for, signals
//! over 64 KiB and, on a bus, signals addressed to kechid alone (the manager's are broadcasts)
//! are dropped after their header, so what any local user can send kechid costs it no more
//! than the bytes. When either side fails the connection is closed for good: waiting calls
//! fail at once with [`Error::Closed`], signal listeners see their stream end, and
//! [`Connection::closed`] resolves. Re-establishing a link is the owner's business (a new
//! `Connection`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};

use super::wire::{self, Kind, Message, Value};
use super::{Error, SocketAddr};

/// How long a method call waits for its reply.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(25);
/// The largest signal decoded: the manager's JobRemoved is well under 1 KiB.
const MAX_SIGNAL: usize = 64 << 10;

const BUS_NAME: &str = "org.freedesktop.DBus";
const BUS_PATH: &str = "/org/freedesktop/DBus";

type Reply = Result<Message, Error>;

/// What the two tasks and the handles share. `None` in `pending`/`listeners` = closed; both are
/// taken under their lock, so nothing registers on a connection that has just closed.
struct Shared {
    pending: Mutex<Option<HashMap<u32, oneshot::Sender<Reply>>>>,
    listeners: Mutex<Option<Vec<Listener>>>,
    closed: watch::Sender<bool>,
    /// The serial of the next message we send (our calls and our error replies alike).
    serial: AtomicU32,
}

struct Listener {
    id: u64,
    interface: &'static str,
    member: &'static str,
    tx: mpsc::UnboundedSender<Message>,
}

impl Shared {
    fn next_serial(&self) -> u32 {
        loop {
            let s = self.serial.fetch_add(1, Ordering::Relaxed);
            if s != 0 {
                return s;
            }
        }
    }

    fn close(&self) {
        lock(&self.pending).take();
        lock(&self.listeners).take();
        self.closed.send_replace(true);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Inner {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    next_listener: AtomicU64,
    /// Whether a bus daemon is at the other end (calls then name their destination).
    bus: bool,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The reader would otherwise wait for the peer, and a writer stuck on a peer that stopped
        // reading would hold the socket for good.
        self.reader.abort();
        self.writer.abort();
        self.shared.close();
    }
}

/// A connection; clones share it. Dropping the last clone closes it.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("bus", &self.inner.bus)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// Connects to the bus at `address`, authenticates and says Hello.
    pub async fn open_bus(address: &str) -> Result<Connection, Error> {
        let stream = match super::parse_address(address)? {
            SocketAddr::Path(p) => UnixStream::connect(p).await?,
            SocketAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
                s.set_nonblocking(true)?;
                UnixStream::from_std(s)?
            }
        };
        let conn = Self::start(stream, true).await?;
        conn.call(BUS_NAME, BUS_PATH, BUS_NAME, "Hello", vec![])
            .await?;
        Ok(conn)
    }

    /// A peer-to-peer connection on `stream` (no bus daemon, no Hello).
    pub async fn peer(stream: UnixStream) -> Result<Connection, Error> {
        Self::start(stream, false).await
    }

    async fn start(mut stream: UnixStream, bus: bool) -> Result<Connection, Error> {
        // A bus daemon that accepts connections but never answers (socket-activated, stuck)
        // must not hold kechid at start.
        let uid = nix::unistd::geteuid().as_raw();
        tokio::time::timeout(CALL_TIMEOUT, super::auth::handshake(&mut stream, uid))
            .await
            .map_err(|_| Error::Timeout(CALL_TIMEOUT))??;
        let (read, write) = stream.into_split();
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Some(HashMap::new())),
            listeners: Mutex::new(Some(Vec::new())),
            closed,
            serial: AtomicU32::new(1),
        });
        let (out, queue) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(write, queue, shared.clone()));
        let reader = tokio::spawn(read_loop(read, shared.clone(), out.clone(), bus));
        Ok(Connection {
            inner: Arc::new(Inner {
                shared,
                out,
                next_listener: AtomicU64::new(0),
                bus,
                reader,
                writer,
            }),
        })
    }

    /// Whether a bus daemon is at the other end.
    pub fn is_bus(&self) -> bool {
        self.inner.bus
    }

    /// Calls `interface.member` on `path` of `destination` (named only on a bus) and returns
    /// the reply's body; an error reply is [`Error::Method`]. Bounded by [`CALL_TIMEOUT`].
    pub async fn call(
        &self,
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        body: Vec<Value>,
    ) -> Result<Vec<Value>, Error> {
        let dest = self.inner.bus.then_some(destination);
        let mut msg = Message::call(dest, path, interface, member, body);
        msg.serial = self.inner.shared.next_serial();
        let bytes = msg.encode()?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.inner.shared.pending);
            let map = pending.as_mut().ok_or(Error::Closed)?;
            map.insert(msg.serial, tx);
        }
        // A call given up (timeout, or its caller dropped) must not leave its entry behind.
        let _forget = Forget(&self.inner.shared, msg.serial);
        if self.inner.out.send(bytes).is_err() {
            return Err(Error::Closed);
        }
        let reply = match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Err(_) => return Err(Error::Timeout(CALL_TIMEOUT)),
            Ok(Err(_)) => return Err(Error::Closed),
            Ok(Ok(reply)) => reply?,
        };
        match reply.kind {
            Kind::Error => Err(Error::Method {
                name: reply.error_name.unwrap_or_default(),
                message: reply
                    .body
                    .first()
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }),
            _ => Ok(reply.body),
        }
    }

    /// Signals `interface.member` from now on, until the returned listener is dropped; its
    /// stream ends when the connection closes. (On a bus, a match rule must also ask the bus
    /// daemon for them.)
    pub fn signals(&self, interface: &'static str, member: &'static str) -> Signals {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.inner.next_listener.fetch_add(1, Ordering::Relaxed);
        if let Some(list) = lock(&self.inner.shared.listeners).as_mut() {
            list.push(Listener {
                id,
                interface,
                member,
                tx,
            });
        }
        Signals {
            rx,
            id,
            shared: self.inner.shared.clone(),
        }
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        let mut rx = self.inner.shared.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub fn is_closed(&self) -> bool {
        *self.inner.shared.closed.borrow()
    }
}

struct Forget<'a>(&'a Shared, u32);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(map) = lock(&self.0.pending).as_mut() {
            map.remove(&self.1);
        }
    }
}

/// The signals one listener asked for ([`Connection::signals`]).
#[derive(Debug)]
pub struct Signals {
    rx: mpsc::UnboundedReceiver<Message>,
    id: u64,
    shared: Arc<Shared>,
}

impl Signals {
    /// The next signal; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        if let Some(list) = lock(&self.shared.listeners).as_mut() {
            list.retain(|l| l.id != self.id);
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(bytes) = queue.recv().await {
        if write.write_all(&bytes).await.is_err() {
            break;
        }
    }
    shared.close();
}

/// Reads one whole message's bytes; `Ok(None)` at a clean end of stream.
async fn read_message(read: &mut (impl AsyncRead + Unpin)) -> Result<Option<Vec<u8>>, Error> {
    let mut head = [0u8; wire::FIXED_HEADER];
    let mut got = 0;
    while got < head.len() {
        let n = read.read(&mut head[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(Error::Closed)
            };
        }
        got += n;
    }
    let total = wire::message_len(&head)?;
    let mut buf = head.to_vec();
    // Grows as bytes arrive rather than trusting the announced length up front.
    let rest = (total - head.len()) as u64;
    let n = read.take(rest).read_to_end(&mut buf).await?;
    if (n as u64) < rest {
        return Err(Error::Closed);
    }
    Ok(Some(buf))
}

async fn read_loop(
    mut read: tokio::net::unix::OwnedReadHalf,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    bus: bool,
) {
    loop {
        let buf = match read_message(&mut read).await {
            Ok(Some(buf)) => buf,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("D-Bus connection: {e}");
                break;
            }
        };
        // The header first: a body is decoded only when somebody wants it, so a message sent
        // to kechid unasked (any local user can send one) costs no more than its bytes.
        let head = match Message::decode_header(&buf) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!("D-Bus message dropped: {e}");
                continue;
            }
        };
        match head.kind {
            Kind::Return | Kind::Error => {
                let tx = head
                    .reply_serial
                    .and_then(|s| lock(&shared.pending).as_mut()?.remove(&s));
                if let Some(tx) = tx {
                    // A reply whose body does not decode fails its call at once.
                    let _ = tx.send(Message::decode(&buf).map_err(Error::Wire));
                }
            }
            Kind::Signal => {
                // The manager's signals are broadcasts, small, and asked for by a listener:
                // a signal addressed to kechid alone comes from someone else.
                if buf.len() > MAX_SIGNAL || (bus && head.destination.is_some()) {
                    continue;
                }
                let wanted = |l: &Listener| {
                    head.interface.as_deref() == Some(l.interface)
                        && head.member.as_deref() == Some(l.member)
                };
                if !lock(&shared.listeners)
                    .as_ref()
                    .is_some_and(|list| list.iter().any(wanted))
                {
                    continue;
                }
                let Ok(msg) = Message::decode(&buf) else {
                    continue;
                };
                if let Some(list) = lock(&shared.listeners).as_ref() {
                    for l in list.iter().filter(|l| wanted(l)) {
                        let _ = l.tx.send(msg.clone());
                    }
                }
            }
            Kind::Call => {
                if head.flags & wire::NO_REPLY_EXPECTED == 0 {
                    let mut err = Message::error(
                        &head,
                        "org.freedesktop.DBus.Error.UnknownMethod",
                        "kechid serves no methods",
                    );
                    err.serial = shared.next_serial();
                    if let Ok(bytes) = err.encode() {
                        let _ = out.send(bytes);
                    }
                }
            }
        }
    }
    shared.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// The far end, by hand: accepts the handshake, then reads messages.
    struct Peer(UnixStream);

    impl Peer {
        async fn accept(mut s: UnixStream) -> Peer {
            let mut seen = Vec::new();
            let mut b = [0u8; 64];
            while !seen.ends_with(b"\r\n") {
                let n = s.read(&mut b).await.unwrap();
                seen.extend_from_slice(&b[..n]);
            }
            assert!(seen.starts_with(b"\0AUTH EXTERNAL "), "{seen:?}");
            s.write_all(b"OK 0123456789abcdef\r\n").await.unwrap();
            seen.clear();
            while !seen.ends_with(b"BEGIN\r\n") {
                let n = s.read(&mut b).await.unwrap();
                seen.extend_from_slice(&b[..n]);
            }
            Peer(s)
        }

        async fn recv(&mut self) -> Message {
            let buf = read_message(&mut self.0).await.unwrap().unwrap();
            Message::decode(&buf).unwrap()
        }

        async fn send(&mut self, mut m: Message, serial: u32) {
            m.serial = serial;
            self.0.write_all(&m.encode().unwrap()).await.unwrap();
        }
    }

    async fn pair() -> (Connection, Peer) {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, p) = tokio::join!(Connection::peer(a), Peer::accept(b));
        (c.unwrap(), p)
    }

    fn reply_to(call: &Message, kind: Kind, body: Vec<Value>) -> Message {
        let mut m = Message::error(call, "org.example.Nope", "no");
        m.kind = kind;
        if kind == Kind::Return {
            m.error_name = None;
        }
        m.body = body;
        m
    }

    #[tokio::test]
    async fn replies_errors_and_signals() {
        let (conn, mut peer) = pair().await;
        let mut sigs = conn.signals("org.example.I", "Changed");
        let call = conn.call("d", "/a", "org.example.I", "Get", vec![Value::U32(1)]);
        let serve = async {
            let m = peer.recv().await;
            assert_eq!(m.member.as_deref(), Some("Get"));
            assert_eq!(m.destination, None, "no destination on a peer-to-peer link");
            let mut sig = Message::call(None, "/a", "org.example.I", "Changed", vec![]);
            sig.kind = Kind::Signal;
            peer.send(sig, 1).await;
            peer.send(reply_to(&m, Kind::Return, vec![Value::str("x")]), 2)
                .await;
            let m = peer.recv().await;
            peer.send(reply_to(&m, Kind::Error, vec![Value::str("no")]), 3)
                .await;
        };
        let (got, ()) = tokio::join!(
            async {
                let first = call.await;
                let second = conn.call("d", "/a", "org.example.I", "Get", vec![]).await;
                (first, second)
            },
            serve
        );
        assert_eq!(got.0.unwrap(), [Value::str("x")]);
        let err = got.1.unwrap_err();
        assert!(err.is_named("org.example.Nope"), "{err}");
        assert_eq!(err.to_string(), "org.example.Nope: no");
        let s = sigs.next().await.unwrap();
        assert_eq!(s.member.as_deref(), Some("Changed"));
    }

    /// A reply whose body does not decode fails its call at once (no wait for the timeout),
    /// and the connection goes on.
    #[tokio::test]
    async fn an_undecodable_reply_fails_its_call() {
        let (conn, mut peer) = pair().await;
        let serve = async {
            let m = peer.recv().await;
            let mut bytes = {
                let mut r = reply_to(&m, Kind::Return, vec![Value::Bool(true)]);
                r.serial = 9;
                r.encode().unwrap()
            };
            let n = bytes.len();
            bytes[n - 4] = 7; // a boolean must be 0 or 1
            peer.0.write_all(&bytes).await.unwrap();
            let m = peer.recv().await;
            peer.send(reply_to(&m, Kind::Return, vec![]), 10).await;
        };
        let calls = async {
            let t0 = std::time::Instant::now();
            let first = conn.call("d", "/a", "org.example.I", "A", vec![]).await;
            assert!(t0.elapsed() < Duration::from_secs(5));
            let second = conn.call("d", "/a", "org.example.I", "B", vec![]).await;
            (first, second)
        };
        let ((first, second), ()) = tokio::join!(calls, serve);
        assert!(matches!(first, Err(Error::Wire(_))), "{first:?}");
        assert!(second.unwrap().is_empty());
    }

    /// The peer hanging up fails the waiting call, ends signal streams, resolves `closed`, and
    /// later calls fail at once.
    #[tokio::test]
    async fn the_peer_closing_is_reported() {
        let (conn, mut peer) = pair().await;
        let mut sigs = conn.signals("org.example.I", "Changed");
        let serve = async {
            peer.recv().await;
            drop(peer);
        };
        let (res, ()) = tokio::join!(conn.call("d", "/a", "org.example.I", "A", vec![]), serve);
        assert!(matches!(res, Err(Error::Closed)), "{res:?}");
        tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .unwrap();
        assert!(conn.is_closed());
        assert!(sigs.next().await.is_none());
        let res = conn.call("d", "/a", "org.example.I", "A", vec![]).await;
        assert!(matches!(res, Err(Error::Closed)), "{res:?}");
    }

    /// On a bus, only small broadcast signals somebody listens for reach a listener; the rest
    /// (addressed to kechid alone, oversized, or not asked for) are dropped undecoded.
    #[tokio::test]
    async fn unasked_unicast_and_oversized_signals_are_dropped() {
        let (a, b) = UnixStream::pair().unwrap();
        let (conn, mut peer) = tokio::join!(Connection::start(a, true), Peer::accept(b));
        let conn = conn.unwrap();
        let mut sigs = conn.signals("org.example.I", "Changed");
        let signal = |member: &str, body: Vec<Value>| {
            let mut m = Message::call(None, "/a", "org.example.I", member, body);
            m.kind = Kind::Signal;
            m
        };
        let mut unicast = signal("Changed", vec![Value::str("unicast")]);
        unicast.destination = Some(":1.7".into());
        peer.send(unicast, 1).await;
        let big = Value::Array("y".into(), vec![Value::Byte(1); MAX_SIGNAL]);
        peer.send(signal("Changed", vec![big]), 2).await;
        peer.send(signal("Other", vec![Value::str("unasked")]), 3)
            .await;
        peer.send(signal("Changed", vec![Value::str("wanted")]), 4)
            .await;
        let got = tokio::time::timeout(Duration::from_secs(5), sigs.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.body, [Value::str("wanted")]);
    }
}

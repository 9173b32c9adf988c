//! openload: an open-loop HTTP load generator for kechi's benchmarks (bench/slowload/).
//!
//! Requests are sent on a fixed schedule, request `i` at `start + i / rate`, whatever happened to
//! the ones before it: a server that stalls does not slow the schedule down (a closed-loop
//! generator such as wrk waits for a response before it sends the next request on a connection,
//! so a 2 s stall costs it one slow request instead of 2 s worth of them: coordinated omission).
//! Each request's latency is measured from the moment it was due, not from when it was sent, so
//! a request that had to wait for a connection or for the generator itself is charged that wait.
//!
//! `--mode close` opens a connection per request and sends `Connection: close`. `--mode keepalive`
//! reuses connections from an idle pool and opens a new one when none is idle (so the number of
//! connections follows the load, as a browser's or a proxy's would); a pooled connection the
//! server has closed meanwhile (seen with a non-blocking peek before it is reused) is dropped,
//! as any HTTP client does; one the server closes after the request was written is a failure.
//!
//! Output: one CSV line per request to `--out` (`due_unix_ms,latency_ms,outcome,pid`; outcome is
//! the status code, or connect, write, read, eof, timeout, overload; pid is the number after
//! "pid " in the response's body when it has one, as the test apps' answers do, so that a slow
//! request can be laid beside the process that answered it), and a summary line on stdout.
//! SIGINT ends the schedule early (the requests in flight are still waited for and written).
//!
//! Built with `cargo build --example openload`; run `openload --help`.

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USAGE: &str =
    "usage: openload --addr HOST:PORT --rate N --duration SECS [--mode keepalive|close]
                [--timeout SECS] [--path /] [--max-inflight N] --out FILE.csv
Sends N requests a second on a fixed schedule for SECS seconds (open loop), and writes one line
per request to FILE.csv: due_unix_ms,latency_ms,outcome,pid (outcome: status code, or connect,
write, read, eof, timeout, overload; pid: the number after \"pid \" in the body, if any). Latency
counts from the moment a request was due.";

#[derive(Debug, Clone)]
struct Args {
    addr: SocketAddr,
    rate: f64,
    duration: f64,
    keepalive: bool,
    timeout: Duration,
    path: String,
    max_inflight: usize,
    out: String,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut addr, mut rate, mut duration, mut out) = (None, None, None, None);
    let mut a = Args {
        addr: "127.0.0.1:80".parse().expect("a literal address"),
        rate: 0.0,
        duration: 0.0,
        keepalive: true,
        timeout: Duration::from_secs(10),
        path: "/".into(),
        max_inflight: 10_000,
        out: String::new(),
    };
    while let Some(k) = it.next() {
        if k == "-h" || k == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{k}: not a number: {v}"))
        };
        match k.as_str() {
            "--addr" => {
                addr = Some(
                    v.parse()
                        .map_err(|_| format!("--addr: not HOST:PORT: {v}"))?,
                )
            }
            "--rate" => rate = Some(num(&v)?),
            "--duration" => duration = Some(num(&v)?),
            "--timeout" => a.timeout = Duration::from_secs_f64(num(&v)?),
            "--path" => a.path = v,
            "--max-inflight" => a.max_inflight = num(&v)? as usize,
            "--out" => out = Some(v),
            "--mode" => {
                a.keepalive = match v.as_str() {
                    "keepalive" => true,
                    "close" => false,
                    _ => return Err(format!("--mode: keepalive or close, not {v}")),
                }
            }
            _ => return Err(format!("unknown option {k}")),
        }
    }
    a.addr = addr.ok_or("--addr is required")?;
    a.rate = rate
        .filter(|r| *r > 0.0)
        .ok_or("--rate (> 0) is required")?;
    a.duration = duration
        .filter(|d| *d > 0.0)
        .ok_or("--duration (> 0) is required")?;
    a.out = out.ok_or("--out is required")?;
    Ok(a)
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    Connect,
    Write,
    Read,
    /// The server closed the connection before a whole response.
    Eof,
    Timeout,
    /// More requests in flight than --max-inflight: not sent.
    Overload,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Status(s) => write!(f, "{s}"),
            Outcome::Connect => f.write_str("connect"),
            Outcome::Write => f.write_str("write"),
            Outcome::Read => f.write_str("read"),
            Outcome::Eof => f.write_str("eof"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Overload => f.write_str("overload"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    due_unix_ms: f64,
    latency_ms: f64,
    outcome: Outcome,
    /// The answering process, as the body names it ("pid N"), when it does.
    pid: Option<u32>,
}

type Pool = Arc<Mutex<Vec<TcpStream>>>;

/// True when a pooled connection can carry a request: no EOF and no stray bytes waiting on it.
fn still_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: recv on a socket fd we own, into a 1-byte buffer we own; MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

async fn connection(a: &Args, pool: &Pool) -> Result<TcpStream, Outcome> {
    if a.keepalive {
        loop {
            let s = pool.lock().expect("pool lock").pop();
            match s {
                Some(s) if still_open(&s) => return Ok(s),
                Some(_) => continue,
                None => break,
            }
        }
    }
    let s = TcpStream::connect(a.addr)
        .await
        .map_err(|_| Outcome::Connect)?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// The end of the headers, the status and what the headers say of the body and the connection.
fn parse_head(buf: &[u8]) -> Option<(usize, u16, Option<usize>, bool)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let (mut len, mut close) = (None, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        if k == "content-length" {
            len = v.parse().ok();
        } else if k == "connection" && v == "close" {
            close = true;
        }
    }
    Some((end, status, len, close))
}

async fn exchange(a: &Args, pool: &Pool) -> (Outcome, Option<u32>) {
    let mut s = match connection(a, pool).await {
        Ok(s) => s,
        Err(o) => return (o, None),
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n{}\r\n",
        a.path,
        a.addr,
        if a.keepalive {
            ""
        } else {
            "Connection: close\r\n"
        }
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return (Outcome::Write, None);
    }
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) => {
                // a response without Content-Length ends with the connection
                return match parse_head(&buf) {
                    Some((end, st, None, _)) => (Outcome::Status(st), pid_in(&buf[end..])),
                    _ => (Outcome::Eof, None),
                };
            }
            Ok(n) => n,
            Err(_) => return (Outcome::Read, None),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some((end, st, Some(len), close)) = parse_head(&buf) {
            if buf.len() >= end + len {
                if a.keepalive && !close && buf.len() == end + len {
                    pool.lock().expect("pool lock").push(s);
                }
                return (Outcome::Status(st), pid_in(&buf[end..]));
            }
        }
    }
}

/// The number after the first "pid " in a response body, if there is one.
fn pid_in(body: &[u8]) -> Option<u32> {
    let at = body.windows(4).position(|w| w == b"pid ")? + 4;
    let digits: Vec<u8> = body[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("openload: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let records = rt.block_on(run(a.clone()));
    let mut out = match std::fs::File::create(&a.out) {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => {
            eprintln!("openload: {}: {e}", a.out);
            std::process::exit(1);
        }
    };
    let mut ok_lat = Vec::new();
    let (mut failed, mut non2xx) = (0usize, 0usize);
    for r in &records {
        let _ = writeln!(
            out,
            "{:.1},{:.3},{},{}",
            r.due_unix_ms,
            r.latency_ms,
            r.outcome,
            r.pid.map(|p| p.to_string()).unwrap_or_default()
        );
        match r.outcome {
            Outcome::Status(s) if (200..300).contains(&s) => ok_lat.push(r.latency_ms),
            Outcome::Status(_) => non2xx += 1,
            _ => failed += 1,
        }
    }
    if out.flush().is_err() {
        eprintln!("openload: writing {} failed", a.out);
        std::process::exit(1);
    }
    ok_lat.sort_by(f64::total_cmp);
    println!(
        "result: sent={} ok={} failed={} non2xx={} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2}",
        records.len(),
        ok_lat.len(),
        failed,
        non2xx,
        percentile(&ok_lat, 50.0),
        percentile(&ok_lat, 99.0),
        percentile(&ok_lat, 99.9),
        ok_lat.last().copied().unwrap_or(0.0)
    );
}

async fn run(a: Args) -> Vec<Record> {
    let a = Arc::new(a);
    let pool: Pool = Arc::new(Mutex::new(Vec::new()));
    let records = Arc::new(Mutex::new(Vec::new()));
    let inflight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let start_unix = unix_ms(SystemTime::now());
    let n = (a.rate * a.duration).round() as u64;
    let mut tasks = Vec::with_capacity(n as usize);
    // SIGINT ends the schedule early; the requests already sent are still waited for and written
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / a.rate);
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = &mut interrupted => break,
        }
        let due_unix_ms = start_unix + (due - start).as_secs_f64() * 1e3;
        let (a, pool, records, inflight) =
            (a.clone(), pool.clone(), records.clone(), inflight.clone());
        tasks.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering::SeqCst;
            let (outcome, pid) = if inflight.fetch_add(1, SeqCst) >= a.max_inflight {
                (Outcome::Overload, None)
            } else {
                tokio::time::timeout(a.timeout, exchange(&a, &pool))
                    .await
                    .unwrap_or((Outcome::Timeout, None))
            };
            inflight.fetch_sub(1, SeqCst);
            let latency_ms = due.elapsed().as_secs_f64() * 1e3;
            records.lock().expect("records lock").push(Record {
                due_unix_ms,
                latency_ms,
                outcome,
                pid,
            });
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut v = std::mem::take(&mut *records.lock().expect("records lock"));
    v.sort_by(|x, y| x.due_unix_ms.total_cmp(&y.due_unix_ms));
    v
}

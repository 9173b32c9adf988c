//! App servers recognised in `command`, and the misconfigurations kechi can see before they
//! bite: a stop signal that is not graceful for the server, a ready mode it cannot satisfy, a
//! puma bind that does not match the sockets kechi passes (or an activated unix socket puma
//! would unlink).
//!
//! Pure: [`recognise`] reads an argv, [`advise`] judges it against the config and the listening
//! sockets the workers get (as addresses, the way [`crate::sockets::address_of`] writes them).
//! The callers say where the sockets come from: kechid at start knows them exactly (socket
//! activation plus `listen`); `kechictl check APP` asks the socket unit; `kechictl check FILE`
//! knows only `listen`.
//!
//! Every finding is a [`ConfigError`] warning on the key to change (`command`, `stop.signal`,
//! `ready.mode`), except where the worker is certain to fail at start (puma unlinking the
//! activated unix socket), which is an error. The facts behind each rule, with their sources,
//! are in the comments of [`advise`]; the versions read are Debian 12's (puma 5.6.5, unicorn
//! 6.0.0, gunicorn 20.1.0, uvicorn 0.17.6, uWSGI 2.0.21, Starlet 0.31, Starman 0.4016,
//! Server::Starter 0.35).

use std::path::Path;

use crate::config::{Config, ConfigError, ErrorKind, Location, Provenance, ReadyMode, Source};

/// A server recognised in `command`, with what its options say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    Puma(Puma),
    Unicorn,
    Uwsgi(Uwsgi),
    Gunicorn {
        worker_class: Option<String>,
    },
    Uvicorn {
        fd: bool,
    },
    Starlet,
    Starman,
    /// Server::Starter's `start_server`, and the server it runs.
    StartServer {
        signal_on_term: Option<String>,
        inner: Option<Box<Server>>,
    },
    Node,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Puma {
    /// `-b`/`--bind` URIs, in order.
    pub binds: Vec<String>,
    /// `-w N` with N > 0.
    pub cluster: bool,
    pub preload: bool,
    /// `--bind-to-activated-sockets`: `Some(true)` with `only`.
    pub bind_to_activated: Option<bool>,
    /// `-C FILE`: binds may come from there, so they are not known.
    pub config_file: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Uwsgi {
    pub master: bool,
    pub die_on_term: bool,
    /// Signal numbers remapped to `gracefully_kill_them_all` by `--hook-master-start`.
    pub graceful_signals: Vec<i32>,
    /// `--ini`/`--yaml`/...: options may come from a file.
    pub config_file: bool,
}

impl Server {
    pub fn name(&self) -> &'static str {
        match self {
            Server::Puma(p) if p.cluster => "puma (cluster mode)",
            Server::Puma(_) => "puma (single mode)",
            Server::Unicorn => "unicorn",
            Server::Uwsgi(_) => "uWSGI",
            Server::Gunicorn { .. } => "gunicorn",
            Server::Uvicorn { .. } => "uvicorn",
            Server::Starlet => "Starlet",
            Server::Starman => "Starman",
            Server::StartServer { .. } => "start_server",
            Server::Node => "Node.js",
        }
    }
}

fn base(arg: &str) -> &str {
    arg.rsplit('/').next().unwrap_or(arg)
}

/// `--name=value` or `--name value` / `-n value`: the value of option `names` at `args[*i]`,
/// advancing `i` past a separate value.
fn value<'a>(args: &'a [String], i: &mut usize, names: &[&str]) -> Option<&'a str> {
    let a = args[*i].as_str();
    for n in names {
        if a == *n {
            *i += 1;
            return args.get(*i).map(String::as_str);
        }
        if let Some(v) = a.strip_prefix(n) {
            // `--bind=x`, and for one-letter options `-bx` as well
            if let Some(v) = v.strip_prefix('=') {
                return Some(v);
            }
            if n.len() == 2 && !v.is_empty() {
                return Some(v);
            }
        }
    }
    None
}

/// The server `argv` runs, looking through `env`, `bundle exec`, interpreters (`ruby PROG`,
/// `python3 -m MODULE`, `perl PROG`) and `start_server ... -- SERVER`.
pub fn recognise(argv: &[String]) -> Option<Server> {
    let (first, rest) = argv.split_first()?;
    match base(first) {
        "env" => {
            let skip = rest
                .iter()
                .position(|a| !a.starts_with('-') && !a.contains('='))?;
            recognise(&rest[skip..])
        }
        "bundle" | "bundler" if rest.first().map(String::as_str) == Some("exec") => {
            recognise(&rest[1..])
        }
        "ruby" | "perl" => {
            let prog = rest.iter().position(|a| !a.starts_with('-'))?;
            recognise(&rest[prog..])
        }
        b if b.starts_with("python") => {
            let m = rest.iter().position(|a| a == "-m")?;
            recognise(&rest[m + 1..])
        }
        "node" | "nodejs" => Some(Server::Node),
        "puma" => Some(Server::Puma(puma(rest))),
        "unicorn" | "unicorn_rails" => Some(Server::Unicorn),
        "uwsgi" | "uwsgi-core" => Some(Server::Uwsgi(uwsgi(rest))),
        "gunicorn" | "gunicorn3" => {
            let mut worker_class = None;
            let mut i = 0;
            while i < rest.len() {
                if let Some(v) = value(rest, &mut i, &["-k", "--worker-class"]) {
                    worker_class = Some(v.to_owned());
                }
                i += 1;
            }
            Some(Server::Gunicorn { worker_class })
        }
        "uvicorn" => Some(Server::Uvicorn {
            fd: rest.iter().any(|a| a == "--fd" || a.starts_with("--fd=")),
        }),
        "starman" => Some(Server::Starman),
        "plackup" => {
            let mut i = 0;
            while i < rest.len() {
                if let Some(v) = value(rest, &mut i, &["-s", "--server"]) {
                    return match v {
                        "Starlet" => Some(Server::Starlet),
                        "Starman" => Some(Server::Starman),
                        _ => None,
                    };
                }
                i += 1;
            }
            None
        }
        "start_server" => {
            let sep = rest.iter().position(|a| a == "--");
            let (opts, inner) = match sep {
                Some(s) => (&rest[..s], &rest[s + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            let mut signal_on_term = None;
            let mut i = 0;
            while i < opts.len() {
                if let Some(v) = value(opts, &mut i, &["--signal-on-term"]) {
                    signal_on_term = Some(v.to_owned());
                }
                i += 1;
            }
            Some(Server::StartServer {
                signal_on_term,
                inner: recognise(inner).map(Box::new),
            })
        }
        _ => None,
    }
}

fn puma(args: &[String]) -> Puma {
    let mut p = Puma::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if let Some(v) = value(args, &mut i, &["-b", "--bind"]) {
            p.binds.push(v.to_owned());
        } else if let Some(v) = value(args, &mut i, &["-w", "--workers"]) {
            p.cluster = v.parse::<u32>().is_ok_and(|n| n > 0);
        } else if value(args, &mut i, &["-C", "--config"]).is_some() {
            p.config_file = true;
        } else if a == "--preload" {
            p.preload = true;
        } else if a == "--bind-to-activated-sockets" {
            // An optional argument is only taken when attached (`=only`) by Ruby's OptionParser.
            p.bind_to_activated = Some(false);
        } else if let Some(v) = a.strip_prefix("--bind-to-activated-sockets=") {
            p.bind_to_activated = Some(v == "only");
        }
        i += 1;
    }
    p
}

fn uwsgi(args: &[String]) -> Uwsgi {
    let mut u = Uwsgi::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--master" || a == "-M" || a == "--master=true" {
            u.master = true;
        } else if a == "--die-on-term" || a == "--die-on-term=true" {
            u.die_on_term = true;
        } else if let Some(v) = value(args, &mut i, &["--hook-master-start"]) {
            // `unix_signal:15 gracefully_kill_them_all`
            if let Some((sig, func)) = v
                .strip_prefix("unix_signal:")
                .and_then(|s| s.split_once(char::is_whitespace))
                && func.trim() == "gracefully_kill_them_all"
                && let Ok(n) = sig.trim().parse()
            {
                u.graceful_signals.push(n);
            }
        } else if value(
            args,
            &mut i,
            &["--ini", "--yaml", "--json", "--xml", "--config"],
        )
        .is_some()
        {
            u.config_file = true;
        }
        i += 1;
    }
    u
}

/// Where the workers' listening sockets are known from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sockets {
    /// Addresses: `/run/kechi/APP.sock`, `127.0.0.1:8080`, `[::]:8080`.
    pub addresses: Vec<String>,
    /// Whether this is every socket the workers get (kechid at start, or the socket unit
    /// asked), or only `listen` (a file checked on its own).
    pub complete: bool,
    /// The TCP addresses among them whose socket kechid cannot steer (no `SO_REUSEPORT`: the
    /// socket unit has no `ReusePort=yes`, or a `listen` address): every worker shares it.
    pub shared_tcp: Vec<String>,
}

impl Sockets {
    /// Adds the config's `listen` addresses. kechid binds them itself, without `SO_REUSEPORT`,
    /// so a TCP one is shared by the workers.
    pub fn add_listen(&mut self, listen: &[String]) {
        for a in listen_addresses(listen) {
            if !a.starts_with('/') && !self.shared_tcp.contains(&a) {
                self.shared_tcp.push(a.clone());
            }
            if !self.addresses.contains(&a) {
                self.addresses.push(a);
            }
        }
    }
}

/// `listen` entries as socket addresses (`:8080` is every IPv4 address, as kechid binds it).
pub fn listen_addresses(listen: &[String]) -> Vec<String> {
    listen
        .iter()
        .map(|a| match a.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => a.clone(),
        })
        .collect()
}

/// What `advise` reports against.
#[derive(Debug)]
pub struct Subject<'a> {
    pub config: &'a Config,
    pub provenance: &'a Provenance,
    pub file: &'a Path,
    pub sockets: &'a Sockets,
}

struct Advice<'a> {
    s: &'a Subject<'a>,
    out: Vec<ConfigError>,
}

impl Advice<'_> {
    fn at(&self, key: &str) -> Location {
        let source = self
            .s
            .provenance
            .get(key)
            .cloned()
            .unwrap_or(Source::Default);
        Location::of(&source, self.s.file)
    }

    fn warn(&mut self, key: &str, message: String, fix: String) {
        let e = ConfigError::new(ErrorKind::Host, self.at(key), message)
            .key(key)
            .warning(fix);
        self.out.push(e);
    }

    fn fail(&mut self, key: &str, message: String, expected: String) {
        let e = ConfigError::new(ErrorKind::Host, self.at(key), message)
            .key(key)
            .expected(expected);
        self.out.push(e);
    }
}

/// The recognised server of the config's `command`, and what is wrong with how it is run.
/// Every finding about a loaded file: its own warnings and the server's [`advise`], in file
/// order; what kechictl check prints and kechid logs at start.
pub fn review(
    loaded: &crate::config::Loaded,
    file: &Path,
    sockets: &Sockets,
) -> (Option<Server>, Vec<ConfigError>) {
    let (server, advice) = advise(&Subject {
        config: &loaded.config,
        provenance: &loaded.provenance,
        file,
        sockets,
    });
    let mut problems = loaded.warnings.clone();
    problems.extend(advice);
    problems.sort_by(|a, b| a.location.cmp(&b.location));
    (server, problems)
}

pub fn advise(s: &Subject<'_>) -> (Option<Server>, Vec<ConfigError>) {
    let Some(server) = recognise(&s.config.command) else {
        return (None, Vec::new());
    };
    let mut a = Advice { s, out: Vec::new() };
    let signal = s.config.stop.signal.to_string();
    stop_signal(&mut a, &server, &signal);
    ready_mode(&mut a, &server);
    match &server {
        Server::Puma(p) => puma_binds(&mut a, p),
        Server::Uvicorn { fd: false } if !s.sockets.addresses.is_empty() => a.warn(
            "command",
            "uvicorn does not take systemd's sockets by itself (no LISTEN_FDS support): \
             without --fd it binds 127.0.0.1:8000 of its own, which a second worker cannot \
             bind again and which does not outlive a worker"
                .into(),
            "add \"--fd\", \"3\" to command (fd 3 is the first socket kechi passes)".into(),
        ),
        _ => {}
    }
    if drops_just_accepted(&server) && !s.sockets.shared_tcp.is_empty() {
        a.warn(
            "command",
            format!(
                "{} drops a connection it accepted just before its stop signal (docs/APP-SERVERS.md): \
                 on a socket its workers share ({}), a replacement can reset a request",
                server.name(),
                s.sockets.shared_tcp.join(", ")
            ),
            "ReusePort=yes in the [Socket] section of the app's socket unit \
             (systemctl edit kechi@APP.socket): kechid then gives each worker a socket of its own \
             and stops a worker only once no connection can reach it"
                .into(),
        );
    }
    (Some(server), a.out)
}

/// Whether the server's graceful stop drops a connection accepted a moment before it (each
/// traced in docs/APP-SERVERS.md): such a server loses requests on a shared socket, and none
/// on a steered one ([`crate::steer`]).
fn drops_just_accepted(server: &Server) -> bool {
    matches!(
        server,
        Server::Starman | Server::Uvicorn { .. } | Server::Uwsgi(_)
    )
}

/// Whether `signal` makes `server` finish its requests in flight before it exits.
fn graceful(server: &Server, signal: &str) -> Result<(), String> {
    let ok = |good: &[&str]| good.contains(&signal);
    match server {
        // puma 5.6 lib/puma/launcher.rb `setup_signals`: TERM -> graceful_stop, INT -> stop
        // (both let requests finish); QUIT is not trapped, so Ruby's default ends the process.
        Server::Puma(_) if ok(&["TERM", "INT"]) => Ok(()),
        Server::Puma(_) => Err("puma stops gracefully on TERM (or INT)".into()),
        // unicorn SIGNALS and lib/unicorn/http_server.rb: "QUIT # graceful shutdown",
        // "TERM, INT # immediate shutdown".
        Server::Unicorn if ok(&["QUIT"]) => Ok(()),
        Server::Unicorn => Err(format!(
            "unicorn's master kills its workers at once on {signal} (TERM and INT are its \
             immediate shutdown; QUIT is the graceful one)"
        )),
        // gunicorn 20.1 arbiter.py: TERM raises StopIteration -> halt() -> graceful stop;
        // handle_int and handle_quit call stop(False), killing workers at once.
        Server::Gunicorn { .. } if ok(&["TERM"]) => Ok(()),
        Server::Gunicorn { .. } => Err(format!(
            "gunicorn's arbiter kills its workers at once on {signal} (INT and QUIT are its \
             quick shutdown; TERM is the graceful one)"
        )),
        // uvicorn 0.17 server.py HANDLED_SIGNALS = (SIGINT, SIGTERM): both set should_exit and
        // the server drains its connections.
        Server::Uvicorn { .. } if ok(&["TERM", "INT"]) => Ok(()),
        Server::Uvicorn { .. } => Err("uvicorn stops gracefully on TERM or INT only".into()),
        // Starlet 0.31 lib/Starlet/Server.pm: a child sets term_received on TERM and exits
        // after the request in hand (Parallel::Prefork passes TERM on from the parent).
        Server::Starlet if ok(&["TERM"]) => Ok(()),
        Server::Starlet => Err("Starlet stops gracefully on TERM".into()),
        // Starman 0.4016 lib/Starman/Server.pm: QUIT -> server_close(1), "Running a graceful
        // shutdown"; TERM and INT are Net::Server's immediate close.
        Server::Starman if ok(&["QUIT"]) => Ok(()),
        Server::Starman => Err(format!(
            "Starman closes at once on {signal} (QUIT is its graceful shutdown)"
        )),
        // uWSGI docs Management.html, "Signals for controlling uWSGI": TERM "brutally reload[s]
        // all the workers and the master" (so the old worker never exits by itself), INT and
        // QUIT "immediately kill the entire uWSGI stack"; --die-on-term makes TERM run
        // kill_them_all like INT (core/master.c, unbit/uwsgi PR #2316): an immediate kill too.
        // A graceful stop needs `--hook-master-start "unix_signal:N gracefully_kill_them_all"`
        // (unbit/uwsgi issue #849).
        Server::Uwsgi(u) => {
            let n = crate::quantity::parse_signal(signal).map_or(0, |s| s.0 as i32);
            if u.graceful_signals.contains(&n) {
                Ok(())
            } else if signal == "TERM" && !u.die_on_term {
                Err(
                    "uWSGI's master answers TERM with a brutal reload: the old worker never \
                     exits by itself, is killed after stop.timeout and its requests are cut"
                        .into(),
                )
            } else {
                Err(format!(
                    "uWSGI kills every request in flight on {signal} (INT, QUIT, and TERM with \
                     --die-on-term, are its immediate shutdown)"
                ))
            }
        }
        // Server::Starter 0.35 lib/Server/Starter.pm: on TERM it sends the server
        // --signal-on-term (default TERM); on any other signal it sends TERM.
        Server::StartServer {
            signal_on_term,
            inner: Some(inner),
        } => {
            let passed = if signal == "TERM" {
                signal_on_term
                    .as_deref()
                    .map_or("TERM", |s| s.trim_start_matches("SIG"))
            } else {
                "TERM"
            };
            graceful(inner, passed).map_err(|why| {
                format!("start_server passes {passed} on to {}: {why}", inner.name())
            })
        }
        Server::StartServer { inner: None, .. } | Server::Node => Ok(()),
    }
}

fn stop_signal(a: &mut Advice<'_>, server: &Server, signal: &str) {
    let Err(why) = graceful(server, signal) else {
        return;
    };
    let fix = match server {
        Server::Unicorn | Server::Starman => "stop.signal = \"QUIT\"".to_owned(),
        Server::Uwsgi(u) if u.config_file => format!(
            "stop.signal = \"TERM\" with --hook-master-start \"unix_signal:15 \
             gracefully_kill_them_all\" in command (or hook-master-start in the uWSGI config \
             file, if it is there already); {}",
            if u.master { "" } else { "and --master" }
        ),
        Server::Uwsgi(u) => format!(
            "stop.signal = \"TERM\" and add \"--hook-master-start\", \"unix_signal:15 \
             gracefully_kill_them_all\"{} to command",
            if u.master { "" } else { ", \"--master\"" }
        ),
        Server::StartServer {
            inner: Some(inner), ..
        } if matches!(**inner, Server::Starman | Server::Unicorn) => {
            "stop.signal = \"TERM\" and start_server's --signal-on-term=QUIT".to_owned()
        }
        _ => "stop.signal = \"TERM\"".to_owned(),
    };
    a.warn(
        "stop.signal",
        format!("{why}, so every recycle and stop cuts the requests in flight on the old worker"),
        fix,
    );
}

fn ready_mode(a: &mut Advice<'_>, server: &Server) {
    if a.s.config.ready.mode != ReadyMode::Notify {
        return;
    }
    let inner = match server {
        Server::StartServer { inner: Some(i), .. } => i.as_ref(),
        s => s,
    };
    let why = match inner {
        // gunicorn 20.1 arbiter.py start(): sd_notify("READY=1 ...") right after binding,
        // before reload() spawns the workers that load the app.
        Server::Gunicorn { .. } => "gunicorn's arbiter sends READY=1 before its workers have \
             loaded the app, so a replacement counts as ready while it cannot answer yet"
            .to_owned(),
        // puma 5.6 lib/puma/launcher.rb integrate_with_systemd: only with the sd_notify gem
        // (Debian: ruby-sd-notify) installed; puma 6 has it built in.
        Server::Puma(_) => "puma 5 sends READY=1 only when the sd_notify gem is installed \
             (ruby-sd-notify); without it no worker ever becomes ready"
            .to_owned(),
        // uWSGI 2.0 sends "STATUS=uWSGI is ready" and READY=1 on $NOTIFY_SOCKET itself.
        Server::Uwsgi(_) => return,
        Server::Node => "Node.js sends no READY=1 unless the app itself does (sd_notify), so \
             otherwise no worker ever becomes ready"
            .to_owned(),
        other => format!(
            "{} never sends READY=1 on $NOTIFY_SOCKET, so no worker would become ready: each \
             is killed after ready.timeout",
            other.name()
        ),
    };
    a.warn(
        "ready.mode",
        why,
        "ready.mode = \"accept\" (ready once it waits on the listening socket)".to_owned(),
    );
}

/// A puma bind URI as the address it would match (`tcp://127.0.0.1:8080` -> `127.0.0.1:8080`,
/// `unix:///run/x.sock` -> `/run/x.sock`), the way puma 5.6's Binder keys activated sockets:
/// `[:tcp, host, port]` with IPv6 hosts in brackets, `[:unix, path]`.
fn bind_address(uri: &str) -> Option<String> {
    if let Some(rest) = uri
        .strip_prefix("tcp://")
        .or_else(|| uri.strip_prefix("ssl://"))
    {
        return Some(rest.split('?').next().unwrap_or(rest).to_owned());
    }
    uri.strip_prefix("unix://").map(str::to_owned)
}

fn puma_binds(a: &mut Advice<'_>, p: &Puma) {
    let sockets = a.s.sockets;
    if p.config_file || p.bind_to_activated == Some(true) || sockets.addresses.is_empty() {
        return;
    }
    let workers = a.s.config.workers;
    // puma 5.6 lib/puma/configuration.rb: without a bind, puma binds tcp://0.0.0.0:9292.
    let default = ["tcp://0.0.0.0:9292".to_owned()];
    let binds: &[String] = if p.binds.is_empty() && p.bind_to_activated.is_none() {
        &default
    } else {
        &p.binds
    };
    let listed = sockets.addresses.join(", ");
    let mut used = Vec::new();
    for b in binds {
        let addr = bind_address(b);
        match addr
            .as_ref()
            .and_then(|x| sockets.addresses.iter().find(|s| *s == x))
        {
            Some(s) => used.push(s.clone()),
            None if sockets.complete => {
                let how = if p.binds.is_empty() {
                    "puma without -b binds tcp://0.0.0.0:9292".to_owned()
                } else {
                    format!("puma's bind {b} matches no socket kechi passes ({listed})")
                };
                a.warn(
                    "command",
                    format!(
                        "{how}, so it binds that address itself: connections to it are refused \
                         while a worker is replaced{}",
                        if workers > 1 {
                            ", and a second worker fails to bind it (address in use)"
                        } else {
                            ""
                        }
                    ),
                    format!(
                        "-b with one of kechi's sockets ({}), or --bind-to-activated-sockets=only",
                        sockets
                            .addresses
                            .iter()
                            .map(|s| puma_uri(s))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            None => {}
        }
    }
    if p.bind_to_activated.is_some() {
        // --bind-to-activated-sockets adds every activated socket to the binds.
        return;
    }
    // The sockets known are passed for certain, even when others may be too.
    // puma 5.6 lib/puma/binder.rb, end of `parse`: "Also close any unused activated sockets"
    // and "File.unlink key[1] if key.first == :unix". Run as a user that may not write
    // /run/kechi, the unlink fails with EACCES and puma exits at start: a crash loop (issue seen
    // with ListenStream=127.0.0.1:PORT added besides the unix socket).
    for s in sockets.addresses.iter().filter(|s| !used.contains(s)) {
        if s.starts_with('/') {
            a.fail(
                "command",
                format!(
                    "puma is passed the unix socket {s} but does not bind it, so it closes it and \
                     unlinks {s} at start: as a user that may not write its directory it exits \
                     (EACCES) and crash-loops; as root it deletes the socket unit's path"
                ),
                format!(
                    "-b {} in command too (or --bind-to-activated-sockets=only), or a socket unit \
                     with TCP instead of the unix socket: an empty ListenStream= line first, \
                     then ListenStream=ADDRESS",
                    puma_uri(s)
                ),
            );
        } else {
            a.warn(
                "command",
                format!(
                    "puma is passed {s} but does not bind it, so it closes it: connections to \
                     {s} wait in kechi's socket and are never answered"
                ),
                format!(
                    "-b {} in command too, or --bind-to-activated-sockets=only",
                    puma_uri(s)
                ),
            );
        }
    }
}

fn puma_uri(address: &str) -> String {
    if address.starts_with('/') {
        format!("unix://{address}")
    } else {
        format!("tcp://{address}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Host, PathFacts, PathKind, parse};
    use crate::jemalloc::JemallocError;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn recognises_the_matrix() {
        let r = |s: &str| recognise(&argv(s));
        assert_eq!(
            r("/usr/bin/plackup -s Starlet --max-workers=4 app.psgi"),
            Some(Server::Starlet)
        );
        assert_eq!(
            r("plackup --server=Starman app.psgi"),
            Some(Server::Starman)
        );
        assert_eq!(r("plackup -sStarman app.psgi"), Some(Server::Starman));
        assert_eq!(r("plackup -s Twiggy app.psgi"), None);
        assert_eq!(
            r("/usr/bin/starman --workers 4 app.psgi"),
            Some(Server::Starman)
        );
        assert_eq!(
            r("/usr/bin/gunicorn -k gthread --threads 4 app:app"),
            Some(Server::Gunicorn {
                worker_class: Some("gthread".into())
            })
        );
        assert_eq!(
            r("/usr/bin/python3 -m gunicorn --worker-class=sync app:app"),
            Some(Server::Gunicorn {
                worker_class: Some("sync".into())
            })
        );
        assert_eq!(
            r("uvicorn --fd 3 app:app"),
            Some(Server::Uvicorn { fd: true })
        );
        assert_eq!(r("uvicorn app:app"), Some(Server::Uvicorn { fd: false }));
        assert_eq!(r("/usr/bin/node server.js"), Some(Server::Node));
        assert_eq!(r("/usr/bin/unicorn_rails -c u.rb"), Some(Server::Unicorn));
        assert_eq!(
            r("/usr/bin/env RACK_ENV=production unicorn"),
            Some(Server::Unicorn)
        );
        let Some(Server::Puma(p)) = r(
            "bundle exec puma -w 2 --preload -b tcp://127.0.0.1:8080 --bind=unix:///run/kechi/demo.sock",
        ) else {
            panic!()
        };
        assert!(p.cluster && p.preload && !p.config_file);
        assert_eq!(
            p.binds,
            ["tcp://127.0.0.1:8080", "unix:///run/kechi/demo.sock"]
        );
        let Some(Server::Puma(p)) =
            r("/usr/bin/ruby /usr/bin/puma -w 0 --bind-to-activated-sockets=only")
        else {
            panic!()
        };
        assert!(!p.cluster);
        assert_eq!(p.bind_to_activated, Some(true));
        let Some(Server::Uwsgi(u)) = recognise(&[
            "/usr/bin/uwsgi".into(),
            "--http-socket".into(),
            "=0".into(),
            "--master".into(),
            "--die-on-term".into(),
            "--hook-master-start".into(),
            "unix_signal:15 gracefully_kill_them_all".into(),
        ]) else {
            panic!()
        };
        assert!(u.master && u.die_on_term && !u.config_file);
        assert_eq!(u.graceful_signals, [15]);
        assert_eq!(
            r("start_server --port=8080 --signal-on-term=QUIT -- plackup -s Starman app.psgi"),
            Some(Server::StartServer {
                signal_on_term: Some("QUIT".into()),
                inner: Some(Box::new(Server::Starman))
            })
        );
        assert_eq!(r("/usr/bin/python3 app.py"), None);
        assert_eq!(r("/srv/app/bin/server"), None);
    }

    /// Every path exists; used only to get a parsed Config.
    struct AnyHost;
    impl Host for AnyHost {
        fn is_root(&self) -> bool {
            true
        }
        fn user_exists(&self, _: &str) -> Result<bool, String> {
            Ok(true)
        }
        fn group_exists(&self, _: &str) -> Result<bool, String> {
            Ok(true)
        }
        fn find_jemalloc(&self) -> Option<PathBuf> {
            None
        }
        fn check_jemalloc(&self, p: &Path) -> Result<PathBuf, JemallocError> {
            Ok(p.to_owned())
        }
        fn path_facts(&self, p: &Path) -> Result<Option<PathFacts>, String> {
            let kind = if p == Path::new("/") {
                PathKind::Directory
            } else {
                PathKind::File
            };
            Ok(Some(PathFacts {
                kind,
                mode: 0o755,
                uid: 0,
                gid: 0,
            }))
        }
        fn find_program(&self, name: &str, _: Option<&str>) -> Option<PathBuf> {
            Some(Path::new("/usr/bin").join(name))
        }
        fn user_ids(&self, _: &str) -> Option<(u32, u32)> {
            Some((0, 0))
        }
        fn group_gid(&self, _: &str) -> Option<u32> {
            Some(0)
        }
    }

    /// The findings for `text` (a demo.toml) with `sockets` (complete), as lines; a socket
    /// written `shared:ADDRESS` is a TCP socket kechid cannot steer.
    fn findings(text: &str, sockets: &[&str]) -> Vec<String> {
        let text = format!("{text}\n[jemalloc]\nenabled = false\n");
        let path = Path::new("/etc/kechi/demo.toml");
        let loaded = parse(&text, path, &BTreeMap::new(), &AnyHost).unwrap();
        let sockets = Sockets {
            addresses: sockets
                .iter()
                .map(|s| s.trim_start_matches("shared:").to_string())
                .collect(),
            complete: true,
            shared_tcp: sockets
                .iter()
                .filter(|s| s.starts_with("shared:"))
                .map(|s| s.trim_start_matches("shared:").to_string())
                .collect(),
        };
        let (_, found) = advise(&Subject {
            config: &loaded.config,
            provenance: &loaded.provenance,
            file: path,
            sockets: &sockets,
        });
        found.iter().map(ToString::to_string).collect()
    }

    const SOCK: &str = "/run/kechi/demo.sock";

    #[test]
    fn puma_besides_the_unix_socket_is_refused_with_the_fix() {
        // The crash loop of the issue: TCP added besides the unix socket, puma bound to TCP only.
        let f = findings(
            "command = [\"/usr/bin/puma\", \"-b\", \"tcp://127.0.0.1:8080\", \"app.ru\"]",
            &[SOCK, "127.0.0.1:8080"],
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with("/etc/kechi/demo.toml:1: command: puma is passed the unix socket /run/kechi/demo.sock but does not bind it, so it closes it and unlinks /run/kechi/demo.sock at start"),
            "{f:?}"
        );
        assert!(
            !f[0].contains("warning:"),
            "certain to fail: an error: {f:?}"
        );
        assert!(f[0].contains("-b unix:///run/kechi/demo.sock"), "{f:?}");
        assert!(f[0].contains("an empty ListenStream= line first"), "{f:?}");
        // Both bound, or all taken: nothing to say.
        assert!(findings(
            "command = [\"puma\", \"-b\", \"tcp://127.0.0.1:8080\", \"-b\", \"unix:///run/kechi/demo.sock\"]",
            &[SOCK, "127.0.0.1:8080"]
        )
        .is_empty());
        assert!(
            findings(
                "command = [\"puma\", \"--bind-to-activated-sockets=only\"]",
                &[SOCK, "127.0.0.1:8080"]
            )
            .is_empty()
        );
        // TCP "instead": puma bound to it, nothing else passed.
        assert!(
            findings(
                "command = [\"puma\", \"-b\", \"tcp://127.0.0.1:8080\"]",
                &["127.0.0.1:8080"]
            )
            .is_empty()
        );
    }

    #[test]
    fn listen_addresses_join_the_sockets_and_a_tcp_one_is_shared() {
        let mut s = Sockets {
            addresses: vec![SOCK.into(), "127.0.0.1:8080".into()],
            complete: true,
            shared_tcp: vec![],
        };
        s.add_listen(&[
            ":9000".into(),
            "/run/x.sock".into(),
            "127.0.0.1:8080".into(),
        ]);
        assert_eq!(
            s.addresses,
            [SOCK, "127.0.0.1:8080", "0.0.0.0:9000", "/run/x.sock"]
        );
        assert_eq!(s.shared_tcp, ["0.0.0.0:9000", "127.0.0.1:8080"]);
    }

    #[test]
    fn servers_that_drop_a_just_accepted_connection_are_pointed_at_steering() {
        let starman = "command = [\"starman\", \"--workers\", \"4\", \"app.psgi\"]\n[stop]\nsignal = \"QUIT\"";
        let f = findings(starman, &["shared:127.0.0.1:8080"]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].contains("Starman drops a connection it accepted just before its stop signal"),
            "{f:?}"
        );
        assert!(f[0].contains("(127.0.0.1:8080)"), "{f:?}");
        assert!(
            f[0].contains("fix: ReusePort=yes in the [Socket] section"),
            "{f:?}"
        );
        // steered: nothing to say
        assert!(findings(starman, &["127.0.0.1:8080"]).is_empty());
        let uvicorn = "command = [\"uvicorn\", \"--fd\", \"3\", \"app:app\"]";
        assert_eq!(findings(uvicorn, &["shared:127.0.0.1:8080"]).len(), 1);
        // a server whose stop serves what it accepted: no finding
        let gunicorn = "command = [\"gunicorn\", \"app:app\"]";
        assert!(findings(gunicorn, &["shared:127.0.0.1:8080"]).is_empty());
    }

    #[test]
    fn puma_bind_matching_no_socket() {
        let f = findings(
            "command = [\"puma\", \"-w\", \"2\", \"-b\", \"tcp://localhost:8080\"]\nworkers = 2",
            &["127.0.0.1:8080"],
        );
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].starts_with("/etc/kechi/demo.toml:1: command: warning: puma's bind tcp://localhost:8080 matches no socket kechi passes (127.0.0.1:8080)"),
            "{f:?}"
        );
        assert!(f[0].contains("a second worker fails to bind it"), "{f:?}");
        assert!(
            f[0].contains("; fix: -b with one of kechi's sockets (tcp://127.0.0.1:8080)"),
            "{f:?}"
        );
        assert!(
            f[1].contains("warning: puma is passed 127.0.0.1:8080 but does not bind it"),
            "{f:?}"
        );
        // No -b at all: puma's default 0.0.0.0:9292, and the unix socket unlinked.
        let f = findings("command = [\"puma\", \"config.ru\"]", &[SOCK]);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].contains("puma without -b binds tcp://0.0.0.0:9292"),
            "{f:?}"
        );
        assert!(f[1].contains("unlinks /run/kechi/demo.sock"), "{f:?}");
        // A file checked alone: its listen sockets are passed for certain, others unknown.
        let path = Path::new("/etc/kechi/demo.toml");
        let text = "command = [\"puma\", \"-b\", \"tcp://127.0.0.1:8080\"]\nlisten = [\"/run/demo.sock\"]\n[jemalloc]\nenabled = false\n";
        let loaded = parse(text, path, &BTreeMap::new(), &AnyHost).unwrap();
        let sockets = Sockets {
            addresses: listen_addresses(&loaded.config.listen),
            complete: false,
            shared_tcp: vec![],
        };
        let (_, found) = advise(&Subject {
            config: &loaded.config,
            provenance: &loaded.provenance,
            file: path,
            sockets: &sockets,
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0]
                .to_string()
                .contains(":1: command: puma is passed the unix socket /run/demo.sock"),
            "{found:?}"
        );
        // -C: binds unknown; and no sockets known: silent.
        assert!(findings("command = [\"puma\", \"-C\", \"puma.rb\"]", &[SOCK]).is_empty());
        assert!(findings("command = [\"puma\"]", &[]).is_empty());
    }

    #[test]
    fn stop_signals_that_are_not_graceful() {
        let f = findings(
            "command = [\"/usr/bin/unicorn\", \"-c\", \"u.rb\"]",
            &[SOCK],
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with("/etc/kechi/demo.toml: stop.signal: warning: unicorn's master kills its workers at once on TERM"),
            "{f:?}"
        );
        assert!(f[0].ends_with("; fix: stop.signal = \"QUIT\""), "{f:?}");
        assert!(
            findings(
                "command = [\"unicorn\"]\n[stop]\nsignal = \"QUIT\"",
                &[SOCK]
            )
            .is_empty()
        );

        let f = findings(
            "command = [\"gunicorn\", \"app:app\"]\n[stop]\nsignal = \"INT\"",
            &[SOCK],
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].starts_with("/etc/kechi/demo.toml:3: stop.signal: warning: gunicorn's arbiter kills its workers at once on INT"), "{f:?}");

        let f = findings(
            "command = [\"plackup\", \"-s\", \"Starman\", \"app.psgi\"]",
            &[SOCK],
        );
        assert!(
            f[0].contains("Starman closes at once on TERM")
                && f[0].ends_with("stop.signal = \"QUIT\""),
            "{f:?}"
        );
        assert!(
            findings(
                "command = [\"plackup\", \"-s\", \"Starlet\", \"app.psgi\"]",
                &[SOCK]
            )
            .is_empty()
        );
        let f = findings(
            "command = [\"start_server\", \"--\", \"plackup\", \"-s\", \"Starman\", \"app.psgi\"]",
            &[SOCK],
        );
        assert!(
            f[0].contains("start_server passes TERM on to Starman"),
            "{f:?}"
        );
        assert!(f[0].ends_with("--signal-on-term=QUIT"), "{f:?}");
        assert!(findings(
            "command = [\"start_server\", \"--signal-on-term=QUIT\", \"--\", \"starman\", \"app.psgi\"]",
            &[SOCK]
        )
        .is_empty());
        let f = findings(
            "command = [\"puma\", \"--bind-to-activated-sockets=only\"]\n[stop]\nsignal = \"QUIT\"",
            &[SOCK],
        );
        assert!(f[0].contains("puma stops gracefully on TERM"), "{f:?}");
    }

    #[test]
    fn uwsgi_needs_the_graceful_hook() {
        let f = findings(
            "command = [\"uwsgi\", \"--http-socket\", \"=0\", \"--master\"]",
            &[SOCK],
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].contains("stop.signal: warning: uWSGI's master answers TERM with a brutal reload"),
            "{f:?}"
        );
        assert!(f[0].contains("fix: stop.signal = \"TERM\" and add \"--hook-master-start\", \"unix_signal:15 gracefully_kill_them_all\" to command"), "{f:?}");
        let f = findings(
            "command = [\"uwsgi\", \"--die-on-term\"]\n[stop]\nsignal = \"TERM\"",
            &[SOCK],
        );
        assert!(
            f[0].contains("uWSGI kills every request in flight on TERM"),
            "{f:?}"
        );
        assert!(f[0].contains(", \"--master\" to command"), "{f:?}");
        assert!(findings(
            "command = [\"uwsgi\", \"--master\", \"--hook-master-start\", \"unix_signal:15 gracefully_kill_them_all\"]",
            &[SOCK]
        )
        .is_empty());
        // The hook remaps another signal than the stop signal: still a cut.
        let f = findings(
            "command = [\"uwsgi\", \"--master\", \"--hook-master-start\", \"unix_signal:1 gracefully_kill_them_all\"]\n[stop]\nsignal = \"INT\"",
            &[SOCK],
        );
        assert!(f[0].contains("on INT"), "{f:?}");
    }

    #[test]
    fn ready_modes_that_cannot_work() {
        let f = findings(
            "command = [\"plackup\", \"-s\", \"Starlet\", \"app.psgi\"]\n[ready]\nmode = \"notify\"",
            &[SOCK],
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with(
                "/etc/kechi/demo.toml:3: ready.mode: warning: Starlet never sends READY=1"
            ),
            "{f:?}"
        );
        assert!(
            f[0].ends_with(
                "; fix: ready.mode = \"accept\" (ready once it waits on the listening socket)"
            ),
            "{f:?}"
        );
        let f = findings(
            "command = [\"gunicorn\", \"app:app\"]\n[ready]\nmode = \"notify\"",
            &[SOCK],
        );
        assert!(
            f[0].contains("before its workers have loaded the app"),
            "{f:?}"
        );
        let f = findings(
            "command = [\"puma\", \"--bind-to-activated-sockets=only\"]\n[ready]\nmode = \"notify\"",
            &[SOCK],
        );
        assert!(f[0].contains("sd_notify gem"), "{f:?}");
        assert!(findings(
            "command = [\"uwsgi\", \"--master\", \"--hook-master-start\", \"unix_signal:15 gracefully_kill_them_all\"]\n[ready]\nmode = \"notify\"",
            &[SOCK]
        )
        .is_empty());
        // accept works for every server
        assert!(
            findings(
                "command = [\"gunicorn\", \"app:app\"]\n[ready]\nmode = \"accept\"",
                &[SOCK]
            )
            .is_empty()
        );
    }

    #[test]
    fn uvicorn_needs_fd() {
        let f = findings("command = [\"uvicorn\", \"app:app\"]", &[SOCK]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].contains("command: warning: uvicorn does not take systemd's sockets"),
            "{f:?}"
        );
        assert!(
            findings(
                "command = [\"uvicorn\", \"--fd\", \"3\", \"app:app\"]",
                &[SOCK]
            )
            .is_empty()
        );
    }

    #[test]
    fn unknown_commands_get_no_advice() {
        assert!(
            findings(
                "command = [\"/usr/bin/python3\", \"app.py\"]\n[stop]\nsignal = \"KILL\"",
                &[SOCK]
            )
            .is_empty()
        );
    }
}

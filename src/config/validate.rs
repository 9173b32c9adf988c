//! Stage 2: from a [`RawConfig`] (file + overlay) to a typed [`Config`] and its
//! [`Provenance`], collecting every problem instead of stopping at the first.
//!
//! Each problem names where the value came from (`FILE:LINE: KEY` or `environment: VAR`),
//! quotes what was written, and says what was expected. A key that is missing takes its
//! default (listed in the `config` module doc); a key that is invalid also takes its default
//! so that checks depending on it (high <= max, ...) can still run without inventing
//! follow-on errors. The returned `Config` is only meaningful when no errors were returned.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{ConfigError, ErrorKind, Location};
use super::lines::LineIndex;
use super::model::*;
use super::raw::{Field, Origin, Quantity, RawConfig};
use super::shape::KeyLines;
use crate::app::AppName;
use crate::quantity::{
    Bytes, Percent, Signal, format_duration, parse_bytes, parse_duration, parse_percent,
    parse_signal,
};

/// Variables kechi sets for every worker; an app may not set them itself.
pub const OWNED_VARS: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "KECHI_APP",
    "KECHI_WORKER",
    "SERVER_STARTER_PORT",
];

/// What validation needs to know about the file besides the raw values.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub lines: &'a LineIndex,
    pub key_lines: &'a KeyLines,
}

// Expectations, shared by the checks and their tests.
const E_COMMAND: &str = "a non-empty array of non-empty strings: an absolute program path or a \
    program name looked up in PATH, then its arguments, like [\"/usr/bin/app\", \"--flag\"] \
    (no shell is involved)";
const E_ABS_DIR: &str = "an absolute directory path, like \"/srv/app\"";
const E_NAME: &str = "a non-empty name";
const E_WORKERS: &str = "an integer from 1 to 256";
const E_MODE: &str = "one of \"notify\", \"accept\", \"delay\"";
const E_DURATION: &str = "a duration like \"30s\", \"5m\", \"1h30m\" or \"250ms\", or an integer \
    number of seconds";
const E_POS_DURATION: &str =
    "a duration above zero like \"30s\", \"5m\" or \"250ms\", or an integer number of seconds";
const E_SIGNAL: &str = "a signal name like \"TERM\", \"INT\", \"QUIT\" or \"HUP\"";
const E_LIMIT: &str = "a size above zero like \"512M\" or \"1G\" (K, M, G, T are 1024-based), \
    an integer number of bytes, or \"infinity\"";
const E_SWAP: &str = "a size like \"0\", \"256M\" or \"1G\", an integer number of bytes, or \
    \"infinity\"";
const E_SIZE: &str = "a size above zero like \"300M\" or \"1G\" (K, M, G, T are 1024-based), or \
    an integer number of bytes";
const E_METRIC: &str = "one of \"uss\", \"pss\", \"rss\", \"cgroup\"";
const E_PERCENT: &str = "a percentage like \"10%\" (from \"0%\" to \"100%\")";
const E_AT_LEAST_1: &str = "an integer of at least 1";
const E_CHECK_INTERVAL: &str = "a duration of at least 100ms, like \"5s\"";
const E_BOOL: &str = "true or false";
const E_JEMALLOC_PATH: &str = "\"auto\" or an absolute path to libjemalloc.so";
const E_MALLOC_CONF: &str = "empty (kechi's default) or a MALLOC_CONF string of name:value \
    pairs separated by commas, like \"narenas:2,dirty_decay_ms:1000\"";
const E_LISTEN: &str = "an array of addresses: \"/path/to/socket\", \"127.0.0.1:8080\", \
    \"[::1]:8080\" or \":8080\"";
const E_ENV_TABLE: &str = "a table of strings, like { PLACK_ENV = \"production\" }";

/// Runs every check. Returns the config (with defaults where values were missing or invalid),
/// the source of every key, and every problem found.
pub fn validate(raw: RawConfig, ctx: &Ctx<'_>) -> (Config, Provenance, Vec<ConfigError>) {
    let mut c = Checker {
        ctx,
        prov: Provenance::new(),
        errors: Vec::new(),
    };

    let stem = ctx
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let app = match AppName::new(&stem) {
        Ok(app) => app,
        Err(_) => {
            c.errors.push(
                ConfigError::new(
                    ErrorKind::Invalid,
                    Location::File {
                        path: ctx.path.to_owned(),
                        line: None,
                    },
                    format!("got {stem:?} (from the file name)"),
                )
                .key("app name")
                .expected(
                    "a file named APP.toml where APP is 1-63 characters of a-z, 0-9, '_' and \
                     '-', starting with a letter or digit",
                ),
            );
            // A stand-in so the other checks still run; the error above discards the config.
            AppName::new("invalid").expect("a valid literal app name")
        }
    };

    let command = c.get("command", raw.command, E_COMMAND, |v: Vec<String>| {
        let ok = !v.is_empty()
            && v.iter().all(|a| !a.is_empty() && !a.contains('\0'))
            && (v[0].starts_with('/') || !v[0].contains('/'));
        ok.then_some(v)
    });
    if raw_missing(&c.prov, "command") {
        c.errors.push(
            ConfigError::new(
                ErrorKind::Invalid,
                Location::File {
                    path: ctx.path.to_owned(),
                    line: None,
                },
                "missing",
            )
            .key("command")
            .expected(format!("command = [...]: {E_COMMAND}")),
        );
    }
    let directory = c
        .get("directory", raw.directory, E_ABS_DIR, |s: String| {
            (s.starts_with('/') && !s.contains('\0')).then(|| PathBuf::from(s))
        })
        .unwrap_or_else(|| PathBuf::from("/"));
    let user = c.get("user", raw.user, E_NAME, name);
    let group = c.get("group", raw.group, E_NAME, name);
    let workers = c
        .get("workers", raw.workers, E_WORKERS, |n: i64| {
            u32::try_from(n).ok().filter(|n| (1..=256).contains(n))
        })
        .unwrap_or(2);
    let environment = raw.environment;
    let listen = c
        .get("listen", raw.listen, E_LISTEN, |v: Vec<String>| {
            v.iter().all(|a| valid_listen(a)).then_some(v)
        })
        .unwrap_or_default();

    let r = raw.ready;
    let ready = Ready {
        mode: c
            .get("ready.mode", r.mode, E_MODE, |s: String| match s.as_str() {
                "notify" => Some(ReadyMode::Notify),
                "accept" => Some(ReadyMode::Accept),
                "delay" => Some(ReadyMode::Delay),
                _ => None,
            })
            .unwrap_or(ReadyMode::Accept),
        delay: c
            .get("ready.delay", r.delay, E_DURATION, duration)
            .unwrap_or(Duration::from_secs(5)),
        timeout: c
            .get(
                "ready.timeout",
                r.timeout,
                E_POS_DURATION,
                positive_duration,
            )
            .unwrap_or(Duration::from_secs(60)),
    };
    if ready.mode == ReadyMode::Delay && ready.delay >= ready.timeout {
        c.conflict(
            "ready.delay",
            format!(
                "{} is not below ready.timeout ({}), so no worker could ever become ready",
                format_duration(ready.delay),
                format_duration(ready.timeout)
            ),
            "ready.delay < ready.timeout when ready.mode = \"delay\"",
        );
    }

    let s = raw.stop;
    let stop = Stop {
        signal: c
            .get("stop.signal", s.signal, E_SIGNAL, signal)
            .unwrap_or(Signal(nix::sys::signal::Signal::SIGTERM)),
        timeout: c
            .get("stop.timeout", s.timeout, E_DURATION, duration)
            .unwrap_or(Duration::from_secs(30)),
    };

    let m = raw.memory;
    let memory = Memory {
        max: c
            .get("memory.max", m.max, E_LIMIT, positive_limit)
            .unwrap_or(Limit::Infinity),
        high: c
            .get("memory.high", m.high, E_LIMIT, positive_limit)
            .unwrap_or(Limit::Infinity),
        swap_max: c.get("memory.swap-max", m.swap_max, E_SWAP, limit),
        metric: c
            .get("memory.metric", m.metric, E_METRIC, |s: String| {
                match s.as_str() {
                    "uss" => Some(Metric::Uss),
                    "pss" => Some(Metric::Pss),
                    "rss" => Some(Metric::Rss),
                    "cgroup" => Some(Metric::Cgroup),
                    _ => None,
                }
            })
            .unwrap_or(Metric::Uss),
        recycle_above: c.get(
            "memory.recycle-above",
            m.recycle_above,
            E_SIZE,
            positive_size,
        ),
        app_budget: c.get("memory.app-budget", m.app_budget, E_SIZE, positive_size),
        min_shared: c.get("memory.min-shared", m.min_shared, E_PERCENT, percent),
        child_signal: c.get("memory.child-signal", m.child_signal, E_SIGNAL, signal),
    };
    if let (Limit::Bytes(high), Limit::Bytes(max)) = (memory.high, memory.max)
        && high > max
    {
        c.conflict(
            "memory.high",
            format!("{high} is above memory.max ({max})"),
            "memory.high <= memory.max",
        );
    }
    if let (Some(above), Limit::Bytes(max)) = (memory.recycle_above, memory.max)
        && above >= max
    {
        c.conflict(
            "memory.recycle-above",
            format!(
                "{above} is not below memory.max ({max}), so the kernel would kill a worker \
                 before kechi recycles it"
            ),
            "memory.recycle-above < memory.max",
        );
    }

    let r = raw.recycle;
    let recycle = Recycle {
        max_age: c
            .get("recycle.max-age", r.max_age, E_DURATION, duration)
            .unwrap_or(Duration::ZERO),
        jitter: c
            .get("recycle.jitter", r.jitter, E_PERCENT, percent)
            .unwrap_or(Percent::from_whole(10)),
        min_interval: c
            .get("recycle.min-interval", r.min_interval, E_DURATION, duration)
            .unwrap_or(Duration::from_secs(30)),
        max_concurrent: c
            .get(
                "recycle.max-concurrent",
                r.max_concurrent,
                E_AT_LEAST_1,
                at_least_1,
            )
            .unwrap_or(1),
        check_interval: c
            .get(
                "recycle.check-interval",
                r.check_interval,
                E_CHECK_INTERVAL,
                |q| duration(q).filter(|d| *d >= Duration::from_millis(100)),
            )
            .unwrap_or(Duration::from_secs(5)),
    };

    let r = raw.restart;
    let restart = Restart {
        backoff: c
            .get("restart.backoff", r.backoff, E_DURATION, duration)
            .unwrap_or(Duration::from_secs(1)),
        backoff_max: c
            .get("restart.backoff-max", r.backoff_max, E_DURATION, duration)
            .unwrap_or(Duration::from_secs(60)),
        burst: c
            .get("restart.burst", r.burst, E_AT_LEAST_1, at_least_1)
            .unwrap_or(5),
        window: c
            .get(
                "restart.window",
                r.window,
                E_POS_DURATION,
                positive_duration,
            )
            .unwrap_or(Duration::from_secs(60)),
    };
    if restart.backoff > restart.backoff_max {
        c.conflict(
            "restart.backoff",
            format!(
                "{} is above restart.backoff-max ({})",
                format_duration(restart.backoff),
                format_duration(restart.backoff_max)
            ),
            "restart.backoff <= restart.backoff-max",
        );
    }

    let j = raw.jemalloc;
    let jemalloc = Jemalloc {
        enabled: c
            .get("jemalloc.enabled", j.enabled, E_BOOL, Some)
            .unwrap_or(true),
        path: c
            .get("jemalloc.path", j.path, E_JEMALLOC_PATH, |s: String| {
                if s == "auto" {
                    Some(JemallocPath::Auto)
                } else {
                    (s.starts_with('/') && !s.contains('\0'))
                        .then(|| JemallocPath::Path(PathBuf::from(s)))
                }
            })
            .unwrap_or(JemallocPath::Auto),
        conf: c
            .get("jemalloc.conf", j.conf, E_MALLOC_CONF, |s: String| {
                valid_malloc_conf(&s).then_some(s)
            })
            .unwrap_or_default(),
        library: None,
    };

    let t = raw.tmpdir;
    let tmpdir = TmpDir {
        enabled: c
            .get("tmpdir.enabled", t.enabled, E_BOOL, Some)
            .unwrap_or(true),
        size: c
            .get("tmpdir.size", t.size, E_SIZE, positive_size)
            .unwrap_or(Bytes(64 << 20)),
    };

    let control = Control {
        group: c
            .get(
                "control.group",
                raw.control.group,
                "a group name, or \"\" for none",
                |s: String| (!s.contains('\0')).then_some(s),
            )
            .filter(|g| !g.is_empty()),
    };

    let idle = Idle {
        stop_after: c
            .get("idle.stop-after", raw.idle.stop_after, E_DURATION, duration)
            .unwrap_or(Duration::ZERO),
    };

    let environment = c.environment(environment, &jemalloc, &tmpdir);

    let config = Config {
        app,
        command: command.unwrap_or_default(),
        directory,
        user,
        group,
        workers,
        environment,
        listen,
        ready,
        stop,
        memory,
        recycle,
        restart,
        jemalloc,
        tmpdir,
        control,
        idle,
    };
    (config, c.prov, c.errors)
}

struct Checker<'a> {
    ctx: &'a Ctx<'a>,
    prov: Provenance,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn source(&self, origin: &Origin) -> Source {
        match origin {
            Origin::Span(r) => Source::File {
                path: self.ctx.path.to_owned(),
                line: self.ctx.lines.line(r.start),
            },
            Origin::Env { var, .. } => Source::Env { var: var.clone() },
            Origin::Alias { var, .. } => Source::Alias { var: var.clone() },
        }
    }

    /// What was written, for "got ...": the TOML text, or the variable's value quoted.
    fn written(&self, origin: &Origin) -> String {
        let s = match origin {
            Origin::Span(r) => self.ctx.text.get(r.clone()).unwrap_or("").trim().to_owned(),
            Origin::Env { value, .. } | Origin::Alias { value, .. } => format!("{value:?}"),
        };
        let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
        if one_line.chars().count() > 80 {
            format!("{}...", one_line.chars().take(77).collect::<String>())
        } else {
            one_line
        }
    }

    fn push(&mut self, key: &str, source: &Source, message: String, expected: &str) {
        self.errors.push(
            ConfigError::new(
                ErrorKind::Invalid,
                Location::of(source, self.ctx.path),
                message,
            )
            .key(key)
            .expected(expected),
        );
    }

    /// Records where `key` came from and converts its value; `None` when missing, or when
    /// invalid (and then the problem is recorded: "got WRITTEN; expected EXPECTED").
    fn get<T, U>(
        &mut self,
        key: &'static str,
        field: Option<Field<T>>,
        expected: &str,
        convert: impl FnOnce(T) -> Option<U>,
    ) -> Option<U> {
        let Some(field) = field else {
            self.prov.insert(key.to_owned(), Source::Default);
            return None;
        };
        let source = self.source(&field.origin);
        self.prov.insert(key.to_owned(), source.clone());
        let converted = field.value.ok().and_then(convert);
        if converted.is_none() {
            let got = format!("got {}", self.written(&field.origin));
            self.push(key, &source, got, expected);
        }
        converted
    }

    /// A problem between two keys, reported on `key`.
    fn conflict(&mut self, key: &str, message: String, expected: &str) {
        let source = self.prov.get(key).cloned().unwrap_or(Source::Default);
        self.push(key, &source, message, expected);
    }

    /// `environment`: names, values, and the variables kechi owns or manages.
    fn environment(
        &mut self,
        field: Option<Field<BTreeMap<String, String>>>,
        jemalloc: &Jemalloc,
        tmpdir: &TmpDir,
    ) -> BTreeMap<String, String> {
        let Some(env) = self.get("environment", field.clone(), E_ENV_TABLE, Some) else {
            return BTreeMap::new();
        };
        let field_source = self.prov["environment"].clone();
        for (name, value) in &env {
            // In the file, point at the variable's own line when it has one.
            let source = match &field_source {
                Source::File { path, .. } => Source::File {
                    path: path.clone(),
                    line: self
                        .ctx
                        .key_lines
                        .get(&format!("environment.{name}"))
                        .copied()
                        .unwrap_or_else(|| self.line_of(&field)),
                },
                other => other.clone(),
            };
            let key = format!("environment.{name}");
            let managed_by = match name.as_str() {
                "LD_PRELOAD" | "MALLOC_CONF" if jemalloc.enabled => Some("jemalloc"),
                "TMPDIR" if tmpdir.enabled => Some("tmpdir"),
                _ => None,
            };
            if name.is_empty() || name.contains(['=', '\0']) {
                self.push(
                    &key,
                    &source,
                    format!("got the variable name {name:?}"),
                    "a variable name without '=' or NUL",
                );
            } else if value.contains('\0') {
                self.push(
                    &key,
                    &source,
                    "the value contains a NUL byte".into(),
                    "a value without NUL bytes",
                );
            } else if OWNED_VARS.contains(&name.as_str()) {
                self.push(
                    &key,
                    &source,
                    format!("{name} is set by kechi for every worker"),
                    "to leave it out of environment",
                );
            } else if let Some(section) = managed_by {
                self.push(
                    &key,
                    &source,
                    format!("{name} is set by kechi while {section}.enabled = true"),
                    &format!("{section}.enabled = false to set {name} yourself"),
                );
            }
        }
        env
    }

    fn line_of<T>(&self, field: &Option<Field<T>>) -> usize {
        match field.as_ref().map(|f| &f.origin) {
            Some(Origin::Span(r)) => self.ctx.lines.line(r.start),
            _ => 0,
        }
    }
}

/// Whether provenance says `key` was never given.
fn raw_missing(prov: &Provenance, key: &str) -> bool {
    matches!(prov.get(key), Some(Source::Default) | None)
}

fn name(s: String) -> Option<String> {
    (!s.is_empty() && !s.contains('\0')).then_some(s)
}

fn duration(q: Quantity) -> Option<Duration> {
    match q {
        Quantity::Int(n) => u64::try_from(n).ok().map(Duration::from_secs),
        Quantity::Str(s) => parse_duration(&s).ok(),
    }
}

fn positive_duration(q: Quantity) -> Option<Duration> {
    duration(q).filter(|d| !d.is_zero())
}

fn size(q: Quantity) -> Option<Bytes> {
    match q {
        Quantity::Int(n) => u64::try_from(n).ok().map(Bytes),
        Quantity::Str(s) => parse_bytes(&s).ok(),
    }
}

fn positive_size(q: Quantity) -> Option<Bytes> {
    size(q).filter(|b| b.0 > 0)
}

fn limit(q: Quantity) -> Option<Limit> {
    match &q {
        Quantity::Str(s) if matches!(s.trim(), "infinity" | "max") => Some(Limit::Infinity),
        _ => size(q).map(Limit::Bytes),
    }
}

/// A cgroup limit of zero would kill the worker at once: refuse it for max and high.
fn positive_limit(q: Quantity) -> Option<Limit> {
    limit(q).filter(|l| *l != Limit::Bytes(Bytes(0)))
}

fn percent(s: String) -> Option<Percent> {
    parse_percent(&s).ok()
}

fn signal(s: String) -> Option<Signal> {
    parse_signal(&s).ok()
}

fn at_least_1(n: i64) -> Option<u32> {
    u32::try_from(n).ok().filter(|n| *n >= 1)
}

/// `/path.sock`, `127.0.0.1:8080`, `[::1]:8080`, `:8080` (port 1..=65535).
fn valid_listen(a: &str) -> bool {
    if a.starts_with('/') {
        // sun_path holds 108 bytes including the terminating NUL.
        return a.len() < 108 && !a.contains('\0');
    }
    if let Some(port) = a.strip_prefix(':') {
        return port.parse::<u16>().is_ok_and(|p| p > 0);
    }
    a.parse::<SocketAddr>().is_ok_and(|s| s.port() > 0)
}

/// Comma-separated `name:value` with jemalloc's option-name characters. A malformed string
/// would make jemalloc print a warning in every worker and ignore the rest.
fn valid_malloc_conf(s: &str) -> bool {
    s.is_empty()
        || s.split(',').all(|item| {
            item.split_once(':').is_some_and(|(k, v)| {
                !k.is_empty()
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !v.is_empty()
                    && !v.contains(char::is_whitespace)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::super::error::ConfigErrors;
    use super::*;

    /// Parses `text` as `/etc/kechi/demo.toml` (no env, no host) and returns the messages.
    fn check_at(path: &str, text: &str) -> (Config, Provenance, Vec<String>) {
        let raw: RawConfig = toml::from_str(text).unwrap();
        let lines = LineIndex::new(text);
        let key_lines = super::super::shape::check(text, Path::new(path), &lines)
            .unwrap()
            .key_lines;
        let ctx = Ctx {
            path: Path::new(path),
            text,
            lines: &lines,
            key_lines: &key_lines,
        };
        let (config, prov, errors) = validate(raw, &ctx);
        // In reading order, as users get them.
        let errors = if errors.is_empty() {
            Vec::new()
        } else {
            ConfigErrors::new(errors)
                .errors()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        (config, prov, errors)
    }

    fn check(text: &str) -> (Config, Provenance, Vec<String>) {
        check_at("/etc/kechi/demo.toml", text)
    }

    fn errors(text: &str) -> Vec<String> {
        check(text).2
    }

    const CMD: &str = "command = [\"/bin/app\"]\n";

    #[test]
    fn minimal_file_gets_defaults() {
        let (c, prov, errs) = check(CMD);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.app.as_str(), "demo");
        assert_eq!(c.command, ["/bin/app"]);
        assert_eq!(c.directory, PathBuf::from("/"));
        assert_eq!(c.user, None);
        assert_eq!(c.workers, 2);
        assert_eq!(c.ready.mode, ReadyMode::Accept);
        assert_eq!(c.ready.delay, Duration::from_secs(5));
        assert_eq!(c.ready.timeout, Duration::from_secs(60));
        assert_eq!(c.stop.signal.to_string(), "TERM");
        assert_eq!(c.stop.timeout, Duration::from_secs(30));
        assert_eq!(c.memory.max, Limit::Infinity);
        assert_eq!(c.memory.high, Limit::Infinity);
        assert_eq!(c.memory.swap_max, None);
        assert_eq!(c.memory.metric, Metric::Uss);
        assert_eq!(c.memory.recycle_above, None);
        assert_eq!(c.recycle.max_age, Duration::ZERO);
        assert_eq!(c.recycle.jitter, Percent::from_whole(10));
        assert_eq!(c.recycle.min_interval, Duration::from_secs(30));
        assert_eq!(c.recycle.max_concurrent, 1);
        assert_eq!(c.recycle.check_interval, Duration::from_secs(5));
        assert_eq!(c.restart.backoff, Duration::from_secs(1));
        assert_eq!(c.restart.backoff_max, Duration::from_secs(60));
        assert_eq!(c.restart.burst, 5);
        assert_eq!(c.restart.window, Duration::from_secs(60));
        assert!(c.jemalloc.enabled);
        assert_eq!(c.jemalloc.path, JemallocPath::Auto);
        assert_eq!(c.jemalloc.conf, "");
        assert!(c.tmpdir.enabled);
        assert_eq!(c.tmpdir.size, Bytes(64 << 20));
        assert_eq!(c.control.group, None);
        assert!(c.listen.is_empty());
        assert_eq!(
            prov["command"],
            Source::File {
                path: "/etc/kechi/demo.toml".into(),
                line: 1
            }
        );
        assert_eq!(prov["memory.max"], Source::Default);
        assert_eq!(prov.len(), super::super::keys::KEYS.len());
    }

    #[test]
    fn integers_as_sizes_and_durations() {
        let (c, _, errs) = check(&format!(
            "{CMD}[memory]\nmax = 536870912\n[ready]\ntimeout = 90\n"
        ));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.memory.max, Limit::Bytes(Bytes(512 << 20)));
        assert_eq!(c.ready.timeout, Duration::from_secs(90));
    }

    #[test]
    fn every_problem_at_once() {
        let errs = errors(
            "command = []\nworkers = 0\ndirectory = \"srv\"\n[memory]\nmax = \"5X\"\nmetric = \"vss\"\n",
        );
        assert_eq!(
            errs,
            [
                format!("/etc/kechi/demo.toml:1: command: got []; expected {E_COMMAND}"),
                format!("/etc/kechi/demo.toml:2: workers: got 0; expected {E_WORKERS}"),
                format!("/etc/kechi/demo.toml:3: directory: got \"srv\"; expected {E_ABS_DIR}"),
                format!("/etc/kechi/demo.toml:5: memory.max: got \"5X\"; expected {E_LIMIT}"),
                format!("/etc/kechi/demo.toml:6: memory.metric: got \"vss\"; expected {E_METRIC}"),
            ]
        );
    }

    #[test]
    fn command_rules() {
        assert!(errors("").iter().any(|e| e.contains(": command: missing")));
        for bad in [
            "command = \"/bin/app --flag\"",
            "command = [\"\"]",
            "command = [\"bin/app\"]",
            "command = [\"/bin/app\", 5]",
        ] {
            let errs = errors(bad);
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert!(errs[0].contains(":1: command: got "), "{bad}: {errs:?}");
        }
        assert!(errors("command = [\"plackup\", \"app.psgi\"]").is_empty());
    }

    #[test]
    fn ranges() {
        let bad = [
            ("workers = 257", "workers"),
            ("workers = \"2\"", "workers"),
            ("[recycle]\nmax-concurrent = 0", "recycle.max-concurrent"),
            (
                "[recycle]\ncheck-interval = \"50ms\"",
                "recycle.check-interval",
            ),
            ("[recycle]\njitter = 10", "recycle.jitter"),
            ("[recycle]\njitter = \"120%\"", "recycle.jitter"),
            ("[restart]\nburst = 0", "restart.burst"),
            ("[restart]\nwindow = \"0\"", "restart.window"),
            ("[ready]\nmode = \"ready\"", "ready.mode"),
            ("[ready]\ntimeout = \"0s\"", "ready.timeout"),
            ("[ready]\ndelay = -1", "ready.delay"),
            ("[stop]\nsignal = \"TERMINATE\"", "stop.signal"),
            ("[memory]\nchild-signal = \"NOPE\"", "memory.child-signal"),
            ("[memory]\nmax = 0", "memory.max"),
            ("[memory]\nmin-shared = \"50\"", "memory.min-shared"),
            ("[memory]\nrecycle-above = \"0\"", "memory.recycle-above"),
            ("[jemalloc]\nenabled = \"yes\"", "jemalloc.enabled"),
            ("[jemalloc]\npath = \"lib/x.so\"", "jemalloc.path"),
            ("[jemalloc]\nconf = \"narenas 2\"", "jemalloc.conf"),
            ("[tmpdir]\nsize = \"0\"", "tmpdir.size"),
            ("listen = [\"8080\"]", "listen"),
            ("listen = [\":0\"]", "listen"),
            ("user = \"\"", "user"),
        ];
        for (text, key) in bad {
            let errs = errors(&format!("{CMD}{text}\n"));
            assert_eq!(errs.len(), 1, "{text}: {errs:?}");
            assert!(
                errs[0].contains(&format!(": {key}: got ")),
                "{text}: {errs:?}"
            );
        }
        let good = "[memory]\nswap-max = \"0\"\nmax = \"infinity\"\nhigh = \"max\"\n\
                    [recycle]\ncheck-interval = \"100ms\"\njitter = \"12.5%\"\n\
                    [jemalloc]\nconf = \"narenas:2,dirty_decay_ms:1000\"\npath = \"/usr/lib/libjemalloc.so.2\"\n\
                    [control]\ngroup = \"\"\n";
        let (c, _, errs) = check(&format!(
            "{CMD}listen = [\"/run/a.sock\", \"127.0.0.1:8080\", \"[::1]:8080\", \":8080\"]\n{good}"
        ));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.memory.swap_max, Some(Limit::Bytes(Bytes(0))));
        assert_eq!(c.control.group, None);
        assert_eq!(c.listen.len(), 4);
    }

    #[test]
    fn cross_checks() {
        let errs = errors(&format!("{CMD}[memory]\nmax = \"512M\"\nhigh = \"600M\"\n"));
        assert_eq!(
            errs,
            [
                "/etc/kechi/demo.toml:4: memory.high: 600M is above memory.max (512M); expected memory.high <= memory.max"
            ]
        );
        let errs = errors(&format!(
            "{CMD}[restart]\nbackoff = \"2m\"\nbackoff-max = \"1m\"\n"
        ));
        assert_eq!(
            errs,
            [
                "/etc/kechi/demo.toml:3: restart.backoff: 2m is above restart.backoff-max (1m); expected restart.backoff <= restart.backoff-max"
            ]
        );
        let errs = errors(&format!("{CMD}[ready]\nmode = \"delay\"\ndelay = \"2m\"\n"));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains(":4: ready.delay: 2m is not below ready.timeout (1m)"));
        let errs = errors(&format!(
            "{CMD}[memory]\nmax = \"512M\"\nrecycle-above = \"512M\"\n"
        ));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains(":4: memory.recycle-above: 512M is not below memory.max"));
        // Backoff only conflicts with a valid backoff-max, not with a fallback.
        let errs = errors(&format!("{CMD}[restart]\nbackoff = \"1m\"\n"));
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn environment_rules() {
        let text = format!(
            "{CMD}[environment]\nPLACK_ENV = \"production\"\nLISTEN_FDS = \"3\"\nTMPDIR = \"/tmp\"\nLD_PRELOAD = \"/x.so\"\n\"A=B\" = \"c\"\n"
        );
        let errs = errors(&text);
        assert_eq!(
            errs,
            [
                "/etc/kechi/demo.toml:4: environment.LISTEN_FDS: LISTEN_FDS is set by kechi for every worker; expected to leave it out of environment",
                "/etc/kechi/demo.toml:5: environment.TMPDIR: TMPDIR is set by kechi while tmpdir.enabled = true; expected tmpdir.enabled = false to set TMPDIR yourself",
                "/etc/kechi/demo.toml:6: environment.LD_PRELOAD: LD_PRELOAD is set by kechi while jemalloc.enabled = true; expected jemalloc.enabled = false to set LD_PRELOAD yourself",
                "/etc/kechi/demo.toml:7: environment.A=B: got the variable name \"A=B\"; expected a variable name without '=' or NUL",
            ]
        );
        let ok = format!(
            "{CMD}environment = {{ TMPDIR = \"/tmp\", MALLOC_CONF = \"narenas:1\" }}\n[jemalloc]\nenabled = false\n[tmpdir]\nenabled = false\n"
        );
        let (c, _, errs) = check(&ok);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.environment["TMPDIR"], "/tmp");
        let errs = errors(&format!("{CMD}environment = {{ PORT = 8080 }}\n"));
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].contains(":2: environment: got { PORT = 8080 }"),
            "{errs:?}"
        );
    }

    #[test]
    fn app_name_comes_from_the_file_name() {
        let (_, _, errs) = check_at("/etc/kechi/Bad.App.toml", CMD);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("/etc/kechi/Bad.App.toml: app name: got \"Bad.App\" (from the file name); expected a file named APP.toml"),
            "{errs:?}"
        );
    }

    #[test]
    fn env_values_are_reported_as_env() {
        let mut raw: RawConfig = toml::from_str(CMD).unwrap();
        raw.set(
            "workers",
            Origin::Env {
                var: "KECHI_WORKERS".into(),
                value: "many".into(),
            },
        );
        let text = CMD;
        let lines = LineIndex::new(text);
        let key_lines = KeyLines::new();
        let ctx = Ctx {
            path: Path::new("/etc/kechi/demo.toml"),
            text,
            lines: &lines,
            key_lines: &key_lines,
        };
        let (_, prov, errs) = validate(raw, &ctx);
        assert_eq!(
            errs[0].to_string(),
            format!("environment: KECHI_WORKERS: got \"many\"; expected {E_WORKERS}")
        );
        assert_eq!(
            prov["workers"],
            Source::Env {
                var: "KECHI_WORKERS".into()
            }
        );
    }

    #[test]
    fn listen_forms() {
        for ok in ["/run/kechi/a.sock", "0.0.0.0:80", "[::]:443", ":8080"] {
            assert!(valid_listen(ok), "{ok}");
        }
        for bad in [
            "",
            "80",
            "localhost:80",
            ":99999",
            "a.sock",
            &format!("/{}", "x".repeat(120)),
        ] {
            assert!(!valid_listen(bad), "{bad}");
        }
    }

    #[test]
    fn malloc_conf_syntax() {
        assert!(valid_malloc_conf(""));
        assert!(valid_malloc_conf(crate::jemalloc::DEFAULT_CONF));
        assert!(valid_malloc_conf("prof_prefix:/tmp/jeprof"));
        for bad in [
            "narenas",
            "narenas:",
            ":2",
            "narenas:2,",
            "a b:1",
            "narenas:2 ",
        ] {
            assert!(!valid_malloc_conf(bad), "{bad}");
        }
    }
}

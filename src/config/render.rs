//! Output for `kechictl config`: every key with its effective value and where it came from,
//! as an aligned text table or as JSON. Values are written the way the config file takes them
//! (`512M`, `1h30m`, `10%`, `TERM`), so a line can be copied back into a file or a drop-in.

use serde_json::{Map, Value, json};

use super::Loaded;
use super::keys::KEYS;
use super::model::*;
use crate::jemalloc::DEFAULT_CONF;
use crate::quantity::format_duration;

/// `default`, `/etc/kechi/demo.toml:4`, `env KECHI_WORKERS`, `alias KILL_OLD_DELAY`.
pub fn source_text(s: &Source) -> String {
    match s {
        Source::Default => "default".into(),
        Source::File { path, line } => format!("{}:{line}", path.display()),
        Source::Env { var } => format!("env {var}"),
        Source::Alias { var } => format!("alias {var}"),
    }
}

/// An effective value: a config value, or a note saying what an unset key means.
enum Shown {
    Value(Value),
    Unset(&'static str),
}

fn s(v: impl ToString) -> Shown {
    Shown::Value(Value::String(v.to_string()))
}

fn dur(d: std::time::Duration) -> Shown {
    s(format_duration(d))
}

fn limit(l: Limit) -> String {
    match l {
        Limit::Bytes(b) => b.to_string(),
        Limit::Infinity => "infinity".into(),
    }
}

fn opt<T: std::fmt::Display>(v: &Option<T>, unset: &'static str) -> Shown {
    v.as_ref().map_or(Shown::Unset(unset), s)
}

/// The effective value of `key`, `None` for a key not in [`KEYS`].
fn shown(c: &Config, key: &str) -> Option<Shown> {
    Some(match key {
        "command" => Shown::Value(json!(c.command)),
        "directory" => s(c.directory.display()),
        "user" => opt(
            &c.user,
            "(nobody when kechid runs as root, else kechid's user)",
        ),
        "group" => opt(&c.group, "(the user's primary group)"),
        "workers" => Shown::Value(json!(c.workers)),
        "environment" => Shown::Value(json!(c.environment)),
        "listen" => Shown::Value(json!(c.listen)),
        "ready.mode" => s(match c.ready.mode {
            ReadyMode::Notify => "notify",
            ReadyMode::Accept => "accept",
            ReadyMode::Delay => "delay",
        }),
        "ready.delay" => dur(c.ready.delay),
        "ready.timeout" => dur(c.ready.timeout),
        "stop.signal" => s(c.stop.signal),
        "stop.timeout" => dur(c.stop.timeout),
        "memory.max" => s(limit(c.memory.max)),
        "memory.high" => s(limit(c.memory.high)),
        "memory.swap-max" => opt(&c.memory.swap_max.map(limit), "(systemd's default)"),
        "memory.metric" => s(match c.memory.metric {
            Metric::Uss => "uss",
            Metric::Pss => "pss",
            Metric::Rss => "rss",
            Metric::Cgroup => "cgroup",
        }),
        "memory.recycle-above" => opt(&c.memory.recycle_above, "(off)"),
        "memory.app-budget" => opt(&c.memory.app_budget, "(off)"),
        "memory.min-shared" => opt(&c.memory.min_shared, "(off)"),
        "memory.child-signal" => opt(&c.memory.child_signal, "(off)"),
        "recycle.max-age" => dur(c.recycle.max_age),
        "recycle.jitter" => s(c.recycle.jitter),
        "recycle.min-interval" => dur(c.recycle.min_interval),
        "recycle.max-concurrent" => Shown::Value(json!(c.recycle.max_concurrent)),
        "recycle.check-interval" => dur(c.recycle.check_interval),
        "restart.backoff" => dur(c.restart.backoff),
        "restart.backoff-max" => dur(c.restart.backoff_max),
        "restart.burst" => Shown::Value(json!(c.restart.burst)),
        "restart.window" => dur(c.restart.window),
        "jemalloc.enabled" => Shown::Value(json!(c.jemalloc.enabled)),
        "jemalloc.path" => match &c.jemalloc.path {
            JemallocPath::Auto => s("auto"),
            JemallocPath::Path(p) => s(p.display()),
        },
        "jemalloc.conf" => s(&c.jemalloc.conf),
        "tmpdir.enabled" => Shown::Value(json!(c.tmpdir.enabled)),
        "tmpdir.size" => s(c.tmpdir.size),
        "control.group" => opt(&c.control.group, "(none: root only)"),
        "idle.stop-after" => dur(c.idle.stop_after),
        _ => return None,
    })
}

/// What a key amounts to when that differs from what was written: the library "auto" found,
/// the MALLOC_CONF an empty `conf` stands for.
fn effective(c: &Config, key: &str) -> Option<String> {
    match key {
        "jemalloc.path" if c.jemalloc.enabled => {
            c.jemalloc.library.as_ref().map(|p| p.display().to_string())
        }
        "jemalloc.conf" if c.jemalloc.conf.is_empty() => Some(DEFAULT_CONF.into()),
        _ => None,
    }
}

/// A value in config-file syntax: bare scalars, TOML-style arrays and inline tables.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Object(m) => format!(
            "{{ {} }}",
            m.iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// A table of KEY, VALUE, SOURCE, one line per key, in the order of the config file.
pub fn render_text(loaded: &Loaded) -> String {
    let rows: Vec<[String; 3]> = KEYS
        .iter()
        .map(|key| {
            let value = match shown(&loaded.config, key) {
                Some(Shown::Value(v)) => value_text(&v),
                Some(Shown::Unset(note)) => note.to_owned(),
                None => String::new(),
            };
            let value = match (effective(&loaded.config, key), value.is_empty()) {
                (Some(e), true) => format!("\"\" ({e})"),
                (Some(e), false) => format!("{value} ({e})"),
                (None, _) => value,
            };
            let source = loaded
                .provenance
                .get(*key)
                .map_or_else(|| "default".to_owned(), source_text);
            [key.to_string(), value, source]
        })
        // then the box-wide keys every app shares (kechi.conf, KECHI_BOX_*)
        .chain(
            loaded
                .boxed
                .rows()
                .into_iter()
                .map(|r| [r.key.to_owned(), r.value, r.source]),
        )
        .collect();
    let header = ["KEY".to_owned(), "VALUE".to_owned(), "SOURCE".to_owned()];
    let w0 = rows
        .iter()
        .chain([&header])
        .map(|r| r[0].len())
        .max()
        .unwrap_or(0);
    let w1 = rows
        .iter()
        .chain([&header])
        .map(|r| r[1].chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        out.push_str(&format!("{:w0$}  {:w1$}  {}\n", r[0], r[1], r[2]));
    }
    out
}

/// `{"app": "demo", "keys": {"workers": {"value": 2, "source": {"kind": "default"}}, ...}}`.
/// Unset optional keys have `"value": null`; `jemalloc.path` and `jemalloc.conf` also carry
/// `"effective"` when it differs from what was written.
pub fn render_json(loaded: &Loaded) -> Value {
    let mut keys = Map::new();
    for key in KEYS {
        let value = match shown(&loaded.config, key) {
            Some(Shown::Value(v)) => v,
            _ => Value::Null,
        };
        let source = loaded.provenance.get(*key).unwrap_or(&Source::Default);
        let mut entry = json!({ "value": value, "source": source });
        if let Some(e) = effective(&loaded.config, key) {
            entry["effective"] = Value::String(e);
        }
        keys.insert(key.to_string(), entry);
    }
    let boxed: Map<String, Value> = loaded
        .boxed
        .rows()
        .into_iter()
        .map(|r| {
            (
                r.key.to_owned(),
                json!({ "value": r.value, "source": r.source }),
            )
        })
        .collect();
    json!({ "app": loaded.config.app, "keys": keys, "box": boxed })
}

#[cfg(test)]
mod tests {
    use super::super::host::fake::FakeHost;
    use super::super::parse;
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn loaded() -> Loaded {
        let text = "command = [\"/usr/bin/plackup\", \"app.psgi\"]\nworkers = 3\n\
                    environment = { PLACK_ENV = \"production\" }\n[memory]\nmax = \"512M\"\n";
        let env: BTreeMap<String, String> = [("KECHI_RECYCLE_MAX_AGE", "1h")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        parse(
            text,
            Path::new("/etc/kechi/demo.toml"),
            &env,
            &FakeHost::new(),
        )
        .unwrap()
    }

    #[test]
    fn every_key_has_a_value() {
        let c = loaded().config;
        for key in KEYS {
            assert!(shown(&c, key).is_some(), "{key}");
        }
    }

    #[test]
    fn text_table() {
        let t = render_text(&loaded());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines.len(),
            KEYS.len() + 3,
            "the keys, box.budget, box.pressure, a header"
        );
        assert!(lines[0].starts_with("KEY "));
        let row = |key: &str| {
            let l = lines
                .iter()
                .find(|l| l.starts_with(&format!("{key} ")))
                .unwrap();
            l.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        assert_eq!(
            row("command"),
            "command [\"/usr/bin/plackup\", \"app.psgi\"] /etc/kechi/demo.toml:1"
        );
        assert_eq!(row("workers"), "workers 3 /etc/kechi/demo.toml:2");
        assert_eq!(
            row("environment"),
            "environment { PLACK_ENV = \"production\" } /etc/kechi/demo.toml:3"
        );
        assert_eq!(row("memory.max"), "memory.max 512M /etc/kechi/demo.toml:5");
        assert_eq!(row("memory.high"), "memory.high infinity default");
        assert_eq!(
            row("recycle.max-age"),
            "recycle.max-age 1h env KECHI_RECYCLE_MAX_AGE"
        );
        assert_eq!(
            row("jemalloc.path"),
            "jemalloc.path auto (/usr/lib/x86_64-linux-gnu/libjemalloc.so.2) default"
        );
        assert_eq!(
            row("jemalloc.conf"),
            format!("jemalloc.conf \"\" ({DEFAULT_CONF}) default")
        );
        assert_eq!(row("memory.app-budget"), "memory.app-budget (off) default");
    }

    #[test]
    fn json_document() {
        let j = render_json(&loaded());
        assert_eq!(j["app"], "demo");
        let keys = j["keys"].as_object().unwrap();
        assert_eq!(keys.len(), KEYS.len());
        assert_eq!(keys["workers"]["value"], 3);
        assert_eq!(
            keys["workers"]["source"],
            json!({"kind": "file", "path": "/etc/kechi/demo.toml", "line": 2})
        );
        assert_eq!(keys["memory.max"]["value"], "512M");
        assert_eq!(keys["memory.swap-max"]["value"], Value::Null);
        assert_eq!(
            keys["recycle.max-age"]["source"],
            json!({"kind": "env", "var": "KECHI_RECYCLE_MAX_AGE"})
        );
        assert_eq!(
            keys["command"]["value"],
            json!(["/usr/bin/plackup", "app.psgi"])
        );
        assert_eq!(keys["jemalloc.conf"]["effective"], DEFAULT_CONF);
    }

    #[test]
    fn sources() {
        assert_eq!(source_text(&Source::Default), "default");
        assert_eq!(
            source_text(&Source::Alias {
                var: "KILL_OLD_DELAY".into()
            }),
            "alias KILL_OLD_DELAY"
        );
    }
}

//! Configuration: `/etc/kechi/APP.toml`, overridden by `KECHI_*` variables and the
//! Server::Starter aliases, checked before anything starts, with the provenance of every
//! effective value.
//!
//! [`load`] / [`parse`] run these stages and report every problem they find, each as
//! `FILE:LINE: KEY: what was wrong; expected WHAT` (or `environment: VAR: ...`):
//! 1. shape (`shape`): TOML syntax, unknown keys ("did you mean ..."), sections that are not
//!    tables; only a syntax error stops here, the others are reported with the rest;
//! 2. raw values (`raw`): serde into [`RawConfig`](raw::RawConfig), keeping each value's span
//!    and tolerating wrong types so they are reported with the rest;
//! 3. overlay (`env`): precedence, lowest first: built-in defaults < the file <
//!    Server::Starter aliases (`ENABLE_AUTO_RESTART`/`AUTO_RESTART_INTERVAL`,
//!    `KILL_OLD_DELAY`) < `KECHI_*` variables;
//! 4. meaning (`validate`): types, ranges, cross-key rules, the app name from the file name;
//! 5. host (`host`): users and groups exist, `directory` and the program of `command` exist
//!    and can be used, jemalloc is found and safe to preload.
//!
//! Problems are errors or warnings ([`Severity`]); warnings alone do not fail a load and come
//! back in [`Loaded::warnings`]. How the recognised app server is run is judged separately, by
//! [`crate::servers`], since that needs the listening sockets.
//!
//! The environment is passed in as a map; the library never reads the process environment.
//!
//! Defaults (for keys neither in the file nor overridden):
//!
//! | key | default | | key | default |
//! |---|---|---|---|---|
//! | directory | `/` | | recycle.max-age | `0` (off) |
//! | user | `nobody` when kechid is root, else kechid's user | | recycle.jitter | `10%` |
//! | group | the user's primary group | | recycle.min-interval | `30s` |
//! | workers | `2` | | recycle.max-concurrent | `1` |
//! | environment | `{}` | | recycle.check-interval | `5s` |
//! | listen | `[]` | | restart.backoff | `1s` |
//! | ready.mode | `accept` | | restart.backoff-max | `60s` |
//! | ready.delay | `5s` | | restart.burst | `5` |
//! | ready.timeout | `60s` | | restart.window | `60s` |
//! | stop.signal | `TERM` | | jemalloc.enabled | `true` |
//! | stop.timeout | `30s` | | jemalloc.path | `auto` |
//! | memory.max, memory.high | `infinity` | | jemalloc.conf | `""` (= [`crate::jemalloc::DEFAULT_CONF`]) |
//! | memory.swap-max | unset (systemd's default) | | tmpdir.enabled | `true` |
//! | memory.metric | `uss` | | tmpdir.size | `64M` |
//! | recycle-above, app-budget, min-shared, child-signal | unset (off) | | control.group | none |
//!
//! `command` has no default: it is required.

pub mod boxconf;
mod env;
mod error;
mod host;
mod keys;
mod lines;
pub mod model;
mod raw;
mod render;
mod shape;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

pub use env::{ALIASES, parse_unit_environment};
pub use error::{ConfigError, ConfigErrors, ErrorKind, Location, Severity};
pub use host::{DEFAULT_USER, Host, PathFacts, PathKind, RealHost};
pub use keys::{KEYS, env_var};
pub use model::*;
pub use render::{render_json, render_text, source_text};
pub use validate::OWNED_VARS;

/// A checked configuration and where each of its values came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub provenance: Provenance,
    /// Problems that do not stop kechid ([`Severity::Warning`]), in line order.
    pub warnings: Vec<ConfigError>,
    /// The box-wide policy (`/etc/kechi/kechi.conf` and `KECHI_BOX_*`), read by [`load`];
    /// [`parse`] of an app file alone leaves it empty.
    pub boxed: boxconf::BoxPolicy,
}

/// Reads `path` and runs [`parse`] on it. An unreadable file is one [`ErrorKind::Read`] error
/// naming the path and the operation.
pub fn load(
    path: &Path,
    env: &BTreeMap<String, String>,
    host: &dyn Host,
) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::new(vec![ConfigError::new(
            ErrorKind::Read,
            Location::File {
                path: path.to_owned(),
                line: None,
            },
            format!("cannot read: {e}"),
        )])
    })?;
    let app = parse(&text, path, env, host);
    // Every problem of both files in one go.
    match (app, boxconf::load_box(Path::new(boxconf::BOX_CONF), env)) {
        (Ok(mut loaded), Ok(boxed)) => {
            loaded.boxed = boxed;
            Ok(loaded)
        }
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(ConfigErrors::new(
            a.errors().iter().chain(b.errors()).cloned().collect(),
        )),
    }
}

/// Checks `text` as the contents of `path` (whose file name gives the app name), overlaid
/// with `env`, on `host`. Returns every problem found, or the config and its provenance.
pub fn parse(
    text: &str,
    path: &Path,
    env: &BTreeMap<String, String>,
    host: &dyn Host,
) -> Result<Loaded, ConfigErrors> {
    let lines = lines::LineIndex::new(text);
    let shape = shape::check(text, path, &lines).map_err(ConfigErrors::new)?;
    let key_lines = shape.key_lines;
    let mut raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
        // Unknown keys and misplaced sections are skipped by serde (the shape check has
        // reported them), so this is only a safety net; keep serde's word with the others.
        let mut all = shape.problems.clone();
        all.push(shape::from_toml_error(&e, text, path, &lines));
        ConfigErrors::new(all)
    })?;
    // Shape problems first: the rest of the file is still checked, so one run shows them all.
    let mut errors = shape.problems;
    errors.extend(env::overlay(&mut raw, env));
    let ctx = validate::Ctx {
        path,
        text,
        lines: &lines,
        key_lines: &key_lines,
    };
    let (mut config, provenance, invalid) = validate::validate(raw, &ctx);
    errors.extend(invalid);
    errors.extend(host::check(&mut config, &provenance, path, host));
    if errors.iter().any(|e| !e.is_warning()) {
        return Err(ConfigErrors::new(errors));
    }
    errors.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(Loaded {
        config,
        provenance,
        warnings: errors,
        boxed: boxconf::BoxPolicy::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::host::fake::FakeHost;
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overlay_precedence_and_provenance() {
        let text = "command = [\"/bin/app\"]\nworkers = 3\n[ready]\nmode = \"notify\"\n";
        let loaded = parse(
            text,
            Path::new("/etc/kechi/demo.toml"),
            &env(&[
                ("KECHI_WORKERS", "4"),
                ("KILL_OLD_DELAY", "10"),
                ("ENABLE_AUTO_RESTART", "1"),
                ("AUTO_RESTART_INTERVAL", "3600"),
            ]),
            &FakeHost::new(),
        )
        .unwrap();
        let c = &loaded.config;
        let p = &loaded.provenance;
        assert_eq!(c.workers, 4);
        assert_eq!(
            p["workers"],
            Source::Env {
                var: "KECHI_WORKERS".into()
            }
        );
        // The alias beats the file...
        assert_eq!(c.ready.mode, ReadyMode::Delay);
        assert_eq!(c.ready.delay, std::time::Duration::from_secs(10));
        assert_eq!(
            p["ready.mode"],
            Source::Alias {
                var: "KILL_OLD_DELAY".into()
            }
        );
        assert_eq!(c.recycle.max_age, std::time::Duration::from_secs(3600));
        assert_eq!(
            p["recycle.max-age"],
            Source::Alias {
                var: "AUTO_RESTART_INTERVAL".into()
            }
        );
        assert_eq!(
            p["command"],
            Source::File {
                path: "/etc/kechi/demo.toml".into(),
                line: 1
            }
        );
        assert_eq!(p["memory.max"], Source::Default);
    }

    #[test]
    fn env_problems_come_with_file_problems() {
        let errs = parse(
            "command = [\"/bin/app\"]\nworkers = 0\n",
            Path::new("/etc/kechi/demo.toml"),
            &env(&[("KECHI_MEMORY_MAX", "lots"), ("KECHI_BOGUS", "1")]),
            &FakeHost::new(),
        )
        .unwrap_err();
        let msgs: Vec<String> = errs.errors().iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].starts_with("/etc/kechi/demo.toml:2: workers: got 0"));
        assert!(msgs[1].starts_with("environment: KECHI_BOGUS: unknown variable"));
        assert!(
            msgs[2].starts_with("environment: KECHI_MEMORY_MAX: got \"lots\"; expected a size")
        );
    }

    #[test]
    fn unknown_key_does_not_hide_the_other_problems() {
        // Before, serde's deny_unknown_fields stopped at `workerz` and the rest showed up only
        // once it was fixed.
        let errs = parse(
            "command = [\"/usr/bin/gone\"]\nworkerz = 4\ndirectory = \"/srv/gone\"\n[memory]\nmax = \"lots\"\n",
            Path::new("/etc/kechi/demo.toml"),
            &BTreeMap::new(),
            &FakeHost::new(),
        )
        .unwrap_err();
        let msgs: Vec<String> = errs.errors().iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        assert!(
            msgs[0].starts_with("/etc/kechi/demo.toml:1: command: /usr/bin/gone does not exist"),
            "{msgs:?}"
        );
        assert!(
            msgs[1]
                .starts_with("/etc/kechi/demo.toml:2: workerz: unknown key; did you mean workers?"),
            "{msgs:?}"
        );
        assert!(
            msgs[2].starts_with("/etc/kechi/demo.toml:3: directory: /srv/gone does not exist"),
            "{msgs:?}"
        );
        assert!(
            msgs[3].starts_with("/etc/kechi/demo.toml:5: memory.max: got \"lots\""),
            "{msgs:?}"
        );
        // A section that is not a table, with a bad value elsewhere: both.
        let errs = parse(
            "command = [\"/bin/app\"]\nready = 5\nworkers = 0\n",
            Path::new("/etc/kechi/demo.toml"),
            &BTreeMap::new(),
            &FakeHost::new(),
        )
        .unwrap_err();
        let msgs: Vec<String> = errs.errors().iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[0].contains(":2: ready: got an integer"), "{msgs:?}");
        assert!(msgs[1].contains(":3: workers: got 0"), "{msgs:?}");
    }

    #[test]
    fn unreadable_file_names_path_and_operation() {
        let errs = load(
            Path::new("/nonexistent/kechi/demo.toml"),
            &BTreeMap::new(),
            &FakeHost::new(),
        )
        .unwrap_err();
        assert!(errs.is_read_error());
        assert!(
            errs.to_string()
                .starts_with("/nonexistent/kechi/demo.toml: cannot read: ")
        );
    }
}

//! The environment overlay: `KECHI_*` variables and Server::Starter aliases override keys of
//! the file, and say so in the provenance.
//!
//! Precedence, lowest first:
//! 1. built-in defaults,
//! 2. the config file,
//! 3. Server::Starter aliases (`ENABLE_AUTO_RESTART` + `AUTO_RESTART_INTERVAL` ->
//!    `recycle.max-age`; `KILL_OLD_DELAY` -> `ready.mode = "delay"` and `ready.delay`),
//! 4. `KECHI_*` variables (`KECHI_` + section + `_` + key, upper case, dashes as underscores).
//!
//! `KECHI_*` beats an alias because it is kechi's own, explicit spelling: a drop-in that sets
//! both `KILL_OLD_DELAY=10` and `KECHI_READY_MODE=notify` means notify mode.
//!
//! Alias details, as start_server reads them: `AUTO_RESTART_INTERVAL` only counts when
//! `ENABLE_AUTO_RESTART` is true, and defaults to 360 seconds then. Values are seconds (a
//! duration like `"5m"` works too).
//!
//! A variable replaces the key's whole value: `KECHI_ENVIRONMENT='{ A = "1" }'` replaces the
//! file's `environment` table rather than merging into it, as `KECHI_COMMAND` replaces argv.
//!
//! Every other `KECHI_*` variable is an error naming it, except `KECHI_APP` and `KECHI_WORKER`
//! when both are present: that is kechi's own worker environment (a command run from inside a
//! worker), not configuration, and the variables of kechid itself ([`DAEMON_VARS`]).
//!
//! The environment is always passed in; nothing here reads the process environment.

use std::collections::BTreeMap;

use super::error::{ConfigError, ErrorKind, Location};
use super::keys::{ENV_PREFIX, KEYS, env_var, key_for_env_var, suggest};
use super::raw::{FromEnv, Origin, RawConfig};

/// Server::Starter variables understood as aliases.
pub const ALIASES: &[&str] = &[
    "ENABLE_AUTO_RESTART",
    "AUTO_RESTART_INTERVAL",
    "KILL_OLD_DELAY",
];

/// start_server's default `--auto-restart-interval`.
const DEFAULT_AUTO_RESTART_INTERVAL: &str = "360";

/// Applies aliases, then `KECHI_*` variables, onto `raw`. Values are not judged here (a bad
/// value is reported by validation, quoting the variable); only unknown variables are errors.
/// `KECHI_*` variables that set kechid itself, not an app key: `KECHI_LOG` (log filter) and
/// `KECHI_RUNTIME_DIR` (where sockets and temp dirs live).
pub const DAEMON_VARS: &[&str] = &["KECHI_LOG", "KECHI_RUNTIME_DIR"];

pub fn overlay(raw: &mut RawConfig, env: &BTreeMap<String, String>) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    apply_aliases(raw, env, &mut errors);

    let worker_context = env.contains_key("KECHI_APP") && env.contains_key("KECHI_WORKER");
    for (var, value) in env.range(ENV_PREFIX.to_owned()..) {
        if !var.starts_with(ENV_PREFIX) {
            break;
        }
        // KECHI_BOX_* set the box-wide policy (kechi.conf's keys): checked by `boxconf`.
        let box_var = super::boxconf::BOX_KEYS
            .iter()
            .any(|k| super::keys::env_var(k) == *var);
        if (worker_context && (var == "KECHI_APP" || var == "KECHI_WORKER"))
            || DAEMON_VARS.contains(&var.as_str())
            || box_var
        {
            continue;
        }
        let origin = Origin::Env {
            var: var.clone(),
            value: value.clone(),
        };
        match key_for_env_var(var) {
            Some(key) => {
                raw.set(key, origin);
            }
            None => errors.push(unknown_var(var)),
        }
    }
    errors
}

fn apply_aliases(
    raw: &mut RawConfig,
    env: &BTreeMap<String, String>,
    errors: &mut Vec<ConfigError>,
) {
    let alias = |var: &str, value: &str| Origin::Alias {
        var: var.to_owned(),
        value: value.to_owned(),
    };
    if let Some(enable) = env.get("ENABLE_AUTO_RESTART") {
        match bool::from_env(enable) {
            Some(true) => {
                let origin = match env.get("AUTO_RESTART_INTERVAL") {
                    Some(v) => alias("AUTO_RESTART_INTERVAL", v),
                    None => alias("ENABLE_AUTO_RESTART", DEFAULT_AUTO_RESTART_INTERVAL),
                };
                raw.set("recycle.max-age", origin);
            }
            Some(false) => {}
            None => errors.push(
                ConfigError::new(
                    ErrorKind::Invalid,
                    Location::Env {
                        var: "ENABLE_AUTO_RESTART".into(),
                    },
                    format!("got {enable:?}"),
                )
                .key("recycle.max-age")
                .expected("1 or 0 (true/false, yes/no)"),
            ),
        }
    }
    if let Some(delay) = env.get("KILL_OLD_DELAY") {
        raw.set("ready.mode", alias("KILL_OLD_DELAY", "delay"));
        raw.set("ready.delay", alias("KILL_OLD_DELAY", delay));
    }
}

fn unknown_var(var: &str) -> ConfigError {
    let names: Vec<String> = KEYS.iter().map(|k| env_var(k)).collect();
    let e = ConfigError::new(
        ErrorKind::Invalid,
        Location::Env {
            var: var.to_owned(),
        },
        "unknown variable",
    );
    match suggest(var, names.iter().map(String::as_str)) {
        Some(s) => ConfigError {
            message: format!("unknown variable; did you mean {s}?"),
            ..e
        },
        None => e.expected(
            "KECHI_ + section + _ + key in upper case with dashes as underscores, \
             like KECHI_WORKERS or KECHI_MEMORY_MAX",
        ),
    }
}

/// Parses the value of `systemctl show -p Environment --value UNIT`: space-separated
/// `NAME=VALUE` words, each quoted the way systemd's `shell_maybe_quote` does when it holds
/// spaces or shell specials (`"A=b c"`, with `\"`, `\\`, `` \` `` and `\$` escaped). Words
/// older systemd could not print (`[unprintable]`) and words without `=` are skipped.
pub fn parse_unit_environment(text: &str) -> BTreeMap<String, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = text.trim_end_matches('\n').chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_ascii_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
        .into_iter()
        .filter(|w| w != "[unprintable]")
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::raw::Quantity;
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kechi_vars_set_keys() {
        let mut raw = RawConfig::default();
        let errs = overlay(
            &mut raw,
            &env(&[
                ("KECHI_WORKERS", "4"),
                ("KECHI_MEMORY_MAX", "300M"),
                ("KECHI_COMMAND", r#"["/bin/x", "-v"]"#),
                ("PATH", "/usr/bin"),
            ]),
        );
        assert!(errs.is_empty(), "{errs:?}");
        let w = raw.workers.unwrap();
        assert_eq!(w.value, Ok(4));
        assert_eq!(
            w.origin,
            Origin::Env {
                var: "KECHI_WORKERS".into(),
                value: "4".into()
            }
        );
        assert_eq!(
            raw.memory.max.unwrap().value,
            Ok(Quantity::Str("300M".into()))
        );
        assert_eq!(
            raw.command.unwrap().value,
            Ok(vec!["/bin/x".to_string(), "-v".to_string()])
        );
    }

    #[test]
    fn unknown_vars_are_errors_with_suggestions() {
        let mut raw = RawConfig::default();
        let errs = overlay(
            &mut raw,
            &env(&[("KECHI_WORKER", "4"), ("KECHI_FROBNICATE", "1")]),
        );
        let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs[0],
            "environment: KECHI_FROBNICATE: unknown variable; expected KECHI_ + section + _ + key in upper case with dashes as underscores, like KECHI_WORKERS or KECHI_MEMORY_MAX"
        );
        assert_eq!(
            msgs[1],
            "environment: KECHI_WORKER: unknown variable; did you mean KECHI_WORKERS?"
        );
    }

    #[test]
    fn worker_environment_is_ignored() {
        let mut raw = RawConfig::default();
        let errs = overlay(
            &mut raw,
            &env(&[("KECHI_APP", "demo"), ("KECHI_WORKER", "3")]),
        );
        assert!(errs.is_empty());
        assert_eq!(raw, RawConfig::default());
    }

    #[test]
    fn server_starter_aliases() {
        let mut raw = RawConfig::default();
        let errs = overlay(
            &mut raw,
            &env(&[
                ("ENABLE_AUTO_RESTART", "1"),
                ("AUTO_RESTART_INTERVAL", "600"),
                ("KILL_OLD_DELAY", "10"),
            ]),
        );
        assert!(errs.is_empty());
        let age = raw.recycle.max_age.unwrap();
        assert_eq!(age.value, Ok(Quantity::Str("600".into())));
        assert!(
            matches!(age.origin, Origin::Alias { ref var, .. } if var == "AUTO_RESTART_INTERVAL")
        );
        assert_eq!(raw.ready.mode.unwrap().value, Ok("delay".to_string()));
        assert_eq!(
            raw.ready.delay.unwrap().value,
            Ok(Quantity::Str("10".into()))
        );
    }

    #[test]
    fn auto_restart_defaults_and_switches() {
        let mut raw = RawConfig::default();
        overlay(&mut raw, &env(&[("ENABLE_AUTO_RESTART", "1")]));
        assert_eq!(
            raw.recycle.max_age.unwrap().value,
            Ok(Quantity::Str("360".into()))
        );
        // Interval without the switch: ignored, as start_server does.
        let mut raw = RawConfig::default();
        overlay(
            &mut raw,
            &env(&[
                ("ENABLE_AUTO_RESTART", "0"),
                ("AUTO_RESTART_INTERVAL", "60"),
            ]),
        );
        assert!(raw.recycle.max_age.is_none());
        let errs = overlay(&mut raw, &env(&[("ENABLE_AUTO_RESTART", "sometimes")]));
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn kechi_vars_beat_aliases() {
        let mut raw = RawConfig::default();
        overlay(
            &mut raw,
            &env(&[("KILL_OLD_DELAY", "10"), ("KECHI_READY_MODE", "notify")]),
        );
        assert_eq!(raw.ready.mode.unwrap().value, Ok("notify".to_string()));
        assert!(matches!(
            raw.ready.delay.unwrap().origin,
            Origin::Alias { .. }
        ));
    }

    #[test]
    fn unit_environment() {
        let e = parse_unit_environment(
            "KECHI_WORKERS=4 \"KECHI_COMMAND=[\\\"/bin/x\\\", \\\"-v\\\"]\" LANG=C.UTF-8 [unprintable] junk\n",
        );
        assert_eq!(e["KECHI_WORKERS"], "4");
        assert_eq!(e["KECHI_COMMAND"], r#"["/bin/x", "-v"]"#);
        assert_eq!(e["LANG"], "C.UTF-8");
        assert_eq!(e.len(), 3);
        assert!(parse_unit_environment("\n").is_empty());
        let e = parse_unit_environment(r#""A=\$HOME \\ x""#);
        assert_eq!(e["A"], r"$HOME \ x");
    }
}

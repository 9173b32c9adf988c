//! The box-wide policy every kechid of a machine shares: `/etc/kechi/kechi.conf` (TOML, one
//! `[box]` table), overridden by `KECHI_BOX_*` variables in each unit's environment.
//!
//! ```toml
//! [box]
//! budget   = "700M"           # all apps' workers together, by each app's memory.metric
//! pressure = "some 10% 10s"   # a memory PSI trigger
//! ```
//!
//! A missing file is an empty policy (no budget, no trigger). Problems are reported like the app
//! file's: `FILE:LINE: KEY: what; expected ...`, all of them in one go.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::error::{ConfigError, ConfigErrors, ErrorKind, Location};
use super::lines::LineIndex;
use crate::quantity::{self, Bytes};

/// Where the file lives.
pub const BOX_CONF: &str = "/etc/kechi/kechi.conf";
/// Its keys, in order.
pub const BOX_KEYS: [&str; 2] = ["box.budget", "box.pressure"];

/// A memory PSI trigger: fire when tasks stalled on memory for `stall` within any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    /// `some` (at least one task stalled) or `full` (all non-idle tasks stalled at once).
    pub full: bool,
    pub stall: Duration,
    pub window: Duration,
}

impl Pressure {
    /// The trigger line the kernel takes (`some 100000 1000000`: microseconds).
    pub fn trigger_line(&self) -> String {
        format!(
            "{} {} {}",
            if self.full { "full" } else { "some" },
            self.stall.as_micros(),
            self.window.as_micros()
        )
    }
}

impl std::fmt::Display for Pressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = self.stall.as_secs_f64() * 100.0 / self.window.as_secs_f64();
        write!(
            f,
            "{} {}% {}",
            if self.full { "full" } else { "some" },
            (pct * 100.0).round() / 100.0,
            quantity::format_duration(self.window)
        )
    }
}

/// `"some 10% 10s"`: the kind, the share of the window stalled, the window (the kernel wants it
/// between 500 ms and 10 s).
pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let mut parts = text.split_whitespace();
    let full = match parts.next()? {
        "some" => false,
        "full" => true,
        _ => return None,
    };
    let pct: f64 = parts.next()?.strip_suffix('%')?.parse().ok()?;
    let window = quantity::parse_duration(parts.next()?).ok()?;
    if parts.next().is_some() || !(pct > 0.0 && pct <= 100.0) {
        return None;
    }
    if window < Duration::from_millis(500) || window > Duration::from_secs(10) {
        return None;
    }
    let stall = Duration::from_secs_f64(window.as_secs_f64() * pct / 100.0);
    Some(Pressure {
        full,
        stall,
        window,
    })
}

/// The effective box policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoxPolicy {
    pub budget: Option<Bytes>,
    pub pressure: Option<Pressure>,
    /// Each key's value as shown and where it came from (`default`, `FILE:LINE`, `env VAR`).
    pub sources: BTreeMap<&'static str, (String, String)>,
}

/// One row of `kechictl config` for a box key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoxRow {
    pub key: &'static str,
    pub value: String,
    pub source: String,
}

impl BoxPolicy {
    pub fn rows(&self) -> Vec<BoxRow> {
        BOX_KEYS
            .iter()
            .map(|k| {
                let (value, source) = self
                    .sources
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| ("(off)".into(), "default".into()));
                BoxRow {
                    key: k,
                    value,
                    source,
                }
            })
            .collect()
    }
}

/// The variable that overrides a box key (`box.budget` -> `KECHI_BOX_BUDGET`).
pub fn box_env_var(key: &str) -> String {
    super::keys::env_var(key)
}

/// Reads `path` (missing: empty) and applies `env`'s `KECHI_BOX_*` variables.
pub fn load_box(path: &Path, env: &BTreeMap<String, String>) -> Result<BoxPolicy, ConfigErrors> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(ConfigErrors::new(vec![ConfigError::new(
                ErrorKind::Read,
                Location::File {
                    path: path.to_owned(),
                    line: None,
                },
                format!("cannot read it: {e}"),
            )]));
        }
    };
    parse_box(&text, path, env)
}

/// [`load_box`] on a text already read.
pub fn parse_box(
    text: &str,
    path: &Path,
    env: &BTreeMap<String, String>,
) -> Result<BoxPolicy, ConfigErrors> {
    let lines = LineIndex::new(text);
    let at = |line: Option<usize>| Location::File {
        path: PathBuf::from(path),
        line,
    };
    let mut errors = Vec::new();
    // key -> (text, where, line or variable)
    let mut written: BTreeMap<&'static str, (String, Location, String)> = BTreeMap::new();
    match toml::from_str::<toml::Table>(text) {
        Err(e) => {
            let line = e.span().map(|s| lines.line(s.start));
            errors.push(
                ConfigError::new(ErrorKind::Syntax, at(line), e.message().trim().to_owned())
                    .expected("TOML: a [box] table with budget and pressure"),
            );
        }
        Ok(doc) => {
            for (name, value) in &doc {
                let Some(table) = value.as_table().filter(|_| name == "box") else {
                    errors.push(
                        ConfigError::new(
                            ErrorKind::Syntax,
                            at(None),
                            "unknown; kechi.conf has one table, [box]",
                        )
                        .key(name.clone())
                        .expected(
                            "[box] with budget and pressure (app keys go in /etc/kechi/APP.toml)",
                        ),
                    );
                    continue;
                };
                for (k, v) in table {
                    let Some(key) = BOX_KEYS.iter().find(|b| b[4..] == **k) else {
                        errors.push(
                            ConfigError::new(
                                ErrorKind::Syntax,
                                at(line_of(text, &lines, k)),
                                "unknown key",
                            )
                            .key(format!("box.{k}"))
                            .expected("budget or pressure"),
                        );
                        continue;
                    };
                    let Some(s) = v.as_str() else {
                        errors.push(
                            ConfigError::new(
                                ErrorKind::Invalid,
                                at(line_of(text, &lines, k)),
                                "a string is expected",
                            )
                            .key(*key)
                            .expected(expected(key)),
                        );
                        continue;
                    };
                    let line = line_of(text, &lines, k);
                    let shown = format!("{}:{}", path.display(), line.unwrap_or(0));
                    written.insert(key, (s.to_owned(), at(line), shown));
                }
            }
        }
    }
    for key in BOX_KEYS {
        let var = box_env_var(key);
        if let Some(v) = env.get(&var) {
            written.insert(
                key,
                (
                    v.clone(),
                    Location::Env { var: var.clone() },
                    format!("env {var}"),
                ),
            );
        }
    }
    let mut policy = BoxPolicy::default();
    for (key, (value, location, source)) in written {
        let off = value.trim().is_empty() || value.trim() == "0";
        let ok = match key {
            "box.budget" if off => true,
            "box.budget" => match quantity::parse_bytes(&value) {
                Ok(b) if b.0 > 0 => {
                    policy.budget = Some(b);
                    true
                }
                _ => false,
            },
            _ if off => true,
            _ => match parse_pressure(&value) {
                Some(p) => {
                    policy.pressure = Some(p);
                    true
                }
                None => false,
            },
        };
        if ok {
            let shown = if off {
                "(off)".to_owned()
            } else {
                value.clone()
            };
            policy.sources.insert(key, (shown, source));
        } else {
            errors.push(
                ConfigError::new(
                    ErrorKind::Invalid,
                    location,
                    format!("{value:?} is not valid"),
                )
                .key(key)
                .expected(expected(key)),
            );
        }
    }
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(ConfigErrors::new(errors))
    }
}

fn expected(key: &str) -> &'static str {
    if key == "box.budget" {
        "a size like \"700M\" or \"1G\", or \"0\" for none"
    } else {
        "\"some|full PERCENT% WINDOW\" like \"some 10% 10s\" (window 500ms to 10s), or \"0\" for none"
    }
}

/// The line a key of `[box]` is written on (the first `KEY =` after the `[box]` header).
fn line_of(text: &str, lines: &LineIndex, key: &str) -> Option<usize> {
    let start = text.find("[box]").unwrap_or(0);
    let mut offset = start;
    for l in text[start..].split_inclusive('\n') {
        let t = l.trim_start();
        if let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(lines.line(offset));
        }
        offset += l.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<BoxPolicy, Vec<String>> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_box(text, Path::new("/etc/kechi/kechi.conf"), &env)
            .map_err(|e| e.errors().iter().map(ToString::to_string).collect())
    }

    #[test]
    fn empty_or_missing_is_no_policy() {
        let p = parse("", &[]).unwrap();
        assert_eq!(p.budget, None);
        assert_eq!(p.pressure, None);
        assert_eq!(p.rows()[0].source, "default");
        let p = load_box(Path::new("/nonexistent/kechi.conf"), &BTreeMap::new()).unwrap();
        assert_eq!(p.budget, None);
    }

    #[test]
    fn budget_and_pressure_with_their_lines() {
        let p = parse(
            "# box\n[box]\nbudget = \"700M\"\npressure = \"some 10% 10s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(p.budget, Some(Bytes(700 << 20)));
        let pr = p.pressure.unwrap();
        assert_eq!(pr.trigger_line(), "some 1000000 10000000");
        assert_eq!(
            p.rows(),
            vec![
                BoxRow {
                    key: "box.budget",
                    value: "700M".into(),
                    source: "/etc/kechi/kechi.conf:3".into()
                },
                BoxRow {
                    key: "box.pressure",
                    value: "some 10% 10s".into(),
                    source: "/etc/kechi/kechi.conf:4".into()
                },
            ]
        );
    }

    #[test]
    fn variables_win_over_the_file() {
        let p = parse(
            "[box]\nbudget = \"700M\"\n",
            &[
                ("KECHI_BOX_BUDGET", "1G"),
                ("KECHI_BOX_PRESSURE", "full 5% 2s"),
            ],
        )
        .unwrap();
        assert_eq!(p.budget, Some(Bytes(1 << 30)));
        assert_eq!(p.rows()[0].source, "env KECHI_BOX_BUDGET");
        let pr = p.pressure.unwrap();
        assert!(pr.full);
        assert_eq!(pr.trigger_line(), "full 100000 2000000");
    }

    #[test]
    fn every_problem_with_file_line_and_key() {
        let errs = parse(
            "[box]\nbudget = \"lots\"\npresure = \"some 10% 10s\"\n[app]\nx = 1\n",
            &[("KECHI_BOX_PRESSURE", "some 10% 1h")],
        )
        .unwrap_err();
        assert!(
            errs.iter().any(|e| e.starts_with(
                "/etc/kechi/kechi.conf:2: box.budget: \"lots\" is not valid; expected a size"
            )),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("/etc/kechi/kechi.conf:3: box.presure: unknown key")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("app: unknown; kechi.conf has one table")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("environment: KECHI_BOX_PRESSURE: \"some 10% 1h\"")),
            "{errs:?}"
        );
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let errs = parse("[box]\nbudget = \n", &[]).unwrap_err();
        assert!(errs[0].starts_with("/etc/kechi/kechi.conf:2:"), "{errs:?}");
    }

    #[test]
    fn zero_turns_a_key_off() {
        let p = parse("[box]\nbudget = \"0\"\npressure = \"0\"\n", &[]).unwrap();
        assert_eq!((p.budget, p.pressure), (None, None));
    }

    #[test]
    fn pressure_forms() {
        assert_eq!(
            parse_pressure("some 10% 10s").unwrap().stall,
            Duration::from_secs(1)
        );
        for bad in [
            "some 10 10s",
            "half 10% 10s",
            "some 0% 10s",
            "some 10% 20s",
            "some 10% 100ms",
            "some 10% 10s x",
        ] {
            assert_eq!(parse_pressure(bad), None, "{bad}");
        }
        assert_eq!(
            parse_pressure("some 10% 10s").unwrap().to_string(),
            "some 10% 10s"
        );
    }
}

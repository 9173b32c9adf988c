//! Stage 1: the shape of a config file, as serde sees it.
//!
//! [`RawConfig`] mirrors the TOML layout (kebab-case keys) with every key optional. Unknown keys
//! are skipped here rather than refused (`deny_unknown_fields` would stop serde at the first one,
//! hiding every other problem of the file): the shape check (`shape`) has already reported each
//! of them with its line. Likewise a section that is not a table reads as an empty one. Each leaf is a [`Field`], which remembers where its value came from (the TOML span
//! via `toml::Spanned`, or the variable that overrode it) and tolerates a value of the wrong TOML
//! type: the mismatch is kept and reported by validation together with every other problem,
//! instead of aborting the parse at the first one.
//!
//! Sizes and durations are [`Quantity`]: a string (`"512M"`, `"30s"`) or an integer (bytes,
//! seconds). Nothing here checks ranges or meanings; that is `validate`'s job.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

/// Where a raw value came from. Variables carry their text so errors can quote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Byte range of the value in the config file.
    Span(Range<usize>),
    /// A `KECHI_*` variable.
    Env { var: String, value: String },
    /// A Server::Starter variable standing in for a key.
    Alias { var: String, value: String },
}

/// The value had the wrong type (a string where an integer belongs, a number in an array of
/// strings...). What was written is recovered from the [`Origin`] when reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch;

/// One key's raw value and its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Field<T> {
    pub value: Result<T, Mismatch>,
    pub origin: Origin,
}

impl<T: FromEnv> Field<T> {
    /// A value given as a variable's text, parsed the way [`FromEnv`] says for `T`.
    pub fn from_origin(origin: Origin) -> Self {
        let text = match &origin {
            Origin::Env { value, .. } | Origin::Alias { value, .. } => value.as_str(),
            Origin::Span(_) => "",
        };
        Field {
            value: T::from_env(text).ok_or(Mismatch),
            origin,
        }
    }
}

/// Swallows a type error of `T` so that parsing goes on to the next key. Safe with toml's
/// deserializer: the document is parsed into a tree first, so a failed value leaves nothing
/// half-consumed.
struct Lenient<T>(Result<T, Mismatch>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Lenient(T::deserialize(d).map_err(|_| Mismatch)))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Lenient<T>>::deserialize(d)?;
        let origin = Origin::Span(spanned.span());
        Ok(Field {
            value: spanned.into_inner().0,
            origin,
        })
    }
}

/// A section (`[ready]`, ...): one that is not a table reads as empty; the shape check reports it.
fn section<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Lenient::<T>::deserialize(d)?.0.unwrap_or_default())
}

/// A size or duration as written: `"512M"` / `"30s"`, or a bare integer (bytes / seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quantity {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string like \"512M\" or \"30s\", or an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                i64::try_from(v)
                    .map(Quantity::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity::Str(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// How a variable's text becomes a raw value: the same types as in the file, spelt the way
/// shells and unit files make easy.
pub trait FromEnv: Sized {
    fn from_env(text: &str) -> Option<Self>;
}

impl FromEnv for String {
    /// Taken literally (no quotes needed, none removed).
    fn from_env(text: &str) -> Option<Self> {
        Some(text.to_owned())
    }
}

impl FromEnv for i64 {
    fn from_env(text: &str) -> Option<Self> {
        text.trim().parse().ok()
    }
}

impl FromEnv for bool {
    /// `true/false`, `1/0`, `yes/no`, `on/off`, any case (systemd's boolean spellings).
    fn from_env(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        }
    }
}

impl FromEnv for Quantity {
    /// Always a string: `"90"` parses as 90 seconds or 90 bytes just like the integer 90.
    fn from_env(text: &str) -> Option<Self> {
        Some(Quantity::Str(text.to_owned()))
    }
}

impl FromEnv for Vec<String> {
    /// A TOML array literal: `["/usr/bin/app", "-v"]`. No word splitting: kechi never runs a shell.
    fn from_env(text: &str) -> Option<Self> {
        let d = toml::de::ValueDeserializer::parse(text).ok()?;
        Vec::<String>::deserialize(d).ok()
    }
}

impl FromEnv for BTreeMap<String, String> {
    /// A TOML inline table: `{ PLACK_ENV = "production" }`.
    fn from_env(text: &str) -> Option<Self> {
        let d = toml::de::ValueDeserializer::parse(text).ok()?;
        BTreeMap::<String, String>::deserialize(d).ok()
    }
}

/// The whole file. Field names are the TOML keys in kebab-case.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RawConfig {
    pub command: Option<Field<Vec<String>>>,
    pub directory: Option<Field<String>>,
    pub user: Option<Field<String>>,
    pub group: Option<Field<String>>,
    pub workers: Option<Field<i64>>,
    pub environment: Option<Field<BTreeMap<String, String>>>,
    pub listen: Option<Field<Vec<String>>>,
    #[serde(default, deserialize_with = "section")]
    pub ready: RawReady,
    #[serde(default, deserialize_with = "section")]
    pub stop: RawStop,
    #[serde(default, deserialize_with = "section")]
    pub memory: RawMemory,
    #[serde(default, deserialize_with = "section")]
    pub recycle: RawRecycle,
    #[serde(default, deserialize_with = "section")]
    pub restart: RawRestart,
    #[serde(default, deserialize_with = "section")]
    pub jemalloc: RawJemalloc,
    #[serde(default, deserialize_with = "section")]
    pub tmpdir: RawTmpDir,
    #[serde(default, deserialize_with = "section")]
    pub control: RawControl,
    #[serde(default, deserialize_with = "section")]
    pub idle: RawIdle,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RawReady {
    pub mode: Option<Field<String>>,
    pub delay: Option<Field<Quantity>>,
    pub timeout: Option<Field<Quantity>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RawStop {
    pub signal: Option<Field<String>>,
    pub timeout: Option<Field<Quantity>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RawMemory {
    pub max: Option<Field<Quantity>>,
    pub high: Option<Field<Quantity>>,
    pub swap_max: Option<Field<Quantity>>,
    pub metric: Option<Field<String>>,
    pub recycle_above: Option<Field<Quantity>>,
    pub app_budget: Option<Field<Quantity>>,
    pub min_shared: Option<Field<String>>,
    pub child_signal: Option<Field<String>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RawRecycle {
    pub max_age: Option<Field<Quantity>>,
    pub jitter: Option<Field<String>>,
    pub min_interval: Option<Field<Quantity>>,
    pub max_concurrent: Option<Field<i64>>,
    pub check_interval: Option<Field<Quantity>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RawRestart {
    pub backoff: Option<Field<Quantity>>,
    pub backoff_max: Option<Field<Quantity>>,
    pub burst: Option<Field<i64>>,
    pub window: Option<Field<Quantity>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RawJemalloc {
    pub enabled: Option<Field<bool>>,
    pub path: Option<Field<String>>,
    pub conf: Option<Field<String>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RawTmpDir {
    pub enabled: Option<Field<bool>>,
    pub size: Option<Field<Quantity>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RawControl {
    pub group: Option<Field<String>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RawIdle {
    pub stop_after: Option<Field<Quantity>>,
}

impl RawConfig {
    /// Overrides `key` (a dotted path from [`super::keys::KEYS`]) with a variable's value.
    /// Returns false for a key that does not exist.
    pub fn set(&mut self, key: &str, origin: Origin) -> bool {
        fn put<T: FromEnv>(slot: &mut Option<Field<T>>, origin: Origin) {
            *slot = Some(Field::from_origin(origin));
        }
        let o = origin;
        match key {
            "command" => put(&mut self.command, o),
            "directory" => put(&mut self.directory, o),
            "user" => put(&mut self.user, o),
            "group" => put(&mut self.group, o),
            "workers" => put(&mut self.workers, o),
            "environment" => put(&mut self.environment, o),
            "listen" => put(&mut self.listen, o),
            "ready.mode" => put(&mut self.ready.mode, o),
            "ready.delay" => put(&mut self.ready.delay, o),
            "ready.timeout" => put(&mut self.ready.timeout, o),
            "stop.signal" => put(&mut self.stop.signal, o),
            "stop.timeout" => put(&mut self.stop.timeout, o),
            "memory.max" => put(&mut self.memory.max, o),
            "memory.high" => put(&mut self.memory.high, o),
            "memory.swap-max" => put(&mut self.memory.swap_max, o),
            "memory.metric" => put(&mut self.memory.metric, o),
            "memory.recycle-above" => put(&mut self.memory.recycle_above, o),
            "memory.app-budget" => put(&mut self.memory.app_budget, o),
            "memory.min-shared" => put(&mut self.memory.min_shared, o),
            "memory.child-signal" => put(&mut self.memory.child_signal, o),
            "recycle.max-age" => put(&mut self.recycle.max_age, o),
            "recycle.jitter" => put(&mut self.recycle.jitter, o),
            "recycle.min-interval" => put(&mut self.recycle.min_interval, o),
            "recycle.max-concurrent" => put(&mut self.recycle.max_concurrent, o),
            "recycle.check-interval" => put(&mut self.recycle.check_interval, o),
            "restart.backoff" => put(&mut self.restart.backoff, o),
            "restart.backoff-max" => put(&mut self.restart.backoff_max, o),
            "restart.burst" => put(&mut self.restart.burst, o),
            "restart.window" => put(&mut self.restart.window, o),
            "jemalloc.enabled" => put(&mut self.jemalloc.enabled, o),
            "jemalloc.path" => put(&mut self.jemalloc.path, o),
            "jemalloc.conf" => put(&mut self.jemalloc.conf, o),
            "tmpdir.enabled" => put(&mut self.tmpdir.enabled, o),
            "tmpdir.size" => put(&mut self.tmpdir.size, o),
            "control.group" => put(&mut self.control.group, o),
            "idle.stop-after" => put(&mut self.idle.stop_after, o),
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::KEYS;
    use super::*;

    #[test]
    fn every_key_is_settable() {
        for key in KEYS {
            let mut raw = RawConfig::default();
            let origin = Origin::Env {
                var: "X".into(),
                value: "1".into(),
            };
            assert!(raw.set(key, origin), "{key}");
            assert_ne!(raw, RawConfig::default(), "{key}");
        }
        assert!(!RawConfig::default().set("memory.nope", Origin::Span(0..0)));
    }

    #[test]
    fn type_errors_do_not_stop_the_parse() {
        let text = "workers = \"two\"\ncommand = [\"/bin/x\", 5]\n[memory]\nmax = 536870912\nhigh = \"400M\"\n";
        let raw: RawConfig = toml::from_str(text).unwrap();
        let w = raw.workers.unwrap();
        assert_eq!(w.value, Err(Mismatch));
        assert_eq!(w.origin, Origin::Span(10..15));
        assert_eq!(raw.command.unwrap().value, Err(Mismatch));
        assert_eq!(raw.memory.max.unwrap().value, Ok(Quantity::Int(536870912)));
        assert_eq!(
            raw.memory.high.unwrap().value,
            Ok(Quantity::Str("400M".into()))
        );
    }

    #[test]
    fn unknown_keys_and_non_table_sections_do_not_stop_the_parse() {
        // The shape check reports these; serde must still read every other key.
        let raw: RawConfig =
            toml::from_str("workerz = 3\nworkers = 4\nready = 5\n[memory]\nmaxx = 1\nmax = 2\n")
                .unwrap();
        assert_eq!(raw.workers.unwrap().value, Ok(4));
        assert_eq!(raw.ready, RawReady::default());
        assert_eq!(raw.memory.max.unwrap().value, Ok(Quantity::Int(2)));
    }

    #[test]
    fn env_text() {
        assert_eq!(bool::from_env("Yes"), Some(true));
        assert_eq!(bool::from_env("0"), Some(false));
        assert_eq!(bool::from_env("maybe"), None);
        assert_eq!(i64::from_env(" 4 "), Some(4));
        assert_eq!(
            Vec::<String>::from_env(r#"["/bin/x", "-v"]"#),
            Some(vec!["/bin/x".into(), "-v".into()])
        );
        assert_eq!(Vec::<String>::from_env("/bin/x -v"), None);
        assert_eq!(Vec::<String>::from_env("[1]"), None);
        let env = BTreeMap::<String, String>::from_env(r#"{ A = "b" }"#).unwrap();
        assert_eq!(env["A"], "b");
    }
}

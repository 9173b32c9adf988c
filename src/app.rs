//! App names and the unit, slice, scope and file names derived from them (SPEC "Files and units").

use std::fmt;
use std::path::PathBuf;

/// A validated app name: `[a-z0-9][a-z0-9_-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct AppName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid app name {0:?}: expected 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
)]
pub struct BadAppName(pub String);

impl AppName {
    pub fn new(s: &str) -> Result<Self, BadAppName> {
        let b = s.as_bytes();
        let ok_first = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let ok_rest = |c: u8| ok_first(c) || c == b'_' || c == b'-';
        if b.is_empty() || b.len() > 63 || !ok_first(b[0]) || !b[1..].iter().all(|&c| ok_rest(c)) {
            return Err(BadAppName(s.to_owned()));
        }
        Ok(AppName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `/etc/kechi/APP.toml`.
    pub fn config_path(&self) -> PathBuf {
        PathBuf::from(format!("/etc/kechi/{}.toml", self.0))
    }

    /// `kechi@APP.service`.
    pub fn service_unit(&self) -> String {
        format!("kechi@{}.service", self.0)
    }

    /// `kechi-APP.slice` (systemd nests it under `kechi.slice` by its name).
    pub fn slice_unit(&self) -> String {
        format!("kechi-{}.slice", self.0)
    }

    /// `kechi-APP-N.scope`.
    pub fn scope_unit(&self, serial: u64) -> String {
        format!("kechi-{}-{serial}.scope", self.0)
    }

    /// The serial N of `kechi-APP-N.scope`, if `unit` is one of this app's worker scopes.
    pub fn parse_scope_serial(&self, unit: &str) -> Option<u64> {
        let rest = unit
            .strip_prefix("kechi-")?
            .strip_prefix(self.0.as_str())?
            .strip_prefix('-')?;
        let n = rest.strip_suffix(".scope")?;
        if n.is_empty()
            || !n.bytes().all(|c| c.is_ascii_digit())
            || (n.len() > 1 && n.starts_with('0'))
        {
            return None;
        }
        n.parse().ok()
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["demo", "a", "my-app_2", "0x"] {
            assert!(AppName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", "Demo", "a.b", "a/b", &"a".repeat(64)] {
            assert!(AppName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scope_serials() {
        let a = AppName::new("demo").unwrap();
        assert_eq!(a.scope_unit(7), "kechi-demo-7.scope");
        assert_eq!(a.parse_scope_serial("kechi-demo-7.scope"), Some(7));
        assert_eq!(a.parse_scope_serial("kechi-demo-x-7.scope"), None);
        assert_eq!(a.parse_scope_serial("kechi-demo-07.scope"), None);
        assert_eq!(a.parse_scope_serial("kechi-demox-7.scope"), None);
        // another app whose name extends this one's is not ours
        let b = AppName::new("demo-x").unwrap();
        assert_eq!(a.parse_scope_serial(&b.scope_unit(3)), None);
    }
}

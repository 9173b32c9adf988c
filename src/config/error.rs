//! Config problems as users read them: `FILE:LINE: KEY: what was wrong; expected WHAT`, or
//! `environment: KECHI_X: ...` for a value that came from the environment overlay.
//!
//! Loading collects every problem it can find before giving up, so [`ConfigErrors`] is a list;
//! its `Display` prints one problem per line, sorted by file line, environment last.

use std::fmt;
use std::path::{Path, PathBuf};

use super::model::Source;

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Location {
    /// The config file, at a line when one is known (1-based).
    File { path: PathBuf, line: Option<usize> },
    /// A variable of the environment overlay (`KECHI_*` or a Server::Starter alias).
    Env { var: String },
}

impl Location {
    /// Where the value with this provenance came from; `Default` values have no line.
    pub fn of(source: &Source, file: &Path) -> Self {
        match source {
            Source::Default => Location::File {
                path: file.to_owned(),
                line: None,
            },
            Source::File { path, line } => Location::File {
                path: path.clone(),
                line: Some(*line),
            },
            Source::Env { var } | Source::Alias { var } => Location::Env { var: var.clone() },
        }
    }
}

/// What kind of failure, so callers can pick an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read.
    Read,
    /// Not valid TOML, or not the shape of a kechi config (unknown key, table expected).
    Syntax,
    /// A value is missing, of the wrong type, or out of range.
    Invalid,
    /// The value is fine but this host cannot honour it (unknown user, unsafe library).
    Host,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub kind: ErrorKind,
    pub location: Location,
    /// Dotted key (`memory.max`), when the problem is about one key.
    pub key: Option<String>,
    /// What was wrong (`got "two"`).
    pub message: String,
    /// What would have been right (`an integer from 1 to 256`).
    pub expected: Option<String>,
}

impl ConfigError {
    pub fn new(kind: ErrorKind, location: Location, message: impl Into<String>) -> Self {
        ConfigError {
            kind,
            location,
            key: None,
            message: message.into(),
            expected: None,
        }
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::File {
                path,
                line: Some(line),
            } => write!(f, "{}:{line}: ", path.display())?,
            Location::File { path, line: None } => write!(f, "{}: ", path.display())?,
            // The variable name already says which key it sets.
            Location::Env { var } => write!(f, "environment: {var}: ")?,
        }
        if let (Some(key), Location::File { .. }) = (&self.key, &self.location) {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(expected) = &self.expected {
            write!(f, "; expected {expected}")?;
        }
        Ok(())
    }
}

/// Every problem found, in reading order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// Sorts by location (file lines first, in order; then environment variables).
    ///
    /// # Panics
    /// If `errors` is empty: an empty error list would be a success reported as a failure.
    pub fn new(mut errors: Vec<ConfigError>) -> Self {
        assert!(!errors.is_empty(), "ConfigErrors needs at least one error");
        errors.sort_by(|a, b| a.location.cmp(&b.location));
        errors.dedup();
        ConfigErrors(errors)
    }

    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<ConfigError> {
        self.0
    }

    /// True when the file could not be read at all (as opposed to read and found wanting).
    pub fn is_read_error(&self) -> bool {
        self.0.iter().any(|e| e.kind == ErrorKind::Read)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: Option<usize>) -> Location {
        Location::File {
            path: "/etc/kechi/demo.toml".into(),
            line,
        }
    }

    #[test]
    fn formats() {
        let e = ConfigError::new(ErrorKind::Invalid, at(Some(4)), "got 0")
            .key("workers")
            .expected("an integer from 1 to 256");
        assert_eq!(
            e.to_string(),
            "/etc/kechi/demo.toml:4: workers: got 0; expected an integer from 1 to 256"
        );
        let e = ConfigError::new(
            ErrorKind::Invalid,
            Location::Env {
                var: "KECHI_WORKERS".into(),
            },
            "got \"x\"",
        )
        .key("workers");
        assert_eq!(e.to_string(), "environment: KECHI_WORKERS: got \"x\"");
        let e = ConfigError::new(ErrorKind::Invalid, at(None), "missing").key("command");
        assert_eq!(e.to_string(), "/etc/kechi/demo.toml: command: missing");
    }

    #[test]
    fn sorted_by_line_env_last() {
        let env = ConfigError::new(ErrorKind::Invalid, Location::Env { var: "A".into() }, "x");
        let l9 = ConfigError::new(ErrorKind::Invalid, at(Some(9)), "x");
        let l2 = ConfigError::new(ErrorKind::Invalid, at(Some(2)), "x");
        let all = ConfigErrors::new(vec![env.clone(), l9.clone(), l2.clone()]);
        assert_eq!(all.errors(), &[l2, l9, env]);
        assert!(!all.is_read_error());
        assert_eq!(all.to_string().lines().count(), 3);
    }
}

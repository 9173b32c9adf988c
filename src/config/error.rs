//! Config problems as users read them: `FILE:LINE: KEY: what was wrong; expected WHAT`, or
//! `environment: KECHI_X: ...` for a value that came from the environment overlay.
//!
//! Loading collects every problem it can find before giving up, so [`ConfigErrors`] is a list;
//! its `Display` prints one problem per line, sorted by file line, environment last.
//!
//! A problem is an error (kechid refuses to start, exit 78; `kechictl check` exits 1) or a
//! [`Severity::Warning`]: something that may well work but probably will not work as meant
//! (a worker user without execute permission by the mode bits, an app server given a stop
//! signal that is not graceful for it). Warnings read `FILE:LINE: KEY: warning: what; fix: how`.

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

/// Whether a problem stops kechid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Severity {
    /// Refused: kechid does not start (or a reload keeps the running config).
    #[default]
    Error,
    /// Reported (by `kechictl check`, and in the journal at kechid's start), not refused.
    Warning,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub kind: ErrorKind,
    pub severity: Severity,
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
            severity: Severity::Error,
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

    /// Makes this a warning; `fix` says what to change (printed as `; fix: ...`).
    pub fn warning(mut self, fix: impl Into<String>) -> Self {
        self.severity = Severity::Warning;
        self.expected = Some(fix.into());
        self
    }

    pub fn is_warning(&self) -> bool {
        self.severity == Severity::Warning
    }

    /// The 1-based file line, when the problem has one.
    pub fn line(&self) -> Option<usize> {
        match &self.location {
            Location::File { line, .. } => *line,
            Location::Env { .. } => None,
        }
    }

    /// For scripts (`kechictl check --json`).
    pub fn to_json(&self) -> serde_json::Value {
        let (file, var) = match &self.location {
            Location::File { path, .. } => (Some(path.display().to_string()), None),
            Location::Env { var } => (None, Some(var.clone())),
        };
        let warning = self.is_warning();
        serde_json::json!({
            "severity": if warning { "warning" } else { "error" },
            "file": file,
            "line": self.line(),
            "variable": var,
            "key": self.key,
            "message": self.message,
            "expected": if warning { None } else { self.expected.clone() },
            "fix": if warning { self.expected.clone() } else { None },
            "text": self.to_string(),
        })
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
        if self.is_warning() {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)?;
        match (&self.expected, self.severity) {
            (Some(fix), Severity::Warning) => write!(f, "; fix: {fix}")?,
            (Some(expected), Severity::Error) => write!(f, "; expected {expected}")?,
            (None, _) => {}
        }
        Ok(())
    }
}

/// Every problem found, in reading order: at least one error, and any warnings found with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// Sorts by location (file lines first, in order; then environment variables).
    ///
    /// # Panics
    /// If `errors` holds no error: a list of warnings only would be a success reported as a
    /// failure.
    pub fn new(mut errors: Vec<ConfigError>) -> Self {
        assert!(
            errors.iter().any(|e| !e.is_warning()),
            "ConfigErrors needs at least one error"
        );
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

    /// How many of the problems are errors (the rest are warnings).
    pub fn error_count(&self) -> usize {
        self.0.iter().filter(|e| !e.is_warning()).count()
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
        let w = ConfigError::new(ErrorKind::Host, at(Some(2)), "puma ignores TERM")
            .key("stop.signal")
            .warning("stop.signal = \"INT\"");
        assert_eq!(
            w.to_string(),
            "/etc/kechi/demo.toml:2: stop.signal: warning: puma ignores TERM; fix: stop.signal = \"INT\""
        );
        assert_eq!(w.to_json()["severity"], "warning");
        assert_eq!(w.to_json()["line"], 2);
        assert_eq!(w.to_json()["fix"], "stop.signal = \"INT\"");
    }

    #[test]
    #[should_panic(expected = "at least one error")]
    fn warnings_alone_are_not_a_failure() {
        let w = ConfigError::new(ErrorKind::Host, at(Some(2)), "x").warning("y");
        ConfigErrors::new(vec![w]);
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

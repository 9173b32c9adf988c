//! The one error type of the memory module.
//!
//! Every IO failure carries the path and what was being done to it. Two outcomes that are part
//! of normal life get their own variants so callers can match on them instead of on `errno`:
//! a process that exits between listing and reading ([`MemError::ProcessGone`]) and a cgroup
//! that systemd removes under us ([`MemError::CgroupGone`], e.g. a scope stopped after an
//! OOM kill).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What was being done when an IO error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Stat,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Stat => "stat",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// An IO error other than the expected disappearances below.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: Op,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The process exited (or became a zombie, which has no address space) before or while
    /// its files were read. Expected: pids are listed and read at different times.
    #[error("process {pid} is gone ({})", path.display())]
    ProcessGone { pid: u32, path: PathBuf },

    /// The cgroup directory no longer exists (the unit was stopped), or its file was read after
    /// the directory had been removed (`ENODEV`).
    #[error("cgroup {} is gone", path.display())]
    CgroupGone { path: PathBuf },

    /// A file's content is not what the kernel documents. `path` is `None` when a pure parser
    /// was called on text that came from no file.
    #[error("{}line {line}: {reason}", where_(path))]
    Parse {
        path: Option<PathBuf>,
        line: usize,
        reason: String,
    },

    /// The memory controller cannot be found for this cgroup (not mounted, not enabled, or the
    /// cgroup lies outside our cgroup namespace).
    #[error("no memory cgroup: {reason}")]
    NoMemoryCgroup { reason: String },

    /// A unit name that systemd would not produce a cgroup path for.
    #[error("bad unit name {name:?}: {reason}")]
    BadUnitName { name: String, reason: &'static str },
}

fn where_(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    }
}

impl MemError {
    /// A parse error without a path yet; readers attach one with [`MemError::at`].
    pub(crate) fn parse(line: usize, reason: impl Into<String>) -> Self {
        MemError::Parse {
            path: None,
            line,
            reason: reason.into(),
        }
    }

    /// Attaches `path` to a parse error that has none; other errors pass through unchanged.
    pub fn at(self, path: &Path) -> Self {
        match self {
            MemError::Parse {
                path: None,
                line,
                reason,
            } => MemError::Parse {
                path: Some(path.to_owned()),
                line,
                reason,
            },
            other => other,
        }
    }

    /// True for the disappearances that sampling must expect and skip.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            MemError::ProcessGone { .. } | MemError::CgroupGone { .. }
        )
    }
}

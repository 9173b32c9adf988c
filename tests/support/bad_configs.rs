//! The malformed configurations under `tests/fixtures/config/bad/`, one problem each, with
//! where that problem is and what it is about: shared by the library's checks
//! (tests/config_errors.rs) and kechid's own refusal (tests/foreground.rs).

#![allow(dead_code)] // Each test binary uses its own part.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The directory of the malformed fixtures.
pub fn bad_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/bad")
}

/// The fixture with several problems at once (not in [`BAD`]).
pub const MANY_PROBLEMS: &str = "many-problems.toml";

/// The `FILE:LINE: KEY` heads of [`MANY_PROBLEMS`]'s problems, in line order.
pub const MANY_PROBLEMS_HEADS: &[&str] = &[
    "2: command",
    "3: directory",
    "4: workers",
    "5: workerz",
    "8: memory.max",
    "9: memory.metric",
    "12: restart.burst",
];

/// Every `.toml` in [`bad_dir`] but [`MANY_PROBLEMS`], sorted.
pub fn on_disk() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(bad_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".toml") && n != MANY_PROBLEMS)
        .collect();
    names.sort();
    names
}

/// What a message about fixture `name` starts with after the directory: `NAME:LINE: KEY: `, or
/// `NAME: KEY: ` for a problem of the whole file.
pub fn head(name: &str, line: Option<usize>, key: &str) -> String {
    match line {
        Some(l) => format!("{name}:{l}: {key}: "),
        None => format!("{name}: {key}: "),
    }
}

/// The file `unsafe-jemalloc.toml` points at, writable by all: refused before its contents matter.
pub fn make_unsafe_library() {
    let p = Path::new("/tmp/kechi-test-unsafe-libjemalloc.so.2");
    if !p.exists() {
        fs::write(p, b"\x7fELF placeholder").unwrap();
    }
    fs::set_permissions(p, fs::Permissions::from_mode(0o666)).unwrap();
}

/// (fixture, line or None for file-level problems, key, a fragment of the explanation)
pub const BAD: &[(&str, Option<usize>, &str, &str)] = &[
    (
        "unknown-key.toml",
        Some(5),
        "memory.maxx",
        "unknown key; did you mean memory.max?",
    ),
    (
        "unknown-top-level-key.toml",
        Some(3),
        "max-age",
        "did you mean recycle.max-age?",
    ),
    (
        "wrong-type.toml",
        Some(3),
        "workers",
        "got \"two\"; expected an integer from 1 to 256",
    ),
    (
        "bad-size.toml",
        Some(5),
        "memory.max",
        "got \"512X\"; expected a size",
    ),
    (
        "bad-duration.toml",
        Some(6),
        "ready.timeout",
        "got \"5 parsecs\"; expected a duration",
    ),
    (
        "empty-command.toml",
        Some(2),
        "command",
        "got []; expected a non-empty array",
    ),
    ("missing-command.toml", None, "command", "missing"),
    (
        "shell-command.toml",
        Some(2),
        "command",
        "(no shell is involved)",
    ),
    (
        "Bad.App.toml",
        None,
        "app name",
        "got \"Bad.App\" (from the file name)",
    ),
    (
        "relative-directory.toml",
        Some(3),
        "directory",
        "expected an absolute directory path",
    ),
    (
        "unknown-user.toml",
        Some(3),
        "user",
        "no user \"no-such-user-kechi\" on this host",
    ),
    (
        "unknown-group.toml",
        Some(5),
        "control.group",
        "no group \"no-such-group-kechi\"",
    ),
    (
        "unsafe-jemalloc.toml",
        Some(6),
        "jemalloc.path",
        "refusing to preload",
    ),
    (
        "missing-jemalloc.toml",
        Some(5),
        "jemalloc.path",
        "cannot resolve",
    ),
    (
        "bad-signal.toml",
        Some(5),
        "stop.signal",
        "got \"TERMINATE\"; expected a signal name",
    ),
    (
        "zero-workers.toml",
        Some(3),
        "workers",
        "got 0; expected an integer from 1 to 256",
    ),
    ("syntax-error.toml", Some(5), "memory.max", "invalid TOML"),
    (
        "high-above-max.toml",
        Some(6),
        "memory.high",
        "600M is above memory.max (512M)",
    ),
    (
        "forbidden-env.toml",
        Some(6),
        "environment.LISTEN_FDS",
        "set by kechi for every worker",
    ),
    (
        "ld-preload-with-jemalloc.toml",
        Some(3),
        "environment.LD_PRELOAD",
        "expected jemalloc.enabled = false",
    ),
    (
        "backoff-above-max.toml",
        Some(5),
        "restart.backoff",
        "is above restart.backoff-max",
    ),
    (
        "bad-mode.toml",
        Some(5),
        "ready.mode",
        "expected one of \"notify\", \"accept\", \"delay\"",
    ),
    ("bad-metric.toml", Some(5), "memory.metric", "got \"vss\""),
    (
        "check-interval-too-short.toml",
        Some(5),
        "recycle.check-interval",
        "at least 100ms",
    ),
    (
        "section-not-table.toml",
        Some(3),
        "ready",
        "expected a table",
    ),
    (
        "missing-directory.toml",
        Some(4),
        "directory",
        "/srv/kechi-test-no-such-directory does not exist",
    ),
    (
        "missing-program.toml",
        Some(3),
        "command",
        "/usr/lib/kechi-test/no-such-program does not exist",
    ),
    (
        "zero-max-concurrent.toml",
        Some(5),
        "recycle.max-concurrent",
        "at least 1",
    ),
];

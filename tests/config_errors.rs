//! Every malformed fixture under `tests/fixtures/config/bad/` is refused with a message naming
//! the file, the line and the key; every fixture under `good/` loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kechi::config::{self, ConfigErrors, Host, KEYS, Loaded, PathFacts, PathKind, Source};
use kechi::jemalloc::JemallocError;

/// The library "auto" finds on the test host; judged safe without looking at the disk.
const AUTO_LIB: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/// A host with known users and groups and a jemalloc found by "auto". Explicit library paths
/// go through the real safety check, so the unsafe-library fixture tests the real thing. The
/// fixtures' directories exist and their programs are executable; other paths do not exist.
struct TestHost;

const DIRS: &[&str] = &["/", "/srv/diary", "/srv/app"];
const PROGRAMS: &[&str] = &[
    "/bin/app",
    "/bin/sh",
    "/bin/sleep",
    "/usr/bin/plackup",
    "/usr/bin/python3",
    "/usr/bin/ruby",
    "/srv/app/bin/server",
];

impl Host for TestHost {
    fn is_root(&self) -> bool {
        true
    }
    fn user_exists(&self, name: &str) -> Result<bool, String> {
        Ok(["root", "nobody", "diary"].contains(&name))
    }
    fn group_exists(&self, name: &str) -> Result<bool, String> {
        Ok(["root", "nogroup", "diary"].contains(&name))
    }
    fn find_jemalloc(&self) -> Option<PathBuf> {
        Some(PathBuf::from(AUTO_LIB))
    }
    fn check_jemalloc(&self, path: &Path) -> Result<PathBuf, JemallocError> {
        if path == Path::new(AUTO_LIB) {
            Ok(path.to_owned())
        } else {
            kechi::jemalloc::check_library(path)
        }
    }
    fn path_facts(&self, path: &Path) -> Result<Option<PathFacts>, String> {
        let kind = if DIRS.iter().any(|d| Path::new(d) == path) {
            PathKind::Directory
        } else if PROGRAMS.iter().any(|p| Path::new(p) == path) {
            PathKind::File
        } else {
            return Ok(None);
        };
        Ok(Some(PathFacts {
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
        }))
    }
    fn find_program(&self, name: &str, _: Option<&str>) -> Option<PathBuf> {
        PROGRAMS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.file_name().is_some_and(|f| f == name))
    }
    fn user_ids(&self, name: &str) -> Option<(u32, u32)> {
        self.user_exists(name).ok()?.then_some((1000, 1000))
    }
    fn group_gid(&self, name: &str) -> Option<u32> {
        self.group_exists(name).ok()?.then_some(1000)
    }
}

#[path = "support/bad_configs.rs"]
mod bad_configs;
use bad_configs::{BAD, MANY_PROBLEMS, MANY_PROBLEMS_HEADS, head, make_unsafe_library};

fn fixture(dir: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(dir)
        .join(name)
}

fn load_with(path: &Path, env: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config::load(path, &env, &TestHost)
}

fn errors_of(name: &str) -> Vec<String> {
    if name == "unsafe-jemalloc.toml" {
        make_unsafe_library();
    }
    match load_with(&fixture("bad", name), &[]) {
        Ok(_) => panic!("{name} was accepted"),
        Err(e) => e.errors().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn every_bad_fixture_is_refused_with_file_line_and_key() {
    let mut listed: Vec<String> = BAD.iter().map(|b| b.0.to_string()).collect();
    listed.sort();
    assert_eq!(
        bad_configs::on_disk(),
        listed,
        "every bad fixture has an expectation"
    );

    for (name, line, key, fragment) in BAD {
        let errs = errors_of(name);
        // One problem in the file: one message, not the same problem said twice or a
        // follow-on complaint.
        assert_eq!(
            errs.len(),
            1,
            "{name}: want exactly one message, got {errs:#?}"
        );
        let at = head(name, *line, key);
        assert!(
            errs[0].contains(&at) && errs[0].contains(fragment),
            "{name}: expected a message with {at:?} and {fragment:?}, got {errs:#?}"
        );
        // The message starts with the full path of the file.
        let path = fixture("bad", name);
        assert!(errs[0].starts_with(&*path.to_string_lossy()), "{errs:#?}");
    }
}

#[test]
fn every_problem_is_reported_at_once_in_line_order() {
    let errs = errors_of(MANY_PROBLEMS);
    let heads: Vec<String> = errs
        .iter()
        .map(|e| {
            // LINE: KEY, cut before the key's explanation
            let rest = e.rsplit_once("many-problems.toml:").unwrap().1;
            let (line, rest) = rest.split_once(": ").unwrap();
            format!("{line}: {}", rest.split(": ").next().unwrap())
        })
        .collect();
    assert_eq!(heads, MANY_PROBLEMS_HEADS);
}

#[test]
fn environment_overrides_are_checked_and_named() {
    let errs = load_with(
        &fixture("good", "minimal.toml"),
        &[
            ("KECHI_MEMORY_MAX", "lots"),
            ("KECHI_RECYCLE_MAXAGE", "1h"),
            ("KILL_OLD_DELAY", "soon"),
        ],
    )
    .unwrap_err()
    .to_string();
    let lines: Vec<&str> = errs.lines().collect();
    assert_eq!(lines.len(), 3, "{errs}");
    assert!(lines.contains(&"environment: KILL_OLD_DELAY: got \"soon\"; expected a duration like \"30s\", \"5m\", \"1h30m\" or \"250ms\", or an integer number of seconds"));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("environment: KECHI_MEMORY_MAX: got \"lots\""))
    );
    assert!(lines.contains(
        &"environment: KECHI_RECYCLE_MAXAGE: unknown variable; did you mean KECHI_RECYCLE_MAX_AGE?"
    ));
}

#[test]
fn good_fixtures_load() {
    for name in [
        "full.toml",
        "minimal.toml",
        "integers.toml",
        "own-allocator.toml",
        "no-jemalloc.toml",
    ] {
        if let Err(e) = load_with(&fixture("good", name), &[]) {
            panic!("{name}:\n{e}");
        }
    }
}

#[test]
fn full_example_sets_every_key() {
    let path = fixture("good", "full.toml");
    let loaded = load_with(&path, &[]).unwrap();
    for key in KEYS {
        match &loaded.provenance[*key] {
            Source::File { path: p, .. } => assert_eq!(p, &path),
            other => panic!("{key} came from {other:?}"),
        }
    }
    let c = &loaded.config;
    assert_eq!(c.app.as_str(), "full");
    assert_eq!(c.user.as_deref(), Some("diary"));
    assert_eq!(c.memory.min_shared.unwrap().to_string(), "50%");
    assert_eq!(c.recycle.max_age.as_secs(), 3600);
    assert_eq!(c.control.group, None);
    assert_eq!(c.jemalloc.library.as_deref(), Some(Path::new(AUTO_LIB)));
    // The rendered forms cover every key too.
    // (and after them the two box-wide keys of kechi.conf, every app's too)
    assert_eq!(
        config::render_text(&loaded).lines().count(),
        KEYS.len() + 1 + config::boxconf::BOX_KEYS.len()
    );
    assert_eq!(
        config::render_json(&loaded)["keys"]
            .as_object()
            .unwrap()
            .len(),
        KEYS.len()
    );
}

#[test]
fn overrides_win_over_the_file_and_say_so() {
    let loaded = load_with(
        &fixture("good", "full.toml"),
        &[("KECHI_WORKERS", "6"), ("KECHI_JEMALLOC_ENABLED", "no")],
    )
    .unwrap();
    assert_eq!(loaded.config.workers, 6);
    assert!(!loaded.config.jemalloc.enabled);
    assert_eq!(loaded.config.jemalloc.library, None);
    let text = config::render_text(&loaded);
    let row = text.lines().find(|l| l.starts_with("workers ")).unwrap();
    assert!(row.ends_with("env KECHI_WORKERS"), "{row}");
}

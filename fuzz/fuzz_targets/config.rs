//! Fuzz target: the whole configuration path of kechid and `kechictl check`
//! (`kechi::config::parse`: TOML shape check, serde, the `KECHI_*` / Server::Starter
//! environment overlay, validation, host checks), on a fake host so no file is touched.
//!
//! Input: the TOML text of `/etc/kechi/demo.toml`, optionally followed by a NUL byte and the
//! environment as `NAME=VALUE` lines (the seeds under `corpus/config/` are written that way).
//! The environment part is also fed to `config::parse_unit_environment`, the parser of
//! `systemctl show -p Environment` that `kechictl config` uses.
//!
//! Contract checked: no panic, and every problem is located as users are promised:
//! - a syntax problem always names its line;
//! - a line is always within the file;
//! - a problem about a key written in the file names that key's line (only keys left to
//!   their defaults, and the app name from the file name, are reported without one);
//! - an accepted config renders (`kechictl config`, text and JSON) and its file provenance
//!   points at lines within the file.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kechi::config::{self, ErrorKind, Host, Location, PathFacts, PathKind, Source};
use kechi::jemalloc::JemallocError;
use libfuzzer_sys::fuzz_target;

const FILE: &str = "/etc/kechi/demo.toml";
/// What "auto" finds; the only library the fake host calls safe.
const AUTO_LIB: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/// Users root/nobody/diary, groups root/nogroup/diary, kechid as root, a safe jemalloc;
/// directories `/`, `/srv`, `/tmp`, `/var/www` and an executable file for every path under
/// `/usr/bin/` (where every bare program name is found); nothing else exists.
struct FakeHost;

/// uid and gid of the fake host's users and groups.
const IDS: [(&str, u32); 4] = [("root", 0), ("nobody", 65534), ("nogroup", 65534), ("diary", 30)];

fn id_of(name: &str) -> Option<u32> {
    IDS.iter().find(|(n, _)| *n == name).map(|(_, id)| *id)
}

impl Host for FakeHost {
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
            Err(JemallocError::Writable {
                path: path.to_owned(),
                mode: 0o666,
            })
        }
    }
    fn path_facts(&self, path: &Path) -> Result<Option<PathFacts>, String> {
        let kind = if ["/", "/srv", "/tmp", "/var/www"].iter().any(|d| path == Path::new(d)) {
            PathKind::Directory
        } else if path.starts_with("/usr/bin") && path != Path::new("/usr/bin") {
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
    fn find_program(&self, name: &str, _path_var: Option<&str>) -> Option<PathBuf> {
        Some(Path::new("/usr/bin").join(name))
    }
    fn user_ids(&self, name: &str) -> Option<(u32, u32)> {
        let uid = id_of(name).filter(|_| name != "nogroup")?;
        Some((uid, uid))
    }
    fn group_gid(&self, name: &str) -> Option<u32> {
        id_of(name).filter(|_| name != "nobody")
    }
}

/// Whether the dotted `key` is written in the file (`memory.max`: a `max` in `[memory]`).
fn written(doc: &toml::Table, key: &str) -> bool {
    if doc.contains_key(key) {
        return true;
    }
    key.split_once('.').is_some_and(|(section, rest)| {
        doc.get(section)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(rest))
    })
}

fuzz_target!(|data: &[u8]| {
    let (text, env_part) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (Ok(text), Ok(env_part)) = (std::str::from_utf8(text), std::str::from_utf8(env_part))
    else {
        return;
    };
    let env: BTreeMap<String, String> = env_part
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let _ = config::parse_unit_environment(env_part);

    let path = Path::new(FILE);
    let lines = text.split('\n').count();
    match config::parse(text, path, &env, &FakeHost) {
        Ok(loaded) => {
            let _ = config::render_text(&loaded);
            let _ = serde_json::to_string(&config::render_json(&loaded));
            for (key, source) in &loaded.provenance {
                if let Source::File { path: p, line } = source {
                    assert_eq!(p, path, "{key}: provenance names another file");
                    assert!(
                        (1..=lines).contains(line),
                        "{key}: line {line} outside the file's {lines} lines"
                    );
                }
            }
        }
        Err(errors) => {
            let doc: Option<toml::Table> = toml::from_str(text).ok();
            for e in errors.errors() {
                let shown = e.to_string();
                let Location::File { path: p, line } = &e.location else {
                    continue;
                };
                assert_eq!(p, path, "{shown}: names another file");
                match line {
                    Some(l) => assert!(
                        (1..=lines).contains(l),
                        "{shown}: line outside the file's {lines} lines"
                    ),
                    None => {
                        assert_ne!(
                            e.kind,
                            ErrorKind::Syntax,
                            "{shown}: syntax error without a line"
                        );
                        let key = e.key.as_deref();
                        assert!(key.is_some(), "{shown}: neither line nor key");
                        if let (Some(doc), Some(key)) = (&doc, key) {
                            assert!(
                                key == "app name" || !written(doc, key),
                                "{shown}: {key} is written in the file but has no line"
                            );
                        }
                    }
                }
            }
        }
    }
});

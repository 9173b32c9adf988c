//! The environment a worker starts with (SPEC "What a worker gets"), built from scratch, never
//! inherited wholesale from kechid: kechid's own `NOTIFY_SOCKET`, `LISTEN_*`, `KECHI_*` and
//! `WATCHDOG_*` belong to kechid, not to the app.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Config;

/// Facts about the worker known before it is forked.
#[derive(Debug, Clone)]
pub struct WorkerFacts<'a> {
    pub serial: u64,
    /// User name and home of the account the worker runs as.
    pub user: Option<(&'a str, &'a Path)>,
    pub tmpdir: Option<&'a Path>,
    /// `NOTIFY_SOCKET` for readiness messages to kechid.
    pub notify_socket: Option<&'a Path>,
    /// Names of the listening sockets passed as fds 3.. (`LISTEN_FDNAMES`); `LISTEN_PID` is
    /// patched in after fork by [`crate::spawn`].
    pub listen_names: &'a [String],
    /// `SERVER_STARTER_PORT` value, if sockets are passed.
    pub server_starter_port: Option<&'a str>,
}

/// Variables taken over from kechid's own environment when set there and not set by the app.
const PASSED_THROUGH: &[&str] = &[
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "JOURNAL_STREAM",
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The worker's environment as `KEY=VALUE` pairs, sorted by key.
pub fn build(
    config: &Config,
    facts: &WorkerFacts<'_>,
    kechid_env: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), DEFAULT_PATH.into());
    for k in PASSED_THROUGH {
        if let Some(v) = kechid_env.get(*k) {
            env.insert((*k).into(), v.clone());
        }
    }
    if let Some((name, home)) = facts.user {
        env.insert("USER".into(), name.into());
        env.insert("LOGNAME".into(), name.into());
        env.insert("HOME".into(), home.display().to_string());
    }
    for (k, v) in &config.environment {
        env.insert(k.clone(), v.clone());
    }
    if config.jemalloc.enabled
        && let Some(lib) = &config.jemalloc.library
    {
        let lib = lib.display().to_string();
        // Prepend, so an app's own preloads still load, after ours.
        let value = match env.get("LD_PRELOAD") {
            Some(old) if !old.is_empty() => format!("{lib}:{old}"),
            _ => lib,
        };
        env.insert("LD_PRELOAD".into(), value);
        let conf = if config.jemalloc.conf.is_empty() {
            crate::jemalloc::DEFAULT_CONF
        } else {
            &config.jemalloc.conf
        };
        env.insert("MALLOC_CONF".into(), conf.into());
    }
    if let Some(t) = facts.tmpdir {
        env.insert("TMPDIR".into(), t.display().to_string());
    }
    if let Some(n) = facts.notify_socket {
        env.insert("NOTIFY_SOCKET".into(), n.display().to_string());
    }
    env.insert("KECHI_APP".into(), config.app.to_string());
    env.insert("KECHI_WORKER".into(), facts.serial.to_string());
    if !facts.listen_names.is_empty() {
        env.insert("LISTEN_FDS".into(), facts.listen_names.len().to_string());
        env.insert("LISTEN_FDNAMES".into(), facts.listen_names.join(":"));
    }
    if let Some(p) = facts.server_starter_port {
        env.insert("SERVER_STARTER_PORT".into(), p.into());
    }
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Host, PathFacts, PathKind, parse};
    use crate::jemalloc::JemallocError;
    use std::path::PathBuf;

    struct H;
    impl Host for H {
        fn is_root(&self) -> bool {
            false
        }
        fn user_exists(&self, _: &str) -> Result<bool, String> {
            Ok(true)
        }
        fn group_exists(&self, _: &str) -> Result<bool, String> {
            Ok(true)
        }
        fn find_jemalloc(&self) -> Option<PathBuf> {
            Some("/usr/lib/libjemalloc.so.2".into())
        }
        fn check_jemalloc(&self, p: &Path) -> Result<PathBuf, JemallocError> {
            Ok(p.to_owned())
        }
        fn path_facts(&self, p: &Path) -> Result<Option<PathFacts>, String> {
            let kind = if p == Path::new("/") {
                PathKind::Directory
            } else {
                PathKind::File
            };
            Ok(Some(PathFacts {
                kind,
                mode: 0o755,
                uid: 0,
                gid: 0,
            }))
        }
        fn find_program(&self, name: &str, _: Option<&str>) -> Option<PathBuf> {
            Some(Path::new("/usr/bin").join(name))
        }
        fn user_ids(&self, _: &str) -> Option<(u32, u32)> {
            Some((1000, 1000))
        }
        fn group_gid(&self, _: &str) -> Option<u32> {
            Some(1000)
        }
    }

    fn config(extra: &str) -> Config {
        let text = format!("command = [\"/bin/true\"]\n{extra}");
        parse(
            &text,
            Path::new("/etc/kechi/demo.toml"),
            &BTreeMap::new(),
            &H,
        )
        .unwrap()
        .config
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn worker_gets_what_the_spec_promises() {
        let c =
            config("environment = { PLACK_ENV = \"production\", PATH = \"/opt/bin:/usr/bin\" }");
        let names = vec!["web".to_string()];
        let facts = WorkerFacts {
            serial: 7,
            user: Some(("app", Path::new("/srv/app"))),
            tmpdir: Some(Path::new("/run/kechi/demo/tmp/7")),
            notify_socket: Some(Path::new("/run/kechi/demo.notify")),
            listen_names: &names,
            server_starter_port: Some("/run/kechi/demo.sock=3"),
        };
        let mut kenv = BTreeMap::new();
        kenv.insert("LANG".to_string(), "C.UTF-8".to_string());
        kenv.insert(
            "NOTIFY_SOCKET".to_string(),
            "/run/systemd/notify".to_string(),
        );
        kenv.insert("KECHI_WORKERS".to_string(), "3".to_string());
        let env = build(&c, &facts, &kenv);
        assert_eq!(get(&env, "PLACK_ENV"), Some("production"));
        assert_eq!(get(&env, "PATH"), Some("/opt/bin:/usr/bin"));
        assert_eq!(get(&env, "LD_PRELOAD"), Some("/usr/lib/libjemalloc.so.2"));
        assert_eq!(
            get(&env, "MALLOC_CONF"),
            Some(crate::jemalloc::DEFAULT_CONF)
        );
        assert_eq!(get(&env, "TMPDIR"), Some("/run/kechi/demo/tmp/7"));
        assert_eq!(get(&env, "NOTIFY_SOCKET"), Some("/run/kechi/demo.notify"));
        assert_eq!(get(&env, "KECHI_APP"), Some("demo"));
        assert_eq!(get(&env, "KECHI_WORKER"), Some("7"));
        assert_eq!(get(&env, "LISTEN_FDS"), Some("1"));
        assert_eq!(get(&env, "LISTEN_FDNAMES"), Some("web"));
        assert_eq!(
            get(&env, "SERVER_STARTER_PORT"),
            Some("/run/kechi/demo.sock=3")
        );
        assert_eq!(get(&env, "LANG"), Some("C.UTF-8"));
        assert_eq!(get(&env, "HOME"), Some("/srv/app"));
        assert_eq!(get(&env, "KECHI_WORKERS"), None);
    }

    #[test]
    fn features_off_leave_no_trace() {
        let c = config("[jemalloc]\nenabled = false\n[tmpdir]\nenabled = false\n");
        let facts = WorkerFacts {
            serial: 1,
            user: None,
            tmpdir: None,
            notify_socket: None,
            listen_names: &[],
            server_starter_port: None,
        };
        let env = build(&c, &facts, &BTreeMap::new());
        for k in [
            "LD_PRELOAD",
            "MALLOC_CONF",
            "TMPDIR",
            "LISTEN_FDS",
            "NOTIFY_SOCKET",
            "SERVER_STARTER_PORT",
        ] {
            assert_eq!(get(&env, k), None, "{k}");
        }
    }

    #[test]
    fn app_preload_is_kept_after_jemalloc() {
        let mut c = config("");
        c.environment
            .insert("LD_PRELOAD".into(), "/usr/lib/libx.so".into());
        let facts = WorkerFacts {
            serial: 1,
            user: None,
            tmpdir: None,
            notify_socket: None,
            listen_names: &[],
            server_starter_port: None,
        };
        let env = build(&c, &facts, &BTreeMap::new());
        assert_eq!(
            get(&env, "LD_PRELOAD"),
            Some("/usr/lib/libjemalloc.so.2:/usr/lib/libx.so")
        );
    }
}

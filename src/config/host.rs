//! Stage 3: can this host honour the config? Users and groups exist, and the jemalloc library
//! is found and safe to preload.
//!
//! The host is behind the [`Host`] trait so tests can fake it; [`RealHost`] asks the live
//! system (NSS for users and groups, [`crate::jemalloc`] for the library). On success the
//! checked library is recorded in `config.jemalloc.library`.
//!
//! A missing `user` means `nobody` when kechid runs as root (workers never run as root unless
//! `user = "root"` is written out), so then `nobody` must exist; when not root, workers run as
//! kechid's own user and there is nothing to check.

use std::path::{Path, PathBuf};

use super::error::{ConfigError, ErrorKind, Location};
use super::model::{Config, JemallocPath, Provenance, Source};
use crate::jemalloc::{self, JemallocError};

/// The user workers run as when `user` is not set and kechid runs as root.
pub const DEFAULT_USER: &str = "nobody";

/// What the checks ask of the host.
pub trait Host {
    /// Whether kechid runs as root (and so would default workers to [`DEFAULT_USER`]).
    fn is_root(&self) -> bool;
    /// `Err` when the user database cannot be asked (not the same as "no such user").
    fn user_exists(&self, name: &str) -> Result<bool, String>;
    fn group_exists(&self, name: &str) -> Result<bool, String>;
    /// Whether the user `name` has uid 0 (root under another name, like BSD's `toor`).
    fn user_is_uid_zero(&self, _name: &str) -> bool {
        false
    }
    /// See [`jemalloc::find_auto`].
    fn find_jemalloc(&self) -> Option<PathBuf>;
    /// See [`jemalloc::check_library`].
    fn check_jemalloc(&self, path: &Path) -> Result<PathBuf, JemallocError>;
}

/// The live system.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn is_root(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn user_exists(&self, name: &str) -> Result<bool, String> {
        nix::unistd::User::from_name(name)
            .map(|u| u.is_some())
            .map_err(|e| e.to_string())
    }

    fn group_exists(&self, name: &str) -> Result<bool, String> {
        nix::unistd::Group::from_name(name)
            .map(|g| g.is_some())
            .map_err(|e| e.to_string())
    }

    fn user_is_uid_zero(&self, name: &str) -> bool {
        nix::unistd::User::from_name(name).is_ok_and(|u| u.is_some_and(|u| u.uid.is_root()))
    }

    fn find_jemalloc(&self) -> Option<PathBuf> {
        jemalloc::find_auto()
    }

    fn check_jemalloc(&self, path: &Path) -> Result<PathBuf, JemallocError> {
        jemalloc::check_library(path)
    }
}

/// Runs the host checks on a validated config, filling `config.jemalloc.library`.
pub fn check(
    config: &mut Config,
    prov: &Provenance,
    file: &Path,
    host: &dyn Host,
) -> Vec<ConfigError> {
    let mut c = Checks {
        prov,
        file,
        errors: Vec::new(),
    };
    match &config.user {
        // Workers run as root only when the config says "root": another name for uid 0 (an
        // alias account, a uid edited to 0) would hide it from anyone reading the file.
        Some(u) if u != "root" && host.user_is_uid_zero(u) => c.fail(
            "user",
            format!("user {u:?} has uid 0, so workers would run as root"),
            "user = \"root\" written out to run workers as root, or a user without uid 0",
        ),
        Some(u) => c.exists("user", "user", u, host.user_exists(u)),
        None if host.is_root() => match host.user_exists(DEFAULT_USER) {
            Ok(true) if host.user_is_uid_zero(DEFAULT_USER) => c.fail(
                "user",
                format!("not set, so workers would run as {DEFAULT_USER:?}, which has uid 0"),
                "user = \"NAME\" naming a user without uid 0 (workers run as root only with \
                 user = \"root\" written out)",
            ),
            Ok(true) => {}
            Ok(false) => c.fail(
                "user",
                format!(
                    "not set, so workers would run as {DEFAULT_USER:?}, but there is no such user"
                ),
                "user = \"NAME\" naming an existing user (workers run as root only with \
                 user = \"root\" written out)",
            ),
            other => c.exists("user", "user", DEFAULT_USER, other),
        },
        None => {}
    }
    if let Some(g) = &config.group {
        c.exists("group", "group", g, host.group_exists(g));
    }
    if let Some(g) = &config.control.group {
        c.exists("control.group", "group", g, host.group_exists(g));
    }
    config.jemalloc.library = if config.jemalloc.enabled {
        c.jemalloc(&config.jemalloc.path, host)
    } else {
        None
    };
    c.errors
}

struct Checks<'a> {
    prov: &'a Provenance,
    file: &'a Path,
    errors: Vec<ConfigError>,
}

impl Checks<'_> {
    fn fail(&mut self, key: &str, message: String, expected: &str) {
        // A default has no line of its own; the error then points at the file.
        let source = self.prov.get(key).cloned().unwrap_or(Source::Default);
        self.errors.push(
            ConfigError::new(ErrorKind::Host, Location::of(&source, self.file), message)
                .key(key)
                .expected(expected),
        );
    }

    fn exists(&mut self, key: &str, what: &str, name: &str, answer: Result<bool, String>) {
        match answer {
            Ok(true) => {}
            Ok(false) => self.fail(
                key,
                format!("no {what} {name:?} on this host"),
                &format!("an existing {what} (create it, or name another)"),
            ),
            Err(e) => self.fail(
                key,
                format!("cannot look up {what} {name:?}: {e}"),
                &format!("a {what} database that answers"),
            ),
        }
    }

    /// The library to preload, or `None` after recording why there is none.
    fn jemalloc(&mut self, path: &JemallocPath, host: &dyn Host) -> Option<PathBuf> {
        // Point at `path` when it was set, else at `enabled`: whichever the user wrote.
        let key = if self.prov.get("jemalloc.path") == Some(&Source::Default) {
            "jemalloc.enabled"
        } else {
            "jemalloc.path"
        };
        let found = match path {
            JemallocPath::Auto => host.find_jemalloc(),
            JemallocPath::Path(p) => Some(p.clone()),
        };
        let Some(found) = found else {
            let dirs: Vec<String> = jemalloc::lib_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            self.fail(
                key,
                format!(
                    "jemalloc is enabled but no libjemalloc was found (ld.so cache, {})",
                    dirs.join(", ")
                ),
                "libjemalloc installed (package libjemalloc2 on Debian/Ubuntu, jemalloc on \
                 Fedora/RHEL), jemalloc.path naming it, or jemalloc.enabled = false",
            );
            return None;
        };
        match host.check_jemalloc(&found) {
            Ok(real) => Some(real),
            Err(e @ JemallocError::Io { .. }) => {
                self.fail(
                    key,
                    format!("refusing to preload {e}"),
                    "an existing libjemalloc file, jemalloc.path = \"auto\", or \
                     jemalloc.enabled = false",
                );
                None
            }
            Err(e) => {
                self.fail(
                    key,
                    format!("refusing to preload {e}"),
                    "a library only root can change, since it is preloaded into every worker: \
                     root-owned and not writable by group or others, in directories likewise \
                     (fix its owner and mode, point jemalloc.path at a safe copy, or set \
                     jemalloc.enabled = false)",
                );
                None
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::collections::BTreeSet;

    /// A host with a fixed set of users and groups and an optional jemalloc.
    #[derive(Debug, Clone)]
    pub struct FakeHost {
        pub root: bool,
        pub users: BTreeSet<String>,
        pub groups: BTreeSet<String>,
        /// What "auto" finds.
        pub auto: Option<PathBuf>,
        /// Libraries that pass the safety check (resolved to themselves).
        pub safe: BTreeSet<PathBuf>,
        /// Users with uid 0 (root is added by `user_is_uid_zero` itself).
        pub uid_zero: BTreeSet<String>,
    }

    impl FakeHost {
        /// root, users root/nobody/diary, groups root/diary, a safe jemalloc found by "auto".
        pub fn new() -> Self {
            let lib = PathBuf::from("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2");
            FakeHost {
                root: true,
                users: ["root", "nobody", "diary"].map(String::from).into(),
                groups: ["root", "diary"].map(String::from).into(),
                auto: Some(lib.clone()),
                safe: [lib].into(),
                uid_zero: BTreeSet::new(),
            }
        }
    }

    impl Host for FakeHost {
        fn is_root(&self) -> bool {
            self.root
        }
        fn user_exists(&self, name: &str) -> Result<bool, String> {
            Ok(self.users.contains(name))
        }
        fn group_exists(&self, name: &str) -> Result<bool, String> {
            Ok(self.groups.contains(name))
        }
        fn user_is_uid_zero(&self, name: &str) -> bool {
            name == "root" || self.uid_zero.contains(name)
        }
        fn find_jemalloc(&self) -> Option<PathBuf> {
            self.auto.clone()
        }
        fn check_jemalloc(&self, path: &Path) -> Result<PathBuf, JemallocError> {
            if self.safe.contains(path) {
                Ok(path.to_owned())
            } else {
                Err(JemallocError::Writable {
                    path: path.to_owned(),
                    mode: 0o666,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeHost;
    use super::*;
    use crate::config::parse;
    use std::collections::BTreeMap;

    fn run(text: &str, host: &FakeHost) -> Result<Config, Vec<String>> {
        parse(
            text,
            Path::new("/etc/kechi/demo.toml"),
            &BTreeMap::new(),
            host,
        )
        .map(|l| l.config)
        .map_err(|e| e.errors().iter().map(ToString::to_string).collect())
    }

    const CMD: &str = "command = [\"/bin/app\"]\n";

    #[test]
    fn users_and_groups_must_exist() {
        let host = FakeHost::new();
        let errs = run(
            &format!("{CMD}user = \"ghost\"\ngroup = \"ghosts\"\n[control]\ngroup = \"ops\"\n"),
            &host,
        )
        .unwrap_err();
        assert_eq!(
            errs,
            [
                "/etc/kechi/demo.toml:2: user: no user \"ghost\" on this host; expected an existing user (create it, or name another)",
                "/etc/kechi/demo.toml:3: group: no group \"ghosts\" on this host; expected an existing group (create it, or name another)",
                "/etc/kechi/demo.toml:5: control.group: no group \"ops\" on this host; expected an existing group (create it, or name another)",
            ]
        );
        run(
            &format!("{CMD}user = \"diary\"\ngroup = \"diary\"\n"),
            &host,
        )
        .unwrap();
        run(&format!("{CMD}user = \"root\"\n"), &host).unwrap();
    }

    #[test]
    fn root_under_another_name_is_refused() {
        let mut host = FakeHost::new();
        host.users.insert("toor".into());
        host.uid_zero.insert("toor".into());
        let errs = run(&format!("{CMD}user = \"toor\"\n"), &host).unwrap_err();
        assert_eq!(
            errs,
            [
                "/etc/kechi/demo.toml:2: user: user \"toor\" has uid 0, so workers would run as root; expected user = \"root\" written out to run workers as root, or a user without uid 0"
            ]
        );
        run(&format!("{CMD}user = \"root\"\n"), &host).unwrap();
        host.uid_zero.insert("nobody".into());
        let errs = run(CMD, &host).unwrap_err();
        assert!(errs[0].contains("which has uid 0"), "{errs:?}");
    }

    #[test]
    fn real_host_knows_uid_zero() {
        assert!(RealHost.user_is_uid_zero("root"));
        assert!(!RealHost.user_is_uid_zero("nobody"));
        assert!(!RealHost.user_is_uid_zero("no-such-user-kechi"));
    }

    #[test]
    fn default_user_is_nobody_when_root() {
        let mut host = FakeHost::new();
        let c = run(CMD, &host).unwrap();
        assert_eq!(c.user, None);
        host.users.remove("nobody");
        let errs = run(CMD, &host).unwrap_err();
        assert_eq!(
            errs,
            [
                "/etc/kechi/demo.toml: user: not set, so workers would run as \"nobody\", but there is no such user; expected user = \"NAME\" naming an existing user (workers run as root only with user = \"root\" written out)"
            ]
        );
        host.root = false;
        run(CMD, &host).unwrap();
    }

    #[test]
    fn jemalloc_auto() {
        let mut host = FakeHost::new();
        let c = run(CMD, &host).unwrap();
        assert_eq!(c.jemalloc.path, JemallocPath::Auto);
        assert_eq!(
            c.jemalloc.library.as_deref(),
            Some(Path::new("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"))
        );
        host.auto = None;
        let errs = run(CMD, &host).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("/etc/kechi/demo.toml: jemalloc.enabled: jemalloc is enabled but no libjemalloc was found"), "{errs:?}");
        assert!(errs[0].contains("libjemalloc2") && errs[0].contains("jemalloc.enabled = false"));
        let c = run(&format!("{CMD}[jemalloc]\nenabled = false\n"), &host).unwrap();
        assert_eq!(c.jemalloc.library, None);
    }

    #[test]
    fn jemalloc_explicit_path_must_be_safe() {
        let host = FakeHost::new();
        let errs = run(
            &format!("{CMD}[jemalloc]\npath = \"/tmp/libjemalloc.so\"\n"),
            &host,
        )
        .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with(
                "/etc/kechi/demo.toml:3: jemalloc.path: refusing to preload /tmp/libjemalloc.so: "
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn real_host_knows_root() {
        assert_eq!(RealHost.user_exists("root"), Ok(true));
        assert_eq!(RealHost.group_exists("root"), Ok(true));
        assert_eq!(RealHost.user_exists("no-such-user-kechi"), Ok(false));
    }
}

//! Stage 3: can this host honour the config? Users and groups exist, the working directory
//! and the program exist, and the jemalloc library is found and safe to preload.
//!
//! A worker starts by `chdir(directory)` and `execve(program)` as its user (see
//! [`crate::spawn`]); a missing directory or program would make every worker die at once and
//! kechid crash-loop, so those are errors, found here before anything starts. The program is
//! looked up exactly as the start does it ([`crate::spawn::resolve_command`]: an absolute path
//! as is, a bare name in the workers' `PATH`, never relative to `directory`). Whether the
//! worker's user may enter the directory or run the program is judged from the mode bits only
//! (ACLs could say otherwise), so a "no" there is a warning.
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

/// What a path is, as `chdir` and `execve` see it (symlinks followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Directory,
    File,
    /// A socket, device, fifo...
    Other,
}

/// The facts of an existing path that decide whether a worker can use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathFacts {
    pub kind: PathKind,
    /// Permission bits (`0o755`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

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
    /// `Ok(None)` when there is no such path; `Err` when it cannot be told.
    fn path_facts(&self, path: &Path) -> Result<Option<PathFacts>, String>;
    /// Where the worker start finds a program name without '/' ([`crate::spawn::resolve_command`]),
    /// with the workers' `PATH` (`None`: the default one).
    fn find_program(&self, name: &str, path_var: Option<&str>) -> Option<PathBuf>;
    /// uid and primary gid of a user.
    fn user_ids(&self, name: &str) -> Option<(u32, u32)>;
    fn group_gid(&self, name: &str) -> Option<u32>;
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

    fn path_facts(&self, path: &Path) -> Result<Option<PathFacts>, String> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(PathFacts {
                kind: if m.is_dir() {
                    PathKind::Directory
                } else if m.is_file() {
                    PathKind::File
                } else {
                    PathKind::Other
                },
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            })),
            // ENOTDIR: a component on the way is a file; for chdir and exec that is "not there".
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn find_program(&self, name: &str, path_var: Option<&str>) -> Option<PathBuf> {
        crate::spawn::resolve_command(name, path_var).ok()
    }

    fn user_ids(&self, name: &str) -> Option<(u32, u32)> {
        let u = nix::unistd::User::from_name(name).ok()??;
        Some((u.uid.as_raw(), u.gid.as_raw()))
    }

    fn group_gid(&self, name: &str) -> Option<u32> {
        Some(nix::unistd::Group::from_name(name).ok()??.gid.as_raw())
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
    let ids = worker_ids(config, host);
    c.directory(&config.directory, ids, host);
    if let Some(program) = config.command.first() {
        c.program(program, config.environment.get("PATH"), ids, host);
    }
    config.jemalloc.library = if config.jemalloc.enabled {
        c.jemalloc(&config.jemalloc.path, host)
    } else {
        None
    };
    // Not about the host, but about what is around the app: the addresses kechid binds itself
    // live only as long as kechid, so they do not survive an idle stop.
    if !config.idle.stop_after.is_zero() && !config.listen.is_empty() {
        c.warn(
            "idle.stop-after",
            format!(
                "the listen addresses ({}) refuse connections while the app is stopped for \
                 idleness, and a connection to them does not start it again",
                config.listen.join(", ")
            ),
            "put them in the socket unit instead (ListenStream= in a drop-in of \
             kechi@APP.socket), which keeps listening and starts the app",
        );
    }
    c.errors
}

/// The uid and gid workers run as, when kechid switches to a user (`None`: it does not, or the
/// user is unknown, which is reported on its own).
fn worker_ids(config: &Config, host: &dyn Host) -> Option<(u32, u32)> {
    let user = match &config.user {
        Some(u) => u.as_str(),
        None if host.is_root() => DEFAULT_USER,
        None => return None,
    };
    let (uid, gid) = host.user_ids(user)?;
    match &config.group {
        Some(g) => Some((uid, host.group_gid(g)?)),
        None => Some((uid, gid)),
    }
}

/// Whether `ids` may use `facts` for `bit` (1: execute/search) by the mode bits, the way the
/// kernel decides it for a process without supplementary groups (workers have none). Root may
/// enter any directory, and run a file with any execute bit.
fn permits(facts: &PathFacts, (uid, gid): (u32, u32), bit: u32) -> bool {
    if uid == 0 {
        return facts.kind == PathKind::Directory || facts.mode & 0o111 != 0;
    }
    let class = if facts.uid == uid {
        facts.mode >> 6
    } else if facts.gid == gid {
        facts.mode >> 3
    } else {
        facts.mode
    };
    class & bit != 0
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

    fn warn(&mut self, key: &str, message: String, fix: &str) {
        let source = self.prov.get(key).cloned().unwrap_or(Source::Default);
        self.errors.push(
            ConfigError::new(ErrorKind::Host, Location::of(&source, self.file), message)
                .key(key)
                .warning(fix),
        );
    }

    /// `directory`: workers `chdir` into it before exec.
    fn directory(&mut self, dir: &Path, ids: Option<(u32, u32)>, host: &dyn Host) {
        let d = dir.display();
        match host.path_facts(dir) {
            Ok(None) => self.fail(
                "directory",
                format!("{d} does not exist, so no worker could start (each changes into it)"),
                "an existing directory: create it (mkdir -p), or set directory to where the \
                 app lives",
            ),
            Ok(Some(f)) if f.kind != PathKind::Directory => self.fail(
                "directory",
                format!("{d} is not a directory"),
                "the directory the app runs in, like \"/srv/app\"",
            ),
            Ok(Some(f)) => {
                if let Some(ids) = ids.filter(|ids| !permits(&f, *ids, 1)) {
                    self.warn(
                        "directory",
                        format!(
                            "uid {} (gid {}) may not enter {d} (mode {:04o}, owner {}:{}), so \
                             workers would fail to start in it",
                            ids.0, ids.1, f.mode, f.uid, f.gid
                        ),
                        "let the workers' user search it (chmod o+x, or chgrp to its group and \
                         chmod g+x), or choose another user",
                    );
                }
            }
            Err(e) => self.warn(
                "directory",
                format!("cannot check {d}: {e}"),
                "run the check as root, or check that the directory exists",
            ),
        }
    }

    /// `command[0]`: the program the workers exec.
    fn program(
        &mut self,
        program: &str,
        path_var: Option<&String>,
        ids: Option<(u32, u32)>,
        host: &dyn Host,
    ) {
        let path = if program.contains('/') {
            PathBuf::from(program)
        } else {
            match host.find_program(program, path_var.map(String::as_str)) {
                Some(p) => p,
                None => {
                    let searched = path_var.map_or(
                        "the default PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        |p| p.as_str(),
                    );
                    return self.fail(
                        "command",
                        format!(
                            "no executable {program:?} in {searched}, so no worker could start"
                        ),
                        "the program's absolute path as command[0] (a bare name is looked up in \
                         the workers' PATH, which environment.PATH sets; never in directory)",
                    );
                }
            }
        };
        let p = path.display();
        match host.path_facts(&path) {
            Ok(None) => self.fail(
                "command",
                format!("{p} does not exist, so no worker could start"),
                "the absolute path of an installed program as command[0] (`command -v NAME` \
                 finds it), or install it",
            ),
            Ok(Some(f)) if f.kind != PathKind::File => self.fail(
                "command",
                format!("{p} is not a file that can be run"),
                "a program file as command[0]",
            ),
            Ok(Some(f)) if f.mode & 0o111 == 0 => self.fail(
                "command",
                format!("{p} is not executable (mode {:04o})", f.mode),
                "chmod +x on it, or its interpreter first: [\"/usr/bin/python3\", \"app.py\"]",
            ),
            Ok(Some(f)) => {
                if let Some(ids) = ids.filter(|ids| !permits(&f, *ids, 1)) {
                    self.warn(
                        "command",
                        format!(
                            "uid {} (gid {}) may not execute {p} (mode {:04o}, owner {}:{}), so \
                             workers would fail to start",
                            ids.0, ids.1, f.mode, f.uid, f.gid
                        ),
                        "let the workers' user run it (chmod o+x, or chgrp to its group and \
                         chmod g+x), or choose another user",
                    );
                }
            }
            Err(e) => self.warn(
                "command",
                format!("cannot check {p}: {e}"),
                "run the check as root, or check that the program exists",
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
        /// Existing paths.
        pub paths: std::collections::BTreeMap<PathBuf, PathFacts>,
    }

    pub fn dir(mode: u32) -> PathFacts {
        PathFacts {
            kind: PathKind::Directory,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub fn file(mode: u32) -> PathFacts {
        PathFacts {
            kind: PathKind::File,
            mode,
            uid: 0,
            gid: 0,
        }
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
                paths: [
                    ("/", dir(0o755)),
                    ("/srv/app", dir(0o755)),
                    ("/bin/app", file(0o755)),
                    ("/usr/bin/python3", file(0o755)),
                    ("/usr/bin/plackup", file(0o755)),
                ]
                .map(|(p, f)| (PathBuf::from(p), f))
                .into(),
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
        fn path_facts(&self, path: &Path) -> Result<Option<PathFacts>, String> {
            Ok(self.paths.get(path).copied())
        }
        fn find_program(&self, name: &str, path_var: Option<&str>) -> Option<PathBuf> {
            // As spawn::resolve_command: the first PATH entry holding an executable file.
            path_var
                .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| Path::new(d).join(name))
                .find(|p| {
                    self.paths
                        .get(p)
                        .is_some_and(|f| f.kind == PathKind::File && f.mode & 0o111 != 0)
                })
        }
        fn user_ids(&self, name: &str) -> Option<(u32, u32)> {
            match name {
                "root" => Some((0, 0)),
                "nobody" => Some((65534, 65534)),
                n if self.users.contains(n) => Some((1000, 1000)),
                _ => None,
            }
        }
        fn group_gid(&self, name: &str) -> Option<u32> {
            match name {
                "root" => Some(0),
                n if self.groups.contains(n) => Some(1000),
                _ => None,
            }
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
    fn idle_stop_with_listen_addresses_is_a_warning() {
        let host = FakeHost::new();
        let text = format!("{CMD}listen = [\"127.0.0.1:9000\"]\n[idle]\nstop-after = \"15m\"\n");
        let loaded = parse(
            &text,
            Path::new("/etc/kechi/demo.toml"),
            &BTreeMap::new(),
            &host,
        )
        .unwrap();
        let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("/etc/kechi/demo.toml:4: idle.stop-after: warning: the listen addresses (127.0.0.1:9000) refuse connections"),
            "{w:?}"
        );
        // without listen, or without idle stop: nothing to say
        let quiet = format!("{CMD}[idle]\nstop-after = \"15m\"\n");
        let l = parse(
            &quiet,
            Path::new("/etc/kechi/demo.toml"),
            &BTreeMap::new(),
            &host,
        )
        .unwrap();
        assert!(l.warnings.is_empty());
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

    fn warnings(text: &str, host: &FakeHost) -> Vec<String> {
        parse(
            text,
            Path::new("/etc/kechi/demo.toml"),
            &BTreeMap::new(),
            host,
        )
        .unwrap()
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    #[test]
    fn directory_must_exist_and_be_a_directory() {
        let mut host = FakeHost::new();
        let errs = run(&format!("{CMD}directory = \"/srv/gone\"\n"), &host).unwrap_err();
        assert_eq!(
            errs,
            [
                "/etc/kechi/demo.toml:2: directory: /srv/gone does not exist, so no worker could start (each changes into it); expected an existing directory: create it (mkdir -p), or set directory to where the app lives"
            ]
        );
        host.paths.insert("/srv/file".into(), fake::file(0o644));
        let errs = run(&format!("{CMD}directory = \"/srv/file\"\n"), &host).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("/etc/kechi/demo.toml:2: directory: /srv/file is not a directory;"),
            "{errs:?}"
        );
        run(&format!("{CMD}directory = \"/srv/app\"\n"), &host).unwrap();
    }

    #[test]
    fn directory_the_worker_cannot_enter_is_a_warning() {
        let mut host = FakeHost::new();
        host.paths.insert("/srv/private".into(), fake::dir(0o700));
        let text = format!("{CMD}directory = \"/srv/private\"\nuser = \"diary\"\n");
        let w = warnings(&text, &host);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("/etc/kechi/demo.toml:2: directory: warning: uid 1000 (gid 1000) may not enter /srv/private (mode 0700, owner 0:0)"),
            "{w:?}"
        );
        assert!(w[0].contains("; fix: "), "{w:?}");
        // Root may enter it; so may its group.
        assert!(
            warnings(
                &format!("{CMD}directory = \"/srv/private\"\nuser = \"root\"\n"),
                &host
            )
            .is_empty()
        );
        host.paths.insert(
            "/srv/private".into(),
            PathFacts {
                gid: 1000,
                ..fake::dir(0o750)
            },
        );
        assert!(warnings(&text, &host).is_empty());
    }

    #[test]
    fn program_must_exist_and_be_executable() {
        let mut host = FakeHost::new();
        let errs = run("command = [\"/usr/bin/gone\", \"-x\"]\n", &host).unwrap_err();
        assert_eq!(
            errs,
            [
                "/etc/kechi/demo.toml:1: command: /usr/bin/gone does not exist, so no worker could start; expected the absolute path of an installed program as command[0] (`command -v NAME` finds it), or install it"
            ]
        );
        host.paths
            .insert("/srv/app/app.py".into(), fake::file(0o644));
        let errs = run("command = [\"/srv/app/app.py\"]\n", &host).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("/etc/kechi/demo.toml:1: command: /srv/app/app.py is not executable (mode 0644); expected chmod +x on it, or its interpreter first"),
            "{errs:?}"
        );
        let errs = run("command = [\"/srv/app\"]\n", &host).unwrap_err();
        assert!(
            errs[0].contains("command: /srv/app is not a file that can be run"),
            "{errs:?}"
        );
    }

    #[test]
    fn bare_program_names_are_found_in_the_workers_path() {
        let mut host = FakeHost::new();
        let errs = run("command = [\"puma\"]\n", &host).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with(
                "/etc/kechi/demo.toml:1: command: no executable \"puma\" in the default PATH"
            ),
            "{errs:?}"
        );
        host.paths.insert("/usr/bin/puma".into(), fake::file(0o755));
        run("command = [\"puma\"]\n", &host).unwrap();
        // environment.PATH replaces the default, as it does for the worker start.
        host.paths
            .insert("/opt/app/bin/server".into(), fake::file(0o755));
        let errs = run("command = [\"server\"]\n", &host).unwrap_err();
        assert!(errs[0].contains("no executable \"server\""), "{errs:?}");
        run(
            "command = [\"server\"]\nenvironment = { PATH = \"/opt/app/bin:/usr/bin\" }\n",
            &host,
        )
        .unwrap();
        let errs = run(
            "command = [\"python3\"]\nenvironment = { PATH = \"/opt/app/bin\" }\n",
            &host,
        )
        .unwrap_err();
        assert!(
            errs[0].contains("no executable \"python3\" in /opt/app/bin,"),
            "{errs:?}"
        );
    }

    #[test]
    fn program_the_worker_cannot_run_is_a_warning() {
        let mut host = FakeHost::new();
        host.paths
            .insert("/srv/app/server".into(), fake::file(0o750));
        let text = "command = [\"/srv/app/server\"]\nuser = \"diary\"\n";
        let w = warnings(text, &host);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("/etc/kechi/demo.toml:1: command: warning: uid 1000 (gid 1000) may not execute /srv/app/server (mode 0750, owner 0:0)"),
            "{w:?}"
        );
        // group = "diary" gives the worker gid 1000... which does not own it either.
        host.paths.insert(
            "/srv/app/server".into(),
            PathFacts {
                gid: 1000,
                ..fake::file(0o750)
            },
        );
        assert!(warnings(text, &host).is_empty());
    }

    #[test]
    fn every_host_problem_at_once() {
        let host = FakeHost::new();
        let errs = run(
            "command = [\"/usr/bin/gone\"]\ndirectory = \"/srv/gone\"\nuser = \"ghost\"\n",
            &host,
        )
        .unwrap_err();
        let heads: Vec<&str> = errs
            .iter()
            .map(|e| &e[..e.find(": ").unwrap() + 2])
            .collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains(":1: command: "), "{errs:?}");
        assert!(errs[1].contains(":2: directory: "), "{errs:?}");
        assert!(
            errs[2].contains(":3: user: no user \"ghost\""),
            "{errs:?} {heads:?}"
        );
    }

    #[test]
    fn real_host_path_facts() {
        let f = RealHost.path_facts(Path::new("/bin/sh")).unwrap().unwrap();
        assert_eq!(f.kind, PathKind::File);
        assert_ne!(f.mode & 0o111, 0);
        assert_eq!(
            RealHost.path_facts(Path::new("/")).unwrap().unwrap().kind,
            PathKind::Directory
        );
        assert_eq!(
            RealHost
                .path_facts(Path::new("/nonexistent-kechi"))
                .unwrap(),
            None
        );
        assert_eq!(RealHost.path_facts(Path::new("/bin/sh/x")).unwrap(), None);
        assert_eq!(
            RealHost.find_program("sh", Some("/nonexistent:/bin")),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(RealHost.user_ids("root"), Some((0, 0)));
        assert_eq!(RealHost.group_gid("root"), Some(0));
    }

    #[test]
    fn real_host_knows_root() {
        assert_eq!(RealHost.user_exists("root"), Ok(true));
        assert_eq!(RealHost.group_exists("root"), Ok(true));
        assert_eq!(RealHost.user_exists("no-such-user-kechi"), Ok(false));
    }
}

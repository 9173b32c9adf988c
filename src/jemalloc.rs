//! jemalloc for the workers: where the library is, whether it is safe to preload, whether a
//! process has it loaded, and kechi's default `MALLOC_CONF`.
//!
//! Contract:
//! - [`find_auto`] looks in the ld.so cache (`ldconfig -p`) and then in the usual library
//!   directories, for `libjemalloc.so.2` before `libjemalloc.so`, and only returns a file that
//!   is an ELF shared object for this machine (a 32-bit copy in the cache would only make ld.so
//!   complain in every worker). It does not judge safety.
//! - [`check_library`] resolves symlinks and refuses a library that anyone but root could have
//!   replaced: the file must be a root-owned regular file not writable by group or others, and
//!   so must every directory above it be root-owned and not writable by group or others unless
//!   sticky. The file goes into `LD_PRELOAD` of every worker, so whoever can write it runs code
//!   as the app's user (or root when `user = "root"`).
//! - [`maps_has_jemalloc`] is a pure reader of `/proc/PID/maps` text.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The default `MALLOC_CONF` when `jemalloc.conf` is empty.
///
/// Chosen so a worker gives memory back soon after a burst instead of keeping it: a background
/// thread purges, dirty pages decay within a second, muzzy pages are released at once, and two
/// arenas keep per-thread fragmentation down on small boxes. Measured in
/// `docs/benchmarks/allocator.md` (`bench/allocator`): `dirty_decay_ms:0` costs about twice the
/// CPU per request in page faults, no background thread keeps more memory once the load stops,
/// and one arena saves little and only under load.
pub const DEFAULT_CONF: &str =
    "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2";

/// File names looked for, best first: the runtime soname, then the development symlink.
pub const SONAMES: &[&str] = &["libjemalloc.so.2", "libjemalloc.so"];

/// Directories searched after the ld.so cache, in order.
pub fn lib_dirs() -> Vec<PathBuf> {
    vec![
        PathBuf::from(format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH)),
        PathBuf::from("/usr/lib64"),
        PathBuf::from("/usr/lib"),
        PathBuf::from("/usr/local/lib"),
    ]
}

/// Why a library may not be preloaded.
#[derive(Debug, thiserror::Error)]
pub enum JemallocError {
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("{}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: not an ELF shared library for this machine", path.display())]
    NotForThisMachine { path: PathBuf },
    #[error("{}: owned by uid {uid}, not root", path.display())]
    NotRootOwned { path: PathBuf, uid: u32 },
    #[error("{}: writable by group or others (mode {mode:04o})", path.display())]
    Writable { path: PathBuf, mode: u32 },
    #[error(
        "{}: its directory {} is {why}, so the library could be replaced",
        path.display(),
        dir.display()
    )]
    UnsafeDirectory {
        path: PathBuf,
        dir: PathBuf,
        why: String,
    },
}

/// Finds libjemalloc on this host (see the module doc), or `None`.
pub fn find_auto() -> Option<PathBuf> {
    let cache = ldconfig_output();
    find_in(cache.as_deref(), &lib_dirs())
}

/// [`find_auto`] with its inputs given: `ldconfig -p` output (if any) and directories.
pub fn find_in(ldconfig: Option<&str>, dirs: &[PathBuf]) -> Option<PathBuf> {
    let from_cache = ldconfig.map(parse_ldconfig).unwrap_or_default();
    let from_dirs = SONAMES
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)));
    from_cache
        .into_iter()
        .chain(from_dirs)
        .find(|p| is_library_for_this_machine(p))
}

/// Paths of jemalloc in `ldconfig -p` output, in [`SONAMES`] order. Lines look like
/// `\tlibjemalloc.so.2 (libc6,x86-64) => /lib/x86_64-linux-gnu/libjemalloc.so.2`.
pub fn parse_ldconfig(text: &str) -> Vec<PathBuf> {
    let entries: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let (lhs, path) = l.split_once("=>")?;
            Some((lhs.split_whitespace().next()?, path.trim()))
        })
        .collect();
    SONAMES
        .iter()
        .flat_map(|name| {
            entries
                .iter()
                .filter(move |(n, _)| n == name)
                .map(|(_, p)| PathBuf::from(p))
        })
        .collect()
}

/// `ldconfig -p`, trying the sbin paths first since they are often not in a user's PATH.
fn ldconfig_output() -> Option<String> {
    ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"]
        .iter()
        .find_map(|cmd| {
            let out = Command::new(cmd).arg("-p").output().ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })
}

fn is_library_for_this_machine(path: &Path) -> bool {
    let mut header = [0u8; 20];
    fs::metadata(path).is_ok_and(|m| m.is_file())
        && fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut header))
            .is_ok()
        && elf_matches_host(&header)
}

/// ELF machine number of the running architecture, when known.
const fn host_machine() -> Option<u16> {
    if cfg!(target_arch = "x86_64") {
        Some(62)
    } else if cfg!(target_arch = "aarch64") {
        Some(183)
    } else if cfg!(target_arch = "x86") {
        Some(3)
    } else if cfg!(target_arch = "arm") {
        Some(40)
    } else if cfg!(target_arch = "riscv64") {
        Some(243)
    } else if cfg!(target_arch = "powerpc64") {
        Some(21)
    } else if cfg!(target_arch = "s390x") {
        Some(22)
    } else if cfg!(target_arch = "loongarch64") {
        Some(258)
    } else {
        None
    }
}

/// Whether the first 20 bytes of a file are an ELF header of this machine's class, byte order
/// and (when known) architecture.
pub fn elf_matches_host(header: &[u8]) -> bool {
    let Some(h) = header.get(..20) else {
        return false;
    };
    let class = if cfg!(target_pointer_width = "64") {
        2
    } else {
        1
    };
    let data = if cfg!(target_endian = "little") { 1 } else { 2 };
    if h[..4] != *b"\x7fELF" || h[4] != class || h[5] != data {
        return false;
    }
    let machine = if data == 1 {
        u16::from_le_bytes([h[18], h[19]])
    } else {
        u16::from_be_bytes([h[18], h[19]])
    };
    host_machine().is_none_or(|m| m == machine)
}

/// Resolves `path` and checks it is safe to preload (see the module doc). Returns the resolved
/// file, which is what should go into `LD_PRELOAD`, so a symlink swapped later does not matter.
pub fn check_library(path: &Path) -> Result<PathBuf, JemallocError> {
    let io = |op, source| JemallocError::Io {
        path: path.to_owned(),
        op,
        source,
    };
    let real = fs::canonicalize(path).map_err(|e| io("resolve", e))?;
    let meta = fs::metadata(&real).map_err(|e| io("stat", e))?;
    if !meta.is_file() {
        return Err(JemallocError::NotAFile { path: real });
    }
    if meta.uid() != 0 {
        return Err(JemallocError::NotRootOwned {
            path: real,
            uid: meta.uid(),
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(JemallocError::Writable {
            path: real,
            mode: meta.mode() & 0o7777,
        });
    }
    for dir in real.ancestors().skip(1) {
        let m = fs::metadata(dir).map_err(|e| io("stat a directory of", e))?;
        let why = if m.uid() != 0 {
            Some(format!("owned by uid {}", m.uid()))
        } else if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
            // A sticky directory (like /tmp) is fine: only the owner may replace its entries.
            Some(format!(
                "writable by group or others (mode {:04o})",
                m.mode() & 0o7777
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(JemallocError::UnsafeDirectory {
                path: real.clone(),
                dir: dir.to_owned(),
                why,
            });
        }
    }
    if !is_library_for_this_machine(&real) {
        return Err(JemallocError::NotForThisMachine { path: real });
    }
    Ok(real)
}

/// Whether `/proc/PID/maps` text shows libjemalloc mapped into the process.
pub fn maps_has_jemalloc(maps_text: &str) -> bool {
    maps_text.lines().any(|line| {
        // Address, perms, offset and device contain no '/': the pathname starts at the first.
        let Some(i) = line.find('/') else {
            return false;
        };
        let path = line[i..].trim_end();
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        let name = path.rsplit('/').next().unwrap_or("");
        name.starts_with("libjemalloc") && name.contains(".so")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// A file that passes the ELF check: a copy of a library this very process has loaded.
    fn some_host_library() -> PathBuf {
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .filter_map(|l| l.find('/').map(|i| PathBuf::from(l[i..].trim())))
            .find(|p| p.to_string_lossy().contains(".so"))
            .expect("a shared library mapped into the test process")
    }

    fn fake_lib(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        fs::copy(some_host_library(), &p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        p
    }

    /// A private directory the check accepts when running as root: created under a
    /// root-owned 0755 directory rather than relying on how /tmp is set up.
    fn safe_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn default_conf_is_well_formed() {
        for item in DEFAULT_CONF.split(',') {
            let (k, v) = item.split_once(':').unwrap();
            assert!(!k.is_empty() && !v.is_empty());
        }
    }

    #[test]
    fn parses_ldconfig() {
        let text = "3 libs found in cache `/etc/ld.so.cache'\n\
            \tlibjemalloc.so (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libjemalloc.so\n\
            \tlibjemalloc.so.2 (libc6,x86-64) => /lib/x86_64-linux-gnu/libjemalloc.so.2\n\
            \tlibjemalloc.so.2 (libc6) => /lib/i386-linux-gnu/libjemalloc.so.2\n\
            \tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6\n";
        assert_eq!(
            parse_ldconfig(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libjemalloc.so.2"),
                PathBuf::from("/lib/i386-linux-gnu/libjemalloc.so.2"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libjemalloc.so"),
            ]
        );
        assert!(parse_ldconfig("").is_empty());
    }

    #[test]
    fn finds_in_dirs_preferring_the_soname() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dev = fake_lib(a.path(), "libjemalloc.so");
        let so2 = fake_lib(b.path(), "libjemalloc.so.2");
        let dirs = [a.path().to_owned(), b.path().to_owned()];
        assert_eq!(find_in(None, &dirs), Some(so2.clone()));
        fs::remove_file(&so2).unwrap();
        assert_eq!(find_in(None, &dirs), Some(dev));
        assert_eq!(find_in(None, &[]), None);
    }

    #[test]
    fn skips_files_that_are_not_libraries() {
        let a = tempfile::tempdir().unwrap();
        fs::write(a.path().join("libjemalloc.so.2"), "not an ELF file").unwrap();
        let cache = format!(
            "\tlibjemalloc.so.2 (libc6) => {}\n",
            a.path().join("libjemalloc.so.2").display()
        );
        assert_eq!(find_in(Some(&cache), &[a.path().to_owned()]), None);
    }

    #[test]
    fn elf_headers() {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[18..20].copy_from_slice(&62u16.to_le_bytes());
        #[cfg(all(target_arch = "x86_64", target_endian = "little"))]
        assert!(elf_matches_host(&h));
        h[4] = 1; // 32-bit
        assert!(!elf_matches_host(&h));
        assert!(!elf_matches_host(b"\x7fELF"));
        assert!(!elf_matches_host(&[0u8; 64]));
    }

    #[test]
    fn safe_library_resolves_symlinks() {
        if !is_root() {
            eprintln!("skipped: ownership checks need root");
            return;
        }
        let d = safe_dir();
        let lib = fake_lib(d.path(), "libjemalloc.so.2");
        let link = d.path().join("libjemalloc.so");
        symlink(&lib, &link).unwrap();
        let real = fs::canonicalize(&lib).unwrap();
        assert_eq!(check_library(&link).unwrap(), real);
        assert_eq!(check_library(&lib).unwrap(), real);
    }

    #[test]
    fn refuses_writable_library() {
        let d = safe_dir();
        let lib = fake_lib(d.path(), "libjemalloc.so.2");
        fs::set_permissions(&lib, fs::Permissions::from_mode(0o666)).unwrap();
        let err = check_library(&lib).unwrap_err();
        if is_root() {
            assert!(
                matches!(err, JemallocError::Writable { mode: 0o666, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("writable by group or others"));
        }
        // Through a symlink, the target is what is judged.
        let link = d.path().join("link.so");
        symlink(&lib, &link).unwrap();
        assert!(check_library(&link).is_err());
    }

    #[test]
    fn refuses_library_not_owned_by_root() {
        if !is_root() {
            eprintln!("skipped: needs root to give a file away");
            return;
        }
        let d = safe_dir();
        let lib = fake_lib(d.path(), "libjemalloc.so.2");
        std::os::unix::fs::chown(&lib, Some(65534), None).unwrap();
        let err = check_library(&lib).unwrap_err();
        assert!(
            matches!(err, JemallocError::NotRootOwned { uid: 65534, .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_library_in_writable_directory() {
        if !is_root() {
            eprintln!("skipped: ownership checks need root");
            return;
        }
        let d = safe_dir();
        let lib = fake_lib(d.path(), "libjemalloc.so.2");
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_library(&lib).unwrap_err();
        assert!(
            matches!(err, JemallocError::UnsafeDirectory { .. }),
            "{err}"
        );
        // Sticky, like /tmp: fine.
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_library(&lib).is_ok());
    }

    #[test]
    fn refuses_missing_and_non_files() {
        let d = tempfile::tempdir().unwrap();
        let err = check_library(&d.path().join("nope.so")).unwrap_err();
        assert!(
            matches!(err, JemallocError::Io { op: "resolve", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("nope.so"));
        if is_root() {
            fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
            let err = check_library(d.path()).unwrap_err();
            assert!(matches!(err, JemallocError::NotAFile { .. }), "{err}");
        }
    }

    #[test]
    fn refuses_non_libraries() {
        if !is_root() {
            eprintln!("skipped: ownership checks need root");
            return;
        }
        let d = safe_dir();
        let p = d.path().join("libjemalloc.so.2");
        fs::write(&p, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_library(&p).unwrap_err();
        assert!(
            matches!(err, JemallocError::NotForThisMachine { .. }),
            "{err}"
        );
    }

    #[test]
    fn reads_maps() {
        let with = "\
55b146732000-55b146734000 r--p 00000000 fe:00 247030                     /usr/bin/ruby3.1
7f0e1c000000-7f0e1c021000 rw-p 00000000 00:00 0 
7f0e1d200000-7f0e1d240000 r-xp 00010000 fe:00 1234                       /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
7ffd3c9e1000-7ffd3ca02000 rw-p 00000000 00:00 0                          [stack]
";
        assert!(maps_has_jemalloc(with));
        let deleted = "7f0e1d200000-7f0e1d240000 r-xp 00010000 fe:00 1234 /opt/lib/libjemalloc.so.2 (deleted)\n";
        assert!(maps_has_jemalloc(deleted));
        let without = "\
55b146732000-55b146734000 r--p 00000000 fe:00 247030                     /usr/bin/ruby3.1
7f0e1d200000-7f0e1d240000 r-xp 00010000 fe:00 1234                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f0e1d300000-7f0e1d340000 r-xp 00010000 fe:00 1234                       /srv/app/libjemalloc-notes.txt
";
        assert!(!maps_has_jemalloc(without));
        assert!(!maps_has_jemalloc(""));
    }

    #[test]
    fn finds_the_host_library_when_installed() {
        // Informational on hosts without jemalloc; a real check where it is installed.
        if let Some(p) = find_auto() {
            assert!(p.to_string_lossy().contains("libjemalloc"));
            if is_root() {
                check_library(&p).unwrap();
            }
        }
    }
}

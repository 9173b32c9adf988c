//! Per-worker temp directories on tmpfs (the worker's `TMPDIR`).
//!
//! As root each worker gets its own tmpfs mounted at `/run/kechi/APP/tmp/N`, capped by
//! `tmpdir.size`, mode 0700, owned by the worker's user; its pages are charged to the worker's
//! memory cgroup (the first toucher pays). Wiping is a lazy unmount then removal of the empty
//! mount point: nothing the worker planted inside (symlinks, hard links) is ever followed.
//! Without root (a user manager) no mount is possible: the directory lives under
//! `$XDG_RUNTIME_DIR` (a tmpfs on systemd hosts) without a cap of its own.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::unistd::{Gid, Uid};

use crate::app::AppName;

#[derive(Debug, thiserror::Error)]
pub enum TmpDirError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting a tmpfs on {}: {source}", path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// The temp directories of one app.
#[derive(Debug, Clone)]
pub struct TmpDirs {
    base: PathBuf,
    size: u64,
    mount: bool,
    app: AppName,
}

impl TmpDirs {
    /// As root: `/run/kechi/APP/tmp` with one capped tmpfs per worker. Otherwise a directory under
    /// `runtime_dir` without a mount.
    pub fn new(app: &AppName, size: u64, as_root: bool, runtime_dir: &Path) -> Self {
        TmpDirs {
            base: runtime_dir.join(app.as_str()).join("tmp"),
            size,
            mount: as_root,
            app: app.clone(),
        }
    }

    /// Whether each directory is its own capped tmpfs.
    pub fn capped(&self) -> bool {
        self.mount
    }

    pub fn path(&self, serial: u64) -> PathBuf {
        self.base.join(serial.to_string())
    }

    /// Makes worker `serial`'s directory, empty, 0700, owned by `uid:gid`.
    pub fn create(&self, serial: u64, uid: Uid, gid: Gid) -> Result<PathBuf, TmpDirError> {
        let io =
            |op: &'static str, path: PathBuf| move |source| TmpDirError::Io { op, path, source };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.base)
            .map_err(io("creating", self.base.clone()))?;
        let dir = self.path(serial);
        // A leftover of an earlier kechid with the same serial must not leak into a new worker.
        self.wipe(serial)?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io("creating", dir.clone()))?;
        // The umask may have narrowed the mode; 0700 is the contract.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io("chmod", dir.clone()))?;
        if self.mount {
            let opts = format!(
                "size={},mode=0700,uid={},gid={}",
                self.size.max(4096),
                uid.as_raw(),
                gid.as_raw()
            );
            let source = format!("kechi-{}-{serial}", self.app);
            nix::mount::mount(
                Some(source.as_str()),
                &dir,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .map_err(|source| TmpDirError::Mount {
                path: dir.clone(),
                source,
            })?;
        } else {
            nix::unistd::chown(&dir, Some(uid), Some(gid)).map_err(|e| TmpDirError::Io {
                op: "chown",
                path: dir.clone(),
                source: e.into(),
            })?;
        }
        Ok(dir)
    }

    /// Removes worker `serial`'s directory and everything in it. Missing is fine.
    pub fn wipe(&self, serial: u64) -> Result<(), TmpDirError> {
        let dir = self.path(serial);
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            return Ok(());
        };
        if meta.file_type().is_symlink() {
            // Never ours: only kechid creates entries in the base directory.
            return std::fs::remove_file(&dir).map_err(|source| TmpDirError::Io {
                op: "removing",
                path: dir,
                source,
            });
        }
        if is_mount_point(&dir, meta.dev()) {
            // Lazy: a worker process that still holds a file open cannot block the wipe; the
            // tmpfs is freed when the last reference goes.
            nix::mount::umount2(&dir, MntFlags::MNT_DETACH).map_err(|e| TmpDirError::Io {
                op: "unmounting",
                path: dir.clone(),
                source: e.into(),
            })?;
        }
        // std's remove_dir_all does not follow symlinks (it works with openat/unlinkat), so a
        // planted link to /etc is removed as a link, never walked into.
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(TmpDirError::Io {
                op: "removing",
                path: dir,
                source,
            }),
        }
    }

    /// Serials that have a directory now (to clean up after a crash of kechid).
    pub fn existing(&self) -> Vec<u64> {
        let Ok(rd) = std::fs::read_dir(&self.base) else {
            return vec![];
        };
        rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }
}

/// A directory is a mount point if it sits on another device than its parent.
fn is_mount_point(dir: &Path, dev: u64) -> bool {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    std::fs::metadata(parent)
        .map(|m| m.dev() != dev)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dirs(root: &Path, mount: bool) -> TmpDirs {
        TmpDirs::new(&AppName::new("demo").unwrap(), 1 << 20, mount, root)
    }

    #[test]
    fn create_and_wipe_without_mount() {
        let root = tempfile::tempdir().unwrap();
        let t = dirs(root.path(), false);
        let d = t.create(3, Uid::current(), Gid::current()).unwrap();
        assert_eq!(d, root.path().join("demo/tmp/3"));
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::write(d.join("f"), b"x").unwrap();
        assert_eq!(t.existing(), vec![3]);
        t.wipe(3).unwrap();
        assert!(!d.exists());
        t.wipe(3).unwrap();
    }

    /// A file outside every temp dir, and what a wipe must leave exactly as it was.
    struct Precious {
        path: PathBuf,
        content: Vec<u8>,
        mtime: std::time::SystemTime,
        ino: u64,
    }

    impl Precious {
        /// A root-or-user-owned file with known content and an old mtime (so a touch shows).
        fn new(path: PathBuf, content: &[u8]) -> Precious {
            std::fs::write(&path, content).unwrap();
            let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
            let ino = std::fs::metadata(&path).unwrap().ino();
            Precious {
                path,
                content: content.to_vec(),
                mtime: old,
                ino,
            }
        }

        /// Same inode, content, mtime, and exactly `nlink` names.
        fn assert_intact(&self, nlink: u64) {
            let m = std::fs::symlink_metadata(&self.path)
                .unwrap_or_else(|e| panic!("{}: {e}", self.path.display()));
            assert!(m.file_type().is_file(), "{} replaced", self.path.display());
            assert_eq!(m.ino(), self.ino, "{} replaced", self.path.display());
            assert_eq!(std::fs::read(&self.path).unwrap(), self.content);
            assert_eq!(
                m.modified().unwrap(),
                self.mtime,
                "{} touched",
                self.path.display()
            );
            assert_eq!(m.nlink(), nlink, "{} link count", self.path.display());
        }
    }

    /// Plants in `d` what a hostile worker would: links to `file` and to `outside` (a directory
    /// holding more files), absolute and relative, nested in subdirectories, a link loop, and
    /// links whose names look like the temp dir's own parts. Returns how many of them resolve to
    /// `file` (checked, so the links are known to be real ways out).
    fn plant(d: &Path, file: &Path, outside: &Path) -> usize {
        use std::os::unix::fs::symlink;
        let mut via = vec![d.join("filelink")];
        symlink(file, &via[0]).unwrap();
        symlink(outside, d.join("dirlink")).unwrap();
        let nested = d.join("a/b/c");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(nested.join("own"), b"the worker's").unwrap();
        symlink(outside, nested.join("dirlink")).unwrap();
        symlink(file, nested.join("filelink")).unwrap();
        via.push(nested.join("filelink"));
        // ../../.. out of the temp dir, whatever its depth: as many ".." as components.
        let ups = "../".repeat(d.components().count() + 3);
        let rel = PathBuf::from(format!("{ups}{}", file.display()));
        symlink(&rel, nested.join("rel")).unwrap();
        via.push(nested.join("rel"));
        symlink(d.join("loop"), d.join("loop")).unwrap();
        symlink(".", d.join("a/dot")).unwrap();
        symlink("..", d.join("a/b/dotdot")).unwrap();
        for p in &via {
            assert_eq!(
                std::fs::canonicalize(p).unwrap(),
                std::fs::canonicalize(file).unwrap(),
                "{} does not lead to the target",
                p.display()
            );
        }
        assert!(d.join("dirlink/inside").is_file());
        via.len()
    }

    #[test]
    fn wipe_leaves_every_link_target_intact() {
        // Without a mount (kechid without root) the temp dir shares a filesystem with the rest,
        // so a worker can also hard-link a file it may write: unlinking its name must leave
        // the file with one link less and nothing else changed.
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = Precious::new(outside.path().join("shadow"), b"root:$6$x:19000::::::\n");
        let inside = Precious::new(outside.path().join("inside"), b"in the linked dir");
        let t = dirs(root.path(), false);
        let d = t.create(1, Uid::current(), Gid::current()).unwrap();
        assert!(plant(&d, &secret.path, outside.path()) > 0);
        std::fs::hard_link(&secret.path, d.join("hard")).unwrap();
        std::fs::hard_link(&inside.path, d.join("a/b/hard")).unwrap();
        secret.assert_intact(2);
        t.wipe(1).unwrap();
        assert!(!d.exists());
        secret.assert_intact(1);
        inside.assert_intact(1);
        let mut left: Vec<_> = std::fs::read_dir(outside.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["inside", "shadow"]);
        assert_eq!(t.existing(), Vec::<u64>::new());
    }

    #[test]
    fn wipe_survives_links_swapped_in_during_it() {
        // A process of the worker's user that outlives the worker keeps turning an entry of the
        // temp dir from a directory into a link to a directory outside and back, while kechid
        // wipes. A wipe that checks an entry and then opens it by name would walk outside.
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = Precious::new(outside.path().join("victim"), b"must stay");
        let t = dirs(root.path(), false);
        for round in 0..50 {
            let d = t.create(round, Uid::current(), Gid::current()).unwrap();
            for i in 0..20 {
                std::fs::create_dir_all(d.join(format!("x{i}/y"))).unwrap();
                std::fs::write(d.join(format!("x{i}/y/f")), b"x").unwrap();
            }
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let swapper = {
                let (d, out, stop) = (d.clone(), outside.path().to_owned(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = 0usize;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let e = d.join(format!("x{}", i % 20));
                        let _ = std::fs::remove_dir_all(&e).or_else(|_| std::fs::remove_file(&e));
                        let _ = std::os::unix::fs::symlink(&out, &e);
                        let _ = std::fs::remove_file(&e);
                        let _ = std::fs::create_dir(&e);
                        let _ = std::os::unix::fs::symlink(&out, e.join("y"));
                        i += 1;
                    }
                })
            };
            // The swapper may win a race and add an entry after a directory was emptied: the
            // wipe then fails (and kechid retries later); it must never reach outside.
            let _ = t.wipe(round);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            swapper.join().unwrap();
            t.wipe(round).unwrap();
            assert!(!d.exists(), "round {round}");
            victim.assert_intact(1);
        }
        let left: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn tmpfs_wipe_with_planted_links_as_root() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = Precious::new(outside.path().join("shadow"), b"root:$6$x:19000::::::\n");
        let inside = Precious::new(outside.path().join("inside"), b"in the linked dir");
        let t = dirs(root.path(), true);
        let d = match t.create(1, Uid::current(), Gid::current()) {
            Ok(d) => d,
            Err(TmpDirError::Mount {
                source: nix::Error::EPERM,
                ..
            }) => {
                eprintln!("skipped: mount not permitted here");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        plant(&d, &secret.path, outside.path());
        // A tmpfs of its own: hard links out of it are impossible (EXDEV), so the only hard
        // links a worker can make are between its own files, inside it.
        let e = std::fs::hard_link(&secret.path, d.join("hard")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
        std::fs::hard_link(d.join("a/b/c/own"), d.join("hard")).unwrap();
        assert_eq!(std::fs::metadata(d.join("hard")).unwrap().nlink(), 2);
        // A file still open in the worker does not hold the wipe up.
        let held = std::fs::File::open(d.join("hard")).unwrap();
        t.wipe(1).unwrap();
        assert!(!d.exists());
        secret.assert_intact(1);
        inside.assert_intact(1);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&format!(" {} ", d.display())),
            "still mounted"
        );
        drop(held);
    }

    #[test]
    fn tmpfs_mount_when_root() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let t = dirs(root.path(), true);
        let d = match t.create(1, Uid::from_raw(65534), Gid::from_raw(65534)) {
            Ok(d) => d,
            Err(TmpDirError::Mount {
                source: nix::Error::EPERM,
                ..
            }) => {
                eprintln!("skipped: mount not permitted here");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let st = nix::sys::statfs::statfs(&d).unwrap();
        assert_eq!(st.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
        assert_eq!(std::fs::metadata(&d).unwrap().uid(), 65534);
        std::fs::write(d.join("f"), b"x").unwrap();
        t.wipe(1).unwrap();
        assert!(!d.exists());
    }
}

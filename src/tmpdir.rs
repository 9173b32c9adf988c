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

    #[test]
    fn wipe_does_not_follow_planted_links() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let precious = outside.path().join("precious");
        std::fs::write(&precious, b"keep").unwrap();
        let t = dirs(root.path(), false);
        let d = t.create(1, Uid::current(), Gid::current()).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("dirlink")).unwrap();
        std::os::unix::fs::symlink(&precious, d.join("filelink")).unwrap();
        std::fs::hard_link(&precious, d.join("hard")).unwrap();
        t.wipe(1).unwrap();
        assert!(!d.exists());
        assert_eq!(std::fs::read(&precious).unwrap(), b"keep");
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

//! Memory pressure triggers (PSI, Documentation/accounting/psi.rst): the kernel wakes kechid
//! when tasks stalled on memory for a given time within a window, so pressure is *polled*
//! (an event), never sampled.
//!
//! A trigger is a line like `some 1000000 10000000` (stall and window in microseconds) written
//! to `/proc/pressure/memory` or a cgroup v2 `memory.pressure` file opened read-write; the file
//! then polls with `POLLPRI` each time the trigger fires (at most once per window). The trigger
//! lives as long as the file stays open.
//!
//! Which file shows the box's pressure ([`box_pressure_file`]): a cgroup's `memory.pressure`
//! counts only the stalls of its own tasks. When the memory limit that is reached is kechi.slice's
//! own (`MemoryHigh=`/`MemoryMax=` on it), its tasks reclaim for themselves and stall there. When it
//! is the machine's, most of the reclaim is kswapd's, a kernel thread in no slice, and its stall
//! shows in `/proc/pressure/memory` only: measured in the cgroup v2 VM with swap, kechi.slice's
//! `some avg10` stayed at 0-2% while the machine's reached 10-16%, and a trigger on the slice
//! never fired before the box livelocked (docs/benchmarks/pressure-v2.md, runs 6 and 7).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// An armed trigger.
#[derive(Debug)]
pub struct Trigger {
    file: AsyncFd<File>,
    /// `full` or `some`: the line of the file the trigger watches.
    kind: &'static str,
    /// The stall that makes the trigger fire, in microseconds.
    stall_us: u64,
    /// The line's `total=` (µs of stall since boot) when last looked at.
    last_total: std::cell::Cell<Option<u64>>,
}

/// `total=` of the `kind` line (`some` or `full`) of a pressure file's text.
pub fn total_of(text: &str, kind: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(kind))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Whether a wake-up is a real firing: the stall grew by at least half the threshold since the
/// last look. (A newly armed trigger has been seen to wake once with no stall at all; the
/// kernel fires at most once per window, so a real firing always shows the growth.)
pub fn is_real(before: Option<u64>, now: Option<u64>, stall_us: u64) -> bool {
    match (before, now) {
        (Some(b), Some(n)) => n.saturating_sub(b) >= stall_us / 2,
        _ => true,
    }
}

impl Trigger {
    /// Opens `path` and writes `line` to it. Fails where PSI is off (`psi=0`), the file is
    /// missing, or the trigger is refused (unprivileged windows must be multiples of 2 s).
    pub fn arm(path: &Path, line: &str) -> std::io::Result<Trigger> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc_nonblock())
            .open(path)?;
        // The kernel parses the buffer as a C string: the NUL ends it.
        let mut buf = line.as_bytes().to_vec();
        buf.push(0);
        file.write_all(&buf)?;
        // SAFETY: the AsyncFd owns the file; nothing else closes or replaces its fd.
        let file = unsafe { AsyncFd::register_with_interest(file, Interest::PRIORITY) }?;
        let mut words = line.split_whitespace();
        let kind = if words.next() == Some("full") {
            "full"
        } else {
            "some"
        };
        let stall_us = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        let t = Trigger {
            file,
            kind,
            stall_us,
            last_total: std::cell::Cell::new(None),
        };
        t.last_total.set(total_of(&t.read_now(), kind));
        Ok(t)
    }

    fn read_now(&self) -> String {
        let mut f = self.file.get_ref();
        let mut text = String::new();
        let _ = f.rewind();
        let _ = f.read_to_string(&mut text);
        text
    }

    /// Waits until the trigger fires; returns the pressure line at that moment
    /// (`some avg10=12.00 avg60=...`), or `None` when the file reports an error (its cgroup
    /// went away).
    pub async fn fired(&self) -> Option<String> {
        loop {
            let mut guard = self.file.ready(Interest::PRIORITY).await.ok()?;
            let ready = guard.ready();
            guard.clear_ready();
            if ready.is_error() {
                return None;
            }
            let text = self.read_now();
            let now = total_of(&text, self.kind);
            let before = self.last_total.replace(now.or(self.last_total.get()));
            if is_real(before, now, self.stall_us) {
                let line = text
                    .lines()
                    .find(|l| l.starts_with(self.kind))
                    .unwrap_or("");
                return Some(line.to_owned());
            }
        }
    }
}

/// Whether a cgroup carries a memory limit of its own: its `memory.high` or `memory.max` (the
/// files' contents, `None` where missing) is something other than `max`.
pub fn has_memory_limit(high: Option<&str>, max: Option<&str>) -> bool {
    [high, max]
        .into_iter()
        .flatten()
        .any(|v| !v.trim().is_empty() && v.trim() != "max")
}

/// The pressure file of the box (see the module's docs): kechi.slice's `memory.pressure` under
/// `cgroup_root` when the slice has a memory limit of its own, else `proc_root`'s
/// `pressure/memory` (also on cgroup v1, where the slice has no such file).
pub fn box_pressure_file(cgroup_root: &Path, proc_root: &Path) -> PathBuf {
    let slice = cgroup_root.join("kechi.slice");
    let file = slice.join("memory.pressure");
    let read = |f: &str| std::fs::read_to_string(slice.join(f)).ok();
    if file.exists()
        && has_memory_limit(
            read("memory.high").as_deref(),
            read("memory.max").as_deref(),
        )
    {
        file
    } else {
        proc_root.join("pressure/memory")
    }
}

/// O_NONBLOCK, as the open flag std leaves out.
fn libc_nonblock() -> i32 {
    nix::fcntl::OFlag::O_NONBLOCK.bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_real_firings() {
        let text = "some avg10=1.00 avg60=0.50 avg300=0.10 total=5000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=100\n";
        assert_eq!(total_of(text, "some"), Some(5000));
        assert_eq!(total_of(text, "full"), Some(100));
        assert_eq!(total_of("", "some"), None);
        assert!(is_real(Some(1000), Some(1500), 1000));
        assert!(
            !is_real(Some(1000), Some(1400), 1000),
            "a wake-up without stall"
        );
        assert!(is_real(None, Some(1), 1000), "cannot tell: believed");
    }

    #[test]
    fn a_limit_is_anything_but_max() {
        assert!(!has_memory_limit(None, None));
        assert!(!has_memory_limit(Some("max\n"), Some("max\n")));
        assert!(has_memory_limit(Some("377487360\n"), Some("max\n")));
        assert!(has_memory_limit(Some("max\n"), Some("440401920\n")));
        assert!(has_memory_limit(None, Some("440401920\n")));
        assert!(
            !has_memory_limit(Some(""), None),
            "an empty read is no limit"
        );
    }

    #[test]
    fn the_slice_only_when_it_has_a_limit() {
        let cg = tempfile::tempdir().unwrap();
        let proc = Path::new("/proc-root");
        let machine = proc.join("pressure/memory");
        // cgroup v1, or no kechi.slice yet: the machine's
        assert_eq!(box_pressure_file(cg.path(), proc), machine);
        let slice = cg.path().join("kechi.slice");
        std::fs::create_dir(&slice).unwrap();
        std::fs::write(
            slice.join("memory.pressure"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        std::fs::write(slice.join("memory.high"), "max\n").unwrap();
        std::fs::write(slice.join("memory.max"), "max\n").unwrap();
        // cgroup v2, no limit on the slice: the machine's limit is reached, kswapd's stall is
        // not the slice's
        assert_eq!(box_pressure_file(cg.path(), proc), machine);
        // MemoryHigh= on the slice: its tasks reclaim (and stall) for it
        std::fs::write(slice.join("memory.high"), "377487360\n").unwrap();
        assert_eq!(
            box_pressure_file(cg.path(), proc),
            slice.join("memory.pressure")
        );
        std::fs::write(slice.join("memory.high"), "max\n").unwrap();
        std::fs::write(slice.join("memory.max"), "440401920\n").unwrap();
        assert_eq!(
            box_pressure_file(cg.path(), proc),
            slice.join("memory.pressure")
        );
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_panic() {
        assert!(Trigger::arm(Path::new("/nonexistent/memory.pressure"), "some 1 2").is_err());
    }

    #[tokio::test]
    async fn arms_on_this_machine_when_psi_is_on() {
        // Only where the kernel has PSI and we may write; a 2 s window is taken with or without
        // CAP_SYS_RESOURCE (without it, windows must be whole multiples of 2 s).
        let path = Path::new("/proc/pressure/memory");
        if !path.exists() || !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let t = Trigger::arm(path, "some 150000 2000000");
        assert!(t.is_ok(), "{:?}", t.err());
        // a window the kernel refuses
        assert!(Trigger::arm(path, "some 1 1").is_err());
    }
}

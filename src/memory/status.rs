//! Parser for the memory counters of `/proc/PID/status`: the cheap per-process figures.
//!
//! Why this exists next to `smaps_rollup`: reading `smaps_rollup` walks every page table entry
//! of the process (about 0.1 µs per resident page measured here, so ~25 ms for a 1 GiB worker),
//! while `status` prints counters the kernel keeps anyway, whatever the process's size. Since
//! USS <= PSS <= RSS, a sampler can read `status` on every tick and walk `smaps_rollup` only
//! when RSS comes near a threshold, or at a slower pace for the shared-percentage check (see
//! docs/MEMORY-SAMPLING.md for the measurements).
//!
//! Contract: [`parse_status`] takes the file's text and returns the counters in bytes,
//! `Ok(None)` when the text has no `VmRSS` line (the task has no address space: a zombie or a
//! kernel thread), or a [`MemError::Parse`] for a malformed counter. It never panics. The
//! counters are the kernel's approximate RSS counters (per-CPU batched), fine for gating, not
//! for accounting to the page.

use super::MemError;

/// Memory counters of one process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcCounters {
    /// `VmRSS`: an upper bound of USS and PSS.
    pub rss: u64,
    /// `RssAnon`: private and copy-on-write-shared anonymous pages alike.
    pub rss_anon: u64,
    /// `RssFile`: file-backed pages (binaries, libraries, mapped files).
    pub rss_file: u64,
    /// `RssShmem`: tmpfs and shared anonymous pages.
    pub rss_shmem: u64,
    /// `VmHWM`: the highest RSS so far.
    pub rss_peak: u64,
    /// `VmSwap`.
    pub swap: u64,
}

/// Parses the text of `/proc/PID/status`.
pub fn parse_status(text: &str) -> Result<Option<ProcCounters>, MemError> {
    let mut c = ProcCounters::default();
    let mut has_rss = false;
    for (i, line) in text.lines().enumerate() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "VmRSS" => {
                has_rss = true;
                &mut c.rss
            }
            "RssAnon" => &mut c.rss_anon,
            "RssFile" => &mut c.rss_file,
            "RssShmem" => &mut c.rss_shmem,
            "VmHWM" => &mut c.rss_peak,
            "VmSwap" => &mut c.swap,
            _ => continue,
        };
        let mut w = rest.split_whitespace();
        let (Some(n), Some("kB"), None) = (w.next(), w.next(), w.next()) else {
            return Err(MemError::parse(
                i + 1,
                format!("{key}: expected \"N kB\", got {:?}", rest.trim()),
            ));
        };
        *slot = n
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1024))
            .ok_or_else(|| MemError::parse(i + 1, format!("{key}: bad number of kB {n:?}")))?;
    }
    Ok(has_rss.then_some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> String {
        let p = format!("{}/tests/fixtures/proc/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn python_parent_in_the_v2_vm() {
        let c = parse_status(&fixture("sd252-v2/727/status"))
            .unwrap()
            .unwrap();
        assert_eq!(
            c,
            ProcCounters {
                rss: 32992 * 1024,
                rss_anon: 23280 * 1024,
                rss_file: 5616 * 1024,
                rss_shmem: 4096 * 1024,
                rss_peak: 41124 * 1024,
                swap: 0,
            }
        );
    }

    #[test]
    fn every_capture_agrees_with_its_smaps_rollup() {
        // Captured a moment apart from smaps_rollup, and the counters are batched: allow 1%
        // plus a few pages.
        let dir = format!("{}/tests/fixtures/proc", env!("CARGO_MANIFEST_DIR"));
        let mut n = 0;
        for sys in std::fs::read_dir(&dir).unwrap() {
            let sys = sys.unwrap().path();
            if !sys.is_dir() {
                continue;
            }
            for pid in std::fs::read_dir(&sys).unwrap() {
                let pid = pid.unwrap().path();
                if !pid.join("status").exists() {
                    continue;
                }
                let c = parse_status(&std::fs::read_to_string(pid.join("status")).unwrap())
                    .unwrap()
                    .unwrap();
                let m = super::super::smaps::parse_smaps_rollup(
                    &std::fs::read_to_string(pid.join("smaps_rollup")).unwrap(),
                )
                .unwrap();
                assert_eq!(c.rss, c.rss_anon + c.rss_file + c.rss_shmem);
                let slack = m.rss / 100 + 64 * 1024;
                assert!(
                    c.rss.abs_diff(m.rss) <= slack,
                    "{}: {c:?} {m:?}",
                    pid.display()
                );
                assert!(m.uss <= c.rss + slack);
                n += 1;
            }
        }
        assert!(n >= 10);
    }

    #[test]
    fn no_address_space_and_malformed() {
        // What a zombie's status looks like: no Vm* lines at all.
        let zombie = "Name:\tsh\nState:\tZ (zombie)\nTgid:\t5\nThreads:\t1\n";
        assert_eq!(parse_status(zombie).unwrap(), None);
        assert_eq!(parse_status("").unwrap(), None);
        let e = parse_status("VmRSS:\t12 MB\n").unwrap_err();
        assert!(e.to_string().starts_with("line 1: VmRSS"), "{e}");
        assert!(parse_status("VmRSS:\t18446744073709551615 kB\n").is_err());
    }
}

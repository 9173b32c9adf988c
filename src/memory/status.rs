//! Parsers for the kernel's per-process memory counters, `/proc/PID/statm` and
//! `/proc/PID/status`: the cheap per-process figures.
//!
//! Why this exists next to `smaps_rollup`: reading `smaps_rollup` walks every page table entry
//! of the process (about 0.1 µs per resident page measured here, so ~25 ms for a 1 GiB worker),
//! while `statm` and `status` print counters the kernel keeps anyway, whatever the process's
//! size (`statm` is the cheaper: seven numbers instead of fifty lines). Since
//! USS <= PSS <= RSS, a sampler can read `statm` on every tick and walk `smaps_rollup` only
//! when RSS comes near a threshold, or at a slower pace for the shared-percentage check (see
//! docs/MEMORY-SAMPLING.md for the measurements).
//!
//! Contract: [`parse_statm`] and [`parse_status`] take the file's text and return the counters
//! in bytes, `Ok(None)` for a task without an address space (a zombie or a kernel thread:
//! `statm` then reads all zeros, `status` has no `Vm*` lines), or a [`MemError::Parse`] for a
//! malformed counter. They never panic. The counters are the kernel's approximate RSS counters
//! (per-CPU batched), fine for gating, not for accounting to the page.

use super::MemError;

/// `/proc/PID/statm`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Statm {
    /// Virtual size.
    pub size: u64,
    /// RSS: an upper bound of USS and PSS.
    pub resident: u64,
    /// Resident file-backed and shmem pages (`RssFile + RssShmem`); the rest of `resident` is
    /// anonymous, whether copy-on-write-shared or private.
    pub shared: u64,
    /// Program text.
    pub text: u64,
    /// Data and stack.
    pub data: u64,
}

/// Parses `/proc/PID/statm`, whose figures are in pages of `page_size` bytes.
pub fn parse_statm(text: &str, page_size: u64) -> Result<Option<Statm>, MemError> {
    let mut nums = [0u64; 7];
    let mut words = text.split_whitespace();
    for (i, slot) in nums.iter_mut().enumerate() {
        let w = words
            .next()
            .ok_or_else(|| MemError::parse(1, format!("expected 7 numbers, got {}", i)))?;
        let pages: u64 = w
            .parse()
            .map_err(|_| MemError::parse(1, format!("expected a number of pages, got {w:?}")))?;
        *slot = pages
            .checked_mul(page_size)
            .ok_or_else(|| MemError::parse(1, format!("{pages} pages overflow a byte count")))?;
    }
    if words.next().is_some() {
        return Err(MemError::parse(1, "more than 7 numbers"));
    }
    // Fields 4 (lib) and 6 (dt) have been 0 since Linux 2.6.
    let [size, resident, shared, text, _lib, data, _dt] = nums;
    // Every live process maps something; all zeros is the kernel's answer for a task whose
    // address space is gone.
    Ok((size > 0).then_some(Statm {
        size,
        resident,
        shared,
        text,
        data,
    }))
}

/// Memory counters of one process from `/proc/PID/status`, in bytes.
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
                // (the zombie of host-statm/ has no smaps_rollup to compare with)
                if !pid.join("smaps_rollup").exists() {
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
    fn statm_of_a_python_process_and_a_zombie() {
        // 6190 5455 1691 1 0 4068 0, 4 KiB pages.
        let m = parse_statm(&fixture("host-statm/19611/statm"), 4096)
            .unwrap()
            .unwrap();
        assert_eq!(
            m,
            Statm {
                size: 6190 * 4096,
                resident: 5455 * 4096,
                shared: 1691 * 4096,
                text: 4096,
                data: 4068 * 4096,
            }
        );
        // It agrees with status read a moment later, and bounds USS from smaps_rollup.
        let st = parse_status(&fixture("host-statm/19611/status"))
            .unwrap()
            .unwrap();
        assert_eq!(m.resident, st.rss);
        assert_eq!(m.shared, st.rss_file + st.rss_shmem);
        let sm = super::super::smaps::parse_smaps_rollup(&fixture("host-statm/19611/smaps_rollup"))
            .unwrap();
        assert!(sm.uss <= m.resident);

        assert_eq!(
            parse_statm(&fixture("host-statm/20048/statm"), 4096).unwrap(),
            None
        );
        assert_eq!(
            parse_status(&fixture("host-statm/20048/status")).unwrap(),
            None
        );
    }

    #[test]
    fn malformed_statm() {
        assert!(parse_statm("", 4096).is_err());
        assert!(parse_statm("1 2 3 4 5 6", 4096).is_err());
        assert!(parse_statm("1 2 3 4 5 6 7 8", 4096).is_err());
        assert!(parse_statm("1 2 x 4 5 6 7", 4096).is_err());
        assert!(parse_statm("18446744073709551615 2 3 4 5 6 7", 4096).is_err());
        assert_eq!(parse_statm("1 2 3 4 5 6 7\n", 1).unwrap().unwrap().data, 6);
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

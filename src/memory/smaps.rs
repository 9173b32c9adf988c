//! Parser for `/proc/PID/smaps_rollup`: one process's memory, summed by the kernel over all of
//! its mappings.
//!
//! Contract: [`parse_smaps_rollup`] takes the file's text and returns a [`ProcMem`] in bytes, or
//! a [`MemError::Parse`] naming the line. It never panics. Keys it does not need are ignored and
//! so is the `[rollup]` header line, because the key set grows with kernels (6.1 has no `KSM:`,
//! 6.18 has). `Rss`, `Pss` and the four `Shared_*`/`Private_*` keys are required: without them
//! the figures kechi decides on would be made up. `Swap` and `SwapPss` default to 0.
//!
//! The kernel gives values in kB (KiB); they are converted to bytes here so that every figure
//! of this module has one unit.

use super::MemError;

/// One process's memory, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcMem {
    /// Resident set: every page mapped and present, shared or not.
    pub rss: u64,
    /// Proportional set: each page divided by the number of processes mapping it.
    pub pss: u64,
    /// Unique set: pages mapped by this process only (`Private_Clean + Private_Dirty`). What
    /// recycling the process would give back.
    pub uss: u64,
    /// Pages also mapped by another process (`Shared_Clean + Shared_Dirty`): after a prefork
    /// master forks, this is the copy-on-write part that has not been un-shared yet.
    pub shared: u64,
    pub swap: u64,
    pub swap_pss: u64,
}

impl ProcMem {
    /// The shared part of RSS, in percent (0.0..=100.0), or `None` for an empty RSS, where the
    /// ratio means nothing.
    pub fn shared_percent(&self) -> Option<f64> {
        (self.rss > 0).then(|| (self.shared as f64 / self.rss as f64 * 100.0).min(100.0))
    }
}

impl std::ops::AddAssign for ProcMem {
    fn add_assign(&mut self, o: ProcMem) {
        self.rss = self.rss.saturating_add(o.rss);
        self.pss = self.pss.saturating_add(o.pss);
        self.uss = self.uss.saturating_add(o.uss);
        self.shared = self.shared.saturating_add(o.shared);
        self.swap = self.swap.saturating_add(o.swap);
        self.swap_pss = self.swap_pss.saturating_add(o.swap_pss);
    }
}

impl std::ops::Add for ProcMem {
    type Output = ProcMem;
    fn add(mut self, o: ProcMem) -> ProcMem {
        self += o;
        self
    }
}

impl std::iter::Sum for ProcMem {
    fn sum<I: Iterator<Item = ProcMem>>(iter: I) -> ProcMem {
        iter.fold(ProcMem::default(), |a, b| a + b)
    }
}

/// Parses the text of `/proc/PID/smaps_rollup`.
pub fn parse_smaps_rollup(text: &str) -> Result<ProcMem, MemError> {
    // Indexes into `seen`, in the order of the required keys below.
    const RSS: usize = 0;
    const PSS: usize = 1;
    const SHARED_CLEAN: usize = 2;
    const SHARED_DIRTY: usize = 3;
    const PRIVATE_CLEAN: usize = 4;
    const PRIVATE_DIRTY: usize = 5;
    const REQUIRED: [&str; 6] = [
        "Rss",
        "Pss",
        "Shared_Clean",
        "Shared_Dirty",
        "Private_Clean",
        "Private_Dirty",
    ];
    let mut seen: [Option<u64>; 6] = [None; 6];
    let (mut swap, mut swap_pss) = (0, 0);

    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        // The `[rollup]` header (an address range and a `00:00` device) has spaces before its
        // first colon; keys never do. Lines that are not `Key: value` are skipped, not
        // rejected, so a header format change cannot break sampling.
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        if key.contains(char::is_whitespace) {
            continue;
        }
        let slot = match key {
            "Swap" | "SwapPss" => None,
            k => match REQUIRED.iter().position(|r| *r == k) {
                Some(p) => Some(p),
                None => continue,
            },
        };
        let bytes = parse_kb(rest).map_err(|r| MemError::parse(lineno, format!("{key}: {r}")))?;
        match (slot, key) {
            (Some(p), _) => seen[p] = Some(bytes),
            (None, "Swap") => swap = bytes,
            (None, _) => swap_pss = bytes,
        }
    }

    if let Some(missing) = seen.iter().position(Option::is_none) {
        let reason = if text.trim().is_empty() {
            "empty file".to_owned()
        } else {
            format!("no {} line", REQUIRED[missing])
        };
        // Blame the last line (where the missing key would have had to come by); an empty
        // text has no last line, and line 0 would name none at all.
        return Err(MemError::parse(text.lines().count().max(1), reason));
    }
    let v = |i: usize| seen[i].unwrap_or(0);
    Ok(ProcMem {
        rss: v(RSS),
        pss: v(PSS),
        uss: v(PRIVATE_CLEAN).saturating_add(v(PRIVATE_DIRTY)),
        shared: v(SHARED_CLEAN).saturating_add(v(SHARED_DIRTY)),
        swap,
        swap_pss,
    })
}

/// `"   1772 kB"` -> 1772 * 1024.
fn parse_kb(s: &str) -> Result<u64, String> {
    let mut words = s.split_whitespace();
    let (Some(num), unit, None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("expected \"N kB\", got {:?}", s.trim()));
    };
    if unit != Some("kB") {
        return Err(format!("expected the unit kB, got {:?}", s.trim()));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a number of kB, got {num:?}"))?;
    n.checked_mul(1024)
        .ok_or_else(|| format!("{n} kB overflows a byte count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    fn fixture(path: &str) -> String {
        let p = format!("{}/tests/fixtures/proc/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn hybrid_host_parent_with_shmem() {
        // work.py parent on 6.18: 20 MiB private anon, 4 MiB MAP_SHARED, forked child.
        let m = parse_smaps_rollup(&fixture("sd252-hybrid/127/smaps_rollup")).unwrap();
        assert_eq!(
            m,
            ProcMem {
                rss: 32996 * KIB,
                pss: 18458 * KIB,
                uss: (1428 + 4284) * KIB,
                shared: (4184 + 23100) * KIB,
                swap: 0,
                swap_pss: 0,
            }
        );
        let pct = m.shared_percent().unwrap();
        assert!((pct - 27284.0 / 32996.0 * 100.0).abs() < 1e-9, "{pct}");
    }

    #[test]
    fn v2_vm_child_after_fork() {
        // 6.1 (no KSM line). The child dirtied 6 MiB of its own after fork.
        let m = parse_smaps_rollup(&fixture("sd252-v2/731/smaps_rollup")).unwrap();
        assert!(m.uss >= 6 * 1024 * KIB, "{m:?}");
        assert_eq!(m.rss, m.uss + m.shared);
    }

    #[test]
    fn every_captured_rollup_parses_and_adds_up() {
        let dir = format!("{}/tests/fixtures/proc", env!("CARGO_MANIFEST_DIR"));
        let mut n = 0;
        for sys in std::fs::read_dir(&dir).unwrap() {
            let sys = sys.unwrap().path();
            if !sys.is_dir() {
                continue;
            }
            for pid in std::fs::read_dir(&sys).unwrap() {
                let p = pid.unwrap().path().join("smaps_rollup");
                if !p.exists() {
                    continue;
                }
                let m = parse_smaps_rollup(&std::fs::read_to_string(&p).unwrap()).unwrap();
                // Every resident page is private or shared, and PSS lies between USS and RSS.
                assert_eq!(m.rss, m.uss + m.shared, "{}", p.display());
                assert!(m.uss <= m.pss && m.pss <= m.rss, "{}: {m:?}", p.display());
                n += 1;
            }
        }
        assert!(n >= 10, "only {n} captures found");
    }

    #[test]
    fn swap_and_unknown_keys() {
        let t = "Rss: 10 kB\nPss: 5 kB\nShared_Clean: 4 kB\nShared_Dirty: 2 kB\n\
                 Private_Clean: 1 kB\nPrivate_Dirty: 3 kB\nSwap: 7 kB\nSwapPss: 6 kB\n\
                 FutureKey: 9 kB\n";
        let m = parse_smaps_rollup(t).unwrap();
        assert_eq!((m.uss, m.shared), (4 * KIB, 6 * KIB));
        assert_eq!((m.swap, m.swap_pss), (7 * KIB, 6 * KIB));
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_smaps_rollup("").unwrap_err();
        assert!(e.to_string().contains("empty file"), "{e}");

        let e = parse_smaps_rollup("Rss: 10 kB\nPss: x kB\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2: Pss: expected a number of kB, got \"x\""
        );

        let e = parse_smaps_rollup("Rss: 10 MB\n").unwrap_err();
        assert!(e.to_string().contains("unit kB"), "{e}");

        let e = parse_smaps_rollup("Rss: 10 kB\n").unwrap_err();
        assert!(e.to_string().contains("no Pss line"), "{e}");

        let e = parse_smaps_rollup("Rss: 99999999999999999999 kB\n").unwrap_err();
        assert!(e.to_string().contains("expected a number"), "{e}");
        let e = parse_smaps_rollup("Rss: 18446744073709551 kB\n").unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
    }

    #[test]
    fn empty_text_is_an_error_on_line_1() {
        // Found by fuzz/fuzz_targets/proc.rs: an empty text was reported at line 0.
        for t in ["", "\n", "  \n\n"] {
            match parse_smaps_rollup(t).unwrap_err() {
                MemError::Parse { line, reason, .. } => {
                    assert_eq!(reason, "empty file");
                    assert!(line >= 1, "{t:?}: line {line}");
                }
                other => panic!("{t:?}: {other}"),
            }
        }
        assert_eq!(
            parse_smaps_rollup("").unwrap_err().to_string(),
            "line 1: empty file"
        );
    }

    #[test]
    fn shared_percent_of_nothing() {
        assert_eq!(ProcMem::default().shared_percent(), None);
    }
}

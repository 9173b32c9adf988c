//! Fuzz target: the parsers of per-process files under `/proc` that kechid samples:
//! `smaps_rollup`, `status`, `statm` (`kechi::memory`), `/proc/slabinfo`, `/proc/PID/cgroup`
//! and the cgroup directories computed from it, and `/proc/PID/stat` (`kechi::monitor`).
//! Every parser gets the same text, so one input explores all of them.
//!
//! Contract checked (the memory module's own): no panic; a parse error names a line of the
//! text (1 for an empty one); the cgroup directories computed from any `/proc/PID/cgroup`
//! lie under the cgroup root (a hostile path cannot point kechid's reads elsewhere).
#![no_main]

use std::path::{Component, Path, PathBuf};

use kechi::memory::cgroup::parse_proc_cgroup;
use kechi::memory::slab::parse_slabinfo;
use kechi::memory::smaps::parse_smaps_rollup;
use kechi::memory::status::{parse_statm, parse_status};
use kechi::memory::{CgroupDirs, CgroupLayout, MemError};
use kechi::monitor::parse_stat_session;
use libfuzzer_sys::fuzz_target;

/// A parse error's line must be one of the text's (line 1 for an empty text).
fn check_line<T>(what: &str, text: &str, r: &Result<T, MemError>) {
    if let Err(MemError::Parse { line, .. }) = r {
        let lines = text.lines().count().max(1);
        assert!(
            (1..=lines).contains(line),
            "{what}: error at line {line} of a {lines}-line text {text:?}"
        );
    }
}

/// The directories must lie under `memory_root` and `procs_root` and never climb out.
fn check_dirs(memory_root: &Path, procs_root: &Path, dirs: &Result<CgroupDirs, MemError>) {
    if let Ok(d) = dirs {
        for (p, root) in [(&d.memory, memory_root), (&d.procs, procs_root)] {
            assert!(p.starts_with(root), "{p:?} is not under {root:?}");
            assert!(
                p.components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
                "{p:?} has . or .. components"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_line("smaps_rollup", text, &parse_smaps_rollup(text));
    if let Ok(Some(c)) = parse_status(text).as_ref() {
        let _ = c.rss.max(c.rss_anon);
    }
    check_line("status", text, &parse_status(text));
    for page in [4096, 16384, 65536] {
        check_line("statm", text, &parse_statm(text, page));
    }
    let slabs = parse_slabinfo(text);
    check_line("slabinfo", text, &slabs);
    if let Ok(s) = &slabs {
        let _ = s.dentry_bytes();
        for c in &s.caches {
            let _ = (c.bytes(), c.slab_bytes(4096));
        }
    }
    let _ = parse_stat_session(text);

    let cg = parse_proc_cgroup(text);
    check_line("cgroup", text, &cg);
    if let Ok(cg) = cg {
        let v1 = CgroupLayout::V1 {
            memory: PathBuf::from("/sys/fs/cgroup/memory"),
            systemd: Some(PathBuf::from("/sys/fs/cgroup/systemd")),
        };
        let v2 = CgroupLayout::V2 {
            root: PathBuf::from("/sys/fs/cgroup"),
        };
        let v1_mem = Path::new("/sys/fs/cgroup/memory");
        // The v1 members are listed from the systemd hierarchy or the memory one.
        check_dirs(v1_mem, Path::new("/sys/fs/cgroup"), &v1.dirs_of(&cg));
        let root = Path::new("/sys/fs/cgroup");
        check_dirs(root, root, &v2.dirs_of(&cg));
        for m in &cg.v1 {
            check_dirs(root, root, &v2.dirs(&m.path));
            check_dirs(v1_mem, Path::new("/sys/fs/cgroup"), &v1.dirs(&m.path));
        }
    }
});

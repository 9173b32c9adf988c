//! The rooted readers of `kechi::memory` over the real captures in `tests/fixtures/` (see the
//! READMEs there for how each was made), plus a few reads of this machine's own `/proc`.

use std::path::{Path, PathBuf};

use kechi::memory::{
    CgroupLayout, CgroupRoot, CgroupVersion, Cheap, MemError, ProcMem, ProcRoot, locate_pid,
    probe_layout, read_cgroup_current, read_cgroup_mem, read_cgroup_procs, read_proc_cgroups,
    read_proc_counters, read_proc_mem, read_proc_statm, read_slabinfo, scope_dir, worker_mem,
};

const MIB: u64 = 1 << 20;

fn fixtures(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn roots(kind: &str, name: &str) -> (ProcRoot, CgroupRoot) {
    (
        ProcRoot::new(fixtures(&format!("proc/{name}"))),
        CgroupRoot::new(fixtures(&format!("{kind}/{name}"))),
    )
}

#[test]
fn hybrid_v1_scope_with_two_processes() {
    let (proc, cg) = roots("cgroup-v1", "sd252-hybrid");
    let layout = probe_layout(&cg).unwrap();
    assert_eq!(
        layout,
        CgroupLayout::V1 {
            memory: cg.0.join("memory"),
            systemd: Some(cg.0.join("systemd")),
        }
    );
    let dirs = scope_dir(&layout, "kechi-demo.slice", "kechi-demo-2.scope").unwrap();
    let rel = "kechi.slice/kechi-demo.slice/kechi-demo-2.scope";
    assert_eq!(dirs.version, CgroupVersion::V1);
    assert_eq!(dirs.memory, cg.0.join("memory").join(rel));
    assert_eq!(dirs.procs, cg.0.join("systemd").join(rel));
    // Found from the process side, the same directories.
    assert_eq!(locate_pid(&proc, &layout, 127).unwrap(), dirs);
    assert_eq!(locate_pid(&proc, &layout, 129).unwrap(), dirs);

    let m = read_cgroup_mem(&dirs.memory, dirs.version).unwrap();
    assert_eq!(m.current, 50282496);
    assert_eq!(m.limit, Some(100 * MIB));
    assert_eq!(m.high, None);
    assert_eq!((m.anon, m.file, m.shmem), (30318592, 19582976, 12582912));
    assert_eq!(m.swap, Some(0));
    assert_eq!((m.oom_kills, m.failcnt, m.events), (Some(0), Some(0), None));
    assert!(m.peak.unwrap() >= m.current);

    let w = worker_mem(&proc, &dirs.procs).unwrap();
    assert_eq!(w.gone, 0);
    assert_eq!(
        w.procs.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [127, 129]
    );
    assert_eq!(w.total, w.procs.iter().map(|(_, m)| *m).sum::<ProcMem>());
    // 20 MiB in the parent, 6 more dirtied by the child after fork.
    assert!(w.total.uss > 6 * MIB && w.total.rss > 60 * MIB, "{w:?}");
    // The child un-shared the copy-on-write pages it wrote: it has the larger USS.
    assert_eq!(w.largest_by(|m| m.uss).unwrap().0, 129);
}

#[test]
fn hybrid_v1_oom_kill_is_counted() {
    let (proc, cg) = roots("cgroup-v1", "sd252-hybrid");
    let layout = probe_layout(&cg).unwrap();
    let dirs = scope_dir(&layout, "kechi-demo.slice", "kechi-demo-3.scope").unwrap();
    let m = read_cgroup_mem(&dirs.memory, dirs.version).unwrap();
    assert_eq!(m.oom_kills, Some(1));
    assert_eq!(m.failcnt, Some(109));
    assert_eq!(m.limit, Some(50 * MIB));
    // Only the shell that outlived its killed child is left.
    let w = worker_mem(&proc, &dirs.procs).unwrap();
    assert_eq!(w.procs.len(), 1);
    assert_eq!(w.procs[0].0, 126);
}

/// The cheap figures of a captured scope, as the sampler takes them every tick (`status` holds
/// the same counters as `statm`: resident = VmRSS, shared = RssFile + RssShmem), and the charge
/// read alone.
fn cheap_of(proc: &ProcRoot, dirs: &kechi::memory::CgroupDirs) -> Cheap {
    let mut c = Cheap {
        cgroup: Some(read_cgroup_current(&dirs.memory, dirs.version).unwrap()),
        ..Cheap::default()
    };
    for pid in read_cgroup_procs(&dirs.procs).unwrap() {
        let k = read_proc_counters(proc, pid).unwrap();
        c.processes += 1;
        c.rss += k.rss;
        c.file_shmem += k.rss_file + k.rss_shmem;
    }
    c
}

#[test]
fn the_charge_alone_is_the_first_figure_of_both_versions() {
    for (kind, name, slice, scope) in [
        (
            "cgroup-v1",
            "sd252-hybrid",
            "kechi-demo.slice",
            "kechi-demo-2.scope",
        ),
        (
            "cgroup-v1",
            "sd252-hybrid",
            "kechi-demo.slice",
            "kechi-demo-1.scope",
        ),
        (
            "cgroup-v2",
            "sd252-v2",
            "kechi-demo.slice",
            "kechi-demo-2.scope",
        ),
        (
            "cgroup-v2",
            "sd252-v2-throttled",
            "kechi-demo.slice",
            "kechi-demo-4.scope",
        ),
    ] {
        let (_, cg) = roots(kind, name);
        let layout = probe_layout(&cg).unwrap();
        let d = scope_dir(&layout, slice, scope).unwrap();
        let full = read_cgroup_mem(&d.memory, d.version).unwrap();
        assert_eq!(
            read_cgroup_current(&d.memory, d.version).unwrap(),
            full.current,
            "{name} {scope}"
        );
    }
    let (_, cg) = roots("cgroup-v2", "sd252-v2");
    let layout = probe_layout(&cg).unwrap();
    let gone = scope_dir(&layout, "kechi-demo.slice", "kechi-demo-9.scope").unwrap();
    assert!(matches!(
        read_cgroup_current(&gone.memory, gone.version),
        Err(MemError::CgroupGone { .. })
    ));
}

#[test]
fn cheap_figures_bound_the_full_ones_of_captured_scopes() {
    // parent and copy-on-write child, on cgroup v1 (hybrid) and v2, and three unrelated
    // processes held at memory.high
    for (kind, name, scope) in [
        ("cgroup-v1", "sd252-hybrid", "kechi-demo-2.scope"),
        ("cgroup-v2", "sd252-v2", "kechi-demo-2.scope"),
        ("cgroup-v2", "sd252-v2-throttled", "kechi-demo-4.scope"),
    ] {
        let (proc, cg) = roots(kind, name);
        let layout = probe_layout(&cg).unwrap();
        let d = scope_dir(&layout, "kechi-demo.slice", scope).unwrap();
        let cheap = cheap_of(&proc, &d);
        let full = worker_mem(&proc, &d.procs).unwrap().total;
        assert!(
            cheap.rss_lo() <= full.rss && full.rss <= cheap.rss_hi(),
            "{name}: {cheap:?} {full:?}"
        );
        assert!(full.pss <= cheap.private_hi(), "{name}: {cheap:?} {full:?}");
        assert!(full.uss <= cheap.private_hi(), "{name}: {cheap:?} {full:?}");
        assert!(
            cheap.shared_lo() <= full.shared,
            "{name}: {cheap:?} {full:?}"
        );
    }
    // The copy-on-write pair: the charge makes the private bound tighter than RSS, and proves
    // much of the sharing.
    let (proc, cg) = roots("cgroup-v1", "sd252-hybrid");
    let layout = probe_layout(&cg).unwrap();
    let d = scope_dir(&layout, "kechi-demo.slice", "kechi-demo-2.scope").unwrap();
    let cheap = cheap_of(&proc, &d);
    assert!(cheap.private_hi() < cheap.rss_hi(), "{cheap:?}");
    assert!(cheap.shared_lo() > 0, "{cheap:?}");
}

#[test]
fn hybrid_v1_slice_is_hierarchical() {
    let (_, cg) = roots("cgroup-v1", "sd252-hybrid");
    let layout = probe_layout(&cg).unwrap();
    let slice = layout.dirs("/kechi.slice/kechi-demo.slice").unwrap();
    let m = read_cgroup_mem(&slice.memory, slice.version).unwrap();
    assert_eq!(m.limit, None);
    let scope = scope_dir(&layout, "kechi-demo.slice", "kechi-demo-2.scope").unwrap();
    let s = read_cgroup_mem(&scope.memory, scope.version).unwrap();
    assert!(m.current >= s.current && m.anon >= s.anon, "{m:?}");
    // v1 keeps no memory members in the slice itself; systemd's hierarchy does not either.
    assert!(read_cgroup_procs(&slice.procs).unwrap().is_empty());
}

#[test]
fn plain_v1_cgroup_without_systemd() {
    let (proc, cg) = roots("cgroup-v1", "host-plain");
    let layout = probe_layout(&cg).unwrap();
    assert_eq!(
        layout,
        CgroupLayout::V1 {
            memory: cg.0.join("memory"),
            systemd: None,
        }
    );
    let dirs = locate_pid(&proc, &layout, 10483).unwrap();
    assert_eq!(dirs.memory, cg.0.join("memory/kechi-fixture"));
    assert_eq!(dirs.procs, dirs.memory);
    let m = read_cgroup_mem(&dirs.memory, dirs.version).unwrap();
    assert_eq!(m.limit, Some(64 * MIB));
    // Written to a disk filesystem: page cache, and only the MAP_SHARED 4 MiB are shmem.
    assert_eq!(m.shmem, 4 * MIB);
    assert!(m.file >= 8 * MIB);
    let w = worker_mem(&proc, &dirs.procs).unwrap();
    assert_eq!(w.procs.len(), 2);
}

#[test]
fn v2_scopes() {
    let (proc, cg) = roots("cgroup-v2", "sd252-v2");
    let layout = probe_layout(&cg).unwrap();
    assert_eq!(layout, CgroupLayout::V2 { root: cg.0.clone() });

    let s1 = scope_dir(&layout, "kechi-demo.slice", "kechi-demo-1.scope").unwrap();
    assert_eq!(
        s1.memory,
        cg.0.join("kechi.slice/kechi-demo.slice/kechi-demo-1.scope")
    );
    assert_eq!(s1.procs, s1.memory);
    let m = read_cgroup_mem(&s1.memory, s1.version).unwrap();
    assert_eq!(m.version, CgroupVersion::V2);
    assert_eq!((m.limit, m.high), (Some(50 * MIB), Some(40 * MIB)));
    assert_eq!((m.swap, m.failcnt, m.oom_kills), (Some(0), None, Some(0)));
    let w = worker_mem(&proc, &s1.procs).unwrap();
    assert_eq!(w.procs.len(), 1);
    assert_eq!(w.procs[0].0, 728);

    let s2 = scope_dir(&layout, "kechi-demo.slice", "kechi-demo-2.scope").unwrap();
    assert_eq!(locate_pid(&proc, &layout, 731).unwrap(), s2);
    let m = read_cgroup_mem(&s2.memory, s2.version).unwrap();
    assert_eq!(m.current, 48971776);
    assert_eq!((m.anon, m.file, m.shmem), (30310400, 18292736, 12582912));
    assert!(m.peak.unwrap() >= m.current);
    let w = worker_mem(&proc, &s2.procs).unwrap();
    assert_eq!(w.procs.len(), 2);
    // The cgroup's anon charge covers the two processes' private anonymous pages.
    assert!(m.anon >= 26 * MIB, "{m:?}");

    let s3 = scope_dir(&layout, "kechi-demo.slice", "kechi-demo-3.scope").unwrap();
    let m = read_cgroup_mem(&s3.memory, s3.version).unwrap();
    assert_eq!(m.oom_kills, Some(1));
    let e = m.events.unwrap();
    assert_eq!((e.max, e.oom, e.oom_kill), (36, 1, 1));
    assert_eq!(m.high, None);
}

#[test]
fn v2_scope_throttled_at_memory_high() {
    let (proc, cg) = roots("cgroup-v2", "sd252-v2-throttled");
    let layout = probe_layout(&cg).unwrap();
    let d = scope_dir(&layout, "kechi-demo.slice", "kechi-demo-4.scope").unwrap();
    let m = read_cgroup_mem(&d.memory, d.version).unwrap();
    assert_eq!(m.high, Some(16 * MIB));
    assert_eq!(m.limit, Some(64 * MIB));
    assert_eq!(m.events.unwrap().high, 1916);
    assert_eq!(m.oom_kills, Some(0));
    assert!(
        m.current > 16 * MIB && m.current < 17 * MIB,
        "{}",
        m.current
    );
    let w = worker_mem(&proc, &d.procs).unwrap();
    assert_eq!(
        w.procs.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [1096, 1097, 1098]
    );
    // sh, timeout and the python held at the limit: python is the largest.
    assert_eq!(w.largest_by(|m| m.rss).unwrap().0, 1098);
}

#[test]
fn cheap_counters_bound_the_smaps_figures() {
    let proc = ProcRoot::new(fixtures("proc/sd252-v2-throttled"));
    for pid in [1096, 1097, 1098] {
        let c = read_proc_counters(&proc, pid).unwrap();
        let m = read_proc_mem(&proc, pid).unwrap();
        assert_eq!(c.rss, m.rss, "{pid}");
        assert!(m.uss <= c.rss && m.pss <= c.rss);
    }
    assert!(matches!(
        read_proc_counters(&proc, 4_000_000),
        Err(MemError::ProcessGone { .. })
    ));
}

#[test]
fn statm_through_the_proc_root() {
    // Captured on a machine with 4 KiB pages; page_size() is this machine's.
    if kechi::memory::page_size() != 4096 {
        return;
    }
    let proc = ProcRoot::new(fixtures("proc/host-statm"));
    let s = read_proc_statm(&proc, 19611).unwrap();
    assert_eq!(s.resident, 5455 * 4096);
    assert!(matches!(
        read_proc_statm(&proc, 20048),
        Err(MemError::ProcessGone { pid: 20048, .. })
    ));
}

#[test]
fn rss_of_processes_is_statm_resident_in_bytes() {
    if kechi::memory::page_size() != 4096 {
        return;
    }
    let proc = ProcRoot::new(fixtures("proc/host-statm"));
    // 20048 is a zombie, 1 is not in the fixture: both count 0, not 4096 times anything
    assert_eq!(
        kechi::memory::processes_rss(&proc, &[19611, 20048, 1]),
        5455 * 4096
    );
}

#[test]
fn slabinfo_through_the_proc_root() {
    let s = read_slabinfo(&ProcRoot::new(fixtures("proc/sd252-hybrid"))).unwrap();
    assert_eq!(s.dentry_bytes(), Some(75012 * 192));
}

#[test]
fn gone_scopes_and_processes() {
    let (proc, cg) = roots("cgroup-v2", "sd252-v2");
    let layout = probe_layout(&cg).unwrap();
    let gone = scope_dir(&layout, "kechi-demo.slice", "kechi-demo-9.scope").unwrap();
    let e = read_cgroup_mem(&gone.memory, gone.version).unwrap_err();
    assert!(
        matches!(e, MemError::CgroupGone { ref path } if *path == gone.memory),
        "{e}"
    );
    assert!(e.is_gone());
    assert!(matches!(
        worker_mem(&proc, &gone.procs),
        Err(MemError::CgroupGone { .. })
    ));
    let e = read_proc_mem(&proc, 4_000_000).unwrap_err();
    assert!(
        matches!(e, MemError::ProcessGone { pid: 4_000_000, .. }),
        "{e}"
    );
    assert!(matches!(
        read_proc_cgroups(&proc, 4_000_000),
        Err(MemError::ProcessGone { .. })
    ));
}

#[test]
fn members_that_exit_are_counted_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = tmp.path().join("scope");
    std::fs::create_dir(&cg).unwrap();
    // 127 exists in the capture, 4000000 does not.
    std::fs::write(cg.join("cgroup.procs"), "127\n4000000\n").unwrap();
    let w = worker_mem(&ProcRoot::new(fixtures("proc/sd252-hybrid")), &cg).unwrap();
    assert_eq!((w.procs.len(), w.gone), (1, 1));
}

#[test]
fn errors_carry_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A required file is missing from a directory that exists: an IO error, not "gone".
    std::fs::write(d.join("memory.stat"), "anon 1\n").unwrap();
    let e = read_cgroup_mem(d, CgroupVersion::V2).unwrap_err();
    match &e {
        MemError::Io { path, .. } => assert_eq!(path, &d.join("memory.current")),
        other => panic!("{other}"),
    }
    assert!(e.to_string().starts_with("cannot read "), "{e}");

    std::fs::write(d.join("memory.current"), "lots\n").unwrap();
    let e = read_cgroup_mem(d, CgroupVersion::V2).unwrap_err();
    let want = format!(
        "{}: line 1: expected a number, got \"lots\"",
        d.join("memory.current").display()
    );
    assert_eq!(e.to_string(), want);

    // Optional files may be missing: the root cgroup has no limits, no events.
    std::fs::write(d.join("memory.current"), "4096\n").unwrap();
    let m = read_cgroup_mem(d, CgroupVersion::V2).unwrap();
    assert_eq!(
        (m.current, m.anon, m.limit, m.events),
        (4096, 1, None, None)
    );
    assert_eq!(m.oom_kills, None);
}

#[test]
fn probing_refuses_roots_without_a_memory_controller() {
    let tmp = tempfile::tempdir().unwrap();
    let e = probe_layout(&CgroupRoot::new(tmp.path())).unwrap_err();
    assert!(matches!(e, MemError::NoMemoryCgroup { .. }), "{e}");
    std::fs::write(tmp.path().join("cgroup.controllers"), "cpu io pids\n").unwrap();
    let e = probe_layout(&CgroupRoot::new(tmp.path())).unwrap_err();
    assert!(e.to_string().contains("[cpu io pids], not memory"), "{e}");
}

// ---- this machine, read-only ----

#[test]
fn own_process_on_this_machine() {
    let proc = ProcRoot::default();
    let me = std::process::id();
    let m = read_proc_mem(&proc, me).unwrap();
    assert!(m.rss > 0 && m.uss > 0 && m.pss >= m.uss, "{m:?}");
    let c = read_proc_counters(&proc, me).unwrap();
    assert!(c.rss > 0 && c.rss_peak >= c.rss, "{c:?}");
    let s = read_proc_statm(&proc, me).unwrap();
    assert!(
        s.resident > 0 && s.size >= s.resident && s.resident >= s.shared,
        "{s:?}"
    );
    // The memory cgroup, where the machine has one we can see.
    let Ok(layout) = probe_layout(&CgroupRoot::default()) else {
        return;
    };
    if let Ok(dirs) = locate_pid(&proc, &layout, me) {
        let cg = read_cgroup_mem(&dirs.memory, dirs.version).unwrap();
        assert!(cg.current > 0, "{cg:?}");
        let pids = read_cgroup_procs(&dirs.memory).unwrap();
        assert!(pids.contains(&me), "{pids:?}");
    }
}

#[test]
fn a_zombie_is_gone() {
    // A child that has exited but is not reaped has no address space: reading its
    // smaps_rollup fails with ESRCH, which must read as "gone".
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let stat = format!("/proc/{pid}/stat");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&stat)
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "child never became a zombie"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let e = read_proc_mem(&ProcRoot::default(), pid).unwrap_err();
    assert!(matches!(e, MemError::ProcessGone { .. }), "{e}");
    let e = read_proc_statm(&ProcRoot::default(), pid).unwrap_err();
    assert!(matches!(e, MemError::ProcessGone { .. }), "{e}");
    // Its status is still readable, but has no memory lines.
    let e = read_proc_counters(&ProcRoot::default(), pid).unwrap_err();
    assert!(matches!(e, MemError::ProcessGone { .. }), "{e}");
    child.wait().unwrap();
}

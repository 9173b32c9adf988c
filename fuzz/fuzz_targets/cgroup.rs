//! Fuzz target: the parsers of cgroup files kechid reads for a worker's scope and the app's
//! slice (`kechi::memory::cgroup`): `memory.stat`, `memory.events`, `memory.oom_control`,
//! `cgroup.procs`, the single-number files and limits of both versions, and the unit names
//! that become cgroup paths. Every parser gets the same text.
//!
//! Contract checked: no panic; a parse error names a line of the text (1 for an empty one);
//! a `memory.stat` keeps every key with its last value; a limit is a number or "none"
//! consistently across v1 and v2; `cgroup.procs` gives one pid per non-blank line; a cgroup
//! path made from a unit name is absolute and never leaves the hierarchy.
#![no_main]

use kechi::memory::MemError;
use kechi::memory::cgroup::{
    parse_cgroup_procs, parse_memory_events, parse_memory_stat, parse_oom_control, parse_u64,
    parse_v1_limit, parse_v2_limit, slice_path, unit_cgroup_path,
};
use libfuzzer_sys::fuzz_target;

fn check_line<T>(what: &str, text: &str, r: &Result<T, MemError>) {
    if let Err(MemError::Parse { line, .. }) = r {
        let lines = text.lines().count().max(1);
        assert!(
            (1..=lines).contains(line),
            "{what}: error at line {line} of a {lines}-line text {text:?}"
        );
    }
}

fn check_path(what: &str, p: &Result<String, MemError>) {
    if let Ok(p) = p {
        assert!(
            p.is_empty() || p.starts_with('/'),
            "{what}: {p:?} is not absolute"
        );
        assert!(
            p.split('/').all(|c| c != ".." && c != "."),
            "{what}: {p:?} leaves the hierarchy"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let stat = parse_memory_stat(text);
    check_line("memory.stat", text, &stat);
    if let Ok(s) = &stat {
        let _ = (s.anon(), s.file(), s.shmem(), s.file_mapped(), s.v1_swap());
        assert!(s.entries.len() <= text.lines().count());
    }
    check_line("memory.events", text, &parse_memory_events(text));
    check_line("memory.oom_control", text, &parse_oom_control(text));

    let procs = parse_cgroup_procs(text);
    check_line("cgroup.procs", text, &procs);
    if let Ok(p) = &procs {
        assert_eq!(
            p.len(),
            text.lines().filter(|l| !l.trim().is_empty()).count()
        );
    }

    let n = parse_u64(text);
    check_line("u64", text, &n);
    let v1 = parse_v1_limit(text);
    check_line("v1 limit", text, &v1);
    let v2 = parse_v2_limit(text);
    check_line("v2 limit", text, &v2);
    if let Ok(n) = n {
        assert_eq!(v2.ok(), Some(Some(n)), "v2 limit of {text:?}");
        assert_eq!(
            v1.ok(),
            Some((n < 1 << 62).then_some(n)),
            "v1 limit of {text:?}"
        );
    }

    // Unit names: the text as a slice, and as a unit inside a fixed slice.
    let line = text.lines().next().unwrap_or_default();
    check_path("slice", &slice_path(line));
    check_path("unit", &unit_cgroup_path("kechi-demo.slice", line));
    if let Some((slice, unit)) = line.split_once(' ') {
        check_path("slice/unit", &unit_cgroup_path(slice, unit));
    }
});

//! Property tests for the pure parsers of `kechi::memory`: none panics on any input, and text
//! written in the kernel's format parses back to the figures it was made from.

use std::collections::BTreeMap;

use kechi::memory::cgroup::{
    parse_cgroup_procs, parse_memory_events, parse_memory_stat, parse_oom_control,
    parse_proc_cgroup, parse_u64, parse_v1_limit, parse_v2_limit, slice_path, unit_cgroup_path,
};
use kechi::memory::slab::parse_slabinfo;
use kechi::memory::smaps::parse_smaps_rollup;
use kechi::memory::status::{parse_statm, parse_status};
use proptest::prelude::*;

/// Text that looks like the files: known keys, numbers, separators, in any order.
fn filelike() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("Rss:".to_owned()),
        Just("Pss:".to_owned()),
        Just("Shared_Clean:".to_owned()),
        Just("Private_Dirty:".to_owned()),
        Just("Swap:".to_owned()),
        Just("VmRSS:".to_owned()),
        Just("RssAnon:\t".to_owned()),
        Just("kB".to_owned()),
        Just("max".to_owned()),
        Just("anon".to_owned()),
        Just("oom_kill".to_owned()),
        Just("total_rss".to_owned()),
        Just("0::".to_owned()),
        Just("4:memory:".to_owned()),
        Just("/..".to_owned()),
        Just("slabinfo - version: 2.1".to_owned()),
        Just(": slabdata".to_owned()),
        Just("dentry".to_owned()),
        Just(":".to_owned()),
        Just(" ".to_owned()),
        Just("\n".to_owned()),
        Just("-".to_owned()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[ -~]{0,8}",
    ];
    prop::collection::vec(token, 0..40).prop_map(|v| v.concat())
}

fn all_parsers(s: &str) {
    let _ = parse_smaps_rollup(s);
    let _ = parse_status(s);
    let _ = parse_statm(s, 4096);
    let _ = parse_statm(s, 0);
    let _ = parse_statm(s, u64::MAX);
    let _ = parse_slabinfo(s);
    let _ = parse_proc_cgroup(s);
    let _ = parse_cgroup_procs(s);
    let _ = parse_memory_stat(s);
    let _ = parse_memory_events(s);
    let _ = parse_oom_control(s);
    let _ = parse_u64(s);
    let _ = parse_v1_limit(s);
    let _ = parse_v2_limit(s);
    let _ = slice_path(s);
    let _ = unit_cgroup_path(s, s);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panic_on_any_string(s in any::<String>()) {
        all_parsers(&s);
    }

    #[test]
    fn never_panic_on_file_like_text(s in filelike()) {
        all_parsers(&s);
    }

    #[test]
    fn never_panic_on_mangled_captures(
        which in 0usize..8,
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let file = [
            "proc/sd252-hybrid/127/smaps_rollup",
            "proc/sd252-v2/731/status",
            "proc/host-statm/19611/statm",
            "proc/sd252-v2/slabinfo",
            "proc/sd252-hybrid/127/cgroup",
            "cgroup-v2/sd252-v2/kechi.slice/kechi-demo.slice/kechi-demo-2.scope/memory.stat",
            "cgroup-v2/sd252-v2/kechi.slice/kechi-demo.slice/kechi-demo-3.scope/memory.events",
            "cgroup-v1/sd252-hybrid/memory/kechi.slice/kechi-demo.slice/kechi-demo-3.scope/memory.oom_control",
        ][which];
        let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
        let mut bytes = std::fs::read(path).unwrap();
        bytes.truncate(cut.index(bytes.len() + 1));
        if !bytes.is_empty() {
            let i = flip.index(bytes.len());
            bytes[i] = byte;
        }
        all_parsers(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn smaps_rollup_round_trip(
        kb in prop::collection::vec(0u64..(1 << 40), 8),
        extra in prop::collection::vec(("[A-Z][a-z_]{1,12}", 0u64..1_000_000), 0..6),
    ) {
        let keys = ["Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean",
                    "Private_Dirty", "Swap", "SwapPss"];
        let mut text = String::from("00400000-7ffc28d62000 ---p 00000000 00:00 0    [rollup]\n");
        for (k, v) in keys.iter().zip(&kb) {
            text.push_str(&format!("{:<16}{v:>8} kB\n", format!("{k}:")));
        }
        for (k, v) in &extra {
            if !keys.contains(&k.as_str()) {
                text.push_str(&format!("{k}: {v} kB\n"));
            }
        }
        let m = parse_smaps_rollup(&text).unwrap();
        prop_assert_eq!(m.rss, kb[0] * 1024);
        prop_assert_eq!(m.pss, kb[1] * 1024);
        prop_assert_eq!(m.shared, (kb[2] + kb[3]) * 1024);
        prop_assert_eq!(m.uss, (kb[4] + kb[5]) * 1024);
        prop_assert_eq!(m.swap, kb[6] * 1024);
        prop_assert_eq!(m.swap_pss, kb[7] * 1024);
    }

    #[test]
    fn memory_stat_round_trip(map in prop::collection::btree_map("[a-z_]{1,20}", any::<u64>(), 0..40)) {
        let text: String = map.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        let s = parse_memory_stat(&text).unwrap();
        prop_assert_eq!(&s.entries, &map);
    }

    #[test]
    fn limits_round_trip(n in any::<u64>()) {
        prop_assert_eq!(parse_v2_limit(&format!("{n}\n")).unwrap(), Some(n));
        let v1 = parse_v1_limit(&format!("{n}\n")).unwrap();
        prop_assert_eq!(v1.is_none(), n >= 1 << 62);
    }

    #[test]
    fn cgroup_procs_round_trip(pids in prop::collection::vec(any::<u32>(), 0..50)) {
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        prop_assert_eq!(parse_cgroup_procs(&text).unwrap(), pids);
    }

    #[test]
    fn proc_cgroup_round_trip(
        v1 in prop::collection::btree_map(1u32..20, ("[a-z_=]{1,10}", "(/[a-z0-9.:@-]{1,12}){0,4}"), 0..10),
        unified in prop::option::of("(/[a-z0-9.:@-]{1,12}){0,4}"),
    ) {
        let mut text = String::new();
        let mut want = BTreeMap::new();
        for (id, (ctrl, path)) in &v1 {
            let path = if path.is_empty() { "/".to_owned() } else { path.clone() };
            text.push_str(&format!("{id}:{ctrl}:{path}\n"));
            want.insert(*id, (ctrl.clone(), path));
        }
        if let Some(u) = &unified {
            let u = if u.is_empty() { "/" } else { u.as_str() };
            text.push_str(&format!("0::{u}\n"));
        }
        let cg = parse_proc_cgroup(&text).unwrap();
        prop_assert_eq!(cg.v1.len(), want.len());
        for m in &cg.v1 {
            let (ctrl, path) = &want[&m.hierarchy];
            prop_assert_eq!(&m.controllers.join(","), ctrl);
            prop_assert_eq!(&m.path, path);
        }
        prop_assert_eq!(cg.unified.is_some(), unified.is_some());
    }
}

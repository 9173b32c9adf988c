//! `cpu.idle` of a worker's scope on cgroup v1, which kechid writes itself.
//!
//! A cgroup marked idle (Linux 5.15 and later, both cgroup versions) runs only on CPU time its
//! siblings leave, and a sibling that wakes up takes the CPU from it at once. A low `CPUWeight=`
//! does not do the second: the low-weight cgroup keeps the CPU for the rest of its time slice,
//! and a serving worker woken behind it waited 2-5 ms (bench/slowload, traced with
//! `sched_switch`). kechid marks idle the scope of a replacement while it loads and the scope of
//! a worker while it exits, whenever other workers of the app serve.
//!
//! On cgroup v2 systemd writes `cpu.idle` itself, from `CPUWeight=idle` (its D-Bus value 0). On
//! cgroup v1 systemd turns `CPUWeight=idle` into the lowest `cpu.shares` and never touches
//! `cpu.idle`, so kechid writes it, in the scope's directory of the v1 cpu hierarchy. That
//! directory exists once systemd has applied a CPU setting to the scope, which kechid asks for
//! first. This module only finds and writes the file; when to write it is the driver's.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::memory::{CgroupLayout, unit_cgroup_path};

/// The directories the v1 cpu controller is mounted at, under the cgroup root, in the order
/// tried: most systems mount it together with cpuacct and link `cpu` to that.
const V1_CPU_DIRS: [&str; 2] = ["cpu", "cpu,cpuacct"];

/// Where `cpu.idle` of `scope` in `slice` may be: the candidates on cgroup v1, none on v2 (where
/// systemd writes it).
pub fn v1_files(layout: &CgroupLayout, slice: &str, scope: &str) -> Vec<PathBuf> {
    let CgroupLayout::V1 { memory, .. } = layout else {
        return vec![];
    };
    let Some(root) = memory.parent() else {
        return vec![];
    };
    let Ok(path) = unit_cgroup_path(slice, scope) else {
        return vec![];
    };
    let rel = path.trim_start_matches('/');
    V1_CPU_DIRS
        .iter()
        .map(|d| root.join(d).join(rel).join("cpu.idle"))
        .collect()
}

/// Whether `scope` in `slice` is marked idle in the kernel now (either cgroup version; `false`
/// when it has no `cpu.idle`): how a kechid that adopts workers finds one an earlier kechid left
/// idle (stopped while a replacement loaded or a worker exited).
pub fn is_idle(layout: &CgroupLayout, slice: &str, scope: &str) -> bool {
    let files = match layout {
        CgroupLayout::V1 { .. } => v1_files(layout, slice, scope),
        CgroupLayout::V2 { root } => unit_cgroup_path(slice, scope)
            .map(|p| vec![root.join(p.trim_start_matches('/')).join("cpu.idle")])
            .unwrap_or_default(),
    };
    files
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|t| t.trim() == "1"))
}

/// What writing `cpu.idle` did.
#[derive(Debug)]
pub enum Outcome {
    /// Written to this file.
    Written(PathBuf),
    /// Nothing to write: cgroup v2, where systemd writes it.
    NotMine,
    /// No `cpu.idle` in any candidate directory: a kernel older than 5.15, or no cpu cgroup for
    /// the scope (it is gone).
    Missing,
}

/// Marks `scope` idle (`idle`) or not, on cgroup v1.
pub fn set(layout: &CgroupLayout, slice: &str, scope: &str, idle: bool) -> io::Result<Outcome> {
    let files = v1_files(layout, slice, scope);
    if files.is_empty() {
        return Ok(Outcome::NotMine);
    }
    for f in files {
        // never created: a file missing in cgroupfs means the kernel has no such knob
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .and_then(|mut file| file.write_all(if idle { b"1" } else { b"0" }));
        match written {
            Ok(()) => return Ok(Outcome::Written(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", f.display()))),
        }
    }
    Ok(Outcome::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn v1(root: &Path) -> CgroupLayout {
        CgroupLayout::V1 {
            memory: root.join("memory"),
            systemd: Some(root.join("systemd")),
        }
    }

    #[test]
    fn v1_candidates_are_the_scope_in_the_cpu_hierarchy_and_v2_has_none() {
        let f = v1_files(
            &v1(Path::new("/sys/fs/cgroup")),
            "kechi-demo.slice",
            "kechi-demo-3.scope",
        );
        assert_eq!(
            f,
            [
                PathBuf::from(
                    "/sys/fs/cgroup/cpu/kechi.slice/kechi-demo.slice/kechi-demo-3.scope/cpu.idle"
                ),
                PathBuf::from(
                    "/sys/fs/cgroup/cpu,cpuacct/kechi.slice/kechi-demo.slice/kechi-demo-3.scope/cpu.idle"
                ),
            ]
        );
        let v2 = CgroupLayout::V2 {
            root: PathBuf::from("/sys/fs/cgroup"),
        };
        assert!(v1_files(&v2, "kechi-demo.slice", "kechi-demo-3.scope").is_empty());
        assert!(matches!(
            set(&v2, "kechi-demo.slice", "kechi-demo-3.scope", true),
            Ok(Outcome::NotMine)
        ));
    }

    #[test]
    fn writes_the_first_candidate_that_exists_and_says_when_none_does() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let scope = root.join("cpu,cpuacct/kechi.slice/kechi-demo.slice/kechi-demo-3.scope");
        std::fs::create_dir_all(&scope).unwrap();
        std::fs::write(scope.join("cpu.idle"), "0").unwrap();
        let layout = v1(root);
        match set(&layout, "kechi-demo.slice", "kechi-demo-3.scope", true).unwrap() {
            Outcome::Written(f) => assert_eq!(f, scope.join("cpu.idle")),
            o => panic!("{o:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(scope.join("cpu.idle")).unwrap(),
            "1"
        );
        set(&layout, "kechi-demo.slice", "kechi-demo-3.scope", false).unwrap();
        assert_eq!(
            std::fs::read_to_string(scope.join("cpu.idle")).unwrap(),
            "0"
        );
        assert!(matches!(
            set(&layout, "kechi-demo.slice", "kechi-demo-4.scope", true).unwrap(),
            Outcome::Missing
        ));
    }

    #[test]
    fn is_idle_reads_either_version_and_a_missing_file_is_not_idle() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let rel = "kechi.slice/kechi-demo.slice/kechi-demo-3.scope";
        std::fs::create_dir_all(root.join("cpu").join(rel)).unwrap();
        std::fs::write(root.join("cpu").join(rel).join("cpu.idle"), "1\n").unwrap();
        assert!(is_idle(&v1(root), "kechi-demo.slice", "kechi-demo-3.scope"));
        assert!(!is_idle(
            &v1(root),
            "kechi-demo.slice",
            "kechi-demo-4.scope"
        ));
        let v2 = CgroupLayout::V2 {
            root: root.to_path_buf(),
        };
        std::fs::create_dir_all(root.join(rel)).unwrap();
        std::fs::write(root.join(rel).join("cpu.idle"), "0\n").unwrap();
        assert!(!is_idle(&v2, "kechi-demo.slice", "kechi-demo-3.scope"));
        std::fs::write(root.join(rel).join("cpu.idle"), "1\n").unwrap();
        assert!(is_idle(&v2, "kechi-demo.slice", "kechi-demo-3.scope"));
    }
}

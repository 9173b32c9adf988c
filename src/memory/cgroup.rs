//! Pure parsers for cgroup memory accounting, v1 and v2, and the path arithmetic that finds a
//! cgroup's directories. No function here touches the filesystem.
//!
//! Contract:
//! - Each `parse_*` function takes one file's text and returns its value or a
//!   [`MemError::Parse`] naming the line; none panics on any input.
//! - [`CgroupLayout`] says where the memory controller is mounted (probed by the readers);
//!   given it, [`CgroupLayout::dirs_of`] (from `/proc/PID/cgroup`) and [`CgroupLayout::dirs`]
//!   (from a cgroup path such as systemd's `ControlGroup` property) compute the memory
//!   directory and the directory whose `cgroup.procs` lists the members.
//! - [`CgroupMem`] is the one shape both versions are read into.
//!
//! Version facts these parsers rely on (checked on the captures in `tests/fixtures/`):
//! - v2 limits say `max` for none; v1 limits say a huge number (`9223372036854771712` with
//!   4 KiB pages: i64::MAX rounded down to a page) for none.
//! - v2 `memory.stat` counts `shmem` inside `file`; v1 counts it inside `cache`. Neither
//!   counts it in `anon`/`rss`.
//! - On a hybrid host (systemd's default before v2) `/proc/PID/cgroup` has a `0::` line for a
//!   unified tree that carries no memory controller, so the v1 `memory` line wins when the v1
//!   memory hierarchy is mounted.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::MemError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

// ---------------------------------------------------------------------------------------------
// /proc/PID/cgroup

/// One `ID:CONTROLLERS:PATH` line of a v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Membership {
    pub hierarchy: u32,
    /// `["memory"]`, `["cpu", "cpuacct"]`, `["name=systemd"]`.
    pub controllers: Vec<String>,
    pub path: String,
}

/// The parsed `/proc/PID/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroups {
    /// The path of the `0::PATH` line (cgroup v2), if any.
    pub unified: Option<String>,
    pub v1: Vec<V1Membership>,
}

impl ProcCgroups {
    /// The path in the v1 hierarchy that has `controller` (`"memory"`, `"name=systemd"`).
    pub fn v1_path(&self, controller: &str) -> Option<&str> {
        self.v1
            .iter()
            .find(|m| m.controllers.iter().any(|c| c == controller))
            .map(|m| m.path.as_str())
    }
}

/// Parses `/proc/PID/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> Result<ProcCgroups, MemError> {
    let mut out = ProcCgroups::default();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.is_empty() {
            continue;
        }
        // The path is last and may itself contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(MemError::parse(lineno, "expected ID:CONTROLLERS:PATH"));
        };
        let hierarchy: u32 = id
            .parse()
            .map_err(|_| MemError::parse(lineno, format!("hierarchy id {id:?} is not a number")))?;
        if !path.starts_with('/') {
            return Err(MemError::parse(
                lineno,
                format!("cgroup path {path:?} is not absolute"),
            ));
        }
        if hierarchy == 0 && ctrls.is_empty() {
            out.unified = Some(path.to_owned());
        } else {
            out.v1.push(V1Membership {
                hierarchy,
                controllers: ctrls.split(',').map(str::to_owned).collect(),
                path: path.to_owned(),
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Where the directories are

/// Where the memory controller lives under a cgroup root, as probed by
/// [`probe_layout`](super::probe_layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Memory on cgroup v1 (legacy or hybrid). `systemd` is the `name=systemd` hierarchy if it
    /// is mounted: systemd creates every unit's cgroup there, even where it creates none in the
    /// memory hierarchy (no accounting asked for), so its `cgroup.procs` is the reliable list.
    V1 {
        memory: PathBuf,
        systemd: Option<PathBuf>,
    },
    /// Pure cgroup v2 with the memory controller enabled at `root`.
    V2 { root: PathBuf },
}

/// A cgroup's directories, resolved under a root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CgroupDirs {
    pub version: CgroupVersion,
    /// Holds the `memory.*` files.
    pub memory: PathBuf,
    /// Holds the `cgroup.procs` to list members from.
    pub procs: PathBuf,
}

impl CgroupLayout {
    pub fn version(&self) -> CgroupVersion {
        match self {
            CgroupLayout::V1 { .. } => CgroupVersion::V1,
            CgroupLayout::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// The directories of the cgroup at `path` (absolute within the hierarchy, as in
    /// `/proc/PID/cgroup` or systemd's `ControlGroup` property).
    pub fn dirs(&self, path: &str) -> Result<CgroupDirs, MemError> {
        let rel = relative(path)?;
        Ok(match self {
            CgroupLayout::V1 { memory, systemd } => CgroupDirs {
                version: CgroupVersion::V1,
                memory: memory.join(&rel),
                procs: systemd.as_ref().unwrap_or(memory).join(&rel),
            },
            CgroupLayout::V2 { root } => CgroupDirs {
                version: CgroupVersion::V2,
                memory: root.join(&rel),
                procs: root.join(&rel),
            },
        })
    }

    /// The directories of the memory cgroup a process belongs to.
    pub fn dirs_of(&self, cg: &ProcCgroups) -> Result<CgroupDirs, MemError> {
        match self {
            CgroupLayout::V1 { memory, systemd } => {
                let mem = cg
                    .v1_path("memory")
                    .ok_or_else(|| MemError::NoMemoryCgroup {
                        reason: "the v1 memory hierarchy is mounted but the process has no memory \
                             line in /proc/PID/cgroup"
                            .to_owned(),
                    })?;
                let mem_dir = memory.join(relative(mem)?);
                // The systemd hierarchy path is the same as the memory path for units systemd
                // made; if they differ (a cgroup made by hand), the memory directory's own
                // cgroup.procs is the one that lists the members being accounted.
                let procs = match (systemd, cg.v1_path("name=systemd")) {
                    (Some(sd), Some(p)) if p == mem => sd.join(relative(p)?),
                    _ => mem_dir.clone(),
                };
                Ok(CgroupDirs {
                    version: CgroupVersion::V1,
                    memory: mem_dir,
                    procs,
                })
            }
            CgroupLayout::V2 { .. } => {
                let p = cg
                    .unified
                    .as_deref()
                    .ok_or_else(|| MemError::NoMemoryCgroup {
                        reason: "no 0:: line in /proc/PID/cgroup on a cgroup v2 host".to_owned(),
                    })?;
                self.dirs(p)
            }
        }
    }
}

/// `/a/b` -> `a/b`, refusing paths that leave the hierarchy. A `/..` path is what a process
/// outside our cgroup namespace shows; no directory under our root is its cgroup.
fn relative(path: &str) -> Result<PathBuf, MemError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(MemError::NoMemoryCgroup {
            reason: format!("cgroup path {path:?} is not absolute"),
        });
    };
    let mut out = PathBuf::new();
    for c in rest.split('/').filter(|c| !c.is_empty()) {
        if c == ".." || c == "." {
            return Err(MemError::NoMemoryCgroup {
                reason: format!("cgroup path {path:?} lies outside this cgroup namespace"),
            });
        }
        out.push(c);
    }
    Ok(out)
}

/// The cgroup path systemd gives a unit of the system manager placed in `slice`, e.g.
/// `("kechi-demo.slice", "kechi-demo-1.scope")` -> `/kechi.slice/kechi-demo.slice/kechi-demo-1.scope`.
///
/// Slices nest by the dashes of their names (`a-b-c.slice` is inside `a-b.slice` inside
/// `a.slice`), and `-.slice` is the root. Names that systemd would escape in the path (a leading
/// `_` or `.`) are refused rather than guessed at. Units of a user manager live deeper
/// (`/user.slice/user-UID.slice/user@UID.service/...`): use systemd's `ControlGroup` property
/// and [`CgroupLayout::dirs`] for those.
pub fn unit_cgroup_path(slice: &str, unit: &str) -> Result<String, MemError> {
    check_unit_name(unit)?;
    let mut path = slice_path(slice)?;
    path.push('/');
    path.push_str(unit);
    Ok(path)
}

/// `kechi-demo.slice` -> `/kechi.slice/kechi-demo.slice`; `-.slice` -> `` (the root).
pub fn slice_path(slice: &str) -> Result<String, MemError> {
    let bad = |reason| MemError::BadUnitName {
        name: slice.to_owned(),
        reason,
    };
    check_unit_name(slice)?;
    let prefix = slice
        .strip_suffix(".slice")
        .ok_or_else(|| bad("a slice name ends in .slice"))?;
    if prefix == "-" {
        return Ok(String::new());
    }
    if prefix.is_empty()
        || prefix.starts_with('-')
        || prefix.ends_with('-')
        || prefix.contains("--")
    {
        return Err(bad(
            "a slice name has no leading, trailing or doubled dashes",
        ));
    }
    let mut path = String::new();
    for (i, _) in prefix.match_indices('-') {
        path.push('/');
        path.push_str(&prefix[..i]);
        path.push_str(".slice");
    }
    path.push('/');
    path.push_str(slice);
    Ok(path)
}

fn check_unit_name(name: &str) -> Result<(), MemError> {
    let bad = |reason| MemError::BadUnitName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 255 {
        return Err(bad("a unit name has 1 to 255 characters"));
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b":-_.\\@".contains(&c))
    {
        return Err(bad(
            "a unit name has only ASCII letters, digits and :-_.\\@",
        ));
    }
    if name.starts_with(['_', '.']) {
        return Err(bad(
            "systemd escapes names starting with _ or . in cgroup paths",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Single-value files

fn single_line(text: &str) -> Result<&str, MemError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first = lines
        .next()
        .ok_or_else(|| MemError::parse(1, "empty file"))?;
    if lines.next().is_some() {
        return Err(MemError::parse(2, "expected a single value"));
    }
    Ok(first.trim())
}

fn number(s: &str, lineno: usize) -> Result<u64, MemError> {
    s.parse()
        .map_err(|_| MemError::parse(lineno, format!("expected a number, got {s:?}")))
}

/// A file holding one number: v2 `memory.current`, `memory.swap.current`, `memory.peak`;
/// v1 `memory.usage_in_bytes`, `memory.max_usage_in_bytes`, `memory.failcnt`.
pub fn parse_u64(text: &str) -> Result<u64, MemError> {
    number(single_line(text)?, 1)
}

/// v2 `memory.max`, `memory.high`, `memory.swap.max`: a number, or `max` for no limit (`None`).
pub fn parse_v2_limit(text: &str) -> Result<Option<u64>, MemError> {
    match single_line(text)? {
        "max" => Ok(None),
        s => number(s, 1).map(Some),
    }
}

/// From this value up, a v1 limit means "none". The kernel writes `PAGE_COUNTER_MAX` pages
/// back as bytes, i.e. i64::MAX rounded down to the page size, so the exact figure depends on
/// the page size (4 KiB, 16 KiB, 64 KiB); no real limit comes anywhere near 2^62 bytes.
const V1_UNLIMITED_FROM: u64 = 1 << 62;

/// v1 `memory.limit_in_bytes` (and `memory.soft_limit_in_bytes`, `memory.memsw.limit_in_bytes`):
/// `None` for the huge "unlimited" value.
pub fn parse_v1_limit(text: &str) -> Result<Option<u64>, MemError> {
    let n = parse_u64(text)?;
    Ok((n < V1_UNLIMITED_FROM).then_some(n))
}

/// `cgroup.procs`: one pid per line, possibly none.
pub fn parse_cgroup_procs(text: &str) -> Result<Vec<u32>, MemError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            l.trim()
                .parse()
                .map_err(|_| MemError::parse(i + 1, format!("expected a pid, got {l:?}")))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Keyed files

/// `key value` lines.
fn keyed(text: &str) -> impl Iterator<Item = Result<(&str, u64), MemError>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some(k), Some(v), None) => Ok((k, number(v, i + 1)?)),
                _ => Err(MemError::parse(
                    i + 1,
                    format!("expected \"KEY VALUE\", got {l:?}"),
                )),
            }
        })
}

/// `memory.stat` of either version, as its key/value map, with accessors that know both key
/// sets. All values are bytes except the event counters (`pgfault`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryStat {
    pub entries: BTreeMap<String, u64>,
}

impl MemoryStat {
    pub fn get(&self, key: &str) -> Option<u64> {
        self.entries.get(key).copied()
    }

    /// v1 keeps this cgroup's own figure in `KEY` and the hierarchical one in `total_KEY`; the
    /// hierarchical one is what a slice is charged, and for a leaf scope they are equal.
    fn v1(&self, key: &str) -> Option<u64> {
        self.get(&format!("total_{key}")).or_else(|| self.get(key))
    }

    /// Anonymous memory: v2 `anon`, v1 `total_rss`/`rss` (neither includes shmem).
    pub fn anon(&self) -> Option<u64> {
        self.get("anon").or_else(|| self.v1("rss"))
    }

    /// Page cache, shmem included: v2 `file`, v1 `total_cache`/`cache`.
    pub fn file(&self) -> Option<u64> {
        self.get("file").or_else(|| self.v1("cache"))
    }

    /// tmpfs and shared anonymous memory: `shmem` (v1: `total_shmem` first).
    pub fn shmem(&self) -> Option<u64> {
        self.v1("shmem")
    }

    /// Page cache mapped into processes: v2 `file_mapped`, v1 `total_mapped_file`/`mapped_file`.
    pub fn file_mapped(&self) -> Option<u64> {
        self.get("file_mapped").or_else(|| self.v1("mapped_file"))
    }

    /// Swapped-out anonymous memory as v1 reports it (`total_swap`/`swap`; only with swap
    /// accounting). v2 reports swap in `memory.swap.current` instead.
    pub fn v1_swap(&self) -> Option<u64> {
        self.v1("swap")
    }
}

/// Parses `memory.stat` (v1 or v2).
pub fn parse_memory_stat(text: &str) -> Result<MemoryStat, MemError> {
    let mut entries = BTreeMap::new();
    for kv in keyed(text) {
        let (k, v) = kv?;
        entries.insert(k.to_owned(), v);
    }
    Ok(MemoryStat { entries })
}

/// v2 `memory.events` (hierarchical) or `memory.events.local`. Keys a kernel does not have yet
/// (`oom_group_kill` came in 5.17) read as 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryEvents {
    /// Reclaimed below `memory.low` protection.
    pub low: u64,
    /// Throttled for exceeding `memory.high`.
    pub high: u64,
    /// Hit `memory.max` (reclaim was attempted).
    pub max: u64,
    /// Reclaim at `memory.max` failed: the OOM killer was invoked.
    pub oom: u64,
    /// Processes killed by the OOM killer in this cgroup.
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

pub fn parse_memory_events(text: &str) -> Result<MemoryEvents, MemError> {
    let mut e = MemoryEvents::default();
    for kv in keyed(text) {
        let (k, v) = kv?;
        match k {
            "low" => e.low = v,
            "high" => e.high = v,
            "max" => e.max = v,
            "oom" => e.oom = v,
            "oom_kill" => e.oom_kill = v,
            "oom_group_kill" => e.oom_group_kill = v,
            _ => {}
        }
    }
    Ok(e)
}

/// v1 `memory.oom_control`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OomControl {
    pub oom_kill_disable: bool,
    pub under_oom: bool,
    /// OOM kills in this cgroup; `None` on kernels before 4.13, which have no `oom_kill` line.
    pub oom_kill: Option<u64>,
}

pub fn parse_oom_control(text: &str) -> Result<OomControl, MemError> {
    let mut o = OomControl::default();
    for kv in keyed(text) {
        let (k, v) = kv?;
        match k {
            "oom_kill_disable" => o.oom_kill_disable = v != 0,
            "under_oom" => o.under_oom = v != 0,
            "oom_kill" => o.oom_kill = Some(v),
            _ => {}
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// The common shape

/// A cgroup's memory, read from either version. Bytes unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CgroupMem {
    pub version: CgroupVersion,
    /// Charged to the cgroup now: v2 `memory.current`; v1 `memory.usage_in_bytes`, which on v1
    /// also counts kernel memory (a `sleep` scope: 180224 against 114688 of rss + cache).
    pub current: u64,
    /// Hard limit (`MemoryMax=`): v2 `memory.max`, v1 `memory.limit_in_bytes`; `None` = none.
    pub limit: Option<u64>,
    /// Throttling limit (`MemoryHigh=`): v2 `memory.high`; always `None` on v1, which has none.
    pub high: Option<u64>,
    /// Highest `current` seen: v2 `memory.peak` (kernel 5.19+), v1 `memory.max_usage_in_bytes`.
    pub peak: Option<u64>,
    pub anon: u64,
    /// Page cache including shmem.
    pub file: u64,
    pub shmem: u64,
    /// v2 `memory.swap.current`, v1 `memory.stat` swap; `None` without swap accounting.
    pub swap: Option<u64>,
    /// OOM kills inside the cgroup: v2 `memory.events` `oom_kill`, v1 `memory.oom_control`
    /// `oom_kill`; `None` where the kernel does not count them.
    pub oom_kills: Option<u64>,
    /// v2 only.
    pub events: Option<MemoryEvents>,
    /// v1 only: how often the limit was hit (`memory.failcnt`).
    pub failcnt: Option<u64>,
    pub stat: MemoryStat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(path: &str) -> String {
        let p = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    const V1_SCOPES: &str = "cgroup-v1/sd252-hybrid/memory/kechi.slice/kechi-demo.slice";
    const V2_SCOPES: &str = "cgroup-v2/sd252-v2/kechi.slice/kechi-demo.slice";

    #[test]
    fn proc_cgroup_hybrid() {
        let cg = parse_proc_cgroup(&fixture("proc/sd252-hybrid/127/cgroup")).unwrap();
        let scope = "/kechi.slice/kechi-demo.slice/kechi-demo-2.scope";
        assert_eq!(cg.unified.as_deref(), Some(scope));
        assert_eq!(cg.v1_path("memory"), Some(scope));
        assert_eq!(cg.v1_path("name=systemd"), Some(scope));
        assert_eq!(cg.v1_path("cpuacct"), Some("/.."));
        assert_eq!(cg.v1_path("devices"), Some("/kechi.slice"));
        assert_eq!(cg.v1.len(), 9);
        assert_eq!(cg.v1_path("hugetlb"), None);
    }

    #[test]
    fn proc_cgroup_v2_and_plain_v1() {
        let cg = parse_proc_cgroup(&fixture("proc/sd252-v2/727/cgroup")).unwrap();
        assert_eq!(
            cg.unified.as_deref(),
            Some("/kechi.slice/kechi-demo.slice/kechi-demo-2.scope")
        );
        assert!(cg.v1.is_empty());

        let cg = parse_proc_cgroup(&fixture("proc/host-plain/10483/cgroup")).unwrap();
        assert_eq!(cg.v1_path("memory"), Some("/kechi-fixture"));
        assert_eq!(cg.v1_path("name=systemd"), Some("/"));
        assert_eq!(cg.unified.as_deref(), Some("/"));
    }

    #[test]
    fn proc_cgroup_edge_cases() {
        // Paths may contain colons; v1 controller lists are comma separated.
        let cg = parse_proc_cgroup("3:cpu,cpuacct:/a:b\n0::/x:y\n").unwrap();
        assert_eq!(cg.v1[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(cg.v1_path("cpuacct"), Some("/a:b"));
        assert_eq!(cg.unified.as_deref(), Some("/x:y"));
        assert!(parse_proc_cgroup("x::/\n").is_err());
        assert!(parse_proc_cgroup("0:/\n").is_err());
        let e = parse_proc_cgroup("0::/\n0::relative\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2:"), "{e}");
    }

    #[test]
    fn layout_resolves_hybrid_through_the_memory_line() {
        let cg = parse_proc_cgroup(&fixture("proc/sd252-hybrid/127/cgroup")).unwrap();
        let layout = CgroupLayout::V1 {
            memory: "/r/memory".into(),
            systemd: Some("/r/systemd".into()),
        };
        let d = layout.dirs_of(&cg).unwrap();
        let scope = "kechi.slice/kechi-demo.slice/kechi-demo-2.scope";
        assert_eq!(d.version, CgroupVersion::V1);
        assert_eq!(d.memory, Path::new("/r/memory").join(scope));
        assert_eq!(d.procs, Path::new("/r/systemd").join(scope));

        // The same process on a pure v2 host would be found through its 0:: line.
        let d = CgroupLayout::V2 { root: "/r".into() }.dirs_of(&cg).unwrap();
        assert_eq!(d.memory, Path::new("/r").join(scope));
    }

    #[test]
    fn layout_plain_v1_uses_the_memory_cgroup_procs() {
        let cg = parse_proc_cgroup(&fixture("proc/host-plain/10483/cgroup")).unwrap();
        let layout = CgroupLayout::V1 {
            memory: "/r/memory".into(),
            systemd: Some("/r/systemd".into()),
        };
        let d = layout.dirs_of(&cg).unwrap();
        assert_eq!(d.memory, Path::new("/r/memory/kechi-fixture"));
        assert_eq!(d.procs, d.memory);
    }

    #[test]
    fn layout_refuses_paths_outside_the_namespace() {
        let cg = parse_proc_cgroup("4:memory:/..\n0::/..\n").unwrap();
        let v1 = CgroupLayout::V1 {
            memory: "/r/memory".into(),
            systemd: None,
        };
        let e = v1.dirs_of(&cg).unwrap_err();
        assert!(
            e.to_string().contains("outside this cgroup namespace"),
            "{e}"
        );
        assert!(CgroupLayout::V2 { root: "/r".into() }.dirs_of(&cg).is_err());
        let none = parse_proc_cgroup("1:cpu:/\n").unwrap();
        assert!(matches!(
            v1.dirs_of(&none),
            Err(MemError::NoMemoryCgroup { .. })
        ));
        assert!(
            CgroupLayout::V2 { root: "/r".into() }
                .dirs_of(&none)
                .is_err()
        );
    }

    #[test]
    fn unit_paths() {
        assert_eq!(
            unit_cgroup_path("kechi-demo.slice", "kechi-demo-1.scope").unwrap(),
            "/kechi.slice/kechi-demo.slice/kechi-demo-1.scope"
        );
        assert_eq!(
            slice_path("a-b-c.slice").unwrap(),
            "/a.slice/a-b.slice/a-b-c.slice"
        );
        assert_eq!(slice_path("system.slice").unwrap(), "/system.slice");
        assert_eq!(unit_cgroup_path("-.slice", "x.scope").unwrap(), "/x.scope");
        for bad in [
            "kechi",
            "-a.slice",
            "a-.slice",
            "a--b.slice",
            ".slice",
            "a/b.slice",
        ] {
            assert!(slice_path(bad).is_err(), "{bad}");
        }
        assert!(unit_cgroup_path("kechi.slice", "_x.scope").is_err());
        assert!(unit_cgroup_path("kechi.slice", "").is_err());
        assert!(unit_cgroup_path("kechi.slice", "a b.scope").is_err());
    }

    #[test]
    fn v2_single_values() {
        let d = |f: &str| fixture(&format!("{V2_SCOPES}/{f}"));
        assert_eq!(
            parse_u64(&d("kechi-demo-2.scope/memory.current")).unwrap(),
            48971776
        );
        assert_eq!(
            parse_v2_limit(&d("kechi-demo-1.scope/memory.max")).unwrap(),
            Some(50 << 20)
        );
        assert_eq!(
            parse_v2_limit(&d("kechi-demo-1.scope/memory.high")).unwrap(),
            Some(40 << 20)
        );
        assert_eq!(
            parse_v2_limit(&d("kechi-demo-3.scope/memory.high")).unwrap(),
            None
        );
        assert_eq!(parse_v2_limit(&d("memory.max")).unwrap(), None);
        assert_eq!(
            parse_u64(&d("kechi-demo-2.scope/memory.swap.current")).unwrap(),
            0
        );
        assert_eq!(
            parse_v2_limit(&d("kechi-demo-2.scope/memory.swap.max")).unwrap(),
            None
        );
        let peak = parse_u64(&d("kechi-demo-2.scope/memory.peak")).unwrap();
        assert!(peak >= 48971776, "{peak}");
    }

    #[test]
    fn v2_stat() {
        let s = parse_memory_stat(&fixture(&format!(
            "{V2_SCOPES}/kechi-demo-2.scope/memory.stat"
        )))
        .unwrap();
        assert_eq!(s.anon(), Some(30310400));
        assert_eq!(s.file(), Some(18292736));
        assert_eq!(s.shmem(), Some(12582912));
        assert_eq!(s.file_mapped(), Some(7659520));
        assert_eq!(s.get("pgmajfault"), Some(37));
        assert_eq!(s.v1_swap(), None);
        // shmem is inside file, as the module doc says.
        assert!(s.shmem() <= s.file());
    }

    #[test]
    fn v2_events_after_oom_kill_and_throttling() {
        let e = parse_memory_events(&fixture(&format!(
            "{V2_SCOPES}/kechi-demo-3.scope/memory.events"
        )))
        .unwrap();
        assert_eq!(
            e,
            MemoryEvents {
                low: 0,
                high: 0,
                max: 36,
                oom: 1,
                oom_kill: 1,
                oom_group_kill: 0
            }
        );
        // The slice's hierarchical file sees its child's kill; the local one does not.
        let slice = parse_memory_events(&fixture(&format!("{V2_SCOPES}/memory.events"))).unwrap();
        assert_eq!(slice.oom_kill, 1);
        let local =
            parse_memory_events(&fixture(&format!("{V2_SCOPES}/memory.events.local"))).unwrap();
        assert_eq!(local, MemoryEvents::default());

        let t = parse_memory_events(&fixture(
            "cgroup-v2/sd252-v2-throttled/kechi.slice/kechi-demo.slice/kechi-demo-4.scope/memory.events",
        ))
        .unwrap();
        assert_eq!((t.high, t.oom_kill), (1916, 0));
        // An older kernel without oom_group_kill.
        let old = parse_memory_events("low 0\nhigh 2\nmax 3\noom 4\noom_kill 5\n").unwrap();
        assert_eq!((old.oom_kill, old.oom_group_kill), (5, 0));
    }

    #[test]
    fn v1_files() {
        let d = |f: &str| fixture(&format!("{V1_SCOPES}/{f}"));
        assert_eq!(
            parse_u64(&d("kechi-demo-1.scope/memory.usage_in_bytes")).unwrap(),
            180224
        );
        assert_eq!(
            parse_v1_limit(&d("kechi-demo-1.scope/memory.limit_in_bytes")).unwrap(),
            Some(50 << 20)
        );
        // 9223372036854771712: "no limit" as v1 writes it.
        assert_eq!(
            parse_v1_limit(&d("kechi-demo-1.scope/memory.soft_limit_in_bytes")).unwrap(),
            None
        );
        assert_eq!(parse_v1_limit(&d("memory.limit_in_bytes")).unwrap(), None);
        assert_eq!(
            parse_u64(&d("kechi-demo-3.scope/memory.failcnt")).unwrap(),
            109
        );
        assert_eq!(
            parse_u64(&d("kechi-demo-1.scope/memory.failcnt")).unwrap(),
            0
        );

        let o = parse_oom_control(&d("kechi-demo-3.scope/memory.oom_control")).unwrap();
        assert_eq!(
            o,
            OomControl {
                oom_kill_disable: false,
                under_oom: false,
                oom_kill: Some(1)
            }
        );
        let old = parse_oom_control("oom_kill_disable 0\nunder_oom 1\n").unwrap();
        assert_eq!((old.under_oom, old.oom_kill), (true, None));
    }

    #[test]
    fn v1_stat() {
        let s = parse_memory_stat(&fixture(&format!(
            "{V1_SCOPES}/kechi-demo-2.scope/memory.stat"
        )))
        .unwrap();
        assert_eq!(s.anon(), Some(30318592));
        assert_eq!(s.file(), Some(19582976));
        assert_eq!(s.shmem(), Some(12582912));
        assert_eq!(s.file_mapped(), Some(7614464));
        assert_eq!(s.v1_swap(), Some(0));
        assert_eq!(s.get("hierarchical_memory_limit"), Some(100 << 20));

        // The slice has no processes of its own: only total_* carries its children's memory.
        let slice = parse_memory_stat(&fixture(&format!("{V1_SCOPES}/memory.stat"))).unwrap();
        assert_eq!(slice.get("rss"), Some(0));
        assert!(slice.anon().unwrap() >= s.anon().unwrap());
    }

    #[test]
    fn cgroup_procs() {
        assert_eq!(
            parse_cgroup_procs(&fixture(&format!(
                "{V2_SCOPES}/kechi-demo-2.scope/cgroup.procs"
            )))
            .unwrap(),
            [727, 731]
        );
        assert_eq!(parse_cgroup_procs("").unwrap(), Vec::<u32>::new());
        // The memory directory of a v1 slice has no member of its own.
        assert!(
            parse_cgroup_procs(&fixture(&format!("{V1_SCOPES}/cgroup.procs")))
                .unwrap()
                .is_empty()
        );
        let e = parse_cgroup_procs("1\n-2\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2:"), "{e}");
    }

    #[test]
    fn malformed_single_values() {
        assert!(parse_u64("").is_err());
        assert!(parse_u64("1\n2\n").is_err());
        assert!(parse_u64("-1\n").is_err());
        assert!(parse_v2_limit("unlimited\n").is_err());
        assert_eq!(parse_u64("  42 \n\n").unwrap(), 42);
        assert!(parse_memory_stat("anon\n").is_err());
        assert!(parse_memory_stat("anon 1 2\n").is_err());
        assert!(parse_memory_events("oom_kill x\n").is_err());
    }
}

//! Readers: the only code of the memory module that touches the filesystem.
//!
//! Contract: every reader takes its root ([`ProcRoot`], [`CgroupRoot`]) or a directory computed
//! from one, so the same code runs against `/proc` and `/sys/fs/cgroup` in production and against
//! the captures under `tests/fixtures/` in tests. Readers read whole files, hand the text to the
//! pure parsers and attach the path to any parse error. Disappearances are classified:
//! `ENOENT`/`ESRCH` under `/proc/PID` is [`MemError::ProcessGone`]; a missing cgroup directory or
//! `ENODEV` from a removed one is [`MemError::CgroupGone`]. Nothing here caches or retries.

use std::io;
use std::path::{Path, PathBuf};

use super::MemError;
use super::cgroup::{
    CgroupDirs, CgroupLayout, CgroupMem, CgroupVersion, ProcCgroups, parse_cgroup_procs,
    parse_memory_events, parse_memory_stat, parse_oom_control, parse_proc_cgroup, parse_u64,
    parse_v1_limit, parse_v2_limit, unit_cgroup_path,
};
use super::error::Op;
use super::slab::{SlabInfo, parse_slabinfo};
use super::smaps::{ProcMem, parse_smaps_rollup};
use super::status::{ProcCounters, Statm, parse_statm, parse_status};

/// Where procfs is mounted (`/proc` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRoot(pub PathBuf);

impl Default for ProcRoot {
    fn default() -> Self {
        ProcRoot(PathBuf::from("/proc"))
    }
}

impl ProcRoot {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ProcRoot(path.into())
    }

    /// `ROOT/PID/NAME`.
    pub fn pid_file(&self, pid: u32, name: &str) -> PathBuf {
        self.0.join(pid.to_string()).join(name)
    }
}

/// Where the cgroup filesystems are mounted (`/sys/fs/cgroup` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot(pub PathBuf);

impl Default for CgroupRoot {
    fn default() -> Self {
        CgroupRoot(PathBuf::from("/sys/fs/cgroup"))
    }
}

impl CgroupRoot {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CgroupRoot(path.into())
    }
}

// ---------------------------------------------------------------------------------------------
// Raw reads with classified errors

fn io_err(op: Op, path: &Path, source: io::Error) -> MemError {
    MemError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Reads a file under `/proc/PID`.
fn read_proc_file(path: &Path, pid: u32) -> Result<String, MemError> {
    std::fs::read_to_string(path).map_err(|e| {
        // ENOENT: the pid directory is gone. ESRCH: the task exited (or is a zombie without an
        // address space) between open and read.
        if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) {
            MemError::ProcessGone {
                pid,
                path: path.to_owned(),
            }
        } else {
            io_err(Op::Read, path, e)
        }
    })
}

/// Reads `dir/name` of a cgroup; `Ok(None)` if the directory exists but the file does not
/// (a controller file this kernel or configuration lacks).
fn read_cgroup_file_opt(dir: &Path, name: &str) -> Result<Option<String>, MemError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Err(MemError::CgroupGone {
            path: dir.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::metadata(dir) {
            Ok(_) => Ok(None),
            Err(d) if d.kind() == io::ErrorKind::NotFound => Err(MemError::CgroupGone {
                path: dir.to_owned(),
            }),
            Err(d) => Err(io_err(Op::Stat, dir, d)),
        },
        Err(e) => Err(io_err(Op::Read, &path, e)),
    }
}

fn read_cgroup_file(dir: &Path, name: &str) -> Result<String, MemError> {
    read_cgroup_file_opt(dir, name)?.ok_or_else(|| {
        let path = dir.join(name);
        io_err(
            Op::Read,
            &path,
            io::Error::new(
                io::ErrorKind::NotFound,
                "no such file in the cgroup directory",
            ),
        )
    })
}

/// Parses `dir/name` with `parse`, attaching the path to parse errors.
fn parsed<T>(
    dir: &Path,
    name: &str,
    parse: impl Fn(&str) -> Result<T, MemError>,
) -> Result<T, MemError> {
    let text = read_cgroup_file(dir, name)?;
    parse(&text).map_err(|e| e.at(&dir.join(name)))
}

fn parsed_opt<T>(
    dir: &Path,
    name: &str,
    parse: impl Fn(&str) -> Result<T, MemError>,
) -> Result<Option<T>, MemError> {
    match read_cgroup_file_opt(dir, name)? {
        Some(text) => parse(&text).map(Some).map_err(|e| e.at(&dir.join(name))),
        None => Ok(None),
    }
}

fn is_dir(path: &Path) -> Result<bool, MemError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.is_dir()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(Op::Stat, path, e)),
    }
}

// ---------------------------------------------------------------------------------------------
// /proc

/// One process's memory from `/proc/PID/smaps_rollup`.
pub fn read_proc_mem(proc: &ProcRoot, pid: u32) -> Result<ProcMem, MemError> {
    let path = proc.pid_file(pid, "smaps_rollup");
    let text = read_proc_file(&path, pid)?;
    parse_smaps_rollup(&text).map_err(|e| e.at(&path))
}

/// One process's cheapest figures, `/proc/PID/statm` (about 9 µs a process here, against 22 µs
/// for `status` and 70 µs and up for `smaps_rollup`; see docs/MEMORY-SAMPLING.md). A task
/// without an address space (a zombie) is [`MemError::ProcessGone`].
pub fn read_proc_statm(proc: &ProcRoot, pid: u32) -> Result<Statm, MemError> {
    let path = proc.pid_file(pid, "statm");
    let text = read_proc_file(&path, pid)?;
    parse_statm(&text, page_size())
        .map_err(|e| e.at(&path))?
        .ok_or(MemError::ProcessGone { pid, path })
}

/// The resident bytes of some processes together, from `/proc/PID/statm` (already in bytes: no
/// page size to apply). Processes that are gone count 0.
pub fn processes_rss(proc: &ProcRoot, pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| read_proc_statm(proc, *pid).ok())
        .map(|s| s.resident)
        .sum()
}

/// The size of the pages `/proc/PID/statm` counts in.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // sysconf cannot fail for _SC_PAGESIZE on Linux; 4 KiB is the fallback of last resort.
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// One process's counters from `/proc/PID/status` (constant cost, unlike
/// [`read_proc_mem`], whose cost grows with the process's resident pages). A task without an
/// address space (a zombie) is [`MemError::ProcessGone`].
pub fn read_proc_counters(proc: &ProcRoot, pid: u32) -> Result<ProcCounters, MemError> {
    let path = proc.pid_file(pid, "status");
    let text = read_proc_file(&path, pid)?;
    parse_status(&text)
        .map_err(|e| e.at(&path))?
        .ok_or(MemError::ProcessGone { pid, path })
}

/// A process's cgroup memberships from `/proc/PID/cgroup`.
pub fn read_proc_cgroups(proc: &ProcRoot, pid: u32) -> Result<ProcCgroups, MemError> {
    let path = proc.pid_file(pid, "cgroup");
    let text = read_proc_file(&path, pid)?;
    parse_proc_cgroup(&text).map_err(|e| e.at(&path))
}

/// `/proc/slabinfo` (root only: the file is mode 0400).
pub fn read_slabinfo(proc: &ProcRoot) -> Result<SlabInfo, MemError> {
    let path = proc.0.join("slabinfo");
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(Op::Read, &path, e))?;
    parse_slabinfo(&text).map_err(|e| e.at(&path))
}

// ---------------------------------------------------------------------------------------------
// cgroups

/// Finds the memory controller under `root`: a v1 `memory` hierarchy if one is mounted there
/// (legacy and hybrid hosts), else a cgroup2 root whose `cgroup.controllers` lists `memory`.
///
/// On a hybrid host the cgroup2 tree sits at `ROOT/unified` and never has the memory
/// controller, so it is not considered.
pub fn probe_layout(root: &CgroupRoot) -> Result<CgroupLayout, MemError> {
    let memory = root.0.join("memory");
    if is_dir(&memory)? {
        let systemd = root.0.join("systemd");
        let systemd = is_dir(&systemd)?.then_some(systemd);
        return Ok(CgroupLayout::V1 { memory, systemd });
    }
    let controllers = root.0.join("cgroup.controllers");
    match std::fs::read_to_string(&controllers) {
        Ok(list) if list.split_whitespace().any(|c| c == "memory") => Ok(CgroupLayout::V2 {
            root: root.0.clone(),
        }),
        Ok(list) => Err(MemError::NoMemoryCgroup {
            reason: format!(
                "the cgroup2 root {} offers the controllers [{}], not memory",
                root.0.display(),
                list.trim()
            ),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(MemError::NoMemoryCgroup {
            reason: format!(
                "neither a v1 memory hierarchy nor a cgroup2 root at {}",
                root.0.display()
            ),
        }),
        Err(e) => Err(io_err(Op::Read, &controllers, e)),
    }
}

/// The directories of the memory cgroup process `pid` is in.
pub fn locate_pid(
    proc: &ProcRoot,
    layout: &CgroupLayout,
    pid: u32,
) -> Result<CgroupDirs, MemError> {
    layout.dirs_of(&read_proc_cgroups(proc, pid)?)
}

/// The directories of a system manager's unit `scope` placed in `slice`, e.g.
/// `scope_dir(&layout, "kechi-demo.slice", "kechi-demo-1.scope")` is
/// `ROOT/kechi.slice/kechi-demo.slice/kechi-demo-1.scope` on v2 and
/// `ROOT/memory/kechi.slice/...` (memory) + `ROOT/systemd/kechi.slice/...` (members) on v1.
/// Computed, not checked: reading a scope that is gone gives [`MemError::CgroupGone`].
pub fn scope_dir(layout: &CgroupLayout, slice: &str, scope: &str) -> Result<CgroupDirs, MemError> {
    layout.dirs(&unit_cgroup_path(slice, scope)?)
}

/// The pids in `dir/cgroup.procs`.
pub fn read_cgroup_procs(dir: &Path) -> Result<Vec<u32>, MemError> {
    parsed(dir, "cgroup.procs", parse_cgroup_procs)
}

/// A cgroup's charge alone: v2 `memory.current`, v1 `memory.usage_in_bytes` (one read of a
/// few µs, against the six files of [`read_cgroup_mem`]): what the sampler reads every tick.
pub fn read_cgroup_current(dir: &Path, version: CgroupVersion) -> Result<u64, MemError> {
    let name = match version {
        CgroupVersion::V2 => "memory.current",
        CgroupVersion::V1 => "memory.usage_in_bytes",
    };
    parsed(dir, name, parse_u64)
}

/// A cgroup's memory, from the files of its memory directory.
///
/// Required: v2 `memory.current` and `memory.stat`, v1 `memory.usage_in_bytes` and
/// `memory.stat`. The rest are read if present (the root cgroup has no limits, kernels without
/// swap accounting have no swap files, `memory.peak` came in 5.19).
pub fn read_cgroup_mem(dir: &Path, version: CgroupVersion) -> Result<CgroupMem, MemError> {
    match version {
        CgroupVersion::V2 => {
            let current = parsed(dir, "memory.current", parse_u64)?;
            let stat = parsed(dir, "memory.stat", parse_memory_stat)?;
            let events = parsed_opt(dir, "memory.events", parse_memory_events)?;
            Ok(CgroupMem {
                version,
                current,
                limit: parsed_opt(dir, "memory.max", parse_v2_limit)?.flatten(),
                high: parsed_opt(dir, "memory.high", parse_v2_limit)?.flatten(),
                peak: parsed_opt(dir, "memory.peak", parse_u64)?,
                anon: stat.anon().unwrap_or(0),
                file: stat.file().unwrap_or(0),
                shmem: stat.shmem().unwrap_or(0),
                swap: parsed_opt(dir, "memory.swap.current", parse_u64)?,
                oom_kills: events.map(|e| e.oom_kill),
                events,
                failcnt: None,
                stat,
            })
        }
        CgroupVersion::V1 => {
            let current = parsed(dir, "memory.usage_in_bytes", parse_u64)?;
            let stat = parsed(dir, "memory.stat", parse_memory_stat)?;
            let oom = parsed_opt(dir, "memory.oom_control", parse_oom_control)?;
            Ok(CgroupMem {
                version,
                current,
                limit: parsed_opt(dir, "memory.limit_in_bytes", parse_v1_limit)?.flatten(),
                high: None,
                peak: parsed_opt(dir, "memory.max_usage_in_bytes", parse_u64)?,
                anon: stat.anon().unwrap_or(0),
                file: stat.file().unwrap_or(0),
                shmem: stat.shmem().unwrap_or(0),
                swap: stat.v1_swap(),
                oom_kills: oom.and_then(|o| o.oom_kill),
                events: None,
                failcnt: parsed_opt(dir, "memory.failcnt", parse_u64)?,
                stat,
            })
        }
    }
}

/// Per-process memory of every member of a cgroup, and the sum.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerMem {
    /// In `cgroup.procs` order (ascending pids on current kernels).
    pub procs: Vec<(u32, ProcMem)>,
    pub total: ProcMem,
    /// Members listed in `cgroup.procs` that exited before their smaps_rollup was read.
    pub gone: usize,
}

impl WorkerMem {
    /// The member with the largest `key` (e.g. `|m| m.uss`), for signalling one child of a
    /// prefork master instead of recycling the whole worker.
    pub fn largest_by(&self, key: impl Fn(&ProcMem) -> u64) -> Option<(u32, ProcMem)> {
        self.procs.iter().copied().max_by_key(|(_, m)| key(m))
    }
}

/// Sums [`read_proc_mem`] over the pids in `procs_dir/cgroup.procs` (see
/// [`CgroupDirs::procs`]). Members that exit meanwhile are counted in [`WorkerMem::gone`], not
/// reported as errors: a worker forking and reaping children is normal.
pub fn worker_mem(proc: &ProcRoot, procs_dir: &Path) -> Result<WorkerMem, MemError> {
    let pids = read_cgroup_procs(procs_dir)?;
    let mut out = WorkerMem::default();
    for pid in pids {
        match read_proc_mem(proc, pid) {
            Ok(m) => {
                out.total += m;
                out.procs.push((pid, m));
            }
            Err(MemError::ProcessGone { .. }) => out.gone += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

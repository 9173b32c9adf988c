//! Memory accounting: what a worker, its processes and its cgroup use, and the dentry cache.
//!
//! Contract (DESIGN "Accounting reads are split from parsing"):
//! - [`smaps`], [`status`], [`cgroup`] and [`slab`] are pure parsers: text in, typed figures in bytes out,
//!   a [`MemError::Parse`] naming the line for anything else, never a panic.
//! - [`bounds`] is pure arithmetic: what the cheap per-tick figures ([`Cheap`]) prove about the
//!   expensive ones of `smaps_rollup`.
//! - The readers in this module take their roots as parameters ([`ProcRoot`] for `/proc`,
//!   [`CgroupRoot`] for `/sys/fs/cgroup`), so tests run them over the real captures in
//!   `tests/fixtures/{proc,cgroup-v1,cgroup-v2}`.
//! - Both cgroup versions are read into one [`CgroupMem`]; where the memory controller lives
//!   (v1 legacy/hybrid or v2) is probed once into a [`CgroupLayout`].
//! - Processes and cgroups that vanish mid-read are expected and come back as
//!   [`MemError::ProcessGone`] / [`MemError::CgroupGone`].
//!
//! Typical use:
//! ```no_run
//! use kechi::memory::{CgroupRoot, ProcRoot, probe_layout, read_cgroup_mem, scope_dir, worker_mem};
//! let layout = probe_layout(&CgroupRoot::default())?;
//! let dirs = scope_dir(&layout, "kechi-demo.slice", "kechi-demo-1.scope")?;
//! let cg = read_cgroup_mem(&dirs.memory, dirs.version)?;
//! let procs = worker_mem(&ProcRoot::default(), &dirs.procs)?;
//! println!("{} bytes charged, USS {}", cg.current, procs.total.uss);
//! # Ok::<(), kechi::memory::MemError>(())
//! ```

pub mod bounds;
pub mod cgroup;
mod error;
mod procfs;
mod read;
pub mod slab;
pub mod smaps;
pub mod status;

pub use bounds::{Cheap, counter_slack};
pub use cgroup::{
    CgroupDirs, CgroupLayout, CgroupMem, CgroupVersion, MemoryEvents, MemoryStat, OomControl,
    ProcCgroups, V1Membership, slice_path, unit_cgroup_path,
};
pub use error::{MemError, Op};
pub use procfs::{
    has_syscall_file, parse_start_ticks, parse_uptime, parse_vmstat_oom_kills, process_age,
    read_cgroup_membership, read_maps, session_of, vmstat_oom_kills,
};
pub use read::{
    CgroupRoot, ProcRoot, WorkerMem, locate_pid, page_size, probe_layout, processes_rss,
    read_cgroup_current, read_cgroup_mem, read_cgroup_procs, read_proc_cgroups, read_proc_counters,
    read_proc_mem, read_proc_statm, read_slabinfo, scope_dir, worker_mem,
};
pub use slab::{SlabCache, SlabInfo};
pub use smaps::ProcMem;
pub use status::{ProcCounters, Statm};

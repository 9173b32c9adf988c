//! Gives back the memory that only start-up, or a burst of work, needed: the pages of kechid's
//! own executable that it no longer runs, and the free part of its heap.
//!
//! kechid's own memory is a goal (DESIGN.md), and most of it is its executable. Start-up
//! (reading the config, connecting to the bus, the first spawns) and events (recycles, reloads,
//! kechictl) run code that the steady state (timers, sampling, status) never touches again, and
//! those pages stay mapped until the process exits; so do the relocation tables the loader read
//! once. Once they are dropped, the steady state maps back what it runs (the kernel maps up to
//! 64 KiB around each page fault): measured, about 0.4 MiB of kechid's 2.1 MiB of program pages
//! stay out (docs/benchmarks/footprint.md). Likewise the heap: start-up and bursts (a scope
//! started per worker, each operation a task of several KiB) leave free pages inside glibc's
//! heap that it keeps until asked.
//!
//! Contract:
//! - [`code_ranges`] (pure): the page-aligned ranges of the program's segments that are mapped
//!   read-only and were never written (`PT_LOAD` without `PF_W`: code, read-only data, the
//!   relocation tables), minus any page a writable segment shares.
//! - [`file_runs`] (pure): within such a range, the runs of pages that are mapped and still the
//!   file's own (`/proc/self/pagemap`: present, file page). A page of a private file mapping that
//!   was written is an anonymous copy: a debugger's breakpoint, a uprobe, a text relocation.
//!   Those are kept, or dropping them would silently undo what was written.
//! - [`same_file`] (pure): the program's pages are dropped only while its file is still the one
//!   kechid was started from, unchanged: same device and inode, size, modification and change
//!   times, and still linked. An upgrade replaces the file (a new inode renamed over the old
//!   one: the old one is unlinked, its change time moves), and from then on nothing is dropped.
//!   Dropping would still be sound then (the mapping holds the old inode, and a refault reads
//!   the old bytes; writing a running executable in place fails with ETXTBSY), but a program
//!   whose file is gone keeps its pages rather than rely on that.
//! - [`release`]: `madvise(MADV_DONTNEED)` over those runs of the running program, then
//!   `malloc_trim(0)` (glibc). Safe at any moment: a page that is the file's own holds nothing
//!   but the file's bytes, so dropping it from kechid's page tables loses nothing; the next use
//!   maps it again from the page cache (a minor fault: the pages stay cached, shared and
//!   reclaimable, no disk read while they are there). It is what the kernel's own reclaim does
//!   to these pages under memory pressure, done early. The segments the loader writes
//!   (relocated data, RELRO: `.data.rel.ro`, `.got`) are writable `PT_LOAD`s, never looked at.
//! - [`note_program`] records the program file's state; kechid calls it first thing. Without
//!   it, the first [`release`] records it.
//! - What it gave back is reported, never an error: without `/proc/self/pagemap` or
//!   `/proc/self/exe`, or if `madvise` refuses, the pages stay mapped.

use std::ops::Range;

/// A loaded segment of the program: its address range in memory and whether it is writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: usize,
    pub len: usize,
    pub writable: bool,
}

/// What one [`release`] gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// The program's pages dropped from kechid's page tables, in bytes.
    pub code_bytes: usize,
    /// Whether `malloc_trim` returned memory to the kernel.
    pub heap: bool,
}

/// The page-aligned ranges of the read-only segments, minus every page of a writable one.
pub fn code_ranges(segments: &[Segment], page: usize) -> Vec<Range<usize>> {
    let down = |a: usize| a & !(page - 1);
    let up = |a: usize| a.div_ceil(page) * page;
    let pages = |s: &Segment| down(s.start)..up(s.start + s.len);
    let mut out: Vec<Range<usize>> = segments
        .iter()
        .filter(|s| !s.writable && s.len > 0)
        .map(pages)
        .collect();
    for w in segments
        .iter()
        .filter(|s| s.writable && s.len > 0)
        .map(pages)
    {
        out = out
            .into_iter()
            .flat_map(|r| {
                [r.start..r.end.min(w.start), r.start.max(w.end)..r.end]
                    .into_iter()
                    .filter(|p| p.start < p.end)
            })
            .collect();
    }
    out
}

/// `/proc/PID/pagemap`: the page is present in memory.
const PM_PRESENT: u64 = 1 << 63;
/// `/proc/PID/pagemap`: the page is a file page (or shared anonymous memory).
const PM_FILE: u64 = 1 << 61;

/// The runs of pages of the range starting at `start` that are present and file pages, given
/// one `/proc/PID/pagemap` entry per page.
pub fn file_runs(start: usize, entries: &[u64], page: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e & PM_PRESENT == 0 || e & PM_FILE == 0 {
            continue;
        }
        let at = start + i * page;
        match out.last_mut() {
            Some(r) if r.end == at => r.end = at + page,
            _ => out.push(at..at + page),
        }
    }
    out
}

/// What identifies the program's file and tells whether it changed (from `stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileState {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Modification time, seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Change time (also moves when the file is unlinked or renamed over).
    pub ctime: (i64, i64),
    /// Hard links: 0 once the file was removed or replaced by another one.
    pub links: u64,
}

/// Whether the program's file `now` is still the one of `at_start`, unchanged and linked. Not
/// knowing either counts as changed.
pub fn same_file(at_start: Option<&FileState>, now: Option<&FileState>) -> bool {
    match (at_start, now) {
        (Some(a), Some(n)) => a == n && n.links > 0,
        _ => false,
    }
}

/// Records the state of the program's file, against which [`release`] checks it.
pub fn note_program() {
    imp::note_program();
}

/// Drops kechid's read-only program pages from its page tables and trims the heap.
pub fn release() -> Released {
    let mut r = Released {
        code_bytes: imp::release_code(),
        heap: false,
    };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free memory of glibc's heap to the kernel.
        r.heap = unsafe { libc::malloc_trim(0) } == 1;
    }
    r
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
mod imp {
    use super::{FileState, Segment, code_ranges, file_runs, same_file};
    use std::ffi::{CStr, c_int, c_void};
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::sync::OnceLock;

    /// The main program's loaded segments.
    #[derive(Default)]
    struct Program {
        segments: Vec<Segment>,
        seen: bool,
    }

    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for the duration of the call, and `data`
        // is the `Program` that `program` handed it.
        let (info, p) = unsafe { (&*info, &mut *data.cast::<Program>()) };
        // The main program comes first, with an empty name; the shared libraries are not ours
        // to drop (other processes map them too, and they are not in kechid's USS).
        // SAFETY: dlpi_name is a valid C string (possibly empty).
        if p.seen
            || !info.dlpi_name.is_null() && !unsafe { CStr::from_ptr(info.dlpi_name) }.is_empty()
        {
            return 1;
        }
        p.seen = true;
        let base = info.dlpi_addr as usize;
        // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        for h in headers.iter().filter(|h| h.p_type == libc::PT_LOAD) {
            p.segments.push(Segment {
                start: base + h.p_vaddr as usize,
                len: h.p_memsz as usize,
                writable: h.p_flags & libc::PF_W != 0,
            });
        }
        1
    }

    fn program() -> Program {
        let mut p = Program::default();
        // SAFETY: `visit` matches the callback's contract and only writes `p`.
        unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut p).cast()) };
        p
    }

    /// The pagemap entries of the pages of `r`.
    fn pagemap(map: &std::fs::File, r: &std::ops::Range<usize>, page: usize) -> Option<Vec<u64>> {
        let mut raw = vec![0u8; r.len() / page * 8];
        map.read_exact_at(&mut raw, (r.start / page * 8) as u64)
            .ok()?;
        Some(
            raw.chunks_exact(8)
                .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        )
    }

    /// The program file's state when kechid started (see [`super::note_program`]).
    static AT_START: OnceLock<Option<FileState>> = OnceLock::new();

    /// The state of the file this program was started from (`/proc/self/exe` leads to it even
    /// once it was unlinked).
    fn program_file() -> Option<FileState> {
        let m = std::fs::metadata("/proc/self/exe").ok()?;
        Some(FileState {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            links: m.nlink(),
        })
    }

    pub(super) fn note_program() {
        AT_START.get_or_init(program_file);
    }

    pub(super) fn release_code() -> usize {
        if !same_file(
            AT_START.get_or_init(program_file).as_ref(),
            program_file().as_ref(),
        ) {
            return 0;
        }
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => return 0,
        };
        let Ok(map) = std::fs::File::open("/proc/self/pagemap") else {
            return 0;
        };
        let mut given = 0;
        for r in code_ranges(&program().segments, page) {
            let Some(entries) = pagemap(&map, &r, page) else {
                continue;
            };
            for run in file_runs(r.start, &entries, page) {
                // SAFETY: whole pages of a read-only private file mapping of this program that
                // are the file's own (see the module's contract): dropping them loses nothing,
                // the next access maps the file's page again. Code running in them (this
                // function's caller included) simply faults them back in.
                if unsafe {
                    libc::madvise(run.start as *mut c_void, run.len(), libc::MADV_DONTNEED)
                } == 0
                {
                    given += run.len();
                }
            }
        }
        given
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
mod imp {
    pub(super) fn note_program() {}

    pub(super) fn release_code() -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = 4096;

    fn seg(start: usize, len: usize, writable: bool) -> Segment {
        Segment {
            start,
            len,
            writable,
        }
    }

    #[test]
    fn read_only_segments_rounded_out_to_whole_pages() {
        // as LLD lays out a PIE: read-only data, code, then the writable segments
        let s = [
            seg(0, 0x95ca4, false),
            seg(0x96cb0, 0x1aadd0, false),
            seg(0x242a80, 0x13580, true),
            seg(0x2569d8, 0x1a64, true),
        ];
        assert_eq!(code_ranges(&s, P), vec![0..0x96000, 0x96000..0x242000]);
    }

    #[test]
    fn a_page_shared_with_a_writable_segment_is_left_alone() {
        let s = [seg(0x1000, 0x1800, false), seg(0x2800, 0x1000, true)];
        assert_eq!(code_ranges(&s, P), vec![0x1000..0x2000]);
        // a writable segment inside a read-only one splits it
        let s = [seg(0, 0x10000, false), seg(0x4010, 0x10, true)];
        assert_eq!(code_ranges(&s, P), vec![0..0x4000, 0x5000..0x10000]);
    }

    #[test]
    fn nothing_when_every_segment_is_writable_or_empty() {
        let s = [seg(0, 0x1000, true), seg(0x2000, 0, false)];
        assert!(code_ranges(&s, P).is_empty());
    }

    #[test]
    fn only_present_file_pages_are_dropped() {
        let file = PM_PRESENT | PM_FILE | 0x1234;
        let anon = PM_PRESENT | 0x99; // written: a breakpoint, a uprobe, a relocation
        let absent = 0;
        let e = [file, file, anon, absent, file, absent, file, file];
        assert_eq!(
            file_runs(0x10000, &e, P),
            vec![0x10000..0x12000, 0x14000..0x15000, 0x16000..0x18000]
        );
        assert!(file_runs(0, &[anon, absent], P).is_empty());
    }

    fn file() -> FileState {
        FileState {
            dev: 0x803,
            ino: 4242,
            size: 2_550_256,
            mtime: (1_796_000_000, 5),
            ctime: (1_796_000_000, 5),
            links: 1,
        }
    }

    #[test]
    fn pages_are_dropped_only_while_the_program_file_is_unchanged() {
        let start = file();
        assert!(same_file(Some(&start), Some(&file())));
        // an upgrade renamed a new file over it: the old inode is unlinked, its ctime moves
        let replaced = FileState {
            links: 0,
            ctime: (1_796_000_900, 0),
            ..file()
        };
        assert!(!same_file(Some(&start), Some(&replaced)));
        // unlinked only (its times unchanged, as a filesystem may report)
        let unlinked = FileState { links: 0, ..file() };
        assert!(!same_file(Some(&unlinked), Some(&unlinked)));
        // written in place, or another file at the same inode number
        let written = FileState {
            mtime: (1_796_000_900, 0),
            ..file()
        };
        assert!(!same_file(Some(&start), Some(&written)));
        let other = FileState {
            ino: 4343,
            ..file()
        };
        assert!(!same_file(Some(&start), Some(&other)));
        // not known: nothing is dropped
        assert!(!same_file(None, Some(&start)));
        assert!(!same_file(Some(&start), None));
    }

    #[test]
    fn release_keeps_the_program_running() {
        // Drops this test binary's own code and read-only data from its page tables, then runs
        // code and reads constants that live there.
        let r = release();
        if cfg!(all(target_os = "linux", target_pointer_width = "64")) {
            assert!(r.code_bytes > 0);
        }
        let words: Vec<String> = ["still", "here"].iter().map(|s| s.to_string()).collect();
        assert_eq!(words.join(" "), "still here");
        // what ran since (this test, at least) came back, and goes again
        if r.code_bytes > 0 {
            assert!(release().code_bytes > 0);
        }
    }
}

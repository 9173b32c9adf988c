//! The other things kechid reads about processes from procfs: a process's age, its session,
//! its cgroup membership text, its mappings, and the kernel's OOM-kill count. Like every
//! reader here they take the root as a parameter ([`ProcRoot`]); the parsers are pure.

use std::time::Duration;

use super::read::ProcRoot;

/// Field 22 of `/proc/PID/stat` (clock ticks after boot at which the process started).
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    // The command (field 2) may hold spaces and parentheses: count after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The first figure of `/proc/uptime`, in seconds.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `oom_kill N` of `/proc/vmstat`.
pub fn parse_vmstat_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// How long ago a process started (its stat's start time against the root's uptime).
pub fn process_age(proc: &ProcRoot, pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(proc.pid_file(pid, "stat")).ok()?;
    let start_ticks = parse_start_ticks(&stat)?;
    let uptime = parse_uptime(&std::fs::read_to_string(proc.0.join("uptime")).ok()?)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64(
        (uptime - start_ticks as f64 / hz).max(0.0),
    ))
}

/// The kernel's count of OOM kills so far (cgroup v1 has no per-cgroup one before 4.13).
pub fn vmstat_oom_kills(proc: &ProcRoot) -> Option<u64> {
    parse_vmstat_oom_kills(&std::fs::read_to_string(proc.0.join("vmstat")).ok()?)
}

/// `/proc/PID/maps` as text.
pub fn read_maps(proc: &ProcRoot, pid: u32) -> Option<String> {
    std::fs::read_to_string(proc.pid_file(pid, "maps")).ok()
}

/// `/proc/PID/cgroup` as text.
pub fn read_cgroup_membership(proc: &ProcRoot, pid: u32) -> Option<String> {
    std::fs::read_to_string(proc.pid_file(pid, "cgroup")).ok()
}

/// The session a process belongs to.
pub fn session_of(proc: &ProcRoot, pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(proc.pid_file(pid, "stat")).ok()?;
    crate::monitor::parse_stat_session(&stat)
}

/// Whether this kernel has `/proc/PID/syscall` (User-mode Linux and some others do not).
pub fn has_syscall_file(proc: &ProcRoot) -> bool {
    proc.0.join("self").join("syscall").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(12345));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert_eq!(parse_uptime("350735.47 234388.90\n"), Some(350735.47));
        assert_eq!(
            parse_vmstat_oom_kills("pgfault 1\noom_kill 7\nfoo 2\n"),
            Some(7)
        );
        assert_eq!(parse_vmstat_oom_kills("pgfault 1\n"), None);
    }

    #[test]
    fn readers_over_a_fake_root() {
        let dir = std::env::temp_dir().join(format!("kechi-procfs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("7")).unwrap();
        std::fs::write(
            dir.join("7/stat"),
            "7 (w) S 1 7 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0",
        )
        .unwrap();
        std::fs::write(dir.join("uptime"), "101.00 5.0\n").unwrap();
        std::fs::write(dir.join("vmstat"), "oom_kill 3\n").unwrap();
        std::fs::write(dir.join("7/cgroup"), "0::/x\n").unwrap();
        let root = ProcRoot::new(&dir);
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let age = process_age(&root, 7).unwrap().as_secs_f64();
        assert!((age - (101.0 - 100.0 / hz)).abs() < 0.01, "{age}");
        assert_eq!(vmstat_oom_kills(&root), Some(3));
        assert_eq!(session_of(&root, 7), Some(5));
        assert_eq!(read_cgroup_membership(&root, 7).as_deref(), Some("0::/x\n"));
        assert_eq!(read_maps(&root, 7), None);
        assert!(!has_syscall_file(&root));
        assert!(has_syscall_file(&ProcRoot::default()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! kechid's own memory monitor for workers that run without a systemd scope (foreground mode):
//! finds a worker's processes by session (each worker is a session leader) and sums their PSS,
//! so `memory.max` can still be enforced by kechid when no kernel limit exists.

use std::path::Path;

use crate::memory::{ProcRoot, read_proc_mem};

/// The session id (field 6) of a `/proc/PID/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last ')'.
pub fn parse_stat_session(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // state ppid pgrp session
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// Pids whose session is `sid`.
pub fn session_members(proc_root: &Path, sid: i32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(proc_root) else {
        return vec![];
    };
    rd.filter_map(|e| {
        let name = e.ok()?.file_name();
        let pid: u32 = name.to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
        (parse_stat_session(&stat)? == sid).then_some(pid)
    })
    .collect()
}

/// Sum of PSS over a session's processes, in bytes (processes that vanish meanwhile count 0).
pub fn session_pss(proc_root: &Path, sid: i32) -> u64 {
    let root = ProcRoot::new(proc_root);
    session_members(proc_root, sid)
        .into_iter()
        .filter_map(|p| read_proc_mem(&root, p).ok())
        .map(|m| m.pss)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_session() {
        assert_eq!(
            parse_stat_session("123 (sleep) S 1 123 456 0 -1 4194560"),
            Some(456)
        );
        assert_eq!(parse_stat_session("9 (a b) c)) R 1 9 77 0"), Some(77));
        assert_eq!(parse_stat_session("garbage"), None);
    }

    #[test]
    fn own_session_is_found() {
        let sid = nix::unistd::getsid(None).unwrap().as_raw();
        let me = std::process::id();
        assert!(session_members(Path::new("/proc"), sid).contains(&me));
        assert!(session_pss(Path::new("/proc"), sid) > 0);
    }
}

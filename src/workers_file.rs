//! The workers file, `RUNTIME/APP/workers`: what a kechid leaves for the next one about the
//! workers it ran, one line each: `SERIAL PID STATE config:FINGERPRINT`, STATE being `live` or
//! `draining:REASON`.
//!
//! The next kechid (after `systemctl restart`, a crash, a kill -9) adopts the running scopes;
//! this file tells it which process is each worker's main one, which workers were already
//! being stopped, and with which configuration each was started: a worker started with another
//! configuration than the one the new kechid reads (a reload roll cut short by a crash, or the
//! file edited before a restart) is replaced as a reload would have. Lines it does not
//! understand are skipped; a line without `config:` (an older kechid) counts as current.
//! A worker with sockets of its own ([`crate::steer`]) has one `steer:LISTENER/SLOT/INODE` field
//! per socket: the listener's index, its slot in the steering maps, the socket's inode.

use crate::lifecycle::StopReason;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub serial: u64,
    pub pid: i32,
    pub draining: Option<StopReason>,
    pub config: Option<u64>,
    /// `(listener index, slot, inode)` of each socket of its own.
    pub steer: Vec<(usize, u32, u64)>,
}

/// The file's text for `entries`.
pub fn render(entries: &[Entry]) -> String {
    let mut text = String::new();
    for e in entries {
        let state = match &e.draining {
            Some(reason) => format!("draining:{}", reason.as_str()),
            None => "live".to_owned(),
        };
        text.push_str(&format!("{} {} {state}", e.serial, e.pid));
        if let Some(c) = e.config {
            text.push_str(&format!(" config:{c:016x}"));
        }
        for (l, slot, inode) in &e.steer {
            text.push_str(&format!(" steer:{l}/{slot}/{inode}"));
        }
        text.push('\n');
    }
    text
}

/// The entries of the file's text.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let serial: u64 = f.next()?.parse().ok()?;
            let pid: i32 = f.next()?.parse().ok()?;
            let mut entry = Entry {
                serial,
                pid,
                draining: None,
                config: None,
                steer: Vec::new(),
            };
            for field in f {
                if let Some(reason) = field.strip_prefix("draining:") {
                    entry.draining = Some(StopReason::parse(reason).unwrap_or(StopReason::Manual));
                } else if let Some(hex) = field.strip_prefix("config:") {
                    entry.config = u64::from_str_radix(hex, 16).ok();
                } else if let Some(s) = field.strip_prefix("steer:") {
                    let mut n = s.split('/');
                    if let (Some(Ok(l)), Some(Ok(slot)), Some(Ok(inode))) = (
                        n.next().map(str::parse),
                        n.next().map(str::parse),
                        n.next().map(str::parse),
                    ) {
                        entry.steer.push((l, slot, inode));
                    }
                }
            }
            Some(entry)
        })
        .collect()
}

/// A fingerprint of a configuration's text (FNV-1a, 64 bits): stable across kechi versions
/// and Rust releases, unlike the standard library's hasher.
pub fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_older_lines() {
        let entries = vec![
            Entry {
                serial: 3,
                pid: 120,
                draining: None,
                config: Some(0xabc),
                steer: vec![(0, 3, 7788), (2, 1, 99)],
            },
            Entry {
                serial: 4,
                pid: 130,
                draining: Some(StopReason::Reload),
                config: Some(u64::MAX),
                steer: vec![],
            },
        ];
        let text = render(&entries);
        assert_eq!(
            text,
            "3 120 live config:0000000000000abc steer:0/3/7788 steer:2/1/99\n4 130 draining:reload config:ffffffffffffffff\n"
        );
        assert_eq!(parse(&text), entries);
        // an older kechid's lines, and junk
        assert_eq!(
            parse("5 140 live\nnot a line\n6 150 draining:age\n"),
            vec![
                Entry {
                    serial: 5,
                    pid: 140,
                    draining: None,
                    config: None,
                    steer: vec![]
                },
                Entry {
                    serial: 6,
                    pid: 150,
                    draining: Some(StopReason::Age),
                    config: None,
                    steer: vec![]
                },
            ]
        );
    }

    #[test]
    fn fingerprint_is_fnv1a() {
        assert_eq!(fingerprint(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fingerprint("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fingerprint("workers = 2"), fingerprint("workers = 3"));
    }
}

//! The box-wide memory budget (`[box] budget` of `/etc/kechi/kechi.conf`), decided by the
//! kechids of one machine among themselves, without a central daemon.
//!
//! How they agree:
//! - each kechid publishes its ready workers' figures (by its app's `memory.metric`) at every
//!   sample, in `/run/kechi/APP/box-figures` ([`render_figures`]), written atomically;
//! - each reads every app's file ([`parse_figures`]; a file not renewed for [`STALE_AFTER`]
//!   belongs to a kechid that is gone and is ignored) and computes the same answer: while the
//!   total exceeds the budget, the single largest worker of the box goes ([`over_budget`]);
//! - only the kechid that owns that worker acts, and only while it holds the box lock
//!   (`/run/kechi/box.lock`, an exclusive `flock` taken without waiting and held until its
//!   replacement has taken over and the old worker is gone); the lock file records when the
//!   last such recycle ended, and nobody starts another before every kechid has sampled since
//!   ([`settled`]): one at a time box-wide, each judged on figures that show the last one.
//!
//! This module is the pure part: the file formats and the decisions.

use std::time::Duration;

/// A published file older than this is a kechid's that is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// One worker's figure, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    pub app: String,
    pub serial: u64,
    pub bytes: u64,
}

/// `box-figures`: `at UNIX_MS` then `SERIAL BYTES` per ready worker.
pub fn render_figures(at_ms: u64, workers: &[(u64, u64)]) -> String {
    let mut s = format!("at {at_ms}\n");
    for (serial, bytes) in workers {
        s.push_str(&format!("{serial} {bytes}\n"));
    }
    s
}

/// The figures of `app`'s file, if it is well formed and was written at most
/// [`STALE_AFTER`] before `now_ms`.
pub fn parse_figures(app: &str, text: &str, now_ms: u64) -> Option<Vec<Figure>> {
    let mut lines = text.lines();
    let at: u64 = lines.next()?.strip_prefix("at ")?.trim().parse().ok()?;
    if now_ms.saturating_sub(at) > STALE_AFTER.as_millis() as u64 {
        return None;
    }
    let mut out = Vec::new();
    for l in lines {
        let (s, b) = l.split_once(' ')?;
        out.push(Figure {
            app: app.to_owned(),
            serial: s.trim().parse().ok()?,
            bytes: b.trim().parse().ok()?,
        });
    }
    Some(out)
}

/// The largest worker (ties: the first by app name, then serial, so every kechid picks the same).
pub fn largest(figures: &[Figure]) -> Option<&Figure> {
    figures.iter().max_by(|a, b| {
        a.bytes
            .cmp(&b.bytes)
            .then_with(|| b.app.cmp(&a.app))
            .then_with(|| b.serial.cmp(&a.serial))
    })
}

/// Over the budget: the total and the worker that must go.
pub fn over_budget(figures: &[Figure], budget: u64) -> Option<(u64, &Figure)> {
    let total: u64 = figures.iter().map(|f| f.bytes).sum();
    if total <= budget {
        return None;
    }
    largest(figures).map(|f| (total, f))
}

/// The lock file's record: `done UNIX_MS` of the last box-wide recycle.
pub fn parse_done(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("done "))
        .and_then(|s| s.trim().parse().ok())
}

/// Whether every app's figures were written after the last box-wide recycle ended (so they
/// show its effect); `published` holds each file's `at`.
pub fn settled(done_ms: Option<u64>, published: &[u64]) -> bool {
    match done_ms {
        None => true,
        Some(done) => published.iter().all(|at| *at > done),
    }
}

/// Whether a memory pressure event speaks of the box as it is since the last box-wide recycle
/// ended: the kernel reports stall over its trigger's window, so an event that arrives less than
/// a window after that end still counts stall from before it, or from the recycle itself (a
/// replacement starts beside the worker it replaces). Acting on it would recycle a second worker
/// for pressure the first recycle may already have relieved.
pub fn pressure_after(done_ms: Option<u64>, now_ms: u64, window_ms: u64) -> bool {
    done_ms.is_none_or(|done| now_ms >= done.saturating_add(window_ms))
}

/// The `at` of a figures file.
pub fn published_at(text: &str) -> Option<u64> {
    text.lines()
        .next()?
        .strip_prefix("at ")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(app: &str, serial: u64, mib: u64) -> Figure {
        Figure {
            app: app.into(),
            serial,
            bytes: mib << 20,
        }
    }

    #[test]
    fn figures_round_trip_and_go_stale() {
        let text = render_figures(1_000_000, &[(3, 100), (4, 200)]);
        assert_eq!(
            parse_figures("a", &text, 1_000_500).unwrap(),
            vec![
                Figure {
                    app: "a".into(),
                    serial: 3,
                    bytes: 100
                },
                Figure {
                    app: "a".into(),
                    serial: 4,
                    bytes: 200
                },
            ]
        );
        assert_eq!(published_at(&text), Some(1_000_000));
        assert_eq!(parse_figures("a", &text, 1_000_000 + 61_000), None);
        assert_eq!(parse_figures("a", "garbage", 0), None);
        assert_eq!(parse_figures("a", "at 5\n1 x\n", 5), None);
    }

    #[test]
    fn under_the_budget_nothing_goes() {
        let figs = [f("a", 1, 100), f("b", 1, 200)];
        assert_eq!(over_budget(&figs, 300 << 20), None);
    }

    #[test]
    fn over_the_budget_the_largest_on_the_box_goes() {
        let figs = [
            f("a", 1, 100),
            f("a", 2, 150),
            f("b", 7, 180),
            f("b", 8, 20),
        ];
        let (total, w) = over_budget(&figs, 300 << 20).unwrap();
        assert_eq!(total, 450 << 20);
        assert_eq!((w.app.as_str(), w.serial), ("b", 7));
    }

    #[test]
    fn ties_are_broken_the_same_way_everywhere() {
        let figs = [f("b", 2, 100), f("a", 9, 100), f("a", 3, 100)];
        let w = largest(&figs).unwrap();
        assert_eq!((w.app.as_str(), w.serial), ("a", 3));
        let mut rev = figs.to_vec();
        rev.reverse();
        assert_eq!(largest(&rev), Some(w));
    }

    #[test]
    fn the_next_recycle_waits_for_figures_that_show_the_last() {
        assert!(settled(None, &[1, 2]));
        assert!(!settled(Some(10), &[11, 9]));
        assert!(settled(Some(10), &[11, 12]));
        assert_eq!(parse_done("done 42\n"), Some(42));
        assert_eq!(parse_done(""), None);
    }

    #[test]
    fn pressure_counts_only_after_a_whole_window_past_the_last_recycle() {
        assert!(pressure_after(None, 5, 2_000));
        assert!(!pressure_after(Some(10_000), 10_500, 2_000));
        assert!(!pressure_after(Some(10_000), 11_999, 2_000));
        assert!(pressure_after(Some(10_000), 12_000, 2_000));
        // a clock far ahead neither overflows nor blocks the trigger for ever
        assert!(pressure_after(Some(u64::MAX - 1), u64::MAX, 2_000));
    }
}

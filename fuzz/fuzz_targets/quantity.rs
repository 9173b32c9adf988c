//! Fuzz target: the quantity parsers of config values (`kechi::quantity`): sizes, durations,
//! percentages, signals.
//!
//! Contract checked, for any UTF-8 input: no parser panics, and every value that parses is
//! written back by its formatter as text that parses to the same value (what `kechictl config`
//! shows can be pasted into a config file and means the same).
#![no_main]

use kechi::quantity::{format_duration, parse_bytes, parse_duration, parse_percent, parse_signal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(b) = parse_bytes(s) {
        let shown = b.to_string();
        assert_eq!(parse_bytes(&shown), Ok(b), "size {s:?} shown as {shown:?}");
        let _ = b.human();
    }
    if let Ok(d) = parse_duration(s) {
        let shown = format_duration(d);
        assert_eq!(
            parse_duration(&shown),
            Ok(d),
            "duration {s:?} shown as {shown:?}"
        );
    }
    if let Ok(p) = parse_percent(s) {
        assert!(p.0 <= 10_000, "percent {s:?} above 100%: {p:?}");
        let shown = p.to_string();
        assert_eq!(
            parse_percent(&shown),
            Ok(p),
            "percent {s:?} shown as {shown:?}"
        );
    }
    if let Ok(sig) = parse_signal(s) {
        let shown = sig.to_string();
        assert_eq!(
            parse_signal(&shown),
            Ok(sig),
            "signal {s:?} shown as {shown:?}"
        );
    }
});

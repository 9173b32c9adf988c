//! Pure parsers and formatters for the quantities config files speak: sizes (`"512M"`),
//! durations (`"1h30m"`, `"250ms"`), percentages (`"50%"`) and signal names (`"TERM"`).
//!
//! Sizes use binary multiples like systemd (K = 1024). Durations accept systemd's units
//! (us, ms, s, m/min, h, d, w) and bare integers (seconds); `"0"` is zero.

use std::fmt;
use std::time::Duration;

/// A byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Bytes(pub u64);

/// A percentage, 0..=100, kept in hundredths for exact comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Percent(pub u16);

impl Percent {
    pub fn from_whole(p: u8) -> Self {
        Percent(u16::from(p.min(100)) * 100)
    }
    /// The fraction, 0.0..=1.0.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

/// A signal by name, as the `stop.signal` and `memory.child-signal` keys take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub nix::sys::signal::Signal);

impl serde::Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuantityError(pub String);

fn err(s: impl Into<String>) -> QuantityError {
    QuantityError(s.into())
}

/// Parses `"512M"`, `"1G"`, `"64k"`, `"1.5G"`, `"1048576"`, `"0"`.
pub fn parse_bytes(s: &str) -> Result<Bytes, QuantityError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(err(
            "a size like \"512M\" (K, M, G, T; 1024-based), got an empty string",
        ));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KiB" | "KB" => 1 << 10,
        "M" | "m" | "MiB" | "MB" => 1 << 20,
        "G" | "g" | "GiB" | "GB" => 1 << 30,
        "T" | "t" | "TiB" | "TB" => 1 << 40,
        other => {
            return Err(err(format!(
                "a size like \"512M\" (units K, M, G, T), got unknown unit {other:?} in {s:?}"
            )));
        }
    };
    if num.is_empty() || num.matches('.').count() > 1 || num.starts_with('.') || num.ends_with('.')
    {
        return Err(err(format!("a size like \"512M\", got {s:?}")));
    }
    let value = if num.contains('.') {
        let f: f64 = num
            .parse()
            .map_err(|_| err(format!("a size like \"512M\", got {s:?}")))?;
        let v = f * mult as f64;
        if !v.is_finite() || v >= u64::MAX as f64 {
            return Err(err(format!("a size that fits in 64 bits, got {s:?}")));
        }
        v as u64
    } else {
        let n: u64 = num
            .parse()
            .map_err(|_| err(format!("a size that fits in 64 bits, got {s:?}")))?;
        n.checked_mul(mult)
            .ok_or_else(|| err(format!("a size that fits in 64 bits, got {s:?}")))?
    };
    Ok(Bytes(value))
}

/// Parses `"30s"`, `"1h30m"`, `"250ms"`, `"2 min"`, `"90"` (seconds), `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, QuantityError> {
    let t = s.trim();
    let bad = || {
        err(format!(
            "a duration like \"30s\", \"5m\", \"1h30m\" or \"250ms\", got {s:?}"
        ))
    };
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = t.parse().map_err(|_| bad())?;
        // The same ceiling as with units (u64 nanoseconds, ~584 years), so that every duration
        // accepted can be written back with units, and deadlines computed from it never
        // overflow an Instant.
        secs.checked_mul(1_000_000_000).ok_or_else(bad)?;
        return Ok(Duration::from_secs(secs));
    }
    // In nanoseconds: the sum has the same ceiling as each part (u64 nanoseconds, ~584
    // years), so every duration accepted can be written back with units.
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if n_end == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = rest[n_end..].trim_start();
        let u_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..u_end];
        rest = &rest[u_end..];
        let nanos_per: u128 = match unit {
            "us" | "usec" => 1_000,
            "ms" | "msec" => 1_000_000,
            "s" | "sec" | "second" | "seconds" => 1_000_000_000,
            "m" | "min" | "minute" | "minutes" => 60_000_000_000,
            "h" | "hr" | "hour" | "hours" => 3_600_000_000_000,
            "d" | "day" | "days" => 86_400_000_000_000,
            "w" | "week" | "weeks" => 604_800_000_000_000,
            _ => return Err(bad()),
        };
        let add = u128::from(n).checked_mul(nanos_per).ok_or_else(bad)?;
        let add = u64::try_from(add).map_err(|_| bad())?;
        total = total.checked_add(add).ok_or_else(bad)?;
    }
    Ok(Duration::from_nanos(total))
}

/// Parses `"50%"`, `"12.5%"`.
pub fn parse_percent(s: &str) -> Result<Percent, QuantityError> {
    let t = s.trim();
    let bad = || err(format!("a percentage from \"0%\" to \"100%\", got {s:?}"));
    let num = t.strip_suffix('%').ok_or_else(bad)?.trim();
    let f: f64 = num.parse().map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&f) {
        return Err(bad());
    }
    Ok(Percent((f * 100.0).round() as u16))
}

/// Parses `"TERM"`, `"SIGTERM"`, `"term"`, `"15"`.
pub fn parse_signal(s: &str) -> Result<Signal, QuantityError> {
    use std::str::FromStr;
    let t = s.trim();
    let bad = || {
        err(format!(
            "a signal name like \"TERM\", \"INT\", \"QUIT\" or \"HUP\", got {s:?}"
        ))
    };
    if let Ok(n) = t.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(Signal)
            .map_err(|_| bad());
    }
    let up = t.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map(Signal)
        .map_err(|_| bad())
}

impl fmt::Display for Bytes {
    /// Shortest exact form: `512M`, `1G`, `1536K`, `1000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if v != 0 && v % (1u64 << shift) == 0 {
                return write!(f, "{}{unit}", v >> shift);
            }
        }
        write!(f, "{v}")
    }
}

impl Bytes {
    /// Human approximation for tables: `12.3M`.
    pub fn human(self) -> String {
        let v = self.0 as f64;
        for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] {
            let d = (1u64 << shift) as f64;
            if v >= d {
                return format!("{:.1}{unit}", v / d);
            }
        }
        format!("{}B", self.0)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 100 == 0 {
            write!(f, "{}%", self.0 / 100)
        } else {
            write!(f, "{}%", f64::from(self.0) / 100.0)
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.as_str();
        f.write_str(n.strip_prefix("SIG").unwrap_or(n))
    }
}

/// Formats a duration the way the config takes it: `1h30m`, `250ms`, `1ms500us`, `0`. Exact
/// down to the microsecond (the finest unit [`parse_duration`] takes), so what is shown parses
/// back to the same value; nanoseconds, which no config value carries, are dropped.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0".into();
    }
    let mut ms = d.as_millis();
    if ms == 0 {
        return format!("{}us", d.as_micros());
    }
    let mut out = String::new();
    for (unit, per) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= per {
            out.push_str(&format!("{}{unit}", ms / per));
            ms %= per;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    let us = d.subsec_micros() % 1000;
    if us > 0 {
        out.push_str(&format!("{us}us"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512M").unwrap(), Bytes(512 << 20));
        assert_eq!(parse_bytes("1G").unwrap(), Bytes(1 << 30));
        assert_eq!(parse_bytes("1.5G").unwrap(), Bytes(3 << 29));
        assert_eq!(parse_bytes("0").unwrap(), Bytes(0));
        assert_eq!(parse_bytes("4096").unwrap(), Bytes(4096));
        for bad in [
            "",
            "M",
            "12X",
            "1.2.3M",
            "-5M",
            "99999999999999999999",
            "20000000T",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2 min").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "s", "5x", "1.5s", "-1s", "m5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trips() {
        for s in ["1h30m", "250ms", "5s", "1d2h", "0"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        for s in ["512M", "1G", "1536K", "1000"] {
            assert_eq!(parse_bytes(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn format_duration_keeps_microseconds() {
        // Found by fuzz/fuzz_targets/quantity.rs: "1500us" was shown as "1ms".
        let d = parse_duration("1500us").unwrap();
        assert_eq!(format_duration(d), "1ms500us");
        for s in ["1ms500us", "1s1us", "1h999us", "999us"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_nanos(1_000_999)), "1ms");
    }

    #[test]
    fn bare_seconds_have_the_same_ceiling_as_units() {
        // Found by fuzz/fuzz_targets/quantity.rs: "99090099090" (3140 years) was accepted, but
        // the "1146876d3h31m30s" it is shown as was refused.
        assert!(parse_duration("99090099090").is_err());
        assert!(parse_duration("18446744073709551615").is_err());
        let max = parse_duration("18446744073").unwrap();
        assert_eq!(parse_duration(&format_duration(max)).unwrap(), max);
        assert!(parse_duration("18446744074").is_err());
    }

    #[test]
    fn a_sum_of_parts_has_the_same_ceiling_as_each_part() {
        // Found by fuzz/fuzz_targets/quantity.rs: parts that each fit in u64 nanoseconds were
        // summed past it, and the total was then shown as text that did not parse.
        assert!(parse_duration("200000d200000d").is_err());
        assert!(parse_duration("213503d23h34m33s709ms551us").is_ok());
        assert!(parse_duration("213503d23h34m33s709ms552us").is_err());
        let d = parse_duration("100000d100000d").unwrap();
        assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
    }

    #[test]
    fn percents_and_signals() {
        assert_eq!(parse_percent("50%").unwrap(), Percent(5000));
        assert_eq!(parse_percent("12.5%").unwrap().to_string(), "12.5%");
        assert!(parse_percent("50").is_err());
        assert!(parse_percent("150%").is_err());
        assert_eq!(parse_signal("TERM").unwrap().to_string(), "TERM");
        assert_eq!(parse_signal("sigquit").unwrap().to_string(), "QUIT");
        assert_eq!(parse_signal("9").unwrap().to_string(), "KILL");
        assert!(parse_signal("NOPE").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_bytes(&s);
            let _ = parse_duration(&s);
            let _ = parse_percent(&s);
            let _ = parse_signal(&s);
        }
    }
}

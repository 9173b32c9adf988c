//! Pure translation of a [`ScopeSpec`] into the properties of `StartTransientUnit`.
//!
//! Kept free of IO so the exact property list (names, D-Bus types, infinity encoding) is
//! unit-tested; systemd rejects a property of the wrong type with an opaque error.

use zbus::zvariant::Value;

use super::{CpuCap, ScopeSpec};

/// systemd's encoding of "no limit" for `t` memory properties.
pub const INFINITY: u64 = u64::MAX;

/// The properties of a worker scope, in the order they are sent.
pub fn scope_properties(spec: &ScopeSpec) -> Vec<(&'static str, Value<'static>)> {
    let mut p: Vec<(&'static str, Value<'static>)> = vec![
        ("Description", Value::from(spec.description.clone())),
        ("Slice", Value::from(spec.slice.clone())),
        ("PIDs", Value::from(spec.pids.clone())),
        // Without accounting, MemoryCurrent reads nothing and cgroup v1 gets no memory cgroup.
        ("MemoryAccounting", Value::Bool(true)),
        ("MemoryMax", Value::U64(spec.memory_max.unwrap_or(INFINITY))),
        (
            "MemoryHigh",
            Value::U64(spec.memory_high.unwrap_or(INFINITY)),
        ),
        ("KillSignal", Value::I32(spec.kill_signal)),
        ("TimeoutStopUSec", Value::U64(micros(spec.stop_timeout))),
        ("SendSIGKILL", Value::Bool(true)),
        // A prefork master respawns an OOM-killed child; whether the worker as a whole must
        // go is kechid's decision, so systemd must not tear the scope down on its own.
        ("OOMPolicy", Value::from("continue")),
        // A failed scope must not linger as a failed unit: kechid reports it itself.
        ("CollectMode", Value::from("inactive-or-failed")),
    ];
    if let Some(swap) = spec.memory_swap_max {
        p.push(("MemorySwapMax", Value::U64(swap.unwrap_or(INFINITY))));
    }
    if spec.cpu_weight.is_some() {
        p.push(cpu_weight(spec.cpu_weight));
    }
    p
}

/// `CPUWeight=` as a property: a weight, or `None` for systemd's default, which its D-Bus API
/// spells as the invalid weight `u64::MAX` (what `CPUWeight=` with no value sets).
pub fn cpu_weight(weight: Option<u64>) -> (&'static str, Value<'static>) {
    ("CPUWeight", Value::U64(weight.unwrap_or(u64::MAX)))
}

/// A [`CpuCap`] as properties: `CPUQuotaPeriodSec=` (first: systemd applies a quota over the
/// period it has at the time), `CPUQuota=` as CPU time per second (one CPU's worth is a second),
/// and `CPUWeight=` (idle, or systemd's default). `None` removes the cap: no quota (`u64::MAX`
/// for both, what empty `CPUQuota=` and `CPUQuotaPeriodSec=` set) and the default weight.
pub fn cpu_cap(cap: Option<CpuCap>) -> [(&'static str, Value<'static>); 3] {
    let (per_sec, period) = cap.map_or((u64::MAX, u64::MAX), |c| {
        (micros(c.quota), micros(c.period))
    });
    let idle = cap.is_some_and(|c| c.idle);
    [
        ("CPUQuotaPeriodUSec", Value::U64(period)),
        ("CPUQuotaPerSecUSec", Value::U64(per_sec)),
        cpu_weight(idle.then_some(super::CPU_WEIGHT_IDLE)),
    ]
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec() -> ScopeSpec {
        ScopeSpec {
            unit: "kechi-demo-1.scope".into(),
            slice: "kechi-demo.slice".into(),
            description: "kechi demo worker 1".into(),
            pids: vec![42],
            memory_max: Some(64 << 20),
            memory_high: None,
            memory_swap_max: None,
            kill_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(30),
            cpu_weight: None,
        }
    }

    fn get<'a>(p: &'a [(&str, Value<'static>)], k: &str) -> &'a Value<'static> {
        &p.iter()
            .find(|(n, _)| *n == k)
            .unwrap_or_else(|| panic!("no {k}"))
            .1
    }

    #[test]
    fn types_match_systemd() {
        let p = scope_properties(&spec());
        assert_eq!(get(&p, "PIDs").value_signature().to_string(), "au");
        assert_eq!(get(&p, "MemoryMax"), &Value::U64(64 << 20));
        assert_eq!(get(&p, "MemoryHigh"), &Value::U64(u64::MAX));
        assert_eq!(get(&p, "MemoryAccounting"), &Value::Bool(true));
        assert_eq!(get(&p, "KillSignal"), &Value::I32(libc::SIGTERM));
        assert_eq!(get(&p, "TimeoutStopUSec"), &Value::U64(30_000_000));
        assert_eq!(get(&p, "Slice").value_signature().to_string(), "s");
        assert!(!p.iter().any(|(n, _)| *n == "MemorySwapMax"));
        assert!(!p.iter().any(|(n, _)| *n == "CPUWeight"));
    }

    #[test]
    fn cpu_weight_only_while_loading_and_default_is_the_invalid_weight() {
        let mut s = spec();
        s.cpu_weight = Some(crate::systemd::CPU_WEIGHT_IDLE);
        assert_eq!(get(&scope_properties(&s), "CPUWeight"), &Value::U64(0));
        assert_eq!(cpu_weight(None), ("CPUWeight", Value::U64(u64::MAX)));
    }

    #[test]
    fn cpu_cap_in_microseconds_with_the_idle_weight_and_none_removes_all() {
        let q = cpu_cap(Some(CpuCap {
            quota: Duration::from_millis(500),
            period: Duration::from_millis(10),
            idle: true,
        }));
        assert_eq!(q[0], ("CPUQuotaPeriodUSec", Value::U64(10_000)));
        assert_eq!(q[1], ("CPUQuotaPerSecUSec", Value::U64(500_000)));
        assert_eq!(q[2], ("CPUWeight", Value::U64(0)));
        let busy = cpu_cap(Some(CpuCap {
            quota: Duration::from_millis(500),
            period: Duration::from_millis(10),
            idle: false,
        }));
        assert_eq!(busy[2], ("CPUWeight", Value::U64(u64::MAX)));
        let none = cpu_cap(None);
        assert_eq!(none[0], ("CPUQuotaPeriodUSec", Value::U64(u64::MAX)));
        assert_eq!(none[1], ("CPUQuotaPerSecUSec", Value::U64(u64::MAX)));
        assert_eq!(none[2], ("CPUWeight", Value::U64(u64::MAX)));
    }

    #[test]
    fn swap_max_only_when_configured() {
        let mut s = spec();
        s.memory_swap_max = Some(Some(0));
        assert_eq!(get(&scope_properties(&s), "MemorySwapMax"), &Value::U64(0));
        s.memory_swap_max = Some(None);
        assert_eq!(
            get(&scope_properties(&s), "MemorySwapMax"),
            &Value::U64(u64::MAX)
        );
    }
}

//! The sampling-cost benchmark of `bench/sampling.rs`, run through the test harness so it
//! builds with the crate and needs no extra target. Ignored by default: it starts hundreds of
//! processes and takes about a minute.
//!
//!   cargo test --release --test memory_sampling_cost -- --ignored --nocapture

#[path = "../bench/sampling.rs"]
mod sampling;

#[test]
#[ignore = "benchmark: starts up to 800 processes for about a minute"]
fn sampling_cost() {
    let rows = sampling::run();
    assert!(!rows.is_empty());
}

/// A quick check that the benchmark itself works, kept in the normal test run.
#[test]
fn sampling_cost_smoke() {
    let rows = sampling::measure(
        sampling::Workload::Sleep,
        3,
        1,
        &[
            sampling::Method::SmapsRollup,
            sampling::Method::Status,
            sampling::Method::Statm,
        ],
    );
    assert_eq!(rows.len(), 3);
    for row in rows {
        assert_eq!(row.n, 3);
        assert!(row.mean_rss > 0);
        assert!(row.percent_of_core() >= 0.0);
    }
}

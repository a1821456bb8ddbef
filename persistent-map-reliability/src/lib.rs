//! The reliability harness of persistent-map: the code its tests share.
//!
//! The tests in `tests/` prove the durability contract of the README under
//! process crashes, power loss, full disks, bad files, races and a second
//! process. Most of them run the `pm-child` binary of this crate, which
//! opens a store, runs a seeded stream of changes and prints every
//! acknowledgement, then kill it, cut its I/O short or make it fail, and
//! check what a reopen finds against a model of the stream.
//!
//! `PM_RELIABILITY_SCALE` (default 1) multiplies the counts of every test,
//! for soak runs.

pub mod child;
pub mod cycle;
pub mod model;
pub mod oracle;
pub mod power;

pub mod stores;
pub mod stream;

/// The multiplier of every count, from `PM_RELIABILITY_SCALE` (default 1).
#[must_use]
pub fn scale() -> usize {
    std::env::var("PM_RELIABILITY_SCALE")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// `count` times [`scale`].
#[must_use]
pub fn scaled(count: usize) -> usize {
    count.saturating_mul(scale())
}

/// Prints the one figures line of a test, `figures: name=value ...`, to
/// stdout and stderr (nextest shows stderr of passing tests with
/// `--no-capture`; both end up in the log of a failing one).
pub fn figures(test: &str, pairs: &[(&str, u64)]) {
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let line = format!("figures[{test}]: {}", body.join(" "));
    println!("{line}");
    eprintln!("{line}");
}

/// Prints a visible skip notice for a check the machine cannot run.
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIP[{test}]: {why}");
    println!("{line}");
    eprintln!("{line}");
}

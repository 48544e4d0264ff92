//! What every benchmark reads before it starts: whether cargo only asked it to list or test
//! itself, and its settings from WARDEN_BENCH_* variables with their defaults.
#![allow(dead_code)] // each benchmark uses what it needs

use std::str::FromStr;

/// True when `cargo test --benches` (or a listing) runs the benchmark: there is nothing to
/// test, so it returns at once.
pub fn only_listing_or_testing() -> bool {
    std::env::args().any(|a| a == "--list" || a == "--test")
}

/// The variable `name` parsed, or `default` when it is unset or unparsable.
pub fn setting<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list in `name` (load steps), or `default` in the same form.
pub fn steps<T: FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

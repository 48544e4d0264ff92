//! The wall clock: Unix time for call records, registrations and screening windows.
//!
//! The core never reads it: the driver passes wall-clock time in with every input, so the
//! virtual-time tests set both clocks themselves (see `tests/common/core.rs`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock seconds since the Unix epoch (0 on a clock set before it).
pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Wall-clock milliseconds since the Unix epoch (0 on a clock set before it).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

//! How the signalling work splits between cores (`server.shards`): which shard a message,
//! a Call-ID or a call belongs to, and the lock around what every shard sees alike.
//!
//! A shard is a core of its own on a thread of its own, owning its calls outright. A
//! message goes to the shard its Call-ID hashes to, so a dialog's requests, responses and
//! timers all meet on one shard; the Call-IDs Warden makes are drawn until they hash to
//! the shard that makes them. What is not a call's own (registrations, the guard's rates
//! and bans, conference rooms, gateways' health, the counters) is one copy behind a
//! [`Shared`] lock, held for one short call at a time.

use std::sync::{Arc, Mutex, MutexGuard};

/// One shard's place among `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The only shard of an unsharded server.
    pub const ALONE: Shard = Shard { index: 0, count: 1 };

    /// Whether a Call-ID's messages come to this shard.
    pub fn owns_call_id(&self, call_id: &str) -> bool {
        of_call_id(call_id, self.count) == self.index
    }

    /// This shard's first call number; each next one is `count` further, so numbers are
    /// unique across shards and name their shard.
    pub fn first_call(&self) -> u64 {
        self.index as u64 + 1
    }
}

/// The shard of the messages carrying `call_id`, among `count`: FNV-1a, stable across
/// runs and builds (a restart must not move a dialog whose timers it recovers).
pub fn of_call_id(call_id: &str, count: usize) -> usize {
    of_call_id_bytes(call_id.as_bytes(), count)
}

/// [`of_call_id`] of a Call-ID still in the message's bytes.
pub fn of_call_id_bytes(call_id: &[u8], count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in call_id {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % count as u64) as usize
}

/// The shard that numbered call `call`.
pub fn of_call(call: u64, count: usize) -> usize {
    (call.saturating_sub(1) % count.max(1) as u64) as usize
}

/// State every shard reads and changes: one copy, locked for one call at a time. A panic
/// while it was held does not take the other shards down with it (the lock's poison is
/// ignored: every holder leaves the state consistent between its own steps).
pub struct Shared<T>(Arc<Mutex<T>>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Shared<T> {
        Shared(Arc::new(Mutex::new(value)))
    }

    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Shared<T> {
        Shared(self.0.clone())
    }
}

impl<T: Default> Default for Shared<T> {
    fn default() -> Shared<T> {
        Shared::new(T::default())
    }
}

impl<T> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_spread_over_the_shards_and_always_land_on_the_same_one() {
        let mut per_shard = [0usize; 4];
        for n in 0..4000 {
            let id = format!("{n:x}-caller@192.0.2.{}", n % 250);
            let shard = of_call_id(&id, 4);
            assert_eq!(shard, of_call_id(&id, 4));
            per_shard[shard] += 1;
        }
        // An even spread within 10%.
        assert!(
            per_shard.iter().all(|&n| (900..=1100).contains(&n)),
            "{per_shard:?}"
        );
        assert_eq!(of_call_id("anything", 1), 0);
    }

    #[test]
    fn call_numbers_name_the_shard_that_made_them() {
        for index in 0..3 {
            let shard = Shard { index, count: 3 };
            let numbers: Vec<u64> = (0..5).map(|k| shard.first_call() + 3 * k).collect();
            assert!(numbers.iter().all(|&n| of_call(n, 3) == index));
        }
        assert!(of_call(7, Shard::ALONE.count) == 0 && Shard::ALONE.owns_call_id("x"));
    }
}

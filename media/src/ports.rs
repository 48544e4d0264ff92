//! The RTP/RTCP port pool: an even RTP port and the odd RTCP port above it, per leg.
//! Allocation is O(1) and a pair returns to the pool when its handle is released.

use std::collections::VecDeque;

/// An RTP port (even) and its RTCP port (RTP + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortPair {
    pub rtp: u16,
}

impl PortPair {
    pub fn rtcp(self) -> u16 {
        self.rtp + 1
    }
}

/// No pair is free: the call must be refused (503), never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free RTP port pair in {first}-{last} ({in_use} in use)")]
pub struct PortsExhausted {
    pub first: u16,
    pub last: u16,
    pub in_use: usize,
}

/// Free pairs in a configured range, handed out least-recently-used first so a port just
/// released (whose late packets may still be in flight) is the last to be reused.
#[derive(Debug)]
pub struct PortPool {
    first: u16,
    last: u16,
    free: VecDeque<u16>,
    in_use: Vec<bool>,
}

impl PortPool {
    /// A pool over `first..=last`; odd bounds are rounded inward to whole pairs.
    pub fn new(first: u16, last: u16) -> PortPool {
        let start = first + (first % 2);
        let free: VecDeque<u16> = (start..last)
            .step_by(2)
            .filter(|p| p.checked_add(1).is_some_and(|r| r <= last))
            .collect();
        let slots = usize::from(last.saturating_sub(start)) / 2 + 1;
        PortPool {
            first: start,
            last,
            free,
            in_use: vec![false; slots],
        }
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn allocate(&mut self) -> Result<PortPair, PortsExhausted> {
        let rtp = self.free.pop_front().ok_or(PortsExhausted {
            first: self.first,
            last: self.last,
            in_use: self.in_use.iter().filter(|u| **u).count(),
        })?;
        let index = self.slot(rtp);
        if let Some(slot) = self.in_use.get_mut(index) {
            *slot = true;
        }
        Ok(PortPair { rtp })
    }

    /// Return a pair; releasing one twice or one from another pool is ignored.
    pub fn release(&mut self, pair: PortPair) {
        let slot = self.slot(pair.rtp);
        if let Some(used) = self.in_use.get_mut(slot)
            && *used
        {
            *used = false;
            self.free.push_back(pair.rtp);
        }
    }

    fn slot(&self, rtp: u16) -> usize {
        usize::from(rtp.wrapping_sub(self.first)) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_even_odd_and_exhaust_cleanly() {
        let mut pool = PortPool::new(20001, 20008);
        assert_eq!(
            pool.available(),
            3,
            "20002, 20004, 20006 (20008 has no RTCP port)"
        );
        let a = pool.allocate().unwrap();
        assert_eq!((a.rtp, a.rtcp()), (20002, 20003));
        pool.allocate().unwrap();
        pool.allocate().unwrap();
        let err = pool.allocate().unwrap_err();
        assert_eq!(err.in_use, 3);
        pool.release(a);
        pool.release(a);
        assert_eq!(pool.available(), 1, "double release ignored");
        assert_eq!(pool.allocate().unwrap(), a);
    }

    #[test]
    fn released_ports_go_to_the_back() {
        let mut pool = PortPool::new(30000, 30010);
        let a = pool.allocate().unwrap();
        pool.release(a);
        assert_ne!(pool.allocate().unwrap(), a);
    }
}

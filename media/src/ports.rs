//! The RTP/RTCP port pool: an even RTP port and the odd RTCP port above it, per leg.
//! Pairs whose sockets are still bound (parked on a relay worker) are reused first, once
//! they have rested a while; never-bound pairs next, least recently used first.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a parked pair rests before it is reused while unbound pairs remain: late
/// packets of the call that had it (drained and dropped by its worker meanwhile) have
/// stopped by then, so none can be taken for the next call's first packet.
pub const REST: Duration = Duration::from_secs(1);

/// Parked pairs looked at for one on the wanted worker before taking another.
const SCAN: usize = 16;

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

/// Free pairs in a configured range. A parked pair keeps its sockets bound on the worker
/// named by its `home` (so a call costs no socket, bind, epoll or close system call);
/// the others are bound when handed out. Parked pairs are preferred once rested, which
/// keeps the sockets open near the peak of concurrent calls rather than the whole range.
#[derive(Debug)]
pub struct PortPool {
    first: u16,
    last: u16,
    free: VecDeque<u16>,
    /// (RTP port, home worker, parked at), oldest first.
    parked: VecDeque<(u16, usize, Instant)>,
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
            parked: VecDeque::new(),
            in_use: vec![false; slots],
        }
    }

    pub fn available(&self) -> usize {
        self.free.len() + self.parked.len()
    }

    /// Pairs whose sockets are bound and parked now.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// A pair that was never bound (or whose sockets are gone): bind it.
    pub fn allocate(&mut self) -> Result<PortPair, PortsExhausted> {
        let rtp = self.free.pop_front().ok_or_else(|| self.exhausted())?;
        Ok(self.mark(rtp))
    }

    /// A pair for a stream on worker `want` (any, when None), and where its sockets are
    /// parked (None: unbound, bind it). In order: a rested pair parked on that worker (or
    /// the oldest, for any); an unbound pair; any parked pair, rested or not, on that
    /// worker first.
    pub fn take(
        &mut self,
        want: Option<usize>,
        now: Instant,
    ) -> Result<(PortPair, Option<usize>), PortsExhausted> {
        let on = |home: usize| want.is_none_or(|w| w == home);
        let rested = self
            .parked
            .iter()
            .take(SCAN)
            .position(|&(_, home, at)| on(home) && now.saturating_duration_since(at) >= REST);
        if let Some(i) = rested {
            return Ok(self.unpark(i));
        }
        if let Some(rtp) = self.free.pop_front() {
            return Ok((self.mark(rtp), None));
        }
        let any = self
            .parked
            .iter()
            .take(SCAN)
            .position(|&(_, home, _)| on(home))
            .unwrap_or(0);
        if any < self.parked.len() {
            return Ok(self.unpark(any));
        }
        Err(self.exhausted())
    }

    /// A pair whose sockets its stream's worker keeps bound (parks) from now.
    pub fn park(&mut self, pair: PortPair, home: usize, now: Instant) {
        if self.unmark(pair) {
            self.parked.push_back((pair.rtp, home, now));
        }
    }

    fn unpark(&mut self, i: usize) -> (PortPair, Option<usize>) {
        let (rtp, home, _) = self.parked.remove(i).unwrap_or((0, 0, Instant::now()));
        (self.mark(rtp), Some(home))
    }

    fn exhausted(&self) -> PortsExhausted {
        PortsExhausted {
            first: self.first,
            last: self.last,
            in_use: self.in_use.iter().filter(|u| **u).count(),
        }
    }

    fn mark(&mut self, rtp: u16) -> PortPair {
        let index = self.slot(rtp);
        if let Some(slot) = self.in_use.get_mut(index) {
            *slot = true;
        }
        PortPair { rtp }
    }

    /// Mark a pair free; false when it was not in use (released twice, or foreign).
    fn unmark(&mut self, pair: PortPair) -> bool {
        let slot = self.slot(pair.rtp);
        match self.in_use.get_mut(slot) {
            Some(used) if *used => {
                *used = false;
                true
            }
            _ => false,
        }
    }

    /// Return a pair with no sockets bound; releasing one twice or one from another pool
    /// is ignored.
    pub fn release(&mut self, pair: PortPair) {
        if self.unmark(pair) {
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

    #[test]
    fn rested_parked_pairs_come_first_then_unbound_then_any_parked() {
        let mut pool = PortPool::new(30000, 30007); // four pairs
        let t0 = Instant::now();
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        pool.park(a, 1, t0);
        pool.park(b, 0, t0);
        // Not rested: an unbound pair comes first.
        let (c, home) = pool.take(Some(0), t0).unwrap();
        assert_eq!(home, None);
        assert!(c != a && c != b);
        // Rested: the pair parked on the wanted worker, not the older one elsewhere.
        assert_eq!(pool.take(Some(0), t0 + REST).unwrap(), (b, Some(0)));
        let (_, home) = pool.take(None, t0).unwrap();
        assert_eq!(home, None, "the last unbound pair");
        // Only a fresh parked pair on another worker is left: taken all the same.
        assert_eq!(pool.take(Some(0), t0).unwrap(), (a, Some(1)));
        assert!(pool.take(None, t0).is_err());
        pool.park(a, 1, t0);
        pool.park(a, 1, t0);
        assert_eq!(pool.available(), 1, "double park ignored");
    }
}

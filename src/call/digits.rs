//! Collecting a caller's key presses for an IVR menu: digits arrive (from RFC 4733 events or
//! SIP INFO, the caller of `push` need not care) until a limit, a terminator key, or a
//! timeout. Pure state over the time it is given; the core drives it.

use std::time::{Duration, Instant};

/// What to collect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigitSpec {
    /// Stop after this many digits (the terminator does not count).
    pub max_digits: usize,
    /// A key that ends the input early and is not part of it (usually '#').
    pub terminator: Option<char>,
    /// Give up waiting for the first digit after this long...
    pub first_digit_timeout: Duration,
    /// ...and for each next one after this long.
    pub inter_digit_timeout: Duration,
    /// The whole input, however it goes, takes at most this long.
    pub overall_timeout: Duration,
}

impl Default for DigitSpec {
    fn default() -> Self {
        DigitSpec {
            max_digits: 1,
            terminator: Some('#'),
            first_digit_timeout: Duration::from_secs(5),
            inter_digit_timeout: Duration::from_secs(3),
            overall_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    MaxDigits,
    Terminator,
    /// The caller stopped pressing keys (no digit at all when `digits` is empty).
    InterDigitTimeout,
    OverallTimeout,
}

/// A finished input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    pub digits: String,
    pub ended: Ended,
}

#[derive(Debug, Clone)]
pub struct DigitCollector {
    spec: DigitSpec,
    digits: String,
    give_up: Instant,
    next_deadline: Instant,
    done: bool,
}

impl DigitCollector {
    pub fn new(spec: DigitSpec, now: Instant) -> DigitCollector {
        DigitCollector {
            give_up: now + spec.overall_timeout,
            next_deadline: now + spec.first_digit_timeout,
            spec,
            digits: String::new(),
            done: false,
        }
    }

    /// A key press at `now`; returns the input when it completes it.
    pub fn push(&mut self, key: char, now: Instant) -> Option<Collected> {
        if self.done {
            return None;
        }
        if let Some(timed_out) = self.poll(now) {
            return Some(timed_out);
        }
        if Some(key) == self.spec.terminator {
            return Some(self.finish(Ended::Terminator));
        }
        self.digits.push(key);
        if self.digits.len() >= self.spec.max_digits {
            return Some(self.finish(Ended::MaxDigits));
        }
        self.next_deadline = now + self.spec.inter_digit_timeout;
        None
    }

    /// The input if a timeout has ended it by `now`.
    pub fn poll(&mut self, now: Instant) -> Option<Collected> {
        if self.done {
            return None;
        }
        if now >= self.give_up {
            return Some(self.finish(Ended::OverallTimeout));
        }
        if now >= self.next_deadline {
            return Some(self.finish(Ended::InterDigitTimeout));
        }
        None
    }

    /// When `poll` must next be called.
    pub fn deadline(&self) -> Option<Instant> {
        (!self.done).then(|| self.next_deadline.min(self.give_up))
    }

    fn finish(&mut self, ended: Ended) -> Collected {
        self.done = true;
        Collected {
            digits: std::mem::take(&mut self.digits),
            ended,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max_digits: usize) -> DigitSpec {
        DigitSpec {
            max_digits,
            ..DigitSpec::default()
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn ends_at_the_digit_limit() {
        let t0 = Instant::now();
        let mut c = DigitCollector::new(spec(3), t0);
        assert_eq!(c.push('1', at(t0, 500)), None);
        assert_eq!(c.push('2', at(t0, 900)), None);
        assert_eq!(
            c.push('3', at(t0, 1200)),
            Some(Collected {
                digits: "123".into(),
                ended: Ended::MaxDigits
            })
        );
        assert_eq!(c.push('4', at(t0, 1300)), None, "done is done");
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn the_terminator_ends_early_and_is_not_kept() {
        let t0 = Instant::now();
        let mut c = DigitCollector::new(spec(10), t0);
        c.push('4', at(t0, 100));
        c.push('2', at(t0, 200));
        let done = c.push('#', at(t0, 300)).expect("ended");
        assert_eq!(
            (done.digits.as_str(), done.ended),
            ("42", Ended::Terminator)
        );
    }

    #[test]
    fn timeouts_first_digit_inter_digit_and_overall() {
        let t0 = Instant::now();
        // Nothing pressed: the first-digit timeout, exactly at 5 s.
        let mut c = DigitCollector::new(spec(4), t0);
        assert_eq!(c.deadline(), Some(at(t0, 5000)));
        assert_eq!(c.poll(at(t0, 4999)), None);
        let done = c.poll(at(t0, 5000)).expect("timed out");
        assert_eq!(
            (done.digits.as_str(), done.ended),
            ("", Ended::InterDigitTimeout)
        );

        // Two digits, then silence: 3 s after the last.
        let mut c = DigitCollector::new(spec(4), t0);
        c.push('7', at(t0, 1000));
        c.push('8', at(t0, 2000));
        assert_eq!(c.deadline(), Some(at(t0, 5000)));
        let done = c.poll(at(t0, 5000)).expect("timed out");
        assert_eq!(
            (done.digits.as_str(), done.ended),
            ("78", Ended::InterDigitTimeout)
        );

        // A slow but steady caller hits the overall limit.
        let mut c = DigitCollector::new(
            DigitSpec {
                max_digits: 20,
                overall_timeout: Duration::from_secs(10),
                ..DigitSpec::default()
            },
            t0,
        );
        for i in 1..=4 {
            assert_eq!(c.push('1', at(t0, 2000 * i)), None);
        }
        assert_eq!(c.deadline(), Some(at(t0, 10_000)));
        let done = c.push('2', at(t0, 10_001)).expect("over");
        assert_eq!(
            (done.digits.as_str(), done.ended),
            ("1111", Ended::OverallTimeout)
        );
    }
}

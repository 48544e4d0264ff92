//! Reliable provisional responses (RFC 3262) as Warden sends them to a caller: RSeq, the
//! retransmissions until the PRACK, and what must wait for it. Sans-IO: responses and time
//! in, what to send out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::message::Response;

/// A reliable provisional response not yet acknowledged.
#[derive(Debug)]
struct Unacked {
    rseq: u32,
    bytes: Bytes,
    has_sdp: bool,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

/// What `poll` asks of the caller of this machine.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Send these bytes again (the unacknowledged provisional).
    Retransmit(Bytes),
    /// 64*T1 passed without a PRACK: the call fails (RFC 3262 3 says 5xx).
    GaveUp,
}

/// The provisionals of one INVITE sent reliably: one unacknowledged at a time (RFC 3262 3),
/// later ones queued, and a 2xx held while a provisional carrying SDP waits for its PRACK.
#[derive(Debug)]
pub struct ReliableProvisionals {
    next_rseq: u32,
    cseq: u32,
    t1: Duration,
    reliable_transport: bool,
    unacked: Option<Unacked>,
    queued: VecDeque<Response>,
    held_final: Option<Response>,
}

impl ReliableProvisionals {
    /// For the INVITE with CSeq `cseq`; `reliable_transport`: TCP/TLS (no retransmission,
    /// but the same give-up time). The first RSeq is drawn at random (RFC 3262 3 asks that
    /// it be between 1 and 2**31 - 1).
    pub fn new(cseq: u32, t1: Duration, reliable_transport: bool, first_rseq: u32) -> Self {
        ReliableProvisionals {
            next_rseq: first_rseq.clamp(1, 1 << 30),
            cseq,
            t1,
            reliable_transport,
            unacked: None,
            queued: VecDeque::new(),
            held_final: None,
        }
    }

    /// A provisional (101-199) for the caller: stamped and returned for sending now, or
    /// queued behind the one still waiting for its PRACK.
    pub fn provisional(&mut self, resp: Response, now: Instant) -> Option<Response> {
        if self.unacked.is_some() {
            self.queued.push_back(resp);
            return None;
        }
        Some(self.stamp(resp, now))
    }

    /// A 2xx for the caller: returned to send now, or held (None) while a provisional with
    /// SDP is unacknowledged (RFC 3262 3: the offer/answer must complete first).
    pub fn final_ok(&mut self, resp: Response) -> Option<Response> {
        if self.unacked.as_ref().is_some_and(|u| u.has_sdp) {
            self.held_final = Some(resp);
            return None;
        }
        self.queued.clear();
        self.unacked = None;
        Some(resp)
    }

    /// A failure was sent: nothing more to retransmit or send.
    pub fn finish(&mut self) {
        self.unacked = None;
        self.queued.clear();
        self.held_final = None;
    }

    /// The caller's PRACK with `RAck: rseq cseq INVITE`. None when it acknowledges nothing
    /// outstanding (answered 481); else what may be sent now: the next queued
    /// provisional, or the 2xx that waited.
    pub fn prack(&mut self, rseq: u32, cseq: u32, now: Instant) -> Option<Vec<Response>> {
        match &self.unacked {
            Some(u) if u.rseq == rseq && cseq == self.cseq => {}
            _ => return None,
        }
        self.unacked = None;
        let mut out = Vec::new();
        if let Some(ok) = self.held_final.take() {
            self.queued.clear();
            out.push(ok);
        } else if let Some(next) = self.queued.pop_front() {
            out.push(self.stamp(next, now));
        }
        Some(out)
    }

    /// An unacknowledged provisional whose PRACK is still awaited.
    pub fn awaiting_prack(&self) -> bool {
        self.unacked.is_some()
    }

    pub fn next_wake(&self) -> Option<Instant> {
        self.unacked.as_ref().map(|u| u.next.min(u.give_up))
    }

    /// Time passed: a retransmission due, or the give-up.
    pub fn poll(&mut self, now: Instant) -> Option<Due> {
        let u = self.unacked.as_mut()?;
        if u.give_up <= now {
            self.finish();
            return Some(Due::GaveUp);
        }
        if u.next > now {
            return None;
        }
        // RFC 3262 3: T1, doubling each time (no T2 cap), until 64*T1.
        u.interval *= 2;
        u.next = (now + u.interval).min(u.give_up);
        Some(Due::Retransmit(u.bytes.clone()))
    }

    fn stamp(&mut self, mut resp: Response, now: Instant) -> Response {
        let rseq = self.next_rseq;
        self.next_rseq += 1;
        let _ = resp.set_header("RSeq", &rseq.to_string());
        if !resp.lists("Require", "100rel") {
            let _ = resp.push_header("Require", "100rel");
        }
        let give_up = now + self.t1 * 64;
        self.unacked = Some(Unacked {
            rseq,
            bytes: resp.to_bytes(),
            has_sdp: !resp.body().is_empty(),
            next: if self.reliable_transport {
                give_up
            } else {
                now + self.t1
            },
            interval: self.t1,
            give_up,
        });
        resp
    }
}

/// `RAck: rseq cseq method` (RFC 3262 7.2) as (rseq, cseq).
pub fn parse_rack(value: &str) -> Option<(u32, u32)> {
    let mut fields = value.split_whitespace();
    let rseq = fields.next()?.parse().ok()?;
    let cseq = fields.next()?.parse().ok()?;
    fields
        .next()
        .filter(|m| m.eq_ignore_ascii_case("INVITE"))
        .map(|_| (rseq, cseq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{Limits, Message};

    fn ringing(body: &str) -> Response {
        let text = format!(
            "SIP/2.0 183 Session Progress\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 7 INVITE\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        match Message::parse_datagram(Bytes::from(text), &Limits::default()) {
            Ok(Message::Response(r)) => r,
            other => panic!("a response: {other:?}"),
        }
    }

    const T1: Duration = Duration::from_millis(500);

    #[test]
    fn retransmits_from_t1_doubling_and_gives_up_at_64_t1() {
        let start = Instant::now();
        let mut m = ReliableProvisionals::new(7, T1, false, 100);
        let sent = m.provisional(ringing(""), start).expect("sent at once");
        assert_eq!(sent.header("RSeq").as_deref(), Some("100"));
        assert!(sent.lists("Require", "100rel"));
        let mut times = Vec::new();
        let mut now = start;
        while let Some(at) = m.next_wake() {
            now = at;
            match m.poll(now) {
                Some(Due::Retransmit(_)) => times.push(now.duration_since(start).as_millis()),
                Some(Due::GaveUp) => break,
                None => panic!("woken for nothing"),
            }
        }
        assert_eq!(times, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(now.duration_since(start), T1 * 64);
        assert!(!m.awaiting_prack());
    }

    #[test]
    fn one_unacknowledged_at_a_time_and_the_2xx_waits_for_the_sdps_prack() {
        let now = Instant::now();
        let mut m = ReliableProvisionals::new(7, T1, false, 5);
        assert!(m.provisional(ringing("v=0\r\n"), now).is_some());
        assert!(m.provisional(ringing(""), now).is_none(), "queued");
        assert!(m.final_ok(ringing("")).is_none(), "held");
        assert!(m.prack(4, 7, now).is_none(), "wrong RSeq");
        assert!(m.prack(5, 6, now).is_none(), "wrong CSeq");
        let released = m.prack(5, 7, now).expect("acknowledged");
        assert_eq!(
            released.len(),
            1,
            "the held 2xx, the queued provisional dropped"
        );
        assert!(released[0].header("RSeq").is_none());
        assert!(!m.awaiting_prack());
    }

    #[test]
    fn queued_provisionals_go_out_one_per_prack() {
        let now = Instant::now();
        let mut m = ReliableProvisionals::new(1, T1, true, 9);
        m.provisional(ringing(""), now);
        assert!(m.provisional(ringing(""), now).is_none());
        let next = m.prack(9, 1, now).expect("acknowledged");
        assert_eq!(next[0].header("RSeq").as_deref(), Some("10"));
        assert_eq!(m.next_wake(), Some(now + T1 * 64), "TCP: no retransmission");
        assert_eq!(parse_rack("10 1 INVITE"), Some((10, 1)));
        assert_eq!(parse_rack("10 x INVITE"), None);
    }
}

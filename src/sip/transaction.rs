//! The transaction layer (RFC 3261 section 17) with virtual time: sipx-sip's sans-IO machines,
//! plus the deadlines, destinations and CANCEL matching a driver needs. No I/O, no clock.
//!
//! Time enters as `now` on every call and leaves as [`Transactions::poll_timeout`]; tests
//! drive every timer (A, B, D, E, F, G, H, I, J, K and 100 Trying) by advancing `now`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use sipx_sip::transaction::{
    Dispatch, Output, Reliability, Timer, Timers, TransactionKey, TransactionLayer, TuEvent,
};

use super::message::{Message, Request, Response};
use super::transport::Destination;

/// Opaque handle naming one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxKey(TransactionKey);

/// RFC 3261 timer constants.
#[derive(Debug, Clone, Copy)]
pub struct TimerConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// What the transaction layer hands up or out.
#[derive(Debug)]
pub enum TxEvent {
    /// Put these bytes on the wire.
    Send(Destination, Message),
    /// A new request for the transaction user (never a retransmission).
    Request(TxKey, Request, Destination),
    /// A response on a client transaction.
    Response(TxKey, Response),
    /// A request or response matching no transaction: ACK for 2xx, stray 2xx retransmission.
    Stray(Message, Destination),
    /// A client transaction got no final answer in time (Timer B/F), or the transport failed.
    Timeout(TxKey),
}

#[derive(Debug)]
struct Entry {
    dest: Destination,
    timers: HashMap<Timer, Instant>,
}

/// All transactions in flight.
pub struct Transactions {
    layer: TransactionLayer,
    entries: HashMap<TransactionKey, Entry>,
    deadlines: BTreeMap<(Instant, u64), (TransactionKey, Timer)>,
    seq: u64,
    events: VecDeque<TxEvent>,
}

fn reliability(dest: &Destination) -> Reliability {
    if dest.transport.is_reliable() {
        Reliability::Reliable
    } else {
        Reliability::Unreliable
    }
}

impl Transactions {
    pub fn new(timers: TimerConfig) -> Self {
        Transactions {
            layer: TransactionLayer::new(Timers {
                t1: timers.t1,
                t2: timers.t2,
                t4: timers.t4,
            }),
            entries: HashMap::new(),
            deadlines: BTreeMap::new(),
            seq: 0,
            events: VecDeque::new(),
        }
    }

    /// Transactions in flight as (client, server); a leak shows up here first.
    pub fn len(&self) -> (usize, usize) {
        self.layer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layer.is_empty()
    }

    /// A message arrived from `from`.
    pub fn receive(&mut self, message: Message, from: Destination, now: Instant) {
        let rel = reliability(&from);
        match self.layer.receive(message.into_sipx(), rel) {
            Dispatch::Created { key, outputs } => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        dest: from,
                        timers: HashMap::new(),
                    },
                );
                self.apply(&key, outputs, now);
            }
            Dispatch::Matched { key, outputs } => self.apply(&key, outputs, now),
            Dispatch::Unmatched(m) => self
                .events
                .push_back(TxEvent::Stray(Message::from_sipx(*m), from)),
        }
    }

    /// Start a client transaction sending `request` to `dest`.
    pub fn send_request(
        &mut self,
        request: Request,
        dest: Destination,
        now: Instant,
    ) -> Option<TxKey> {
        let rel = reliability(&dest);
        let (key, outputs) = self.layer.send_request(request.0, rel)?;
        self.entries.insert(
            key.clone(),
            Entry {
                dest,
                timers: HashMap::new(),
            },
        );
        self.apply(&key, outputs, now);
        Some(TxKey(key))
    }

    /// Answer a server transaction.
    pub fn respond(&mut self, key: &TxKey, response: Response, now: Instant) {
        let outputs = self.layer.send_response(&key.0, response.0);
        self.apply(&key.0, outputs, now);
    }

    /// The server INVITE transaction a CANCEL names (RFC 3261 9.2).
    pub fn cancelled_invite(&self, cancel: &Request) -> Option<TxKey> {
        let key = TransactionKey::for_cancelled_invite(&cancel.0)?;
        self.layer.server_request(&key)?;
        Some(TxKey(key))
    }

    /// The request that opened a server transaction.
    pub fn server_request(&self, key: &TxKey) -> Option<Request> {
        self.layer.server_request(&key.0).cloned().map(Request)
    }

    /// The request a client transaction sent.
    pub fn client_request(&self, key: &TxKey) -> Option<Request> {
        self.layer.client_request(&key.0).cloned().map(Request)
    }

    /// Where a transaction's messages go.
    pub fn destination(&self, key: &TxKey) -> Option<Destination> {
        self.entries.get(&key.0).map(|e| e.dest.clone())
    }

    /// The transport failed to deliver for this transaction.
    pub fn transport_error(&mut self, key: &TxKey, now: Instant) {
        let outputs = self.layer.on_transport_error(&key.0);
        self.apply(&key.0, outputs, now);
    }

    /// When the next timer is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(t, _)| *t)
    }

    /// Fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (due, _) = *entry.key();
            let (key, timer) = entry.remove();
            let live = self
                .entries
                .get_mut(&key)
                .and_then(|e| e.timers.get(&timer).copied());
            if live != Some(due) {
                continue; // cleared or re-armed since
            }
            if let Some(e) = self.entries.get_mut(&key) {
                e.timers.remove(&timer);
            }
            let outputs = self.layer.on_timer(&key, timer);
            self.apply(&key, outputs, now);
        }
    }

    /// The next event for the driver or the transaction user.
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    fn apply(&mut self, key: &TransactionKey, outputs: Vec<Output>, now: Instant) {
        for output in outputs {
            match output {
                Output::Send(m) => {
                    if let Some(e) = self.entries.get(key) {
                        self.events
                            .push_back(TxEvent::Send(e.dest.clone(), Message::from_sipx(*m)));
                    }
                }
                Output::SetTimer { timer, after } => {
                    let due = now + after;
                    if let Some(e) = self.entries.get_mut(key) {
                        e.timers.insert(timer, due);
                        self.seq += 1;
                        self.deadlines.insert((due, self.seq), (key.clone(), timer));
                    }
                }
                Output::ClearTimer(timer) => {
                    if let Some(e) = self.entries.get_mut(key) {
                        e.timers.remove(&timer);
                    }
                }
                Output::ToTu(event) => match *event {
                    TuEvent::Request(r) => {
                        let dest = self.entries.get(key).map(|e| e.dest.clone());
                        if let Some(dest) = dest {
                            self.events.push_back(TxEvent::Request(
                                TxKey(key.clone()),
                                Request(*r),
                                dest,
                            ));
                        }
                    }
                    TuEvent::Response(r) => self
                        .events
                        .push_back(TxEvent::Response(TxKey(key.clone()), Response(*r))),
                    TuEvent::Ack(a) => {
                        let dest = self.entries.get(key).map(|e| e.dest.clone());
                        if let Some(dest) = dest {
                            self.events
                                .push_back(TxEvent::Stray(Message::Request(Request(*a)), dest));
                        }
                    }
                    TuEvent::Timeout | TuEvent::TransportError => {
                        self.events.push_back(TxEvent::Timeout(TxKey(key.clone())))
                    }
                    _ => {}
                },
                Output::Terminated(_) => {
                    self.entries.remove(key);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{Limits, Method, Uri};
    use crate::sip::transport::Transport;
    use bytes::Bytes;

    fn dest(transport: Transport) -> Destination {
        Destination {
            transport,
            addr: "127.0.0.1:5070".parse().unwrap(),
            conn: None,
        }
    }

    fn request(method: Method, branch: &str) -> Request {
        let uri = Uri::parse("sip:bob@127.0.0.1").unwrap();
        Request::builder(method, &uri)
            .header(
                "Via",
                &format!("SIP/2.0/UDP 127.0.0.1:5060;branch={branch}"),
            )
            .header("From", "<sip:alice@x>;tag=a")
            .header("To", "<sip:bob@x>")
            .header("Call-ID", "c1")
            .cseq(1)
            .max_forwards(70)
            .build()
            .unwrap()
    }

    fn sends(tx: &mut Transactions) -> Vec<Message> {
        let mut out = Vec::new();
        let mut rest = VecDeque::new();
        while let Some(e) = tx.poll_event() {
            match e {
                TxEvent::Send(_, m) => out.push(m),
                other => rest.push_back(other),
            }
        }
        tx.events = rest;
        out
    }

    fn events(tx: &mut Transactions) -> Vec<TxEvent> {
        std::iter::from_fn(|| tx.poll_event()).collect()
    }

    fn roundtrip(m: &Message) -> Message {
        Message::parse_datagram(m.to_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn invite_client_retransmits_on_timer_a_doubling_then_times_out_on_b() {
        let t0 = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default());
        tx.send_request(
            request(Method::Invite, "z9hG4bKa"),
            dest(Transport::Udp),
            t0,
        );
        assert_eq!(sends(&mut tx).len(), 1);
        // A fires at 0.5, 1.5, 3.5, 7.5 ... seconds: intervals double.
        let mut at = Duration::ZERO;
        let mut interval = Duration::from_millis(500);
        for _ in 0..6 {
            at += interval;
            tx.handle_timeout(t0 + at - Duration::from_millis(1));
            assert!(sends(&mut tx).is_empty(), "not before {at:?}");
            tx.handle_timeout(t0 + at);
            assert_eq!(sends(&mut tx).len(), 1, "retransmit at {at:?}");
            interval *= 2;
        }
        tx.handle_timeout(t0 + Duration::from_secs(32));
        let ev = events(&mut tx);
        assert!(
            ev.iter().any(|e| matches!(e, TxEvent::Timeout(_))),
            "Timer B"
        );
        assert!(tx.is_empty());
    }

    #[test]
    fn non_invite_client_timer_e_caps_at_t2_and_f_times_out() {
        let t0 = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default());
        tx.send_request(
            request(Method::Options, "z9hG4bKe"),
            dest(Transport::Udp),
            t0,
        );
        sends(&mut tx);
        let mut count = 0;
        let mut t = t0;
        while t < t0 + Duration::from_millis(31_900) {
            t += Duration::from_millis(100);
            tx.handle_timeout(t);
            count += sends(&mut tx).len();
        }
        // 0.5, 1.5, 3.5, 7.5, then every 4 s (T2) until 32 s: 4 + 6 = 10 retransmissions.
        assert_eq!(count, 10);
        tx.handle_timeout(t0 + Duration::from_secs(32));
        assert!(
            events(&mut tx)
                .iter()
                .any(|e| matches!(e, TxEvent::Timeout(_)))
        );
    }

    #[test]
    fn reliable_transport_sets_no_retransmission_timers() {
        let t0 = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default());
        tx.send_request(
            request(Method::Invite, "z9hG4bKt"),
            dest(Transport::Tcp),
            t0,
        );
        sends(&mut tx);
        tx.handle_timeout(t0 + Duration::from_secs(31));
        assert!(sends(&mut tx).is_empty());
        tx.handle_timeout(t0 + Duration::from_secs(32));
        assert!(
            events(&mut tx)
                .iter()
                .any(|e| matches!(e, TxEvent::Timeout(_)))
        );
    }

    #[test]
    fn invite_client_acks_non_2xx_itself_and_absorbs_retransmissions_until_timer_d() {
        let t0 = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default());
        let invite = request(Method::Invite, "z9hG4bKd");
        tx.send_request(invite.clone(), dest(Transport::Udp), t0);
        sends(&mut tx);
        let mut busy = Response::to_request(&invite, 486, "Busy Here");
        busy.set_to_tag("b");
        let busy = Message::Response(busy);
        tx.receive(roundtrip(&busy), dest(Transport::Udp), t0);
        let ev = events(&mut tx);
        let acks = ev
            .iter()
            .filter(
                |e| matches!(e, TxEvent::Send(_, Message::Request(r)) if r.method() == Method::Ack),
            )
            .count();
        assert_eq!(acks, 1);
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, TxEvent::Response(..)))
                .count(),
            1
        );
        // A retransmitted 486 is ACKed again but not passed up.
        tx.receive(
            roundtrip(&busy),
            dest(Transport::Udp),
            t0 + Duration::from_secs(1),
        );
        let ev = events(&mut tx);
        assert_eq!(ev.len(), 1);
        assert!(
            matches!(&ev[0], TxEvent::Send(_, Message::Request(r)) if r.method() == Method::Ack)
        );
        tx.handle_timeout(t0 + Duration::from_secs(32));
        assert!(tx.is_empty(), "Timer D ends it");
    }

    #[test]
    fn invite_server_sends_100_at_200ms_retransmits_final_on_g_and_ends_on_h() {
        let t0 = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default());
        let invite = Message::Request(request(Method::Invite, "z9hG4bKs"));
        tx.receive(roundtrip(&invite), dest(Transport::Udp), t0);
        let key = match events(&mut tx).remove(0) {
            TxEvent::Request(k, _, _) => k,
            other => panic!("{other:?}"),
        };
        tx.handle_timeout(t0 + Duration::from_millis(200));
        let sent = sends(&mut tx);
        assert!(matches!(&sent[..], [Message::Response(r)] if r.status() == 100));
        // A retransmitted INVITE gets the last response again, not a new TU event.
        tx.receive(
            roundtrip(&invite),
            dest(Transport::Udp),
            t0 + Duration::from_millis(300),
        );
        let ev = events(&mut tx);
        assert_eq!(ev.len(), 1);
        let Some(Message::Request(req)) = Some(invite.clone()) else {
            unreachable!()
        };
        tx.respond(
            &key,
            Response::to_request(&req, 486, "Busy Here"),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(sends(&mut tx).len(), 1);
        tx.handle_timeout(t0 + Duration::from_millis(1500));
        assert_eq!(sends(&mut tx).len(), 1, "Timer G");
        tx.handle_timeout(t0 + Duration::from_millis(2500));
        assert_eq!(sends(&mut tx).len(), 1, "Timer G doubled");
        tx.handle_timeout(t0 + Duration::from_secs(33));
        assert!(
            events(&mut tx)
                .iter()
                .any(|e| matches!(e, TxEvent::Timeout(_)))
        );
        assert!(tx.is_empty(), "Timer H ends it");
    }

    #[test]
    fn invite_server_ack_confirms_and_timer_i_ends_it() {
        let t0 = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default());
        let invite = request(Method::Invite, "z9hG4bKi");
        tx.receive(
            roundtrip(&Message::Request(invite.clone())),
            dest(Transport::Udp),
            t0,
        );
        let TxEvent::Request(key, _, _) = events(&mut tx).remove(0) else {
            panic!()
        };
        let mut resp = Response::to_request(&invite, 404, "Not Found");
        resp.set_to_tag("t");
        tx.respond(&key, resp, t0);
        sends(&mut tx);
        let ack = Request::builder(Method::Ack, &invite.uri())
            .header("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKi")
            .header("From", "<sip:alice@x>;tag=a")
            .header("To", "<sip:bob@x>;tag=t")
            .header("Call-ID", "c1")
            .cseq(1)
            .build()
            .unwrap();
        tx.receive(roundtrip(&Message::Request(ack)), dest(Transport::Udp), t0);
        assert!(events(&mut tx).is_empty(), "ACK for non-2xx is absorbed");
        tx.handle_timeout(t0 + Duration::from_millis(4999));
        assert!(!tx.is_empty());
        tx.handle_timeout(t0 + Duration::from_secs(5));
        assert!(tx.is_empty(), "Timer I (T4)");
    }

    #[test]
    fn non_invite_server_absorbs_retransmissions_until_timer_j() {
        let t0 = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default());
        let options = request(Method::Options, "z9hG4bKj");
        let wire = Message::Request(options.clone());
        tx.receive(roundtrip(&wire), dest(Transport::Udp), t0);
        let TxEvent::Request(key, _, _) = events(&mut tx).remove(0) else {
            panic!()
        };
        tx.respond(&key, Response::to_request(&options, 200, "OK"), t0);
        assert_eq!(sends(&mut tx).len(), 1);
        tx.receive(
            roundtrip(&wire),
            dest(Transport::Udp),
            t0 + Duration::from_secs(1),
        );
        let ev = events(&mut tx);
        assert!(matches!(&ev[..], [TxEvent::Send(_, Message::Response(r))] if r.status() == 200));
        tx.handle_timeout(t0 + Duration::from_secs(32));
        assert!(tx.is_empty(), "Timer J");
    }

    #[test]
    fn non_invite_client_timer_k_absorbs_late_responses() {
        let t0 = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default());
        let bye = request(Method::Bye, "z9hG4bKk");
        tx.send_request(bye.clone(), dest(Transport::Udp), t0);
        sends(&mut tx);
        let ok = Message::Response(Response::to_request(&bye, 200, "OK"));
        tx.receive(roundtrip(&ok), dest(Transport::Udp), t0);
        assert_eq!(events(&mut tx).len(), 1);
        tx.receive(roundtrip(&ok), dest(Transport::Udp), t0);
        assert!(events(&mut tx).is_empty(), "absorbed in Completed");
        tx.handle_timeout(t0 + Duration::from_secs(5));
        assert!(tx.is_empty(), "Timer K (T4)");
    }

    #[test]
    fn cancel_finds_the_invite_it_cancels() {
        let t0 = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default());
        let invite = request(Method::Invite, "z9hG4bKc");
        tx.receive(
            roundtrip(&Message::Request(invite.clone())),
            dest(Transport::Udp),
            t0,
        );
        events(&mut tx);
        let cancel = request(Method::Cancel, "z9hG4bKc");
        assert!(tx.cancelled_invite(&cancel).is_some());
        let other = request(Method::Cancel, "z9hG4bKother");
        assert!(tx.cancelled_invite(&other).is_none());
        let _ = Bytes::new();
    }
}

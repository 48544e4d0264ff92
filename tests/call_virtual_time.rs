//! The B2BUA core driven without sockets or sleeps: messages and a virtual clock in, bytes out.
//! Covers the timers of a call: no-answer timeout, 2xx retransmission, missing ACK, Timer B.

mod common;

use std::time::Duration;

use bytes::Bytes;
use warden::config::Config;
use warden::sip::message::{Message, Request, Response};

use common::core::{Net, Phone, UNIX_START_MS, requests, responses, statuses};

fn sdp(port: u16, direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na={direction}\r\n"
    )
}

const ALICE: &str = "127.0.0.1:7001";
const BOB: &str = "127.0.0.1:7002";

fn parse(text: &str) -> Message {
    common::core::parse(Bytes::copy_from_slice(text.as_bytes()))
}

/// The shared virtual-time net with bob registered, fed hand-written messages: these
/// tests check the exact bytes of the timer-driven exchanges.
struct Harness(Net);

impl std::ops::Deref for Harness {
    type Target = Net;
    fn deref(&self) -> &Net {
        &self.0
    }
}

impl std::ops::DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut Net {
        &mut self.0
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with_config(Config::default())
    }

    fn with_config(config: Config) -> Harness {
        let mut net = Net::with_config(config);
        Phone::new("bob", BOB).register(&mut net);
        Harness(net)
    }

    fn input(&mut self, text: &str, from: &str) {
        self.0.deliver(from, &parse(text));
    }

    fn send(&mut self, m: Message, from: &str) {
        self.0.deliver(from, &m);
    }

    /// Everything sent since the last look, with its addressee.
    fn sent(&mut self) -> Vec<(String, Message)> {
        self.0.collect(); // after a test called the core directly
        self.0.take_all()
    }

    fn invite(&mut self) -> Request {
        self.invite_with("")
    }

    fn invite_with(&mut self, sdp: &str) -> Request {
        let ct = if sdp.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let text = format!(
            "INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKa1;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=al\r\nTo: <sip:bob@127.0.0.1>\r\n\
             Call-ID: call-a\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{ALICE}>\r\n{ct}Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        self.input(&text, ALICE);
        let Message::Request(r) = parse(&text) else {
            unreachable!()
        };
        r
    }
}

/// The callee's answer to Warden's INVITE, tagged, with a Contact.
fn callee_answer(b_invite: &Request, status: u16) -> Response {
    let mut resp = Response::to_request(b_invite, status, "OK");
    resp.set_to_tag("bt");
    resp.push_header("Contact", &format!("<sip:bob@{BOB}>"))
        .unwrap();
    resp
}

/// What went to `to`, oldest first (the harness's helpers then pick from it).
fn sent_to(out: &[(String, Message)], to: &str) -> Vec<Message> {
    out.iter()
        .filter(|(d, _)| d == to)
        .map(|(_, m)| m.clone())
        .collect()
}

fn statuses_to(out: &[(String, Message)], to: &str) -> Vec<u16> {
    statuses(&sent_to(out, to))
}

fn requests_to(out: &[(String, Message)], to: &str, method: &str) -> Vec<Request> {
    requests(&sent_to(out, to), method)
}

fn responses_to(out: &[(String, Message)], to: &str) -> Vec<Response> {
    responses(&sent_to(out, to))
}

#[test]
fn no_answer_timeout_sends_408_to_caller_and_cancel_to_callee() {
    let mut h = Harness::new();
    h.invite();
    let out = h.sent();
    assert_eq!(
        responses_to(&out, ALICE)[0].status(),
        100,
        "100 Trying at once"
    );
    let b_invite = requests_to(&out, BOB, "INVITE").remove(0);
    let mut ringing = Response::to_request(&b_invite, 180, "Ringing");
    ringing.set_to_tag("bt");
    h.send(Message::Response(ringing), BOB);
    assert_eq!(responses_to(&h.sent(), ALICE)[0].status(), 180);
    h.advance(Duration::from_secs(59));
    assert!(
        requests_to(&h.sent(), BOB, "CANCEL").is_empty(),
        "not before 60 s"
    );
    h.advance(Duration::from_secs(1));
    let out = h.sent();
    assert_eq!(statuses_to(&out, ALICE), vec![408]);
    assert_eq!(requests_to(&out, BOB, "CANCEL").len(), 1);
}

#[test]
fn answer_is_retransmitted_until_ack_and_a_missing_ack_ends_the_call() {
    let mut h = Harness::new();
    h.invite();
    let b_invite = requests_to(&h.sent(), BOB, "INVITE").remove(0);
    let ok = callee_answer(&b_invite, 200);
    h.send(Message::Response(ok), BOB);
    assert_eq!(responses_to(&h.sent(), ALICE)[0].status(), 200);
    // Retransmissions at T1, 2T1, 4T1 ... capped at T2.
    let mut seen = 0;
    for _ in 0..8 {
        h.advance(Duration::from_millis(500));
        seen += responses_to(&h.sent(), ALICE)
            .iter()
            .filter(|r| r.status() == 200)
            .count();
    }
    assert_eq!(seen, 3, "at 0.5, 1.5 and 3.5 s");
    h.advance(Duration::from_secs(29));
    let out = h.sent();
    assert_eq!(
        requests_to(&out, BOB, "ACK").len(),
        1,
        "the callee's 2xx is ACKed"
    );
    // Distinct requests (an unanswered BYE is itself retransmitted on Timer E).
    let distinct = |to| {
        let mut seqs: Vec<u32> = requests_to(&out, to, "BYE")
            .iter()
            .filter_map(|r| r.cseq())
            .map(|c| c.seq)
            .collect();
        seqs.dedup();
        seqs.len()
    };
    assert_eq!(distinct(BOB), 1, "then the call is torn down");
    assert_eq!(distinct(ALICE), 1);
}

#[test]
fn ack_from_caller_confirms_and_is_forwarded_once() {
    let mut h = Harness::new();
    let a_invite = h.invite();
    let b_invite = requests_to(&h.sent(), BOB, "INVITE").remove(0);
    let ok = callee_answer(&b_invite, 200);
    h.send(Message::Response(ok.clone()), BOB);
    let a_ok = responses_to(&h.sent(), ALICE).remove(0);
    ack_from_alice(&mut h, &a_ok);
    assert_eq!(requests_to(&h.sent(), BOB, "ACK").len(), 1);
    h.advance(Duration::from_secs(40));
    let out = h.sent();
    assert!(
        responses_to(&out, ALICE).is_empty(),
        "no 2xx retransmission after the ACK"
    );
    assert!(requests_to(&out, BOB, "BYE").is_empty(), "call stays up");
    // A retransmitted 2xx from the callee is ACKed again.
    h.send(Message::Response(ok), BOB);
    assert_eq!(requests_to(&h.sent(), BOB, "ACK").len(), 1);
    let _ = a_invite;
}

#[test]
fn silent_callee_times_out_with_timer_b_and_caller_gets_408() {
    let mut h = Harness::new();
    h.invite();
    h.sent();
    h.advance(Duration::from_millis(31_900));
    let retransmits = requests_to(&h.sent(), BOB, "INVITE").len();
    assert_eq!(retransmits, 6, "Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s");
    h.advance(Duration::from_millis(100));
    let out = h.sent();
    assert_eq!(statuses_to(&out, ALICE), vec![408]);
    assert_eq!(h.core.active_calls(), 0);
}

#[test]
fn record_route_is_echoed_and_becomes_the_callers_route_set() {
    let mut h = Harness::new();
    let text = format!(
        "INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKrr;rport\r\n\
         Record-Route: <sip:proxy2.example;lr>, <sip:proxy1.example;lr>\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=al\r\nTo: <sip:bob@127.0.0.1>\r\n\
         Call-ID: call-rr\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{ALICE}>\r\nContent-Length: 0\r\n\r\n"
    );
    h.input(&text, ALICE);
    let b_invite = requests_to(&h.sent(), BOB, "INVITE").remove(0);
    assert!(
        !b_invite.has_header("Record-Route"),
        "the B-leg is a new dialog"
    );
    let ok = callee_answer(&b_invite, 200);
    h.send(Message::Response(ok), BOB);
    let out = h.sent();
    let a_ok = responses_to(&out, ALICE).remove(0);
    assert_eq!(
        a_ok.headers("Record-Route").join(", "),
        "<sip:proxy2.example;lr>, <sip:proxy1.example;lr>"
    );
    // Bob hangs up: the BYE toward alice follows her route set, in order.
    let bye = bye_from_bob(&b_invite, "z9hG4bKbye", 2);
    h.input(&bye, BOB);
    let out = h.sent();
    let bye_to_alice = requests_to(&out, ALICE, "BYE").remove(0);
    assert_eq!(
        bye_to_alice.headers("Route"),
        vec!["<sip:proxy2.example;lr>", "<sip:proxy1.example;lr>"]
    );
    assert_eq!(bye_to_alice.uri().to_string(), format!("sip:alice@{ALICE}"));
}

#[test]
fn bye_on_the_callers_early_dialog_ends_the_attempt_like_cancel() {
    let mut h = Harness::new();
    h.invite();
    let b_invite = requests_to(&h.sent(), BOB, "INVITE").remove(0);
    let mut ringing = Response::to_request(&b_invite, 180, "Ringing");
    ringing.set_to_tag("bt");
    h.send(Message::Response(ringing), BOB);
    let early_tag = responses_to(&h.sent(), ALICE)[0].to_tag().unwrap();
    let bye = format!(
        "BYE sip:warden@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKeb;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=al\r\nTo: <sip:bob@127.0.0.1>;tag={early_tag}\r\n\
         Call-ID: call-a\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    h.input(&bye, ALICE);
    let out = h.sent();
    let mut codes = statuses_to(&out, ALICE);
    codes.sort();
    assert_eq!(codes, vec![200, 487]);
    assert_eq!(requests_to(&out, BOB, "CANCEL").len(), 1);
}

/// Bob's BYE in the dialog Warden's INVITE `b_invite` opened (To tag `bt`).
fn bye_from_bob(b_invite: &Request, branch: &str, cseq: u32) -> String {
    from_bob(b_invite, "BYE", branch, cseq, "")
}

/// A request from bob in the dialog Warden's INVITE `b_invite` made, with `extra` header
/// lines.
fn from_bob(b_invite: &Request, method: &str, branch: &str, cseq: u32, extra: &str) -> String {
    let from = b_invite.header("From").unwrap();
    format!(
        "{method} sip:warden@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch={branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@127.0.0.1>;tag=bt\r\nTo: {};tag={}\r\n\
         Call-ID: {}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n",
        from.split(";tag=").next().unwrap(),
        b_invite.from_tag().unwrap(),
        b_invite.call_id().unwrap()
    )
}

/// Alice ACKs the 2xx Warden relayed to her.
fn ack_from_alice(h: &mut Harness, a_ok: &Response) {
    let ack = format!(
        "ACK sip:warden@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKack;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=al\r\nTo: <sip:bob@127.0.0.1>;tag={}\r\n\
         Call-ID: call-a\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        a_ok.to_tag().unwrap()
    );
    h.input(&ack, ALICE);
}

/// Alice calls with an offer, Bob answers with one, Alice ACKs: a bridged call in virtual time.
fn bridged_call(h: &mut Harness) -> (Request, Response) {
    h.invite_with(&sdp(7010, "sendrecv"));
    let b_invite = requests_to(&h.sent(), BOB, "INVITE").remove(0);
    let mut ok = callee_answer(&b_invite, 200);
    ok.set_body(sdp(7020, "sendrecv").into(), Some("application/sdp"));
    h.send(Message::Response(ok), BOB);
    let a_ok = responses_to(&h.sent(), ALICE).remove(0);
    ack_from_alice(h, &a_ok);
    assert_eq!(requests_to(&h.sent(), BOB, "ACK").len(), 1);
    (b_invite, a_ok)
}

#[test]
fn silent_media_ends_the_call_after_the_configured_timeout() {
    let mut config = Config::default();
    config.media.rtp_timeout_s = 30;
    let mut h = Harness::with_config(config);
    bridged_call(&mut h);
    h.advance(Duration::from_secs(29));
    assert!(
        requests_to(&h.sent(), BOB, "BYE").is_empty(),
        "not before 30 s"
    );
    h.advance(Duration::from_secs(6));
    let out = h.sent();
    assert_eq!(requests_to(&out, BOB, "BYE").len(), 1, "BYE to the callee");
    assert_eq!(
        requests_to(&out, ALICE, "BYE").len(),
        1,
        "BYE to the caller"
    );
}

#[test]
fn a_call_on_hold_is_never_timed_out() {
    let mut config = Config::default();
    config.media.rtp_timeout_s = 30;
    let mut h = Harness::with_config(config);
    let (_, a_ok) = bridged_call(&mut h);
    let hold = sdp(7010, "sendonly");
    let reinvite = format!(
        "INVITE sip:warden@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKhold;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=al\r\nTo: <sip:bob@127.0.0.1>;tag={}\r\n\
         Call-ID: call-a\r\nCSeq: 2 INVITE\r\nContact: <sip:alice@{ALICE}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{hold}",
        a_ok.to_tag().unwrap(),
        hold.len()
    );
    h.input(&reinvite, ALICE);
    let relayed = requests_to(&h.sent(), BOB, "INVITE").remove(0);
    let body = String::from_utf8(relayed.body().to_vec()).unwrap();
    assert!(body.contains("a=sendonly"), "direction kept: {body}");
    assert!(
        !body.contains("7010"),
        "the caller's port is hidden: {body}"
    );
    h.advance(Duration::from_secs(300));
    assert!(
        requests_to(&h.sent(), BOB, "BYE").is_empty(),
        "held calls stay up"
    );
}

/// The caller's in-dialog INFO carrying a key press.
fn info_from_alice(h: &mut Harness, a_ok: &Response, cseq: u32, key: char) {
    let body = format!("Signal={key}\r\nDuration=100\r\n");
    let info = format!(
        "INFO sip:warden@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKinfo{cseq};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=al\r\nTo: <sip:bob@127.0.0.1>;tag={}\r\n\
         Call-ID: call-a\r\nCSeq: {cseq} INFO\r\nContent-Type: application/dtmf-relay\r\n\
         Content-Length: {}\r\n\r\n{body}",
        a_ok.to_tag().unwrap(),
        body.len()
    );
    h.input(&info, ALICE);
}

#[test]
fn a_menu_collects_the_callers_digits_until_the_terminator_or_a_timeout() {
    use warden::call::digits::{DigitSpec, Ended};
    let mut h = Harness::new();
    let (_, a_ok) = bridged_call(&mut h);
    let call = 1;
    let spec = DigitSpec {
        max_digits: 4,
        terminator: Some('#'),
        first_digit_timeout: Duration::from_secs(5),
        inter_digit_timeout: Duration::from_secs(3),
        overall_timeout: Duration::from_secs(20),
    };
    let now = h.now;
    assert!(h.core.collect_digits(call, spec.clone(), now));
    for (cseq, key) in [(2, '4'), (3, '2'), (4, '#')] {
        h.advance(Duration::from_millis(700));
        info_from_alice(&mut h, &a_ok, cseq, key);
        let out = h.sent();
        assert_eq!(statuses_to(&out, ALICE), vec![200], "INFO answered");
        assert!(
            requests_to(&out, BOB, "INFO").is_empty(),
            "the menu's, not bob's"
        );
    }
    let got = h.core.collected_digits(call).expect("collected");
    assert_eq!((got.digits.as_str(), got.ended), ("42", Ended::Terminator));

    // Again: one key, then the caller hesitates past the inter-digit timeout.
    let now = h.now;
    assert!(h.core.collect_digits(call, spec, now));
    assert!(h.core.collected_digits(call).is_none(), "a new input");
    h.advance(Duration::from_secs(1));
    info_from_alice(&mut h, &a_ok, 5, '7');
    h.advance(Duration::from_millis(2999));
    assert!(h.core.collected_digits(call).is_none(), "still waiting");
    h.advance(Duration::from_millis(1));
    let got = h.core.collected_digits(call).expect("timed out");
    assert_eq!(
        (got.digits.as_str(), got.ended),
        ("7", Ended::InterDigitTimeout)
    );
    // No menu listening: a key goes to bob as before.
    info_from_alice(&mut h, &a_ok, 6, '9');
    assert_eq!(requests_to(&h.sent(), BOB, "INFO").len(), 1);
    let now = h.now;
    assert!(
        !h.core.collect_digits(99, DigitSpec::default(), now),
        "no such call"
    );
}

#[test]
fn an_answer_retransmitted_before_the_callers_ack_is_absorbed() {
    let mut h = Harness::new();
    h.invite();
    let b_invite = requests_to(&h.sent(), BOB, "INVITE").remove(0);
    let ok = callee_answer(&b_invite, 200);
    h.send(Message::Response(ok.clone()), BOB);
    let a_ok = responses_to(&h.sent(), ALICE).remove(0);
    assert_eq!(a_ok.status(), 200);
    // Bob did not get an ACK yet (the caller's is slow) and sends his 200 again.
    h.advance(Duration::from_millis(400));
    h.send(Message::Response(ok.clone()), BOB);
    let out = h.sent();
    assert!(
        responses_to(&out, ALICE).is_empty(),
        "not relayed as a new answer"
    );
    assert!(
        requests_to(&out, BOB, "ACK").is_empty(),
        "the ACK waits for the caller's"
    );
    ack_from_alice(&mut h, &a_ok);
    assert_eq!(requests_to(&h.sent(), BOB, "ACK").len(), 1);
    // Once ACKed, a late retransmission is ACKed again.
    h.send(Message::Response(ok), BOB);
    assert_eq!(requests_to(&h.sent(), BOB, "ACK").len(), 1);
}

#[test]
fn a_bridged_call_leaves_one_record_from_start_to_the_callees_bye() {
    let mut h = Harness::new();
    let (b_invite, _) = bridged_call(&mut h);
    let started = h
        .records
        .first()
        .cloned()
        .expect("a record when the call starts");
    assert_eq!((started.rev, started.end_reason.as_deref()), (1, None));
    assert_eq!(started.received_ms, UNIX_START_MS as i64);
    h.advance(Duration::from_secs(42));
    let bye = bye_from_bob(&b_invite, "z9hG4bKbb", 9);
    h.input(&bye, BOB);
    let bye_to_alice = requests_to(&h.sent(), ALICE, "BYE").remove(0);
    let mut ok = Response::to_request(&bye_to_alice, 200, "OK");
    ok.set_to_tag("al");
    h.send(Message::Response(ok), ALICE);
    h.sent();
    let records = h.latest_records();
    assert_eq!(records.len(), 1, "one record per call: {records:?}");
    let r = &records[0];
    assert!(
        h.records.windows(2).all(|w| w[0].rev < w[1].rev),
        "each update a higher rev"
    );
    assert_eq!(r.a_call_id, "call-a");
    assert_eq!(r.b_call_id.as_deref(), b_invite.call_id().as_deref());
    assert_eq!((r.caller.as_str(), r.callee.as_str()), ("alice", "bob"));
    assert_eq!(r.final_code, Some(200));
    assert_eq!(r.duration_ms, Some(42_000), "talk time in virtual time");
    assert_eq!(r.hangup_side.as_deref(), Some("callee"));
    assert_eq!(r.end_reason.as_deref(), Some("normal"));
    assert_eq!(
        (r.a_codec.as_deref(), r.b_codec.as_deref(), r.transcoded),
        (Some("PCMU"), Some("PCMU"), false)
    );
    assert_eq!(r.a_packets, Some(0), "media figures once media existed");
}

#[test]
fn unanswered_calls_say_why_they_ended() {
    // Ring timeout: Warden gives up.
    let mut h = Harness::new();
    h.invite();
    let b_invite = requests_to(&h.sent(), BOB, "INVITE").remove(0);
    let mut ringing = Response::to_request(&b_invite, 180, "Ringing");
    ringing.set_to_tag("bt");
    h.send(Message::Response(ringing), BOB);
    h.sent();
    h.advance(Duration::from_secs(60));
    let cancel = requests_to(&h.sent(), BOB, "CANCEL").remove(0);
    h.send(
        Message::Response(Response::to_request(&cancel, 200, "OK")),
        BOB,
    );
    h.send(Message::Response(callee_answer(&b_invite, 487)), BOB);
    h.sent();
    let r = &h.latest_records()[0];
    assert_eq!(r.ringing_ms, Some(UNIX_START_MS as i64));
    assert_eq!(r.final_code, Some(408));
    assert_eq!(r.ended_ms, Some(UNIX_START_MS as i64 + 60_000));
    assert_eq!(
        (r.hangup_side.as_deref(), r.end_reason.as_deref()),
        (Some("warden"), Some("no answer"))
    );
    assert_eq!(r.duration_ms, None);

    // A callee's refusal.
    let mut h = Harness::new();
    h.invite();
    let b_invite = requests_to(&h.sent(), BOB, "INVITE").remove(0);
    h.send(Message::Response(callee_answer(&b_invite, 486)), BOB);
    h.sent();
    let r = &h.latest_records()[0];
    assert_eq!(r.final_code, Some(486));
    assert_eq!(
        (r.hangup_side.as_deref(), r.end_reason.as_deref()),
        (Some("callee"), Some("declined"))
    );
}

#[test]
fn shutting_down_refuses_new_calls_and_ends_live_ones_with_bye() {
    let mut h = Harness::new();
    bridged_call(&mut h);
    h.core.stop_taking_calls(30);
    let late = format!(
        "INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKlate;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=l\r\nTo: <sip:bob@127.0.0.1>\r\n\
         Call-ID: late\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{ALICE}>\r\nContent-Length: 0\r\n\r\n"
    );
    h.input(&late, ALICE);
    let out = h.sent();
    let refusal = responses_to(&out, ALICE)
        .into_iter()
        .find(|r| r.status() == 503)
        .expect("503");
    assert_eq!(refusal.header("Retry-After").as_deref(), Some("30"));
    assert_eq!(h.core.active_calls(), 1, "the live call goes on");
    let now = h.now;
    assert_eq!(h.core.hang_up_all("shutdown", now), 1);
    let out = h.sent();
    assert_eq!(requests_to(&out, ALICE, "BYE").len(), 1);
    assert_eq!(requests_to(&out, BOB, "BYE").len(), 1);
    let records = h.latest_records();
    assert_eq!(records.len(), 2);
    let refused = records.iter().find(|r| r.a_call_id == "late").unwrap();
    assert_eq!(
        (refused.final_code, refused.end_reason.as_deref()),
        (Some(503), Some("shutdown"))
    );
    // The live call's record closes once the BYEs are answered.
    for (to, bye) in [
        (ALICE, requests_to(&out, ALICE, "BYE").remove(0)),
        (BOB, requests_to(&out, BOB, "BYE").remove(0)),
    ] {
        let mut ok = Response::to_request(&bye, 200, "OK");
        ok.set_to_tag("x");
        h.send(Message::Response(ok), to);
    }
    h.sent();
    assert_eq!(h.core.active_calls(), 0);
    let call = h
        .latest_records()
        .into_iter()
        .find(|r| r.a_call_id == "call-a")
        .unwrap();
    assert_eq!(
        (call.hangup_side.as_deref(), call.end_reason.as_deref()),
        (Some("warden"), Some("shutdown"))
    );
}

#[test]
fn records_of_calls_whose_byes_go_unanswered_are_closed_when_shutdown_gives_up() {
    let mut h = Harness::new();
    bridged_call(&mut h);
    let now = h.now;
    h.core.hang_up_all("shutdown", now);
    h.sent();
    assert!(
        h.latest_records()[0].end_reason.is_none(),
        "open until the BYEs are answered"
    );
    h.core.close_records("shutdown");
    h.sent();
    let r = &h.latest_records()[0];
    assert_eq!(r.end_reason.as_deref(), Some("shutdown"));
    assert_eq!(r.final_code, Some(200));
}

#[test]
fn relayed_responses_take_the_operators_phrase_only_when_asked() {
    let mut config = Config::default();
    config
        .sip
        .reason_phrases
        .insert("486".into(), "Obsadené".into());
    config.sip.rewrite_relayed_phrases = true;
    let mut h = Harness::with_config(config);
    h.invite();
    let b_invite = requests_to(&h.sent(), BOB, "INVITE").remove(0);
    h.send(Message::Response(callee_answer(&b_invite, 486)), BOB);
    let out = h.sent();
    let busy = responses_to(&out, ALICE)
        .into_iter()
        .find(|r| r.status() == 486)
        .unwrap();
    assert_eq!(busy.reason(), "Obsadené");
}

#[test]
fn a_transfer_target_that_rings_out_is_cancelled_and_the_call_stays() {
    let mut config = Config::default();
    config.calls.no_answer_timeout_s = 10;
    let mut h = Harness::with_config(config);
    const CAROL: &str = "127.0.0.1:7003";
    h.input(&format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {CAROL};branch=z9hG4bKr2;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:carol@127.0.0.1>;tag=r\r\nTo: <sip:carol@127.0.0.1>\r\n\
         Call-ID: reg-carol\r\nCSeq: 1 REGISTER\r\nContact: <sip:carol@{CAROL}>\r\nContent-Length: 0\r\n\r\n"
    ), CAROL);
    h.sent();
    let (b_invite, _) = bridged_call(&mut h);
    let refer = "Refer-To: <sip:carol@127.0.0.1>\r\n";
    h.input(&from_bob(&b_invite, "REFER", "z9hG4bKref", 2, refer), BOB);
    let out = h.sent();
    assert_eq!(statuses_to(&out, BOB), [202]);
    let notifies = requests_to(&out, BOB, "NOTIFY");
    assert_eq!(notifies.len(), 1);
    assert_eq!(&notifies[0].body()[..], b"SIP/2.0 100 Trying\r\n");
    let c_invite = requests_to(&out, CAROL, "INVITE").remove(0);
    let mut ringing = Response::to_request(&c_invite, 180, "Ringing");
    ringing.set_to_tag("ct");
    h.send(Message::Response(ringing), CAROL);
    let out = h.sent();
    assert_eq!(
        &requests_to(&out, BOB, "NOTIFY")[0].body()[..],
        b"SIP/2.0 180 Ringing\r\n"
    );

    // Ten seconds of ringing: Warden gives up on carol.
    h.advance(Duration::from_secs(9));
    assert!(requests_to(&h.sent(), CAROL, "CANCEL").is_empty());
    h.advance(Duration::from_secs(2));
    let out = h.sent();
    let cancel = requests_to(&out, CAROL, "CANCEL").remove(0);
    h.send(
        Message::Response(Response::to_request(&cancel, 200, "OK")),
        CAROL,
    );
    let mut terminated = Response::to_request(&c_invite, 487, "Request Terminated");
    terminated.set_to_tag("ct");
    h.send(Message::Response(terminated), CAROL);
    let out = h.sent();
    assert_eq!(requests_to(&out, CAROL, "ACK").len(), 1, "the 487 is ACKed");
    let last = requests_to(&out, BOB, "NOTIFY").remove(0);
    assert_eq!(&last.body()[..], b"SIP/2.0 487 Request Terminated\r\n");
    assert!(
        last.header("Subscription-State")
            .is_some_and(|s| s.starts_with("terminated")),
        "the last NOTIFY ends the subscription"
    );
    // Alice and bob are still in their call.
    assert!(requests_to(&out, ALICE, "BYE").is_empty());
    assert!(requests_to(&out, BOB, "BYE").is_empty());
    assert_eq!(h.core.active_calls(), 1);
}

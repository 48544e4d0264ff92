//! Carrier and IMS signalling on virtual time: reliable provisionals and PRACK on both legs,
//! UPDATE before the answer and glare, session timers (negotiation, 422, refreshes, expiry),
//! the longest call, emergency calls, 3xx, MESSAGE, a bridge after Warden's answer and
//! gateway probing. A real `Core`, fake media, no socket, no sleep.

mod common;

use std::time::Duration;

use bytes::Bytes;
use warden::config::Config;
use warden::sip::message::{Message, Request, Response};

use common::core::{Dialog, Net, Phone, media_port, requests, responses, sdp, statuses, summary};

const ALICE: &str = "127.0.0.1:7101";
const BOB: &str = "127.0.0.1:7102";

/// A config whose calls outlive the tests' silences (no RTP flows on virtual time).
fn quiet_media() -> Config {
    let mut config = Config::default();
    config.media.rtp_timeout_s = 100_000;
    config
}

fn parties(net: &mut Net) -> (Phone, Phone) {
    let (alice, mut bob) = (Phone::new("alice", ALICE), Phone::new("bob", BOB));
    bob.register(net);
    (alice, bob)
}

/// Alice calls bob (registered) with an offer and `headers`, and gets Warden's 100: both
/// phones, her INVITE and the one Warden sent bob.
fn call_bob(net: &mut Net, headers: &[&str]) -> (Phone, Phone, Request, Request) {
    let (mut alice, mut bob) = parties(net);
    let invite = alice.invite(net, "bob", &sdp(7110, "sendrecv"), headers);
    assert_eq!(statuses(&alice.receive(net)), vec![100]);
    let b_invite = bob.expect(net, "INVITE");
    (alice, bob, invite, b_invite)
}

fn rseq(resp: &Response) -> u32 {
    resp.header("RSeq")
        .and_then(|v| v.trim().parse().ok())
        .expect("an RSeq")
}

/// The caller PRACKs `provisional` (the answer `body`, if any) in the early dialog.
fn prack(
    net: &mut Net,
    caller: &mut Phone,
    dialog: &mut Dialog,
    provisional: &Response,
    body: &str,
) {
    let rack = format!("RAck: {} 1 INVITE", rseq(provisional));
    caller.request(net, dialog, "PRACK", &[&rack], body);
}

#[test]
fn a_caller_that_requires_100rel_gets_reliable_provisionals_until_it_pracks() {
    let mut net = Net::with_config(quiet_media());
    let (mut alice, bob, invite, b_invite) = call_bob(&mut net, &["Require: 100rel"]);
    assert!(
        b_invite.lists("Supported", "100rel"),
        "100rel offered to the callee"
    );
    assert!(b_invite.lists("Supported", "timer"));

    bob.answer_with(&mut net, &b_invite, 180, &[], "");
    let ringing = responses(&alice.receive(&mut net));
    assert_eq!(ringing.len(), 1);
    assert!(ringing[0].lists("Require", "100rel"), "sent reliably");
    let first = rseq(&ringing[0]);

    // Unacknowledged: again at T1, then 2*T1 later.
    net.advance(Duration::from_millis(500));
    assert_eq!(statuses(&alice.receive(&mut net)), vec![180]);
    net.advance(Duration::from_millis(999));
    assert!(alice.receive(&mut net).is_empty());
    net.advance(Duration::from_millis(1));
    assert_eq!(statuses(&alice.receive(&mut net)), vec![180]);

    let mut early = alice.dialog_as_caller(&invite, &ringing[0]);
    let mut wrong = ringing[0].clone();
    wrong
        .set_header("RSeq", &(first + 7).to_string())
        .expect("RSeq");
    prack(&mut net, &mut alice, &mut early, &wrong, "");
    assert_eq!(
        statuses(&alice.receive(&mut net)),
        vec![481],
        "RAck of nothing sent"
    );
    prack(&mut net, &mut alice, &mut early, &ringing[0], "");
    assert_eq!(
        statuses(&alice.receive(&mut net)),
        vec![200],
        "PRACK answered"
    );
    net.advance(Duration::from_secs(10));
    assert!(
        alice.receive(&mut net).is_empty(),
        "no retransmission after the PRACK"
    );

    // The next provisional counts on from the first RSeq.
    bob.answer_with(&mut net, &b_invite, 183, &[], "");
    let progress = responses(&alice.receive(&mut net));
    assert_eq!(rseq(&progress[0]), first + 1);
    prack(&mut net, &mut alice, &mut early, &progress[0], "");
    assert_eq!(statuses(&alice.receive(&mut net)), vec![200]);

    bob.answer_with(&mut net, &b_invite, 200, &[], &sdp(7120, "sendrecv"));
    let got = alice.receive(&mut net);
    assert_eq!(statuses(&got), vec![200], "{:?}", summary(&got));
}

#[test]
fn no_prack_within_64_t1_gives_the_call_up() {
    let mut net = Net::with_config(quiet_media());
    let (mut alice, mut bob, _, b_invite) = call_bob(&mut net, &["Supported: 100rel"]);
    bob.answer_with(&mut net, &b_invite, 180, &[], "");
    let mut sent = statuses(&alice.receive(&mut net));
    net.advance(Duration::from_millis(31_999));
    sent.extend(statuses(&alice.receive(&mut net)));
    assert_eq!(
        sent,
        vec![180; 7],
        "sent, then at 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s"
    );
    net.advance(Duration::from_millis(1));
    assert_eq!(statuses(&alice.receive(&mut net)), vec![504]);
    let cancel = bob.expect(&mut net, "CANCEL");
    bob.answer(&mut net, &cancel, 200, "");
    bob.answer(&mut net, &b_invite, 487, "");
    let r = net.record();
    assert_eq!(r.final_code, Some(504));
    assert_eq!(r.end_reason.as_deref(), Some("no PRACK"));
}

#[test]
fn a_callee_that_requires_100rel_is_pracked_while_the_caller_gets_plain_provisionals() {
    let mut net = Net::with_config(quiet_media());
    let (mut alice, mut bob, _, b_invite) = call_bob(&mut net, &[]);
    let reliable = ["Require: 100rel", "RSeq: 41"];
    bob.answer_with(&mut net, &b_invite, 183, &reliable, &sdp(7120, "sendrecv"));
    let prack = bob.expect(&mut net, "PRACK");
    assert_eq!(prack.header("RAck").as_deref(), Some("41 1 INVITE"));
    assert_eq!(
        prack.to_tag().as_deref(),
        Some("tbob"),
        "in the early dialog"
    );
    assert_eq!(
        prack.uri().to_string(),
        format!("sip:bob@{BOB}"),
        "to its Contact"
    );
    assert!(prack.cseq().is_some_and(|c| c.seq == 2));
    bob.answer(&mut net, &prack, 200, "");
    let got = responses(&alice.receive(&mut net));
    assert_eq!(
        got.iter().map(|r| r.status()).collect::<Vec<_>>(),
        vec![183]
    );
    assert!(
        got[0].header("RSeq").is_none(),
        "the caller did not offer 100rel"
    );

    // A retransmission is neither PRACKed again nor relayed.
    bob.answer_with(&mut net, &b_invite, 183, &reliable, &sdp(7120, "sendrecv"));
    assert!(bob.receive(&mut net).is_empty() && alice.receive(&mut net).is_empty());

    let ok = bob.answer_with(&mut net, &b_invite, 200, &[], &sdp(7120, "sendrecv"));
    assert_eq!(statuses(&alice.receive(&mut net)), vec![200]);
    let _ = ok;
}

#[test]
fn an_offer_in_a_reliable_183_is_answered_in_the_callers_prack() {
    let mut net = Net::with_config(quiet_media());
    let (mut alice, mut bob) = parties(&mut net);
    // No offer in the INVITE: the callee's reliable 183 makes it, the PRACK answers.
    let invite = alice.invite(&mut net, "bob", "", &["Supported: 100rel"]);
    alice.receive(&mut net);
    let b_invite = bob.expect(&mut net, "INVITE");
    assert!(b_invite.body().is_empty());
    let reliable = ["Require: 100rel", "RSeq: 1"];
    bob.answer_with(&mut net, &b_invite, 183, &reliable, &sdp(7120, "sendrecv"));
    assert!(
        bob.receive(&mut net).is_empty(),
        "its PRACK waits for the caller's answer"
    );
    let progress = responses(&alice.receive(&mut net));
    assert_eq!(progress.len(), 1);
    assert!(progress[0].lists("Require", "100rel"));
    let offered = media_port(progress[0].body()).expect("Warden's offer");
    assert_ne!(offered, 7120, "anchored");

    let mut early = alice.dialog_as_caller(&invite, &progress[0]);
    prack(
        &mut net,
        &mut alice,
        &mut early,
        &progress[0],
        &sdp(7110, "sendrecv"),
    );
    assert_eq!(statuses(&alice.receive(&mut net)), vec![200]);
    let b_prack = bob.expect(&mut net, "PRACK");
    assert_eq!(b_prack.header("RAck").as_deref(), Some("1 1 INVITE"));
    let answered = media_port(b_prack.body()).expect("the answer, anchored");
    assert_ne!(answered, 7110);
    bob.answer(&mut net, &b_prack, 200, "");

    bob.answer_with(&mut net, &b_invite, 200, &[], "");
    let ok = responses(&alice.receive(&mut net));
    assert_eq!(ok.iter().map(|r| r.status()).collect::<Vec<_>>(), vec![200]);
    let a = alice.dialog_as_caller(&invite, &ok[0]);
    alice.ack(&mut net, &a, "");
    let acks = requests(&bob.receive(&mut net), "ACK");
    assert_eq!(acks.len(), 1);
    assert!(
        acks[0].cseq().is_some_and(|c| c.seq == 1),
        "ACK keeps the INVITE's CSeq"
    );
}

#[test]
fn the_2xx_waits_for_the_prack_of_a_provisional_with_sdp() {
    let mut net = Net::with_config(quiet_media());
    let (mut alice, bob, invite, b_invite) = call_bob(&mut net, &["Supported: 100rel"]);
    bob.answer_with(&mut net, &b_invite, 183, &[], &sdp(7120, "sendrecv"));
    let progress = responses(&alice.receive(&mut net));
    bob.answer_with(&mut net, &b_invite, 200, &[], &sdp(7120, "sendrecv"));
    assert!(alice.receive(&mut net).is_empty(), "held until the PRACK");
    let mut early = alice.dialog_as_caller(&invite, &progress[0]);
    prack(&mut net, &mut alice, &mut early, &progress[0], "");
    assert_eq!(
        statuses(&alice.receive(&mut net)),
        vec![200, 200],
        "PRACK's, then INVITE's"
    );
}

#[test]
fn an_early_update_crosses_to_the_other_early_dialog() {
    let mut net = Net::with_config(quiet_media());
    let (mut alice, mut bob, invite, b_invite) = call_bob(&mut net, &["Supported: 100rel"]);
    bob.answer_with(
        &mut net,
        &b_invite,
        183,
        &["Require: 100rel", "RSeq: 1"],
        &sdp(7120, "sendrecv"),
    );
    let b_prack = bob.expect(&mut net, "PRACK");
    bob.answer(&mut net, &b_prack, 200, "");
    let progress = responses(&alice.receive(&mut net));
    let mut early = alice.dialog_as_caller(&invite, &progress[0]);
    prack(&mut net, &mut alice, &mut early, &progress[0], "");
    alice.receive(&mut net);

    alice.request(&mut net, &mut early, "UPDATE", &[], &sdp(7130, "sendonly"));
    let update = bob.expect(&mut net, "UPDATE");
    assert_eq!(update.to_tag().as_deref(), Some("tbob"));
    assert!(
        update.cseq().is_some_and(|c| c.seq == 3),
        "after INVITE 1 and PRACK 2"
    );
    assert!(std::str::from_utf8(update.body()).is_ok_and(|b| b.contains("a=sendonly")));
    bob.answer(&mut net, &update, 200, &sdp(7120, "recvonly"));
    let got = responses(&alice.receive(&mut net));
    assert_eq!(
        got.iter().map(|r| r.status()).collect::<Vec<_>>(),
        vec![200]
    );
    assert!(media_port(got[0].body()).is_some(), "the anchored answer");

    // The callee updates too, toward the caller's early dialog.
    let mut b_early = bob.dialog_as_callee(&b_invite, &progress[0]);
    b_early.remote = b_invite.header("From").unwrap_or_default();
    b_early.local = format!("{};tag=tbob", b_invite.header("To").unwrap_or_default());
    b_early.cseq = 10;
    bob.request(
        &mut net,
        &mut b_early,
        "UPDATE",
        &[],
        &sdp(7120, "sendrecv"),
    );
    let to_alice = alice.expect(&mut net, "UPDATE");
    assert_eq!(to_alice.call_id(), invite.call_id());
}

#[test]
fn crossing_offers_get_491() {
    let mut net = Net::with_config(quiet_media());
    let (mut alice, mut bob, invite, b_invite) = call_bob(&mut net, &[]);
    let b_ok = bob.answer_with(
        &mut net,
        &b_invite,
        200,
        &["Allow: INVITE, ACK, BYE, UPDATE"],
        &sdp(7120, "sendrecv"),
    );
    let a_ok = responses(&alice.receive(&mut net));
    let mut a = alice.dialog_as_caller(&invite, &a_ok[0]);
    alice.ack(&mut net, &a, "");
    bob.expect(&mut net, "ACK");

    // Alice's UPDATE reaches bob; before he answers, he offers too.
    alice.request(&mut net, &mut a, "UPDATE", &[], &sdp(7110, "sendonly"));
    let to_bob = bob.expect(&mut net, "UPDATE");
    let mut b = bob.dialog_as_callee(&b_invite, &b_ok);
    bob.request(&mut net, &mut b, "UPDATE", &[], &sdp(7120, "sendonly"));
    let got = responses(&bob.receive(&mut net));
    assert_eq!(
        got.iter().map(|r| r.status()).collect::<Vec<_>>(),
        vec![491]
    );
    bob.answer(&mut net, &to_bob, 200, &sdp(7120, "recvonly"));
    assert_eq!(statuses(&alice.receive(&mut net)), vec![200]);
}

/// A call answered on both legs: the caller's INVITE carries `caller_headers`, the
/// callee's 200 `callee_headers`.
fn answered(
    net: &mut Net,
    caller_headers: &[&str],
    callee_headers: &[&str],
) -> (Phone, Phone, Dialog, Dialog, Response) {
    let (mut alice, mut bob) = parties(net);
    let invite = alice.invite(net, "bob", &sdp(7110, "sendrecv"), caller_headers);
    alice.receive(net);
    let b_invite = bob.expect(net, "INVITE");
    let b_ok = bob.answer_with(net, &b_invite, 200, callee_headers, &sdp(7120, "sendrecv"));
    let a_ok = responses(&alice.receive(net));
    assert_eq!(a_ok.len(), 1, "{a_ok:?}");
    let a = alice.dialog_as_caller(&invite, &a_ok[0]);
    alice.ack(net, &a, "");
    bob.expect(net, "ACK");
    let b = bob.dialog_as_callee(&b_invite, &b_ok);
    (alice, bob, a, b, a_ok[0].clone())
}

#[test]
fn a_refresh_that_never_comes_ends_both_legs() {
    let mut net = Net::with_config(quiet_media());
    let caller = ["Supported: timer", "Session-Expires: 90;refresher=uac"];
    let (mut alice, mut bob, _, _, ok) =
        answered(&mut net, &caller, &["Allow: INVITE, ACK, BYE, UPDATE"]);
    assert_eq!(
        ok.header("Session-Expires").as_deref(),
        Some("90;refresher=uac")
    );
    assert!(ok.lists("Require", "timer"));

    // Warden refreshes the callee's leg (its 2xx had no Session-Expires) at half of 1800 s;
    // the caller, its own refresher, is overdue at 90 - 30 s.
    net.advance(Duration::from_secs(59));
    assert!(alice.receive(&mut net).is_empty() && bob.receive(&mut net).is_empty());
    net.advance(Duration::from_secs(1));
    for phone in [&mut alice, &mut bob] {
        let bye = phone.expect(&mut net, "BYE");
        phone.answer(&mut net, &bye, 200, "");
    }
    let r = net.record();
    assert_eq!(
        (r.hangup_side.as_deref(), r.end_reason.as_deref()),
        (Some("warden"), Some("session-timer"))
    );
    assert_eq!(net.core.active_calls(), 0);
}

#[test]
fn warden_refreshes_by_update_and_the_callers_refresh_restarts_its_leg() {
    let mut net = Net::with_config(quiet_media());
    let caller = ["Supported: timer", "Session-Expires: 120;refresher=uac"];
    let callee = [
        "Allow: INVITE, ACK, BYE, UPDATE",
        "Supported: timer",
        "Session-Expires: 100;refresher=uac",
    ];
    let (mut alice, mut bob, mut a, _, _) = answered(&mut net, &caller, &callee);

    net.advance(Duration::from_secs(49));
    assert!(
        bob.receive(&mut net).is_empty(),
        "nothing before half the interval"
    );
    net.advance(Duration::from_secs(1));
    let refresh = bob.expect(&mut net, "UPDATE");
    assert!(refresh.body().is_empty());
    assert_eq!(
        refresh.header("Session-Expires").as_deref(),
        Some("100;refresher=uac")
    );
    let mut ok = Response::to_request(&refresh, 200, "OK");
    ok.push_header("Session-Expires", "100;refresher=uac")
        .expect("header");
    net.deliver(&bob.addr, &Message::Response(ok));

    // The caller refreshes with an UPDATE without SDP: answered by Warden itself.
    net.advance(Duration::from_secs(30));
    alice.request(
        &mut net,
        &mut a,
        "UPDATE",
        &["Supported: timer", "Session-Expires: 120;refresher=uac"],
        "",
    );
    let got = responses(&alice.receive(&mut net));
    assert_eq!(
        got.iter().map(|r| r.status()).collect::<Vec<_>>(),
        vec![200]
    );
    assert_eq!(
        got[0].header("Session-Expires").as_deref(),
        Some("120;refresher=uac")
    );
    assert!(
        bob.receive(&mut net).is_empty(),
        "a pure refresh is not relayed"
    );

    // The callee's next refresh is due 50 s after the last one; the caller's leg, which
    // would have been overdue at 88 s without its refresh, holds until 80 + 88 s.
    net.advance(Duration::from_secs(20));
    let again = bob.expect(&mut net, "UPDATE");
    bob.answer(&mut net, &again, 200, "");
    net.advance(Duration::from_secs(60));
    assert!(alice.receive(&mut net).is_empty(), "no BYE at 160 s");
    assert_eq!(net.core.active_calls(), 1);
}

#[test]
fn a_peer_without_update_is_refreshed_by_reinvite_and_a_failed_refresh_ends_the_call() {
    let mut net = Net::with_config(quiet_media());
    let caller = ["Allow: INVITE, ACK, BYE, UPDATE"];
    let (mut alice, mut bob, _, _, ok) = answered(&mut net, &caller, &["Allow: INVITE, ACK, BYE"]);
    // The caller knows nothing of timers: Warden is its refresher, without Require.
    assert_eq!(
        ok.header("Session-Expires").as_deref(),
        Some("1800;refresher=uas")
    );
    assert!(!ok.lists("Require", "timer"));

    net.advance(Duration::from_secs(900));
    let to_alice = alice.expect(&mut net, "UPDATE");
    alice.answer(&mut net, &to_alice, 501, "");
    let reinvite = alice.expect(&mut net, "INVITE");
    assert_eq!(
        media_port(reinvite.body()),
        media_port(ok.body()),
        "the same SDP again"
    );
    alice.answer(&mut net, &reinvite, 200, &sdp(7110, "sendrecv"));
    assert_eq!(summary(&alice.receive(&mut net)), vec!["ACK"]);

    let reinvite = bob.expect(&mut net, "INVITE");
    assert!(reinvite.header("Session-Expires").is_some());
    bob.answer(&mut net, &reinvite, 481, "");
    let got = bob.receive(&mut net);
    assert_eq!(summary(&got), vec!["ACK", "BYE"]);
    let bye = alice.expect(&mut net, "BYE");
    alice.answer(&mut net, &bye, 200, "");
    bob.answer(&mut net, &requests(&got, "BYE")[0], 200, "");
    assert_eq!(net.record().end_reason.as_deref(), Some("session-timer"));
}

#[test]
fn a_short_session_gets_422_and_a_callees_422_is_retried_longer() {
    let mut net = Net::with_config(quiet_media());
    let (mut alice, mut bob) = parties(&mut net);
    alice.invite(
        &mut net,
        "bob",
        &sdp(7110, "sendrecv"),
        &["Supported: timer", "Session-Expires: 30"],
    );
    let got = responses(&alice.receive(&mut net));
    assert_eq!(
        got.iter().map(|r| r.status()).collect::<Vec<_>>(),
        vec![100, 422]
    );
    assert_eq!(got[1].header("Min-SE").as_deref(), Some("90"));

    alice.invite(
        &mut net,
        "bob",
        &sdp(7110, "sendrecv"),
        &["Supported: timer", "Session-Expires: 90"],
    );
    alice.receive(&mut net);
    let first = bob.expect(&mut net, "INVITE");
    assert_eq!(first.header("Session-Expires").as_deref(), Some("1800"));
    bob.answer_with(&mut net, &first, 422, &["Min-SE: 3600"], "");
    let got = bob.receive(&mut net);
    assert_eq!(
        summary(&got),
        vec!["ACK", "INVITE"],
        "the 422 ACKed, the INVITE again"
    );
    let second = &requests(&got, "INVITE")[0];
    assert_eq!(second.header("Session-Expires").as_deref(), Some("3600"));
    assert_eq!(second.call_id(), first.call_id());
    assert!(second.cseq().is_some_and(|c| c.seq == 2));
    assert!(
        alice.receive(&mut net).is_empty(),
        "the caller saw nothing of it"
    );
    bob.answer_with(&mut net, second, 200, &[], &sdp(7120, "sendrecv"));
    assert_eq!(statuses(&alice.receive(&mut net)), vec![200]);
}

#[test]
fn a_route_ends_calls_at_its_longest_length() {
    let plan = r#"
[[rule]]
name = "short"
do = [{ max_duration = 30 }, { bridge = "user:bob" }]
"#;
    let mut net = Net::with_plan(quiet_media(), plan);
    let (mut alice, mut bob, _, _, _) = answered(&mut net, &[], &[]);
    net.advance(Duration::from_secs(29));
    assert!(alice.receive(&mut net).is_empty());
    net.advance(Duration::from_secs(1));
    for phone in [&mut alice, &mut bob] {
        let bye = phone.expect(&mut net, "BYE");
        phone.answer(&mut net, &bye, 200, "");
    }
    let r = net.record();
    assert_eq!(r.end_reason.as_deref(), Some("max-duration"));
    assert_eq!(r.duration_ms, Some(30_000));
}

#[test]
fn an_emergency_call_passes_screening_limits_and_shutdown() {
    let plan = r#"
[[rule]]
name = "emergency"
when = { emergency = true }
do = [{ screen = "default" }, { bridge = "user:bob" }]

[[rule]]
name = "rest"
do = [{ screen = "default" }, { reject = 403 }]
"#;
    let mut config = quiet_media();
    config.calls.max_calls = 0;
    let mut net = Net::with_plan(config, plan);
    let (mut alice, mut bob) = parties(&mut net);
    net.core.stop_taking_calls(60);

    alice.invite(&mut net, "1001", &sdp(7110, "sendrecv"), &[]);
    assert_eq!(
        statuses(&alice.receive(&mut net)),
        vec![100, 503],
        "shutting down"
    );

    alice.invite(&mut net, "112", &sdp(7110, "sendrecv"), &[]);
    assert_eq!(statuses(&alice.receive(&mut net)), vec![100]);
    assert!(net.screens.is_empty(), "not screened");
    let b_invite = bob.expect(&mut net, "INVITE");
    bob.answer_with(&mut net, &b_invite, 200, &[], &sdp(7120, "sendrecv"));
    assert_eq!(statuses(&alice.receive(&mut net)), vec![200]);
    let records = net.latest_records();
    assert_eq!(
        records.last().and_then(|r| r.rule.as_deref()),
        Some("emergency")
    );
}

#[test]
fn a_callees_3xx_is_followed_to_its_contact_or_relayed_when_the_route_says_so() {
    let carol = "127.0.0.1:7103";
    let plan = r#"
[[rule]]
name = "relay"
when = { ruri_user = '^relay$' }
do = [{ on_redirect = "relay" }, { bridge = "user:bob" }]

[[rule]]
name = "follow"
do = [{ bridge = "user:bob" }]
"#;
    let mut net = Net::with_plan(quiet_media(), plan);
    let (mut alice, mut bob) = parties(&mut net);
    let mut carol_phone = Phone::new("carol", carol);
    let moved = format!("Contact: <sip:carol@{carol}>");

    // Followed: carol is called in bob's place, the caller sees only her answer.
    alice.invite(&mut net, "bob", &sdp(7110, "sendrecv"), &[]);
    alice.receive(&mut net);
    let b_invite = bob.expect(&mut net, "INVITE");
    bob.answer_with(&mut net, &b_invite, 302, &[&moved], "");
    assert_eq!(summary(&bob.receive(&mut net)), vec!["ACK"]);
    let c_invite = carol_phone.expect(&mut net, "INVITE");
    assert_eq!(c_invite.uri().to_string(), format!("sip:carol@{carol}"));
    assert!(
        alice.receive(&mut net).is_empty(),
        "the 302 is Warden's to follow"
    );
    carol_phone.answer(&mut net, &c_invite, 200, &sdp(7130, "sendrecv"));
    assert_eq!(statuses(&alice.receive(&mut net)), vec![200]);

    // Relayed: the caller gets the 302 with its Contact.
    let mut dave = Phone::new("dave", "127.0.0.1:7104");
    dave.invite(&mut net, "relay", &sdp(7140, "sendrecv"), &[]);
    dave.receive(&mut net);
    let b_invite = bob.expect(&mut net, "INVITE");
    bob.answer_with(&mut net, &b_invite, 302, &[&moved], "");
    let got = responses(&dave.receive(&mut net));
    assert_eq!(
        got.iter().map(|r| r.status()).collect::<Vec<_>>(),
        vec![302]
    );
    assert_eq!(got[0].contact_uri(), Some(format!("sip:carol@{carol}")));
    assert!(carol_phone.receive(&mut net).is_empty());
}

#[test]
fn a_message_reaches_a_registered_users_contacts_and_the_first_2xx_answers() {
    let mut net = Net::new();
    let (mut alice, mut bob) = parties(&mut net);
    let mut desk = Phone::new("bob", "127.0.0.1:7105");
    desk.register(&mut net);
    let message = |to: &str| {
        format!(
            "MESSAGE sip:{to}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKm{to}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=m1\r\nTo: <sip:{to}@127.0.0.1>\r\nCall-ID: msg-{to}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
        )
    };
    let deliver = |net: &mut Net, text: String| {
        net.deliver(ALICE, &common::core::parse(Bytes::from(text)));
    };
    deliver(&mut net, message("bob"));
    let to_mobile = bob.expect(&mut net, "MESSAGE");
    let to_desk = desk.expect(&mut net, "MESSAGE");
    assert_eq!(to_mobile.body().as_ref(), b"hello");
    assert_eq!(
        to_mobile.header("Content-Type").as_deref(),
        Some("text/plain")
    );
    assert_ne!(
        to_mobile.call_id().as_deref(),
        Some("msg-bob"),
        "a transaction of Warden's"
    );
    desk.answer(&mut net, &to_desk, 480, "");
    assert!(alice.receive(&mut net).is_empty(), "one copy still out");
    bob.answer(&mut net, &to_mobile, 200, "");
    assert_eq!(statuses(&alice.receive(&mut net)), vec![200]);

    deliver(&mut net, message("nobody"));
    assert_eq!(statuses(&alice.receive(&mut net)), vec![404]);

    let records = net.latest_records();
    let kinds: Vec<(&str, Option<i64>)> = records
        .iter()
        .map(|r| (r.tags.as_str(), r.final_code))
        .collect();
    assert_eq!(kinds, vec![("message", Some(200)), ("message", Some(404))]);
    assert_eq!(net.core.active_calls(), 0, "no call made");
}

#[test]
fn the_shipped_plans_route_emergency_calls_first() {
    for file in ["default.toml", "screening.toml", "ims-as.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("dialplans")
            .join(file);
        let plan = warden::dialplan::Dialplan::load(&path).expect("the shipped plan loads");
        assert_eq!(plan.rules[0].name, "emergency", "{file}");
    }
}

#[test]
fn a_bridge_after_warden_answered_connects_the_callee_without_a_second_200() {
    let plan = r#"
[[rule]]
name = "ivr"
do = [{ answer = true }, { bridge = "user:bob", timeout = 20 }, { play = "user_unavailable" }]
"#;
    let mut net = Net::with_plan(quiet_media(), plan);
    let (mut alice, mut bob) = parties(&mut net);
    let invite = alice.invite(&mut net, "bob", &sdp(7110, "sendrecv"), &[]);
    let got = responses(&alice.receive(&mut net));
    assert_eq!(
        got.iter().map(|r| r.status()).collect::<Vec<_>>(),
        vec![100, 200],
        "Warden answers first"
    );
    let a = alice.dialog_as_caller(&invite, &got[1]);
    alice.ack(&mut net, &a, "");
    let stream = net.media.open_streams()[0];
    let [a_port, b_port] = net.media.ports(stream).expect("the call's stream");
    assert_eq!(media_port(got[1].body()), Some(a_port));

    let b_invite = bob.expect(&mut net, "INVITE");
    assert_eq!(
        media_port(b_invite.body()),
        Some(b_port),
        "the same stream's other side"
    );
    bob.answer_with(&mut net, &b_invite, 183, &[], &sdp(7120, "sendrecv"));
    assert!(
        alice.receive(&mut net).is_empty(),
        "no early media to an answered caller"
    );
    bob.answer_with(&mut net, &b_invite, 200, &[], &sdp(7120, "sendrecv"));
    assert_eq!(summary(&bob.receive(&mut net)), vec!["ACK"]);
    assert!(alice.receive(&mut net).is_empty(), "no second 200");
    assert_eq!(net.media.open_streams(), vec![stream], "no new stream");

    let mut a = a;
    alice.request(&mut net, &mut a, "BYE", &[], "");
    let bye = bob.expect(&mut net, "BYE");
    bob.answer(&mut net, &bye, 200, "");
    assert_eq!(statuses(&alice.receive(&mut net)), vec![200]);
    let r = net.record();
    assert_eq!(r.b_call_id, b_invite.call_id());
    assert_eq!(net.core.active_calls(), 0);
}

#[test]
fn a_bridge_after_answer_that_rings_out_goes_on_with_the_plan() {
    let plan = r#"
[[rule]]
name = "ivr"
do = [{ answer = true }, { bridge = "user:bob", timeout = 5 }]
"#;
    let mut net = Net::with_plan(quiet_media(), plan);
    let (mut alice, mut bob) = parties(&mut net);
    let invite = alice.invite(&mut net, "bob", &sdp(7110, "sendrecv"), &[]);
    let got = responses(&alice.receive(&mut net));
    let a = alice.dialog_as_caller(&invite, &got[1]);
    alice.ack(&mut net, &a, "");
    let b_invite = bob.expect(&mut net, "INVITE");
    bob.answer_with(&mut net, &b_invite, 180, &[], "");
    net.advance(Duration::from_secs(5));
    let cancel = bob.expect(&mut net, "CANCEL");
    bob.answer(&mut net, &cancel, 200, "");
    bob.answer_with(&mut net, &b_invite, 487, &[], "");
    // The plan ran out: Warden hangs up the caller it answered.
    let bye = alice.expect(&mut net, "BYE");
    alice.answer(&mut net, &bye, 200, "");
    assert_eq!(net.core.active_calls(), 0);
}

#[test]
fn a_gateway_that_stops_answering_probes_is_skipped_until_it_answers() {
    let (gw1, gw2) = ("127.0.0.1:7201", "127.0.0.1:7202");
    let plan = format!(
        r#"
[[rule]]
name = "trunk"
do = [{{ bridge = ["sip:${{callee}}@{gw1}", "sip:${{callee}}@{gw2}"], probe = true, timeout = 20 }}]
"#
    );
    let mut config = quiet_media();
    config.calls.probe_s = 10;
    config.calls.probe_failures = 2;
    let mut net = Net::with_plan(config, &plan);
    let mut first = Phone::new("gw", gw1);
    let mut second = Phone::new("gw", gw2);
    // Both are probed at once; the second answers each probe, the first stays silent:
    // each of its probes fails at Timer F (32 s), the next goes out at once.
    let answer_probes = |net: &mut Net, phone: &mut Phone| {
        let probes = requests(&phone.receive(net), "OPTIONS");
        for probe in &probes {
            phone.answer(net, probe, 200, "");
        }
        probes
    };
    net.advance(Duration::from_secs(1));
    let probes = answer_probes(&mut net, &mut second);
    assert_eq!(probes[0].uri().to_string(), format!("sip:{gw2}"));
    for _ in 0..6 {
        net.advance(Duration::from_secs(10));
        answer_probes(&mut net, &mut second);
        first.receive(&mut net);
        assert!(net.core.gateways()[0].up, "up until its second failure");
    }
    net.advance(Duration::from_secs(5)); // 66 s: two probes failed
    answer_probes(&mut net, &mut second);
    first.receive(&mut net);
    let states = net.core.gateways();
    let expected = [(format!("sip:{gw1}"), false), (format!("sip:{gw2}"), true)];
    assert_eq!(
        states
            .iter()
            .map(|g| (g.gateway.clone(), g.up))
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(states[0].last_status, Some(408));

    // A call skips the first gateway at once and rings the second.
    let mut alice = Phone::new("alice", ALICE);
    alice.invite(&mut net, "0441234567", &sdp(7110, "sendrecv"), &[]);
    assert!(
        requests(&first.receive(&mut net), "INVITE").is_empty(),
        "not waited for"
    );
    let invite = second.expect(&mut net, "INVITE");
    assert_eq!(invite.uri().to_string(), format!("sip:0441234567@{gw2}"));

    // The first answers a probe again: up.
    net.advance(Duration::from_secs(40));
    answer_probes(&mut net, &mut first);
    assert!(net.core.gateways()[0].up);
}

/// The core asked for a DNS lookup: (call, attempt, what).
fn resolve_asked(net: &mut Net) -> (u64, u64, warden::dns::Lookup) {
    let asked = std::mem::take(&mut net.asks);
    asked
        .into_iter()
        .find_map(|o| match o {
            warden::core::Output::Resolve {
                call,
                attempt,
                lookup,
            } => Some((call, attempt, lookup)),
            _ => None,
        })
        .expect("a DNS lookup asked for")
}

#[test]
fn a_uri_located_at_two_srv_targets_fails_over_on_timeout_and_on_503() {
    let (first, second, third) = ("127.0.0.1:7301", "127.0.0.1:7302", "127.0.0.1:7303");
    let plan = r#"
[[rule]]
name = "carrier"
do = [{ bridge = "sip:${callee}@carrier.example" }]
"#;
    let mut net = Net::with_plan(quiet_media(), plan);
    let mut alice = Phone::new("alice", ALICE);
    alice.invite(&mut net, "0441234567", &sdp(7110, "sendrecv"), &[]);
    alice.receive(&mut net);
    let (call, attempt, lookup) = resolve_asked(&mut net);
    let uri = "sip:0441234567@carrier.example".to_owned();
    assert_eq!(lookup, warden::dns::Lookup::Host { uri: uri.clone() });
    // What locating the URI gave (RFC 3263): three destinations in SRV order.
    let found = [first, second, third]
        .iter()
        .map(|a| (uri.clone(), common::core::udp(a)))
        .collect();
    net.core.handle_resolved(call, attempt, found, net.now);
    net.collect();
    let mut gw = [first, second, third].map(|a| Phone::new("gw", a));
    let invite = gw[0].expect(&mut net, "INVITE");
    assert_eq!(invite.uri().to_string(), uri);
    assert!(gw[1].receive(&mut net).is_empty(), "one at a time");

    // Silence: Timer B (32 s), then the next target, same Request-URI.
    net.advance(Duration::from_secs(32));
    gw[0].receive(&mut net);
    let invite = gw[1].expect(&mut net, "INVITE");
    assert_eq!(invite.uri().to_string(), uri);
    gw[1].answer_with(&mut net, &invite, 503, &[], "");
    let invite = gw[2].expect(&mut net, "INVITE");
    gw[2].answer_with(&mut net, &invite, 200, &[], &sdp(7120, "sendrecv"));
    assert_eq!(statuses(&alice.receive(&mut net)), vec![200]);
}

#[test]
fn an_s_cscf_named_in_the_route_is_located_by_dns_and_trusted_by_name() {
    let scscf = "127.0.0.1:7401";
    let plan = r#"
[[rule]]
name = "ims"
do = [{ bridge = "ims" }]
"#;
    let mut config = quiet_media();
    config.ims.trusted_scscf = vec!["localhost".into()];
    config.validate().expect("a name that resolves is accepted");
    let mut net = Net::with_plan(config, plan);
    let mut core_side = Phone::new("scscf", scscf);
    let route = "Route: <sip:127.0.0.1:5060;lr>, <sip:scscf.ims.test;lr;odi=abc>";
    core_side.invite(&mut net, "+41441234567", &sdp(7110, "sendrecv"), &[route]);
    core_side.receive(&mut net);
    let (call, attempt, lookup) = resolve_asked(&mut net);
    let request_uri = "sip:+41441234567@127.0.0.1".to_owned();
    assert_eq!(
        lookup,
        warden::dns::Lookup::Route {
            next_hop: "sip:scscf.ims.test;lr;odi=abc".into(),
            request_uri: request_uri.clone(),
        }
    );
    // Two SRV targets: the first refuses with 503, the second keeps the Route set.
    let busy = "127.0.0.1:7402";
    let found = vec![
        (request_uri.clone(), common::core::udp(busy)),
        (request_uri.clone(), common::core::udp(scscf)),
    ];
    net.core.handle_resolved(call, attempt, found, net.now);
    net.collect();
    let busy_side = Phone::new("scscf", busy);
    let first = requests(&net.take(busy), "INVITE");
    busy_side.answer_with(&mut net, &first[0], 503, &[], "");
    let invite = core_side.expect(&mut net, "INVITE");
    assert_eq!(invite.uri().to_string(), request_uri);
    assert_eq!(
        invite.header("Route").as_deref(),
        Some("<sip:scscf.ims.test;lr;odi=abc>"),
        "the S-CSCF's own entry, back along the Route set"
    );
}

#[test]
fn a_prompt_to_a_caller_with_preconditions_follows_the_precondition_flow() {
    let plan = r#"
[[rule]]
name = "announce"
do = [{ play = "user_unavailable" }, { reject = 480 }]
"#;
    let mut net = Net::with_plan(quiet_media(), plan);
    let mut alice = Phone::new("alice", ALICE);
    let offer = |local: &str| {
        sdp(7110, "sendrecv")
            + &format!(
                "a=curr:qos local {local}\r\na=curr:qos remote none\r\n\
                 a=des:qos mandatory local sendrecv\r\na=des:qos mandatory remote sendrecv\r\n"
            )
    };
    let headers = ["Require: precondition", "Supported: 100rel"];
    let invite = alice.invite(&mut net, "5555", &offer("none"), &headers);
    let got = responses(&alice.receive(&mut net));
    assert_eq!(
        got.iter().map(|r| r.status()).collect::<Vec<_>>(),
        vec![100, 183],
        "precondition is no Bad Extension"
    );
    let text = String::from_utf8_lossy(got[1].body()).into_owned();
    for line in [
        "a=curr:qos local sendrecv",
        "a=curr:qos remote none",
        "a=des:qos mandatory remote sendrecv",
        "a=des:qos mandatory local sendrecv",
        "a=conf:qos remote sendrecv",
    ] {
        assert!(text.contains(line), "{line} in Warden's answer:\n{text}");
    }
    assert!(
        got[1].lists("Require", "100rel"),
        "reliable: its SDP must be PRACKed"
    );
    let mut early = alice.dialog_as_caller(&invite, &got[1]);
    prack(&mut net, &mut alice, &mut early, &got[1], "");
    assert_eq!(statuses(&alice.receive(&mut net)), vec![200]);

    // The caller's resources are ready: its UPDATE says so, Warden's 200 agrees.
    alice.request(&mut net, &mut early, "UPDATE", &[], &offer("sendrecv"));
    let ok = responses(&alice.receive(&mut net));
    assert_eq!(ok.iter().map(|r| r.status()).collect::<Vec<_>>(), vec![200]);
    let text = String::from_utf8_lossy(ok[0].body()).into_owned();
    assert!(text.contains("a=curr:qos remote sendrecv"), "{text}");
    assert!(!text.contains("a=conf:"), "nothing left to confirm");
    assert!(
        text.contains("o=warden") && text.contains(" 2 IN IP4"),
        "a new version: {text}"
    );
}

//! The calls the admin API places and steers, on virtual time: a real `Core` with fake
//! media, phones that speak SIP to it without a socket. An originated call's first party
//! ringing out, answering twice over a lost ACK, the keys and the transfer the API asks
//! for, the recording the dialplan asks for, and the events each step reports.

mod common;

use std::time::Duration;

use warden::core::{Control, Originate, Output, Party, Then};
use warden::media::fake::Command;
use warden_media::Side as MediaSide;

use common::core::{Net, Phone, requests, sdp, statuses};

const ALICE: &str = "127.0.0.1:7001";
const BOB: &str = "127.0.0.1:7002";
const CAROL: &str = "127.0.0.1:7004";

fn originate(to: &str, then: Then) -> Originate {
    Originate {
        to: to.into(),
        then,
        caller_id: None,
        caller_name: None,
        timeout_s: Some(20),
    }
}

/// Place `call` through the core, as `POST /calls` does, and let it act.
fn place(net: &mut Net, call: Originate) -> warden::core::Placed {
    let (now, unix_ms) = (net.now, net.unix_ms());
    let placed = net.core.originate(call, now, unix_ms).expect("placed");
    net.collect();
    placed
}

/// The kinds of the events the core reported since the last look.
fn events(net: &mut Net) -> Vec<String> {
    let asks = std::mem::take(&mut net.asks);
    asks.into_iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.what.kind().to_owned()),
            _ => None,
        })
        .collect()
}

/// `net` with a subscriber on its event stream (the core reports only then).
fn listened(mut net: Net) -> (Net, warden::events::Hub, warden::events::Subscription) {
    let hub = warden::events::Hub::new(64);
    let subscription = hub.subscribe();
    net.core.set_event_listeners(hub.listeners());
    (net, hub, subscription)
}

#[test]
fn a_first_party_that_rings_out_is_cancelled_and_its_record_closed() {
    let (mut net, _hub, _sub) = listened(Net::new());
    let mut alice = Phone::new("alice", ALICE);
    alice.register(&mut net);
    assert_eq!(events(&mut net), ["registered"]);
    let placed = place(&mut net, originate("alice", Then::Dial("1001".into())));
    let invite = alice.expect(&mut net, "INVITE");
    assert!(invite.body().is_empty(), "no offer in Warden's INVITE");
    alice.answer(&mut net, &invite, 180, "");
    assert_eq!(events(&mut net), ["call_started", "ringing"]);
    let live = net.core.live_calls();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].state, "originating");

    net.advance(Duration::from_millis(20_100));
    let cancel = alice.expect(&mut net, "CANCEL");
    alice.answer(&mut net, &cancel, 200, "");
    alice.answer(&mut net, &invite, 487, "");
    assert_eq!(requests(&alice.receive(&mut net), "ACK").len(), 1);
    assert_eq!(events(&mut net), ["ended"]);
    assert_eq!(net.core.active_calls(), 0);
    let record = net.record();
    assert_eq!(record.id, placed.record);
    assert_eq!(
        (
            record.origin.as_str(),
            record.final_code,
            record.end_reason.as_deref()
        ),
        ("api", Some(487), Some("no answer"))
    );
}

#[test]
fn a_lost_ack_is_sent_again_and_the_answered_party_goes_on_to_the_dialplan() {
    let (mut net, _hub, _sub) = listened(Net::new());
    let (mut alice, mut bob) = (Phone::new("alice", ALICE), Phone::new("bob", BOB));
    alice.register(&mut net);
    bob.register(&mut net);
    assert_eq!(events(&mut net), ["registered", "registered"]);
    let placed = place(&mut net, originate("alice", Then::Dial("bob".into())));
    let invite = alice.expect(&mut net, "INVITE");
    let ok = alice.answer(&mut net, &invite, 200, &sdp(7010, "sendrecv"));
    let ack = alice.expect(&mut net, "ACK");
    assert!(
        ack.body().starts_with(b"v=0"),
        "Warden's answer rides in the ACK"
    );
    // The 200 again, as if the ACK were lost: the same ACK again, no second call.
    net.deliver(ALICE, &warden::sip::message::Message::Response(ok));
    let again = alice.expect(&mut net, "ACK");
    assert_eq!(again.to_bytes(), ack.to_bytes());
    let to_bob = bob.expect(&mut net, "INVITE");
    assert!(
        to_bob
            .header("From")
            .unwrap_or_default()
            .contains("sip:alice@")
    );
    bob.answer(&mut net, &to_bob, 200, &sdp(7020, "sendrecv"));
    bob.expect(&mut net, "ACK");
    assert!(
        alice.receive(&mut net).is_empty(),
        "nothing more for alice: no re-INVITE"
    );
    assert_eq!(
        events(&mut net),
        ["call_started", "answered", "answered"],
        "placed, alice answered, bob answered"
    );
    let id: u64 = placed.id.parse().expect("a call number");

    // Keys to bob, one at a time, 200 ms apart.
    let keys = Control::Dtmf {
        digits: "1#".into(),
        side: Party::Callee,
    };
    let now = net.now;
    net.core.control(id, keys, now).expect("keys sent");
    net.collect();
    let mut sent = Vec::new();
    let mut take_keys = |net: &Net| {
        sent.extend(net.media_commands().into_iter().filter_map(|c| match c {
            Command::SendDtmf { side, key, .. } => Some((side, key)),
            _ => None,
        }));
        sent.clone()
    };
    assert_eq!(take_keys(&net), [(MediaSide::B, '1')]);
    net.advance(Duration::from_millis(199));
    assert_eq!(
        take_keys(&net).len(),
        1,
        "the next key waits for the first to end"
    );
    net.advance(Duration::from_millis(2));
    assert_eq!(take_keys(&net), [(MediaSide::B, '1'), (MediaSide::B, '#')]);
    let busy = Control::Dtmf {
        digits: "1".into(),
        side: Party::Both,
    };
    let now = net.now;
    assert!(
        net.core.control(id, busy, now).is_err(),
        "keys go to one side"
    );
    let record = net.record();
    assert_eq!(
        (record.origin.as_str(), record.caller.as_str()),
        ("api", "alice")
    );
}

#[test]
fn the_api_transfers_the_callee_s_place_and_hangs_the_callee_up_without_a_notify() {
    let (mut net, _hub, _sub) = listened(Net::new());
    let (mut alice, mut bob, mut carol) = (
        Phone::new("alice", ALICE),
        Phone::new("bob", BOB),
        Phone::new("carol", CAROL),
    );
    bob.register(&mut net);
    carol.register(&mut net);
    let a_invite = alice.invite(&mut net, "bob", &sdp(7010, "sendrecv"), &[]);
    assert_eq!(statuses(&alice.receive(&mut net)), vec![100]);
    let b_invite = bob.expect(&mut net, "INVITE");
    bob.answer(&mut net, &b_invite, 200, &sdp(7020, "sendrecv"));
    let a_ok = alice
        .responses(&mut net)
        .into_iter()
        .find(|r| r.status() == 200)
        .expect("200");
    let a = alice.dialog_as_caller(&a_invite, &a_ok);
    alice.ack(&mut net, &a, "");
    bob.expect(&mut net, "ACK");
    let id = net.core.live_calls()[0].id;
    let _ = events(&mut net);

    let transfer = Control::Transfer {
        target: "carol".into(),
        replace: Party::Callee,
    };
    let now = net.now;
    net.core.control(id, transfer, now).expect("transfer asked");
    net.collect();
    let to_carol = carol.expect(&mut net, "INVITE");
    carol.answer(&mut net, &to_carol, 200, &sdp(7030, "sendrecv"));
    carol.expect(&mut net, "ACK");
    let to_bob = bob.receive(&mut net);
    assert!(
        requests(&to_bob, "NOTIFY").is_empty(),
        "nobody subscribed: no NOTIFY"
    );
    assert_eq!(
        requests(&to_bob, "BYE").len(),
        1,
        "bob's place is carol's now"
    );
    assert!(
        alice.receive(&mut net).is_empty(),
        "alice keeps her ports: no re-INVITE"
    );
    let kinds = events(&mut net);
    assert_eq!(
        kinds,
        ["transfer", "transfer", "ended"],
        "requested, completed, and the first part's record"
    );
    let records = net.latest_records();
    let record = records.last().expect("the transferred call's record");
    assert_eq!(
        (record.caller.as_str(), record.callee.as_str()),
        ("alice", "carol")
    );
    assert!(record.linked_id.is_some());

    // A transfer on a call that is not bridged (none now in progress) is refused.
    let again = Control::Transfer {
        target: "nobody".into(),
        replace: Party::Both,
    };
    let now = net.now;
    assert!(net.core.control(id, again, now).is_err());
    assert!(
        net.core
            .control(
                id + 100,
                Control::Dtmf {
                    digits: "1".into(),
                    side: Party::Callee
                },
                now
            )
            .is_err_and(|e| e.starts_with("not found"))
    );
}

#[test]
fn the_dialplan_records_a_transcoded_call_once_the_callee_answers_and_the_api_stops_it() {
    let plan = "[[rule]]\nname = \"recorded\"\n\
                do = [{ record = \"stereo\" }, { bridge = \"user:${callee}\" }]\n";
    let (mut net, _hub, _sub) = listened(Net::with_plan(warden::config::Config::default(), plan));
    let (mut alice, mut bob) = (Phone::new("alice", ALICE), Phone::new("bob", BOB));
    bob.register(&mut net);
    let a_invite = alice.invite(&mut net, "bob", &sdp(7010, "sendrecv"), &[]);
    let b_invite = bob.expect(&mut net, "INVITE");
    bob.answer(&mut net, &b_invite, 180, "");
    let recordings = |net: &Net| {
        net.media_commands()
            .into_iter()
            .filter(|c| matches!(c, Command::Record { .. } | Command::StopRecording { .. }))
            .collect::<Vec<_>>()
    };
    assert!(
        recordings(&net).is_empty(),
        "nothing to record while bob rings"
    );
    // Bob answers in PCMA only: Warden transcodes, and each side is decoded by its codec.
    let pcma = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                m=audio 7020 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n";
    bob.answer(&mut net, &b_invite, 200, pcma);
    let a_ok = alice
        .responses(&mut net)
        .into_iter()
        .find(|r| r.status() == 200)
        .expect("200");
    let a = alice.dialog_as_caller(&a_invite, &a_ok);
    alice.ack(&mut net, &a, "");
    let started = recordings(&net);
    let [Command::Record { path, codecs, .. }] = started.as_slice() else {
        panic!("one recording started: {started:?}");
    };
    assert_eq!(codecs, &[Some("PCMU"), Some("PCMA")]);
    let file = path
        .file_name()
        .expect("a file")
        .to_string_lossy()
        .into_owned();
    assert!(file.ends_with(".wav"), "{file}");

    let id = net.core.live_calls()[0].id;
    let now = net.now;
    let stopped = net
        .core
        .control(id, Control::StopRecording {}, now)
        .expect("stopped");
    net.collect();
    assert!(
        matches!(recordings(&net).last(), Some(Command::StopRecording { .. })),
        "{stopped}"
    );
    let now = net.now;
    assert!(
        net.core
            .control(id, Control::StopRecording {}, now)
            .is_err(),
        "nothing left to stop"
    );
    let kinds = events(&mut net);
    assert_eq!(
        kinds.iter().filter(|k| *k == "recording").count(),
        2,
        "started and stopped: {kinds:?}"
    );
    assert_eq!(net.record().recording.as_deref(), Some(file.as_str()));
}

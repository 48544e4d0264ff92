//! Every call flow on virtual time: a real `Core` with fake media, phones that speak SIP to
//! it without a socket, and a clock the test moves. Each test asserts what both legs
//! receive and the call's record. Run it under `unshare -n` to see it binds nothing.

mod common;

use std::time::Duration;

use rand::SeedableRng;
use warden::config::Config;
use warden::core::Output;
use warden::media::fake::Command;
use warden::screening::{Answer, Decision, Outcome, Verdict};
use warden::sip::message::{Message, Request, Response};
use warden_media::dtmf::Digit;
use warden_media::{MediaEvent, Side as MediaSide, StreamId};

use common::core::{Dialog, Net, Phone, media_port, plays, requests, sdp, statuses};

const ALICE: &str = "127.0.0.1:7001";
const BOB: &str = "127.0.0.1:7002";
const BOB_DESK: &str = "127.0.0.1:7003";
const CAROL: &str = "127.0.0.1:7004";

/// Alice, and bob and carol registered.
fn parties(net: &mut Net) -> (Phone, Phone, Phone) {
    let (alice, mut bob, mut carol) = (
        Phone::new("alice", ALICE),
        Phone::new("bob", BOB),
        Phone::new("carol", CAROL),
    );
    bob.register(net);
    carol.register(net);
    (alice, bob, carol)
}

/// A bridged call as both parties hold it.
struct Bridged {
    /// The caller's dialog with Warden, and the callee's.
    a: Dialog,
    b: Dialog,
}

/// `caller` calls `to` with an offer; `callee` answers with one; the caller ACKs.
fn bridge(net: &mut Net, caller: &mut Phone, to: &str, callee: &mut Phone) -> Bridged {
    let a_invite = caller.invite(net, to, &sdp(7010, "sendrecv"), &[]);
    assert_eq!(statuses(&caller.receive(net)), vec![100]);
    let b_invite = callee.expect(net, "INVITE");
    assert_ne!(b_invite.call_id(), a_invite.call_id(), "a B-leg of its own");
    let stream = *net.media.open_streams().last().expect("a stream");
    let [a_port, b_port] = net.media.ports(stream).expect("its ports");
    assert_eq!(
        media_port(b_invite.body()),
        Some(b_port),
        "the callee is offered Warden's port"
    );
    let b_ok = callee.answer(net, &b_invite, 200, &sdp(7020, "sendrecv"));
    let a_ok = only(caller.responses(net), 200);
    assert_eq!(media_port(a_ok.body()), Some(a_port), "anchored answer");
    let a = caller.dialog_as_caller(&a_invite, &a_ok);
    caller.ack(net, &a, "");
    callee.expect(net, "ACK");
    Bridged {
        a,
        b: callee.dialog_as_callee(&b_invite, &b_ok),
    }
}

/// `from` hangs up `dialog`; `to` gets the BYE and answers it; `from` gets its 200.
fn hang_up(net: &mut Net, from: &mut Phone, dialog: &mut Dialog, to: &mut Phone) {
    from.request(net, dialog, "BYE", &[], "");
    let bye = to.expect(net, "BYE");
    to.answer(net, &bye, 200, "");
    assert_eq!(statuses(&from.receive(net)), vec![200]);
}

/// The one response among `got`, with `status`.
fn only(got: Vec<Response>, status: u16) -> Response {
    assert_eq!(
        got.iter().map(|r| r.status()).collect::<Vec<_>>(),
        vec![status],
        "{got:?}"
    );
    got.into_iter().next().expect("one response")
}

/// Answer every request in `got` with 200 (NOTIFYs, BYEs); returns their methods.
fn answer_all(net: &mut Net, phone: &mut Phone, got: &[Message]) -> Vec<String> {
    let mut methods = Vec::new();
    for m in got {
        if let Message::Request(r) = m {
            phone.answer(net, r, 200, "");
            methods.push(r.method().as_str().to_owned());
        }
    }
    methods
}

/// The sipfrag status lines of the NOTIFYs among `got`.
fn notified(got: &[Message]) -> Vec<String> {
    requests(got, "NOTIFY")
        .iter()
        .map(|n| {
            String::from_utf8_lossy(n.body())
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

fn outcome(decision: Decision) -> Outcome {
    Outcome {
        decision,
        findings: Vec::new(),
        score: 0,
        destination: None,
        country: None,
        trusted: false,
        identity_verified: false,
        identity_failed: false,
        verstat: None,
        attestation: None,
    }
}

fn block(answer: Answer) -> Outcome {
    outcome(Decision::Block(Verdict {
        answer,
        prompt: None,
    }))
}

/// The stream of every prompt played since the last look, to whom, and its length.
fn played(net: &Net) -> Vec<(StreamId, MediaSide, usize)> {
    plays(&net.media_commands())
}

/// Frames in the shipped prompt `name` (20 ms each, whatever the codec).
fn frames_of(names: &[&str]) -> usize {
    let mut prompts = warden::prompts::load(&Config::default()).expect("prompts");
    let pcmu = warden_media::codec::by_name("PCMU", 8000).expect("PCMU");
    prompts
        .sequence(names, pcmu, &Default::default())
        .expect("prompt")
        .frames
        .len()
}

#[test]
fn forking_rings_every_contact_and_the_first_answer_wins() {
    let mut net = Net::new();
    let (mut alice, mut bob, _) = parties(&mut net);
    let mut desk = Phone::new("bob", BOB_DESK);
    desk.register(&mut net);

    let a_invite = alice.invite(&mut net, "bob", &sdp(7010, "sendrecv"), &[]);
    assert_eq!(statuses(&alice.receive(&mut net)), vec![100]);
    let mobile_invite = bob.expect(&mut net, "INVITE");
    let desk_invite = desk.expect(&mut net, "INVITE");
    assert_ne!(mobile_invite.call_id(), desk_invite.call_id());

    desk.answer(&mut net, &desk_invite, 180, "");
    only(alice.responses(&mut net), 180);
    let ok = bob.answer(&mut net, &mobile_invite, 200, &sdp(7020, "sendrecv"));
    let a_ok = only(alice.responses(&mut net), 200);
    assert_eq!(media_port(a_ok.body()), Some(40_000));

    // The losing fork is cancelled: CANCEL, its 487, and the ACK for that.
    let cancel = desk.expect(&mut net, "CANCEL");
    desk.answer(&mut net, &cancel, 200, "");
    desk.answer(&mut net, &desk_invite, 487, "");
    desk.expect(&mut net, "ACK");

    let mut a = alice.dialog_as_caller(&a_invite, &a_ok);
    alice.ack(&mut net, &a, "");
    bob.expect(&mut net, "ACK");
    net.advance(Duration::from_secs(30));
    hang_up(&mut net, &mut alice, &mut a, &mut bob);
    assert!(
        bob.receive(&mut net).is_empty() && desk.receive(&mut net).is_empty(),
        "nothing else to either contact"
    );

    let r = net.record();
    assert_eq!(r.final_code, Some(200));
    assert_eq!(r.b_call_id, ok.call_id(), "the mobile answered");
    assert_eq!(r.duration_ms, Some(30_000));
    assert_eq!(
        (r.hangup_side.as_deref(), r.end_reason.as_deref()),
        (Some("caller"), Some("normal"))
    );
    assert_eq!(net.core.active_calls(), 0);
    assert!(net.media.open_streams().is_empty(), "media released");
}

#[test]
fn silent_media_ends_the_call_after_the_configured_timeout() {
    let mut config = Config::default();
    config.media.rtp_timeout_s = 10;
    let mut net = Net::with_config(config);
    let (mut alice, mut bob, _) = parties(&mut net);
    bridge(&mut net, &mut alice, "bob", &mut bob);
    let stream = net.media.open_streams()[0];
    for _ in 0..5 {
        net.media.add_packets(stream, MediaSide::A, 50);
        net.media.add_packets(stream, MediaSide::B, 50);
        net.advance(Duration::from_secs(1));
    }
    // The media stopped at 5 s: nothing at 5 + 9 s, BYE to both by 5 + 12 s.
    net.advance(Duration::from_secs(8));
    assert!(alice.receive(&mut net).is_empty() && bob.receive(&mut net).is_empty());
    net.advance(Duration::from_secs(4));
    for phone in [&mut alice, &mut bob] {
        let bye = phone.expect(&mut net, "BYE");
        phone.answer(&mut net, &bye, 200, "");
    }
    let r = net.record();
    assert_eq!(
        (r.hangup_side.as_deref(), r.end_reason.as_deref()),
        (Some("warden"), Some("media timeout"))
    );
    assert_eq!((r.a_packets, r.b_packets), (Some(250), Some(250)));
    assert_eq!(net.core.active_calls(), 0);
}

#[test]
fn hold_plays_music_to_the_held_party_and_resume_stops_it() {
    let mut net = Net::new();
    let (mut alice, mut bob, _) = parties(&mut net);
    let mut call = bridge(&mut net, &mut alice, "bob", &mut bob);
    net.media_commands();

    // Alice holds: her re-INVITE reaches bob, his answer reaches her, bob hears music.
    alice.request(&mut net, &mut call.a, "INVITE", &[], &sdp(7010, "sendonly"));
    let reinvite = bob.expect(&mut net, "INVITE");
    let offer = String::from_utf8_lossy(reinvite.body()).to_string();
    assert!(
        offer.contains("a=sendonly") && offer.contains("m=audio 40002"),
        "{offer}"
    );
    bob.answer(&mut net, &reinvite, 200, &sdp(7020, "recvonly"));
    let ok = only(alice.responses(&mut net), 200);
    assert!(String::from_utf8_lossy(ok.body()).contains("a=recvonly"));
    alice.ack(&mut net, &call.a, "");
    bob.expect(&mut net, "ACK");
    let music = net.media_commands();
    let to_bob: Vec<_> = music
        .iter()
        .filter_map(|c| match c {
            Command::Play { side, how, .. } => Some((*side, how.repeat)),
            _ => None,
        })
        .collect();
    assert_eq!(
        to_bob,
        vec![(MediaSide::B, u32::MAX)],
        "music on hold, looped"
    );

    // Resume: the music stops.
    alice.request(&mut net, &mut call.a, "INVITE", &[], &sdp(7010, "sendrecv"));
    let reinvite = bob.expect(&mut net, "INVITE");
    bob.answer(&mut net, &reinvite, 200, &sdp(7020, "sendrecv"));
    only(alice.responses(&mut net), 200);
    alice.ack(&mut net, &call.a, "");
    bob.expect(&mut net, "ACK");
    assert!(net.media_commands().iter().any(|c| matches!(
        c,
        Command::StopPlaying {
            side: MediaSide::B,
            ..
        }
    )));
    hang_up(&mut net, &mut bob, &mut call.b, &mut alice);
    let r = net.record();
    assert_eq!(
        (r.final_code, r.hangup_side.as_deref()),
        (Some(200), Some("callee"))
    );
}

#[test]
fn a_prompt_plays_as_early_media_and_then_the_call_is_bridged() {
    let plan = "[[rule]]\nname = \"greeting\"\ndo = [{ play = \"ivr_menu\" }, { bridge = \"user:bob\" }]\n";
    let mut net = Net::with_plan(Config::default(), plan);
    let (mut alice, mut bob, _) = parties(&mut net);
    let invite = alice.invite(&mut net, "bob", &sdp(7010, "sendrecv"), &[]);
    let got = alice.responses(&mut net);
    assert_eq!(
        got.iter().map(|r| r.status()).collect::<Vec<_>>(),
        vec![100, 183]
    );
    assert_eq!(
        media_port(got[1].body()),
        Some(40_000),
        "Warden's own answer"
    );
    let prompt = played(&net);
    assert_eq!(
        prompt.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>(),
        vec![(MediaSide::A, frames_of(&["ivr_menu"]))]
    );
    assert!(bob.receive(&mut net).is_empty(), "bob waits for the prompt");

    net.advance(Duration::from_secs(1));
    net.prompt_ended(prompt[0].0);
    let b_invite = bob.expect(&mut net, "INVITE");
    bob.answer(&mut net, &b_invite, 200, &sdp(7020, "sendrecv"));
    let ok = only(alice.responses(&mut net), 200);
    let mut a = alice.dialog_as_caller(&invite, &ok);
    alice.ack(&mut net, &a, "");
    bob.expect(&mut net, "ACK");
    hang_up(&mut net, &mut alice, &mut a, &mut bob);
    let r = net.record();
    assert_eq!(r.rule.as_deref(), Some("greeting"));
    assert_eq!(
        (r.final_code, r.end_reason.as_deref()),
        (Some(200), Some("normal"))
    );
}

const SCREENED: &str =
    "[[rule]]\nname = \"screened\"\ndo = [{ screen = \"default\" }, { bridge = \"user:bob\" }]\n";

/// A call from alice to bob waiting at its `screen` action: alice has her 100, bob has
/// nothing yet, and the screener was asked.
struct Held {
    net: Net,
    alice: Phone,
    bob: Phone,
    /// Alice's INVITE, and what the screener was asked about it.
    invite: Request,
    asked: warden::screening::Request,
}

/// Alice calls bob (with `extra` header lines) through the screening dialplan.
fn held_for_screening(extra: &[&str]) -> Held {
    let mut net = Net::with_plan(Config::default(), SCREENED);
    let (mut alice, mut bob, _) = parties(&mut net);
    let invite = alice.invite(&mut net, "bob", &sdp(7010, "sendrecv"), extra);
    assert_eq!(statuses(&alice.receive(&mut net)), vec![100]);
    let asked = net.screens.pop().expect("screening asked");
    assert!(
        bob.receive(&mut net).is_empty(),
        "nobody rings before the verdict"
    );
    Held {
        net,
        alice,
        bob,
        invite,
        asked,
    }
}

#[test]
fn an_allowed_call_goes_on_to_its_bridge_and_the_screener_hears_it_end() {
    let Held {
        mut net,
        mut alice,
        mut bob,
        invite,
        asked,
    } = held_for_screening(&[]);
    assert_eq!(
        (asked.callee.as_str(), asked.profile.as_str()),
        ("bob", "default")
    );

    net.screened(asked.call, outcome(Decision::Allow));
    let b_invite = bob.expect(&mut net, "INVITE");
    bob.answer(&mut net, &b_invite, 200, &sdp(7020, "sendrecv"));
    let ok = only(alice.responses(&mut net), 200);
    let mut a = alice.dialog_as_caller(&invite, &ok);
    alice.ack(&mut net, &a, "");
    bob.expect(&mut net, "ACK");
    net.advance(Duration::from_secs(12));
    hang_up(&mut net, &mut alice, &mut a, &mut bob);

    let r = net.record();
    assert_eq!(r.screening.as_deref(), Some("allow"));
    assert_eq!(r.final_code, Some(200));
    assert!(r.tags.contains("screening:allow"), "{}", r.tags);
    assert!(
        net.asks
            .iter()
            .any(|o| matches!(o, Output::Screened { call, answered_s: 12 } if *call == asked.call)),
        "the screener hears the call ended after 12 s of talk: {:?}",
        net.asks
    );
}

#[test]
fn each_kind_of_block_gets_its_own_answer_and_the_callee_never_rings() {
    let network_blocked = "SIP;cause=603;text=\"v=analytics1\";location=TN";
    let cases: [(Answer, &[&str], u16, &str); 6] = [
        (Answer::Decline, &[], 603, ""),
        (Answer::NetworkBlocked, &[], 603, network_blocked),
        (Answer::Unavailable, &[], 503, ""),
        (Answer::Identity(438), &[], 438, ""),
        (
            Answer::Redirect("+1".into()),
            &[],
            302,
            "<sip:+1bob@127.0.0.1>",
        ),
        // A caller that understands 608 gets it at once (RFC 8688 3.3).
        (Answer::Rejected, &["Feature-Caps: *;+sip.608"], 608, ""),
    ];
    for (answer, extra, status, header) in cases {
        let Held {
            mut net,
            mut alice,
            mut bob,
            asked,
            ..
        } = held_for_screening(extra);
        net.screened(asked.call, block(answer.clone()));
        let got = alice.responses(&mut net);
        let last = only(got, status);
        match status {
            302 => assert_eq!(last.header("Contact").as_deref(), Some(header)),
            603 if !header.is_empty() => {
                assert_eq!(last.reason(), "Network Blocked");
                assert_eq!(last.header("Reason").as_deref(), Some(header));
            }
            _ => {}
        }
        assert!(
            bob.receive(&mut net).is_empty(),
            "{answer:?}: bob never rings"
        );
        let r = net.record();
        assert_eq!(r.final_code, Some(i64::from(status)), "{answer:?}");
        assert_eq!(r.screening.as_deref(), Some("block"));
        assert!(
            net.media.open_streams().is_empty(),
            "{answer:?}: media released"
        );
    }
}

#[test]
fn a_608_to_a_caller_that_does_not_know_it_is_announced_first() {
    let Held {
        mut net,
        mut alice,
        mut bob,
        asked,
        ..
    } = held_for_screening(&[]);
    net.media_commands();
    net.screened(asked.call, block(Answer::Rejected));
    only(alice.responses(&mut net), 183);
    let prompt = played(&net);
    assert_eq!(prompt.len(), 1);
    assert_eq!(prompt[0].2, frames_of(&["call_blocked"]));
    net.prompt_ended(prompt[0].0);
    only(alice.responses(&mut net), 608);
    assert!(bob.receive(&mut net).is_empty());
    assert_eq!(net.record().final_code, Some(608));
}

/// The screener challenges the held call: the code the core reads to the caller, and the
/// stream it plays on.
fn challenged(held: &mut Held) -> (String, StreamId) {
    let Held {
        net, alice, asked, ..
    } = held;
    net.core.seed_random(7);
    let code = warden::core::challenge_code(&mut rand::rngs::StdRng::seed_from_u64(7));
    net.media_commands();
    let challenge = Decision::Challenge {
        value: "bob".into(),
    };
    net.screened(asked.call, outcome(challenge));
    only(alice.responses(net), 183);
    let commands = net.media_commands();
    let prompt = plays(&commands);
    let digits: Vec<String> = code.chars().map(|d| format!("digit_{d}")).collect();
    let mut names = vec!["challenge_intro"];
    names.extend(digits.iter().map(String::as_str));
    assert_eq!(prompt.len(), 1);
    assert_eq!(prompt[0].2, frames_of(&names), "the intro and the code");
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::ReportDtmf { on: true, .. }))
    );
    (code, prompt[0].0)
}

fn key(net: &mut Net, stream: StreamId, key: char) {
    net.media_event(MediaEvent::Dtmf {
        stream,
        side: MediaSide::A,
        digit: Digit {
            key,
            duration: Duration::from_millis(100),
        },
    });
}

#[test]
fn the_right_code_passes_the_challenge_and_the_call_rings() {
    let mut held = held_for_screening(&[]);
    let (code, stream) = challenged(&mut held);
    let Held {
        mut net,
        mut alice,
        mut bob,
        invite,
        asked,
    } = held;
    let call = asked.call;
    for k in code.chars() {
        key(&mut net, stream, k);
    }
    assert!(
        net.asks
            .iter()
            .any(|o| matches!(o, Output::ChallengePassed { call: c } if *c == call))
    );
    assert!(
        net.media_commands().iter().any(|c| matches!(
            c,
            Command::StopPlaying {
                side: MediaSide::A,
                ..
            }
        )),
        "the challenge's prompt stops"
    );
    let b_invite = bob.expect(&mut net, "INVITE");
    let b_ok = bob.answer(&mut net, &b_invite, 200, &sdp(7020, "sendrecv"));
    let ok = only(alice.responses(&mut net), 200);
    let a = alice.dialog_as_caller(&invite, &ok);
    alice.ack(&mut net, &a, "");
    bob.expect(&mut net, "ACK");
    let mut b = bob.dialog_as_callee(&b_invite, &b_ok);
    hang_up(&mut net, &mut bob, &mut b, &mut alice);
    let r = net.record();
    assert_eq!(r.screening.as_deref(), Some("challenge"));
    assert_eq!(
        (r.final_code, r.hangup_side.as_deref()),
        (Some(200), Some("callee"))
    );
}

#[test]
fn a_wrong_code_is_declined() {
    let mut held = held_for_screening(&[]);
    let (code, stream) = challenged(&mut held);
    let Held {
        mut net,
        mut alice,
        mut bob,
        ..
    } = held;
    let wrong: String = code
        .chars()
        .map(|d| if d == '9' { '0' } else { '9' })
        .collect();
    for k in wrong.chars() {
        key(&mut net, stream, k);
    }
    only(alice.responses(&mut net), 603);
    assert!(bob.receive(&mut net).is_empty());
    assert!(
        !net.asks
            .iter()
            .any(|o| matches!(o, Output::ChallengePassed { .. }))
    );
    let r = net.record();
    assert_eq!(
        (r.final_code, r.screening.as_deref()),
        (Some(603), Some("challenge"))
    );
}

#[test]
fn no_code_at_all_is_declined_when_the_wait_ends() {
    let mut held = held_for_screening(&[]);
    let (_, stream) = challenged(&mut held);
    let Held {
        mut net,
        mut alice,
        mut bob,
        invite,
        ..
    } = held;
    net.advance(Duration::from_secs(5));
    net.prompt_ended(stream);
    assert!(alice.receive(&mut net).is_empty(), "still waiting for keys");
    // The first key is due 10 s after the prompt's length; then the caller is declined.
    let mut waited = 5;
    let declined = loop {
        net.advance(Duration::from_secs(1));
        waited += 1;
        if let Some(r) = alice.responses(&mut net).pop() {
            break r;
        }
        assert!(waited < 60, "declined within a minute");
    };
    assert_eq!(declined.status(), 603);
    assert!(
        waited > 10,
        "not before the wait for the first key: {waited} s"
    );
    alice.ack_failure(&mut net, &invite, &declined);
    net.advance(Duration::from_secs(40));
    assert!(alice.receive(&mut net).is_empty(), "the ACK stops the 603");
    assert!(bob.receive(&mut net).is_empty());
    assert_eq!(net.record().final_code, Some(603));
}

/// `phone` calls conference room `room`; Warden answers itself; the phone ACKs.
fn join_room(net: &mut Net, phone: &mut Phone, room: &str, port: u16) -> Dialog {
    let invite = phone.invite(net, room, &sdp(port, "sendrecv"), &[]);
    let got = phone.responses(net);
    assert_eq!(
        got.iter().map(|r| r.status()).collect::<Vec<_>>(),
        vec![100, 200]
    );
    let d = phone.dialog_as_caller(&invite, &got[1]);
    phone.ack(net, &d, "");
    d
}

/// Rooms joined and streams that heard a chime since the last look.
fn room_moves(net: &Net) -> (Vec<(StreamId, u64)>, Vec<StreamId>) {
    let commands = net.media_commands();
    let joins = commands
        .iter()
        .filter_map(|c| match c {
            Command::Join { id, room, .. } => Some((*id, *room)),
            _ => None,
        })
        .collect();
    (joins, plays(&commands).iter().map(|p| p.0).collect())
}

#[test]
fn conference_members_hear_each_other_join_and_leave() {
    let mut net = Net::new();
    let (mut alice, _, mut carol) = parties(&mut net);
    let mut a = join_room(&mut net, &mut alice, "8123", 7010);
    let (joins, chimed) = room_moves(&net);
    let (alice_stream, room) = joins[0];
    assert_eq!(
        chimed,
        vec![alice_stream],
        "the first member hears the chime alone"
    );

    let mut c = join_room(&mut net, &mut carol, "8123", 7030);
    let (joins, mut chimed) = room_moves(&net);
    let carol_stream = joins[0].0;
    assert_eq!(joins, vec![(carol_stream, room)], "the same room");
    chimed.sort();
    assert_eq!(
        chimed,
        vec![alice_stream, carol_stream],
        "both hear carol join"
    );

    carol.request(&mut net, &mut c, "BYE", &[], "");
    only(carol.responses(&mut net), 200);
    let (_, chimed) = room_moves(&net);
    assert_eq!(chimed, vec![alice_stream], "alice hears carol leave");
    alice.request(&mut net, &mut a, "BYE", &[], "");
    only(alice.responses(&mut net), 200);

    let records = net.latest_records();
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.conference.as_deref(), Some("8123"));
        assert_eq!(
            (r.final_code, r.hangup_side.as_deref()),
            (Some(200), Some("caller"))
        );
    }
    assert!(net.media.open_streams().is_empty());
}

#[test]
fn blind_transfer_rings_the_target_and_bridges_the_party_that_stays() {
    let mut net = Net::new();
    let (mut alice, mut bob, mut carol) = parties(&mut net);
    let mut call = bridge(&mut net, &mut alice, "bob", &mut bob);
    bob.request(
        &mut net,
        &mut call.b,
        "REFER",
        &["Refer-To: <sip:carol@127.0.0.1>"],
        "",
    );
    let got = bob.receive(&mut net);
    assert_eq!(statuses(&got), vec![202]);
    assert_eq!(notified(&got), vec!["SIP/2.0 100 Trying"]);
    answer_all(&mut net, &mut bob, &got);

    let c_invite = carol.expect(&mut net, "INVITE");
    assert_eq!(media_port(c_invite.body()), Some(40_002), "on bob's ports");
    carol.answer(&mut net, &c_invite, 180, "");
    let got = bob.receive(&mut net);
    assert_eq!(notified(&got), vec!["SIP/2.0 180 Reason"]);
    answer_all(&mut net, &mut bob, &got);
    let c_ok = carol.answer(&mut net, &c_invite, 200, &sdp(7030, "sendrecv"));
    carol.expect(&mut net, "ACK");
    let got = bob.receive(&mut net);
    assert_eq!(notified(&got), vec!["SIP/2.0 200 OK"]);
    assert_eq!(answer_all(&mut net, &mut bob, &got), vec!["NOTIFY", "BYE"]);
    assert!(
        alice.receive(&mut net).is_empty(),
        "alice keeps her ports: no re-INVITE"
    );

    let mut c = carol.dialog_as_callee(&c_invite, &c_ok);
    hang_up(&mut net, &mut carol, &mut c, &mut alice);
    let records = net.latest_records();
    assert_eq!(records.len(), 2, "{records:#?}");
    let (first, second) = (&records[0], &records[1]);
    assert_eq!(
        (first.end_reason.as_deref(), first.hangup_side.as_deref()),
        (Some("transferred"), Some("callee"))
    );
    assert_eq!(second.linked_id.as_deref(), Some(first.id.as_str()));
    assert_eq!(second.callee, "carol");
    assert_eq!(second.end_reason.as_deref(), Some("normal"));
    assert_eq!(net.core.active_calls(), 0);
}

/// Bob calls carol (his consultation) and she answers: her INVITE, and the Refer-To that
/// refers the other party of bob's first call to carol, replacing the consultation.
fn consult_carol(net: &mut Net, bob: &mut Phone, carol: &mut Phone) -> (Request, String) {
    let consult_invite = bob.invite(net, "carol", &sdp(7021, "sendrecv"), &[]);
    bob.receive(net);
    let c_invite = carol.expect(net, "INVITE");
    carol.answer(net, &c_invite, 200, &sdp(7030, "sendrecv"));
    let b_ok = only(bob.responses(net), 200);
    let consult = bob.dialog_as_caller(&consult_invite, &b_ok);
    bob.ack(net, &consult, "");
    carol.expect(net, "ACK");
    let replaces = format!(
        "{}%3Bto-tag%3D{}%3Bfrom-tag%3D{}",
        consult.call_id,
        b_ok.to_tag().expect("Warden's tag"),
        consult_invite.from_tag().expect("bob's tag")
    );
    let refer_to = format!("Refer-To: <sip:carol@127.0.0.1?Replaces={replaces}>");
    (c_invite, refer_to)
}

#[test]
fn attended_transfer_across_shards_hands_the_replaced_call_over() {
    use warden::shard::{Shard, of_call_id};
    // Bob's consultation will be "call-bob-1": it is on the shard it hashes to, and the
    // first call on the other one.
    let consult_shard = of_call_id("call-bob-1", 2);
    let mut here = Net::new();
    here.core.set_shard(Shard {
        index: 1 - consult_shard,
        count: 2,
    });
    let mut there = here.sibling(Shard {
        index: consult_shard,
        count: 2,
    });
    let (mut alice, mut bob, mut carol) = parties(&mut here);
    let mut first = bridge(&mut here, &mut alice, "bob", &mut bob);
    // The consultation, on the other shard (the registrations are shared).
    let (c_invite, refer_to) = consult_carol(&mut there, &mut bob, &mut carol);
    assert!(refer_to.contains("Replaces=call-bob-1%3B"), "{refer_to}");
    bob.request(&mut here, &mut first.b, "REFER", &[&refer_to], "");
    // Nothing yet: this shard asks the other for the call.
    assert!(bob.receive(&mut here).is_empty());
    let asked = here.asks.drain(..).find_map(|o| match o {
        Output::HandOver {
            lane,
            replaces,
            for_call,
        } => Some((lane, replaces, for_call)),
        _ => None,
    });
    let (lane, replaced, for_call) = asked.expect("a hand-over asked for");
    assert_eq!(lane, consult_shard);
    let handed = there
        .core
        .hand_over(&replaced)
        .expect("the bridged call given up");
    assert_eq!(there.core.active_calls(), 0);
    here.core.adopt(for_call, Some(handed), here.now);
    here.collect();

    // From here on, as on one shard: bob is done and leaves both calls.
    let got = bob.receive(&mut here);
    assert_eq!(statuses(&got), vec![202]);
    let mut methods = answer_all(&mut here, &mut bob, &got);
    methods.sort();
    assert_eq!(methods, vec!["BYE", "BYE", "NOTIFY"]);
    let reinvite = carol.expect(&mut here, "INVITE");
    assert_eq!(
        reinvite.call_id(),
        c_invite.call_id(),
        "in carol's own dialog"
    );
    carol.answer(&mut here, &reinvite, 200, &sdp(7030, "sendrecv"));
    carol.expect(&mut here, "ACK");
    hang_up(&mut here, &mut alice, &mut first.a, &mut carol);
    assert_eq!(here.core.active_calls(), 0);
    // The handed-over Call-IDs are let go once no dialog here uses them.
    let unpinned: Vec<String> = here
        .asks
        .iter()
        .filter_map(|o| match o {
            Output::Unpin(ids) => Some(ids.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(unpinned.contains(&"call-bob-1".to_owned()), "{unpinned:?}");
}

#[test]
fn attended_transfer_joins_the_transferors_two_calls() {
    let mut net = Net::new();
    let (mut alice, mut bob, mut carol) = parties(&mut net);
    let mut first = bridge(&mut net, &mut alice, "bob", &mut bob);
    // Bob consults carol on a second call, then refers alice to carol, replacing it.
    let (c_invite, refer_to) = consult_carol(&mut net, &mut bob, &mut carol);
    bob.request(&mut net, &mut first.b, "REFER", &[&refer_to], "");
    let got = bob.receive(&mut net);
    assert_eq!(statuses(&got), vec![202]);
    assert_eq!(notified(&got), vec!["SIP/2.0 200 OK"]);
    let mut methods = answer_all(&mut net, &mut bob, &got);
    methods.sort();
    assert_eq!(
        methods,
        vec!["BYE", "BYE", "NOTIFY"],
        "bob leaves both calls"
    );

    // Carol's media moves onto bob's ports in the first call; no INVITE with Replaces.
    let reinvite = carol.expect(&mut net, "INVITE");
    assert_eq!(
        reinvite.call_id(),
        c_invite.call_id(),
        "in carol's own dialog"
    );
    assert_eq!(media_port(reinvite.body()), Some(40_002));
    carol.answer(&mut net, &reinvite, 200, &sdp(7030, "sendrecv"));
    carol.expect(&mut net, "ACK");
    assert!(alice.receive(&mut net).is_empty());

    hang_up(&mut net, &mut alice, &mut first.a, &mut carol);
    let records = net.latest_records();
    let ends: Vec<(&str, Option<&str>)> = records
        .iter()
        .map(|r| (r.callee.as_str(), r.end_reason.as_deref()))
        .collect();
    assert_eq!(
        ends,
        vec![
            ("bob", Some("transferred")),
            ("carol", Some("transferred")),
            ("carol", Some("normal")),
        ]
    );
    assert_eq!(
        records[2].linked_id.as_deref(),
        Some(records[0].id.as_str())
    );
    assert_eq!(net.core.active_calls(), 0);
}

#[test]
fn a_party_referred_to_a_room_makes_a_three_way_call() {
    let mut net = Net::new();
    let (mut alice, mut bob, mut carol) = parties(&mut net);
    let mut c = join_room(&mut net, &mut carol, "8123", 7030);
    let (joins, _) = room_moves(&net);
    let room = joins[0].1;
    let mut call = bridge(&mut net, &mut alice, "bob", &mut bob);
    net.media_commands();

    bob.request(
        &mut net,
        &mut call.b,
        "REFER",
        &["Refer-To: <sip:8123@127.0.0.1>"],
        "",
    );
    let got = bob.receive(&mut net);
    assert_eq!(statuses(&got), vec![202]);
    assert_eq!(notified(&got), vec!["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]);
    let mut methods = answer_all(&mut net, &mut bob, &got);
    methods.sort();
    assert_eq!(methods, vec!["BYE", "NOTIFY", "NOTIFY"]);
    let (joins, chimed) = room_moves(&net);
    let alice_stream = net.media.open_streams()[1];
    assert_eq!(
        joins,
        vec![(alice_stream, room)],
        "alice's side joins carol's room"
    );
    assert_eq!(chimed.len(), 2, "both members hear the join");
    assert!(alice.receive(&mut net).is_empty());

    hang_up_warden_leg(&mut net, &mut alice, &mut call.a);
    hang_up_warden_leg(&mut net, &mut carol, &mut c);
    let records = net.latest_records();
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r.conference.as_deref() == Some("8123"))
    );
    assert_eq!(net.core.active_calls(), 0);
}

/// `phone` hangs up a call Warden answers for (a room): Warden's 200 is all it gets.
fn hang_up_warden_leg(net: &mut Net, phone: &mut Phone, d: &mut Dialog) {
    phone.request(net, d, "BYE", &[], "");
    only(phone.responses(net), 200);
}

#[test]
fn shutting_down_refuses_new_calls_and_hangs_up_live_ones_when_asked() {
    let mut net = Net::new();
    let (mut alice, mut bob, mut carol) = parties(&mut net);
    bridge(&mut net, &mut alice, "bob", &mut bob);
    net.core.stop_taking_calls(30);
    carol.invite(&mut net, "bob", &sdp(7030, "sendrecv"), &[]);
    let got = carol.responses(&mut net);
    let refusal = got.last().expect("a refusal");
    assert_eq!(refusal.status(), 503);
    assert_eq!(refusal.header("Retry-After").as_deref(), Some("30"));
    assert!(bob.receive(&mut net).is_empty(), "no new call reaches bob");

    let now = net.now;
    assert_eq!(net.core.hang_up_all("shutdown", now), 1);
    net.collect();
    for phone in [&mut alice, &mut bob] {
        let bye = phone.expect(&mut net, "BYE");
        phone.answer(&mut net, &bye, 200, "");
    }
    assert_eq!(net.core.active_calls(), 0);
    let records = net.latest_records();
    let ends: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.final_code,
                r.hangup_side.as_deref(),
                r.end_reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        ends,
        vec![
            (Some(200), Some("warden"), Some("shutdown")),
            (Some(503), Some("warden"), Some("shutdown")),
        ]
    );
}

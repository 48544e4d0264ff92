//! A sharded Warden (`server.shards = 3`) over real sockets: calls whose Call-IDs hash to
//! every shard, the registrar they share, the admin API's view across shards, an attended
//! transfer joining calls of two shards, and a graceful stop that waits for every shard's
//! calls.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Ua, Warden, closed_records, establish, get, hang_up, metric};
use warden::shard::{of_call, of_call_id};

const SHARDS: usize = 3;

fn sharded() -> Warden {
    Warden::start_with(&format!("[server]\nshards = {SHARDS}\n"))
}

#[test]
fn calls_on_every_shard_reach_a_callee_registered_on_one_over_its_tcp_connection() {
    let w = sharded();
    // Bob registers once, over TCP: every shard must find his binding and send his
    // INVITEs on the connection his REGISTER came in on.
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::tcp("bob", w.port));
    let mut shards_seen = HashSet::new();
    let mut calls = 0;
    while shards_seen.len() < SHARDS || calls < 2 * SHARDS {
        assert!(
            calls < 40,
            "Call-IDs never covered every shard: {shards_seen:?}"
        );
        let (mut ad, mut bd) = establish(&w, &mut alice, &mut bob);
        shards_seen.insert(of_call_id(&ad.call_id, SHARDS));
        // The callee's BYE comes back on the Call-ID Warden drew for the B-leg: it
        // must reach the shard that holds the call.
        match calls % 2 {
            0 => hang_up(&mut alice, &mut ad, &mut bob),
            _ => hang_up(&mut bob, &mut bd, &mut alice),
        }
        calls += 1;
    }
    let records = closed_records(&w, calls);
    assert_eq!(records.len(), calls, "{records:#?}");
    assert!(
        records.iter().all(|r| r["final_code"] == 200),
        "{records:#?}"
    );
    assert_eq!(metric(&w, "warden_calls_total", None), Some(calls as f64));
    assert_eq!(
        metric(&w, "warden_calls_answered_total", None),
        Some(calls as f64)
    );
    assert_eq!(metric(&w, "warden_calls_active", None), Some(0.0));
}

#[test]
fn the_admin_api_lists_every_shards_calls_and_hangs_up_one_held_by_another_shard() {
    let w = sharded();
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    // Calls until at least one is on the first shard and one elsewhere.
    let mut shards = Vec::new();
    while !(shards.contains(&0) && shards.iter().any(|&s| s != 0)) {
        assert!(shards.len() < 40, "Call-IDs never covered two shards");
        let (ad, _) = establish(&w, &mut alice, &mut bob);
        shards.push(of_call_id(&ad.call_id, SHARDS));
    }
    let (status, body) = get(&w.admin("/calls"));
    assert_eq!(status, 200, "{body}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&body).expect("JSON");
    assert_eq!(listed.len(), shards.len(), "{body}");
    // A call's number names the shard its caller's Call-ID hashes to.
    for call in &listed {
        let (id, call_id) = (
            call["id"].as_u64().unwrap(),
            call["a_call_id"].as_str().unwrap(),
        );
        assert_eq!(of_call(id, SHARDS), of_call_id(call_id, SHARDS), "{call}");
    }
    let elsewhere = listed
        .iter()
        .filter_map(|c| c["id"].as_u64())
        .find(|&id| of_call(id, SHARDS) != 0)
        .expect("a call on another shard");
    let (ok, text) = w.ctl(&["hangup", &elsewhere.to_string()]);
    assert!(ok, "{text}");
    for ua in [&mut alice, &mut bob] {
        let bye = ua.recv_request("BYE");
        ua.ok(&bye);
    }
    let (ok, after) = w.ctl(&["calls"]);
    assert!(ok && after.lines().count() == shards.len(), "{after}");
    let live = (shards.len() - 1) as f64;
    assert_eq!(metric(&w, "warden_calls_active", None), Some(live));
    // Each shard's own count, and they add up.
    let by_shard: Vec<f64> = (0..SHARDS)
        .map(|k| {
            let k = k.to_string();
            metric(&w, "warden_shard_calls_active", Some(("shard", &k))).unwrap_or(-1.0)
        })
        .collect();
    assert_eq!(by_shard.iter().sum::<f64>(), live, "{by_shard:?}");
    let on_first = shards.iter().filter(|&&s| s == 0).count() as f64;
    assert_eq!(by_shard[0], on_first, "{by_shard:?} {shards:?}");
    let (ok, text) = w.ctl(&["hangup", "999"]);
    assert!(!ok && text.contains("404"), "{text}");
}

#[test]
fn a_stop_signal_waits_for_the_calls_of_every_shard() {
    let mut w = sharded();
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let mut dialogs: Vec<_> = (0..6)
        .map(|_| establish(&w, &mut alice, &mut bob))
        .collect();
    w.terminate();
    std::thread::sleep(Duration::from_millis(300)); // every shard takes the signal
    // New calls are refused on whichever shard they land, while the old ones go on.
    let mut refused = 0;
    for _ in 0..6 {
        let invite = alice.invite("bob");
        let answer = alice.final_response();
        assert_eq!(answer.status(), 503, "{answer:?}");
        alice.ack_failure(&invite, &answer);
        refused += 1;
    }
    assert!(
        w.wait_exit(Duration::from_millis(500)).is_none(),
        "exited with calls live"
    );
    for (ad, _) in dialogs.iter_mut() {
        hang_up(&mut alice, ad, &mut bob);
    }
    let status = w.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        w.log()
    );
    assert_eq!(refused, 6);
}

#[test]
fn an_attended_transfer_joins_calls_that_two_shards_hold() {
    let w = sharded();
    let (mut alice, mut bob, mut carol) = (
        Ua::udp("alice", w.port),
        Ua::udp("bob", w.port),
        Ua::udp("carol", w.port),
    );
    let (mut ad, mut bd) = establish(&w, &mut alice, &mut bob);
    let first_shard = of_call_id(&ad.call_id, SHARDS);
    // Bob consults carol until the consultation lands on another shard than the first call.
    assert_eq!(carol.register(600).status(), 200);
    let mut consultations_ended = 0;
    let (consult, cd) = loop {
        let (mut consult, cd) = call_carol(&mut bob, &mut carol);
        if of_call_id(&consult.call_id, SHARDS) != first_shard {
            break (consult, cd);
        }
        hang_up(&mut bob, &mut consult, &mut carol);
        consultations_ended += 1;
    };
    bob.refer_replacing(&mut bd, "carol", &consult);
    assert_eq!(bob.recv_response().status(), 202);
    // Bob hears the transfer is done and is hung up in both calls.
    let mut byes = Vec::new();
    while byes.len() < 2 {
        let request = bob.recv();
        let warden::sip::message::Message::Request(request) = request else {
            continue;
        };
        bob.ok(&request);
        if request.method() == warden::sip::message::Method::Bye {
            byes.push(request.call_id().unwrap_or_default());
        }
    }
    byes.sort();
    let mut expected = vec![bd.call_id.clone(), consult.call_id.clone()];
    expected.sort();
    assert_eq!(byes, expected);
    // Carol's media moves to alice: her re-INVITE comes from the first call's shard, on
    // the dialog the second shard made.
    let reinvite = carol.recv_request("INVITE");
    assert_eq!(reinvite.call_id(), Some(cd.call_id.clone()));
    carol.answer(&reinvite, 200, true);
    carol.recv_request("ACK");
    // Alice's BYE reaches carol, and carol's 200 (on the second shard's Call-ID) finds
    // its way back to the shard that now holds the call.
    hang_up(&mut alice, &mut ad, &mut carol);
    // The first call, the consultation and the joined call, after the consultations
    // that landed on the first call's shard (waiting for fewer raced the joined one).
    let records = closed_records(&w, 3 + consultations_ended);
    let joined = records
        .iter()
        .find(|r| r["caller"] == "alice" && r["callee"] == "carol")
        .unwrap_or_else(|| panic!("alice -> carol: {records:#?}"));
    assert_eq!(joined["end_reason"], "normal", "{joined}");
    let consulted = records.iter().find(|r| {
        r["caller"] == "bob" && r["callee"] == "carol" && r["end_reason"] == "transferred"
    });
    assert!(consulted.is_some(), "{records:#?}");
    assert_eq!(metric(&w, "warden_calls_active", None), Some(0.0));
}

/// `bob` calls the registered `carol`, who answers; their dialogs.
fn call_carol(bob: &mut Ua, carol: &mut Ua) -> (common::Dialog, common::Dialog) {
    let invite = bob.invite("carol");
    let incoming = carol.recv_request("INVITE");
    let carol_dialog = carol.answer(&incoming, 200, true);
    let ok = bob.recv_response();
    assert_eq!(ok.status(), 200);
    let mut bob_dialog = bob.dialog_from(&invite, &ok);
    bob.in_dialog(&mut bob_dialog, "ACK", None);
    carol.recv_request("ACK");
    (bob_dialog, carol_dialog)
}

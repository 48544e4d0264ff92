//! Programming Warden over sockets: a call placed by `POST /calls` to a UA that answers,
//! bridged on to a second one; the `/events` WebSocket sees each of its events in order; a
//! prompt played and the call hung up through the API; the record says `origin = api`.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{Ua, Warden, closed_records, get};
use warden::sip::message::Response;

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// A subscriber to `/events` with `query`.
fn subscribe(w: &Warden, query: &str) -> Socket {
    let url = format!("ws://127.0.0.1:{}/events{query}", w.admin_port);
    let (socket, response) = tungstenite::connect(url).expect("the event stream accepts");
    assert_eq!(response.status().as_u16(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = socket.get_ref() {
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
    }
    socket
}

/// The next event, as JSON.
fn next_event(socket: &mut Socket) -> serde_json::Value {
    loop {
        match socket.read().expect("an event within 5 s") {
            tungstenite::Message::Text(text) => {
                return serde_json::from_str(text.as_str()).expect("JSON event");
            }
            tungstenite::Message::Close(frame) => panic!("stream closed: {frame:?}"),
            _ => {}
        }
    }
}

fn post(w: &Warden, path: &str, body: serde_json::Value) -> (u16, String) {
    let response = reqwest::blocking::Client::new()
        .post(w.admin(path))
        .json(&body)
        .send()
        .expect("admin API reachable");
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_default())
}

fn offer(port: u16) -> String {
    format!(
        "v=0\r\no=- 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

/// RTP packets arriving at `socket` within `wait`: how many, and their payload types.
fn rtp_heard(socket: &UdpSocket, wait: Duration) -> Vec<u8> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let until = Instant::now() + wait;
    let mut types = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < until {
        if let Ok((n, _)) = socket.recv_from(&mut buf)
            && n >= 12
            && buf[0] >> 6 == 2
        {
            types.push(buf[1] & 0x7f);
        }
    }
    types
}

#[test]
fn an_originated_call_rings_alice_then_bob_and_the_stream_and_the_api_follow_it() {
    let w = Warden::start();
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    assert_eq!(alice.register(600).status(), 200);
    assert_eq!(bob.register(600).status(), 200);
    let mut stream = subscribe(&w, "");
    // The registrations came before the subscription: the stream starts with the call.
    let (status, body) = post(
        &w,
        "/calls",
        serde_json::json!({ "to": "alice", "then": { "dial": "bob" }, "caller_name": "Click to call" }),
    );
    assert_eq!(status, 201, "{body}");
    let placed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let id = placed["id"].as_str().expect("call id").to_owned();
    let record = placed["record"].as_str().expect("record id").to_owned();

    // Alice is rung first, with no offer: her 200 makes it, Warden's ACK answers it.
    let invite = alice.recv_request("INVITE");
    assert!(invite.body().is_empty(), "an offerless INVITE");
    let from = invite.header("From").expect("From");
    assert!(
        from.contains("Click to call") && from.contains("sip:bob@"),
        "{from}"
    );
    alice.answer(&invite, 180, false);
    let alice_media = UdpSocket::bind("127.0.0.1:0").expect("media socket");
    let alice_port = alice_media.local_addr().expect("addr").port();
    let mut alice_dialog = alice.answer_sdp(&invite, 200, Some(&offer(alice_port)));
    let ack = alice.recv_request("ACK");
    let answer = String::from_utf8_lossy(ack.body()).to_string();
    assert!(
        answer.contains("m=audio ") && answer.contains("RTP/AVP 0"),
        "Warden's answer in the ACK: {answer}"
    );

    // Then bob, as if alice had dialled him: her identity, Warden's offer.
    let to_bob = bob.recv_request("INVITE");
    let from = to_bob.header("From").expect("From");
    assert!(from.contains("sip:alice@"), "{from}");
    assert!(to_bob.body().starts_with(b"v=0"), "an offer for bob");
    bob.answer(&to_bob, 180, false);
    let bob_media = UdpSocket::bind("127.0.0.1:0").expect("media socket");
    let bob_port = bob_media.local_addr().expect("addr").port();
    let mut bob_dialog = bob.answer_sdp(&to_bob, 200, Some(&offer(bob_port)));
    let _ = bob.recv_request("ACK");

    let (status, calls) = get(&w.admin("/calls"));
    assert_eq!(status, 200);
    assert!(
        calls.contains(&format!("\"record\":\"{record}\"")),
        "{calls}"
    );

    // A prompt to both parties, through the API: each hears it from the relay.
    let (status, body) = post(
        &w,
        &format!("/calls/{id}/play"),
        serde_json::json!({ "prompt": "busy" }),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("caller") && body.contains("callee"), "{body}");
    let heard = rtp_heard(&alice_media, Duration::from_millis(800));
    assert!(
        heard.iter().filter(|&&pt| pt == 0).count() >= 10,
        "alice heard the prompt: {heard:?}"
    );
    let heard = rtp_heard(&bob_media, Duration::from_millis(300));
    assert!(
        heard.iter().filter(|&&pt| pt == 0).count() >= 5,
        "bob heard the prompt: {heard:?}"
    );

    // Keys to bob: RFC 4733 events (payload type 101), one key after the other.
    let (status, body) = post(
        &w,
        &format!("/calls/{id}/dtmf"),
        serde_json::json!({ "digits": "12#" }),
    );
    assert_eq!(status, 200, "{body}");
    let heard = rtp_heard(&bob_media, Duration::from_millis(900));
    assert!(
        heard.iter().filter(|&&pt| pt == 101).count() >= 9,
        "bob got the keys: {heard:?}"
    );
    let (status, body) = post(
        &w,
        &format!("/calls/{id}/dtmf"),
        serde_json::json!({ "digits": "12x" }),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("'x'"), "{body}");

    // The API hangs up: both parties get a BYE.
    let response = reqwest::blocking::Client::new()
        .delete(w.admin(&format!("/calls/{id}")))
        .send()
        .expect("hang up");
    assert_eq!(response.status().as_u16(), 200);
    let bye = alice.recv_request("BYE");
    alice.ok(&bye);
    let bye = bob.recv_request("BYE");
    bob.ok(&bye);
    let _ = (&mut alice_dialog, &mut bob_dialog);

    // Every event of the call, in order, numbered in order.
    let expected = [
        ("call_started", None),
        ("ringing", Some(("party", "first"))),
        ("answered", Some(("by", "first_party"))),
        ("ringing", Some(("party", "callee"))),
        ("answered", Some(("by", "callee"))),
        ("playing", Some(("side", "caller"))),
        ("playing", Some(("side", "callee"))),
        ("ended", None),
    ];
    let mut last_seq = 0;
    for (kind, field) in expected {
        let event = next_event(&mut stream);
        assert_eq!(event["event"], kind, "{event}");
        assert_eq!(event["call"].to_string(), id, "{event}");
        let seq = event["seq"].as_u64().expect("seq");
        assert!(seq > last_seq, "numbered in order: {event}");
        last_seq = seq;
        if let Some((name, value)) = field {
            assert_eq!(event[name], value, "{event}");
        }
        if kind == "call_started" {
            assert_eq!(event["origin"], "api");
            assert_eq!(event["record"], record.as_str());
        }
        if kind == "ended" {
            assert_eq!(event["record"]["hangup_side"], "warden", "{event}");
            assert_eq!(event["record"]["end_reason"], "admin hangup", "{event}");
        }
    }

    let records = closed_records(&w, 1);
    let r = records
        .iter()
        .find(|r| r["id"] == record.as_str())
        .expect("the originated call's record");
    assert_eq!(r["origin"], "api", "{r}");
    assert_eq!(r["caller"], "alice", "{r}");
    assert_eq!(r["callee"], "bob", "{r}");
    assert_eq!(r["final_code"], 200, "{r}");
    assert!(r["b_call_id"].as_str().is_some(), "{r}");
}

#[test]
fn originate_refusals_and_a_first_party_that_declines() {
    let w = Warden::start();
    let mut alice = Ua::udp("alice", w.port);
    assert_eq!(alice.register(600).status(), 200);
    for (body, status, says) in [
        (
            serde_json::json!({ "to": "nobody", "then": { "dial": "bob" } }),
            404,
            "no user nobody",
        ),
        (
            serde_json::json!({ "to": "alice", "then": { "play": "no-such-prompt" } }),
            404,
            "no prompt",
        ),
        (
            serde_json::json!({ "to": "sip:x@example.com", "then": { "dial": "1" } }),
            400,
            "IP address",
        ),
        (serde_json::json!({ "to": "alice" }), 400, "then"),
        (
            serde_json::json!({ "to": "alice", "then": { "ring": "bob" } }),
            400,
            "unknown variant",
        ),
    ] {
        let (got, text) = post(&w, "/calls", body);
        assert_eq!(got, status, "{text}");
        assert!(text.contains(says), "{text}");
    }
    let (status, text) = get(&w.admin("/events?kind=answered,hangup"));
    assert_eq!(status, 400, "{text}");

    // Alice is busy: the call ends with her 486, its record and the stream say so.
    let mut stream = subscribe(&w, "?kind=ended");
    let (status, body) = post(
        &w,
        "/calls",
        serde_json::json!({ "to": "user:alice", "then": { "conference": "8001" } }),
    );
    assert_eq!(status, 201, "{body}");
    let invite = alice.recv_request("INVITE");
    let busy = Response::to_request(&invite, 486, "Busy Here");
    alice.send(&warden::sip::message::Message::Response(busy));
    let _ack = alice.recv_request("ACK");
    let ended = next_event(&mut stream);
    assert_eq!(ended["event"], "ended", "{ended}");
    assert_eq!(ended["record"]["final_code"], 486, "{ended}");
    assert_eq!(ended["record"]["origin"], "api", "{ended}");
    let (status, calls) = get(&w.admin("/calls"));
    assert_eq!((status, calls.trim()), (200, "[]"));
}

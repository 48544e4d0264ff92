//! Media anchoring end to end: a real Warden process, SIP test UAs and their RTP/RTCP sockets
//! on loopback. Warden's media binds 127.0.0.2 so every SDP check can tell its address apart.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{Dialog, Ua, Warden};
use warden::sip::message::{Request, Response};
use warden_media::codec::FormatParams;
use warden_media::srtp::{KEY_AND_SALT, SrtpKeys, SrtpSide, Suite};

const MEDIA_IP: &str = "127.0.0.2";

/// A free, even-aligned port range of `pairs` RTP/RTCP pairs for one Warden's relay.
fn free_range(pairs: u16) -> (u16, u16) {
    for _ in 0..200 {
        let first = 30_000 + 2 * (rand::random::<u16>() % 10_000);
        let last = first + pairs * 2 - 1;
        if (first..=last).all(|p| UdpSocket::bind((MEDIA_IP, p)).is_ok()) {
            return (first, last);
        }
    }
    panic!("no free media port range")
}

fn warden(pairs: u16, extra: &str) -> (Warden, (u16, u16)) {
    let (first, last) = free_range(pairs);
    let w = Warden::start_with(&format!(
        "[media]\naddress = \"{MEDIA_IP}\"\nport_min = {first}\nport_max = {last}\nworkers = 2\n{extra}"
    ));
    (w, (first, last))
}

/// A party's media sockets: RTP on an even port, RTCP on the next.
struct Media {
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl Media {
    fn new() -> Media {
        for _ in 0..200 {
            let port = 46_000 + 2 * (rand::random::<u16>() % 5_000);
            if let (Ok(rtp), Ok(rtcp)) = (
                UdpSocket::bind(("127.0.0.1", port)),
                UdpSocket::bind(("127.0.0.1", port + 1)),
            ) {
                for s in [&rtp, &rtcp] {
                    s.set_read_timeout(Some(Duration::from_secs(3)))
                        .expect("timeout");
                }
                return Media { rtp, rtcp };
            }
        }
        panic!("no free party ports")
    }

    fn port(&self) -> u16 {
        self.rtp.local_addr().expect("addr").port()
    }
}

fn sdp(lines: &[String]) -> String {
    let mut s =
        "v=0\r\no=- 10 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n".to_owned();
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s
}

fn audio(port: u16, direction: &str) -> Vec<String> {
    vec![
        format!("m=audio {port} RTP/AVP 0 101"),
        "a=rtpmap:0 PCMU/8000".into(),
        "a=rtpmap:101 telephone-event/8000".into(),
        "a=fmtp:101 0-16".into(),
        "a=ptime:20".into(),
        format!("a={direction}"),
    ]
}

/// (media kind, port) of every m= line, and every c= address, of an SDP body.
fn described(body: &[u8]) -> (Vec<(String, u16)>, Vec<String>) {
    let text = String::from_utf8_lossy(body);
    let media = text
        .lines()
        .filter_map(|l| l.strip_prefix("m="))
        .map(|m| {
            let f: Vec<&str> = m.split_whitespace().collect();
            (f[0].to_owned(), f[1].parse().expect("port"))
        })
        .collect();
    let addresses = text
        .lines()
        .filter_map(|l| l.strip_prefix("c=IN IP4 "))
        .map(str::to_owned)
        .collect();
    (media, addresses)
}

fn assert_anchored(body: &[u8], range: (u16, u16)) -> Vec<u16> {
    let (media, addresses) = described(body);
    assert!(
        !addresses.is_empty() && addresses.iter().all(|a| a == MEDIA_IP),
        "{addresses:?}"
    );
    let text = String::from_utf8_lossy(body);
    assert!(!text.contains("a=candidate"), "ICE dropped");
    media
        .iter()
        .map(|(_, p)| {
            assert!(
                *p == 0 || (range.0..=range.1).contains(p),
                "port {p} outside {range:?}"
            );
            *p
        })
        .collect()
}

/// Mean magnitude of G.711 u-law samples (0 for digital silence, up to 127).
fn ulaw_level(payload: &[u8]) -> f64 {
    let sum: u32 = payload.iter().map(|b| u32::from(0x7f - (b & 0x7f))).sum();
    f64::from(sum) / payload.len().max(1) as f64
}

fn rtp(seq: u16, pt: u8, ssrc: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend((0..len).map(|i| (i as u8) ^ (seq as u8)));
    p
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).expect("media arrives");
    (buf[..n].to_vec(), from)
}

fn warden_at(port: u16) -> SocketAddr {
    SocketAddr::new(MEDIA_IP.parse().expect("ip"), port)
}

/// Send `count` packets from `from` to Warden's `port` and check `to` gets them all, in
/// order, byte for byte, from Warden's `out_port`.
fn stream(from: &UdpSocket, port: u16, to: &UdpSocket, out_port: u16, ssrc: u32, count: u16) {
    for seq in 0..count {
        // Every tenth packet is an RFC 4733 telephone-event: it must pass untouched too.
        let packet = if seq % 10 == 9 {
            rtp(seq, 101, ssrc, 4)
        } else {
            rtp(seq, 0, ssrc, 160)
        };
        from.send_to(&packet, warden_at(port)).expect("send");
        let (got, source) = recv(to);
        assert_eq!(got, packet, "packet {seq} intact and in order");
        assert_eq!(source, warden_at(out_port), "relayed from Warden's port");
    }
}

/// Alice calls bob (or whoever `bob` is) offering `offer`; bob answers `answer(b_offer)`; alice ACKs.
/// Returns the SDP bob was offered and the one alice got back, plus both dialogs.
fn call(
    alice: &mut Ua,
    bob: &mut Ua,
    offer: &str,
    answer: impl FnOnce(&Request) -> String,
) -> (Request, Response, Dialog, Dialog) {
    assert_eq!(bob.register(600).status(), 200);
    let callee = bob.user.clone();
    let invite = alice.invite_sdp(&callee, offer);
    let incoming = bob.recv_request("INVITE");
    let body = answer(&incoming);
    let bob_dialog = bob.answer_sdp(&incoming, 200, Some(&body));
    let ok = alice.recv_response();
    assert_eq!(ok.status(), 200);
    let mut alice_dialog = alice.dialog_from(&invite, &ok);
    alice.in_dialog(&mut alice_dialog, "ACK", None);
    bob.recv_request("ACK");
    (incoming, ok, alice_dialog, bob_dialog)
}

/// A plain call from alice to bob through Warden (the shared `audio` SDP both ways).
struct PlainCall {
    am: Media,
    bm: Media,
    /// Warden's ports facing alice and bob.
    a_side: u16,
    b_side: u16,
    alice_dialog: Dialog,
    bob_dialog: Dialog,
}

fn plain_call(alice: &mut Ua, bob: &mut Ua, range: (u16, u16)) -> PlainCall {
    let (am, bm) = (Media::new(), Media::new());
    let (incoming, ok, alice_dialog, bob_dialog) =
        call(alice, bob, &sdp(&audio(am.port(), "sendrecv")), |_| {
            sdp(&audio(bm.port(), "sendrecv"))
        });
    PlainCall {
        b_side: assert_anchored(incoming.body(), range)[0],
        a_side: assert_anchored(ok.body(), range)[0],
        am,
        bm,
        alice_dialog,
        bob_dialog,
    }
}

#[test]
fn audio_rtcp_and_dtmf_flow_through_warden_ports() {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let (am, bm) = (Media::new(), Media::new());
    let mut offer_lines = audio(am.port(), "sendrecv");
    offer_lines.push(format!(
        "a=candidate:1 1 UDP 2130706431 127.0.0.1 {} typ host",
        am.port()
    ));
    let (incoming, ok, mut ad, _) = call(&mut alice, &mut bob, &sdp(&offer_lines), |_| {
        sdp(&audio(bm.port(), "sendrecv"))
    });
    let b_side = assert_anchored(incoming.body(), range)[0];
    let a_side = assert_anchored(ok.body(), range)[0];
    assert_ne!(a_side, b_side, "each leg has its own port");
    let offered = String::from_utf8_lossy(incoming.body()).to_string();
    for kept in [
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    ] {
        assert!(offered.contains(kept), "{kept} kept in {offered}");
    }

    stream(&am.rtp, a_side, &bm.rtp, b_side, 0xa11ce, 40);
    stream(&bm.rtp, b_side, &am.rtp, a_side, 0xb0b, 40);
    // RTCP: port + 1 to port + 1, both ways.
    let rr = [
        0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 4, 0, 0, 0, 0, 0,
        0, 0, 0,
    ];
    am.rtcp.send_to(&rr, warden_at(a_side + 1)).expect("send");
    assert_eq!(recv(&bm.rtcp), (rr.to_vec(), warden_at(b_side + 1)));
    bm.rtcp.send_to(&rr, warden_at(b_side + 1)).expect("send");
    assert_eq!(recv(&am.rtcp), (rr.to_vec(), warden_at(a_side + 1)));
    common::hang_up(&mut alice, &mut ad, &mut bob);
}

#[test]
fn video_and_audio_in_one_call_and_a_rejected_stream_stays_rejected() {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let (a_audio, a_video, b_audio, b_video) =
        (Media::new(), Media::new(), Media::new(), Media::new());
    let video = |port: u16| {
        vec![
            format!("m=video {port} RTP/AVP 96"),
            "a=rtpmap:96 H264/90000".into(),
            "a=sendrecv".into(),
        ]
    };
    let mut offer = audio(a_audio.port(), "sendrecv");
    offer.extend(video(a_video.port()));
    offer.push("m=text 0 RTP/AVP 98".into());
    let (incoming, ok, _, _) = call(&mut alice, &mut bob, &sdp(&offer), |_| {
        let mut answer = audio(b_audio.port(), "sendrecv");
        answer.extend(video(b_video.port()));
        answer.push("m=text 0 RTP/AVP 98".into());
        sdp(&answer)
    });
    let b_ports = assert_anchored(incoming.body(), range);
    let a_ports = assert_anchored(ok.body(), range);
    assert_eq!(b_ports[2], 0, "the rejected stream keeps port 0");
    assert_eq!(a_ports[2], 0);
    stream(&a_audio.rtp, a_ports[0], &b_audio.rtp, b_ports[0], 1, 20);
    // Video packets near the MTU.
    for seq in 0..20 {
        let packet = rtp(seq, 96, 2, 1200);
        a_video
            .rtp
            .send_to(&packet, warden_at(a_ports[1]))
            .expect("send");
        assert_eq!(recv(&b_video.rtp).0, packet);
        b_video
            .rtp
            .send_to(&packet, warden_at(b_ports[1]))
            .expect("send");
        assert_eq!(recv(&a_video.rtp).0, packet);
    }
}

#[test]
fn hold_plays_music_to_the_held_party_and_resume_reanchors_without_dropping_the_call() {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let PlainCall {
        am,
        bm,
        a_side,
        b_side,
        alice_dialog: mut ad,
        ..
    } = plain_call(&mut alice, &mut bob, range);
    stream(&am.rtp, a_side, &bm.rtp, b_side, 7, 5);

    // Hold: sendonly from alice; bob answers recvonly.
    alice.in_dialog(&mut ad, "INVITE", Some(&sdp(&audio(am.port(), "sendonly"))));
    let hold = bob.recv_request("INVITE");
    let held = String::from_utf8_lossy(hold.body()).to_string();
    assert!(held.contains("a=sendonly"), "{held}");
    assert_eq!(
        assert_anchored(hold.body(), range),
        vec![b_side],
        "same relay port on hold"
    );
    bob.answer_sdp(&hold, 200, Some(&sdp(&audio(bm.port(), "recvonly"))));
    let ok = alice.recv_response();
    assert_eq!(ok.status(), 200);
    assert!(String::from_utf8_lossy(ok.body()).contains("a=recvonly"));
    alice.in_dialog(&mut ad, "ACK", None);
    bob.recv_request("ACK");

    // Bob, held, hears music on hold from Warden's port, in his codec (PCMU), with audio
    // energy; nothing alice sends reaches him meanwhile.
    for seq in 0..5 {
        am.rtp
            .send_to(&rtp(seq, 0, 7777, 160), warden_at(a_side))
            .expect("send");
    }
    let mut levels = Vec::new();
    for _ in 0..25 {
        let (packet, source) = recv(&bm.rtp);
        assert_ne!(
            packet[8..12],
            7777u32.to_be_bytes(),
            "alice's packets held back"
        );
        assert_eq!(source, warden_at(b_side), "music from Warden's port");
        assert_eq!(packet[1] & 0x7f, 0, "in bob's payload type");
        levels.push(ulaw_level(&packet[12..]));
    }
    let loudest = levels.iter().cloned().fold(0.0, f64::max);
    assert!(loudest > 20.0, "music, not silence: {levels:?}");
    let music_ssrc = recv(&bm.rtp).0[8..12].to_vec();

    // Resume, with alice's media moved to a new port: Warden follows the new address.
    let moved = Media::new();
    alice.in_dialog(
        &mut ad,
        "INVITE",
        Some(&sdp(&audio(moved.port(), "sendrecv"))),
    );
    let resume = bob.recv_request("INVITE");
    assert!(String::from_utf8_lossy(resume.body()).contains("a=sendrecv"));
    bob.answer_sdp(&resume, 200, Some(&sdp(&audio(bm.port(), "sendrecv"))));
    assert_eq!(alice.recv_response().status(), 200);
    alice.in_dialog(&mut ad, "ACK", None);
    bob.recv_request("ACK");
    // The music stops: what is still in flight drains, then nothing more comes.
    bm.rtp
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = bm.rtp.recv_from(&mut buf) {
        assert_eq!(
            buf[8..12].to_vec(),
            music_ssrc,
            "only the music's last packets"
        );
        assert!(n > 12);
    }
    bm.rtp
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    stream(&bm.rtp, b_side, &moved.rtp, a_side, 8, 10);
    stream(&moved.rtp, a_side, &bm.rtp, b_side, 9, 10);
}

#[test]
fn nat_latching_answers_the_port_packets_really_come_from() {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let (in_sdp, behind_nat, bm) = (Media::new(), Media::new(), Media::new());
    let (incoming, ok, _, _) = call(
        &mut alice,
        &mut bob,
        &sdp(&audio(in_sdp.port(), "sendrecv")),
        |_| sdp(&audio(bm.port(), "sendrecv")),
    );
    let b_side = assert_anchored(incoming.body(), range)[0];
    let a_side = assert_anchored(ok.body(), range)[0];
    // Alice's NAT maps her to another port than her SDP says.
    stream(&behind_nat.rtp, a_side, &bm.rtp, b_side, 1, 3);
    stream(&bm.rtp, b_side, &behind_nat.rtp, a_side, 2, 10);
    in_sdp
        .rtp
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    assert!(
        in_sdp.rtp.recv_from(&mut [0u8; 64]).is_err(),
        "nothing to the SDP port after latching"
    );
}

#[test]
fn rtp_from_a_third_party_mid_call_reaches_neither_party() {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let PlainCall {
        am,
        bm,
        a_side,
        b_side,
        ..
    } = plain_call(&mut alice, &mut bob, range);
    // Both streams latch on their parties' first packets.
    stream(&am.rtp, a_side, &bm.rtp, b_side, 1, 10);
    stream(&bm.rtp, b_side, &am.rtp, a_side, 2, 10);
    // RTP Bleed: a third party (another port, another address) sprays both of Warden's
    // ports with packets that look like the call's own.
    let attackers = [
        UdpSocket::bind("127.0.0.1:0").expect("bind"),
        UdpSocket::bind("127.0.0.2:0").expect("bind"),
    ];
    for attacker in &attackers {
        for seq in 0..50 {
            for port in [a_side, b_side] {
                attacker
                    .send_to(&rtp(seq, 0, 0xbad, 160), warden_at(port))
                    .expect("send");
            }
        }
    }
    // The call goes on exactly as before: each party's next packet is the other's.
    stream(&am.rtp, a_side, &bm.rtp, b_side, 1, 20);
    stream(&bm.rtp, b_side, &am.rtp, a_side, 2, 20);
    for (party, name) in [(&am.rtp, "alice"), (&bm.rtp, "bob")] {
        party
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        assert!(
            party.recv_from(&mut [0u8; 2048]).is_err(),
            "nothing of the third party's reached {name}"
        );
    }
    for attacker in &attackers {
        attacker
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        assert!(
            attacker.recv_from(&mut [0u8; 2048]).is_err(),
            "and the call's audio did not go to the third party"
        );
    }
    // Every one of the third party's packets is counted, none of the parties'.
    assert_eq!(strangers(&w, 200), 200.0);
}

/// `warden_relay_stranger_packets_total`, waited for (up to 2 s) to reach `at_least`.
fn strangers(w: &Warden, at_least: u64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let n = common::metric(w, "warden_relay_stranger_packets_total", None).unwrap_or(0.0);
        if n >= at_least as f64 || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Before a stream has heard its party, the first sender is learned (a NAT'd phone sends
/// from elsewhere than its SDP says); the signalled address still wins when it speaks, and
/// from then on the stranger is shut out both ways.
#[test]
fn a_stranger_who_sends_first_loses_the_stream_to_the_signalled_address() {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let PlainCall {
        am,
        bm,
        a_side,
        b_side,
        ..
    } = plain_call(&mut alice, &mut bob, range);
    // The stranger reaches alice's port first and is learned, as a NAT'd alice would be.
    let stranger = UdpSocket::bind("127.0.0.2:0").expect("bind");
    stranger
        .send_to(&rtp(0, 0, 0xbad, 160), warden_at(a_side))
        .expect("send");
    let _ = recv(&bm.rtp);
    // Alice speaks from where her SDP says: the stream is hers, both ways.
    stream(&am.rtp, a_side, &bm.rtp, b_side, 1, 10);
    stream(&bm.rtp, b_side, &am.rtp, a_side, 2, 10);
    for seq in 1..=20 {
        stranger
            .send_to(&rtp(seq, 0, 0xbad, 160), warden_at(a_side))
            .expect("send");
    }
    stream(&am.rtp, a_side, &bm.rtp, b_side, 1, 10);
    bm.rtp
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    assert!(
        bm.rtp.recv_from(&mut [0u8; 2048]).is_err(),
        "nothing more of the stranger's reached bob"
    );
    stranger
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    assert!(
        stranger.recv_from(&mut [0u8; 2048]).is_err(),
        "and bob's audio went to alice, not the stranger"
    );
    assert_eq!(strangers(&w, 20), 20.0);
}

#[test]
fn exhausted_port_pool_refuses_with_503_and_recovers() {
    // Two pairs: exactly one call's worth (one pair per leg).
    let (w, range) = warden(2, "");
    let (mut alice, mut bob, mut carol) = (
        Ua::udp("alice", w.port),
        Ua::udp("bob", w.port),
        Ua::udp("carol", w.port),
    );
    let (am, bm) = (Media::new(), Media::new());
    let (_, _, mut ad, _) = call(
        &mut alice,
        &mut bob,
        &sdp(&audio(am.port(), "sendrecv")),
        |_| sdp(&audio(bm.port(), "sendrecv")),
    );
    carol.invite_sdp("bob", &sdp(&audio(Media::new().port(), "sendrecv")));
    let refused = carol.final_response();
    assert_eq!(refused.status(), 503);
    let warning = refused.header("Warning").unwrap_or_default();
    assert!(warning.contains("no media ports"), "{warning}");
    common::hang_up(&mut alice, &mut ad, &mut bob);
    // The ports are back: the next call goes through.
    let (cm, bm2) = (Media::new(), Media::new());
    let (incoming, _, _, _) = call(
        &mut carol,
        &mut bob,
        &sdp(&audio(cm.port(), "sendrecv")),
        |_| sdp(&audio(bm2.port(), "sendrecv")),
    );
    assert_anchored(incoming.body(), range);
}

#[test]
fn early_media_in_183_is_relayed_before_the_answer() {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let (am, bm) = (Media::new(), Media::new());
    assert_eq!(bob.register(600).status(), 200);
    alice.invite_sdp("bob", &sdp(&audio(am.port(), "sendrecv")));
    let incoming = bob.recv_request("INVITE");
    let b_side = assert_anchored(incoming.body(), range)[0];
    bob.answer_sdp(&incoming, 183, Some(&sdp(&audio(bm.port(), "sendrecv"))));
    let progress = loop {
        let r = alice.recv_response();
        if r.status() == 183 {
            break r;
        }
    };
    let a_side = assert_anchored(progress.body(), range)[0];
    // A ringback tone or announcement from the callee reaches the caller before any 200.
    stream(&bm.rtp, b_side, &am.rtp, a_side, 0x183, 20);
}

#[test]
fn rtcp_mux_when_both_sides_offer_it_and_separate_ports_when_one_declines() {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let rr = [
        0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 4, 0, 0, 0, 0, 0,
        0, 0, 0,
    ];
    let with_mux = |port| {
        let mut lines = audio(port, "sendrecv");
        lines.push("a=rtcp-mux".into());
        sdp(&lines)
    };
    // Both multiplex: RTCP rides the RTP ports end to end.
    let (am, bm) = (Media::new(), Media::new());
    let (incoming, ok, mut ad, _) = call(&mut alice, &mut bob, &with_mux(am.port()), |_| {
        with_mux(bm.port())
    });
    assert!(String::from_utf8_lossy(incoming.body()).contains("a=rtcp-mux"));
    let (b_side, a_side) = (
        assert_anchored(incoming.body(), range)[0],
        assert_anchored(ok.body(), range)[0],
    );
    am.rtp.send_to(&rr, warden_at(a_side)).expect("send");
    assert_eq!(recv(&bm.rtp), (rr.to_vec(), warden_at(b_side)));
    bm.rtp.send_to(&rr, warden_at(b_side)).expect("send");
    assert_eq!(recv(&am.rtp), (rr.to_vec(), warden_at(a_side)));
    alice.in_dialog(&mut ad, "BYE", None);
    let bye = bob.recv_request("BYE");
    bob.ok(&bye);
    alice.recv_response();

    // Alice offers it, bob declines: each side's RTCP uses port + 1.
    let (am, bm) = (Media::new(), Media::new());
    let (incoming, ok, _, _) = call(&mut alice, &mut bob, &with_mux(am.port()), |_| {
        sdp(&audio(bm.port(), "sendrecv"))
    });
    assert!(
        !String::from_utf8_lossy(ok.body()).contains("a=rtcp-mux"),
        "alice learns bob declined"
    );
    let (b_side, a_side) = (
        assert_anchored(incoming.body(), range)[0],
        assert_anchored(ok.body(), range)[0],
    );
    bm.rtcp.send_to(&rr, warden_at(b_side + 1)).expect("send");
    assert_eq!(recv(&am.rtcp), (rr.to_vec(), warden_at(a_side + 1)));
    am.rtcp.send_to(&rr, warden_at(a_side + 1)).expect("send");
    assert_eq!(recv(&bm.rtcp), (rr.to_vec(), warden_at(b_side + 1)));
}

/// 20 ms frames of a 1 kHz tone, encoded by the codec SDP calls `codec_name`/`clock`, as
/// RTP packets.
fn tone_packets(codec_name: &str, clock: u32, pt: u8, ssrc: u32, count: u16) -> Vec<Vec<u8>> {
    tone_packets_in(codec_name, clock, "", pt, ssrc, count)
}

/// As `tone_packets`, in the payload format `fmtp` describes (AMR's layout and modes).
fn tone_packets_in(
    codec_name: &str,
    clock: u32,
    fmtp: &str,
    pt: u8,
    ssrc: u32,
    count: u16,
) -> Vec<Vec<u8>> {
    let codec = warden_media::codec::by_name(codec_name, clock).expect("codec");
    let params = FormatParams::parse(fmtp);
    let mut encoder = codec.encoder_at(codec.sample_rate, &Default::default(), &params);
    let n = codec.frame_samples();
    let rate = f64::from(codec.sample_rate);
    (0..count)
        .map(|i| {
            let frame: Vec<i16> = (0..n)
                .map(|k| {
                    let t = (usize::from(i) * n + k) as f64 / rate;
                    (12000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16
                })
                .collect();
            let mut packet = rtp(i, pt, ssrc, 0);
            packet[4..8].copy_from_slice(&(u32::from(i) * clock / 50).to_be_bytes());
            encoder.encode(&frame, &mut packet);
            packet
        })
        .collect()
}

/// Decode received RTP payloads with `codec` and measure the tone's frequency.
fn heard_frequency(codec_name: &str, clock: u32, packets: &[Vec<u8>]) -> f64 {
    heard_frequency_in(codec_name, clock, "", packets)
}

/// As `heard_frequency`, for payloads in the format `fmtp` describes.
fn heard_frequency_in(codec_name: &str, clock: u32, fmtp: &str, packets: &[Vec<u8>]) -> f64 {
    let codec = warden_media::codec::by_name(codec_name, clock).expect("codec");
    let mut decoder = codec.decoder_at(codec.sample_rate, &FormatParams::parse(fmtp));
    let mut pcm = Vec::new();
    for p in packets {
        decoder.decode(&p[12..], &mut pcm);
    }
    let settled = &pcm[pcm.len() / 5..];
    let rising = settled.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
    rising as f64 * f64::from(codec.sample_rate) / settled.len() as f64
}

#[test]
fn legs_without_a_common_codec_are_transcoded_with_tone_and_dtmf_intact() {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let (am, bm) = (Media::new(), Media::new());
    // Alice speaks only G.722 (and RFC 4733 events); bob takes only PCMA.
    let offer = sdp(&[
        format!("m=audio {} RTP/AVP 9 101", am.port()),
        "a=rtpmap:9 G722/8000".into(),
        "a=rtpmap:101 telephone-event/8000".into(),
        "a=fmtp:101 0-16".into(),
    ]);
    let (incoming, ok, _, _) = call(&mut alice, &mut bob, &offer, |offered| {
        let text = String::from_utf8_lossy(offered.body()).to_string();
        assert!(
            text.contains("a=rtpmap:8 PCMA/8000"),
            "Warden offers what it can transcode to: {text}"
        );
        sdp(&[
            format!("m=audio {} RTP/AVP 8 101", bm.port()),
            "a=rtpmap:8 PCMA/8000".into(),
            "a=rtpmap:101 telephone-event/8000".into(),
        ])
    });
    let b_side = assert_anchored(incoming.body(), range)[0];
    let a_side = assert_anchored(ok.body(), range)[0];
    let answered = String::from_utf8_lossy(ok.body()).to_string();
    assert!(
        answered.contains(" RTP/AVP 9 101\r\n"),
        "alice is answered in her own codec: {answered}"
    );
    assert!(!answered.contains("PCMA"), "{answered}");

    // Alice -> bob: G.722 in, PCMA out, the tone intact.
    let mut got = Vec::new();
    for packet in tone_packets("G722", 8000, 9, 0xa, 50) {
        am.rtp.send_to(&packet, warden_at(a_side)).expect("send");
        let (p, from) = recv(&bm.rtp);
        assert_eq!(
            (from, p[1] & 0x7f),
            (warden_at(b_side), 8),
            "PCMA from Warden's port"
        );
        got.push(p);
    }
    let f = heard_frequency("PCMA", 8000, &got);
    assert!((f - 1000.0).abs() <= 20.0, "bob hears {f} Hz");
    // A DTMF event from alice arrives on bob's stream (his SSRC, the next sequence number).
    let mut event = rtp(50, 101, 0xa, 0);
    event.extend_from_slice(&[5, 10, 0, 160]);
    am.rtp.send_to(&event, warden_at(a_side)).expect("send");
    let (dtmf, _) = recv(&bm.rtp);
    let last = got.last().expect("audio");
    assert_eq!(dtmf[1] & 0x7f, 101);
    assert_eq!(&dtmf[8..12], &last[8..12], "same SSRC as bob's audio");
    assert_eq!(
        u16::from_be_bytes([dtmf[2], dtmf[3]]),
        u16::from_be_bytes([last[2], last[3]]).wrapping_add(1)
    );
    assert_eq!(&dtmf[12..], &[5, 10, 0, 160]);

    // Bob -> alice: PCMA in, G.722 out (its RTP clock is 8 kHz, RFC 3551).
    let got = tone_through(
        &bm.rtp,
        b_side,
        &am.rtp,
        tone_packets("PCMA", 8000, 8, 0xa, 50),
        9,
    );
    assert_eq!(
        rtp_timestamp(&got[1]).wrapping_sub(rtp_timestamp(&got[0])),
        160
    );
    let f = heard_frequency("G722", 8000, &got);
    assert!((f - 1000.0).abs() <= 20.0, "alice hears {f} Hz");
}

/// Send `packets` from `from` to Warden's port `to_port`, each answered by a packet at
/// `to` of payload type `expect_pt`; those.
fn tone_through(
    from: &UdpSocket,
    to_port: u16,
    to: &UdpSocket,
    packets: Vec<Vec<u8>>,
    expect_pt: u8,
) -> Vec<Vec<u8>> {
    packets
        .into_iter()
        .map(|packet| {
            from.send_to(&packet, warden_at(to_port)).expect("send");
            let (p, _) = recv(to);
            assert_eq!(p[1] & 0x7f, expect_pt, "payload type {expect_pt} out");
            p
        })
        .collect()
}

fn rtp_timestamp(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[4], p[5], p[6], p[7]])
}

#[cfg(feature = "opus")]
#[test]
fn an_opus_only_caller_and_a_pcma_only_callee_hear_each_other() {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let (am, bm) = (Media::new(), Media::new());
    let offer = sdp(&[
        format!("m=audio {} RTP/AVP 111", am.port()),
        "a=rtpmap:111 opus/48000/2".into(),
        "a=fmtp:111 useinbandfec=1".into(),
    ]);
    let (incoming, ok, _, _) = call(&mut alice, &mut bob, &offer, |offered| {
        let text = String::from_utf8_lossy(offered.body()).to_string();
        assert!(text.contains("a=rtpmap:8 PCMA/8000"), "{text}");
        sdp(&[
            format!("m=audio {} RTP/AVP 8", bm.port()),
            "a=rtpmap:8 PCMA/8000".into(),
        ])
    });
    let b_side = assert_anchored(incoming.body(), range)[0];
    let a_side = assert_anchored(ok.body(), range)[0];
    let answered = String::from_utf8_lossy(ok.body()).to_string();
    assert!(
        answered.contains(" RTP/AVP 111\r\n") && answered.contains("a=rtpmap:111 opus/48000/2"),
        "alice is answered in Opus: {answered}"
    );

    let got = tone_through(
        &am.rtp,
        a_side,
        &bm.rtp,
        tone_packets("opus", 48000, 111, 0xa, 50),
        8,
    );
    let f = heard_frequency("PCMA", 8000, &got);
    assert!((f - 1000.0).abs() <= 20.0, "bob hears {f} Hz");
    let got = tone_through(
        &bm.rtp,
        b_side,
        &am.rtp,
        tone_packets("PCMA", 8000, 8, 0xa, 50),
        111,
    );
    // Opus's RTP clock is 48 kHz whatever its audio bandwidth (RFC 7587 section 4.1).
    assert_eq!(
        rtp_timestamp(&got[1]).wrapping_sub(rtp_timestamp(&got[0])),
        960
    );
    let f = heard_frequency("opus", 48000, &got);
    assert!((f - 1000.0).abs() <= 20.0, "alice hears {f} Hz");
}

#[cfg(feature = "amr")]
#[test]
fn an_amr_wb_caller_and_a_pcma_only_callee_hear_each_other() {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let (am, bm) = (Media::new(), Media::new());
    // A VoLTE phone: AMR-WB, bandwidth-efficient, modes up to 12.65 kbps.
    let offer = sdp(&[
        format!("m=audio {} RTP/AVP 97", am.port()),
        "a=rtpmap:97 AMR-WB/16000".into(),
        "a=fmtp:97 mode-set=0,1,2".into(),
    ]);
    let (incoming, ok, _, _) = call(&mut alice, &mut bob, &offer, |_| {
        sdp(&[
            format!("m=audio {} RTP/AVP 8", bm.port()),
            "a=rtpmap:8 PCMA/8000".into(),
        ])
    });
    let b_side = assert_anchored(incoming.body(), range)[0];
    let a_side = assert_anchored(ok.body(), range)[0];
    assert!(String::from_utf8_lossy(ok.body()).contains("a=rtpmap:97 AMR-WB/16000"));

    let got = tone_through(
        &am.rtp,
        a_side,
        &bm.rtp,
        tone_packets("AMR-WB", 16000, 97, 0xa, 50),
        8,
    );
    let f = heard_frequency("PCMA", 8000, &got);
    assert!((f - 1000.0).abs() <= 20.0, "bob hears {f} Hz");
    let got = tone_through(
        &bm.rtp,
        b_side,
        &am.rtp,
        tone_packets("PCMA", 8000, 8, 0xa, 50),
        97,
    );
    for p in &got {
        // Bandwidth-efficient ToC after the 4-bit CMR: F, then the frame type.
        let frame_type = ((p[12] & 0x07) << 1) | (p[13] >> 7);
        assert_eq!(frame_type, 2, "the highest mode of alice's mode-set");
    }
    assert_eq!(
        rtp_timestamp(&got[1]).wrapping_sub(rtp_timestamp(&got[0])),
        320,
        "16 kHz clock"
    );
    let f = heard_frequency("AMR-WB", 16000, &got);
    assert!((f - 1000.0).abs() <= 20.0, "alice hears {f} Hz");

    // Alice's radio worsens: her packets ask for mode 1 (CMR, the first four bits), and
    // what she is sent follows (RFC 4867 4.3.1).
    // The next packets of the same streams (sequence numbers and timestamps go on).
    let asking: Vec<Vec<u8>> = tone_packets("AMR-WB", 16000, 97, 0xa, 60)
        .into_iter()
        .skip(50)
        .map(|mut p| {
            p[12] = (p[12] & 0x0f) | 1 << 4;
            p
        })
        .collect();
    let _ = tone_through(&am.rtp, a_side, &bm.rtp, asking, 8);
    let more = tone_packets("PCMA", 8000, 8, 0xa, 60)
        .into_iter()
        .skip(50)
        .collect();
    let got = tone_through(&bm.rtp, b_side, &am.rtp, more, 97);
    let frame_type = |p: &Vec<u8>| ((p[12] & 0x07) << 1) | (p[13] >> 7);
    assert_eq!(
        frame_type(got.last().expect("packets")),
        1,
        "the mode alice asked for"
    );
}

/// The payload type an SDP body gives `codec` in the layout `octet_aligned` (from its
/// rtpmap and fmtp lines).
#[cfg(feature = "amr")]
fn payload_type_of(body: &str, codec: &str, octet_aligned: bool) -> Option<u8> {
    body.lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter(|l| {
            l.split(' ')
                .nth(1)
                .is_some_and(|n| n.starts_with(&format!("{codec}/")))
        })
        .filter_map(|l| l.split(' ').next()?.parse::<u8>().ok())
        .find(|pt| {
            let fmtp = format!("a=fmtp:{pt} ");
            let aligned = body
                .lines()
                .find_map(|l| l.strip_prefix(&fmtp))
                .is_some_and(|f| FormatParams::parse(f).octet_aligned);
            aligned == octet_aligned
        })
}

/// baresip's amr module and many SBCs speak AMR only in octet-aligned mode: Warden offers
/// both layouts, each under its own payload type, and transcodes to the one answered.
#[cfg(feature = "amr")]
#[test]
fn a_pcmu_caller_reaches_a_callee_that_speaks_only_octet_aligned_amr() {
    for (codec, clock) in [("AMR", 8000), ("AMR-WB", 16000)] {
        let (w, range) = warden(10, "");
        let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
        let (am, bm) = (Media::new(), Media::new());
        let offer = sdp(&[
            format!("m=audio {} RTP/AVP 0", am.port()),
            "a=rtpmap:0 PCMU/8000".into(),
        ]);
        let mut chosen = 0;
        let (incoming, ok, _, _) = call(&mut alice, &mut bob, &offer, |offered| {
            let text = String::from_utf8_lossy(offered.body()).to_string();
            for name in ["AMR", "AMR-WB"] {
                let efficient = payload_type_of(&text, name, false);
                let aligned = payload_type_of(&text, name, true);
                assert!(
                    efficient.is_some() && aligned.is_some() && efficient != aligned,
                    "{name} in both layouts, one payload type each: {text}"
                );
            }
            chosen = payload_type_of(&text, codec, true).expect("octet-aligned");
            assert!(
                text.contains(&format!(
                    "a=fmtp:{chosen} octet-align=1;mode-change-capability=2;max-red=0"
                )),
                "{text}"
            );
            // The callee answers as baresip does: octet-aligned, its own fmtp.
            sdp(&[
                format!("m=audio {} RTP/AVP {chosen}", bm.port()),
                format!("a=rtpmap:{chosen} {codec}/{clock}"),
                format!("a=fmtp:{chosen} octet-align=1"),
            ])
        });
        let b_side = assert_anchored(incoming.body(), range)[0];
        let a_side = assert_anchored(ok.body(), range)[0];
        let answered = String::from_utf8_lossy(ok.body()).to_string();
        assert!(answered.contains(" RTP/AVP 0\r\n"), "{answered}");

        let fmtp = "octet-align=1";
        let got = tone_through(
            &am.rtp,
            a_side,
            &bm.rtp,
            tone_packets("PCMU", 8000, 0, 0xa, 50),
            chosen,
        );
        for p in &got {
            // Octet-aligned: CMR in its own octet, then a ToC octet F|FT|Q|00.
            assert_eq!(p[13] & 0x83, 0, "{codec}: one frame, padding bits zero");
            assert!(p[13] & 0x04 != 0, "{codec}: a good frame");
        }
        let f = heard_frequency_in(codec, clock, fmtp, &got);
        assert!((f - 1000.0).abs() <= 20.0, "{codec}: bob hears {f} Hz");
        let tone = tone_packets_in(codec, clock, fmtp, chosen, 0xb, 50);
        let got = tone_through(&bm.rtp, b_side, &am.rtp, tone, 0);
        let f = heard_frequency("PCMU", 8000, &got);
        assert!((f - 1000.0).abs() <= 20.0, "{codec}: alice hears {f} Hz");
    }
}

/// A VoLTE caller's AMR-WB, octet-aligned with a mode-set, hears Warden's announcement in
/// that very format: the answer repeats its fmtp and every frame keeps to the modes.
#[cfg(feature = "amr")]
#[test]
fn an_octet_aligned_amr_wb_caller_hears_the_announcement_in_its_own_format() {
    let (w, range, _prompts) = announcing_warden(16000, false);
    let mut alice = Ua::udp("alice", w.port);
    let am = Media::new();
    let fmtp = "mode-change-capability=2;max-red=0;octet-align=1;mode-set=0,1,2";
    let offer = sdp(&[
        format!("m=audio {} RTP/AVP 104 105", am.port()),
        "a=rtpmap:104 AMR-WB/16000".into(),
        format!("a=fmtp:104 {fmtp}"),
        "a=rtpmap:105 telephone-event/16000".into(),
        "a=fmtp:105 0-15".into(),
    ]);
    alice.invite_sdp("nobody", &offer);
    let progress = announcement(&mut alice);
    let port = assert_anchored(progress.body(), range)[0];
    let answer = String::from_utf8_lossy(progress.body()).to_string();
    assert!(
        answer.contains("RTP/AVP 104 105\r\n") && answer.contains(&format!("a=fmtp:104 {fmtp}")),
        "answered in the offered format: {answer}"
    );
    let mut heard = Vec::new();
    for _ in 0..20 {
        let (p, from) = recv(&am.rtp);
        assert_eq!((from, p[1] & 0x7f), (warden_at(port), 104));
        let frame_type = (p[13] >> 3) & 0x0f;
        assert!(frame_type <= 2, "mode {frame_type} is outside the mode-set");
        heard.push(p);
    }
    let f = heard_frequency_in("AMR-WB", 16000, fmtp, &heard);
    assert!((f - 1000.0).abs() <= 20.0, "the prompt's tone: {f} Hz");
    assert_eq!(alice.recv_response().status(), 404);
}

#[test]
fn dtmf_crosses_between_rfc4733_and_sip_info() {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let (am, bm) = (Media::new(), Media::new());
    // Alice sends key presses as RFC 4733 events; bob's phone knows only SIP INFO.
    let offer = sdp(&[
        format!("m=audio {} RTP/AVP 8 101", am.port()),
        "a=rtpmap:8 PCMA/8000".into(),
        "a=rtpmap:101 telephone-event/8000".into(),
        "a=fmtp:101 0-16".into(),
    ]);
    let (incoming, ok, mut alice_dialog, mut bob_dialog) =
        call(&mut alice, &mut bob, &offer, |_| {
            sdp(&[
                format!("m=audio {} RTP/AVP 8", bm.port()),
                "a=rtpmap:8 PCMA/8000".into(),
            ])
        });
    let b_side = assert_anchored(incoming.body(), range)[0];
    let a_side = assert_anchored(ok.body(), range)[0];
    let answered = String::from_utf8_lossy(ok.body()).to_string();
    assert!(
        answered.contains(" RTP/AVP 8 101\r\n"),
        "alice keeps telephone-event, Warden takes her events: {answered}"
    );

    // Alice presses 5 (100 ms): start, update, three ends; bob gets one INFO.
    let audio = rtp(1, 8, 0xa, 160);
    am.rtp.send_to(&audio, warden_at(a_side)).expect("send");
    recv(&bm.rtp);
    for (seq, end, duration) in [
        (2u16, 0u8, 0u16),
        (3, 0, 400),
        (4, 0x80, 800),
        (5, 0x80, 800),
        (6, 0x80, 800),
    ] {
        let mut event = rtp(seq, 101, 0xa, 0);
        event[4..8].copy_from_slice(&320u32.to_be_bytes());
        event.extend_from_slice(&[5, end | 10]);
        event.extend_from_slice(&duration.to_be_bytes());
        am.rtp.send_to(&event, warden_at(a_side)).expect("send");
    }
    let info = bob.recv_request("INFO");
    assert_eq!(
        info.header("Content-Type").as_deref(),
        Some("application/dtmf-relay")
    );
    assert_eq!(
        String::from_utf8_lossy(info.body()),
        "Signal=5\r\nDuration=100\r\n"
    );
    bob.ok(&info);
    // No event packet reached bob's RTP port; his next packet is alice's audio.
    let after = rtp(7, 8, 0xa, 160);
    am.rtp.send_to(&after, warden_at(a_side)).expect("send");
    assert_eq!(recv(&bm.rtp).0, after);

    // Bob presses # by INFO; alice hears it as RFC 4733 events in bob's stream.
    bm.rtp
        .send_to(&rtp(900, 8, 0xb, 160), warden_at(b_side))
        .expect("send");
    recv(&am.rtp);
    bob.in_dialog_typed(
        &mut bob_dialog,
        "INFO",
        "application/dtmf-relay",
        Some("Signal=#\r\nDuration=100\r\n"),
    );
    assert_eq!(bob.recv_response().status(), 200);
    let mut ends = 0;
    let mut first = true;
    while ends < 3 {
        let (p, _) = recv(&am.rtp);
        assert_eq!(p[1] & 0x7f, 101, "alice's telephone-event payload type");
        assert_eq!(p[1] & 0x80 != 0, first, "marker on the first packet only");
        assert_eq!(&p[8..12], &0xbu32.to_be_bytes(), "in bob's stream");
        assert_eq!(p[12], 11, "event code of #");
        if p[13] & 0x80 != 0 {
            ends += 1;
            assert_eq!(u16::from_be_bytes([p[14], p[15]]), 800, "100 ms");
        }
        first = false;
    }
    // An INFO without a key gets 400; the call stays up.
    bob.in_dialog_typed(
        &mut bob_dialog,
        "INFO",
        "application/dtmf-relay",
        Some("Signal=\r\n"),
    );
    assert_eq!(bob.recv_response().status(), 400);
    common::hang_up(&mut alice, &mut alice_dialog, &mut bob);
}

/// A 16-bit mono WAV file of a 1 kHz tone.
fn tone_wav(path: &std::path::Path, rate: u32, seconds: f64) {
    let n = (f64::from(rate) * seconds) as usize;
    let data: Vec<u8> = (0..n)
        .flat_map(|i| {
            let t = i as f64 / f64::from(rate);
            ((10000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16).to_le_bytes()
        })
        .collect();
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    for field in [
        16u32.to_le_bytes().to_vec(),
        1u16.to_le_bytes().to_vec(),
        1u16.to_le_bytes().to_vec(),
    ] {
        wav.extend_from_slice(&field);
    }
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    std::fs::write(path, wav).expect("write wav");
}

/// A Warden that announces failures, its prompts a 1 kHz tone at `rate` (the
/// `user_unavailable` prompt, and `busy` when `busy_too`); the folder lives as long as it.
fn announcing_warden(rate: u32, busy_too: bool) -> (Warden, (u16, u16), tempfile::TempDir) {
    let prompts = tempfile::tempdir().expect("tempdir");
    tone_wav(&prompts.path().join("user_unavailable.wav"), rate, 0.5);
    if busy_too {
        tone_wav(&prompts.path().join("busy.wav"), 8000, 0.5);
    }
    let (w, range) = warden(
        10,
        &format!(
            "prompts_dir = \"{}\"\n[calls]\nannounce_failures = true\n",
            prompts.path().display()
        ),
    );
    (w, range, prompts)
}

/// The 183 that opens an announcement (no final response may come before it).
fn announcement(ua: &mut Ua) -> Response {
    loop {
        let r = ua.recv_response();
        assert!(
            r.status() < 200,
            "the failure waits for the announcement: {}",
            r.status()
        );
        if r.status() == 183 {
            return r;
        }
    }
}

#[test]
fn failures_are_announced_as_early_media_before_the_final_response() {
    let (w, range, _prompts) = announcing_warden(16000, true);
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let am = Media::new();
    let offer = sdp(&audio(am.port(), "sendrecv"));

    // Nobody by that name: 183 + the unavailable prompt, then 404.
    alice.invite_sdp("nobody", &offer);
    let progress = announcement(&mut alice);
    let port = assert_anchored(progress.body(), range)[0];
    let answer = String::from_utf8_lossy(progress.body()).to_string();
    // Alice's first codec, and her telephone-event so a menu could hear her keys.
    assert!(
        answer.contains("RTP/AVP 0 101\r\n")
            && answer.contains("a=rtpmap:101 telephone-event/8000")
            && answer.contains("a=sendonly"),
        "{answer}"
    );
    let mut heard = Vec::new();
    for _ in 0..25 {
        let (p, from) = recv(&am.rtp);
        assert_eq!(
            (from, p[1] & 0x7f),
            (warden_at(port), 0),
            "PCMU from Warden"
        );
        heard.push(p);
    }
    let f = heard_frequency("PCMU", 8000, &heard);
    assert!((f - 1000.0).abs() <= 20.0, "the prompt's tone: {f} Hz");
    let last = alice.recv_response();
    assert_eq!(last.status(), 404);
    assert_eq!(last.to_tag(), progress.to_tag(), "same early dialog");

    // A busy callee: its 486 comes after the busy prompt.
    assert_eq!(bob.register(600).status(), 200);
    let second = alice.invite_sdp("bob", &offer);
    let incoming = bob.recv_request("INVITE");
    bob.answer(&incoming, 486, false);
    let ack = bob.recv_request("ACK");
    assert_eq!(ack.method().as_str(), "ACK");
    let mut statuses = Vec::new();
    loop {
        let r = alice.recv_response();
        if r.call_id() != second.call_id() {
            continue; // the first call's 404, retransmitted until ACKed
        }
        statuses.push(r.status());
        if r.status() >= 200 {
            break;
        }
    }
    assert!(statuses.contains(&183), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&486));
    let mut packets = 0;
    am.rtp
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    while am.rtp.recv_from(&mut buf).is_ok() {
        packets += 1;
    }
    assert!(
        packets >= 20,
        "the busy prompt was played ({packets} packets)"
    );

    // The caller gives up during an announcement: 487, nothing after.
    let third = alice.invite_sdp("nobody", &offer);
    loop {
        let r = alice.recv_response();
        if r.call_id() == third.call_id() && r.status() == 183 {
            break;
        }
    }
    alice.cancel(&third);
    let mut finals = Vec::new();
    // Long enough for the prompt (0.5 s) to have ended: no 404 may follow the 487.
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while let Some(m) = alice.try_recv(until.saturating_duration_since(std::time::Instant::now())) {
        if let warden::sip::message::Message::Response(r) = m
            && r.call_id() == third.call_id()
            && r.status() >= 200
            && r.cseq().is_some_and(|c| c.method.as_str() == "INVITE")
        {
            finals.push(r.status());
        }
    }
    assert!(
        !finals.is_empty() && finals.iter().all(|s| *s == 487),
        "{finals:?}"
    );
}

/// `count` 20 ms RTP packets of a `freq` Hz tone in the codec SDP calls `codec_name`/8000.
fn tone_at(codec_name: &str, pt: u8, freq: f64, count: u16) -> Vec<Vec<u8>> {
    tone_at_in(codec_name, "", pt, freq, count)
}

/// As `tone_at`, in the payload format `fmtp` describes.
fn tone_at_in(codec_name: &str, fmtp: &str, pt: u8, freq: f64, count: u16) -> Vec<Vec<u8>> {
    let codec = warden_media::codec::by_name(codec_name, 8000).expect("codec");
    let params = FormatParams::parse(fmtp);
    let mut encoder = codec.encoder_at(codec.sample_rate, &Default::default(), &params);
    let n = codec.frame_samples();
    let rate = f64::from(codec.sample_rate);
    (0..count)
        .map(|i| {
            let frame: Vec<i16> = (0..n)
                .map(|k| {
                    let t = (usize::from(i) * n + k) as f64 / rate;
                    (6000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
                })
                .collect();
            let mut packet = rtp(i, pt, 0x5eed_0000 + u32::from(pt), 0);
            encoder.encode(&frame, &mut packet);
            packet
        })
        .collect()
}

/// Each talker (its socket, Warden's port for it, its packets) sends a packet every 20 ms
/// until its packets run out; what each received meanwhile.
fn converse(talkers: &[(&UdpSocket, u16, Vec<Vec<u8>>)]) -> Vec<Vec<Vec<u8>>> {
    let mut heard: Vec<Vec<Vec<u8>>> = vec![Vec::new(); talkers.len()];
    let mut buf = [0u8; 2048];
    let start = std::time::Instant::now();
    let rounds = talkers.iter().map(|t| t.2.len()).max().unwrap_or(0);
    for n in 0..rounds {
        for (socket, port, packets) in talkers {
            if let Some(p) = packets.get(n) {
                socket.send_to(p, warden_at(*port)).expect("send");
            }
        }
        for ((socket, _, _), heard) in talkers.iter().zip(&mut heard) {
            socket.set_nonblocking(true).expect("nonblocking");
            while let Ok((len, _)) = socket.recv_from(&mut buf) {
                heard.push(buf[..len].to_vec());
            }
            socket.set_nonblocking(false).expect("blocking");
        }
        let due = start + Duration::from_millis(20 * (n as u64 + 1));
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
    }
    heard
}

/// What `packets` (RTP in the codec SDP calls `codec`/8000) hold at `freq`, decoded.
fn heard_power(codec: &str, packets: &[Vec<u8>], freq: f64) -> f64 {
    heard_power_in(codec, "", packets, freq)
}

/// As `heard_power`, for payloads in the format `fmtp` describes.
fn heard_power_in(codec: &str, fmtp: &str, packets: &[Vec<u8>], freq: f64) -> f64 {
    let c = warden_media::codec::by_name(codec, 8000).expect("codec");
    let mut decoder = c.decoder_at(c.sample_rate, &FormatParams::parse(fmtp));
    let mut pcm = Vec::new();
    for p in packets {
        decoder.decode(&p[12..], &mut pcm);
    }
    warden_media::codec::tone_power(&pcm, c.sample_rate, freq)
}

#[test]
fn three_parties_on_different_codecs_each_hear_the_other_two_in_a_conference() {
    let (w, range) = warden(10, "");
    // The shipped dialplan: 8000-8999 are conference rooms.
    let parties = [
        ("alice", "PCMU", 0, 500.0),
        ("bob", "PCMA", 8, 1100.0),
        ("carol", "G722", 9, 1700.0),
    ];
    let mut joined = Vec::new();
    for (name, codec, pt, _) in parties {
        let mut ua = Ua::udp(name, w.port);
        let media = Media::new();
        media
            .rtp
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let offer = sdp(&[
            format!("m=audio {} RTP/AVP {pt}", media.port()),
            format!("a=rtpmap:{pt} {codec}/8000"),
            "a=ptime:20".into(),
            "a=sendrecv".into(),
        ]);
        let invite = ua.invite_sdp("8123", &offer);
        let ok = ua.final_response();
        assert_eq!(ok.status(), 200, "Warden answers the room");
        let port = assert_anchored(ok.body(), range)[0];
        assert!(
            String::from_utf8_lossy(ok.body()).contains(&format!("RTP/AVP {pt}")),
            "in the party's own codec"
        );
        let mut dialog = ua.dialog_from(&invite, &ok);
        ua.in_dialog(&mut dialog, "ACK", None);
        joined.push((ua, dialog, media, port));
    }
    // Everyone talks for 2.4 s, paced like a phone; what each hears is kept.
    let talkers: Vec<(&UdpSocket, u16, Vec<Vec<u8>>)> = joined
        .iter()
        .zip(parties)
        .map(|((_, _, media, port), (_, codec, pt, freq))| {
            (&media.rtp, *port, tone_at(codec, pt, freq, 120))
        })
        .collect();
    let heard = converse(&talkers);
    for (i, (name, codec, pt, own)) in parties.iter().enumerate() {
        let packets = &heard[i];
        assert!(packets.len() >= 90, "{name} got {} packets", packets.len());
        assert!(
            packets.iter().all(|p| p[1] & 0x7f == *pt),
            "{name}: in its payload type"
        );
        // The last second: the join chimes are over and everyone is talking.
        let power = |f: f64| heard_power(codec, &packets[packets.len() - 50..], f);
        let others: Vec<f64> = parties
            .iter()
            .filter(|p| p.0 != *name)
            .map(|p| power(p.3))
            .collect();
        let mine = power(*own);
        for p in &others {
            assert!(*p > 1e5, "{name} hears both others: {others:?}, own {mine}");
            assert!(
                mine < p / 100.0,
                "{name} does not hear itself: {others:?}, own {mine}"
            );
        }
    }
    let (_, metrics) = common::get(&w.admin("/metrics"));
    assert!(
        metrics.contains("warden_conference_rooms 1")
            && metrics.contains("warden_conference_members 3"),
        "{metrics}"
    );
    // Alice leaves: the others hear the leave chime, and the room goes on.
    let (mut alice, mut alice_dialog, _, _) = joined.remove(0);
    alice.in_dialog(&mut alice_dialog, "BYE", None);
    assert_eq!(alice.recv_response().status(), 200);
    for (mut ua, mut dialog, _, _) in joined {
        ua.in_dialog(&mut dialog, "BYE", None);
        assert_eq!(ua.recv_response().status(), 200);
    }
    let records = common::closed_records(&w, 3);
    let rooms: Vec<&str> = records
        .iter()
        .filter_map(|r| r["conference"].as_str())
        .collect();
    assert_eq!(
        rooms, ["8123"; 3],
        "each participant's record names the room"
    );
}

/// A room with a PCMU phone and an AMR phone that speaks octet-aligned with a mode-set:
/// each hears the other, and the AMR phone gets the mix in its own format.
#[cfg(feature = "amr")]
#[test]
fn an_octet_aligned_amr_party_talks_in_a_conference() {
    let (w, range) = warden(10, "");
    let amr = "octet-align=1;mode-set=0,2,4";
    let parties = [
        ("alice", "PCMU", "", 0, 700.0),
        ("dave", "AMR", amr, 96, 1300.0),
    ];
    let mut joined = Vec::new();
    for (name, codec, fmtp, pt, _) in parties {
        let mut ua = Ua::udp(name, w.port);
        let media = Media::new();
        media
            .rtp
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut lines = vec![
            format!("m=audio {} RTP/AVP {pt}", media.port()),
            format!("a=rtpmap:{pt} {codec}/8000"),
        ];
        if !fmtp.is_empty() {
            lines.push(format!("a=fmtp:{pt} {fmtp}"));
        }
        let invite = ua.invite_sdp("8124", &sdp(&lines));
        let ok = ua.final_response();
        assert_eq!(ok.status(), 200, "Warden answers the room");
        let port = assert_anchored(ok.body(), range)[0];
        let mut dialog = ua.dialog_from(&invite, &ok);
        ua.in_dialog(&mut dialog, "ACK", None);
        joined.push((ua, dialog, media, port));
    }
    let talkers: Vec<(&UdpSocket, u16, Vec<Vec<u8>>)> = joined
        .iter()
        .zip(parties)
        .map(|((_, _, media, port), (_, codec, fmtp, pt, freq))| {
            (&media.rtp, *port, tone_at_in(codec, fmtp, pt, freq, 120))
        })
        .collect();
    let heard = converse(&talkers);
    for (i, (name, codec, fmtp, pt, own)) in parties.iter().enumerate() {
        let packets = &heard[i];
        assert!(packets.len() >= 90, "{name} got {} packets", packets.len());
        assert!(packets.iter().all(|p| p[1] & 0x7f == *pt), "{name}");
        let other = parties[1 - i].4;
        let last = &packets[packets.len() - 50..];
        let (theirs, mine) = (
            heard_power_in(codec, fmtp, last, other),
            heard_power_in(codec, fmtp, last, *own),
        );
        assert!(
            theirs > 1e5 && mine < theirs / 100.0,
            "{name} hears the other ({theirs}), not itself ({mine})"
        );
        if *codec == "AMR" {
            for p in packets {
                assert_eq!(p[13] & 0x83, 0, "octet-aligned, one frame");
                let mode = (p[13] >> 3) & 0x0f;
                assert!(mode <= 4 || mode == 8 || mode == 15, "mode {mode}");
            }
        }
    }
    for (mut ua, mut dialog, _, _) in joined {
        ua.in_dialog(&mut dialog, "BYE", None);
        assert_eq!(ua.recv_response().status(), 200);
    }
}

/// `ua` sends REFER to `target` in dialog `d` and gets 202, then the first NOTIFY (100
/// Trying), which it answers.
fn refer(ua: &mut Ua, d: &mut Dialog, target: &str) {
    ua.in_dialog_with(
        d,
        "REFER",
        &format!("Refer-To: <{target}>\r\nReferred-By: {}\r\n", d.local_uri),
        "",
        None,
    );
    assert_eq!(ua.recv_response().status(), 202, "REFER accepted");
    assert_eq!(next_notify(ua), ("SIP/2.0 100 Trying".to_owned(), false));
}

/// The next NOTIFY of the refer subscription, answered: its sipfrag status line and
/// whether it ends the subscription.
fn next_notify(ua: &mut Ua) -> (String, bool) {
    let notify = ua.recv_request("NOTIFY");
    assert_eq!(notify.header("Event").as_deref(), Some("refer"));
    assert!(
        notify
            .header("Content-Type")
            .is_some_and(|ct| ct.starts_with("message/sipfrag")),
        "sipfrag body"
    );
    ua.ok(&notify);
    let frag = String::from_utf8_lossy(notify.body()).trim_end().to_owned();
    let last = notify
        .header("Subscription-State")
        .is_some_and(|s| s.starts_with("terminated"));
    (frag, last)
}

/// Alice and bob in a call through Warden, with media; carol registered, to be
/// transferred to.
struct Transfer {
    w: Warden,
    range: (u16, u16),
    alice: Ua,
    bob: Ua,
    carol: Ua,
    am: Media,
    bm: Media,
    ad: Dialog,
    bd: Dialog,
    /// Warden's relay ports toward alice and toward bob.
    a_side: u16,
    b_side: u16,
}

fn alice_and_bob_with_carol_standing_by() -> Transfer {
    let (w, range) = warden(10, "");
    let (mut alice, mut bob, mut carol) = (
        Ua::udp("alice", w.port),
        Ua::udp("bob", w.port),
        Ua::udp("carol", w.port),
    );
    assert_eq!(carol.register(600).status(), 200);
    let PlainCall {
        am,
        bm,
        a_side,
        b_side,
        alice_dialog: ad,
        bob_dialog: bd,
    } = plain_call(&mut alice, &mut bob, range);
    stream(&am.rtp, a_side, &bm.rtp, b_side, 1, 3);
    Transfer {
        w,
        range,
        alice,
        bob,
        carol,
        am,
        bm,
        ad,
        bd,
        a_side,
        b_side,
    }
}

#[test]
fn blind_transfer_by_the_callee_bridges_the_caller_to_the_target_and_links_the_records() {
    let Transfer {
        w,
        range,
        mut alice,
        mut bob,
        mut carol,
        am,
        mut bd,
        a_side,
        b_side,
        ..
    } = alice_and_bob_with_carol_standing_by();
    let cm = Media::new();

    // Bob transfers alice to carol, and hangs up at once, as a blind transfer lets him.
    refer(&mut bob, &mut bd, "sip:carol@127.0.0.1");
    bob.in_dialog(&mut bd, "BYE", None);
    assert_eq!(bob.recv_response().status(), 200);
    let invite = carol.recv_request("INVITE");
    assert!(
        invite.header("To").is_some_and(|to| to.contains("carol")),
        "addressed to the target"
    );
    assert_eq!(
        assert_anchored(invite.body(), range),
        vec![b_side],
        "offered on the transferor's relay port"
    );
    assert!(
        String::from_utf8_lossy(invite.body()).contains("RTP/AVP 0"),
        "alice's codec first"
    );
    let mut cd = carol.answer_sdp(&invite, 200, Some(&sdp(&audio(cm.port(), "sendrecv"))));
    let ack = carol.recv_request("ACK");
    assert_eq!(ack.call_id(), invite.call_id());

    // Alice, with no re-INVITE, now talks to carol through the same ports.
    stream(&am.rtp, a_side, &cm.rtp, b_side, 2, 10);
    stream(&cm.rtp, b_side, &am.rtp, a_side, 3, 10);

    // Carol hangs up: alice gets the BYE.
    common::hang_up(&mut carol, &mut cd, &mut alice);

    let records = common::closed_records(&w, 2);
    let first = records
        .iter()
        .find(|r| r["callee"] == "bob")
        .expect("the first call's record");
    let second = records
        .iter()
        .find(|r| r["callee"] == "carol")
        .expect("the transferred call's record");
    assert_eq!(first["end_reason"], "transferred");
    assert_eq!(first["hangup_side"], "callee");
    assert_eq!(second["linked_id"], first["id"], "linked to the first");
    assert_eq!(second["caller"], "alice");
    assert_eq!(second["end_reason"], "normal");
}

#[test]
fn a_failed_blind_transfer_reports_why_and_leaves_the_call_up() {
    let Transfer {
        w: _warden,
        bob: _bob,
        mut alice,
        mut carol,
        am,
        bm,
        mut ad,
        a_side,
        b_side,
        ..
    } = alice_and_bob_with_carol_standing_by();

    // Alice (the caller) transfers bob to nobody anybody knows: 404.
    refer(&mut alice, &mut ad, "sip:nobody@127.0.0.1");
    assert_eq!(
        next_notify(&mut alice),
        ("SIP/2.0 404 Not Found".to_owned(), true)
    );
    // Then to carol, who is busy: 486, after her ringing.
    refer(&mut alice, &mut ad, "sip:carol@127.0.0.1");
    let invite = carol.recv_request("INVITE");
    carol.answer(&invite, 180, false);
    let (frag, last) = next_notify(&mut alice);
    assert!(
        frag.starts_with("SIP/2.0 180 "),
        "the target's ringing: {frag}"
    );
    assert!(!last);
    carol.answer(&invite, 486, false);
    carol.recv_request("ACK");
    let (frag, last) = next_notify(&mut alice);
    assert!(frag.starts_with("SIP/2.0 486"), "{frag}");
    assert!(last);
    // Alice and bob are still together, media and all.
    stream(&am.rtp, a_side, &bm.rtp, b_side, 4, 5);
    stream(&bm.rtp, b_side, &am.rtp, a_side, 5, 5);
}

#[test]
fn attended_transfer_joins_the_callers_of_two_calls_and_hangs_up_the_transferor() {
    let Transfer {
        w,
        range,
        mut alice,
        mut bob,
        mut carol,
        am,
        mut ad,
        mut bd,
        a_side,
        b_side,
        ..
    } = alice_and_bob_with_carol_standing_by();
    // Bob consults carol on a second call through Warden.
    let (bm2, cm) = (Media::new(), Media::new());
    let (_, _, consult, _) = call(
        &mut bob,
        &mut carol,
        &sdp(&audio(bm2.port(), "sendrecv")),
        |_| sdp(&audio(cm.port(), "sendrecv")),
    );
    // Then joins alice to carol: REFER in the first call, replacing the second.
    bob.refer_replacing(&mut bd, "carol", &consult);
    assert_eq!(bob.recv_response().status(), 202);
    assert_eq!(next_notify(&mut bob), ("SIP/2.0 200 OK".to_owned(), true));
    let mut byes = Vec::new();
    for _ in 0..2 {
        let bye = bob.recv_request("BYE");
        bob.ok(&bye);
        byes.push(bye.call_id().expect("call-id"));
    }
    byes.sort();
    let mut expected = vec![bd.call_id.clone(), consult.call_id.clone()];
    expected.sort();
    assert_eq!(byes, expected, "bob hung up in both calls");

    // Carol's media moves onto the first call's ports, toward alice.
    let reinvite = carol.recv_request("INVITE");
    assert_eq!(assert_anchored(reinvite.body(), range), vec![b_side]);
    carol.answer_sdp(&reinvite, 200, Some(&sdp(&audio(cm.port(), "sendrecv"))));
    carol.recv_request("ACK");
    stream(&am.rtp, a_side, &cm.rtp, b_side, 6, 10);
    stream(&cm.rtp, b_side, &am.rtp, a_side, 7, 10);

    // Alice hangs up: carol gets the BYE.
    common::hang_up(&mut alice, &mut ad, &mut carol);

    let records = common::closed_records(&w, 3);
    let find = |caller: &str, callee: &str| {
        records
            .iter()
            .find(|r| r["caller"] == caller && r["callee"] == callee)
            .unwrap_or_else(|| panic!("a record {caller} -> {callee}: {records:?}"))
    };
    let (first, consult, joined) = (
        find("alice", "bob"),
        find("bob", "carol"),
        find("alice", "carol"),
    );
    assert_eq!(first["end_reason"], "transferred");
    assert_eq!(consult["end_reason"], "transferred");
    assert_eq!(joined["linked_id"], first["id"]);
    assert_eq!(joined["end_reason"], "normal");
}

#[test]
fn a_phone_makes_its_own_three_way_call_by_referring_the_other_party_to_a_room() {
    let Transfer {
        w: _warden,
        range,
        alice,
        mut bob,
        mut carol,
        am,
        mut bd,
        a_side,
        ..
    } = alice_and_bob_with_carol_standing_by();
    let _ = alice;
    // Carol is in room 8123 already (PCMA).
    let cm = Media::new();
    let invite = carol.invite_sdp(
        "8123",
        &sdp(&[
            format!("m=audio {} RTP/AVP 8", cm.port()),
            "a=rtpmap:8 PCMA/8000".into(),
            "a=sendrecv".into(),
        ]),
    );
    let ok = carol.final_response();
    assert_eq!(ok.status(), 200);
    let c_port = assert_anchored(ok.body(), range)[0];
    let mut cd = carol.dialog_from(&invite, &ok);
    carol.in_dialog(&mut cd, "ACK", None);

    // Bob sends alice there (RFC 4579's way of starting a conference from a call).
    refer(&mut bob, &mut bd, "sip:8123@127.0.0.1");
    assert_eq!(next_notify(&mut bob), ("SIP/2.0 200 OK".to_owned(), true));
    let bye = bob.recv_request("BYE");
    bob.ok(&bye);

    // Alice (PCMU, 500 Hz) and carol (PCMA, 1100 Hz) now hear each other through the room.
    let heard = converse(&[
        (&am.rtp, a_side, tone_at("PCMU", 0, 500.0, 75)),
        (&cm.rtp, c_port, tone_at("PCMA", 8, 1100.0, 75)),
    ]);
    let tail = |packets: &[Vec<u8>]| packets[packets.len().saturating_sub(40)..].to_vec();
    assert!(
        heard_power("PCMU", &tail(&heard[0]), 1100.0) > 1e5,
        "alice hears carol"
    );
    assert!(
        heard_power("PCMA", &tail(&heard[1]), 500.0) > 1e5,
        "carol hears alice"
    );
    assert!(
        heard_power("PCMU", &tail(&heard[0]), 500.0) < 1e3,
        "alice does not hear herself"
    );
}

/// A party's SRTP keys as its SDP declares them: tag, suite, key and salt (SDES).
fn crypto_line(tag: u32, suite: Suite, key: &[u8; KEY_AND_SALT]) -> String {
    use base64::Engine;
    let inline = base64::engine::general_purpose::STANDARD.encode(key);
    format!("a=crypto:{tag} {} inline:{inline}", suite.name())
}

/// The one `a=crypto` line of an SDP answer: (tag, suite name, key and salt).
fn answered_crypto(body: &[u8]) -> (u32, String, [u8; KEY_AND_SALT]) {
    use base64::Engine;
    let text = String::from_utf8_lossy(body).to_string();
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("a=crypto:"))
        .collect();
    assert_eq!(lines.len(), 1, "one key in the answer: {text}");
    let f: Vec<&str> = lines[0].split_whitespace().collect();
    let inline = f[2].strip_prefix("inline:").expect("inline key");
    let key = base64::engine::general_purpose::STANDARD
        .decode(inline.split('|').next().expect("key"))
        .expect("base64")
        .try_into()
        .expect("30 bytes");
    (f[0].parse().expect("tag"), f[1].to_owned(), key)
}

/// Keys for one party: what it sends with, what it hears Warden with.
fn party_srtp(suite: Suite, own: [u8; KEY_AND_SALT], wardens: [u8; KEY_AND_SALT]) -> SrtpSide {
    SrtpSide::new(SrtpKeys {
        suite,
        inbound: wardens,
        outbound: own,
    })
    .expect("keys")
}

#[test]
fn an_srtp_caller_and_a_plain_rtp_callee_hear_each_other_with_either_suite() {
    for (tag, suite) in [
        (3, Suite::AesCm128HmacSha1_80),
        (7, Suite::AesCm128HmacSha1_32),
    ] {
        // The route toward bob is plain RTP: Warden decrypts and encrypts on alice's leg.
        let (w, range) = warden(10, "srtp = \"off\"\n");
        let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
        let (am, bm) = (Media::new(), Media::new());
        let alice_key: [u8; KEY_AND_SALT] = std::array::from_fn(|i| i as u8 * 7 + tag as u8);
        let offer = sdp(&[
            format!("m=audio {} RTP/SAVP 0 101", am.port()),
            "a=rtpmap:0 PCMU/8000".into(),
            "a=rtpmap:101 telephone-event/8000".into(),
            crypto_line(tag, suite, &alice_key),
        ]);
        let (incoming, ok, _, _) = call(&mut alice, &mut bob, &offer, |offered| {
            let text = String::from_utf8_lossy(offered.body()).to_string();
            assert!(text.contains(" RTP/AVP 0 101"), "bob: plain RTP: {text}");
            assert!(
                !text.contains("a=crypto"),
                "alice's key stays on her leg: {text}"
            );
            sdp(&[
                format!("m=audio {} RTP/AVP 0", bm.port()),
                "a=rtpmap:0 PCMU/8000".into(),
            ])
        });
        let b_side = assert_anchored(incoming.body(), range)[0];
        let a_side = assert_anchored(ok.body(), range)[0];
        let answer = String::from_utf8_lossy(ok.body()).to_string();
        assert!(answer.contains(" RTP/SAVP 0"), "{answer}");
        let (answered_tag, answered_suite, wardens_key) = answered_crypto(ok.body());
        assert_eq!((answered_tag, answered_suite.as_str()), (tag, suite.name()));
        assert_ne!(wardens_key, alice_key, "Warden sends with a key of its own");
        let mut srtp = party_srtp(suite, alice_key, wardens_key);

        // Alice -> bob: bob gets alice's RTP packets exactly as she made them.
        let tone = tone_packets("PCMU", 8000, 0, 0xa11ce, 50);
        let mut sealed = Vec::new();
        for packet in &tone {
            srtp.protect(packet, true, &mut sealed).expect("protect");
            am.rtp.send_to(&sealed, warden_at(a_side)).expect("send");
            let (got, from) = recv(&bm.rtp);
            assert_eq!(from, warden_at(b_side));
            assert_eq!(&got, packet, "decrypted byte for byte");
        }
        let f = heard_frequency("PCMU", 8000, &tone);
        assert!((f - 1000.0).abs() <= 20.0, "bob hears {f} Hz");

        // Bob -> alice: encrypted by Warden, the tone intact once alice decrypts it.
        let mut heard = Vec::new();
        let mut opened = Vec::new();
        for packet in tone_packets("PCMU", 8000, 0, 0xb0b, 50) {
            bm.rtp.send_to(&packet, warden_at(b_side)).expect("send");
            let (got, _) = recv(&am.rtp);
            assert_eq!(got.len(), packet.len() + suite.rtp_overhead(), "{suite:?}");
            assert_ne!(
                got[12..packet.len()],
                packet[12..],
                "encrypted on alice's leg"
            );
            srtp.unprotect(&got, true, &mut opened)
                .expect("authentic SRTP");
            assert_eq!(opened, packet);
            heard.push(opened.clone());
        }
        let f = heard_frequency("PCMU", 8000, &heard);
        assert!((f - 1000.0).abs() <= 20.0, "alice hears {f} Hz");

        // SRTCP from alice arrives at bob as RTCP.
        let rr = [0x80, 201, 0, 1, 0, 0x0a, 0x11, 0xce];
        srtp.protect(&rr, false, &mut sealed).expect("protect rtcp");
        am.rtcp
            .send_to(&sealed, warden_at(a_side + 1))
            .expect("send");
        assert_eq!(recv(&bm.rtcp).0, rr);

        // What does not authenticate (plain RTP, a replay) never reaches bob.
        bm.rtp
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        am.rtp.send_to(&tone[5], warden_at(a_side)).expect("send");
        am.rtp.send_to(&sealed, warden_at(a_side)).expect("send");
        assert!(
            bm.rtp.recv_from(&mut [0u8; 2048]).is_err(),
            "forged packets dropped"
        );
    }
}

#[test]
fn a_plain_caller_reaches_a_callee_the_dialplan_wants_in_srtp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[[rule]]\nname = \"secure\"\ndo = [{ srtp = \"mandatory\" }, { bridge = \"user:${callee}\" }]\n",
    )
    .expect("plan");
    let (w, range) = warden(10, &format!("[dialplan]\nfile = \"{}\"\n", plan.display()));
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let (am, bm) = (Media::new(), Media::new());
    let bob_key = [0x5a; KEY_AND_SALT];
    let mut offered_keys = Vec::new();
    let (incoming, ok, _, _) = call(
        &mut alice,
        &mut bob,
        &sdp(&audio(am.port(), "sendrecv")),
        |offered| {
            let text = String::from_utf8_lossy(offered.body()).to_string();
            assert!(
                text.contains(" RTP/SAVP 0 101"),
                "bob is offered SRTP: {text}"
            );
            offered_keys = text
                .lines()
                .filter(|l| l.starts_with("a=crypto:"))
                .map(str::to_owned)
                .collect();
            // Bob picks the 32-bit tag suite Warden offered second.
            let mut lines = audio(bm.port(), "sendrecv");
            lines[0] = format!("m=audio {} RTP/SAVP 0 101", bm.port());
            lines.push(crypto_line(2, Suite::AesCm128HmacSha1_32, &bob_key));
            sdp(&lines)
        },
    );
    assert_eq!(offered_keys.len(), 2, "one key per suite: {offered_keys:?}");
    assert!(offered_keys[0].starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
    assert!(offered_keys[1].starts_with("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"));
    let b_side = assert_anchored(incoming.body(), range)[0];
    let a_side = assert_anchored(ok.body(), range)[0];
    let answer = String::from_utf8_lossy(ok.body()).to_string();
    assert!(
        answer.contains(" RTP/AVP 0 101") && !answer.contains("a=crypto"),
        "{answer}"
    );
    let (_, _, wardens_key) = answered_crypto(sdp(&[offered_keys[1].clone()]).as_bytes());
    let mut srtp = party_srtp(Suite::AesCm128HmacSha1_32, bob_key, wardens_key);

    let (mut sealed, mut opened, mut heard) = (Vec::new(), Vec::new(), Vec::new());
    for packet in tone_packets("PCMU", 8000, 0, 0xa, 50) {
        am.rtp.send_to(&packet, warden_at(a_side)).expect("send");
        let (got, _) = recv(&bm.rtp);
        srtp.unprotect(&got, true, &mut opened)
            .expect("authentic SRTP to bob");
        assert_eq!(opened, packet);
        heard.push(opened.clone());
    }
    let f = heard_frequency("PCMU", 8000, &heard);
    assert!((f - 1000.0).abs() <= 20.0, "bob hears {f} Hz");
    for packet in tone_packets("PCMU", 8000, 0, 0xb, 20) {
        srtp.protect(&packet, true, &mut sealed).expect("protect");
        bm.rtp.send_to(&sealed, warden_at(b_side)).expect("send");
        assert_eq!(recv(&am.rtp).0, packet, "alice hears bob in the clear");
    }
}

#[test]
fn an_srtp_caller_hears_warden_s_own_announcement_encrypted() {
    let (w, range, _prompts) = announcing_warden(8000, false);
    let mut alice = Ua::udp("alice", w.port);
    let am = Media::new();
    let alice_key = [0x11; KEY_AND_SALT];
    let offer = sdp(&[
        format!("m=audio {} RTP/SAVP 0", am.port()),
        "a=rtpmap:0 PCMU/8000".into(),
        crypto_line(9, Suite::AesCm128HmacSha1_32, &alice_key),
    ]);
    let invite = alice.invite_sdp("nobody", &offer);
    let progress = announcement(&mut alice);
    let port = assert_anchored(progress.body(), range)[0];
    let answer = String::from_utf8_lossy(progress.body()).to_string();
    assert!(answer.contains("RTP/SAVP 0\r\n"), "{answer}");
    let (tag, suite, wardens_key) = answered_crypto(progress.body());
    assert_eq!((tag, suite.as_str()), (9, "AES_CM_128_HMAC_SHA1_32"));
    let mut srtp = party_srtp(Suite::AesCm128HmacSha1_32, alice_key, wardens_key);
    let (mut opened, mut heard) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let (p, from) = recv(&am.rtp);
        assert_eq!(from, warden_at(port));
        srtp.unprotect(&p, true, &mut opened)
            .expect("the prompt is SRTP");
        heard.push(opened.clone());
    }
    let f = heard_frequency("PCMU", 8000, &heard);
    assert!((f - 1000.0).abs() <= 20.0, "the prompt's tone: {f} Hz");
    let last = alice.final_response();
    assert_eq!(last.status(), 404);
    alice.ack_failure(&invite, &last);
}

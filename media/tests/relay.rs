//! The relay over real loopback sockets: two parties, one stream, packets both ways.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use warden_media::{Latching, Relay, RelayConfig, Remote, Side};

fn relay(first_port: u16, last_port: u16, latching: Latching) -> Relay {
    Relay::start(&RelayConfig {
        address: "127.0.0.1".parse().expect("ip"),
        first_port,
        last_port,
        workers: 2,
        latching,
        coalesce: Duration::from_micros(200),
        codecs: Default::default(),
    })
    .expect("relay starts")
}

fn party() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    s
}

fn rtp(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(0xd5, 160));
    p
}

fn remote(s: &UdpSocket) -> Remote {
    let rtp = s.local_addr().expect("addr");
    Remote {
        rtp,
        rtcp: SocketAddr::new(rtp.ip(), rtp.port() + 1),
        clock_rate: 8000,
    }
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).expect("packet arrives");
    (buf[..n].to_vec(), from)
}

/// A stream opened between two parties on loopback, each side told where its party is.
struct Call {
    id: warden_media::StreamId,
    a_port: u16,
    b_port: u16,
    alice: UdpSocket,
    bob: UdpSocket,
}

fn call(relay: &mut Relay) -> Call {
    let id = relay.open().expect("stream");
    let (a_port, b_port) = (
        relay.port(id, Side::A).expect("a"),
        relay.port(id, Side::B).expect("b"),
    );
    let (alice, bob) = (party(), party());
    relay.set_remote(id, Side::A, Some(remote(&alice)));
    relay.set_remote(id, Side::B, Some(remote(&bob)));
    Call {
        id,
        a_port,
        b_port,
        alice,
        bob,
    }
}

#[test]
fn relays_both_ways_intact_and_counts() {
    let mut relay = relay(31000, 31099, Latching::Strict);
    let id = relay.open().expect("stream");
    let (a_port, b_port) = (
        relay.port(id, Side::A).expect("a"),
        relay.port(id, Side::B).expect("b"),
    );
    assert_eq!((a_port % 2, b_port % 2), (0, 0));
    let (alice, bob) = (party(), party());
    relay.set_remote(id, Side::A, Some(remote(&alice)));
    relay.set_remote(id, Side::B, Some(remote(&bob)));
    relay.sync();
    for seq in 0..10u16 {
        if seq == 4 {
            continue; // one lost packet
        }
        let p = rtp(seq, u32::from(seq) * 160, 7);
        alice.send_to(&p, ("127.0.0.1", a_port)).expect("send");
        let (got, from) = recv(&bob);
        assert_eq!(got, p, "packet {seq} intact");
        assert_eq!(from.port(), b_port, "leaves from the B-side port");
    }
    let back = rtp(1, 160, 9);
    bob.send_to(&back, ("127.0.0.1", b_port)).expect("send");
    assert_eq!(
        recv(&alice),
        (back, SocketAddr::from(([127, 0, 0, 1], a_port)))
    );
    relay.sync();
    let stats = relay.stats(id).expect("stats");
    assert_eq!(
        (stats.a.rtp_packets, stats.a.lost, stats.b.rtp_packets),
        (9, 1, 1)
    );
    assert_eq!(stats.a.rtp_bytes, 9 * 172);
    relay.close(id);
    assert_eq!(relay.available(), 50);
}

#[test]
fn latches_to_the_real_source_and_ignores_strangers() {
    let mut relay = relay(31100, 31199, Latching::Strict);
    let id = relay.open().expect("stream");
    let (a_port, b_port) = (
        relay.port(id, Side::A).expect("a"),
        relay.port(id, Side::B).expect("b"),
    );
    let (alice_sdp, alice_nat, bob, stranger) = (party(), party(), party(), party());
    relay.set_remote(id, Side::A, Some(remote(&alice_sdp)));
    relay.set_remote(id, Side::B, Some(remote(&bob)));
    relay.sync();
    // Alice's packets come from a NAT-mapped port, not the one in her SDP.
    alice_nat
        .send_to(&rtp(1, 0, 1), ("127.0.0.1", a_port))
        .expect("send");
    recv(&bob);
    stranger
        .send_to(&rtp(99, 0, 66), ("127.0.0.1", a_port))
        .expect("send");
    bob.send_to(&rtp(1, 0, 2), ("127.0.0.1", b_port))
        .expect("send");
    // Bob's answer goes to where Alice really is, and the stranger got nowhere.
    let (got, _) = recv(&alice_nat);
    assert_eq!(&got[2..4], &1u16.to_be_bytes());
    alice_nat
        .send_to(&rtp(2, 160, 1), ("127.0.0.1", a_port))
        .expect("send");
    let (got, _) = recv(&bob);
    assert_eq!(
        &got[2..4],
        &2u16.to_be_bytes(),
        "the stranger's packet was not relayed"
    );
}

#[test]
fn rtcp_goes_port_plus_one_to_port_plus_one() {
    let mut relay = relay(31200, 31299, Latching::Strict);
    let id = relay.open().expect("stream");
    let a_port = relay.port(id, Side::A).expect("a");
    let (alice, bob_rtp) = (party(), party());
    let bob_rtcp = UdpSocket::bind(("127.0.0.1", bob_rtp.local_addr().expect("a").port() + 1));
    let Ok(bob_rtcp) = bob_rtcp else { return }; // port above taken: nothing to check here
    bob_rtcp
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    relay.set_remote(id, Side::A, Some(remote(&alice)));
    relay.set_remote(id, Side::B, Some(remote(&bob_rtp)));
    relay.sync();
    let rr = [
        0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 10, 0, 0, 3, 0, 0, 0, 9, 0, 0, 0, 4, 0, 0, 0, 0,
        0, 0, 0, 0,
    ];
    alice.send_to(&rr, ("127.0.0.1", a_port + 1)).expect("send");
    assert_eq!(recv(&bob_rtcp).0, rr.to_vec());
    relay.sync();
    let stats = relay.stats(id).expect("stats");
    assert_eq!(
        (
            stats.a.rtcp_packets,
            stats.a.reported_fraction_lost,
            stats.a.reported_lost
        ),
        (1, 10, 3)
    );
}

#[test]
fn exhausted_pool_is_an_error_and_recovers() {
    let mut relay = relay(31300, 31303, Latching::Strict);
    let id = relay.open().expect("two pairs: one stream");
    assert!(matches!(
        relay.open(),
        Err(warden_media::MediaError::Exhausted(_))
    ));
    relay.close(id);
    let mut id = relay.open().expect("ports came back");
    // Reopened the moment it closes, the worker not yet told: the pairs are parked on that
    // worker, whose commands run in order (a call hung up and the next one arriving at
    // once, with the pool full).
    for _ in 0..200 {
        relay.close(id);
        id = relay.open().expect("the closed stream's ports");
    }
}

#[test]
fn ports_stay_bound_between_calls_and_drop_what_arrives_meanwhile() {
    // Two pairs: every stream has the same ports, bound once.
    let mut relay = relay(31800, 31803, Latching::Strict);
    let first = relay.open().expect("stream");
    let ports = |relay: &Relay, id| [Side::A, Side::B].map(|side| relay.port(id, side));
    let first_ports = ports(&relay, first);
    relay.close(first);
    relay.sync();
    assert_eq!(relay.totals().parked_pairs, 2);
    // A late packet of the ended call reaches the parked port: drained and counted.
    let late = party();
    let a_port = first_ports[0].expect("a");
    late.send_to(&rtp(1, 160, 7), ("127.0.0.1", a_port))
        .expect("send");
    for _ in 0..100 {
        relay.sync();
        if relay.totals().unassigned == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(relay.totals().unassigned, 1);
    // Calls one after another get the parked pairs (binding them again would fail: they
    // are still bound).
    for _ in 0..100 {
        let id = relay.open().expect("stream");
        let mut got = ports(&relay, id);
        got.sort();
        let mut want = first_ports;
        want.sort();
        assert_eq!(got, want);
        relay.close(id);
    }
    relay.sync();
    assert_eq!(relay.totals().parked_pairs, 2);
    // And the reused ports still relay: a new stream on them carries packets both ways.
    let Call {
        id: _,
        a_port,
        b_port,
        alice,
        bob,
    } = call(&mut relay);
    alice
        .send_to(&rtp(1, 160, 1), ("127.0.0.1", a_port))
        .expect("send");
    assert_eq!(recv(&bob).0, rtp(1, 160, 1));
    bob.send_to(&rtp(9, 160, 2), ("127.0.0.1", b_port))
        .expect("send");
    assert_eq!(recv(&alice).0, rtp(9, 160, 2));
}

#[test]
fn a_packet_that_beats_its_streams_wake_up_is_relayed() {
    // Two pairs: the second stream takes the first one's parked sockets.
    let mut relay = relay(31900, 31903, Latching::Strict);
    relay.batch_wakes();
    let first = relay.open().expect("stream");
    relay.close(first);
    relay.flush();
    relay.sync();
    assert_eq!(relay.totals().parked_pairs, 2);
    // The next stream's commands are queued with no wake-up yet (the signalling loop sends
    // it at the end of its turn): a packet that comes first still reaches the other side.
    let Call {
        a_port, alice, bob, ..
    } = call(&mut relay);
    alice
        .send_to(&rtp(1, 160, 1), ("127.0.0.1", a_port))
        .expect("send");
    assert_eq!(recv(&bob).0, rtp(1, 160, 1));
    relay.flush();
    relay.sync();
    assert_eq!(relay.totals().unassigned, 0);
}

#[test]
fn transcodes_between_legs_that_share_no_codec() {
    use warden_media::codec;
    use warden_media::{LegCodec, Transcoding};
    let mut relay = relay(31400, 31499, Latching::Strict);
    let Call {
        id,
        a_port,
        b_port,
        alice,
        bob,
    } = call(&mut relay);
    let leg = |name, pt| LegCodec {
        codec: codec::by_name(name, 8000).expect("codec"),
        payload_type: pt,
        params: Default::default(),
        ptime: 20,
        dtmf_payload_type: None,
        cn_payload_type: None,
    };
    relay.set_transcoding(
        id,
        Some(Transcoding {
            a: leg("G722", 9),
            b: leg("PCMA", 8),
        }),
    );
    relay.sync();
    // Alice sends one second of a 1 kHz tone in G.722; Bob must get PCMA carrying it.
    let mut encoder = codec::by_name("G722", 8000).expect("g722").encoder();
    let mut decoder = codec::by_name("PCMA", 8000).expect("pcma").decoder();
    let mut heard = Vec::new();
    for i in 0..50u32 {
        let frame: Vec<i16> = (0..320)
            .map(|n| {
                (12000.0
                    * (2.0 * std::f64::consts::PI * 1000.0 * f64::from(i * 320 + n) / 16000.0)
                        .sin()) as i16
            })
            .collect();
        let mut payload = Vec::new();
        encoder.encode(&frame, &mut payload);
        let mut packet = rtp(i as u16, i * 160, 5)[..12].to_vec();
        packet[1] = 9;
        packet.extend_from_slice(&payload);
        alice.send_to(&packet, ("127.0.0.1", a_port)).expect("send");
        let (got, from) = recv(&bob);
        assert_eq!(from.port(), b_port);
        assert_eq!(got[1] & 0x7f, 8, "PCMA payload type");
        assert_eq!(got.len(), 12 + 160);
        decoder.decode(&got[12..], &mut heard);
    }
    let rising = heard[800..]
        .windows(2)
        .filter(|w| w[0] < 0 && w[1] >= 0)
        .count();
    let freq = rising as f64 * 8000.0 / heard[800..].len() as f64;
    assert!(
        (freq - 1000.0).abs() < 20.0,
        "Bob hears the tone: {freq} Hz"
    );
}

#[test]
fn plays_a_prompt_paced_at_20_ms_and_reports_the_end() {
    use std::sync::{Arc, Mutex};
    use warden_media::{MediaEvent, codec, prompt};
    let mut relay = relay(31500, 31599, Latching::Strict);
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    relay.set_event_sink(Arc::new(move |e| {
        let _ = tx.lock().map(|t| t.send(e));
    }));
    let id = relay.open().expect("stream");
    let a_port = relay.port(id, Side::A).expect("a");
    let (alice, bob) = (party(), party());
    relay.set_remote(id, Side::A, Some(remote(&alice)));
    relay.set_remote(id, Side::B, Some(remote(&bob)));
    let pcma = codec::by_name("PCMA", 8000).expect("pcma");
    let audio = prompt::Audio {
        rate: 8000,
        samples: vec![1000; 8000],
    }; // one second
    let encoded = Arc::new(prompt::encode(&audio, pcma, &Default::default()).expect("encodes"));
    let started = std::time::Instant::now();
    let how = warden_media::Playback {
        payload_type: 8,
        repeat: 0,
        stop_on_dtmf: false,
    };
    relay.play(id, Side::A, encoded, how);
    let mut seqs = Vec::new();
    for i in 0..50 {
        let (p, from) = recv(&alice);
        assert_eq!(from.port(), a_port, "from Warden's A-side port");
        assert_eq!(
            p[1],
            if i == 0 { 0x80 | 8 } else { 8 },
            "PCMA, marker on the first"
        );
        assert_eq!(p.len(), 172);
        seqs.push(u16::from_be_bytes([p[2], p[3]]));
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
    // Paced by a clock: 50 frames cannot arrive faster than about a second.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let event = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("end reported");
    assert_eq!(
        event,
        MediaEvent::PlaybackDone {
            stream: id,
            side: Side::A
        }
    );
}

#[test]
fn dtmf_is_reported_toward_a_side_without_events_and_written_into_the_relayed_stream() {
    use std::sync::{Arc, Mutex};
    use warden_media::MediaEvent;
    use warden_media::dtmf::{Digit, Event};
    let mut relay = relay(31600, 31699, Latching::Strict);
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    relay.set_event_sink(Arc::new(move |e| {
        let _ = tx.lock().map(|t| t.send(e));
    }));
    let Call {
        id,
        a_port,
        b_port,
        alice,
        bob,
    } = call(&mut relay);
    // Alice uses telephone-event 101; bob takes key presses some other way (SIP INFO).
    relay.set_dtmf(id, [Some((101, 8000)), None]);
    relay.sync();

    // Alice's "7", held 100 ms: start, update, three ends. Bob gets none of it; the owner
    // hears of it once.
    let audio = rtp(1, 160, 0xa);
    alice.send_to(&audio, ("127.0.0.1", a_port)).expect("send");
    assert_eq!(recv(&bob).0, audio, "audio still flows");
    for (seq, duration, end) in [
        (2u16, 0u16, false),
        (3, 400, false),
        (4, 800, true),
        (5, 800, true),
        (6, 800, true),
    ] {
        let mut p = rtp(seq, 320, 0xa);
        p[1] = 101;
        p.truncate(12);
        p.extend_from_slice(
            &Event {
                code: 7,
                end,
                volume: 10,
                duration,
            }
            .write(),
        );
        alice.send_to(&p, ("127.0.0.1", a_port)).expect("send");
    }
    let event = rx.recv_timeout(Duration::from_secs(2)).expect("reported");
    assert_eq!(
        event,
        MediaEvent::Dtmf {
            stream: id,
            side: Side::A,
            digit: Digit {
                key: '7',
                duration: Duration::from_millis(100)
            }
        }
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "reported once"
    );
    let after = rtp(7, 480, 0xa);
    alice.send_to(&after, ("127.0.0.1", a_port)).expect("send");
    assert_eq!(recv(&bob).0, after, "the events were not relayed to bob");

    // The other way: bob pressed '#' (say by SIP INFO); alice gets RFC 4733 events in the
    // stream she receives from bob: his SSRC, his next sequence numbers.
    bob.send_to(&rtp(500, 8000, 0xb), ("127.0.0.1", b_port))
        .expect("send");
    recv(&alice);
    relay.send_dtmf(id, Side::A, '#', Duration::from_millis(100));
    let mut events = Vec::new();
    // 100 ms: the start, an update at 50 ms, the end three times.
    while events.len() < 5 {
        let (p, _) = recv(&alice);
        assert_eq!(p[1] & 0x7f, 101, "alice's telephone-event type");
        assert_eq!(&p[8..12], &0xbu32.to_be_bytes(), "bob's SSRC");
        events.push((
            u16::from_be_bytes([p[2], p[3]]),
            p[1] & 0x80 != 0,
            Event::parse(&p[12..]).expect("event"),
        ));
    }
    let seqs: Vec<u16> = events.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (501..506).collect::<Vec<u16>>(),
        "continuing bob's numbering"
    );
    assert!(
        events[0].1 && events.iter().skip(1).all(|e| !e.1),
        "marker on the first only"
    );
    assert!(events.iter().all(|e| e.2.code == 11));
    assert_eq!(
        events.iter().filter(|e| e.2.end).count(),
        3,
        "three end packets"
    );
    assert_eq!(events[4].2.duration, 800, "100 ms at 8 kHz");
    // Bob's next packet is renumbered after the events.
    bob.send_to(&rtp(501, 8160, 0xb), ("127.0.0.1", b_port))
        .expect("send");
    let (p, _) = recv(&alice);
    assert_eq!(u16::from_be_bytes([p[2], p[3]]), 506);
}

#[test]
fn a_key_press_stops_a_prompt_that_allows_barge_in() {
    use std::sync::{Arc, Mutex};
    use warden_media::dtmf::Event;
    use warden_media::{MediaEvent, Playback, codec, prompt};
    let mut relay = relay(31700, 31799, Latching::Strict);
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    relay.set_event_sink(Arc::new(move |e| {
        let _ = tx.lock().map(|t| t.send(e));
    }));
    let id = relay.open().expect("stream");
    let a_port = relay.port(id, Side::A).expect("a");
    let alice = party();
    relay.set_remote(id, Side::A, Some(remote(&alice)));
    // An IVR: nobody on side B yet, alice's events are Warden's to hear.
    relay.set_dtmf(id, [Some((101, 8000)), None]);
    let pcma = codec::by_name("PCMA", 8000).expect("pcma");
    let ten_seconds = prompt::Audio {
        rate: 8000,
        samples: vec![1000; 80_000],
    };
    let encoded =
        Arc::new(prompt::encode(&ten_seconds, pcma, &Default::default()).expect("encodes"));
    let how = Playback {
        payload_type: 8,
        repeat: 0,
        stop_on_dtmf: true,
    };
    relay.play(id, Side::A, encoded, how);
    for _ in 0..5 {
        recv(&alice); // the menu is playing
    }
    let mut press = rtp(1, 800, 0xa);
    press[1] = 0x80 | 101;
    press.truncate(12);
    press.extend_from_slice(
        &Event {
            code: 2,
            end: true,
            volume: 10,
            duration: 800,
        }
        .write(),
    );
    alice.send_to(&press, ("127.0.0.1", a_port)).expect("send");
    let first = rx.recv_timeout(Duration::from_secs(2)).expect("event");
    let second = rx.recv_timeout(Duration::from_secs(2)).expect("event");
    assert!(
        matches!(first, MediaEvent::Dtmf { digit, .. } if digit.key == '2'),
        "{first:?}"
    );
    assert_eq!(
        second,
        MediaEvent::PlaybackDone {
            stream: id,
            side: Side::A
        }
    );
    // The prompt stopped: in the next 400 ms (20 frames had it gone on) at most what was
    // already on its way arrives.
    alice
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    let until = std::time::Instant::now() + Duration::from_millis(400);
    let mut after = 0;
    while std::time::Instant::now() < until {
        if alice.recv_from(&mut buf).is_ok() {
            after += 1;
        }
    }
    assert!(after <= 2, "{after} prompt packets after barge-in");
}

//! End-to-end calls through a real Warden process over real UDP and TCP sockets on loopback.

mod common;

use std::time::Duration;

use common::{Ua, Warden, establish, hang_up, metric};
use warden::sip::message::{Message, Response};

#[test]
fn udp_call_register_ring_answer_and_caller_hangs_up() {
    let w = Warden::start();
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let (mut ad, _bd) = establish(&w, &mut alice, &mut bob);
    hang_up(&mut alice, &mut ad, &mut bob);
}

#[test]
fn tcp_call_and_callee_hangs_up() {
    let w = Warden::start();
    let (mut alice, mut bob) = (Ua::tcp("alice", w.port), Ua::tcp("bob", w.port));
    let (_ad, mut bd) = establish(&w, &mut alice, &mut bob);
    hang_up(&mut bob, &mut bd, &mut alice);
}

#[test]
fn mixed_transports_udp_caller_tcp_callee() {
    let w = Warden::start();
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::tcp("bob", w.port));
    let (mut ad, _) = establish(&w, &mut alice, &mut bob);
    hang_up(&mut alice, &mut ad, &mut bob);
}

#[test]
fn caller_cancels_while_ringing_gets_487_and_callee_gets_cancel() {
    let w = Warden::start();
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    bob.register(600);
    let invite = alice.invite("bob");
    let incoming = bob.recv_request("INVITE");
    bob.answer(&incoming, 180, false);
    assert_eq!(alice.recv_response().status(), 180);
    alice.cancel(&invite);
    // Alice sees 200 for the CANCEL and 487 for the INVITE, in either order.
    let mut codes = vec![
        alice.recv_response().status(),
        alice.recv_response().status(),
    ];
    codes.sort();
    assert_eq!(codes, vec![200, 487]);
    let cancel = bob.recv_request("CANCEL");
    bob.ok(&cancel);
    bob.answer(&incoming, 487, false);
    // Warden ACKs the 487 inside the transaction.
    let ack = bob.recv_request("ACK");
    assert_eq!(ack.cseq().map(|c| c.seq), incoming.cseq().map(|c| c.seq));
}

#[test]
fn busy_and_decline_are_relayed() {
    let w = Warden::start();
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    bob.register(600);
    for code in [486u16, 603] {
        alice.invite("bob");
        let incoming = bob.recv_request("INVITE");
        bob.answer(&incoming, code, false);
        assert_eq!(bob.recv_request("ACK").method().as_str(), "ACK");
        let resp = alice.recv_response();
        assert_eq!(resp.status(), code);
    }
}

#[test]
fn unknown_user_404_and_registered_but_gone_480() {
    let w = Warden::start();
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    alice.invite("nobody");
    assert_eq!(alice.recv_response().status(), 404);
    assert_eq!(bob.register(600).status(), 200);
    assert_eq!(bob.register(0).status(), 200);
    alice.invite("bob");
    assert_eq!(alice.recv_response().status(), 480);
}

#[test]
fn reinvite_and_info_are_relayed_inside_the_dialog() {
    let w = Warden::start();
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let (mut ad, _bd) = establish(&w, &mut alice, &mut bob);
    let hold = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=sendonly\r\n";
    alice.in_dialog(&mut ad, "INVITE", Some(hold));
    let reinvite = bob.recv_request("INVITE");
    assert!(String::from_utf8_lossy(reinvite.body()).contains("a=sendonly"));
    assert!(reinvite.to_tag().is_some(), "in-dialog on the B side");
    bob.answer(&reinvite, 200, true);
    let ok = alice.recv_response();
    assert_eq!(ok.status(), 200);
    alice.in_dialog(&mut ad, "ACK", None);
    let ack = bob.recv_request("ACK");
    assert_eq!(ack.cseq().map(|c| c.seq), reinvite.cseq().map(|c| c.seq));
    alice.in_dialog(&mut ad, "INFO", None);
    let info = bob.recv_request("INFO");
    bob.ok(&info);
    assert_eq!(alice.recv_response().status(), 200);
}

#[test]
fn options_answered_and_max_forwards_zero_refused() {
    let w = Warden::start();
    let mut ua = Ua::udp("alice", w.port);
    let opts = ua.options();
    ua.send_raw(&opts);
    let resp = ua.recv_response();
    assert_eq!(resp.status(), 200);
    assert!(resp.header("Allow").unwrap().contains("INVITE"));
    let via = resp.top_via().unwrap();
    assert_eq!(
        via.rport,
        Some(Some(ua.local.port())),
        "RFC 3581 rport filled in"
    );
    let zero = ua
        .options()
        .replace("Max-Forwards: 70", "Max-Forwards: 0")
        .replace("OPTIONS sip", "INVITE sip")
        .replace("1 OPTIONS", "1 INVITE");
    ua.send_raw(&zero);
    assert_eq!(ua.recv_response().status(), 483);
    let unknown = ua
        .options()
        .replace("OPTIONS sip", "FROB sip")
        .replace("1 OPTIONS", "1 FROB");
    ua.send_raw(&unknown);
    let resp = ua.recv_response();
    assert_eq!(resp.status(), 501);
    assert!(resp.header("Allow").is_some());
    let subscribe = ua
        .options()
        .replace("OPTIONS sip", "SUBSCRIBE sip")
        .replace("1 OPTIONS", "1 SUBSCRIBE");
    ua.send_raw(&subscribe);
    assert_eq!(ua.recv_response().status(), 405);
}

#[test]
fn bindings_survive_a_restart() {
    let mut w = Warden::start();
    let mut bob = Ua::udp("bob", w.port);
    assert_eq!(bob.register(600).status(), 200);
    std::thread::sleep(Duration::from_millis(300)); // the store writes off the signalling path
    w.restart();
    let mut alice = Ua::udp("alice", w.port);
    alice.invite("bob");
    let incoming = bob.recv_request("INVITE");
    bob.answer(&incoming, 486, false);
    assert_eq!(alice.recv_response().status(), 486);
}

#[test]
fn malformed_request_gets_400_with_warning_and_server_keeps_serving() {
    let w = Warden::start();
    let mut ua = Ua::udp("alice", w.port);
    let bad = ua
        .options()
        .replace("CSeq: 1 OPTIONS", "CSeq: 99999999999999 OPTIONS");
    ua.send_raw(&bad);
    let resp = ua.recv_response();
    assert_eq!(resp.status(), 400);
    let warning = resp.header("Warning").expect("Warning explains the 400");
    assert!(warning.contains("CSeq"), "{warning}");
    // Garbage gets no answer and changes nothing.
    ua.send_raw("\u{1}\u{2}garbage\r\n\r\n");
    assert!(ua.try_recv(Duration::from_millis(300)).is_none());
    // The next call still works.
    let mut bob = Ua::udp("bob", w.port);
    let (mut ad, _) = establish(&w, &mut ua, &mut bob);
    hang_up(&mut ua, &mut ad, &mut bob);
}

/// The next response `ua` gets, within a second, or a failure naming `what`.
fn answer_to(ua: &mut Ua, what: &str) -> Response {
    match ua.try_recv(Duration::from_secs(1)) {
        Some(Message::Response(r)) => r,
        other => panic!("{what}: no response ({other:?})"),
    }
}

#[test]
fn unparseable_requests_whose_headers_can_be_read_get_400_naming_the_fault() {
    let w = Warden::start();
    let mut ua = Ua::udp("alice", w.port);
    let options = ua.options();
    // RFC 3261 18.3: a datagram shorter than its Content-Length.
    ua.send_raw(&options.replace(
        "Content-Length: 0\r\n\r\n",
        "Content-Length: 400\r\n\r\nv=0\r\n",
    ));
    let short = answer_to(&mut ua, "Content-Length past the datagram");
    assert_eq!(
        (short.status(), short.reason().as_str()),
        (400, "Content-Length exceeds the octets present")
    );
    assert!(
        short
            .header("Warning")
            .is_some_and(|w| w.contains("Content-Length"))
    );
    let call_id = short.call_id().expect("Call-ID copied");
    assert!(
        options.contains(&format!("Call-ID: {call_id}\r\n")),
        "the request's own"
    );
    // A Request-URI port that is not a number.
    let port = format!("sip:warden@127.0.0.1:{}", w.port);
    ua.send_raw(&ua.options().replacen(&port, "sip:warden@127.0.0.1:50a0", 1));
    let bad_port = answer_to(&mut ua, "a non-numeric port");
    assert_eq!(bad_port.status(), 400);
    assert!(bad_port.reason().contains("port"), "{}", bad_port.reason());
    // A parameter repeated with two values is ambiguous: refused, and named.
    ua.send_raw(
        &ua.options()
            .replacen(&port, &format!("{port};transport=udp;transport=tcp"), 1),
    );
    let twice = answer_to(&mut ua, "a parameter with two values");
    assert_eq!(twice.status(), 400);
    assert!(twice.reason().contains("transport"), "{}", twice.reason());
    // No Call-ID as well: nothing to answer; dropped, logged once, counted by reason.
    for _ in 0..3 {
        let headless = ua.options().replacen(&port, "sip:warden@127.0.0.1:50a0", 1);
        let headless: String = headless
            .lines()
            .filter(|l| !l.starts_with("Call-ID"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        ua.send_raw(&headless);
        assert!(ua.try_recv(Duration::from_millis(200)).is_none());
    }
    let dropped = metric(
        &w,
        "warden_sip_malformed_total",
        Some(("handling", "dropped")),
    )
    .unwrap_or(0.0);
    assert_eq!(dropped, 3.0);
    assert_eq!(
        metric(
            &w,
            "warden_sip_malformed_total",
            Some(("reason", "request_uri"))
        )
        .map(|v| v >= 2.0),
        Some(true)
    );
    assert_eq!(
        w.log().matches("cannot be answered").count(),
        1,
        "{}",
        w.log()
    );
    // And the server keeps serving.
    ua.send_raw(&ua.options());
    assert_eq!(answer_to(&mut ua, "a good OPTIONS").status(), 200);
}

#[test]
fn a_repeated_identical_uri_parameter_is_accepted_and_a_bad_request_on_tcp_keeps_the_connection() {
    let w = Warden::start();
    let (mut alice, mut bob) = (Ua::tcp("alice", w.port), Ua::tcp("bob", w.port));
    assert_eq!(bob.register(600).status(), 200);
    // What baresip 1.0 sends over TCP when the account and the dialled URI name the transport.
    let uri = format!("sip:bob@127.0.0.1:{};transport=tcp;transport=tcp", w.port);
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    alice.invite_uri(&uri, "bob", sdp, "");
    let incoming = bob.recv_request("INVITE");
    bob.answer(&incoming, 486, false);
    assert_eq!(alice.final_response().status(), 486);
    // On the same connection: a request with a broken Request-URI is answered, and the
    // connection still carries the next one.
    let port = format!("sip:warden@127.0.0.1:{}", w.port);
    alice.send_raw(
        &alice
            .options()
            .replacen(&port, "sip:warden@127.0.0.1:50a0", 1),
    );
    assert_eq!(answer_to(&mut alice, "a bad port over TCP").status(), 400);
    alice.send_raw(&alice.options());
    assert_eq!(
        answer_to(&mut alice, "the next OPTIONS over TCP").status(),
        200
    );
}

#[test]
fn digest_auth_challenges_and_accepts_md5_and_sha256() {
    use warden::registrar::digest::{Algorithm, answer};
    let w = Warden::start_with(
        "[registrar]\nauth = true\ndigest_algorithms = [\"MD5\", \"SHA-256\"]\n[[registrar.users]]\nusername = \"bob\"\npassword = \"s3cret\"\n",
    );
    for (alg, password, expected) in [
        (Algorithm::Md5, "s3cret", 200),
        (Algorithm::Sha256, "s3cret", 200),
        (Algorithm::Md5, "wrong", 401),
    ] {
        let mut bob = Ua::udp("bob", w.port);
        let challenge = bob.register(600);
        assert_eq!(challenge.status(), 401);
        let nonce = nonce_for(&challenge, alg);
        let auth = answer(
            &nonce,
            "warden",
            alg,
            "bob",
            password,
            "REGISTER",
            "sip:127.0.0.1",
        );
        assert_eq!(
            bob.register_with(600, Some(&auth)).status(),
            expected,
            "{alg:?} {password}"
        );
        if expected == 200 {
            // The same credentials once more (a captured REGISTER replayed): refused with
            // a fresh challenge, not a stale one.
            let replayed = bob.register_with(600, Some(&auth));
            assert_eq!(replayed.status(), 401, "{alg:?} replay");
            assert!(
                replayed
                    .headers("WWW-Authenticate")
                    .iter()
                    .all(|h| !h.contains("stale=true"))
            );
        }
    }
    assert!(w.log().contains("replayed nonce count"), "the log says why");
}

/// The nonce of `challenge`'s `WWW-Authenticate` for `alg`.
fn nonce_for(challenge: &Response, alg: warden::registrar::digest::Algorithm) -> String {
    let www = challenge
        .headers("WWW-Authenticate")
        .into_iter()
        .find(|h| h.contains(alg.name()))
        .expect("challenge for the algorithm");
    let nonce = www.split("nonce=\"").nth(1).expect("nonce");
    nonce.split('"').next().expect("nonce").to_owned()
}

/// `user`'s REGISTER answering `challenge` with `alg` and `password`.
fn digest_register(
    ua: &mut Ua,
    challenge: &Response,
    alg: warden::registrar::digest::Algorithm,
    password: &str,
) -> Response {
    let nonce = nonce_for(challenge, alg);
    let user = ua.user.clone();
    let auth = warden::registrar::digest::answer(
        &nonce,
        "warden",
        alg,
        &user,
        password,
        "REGISTER",
        "sip:127.0.0.1",
    );
    ua.register_with(600, Some(&auth))
}

#[test]
fn md5_alone_is_challenged_by_default_and_the_order_is_the_operators() {
    use warden::registrar::digest::Algorithm;
    let users = "[[registrar.users]]\nusername = \"bob\"\npassword = \"s3cret\"\n";
    let offered = |algorithms: &str| {
        let w = Warden::start_with(&format!("[registrar]\nauth = true\n{algorithms}{users}"));
        let challenge = Ua::udp("bob", w.port).register(600);
        challenge
            .headers("WWW-Authenticate")
            .iter()
            .map(|h| {
                h.split("algorithm=")
                    .nth(1)
                    .unwrap_or_default()
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(offered(""), ["MD5"], "the default baresip 1.0 can answer");
    assert_eq!(
        offered("digest_algorithms = [\"SHA-256\", \"MD5\"]\n"),
        ["SHA-256", "MD5"]
    );

    // An operator whose phones all do SHA-256 offers only it: MD5 answers are refused.
    let w = Warden::start_with(&format!(
        "[registrar]\nauth = true\ndigest_algorithms = [\"SHA-256\"]\n{users}"
    ));
    let mut bob = Ua::udp("bob", w.port);
    let challenge = bob.register(600);
    let offered = challenge.headers("WWW-Authenticate");
    assert_eq!(offered.len(), 1, "{offered:?}");
    let nonce = nonce_for(&challenge, Algorithm::Sha256);
    let md5 = warden::registrar::digest::answer(
        &nonce,
        "warden",
        Algorithm::Md5,
        "bob",
        "s3cret",
        "REGISTER",
        "sip:127.0.0.1",
    );
    assert_eq!(bob.register_with(600, Some(&md5)).status(), 401);
    let challenge = bob.register(600);
    assert_eq!(
        digest_register(&mut bob, &challenge, Algorithm::Sha256, "s3cret").status(),
        200
    );
}

#[test]
fn the_registrars_answers_carry_the_operators_reason_phrases() {
    use warden::registrar::digest::Algorithm;
    let w = Warden::start_with(
        "[sip.reason_phrases]\n200 = \"Vybavené OK\"\n401 = \"Neautorizované\"\n\
         [registrar]\nauth = true\n[[registrar.users]]\nusername = \"bob\"\npassword = \"s3cret\"\n",
    );
    let mut bob = Ua::udp("bob", w.port);
    let challenge = bob.register(600);
    assert_eq!(
        (challenge.status(), challenge.reason().as_str()),
        (401, "Neautorizované")
    );
    let ok = digest_register(&mut bob, &challenge, Algorithm::Md5, "s3cret");
    assert_eq!((ok.status(), ok.reason().as_str()), (200, "Vybavené OK"));
    bob.send_raw(&bob.options());
    let Message::Response(options) = bob.recv() else {
        panic!("OPTIONS answered with a request")
    };
    assert_eq!(
        (options.status(), options.reason().as_str()),
        (200, "Vybavené OK")
    );
}

#[test]
fn ipv6_register_and_call_between_ipv4_and_ipv6_phones() {
    let w = Warden::start_dual_stack();
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp6("bob", w.port));
    let (mut ad, _) = establish(&w, &mut alice, &mut bob);
    hang_up(&mut alice, &mut ad, &mut bob);
}

#[test]
fn too_many_headers_is_refused_and_the_server_keeps_serving() {
    let w = Warden::start();
    let mut ua = Ua::udp("alice", w.port);
    let extra: String = (0..200).map(|i| format!("X-Pad-{i}: {i}\r\n")).collect();
    let flood = ua
        .options()
        .replace("Content-Length: 0", &format!("{extra}Content-Length: 0"));
    ua.send_raw(&flood);
    let refused = answer_to(&mut ua, "over the header limit");
    assert_eq!(refused.status(), 400, "over the header limit: refused");
    assert!(
        refused.reason().contains("Header count"),
        "{}",
        refused.reason()
    );
    let opts = ua.options();
    ua.send_raw(&opts);
    assert_eq!(ua.recv_response().status(), 200);
}

#[test]
fn tcp_crlf_keepalive_ping_gets_a_pong() {
    use std::io::{Read, Write};
    let w = Warden::start();
    let mut conn = std::net::TcpStream::connect(w.addr()).unwrap();
    conn.write_all(b"\r\n\r\n").unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut pong = [0u8; 2];
    conn.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n", "RFC 5626 pong");
}

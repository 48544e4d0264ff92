//! Facing untrusted sources: digest authentication of INVITEs, users kept in the database,
//! bans after failed authentication and after floods, scanners, calls per source, and the
//! counters in /metrics. Warden runs as a process; the sources are UAs on other loopback addresses.

mod common;

use std::time::Duration;

use common::{Ua, Warden, metric, nonce_of};
use warden::registrar::digest::{Algorithm, answer};
use warden::sip::message::Message;

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// Only 127.0.0.1 is trusted (and exempt from the guard); alice is a user; `guard` adds
/// settings to `[guard]`.
fn untrusting(register_auth: bool, guard: &str) -> Warden {
    Warden::start_with(&format!(
        "[calls]\ntrusted = [\"127.0.0.1/32\"]\n\
         [registrar]\nauth = {register_auth}\ndigest_algorithms = [\"MD5\", \"SHA-256\"]\n\
         [[registrar.users]]\nusername = \"alice\"\npassword = \"wonderland\"\n\
         [guard]\nexempt = [\"127.0.0.1/32\"]\n{guard}"
    ))
}

/// The status of the next response `ua` gets, provisional or final.
fn first_answer(ua: &mut Ua) -> u16 {
    match ua.recv() {
        Message::Response(r) => r.status(),
        Message::Request(r) => panic!("expected a response, got {}", r.method()),
    }
}

/// Whether an OPTIONS from `ua` (with `extra` header lines) is answered.
fn answered(ua: &mut Ua, extra: &str) -> bool {
    let options = ua
        .options()
        .replace("Content-Length: 0", &format!("{extra}Content-Length: 0"));
    ua.send_raw(&options);
    ua.try_recv(Duration::from_millis(300)).is_some()
}

#[test]
fn an_untrusted_caller_proves_who_it_is_before_its_call_goes_on() {
    let w = untrusting(false, "");
    let mut bob = Ua::udp("bob", w.port);
    assert_eq!(bob.register(600).status(), 200);
    let mut alice = Ua::udp_from("alice", w.port, "127.0.0.2");
    let uri = format!("sip:bob@127.0.0.1:{}", w.port);

    let invite = alice.invite_sdp("bob", SDP);
    let challenge = alice.recv_response();
    assert_eq!(challenge.status(), 407, "no credentials: challenged");
    alice.ack_failure(&invite, &challenge);
    let nonce = nonce_of(&challenge, "Proxy-Authenticate", Algorithm::Sha256);

    // The wrong password, then the right one as somebody else: refused.
    let wrong = answer(
        &nonce,
        "warden",
        Algorithm::Sha256,
        "alice",
        "nope",
        "INVITE",
        &uri,
    );
    let invite = alice.invite_with("bob", SDP, &format!("Proxy-Authorization: {wrong}\r\n"));
    let refused = alice.recv_response();
    assert_eq!(refused.status(), 407, "wrong password: challenged again");
    alice.ack_failure(&invite, &refused);
    let mut mallory = Ua::udp_from("mallory", w.port, "127.0.0.3");
    let invite = mallory.invite_sdp("bob", SDP);
    let challenge = mallory.recv_response();
    mallory.ack_failure(&invite, &challenge);
    let nonce = nonce_of(&challenge, "Proxy-Authenticate", Algorithm::Md5);
    let borrowed = answer(
        &nonce,
        "warden",
        Algorithm::Md5,
        "alice",
        "wonderland",
        "INVITE",
        &uri,
    );
    let invite = mallory.invite_with("bob", SDP, &format!("Proxy-Authorization: {borrowed}\r\n"));
    let forbidden = mallory.recv_response();
    assert_eq!(
        forbidden.status(),
        403,
        "alice's credentials on mallory's call"
    );
    mallory.ack_failure(&invite, &forbidden);
    assert!(
        bob.try_recv(Duration::from_millis(200)).is_none(),
        "no call reached bob"
    );

    // The right credentials: the call goes through to bob.
    let nonce = nonce_of(&refused, "Proxy-Authenticate", Algorithm::Sha256);
    let good = answer(
        &nonce,
        "warden",
        Algorithm::Sha256,
        "alice",
        "wonderland",
        "INVITE",
        &uri,
    );
    let invite = alice.invite_with("bob", SDP, &format!("Proxy-Authorization: {good}\r\n"));
    assert_eq!(first_answer(&mut alice), 100);
    let offered = bob.recv_request("INVITE");
    assert!(
        offered.header("Proxy-Authorization").is_none(),
        "credentials stay with Warden"
    );
    bob.answer(&offered, 486, false);
    let busy = alice.recv_response();
    assert_eq!(busy.status(), 486);
    alice.ack_failure(&invite, &busy);

    // A trusted source (127.0.0.1) needs no credentials.
    let mut trunk = Ua::udp("trunk", w.port);
    trunk.invite_sdp("bob", SDP);
    assert_eq!(first_answer(&mut trunk), 100);
    let log = w.log();
    assert!(!log.contains("wonderland"), "no password in the log");
    assert_eq!(metric(&w, "warden_auth_failures_total", None), Some(2.0));
}

#[test]
fn failed_authentication_bans_the_source_until_an_operator_lifts_it() {
    let w = untrusting(true, "auth_failures = 3\n");
    let mut mallory = Ua::udp_from("alice", w.port, "127.0.0.2");
    for guess in ["password", "123456", "alice"] {
        let challenge = mallory.register(600);
        assert_eq!(challenge.status(), 401);
        let nonce = nonce_of(&challenge, "WWW-Authenticate", Algorithm::Md5);
        let auth = answer(
            &nonce,
            "warden",
            Algorithm::Md5,
            "alice",
            guess,
            "REGISTER",
            "sip:127.0.0.1",
        );
        assert_eq!(mallory.register_with(600, Some(&auth)).status(), 401);
    }
    assert!(!answered(&mut mallory, ""), "banned: dropped unanswered");
    let mut other = Ua::udp_from("carol", w.port, "127.0.0.3");
    assert!(answered(&mut other, ""), "other sources are served");

    let (ok, bans) = w.ctl(&["bans"]);
    assert!(ok, "{bans}");
    assert!(
        bans.contains("127.0.0.2") && bans.contains("auth"),
        "{bans}"
    );
    assert_eq!(
        metric(&w, "warden_guard_bans_total", Some(("reason", "auth"))),
        Some(1.0)
    );
    assert_eq!(metric(&w, "warden_guard_banned_sources", None), Some(1.0));
    assert_eq!(metric(&w, "warden_auth_failures_total", None), Some(3.0));
    assert!(metric(&w, "warden_guard_dropped_total", Some(("reason", "banned"))) >= Some(1.0));

    let (ok, text) = w.ctl(&["unban", "127.0.0.2"]);
    assert!(ok, "{text}");
    assert!(answered(&mut mallory, ""), "served again once unbanned");
    let (ok, text) = w.ctl(&["unban", "127.0.0.2"]);
    assert!(!ok && text.contains("not banned"), "{text}");
}

#[test]
fn a_flooding_source_is_limited_then_banned_while_others_are_served() {
    let w = untrusting(false, "requests_per_s = 5\nburst = 20\nflood_drops = 50\n");
    let mut flooder = Ua::udp_from("flood", w.port, "127.0.0.2");
    for _ in 0..300 {
        let options = flooder.options();
        flooder.send_raw(&options);
    }
    let mut answers = 0;
    while flooder.try_recv(Duration::from_millis(500)).is_some() {
        answers += 1;
    }
    // The burst, and what the rate refilled while the loop ran; never most of the flood.
    assert!((20..100).contains(&answers), "{answers} answers");
    let mut other = Ua::udp_from("carol", w.port, "127.0.0.3");
    assert!(answered(&mut other, ""), "other sources are served");
    assert!(!answered(&mut flooder, ""), "the flooder is banned");
    assert_eq!(
        metric(&w, "warden_guard_dropped_total", Some(("reason", "rate"))),
        Some(50.0)
    );
    assert_eq!(
        metric(&w, "warden_guard_bans_total", Some(("reason", "flood"))),
        Some(1.0)
    );
    let (status, bans) = common::get(&w.admin("/guard/bans"));
    assert_eq!(status, 200);
    assert!(bans.contains("\"flood\""), "{bans}");
}

#[test]
fn scanners_are_dropped_without_an_answer() {
    let w = untrusting(false, "");
    let mut scanner = Ua::udp_from("100", w.port, "127.0.0.2");
    assert!(!answered(&mut scanner, "User-Agent: friendly-scanner\r\n"));
    assert!(!answered(&mut scanner, "User-Agent: sipvicious\r\n"));
    assert!(
        answered(&mut scanner, "User-Agent: Linphone/5.2\r\n"),
        "others are not scanners"
    );
    assert_eq!(
        metric(
            &w,
            "warden_guard_dropped_total",
            Some(("reason", "scanner"))
        ),
        Some(2.0)
    );
}

#[test]
fn a_source_at_its_call_limit_gets_503_until_a_call_ends() {
    // Calls need no credentials here, but still count against their source.
    let w = Warden::start_with(
        "[calls]\nauth = false\n[guard]\nexempt = []\nmax_calls_per_source = 1\n",
    );
    let mut bob = Ua::udp("bob", w.port);
    assert_eq!(bob.register(600).status(), 200);
    let mut alice = Ua::udp_from("alice", w.port, "127.0.0.2");
    let first_sent = alice.invite_sdp("bob", SDP);
    assert_eq!(first_answer(&mut alice), 100);
    let first = bob.recv_request("INVITE");
    let second = alice.invite_sdp("bob", SDP);
    let busy = alice.final_response();
    assert_eq!(busy.status(), 503, "the source's second call");
    alice.ack_failure(&second, &busy);
    bob.answer(&first, 486, false);
    let busy = alice.recv_response();
    assert_eq!(busy.status(), 486);
    alice.ack_failure(&first_sent, &busy);
    alice.invite_sdp("bob", SDP);
    assert_eq!(first_answer(&mut alice), 100);
    assert_eq!(
        bob.recv_request("ACK").method().as_str(),
        "ACK",
        "Warden's ACK of the 486"
    );
    bob.recv_request("INVITE");
    assert_eq!(
        metric(&w, "warden_guard_call_limit_refused_total", None),
        Some(1.0)
    );
}

#[test]
fn users_kept_in_the_database_authenticate_after_a_reload() {
    // SHA-256 offered too: the database keeps an HA1 for each algorithm.
    let w = Warden::start_with(
        "[registrar]\nauth = true\ndigest_algorithms = [\"SHA-256\", \"MD5\"]\n",
    );
    let (ok, text) = w.user(&["add", "dave"], "short\n");
    assert!(!ok && text.contains("8 characters"), "{text}");
    let (ok, text) = w.user(&["add", "dave"], "correct horse\n");
    assert!(ok, "{text}");
    let (ok, text) = w.user(&["list"], "");
    assert!(ok && text.lines().any(|l| l == "dave"), "{text}");
    let stored = std::fs::read(w.dir.join("warden.sqlite")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&stored).contains("correct horse"),
        "only HA1 values are stored"
    );
    // The admin API's reload answers once the users are read again.
    let (ok, text) = w.ctl(&["reload"]);
    assert!(ok, "{text}");

    let mut dave = Ua::udp("dave", w.port);
    let challenge = dave.register(600);
    assert_eq!(challenge.status(), 401);
    let nonce = nonce_of(&challenge, "WWW-Authenticate", Algorithm::Sha256);
    let auth = answer(
        &nonce,
        "warden",
        Algorithm::Sha256,
        "dave",
        "correct horse",
        "REGISTER",
        "sip:127.0.0.1",
    );
    assert_eq!(dave.register_with(600, Some(&auth)).status(), 200);

    let (ok, text) = w.user(&["remove", "dave"], "");
    assert!(ok, "{text}");
    let (ok, text) = w.user(&["remove", "dave"], "");
    assert!(!ok && text.contains("no user"), "{text}");
}

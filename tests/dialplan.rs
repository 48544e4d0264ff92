//! Dialplans against a real Warden over loopback: failover, parallel ringing, redirect,
//! reject, header edits, and reloading (a broken file leaves the running plan in place).
//! The callee phones are not registered: the plans name their addresses, and their
//! `server` is set to Warden once it runs so their answers reach it.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Ua, Warden};

/// Warden routing by `plan` (kept in a file so the test can rewrite it and reload).
fn warden_with_plan(plan: &str) -> (Warden, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, plan).expect("write plan");
    let w = Warden::start_with(&format!("[dialplan]\nfile = \"{}\"\n", path.display()));
    (w, path, dir)
}

fn uri_of(ua: &Ua, user: &str) -> String {
    format!("sip:{user}@127.0.0.1:{}", ua.local.port())
}

#[test]
fn sequential_bridge_fails_over_from_a_503_to_the_next_target() {
    let (mut gw1, mut gw2) = (Ua::udp("gw1", 9), Ua::udp("gw2", 9));
    let plan = format!(
        "[[rule]]\nname = \"trunk\"\nwhen = {{ ruri_user = '^0\\d+$' }}\n\
         do = [{{ bridge = [\"{}\", \"{}\"] }}]\n",
        uri_of(&gw1, "${callee}"),
        uri_of(&gw2, "${callee}")
    );
    let (w, _plan, _dir) = warden_with_plan(&plan);
    (gw1.server, gw2.server) = (w.addr(), w.addr());
    let mut alice = Ua::udp("alice", w.port);
    alice.invite("0441234567");
    let first = gw1.recv_request("INVITE");
    assert_eq!(
        first.uri().user().as_deref(),
        Some("0441234567"),
        "capture in the target"
    );
    gw1.answer(&first, 503, false);
    let second = gw2.recv_request("INVITE");
    gw2.answer(&second, 200, true);
    let ok = alice.final_response();
    assert_eq!(ok.status(), 200, "the second target answered");
}

#[test]
fn parallel_bridge_first_answer_wins_and_the_other_is_cancelled() {
    let (mut desk, mut mobile) = (Ua::udp("desk", 9), Ua::udp("mobile", 9));
    let plan = format!(
        "[[rule]]\nname = \"ring both\"\nwhen = {{ ruri_user = '^sales$' }}\n\
         do = [{{ bridge = [\"{}\", \"{}\"], mode = \"parallel\" }}]\n",
        uri_of(&desk, "sales"),
        uri_of(&mobile, "sales")
    );
    let (w, _plan, _dir) = warden_with_plan(&plan);
    (desk.server, mobile.server) = (w.addr(), w.addr());
    let mut alice = Ua::udp("alice", w.port);
    alice.invite("sales");
    let at_desk = desk.recv_request("INVITE");
    let at_mobile = mobile.recv_request("INVITE");
    desk.answer(&at_desk, 180, false);
    mobile.answer(&at_mobile, 200, true);
    assert_eq!(alice.final_response().status(), 200);
    let cancel = desk.recv_request("CANCEL");
    assert_eq!(
        cancel.call_id(),
        at_desk.call_id(),
        "the ringing desk phone is cancelled"
    );
}

#[test]
fn redirect_and_reject_with_a_custom_reason() {
    let plan = "\
[[rule]]
name = \"moved\"
when = { ruri_user = '^old-(\\w+)$' }
do = [{ redirect = [\"sip:$1@new.example.net\", \"sip:$1@backup.example.net\"] }]

[[rule]]
name = \"premium\"
when = { ruri_user = '^0900' }
do = [{ tag = \"premium\" }, { reject = 403, reason = \"Premium numbers are blocked\" }]
";
    let (w, _plan, _dir) = warden_with_plan(plan);
    let mut alice = Ua::udp("alice", w.port);
    alice.invite("old-bob");
    let moved = alice.final_response();
    assert_eq!(moved.status(), 302);
    let contacts = moved.headers("Contact");
    assert_eq!(
        contacts,
        vec!["<sip:bob@new.example.net>", "<sip:bob@backup.example.net>"]
    );
    alice.invite("0900123456");
    let refused = alice.final_response();
    assert_eq!(
        (refused.status(), refused.reason().as_str()),
        (403, "Premium numbers are blocked")
    );
    // Nothing matches: 404.
    alice.invite("someone");
    assert_eq!(alice.final_response().status(), 404);
}

#[test]
fn header_edits_reach_the_callee() {
    let mut bob = Ua::udp("bob", 9);
    let plan = format!(
        "[[rule]]\nname = \"accounts\"\n\
         when.header = {{ X-Customer = '^gold-(?P<account>\\d+)$' }}\n\
         do = [{{ set_header = \"X-Account\", value = \"${{account}}\" }}, {{ remove_header = \"X-Internal\" }}, \
         {{ bridge = \"{}\" }}]\n",
        uri_of(&bob, "bob")
    );
    let (w, _plan, _dir) = warden_with_plan(&plan);
    bob.server = w.addr();
    let mut alice = Ua::udp("alice", w.port);
    alice.invite_with(
        "bob",
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n",
        "X-Customer: gold-42\r\nX-Internal: secret\r\n",
    );
    let invite = bob.recv_request("INVITE");
    assert_eq!(invite.header("X-Account").as_deref(), Some("42"));
    assert_eq!(invite.header("X-Internal"), None, "removed");
    bob.answer(&invite, 486, false);
    assert_eq!(alice.final_response().status(), 486);
}

#[test]
fn a_broken_file_on_reload_leaves_the_running_plan() {
    let plan_a = "[[rule]]\nname = \"a\"\ndo = [{ reject = 403, reason = \"plan A\" }]\n";
    let (w, path, _dir) = warden_with_plan(plan_a);
    let mut alice = Ua::udp("alice", w.port);
    let reason = |alice: &mut Ua| {
        alice.invite("x");
        alice.final_response().reason()
    };
    assert_eq!(reason(&mut alice), "plan A");
    // Line 3 has an unclosed regex group.
    std::fs::write(
        &path,
        "[[rule]]\nname = \"b\"\nwhen = { ruri_user = '(' }\ndo = [{ reject = 486 }]\n",
    )
    .expect("write");
    w.reload();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.log().contains("dialplan reload refused") {
        assert!(Instant::now() < deadline, "no error logged: {}", w.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        w.log().contains("plan.toml:3"),
        "file and line: {}",
        w.log()
    );
    assert_eq!(reason(&mut alice), "plan A", "the old plan still routes");
    // `warden reload` refuses the broken file itself, before signalling the server.
    let (ok, output) = w.reload_command();
    assert!(!ok && output.contains("plan.toml:3"), "{output}");
    // A good file takes over, by the command this time.
    std::fs::write(
        &path,
        "[[rule]]\nname = \"c\"\ndo = [{ reject = 486, reason = \"plan C\" }]\n",
    )
    .expect("write");
    let (ok, output) = w.reload_command();
    assert!(ok && output.contains("reload sent"), "{output}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if reason(&mut alice) == "plan C" {
            break;
        }
        assert!(Instant::now() < deadline, "plan C never took over");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_route_can_force_the_callee_side_codec() {
    let mut core_side = Ua::udp("ims", 9);
    let plan = format!(
        "[[rule]]\nname = \"toward the IMS core\"\n\
         do = [{{ codecs = [\"PCMA\"] }}, {{ bridge = \"{}\" }}]\n",
        uri_of(&core_side, "${callee}")
    );
    let (w, _plan, _dir) = warden_with_plan(&plan);
    core_side.server = w.addr();
    let mut alice = Ua::udp("alice", w.port);
    // A wideband desk phone: G.722 and PCMU.
    alice.invite_sdp(
        "0441234567",
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio 40000 RTP/AVP 9 0 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n",
    );
    let invite = core_side.recv_request("INVITE");
    let offered = String::from_utf8_lossy(invite.body()).to_string();
    assert!(
        offered.contains("m=audio ") && offered.contains(" RTP/AVP 8 101\r\n"),
        "only PCMA (and events): {offered}"
    );
    assert!(
        !offered.contains("G722") && !offered.contains("PCMU"),
        "{offered}"
    );
    core_side.answer_sdp(
        &invite,
        200,
        Some("v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 50000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"),
    );
    let ok = alice.final_response();
    assert_eq!(ok.status(), 200);
    let answered = String::from_utf8_lossy(ok.body()).to_string();
    assert!(
        answered.contains(" RTP/AVP 9 101\r\n"),
        "alice keeps her first codec, Warden transcodes: {answered}"
    );
}

#[test]
fn warden_answers_itself_plays_a_menu_and_follows_the_key() {
    let plan = "\
[[rule]]
name = \"hotline\"
when = { ruri_user = '^hotline$' }
do = [
  { answer = true },
  { menu = \"ivr_menu\", choices = { \"1\" = \"sales\" }, timeout = 3 },
  { play = \"user_unavailable\", repeat = 30 },
]

[[rule]]
name = \"sales\"
when = { ruri_user = '^never$' }
do = [{ tag = \"sales\" }]
";
    let (w, _plan, _dir) = warden_with_plan(plan);
    let mut alice = Ua::udp("alice", w.port);
    let invite = alice.invite("hotline");
    let ok = alice.final_response();
    assert_eq!(ok.status(), 200, "Warden answers the call itself");
    let answer = String::from_utf8_lossy(ok.body()).to_string();
    assert!(
        answer.contains("a=sendrecv"),
        "it listens for keys: {answer}"
    );
    let mut dialog = alice.dialog_from(&invite, &ok);
    alice.in_dialog(&mut dialog, "ACK", None);
    // Key 1 during the menu: the "sales" rule runs (a tag), its actions end and Warden
    // hangs up; the fallback (two and a half minutes of prompt) would keep the call up
    // far past the UA's 5 s wait.
    std::thread::sleep(Duration::from_millis(300));
    alice.in_dialog_typed(
        &mut dialog,
        "INFO",
        "application/dtmf-relay",
        Some("Signal=1\r\nDuration=100\r\n"),
    );
    let mut got_200 = false;
    let bye = loop {
        match alice.recv() {
            warden::sip::message::Message::Request(r) if r.method().as_str() == "BYE" => break r,
            warden::sip::message::Message::Response(r) => got_200 |= r.status() == 200,
            _ => {}
        }
    };
    assert!(got_200, "the INFO was answered");
    alice.ok(&bye);
}

#[test]
fn as_an_ims_application_server_the_call_goes_back_along_the_scscfs_route() {
    // One test UA plays the S-CSCF: it sends the initial INVITE to Warden and receives
    // the B-leg Warden sends back along the remaining Route.
    let mut scscf = Ua::udp("scscf", 9);
    let plan = "\
[[rule]]
name = \"originating\"
when = { session_case = \"originating\" }
do = [{ tag = \"ims-orig\" }, { bridge = \"ims\" }]

[[rule]]
name = \"anything else\"
do = [{ reject = 403, reason = \"Not an IMS session\" }]
";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, plan).expect("write plan");
    let w = Warden::start_with(&format!(
        "[dialplan]\nfile = \"{}\"\n[ims]\ntrusted_scscf = [\"127.0.0.0/8\"]\n",
        path.display()
    ));
    scscf.server = w.addr();
    let own_route = format!("<sip:127.0.0.1:{};lr;odi=d1a2b3>", scscf.local.port());
    let routes = format!(
        "Route: <sip:127.0.0.1:{};lr;orig>, {own_route}\r\n\
         P-Charging-Vector: icid-value=AyretyU0dm+6O2IrT5tAFrbHLso=023551024;orig-ioi=home1.net\r\n\
         P-Asserted-Identity: <sip:+41441234567@ims.example.net>\r\n",
        w.port
    );
    scscf.invite_with(
        "+41449999999",
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n",
        &routes,
    );
    let b_leg = scscf.recv_request("INVITE");
    assert_eq!(
        b_leg.uri().user().as_deref(),
        Some("+41449999999"),
        "same Request-URI"
    );
    assert_eq!(
        b_leg.headers("Route"),
        vec![own_route.clone()],
        "the S-CSCF's own Route, odi kept"
    );
    assert_eq!(
        b_leg.header("P-Charging-Vector").as_deref(),
        Some("icid-value=AyretyU0dm+6O2IrT5tAFrbHLso=023551024;orig-ioi=home1.net"),
        "ICID unchanged"
    );
    assert_eq!(
        b_leg.header("P-Asserted-Identity").as_deref(),
        Some("<sip:+41441234567@ims.example.net>")
    );
    assert_ne!(
        b_leg.call_id(),
        Some(scscf.call_id.clone()),
        "a B2BUA's own dialog"
    );
    scscf.answer(&b_leg, 200, true);
    let ok = scscf.final_response();
    assert_eq!(ok.status(), 200, "the answer comes back on the A-leg");

    // The same request from an address that is not a trusted S-CSCF: no session case.
    let w2 = Warden::start_with(&format!(
        "[dialplan]\nfile = \"{}\"\n[ims]\ntrusted_scscf = [\"192.0.2.1\"]\n",
        path.display()
    ));
    let mut stranger = Ua::udp("stranger", w2.port);
    stranger.invite_with("+41449999999", "", &routes);
    let refused = stranger.final_response();
    assert_eq!(
        (refused.status(), refused.reason().as_str()),
        (403, "Not an IMS session")
    );
}

/// A small DNS server for the test: every NAPTR query gets one terminal E2U+sip record
/// with `regexp`; other queries get an empty answer. The names asked for are recorded.
fn naptr_server(regexp: String) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind dns");
    let port = socket.local_addr().expect("addr").port();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let query = &buf[..n];
            if n < 12 {
                continue;
            }
            // The question: labels up to the root, then type and class.
            let (mut at, mut labels) = (12, Vec::new());
            while at < n && query[at] != 0 {
                let len = query[at] as usize;
                labels.push(
                    String::from_utf8_lossy(&query[at + 1..(at + 1 + len).min(n)]).into_owned(),
                );
                at += 1 + len;
            }
            let end = (at + 5).min(n);
            let qtype = u16::from_be_bytes([query[at + 1], query[at + 2]]);
            seen.lock().expect("lock").push(labels.join("."));
            let mut reply = Vec::new();
            reply.extend_from_slice(&query[..2]); // ID
            reply.extend_from_slice(&[0x85, 0x80]); // response, authoritative, recursion
            let answers: u16 = if qtype == 35 { 1 } else { 0 };
            reply.extend_from_slice(&[0, 1]);
            reply.extend_from_slice(&answers.to_be_bytes());
            reply.extend_from_slice(&[0, 0, 0, 0]);
            reply.extend_from_slice(&query[12..end]);
            if answers == 1 {
                let mut rdata = vec![0, 10, 0, 10];
                for text in ["u", "E2U+sip", regexp.as_str()] {
                    rdata.push(text.len() as u8);
                    rdata.extend_from_slice(text.as_bytes());
                }
                rdata.push(0); // replacement: the root
                reply.extend_from_slice(&[0xc0, 0x0c, 0, 35, 0, 1, 0, 0, 0, 60]);
                reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                reply.extend_from_slice(&rdata);
            }
            let _ = socket.send_to(&reply, from);
        }
    });
    (port, asked)
}

#[test]
fn enum_routes_a_number_to_the_uri_its_naptr_record_gives() {
    let mut bob = Ua::udp("bob", 9);
    let (dns_port, asked) = naptr_server(format!(
        "!^\\+41(.*)$!sip:bob-\\1@127.0.0.1:{}!",
        bob.local.port()
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("plan.toml");
    std::fs::write(
        &path,
        "[[rule]]\nname = \"e164\"\nwhen = { ruri_user = '^\\+\\d+$' }\ndo = [{ bridge = \"enum:${callee}\" }]\n",
    )
    .expect("write plan");
    let w = Warden::start_with(&format!(
        "[dialplan]\nfile = \"{}\"\n[dns]\nservers = [\"127.0.0.1:{dns_port}\"]\n",
        path.display()
    ));
    bob.server = w.addr();
    let mut alice = Ua::udp("alice", w.port);
    alice.invite("+41441234567");
    let invite = bob.recv_request("INVITE");
    assert_eq!(
        invite.uri().user().as_deref(),
        Some("bob-441234567"),
        "the NAPTR regexp applied to the number"
    );
    assert!(
        asked
            .lock()
            .expect("lock")
            .iter()
            .any(|name| name == "7.6.5.4.3.2.1.4.4.1.4.e164.arpa"),
        "asked for the number's ENUM domain: {:?}",
        asked.lock().expect("lock")
    );
    bob.answer(&invite, 200, true);
    assert_eq!(alice.final_response().status(), 200);
}

#[test]
fn generated_responses_carry_the_operators_localized_reason_phrases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("plan.toml");
    let plan = "[[rule]]\nname = \"busy\"\nwhen = { ruri_user = '^busy$' }\ndo = [{ reject = 486 }]\n\n\
                [[rule]]\nname = \"bob\"\nwhen = { ruri_user = '^bob$' }\ndo = [{ bridge = \"user:bob\" }]\n";
    std::fs::write(&path, plan).expect("write plan");
    let w = Warden::start_with(&format!(
        "[dialplan]\nfile = \"{}\"\n[sip.reason_phrases]\n486 = \"Obsadené\"\n404 = \"Nenájdené\"\n",
        path.display()
    ));
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    alice.invite("busy");
    let busy = alice.final_response();
    assert_eq!((busy.status(), busy.reason().as_str()), (486, "Obsadené"));
    alice.invite("nobody");
    let missing = alice.final_response();
    assert_eq!(
        (missing.status(), missing.reason().as_str()),
        (404, "Nenájdené")
    );
    // A callee's own 486 keeps the callee's phrase (sip.rewrite_relayed_phrases is off).
    bob.register(600);
    alice.invite("bob");
    let incoming = bob.recv_request("INVITE");
    bob.answer(&incoming, 486, false);
    let relayed = alice.final_response();
    assert_eq!(
        (relayed.status(), relayed.reason().as_str()),
        (486, "Failure")
    );
}

/// The IANA "Response Codes" registry (sip-parameters), as published: code and phrase.
const IANA_RESPONSE_CODES: &str = "\
100 Trying
180 Ringing
181 Call Is Being Forwarded
182 Queued
183 Session Progress
199 Early Dialog Terminated
200 OK
202 Accepted
204 No Notification
300 Multiple Choices
301 Moved Permanently
302 Moved Temporarily
305 Use Proxy
380 Alternative Service
400 Bad Request
401 Unauthorized
402 Payment Required
403 Forbidden
404 Not Found
405 Method Not Allowed
406 Not Acceptable
407 Proxy Authentication Required
408 Request Timeout
410 Gone
412 Conditional Request Failed
413 Request Entity Too Large
414 Request-URI Too Long
415 Unsupported Media Type
416 Unsupported URI Scheme
417 Unknown Resource-Priority
420 Bad Extension
421 Extension Required
422 Session Interval Too Small
423 Interval Too Brief
424 Bad Location Information
425 Bad Alert Message
428 Use Identity Header
429 Provide Referrer Identity
430 Flow Failed
433 Anonymity Disallowed
436 Bad Identity Info
437 Unsupported Credential
438 Invalid Identity Header
439 First Hop Lacks Outbound Support
440 Max-Breadth Exceeded
469 Bad Info Package
470 Consent Needed
480 Temporarily Unavailable
481 Call/Transaction Does Not Exist
482 Loop Detected
483 Too Many Hops
484 Address Incomplete
485 Ambiguous
486 Busy Here
487 Request Terminated
488 Not Acceptable Here
489 Bad Event
491 Request Pending
493 Undecipherable
494 Security Agreement Required
500 Server Internal Error
501 Not Implemented
502 Bad Gateway
503 Service Unavailable
504 Server Time-out
505 Version Not Supported
513 Message Too Large
555 Push Notification Service Not Supported
580 Precondition Failure
600 Busy Everywhere
603 Decline
604 Does Not Exist Anywhere
606 Not Acceptable
607 Unwanted
608 Rejected
";

#[test]
fn every_code_in_the_iana_registry_has_its_rfc_phrase_and_no_other_code_does() {
    use warden::sip::status::{reason_phrase, standard_phrase};
    let registry: Vec<(u16, &str)> = IANA_RESPONSE_CODES
        .lines()
        .map(|line| {
            let (code, phrase) = line.split_once(' ').expect("code and phrase");
            (code.parse().expect("a code"), phrase)
        })
        .collect();
    for &(code, phrase) in &registry {
        assert_eq!(standard_phrase(code), Some(phrase), "{code}");
        assert_eq!(reason_phrase(code), phrase, "{code}");
    }
    for code in 100..700 {
        if !registry.iter().any(|&(c, _)| c == code) {
            assert_eq!(standard_phrase(code), None, "{code} is not in the registry");
            assert_ne!(reason_phrase(code), "Unknown", "{code}");
        }
    }
}

#[test]
fn a_redirect_and_a_reject_carry_their_standard_phrases() {
    let plan = "[[rule]]\nname = \"moved\"\nwhen = { ruri_user = '^moved$' }\ndo = [{ redirect = \"sip:x@example.net\" }]\n\n\
                [[rule]]\nname = \"codec\"\nwhen = { ruri_user = '^codec$' }\ndo = [{ reject = 488 }]\n";
    let (w, _plan, _dir) = warden_with_plan(plan);
    let mut alice = Ua::udp("alice", w.port);
    alice.invite("moved");
    let moved = alice.final_response();
    assert_eq!(
        (moved.status(), moved.reason().as_str()),
        (302, "Moved Temporarily")
    );
    alice.invite("codec");
    let refused = alice.final_response();
    assert_eq!(
        (refused.status(), refused.reason().as_str()),
        (488, "Not Acceptable Here")
    );
}

//! SIP over TLS through a real Warden: two phones on TLS connections verified against a
//! test CA register and call each other; a client that does not trust the CA is refused;
//! Warden dials a `sips:` next hop over TLS, verifying its certificate.

mod common;

use std::net::TcpListener;

use common::{TestCa, Ua, Warden, establish, hang_up};

#[test]
fn a_call_between_two_tls_phones_stays_on_tls() {
    let ca = TestCa::new();
    let w = Warden::start_tls(&ca, "");
    let port = w.tls_port.expect("TLS port");
    let mut alice = Ua::tls("alice", port, ca.client_config()).expect("TLS to Warden");
    let mut bob = Ua::tls("bob", port, ca.client_config()).expect("TLS to Warden");
    let (mut alice_dialog, bob_dialog) = establish(&w, &mut alice, &mut bob);
    // Warden reached bob over his own TLS connection, and names itself with a SIPS URI.
    assert!(
        bob_dialog.target.starts_with("sips:"),
        "Warden's Contact toward bob: {}",
        bob_dialog.target
    );
    assert!(
        alice_dialog.target.starts_with("sips:"),
        "Warden's Contact toward alice: {}",
        alice_dialog.target
    );
    hang_up(&mut alice, &mut alice_dialog, &mut bob);
}

#[test]
fn a_client_that_does_not_trust_the_certificate_is_refused() {
    let ca = TestCa::new();
    let w = Warden::start_tls(&ca, "");
    let stranger = TestCa::new();
    let refused = Ua::tls(
        "mallory",
        w.tls_port.expect("TLS port"),
        stranger.client_config(),
    );
    let error = refused.err().expect("the handshake fails");
    assert!(error.contains("certificate"), "{error}");
    // The server keeps serving TLS.
    assert!(Ua::tls("alice", w.tls_port.expect("TLS port"), ca.client_config()).is_ok());
}

/// Warden with a dialplan sending every call to `target`.
fn routing_to(ca: &TestCa, target: &str) -> (Warden, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!("[[rule]]\nname = \"gateway\"\ndo = [{{ bridge = \"{target}\" }}]\n"),
    )
    .expect("plan");
    // A short T1: a next hop that cannot be reached fails the call at Timer B (64*T1).
    let w = Warden::start_tls_with(
        ca,
        "t1_ms = 50\n",
        &format!("[dialplan]\nfile = \"{}\"\n", plan.display()),
    );
    (w, dir)
}

#[test]
fn warden_dials_a_sips_next_hop_over_verified_tls() {
    let ca = TestCa::new();
    let gateway = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = gateway.local_addr().expect("addr").port();
    let (w, _plan) = routing_to(&ca, &format!("sips:carol@127.0.0.1:{port}"));
    let mut alice = Ua::udp("alice", w.port);
    alice.invite("carol");
    let mut carol =
        Ua::accept_tls("carol", &gateway, ca.server_config()).expect("Warden connects over TLS");
    let invite = carol.recv_request("INVITE");
    assert!(
        invite.uri().to_string().starts_with("sips:carol@"),
        "{}",
        invite.uri()
    );
    let via = invite.header("Via").unwrap_or_default();
    assert!(via.starts_with("SIP/2.0/TLS"), "{via}");
    carol.answer(&invite, 486, false);
    let busy = alice.final_response();
    assert_eq!(busy.status(), 486, "carol's answer came back over TLS");
}

#[test]
fn a_next_hop_with_a_certificate_warden_does_not_trust_gets_no_call() {
    let ca = TestCa::new();
    let impostor = TestCa::new();
    let gateway = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = gateway.local_addr().expect("addr").port();
    let (w, _plan) = routing_to(&ca, &format!("sips:carol@127.0.0.1:{port}"));
    let mut alice = Ua::udp("alice", w.port);
    alice.invite("carol");
    // Warden refuses the impostor's certificate: the handshake fails on its side.
    assert!(Ua::accept_tls("carol", &gateway, impostor.server_config()).is_none());
    let failed = alice.final_response();
    assert!(
        failed.status() >= 400,
        "the call fails: {}",
        failed.status()
    );
    assert!(w.log().contains("connect failed"), "the log says why");
}

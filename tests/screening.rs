//! Call screening against a real Warden over loopback: quotas answered 603, a high-risk
//! destination announced as early media then refused 608 with a fetchable jCard, the 302
//! and 503 modes, and every decision in the database with its reason.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Ua, Warden};
use warden::sip::message::{Message, Request, Response};

/// Warden with `plan` as its dialplan and `screening` TOML appended to its config.
fn warden(plan: &str, screening: &str) -> (Warden, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("plan.toml");
    std::fs::write(&path, plan).expect("write plan");
    let w = Warden::start_with(&format!(
        "[dialplan]\nfile = \"{}\"\n{screening}",
        path.display()
    ));
    (w, dir)
}

/// The final response to `invite` (others' retransmissions skipped), ACKed when it is a
/// failure; provisional responses seen on the way are returned too.
fn outcome(ua: &mut Ua, invite: &Request) -> (Vec<Response>, Response) {
    let mut provisional = Vec::new();
    loop {
        let r = ua.recv_response();
        if r.call_id() != invite.call_id() {
            continue;
        }
        if r.status() < 200 {
            provisional.push(r);
            continue;
        }
        if r.status() >= 300 {
            let ack = format!(
                "ACK {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
                 Call-ID: {ci}\r\nCSeq: {seq} ACK\r\nContent-Length: 0\r\n\r\n",
                uri = invite.uri(),
                via = invite.header("Via").expect("via"),
                from = invite.header("From").expect("from"),
                to = r.header("To").expect("to"),
                ci = invite.call_id().expect("call-id"),
                seq = invite.cseq().expect("cseq").seq
            );
            ua.send_raw(&ack);
        }
        return (provisional, r);
    }
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
fn http_get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("path");
    let mut s = TcpStream::connect(host).expect("connect to the admin API");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, body.to_owned())
}

/// GET `url` over HTTPS: verified against the PEM CA `ca`, or with no verification at all
/// (Warden's self-signed default certificate); the status and body.
fn https_get(url: &str, ca: Option<&str>) -> (u16, String) {
    assert!(url.starts_with("https://"), "an HTTPS URL: {url}");
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5));
    let client = match ca {
        Some(pem) => client
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("CA")),
        None => client.danger_accept_invalid_certs(true),
    };
    let response = client
        .build()
        .expect("client")
        .get(url)
        .send()
        .expect("HTTPS GET");
    let status = response.status().as_u16();
    (status, response.text().expect("body"))
}

/// Screening decisions logged so far: (decision, verdict, reason), waiting up to 5 s for
/// `count` of them (the log is written behind the calls).
fn decisions(w: &Warden, count: usize) -> Vec<(String, Option<String>, String)> {
    let db = w.dir.join("warden.sqlite");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let url = format!("sqlite://{}?mode=ro", db.display());
        let pool = sqlx::SqlitePool::connect(&url)
            .await
            .expect("open the database");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
                "SELECT decision, verdict, reason FROM screening_decisions ORDER BY rowid",
            )
            .fetch_all(&pool)
            .await
            .expect("query");
            if rows.len() >= count || Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

const NO_RATE: &str = "[screening]\ncalls_per_source_per_second = 0\n";

#[test]
fn a_user_over_quota_gets_603_even_after_a_crash_and_the_decisions_are_recorded() {
    let plan = "[[rule]]\nname = \"out\"\ndo = [{ screen = \"tight\" }, { reject = 480 }]\n";
    let (mut w, _dir) = warden(
        plan,
        &format!(
            "{NO_RATE}[screening.profiles.tight]\nchecks = [\"quotas\"]\ncalls_per_hour = 2\n"
        ),
    );
    let mut alice = Ua::udp("alice", w.port);
    let mut codes = Vec::new();
    for _ in 0..2 {
        let invite = alice.invite("02079460000");
        codes.push(outcome(&mut alice, &invite).1.status());
    }
    // The counters survive a crash: once the decisions are written (the counters are
    // written first), kill -9 and start again.
    decisions(&w, 2);
    w.restart();
    let mut alice = Ua::udp("alice", w.port);
    let invite = alice.invite("02079460000");
    codes.push(outcome(&mut alice, &invite).1.status());
    assert_eq!(
        codes,
        [480, 480, 603],
        "two calls pass screening, the third is over quota"
    );
    let rows = decisions(&w, 3);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_deref()), ("allow", None));
    assert_eq!(
        (rows[2].0.as_str(), rows[2].1.as_deref()),
        ("block", Some("603"))
    );
    assert!(
        rows[2].2.contains("calls per hour: 2 of 2 used"),
        "{rows:?}"
    );
    // Decisions counted since this process started: the one after the restart.
    let (status, stats) = http_get(&format!(
        "http://127.0.0.1:{}/screening/stats",
        w.admin_port
    ));
    assert_eq!(status, 200, "{stats}");
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("JSON");
    let count = |decision: &str, check: &str| {
        stats
            .as_array()
            .expect("array")
            .iter()
            .find(|r| r["decision"] == decision && r["check"] == check)
            .and_then(|r| r["count"].as_u64())
    };
    assert_eq!(
        (count("allow", "none"), count("block", "quotas")),
        (None, Some(1)),
        "{stats}"
    );
}

/// A caller's RTP socket and an SDP offer pointing at it.
fn media() -> (UdpSocket, String) {
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    rtp.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let port = rtp.local_addr().expect("addr").port();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    );
    (rtp, sdp)
}

const FRAUD: &str =
    "[screening.profiles.fraud]\nchecks = [\"high_risk\"]\nverdict = { reject = 608 }\n";

#[test]
fn a_high_risk_destination_hears_the_prompt_then_608_with_a_jcard() {
    let plan = "[[rule]]\nname = \"intl\"\ndo = [{ screen = \"fraud\" }, { reject = 480 }]\n";
    let (w, _dir) = warden(plan, &format!("{NO_RATE}{FRAUD}"));
    // Registered, so Warden knows who is calling: the 608 may carry the operator's jCard.
    let mut alice = Ua::udp("alice", w.port);
    assert_eq!(alice.register(600).status(), 200);
    let (rtp, sdp) = media();
    let invite = alice.invite_sdp("005371234567", &sdp);
    // No `Feature-Caps: *;+sip.608` from this caller: the announcement comes first.
    let progress = loop {
        match alice.recv() {
            Message::Response(r) if r.status() == 183 => break r,
            Message::Response(r) => {
                assert!(r.status() < 200, "final before the prompt: {}", r.status())
            }
            Message::Request(r) => panic!("unexpected {}", r.method()),
        }
    };
    assert!(
        String::from_utf8_lossy(progress.body()).contains("m=audio"),
        "183 with SDP"
    );
    let mut buf = [0u8; 2048];
    let mut packets = 0;
    while packets < 10 {
        let (n, _) = rtp
            .recv_from(&mut buf)
            .expect("the prompt's RTP arrives before the final response");
        assert!(n > 12 && buf[1] & 0x7f == 0, "PCMU RTP");
        packets += 1;
    }
    let (_, last) = outcome(&mut alice, &invite);
    assert_eq!((last.status(), last.reason().as_str()), (608, "Rejected"));
    let call_info = last
        .header("Call-Info")
        .expect("Call-Info on a 608 to a known caller");
    assert!(call_info.ends_with(";purpose=jwscard"), "{call_info}");
    let url = call_info
        .trim_start_matches('<')
        .split('>')
        .next()
        .expect("URI");
    let (status, jws) = https_get(url, None);
    assert_eq!(status, 200, "{jws}");
    let parts: Vec<&str> = jws.trim().split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS: {jws}");
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
    assert_eq!(header["alg"], "ES256");
    let payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    assert_eq!(payload["jcard"][0], "vcard", "{payload}");
    assert!(payload["iat"].as_u64().is_some());
    let x5u = header["x5u"].as_str().expect("x5u");
    let (status, pem) = https_get(x5u, None);
    assert_eq!(status, 200);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let rows = decisions(&w, 1);
    assert!(rows[0].2.contains("irsf range +53"), "{rows:?}");
}

/// With the operator's certificate, the jCard's HTTPS verifies against its CA; the same
/// port still answers plain HTTP (health checks, `warden ctl`).
#[test]
fn the_jcard_is_served_over_https_with_the_operators_certificate() {
    let ca = common::tls_ca::TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let [cert, key, _] = ca.write_files(dir.path());
    // These keys land in the harness's [admin] table, which the extra TOML follows.
    let w = Warden::start_with(&format!(
        "tls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\"\n"
    ));
    let url = format!("https://127.0.0.1:{}/jcard", w.admin_port);
    let (status, jws) = https_get(&url, Some(&ca.ca_pem));
    assert_eq!(status, 200, "{jws}");
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jws.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    let x5u = header["x5u"].as_str().expect("x5u");
    assert_eq!(
        x5u,
        format!("https://127.0.0.1:{}/jcard/cert.pem", w.admin_port)
    );
    let (status, pem) = https_get(x5u, Some(&ca.ca_pem));
    assert_eq!(status, 200);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let (status, body) = http_get(&w.admin("/healthz"));
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn a_608_capable_stranger_gets_608_at_once_and_no_jcard() {
    let plan = "[[rule]]\nname = \"intl\"\ndo = [{ screen = \"fraud\" }, { reject = 480 }]\n";
    let (w, _dir) = warden(plan, &format!("{NO_RATE}{FRAUD}"));
    let mut mallory = Ua::udp("mallory", w.port);
    let (_rtp, sdp) = media();
    let invite = mallory.invite_with("005371234567", &sdp, "Feature-Caps: *;+sip.608\r\n");
    let (provisional, last) = outcome(&mut mallory, &invite);
    assert!(
        provisional.iter().all(|r| r.status() != 183),
        "no announcement"
    );
    assert_eq!(last.status(), 608);
    assert_eq!(
        last.header("Call-Info"),
        None,
        "no jCard for an unverified caller (RFC 8688 6)"
    );
}

#[test]
fn the_redirect_503_and_603_plus_modes() {
    // One profile per caller, each answering a block its own way.
    let rule = |user: &str, profile: &str| {
        format!(
            "[[rule]]\nname = \"{user}\"\nwhen = {{ from_user = '^{user}$' }}\ndo = [{{ screen = \"{profile}\" }}, {{ reject = 480 }}]\n"
        )
    };
    let plan = [
        rule("alice", "redirect"),
        rule("bob", "failover"),
        rule("carol", "analytics"),
    ]
    .concat();
    let profile = |name: &str, verdict: &str| {
        format!(
            "[screening.profiles.{name}]\nhome_country = \"US\"\ninternational_prefix = \"011\"\n\
             national_prefix = \"1\"\nchecks = [\"high_risk\"]\nverdict = {verdict}\n"
        )
    };
    let config = format!(
        "{NO_RATE}[screening.redress]\nurl = \"https://redress.example.net\"\ntel = \"+18005550100\"\n{}{}{}",
        profile("redirect", "{ redirect = \"999\" }"),
        profile("failover", "{ reject = 503 }"),
        profile("analytics", "{ reject = \"603+\" }"),
    );
    let (w, _dir) = warden(&plan, &config);
    // 1 876 is Jamaica: a high-risk NANP area code, dialed nationally.
    let mut alice = Ua::udp("alice", w.port);
    let invite = alice.invite("18765550123");
    let (_, r) = outcome(&mut alice, &invite);
    assert_eq!(r.status(), 302);
    let contact = r.header("Contact").expect("Contact");
    assert!(
        contact.contains("sip:99918765550123@"),
        "the prefix on the Request-URI: {contact}"
    );
    // A US number passes and the plan goes on.
    let invite = alice.invite("12125550123");
    assert_eq!(outcome(&mut alice, &invite).1.status(), 480);

    let mut bob = Ua::udp("bob", w.port);
    let invite = bob.invite("01118765550123");
    assert_eq!(
        outcome(&mut bob, &invite).1.status(),
        503,
        "tfps's failover mode"
    );

    let mut carol = Ua::udp("carol", w.port);
    let invite = carol.invite("01118765550123");
    let (_, r) = outcome(&mut carol, &invite);
    assert_eq!((r.status(), r.reason().as_str()), (603, "Network Blocked"));
    assert_eq!(
        r.header("Reason").expect("Reason").as_str(),
        "SIP;cause=603;text=\"v=analytics1;tel=+18005550100;url=https://redress.example.net\";location=TN"
    );
    let rows = decisions(&w, 4);
    let verdicts: Vec<Option<&str>> = rows.iter().map(|r| r.1.as_deref()).collect();
    assert_eq!(verdicts, [Some("302 999"), None, Some("503"), Some("603+")]);
}

#[test]
fn operators_list_reset_and_remove_users_and_edit_lists_with_ctl() {
    let plan = "[[rule]]\nname = \"out\"\ndo = [{ screen = \"tight\" }, { reject = 480 }]\n";
    let (w, _dir) = warden(
        plan,
        &format!(
            "{NO_RATE}[screening.profiles.tight]\nchecks = [\"lists\", \"quotas\"]\ncalls_per_hour = 1\n"
        ),
    );
    let mut alice = Ua::udp("alice", w.port);
    let call = |ua: &mut Ua, number: &str| {
        let invite = ua.invite(number);
        outcome(ua, &invite).1.status()
    };
    assert_eq!(call(&mut alice, "02079460000"), 480);
    assert_eq!(call(&mut alice, "02079460000"), 603, "over quota");
    let (ok, text) = w.ctl(&["screening", "list"]);
    assert!(ok, "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("alice@127.0.0.1"))
        .expect(&text);
    assert!(text.starts_with("USER"), "{text}");
    assert_eq!(
        row.split_whitespace().nth(1),
        Some("1"),
        "one call this hour: {text}"
    );
    let (ok, text) = w.ctl(&["screening", "reset", "alice", "127.0.0.1"]);
    assert!(ok && text.contains("reset alice@127.0.0.1"), "{text}");
    assert_eq!(
        call(&mut alice, "02079460000"),
        480,
        "the quota starts again"
    );

    let (ok, text) = w.ctl(&[
        "screening",
        "add",
        "block",
        "prefix",
        "+4420794",
        "--note",
        "test",
    ]);
    assert!(
        ok && text.contains("block  prefix  4420794  test"),
        "{text}"
    );
    let mut bob = Ua::udp("bob", w.port);
    assert_eq!(call(&mut bob, "02079461111"), 603, "on the block list");
    let (ok, text) = w.ctl(&["screening", "del", "block", "prefix", "4420794"]);
    assert!(ok, "{text}");
    let (ok, text) = w.ctl(&["screening", "add", "block", "planet", "Mars"]);
    assert!(!ok && text.contains("kind \"planet\""), "{text}");
    let (ok, text) = w.ctl(&["screening", "remove", "nobody", "example.com"]);
    assert!(!ok && text.contains("404"), "{text}");
    let (ok, _) = w.ctl(&["screening", "remove", "alice", "127.0.0.1"]);
    assert!(ok);
    let (_, text) = w.ctl(&["screening", "list"]);
    assert!(!text.contains("alice@"), "{text}");
}

/// A local analytics engine: answers every request with `answer` after `delay`, and keeps
/// each request's first line and body.
fn analytics_engine(
    answer: &'static str,
    delay: Duration,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind engine");
    let port = listener.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head, then as much body as Content-Length says.
                loop {
                    let Ok(n) = stream.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&data).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            let first = head.lines().next().unwrap_or_default();
                            log.lock().expect("log").push(format!("{first}\n{body}"));
                            break;
                        }
                    }
                }
                std::thread::sleep(delay);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            });
        }
    });
    (port, seen)
}

fn analytics_profile(port: u16, kind: &str, extra: &str) -> String {
    let path = if kind == "608" { "check" } else { "judge" };
    format!(
        "{NO_RATE}[screening.analytics.engine]\nkind = \"{kind}\"\nurl = \"http://127.0.0.1:{port}/{path}\"\n{extra}\
         [screening.profiles.robo]\nchecks = []\nanalytics = \"engine\"\nverdict = {{ reject = 608 }}\n"
    )
}

const ROBO_PLAN: &str = "[[rule]]\nname = \"in\"\ndo = [{ screen = \"robo\" }, { reject = 480 }]\n";

#[test]
fn a_608_analytics_engine_answering_fraudulent_gives_608_with_the_jcard() {
    let (port, seen) = analytics_engine("BAD_ANALYTICS_VERIFIED_IDENTITY", Duration::ZERO);
    let (w, _dir) = warden(ROBO_PLAN, &analytics_profile(port, "608", ""));
    let mut robo = Ua::udp("robo", w.port);
    let invite = robo.invite_with(
        "12025550123",
        &media().1,
        "Feature-Caps: *;+sip.608\r\nDate: Mon, 23 Nov 2026 08:00:00 GMT\r\n\
         Identity: eyJhbGciOiJFUzI1NiJ9.eyJ4IjoxfQ.c2ln;info=<https://cert.example.org/a.pem>;alg=ES256;ppt=shaken\r\n",
    );
    let (_, last) = outcome(&mut robo, &invite);
    assert_eq!(last.status(), 608);
    assert!(
        last.header("Call-Info")
            .is_some_and(|c| c.ends_with("purpose=jwscard")),
        "an analytics block after the identity was verified carries the jCard"
    );
    let asked = seen.lock().expect("log").clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let line = &asked[0];
    for part in [
        "GET /check?",
        "from=robo",
        "to=12025550123",
        "callid=",
        "identity=eyJhbGciOiJFUzI1NiJ9.eyJ4IjoxfQ.c2ln",
        "info=https%3A%2F%2Fcert.example.org%2Fa.pem",
        "alg=ES256",
        "date=Mon",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    let rows = decisions(&w, 1);
    assert!(
        rows[0]
            .2
            .contains("analytics: engine engine: BAD_ANALYTICS_VERIFIED_IDENTITY"),
        "{rows:?}"
    );

    // A STIR failure reported by the engine: 608 without the jCard.
    let (port, _) = analytics_engine("BAD_CERT_LINK", Duration::ZERO);
    let (w, _dir) = warden(ROBO_PLAN, &analytics_profile(port, "608", ""));
    let mut robo = Ua::udp("robo", w.port);
    let invite = robo.invite_with("12025550123", &media().1, "Feature-Caps: *;+sip.608\r\n");
    let (_, last) = outcome(&mut robo, &invite);
    assert_eq!((last.status(), last.header("Call-Info")), (608, None));
}

#[test]
fn a_slow_engine_times_out_and_the_policy_decides_with_a_breaker_after_repeated_failures() {
    // Fail open (the default): the call goes on to the plan's next action.
    let (port, seen) = analytics_engine("BAD_IDENTITY", Duration::from_secs(2));
    let (w, _dir) = warden(
        ROBO_PLAN,
        &analytics_profile(port, "608", "timeout_ms = 200\n"),
    );
    let mut alice = Ua::udp("alice", w.port);
    let started = Instant::now();
    let invite = alice.invite("12025550123");
    assert_eq!(outcome(&mut alice, &invite).1.status(), 480);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the timeout cut the wait"
    );
    let rows = decisions(&w, 1);
    assert!(
        rows[0].2.contains("no answer within 200 ms; failing open"),
        "{rows:?}"
    );
    drop(seen);

    // Fail closed, breaker after two failures: calls 1-2 wait for the timeout and are
    // refused; call 3 is refused at once without asking.
    let (port, seen) = analytics_engine("GOOD", Duration::from_secs(2));
    let (w, _dir) = warden(
        ROBO_PLAN,
        &analytics_profile(
            port,
            "608",
            "timeout_ms = 200\non_error = \"block\"\nbreaker_failures = 2\n",
        ),
    );
    let mut alice = Ua::udp("alice", w.port);
    for _ in 0..3 {
        let invite = alice.invite_with("12025550123", "", "Feature-Caps: *;+sip.608\r\n");
        assert_eq!(outcome(&mut alice, &invite).1.status(), 608);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        seen.lock().expect("log").len(),
        2,
        "the open breaker spared the engine the third call"
    );
    let rows = decisions(&w, 3);
    assert!(rows[2].2.contains("circuit open"), "{rows:?}");
}

#[test]
fn the_json_engine_gets_the_call_as_json_and_its_block_is_obeyed() {
    let (port, seen) = analytics_engine(
        r#"{"verdict":"block","reason":"robocall campaign 17"}"#,
        Duration::ZERO,
    );
    let (w, _dir) = warden(ROBO_PLAN, &analytics_profile(port, "json", ""));
    let mut alice = Ua::udp("alice", w.port);
    let invite = alice.invite_with("12025550123", "", "Feature-Caps: *;+sip.608\r\n");
    assert_eq!(outcome(&mut alice, &invite).1.status(), 608);
    let asked = seen.lock().expect("log").clone();
    let (line, body) = asked[0].split_once('\n').expect("body");
    assert!(line.starts_with("POST /judge "), "{line}");
    let query: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(
        (query["from"].as_str(), query["to"].as_str()),
        (Some("alice"), Some("12025550123"))
    );
    let rows = decisions(&w, 1);
    assert!(rows[0].2.contains("robocall campaign 17"), "{rows:?}");
    // One call, one decision counted: the engine's block, not also the local checks' pass.
    let (status, stats) = http_get(&format!(
        "http://127.0.0.1:{}/screening/stats",
        w.admin_port
    ));
    assert_eq!(status, 200, "{stats}");
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("JSON");
    assert_eq!(
        stats,
        serde_json::json!([{"decision": "block", "check": "analytics", "count": 1}])
    );
}

/// Warden's media address in an SDP body.
fn sdp_target(body: &[u8]) -> std::net::SocketAddr {
    let text = String::from_utf8_lossy(body);
    let ip = text
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .expect("c= line")
        .trim();
    let port = text
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .expect("m= line");
    format!("{ip}:{port}").parse().expect("address")
}

/// Listen to the challenge and tell which code it read: the RTP payloads are Warden's own
/// PCMU encoding of the shipped digit prompts, so each digit is found by its frames.
fn hear_code(rtp: &UdpSocket) -> String {
    use warden_media::prompt::{decode, encode};
    let pcmu = warden_media::codec::by_name("PCMU", 8000).expect("PCMU");
    let digit_frames: Vec<Vec<Vec<u8>>> = (0..10)
        .map(|d| {
            let path = format!("{}/prompts/digit_{d}.wav", env!("CARGO_MANIFEST_DIR"));
            let audio =
                decode("digit", std::fs::read(path).expect("prompt file")).expect("decodes");
            encode(&audio, pcmu, &Default::default())
                .expect("encodes")
                .frames
        })
        .collect();
    let mut heard: Vec<Vec<u8>> = Vec::new();
    let mut buf = [0u8; 2048];
    rtp.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    while let Ok(n) = rtp.recv(&mut buf) {
        heard.push(buf[12..n].to_vec());
        // The prompt has ended when nothing comes for half a second.
        rtp.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
    }
    let mut found: Vec<(usize, usize)> = Vec::new();
    for (digit, frames) in digit_frames.iter().enumerate() {
        let mut at = 0;
        while at + frames.len() <= heard.len() {
            if heard[at..at + frames.len()] == frames[..] {
                found.push((at, digit));
                at += frames.len();
            } else {
                at += 1;
            }
        }
    }
    found.sort();
    assert_eq!(
        found.len(),
        4,
        "four digits read in {} frames: {found:?}",
        heard.len()
    );
    found
        .iter()
        .map(|(_, d)| char::from(b'0' + *d as u8))
        .collect()
}

/// Key `code` in as RFC 4733 telephone-events (payload type 101) toward `to`.
fn key_in(rtp: &UdpSocket, to: std::net::SocketAddr, code: &str) {
    let mut seq: u16 = 1;
    for (i, d) in code.chars().enumerate() {
        let event = d.to_digit(10).expect("digit") as u8;
        let ts = 8000u32 + i as u32 * 1600;
        for (n, end) in [
            (1u16, false),
            (2, false),
            (3, false),
            (4, true),
            (4, true),
            (4, true),
        ] {
            let mut p = vec![0x80, 101, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
            if n == 1 {
                p[1] |= 0x80; // marker on an event's first packet
            }
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[4..8].copy_from_slice(&ts.to_be_bytes());
            let duration = n * 160;
            p.extend_from_slice(&[event, if end { 0x80 | 10 } else { 10 }]);
            p.extend_from_slice(&duration.to_be_bytes());
            rtp.send_to(&p, to).expect("send event");
            seq += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(60));
    }
}

#[test]
fn a_challenged_caller_keys_in_the_code_read_to_it_and_the_value_joins_its_allow_list() {
    let plan = "[[rule]]\nname = \"out\"\ndo = [{ screen = \"careful\" }, { reject = 480 }]\n";
    let (w, _dir) = warden(
        plan,
        &format!(
            "{NO_RATE}[screening.profiles.careful]\nchecks = [\"new_country\"]\non_new_country = \"challenge\"\n"
        ),
    );
    let mut alice = Ua::udp("alice", w.port);
    let offer = |port: u16| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        )
    };
    let call = |ua: &mut Ua, number: &str, wrong: bool| -> u16 {
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let invite = ua.invite_sdp(number, &offer(rtp.local_addr().expect("addr").port()));
        let progress = loop {
            let r = ua.recv_response();
            if r.call_id() != invite.call_id() {
                continue; // the previous call's final response, retransmitted
            }
            assert!(r.status() < 200, "challenged, not answered: {}", r.status());
            if r.status() == 183 {
                break r;
            }
        };
        let mut code = hear_code(&rtp);
        if wrong {
            let first = (code.as_bytes()[0] - b'0' + 1) % 10;
            code.replace_range(0..1, &first.to_string());
        }
        key_in(&rtp, sdp_target(progress.body()), &code);
        outcome(ua, &invite).1.status()
    };
    assert_eq!(
        call(&mut alice, "0049301234", false),
        480,
        "the right code lets the call go on"
    );
    let (ok, text) = w.ctl(&["screening", "list"]);
    assert!(
        ok && text.contains("country:DE"),
        "Germany joined alice's allow-list: {text}"
    );
    assert_eq!(
        call(&mut alice, "0033123456789", true),
        603,
        "a wrong code is refused"
    );
    let rows = decisions(&w, 2);
    assert!(rows.iter().all(|r| r.0 == "challenge"), "{rows:?}");
}

#[test]
fn a_603_plus_from_downstream_reaches_the_caller_unchanged() {
    let mut carrier = Ua::udp("carrier", 9);
    let plan = format!(
        "[[rule]]\nname = \"trunk\"\ndo = [{{ bridge = \"sip:${{callee}}@127.0.0.1:{}\" }}]\n",
        carrier.local.port()
    );
    let (w, _dir) = warden(&plan, NO_RATE);
    carrier.server = w.addr();
    let mut alice = Ua::udp("alice", w.port);
    let invite = alice.invite("12025550123");
    let incoming = carrier.recv_request("INVITE");
    let reason = "SIP;cause=603;text=\"v=analytics1;url=https://redress.example.com\";location=TN";
    let mut blocked = Response::to_request(&incoming, 603, "Network Blocked");
    blocked.set_to_tag("carrier-tag");
    blocked.push_header("Reason", reason).expect("header");
    carrier.send(&Message::Response(blocked));
    let (_, last) = outcome(&mut alice, &invite);
    assert_eq!(
        (last.status(), last.reason().as_str()),
        (603, "Network Blocked")
    );
    assert_eq!(last.header("Reason").as_deref(), Some(reason));
}

/// Prints Warden's log when the test fails, so the failure explains itself.
struct LogOnPanic<'a>(&'a Warden);

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- warden log\n{}", self.0.log());
        }
    }
}

/// A test STI-CA and an SP certificate (TNAuthList SPC "1234") with the SP's signing key.
fn sti_pki() -> (String, String, ring::signature::EcdsaKeyPair) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Test STI-CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA");
    let sp_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut sp = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    sp.distinguished_name
        .push(rcgen::DnType::CommonName, "SHAKEN 1234");
    // TNAuthList: SEQUENCE { [0] { IA5String "1234" } }
    let tn_auth_list = vec![0x30, 0x08, 0xa0, 0x06, 0x16, 0x04, b'1', b'2', b'3', b'4'];
    sp.custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 1, 26],
            tn_auth_list,
        ));
    let sp_cert = sp.signed_by(&sp_key, &ca).expect("SP certificate");
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &sp_key.serialize_der(),
        &ring::rand::SystemRandom::new(),
    )
    .expect("signing key");
    (ca.pem(), sp_cert.pem(), key)
}

/// An Identity header for a call from `orig` to `dest`, issued `age_s` ago.
fn passport(
    key: &ring::signature::EcdsaKeyPair,
    x5u: &str,
    orig: &str,
    dest: &str,
    age_s: u64,
) -> String {
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - age_s;
    let header = format!(r#"{{"alg":"ES256","ppt":"shaken","typ":"passport","x5u":"{x5u}"}}"#);
    let claims = format!(
        r#"{{"attest":"A","dest":{{"tn":["{dest}"]}},"iat":{iat},"orig":{{"tn":"{orig}"}},"origid":"4437c7eb-8f7a-4f0e-a863-f53a0e60251a"}}"#
    );
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = key
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .expect("sign");
    format!(
        "{input}.{};info=<{x5u}>;alg=ES256;ppt=shaken",
        URL_SAFE_NO_PAD.encode(sig.as_ref())
    )
}

/// An HTTPS server on loopback answering every GET with `body` (Cache-Control: max-age=600),
/// with a certificate for 127.0.0.1 from its own web CA: (port, web CA PEM, requests seen).
fn https_server(body: String) -> (u16, String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let web_ca_key = rcgen::KeyPair::generate().expect("key");
    let mut web_ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    web_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    web_ca
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test web CA");
    let web_ca = rcgen::CertifiedIssuer::self_signed(web_ca, web_ca_key).expect("web CA");
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&server_key, &web_ca)
        .expect("server certificate");
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![server.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
    )
    .expect("TLS config");
    let config = std::sync::Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, stream);
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\nCache-Control: max-age=600\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (port, web_ca.pem(), hits)
}

#[test]
fn stir_shaken_is_verified_against_a_certificate_fetched_over_https() {
    let (ca_pem, sp_pem, key) = sti_pki();
    let (port, web_ca_pem, fetches) = https_server(sp_pem);
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_path, web_ca_path) = (dir.path().join("sti-ca.pem"), dir.path().join("web-ca.pem"));
    std::fs::write(&ca_path, ca_pem).expect("write");
    std::fs::write(&web_ca_path, web_ca_pem).expect("write");
    let mut callee = Ua::udp("callee", 9);
    let plan = format!(
        "[[rule]]\nname = \"in\"\ndo = [{{ screen = \"shaken\" }}, {{ bridge = \"sip:${{callee}}@127.0.0.1:{}\" }}]\n",
        callee.local.port()
    );
    let config = format!(
        "{NO_RATE}[screening.stir]\ntrust_anchors = [\"{}\"]\nx5u_ports = [{port}]\nfetch_ca_file = \"{}\"\n\
         [screening.profiles.shaken]\nchecks = []\nstir = true\non_stir_failure = \"block\"\n",
        ca_path.display(),
        web_ca_path.display()
    );
    let (w, _plan_dir) = warden(&plan, &config);
    let _log = LogOnPanic(&w);
    callee.server = w.addr();
    let x5u = format!("https://127.0.0.1:{port}/sp.pem");
    let mut caller = Ua::udp("12025550100", w.port);
    let mut call = |identity: Option<String>| -> (Response, Option<Request>) {
        let extra = identity
            .map(|i| format!("Identity: {i}\r\n"))
            .unwrap_or_default();
        let invite = caller.invite_with("12025550123", &media().1, &extra);
        // Either the callee is rung (then it answers 486), or the caller is refused. (The
        // callee also sees the ACKs of earlier calls' 486s: skipped.)
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match callee.try_recv(left) {
                Some(Message::Request(incoming)) if incoming.method().as_str() == "INVITE" => {
                    callee.answer(&incoming, 486, false);
                    return (outcome(&mut caller, &invite).1, Some(incoming));
                }
                Some(_) => continue,
                None => break,
            }
        }
        (outcome(&mut caller, &invite).1, None)
    };
    // Valid: the callee gets verstat=TN-Validation-Passed in From.
    let (last, rung) = call(Some(passport(&key, &x5u, "12025550100", "12025550123", 2)));
    let rung = rung.expect("a verified call is bridged");
    let from = rung.header("From").expect("From");
    assert!(from.contains(";verstat=TN-Validation-Passed"), "{from}");
    assert_eq!(last.status(), 486);
    // Again: verified from the cached certificate.
    let (_, rung) = call(Some(passport(&key, &x5u, "12025550100", "12025550123", 1)));
    assert!(rung.is_some());
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "Cache-Control honoured"
    );
    // Stale, forged, and for another number: refused with the RFC 8224 code.
    let (last, rung) = call(Some(passport(
        &key,
        &x5u,
        "12025550100",
        "12025550123",
        120,
    )));
    assert_eq!(
        (last.status(), last.reason().as_str(), rung.is_none()),
        (403, "Stale Date", true)
    );
    let (_, _, other_key) = sti_pki();
    let (last, _) = call(Some(passport(
        &other_key,
        &x5u,
        "12025550100",
        "12025550123",
        1,
    )));
    assert_eq!(
        (last.status(), last.reason().as_str()),
        (438, "Invalid Identity Header")
    );
    let (last, _) = call(Some(passport(&key, &x5u, "12025550199", "12025550123", 1)));
    assert_eq!(last.status(), 438, "orig is not the caller");
    // Unsigned: passes (the default policy), marked No-TN-Validation.
    let (_, rung) = call(None);
    let from = rung.expect("bridged").header("From").expect("From");
    assert!(from.contains(";verstat=No-TN-Validation"), "{from}");
    let rows = decisions(&w, 6);
    assert!(rows[2].2.contains("stir: 403"), "{rows:?}");
}

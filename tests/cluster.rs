//! Two Warden nodes sharing one real Redis (`[cluster]`): a quota holds across both, even
//! for a burst of simultaneous calls; live calls count on every node, renewed while they
//! last and freed when their node dies; Redis down follows `cluster.on_redis_down`.
//!
//! Needs `redis-server` (Debian's `redis-server` package). Without it these tests say so
//! and pass, unless WARDEN_REQUIRE_REDIS is set (CI sets it).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ua::Dialog;
use common::{Ua, Warden, metric, nonce_of};
use warden::registrar::digest::{Algorithm, answer};
use warden::sip::message::Request;

/// A private redis-server on a free loopback port, killed when dropped.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// None when redis-server is not installed (and not required).
    fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut redis = Redis { port, child: None };
        if !redis.spawn() {
            assert!(
                std::env::var_os("WARDEN_REQUIRE_REDIS").is_none(),
                "redis-server is not installed but WARDEN_REQUIRE_REDIS is set"
            );
            eprintln!("redis-server not installed: cluster tests skipped");
            return None;
        }
        Some(redis)
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            return false;
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command("PING").as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One inline command; the first line of the reply.
    fn command(&self, line: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        text.lines().next().map(str::to_owned)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node named `node` on `redis`, with `plan` as its dialplan and `extra` TOML (its
/// [screening] tables) after the [cluster] table.
fn node(node: &str, redis: &Redis, plan: &str, cluster: &str, extra: &str) -> Warden {
    let dir = std::env::temp_dir().join(format!(
        "warden-cluster-plan-{}-{node}-{}.toml",
        std::process::id(),
        redis.port
    ));
    std::fs::write(&dir, plan).expect("write plan");
    let w = Warden::start_with(&format!(
        "[dialplan]\nfile = \"{}\"\n[cluster]\nnode = \"{node}\"\nredis_url = \"{}\"\n{cluster}\n{extra}",
        dir.display(),
        redis.url()
    ));
    wait_for_redis(&w, 1.0);
    w
}

/// Wait until the node's /metrics says Redis is up (1) or down (0).
fn wait_for_redis(w: &Warden, up: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(w, "warden_cluster_redis_up", None) != Some(up) {
        assert!(
            Instant::now() < deadline,
            "warden_cluster_redis_up never became {up}: {}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const SCREEN_THEN_480: &str =
    "[[rule]]\nname = \"out\"\ndo = [{ screen = \"tight\" }, { reject = 480 }]\n";
const NO_RATE: &str = "[screening]\ncalls_per_source_per_second = 0\n";

/// Call the conference room `100` through `ua`'s node: answered and ACKed, the call goes on.
fn join_room(ua: &mut Ua, w: &Warden) -> (Request, Dialog) {
    let invite = ua.invite("100");
    let ok = ua.final_response();
    assert_eq!(ok.status(), 200, "{}", w.log());
    let mut dialog = ua.dialog_from(&invite, &ok);
    ua.in_dialog(&mut dialog, "ACK", None);
    (invite, dialog)
}

/// The final status of `invite`, ACKing a failure.
fn final_status(ua: &mut Ua, invite: &Request) -> u16 {
    loop {
        let r = ua.final_response();
        if r.call_id() != invite.call_id() {
            continue;
        }
        if r.status() >= 300 {
            ua.ack_failure(invite, &r);
        }
        return r.status();
    }
}

#[test]
fn a_quota_holds_across_two_nodes_even_for_simultaneous_calls() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let profile =
        format!("{NO_RATE}[screening.profiles.tight]\nchecks = [\"quotas\"]\ncalls_per_hour = 3\n");
    let a = node("a", &redis, SCREEN_THEN_480, "", &profile);
    let b = node("b", &redis, SCREEN_THEN_480, "", &profile);
    // Alternating nodes, one call at a time: three pass (480 after screening), then 603.
    let mut codes = Vec::new();
    for i in 0..5 {
        let port = if i % 2 == 0 { a.port } else { b.port };
        let mut alice = Ua::udp("alice", port);
        let invite = alice.invite("02079460000");
        codes.push(final_status(&mut alice, &invite));
    }
    assert_eq!(codes, [480, 480, 480, 603, 603], "{}", a.log());

    // Another caller fires twelve INVITEs at once, six at each node: the count is taken
    // atomically in Redis, so exactly three pass.
    let mut phones: Vec<(Ua, Request)> = (0..12)
        .map(|i| {
            let mut ua = Ua::udp("carol", if i % 2 == 0 { a.port } else { b.port });
            let invite = ua.invite("02079460001");
            (ua, invite)
        })
        .collect();
    let passed = phones
        .iter_mut()
        .map(|(ua, invite)| final_status(ua, invite))
        .filter(|code| *code == 480)
        .count();
    assert_eq!(passed, 3, "a quota of 3 lets exactly 3 through");
    let blocked = |w: &Warden| {
        metric(
            w,
            "warden_screening_decisions_total",
            Some(("decision", "block")),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(blocked(&a) + blocked(&b), 2.0 + 9.0);
}

#[test]
fn live_calls_count_on_every_node_and_a_dead_nodes_calls_stop_counting() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let plan = "[[rule]]\nname = \"room\"\ndo = [{ screen = \"one\" }, { conference = \"r\" }]\n";
    let profile = format!(
        "{NO_RATE}[screening.profiles.one]\nchecks = [\"concurrency\"]\nmax_concurrent = 1\nmax_concurrent_off_hours = 1\n"
    );
    let mut a = node("a", &redis, plan, "lease_s = 3", &profile);
    let b = node("b", &redis, plan, "lease_s = 3", &profile);
    let mut alice = Ua::udp("alice", a.port);
    let _call = join_room(&mut alice, &a);
    // Longer than a lease: node a renews it, so the call still counts on node b.
    std::thread::sleep(Duration::from_millis(4_500));
    let mut again = Ua::udp("alice", b.port);
    let second = again.invite("100");
    assert_eq!(
        final_status(&mut again, &second),
        603,
        "one live call on node a: a second on node b is over the limit"
    );
    // Node a dies with the call up. Within a lease its slot is free on node b.
    a.stop();
    std::thread::sleep(Duration::from_millis(3_500));
    let third = again.invite("100");
    assert_eq!(
        final_status(&mut again, &third),
        200,
        "the dead node's call no longer counts"
    );
}

#[test]
fn redis_down_refuses_with_503_or_screens_locally_as_configured() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let profile =
        format!("{NO_RATE}[screening.profiles.tight]\nchecks = [\"quotas\"]\ncalls_per_hour = 1\n");
    let strict = node(
        "strict",
        &redis,
        SCREEN_THEN_480,
        "on_redis_down = \"refuse\"",
        &profile,
    );
    let lenient = node("lenient", &redis, SCREEN_THEN_480, "", &profile);
    redis.stop();
    let call = |w: &Warden, user: &str| {
        let mut ua = Ua::udp(user, w.port);
        let invite = ua.invite("02079460000");
        final_status(&mut ua, &invite)
    };
    assert_eq!(
        call(&strict, "dave"),
        503,
        "refuse: 503 while Redis is down"
    );
    assert_eq!(
        call(&lenient, "erin"),
        480,
        "local: screened on the node's own counts"
    );
    assert_eq!(
        call(&lenient, "erin"),
        603,
        "and the node's own quota holds"
    );
    for w in [&strict, &lenient] {
        wait_for_redis(w, 0.0);
        assert!(metric(w, "warden_cluster_redis_failures_total", None).unwrap_or(0.0) >= 1.0);
    }
    assert!(
        strict.log().contains("Redis unreachable"),
        "{}",
        strict.log()
    );
    // Redis back (empty: it kept nothing): the nodes reconnect on their own, and say so
    // within seconds with no call needed.
    assert!(redis.spawn());
    wait_for_redis(&strict, 1.0);
    assert_eq!(call(&strict, "dave"), 480, "{}", strict.log());
}

/// Wait until `w` lists a registration of `aor` taken by node `by`.
fn wait_for_registration(w: &Warden, aor: &str, by: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = common::get(&w.admin("/registrations"));
        let rows: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let found = rows
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["aor"] == aor && r["node"] == by);
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{aor} registered on {by} never reached this node: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_phone_registered_on_one_node_is_called_through_another_directly_or_along_its_path() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let plan = "[[rule]]\nname = \"users\"\ndo = [{ bridge = \"user:${callee}\" }]\n";
    let a = node("a", &redis, plan, "", "");
    let b = node("b", &redis, plan, "", "");

    // Bob registers on node a; alice's call enters node b and rings bob from node b.
    let mut bob = Ua::udp("bob", a.port);
    assert_eq!(bob.register(300).status(), 200);
    wait_for_registration(&b, "bob", "a");
    let mut alice = Ua::udp("alice", b.port);
    let invite = alice.invite("bob");
    // (Bob's test phone answers only toward node a; the INVITE from node b is the proof.)
    let ringing = bob.recv_request("INVITE");
    let via = ringing.header("Via").unwrap_or_default();
    assert!(
        via.contains(&format!(":{}", b.port)),
        "sent by node b: {via}"
    );
    assert_eq!(
        ringing.uri().to_string(),
        bob.contact().trim_matches(['<', '>'])
    );
    alice.cancel(&invite);

    // Carol registers on node a through an edge proxy that adds a Path (RFC 3327): node
    // b sends her calls to the edge, with the Path as the Route set.
    let edge = std::net::UdpSocket::bind("127.0.0.1:0").expect("edge");
    edge.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let edge_port = edge.local_addr().expect("addr").port();
    let mut carol = Ua::udp("carol", a.port);
    let path = format!("<sip:127.0.0.1:{edge_port};lr>");
    carol.send_raw(&format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
         From: <sip:carol@127.0.0.1>;tag=c1\r\nTo: <sip:carol@127.0.0.1>\r\n\
         Call-ID: reg-carol\r\nCSeq: 1 REGISTER\r\nContact: {contact}\r\nExpires: 300\r\n\
         Path: {path}\r\nSupported: path\r\nContent-Length: 0\r\n\r\n",
        via = carol.via(),
        contact = carol.contact(),
    ));
    let ok = carol.recv_response();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.header("Path").as_deref(), Some(path.as_str()), "echoed");
    wait_for_registration(&b, "carol", "a");
    let _ = alice.invite("carol");
    let mut buf = [0u8; 8192];
    let (n, _) = edge
        .recv_from(&mut buf)
        .expect("the INVITE reaches the edge");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("INVITE sip:carol@"), "{text}");
    assert!(
        text.contains(&format!("Route: {path}\r\n")),
        "along the Path: {text}"
    );
    // A MESSAGE for her takes the same way.
    alice.send_raw(&format!(
        "MESSAGE sip:carol@127.0.0.1 SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
         From: <sip:alice@127.0.0.1>;tag=m1\r\nTo: <sip:carol@127.0.0.1>\r\n\
         Call-ID: msg-carol\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\
         Content-Length: 5\r\n\r\nhello",
        via = alice.via(),
    ));
    let message = loop {
        let (n, _) = edge
            .recv_from(&mut buf)
            .expect("the MESSAGE reaches the edge");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("MESSAGE ") {
            break text;
        }
    };
    assert!(
        message.contains(&format!("Route: {path}\r\n")),
        "along the Path: {message}"
    );
}

#[test]
fn a_block_list_entry_added_on_one_node_blocks_the_next_call_on_the_other() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let profile = format!("{NO_RATE}[screening.profiles.tight]\nchecks = [\"lists\"]\n");
    let a = node("a", &redis, SCREEN_THEN_480, "", &profile);
    let b = node("b", &redis, SCREEN_THEN_480, "", &profile);
    let call = |w: &Warden| {
        let mut ua = Ua::udp("alice", w.port);
        let invite = ua.invite("00882123456");
        final_status(&mut ua, &invite)
    };
    assert_eq!(call(&b), 480, "not blocked yet");
    let (ok, text) = a.ctl(&[
        "screening",
        "add",
        "block",
        "prefix",
        "+882",
        "--note",
        "IRSF",
    ]);
    assert!(ok, "{text}");
    // Within a second on node b.
    let deadline = Instant::now() + Duration::from_secs(1);
    while !b.ctl(&["screening", "lists"]).1.contains("882") {
        assert!(Instant::now() < deadline, "node b never got the entry");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(call(&b), 603, "blocked on node b");
    // Removed on node b: node a lets the call through again.
    let (ok, text) = b.ctl(&["screening", "del", "block", "prefix", "882"]);
    assert!(ok, "{text}");
    let deadline = Instant::now() + Duration::from_secs(1);
    while a.ctl(&["screening", "lists"]).1.contains("882") {
        assert!(Instant::now() < deadline, "node a kept the entry");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(call(&a), 480);
}

#[test]
fn a_dead_nodes_open_record_is_closed_once_by_a_survivor_and_closed_records_are_streamed() {
    let Some(redis) = Redis::start() else {
        return;
    };
    // One CDR database for both nodes (SQLite here; PostgreSQL in production).
    let db = tempfile::tempdir().expect("tempdir");
    let cdr = format!(
        "{NO_RATE}[cdr]\nurl = \"sqlite://{}\"\n",
        db.path().join("cdr.sqlite").display()
    );
    let plan = "[[rule]]\nname = \"room\"\ndo = [{ conference = \"r\" }]\n";
    let mut a = node("a", &redis, plan, "lease_s = 3", &cdr);
    let b = node("b", &redis, plan, "lease_s = 3", &cdr);
    let mut alice = Ua::udp("alice", a.port);
    let (invite, _dialog) = join_room(&mut alice, &a);
    let call_id = invite.call_id().expect("call-id");
    let record = |w: &Warden| {
        common::cdrs(w, &format!("a_call_id={call_id}"))
            .into_iter()
            .next()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while record(&b).is_none() {
        assert!(Instant::now() < deadline, "node a's record never stored");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        record(&b).is_some_and(|r| r["end_reason"].is_null()),
        "open"
    );

    a.stop(); // kill -9 mid-call
    let deadline = Instant::now() + Duration::from_secs(15);
    let closed = loop {
        if let Some(r) = record(&b).filter(|r| !r["end_reason"].is_null()) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor never closed it: {}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(closed["end_reason"], "node-lost");
    assert_eq!(closed["instance"], "a");
    // Node a comes back and replays its journal: the record stays closed, closed once.
    a.restart();
    std::thread::sleep(Duration::from_secs(2));
    let after = record(&b).expect("still there");
    assert_eq!(after["end_reason"], "node-lost");
    assert_eq!(after["rev"], closed["rev"], "not closed a second time");

    // Closed records reach the billing stream once stored: the survivor's close too.
    assert_eq!(redis.command("XLEN warden:cdrs").as_deref(), Some(":1"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut bob = Ua::udp("bob", b.port);
    let (_, mut dialog) = join_room(&mut bob, &b);
    bob.in_dialog(&mut dialog, "BYE", None);
    loop {
        let streamed = redis
            .command("XLEN warden:cdrs")
            .and_then(|l| l.trim_start_matches(':').parse::<u64>().ok())
            .unwrap_or(0);
        if streamed >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing streamed: {}", b.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(&b, "warden_cluster_cdr_stream_appended_total", None).unwrap_or(0.0) >= 1.0);
}

#[test]
fn a_country_first_called_through_one_node_is_known_to_the_other() {
    let Some(redis) = Redis::start() else {
        return;
    };
    // Node a only flags a first call abroad; node b blocks one.
    let profile = |act: &str| {
        format!(
            "{NO_RATE}[screening.profiles.tight]\nchecks = [\"new_country\"]\non_new_country = \"{act}\"\n"
        )
    };
    let a = node("a", &redis, SCREEN_THEN_480, "", &profile("flag"));
    let b = node("b", &redis, SCREEN_THEN_480, "", &profile("block"));
    let call = |w: &Warden, number: &str| {
        let mut ua = Ua::udp("alice", w.port);
        let invite = ua.invite(number);
        final_status(&mut ua, &invite)
    };
    assert_eq!(
        call(&a, "0033123456789"),
        480,
        "France, first time: flagged only"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while redis
        .command("SISMEMBER warden:seen:{alice@127.0.0.1} c:FR")
        .as_deref()
        != Some(":1")
    {
        assert!(Instant::now() < deadline, "France never became known");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        call(&b, "0033123456789"),
        480,
        "France is known on node b too"
    );
    assert_eq!(
        call(&b, "0049301234567"),
        603,
        "Germany is new: node b blocks it"
    );
}

#[test]
fn repeated_calls_count_over_both_nodes() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let profile = format!(
        "{NO_RATE}[screening.profiles.tight]\nchecks = [\"repeats\"]\nrepeat_limit = 2\nrepeat_window_s = 60\n"
    );
    let a = node("a", &redis, SCREEN_THEN_480, "", &profile);
    let b = node("b", &redis, SCREEN_THEN_480, "", &profile);
    let call = |w: &Warden| {
        let mut ua = Ua::udp("alice", w.port);
        let invite = ua.invite("0033123456789");
        final_status(&mut ua, &invite)
    };
    assert_eq!(call(&a), 480, "first call");
    assert_eq!(call(&b), 480, "second call, on the other node");
    // Node a alone has seen one call to the number; the cluster has seen two.
    assert_eq!(call(&a), 603, "a third call within the window is blocked");
}

#[test]
fn a_user_added_once_registers_through_every_node_and_a_replay_through_another_is_refused() {
    let Some(redis) = Redis::start() else {
        return;
    };
    // The users live in the database both nodes share (SQLite here; PostgreSQL in
    // production).
    let db = tempfile::tempdir().expect("tempdir");
    let shared = format!(
        "{NO_RATE}[screening.profiles.tight]\n[registrar]\nauth = true\n[cdr]\nurl = \"sqlite://{}\"\n",
        db.path().join("cdr.sqlite").display()
    );
    let a = node("a", &redis, SCREEN_THEN_480, "", &shared);
    let b = node("b", &redis, SCREEN_THEN_480, "", &shared);
    let (ok, text) = a.user(&["add", "dave"], "correct horse\n");
    assert!(ok && text.contains("every node reads it"), "{text}");
    let credentials = |challenge: &warden::sip::message::Response| {
        let nonce = nonce_of(challenge, "WWW-Authenticate", Algorithm::Md5);
        let (realm, password) = ("warden", "correct horse");
        answer(
            &nonce,
            realm,
            Algorithm::Md5,
            "dave",
            password,
            "REGISTER",
            "sip:127.0.0.1",
        )
    };
    // Node b was not told on its command line: the announcement makes it read the users.
    let mut dave_b = Ua::udp("dave", b.port);
    let deadline = Instant::now() + Duration::from_secs(3);
    let auth = loop {
        let challenge = dave_b.register(600);
        assert_eq!(challenge.status(), 401);
        let auth = credentials(&challenge);
        if dave_b.register_with(600, Some(&auth)).status() == 200 {
            break auth;
        }
        assert!(Instant::now() < deadline, "node b never learnt of dave");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The same credentials again, through the other node: challenged afresh (its nonces
    // are its own), never let in; and through the same node: a nonce count taken twice.
    let mut replay_a = Ua::udp("dave", a.port);
    let refused = replay_a.register_with(600, Some(&auth));
    assert_eq!(refused.status(), 401, "a replay through node a");
    assert!(
        refused
            .headers("WWW-Authenticate")
            .iter()
            .all(|h| h.contains("stale=true")),
        "a phone failing over re-authenticates without asking its user"
    );
    let mut replay_b = Ua::udp("dave", b.port);
    assert_eq!(
        replay_b.register_with(600, Some(&auth)).status(),
        401,
        "a replay through node b"
    );
    let (ok, text) = a.user(&["remove", "dave"], "");
    assert!(ok, "{text}");
}

/// A REGISTER for alice with a wrong password, relayed by an edge proxy (`edge`, on
/// 127.0.0.1) for a phone at `origin`: the phone's Via below the proxy's.
fn relayed_register(edge: &mut Ua, origin: &str) -> Option<u16> {
    let text = edge.register_text(600, Some(
        "Digest username=\"alice\", realm=\"warden\", nonce=\"x\", uri=\"sip:127.0.0.1\", response=\"0\"",
    ));
    let phone_via = format!(
        "Via: SIP/2.0/UDP {origin}:5060;branch=z9hG4bK{}\r\n",
        common::rand_hex()
    );
    let text = text.replacen("Max-Forwards", &format!("{phone_via}Max-Forwards"), 1);
    edge.send_raw(&text);
    match edge.try_recv(Duration::from_millis(500))? {
        warden::sip::message::Message::Response(r) => Some(r.status()),
        warden::sip::message::Message::Request(_) => None,
    }
}

#[test]
fn a_source_banned_on_one_node_is_banned_on_the_other_even_behind_the_edge() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let config = "[screening.profiles.tight]\n[registrar]\nauth = true\n[[registrar.users]]\nusername = \"alice\"\npassword = \"wonderland\"\n\
         [guard]\nexempt = []\nedge_proxies = [\"127.0.0.1/32\"]\nauth_failures = 2\n";
    let a = node("a", &redis, SCREEN_THEN_480, "", config);
    let b = node("b", &redis, SCREEN_THEN_480, "", config);
    let (mut edge_a, mut edge_b) = (Ua::udp("edge", a.port), Ua::udp("edge", b.port));
    // Two wrong passwords from 127.0.0.3 through the edge: node a bans the phone, not
    // the proxy, and answers it 403 so the proxy neither waits nor fails over.
    assert_eq!(relayed_register(&mut edge_a, "127.0.0.3"), Some(401));
    assert_eq!(relayed_register(&mut edge_a, "127.0.0.3"), Some(401));
    assert_eq!(relayed_register(&mut edge_a, "127.0.0.3"), Some(403));
    assert_eq!(
        relayed_register(&mut edge_a, "127.0.0.4"),
        Some(401),
        "another phone"
    );
    // Node b takes the ban on within a second, behind the edge and face to face.
    let deadline = Instant::now() + Duration::from_secs(2);
    while relayed_register(&mut edge_b, "127.0.0.3") != Some(403) {
        assert!(Instant::now() < deadline, "node b never banned 127.0.0.3");
    }
    let mut direct = Ua::udp_from("alice", b.port, "127.0.0.3");
    direct.send_raw(&direct.options());
    assert!(
        direct.try_recv(Duration::from_millis(300)).is_none(),
        "dropped unread on node b"
    );
    assert_eq!(relayed_register(&mut edge_b, "127.0.0.4"), Some(401));
    // Lifted on node a: lifted on node b too.
    let (ok, text) = a.ctl(&["unban", "127.0.0.3"]);
    assert!(ok, "{text}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while relayed_register(&mut edge_b, "127.0.0.3") != Some(401) {
        assert!(Instant::now() < deadline, "node b kept the ban");
    }
}

#[test]
fn calls_per_source_count_over_both_nodes() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let config = "[screening]\ncalls_per_source_per_second = 2\n[screening.profiles.tight]\n";
    let a = node("a", &redis, SCREEN_THEN_480, "", config);
    let b = node("b", &redis, SCREEN_THEN_480, "", config);
    let call = |w: &Warden| {
        let mut ua = Ua::udp("alice", w.port);
        let invite = ua.invite("0033123456789");
        final_status(&mut ua, &invite)
    };
    // Three calls within one second (they take milliseconds each): start as one begins.
    let clock = || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or((0, 0), |d| (d.as_secs(), d.subsec_millis()))
    };
    while clock().1 > 100 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = clock().0;
    assert_eq!(call(&a), 480);
    assert_eq!(call(&b), 480);
    // Node a has seen two calls from 127.0.0.1 this second; the cluster has seen three.
    assert_eq!(call(&a), 503, "the third call within the second is refused");
    assert_eq!(clock().0, second, "the three calls took more than a second");
}

#[test]
fn a_node_starts_while_the_shared_database_is_away() {
    let Some(redis) = Redis::start() else {
        return;
    };
    // Nothing listens on port 9: the cluster's users cannot be read, the records spool.
    let away = "[screening.profiles.tight]\n[cdr]\nurl = \"postgres://warden:warden@127.0.0.1:9/warden\"\n";
    let w = node("a", &redis, SCREEN_THEN_480, "", away);
    let mut ua = Ua::udp("alice", w.port);
    assert_eq!(ua.register(600).status(), 200, "serving all the same");
}

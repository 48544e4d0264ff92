//! Call records, metrics and operations against a real Warden process: calls over loopback
//! leave exactly one closed record each, in SQLite and in a real PostgreSQL, through a
//! kill -9, a graceful shutdown and a database outage; /metrics counts them.
//!
//! The PostgreSQL tests need `WARDEN_TEST_POSTGRES_URL` (a role that may create databases)
//! and, for the outage, `WARDEN_TEST_POSTGRES_STOP` / `_START` (shell commands); without
//! them they print why and pass, unless `WARDEN_REQUIRE_POSTGRES=1` (what .ci/run sets).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Dialog, Ua, Warden, cdrs, closed_records, establish, get, hang_up, metric};
use warden::cdr::Record;
use warden::cdr::store::{Filter, Store};
use warden::sip::message::Message;

fn by_code(records: &[serde_json::Value], code: i64) -> Vec<&serde_json::Value> {
    records.iter().filter(|r| r["final_code"] == code).collect()
}

/// Bob refuses alice's call with `code`.
fn refused_call(alice: &mut Ua, bob: &mut Ua, code: u16) {
    alice.invite("bob");
    let incoming = bob.recv_request("INVITE");
    bob.answer(&incoming, code, false);
    bob.recv_request("ACK");
    assert_eq!(alice.recv_response().status(), code);
}

/// Alice cancels while bob's phone rings.
fn cancelled_call(alice: &mut Ua, bob: &mut Ua) {
    let invite = alice.invite("bob");
    let incoming = bob.recv_request("INVITE");
    bob.answer(&incoming, 180, false);
    assert_eq!(alice.recv_response().status(), 180);
    alice.cancel(&invite);
    let mut codes = [
        alice.recv_response().status(),
        alice.recv_response().status(),
    ];
    codes.sort();
    assert_eq!(codes, [200, 487]);
    let cancel = bob.recv_request("CANCEL");
    bob.ok(&cancel);
    bob.answer(&incoming, 487, false);
    bob.recv_request("ACK");
}

/// Both parties get Warden's BYE and answer it.
fn both_hear_bye(alice: &mut Ua, bob: &mut Ua) {
    for ua in [alice, bob] {
        let bye = ua.recv_request("BYE");
        ua.ok(&bye);
    }
}

#[test]
fn every_call_leaves_one_record_metrics_count_them_and_ctl_operates_them() {
    let w = Warden::start();
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let (mut ad, _) = establish(&w, &mut alice, &mut bob);
    hang_up(&mut alice, &mut ad, &mut bob);
    refused_call(&mut alice, &mut bob, 486);
    cancelled_call(&mut alice, &mut bob);

    // A live call, listed, then hung up by the operator.
    establish(&w, &mut alice, &mut bob);
    let (ok, text) = w.ctl(&["calls"]);
    assert!(ok, "{text}");
    let row = text.lines().nth(1).expect("one live call");
    assert!(
        row.contains("confirmed") && row.contains("alice") && row.contains("bob"),
        "{text}"
    );
    let id = row.split_whitespace().next().unwrap().to_owned();
    let (ok, text) = w.ctl(&["hangup", &id]);
    assert!(ok, "{text}");
    both_hear_bye(&mut alice, &mut bob);
    let (ok, text) = w.ctl(&["hangup", "999"]);
    assert!(!ok && text.contains("404"), "{text}");

    let records = closed_records(&w, 4);
    assert_eq!(records.len(), 4, "{records:#?}");
    let answered = by_code(&records, 200);
    assert_eq!(answered.len(), 2);
    let reasons: HashSet<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["hangup_side"].as_str().unwrap(),
                r["end_reason"].as_str().unwrap(),
            )
        })
        .collect();
    let expected: HashSet<(&str, &str)> = [
        ("caller", "normal"),
        ("callee", "declined"),
        ("caller", "cancelled"),
        ("warden", "admin hangup"),
    ]
    .into();
    assert_eq!(reasons, expected);
    for r in &answered {
        let (received, answered, ended) = (
            r["received_ms"].as_i64().unwrap(),
            r["answered_ms"].as_i64().unwrap(),
            r["ended_ms"].as_i64().unwrap(),
        );
        assert!(received <= answered && answered <= ended, "{r}");
        assert_eq!(r["duration_ms"].as_i64(), Some(ended - answered));
        assert_eq!(
            (r["a_codec"].as_str(), r["b_codec"].as_str()),
            (Some("PCMU"), Some("PCMU"))
        );
        assert_eq!(r["transcoded"], false);
        assert!(r["b_call_id"].as_str().is_some_and(|b| b != r["a_call_id"]));
    }
    let cancelled = by_code(&records, 487);
    assert!(
        cancelled[0]["ringing_ms"].is_i64(),
        "it rang: {}",
        cancelled[0]
    );

    // Filters and exports, through the API and ctl.
    assert_eq!(cdrs(&w, "code=486").len(), 1);
    assert_eq!(cdrs(&w, "caller=nobody").len(), 0);
    let (ok, csv) = w.ctl(&["cdr", "--csv"]);
    assert!(ok, "{csv}");
    assert_eq!(csv.lines().count(), 5, "header and four records: {csv}");
    assert!(csv.starts_with("id,rev,instance"), "{csv}");
    let (ok, table) = w.ctl(&["cdr", "--code", "486"]);
    assert!(
        ok && table.lines().count() == 2 && table.contains("declined"),
        "{table}"
    );

    // Metrics agree with the calls made.
    assert_eq!(metric(&w, "warden_calls_total", None), Some(4.0));
    assert_eq!(metric(&w, "warden_calls_answered_total", None), Some(2.0));
    assert_eq!(metric(&w, "warden_calls_active", None), Some(0.0));
    for (code, count) in [("200", 2.0), ("486", 1.0), ("487", 1.0)] {
        let attempts = metric(&w, "warden_call_attempts_total", Some(("code", code)));
        assert_eq!(attempts, Some(count), "code {code}");
    }
    assert_eq!(metric(&w, "warden_cdr_database_up", None), Some(1.0));
    assert_eq!(metric(&w, "warden_cdr_queue_depth", None), Some(0.0));
    assert_eq!(metric(&w, "warden_registrations", None), Some(1.0));
    assert!(metric(&w, "warden_relay_rtp_packets_total", None).is_some());

    let (ok, text) = w.ctl(&["registrations"]);
    assert!(ok && text.contains("bob") && text.contains("UDP"), "{text}");
    let (ok, text) = w.ctl(&["reload"]);
    assert!(ok && text.contains("reloaded"), "{text}");
    assert_eq!(get(&w.admin("/readyz")).0, 200);
}

#[test]
fn a_crash_during_live_calls_leaves_exactly_one_closed_record_per_call() {
    let mut w = Warden::start();
    let mut bob = Ua::udp("bob", w.port);
    let mut callers: Vec<(Ua, Dialog)> = Vec::new();
    let mut call_ids = HashSet::new();
    for n in 0..3 {
        let mut alice = Ua::udp(&format!("alice{n}"), w.port);
        let (ad, _) = establish(&w, &mut alice, &mut bob);
        call_ids.insert(ad.call_id.clone());
        callers.push((alice, ad));
    }
    let mut done = Ua::udp("done", w.port);
    let (mut dd, _) = establish(&w, &mut done, &mut bob);
    call_ids.insert(dd.call_id.clone());
    hang_up(&mut done, &mut dd, &mut bob);
    // Warden ends that call when bob's answer to its BYE arrives: wait for it.
    assert_eq!(closed_records(&w, 1).len(), 1);

    w.restart(); // SIGKILL, then start again on the same data
    let records = closed_records(&w, 4);
    assert!(cdrs(&w, "open=true").is_empty(), "no record left open");
    assert_eq!(records.len(), 4, "{records:#?}");
    let ids: HashSet<String> = records
        .iter()
        .map(|r| r["a_call_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, call_ids, "one record per call, none twice");
    let recovered: Vec<_> = records
        .iter()
        .filter(|r| r["end_reason"] == "crash-recovered")
        .collect();
    assert_eq!(recovered.len(), 3);
    assert!(recovered.iter().all(|r| r["answered_ms"].is_i64()));
    assert_eq!(
        records
            .iter()
            .filter(|r| r["end_reason"] == "normal")
            .count(),
        1
    );
}

/// Run `work` to its end on a runtime of its own (the tests themselves are synchronous).
fn block_on<F: std::future::Future>(work: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(work)
}

/// The records in the database at `url`, read directly (the server may be gone).
fn stored(url: &str) -> Vec<Record> {
    block_on(async {
        let store = Store::new(url).unwrap();
        let filter = Filter {
            limit: Some(10_000),
            ..Filter::default()
        };
        let records = store.query(&filter).await.expect("query the CDR database");
        store.close().await;
        records
    })
}

#[test]
fn sigterm_refuses_new_calls_lets_live_ones_run_then_ends_them_and_flushes() {
    let mut w = Warden::start_with("[server]\nshutdown_grace_s = 2\nretry_after_s = 120\n");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    establish(&w, &mut alice, &mut bob);
    let url = format!("sqlite://{}", w.dir.join("cdr.sqlite").display());
    let asked = Instant::now();
    w.terminate();
    std::thread::sleep(Duration::from_millis(300));
    let mut carol = Ua::udp("carol", w.port);
    carol.invite("bob");
    let refusal = carol.final_response();
    assert_eq!(refusal.status(), 503);
    assert_eq!(refusal.header("Retry-After").as_deref(), Some("120"));
    both_hear_bye(&mut alice, &mut bob);
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "the live call had its grace time"
    );
    let status = w.wait_exit(Duration::from_secs(15)).expect("Warden exits");
    assert!(status.success(), "{status:?}");
    let records = stored(&url);
    assert_eq!(records.len(), 2, "{records:#?}");
    let call = records.iter().find(|r| r.final_code == Some(200)).unwrap();
    assert_eq!(call.end_reason.as_deref(), Some("shutdown"));
    assert_eq!(call.hangup_side.as_deref(), Some("warden"));
    let refused = records.iter().find(|r| r.final_code == Some(503)).unwrap();
    assert_eq!(refused.caller, "carol");
    assert_eq!(refused.end_reason.as_deref(), Some("shutdown"));
    let journal = std::fs::metadata(w.dir.join("cdr.journal")).unwrap();
    assert_eq!(journal.len(), 0, "everything stored, the journal emptied");
}

/// A fresh PostgreSQL database for one test, or None (with the reason printed) when the
/// environment offers none.
fn postgres_database(test: &str) -> Option<String> {
    let Ok(admin_url) = std::env::var("WARDEN_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("WARDEN_REQUIRE_POSTGRES").is_err(),
            "WARDEN_REQUIRE_POSTGRES is set but WARDEN_TEST_POSTGRES_URL is not"
        );
        println!("skipped {test}: set WARDEN_TEST_POSTGRES_URL to run it against PostgreSQL");
        return None;
    };
    let name = format!("warden_test_{:08x}", rand::random::<u32>());
    block_on(async {
        use sqlx::Executor;
        let pool = sqlx::PgPool::connect(&admin_url)
            .await
            .expect("connect to WARDEN_TEST_POSTGRES_URL");
        pool.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create a test database");
        pool.close().await;
    });
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}

fn shell(command_var: &str) {
    let command = std::env::var(command_var)
        .unwrap_or_else(|_| panic!("{command_var} must say how to do it"));
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .status()
        .expect("run the command");
    assert!(status.success(), "{command_var} ({command}) failed");
}

/// Calls alice makes to bob and hangs up; their Call-IDs.
fn calls(w: &Warden, alice: &mut Ua, bob: &mut Ua, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let (mut ad, _) = establish(w, alice, bob);
            hang_up(alice, &mut ad, bob);
            ad.call_id
        })
        .collect()
}

/// One test, so that stopping PostgreSQL cannot hit another test's calls.
#[test]
fn records_reach_postgresql_survive_a_crash_and_its_outage_none_lost_none_twice() {
    let Some(url) = postgres_database("the PostgreSQL tests") else {
        return;
    };
    let outage = std::env::var("WARDEN_TEST_POSTGRES_STOP").is_ok();
    let mut w = Warden::start_with(&format!("[cdr]\nurl = \"{url}\"\n"));
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    // A crash with a live call: closed as crash-recovered, in PostgreSQL.
    let (crashed, _) = establish(&w, &mut alice, &mut bob);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cdrs(&w, "open=true").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the open record reaches PostgreSQL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    w.restart();
    let records = closed_records(&w, 1);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["end_reason"], "crash-recovered");
    assert_eq!(records[0]["a_call_id"], crashed.call_id.as_str());
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let mut made = vec![crashed.call_id];
    made.extend(calls(&w, &mut alice, &mut bob, 2));
    assert_eq!(closed_records(&w, 3).len(), 3);
    if !outage {
        println!("outage part skipped: WARDEN_TEST_POSTGRES_STOP/START not set");
        return;
    }
    shell("WARDEN_TEST_POSTGRES_STOP");
    // Calls go on while the database is away; their records wait in the journal.
    made.extend(calls(&w, &mut alice, &mut bob, 5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&w, "warden_cdr_database_up", None) != Some(0.0) {
        assert!(Instant::now() < deadline, "the outage shows in /metrics");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(metric(&w, "warden_cdr_spool_bytes", None).unwrap_or(0.0) > 0.0);
    assert!(metric(&w, "warden_cdr_queue_depth", None).unwrap_or(0.0) >= 5.0);
    shell("WARDEN_TEST_POSTGRES_START");
    let records = closed_records(&w, 8);
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r["a_call_id"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 8, "every call's record arrived: {records:#?}");
    assert_eq!(unique.len(), 8, "none twice");
    assert_eq!(unique, made.iter().map(String::as_str).collect());
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&w, "warden_cdr_queue_depth", None) != Some(0.0) {
        assert!(Instant::now() < deadline, "the queue drains");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Straight from PostgreSQL: one row per call.
    assert_eq!(stored(&url).len(), 8);
}

/// Two answered calls, then `first`, a pause, and `second`: both legs of both calls hear
/// BYE, both records close as `shutdown`, Warden exits 0 without a panic.
fn two_signals_end_live_calls(
    config: &str,
    first: libc::c_int,
    pause: Duration,
    second: libc::c_int,
) {
    let mut w = Warden::start_with(config);
    let url = format!("sqlite://{}", w.dir.join("cdr.sqlite").display());
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    establish(&w, &mut alice, &mut bob);
    establish(&w, &mut alice, &mut bob);
    w.signal(first);
    std::thread::sleep(pause);
    w.signal(second);
    std::thread::sleep(Duration::from_millis(100));
    w.signal(second); // any further signal changes nothing
    both_hear_bye(&mut alice, &mut bob);
    both_hear_bye(&mut alice, &mut bob);
    let status = w.wait_exit(Duration::from_secs(15)).expect("Warden exits");
    let log = w.log();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    let records = stored(&url);
    assert_eq!(records.len(), 2, "{records:#?}");
    for r in &records {
        assert_eq!(r.final_code, Some(200), "{r:#?}");
        assert_eq!(r.end_reason.as_deref(), Some("shutdown"), "{r:#?}");
        assert!(r.ended_ms.is_some(), "{r:#?}");
    }
}

#[test]
fn a_second_sigterm_ends_live_calls_at_once_and_exits_cleanly() {
    two_signals_end_live_calls(
        "[server]\nshutdown_grace_s = 60\n",
        libc::SIGTERM,
        Duration::from_secs(1),
        libc::SIGTERM,
    );
}

#[test]
fn a_second_sigint_ends_live_calls_at_once_and_exits_cleanly() {
    two_signals_end_live_calls(
        "[server]\nshutdown_grace_s = 60\n",
        libc::SIGINT,
        Duration::from_secs(1),
        libc::SIGINT,
    );
}

#[test]
fn a_second_signal_as_the_grace_time_ends_exits_cleanly() {
    two_signals_end_live_calls(
        "[server]\nshutdown_grace_s = 1\n",
        libc::SIGTERM,
        Duration::from_secs(1),
        libc::SIGTERM,
    );
}

#[test]
fn when_the_journal_cannot_be_written_new_calls_get_503_and_an_alarm_shows() {
    // /dev/full takes the open and refuses every write (ENOSPC), as a full disk does.
    let w = Warden::start_with("[cdr]\njournal = \"/dev/full\"\n");
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    // The first call was admitted before its record failed to reach the journal.
    let (mut ad, _) = establish(&w, &mut alice, &mut bob);
    let mut carol = Ua::udp("carol", w.port);
    carol.invite("bob");
    let refused = carol.final_response();
    assert_eq!(refused.status(), 503);
    let warning = refused.header("Warning").unwrap_or_default();
    assert!(warning.contains("call records cannot be kept"), "{warning}");
    assert_eq!(metric(&w, "warden_cdr_records_failing", None), Some(1.0));
    assert!(metric(&w, "warden_cdr_records_held", None).is_some_and(|n| n >= 2.0));
    assert!(metric(&w, "warden_cdr_journal_append_failures_total", None).is_some_and(|n| n >= 1.0));
    assert!(
        w.log().contains("call records cannot be kept"),
        "{}",
        w.log()
    );
    // The live call goes on and ends normally.
    hang_up(&mut alice, &mut ad, &mut bob);
    // An emergency call is never refused for it.
    carol.invite("112");
    let emergency = carol.final_response();
    let warning = emergency.header("Warning").unwrap_or_default();
    assert!(!warning.contains("call records"), "{warning}");
}

#[test]
fn a_full_spool_during_a_database_outage_refuses_new_calls_and_loses_no_record() {
    // Nothing listens on port 9: the database is away from the start.
    let w = Warden::start_with(
        "[cdr]\nurl = \"postgres://warden:x@127.0.0.1:9/warden\"\nspool_max_bytes = 4000\n",
    );
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    let mut answered = 0;
    for _ in 0..20 {
        assert_eq!(bob.register(600).status(), 200);
        alice.invite("bob");
        // Past the cap the answer is 503 at once; below it bob's phone rings.
        let early = loop {
            match alice.try_recv(Duration::from_millis(300)) {
                Some(Message::Response(r)) if r.status() == 100 => continue,
                Some(Message::Response(r)) => break Some(r.status()),
                _ => break None,
            }
        };
        if early == Some(503) {
            break;
        }
        let incoming = bob.recv_request("INVITE");
        bob.answer(&incoming, 486, false);
        bob.recv_request("ACK");
        assert_eq!(alice.final_response().status(), 486);
        answered += 1;
    }
    assert!(
        (1..20).contains(&answered),
        "{answered} calls before the cap"
    );
    assert_eq!(metric(&w, "warden_cdr_spool_alarm", None), Some(1.0));
    assert_eq!(metric(&w, "warden_cdr_records_failing", None), Some(1.0));
    assert!(w.log().contains("past 80%"), "{}", w.log());
    assert_eq!(metric(&w, "warden_cdr_records_lost_total", None), Some(0.0));
}

#[test]
fn records_past_the_retention_term_are_purged_and_ctl_exports_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("cdr.sqlite").display());
    let day_ms = 86_400_000;
    let now = warden::clock::unix_now_ms() as i64;
    let record = |id: &str, received_ms: i64, closed: bool| Record {
        id: id.into(),
        rev: 1,
        a_call_id: format!("{id}@test"),
        received_ms,
        end_reason: closed.then(|| "normal".into()),
        ended_ms: closed.then_some(received_ms + 1000),
        ..Record::default()
    };
    block_on(async {
        let store = Store::new(&url).unwrap();
        store.migrate().await.unwrap();
        let old = [
            record("old-closed", now - 40 * day_ms, true),
            // Open records are never purged: crash recovery closes them first.
            record("old-open", now - 40 * day_ms, false),
            record("recent", now - 2 * day_ms, true),
        ];
        store.upsert(&old).await.unwrap();
        store.close().await;
    });
    let w = Warden::start_with(&format!("[cdr]\nurl = \"{url}\"\nretention_days = 30\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored(&url).iter().any(|r| r.id == "old-closed") {
        assert!(Instant::now() < deadline, "not purged: {}", w.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!w.log().contains("cannot purge"), "{}", w.log());
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    assert_eq!(bob.register(600).status(), 200);
    refused_call(&mut alice, &mut bob, 486);
    closed_records(&w, 2); // the recent one and this call's

    // The export: oldest first, every record, as JSON lines and as CSV.
    let (ok, json) = w.ctl(&["cdr", "export", "--format", "json"]);
    assert!(ok, "{json}");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect();
    let ids: Vec<&str> = lines.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(lines.len(), 3, "{json}");
    assert_eq!(&ids[..2], ["old-open", "recent"], "oldest first");
    assert_eq!(lines[2]["final_code"], 486);
    let since = jiff::Timestamp::from_millisecond(now - 3 * day_ms)
        .unwrap()
        .to_string();
    let (ok, csv) = w.ctl(&["cdr", "export", "--since", &since]);
    assert!(ok, "{csv}");
    assert_eq!(csv.lines().count(), 3, "a header and two records: {csv}");
    assert!(csv.lines().nth(1).unwrap().starts_with("recent,"), "{csv}");
    let (ok, bad) = w.ctl(&["cdr", "export", "--since", "last tuesday"]);
    assert!(!ok && bad.contains("RFC 3339"), "{bad}");
}

#[test]
fn an_export_pages_through_every_record_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("cdr.sqlite").display());
    block_on(async {
        let store = Store::new(&url).unwrap();
        store.migrate().await.unwrap();
        // 2,500 records, ten to a millisecond: pages must split ties by id.
        let records: Vec<Record> = (0..2500)
            .map(|i| Record {
                id: format!("{i:05}"),
                rev: 1,
                received_ms: 1_000_000 + i / 10,
                ..Record::default()
            })
            .collect();
        store.upsert(&records).await.unwrap();
        let (mut seen, mut after) = (Vec::new(), None);
        loop {
            let page = store.export_page(0, i64::MAX, after, 1000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.received_ms, last.id.clone()));
            seen.extend(page.into_iter().map(|r| r.id));
        }
        let expected: Vec<String> = records.into_iter().map(|r| r.id).collect();
        assert_eq!(seen, expected);
        store.close().await;
    });
}

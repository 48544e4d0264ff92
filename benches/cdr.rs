//! Call record costs: what the signalling loop pays to journal a call's records (against
//! serialising them alone, in the same run), and how fast the writer stores them in SQLite
//! (four guarded upserts a call, against writing each call once at its end, the way CDR
//! modules that write on hang-up do).
//!
//! Then durability: an `fdatasync` after every update (the strict way) against the
//! journal's group commit (one sync per `cdr.fsync_interval_ms`, 10 ms, on its own thread).
//!
//! Each call makes 4 record updates (start, ringing, answer, end), as a bridged call does.
//! `cargo bench --bench cdr`; WARDEN_BENCH_CALLS (default 20000).

#[path = "../media/benches/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Instant;

use warden::cdr::Record;
use warden::cdr::journal::{Journal, Syncer};
use warden::cdr::store::Store;

/// A call's four updates, with fields the size real ones have.
fn call_records(n: u64) -> Vec<Record> {
    let base = Record {
        id: format!("{:032x}", u128::from(n) * 0x9e37_79b9_7f4a_7c15),
        instance: "warden-1".into(),
        boot: "3462b6b691930f6b".into(),
        a_call_id: format!("{n}-4095@192.0.2.10"),
        caller: format!("+4420794{:05}", n % 100_000),
        callee: "+442079460000".into(),
        source: "192.0.2.10:5060".into(),
        received_ms: 1_795_000_000_000 + n as i64,
        rule: Some("user by name".into()),
        screening: Some("allow".into()),
        screening_reason: Some("no rule objected".into()),
        ..Record::default()
    };
    let ringing = Record {
        rev: 2,
        ringing_ms: Some(base.received_ms + 80),
        ..base.clone()
    };
    let answered = Record {
        rev: 3,
        answered_ms: Some(base.received_ms + 5_000),
        b_call_id: Some(format!("{:016x}", n)),
        final_code: Some(200),
        final_reason: Some("OK".into()),
        ..ringing.clone()
    };
    let ended = Record {
        rev: 4,
        ended_ms: Some(base.received_ms + 65_000),
        duration_ms: Some(60_000),
        hangup_side: Some("caller".into()),
        end_reason: Some("normal".into()),
        a_codec: Some("PCMA".into()),
        b_codec: Some("PCMA".into()),
        a_packets: Some(3000),
        a_lost: Some(2),
        a_jitter_us: Some(1200),
        b_packets: Some(3000),
        b_lost: Some(0),
        b_jitter_us: Some(900),
        ..answered.clone()
    };
    vec![Record { rev: 1, ..base }, ringing, answered, ended]
}

fn main() {
    if common::only_listing_or_testing() {
        return;
    }
    let calls: u64 = common::setting("WARDEN_BENCH_CALLS", 20_000);
    let records: Vec<Vec<Record>> = (0..calls).map(call_records).collect();
    let dir = tempfile::tempdir().expect("tempdir");

    // The loop's cost: one append per update (the worst case: one update per loop turn).
    let journal = Journal::open(&dir.path().join("cdr.journal")).expect("journal");
    let t = Instant::now();
    for call in &records {
        for r in call {
            journal.append(std::slice::from_ref(r)).expect("append");
        }
    }
    let append = t.elapsed();
    let t = Instant::now();
    for call in &records {
        for r in call {
            black_box(serde_json::to_vec(r).expect("serialise"));
        }
    }
    let serialise = t.elapsed();
    let updates = (calls * 4) as f64;
    println!(
        "journal append: {:.2} us per update ({:.2} us serialising alone): {:.2}x serialisation",
        append.as_secs_f64() * 1e6 / updates,
        serialise.as_secs_f64() * 1e6 / updates,
        append.as_secs_f64() / serialise.as_secs_f64()
    );

    // Durability: a sync after each update, on this disk, for a sample of updates.
    let synced = Journal::open(&dir.path().join("synced.journal")).expect("journal");
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("synced.journal"))
        .expect("journal file");
    let sample: Vec<&Record> = records.iter().flatten().take(2000).collect();
    let t = Instant::now();
    for r in &sample {
        synced.append(std::slice::from_ref(*r)).expect("append");
        file.sync_data().expect("fdatasync");
    }
    let per_update_sync = t.elapsed().as_secs_f64() * 1e6 / sample.len() as f64;
    let append_us = append.as_secs_f64() * 1e6 / updates;
    println!(
        "fsync after every update: {per_update_sync:.1} us per update ({:.0}x the append alone)",
        per_update_sync / append_us
    );
    // Group commit: the same appends with the syncer at 10 ms, the loop never waiting.
    let grouped = Journal::open(&dir.path().join("grouped.journal")).expect("journal");
    let syncer = Syncer::start(&grouped, std::time::Duration::from_millis(10)).expect("syncer");
    let t = Instant::now();
    for call in &records {
        for r in call {
            grouped.append(std::slice::from_ref(r)).expect("append");
            syncer.appended();
        }
    }
    let grouped_append = t.elapsed();
    let stats = syncer.stats.clone();
    drop(syncer);
    let syncs = stats
        .syncs
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1);
    let sync_us = stats.sync_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / syncs as f64;
    println!(
        "group commit (10 ms): {:.2} us per update on the loop ({:.2}x the append without it); \
         {syncs} syncs of {sync_us:.0} us for {updates} updates",
        grouped_append.as_secs_f64() * 1e6 / updates,
        grouped_append.as_secs_f64() / append.as_secs_f64()
    );

    // The writer's capacity: the journal into SQLite, 500 per transaction.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("cdr.sqlite").display());
        let store = Store::new(&url).expect("store");
        store.migrate().await.expect("migrate");
        let flat: Vec<Record> = records.iter().flatten().cloned().collect();
        let t = Instant::now();
        for batch in flat.chunks(500) {
            store.upsert(batch).await.expect("upsert");
        }
        let upsert = t.elapsed();
        // Baseline: each call's final version alone, into an empty table (one insert a call).
        let url = format!("sqlite://{}", dir.path().join("plain.sqlite").display());
        let plain = Store::new(&url).expect("store");
        plain.migrate().await.expect("migrate");
        let finals: Vec<Record> = records.iter().filter_map(|c| c.last().cloned()).collect();
        let t = Instant::now();
        for batch in finals.chunks(500) {
            plain.upsert(batch).await.expect("insert");
        }
        let insert = t.elapsed();
        let per_s = updates / upsert.as_secs_f64();
        println!(
            "SQLite store: {:.0} updates/s ({:.0} calls/s at 4 updates a call); \
             written once at the end instead: {:.0} calls/s ({:.2}x)",
            per_s,
            per_s / 4.0,
            calls as f64 / insert.as_secs_f64(),
            (calls as f64 / insert.as_secs_f64()) / (per_s / 4.0)
        );
        store.close().await;
        plain.close().await;
    });
}

//! The call record stream for billing: every record, once closed and stored in the CDR
//! database, is appended to a capped Redis Stream (`warden:cdrs`, one JSON `record` field
//! per entry), so a billing consumer (XREAD, or XREADGROUP for a group) takes them as calls
//! end. PostgreSQL stays the record of truth: the stream is a feed, and a consumer that
//! finds a gap (the stream capped, or Redis lost) reconciles from the database by id.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::Redis;
use crate::cdr::Record;

pub const STREAM: &str = "warden:cdrs";

/// Records held for the stream while Redis is away, at most; older ones are dropped first
/// (and counted), the database has them all.
const HELD_MAX: usize = 100_000;

/// Records appended to the stream, and those dropped while Redis was away too long.
#[derive(Debug, Default)]
pub struct StreamStatus {
    pub appended: AtomicU64,
    pub dropped: AtomicU64,
}

/// Append closed records in the order they come, capping the stream near `max_len`.
pub async fn run(
    redis: Arc<Redis>,
    mut records: mpsc::UnboundedReceiver<Vec<Record>>,
    max_len: usize,
    status: Arc<StreamStatus>,
) {
    let mut held: VecDeque<Record> = VecDeque::new();
    loop {
        if held.is_empty() {
            match records.recv().await {
                Some(batch) => held.extend(batch),
                None => return,
            }
        }
        while let Ok(batch) = records.try_recv() {
            held.extend(batch);
        }
        while held.len() > HELD_MAX {
            held.pop_front();
            status.dropped.fetch_add(1, Ordering::Relaxed);
        }
        let batch: Vec<Record> = held.iter().take(500).cloned().collect();
        let mut pipe = redis::pipe();
        for r in &batch {
            let json = serde_json::to_string(r).unwrap_or_default();
            pipe.cmd("XADD")
                .arg(STREAM)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len)
                .arg("*")
                .arg("record")
                .arg(json)
                .ignore();
        }
        // A batch of 500 may take longer than one request.
        let sent = redis.run("cdr stream", &pipe, redis.timeout() * 4).await;
        match sent {
            Ok(()) => {
                held.drain(..batch.len());
                status
                    .appended
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

//! The CDR writer task: reads the journal behind the signalling loop and stores its records
//! in batches; while the database is away it waits and retries (the journal holds them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::journal::Reader;
use super::store::Store;

/// What the writer reports (the admin API's /metrics and /readyz read it).
#[derive(Debug, Default)]
pub struct Status {
    /// Records stored since start (earlier runs' journalled ones among them).
    pub written: AtomicU64,
    /// Records of this run stored (the queue depth is what it journalled minus these).
    pub written_this_run: AtomicU64,
    /// Failed database writes since start.
    pub failures: AtomicU64,
    /// Journal bytes not yet stored (the spool's size).
    pub backlog_bytes: AtomicU64,
    /// The last write (or connection) worked.
    pub database_up: AtomicBool,
    /// Records left open by an earlier run were closed (or there were none).
    pub recovered: AtomicBool,
}

/// How the writer runs.
pub struct Writer {
    pub store: Store,
    pub reader: Reader,
    pub status: Arc<Status>,
    /// Rung by the loop after each append.
    pub wake: Arc<Notify>,
    /// Set to true at shutdown: store what is left (if the database is there) and stop.
    pub stop: watch::Receiver<bool>,
    /// This run's identity, for crash recovery.
    pub instance: String,
    pub boot: String,
    /// Records per transaction.
    pub batch: usize,
    /// How long a wake-up waits before reading, so that one transaction carries what a
    /// busy loop journals meanwhile (the records are durable in the journal already).
    pub gather: Duration,
    /// In a cluster: where closed records go once stored (the billing stream).
    pub closed: Option<tokio::sync::mpsc::UnboundedSender<Vec<super::Record>>>,
}

/// Once this much of the journal is stored, the writer catches up at once so that the
/// journal can be emptied (at 600 calls/s about a second's records).
const EMPTY_AT_BYTES: u64 = 1 << 20;

/// How one turn of the writer went.
enum Turn {
    /// Records were stored and more wait, or the journal is to be emptied: go on at once.
    Stored,
    /// Every record there was is stored: gather the next ones.
    StoredAll,
    /// Nothing to store: wait for the loop's next append.
    CaughtUp,
    /// Something failed (and was said): wait, then try again.
    Failed,
}

impl Writer {
    pub async fn run(mut self) {
        let mut delay = Duration::from_millis(200);
        loop {
            let stopping = *self.stop.borrow();
            match self.turn().await {
                Turn::Stored => delay = Duration::from_millis(200),
                Turn::StoredAll if stopping => {}
                Turn::CaughtUp if stopping => return,
                Turn::CaughtUp | Turn::StoredAll => {
                    delay = Duration::from_millis(200);
                    let woken = tokio::select! {
                        _ = self.wake.notified() => true,
                        _ = self.stop.changed() => false,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                    };
                    // One transaction per gathering, not one per loop turn: at 600 calls/s
                    // the loop appends a few records a millisecond.
                    if woken && !self.gather.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(self.gather) => {}
                            _ = self.stop.changed() => {}
                        }
                    }
                }
                Turn::Failed => {
                    if stopping || self.pause(&mut delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// Store the next batch from the journal; once caught up, close what a crash left
    /// open (once) and empty the journal.
    async fn turn(&mut self) -> Turn {
        if let Err(e) = self.store.migrate().await {
            self.failed(&e.to_string(), "cannot prepare the CDR database");
            return Turn::Failed;
        }
        let unread = self.reader.backlog();
        let (records, next) = match self.reader.read(self.batch) {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the CDR journal");
                return Turn::Failed;
            }
        };
        if records.is_empty() {
            // Caught up: everything journalled by earlier runs is stored, so records they
            // left open can be closed now without a late replay reopening them.
            if !self.status.recovered.load(Ordering::Relaxed) {
                match self
                    .store
                    .recover(&self.instance, &self.boot, now_ms())
                    .await
                {
                    Ok(n) => {
                        if n > 0 {
                            tracing::warn!(
                                records = n,
                                "closed call records a crash left open (end reason crash-recovered)"
                            );
                        }
                        self.status.recovered.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.failed(&e.to_string(), "cannot close records a crash left open");
                        return Turn::Failed;
                    }
                }
            }
            if let Err(e) = self.reader.truncate_if_done() {
                tracing::warn!(error = %e, "cannot empty the CDR journal");
            }
            self.status
                .backlog_bytes
                .store(self.reader.backlog(), Ordering::Relaxed);
            return Turn::CaughtUp;
        }
        if let Err(e) = self.store.upsert(&records).await {
            self.failed(
                &e.to_string(),
                "cannot store call records; they wait in the journal",
            );
            return Turn::Failed;
        }
        if !self.status.database_up.swap(true, Ordering::Relaxed) {
            tracing::info!(db = %self.store.display, "CDR database reachable; storing records");
        }
        let read_all = next - self.reader.stored() >= unread;
        self.reader.commit(next);
        if let Some(closed) = &self.closed {
            let done: Vec<super::Record> = records
                .iter()
                .filter(|r| r.end_reason.is_some())
                .cloned()
                .collect();
            if !done.is_empty() {
                let _ = closed.send(done);
            }
        }
        self.status
            .written
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let ours = records.iter().filter(|r| r.boot == self.boot).count();
        self.status
            .written_this_run
            .fetch_add(ours as u64, Ordering::Relaxed);
        self.status
            .backlog_bytes
            .store(self.reader.backlog(), Ordering::Relaxed);
        // What was appended while this transaction ran waits for the next gathering, not
        // a transaction of its own, until enough is stored that the journal should be
        // emptied: then the writer stores on until it catches up.
        match read_all && self.reader.stored() < EMPTY_AT_BYTES {
            true => Turn::StoredAll,
            false => Turn::Stored,
        }
    }

    fn failed(&self, error: &str, what: &str) {
        self.status.failures.fetch_add(1, Ordering::Relaxed);
        self.status
            .backlog_bytes
            .store(self.reader.backlog(), Ordering::Relaxed);
        // Said once per outage, not once per retry.
        if self.status.database_up.swap(false, Ordering::Relaxed)
            || self.status.failures.load(Ordering::Relaxed) == 1
        {
            tracing::error!(db = %self.store.display, journal_bytes = self.reader.backlog(), error, "{what}");
        }
    }

    /// Wait before retrying (doubling up to 5 s); true when told to stop meanwhile.
    async fn pause(&mut self, delay: &mut Duration) -> bool {
        let stop = tokio::select! {
            _ = tokio::time::sleep(*delay) => false,
            _ = self.stop.changed() => true,
        };
        *delay = (*delay * 2).min(Duration::from_secs(5));
        stop
    }
}

fn now_ms() -> i64 {
    crate::clock::unix_now_ms() as i64
}

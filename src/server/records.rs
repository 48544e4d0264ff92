//! Call records between the core and the journal: held for the turn, journalled before
//! the turn's messages leave, with the alarms that refuse new calls when they cannot be kept.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::cdr::Record;
use crate::cdr::journal::{Journal, Syncer};
use crate::cdr::writer::Status as CdrStatus;

/// Call records on their way to the journal: from the core to disk before the loop goes
/// on, made durable by the syncer, then the CDR writer is woken to store them. When the
/// journal cannot be written they wait here (bounded), and new calls are refused.
pub(super) struct Records {
    journal: Journal,
    pub(super) syncer: Option<Syncer>,
    pub(super) pending: Vec<Record>,
    /// Journalled this run (the metrics' queue depth is this less what was stored).
    pub(super) journalled: u64,
    wake: Arc<Notify>,
    pub(super) status: Arc<CdrStatus>,
    spool_max_bytes: u64,
    /// Why records cannot be kept now, if they cannot (the alarm).
    pub(super) failing: Option<String>,
    /// The spool is past 80% of its cap.
    pub(super) spool_alarm: bool,
    pub(super) append_failures: u64,
    /// Records given up after `MAX_HELD` waited for a journal that stayed unwritable.
    pub(super) lost: u64,
}

/// Records held in memory at most while the journal cannot be written (about 60 MiB).
const MAX_HELD: usize = 100_000;

impl Records {
    pub fn new(
        journal: Journal,
        syncer: Option<Syncer>,
        wake: Arc<Notify>,
        status: Arc<CdrStatus>,
        spool_max_bytes: u64,
    ) -> Records {
        Records {
            journal,
            syncer,
            pending: Vec::new(),
            journalled: 0,
            wake,
            status,
            spool_max_bytes,
            failing: None,
            spool_alarm: false,
            append_failures: 0,
            lost: 0,
        }
    }

    /// Journal what is pending; the alarm (why new calls must be refused) when records
    /// cannot be kept, after this flush.
    pub(super) fn flush(&mut self) -> Option<String> {
        let appending = !self.pending.is_empty();
        if appending {
            // Journalled before the loop goes on: from here a crash loses none of them.
            match self.journal.append(&self.pending) {
                Ok(()) => {
                    self.journalled += self.pending.len() as u64;
                    self.pending.clear();
                    if let Some(syncer) = &self.syncer {
                        syncer.appended();
                    }
                    self.wake.notify_one();
                }
                Err(e) => {
                    self.append_failures += 1;
                    if self.pending.len() > MAX_HELD {
                        let excess = self.pending.len() - MAX_HELD;
                        self.pending.drain(..excess);
                        self.lost += excess as u64;
                        tracing::error!(
                            lost = excess,
                            "call records lost: the journal stayed unwritable while {MAX_HELD} waited"
                        );
                    }
                    self.raise(format!("cannot write the journal: {e}"));
                    return self.failing.clone();
                }
            }
        }
        // The spool and the syncer only change when something is appended; while an alarm
        // is up they are looked at every turn, to see it end. Idle turns cost nothing.
        if appending || self.failing.is_some() || self.spool_alarm {
            self.check_spool_and_sync();
        }
        self.failing.clone()
    }

    /// Raise or clear the alarms from the spool's size and the syncer's last result.
    fn check_spool_and_sync(&mut self) {
        let sync_error = self.syncer.as_ref().and_then(|s| {
            s.stats
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        });
        let spool = self.journal.len();
        let cap = self.spool_max_bytes;
        let alarm = cap > 0 && spool >= cap / 10 * 8;
        if alarm != self.spool_alarm {
            self.spool_alarm = alarm;
            match alarm {
                true => tracing::warn!(
                    spool_bytes = spool,
                    cap_bytes = cap,
                    "the call record spool is past 80% of cdr.spool_max_bytes (the database is away or slow)"
                ),
                false => tracing::info!(
                    spool_bytes = spool,
                    "the call record spool is below 80% of its cap again"
                ),
            }
        }
        match (sync_error, cap > 0 && spool >= cap) {
            (Some(e), _) => self.raise(e),
            (None, true) => self.raise(format!(
                "the spool is full ({spool} bytes, cdr.spool_max_bytes {cap})"
            )),
            (None, false) => {
                if let Some(was) = self.failing.take() {
                    tracing::info!(was = %was, "call records can be kept again; taking new calls");
                }
            }
        }
    }

    fn raise(&mut self, why: String) {
        if self.failing.as_ref() != Some(&why) {
            tracing::error!(journal = %self.journal.path().display(), held = self.pending.len(), reason = %why, "call records cannot be kept: new calls get 503 until they can");
        }
        self.failing = Some(why);
    }
}

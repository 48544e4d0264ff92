//! The CDR journal: every record update is appended here, one JSON line, before it goes
//! anywhere else, so neither a crash nor a database outage loses it (it is also the spool).
//!
//! The signalling loop appends (one `write` per loop turn, into the page cache: a killed
//! process loses nothing written), and a syncer thread makes the appends durable with one
//! `fdatasync` per `cdr.fsync_interval_ms` at most (group commit: however many appends came
//! in, one sync covers them), off the loop so a slow disk never holds up signalling. The
//! writer reads behind it into the database and empties the file once it has caught up.
//! Appends and the emptying share one lock.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::Record;

/// The appending end, shared by the loop and the writer.
#[derive(Clone)]
pub struct Journal {
    file: Arc<Mutex<Appending>>,
    path: PathBuf,
}

/// The file and its length, kept here so that asking for it costs no system call (the loop
/// and the writer ask often). Only this process writes the journal.
struct Appending {
    file: File,
    len: u64,
}

impl Journal {
    /// Open (creating it and its folder if needed) the journal at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Journal> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cdr.journal {}: {e}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cdr.journal {}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| anyhow::anyhow!("cdr.journal {}: {e}", path.display()))?
            .len();
        Ok(Journal {
            file: Arc::new(Mutex::new(Appending { file, len })),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append records, in one write.
    pub fn append(&self, records: &[Record]) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(records.len() * 640);
        for r in records {
            serde_json::to_writer(&mut bytes, r)?;
            bytes.push(b'\n');
        }
        let mut appending = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let written = appending.file.write_all(&bytes);
        appending.len = match written {
            Ok(()) => appending.len + bytes.len() as u64,
            // Part of it may have gone in (a full disk): ask the file.
            Err(_) => appending.file.metadata().map_or(appending.len, |m| m.len()),
        };
        written
    }

    /// Bytes in the journal (records not yet known to be in the database, and some that
    /// are until the writer empties it).
    pub fn len(&self) -> u64 {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader from the start of the journal.
    pub fn reader(&self) -> Reader {
        Reader {
            journal: self.clone(),
            offset: 0,
            file: std::cell::OnceCell::new(),
        }
    }
}

/// What the syncer has done, for /metrics and the loop's alarm.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub syncs: AtomicU64,
    /// Microseconds spent in `fdatasync`, summed (the cost per sync is this over `syncs`).
    pub sync_us: AtomicU64,
    pub failures: AtomicU64,
    /// The last sync's error, cleared by the next sync that works.
    pub error: Mutex<Option<String>>,
}

/// Asks the syncer thread for a sync after each append; dropping it stops the thread
/// (after a last sync).
pub struct Syncer {
    shared: Arc<(Mutex<SyncerState>, Condvar)>,
    pub stats: Arc<SyncStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct SyncerState {
    dirty: bool,
    stop: bool,
}

impl Syncer {
    /// Sync `journal` at most every `interval`, on a thread of its own.
    pub fn start(journal: &Journal, interval: Duration) -> std::io::Result<Syncer> {
        let file = journal
            .file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .file
            .try_clone()?;
        let shared: Arc<(Mutex<SyncerState>, Condvar)> = Default::default();
        let stats: Arc<SyncStats> = Default::default();
        let (thread_shared, thread_stats) = (shared.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("cdr-fsync".into())
            .spawn(move || sync_loop(&file, interval, &thread_shared, &thread_stats))?;
        Ok(Syncer {
            shared,
            stats,
            thread: Some(thread),
        })
    }

    /// Something was appended: sync it within the interval. Only the first append after
    /// a sync wakes the thread (a system call); the rest ride along with that sync.
    pub fn appended(&self) {
        let (state, wake) = &*self.shared;
        let was_dirty = std::mem::replace(
            &mut state.lock().unwrap_or_else(|e| e.into_inner()).dirty,
            true,
        );
        if !was_dirty {
            wake.notify_one();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let (state, wake) = &*self.shared;
        state.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sync_loop(
    file: &File,
    interval: Duration,
    shared: &(Mutex<SyncerState>, Condvar),
    stats: &SyncStats,
) {
    let (state, wake) = shared;
    let mut last = Instant::now() - interval;
    loop {
        {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            while !s.dirty && !s.stop {
                s = wake.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if !s.dirty {
                return; // stopping, nothing left to sync
            }
        }
        // Group commit: appends arriving during the wait ride along with this sync.
        let due = last + interval;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        state.lock().unwrap_or_else(|e| e.into_inner()).dirty = false;
        let started = Instant::now();
        let result = file.sync_data();
        last = Instant::now();
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        let took = last.duration_since(started).as_micros() as u64;
        stats.sync_us.fetch_add(took, Ordering::Relaxed);
        let mut error = stats.error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => *error = None,
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                *error = Some(format!("fsync: {e}"));
                // Retry: the records are written, only their durability is in doubt.
                state.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
            }
        }
    }
}

/// The writer's end: reads records after its offset, moves on once they are stored.
pub struct Reader {
    journal: Journal,
    offset: u64,
    /// The journal, opened for reading at the first read (it is only ever truncated in
    /// place, never replaced).
    file: std::cell::OnceCell<File>,
}

/// At most this much is read at once (bounds the writer's memory whatever the backlog).
const CHUNK: usize = 1 << 20;

impl Reader {
    /// Up to `max` whole records after the offset, and the offset just after them. A line
    /// that is not a record (cut short by a full disk) is skipped with a warning.
    pub fn read(&self, max: usize) -> std::io::Result<(Vec<Record>, u64)> {
        let len = self.journal.len();
        if len <= self.offset {
            return Ok((Vec::new(), self.offset));
        }
        let want = ((len - self.offset) as usize).min(CHUNK);
        let mut buf = vec![0; want];
        let file = match self.file.get() {
            Some(file) => file,
            None => {
                let opened = File::open(&self.journal.path)?;
                self.file.get_or_init(|| opened)
            }
        };
        let got = file.read_at(&mut buf, self.offset)?;
        buf.truncate(got);
        let mut records = Vec::new();
        let mut consumed = 0;
        for line in buf.split_inclusive(|b| *b == b'\n') {
            if records.len() >= max || line.last() != Some(&b'\n') {
                break; // a line still being written stays for the next read
            }
            consumed += line.len();
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => records.push(r),
                Err(e) => {
                    tracing::warn!(journal = %self.journal.path.display(), offset = self.offset + consumed as u64, error = %e, "skipping an unreadable CDR journal line")
                }
            }
        }
        if consumed == 0 && got == CHUNK && records.is_empty() {
            // One line longer than a chunk is no record of ours: step over it.
            consumed = got;
        }
        Ok((records, self.offset + consumed as u64))
    }

    /// The records up to `offset` are stored.
    pub fn commit(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// Bytes stored: what emptying the journal would free.
    pub fn stored(&self) -> u64 {
        self.offset
    }

    /// Bytes written but not yet stored.
    pub fn backlog(&self) -> u64 {
        self.journal.len().saturating_sub(self.offset)
    }

    /// Empty the journal when everything in it is stored (true when it did).
    pub fn truncate_if_done(&mut self) -> std::io::Result<bool> {
        let mut appending = self.journal.file.lock().unwrap_or_else(|e| e.into_inner());
        if appending.len == 0 || appending.len != self.offset {
            return Ok(false);
        }
        appending.file.set_len(0)?;
        appending.len = 0;
        self.offset = 0;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, rev: i64) -> Record {
        Record {
            id: id.into(),
            rev,
            ..Record::default()
        }
    }

    #[test]
    fn reads_behind_appends_and_empties_once_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("sub/cdr.journal")).unwrap();
        let mut reader = journal.reader();
        journal.append(&[record("a", 1), record("b", 1)]).unwrap();
        journal.append(&[record("a", 2)]).unwrap();
        let (got, next) = reader.read(2).unwrap();
        assert_eq!(got, vec![record("a", 1), record("b", 1)]);
        assert!(!reader.truncate_if_done().unwrap(), "not caught up yet");
        reader.commit(next);
        let (got, next) = reader.read(10).unwrap();
        assert_eq!(got, vec![record("a", 2)]);
        reader.commit(next);
        assert_eq!(reader.backlog(), 0);
        assert!(reader.truncate_if_done().unwrap());
        assert!(journal.is_empty());
        // Appends after emptying land at the start again.
        journal.append(&[record("c", 1)]).unwrap();
        assert_eq!(reader.read(10).unwrap().0, vec![record("c", 1)]);
    }

    #[test]
    fn appends_are_synced_in_groups_and_the_syncer_stops_with_a_last_sync() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("cdr.journal")).unwrap();
        let syncer = Syncer::start(&journal, Duration::from_millis(50)).unwrap();
        for i in 0..20 {
            journal.append(&[record(&i.to_string(), 1)]).unwrap();
            syncer.appended();
        }
        let stats = syncer.stats.clone();
        drop(syncer);
        let syncs = stats.syncs.load(Ordering::Relaxed);
        assert!((1..=3).contains(&syncs), "20 appends, {syncs} syncs");
        assert!(stats.error.lock().unwrap().is_none());
    }

    #[test]
    fn a_torn_or_foreign_line_is_left_or_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.journal");
        let journal = Journal::open(&path).unwrap();
        journal.append(&[record("a", 1)]).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"not json\n{\"id\":\"half").unwrap();
        // As at the start after a crash: the journal learns its length when opened.
        let journal = Journal::open(&path).unwrap();
        let reader = journal.reader();
        let (got, next) = reader.read(10).unwrap();
        assert_eq!(got, vec![record("a", 1)]);
        // The garbage line is consumed, the unfinished one is not.
        assert_eq!(next, journal.len() - "{\"id\":\"half".len() as u64);
    }
}

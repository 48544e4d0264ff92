//! The recordings' disk thread: every file operation of a recording (create it with its
//! sidecar, append audio, complete the header, sync and rename), so that no disk stall
//! ever holds up the recorder or the relay threads.
//!
//! A file is `NAME.part` until complete, then `NAME`: a finished recording is never
//! mistaken for one cut short, and [`repair`] completes what a crash left behind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::{Finished, FinishedSink};

/// Operations queued for the disk thread. When it is full, the recorder keeps audio back
/// (for a while, then drops it, counted) rather than wait; only opening and closing a
/// file wait for room, so that neither is ever lost.
const QUEUE: usize = 1024;
const HEADER_BYTES: u64 = 44;

/// What the recorder asks of the disk thread, in order, per recording id.
pub(super) enum Disk {
    /// Create `path`.part starting with `head` (or fail the recording with the reason),
    /// and `path`.json holding `meta`. A WAV file's header is completed at the end.
    Open {
        id: u64,
        path: PathBuf,
        meta: String,
        head: Result<Vec<u8>, String>,
        wav: bool,
    },
    /// Interleaved 16-bit samples for the end of the file.
    Append { id: u64, bytes: Vec<u8> },
    /// The recording is over: complete the file and announce it.
    Close { id: u64, seconds: f64 },
}

/// Start the disk thread; it ends, having closed everything, when the sender is dropped.
pub(super) fn start(
    sink: FinishedSink,
) -> std::io::Result<(SyncSender<Disk>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = sync_channel(QUEUE);
    let thread = std::thread::Builder::new()
        .name("warden-record-disk".into())
        .spawn(move || run(rx, sink))?;
    Ok((tx, thread))
}

/// A recording's file as the disk thread holds it.
struct Open {
    path: PathBuf,
    wav: bool,
    /// None once an operation failed (`error` says why).
    file: Option<File>,
    error: Option<String>,
}

fn run(rx: Receiver<Disk>, sink: FinishedSink) {
    let mut open: HashMap<u64, Open> = HashMap::new();
    for op in rx {
        match op {
            Disk::Open {
                id,
                path,
                meta,
                head,
                wav,
            } => {
                let created =
                    head.and_then(|head| create(&path, &meta, &head).map_err(|e| e.to_string()));
                let (file, error) = match created {
                    Ok(file) => (Some(file), None),
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "recording: cannot create the file");
                        (None, Some(e))
                    }
                };
                open.insert(
                    id,
                    Open {
                        path,
                        wav,
                        file,
                        error,
                    },
                );
            }
            Disk::Append { id, bytes } => {
                let Some(o) = open.get_mut(&id) else { continue };
                if let Some(Err(e)) = o.file.as_mut().map(|f| f.write_all(&bytes)) {
                    tracing::error!(path = %o.path.display(), error = %e, "recording: write failed");
                    o.error = Some(e.to_string());
                    o.file = None;
                }
            }
            Disk::Close { id, seconds } => {
                let Some(o) = open.remove(&id) else { continue };
                sink(complete(o, seconds));
            }
        }
    }
    // The recorder is gone (shutdown): what is still open is completed as it stands.
    for (_, o) in open.drain() {
        sink(complete(o, 0.0));
    }
}

fn create(path: &Path, meta: &str, head: &[u8]) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Synced with the audio when the recording completes, not now.
    File::create(with_suffix(path, ".json"))?.write_all(meta.as_bytes())?;
    // Read back too: completing the header reads it.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(with_suffix(path, ".part"))?;
    file.write_all(head)?;
    Ok(file)
}

/// The header completed, the file and its sidecar synced, renamed to its final name and
/// the directory synced.
fn complete(o: Open, seconds: f64) -> Finished {
    let done = match (&o.file, &o.error) {
        (Some(file), None) => sync_and_rename(file, &o.path, o.wav),
        (_, error) => Err(std::io::Error::other(
            error.clone().unwrap_or_else(|| "the file is gone".into()),
        )),
    };
    if let Err(e) = &done {
        tracing::error!(path = %o.path.display(), error = %e, "recording: cannot complete the file");
    }
    Finished {
        path: o.path,
        seconds,
        error: done.err().map(|e| e.to_string()),
    }
}

fn sync_and_rename(file: &File, path: &Path, wav: bool) -> std::io::Result<()> {
    if wav {
        fix_sizes(file)?;
    }
    file.sync_all()?;
    File::open(with_suffix(path, ".json"))?.sync_all()?;
    std::fs::rename(with_suffix(path, ".part"), path)?;
    if let Some(dir) = path.parent() {
        // The rename itself survives a power cut once the directory is synced.
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The canonical 44-byte header of a 16-bit PCM WAV file.
pub(super) fn header(channels: u16, rate: u32, data_bytes: u32) -> [u8; 44] {
    let mut h = [0u8; 44];
    let block = channels * 2;
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_bytes.saturating_add(36).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&rate.to_le_bytes());
    h[28..32].copy_from_slice(&(rate * u32::from(block)).to_le_bytes());
    h[32..34].copy_from_slice(&block.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

/// Set the RIFF and data sizes from the file's length (whole frames only).
fn fix_sizes(mut file: &File) -> std::io::Result<()> {
    let length = file.metadata()?.len();
    let mut head = [0u8; 44];
    file.seek(SeekFrom::Start(0))?;
    std::io::Read::read_exact(&mut file, &mut head)?;
    if &head[0..4] != b"RIFF" || &head[36..40] != b"data" {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a recording's WAV header",
        ));
    }
    let block = u64::from(u16::from_le_bytes([head[32], head[33]]).max(1));
    let data = (length.saturating_sub(HEADER_BYTES) / block * block).min(u64::from(u32::MAX - 36));
    file.set_len(HEADER_BYTES + data)?;
    file.seek(SeekFrom::Start(4))?;
    file.write_all(&(data as u32 + 36).to_le_bytes())?;
    file.seek(SeekFrom::Start(40))?;
    file.write_all(&(data as u32).to_le_bytes())?;
    Ok(())
}

/// A recording a crash cut short (`NAME.part`) completed and renamed to `NAME`: a WAV
/// file's header from what reached the disk; an Ogg file as it stands (it ends at its last
/// whole page). Returns the final path.
pub fn repair(part: &Path) -> std::io::Result<PathBuf> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(part)?;
    if part.to_string_lossy().ends_with(".wav.part") {
        fix_sizes(&file)?;
    }
    file.sync_all()?;
    let name = part.to_string_lossy();
    let done = PathBuf::from(name.strip_suffix(".part").unwrap_or(&name).to_owned());
    std::fs::rename(part, &done)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_file_is_opened_appended_completed_and_announced_and_a_crash_is_repaired() {
        let dir = std::env::temp_dir().join(format!("warden-disk-{}", std::process::id()));
        let finished = Arc::new(Mutex::new(Vec::new()));
        let kept = finished.clone();
        let sink: FinishedSink = Arc::new(move |f| kept.lock().expect("lock").push(f));
        let (tx, thread) = start(sink).expect("the disk thread");
        let path = dir.join("call.wav");
        let op = |d| tx.send(d).expect("queued");
        op(Disk::Open {
            id: 7,
            path: path.clone(),
            meta: "{\"call\":\"1\"}".into(),
            head: Ok(header(2, 8000, 0).to_vec()),
            wav: true,
        });
        op(Disk::Append {
            id: 7,
            bytes: vec![1; 400],
        });
        op(Disk::Append {
            id: 7,
            bytes: vec![2; 402], // a torn frame at the end: dropped by the header's sizes
        });
        op(Disk::Close {
            id: 7,
            seconds: 0.025,
        });
        drop(tx);
        thread.join().expect("the disk thread ended");
        let finished = finished.lock().expect("lock").clone();
        assert_eq!(finished.len(), 1);
        assert!(finished[0].error.is_none(), "{finished:?}");
        let bytes = std::fs::read(&path).expect("the finished file");
        assert_eq!(bytes.len(), 44 + 800);
        assert_eq!(
            u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]),
            800
        );
        assert!(!with_suffix(&path, ".part").exists());
        assert_eq!(
            std::fs::read_to_string(with_suffix(&path, ".json")).expect("the sidecar"),
            "{\"call\":\"1\"}"
        );

        // A file cut short by a crash: its header says nothing of its data until repaired.
        let part = with_suffix(&dir.join("cut.wav"), ".part");
        let mut cut = header(2, 8000, 0).to_vec();
        cut.extend_from_slice(&[1, 0, 2, 0, 3, 0, 4, 0, 5]); // two frames and a torn one
        std::fs::write(&part, &cut).expect("written");
        let done = repair(&part).expect("repaired");
        let bytes = std::fs::read(&done).expect("the repaired file");
        assert_eq!(bytes.len(), 52);
        assert_eq!(
            u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]),
            8
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

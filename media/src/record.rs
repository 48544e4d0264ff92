//! Call recording, off the packet path: a relay thread copies each recorded party's RTP
//! payloads into one bounded queue (never waiting: a full queue drops the packet and
//! counts it), and the recorder thread decodes them, lines the two parties up by arrival
//! time and writes the file: WAV, 16-bit PCM at the call's rate, the caller on the left
//! and the callee on the right (or both mixed in one channel).
//!
//! The file is written as `NAME.part` and renamed to `NAME` once complete, so a finished
//! recording is never mistaken for one cut short; [`repair_wav`] completes the header of a
//! `.part` file a crash left behind. Beside it, `NAME.json` holds what the caller gave to
//! name the recording (written before any audio).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use crate::codec::{Decoder, Resampler};
use crate::transcode::LegCodec;

/// The largest RTP payload recorded: 40 ms of G.711, or any Opus voice frame; a larger
/// one is dropped and counted.
pub const MAX_PAYLOAD: usize = 640;
/// Packets queued between the relay threads and the recorder (allocated with the first
/// recording: about 5 MB).
const QUEUE: usize = 8192;
/// How often the recorder wakes while recording.
const TICK: Duration = Duration::from_millis(20);
/// How long a party's audio may arrive late (jitter) before its place is written as silence.
const MARGIN: Duration = Duration::from_millis(300);
/// How often a recording's file gets what was written (what a crash may lose at most,
/// beside the jitter margin).
const FLUSH: Duration = Duration::from_secs(1);
/// A packet arriving this much after where its party's audio ends leaves a silent gap.
const GAP: Duration = Duration::from_millis(60);
const HEADER_BYTES: u64 = 44;

/// How the two parties go into the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Caller left, callee right.
    #[default]
    Stereo,
    /// Both mixed into one channel.
    Mono,
}

/// A recording to start on a stream.
#[derive(Debug, Clone)]
pub struct RecordSpec {
    /// The finished file's path (written as `path` + ".part" until it is complete).
    pub path: PathBuf,
    pub layout: Layout,
    /// Each side's codec as its party sends it (None: that side is silent).
    pub sides: [Option<LegCodec>; 2],
    /// Written to `path` + ".json" before any audio (what names the recording).
    pub meta: String,
}

impl RecordSpec {
    /// The call's rate: the higher of the two parties' codecs' own.
    pub fn rate(&self) -> u32 {
        self.sides
            .iter()
            .flatten()
            .map(|s| s.codec.sample_rate)
            .max()
            .unwrap_or(8000)
    }
}

/// A recording that ended: its file, complete (or why it could not be written).
#[derive(Debug, Clone)]
pub struct Finished {
    pub path: PathBuf,
    pub seconds: f64,
    pub error: Option<String>,
}

/// Where finished recordings are announced (the server's uploader).
pub type FinishedSink = Arc<dyn Fn(Finished) + Send + Sync>;

// The audio inline, not boxed: the packet path allocates nothing (the queue's slots are
// allocated once, with the recorder).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Chunk {
    Start(u64, Box<RecordSpec>, Instant),
    Audio {
        recording: u64,
        side: u8,
        at: Instant,
        len: u16,
        bytes: [u8; MAX_PAYLOAD],
    },
    End(u64),
}

/// The recorder thread and its queue.
pub(crate) struct Recorder {
    tx: SyncSender<Chunk>,
    pub dropped: Arc<AtomicU64>,
    next: u64,
}

impl Recorder {
    pub fn start(sink: FinishedSink) -> std::io::Result<Recorder> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("warden-record".into())
            .spawn(move || run(rx, sink))?;
        Ok(Recorder {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            next: 1,
        })
    }

    /// Begin a recording: the tap a relay thread feeds it through.
    pub fn begin(&mut self, spec: RecordSpec) -> Tap {
        let id = self.next;
        self.next += 1;
        let audio = spec.sides.map(|s| s.map(|s| s.payload_type));
        // Blocking is fine here (the control side, once per recording): it must not be lost.
        let _ = self
            .tx
            .send(Chunk::Start(id, Box::new(spec), Instant::now()));
        Tap {
            recording: id,
            audio,
            tx: self.tx.clone(),
            dropped: self.dropped.clone(),
        }
    }
}

/// What a relay thread holds for a recorded stream.
pub(crate) struct Tap {
    recording: u64,
    /// Each side's audio payload type (events, comfort noise and the rest are not audio).
    audio: [Option<u8>; 2],
    tx: SyncSender<Chunk>,
    dropped: Arc<AtomicU64>,
}

impl Tap {
    /// A party's RTP packet, as it arrived (decrypted): its payload is queued, or dropped
    /// and counted when the queue is full. Never waits.
    pub fn offer(&self, side: usize, packet: &[u8], at: Instant) {
        let Some(pt) = self.audio[side] else {
            return;
        };
        let Some(payload) = rtp_payload(packet, pt) else {
            return;
        };
        if payload.len() > MAX_PAYLOAD {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut bytes = [0u8; MAX_PAYLOAD];
        bytes[..payload.len()].copy_from_slice(payload);
        let chunk = Chunk::Audio {
            recording: self.recording,
            side: side as u8,
            at,
            len: payload.len() as u16,
            bytes,
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(chunk) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The recording is over (stopped, or its stream closed).
    pub fn end(self) {
        let _ = self.tx.send(Chunk::End(self.recording));
    }
}

/// The payload of an RTP packet of payload type `pt` (None for any other, or a packet too
/// short for its header).
fn rtp_payload(packet: &[u8], pt: u8) -> Option<&[u8]> {
    if packet.len() < 12 || packet[0] >> 6 != 2 || packet[1] & 0x7f != pt {
        return None;
    }
    let mut start = 12 + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let words = packet.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*packet.last()?))?;
    }
    packet.get(start..end)
}

fn run(rx: Receiver<Chunk>, sink: FinishedSink) {
    let mut live: HashMap<u64, Recording> = HashMap::new();
    loop {
        if live.is_empty() {
            // Idle: sleep until a recording starts.
            match rx.recv() {
                Ok(chunk) => handle(chunk, &mut live, &sink),
                Err(_) => return,
            }
        } else {
            std::thread::sleep(TICK);
        }
        loop {
            match rx.try_recv() {
                Ok(chunk) => handle(chunk, &mut live, &sink),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    for (_, recording) in live.drain() {
                        sink(recording.finish());
                    }
                    return;
                }
            }
        }
        if let Some(settled) = Instant::now().checked_sub(MARGIN) {
            for recording in live.values_mut() {
                recording.write_until(settled);
            }
        }
    }
}

fn handle(chunk: Chunk, live: &mut HashMap<u64, Recording>, sink: &FinishedSink) {
    match chunk {
        Chunk::Start(id, spec, at) => match Recording::create(&spec, at) {
            Ok(recording) => {
                live.insert(id, recording);
            }
            Err(e) => {
                tracing::error!(path = %spec.path.display(), error = %e, "recording: cannot create the file");
                sink(Finished {
                    path: spec.path.clone(),
                    seconds: 0.0,
                    error: Some(e.to_string()),
                });
            }
        },
        Chunk::Audio {
            recording,
            side,
            at,
            len,
            bytes,
        } => {
            if let Some(r) = live.get_mut(&recording) {
                r.audio(usize::from(side), &bytes[..usize::from(len)], at);
            }
        }
        Chunk::End(id) => {
            if let Some(recording) = live.remove(&id) {
                sink(recording.finish());
            }
        }
    }
}

/// One party's decoding to the file's rate, in the 20 ms frames the resampler takes.
struct Party {
    decoder: Box<dyn Decoder>,
    resampler: Option<Resampler>,
    decoded: Vec<i16>,
    /// Decoded samples short of a whole frame, waiting for the next packet.
    carry: Vec<i16>,
    frame: usize,
    out: Vec<i16>,
}

impl Party {
    fn new(leg: &LegCodec, rate: u32) -> Party {
        let own = leg.codec.sample_rate;
        Party {
            decoder: leg.codec.decoder_at(own, &leg.params),
            resampler: (own != rate)
                .then(|| Resampler::new(own, rate).ok())
                .flatten(),
            decoded: Vec::with_capacity(2048),
            carry: Vec::with_capacity(2048),
            frame: (own / 50) as usize,
            out: Vec::with_capacity(4096),
        }
    }

    /// The payload as PCM at the file's rate (left in `self.out`).
    fn decode(&mut self, payload: &[u8]) {
        self.decoded.clear();
        self.out.clear();
        self.decoder.decode(payload, &mut self.decoded);
        match self.resampler.as_mut() {
            None => self.out.extend_from_slice(&self.decoded),
            Some(resampler) => {
                self.carry.extend_from_slice(&self.decoded);
                let whole = self.carry.len() / self.frame * self.frame;
                for frame in self.carry[..whole].chunks_exact(self.frame) {
                    resampler.process(frame, &mut self.out);
                }
                self.carry.drain(..whole);
            }
        }
    }
}

struct Recording {
    file: BufWriter<File>,
    part: PathBuf,
    path: PathBuf,
    rate: u32,
    layout: Layout,
    start: Instant,
    parties: [Option<Party>; 2],
    /// Each party's samples from `written` on, not yet in the file.
    pending: [Vec<i16>; 2],
    /// Frames in the file so far.
    written: u64,
    /// Where each party's next sample goes (None: nothing heard yet).
    next: [Option<u64>; 2],
    error: Option<std::io::Error>,
    interleaved: Vec<u8>,
    flushed: Instant,
}

impl Recording {
    fn create(spec: &RecordSpec, start: Instant) -> std::io::Result<Recording> {
        if let Some(dir) = spec.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let meta = with_suffix(&spec.path, ".json");
        let mut m = File::create(&meta)?;
        m.write_all(spec.meta.as_bytes())?;
        m.sync_all()?;
        let part = with_suffix(&spec.path, ".part");
        let rate = spec.rate();
        let channels = match spec.layout {
            Layout::Stereo => 2,
            Layout::Mono => 1,
        };
        // Read back too: completing the header reads it.
        let part_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)?;
        let mut file = BufWriter::with_capacity(64 * 1024, part_file);
        file.write_all(&header(channels, rate, 0))?;
        Ok(Recording {
            file,
            part,
            path: spec.path.clone(),
            rate,
            layout: spec.layout,
            start,
            parties: spec.sides.map(|s| s.map(|leg| Party::new(&leg, rate))),
            pending: [Vec::new(), Vec::new()],
            written: 0,
            next: [None; 2],
            error: None,
            interleaved: Vec::new(),
            flushed: start,
        })
    }

    fn frame_at(&self, at: Instant) -> u64 {
        let micros = at.saturating_duration_since(self.start).as_micros() as u64;
        micros * u64::from(self.rate) / 1_000_000
    }

    /// A party's payload, arrived at `at`: decoded and put in its place. A packet that
    /// follows its party's last one (give or take the jitter) goes right after it; one
    /// after a gap goes where its arrival says.
    fn audio(&mut self, side: usize, payload: &[u8], at: Instant) {
        let arrival = self.frame_at(at);
        let Some(party) = self.parties[side].as_mut() else {
            return;
        };
        party.decode(payload);
        let gap = GAP.as_micros() as u64 * u64::from(self.rate) / 1_000_000;
        let at_frame = match self.next[side] {
            Some(next) if arrival <= next + gap => next,
            _ => arrival,
        };
        let samples = &party.out;
        // Audio for a stretch already written (very late): what is still to come is kept.
        let skip = self.written.saturating_sub(at_frame) as usize;
        let from = at_frame.max(self.written);
        if skip < samples.len() {
            let offset = (from - self.written) as usize;
            let pending = &mut self.pending[side];
            let end = offset + samples.len() - skip;
            if pending.len() < end {
                pending.resize(end, 0);
            }
            pending[offset..end].copy_from_slice(&samples[skip..]);
        }
        self.next[side] = Some(at_frame + samples.len() as u64);
    }

    /// Write every frame up to the moment `settled` (later audio may still arrive).
    fn write_until(&mut self, settled: Instant) {
        let upto = self.frame_at(settled);
        if upto > self.written {
            self.write_frames((upto - self.written) as usize);
        }
        if settled.saturating_duration_since(self.flushed) >= FLUSH && self.error.is_none() {
            self.flushed = settled;
            if let Err(e) = self.file.flush() {
                tracing::error!(path = %self.part.display(), error = %e, "recording: write failed");
                self.error = Some(e);
            }
        }
    }

    fn write_frames(&mut self, frames: usize) {
        for pending in &mut self.pending {
            if pending.len() < frames {
                pending.resize(frames, 0);
            }
        }
        self.interleaved.clear();
        let [left, right] = &self.pending;
        for (l, r) in left[..frames].iter().zip(&right[..frames]) {
            match self.layout {
                Layout::Stereo => {
                    self.interleaved.extend_from_slice(&l.to_le_bytes());
                    self.interleaved.extend_from_slice(&r.to_le_bytes());
                }
                Layout::Mono => {
                    let mixed = (i32::from(*l) + i32::from(*r)).clamp(-32768, 32767) as i16;
                    self.interleaved.extend_from_slice(&mixed.to_le_bytes());
                }
            }
        }
        if self.error.is_none()
            && let Err(e) = self.file.write_all(&self.interleaved)
        {
            tracing::error!(path = %self.part.display(), error = %e, "recording: write failed");
            self.error = Some(e);
        }
        for pending in &mut self.pending {
            pending.drain(..frames);
        }
        self.written += frames as u64;
    }

    /// Everything heard written, the header completed, the file synced and renamed to
    /// its final name.
    fn finish(mut self) -> Finished {
        let rest = self.pending.iter().map(Vec::len).max().unwrap_or(0);
        self.write_frames(rest);
        let seconds = self.written as f64 / f64::from(self.rate);
        let done = self.complete();
        if let Err(e) = &done {
            tracing::error!(path = %self.part.display(), error = %e, "recording: cannot complete the file");
        }
        Finished {
            path: self.path.clone(),
            seconds,
            error: done.err().map(|e| e.to_string()),
        }
    }

    fn complete(&mut self) -> std::io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.file.flush()?;
        let file = self.file.get_mut();
        fix_sizes(file)?;
        file.sync_all()?;
        std::fs::rename(&self.part, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // The rename itself survives a power cut once the directory is synced.
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The canonical 44-byte header of a 16-bit PCM WAV file.
fn header(channels: u16, rate: u32, data_bytes: u32) -> [u8; 44] {
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
fn fix_sizes(file: &mut File) -> std::io::Result<()> {
    let length = file.metadata()?.len();
    let mut head = [0u8; 44];
    file.seek(SeekFrom::Start(0))?;
    std::io::Read::read_exact(file, &mut head)?;
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

/// A recording a crash cut short (`NAME.part`): its header completed from what reached
/// the disk, and renamed to `NAME`. Returns the final path.
pub fn repair_wav(part: &Path) -> std::io::Result<PathBuf> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(part)?;
    fix_sizes(&mut file)?;
    file.sync_all()?;
    let name = part.to_string_lossy();
    let done = PathBuf::from(name.strip_suffix(".part").unwrap_or(&name).to_owned());
    std::fs::rename(part, &done)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn pcmu() -> LegCodec {
        LegCodec {
            codec: codec::by_name("PCMU", 8000).expect("PCMU"),
            payload_type: 0,
            params: Default::default(),
            ptime: 20,
            dtmf_payload_type: None,
            cn_payload_type: None,
        }
    }

    fn packet(pt: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn payloads_are_found_past_csrcs_extensions_and_padding() {
        assert_eq!(rtp_payload(&packet(0, 1, &[9, 9]), 0), Some(&[9u8, 9][..]));
        assert_eq!(
            rtp_payload(&packet(0, 1, &[9]), 8),
            None,
            "another payload type"
        );
        let mut p = packet(0, 1, &[]);
        p[0] = 0x80 | 0x10 | 0x20 | 1; // extension, padding, one CSRC
        p.extend_from_slice(&[0, 0, 0, 7]); // the CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // one extension word
        p.extend_from_slice(&[5, 6, 0, 2]); // payload 5 6, then two bytes of padding
        assert_eq!(rtp_payload(&p, 0), Some(&[5u8, 6][..]));
        assert_eq!(rtp_payload(&[0x80, 0], 0), None);
    }

    #[test]
    fn two_parties_land_left_and_right_at_their_arrival_times_and_a_crash_is_repaired() {
        let dir = std::env::temp_dir().join(format!("warden-record-{}", std::process::id()));
        let path = dir.join("call.wav");
        let spec = RecordSpec {
            path: path.clone(),
            layout: Layout::Stereo,
            sides: [Some(pcmu()), Some(pcmu())],
            meta: "{}".into(),
        };
        let start = Instant::now();
        let mut r = Recording::create(&spec, start).expect("created");
        // The caller: a loud frame at 0 ms; the callee: one at 100 ms (800 frames in).
        let loud = vec![codec::linear_to_ulaw(8000); 160];
        r.audio(0, &loud, start);
        r.audio(1, &loud, start + Duration::from_millis(100));
        // Jitter: the caller's next frame 30 ms late still follows its first.
        r.audio(0, &loud, start + Duration::from_millis(50));
        r.write_until(start + Duration::from_millis(50));
        let finished = r.finish();
        assert!(finished.error.is_none(), "{finished:?}");
        assert!((finished.seconds - 0.12).abs() < 0.001, "{finished:?}");
        let bytes = std::fs::read(&path).expect("the finished file");
        assert_eq!(&bytes[0..4], b"RIFF");
        let frames: Vec<(i16, i16)> = bytes[44..]
            .chunks_exact(4)
            .map(|f| {
                (
                    i16::from_le_bytes([f[0], f[1]]),
                    i16::from_le_bytes([f[2], f[3]]),
                )
            })
            .collect();
        assert_eq!(frames.len(), 960);
        assert!(frames[..320].iter().all(|(l, r)| *l > 7000 && *r == 0));
        assert!(frames[320..800].iter().all(|(l, r)| *l == 0 && *r == 0));
        assert!(frames[800..].iter().all(|(l, r)| *l == 0 && *r > 7000));

        // A file cut short by a crash: its header says nothing of its data until repaired.
        let part = with_suffix(&dir.join("cut.wav"), ".part");
        let mut cut = header(2, 8000, 0).to_vec();
        cut.extend_from_slice(&[1, 0, 2, 0, 3, 0, 4, 0, 5]); // two frames and a torn one
        std::fs::write(&part, &cut).expect("written");
        let done = repair_wav(&part).expect("repaired");
        let bytes = std::fs::read(&done).expect("the repaired file");
        assert_eq!(bytes.len(), 52);
        assert_eq!(
            u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]),
            8
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

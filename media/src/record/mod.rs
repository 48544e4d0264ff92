//! Call recording, off the packet path: a relay thread gathers each recorded party's RTP
//! payloads through its turn and sends them to the recorder as one message (never
//! waiting: past a bound on queued audio it drops them and counts them); the recorder
//! thread decodes them and lines the two parties up by arrival time ([`timeline`]), and
//! encodes them for Ogg Opus ([`ogg`], with the `opus` feature); the disk thread
//! ([`disk`]) writes the file: WAV (16-bit PCM at the call's rate) or Ogg Opus, the caller
//! on the left and the callee on the right (or both mixed in one channel), `NAME.part`
//! until complete, with `NAME.json` beside it naming the recording.

mod disk;
#[cfg(feature = "opus")]
mod ogg;
mod timeline;

pub use disk::{repair, with_suffix};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, TrySendError, channel};
use std::time::{Duration, Instant};

use crate::transcode::LegCodec;
use disk::Disk;
use timeline::Timeline;

/// Audio bytes the relay threads may have queued for the recorder (about 0.5 s of a
/// thousand G.711 calls); past it they drop what they gather, and count it.
const MAX_QUEUED_BYTES: usize = 8 << 20;
/// How often the recorder wakes while recording.
const TICK: Duration = Duration::from_millis(20);
/// How long a party's audio may arrive late (jitter) before its place is written as silence.
const MARGIN: Duration = Duration::from_millis(300);
/// How much of a recording's audio the recorder holds while the disk thread falls behind.
const HELD_SECONDS: usize = 30;
/// How often a recording's audio goes to its file (what a crash may lose at most, beside
/// the jitter margin).
const FLUSH: Duration = Duration::from_secs(1);

/// The rates libopus takes its input at; an Ogg Opus recording of a call at another rate
/// is made at the next one up.
pub const OPUS_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];

/// What the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// WAV, 16-bit PCM at the call's rate.
    #[default]
    Wav,
    /// Ogg Opus (RFC 7845): about a tenth of WAV's size; needs the `opus` feature.
    OggOpus,
}

impl Format {
    /// The file name's extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Wav => "wav",
            Format::OggOpus => "opus",
        }
    }

    /// Whether this build can write it.
    pub fn available(self) -> bool {
        self == Format::Wav || cfg!(feature = "opus")
    }
}

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
    pub format: Format,
    /// Each side's codec as its party sends it (None: that side is silent).
    pub sides: [Option<LegCodec>; 2],
    /// Written to `path` + ".json" before any audio (what names the recording).
    pub meta: String,
}

impl RecordSpec {
    /// The file's rate: the higher of the two parties' codecs' own (for Ogg Opus, the
    /// next rate Opus takes from there).
    pub fn rate(&self) -> u32 {
        let call = self
            .sides
            .iter()
            .flatten()
            .map(|s| s.codec.sample_rate)
            .max()
            .unwrap_or(8000);
        match self.format {
            Format::Wav => call,
            Format::OggOpus => OPUS_RATES
                .into_iter()
                .find(|r| *r >= call)
                .unwrap_or(48_000),
        }
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

pub(crate) enum Chunk {
    Start(u64, Box<RecordSpec>, Instant),
    /// What one relay thread gathered in one turn.
    Gathered(Box<Gathered>),
}

/// What the relay threads and the recorder share: the recorder's queue, how much audio is
/// in it, and what was dropped.
pub(crate) struct Link {
    tx: Sender<Chunk>,
    queued: AtomicUsize,
    pub dropped: AtomicU64,
}

/// The recorder thread and its queue.
pub(crate) struct Recorder {
    pub link: Arc<Link>,
    next: u64,
}

impl Recorder {
    pub fn start(sink: FinishedSink) -> std::io::Result<Recorder> {
        let (tx, rx) = channel();
        let link = Arc::new(Link {
            tx,
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        });
        let shared = link.clone();
        std::thread::Builder::new()
            .name("warden-record".into())
            .spawn(move || run(rx, sink, &shared))?;
        Ok(Recorder { link, next: 1 })
    }

    /// Begin a recording: the tap a relay thread feeds it through.
    pub fn begin(&mut self, spec: RecordSpec) -> Tap {
        let id = self.next;
        self.next += 1;
        let audio = spec.sides.map(|s| s.map(|s| s.payload_type));
        // Sent before the tap reaches its relay thread: it comes before any of its audio.
        let _ = self
            .link
            .tx
            .send(Chunk::Start(id, Box::new(spec), Instant::now()));
        Tap {
            recording: id,
            audio,
            link: self.link.clone(),
        }
    }
}

/// What a relay thread holds for a recorded stream.
pub(crate) struct Tap {
    recording: u64,
    /// Each side's audio payload type (events, comfort noise and the rest are not audio).
    audio: [Option<u8>; 2],
    link: Arc<Link>,
}

impl Tap {
    /// A party's RTP packet, as it arrived (decrypted): its payload goes into the relay
    /// thread's outbox, sent to the recorder at the end of the thread's turn.
    pub fn offer(&self, outbox: &mut Outbox, side: usize, packet: &[u8], at: Instant) {
        let Some(pt) = self.audio[side] else {
            return;
        };
        let Some(payload) = rtp_payload(packet, pt) else {
            return;
        };
        let g = outbox.gathering(&self.link);
        let start = g.bytes.len() as u32;
        g.bytes.extend_from_slice(payload);
        g.items.push(Item::Audio {
            recording: self.recording,
            side: side as u8,
            at,
            start,
            len: payload.len() as u16,
        });
    }

    /// The recording is over (stopped, or its stream closed): after what the outbox holds.
    pub fn end(self, outbox: &mut Outbox) {
        outbox
            .gathering(&self.link)
            .items
            .push(Item::End(self.recording));
    }
}

/// One turn's recorded payloads of a relay thread, back to back in `bytes`.
#[derive(Default)]
pub(crate) struct Gathered {
    bytes: Vec<u8>,
    items: Vec<Item>,
}

enum Item {
    Audio {
        recording: u64,
        side: u8,
        at: Instant,
        start: u32,
        len: u16,
    },
    End(u64),
}

/// A relay thread's recorded payloads, gathered through its turn and sent to the recorder
/// as one message at its end: one queue operation per turn, not one per packet.
#[derive(Default)]
pub(crate) struct Outbox {
    link: Option<Arc<Link>>,
    gathered: Gathered,
}

impl Outbox {
    fn gathering(&mut self, link: &Arc<Link>) -> &mut Gathered {
        if self.link.is_none() {
            self.link = Some(link.clone()); // one recorder per relay
        }
        &mut self.gathered
    }

    /// Send what the turn gathered. Never waits: past `MAX_QUEUED_BYTES` of audio the
    /// recorder has yet to take, the audio is dropped and counted (the ends still go).
    pub fn flush(&mut self) {
        let Some(link) = self.link.as_ref() else {
            return;
        };
        if self.gathered.items.is_empty() {
            return;
        }
        let size = self.gathered.bytes.len();
        if link.queued.load(Ordering::Relaxed) + size > MAX_QUEUED_BYTES {
            let before = self.gathered.items.len();
            self.gathered.items.retain(|i| matches!(i, Item::End(_)));
            let lost = before - self.gathered.items.len();
            link.dropped.fetch_add(lost as u64, Ordering::Relaxed);
            self.gathered.bytes.clear();
            if self.gathered.items.is_empty() {
                return;
            }
        }
        let sent = std::mem::take(&mut self.gathered);
        link.queued.fetch_add(sent.bytes.len(), Ordering::Relaxed);
        // The capacity of what went is what the next turn needs, about.
        self.gathered.bytes.reserve(sent.bytes.len());
        self.gathered.items.reserve(sent.items.len());
        let _ = link.tx.send(Chunk::Gathered(Box::new(sent)));
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

/// A recording the recorder thread holds: its timeline and the audio not yet sent to disk.
struct Live {
    timeline: Timeline,
    encoding: Encoding,
    /// The file's bytes not yet sent to the disk thread.
    out: Vec<u8>,
    /// When `out` last went to the disk thread.
    sent: Instant,
}

fn run(rx: Receiver<Chunk>, sink: FinishedSink, link: &Link) {
    let dropped = &link.dropped;
    let (disk, disk_thread) = match disk::start(sink.clone()) {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(error = %e, "recording: cannot start the disk thread");
            return fail_all(rx, &sink, &e.to_string());
        }
    };
    let mut live: HashMap<u64, Live> = HashMap::new();
    loop {
        if live.is_empty() {
            // Idle: sleep until a recording starts.
            match rx.recv() {
                Ok(chunk) => handle(chunk, &mut live, &disk, link),
                Err(_) => break,
            }
        } else {
            std::thread::sleep(TICK);
        }
        let mut open = true;
        loop {
            match rx.try_recv() {
                Ok(chunk) => handle(chunk, &mut live, &disk, link),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !open {
            break;
        }
        let now = Instant::now();
        let Some(settled) = now.checked_sub(MARGIN) else {
            continue;
        };
        for (&id, l) in live.iter_mut() {
            l.take_until(settled);
            if now.saturating_duration_since(l.sent) >= FLUSH {
                l.sent = now;
                l.flush();
                send_audio(id, l, &disk, dropped);
            }
        }
    }
    // Shut down: everything heard goes to its file, and the disk thread completes them.
    for (id, l) in live.drain() {
        close(id, l, &disk);
    }
    drop(disk);
    let _ = disk_thread.join();
}

/// How a recording's PCM becomes its file's bytes.
enum Encoding {
    Wav,
    #[cfg(feature = "opus")]
    Opus {
        ogg: Box<ogg::OggOpus>,
        /// The timeline's PCM on its way to the encoder.
        pcm: Vec<u8>,
    },
}

impl Live {
    /// The audio settled by `settled`, on its way to the file.
    fn take_until(&mut self, settled: Instant) {
        match &mut self.encoding {
            Encoding::Wav => self.timeline.take_until(settled, &mut self.out),
            #[cfg(feature = "opus")]
            Encoding::Opus { ogg, pcm } => {
                self.timeline.take_until(settled, pcm);
                ogg.push(pcm, &mut self.out);
                pcm.clear();
            }
        }
    }

    /// Whole pages of what was encoded (Ogg), before the bytes go to the disk thread.
    fn flush(&mut self) {
        #[cfg(feature = "opus")]
        if let Encoding::Opus { ogg, .. } = &mut self.encoding {
            ogg.flush(&mut self.out);
        }
    }

    /// Everything heard, and the file's end.
    fn take_rest(&mut self) {
        match &mut self.encoding {
            Encoding::Wav => self.timeline.take_rest(&mut self.out),
            #[cfg(feature = "opus")]
            Encoding::Opus { ogg, pcm } => {
                self.timeline.take_rest(pcm);
                ogg.push(pcm, &mut self.out);
                pcm.clear();
                ogg.finish(&mut self.out);
            }
        }
    }
}

/// The file's first bytes and how its audio is encoded, or why it cannot be written.
fn encoding(spec: &RecordSpec, timeline: &Timeline) -> Result<(Vec<u8>, Encoding), String> {
    match spec.format {
        Format::Wav => Ok((
            disk::header(timeline.channels(), timeline.rate, 0).to_vec(),
            Encoding::Wav,
        )),
        #[cfg(feature = "opus")]
        Format::OggOpus => {
            let mut head = Vec::new();
            let ogg = ogg::OggOpus::start(timeline.rate, timeline.channels(), &mut head)?;
            Ok((
                head,
                Encoding::Opus {
                    ogg: Box::new(ogg),
                    pcm: Vec::new(),
                },
            ))
        }
        #[cfg(not(feature = "opus"))]
        Format::OggOpus => Err("Ogg Opus needs a build with the opus feature".into()),
    }
}

fn handle(chunk: Chunk, live: &mut HashMap<u64, Live>, disk: &SyncSender<Disk>, link: &Link) {
    match chunk {
        Chunk::Start(id, spec, at) => {
            let timeline = Timeline::new(&spec, at);
            let (head, encoding) = match encoding(&spec, &timeline) {
                Ok((head, encoding)) => (Ok(head), encoding),
                Err(e) => (Err(e), Encoding::Wav),
            };
            let _ = disk.send(Disk::Open {
                id,
                path: spec.path,
                meta: spec.meta,
                head,
                wav: spec.format == Format::Wav,
            });
            // Each recording sends at its own point of the second, so that recordings
            // begun together do not all write at once.
            let sent = at
                .checked_sub(Duration::from_millis(id.wrapping_mul(97) % 1000))
                .unwrap_or(at);
            live.insert(
                id,
                Live {
                    timeline,
                    encoding,
                    out: Vec::new(),
                    sent,
                },
            );
        }
        Chunk::Gathered(g) => {
            link.queued.fetch_sub(g.bytes.len(), Ordering::Relaxed);
            for item in &g.items {
                match *item {
                    Item::Audio {
                        recording,
                        side,
                        at,
                        start,
                        len,
                    } => {
                        let payload = &g.bytes[start as usize..start as usize + usize::from(len)];
                        if let Some(l) = live.get_mut(&recording) {
                            l.timeline.audio(usize::from(side), payload, at);
                        }
                    }
                    Item::End(id) => {
                        if let Some(l) = live.remove(&id) {
                            close(id, l, disk);
                        }
                    }
                }
            }
        }
    }
}

/// A recording's audio to the disk thread, without waiting: when the disk falls behind it
/// is kept for the next try, up to `HELD` of audio; past that it is dropped (and counted,
/// in 20 ms frames) so that a stalled disk costs audio, not unbounded memory.
fn send_audio(id: u64, l: &mut Live, disk: &SyncSender<Disk>, dropped: &AtomicU64) {
    let bytes = std::mem::take(&mut l.out);
    if let Err(TrySendError::Full(Disk::Append { bytes, .. })) =
        disk.try_send(Disk::Append { id, bytes })
    {
        let second = l.timeline.rate as usize * usize::from(l.timeline.channels()) * 2;
        if bytes.len() > HELD_SECONDS * second {
            dropped.fetch_add((bytes.len() * 50 / second) as u64, Ordering::Relaxed);
        } else {
            l.out = bytes;
        }
    }
}

/// The rest of the recording to its file, and the file completed.
fn close(id: u64, mut l: Live, disk: &SyncSender<Disk>) {
    l.take_rest();
    let _ = disk.send(Disk::Append { id, bytes: l.out });
    let seconds = l.timeline.seconds();
    let _ = disk.send(Disk::Close { id, seconds });
}

/// No disk thread: every recording asked for fails, and says why.
fn fail_all(rx: Receiver<Chunk>, sink: &FinishedSink, why: &str) {
    for chunk in rx {
        if let Chunk::Start(_, spec, _) = chunk {
            sink(Finished {
                path: spec.path,
                seconds: 0.0,
                error: Some(why.to_owned()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn pcmu() -> LegCodec {
        crate::transcode::tests::leg("PCMU", 0, None)
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
    fn a_tapped_call_becomes_a_stereo_file_through_the_recorder_and_disk_threads() {
        let dir = std::env::temp_dir().join(format!("warden-record-{}", std::process::id()));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let sink: FinishedSink = Arc::new(move |f| {
            let _ = done_tx.send(f);
        });
        let mut recorder = Recorder::start(sink).expect("the recorder");
        let path = dir.join("call.wav");
        let tap = recorder.begin(RecordSpec {
            path: path.clone(),
            layout: Layout::Stereo,
            format: Default::default(),
            sides: [Some(pcmu()), Some(pcmu())],
            meta: "{}".into(),
        });
        let start = Instant::now();
        let (loud, soft) = (codec::linear_to_ulaw(8000), codec::linear_to_ulaw(-2000));
        let mut outbox = Outbox::default();
        for n in 0..10u16 {
            let at = start + Duration::from_millis(20 * u64::from(n));
            tap.offer(&mut outbox, 0, &packet(0, n, &[loud; 160]), at);
            tap.offer(&mut outbox, 1, &packet(0, n, &[soft; 160]), at);
            tap.offer(&mut outbox, 1, &packet(101, n, &[1, 2, 3, 4]), at); // not audio
            if n % 3 == 0 {
                outbox.flush(); // a relay thread's turn ends
            }
        }
        tap.end(&mut outbox);
        outbox.flush();
        let finished = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the recording finished");
        assert!(finished.error.is_none(), "{finished:?}");
        assert!((finished.seconds - 0.2).abs() < 0.03, "{finished:?}");
        let bytes = std::fs::read(&path).expect("the finished file");
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2, "stereo");
        let frames: Vec<(i16, i16)> = bytes[44..]
            .chunks_exact(4)
            .map(|f| {
                (
                    i16::from_le_bytes([f[0], f[1]]),
                    i16::from_le_bytes([f[2], f[3]]),
                )
            })
            .collect();
        assert!(frames.len() >= 1500, "{} frames", frames.len());
        assert!(frames.iter().all(|(l, r)| *l > 7000 && *r < -1500));
        assert_eq!(recorder.link.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(recorder.link.queued.load(Ordering::Relaxed), 0, "all taken");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn audio_past_the_queue_bound_is_dropped_and_counted_but_the_end_goes() {
        let dir = std::env::temp_dir().join(format!("warden-record-full-{}", std::process::id()));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let sink: FinishedSink = Arc::new(move |f| {
            let _ = done_tx.send(f);
        });
        let mut recorder = Recorder::start(sink).expect("the recorder");
        let tap = recorder.begin(RecordSpec {
            path: dir.join("full.wav"),
            layout: Layout::Mono,
            format: Default::default(),
            sides: [Some(pcmu()), None],
            meta: "{}".into(),
        });
        let mut outbox = Outbox::default();
        let big = packet(0, 1, &[0xff; 1000]);
        let over = MAX_QUEUED_BYTES / 1000 + 1;
        for _ in 0..over {
            tap.offer(&mut outbox, 0, &big, Instant::now());
        }
        tap.end(&mut outbox);
        outbox.flush();
        let finished = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the recording finished all the same");
        assert!(finished.error.is_none(), "{finished:?}");
        assert_eq!(
            recorder.link.dropped.load(Ordering::Relaxed),
            over as u64,
            "every payload of the turn counted"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

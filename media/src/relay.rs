//! The relay's control handle: opens streams (one per SDP m= line, two legs each) on
//! ports it binds or finds parked on a worker, tells the owning worker thread where each
//! leg's peer is, and reads stats.
//!
//! Control calls run on the signalling thread and only post commands; the worker threads
//! own the sockets and move the packets (see `worker`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::codec::CodecOptions;
use crate::dtmf::Digit;
use crate::ports::{PortPair, PortPool, PortsExhausted};
use crate::prompt::EncodedPrompt;
use crate::srtp::SrtpSetting;
use crate::stats::{LegCounters, LegStats};
use crate::sys::EventFd;
use crate::transcode::{LegCodec, Transcoding};
use crate::worker::{Command, NewStream, Worker};

/// How a leg's peer address is learned from its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Latching {
    /// Learn from the first packet (or the signalled address, which always wins), then
    /// hear only that address (default: a stranger cannot inject into or steal the stream).
    #[default]
    Strict,
    /// Follow whichever address sent last (phones that roam between networks).
    Follow,
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address the media ports bind to and SDP advertises.
    pub address: IpAddr,
    pub first_port: u16,
    pub last_port: u16,
    /// Relay threads; 0 means one per available core.
    pub workers: usize,
    pub latching: Latching,
    /// How long a busy worker lets packets gather between polls (0: poll at once). It
    /// bounds the latency added and trades it for fewer wake-ups per packet.
    pub coalesce: Duration,
    /// Settings for the encoders of transcoded streams.
    pub codecs: CodecOptions,
}

/// One side of a stream: A faces the caller, B the callee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub(crate) fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// Where a leg's party receives media (from its SDP). With rtcp-mux, `rtcp == rtp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    pub rtp: SocketAddr,
    pub rtcp: SocketAddr,
    /// RTP clock of the leg's codec, for jitter in real time.
    pub clock_rate: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// What the relay tells its owner, from the worker threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    /// A prompt finished playing to `side` of `stream`.
    PlaybackDone { stream: StreamId, side: Side },
    /// `side`'s party pressed a key, sent as RFC 4733 events that the other side does not
    /// take (so they were not relayed: the owner carries it, e.g. as SIP INFO).
    Dtmf {
        stream: StreamId,
        side: Side,
        digit: Digit,
    },
}

/// How a prompt is played.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Playback {
    /// The payload type the party receives the prompt's codec as.
    pub payload_type: u8,
    /// Times to play it again after the first.
    pub repeat: u32,
    /// Barge-in: a key pressed by the party (RFC 4733, reported) stops the prompt.
    pub stop_on_dtmf: bool,
}

/// How a side of a stream carries DTMF in RTP: its telephone-event payload type and clock
/// (None: it does not, and takes key presses some other way).
pub type EventFormat = Option<(u8, u32)>;

/// Receives media events; called on a worker thread, so it must only hand them on.
pub type EventSink = Arc<dyn Fn(MediaEvent) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Exhausted(#[from] PortsExhausted),
    #[error("cannot bind media port on {address}: {source}")]
    Bind {
        address: IpAddr,
        source: std::io::Error,
    },
}

/// Both legs' statistics for one stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    pub a: LegStats,
    pub b: LegStats,
}

/// What a worker publishes for one stream.
#[derive(Debug, Default)]
pub struct StreamCounters {
    legs: [LegCounters; 2],
}

impl StreamCounters {
    pub(crate) fn leg(&self, side: usize) -> &LegCounters {
        &self.legs[side]
    }
}

struct WorkerHandle {
    commands: Sender<Command>,
    wake: Arc<EventFd>,
    /// Commands queued that no wake-up has announced yet (only with `batch_wakes`), and
    /// whether one of them cannot wait for the worker's next packet.
    unwoken: usize,
    urgent: bool,
    /// The last wake-up: commands that can wait do so for `LAZY_WAIT` at most.
    woken_at: Instant,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    fn wake_now(&mut self, now: Instant) {
        self.unwoken = 0;
        self.urgent = false;
        self.woken_at = now;
        self.wake.notify();
    }
}

/// Commands that can wait for a worker's next packet (see `Command::is_urgent`) wait at
/// most this long, and at most `LAZY_MAX` of them, as seen at the owner's flushes (the
/// signalling loop flushes every turn, at least once a second): without media (a
/// signalling-only load) they would otherwise pile up. With media flowing the next packet comes first, so a
/// call's stream setup and teardown cost its worker no wake-up of its own.
const LAZY_WAIT: Duration = Duration::from_millis(50);
const LAZY_MAX: usize = 64;

struct StreamInfo {
    worker: usize,
    ports: [PortPair; 2],
    counters: Arc<StreamCounters>,
    transcoding: bool,
    /// The conference room the stream is in.
    room: Option<u64>,
}

/// The relay's figures over its life (metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayTotals {
    /// Streams open now, and how many of them Warden transcodes.
    pub streams: u64,
    pub transcoding: u64,
    /// RTP received from the parties, streams open and closed.
    pub rtp_packets: u64,
    pub rtp_bytes: u64,
    /// Packets from a source other than a party's latched address, dropped.
    pub strangers: u64,
    /// Packets that reached a parked port (no call has it), dropped.
    pub unassigned: u64,
    /// Port pairs whose sockets stay bound between calls.
    pub parked_pairs: u64,
}

pub struct Relay {
    address: IpAddr,
    pool: PortPool,
    workers: Vec<WorkerHandle>,
    streams: HashMap<StreamId, StreamInfo>,
    /// Conference rooms: the worker mixing each, and how many streams are in it.
    rooms: HashMap<u64, (usize, usize)>,
    next_id: u64,
    next_worker: usize,
    /// RTP packets and bytes of the streams already closed.
    closed_packets: u64,
    closed_bytes: u64,
    closed_strangers: u64,
    /// Packets that reached parked ports, counted by the workers.
    unassigned: Arc<AtomicU64>,
    /// Commands wake their worker at `flush`, not one by one.
    batching_wakes: bool,
    /// The recorder thread, started with the first recording, and where it reports.
    recorder: Option<crate::record::Recorder>,
    recording_sink: Option<crate::record::FinishedSink>,
}

/// Ports tried per open before giving up on binding (something else holds them).
const BIND_ATTEMPTS: usize = 16;

impl Relay {
    /// Start the worker threads.
    pub fn start(config: &RelayConfig) -> std::io::Result<Relay> {
        let count = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut workers = Vec::with_capacity(count);
        let unassigned = Arc::new(AtomicU64::new(0));
        for index in 0..count {
            let (tx, rx) = channel();
            let wake = Arc::new(EventFd::new()?);
            let worker = Worker::new(wake.clone(), rx, unassigned.clone(), config)?;
            let thread = std::thread::Builder::new()
                .name(format!("warden-relay-{index}"))
                .spawn(move || worker.run())?;
            workers.push(WorkerHandle {
                commands: tx,
                wake,
                unwoken: 0,
                urgent: false,
                woken_at: Instant::now(),
                thread: Some(thread),
            });
        }
        Ok(Relay {
            address: config.address,
            pool: PortPool::new(config.first_port, config.last_port),
            workers,
            streams: HashMap::new(),
            rooms: HashMap::new(),
            next_id: 1,
            next_worker: 0,
            closed_packets: 0,
            closed_bytes: 0,
            closed_strangers: 0,
            unassigned,
            batching_wakes: false,
            recorder: None,
            recording_sink: None,
        })
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// Port pairs free (parked or unbound).
    pub fn available(&self) -> usize {
        self.pool.available()
    }

    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Open a stream: an RTP/RTCP port pair for each side, on one worker. Pairs parked on
    /// a worker are used there as they are (no system call); others are bound here, or
    /// taken over from the worker they are parked on.
    pub fn open(&mut self) -> Result<StreamId, MediaError> {
        let now = Instant::now();
        let (a, a_sockets, worker) = self.take_pair(None, now)?;
        let (b, b_sockets, _) = match self.take_pair(Some(worker), now) {
            Ok(x) => x,
            Err(e) => {
                match a_sockets {
                    // Bound here: closed with the sockets.
                    Some(sockets) => {
                        drop(sockets);
                        self.pool.release(a);
                    }
                    None => self.pool.park(a, worker, now),
                }
                return Err(e);
            }
        };
        let id = StreamId(self.next_id);
        self.next_id += 1;
        let counters = Arc::new(StreamCounters::default());
        let [a_rtp, a_rtcp] = a_sockets.map_or([None, None], |s| s.map(Some));
        let [b_rtp, b_rtcp] = b_sockets.map_or([None, None], |s| s.map(Some));
        let stream = NewStream {
            id: id.0,
            ports: [a.rtp, a.rtcp(), b.rtp, b.rtcp()],
            sockets: [a_rtp, a_rtcp, b_rtp, b_rtcp],
            counters: counters.clone(),
        };
        self.send(worker, Command::Open(Box::new(stream)));
        self.streams.insert(
            id,
            StreamInfo {
                worker,
                ports: [a, b],
                counters,
                transcoding: false,
                room: None,
            },
        );
        Ok(id)
    }

    /// A pair for a stream on worker `want` (any when None: then the pair's own worker,
    /// or the next in turn for an unbound pair), with its sockets when they are not parked
    /// on that worker already, and the worker.
    fn take_pair(
        &mut self,
        want: Option<usize>,
        now: Instant,
    ) -> Result<(PortPair, Option<[UdpSocket; 2]>, usize), MediaError> {
        let mut last_error = None;
        for _ in 0..BIND_ATTEMPTS {
            let (pair, home) = self.pool.take(want, now)?;
            let worker = match (want, home) {
                (Some(w), _) | (None, Some(w)) => w,
                (None, None) => {
                    let w = self.next_worker;
                    self.next_worker = (w + 1) % self.workers.len();
                    w
                }
            };
            match home {
                Some(h) if h == worker => return Ok((pair, None, worker)),
                Some(h) => match self.lend(h, pair) {
                    Some(sockets) => return Ok((pair, Some(sockets), worker)),
                    // Not there after all: bound anew below, next time round.
                    None => self.pool.release(pair),
                },
                None => match self.bind(pair) {
                    Ok(sockets) => return Ok((pair, Some(sockets), worker)),
                    Err(e) => {
                        // Taken by another program: try the next pair; this one goes to
                        // the back of the queue.
                        self.pool.release(pair);
                        last_error = Some(e);
                    }
                },
            }
        }
        Err(MediaError::Bind {
            address: self.address,
            source: last_error.unwrap_or_else(|| std::io::Error::other("no port")),
        })
    }

    /// Take a parked pair's sockets back from worker `home` (to hand them to another).
    fn lend(&mut self, home: usize, pair: PortPair) -> Option<[UdpSocket; 2]> {
        let (reply, lent) = channel();
        self.send_now(
            home,
            Command::Lend {
                rtp: pair.rtp,
                reply,
            },
        );
        lent.recv_timeout(Duration::from_secs(1)).ok().flatten()
    }

    fn bind(&self, pair: PortPair) -> std::io::Result<[UdpSocket; 2]> {
        let rtp = UdpSocket::bind((self.address, pair.rtp))?;
        let rtcp = UdpSocket::bind((self.address, pair.rtcp()))?;
        rtp.set_nonblocking(true)?;
        rtcp.set_nonblocking(true)?;
        Ok([rtp, rtcp])
    }

    /// The RTP port of a side (its RTCP port is one above).
    pub fn port(&self, id: StreamId, side: Side) -> Option<u16> {
        self.streams.get(&id).map(|s| s.ports[side.index()].rtp)
    }

    /// Tell the relay where a side's party receives (None: nowhere, e.g. a rejected stream).
    pub fn set_remote(&mut self, id: StreamId, side: Side, remote: Option<Remote>) {
        if let Some(worker) = self.streams.get(&id).map(|s| s.worker) {
            self.send(
                worker,
                Command::SetRemote {
                    id: id.0,
                    side,
                    remote,
                },
            );
        }
    }

    /// Transcode between the legs (None: relay packets untouched, the default).
    pub fn set_transcoding(&mut self, id: StreamId, transcoding: Option<Transcoding>) {
        if let Some(info) = self.streams.get_mut(&id) {
            info.transcoding = transcoding.is_some();
        }
        if let Some(worker) = self.streams.get(&id).map(|s| s.worker) {
            self.send(
                worker,
                Command::SetTranscoding {
                    id: id.0,
                    transcoding,
                },
            );
        }
    }

    /// Encrypt what goes to `side`'s party and decrypt what it sends (SRTP with these keys),
    /// hold its packets until keys come, or relay them in the clear (the default).
    /// Unchanged keys keep the contexts (and their rollover counters) as they are.
    pub fn set_srtp(&mut self, id: StreamId, side: Side, setting: SrtpSetting) {
        if let Some(worker) = self.streams.get(&id).map(|s| s.worker) {
            self.send(
                worker,
                Command::SetSrtp {
                    id: id.0,
                    side,
                    setting,
                },
            );
        }
    }

    /// Play `prompt` to `side`'s party (`repeat` more times after the first), in its
    /// payload type; the other side's packets toward it are held back meanwhile. A
    /// `MediaEvent::PlaybackDone` follows when it ends.
    pub fn play(&mut self, id: StreamId, side: Side, prompt: Arc<EncodedPrompt>, how: Playback) {
        if let Some(worker) = self.streams.get(&id).map(|s| s.worker) {
            self.send(
                worker,
                Command::Play {
                    id: id.0,
                    side,
                    prompt,
                    how,
                },
            );
        }
    }

    /// Report `side`'s key presses (`MediaEvent::Dtmf`) even while they are relayed to a
    /// far side that takes them too: a menu or feature code is listening.
    pub fn report_dtmf(&mut self, id: StreamId, side: Side, on: bool) {
        if let Some(worker) = self.streams.get(&id).map(|s| s.worker) {
            self.send(worker, Command::ReportDtmf { id: id.0, side, on });
        }
    }

    pub fn stop_playing(&mut self, id: StreamId, side: Side) {
        if let Some(worker) = self.streams.get(&id).map(|s| s.worker) {
            self.send(worker, Command::StopPlaying { id: id.0, side });
        }
    }

    /// Each side's telephone-event format. When exactly one side has one, its events are
    /// not relayed but reported (`MediaEvent::Dtmf`); when both do, they pass as media.
    pub fn set_dtmf(&mut self, id: StreamId, formats: [EventFormat; 2]) {
        if let Some(worker) = self.streams.get(&id).map(|s| s.worker) {
            self.send(worker, Command::SetDtmf { id: id.0, formats });
        }
    }

    /// Send a key press to `side`'s party as RFC 4733 events (it must have a telephone-event
    /// format): in the stream's own numbering when Warden transcodes it, else in the
    /// sequence of the packets relayed to that party, which are renumbered after it.
    pub fn send_dtmf(&mut self, id: StreamId, side: Side, key: char, duration: Duration) {
        if let Some(worker) = self.streams.get(&id).map(|s| s.worker) {
            self.send(
                worker,
                Command::SendDtmf {
                    id: id.0,
                    side,
                    key,
                    duration,
                },
            );
        }
    }

    /// Where media events (playback finished, DTMF) are delivered, from the worker threads.
    pub fn set_event_sink(&mut self, sink: EventSink) {
        for worker in 0..self.workers.len() {
            self.send(worker, Command::SetEvents(sink.clone()));
        }
    }

    /// Make `side` of stream `id` a member of conference `room` (any number naming it; the
    /// room begins with its first member): from now on that side's party hears every
    /// other member mixed, in `leg`'s codec, and is heard by them. False when the stream
    /// is unknown or could not be moved to the worker mixing the room.
    pub fn join(&mut self, id: StreamId, side: Side, room: u64, leg: LegCodec) -> bool {
        self.leave(id);
        let Some(current) = self.streams.get(&id).map(|s| s.worker) else {
            return false;
        };
        let worker = self.rooms.get(&room).map_or(current, |r| r.0);
        if worker != current {
            // A room is mixed on one thread: the stream moves there, sockets and all.
            let (reply, moved) = channel();
            self.send_now(current, Command::Detach { id: id.0, reply });
            let Ok(stream) = moved.recv() else {
                return false;
            };
            self.send(worker, Command::Adopt(stream));
        }
        if let Some(info) = self.streams.get_mut(&id) {
            info.worker = worker;
            info.room = Some(room);
        }
        self.rooms.entry(room).or_insert((worker, 0)).1 += 1;
        self.send(
            worker,
            Command::Join {
                id: id.0,
                side,
                room,
                leg,
            },
        );
        true
    }

    /// Take stream `id` out of its room (the room ends with its last member).
    pub fn leave(&mut self, id: StreamId) {
        let Some(info) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(room) = info.room.take() else {
            return;
        };
        let worker = info.worker;
        if let Some(entry) = self.rooms.get_mut(&room) {
            entry.1 -= 1;
            if entry.1 == 0 {
                self.rooms.remove(&room);
            }
        }
        self.send(worker, Command::Leave(id.0));
    }

    /// Conference rooms with members now.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Where finished recordings are announced (set before the first `record`).
    pub fn set_recording_sink(&mut self, sink: crate::record::FinishedSink) {
        self.recording_sink = Some(sink);
    }

    /// Record stream `id` (both parties as they send) until `stop_recording` or its close;
    /// the file is announced to the recording sink when complete. False when the stream
    /// is unknown or the recorder cannot start.
    pub fn record(&mut self, id: StreamId, spec: crate::record::RecordSpec) -> bool {
        let Some(worker) = self.streams.get(&id).map(|s| s.worker) else {
            return false;
        };
        if self.recorder.is_none() {
            let sink = self
                .recording_sink
                .clone()
                .unwrap_or_else(|| std::sync::Arc::new(|_| {}));
            match crate::record::Recorder::start(sink) {
                Ok(r) => self.recorder = Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the recorder thread");
                    return false;
                }
            }
        }
        let Some(recorder) = self.recorder.as_mut() else {
            return false;
        };
        let tap = Box::new(recorder.begin(spec));
        self.send(worker, Command::Record { id: id.0, tap });
        true
    }

    /// Stop recording stream `id` (its file is completed).
    pub fn stop_recording(&mut self, id: StreamId) {
        if let Some(worker) = self.streams.get(&id).map(|s| s.worker) {
            self.send(worker, Command::StopRecording(id.0));
        }
    }

    /// Recorded packets dropped: more audio queued for the recorder than its bound, or
    /// held back longer than the disk thread could take it.
    pub fn recording_dropped(&self) -> u64 {
        self.recorder.as_ref().map_or(0, |r| {
            r.link.dropped.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Close a stream: its worker parks the sockets (they stay bound, its late packets
    /// are dropped), and the pairs are free for a later stream on that worker at once: the
    /// worker applies its commands in order.
    pub fn close(&mut self, id: StreamId) {
        self.leave(id);
        if let Some(info) = self.streams.remove(&id) {
            for side in 0..2 {
                let leg = info.counters.leg(side).snapshot();
                self.closed_packets += leg.rtp_packets;
                self.closed_bytes += leg.rtp_bytes;
                self.closed_strangers += leg.strangers;
            }
            self.send(info.worker, Command::Remove(id.0));
            let now = Instant::now();
            for pair in info.ports {
                self.pool.park(pair, info.worker, now);
            }
        }
    }

    /// Streams, transcoding channels and RTP relayed so far (a walk over the open streams).
    pub fn totals(&self) -> RelayTotals {
        let mut t = RelayTotals {
            streams: self.streams.len() as u64,
            rtp_packets: self.closed_packets,
            rtp_bytes: self.closed_bytes,
            strangers: self.closed_strangers,
            unassigned: self.unassigned.load(Ordering::Relaxed),
            parked_pairs: self.pool.parked() as u64,
            ..RelayTotals::default()
        };
        for info in self.streams.values() {
            t.transcoding += u64::from(info.transcoding);
            for side in 0..2 {
                let leg = info.counters.leg(side).snapshot();
                t.rtp_packets += leg.rtp_packets;
                t.rtp_bytes += leg.rtp_bytes;
                t.strangers += leg.strangers;
            }
        }
        t
    }

    pub fn stats(&self, id: StreamId) -> Option<StreamStats> {
        self.streams.get(&id).map(|s| StreamStats {
            a: s.counters.leg(0).snapshot(),
            b: s.counters.leg(1).snapshot(),
        })
    }

    /// Wait until every worker has applied the commands sent so far and published the
    /// statistics of every packet it has handled (tests; operators never need it).
    pub fn sync(&mut self) {
        let now = Instant::now();
        for w in &mut self.workers {
            let (tx, rx) = channel();
            let _ = w.commands.send(Command::Sync(tx));
            w.wake_now(now);
            let _ = rx.recv();
        }
    }

    /// From now on, commands wake their worker only at [`Relay::flush`]: a caller that
    /// issues several per turn (a call's stream, remotes and codecs) then costs each worker
    /// one wake-up per turn at most, and none for commands that can wait for its next
    /// packet.
    pub fn batch_wakes(&mut self) {
        self.batching_wakes = true;
    }

    /// Send a command that the caller then waits on: its worker wakes now.
    fn send_now(&mut self, worker: usize, command: Command) {
        if let Some(w) = self.workers.get_mut(worker) {
            let _ = w.commands.send(command);
            w.wake_now(Instant::now());
        }
    }

    /// Wake every worker that has commands queued since the last flush which cannot wait
    /// (or have waited long enough).
    pub fn flush(&mut self) {
        if self.workers.iter().any(|w| w.unwoken > 0) {
            self.flush_at(Instant::now());
        }
    }

    fn flush_at(&mut self, now: Instant) {
        for w in self.workers.iter_mut().filter(|w| w.unwoken > 0) {
            if w.urgent || w.unwoken >= LAZY_MAX || now.duration_since(w.woken_at) >= LAZY_WAIT {
                w.wake_now(now);
            }
        }
    }

    fn send(&mut self, worker: usize, command: Command) {
        let batching = self.batching_wakes;
        if let Some(w) = self.workers.get_mut(worker) {
            let urgent = command.is_urgent();
            let _ = w.commands.send(command);
            match batching {
                true => {
                    w.unwoken += 1;
                    w.urgent |= urgent;
                }
                false => w.wake_now(Instant::now()),
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.commands.send(Command::Stop);
            w.wake.notify();
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batching_relay(first_port: u16) -> Relay {
        let mut relay = Relay::start(&RelayConfig {
            address: "127.0.0.1".parse().expect("ip"),
            first_port,
            last_port: first_port + 3,
            workers: 1,
            latching: Latching::Strict,
            coalesce: Duration::ZERO,
            codecs: Default::default(),
        })
        .expect("relay starts");
        relay.batch_wakes();
        relay
    }

    fn remote(rtp: SocketAddr) -> Remote {
        Remote {
            rtp,
            rtcp: rtp,
            clock_rate: 8000,
        }
    }

    fn unwoken(relay: &Relay) -> (usize, bool) {
        (relay.workers[0].unwoken, relay.workers[0].urgent)
    }

    #[test]
    fn commands_that_can_wait_for_a_packet_wake_no_worker_until_they_waited_long_enough() {
        let mut relay = batching_relay(32000);
        // The first stream binds its sockets: its worker must poll them now.
        let first = relay.open().expect("stream");
        assert_eq!(unwoken(&relay), (1, true));
        relay.flush();
        assert_eq!(unwoken(&relay), (0, false));
        relay.close(first);
        relay.flush();
        relay.sync();
        // The next stream takes the parked pair: opening it, pointing it at the parties and
        // closing it all wait for the worker's next packet.
        let start = Instant::now();
        let second = relay.open().expect("stream");
        let to: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        relay.set_remote(second, Side::A, Some(remote(to)));
        relay.close(second);
        relay.flush_at(start);
        assert_eq!(unwoken(&relay), (3, false));
        relay.flush_at(start + LAZY_WAIT);
        assert_eq!(unwoken(&relay), (0, false));
    }

    #[test]
    fn a_burst_of_commands_that_can_wait_wakes_its_worker_anyway() {
        let mut relay = batching_relay(32010);
        let first = relay.open().expect("stream");
        relay.close(first);
        relay.flush();
        relay.sync();
        let now = relay.workers[0].woken_at;
        let stream = relay.open().expect("stream");
        let to: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        for _ in 0..LAZY_MAX - 2 {
            relay.set_remote(stream, Side::B, Some(remote(to)));
        }
        relay.flush_at(now);
        assert_eq!(unwoken(&relay), (LAZY_MAX - 1, false));
        relay.set_remote(stream, Side::B, Some(remote(to)));
        relay.flush_at(now);
        assert_eq!(unwoken(&relay), (0, false));
        // What can wait, waits no longer than the first command that cannot.
        relay.set_remote(stream, Side::B, None);
        let prompt = EncodedPrompt {
            codec: crate::codec::by_name("PCMU", 8000).expect("PCMU"),
            frames: vec![vec![0xff; 160]],
        };
        let once = Playback {
            payload_type: 0,
            repeat: 0,
            stop_on_dtmf: false,
        };
        relay.play(stream, Side::A, Arc::new(prompt), once);
        assert_eq!(unwoken(&relay), (2, true));
        relay.flush_at(now);
        assert_eq!(unwoken(&relay), (0, false));
    }
}

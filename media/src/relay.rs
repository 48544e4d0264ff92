//! The relay's control handle: opens streams (one per SDP m= line, two legs each), binds
//! their ports, tells the owning worker thread where each leg's peer is, and reads stats.
//!
//! Control calls run on the signalling thread and only post commands; the worker threads
//! own the sockets and move the packets (see `worker`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
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
use crate::worker::{Command, Stream, Worker};

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
    thread: Option<JoinHandle<()>>,
}

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
    /// Ports of streams whose sockets a worker has yet to close, by stream id; they go
    /// back to the pool when the worker says the sockets are gone (`sockets_closed`).
    closing: HashMap<u64, [PortPair; 2]>,
    sockets_closed: Receiver<u64>,
}

/// How long an open waits for closing streams' ports when none is free: a worker closes
/// sockets within microseconds of being told, unless the machine is starved of CPU.
const CLOSING_WAIT: Duration = Duration::from_millis(200);

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
        let (closed_tx, sockets_closed) = channel();
        for index in 0..count {
            let (tx, rx) = channel();
            let wake = Arc::new(EventFd::new()?);
            let worker = Worker::new(wake.clone(), rx, closed_tx.clone(), config)?;
            let thread = std::thread::Builder::new()
                .name(format!("warden-relay-{index}"))
                .spawn(move || worker.run())?;
            workers.push(WorkerHandle {
                commands: tx,
                wake,
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
            closing: HashMap::new(),
            sockets_closed,
        })
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// Port pairs free, counting those of closed streams whose worker is closing the
    /// sockets (an open waits for them).
    pub fn available(&self) -> usize {
        self.pool.available()
            + self
                .closing
                .values()
                .map(|ports| ports.len())
                .sum::<usize>()
    }

    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Open a stream: bind an RTP/RTCP port pair for each side and hand them to a worker.
    pub fn open(&mut self) -> Result<StreamId, MediaError> {
        let (a, a_sockets) = self.bind_pair()?;
        let (b, b_sockets) = match self.bind_pair() {
            Ok(x) => x,
            Err(e) => {
                drop(a_sockets);
                self.pool.release(a);
                return Err(e);
            }
        };
        let id = StreamId(self.next_id);
        self.next_id += 1;
        let worker = self.next_worker;
        self.next_worker = (self.next_worker + 1) % self.workers.len();
        let counters = Arc::new(StreamCounters::default());
        let [a_rtp, a_rtcp] = a_sockets;
        let [b_rtp, b_rtcp] = b_sockets;
        let stream = Stream::new(id.0, [a_rtp, a_rtcp, b_rtp, b_rtcp], counters.clone());
        self.send(worker, Command::Add(Box::new(stream)));
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

    fn bind_pair(&mut self) -> Result<(PortPair, [UdpSocket; 2]), MediaError> {
        self.reclaim_closed_ports();
        if self.pool.available() == 0 && !self.closing.is_empty() {
            self.wait_for_closing_ports();
        }
        let mut last_error = None;
        for _ in 0..BIND_ATTEMPTS {
            let pair = self.pool.allocate()?;
            match self.bind(pair) {
                Ok(sockets) => return Ok((pair, sockets)),
                Err(e) => {
                    // Taken by another program (or a socket not yet closed): try the next
                    // pair; this one goes to the back of the queue.
                    self.pool.release(pair);
                    last_error = Some(e);
                }
            }
        }
        Err(MediaError::Bind {
            address: self.address,
            source: last_error.unwrap_or_else(|| std::io::Error::other("no port")),
        })
    }

    /// Return to the pool the ports of every stream whose sockets are closed by now.
    fn reclaim_closed_ports(&mut self) {
        while let Ok(id) = self.sockets_closed.try_recv() {
            self.reclaim(id);
        }
    }

    /// The pool is empty but streams are closing: their ports are the next free ones, a
    /// moment away (a call just hung up and the next one came in at once).
    fn wait_for_closing_ports(&mut self) {
        let deadline = Instant::now() + CLOSING_WAIT;
        while self.pool.available() == 0 && !self.closing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.sockets_closed.recv_timeout(left) {
                Ok(id) => self.reclaim(id),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn reclaim(&mut self, id: u64) {
        for pair in self.closing.remove(&id).into_iter().flatten() {
            self.pool.release(pair);
        }
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
            self.send(current, Command::Detach { id: id.0, reply });
            let Ok(stream) = moved.recv() else {
                return false;
            };
            self.send(worker, Command::Add(stream));
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

    /// Close a stream: its worker closes the sockets, then the ports return to the pool
    /// (not before: binding them again would fail while the old sockets live).
    pub fn close(&mut self, id: StreamId) {
        self.leave(id);
        if let Some(info) = self.streams.remove(&id) {
            for side in 0..2 {
                let leg = info.counters.leg(side).snapshot();
                self.closed_packets += leg.rtp_packets;
                self.closed_bytes += leg.rtp_bytes;
                self.closed_strangers += leg.strangers;
            }
            self.closing.insert(id.0, info.ports);
            self.send(info.worker, Command::Remove(id.0));
        }
    }

    /// Streams, transcoding channels and RTP relayed so far (a walk over the open streams).
    pub fn totals(&self) -> RelayTotals {
        let mut t = RelayTotals {
            streams: self.streams.len() as u64,
            rtp_packets: self.closed_packets,
            rtp_bytes: self.closed_bytes,
            strangers: self.closed_strangers,
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
    pub fn sync(&self) {
        for w in &self.workers {
            let (tx, rx) = channel();
            let _ = w.commands.send(Command::Sync(tx));
            w.wake.notify();
            let _ = rx.recv();
        }
    }

    fn send(&self, worker: usize, command: Command) {
        if let Some(w) = self.workers.get(worker) {
            let _ = w.commands.send(command);
            w.wake.notify();
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

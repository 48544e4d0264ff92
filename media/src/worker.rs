//! One relay thread: owns a set of streams and their sockets outright and moves their
//! packets. The control side talks to it only through commands, never per packet.
//!
//! Why this is fast: each stream lives on exactly one thread, so the per-packet path takes
//! no lock and makes no channel hop; packets are received and sent in batches
//! (recvmmsg/sendmmsg) from one preallocated buffer set, forwarded from the memory they were
//! received into; after latching, sockets are connected so the kernel filters strangers
//! and skips the route lookup on each send; statistics are kept in thread-owned structs and
//! published with plain stores once per batch.
//!
//! GSO/GRO are not used: they coalesce packets of one flow, and a voice stream carries one
//! packet per 20 ms, so there is never a second packet to join; the batching that pays is
//! across sockets (one epoll wake-up for many) and across a socket's queue (recvmmsg).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::codec::CodecOptions;
use crate::prompt::EncodedPrompt;
use crate::relay::{
    EventSink, Latching, MediaEvent, RelayConfig, Remote, Side, StreamCounters, StreamId,
};
use crate::stats::{LegStats, RtpReceiver, looks_like_rtcp, read_rtcp};
use crate::sys::{BATCH, Batch, Epoll, EventFd, RawAddr, connect, disconnect, send_one};
use crate::transcode::{Direction, Transcoding};

/// Socket slots of a stream: `i ^ 2` is where socket `i`'s packets leave.
const A_RTP: usize = 0;
const B_RTP: usize = 2;
const WAKE_TOKEN: u64 = u64::MAX;
/// Batches read from one socket per readiness report, so one flooded port cannot starve
/// the others on the thread.
const ROUNDS_PER_WAKE: usize = 4;

pub(crate) enum Command {
    Add(Box<Stream>),
    SetRemote {
        id: u64,
        side: Side,
        remote: Option<Remote>,
    },
    Remove(u64),
    SetTranscoding {
        id: u64,
        transcoding: Option<Transcoding>,
    },
    Play {
        id: u64,
        side: Side,
        prompt: Arc<EncodedPrompt>,
        payload_type: u8,
        repeat: u32,
    },
    StopPlaying {
        id: u64,
        side: Side,
    },
    SetEvents(EventSink),
    /// Answered once every earlier command is applied and every packet already handled has
    /// its statistics published.
    Sync(std::sync::mpsc::Sender<()>),
    Stop,
}

/// Where one socket sends, and what it has learned about its peer.
#[derive(Default)]
struct End {
    /// Address from signalling (SDP).
    signalled: Option<SocketAddr>,
    /// Address learned from the first packet received (symmetric RTP).
    latched: Option<SocketAddr>,
    /// Kernel form of where packets leaving this socket go (latched, else signalled).
    target: Option<RawAddr>,
    connected: bool,
}

pub(crate) struct Stream {
    pub id: u64,
    /// a_rtp, a_rtcp, b_rtp, b_rtcp.
    pub sockets: [UdpSocket; 4],
    pub counters: Arc<StreamCounters>,
    ends: [End; 4],
    receivers: [RtpReceiver; 2],
    stats: [LegStats; 2],
    clock_rate: [u32; 2],
    /// When the legs share no codec: A->B and B->A.
    transcoders: Option<Box<[Direction; 2]>>,
    /// A prompt is playing to side A / B: the other side's packets are not relayed to it.
    playing: [bool; 2],
}

impl Stream {
    pub fn new(id: u64, sockets: [UdpSocket; 4], counters: Arc<StreamCounters>) -> Stream {
        Stream {
            id,
            sockets,
            counters,
            ends: Default::default(),
            receivers: Default::default(),
            stats: Default::default(),
            clock_rate: [8000; 2],
            transcoders: None,
            playing: [false; 2],
        }
    }

    fn set_remote(&mut self, side: Side, remote: Option<Remote>) {
        let base = side.index() * 2;
        let addrs = remote.map(|r| [r.rtp, r.rtcp]);
        if let Some(r) = &remote {
            self.clock_rate[side.index()] = r.clock_rate.max(1);
        }
        for k in 0..2 {
            let i = base + k;
            let signalled = addrs.map(|a| a[k]);
            let end = &mut self.ends[i];
            if end.signalled == signalled {
                continue;
            }
            // New address from signalling (a re-INVITE moved the media, or hold with
            // 0.0.0.0): forget what we latched so the new source can be learned.
            end.signalled = signalled.filter(|a| !a.ip().is_unspecified() && a.port() != 0);
            end.latched = None;
            if end.connected {
                let _ = disconnect(self.sockets[i].as_raw_fd());
                end.connected = false;
            }
            end.target = end.signalled.map(RawAddr::new);
        }
    }
}

pub(crate) struct Worker {
    epoll: Epoll,
    wake: Arc<EventFd>,
    commands: Receiver<Command>,
    latching: Latching,
    coalesce: Duration,
    codecs: CodecOptions,
    players: Vec<Player>,
    events: Option<EventSink>,
    slots: Vec<Option<Box<Stream>>>,
    free: Vec<usize>,
    by_id: HashMap<u64, usize>,
    epoch: Instant,
}

impl Worker {
    pub fn new(
        wake: Arc<EventFd>,
        commands: Receiver<Command>,
        config: &RelayConfig,
    ) -> std::io::Result<Worker> {
        let epoll = Epoll::new()?;
        epoll.add(wake.raw(), WAKE_TOKEN)?;
        Ok(Worker {
            epoll,
            wake,
            commands,
            latching: config.latching,
            coalesce: config.coalesce,
            codecs: config.codecs,
            players: Vec::new(),
            events: None,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            epoch: Instant::now(),
        })
    }

    pub fn run(mut self) {
        // Made here, on the worker's own thread: the batch holds raw pointers into itself.
        let mut batch = Batch::new();
        // Sleep exactly as long as asked: the default 50 us timer slack would double the
        // coalescing delay.
        set_timer_slack_ns(1_000);
        // SAFETY (of the zeroed array): epoll_event is a plain C struct.
        let mut events: [libc::epoll_event; 256] = unsafe { std::mem::zeroed() };
        loop {
            let n = self.epoll.wait(&mut events, self.next_frame_timeout());
            // One clock read per wake-up serves every packet handled in it (jitter needs
            // arrival times; a few microseconds of skew is far below what it measures).
            let now_us = self.epoch.elapsed().as_micros() as u64;
            let mut busy = false;
            for event in &events[..n] {
                let token = event.u64;
                if token == WAKE_TOKEN {
                    self.wake.drain();
                    if !self.apply_commands() {
                        return;
                    }
                    continue;
                }
                self.on_readable(
                    &mut batch,
                    (token >> 2) as usize,
                    (token & 3) as usize,
                    now_us,
                );
                busy = true;
            }
            // Under load, let packets gather before polling again: one wake-up then serves
            // many sockets instead of one packet (a thread wake-up costs as much as
            // relaying a few packets). Idle, the thread blocks in epoll_wait as before.
            if busy && !self.coalesce.is_zero() {
                std::thread::sleep(self.coalesce);
            }
            self.play_due(Instant::now());
        }
    }

    /// Milliseconds until the next prompt frame is due (-1: no prompt playing).
    fn next_frame_timeout(&self) -> i32 {
        let Some(next) = self.players.iter().map(|p| p.next).min() else {
            return -1;
        };
        let wait = next.saturating_duration_since(Instant::now());
        // Round up: waking early would only loop.
        wait.as_micros().div_ceil(1000).min(1000) as i32
    }

    /// Send every prompt frame that is due, paced by the clock (not by packet arrival).
    fn play_due(&mut self, now: Instant) {
        let mut finished = Vec::new();
        for (index, player) in self.players.iter_mut().enumerate() {
            let Some(stream) = self.slots.get(player.slot).and_then(|s| s.as_deref()) else {
                finished.push(index);
                continue;
            };
            let socket = player.side * 2;
            let end = &stream.ends[socket];
            let to = if end.connected {
                None
            } else {
                end.target.as_ref()
            };
            let fd = stream.sockets[socket].as_raw_fd();
            // Catch up at most a few frames after a stall; beyond that, skip ahead.
            let mut sent = 0;
            while player.next <= now && sent < 3 {
                match player.frame() {
                    Some(packet) => {
                        if end.target.is_some() {
                            send_one(fd, packet, to);
                        }
                    }
                    None => {
                        finished.push(index);
                        break;
                    }
                }
                player.next += FRAME;
                sent += 1;
            }
            if player.next <= now {
                player.next = now + FRAME;
            }
        }
        for index in finished.into_iter().rev() {
            let player = self.players.swap_remove(index);
            if let Some(stream) = self
                .slots
                .get_mut(player.slot)
                .and_then(|s| s.as_deref_mut())
            {
                stream.playing[player.side] = false;
            }
            if let Some(sink) = &self.events {
                sink(MediaEvent::PlaybackDone {
                    stream: StreamId(player.stream),
                    side: if player.side == 0 { Side::A } else { Side::B },
                });
            }
        }
    }

    /// Apply queued commands; false once told to stop.
    fn apply_commands(&mut self) -> bool {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Add(stream) => self.add(stream),
                Command::SetRemote { id, side, remote } => {
                    if let Some(s) = self.stream_mut(id) {
                        s.set_remote(side, remote);
                    }
                }
                Command::Remove(id) => self.remove(id),
                Command::SetTranscoding { id, transcoding } => {
                    let codecs = self.codecs;
                    if let Some(s) = self.stream_mut(id) {
                        s.transcoders = transcoding.map(|t| {
                            Box::new([
                                Direction::new(t.a, t.b, &codecs),
                                Direction::new(t.b, t.a, &codecs),
                            ])
                        });
                    }
                }
                Command::Play {
                    id,
                    side,
                    prompt,
                    payload_type,
                    repeat,
                } => {
                    let index = side.index();
                    self.players
                        .retain(|p| !(p.stream == id && p.side == index));
                    if let Some(&slot) = self.by_id.get(&id) {
                        if let Some(s) = self.slots.get_mut(slot).and_then(|s| s.as_deref_mut()) {
                            s.playing[index] = true;
                        }
                        self.players.push(Player::new(
                            id,
                            slot,
                            index,
                            prompt,
                            payload_type,
                            repeat,
                        ));
                    }
                }
                Command::StopPlaying { id, side } => {
                    let index = side.index();
                    self.players
                        .retain(|p| !(p.stream == id && p.side == index));
                    if let Some(s) = self.stream_mut(id) {
                        s.playing[index] = false;
                    }
                }
                Command::SetEvents(sink) => self.events = Some(sink),
                Command::Sync(done) => {
                    let _ = done.send(());
                }
                Command::Stop => return false,
            }
        }
        true
    }

    fn stream_mut(&mut self, id: u64) -> Option<&mut Stream> {
        let slot = *self.by_id.get(&id)?;
        self.slots.get_mut(slot)?.as_deref_mut()
    }

    fn add(&mut self, stream: Box<Stream>) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        for (i, socket) in stream.sockets.iter().enumerate() {
            let token = ((slot as u64) << 2) | i as u64;
            if let Err(e) = self.epoll.add(socket.as_raw_fd(), token) {
                tracing::error!(stream = stream.id, error = %e, "cannot watch media socket");
            }
        }
        self.by_id.insert(stream.id, slot);
        self.slots[slot] = Some(stream);
    }

    fn remove(&mut self, id: u64) {
        let Some(slot) = self.by_id.remove(&id) else {
            return;
        };
        if let Some(stream) = self.slots.get_mut(slot).and_then(Option::take) {
            for socket in &stream.sockets {
                self.epoll.remove(socket.as_raw_fd());
            }
            self.players.retain(|p| p.stream != id);
            self.free.push(slot);
        }
        // Dropping the stream closes its sockets; the ports are already back in the pool.
    }

    /// The hot path: drain a readable socket and forward what it received.
    fn on_readable(&mut self, batch: &mut Batch, slot: usize, socket: usize, now_us: u64) {
        let Some(stream) = self.slots.get_mut(slot).and_then(|s| s.as_deref_mut()) else {
            return;
        };
        let side = socket / 2;
        let out = socket ^ 2;
        let in_fd = stream.sockets[socket].as_raw_fd();
        let out_fd = stream.sockets[out].as_raw_fd();
        for _ in 0..ROUNDS_PER_WAKE {
            let n = match batch.recv(in_fd) {
                Ok(0) => return,
                Ok(n) => n,
                // An ICMP error from an earlier send surfaces here; the socket is fine.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    tracing::warn!(stream = stream.id, error = %e, "media receive failed");
                    return;
                }
            };
            let mut keep: u64 = 0;
            let mut kept = 0u64;
            for k in 0..n {
                let packet = batch.packet(k);
                if packet.is_empty() {
                    stream.stats[side].dropped += 1;
                    continue;
                }
                if !accept(
                    &mut stream.ends[socket],
                    batch.source(k),
                    self.latching,
                    in_fd,
                ) {
                    stream.stats[side].dropped += 1;
                    continue;
                }
                account(stream, side, socket, packet, now_us);
                if stream.playing[out / 2] {
                    continue; // the party hears the prompt, not the other side
                }
                let rtp_socket = socket == A_RTP || socket == B_RTP;
                if let Some(directions) = stream.transcoders.as_mut().filter(|_| rtp_socket)
                    && !looks_like_rtcp(packet)
                {
                    let end = &stream.ends[out];
                    let to = if end.connected {
                        None
                    } else {
                        end.target.as_ref()
                    };
                    if end.target.is_some() {
                        directions[side].on_packet(packet, &mut |bytes| {
                            send_one(out_fd, bytes, to);
                        });
                    }
                    continue;
                }
                keep |= 1 << k;
                kept += 1;
            }
            let end = &stream.ends[out];
            let sent = match (&end.target, end.connected) {
                (Some(_), true) => batch.send(out_fd, keep, None),
                (Some(to), false) => batch.send(out_fd, keep, Some(to)),
                (None, _) => 0,
            };
            stream.stats[side].dropped += kept - sent as u64;
            stream.counters.leg(side).publish(&stream.stats[side]);
            if n < BATCH {
                return;
            }
        }
    }
}

const FRAME: Duration = Duration::from_millis(20);

/// A prompt being played to one side of a stream: 20 ms frames with their own RTP header
/// (SSRC, sequence numbers, timestamps on the codec's clock, marker on the first packet).
struct Player {
    stream: u64,
    slot: usize,
    side: usize,
    prompt: Arc<EncodedPrompt>,
    index: usize,
    repeats_left: u32,
    next: Instant,
    payload_type: u8,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    marker: bool,
    packet: Vec<u8>,
}

impl Player {
    fn new(
        stream: u64,
        slot: usize,
        side: usize,
        prompt: Arc<EncodedPrompt>,
        payload_type: u8,
        repeat: u32,
    ) -> Player {
        let start = Instant::now();
        let seed = (stream as u32).wrapping_mul(2_654_435_761) ^ start.elapsed().subsec_nanos();
        Player {
            stream,
            slot,
            side,
            prompt,
            index: 0,
            repeats_left: repeat,
            next: start,
            payload_type,
            ssrc: seed,
            seq: (seed >> 7) as u16,
            timestamp: seed.rotate_left(13),
            marker: true,
            packet: Vec::with_capacity(512),
        }
    }

    /// The next frame's packet, or None when the prompt (and its repeats) are over.
    fn frame(&mut self) -> Option<&[u8]> {
        if self.index == self.prompt.frames.len() {
            if self.repeats_left == 0 {
                return None;
            }
            self.repeats_left -= 1;
            self.index = 0;
        }
        let payload = self.prompt.frames.get(self.index)?;
        self.packet.clear();
        self.packet.push(0x80);
        self.packet.push(if self.marker {
            0x80 | self.payload_type
        } else {
            self.payload_type
        });
        self.packet.extend_from_slice(&self.seq.to_be_bytes());
        self.packet.extend_from_slice(&self.timestamp.to_be_bytes());
        self.packet.extend_from_slice(&self.ssrc.to_be_bytes());
        self.packet.extend_from_slice(payload);
        self.marker = false;
        self.index += 1;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self
            .timestamp
            .wrapping_add(self.prompt.codec.rtp_clock / 50);
        Some(&self.packet)
    }
}

fn set_timer_slack_ns(ns: libc::c_ulong) {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0) };
}

/// Latching (symmetric RTP): the first packet teaches where the party really is (behind
/// NAT that differs from its SDP); afterwards, in strict mode, only that address is heard.
fn accept(end: &mut End, source: Option<SocketAddr>, latching: Latching, fd: i32) -> bool {
    let Some(source) = source else {
        return false;
    };
    match end.latched {
        Some(latched) if latched == source => true,
        Some(_) if latching == Latching::Strict => false,
        _ => {
            end.latched = Some(source);
            let raw = RawAddr::new(source);
            end.connected = latching == Latching::Strict && connect(fd, &raw).is_ok();
            end.target = Some(raw);
            true
        }
    }
}

/// Count a relayed packet into its leg's statistics (RTP or RTCP, by port and content).
fn account(stream: &mut Stream, side: usize, socket: usize, packet: &[u8], now_us: u64) {
    let stats = &mut stream.stats[side];
    let rtp_socket = socket == A_RTP || socket == B_RTP;
    if !rtp_socket || looks_like_rtcp(packet) {
        stats.rtcp_packets += 1;
        read_rtcp(packet, stats);
        return;
    }
    stats.rtp_packets += 1;
    stats.rtp_bytes += packet.len() as u64;
    if let Ok(rtp) = rtp_types::RtpPacket::parse(packet) {
        let clock = u64::from(stream.clock_rate[side]);
        let arrival = (now_us * clock / 1_000_000) as u32;
        let rx = &mut stream.receivers[side];
        rx.on_packet(rtp.ssrc(), rtp.sequence_number(), rtp.timestamp(), arrival);
        stats.lost = rx.lost();
        stats.jitter_us = rx.jitter() * 1_000_000 / clock;
    }
}

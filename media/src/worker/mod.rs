//! One relay thread: owns a set of streams and their sockets outright and moves their
//! packets. The control side talks to it only through commands, never per packet.
//!
//! Why this is fast: each stream lives on exactly one thread, so the per-packet path takes
//! no lock and makes no channel hop; packets are received and sent in batches
//! (recvmmsg/sendmmsg) from one preallocated buffer set, forwarded from the memory they were
//! received into; a packet's source is checked against the stream's latched one in the
//! same pass (strangers are dropped and counted, which a connected socket's kernel filter
//! would hide, at the price of a route lookup per send); statistics are kept in
//! thread-owned structs and published with plain stores once per batch.
//!
//! GSO/GRO are not used: they coalesce packets of one flow, and a voice stream carries one
//! packet per 20 ms, so there is never a second packet to join; the batching that pays is
//! across sockets (one epoll wake-up for many) and across a socket's queue (recvmmsg).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::codec::CodecOptions;
use crate::dtmf::{EventReader, EventWriter};
use crate::mixer::{Member, Room};
use crate::prompt::EncodedPrompt;
use crate::record::{Outbox, Tap};
use crate::relay::{
    EventFormat, EventSink, Latching, MediaEvent, Playback, RelayConfig, Remote, Side,
    StreamCounters, StreamId,
};
use crate::srtp::{SrtpSetting, SrtpSide};
use crate::stats::{LegStats, RtpReceiver, looks_like_rtcp, read_rtcp};
use crate::sys::{BATCH, Batch, Epoll, EventFd, PACKET_ROOM, RawAddr, send_one};
use crate::transcode::{Direction, LegCodec, Transcoding};

mod playout;
mod streams;
use playout::{FRAME, Player, Writer};
use streams::Route;

/// Socket slots of a stream: `i ^ 2` is where socket `i`'s packets leave.
const A_RTP: usize = 0;
const B_RTP: usize = 2;
/// A socket's epoll token is its port (so a parked socket needs no epoll_ctl to serve a
/// stream again); the eventfd's is this.
const WAKE_TOKEN: u64 = u64::MAX;
/// Batches read from one socket per readiness report, so one flooded port cannot starve
/// the others on the thread.
const ROUNDS_PER_WAKE: usize = 4;

/// A stream to open: its four ports, with the sockets the worker does not hold parked.
pub(crate) struct NewStream {
    pub id: u64,
    /// a_rtp, a_rtcp, b_rtp, b_rtcp.
    pub ports: [u16; 4],
    pub sockets: [Option<UdpSocket>; 4],
    pub counters: Arc<StreamCounters>,
}

pub(crate) enum Command {
    Open(Box<NewStream>),
    /// A stream moved here with its sockets (to the worker mixing its room).
    Adopt(Box<Stream>),
    /// Hand a parked pair's sockets over (RTP port, RTCP above it), for a stream opened
    /// on another worker.
    Lend {
        rtp: u16,
        reply: std::sync::mpsc::Sender<Option<[UdpSocket; 2]>>,
    },
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
    SetSrtp {
        id: u64,
        side: Side,
        setting: SrtpSetting,
    },
    Play {
        id: u64,
        side: Side,
        prompt: Arc<EncodedPrompt>,
        how: Playback,
    },
    ReportDtmf {
        id: u64,
        side: Side,
        on: bool,
    },
    StopPlaying {
        id: u64,
        side: Side,
    },
    SetDtmf {
        id: u64,
        formats: [EventFormat; 2],
    },
    SendDtmf {
        id: u64,
        side: Side,
        key: char,
        duration: Duration,
    },
    SetEvents(EventSink),
    /// Make `side` of the stream a member of a conference room on this worker (the room
    /// begins with its first member).
    Join {
        id: u64,
        side: Side,
        room: u64,
        leg: LegCodec,
    },
    /// Take the stream out of its room (a room ends with its last member).
    Leave(u64),
    /// Record what both parties send (`record`), until `StopRecording` or the stream's end.
    Record {
        id: u64,
        tap: Box<Tap>,
    },
    StopRecording(u64),
    /// Hand the stream back (to move it to the worker that holds its room).
    Detach {
        id: u64,
        reply: std::sync::mpsc::Sender<Box<Stream>>,
    },
    /// Answered once every earlier command is applied and every packet already handled has
    /// its statistics published.
    Sync(std::sync::mpsc::Sender<()>),
    Stop,
}

impl Command {
    /// Whether the worker must act on this before its next packet. The others only
    /// change how packets are handled, and a worker applies every queued command at each
    /// wake-up before it reads a packet, so they can wait for the next one: a packet on a
    /// port the worker already polls (a parked pair), or the next command that cannot.
    pub(crate) fn is_urgent(&self) -> bool {
        match self {
            // Sockets bound for this stream are polled only once the worker has them.
            Command::Open(stream) => stream.sockets.iter().any(Option::is_some),
            Command::SetRemote { .. }
            | Command::Remove(_)
            | Command::SetSrtp { .. }
            | Command::ReportDtmf { .. }
            | Command::SetDtmf { .. } => false,
            // Clock-driven work (prompts, DTMF, transcoder ticks, mixing), replies and
            // hand-overs: now.
            _ => true,
        }
    }
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
}

pub(crate) struct Stream {
    pub id: u64,
    /// a_rtp, a_rtcp, b_rtp, b_rtcp, and their ports.
    pub sockets: [UdpSocket; 4],
    ports: [u16; 4],
    pub counters: Arc<StreamCounters>,
    ends: [End; 4],
    receivers: [RtpReceiver; 2],
    stats: [LegStats; 2],
    clock_rate: [u32; 2],
    /// When the legs share no codec: A->B and B->A.
    transcoders: Option<Box<[Direction; 2]>>,
    /// A prompt is playing to side A / B: the other side's packets are not relayed to it.
    playing: [bool; 2],
    /// Each side's telephone-event format, and the reader of its events when they are
    /// reported instead of relayed.
    events: [EventFormat; 2],
    readers: [EventReader; 2],
    /// Report each side's key presses even when they are relayed (a menu listens).
    report: [bool; 2],
    /// The last RTP header relayed from each side (SSRC, sequence, timestamp, when in µs
    /// of the worker's clock), so
    /// events of ours toward the other side continue that stream.
    last_rtp: [Option<(u32, u16, u32, u64)>; 2],
    /// Added to the sequence numbers of packets relayed to each side: the events Warden
    /// slipped into that stream.
    seq_shift: [u16; 2],
    /// The conference room a side of the stream is in (room, side index): that side's
    /// audio goes to the room's mix instead of across the stream.
    room: Option<(u64, usize)>,
    /// SRTP toward and from each side's party.
    srtp: [Sealing; 2],
    /// Recording: each party's audio is copied to the recorder as it arrives.
    tap: Option<Box<Tap>>,
}

impl Stream {
    fn new(
        id: u64,
        sockets: [UdpSocket; 4],
        ports: [u16; 4],
        counters: Arc<StreamCounters>,
    ) -> Stream {
        Stream {
            id,
            sockets,
            ports,
            counters,
            ends: Default::default(),
            receivers: Default::default(),
            stats: Default::default(),
            clock_rate: [8000; 2],
            transcoders: None,
            playing: [false; 2],
            events: [None; 2],
            readers: Default::default(),
            report: [false; 2],
            last_rtp: [None; 2],
            seq_shift: [0; 2],
            room: None,
            srtp: Default::default(),
            tap: None,
        }
    }

    /// Key, hold or clear one side; the same keys again change nothing.
    fn set_srtp(&mut self, side: Side, setting: SrtpSetting) {
        let slot = &mut self.srtp[side.index()];
        *slot = match setting {
            SrtpSetting::Clear => Sealing::Clear,
            SrtpSetting::Awaiting => Sealing::Awaiting,
            SrtpSetting::Keys(keys) => {
                if let Sealing::Keyed(known) = slot
                    && *known.keys() == keys
                {
                    return;
                }
                match SrtpSide::new(keys) {
                    Ok(side) => Sealing::Keyed(Box::new(side)),
                    Err(e) => {
                        tracing::error!(stream = self.id, error = %e, "SRTP keys refused");
                        Sealing::Awaiting
                    }
                }
            }
        };
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
            end.target = end.signalled.map(RawAddr::new);
        }
    }
}

pub(crate) struct Worker {
    epoll: Epoll,
    wake: Arc<EventFd>,
    commands: Receiver<Command>,
    /// Sockets kept bound between calls, by port, and where each port's readiness goes.
    parked: HashMap<u16, UdpSocket>,
    routes: HashMap<u16, Route>,
    /// Packets drained from parked sockets (shared with the control side).
    unassigned: Arc<AtomicU64>,
    latching: Latching,
    coalesce: Duration,
    codecs: CodecOptions,
    /// DTMF events of ours being sent, paced like the prompts.
    writers: Vec<Writer>,
    /// Transcoded streams play out of their jitter buffers on this 20 ms clock; None
    /// while no stream is transcoded.
    next_tick: Option<Instant>,
    players: Vec<Player>,
    events: Option<EventSink>,
    rooms: HashMap<u64, Room>,
    slots: Vec<Option<Box<Stream>>>,
    free: Vec<usize>,
    by_id: HashMap<u64, usize>,
    epoch: Instant,
    /// Where SRTP work writes a packet before it goes back into the batch or out.
    scratch: Vec<u8>,
    /// What this turn gathered for the recorder (sent at the turn's end).
    record_out: Outbox,
}

impl Worker {
    pub fn new(
        wake: Arc<EventFd>,
        commands: Receiver<Command>,
        unassigned: Arc<AtomicU64>,
        config: &RelayConfig,
    ) -> std::io::Result<Worker> {
        let epoll = Epoll::new()?;
        epoll.add(wake.raw(), WAKE_TOKEN)?;
        Ok(Worker {
            epoll,
            wake,
            commands,
            parked: HashMap::new(),
            routes: HashMap::new(),
            unassigned,
            latching: config.latching,
            coalesce: config.coalesce,
            codecs: config.codecs,
            writers: Vec::new(),
            next_tick: None,
            players: Vec::new(),
            events: None,
            rooms: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            epoch: Instant::now(),
            scratch: Vec::with_capacity(PACKET_ROOM),
            record_out: Outbox::default(),
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
            // Commands before packets, wake-up or not: a caller that batches its wake-ups
            // queues a stream's commands before its SDP tells anyone the ports, so a packet
            // that beats the wake-up still finds its stream (and a parked port its call).
            if n > 0 && !self.apply_commands() {
                return;
            }
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
                let port = token as u16;
                match self.routes.get(&port).copied() {
                    Some(Route::Stream { slot, index }) => {
                        self.on_readable(&mut batch, slot, index, now_us)
                    }
                    Some(Route::Parked) => self.drain_parked(&mut batch, port),
                    None => {}
                }
                busy = true;
            }
            // Under load, let packets gather before polling again: one wake-up then serves
            // many sockets instead of one packet (a thread wake-up costs as much as
            // relaying a few packets). Idle, the thread blocks in epoll_wait as before.
            if busy && !self.coalesce.is_zero() {
                std::thread::sleep(self.coalesce);
            }
            let now = Instant::now();
            self.play_due(now);
            self.write_due(now);
            self.tick_transcoders(now);
            self.record_out.flush();
        }
    }

    /// Milliseconds until the next prompt frame, DTMF packet or transcoder tick is due
    /// (-1: none pending).
    fn next_frame_timeout(&self) -> i32 {
        let players = self.players.iter().map(|p| p.next);
        let Some(next) = players
            .chain(self.writers.iter().map(|w| w.event.next))
            .chain(self.next_tick)
            .min()
        else {
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
            let Some(stream) = self
                .slots
                .get_mut(player.slot)
                .and_then(|s| s.as_deref_mut())
            else {
                finished.push(index);
                continue;
            };
            let socket = player.side * 2;
            let end = &stream.ends[socket];
            let to = end.target.as_ref();
            let fd = stream.sockets[socket].as_raw_fd();
            // Catch up at most a few frames after a stall; beyond that, skip ahead.
            let mut sent = 0;
            while player.next <= now && sent < 3 {
                match player.frame() {
                    Some(packet) => {
                        if end.target.is_some() {
                            let srtp = &mut stream.srtp[socket / 2];
                            deliver(srtp, &mut self.scratch, fd, packet, to);
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
                Command::Open(stream) => self.open(*stream),
                Command::Adopt(stream) => self.adopt(stream),
                Command::Lend { rtp, reply } => {
                    let _ = reply.send(self.lend(rtp));
                }
                Command::SetSrtp { id, side, setting } => {
                    if let Some(s) = self.stream_mut(id) {
                        s.set_srtp(side, setting);
                    }
                }
                Command::SetRemote { id, side, remote } => {
                    if let Some(s) = self.stream_mut(id) {
                        s.set_remote(side, remote);
                    }
                }
                Command::Remove(id) => self.remove(id),
                Command::SetTranscoding { id, transcoding } => {
                    let codecs = self.codecs;
                    if transcoding.is_some() && self.next_tick.is_none() {
                        self.next_tick = Some(Instant::now() + FRAME);
                    }
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
                    how,
                } => {
                    let index = side.index();
                    self.players
                        .retain(|p| !(p.stream == id && p.side == index));
                    if let Some(&slot) = self.by_id.get(&id) {
                        if let Some(s) = self.slots.get_mut(slot).and_then(|s| s.as_deref_mut()) {
                            s.playing[index] = true;
                        }
                        self.players.push(Player::new(id, slot, index, prompt, how));
                    }
                }
                Command::ReportDtmf { id, side, on } => {
                    if let Some(s) = self.stream_mut(id) {
                        s.report[side.index()] = on;
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
                Command::SetDtmf { id, formats } => {
                    if let Some(s) = self.stream_mut(id) {
                        s.events = formats;
                    }
                }
                Command::SendDtmf {
                    id,
                    side,
                    key,
                    duration,
                } => self.start_dtmf(id, side.index(), key, duration),
                Command::SetEvents(sink) => self.events = Some(sink),
                Command::Join {
                    id,
                    side,
                    room,
                    leg,
                } => self.join(id, side.index(), room, leg),
                Command::Leave(id) => self.leave(id),
                Command::Record { id, tap } => {
                    let old = match self.stream_mut(id) {
                        Some(s) => s.tap.replace(tap),
                        None => Some(tap),
                    };
                    if let Some(old) = old {
                        old.end(&mut self.record_out);
                    }
                }
                Command::StopRecording(id) => {
                    if let Some(tap) = self.stream_mut(id).and_then(|s| s.tap.take()) {
                        tap.end(&mut self.record_out);
                    }
                }
                Command::Detach { id, reply } => {
                    if let Some(stream) = self.take(id) {
                        let _ = reply.send(stream);
                    }
                }
                Command::Sync(done) => {
                    let _ = done.send(());
                }
                Command::Stop => return false,
            }
        }
        true
    }

    /// Begin sending a key press to side `to` of stream `id`, as RFC 4733 events.
    fn start_dtmf(&mut self, id: u64, to: usize, key: char, duration: Duration) {
        let now = Instant::now();
        let now_us = now.duration_since(self.epoch).as_micros() as u64;
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        let Some(stream) = self.slots.get_mut(slot).and_then(|s| s.as_deref_mut()) else {
            return;
        };
        let Some((payload_type, clock)) = stream.events[to] else {
            tracing::debug!(stream = id, "DTMF toward a side without telephone-event");
            return;
        };
        let Some(event) = EventWriter::new(key, duration, clock, now) else {
            return;
        };
        // The event's timestamp: "now" on the clock of the stream the party receives.
        let (ssrc, timestamp) = match (&mut stream.transcoders, stream.last_rtp[to ^ 1]) {
            (Some(directions), _) => directions[to ^ 1].event_origin(),
            (None, Some((ssrc, _, ts, at_us))) => {
                let elapsed = now_us.saturating_sub(at_us) * u64::from(clock) / 1_000_000;
                (ssrc, ts.wrapping_add(elapsed as u32))
            }
            // Nothing relayed to that party yet: the events are a source of their own.
            (None, None) => {
                let seed = (id as u32).wrapping_mul(2_654_435_761) ^ now.elapsed().subsec_nanos();
                (seed, seed.rotate_left(11))
            }
        };
        self.writers.push(Writer {
            stream: id,
            slot,
            to,
            payload_type,
            ssrc,
            timestamp,
            own_seq: None,
            event,
        });
    }

    /// Put `side` of stream `id` in `room`, to hear the others and be heard by them.
    fn join(&mut self, id: u64, side: usize, room: u64, leg: LegCodec) {
        self.leave(id);
        let codecs = self.codecs;
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        let Some(stream) = self.slots.get_mut(slot).and_then(|s| s.as_deref_mut()) else {
            return;
        };
        stream.room = Some((room, side));
        self.rooms
            .entry(room)
            .or_default()
            .members
            .push(Member::new(id, slot, side, leg, &codecs));
        if self.next_tick.is_none() {
            self.next_tick = Some(Instant::now() + FRAME);
        }
    }

    /// Take stream `id` out of its room, if it is in one; the room goes with its last member.
    fn leave(&mut self, id: u64) {
        let Some(room) = self.stream_mut(id).and_then(|s| s.room.take()).map(|r| r.0) else {
            return;
        };
        if let Some(r) = self.rooms.get_mut(&room) {
            r.members.retain(|m| m.stream != id);
            if r.members.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }

    /// Every 20 ms: each transcoded stream decodes what its jitter buffers hold for now and
    /// sends what it encoded, and each conference room mixes.
    fn tick_transcoders(&mut self, now: Instant) {
        let Some(due) = self.next_tick.filter(|t| *t <= now) else {
            return;
        };
        let (slots, scratch, record_out) =
            (&mut self.slots, &mut self.scratch, &mut self.record_out);
        for room in self.rooms.values_mut() {
            room.tick(now, &mut |slot, side, bytes| {
                let Some(stream) = slots.get_mut(slot).and_then(|s| s.as_deref_mut()) else {
                    return;
                };
                if let Some(tap) = &stream.tap {
                    tap.offer(record_out, side ^ 1, bytes, now); // what the member hears: the room
                }
                let end = &stream.ends[side * 2];
                if end.target.is_none() || stream.playing[side] {
                    return; // nowhere to send yet, or a prompt plays to the member
                }
                let to = end.target.as_ref();
                let fd = stream.sockets[side * 2].as_raw_fd();
                deliver(&mut stream.srtp[side], scratch, fd, bytes, to);
            });
        }
        let mut any = !self.rooms.is_empty();
        for stream in self.slots.iter_mut().flatten() {
            let stream = &mut **stream;
            let Some(directions) = stream.transcoders.as_mut() else {
                continue;
            };
            any = true;
            // A leg's codec mode requests (AMR's CMR) steer the encoder toward that leg.
            for from in 0..2 {
                if let Some(mode) = directions[from].mode_request() {
                    directions[from ^ 1].request_mode(mode);
                }
            }
            for (from, direction) in directions.iter_mut().enumerate() {
                let out = (from ^ 1) * 2;
                let end = &stream.ends[out];
                let to = end.target.as_ref();
                let fd = stream.sockets[out].as_raw_fd();
                let (has_target, held) = (end.target.is_some(), stream.playing[from ^ 1]);
                let srtp = &mut stream.srtp[from ^ 1];
                direction.tick(now, &mut |bytes| {
                    if has_target && !held {
                        deliver(srtp, scratch, fd, bytes, to);
                    }
                });
            }
        }
        // Keep the grid (no drift), but never schedule into the past after a stall.
        self.next_tick = any.then(|| (due + FRAME).max(now));
    }

    /// Send every DTMF packet of ours that is due.
    fn write_due(&mut self, now: Instant) {
        let mut index = 0;
        while index < self.writers.len() {
            let w = &mut self.writers[index];
            let Some(stream) = self.slots.get_mut(w.slot).and_then(|s| s.as_deref_mut()) else {
                self.writers.swap_remove(index);
                continue;
            };
            while let Some((payload, first)) = w.event.due(now) {
                let seq = w.next_seq(stream);
                let mut packet = [0u8; 16];
                packet[0] = 0x80;
                packet[1] = if first { 0x80 } else { 0 } | w.payload_type;
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                packet[4..8].copy_from_slice(&w.timestamp.to_be_bytes());
                packet[8..12].copy_from_slice(&w.ssrc.to_be_bytes());
                packet[12..].copy_from_slice(&payload);
                let socket = w.to * 2;
                let end = &stream.ends[socket];
                if end.target.is_some() {
                    let to = end.target.as_ref();
                    let fd = stream.sockets[socket].as_raw_fd();
                    deliver(&mut stream.srtp[w.to], &mut self.scratch, fd, &packet, to);
                }
            }
            if w.event.finished() {
                self.writers.swap_remove(index);
            } else {
                index += 1;
            }
        }
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
            let rtp_socket = socket == A_RTP || socket == B_RTP;
            for k in 0..n {
                if batch.packet(k).is_empty() {
                    stream.stats[side].dropped += 1;
                    continue;
                }
                // RTCP can share the RTP port (RFC 5761): told apart once per packet (SRTCP
                // keeps its header in the clear).
                let is_rtp = rtp_socket && !looks_like_rtcp(batch.packet(k));
                // SRTP before anything else: only an authenticated packet may teach the
                // latch where the party is, or be counted.
                if !stream.srtp[side].open(batch, k, is_rtp, &mut self.scratch) {
                    stream.stats[side].dropped += 1;
                    continue;
                }
                let packet = batch.packet(k);
                if !accept(&mut stream.ends[socket], batch.source(k), self.latching) {
                    stream.stats[side].strangers += 1;
                    continue;
                }
                account(stream, side, is_rtp, packet, now_us);
                if is_rtp && let Some(tap) = &stream.tap {
                    let at = self.epoch + Duration::from_micros(now_us);
                    tap.offer(&mut self.record_out, side, packet, at);
                }
                if is_rtp
                    && let Some((event_pt, clock)) = stream.events[side]
                    && packet.get(1).map(|b| b & 0x7f) == Some(event_pt)
                {
                    let relayed = take_event(
                        stream,
                        side,
                        packet,
                        clock,
                        &mut self.players,
                        self.events.as_ref(),
                    );
                    if !relayed {
                        continue; // reported instead of relayed
                    }
                }
                if let Some((room, member_side)) = stream.room {
                    // A conference member: its audio goes to the room's mix, and nothing
                    // crosses the stream (its other side has left).
                    if is_rtp
                        && member_side == side
                        && let Some(member) = self
                            .rooms
                            .get_mut(&room)
                            .and_then(|r| r.member_mut(stream.id))
                    {
                        member.on_packet(packet, self.epoch + Duration::from_micros(now_us));
                    }
                    continue;
                }
                if stream.playing[out / 2] {
                    continue; // the party hears the prompt, not the other side
                }
                if let Some(directions) = stream.transcoders.as_mut().filter(|_| is_rtp) {
                    let end = &stream.ends[out];
                    let to = end.target.as_ref();
                    if end.target.is_some() {
                        let arrival = self.epoch + Duration::from_micros(now_us);
                        let (srtp, scratch) = (&mut stream.srtp[out / 2], &mut self.scratch);
                        directions[side].on_packet(packet, arrival, &mut |bytes| {
                            deliver(srtp, scratch, out_fd, bytes, to);
                        });
                    }
                    continue;
                }
                if is_rtp && stream.seq_shift[out / 2] != 0 {
                    shift_sequence(batch.packet_mut(k), stream.seq_shift[out / 2]);
                }
                if !stream.srtp[out / 2].seal(batch, k, is_rtp, &mut self.scratch) {
                    stream.stats[side].dropped += 1;
                    continue;
                }
                keep |= 1 << k;
                kept += 1;
            }
            let end = &stream.ends[out];
            let sent = match &end.target {
                Some(to) => batch.send(out_fd, keep, Some(to)),
                None => 0,
            };
            stream.stats[side].dropped += kept - sent as u64;
            stream.counters.leg(side).publish(&stream.stats[side]);
            if n < BATCH {
                return;
            }
        }
    }
}

fn set_timer_slack_ns(ns: libc::c_ulong) {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0) };
}

/// Latching (symmetric RTP): where a party really is, learned from the packets it sends
/// (behind NAT that differs from its SDP). In strict mode a stream hears its latched
/// address only, and latches:
/// - on the first packet, from anywhere (a NAT'd party is heard at once);
/// - on a packet from the signalled address, whatever it latched before: a stranger who
///   sends first cannot shut out the party where its SDP says it is;
///
/// and every other packet is a stranger's, dropped. In follow mode every new source
/// re-latches. A new address from signalling forgets the latch.
fn accept(end: &mut End, source: Option<SocketAddr>, latching: Latching) -> bool {
    let Some(source) = source else {
        return false;
    };
    match end.latched {
        Some(latched) if latched == source => true,
        Some(_) if latching == Latching::Strict && end.signalled != Some(source) => false,
        _ => {
            end.latched = Some(source);
            end.target = Some(RawAddr::new(source));
            true
        }
    }
}

/// Count a relayed packet into its leg's statistics (RTP, or RTCP).
fn account(stream: &mut Stream, side: usize, is_rtp: bool, packet: &[u8], now_us: u64) {
    let stats = &mut stream.stats[side];
    if !is_rtp {
        stats.rtcp_packets += 1;
        read_rtcp(packet, stats);
        return;
    }
    stats.rtp_packets += 1;
    stats.rtp_bytes += packet.len() as u64;
    if let Ok(rtp) = rtp_types::RtpPacket::parse(packet) {
        stream.last_rtp[side] = Some((rtp.ssrc(), rtp.sequence_number(), rtp.timestamp(), now_us));
        let clock = u64::from(stream.clock_rate[side]);
        let arrival = (now_us * clock / 1_000_000) as u32;
        let rx = &mut stream.receivers[side];
        rx.on_packet(rtp.ssrc(), rtp.sequence_number(), rtp.timestamp(), arrival);
        stats.lost = rx.lost();
        stats.jitter_us = rx.jitter() * 1_000_000 / clock;
    }
}

/// A side's telephone-event packet: report its key presses when the far side takes no
/// events or a menu listens, and stop a prompt that allows barge-in. True when the packet
/// is to be relayed as well (the far side takes events).
fn take_event(
    stream: &mut Stream,
    side: usize,
    packet: &[u8],
    clock: u32,
    players: &mut Vec<Player>,
    sink: Option<&EventSink>,
) -> bool {
    let far_takes_events = stream.events[side ^ 1].is_some();
    if (stream.report[side] || !far_takes_events)
        && report_events(stream, side, packet, clock, sink)
    {
        let before = players.len();
        players.retain(|p| !(p.stream == stream.id && p.side == side && p.stop_on_dtmf));
        if players.len() < before {
            stream.playing[side] = false;
            if let Some(sink) = sink {
                sink(MediaEvent::PlaybackDone {
                    stream: StreamId(stream.id),
                    side: side_of(side),
                });
            }
        }
    }
    far_takes_events
}

/// Read a side's telephone-event packet and report the key presses it completes; true
/// when it completed one.
fn report_events(
    stream: &mut Stream,
    side: usize,
    packet: &[u8],
    clock: u32,
    sink: Option<&EventSink>,
) -> bool {
    let Ok(rtp) = rtp_types::RtpPacket::parse(packet) else {
        return false;
    };
    let digits = stream.readers[side].on_packet(rtp.timestamp(), rtp.payload(), clock);
    for digit in &digits {
        if let Some(sink) = sink {
            sink(MediaEvent::Dtmf {
                stream: StreamId(stream.id),
                side: side_of(side),
                digit: *digit,
            });
        }
    }
    !digits.is_empty()
}

fn side_of(index: usize) -> Side {
    if index == 0 { Side::A } else { Side::B }
}

/// Send a packet Warden made (a prompt frame, an event, transcoded or mixed audio) to a
/// party: through its SRTP context first when it has one.
fn deliver(srtp: &mut Sealing, scratch: &mut Vec<u8>, fd: i32, bytes: &[u8], to: Option<&RawAddr>) {
    match srtp {
        Sealing::Clear => {
            send_one(fd, bytes, to);
        }
        Sealing::Awaiting => {}
        Sealing::Keyed(srtp) => {
            if srtp.protect(bytes, true, scratch).is_ok() {
                send_one(fd, scratch, to);
            }
        }
    }
}

/// One side's SRTP on the packet path: clear, holding packets until keys come, or keyed.
#[derive(Default)]
enum Sealing {
    #[default]
    Clear,
    Awaiting,
    Keyed(Box<SrtpSide>),
}

impl Sealing {
    /// Authenticate and decrypt received datagram `k` in place; false: drop it.
    fn open(&mut self, batch: &mut Batch, k: usize, is_rtp: bool, scratch: &mut Vec<u8>) -> bool {
        match self {
            Sealing::Clear => true,
            Sealing::Awaiting => false,
            Sealing::Keyed(srtp) => {
                srtp.unprotect(batch.packet(k), is_rtp, scratch).is_ok()
                    && batch.replace(k, scratch)
            }
        }
    }

    /// Encrypt datagram `k` in place for this side's party; false: drop it.
    fn seal(&mut self, batch: &mut Batch, k: usize, is_rtp: bool, scratch: &mut Vec<u8>) -> bool {
        match self {
            Sealing::Clear => true,
            Sealing::Awaiting => false,
            Sealing::Keyed(srtp) => {
                srtp.protect(batch.packet(k), is_rtp, scratch).is_ok() && batch.replace(k, scratch)
            }
        }
    }
}

/// Renumber a relayed RTP packet by `shift` (events of ours took sequence numbers).
fn shift_sequence(packet: &mut [u8], shift: u16) {
    if let Some(seq) = packet.get_mut(2..4) {
        let renumbered = u16::from_be_bytes([seq[0], seq[1]]).wrapping_add(shift);
        seq.copy_from_slice(&renumbered.to_be_bytes());
    }
}

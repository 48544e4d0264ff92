//! Media for tests: records every command the core gives, hands out port numbers without
//! binding a socket, and reports whatever traffic figures a test sets.
//!
//! Clones share one state, so a test keeps a clone to look at what the core asked while
//! the core owns the other; media events are raised by calling the core's
//! `handle_media_event` with the streams seen here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use warden_media::prompt::EncodedPrompt;
use warden_media::{
    EventFormat, LegCodec, LegStats, MediaError, Playback, PortsExhausted, RelayTotals, Remote,
    Side, SrtpSetting, StreamId, StreamStats, Transcoding,
};

use super::Media;

/// One thing the core asked, as recorded.
#[derive(Debug, Clone)]
pub enum Command {
    Open(StreamId),
    Close(StreamId),
    SetRemote {
        id: StreamId,
        side: Side,
        remote: Option<Remote>,
    },
    SetTranscoding {
        id: StreamId,
        transcoding: Option<Transcoding>,
    },
    SetSrtp {
        id: StreamId,
        side: Side,
        setting: SrtpSetting,
    },
    SetDtmf {
        id: StreamId,
        formats: [EventFormat; 2],
    },
    Play {
        id: StreamId,
        side: Side,
        prompt: Arc<EncodedPrompt>,
        how: Playback,
    },
    StopPlaying {
        id: StreamId,
        side: Side,
    },
    ReportDtmf {
        id: StreamId,
        side: Side,
        on: bool,
    },
    /// A recording into `path`, with each side's codec.
    Record {
        id: StreamId,
        path: std::path::PathBuf,
        codecs: [Option<&'static str>; 2],
    },
    StopRecording {
        id: StreamId,
    },
    SendDtmf {
        id: StreamId,
        side: Side,
        key: char,
        duration: Duration,
    },
    Join {
        id: StreamId,
        side: Side,
        room: u64,
        codec: &'static str,
    },
}

#[derive(Debug)]
struct State {
    address: IpAddr,
    /// Port pairs still free (None: no limit).
    free: Option<usize>,
    next_id: u64,
    next_port: u16,
    /// Open streams: each side's RTP port, and the figures a test set.
    open: HashMap<StreamId, ([u16; 2], StreamStats)>,
    commands: Vec<Command>,
    /// What the streams closed so far carried, both sides together.
    closed: LegStats,
}

/// Media that binds nothing. See the module doc.
#[derive(Debug, Clone)]
pub struct FakeMedia {
    state: Arc<Mutex<State>>,
}

impl Default for FakeMedia {
    fn default() -> FakeMedia {
        FakeMedia::new()
    }
}

impl FakeMedia {
    /// On 127.0.0.1, ports from 40000 up, no limit on streams.
    pub fn new() -> FakeMedia {
        FakeMedia {
            state: Arc::new(Mutex::new(State {
                address: IpAddr::from([127, 0, 0, 1]),
                free: None,
                next_id: 1,
                next_port: 40_000,
                open: HashMap::new(),
                commands: Vec::new(),
                closed: LegStats::default(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; its state is
        // still worth reading.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Only `pairs` more streams can open (each needs two port pairs).
    pub fn limit_port_pairs(&self, pairs: usize) {
        self.state().free = Some(pairs);
    }

    /// Everything asked so far, oldest first, and forgotten here.
    pub fn take_commands(&self) -> Vec<Command> {
        std::mem::take(&mut self.state().commands)
    }

    /// Everything asked so far, kept.
    pub fn commands(&self) -> Vec<Command> {
        self.state().commands.clone()
    }

    /// The streams open now, oldest first.
    pub fn open_streams(&self) -> Vec<StreamId> {
        let mut ids: Vec<StreamId> = self.state().open.keys().copied().collect();
        ids.sort_by_key(|id| id.0);
        ids
    }

    /// The RTP ports of stream `id` (A side, B side).
    pub fn ports(&self, id: StreamId) -> Option<[u16; 2]> {
        self.state().open.get(&id).map(|(ports, _)| *ports)
    }

    /// `side`'s party sent `packets` more RTP packets (of a 20 ms PCMU frame's size, 172
    /// bytes) on stream `id`.
    pub fn add_packets(&self, id: StreamId, side: Side, packets: u64) {
        if let Some((_, stats)) = self.state().open.get_mut(&id) {
            let leg = match side {
                Side::A => &mut stats.a,
                Side::B => &mut stats.b,
            };
            leg.rtp_packets += packets;
            leg.rtp_bytes += packets * 172;
        }
    }

    fn note(&self, command: Command) {
        self.state().commands.push(command);
    }
}

impl Media for FakeMedia {
    fn address(&self) -> IpAddr {
        self.state().address
    }

    fn open(&mut self) -> Result<StreamId, MediaError> {
        let id = {
            let mut s = self.state();
            if let Some(free) = s.free.as_mut() {
                if *free < 2 {
                    return Err(MediaError::Exhausted(PortsExhausted {
                        first: 40_000,
                        last: s.next_port,
                        in_use: s.open.len() * 2,
                    }));
                }
                *free -= 2;
            }
            let id = StreamId(s.next_id);
            s.next_id += 1;
            let port = s.next_port;
            s.next_port = s.next_port.wrapping_add(4);
            s.open
                .insert(id, ([port, port + 2], StreamStats::default()));
            id
        };
        self.note(Command::Open(id));
        Ok(id)
    }

    fn close(&mut self, id: StreamId) {
        {
            let mut s = self.state();
            if let Some((_, stats)) = s.open.remove(&id) {
                for leg in [stats.a, stats.b] {
                    s.closed.rtp_packets += leg.rtp_packets;
                    s.closed.rtp_bytes += leg.rtp_bytes;
                }
                if let Some(free) = s.free.as_mut() {
                    *free += 2;
                }
            }
        }
        self.note(Command::Close(id));
    }

    fn port(&self, id: StreamId, side: Side) -> Option<u16> {
        let index = usize::from(side == Side::B);
        self.state().open.get(&id).map(|(ports, _)| ports[index])
    }

    fn set_remote(&mut self, id: StreamId, side: Side, remote: Option<Remote>) {
        self.note(Command::SetRemote { id, side, remote });
    }

    fn set_transcoding(&mut self, id: StreamId, transcoding: Option<Transcoding>) {
        self.note(Command::SetTranscoding { id, transcoding });
    }

    fn set_srtp(&mut self, id: StreamId, side: Side, setting: SrtpSetting) {
        self.note(Command::SetSrtp { id, side, setting });
    }

    fn set_dtmf(&mut self, id: StreamId, formats: [EventFormat; 2]) {
        self.note(Command::SetDtmf { id, formats });
    }

    fn play(&mut self, id: StreamId, side: Side, prompt: Arc<EncodedPrompt>, how: Playback) {
        self.note(Command::Play {
            id,
            side,
            prompt,
            how,
        });
    }

    fn stop_playing(&mut self, id: StreamId, side: Side) {
        self.note(Command::StopPlaying { id, side });
    }

    fn report_dtmf(&mut self, id: StreamId, side: Side, on: bool) {
        self.note(Command::ReportDtmf { id, side, on });
    }

    fn send_dtmf(&mut self, id: StreamId, side: Side, key: char, duration: Duration) {
        self.note(Command::SendDtmf {
            id,
            side,
            key,
            duration,
        });
    }

    fn record(&mut self, id: StreamId, spec: warden_media::record::RecordSpec) -> bool {
        let known = self.state().open.contains_key(&id);
        self.note(Command::Record {
            id,
            path: spec.path,
            codecs: spec.sides.map(|s| s.map(|s| s.codec.name)),
        });
        known
    }

    fn stop_recording(&mut self, id: StreamId) {
        self.note(Command::StopRecording { id });
    }

    fn join(&mut self, id: StreamId, side: Side, room: u64, leg: LegCodec) -> bool {
        let known = self.state().open.contains_key(&id);
        self.note(Command::Join {
            id,
            side,
            room,
            codec: leg.codec.name,
        });
        known
    }

    fn stats(&self, id: StreamId) -> Option<StreamStats> {
        self.state().open.get(&id).map(|(_, stats)| *stats)
    }

    fn totals(&self) -> RelayTotals {
        let s = self.state();
        let legs = s.open.values().flat_map(|(_, st)| [st.a, st.b]);
        let (packets, bytes) = legs.chain([s.closed]).fold((0, 0), |(p, b), leg| {
            (p + leg.rtp_packets, b + leg.rtp_bytes)
        });
        RelayTotals {
            streams: s.open.len() as u64,
            transcoding: 0,
            rtp_packets: packets,
            rtp_bytes: bytes,
            strangers: 0, // the fake relay has no sockets to be sprayed
            unassigned: 0,
            parked_pairs: 0,
        }
    }
}

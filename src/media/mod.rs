//! The core's interface to media: what a call asks of the relay (streams and their ports,
//! remotes, codecs, keys, prompts, DTMF, rooms, figures), as a trait the core holds.
//!
//! Production hands the core `warden_media::Relay`, which binds sockets and runs threads;
//! tests hand it [`fake::FakeMedia`], which records what was asked and binds nothing, so
//! every call flow runs on virtual time. Allocating a stream stays a synchronous call: the
//! SDP Warden sends must name its ports.

pub mod fake;
pub mod shared;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use warden_media::prompt::EncodedPrompt;
use warden_media::{
    EventFormat, LegCodec, MediaError, Playback, Relay, RelayTotals, Remote, Side, SrtpSetting,
    StreamId, StreamStats, Transcoding,
};

/// What the signalling core may ask of media. Every method but `open` is a command that
/// cannot fail from the core's point of view (an unknown stream is ignored).
pub trait Media: Send {
    /// The address parties send their media to (in Warden's SDP).
    fn address(&self) -> IpAddr;
    /// A new stream: a port pair for each side.
    fn open(&mut self) -> Result<StreamId, MediaError>;
    /// The stream is over: its ports return to the pool.
    fn close(&mut self, id: StreamId);
    /// The RTP port of a side (RTCP is one above).
    fn port(&self, id: StreamId, side: Side) -> Option<u16>;
    /// Where a side's party receives (None: nowhere, e.g. a rejected stream).
    fn set_remote(&mut self, id: StreamId, side: Side, remote: Option<Remote>);
    /// Transcode between the legs (None: relay packets untouched).
    fn set_transcoding(&mut self, id: StreamId, transcoding: Option<Transcoding>);
    /// SRTP toward and from a side's party.
    fn set_srtp(&mut self, id: StreamId, side: Side, setting: SrtpSetting);
    /// Each side's telephone-event format.
    fn set_dtmf(&mut self, id: StreamId, formats: [EventFormat; 2]);
    /// Play a prompt to a side's party; `MediaEvent::PlaybackDone` follows when it ends.
    fn play(&mut self, id: StreamId, side: Side, prompt: Arc<EncodedPrompt>, how: Playback);
    fn stop_playing(&mut self, id: StreamId, side: Side);
    /// Report a side's key presses (`MediaEvent::Dtmf`) even when they are relayed.
    fn report_dtmf(&mut self, id: StreamId, side: Side, on: bool);
    /// Send a key press to a side's party as RFC 4733 events.
    fn send_dtmf(&mut self, id: StreamId, side: Side, key: char, duration: Duration);
    /// Make a side a member of conference `room`; false when the stream could not join.
    fn join(&mut self, id: StreamId, side: Side, room: u64, leg: LegCodec) -> bool;
    /// Record what both parties send, into `spec.path`, until `stop_recording` or the
    /// stream's close; false when it cannot.
    fn record(&mut self, id: StreamId, spec: warden_media::record::RecordSpec) -> bool;
    fn stop_recording(&mut self, id: StreamId);
    /// Recorded packets dropped so far (the recorder's queue was full).
    fn recording_dropped(&self) -> u64 {
        0
    }
    /// Both sides' figures so far.
    fn stats(&self, id: StreamId) -> Option<StreamStats>;
    /// The relay's figures over its life (metrics).
    fn totals(&self) -> RelayTotals;
    /// Hand the relay threads what this turn asked of them (one wake-up per thread per
    /// turn; the loop calls it before the turn's messages leave).
    fn flush(&mut self) {}
}

impl Media for Relay {
    fn address(&self) -> IpAddr {
        Relay::address(self)
    }
    fn open(&mut self) -> Result<StreamId, MediaError> {
        Relay::open(self)
    }
    fn close(&mut self, id: StreamId) {
        Relay::close(self, id)
    }
    fn port(&self, id: StreamId, side: Side) -> Option<u16> {
        Relay::port(self, id, side)
    }
    fn set_remote(&mut self, id: StreamId, side: Side, remote: Option<Remote>) {
        Relay::set_remote(self, id, side, remote)
    }
    fn set_transcoding(&mut self, id: StreamId, transcoding: Option<Transcoding>) {
        Relay::set_transcoding(self, id, transcoding)
    }
    fn set_srtp(&mut self, id: StreamId, side: Side, setting: SrtpSetting) {
        Relay::set_srtp(self, id, side, setting)
    }
    fn set_dtmf(&mut self, id: StreamId, formats: [EventFormat; 2]) {
        Relay::set_dtmf(self, id, formats)
    }
    fn play(&mut self, id: StreamId, side: Side, prompt: Arc<EncodedPrompt>, how: Playback) {
        Relay::play(self, id, side, prompt, how)
    }
    fn stop_playing(&mut self, id: StreamId, side: Side) {
        Relay::stop_playing(self, id, side)
    }
    fn report_dtmf(&mut self, id: StreamId, side: Side, on: bool) {
        Relay::report_dtmf(self, id, side, on)
    }
    fn send_dtmf(&mut self, id: StreamId, side: Side, key: char, duration: Duration) {
        Relay::send_dtmf(self, id, side, key, duration)
    }
    fn join(&mut self, id: StreamId, side: Side, room: u64, leg: LegCodec) -> bool {
        Relay::join(self, id, side, room, leg)
    }
    fn record(&mut self, id: StreamId, spec: warden_media::record::RecordSpec) -> bool {
        Relay::record(self, id, spec)
    }
    fn stop_recording(&mut self, id: StreamId) {
        Relay::stop_recording(self, id)
    }
    fn recording_dropped(&self) -> u64 {
        Relay::recording_dropped(self)
    }
    fn stats(&self, id: StreamId) -> Option<StreamStats> {
        Relay::stats(self, id)
    }
    fn totals(&self) -> RelayTotals {
        Relay::totals(self)
    }
    fn flush(&mut self) {
        Relay::flush(self)
    }
}

//! One relay for every signalling shard: each shard's handle locks it for one command at
//! a time, and notes which shard opened a stream so that the stream's events go back there.
//!
//! Only a sharded server (`server.shards` above 1) uses it; a single core holds the relay
//! itself, with no lock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use warden_media::prompt::EncodedPrompt;
use warden_media::{
    EventFormat, LegCodec, MediaError, MediaEvent, Playback, Relay, RelayTotals, Remote, Side,
    SrtpSetting, StreamId, StreamStats, Transcoding,
};

use super::Media;
use crate::shard::Shared;

/// Which shard opened each live stream.
pub type Owners = Shared<HashMap<StreamId, usize>>;

/// A shard's handle on the shared relay.
pub struct ShardMedia {
    relay: Shared<Relay>,
    owners: Owners,
    shard: usize,
    address: IpAddr,
}

impl ShardMedia {
    /// One handle per shard on `relay`, each noting the streams it opens in `owners`.
    pub fn split(relay: Relay, count: usize, owners: Owners) -> Vec<ShardMedia> {
        let address = relay.address();
        let relay = Shared::new(relay);
        (0..count)
            .map(|shard| ShardMedia {
                relay: relay.clone(),
                owners: owners.clone(),
                shard,
                address,
            })
            .collect()
    }
}

/// The shard an event belongs to (the first when the stream is gone already).
pub fn owner_of(owners: &Owners, event: &MediaEvent) -> usize {
    let stream = match event {
        MediaEvent::PlaybackDone { stream, .. } | MediaEvent::Dtmf { stream, .. } => stream,
    };
    owners.lock().get(stream).copied().unwrap_or(0)
}

impl Media for ShardMedia {
    fn address(&self) -> IpAddr {
        self.address
    }
    fn open(&mut self) -> Result<StreamId, MediaError> {
        let id = self.relay.lock().open()?;
        self.owners.lock().insert(id, self.shard);
        Ok(id)
    }
    fn close(&mut self, id: StreamId) {
        self.relay.lock().close(id);
        self.owners.lock().remove(&id);
    }
    fn port(&self, id: StreamId, side: Side) -> Option<u16> {
        self.relay.lock().port(id, side)
    }
    fn set_remote(&mut self, id: StreamId, side: Side, remote: Option<Remote>) {
        self.relay.lock().set_remote(id, side, remote)
    }
    fn set_transcoding(&mut self, id: StreamId, transcoding: Option<Transcoding>) {
        self.relay.lock().set_transcoding(id, transcoding)
    }
    fn set_srtp(&mut self, id: StreamId, side: Side, setting: SrtpSetting) {
        self.relay.lock().set_srtp(id, side, setting)
    }
    fn set_dtmf(&mut self, id: StreamId, formats: [EventFormat; 2]) {
        self.relay.lock().set_dtmf(id, formats)
    }
    fn play(&mut self, id: StreamId, side: Side, prompt: Arc<EncodedPrompt>, how: Playback) {
        self.relay.lock().play(id, side, prompt, how)
    }
    fn stop_playing(&mut self, id: StreamId, side: Side) {
        self.relay.lock().stop_playing(id, side)
    }
    fn report_dtmf(&mut self, id: StreamId, side: Side, on: bool) {
        self.relay.lock().report_dtmf(id, side, on)
    }
    fn send_dtmf(&mut self, id: StreamId, side: Side, key: char, duration: Duration) {
        self.relay.lock().send_dtmf(id, side, key, duration)
    }
    fn join(&mut self, id: StreamId, side: Side, room: u64, leg: LegCodec) -> bool {
        self.relay.lock().join(id, side, room, leg)
    }
    fn record(&mut self, id: StreamId, spec: warden_media::record::RecordSpec) -> bool {
        self.relay.lock().record(id, spec)
    }
    fn stop_recording(&mut self, id: StreamId) {
        self.relay.lock().stop_recording(id)
    }
    fn recording_dropped(&self) -> u64 {
        self.relay.lock().recording_dropped()
    }
    fn stats(&self, id: StreamId) -> Option<StreamStats> {
        self.relay.lock().stats(id)
    }
    fn totals(&self) -> RelayTotals {
        self.relay.lock().totals()
    }
    fn flush(&mut self) {
        self.relay.lock().flush()
    }
}

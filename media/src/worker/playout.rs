//! Packets Warden makes itself on a relay thread: prompt frames with their own RTP
//! header, and our key presses as RFC 4733 events, numbered into the stream they join.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dtmf::EventWriter;
use crate::prompt::EncodedPrompt;
use crate::relay::Playback;

use super::Stream;

pub(super) const FRAME: Duration = Duration::from_millis(20);

/// A key press of ours on its way to one side of a stream, as RFC 4733 packets.
pub(super) struct Writer {
    pub(super) stream: u64,
    pub(super) slot: usize,
    /// Side index of the party receiving it.
    pub(super) to: usize,
    pub(super) payload_type: u8,
    pub(super) ssrc: u32,
    /// The event's timestamp (fixed for all its packets).
    pub(super) timestamp: u32,
    /// Our own numbering when the party has no stream from us yet.
    pub(super) own_seq: Option<u16>,
    pub(super) event: EventWriter,
}

impl Writer {
    /// The sequence number for our next packet: the next one of the stream the party
    /// receives (a transcoder's own, or the relayed one's, which is then renumbered).
    pub(super) fn next_seq(&mut self, stream: &mut Stream) -> u16 {
        let from = self.to ^ 1;
        if let Some(directions) = &mut stream.transcoders {
            return directions[from].take_sequence_number();
        }
        match stream.last_rtp[from] {
            Some((ssrc, seq, _, _)) if ssrc == self.ssrc => {
                stream.seq_shift[self.to] = stream.seq_shift[self.to].wrapping_add(1);
                seq.wrapping_add(stream.seq_shift[self.to])
            }
            _ => {
                let seq = self.own_seq.unwrap_or(self.timestamp as u16);
                self.own_seq = Some(seq.wrapping_add(1));
                seq
            }
        }
    }
}

/// A prompt being played to one side of a stream: 20 ms frames with their own RTP header
/// (SSRC, sequence numbers, timestamps on the codec's clock, marker on the first packet).
pub(super) struct Player {
    pub(super) stream: u64,
    pub(super) slot: usize,
    pub(super) side: usize,
    pub(super) prompt: Arc<EncodedPrompt>,
    pub(super) index: usize,
    pub(super) repeats_left: u32,
    pub(super) next: Instant,
    pub(super) payload_type: u8,
    pub(super) stop_on_dtmf: bool,
    pub(super) ssrc: u32,
    pub(super) seq: u16,
    pub(super) timestamp: u32,
    pub(super) marker: bool,
    pub(super) packet: Vec<u8>,
}

impl Player {
    pub(super) fn new(
        stream: u64,
        slot: usize,
        side: usize,
        prompt: Arc<EncodedPrompt>,
        how: Playback,
    ) -> Player {
        let start = Instant::now();
        let seed = (stream as u32).wrapping_mul(2_654_435_761) ^ start.elapsed().subsec_nanos();
        Player {
            stream,
            slot,
            side,
            prompt,
            index: 0,
            repeats_left: how.repeat,
            next: start,
            payload_type: how.payload_type,
            stop_on_dtmf: how.stop_on_dtmf,
            ssrc: seed,
            seq: (seed >> 7) as u16,
            timestamp: seed.rotate_left(13),
            marker: true,
            packet: Vec::with_capacity(512),
        }
    }

    /// The next frame's packet, or None when the prompt (and its repeats) are over.
    pub(super) fn frame(&mut self) -> Option<&[u8]> {
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

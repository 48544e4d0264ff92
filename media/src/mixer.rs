//! Conference rooms: every member's audio is decoded to one PCM rate and summed, and each
//! member is sent the sum minus its own voice, encoded in its own codec.
//!
//! A room lives on one relay worker and runs on that worker's 20 ms clock, like the
//! transcoders; the worker hands it its members' RTP and sends what it returns.

use std::time::Instant;

use crate::codec::{CodecOptions, Decoder, Resampler};
use crate::jitter::{JitterBuffer, Playout};
use crate::transcode::{LegCodec, Packetizer, frame_samples, resample_frames};

/// The rate rooms mix at: wideband, so G.722, AMR-WB and Opus members keep their quality.
pub const MIX_RATE: u32 = 16000;

/// Mixed audio a member may have waiting (in 20 ms frames) before the oldest is dropped: a
/// sender running fast must not build up delay for everyone.
const MAX_WAITING_FRAMES: usize = 3;

/// One party in a room: the side of a relay stream facing it, and its codec both ways.
pub struct Member {
    pub stream: u64,
    /// The worker slot and the side index of the stream (where its packets come and go).
    pub slot: usize,
    pub side: usize,
    from: LegCodec,
    /// The member's own PCM rate (its codec's nearest to the mix rate): decoded at and
    /// encoded from, with a resampler to and from the mix when it differs.
    rate: u32,
    jitter: JitterBuffer,
    playout: Vec<Playout>,
    decoder: Box<dyn Decoder>,
    decoded: Vec<i16>,
    into_mix: Option<Resampler>,
    out_of_mix: Option<Resampler>,
    /// What the member said, at the mix rate, not yet mixed.
    heard: Vec<i16>,
    /// This tick's frame of the member's voice (silence when none came).
    voice: Vec<i16>,
    /// This tick's mix for the member, at the mix rate and at its own.
    others: Vec<i16>,
    mixed: Vec<i16>,
    out: Packetizer,
}

impl Member {
    pub fn new(
        stream: u64,
        slot: usize,
        side: usize,
        leg: LegCodec,
        options: &CodecOptions,
    ) -> Member {
        let rate = if leg.codec.pcm_rates.contains(&MIX_RATE) {
            MIX_RATE
        } else {
            leg.codec.sample_rate
        };
        let resampler = |from, to| {
            (from != to)
                .then(|| Resampler::new(from, to).ok())
                .flatten()
        };
        Member {
            stream,
            slot,
            side,
            from: leg,
            rate,
            jitter: JitterBuffer::for_leg(&leg, Instant::now()),
            playout: Vec::with_capacity(8),
            decoder: leg.codec.decoder_at(rate, &leg.params),
            decoded: Vec::with_capacity(2048),
            into_mix: resampler(rate, MIX_RATE),
            out_of_mix: resampler(MIX_RATE, rate),
            heard: Vec::with_capacity(4096),
            voice: vec![0; frame_samples(MIX_RATE)],
            others: Vec::with_capacity(frame_samples(MIX_RATE)),
            mixed: Vec::with_capacity(2048),
            out: Packetizer::new(leg, rate, options),
        }
    }

    /// Take one RTP packet from the member: its audio waits in the jitter buffer (other
    /// payloads, events and comfort noise, are not mixed).
    pub fn on_packet(&mut self, packet: &[u8], now: Instant) {
        let Ok(rtp) = rtp_types::RtpPacket::parse(packet) else {
            return;
        };
        if rtp.payload_type() == self.from.payload_type {
            self.jitter
                .push(rtp.sequence_number(), rtp.timestamp(), rtp.payload(), now);
        }
    }

    /// Decode what is due now and fill `voice` with the next 20 ms at the mix rate.
    fn listen(&mut self, now: Instant) {
        self.playout.clear();
        self.jitter.tick(now, &mut self.playout);
        let clock = u64::from(self.from.codec.rtp_clock);
        for item in self.playout.drain(..) {
            match item {
                Playout::Packet { payload, .. } => {
                    self.decoder.decode(&payload, &mut self.decoded);
                }
                Playout::Conceal(samples) => {
                    let at_rate = u64::from(samples) * u64::from(self.rate) / clock;
                    self.decoder.conceal(at_rate as usize, &mut self.decoded);
                }
            }
        }
        match &mut self.into_mix {
            Some(r) => {
                let used = resample_frames(r, self.rate, &self.decoded, &mut self.heard);
                self.decoded.drain(..used);
            }
            None => {
                self.heard.extend_from_slice(&self.decoded);
                self.decoded.clear();
            }
        }
        let frame = self.voice.len();
        let excess = self.heard.len().saturating_sub(frame * MAX_WAITING_FRAMES);
        self.heard.drain(..excess);
        if self.heard.len() >= frame {
            self.voice.copy_from_slice(&self.heard[..frame]);
            self.heard.drain(..frame);
        } else {
            self.voice.fill(0);
        }
    }

    /// Encode `total` minus the member's own voice and send it.
    fn speak(&mut self, total: &[i32], send: &mut dyn FnMut(&[u8])) {
        self.others.clear();
        self.others.extend(
            total
                .iter()
                .zip(&self.voice)
                .map(|(sum, own)| (sum - i32::from(*own)).clamp(-32768, 32767) as i16),
        );
        match &mut self.out_of_mix {
            Some(r) => {
                self.mixed.clear();
                r.process(&self.others, &mut self.mixed);
                self.out.push(&self.mixed, send);
            }
            None => self.out.push(&self.others, send),
        }
    }
}

/// A room's members and the running sum of their voices.
#[derive(Default)]
pub struct Room {
    pub(crate) members: Vec<Member>,
    total: Vec<i32>,
}

impl Room {
    /// Add a member (the worker's slot and side in it come with the member).
    pub fn add(&mut self, member: Member) {
        self.members.push(member);
    }

    pub fn member_mut(&mut self, stream: u64) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.stream == stream)
    }

    /// One 20 ms step: hear every member, then send each the others' sum; `send` gets the
    /// member's slot and side and its packet.
    pub fn tick(&mut self, now: Instant, send: &mut dyn FnMut(usize, usize, &[u8])) {
        let frame = frame_samples(MIX_RATE);
        self.total.clear();
        self.total.resize(frame, 0);
        for member in &mut self.members {
            member.listen(now);
            for (sum, sample) in self.total.iter_mut().zip(&member.voice) {
                *sum += i32::from(*sample);
            }
        }
        for member in &mut self.members {
            // The member's codec mode requests (AMR's CMR) steer what it is sent.
            if let Some(mode) = member.decoder.mode_request() {
                member.out.request_mode(mode);
            }
            let (slot, side) = (member.slot, member.side);
            member.speak(&self.total, &mut |bytes| send(slot, side, bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{self, tests::tone};
    use std::time::Duration;

    fn leg(name: &str, pt: u8) -> LegCodec {
        crate::transcode::tests::leg(name, pt, None)
    }

    #[test]
    fn each_member_hears_the_others_and_not_itself_across_codecs() {
        let legs = [leg("PCMU", 0), leg("PCMA", 8), leg("G722", 9)];
        let freqs = [400.0, 1000.0, 1800.0];
        let mut room = Room::default();
        for (i, l) in legs.iter().enumerate() {
            room.members
                .push(Member::new(i as u64, i, 0, *l, &CodecOptions::default()));
        }
        // Each member's tone, encoded in its codec, 20 ms per packet.
        let packets: Vec<Vec<Vec<u8>>> = legs
            .iter()
            .zip(freqs)
            .map(|(l, f)| {
                let mut encoder = l.codec.encoder();
                let rate = l.codec.sample_rate;
                tone(f, rate, 1.0, 6000.0)
                    .chunks_exact(frame_samples(rate))
                    .enumerate()
                    .map(|(n, pcm)| {
                        let mut p = vec![0x80, l.payload_type];
                        p.extend_from_slice(&(n as u16).to_be_bytes());
                        p.extend_from_slice(&(160 * n as u32).to_be_bytes());
                        p.extend_from_slice(&[0, 0, 0, 7]);
                        encoder.encode(pcm, &mut p);
                        p
                    })
                    .collect()
            })
            .collect();
        let t0 = Instant::now();
        let mut received: Vec<Vec<i16>> = vec![Vec::new(); 3];
        let mut decoders: Vec<_> = legs.iter().map(|l| l.codec.decoder()).collect();
        for n in 0..60 {
            let now = t0 + Duration::from_millis(20 * n as u64);
            for (member, stream) in room.members.iter_mut().zip(&packets) {
                if let Some(p) = stream.get(n) {
                    member.on_packet(p, now);
                }
            }
            room.tick(now + Duration::from_millis(10), &mut |slot, _, bytes| {
                assert_eq!(bytes[1] & 0x7f, legs[slot].payload_type);
                decoders[slot].decode(&bytes[12..], &mut received[slot]);
            });
        }
        for (i, heard) in received.iter().enumerate() {
            let rate = legs[i].codec.sample_rate;
            let middle = &heard[heard.len() / 4..heard.len() * 3 / 4];
            let powers: Vec<f64> = freqs
                .iter()
                .map(|f| codec::tone_power(middle, rate, *f))
                .collect();
            for (j, p) in powers.iter().enumerate() {
                if i == j {
                    assert!(
                        *p < powers[(i + 1) % 3] / 100.0,
                        "member {i} hears its own tone: {powers:?}"
                    );
                } else {
                    assert!(*p > 1e5, "member {i} misses member {j}'s tone: {powers:?}");
                }
            }
        }
    }
}

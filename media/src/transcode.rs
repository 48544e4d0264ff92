//! Transcoding one direction of a stream: RTP in one codec, RTP out in another. Decode,
//! resample, re-frame to 20 ms, encode; the outgoing stream has its own SSRC, sequence
//! numbers and timestamps on the output clock, and RFC 4733 events follow it.
//!
//! Comfort noise (RFC 3389) from a silent sender becomes noise at its level, encoded like
//! speech. Audio waits in a small adaptive jitter buffer and is decoded on the relay worker's 20 ms
//! clock, so the stream leaves evenly paced; a packet missing at its time is concealed by
//! the decoder, one arriving after that or twice is dropped.

use std::time::Instant;

use crate::codec::{self, Codec, CodecOptions, Decoder, Encoder, FormatParams, Resampler};
use crate::jitter::{JitterBuffer, Playout};

/// One leg's side of a transcoded stream: its codec, the payload type SDP gave it, and
/// its telephone-event payload type when it has one.
#[derive(Debug, Clone, Copy)]
pub struct LegCodec {
    pub codec: &'static Codec,
    pub payload_type: u8,
    /// What the leg's fmtp says about the codec's payload (AMR's layout and modes).
    pub params: FormatParams,
    /// Milliseconds of audio per packet the leg wants (its `a=ptime`; 20 when unsaid).
    pub ptime: u32,
    pub dtmf_payload_type: Option<u8>,
    /// Its comfort-noise (RFC 3389, "CN") payload type when it has one.
    pub cn_payload_type: Option<u8>,
}

/// Both legs' codecs for a stream that must be transcoded.
#[derive(Debug, Clone, Copy)]
pub struct Transcoding {
    pub a: LegCodec,
    pub b: LegCodec,
}

pub struct Direction {
    from: LegCodec,
    to: LegCodec,
    /// PCM rate decoded to (the packetizer's own rate when no resampler is needed).
    in_rate: u32,
    decoder: Box<dyn Decoder>,
    resampler: Option<Resampler>,
    decoded: Vec<i16>,
    resampled: Vec<i16>,
    out: Packetizer,
    jitter: JitterBuffer,
    playout: Vec<Playout>,
    noise: ComfortNoise,
    /// Incoming RTP timestamp of the last audio packet and our timestamp at that point,
    /// to place telephone-events on our timeline.
    anchor: Option<(u32, u32)>,
}

impl Direction {
    pub fn new(from: LegCodec, to: LegCodec, options: &CodecOptions) -> Direction {
        let (in_rate, out_rate) = codec::pcm_rates_between(from.codec, to.codec);
        let resampler = (in_rate != out_rate)
            .then(|| Resampler::new(in_rate, out_rate).ok())
            .flatten();
        Direction {
            from,
            to,
            in_rate,
            decoder: from.codec.decoder_at(in_rate, &from.params),
            resampler,
            decoded: Vec::with_capacity(4096),
            resampled: Vec::with_capacity(4096),
            out: Packetizer::new(to, out_rate, options),
            jitter: JitterBuffer::for_leg(&from, Instant::now()),
            playout: Vec::with_capacity(8),
            noise: ComfortNoise::default(),
            anchor: None,
        }
    }

    /// Take one RTP packet from the `from` leg: audio waits in the jitter buffer for
    /// `tick`; a telephone-event goes on to the `to` leg (through `send`) at once.
    pub fn on_packet(&mut self, packet: &[u8], now: Instant, send: &mut dyn FnMut(&[u8])) {
        let Ok(rtp) = rtp_types::RtpPacket::parse(packet) else {
            return;
        };
        let pt = rtp.payload_type();
        if Some(pt) == self.from.dtmf_payload_type {
            self.forward_event(&rtp, send);
            return;
        }
        if Some(pt) == self.from.cn_payload_type {
            // The sender went silent (RFC 3389): fill its silence with noise at its level
            // (the first payload byte, -dBov) until its audio comes back.
            if let Some(level) = rtp.payload().first() {
                self.noise.level = Some(level & 0x7f);
                self.noise.since = rtp.timestamp();
            }
            return;
        }
        if pt != self.from.payload_type {
            return; // formats Warden does not decode are not carried across
        }
        self.jitter
            .push(rtp.sequence_number(), rtp.timestamp(), rtp.payload(), now);
    }

    /// The worker's 20 ms clock: decode (or conceal) what is due, encode and send every
    /// whole packet for the `to` leg.
    pub fn tick(&mut self, now: Instant, send: &mut dyn FnMut(&[u8])) {
        self.playout.clear();
        self.jitter.tick(now, &mut self.playout);
        if self.playout.is_empty() && self.noise.level.is_some() {
            // Silence suppressed at the sender: comfort noise instead of nothing, encoded
            // like speech (the far side needs no CN support of its own).
            self.noise
                .fill(frame_samples(self.in_rate), &mut self.decoded);
        }
        let from_clock = u64::from(self.from.codec.rtp_clock);
        for item in self.playout.drain(..) {
            match item {
                Playout::Packet { timestamp, payload } => {
                    // Speech after the CN packet (not the last words before it, still in
                    // the jitter buffer when CN arrived) ends the noise.
                    if (timestamp.wrapping_sub(self.noise.since) as i32) > 0 {
                        self.noise.level = None;
                    }
                    // Where this packet's first sample lands on our timeline: after what
                    // is still waiting to be encoded.
                    let to_clock = u64::from(self.to.codec.rtp_clock);
                    let pending = self.decoded.len() as u64 * to_clock / u64::from(self.in_rate)
                        + self.out.pending_ticks();
                    let (_, next) = self.out.event_origin();
                    self.anchor = Some((timestamp, next.wrapping_add(pending as u32)));
                    self.decoder.decode(&payload, &mut self.decoded);
                }
                Playout::Conceal(samples) => {
                    let at_rate = u64::from(samples) * u64::from(self.in_rate) / from_clock;
                    self.decoder.conceal(at_rate as usize, &mut self.decoded);
                }
            }
        }
        self.emit(send);
    }

    /// The mode the `from` leg last asked to receive in (AMR's CMR): for the direction
    /// toward it.
    pub fn mode_request(&self) -> Option<u8> {
        self.decoder.mode_request()
    }

    /// The `to` leg asked for `mode`.
    pub fn request_mode(&mut self, mode: u8) {
        self.out.request_mode(mode);
    }

    /// Resample what was decoded and send every whole packet.
    fn emit(&mut self, send: &mut dyn FnMut(&[u8])) {
        match &mut self.resampler {
            Some(r) => {
                let used = resample_frames(r, self.in_rate, &self.decoded, &mut self.resampled);
                self.decoded.drain(..used);
                self.out.push(&self.resampled, send);
                self.resampled.clear();
            }
            None => {
                self.out.push(&self.decoded, send);
                self.decoded.clear();
            }
        }
    }

    /// Where an event of Warden's own starts on this direction's output: its SSRC and the
    /// timestamp of the next frame.
    pub fn event_origin(&self) -> (u32, u32) {
        self.out.event_origin()
    }

    /// Take the next sequence number of the output stream for a packet of Warden's own.
    pub fn take_sequence_number(&mut self) -> u16 {
        self.out.take_sequence_number()
    }

    /// An RFC 4733 event: same payload, our SSRC and sequence, timestamp on our timeline.
    fn forward_event(&mut self, rtp: &rtp_types::RtpPacket<'_>, send: &mut dyn FnMut(&[u8])) {
        let Some(pt) = self.to.dtmf_payload_type else {
            return; // the far side takes no telephone-events (SIP INFO relay comes later)
        };
        let from_clock = u64::from(self.from.codec.rtp_clock);
        let to_clock = u64::from(self.to.codec.rtp_clock);
        let timestamp = match self.anchor {
            Some((in_ts, out_ts)) => {
                let delta = u64::from(rtp.timestamp().wrapping_sub(in_ts)) * to_clock / from_clock;
                out_ts.wrapping_add(delta as u32)
            }
            None => self.out.timestamp,
        };
        let mut payload = [0u8; 4];
        let Some(event) = rtp.payload().get(..4) else {
            return;
        };
        payload.copy_from_slice(event);
        // Bytes 2-3: the event's duration, in timestamp units of the clock.
        let duration =
            u64::from(u16::from_be_bytes([payload[2], payload[3]])) * to_clock / from_clock;
        payload[2..4].copy_from_slice(&(duration.min(0xffff) as u16).to_be_bytes());
        self.out
            .send_event(rtp.marker_bit(), pt, timestamp, &payload, send);
    }
}

/// Resample every whole 20 ms frame of `pcm` (at `rate`) onto `out`; how many samples
/// were used (the rest waits for more).
pub(crate) fn resample_frames(
    resampler: &mut Resampler,
    rate: u32,
    pcm: &[i16],
    out: &mut Vec<i16>,
) -> usize {
    let frame = frame_samples(rate);
    let mut used = 0;
    while pcm.len() - used >= frame {
        resampler.process(&pcm[used..used + frame], out);
        used += frame;
    }
    used
}

/// The sending half of a transcoded or mixed stream: PCM at one rate in, one leg's codec
/// out as RTP with its own SSRC, sequence numbers and timestamps, a packet per ptime.
pub(crate) struct Packetizer {
    to: LegCodec,
    /// The PCM rate taken, and milliseconds per packet (the leg's ptime as its codec can
    /// frame it).
    rate: u32,
    ptime: u32,
    encoder: Box<dyn Encoder>,
    pending: Vec<i16>,
    payload: Vec<u8>,
    packet: Vec<u8>,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    marker: bool,
}

impl Packetizer {
    /// `rate` must be one of the codec's PCM rates.
    pub(crate) fn new(to: LegCodec, rate: u32, options: &CodecOptions) -> Packetizer {
        Packetizer {
            to,
            rate,
            ptime: to.codec.packet_time(to.ptime),
            encoder: to.codec.encoder_at(rate, options, &to.params),
            pending: Vec::with_capacity(4096),
            payload: Vec::with_capacity(2048),
            packet: Vec::with_capacity(2048),
            ssrc: rand_u32(),
            seq: rand_u32() as u16,
            timestamp: rand_u32(),
            marker: true,
        }
    }

    /// Take PCM and send every whole packet.
    pub(crate) fn push(&mut self, pcm: &[i16], send: &mut dyn FnMut(&[u8])) {
        self.pending.extend_from_slice(pcm);
        let frame = (self.rate * self.ptime / 1000) as usize;
        let ts_step = self.to.codec.rtp_clock * self.ptime / 1000;
        let mut taken = 0;
        while self.pending.len() - taken >= frame {
            self.payload.clear();
            self.encoder
                .encode(&self.pending[taken..taken + frame], &mut self.payload);
            taken += frame;
            write_header(
                &mut self.packet,
                self.marker,
                self.to.payload_type,
                self.seq,
                self.timestamp,
                self.ssrc,
            );
            self.packet.extend_from_slice(&self.payload);
            send(&self.packet);
            self.marker = false;
            self.seq = self.seq.wrapping_add(1);
            self.timestamp = self.timestamp.wrapping_add(ts_step);
        }
        self.pending.drain(..taken);
    }

    /// The leg asked for `mode` (AMR's CMR in the packets it sends).
    pub(crate) fn request_mode(&mut self, mode: u8) {
        self.encoder.request_mode(mode);
    }

    /// PCM waiting for a whole packet, in ticks of the leg's RTP clock.
    fn pending_ticks(&self) -> u64 {
        self.pending.len() as u64 * u64::from(self.to.codec.rtp_clock) / u64::from(self.rate)
    }

    fn event_origin(&self) -> (u32, u32) {
        (self.ssrc, self.timestamp)
    }

    fn take_sequence_number(&mut self) -> u16 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        seq
    }

    /// An RFC 4733 event packet in this stream's numbering.
    fn send_event(
        &mut self,
        marker: bool,
        payload_type: u8,
        timestamp: u32,
        payload: &[u8],
        send: &mut dyn FnMut(&[u8]),
    ) {
        write_header(
            &mut self.packet,
            marker,
            payload_type,
            self.seq,
            timestamp,
            self.ssrc,
        );
        self.packet.extend_from_slice(payload);
        send(&self.packet);
        self.seq = self.seq.wrapping_add(1);
    }
}

/// Comfort noise (RFC 3389): white noise at the level the sender's CN packet gave.
#[derive(Default)]
pub(crate) struct ComfortNoise {
    /// Level in -dBov while the sender is silent; None while it speaks.
    level: Option<u8>,
    /// The RTP timestamp of the CN packet that set it.
    since: u32,
    state: u32,
}

impl ComfortNoise {
    fn fill(&mut self, samples: usize, out: &mut Vec<i16>) {
        let Some(level) = self.level else {
            return;
        };
        // RMS of the level relative to full scale; uniform noise of amplitude a has RMS
        // a / sqrt(3).
        let rms = 32767.0 * 10f32.powf(-f32::from(level) / 20.0);
        let amplitude = rms * 3f32.sqrt();
        if self.state == 0 {
            self.state = 0x9e37_79b9;
        }
        for _ in 0..samples {
            // xorshift32: cheap, and noise needs no better.
            self.state ^= self.state << 13;
            self.state ^= self.state >> 17;
            self.state ^= self.state << 5;
            let unit = (self.state as f32 / u32::MAX as f32) * 2.0 - 1.0;
            out.push((unit * amplitude) as i16);
        }
    }
}

/// PCM samples in 20 ms at `rate`.
pub(crate) fn frame_samples(rate: u32) -> usize {
    rate as usize / 50
}

fn write_header(buf: &mut Vec<u8>, marker: bool, pt: u8, seq: u16, timestamp: u32, ssrc: u32) {
    buf.clear();
    buf.push(0x80);
    buf.push(if marker { 0x80 | pt } else { pt });
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&timestamp.to_be_bytes());
    buf.extend_from_slice(&ssrc.to_be_bytes());
}

/// Random start values for SSRC, sequence and timestamp (RFC 3550 section 5.1), without a
/// dependency: the standard library's randomly keyed hasher.
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish() as u32
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::{self, tests::frequency, tests::tone};

    /// A leg of `name` at 8 kHz RTP clock, 20 ms packets, default payload format.
    pub(crate) fn leg(name: &str, pt: u8, dtmf: Option<u8>) -> LegCodec {
        LegCodec {
            codec: codec::by_name(name, 8000).expect("codec"),
            payload_type: pt,
            params: FormatParams::default(),
            ptime: 20,
            dtmf_payload_type: dtmf,
            cn_payload_type: None,
        }
    }

    /// Feed `packets` as a phone sends them, one per 20 ms, with the worker's ticks in
    /// between, then enough ticks to play out the jitter buffer; what the direction sent.
    fn feed(dir: &mut Direction, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let at = |ms: usize| t0 + std::time::Duration::from_millis(ms as u64);
        for (i, p) in packets.iter().enumerate() {
            dir.on_packet(p, at(20 * i), &mut |b| out.push(b.to_vec()));
            dir.tick(at(20 * i + 10), &mut |b| out.push(b.to_vec()));
        }
        for k in 0..10 {
            dir.tick(at(20 * (packets.len() + k) + 10), &mut |b| {
                out.push(b.to_vec())
            });
        }
        out
    }

    fn rtp_packet(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        write_header(&mut p, false, pt, seq, ts, 42);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn g722_to_pcma_keeps_the_tone_and_numbers_the_stream() {
        let (from, to) = (leg("G722", 9, Some(101)), leg("PCMA", 8, Some(96)));
        let mut dir = Direction::new(from, to, &CodecOptions::default());
        let mut encoder = from.codec.encoder();
        let pcm = tone(1000.0, 16000, 1.0, 12000.0);
        let packets: Vec<Vec<u8>> = pcm
            .chunks_exact(320)
            .enumerate()
            .map(|(i, frame)| {
                let mut payload = Vec::new();
                encoder.encode(frame, &mut payload);
                rtp_packet(9, 1000 + i as u16, 160 * i as u32, &payload)
            })
            .collect();
        let out = feed(&mut dir, &packets);
        assert!(
            out.len() >= 48,
            "about one packet per input packet: {}",
            out.len()
        );
        let mut decoder = to.codec.decoder();
        let mut pcm_out = Vec::new();
        for (i, p) in out.iter().enumerate() {
            let rtp = rtp_types::RtpPacket::parse(p).expect("valid RTP");
            assert_eq!(rtp.payload_type(), 8);
            assert_eq!(rtp.marker_bit(), i == 0, "marker on the first packet only");
            if i > 0 {
                let prev = rtp_types::RtpPacket::parse(&out[i - 1]).expect("rtp");
                assert_eq!(
                    rtp.sequence_number(),
                    prev.sequence_number().wrapping_add(1)
                );
                assert_eq!(
                    rtp.timestamp(),
                    prev.timestamp().wrapping_add(160),
                    "8 kHz clock"
                );
                assert_eq!(rtp.ssrc(), prev.ssrc());
            }
            assert_eq!(rtp.payload().len(), 160);
            decoder.decode(rtp.payload(), &mut pcm_out);
        }
        let f = frequency(&pcm_out[800..], 8000);
        assert!(
            (f - 1000.0).abs() < 20.0,
            "frequency after transcoding: {f}"
        );
    }

    #[test]
    fn packets_out_follow_the_far_sides_ptime() {
        let from = leg("G722", 9, None);
        let mut to = leg("PCMA", 8, None);
        to.ptime = 30;
        let mut dir = Direction::new(from, to, &CodecOptions::default());
        let mut encoder = from.codec.encoder();
        let packets: Vec<Vec<u8>> = tone(1000.0, 16000, 0.6, 8000.0)
            .chunks_exact(320)
            .enumerate()
            .map(|(i, frame)| {
                let mut payload = Vec::new();
                encoder.encode(frame, &mut payload);
                rtp_packet(9, i as u16, 160 * i as u32, &payload)
            })
            .collect();
        let out = feed(&mut dir, &packets);
        // 600 ms in: 20 packets of 30 ms, and up to 60 ms concealed as the stream stops.
        assert!((19..=22).contains(&out.len()), "{} packets", out.len());
        for pair in out.windows(2) {
            let (a, b) = (
                rtp_types::RtpPacket::parse(&pair[0]).expect("rtp"),
                rtp_types::RtpPacket::parse(&pair[1]).expect("rtp"),
            );
            assert_eq!(b.payload().len(), 240, "30 ms of PCMA");
            assert_eq!(b.timestamp().wrapping_sub(a.timestamp()), 240);
        }
        // G.711 and G.722 frame any 10 ms step from 10 to 60 ms.
        assert_eq!(from.codec.packet_time(30), 30);
        assert_eq!(
            codec::by_name("PCMA", 8000).expect("pcma").packet_time(250),
            60
        );
        assert_eq!(
            codec::by_name("PCMA", 8000).expect("pcma").packet_time(5),
            10
        );
    }

    #[test]
    fn a_silent_senders_comfort_noise_becomes_noise_at_its_level() {
        let mut from = leg("PCMU", 0, None);
        from.cn_payload_type = Some(13);
        let to = leg("PCMA", 8, None);
        let mut dir = Direction::new(from, to, &CodecOptions::default());
        let speech = [0x80u8; 160]; // loud PCMU
        let mut packets: Vec<Vec<u8>> = (0..5u16)
            .map(|seq| rtp_packet(0, seq, u32::from(seq) * 160, &speech))
            .collect();
        packets.push(rtp_packet(13, 5, 800, &[40])); // CN: -40 dBov
        let out = feed(&mut dir, &packets);
        // Speech, the slots the jitter buffer conceals, then noise on every tick after.
        assert!(out.len() >= 14, "{} packets", out.len());
        let mut decoder = to.codec.decoder();
        let mut tail = Vec::new();
        for p in &out[out.len() - 5..] {
            decoder.decode(&p[12..], &mut tail);
        }
        let rms =
            (tail.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
        let expected = 32767.0 * 10f64.powf(-40.0 / 20.0); // about 328
        assert!(
            rms > expected / 2.0 && rms < expected * 2.0,
            "noise RMS {rms:.0}, wanted about {expected:.0}"
        );
    }

    #[test]
    fn losses_are_concealed_and_events_follow_the_new_stream() {
        let (from, to) = (leg("PCMU", 0, Some(101)), leg("PCMA", 8, Some(96)));
        let mut dir = Direction::new(from, to, &CodecOptions::default());
        let frame = [0xffu8; 160];
        let packets: Vec<Vec<u8>> = [1u16, 2, 4, 5]
            .iter()
            .map(|&seq| rtp_packet(0, seq, u32::from(seq) * 160, &frame))
            .collect();
        let mut out = feed(&mut dir, &packets);
        // Packets 1, 2, the concealed 3, 4, 5, then up to three concealed ticks as the
        // stream stops: every 20 ms slot goes out, none twice.
        assert!((5..=8).contains(&out.len()), "{} packets", out.len());
        let seqs: Vec<u16> = out
            .iter()
            .map(|p| {
                rtp_types::RtpPacket::parse(p)
                    .expect("rtp")
                    .sequence_number()
            })
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
        let out_len = out.len();
        let event = [5u8, 0x0a, 0x01, 0x40]; // digit 5, volume 10, duration 320
        let later = Instant::now() + std::time::Duration::from_secs(1);
        dir.on_packet(&rtp_packet(101, 6, 6 * 160, &event), later, &mut |b| {
            out.push(b.to_vec())
        });
        assert_eq!(out.len(), out_len + 1, "events go on at once");
        let last = rtp_types::RtpPacket::parse(&out[out_len]).expect("rtp");
        let audio = rtp_types::RtpPacket::parse(&out[out_len - 1]).expect("rtp");
        assert_eq!(
            last.payload_type(),
            96,
            "translated to the far side's event type"
        );
        assert_eq!(last.payload(), &event);
        assert_eq!(last.ssrc(), audio.ssrc());
        assert_eq!(
            last.sequence_number(),
            audio.sequence_number().wrapping_add(1)
        );
        // Late and duplicate packets are dropped.
        let mut more = Vec::new();
        dir.on_packet(&rtp_packet(0, 2, 320, &frame), later, &mut |b| {
            more.push(b.to_vec())
        });
        dir.tick(later, &mut |b| more.push(b.to_vec()));
        assert!(more.is_empty(), "packet 2 again: dropped");
    }
}

//! Audio codecs behind one interface, and the registry that names them: adding a codec
//! (G.729, AMR, Opus) means one module and one registry entry, nothing else.
//!
//! Encoders take 16-bit mono PCM at the codec's sample rate, a packet's worth (20 ms, or
//! the far side's ptime as `packet_time` allows); decoders give it back and conceal lost
//! frames. Payload types other than the RFC 3551 static ones come from SDP.

#[cfg(feature = "amr")]
mod amr;
pub mod amr_mode;
pub mod amr_payload;
mod g711;
mod g722;
#[cfg(feature = "opus")]
pub(crate) mod opus;
mod polyphase;
pub mod resample;

pub use g711::{alaw_to_linear, linear_to_alaw, linear_to_ulaw, ulaw_to_linear};
pub use resample::Resampler;

/// Turns PCM frames into RTP payloads.
pub trait Encoder: Send {
    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>);
    /// The party this encoder sends to asked for `mode` (AMR's CMR); others ignore it.
    fn request_mode(&mut self, _mode: u8) {}
}

/// Turns RTP payloads into PCM frames; `conceal` stands in for a lost frame (PLC).
pub trait Decoder: Send {
    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>);
    fn conceal(&mut self, samples: usize, out: &mut Vec<i16>);
    /// The mode the sender last asked to receive in (AMR's CMR), if it asked.
    fn mode_request(&self) -> Option<u8> {
        None
    }
}

/// Packet loss concealment for codecs without their own (G.711 Appendix I in spirit, much
/// simpler): repeat the last good frame, halving its level per lost frame.
#[derive(Default)]
pub(crate) struct Concealer {
    last: Vec<i16>,
    gain: f32,
}

impl Concealer {
    pub(crate) fn good(&mut self, frame: &[i16]) {
        self.last.clear();
        self.last.extend_from_slice(frame);
        self.gain = 1.0;
    }

    pub(crate) fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        self.gain *= 0.5;
        for i in 0..samples {
            let s = self
                .last
                .get(i % self.last.len().max(1))
                .copied()
                .unwrap_or(0);
            out.push((f32::from(s) * self.gain) as i16);
        }
    }
}

/// Settings for the encoders Warden creates (from `[media]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecOptions {
    /// Opus encoder complexity, 0 (cheapest) to 10 (best); the biggest lever on the CPU
    /// one transcoded Opus call costs.
    pub opus_complexity: u8,
}

impl Default for CodecOptions {
    fn default() -> Self {
        CodecOptions {
            opus_complexity: DEFAULT_OPUS_COMPLEXITY,
        }
    }
}

/// Chosen by measurement (`cargo bench --bench codecs`; see the README): the cheapest
/// complexity whose voice quality holds up on narrowband and wideband calls.
pub const DEFAULT_OPUS_COMPLEXITY: u8 = 5;

/// What a format's SDP fmtp says that changes the bits on the wire (RFC 4867 for AMR):
/// the payload layout, the highest mode the peer accepts, and whether it asks for a
/// payload feature Warden does not implement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FormatParams {
    /// `octet-align=1`; otherwise bandwidth-efficient.
    pub octet_aligned: bool,
    /// `mode-set` as a bit per mode (0: every mode).
    pub mode_set: u16,
    /// `mode-change-period` (1 or 2; 0 when unsaid) and `mode-change-neighbor=1`: how the
    /// party lets the mode it receives change (RFC 4867 8.1).
    pub mode_change_period: u8,
    pub mode_change_neighbor: bool,
    /// `crc=1`, `robust-sorting=1` or `interleaving` (RFC 4867 4.4.2-4.4.4): frame CRCs and
    /// interleaved frames, which Warden neither reads nor writes. Such a format is relayed
    /// untouched but never decoded, encoded or offered.
    pub crc_or_interleaving: bool,
}

impl FormatParams {
    /// From an fmtp value ("octet-align=1; mode-set=0,2,5") or the whole `a=fmtp:` line.
    pub fn parse(fmtp: &str) -> FormatParams {
        let value = match fmtp.strip_prefix("a=fmtp:") {
            Some(rest) => rest.split_once(' ').map_or("", |(_, v)| v),
            None => fmtp,
        };
        let mut params = FormatParams::default();
        for pair in value.split(';') {
            let Some((name, v)) = pair.split_once('=') else {
                continue;
            };
            let v = v.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "octet-align" => params.octet_aligned = v == "1",
                "mode-set" => {
                    params.mode_set = v
                        .split(',')
                        .filter_map(|m| m.trim().parse::<u8>().ok())
                        .filter(|m| *m < 16)
                        .fold(0, |set, m| set | 1 << m);
                }
                "mode-change-period" => params.mode_change_period = v.parse().unwrap_or(0),
                "mode-change-neighbor" => params.mode_change_neighbor = v == "1",
                "crc" | "robust-sorting" => params.crc_or_interleaving |= v == "1",
                "interleaving" => params.crc_or_interleaving = true,
                _ => {}
            }
        }
        params
    }

    /// The highest mode of `mode-set`, when it restricts the modes.
    pub fn highest_mode(&self) -> Option<u8> {
        (self.mode_set != 0).then(|| 15 - self.mode_set.leading_zeros() as u8)
    }

    /// Do two formats of one codec put the same bits on the wire, so that packets can be
    /// relayed between them untouched? (Modes are not compared: an answer keeps the
    /// offer's mode-set, RFC 4867 8.3.1.)
    pub fn same_layout(&self, other: &FormatParams) -> bool {
        self.octet_aligned == other.octet_aligned
            && self.crc_or_interleaving == other.crc_or_interleaving
    }
}

/// One codec as SDP names it and as the media engine runs it.
#[derive(Clone, Copy)]
pub struct Codec {
    /// The rtpmap encoding name (compared case-insensitively).
    pub name: &'static str,
    /// RFC 3551 static payload type, if it has one; the others get a dynamic one from SDP.
    pub static_payload_type: Option<u8>,
    /// RTP timestamp clock (what SDP's rtpmap says).
    pub rtp_clock: u32,
    /// The channel count rtpmap carries, when it carries one (Opus: always 2, RFC 7587).
    pub rtpmap_channels: Option<u8>,
    /// The payload formats Warden offers the codec in, one payload type each, by their
    /// fmtp ("" for none). AMR and AMR-WB come in both layouts (bandwidth-efficient, then
    /// octet-aligned), as 3GPP TS 26.114 devices offer them.
    pub offered_formats: &'static [&'static str],
    /// The PCM rate the codec is made for.
    pub sample_rate: u32,
    /// Packet times it can frame, in milliseconds: multiples of this step up to 60 (G.711
    /// and G.722 any 10 ms; Opus and AMR whole 20 ms frames).
    pub ptime_step: u32,
    /// Every PCM rate the codec encodes from and decodes to without a resampler (Opus
    /// resamples internally, so a PCMA<->Opus call needs no resampler of ours).
    pub pcm_rates: &'static [u32],
    make_encoder: fn(u32, &CodecOptions, &FormatParams) -> Box<dyn Encoder>,
    make_decoder: fn(u32, &FormatParams) -> Box<dyn Decoder>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.name, self.rtp_clock)
    }
}

impl Codec {
    /// The packet time to send a party asking for `wanted` ms: the nearest the codec can
    /// frame at or below it, between one step and 60 ms.
    pub fn packet_time(&self, wanted: u32) -> u32 {
        let step = self.ptime_step.max(1);
        (wanted / step * step).clamp(step, 60 / step * step)
    }

    /// PCM samples in one 20 ms frame at the codec's own rate.
    pub fn frame_samples(&self) -> usize {
        (self.sample_rate / 50) as usize
    }

    /// An encoder taking PCM at the codec's own rate, with default options and format.
    pub fn encoder(&self) -> Box<dyn Encoder> {
        (self.make_encoder)(
            self.sample_rate,
            &CodecOptions::default(),
            &FormatParams::default(),
        )
    }

    /// A decoder giving PCM at the codec's own rate, for the default format.
    pub fn decoder(&self) -> Box<dyn Decoder> {
        (self.make_decoder)(self.sample_rate, &FormatParams::default())
    }

    /// An encoder taking PCM at `rate` (one of `pcm_rates`) for the format `params`.
    pub fn encoder_at(
        &self,
        rate: u32,
        options: &CodecOptions,
        params: &FormatParams,
    ) -> Box<dyn Encoder> {
        debug_assert!(self.pcm_rates.contains(&rate));
        (self.make_encoder)(rate, options, params)
    }

    /// A decoder giving PCM at `rate` (one of `pcm_rates`) for the format `params`.
    pub fn decoder_at(&self, rate: u32, params: &FormatParams) -> Box<dyn Decoder> {
        debug_assert!(self.pcm_rates.contains(&rate));
        (self.make_decoder)(rate, params)
    }

    /// The AMR payload layout of this codec in format `params`; None for other codecs.
    pub fn amr_layout(&self, params: &FormatParams) -> Option<amr_payload::Layout> {
        let wideband = match self.name {
            "AMR" => false,
            "AMR-WB" => true,
            _ => return None,
        };
        Some(amr_payload::Layout {
            wideband,
            octet_aligned: params.octet_aligned,
        })
    }

    /// The a=rtpmap value for payload type `pt` (e.g. "111 opus/48000/2").
    pub fn rtpmap(&self, pt: u8) -> String {
        match self.rtpmap_channels {
            Some(ch) => format!("{pt} {}/{}/{ch}", self.name, self.rtp_clock),
            None => format!("{pt} {}/{}", self.name, self.rtp_clock),
        }
    }
}

/// The PCM rates a transcoder from `from` to `to` works at: (decode rate, encode rate).
/// The highest rate both codecs take natively when there is one (no resampler at all),
/// otherwise each codec's own rate with a resampler between.
pub fn pcm_rates_between(from: &Codec, to: &Codec) -> (u32, u32) {
    match from
        .pcm_rates
        .iter()
        .filter(|r| to.pcm_rates.contains(r))
        .max()
    {
        Some(&shared) => (shared, shared),
        None => (from.sample_rate, to.sample_rate),
    }
}

/// AMR's two payload layouts, each declaring what Warden's encoder does: mode changes kept
/// to every other frame when asked (`mode-change-capability=2`, see `amr_mode`) and no
/// redundant frames (`max-red=0`).
#[cfg(feature = "amr")]
const AMR_FORMATS: &[&str] = &[
    "mode-change-capability=2;max-red=0",
    "octet-align=1;mode-change-capability=2;max-red=0",
];

const CODECS: &[Codec] = &[
    Codec {
        name: "PCMU",
        static_payload_type: Some(0),
        rtp_clock: 8000,
        rtpmap_channels: None,
        offered_formats: &[""],
        sample_rate: 8000,
        pcm_rates: &[8000],
        ptime_step: 10,
        make_encoder: |_, _, _| Box::new(g711::Pcmu),
        make_decoder: |_, _| Box::new(g711::G711Decoder::ulaw()),
    },
    Codec {
        name: "PCMA",
        static_payload_type: Some(8),
        rtp_clock: 8000,
        rtpmap_channels: None,
        offered_formats: &[""],
        sample_rate: 8000,
        pcm_rates: &[8000],
        ptime_step: 10,
        make_encoder: |_, _, _| Box::new(g711::Pcma),
        make_decoder: |_, _| Box::new(g711::G711Decoder::alaw()),
    },
    Codec {
        name: "G722",
        static_payload_type: Some(9),
        rtp_clock: 8000,
        rtpmap_channels: None,
        offered_formats: &[""],
        sample_rate: 16000,
        pcm_rates: &[16000],
        ptime_step: 10,
        make_encoder: |_, _, _| Box::new(g722::G722Encoder::new()),
        make_decoder: |_, _| Box::new(g722::G722Decoder::new()),
    },
    #[cfg(feature = "amr")]
    Codec {
        name: "AMR",
        static_payload_type: None,
        rtp_clock: 8000,
        rtpmap_channels: None,
        offered_formats: AMR_FORMATS,
        sample_rate: 8000,
        pcm_rates: &[8000],
        ptime_step: 20,
        make_encoder: |_, options, params| Box::new(amr::AmrEncoder::new(false, options, params)),
        make_decoder: |_, params| Box::new(amr::AmrDecoder::new(false, params)),
    },
    #[cfg(feature = "amr")]
    Codec {
        name: "AMR-WB",
        static_payload_type: None,
        rtp_clock: 16000,
        rtpmap_channels: None,
        offered_formats: AMR_FORMATS,
        sample_rate: 16000,
        pcm_rates: &[16000],
        ptime_step: 20,
        make_encoder: |_, options, params| Box::new(amr::AmrEncoder::new(true, options, params)),
        make_decoder: |_, params| Box::new(amr::AmrDecoder::new(true, params)),
    },
    #[cfg(feature = "opus")]
    Codec {
        name: "opus",
        static_payload_type: None,
        rtp_clock: 48000,
        rtpmap_channels: Some(2),
        offered_formats: &["minptime=10;useinbandfec=1"],
        sample_rate: 48000,
        pcm_rates: &[8000, 12000, 16000, 24000, 48000],
        ptime_step: 20,
        make_encoder: |rate, options, _| Box::new(opus::OpusEncoder::new(rate, options)),
        make_decoder: |rate, _| Box::new(opus::OpusDecoder::new(rate)),
    },
];

/// Every codec Warden can decode and encode.
pub fn all() -> &'static [Codec] {
    CODECS
}

/// The codec SDP calls `name` at `clock` (e.g. "PCMA", 8000).
pub fn by_name(name: &str, clock: u32) -> Option<&'static Codec> {
    CODECS
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(name) && c.rtp_clock == clock)
}

/// The codec of a static payload type (when SDP has no rtpmap for it).
pub fn by_static_payload_type(pt: u8) -> Option<&'static Codec> {
    CODECS.iter().find(|c| c.static_payload_type == Some(pt))
}

/// The power of `samples` (at `rate`) at one frequency, per sample squared (Goertzel): to
/// check which tones a recording holds.
pub fn tone_power(samples: &[i16], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let (mut s1, mut s2) = (0.0, 0.0);
    for x in samples {
        let s = f64::from(*x) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2) / (samples.len().max(1) as f64).powi(2)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `seconds` of a sine at `freq` Hz, amplitude `amp`, at `rate`.
    pub fn tone(freq: f64, rate: u32, seconds: f64, amp: f64) -> Vec<i16> {
        let n = (f64::from(rate) * seconds) as usize;
        (0..n)
            .map(|i| {
                (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin())
                    as i16
            })
            .collect()
    }

    /// Frequency of a tone from its zero crossings (rising edges per second).
    pub fn frequency(samples: &[i16], rate: u32) -> f64 {
        let rising = samples.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        rising as f64 * f64::from(rate) / samples.len() as f64
    }

    /// Signal-to-noise ratio of `decoded` against `reference` in dB, at the best alignment
    /// within `max_lag` samples (codecs and resamplers delay the signal).
    pub fn snr_db(reference: &[i16], decoded: &[i16], max_lag: usize) -> f64 {
        (0..=max_lag)
            .map(|lag| {
                let pairs = reference.iter().zip(decoded.iter().skip(lag));
                let (mut signal, mut noise) = (0.0f64, 0.0f64);
                for (r, d) in pairs {
                    signal += f64::from(*r).powi(2);
                    noise += (f64::from(*r) - f64::from(*d)).powi(2);
                }
                10.0 * (signal / noise.max(1.0)).log10()
            })
            .fold(f64::MIN, f64::max)
    }

    /// Encode and decode `pcm` frame by frame through `codec`.
    fn round_trip(codec: &Codec, pcm: &[i16]) -> Vec<i16> {
        let (mut enc, mut dec) = (codec.encoder(), codec.decoder());
        let mut out = Vec::new();
        for frame in pcm.chunks_exact(codec.frame_samples()) {
            let mut payload = Vec::new();
            enc.encode(frame, &mut payload);
            dec.decode(&payload, &mut out);
        }
        out
    }

    #[test]
    fn every_codec_keeps_a_1khz_tone_with_its_snr_floor() {
        // (codec, SNR floor in dB): G.711 is ~38 dB on a loud tone, G.722 ~25 dB here.
        for (name, floor) in [("PCMU", 30.0), ("PCMA", 30.0), ("G722", 15.0)] {
            let codec = by_name(name, 8000).expect("registered");
            let pcm = tone(1000.0, codec.sample_rate, 1.0, 12000.0);
            let out = round_trip(codec, &pcm);
            assert_eq!(out.len(), pcm.len(), "{name}: every sample comes back");
            let settled = &out[codec.frame_samples()..];
            let f = frequency(settled, codec.sample_rate);
            assert!((f - 1000.0).abs() < 20.0, "{name}: frequency {f}");
            let snr = snr_db(&pcm, &out, 64);
            assert!(snr > floor, "{name}: SNR {snr:.1} dB under {floor}");
        }
    }

    #[cfg(feature = "opus")]
    #[test]
    fn opus_keeps_a_1khz_tone_at_every_pcm_rate() {
        let codec = by_name("OPUS", 48000).expect("registered");
        assert_eq!(codec.rtpmap(111), "111 opus/48000/2", "RFC 7587 section 7");
        for &rate in codec.pcm_rates {
            let (mut enc, mut dec) = (
                codec.encoder_at(rate, &CodecOptions::default(), &FormatParams::default()),
                codec.decoder_at(rate, &FormatParams::default()),
            );
            let pcm = tone(1000.0, rate, 1.0, 12000.0);
            let mut out = Vec::new();
            for frame in pcm.chunks_exact(rate as usize / 50) {
                let mut payload = Vec::new();
                enc.encode(frame, &mut payload);
                assert!(
                    !payload.is_empty() && payload.len() < 200,
                    "{rate}: payload"
                );
                dec.decode(&payload, &mut out);
            }
            assert_eq!(out.len(), pcm.len(), "{rate}: every sample comes back");
            // Past the codec's start-up (its look-ahead plus the encoder settling).
            let settled = &out[rate as usize / 10..];
            let f = frequency(settled, rate);
            assert!((f - 1000.0).abs() < 20.0, "{rate}: frequency {f}");
            // Opus is perceptual, so its waveform SNR is modest; 10 dB still means the
            // tone came through, not noise.
            let snr = snr_db(&pcm[rate as usize / 10..], settled, rate as usize / 100);
            assert!(snr > 10.0, "{rate}: SNR {snr:.1} dB");
            // Native concealment fills a lost frame with signal, not silence.
            let before = out.len();
            dec.conceal(rate as usize / 50, &mut out);
            assert_eq!(out.len() - before, rate as usize / 50);
            let peak = out[before..].iter().map(|v| v.unsigned_abs()).max();
            assert!(peak > Some(1000), "{rate}: concealment carries the tone on");
        }
    }

    #[test]
    fn resampler_passes_speech_and_stops_aliases() {
        let rms = |s: &[i16]| {
            (s.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / s.len() as f64).sqrt()
        };
        let down = |freq: f64| {
            let mut r = Resampler::new(16000, 8000).expect("supported");
            let mut out = Vec::new();
            for frame in tone(freq, 16000, 0.5, 10000.0).chunks_exact(320) {
                r.process(frame, &mut out);
            }
            rms(&out[800..])
        };
        let level = 10000.0 / 2f64.sqrt();
        let pass = down(3000.0);
        assert!((pass / level - 1.0).abs() < 0.03, "3 kHz passes: {pass:.0}");
        // 6 kHz would fold onto 2 kHz: at least 54 dB down,
        // far under G.711's own noise (about 38 dB below a tone).
        let alias = down(6000.0);
        assert!(alias < level / 500.0, "6 kHz stopped: {alias:.1}");
        // Up: the image of a 1 kHz tone at 7 kHz is filtered out, the tone kept.
        let mut r = Resampler::new(8000, 16000).expect("supported");
        let mut out = Vec::new();
        for frame in tone(1000.0, 8000, 0.5, 10000.0).chunks_exact(160) {
            r.process(frame, &mut out);
        }
        let settled = &out[1600..];
        assert!((rms(settled) / level - 1.0).abs() < 0.03);
        assert!(snr_db(&tone(1000.0, 16000, 0.5, 10000.0)[..6000], settled, 80) > 40.0);
    }

    #[cfg(feature = "amr")]
    #[test]
    fn amr_nb_and_wb_keep_a_1khz_tone_in_both_payload_layouts() {
        for (name, clock) in [("AMR", 8000), ("AMR-WB", 16000)] {
            let codec = by_name(name, clock).expect("registered");
            for octet_aligned in [false, true] {
                let params = FormatParams {
                    octet_aligned,
                    ..FormatParams::default()
                };
                let rate = codec.sample_rate;
                let (mut enc, mut dec) = (
                    codec.encoder_at(rate, &CodecOptions::default(), &params),
                    codec.decoder_at(rate, &params),
                );
                let pcm = tone(1000.0, rate, 1.0, 12000.0);
                let mut out = Vec::new();
                for frame in pcm.chunks_exact(codec.frame_samples()) {
                    let mut payload = Vec::new();
                    enc.encode(frame, &mut payload);
                    // 12.2 kbps: 32 octets (efficient), 33 (aligned); 23.85: 61, 62.
                    let expected = match (name, octet_aligned) {
                        ("AMR", false) => 32,
                        ("AMR", true) => 33,
                        (_, false) => 61,
                        (_, true) => 62,
                    };
                    assert_eq!(payload.len(), expected, "{name} aligned={octet_aligned}");
                    dec.decode(&payload, &mut out);
                }
                assert_eq!(out.len(), pcm.len(), "{name}: every sample comes back");
                let settled = &out[rate as usize / 10..];
                let f = frequency(settled, rate);
                assert!((f - 1000.0).abs() < 20.0, "{name}: frequency {f}");
                let snr = snr_db(&pcm[rate as usize / 10..], settled, rate as usize / 50);
                assert!(snr > 5.0, "{name}: SNR {snr:.1} dB");
                let before = out.len();
                dec.conceal(codec.frame_samples(), &mut out);
                assert_eq!(
                    out.len() - before,
                    codec.frame_samples(),
                    "{name}: concealed"
                );
            }
            // mode-set caps the encoder: AMR-WB mode 2 (12.65 kbps) is 253 bits.
            let params = FormatParams::parse("a=fmtp:97 mode-set=0,1,2; octet-align=1");
            assert_eq!(
                params,
                FormatParams {
                    octet_aligned: true,
                    mode_set: 0b111,
                    crc_or_interleaving: false,
                    ..FormatParams::default()
                }
            );
            assert_eq!(params.highest_mode(), Some(2));
            assert_eq!(FormatParams::default().highest_mode(), None);
            assert!(FormatParams::parse("octet-align=1; crc=1").crc_or_interleaving);
            assert!(FormatParams::parse("octet-align=1;interleaving=4").crc_or_interleaving);
            assert!(!FormatParams::parse("crc=0").crc_or_interleaving);
            if name == "AMR-WB" {
                let mut payload = Vec::new();
                codec
                    .encoder_at(16000, &CodecOptions::default(), &params)
                    .encode(&tone(1000.0, 16000, 0.02, 12000.0), &mut payload);
                assert_eq!(payload.len(), 2 + 32);
                assert_eq!((payload[1] >> 3) & 0x0f, 2, "frame type 2");
            }
        }
    }

    #[test]
    fn pcm_rates_avoid_resampling_when_a_codec_can() {
        let (pcma, g722) = (
            by_name("PCMA", 8000).expect("pcma"),
            by_name("G722", 8000).expect("g722"),
        );
        assert_eq!(pcm_rates_between(pcma, g722), (8000, 16000));
        assert_eq!(pcm_rates_between(g722, pcma), (16000, 8000));
        #[cfg(feature = "opus")]
        {
            let opus = by_name("opus", 48000).expect("opus");
            assert_eq!(pcm_rates_between(opus, pcma), (8000, 8000));
            assert_eq!(pcm_rates_between(g722, opus), (16000, 16000));
        }
    }

    #[test]
    fn payload_sizes_are_per_rfc3551() {
        for (name, bytes) in [("PCMU", 160), ("PCMA", 160), ("G722", 160)] {
            let codec = by_name(name, 8000).expect("registered");
            let mut payload = Vec::new();
            codec
                .encoder()
                .encode(&vec![0; codec.frame_samples()], &mut payload);
            assert_eq!(payload.len(), bytes, "{name}: 20 ms payload");
        }
    }

    #[test]
    fn registry_lookups() {
        assert_eq!(by_static_payload_type(8).map(|c| c.name), Some("PCMA"));
        assert_eq!(
            by_name("pcmu", 8000).map(|c| c.static_payload_type),
            Some(Some(0))
        );
        assert!(by_name("PCMU", 16000).is_none());
        assert_eq!(by_name("G722", 8000).map(|c| c.sample_rate), Some(16000));
    }

    #[test]
    fn lost_frames_are_concealed_then_fade() {
        let codec = by_name("PCMA", 8000).expect("registered");
        let mut dec = codec.decoder();
        let mut out = Vec::new();
        let mut payload = Vec::new();
        codec
            .encoder()
            .encode(&tone(1000.0, 8000, 0.02, 12000.0), &mut payload);
        dec.decode(&payload, &mut out);
        dec.conceal(160, &mut out);
        dec.conceal(160, &mut out);
        let peak = |s: &[i16]| s.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
        assert!(peak(&out[160..320]) > 2000, "the first loss is filled");
        assert!(peak(&out[320..]) < peak(&out[160..320]), "then it fades");
    }

    #[test]
    fn resampler_keeps_a_tone_frequency_between_8_16_and_48_khz() {
        for (from, to) in [
            (8000, 16000),
            (16000, 8000),
            (8000, 48000),
            (48000, 8000),
            (16000, 48000),
        ] {
            let mut r = Resampler::new(from, to).expect("supported");
            let pcm = tone(1000.0, from, 1.0, 12000.0);
            let mut out = Vec::new();
            for frame in pcm.chunks_exact((from / 50) as usize) {
                r.process(frame, &mut out);
            }
            assert_eq!(
                out.len(),
                (to as usize),
                "{from}->{to}: one second in, one out"
            );
            let settled = &out[r.delay_samples() + (to / 50) as usize..];
            let f = frequency(settled, to);
            assert!((f - 1000.0).abs() < 10.0, "{from}->{to}: frequency {f}");
        }
    }
}

//! Opus (RFC 6716, RTP payload RFC 7587) through `audiopus` and the system's libopus. Mono,
//! VoIP mode, at whatever PCM rate the other leg uses: libopus resamples internally.
//!
//! Lost packets are concealed by libopus itself (its decoder extrapolates from its state).

use audiopus::coder::{Decoder as RawDecoder, Encoder as RawEncoder};
use audiopus::{Application, Channels, MutSignals, SampleRate, packet::Packet};

use super::{CodecOptions, Decoder, Encoder};

/// The largest Opus packet (RFC 6716 section 3.2.1), and the longest frame a packet can
/// carry (120 ms) at 48 kHz.
const MAX_PACKET: usize = 1275;
const MAX_FRAME_SAMPLES: usize = 5760;

fn sample_rate(rate: u32) -> SampleRate {
    match rate {
        8000 => SampleRate::Hz8000,
        12000 => SampleRate::Hz12000,
        16000 => SampleRate::Hz16000,
        24000 => SampleRate::Hz24000,
        _ => SampleRate::Hz48000,
    }
}

pub struct OpusEncoder {
    inner: RawEncoder,
    scratch: Box<[u8; MAX_PACKET]>,
}

impl OpusEncoder {
    pub fn new(rate: u32, options: &CodecOptions) -> OpusEncoder {
        // libopus refuses only invalid arguments (ruled out: a supported rate, mono, VoIP)
        // or a failed allocation, which aborts the process in Rust anyway.
        let mut inner = RawEncoder::new(sample_rate(rate), Channels::Mono, Application::Voip)
            .expect("opus_encoder_create with valid arguments");
        // Out-of-range values are refused by libopus and leave its default (9) in place;
        // the config loader bounds the value first.
        let _ = inner.set_complexity(options.opus_complexity.min(10));
        OpusEncoder {
            inner,
            scratch: Box::new([0; MAX_PACKET]),
        }
    }
}

impl Encoder for OpusEncoder {
    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        // A frame of a length Opus cannot take (only whole 2.5-60 ms frames) is a bug in
        // the caller; it sends nothing rather than a broken packet.
        match self.inner.encode(pcm, &mut self.scratch[..]) {
            Ok(n) => out.extend_from_slice(&self.scratch[..n]),
            Err(e) => tracing::debug!(error = %e, samples = pcm.len(), "opus encode failed"),
        }
    }
}

/// libopus's complexity (0-10) for recordings.
const RECORDING_COMPLEXITY: u8 = 3;

/// Opus for a recording's file: mono or stereo, at the file's rate.
pub struct OpusFileEncoder {
    inner: RawEncoder,
    scratch: Box<[u8; MAX_PACKET]>,
}

impl OpusFileEncoder {
    /// `channels` (1 or 2) at `rate` (8, 12, 16, 24 or 48 kHz).
    pub fn new(rate: u32, channels: u16) -> Result<OpusFileEncoder, String> {
        if !crate::record::OPUS_RATES.contains(&rate) {
            return Err(format!("Opus does not take {rate} Hz"));
        }
        let layout = match channels {
            1 => Channels::Mono,
            2 => Channels::Stereo,
            n => return Err(format!("Opus recordings have 1 or 2 channels, not {n}")),
        };
        let mut inner = RawEncoder::new(sample_rate(rate), layout, Application::Voip)
            .map_err(|e| format!("opus_encoder_create: {e}"))?;
        // A recording is for listening back to speech, not for a network's losses: the
        // encoder's cheaper analysis (its default, 10, costs about twice as much).
        let _ = inner.set_complexity(RECORDING_COMPLEXITY);
        Ok(OpusFileEncoder {
            inner,
            scratch: Box::new([0; MAX_PACKET]),
        })
    }

    /// The encoder's delay in samples at its rate (the file's pre-skip, RFC 7845).
    pub fn lookahead(&self) -> u32 {
        self.inner.lookahead().unwrap_or(0)
    }

    /// One 20 ms frame of interleaved PCM, its packet appended to `out`; false when
    /// libopus refused it.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> bool {
        match self.inner.encode(pcm, &mut self.scratch[..]) {
            Ok(n) => {
                out.extend_from_slice(&self.scratch[..n]);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, samples = pcm.len(), "opus encode failed");
                false
            }
        }
    }
}

pub struct OpusDecoder {
    inner: RawDecoder,
    scratch: Vec<i16>,
    /// Samples in 20 ms at the output rate: what a corrupt packet is concealed as.
    frame: usize,
}

impl OpusDecoder {
    pub fn new(rate: u32) -> OpusDecoder {
        OpusDecoder {
            // As for the encoder: only invalid arguments or a failed allocation.
            inner: RawDecoder::new(sample_rate(rate), Channels::Mono)
                .expect("opus_decoder_create with valid arguments"),
            scratch: vec![0; MAX_FRAME_SAMPLES],
            frame: rate as usize / 50,
        }
    }

    /// Decode `packet`, or conceal `samples` when it is None; false when libopus failed.
    fn run(&mut self, packet: Option<Packet<'_>>, samples: usize, out: &mut Vec<i16>) -> bool {
        let samples = samples.min(self.scratch.len());
        let Ok(signals) = MutSignals::try_from(&mut self.scratch[..samples]) else {
            return false;
        };
        match self.inner.decode(packet, signals, false) {
            Ok(n) => {
                out.extend_from_slice(&self.scratch[..n.min(samples)]);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "opus decode failed");
                false
            }
        }
    }
}

impl Decoder for OpusDecoder {
    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        // A corrupt or empty payload is concealed like a lost one, so the stream keeps its
        // timing.
        let decoded = Packet::try_from(payload)
            .is_ok_and(|packet| self.run(Some(packet), MAX_FRAME_SAMPLES, out));
        if !decoded {
            self.conceal(self.frame, out);
        }
    }

    fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        self.run(None, samples, out);
    }
}

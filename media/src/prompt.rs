//! Announcements: audio files decoded once (`symphonia`: WAV with PCM, u-law or A-law,
//! FLAC, Ogg Vorbis, MP3), resampled and encoded once per codec, cached, then played by the
//! relay workers as 20 ms RTP frames.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::DecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::codec::{Codec, CodecOptions, FormatParams, resample};

#[derive(Debug, thiserror::Error)]
#[error("prompt {name}: {cause}")]
pub struct PromptError {
    pub name: String,
    pub cause: String,
}

/// A prompt decoded to mono 16-bit PCM.
#[derive(Debug, Clone)]
pub struct Audio {
    pub rate: u32,
    pub samples: Vec<i16>,
}

/// A prompt ready to send: one encoded payload per 20 ms frame.
#[derive(Debug)]
pub struct EncodedPrompt {
    pub codec: &'static Codec,
    pub frames: Vec<Vec<u8>>,
}

/// Decode an audio file's bytes (the format is sniffed; `name` is only for errors).
pub fn decode(name: &str, bytes: Vec<u8>) -> Result<Audio, PromptError> {
    let fail = |cause: String| PromptError {
        name: name.to_owned(),
        cause,
    };
    let stream = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let probed = symphonia::default::get_probe()
        .format(
            &Hint::new(),
            stream,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| fail(format!("not a supported audio file: {e}")))?;
    let mut format = probed.format;
    let track = format
        .default_track()
        .ok_or_else(|| fail("no audio track".into()))?;
    let (track_id, params) = (track.id, track.codec_params.clone());
    let rate = params
        .sample_rate
        .ok_or_else(|| fail("no sample rate".into()))?;
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| fail(format!("cannot decode: {e}")))?;
    let mut samples = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(e) => return Err(fail(format!("read error: {e}"))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = decoder
            .decode(&packet)
            .map_err(|e| fail(format!("decode error: {e}")))?;
        let spec = *decoded.spec();
        let channels = spec.channels.count().max(1);
        let mut buffer = SampleBuffer::<i16>::new(decoded.capacity() as u64, spec);
        buffer.copy_interleaved_ref(decoded);
        // Mono: the mean of the channels.
        samples.extend(buffer.samples().chunks(channels).map(|frame| {
            (frame.iter().map(|s| i32::from(*s)).sum::<i32>() / channels as i32) as i16
        }));
    }
    if samples.is_empty() {
        return Err(fail("no audio in the file".into()));
    }
    Ok(Audio { rate, samples })
}

/// Resample `audio` for `codec` and encode it in 20 ms frames (the last one padded), each
/// frame a whole RTP payload in format `params` (AMR's layout and mode).
pub fn encode(
    audio: &Audio,
    codec: &'static Codec,
    params: &FormatParams,
) -> Result<EncodedPrompt, String> {
    let pcm = if audio.rate == codec.sample_rate {
        audio.samples.clone()
    } else {
        resample::whole(&audio.samples, audio.rate, codec.sample_rate)?
    };
    let n = codec.frame_samples();
    let mut encoder = codec.encoder_at(codec.sample_rate, &CodecOptions::default(), params);
    let frames = pcm
        .chunks(n)
        .map(|chunk| {
            let mut frame = chunk.to_vec();
            frame.resize(n, 0);
            let mut payload = Vec::new();
            encoder.encode(&frame, &mut payload);
            payload
        })
        .collect();
    Ok(EncodedPrompt { codec, frames })
}

/// Named prompts, decoded once and encoded once per codec and payload format on first use.
#[derive(Default)]
pub struct Prompts {
    audio: HashMap<String, Audio>,
    encoded: HashMap<(String, &'static str, FormatParams), Arc<EncodedPrompt>>,
}

impl Prompts {
    /// Add (or replace) prompt `name` from an audio file's bytes.
    pub fn add(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), PromptError> {
        let audio = decode(name, bytes)?;
        self.encoded.retain(|(n, _, _), _| n != name);
        self.audio.insert(name.to_owned(), audio);
        Ok(())
    }

    /// Add every audio file in `dir`, named by its file stem ("busy.wav" -> "busy").
    pub fn add_dir(&mut self, dir: &Path) -> Result<usize, PromptError> {
        let entries = std::fs::read_dir(dir).map_err(|e| PromptError {
            name: dir.display().to_string(),
            cause: e.to_string(),
        })?;
        let mut added = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let audio_file = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                ["wav", "flac", "ogg", "mp3"].contains(&e.to_ascii_lowercase().as_str())
            });
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if !audio_file {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| PromptError {
                name: path.display().to_string(),
                cause: e.to_string(),
            })?;
            self.add(stem, bytes).map_err(|e| PromptError {
                name: path.display().to_string(),
                cause: e.cause,
            })?;
            added += 1;
        }
        Ok(added)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.audio.contains_key(name)
    }

    /// Several prompts played as one (a code read digit by digit), for `codec` in format
    /// `params`; None when one of them is missing.
    pub fn sequence(
        &mut self,
        names: &[&str],
        codec: &'static Codec,
        params: &FormatParams,
    ) -> Option<Arc<EncodedPrompt>> {
        if let [name] = names {
            return self.encoded(name, codec, params);
        }
        let mut frames = Vec::new();
        for name in names {
            frames.extend(self.encoded(name, codec, params)?.frames.iter().cloned());
        }
        Some(Arc::new(EncodedPrompt { codec, frames }))
    }

    /// Prompt `name` encoded for `codec` in format `params` (encoded now if this is the
    /// first time).
    pub fn encoded(
        &mut self,
        name: &str,
        codec: &'static Codec,
        params: &FormatParams,
    ) -> Option<Arc<EncodedPrompt>> {
        let key = (name.to_owned(), codec.name, *params);
        if let Some(e) = self.encoded.get(&key) {
            return Some(e.clone());
        }
        let audio = self.audio.get(name)?;
        let encoded = Arc::new(encode(audio, codec, params).ok()?);
        self.encoded.insert(key, encoded.clone());
        Some(encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{self, tests::frequency};

    /// A WAV file (16-bit PCM) holding a tone.
    fn wav(rate: u32, channels: u16, seconds: f64) -> Vec<u8> {
        let n = (f64::from(rate) * seconds) as usize;
        let mut data = Vec::new();
        for i in 0..n {
            let s = (10000.0
                * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / f64::from(rate)).sin())
                as i16;
            for _ in 0..channels {
                data.extend_from_slice(&s.to_le_bytes());
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
        out.extend_from_slice(&(2 * channels).to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn a_stereo_44k_file_becomes_pcma_frames_holding_the_tone() {
        let mut prompts = Prompts::default();
        prompts.add("tone", wav(44100, 2, 1.0)).expect("decodes");
        let pcma = codec::by_name("PCMA", 8000).expect("codec");
        let encoded = prompts
            .encoded("tone", pcma, &FormatParams::default())
            .expect("encoded");
        assert_eq!(encoded.frames.len(), 50, "one second in 20 ms frames");
        let again = prompts
            .encoded("tone", pcma, &FormatParams::default())
            .expect("cached");
        assert!(Arc::ptr_eq(&encoded, &again), "encoded once per codec");
        let mut decoder = pcma.decoder();
        let mut pcm = Vec::new();
        for f in &encoded.frames {
            decoder.decode(f, &mut pcm);
        }
        let f = frequency(&pcm[800..7200], 8000);
        assert!((f - 1000.0).abs() < 20.0, "frequency {f}");
    }

    #[test]
    fn garbage_is_refused_with_the_prompt_name() {
        let err = decode("broken", b"not audio at all".to_vec()).unwrap_err();
        assert!(err.to_string().starts_with("prompt broken: "), "{err}");
    }

    #[test]
    fn a_sequence_plays_its_prompts_back_to_back() {
        let mut p = Prompts::default();
        p.add("a", wav(8000, 1, 0.2)).unwrap();
        p.add("b", wav(8000, 1, 0.4)).unwrap();
        let pcmu = codec::by_name("PCMU", 8000).unwrap();
        let s = p
            .sequence(&["a", "b", "a"], pcmu, &FormatParams::default())
            .unwrap();
        assert_eq!(s.frames.len(), 10 + 20 + 10);
        assert_eq!(
            s.frames[30..],
            p.encoded("a", pcmu, &FormatParams::default())
                .unwrap()
                .frames[..]
        );
        assert!(
            p.sequence(&["a", "zz"], pcmu, &FormatParams::default())
                .is_none()
        );
    }

    #[cfg(feature = "amr")]
    #[test]
    fn an_amr_prompt_is_encoded_in_the_parties_layout_and_mode() {
        use crate::codec::amr_payload::Layout;
        let mut prompts = Prompts::default();
        prompts.add("tone", wav(16000, 1, 1.0)).expect("decodes");
        let amr = codec::by_name("AMR", 8000).expect("codec");
        let volte = FormatParams::parse("octet-align=1; mode-set=0,2,4; max-red=0");
        let encoded = prompts.encoded("tone", amr, &volte).expect("encoded");
        let plain = prompts.encoded("tone", amr, &FormatParams::default());
        assert!(
            !Arc::ptr_eq(&encoded, &plain.expect("encoded")),
            "one cache entry per payload format"
        );
        let layout = Layout {
            wideband: false,
            octet_aligned: true,
        };
        let mut decoder = amr.decoder_at(8000, &volte);
        let mut pcm = Vec::new();
        for payload in &encoded.frames {
            let (_, frames) = layout.parse(payload).expect("octet-aligned payload");
            assert!(
                frames
                    .iter()
                    .all(|f| f.frame_type <= 4 || f.frame_type >= 8),
                "no speech mode above the mode-set's highest"
            );
            decoder.decode(payload, &mut pcm);
        }
        let f = frequency(&pcm[800..7200], 8000);
        assert!((f - 1000.0).abs() < 30.0, "frequency {f}");
    }
}

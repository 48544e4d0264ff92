//! A recording's two parties lined up in time: each payload decoded (and resampled to
//! the file's rate) and placed by its arrival, then written out as interleaved 16-bit
//! PCM once the jitter margin has passed. No I/O: the disk thread writes the bytes.

use std::time::{Duration, Instant};

use super::{Layout, RecordSpec};
use crate::codec::{Decoder, Resampler};
use crate::transcode::LegCodec;

/// A packet arriving this much after where its party's audio ends leaves a silent gap.
const GAP: Duration = Duration::from_millis(60);

/// One party's decoding to the file's rate, in the 20 ms frames the resampler takes.
struct Party {
    decoder: Box<dyn Decoder>,
    resampler: Option<Resampler>,
    decoded: Vec<i16>,
    /// Decoded samples short of a whole frame, waiting for the next packet.
    carry: Vec<i16>,
    frame: usize,
    out: Vec<i16>,
}

impl Party {
    fn new(leg: &LegCodec, rate: u32) -> Party {
        let own = leg.codec.sample_rate;
        Party {
            decoder: leg.codec.decoder_at(own, &leg.params),
            resampler: (own != rate)
                .then(|| Resampler::new(own, rate).ok())
                .flatten(),
            decoded: Vec::with_capacity(2048),
            carry: Vec::with_capacity(2048),
            frame: (own / 50) as usize,
            out: Vec::with_capacity(4096),
        }
    }

    /// The payload as PCM at the file's rate (left in `self.out`).
    fn decode(&mut self, payload: &[u8]) {
        self.decoded.clear();
        self.out.clear();
        self.decoder.decode(payload, &mut self.decoded);
        match self.resampler.as_mut() {
            None => self.out.extend_from_slice(&self.decoded),
            Some(resampler) => {
                self.carry.extend_from_slice(&self.decoded);
                let whole = self.carry.len() / self.frame * self.frame;
                for frame in self.carry[..whole].chunks_exact(self.frame) {
                    resampler.process(frame, &mut self.out);
                }
                self.carry.drain(..whole);
            }
        }
    }
}

pub(super) struct Timeline {
    pub rate: u32,
    layout: Layout,
    start: Instant,
    parties: [Option<Party>; 2],
    /// Each party's samples from `written` on, not yet out, after the first `consumed`
    /// (already out: dropped now and then, not on every write, which would move the
    /// whole jitter margin each time).
    pending: [Vec<i16>; 2],
    consumed: usize,
    /// Frames out so far.
    written: u64,
    /// Where each party's next sample goes (None: nothing heard yet).
    next: [Option<u64>; 2],
}

impl Timeline {
    /// Frame 0 is `start`.
    pub fn new(spec: &RecordSpec, start: Instant) -> Timeline {
        let rate = spec.rate();
        Timeline {
            rate,
            layout: spec.layout,
            start,
            parties: spec.sides.map(|s| s.map(|leg| Party::new(&leg, rate))),
            pending: [Vec::new(), Vec::new()],
            consumed: 0,
            written: 0,
            next: [None; 2],
        }
    }

    pub fn channels(&self) -> u16 {
        match self.layout {
            Layout::Stereo => 2,
            Layout::Mono => 1,
        }
    }

    pub fn seconds(&self) -> f64 {
        self.written as f64 / f64::from(self.rate)
    }

    fn frame_at(&self, at: Instant) -> u64 {
        let micros = at.saturating_duration_since(self.start).as_micros() as u64;
        micros * u64::from(self.rate) / 1_000_000
    }

    /// A party's payload, arrived at `at`: decoded and put in its place. A packet that
    /// follows its party's last one (give or take the jitter) goes right after it; one
    /// after a gap goes where its arrival says.
    pub fn audio(&mut self, side: usize, payload: &[u8], at: Instant) {
        let arrival = self.frame_at(at);
        let Some(party) = self.parties[side].as_mut() else {
            return;
        };
        party.decode(payload);
        let gap = GAP.as_micros() as u64 * u64::from(self.rate) / 1_000_000;
        let at_frame = match self.next[side] {
            Some(next) if arrival <= next + gap => next,
            _ => arrival,
        };
        let samples = &party.out;
        // Audio for a stretch already written (very late): what is still to come is kept.
        let skip = self.written.saturating_sub(at_frame) as usize;
        let from = at_frame.max(self.written);
        if skip < samples.len() {
            let offset = self.consumed + (from - self.written) as usize;
            let pending = &mut self.pending[side];
            let end = offset + samples.len() - skip;
            if pending.len() < end {
                pending.resize(end, 0);
            }
            pending[offset..end].copy_from_slice(&samples[skip..]);
        }
        self.next[side] = Some(at_frame + samples.len() as u64);
    }

    /// Every frame up to the moment `settled` (later audio may still arrive), appended
    /// to `out` as the file holds it.
    pub fn take_until(&mut self, settled: Instant, out: &mut Vec<u8>) {
        let upto = self.frame_at(settled);
        if upto > self.written {
            self.take_frames((upto - self.written) as usize, out);
        }
    }

    /// Everything heard, appended to `out`.
    pub fn take_rest(&mut self, out: &mut Vec<u8>) {
        let heard = self.pending.iter().map(Vec::len).max().unwrap_or(0);
        self.take_frames(heard.saturating_sub(self.consumed), out);
    }

    fn take_frames(&mut self, frames: usize, out: &mut Vec<u8>) {
        let (from, to) = (self.consumed, self.consumed + frames);
        for pending in &mut self.pending {
            if pending.len() < to {
                pending.resize(to, 0);
            }
        }
        let [left, right] = &self.pending;
        let (left, right) = (&left[from..to], &right[from..to]);
        let start = out.len();
        match self.layout {
            Layout::Stereo => {
                out.resize(start + frames * 4, 0);
                for ((o, l), r) in out[start..].chunks_exact_mut(4).zip(left).zip(right) {
                    o[..2].copy_from_slice(&l.to_le_bytes());
                    o[2..].copy_from_slice(&r.to_le_bytes());
                }
            }
            Layout::Mono => {
                out.resize(start + frames * 2, 0);
                for ((o, l), r) in out[start..].chunks_exact_mut(2).zip(left).zip(right) {
                    let mixed = (i32::from(*l) + i32::from(*r)).clamp(-32768, 32767) as i16;
                    o.copy_from_slice(&mixed.to_le_bytes());
                }
            }
        }
        self.consumed = to;
        // What is out goes once it outweighs what waits (the margin): moved rarely.
        if self.consumed >= self.rate as usize && self.consumed * 2 >= self.pending[0].len() {
            for pending in &mut self.pending {
                pending.drain(..self.consumed.min(pending.len()));
            }
            self.consumed = 0;
        }
        self.written += frames as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// A stereo WAV recording of two PCMU parties (the timeline reads no path).
    fn stereo_pcmu() -> RecordSpec {
        let pcmu = crate::transcode::tests::leg("PCMU", 0, None);
        RecordSpec {
            path: "call.wav".into(),
            layout: Layout::Stereo,
            format: Default::default(),
            sides: [Some(pcmu), Some(pcmu)],
            meta: "{}".into(),
        }
    }

    fn frames(bytes: &[u8]) -> Vec<(i16, i16)> {
        bytes
            .chunks_exact(4)
            .map(|f| {
                (
                    i16::from_le_bytes([f[0], f[1]]),
                    i16::from_le_bytes([f[2], f[3]]),
                )
            })
            .collect()
    }

    #[test]
    fn two_parties_land_left_and_right_at_their_arrival_times() {
        let spec = stereo_pcmu();
        let start = Instant::now();
        let mut t = Timeline::new(&spec, start);
        // The caller: a loud frame at 0 ms; the callee: one at 100 ms (800 frames in).
        let loud = vec![codec::linear_to_ulaw(8000); 160];
        t.audio(0, &loud, start);
        t.audio(1, &loud, start + Duration::from_millis(100));
        // Jitter: the caller's next frame 30 ms late still follows its first.
        t.audio(0, &loud, start + Duration::from_millis(50));
        let mut out = Vec::new();
        t.take_until(start + Duration::from_millis(50), &mut out);
        assert_eq!(out.len(), 400 * 4, "50 ms settled");
        t.take_rest(&mut out);
        assert!((t.seconds() - 0.12).abs() < 0.001, "{}", t.seconds());
        let frames = frames(&out);
        assert_eq!(frames.len(), 960);
        assert!(frames[..320].iter().all(|(l, r)| *l > 7000 && *r == 0));
        assert!(frames[320..800].iter().all(|(l, r)| *l == 0 && *r == 0));
        assert!(frames[800..].iter().all(|(l, r)| *l == 0 && *r > 7000));
    }

    #[test]
    fn ten_seconds_of_audio_keep_their_place_while_taken_out_in_pieces() {
        let spec = stereo_pcmu();
        let start = Instant::now();
        let mut t = Timeline::new(&spec, start);
        assert!(t.rate == 8000);
        let (mut out, mut total, mut last) = (Vec::new(), 0, i16::MIN);
        // 10 s of both parties, each packet a value of its own, taken out every 20 ms with a
        // 300 ms margin: past the point where written audio is dropped from memory.
        for n in 0..500u32 {
            let at = start + Duration::from_millis(20 * u64::from(n));
            let level = codec::linear_to_ulaw(1000 + 10 * n as i16);
            t.audio(0, &[level; 160], at);
            t.audio(1, &[level; 160], at);
            if let Some(settled) = at.checked_sub(Duration::from_millis(300)) {
                t.take_until(settled, &mut out);
            }
            total += out.len();
            let f = frames(&out);
            for (k, (l, r)) in f.iter().enumerate() {
                assert_eq!(
                    l, r,
                    "both sides at once, frame {k} of a piece at packet {n}"
                );
                assert!(*l >= last, "in order, frame {k} of a piece at packet {n}");
                last = *l;
            }
            out.clear();
        }
        t.take_rest(&mut out);
        total += out.len();
        assert_eq!(total, 500 * 160 * 4, "every frame once");
        assert!(
            t.pending[0].len() < 2 * 8000 + 4000,
            "what was written left memory"
        );
    }
}

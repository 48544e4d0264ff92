//! Sample-rate conversion of 20 ms frames for the live path: the polyphase filter of ours
//! for whole ratios (every pair among 8, 16 and 48 kHz), `rubato`'s FFT resampler otherwise;
//! and `whole`, which converts a prompt at load time. The fixed delay (`delay_samples`) is
//! the converter's share of the path's latency.

use rubato::{FftFixedInOut, Resampler as _};

use super::polyphase::Polyphase;

pub struct Resampler {
    inner: Inner,
}

enum Inner {
    Polyphase(Polyphase),
    Fft(Box<Fft>),
}

struct Fft {
    inner: FftFixedInOut<f32>,
    input: Vec<f32>,
    output: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot resample {from} Hz to {to} Hz in 20 ms frames: {cause}")]
pub struct ResampleError {
    from: u32,
    to: u32,
    cause: String,
}

impl Resampler {
    /// A converter for 20 ms frames from `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Result<Resampler, ResampleError> {
        let frame = (from / 50) as usize;
        let inner = match Polyphase::new(from, to, frame) {
            Some(polyphase) => Inner::Polyphase(polyphase),
            None => Inner::Fft(Box::new(Fft::new(from, to, frame)?)),
        };
        Ok(Resampler { inner })
    }

    /// The FFT converter whatever the ratio (what `new` falls back to for ratios that are
    /// not whole; benchmarks compare the two).
    pub fn fft(from: u32, to: u32) -> Result<Resampler, ResampleError> {
        let inner = Inner::Fft(Box::new(Fft::new(from, to, (from / 50) as usize)?));
        Ok(Resampler { inner })
    }

    /// Samples of delay the converter adds, at the output rate.
    pub fn delay_samples(&self) -> usize {
        match &self.inner {
            Inner::Polyphase(p) => p.delay_samples(),
            Inner::Fft(f) => f.inner.output_delay(),
        }
    }

    /// Convert one 20 ms frame (exactly `from / 50` samples), appending to `out`.
    pub fn process(&mut self, frame: &[i16], out: &mut Vec<i16>) {
        match &mut self.inner {
            Inner::Polyphase(p) => p.process(frame, out),
            Inner::Fft(f) => f.process(frame, out),
        }
    }
}

impl Fft {
    fn new(from: u32, to: u32, frame: usize) -> Result<Fft, ResampleError> {
        let inner =
            FftFixedInOut::<f32>::new(from as usize, to as usize, frame, 1).map_err(|e| {
                ResampleError {
                    from,
                    to,
                    cause: e.to_string(),
                }
            })?;
        if inner.input_frames_next() != frame {
            return Err(ResampleError {
                from,
                to,
                cause: format!("resampler wants {} input frames", inner.input_frames_next()),
            });
        }
        let output = vec![0.0; inner.output_frames_max()];
        Ok(Fft {
            inner,
            input: vec![0.0; frame],
            output,
        })
    }

    fn process(&mut self, frame: &[i16], out: &mut Vec<i16>) {
        for (dst, src) in self.input.iter_mut().zip(frame) {
            *dst = f32::from(*src) / 32768.0;
        }
        let Ok((_, written)) =
            self.inner
                .process_into_buffer(&[&self.input], &mut [&mut self.output], None)
        else {
            return;
        };
        out.extend(
            self.output[..written]
                .iter()
                .map(|s| (s * 32768.0).clamp(-32768.0, 32767.0) as i16),
        );
    }
}

/// Resample a whole buffer (prompts, at load time): any rate pair, delay removed, length
/// scaled exactly.
pub fn whole(samples: &[i16], from: u32, to: u32) -> Result<Vec<i16>, String> {
    use rubato::FftFixedIn;
    let chunk = 1024;
    let mut r = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 2, 1)
        .map_err(|e| format!("cannot resample {from} Hz to {to} Hz: {e}"))?;
    let delay = r.output_delay();
    let wanted = samples.len() * to as usize / from as usize;
    let mut input: Vec<f32> = samples.iter().map(|s| f32::from(*s) / 32768.0).collect();
    // Enough trailing silence to flush the delay out.
    input.resize(
        input.len() + chunk * 2 + delay * from as usize / to as usize,
        0.0,
    );
    let mut out = Vec::with_capacity(wanted + delay);
    for block in input.chunks(chunk) {
        let mut frame = block.to_vec();
        frame.resize(chunk, 0.0);
        let produced = r
            .process(&[frame], None)
            .map_err(|e| format!("resampling failed: {e}"))?;
        out.extend(
            produced[0]
                .iter()
                .map(|s| (s * 32768.0).clamp(-32768.0, 32767.0) as i16),
        );
        if out.len() >= wanted + delay {
            break;
        }
    }
    Ok(out.into_iter().skip(delay).take(wanted).collect())
}

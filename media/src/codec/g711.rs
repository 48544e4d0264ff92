//! G.711 (ITU-T G.711): mu-law (PCMU, payload type 0) and A-law (PCMA, 8), 8 kHz, one byte
//! per sample. The classic segment arithmetic, no tables: a few operations per sample.

use super::{Concealer, Decoder, Encoder};

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut pcm = i32::from(sample);
    let sign = if pcm < 0 {
        pcm = -pcm;
        0x80
    } else {
        0
    };
    pcm = pcm.min(CLIP) + BIAS;
    let exponent = (7 - ((pcm as u32) << 17).leading_zeros().min(7)) as i32;
    let mantissa = (pcm >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

pub fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0f);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

pub fn linear_to_alaw(sample: i16) -> u8 {
    let pcm = i32::from(sample) >> 3; // A-law works on 13-bit magnitudes
    let (sign, magnitude) = if pcm >= 0 {
        (0xd5, pcm)
    } else {
        (0x55, -pcm - 1)
    };
    let magnitude = magnitude.min(0x0fff);
    let code = if magnitude < 32 {
        magnitude >> 1
    } else {
        let exponent = 31 - (magnitude as u32).leading_zeros() as i32 - 4; // 1..=7
        (exponent << 4) | ((magnitude >> exponent) & 0x0f)
    };
    (code as u8) ^ sign
}

pub fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let exponent = i32::from((a >> 4) & 0x07);
    let mantissa = i32::from(a & 0x0f);
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

pub struct Pcmu;
pub struct Pcma;

#[derive(Default)]
pub struct G711Decoder {
    alaw: bool,
    plc: Concealer,
}

impl G711Decoder {
    pub fn ulaw() -> G711Decoder {
        G711Decoder::default()
    }

    pub fn alaw() -> G711Decoder {
        G711Decoder {
            alaw: true,
            ..G711Decoder::default()
        }
    }
}

impl Encoder for Pcmu {
    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        out.extend(pcm.iter().map(|s| linear_to_ulaw(*s)));
    }
}

impl Encoder for Pcma {
    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        out.extend(pcm.iter().map(|s| linear_to_alaw(*s)));
    }
}

impl Decoder for G711Decoder {
    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        let start = out.len();
        if self.alaw {
            out.extend(payload.iter().map(|b| alaw_to_linear(*b)));
        } else {
            out.extend(payload.iter().map(|b| ulaw_to_linear(*b)));
        }
        self.plc.good(&out[start..]);
    }

    fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        self.plc.conceal(samples, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_code_points() {
        // Silence and the extremes, per the G.711 tables.
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xaa), 32256);
    }

    #[test]
    fn every_code_decodes_and_reencodes_to_itself() {
        for code in 0..=255u8 {
            let u = ulaw_to_linear(code);
            // 0x7f and 0xff are both zero in mu-law; the encoder picks 0xff.
            if code != 0x7f {
                assert_eq!(linear_to_ulaw(u), code, "mu-law {code:#x} -> {u}");
            }
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law {code:#x}"
            );
        }
    }
}

//! G.722 (ITU-T G.722, 64 kbit/s) through `ezk-g722`'s port of spandsp's codec: 16 kHz audio,
//! 8 kHz RTP clock (RFC 3551 keeps the historic value), one byte per two samples.

use ezk_g722::libg722::{self, Bitrate};

use super::{Concealer, Decoder, Encoder};

pub struct G722Encoder(libg722::encoder::Encoder);
pub struct G722Decoder {
    inner: libg722::decoder::Decoder,
    plc: Concealer,
}

impl G722Encoder {
    pub fn new() -> G722Encoder {
        G722Encoder(libg722::encoder::Encoder::new(
            Bitrate::Mode1_64000,
            false,
            false,
        ))
    }
}

impl G722Decoder {
    pub fn new() -> G722Decoder {
        G722Decoder {
            inner: libg722::decoder::Decoder::new(Bitrate::Mode1_64000, false, false),
            plc: Concealer::default(),
        }
    }
}

impl Encoder for G722Encoder {
    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        out.extend(self.0.encode(pcm));
    }
}

impl Decoder for G722Decoder {
    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        let pcm = self.inner.decode(payload);
        self.plc.good(&pcm);
        out.extend(pcm);
    }

    fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        // G.722 has no built-in concealment.
        self.plc.conceal(samples, out);
    }
}

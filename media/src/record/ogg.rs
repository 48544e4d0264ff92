//! Ogg Opus recordings (RFC 7845 in an RFC 3533 Ogg stream): the PCM the timeline gives,
//! encoded by libopus in 20 ms frames and put into Ogg pages, one page a second. A file
//! cut short by a crash ends at its last whole page, which players read as it stands.

use symphonia::core::checksum::Crc32;
use symphonia::core::io::Monitor;

/// Opus counts every position at 48 kHz, whatever rate it was given (RFC 7845 section 4).
const GRANULE_RATE: u64 = 48_000;
/// At most this many segments (and so packets) in one page (RFC 3533).
const MAX_SEGMENTS: usize = 255;

const BOS: u8 = 0x02;
const EOS: u8 = 0x04;

/// One logical Ogg stream's pages.
struct Stream {
    serial: u32,
    sequence: u32,
}

impl Stream {
    /// A page holding `packets` whole, appended to `out`.
    fn page(&mut self, flags: u8, granule: u64, packets: &[&[u8]], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(b"OggS");
        out.push(0); // version
        out.push(flags);
        out.extend_from_slice(&granule.to_le_bytes());
        out.extend_from_slice(&self.serial.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&[0; 4]); // the checksum, once the page is whole
        let lacing: Vec<u8> = packets
            .iter()
            .flat_map(|p| {
                // A packet is 255-byte segments and one shorter (maybe empty) that ends it.
                std::iter::repeat_n(255u8, p.len() / 255).chain([(p.len() % 255) as u8])
            })
            .collect();
        out.push(lacing.len() as u8);
        out.extend_from_slice(&lacing);
        for p in packets {
            out.extend_from_slice(p);
        }
        let mut crc = Crc32::new(0);
        crc.process_buf_bytes(&out[start..]);
        out[start + 22..start + 26].copy_from_slice(&crc.crc().to_le_bytes());
        self.sequence += 1;
    }
}

/// The segments a packet of `len` bytes takes in a page.
fn segments(len: usize) -> usize {
    len / 255 + 1
}

/// A recording's Opus encoder and Ogg stream.
pub(super) struct OggOpus {
    encoder: crate::codec::opus::OpusFileEncoder,
    stream: Stream,
    channels: usize,
    /// Samples (all channels) in one 20 ms frame.
    frame: usize,
    rate: u32,
    pre_skip: u64,
    /// PCM short of a whole frame, waiting for more.
    carry: Vec<i16>,
    /// Encoded packets not yet in a page, back to back, and where each ends.
    packets: Vec<u8>,
    ends: Vec<usize>,
    /// Frames encoded so far, and PCM frames (per channel) given, for the granule.
    encoded: u64,
    given: u64,
}

impl OggOpus {
    /// An encoder for `channels` of PCM at `rate` (one of [`OPUS_RATES`]), and the
    /// stream's first two pages (its identification and comment headers) in `out`.
    pub fn start(rate: u32, channels: u16, out: &mut Vec<u8>) -> Result<OggOpus, String> {
        let encoder = crate::codec::opus::OpusFileEncoder::new(rate, channels)?;
        let pre_skip = u64::from(encoder.lookahead()) * GRANULE_RATE / u64::from(rate);
        // Any serial will do for a file of one stream; the clock makes them differ.
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() ^ d.as_secs() as u32);
        let mut stream = Stream {
            serial,
            sequence: 0,
        };
        let mut head = b"OpusHead".to_vec();
        head.push(1); // version
        head.push(channels as u8);
        head.extend_from_slice(&(pre_skip as u16).to_le_bytes());
        head.extend_from_slice(&rate.to_le_bytes()); // the input's rate, for information
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family 0: mono or stereo (left, right)
        stream.page(BOS, 0, &[&head], out);
        let vendor = concat!("warden ", env!("CARGO_PKG_VERSION"));
        let mut tags = b"OpusTags".to_vec();
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
        stream.page(0, 0, &[&tags], out);
        Ok(OggOpus {
            encoder,
            stream,
            channels: usize::from(channels),
            frame: rate as usize / 50 * usize::from(channels),
            rate,
            pre_skip,
            carry: Vec::new(),
            packets: Vec::new(),
            ends: Vec::new(),
            encoded: 0,
            given: 0,
        })
    }

    /// Interleaved 16-bit little-endian PCM, as the timeline writes it: encoded in whole
    /// frames; full pages go to `out`.
    pub fn push(&mut self, pcm: &[u8], out: &mut Vec<u8>) {
        self.given += (pcm.len() / 2 / self.channels) as u64;
        self.carry.extend(
            pcm.chunks_exact(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]])),
        );
        let whole = self.carry.len() / self.frame * self.frame;
        let mut at = 0;
        while at < whole {
            let frame = &self.carry[at..at + self.frame];
            if !self.encoder.encode(frame, &mut self.packets) {
                // An encoder failure loses this frame only; the stream keeps its timing
                // by an empty packet (RFC 7845 allows none, so a lone TOC byte: silence).
                self.packets.push(0xf8);
            }
            self.ends.push(self.packets.len());
            self.encoded += 1;
            at += self.frame;
            if self.segments() + 2 > MAX_SEGMENTS {
                self.page_out(0, out);
            }
        }
        self.carry.drain(..whole);
    }

    /// What is encoded so far, as one page in `out` (nothing when there is none).
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if !self.ends.is_empty() {
            self.page_out(0, out);
        }
    }

    /// The last frame (padded with silence) and the last page, marked as the stream's end.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.carry.is_empty() {
            let pad = self.frame - self.carry.len();
            let given = self.given;
            let silence = vec![0u8; pad * 2];
            self.push(&silence, out);
            self.given = given; // the padding is not audio
        }
        self.page_out(EOS, out);
    }

    fn segments(&self) -> usize {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let n = segments(end - start);
                start = end;
                n
            })
            .sum()
    }

    fn page_out(&mut self, flags: u8, out: &mut Vec<u8>) {
        let mut granule = self.encoded * GRANULE_RATE / 50;
        if flags & EOS != 0 {
            // The end's position says where the audio really ends: what was given, not
            // the padding of its last frame.
            granule = granule.min(self.pre_skip + self.given * GRANULE_RATE / u64::from(self.rate));
        }
        let mut start = 0;
        let packets: Vec<&[u8]> = self
            .ends
            .iter()
            .map(|&end| {
                let p = &self.packets[start..end];
                start = end;
                p
            })
            .collect();
        self.stream.page(flags, granule, &packets, out);
        self.packets.clear();
        self.ends.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stereo_tone_pair_reads_back_through_symphonia_s_ogg_reader_and_libopus() {
        // 1 s of 440 Hz left and 1 kHz right at 8 kHz, given in uneven pieces.
        let mut pcm = Vec::new();
        for i in 0..8000 {
            let t = f64::from(i) / 8000.0;
            let l = (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16;
            let r = (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16;
            pcm.extend_from_slice(&l.to_le_bytes());
            pcm.extend_from_slice(&r.to_le_bytes());
        }
        let mut file = Vec::new();
        let mut ogg = OggOpus::start(8000, 2, &mut file).expect("an encoder");
        for piece in pcm.chunks(1236) {
            ogg.push(piece, &mut file);
        }
        ogg.flush(&mut file);
        ogg.push(&[], &mut file);
        ogg.finish(&mut file);

        let source = symphonia::core::io::MediaSourceStream::new(
            Box::new(std::io::Cursor::new(file)),
            Default::default(),
        );
        let mut hint = symphonia::core::probe::Hint::new();
        hint.with_extension("opus");
        let probed = symphonia::default::get_probe()
            .format(&hint, source, &Default::default(), &Default::default())
            .expect("an Ogg stream symphonia reads");
        let mut format = probed.format;
        let track = format.default_track().expect("a track").clone();
        assert_eq!(
            track.codec_params.codec,
            symphonia::core::codecs::CODEC_TYPE_OPUS
        );
        assert_eq!(track.codec_params.channels.map(|c| c.count()), Some(2));
        // The last page's position, less the encoder's delay: exactly the second given.
        assert_eq!(track.codec_params.n_frames, Some(48_000));
        assert_eq!(track.codec_params.delay, Some(312));
        let mut decoder = audiopus::coder::Decoder::new(
            audiopus::SampleRate::Hz48000,
            audiopus::Channels::Stereo,
        )
        .expect("a decoder");
        let (mut left, mut right) = (Vec::new(), Vec::new());
        let mut scratch = vec![0i16; 5760 * 2];
        let mut packets = 0;
        while let Ok(packet) = format.next_packet() {
            packets += 1;
            let signals = audiopus::MutSignals::try_from(&mut scratch[..]).expect("room");
            let opus = audiopus::packet::Packet::try_from(&packet.data[..]).expect("a packet");
            let n = decoder.decode(Some(opus), signals, false).expect("decodes");
            for frame in scratch[..n * 2].chunks_exact(2) {
                left.push(frame[0]);
                right.push(frame[1]);
            }
        }
        assert_eq!(packets, 50, "one packet per 20 ms");
        let skip = 9600; // past the encoder's start-up
        let (l440, l1k) = (
            crate::codec::tone_power(&left[skip..], 48_000, 440.0),
            crate::codec::tone_power(&left[skip..], 48_000, 1000.0),
        );
        let (r440, r1k) = (
            crate::codec::tone_power(&right[skip..], 48_000, 440.0),
            crate::codec::tone_power(&right[skip..], 48_000, 1000.0),
        );
        assert!(l440 > 20.0 * l1k, "left is 440 Hz: {l440} against {l1k}");
        assert!(r1k > 20.0 * r440, "right is 1 kHz: {r1k} against {r440}");
    }
}

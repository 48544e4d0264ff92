//! The AMR and AMR-WB RTP payload formats (RFC 4867 section 4), both modes: octet-aligned
//! and bandwidth-efficient. Frames are exchanged with the codec libraries in the storage
//! format (section 5.3: one header octet `FT << 3 | Q << 2`, then the speech bits
//! MSB first, padded to an octet), so only the RTP framing lives here. Pure Rust, no FFI.

/// Speech bits per frame type (RFC 4867 section 3.6 tables; 3GPP TS 26.101 / 26.201).
/// Frame types past the table (NO_DATA = 15, reserved) carry no bits.
const NB_BITS: [u16; 9] = [95, 103, 118, 134, 148, 159, 204, 244, 39];
const WB_BITS: [u16; 10] = [132, 177, 253, 285, 317, 365, 397, 461, 477, 40];
/// "No data": the frame type of a ToC entry without speech (and of CMR "no request").
pub const NO_DATA: u8 = 15;

/// Which codec a payload belongs to, and how its bits are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub wideband: bool,
    pub octet_aligned: bool,
}

/// One frame in storage format: its frame type, quality bit, and speech bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub frame_type: u8,
    pub good: bool,
    /// ceil(bits / 8) bytes, the last one zero-padded.
    pub speech: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload ends inside the table of contents")]
    TruncatedToc,
    #[error("payload ends inside a frame of type {0}")]
    TruncatedFrame(u8),
    #[error("frame type {0} is reserved")]
    ReservedFrameType(u8),
}

impl Layout {
    /// Speech bits of a frame type; None for reserved types.
    pub fn bits(&self, frame_type: u8) -> Option<u16> {
        let table: &[u16] = if self.wideband { &WB_BITS } else { &NB_BITS };
        match frame_type {
            t if (t as usize) < table.len() => Some(table[t as usize]),
            // Wideband 14 (speech lost) and 15 (no data); narrowband 15.
            14 if self.wideband => Some(0),
            NO_DATA => Some(0),
            _ => None,
        }
    }

    /// Read an RTP payload: the codec mode request and the frames in order.
    pub fn parse(&self, payload: &[u8]) -> Result<(u8, Vec<Frame>), PayloadError> {
        let mut bits = BitReader::new(payload);
        let cmr = bits.take(4).ok_or(PayloadError::TruncatedToc)? as u8;
        if self.octet_aligned {
            bits.take(4).ok_or(PayloadError::TruncatedToc)?;
        }
        let mut toc = Vec::new();
        loop {
            let follows = bits.take(1).ok_or(PayloadError::TruncatedToc)? == 1;
            let frame_type = bits.take(4).ok_or(PayloadError::TruncatedToc)? as u8;
            let good = bits.take(1).ok_or(PayloadError::TruncatedToc)? == 1;
            if self.octet_aligned {
                bits.take(2).ok_or(PayloadError::TruncatedToc)?;
            }
            toc.push((frame_type, good));
            if !follows {
                break;
            }
        }
        let mut frames = Vec::with_capacity(toc.len());
        for (frame_type, good) in toc {
            let n = self
                .bits(frame_type)
                .ok_or(PayloadError::ReservedFrameType(frame_type))?;
            let mut speech = vec![0u8; usize::from(n).div_ceil(8)];
            for i in 0..usize::from(n) {
                let bit = bits
                    .take(1)
                    .ok_or(PayloadError::TruncatedFrame(frame_type))?;
                speech[i / 8] |= (bit as u8) << (7 - i % 8);
            }
            if self.octet_aligned {
                bits.align();
            }
            frames.push(Frame {
                frame_type,
                good,
                speech,
            });
        }
        Ok((cmr, frames))
    }

    /// Write one frame as an RTP payload with codec mode request `cmr` (15: none).
    pub fn build(&self, cmr: u8, frame: &Frame, out: &mut Vec<u8>) {
        self.build_frames(cmr, std::slice::from_ref(frame), out);
    }

    /// Write consecutive frames (20 ms each) as one RTP payload: the table of contents,
    /// then each frame's bits (section 4.3 / 4.4).
    pub fn build_frames(&self, cmr: u8, frames: &[Frame], out: &mut Vec<u8>) {
        let mut bits = BitWriter::new(out);
        bits.put(u32::from(cmr & 0x0f), 4);
        if self.octet_aligned {
            bits.put(0, 4);
        }
        for (i, frame) in frames.iter().enumerate() {
            bits.put(u32::from(i + 1 < frames.len()), 1); // F: another entry follows
            bits.put(u32::from(frame.frame_type & 0x0f), 4);
            bits.put(u32::from(frame.good), 1);
            if self.octet_aligned {
                bits.put(0, 2);
            }
        }
        for frame in frames {
            let n = usize::from(self.bits(frame.frame_type).unwrap_or(0));
            for i in 0..n {
                let byte = frame.speech.get(i / 8).copied().unwrap_or(0);
                bits.put(u32::from((byte >> (7 - i % 8)) & 1), 1);
            }
            if self.octet_aligned {
                bits.align();
            }
        }
    }
}

/// How many frames an RTP payload holds, from its table of contents alone (None when the
/// table is cut short).
pub fn frame_count(layout: Layout, payload: &[u8]) -> Option<usize> {
    let mut bits = BitReader::new(payload);
    bits.take(if layout.octet_aligned { 8 } else { 4 })?;
    let mut count = 0;
    loop {
        let follows = bits.take(1)? == 1;
        bits.take(if layout.octet_aligned { 7 } else { 5 })?;
        count += 1;
        if !follows {
            return Some(count);
        }
    }
}

/// Redundant frames (RFC 4867 4.1, `max-red`): a sender may repeat its last frames in later
/// packets, ahead of the new one, so a receiver can recover a lost packet; the packet's
/// RTP timestamp is then its first frame's. This remembers which frame slots have come
/// and cuts each payload down to the frames not yet received, so that every frame is
/// decoded once, whatever the sender's `max-red`.
#[derive(Debug, Clone)]
pub struct Redundancy {
    layout: Layout,
    /// RTP clock ticks of one 20 ms frame.
    frame_ticks: u32,
    /// The timestamp just past the newest frame received, and a bit per frame slot before
    /// it (bit i: the slot that starts `(i + 1) * frame_ticks` earlier) that has come.
    newest_end: Option<u32>,
    received: u64,
}

/// What is left of a packet once the frames already received are taken out, with the
/// clock ticks what is left covers (None for a damaged table of contents).
#[derive(Debug, PartialEq, Eq)]
pub enum Fresh {
    /// Every frame is new: the packet as it came.
    Whole { ticks: Option<u32> },
    /// Only the frames from `timestamp` on are new: this payload holds them.
    From {
        timestamp: u32,
        payload: Vec<u8>,
        ticks: u32,
    },
    /// Nothing new.
    Nothing,
}

impl Redundancy {
    pub fn new(layout: Layout) -> Redundancy {
        Redundancy {
            layout,
            frame_ticks: if layout.wideband { 320 } else { 160 },
            newest_end: None,
            received: 0,
        }
    }

    fn has(&self, timestamp: u32) -> bool {
        let Some(end) = self.newest_end else {
            return false;
        };
        let behind = end.wrapping_sub(timestamp) as i32;
        if behind <= 0 {
            return false;
        }
        let slot = (behind as u32).div_ceil(self.frame_ticks) - 1;
        // Older than the window: the jitter buffer has played past it anyway.
        slot >= 64 || self.received & (1 << slot) != 0
    }

    fn mark(&mut self, timestamp: u32) {
        let end = timestamp.wrapping_add(self.frame_ticks);
        let Some(newest_end) = self.newest_end else {
            self.newest_end = Some(end);
            self.received = 1;
            return;
        };
        let ahead = end.wrapping_sub(newest_end) as i32;
        if ahead > 0 {
            let shift = (ahead as u32).div_ceil(self.frame_ticks);
            self.received = if shift >= 64 {
                0
            } else {
                self.received << shift
            };
            self.received |= 1;
            self.newest_end = Some(end);
        } else {
            let slot = ((-ahead) as u32).div_ceil(self.frame_ticks);
            if slot < 64 {
                self.received |= 1 << slot;
            }
        }
    }

    /// Take a packet's payload and timestamp: what of it is new.
    pub fn fresh(&mut self, timestamp: u32, payload: &[u8]) -> Fresh {
        let Some(count) = frame_count(self.layout, payload) else {
            // Damaged: the decoder conceals it in its place.
            return Fresh::Whole { ticks: None };
        };
        let frame_ticks = self.frame_ticks;
        let at = |k: usize| timestamp.wrapping_add(k as u32 * frame_ticks);
        let ticks = |frames: usize| frames as u32 * frame_ticks;
        // Redundant frames lead the packet: skip those already here.
        let skip = (0..count).take_while(|&k| self.has(at(k))).count();
        for k in skip..count {
            self.mark(at(k));
        }
        if skip == 0 {
            return Fresh::Whole {
                ticks: Some(ticks(count)),
            };
        }
        if skip == count {
            return Fresh::Nothing;
        }
        let Ok((cmr, frames)) = self.layout.parse(payload) else {
            return Fresh::Whole {
                ticks: Some(ticks(count)),
            };
        };
        let mut out = Vec::with_capacity(payload.len());
        self.layout.build_frames(cmr, &frames[skip..], &mut out);
        Fresh::From {
            timestamp: at(skip),
            payload: out,
            ticks: ticks(count - skip),
        }
    }
}

impl Frame {
    /// From the storage format the codec libraries write (header octet, then speech).
    pub fn from_storage(bytes: &[u8]) -> Option<Frame> {
        let (&header, speech) = bytes.split_first()?;
        Some(Frame {
            frame_type: (header >> 3) & 0x0f,
            good: header & 0x04 != 0,
            speech: speech.to_vec(),
        })
    }

    /// Into the storage format the codec libraries read.
    pub fn to_storage(&self, out: &mut Vec<u8>) {
        out.push((self.frame_type << 3) | if self.good { 0x04 } else { 0 });
        out.extend_from_slice(&self.speech);
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, position: 0 }
    }

    fn take(&mut self, count: usize) -> Option<u32> {
        let mut value = 0u32;
        for _ in 0..count {
            let byte = *self.bytes.get(self.position / 8)?;
            value = (value << 1) | u32::from((byte >> (7 - self.position % 8)) & 1);
            self.position += 1;
        }
        Some(value)
    }

    fn align(&mut self) {
        self.position = self.position.div_ceil(8) * 8;
    }
}

struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    used: usize,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        BitWriter { out, used: 8 }
    }

    fn put(&mut self, value: u32, count: usize) {
        for i in (0..count).rev() {
            if self.used == 8 {
                self.out.push(0);
                self.used = 0;
            }
            let bit = ((value >> i) & 1) as u8;
            if let Some(last) = self.out.last_mut() {
                *last |= bit << (7 - self.used);
            }
            self.used += 1;
        }
    }

    /// Skip to the next octet (octet-aligned frames); the skipped bits stay zero, as the
    /// final padding does (section 4.3.2).
    fn align(&mut self) {
        self.used = 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NB_OCTET: Layout = Layout {
        wideband: false,
        octet_aligned: true,
    };
    const NB_EFFICIENT: Layout = Layout {
        wideband: false,
        octet_aligned: false,
    };
    const WB_EFFICIENT: Layout = Layout {
        wideband: true,
        octet_aligned: false,
    };

    /// A frame whose speech bits count up, so misplaced bits show.
    fn frame(layout: Layout, frame_type: u8) -> Frame {
        let n = usize::from(layout.bits(frame_type).expect("speech type"));
        let mut speech: Vec<u8> = (0..n.div_ceil(8))
            .map(|i| (i as u8).wrapping_mul(37) ^ 0x5a)
            .collect();
        if n % 8 != 0
            && let Some(last) = speech.last_mut()
        {
            *last &= 0xff << (8 - n % 8);
        }
        Frame {
            frame_type,
            good: true,
            speech,
        }
    }

    #[test]
    fn bandwidth_efficient_single_frame_as_in_rfc4867_4_3_5_1() {
        // Section 4.3.5.1: CMR = 1, F = 0, FT = 5 (7.95 kbps), Q = 1, then d(0)..d(158)
        // and padding: 4 + 6 + 159 = 169 bits in 22 octets.
        let f = frame(NB_EFFICIENT, 5);
        let mut payload = Vec::new();
        NB_EFFICIENT.build(1, &f, &mut payload);
        assert_eq!(payload.len(), 22);
        // 0001 0 010 | 1 1 d0..d5
        assert_eq!(payload[0], 0b0001_0010);
        assert_eq!(payload[1] >> 6, 0b11);
        assert_eq!(
            payload[1] & 0x3f,
            f.speech[0] >> 2,
            "d(0)..d(5) follow the ToC"
        );
        assert_eq!(payload[21] & 0x7f, 0, "seven padding bits are zero");
        assert_eq!(NB_EFFICIENT.parse(&payload), Ok((1, vec![f])));
    }

    #[test]
    fn octet_aligned_single_frame_as_in_rfc4867_4_4_5_1() {
        // CMR and ToC each take an octet; the frame starts on the third.
        let f = frame(NB_OCTET, 7); // 12.2 kbps: 244 bits, 31 octets
        let mut payload = Vec::new();
        NB_OCTET.build(15, &f, &mut payload);
        assert_eq!(payload.len(), 2 + 31);
        assert_eq!(payload[0], 0xf0, "CMR 15: no mode request");
        assert_eq!(
            payload[1],
            7 << 3 | 0x04,
            "F = 0, FT = 7, Q = 1, two padding bits"
        );
        assert_eq!(&payload[2..], &f.speech[..]);
        assert_eq!(NB_OCTET.parse(&payload), Ok((15, vec![f])));
    }

    #[test]
    fn several_frames_and_no_data_in_one_payload() {
        // Octet-aligned, two frames: 12.2 kbps then NO_DATA (section 4.4.5.2 style).
        let f = frame(NB_OCTET, 7);
        let mut payload = vec![0xf0, 0x80 | 7 << 3 | 0x04, NO_DATA << 3 | 0x04];
        payload.extend_from_slice(&f.speech);
        let (_, frames) = NB_OCTET.parse(&payload).expect("parses");
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], f);
        assert_eq!((frames[1].frame_type, frames[1].speech.len()), (NO_DATA, 0));
    }

    #[test]
    fn every_wideband_mode_round_trips_in_both_layouts() {
        for octet_aligned in [false, true] {
            let layout = Layout {
                wideband: true,
                octet_aligned,
            };
            for frame_type in 0..=9 {
                let f = frame(layout, frame_type);
                let mut payload = Vec::new();
                layout.build(15, &f, &mut payload);
                assert_eq!(layout.parse(&payload), Ok((15, vec![f])), "FT {frame_type}");
            }
        }
        // 23.85 kbps bandwidth-efficient: 4 + 6 + 477 bits = 61 octets.
        let mut payload = Vec::new();
        WB_EFFICIENT.build(15, &frame(WB_EFFICIENT, 8), &mut payload);
        assert_eq!(payload.len(), 61);
    }

    #[test]
    fn frames_of_one_packet_round_trip_in_both_layouts() {
        for octet_aligned in [false, true] {
            let layout = Layout {
                wideband: false,
                octet_aligned,
            };
            let frames = vec![frame(layout, 7), frame(layout, 5), frame(layout, 8)];
            let mut payload = Vec::new();
            layout.build_frames(15, &frames, &mut payload);
            assert_eq!(
                layout.parse(&payload),
                Ok((15, frames)),
                "aligned={octet_aligned}"
            );
        }
    }

    #[test]
    fn damaged_payloads_are_errors() {
        assert_eq!(NB_OCTET.parse(&[]), Err(PayloadError::TruncatedToc));
        assert_eq!(
            NB_OCTET.parse(&[0xf0, 7 << 3 | 4, 1, 2]),
            Err(PayloadError::TruncatedFrame(7))
        );
        assert_eq!(
            NB_OCTET.parse(&[0xf0, 12 << 3]),
            Err(PayloadError::ReservedFrameType(12))
        );
    }

    #[test]
    fn redundant_frames_are_taken_out_and_a_lost_packet_recovered() {
        let layout = NB_OCTET;
        let mut filter = Redundancy::new(layout);
        let f = |ft| frame(layout, ft);
        // Packets of two frames each: the previous frame again, then the new one.
        let packet = |frames: &[Frame]| {
            let mut p = Vec::new();
            layout.build_frames(15, frames, &mut p);
            p
        };
        assert_eq!(
            filter.fresh(0, &packet(&[f(7)])),
            Fresh::Whole { ticks: Some(160) }
        );
        let second = packet(&[f(7), f(5)]);
        assert_eq!(frame_count(layout, &second), Some(2));
        let Fresh::From {
            timestamp,
            payload,
            ticks,
        } = filter.fresh(0, &second)
        else {
            panic!("the repeated frame is cut");
        };
        assert_eq!((timestamp, ticks), (160, 160));
        assert_eq!(layout.parse(&payload), Ok((15, vec![f(5)])));
        // The packet at 320 is lost; the one at 480 repeats its frame: both are new.
        assert_eq!(
            filter.fresh(320, &packet(&[f(4), f(7)])),
            Fresh::Whole { ticks: Some(320) }
        );
        // A duplicate of what came already holds nothing.
        assert_eq!(filter.fresh(320, &packet(&[f(4), f(7)])), Fresh::Nothing);
        // Reordered, not redundant: a late packet whose slot never came is whole.
        let mut filter = Redundancy::new(layout);
        assert_eq!(
            filter.fresh(0, &packet(&[f(7)])),
            Fresh::Whole { ticks: Some(160) }
        );
        assert_eq!(
            filter.fresh(320, &packet(&[f(7)])),
            Fresh::Whole { ticks: Some(160) }
        );
        assert_eq!(
            filter.fresh(160, &packet(&[f(7)])),
            Fresh::Whole { ticks: Some(160) }
        );
        assert_eq!(filter.fresh(160, &packet(&[f(7)])), Fresh::Nothing);
    }

    #[test]
    fn storage_format_round_trip() {
        let f = frame(WB_EFFICIENT, 2);
        let mut stored = Vec::new();
        f.to_storage(&mut stored);
        assert_eq!(stored[0], 2 << 3 | 0x04);
        assert_eq!(Frame::from_storage(&stored), Some(f));
    }
}

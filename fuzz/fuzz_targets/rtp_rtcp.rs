//! Any packet as RTP or RTCP, through what the relay reads from a party: RTCP reports,
//! RFC 4733 events, receive statistics, and a transcoding direction's jitter buffer and
//! decoder (PCMU to G.722, so the resampler runs too); and SRTP: every packet is
//! unprotected as if from an SRTP party and protected as if bound for one.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use warden_media::LegStats;
use warden_media::codec::{self, CodecOptions, FormatParams};
use warden_media::dtmf::EventReader;
use warden_media::srtp::{SrtpKeys, SrtpSide, Suite};
use warden_media::stats::{RtpReceiver, looks_like_rtcp, read_rtcp};
use warden_media::transcode::{Direction, LegCodec};

fn leg(name: &str, pt: u8) -> LegCodec {
    LegCodec {
        codec: codec::by_name(name, 8000).expect("codec"),
        payload_type: pt,
        params: FormatParams::default(),
        ptime: 20,
        dtmf_payload_type: Some(101),
        cn_payload_type: Some(13),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut stats = LegStats::default();
    // The input is a run of packets, each prefixed by its length (one byte).
    let mut packets = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        packets.push(&tail[..len]);
        rest = &tail[len..];
    }
    let mut receiver = RtpReceiver::default();
    let mut events = EventReader::default();
    let mut direction = Direction::new(leg("PCMU", 0), leg("G722", 9), &CodecOptions::default());
    let suite = if data.first().is_some_and(|b| b & 1 == 1) {
        Suite::AesCm128HmacSha1_32
    } else {
        Suite::AesCm128HmacSha1_80
    };
    let keys = SrtpKeys {
        suite,
        inbound: [1; 30],
        outbound: [2; 30],
    };
    let mut srtp = SrtpSide::new(keys).expect("keys");
    let mut sealed = Vec::new();
    let t0 = Instant::now();
    for (i, packet) in packets.iter().enumerate() {
        let now = t0 + Duration::from_millis(20 * i as u64);
        let is_rtp = !looks_like_rtcp(packet);
        let _ = srtp.unprotect(packet, is_rtp, &mut sealed);
        let _ = srtp.protect(packet, is_rtp, &mut sealed);
        if looks_like_rtcp(packet) {
            read_rtcp(packet, &mut stats);
            continue;
        }
        if packet.len() >= 12 {
            let seq = u16::from_be_bytes([packet[2], packet[3]]);
            let ts = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
            let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
            receiver.on_packet(ssrc, seq, ts, (i as u32).wrapping_mul(160));
            let _ = events.on_packet(ts, &packet[12..], 8000);
        }
        direction.on_packet(packet, now, &mut |_| {});
        direction.tick(now + Duration::from_millis(10), &mut |_| {});
    }
    let _ = (receiver.lost(), receiver.jitter());
});

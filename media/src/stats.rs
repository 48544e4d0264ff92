//! Per-leg media statistics: packets, bytes, loss and jitter computed from RTP sequence
//! numbers and timestamps (RFC 3550 A.1, A.8), plus what the far end says in RTCP reports.

use std::sync::atomic::{AtomicU64, Ordering};

/// Receive-side RTP bookkeeping for one source, updated per packet by the worker that owns
/// the leg (no sharing, no atomics on the per-packet path).
#[derive(Debug, Default, Clone)]
pub struct RtpReceiver {
    started: bool,
    ssrc: u32,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u64,
    /// Relative transit time of the previous packet, in timestamp units.
    last_transit: i64,
    /// Interarrival jitter, timestamp units scaled by 16 (RFC 3550 A.8).
    jitter16: u64,
}

/// A gap this large is a restart, not loss (RFC 3550 A.1 MAX_DROPOUT).
const MAX_DROPOUT: u16 = 3000;

impl RtpReceiver {
    /// Account one RTP packet arriving at `arrival` (timestamp units of its clock).
    pub fn on_packet(&mut self, ssrc: u32, seq: u16, timestamp: u32, arrival: u32) {
        if !self.started || ssrc != self.ssrc {
            // A new source (first packet, or the sender restarted): start over.
            *self = RtpReceiver {
                started: true,
                ssrc,
                base_seq: u32::from(seq),
                max_seq: seq,
                last_transit: i64::from(arrival.wrapping_sub(timestamp) as i32),
                ..RtpReceiver::default()
            };
            self.received = 1;
            return;
        }
        self.received += 1;
        let delta = seq.wrapping_sub(self.max_seq);
        if delta > 0 && delta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += 1 << 16;
            }
            self.max_seq = seq;
        } else if (MAX_DROPOUT..u16::MAX - 100).contains(&delta) {
            // A big jump: the sender reset its sequence; count from here.
            self.base_seq = u32::from(seq).wrapping_add(self.cycles);
            self.max_seq = seq;
            self.received = 1;
        }
        // Duplicates and reordered packets (delta 0 or just below) change nothing but count.
        let transit = i64::from(arrival.wrapping_sub(timestamp) as i32);
        let d = (transit - self.last_transit).unsigned_abs();
        self.last_transit = transit;
        // J += (|D| - J) / 16, in fixed point: jitter16 = 16 J.
        self.jitter16 = self.jitter16 + d - ((self.jitter16 + 8) >> 4);
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected minus packets received, never negative (duplicates can overshoot).
    pub fn lost(&self) -> u64 {
        if !self.started {
            return 0;
        }
        let extended_max = u64::from(self.cycles) + u64::from(self.max_seq);
        let expected = extended_max + 1 - u64::from(self.base_seq);
        expected.saturating_sub(self.received)
    }

    /// Interarrival jitter in timestamp units.
    pub fn jitter(&self) -> u64 {
        self.jitter16 >> 4
    }
}

/// Packets counted from one leg (what Warden received from that party).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LegStats {
    pub rtp_packets: u64,
    pub rtp_bytes: u64,
    pub rtcp_packets: u64,
    /// RTP packets lost on the way to Warden (from sequence numbers).
    pub lost: u64,
    /// Interarrival jitter of the leg's RTP, microseconds.
    pub jitter_us: u64,
    /// Datagrams dropped: failing SRTP, unusable, or with nowhere to go.
    pub dropped: u64,
    /// Datagrams from a source other than the party's latched one, dropped: injection or
    /// "RTP Bleed" attempts, or a party whose address changed without a re-INVITE.
    pub strangers: u64,
    /// From the leg's own RTCP reports about what it receives: fraction lost (0-255, per
    /// RFC 3550), cumulative lost and jitter in timestamp units.
    pub reported_fraction_lost: u64,
    pub reported_lost: u64,
    pub reported_jitter: u64,
}

/// A leg's statistics as the worker publishes them: written by one thread with plain
/// stores once per batch, read by anyone.
#[derive(Debug, Default)]
pub struct LegCounters {
    rtp_packets: AtomicU64,
    rtp_bytes: AtomicU64,
    rtcp_packets: AtomicU64,
    lost: AtomicU64,
    jitter_us: AtomicU64,
    dropped: AtomicU64,
    strangers: AtomicU64,
    reported_fraction_lost: AtomicU64,
    reported_lost: AtomicU64,
    reported_jitter: AtomicU64,
}

impl LegCounters {
    pub fn publish(&self, s: &LegStats) {
        let r = Ordering::Relaxed;
        self.rtp_packets.store(s.rtp_packets, r);
        self.rtp_bytes.store(s.rtp_bytes, r);
        self.rtcp_packets.store(s.rtcp_packets, r);
        self.lost.store(s.lost, r);
        self.jitter_us.store(s.jitter_us, r);
        self.dropped.store(s.dropped, r);
        self.strangers.store(s.strangers, r);
        self.reported_fraction_lost
            .store(s.reported_fraction_lost, r);
        self.reported_lost.store(s.reported_lost, r);
        self.reported_jitter.store(s.reported_jitter, r);
    }

    pub fn snapshot(&self) -> LegStats {
        let r = Ordering::Relaxed;
        LegStats {
            rtp_packets: self.rtp_packets.load(r),
            rtp_bytes: self.rtp_bytes.load(r),
            rtcp_packets: self.rtcp_packets.load(r),
            lost: self.lost.load(r),
            jitter_us: self.jitter_us.load(r),
            dropped: self.dropped.load(r),
            strangers: self.strangers.load(r),
            reported_fraction_lost: self.reported_fraction_lost.load(r),
            reported_lost: self.reported_lost.load(r),
            reported_jitter: self.reported_jitter.load(r),
        }
    }
}

/// Fold an RTCP compound packet's report blocks into `stats` (the sender's view of the
/// stream it receives). Malformed RTCP is relayed anyway; it just teaches us nothing.
pub fn read_rtcp(packet: &[u8], stats: &mut LegStats) {
    let Ok(compound) = rtcp_types::Compound::parse(packet) else {
        return;
    };
    for p in compound.flatten() {
        let block = match &p {
            rtcp_types::Packet::Rr(rr) => rr.report_blocks().next(),
            rtcp_types::Packet::Sr(sr) => sr.report_blocks().next(),
            _ => None,
        };
        if let Some(b) = block {
            stats.reported_fraction_lost = u64::from(b.fraction_lost());
            stats.reported_lost = u64::from(b.cumulative_lost());
            stats.reported_jitter = u64::from(b.interarrival_jitter());
        }
    }
}

/// RFC 5761 section 4: on a multiplexed port, RTCP packet types 192-223 in the second byte
/// tell RTCP from RTP.
pub fn looks_like_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 8 && (192..=223).contains(&packet[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_from_sequence_gaps_across_wrap() {
        let mut rx = RtpReceiver::default();
        let mut seq: u16 = 65530;
        for i in 0..20u32 {
            if i != 7 && i != 8 {
                rx.on_packet(1, seq, i * 160, i * 160);
            }
            seq = seq.wrapping_add(1);
        }
        assert_eq!(rx.received(), 18);
        assert_eq!(rx.lost(), 2);
        assert_eq!(rx.jitter(), 0);
    }

    #[test]
    fn duplicates_do_not_make_loss_negative() {
        let mut rx = RtpReceiver::default();
        for seq in [10, 11, 11, 12] {
            rx.on_packet(5, seq, 0, 0);
        }
        assert_eq!(rx.lost(), 0);
    }

    #[test]
    fn jitter_follows_rfc3550_estimator() {
        let mut rx = RtpReceiver::default();
        // Packets every 160 units, arrivals alternately 0 and 80 units late.
        for i in 0..400u32 {
            let late = if i % 2 == 0 { 0 } else { 80 };
            rx.on_packet(9, i as u16, i * 160, i * 160 + late);
        }
        // |D| is always 80: J converges to 80.
        assert!((75..=80).contains(&rx.jitter()), "jitter {}", rx.jitter());
    }

    #[test]
    fn new_ssrc_restarts_counting() {
        let mut rx = RtpReceiver::default();
        rx.on_packet(1, 100, 0, 0);
        rx.on_packet(1, 110, 0, 0);
        rx.on_packet(2, 5000, 0, 0);
        rx.on_packet(2, 5001, 0, 0);
        assert_eq!((rx.received(), rx.lost()), (2, 0));
    }

    #[test]
    fn reads_receiver_report_blocks() {
        let rr = [
            0x81, 201, 0, 7, // V=2 RC=1 RR, length 7 words
            0, 0, 0, 1, // sender SSRC
            0, 0, 0, 2, // source SSRC
            64, 0, 0, 9, // fraction 64/256, cumulative 9
            0, 0, 0, 100, // extended highest seq
            0, 0, 0, 33, // jitter
            0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let mut stats = LegStats::default();
        read_rtcp(&rr, &mut stats);
        assert!(looks_like_rtcp(&rr));
        assert_eq!(
            (
                stats.reported_fraction_lost,
                stats.reported_lost,
                stats.reported_jitter
            ),
            (64, 9, 33)
        );
    }
}

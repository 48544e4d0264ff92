//! The transcoder's jitter buffer: packets wait, in sequence order, until the worker's
//! 20 ms clock reaches their place; then they are decoded, or concealed when missing. The
//! wait adapts to the stream's measured jitter (RFC 3550 estimate, three times it, 20 to
//! 160 ms), and a buffer that runs too deep drops its oldest packet to catch up.
//!
//! Pure state over the times it is given: the relay worker feeds arrivals and ticks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::LegCodec;
use crate::codec::amr_payload::{Fresh, Redundancy};

const MIN_TARGET: Duration = Duration::from_millis(20);
const MAX_TARGET: Duration = Duration::from_millis(160);
/// Ticks with nothing to play before the buffer stops and waits for the next talkspurt
/// (silence suppression, or a stream that paused).
const IDLE_TICKS: u32 = 3;

/// What the buffer hands the decoder on a tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Playout {
    /// A packet's payload (and RTP timestamp), in order.
    Packet { timestamp: u32, payload: Vec<u8> },
    /// Conceal this many samples (on the sender's clock): a packet did not come in time.
    Conceal(u32),
}

#[derive(Debug)]
struct Waiting {
    timestamp: u32,
    payload: Vec<u8>,
    arrival: Instant,
    /// Clock ticks it covers, when its payload says (AMR's table of contents); otherwise
    /// the stream's usual packet length.
    samples: Option<u32>,
}

#[derive(Debug)]
pub struct JitterBuffer {
    /// The sender's RTP clock, and the samples one tick (20 ms) covers on it.
    clock: u32,
    tick_samples: u32,
    waiting: BTreeMap<u64, Waiting>,
    /// Sequence numbers extended past 16 bits (RFC 3550 A.1 style).
    highest: Option<u64>,
    /// Playing: the sender-clock position the next tick plays up to.
    position: Option<u32>,
    /// Everything before this sender timestamp has been decoded or concealed.
    played_until: Option<u32>,
    last_played: Option<u64>,
    /// Samples per packet, learned from consecutive packets (default one tick).
    packet_samples: u32,
    /// RFC 3550 interarrival jitter, in sender-clock units (as f64), and the previous
    /// packet's transit time.
    jitter: f64,
    last_transit: Option<f64>,
    epoch: Instant,
    idle_ticks: u32,
    /// Packets dropped as late or to catch up, and samples concealed.
    pub late: u64,
    pub concealed: u64,
    /// AMR: frames a sender repeats in later packets, taken out before they wait.
    redundancy: Option<Redundancy>,
}

impl JitterBuffer {
    pub fn new(clock: u32, now: Instant) -> JitterBuffer {
        let tick_samples = clock / 50;
        JitterBuffer {
            clock,
            tick_samples,
            waiting: BTreeMap::new(),
            highest: None,
            position: None,
            played_until: None,
            last_played: None,
            packet_samples: tick_samples,
            jitter: 0.0,
            last_transit: None,
            epoch: now,
            idle_ticks: 0,
            late: 0,
            concealed: 0,
            redundancy: None,
        }
    }

    /// A buffer for `leg`'s packets: on its codec's clock, and for AMR with repeated
    /// frames taken out.
    pub fn for_leg(leg: &LegCodec, now: Instant) -> JitterBuffer {
        let mut buffer = JitterBuffer::new(leg.codec.rtp_clock, now);
        buffer.redundancy = leg.codec.amr_layout(&leg.params).map(Redundancy::new);
        buffer
    }

    /// How long packets wait before they play, from the jitter seen so far.
    pub fn target(&self) -> Duration {
        let jitter = Duration::from_secs_f64(self.jitter / f64::from(self.clock.max(1)));
        (jitter * 3).clamp(MIN_TARGET, MAX_TARGET)
    }

    fn extend(&mut self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            self.highest = Some(u64::from(seq) + (1 << 16));
            return u64::from(seq) + (1 << 16);
        };
        // The candidate nearest the highest seen (wrap either way).
        let base = highest & !0xffff;
        let candidates = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
        let ext = candidates
            .iter()
            .map(|b| b + u64::from(seq))
            .min_by_key(|c| c.abs_diff(highest))
            .unwrap_or(highest);
        self.highest = Some(highest.max(ext));
        ext
    }

    /// A packet arrived (its sequence number, timestamp and payload).
    pub fn push(&mut self, seq: u16, timestamp: u32, payload: &[u8], now: Instant) {
        let trimmed;
        // AMR: the clock ticks the packet covers, from its table of contents.
        let (timestamp, payload, samples) = match self
            .redundancy
            .as_mut()
            .map(|r| r.fresh(timestamp, payload))
        {
            None => (timestamp, payload, None),
            Some(Fresh::Whole { ticks }) => (timestamp, payload, ticks),
            Some(Fresh::Nothing) => return,
            Some(Fresh::From {
                timestamp,
                payload,
                ticks,
            }) => {
                trimmed = payload;
                (timestamp, trimmed.as_slice(), Some(ticks))
            }
        };
        let ext = self.extend(seq);
        // Jitter (RFC 3550 6.4.1): variation of transit time, in sender-clock units.
        let arrival = now.duration_since(self.epoch).as_secs_f64() * f64::from(self.clock);
        let transit = arrival - f64::from(timestamp);
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            // Timestamps wrap; a jump of more than a minute is a new source, not jitter.
            if d < f64::from(self.clock) * 60.0 {
                self.jitter += (d - self.jitter) / 16.0;
            }
        }
        self.last_transit = Some(transit);
        let too_late = self.last_played.is_some_and(|played| ext <= played)
            || self
                .played_until
                .is_some_and(|until| (timestamp.wrapping_sub(until) as i32) < 0);
        if too_late || self.waiting.contains_key(&ext) {
            self.late += 1;
            return;
        }
        if let Some((&prev_seq, prev)) = self.waiting.range(..ext).next_back()
            && ext - prev_seq == 1
        {
            let step = timestamp.wrapping_sub(prev.timestamp);
            if step > 0 && step <= 6 * self.tick_samples {
                self.packet_samples = step;
            }
        }
        self.waiting.insert(
            ext,
            Waiting {
                timestamp,
                payload: payload.to_vec(),
                arrival: now,
                samples,
            },
        );
    }

    /// The worker's 20 ms tick: what to decode or conceal now, in order.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Playout>) {
        let target = self.target();
        let Some(position) = self.position else {
            // Not playing: start once the oldest packet has waited the target delay.
            let Some(first) = self.waiting.values().next() else {
                return;
            };
            if now.duration_since(first.arrival) < target {
                return;
            }
            let start = first.timestamp;
            self.position = Some(start);
            self.played_until = Some(start);
            self.idle_ticks = 0;
            return self.tick(now, out);
        };
        // Deeper than the target by more than three ticks: drop the oldest to catch up.
        let depth = self
            .waiting
            .values()
            .next_back()
            .map(|newest| newest.timestamp.wrapping_sub(position));
        let limit = target.as_millis() as u32 * self.clock / 1000 + 3 * self.tick_samples;
        if depth.is_some_and(|d| d > limit && d < u32::MAX / 2)
            && self.waiting.len() > 1
            && let Some((seq, dropped)) = self.waiting.pop_first()
        {
            self.last_played = Some(seq);
            let samples = dropped.samples.unwrap_or(self.packet_samples);
            self.played_until = Some(dropped.timestamp.wrapping_add(samples));
            self.late += 1;
        }
        let end = position.wrapping_add(self.tick_samples);
        let mut played = false;
        while let Some(entry) = self.waiting.first_entry() {
            let ts = entry.get().timestamp;
            if (ts.wrapping_sub(end) as i32) >= 0 {
                break; // not yet
            }
            let (seq, packet) = entry.remove_entry();
            let until = self.played_until.unwrap_or(ts);
            let gap = ts.wrapping_sub(until);
            if gap > 0 && gap < 3 * self.tick_samples + 1 {
                self.concealed += u64::from(gap);
                out.push(Playout::Conceal(gap));
            }
            let samples = packet.samples.unwrap_or(self.packet_samples);
            out.push(Playout::Packet {
                timestamp: ts,
                payload: packet.payload,
            });
            self.last_played = Some(seq);
            self.played_until = Some(ts.wrapping_add(samples));
            played = true;
        }
        if !played {
            let until = self.played_until.unwrap_or(position);
            if self.waiting.is_empty() {
                self.idle_ticks += 1;
                if self.idle_ticks > IDLE_TICKS {
                    // Silence (DTX) or a pause: stop, and re-prime on the next packet.
                    self.position = None;
                    return;
                }
            }
            // Nothing in time for this tick: conceal it, as the decoder would hear a gap.
            if (end.wrapping_sub(until) as i32) > 0 {
                let missing = end.wrapping_sub(until).min(self.tick_samples);
                self.concealed += u64::from(missing);
                out.push(Playout::Conceal(missing));
                self.played_until = Some(until.wrapping_add(missing));
            }
        } else {
            self.idle_ticks = 0;
        }
        self.position = Some(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn payload(seq: u16) -> Vec<u8> {
        vec![seq as u8; 4]
    }

    fn packet(seq: u16) -> Playout {
        Playout::Packet {
            timestamp: u32::from(seq) * 160,
            payload: payload(seq),
        }
    }

    /// Tick every 20 ms from `from` to `to` ms; what was played.
    fn run(jb: &mut JitterBuffer, t0: Instant, from: u64, to: u64) -> Vec<Playout> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            jb.tick(ms(t0, t), &mut out);
            t += 20;
        }
        out
    }

    #[test]
    fn reorders_and_plays_in_sequence_after_the_target_delay() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(8000, t0);
        // 1, 3, 2 arrive out of order within a few ms.
        jb.push(1, 160, &payload(1), ms(t0, 0));
        jb.push(3, 480, &payload(3), ms(t0, 25));
        jb.push(2, 320, &payload(2), ms(t0, 30));
        assert!(run(&mut jb, t0, 0, 20).is_empty(), "waits the target first");
        let out = run(&mut jb, t0, 20, 80);
        assert_eq!(out, vec![packet(1), packet(2), packet(3)]);
        assert_eq!(jb.late, 0);
    }

    #[test]
    fn an_amr_senders_repeated_frames_play_once() {
        use crate::codec::amr_payload::{Frame, Layout};
        use crate::codec::{self, FormatParams};
        let Some(amr) = codec::by_name("AMR", 8000) else {
            return; // built without AMR
        };
        let params = FormatParams::parse("octet-align=1; max-red=20");
        let leg = LegCodec {
            codec: amr,
            payload_type: 97,
            params,
            ptime: 20,
            dtmf_payload_type: None,
            cn_payload_type: None,
        };
        let layout = Layout {
            wideband: false,
            octet_aligned: true,
        };
        let frame = |n: u8| Frame {
            frame_type: 7,
            good: true,
            speech: vec![n; 31],
        };
        let t0 = Instant::now();
        let mut jb = JitterBuffer::for_leg(&leg, t0);
        // Packet n carries frame n-1 again, then frame n; its timestamp is frame n-1's.
        let mut out = Vec::new();
        for n in 1..=8u8 {
            let now = ms(t0, u64::from(n) * 20);
            if n <= 5 {
                let mut p = Vec::new();
                layout.build_frames(15, &[frame(n - 1), frame(n)], &mut p);
                jb.push(u16::from(n), u32::from(n - 1) * 160, &p, now);
            }
            jb.tick(now, &mut out);
        }
        let last_packet = out
            .iter()
            .rposition(|p| matches!(p, Playout::Packet { .. }))
            .expect("played");
        assert!(
            !out[..last_packet]
                .iter()
                .any(|p| matches!(p, Playout::Conceal(_))),
            "the two-frame packet covers 40 ms: nothing to conceal after it"
        );
        let played: Vec<(u32, Vec<u8>)> = out
            .into_iter()
            .filter_map(|p| match p {
                Playout::Packet { timestamp, payload } => {
                    let (_, frames) = layout.parse(&payload).expect("parses");
                    Some((timestamp, frames.iter().map(|f| f.speech[0]).collect()))
                }
                Playout::Conceal(_) => None,
            })
            .collect();
        let expected: Vec<(u32, Vec<u8>)> = std::iter::once((0, vec![0, 1]))
            .chain((2..=5u8).map(|n| (u32::from(n) * 160, vec![n])))
            .collect();
        assert_eq!(played, expected, "each frame once, in order");
    }

    #[test]
    fn a_missing_packet_is_concealed_and_a_late_one_dropped() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(8000, t0);
        for (seq, at) in [(1u16, 0u64), (2, 20), (4, 60), (5, 80)] {
            jb.push(seq, u32::from(seq) * 160, &payload(seq), ms(t0, at));
        }
        let out = run(&mut jb, t0, 20, 120);
        assert_eq!(
            out,
            vec![
                packet(1),
                packet(2),
                Playout::Conceal(160),
                packet(4),
                packet(5),
            ]
        );
        // 3 shows up after its slot was concealed: dropped.
        jb.push(3, 480, &payload(3), ms(t0, 120));
        assert_eq!(jb.late, 1);
    }

    /// Arrivals (seq, arrival ms) of 20 ms packets interleaved in time with 20 ms ticks
    /// from 10 ms on, until `until` ms; what was played.
    fn simulate(
        jb: &mut JitterBuffer,
        t0: Instant,
        arrivals: &[(u16, u64)],
        until: u64,
    ) -> Vec<Playout> {
        let mut arrivals = arrivals.to_vec();
        arrivals.sort_by_key(|a| a.1);
        let mut out = Vec::new();
        let mut next = arrivals.into_iter().peekable();
        let mut t = 10;
        while t < until {
            while let Some(&(seq, at)) = next.peek() {
                if at > t {
                    break;
                }
                jb.push(seq, u32::from(seq) * 160, &payload(seq), ms(t0, at));
                next.next();
            }
            jb.tick(ms(t0, t), &mut out);
            t += 20;
        }
        out
    }

    #[test]
    fn the_target_grows_with_jitter_and_silence_stops_playback() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(8000, t0);
        // Packets every 20 ms of media but arriving up to 30 ms either side of that.
        let skewed: Vec<(u16, u64)> = (0..50u16)
            .map(|seq| {
                let skew: i64 = if seq % 2 == 0 { 30 } else { -30 };
                (seq, (i64::from(seq) * 20 + 40 + skew) as u64)
            })
            .collect();
        simulate(&mut jb, t0, &skewed, 1200);
        assert!(
            jb.target() > Duration::from_millis(100),
            "{:?}",
            jb.target()
        );
        // A calm stream: the target stays at its floor and everything plays.
        let mut calm = JitterBuffer::new(8000, t0);
        let steady: Vec<(u16, u64)> = (0..50u16).map(|seq| (seq, u64::from(seq) * 20)).collect();
        let out = simulate(&mut calm, t0, &steady, 1200);
        assert_eq!(calm.target(), MIN_TARGET);
        let played = out
            .iter()
            .filter(|p| matches!(p, Playout::Packet { .. }))
            .count();
        assert_eq!(played, 50);
        // After the last packet: at most three ticks concealed, then it stops.
        let conceals = out
            .iter()
            .filter(|p| matches!(p, Playout::Conceal(_)))
            .count();
        assert!(conceals <= 3, "{conceals} concealed ticks");
        assert!(run(&mut calm, t0, 1200, 1400).is_empty(), "stopped");
    }

    #[test]
    fn a_backlog_is_trimmed_toward_the_target() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(8000, t0);
        // A burst of 20 packets (400 ms of media) at once after a stall.
        let burst: Vec<(u16, u64)> = (0..20u16).map(|seq| (seq, 0)).collect();
        let out = simulate(&mut jb, t0, &burst, 800);
        let played = out
            .iter()
            .filter(|p| matches!(p, Playout::Packet { .. }))
            .count();
        assert!(jb.late > 0, "some of the backlog dropped to catch up");
        assert_eq!(
            played as u64 + jb.late,
            20,
            "every packet played or dropped"
        );
        // Trimmed: the backlog plays out in well under its 400 ms.
        let ticks_playing = out
            .iter()
            .position(|p| matches!(p, Playout::Conceal(_)))
            .unwrap_or(out.len());
        assert!(ticks_playing <= 20);
    }
}

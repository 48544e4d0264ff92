//! DTMF as RFC 4733 telephone-events: reading a party's events (one report per key press,
//! however many packets carry it) and writing events of our own, paced like a phone would
//! (a start packet, updates every 50 ms, the end packet sent three times).

use std::time::{Duration, Instant};

/// One key press as the call logic sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digit {
    /// '0'-'9', '*', '#', 'A'-'D'.
    pub key: char,
    pub duration: Duration,
}

/// The event code of a key (RFC 4733 section 3.2).
pub fn code_of(key: char) -> Option<u8> {
    match key.to_ascii_uppercase() {
        k @ '0'..='9' => Some(k as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        k @ 'A'..='D' => Some(k as u8 - b'A' + 12),
        _ => None,
    }
}

/// The key of an event code; None for the events that are not keys (flash, tones).
pub fn key_of(code: u8) -> Option<char> {
    match code {
        0..=9 => Some((b'0' + code) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + code - 12) as char),
        _ => None,
    }
}

/// The fields of a telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub code: u8,
    pub end: bool,
    pub volume: u8,
    /// In RTP timestamp units.
    pub duration: u16,
}

impl Event {
    pub fn parse(payload: &[u8]) -> Option<Event> {
        let b = payload.get(..4)?;
        Some(Event {
            code: b[0],
            end: b[1] & 0x80 != 0,
            volume: b[1] & 0x3f,
            duration: u16::from_be_bytes([b[2], b[3]]),
        })
    }

    pub fn write(&self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.code,
            if self.end { 0x80 } else { 0 } | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }
}

/// Turns a party's telephone-event packets into key presses: an event is reported once,
/// when its end arrives (the end packet is sent three times; an event is known by its RTP
/// timestamp). An event whose end never arrives is reported when the next one starts.
#[derive(Debug, Default)]
pub struct EventReader {
    /// Timestamp and latest state of the event in progress or last reported.
    current: Option<(u32, Event, bool)>,
}

impl EventReader {
    /// Take one telephone-event packet (its RTP timestamp and payload) on a `clock` Hz
    /// stream; returns the key presses it completes.
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8], clock: u32) -> Vec<Digit> {
        let Some(event) = Event::parse(payload) else {
            return Vec::new();
        };
        let mut done = Vec::new();
        match self.current {
            // A repeated end packet.
            Some((ts, _, true)) if ts == timestamp => return done,
            Some((ts, _, false)) if ts == timestamp => {}
            Some((_, previous, false)) => {
                // A new event before the last one's end: the end packets were lost.
                done.extend(digit(&previous, clock));
            }
            _ => {}
        }
        self.current = Some((timestamp, event, event.end));
        if event.end {
            done.extend(digit(&event, clock));
        }
        done
    }
}

fn digit(event: &Event, clock: u32) -> Option<Digit> {
    Some(Digit {
        key: key_of(event.code)?,
        duration: Duration::from_micros(
            u64::from(event.duration) * 1_000_000 / u64::from(clock.max(1)),
        ),
    })
}

/// How often a long event is refreshed, and the gap between the three end packets.
const UPDATE: Duration = Duration::from_millis(50);
const END_REPEAT: Duration = Duration::from_millis(20);
/// RFC 4733 recommends at least 40 ms of tone; shorter requests are lengthened.
const MIN_DURATION: Duration = Duration::from_millis(40);

/// One event of ours being sent: which packet is due when. The caller stamps each payload
/// with its RTP header (the event's timestamp is fixed at the start; the sequence number is
/// the stream's next one at sending time).
#[derive(Debug, Clone)]
pub struct EventWriter {
    code: u8,
    clock: u32,
    length: Duration,
    start: Instant,
    /// Packets sent so far (start, updates, then up to three end packets).
    sent: u32,
    ends_sent: u32,
    pub next: Instant,
}

impl EventWriter {
    pub fn new(key: char, duration: Duration, clock: u32, now: Instant) -> Option<EventWriter> {
        Some(EventWriter {
            code: code_of(key)?,
            clock: clock.max(1),
            length: duration.clamp(MIN_DURATION, Duration::from_secs(5)),
            start: now,
            sent: 0,
            ends_sent: 0,
            next: now,
        })
    }

    /// The payload due at `now` and whether it is the first (marker bit); None when
    /// nothing is due. `finished` tells when the last end packet has gone.
    pub fn due(&mut self, now: Instant) -> Option<([u8; 4], bool)> {
        if now < self.next || self.finished() {
            return None;
        }
        let elapsed = now.duration_since(self.start);
        let end = elapsed >= self.length;
        let played = if end { self.length } else { elapsed };
        let duration = (played.as_micros() as u64 * u64::from(self.clock) / 1_000_000)
            .min(u64::from(u16::MAX)) as u16;
        let first = self.sent == 0;
        self.sent += 1;
        if end {
            self.ends_sent += 1;
            self.next = now + END_REPEAT;
        } else {
            self.next = (now + UPDATE).min(self.start + self.length);
        }
        let event = Event {
            code: self.code,
            end,
            volume: 10,
            duration,
        };
        Some((event.write(), first))
    }

    pub fn finished(&self) -> bool {
        self.ends_sent >= 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_codes_map_both_ways() {
        for (key, code) in [
            ('0', 0),
            ('9', 9),
            ('*', 10),
            ('#', 11),
            ('A', 12),
            ('d', 15),
        ] {
            assert_eq!(code_of(key), Some(code));
            assert_eq!(key_of(code), Some(key.to_ascii_uppercase()));
        }
        assert_eq!(code_of('x'), None);
        assert_eq!(key_of(16), None, "flash is not a key");
    }

    #[test]
    fn one_report_per_key_press_despite_repeated_ends() {
        let mut reader = EventReader::default();
        let at = |d: u16, end: bool| {
            Event {
                code: 5,
                end,
                volume: 10,
                duration: d,
            }
            .write()
        };
        assert!(reader.on_packet(1000, &at(0, false), 8000).is_empty());
        assert!(reader.on_packet(1000, &at(400, false), 8000).is_empty());
        let done = reader.on_packet(1000, &at(800, true), 8000);
        assert_eq!(
            done,
            vec![Digit {
                key: '5',
                duration: Duration::from_millis(100)
            }]
        );
        assert!(reader.on_packet(1000, &at(800, true), 8000).is_empty());
        assert!(reader.on_packet(1000, &at(800, true), 8000).is_empty());
        // The next press (a new timestamp) whose end is lost is reported when the third
        // begins.
        assert!(reader.on_packet(3000, &at(320, false), 8000).is_empty());
        let done = reader.on_packet(5000, &at(0, false), 8000);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].key, '5');
    }

    #[test]
    fn an_event_is_sent_as_start_updates_and_three_ends() {
        let t0 = Instant::now();
        let mut w = EventWriter::new('#', Duration::from_millis(120), 8000, t0).expect("key");
        let mut sent = Vec::new();
        let mut now = t0;
        while !w.finished() {
            if let Some((payload, first)) = w.due(now) {
                sent.push((
                    now.duration_since(t0).as_millis(),
                    Event::parse(&payload),
                    first,
                ));
            }
            now += Duration::from_millis(5);
        }
        let events: Vec<(u128, u16, bool)> = sent
            .iter()
            .map(|(ms, e, _)| {
                let e = e.expect("event");
                (*ms, e.duration, e.end)
            })
            .collect();
        assert_eq!(
            events,
            vec![
                (0, 0, false),
                (50, 400, false),
                (100, 800, false),
                (120, 960, true),
                (140, 960, true),
                (160, 960, true),
            ]
        );
        assert!(sent[0].2 && !sent[1].2, "marker on the first packet only");
        assert!(sent.iter().all(|(_, e, _)| e.is_some_and(|e| e.code == 11)));
    }
}

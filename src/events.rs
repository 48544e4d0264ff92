//! The live event stream (`GET /events`): the events the core reports as calls go and
//! registrations change, and the hub that hands each one to every subscriber at once.
//!
//! The core only says what happened ([`Event`], through `Output::Event`), and only while
//! somebody listens ([`Listeners`]): a server nobody watches builds no events. The hub
//! numbers the events and serializes each once; every subscriber reads them from its own
//! place in one bounded ring (tokio's broadcast channel). Publishing never waits: a
//! subscriber that falls a whole ring behind has lost events, and is told so and dropped
//! (`api::events`), so a slow consumer can never slow a call.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::cdr::Record;

/// Something that happened, as a subscriber reads it (one JSON object: `seq`, `at_ms`,
/// `call` when it is a call's, `event`, and the event's own fields).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Wall-clock Unix milliseconds.
    pub at_ms: u64,
    /// The call's number, as `/calls` lists it and `/calls/{id}` takes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<u64>,
    #[serde(flatten)]
    pub what: What,
}

/// The kinds of event, with what each one says.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum What {
    /// A call began: an INVITE admitted, or an originated call's first party answered.
    CallStarted {
        record: String,
        caller: String,
        callee: String,
        /// "sip" (an INVITE came in) or "api" (`POST /calls`).
        origin: &'static str,
        rule: Option<String>,
    },
    /// A party is being rung: `party` is "callee", or "first" for an originated call's
    /// first party.
    Ringing {
        party: &'static str,
        status: u16,
    },
    /// The call is answered: by the callee, or by Warden itself (prompts, menus, rooms),
    /// or by an originated call's first party.
    Answered {
        by: &'static str,
    },
    /// The call is over; its record is closed.
    Ended {
        record: Box<Record>,
    },
    /// A party pressed a key that Warden saw (RFC 4733 events it reports, SIP INFO).
    Dtmf {
        side: &'static str,
        key: char,
    },
    /// Screening decided: allow, block or challenge, and why.
    Screening {
        decision: String,
        reason: Option<String>,
    },
    /// A transfer: requested (by a party's REFER, or the API), completed or failed.
    Transfer {
        /// The party whose place the target takes.
        replaced: &'static str,
        target: String,
        outcome: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
    },
    /// A prompt the API asked for began playing to a side ("caller", "callee").
    Playing {
        side: &'static str,
        prompt: String,
    },
    /// The call's recording began (its file, named in the record) or stopped.
    Recording {
        file: String,
        recording: bool,
    },
    /// The call's caller joined or left a conference room.
    ConferenceJoined {
        room: String,
    },
    ConferenceLeft {
        room: String,
    },
    /// A REGISTER added or refreshed a contact of `user`.
    Registered {
        user: String,
        contact: String,
        expires_at: u64,
    },
    /// A contact of `user` is gone: removed by its phone, expired, or replaced elsewhere.
    Unregistered {
        user: String,
        contact: String,
    },
}

impl What {
    /// The event's name in the stream (its `event` field), what `?kind=` filters by.
    pub fn kind(&self) -> &'static str {
        match self {
            What::CallStarted { .. } => "call_started",
            What::Ringing { .. } => "ringing",
            What::Answered { .. } => "answered",
            What::Ended { .. } => "ended",
            What::Dtmf { .. } => "dtmf",
            What::Screening { .. } => "screening",
            What::Transfer { .. } => "transfer",
            What::Playing { .. } => "playing",
            What::Recording { .. } => "recording",
            What::ConferenceJoined { .. } => "conference_joined",
            What::ConferenceLeft { .. } => "conference_left",
            What::Registered { .. } => "registered",
            What::Unregistered { .. } => "unregistered",
        }
    }
}

/// Every kind's name, for checking a subscriber's filter.
pub const KINDS: [&str; 13] = [
    "call_started",
    "ringing",
    "answered",
    "ended",
    "dtmf",
    "screening",
    "transfer",
    "playing",
    "recording",
    "conference_joined",
    "conference_left",
    "registered",
    "unregistered",
];

/// How many subscribe now: the core reports events only while this is above zero.
#[derive(Debug, Clone, Default)]
pub struct Listeners(Arc<AtomicUsize>);

impl Listeners {
    pub fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// An event as it went out: numbered, serialized once for all subscribers.
#[derive(Debug)]
pub struct Published {
    pub seq: u64,
    pub call: Option<u64>,
    pub kind: &'static str,
    pub json: String,
}

/// Where every lane publishes and every subscriber reads.
pub struct Hub {
    tx: broadcast::Sender<Arc<Published>>,
    /// The last number given; held while sending, so numbers reach the ring in order.
    seq: Mutex<u64>,
    listeners: Listeners,
    /// Subscribers closed for falling behind or no longer reading.
    dropped: AtomicU64,
}

/// One subscriber's place in the ring; it stops counting as a listener when dropped.
pub struct Subscription {
    pub events: broadcast::Receiver<Arc<Published>>,
    listeners: Listeners,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.listeners.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Serialize)]
struct Numbered<'a> {
    seq: u64,
    #[serde(flatten)]
    event: &'a Event,
}

impl Hub {
    /// A hub whose ring holds `capacity` events: how far a subscriber may fall behind.
    pub fn new(capacity: usize) -> Hub {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Hub {
            tx,
            seq: Mutex::new(0),
            listeners: Listeners::default(),
            dropped: AtomicU64::new(0),
        }
    }

    /// What the cores look at before they build an event.
    pub fn listeners(&self) -> Listeners {
        self.listeners.clone()
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.listeners.0.load(Ordering::Relaxed)
    }

    /// A subscriber was closed for falling behind (or no longer reading).
    pub fn note_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscribers closed for falling behind, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> Subscription {
        self.listeners.0.fetch_add(1, Ordering::Relaxed);
        Subscription {
            events: self.tx.subscribe(),
            listeners: self.listeners.clone(),
        }
    }

    /// Hand `event` to every subscriber; never waits for any of them.
    pub fn publish(&self, event: &Event) {
        let mut seq = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        *seq += 1;
        let json = serde_json::to_string(&Numbered { seq: *seq, event }).unwrap_or_default();
        // An error only says nobody subscribes at the moment.
        let _ = self.tx.send(Arc::new(Published {
            seq: *seq,
            call: event.call,
            kind: event.what.kind(),
            json,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(call: u64) -> Event {
        Event {
            at_ms: 1,
            call: Some(call),
            what: What::Answered { by: "callee" },
        }
    }

    #[test]
    fn events_are_numbered_in_order_and_carry_their_fields() {
        let hub = Hub::new(8);
        let mut sub = hub.subscribe();
        assert!(hub.listeners().any());
        hub.publish(&answered(7));
        hub.publish(&Event {
            at_ms: 2,
            call: None,
            what: What::Registered {
                user: "bob".into(),
                contact: "sip:bob@127.0.0.1".into(),
                expires_at: 600,
            },
        });
        let first = sub.events.try_recv().expect("first event");
        let second = sub.events.try_recv().expect("second event");
        assert_eq!(
            (first.seq, first.call, first.kind),
            (1, Some(7), "answered")
        );
        let json: serde_json::Value = serde_json::from_str(&first.json).expect("JSON");
        assert_eq!(json["event"], "answered");
        assert_eq!(json["by"], "callee");
        assert_eq!(json["call"], 7);
        assert_eq!(second.seq, 2);
        let json: serde_json::Value = serde_json::from_str(&second.json).expect("JSON");
        assert_eq!(json["user"], "bob");
        assert!(json.get("call").is_none(), "{json}");
    }

    #[test]
    fn a_subscriber_a_whole_ring_behind_learns_it_lagged_and_publishing_never_waits() {
        let hub = Hub::new(4);
        let mut slow = hub.subscribe();
        for call in 0..10 {
            hub.publish(&answered(call));
        }
        match slow.events.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(missed)) => assert_eq!(missed, 6),
            other => panic!("expected a lag, got {other:?}"),
        }
    }

    #[test]
    fn listeners_count_down_as_subscriptions_end() {
        let hub = Hub::new(4);
        let one = hub.subscribe();
        let two = hub.subscribe();
        drop(one);
        assert!(hub.listeners().any());
        drop(two);
        assert!(!hub.listeners().any());
        hub.publish(&answered(1)); // nobody listens: no error, no wait
    }

    #[test]
    fn every_kind_is_listed_for_filters() {
        let kinds = [
            What::Answered { by: "warden" }.kind(),
            What::Unregistered {
                user: String::new(),
                contact: String::new(),
            }
            .kind(),
        ];
        for kind in kinds {
            assert!(KINDS.contains(&kind), "{kind}");
        }
    }
}

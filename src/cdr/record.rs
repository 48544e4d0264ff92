//! One call detail record: what the core fills in as the call goes, what the journal and
//! the database hold, and what the admin API exports (JSON, CSV).

use serde::{Deserialize, Serialize};

/// A call's record. Times are Unix milliseconds; `rev` grows with every update, so writing
/// any version twice, or an older one after a newer, leaves the newest in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub rev: i64,
    pub instance: String,
    pub boot: String,
    pub a_call_id: String,
    pub b_call_id: Option<String>,
    pub caller: String,
    pub callee: String,
    pub source: String,
    /// The call's recording file (in `recording.dir`, until uploaded), when recorded.
    #[serde(default)]
    pub recording: Option<String>,
    /// How the call began: "sip" (an INVITE came in) or "api" (`POST /calls`).
    #[serde(default = "sip_origin")]
    pub origin: String,
    pub received_ms: i64,
    pub ringing_ms: Option<i64>,
    pub answered_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// Talk time: answer to end.
    pub duration_ms: Option<i64>,
    /// The final response the caller got (200 for an answered call).
    pub final_code: Option<i64>,
    pub final_reason: Option<String>,
    /// Who ended the call: caller, callee or warden.
    pub hangup_side: Option<String>,
    /// Why it ended (see the README's Operations section); set means the record is closed.
    pub end_reason: Option<String>,
    /// The dialplan rule that routed it.
    pub rule: Option<String>,
    /// The dialplan's tags, comma-separated.
    pub tags: String,
    /// Screening's decision (allow, block, challenge) and its explanation.
    pub screening: Option<String>,
    pub screening_reason: Option<String>,
    /// STIR/SHAKEN's verdict on the caller's identity (the verstat value).
    pub attestation: Option<String>,
    pub a_codec: Option<String>,
    pub b_codec: Option<String>,
    pub transcoded: bool,
    /// What Warden received from each party: RTP packets, packets lost, worst jitter.
    pub a_packets: Option<i64>,
    pub a_lost: Option<i64>,
    pub a_jitter_us: Option<i64>,
    pub b_packets: Option<i64>,
    pub b_lost: Option<i64>,
    pub b_jitter_us: Option<i64>,
    /// The conference room the caller joined.
    pub conference: Option<String>,
    /// The record this call is linked to: for a transfer's new call, the call it came from.
    pub linked_id: Option<String>,
}

/// The record's columns, in the table's (and the CSV export's) order.
pub const COLUMNS: [&str; 39] = [
    "id",
    "rev",
    "instance",
    "boot",
    "a_call_id",
    "b_call_id",
    "caller",
    "callee",
    "source",
    "received_ms",
    "ringing_ms",
    "answered_ms",
    "ended_ms",
    "duration_ms",
    "final_code",
    "final_reason",
    "hangup_side",
    "end_reason",
    "rule",
    "tags",
    "screening",
    "screening_reason",
    "attestation",
    "a_codec",
    "b_codec",
    "transcoded",
    "a_packets",
    "a_lost",
    "a_jitter_us",
    "b_packets",
    "b_lost",
    "b_jitter_us",
    "conference",
    "linked_id",
    "origin",
    "recording",
    // Derived for readers, not stored.
    "received",
    "answered",
    "ended",
];

/// A fresh record id, 32 hex digits: the milliseconds since 1970 (48 bits), then 80
/// random bits, unique across restarts and instances (the layout of a UUIDv7, RFC 9562,
/// without its version digits). Ids in time order keep the database's index on them
/// appending at its end: a random id lands every new record on another index page, a
/// page to write per record and, once the index outgrows the cache, one to read.
pub fn new_id() -> String {
    let ms = u128::from(crate::clock::unix_now_ms()) & ((1 << 48) - 1);
    let random = rand::random::<u128>() & ((1 << 80) - 1);
    format!("{:032x}", ms << 80 | random)
}

impl Record {
    pub fn is_closed(&self) -> bool {
        self.end_reason.is_some()
    }

    /// The record as a CSV line (RFC 4180 quoting), in `COLUMNS` order.
    pub fn csv_line(&self) -> String {
        let opt = |v: &Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let fields = [
            self.id.clone(),
            self.rev.to_string(),
            self.instance.clone(),
            self.boot.clone(),
            self.a_call_id.clone(),
            text(&self.b_call_id),
            self.caller.clone(),
            self.callee.clone(),
            self.source.clone(),
            self.received_ms.to_string(),
            opt(&self.ringing_ms),
            opt(&self.answered_ms),
            opt(&self.ended_ms),
            opt(&self.duration_ms),
            opt(&self.final_code),
            text(&self.final_reason),
            text(&self.hangup_side),
            text(&self.end_reason),
            text(&self.rule),
            self.tags.clone(),
            text(&self.screening),
            text(&self.screening_reason),
            text(&self.attestation),
            text(&self.a_codec),
            text(&self.b_codec),
            self.transcoded.to_string(),
            opt(&self.a_packets),
            opt(&self.a_lost),
            opt(&self.a_jitter_us),
            opt(&self.b_packets),
            opt(&self.b_lost),
            opt(&self.b_jitter_us),
            text(&self.conference),
            text(&self.linked_id),
            self.origin.clone(),
            text(&self.recording),
            rfc3339(Some(self.received_ms)),
            rfc3339(self.answered_ms),
            rfc3339(self.ended_ms),
        ];
        let mut line = fields.map(|f| csv_field(&f)).join(",");
        line.push_str("\r\n");
        line
    }

    /// The record as JSON, with readable times beside the milliseconds.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            for (key, ms) in [
                ("received", Some(self.received_ms)),
                ("answered", self.answered_ms),
                ("ended", self.ended_ms),
            ] {
                map.insert(key.into(), serde_json::Value::String(rfc3339(ms)));
            }
        }
        value
    }
}

/// A record journalled before records named their origin was an INVITE's.
fn sip_origin() -> String {
    "sip".into()
}

/// The CSV export's header line.
pub fn csv_header() -> String {
    format!("{}\r\n", COLUMNS.join(","))
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Unix milliseconds as RFC 3339 UTC ("" for none).
pub fn rfc3339(ms: Option<i64>) -> String {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.round(jiff::Unit::Millisecond).unwrap_or(t).to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_are_unique_and_in_the_order_they_were_made() {
        let before = crate::clock::unix_now_ms();
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        assert!(ids.iter().all(|id| id.len() == 32));
        let ms = |id: &str| u64::from_str_radix(&id[..12], 16).expect("hex");
        assert!(ms(&ids[0]) >= before && ms(&ids[999]) <= crate::clock::unix_now_ms());
        assert!(ids.windows(2).all(|w| ms(&w[0]) <= ms(&w[1])));
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn csv_quotes_what_it_must_and_has_every_column() {
        let r = Record {
            id: "x".into(),
            caller: "alice".into(),
            final_reason: Some("Busy, \"really\"".into()),
            received_ms: 1_795_000_000_000,
            ..Record::default()
        };
        let line = r.csv_line();
        assert!(line.contains(",\"Busy, \"\"really\"\"\","), "{line}");
        assert!(line.contains("2026-11-18T"), "{line}");
        // Quoted commas aside, the line has one field per column.
        let unquoted = line.replace("\"Busy, \"\"really\"\"\"", "q");
        assert_eq!(unquoted.trim_end().split(',').count(), COLUMNS.len());
        assert_eq!(csv_header().trim_end().split(',').count(), COLUMNS.len());
    }

    #[test]
    fn json_carries_readable_times() {
        let r = Record {
            received_ms: 0,
            ended_ms: Some(1500),
            ..Record::default()
        };
        let v = r.to_json();
        assert_eq!(v["received"], "1970-01-01T00:00:00Z");
        assert_eq!(v["ended"], "1970-01-01T00:00:01.5Z");
        assert_eq!(v["answered"], "");
    }
}

//! Messages that do not parse or do not pass the strict check: answered 400 (with a phrase
//! naming the fault) whenever Via, From, To, Call-ID and CSeq can be read; otherwise
//! dropped, with one log line per source per minute. Counted by handling and reason.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::call::new_tag;
use crate::sip::message::{Malformed, Method, Request, Response};
use crate::sip::salvage::salvage;
use crate::sip::transport::{Destination, Transport};

use super::messages::{response_destination, warning_value};
use super::{Core, Output};

/// A source's drops are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Sources remembered for the log's rate limit (bounded under spoofed floods).
const MAX_LOGGED_SOURCES: usize = 10_000;

/// When each source last had a dropped message logged.
#[derive(Debug, Default)]
pub(super) struct DropLog {
    last: HashMap<IpAddr, Instant>,
}

impl DropLog {
    /// Whether a drop from `ip` should be logged now.
    fn due(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.last.len() >= MAX_LOGGED_SOURCES {
            self.last
                .retain(|_, at| now.duration_since(*at) < LOG_EVERY);
        }
        match self.last.get(&ip) {
            Some(at) if now.duration_since(*at) < LOG_EVERY => false,
            _ => {
                self.last.insert(ip, now);
                true
            }
        }
    }
}

/// The short `reason` label of a fault, for /metrics.
pub fn reason_label(why: &str) -> &'static str {
    let w = why.to_ascii_lowercase();
    if w.contains("content-length") {
        "content_length"
    } else if w.contains("request-uri") {
        "request_uri"
    } else if w.contains("start line") || w.contains("version") {
        "start_line"
    } else if w.contains("limit") || w.contains("larger") || w.contains("above") {
        "too_large"
    } else if w.contains("header") || w.contains("malformed") || w.contains("missing") {
        "header"
    } else {
        "not_sip"
    }
}

/// The fault as a reason phrase: the parser's words without its framing prefixes,
/// capitalized ("Content-Length exceeds the octets present").
fn fault_phrase(why: &str) -> String {
    let why = ["cannot frame message body: ", "malformed start line: "]
        .iter()
        .fold(why, |w, prefix| w.strip_prefix(prefix).unwrap_or(w));
    let mut chars = why.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "Bad Request".into(),
    }
}

impl Core {
    /// Bytes from `from` that did not parse (`why`): a 400 when they can be answered.
    pub fn handle_garbage(&mut self, from: &Destination, bytes: &[u8], why: &str, now: Instant) {
        if self
            .guard
            .lock()
            .admit(from.addr.ip(), true, None, now)
            .is_err()
        {
            return;
        }
        let reason = reason_label(why);
        // A stream whose framing was lost is closed; nothing of it can be answered.
        let salvaged = (!bytes.is_empty()).then(|| salvage(bytes)).flatten();
        let Some(request) = salvaged else {
            self.count_malformed("dropped", reason);
            if self.drop_log.due(from.addr.ip(), now) {
                tracing::warn!(from = %from.addr, transport = from.transport.as_str(), reason = why, "dropped a message that is not SIP or cannot be answered (one line per source per minute)");
            }
            return;
        };
        self.count_malformed("answered", reason);
        tracing::info!(from = %from.addr, method = %request.method, reason = why, "refused unparseable request with 400");
        let phrase = self.phrase_or(400, &fault_phrase(why)).to_owned();
        let out = request.bad_request(&phrase, &new_tag(), &self.config.sip.user_agent);
        let dest = match from.transport {
            Transport::Udp => Destination {
                addr: request.reply_to(from.addr),
                ..from.clone()
            },
            _ => from.clone(),
        };
        self.out.push_back(Output::Send(dest, out.into()));
    }

    /// A request that parsed but failed the strict check: answered (not an ACK).
    pub(super) fn refuse_malformed(&mut self, r: &Request, bad: Malformed, from: &Destination) {
        self.count_malformed("answered", reason_label(&bad.reason));
        tracing::info!(from = %from.addr, reason = %bad.reason, "refused malformed request");
        if r.method() == Method::Ack || r.top_via().is_none() {
            return;
        }
        let phrase = match bad.status {
            400 => self.phrase_or(400, &fault_phrase(&bad.reason)).to_owned(),
            status => self.phrase(status).to_owned(),
        };
        let mut resp = Response::to_request(r, bad.status, &phrase);
        let _ = resp.push_header("Warning", &warning_value(&bad.reason));
        let dest = response_destination(r, from);
        self.out.push_back(Output::Send(dest, resp.to_bytes()));
    }

    pub(super) fn count_malformed(&mut self, handling: &'static str, reason: &'static str) {
        *self
            .stats
            .lock()
            .malformed
            .entry((handling, reason))
            .or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_source_per_minute() {
        let mut log = DropLog::default();
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(log.due(a, t0));
        assert!(!log.due(a, t0 + Duration::from_secs(59)));
        assert!(log.due(b, t0 + Duration::from_secs(1)));
        assert!(log.due(a, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn faults_read_as_phrases_and_labels() {
        let why = "cannot frame message body: Content-Length exceeds the octets present";
        assert_eq!(
            fault_phrase(why),
            "Content-Length exceeds the octets present"
        );
        assert_eq!(reason_label(why), "content_length");
        let why = "malformed start line: bad Request-URI: invalid port";
        assert_eq!(fault_phrase(why), "Bad Request-URI: invalid port");
        assert_eq!(reason_label(why), "request_uri");
    }
}

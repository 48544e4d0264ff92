//! /metrics: the figures the server loop gathers on each scrape ([`Snapshot`]), rendered in
//! the Prometheus/OpenMetrics text format by the official `prometheus-client` crate.

use std::collections::BTreeMap;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

/// What a scrape reports, gathered by the server loop in one go.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub calls_active: u64,
    /// Calls in progress on each signalling shard, by shard (one entry unsharded).
    #[serde(default)]
    pub calls_active_by_shard: Vec<u64>,
    pub calls_started: u64,
    pub calls_answered: u64,
    /// New calls per second over the last 10 s.
    pub calls_per_second: f64,
    /// Final codes the callers got, calls and refused INVITEs alike.
    pub final_codes: BTreeMap<u16, u64>,
    pub registrations: u64,
    pub relay_streams: u64,
    pub transcoding_channels: u64,
    /// Conference rooms with members, and their members.
    pub conference_rooms: u64,
    pub conference_members: u64,
    /// `/events` subscribers now, and those closed for falling behind.
    #[serde(default)]
    pub event_subscribers: u64,
    #[serde(default)]
    pub event_subscribers_dropped: u64,
    /// Recordings: uploaded, failed uploads (each try), waiting in the spool, files that
    /// could not be written, and packets the recorder's queue had no room for.
    #[serde(default)]
    pub recordings_uploaded: u64,
    #[serde(default)]
    pub recording_upload_failures: u64,
    #[serde(default)]
    pub recordings_pending: u64,
    #[serde(default)]
    pub recordings_failed: u64,
    #[serde(default)]
    pub recording_dropped_packets: u64,
    pub relay_rtp_packets: u64,
    pub relay_rtp_bytes: u64,
    pub relay_stranger_packets: u64,
    pub relay_unassigned_packets: u64,
    pub relay_parked_port_pairs: u64,
    /// (decision, check, count).
    pub screening: Vec<(String, String, u64)>,
    /// (handling, reason, count).
    pub sip_malformed: Vec<(String, String, u64)>,
    pub cdr_stored: u64,
    pub cdr_write_failures: u64,
    /// Records journalled by this run and not yet in the database.
    pub cdr_queue_depth: u64,
    /// Journal bytes not yet in the database (the spool).
    pub cdr_spool_bytes: u64,
    pub cdr_database_up: bool,
    /// In a cluster: whether Redis answers, and the Redis requests that failed.
    pub cluster_redis_up: Option<bool>,
    pub cluster_redis_failures: u64,
    pub cluster_cdr_stream_appended: u64,
    pub cluster_cdr_stream_dropped: u64,
    /// Why call records cannot be kept now (journal unwritable, spool full), if so.
    pub cdr_records_failing: bool,
    pub cdr_spool_alarm: bool,
    pub cdr_journal_append_failures: u64,
    pub cdr_journal_syncs: u64,
    pub cdr_journal_sync_us: u64,
    pub cdr_journal_sync_failures: u64,
    /// Records waiting in memory for the journal to be writable again.
    pub cdr_records_held: u64,
    pub cdr_records_lost: u64,
    pub draining: bool,
    /// Messages the guard dropped unread, by reason (banned, rate, scanner).
    pub guard_dropped: Vec<(String, u64)>,
    /// Bans imposed, by reason (flood, auth, scanner), and sources banned now.
    pub guard_bans: Vec<(String, u64)>,
    pub guard_banned_sources: u64,
    /// Sources the guard remembers, and those it saw while full (not metered).
    pub guard_sources: u64,
    pub guard_untracked: u64,
    /// Credentials that failed (wrong password, unknown user, replayed nonce).
    pub auth_failures: u64,
    /// INVITEs refused because their source had `guard.max_calls_per_source` calls.
    pub guard_call_limit_refused: u64,
    /// Probed gateways: (gateway URI, up, failed probes in a row).
    #[serde(default)]
    pub gateways: Vec<(String, bool, u32)>,
}

type Labels = Vec<(String, String)>;

/// The snapshot in the text exposition format.
pub fn render(s: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("warden");
    let gauge = |r: &mut Registry, name: &str, help: &str, v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        r.register(name, help, g);
    };
    let counter = |r: &mut Registry, name: &str, help: &str, v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        r.register(name, help, c);
    };
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let labelled =
        |r: &mut Registry, name: &str, help: &str, label: &str, values: &[(String, u64)]| {
            let family = Family::<Labels, Counter>::default();
            for (value, count) in values {
                family
                    .get_or_create(&vec![(label.to_owned(), value.clone())])
                    .inc_by(*count);
            }
            r.register(name, help, family);
        };
    gauge(
        &mut r,
        "calls_active",
        "Calls in progress",
        n(s.calls_active),
    );
    counter(&mut r, "calls", "Calls started", s.calls_started);
    counter(&mut r, "calls_answered", "Calls answered", s.calls_answered);
    let cps = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    cps.set(s.calls_per_second);
    r.register(
        "calls_per_second",
        "New calls per second over the last 10 seconds",
        cps,
    );
    let codes = Family::<Labels, Counter>::default();
    for (code, count) in &s.final_codes {
        codes
            .get_or_create(&vec![("code".into(), code.to_string())])
            .inc_by(*count);
    }
    r.register(
        "call_attempts",
        "Call attempts by the final SIP code the caller got",
        codes,
    );
    gauge(
        &mut r,
        "registrations",
        "Registered contacts",
        n(s.registrations),
    );
    gauge(
        &mut r,
        "relay_streams",
        "Media streams open in the relay",
        n(s.relay_streams),
    );
    gauge(
        &mut r,
        "transcoding_channels",
        "Media streams Warden transcodes",
        n(s.transcoding_channels),
    );
    gauge(
        &mut r,
        "conference_rooms",
        "Conference rooms with members",
        n(s.conference_rooms),
    );
    gauge(
        &mut r,
        "conference_members",
        "Calls in conference rooms",
        n(s.conference_members),
    );
    gauge(
        &mut r,
        "event_subscribers",
        "Subscribers to the /events stream",
        n(s.event_subscribers),
    );
    counter(
        &mut r,
        "event_subscribers_dropped",
        "Event stream subscribers closed for falling too far behind",
        s.event_subscribers_dropped,
    );
    counter(
        &mut r,
        "recordings_uploaded",
        "Recordings uploaded",
        s.recordings_uploaded,
    );
    counter(
        &mut r,
        "recording_upload_failures",
        "Recording uploads that failed (each try; the file stays in the spool)",
        s.recording_upload_failures,
    );
    gauge(
        &mut r,
        "recordings_pending",
        "Recordings complete and waiting for their upload",
        n(s.recordings_pending),
    );
    counter(
        &mut r,
        "recordings_failed",
        "Recordings whose file could not be written",
        s.recordings_failed,
    );
    counter(
        &mut r,
        "recording_dropped_packets",
        "Recorded packets dropped: the recorder's queue was full",
        s.recording_dropped_packets,
    );
    counter(
        &mut r,
        "relay_rtp_packets",
        "RTP packets received by the relay",
        s.relay_rtp_packets,
    );
    counter(
        &mut r,
        "relay_rtp_bytes",
        "RTP bytes received by the relay",
        s.relay_rtp_bytes,
    );
    counter(
        &mut r,
        "relay_stranger_packets",
        "Packets from a source other than a party's latched address, dropped (RTP injection, RTP Bleed)",
        s.relay_stranger_packets,
    );
    counter(
        &mut r,
        "relay_unassigned_packets",
        "Packets to a media port no call has now (late packets of an ended call, scanners), dropped",
        s.relay_unassigned_packets,
    );
    gauge(
        &mut r,
        "relay_parked_port_pairs",
        "RTP/RTCP port pairs kept bound between calls",
        n(s.relay_parked_port_pairs),
    );
    let screening = Family::<Labels, Counter>::default();
    for (decision, check, count) in &s.screening {
        screening
            .get_or_create(&vec![
                ("decision".into(), decision.clone()),
                ("check".into(), check.clone()),
            ])
            .inc_by(*count);
    }
    r.register(
        "screening_decisions",
        "Screening decisions by outcome and deciding check",
        screening,
    );
    let malformed = Family::<Labels, Counter>::default();
    for (handling, reason, count) in &s.sip_malformed {
        malformed
            .get_or_create(&vec![
                ("handling".into(), handling.clone()),
                ("reason".into(), reason.clone()),
            ])
            .inc_by(*count);
    }
    r.register(
        "sip_malformed",
        "Malformed SIP messages, answered 400 or dropped, by reason",
        malformed,
    );
    labelled(
        &mut r,
        "guard_dropped",
        "SIP messages dropped unread by the guard, by reason",
        "reason",
        &s.guard_dropped,
    );
    labelled(
        &mut r,
        "guard_bans",
        "Sources banned, by reason",
        "reason",
        &s.guard_bans,
    );
    gauge(
        &mut r,
        "guard_banned_sources",
        "Sources banned now",
        n(s.guard_banned_sources),
    );
    gauge(
        &mut r,
        "guard_sources",
        "Sources the guard keeps state for",
        n(s.guard_sources),
    );
    counter(
        &mut r,
        "guard_untracked",
        "Requests from sources seen while the guard's table was full (not metered)",
        s.guard_untracked,
    );
    counter(
        &mut r,
        "auth_failures",
        "Digest credentials that failed (wrong password, unknown user, replay)",
        s.auth_failures,
    );
    counter(
        &mut r,
        "guard_call_limit_refused",
        "INVITEs refused because their source had its most concurrent calls",
        s.guard_call_limit_refused,
    );
    let by_shard = Family::<Labels, Gauge>::default();
    for (shard, calls) in s.calls_active_by_shard.iter().enumerate() {
        let label = vec![("shard".to_owned(), shard.to_string())];
        by_shard.get_or_create(&label).set(n(*calls));
    }
    r.register(
        "shard_calls_active",
        "Calls in progress on each signalling shard (server.shards)",
        by_shard,
    );
    let up = Family::<Labels, Gauge>::default();
    let failures = Family::<Labels, Gauge>::default();
    for (gateway, is_up, failed) in &s.gateways {
        let label = vec![("gateway".to_owned(), gateway.clone())];
        up.get_or_create(&label).set(i64::from(*is_up));
        failures.get_or_create(&label).set(i64::from(*failed));
    }
    r.register(
        "gateway_up",
        "Probed gateways: 1 while they answer OPTIONS, 0 once down",
        up,
    );
    r.register(
        "gateway_probe_failures",
        "Probed gateways: failed probes in a row",
        failures,
    );
    counter(
        &mut r,
        "cdr_stored",
        "Call record writes stored in the database",
        s.cdr_stored,
    );
    counter(
        &mut r,
        "cdr_write_failures",
        "Failed call record database writes",
        s.cdr_write_failures,
    );
    gauge(
        &mut r,
        "cdr_queue_depth",
        "Call record writes waiting for the database",
        n(s.cdr_queue_depth),
    );
    gauge(
        &mut r,
        "cdr_spool_bytes",
        "Bytes of the call record journal not yet in the database",
        n(s.cdr_spool_bytes),
    );
    gauge(
        &mut r,
        "cdr_database_up",
        "1 when the last call record write worked",
        i64::from(s.cdr_database_up),
    );
    if let Some(up) = s.cluster_redis_up {
        gauge(
            &mut r,
            "cluster_redis_up",
            "1 while Redis answers this node's requests (the cluster's shared counts)",
            i64::from(up),
        );
        counter(
            &mut r,
            "cluster_redis_failures",
            "Redis requests that failed or timed out (calls then follow cluster.on_redis_down)",
            s.cluster_redis_failures,
        );
        counter(
            &mut r,
            "cluster_cdr_stream_appended",
            "Closed call records appended to the billing stream (warden:cdrs)",
            s.cluster_cdr_stream_appended,
        );
        counter(
            &mut r,
            "cluster_cdr_stream_dropped",
            "Closed call records not streamed: held too long while Redis was away (the database has them)",
            s.cluster_cdr_stream_dropped,
        );
    }
    gauge(
        &mut r,
        "cdr_records_failing",
        "1 while call records cannot be kept (journal unwritable or spool full): new calls get 503",
        i64::from(s.cdr_records_failing),
    );
    gauge(
        &mut r,
        "cdr_spool_alarm",
        "1 while the journal is past 80% of cdr.spool_max_bytes",
        i64::from(s.cdr_spool_alarm),
    );
    counter(
        &mut r,
        "cdr_journal_append_failures",
        "Journal appends that failed (the records wait in memory and are retried)",
        s.cdr_journal_append_failures,
    );
    counter(
        &mut r,
        "cdr_journal_syncs",
        "fdatasync calls that made journal appends durable",
        s.cdr_journal_syncs,
    );
    counter(
        &mut r,
        "cdr_journal_sync_microseconds",
        "Time spent in journal fdatasync",
        s.cdr_journal_sync_us,
    );
    counter(
        &mut r,
        "cdr_journal_sync_failures",
        "Journal fdatasync calls that failed",
        s.cdr_journal_sync_failures,
    );
    gauge(
        &mut r,
        "cdr_records_held",
        "Call records waiting in memory for the journal to be writable",
        n(s.cdr_records_held),
    );
    counter(
        &mut r,
        "cdr_records_lost",
        "Call records given up after the journal stayed unwritable too long",
        s.cdr_records_lost,
    );
    gauge(
        &mut r,
        "draining",
        "1 while shutting down (new calls refused)",
        i64::from(s.draining),
    );
    let mut text = String::new();
    encode(&mut text, &r)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_a_prometheus_parser_reads() {
        let s = Snapshot {
            calls_active: 2,
            calls_started: 7,
            final_codes: BTreeMap::from([(200, 5), (486, 2)]),
            screening: vec![("block".into(), "quota".into(), 3)],
            calls_per_second: 0.5,
            guard_dropped: vec![("rate".into(), 40)],
            auth_failures: 3,
            ..Snapshot::default()
        };
        let text = render(&s).unwrap();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let value = |name: &str, label: Option<(&str, &str)>| {
            scrape
                .samples
                .iter()
                .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
                .map(|x| match x.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
        };
        assert_eq!(value("warden_calls_active", None), Some(2.0));
        assert_eq!(value("warden_calls_total", None), Some(7.0));
        assert_eq!(
            value("warden_call_attempts_total", Some(("code", "486"))),
            Some(2.0)
        );
        assert_eq!(
            value("warden_screening_decisions_total", Some(("check", "quota"))),
            Some(3.0)
        );
        assert_eq!(value("warden_calls_per_second", None), Some(0.5));
        assert_eq!(
            value("warden_guard_dropped_total", Some(("reason", "rate"))),
            Some(40.0)
        );
        assert_eq!(value("warden_auth_failures_total", None), Some(3.0));
    }
}

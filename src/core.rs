//! The signalling core, sans-IO: messages and time in, bytes to send and records to store out.
//! It owns the transaction layer, the registrar and every call; the driver in `server` feeds it.
//!
//! One core owns its calls outright (no locks): `handle_message` / `handle_timeout` mutate,
//! `poll_output` drains what the driver must do, `poll_timeout` says when to call back.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use warden_media::Relay as MediaRelay;
use warden_media::codec::{Codec, FormatParams};
use warden_media::dtmf::Digit;
use warden_media::prompt::Prompts;
use warden_media::{LegCodec, MediaEvent, Playback, Side as MediaSide, StreamId};

use crate::anchor::negotiate::Role;
use crate::anchor::{AnchorError, MediaSession, is_sdp, media_side};
use crate::call::conference::{self, Rooms};
use crate::call::digits::{Collected, DigitCollector, DigitSpec};
use crate::call::{
    AfterPrompt, Branch, BridgeAttempt, Call, Leg, PendingOk, Program, Relay, Side, State, new_tag,
};
use crate::cdr::Record;
use crate::config::Config;
use crate::dialplan::{Action, BridgeMode, CallFacts, Dialplan, SessionCase};
use crate::dns::{Found, Lookup, literal_destination};
use crate::guard::Guard;
use crate::registrar::{AuthKind, Change, Registrar};
use crate::sip::dtmf_relay;
use crate::sip::message::{Malformed, Message, Method, NameAddr, Request, Response, Uri, Via};
use crate::sip::transaction::{Transactions, TxEvent, TxKey};
use crate::sip::transport::{Destination, Transport};

mod attended;
mod transfer;

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    Send(Destination, Bytes),
    Store(Change),
    /// Look a bridge target up in DNS; answer with `Core::handle_resolved(call, attempt, ..)`.
    Resolve {
        call: u64,
        attempt: u64,
        lookup: Lookup,
    },
    /// Screen a call; answer with `Core::handle_screened(call, outcome)`.
    Screen(crate::screening::Request),
    /// A screened call is over after `answered_s` seconds of talk (its quotas free up).
    Screened {
        call: u64,
        answered_s: u64,
    },
    /// The caller keyed in the challenge's code: the screener admits the call.
    ChallengePassed {
        call: u64,
    },
    /// A call's record, newly begun or updated (journal it: a higher `rev` replaces it).
    Record(Box<Record>),
}

const ALLOW: &str =
    "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, UPDATE, INFO, MESSAGE, NOTIFY, REFER, PRACK";

/// Counters an operator (and the tests) can read.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub malformed_dropped: u64,
    pub malformed_answered: u64,
    pub calls_started: u64,
    pub calls_answered: u64,
    /// Calls (and INVITEs refused before they became calls) by the final code the caller got.
    pub final_codes: std::collections::BTreeMap<u16, u64>,
}

/// A live call as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveCall {
    pub id: u64,
    pub record: String,
    pub a_call_id: String,
    pub caller: String,
    pub callee: String,
    pub source: String,
    /// calling, ringing, answered, confirmed (media flows) or ending.
    pub state: &'static str,
    pub rule: Option<String>,
    pub received_ms: i64,
    pub answered_ms: Option<i64>,
    /// Seconds since the call came in.
    pub age_s: i64,
    pub screening: Option<String>,
}

/// Where a client transaction's answer belongs.
#[derive(Debug, Clone)]
enum ClientPurpose {
    Invite {
        call: u64,
        branch: usize,
    },
    Bye {
        call: u64,
    },
    Relay {
        call: u64,
    },
    /// Warden's re-INVITE moving a party into another call (attended transfer): the
    /// side of `call` it now holds.
    Join {
        call: u64,
        side: Side,
    },
    /// CANCELs and the BYE to a losing fork: nobody waits for their answer.
    Untracked,
}

pub struct Core {
    config: Config,
    tx: Transactions,
    pub registrar: Registrar,
    calls: HashMap<u64, Call>,
    next_call: u64,
    /// (Call-ID, our tag) -> (call, side or branch index for unanswered branches).
    dialogs: HashMap<(String, String), (u64, Side)>,
    server_invites: HashMap<TxKey, u64>,
    client: HashMap<TxKey, ClientPurpose>,
    relays: HashMap<TxKey, Relay>,
    wakes: BTreeSet<(Instant, u64)>,
    advertised: HashMap<Transport, String>,
    out: VecDeque<Output>,
    next_expiry_sweep: Option<Instant>,
    /// The media relay every call's SDP is anchored to.
    pub media: MediaRelay,
    /// Codecs offered to the far leg for transcoding, in preference order.
    transcodable: Vec<&'static Codec>,
    /// Announcements, encoded per codec on first use.
    prompts: Prompts,
    /// How calls are routed.
    dialplan: Arc<Dialplan>,
    /// Bridge attempts are numbered so a late DNS answer finds (or misses) its own.
    next_attempt: u64,
    /// S-CSCFs whose requests Warden serves as an IMS application server.
    trusted_scscf: Vec<(std::net::IpAddr, u8)>,
    /// Wall-clock milliseconds of the latest input (call records' times; in seconds,
    /// registrations expire by it and rules with time windows look at it).
    unix_ms: u64,
    /// The latest input's time (calls ending measure their talk time by it).
    clock: Instant,
    /// Who writes the call records: this instance and this run of it.
    instance: String,
    boot: String,
    /// Shutting down: new calls get 503 with this Retry-After (seconds).
    draining: Option<u64>,
    /// The operator's reason phrases by code (`sip.reason_phrases`).
    phrases: HashMap<u16, String>,
    /// Conference rooms and the calls in them.
    pub rooms: Rooms,
    pub stats: Stats,
    /// Flood and abuse protection: rates, bans, calls per source.
    pub guard: Guard,
    /// Sources whose INVITEs need no credentials (`calls.trusted`, the S-CSCFs).
    calls_trusted: Vec<(std::net::IpAddr, u8)>,
}

impl Core {
    /// `advertised`: host:port per transport for Via and Contact.
    pub fn new(
        config: Config,
        registrar: Registrar,
        advertised: HashMap<Transport, String>,
        media: MediaRelay,
        prompts: Prompts,
    ) -> Core {
        let instance = config.server.instance_name();
        Core {
            phrases: config.sip.phrases(),
            transcodable: config.media.transcodable(),
            trusted_scscf: config.ims.trusted(),
            guard: Guard::new(&config.guard, &config.ims.trusted()),
            calls_trusted: [config.calls.trusted(), config.ims.trusted()].concat(),
            next_attempt: 1,
            tx: Transactions::new(config.timers()),
            config,
            registrar,
            calls: HashMap::new(),
            next_call: 1,
            dialogs: HashMap::new(),
            server_invites: HashMap::new(),
            client: HashMap::new(),
            relays: HashMap::new(),
            wakes: BTreeSet::new(),
            advertised,
            out: VecDeque::new(),
            next_expiry_sweep: None,
            media,
            prompts,
            dialplan: Arc::new(Dialplan::builtin()),
            unix_ms: 0,
            clock: Instant::now(),
            instance,
            boot: crate::cdr::record::new_id()[..16].to_owned(),
            draining: None,
            rooms: Rooms::default(),
            stats: Stats::default(),
        }
    }

    /// Route new calls by `plan` from now on (calls in progress keep their actions).
    pub fn set_dialplan(&mut self, plan: Dialplan) {
        tracing::info!(origin = %plan.origin, rules = plan.rules.len(), "dialplan active");
        self.dialplan = Arc::new(plan);
    }

    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Shutting down: new calls get 503 with Retry-After `retry_after_s` from now on.
    pub fn stop_taking_calls(&mut self, retry_after_s: u64) {
        self.draining = Some(retry_after_s);
    }

    /// The live calls, oldest first.
    pub fn live_calls(&self) -> Vec<LiveCall> {
        let mut out: Vec<LiveCall> = self
            .calls
            .values()
            .map(|c| LiveCall {
                id: c.id,
                record: c.record.id.clone(),
                a_call_id: c.a.call_id.clone(),
                caller: c.caller.clone(),
                callee: c.callee.clone(),
                source: c.record.source.clone(),
                state: match c.state {
                    State::Calling if c.record.ringing_ms.is_some() => "ringing",
                    State::Calling => "calling",
                    State::Answered => "answered",
                    State::Confirmed => "confirmed",
                    State::Ending | State::Done => "ending",
                },
                rule: c.record.rule.clone(),
                received_ms: c.record.received_ms,
                answered_ms: c.record.answered_ms,
                age_s: (self.unix_ms as i64 - c.record.received_ms).max(0) / 1000,
                screening: c.record.screening.clone(),
            })
            .collect();
        out.sort_by_key(|c| c.id);
        out
    }

    /// End call `id` now, for `reason`: BYE to both parties of an answered call; a caller
    /// still waiting gets `status` and its callees a CANCEL. False when there is no such call.
    pub fn hang_up(&mut self, id: u64, reason: &'static str, status: u16, now: Instant) -> bool {
        let Some(mut call) = self.calls.remove(&id) else {
            return false;
        };
        let _span = call.enter();
        tracing::info!(call = id, caller = %call.caller, callee = %call.callee, reason, "Warden ends the call");
        call.note_end("warden", reason);
        match call.state {
            State::Calling if !call.abandoned => {
                let announcing = call.announcing.is_some();
                if announcing {
                    self.stop_prompt(&mut call);
                }
                call.digits = None;
                self.abandon(&mut call, status, now);
                // As for a CANCEL: done now unless a branch, a screening decision or a
                // DNS answer is still to come (each ends an abandoned call itself).
                if announcing && call.all_branches_final() {
                    call.state = State::Done;
                }
            }
            State::Answered | State::Confirmed => {
                call.pending_ok = None;
                self.send_bye(&mut call, Side::A, now);
                if call.answered.is_some() {
                    self.send_bye(&mut call, Side::B, now);
                }
                if call.outstanding_byes == 0 {
                    call.state = State::Done;
                }
            }
            _ => {}
        }
        self.schedule(&call);
        self.finish_or_keep(call);
        self.drain(now, self.unix_s());
        true
    }

    /// Shutdown stops waiting for calls that would not end (their BYEs unanswered): close
    /// their records now, so the next start does not take them for a crash's.
    pub fn close_records(&mut self, reason: &'static str) {
        let ids: Vec<u64> = self.calls.keys().copied().collect();
        for id in ids {
            if let Some(mut call) = self.calls.remove(&id) {
                call.note_end("warden", reason);
                self.ended_record(&mut call);
                self.calls.insert(id, call);
            }
        }
    }

    /// End every call (shutdown after its grace time); returns how many there were.
    pub fn hang_up_all(&mut self, reason: &'static str, now: Instant) -> usize {
        let ids: Vec<u64> = self.calls.keys().copied().collect();
        for id in &ids {
            self.hang_up(*id, reason, 503, now);
        }
        ids.len()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.tx.poll_timeout(),
            self.wakes.first().map(|(t, _)| *t),
            self.next_expiry_sweep,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Bytes that were not SIP: counted and dropped (nothing could be answered).
    pub fn handle_garbage(&mut self, from: &Destination, why: &str) {
        self.stats.malformed_dropped += 1;
        tracing::debug!(from = %from.addr, reason = why, "dropped unparseable message");
    }

    /// A parsed message arrived from `from`; `unix_ms` is wall-clock time (registrations,
    /// dialplan time windows, call records).
    pub fn handle_message(
        &mut self,
        message: Message,
        from: Destination,
        now: Instant,
        unix_ms: u64,
    ) {
        let unix_s = self.set_wall_clock(unix_ms);
        self.clock = self.clock.max(now);
        let (is_request, agent) = match &message {
            Message::Request(r) => (true, r.header("User-Agent")),
            Message::Response(_) => (false, None),
        };
        if let Err(why) = self
            .guard
            .admit(from.addr.ip(), is_request, agent.as_deref(), now)
        {
            tracing::trace!(from = %from.addr, reason = why.as_str(), "dropped by the guard");
            return;
        }
        match message {
            Message::Request(mut r) => {
                if let Err(bad) = r.check() {
                    self.stats.malformed_answered += 1;
                    tracing::info!(from = %from.addr, reason = %bad.reason, "refused malformed request");
                    if r.method() != Method::Ack && r.top_via().is_some() {
                        let mut resp =
                            Response::to_request(&r, bad.status, self.phrase(bad.status));
                        let _ = resp.push_header("Warning", &warning_value(&bad.reason));
                        let dest = response_destination(&r, &from);
                        self.out.push_back(Output::Send(dest, resp.to_bytes()));
                    }
                    return;
                }
                let dest = Destination {
                    conn: from.conn,
                    ..response_destination(&r, &from)
                };
                r.stamp_via(from.addr);
                self.tx.receive(Message::Request(r), dest, now);
            }
            Message::Response(r) => {
                if let Err(bad) = r.check() {
                    self.stats.malformed_dropped += 1;
                    tracing::debug!(from = %from.addr, reason = %bad.reason, "dropped malformed response");
                    return;
                }
                self.tx.receive(Message::Response(r), from, now);
            }
        }
        if self.next_expiry_sweep.is_none() {
            self.next_expiry_sweep = Some(now + Duration::from_secs(1));
        }
        self.drain(now, unix_s);
    }

    pub fn handle_timeout(&mut self, now: Instant, unix_ms: u64) {
        let unix_s = self.set_wall_clock(unix_ms);
        self.clock = self.clock.max(now);
        self.tx.handle_timeout(now);
        while let Some(&(at, id)) = self.wakes.first() {
            if at > now {
                break;
            }
            self.wakes.remove(&(at, id));
            self.on_call_tick(id, now);
        }
        if self.next_expiry_sweep.is_some_and(|t| t <= now) {
            for change in self.registrar.expire(unix_s) {
                self.out.push_back(Output::Store(change));
            }
            self.next_expiry_sweep = Some(now + Duration::from_secs(1));
        }
        self.drain(now, unix_s);
    }

    /// The reason phrase for `status` in responses Warden generates: the operator's, else
    /// the standard one.
    fn phrase(&self, status: u16) -> &str {
        self.phrases
            .get(&status)
            .map_or_else(|| reason_phrase(status), String::as_str)
    }

    /// A relayed callee response keeps its phrase unless the operator asked for theirs.
    fn relayed_phrase(&self, out: &mut Response) {
        if self.config.sip.rewrite_relayed_phrases
            && let Some(text) = self.phrases.get(&out.status())
        {
            out.set_reason(text);
        }
    }

    fn set_wall_clock(&mut self, unix_ms: u64) -> u64 {
        self.unix_ms = unix_ms;
        self.unix_s()
    }

    /// The latest input's wall-clock time in seconds.
    fn unix_s(&self) -> u64 {
        self.unix_ms / 1000
    }

    /// This run's id in the call records (crash recovery closes other runs' open ones).
    pub fn boot(&self) -> &str {
        &self.boot
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn drain(&mut self, now: Instant, unix_s: u64) {
        while let Some(event) = self.tx.poll_event() {
            match event {
                TxEvent::Send(dest, m) => self.out.push_back(Output::Send(dest, m.to_bytes())),
                TxEvent::Request(key, req, from) => self.on_request(key, req, from, now, unix_s),
                TxEvent::Response(key, resp) => self.on_response(key, resp, now),
                TxEvent::Stray(Message::Request(r), _) if r.method() == Method::Ack => {
                    self.on_ack(r)
                }
                TxEvent::Stray(Message::Response(r), _) => self.on_stray_response(r),
                TxEvent::Stray(_, _) => {}
                TxEvent::Timeout(key) => self.on_tx_timeout(key, now),
            }
        }
    }

    // ----- building messages -------------------------------------------------------------

    fn local_host(&self, transport: Transport) -> String {
        self.advertised
            .get(&transport)
            .or_else(|| self.advertised.values().next())
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:5060".into())
    }

    fn contact(&self, transport: Transport) -> String {
        match transport {
            Transport::Udp => format!("<sip:warden@{}>", self.local_host(transport)),
            Transport::Tcp => format!("<sip:warden@{};transport=tcp>", self.local_host(transport)),
            // RFC 5630: a SIPS URI asks for TLS on every hop to it.
            Transport::Tls => format!("<sips:warden@{}>", self.local_host(transport)),
        }
    }

    fn via(&self, transport: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch=z9hG4bK{branch};rport",
            transport.as_str(),
            self.local_host(transport)
        )
    }

    fn respond(
        &mut self,
        key: &TxKey,
        req: &Request,
        status: u16,
        tag: Option<&str>,
        now: Instant,
    ) {
        self.respond_warning(key, req, status, tag, None, now);
    }

    /// A response with a `Warning: 399` saying why (RFC 3261 20.43), for refusals a person
    /// reading a trace should understand.
    fn respond_warning(
        &mut self,
        key: &TxKey,
        req: &Request,
        status: u16,
        tag: Option<&str>,
        warning: Option<&str>,
        now: Instant,
    ) {
        let mut resp = Response::to_request(req, status, self.phrase(status));
        if let Some(w) = warning {
            let _ = resp.push_header("Warning", &warning_value(w));
        }
        if status > 100 {
            resp.set_to_tag(tag.map(str::to_owned).unwrap_or_else(new_tag).as_str());
        }
        let _ = resp.push_header("Server", &self.config.sip.user_agent);
        if matches!(status, 405 | 501) || (req.method() == Method::Options && status == 200) {
            let _ = resp.push_header("Allow", ALLOW);
        }
        self.tx.respond(key, resp, now);
    }

    /// A request inside `leg` (increments its CSeq unless `cseq` is given, as for ACK/CANCEL).
    fn leg_request(&self, leg: &mut Leg, method: Method, cseq: Option<u32>) -> Option<Request> {
        let seq = match cseq {
            Some(s) => s,
            None => {
                leg.cseq += 1;
                leg.cseq
            }
        };
        let uri = Uri::parse(&leg.target).ok()?;
        let to = match &leg.remote_tag {
            Some(t) => format!("{};tag={t}", leg.remote_uri),
            None => leg.remote_uri.clone(),
        };
        let mut builder = Request::builder(method, &uri)
            .header("Via", &self.via(leg.dest.transport, &new_tag()))
            .max_forwards(70);
        for route in &leg.route {
            builder = builder.header("Route", route);
        }
        builder
            .header("From", &format!("{};tag={}", leg.local_uri, leg.local_tag))
            .header("To", &to)
            .header("Call-ID", &leg.call_id)
            .cseq(seq)
            .header("Contact", &self.contact(leg.dest.transport))
            .header("User-Agent", &self.config.sip.user_agent)
            .build()
            .ok()
    }

    /// The next request into a side's dialog, with where it goes.
    fn side_request(
        &self,
        call: &mut Call,
        side: Side,
        method: Method,
        cseq: Option<u32>,
    ) -> Option<(Request, Destination)> {
        let leg = call.leg_mut(side)?;
        let request = self.leg_request(leg, method, cseq)?;
        Some((request, leg.dest.clone()))
    }

    fn send_in_dialog(
        &mut self,
        req: Request,
        dest: Destination,
        purpose: ClientPurpose,
        now: Instant,
    ) -> Option<TxKey> {
        let key = self.tx.send_request(req, dest, now)?;
        self.client.insert(key.clone(), purpose);
        Some(key)
    }

    // ----- media ------------------------------------------------------------------------

    /// The body `from` sent, anchored to the relay when it is SDP.
    fn anchor(
        &mut self,
        media: &mut MediaSession,
        from: Side,
        body: &Bytes,
        content_type: Option<&str>,
        role: Role,
    ) -> Result<Bytes, AnchorError> {
        if body.is_empty() || !is_sdp(content_type) {
            return Ok(body.clone());
        }
        media
            .anchor(&mut self.media, from, body, role, &self.transcodable)
            .map(Bytes::from)
    }

    /// For bodies in responses and ACKs, which cannot be refused: when anchoring fails the
    /// description goes on unchanged (media then flows directly) and the log says why.
    fn anchor_or_pass(
        &mut self,
        media: &mut MediaSession,
        from: Side,
        body: &Bytes,
        content_type: Option<&str>,
        role: Role,
    ) -> Bytes {
        self.anchor(media, from, body, content_type, role)
            .unwrap_or_else(|e| {
                tracing::warn!(from = from.name(), error = %e, "media not anchored; SDP relayed as is");
                body.clone()
            })
    }

    fn refuse_media(
        &mut self,
        key: &TxKey,
        req: &Request,
        error: AnchorError,
        now: Instant,
    ) -> u16 {
        let status = match &error {
            AnchorError::Sdp(_) => 400,
            AnchorError::Media(_) => 503,
        };
        if status == 503 {
            tracing::warn!(error = %error, method = %req.method(), "refused: no media ports free");
        } else {
            tracing::info!(error = %error, method = %req.method(), "refused: malformed SDP");
        }
        self.respond_warning(key, req, status, None, Some(&error.to_string()), now);
        status
    }

    /// The check interval for media timeouts: fine enough that a call ends close to the
    /// configured time, coarse enough to cost nothing.
    fn media_check_interval(&self) -> Duration {
        (self.media_timeout() / 6).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    fn media_timeout(&self) -> Duration {
        Duration::from_secs(self.config.media.rtp_timeout_s)
    }

    // ----- requests ---------------------------------------------------------------------

    fn on_request(
        &mut self,
        key: TxKey,
        req: Request,
        from: Destination,
        now: Instant,
        unix_s: u64,
    ) {
        let method = req.method();
        if req.to_tag().is_some() {
            return self.on_in_dialog(key, req, now);
        }
        if let Some(required) = req.header("Require").filter(|_| method != Method::Cancel) {
            let mut resp = Response::to_request(&req, 420, "Bad Extension");
            resp.set_to_tag(&new_tag());
            let _ = resp.push_header("Unsupported", &required);
            self.tx.respond(&key, resp, now);
            return;
        }
        match method {
            Method::Register => self.on_register(key, req, from, unix_s, now),
            Method::Invite => self.on_invite(key, req, from, now, unix_s),
            Method::Cancel => self.on_cancel(key, req, now),
            Method::Options => self.respond(&key, &req, 200, None, now),
            Method::Other(_) => self.respond(&key, &req, 501, None, now),
            _ => self.respond(&key, &req, 405, None, now),
        }
    }

    fn on_register(
        &mut self,
        key: TxKey,
        req: Request,
        from: Destination,
        unix_s: u64,
        now: Instant,
    ) {
        let user = req.to().and_then(|t| t.uri.user()).unwrap_or_default();
        if self.registrar.register_needs_auth()
            && self.refused_credentials(&key, &req, &user, AuthKind::Register, &from, now)
        {
            return;
        }
        let outcome = self.registrar.register(&req, &from, unix_s);
        for change in outcome.changes {
            self.out.push_back(Output::Store(change));
        }
        self.tx.respond(&key, outcome.response, now);
    }

    /// Check `req`'s credentials for `user`; when they do not do, answer the challenge or
    /// refusal, count a failure toward the source's ban, and return true.
    fn refused_credentials(
        &mut self,
        key: &TxKey,
        req: &Request,
        user: &str,
        kind: AuthKind,
        from: &Destination,
        now: Instant,
    ) -> bool {
        let Err(refusal) = self.registrar.authenticate(req, user, kind, self.unix_s()) else {
            return false;
        };
        if refusal.failed {
            self.guard.auth_failed(from.addr.ip(), now);
        }
        self.tx.respond(key, *refusal.response, now);
        true
    }

    fn on_invite(
        &mut self,
        key: TxKey,
        req: Request,
        from: Destination,
        now: Instant,
        unix_s: u64,
    ) {
        if req.max_forwards() == Some(0) {
            return self.respond(&key, &req, 483, None, now);
        }
        if self.config.calls.auth
            && !crate::dialplan::in_networks(from.addr.ip(), &self.calls_trusted)
        {
            // An untrusted source calls as one of our users, and must prove it.
            let caller = req.from().and_then(|f| f.uri.user()).unwrap_or_default();
            if self.refused_credentials(&key, &req, &caller, AuthKind::Invite, &from, now) {
                return;
            }
        }
        // 100 Trying at once: the caller stops retransmitting while we look the callee up.
        self.respond(&key, &req, 100, None, now);
        let callee = req.uri().user().unwrap_or_default();
        let (Some(from_hdr), Some(_), Some(call_id)) = (req.from(), req.to(), req.call_id()) else {
            return self.respond(&key, &req, 400, None, now);
        };
        let caller = from_hdr
            .uri
            .user()
            .unwrap_or_else(|| from_hdr.uri.to_string());
        if let Some(retry_after) = self.draining {
            tracing::info!(%caller, %callee, "shutting down; new call refused with 503");
            let mut resp = Response::to_request(&req, 503, self.phrase(503));
            resp.set_to_tag(&new_tag());
            let _ = resp.push_header("Retry-After", &retry_after.to_string());
            self.tx.respond(&key, resp, now);
            return self.refused_attempt(&req, &from, 503, "shutdown", None);
        }
        if self.calls.len() >= self.config.calls.max_calls {
            tracing::warn!(
                limit = self.config.calls.max_calls,
                "call limit reached; refusing with 503"
            );
            self.respond(&key, &req, 503, None, now);
            return self.refused_attempt(&req, &from, 503, "call limit", None);
        }
        if !self.guard.admit_call(from.addr.ip()) {
            tracing::warn!(source = %from.addr.ip(), limit = self.config.guard.max_calls_per_source, "calls per source limit reached; refusing with 503");
            self.respond(&key, &req, 503, None, now);
            return self.refused_attempt(&req, &from, 503, "source call limit", None);
        }
        let facts = self.call_facts(&req, &from, unix_s);
        let Some(decision) = self.dialplan.evaluate(&facts) else {
            tracing::info!(%caller, %callee, "no dialplan rule matches the call; 404");
            self.respond(&key, &req, 404, None, now);
            return self.refused_attempt(&req, &from, 404, "no route", None);
        };
        let program = Program {
            rule: decision.rule.name.clone(),
            actions: decision.rule.actions.clone(),
            next: 0,
            values: decision.values,
            bridge: None,
        };
        let mut media = MediaSession::default();
        media.set_srtp_policy(Side::B, self.config.media.srtp);
        let content_type = req.header("Content-Type");
        let offer = match self.anchor(
            &mut media,
            Side::A,
            req.body(),
            content_type.as_deref(),
            Role::Offer,
        ) {
            Ok(body) => body,
            Err(e) => {
                let status = self.refuse_media(&key, &req, e, now);
                let rule = program.rule.clone();
                return self.refused_attempt(&req, &from, status, "media refused", Some(rule));
            }
        };
        let id = self.next_call;
        self.next_call += 1;
        self.stats.calls_started += 1;
        self.guard.call_started(from.addr.ip(), now);
        let a_target = req
            .contact_uri()
            .unwrap_or_else(|| from_hdr.uri.to_string());
        let a = Leg {
            call_id: call_id.clone(),
            local_uri: strip_tag(&req.header("To").unwrap_or_default()),
            local_tag: new_tag(),
            remote_uri: strip_tag(&req.header("From").unwrap_or_default()),
            remote_tag: from_hdr.tag().map(str::to_owned),
            target: a_target,
            // As UAS: the INVITE's Record-Route values, in order (RFC 3261 12.1.1).
            route: route_set(req.address_list("Record-Route"), false),
            cseq: 0,
            dest: from.clone(),
        };
        self.dialogs
            .insert((call_id.clone(), a.local_tag.clone()), (id, Side::A));
        self.server_invites.insert(key.clone(), id);
        let record = Record {
            rule: Some(program.rule.clone()),
            ..self.new_record(&req, &from)
        };
        let span = tracing::info_span!("call", id, call_id = %call_id, record = %record.id);
        let _span = span.clone().entered();
        tracing::info!(call = id, %caller, %callee, call_id = %call_id, rule = %program.rule, "call started");
        let mut call = Call {
            span,
            record,
            ended_by: None,
            id,
            state: State::Calling,
            a,
            a_invite: req.clone(),
            a_invite_tx: key,
            branches: Vec::new(),
            answered: None,
            caller: caller.clone(),
            callee: callee.clone(),
            started: now,
            answered_at: None,
            ring_until: None,
            pending_ok: None,
            owed_ack: None,
            abandoned: false,
            best_failure: None,
            outstanding_byes: 0,
            media,
            media_check: None,
            announcing: None,
            digits: None,
            collected: None,
            screening_pending: false,
            screened: false,
            caller_vouched: false,
            reject_headers: Vec::new(),
            challenge: None,
            verstat: None,
            hold_music: None,
            transfer: None,
            former: Vec::new(),
            left: None,
            guarded_source: Some(from.addr.ip()),
            program: Some(program),
            tags: Vec::new(),
            b_headers: Vec::new(),
            b_offer: offer,
            b_offer_type: content_type,
            menu: None,
            answered_by_warden: false,
            b_route: Vec::new(),
        };
        self.emit_record(&mut call);
        self.run_program(&mut call, now);
        self.schedule(&call);
        self.finish_or_keep(call);
    }

    /// A record for the call `req` starts (the driver journals it on emit).
    fn new_record(&self, req: &Request, from: &Destination) -> Record {
        let caller = req
            .from()
            .map(|f| f.uri.user().unwrap_or_else(|| f.uri.to_string()))
            .unwrap_or_default();
        Record {
            id: crate::cdr::record::new_id(),
            instance: self.instance.clone(),
            boot: self.boot.clone(),
            a_call_id: req.call_id().unwrap_or_default(),
            caller,
            callee: req.uri().user().unwrap_or_default(),
            source: from.addr.to_string(),
            received_ms: self.unix_ms as i64,
            ..Record::default()
        }
    }

    /// An INVITE refused before it became a call still leaves its (closed) record.
    fn refused_attempt(
        &mut self,
        req: &Request,
        from: &Destination,
        status: u16,
        why: &str,
        rule: Option<String>,
    ) {
        let record = Record {
            rev: 1,
            rule,
            ended_ms: Some(self.unix_ms as i64),
            final_code: Some(i64::from(status)),
            final_reason: Some(self.phrase(status).to_owned()),
            hangup_side: Some("warden".into()),
            end_reason: Some(why.to_owned()),
            ..self.new_record(req, from)
        };
        *self.stats.final_codes.entry(status).or_default() += 1;
        self.out.push_back(Output::Record(Box::new(record)));
    }

    /// Hand out the call's record as it stands now.
    fn emit_record(&mut self, call: &mut Call) {
        call.record.rev += 1;
        self.out
            .push_back(Output::Record(Box::new(call.record.clone())));
    }

    /// The call is answered (by a callee with `status`, or by Warden itself).
    fn answered_record(&mut self, call: &mut Call, status: u16, reason: &str) {
        call.ended_by = None; // what ended earlier attempts does not end the call
        call.record.answered_ms = Some(self.unix_ms as i64);
        call.set_final(status, reason);
        self.emit_record(call);
    }

    /// The call is over: close its record with how it ended and its media figures.
    fn ended_record(&mut self, call: &mut Call) {
        let r = &mut call.record;
        let ended = self.unix_ms as i64;
        r.ended_ms = Some(ended);
        r.duration_ms = r.answered_ms.map(|a| (ended - a).max(0));
        let (by, why) = call.ended_by.unwrap_or(match r.answered_ms {
            Some(_) => ("warden", "normal"),
            None => ("warden", "rejected"),
        });
        r.hangup_side = Some(by.to_owned());
        r.end_reason = Some(why.to_owned());
        r.tags = call.tags.join(",");
        if call.media.has_streams() {
            let m = call.media.summary(&self.media);
            for (packets, lost, jitter, leg) in [
                (
                    &mut r.a_packets,
                    &mut r.a_lost,
                    &mut r.a_jitter_us,
                    m.caller,
                ),
                (
                    &mut r.b_packets,
                    &mut r.b_lost,
                    &mut r.b_jitter_us,
                    m.callee,
                ),
            ] {
                *packets = Some(leg.rtp_packets as i64);
                *lost = Some(leg.lost as i64);
                *jitter = Some(leg.jitter_us as i64);
            }
            if let Some((a, b, transcoded)) = call.media.codecs() {
                (r.a_codec, r.b_codec, r.transcoded) = (Some(a), Some(b), transcoded);
            }
        }
        let code = r.final_code.unwrap_or(0).clamp(0, 999) as u16;
        *self.stats.final_codes.entry(code).or_default() += 1;
        self.emit_record(call);
    }

    /// What the dialplan's conditions look at, from the INVITE and where it came from.
    fn call_facts(&self, req: &Request, from: &Destination, unix_s: u64) -> CallFacts {
        let user_of = |uri: &str| {
            Uri::parse(uri)
                .ok()
                .and_then(|u| u.user())
                .unwrap_or_default()
        };
        let uri_of =
            |header: Option<NameAddr>| header.map(|h| h.uri.to_string()).unwrap_or_default();
        let from_uri = uri_of(req.from());
        let to_uri = uri_of(req.to());
        let caller = user_of(&from_uri);
        let asserted = req
            .address_list("P-Asserted-Identity")
            .ok()
            .and_then(|list| list.into_iter().next())
            .map(|a| a.uri.to_string());
        // The IMS session case: `orig` on the top Route, or P-Served-User's sescase.
        let top_route_orig = req
            .address_list("Route")
            .ok()
            .and_then(|routes| routes.into_iter().next())
            .is_some_and(|top| top.uri.to_string().contains(";orig"));
        let served_user_case = req.header("P-Served-User").and_then(|v| {
            let v = v.to_ascii_lowercase();
            if v.contains("sescase=orig") {
                Some(SessionCase::Originating)
            } else if v.contains("sescase=term") {
                Some(SessionCase::Terminating)
            } else {
                None
            }
        });
        // Only a trusted S-CSCF may say whom Warden serves.
        let trusted = crate::dialplan::in_networks(from.addr.ip(), &self.trusted_scscf);
        let session_case = match (trusted, top_route_orig) {
            (false, _) => None,
            (true, true) => Some(SessionCase::Originating),
            (true, false) => served_user_case.or(Some(SessionCase::Terminating)),
        };
        CallFacts {
            ruri_user: req.uri().user().unwrap_or_default(),
            ruri_host: req.uri().host().unwrap_or_default(),
            from_user: caller.clone(),
            from: from_uri,
            to_user: user_of(&to_uri),
            to: to_uri,
            asserted_identity: asserted,
            headers: req.header_pairs(),
            source: from.addr.ip(),
            transport: from.transport.as_str().to_ascii_lowercase(),
            session_case,
            caller_registered: !self.registrar.lookup(&caller, unix_s).is_empty(),
            now: jiff::Timestamp::from_second(unix_s as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    // ----- the dialplan's actions --------------------------------------------------------

    /// Run the call's dialplan actions from where it stands until one waits (a bridge
    /// ringing, a prompt playing, a menu listening) or ends the call.
    fn run_program(&mut self, call: &mut Call, now: Instant) {
        loop {
            if call.abandoned || call.answered.is_some() || call.state == State::Ending {
                call.program = None;
                return;
            }
            let Some(program) = call.program.as_mut() else {
                return;
            };
            let Some(action) = program.actions.get(program.next).cloned() else {
                call.program = None;
                return self.program_exhausted(call, now);
            };
            program.next += 1;
            let values = program.values.clone();
            match action {
                Action::Tag(tag) => call.tags.push(tag.render(&values)),
                Action::HoldMusic(name) => call.hold_music = Some(name),
                Action::Set(name, value) => {
                    let value = value.render(&values);
                    if let Some(p) = call.program.as_mut() {
                        p.values.named.insert(name, value);
                    }
                }
                Action::SetHeader(name, value) => {
                    call.b_headers.push((name, Some(value.render(&values))))
                }
                Action::RemoveHeader(name) => call.b_headers.push((name, None)),
                Action::Codecs(codecs) => {
                    match MediaSession::restrict_offer(&call.b_offer, &codecs, self.media.address())
                    {
                        Some(body) => call.b_offer = Bytes::from(body),
                        None => tracing::warn!(
                            call = call.id,
                            ?codecs,
                            "codecs: the offer has none of them (nothing to transcode from?); left as it is"
                        ),
                    }
                }
                Action::Srtp(policy) => {
                    call.media.set_srtp_policy(Side::B, policy);
                    let address = self.media.address();
                    if let Some(body) = call.media.resecure_offer(&call.b_offer, Side::B, address) {
                        call.b_offer = Bytes::from(body);
                    }
                }
                Action::Screen(profile) => {
                    let request = self.screen_request(call, profile);
                    call.screening_pending = true;
                    self.out.push_back(Output::Screen(request));
                    return;
                }
                Action::Reject { status, reason } => {
                    let reason = reason
                        .map(|r| r.render(&values))
                        .unwrap_or_else(|| self.phrase(status).to_owned());
                    call.program = None;
                    call.reject_headers.clear(); // the plan's own refusal, not a callee's
                    if call.answered_by_warden {
                        // Too late to refuse an answered call: hang up.
                        return self.program_exhausted(call, now);
                    }
                    self.decline(call, status, &reason, now);
                    call.state = State::Done;
                    return;
                }
                Action::Conference(room) => {
                    call.program = None;
                    return self.join_conference(call, &room.render(&values), now);
                }
                Action::Answer => {
                    if !call.answered_by_warden && !self.answer_itself(call, now) {
                        tracing::warn!(
                            call = call.id,
                            "answer: the caller offered nothing Warden can play; going on unanswered"
                        );
                    }
                }
                Action::Redirect(targets) => {
                    let contacts: Vec<String> = targets.iter().map(|t| t.render(&values)).collect();
                    call.program = None;
                    self.redirect(call, &contacts, now);
                    call.state = State::Done;
                    return;
                }
                Action::Bridge {
                    targets,
                    mode,
                    timeout,
                } => {
                    if call.answered_by_warden {
                        tracing::warn!(
                            call = call.id,
                            "bridge after answer: not supported yet (needs a re-INVITE toward the caller); skipped"
                        );
                        continue;
                    }
                    let targets = targets.iter().map(|t| t.render(&values)).collect();
                    let timeout = timeout
                        .unwrap_or(Duration::from_secs(self.config.calls.no_answer_timeout_s));
                    if let Some(p) = call.program.as_mut() {
                        p.bridge = Some(BridgeAttempt {
                            targets,
                            mode,
                            timeout,
                            next_target: 0,
                            first_branch: call.branches.len(),
                            serial: 0,
                            pending_lookups: 0,
                        });
                    }
                    if self.try_bridge(call, now) {
                        return;
                    }
                }
                Action::Play { prompt, repeat } => {
                    let name = prompt.render(&values);
                    if self.play_to_caller(call, &[&name], repeat, false, now) {
                        call.announcing = Some(AfterPrompt::Continue);
                        return;
                    }
                }
                Action::Menu {
                    prompt,
                    choices,
                    timeout,
                } => {
                    let name = prompt.render(&values);
                    if self.play_to_caller(call, &[&name], 0, true, now) {
                        call.announcing = Some(AfterPrompt::Menu);
                        call.menu = Some(choices);
                        // The key may come while the prompt plays, or `timeout` after it.
                        let wait = timeout + self.prompt_length(&name);
                        let spec = DigitSpec {
                            max_digits: 1,
                            terminator: None,
                            first_digit_timeout: wait,
                            inter_digit_timeout: timeout,
                            overall_timeout: wait,
                        };
                        self.start_collecting(call, spec, now);
                        return;
                    }
                }
            }
        }
    }

    /// What screening is told about the call.
    fn screen_request(&mut self, call: &mut Call, profile: String) -> crate::screening::Request {
        let req = &call.a_invite;
        let identity = req
            .address_list("P-Asserted-Identity")
            .ok()
            .and_then(|list| list.into_iter().next())
            .or_else(|| req.from())
            .map(|a| a.uri);
        let caller_number = identity.as_ref().and_then(|u| u.user()).unwrap_or_default();
        let user = identity
            .map(|u| {
                format!(
                    "{}@{}",
                    u.user().unwrap_or_default(),
                    u.host().unwrap_or_default()
                )
            })
            .unwrap_or_else(|| call.caller.clone());
        let source = call.a.dest.addr.ip();
        call.caller_vouched = crate::dialplan::in_networks(source, &self.trusted_scscf)
            || !self
                .registrar
                .lookup(&call.caller, self.unix_s())
                .is_empty();
        crate::screening::Request {
            call: call.id,
            call_id: call.a.call_id.clone(),
            profile,
            user,
            callee: req.uri().user().unwrap_or_default(),
            source,
            user_agent: req.header("User-Agent").unwrap_or_default(),
            caller_number,
            identity: req.header("Identity"),
            date: req.header("Date"),
            stir: None,
            now: self.unix_s(),
        }
    }

    /// The screener's decision on a call waiting at its `screen` action.
    pub fn handle_screened(&mut self, id: u64, outcome: crate::screening::Outcome, now: Instant) {
        use crate::screening::Decision;
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        if !std::mem::take(&mut call.screening_pending) {
            return self.finish_or_keep(call);
        }
        if call.transfer.is_some() {
            self.transfer_screened(&mut call, outcome, now);
            self.schedule(&call);
            return self.finish_or_keep(call);
        }
        let reason = outcome.reason();
        tracing::info!(
            call = call.id,
            caller = %call.caller,
            callee = %call.callee,
            decision = outcome.decision.name(),
            score = outcome.score,
            %reason,
            "screened"
        );
        call.tags
            .push(format!("screening:{}", outcome.decision.name()));
        call.record.screening = Some(outcome.decision.name().to_owned());
        call.record.screening_reason = Some(reason.to_string());
        call.record.attestation = outcome.verstat.map(str::to_owned);
        self.emit_record(&mut call);
        // The screener counts every call it saw (ending one it did not admit is a no-op).
        call.screened = true;
        let jcard = (call.caller_vouched && !outcome.identity_failed) || outcome.identity_verified;
        // 3GPP TS 24.229: the verification's result travels to the callee in the caller's
        // identities.
        call.verstat = outcome.verstat;
        match outcome.decision {
            Decision::Allow => {
                if call.abandoned {
                    call.state = State::Done;
                } else {
                    self.run_program(&mut call, now);
                }
            }
            Decision::Block(verdict) => {
                call.program = None;
                if call.abandoned {
                    call.state = State::Done;
                } else {
                    self.block(&mut call, &verdict, jcard, now);
                }
            }
            Decision::Challenge { value } => {
                if call.abandoned {
                    call.state = State::Done;
                } else if !self.challenge(&mut call, &value, now) {
                    // No way to read the code (no audio offered): refuse, as a failed
                    // challenge would.
                    self.block(&mut call, &crate::screening::Verdict::decline(), false, now);
                }
            }
        }
        self.schedule(&call);
        self.finish_or_keep(call);
    }

    /// Screening's challenge (a voice CAPTCHA): read the caller a random 4-digit code as
    /// early media and wait for it to be keyed in (RFC 4733 or SIP INFO), within the time
    /// the prompt takes plus 10 s for the first key and 5 s between keys.
    fn challenge(&mut self, call: &mut Call, value: &str, now: Instant) -> bool {
        let code: String = (0..4)
            .map(|_| char::from(b'0' + rand::random_range(0..10u8)))
            .collect();
        let digits: Vec<String> = code.chars().map(|d| format!("digit_{d}")).collect();
        let mut names = vec!["challenge_intro"];
        names.extend(digits.iter().map(String::as_str));
        if !self.play_to_caller(call, &names, 0, true, now) {
            return false;
        }
        let wait: Duration = names.iter().map(|n| self.prompt_length(n)).sum();
        tracing::info!(call = call.id, caller = %call.caller, %value, "screening challenge: the caller must key in the code read to them");
        call.announcing = Some(AfterPrompt::Menu);
        call.challenge = Some(code);
        let spec = DigitSpec {
            max_digits: 4,
            terminator: Some('#'),
            first_digit_timeout: wait + Duration::from_secs(10),
            inter_digit_timeout: Duration::from_secs(5),
            overall_timeout: wait + Duration::from_secs(30),
        };
        self.start_collecting(call, spec, now);
        true
    }

    /// Answer a blocked call as its verdict says: a prompt as early media first when the
    /// verdict has one (or for a 608 to a caller that did not say it understands 608,
    /// RFC 8688 section 3.3), then the final response (the call is done unless the prompt
    /// still plays); a 608 carries the operator's jCard when `jcard` (the caller is known or
    /// verified, RFC 8688 section 6).
    fn block(
        &mut self,
        call: &mut Call,
        verdict: &crate::screening::Verdict,
        jcard: bool,
        now: Instant,
    ) {
        use crate::screening::Answer;
        let s = &self.config.screening;
        let status = verdict.status();
        let reason = match &verdict.answer {
            // ATIS-1000099's phrase marks a 603+; RFC 8224 names a stale PASSporT's 403.
            Answer::NetworkBlocked => "Network Blocked",
            Answer::Identity(403) => "Stale Date",
            Answer::Redirect(prefix) => {
                let uri = call.a_invite.uri();
                let user = uri.user().unwrap_or_default();
                let host = uri.host().unwrap_or_default();
                let target = format!("sip:{prefix}{user}@{host}");
                tracing::info!(call = call.id, %target, "screening redirects the call");
                self.redirect(call, &[target], now);
                call.state = State::Done;
                return;
            }
            _ => self.phrase(status),
        }
        .to_owned();
        let reason = reason.as_str();
        call.reject_headers.clear();
        if verdict.answer == Answer::NetworkBlocked {
            // ATIS-1000099: who blocked and how to ask for redress.
            let r = &s.redress;
            let mut text = String::from("v=analytics1");
            for (key, value) in [("tel", &r.tel), ("url", &r.url), ("email", &r.email)] {
                if let Some(v) = value {
                    text.push_str(&format!(";{key}={}", v.replace(['"', '\\'], "")));
                }
            }
            call.reject_headers.push((
                "Reason".into(),
                format!("SIP;cause=603;text=\"{text}\";location={}", r.location),
            ));
        }
        let understands_608 = call
            .a_invite
            .headers("Feature-Caps")
            .iter()
            .any(|v| v.contains("sip.608"));
        if verdict.answer == Answer::Rejected && jcard {
            call.reject_headers.push((
                "Call-Info".into(),
                format!("<{}>;purpose=jwscard", self.config.jcard_url()),
            ));
        }
        let prompt = verdict.prompt.clone().or_else(|| {
            (verdict.answer == Answer::Rejected && !understands_608)
                .then(|| "call_blocked".to_owned())
        });
        if let Some(name) = prompt
            && self.play_to_caller(call, &[&name], 0, false, now)
        {
            tracing::info!(call = call.id, prompt = %name, status, "announcing before the block");
            call.announcing = Some(AfterPrompt::Fail(status, reason.to_owned()));
            return;
        }
        self.decline(call, status, reason, now);
        call.state = State::Done;
    }

    /// The dialplan's actions ran out without an answer: the caller gets the failure (or,
    /// after Warden answered itself, a BYE).
    fn program_exhausted(&mut self, call: &mut Call, now: Instant) {
        if call.answered_by_warden {
            if matches!(call.state, State::Answered | State::Confirmed) {
                tracing::info!(call = call.id, caller = %call.caller, "dialplan done; Warden hangs up");
                call.note_end("warden", "dialplan done");
                self.send_bye(call, Side::A, now);
            }
            return;
        }
        if call.answered.is_some() || call.abandoned || call.state == State::Done {
            return;
        }
        let (status, reason) = call
            .best_failure
            .clone()
            .unwrap_or((404, self.phrase(404).to_owned()));
        if self.announce(call, status, &reason, now) {
            return;
        }
        self.decline(call, status, &reason, now);
        call.state = State::Done;
    }

    /// Answer the caller with Warden's own SDP (200 OK, retransmitted until the ACK), for
    /// prompts and menus on an answered call.
    fn answer_itself(&mut self, call: &mut Call, now: Instant) -> bool {
        let Some(plan) = call.media.answer_caller(&mut self.media, call.id, true) else {
            return false;
        };
        let ok = self.caller_response(call, 200, "OK", Some(plan.sdp));
        let bytes = ok.to_bytes();
        self.tx.respond(&call.a_invite_tx, ok, now);
        tracing::info!(call = call.id, caller = %call.caller, callee = %call.callee, "answered by Warden");
        self.answered_record(call, 200, "OK");
        call.answered_by_warden = true;
        call.state = State::Answered;
        call.answered_at = Some(now);
        call.ring_until = None;
        self.stats.calls_answered += 1;
        let t1 = self.config.timers().t1;
        let reliable = call.a.dest.transport.is_reliable();
        call.pending_ok = Some(PendingOk {
            bytes,
            dest: call.a.dest.clone(),
            next: if reliable { now + t1 * 64 } else { now + t1 },
            interval: t1,
            give_up: now + t1 * 64,
            cseq: call.a_invite.cseq().map(|c| c.seq).unwrap_or(0),
            side: Side::A,
        });
        true
    }

    /// Answer the caller (unless Warden already has) and put it in conference `room`: it
    /// hears the other members mixed from now on, and every member hears the join chime.
    fn join_conference(&mut self, call: &mut Call, room: &str, now: Instant) {
        if !call.answered_by_warden && !self.answer_itself(call, now) {
            tracing::warn!(
                call = call.id,
                room,
                "conference: the caller offered nothing Warden can mix"
            );
            let reason = self.phrase(488).to_owned();
            self.decline(call, 488, &reason, now);
            call.state = State::Done;
            return;
        }
        let Some(plan) = call.media.answer_caller(&mut self.media, call.id, true) else {
            return;
        };
        let member = conference::Member {
            call: call.id,
            stream: plan.stream,
            side: MediaSide::A,
            codec: plan.codec,
            payload_type: plan.payload_type,
        };
        if !self.join_room(call, room, member) {
            call.note_end("warden", "media failure");
            self.send_bye(call, Side::A, now);
        }
    }

    /// Put the party `member` describes (a side of one of the call's relay streams) in
    /// `room`; everyone there hears the join chime. False when the relay could not.
    fn join_room(&mut self, call: &mut Call, room: &str, member: conference::Member) -> bool {
        let leg = LegCodec {
            codec: member.codec,
            payload_type: member.payload_type,
            params: FormatParams::default(),
            ptime: 20,
            dtmf_payload_type: None,
            cn_payload_type: None,
        };
        let number = self.rooms.join(room, member);
        if !self.media.join(member.stream, member.side, number, leg) {
            tracing::error!(
                call = call.id,
                room,
                "conference: the relay could not take the stream"
            );
            self.rooms.leave(room, call.id);
            return false;
        }
        call.record.conference = Some(room.to_owned());
        self.emit_record(call);
        let members = self.rooms.members(room).to_vec();
        tracing::info!(call = call.id, caller = %call.caller, room, members = members.len(), codec = member.codec.name, "joined the conference");
        let chime = self.config.media.conference_join.clone();
        self.chime(&members, &chime);
        true
    }

    /// The call is over: out of its conference room, and the members left hear the leave
    /// chime.
    fn leave_conference(&mut self, call: &Call) {
        let Some(room) = call.record.conference.as_deref() else {
            return;
        };
        let members = self.rooms.leave(room, call.id);
        tracing::info!(
            call = call.id,
            room,
            members = members.len(),
            "left the conference"
        );
        let chime = self.config.media.conference_leave.clone();
        self.chime(&members, &chime);
    }

    /// Play prompt `name` once to every one of `members` ("" plays nothing).
    fn chime(&mut self, members: &[conference::Member], name: &str) {
        if name.is_empty() {
            return;
        }
        for m in members {
            if let Some(prompt) = self.prompts.sequence(&[name], m.codec) {
                let how = Playback {
                    payload_type: m.payload_type,
                    repeat: 0,
                    stop_on_dtmf: false,
                };
                self.media.play(m.stream, m.side, prompt, how);
            }
        }
    }

    /// 302 with the targets as Contacts (RFC 3261 21.3.3).
    fn redirect(&mut self, call: &mut Call, contacts: &[String], now: Instant) {
        tracing::info!(call = call.id, caller = %call.caller, callee = %call.callee, targets = ?contacts, "call redirected");
        call.note_end("warden", "redirected");
        call.set_final(302, self.phrase(302));
        let mut out = self.caller_response(call, 302, self.phrase(302), None);
        for contact in contacts {
            let _ = out.push_header("Contact", &format!("<{contact}>"));
        }
        self.tx.respond(&call.a_invite_tx, out, now);
    }

    /// Start the next attempt of the call's bridge action: every target at once
    /// (parallel) or the next one that can be reached (sequential). False when nothing
    /// could be started (the failures are noted).
    fn try_bridge(&mut self, call: &mut Call, now: Instant) -> bool {
        loop {
            let first_branch = call.branches.len();
            let Some(attempt) = call.bridge_mut() else {
                return false;
            };
            let batch: Vec<String> = match attempt.mode {
                BridgeMode::Parallel => attempt.targets.drain(..).collect(),
                BridgeMode::Sequential => match attempt.targets.get(attempt.next_target) {
                    Some(t) => vec![t.clone()],
                    None => Vec::new(),
                },
            };
            attempt.next_target += 1;
            attempt.first_branch = first_branch;
            attempt.serial = self.next_attempt;
            attempt.pending_lookups = 0;
            self.next_attempt += 1;
            let (timeout, sequential) = (attempt.timeout, attempt.mode == BridgeMode::Sequential);
            if batch.is_empty() {
                return false;
            }
            for target in &batch {
                match self.resolve_target(call, target) {
                    Ok(found) => {
                        for (contact, dest) in found {
                            self.add_branch(call, &contact, dest, now);
                        }
                    }
                    Err(lookup) => {
                        let id = call.id;
                        if let Some(a) = call.bridge_mut() {
                            a.pending_lookups += 1;
                            self.out.push_back(Output::Resolve {
                                call: id,
                                attempt: a.serial,
                                lookup,
                            });
                        }
                    }
                }
            }
            let started = call
                .bridge()
                .is_some_and(|a| call.branches.len() > a.first_branch || a.pending_lookups > 0);
            if started {
                call.ring_until = Some(now + timeout);
                return true;
            }
            if !sequential {
                return false;
            }
        }
    }

    /// Where a bridge target rings: `user:NAME` is every contact NAME has registered; a
    /// SIP URI with an IP address goes there directly. Failures are noted on the call.
    fn resolve_target(&mut self, call: &mut Call, target: &str) -> Result<Vec<Found>, Lookup> {
        if target == "ims" {
            return Ok(self.ims_target(call).into_iter().collect());
        }
        if let Some(number) = target.strip_prefix("enum:") {
            return Err(Lookup::Enum {
                number: number.to_owned(),
            });
        }
        if let Some(user) = target.strip_prefix("user:") {
            let bindings: Vec<(String, Destination)> = self
                .registrar
                .lookup(user, self.unix_s())
                .into_iter()
                .map(|b| (b.contact.clone(), b.destination(None)))
                .collect();
            if bindings.is_empty() {
                let status = if self.registrar.knows(user) { 480 } else { 404 };
                tracing::info!(
                    call = call.id,
                    target,
                    status,
                    "bridge target not reachable"
                );
                call.note_failure(status, self.phrase(status));
            }
            return Ok(bindings);
        }
        if let Some(dest) = literal_destination(target) {
            return Ok(vec![(target.to_owned(), dest)]);
        }
        if Uri::parse(target).is_ok_and(|u| u.is_sip()) {
            return Err(Lookup::Host {
                uri: target.to_owned(),
            });
        }
        tracing::warn!(
            call = call.id,
            target,
            "bridge target is not user:, enum:, ims or a SIP URI; skipped"
        );
        call.note_failure(502, "Bad Gateway");
        Ok(Vec::new())
    }

    /// The driver's answer to an `Output::Resolve`: ring what it found, if the bridge
    /// attempt that asked is still the current one.
    pub fn handle_resolved(&mut self, id: u64, attempt: u64, found: Vec<Found>, now: Instant) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        let current = call.bridge_mut().filter(|a| a.serial == attempt);
        if let Some(a) = current {
            a.pending_lookups = a.pending_lookups.saturating_sub(1);
            if found.is_empty() {
                call.note_failure(404, self.phrase(404));
            }
            for (contact, dest) in found {
                self.add_branch(&mut call, &contact, dest, now);
            }
            self.end_if_every_branch_failed(&mut call, now);
            self.schedule(&call);
        } else if call.abandoned && call.state == State::Calling && call.all_branches_final() {
            call.state = State::Done; // cancelled while the lookup ran: nothing else will end it
        }
        self.finish_or_keep(call);
    }

    /// The IMS way on (3GPP TS 24.229 5.7.5, AS as B2BUA): the initial request goes back to
    /// the S-CSCF along the Route set it came with, minus Warden's own entry on top (the
    /// S-CSCF's entry keeps its original dialog identifier), to the same Request-URI, with
    /// P-Charging-Vector (its ICID) and P-Asserted-Identity carried across.
    fn ims_target(&mut self, call: &mut Call) -> Option<(String, Destination)> {
        let req = &call.a_invite;
        let trusted = crate::dialplan::in_networks(call.a.dest.addr.ip(), &self.trusted_scscf);
        // Every Route entry after Warden's own, parsed like any Route set.
        let next_hops: Vec<NameAddr> = req
            .address_list("Route")
            .unwrap_or_default()
            .into_iter()
            .skip(1)
            .collect();
        let first = next_hops
            .first()
            .and_then(|hop| literal_destination(&hop.uri.to_string()));
        let Some(dest) = first.filter(|_| trusted) else {
            tracing::warn!(
                call = call.id,
                trusted,
                routes = next_hops.len(),
                "bridge to ims: not from a trusted S-CSCF, or no Route to go on along (an IP address is needed)"
            );
            call.note_failure(403, "Forbidden");
            return None;
        };
        for name in ["P-Charging-Vector", "P-Asserted-Identity"] {
            if let Some(value) = req.header(name)
                && !call
                    .b_headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                call.b_headers.push((name.to_owned(), Some(value)));
            }
        }
        let uri = req.uri().to_string();
        call.b_route = route_set(Ok(next_hops), false);
        Some((uri, dest))
    }

    /// Send the callee-side INVITE of a new branch toward `contact` at `dest`.
    fn add_branch(&mut self, call: &mut Call, contact: &str, dest: Destination, now: Instant) {
        let req = &call.a_invite;
        let mut leg = Leg {
            call_id: format!("{}@warden", new_tag()),
            local_uri: strip_tag(&req.header("From").unwrap_or_default()),
            local_tag: new_tag(),
            remote_uri: transfer::transfer_to(call)
                .unwrap_or_else(|| strip_tag(&req.header("To").unwrap_or_default())),
            remote_tag: None,
            target: contact.to_owned(),
            route: std::mem::take(&mut call.b_route),
            cseq: 0,
            dest: dest.clone(),
        };
        if let Some(verstat) = call.verstat {
            leg.local_uri = with_uri_param(&leg.local_uri, &format!("verstat={verstat}"));
        }
        let Some(mut invite) = self.leg_request(&mut leg, Method::Invite, None) else {
            return;
        };
        if let (Some(verstat), Some(pai)) = (call.verstat, req.header("P-Asserted-Identity")) {
            let _ = invite.set_header(
                "P-Asserted-Identity",
                &with_uri_param(&pai, &format!("verstat={verstat}")),
            );
        }
        let hops = req.max_forwards().unwrap_or(70).saturating_sub(1);
        let _ = invite.set_header("Max-Forwards", &hops.to_string());
        let _ = invite.push_header("Allow", ALLOW);
        for (name, value) in &call.b_headers {
            match value {
                Some(v) => {
                    let _ = invite.set_header(name, v);
                }
                None => {
                    invite.remove_header(name);
                }
            }
        }
        invite.set_body(call.b_offer.clone(), call.b_offer_type.as_deref());
        let index = call.branches.len();
        self.dialogs.insert(
            (leg.call_id.clone(), leg.local_tag.clone()),
            (call.id, Side::B),
        );
        let tx = self.tx.send_request(invite.clone(), dest, now);
        if let Some(tx) = &tx {
            self.client.insert(
                tx.clone(),
                ClientPurpose::Invite {
                    call: call.id,
                    branch: index,
                },
            );
        }
        call.branches.push(Branch {
            leg,
            invite,
            tx,
            provisional: false,
            final_status: None,
            cancel_pending: false,
            ack: None,
        });
    }

    /// The current bridge attempt failed (every branch final without an answer, or it
    /// rang out): a sequential bridge fails over to its next target on a timeout, an
    /// unreachable target or a 5xx; otherwise the dialplan goes on with its next action.
    fn bridge_failed(&mut self, call: &mut Call, now: Instant) {
        let first = call.bridge().map_or(0, |a| a.first_branch);
        let fail_over = call.branches[first.min(call.branches.len())..]
            .iter()
            .all(|b| matches!(b.final_status, None | Some(408 | 480 | 500..=599)));
        let sequential = call
            .bridge()
            .is_some_and(|a| a.mode == BridgeMode::Sequential);
        if sequential && fail_over && self.try_bridge(call, now) {
            return;
        }
        if let Some(p) = call.program.as_mut() {
            p.bridge = None;
        }
        call.ring_until = None;
        self.run_program(call, now);
    }

    fn on_cancel(&mut self, key: TxKey, req: Request, now: Instant) {
        let Some(invite_key) = self.tx.cancelled_invite(&req) else {
            return self.respond(&key, &req, 481, None, now);
        };
        self.respond(&key, &req, 200, None, now);
        let Some(id) = self.server_invites.get(&invite_key).copied() else {
            return;
        };
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        if call.state == State::Calling && !call.abandoned {
            tracing::info!(call = id, caller = %call.caller, callee = %call.callee, "call cancelled by caller");
            call.note_end("caller", "cancelled");
            self.abandon(&mut call, 487, now);
            if call.announcing.take().is_some() && call.all_branches_final() {
                call.state = State::Done; // no branch to wait for
            }
        }
        self.finish_or_keep(call);
    }

    /// Give up the attempt: answer the caller's INVITE with `status`, CANCEL every branch
    /// still pending.
    fn abandon(&mut self, call: &mut Call, status: u16, now: Instant) {
        call.set_final(status, self.phrase(status));
        let (tag, invite) = (call.a.local_tag.clone(), call.a_invite.clone());
        self.respond(&call.a_invite_tx.clone(), &invite, status, Some(&tag), now);
        call.abandoned = true;
        call.program = None;
        call.ring_until = None;
        for i in 0..call.branches.len() {
            self.cancel_branch(call, i, now);
        }
    }

    fn cancel_branch(&mut self, call: &mut Call, index: usize, now: Instant) {
        let Some(branch) = call.branches.get_mut(index) else {
            return;
        };
        if branch.final_status.is_some() {
            return;
        }
        if !branch.provisional {
            branch.cancel_pending = true;
            return;
        }
        branch.cancel_pending = false;
        let invite = &branch.invite;
        let mut builder = Request::builder(Method::Cancel, &invite.uri());
        for name in ["Via", "From", "To", "Call-ID"] {
            if let Some(v) = invite.header(name) {
                builder = builder.header(name, &v);
            }
        }
        let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
        if let Ok(cancel) = builder.cseq(seq).max_forwards(70).build() {
            let dest = branch.leg.dest.clone();
            if let Some(k) = self.tx.send_request(cancel, dest, now) {
                self.client.insert(k, ClientPurpose::Untracked);
            }
        }
    }

    fn on_in_dialog(&mut self, key: TxKey, req: Request, now: Instant) {
        let method = req.method();
        let dialog = req
            .call_id()
            .zip(req.to_tag())
            .and_then(|k| self.dialogs.get(&k).copied());
        let Some((id, side)) = dialog else {
            return self.respond(&key, &req, 481, None, now);
        };
        let Some(mut call) = self.calls.remove(&id) else {
            return self.respond(&key, &req, 481, None, now);
        };
        let _span = call.enter();
        if Self::from_former_leg(&call, &req) {
            self.on_former_leg(&key, &req, now);
            return self.finish_or_keep(call);
        }
        // A request from a callee branch that did not win is not part of the bridge.
        let from_answered = side == Side::A
            || call
                .answered
                .and_then(|i| call.branches.get(i))
                .is_some_and(|b| Some(&b.leg.call_id) == req.call_id().as_ref());
        if !from_answered {
            self.respond(&key, &req, 481, None, now);
            return self.finish_or_keep(call);
        }
        // Track the peer's target refresh (RFC 3261 12.2.2).
        if (method == Method::Invite || method == Method::Update)
            && let Some(target) = req.contact_uri()
            && let Some(leg) = call.leg_mut(side)
        {
            leg.target = target;
        }
        match method {
            Method::Bye if call.transfer.as_ref().is_some_and(|t| t.by == side) => {
                // The transferor hangs up, as a blind transfer lets it: the call waits for
                // the target.
                self.respond(&key, &req, 200, req.to_tag().as_deref(), now);
                if let Some(t) = call.transfer.as_mut() {
                    t.referrer_gone = true;
                }
            }
            Method::Bye => {
                let tag = req.to_tag();
                self.respond(&key, &req, 200, tag.as_deref(), now);
                if let Some(index) = call.transfer.take().and_then(|t| t.branch) {
                    self.cancel_branch(&mut call, index, now);
                }
                if matches!(call.state, State::Confirmed | State::Answered) {
                    let secs = call
                        .answered_at
                        .map(|t| now.duration_since(t).as_secs())
                        .unwrap_or(0);
                    tracing::info!(call = id, caller = %call.caller, callee = %call.callee, by = side.name(), duration_s = secs, "call ended");
                    call.note_end(side.name(), "normal");
                    call.pending_ok = None;
                    self.send_bye(&mut call, side.other(), now);
                } else if call.state == State::Calling {
                    // A BYE on the caller's early dialog ends the attempt like a CANCEL.
                    call.note_end("caller", "cancelled");
                    self.abandon(&mut call, 487, now);
                }
                // Crossing BYEs (state Ending) just wait for the answer to ours.
                if call.outstanding_byes == 0 {
                    call.state = State::Done;
                }
            }
            Method::Refer => self.on_refer(&mut call, key, req, side, now),
            Method::Invite
            | Method::Update
            | Method::Info
            | Method::Message
            | Method::Notify
            | Method::Options
            | Method::Other(_)
            | Method::Subscribe
            | Method::Prack
            | Method::Publish => {
                if call.state != State::Confirmed && call.state != State::Answered {
                    self.respond(&key, &req, 491, None, now);
                    return self.finish_or_keep(call);
                }
                if method == Method::Info
                    && dtmf_relay::is_dtmf(req.header("Content-Type").as_deref())
                    && self.on_dtmf_info(&mut call, &key, &req, side, now)
                {
                    return self.finish_or_keep(call);
                }
                self.relay_request(&mut call, key, req, side, now);
            }
            Method::Ack | Method::Cancel | Method::Register => {
                self.respond(&key, &req, 405, None, now);
            }
        }
        self.finish_or_keep(call);
    }

    /// An INFO carrying a key press that Warden takes itself: for a listening menu, or to
    /// write into the audio of a far party that takes RFC 4733 events, not INFO. False when
    /// it is neither (the INFO is relayed as it is).
    fn on_dtmf_info(
        &mut self,
        call: &mut Call,
        key: &TxKey,
        req: &Request,
        side: Side,
        now: Instant,
    ) -> bool {
        let menu = side == Side::A && call.digits.is_some();
        let far_stream = call.media.events_toward(side);
        if !menu && far_stream.is_none() {
            return false;
        }
        let tag = req.to_tag();
        let Some((pressed, duration)) = dtmf_relay::parse(req.body()) else {
            let why = Some("no DTMF key in the body");
            self.respond_warning(key, req, 400, tag.as_deref(), why, now);
            return true;
        };
        self.respond(key, req, 200, tag.as_deref(), now);
        match far_stream {
            _ if menu => self.on_caller_digit(call, pressed, now),
            Some(stream) => {
                let to = media_side(side.other());
                self.media.send_dtmf(stream, to, pressed, duration);
            }
            None => {}
        }
        true
    }

    /// Forward an in-dialog request to the other side; its answer comes back in `on_response`.
    fn relay_request(
        &mut self,
        call: &mut Call,
        key: TxKey,
        req: Request,
        from: Side,
        now: Instant,
    ) {
        let method = req.method();
        let Some((mut out, dest)) = self.side_request(call, from.other(), method.clone(), None)
        else {
            return self.respond(&key, &req, 481, None, now);
        };
        let far_cseq = out.cseq().map(|c| c.seq).unwrap_or(0);
        for name in [
            "Content-Disposition",
            "Event",
            "Subscription-State",
            "Refer-To",
            "Referred-By",
            "Session-Expires",
            "Supported",
            "Allow",
        ] {
            for v in req.headers(name) {
                let _ = out.push_header(name, &v);
            }
        }
        let content_type = req.header("Content-Type");
        // INVITE and UPDATE carry offers; PRACK (and the rest) answers.
        let role = if matches!(method, Method::Invite | Method::Update) {
            Role::Offer
        } else {
            Role::Answer
        };
        let was_holding = call.media.holding(from);
        let body = match self.anchor(
            &mut call.media,
            from,
            req.body(),
            content_type.as_deref(),
            role,
        ) {
            Ok(body) => body,
            Err(e) => {
                self.refuse_media(&key, &req, e, now);
                return;
            }
        };
        if role == Role::Offer && call.media.holding(from) != was_holding {
            self.hold_music(call, from.other(), !was_holding);
        }
        out.set_body(body, content_type.as_deref());
        if let Some(client) =
            self.send_in_dialog(out, dest, ClientPurpose::Relay { call: call.id }, now)
        {
            self.relays.insert(
                client,
                Relay {
                    server: key,
                    from,
                    method,
                    far_cseq,
                },
            );
        } else {
            self.respond(&key, &req, 500, None, now);
        }
    }

    fn send_bye(&mut self, call: &mut Call, side: Side, now: Instant) {
        if let Some((bye, dest)) = self.side_request(call, side, Method::Bye, None)
            && self
                .send_in_dialog(bye, dest, ClientPurpose::Bye { call: call.id }, now)
                .is_some()
        {
            call.outstanding_byes += 1;
            call.state = State::Ending;
        }
    }

    /// ACK + BYE a callee branch whose 2xx nobody wants (a losing fork, a cancelled call).
    fn reject_late_answer(&mut self, call: &mut Call, index: usize, resp: &Response, now: Instant) {
        let Some(branch) = call.branches.get_mut(index) else {
            return;
        };
        branch.leg.remote_tag = resp.to_tag();
        if let Some(target) = resp.contact_uri() {
            branch.leg.target = target;
        }
        let seq = branch.invite.cseq().map(|c| c.seq).unwrap_or(1);
        let mut leg = branch.leg.clone();
        if let Some(ack) = self.leg_request(&mut leg, Method::Ack, Some(seq)) {
            let bytes = ack.to_bytes();
            self.out
                .push_back(Output::Send(leg.dest.clone(), bytes.clone()));
            if let Some(b) = call.branches.get_mut(index) {
                b.ack = Some(bytes);
            }
        }
        if let Some(bye) = self.leg_request(&mut leg, Method::Bye, None) {
            self.send_in_dialog(bye, leg.dest.clone(), ClientPurpose::Untracked, now);
        }
    }

    // ----- responses --------------------------------------------------------------------

    fn on_response(&mut self, key: TxKey, resp: Response, now: Instant) {
        let Some(purpose) = self.client.get(&key).cloned() else {
            return;
        };
        if resp.status() >= 200 && !matches!(purpose, ClientPurpose::Invite { .. }) {
            self.client.remove(&key);
        }
        match purpose {
            ClientPurpose::Invite { call, branch } => {
                self.on_branch_response(call, branch, resp, now)
            }
            ClientPurpose::Untracked => {}
            ClientPurpose::Bye { call } => {
                if resp.status() >= 200
                    && let Some(mut c) = self.calls.remove(&call)
                {
                    let _span = c.enter();
                    c.outstanding_byes = c.outstanding_byes.saturating_sub(1);
                    if c.outstanding_byes == 0 {
                        c.state = State::Done;
                    }
                    self.finish_or_keep(c);
                }
            }
            ClientPurpose::Relay { call } => self.on_relay_response(call, key, resp, now),
            ClientPurpose::Join { call, side } => self.on_join_response(call, side, resp, now),
        }
    }

    fn on_branch_response(&mut self, id: u64, index: usize, resp: Response, now: Instant) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        let status = resp.status();
        let acked = call.branches.get(index).is_some_and(|b| b.ack.is_some());
        if (200..300).contains(&status) && (call.answered == Some(index) || acked) {
            // The callee retransmits its answer until our ACK reaches it (RFC 6026): send
            // the ACK again once the caller's has let us send it; before that, wait.
            if let Some(b) = call.branches.get(index)
                && let Some(ack) = &b.ack
            {
                self.out
                    .push_back(Output::Send(b.leg.dest.clone(), ack.clone()));
            }
            return self.finish_or_keep(call);
        }
        if call
            .transfer
            .as_ref()
            .is_some_and(|t| t.branch == Some(index))
        {
            self.on_transfer_response(&mut call, index, &resp, now);
            self.schedule(&call);
            return self.finish_or_keep(call);
        }
        let already_answered = call.answered.is_some() && call.answered != Some(index);
        if (200..300).contains(&status) && (already_answered || call.abandoned) {
            if let Some(b) = call.branches.get_mut(index) {
                b.final_status = Some(status);
            }
            self.reject_late_answer(&mut call, index, &resp, now);
            return self.finish_or_keep(call);
        }
        if status < 200 {
            if let Some(b) = call.branches.get_mut(index) {
                b.provisional = true;
                if resp.to_tag().is_some() {
                    b.leg.remote_tag = resp.to_tag();
                }
                if b.cancel_pending {
                    self.cancel_branch(&mut call, index, now);
                }
            }
            if status > 100 && !call.abandoned && call.state == State::Calling {
                if status == 180 {
                    tracing::info!(call = id, caller = %call.caller, callee = %call.callee, "ringing");
                }
                if call.record.ringing_ms.is_none() {
                    call.record.ringing_ms = Some(self.unix_ms as i64);
                    self.emit_record(&mut call);
                }
                self.relay_to_a(&mut call, &resp, now);
            }
        } else if status < 300 {
            call.answered = Some(index);
            call.ring_until = None;
            call.state = State::Answered;
            call.answered_at = Some(now);
            call.media_check = Some(now + self.media_check_interval());
            self.stats.calls_answered += 1;
            if let Some(b) = call.branches.get_mut(index) {
                b.final_status = Some(status);
                b.leg.remote_tag = resp.to_tag();
                if let Some(target) = resp.contact_uri() {
                    b.leg.target = target;
                }
                // As UAC: the 2xx's Record-Route values, reversed (RFC 3261 12.1.2).
                b.leg.route = route_set(resp.address_list("Record-Route"), true);
                b.leg.cseq = b.invite.cseq().map(|c| c.seq).unwrap_or(1);
            }
            for i in 0..call.branches.len() {
                if i != index {
                    self.cancel_branch(&mut call, i, now);
                }
            }
            tracing::info!(call = id, caller = %call.caller, callee = %call.callee, "answered");
            call.record.b_call_id = call.branches.get(index).map(|b| b.leg.call_id.clone());
            self.answered_record(&mut call, status, &resp.reason());
            let a_cseq = call.a_invite.cseq().map(|c| c.seq).unwrap_or(0);
            let bytes = self.relay_to_a(&mut call, &resp, now);
            if let Some(bytes) = bytes {
                let t1 = self.config.timers().t1;
                call.pending_ok = Some(PendingOk {
                    bytes,
                    dest: call.a.dest.clone(),
                    next: now + t1,
                    interval: t1,
                    give_up: now + t1 * 64,
                    cseq: a_cseq,
                    side: Side::A,
                });
                if call.a.dest.transport.is_reliable() {
                    // No retransmission over TCP; only the ACK deadline remains.
                    if let Some(p) = call.pending_ok.as_mut() {
                        p.next = p.give_up;
                    }
                }
            }
            call.owed_ack = Some((
                Side::B,
                call.branches
                    .get(index)
                    .and_then(|b| b.invite.cseq())
                    .map(|c| c.seq)
                    .unwrap_or(1),
            ));
        } else {
            if let Some(b) = call.branches.get_mut(index) {
                b.final_status = Some(status);
            }
            // What explains a refusal travels back with it (ATIS-1000099 asks that a 603+'s
            // Reason reach the caller unchanged; RFC 8688 a 608's Call-Info).
            let explains = ["Reason", "Call-Info"]
                .iter()
                .flat_map(|name| {
                    resp.headers(name)
                        .into_iter()
                        .map(|v| (name.to_string(), v))
                })
                .collect();
            let reason = match self.phrases.get(&status) {
                Some(text) if self.config.sip.rewrite_relayed_phrases => text.clone(),
                _ => resp.reason(),
            };
            call.note_failure_with(status, &reason, explains);
            self.end_if_every_branch_failed(&mut call, now);
        }
        self.schedule(&call);
        self.finish_or_keep(call);
    }

    /// Relay a callee response to the caller's INVITE; returns the bytes for a 2xx.
    fn relay_to_a(&mut self, call: &mut Call, resp: &Response, now: Instant) -> Option<Bytes> {
        let mut out = Response::relay(&call.a_invite, resp);
        self.relayed_phrase(&mut out);
        out.set_to_tag(&call.a.local_tag);
        // A dialog-creating response echoes the request's Record-Route (RFC 3261 12.1.1).
        for rr in call.a_invite.headers("Record-Route") {
            let _ = out.push_header("Record-Route", &rr);
        }
        let _ = out.push_header("Contact", &self.contact(call.a.dest.transport));
        let _ = out.push_header("Server", &self.config.sip.user_agent);
        if resp.status() >= 200 {
            let _ = out.push_header("Allow", ALLOW);
        }
        let content_type = resp.header("Content-Type");
        // An answer, unless the caller's INVITE had no offer (then the callee offers).
        let role = if call.a_invite.body().is_empty() {
            Role::Offer
        } else {
            Role::Answer
        };
        let body = self.anchor_or_pass(
            &mut call.media,
            Side::B,
            resp.body(),
            content_type.as_deref(),
            role,
        );
        out.set_body(body, content_type.as_deref());
        let bytes = out.to_bytes();
        self.tx.respond(&call.a_invite_tx, out, now);
        Some(bytes)
    }

    /// When every branch has failed and none answered, tell the caller the most meaningful
    /// failure (unless it already got 487/408) and end the call.
    fn end_if_every_branch_failed(&mut self, call: &mut Call, now: Instant) {
        if call.answered.is_some() {
            return;
        }
        // A dialplan bridge: only the current attempt's branches count, and its failure
        // moves the dialplan on (failover, next action) rather than ending the call.
        if let Some(first) = call.bridge().map(|a| a.first_branch) {
            let lookups_pending = call.bridge().is_some_and(|a| a.pending_lookups > 0);
            let attempt_over = !lookups_pending
                && call.branches[first.min(call.branches.len())..]
                    .iter()
                    .all(|b| b.final_status.is_some());
            if attempt_over && !call.abandoned {
                self.bridge_failed(call, now);
            }
            return;
        }
        if !call.all_branches_final() || call.program.is_some() || call.announcing.is_some() {
            return;
        }
        if call.state == State::Done {
            return;
        }
        if !call.abandoned {
            let (status, reason) = call
                .best_failure
                .clone()
                .unwrap_or((480, self.phrase(480).to_owned()));
            if self.announce(call, status, &reason, now) {
                return; // the failure follows when the announcement ends
            }
            self.decline(call, status, &reason, now);
        }
        call.state = State::Done;
    }

    /// The caller's final failure response.
    fn decline(&mut self, call: &mut Call, status: u16, reason: &str, now: Instant) {
        tracing::info!(call = call.id, caller = %call.caller, callee = %call.callee, status, "call declined");
        let by_callee = call.branches.iter().any(|b| b.final_status == Some(status));
        match (by_callee, status) {
            (true, _) => call.note_end("callee", "declined"),
            (false, 408) => call.note_end("warden", "no answer"),
            (false, _) => call.note_end("warden", "rejected"),
        }
        call.set_final(status, reason);
        let mut out = self.caller_response(call, status, reason, None);
        for (name, value) in &call.reject_headers {
            let _ = out.push_header(name, value);
        }
        self.tx.respond(&call.a_invite_tx, out, now);
    }

    /// Warden's own response to the caller's INVITE (not a callee's relayed): the caller
    /// leg's To tag and Server; with `sdp`, Warden's Contact and that body.
    fn caller_response(
        &self,
        call: &Call,
        status: u16,
        reason: &str,
        sdp: Option<String>,
    ) -> Response {
        let mut out = Response::to_request(&call.a_invite, status, reason);
        out.set_to_tag(&call.a.local_tag);
        if let Some(sdp) = sdp {
            let _ = out.push_header("Contact", &self.contact(call.a.dest.transport));
            out.set_body(Bytes::from(sdp), Some("application/sdp"));
        }
        let _ = out.push_header("Server", &self.config.sip.user_agent);
        out
    }

    /// Play the caller the announcement for `status` as early media (183 with Warden's own
    /// SDP answer), when configured and possible; the failure is sent when it ends.
    fn announce(&mut self, call: &mut Call, status: u16, reason: &str, now: Instant) -> bool {
        let name = match status {
            404 | 410 | 480 => "user_unavailable",
            486 | 600 => "busy",
            _ => return false,
        };
        if !self.config.calls.announce_failures
            || !self.play_to_caller(call, &[name], 0, false, now)
        {
            return false;
        }
        tracing::info!(call = call.id, caller = %call.caller, status, prompt = name, "announcing before the failure");
        call.announcing = Some(AfterPrompt::Fail(status, reason.to_owned()));
        true
    }

    /// How long the prompt `name` plays (zero when unknown).
    fn prompt_length(&mut self, name: &str) -> Duration {
        // Any codec measures it: the frames are 20 ms whatever the encoding.
        warden_media::codec::by_name("PCMU", 8000)
            .and_then(|pcmu| self.prompts.encoded(name, pcmu))
            .map_or(Duration::ZERO, |p| {
                Duration::from_millis(p.frames.len() as u64 * 20)
            })
    }

    /// Play the prompts `names` (back to back) to the caller as early media: 183 with
    /// Warden's own SDP answer (the caller's first codec Warden can encode), `repeat` more
    /// times, stopped by a key when `barge_in`. False when it cannot (no offer, no playable
    /// codec, no such prompt).
    fn play_to_caller(
        &mut self,
        call: &mut Call,
        names: &[&str],
        repeat: u32,
        barge_in: bool,
        now: Instant,
    ) -> bool {
        let listen = barge_in || call.answered_by_warden;
        let Some(plan) = call.media.answer_caller(&mut self.media, call.id, listen) else {
            return false;
        };
        let name = names.join(" ");
        let Some(prompt) = self.prompts.sequence(names, plan.codec) else {
            tracing::warn!(call = call.id, prompt = %name, "no such prompt; skipped");
            return false;
        };
        let seconds = prompt.frames.len() as u64 * u64::from(repeat + 1) / 50;
        if call.state == State::Calling {
            let progress = self.caller_response(call, 183, "Session Progress", Some(plan.sdp));
            self.tx.respond(&call.a_invite_tx, progress, now);
        }
        self.media.play(
            plan.stream,
            MediaSide::A,
            prompt,
            Playback {
                payload_type: plan.payload_type,
                repeat,
                stop_on_dtmf: barge_in,
            },
        );
        tracing::info!(call = call.id, caller = %call.caller, prompt = %name, codec = plan.codec.name, "playing to the caller");
        // Should the relay never report the end, the call still goes on.
        call.ring_until = Some(now + Duration::from_secs(seconds + 3));
        true
    }

    /// One party put the call on hold (`on`) or took it off: `listener`, the other party,
    /// hears the route's music on hold, looped, until then (its own party's packets toward
    /// it are held back meanwhile by the relay).
    fn hold_music(&mut self, call: &mut Call, listener: Side, on: bool) {
        let Some((stream, codec, payload_type)) = call.media.receiving(listener) else {
            return;
        };
        if !on {
            self.media.stop_playing(stream, media_side(listener));
            tracing::info!(
                call = call.id,
                held = listener.name(),
                "call resumed; music on hold stops"
            );
            return;
        }
        let name = call
            .hold_music
            .clone()
            .unwrap_or_else(|| self.config.media.hold_music.clone());
        if name.is_empty() {
            return;
        }
        let Some(prompt) = self.prompts.sequence(&[&name], codec) else {
            tracing::warn!(call = call.id, prompt = %name, "no such prompt for music on hold");
            return;
        };
        let how = Playback {
            payload_type,
            repeat: u32::MAX,
            stop_on_dtmf: false,
        };
        self.media.play(stream, media_side(listener), prompt, how);
        tracing::info!(call = call.id, held = listener.name(), prompt = %name, codec = codec.name, "call on hold; playing music on hold");
    }

    /// The announcement is over (played out, or its deadline passed): send the failure, or
    /// go on with the dialplan.
    fn end_announcement(&mut self, call: &mut Call, now: Instant) {
        match call.announcing.take() {
            Some(AfterPrompt::Fail(status, reason)) => {
                call.ring_until = None;
                self.decline(call, status, &reason, now);
                call.state = State::Done;
            }
            Some(AfterPrompt::Continue) => {
                call.ring_until = None;
                self.run_program(call, now);
            }
            // A menu keeps listening after its prompt: its digit timeout decides.
            Some(AfterPrompt::Menu) => {
                call.ring_until = None;
                call.announcing = Some(AfterPrompt::Menu);
            }
            None => {}
        }
    }

    /// Something the media relay reported.
    pub fn handle_media_event(&mut self, event: MediaEvent, now: Instant) {
        match event {
            MediaEvent::PlaybackDone { stream, .. } => self.on_playback_done(stream, now),
            MediaEvent::Dtmf {
                stream,
                side,
                digit,
            } => self.on_rtp_dtmf(stream, side, digit, now),
        }
    }

    /// Start collecting the caller's key presses (RFC 4733 events or SIP INFO alike) for
    /// call `id`: the call state machine's input for menus. False when there is no such
    /// call. The result lands in `Call::collected` (see `collected_digits`).
    pub fn collect_digits(&mut self, id: u64, spec: DigitSpec, now: Instant) -> bool {
        let Some(mut call) = self.calls.remove(&id) else {
            return false;
        };
        let _span = call.enter();
        self.start_collecting(&mut call, spec, now);
        self.schedule(&call);
        self.finish_or_keep(call);
        true
    }

    /// A new input: the collector, and the relay reporting the caller's keys.
    fn start_collecting(&mut self, call: &mut Call, spec: DigitSpec, now: Instant) {
        call.digits = Some(DigitCollector::new(spec, now));
        call.collected = None;
        if let Some(stream) = call.media.first_stream() {
            self.media.report_dtmf(stream, MediaSide::A, true);
        }
    }

    /// The caller answered a prompt that listens (a menu, a challenge): stop it playing.
    fn stop_prompt(&mut self, call: &mut Call) {
        if let Some(stream) = call.media.first_stream() {
            self.media.stop_playing(stream, MediaSide::A);
        }
        call.announcing = None;
        call.ring_until = None;
    }

    /// The caller's last finished input on call `id`.
    pub fn collected_digits(&self, id: u64) -> Option<&Collected> {
        self.calls.get(&id)?.collected.as_ref()
    }

    /// A key press from the caller while a menu listens.
    fn on_caller_digit(&mut self, call: &mut Call, key: char, now: Instant) {
        if let Some(done) = call.digits.as_mut().and_then(|d| d.push(key, now)) {
            self.digits_collected(call, done, now);
        }
        self.schedule(call);
    }

    fn digits_collected(&mut self, call: &mut Call, done: Collected, now: Instant) {
        tracing::info!(call = call.id, digits = %done.digits, ended = ?done.ended, "caller input collected");
        call.digits = None;
        if let Some(stream) = call.media.first_stream() {
            self.media.report_dtmf(stream, MediaSide::A, false);
        }
        if let Some(code) = call.challenge.take() {
            self.stop_prompt(call);
            if done.digits == code {
                tracing::info!(call = call.id, caller = %call.caller, "screening challenge passed");
                self.out
                    .push_back(Output::ChallengePassed { call: call.id });
                return self.run_program(call, now);
            }
            tracing::info!(call = call.id, caller = %call.caller, keyed = done.digits.len(), "screening challenge failed");
            return self.block(call, &crate::screening::Verdict::decline(), false, now);
        }
        if let Some(choices) = call.menu.take() {
            // A dialplan menu: the chosen rule's actions replace what was left; no or an
            // unknown key goes on with the next action.
            self.stop_prompt(call);
            let chosen = done
                .digits
                .chars()
                .next()
                .and_then(|key| choices.iter().find(|(k, _)| *k == key))
                .and_then(|(_, rule)| self.dialplan.rule(rule).cloned());
            if let (Some(rule), Some(program)) = (chosen, call.program.as_mut()) {
                tracing::info!(call = call.id, rule = %rule.name, "menu choice");
                program.rule = rule.name;
                program.actions = rule.actions;
                program.next = 0;
            }
            call.collected = Some(done);
            return self.run_program(call, now);
        }
        call.collected = Some(done);
    }

    /// A party pressed a key as RFC 4733 events: a listening menu takes the caller's; else
    /// a party that takes no events gets it as SIP INFO (application/dtmf-relay).
    fn on_rtp_dtmf(&mut self, stream: StreamId, side: MediaSide, digit: Digit, now: Instant) {
        let from = match side {
            MediaSide::A => Side::A,
            MediaSide::B => Side::B,
        };
        let Some(id) = self
            .calls
            .values()
            .find(|c| c.media.contains(stream))
            .map(|c| c.id)
        else {
            return;
        };
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        if from == Side::A && call.digits.is_some() {
            self.on_caller_digit(&mut call, digit.key, now);
        } else if matches!(call.state, State::Confirmed | State::Answered)
            // Reported only because a menu listened: the far side had it in RTP.
            && call.media.events_toward(from.other()).is_some()
            && let Some((mut info, dest)) =
                self.side_request(&mut call, from.other(), Method::Info, None)
        {
            info.set_body(
                Bytes::from(dtmf_relay::body(digit.key, digit.duration)),
                Some(dtmf_relay::CONTENT_TYPE),
            );
            tracing::debug!(call = id, key = %digit.key, to = from.other().name(), "DTMF as SIP INFO");
            self.send_in_dialog(info, dest, ClientPurpose::Untracked, now);
        }
        self.finish_or_keep(call);
    }

    fn on_playback_done(&mut self, stream: StreamId, now: Instant) {
        let id = self
            .calls
            .values()
            .find(|c| c.announcing.is_some() && c.media.contains(stream))
            .map(|c| c.id);
        if let Some(mut call) = id.and_then(|id| self.calls.remove(&id)) {
            let _span = call.enter();
            self.end_announcement(&mut call, now);
            self.finish_or_keep(call);
        }
    }

    fn on_relay_response(&mut self, id: u64, key: TxKey, resp: Response, now: Instant) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        let Some(r) = self.relays.get(&key) else {
            return self.finish_or_keep(call);
        };
        let (server, from, method, far_cseq) =
            (r.server.clone(), r.from, r.method.clone(), r.far_cseq);
        if resp.status() >= 200 {
            self.relays.remove(&key);
        }
        if resp.status() == 100 {
            return self.finish_or_keep(call);
        }
        if let Some(req) = self.tx.server_request(&server) {
            let mut out = Response::relay(&req, &resp);
            self.relayed_phrase(&mut out);
            if let Some(leg) = call.leg_mut(from) {
                let tag = leg.local_tag.clone();
                out.set_to_tag(&tag);
            }
            if method == Method::Invite || method == Method::Update {
                let _ = out.push_header("Contact", &self.contact(call.a.dest.transport));
            }
            let content_type = resp.header("Content-Type");
            let role = if req.body().is_empty() {
                Role::Offer
            } else {
                Role::Answer
            };
            let body = self.anchor_or_pass(
                &mut call.media,
                from.other(),
                resp.body(),
                content_type.as_deref(),
                role,
            );
            out.set_body(body, content_type.as_deref());
            if method == Method::Invite && (200..300).contains(&resp.status()) {
                // The far side's 2xx is ACKed when the requester ACKs ours (the answer may be
                // in that ACK); until then we retransmit our 2xx to the requester.
                if let Some(far_leg) = call.leg_mut(from.other())
                    && let Some(tag) = resp.to_tag()
                {
                    far_leg.remote_tag = Some(tag);
                }
                let t1 = self.config.timers().t1;
                let dest = call.leg_mut(from).map(|l| l.dest.clone());
                if let Some(dest) = dest {
                    let reliable = dest.transport.is_reliable();
                    call.pending_ok = Some(PendingOk {
                        bytes: out.to_bytes(),
                        dest,
                        next: if reliable { now + t1 * 64 } else { now + t1 },
                        interval: t1,
                        give_up: now + t1 * 64,
                        cseq: req.cseq().map(|c| c.seq).unwrap_or(0),
                        side: from,
                    });
                }
                call.owed_ack = Some((from.other(), far_cseq));
            }
            self.tx.respond(&server, out, now);
        }
        self.schedule(&call);
        self.finish_or_keep(call);
    }

    /// An ACK outside any transaction: the ACK for a 2xx Warden sent.
    fn on_ack(&mut self, ack: Request) {
        let Some((id, side)) = ack
            .call_id()
            .zip(ack.to_tag())
            .and_then(|k| self.dialogs.get(&k).copied())
        else {
            return;
        };
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        let seq = ack.cseq().map(|c| c.seq);
        if call
            .pending_ok
            .as_ref()
            .is_some_and(|p| p.side == side && Some(p.cseq) == seq)
        {
            call.pending_ok = None;
            if call.state == State::Answered {
                call.state = State::Confirmed;
            }
            if let Some((far, far_cseq)) = call.owed_ack.take() {
                let content_type = ack.header("Content-Type");
                self.send_ack(&mut call, far, far_cseq, ack.body().clone(), content_type);
            }
        }
        self.schedule(&call);
        self.finish_or_keep(call);
    }

    /// ACK a 2xx on `side` (CSeq `cseq`), carrying `body` (the answer, for a delayed offer).
    fn send_ack(
        &mut self,
        call: &mut Call,
        side: Side,
        cseq: u32,
        body: Bytes,
        content_type: Option<String>,
    ) {
        let index = call.answered;
        let body = self.anchor_or_pass(
            &mut call.media,
            side.other(),
            &body,
            content_type.as_deref(),
            Role::Answer,
        );
        let Some((mut ack, dest)) = self.side_request(call, side, Method::Ack, Some(cseq)) else {
            return;
        };
        ack.set_body(body, content_type.as_deref());
        let bytes = ack.to_bytes();
        self.out.push_back(Output::Send(dest, bytes.clone()));
        if side == Side::B
            && let Some(b) = index.and_then(|i| call.branches.get_mut(i))
        {
            b.ack = Some(bytes);
        }
    }

    /// A 2xx retransmission from a callee: resend the ACK we already sent for it.
    fn on_stray_response(&mut self, resp: Response) {
        if !(200..300).contains(&resp.status()) {
            return;
        }
        let Some((id, _)) = resp
            .call_id()
            .zip(resp.from_tag())
            .and_then(|k| self.dialogs.get(&k).copied())
        else {
            return;
        };
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let call_id = resp.call_id();
        for b in &call.branches {
            if Some(&b.leg.call_id) == call_id.as_ref()
                && let Some(ack) = &b.ack
            {
                self.out
                    .push_back(Output::Send(b.leg.dest.clone(), ack.clone()));
            }
        }
    }

    fn on_tx_timeout(&mut self, key: TxKey, now: Instant) {
        let Some(purpose) = self.client.remove(&key) else {
            return;
        };
        match purpose {
            ClientPurpose::Invite { call, branch } => {
                let Some(mut c) = self.calls.remove(&call) else {
                    return;
                };
                let _span = c.enter();
                if let Some(b) = c.branches.get_mut(branch)
                    && b.final_status.is_none()
                {
                    b.final_status = Some(408);
                    if c.transfer
                        .as_ref()
                        .is_some_and(|t| t.branch == Some(branch))
                    {
                        self.transfer_failed(&mut c, 408, now);
                        return self.finish_or_keep(c);
                    }
                    c.note_failure(408, "Request Timeout");
                    tracing::info!(call, branch, "callee did not answer the INVITE (Timer B)");
                    self.end_if_every_branch_failed(&mut c, now);
                }
                self.finish_or_keep(c);
            }
            ClientPurpose::Bye { call } => {
                if let Some(mut c) = self.calls.remove(&call) {
                    let _span = c.enter();
                    c.outstanding_byes = c.outstanding_byes.saturating_sub(1);
                    if c.outstanding_byes == 0 {
                        c.state = State::Done;
                    }
                    self.finish_or_keep(c);
                }
            }
            ClientPurpose::Relay { .. } => {
                if let Some(relay) = self.relays.remove(&key)
                    && let Some(req) = self.tx.server_request(&relay.server)
                {
                    self.respond(&relay.server, &req, 408, None, now);
                }
            }
            ClientPurpose::Join { call, side } => self.join_failed(call, side, now),
            ClientPurpose::Untracked => {}
        }
    }

    // ----- call timers ------------------------------------------------------------------

    fn on_call_tick(&mut self, id: u64, now: Instant) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        if call.announcing.is_some() && call.ring_until.is_some_and(|t| t <= now) {
            self.end_announcement(&mut call, now);
        }
        if let Some(done) = call.digits.as_mut().and_then(|d| d.poll(now)) {
            self.digits_collected(&mut call, done, now);
        }
        if let Some(t) = call.transfer.as_mut()
            && t.until.is_some_and(|u| u <= now)
        {
            // The target rang out: its 487 reports the failure.
            t.until = None;
            if let Some(index) = t.branch {
                tracing::info!(call = id, "no answer from the transfer target");
                self.cancel_branch(&mut call, index, now);
            }
        }
        if call.ring_until.is_some_and(|t| t <= now) && call.state == State::Calling {
            let attempt = call.bridge().map(|a| a.first_branch);
            match attempt {
                Some(first) => {
                    // A dialplan bridge rang out: cancel it and let the dialplan go on.
                    tracing::info!(call = id, caller = %call.caller, callee = %call.callee, "no answer from this bridge target");
                    call.ring_until = None;
                    for i in first..call.branches.len() {
                        self.cancel_branch(&mut call, i, now);
                    }
                    call.note_failure(408, self.phrase(408));
                    self.bridge_failed(&mut call, now);
                }
                None => {
                    tracing::info!(call = id, caller = %call.caller, callee = %call.callee, "no answer; call timed out");
                    call.note_end("warden", "no answer");
                    self.abandon(&mut call, 408, now);
                }
            }
        }
        if call.media_check.is_some_and(|t| t <= now) {
            call.media_check = Some(now + self.media_check_interval());
            if call.state == State::Confirmed
                && call.media.has_streams()
                && call.media.timed_out(&self.media, now, self.media_timeout())
            {
                tracing::info!(call = id, caller = %call.caller, callee = %call.callee, timeout_s = self.config.media.rtp_timeout_s, "no RTP from either side; ending the call");
                call.note_end("warden", "media timeout");
                call.media_check = None;
                self.send_bye(&mut call, Side::A, now);
                self.send_bye(&mut call, Side::B, now);
            }
        }
        if let Some(p) = call.pending_ok.as_mut() {
            if p.give_up <= now {
                tracing::warn!(call = id, "no ACK for the 2xx; ending the call");
                let side = p.side;
                call.pending_ok = None;
                call.note_end("warden", "no ACK");
                if let Some((far, far_cseq)) = call.owed_ack.take() {
                    self.send_ack(&mut call, far, far_cseq, Bytes::new(), None);
                }
                self.send_bye(&mut call, side, now);
                self.send_bye(&mut call, side.other(), now);
            } else if p.next <= now {
                self.out
                    .push_back(Output::Send(p.dest.clone(), p.bytes.clone()));
                p.interval = (p.interval * 2).min(self.config.timers().t2);
                p.next = (now + p.interval).min(p.give_up);
            }
        }
        self.schedule(&call);
        self.finish_or_keep(call);
    }

    fn schedule(&mut self, call: &Call) {
        if let Some(t) = call.next_wake() {
            self.wakes.insert((t, call.id));
        }
    }

    /// Put a call back, or forget it when it is over (and every branch has settled).
    fn finish_or_keep(&mut self, call: Call) {
        let settled = call.all_branches_final() || call.answered.is_some();
        if call.state == State::Done && settled && call.outstanding_byes == 0 {
            let mut call = call;
            if call.media.has_streams() {
                let m = call.media.summary(&self.media);
                tracing::info!(
                    call = call.id,
                    ended_by = call.ended_by.map_or("signalling", |e| e.1),
                    caller_rtp = m.caller.rtp_packets,
                    caller_lost = m.caller.lost,
                    caller_jitter_us = m.caller.jitter_us,
                    callee_rtp = m.callee.rtp_packets,
                    callee_lost = m.callee.lost,
                    callee_jitter_us = m.callee.jitter_us,
                    "media summary"
                );
            }
            self.ended_record(&mut call);
            if let Some(source) = call.guarded_source {
                self.guard.call_ended(source);
            }
            self.leave_conference(&call);
            call.media.close(&mut self.media);
            if call.screened {
                let answered_s = call
                    .answered_at
                    .filter(|_| call.answered.is_some())
                    .map_or(0, |t| self.clock.saturating_duration_since(t).as_secs());
                self.out.push_back(Output::Screened {
                    call: call.id,
                    answered_s,
                });
            }
            let a_key = (call.a.call_id.clone(), call.a.local_tag.clone());
            if self.dialogs.get(&a_key).is_some_and(|(c, _)| *c == call.id) {
                self.dialogs.remove(&a_key);
            }
            for leg in call.branches.iter().map(|b| &b.leg).chain(&call.former) {
                let key = (leg.call_id.clone(), leg.local_tag.clone());
                // A leg moved to another call (attended transfer) is that call's now.
                if self.dialogs.get(&key).is_some_and(|(c, _)| *c == call.id) {
                    self.dialogs.remove(&key);
                }
            }
            self.server_invites.remove(&call.a_invite_tx);
            self.client.retain(
                |_, p| !matches!(p, ClientPurpose::Invite { call: c, .. } if *c == call.id),
            );
            return;
        }
        self.calls.insert(call.id, call);
    }
}

/// `param` added to the URI of a name-addr (`"A" <sip:a@b>` -> `"A" <sip:a@b;param>`) or a
/// bare URI.
fn with_uri_param(name_addr: &str, param: &str) -> String {
    match name_addr.rfind('>') {
        Some(end) => format!("{};{param}{}", &name_addr[..end], &name_addr[end..]),
        None => format!("{name_addr};{param}"),
    }
}

fn warning_value(text: &str) -> String {
    format!("399 warden \"{}\"", text.replace(['"', '\\'], "'"))
}

/// RFC 3261 18.2.2: reliable -> the connection; rport -> source address and port;
/// otherwise the source address with the Via sent-by port.
fn response_destination(req: &Request, from: &Destination) -> Destination {
    if from.transport.is_reliable() {
        return from.clone();
    }
    let via: Option<Via> = req.top_via();
    let port = match via {
        Some(v) if v.rport.is_some() => from.addr.port(),
        Some(v) => v.port.unwrap_or(5060),
        None => from.addr.port(),
    };
    Destination {
        transport: from.transport,
        addr: std::net::SocketAddr::new(from.addr.ip(), port),
        conn: from.conn,
    }
}

/// Record-Route values as Route header values; a UAS keeps their order (RFC 3261 12.1.1),
/// a UAC reverses them (12.1.2).
fn route_set(values: Result<Vec<NameAddr>, Malformed>, reverse: bool) -> Vec<String> {
    let mut route: Vec<String> = values
        .map(|list| list.iter().map(|a| format!("<{}>", a.uri)).collect())
        .unwrap_or_default();
    if reverse {
        route.reverse();
    }
    route
}

fn strip_tag(header: &str) -> String {
    // Remove a ;tag=... header parameter (outside <>), keeping the rest of the value.
    let close = header.rfind('>').map(|i| i + 1).unwrap_or(0);
    let (addr, params) = header.split_at(close);
    let kept: Vec<&str> = params
        .split(';')
        .filter(|p| !p.trim().to_ascii_lowercase().starts_with("tag="))
        .collect();
    format!("{addr}{}", kept.join(";")).trim().to_owned()
}

/// Reason phrases for responses Warden generates (RFC 3261 21).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        // RFC 8224: a caller's identity could not be verified.
        436 => "Bad Identity Info",
        437 => "Unsupported Credential",
        438 => "Invalid Identity Header",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        603 => "Decline",
        608 => "Rejected",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_tag_keeps_other_params() {
        assert_eq!(strip_tag("<sip:a@b;lr>;tag=x;foo=1"), "<sip:a@b;lr>;foo=1");
        assert_eq!(strip_tag("\"A\" <sip:a@b>"), "\"A\" <sip:a@b>");
    }
}

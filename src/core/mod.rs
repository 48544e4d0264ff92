//! The signalling endpoint, sans-IO: messages and time in, bytes to send and records to
//! store out. It owns the transaction layer and every call; the registrar, guard, rooms,
//! gateways and counters are its own too, or one copy shared with its sibling shards
//! (`crate::shard`) when the server runs several.
//!
//! Like quinn-proto's `Endpoint`, this module only demultiplexes: which call a message or
//! a timer belongs to, the transaction layer, and the output queue. What happens to a call
//! lives in one module per call flow (below). One core owns its calls outright (no locks):
//! `handle_message` / `handle_timeout` / `handle_media_event` / `handle_screened` /
//! `handle_resolved` mutate, `poll_output` drains what the driver must do, `poll_timeout`
//! says when to call back. Media is asked for through [`crate::media::Media`].
//!
//! | module | call flow |
//! | --- | --- |
//! | `invite` | a new call: admission, the caller's offer, the call handed to its program |
//! | `program` | the dialplan's actions one after the other; Warden answering, redirects |
//! | `bridge` | bridge targets resolved, callee branches, failover and forking |
//! | `after_answer` | a bridge after Warden answered the caller itself |
//! | `responses` | callee answers: provisionals, the winning 2xx, failures |
//! | `in_dialog` | BYE, re-INVITE, INFO and the rest inside a call; ACKs |
//! | `cancel` | CANCEL, and giving up an attempt |
//! | `screen` | screening's request and verdict: allow, block, challenge |
//! | `announce`, `digits` | prompts, music on hold, menus, the caller's keys |
//! | `rooms` | conference rooms: join, chimes, leave |
//! | `transfer`, `attended` | blind (REFER) and attended (Replaces) transfer |
//! | `originate`, `control` | calls the API places; prompts, keys and transfers it asks for |
//! | `timers` | transaction timeouts and each call's deadlines |
//! | `ending` | BYE, Warden hanging up, a finished call forgotten |
//! | `records` | call detail records |
//! | `pager` | MESSAGE outside a dialog, routed by the dialplan |
//! | `probing` | OPTIONS to probed gateways, down ones skipped |
//! | `prack`, `session` | reliable provisionals and PRACK; session timers, longest call |
//! | `register`, `messages`, `anchoring` | REGISTER and digest; building messages; SDP |

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use warden_media::MediaEvent;
use warden_media::codec::Codec;
use warden_media::prompt::Prompts;

use crate::call::conference::Rooms;
use crate::call::digits::DigitSpec;
use crate::call::{Call, Relay, Side, new_tag};
use crate::cdr::Record;
use crate::config::Config;
use crate::dialplan::Dialplan;
use crate::dns::{Found, Lookup};
use crate::guard::Guard;
use crate::media::Media;
use crate::registrar::{Change, Registrar};
use crate::shard::{Shard, Shared};
use crate::sip::message::{Message, Method, Request, Response};
use crate::sip::transaction::{Transactions, TxEvent, TxKey};
use crate::sip::transport::{Destination, Transport};

mod after_answer;
mod anchoring;
mod announce;
mod attended;
mod bridge;
mod cancel;
mod control;
mod digits;
mod edge;
mod ending;
mod handover;
mod in_dialog;
mod invite;
mod malformed;
mod messages;
mod originate;
mod pager;
mod prack;
mod probing;
mod program;
mod recording;
mod records;
mod register;
mod responses;
mod rooms;
mod screen;
mod session;
mod timers;
mod transfer;

use crate::sip::dialog::strip_tag;
pub use control::{Control, Party};
pub use handover::{HandedCall, Replaced};
use messages::response_destination;
pub use originate::{Originate, Placed, Then};
pub use screen::challenge_code;

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    Send(Destination, Bytes),
    /// A registration change for this node's own store.
    Store(Change),
    /// A registration change a REGISTER made here, for the cluster's other nodes (ignored
    /// outside a cluster).
    Share(Change),
    /// Look a bridge target up in DNS; answer with `Core::handle_resolved(call, attempt, ..)`.
    Resolve {
        call: u64,
        attempt: u64,
        lookup: Lookup,
    },
    /// Screen a call; answer with `Core::handle_screened(call, outcome)`.
    Screen(Box<crate::screening::Request>),
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
    /// Sharded: ask shard `lane` for the call whose dialog `replaces` names (answer with
    /// `Core::adopt(for_call, ..)`, from that shard's `Core::hand_over`).
    HandOver {
        lane: usize,
        replaces: Replaced,
        for_call: u64,
    },
    /// Sharded: these Call-IDs, brought here from another shard, may be routed by their
    /// hash again.
    Unpin(Vec<String>),
    /// For the live event stream (only while somebody subscribes).
    Event(Box<crate::events::Event>),
}

const ALLOW: &str =
    "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, UPDATE, INFO, MESSAGE, NOTIFY, REFER, PRACK";

/// Counters an operator (and the tests) can read.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Malformed messages by handling ("answered", "dropped") and reason label.
    pub malformed: std::collections::BTreeMap<(&'static str, &'static str), u64>,
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
    /// Warden's own session refresh on one leg (RFC 4028).
    Refresh {
        call: u64,
        side: Side,
    },
    /// An OPTIONS probing a gateway.
    Probe {
        addr: std::net::SocketAddr,
    },
    /// A MESSAGE forwarded outside any dialog (RFC 3428).
    Message {
        id: u64,
    },
    /// Warden's INVITE to an originated call's first party.
    Originate {
        call: u64,
    },
    /// CANCELs and the BYE to a losing fork: nobody waits for their answer.
    Untracked,
}

pub struct Core {
    config: Config,
    tx: Transactions,
    pub registrar: Shared<Registrar>,
    calls: HashMap<u64, Box<Call>>,
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
    /// The media every call's SDP is anchored to (the relay, or a test's fake).
    pub media: Box<dyn Media>,
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
    /// Why call records cannot be kept now (new calls get 503), if they cannot.
    records_failing: Option<String>,
    /// The operator's reason phrases by code (`sip.reason_phrases`).
    phrases: HashMap<u16, String>,
    /// Conference rooms and the calls in them.
    pub rooms: Shared<Rooms>,
    pub stats: Shared<Stats>,
    /// When each source last had a dropped message logged.
    drop_log: malformed::DropLog,
    /// Flood and abuse protection: rates, bans, calls per source.
    pub guard: Shared<Guard>,
    /// What the core draws itself (the challenge's code): from the OS, or a test's seed.
    rng: rand::rngs::StdRng,
    /// Sources whose INVITEs need no credentials (`calls.trusted`, the S-CSCFs).
    calls_trusted: Vec<(std::net::IpAddr, u8)>,
    /// Instant messages forwarded and waiting for their answers.
    pager: pager::Pager,
    /// The gateways probed with OPTIONS (`probe = true` bridges).
    gateways: Shared<crate::sip::probe::Gateways>,
    /// This core's place among the signalling shards.
    shard: Shard,
    /// REFERs waiting for the call they replace to come from another shard, by call.
    awaited_joins: HashMap<u64, handover::AwaitedJoin>,
    /// Call-IDs of calls brought here from another shard (their messages are pinned here).
    pinned: std::collections::HashSet<String>,
    /// Whether the event stream has subscribers (events are built only then).
    listeners: crate::events::Listeners,
    /// Calls placed by the API whose first party is still being rung (`originate`).
    originating: HashMap<u64, Box<originate::Origination>>,
}

impl Core {
    /// `advertised`: host:port per transport for Via and Contact.
    pub fn new(
        config: Config,
        registrar: Registrar,
        advertised: HashMap<Transport, String>,
        media: Box<dyn Media>,
        prompts: Prompts,
    ) -> Core {
        let instance = config.server.instance_name();
        // Resolved once: S-CSCFs may be given by name.
        let scscf = config.ims.trusted();
        let gateways = crate::sip::probe::Gateways::new(
            Duration::from_secs(config.calls.probe_s),
            config.calls.probe_failures,
        );
        Core {
            phrases: config.sip.phrases(),
            transcodable: config.media.transcodable(),
            guard: Shared::new(Guard::new(&config.guard, &scscf)),
            calls_trusted: [config.calls.trusted(), scscf.clone()].concat(),
            trusted_scscf: scscf,
            next_attempt: 1,
            rng: rand::SeedableRng::from_os_rng(),
            tx: Transactions::new(config.timers()),
            config,
            registrar: Shared::new(registrar),
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
            boot: format!("{:016x}", rand::random::<u64>()),
            draining: None,
            records_failing: None,
            rooms: Shared::default(),
            stats: Shared::default(),
            drop_log: Default::default(),
            pager: pager::Pager::default(),
            gateways: Shared::new(gateways),
            shard: Shard::ALONE,
            awaited_joins: HashMap::new(),
            pinned: Default::default(),
            listeners: Default::default(),
            originating: HashMap::new(),
        }
    }

    /// A core for another signalling shard beside this one: the same configuration,
    /// dialplan and identity, and the same registrar, guard, rooms, gateways and counters
    /// (one copy, shared); its own calls, transactions and media handle.
    pub fn sibling(&self, shard: Shard, media: Box<dyn Media>, prompts: Prompts) -> Core {
        let mut core = Core::new(
            self.config.clone(),
            Registrar::new(self.config.registrar.clone(), Vec::new()),
            self.advertised.clone(),
            media,
            prompts,
        );
        core.registrar = self.registrar.clone();
        core.guard = self.guard.clone();
        core.rooms = self.rooms.clone();
        core.stats = self.stats.clone();
        core.gateways = self.gateways.clone();
        core.dialplan = self.dialplan.clone();
        core.boot = self.boot.clone();
        core.listeners = self.listeners.clone();
        core.set_shard(shard);
        core
    }

    /// Report events (`Output::Event`) whenever `listeners` has any.
    pub fn set_event_listeners(&mut self, listeners: crate::events::Listeners) {
        self.listeners = listeners;
    }

    /// Tell the event stream what happened, when anybody listens (`what` is built only then).
    pub(super) fn report(&mut self, call: Option<u64>, what: impl FnOnce() -> crate::events::What) {
        if self.listeners.any() {
            let event = crate::events::Event {
                at_ms: self.unix_ms,
                call,
                what: what(),
            };
            self.out.push_back(Output::Event(Box::new(event)));
        }
    }

    /// This core's place among the signalling shards.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Take calls as shard `shard`: its call numbers, and the Call-IDs it makes, are its own.
    pub fn set_shard(&mut self, shard: Shard) {
        self.shard = shard;
        self.next_call = shard.first_call();
    }

    /// A Call-ID for a dialog Warden starts, drawn until it hashes to this shard (so the
    /// answers come back here).
    pub(super) fn new_call_id(&self) -> String {
        loop {
            let id = format!("{}@warden", new_tag());
            if self.shard.owns_call_id(&id) {
                return id;
            }
        }
    }

    /// Follow `plan` from now on, as another shard already does (its gateways are probed
    /// by the shard that set it).
    pub fn adopt_dialplan(&mut self, plan: Arc<Dialplan>) {
        self.dialplan = plan;
    }

    /// The dialplan new calls are routed by.
    pub fn dialplan(&self) -> Arc<Dialplan> {
        self.dialplan.clone()
    }

    /// Route new calls by `plan` from now on (calls in progress keep their actions).
    pub fn set_dialplan(&mut self, plan: Dialplan) {
        tracing::info!(origin = %plan.origin, rules = plan.rules.len(), "dialplan active");
        self.dialplan = Arc::new(plan);
        self.set_probed_gateways(self.clock);
    }

    /// Draw the core's own random choices (the challenge's code) from `seed`: tests that
    /// must know them reproduce them with the same seed.
    pub fn seed_random(&mut self, seed: u64) {
        self.rng = rand::SeedableRng::seed_from_u64(seed);
    }

    /// Live calls, counting those still ringing an originated call's first party.
    pub fn active_calls(&self) -> usize {
        self.calls.len() + self.originating.len()
    }

    /// Call records cannot be kept (`why`: the journal cannot be written, or its spool is
    /// full): new calls get 503 until `None` says they can again. Emergency calls go on.
    pub fn set_records_failing(&mut self, why: Option<String>) {
        self.records_failing = why;
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
                state: c.state_name(),
                rule: c.record.rule.clone(),
                received_ms: c.record.received_ms,
                answered_ms: c.record.answered_ms,
                age_s: (self.unix_ms as i64 - c.record.received_ms).max(0) / 1000,
                screening: c.record.screening.clone(),
            })
            .chain(self.originating_calls())
            .collect();
        out.sort_by_key(|c| c.id);
        out
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.tx.poll_timeout(),
            self.wakes.first().map(|(t, _)| *t),
            self.next_expiry_sweep,
            self.gateways.lock().next_wake(),
        ]
        .into_iter()
        .flatten()
        .min()
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
            .lock()
            .admit(from.addr.ip(), is_request, agent.as_deref(), now)
        {
            tracing::trace!(from = %from.addr, reason = why.as_str(), "dropped by the guard");
            return;
        }
        match message {
            Message::Request(mut r) => {
                if let Err(bad) = r.check() {
                    return self.refuse_malformed(&r, bad, &from);
                }
                if self.refused_at_edge(&r, &from, now) {
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
                    self.count_malformed("dropped", "response");
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

    /// The screener's decision on call `id`, waiting at its `screen` action.
    pub fn handle_screened(&mut self, id: u64, outcome: crate::screening::Outcome, now: Instant) {
        self.clock = self.clock.max(now);
        self.on_screened(id, outcome, now);
        self.drain(now, self.unix_s());
    }

    /// The driver's answer to an `Output::Resolve`.
    pub fn handle_resolved(&mut self, id: u64, attempt: u64, found: Vec<Found>, now: Instant) {
        self.clock = self.clock.max(now);
        self.on_resolved(id, attempt, found, now);
        self.drain(now, self.unix_s());
    }

    /// Something the media reported (a prompt ended, a key pressed).
    pub fn handle_media_event(&mut self, event: MediaEvent, now: Instant) {
        self.clock = self.clock.max(now);
        self.on_media_event(event, now);
        self.drain(now, self.unix_s());
    }

    /// Start collecting the caller's key presses on call `id` (RFC 4733 events or SIP
    /// INFO alike); the result lands in `collected_digits`. False when there is no such
    /// call.
    pub fn collect_digits(&mut self, id: u64, spec: DigitSpec, now: Instant) -> bool {
        let found = self.start_digits(id, spec, now);
        self.drain(now, self.unix_s());
        found
    }

    pub fn handle_timeout(&mut self, now: Instant, unix_ms: u64) {
        let unix_s = self.set_wall_clock(unix_ms);
        self.clock = self.clock.max(now);
        self.tx.handle_timeout(now);
        self.send_probes(now);
        while let Some(&(at, id)) = self.wakes.first() {
            if at > now {
                break;
            }
            self.wakes.remove(&(at, id));
            self.on_call_tick(id, now);
        }
        if self.next_expiry_sweep.is_some_and(|t| t <= now) {
            let expired = self.registrar.lock().expire(unix_s);
            for change in expired {
                self.store(change);
            }
            self.next_expiry_sweep = Some(now + Duration::from_secs(1));
        }
        self.drain(now, unix_s);
    }

    pub(super) fn set_wall_clock(&mut self, unix_ms: u64) -> u64 {
        self.unix_ms = unix_ms;
        self.unix_s()
    }

    /// The latest input's wall-clock time in seconds.
    pub(super) fn unix_s(&self) -> u64 {
        self.unix_ms / 1000
    }

    /// This run's id in the call records (crash recovery closes other runs' open ones).
    pub fn boot(&self) -> &str {
        &self.boot
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub(super) fn drain(&mut self, now: Instant, unix_s: u64) {
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

    pub(super) fn on_request(
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
        let unsupported = prack::unsupported(&req, self.config.calls.reliable_provisionals);
        if !unsupported.is_empty() && method != Method::Cancel {
            let mut resp = Response::to_request(&req, 420, self.phrase(420));
            resp.set_to_tag(&new_tag());
            let _ = resp.push_header("Unsupported", &unsupported.join(", "));
            self.tx.respond(&key, resp, now);
            return;
        }
        match method {
            Method::Register => self.on_register(key, req, from, unix_s, now),
            Method::Invite => self.on_invite(key, req, from, now, unix_s),
            Method::Cancel => self.on_cancel(key, req, now),
            Method::Message => self.on_message(key, req, from, now, unix_s),
            Method::Options => self.respond(&key, &req, 200, None, now),
            Method::Other(_) => self.respond(&key, &req, 501, None, now),
            _ => self.respond(&key, &req, 405, None, now),
        }
    }

    pub(super) fn schedule(&mut self, call: &Call) {
        if let Some(t) = call.next_wake() {
            self.wakes.insert((t, call.id));
        }
    }
}

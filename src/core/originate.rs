//! Calls placed by the API (`POST /calls`, `warden ctl originate`): Warden rings the first
//! party with an INVITE of its own; once that party answers, the call goes on as if the
//! party had dialled: a number through the dialplan, a bridge target, a prompt or a room.
//!
//! The INVITE offers nothing (RFC 3261 13.2.1): the party's 200 OK brings the offer and
//! Warden's answer rides in the ACK. The answered party is then anchored exactly like a
//! caller's INVITE, and the call is one Warden answered itself (`after_answer`), with a
//! caller's INVITE made up from the first party's side, so the rest of the flows (the
//! dialplan, screening, bridging, transfers, records) treat it like any call.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ClientPurpose, Core};
use crate::anchor::MediaSession;
use crate::anchor::negotiate::Role;
use crate::call::{Call, Invited, Leg, Program, Side, State, new_tag};
use crate::cdr::Record;
use crate::dialplan::template::{Template, Values};
use crate::dialplan::{Action, BridgeMode};
use crate::dns::literal_destination;
use crate::events::What;
use crate::sip::message::{Method, Request, Response, Uri};
use crate::sip::transaction::TxKey;
use crate::sip::transport::Destination;

/// What `POST /calls` asks for.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Originate {
    /// The party rung first: a user (`alice`, `user:alice`: the contact it registered) or
    /// a SIP URI with an address (`sip:gw@192.0.2.7:5060`).
    pub to: String,
    /// What follows when it answers.
    pub then: Then,
    /// The number the first party's phone shows as calling (default: the `then` target's).
    pub caller_id: Option<String>,
    /// The display name with it.
    pub caller_name: Option<String>,
    /// How long the first party rings (default `calls.no_answer_timeout_s`).
    pub timeout_s: Option<u64>,
}

/// What the answered first party is connected to.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Then {
    /// A number run through the dialplan as the first party's own call.
    Dial(String),
    /// A bridge target, as the dialplan's `bridge` takes it (`user:bob`, a SIP URI).
    Bridge(String),
    /// A prompt played to the first party, then Warden hangs up.
    Play(String),
    /// A conference room the first party joins.
    Conference(String),
}

impl Then {
    fn target(&self) -> &str {
        match self {
            Then::Dial(t) | Then::Bridge(t) | Then::Play(t) | Then::Conference(t) => t,
        }
    }
}

/// The call a `POST /calls` placed: its number and its record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Placed {
    pub id: String,
    pub record: String,
}

/// An originated call whose first party is still being rung.
pub(super) struct Origination {
    id: u64,
    leg: Leg,
    invite: Request,
    tx: TxKey,
    /// The caller's INVITE the call will have, as if the first party had dialled.
    as_dialled: Request,
    program: Program,
    record: Record,
    until: Instant,
    provisional: bool,
    /// Given up (timeout, API hang-up) before any provisional: CANCEL once one comes.
    cancel_pending: bool,
    cancelled: bool,
    /// The CANCEL was the ring timeout's (the record says `no answer`, not `cancelled`).
    rang_out: bool,
}

impl Core {
    /// Place a call: ring `spec.to`, and on its answer go on with `spec.then`. Answers at
    /// once with the call's number; what happens next, the event stream and the record tell.
    pub fn originate(
        &mut self,
        spec: Originate,
        now: Instant,
        unix_ms: u64,
    ) -> Result<Placed, String> {
        let unix_s = self.set_wall_clock(unix_ms);
        self.clock = self.clock.max(now);
        if self.draining.is_some() {
            return Err("unavailable: shutting down\n".into());
        }
        if let Some(why) = &self.records_failing {
            return Err(format!("unavailable: call records cannot be kept: {why}\n"));
        }
        if self.calls.len() + self.originating.len() >= self.config.calls.max_calls {
            return Err("unavailable: call limit reached\n".into());
        }
        let (uri, dest, route) = self.first_party(&spec.to)?;
        let host = self.local_host(dest.transport);
        let user = Uri::parse(&uri)
            .ok()
            .and_then(|u| u.user())
            .unwrap_or_else(|| spec.to.clone());
        let shown = spec
            .caller_id
            .clone()
            .unwrap_or_else(|| spec.then.target().to_owned());
        let shown = shown.strip_prefix("user:").unwrap_or(&shown).to_owned();
        let display = spec
            .caller_name
            .as_deref()
            .map(|n| format!("\"{}\" ", n.replace(['"', '\\'], "")))
            .unwrap_or_default();
        let mut leg = Leg {
            call_id: self.new_call_id(),
            local_uri: format!("{display}<sip:{}@{host}>", uri_user(&shown)),
            local_tag: new_tag(),
            remote_uri: format!("<sip:{}@{host}>", uri_user(&user)),
            remote_tag: None,
            target: uri.clone(),
            route,
            cseq: 0,
            dest: dest.clone(),
        };
        let as_dialled = self.as_dialled(&leg, &spec.then, &host)?;
        let program = self.program_for(&spec.then, &as_dialled, &dest, unix_s)?;
        let mut invite = self
            .leg_request(&mut leg, Method::Invite, None)
            .ok_or_else(|| format!("bad request: {uri} is not a URI Warden can call\n"))?;
        let _ = invite.push_header("Allow", super::ALLOW);
        let _ = invite.push_header("Supported", "timer");
        let tx = self
            .tx
            .send_request(invite.clone(), dest, now)
            .ok_or_else(|| format!("unavailable: {uri} cannot be reached\n"))?;
        let id = self.next_call;
        self.next_call += self.shard.count as u64;
        self.stats.lock().calls_started += 1;
        let record = Record {
            id: crate::cdr::record::new_id(),
            instance: self.instance.clone(),
            boot: self.boot.clone(),
            a_call_id: leg.call_id.clone(),
            caller: user.clone(),
            callee: spec.then.target().to_owned(),
            source: "api".into(),
            origin: "api".into(),
            received_ms: unix_ms as i64,
            rule: Some(program.rule.clone()),
            rev: 1,
            ..Record::default()
        };
        self.out
            .push_back(super::Output::Record(Box::new(record.clone())));
        self.client
            .insert(tx.clone(), ClientPurpose::Originate { call: id });
        let ring = spec
            .timeout_s
            .unwrap_or(self.config.calls.no_answer_timeout_s);
        let until = now + Duration::from_secs(ring.max(1));
        self.wakes.insert((until, id));
        tracing::info!(call = id, first = %uri, then = ?spec.then, "originating a call");
        let placed = Placed {
            id: id.to_string(),
            record: record.id.clone(),
        };
        self.report(Some(id), || What::CallStarted {
            record: record.id.clone(),
            caller: user.clone(),
            callee: spec.then.target().to_owned(),
            origin: "api",
            rule: Some(program.rule.clone()),
        });
        self.originating.insert(
            id,
            Box::new(Origination {
                id,
                leg,
                invite,
                tx,
                as_dialled,
                program,
                record,
                until,
                provisional: false,
                cancel_pending: false,
                cancelled: false,
                rang_out: false,
            }),
        );
        self.drain(now, unix_s);
        Ok(placed)
    }

    /// Where the first party rings: a user's registered contact (the newest), or a SIP
    /// URI with an address.
    fn first_party(&self, to: &str) -> Result<(String, Destination, Vec<String>), String> {
        if to.starts_with("sip:") || to.starts_with("sips:") {
            let dest = literal_destination(to).ok_or_else(|| {
                format!("bad request: {to}: a SIP URI to originate to needs an IP address\n")
            })?;
            return Ok((to.to_owned(), dest, Vec::new()));
        }
        let user = to.strip_prefix("user:").unwrap_or(to);
        match self.user_contacts(user) {
            Ok(mut contacts) => {
                let ((contact, dest), route) = contacts.pop().ok_or("not found\n")?;
                Ok((contact, dest, route))
            }
            Err(404) => Err(format!("not found: no user {user}\n")),
            Err(_) => Err(format!("unavailable: {user} has no registered contact\n")),
        }
    }

    /// The INVITE the first party would have sent, had it dialled the `then` target: what
    /// the dialplan routes, screening judges and the callee's From comes from.
    fn as_dialled(&self, leg: &Leg, then: &Then, host: &str) -> Result<Request, String> {
        let dialled = match then {
            Then::Dial(number) => number.clone(),
            Then::Bridge(target) => Uri::parse(target)
                .ok()
                .and_then(|u| u.user())
                .unwrap_or_else(|| target.strip_prefix("user:").unwrap_or(target).to_owned()),
            Then::Play(name) | Then::Conference(name) => name.clone(),
        };
        let to = format!("sip:{}@{host}", uri_user(&dialled));
        let uri =
            Uri::parse(&to).map_err(|_| format!("bad request: {dialled} cannot be dialled\n"))?;
        Request::builder(Method::Invite, &uri)
            .header("Via", &self.via(leg.dest.transport, &new_tag()))
            .max_forwards(70)
            .header("From", &format!("{};tag={}", leg.remote_uri, new_tag()))
            .header("To", &format!("<{to}>"))
            .header("Call-ID", &leg.call_id)
            .cseq(1)
            .header("Contact", &format!("<{}>", leg.target))
            .build()
            .map_err(|e| format!("bad request: {e}\n"))
    }

    /// The actions the answered first party goes on with: the dialplan's rule for a
    /// number, or the one action asked for.
    fn program_for(
        &self,
        then: &Then,
        as_dialled: &Request,
        from: &Destination,
        unix_s: u64,
    ) -> Result<Program, String> {
        let literal =
            |text: &str| Template::parse(text).map_err(|e| format!("bad request: {text}: {e}\n"));
        let (rule, actions, values) = match then {
            Then::Dial(number) => {
                let facts = self.call_facts(as_dialled, from, unix_s);
                let decision = self
                    .dialplan
                    .evaluate(&facts)
                    .ok_or_else(|| format!("not found: no dialplan rule routes {number}\n"))?;
                (
                    decision.rule.name.clone(),
                    decision.rule.actions.clone(),
                    decision.values,
                )
            }
            Then::Bridge(target) => (
                "api:bridge".to_owned(),
                vec![Action::Bridge {
                    targets: vec![literal(target)?],
                    mode: BridgeMode::Sequential,
                    timeout: None,
                    probe: false,
                }],
                Values::default(),
            ),
            Then::Play(prompt) => {
                if !self.prompts.contains(prompt) {
                    return Err(format!("not found: no prompt {prompt}\n"));
                }
                (
                    "api:play".to_owned(),
                    vec![Action::Play {
                        prompt: literal(prompt)?,
                        repeat: 0,
                    }],
                    Values::default(),
                )
            }
            Then::Conference(room) => (
                "api:conference".to_owned(),
                vec![Action::Conference(literal(room)?)],
                Values::default(),
            ),
        };
        Ok(Program {
            rule,
            actions,
            next: 0,
            values,
            bridge: None,
        })
    }

    /// The first party's answer to Warden's INVITE.
    pub(super) fn on_origination_response(&mut self, id: u64, resp: Response, now: Instant) {
        let status = resp.status();
        if (200..300).contains(&status) && !self.originating.contains_key(&id) {
            // The answer again (our ACK was lost): the ACK again.
            if let Some(call) = self.calls.get(&id)
                && let Some(ack) = &call.a_ack
            {
                let dest = call.a.dest.clone();
                self.out
                    .push_back(super::Output::Send(dest, Bytes::clone(ack)));
            }
            return;
        }
        let Some(mut o) = self.originating.remove(&id) else {
            return;
        };
        if status < 200 {
            if status > 100 && !o.provisional {
                self.report(Some(id), || What::Ringing {
                    party: "first",
                    status,
                });
                o.record.ringing_ms = Some(self.unix_ms as i64);
                o.record.rev += 1;
                self.out
                    .push_back(super::Output::Record(Box::new(o.record.clone())));
            }
            o.provisional = true;
            if o.cancel_pending {
                self.cancel_origination(&mut o, now);
            }
            self.originating.insert(id, o);
            return;
        }
        if status >= 300 {
            let reason = resp.reason();
            tracing::info!(
                call = id,
                status,
                "originated call: the first party did not answer"
            );
            let why = match (o.rang_out, o.cancelled) {
                (true, _) => "no answer",
                (_, true) => "cancelled",
                _ => "first party failed",
            };
            return self.origination_over(o, status, &reason, why);
        }
        self.first_party_answered(*o, &resp, now);
    }

    /// The first party took the call: ACK with Warden's answer to its offer, and the call
    /// goes on as one Warden answered itself.
    fn first_party_answered(&mut self, o: Origination, resp: &Response, now: Instant) {
        let Origination {
            id,
            mut leg,
            invite,
            tx,
            mut as_dialled,
            program,
            mut record,
            ..
        } = o;
        let cseq = invite.cseq().map_or(1, |c| c.seq);
        leg.confirm(resp, cseq);
        let content_type = resp.header("Content-Type");
        let mut media = MediaSession::default();
        media.set_srtp_policy(Side::B, self.config.media.srtp);
        let offer = self.anchor(
            &mut media,
            Side::A,
            resp.body(),
            content_type.as_deref(),
            Role::Offer,
        );
        as_dialled.set_body(Bytes::copy_from_slice(resp.body()), content_type.as_deref());
        self.dialogs
            .insert((leg.call_id.clone(), leg.local_tag.clone()), (id, Side::A));
        let source = leg.dest.addr.ip();
        let caller = record.caller.clone();
        let callee = record.callee.clone();
        record.answered_ms = Some(self.unix_ms as i64);
        record.final_code = Some(200);
        record.final_reason = Some("OK".into());
        let b_offer = offer.as_ref().cloned().unwrap_or_default();
        let mut call = Box::new(Call::new(Invited {
            id,
            a: leg,
            invite: as_dialled,
            tx,
            caller,
            callee,
            record,
            media,
            program,
            b_offer,
            b_offer_type: content_type,
            source,
            now,
            session_expires: self.config.calls.session_expires_s,
            emergency: false,
        }));
        let _span = call.enter();
        call.answered_by_warden = true;
        call.state = State::Confirmed;
        call.answered_at = Some(now);
        let answer = offer
            .ok()
            .and_then(|_| call.media.answer_caller(&mut *self.media, id, true));
        let body = answer.as_ref().map(|a| Bytes::from(a.sdp.clone()));
        if let Some(mut ack) = self.leg_request(&mut call.a, Method::Ack, Some(cseq)) {
            if let Some(sdp) = &body {
                ack.set_body(sdp.clone(), Some("application/sdp"));
            }
            let bytes = ack.to_bytes();
            self.out
                .push_back(super::Output::Send(call.a.dest.clone(), bytes.clone()));
            call.a_ack = Some(Box::new(bytes));
        }
        self.stats.lock().calls_answered += 1;
        self.emit_record(&mut call);
        if body.is_none() {
            tracing::warn!(
                call = id,
                "originated call: the first party's answer offered nothing Warden can use; hanging up"
            );
            call.note_end("warden", "media refused");
            self.send_bye(&mut call, Side::A, now);
        } else {
            tracing::info!(call = id, caller = %call.caller, callee = %call.callee, "originated call answered by its first party");
            self.report(Some(id), || What::Answered { by: "first_party" });
            self.start_max_duration(&mut call, now);
            self.run_program(&mut call, now);
        }
        self.schedule(&call);
        drop(_span);
        self.finish_or_keep(call);
    }

    /// An originated call that never got its first party: its record closed with `status`.
    fn origination_over(
        &mut self,
        o: Box<Origination>,
        status: u16,
        reason: &str,
        why: &'static str,
    ) {
        let mut record = o.record;
        record.rev += 1;
        record.ended_ms = Some(self.unix_ms as i64);
        record.final_code = Some(i64::from(status));
        record.final_reason = Some(reason.to_owned());
        record.hangup_side = Some(if o.cancelled { "warden" } else { "caller" }.into());
        record.end_reason = Some(why.into());
        *self.stats.lock().final_codes.entry(status).or_default() += 1;
        self.out
            .push_back(super::Output::Record(Box::new(record.clone())));
        self.report(Some(o.id), || What::Ended {
            record: Box::new(record),
        });
        self.client.remove(&o.tx);
    }

    /// Stop ringing the first party (timeout, API hang-up): CANCEL once it has answered
    /// provisionally (RFC 3261 9.1), until then as soon as it does.
    fn cancel_origination(&mut self, o: &mut Origination, now: Instant) {
        o.cancelled = true;
        if !o.provisional {
            o.cancel_pending = true;
            return;
        }
        o.cancel_pending = false;
        if let Some(cancel) = super::cancel::cancel_for(&o.invite) {
            let dest = o.leg.dest.clone();
            if let Some(k) = self.tx.send_request(cancel, dest, now) {
                self.client.insert(k, ClientPurpose::Untracked);
            }
        }
    }

    /// The first party rang out (`until`): CANCEL. False when `id` is no origination.
    pub(super) fn origination_tick(&mut self, id: u64, now: Instant) -> bool {
        let Some(mut o) = self.originating.remove(&id) else {
            return false;
        };
        if o.until <= now && !o.cancelled {
            tracing::info!(
                call = id,
                "originated call: the first party did not answer in time"
            );
            o.rang_out = true;
            self.cancel_origination(&mut o, now);
        }
        self.originating.insert(id, o);
        true
    }

    /// The API hangs up an originated call still ringing its first party. False when `id`
    /// is no origination.
    pub(super) fn hang_up_origination(&mut self, id: u64, now: Instant) -> bool {
        let Some(mut o) = self.originating.remove(&id) else {
            return false;
        };
        self.cancel_origination(&mut o, now);
        self.originating.insert(id, o);
        true
    }

    /// The first party's INVITE went unanswered (Timer B): the call is over with 408.
    pub(super) fn origination_timed_out(&mut self, id: u64) {
        if let Some(o) = self.originating.remove(&id) {
            let reason = self.phrase(408).to_owned();
            self.origination_over(o, 408, &reason, "first party failed");
        }
    }

    /// Shutdown gave up on the calls still ringing their first party: close their records.
    pub(super) fn close_originations(&mut self, why: &'static str) {
        let ids: Vec<u64> = self.originating.keys().copied().collect();
        for id in ids {
            if let Some(o) = self.originating.remove(&id) {
                let reason = self.phrase(503).to_owned();
                self.origination_over(o, 503, &reason, why);
            }
        }
    }

    /// Calls still ringing their first party, for `/calls`.
    pub(super) fn originating_calls(&self) -> impl Iterator<Item = super::LiveCall> + '_ {
        self.originating.values().map(|o| super::LiveCall {
            id: o.id,
            record: o.record.id.clone(),
            a_call_id: o.leg.call_id.clone(),
            caller: o.record.caller.clone(),
            callee: o.record.callee.clone(),
            source: o.record.source.clone(),
            state: "originating",
            rule: o.record.rule.clone(),
            received_ms: o.record.received_ms,
            answered_ms: None,
            age_s: (self.unix_ms as i64 - o.record.received_ms).max(0) / 1000,
            screening: None,
        })
    }
}

/// A user part as it may stand in a SIP URI: characters outside RFC 3261's `user` escaped.
fn uri_user(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for b in user.bytes() {
        match b {
            b'a'..=b'z'
            | b'A'..=b'Z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')'
            | b'&'
            | b'='
            | b'+'
            | b'$'
            | b','
            | b';'
            | b'?'
            | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

//! Requests inside an established call: BYE, REFER, DTMF INFO, re-INVITE and the rest
//! relayed to the other party, their answers relayed back, and the ACKs for 2xx.

use std::time::Instant;

use bytes::Bytes;

use crate::anchor::media_side;
use crate::anchor::negotiate::Role;
use crate::call::{Call, PendingOk, Relay, Side, State};
use crate::sip::dtmf_relay;
use crate::sip::message::{Method, Request, Response};
use crate::sip::transaction::TxKey;

use super::{ClientPurpose, Core, Output};

impl Core {
    pub(super) fn on_in_dialog(&mut self, key: TxKey, req: Request, now: Instant) {
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
        // A request from a callee branch that did not win is not part of the bridge (one
        // in an early dialog with Warden is, while the call rings).
        let early = side == Side::B
            && call
                .early_branch()
                .and_then(|i| call.branches.get(i))
                .is_some_and(|b| Some(&b.leg.call_id) == req.call_id().as_ref());
        if !early && !call.is_bridged_leg(side, req.call_id().as_deref()) {
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
                    // A bridge after Warden's answer may still be ringing its callee.
                    for i in 0..call.branches.len() {
                        self.cancel_branch(&mut call, i, now);
                    }
                } else if call.state == State::Calling {
                    // A BYE on the caller's early dialog ends the attempt like a CANCEL.
                    call.note_end("caller", "cancelled");
                    self.abandon(&mut call, 487, now);
                }
                // Crossing BYEs (state Ending) just wait for the answer to ours.
                call.end_unless_byes_pending();
            }
            Method::Refer => self.on_refer(&mut call, key, req, side, now),
            Method::Prack if side == Side::A => self.on_caller_prack(&mut call, key, req, now),
            Method::Update
                if call.state == State::Calling
                    && call.early_branch().is_none()
                    && call.announcing.is_some()
                    && !req.body().is_empty() =>
            {
                self.on_caller_early_update(&mut call, key, req, now);
            }
            Method::Update | Method::Info if call.early_branch().is_some() => {
                // RFC 3311: an UPDATE may change the session before the answer; it crosses
                // to the other early dialog like any in-dialog request.
                self.relay_request(&mut call, key, req, side, now);
            }
            Method::Update
                if req.body().is_empty()
                    && matches!(call.state, State::Confirmed | State::Answered) =>
            {
                self.on_refresh_update(&mut call, &key, &req, side, now);
            }
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
    pub(super) fn on_dtmf_info(
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
        self.report(Some(call.id), || crate::events::What::Dtmf {
            side: side.name(),
            key: pressed,
        });
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
    pub(super) fn relay_request(
        &mut self,
        call: &mut Call,
        key: TxKey,
        req: Request,
        from: Side,
        now: Instant,
    ) {
        let method = req.method();
        if matches!(method, Method::Invite | Method::Update) && self.offer_toward(call.id, from) {
            // Glare (RFC 3311 5.2, RFC 3261 14.2): Warden's own offer to this party is
            // unanswered; the party retries after its random wait.
            let tag = req.to_tag();
            let why = Some("an offer toward you is still unanswered");
            return self.respond_warning(&key, &req, 491, tag.as_deref(), why, now);
        }
        let Some((mut out, dest)) = self.dialog_request(call, from.other(), method.clone()) else {
            return self.respond(&key, &req, 481, None, now);
        };
        let far_cseq = out.cseq().map(|c| c.seq).unwrap_or(0);
        for name in [
            "Content-Disposition",
            "Event",
            "Subscription-State",
            "Refer-To",
            "Referred-By",
            "Supported",
            "Allow",
        ] {
            for v in req.headers(name) {
                let _ = out.push_header(name, &v);
            }
        }
        if matches!(method, Method::Invite | Method::Update) {
            self.relayed_session_expires(call, from.other(), &mut out);
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

    pub(super) fn on_relay_response(&mut self, id: u64, key: TxKey, resp: Response, now: Instant) {
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
            if matches!(method, Method::Invite | Method::Update)
                && (200..300).contains(&resp.status())
            {
                // A refresh on both legs: the requester's (Warden's 2xx) and the far one's.
                self.peer_refreshed(&mut call, from, &req, &mut out, now);
                self.far_refreshed(&mut call, from.other(), &resp, now);
            }
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
                    let cseq = req.cseq().map_or(0, |c| c.seq);
                    let bytes = out.to_bytes();
                    call.pending_ok =
                        Some(Box::new(PendingOk::new(bytes, dest, cseq, from, now, t1)));
                }
                call.owed_ack = Some((from.other(), far_cseq));
            }
            self.tx.respond(&server, out, now);
        }
        self.schedule(&call);
        self.finish_or_keep(call);
    }

    /// Is an INVITE or UPDATE of Warden's (relayed, or its own refresh) on its way to the
    /// party on `side` of call `id`, unanswered?
    fn offer_toward(&self, id: u64, side: Side) -> bool {
        self.client.iter().any(|(key, purpose)| match purpose {
            ClientPurpose::Relay { call } if *call == id => self.relays.get(key).is_some_and(|r| {
                r.from == side.other() && matches!(r.method, Method::Invite | Method::Update)
            }),
            ClientPurpose::Refresh { call, side: s } => *call == id && *s == side,
            _ => false,
        })
    }

    /// The next request into `side`'s dialog: the bridged leg, or while the call rings the
    /// early dialog of the callee branch that answered provisionally.
    fn dialog_request(
        &self,
        call: &mut Call,
        side: Side,
        method: Method,
    ) -> Option<(Request, crate::sip::transport::Destination)> {
        if side == Side::B
            && call.answered.is_none()
            && let Some(index) = call.early_branch()
        {
            let leg = &mut call.branches.get_mut(index)?.leg;
            let request = self.leg_request(leg, method, None)?;
            return Some((request, leg.dest.clone()));
        }
        self.side_request(call, side, method, None)
    }

    /// An ACK outside any transaction: the ACK for a 2xx Warden sent.
    pub(super) fn on_ack(&mut self, ack: Request) {
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
    pub(super) fn send_ack(
        &mut self,
        call: &mut Call,
        side: Side,
        cseq: u32,
        body: Bytes,
        content_type: Option<String>,
    ) {
        let body = self.anchor_or_pass(
            &mut call.media,
            side.other(),
            &body,
            content_type.as_deref(),
            Role::Answer,
        );
        if side == Side::B {
            if let Some(index) = call.answered {
                self.ack_branch(call, index, cseq, body, content_type.as_deref());
            }
            return;
        }
        let Some((mut ack, dest)) = self.side_request(call, side, Method::Ack, Some(cseq)) else {
            return;
        };
        ack.set_body(body, content_type.as_deref());
        self.out.push_back(Output::Send(dest, ack.to_bytes()));
    }

    /// ACK the 2xx of callee branch `index` (CSeq `cseq`, carrying `body`) and keep the
    /// ACK: the callee retransmits its 2xx until the ACK reaches it (RFC 3261 13.2.2.4),
    /// and each retransmission gets the same ACK again.
    pub(super) fn ack_branch(
        &mut self,
        call: &mut Call,
        index: usize,
        cseq: u32,
        body: Bytes,
        content_type: Option<&str>,
    ) {
        let Some(b) = call.branches.get_mut(index) else {
            return;
        };
        let Some(mut ack) = self.leg_request(&mut b.leg, Method::Ack, Some(cseq)) else {
            return;
        };
        ack.set_body(body, content_type);
        let bytes = ack.to_bytes();
        self.out
            .push_back(Output::Send(b.leg.dest.clone(), bytes.clone()));
        b.ack = Some(bytes);
    }
}

//! Blind transfer (RFC 3515): a party of a bridged call sends REFER; Warden calls the
//! Refer-To target in its place, routed and screened like any call, and reports progress.
//!
//! The target's leg takes the transferor's side of the call: its answer is anchored on the
//! transferor's relay ports, so the party that stays keeps its ports and needs no re-INVITE.

use std::time::Instant;

use bytes::Bytes;

use super::{ClientPurpose, Core, Output, strip_tag};
use crate::anchor::negotiate::Role;
use crate::call::{Call, Leg, Side, State, Transfer};
use crate::cdr::Record;
use crate::dialplan::Action;
use crate::screening::{Decision, Outcome};
use crate::sip::message::{Method, Request, Response, Uri};
use crate::sip::transaction::TxKey;

impl Core {
    /// A REFER from side `by` of the call.
    pub(super) fn on_refer(
        &mut self,
        call: &mut Call,
        key: TxKey,
        req: Request,
        by: Side,
        now: Instant,
    ) {
        let tag = req.to_tag();
        let refusal = if call.transfer.is_some() {
            Some((491, "a transfer is already in progress"))
        } else if call.state != State::Confirmed
            || call.answered.is_none()
            || call.answered_by_warden
        {
            // Warden-answered calls (prompts, conferences) have no far party to hand over.
            Some((403, "only a bridged call can be transferred"))
        } else {
            None
        };
        if let Some((status, why)) = refusal {
            return self.respond_warning(&key, &req, status, tag.as_deref(), Some(why), now);
        }
        let Some(target) = req
            .address_list("Refer-To")
            .ok()
            .and_then(|list| list.into_iter().next())
            .map(|a| a.uri)
        else {
            return self.respond_warning(
                &key,
                &req,
                400,
                tag.as_deref(),
                Some("REFER needs one Refer-To URI"),
                now,
            );
        };
        if let Some(replaces) = replaces_of(&req) {
            return self.attended_transfer(call, &key, &req, by, replaces, now);
        }
        self.respond(&key, &req, 202, tag.as_deref(), now);
        let target_user = target.user().unwrap_or_default();
        tracing::info!(call = call.id, by = by.name(), target = %target, "transfer requested");
        call.transfer = Some(Box::new(Transfer {
            by,
            target: target.to_string(),
            target_user,
            referrer_gone: false,
            by_api: false,
            branch: None,
            until: None,
            reported: 0,
            route: None,
        }));
        self.report_transfer(call, 100, "Trying");
        self.transfer_event(call, "requested", None);
        self.route_transfer(call, now);
    }

    /// Tell the event stream how the call's transfer goes.
    pub(super) fn transfer_event(
        &mut self,
        call: &Call,
        outcome: &'static str,
        status: Option<u16>,
    ) {
        let Some(t) = call.transfer.as_ref() else {
            return;
        };
        self.report(Some(call.id), || crate::events::What::Transfer {
            replaced: t.by.name(),
            target: t.target.clone(),
            outcome,
            status,
        });
    }

    /// Route the target by the dialplan, as a call to it would be: the matching rule's
    /// tags, its screening, and its first bridge target; a rule that rejects refuses the
    /// transfer. Other actions (prompts, menus) have no meaning for a transfer.
    pub(super) fn route_transfer(&mut self, call: &mut Call, now: Instant) {
        let Some((target, target_user)) = call
            .transfer
            .as_ref()
            .map(|t| (t.target.clone(), t.target_user.clone()))
        else {
            return;
        };
        let mut req = call.a_invite.clone();
        if let Ok(uri) = Uri::parse(&target) {
            let _ = req.set_uri(uri);
        }
        let _ = req.set_header("To", &format!("<{target}>"));
        let facts = self.call_facts(&req, &call.a.dest, self.unix_s());
        let Some(decision) = self.dialplan.evaluate(&facts) else {
            return self.transfer_failed(call, 404, now);
        };
        let (values, actions) = (decision.values, decision.rule.actions.clone());
        let mut screen = None;
        for action in actions {
            match action {
                Action::Tag(tag) => call.tags.push(tag.render(&values)),
                Action::Screen(profile) => screen = screen.or(Some(profile)),
                Action::Bridge { targets, .. } => {
                    if let Some(t) = call.transfer.as_mut() {
                        t.route = targets.first().map(|target| target.render(&values));
                    }
                    break;
                }
                Action::Reject { status, .. } => return self.transfer_failed(call, status, now),
                Action::Conference(room) => {
                    return self.transfer_into_room(call, &room.render(&values), now);
                }
                _ => {}
            }
        }
        match screen {
            Some(profile) => {
                // The screener sees the transfer as a call of its own: the call so far is
                // over for its counters (quotas, concurrent calls) first.
                if std::mem::take(&mut call.screened) {
                    let answered_s = call
                        .answered_at
                        .map_or(0, |t| self.clock.saturating_duration_since(t).as_secs());
                    self.out.push_back(Output::Screened {
                        call: call.id,
                        answered_s,
                    });
                }
                let mut request = self.screen_request(call, profile);
                request.callee = target_user;
                call.screening_pending = true;
                self.out.push_back(Output::Screen(Box::new(request)));
            }
            None => self.dial_transfer(call, now),
        }
    }

    /// The target is a conference room (a phone's own three-way call: it REFERs the other
    /// party to the room it joined): the staying party joins it, in the codec it uses, and
    /// the transferor leaves the call.
    fn transfer_into_room(&mut self, call: &mut Call, room: &str, now: Instant) {
        let Some(by) = call.transfer.as_ref().map(|t| t.by) else {
            return;
        };
        let staying = by.other();
        let Some(receiving) = call.media.receiving(staying) else {
            return self.transfer_failed(call, 488, now);
        };
        let member = crate::call::conference::Member {
            call: call.id,
            stream: receiving.stream,
            side: crate::anchor::media_side(staying),
            codec: receiving.codec,
            params: receiving.params,
            payload_type: receiving.payload_type,
        };
        if !self.join_room(call, room, member) {
            return self.transfer_failed(call, 500, now);
        }
        call.transfer = None;
        // The stream's other side mixes nothing and hears nothing: the transferor goes.
        let Some(mut former) = call.leg_mut(by).cloned() else {
            return;
        };
        self.notify_referrer(&mut former, 200, "OK", true, now);
        if let Some(bye) = self.leg_request(&mut former, Method::Bye, None) {
            self.send_in_dialog(bye, former.dest.clone(), ClientPurpose::Untracked, now);
        }
        call.former.push(former);
        call.left = Some(by);
        call.answered_by_warden = true;
        tracing::info!(
            call = call.id,
            room,
            by = by.name(),
            "transferred into the conference"
        );
    }

    /// Screening's decision on a transfer's target.
    pub(super) fn transfer_screened(&mut self, call: &mut Call, outcome: Outcome, now: Instant) {
        tracing::info!(call = call.id, decision = outcome.decision.name(), reason = %outcome.reason(), "transfer target screened");
        call.tags
            .push(format!("transfer-screening:{}", outcome.decision.name()));
        // The screener counts every call it saw; it hears when this one ends.
        call.screened = true;
        match outcome.decision {
            Decision::Allow => self.dial_transfer(call, now),
            Decision::Block(_) | Decision::Challenge { .. } => self.transfer_failed(call, 603, now),
        }
    }

    /// Call the routed target with the staying party's media offered again on the
    /// transferor's ports.
    fn dial_transfer(&mut self, call: &mut Call, now: Instant) {
        let Some((by, route)) = call.transfer.as_ref().map(|t| (t.by, t.route.clone())) else {
            return;
        };
        let Some(route) = route else {
            return self.transfer_failed(call, 404, now);
        };
        // A target needing DNS is not dialled for a transfer (the lookup would be async).
        let Some((contact, dest)) = self
            .resolve_target(call, &route)
            .ok()
            .and_then(|found| found.into_iter().next())
        else {
            return self.transfer_failed(call, 404, now);
        };
        let Some(offer) = call
            .media
            .reoffer(&mut *self.media, by.other(), &self.transcodable)
        else {
            return self.transfer_failed(call, 488, now);
        };
        call.b_offer = Bytes::from(offer);
        call.b_offer_type = Some("application/sdp".into());
        let index = call.branches.len();
        self.add_branch(call, &contact, dest, now);
        if call.branches.len() == index {
            return self.transfer_failed(call, 500, now);
        }
        let ring = std::time::Duration::from_secs(self.config.calls.no_answer_timeout_s);
        if let Some(t) = call.transfer.as_mut() {
            t.branch = Some(index);
            t.until = Some(now + ring);
        }
    }

    /// An answer from the transfer's target.
    pub(super) fn on_transfer_response(
        &mut self,
        call: &mut Call,
        index: usize,
        resp: &Response,
        now: Instant,
    ) {
        let status = resp.status();
        if let Some(b) = call.branches.get_mut(index) {
            if resp.to_tag().is_some() {
                b.leg.remote_tag = resp.to_tag();
            }
            if status < 200 {
                b.provisional = true;
            } else {
                b.final_status = Some(status);
            }
        }
        match status {
            100..=199 => {
                if status > 100 {
                    self.report_transfer(call, status, &resp.reason());
                }
                if call.branches.get(index).is_some_and(|b| b.cancel_pending) {
                    self.cancel_branch(call, index, now);
                }
            }
            200..=299 => self.complete_transfer(call, index, resp, now),
            _ => self.transfer_failed(call, status, now),
        }
    }

    /// The target answered: ACK it, anchor its media on the transferor's side, put its leg
    /// in the transferor's place, tell the transferor and hang it up.
    fn complete_transfer(&mut self, call: &mut Call, index: usize, resp: &Response, now: Instant) {
        self.transfer_event(call, "completed", Some(resp.status()));
        let Some(t) = call.transfer.take() else {
            return;
        };
        let Some(b) = call.branches.get_mut(index) else {
            return;
        };
        let invite_cseq = b.invite.cseq().map_or(1, |c| c.seq);
        b.leg.confirm(resp, invite_cseq);
        let leg = b.leg.clone();
        self.ack_branch(call, index, invite_cseq, Bytes::new(), None);
        let content_type = resp.header("Content-Type");
        let body = Bytes::copy_from_slice(resp.body());
        self.anchor_or_pass(
            &mut call.media,
            t.by,
            &body,
            content_type.as_deref(),
            Role::Answer,
        );
        let mut former = match t.by {
            Side::A => {
                self.dialogs.insert(
                    (leg.call_id.clone(), leg.local_tag.clone()),
                    (call.id, Side::A),
                );
                std::mem::replace(&mut call.a, leg.clone())
            }
            Side::B => {
                let old = call
                    .answered
                    .and_then(|i| call.branches.get(i))
                    .map(|b| b.leg.clone());
                call.answered = Some(index);
                match old {
                    Some(old) => old,
                    None => return,
                }
            }
        };
        tracing::info!(call = call.id, by = t.by.name(), target = %t.target, "transfer completed");
        if t.by_api {
            if let Some(bye) = self.leg_request(&mut former, Method::Bye, None) {
                self.send_in_dialog(bye, former.dest.clone(), ClientPurpose::Untracked, now);
            }
        } else if !t.referrer_gone {
            self.notify_referrer(&mut former, 200, "OK", true, now);
            if let Some(bye) = self.leg_request(&mut former, Method::Bye, None) {
                self.send_in_dialog(bye, former.dest.clone(), ClientPurpose::Untracked, now);
            }
        }
        call.former.push(former);
        self.continue_record(call, t.by, &t.target_user, &leg.call_id, now);
    }

    /// The call so far ends as transferred by side `by`; what follows is a call of its own
    /// between the party that stayed and `target_user` (on the leg `leg_call_id`), its
    /// record linked to the first.
    pub(super) fn continue_record(
        &mut self,
        call: &mut Call,
        by: Side,
        target_user: &str,
        leg_call_id: &str,
        now: Instant,
    ) {
        call.note_end(by.name(), "transferred");
        self.ended_record(call);
        let staying = match by {
            Side::A => call.record.callee.clone(),
            Side::B => call.record.caller.clone(),
        };
        let now_ms = self.unix_ms as i64;
        call.record = Record {
            id: crate::cdr::record::new_id(),
            instance: self.instance.clone(),
            boot: self.boot.clone(),
            a_call_id: call.a.call_id.clone(),
            b_call_id: Some(leg_call_id.to_owned()),
            caller: staying,
            callee: target_user.to_owned(),
            source: call.record.source.clone(),
            origin: call.record.origin.clone(),
            received_ms: now_ms,
            answered_ms: Some(now_ms),
            final_code: Some(200),
            final_reason: Some("OK".into()),
            rule: call.record.rule.clone(),
            linked_id: Some(call.record.id.clone()),
            ..Record::default()
        };
        call.forget_end();
        call.answered_at = Some(now);
        call.caller = call.record.caller.clone();
        call.callee = target_user.to_owned();
        self.emit_record(call);
    }

    /// The transfer did not happen (refused, not found, screened out, no answer): the
    /// transferor hears why; the call goes on between the original parties, or, when the
    /// transferor has hung up meanwhile, ends.
    pub(super) fn transfer_failed(&mut self, call: &mut Call, status: u16, now: Instant) {
        self.transfer_event(call, "failed", Some(status));
        let Some(t) = call.transfer.take() else {
            return;
        };
        tracing::info!(call = call.id, target = %t.target, status, "transfer failed");
        let reason = self.phrase(status).to_owned();
        if t.by_api {
            // Nobody subscribed: the event stream tells, and the call goes on.
        } else if t.referrer_gone {
            call.note_end("warden", "transfer failed");
            self.send_bye(call, t.by.other(), now);
        } else if let Some(leg) = call.leg_mut(t.by) {
            let mut leg = leg.clone();
            self.notify_referrer(&mut leg, status, &reason, true, now);
            if let Some(own) = call.leg_mut(t.by) {
                own.cseq = leg.cseq;
            }
        }
    }

    /// Tell the transferor how its transfer goes (once per status), while it is still in
    /// the call.
    fn report_transfer(&mut self, call: &mut Call, status: u16, reason: &str) {
        let Some((by, reported)) = call
            .transfer
            .as_ref()
            .filter(|t| !t.by_api)
            .map(|t| (t.by, t.reported))
        else {
            return;
        };
        if reported == status {
            return;
        }
        if let Some(t) = call.transfer.as_mut() {
            t.reported = status;
        }
        let now = self.clock;
        if let Some(leg) = call.leg_mut(by) {
            let mut copy = leg.clone();
            self.notify_referrer(&mut copy, status, reason, false, now);
            if let Some(own) = call.leg_mut(by) {
                own.cseq = copy.cseq;
            }
        }
    }

    /// A NOTIFY of the implicit "refer" subscription (RFC 3515 section 2.4.4): the
    /// target's status line as message/sipfrag; the last one terminates it.
    pub(super) fn notify_referrer(
        &mut self,
        leg: &mut Leg,
        status: u16,
        reason: &str,
        last: bool,
        now: Instant,
    ) {
        let Some(mut notify) = self.leg_request(leg, Method::Notify, None) else {
            return;
        };
        let state = if last {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        let _ = notify.set_header("Event", "refer");
        let _ = notify.set_header("Subscription-State", state);
        notify.set_body(
            Bytes::from(format!("SIP/2.0 {status} {reason}\r\n")),
            Some("message/sipfrag;version=2.0"),
        );
        self.send_in_dialog(notify, leg.dest.clone(), ClientPurpose::Untracked, now);
    }

    /// A request from a leg that left the call by a transfer: a BYE is answered 200 (its
    /// party hangs up, nothing else follows), anything else 481.
    pub(super) fn on_former_leg(&mut self, key: &TxKey, req: &Request, now: Instant) {
        let status = if req.method() == Method::Bye {
            200
        } else {
            481
        };
        self.respond(key, req, status, req.to_tag().as_deref(), now);
    }

    /// Is `req` from a leg that left `call` by a transfer?
    pub(super) fn from_former_leg(call: &Call, req: &Request) -> bool {
        let (Some(call_id), Some(tag)) = (req.call_id(), req.to_tag()) else {
            return false;
        };
        call.former
            .iter()
            .any(|l| l.call_id == call_id && l.local_tag == tag)
    }
}

/// The dialog a Refer-To's Replaces names (RFC 3891): Call-ID and the two tags.
fn replaces_of(req: &Request) -> Option<(String, [String; 2])> {
    let refer_to = req.header("Refer-To")?;
    let start = refer_to.find("Replaces=")? + "Replaces=".len();
    let raw = refer_to[start..].split(['&', '>']).next()?;
    let value = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?
        .into_owned();
    let mut parts = value.split(';').map(str::trim);
    let call_id = parts.next()?.to_owned();
    let mut tags = [String::new(), String::new()];
    for part in parts {
        match part.split_once('=') {
            Some(("to-tag", t)) => tags[0] = t.to_owned(),
            Some(("from-tag", t)) => tags[1] = t.to_owned(),
            _ => {}
        }
    }
    Some((call_id, tags))
}

/// The To of a transfer's INVITE: its target, not the original callee.
pub(super) fn transfer_to(call: &Call) -> Option<String> {
    call.transfer
        .as_ref()
        .map(|t| strip_tag(&format!("<{}>", t.target)))
}

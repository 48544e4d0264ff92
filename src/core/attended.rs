//! Attended transfer (RFC 3515 REFER with an RFC 3891 Replaces): the transferor holds two
//! calls through Warden and asks to join their other parties. Warden holds every dialog
//! involved, so it joins them itself: no INVITE with Replaces goes out.
//!
//! The target (the other party of the second call) takes the transferor's place in the
//! first call: a re-INVITE moves its media onto the transferor's relay ports there; the
//! transferor's two legs are hung up.

use std::time::Instant;

use bytes::Bytes;

use super::{ClientPurpose, Core, Output};
use crate::anchor::negotiate::Role;
use crate::call::{Branch, Call, Leg, Side, State};
use crate::sip::message::{Method, Request, Response};
use crate::sip::transaction::TxKey;

impl Core {
    /// A REFER from side `by` of `call` whose Refer-To replaces the dialog `replaces`
    /// (Call-ID and tags, as the transferor sees it).
    pub(super) fn attended_transfer(
        &mut self,
        call: &mut Call,
        key: &TxKey,
        req: &Request,
        by: Side,
        (call_id, tags): (String, [String; 2]),
        now: Instant,
    ) {
        let tag = req.to_tag();
        // Warden's tag is one of the two (which one depends on who called whom).
        let found = tags
            .iter()
            .find_map(|t| self.dialogs.get(&(call_id.clone(), t.clone())).copied())
            .filter(|(id, _)| *id != call.id);
        let Some(mut other) = found.and_then(|(id, _)| self.calls.remove(&id)) else {
            let replaces = (call_id, tags);
            if found.is_none() && self.await_replaced(call, key, req, by, &replaces) {
                return; // answered once the other shard hands the call over
            }
            let why = "Replaces names no other call Warden holds";
            return self.respond_warning(key, req, 481, tag.as_deref(), Some(why), now);
        };
        let transferor = found.map_or(Side::B, |(_, side)| side);
        let target_leg = other.leg_mut(transferor.other()).cloned();
        let offer = call
            .media
            .reoffer(&mut *self.media, by.other(), &self.transcodable);
        let (Some(target_leg), Some(offer), State::Confirmed) = (target_leg, offer, other.state)
        else {
            self.finish_or_keep(other);
            let why = "the replaced call is not bridged";
            return self.respond_warning(key, req, 403, tag.as_deref(), Some(why), now);
        };
        self.respond(key, req, 202, tag.as_deref(), now);
        let _span = call.enter();
        let target_user = match transferor.other() {
            Side::A => other.record.caller.clone(),
            Side::B => other.record.callee.clone(),
        };
        tracing::info!(call = call.id, joined = other.id, by = by.name(), target = %target_user, "attended transfer: joining the calls");

        // The target's leg takes the transferor's place, and its media moves here.
        self.dialogs.insert(
            (target_leg.call_id.clone(), target_leg.local_tag.clone()),
            (call.id, by),
        );
        let mut former = put_in_place(call, by, target_leg.clone());
        if let Some((mut invite, dest)) = self.side_request(call, by, Method::Invite, None) {
            invite.set_body(Bytes::from(offer), Some("application/sdp"));
            let purpose = ClientPurpose::Join {
                call: call.id,
                side: by,
            };
            self.send_in_dialog(invite, dest, purpose, now);
        }

        // The transferor hears it is done and is hung up in both calls.
        self.notify_referrer(&mut former, 200, "OK", true, now);
        if let Some(bye) = self.leg_request(&mut former, Method::Bye, None) {
            self.send_in_dialog(bye, former.dest.clone(), ClientPurpose::Untracked, now);
        }
        call.former.push(former);
        self.continue_record(call, by, &target_user, &target_leg.call_id, now);
        other.note_end(transferor.name(), "transferred");
        self.send_bye(&mut other, transferor, now);
        self.finish_or_keep(other);
    }

    /// The answer to the re-INVITE that moved a party into call `id` on `side`.
    pub(super) fn on_join_response(&mut self, id: u64, side: Side, resp: Response, now: Instant) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        let status = resp.status();
        if (200..300).contains(&status) {
            let content_type = resp.header("Content-Type");
            let body = Bytes::copy_from_slice(resp.body());
            self.anchor_or_pass(
                &mut call.media,
                side,
                &body,
                content_type.as_deref(),
                Role::Answer,
            );
            let cseq = resp.cseq().map(|c| c.seq).unwrap_or(1);
            if let Some((ack, dest)) = self.side_request(&mut call, side, Method::Ack, Some(cseq)) {
                self.out.push_back(Output::Send(dest, ack.to_bytes()));
            }
            self.finish_or_keep(call);
        } else if status >= 300 {
            tracing::warn!(
                call = id,
                status,
                "the joined party refused to move its media"
            );
            self.finish_or_keep(call);
            self.join_failed(id, side, now);
        } else {
            self.finish_or_keep(call);
        }
    }

    /// The joined party's media could not be moved (refused, or no answer): the call it
    /// joined cannot work, so it ends.
    pub(super) fn join_failed(&mut self, id: u64, side: Side, now: Instant) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        tracing::warn!(call = id, "attended transfer failed; ending the call");
        call.note_end("warden", "transfer failed");
        self.send_bye(&mut call, side, now);
        self.send_bye(&mut call, side.other(), now);
        self.finish_or_keep(call);
    }
}

/// Put `leg` in the place of `side`'s leg in `call`; the leg it replaces.
fn put_in_place(call: &mut Call, side: Side, leg: Leg) -> Leg {
    match side {
        Side::A => std::mem::replace(&mut call.a, leg),
        Side::B => {
            let Some(old) = call.answered.and_then(|i| call.branches.get(i)) else {
                return leg;
            };
            let (former, invite) = (old.leg.clone(), old.invite.clone());
            call.answered = Some(call.branches.len());
            call.branches.reserve_exact(1);
            call.branches.push(Branch {
                leg,
                invite,
                tx: None,
                provisional: true,
                final_status: Some(200),
                cancel_pending: false,
                ack: None,
                last_rseq: None,
                prack_owed: None,
                retried_422: false,
                fallbacks: Vec::new(),
            });
            former
        }
    }
}

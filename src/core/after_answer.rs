//! A bridge after Warden answered the caller itself (an IVR, a menu, a passed challenge):
//! the callee is offered the caller's media again and connected on its answer, with no
//! second 200 to the caller and nothing of the callee's early media played to it.

use std::time::Instant;

use bytes::Bytes;

use crate::anchor::negotiate::Role;
use crate::call::Call;
use crate::sip::message::Response;

use super::Core;

impl Core {
    /// Before a bridge on an answered call: the callee-side offer becomes the caller's media
    /// as it flows now (its codec, widened with the transcodable ones). False when there
    /// is nothing to offer (the bridge is skipped).
    pub(super) fn reoffer_answered_caller(&mut self, call: &mut Call) -> bool {
        let Some(offer) =
            call.media
                .reoffer(&mut *self.media, crate::call::Side::A, &self.transcodable)
        else {
            return false;
        };
        call.b_offer = Bytes::from(offer);
        call.b_offer_type = Some("application/sdp".into());
        true
    }

    /// The callee of a bridge after answer took the call: ACK it, anchor its answer on the
    /// relay stream the caller already uses, cancel the other branches, and from now on
    /// the call is an ordinary bridge.
    pub(super) fn connect_after_answer(
        &mut self,
        call: &mut Call,
        index: usize,
        resp: &Response,
        now: Instant,
    ) {
        let Some(b) = call.branches.get_mut(index) else {
            return;
        };
        b.final_status = Some(resp.status());
        let invite_cseq = b.invite.cseq().map_or(1, |c| c.seq);
        b.leg.confirm(resp, invite_cseq);
        let b_call_id = b.leg.call_id.clone();
        self.ack_branch(call, index, invite_cseq, Bytes::new(), None);
        if call.announcing.is_some() {
            self.stop_prompt(call);
        }
        let content_type = resp.header("Content-Type");
        let body = resp.body().clone();
        self.anchor_or_pass(
            &mut call.media,
            crate::call::Side::B,
            &body,
            content_type.as_deref(),
            Role::Answer,
        );
        call.answered = Some(index);
        call.ring_until = None;
        call.answered_by_warden = false;
        call.program = None;
        for i in 0..call.branches.len() {
            if i != index {
                self.cancel_branch(call, i, now);
            }
        }
        tracing::info!(call = call.id, caller = %call.caller, callee = %call.callee, "callee answered; connected to the caller Warden had answered");
        call.record.b_call_id = Some(b_call_id);
        self.emit_record(call);
        self.report(Some(call.id), || crate::events::What::Answered {
            by: "callee",
        });
        self.callee_session_timer(call, resp, now);
        self.start_recording_if_ready(call);
        call.media_check = Some(now + self.media_check_interval());
    }
}

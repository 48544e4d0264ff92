//! Callee answers to the B-leg INVITEs: provisionals relayed, the first 2xx wins (others
//! are ACKed and hung up), failures kept until every branch has failed.

use std::time::Instant;

use bytes::Bytes;

use crate::anchor::negotiate::Role;
use crate::call::{Call, Side, State};
use crate::events::What;
use crate::sip::message::{Method, Response};
use crate::sip::transaction::TxKey;

use super::{ALLOW, ClientPurpose, Core, Output};

impl Core {
    pub(super) fn on_response(&mut self, key: TxKey, resp: Response, now: Instant) {
        let Some(purpose) = self.client.get(&key).cloned() else {
            return;
        };
        if resp.status() >= 200
            && !matches!(
                purpose,
                ClientPurpose::Invite { .. } | ClientPurpose::Originate { .. }
            )
        {
            self.client.remove(&key);
        }
        match purpose {
            ClientPurpose::Invite { call, branch } => {
                self.on_branch_response(call, branch, resp, now)
            }
            ClientPurpose::Originate { call } => self.on_origination_response(call, resp, now),
            ClientPurpose::Untracked => {}
            ClientPurpose::Bye { call } => {
                if resp.status() >= 200
                    && let Some(mut c) = self.calls.remove(&call)
                {
                    let _span = c.enter();
                    c.bye_answered();
                    self.finish_or_keep(c);
                }
            }
            ClientPurpose::Relay { call } => self.on_relay_response(call, key, resp, now),
            ClientPurpose::Join { call, side } => self.on_join_response(call, side, resp, now),
            ClientPurpose::Probe { addr } => {
                if resp.status() >= 200 {
                    self.probe_outcome(addr, resp.status())
                }
            }
            ClientPurpose::Message { id } => {
                self.message_answered(id, resp.status(), &resp.reason(), now)
            }
            ClientPurpose::Refresh { call, side } => {
                self.on_refresh_response(call, side, resp, now)
            }
        }
    }

    pub(super) fn on_branch_response(
        &mut self,
        id: u64,
        index: usize,
        resp: Response,
        now: Instant,
    ) {
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
        // Every branch's reliable provisionals are PRACKed (a transfer target's too).
        if (101..200).contains(&status)
            && resp.lists("Require", "100rel")
            && !self.on_reliable_provisional(&mut call, index, &resp, now)
        {
            return self.finish_or_keep(call); // a retransmission: PRACKed already
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
        if status == 422 && self.retry_with_longer_session(&mut call, index, &resp, now) {
            return self.finish_or_keep(call);
        }
        if status < 200 {
            let first = call.branches.get(index).is_some_and(|b| !b.provisional);
            if first && status > 100 {
                self.report(Some(id), || What::Ringing {
                    party: "callee",
                    status,
                });
            }
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
        } else if status < 300 && call.answered_by_warden {
            self.connect_after_answer(&mut call, index, &resp, now);
        } else if status < 300 {
            call.answered_by(index, now);
            call.media_check = Some(now + self.media_check_interval());
            self.stats.lock().calls_answered += 1;
            if let Some(b) = call.branches.get_mut(index) {
                b.final_status = Some(status);
                let invite_cseq = b.invite.cseq().map_or(1, |c| c.seq);
                b.leg.confirm(&resp, invite_cseq);
            }
            for i in 0..call.branches.len() {
                if i != index {
                    self.cancel_branch(&mut call, i, now);
                }
            }
            tracing::info!(call = id, caller = %call.caller, callee = %call.callee, "answered");
            call.record.b_call_id = call.branches.get(index).map(|b| b.leg.call_id.clone());
            self.answered_record(&mut call, status, &resp.reason());
            self.report(Some(id), || What::Answered { by: "callee" });
            self.callee_session_timer(&mut call, &resp, now);
            self.start_max_duration(&mut call, now);
            self.relay_to_a(&mut call, &resp, now);
            self.start_recording_if_ready(&mut call);
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
            let fell_over = status == 503 && self.fail_over_branch(&mut call, index, now);
            let followed =
                (300..400).contains(&status) && self.follow_redirect(&mut call, &resp, now);
            if fell_over || followed {
                self.schedule(&call);
                return self.finish_or_keep(call);
            }
            // What explains a refusal travels back with it (ATIS-1000099 asks that a 603+'s
            // Reason reach the caller unchanged; RFC 8688 a 608's Call-Info).
            // A redirection relayed keeps the Contacts it redirects to.
            let explains = ["Reason", "Call-Info", "Contact"]
                .iter()
                .filter(|name| **name != "Contact" || (300..400).contains(&status))
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

    /// Relay a callee response to the caller's INVITE (a 2xx is retransmitted until the
    /// caller's ACK).
    pub(super) fn relay_to_a(&mut self, call: &mut Call, resp: &Response, now: Instant) {
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
        match out.status() {
            101..=199 => self.provisional_to_a(call, out, now),
            200..=299 => self.ok_to_a(call, out, now),
            _ => self.tx.respond(&call.a_invite_tx, out, now),
        }
    }

    /// When every branch has failed and none answered, tell the caller the most meaningful
    /// failure (unless it already got 487/408) and end the call.
    pub(super) fn end_if_every_branch_failed(&mut self, call: &mut Call, now: Instant) {
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
                .best_failure()
                .unwrap_or((480, self.phrase(480).to_owned()));
            if self.announce(call, status, &reason, now) {
                return; // the failure follows when the announcement ends
            }
            self.decline(call, status, &reason, now);
        }
        call.state = State::Done;
    }

    /// The caller's final failure response.
    pub(super) fn decline(&mut self, call: &mut Call, status: u16, reason: &str, now: Instant) {
        tracing::info!(call = call.id, caller = %call.caller, callee = %call.callee, status, "call declined");
        let by_callee = call.branches.iter().any(|b| b.final_status == Some(status));
        match (by_callee, status) {
            (true, _) => call.note_end("callee", "declined"),
            (false, 408) => call.note_end("warden", "no answer"),
            (false, _) => call.note_end("warden", "rejected"),
        }
        call.set_final(status, reason);
        if let Some(reliable) = call.a_reliable.as_mut() {
            reliable.finish();
        }
        let mut out = self.caller_response(call, status, reason, None);
        for (name, value) in &call.reject_headers {
            let _ = out.push_header(name, value);
        }
        self.tx.respond(&call.a_invite_tx, out, now);
    }

    /// ACK + BYE a callee branch whose 2xx nobody wants (a losing fork, a cancelled call).
    pub(super) fn reject_late_answer(
        &mut self,
        call: &mut Call,
        index: usize,
        resp: &Response,
        now: Instant,
    ) {
        let Some(branch) = call.branches.get_mut(index) else {
            return;
        };
        let seq = branch.invite.cseq().map_or(1, |c| c.seq);
        branch.leg.confirm(resp, seq);
        let mut leg = branch.leg.clone();
        self.ack_branch(call, index, seq, Bytes::new(), None);
        if let Some(bye) = self.leg_request(&mut leg, Method::Bye, None) {
            self.send_in_dialog(bye, leg.dest.clone(), ClientPurpose::Untracked, now);
        }
    }

    /// A 2xx retransmission from a callee: resend the ACK we already sent for it.
    pub(super) fn on_stray_response(&mut self, resp: Response) {
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
}

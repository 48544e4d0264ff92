//! Time in the call flow: transaction timeouts, and each call's own deadlines (ringing,
//! announcements, digits, transfers, media timeout, 2xx retransmission until the ACK).

use std::time::Instant;

use bytes::Bytes;

use crate::call::{Side, State};
use crate::sip::transaction::TxKey;

use super::{ClientPurpose, Core, Output};

impl Core {
    pub(super) fn on_tx_timeout(&mut self, key: TxKey, now: Instant) {
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
                    c.note_failure(408, self.phrase(408));
                    tracing::info!(call, branch, "callee did not answer the INVITE (Timer B)");
                    if self.fail_over_branch(&mut c, branch, now) {
                        self.schedule(&c);
                        return self.finish_or_keep(c);
                    }
                    self.end_if_every_branch_failed(&mut c, now);
                }
                self.finish_or_keep(c);
            }
            ClientPurpose::Bye { call } => {
                if let Some(mut c) = self.calls.remove(&call) {
                    let _span = c.enter();
                    c.bye_answered();
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
            ClientPurpose::Refresh { call, side } => self.refresh_timed_out(call, side, now),
            ClientPurpose::Probe { addr } => self.probe_outcome(addr, 408),
            ClientPurpose::Message { id } => {
                let reason = self.phrase(408).to_owned();
                self.message_answered(id, 408, &reason, now)
            }
            ClientPurpose::Originate { call } => self.origination_timed_out(call),
            ClientPurpose::Untracked => {}
        }
    }

    pub(super) fn on_call_tick(&mut self, id: u64, now: Instant) {
        if self.origination_tick(id, now) {
            return;
        }
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        if call.announcing.is_some() && call.ring_until.is_some_and(|t| t <= now) {
            self.end_announcement(&mut call, now);
        }
        self.send_due_keys(&mut call, now);
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
        // A bridge after Warden's answer rings an answered call.
        let ringing =
            call.state == State::Calling || (call.answered_by_warden && call.bridge().is_some());
        if call.ring_until.is_some_and(|t| t <= now) && ringing {
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
                && call
                    .media
                    .timed_out(&*self.media, now, self.media_timeout())
            {
                tracing::info!(call = id, caller = %call.caller, callee = %call.callee, timeout_s = self.config.media.rtp_timeout_s, "no RTP from either side; ending the call");
                call.note_end("warden", "media timeout");
                call.media_check = None;
                self.send_bye(&mut call, Side::A, now);
                self.send_bye(&mut call, Side::B, now);
            }
        }
        self.poll_reliable(&mut call, now);
        self.poll_session(&mut call, now);
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
}

//! Ending calls: BYE toward a party, Warden hanging up (admin API, shutdown), and a call
//! that is over taken out of every table, its record closed and its media released.

use std::time::Instant;

use crate::call::{Call, Side, State};
use crate::sip::message::Method;

use super::{ClientPurpose, Core, Output};

impl Core {
    /// End call `id` now, for `reason`: BYE to both parties of an answered call; a caller
    /// still waiting gets `status` and its callees a CANCEL. False when there is no such call.
    pub fn hang_up(&mut self, id: u64, reason: &'static str, status: u16, now: Instant) -> bool {
        if self.hang_up_origination(id, now) {
            self.drain(now, self.unix_s());
            return true;
        }
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
                for i in 0..call.branches.len() {
                    self.cancel_branch(&mut call, i, now); // a bridge after answer ringing
                }
                call.end_unless_byes_pending();
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
        self.close_originations(reason);
    }

    /// End every call (shutdown after its grace time); returns how many there were.
    pub fn hang_up_all(&mut self, reason: &'static str, now: Instant) -> usize {
        let ids: Vec<u64> = self
            .calls
            .keys()
            .chain(self.originating.keys())
            .copied()
            .collect();
        for id in &ids {
            self.hang_up(*id, reason, 503, now);
        }
        ids.len()
    }

    pub(super) fn send_bye(&mut self, call: &mut Call, side: Side, now: Instant) {
        if let Some((bye, dest)) = self.side_request(call, side, Method::Bye, None)
            && self
                .send_in_dialog(bye, dest, ClientPurpose::Bye { call: call.id }, now)
                .is_some()
        {
            call.bye_sent();
        }
    }

    /// Put a call back, or forget it when it is over (and every branch has settled).
    pub(super) fn finish_or_keep(&mut self, call: Box<Call>) {
        if call.finished() {
            let mut call = call;
            if call.media.has_streams() {
                let m = call.media.summary(&*self.media);
                tracing::info!(
                    call = call.id,
                    ended_by = call.ended_by().map_or("signalling", |e| e.1),
                    caller_rtp = m.caller.rtp_packets,
                    caller_lost = m.caller.lost,
                    caller_jitter_us = m.caller.jitter_us,
                    callee_rtp = m.callee.rtp_packets,
                    callee_lost = m.callee.lost,
                    callee_jitter_us = m.callee.jitter_us,
                    strangers = m.caller.strangers + m.callee.strangers,
                    "media summary"
                );
            }
            self.ended_record(&mut call);
            if let Some(source) = call.guarded_source {
                self.guard.lock().call_ended(source);
            }
            self.leave_conference(&call);
            call.media.close(&mut *self.media);
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
            self.client.retain(|_, p| {
                !matches!(p, ClientPurpose::Invite { call: c, .. } | ClientPurpose::Originate { call: c }
                    if *c == call.id)
            });
            self.unpin_legs_of(&call);
            return;
        }
        self.calls.insert(call.id, call);
    }
}

//! CANCEL from the caller, and giving up a call attempt: the caller's INVITE answered,
//! every callee branch still pending cancelled (once it has sent a provisional).

use std::time::Instant;

use crate::call::{Call, State};
use crate::sip::message::{Method, Request};
use crate::sip::transaction::TxKey;

use super::{ClientPurpose, Core};

impl Core {
    pub(super) fn on_cancel(&mut self, key: TxKey, req: Request, now: Instant) {
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
    pub(super) fn abandon(&mut self, call: &mut Call, status: u16, now: Instant) {
        call.set_final(status, self.phrase(status));
        if let Some(reliable) = call.a_reliable.as_mut() {
            reliable.finish();
        }
        let (tag, invite) = (call.a.local_tag.clone(), call.a_invite.clone());
        self.respond(&call.a_invite_tx.clone(), &invite, status, Some(&tag), now);
        call.abandoned = true;
        call.program = None;
        call.ring_until = None;
        for i in 0..call.branches.len() {
            self.cancel_branch(call, i, now);
        }
    }

    pub(super) fn cancel_branch(&mut self, call: &mut Call, index: usize, now: Instant) {
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
        if let Some(cancel) = cancel_for(&branch.invite) {
            let dest = branch.leg.dest.clone();
            if let Some(k) = self.tx.send_request(cancel, dest, now) {
                self.client.insert(k, ClientPurpose::Untracked);
            }
        }
    }
}

/// The CANCEL of Warden's `invite` (RFC 3261 9.1): its Request-URI, Via, From, To,
/// Call-ID and CSeq number.
pub(super) fn cancel_for(invite: &Request) -> Option<Request> {
    let mut builder = Request::builder(Method::Cancel, &invite.uri());
    for name in ["Via", "From", "To", "Call-ID"] {
        if let Some(v) = invite.header(name) {
            builder = builder.header(name, &v);
        }
    }
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
    builder.cseq(seq).max_forwards(70).build().ok()
}

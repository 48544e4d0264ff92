//! Reliable provisional responses (RFC 3262) on both legs: the caller's sent reliably when
//! it supports 100rel (its PRACKs release what waited), and each callee's PRACKed.

use std::time::Instant;

use crate::anchor::negotiate::Role;
use crate::call::{Call, PendingOk, Side};
use crate::sip::message::{Method, Request, Response};
use crate::sip::reliable::{Due, ReliableProvisionals, parse_rack};
use crate::sip::transaction::TxKey;

use super::{ClientPurpose, Core, Output};

/// The option tags Warden accepts in a Require (RFC 3261 8.2.2.3): others get 420.
pub(super) fn unsupported(req: &Request, reliable_provisionals: bool) -> Vec<String> {
    req.tokens("Require")
        .into_iter()
        .filter(|tag| {
            let known = matches!(tag.as_str(), "timer" | "precondition" | "replaces");
            !(known || (tag == "100rel" && reliable_provisionals))
        })
        .collect()
}

impl Core {
    /// The caller's INVITE supports (or requires) 100rel: provisionals to it go reliably.
    pub(super) fn reliable_toward_caller(&mut self, call: &mut Call) {
        let invite = &call.a_invite;
        let wanted = invite.lists("Supported", "100rel") || invite.lists("Require", "100rel");
        if !self.config.calls.reliable_provisionals || !wanted {
            return;
        }
        let cseq = invite.cseq().map_or(1, |c| c.seq);
        let first_rseq = rand::Rng::random_range(&mut self.rng, 1..1 << 20);
        let t1 = self.config.timers().t1;
        let tcp = call.a.dest.transport.is_reliable();
        call.a_reliable = Some(Box::new(ReliableProvisionals::new(
            cseq, t1, tcp, first_rseq,
        )));
    }

    /// A provisional (101-199) to the caller: reliably when it takes them, else as is.
    pub(super) fn provisional_to_a(&mut self, call: &mut Call, resp: Response, now: Instant) {
        let resp = match call.a_reliable.as_mut() {
            Some(reliable) => match reliable.provisional(resp, now) {
                Some(stamped) => stamped,
                None => return, // queued behind the one awaiting its PRACK
            },
            None => resp,
        };
        self.tx.respond(&call.a_invite_tx, resp, now);
    }

    /// The 2xx to the caller's INVITE, retransmitted until its ACK; held instead while a
    /// reliable provisional with SDP awaits its PRACK (sent when that comes).
    pub(super) fn ok_to_a(&mut self, call: &mut Call, mut ok: Response, now: Instant) {
        self.session_timer_in_ok(call, &mut ok, now);
        let ok = match call.a_reliable.as_mut() {
            Some(reliable) => match reliable.final_ok(ok) {
                Some(ok) => ok,
                None => return,
            },
            None => ok,
        };
        self.send_ok_to_a(call, ok, now);
    }

    fn send_ok_to_a(&mut self, call: &mut Call, ok: Response, now: Instant) {
        let bytes = ok.to_bytes();
        self.tx.respond(&call.a_invite_tx, ok, now);
        let cseq = call.a_invite.cseq().map_or(0, |c| c.seq);
        let t1 = self.config.timers().t1;
        let dest = call.a.dest.clone();
        call.pending_ok = Some(Box::new(PendingOk::new(
            bytes,
            dest,
            cseq,
            Side::A,
            now,
            t1,
        )));
    }

    /// The caller's PRACK: 200 when it acknowledges the provisional outstanding (481 when
    /// not), then what waited for it; an answer it carries goes on to the callee whose
    /// offer it answers, in that callee's PRACK.
    pub(super) fn on_caller_prack(
        &mut self,
        call: &mut Call,
        key: TxKey,
        req: Request,
        now: Instant,
    ) {
        let rack = req.header("RAck").and_then(|v| parse_rack(&v));
        let released = match (call.a_reliable.as_mut(), rack) {
            (Some(reliable), Some((rseq, cseq))) => reliable.prack(rseq, cseq, now),
            _ => None,
        };
        let Some(released) = released else {
            let why = Some("the RAck names no provisional awaiting a PRACK");
            return self.respond_warning(&key, &req, 481, None, why, now);
        };
        let tag = call.a.local_tag.clone();
        self.respond(&key, &req, 200, Some(&tag), now);
        if let Some(index) = call.branches.iter().position(|b| b.prack_owed.is_some()) {
            let content_type = req.header("Content-Type");
            let body = self.anchor_or_pass(
                &mut call.media,
                Side::A,
                req.body(),
                content_type.as_deref(),
                Role::Answer,
            );
            self.prack_branch(call, index, Some((body, content_type)), now);
        }
        for resp in released {
            if resp.status() >= 200 {
                self.send_ok_to_a(call, resp, now);
            } else {
                self.tx.respond(&call.a_invite_tx, resp, now);
            }
        }
        self.schedule(call);
    }

    /// Time for the caller's unacknowledged provisional: send it again, or give the call
    /// up when 64*T1 passed without its PRACK (RFC 3262 3: 5xx).
    pub(super) fn poll_reliable(&mut self, call: &mut Call, now: Instant) {
        match call.a_reliable.as_mut().and_then(|r| r.poll(now)) {
            Some(Due::Retransmit(bytes)) => {
                let dest = self
                    .tx
                    .destination(&call.a_invite_tx)
                    .unwrap_or_else(|| call.a.dest.clone());
                self.out.push_back(Output::Send(dest, bytes));
            }
            Some(Due::GaveUp) => {
                tracing::warn!(call = call.id, caller = %call.caller, "no PRACK for a reliable provisional; giving the call up");
                call.note_end("warden", "no PRACK");
                call.note_failure(504, self.phrase_or(504, "No PRACK"));
                self.abandon(call, 504, now);
            }
            None => {}
        }
    }

    /// A callee's reliable provisional (RFC 3262 4): false for a retransmission or one out
    /// of order (dropped unrelayed). Otherwise PRACKed at once, unless it carries an offer
    /// the caller answers in its own PRACK (then that PRACK is awaited).
    pub(super) fn on_reliable_provisional(
        &mut self,
        call: &mut Call,
        index: usize,
        resp: &Response,
        now: Instant,
    ) -> bool {
        let Some(rseq) = resp
            .header("RSeq")
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            return true; // no RSeq: an ordinary provisional after all
        };
        // Only the caller's own ringing callee's offer is the caller's to answer.
        let caller_answers = call.a_reliable.is_some()
            && call.a_invite.body().is_empty()
            && call.state == crate::call::State::Calling
            && call.transfer.is_none();
        let Some(b) = call.branches.get_mut(index) else {
            return false;
        };
        if b.last_rseq.is_some_and(|last| rseq != last + 1) {
            return false;
        }
        b.last_rseq = Some(rseq);
        b.leg.early(resp);
        let invite_cseq = b.invite.cseq().map_or(1, |c| c.seq);
        b.prack_owed = Some((rseq, invite_cseq));
        if !caller_answers || resp.body().is_empty() {
            if call.a_invite.body().is_empty() && !resp.body().is_empty() && !caller_answers {
                tracing::warn!(
                    call = call.id,
                    "a callee offered in a reliable provisional to a caller without 100rel: PRACKed without an answer"
                );
            }
            self.prack_branch(call, index, None, now);
        }
        true
    }

    /// PRACK the provisional branch `index` owes one for, with the answer `body` if any.
    fn prack_branch(
        &mut self,
        call: &mut Call,
        index: usize,
        body: Option<(bytes::Bytes, Option<String>)>,
        now: Instant,
    ) {
        let Some(b) = call.branches.get_mut(index) else {
            return;
        };
        let Some((rseq, cseq)) = b.prack_owed.take() else {
            return;
        };
        let Some(mut prack) = self.leg_request(&mut b.leg, Method::Prack, None) else {
            return;
        };
        let _ = prack.push_header("RAck", &format!("{rseq} {cseq} INVITE"));
        if let Some((body, content_type)) = body {
            prack.set_body(body, content_type.as_deref());
        }
        let dest = b.leg.dest.clone();
        self.send_in_dialog(prack, dest, ClientPurpose::Untracked, now);
    }
}

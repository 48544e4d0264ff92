//! Session timers (RFC 4028) and the longest call a route allows: each leg's interval
//! negotiated, Warden's refreshes (UPDATE, else re-INVITE), the peers' refreshes
//! answered, and a call whose refresh failed or never came ended on both legs.

use std::time::{Duration, Instant};

use crate::anchor::negotiate::Role;
use crate::call::{Call, Side, State};
use crate::sip::message::{Method, Request, Response};
use crate::sip::session_timer::{
    Policy, Refresher, SessionTimer, TimerDue, UasTimer, negotiate_uas, negotiated_uac,
    parse_min_se, parse_session_expires,
};
use crate::sip::transaction::TxKey;

use super::{ClientPurpose, Core};

/// A Session-Expires value in a request Warden sends (Warden is the UAC of it).
fn as_uac(timer: &SessionTimer) -> String {
    let who = match timer.refresher {
        Refresher::Warden => "uac",
        Refresher::Peer => "uas",
    };
    format!("{};refresher={who}", timer.interval.as_secs())
}

/// A Session-Expires value in a response Warden sends (Warden is the UAS of the request).
fn as_uas(timer: &SessionTimer) -> String {
    UasTimer::header(timer.interval.as_secs() as u32, timer.refresher)
}

impl Core {
    fn session_policy(&self, call: &Call) -> Policy {
        Policy {
            session_expires: call.session_expires,
            min_se: self.config.calls.min_se_s,
        }
    }

    /// The caller asked for a session shorter than Warden's Min-SE while supporting timers:
    /// 422 with Warden's Min-SE (RFC 4028 9). True when refused.
    pub(super) fn refused_short_session(
        &mut self,
        key: &TxKey,
        req: &Request,
        now: Instant,
    ) -> bool {
        let UasTimer::TooSmall(min_se) = negotiate_uas(req, self.config.calls.session_policy())
        else {
            return false;
        };
        tracing::info!(min_se, asked = ?req.header("Session-Expires"), "session interval too small; 422");
        let mut resp = Response::to_request(req, 422, self.phrase(422));
        resp.set_to_tag(&crate::call::new_tag());
        let _ = resp.push_header("Min-SE", &min_se.to_string());
        self.tx.respond(key, resp, now);
        true
    }

    /// The caller leg's timer, negotiated as its 2xx goes out: Session-Expires (and
    /// Require: timer when the caller supports timers) on the 2xx.
    pub(super) fn session_timer_in_ok(&mut self, call: &mut Call, ok: &mut Response, now: Instant) {
        let UasTimer::Run {
            seconds,
            refresher,
            require,
        } = negotiate_uas(&call.a_invite, self.session_policy(call))
        else {
            return;
        };
        let _ = ok.set_header("Session-Expires", &UasTimer::header(seconds, refresher));
        if require && !ok.lists("Require", "timer") {
            let _ = ok.push_header("Require", "timer");
        }
        let allows_update = call.a_invite.lists("Allow", "update");
        let interval = Duration::from_secs(u64::from(seconds));
        call.timer_a = Some(SessionTimer::new(interval, refresher, allows_update, now));
    }

    /// What Warden's INVITE to a callee asks for: timers supported, its interval, its
    /// Min-SE.
    pub(super) fn session_headers(&self, call: &Call, invite: &mut Request) {
        if call.session_expires == 0 {
            return;
        }
        let _ = invite.set_header("Session-Expires", &call.session_expires.to_string());
        let _ = invite.set_header("Min-SE", &self.config.calls.min_se_s.to_string());
    }

    /// The callee's 2xx set its leg's timer (RFC 4028 7.2).
    pub(super) fn callee_session_timer(&mut self, call: &mut Call, ok: &Response, now: Instant) {
        if call.session_expires == 0 {
            return;
        }
        let asked = call
            .answered
            .and_then(|i| call.branches.get(i))
            .and_then(|b| b.invite.header("Session-Expires"))
            .and_then(|v| parse_session_expires(&v))
            .map_or(call.session_expires, |(s, _)| s);
        let (interval, refresher) = negotiated_uac(ok, asked);
        let allows_update = ok.lists("Allow", "update");
        call.timer_b = Some(SessionTimer::new(interval, refresher, allows_update, now));
    }

    /// A callee's 422 (RFC 4028 6): the INVITE again, once, with the Session-Expires the
    /// 422's Min-SE asks for. False when it is not retried (the 422 is a failure then).
    pub(super) fn retry_with_longer_session(
        &mut self,
        call: &mut Call,
        index: usize,
        resp: &Response,
        now: Instant,
    ) -> bool {
        let Some(min_se) = resp.header("Min-SE").and_then(|v| parse_min_se(&v)) else {
            return false;
        };
        let Some(transport) = call.branches.get(index).map(|b| b.leg.dest.transport) else {
            return false;
        };
        let via = self.via(transport, &crate::call::new_tag());
        let Some(b) = call.branches.get_mut(index) else {
            return false;
        };
        if b.retried_422 || b.final_status.is_some() {
            return false;
        }
        let mut invite = b.invite.clone();
        b.leg.cseq += 1;
        let seq = b.leg.cseq;
        let edits = [
            ("Via", via),
            ("CSeq", format!("{seq} INVITE")),
            ("Session-Expires", min_se.to_string()),
            ("Min-SE", min_se.to_string()),
        ];
        for (name, value) in &edits {
            let _ = invite.set_header(name, value);
        }
        tracing::info!(
            call = call.id,
            min_se,
            "callee wants a longer session (422); INVITE again"
        );
        let Some(tx) = self
            .tx
            .send_request(invite.clone(), b.leg.dest.clone(), now)
        else {
            return false;
        };
        self.client.insert(
            tx.clone(),
            ClientPurpose::Invite {
                call: call.id,
                branch: index,
            },
        );
        b.invite = invite;
        b.tx = Some(tx);
        b.retried_422 = true;
        true
    }

    /// The answered call's length limit starts (the route's, else the config's).
    pub(super) fn start_max_duration(&mut self, call: &mut Call, now: Instant) {
        let configured = Some(self.config.calls.max_duration_s)
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        call.hangup_at = call.max_duration.or(configured).map(|limit| now + limit);
    }

    /// Time passed for the call's session timers and length limit.
    pub(super) fn poll_session(&mut self, call: &mut Call, now: Instant) {
        if call.hangup_at.is_some_and(|t| t <= now) {
            tracing::info!(call = call.id, caller = %call.caller, callee = %call.callee, "the call reached its longest allowed length; ending it");
            return self.end_session(call, "max-duration", now);
        }
        for side in [Side::A, Side::B] {
            match call.timer_mut(side).and_then(|t| t.poll(now)) {
                Some(TimerDue::Refresh) => self.send_refresh(call, side, now),
                Some(TimerDue::Expired) => {
                    tracing::info!(
                        call = call.id,
                        leg = side.name(),
                        "no session refresh in time; ending the call"
                    );
                    return self.end_session(call, "session-timer", now);
                }
                None => {}
            }
        }
    }

    /// End an answered call from Warden's side: BYE on both legs.
    pub(super) fn end_session(&mut self, call: &mut Call, reason: &'static str, now: Instant) {
        call.note_end("warden", reason);
        call.hangup_at = None;
        call.timer_a = None;
        call.timer_b = None;
        call.pending_ok = None;
        if !matches!(call.state, State::Answered | State::Confirmed) {
            return;
        }
        self.send_bye(call, Side::A, now);
        if call.answered.is_some() {
            self.send_bye(call, Side::B, now);
        }
        call.end_unless_byes_pending();
    }

    /// Warden refreshes the session on `side`: UPDATE without a body when the peer allows
    /// UPDATE, else a re-INVITE offering the description it last sent there, unchanged.
    fn send_refresh(&mut self, call: &mut Call, side: Side, now: Instant) {
        let Some(timer) = call.timer_mut(side).map(|t| t.clone()) else {
            return;
        };
        let sdp = call.media.sent(side).map(bytes::Bytes::copy_from_slice);
        let method = match (&sdp, timer.peer_allows_update) {
            (_, true) | (None, _) => Method::Update,
            (Some(_), false) => Method::Invite,
        };
        let Some((mut req, dest)) = self.side_request(call, side, method.clone(), None) else {
            return;
        };
        let _ = req.set_header("Session-Expires", &as_uac(&timer));
        let _ = req.set_header("Min-SE", &self.config.calls.min_se_s.to_string());
        let _ = req.set_header("Supported", "timer");
        if method == Method::Invite
            && let Some(body) = sdp
        {
            req.set_body(body, Some("application/sdp"));
        }
        tracing::debug!(call = call.id, leg = side.name(), %method, "session refresh");
        let purpose = ClientPurpose::Refresh {
            call: call.id,
            side,
        };
        if self.send_in_dialog(req, dest, purpose, now).is_none() {
            self.end_session(call, "session-timer", now);
        }
    }

    /// The answer to Warden's refresh on `side`.
    pub(super) fn on_refresh_response(
        &mut self,
        id: u64,
        side: Side,
        resp: Response,
        now: Instant,
    ) {
        let status = resp.status();
        if status < 200 {
            return;
        }
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        let method = resp.cseq().map(|c| c.method);
        if method == Some(Method::Invite)
            && let Some(seq) = resp.cseq().map(|c| c.seq)
        {
            // Every final answer to a re-INVITE is ACKed; a 2xx by Warden (RFC 3261 13.2.2.4).
            if (200..300).contains(&status) {
                self.send_ack(&mut call, side, seq, bytes::Bytes::new(), None);
            }
        }
        match status {
            200..=299 => {
                if method == Some(Method::Invite) && !resp.body().is_empty() {
                    let ct = resp.header("Content-Type");
                    let body = resp.body().clone();
                    self.anchor_or_pass(&mut call.media, side, &body, ct.as_deref(), Role::Answer);
                }
                let asked = call
                    .timer_mut(side)
                    .map_or(0, |t| t.interval.as_secs() as u32);
                if let Some(timer) = call.timer_mut(side) {
                    timer.refreshed(now, Some(negotiated_uac(&resp, asked)));
                }
            }
            491 => {
                // RFC 3261 14.1: the Call-ID's owner waits 2.1-4 s, the other side 0-2 s.
                let owner = side == Side::B;
                let (low, high) = if owner { (2100, 4000) } else { (0, 2000) };
                let wait = rand::Rng::random_range(&mut self.rng, low..=high);
                if let Some(timer) = call.timer_mut(side) {
                    timer.retry_at(now + Duration::from_millis(wait));
                }
            }
            422 => {
                let min_se = resp.header("Min-SE").and_then(|v| parse_min_se(&v));
                if let (Some(timer), Some(s)) = (call.timer_mut(side), min_se) {
                    timer.raise_to(Duration::from_secs(u64::from(s)));
                    self.send_refresh(&mut call, side, now);
                }
            }
            405 | 501 if method == Some(Method::Update) => {
                // The peer takes no UPDATE after all: a re-INVITE at once.
                if let Some(timer) = call.timer_mut(side) {
                    timer.peer_allows_update = false;
                    self.send_refresh(&mut call, side, now);
                }
            }
            _ => {
                tracing::info!(
                    call = id,
                    leg = side.name(),
                    status,
                    "session refresh failed; ending the call"
                );
                self.end_session(&mut call, "session-timer", now);
            }
        }
        self.schedule(&call);
        self.finish_or_keep(call);
    }

    /// Warden's refresh on `side` got no answer at all.
    pub(super) fn refresh_timed_out(&mut self, id: u64, side: Side, now: Instant) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        tracing::info!(
            call = id,
            leg = side.name(),
            "session refresh unanswered; ending the call"
        );
        self.end_session(&mut call, "session-timer", now);
        self.finish_or_keep(call);
    }

    /// An UPDATE without a body from `side` of an answered call: a session refresh (or
    /// nothing the other party needs), answered here with the leg's Session-Expires.
    pub(super) fn on_refresh_update(
        &mut self,
        call: &mut Call,
        key: &TxKey,
        req: &Request,
        side: Side,
        now: Instant,
    ) {
        let mut ok = Response::to_request(req, 200, self.phrase(200));
        let caller_transport = call.a.dest.transport;
        let transport = call
            .leg_mut(side)
            .map_or(caller_transport, |leg| leg.dest.transport);
        let _ = ok.push_header("Contact", &self.contact(transport));
        self.peer_refreshed(call, side, req, &mut ok, now);
        self.tx.respond(key, ok, now);
    }

    /// A refresh from `side` succeeded (Warden's 2xx to its re-INVITE or UPDATE, `ok`):
    /// the leg's timer starts over, with what the request asked for, and `ok` says it.
    pub(super) fn peer_refreshed(
        &mut self,
        call: &mut Call,
        side: Side,
        req: &Request,
        ok: &mut Response,
        now: Instant,
    ) {
        let min_se = u64::from(self.config.calls.min_se_s);
        let Some(timer) = call.timer_mut(side) else {
            return;
        };
        let asked = req
            .header("Session-Expires")
            .and_then(|v| parse_session_expires(&v))
            .map(|(s, who)| {
                let interval = Duration::from_secs(u64::from(s).max(min_se));
                let refresher = match who.as_deref() {
                    Some("uas") => Refresher::Warden,
                    _ => Refresher::Peer,
                };
                (interval, refresher)
            });
        timer.refreshed(now, asked);
        let _ = ok.set_header("Session-Expires", &as_uas(timer));
        if req.lists("Supported", "timer") && !ok.lists("Require", "timer") {
            let _ = ok.push_header("Require", "timer");
        }
    }

    /// Warden's Session-Expires for a request it relays to `side` (not the requester's:
    /// each leg has its own timer).
    pub(super) fn relayed_session_expires(&self, call: &mut Call, side: Side, req: &mut Request) {
        if let Some(timer) = call.timer_mut(side) {
            let _ = req.set_header("Session-Expires", &as_uac(timer));
        }
    }

    /// The far side answered a relayed re-INVITE or UPDATE with a 2xx: its leg is
    /// refreshed too.
    pub(super) fn far_refreshed(
        &mut self,
        call: &mut Call,
        side: Side,
        ok: &Response,
        now: Instant,
    ) {
        let asked = call
            .timer_mut(side)
            .map_or(0, |t| t.interval.as_secs() as u32);
        if let Some(timer) = call.timer_mut(side) {
            timer.refreshed(now, Some(negotiated_uac(ok, asked)));
        }
    }
}

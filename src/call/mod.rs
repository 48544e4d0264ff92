//! One call's B2BUA state and its own transitions (`impl Call`): the caller's leg (Warden as
//! UAS), the callee branches (Warden as UAC, one per forked contact). The flows driving it
//! are in `crate::core`.

pub mod conference;
pub mod digits;

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::anchor::MediaSession;
use crate::sip::message::{Method, Request};
use crate::sip::reliable::ReliableProvisionals;
use crate::sip::session_timer::SessionTimer;
use crate::sip::transaction::TxKey;
use crate::sip::transport::Destination;

pub use crate::sip::dialog::Leg;

/// A fresh random tag, Call-ID part or branch suffix (64 bits, hex).
pub fn new_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Which side of the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The caller (Warden answers it).
    A,
    /// An answered callee branch (Warden called it).
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::A => "caller",
            Side::B => "callee",
        }
    }
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Callee branches are being tried.
    Calling,
    /// 2xx relayed to the caller; waiting for its ACK.
    Answered,
    /// Both legs confirmed: media flows.
    Confirmed,
    /// A BYE is out; waiting for its answer.
    Ending,
    /// Over; the call is removed.
    Done,
}

/// One INVITE toward one callee contact.
#[derive(Debug)]
pub struct Branch {
    pub leg: Leg,
    pub invite: Request,
    pub tx: Option<TxKey>,
    /// A provisional arrived (a CANCEL may be sent now, RFC 3261 9.1).
    pub provisional: bool,
    pub final_status: Option<u16>,
    /// CANCEL wanted but no provisional yet.
    pub cancel_pending: bool,
    /// The ACK we sent for this branch's 2xx, resent when the 2xx is retransmitted.
    pub ack: Option<Bytes>,
    /// The RSeq of the last reliable provisional PRACKed (RFC 3262 4: a retransmission,
    /// or one out of order, is dropped).
    pub last_rseq: Option<u32>,
    /// A reliable provisional carrying an offer (the caller's INVITE had none): its PRACK
    /// waits for the caller's, which brings the answer. (RSeq, INVITE CSeq).
    pub prack_owed: Option<(u32, u32)>,
    /// The INVITE was sent again with a longer Session-Expires after a 422.
    pub retried_422: bool,
    /// Where else this branch's URI may be sent, in order (further SRV targets or
    /// addresses, RFC 3263): tried on a timeout or a 503.
    pub fallbacks: Vec<Destination>,
}

/// A 2xx Warden retransmits toward a UAS-side peer until its ACK (RFC 3261 13.3.1.4).
#[derive(Debug)]
pub struct PendingOk {
    pub bytes: Bytes,
    pub dest: Destination,
    pub next: Instant,
    pub interval: Duration,
    pub give_up: Instant,
    pub cseq: u32,
    /// The side whose ACK we wait for.
    pub side: Side,
}

impl PendingOk {
    /// Retransmit `bytes` to `dest` at T1, doubling up to T2 (never over a reliable
    /// transport), until `side` ACKs CSeq `cseq` or 64*T1 passes.
    pub fn new(
        bytes: Bytes,
        dest: Destination,
        cseq: u32,
        side: Side,
        now: Instant,
        t1: Duration,
    ) -> PendingOk {
        let give_up = now + t1 * 64;
        let next = if dest.transport.is_reliable() {
            give_up
        } else {
            now + t1
        };
        PendingOk {
            bytes,
            dest,
            next,
            interval: t1,
            give_up,
            cseq,
            side,
        }
    }
}

/// A request relayed from one side, waiting for the other side's answer.
#[derive(Debug)]
pub struct Relay {
    pub server: TxKey,
    pub from: Side,
    pub method: Method,
    /// For a relayed INVITE: CSeq on the far side, so the requester's ACK can follow.
    pub far_cseq: u32,
}

/// Everything Warden holds about one call.
#[derive(Debug)]
pub struct Call {
    pub id: u64,
    pub state: State,
    pub a: Leg,
    pub a_invite: Request,
    pub a_invite_tx: TxKey,
    pub branches: Vec<Branch>,
    pub answered: Option<usize>,
    pub caller: String,
    pub callee: String,
    pub started: Instant,
    pub answered_at: Option<Instant>,
    pub ring_until: Option<Instant>,
    pub pending_ok: Option<Box<PendingOk>>,
    /// ACK owed to the far side of a relayed re-INVITE once the requester ACKs: (side, cseq).
    pub owed_ack: Option<(Side, u32)>,
    /// The caller cancelled (or timed out): late 2xx answers get ACK + BYE.
    pub abandoned: bool,
    best_failure: Option<(u16, String)>,
    /// BYEs sent and not yet answered (see `bye_sent`, `bye_answered`).
    outstanding_byes: usize,
    /// The call's relay streams.
    pub media: MediaSession,
    /// When to look at media activity next (bridged calls).
    pub media_check: Option<Instant>,
    /// Who ended the call and why (caller/callee/warden, "normal", "media timeout"...):
    /// the first cause noted wins.
    ended_by: Option<(&'static str, &'static str)>,
    /// The call's record, as far as it goes (see `crate::cdr`).
    pub record: crate::cdr::Record,
    /// The tracing span its log lines carry (call number, Call-ID, record id).
    span: tracing::Span,
    /// Playing the caller an announcement; what follows when it ends.
    pub announcing: Option<AfterPrompt>,
    /// The dialplan actions still to run for this call, when a rule matched.
    pub program: Option<Program>,
    /// Labels the dialplan gave the call (into its record).
    pub tags: Vec<String>,
    /// Header edits for the B-leg INVITEs: set (Some) or remove (None).
    pub b_headers: Vec<(String, Option<String>)>,
    /// Warden's offer toward callees (the caller's, anchored and widened) and its type.
    pub b_offer: Bytes,
    pub b_offer_type: Option<String>,
    /// The Route set for the next callee-side INVITE (the IMS way on), taken by it.
    pub b_route: Vec<String>,
    /// The Route set (a registered Path) of each contact that has one, by contact.
    pub contact_routes: Vec<(String, Vec<String>)>,
    /// Warden answered the caller itself (a dialplan `answer`): no callee leg.
    pub answered_by_warden: bool,
    /// A menu waiting for the caller's key: key -> the rule to go on with.
    pub menu: Option<Vec<(char, String)>>,
    /// Collecting the caller's key presses (a menu), and the last input collected.
    pub digits: Option<Box<digits::DigitCollector>>,
    pub collected: Option<digits::Collected>,
    /// Screening: waiting for the decision, and whether the screener counts this call
    /// (it must hear when the call ends).
    pub screening_pending: bool,
    pub screened: bool,
    /// The caller is known to Warden (registered, a trusted peer or S-CSCF): a 608 may
    /// carry the operator's jCard (RFC 8688 section 6).
    pub caller_vouched: bool,
    /// Extra headers on Warden's final failure response (Reason, Call-Info).
    pub reject_headers: Vec<(String, String)>,
    /// The code screening's challenge read to the caller, while Warden waits for it.
    pub challenge: Option<String>,
    /// STIR's verdict on the caller's identity, added to the callee's From and PAI.
    pub verstat: Option<&'static str>,
    /// The route's music on hold, when it chose one (else `media.hold_music`).
    pub hold_music: Option<String>,
    /// A blind transfer in progress (REFER from one party).
    pub transfer: Option<Box<Transfer>>,
    /// Legs that left the call by a transfer: their late requests get a quiet answer, and
    /// their dialogs are forgotten with the call.
    pub former: Vec<Leg>,
    /// The party on this side left without anyone in its place (it transferred the other
    /// into a conference room): nothing more is sent toward that side.
    pub left: Option<Side>,
    /// Where the call came from (behind an edge proxy, the caller's origin): what the guard
    /// counts it against (`guard.max_calls_per_source`) and the screening judges.
    pub guarded_source: Option<std::net::IpAddr>,
    /// Provisionals to the caller sent reliably (it supports 100rel).
    pub a_reliable: Option<Box<ReliableProvisionals>>,
    /// Each leg's session timer (RFC 4028), once its INVITE was answered.
    pub timer_a: Option<SessionTimer>,
    pub timer_b: Option<SessionTimer>,
    /// The session interval this call's route asks for (0: none).
    pub session_expires: u32,
    /// The route's longest call, and when the answered call is ended for it.
    pub max_duration: Option<Duration>,
    pub hangup_at: Option<Instant>,
    /// What a callee's 3xx does, and how many redirect targets were followed.
    pub on_redirect: crate::dialplan::RedirectPolicy,
    pub redirects_followed: usize,
    /// A call to an emergency number: never refused by screening or limits.
    pub emergency: bool,
    /// Warden's own early answers to the caller's UPDATEs (their `o=` versions count on).
    pub early_updates: u64,
    /// An originated call: the ACK of the first party's 2xx, sent again with each
    /// retransmission of that 2xx.
    pub a_ack: Option<Box<Bytes>>,
    /// Keys the API asked to send to a party, one at a time.
    pub keys_out: Option<Box<KeysOut>>,
    /// Recording: asked for (in this layout) and waiting for the media, or running.
    pub recording: Option<Recording>,
}

/// A call's recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// Starts once both parties' media flows.
    Wanted(warden_media::record::Layout, warden_media::record::Format),
    Running,
}

/// Keys to send a party as RFC 4733 events, one after the other (`POST /calls/{id}/dtmf`).
#[derive(Debug)]
pub struct KeysOut {
    pub to: Side,
    pub keys: std::collections::VecDeque<char>,
    /// When the next key starts.
    pub next: Instant,
}

/// A blind transfer (RFC 3515): the party on side `by` asked Warden to call `target` in
/// its place; the other party stays and is bridged to the target once it answers.
#[derive(Debug)]
pub struct Transfer {
    pub by: Side,
    /// The Refer-To URI, and its user (what the dialplan routes).
    pub target: String,
    pub target_user: String,
    /// The transferor hung up meanwhile: the outcome is reported to nobody, and a failure
    /// ends the call.
    pub referrer_gone: bool,
    /// Asked by the admin API, not by a REFER: nobody subscribed to the outcome; the
    /// replaced party is hung up when the target answers, and a failure leaves the call
    /// as it was.
    pub by_api: bool,
    /// The INVITE toward the target, as a branch of the call.
    pub branch: Option<usize>,
    /// When the target has rung long enough.
    pub until: Option<Instant>,
    /// The last progress reported to the transferor (NOTIFY sent once per status).
    pub reported: u16,
    /// Where the dialplan routes the target (its first bridge target), once routed.
    pub route: Option<String>,
}

/// What happens when an announcement to the caller ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterPrompt {
    /// Send this failure (status, reason).
    Fail(u16, String),
    /// Go on with the dialplan's next action.
    Continue,
    /// A menu: wait for the caller's key (or the menu's timeout).
    Menu,
}

/// A matched rule's actions, being run one after the other.
#[derive(Debug, Clone)]
pub struct Program {
    pub rule: String,
    pub actions: Vec<crate::dialplan::Action>,
    pub next: usize,
    pub values: crate::dialplan::template::Values,
    pub bridge: Option<BridgeAttempt>,
}

/// A bridge action in progress: its rendered targets and how far it got.
#[derive(Debug, Clone)]
pub struct BridgeAttempt {
    pub targets: Vec<String>,
    pub mode: crate::dialplan::BridgeMode,
    pub timeout: Duration,
    /// Sequential: the next target to try.
    pub next_target: usize,
    /// Branches from this index on belong to the current attempt.
    pub first_branch: usize,
    /// The attempt's number, and the DNS lookups it still waits for.
    pub serial: u64,
    pub pending_lookups: usize,
}

/// What a new call starts from: the caller's INVITE as admitted, its leg, its record so
/// far, its media (the offer anchored) and its dialplan program.
pub struct Invited {
    pub id: u64,
    pub a: Leg,
    pub invite: Request,
    pub tx: TxKey,
    pub caller: String,
    pub callee: String,
    pub record: crate::cdr::Record,
    pub media: MediaSession,
    pub program: Program,
    /// Warden's offer toward callees and its content type.
    pub b_offer: Bytes,
    pub b_offer_type: Option<String>,
    /// The source the guard counts the call against.
    pub source: std::net::IpAddr,
    pub now: Instant,
    /// The session interval Warden asks for (the config's, until the route sets its own).
    pub session_expires: u32,
    pub emergency: bool,
}

impl Call {
    /// A call in its first state (calling), nothing tried yet.
    pub fn new(new: Invited) -> Call {
        let span = tracing::info_span!("call", id = new.id, call_id = %new.a.call_id, record = %new.record.id);
        Call {
            span,
            record: new.record,
            ended_by: None,
            id: new.id,
            state: State::Calling,
            a: new.a,
            a_invite: new.invite,
            a_invite_tx: new.tx,
            branches: Vec::new(),
            answered: None,
            caller: new.caller,
            callee: new.callee,
            started: new.now,
            answered_at: None,
            ring_until: None,
            pending_ok: None,
            owed_ack: None,
            abandoned: false,
            best_failure: None,
            outstanding_byes: 0,
            media: new.media,
            media_check: None,
            announcing: None,
            digits: None,
            collected: None,
            screening_pending: false,
            screened: false,
            caller_vouched: false,
            reject_headers: Vec::new(),
            challenge: None,
            verstat: None,
            hold_music: None,
            transfer: None,
            former: Vec::new(),
            left: None,
            guarded_source: Some(new.source),
            program: Some(new.program),
            tags: Vec::new(),
            b_headers: Vec::new(),
            b_offer: new.b_offer,
            b_offer_type: new.b_offer_type,
            menu: None,
            answered_by_warden: false,
            b_route: Vec::new(),
            contact_routes: Vec::new(),
            a_reliable: None,
            timer_a: None,
            timer_b: None,
            session_expires: new.session_expires,
            max_duration: None,
            hangup_at: None,
            on_redirect: crate::dialplan::RedirectPolicy::Follow,
            redirects_followed: 0,
            emergency: new.emergency,
            early_updates: 0,
            a_ack: None,
            keys_out: None,
            recording: None,
        }
    }

    /// Who ended the call and why, when noted.
    pub fn ended_by(&self) -> Option<(&'static str, &'static str)> {
        self.ended_by
    }

    /// The call goes on after what was noted as its end (an answer after failed
    /// attempts, a transfer continuing it): forget that cause.
    pub fn forget_end(&mut self) {
        self.ended_by = None;
    }

    /// The most meaningful failure so far (status, reason).
    pub fn best_failure(&self) -> Option<(u16, String)> {
        self.best_failure.clone()
    }

    /// Enter the call's span: log lines from here on carry its ids.
    pub fn enter(&self) -> tracing::span::EnteredSpan {
        self.span.clone().entered()
    }

    /// Note who ends the call and why, unless an earlier cause was noted.
    pub fn note_end(&mut self, by: &'static str, reason: &'static str) {
        self.ended_by.get_or_insert((by, reason));
    }

    /// The final response the caller got, for the record.
    pub fn set_final(&mut self, status: u16, reason: &str) {
        if self.record.final_code.is_none() {
            self.record.final_code = Some(i64::from(status));
            self.record.final_reason = Some(reason.to_owned());
        }
    }

    /// The leg of a side (B: the answered branch).
    pub fn leg_mut(&mut self, side: Side) -> Option<&mut Leg> {
        if self.left == Some(side) {
            return None;
        }
        match side {
            Side::A => Some(&mut self.a),
            Side::B => {
                let i = self.answered?;
                self.branches.get_mut(i).map(|b| &mut b.leg)
            }
        }
    }

    /// A leg's session timer.
    pub fn timer_mut(&mut self, side: Side) -> Option<&mut SessionTimer> {
        match side {
            Side::A => self.timer_a.as_mut(),
            Side::B => self.timer_b.as_mut(),
        }
    }

    /// The callee branch in an early dialog with Warden (a provisional with a tag, no final
    /// answer yet), the latest if several: where early UPDATEs and INFOs go.
    pub fn early_branch(&self) -> Option<usize> {
        (self.state == State::Calling)
            .then(|| {
                self.branches.iter().rposition(|b| {
                    b.provisional && b.leg.remote_tag.is_some() && b.final_status.is_none()
                })
            })
            .flatten()
    }

    /// The dialplan bridge attempt in progress, if any.
    pub fn bridge(&self) -> Option<&BridgeAttempt> {
        self.program.as_ref()?.bridge.as_ref()
    }

    pub fn bridge_mut(&mut self) -> Option<&mut BridgeAttempt> {
        self.program.as_mut()?.bridge.as_mut()
    }

    /// The earliest moment this call wants to be woken.
    pub fn next_wake(&self) -> Option<Instant> {
        let ok = self.pending_ok.as_ref().map(|p| p.next.min(p.give_up));
        let digits = self.digits.as_ref().and_then(|d| d.deadline());
        let transfer = self.transfer.as_ref().and_then(|t| t.until);
        let keys = self.keys_out.as_ref().map(|k| k.next);
        let prack = self.a_reliable.as_ref().and_then(|r| r.next_wake());
        let timers = [&self.timer_a, &self.timer_b].map(|t| t.as_ref().and_then(|t| t.next_wake()));
        [
            self.ring_until,
            ok,
            self.media_check,
            digits,
            transfer,
            prack,
            self.hangup_at,
            keys,
        ]
        .into_iter()
        .chain(timers)
        .flatten()
        .min()
    }

    /// Keep the "most meaningful" failure to report (RFC 3261 16.7 step 6: 6xx wins).
    pub fn note_failure(&mut self, status: u16, reason: &str) {
        self.note_failure_with(status, reason, Vec::new());
    }

    /// Note a failure with the headers that explain it, passed on unchanged to the caller
    /// if it is the one reported (a downstream 603+'s Reason, a 608's Call-Info).
    pub fn note_failure_with(&mut self, status: u16, reason: &str, headers: Vec<(String, String)>) {
        let better = match &self.best_failure {
            None => true,
            Some((s, _)) => (status >= 600 && *s < 600) || (*s == 408 && status != 408),
        };
        if better {
            self.best_failure = Some((status, reason.to_owned()));
            self.reject_headers = headers;
        }
    }

    /// Warden sent a BYE into one of the call's dialogs: the call is ending.
    pub fn bye_sent(&mut self) {
        self.outstanding_byes += 1;
        self.state = State::Ending;
    }

    /// One of Warden's BYEs was answered (or timed out): the call is done once none is
    /// left.
    pub fn bye_answered(&mut self) {
        self.outstanding_byes = self.outstanding_byes.saturating_sub(1);
        self.end_unless_byes_pending();
    }

    /// Done now, unless a BYE of Warden's still waits for its answer.
    pub fn end_unless_byes_pending(&mut self) {
        if self.outstanding_byes == 0 {
            self.state = State::Done;
        }
    }

    /// Over, settled and with nothing outstanding: the core may forget it.
    pub fn finished(&self) -> bool {
        let settled = self.all_branches_final() || self.answered.is_some();
        self.state == State::Done && settled && self.outstanding_byes == 0
    }

    /// Callee branch `index` answered at `now`: it is the call's B side from now on.
    pub fn answered_by(&mut self, index: usize, now: Instant) {
        self.answered = Some(index);
        self.ring_until = None;
        self.state = State::Answered;
        self.answered_at = Some(now);
    }

    /// Does an in-dialog request from `side` with Call-ID `call_id` belong to the bridge?
    /// (A request from a callee branch that did not win does not.)
    pub fn is_bridged_leg(&self, side: Side, call_id: Option<&str>) -> bool {
        side == Side::A
            || self
                .answered
                .and_then(|i| self.branches.get(i))
                .is_some_and(|b| Some(b.leg.call_id.as_str()) == call_id)
    }

    /// How the admin API names where the call is.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Calling if self.record.ringing_ms.is_some() => "ringing",
            State::Calling => "calling",
            State::Answered => "answered",
            State::Confirmed => "confirmed",
            State::Ending | State::Done => "ending",
        }
    }

    pub fn all_branches_final(&self) -> bool {
        self.branches.iter().all(|b| b.final_status.is_some())
    }
}

#[cfg(test)]
mod size {
    /// Every live call holds one `Call` (boxed) and usually one `Branch`: their size is
    /// memory per concurrent call (README "Benchmarks"). Rarely used parts are boxed.
    #[test]
    fn a_call_stays_within_3_kib_and_a_branch_within_1() {
        assert!(
            size_of::<super::Call>() <= 3072,
            "{}",
            size_of::<super::Call>()
        );
        assert!(
            size_of::<super::Branch>() <= 1024,
            "{}",
            size_of::<super::Branch>()
        );
    }
}

//! Screening in the call flow: what the screener is asked, and its verdict carried out
//! (go on, block with each kind of answer, or the caller's challenge).

use std::time::{Duration, Instant};

use crate::call::digits::DigitSpec;
use crate::call::{AfterPrompt, Call, State};

use super::Core;

impl Core {
    /// What screening is told about the call.
    pub(super) fn screen_request(
        &mut self,
        call: &mut Call,
        profile: String,
    ) -> crate::screening::Request {
        let req = &call.a_invite;
        let identity = req
            .address_list("P-Asserted-Identity")
            .ok()
            .and_then(|list| list.into_iter().next())
            .or_else(|| req.from())
            .map(|a| a.uri);
        let caller_number = identity.as_ref().and_then(|u| u.user()).unwrap_or_default();
        let user = identity
            .map(|u| {
                format!(
                    "{}@{}",
                    u.user().unwrap_or_default(),
                    u.host().unwrap_or_default()
                )
            })
            .unwrap_or_else(|| call.caller.clone());
        // The S-CSCF vouches as the hop it is; the screening judges the caller's origin.
        let hop = call.a.dest.addr.ip();
        let source = call.guarded_source.unwrap_or(hop);
        call.caller_vouched = crate::dialplan::in_networks(hop, &self.trusted_scscf)
            || !self
                .registrar
                .lock()
                .lookup(&call.caller, self.unix_s())
                .is_empty();
        crate::screening::Request {
            call: call.id,
            call_id: call.a.call_id.clone(),
            profile,
            user,
            callee: req.uri().user().unwrap_or_default(),
            source,
            user_agent: req.header("User-Agent").unwrap_or_default(),
            caller_number,
            identity: req.header("Identity"),
            date: req.header("Date"),
            stir: None,
            shared: None,
            now: self.unix_s(),
        }
    }

    /// The screener's decision on a call waiting at its `screen` action.
    pub(super) fn on_screened(
        &mut self,
        id: u64,
        outcome: crate::screening::Outcome,
        now: Instant,
    ) {
        use crate::screening::Decision;
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        if !std::mem::take(&mut call.screening_pending) {
            return self.finish_or_keep(call);
        }
        if call.transfer.is_some() {
            self.transfer_screened(&mut call, outcome, now);
            self.schedule(&call);
            return self.finish_or_keep(call);
        }
        let reason = outcome.reason();
        tracing::info!(
            call = call.id,
            caller = %call.caller,
            callee = %call.callee,
            decision = outcome.decision.name(),
            score = outcome.score,
            %reason,
            "screened"
        );
        call.tags
            .push(format!("screening:{}", outcome.decision.name()));
        call.record.screening = Some(outcome.decision.name().to_owned());
        call.record.screening_reason = Some(reason.to_string());
        call.record.attestation = outcome.verstat.map(str::to_owned);
        self.emit_record(&mut call);
        self.report(Some(id), || crate::events::What::Screening {
            decision: outcome.decision.name().to_owned(),
            reason: Some(reason.to_string()),
        });
        // The screener counts every call it saw (ending one it did not admit is a no-op).
        call.screened = true;
        let jcard = (call.caller_vouched && !outcome.identity_failed) || outcome.identity_verified;
        // 3GPP TS 24.229: the verification's result travels to the callee in the caller's
        // identities.
        call.verstat = outcome.verstat;
        match outcome.decision {
            Decision::Allow => {
                if call.abandoned {
                    call.state = State::Done;
                } else {
                    self.run_program(&mut call, now);
                }
            }
            Decision::Block(verdict) => {
                call.program = None;
                if call.abandoned {
                    call.state = State::Done;
                } else {
                    self.block(&mut call, &verdict, jcard, now);
                }
            }
            Decision::Challenge { value } => {
                if call.abandoned {
                    call.state = State::Done;
                } else if !self.challenge(&mut call, &value, now) {
                    // No way to read the code (no audio offered): refuse, as a failed
                    // challenge would.
                    self.block(&mut call, &crate::screening::Verdict::decline(), false, now);
                }
            }
        }
        self.schedule(&call);
        self.finish_or_keep(call);
    }

    /// Screening's challenge (a voice CAPTCHA): read the caller a random 4-digit code as
    /// early media and wait for it to be keyed in (RFC 4733 or SIP INFO), within the time
    /// the prompt takes plus 10 s for the first key and 5 s between keys.
    pub(super) fn challenge(&mut self, call: &mut Call, value: &str, now: Instant) -> bool {
        let code = challenge_code(&mut self.rng);
        let digits: Vec<String> = code.chars().map(|d| format!("digit_{d}")).collect();
        let mut names = vec!["challenge_intro"];
        names.extend(digits.iter().map(String::as_str));
        if !self.play_to_caller(call, &names, 0, true, now) {
            return false;
        }
        let wait: Duration = names.iter().map(|n| self.prompt_length(n)).sum();
        tracing::info!(call = call.id, caller = %call.caller, %value, "screening challenge: the caller must key in the code read to them");
        call.announcing = Some(AfterPrompt::Menu);
        call.challenge = Some(code);
        let spec = DigitSpec {
            max_digits: 4,
            terminator: Some('#'),
            first_digit_timeout: wait + Duration::from_secs(10),
            inter_digit_timeout: Duration::from_secs(5),
            overall_timeout: wait + Duration::from_secs(30),
        };
        self.start_collecting(call, spec, now);
        true
    }

    /// Answer a blocked call as its verdict says: a prompt as early media first when the
    /// verdict has one (or for a 608 to a caller that did not say it understands 608,
    /// RFC 8688 section 3.3), then the final response (the call is done unless the prompt
    /// still plays); a 608 carries the operator's jCard when `jcard` (the caller is known or
    /// verified, RFC 8688 section 6).
    pub(super) fn block(
        &mut self,
        call: &mut Call,
        verdict: &crate::screening::Verdict,
        jcard: bool,
        now: Instant,
    ) {
        use crate::screening::Answer;
        let s = &self.config.screening;
        let status = verdict.status();
        let reason = match &verdict.answer {
            // ATIS-1000099's phrase marks a 603+; RFC 8224 names a stale PASSporT's 403.
            Answer::NetworkBlocked => "Network Blocked",
            Answer::Identity(403) => "Stale Date",
            Answer::Redirect(prefix) => {
                let uri = call.a_invite.uri();
                let user = uri.user().unwrap_or_default();
                let host = uri.host().unwrap_or_default();
                let target = format!("sip:{prefix}{user}@{host}");
                tracing::info!(call = call.id, %target, "screening redirects the call");
                self.redirect(call, &[target], now);
                call.state = State::Done;
                return;
            }
            _ => self.phrase(status),
        }
        .to_owned();
        let reason = reason.as_str();
        call.reject_headers.clear();
        if verdict.answer == Answer::NetworkBlocked {
            // ATIS-1000099: who blocked and how to ask for redress.
            let r = &s.redress;
            let mut text = String::from("v=analytics1");
            for (key, value) in [("tel", &r.tel), ("url", &r.url), ("email", &r.email)] {
                if let Some(v) = value {
                    text.push_str(&format!(";{key}={}", v.replace(['"', '\\'], "")));
                }
            }
            call.reject_headers.push((
                "Reason".into(),
                format!("SIP;cause=603;text=\"{text}\";location={}", r.location),
            ));
        }
        let understands_608 = call
            .a_invite
            .headers("Feature-Caps")
            .iter()
            .any(|v| v.contains("sip.608"));
        if verdict.answer == Answer::Rejected && jcard {
            call.reject_headers.push((
                "Call-Info".into(),
                format!("<{}>;purpose=jwscard", self.config.jcard_url()),
            ));
        }
        let prompt = verdict.prompt.clone().or_else(|| {
            (verdict.answer == Answer::Rejected && !understands_608)
                .then(|| "call_blocked".to_owned())
        });
        if let Some(name) = prompt
            && self.play_to_caller(call, &[&name], 0, false, now)
        {
            tracing::info!(call = call.id, prompt = %name, status, "announcing before the block");
            call.announcing = Some(AfterPrompt::Fail(status, reason.to_owned()));
            return;
        }
        self.decline(call, status, reason, now);
        call.state = State::Done;
    }
}

/// The four digits screening's challenge reads to a caller, drawn from the core's own
/// random source (seeded by tests through `Core::seed_random`).
pub fn challenge_code(rng: &mut impl rand::Rng) -> String {
    (0..4)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

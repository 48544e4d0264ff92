//! The dialplan program of a call: its actions run one after the other until one waits
//! (a bridge ringing, a prompt, a menu, screening) or ends the call.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::anchor::MediaSession;
use crate::call::digits::DigitSpec;
use crate::call::{AfterPrompt, BridgeAttempt, Call, Side, State};
use crate::dialplan::Action;

use super::{Core, Output};

impl Core {
    /// Run the call's dialplan actions from where it stands until one waits (a bridge
    /// ringing, a prompt playing, a menu listening) or ends the call.
    pub(super) fn run_program(&mut self, call: &mut Call, now: Instant) {
        loop {
            let over = matches!(call.state, State::Ending | State::Done);
            if call.abandoned || call.answered.is_some() || over {
                call.program = None;
                return;
            }
            let Some(program) = call.program.as_mut() else {
                return;
            };
            let Some(action) = program.actions.get(program.next).cloned() else {
                call.program = None;
                return self.program_exhausted(call, now);
            };
            program.next += 1;
            let values = program.values.clone();
            match action {
                Action::Tag(tag) => call.tags.push(tag.render(&values)),
                Action::HoldMusic(name) => call.hold_music = Some(name),
                Action::SessionExpires(seconds) => call.session_expires = seconds,
                Action::MaxDuration(limit) => call.max_duration = Some(limit),
                Action::OnRedirect(policy) => call.on_redirect = policy,
                Action::Record(layout) => {
                    let layout = layout.unwrap_or(self.config.recording.layout);
                    self.want_recording(call, layout, self.config.recording.format);
                }
                Action::Set(name, value) => {
                    let value = value.render(&values);
                    if let Some(p) = call.program.as_mut() {
                        p.values.named.insert(name, value);
                    }
                }
                Action::SetHeader(name, value) => {
                    call.b_headers.push((name, Some(value.render(&values))))
                }
                Action::RemoveHeader(name) => call.b_headers.push((name, None)),
                Action::Codecs(codecs) => {
                    match MediaSession::restrict_offer(&call.b_offer, &codecs, self.media.address())
                    {
                        Some(body) => call.b_offer = Bytes::from(body),
                        None => tracing::warn!(
                            call = call.id,
                            ?codecs,
                            "codecs: the offer has none of them (nothing to transcode from?); left as it is"
                        ),
                    }
                }
                Action::Srtp(policy) => {
                    call.media.set_srtp_policy(Side::B, policy);
                    let address = self.media.address();
                    if let Some(body) = call.media.resecure_offer(&call.b_offer, Side::B, address) {
                        call.b_offer = Bytes::from(body);
                    }
                }
                Action::Screen(_) if call.emergency => {
                    tracing::info!(call = call.id, "emergency call: not screened");
                }
                Action::Screen(profile) => {
                    let request = self.screen_request(call, profile);
                    call.screening_pending = true;
                    self.out.push_back(Output::Screen(Box::new(request)));
                    return;
                }
                Action::Reject { status, reason } => {
                    let reason = reason
                        .map(|r| r.render(&values))
                        .unwrap_or_else(|| self.phrase(status).to_owned());
                    call.program = None;
                    call.reject_headers.clear(); // the plan's own refusal, not a callee's
                    if call.answered_by_warden {
                        // Too late to refuse an answered call: hang up.
                        return self.program_exhausted(call, now);
                    }
                    self.decline(call, status, &reason, now);
                    call.state = State::Done;
                    return;
                }
                Action::Conference(room) => {
                    call.program = None;
                    return self.join_conference(call, &room.render(&values), now);
                }
                Action::Answer => {
                    if !call.answered_by_warden && !self.answer_itself(call, now) {
                        tracing::warn!(
                            call = call.id,
                            "answer: the caller offered nothing Warden can play; going on unanswered"
                        );
                    }
                }
                Action::Redirect(targets) => {
                    let contacts: Vec<String> = targets.iter().map(|t| t.render(&values)).collect();
                    call.program = None;
                    self.redirect(call, &contacts, now);
                    call.state = State::Done;
                    return;
                }
                Action::Bridge {
                    targets,
                    mode,
                    timeout,
                    ..
                } => {
                    if call.answered_by_warden && !self.reoffer_answered_caller(call) {
                        tracing::warn!(
                            call = call.id,
                            "bridge after answer: no media of the caller's to offer the callee; skipped"
                        );
                        continue;
                    }
                    let targets = targets.iter().map(|t| t.render(&values)).collect();
                    let timeout = timeout
                        .unwrap_or(Duration::from_secs(self.config.calls.no_answer_timeout_s));
                    if let Some(p) = call.program.as_mut() {
                        p.bridge = Some(BridgeAttempt {
                            targets,
                            mode,
                            timeout,
                            next_target: 0,
                            first_branch: call.branches.len(),
                            serial: 0,
                            pending_lookups: 0,
                        });
                    }
                    if self.try_bridge(call, now) {
                        return;
                    }
                }
                Action::Play { prompt, repeat } => {
                    let name = prompt.render(&values);
                    if self.play_to_caller(call, &[&name], repeat, false, now) {
                        call.announcing = Some(AfterPrompt::Continue);
                        return;
                    }
                }
                Action::Menu {
                    prompt,
                    choices,
                    timeout,
                } => {
                    let name = prompt.render(&values);
                    if self.play_to_caller(call, &[&name], 0, true, now) {
                        call.announcing = Some(AfterPrompt::Menu);
                        call.menu = Some(choices);
                        // The key may come while the prompt plays, or `timeout` after it.
                        let wait = timeout + self.prompt_length(&name);
                        let spec = DigitSpec {
                            max_digits: 1,
                            terminator: None,
                            first_digit_timeout: wait,
                            inter_digit_timeout: timeout,
                            overall_timeout: wait,
                        };
                        self.start_collecting(call, spec, now);
                        return;
                    }
                }
            }
        }
    }

    /// The dialplan's actions ran out without an answer: the caller gets the failure (or,
    /// after Warden answered itself, a BYE).
    pub(super) fn program_exhausted(&mut self, call: &mut Call, now: Instant) {
        if call.answered_by_warden {
            if matches!(call.state, State::Answered | State::Confirmed) {
                tracing::info!(call = call.id, caller = %call.caller, "dialplan done; Warden hangs up");
                call.note_end("warden", "dialplan done");
                self.send_bye(call, Side::A, now);
            }
            return;
        }
        if call.answered.is_some() || call.abandoned || call.state == State::Done {
            return;
        }
        let (status, reason) = call
            .best_failure()
            .unwrap_or((404, self.phrase(404).to_owned()));
        if self.announce(call, status, &reason, now) {
            return;
        }
        self.decline(call, status, &reason, now);
        call.state = State::Done;
    }

    /// Answer the caller with Warden's own SDP (200 OK, retransmitted until the ACK), for
    /// prompts and menus on an answered call.
    pub(super) fn answer_itself(&mut self, call: &mut Call, now: Instant) -> bool {
        let Some(plan) = call.media.answer_caller(&mut *self.media, call.id, true) else {
            return false;
        };
        let ok = self.caller_response(call, 200, self.phrase(200), Some(plan.sdp));
        self.ok_to_a(call, ok, now);
        tracing::info!(call = call.id, caller = %call.caller, callee = %call.callee, "answered by Warden");
        self.answered_record(call, 200, "OK");
        self.report(Some(call.id), || crate::events::What::Answered {
            by: "warden",
        });
        call.answered_by_warden = true;
        call.state = State::Answered;
        call.answered_at = Some(now);
        call.ring_until = None;
        self.stats.lock().calls_answered += 1;
        self.start_max_duration(call, now);
        true
    }

    /// 302 with the targets as Contacts (RFC 3261 21.3.3).
    pub(super) fn redirect(&mut self, call: &mut Call, contacts: &[String], now: Instant) {
        tracing::info!(call = call.id, caller = %call.caller, callee = %call.callee, targets = ?contacts, "call redirected");
        call.note_end("warden", "redirected");
        call.set_final(302, self.phrase(302));
        if let Some(reliable) = call.a_reliable.as_mut() {
            reliable.finish();
        }
        let mut out = self.caller_response(call, 302, self.phrase(302), None);
        for contact in contacts {
            let _ = out.push_header("Contact", &format!("<{contact}>"));
        }
        self.tx.respond(&call.a_invite_tx, out, now);
    }
}

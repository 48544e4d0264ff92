//! The caller's keys: collecting digits for menus and the challenge, RFC 4733 events
//! reported by the relay, and DTMF carried across as SIP INFO.

use std::time::Instant;

use bytes::Bytes;

use warden_media::dtmf::Digit;
use warden_media::{Side as MediaSide, StreamId};

use crate::call::digits::{Collected, DigitCollector, DigitSpec};
use crate::call::{Call, Side, State};
use crate::sip::dtmf_relay;
use crate::sip::message::Method;

use super::{ClientPurpose, Core, Output};

impl Core {
    /// Start collecting the caller's key presses (RFC 4733 events or SIP INFO alike) for
    /// call `id`: the call state machine's input for menus. False when there is no such
    /// call. The result lands in `Call::collected` (see `collected_digits`).
    pub(super) fn start_digits(&mut self, id: u64, spec: DigitSpec, now: Instant) -> bool {
        let Some(mut call) = self.calls.remove(&id) else {
            return false;
        };
        let _span = call.enter();
        self.start_collecting(&mut call, spec, now);
        self.schedule(&call);
        self.finish_or_keep(call);
        true
    }

    /// A new input: the collector, and the relay reporting the caller's keys.
    pub(super) fn start_collecting(&mut self, call: &mut Call, spec: DigitSpec, now: Instant) {
        call.digits = Some(Box::new(DigitCollector::new(spec, now)));
        call.collected = None;
        if let Some(stream) = call.media.first_stream() {
            self.media.report_dtmf(stream, MediaSide::A, true);
        }
    }

    /// The caller answered a prompt that listens (a menu, a challenge): stop it playing.
    pub(super) fn stop_prompt(&mut self, call: &mut Call) {
        if let Some(stream) = call.media.first_stream() {
            self.media.stop_playing(stream, MediaSide::A);
        }
        call.announcing = None;
        call.ring_until = None;
    }

    /// The caller's last finished input on call `id`.
    pub fn collected_digits(&self, id: u64) -> Option<&Collected> {
        self.calls.get(&id)?.collected.as_ref()
    }

    /// A key press from the caller while a menu listens.
    pub(super) fn on_caller_digit(&mut self, call: &mut Call, key: char, now: Instant) {
        if let Some(done) = call.digits.as_mut().and_then(|d| d.push(key, now)) {
            self.digits_collected(call, done, now);
        }
        self.schedule(call);
    }

    pub(super) fn digits_collected(&mut self, call: &mut Call, done: Collected, now: Instant) {
        tracing::info!(call = call.id, digits = %done.digits, ended = ?done.ended, "caller input collected");
        call.digits = None;
        if let Some(stream) = call.media.first_stream() {
            self.media.report_dtmf(stream, MediaSide::A, false);
        }
        if let Some(code) = call.challenge.take() {
            self.stop_prompt(call);
            if done.digits == code {
                tracing::info!(call = call.id, caller = %call.caller, "screening challenge passed");
                self.out
                    .push_back(Output::ChallengePassed { call: call.id });
                return self.run_program(call, now);
            }
            tracing::info!(call = call.id, caller = %call.caller, keyed = done.digits.len(), "screening challenge failed");
            return self.block(call, &crate::screening::Verdict::decline(), false, now);
        }
        if let Some(choices) = call.menu.take() {
            // A dialplan menu: the chosen rule's actions replace what was left; no or an
            // unknown key goes on with the next action.
            self.stop_prompt(call);
            let chosen = done
                .digits
                .chars()
                .next()
                .and_then(|key| choices.iter().find(|(k, _)| *k == key))
                .and_then(|(_, rule)| self.dialplan.rule(rule).cloned());
            if let (Some(rule), Some(program)) = (chosen, call.program.as_mut()) {
                tracing::info!(call = call.id, rule = %rule.name, "menu choice");
                program.rule = rule.name;
                program.actions = rule.actions;
                program.next = 0;
            }
            call.collected = Some(done);
            return self.run_program(call, now);
        }
        call.collected = Some(done);
    }

    /// A party pressed a key as RFC 4733 events: a listening menu takes the caller's; else
    /// a party that takes no events gets it as SIP INFO (application/dtmf-relay).
    pub(super) fn on_rtp_dtmf(
        &mut self,
        stream: StreamId,
        side: MediaSide,
        digit: Digit,
        now: Instant,
    ) {
        let from = match side {
            MediaSide::A => Side::A,
            MediaSide::B => Side::B,
        };
        let Some(id) = self
            .calls
            .values()
            .find(|c| c.media.contains(stream))
            .map(|c| c.id)
        else {
            return;
        };
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        self.report(Some(id), || crate::events::What::Dtmf {
            side: from.name(),
            key: digit.key,
        });
        if from == Side::A && call.digits.is_some() {
            self.on_caller_digit(&mut call, digit.key, now);
        } else if matches!(call.state, State::Confirmed | State::Answered)
            // Reported only because a menu listened: the far side had it in RTP.
            && call.media.events_toward(from.other()).is_some()
            && let Some((mut info, dest)) =
                self.side_request(&mut call, from.other(), Method::Info, None)
        {
            info.set_body(
                Bytes::from(dtmf_relay::body(digit.key, digit.duration)),
                Some(dtmf_relay::CONTENT_TYPE),
            );
            tracing::debug!(call = id, key = %digit.key, to = from.other().name(), "DTMF as SIP INFO");
            self.send_in_dialog(info, dest, ClientPurpose::Untracked, now);
        }
        self.finish_or_keep(call);
    }
}

//! Prompts to the caller: failure announcements, prompts as early media or after Warden
//! answered, music on hold, and what follows when a prompt ends.

use std::time::{Duration, Instant};

use warden_media::codec::FormatParams;
use warden_media::{MediaEvent, Playback, Side as MediaSide, StreamId};

use bytes::Bytes;

use crate::anchor::negotiate::Role;
use crate::anchor::{Receiving, media_side, precondition};
use crate::call::{AfterPrompt, Call, Side, State};
use crate::sip::message::{Request, Response};
use crate::sip::transaction::TxKey;

use super::Core;

impl Core {
    /// The caller's UPDATE while Warden plays it early media (no callee in an early
    /// dialog): answered by Warden with its own description, on the caller's new offer
    /// (preconditions: the caller saying its resources are ready, RFC 3312).
    pub(super) fn on_caller_early_update(
        &mut self,
        call: &mut Call,
        key: TxKey,
        req: Request,
        now: Instant,
    ) {
        let content_type = req.header("Content-Type");
        let offered = self.anchor(
            &mut call.media,
            Side::A,
            req.body(),
            content_type.as_deref(),
            Role::Offer,
        );
        if let Err(e) = offered {
            self.refuse_media(&key, &req, e, now);
            return;
        }
        let listen = call.digits.is_some();
        let Some(plan) = call.media.answer_caller(&mut *self.media, call.id, listen) else {
            let why = Some("nothing in the offer Warden can play");
            let tag = call.a.local_tag.clone();
            return self.respond_warning(&key, &req, 488, Some(&tag), why, now);
        };
        call.early_updates += 1;
        let sdp = precondition::with_version(&plan.sdp, 1 + call.early_updates);
        let mut ok = Response::to_request(&req, 200, self.phrase(200));
        let _ = ok.push_header("Contact", &self.contact(call.a.dest.transport));
        ok.set_body(Bytes::from(sdp), Some("application/sdp"));
        self.tx.respond(&key, ok, now);
    }

    /// Play the caller the announcement for `status` as early media (183 with Warden's own
    /// SDP answer), when configured and possible; the failure is sent when it ends.
    pub(super) fn announce(
        &mut self,
        call: &mut Call,
        status: u16,
        reason: &str,
        now: Instant,
    ) -> bool {
        let name = match status {
            404 | 410 | 480 => "user_unavailable",
            486 | 600 => "busy",
            _ => return false,
        };
        if !self.config.calls.announce_failures
            || !self.play_to_caller(call, &[name], 0, false, now)
        {
            return false;
        }
        tracing::info!(call = call.id, caller = %call.caller, status, prompt = name, "announcing before the failure");
        call.announcing = Some(AfterPrompt::Fail(status, reason.to_owned()));
        true
    }

    /// How long the prompt `name` plays (zero when unknown).
    pub(super) fn prompt_length(&mut self, name: &str) -> Duration {
        // Any codec measures it: the frames are 20 ms whatever the encoding.
        warden_media::codec::by_name("PCMU", 8000)
            .and_then(|pcmu| self.prompts.encoded(name, pcmu, &FormatParams::default()))
            .map_or(Duration::ZERO, |p| {
                Duration::from_millis(p.frames.len() as u64 * 20)
            })
    }

    /// Play the prompts `names` (back to back) to the caller as early media: 183 with
    /// Warden's own SDP answer (the caller's first codec Warden can encode), `repeat` more
    /// times, stopped by a key when `barge_in`. False when it cannot (no offer, no playable
    /// codec, no such prompt).
    pub(super) fn play_to_caller(
        &mut self,
        call: &mut Call,
        names: &[&str],
        repeat: u32,
        barge_in: bool,
        now: Instant,
    ) -> bool {
        let listen = barge_in || call.answered_by_warden;
        let Some(plan) = call.media.answer_caller(&mut *self.media, call.id, listen) else {
            return false;
        };
        let name = names.join(" ");
        let Some(prompt) = self.prompts.sequence(names, plan.codec, &plan.params) else {
            tracing::warn!(call = call.id, prompt = %name, "no such prompt; skipped");
            return false;
        };
        let seconds = prompt.frames.len() as u64 * u64::from(repeat + 1) / 50;
        if call.state == State::Calling {
            let progress = self.caller_response(call, 183, self.phrase(183), Some(plan.sdp));
            self.provisional_to_a(call, progress, now);
        }
        self.media.play(
            plan.stream,
            MediaSide::A,
            prompt,
            Playback {
                payload_type: plan.payload_type,
                repeat,
                stop_on_dtmf: barge_in,
            },
        );
        tracing::info!(call = call.id, caller = %call.caller, prompt = %name, codec = plan.codec.name, "playing to the caller");
        // Should the relay never report the end, the call still goes on.
        call.ring_until = Some(now + Duration::from_secs(seconds + 3));
        true
    }

    /// One party put the call on hold (`on`) or took it off: `listener`, the other party,
    /// hears the route's music on hold, looped, until then (its own party's packets toward
    /// it are held back meanwhile by the relay).
    pub(super) fn hold_music(&mut self, call: &mut Call, listener: Side, on: bool) {
        let Some(Receiving {
            stream,
            codec,
            params,
            payload_type,
        }) = call.media.receiving(listener)
        else {
            return;
        };
        if !on {
            self.media.stop_playing(stream, media_side(listener));
            tracing::info!(
                call = call.id,
                held = listener.name(),
                "call resumed; music on hold stops"
            );
            return;
        }
        let name = call
            .hold_music
            .clone()
            .unwrap_or_else(|| self.config.media.hold_music.clone());
        if name.is_empty() {
            return;
        }
        let Some(prompt) = self.prompts.sequence(&[&name], codec, &params) else {
            tracing::warn!(call = call.id, prompt = %name, "no such prompt for music on hold");
            return;
        };
        let how = Playback {
            payload_type,
            repeat: u32::MAX,
            stop_on_dtmf: false,
        };
        self.media.play(stream, media_side(listener), prompt, how);
        tracing::info!(call = call.id, held = listener.name(), prompt = %name, codec = codec.name, "call on hold; playing music on hold");
    }

    /// The announcement is over (played out, or its deadline passed): send the failure, or
    /// go on with the dialplan.
    pub(super) fn end_announcement(&mut self, call: &mut Call, now: Instant) {
        match call.announcing.take() {
            Some(AfterPrompt::Fail(status, reason)) => {
                call.ring_until = None;
                self.decline(call, status, &reason, now);
                call.state = State::Done;
            }
            Some(AfterPrompt::Continue) => {
                call.ring_until = None;
                self.run_program(call, now);
            }
            // A menu keeps listening after its prompt: its digit timeout decides.
            Some(AfterPrompt::Menu) => {
                call.ring_until = None;
                call.announcing = Some(AfterPrompt::Menu);
            }
            None => {}
        }
    }

    /// Something the media relay reported.
    pub(super) fn on_media_event(&mut self, event: MediaEvent, now: Instant) {
        match event {
            MediaEvent::PlaybackDone { stream, .. } => self.on_playback_done(stream, now),
            MediaEvent::Dtmf {
                stream,
                side,
                digit,
            } => self.on_rtp_dtmf(stream, side, digit, now),
        }
    }

    pub(super) fn on_playback_done(&mut self, stream: StreamId, now: Instant) {
        let id = self
            .calls
            .values()
            .find(|c| c.announcing.is_some() && c.media.contains(stream))
            .map(|c| c.id);
        if let Some(mut call) = id.and_then(|id| self.calls.remove(&id)) {
            let _span = call.enter();
            self.end_announcement(&mut call, now);
            self.finish_or_keep(call);
        }
    }
}

//! Conference rooms in the call flow: a caller answered and joined, members' chimes,
//! and leaving when the call ends.

use std::time::Instant;

use warden_media::{LegCodec, Playback, Side as MediaSide};

use crate::call::conference::{self};
use crate::call::{Call, Side, State};

use super::Core;

impl Core {
    /// Answer the caller (unless Warden already has) and put it in conference `room`: it
    /// hears the other members mixed from now on, and every member hears the join chime.
    pub(super) fn join_conference(&mut self, call: &mut Call, room: &str, now: Instant) {
        if !call.answered_by_warden && !self.answer_itself(call, now) {
            tracing::warn!(
                call = call.id,
                room,
                "conference: the caller offered nothing Warden can mix"
            );
            let reason = self.phrase(488).to_owned();
            self.decline(call, 488, &reason, now);
            call.state = State::Done;
            return;
        }
        let Some(plan) = call.media.answer_caller(&mut *self.media, call.id, true) else {
            return;
        };
        let member = conference::Member {
            call: call.id,
            stream: plan.stream,
            side: MediaSide::A,
            codec: plan.codec,
            params: plan.params,
            payload_type: plan.payload_type,
        };
        if !self.join_room(call, room, member) {
            call.note_end("warden", "media failure");
            self.send_bye(call, Side::A, now);
        }
    }

    /// Put the party `member` describes (a side of one of the call's relay streams) in
    /// `room`; everyone there hears the join chime. False when the relay could not.
    pub(super) fn join_room(
        &mut self,
        call: &mut Call,
        room: &str,
        member: conference::Member,
    ) -> bool {
        let leg = LegCodec {
            codec: member.codec,
            payload_type: member.payload_type,
            params: member.params,
            ptime: 20,
            dtmf_payload_type: None,
            cn_payload_type: None,
        };
        let number = self.rooms.lock().join(room, member);
        if !self.media.join(member.stream, member.side, number, leg) {
            tracing::error!(
                call = call.id,
                room,
                "conference: the relay could not take the stream"
            );
            self.rooms.lock().leave(room, call.id);
            return false;
        }
        call.record.conference = Some(room.to_owned());
        self.emit_record(call);
        self.start_recording_if_ready(call);
        self.report(Some(call.id), || crate::events::What::ConferenceJoined {
            room: room.to_owned(),
        });
        let members = self.rooms.lock().members(room).to_vec();
        tracing::info!(call = call.id, caller = %call.caller, room, members = members.len(), codec = member.codec.name, "joined the conference");
        let chime = self.config.media.conference_join.clone();
        self.chime(&members, &chime);
        true
    }

    /// The call is over: out of its conference room, and the members left hear the leave
    /// chime.
    pub(super) fn leave_conference(&mut self, call: &Call) {
        let Some(room) = call.record.conference.as_deref() else {
            return;
        };
        let members = self.rooms.lock().leave(room, call.id);
        tracing::info!(
            call = call.id,
            room,
            members = members.len(),
            "left the conference"
        );
        let chime = self.config.media.conference_leave.clone();
        self.chime(&members, &chime);
        self.report(Some(call.id), || crate::events::What::ConferenceLeft {
            room: room.to_owned(),
        });
    }

    /// Play prompt `name` once to every one of `members` ("" plays nothing).
    pub(super) fn chime(&mut self, members: &[conference::Member], name: &str) {
        if name.is_empty() {
            return;
        }
        for m in members {
            if let Some(prompt) = self.prompts.sequence(&[name], m.codec, &m.params) {
                let how = Playback {
                    payload_type: m.payload_type,
                    repeat: 0,
                    stop_on_dtmf: false,
                };
                self.media.play(m.stream, m.side, prompt, how);
            }
        }
    }
}

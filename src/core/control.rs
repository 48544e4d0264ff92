//! Live control of a call by the admin API (`POST /calls/{id}/...`): a prompt played to
//! one party or both, keys sent to a party, and a blind transfer of one party's place.
//! Hanging up is `Core::hang_up` (`ending`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use warden_media::Playback;
use warden_media::record::{Format, Layout};

use crate::anchor::{Receiving, media_side};
use crate::call::{Call, KeysOut, Side, State, Transfer};
use crate::events::What;
use crate::sip::message::Uri;

use super::Core;

/// What the API asks of a live call.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Control {
    /// Play prompt `prompt` to `side` ("caller", "callee" or "both", the default): in
    /// place of what the other party says, until it ends.
    Play {
        prompt: String,
        #[serde(default)]
        side: Party,
    },
    /// Send `digits` (0-9, *, #, A-D) to `side` as RFC 4733 events.
    Dtmf {
        digits: String,
        #[serde(default = "Party::callee")]
        side: Party,
    },
    /// Blind transfer: `target` (a number the dialplan routes, as a REFER's would be)
    /// takes `replace`'s place ("callee" by default); the other party stays.
    Transfer {
        target: String,
        #[serde(default = "Party::callee")]
        replace: Party,
    },
    /// Record the call (in `layout`, or `recording.layout`); it starts at once when both
    /// parties' media flows, else when it does.
    Record {
        #[serde(default)]
        layout: Option<LayoutName>,
        /// "wav" or "opus" (Ogg Opus); default `recording.format`.
        #[serde(default)]
        format: Option<FormatName>,
    },
    /// Stop recording: the file is completed and uploaded.
    StopRecording {},
}

/// A recording's layout as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutName {
    Stereo,
    Mono,
}

/// A recording's format as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatName {
    Wav,
    Opus,
}

/// Which party an API command is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    Caller,
    Callee,
    #[default]
    Both,
}

impl Party {
    fn callee() -> Party {
        Party::Callee
    }

    fn sides(self) -> &'static [Side] {
        match self {
            Party::Caller => &[Side::A],
            Party::Callee => &[Side::B],
            Party::Both => &[Side::A, Side::B],
        }
    }
}

/// How long each key sounds, and the pause before the next.
const KEY_TONE: Duration = Duration::from_millis(100);
const KEY_GAP: Duration = Duration::from_millis(100);

impl Core {
    /// Carry out `control` on call `id`; the answer says what was done, or why not
    /// ("not found: ..." for no such call).
    pub fn control(
        &mut self,
        id: u64,
        control: Control,
        now: Instant,
    ) -> Result<serde_json::Value, String> {
        self.clock = self.clock.max(now);
        let Some(mut call) = self.calls.remove(&id) else {
            return Err(format!("not found: no live call {id}\n"));
        };
        let _span = call.enter();
        let answered = matches!(call.state, State::Answered | State::Confirmed);
        let answer = if let Control::Record { layout, format } = control {
            // Asked for while the call rings, it starts on the answer.
            let layout = match layout {
                Some(LayoutName::Stereo) => Layout::Stereo,
                Some(LayoutName::Mono) => Layout::Mono,
                None => self.config.recording.layout,
            };
            let format = match format {
                Some(FormatName::Wav) => Format::Wav,
                Some(FormatName::Opus) => Format::OggOpus,
                None => self.config.recording.format,
            };
            if format.available() {
                self.want_recording(&mut call, layout, format);
                Ok(serde_json::json!({
                    "call": call.id.to_string(),
                    "recording": call.record.recording.clone().unwrap_or_default(),
                    "started": matches!(call.recording, Some(crate::call::Recording::Running)),
                }))
            } else {
                Err("bad request: format opus: this build has no Opus encoder (--features native-codecs)\n".into())
            }
        } else if let Control::StopRecording {} = control {
            match self.stop_recording(&mut call) {
                true => {
                    Ok(serde_json::json!({ "call": call.id.to_string(), "recording": "stopped" }))
                }
                false => Err(format!("conflict: call {id} is not being recorded\n")),
            }
        } else if !answered {
            Err(format!("conflict: call {id} is not answered yet\n"))
        } else {
            match control {
                Control::Play { prompt, side } => self.play_to(&mut call, &prompt, side),
                Control::Dtmf { digits, side } => self.send_keys(&mut call, &digits, side, now),
                Control::Transfer { target, replace } => {
                    self.transfer_by_api(&mut call, &target, replace, now)
                }
                Control::Record { .. } | Control::StopRecording {} => Ok(serde_json::Value::Null),
            }
        };
        self.schedule(&call);
        drop(_span);
        self.finish_or_keep(call);
        self.drain(now, self.unix_s());
        answer
    }

    fn play_to(
        &mut self,
        call: &mut Call,
        name: &str,
        party: Party,
    ) -> Result<serde_json::Value, String> {
        if !self.prompts.contains(name) {
            return Err(format!("not found: no prompt {name}\n"));
        }
        let mut played = Vec::new();
        for &side in party.sides() {
            if call.left == Some(side) {
                continue;
            }
            let Some(Receiving {
                stream,
                codec,
                params,
                payload_type,
            }) = call.media.receiving(side)
            else {
                continue;
            };
            let Some(prompt) = self.prompts.sequence(&[name], codec, &params) else {
                continue;
            };
            let how = Playback {
                payload_type,
                repeat: 0,
                stop_on_dtmf: false,
            };
            self.media.play(stream, media_side(side), prompt, how);
            tracing::info!(
                call = call.id,
                side = side.name(),
                prompt = name,
                codec = codec.name,
                "playing a prompt the API asked for"
            );
            self.report(Some(call.id), || What::Playing {
                side: side.name(),
                prompt: name.to_owned(),
            });
            played.push(side.name());
        }
        if played.is_empty() {
            return Err(format!(
                "conflict: call {} has no party with media to play to\n",
                call.id
            ));
        }
        Ok(serde_json::json!({ "call": call.id.to_string(), "playing": name, "to": played }))
    }

    fn send_keys(
        &mut self,
        call: &mut Call,
        digits: &str,
        party: Party,
        now: Instant,
    ) -> Result<serde_json::Value, String> {
        let to = match party {
            Party::Caller => Side::A,
            Party::Callee => Side::B,
            Party::Both => {
                return Err("bad request: keys go to one side: caller or callee\n".into());
            }
        };
        if let Some(bad) = digits
            .chars()
            .find(|c| !"0123456789*#ABCD".contains(c.to_ascii_uppercase()))
        {
            return Err(format!(
                "bad request: digits: {bad:?} is no DTMF key (0-9, *, #, A-D)\n"
            ));
        }
        let keys: VecDeque<char> = digits.chars().map(|c| c.to_ascii_uppercase()).collect();
        if keys.is_empty() || keys.len() > 64 {
            return Err("bad request: digits: 1 to 64 keys\n".into());
        }
        if call.media.receiving(to).is_none() {
            return Err(format!(
                "conflict: the {} has no media to send keys to\n",
                to.name()
            ));
        }
        if call.keys_out.is_some() {
            return Err(format!(
                "conflict: keys are still being sent on call {}\n",
                call.id
            ));
        }
        let count = keys.len();
        call.keys_out = Some(Box::new(KeysOut {
            to,
            keys,
            next: now,
        }));
        self.send_due_keys(call, now);
        Ok(serde_json::json!({ "call": call.id.to_string(), "sending": count, "to": to.name() }))
    }

    /// The next key the API asked to send, when its time has come.
    pub(super) fn send_due_keys(&mut self, call: &mut Call, now: Instant) {
        let Some(out) = call.keys_out.as_mut().filter(|k| k.next <= now) else {
            return;
        };
        let to = out.to;
        let key = out.keys.pop_front();
        out.next = now + KEY_TONE + KEY_GAP;
        if out.keys.is_empty() {
            call.keys_out = None;
        }
        if let (Some(key), Some(r)) = (key, call.media.receiving(to)) {
            self.media
                .send_dtmf(r.stream, media_side(to), key, KEY_TONE);
        }
    }

    fn transfer_by_api(
        &mut self,
        call: &mut Call,
        target: &str,
        replace: Party,
        now: Instant,
    ) -> Result<serde_json::Value, String> {
        let by = match replace {
            Party::Caller => Side::A,
            Party::Callee => Side::B,
            Party::Both => return Err("bad request: replace: caller or callee\n".into()),
        };
        if call.transfer.is_some() {
            return Err(format!(
                "conflict: call {} is being transferred already\n",
                call.id
            ));
        }
        if call.answered.is_none() || call.answered_by_warden || call.state != State::Confirmed {
            return Err(format!(
                "conflict: only a bridged call can be transferred (call {} is not)\n",
                call.id
            ));
        }
        let host = self.local_host(call.a.dest.transport);
        let uri = match Uri::parse(target) {
            Ok(uri) if uri.is_sip() => uri.to_string(),
            _ => format!("sip:{target}@{host}"),
        };
        let target_user = Uri::parse(&uri)
            .ok()
            .and_then(|u| u.user())
            .unwrap_or_else(|| target.to_owned());
        tracing::info!(call = call.id, replaced = by.name(), target = %uri, "transfer asked by the API");
        call.transfer = Some(Box::new(Transfer {
            by,
            target: uri,
            target_user,
            referrer_gone: false,
            by_api: true,
            branch: None,
            until: None,
            reported: 0,
            route: None,
        }));
        self.transfer_event(call, "requested", None);
        self.route_transfer(call, now);
        Ok(
            serde_json::json!({ "call": call.id.to_string(), "transferring": target, "replacing": by.name() }),
        )
    }
}

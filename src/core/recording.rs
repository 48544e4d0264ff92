//! A call's recording: asked for by the dialplan (`record`) or the API, started once both
//! parties' media flows (the caller left, the callee or the room right), stopped by the
//! API or with the call. The relay writes the file (`warden_media::record`); the server
//! uploads it when it is complete (`crate::recording`).

use warden_media::LegCodec;
use warden_media::record::{Format, Layout, RecordSpec};

use crate::anchor::Receiving;
use crate::call::{Call, Recording, Side};

use super::Core;

impl Core {
    /// Record `call` in `layout` and `format`: now if its media flows, else once it does.
    pub(super) fn want_recording(&mut self, call: &mut Call, layout: Layout, format: Format) {
        if call.recording.is_none() {
            call.recording = Some(Recording::Wanted(layout, format));
        }
        self.start_recording_if_ready(call);
    }

    /// Start the recording a call waits for, once a party on each side has media (or the
    /// caller alone, in a room or hearing Warden): each side's codec as it sends.
    pub(super) fn start_recording_if_ready(&mut self, call: &mut Call) {
        let Some(Recording::Wanted(layout, format)) = call.recording else {
            return;
        };
        let leg = |r: Receiving| LegCodec {
            codec: r.codec,
            payload_type: r.payload_type,
            params: r.params,
            ptime: 20,
            dtmf_payload_type: None,
            cn_payload_type: None,
        };
        let in_room = call.record.conference.is_some();
        let bridged = call.answered.is_some() && !call.answered_by_warden;
        // The caller as Warden answered it, when Warden did and nobody else answered since.
        let a = match bridged {
            true => call.media.receiving(Side::A),
            false => call.media.caller_as_answered(),
        };
        let sides = match (a, call.media.receiving(Side::B)) {
            (Some(a), Some(b)) if bridged => [Some(leg(a)), Some(leg(b))],
            // A room member hears the mix in its own codec: the room is the right side.
            (Some(a), _) if in_room => [Some(leg(a)), Some(leg(a))],
            // Warden answered and will not bridge: the caller alone.
            (Some(a), _) if call.answered_by_warden && !bridges_later(call) => [Some(leg(a)), None],
            _ => return, // not yet: the callee's media is still to come
        };
        let Some(stream) = a.map(|r| r.stream) else {
            return;
        };
        let path =
            self.config
                .recording_dir()
                .join(format!("{}.{}", call.record.id, format.extension()));
        let meta = serde_json::json!({
            "record": call.record.id,
            "call": call.id.to_string(),
            "call_id": call.a.call_id,
            "caller": call.caller,
            "callee": call.callee,
            "instance": self.instance,
            "started_ms": self.unix_ms,
        });
        let spec = RecordSpec {
            path: path.clone(),
            layout,
            format,
            sides,
            meta: meta.to_string(),
        };
        if !self.media.record(stream, spec) {
            tracing::warn!(call = call.id, "recording: the relay could not start it");
            call.recording = None;
            return;
        }
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tracing::info!(call = call.id, file = %file, ?layout, "recording");
        call.recording = Some(Recording::Running);
        call.record.recording = Some(file.clone());
        self.emit_record(call);
        self.report(Some(call.id), || crate::events::What::Recording {
            file,
            recording: true,
        });
    }

    /// Stop the call's recording (its file is completed and uploaded). False when none ran.
    pub(super) fn stop_recording(&mut self, call: &mut Call) -> bool {
        match call.recording.take() {
            Some(Recording::Running) => {
                let caller = call.media.receiving(Side::A);
                let stream = caller.or_else(|| call.media.caller_as_answered());
                if let Some(stream) = stream.map(|r| r.stream) {
                    self.media.stop_recording(stream);
                }
                let file = call.record.recording.clone().unwrap_or_default();
                self.report(Some(call.id), || crate::events::What::Recording {
                    file,
                    recording: false,
                });
                true
            }
            Some(Recording::Wanted(..)) => true,
            None => false,
        }
    }
}

/// Whether the call's dialplan still has a callee to ring (its recording waits for it).
fn bridges_later(call: &Call) -> bool {
    let ringing = call.branches.iter().any(|b| b.final_status.is_none());
    let planned = call.program.as_ref().is_some_and(|p| {
        p.actions
            .get(p.next..)
            .unwrap_or_default()
            .iter()
            .any(|a| matches!(a, crate::dialplan::Action::Bridge { .. }))
    });
    ringing || planned
}

//! Call detail records: begun when a call starts, updated as it rings and answers,
//! closed with how it ended and its media figures (and one for refused INVITEs).

use crate::call::Call;
use crate::cdr::Record;
use crate::sip::message::Request;
use crate::sip::transport::Destination;

use super::{Core, Output};

impl Core {
    /// A record for the call `req` starts (the driver journals it on emit).
    pub(super) fn new_record(&self, req: &Request, from: &Destination) -> Record {
        let caller = req
            .from()
            .map(|f| f.uri.user().unwrap_or_else(|| f.uri.to_string()))
            .unwrap_or_default();
        Record {
            id: crate::cdr::record::new_id(),
            instance: self.instance.clone(),
            boot: self.boot.clone(),
            a_call_id: req.call_id().unwrap_or_default(),
            caller,
            callee: req.uri().user().unwrap_or_default(),
            source: from.addr.to_string(),
            origin: "sip".into(),
            received_ms: self.unix_ms as i64,
            ..Record::default()
        }
    }

    /// An INVITE refused before it became a call still leaves its (closed) record.
    pub(super) fn refused_attempt(
        &mut self,
        req: &Request,
        from: &Destination,
        status: u16,
        why: &str,
        rule: Option<String>,
    ) {
        let base = Record {
            rule,
            ..self.new_record(req, from)
        };
        let record = self.refused_record(base, status, why);
        *self.stats.lock().final_codes.entry(status).or_default() += 1;
        self.out.push_back(Output::Record(Box::new(record)));
    }

    /// `base` closed as refused by Warden with `status` for `why` (a refused INVITE, a
    /// refused MESSAGE).
    pub(super) fn refused_record(&self, base: Record, status: u16, why: &str) -> Record {
        Record {
            rev: 1,
            ended_ms: Some(self.unix_ms as i64),
            final_code: Some(i64::from(status)),
            final_reason: Some(self.phrase(status).to_owned()),
            hangup_side: Some("warden".into()),
            end_reason: Some(why.to_owned()),
            ..base
        }
    }

    /// Tell the event stream a call began (`origin`: "sip" or "api").
    pub(super) fn report_started(&mut self, call: &Call, origin: &'static str) {
        self.report(Some(call.id), || crate::events::What::CallStarted {
            record: call.record.id.clone(),
            caller: call.caller.clone(),
            callee: call.callee.clone(),
            origin,
            rule: call.record.rule.clone(),
        });
    }

    /// Hand out the call's record as it stands now.
    pub(super) fn emit_record(&mut self, call: &mut Call) {
        call.record.rev += 1;
        self.out
            .push_back(Output::Record(Box::new(call.record.clone())));
    }

    /// The call is answered (by a callee with `status`, or by Warden itself).
    pub(super) fn answered_record(&mut self, call: &mut Call, status: u16, reason: &str) {
        call.forget_end(); // what ended earlier attempts does not end the call
        call.record.answered_ms = Some(self.unix_ms as i64);
        call.set_final(status, reason);
        self.emit_record(call);
    }

    /// The call is over: close its record with how it ended and its media figures.
    pub(super) fn ended_record(&mut self, call: &mut Call) {
        let ended_by = call.ended_by();
        let r = &mut call.record;
        let ended = self.unix_ms as i64;
        r.ended_ms = Some(ended);
        r.duration_ms = r.answered_ms.map(|a| (ended - a).max(0));
        let (by, why) = ended_by.unwrap_or(match r.answered_ms {
            Some(_) => ("warden", "normal"),
            None => ("warden", "rejected"),
        });
        r.hangup_side = Some(by.to_owned());
        r.end_reason = Some(why.to_owned());
        r.tags = call.tags.join(",");
        if call.media.has_streams() {
            let m = call.media.summary(&*self.media);
            for (packets, lost, jitter, leg) in [
                (
                    &mut r.a_packets,
                    &mut r.a_lost,
                    &mut r.a_jitter_us,
                    m.caller,
                ),
                (
                    &mut r.b_packets,
                    &mut r.b_lost,
                    &mut r.b_jitter_us,
                    m.callee,
                ),
            ] {
                *packets = Some(leg.rtp_packets as i64);
                *lost = Some(leg.lost as i64);
                *jitter = Some(leg.jitter_us as i64);
            }
            if let Some((a, b, transcoded)) = call.media.codecs() {
                (r.a_codec, r.b_codec, r.transcoded) = (Some(a), Some(b), transcoded);
            }
        }
        let code = r.final_code.unwrap_or(0).clamp(0, 999) as u16;
        *self.stats.lock().final_codes.entry(code).or_default() += 1;
        self.emit_record(call);
        let record = &call.record;
        self.report(Some(call.id), || crate::events::What::Ended {
            record: Box::new(record.clone()),
        });
    }
}

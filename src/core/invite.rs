//! A new call: an initial INVITE checked, admitted (limits, shutdown, dialplan), its
//! offer anchored, and the call created and handed to its dialplan program.

use std::time::Instant;

use crate::anchor::MediaSession;
use crate::anchor::negotiate::Role;
use crate::call::{Call, Invited, Leg, Program, Side, new_tag};
use crate::cdr::Record;
use crate::dialplan::{CallFacts, SessionCase};
use crate::sip::message::{NameAddr, Request, Response, Uri};
use crate::sip::transaction::TxKey;
use crate::sip::transport::Destination;

use super::Core;
use crate::sip::dialog::{route_set, strip_tag};

impl Core {
    pub(super) fn on_invite(
        &mut self,
        key: TxKey,
        req: Request,
        from: Destination,
        now: Instant,
        unix_s: u64,
    ) {
        if req.max_forwards() == Some(0) {
            return self.respond(&key, &req, 483, None, now);
        }
        let emergency = self.is_emergency(&req);
        if !emergency && self.refused_untrusted_sender(&key, &req, &from, now) {
            return;
        }
        // 100 Trying at once: the caller stops retransmitting while we look the callee up.
        self.respond(&key, &req, 100, None, now);
        let callee = req.uri().user().unwrap_or_default();
        let (Some(from_hdr), Some(_), Some(call_id)) = (req.from(), req.to(), req.call_id()) else {
            return self.respond(&key, &req, 400, None, now);
        };
        let caller = from_hdr
            .uri
            .user()
            .unwrap_or_else(|| from_hdr.uri.to_string());
        if self.refused_short_session(&key, &req, now) {
            return self.refused_attempt(&req, &from, 422, "session interval too small", None);
        }
        if emergency {
            tracing::warn!(%caller, %callee, "emergency call: limits, screening and shutdown do not apply");
        }
        if let Some(retry_after) = self.draining.filter(|_| !emergency) {
            tracing::info!(%caller, %callee, "shutting down; new call refused with 503");
            let mut resp = Response::to_request(&req, 503, self.phrase(503));
            resp.set_to_tag(&new_tag());
            let _ = resp.push_header("Retry-After", &retry_after.to_string());
            self.tx.respond(&key, resp, now);
            return self.refused_attempt(&req, &from, 503, "shutdown", None);
        }
        if let Some(why) = self.records_failing.clone().filter(|_| !emergency) {
            tracing::warn!(%caller, %callee, reason = %why, "call records cannot be kept; new call refused with 503");
            let warning = format!("call records cannot be kept: {why}");
            self.respond_warning(&key, &req, 503, None, Some(&warning), now);
            return self.refused_attempt(&req, &from, 503, "records unavailable", None);
        }
        if self.calls.len() >= self.config.calls.max_calls && !emergency {
            tracing::warn!(
                limit = self.config.calls.max_calls,
                "call limit reached; refusing with 503"
            );
            self.respond(&key, &req, 503, None, now);
            return self.refused_attempt(&req, &from, 503, "call limit", None);
        }
        let origin = self.origin(&req, &from);
        if !emergency && !self.guard.lock().admit_call(origin) {
            tracing::warn!(source = %origin, limit = self.config.guard.max_calls_per_source, "calls per source limit reached; refusing with 503");
            self.respond(&key, &req, 503, None, now);
            return self.refused_attempt(&req, &from, 503, "source call limit", None);
        }
        let facts = self.call_facts(&req, &from, unix_s);
        let Some(decision) = self.dialplan.evaluate(&facts) else {
            tracing::info!(%caller, %callee, "no dialplan rule matches the call; 404");
            self.respond(&key, &req, 404, None, now);
            return self.refused_attempt(&req, &from, 404, "no route", None);
        };
        let program = Program {
            rule: decision.rule.name.clone(),
            actions: decision.rule.actions.clone(),
            next: 0,
            values: decision.values,
            bridge: None,
        };
        let mut media = MediaSession::default();
        media.set_srtp_policy(Side::B, self.config.media.srtp);
        let content_type = req.header("Content-Type");
        let offer = match self.anchor(
            &mut media,
            Side::A,
            req.body(),
            content_type.as_deref(),
            Role::Offer,
        ) {
            Ok(body) => body,
            Err(e) => {
                let status = self.refuse_media(&key, &req, e, now);
                let rule = program.rule.clone();
                return self.refused_attempt(&req, &from, status, "media refused", Some(rule));
            }
        };
        let id = self.next_call;
        self.next_call += self.shard.count as u64;
        self.stats.lock().calls_started += 1;
        self.guard.lock().call_started(origin, now);
        let a_target = req
            .contact_uri()
            .unwrap_or_else(|| from_hdr.uri.to_string());
        let a = Leg {
            call_id: call_id.clone(),
            local_uri: strip_tag(&req.header("To").unwrap_or_default()),
            local_tag: new_tag(),
            remote_uri: strip_tag(&req.header("From").unwrap_or_default()),
            remote_tag: from_hdr.tag().map(str::to_owned),
            target: a_target,
            // As UAS: the INVITE's Record-Route values, in order (RFC 3261 12.1.1).
            route: route_set(req.address_list("Record-Route"), false),
            cseq: 0,
            dest: from.clone(),
        };
        self.dialogs
            .insert((call_id.clone(), a.local_tag.clone()), (id, Side::A));
        self.server_invites.insert(key.clone(), id);
        let record = Record {
            rule: Some(program.rule.clone()),
            ..self.new_record(&req, &from)
        };
        let rule = program.rule.clone();
        // Boxed: the map of live calls moves 8 bytes per event, not the whole call.
        let mut call = Box::new(Call::new(Invited {
            id,
            a,
            invite: req,
            tx: key,
            caller,
            callee,
            record,
            media,
            program,
            b_offer: offer,
            b_offer_type: content_type,
            source: origin,
            now,
            session_expires: self.config.calls.session_expires_s,
            emergency,
        }));
        self.reliable_toward_caller(&mut call);
        let _span = call.enter();
        tracing::info!(call = id, caller = %call.caller, callee = %call.callee, call_id = %call.a.call_id, %rule, "call started");
        self.emit_record(&mut call);
        self.report_started(&call, "sip");
        self.run_program(&mut call, now);
        self.schedule(&call);
        self.finish_or_keep(call);
    }

    /// A call to an emergency service: `urn:service:sos` (RFC 5031), or a number in
    /// `calls.emergency` as the Request-URI's or To's user (a `+` or the `tel:` form too).
    pub(super) fn is_emergency(&self, req: &Request) -> bool {
        let uri = req.uri().to_string().to_ascii_lowercase();
        if uri.starts_with("urn:service:sos") {
            return true;
        }
        let numbers = [req.uri().user(), req.to().and_then(|t| t.uri.user())];
        numbers.into_iter().flatten().any(|user| {
            let number = user.split(';').next().unwrap_or_default();
            let number = number.trim_start_matches('+');
            self.config.calls.emergency.iter().any(|e| e == number)
        })
    }

    /// What the dialplan's conditions look at, from the INVITE and where it came from.
    pub(super) fn call_facts(&self, req: &Request, from: &Destination, unix_s: u64) -> CallFacts {
        let user_of = |uri: &str| {
            Uri::parse(uri)
                .ok()
                .and_then(|u| u.user())
                .unwrap_or_default()
        };
        let uri_of =
            |header: Option<NameAddr>| header.map(|h| h.uri.to_string()).unwrap_or_default();
        let from_uri = uri_of(req.from());
        let to_uri = uri_of(req.to());
        let caller = user_of(&from_uri);
        let asserted = req
            .address_list("P-Asserted-Identity")
            .ok()
            .and_then(|list| list.into_iter().next())
            .map(|a| a.uri.to_string());
        // The IMS session case: `orig` on the top Route, or P-Served-User's sescase.
        let top_route_orig = req
            .address_list("Route")
            .ok()
            .and_then(|routes| routes.into_iter().next())
            .is_some_and(|top| top.uri.to_string().contains(";orig"));
        let served_user_case = req.header("P-Served-User").and_then(|v| {
            let v = v.to_ascii_lowercase();
            if v.contains("sescase=orig") {
                Some(SessionCase::Originating)
            } else if v.contains("sescase=term") {
                Some(SessionCase::Terminating)
            } else {
                None
            }
        });
        // Only a trusted S-CSCF may say whom Warden serves.
        let trusted = crate::dialplan::in_networks(from.addr.ip(), &self.trusted_scscf);
        let session_case = match (trusted, top_route_orig) {
            (false, _) => None,
            (true, true) => Some(SessionCase::Originating),
            (true, false) => served_user_case.or(Some(SessionCase::Terminating)),
        };
        CallFacts {
            ruri_user: req.uri().user().unwrap_or_default(),
            ruri_host: req.uri().host().unwrap_or_default(),
            from_user: caller.clone(),
            from: from_uri,
            to_user: user_of(&to_uri),
            to: to_uri,
            asserted_identity: asserted,
            headers: req.header_pairs(),
            source: self.origin(req, from),
            transport: from.transport.as_str().to_ascii_lowercase(),
            session_case,
            caller_registered: !self.registrar.lock().lookup(&caller, unix_s).is_empty(),
            emergency: self.is_emergency(req),
            now: jiff::Timestamp::from_second(unix_s as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
        }
    }
}

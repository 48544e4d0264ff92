//! Bridge actions: targets resolved (registrar, literal, DNS, ENUM, the IMS way on),
//! one callee branch per contact, sequential failover and parallel forking.

use std::time::Instant;

use crate::call::{Branch, Call, Leg, Side, State, new_tag};
use crate::dialplan::BridgeMode;
use crate::dns::{Found, Lookup, literal_destination};
use crate::sip::message::{Method, NameAddr, Uri};
use crate::sip::transport::Destination;

use super::messages::with_uri_param;
use super::{ALLOW, ClientPurpose, Core, Output, transfer};
use crate::sip::dialog::{route_set, strip_tag};

impl Core {
    /// Start the next attempt of the call's bridge action: every target at once
    /// (parallel) or the next one that can be reached (sequential). False when nothing
    /// could be started (the failures are noted).
    pub(super) fn try_bridge(&mut self, call: &mut Call, now: Instant) -> bool {
        loop {
            let first_branch = call.branches.len();
            let Some(attempt) = call.bridge_mut() else {
                return false;
            };
            let batch: Vec<String> = match attempt.mode {
                BridgeMode::Parallel => attempt.targets.drain(..).collect(),
                BridgeMode::Sequential => match attempt.targets.get(attempt.next_target) {
                    Some(t) => vec![t.clone()],
                    None => Vec::new(),
                },
            };
            attempt.next_target += 1;
            attempt.first_branch = first_branch;
            attempt.serial = self.next_attempt;
            attempt.pending_lookups = 0;
            self.next_attempt += 1;
            let (timeout, sequential) = (attempt.timeout, attempt.mode == BridgeMode::Sequential);
            if batch.is_empty() {
                return false;
            }
            for target in &batch {
                match self.resolve_target(call, target) {
                    Ok(found) => {
                        for (contact, dest) in found {
                            self.add_branch(call, &contact, dest, now);
                        }
                    }
                    Err(lookup) => {
                        let id = call.id;
                        if let Some(a) = call.bridge_mut() {
                            a.pending_lookups += 1;
                            self.out.push_back(Output::Resolve {
                                call: id,
                                attempt: a.serial,
                                lookup,
                            });
                        }
                    }
                }
            }
            let started = call
                .bridge()
                .is_some_and(|a| call.branches.len() > a.first_branch || a.pending_lookups > 0);
            if started {
                call.ring_until = Some(now + timeout);
                return true;
            }
            if !sequential {
                return false;
            }
        }
    }

    /// Where a bridge target rings: `user:NAME` is every contact NAME has registered; a
    /// SIP URI with an IP address goes there directly. Failures are noted on the call.
    pub(super) fn resolve_target(
        &mut self,
        call: &mut Call,
        target: &str,
    ) -> Result<Vec<Found>, Lookup> {
        if target == "ims" {
            return self.ims_target(call);
        }
        if let Some(number) = target.strip_prefix("enum:") {
            return Err(Lookup::Enum {
                number: number.to_owned(),
            });
        }
        if let Some(user) = target.strip_prefix("user:") {
            let contacts = self.user_contacts(user).unwrap_or_else(|status| {
                tracing::info!(
                    call = call.id,
                    target,
                    status,
                    "bridge target not reachable"
                );
                call.note_failure(status, self.phrase(status));
                Vec::new()
            });
            let mut found = Vec::with_capacity(contacts.len());
            for ((contact, dest), route) in contacts {
                if !route.is_empty() {
                    call.contact_routes.push((contact.clone(), route));
                }
                found.push((contact, dest));
            }
            return Ok(found);
        }
        if let Some(dest) = literal_destination(target) {
            if self.gateways.lock().is_down(dest.addr) {
                tracing::info!(call = call.id, target, "gateway down (probing): skipped");
                call.note_failure(503, self.phrase(503));
                return Ok(Vec::new());
            }
            return Ok(vec![(target.to_owned(), dest)]);
        }
        if Uri::parse(target).is_ok_and(|u| u.is_sip()) {
            return Err(Lookup::Host {
                uri: target.to_owned(),
            });
        }
        tracing::warn!(
            call = call.id,
            target,
            "bridge target is not user:, enum:, ims or a SIP URI; skipped"
        );
        call.note_failure(502, self.phrase(502));
        Ok(Vec::new())
    }

    /// Every contact `user` has registered that this node can reach, with the Route set
    /// to reach it by (its Path), or why there is none: 480 for a known user, 404 for an
    /// unknown one.
    pub(super) fn user_contacts(&self, user: &str) -> Result<Vec<(Found, Vec<String>)>, u16> {
        let bindings: Vec<(Found, Vec<String>)> = self
            .registrar
            .lock()
            .lookup(user, self.unix_s())
            .into_iter()
            .filter_map(|b| {
                let reach = b.reach()?;
                Some(((b.contact.clone(), reach.dest), reach.route))
            })
            .collect();
        match (bindings.is_empty(), self.registrar.lock().knows(user)) {
            (false, _) => Ok(bindings),
            (true, true) => Err(480),
            (true, false) => Err(404),
        }
    }

    /// The driver's answer to an `Output::Resolve`: ring what it found, if the bridge
    /// attempt that asked is still the current one.
    pub(super) fn on_resolved(&mut self, id: u64, attempt: u64, found: Vec<Found>, now: Instant) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.enter();
        let current = call.bridge_mut().filter(|a| a.serial == attempt);
        if let Some(a) = current {
            a.pending_lookups = a.pending_lookups.saturating_sub(1);
            if found.is_empty() {
                call.note_failure(404, self.phrase(404));
            }
            // One branch per URI; its further destinations wait as its fallbacks.
            let mut by_uri: Vec<(String, Vec<Destination>)> = Vec::new();
            for (contact, dest) in found {
                match by_uri.iter_mut().find(|(uri, _)| *uri == contact) {
                    Some((_, dests)) => dests.push(dest),
                    None => by_uri.push((contact, vec![dest])),
                }
            }
            for (contact, mut dests) in by_uri {
                let first = dests.remove(0);
                let index = call.branches.len();
                self.add_branch(&mut call, &contact, first, now);
                if let Some(b) = call.branches.get_mut(index) {
                    b.fallbacks = dests;
                }
            }
            self.end_if_every_branch_failed(&mut call, now);
            self.schedule(&call);
        } else if call.abandoned && call.state == State::Calling && call.all_branches_final() {
            call.state = State::Done; // cancelled while the lookup ran: nothing else will end it
        }
        self.finish_or_keep(call);
    }

    /// The IMS way on (3GPP TS 24.229 5.7.5, AS as B2BUA): the initial request goes back to
    /// the S-CSCF along the Route set it came with, minus Warden's own entry on top (the
    /// S-CSCF's entry keeps its original dialog identifier), to the same Request-URI, with
    /// P-Charging-Vector (its ICID) and P-Asserted-Identity carried across.
    pub(super) fn ims_target(&mut self, call: &mut Call) -> Result<Vec<Found>, Lookup> {
        let req = &call.a_invite;
        let trusted = crate::dialplan::in_networks(call.a.dest.addr.ip(), &self.trusted_scscf);
        // Every Route entry after Warden's own, parsed like any Route set.
        let next_hops: Vec<NameAddr> = req
            .address_list("Route")
            .unwrap_or_default()
            .into_iter()
            .skip(1)
            .collect();
        let Some(hop) = next_hops
            .first()
            .map(|h| h.uri.to_string())
            .filter(|_| trusted)
        else {
            tracing::warn!(
                call = call.id,
                trusted,
                routes = next_hops.len(),
                "bridge to ims: not from a trusted S-CSCF, or no Route to go on along"
            );
            call.note_failure(403, self.phrase(403));
            return Ok(Vec::new());
        };
        for name in ["P-Charging-Vector", "P-Asserted-Identity"] {
            if let Some(value) = req.header(name)
                && !call
                    .b_headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                call.b_headers.push((name.to_owned(), Some(value)));
            }
        }
        let uri = req.uri().to_string();
        call.b_route = route_set(Ok(next_hops), false);
        match literal_destination(&hop) {
            Some(dest) => Ok(vec![(uri, dest)]),
            // An S-CSCF named in the Route: located by RFC 3263, the Request-URI kept.
            None => Err(Lookup::Route {
                next_hop: hop,
                request_uri: uri,
            }),
        }
    }

    /// Send the callee-side INVITE of a new branch toward `contact` at `dest`.
    pub(super) fn add_branch(
        &mut self,
        call: &mut Call,
        contact: &str,
        dest: Destination,
        now: Instant,
    ) {
        let req = &call.a_invite;
        let mut leg = Leg {
            call_id: self.new_call_id(),
            local_uri: strip_tag(&req.header("From").unwrap_or_default()),
            local_tag: new_tag(),
            remote_uri: transfer::transfer_to(call)
                .unwrap_or_else(|| strip_tag(&req.header("To").unwrap_or_default())),
            remote_tag: None,
            target: contact.to_owned(),
            route: match call.contact_routes.iter().find(|(c, _)| c == contact) {
                Some((_, path)) => path.clone(),
                None => std::mem::take(&mut call.b_route),
            },
            cseq: 0,
            dest: dest.clone(),
        };
        if let Some(verstat) = call.verstat {
            leg.local_uri = with_uri_param(&leg.local_uri, &format!("verstat={verstat}"));
        }
        let Some(mut invite) = self.leg_request(&mut leg, Method::Invite, None) else {
            return;
        };
        if let (Some(verstat), Some(pai)) = (call.verstat, req.header("P-Asserted-Identity")) {
            let _ = invite.set_header(
                "P-Asserted-Identity",
                &with_uri_param(&pai, &format!("verstat={verstat}")),
            );
        }
        let hops = req.max_forwards().unwrap_or(70).saturating_sub(1);
        let _ = invite.set_header("Max-Forwards", &hops.to_string());
        let _ = invite.push_header("Allow", ALLOW);
        let _ = invite.push_header("Supported", &self.supported_toward_callee(req));
        if req.lists("Require", "precondition") {
            // The caller's QoS preconditions bind the callee too (RFC 3312 14).
            let _ = invite.push_header("Require", "precondition");
        }
        self.session_headers(call, &mut invite);
        for (name, value) in &call.b_headers {
            match value {
                Some(v) => {
                    let _ = invite.set_header(name, v);
                }
                None => {
                    invite.remove_header(name);
                }
            }
        }
        invite.set_body(call.b_offer.clone(), call.b_offer_type.as_deref());
        if !call.b_offer.is_empty() {
            call.media.note_sent(Side::B, &call.b_offer);
        }
        let index = call.branches.len();
        self.dialogs.insert(
            (leg.call_id.clone(), leg.local_tag.clone()),
            (call.id, Side::B),
        );
        let tx = self.tx.send_request(invite.clone(), dest, now);
        if let Some(tx) = &tx {
            self.client.insert(
                tx.clone(),
                ClientPurpose::Invite {
                    call: call.id,
                    branch: index,
                },
            );
        }
        // Most calls ring one contact: a Vec's first growth would hold four branches.
        call.branches.reserve_exact(1);
        call.branches.push(Branch {
            leg,
            invite,
            tx,
            provisional: false,
            final_status: None,
            cancel_pending: false,
            ack: None,
            last_rseq: None,
            prack_owed: None,
            retried_422: false,
            fallbacks: Vec::new(),
        });
    }

    /// Branch `index` timed out or got 503 from a destination its URI was located at
    /// (RFC 3263 4.3): the same URI goes to the next one. False when none is left.
    pub(super) fn fail_over_branch(&mut self, call: &mut Call, index: usize, now: Instant) -> bool {
        let Some(b) = call.branches.get_mut(index) else {
            return false;
        };
        if b.fallbacks.is_empty() || call.abandoned {
            return false;
        }
        let next = b.fallbacks.remove(0);
        let rest = std::mem::take(&mut b.fallbacks);
        let uri = b.invite.uri().to_string();
        // The same Route set as the first attempt (the IMS way on goes along it).
        let route = b.invite.headers("Route");
        call.b_route = route;
        tracing::info!(call = call.id, %uri, next = %next.addr, "no answer there; trying the next destination");
        let new_index = call.branches.len();
        self.add_branch(call, &uri, next, now);
        if let Some(b) = call.branches.get_mut(new_index) {
            b.fallbacks = rest;
        }
        true
    }

    /// A callee's 3xx on a route that follows redirections: its Contacts (at most 5 over
    /// the call, RFC 3261 8.1.3.4) become branches of the bridge attempt in progress,
    /// reached like any bridge target. False when none was followed (the 3xx is then a
    /// failure like any other, relayed with its Contacts if it is the one reported).
    pub(super) fn follow_redirect(
        &mut self,
        call: &mut Call,
        resp: &crate::sip::message::Response,
        now: Instant,
    ) -> bool {
        const MOST_FOLLOWED: usize = 5;
        if call.on_redirect != crate::dialplan::RedirectPolicy::Follow || call.bridge().is_none() {
            return false;
        }
        let contacts: Vec<String> = resp
            .contacts()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| match c {
                crate::sip::message::Contact::Address(a) if a.uri.is_sip() => {
                    Some(a.uri.to_string())
                }
                _ => None,
            })
            .collect();
        let room = MOST_FOLLOWED.saturating_sub(call.redirects_followed);
        let mut followed = false;
        for target in contacts.into_iter().take(room) {
            call.redirects_followed += 1;
            tracing::info!(call = call.id, status = resp.status(), %target, "following the callee's redirection");
            match self.resolve_target(call, &target) {
                Ok(found) => {
                    for (contact, dest) in found {
                        self.add_branch(call, &contact, dest, now);
                        followed = true;
                    }
                }
                Err(lookup) => {
                    let id = call.id;
                    if let Some(a) = call.bridge_mut() {
                        a.pending_lookups += 1;
                        let attempt = a.serial;
                        self.out.push_back(Output::Resolve {
                            call: id,
                            attempt,
                            lookup,
                        });
                        followed = true;
                    }
                }
            }
        }
        followed
    }

    /// The extensions Warden's INVITE to a callee offers: 100rel and timer (as configured),
    /// and precondition when the caller's offer uses them.
    fn supported_toward_callee(&self, caller_invite: &crate::sip::message::Request) -> String {
        let mut tags = Vec::new();
        if self.config.calls.reliable_provisionals {
            tags.push("100rel");
        }
        if self.config.calls.session_expires_s > 0 {
            tags.push("timer");
        }
        if caller_invite.lists("Supported", "precondition")
            && !caller_invite.lists("Require", "precondition")
        {
            tags.push("precondition");
        }
        tags.push("replaces");
        tags.join(", ")
    }

    /// The current bridge attempt failed (every branch final without an answer, or it
    /// rang out): a sequential bridge fails over to its next target on a timeout, an
    /// unreachable target or a 5xx; otherwise the dialplan goes on with its next action.
    pub(super) fn bridge_failed(&mut self, call: &mut Call, now: Instant) {
        let first = call.bridge().map_or(0, |a| a.first_branch);
        let fail_over = call.branches[first.min(call.branches.len())..]
            .iter()
            .all(|b| matches!(b.final_status, None | Some(408 | 480 | 500..=599)));
        let sequential = call
            .bridge()
            .is_some_and(|a| a.mode == BridgeMode::Sequential);
        if sequential && fail_over && self.try_bridge(call, now) {
            return;
        }
        if let Some(p) = call.program.as_mut() {
            p.bridge = None;
        }
        call.ring_until = None;
        self.run_program(call, now);
    }
}

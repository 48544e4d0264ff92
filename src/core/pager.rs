//! Instant messages outside any dialog (RFC 3428, pager mode): a MESSAGE routed by the
//! dialplan to a user's contacts or a SIP target, the first 2xx answering the sender.
//!
//! Each message leaves a closed call record tagged `message` (the same journal and table as
//! calls: one place for an operator to look, and the same crash safety).

use std::collections::HashMap;
use std::time::Instant;

use crate::call::new_tag;
use crate::cdr::Record;
use crate::dialplan::Action;
use crate::dns::literal_destination;
use crate::sip::message::{Method, Request, Response, Uri};
use crate::sip::transaction::TxKey;
use crate::sip::transport::Destination;

use super::{ClientPurpose, Core, Output};

/// A MESSAGE forwarded and waiting for its answers.
#[derive(Debug)]
pub(super) struct Pending {
    server: TxKey,
    request: Request,
    /// Forwarded copies still unanswered.
    outstanding: usize,
    answered: bool,
    best_failure: Option<(u16, String)>,
    record: Record,
}

/// The messages in flight, by number.
#[derive(Debug, Default)]
pub(super) struct Pager {
    pending: HashMap<u64, Pending>,
    next: u64,
}

impl Core {
    pub(super) fn on_message(
        &mut self,
        key: TxKey,
        req: Request,
        from: Destination,
        now: Instant,
        unix_s: u64,
    ) {
        if self.refused_untrusted_sender(&key, &req, &from, now) {
            return;
        }
        let facts = self.call_facts(&req, &from, unix_s);
        let route = self.dialplan.evaluate(&facts).map(|d| {
            let first = d.rule.actions.iter().find_map(|a| match a {
                Action::Bridge { targets, .. } => {
                    Some(Ok(targets.iter().map(|t| t.render(&d.values)).collect()))
                }
                Action::Reject { status, .. } => Some(Err(*status)),
                _ => None,
            });
            (d.rule.name.clone(), first)
        });
        let mut record = Record {
            rev: 1,
            tags: "message".into(),
            ..self.new_record(&req, &from)
        };
        let targets: Vec<String> = match route {
            None => return self.message_refused(&key, &req, record, 404, "no route", now),
            Some((rule, first)) => {
                record.rule = Some(rule);
                match first {
                    Some(Ok(targets)) => targets,
                    Some(Err(status)) => {
                        return self.message_refused(&key, &req, record, status, "rejected", now);
                    }
                    None => {
                        return self.message_refused(&key, &req, record, 404, "no target", now);
                    }
                }
            }
        };
        let mut unreachable = 404;
        // Each copy's target, where it goes and its Route set: a contact registered with
        // a Path is reached along it (RFC 3327), as a call to it is.
        let destinations: Vec<(String, Destination, Vec<String>)> = targets
            .iter()
            .flat_map(|target| match target.strip_prefix("user:") {
                Some(user) => match self.user_contacts(user) {
                    Ok(contacts) => contacts
                        .into_iter()
                        .map(|((contact, dest), route)| (contact, dest, route))
                        .collect(),
                    Err(status) => {
                        if status == 480 {
                            unreachable = 480;
                        }
                        Vec::new()
                    }
                },
                None => literal_destination(target)
                    .map(|d| (target.clone(), d, Vec::new()))
                    .into_iter()
                    .collect(),
            })
            .collect();
        if destinations.is_empty() {
            return self.message_refused(&key, &req, record, unreachable, "unreachable", now);
        }
        let id = self.pager.next;
        self.pager.next += 1;
        let mut outstanding = 0;
        for (contact, dest, route) in destinations {
            if let Some(copy) = self.message_copy(&req, &contact, &dest, &route)
                && let Some(tx) = self.tx.send_request(copy, dest, now)
            {
                self.client.insert(tx, ClientPurpose::Message { id });
                outstanding += 1;
            }
        }
        tracing::info!(from = %record.caller, to = %record.callee, copies = outstanding, "message forwarded");
        self.pager.pending.insert(
            id,
            Pending {
                server: key,
                request: req,
                outstanding,
                answered: false,
                best_failure: None,
                record,
            },
        );
        if outstanding == 0 {
            let reason = self.phrase_or(500, "Could not forward").to_owned();
            self.message_answered(id, 500, &reason, now);
        }
    }

    /// The MESSAGE as Warden sends it on: a transaction of its own toward `contact` along
    /// `route`, the sender's From (a tag of Warden's) and To, the body and its type
    /// unchanged.
    fn message_copy(
        &self,
        req: &Request,
        contact: &str,
        dest: &Destination,
        route: &[String],
    ) -> Option<Request> {
        let uri = Uri::parse(contact).ok()?;
        let from = crate::sip::dialog::strip_tag(&req.header("From")?);
        let hops = req.max_forwards().unwrap_or(70).saturating_sub(1);
        let to = req.header("To")?;
        let stamp = (from.as_str(), to.as_str(), dest.transport, hops);
        let mut copy = self.own_request(Method::Message, &uri, stamp)?;
        let content_type = req.header("Content-Type");
        copy.set_body(req.body().clone(), content_type.as_deref());
        for hop in route {
            copy.push_header("Route", hop).ok()?;
        }
        Some(copy)
    }

    /// One forwarded copy was answered (or timed out, as 408): the first 2xx answers the
    /// sender; when every copy failed, the most meaningful failure does.
    pub(super) fn message_answered(&mut self, id: u64, status: u16, reason: &str, now: Instant) {
        if status < 200 {
            return;
        }
        let Some(mut p) = self.pager.pending.remove(&id) else {
            return;
        };
        p.outstanding = p.outstanding.saturating_sub(1);
        let answer = if p.answered {
            None
        } else if (200..300).contains(&status) {
            Some((status, reason.to_owned()))
        } else {
            let better = p
                .best_failure
                .as_ref()
                .is_none_or(|(s, _)| *s == 408 || (status >= 600 && *s < 600));
            if better {
                p.best_failure = Some((status, reason.to_owned()));
            }
            p.best_failure.clone().filter(|_| p.outstanding == 0)
        };
        if let Some((status, reason)) = answer {
            p.answered = true;
            let mut out = Response::to_request(&p.request, status, &reason);
            out.set_to_tag(&new_tag());
            self.tx.respond(&p.server, out, now);
            let r = &mut p.record;
            r.final_code = Some(i64::from(status));
            r.final_reason = Some(reason);
            r.ended_ms = Some(self.unix_ms as i64);
            r.end_reason = Some(if status < 300 { "delivered" } else { "refused" }.into());
        }
        if p.outstanding == 0 {
            self.out.push_back(Output::Record(Box::new(p.record)));
        } else {
            self.pager.pending.insert(id, p);
        }
    }

    fn message_refused(
        &mut self,
        key: &TxKey,
        req: &Request,
        record: Record,
        status: u16,
        why: &str,
        now: Instant,
    ) {
        tracing::info!(from = %record.caller, to = %record.callee, status, why, "message refused");
        self.respond(key, req, status, None, now);
        let record = self.refused_record(record, status, why);
        self.out.push_back(Output::Record(Box::new(record)));
    }
}

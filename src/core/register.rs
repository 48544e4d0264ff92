//! REGISTER, and the digest check every request from an untrusted source may face:
//! the registrar answers, the core stores its changes and counts failures toward bans.

use std::time::Instant;

use crate::events::What;
use crate::registrar::{AuthKind, Change};
use crate::sip::message::Request;
use crate::sip::transaction::TxKey;
use crate::sip::transport::Destination;

use super::{Core, Output};

impl Core {
    pub(super) fn on_register(
        &mut self,
        key: TxKey,
        req: Request,
        from: Destination,
        unix_s: u64,
        now: Instant,
    ) {
        let user = req.to().and_then(|t| t.uri.user()).unwrap_or_default();
        let needs_auth = self.registrar.lock().register_needs_auth();
        if needs_auth && self.refused_credentials(&key, &req, &user, AuthKind::Register, &from, now)
        {
            return;
        }
        let mut outcome = self.registrar.lock().register(&req, &from, unix_s);
        for change in outcome.changes {
            self.out.push_back(Output::Share(change.clone()));
            self.store(change);
        }
        self.localize(&mut outcome.response);
        self.tx.respond(&key, outcome.response, now);
    }

    /// The cluster connection was (re)made: announce every live binding of this node's
    /// own again, in case Redis restarted empty.
    pub fn share_own_bindings(&mut self) {
        let now_s = self.unix_s();
        let own: Vec<_> = self
            .registrar
            .lock()
            .all(now_s)
            .into_iter()
            .filter(|b| b.node.is_none())
            .cloned()
            .collect();
        for b in own {
            self.out
                .push_back(Output::Share(crate::registrar::Change::Upsert(b)));
        }
    }

    /// Another node's REGISTER changed a binding; a binding of this node's own that gave
    /// way leaves its store.
    pub fn apply_remote_binding(&mut self, node: &str, change: crate::registrar::Change) {
        let dropped = self.registrar.lock().apply_remote(node, change);
        for dropped in dropped {
            self.store(dropped);
        }
    }

    /// A binding of this node's changed: into its store, and told to the event stream.
    pub(super) fn store(&mut self, change: Change) {
        self.report(None, || match &change {
            Change::Upsert(b) => What::Registered {
                user: b.aor.clone(),
                contact: b.contact.clone(),
                expires_at: b.expires_at,
            },
            Change::Remove { aor, contact } => What::Unregistered {
                user: aor.clone(),
                contact: contact.clone(),
            },
        });
        self.out.push_back(Output::Store(change));
    }

    /// A request (INVITE, MESSAGE) from a source outside `calls.trusted` speaks as one of
    /// our users and must prove it is its From user (`calls.auth`): true when it was
    /// challenged or refused instead.
    pub(super) fn refused_untrusted_sender(
        &mut self,
        key: &TxKey,
        req: &Request,
        from: &Destination,
        now: Instant,
    ) -> bool {
        if !self.config.calls.auth
            || crate::dialplan::in_networks(self.origin(req, from), &self.calls_trusted)
        {
            return false;
        }
        let sender = req.from().and_then(|f| f.uri.user()).unwrap_or_default();
        self.refused_credentials(key, req, &sender, AuthKind::Invite, from, now)
    }

    /// Check `req`'s credentials for `user`; when they do not do, answer the challenge or
    /// refusal, count a failure toward the source's ban, and return true.
    pub(super) fn refused_credentials(
        &mut self,
        key: &TxKey,
        req: &Request,
        user: &str,
        kind: AuthKind,
        from: &Destination,
        now: Instant,
    ) -> bool {
        let Err(mut refusal) = self
            .registrar
            .lock()
            .authenticate(req, user, kind, self.unix_s())
        else {
            return false;
        };
        if refusal.failed {
            let origin = self.origin(req, from);
            self.guard.lock().auth_failed(origin, now);
        }
        self.localize(&mut refusal.response);
        self.tx.respond(key, *refusal.response, now);
        true
    }
}

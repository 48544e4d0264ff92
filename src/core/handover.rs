//! A call handed from one signalling shard to another: an attended transfer (REFER with
//! Replaces) whose replaced call another shard holds. The shard with the REFER asks for
//! the call (`Output::HandOver`); the one holding it gives it up with what it knew of it
//! (`hand_over`), after the transport is told to bring its Call-IDs' messages to the new
//! shard; the REFER then goes on as if both calls had always been here (`adopt`).

use std::time::Instant;

use super::{ClientPurpose, Core, Output};
use crate::call::{Call, Side, State};
use crate::sip::message::Request;
use crate::sip::transaction::TxKey;

/// The dialog a Replaces names: Call-ID and the two tags.
pub type Replaced = (String, [String; 2]);

/// A call on its way to another shard, with this shard's entries for it.
pub struct HandedCall {
    call: Box<Call>,
    dialogs: Vec<((String, String), (u64, Side))>,
    wakes: Vec<Instant>,
}

impl HandedCall {
    /// The Call-IDs of the call's dialogs: their messages must follow it.
    pub fn call_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.dialogs.iter().map(|((id, _), _)| id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// A REFER waiting for the call it replaces to come over from another shard.
pub(super) struct AwaitedJoin {
    key: TxKey,
    req: Request,
    by: Side,
    replaces: Replaced,
}

impl Core {
    /// The REFER in `call` replaces a dialog this shard does not hold: when another
    /// shard's Call-IDs hash to it, ask for that call and keep the REFER until it comes.
    /// False when there is nowhere to ask.
    pub(super) fn await_replaced(
        &mut self,
        call: &Call,
        key: &TxKey,
        req: &Request,
        by: Side,
        replaces: &Replaced,
    ) -> bool {
        let lane = crate::shard::of_call_id(&replaces.0, self.shard.count);
        if lane == self.shard.index || self.awaited_joins.contains_key(&call.id) {
            return false;
        }
        tracing::info!(
            call = call.id,
            lane,
            "attended transfer: the replaced call is another shard's; asking for it"
        );
        self.awaited_joins.insert(
            call.id,
            AwaitedJoin {
                key: key.clone(),
                req: req.clone(),
                by,
                replaces: replaces.clone(),
            },
        );
        self.out.push_back(Output::HandOver {
            lane,
            replaces: replaces.clone(),
            for_call: call.id,
        });
        true
    }

    /// Give up the bridged call whose dialog `replaces` names, for another shard; None when
    /// there is no such call, or it is not bridged, or a request of its own is under way.
    pub fn hand_over(&mut self, replaces: &Replaced) -> Option<HandedCall> {
        let (call_id, tags) = replaces;
        let id = tags
            .iter()
            .find_map(|t| self.dialogs.get(&(call_id.clone(), t.clone())))
            .map(|(id, _)| *id)?;
        let busy = self.client.values().any(|p| match p {
            ClientPurpose::Bye { call }
            | ClientPurpose::Relay { call }
            | ClientPurpose::Join { call, .. }
            | ClientPurpose::Refresh { call, .. } => *call == id,
            _ => false,
        });
        if busy
            || self
                .calls
                .get(&id)
                .is_none_or(|c| c.state != State::Confirmed)
        {
            return None;
        }
        let call = self.calls.remove(&id)?;
        let dialogs: Vec<_> = self
            .dialogs
            .iter()
            .filter(|(_, (c, _))| *c == id)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (key, _) in &dialogs {
            self.dialogs.remove(key);
        }
        let wakes: Vec<Instant> = self
            .wakes
            .iter()
            .filter(|(_, c)| *c == id)
            .map(|(t, _)| *t)
            .collect();
        for t in &wakes {
            self.wakes.remove(&(*t, id));
        }
        self.server_invites.remove(&call.a_invite_tx);
        self.client
            .retain(|_, p| !matches!(p, ClientPurpose::Invite { call: c, .. } if *c == id));
        tracing::info!(
            call = id,
            "handed over to another shard for an attended transfer"
        );
        Some(HandedCall {
            call,
            dialogs,
            wakes,
        })
    }

    /// Take `handed` (None: the other shard had no such call to give), then go on with the
    /// REFER of call `for_call` that waited for it.
    pub fn adopt(&mut self, for_call: u64, handed: Option<HandedCall>, now: Instant) {
        self.clock = self.clock.max(now);
        let Some(waiting) = self.awaited_joins.remove(&for_call) else {
            return;
        };
        if let Some(h) = handed {
            for id in h.call_ids() {
                if !self.shard.owns_call_id(&id) {
                    self.pinned.insert(id);
                }
            }
            let id = h.call.id;
            self.dialogs.extend(h.dialogs);
            self.wakes.extend(h.wakes.into_iter().map(|t| (t, id)));
            self.calls.insert(id, h.call);
        }
        match self.calls.remove(&for_call) {
            Some(mut call) => {
                let AwaitedJoin {
                    key,
                    req,
                    by,
                    replaces,
                } = waiting;
                self.attended_transfer(&mut call, &key, &req, by, replaces, now);
                self.finish_or_keep(call);
            }
            None => {
                let tag = waiting.req.to_tag();
                let why = "the transferred call ended meanwhile";
                self.respond_warning(
                    &waiting.key,
                    &waiting.req,
                    481,
                    tag.as_deref(),
                    Some(why),
                    now,
                );
            }
        }
        self.drain(now, self.unix_s());
    }

    /// A forgotten call's Call-IDs that were brought here from another shard, and that no
    /// dialog of this shard uses any more: the transport may route them by hash again.
    pub(super) fn unpin_legs_of(&mut self, call: &Call) {
        if self.pinned.is_empty() {
            return;
        }
        let legs = std::iter::once(&call.a)
            .chain(call.branches.iter().map(|b| &b.leg))
            .chain(&call.former);
        let mut gone = Vec::new();
        for leg in legs {
            let id = &leg.call_id;
            if self.pinned.contains(id) && !self.dialogs.keys().any(|(c, _)| c == id) {
                self.pinned.remove(id);
                gone.push(id.clone());
            }
        }
        if !gone.is_empty() {
            self.out.push_back(Output::Unpin(gone));
        }
    }
}

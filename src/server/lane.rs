//! One signalling shard's own loop (a lane): its core, the messages and timers of the calls
//! it owns, and carrying out what its core asks. The first lane is the leader's
//! (`event_loop::Loop`, which also serves the admin API, reloads and the cluster); the
//! others run here on threads of their own, each with its own single-threaded runtime.
//!
//! Lanes talk to each other only through [`Mail`]: the leader forwards to a lane what
//! concerns its calls (an admin command, a screening verdict, a new dialplan), a lane
//! hands the leader the registrations it took, for the cluster, and one lane hands
//! another a call that an attended transfer there replaces (`core::handover`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use warden_media::MediaEvent;

use super::event_loop::{Answer, Dns, StopSignals};
use super::records::Records;
use crate::cdr::Record;
use crate::clock::{unix_now, unix_now_ms};
use crate::config::ServerConfig;
use crate::core::{Core, HandedCall, Output, Replaced};
use crate::dialplan::Dialplan;
use crate::dns::Found;
use crate::registrar::Change;
use crate::screening::driver::Driver;
use crate::shard::Shared;
use crate::sip::transport::{Destination, Inbound, Transmitter};

/// What one lane tells another.
pub(super) enum Mail {
    /// An admin command about this lane's own calls (`Calls`, `Hangup`).
    Ask(crate::api::Command, oneshot::Sender<Answer>),
    /// The screener's verdict on one of this lane's calls.
    Screened(u64, crate::screening::Outcome),
    /// Route new calls by this plan from now on.
    Dialplan(Arc<Dialplan>),
    /// To the leader: a registration a REGISTER on this lane made, for the cluster.
    Share(Change),
    /// To the leader: bans the guard imposed in this lane's turn, for the cluster.
    Banned(Vec<crate::guard::Imposed>),
    /// Lane `to` asks for the call whose dialog `replaces` names, for call `for_call`'s
    /// attended transfer.
    HandOver {
        replaces: Replaced,
        to: usize,
        for_call: u64,
    },
    /// The answer to a `HandOver`: the call (None: there was none to give).
    Adopt {
        for_call: u64,
        handed: Option<Box<HandedCall>>,
    },
    /// From the leader, stopping: this lane stops too.
    Stop,
}

/// A lane's own core and what carries out the core's asks: the rest is shared with or
/// reached from the leader, but `turn`, which is this lane's alone.
pub(super) struct Lane {
    pub core: Core,
    pub transmitter: Transmitter,
    pub inbound: mpsc::Receiver<Inbound>,
    pub media_events: mpsc::UnboundedReceiver<MediaEvent>,
    /// The screener, one for every lane (its quotas and counts are the server's).
    pub screening: Shared<Driver>,
    pub store_tx: mpsc::UnboundedSender<Change>,
    /// The journal, one for every lane.
    pub records: Shared<Records>,
    pub dns: Arc<Dns>,
    pub stopping: Stopping,
    /// Mail from the other lanes.
    pub mail: mpsc::UnboundedReceiver<Mail>,
    /// Every lane's mailbox, by lane (the leader's first).
    pub post: Arc<[mpsc::UnboundedSender<Mail>]>,
    /// Every lane's live calls after its latest turn (the leader waits for all to end).
    pub live: Arc<[AtomicUsize]>,
    /// The live event stream every lane publishes to.
    pub events: Arc<crate::events::Hub>,
    pub turn: Turn,
}

/// What a lane's turns gather and hand on: DNS answers, and what leaves at the turn's end.
pub(super) struct Turn {
    resolved_tx: mpsc::UnboundedSender<(u64, u64, Vec<Found>)>,
    pub resolved: mpsc::UnboundedReceiver<(u64, u64, Vec<Found>)>,
    /// Registrations to share with the cluster (the leader's lane).
    pub to_share: Vec<Change>,
    /// Bans to share with the cluster, likewise.
    pub to_ban: Vec<crate::guard::Imposed>,
    /// The turn's messages and records, held until the records are journalled.
    sends: Vec<(Destination, bytes::Bytes)>,
    records: Vec<Record>,
}

impl Turn {
    pub fn new() -> Turn {
        let (resolved_tx, resolved) = mpsc::unbounded_channel();
        Turn {
            resolved_tx,
            resolved,
            to_share: Vec::new(),
            to_ban: Vec::new(),
            sends: Vec::new(),
            records: Vec::new(),
        }
    }
}

/// Graceful shutdown: when live calls are ended, and when Warden stops waiting for them.
pub(super) struct Stopping {
    grace: Duration,
    retry_after_s: u64,
    pub drain_until: Option<Instant>,
    give_up_at: Option<Instant>,
}

impl Stopping {
    pub fn new(config: &ServerConfig) -> Stopping {
        Stopping {
            grace: Duration::from_secs(config.shutdown_grace_s),
            retry_after_s: config.retry_after_s,
            drain_until: None,
            give_up_at: None,
        }
    }
}

impl Lane {
    /// A follower lane's loop: its calls' messages, timers and media events, and the
    /// leader's mail, until the leader stops (it stops last, once every lane's calls are
    /// over or the grace time has run out).
    pub async fn run_follower(mut self) -> anyhow::Result<()> {
        let mut stop_signals = StopSignals::watch()?;
        loop {
            let deadline = self.deadline();
            tokio::select! {
                event = self.inbound.recv() => {
                    let Some(event) = event else { break };
                    self.on_inbound_burst(event);
                }
                Some((call, attempt, found)) = self.turn.resolved.recv() => {
                    self.core.handle_resolved(call, attempt, found, Instant::now());
                }
                Some(event) = self.media_events.recv() => {
                    self.core.handle_media_event(event, Instant::now());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.core.handle_timeout(Instant::now(), unix_now_ms());
                }
                mail = self.mail.recv() => match mail {
                    None | Some(Mail::Stop) => break,
                    Some(mail) => self.on_mail(mail),
                },
                _ = stop_signals.recv() => self.on_shutdown_signal(),
            }
            // Giving up closes this lane's records; the lane serves on (idle) until the
            // leader, giving up too, stops.
            self.shutdown_progress();
            self.carry_out();
        }
        if self.core.active_calls() > 0 {
            self.core.close_records("shutdown");
            self.carry_out();
        }
        Ok(())
    }

    /// When the core wants to be called back (a second from now when it has no timer).
    pub fn deadline(&self) -> tokio::time::Instant {
        self.core
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1))
    }

    /// `event`, then what else is queued: one wake-up, many messages.
    pub fn on_inbound_burst(&mut self, event: Inbound) {
        let now = Instant::now();
        if self.live.len() > 1 {
            // Another lane may have found the journal unwritable since this one's turn.
            let failing = self.records.lock().failing.clone();
            self.core.set_records_failing(failing);
        }
        self.on_inbound(event, now);
        while let Ok(event) = self.inbound.try_recv() {
            self.on_inbound(event, now);
        }
    }

    fn on_inbound(&mut self, event: Inbound, now: Instant) {
        match event.parse() {
            Inbound::Message(m, from) => self.core.handle_message(*m, from, now, unix_now_ms()),
            Inbound::Garbage(from, bytes, why) => {
                self.core.handle_garbage(&from, &bytes, &why, now)
            }
            Inbound::ConnOpened(id, addr, tx) => self.transmitter.on_opened(id, addr, tx),
            Inbound::ConnClosed(id) => self.transmitter.on_closed(id),
            Inbound::Datagram(..) => {} // parsed above
        }
    }

    /// Mail from the leader (a follower's) or from a follower (the leader's).
    pub fn on_mail(&mut self, mail: Mail) {
        match mail {
            Mail::Ask(command, reply) => {
                let _ = reply.send(self.answer(command));
            }
            Mail::Screened(call, outcome) => {
                self.core.handle_screened(call, outcome, Instant::now())
            }
            Mail::Dialplan(plan) => self.core.adopt_dialplan(plan),
            Mail::Share(change) => self.turn.to_share.push(change),
            Mail::Banned(bans) => self.turn.to_ban.extend(bans),
            Mail::HandOver {
                replaces,
                to,
                for_call,
            } => {
                let handed = self.core.hand_over(&replaces).map(Box::new);
                // The call's messages go to its new lane before it leaves this one.
                for call_id in handed.iter().flat_map(|h| h.call_ids()) {
                    self.transmitter.inbox().pin(call_id, to);
                }
                if let Some(lane) = self.post.get(to) {
                    let _ = lane.send(Mail::Adopt { for_call, handed });
                }
            }
            Mail::Adopt { for_call, handed } => {
                self.core
                    .adopt(for_call, handed.map(|h| *h), Instant::now())
            }
            Mail::Stop => {}
        }
    }

    /// An admin command answered from this lane's own calls.
    pub fn answer(&mut self, command: crate::api::Command) -> Answer {
        use crate::api::Command;
        match command {
            Command::Calls => Ok(serde_json::to_value(self.core.live_calls()).unwrap_or_default()),
            Command::Hangup(id) => {
                if self.core.hang_up(id, "admin hangup", 480, Instant::now()) {
                    Ok(serde_json::json!({"hung_up": id.to_string()}))
                } else {
                    Err(format!("not found: no live call {id}\n"))
                }
            }
            Command::Originate(spec) => self
                .core
                .originate(*spec, Instant::now(), unix_now_ms())
                .map(|placed| serde_json::to_value(placed).unwrap_or_default()),
            Command::Control(id, control) => self.core.control(id, control, Instant::now()),
            _ => Err("internal: that command is the leader's to answer\n".into()),
        }
    }

    /// Do what the core asked.
    /// Write-ahead: the turn's call records reach the journal before any message of the
    /// turn leaves, so a caller never hears of a call (not even its 100 Trying) that a
    /// crash right after could leave without a record.
    pub fn carry_out(&mut self) {
        let mut sends = std::mem::take(&mut self.turn.sends);
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send(dest, bytes) => sends.push((dest, bytes)),
                Output::Store(change) => {
                    let _ = self.store_tx.send(change);
                }
                Output::Share(change) => match self.core.shard().index {
                    0 => self.turn.to_share.push(change),
                    _ => {
                        if let Some(leader) = self.post.first() {
                            let _ = leader.send(Mail::Share(change));
                        }
                    }
                },
                Output::HandOver {
                    lane,
                    replaces,
                    for_call,
                } => {
                    let to = self.core.shard().index;
                    if let Some(holder) = self.post.get(lane) {
                        let _ = holder.send(Mail::HandOver {
                            replaces,
                            to,
                            for_call,
                        });
                    }
                }
                Output::Unpin(call_ids) => {
                    for call_id in call_ids {
                        self.transmitter.inbox().unpin(&call_id);
                    }
                }
                Output::Screen(request) => {
                    let decided = self.screening.lock().start(*request);
                    if let Some(d) = decided {
                        self.core.handle_screened(d.call, d.outcome, Instant::now());
                    }
                }
                Output::ChallengePassed { call } => {
                    self.screening.lock().challenge_passed(call, unix_now());
                }
                Output::Screened { call, answered_s } => {
                    self.screening
                        .lock()
                        .call_ended(call, answered_s, unix_now());
                }
                Output::Record(record) => self.turn.records.push(*record),
                Output::Event(event) => self.events.publish(&event),
                Output::Resolve {
                    call,
                    attempt,
                    lookup,
                } => {
                    let (dns, tx) = (self.dns.clone(), self.turn.resolved_tx.clone());
                    tokio::spawn(async move {
                        let found =
                            crate::dns::resolve(&dns.resolver, &lookup, &dns.enum_suffix).await;
                        let _ = tx.send((call, attempt, found));
                    });
                }
            }
        }
        // The bans this turn imposed reach the cluster in this turn, whichever lane it was.
        let imposed = self.core.guard.lock().take_imposed();
        if !imposed.is_empty() {
            match (self.core.shard().index, self.post.first()) {
                (0, _) | (_, None) => self.turn.to_ban.extend(imposed),
                (_, Some(leader)) => {
                    let _ = leader.send(Mail::Banned(imposed));
                }
            }
        }
        let failing = {
            let mut records = self.records.lock();
            records.pending.append(&mut self.turn.records);
            records.flush()
        };
        self.core.set_records_failing(failing);
        // Before the messages: a party may send media as soon as it reads our SDP.
        self.core.media.flush();
        for (dest, bytes) in sends.drain(..) {
            self.transmitter.send(&dest, bytes);
        }
        self.turn.sends = sends; // its capacity, for the next turn
        if let Some(live) = self.live.get(self.core.shard().index) {
            live.store(self.core.active_calls(), Ordering::Relaxed);
        }
    }

    /// Live calls on each lane: this one's now, the others' as of their latest turn.
    pub fn live_by_lane(&self) -> Vec<usize> {
        let own = self.core.shard().index;
        (self.live.iter().enumerate())
            .map(|(lane, n)| match lane == own {
                true => self.core.active_calls(),
                false => n.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Live calls on every lane.
    pub fn live_everywhere(&self) -> usize {
        self.live_by_lane().iter().sum()
    }

    /// SIGINT/SIGTERM: the first starts the grace time, a second ends the live calls now,
    /// any later one changes nothing (the calls are being ended already).
    pub fn on_shutdown_signal(&mut self) {
        let s = &mut self.stopping;
        let lane = self.core.shard().index;
        if s.give_up_at.is_some() {
            tracing::info!(
                lane,
                active_calls = self.core.active_calls(),
                "stop signal: live calls are being ended already"
            );
        } else if s.drain_until.is_none() {
            tracing::info!(
                lane,
                active_calls = self.core.active_calls(),
                grace_s = s.grace.as_secs(),
                "shutting down: new calls get 503; live calls may go on until the grace time ends"
            );
            self.core.stop_taking_calls(s.retry_after_s);
            s.drain_until = Some(Instant::now() + s.grace);
        } else {
            tracing::info!(
                lane,
                active_calls = self.core.active_calls(),
                "second signal: ending live calls now"
            );
            s.drain_until = Some(Instant::now());
        }
    }

    /// End the live calls once the grace time is over; true when Warden stops waiting
    /// for their BYEs (their records are closed then).
    pub fn shutdown_progress(&mut self) -> bool {
        let s = &mut self.stopping;
        if s.drain_until.is_some_and(|t| Instant::now() >= t) && s.give_up_at.is_none() {
            let ended = self.core.hang_up_all("shutdown", Instant::now());
            if ended > 0 {
                tracing::info!(calls = ended, "grace time over: ending live calls");
            }
            // The BYEs' answers, or their timeouts, close the calls.
            s.give_up_at = Some(Instant::now() + Duration::from_secs(5));
        }
        let giving_up = s.give_up_at.is_some_and(|t| Instant::now() >= t);
        if giving_up && self.core.active_calls() > 0 {
            tracing::warn!(
                active_calls = self.core.active_calls(),
                "calls not ended 5 s after their BYEs; closing their records and stopping"
            );
            self.core.close_records("shutdown");
        }
        giving_up
    }
}

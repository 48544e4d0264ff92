//! The signalling loop: the leader's lane (`super::lane`), which owns its core and feeds
//! it messages, time, media events and the answers of the tasks it starts (DNS, screening,
//! reloads), then carries out what the core asks (send, store, screen, journal the call
//! records). It alone serves the admin API, reloads and the cluster's news, and forwards
//! to the other lanes what concerns their calls.
//!
//! Nothing slow runs on it: DNS, STIR fetches, analytics, database reads for a reload and
//! every database write happen on other tasks that report back through channels.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use warden_media::MediaEvent;

use super::lane::{Lane, Mail, Stopping, Turn};
use super::load_dialplan;
use super::records::Records;
use crate::api::metrics::Snapshot;
use crate::clock::{unix_now, unix_now_ms};
use crate::config::Config;
use crate::core::Core;
use crate::dialplan::Dialplan;
use crate::registrar::{Change, Credentials};
use crate::screening::driver::{Driver, Event as ScreeningEvent};
use crate::shard::Shared;
use crate::sip::transport::{Inbound, Inbox};

pub(super) type Answer = Result<serde_json::Value, String>;

/// What `super::setup` hands the loop.
pub(super) struct Parts {
    pub core: Core,
    pub sip: Sip,
    pub inbound: mpsc::Receiver<Inbound>,
    pub media_events: mpsc::UnboundedReceiver<MediaEvent>,
    pub screening: Driver,
    pub screening_events: mpsc::UnboundedReceiver<ScreeningEvent>,
    pub asks: mpsc::Receiver<crate::api::Ask>,
    pub store_tx: mpsc::UnboundedSender<Change>,
    pub records: Records,
    pub dns: Dns,
    pub reloads: Reloads,
    pub stopping: Stopping,
    /// `[cluster]`: registrations shared with the other nodes, and what they announce.
    pub shared_registrations: Option<SharedRegistrations>,
    /// `[cluster]`: operator screening edits shared with the other nodes.
    pub shared_edits: Option<SharedEdits>,
    /// The other lanes' cores and queues (none: one lane, the leader's).
    pub followers: Vec<Follower>,
    pub events: Arc<crate::events::Hub>,
    pub recording_stats: Arc<crate::recording::RecordingStats>,
}

/// A follower lane as `super::setup` makes it: its core, and the queues its messages and
/// its streams' media events arrive on.
pub(super) struct Follower {
    pub core: Core,
    pub inbound: mpsc::Receiver<Inbound>,
    pub media_events: mpsc::UnboundedReceiver<MediaEvent>,
}

/// The SIP listeners, bound, and what serving them needs.
pub(super) struct Sip {
    pub listeners: crate::sip::transport::Listeners,
    pub limits: crate::sip::message::Limits,
    pub idle: Duration,
    pub tls: crate::sip::tls::TlsContext,
    pub inbox: Inbox,
}

/// Run the loop on a thread of its own, with its own single-threaded runtime that also
/// serves the SIP sockets: a message is received, parsed and handled on one thread, with
/// no hand-over (a futex wake and two context switches per message on a shared runtime).
/// What the loop starts (DNS lookups, TCP connections) runs there too; the database, the
/// admin API and the cluster's clients stay on the main runtime.
pub(super) async fn run_on_own_thread(parts: Parts) -> anyhow::Result<()> {
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("warden-sip".into())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start the signalling runtime: {e}"))
                .and_then(|runtime| runtime.block_on(async { Loop::new(parts)?.run().await }));
            let _ = done_tx.send(served);
        })
        .map_err(|e| anyhow::anyhow!("cannot start the signalling thread: {e}"))?;
    done.await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the signalling thread panicked")))
}

/// The cluster's screening edits, as the loop sees them.
pub(super) struct SharedEdits {
    pub edits: crate::cluster::edits::Edits,
    pub heard: mpsc::UnboundedReceiver<crate::cluster::edits::Event>,
}

/// The cluster's registrations, as the loop sees them.
pub(super) struct SharedRegistrations {
    pub registrations: crate::cluster::registrations::Registrations,
    pub heard: mpsc::UnboundedReceiver<crate::cluster::registrations::Event>,
}

/// Where DNS lookups for bridge targets go.
pub(super) struct Dns {
    pub resolver: hickory_resolver::TokioResolver,
    pub enum_suffix: String,
}

/// What a reload reads again (off the loop): the stored users, the TLS files, the
/// dialplan named by the configuration.
pub(super) struct Reloads {
    pub pool: sqlx::SqlitePool,
    /// `[cluster]`: the shared database, which holds the cluster's users.
    pub shared: Option<crate::cdr::store::Store>,
    pub tls: crate::sip::tls::TlsContext,
    pub config: Config,
}

impl Reloads {
    /// The users who may authenticate from the databases: this node's own, then (in a
    /// cluster) the shared one's, which win a name both hold.
    async fn users(&self) -> anyhow::Result<Vec<(String, Credentials)>> {
        let mut users = crate::registrar::users::load(&self.pool).await?;
        if let Some(shared) = &self.shared {
            users.extend(crate::registrar::users::load_shared(shared).await?);
        }
        Ok(users)
    }
}

/// What a reload read, for the loop to apply, and who asked (the admin API, or SIGHUP).
struct Reloaded {
    users: anyhow::Result<Vec<(String, Credentials)>>,
    /// None when only the users were read again (the cluster's users changed).
    plan: Option<anyhow::Result<Dialplan>>,
    reply: Option<oneshot::Sender<Answer>>,
}

/// The leader's loop: the first lane, and what the server has once (the admin API,
/// reloads, the screener's answers, the cluster's news, the sweeps), and the other lanes'
/// mailboxes.
pub(super) struct Loop {
    lane: Lane,
    screening_events: mpsc::UnboundedReceiver<ScreeningEvent>,
    asks: mpsc::Receiver<crate::api::Ask>,
    reloads: Arc<Reloads>,
    reloaded_tx: mpsc::UnboundedSender<Reloaded>,
    reloaded: mpsc::UnboundedReceiver<Reloaded>,
    /// Calls started, sampled each second over the last 10 s (the calls-per-second gauge).
    started_samples: VecDeque<(Instant, u64)>,
    shared_registrations: Option<SharedRegistrations>,
    shared_edits: Option<SharedEdits>,
    /// `[cluster]`: when to read the shared users again after a failed read (the shared
    /// database was away).
    users_retry: Option<Instant>,
    /// The other lanes' threads, joined once the leader stops.
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The lane the next originated call is placed on (they take turns).
    next_origin_lane: usize,
    recording_stats: Arc<crate::recording::RecordingStats>,
}

/// How soon a failed read of the cluster's users is tried again.
const USERS_RETRY: Duration = Duration::from_secs(10);

impl Loop {
    /// The loop, its SIP sockets served on the current runtime, and the other lanes
    /// started on threads of their own.
    fn new(parts: Parts) -> anyhow::Result<Loop> {
        let sip = parts.sip;
        let transmitter = sip
            .listeners
            .serve(sip.limits, sip.idle, sip.tls, sip.inbox)
            .map_err(|e| anyhow::anyhow!("cannot serve the SIP sockets: {e}"))?;
        let (reloaded_tx, reloaded) = mpsc::unbounded_channel();
        // The cluster's users are read once the loop runs: start-up does not wait on the
        // shared database.
        let users_retry = parts.reloads.shared.is_some().then(Instant::now);
        let lanes = parts.followers.len() + 1;
        let live: Arc<[AtomicUsize]> = (0..lanes).map(|_| AtomicUsize::new(0)).collect();
        let (screening, records, dns) = (
            Shared::new(parts.screening),
            Shared::new(parts.records),
            Arc::new(parts.dns),
        );
        let (senders, mut mailboxes): (Vec<_>, Vec<_>) =
            (0..lanes).map(|_| mpsc::unbounded_channel()).unzip();
        let post: Arc<[mpsc::UnboundedSender<Mail>]> = senders.into();
        let leader_mail = mailboxes.remove(0);
        let mut threads = Vec::new();
        for (index, (follower, mail)) in parts.followers.into_iter().zip(mailboxes).enumerate() {
            let lane = Lane {
                core: follower.core,
                transmitter: transmitter.sibling(),
                inbound: follower.inbound,
                media_events: follower.media_events,
                screening: screening.clone(),
                store_tx: parts.store_tx.clone(),
                records: records.clone(),
                dns: dns.clone(),
                stopping: Stopping::new(&parts.reloads.config.server),
                mail,
                post: post.clone(),
                live: live.clone(),
                events: parts.events.clone(),
                turn: Turn::new(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("warden-sip-{}", index + 1))
                .spawn(move || {
                    let served = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| anyhow::anyhow!("cannot start a lane's runtime: {e}"))
                        .and_then(|runtime| runtime.block_on(lane.run_follower()));
                    if let Err(e) = served {
                        tracing::error!(lane = index + 1, error = %e, "signalling lane stopped");
                    }
                })
                .map_err(|e| anyhow::anyhow!("cannot start a signalling lane: {e}"))?;
            threads.push(thread);
        }
        let lane = Lane {
            core: parts.core,
            transmitter,
            inbound: parts.inbound,
            media_events: parts.media_events,
            screening,
            store_tx: parts.store_tx,
            records,
            dns,
            stopping: parts.stopping,
            mail: leader_mail,
            post,
            live,
            events: parts.events,
            turn: Turn::new(),
        };
        Ok(Loop {
            lane,
            screening_events: parts.screening_events,
            asks: parts.asks,
            reloads: Arc::new(parts.reloads),
            reloaded_tx,
            reloaded,
            started_samples: VecDeque::with_capacity(11),
            shared_registrations: parts.shared_registrations,
            shared_edits: parts.shared_edits,
            users_retry,
            threads,
            next_origin_lane: 0,
            recording_stats: parts.recording_stats,
        })
    }

    /// Serve until a shutdown signal and the end of the live calls on every lane (or the
    /// grace time).
    async fn run(mut self) -> anyhow::Result<()> {
        let mut stop_signals = StopSignals::watch()?;
        let mut reload = reload_signal()?;
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        let mut rate_tick = tokio::time::interval(Duration::from_secs(1));
        // Outside a cluster there are no leases: the tick runs but renews nothing.
        let renewal = self.lane.screening.lock().lease_renewal();
        let mut lease_tick = tokio::time::interval(renewal.unwrap_or(Duration::from_secs(3600)));
        loop {
            let deadline = self.lane.deadline();
            tokio::select! {
                event = self.lane.inbound.recv() => {
                    let Some(event) = event else { break };
                    self.lane.on_inbound_burst(event);
                }
                Some((call, attempt, found)) = self.lane.turn.resolved.recv() => {
                    self.lane.core.handle_resolved(call, attempt, found, Instant::now());
                }
                Some(event) = self.lane.media_events.recv() => {
                    self.lane.core.handle_media_event(event, Instant::now());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.lane.core.handle_timeout(Instant::now(), unix_now_ms());
                }
                Some(mail) = self.lane.mail.recv() => self.lane.on_mail(mail),
                _ = sweep.tick() => {
                    self.lane.screening.lock().engine.sweep(unix_now());
                    self.lane.core.guard.lock().sweep(Instant::now());
                }
                _ = lease_tick.tick() => self.lane.screening.lock().renew_leases(),
                Some(event) = heard(&mut self.shared_registrations) => self.on_cluster_registration(event),
                Some(event) = heard_edit(&mut self.shared_edits) => self.on_cluster_edit(event),
                _ = rate_tick.tick() => {
                    if self.threads.iter().any(|t| t.is_finished()) {
                        // Its calls' messages go nowhere now: stop whole, to be restarted
                        // (every call's record is in the journal already).
                        tracing::error!("a signalling lane stopped unexpectedly; Warden stops");
                        anyhow::bail!("a signalling lane stopped unexpectedly");
                    }
                    if self.users_retry.is_some_and(|at| at <= Instant::now()) {
                        self.users_retry = None;
                        self.start_users_reload();
                    }
                    if self.started_samples.len() == 11 {
                        self.started_samples.pop_front();
                    }
                    let started = self.lane.core.stats.lock().calls_started;
                    self.started_samples.push_back((Instant::now(), started));
                }
                Some(event) = self.screening_events.recv() => {
                    let decided = self.lane.screening.lock().handle(event);
                    if let Some(d) = decided {
                        self.deliver_screened(d.call, d.outcome);
                    }
                }
                Some((command, reply)) = self.asks.recv() => self.on_ask(command, reply),
                Some(done) = self.reloaded.recv() => self.apply_reload(done),
                _ = reload.recv() => self.start_reload(None),
                _ = stop_signals.recv() => self.lane.on_shutdown_signal(),
            }
            let giving_up = self.lane.shutdown_progress();
            self.carry_out();
            let drained =
                self.lane.stopping.drain_until.is_some() && self.lane.live_everywhere() == 0;
            if giving_up || drained {
                break;
            }
        }
        tracing::info!(
            active_calls = self.lane.live_everywhere(),
            "signalling stopped; storing the last call records"
        );
        // The other lanes stop once their mailboxes close; the sockets they answer on are
        // served here, so they are waited for before this runtime ends.
        for follower in self.followers() {
            let _ = follower.send(Mail::Stop);
        }
        for thread in std::mem::take(&mut self.threads) {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        Ok(())
    }

    /// The lane's outputs, then what only the leader does with them: registrations and
    /// the guard's new bans (from every lane) shared with the cluster.
    fn carry_out(&mut self) {
        self.lane.carry_out();
        for change in self.lane.turn.to_share.drain(..) {
            if let Some(shared) = &self.shared_registrations {
                shared.registrations.share(change);
            }
        }
        let imposed = std::mem::take(&mut self.lane.turn.to_ban);
        if let (Some(shared), false) = (&self.shared_edits, imposed.is_empty()) {
            let now_ms = unix_now_ms();
            for ban in &imposed {
                let ban = crate::cluster::edits::Ban::of(ban, now_ms);
                shared.edits.share(crate::cluster::edits::Edit::Ban(ban));
            }
        }
    }

    /// The other lanes' mailboxes.
    fn followers(&self) -> &[mpsc::UnboundedSender<Mail>] {
        self.lane.post.get(1..).unwrap_or_default()
    }

    /// The mailbox of the follower lane call number `call` belongs to (None: the leader's).
    fn follower_of(&self, call: u64) -> Option<&mpsc::UnboundedSender<Mail>> {
        let lane = crate::shard::of_call(call, self.lane.post.len());
        lane.checked_sub(1).and_then(|k| self.followers().get(k))
    }

    /// A screening verdict to the lane holding its call.
    fn deliver_screened(&mut self, call: u64, outcome: crate::screening::Outcome) {
        match self.follower_of(call) {
            Some(follower) => {
                let _ = follower.send(Mail::Screened(call, outcome));
            }
            None => self
                .lane
                .core
                .handle_screened(call, outcome, Instant::now()),
        }
    }

    /// What the cluster said about registrations.
    fn on_cluster_registration(&mut self, event: crate::cluster::registrations::Event) {
        use crate::cluster::registrations::Event;
        match event {
            Event::Connected => self.lane.core.share_own_bindings(),
            Event::Snapshot(bindings) => {
                tracing::info!(
                    count = bindings.len(),
                    "cluster: the other nodes' registrations read"
                );
                self.lane.core.registrar.lock().replace_remote(bindings);
            }
            Event::Changed { node, change } => self.lane.core.apply_remote_binding(&node, change),
        }
    }

    /// What the cluster said about the operator's screening edits.
    fn on_cluster_edit(&mut self, event: crate::cluster::edits::Event) {
        use crate::cluster::edits::{Edit, Entry, Event};
        use crate::screening::admin;
        // A (re)connection may follow missed announcements: the users are read again too.
        let reconnected = matches!(event, Event::Lists(_) | Event::Seed);
        let screening = self.lane.screening.clone();
        let mut driver = screening.lock();
        let engine = &mut driver.engine;
        let now = unix_now();
        match event {
            Event::Edited(Edit::Ban(ban)) => self.impose_bans(vec![ban]),
            Event::Edited(Edit::Unban { source }) => {
                if source
                    .parse()
                    .is_ok_and(|ip| self.lane.core.guard.lock().unban(ip))
                {
                    tracing::info!(%source, "cluster: ban lifted on another node");
                }
            }
            Event::Bans(bans) => self.impose_bans(bans),
            Event::Edited(Edit::Users) => {
                tracing::info!("cluster: the users changed; reading them again");
                self.start_users_reload();
            }
            Event::Edited(edit) => {
                tracing::info!(?edit, "cluster: screening edit from another node");
                let command = edit.command();
                if let Some(Err(e)) = command.map(|c| admin::run(engine, c, now)) {
                    tracing::info!(error = %e, "cluster: another node's edit changed nothing here");
                }
            }
            Event::Lists(shared) => {
                // The cluster's lists are Redis's: drop what it lacks, add what is new.
                let local: Vec<Entry> = engine.lists().entries().map(Entry::of).collect();
                for e in local.iter().filter(|e| !shared.contains(e)) {
                    let removal = Edit::RemoveEntry {
                        list: e.list.clone(),
                        kind: e.kind.clone(),
                        value: e.value.clone(),
                    };
                    if let Some(c) = removal.command() {
                        let _ = admin::run(engine, c, now);
                    }
                }
                let added = shared.iter().filter(|e| !local.contains(e)).count();
                for e in shared {
                    if !engine.lists().entries().any(|l| Entry::of(l) == e)
                        && let Some(c) = Edit::Add(e).command()
                    {
                        let _ = admin::run(engine, c, now);
                    }
                }
                tracing::info!(
                    added,
                    "cluster: screening lists made to match the cluster's"
                );
            }
            Event::Seed => {
                let local: Vec<Entry> = engine.lists().entries().map(Entry::of).collect();
                tracing::info!(
                    entries = local.len(),
                    "cluster: Redis holds no screening lists; seeding it with this node's"
                );
                if let Some(shared) = &self.shared_edits {
                    shared.edits.seed(local);
                }
            }
        }
        driver.flush();
        drop(driver);
        if reconnected && self.reloads.shared.is_some() {
            self.start_users_reload();
        }
    }

    /// Bans another node's guard imposed: this node drops those sources too.
    fn impose_bans(&mut self, bans: Vec<crate::cluster::edits::Ban>) {
        let (now, now_ms) = (Instant::now(), unix_now_ms());
        for ban in bans {
            if let Some(imposed) = ban.imposed(now_ms) {
                tracing::info!(source = %ban.source, reason = %ban.reason, remaining_s = imposed.duration.as_secs(), "cluster: source banned by another node");
                self.lane.core.guard.lock().impose(&imposed, now);
            }
        }
    }

    /// A command from the admin API.
    fn on_ask(&mut self, command: crate::api::Command, reply: oneshot::Sender<Answer>) {
        use crate::api::Command;
        let answer = match command {
            Command::Screening(c) => {
                let edit = crate::cluster::edits::Edit::of(&c);
                let answer = {
                    let mut driver = self.lane.screening.lock();
                    let answer = crate::screening::admin::run(&mut driver.engine, c, unix_now());
                    driver.flush();
                    answer
                };
                if let (Ok(_), Some(edit), Some(shared)) = (&answer, edit, &self.shared_edits) {
                    shared.edits.share(edit);
                }
                answer
            }
            Command::Calls if !self.followers().is_empty() => return self.gather_calls(reply),
            Command::Calls => self.lane.answer(Command::Calls),
            // A call's number names its lane.
            Command::Hangup(id) => match self.follower_of(id) {
                Some(follower) => {
                    let _ = follower.send(Mail::Ask(Command::Hangup(id), reply));
                    return;
                }
                None => self.lane.answer(Command::Hangup(id)),
            },
            Command::Control(id, control) => match self.follower_of(id) {
                Some(follower) => {
                    let _ = follower.send(Mail::Ask(Command::Control(id, control), reply));
                    return;
                }
                None => self.lane.answer(Command::Control(id, control)),
            },
            // The lanes take turns placing calls.
            Command::Originate(spec) => {
                let lane = self.next_origin_lane % self.lane.post.len();
                self.next_origin_lane = self.next_origin_lane.wrapping_add(1);
                match lane.checked_sub(1).and_then(|k| self.followers().get(k)) {
                    Some(follower) => {
                        let _ = follower.send(Mail::Ask(Command::Originate(spec), reply));
                        return;
                    }
                    None => self.lane.answer(Command::Originate(spec)),
                }
            }
            Command::Registrations => Ok(registrations(&self.lane.core)),
            Command::Gateways => {
                Ok(serde_json::to_value(self.lane.core.gateways()).unwrap_or_default())
            }
            Command::Bans => Ok(serde_json::to_value(
                self.lane.core.guard.lock().bans(Instant::now()),
            )
            .unwrap_or_default()),
            Command::Unban(source) => {
                if let Some(shared) = &self.shared_edits {
                    // Every node's copy goes, even if this node had none.
                    let source = source.to_string();
                    shared
                        .edits
                        .share(crate::cluster::edits::Edit::Unban { source });
                }
                let lifted = self.lane.core.guard.lock().unban(source);
                if lifted {
                    tracing::info!(%source, "ban lifted by the admin API");
                    Ok(serde_json::json!({"unbanned": source.to_string()}))
                } else {
                    Err(format!("not found: {source} is not banned\n"))
                }
            }
            // Answered when the reload has read what it needs.
            Command::Reload => return self.start_reload(Some(reply)),
            Command::Metrics => {
                let snapshot = self.metrics_snapshot();
                Ok(serde_json::to_value(snapshot).unwrap_or_default())
            }
        };
        let _ = reply.send(answer);
    }

    /// The live calls of every lane, oldest first: the followers' lists are awaited off
    /// the loop.
    fn gather_calls(&mut self, reply: oneshot::Sender<Answer>) {
        let mut waiting = Vec::new();
        for follower in self.followers() {
            let (tx, rx) = oneshot::channel();
            if follower
                .send(Mail::Ask(crate::api::Command::Calls, tx))
                .is_ok()
            {
                waiting.push(rx);
            }
        }
        let own = self.lane.answer(crate::api::Command::Calls);
        tokio::spawn(async move {
            let mut calls = match own {
                Ok(serde_json::Value::Array(calls)) => calls,
                _ => Vec::new(),
            };
            for rx in waiting {
                if let Ok(Ok(serde_json::Value::Array(more))) = rx.await {
                    calls.extend(more);
                }
            }
            let key = |c: &serde_json::Value| (c["received_ms"].as_i64(), c["id"].as_u64());
            calls.sort_by_key(key);
            let _ = reply.send(Ok(serde_json::Value::Array(calls)));
        });
    }

    /// What SIGHUP and the admin API's reload do alike: read the stored users, the TLS
    /// files and the dialplan again on another task; the loop applies what it read.
    fn start_reload(&self, reply: Option<oneshot::Sender<Answer>>) {
        let (reloads, done) = (self.reloads.clone(), self.reloaded_tx.clone());
        tokio::spawn(async move {
            let users = reloads.users().await;
            let files = reloads.clone();
            let read = tokio::task::spawn_blocking(move || {
                (files.tls.reload(), load_dialplan(&files.config))
            })
            .await;
            let (tls, plan) = match read {
                Ok(read) => read,
                Err(e) => (Err(anyhow::anyhow!("{e}")), Err(anyhow::anyhow!("{e}"))),
            };
            match tls {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload refused; the loaded certificate stays")
                }
            }
            let _ = done.send(Reloaded {
                users,
                plan: Some(plan),
                reply,
            });
        });
    }

    /// Read the users again, and nothing else (the cluster's users changed, or this node
    /// reconnected to Redis and may have missed an announcement).
    fn start_users_reload(&self) {
        let (reloads, done) = (self.reloads.clone(), self.reloaded_tx.clone());
        tokio::spawn(async move {
            let users = reloads.users().await;
            let _ = done.send(Reloaded {
                users,
                plan: None,
                reply: None,
            });
        });
    }

    /// Apply a reload: the users (on an error the loaded ones stay, and the log says why),
    /// then the dialplan, whose refusal is the answer.
    fn apply_reload(&mut self, done: Reloaded) {
        let core = &mut self.lane.core;
        match done.users {
            Ok(users) => {
                let mut registrar = core.registrar.lock();
                registrar.set_stored_users(users);
                tracing::info!(users = registrar.user_count(), "users reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, retry_s = USERS_RETRY.as_secs(), "cannot reload users; the known ones stay");
                if self.reloads.shared.is_some() {
                    self.users_retry = Some(Instant::now() + USERS_RETRY);
                }
            }
        }
        let Some(plan) = done.plan else {
            return;
        };
        let answer = match plan {
            Ok(plan) => {
                let answer = serde_json::json!({"reloaded": plan.origin.to_string(), "rules": plan.rules.len()});
                core.set_dialplan(plan);
                for follower in self.lane.post.get(1..).unwrap_or_default() {
                    let _ = follower.send(Mail::Dialplan(self.lane.core.dialplan()));
                }
                Ok(answer)
            }
            Err(e) => Err(format!("dialplan {e}; the previous plan stays active")),
        };
        if let Err(e) = &answer {
            tracing::error!(error = %e, "dialplan reload refused");
        }
        if let Some(reply) = done.reply {
            let _ = reply.send(answer.map_err(|e| format!("{e}\n")));
        }
    }

    /// What /metrics shows, gathered in one go.
    fn metrics_snapshot(&self) -> Snapshot {
        let core = &self.lane.core;
        let driver = self.lane.screening.lock();
        let redis = driver.cluster_health();
        let records = self.lane.records.lock();
        let cdr = &records.status;
        let sync = records.syncer.as_ref().map(|s| &*s.stats);
        let started = &self.started_samples;
        let relay = core.media.totals();
        let calls_per_second = match (started.front(), started.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let (rooms, members) = core.rooms.lock().counts();
        let guard_state = core.guard.lock();
        let guard = &guard_state.counters;
        let stats = core.stats.lock().clone();
        Snapshot {
            calls_active: self.lane.live_everywhere() as u64,
            calls_active_by_shard: (self.lane.live_by_lane().into_iter())
                .map(|n| n as u64)
                .collect(),
            conference_rooms: rooms as u64,
            conference_members: members as u64,
            event_subscribers: self.lane.events.subscribers() as u64,
            event_subscribers_dropped: self.lane.events.dropped(),
            recordings_uploaded: self.recording_stats.uploaded.load(Ordering::Relaxed),
            recording_upload_failures: self.recording_stats.upload_failures.load(Ordering::Relaxed),
            recordings_pending: self.recording_stats.pending.load(Ordering::Relaxed),
            recordings_failed: self.recording_stats.failed.load(Ordering::Relaxed),
            recording_dropped_packets: core.media.recording_dropped(),
            calls_started: stats.calls_started,
            calls_answered: stats.calls_answered,
            calls_per_second,
            final_codes: stats.final_codes.clone(),
            registrations: core.registrar.lock().binding_count() as u64,
            relay_streams: relay.streams,
            transcoding_channels: relay.transcoding,
            relay_rtp_packets: relay.rtp_packets,
            relay_rtp_bytes: relay.rtp_bytes,
            relay_stranger_packets: relay.strangers,
            relay_unassigned_packets: relay.unassigned,
            relay_parked_port_pairs: relay.parked_pairs,
            screening: driver
                .engine
                .counts
                .iter()
                .map(|((decision, check), n)| (decision.to_string(), check.to_string(), *n))
                .collect(),
            sip_malformed: stats
                .malformed
                .iter()
                .map(|(&(handling, reason), &n)| (handling.into(), reason.into(), n))
                .collect(),
            cdr_stored: cdr.written.load(Ordering::Relaxed),
            cdr_write_failures: cdr.failures.load(Ordering::Relaxed),
            cdr_queue_depth: records
                .journalled
                .saturating_sub(cdr.written_this_run.load(Ordering::Relaxed)),
            cdr_spool_bytes: cdr.backlog_bytes.load(Ordering::Relaxed),
            cdr_database_up: cdr.database_up.load(Ordering::Relaxed),
            cluster_redis_up: redis.map(|h| h.up),
            cluster_redis_failures: redis.map_or(0, |h| h.failures),
            cluster_cdr_stream_appended: redis.map_or(0, |h| h.stream_appended),
            cluster_cdr_stream_dropped: redis.map_or(0, |h| h.stream_dropped),
            cdr_records_failing: records.failing.is_some(),
            cdr_spool_alarm: records.spool_alarm,
            cdr_journal_append_failures: records.append_failures,
            cdr_journal_syncs: sync.map_or(0, |s| s.syncs.load(Ordering::Relaxed)),
            cdr_journal_sync_us: sync.map_or(0, |s| s.sync_us.load(Ordering::Relaxed)),
            cdr_journal_sync_failures: sync.map_or(0, |s| s.failures.load(Ordering::Relaxed)),
            cdr_records_held: records.pending.len() as u64,
            cdr_records_lost: records.lost,
            draining: self.lane.stopping.drain_until.is_some(),
            guard_dropped: guard
                .dropped
                .iter()
                .map(|(why, n)| (why.as_str().to_owned(), *n))
                .collect(),
            guard_bans: guard
                .bans
                .iter()
                .map(|(why, n)| (why.as_str().to_owned(), *n))
                .collect(),
            guard_banned_sources: guard_state.banned(Instant::now()) as u64,
            guard_sources: guard_state.tracked() as u64,
            guard_untracked: guard.untracked,
            auth_failures: guard.auth_failures,
            guard_call_limit_refused: guard.call_limit_refused,
            gateways: core
                .gateways()
                .into_iter()
                .map(|g| (g.gateway, g.up, g.failures))
                .collect(),
        }
    }
}

/// The next registration event from the cluster; pending forever outside one.
async fn heard(
    shared: &mut Option<SharedRegistrations>,
) -> Option<crate::cluster::registrations::Event> {
    match shared {
        Some(s) => s.heard.recv().await,
        None => std::future::pending().await,
    }
}

/// The next screening edit event from the cluster; pending forever outside one.
async fn heard_edit(shared: &mut Option<SharedEdits>) -> Option<crate::cluster::edits::Event> {
    match shared {
        Some(s) => s.heard.recv().await,
        None => std::future::pending().await,
    }
}

/// The registered contacts, for the admin API.
fn registrations(core: &Core) -> serde_json::Value {
    let now = unix_now();
    let rows: Vec<serde_json::Value> = core
        .registrar
        .lock()
        .all(now)
        .into_iter()
        .map(|b| {
            serde_json::json!({
                "aor": b.aor,
                "contact": b.contact,
                "expires_in": b.expires_at.saturating_sub(now),
                "transport": b.transport.as_str(),
                "source": b.source.to_string(),
                "user_agent": b.user_agent,
                "path": b.path,
                // The cluster node that took the REGISTER (absent: this one).
                "node": b.node,
            })
        })
        .collect();
    serde_json::Value::Array(rows)
}

/// SIGHUP: reload the users, the TLS files and the dialplan.
fn reload_signal() -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot watch SIGHUP: {e}"))
}

/// SIGINT and SIGTERM as one stream: every signal is one `recv`, however many arrive, so
/// the loop can take a second (and a third) without polling a finished future.
pub(super) struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(super) fn watch() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        let watch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| anyhow::anyhow!("cannot watch {name}: {e}"))
        };
        Ok(StopSignals {
            interrupt: watch(SignalKind::interrupt(), "SIGINT")?,
            terminate: watch(SignalKind::terminate(), "SIGTERM")?,
        })
    }

    /// The next stop signal. Cancel-safe: a signal that arrives while another branch of
    /// the loop's `select!` wins is kept for the next call.
    pub(super) async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

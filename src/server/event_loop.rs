//! The signalling loop: one task that owns the core and feeds it messages, time, media
//! events and the answers of the tasks it starts (DNS, screening, reloads), then carries
//! out what the core asks (send, store, screen, journal the call records).
//!
//! Nothing slow runs on it: DNS, STIR fetches, analytics, database reads for a reload and
//! every database write happen on other tasks that report back through channels.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};
use warden_media::MediaEvent;

use super::load_dialplan;
use crate::api::metrics::Snapshot;
use crate::cdr::Record;
use crate::cdr::journal::{Journal, Syncer};
use crate::cdr::writer::Status as CdrStatus;
use crate::clock::{unix_now, unix_now_ms};
use crate::config::{Config, ServerConfig};
use crate::core::{Core, Output};
use crate::dialplan::Dialplan;
use crate::dns::Found;
use crate::registrar::{Change, Credentials};
use crate::screening::driver::{Driver, Event as ScreeningEvent};
use crate::sip::transport::{Inbound, Transmitter};

type Answer = Result<serde_json::Value, String>;

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
}

/// The SIP listeners, bound, and what serving them needs.
pub(super) struct Sip {
    pub listeners: crate::sip::transport::Listeners,
    pub limits: crate::sip::message::Limits,
    pub idle: Duration,
    pub tls: crate::sip::tls::TlsContext,
    pub inbound_tx: mpsc::Sender<Inbound>,
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

/// Call records on their way to the journal: from the core to disk before the loop goes
/// on, made durable by the syncer, then the CDR writer is woken to store them. When the
/// journal cannot be written they wait here (bounded), and new calls are refused.
pub(super) struct Records {
    journal: Journal,
    syncer: Option<Syncer>,
    pending: Vec<Record>,
    /// Journalled this run (the metrics' queue depth is this less what was stored).
    journalled: u64,
    wake: Arc<Notify>,
    status: Arc<CdrStatus>,
    spool_max_bytes: u64,
    /// Why records cannot be kept now, if they cannot (the alarm).
    failing: Option<String>,
    /// The spool is past 80% of its cap.
    spool_alarm: bool,
    append_failures: u64,
    /// Records given up after `MAX_HELD` waited for a journal that stayed unwritable.
    lost: u64,
}

/// Records held in memory at most while the journal cannot be written (about 60 MiB).
const MAX_HELD: usize = 100_000;

impl Records {
    pub fn new(
        journal: Journal,
        syncer: Option<Syncer>,
        wake: Arc<Notify>,
        status: Arc<CdrStatus>,
        spool_max_bytes: u64,
    ) -> Records {
        Records {
            journal,
            syncer,
            pending: Vec::new(),
            journalled: 0,
            wake,
            status,
            spool_max_bytes,
            failing: None,
            spool_alarm: false,
            append_failures: 0,
            lost: 0,
        }
    }

    /// Journal what is pending; the alarm (why new calls must be refused) when records
    /// cannot be kept, after this flush.
    fn flush(&mut self) -> Option<String> {
        let appending = !self.pending.is_empty();
        if appending {
            // Journalled before the loop goes on: from here a crash loses none of them.
            match self.journal.append(&self.pending) {
                Ok(()) => {
                    self.journalled += self.pending.len() as u64;
                    self.pending.clear();
                    if let Some(syncer) = &self.syncer {
                        syncer.appended();
                    }
                    self.wake.notify_one();
                }
                Err(e) => {
                    self.append_failures += 1;
                    if self.pending.len() > MAX_HELD {
                        let excess = self.pending.len() - MAX_HELD;
                        self.pending.drain(..excess);
                        self.lost += excess as u64;
                        tracing::error!(
                            lost = excess,
                            "call records lost: the journal stayed unwritable while {MAX_HELD} waited"
                        );
                    }
                    self.raise(format!("cannot write the journal: {e}"));
                    return self.failing.clone();
                }
            }
        }
        // The spool and the syncer only change when something is appended; while an alarm
        // is up they are looked at every turn, to see it end. Idle turns cost nothing.
        if appending || self.failing.is_some() || self.spool_alarm {
            self.check_spool_and_sync();
        }
        self.failing.clone()
    }

    /// Raise or clear the alarms from the spool's size and the syncer's last result.
    fn check_spool_and_sync(&mut self) {
        let sync_error = self.syncer.as_ref().and_then(|s| {
            s.stats
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        });
        let spool = self.journal.len();
        let cap = self.spool_max_bytes;
        let alarm = cap > 0 && spool >= cap / 10 * 8;
        if alarm != self.spool_alarm {
            self.spool_alarm = alarm;
            match alarm {
                true => tracing::warn!(
                    spool_bytes = spool,
                    cap_bytes = cap,
                    "the call record spool is past 80% of cdr.spool_max_bytes (the database is away or slow)"
                ),
                false => tracing::info!(
                    spool_bytes = spool,
                    "the call record spool is below 80% of its cap again"
                ),
            }
        }
        match (sync_error, cap > 0 && spool >= cap) {
            (Some(e), _) => self.raise(e),
            (None, true) => self.raise(format!(
                "the spool is full ({spool} bytes, cdr.spool_max_bytes {cap})"
            )),
            (None, false) => {
                if let Some(was) = self.failing.take() {
                    tracing::info!(was = %was, "call records can be kept again; taking new calls");
                }
            }
        }
    }

    fn raise(&mut self, why: String) {
        if self.failing.as_ref() != Some(&why) {
            tracing::error!(journal = %self.journal.path().display(), held = self.pending.len(), reason = %why, "call records cannot be kept: new calls get 503 until they can");
        }
        self.failing = Some(why);
    }
}

/// Graceful shutdown: when live calls are ended, and when Warden stops waiting for them.
pub(super) struct Stopping {
    grace: Duration,
    retry_after_s: u64,
    drain_until: Option<Instant>,
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

/// The loop and everything it drives.
pub(super) struct Loop {
    core: Core,
    transmitter: Transmitter,
    inbound: mpsc::Receiver<Inbound>,
    media_events: mpsc::UnboundedReceiver<MediaEvent>,
    screening: Driver,
    screening_events: mpsc::UnboundedReceiver<ScreeningEvent>,
    asks: mpsc::Receiver<crate::api::Ask>,
    store_tx: mpsc::UnboundedSender<Change>,
    records: Records,
    dns: Arc<Dns>,
    resolved_tx: mpsc::UnboundedSender<(u64, u64, Vec<Found>)>,
    resolved: mpsc::UnboundedReceiver<(u64, u64, Vec<Found>)>,
    reloads: Arc<Reloads>,
    reloaded_tx: mpsc::UnboundedSender<Reloaded>,
    reloaded: mpsc::UnboundedReceiver<Reloaded>,
    /// Calls started, sampled each second over the last 10 s (the calls-per-second gauge).
    started_samples: VecDeque<(Instant, u64)>,
    stopping: Stopping,
    /// The turn's messages, held until its records are journalled (`carry_out`).
    sends: Vec<(crate::sip::transport::Destination, bytes::Bytes)>,
    shared_registrations: Option<SharedRegistrations>,
    shared_edits: Option<SharedEdits>,
    /// `[cluster]`: when to read the shared users again after a failed read (the shared
    /// database was away).
    users_retry: Option<Instant>,
}

/// How soon a failed read of the cluster's users is tried again.
const USERS_RETRY: Duration = Duration::from_secs(10);

impl Loop {
    /// The loop, its SIP sockets served on the current runtime.
    fn new(parts: Parts) -> anyhow::Result<Loop> {
        let sip = parts.sip;
        let transmitter = sip
            .listeners
            .serve(sip.limits, sip.idle, sip.tls, sip.inbound_tx)
            .map_err(|e| anyhow::anyhow!("cannot serve the SIP sockets: {e}"))?;
        let (resolved_tx, resolved) = mpsc::unbounded_channel();
        let (reloaded_tx, reloaded) = mpsc::unbounded_channel();
        // The cluster's users are read once the loop runs: start-up does not wait on the
        // shared database.
        let users_retry = parts.reloads.shared.is_some().then(Instant::now);
        Ok(Loop {
            core: parts.core,
            transmitter,
            inbound: parts.inbound,
            media_events: parts.media_events,
            screening: parts.screening,
            screening_events: parts.screening_events,
            asks: parts.asks,
            store_tx: parts.store_tx,
            records: parts.records,
            dns: Arc::new(parts.dns),
            resolved_tx,
            resolved,
            reloads: Arc::new(parts.reloads),
            reloaded_tx,
            reloaded,
            started_samples: VecDeque::with_capacity(11),
            stopping: parts.stopping,
            sends: Vec::new(),
            shared_registrations: parts.shared_registrations,
            shared_edits: parts.shared_edits,
            users_retry,
        })
    }

    /// Serve until a shutdown signal and the end of the live calls (or the grace time).
    async fn run(mut self) -> anyhow::Result<()> {
        let mut stop_signals = StopSignals::watch()?;
        let mut reload = reload_signal()?;
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        let mut rate_tick = tokio::time::interval(Duration::from_secs(1));
        // Outside a cluster there are no leases: the tick runs but renews nothing.
        let mut lease_tick = tokio::time::interval(
            self.screening
                .lease_renewal()
                .unwrap_or(Duration::from_secs(3600)),
        );
        loop {
            let deadline = self
                .core
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
            tokio::select! {
                event = self.inbound.recv() => {
                    let Some(event) = event else { break };
                    let now = Instant::now();
                    self.on_inbound(event, now);
                    // Drain what else is queued before sleeping again: one wake-up, many messages.
                    while let Ok(event) = self.inbound.try_recv() {
                        self.on_inbound(event, now);
                    }
                }
                Some((call, attempt, found)) = self.resolved.recv() => {
                    self.core.handle_resolved(call, attempt, found, Instant::now());
                }
                Some(event) = self.media_events.recv() => {
                    self.core.handle_media_event(event, Instant::now());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.core.handle_timeout(Instant::now(), unix_now_ms());
                }
                _ = sweep.tick() => {
                    self.screening.engine.sweep(unix_now());
                    self.core.guard.sweep(Instant::now());
                }
                _ = lease_tick.tick() => self.screening.renew_leases(),
                Some(event) = heard(&mut self.shared_registrations) => self.on_cluster_registration(event),
                Some(event) = heard_edit(&mut self.shared_edits) => self.on_cluster_edit(event),
                _ = rate_tick.tick() => {
                    if self.users_retry.is_some_and(|at| at <= Instant::now()) {
                        self.users_retry = None;
                        self.start_users_reload();
                    }
                    if self.started_samples.len() == 11 {
                        self.started_samples.pop_front();
                    }
                    self.started_samples.push_back((Instant::now(), self.core.stats.calls_started));
                }
                Some(event) = self.screening_events.recv() => {
                    if let Some(d) = self.screening.handle(event) {
                        self.core.handle_screened(d.call, d.outcome, Instant::now());
                    }
                }
                Some((command, reply)) = self.asks.recv() => self.on_ask(command, reply),
                Some(done) = self.reloaded.recv() => self.apply_reload(done),
                _ = reload.recv() => self.start_reload(None),
                _ = stop_signals.recv() => self.on_shutdown_signal(),
            }
            let giving_up = self.shutdown_progress();
            self.carry_out();
            let drained = self.stopping.drain_until.is_some() && self.core.active_calls() == 0;
            if giving_up || drained {
                break;
            }
        }
        tracing::info!(
            active_calls = self.core.active_calls(),
            "signalling stopped; storing the last call records"
        );
        Ok(())
    }

    fn on_inbound(&mut self, event: Inbound, now: Instant) {
        match event {
            Inbound::Message(m, from) => self.core.handle_message(*m, from, now, unix_now_ms()),
            Inbound::Garbage(from, bytes, why) => {
                self.core.handle_garbage(&from, &bytes, &why, now)
            }
            Inbound::ConnOpened(id, addr, tx) => self.transmitter.on_opened(id, addr, tx),
            Inbound::ConnClosed(id) => self.transmitter.on_closed(id),
        }
    }

    /// Do what the core asked.
    /// Write-ahead: the turn's call records reach the journal before any message of the
    /// turn leaves, so a caller never hears of a call (not even its 100 Trying) that a
    /// crash right after could leave without a record.
    fn carry_out(&mut self) {
        let mut sends = std::mem::take(&mut self.sends);
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send(dest, bytes) => sends.push((dest, bytes)),
                Output::Store(change) => {
                    let _ = self.store_tx.send(change);
                }
                Output::Share(change) => {
                    if let Some(shared) = &self.shared_registrations {
                        shared.registrations.share(change);
                    }
                }
                Output::Screen(request) => {
                    if let Some(d) = self.screening.start(*request) {
                        self.core.handle_screened(d.call, d.outcome, Instant::now());
                    }
                }
                Output::ChallengePassed { call } => {
                    self.screening.challenge_passed(call, unix_now());
                }
                Output::Screened { call, answered_s } => {
                    self.screening.call_ended(call, answered_s, unix_now());
                }
                Output::Record(record) => self.records.pending.push(*record),
                Output::Resolve {
                    call,
                    attempt,
                    lookup,
                } => {
                    let (dns, tx) = (self.dns.clone(), self.resolved_tx.clone());
                    tokio::spawn(async move {
                        let found =
                            crate::dns::resolve(&dns.resolver, &lookup, &dns.enum_suffix).await;
                        let _ = tx.send((call, attempt, found));
                    });
                }
            }
        }
        let imposed = self.core.guard.take_imposed();
        if let (Some(shared), false) = (&self.shared_edits, imposed.is_empty()) {
            let now_ms = unix_now_ms();
            for ban in &imposed {
                let ban = crate::cluster::edits::Ban::of(ban, now_ms);
                shared.edits.share(crate::cluster::edits::Edit::Ban(ban));
            }
        }
        let failing = self.records.flush();
        self.core.set_records_failing(failing);
        // Before the messages: a party may send media as soon as it reads our SDP.
        self.core.media.flush();
        for (dest, bytes) in sends.drain(..) {
            self.transmitter.send(&dest, bytes);
        }
        self.sends = sends; // its capacity, for the next turn
    }

    /// What the cluster said about registrations.
    fn on_cluster_registration(&mut self, event: crate::cluster::registrations::Event) {
        use crate::cluster::registrations::Event;
        match event {
            Event::Connected => self.core.share_own_bindings(),
            Event::Snapshot(bindings) => {
                tracing::info!(
                    count = bindings.len(),
                    "cluster: the other nodes' registrations read"
                );
                self.core.registrar.replace_remote(bindings);
            }
            Event::Changed { node, change } => self.core.apply_remote_binding(&node, change),
        }
    }

    /// What the cluster said about the operator's screening edits.
    fn on_cluster_edit(&mut self, event: crate::cluster::edits::Event) {
        use crate::cluster::edits::{Edit, Entry, Event};
        use crate::screening::admin;
        // A (re)connection may follow missed announcements: the users are read again too.
        let reconnected = matches!(event, Event::Lists(_) | Event::Seed);
        let engine = &mut self.screening.engine;
        let now = unix_now();
        match event {
            Event::Edited(Edit::Ban(ban)) => self.impose_bans(vec![ban]),
            Event::Edited(Edit::Unban { source }) => {
                if source.parse().is_ok_and(|ip| self.core.guard.unban(ip)) {
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
        self.screening.flush();
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
                self.core.guard.impose(&imposed, now);
            }
        }
    }

    /// A command from the admin API.
    fn on_ask(&mut self, command: crate::api::Command, reply: oneshot::Sender<Answer>) {
        use crate::api::Command;
        let core = &mut self.core;
        let answer = match command {
            Command::Screening(c) => {
                let edit = crate::cluster::edits::Edit::of(&c);
                let answer =
                    crate::screening::admin::run(&mut self.screening.engine, c, unix_now());
                self.screening.flush();
                if let (Ok(_), Some(edit), Some(shared)) = (&answer, edit, &self.shared_edits) {
                    shared.edits.share(edit);
                }
                answer
            }
            Command::Calls => Ok(serde_json::to_value(core.live_calls()).unwrap_or_default()),
            Command::Hangup(id) => {
                if core.hang_up(id, "admin hangup", 480, Instant::now()) {
                    Ok(serde_json::json!({"hung_up": id.to_string()}))
                } else {
                    Err(format!("not found: no live call {id}\n"))
                }
            }
            Command::Registrations => Ok(registrations(core)),
            Command::Gateways => Ok(serde_json::to_value(core.gateways()).unwrap_or_default()),
            Command::Bans => {
                Ok(serde_json::to_value(core.guard.bans(Instant::now())).unwrap_or_default())
            }
            Command::Unban(source) => {
                if let Some(shared) = &self.shared_edits {
                    // Every node's copy goes, even if this node had none.
                    let source = source.to_string();
                    shared
                        .edits
                        .share(crate::cluster::edits::Edit::Unban { source });
                }
                if core.guard.unban(source) {
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
        let core = &mut self.core;
        match done.users {
            Ok(users) => {
                core.registrar.set_stored_users(users);
                tracing::info!(users = core.registrar.user_count(), "users reloaded");
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

    /// SIGINT/SIGTERM: the first starts the grace time, a second ends the live calls now,
    /// any later one changes nothing (the calls are being ended already).
    fn on_shutdown_signal(&mut self) {
        let s = &mut self.stopping;
        if s.give_up_at.is_some() {
            tracing::info!(
                active_calls = self.core.active_calls(),
                "stop signal: live calls are being ended already"
            );
        } else if s.drain_until.is_none() {
            tracing::info!(
                active_calls = self.core.active_calls(),
                grace_s = s.grace.as_secs(),
                "shutting down: new calls get 503; live calls may go on until the grace time ends"
            );
            self.core.stop_taking_calls(s.retry_after_s);
            s.drain_until = Some(Instant::now() + s.grace);
        } else {
            tracing::info!(
                active_calls = self.core.active_calls(),
                "second signal: ending live calls now"
            );
            s.drain_until = Some(Instant::now());
        }
    }

    /// End the live calls once the grace time is over; true when Warden stops waiting
    /// for their BYEs (their records are closed then).
    fn shutdown_progress(&mut self) -> bool {
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
        if giving_up {
            tracing::warn!(
                active_calls = self.core.active_calls(),
                "calls not ended 5 s after their BYEs; closing their records and stopping"
            );
            self.core.close_records("shutdown");
        }
        giving_up
    }

    /// What /metrics shows, gathered in one go.
    fn metrics_snapshot(&self) -> Snapshot {
        let core = &self.core;
        let redis = self.screening.cluster_health();
        let cdr = &self.records.status;
        let records = &self.records;
        let sync = records.syncer.as_ref().map(|s| &*s.stats);
        let started = &self.started_samples;
        let relay = core.media.totals();
        let calls_per_second = match (started.front(), started.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let (rooms, members) = core.rooms.counts();
        let guard = &core.guard.counters;
        Snapshot {
            calls_active: core.active_calls() as u64,
            conference_rooms: rooms as u64,
            conference_members: members as u64,
            calls_started: core.stats.calls_started,
            calls_answered: core.stats.calls_answered,
            calls_per_second,
            final_codes: core.stats.final_codes.clone(),
            registrations: core.registrar.binding_count() as u64,
            relay_streams: relay.streams,
            transcoding_channels: relay.transcoding,
            relay_rtp_packets: relay.rtp_packets,
            relay_rtp_bytes: relay.rtp_bytes,
            relay_stranger_packets: relay.strangers,
            relay_unassigned_packets: relay.unassigned,
            relay_parked_port_pairs: relay.parked_pairs,
            screening: self
                .screening
                .engine
                .counts
                .iter()
                .map(|((decision, check), n)| (decision.to_string(), check.to_string(), *n))
                .collect(),
            sip_malformed: core
                .stats
                .malformed
                .iter()
                .map(|(&(handling, reason), &n)| (handling.into(), reason.into(), n))
                .collect(),
            cdr_stored: cdr.written.load(Ordering::Relaxed),
            cdr_write_failures: cdr.failures.load(Ordering::Relaxed),
            cdr_queue_depth: self
                .records
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
            draining: self.stopping.drain_until.is_some(),
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
            guard_banned_sources: core.guard.banned(Instant::now()) as u64,
            guard_sources: core.guard.tracked() as u64,
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
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn watch() -> anyhow::Result<StopSignals> {
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
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

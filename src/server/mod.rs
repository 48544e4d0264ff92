//! The async driver: binds transports, opens the database, and runs the sans-IO core on one
//! task, feeding it messages and time and carrying out what it asks (send, store).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdp};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc, watch};
use warden_media::codec::CodecOptions;
use warden_media::{Relay, RelayConfig};

use crate::api::metrics::Snapshot;
use crate::cdr::journal::Journal;
use crate::cdr::store::Store as CdrStore;
use crate::cdr::writer::{Status as CdrStatus, Writer as CdrWriter};
use crate::config::Config;
use crate::core::{Core, Output};
use crate::dialplan::Dialplan;
use crate::registrar::{Registrar, store};
use crate::sip::message::Limits;
use crate::sip::transport::{self, Inbound, Transport};

/// Wall-clock seconds since the Unix epoch (0 on a clock set before it).
pub(crate) fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The address peers can reach for a socket bound to `addr` (an unspecified bind asks the
/// routing table which local address it would use).
fn reachable_host(addr: SocketAddr, advertised: &Option<String>) -> String {
    if let Some(host) = advertised {
        return if host.contains(':') && !host.starts_with('[') || host.contains("]:") {
            host.clone()
        } else {
            format!("{host}:{}", addr.port())
        };
    }
    let ip = if addr.ip().is_unspecified() {
        StdUdp::bind((addr.ip(), 0))
            .and_then(|s| {
                let probe: SocketAddr = if addr.is_ipv4() {
                    "192.0.2.1:9".parse().map_err(std::io::Error::other)?
                } else {
                    "[2001:db8::1]:9".parse().map_err(std::io::Error::other)?
                };
                s.connect(probe)?; // no packet is sent: connect on UDP only picks a route
                s.local_addr()
            })
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    } else {
        addr.ip()
    };
    SocketAddr::new(ip, addr.port()).to_string()
}

/// Run Warden until SIGINT/SIGTERM, then shut down gracefully: new calls get 503, live
/// calls have `server.shutdown_grace_s` to end (a second signal ends them at once), call
/// records are flushed.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let pool = store::open(&config.database.path).await?;
    let cdr_store = CdrStore::new(&config.cdr_url())?;
    let journal = Journal::open(&config.cdr_journal())?;
    tracing::info!(db = %cdr_store.display, journal = %journal.path().display(), journal_bytes = journal.len(), "call records");
    let loaded = store::load(&pool, unix_now()).await?;
    tracing::info!(count = loaded.len(), db = %config.database.path.display(), "registrations restored");
    let (store_tx, store_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(store::writer(pool.clone(), store_rx));

    let limits = Limits {
        max_message_bytes: config.sip.max_message_bytes,
        max_headers: config.sip.max_headers,
    };
    let (inbound_tx, mut inbound) = mpsc::channel(8192);
    let idle = std::time::Duration::from_secs(config.sip.tcp_idle_timeout_s);
    let tls = crate::sip::tls::TlsContext::load(&config.sip.tls)?;
    let (mut transmitter, bound) =
        transport::start(&config.listen()?, limits, idle, tls.clone(), inbound_tx).await?;
    let mut advertised = HashMap::new();
    for (t, addr) in &bound {
        tracing::info!(transport = t.as_str(), %addr, "listening");
        advertised
            .entry(*t)
            .or_insert_with(|| reachable_host(*addr, &config.sip.advertised_host));
    }
    if !advertised.contains_key(&Transport::Udp)
        && let Some(h) = advertised.values().next().cloned()
    {
        advertised.insert(Transport::Udp, h);
    }
    let mut relay = start_relay(&config, &bound)?;
    // Media events arrive from the relay's threads; the loop below hands them to the core.
    let (media_tx, mut media_events) = mpsc::unbounded_channel();
    relay.set_event_sink(std::sync::Arc::new(move |event| {
        let _ = media_tx.send(event);
    }));
    let prompts = crate::prompts::load(&config)?;
    let media = &config.media;
    for (key, name) in [
        ("hold_music", &media.hold_music),
        ("conference_join", &media.conference_join),
        ("conference_leave", &media.conference_leave),
    ] {
        anyhow::ensure!(
            name.is_empty() || prompts.contains(name),
            "media.{key} {name:?}: no such prompt (built in, or in media.prompts_dir)"
        );
    }
    let (usage, lists) = crate::screening::store::load(&pool, unix_now()).await?;
    let engine = crate::screening::Engine::new(
        &config.screening,
        &|name| prompts.contains(name),
        usage,
        lists,
    )
    .map_err(anyhow::Error::msg)?;
    let (ask_tx, mut asks) = mpsc::channel::<crate::api::Ask>(64);
    let admin = match config.admin.address()? {
        Some(addr) => {
            // The certificate is served beside the jCard.
            let url = config.jcard_url();
            let base = url
                .strip_suffix("/jcard")
                .map_or_else(|| format!("http://{addr}"), str::to_owned);
            let jcard = crate::api::jcard::Jcard::new(&config.screening.jcard, &base)?;
            Some(
                crate::api::serve(
                    addr,
                    config.admin.token.clone(),
                    std::sync::Arc::new(jcard),
                    ask_tx,
                    cdr_store.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let (screen_tx, screen_rx) = mpsc::unbounded_channel();
    let screen_writer = tokio::spawn(crate::screening::store::writer(pool.clone(), screen_rx));
    let (mut screening, mut screening_events) =
        crate::screening::driver::Driver::new(&config.screening, engine, screen_tx)?;
    let mut registrar = Registrar::new(config.registrar.clone(), loaded);
    registrar.set_stored_users(crate::registrar::users::load(&pool).await?);
    tracing::info!(users = registrar.user_count(), "users who may authenticate");
    if registrar.user_count() == 0 && (config.registrar.auth || config.calls.auth) {
        tracing::warn!(
            "authentication is on (registrar.auth or calls.auth) but there are no users: add them under [[registrar.users]] or with `warden user add`"
        );
    }
    // What a reload reads (the dialplan file, and the profiles it may name).
    let reload_config = config.clone();
    let resolver = crate::dns::resolver(&config.dns)?;
    let enum_suffix = config.dns.enum_suffix.clone();
    let (resolved_tx, mut resolved) = mpsc::unbounded_channel();
    let plan = load_dialplan(&config)?;
    let pid_file = PidFile::write(&config.server.pid_file)?;
    let grace = Duration::from_secs(config.server.shutdown_grace_s);
    let retry_after = config.server.retry_after_s;
    let batch = config.cdr.batch;
    let mut core = Core::new(config, registrar, advertised, Box::new(relay), prompts);
    core.set_dialplan(plan);

    // The CDR writer stores what the loop journals.
    let cdr_status = Arc::new(CdrStatus::default());
    let cdr_wake = Arc::new(Notify::new());
    let (cdr_stop, cdr_stop_rx) = watch::channel(false);
    let cdr_writer = tokio::spawn(
        CdrWriter {
            store: cdr_store.clone(),
            reader: journal.reader(),
            status: cdr_status.clone(),
            wake: cdr_wake.clone(),
            stop: cdr_stop_rx,
            instance: core.instance().to_owned(),
            boot: core.boot().to_owned(),
            batch,
        }
        .run(),
    );
    let mut records = Vec::new();
    let mut journalled: u64 = 0;

    let mut shutdown = Box::pin(shutdown_signal());
    let mut reload = reload_signal()?;
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    // Calls started, sampled each second over the last 10 s (the calls-per-second gauge).
    let mut rate_tick = tokio::time::interval(Duration::from_secs(1));
    let mut started_samples: VecDeque<(Instant, u64)> = VecDeque::with_capacity(11);
    // Shutting down: when live calls are ended, and when Warden stops waiting for them.
    let mut drain_until: Option<Instant> = None;
    let mut give_up_at: Option<Instant> = None;

    loop {
        let deadline = core
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(1));
        tokio::select! {
            event = inbound.recv() => {
                let Some(event) = event else { break };
                let now = Instant::now();
                handle(&mut core, &mut transmitter, event, now);
                // Drain what else is queued before sleeping again: one wake-up, many messages.
                while let Ok(event) = inbound.try_recv() {
                    handle(&mut core, &mut transmitter, event, now);
                }
            }
            Some((call, attempt, found)) = resolved.recv() => {
                core.handle_resolved(call, attempt, found, Instant::now());
            }
            Some(event) = media_events.recv() => {
                core.handle_media_event(event, Instant::now());
            }
            _ = tokio::time::sleep_until(deadline) => {
                core.handle_timeout(Instant::now(), unix_now_ms());
            }
            _ = sweep.tick() => {
                screening.engine.sweep(unix_now());
                core.guard.sweep(Instant::now());
            }
            _ = rate_tick.tick() => {
                if started_samples.len() == 11 {
                    started_samples.pop_front();
                }
                started_samples.push_back((Instant::now(), core.stats.calls_started));
            }
            Some(event) = screening_events.recv() => screening.handle(&mut core, event),
            Some((command, reply)) = asks.recv() => {
                use crate::api::Command;
                let answer = match command {
                    Command::Screening(c) => {
                        let answer = crate::screening::admin::run(&mut screening.engine, c, unix_now());
                        screening.flush();
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
                    Command::Registrations => Ok(registrations(&core)),
                    Command::Bans => Ok(serde_json::to_value(core.guard.bans(Instant::now())).unwrap_or_default()),
                    Command::Unban(source) => {
                        if core.guard.unban(source) {
                            tracing::info!(%source, "ban lifted by the admin API");
                            Ok(serde_json::json!({"unbanned": source.to_string()}))
                        } else {
                            Err(format!("not found: {source} is not banned\n"))
                        }
                    }
                    Command::Reload => reload_all(&mut core, &pool, &tls, &reload_config)
                        .await
                        .map_err(|e| format!("{e}\n")),
                    Command::Metrics => {
                        let snapshot = metrics_snapshot(&core, &screening.engine, &cdr_status, journalled, &started_samples, drain_until.is_some());
                        Ok(serde_json::to_value(snapshot).unwrap_or_default())
                    }
                };
                let _ = reply.send(answer);
            }
            _ = reload.recv() => {
                if let Err(e) = reload_all(&mut core, &pool, &tls, &reload_config).await {
                    tracing::error!(error = %e, "dialplan reload refused");
                }
            }
            _ = &mut shutdown => {
                if drain_until.is_none() {
                    tracing::info!(active_calls = core.active_calls(), grace_s = grace.as_secs(), "shutting down: new calls get 503; live calls may go on until the grace time ends");
                    core.stop_taking_calls(retry_after);
                    drain_until = Some(Instant::now() + grace);
                    // A second signal ends the live calls at once.
                    shutdown = Box::pin(shutdown_signal());
                } else {
                    tracing::info!(active_calls = core.active_calls(), "second signal: ending live calls now");
                    drain_until = Some(Instant::now());
                }
            }
        }
        if drain_until.is_some_and(|t| Instant::now() >= t) && give_up_at.is_none() {
            let ended = core.hang_up_all("shutdown", Instant::now());
            if ended > 0 {
                tracing::info!(calls = ended, "grace time over: ending live calls");
            }
            // The BYEs' answers, or their timeouts, close the calls.
            give_up_at = Some(Instant::now() + Duration::from_secs(5));
        }
        let giving_up = give_up_at.is_some_and(|t| Instant::now() >= t);
        if giving_up {
            tracing::warn!(
                active_calls = core.active_calls(),
                "calls not ended 5 s after their BYEs; closing their records and stopping"
            );
            core.close_records("shutdown");
        }
        while let Some(output) = core.poll_output() {
            match output {
                Output::Send(dest, bytes) => transmitter.send(&dest, bytes),
                Output::Store(change) => {
                    let _ = store_tx.send(change);
                }
                Output::Screen(request) => screening.start(&mut core, request),
                Output::ChallengePassed { call } => {
                    screening.engine.challenge_passed(call, unix_now());
                    screening.flush();
                }
                Output::Screened { call, answered_s } => {
                    screening.engine.call_ended(call, answered_s, unix_now());
                    screening.flush();
                }
                Output::Record(record) => records.push(*record),
                Output::Resolve {
                    call,
                    attempt,
                    lookup,
                } => {
                    let (resolver, suffix, tx) =
                        (resolver.clone(), enum_suffix.clone(), resolved_tx.clone());
                    tokio::spawn(async move {
                        let found = crate::dns::resolve(&resolver, &lookup, &suffix).await;
                        let _ = tx.send((call, attempt, found));
                    });
                }
            }
        }
        if !records.is_empty() {
            // Journalled before the loop goes on: from here a crash loses none of them.
            match journal.append(&records) {
                Ok(()) => journalled += records.len() as u64,
                Err(e) => {
                    tracing::error!(error = %e, records = records.len(), journal = %journal.path().display(), "cannot journal call records")
                }
            }
            records.clear();
            cdr_wake.notify_one();
        }
        if giving_up || (drain_until.is_some() && core.active_calls() == 0) {
            break;
        }
    }
    tracing::info!(
        active_calls = core.active_calls(),
        "signalling stopped; storing the last call records"
    );
    drop(pid_file);
    if let Some(admin) = admin {
        admin.abort();
    }
    // The writer stores what is left (when the database is there; else it stays in the
    // journal for the next start).
    let _ = cdr_stop.send(true);
    if tokio::time::timeout(Duration::from_secs(10), cdr_writer)
        .await
        .is_err()
    {
        tracing::warn!("call records still being written after 10 s; the journal keeps the rest");
    }
    cdr_store.close().await;
    drop(store_tx);
    drop(screening);
    let _ = writer.await; // every queued registration change reaches the database
    let _ = screen_writer.await;
    pool.close().await;
    Ok(())
}

/// The configured dialplan, checked: a `screen` action naming a profile the configuration
/// lacks is refused with its file and line, like any other mistake in the file.
pub fn load_dialplan(config: &Config) -> anyhow::Result<Dialplan> {
    let plan = Dialplan::from_config(config.dialplan.file.as_ref())?;
    for rule in &plan.rules {
        for action in &rule.actions {
            if let crate::dialplan::Action::Screen(profile) = action {
                anyhow::ensure!(
                    config.screening.has_profile(profile),
                    "{}:{}: rule {:?}: screen = {profile:?}: no [screening.profiles.{profile}] in the configuration",
                    plan.origin,
                    rule.line,
                    rule.name
                );
            }
        }
    }
    Ok(plan)
}

/// Start the media relay on the configured address, else on the SIP address.
fn start_relay(config: &Config, bound: &[(Transport, SocketAddr)]) -> anyhow::Result<Relay> {
    let m = &config.media;
    let address = match (m.address, bound.first()) {
        (Some(a), _) => a,
        (None, Some((_, sip))) if !sip.ip().is_unspecified() => sip.ip(),
        (None, Some((_, sip))) => reachable_host(*sip, &None)
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .unwrap_or(sip.ip()),
        (None, None) => IpAddr::from([127, 0, 0, 1]),
    };
    // Refuse at start, not at the first call, an address this machine does not have.
    StdUdp::bind((address, 0)).map_err(|e| {
        anyhow::anyhow!(
            "media.address {address}: cannot bind there ({e}); is it an address of this machine?"
        )
    })?;
    let relay = Relay::start(&RelayConfig {
        address,
        first_port: m.port_min,
        last_port: m.port_max,
        workers: m.workers,
        latching: m.latching(),
        coalesce: std::time::Duration::from_micros(m.coalesce_us),
        codecs: CodecOptions {
            opus_complexity: m.opus_complexity,
        },
    })
    .map_err(|e| anyhow::anyhow!("cannot start the media relay: {e}"))?;
    tracing::info!(%address, ports = %format!("{}-{}", m.port_min, m.port_max), free_pairs = relay.available(), "media relay ready");
    Ok(relay)
}

fn handle(core: &mut Core, transmitter: &mut transport::Transmitter, event: Inbound, now: Instant) {
    match event {
        Inbound::Message(m, from) => core.handle_message(*m, from, now, unix_now_ms()),
        Inbound::Garbage(from, why) => core.handle_garbage(&from, &why),
        Inbound::ConnOpened(id, addr, tx) => transmitter.on_opened(id, addr, tx),
        Inbound::ConnClosed(id) => transmitter.on_closed(id),
    }
}

/// What SIGHUP and the admin API's reload do alike: read the stored users and the TLS
/// files again (on an error the loaded ones stay, and the log says why), then the dialplan,
/// whose refusal is the answer.
async fn reload_all(
    core: &mut Core,
    pool: &sqlx::SqlitePool,
    tls: &crate::sip::tls::TlsContext,
    config: &Config,
) -> Result<serde_json::Value, String> {
    match crate::registrar::users::load(pool).await {
        Ok(users) => {
            core.registrar.set_stored_users(users);
            tracing::info!(users = core.registrar.user_count(), "users reloaded");
        }
        Err(e) => tracing::error!(error = %e, "cannot reload users; the known ones stay"),
    }
    match tls.reload() {
        Ok(()) => tracing::info!("TLS certificates reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "TLS reload refused; the loaded certificate stays")
        }
    }
    reload_dialplan(core, config)
}

/// Reload the dialplan (SIGHUP, the admin API): a bad file leaves the running plan in
/// place and says why.
fn reload_dialplan(core: &mut Core, config: &Config) -> Result<serde_json::Value, String> {
    let plan = load_dialplan(config)
        .map_err(|e| format!("dialplan {e}; the previous plan stays active"))?;
    let answer =
        serde_json::json!({"reloaded": plan.origin.to_string(), "rules": plan.rules.len()});
    core.set_dialplan(plan);
    Ok(answer)
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
            })
        })
        .collect();
    serde_json::Value::Array(rows)
}

/// What /metrics shows, gathered in one go.
fn metrics_snapshot(
    core: &Core,
    engine: &crate::screening::Engine,
    cdr: &CdrStatus,
    journalled: u64,
    started: &VecDeque<(Instant, u64)>,
    draining: bool,
) -> Snapshot {
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
        screening: engine
            .counts
            .iter()
            .map(|((decision, check), n)| (decision.to_string(), check.to_string(), *n))
            .collect(),
        sip_malformed_answered: core.stats.malformed_answered,
        sip_malformed_dropped: core.stats.malformed_dropped,
        cdr_stored: cdr.written.load(Ordering::Relaxed),
        cdr_write_failures: cdr.failures.load(Ordering::Relaxed),
        cdr_queue_depth: journalled.saturating_sub(cdr.written_this_run.load(Ordering::Relaxed)),
        cdr_spool_bytes: cdr.backlog_bytes.load(Ordering::Relaxed),
        cdr_database_up: cdr.database_up.load(Ordering::Relaxed),
        draining,
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
    }
}

/// The pid file of the running server, removed when it stops.
struct PidFile(std::path::PathBuf);

impl PidFile {
    fn write(path: &std::path::Path) -> anyhow::Result<PidFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("server.pid_file {}: {e}", path.display()))?;
        }
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| anyhow::anyhow!("server.pid_file {}: {e}", path.display()))?;
        Ok(PidFile(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// SIGHUP: reload the dialplan.
fn reload_signal() -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot watch SIGHUP: {e}"))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

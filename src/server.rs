//! The async driver: binds transports, opens the database, and runs the sans-IO core on one
//! task, feeding it messages and time and carrying out what it asks (send, store).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdp};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use warden_media::codec::CodecOptions;
use warden_media::{Relay, RelayConfig};

use crate::config::Config;
use crate::core::{Core, Output};
use crate::dialplan::Dialplan;
use crate::registrar::{Registrar, store};
use crate::sip::message::Limits;
use crate::sip::transport::{self, Inbound, Transport};

/// Wall-clock seconds since the Unix epoch (0 on a clock set before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
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

/// Run Warden until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let pool = store::open(&config.database.path).await?;
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
    let (mut transmitter, bound) =
        transport::start(&config.listen()?, limits, idle, inbound_tx).await?;
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
    let registrar = Registrar::new(config.registrar.clone(), loaded);
    // What a reload reads (the dialplan file, and the profiles it may name).
    let reload_config = config.clone();
    let resolver = crate::dns::resolver(&config.dns)?;
    let enum_suffix = config.dns.enum_suffix.clone();
    let (resolved_tx, mut resolved) = mpsc::unbounded_channel();
    let plan = load_dialplan(&config)?;
    let pid_file = PidFile::write(&config.server.pid_file)?;
    let mut core = Core::new(config, registrar, advertised, relay, prompts);
    core.set_dialplan(plan);
    let mut shutdown = Box::pin(shutdown_signal());
    let mut reload = reload_signal()?;
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(60));

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
                core.handle_timeout(Instant::now(), unix_now());
            }
            _ = sweep.tick() => screening.engine.sweep(unix_now()),
            Some(event) = screening_events.recv() => screening.handle(&mut core, event),
            Some((command, reply)) = asks.recv() => {
                let answer = crate::screening::admin::run(&mut screening.engine, command, unix_now());
                screening.flush();
                let _ = reply.send(answer);
            }
            _ = reload.recv() => {
                // A bad file leaves the running plan in place.
                match load_dialplan(&reload_config) {
                    Ok(plan) => core.set_dialplan(plan),
                    Err(e) => tracing::error!(error = %e, "dialplan reload refused; the previous plan stays active"),
                }
            }
            _ = &mut shutdown => {
                tracing::info!(active_calls = core.active_calls(), "shutting down");
                break;
            }
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
    }
    drop(pid_file);
    if let Some(admin) = admin {
        admin.abort();
    }
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
        Inbound::Message(m, from) => core.handle_message(*m, from, now, unix_now()),
        Inbound::Garbage(from, why) => core.handle_garbage(&from, &why),
        Inbound::ConnOpened(id, addr, tx) => transmitter.on_opened(id, addr, tx),
        Inbound::ConnClosed(id) => transmitter.on_closed(id),
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

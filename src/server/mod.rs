//! The async driver: binds transports, opens the database, starts the relay and the
//! writers (`setup`), then runs the sans-IO core on one task (`event_loop::Loop`) and
//! closes what outlives it (`Stores`).

mod event_loop;
mod file_limit;
mod lane;
mod records;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdp};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use warden_media::codec::CodecOptions;
use warden_media::{Relay, RelayConfig};

use crate::cdr::journal::{Journal, Syncer};
use crate::cdr::store::Store as CdrStore;
use crate::cdr::writer::{Status as CdrStatus, Writer as CdrWriter};
use crate::clock::unix_now;
use crate::config::Config;
use crate::core::Core;
use crate::dialplan::Dialplan;
use crate::registrar::{Registrar, store};
use crate::shard::Shard;
use crate::sip::message::Limits;
use crate::sip::transport::{self, Transport};

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
    let (parts, stores) = setup(config).await?;
    let served = event_loop::run_on_own_thread(parts).await;
    stores.close().await;
    served
}

/// What outlives the signalling loop and is closed after it, in this order: the admin
/// API, the CDR writer (it stores what the journal still holds), the registration and
/// screening writers (they finish their queues), the database.
struct Stores {
    pid_file: PidFile,
    admin: Option<tokio::task::JoinHandle<()>>,
    /// The purge of records past `cdr.retention_days`, when there is a term.
    retention: Option<tokio::task::JoinHandle<()>>,
    cdr_stop: watch::Sender<bool>,
    cdr_writer: tokio::task::JoinHandle<()>,
    cdr_store: CdrStore,
    writer: tokio::task::JoinHandle<()>,
    screen_writer: tokio::task::JoinHandle<()>,
    pool: sqlx::SqlitePool,
}

impl Stores {
    async fn close(self) {
        drop(self.pid_file);
        for task in [self.admin, self.retention].into_iter().flatten() {
            task.abort();
        }
        // The writer stores what is left (when the database is there; else it stays in the
        // journal for the next start).
        let _ = self.cdr_stop.send(true);
        if tokio::time::timeout(Duration::from_secs(10), self.cdr_writer)
            .await
            .is_err()
        {
            tracing::warn!(
                "call records still being written after 10 s; the journal keeps the rest"
            );
        }
        self.cdr_store.close().await;
        let _ = self.writer.await; // every queued registration change reaches the database
        let _ = self.screen_writer.await;
        self.pool.close().await;
    }
}

/// Open the database and the journal, bind the transports, start the relay, the admin
/// API and the writers, and build the core: everything the loop needs, nothing running
/// on it yet.
async fn setup(config: Config) -> anyhow::Result<(event_loop::Parts, Stores)> {
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
    let lanes = config.server.shard_count();
    let (mut inbound_txs, mut inbounds) = (Vec::new(), Vec::new());
    for _ in 0..lanes {
        let (tx, rx) = mpsc::channel(8192);
        inbound_txs.push(tx);
        inbounds.push(rx);
    }
    let inbox = transport::Inbox::new(inbound_txs);
    let idle = std::time::Duration::from_secs(config.sip.tcp_idle_timeout_s);
    let tls = crate::sip::tls::TlsContext::load(&config.sip.tls)?;
    let listeners = transport::bind(&config.listen()?, config.sip.udp_receive_buffer_bytes).await?;
    let bound = listeners.bound.clone();
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
    // Recordings the last run left are completed and queued for upload before any new one.
    let recording_stats = Arc::new(crate::recording::RecordingStats::default());
    relay.set_recording_sink(crate::recording::start(&config, recording_stats.clone())?);
    let (mut medias, media_events) = lane_media(relay, lanes);
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
    let (ask_tx, asks) = mpsc::channel::<crate::api::Ask>(64);
    let events = Arc::new(crate::events::Hub::new(config.admin.event_queue));
    let admin = match config.admin.address()? {
        Some(addr) => {
            // The certificate is served beside the jCard.
            let url = config.jcard_url();
            let base = url
                .strip_suffix("/jcard")
                .map_or_else(|| format!("https://{addr}"), str::to_owned);
            let jcard = crate::api::jcard::Jcard::new(&config.screening.jcard, &base)?;
            // The self-signed certificate, when Warden makes one, names every host the
            // API is reached by.
            let mut names = vec!["localhost".to_owned(), addr.ip().to_string()];
            if let Some(host) = url_host(&url).filter(|h| !names.iter().any(|n| n == h)) {
                names.push(host.to_owned());
            }
            let tls = crate::api::listener::acceptor(&config.admin, &names)?;
            Some(
                crate::api::serve(
                    addr,
                    tls,
                    config.admin.token.clone(),
                    std::sync::Arc::new(jcard),
                    ask_tx,
                    cdr_store.clone(),
                    events.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let (screen_tx, screen_rx) = mpsc::unbounded_channel();
    let screen_writer = tokio::spawn(crate::screening::store::writer(pool.clone(), screen_rx));
    let (mut screening, screening_events) =
        crate::screening::driver::Driver::new(&config.screening, engine, screen_tx)?;
    let (mut shared_registrations, mut shared_edits, mut cluster_redis) = (None, None, None);
    let cluster_config = config.cluster.clone();
    if let Some(cluster) = &config.cluster {
        let redis = crate::cluster::Redis::start(cluster)?;
        let shared = crate::cluster::usage::SharedUsage::new(
            redis.clone(),
            &cluster.node,
            Duration::from_secs(cluster.lease_s),
        );
        screening.share_counts(shared, cluster.refuses_when_down());
        let (registrations, heard) = crate::cluster::registrations::Registrations::start(
            redis.clone(),
            redis.client(),
            cluster.node.clone(),
            u64::from(config.registrar.max_expires) + 60,
        );
        shared_registrations = Some(event_loop::SharedRegistrations {
            registrations,
            heard,
        });
        let (edits, heard) =
            crate::cluster::edits::Edits::start(redis.clone(), cluster.node.clone());
        cluster_redis = Some(redis);
        shared_edits = Some(event_loop::SharedEdits { edits, heard });
        tracing::info!(node = %cluster.node, on_redis_down = %cluster.on_redis_down, "cluster: registrations and callers' counts shared in Redis");
    }
    let mut registrar = Registrar::new(config.registrar.clone(), loaded);
    let reloads = event_loop::Reloads {
        pool: pool.clone(),
        shared: config.cluster.as_ref().map(|_| cdr_store.clone()),
        tls: tls.clone(),
        config: config.clone(),
    };
    // The cluster's shared users follow once the loop runs (it does not wait on the shared
    // database, which may be away).
    registrar.set_stored_users(crate::registrar::users::load(&pool).await?);
    tracing::info!(users = registrar.user_count(), "users who may authenticate");
    if registrar.user_count() == 0 && (config.registrar.auth || config.calls.auth) {
        tracing::warn!(
            "authentication is on (registrar.auth or calls.auth) but there are no users: add them under [[registrar.users]] or with `warden user add`"
        );
    }
    let resolver = crate::dns::resolver(&config.dns)?;
    let plan = load_dialplan(&config)?;
    let pid_file = PidFile::write(&config.server.pid_file)?;
    let stopping = lane::Stopping::new(&config.server);
    let dns = event_loop::Dns {
        resolver,
        enum_suffix: config.dns.enum_suffix.clone(),
    };
    let (batch, gather, fsync_ms, spool_max_bytes, retention_days) = (
        config.cdr.batch,
        Duration::from_millis(config.cdr.write_interval_ms),
        config.cdr.fsync_interval_ms,
        config.cdr.spool_max_bytes,
        config.cdr.retention_days,
    );
    // Each lane encodes the prompts it plays itself (they are encoded on first use).
    let mut lane_prompts = Vec::new();
    for _ in 1..lanes {
        lane_prompts.push(crate::prompts::load(&config)?);
    }
    let leader_media = medias.remove(0);
    let mut core = Core::new(config, registrar, advertised, leader_media, prompts);
    core.set_dialplan(plan);
    core.set_event_listeners(events.listeners());
    core.set_shard(Shard {
        index: 0,
        count: lanes,
    });
    let mut inbounds = inbounds.into_iter();
    let mut media_events = media_events.into_iter();
    let (Some(inbound), Some(leader_media_events)) = (inbounds.next(), media_events.next()) else {
        anyhow::bail!("internal: no queue for the first signalling lane");
    };
    let followers: Vec<event_loop::Follower> = medias
        .into_iter()
        .zip(lane_prompts)
        .zip(inbounds.zip(media_events))
        .enumerate()
        .map(
            |(k, ((media, prompts), (inbound, media_events)))| event_loop::Follower {
                core: core.sibling(
                    Shard {
                        index: k + 1,
                        count: lanes,
                    },
                    media,
                    prompts,
                ),
                inbound,
                media_events,
            },
        )
        .collect();
    if lanes > 1 {
        tracing::info!(lanes, "signalling sharded by Call-ID");
    }

    // The CDR writer stores what the loop journals.
    let cdr_status = Arc::new(CdrStatus::default());
    let cdr_wake = Arc::new(Notify::new());
    let (cdr_stop, cdr_stop_rx) = watch::channel(false);
    let mut billing_stream = None;
    if let (Some(redis), Some(cluster)) = (&cluster_redis, &cluster_config) {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(crate::cluster::stream::run(
            redis.clone(),
            rx,
            cluster.cdr_stream_max_len,
            redis.stream.clone(),
        ));
        tokio::spawn(crate::cluster::nodes::watch(
            redis.clone(),
            cluster.node.clone(),
            core.boot().to_owned(),
            Duration::from_secs(cluster.lease_s),
            cdr_store.clone(),
            tx.clone(),
        ));
        billing_stream = Some(tx);
        if cdr_store.kind != "postgres" {
            tracing::warn!(
                "cluster: call records go to this node's own SQLite; set cdr.url to the cluster's PostgreSQL so every node's records are in one place and a lost node's open records are closed by a survivor"
            );
        }
    }
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
            gather,
            closed: billing_stream,
        }
        .run(),
    );
    let syncer = match fsync_ms {
        0 => None,
        ms => Some(
            Syncer::start(&journal, Duration::from_millis(ms)).map_err(|e| {
                anyhow::anyhow!(
                    "cdr.journal {}: cannot start its syncer: {e}",
                    journal.path().display()
                )
            })?,
        ),
    };
    let records = records::Records::new(journal, syncer, cdr_wake, cdr_status, spool_max_bytes);
    let parts = event_loop::Parts {
        core,
        sip: event_loop::Sip {
            listeners,
            limits,
            idle,
            tls: tls.clone(),
            inbox,
        },
        inbound,
        media_events: leader_media_events,
        screening,
        screening_events,
        asks,
        store_tx,
        records,
        dns,
        reloads,
        stopping,
        shared_registrations,
        shared_edits,
        followers,
        events,
        recording_stats,
    };
    let retention = (retention_days > 0)
        .then(|| tokio::spawn(crate::cdr::store::retain(cdr_store.clone(), retention_days)));
    let stores = Stores {
        pid_file,
        admin,
        retention,
        cdr_stop,
        cdr_writer,
        cdr_store,
        writer,
        screen_writer,
        pool,
    };
    Ok((parts, stores))
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

/// The relay as each of `lanes` holds it (the relay itself with one lane; sharded, a
/// handle each on one relay), and the queue each lane's media events arrive on.
fn lane_media(
    mut relay: Relay,
    lanes: usize,
) -> (
    Vec<Box<dyn crate::media::Media>>,
    Vec<mpsc::UnboundedReceiver<warden_media::MediaEvent>>,
) {
    use crate::media::shared::{Owners, ShardMedia, owner_of};
    // Media events arrive from the relay's threads; each lane hands its own to its core.
    let (mut senders, mut queues) = (Vec::new(), Vec::new());
    for _ in 0..lanes {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        queues.push(rx);
    }
    let owners = Owners::default();
    let stream_owners = owners.clone();
    relay.set_event_sink(Arc::new(move |event| {
        let lane = match senders.len() {
            1 => 0,
            _ => owner_of(&stream_owners, &event),
        };
        if let Some(tx) = senders.get(lane) {
            let _ = tx.send(event);
        }
    }));
    // The loops flush the relay's commands once per turn.
    relay.batch_wakes();
    let medias = match lanes {
        1 => vec![Box::new(relay) as Box<dyn crate::media::Media>],
        n => ShardMedia::split(relay, n, owners)
            .into_iter()
            .map(|m| Box::new(m) as Box<dyn crate::media::Media>)
            .collect(),
    };
    (medias, queues)
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
    // One socket per port, plus the signalling, database and admin descriptors.
    let ports = u64::from(m.port_max - m.port_min) + 1;
    file_limit::raise_to_fit(ports + 1024);
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

/// The host of an http(s) URL ("[::1]" unbracketed), for a certificate's names.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::url_host;

    #[test]
    fn a_urls_host_for_the_certificate() {
        assert_eq!(
            url_host("https://warden.example.net:8443/jcard"),
            Some("warden.example.net")
        );
        assert_eq!(
            url_host("https://[2001:db8::1]:8088/jcard"),
            Some("2001:db8::1")
        );
        assert_eq!(url_host("https://127.0.0.1/jcard"), Some("127.0.0.1"));
        assert_eq!(url_host("no scheme"), None);
    }
}

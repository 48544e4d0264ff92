//! `[cluster]`: several Warden nodes behind a SIP load balancer sharing live state in
//! Redis. This module owns the Redis connection and its health; `usage` the shared counts.
//!
//! The connection is made in the background and remade after a failure, so a node starts
//! and serves with Redis down (by `on_redis_down`) and picks Redis up when it returns.

pub mod edits;
pub mod nodes;
pub mod registrations;
pub mod stream;
pub mod usage;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name: distinct per node, it names the node's live calls in Redis and
    /// its call records (`instance`).
    pub node: String,
    /// `redis://HOST:PORT/DB` (or `rediss://` for TLS, `redis+unix:///path`).
    pub redis_url: String,
    /// What a call meets when Redis cannot be reached: `local` screens it on this node's
    /// own counts (the cluster's limits then hold per node), `refuse` answers 503 so the
    /// load balancer or the caller tries elsewhere.
    pub on_redis_down: String,
    /// How long a node's live call counts without the node renewing it: a node that dies
    /// stops holding its callers' live-call slots after this long.
    pub lease_s: u64,
    /// How long one Redis request may take before it counts as a failure.
    pub redis_timeout_ms: u64,
    /// About how many closed call records the billing stream (`warden:cdrs`) keeps.
    pub cdr_stream_max_len: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node: String::new(),
            redis_url: "redis://127.0.0.1:6379".into(),
            on_redis_down: "local".into(),
            lease_s: 30,
            redis_timeout_ms: 250,
            cdr_stream_max_len: 100_000,
        }
    }
}

impl ClusterConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.node.is_empty(),
            "cluster.node: every node needs a name of its own"
        );
        anyhow::ensure!(
            self.node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "cluster.node {:?}: letters, digits, '-', '_' and '.' only",
            self.node
        );
        redis::Client::open(self.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("cluster.redis_url {:?}: {e}", self.redis_url))?;
        anyhow::ensure!(
            matches!(self.on_redis_down.as_str(), "local" | "refuse"),
            "cluster.on_redis_down {:?}: `local` or `refuse`",
            self.on_redis_down
        );
        anyhow::ensure!(self.lease_s >= 3, "cluster.lease_s must be at least 3");
        anyhow::ensure!(
            self.cdr_stream_max_len > 0,
            "cluster.cdr_stream_max_len must be above 0"
        );
        anyhow::ensure!(
            self.redis_timeout_ms > 0,
            "cluster.redis_timeout_ms must be above 0"
        );
        Ok(())
    }

    pub fn refuses_when_down(&self) -> bool {
        self.on_redis_down == "refuse"
    }
}

/// How often the connection's health is checked (and a lost connection retried).
const HEALTH_PROBE: Duration = Duration::from_secs(1);

/// Redis as this node sees it: the connection once made, and how requests fared.
pub struct Redis {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    up: AtomicBool,
    failures: AtomicU64,
    /// When the last "Redis unreachable" line was logged (unix seconds), for rate limiting.
    last_logged_s: AtomicU64,
    timeout: Duration,
    /// The billing stream's progress.
    pub stream: Arc<stream::StreamStatus>,
}

/// What /metrics reports about Redis.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisHealth {
    pub up: bool,
    pub failures: u64,
    /// Closed records appended to the billing stream, and dropped from it (held too long
    /// while Redis was away; the database has them).
    pub stream_appended: u64,
    pub stream_dropped: u64,
}

impl Redis {
    /// Start connecting to `config.redis_url` in the background; the handle is usable at
    /// once (requests fail, and count, until the connection is made).
    pub fn start(config: &ClusterConfig) -> anyhow::Result<Arc<Redis>> {
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("cluster.redis_url: {e}"))?;
        let redis = Arc::new(Redis {
            client: client.clone(),
            connection: Mutex::new(None),
            up: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            last_logged_s: AtomicU64::new(0),
            timeout: Duration::from_millis(config.redis_timeout_ms),
            stream: Arc::default(),
        });
        let timeout = redis.timeout;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(timeout)
            .set_connection_timeout(timeout.max(Duration::from_secs(1)))
            // Reconnects run in the background: never longer than a second apart.
            .set_max_delay(1_000);
        let handle = redis.clone();
        let url = redacted(&config.redis_url);
        tokio::spawn(async move {
            let mut manager = loop {
                match ConnectionManager::new_with_config(client.clone(), manager_config.clone())
                    .await
                {
                    Ok(manager) => break manager,
                    Err(e) => {
                        handle.failed("connect", &e);
                        tokio::time::sleep(HEALTH_PROBE).await;
                    }
                }
            };
            tracing::info!(redis = %url, "cluster: connected to Redis");
            handle.up.store(true, Ordering::Relaxed);
            *handle.lock() = Some(manager.clone());
            // A PING a second: the health gauge holds with no calls, and a broken
            // connection is remade before the next call needs it.
            loop {
                tokio::time::sleep(HEALTH_PROBE).await;
                let ping = async { redis::cmd("PING").query_async::<String>(&mut manager).await };
                match tokio::time::timeout(handle.timeout, ping).await {
                    Ok(Ok(_)) => handle.succeeded(),
                    Ok(Err(e)) => handle.failed("ping", &e),
                    Err(_) => handle.failed("ping", &"no answer in time"),
                }
            }
        });
        Ok(redis)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ConnectionManager>> {
        // A panic while holding this lock cannot leave the Option half-written.
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection, when made (cheap to clone: one multiplexed connection underneath).
    pub fn connection(&self) -> Option<ConnectionManager> {
        self.lock().clone()
    }

    /// The client, for connections of their own (a subscription).
    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// How long one request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Await one request (a future made with this node's connection), at most `timeout`,
    /// and note how it went: a reconnecting client would otherwise hold its caller for
    /// its whole retry schedule.
    pub async fn timed<T>(
        &self,
        what: &str,
        timeout: Duration,
        reply: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.failed(what, &e);
                Err(e.to_string())
            }
            Err(_) => {
                self.failed(what, &"no answer in time");
                Err("no answer in time".into())
            }
        }
    }

    /// Run `pipe` once on this node's connection, within `timeout`.
    pub async fn run(
        &self,
        what: &str,
        pipe: &redis::Pipeline,
        timeout: Duration,
    ) -> Result<(), String> {
        let Some(mut conn) = self.connection() else {
            self.failed(what, &"not connected");
            return Err("not connected".into());
        };
        self.timed(what, timeout, async {
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }

    /// Run `pipe` until Redis takes it, backing off up to 5 s between tries: for writes
    /// that must not be skipped, in the order they are delivered.
    pub async fn deliver(&self, what: &str, pipe: &redis::Pipeline) {
        let mut delay = Duration::from_millis(100);
        while self.run(what, pipe, self.timeout).await.is_err() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// A request succeeded: Redis is up.
    pub fn succeeded(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::warn!("cluster: Redis answers again; shared counting resumes");
        }
    }

    /// A request failed: count it, mark Redis down, and say so at most once a minute.
    pub fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let was_up = self.up.swap(false, Ordering::Relaxed);
        let now = crate::clock::unix_now();
        let last = self.last_logged_s.load(Ordering::Relaxed);
        if was_up || now.saturating_sub(last) >= 60 {
            self.last_logged_s.store(now, Ordering::Relaxed);
            tracing::error!(
                request = what,
                error = %error,
                "cluster: Redis unreachable; calls follow cluster.on_redis_down"
            );
        }
    }

    pub fn health(&self) -> RedisHealth {
        RedisHealth {
            up: self.up.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            stream_appended: self.stream.appended.load(Ordering::Relaxed),
            stream_dropped: self.stream.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The URL with any password replaced, for logs.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redacted("redis://:secret@10.0.0.5:6379/0"),
            "redis://***@10.0.0.5:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1"), "redis://127.0.0.1");
    }

    #[test]
    fn a_node_needs_a_name_and_a_known_policy() {
        let mut c = ClusterConfig::default();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("cluster.node")
        );
        c.node = "a".into();
        c.validate().expect("valid");
        c.on_redis_down = "maybe".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("on_redis_down")
        );
        c.on_redis_down = "refuse".into();
        c.redis_url = "http://x".into();
        assert!(c.validate().unwrap_err().to_string().contains("redis_url"));
    }
}

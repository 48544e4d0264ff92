//! Screening's I/O around the pure engine: fetching STIR certificates (cached), asking
//! analytics engines, writing state and decisions behind the calls. Owned by the server
//! loop; slow work runs on tasks that report back as [`Event`]s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::analytics::{self, Engines, Judgement};
use super::profile::ScreeningConfig;
use super::profile::{Answer, Verdict};
use super::stir::{self, Policy};
use super::store::{DecisionRecord, Write};
use super::usage::{Shared, UsageChange};
use super::{Act, Finding};
use super::{Decision, Engine, Outcome, Request};
use crate::cluster::usage::{Counted, SharedUsage};

/// A decision on a call, for the core (`Core::handle_screened`).
#[derive(Debug)]
pub struct Decided {
    pub call: u64,
    pub outcome: Outcome,
}

/// What a task reports back.
pub enum Event {
    /// A certificate fetched for a call's STIR verification (or why not).
    Fetched {
        request: Request,
        url: String,
        result: Result<(Vec<u8>, Duration), String>,
    },
    /// An analytics engine's judgement on a call the local checks let through.
    Judged {
        request: Request,
        outcome: Outcome,
        engine: String,
        judgement: Result<Judgement, String>,
        fail_closed: bool,
    },
    /// The call counted in the cluster's shared figures (or why not).
    Counted {
        request: Request,
        counted: Counted,
        figures: Result<Shared, String>,
    },
}

/// `[cluster]` counting: the shared figures, what Redis being down means, and the calls
/// this node counted there (until they end).
struct Cluster {
    usage: SharedUsage,
    refuse_when_down: bool,
    counted: HashMap<u64, Counted>,
}

/// A fetched x5u: the PEM (or the failure) and until when it may be used.
struct Cached {
    pem: Result<Arc<Vec<u8>>, String>,
    until: Instant,
}

/// How long a failed fetch is remembered, so a dead repository costs one timeout a minute.
const FAILED_FETCH_KEPT: Duration = Duration::from_secs(60);

pub struct Driver {
    pub engine: Engine,
    analytics: Engines,
    fetcher: reqwest::Client,
    anchors: Vec<Vec<u8>>,
    policy: Policy,
    default_cache: Duration,
    certificates: HashMap<String, Cached>,
    writes: mpsc::UnboundedSender<Write>,
    events: mpsc::UnboundedSender<Event>,
    cluster: Option<Cluster>,
}

impl Driver {
    /// Set up around `engine`; the receiver yields the tasks' [`Event`]s for [`Driver::handle`].
    pub fn new(
        config: &ScreeningConfig,
        engine: Engine,
        writes: mpsc::UnboundedSender<Write>,
    ) -> anyhow::Result<(Driver, mpsc::UnboundedReceiver<Event>)> {
        let s = &config.stir;
        let mut anchors = Vec::new();
        for path in &s.trust_anchors {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("screening.stir.trust_anchors {}: {e}", path.display())
            })?;
            let certificates = stir::pem_certificates(&pem);
            anyhow::ensure!(
                !certificates.is_empty(),
                "screening.stir.trust_anchors {}: no PEM certificate in it",
                path.display()
            );
            anchors.extend(certificates);
        }
        let mut fetcher = reqwest::Client::builder()
            .timeout(Duration::from_millis(s.fetch_timeout_ms))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &s.fetch_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("screening.stir.fetch_ca_file {}: {e}", path.display())
            })?;
            let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                anyhow::anyhow!("screening.stir.fetch_ca_file {}: {e}", path.display())
            })?;
            fetcher = fetcher.add_root_certificate(ca);
        }
        let (events, rx) = mpsc::unbounded_channel();
        Ok((
            Driver {
                engine,
                analytics: Engines::new(&config.analytics).map_err(anyhow::Error::msg)?,
                fetcher: fetcher.build()?,
                anchors,
                policy: Policy {
                    max_age_s: s.max_age_s,
                    allowed_ports: s.x5u_ports.clone(),
                },
                default_cache: Duration::from_secs(s.default_cache_s),
                certificates: HashMap::new(),
                writes,
                events,
                cluster: None,
            },
            rx,
        ))
    }

    /// Count calls in the cluster's shared figures from now on.
    pub fn share_counts(&mut self, usage: SharedUsage, refuse_when_down: bool) {
        self.cluster = Some(Cluster {
            usage,
            refuse_when_down,
            counted: HashMap::new(),
        });
    }

    /// Screen a call the core asked about: in a cluster, count it in the shared figures
    /// first; then STIR (fetching its certificate unless cached), the engine's rules and
    /// the profile's analytics engine. The decision when it is known at once; else it
    /// comes from `handle` once a task reports back.
    pub fn start(&mut self, request: Request) -> Option<Decided> {
        let counting = self.engine.counting(&request);
        let (Some(cluster), Some(counting)) = (&self.cluster, counting) else {
            return self.verify(request);
        };
        let counted = Counted {
            user: request.user.clone(),
            call: request.call,
            minute: request.now / 60,
            international: counting.international,
        };
        let (usage, events) = (cluster.usage.clone(), self.events.clone());
        tokio::spawn(async move {
            let now_ms = crate::clock::unix_now_ms().max(request.now * 1000);
            let figures = usage
                .reserve(&counted, &request.callee, request.source, now_ms, counting)
                .await;
            let _ = events.send(Event::Counted {
                request,
                counted,
                figures,
            });
        });
        None
    }

    /// STIR verification, then the rules.
    fn verify(&mut self, mut request: Request) -> Option<Decided> {
        let identity = request
            .identity
            .clone()
            .filter(|_| self.engine.verifies_stir(&request.profile));
        let Some(identity) = identity else {
            return self.rules(request);
        };
        let Some(url) = stir::x5u(&identity) else {
            // Unparseable: verification says why, without fetching anything.
            request.stir = Some(self.check_stir(&request, &identity, Err("no x5u".into())));
            return self.rules(request);
        };
        let now = Instant::now();
        if let Some(cached) = self.certificates.get(&url).filter(|c| c.until > now) {
            let pem = cached.pem.clone();
            let pem = pem.as_ref().map(|p| p.as_slice()).map_err(String::clone);
            request.stir = Some(self.check_stir(&request, &identity, pem));
            return self.rules(request);
        }
        if stir::x5u_allowed(&url, &self.policy).is_err() {
            // Never fetched: verification refuses the URL itself.
            request.stir = Some(self.check_stir(&request, &identity, Err("not fetched".into())));
            return self.rules(request);
        }
        let (client, events, default_cache) = (
            self.fetcher.clone(),
            self.events.clone(),
            self.default_cache,
        );
        tokio::spawn(async move {
            let result = fetch(&client, &url, default_cache).await;
            let _ = events.send(Event::Fetched {
                request,
                url,
                result,
            });
        });
        None
    }

    /// A task reported back: the decision, unless another task now works on the call.
    pub fn handle(&mut self, event: Event) -> Option<Decided> {
        match event {
            Event::Fetched {
                mut request,
                url,
                result,
            } => {
                let now = Instant::now();
                let cached = match result {
                    Ok((pem, ttl)) => Cached {
                        pem: Ok(Arc::new(pem)),
                        until: now + ttl,
                    },
                    Err(e) => {
                        tracing::warn!(%url, error = %e, "STIR certificate not fetched");
                        Cached {
                            pem: Err(e),
                            until: now + FAILED_FETCH_KEPT,
                        }
                    }
                };
                let identity = request.identity.clone().unwrap_or_default();
                let pem = cached
                    .pem
                    .as_ref()
                    .map(|p| p.as_slice())
                    .map_err(String::clone);
                request.stir = Some(self.check_stir(&request, &identity, pem));
                self.certificates.insert(url, cached);
                self.rules(request)
            }
            Event::Judged {
                request,
                mut outcome,
                engine,
                judgement,
                fail_closed,
            } => {
                self.analytics
                    .record(&engine, judgement.is_ok(), Instant::now());
                self.engine.apply_analytics(
                    &mut outcome,
                    &request.profile,
                    &engine,
                    judgement,
                    fail_closed,
                );
                Some(self.decide(&request, outcome))
            }
            Event::Counted {
                mut request,
                counted,
                figures,
            } => {
                let cluster = self.cluster.as_mut()?;
                match figures {
                    Ok(shared) => {
                        request.shared = Some(shared);
                        cluster.counted.insert(request.call, counted);
                    }
                    Err(e) if cluster.refuse_when_down => {
                        tracing::warn!(call = request.call, error = %e, "refused: the cluster's counts are out of reach (cluster.on_redis_down = refuse)");
                        return Some(self.decide(&request, unreachable_counts()));
                    }
                    // On this node's own counts (the failure is logged and counted).
                    Err(_) => {}
                }
                self.verify(request)
            }
        }
    }

    /// The caller keyed in the right code. (In a cluster the call stays counted from its
    /// reservation on: a challenged call counts as an attempt whether or not it passes.)
    pub fn challenge_passed(&mut self, call: u64, now: u64) {
        self.engine.challenge_passed(call, now);
        self.flush();
    }

    /// A screened call ended after `answered_s` seconds of talk.
    pub fn call_ended(&mut self, call: u64, answered_s: u64, now: u64) {
        let premium_short = self.engine.call_ended(call, answered_s, now);
        self.flush();
        let Some(counted) = self.cluster.as_mut().and_then(|c| c.counted.remove(&call)) else {
            return;
        };
        if let Some(usage) = self.cluster.as_ref().map(|c| c.usage.clone()) {
            tokio::spawn(async move {
                usage.ended(&counted, now, answered_s, premium_short).await;
            });
        }
    }

    /// Renew the leases of the calls this node counted as live (every third of a lease).
    pub fn renew_leases(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let calls = cluster
            .counted
            .values()
            .map(|c| (c.user.clone(), c.call))
            .collect();
        let usage = cluster.usage.clone();
        tokio::spawn(async move {
            usage.renew(calls, crate::clock::unix_now_ms()).await;
        });
    }

    /// Redis as the shared counts see it; None outside a cluster.
    pub fn cluster_health(&self) -> Option<crate::cluster::RedisHealth> {
        self.cluster.as_ref().map(|c| c.usage.redis().health())
    }

    /// How often `renew_leases` must run; None outside a cluster.
    pub fn lease_renewal(&self) -> Option<Duration> {
        self.cluster.as_ref().map(|c| c.usage.lease() / 3)
    }

    fn check_stir(
        &self,
        request: &Request,
        identity: &str,
        pem: Result<&[u8], String>,
    ) -> stir::Stir {
        // The caller's number (PAI, else From) and the number called.
        let result = stir::verify(
            identity,
            &request.caller_number,
            &request.callee,
            request.now as i64,
            pem,
            &self.anchors,
            &self.policy,
        );
        tracing::info!(
            call = request.call,
            verstat = result.verstat(),
            ?result,
            "STIR verification"
        );
        result
    }

    /// The engine's rules, then the analytics engine when the profile asks one.
    fn rules(&mut self, request: Request) -> Option<Decided> {
        let outcome = self.engine.screen(&request);
        self.flush();
        let engine = self
            .engine
            .analytics_for(&request.profile)
            .filter(|_| outcome.decision == Decision::Allow && !outcome.trusted);
        let Some(name) = engine else {
            return Some(self.decide(&request, outcome));
        };
        match self.analytics.admit(&name, Instant::now()) {
            Some(Ok(config)) => {
                // Asked off the loop: other calls go on while the engine thinks.
                let (client, events) = (self.analytics.client.clone(), self.events.clone());
                tokio::spawn(async move {
                    let judgement = analytics::ask(&client, &config, &request.query()).await;
                    let fail_closed = config.on_error == "block";
                    let _ = events.send(Event::Judged {
                        request,
                        outcome,
                        engine: name,
                        judgement,
                        fail_closed,
                    });
                });
                None
            }
            Some(Err(config)) => {
                let mut outcome = outcome;
                let judgement = Err("circuit open (the engine kept failing)".into());
                let fail_closed = config.on_error == "block";
                self.engine.apply_analytics(
                    &mut outcome,
                    &request.profile,
                    &name,
                    judgement,
                    fail_closed,
                );
                Some(self.decide(&request, outcome))
            }
            None => Some(self.decide(&request, outcome)),
        }
    }

    /// Count and log the decision, for the call. A call counted in the cluster's figures
    /// but refused (or from a trusted source after all) is taken back out.
    fn decide(&mut self, request: &Request, outcome: Outcome) -> Decided {
        self.engine.count(&outcome);
        if matches!(outcome.decision, Decision::Block(_)) || outcome.trusted {
            self.uncount(request.call);
        }
        let _ = self.writes.send(Write::Decision(DecisionRecord {
            call_id: request.call_id.clone(),
            at: request.now,
            user: request.user.clone(),
            callee: request.callee.clone(),
            source: request.source.to_string(),
            profile: request.profile.clone(),
            decision: outcome.decision.name().to_owned(),
            verdict: match &outcome.decision {
                Decision::Block(v) => Some(v.name()),
                _ => None,
            },
            score: outcome.score,
            reason: outcome.reason(),
        }));
        Decided {
            call: request.call,
            outcome,
        }
    }

    fn uncount(&mut self, call: u64) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if let Some(counted) = cluster.counted.remove(&call) {
            let usage = cluster.usage.clone();
            tokio::spawn(async move { usage.release(&counted).await });
        }
    }

    /// Pass the engine's state changes to the database writer; in a cluster, a country
    /// or network seen for the first time goes to the shared figures too.
    pub fn flush(&mut self) {
        for change in self.engine.take_changes() {
            if let Some(cluster) = &self.cluster {
                let seen = match &change {
                    super::Change::Usage(UsageChange::Country { user, iso, .. }) => {
                        Some((user.clone(), format!("c:{iso}")))
                    }
                    super::Change::Usage(UsageChange::Source { user, network, .. }) => {
                        Some((user.clone(), format!("n:{network}")))
                    }
                    super::Change::UserAllow { user, value, .. } => {
                        Some((user.clone(), format!("a:{value}")))
                    }
                    _ => None,
                };
                if let Some((user, member)) = seen {
                    let usage = cluster.usage.clone();
                    tokio::spawn(async move { usage.seen(&user, vec![member]).await });
                }
            }
            let _ = self.writes.send(Write::Change(change));
        }
    }
}

/// The outcome of a call refused because the shared counts cannot be read.
fn unreachable_counts() -> Outcome {
    Outcome {
        decision: Decision::Block(Verdict {
            answer: Answer::Unavailable,
            prompt: None,
        }),
        findings: vec![Finding {
            check: "cluster",
            act: Act::Block,
            reason: "the cluster's shared counts are out of reach".into(),
        }],
        score: 0,
        destination: None,
        country: None,
        trusted: false,
        identity_verified: false,
        identity_failed: false,
        verstat: None,
        attestation: None,
    }
}

/// GET an x5u: the body and how long to keep it (Cache-Control max-age, at most a day).
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    default: Duration,
) -> Result<(Vec<u8>, Duration), String> {
    let response = client.get(url).send().await.map_err(|e| {
        if e.is_timeout() {
            "no answer in time".to_owned()
        } else {
            e.to_string()
        }
    })?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let ttl = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',').find_map(|d| {
                d.trim()
                    .strip_prefix("max-age=")
                    .and_then(|s| s.parse::<u64>().ok())
            })
        })
        .map_or(default, |s| Duration::from_secs(s.min(86_400)));
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > 64 * 1024 {
        return Err("over 64 KiB: not a certificate chain".into());
    }
    Ok((body.to_vec(), ttl))
}

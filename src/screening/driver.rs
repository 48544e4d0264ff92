//! Screening's I/O around the pure engine: fetching STIR certificates (cached), asking
//! analytics engines, writing state and decisions behind the calls. Owned by the server
//! loop; slow work runs on tasks that report back as [`Event`]s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::analytics::{self, Engines, Judgement};
use super::profile::ScreeningConfig;
use super::stir::{self, Policy};
use super::store::{DecisionRecord, Write};
use super::{Decision, Engine, Outcome, Request};

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
            },
            rx,
        ))
    }

    /// Screen a call the core asked about: STIR first (fetching its certificate unless
    /// cached), then the engine's rules, then the profile's analytics engine. The decision
    /// when it is known at once; else it comes from `handle` once a task reports back.
    pub fn start(&mut self, mut request: Request) -> Option<Decided> {
        let identity = request
            .identity
            .clone()
            .filter(|_| self.engine.verifies_stir(&request.profile));
        let Some(identity) = identity else {
            return self.rules(request);
        };
        let Some(url) = stir::x5u(&identity) else {
            // Unparseable: verification says why, without fetching anything.
            request.stir = Some(self.verify(&request, &identity, Err("no x5u".into())));
            return self.rules(request);
        };
        let now = Instant::now();
        if let Some(cached) = self.certificates.get(&url).filter(|c| c.until > now) {
            let pem = cached.pem.clone();
            let pem = pem.as_ref().map(|p| p.as_slice()).map_err(String::clone);
            request.stir = Some(self.verify(&request, &identity, pem));
            return self.rules(request);
        }
        if stir::x5u_allowed(&url, &self.policy).is_err() {
            // Never fetched: verification refuses the URL itself.
            request.stir = Some(self.verify(&request, &identity, Err("not fetched".into())));
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
                request.stir = Some(self.verify(&request, &identity, pem));
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
        }
    }

    fn verify(&self, request: &Request, identity: &str, pem: Result<&[u8], String>) -> stir::Stir {
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

    /// Count and log the decision, for the call.
    fn decide(&mut self, request: &Request, outcome: Outcome) -> Decided {
        self.engine.count(&outcome);
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

    /// Pass the engine's state changes to the database writer.
    pub fn flush(&mut self) {
        for change in self.engine.take_changes() {
            let _ = self.writes.send(Write::Change(change));
        }
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

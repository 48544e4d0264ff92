//! External analytics engines over HTTP: the "608" engine's contract (a GET answered GOOD or
//! BAD_...), and a JSON contract of ours; with a timeout and a circuit breaker so a dead
//! engine costs one timeout per breaker period, not one per call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `[screening.analytics.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// "608" (the FCC 608 work's engine) or "json" (ours, see the README).
    pub kind: String,
    pub url: String,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// What a call gets when the engine cannot answer: "allow" (fail open, the default: the
    /// local checks have run, and an engine outage must not stop all calls) or "block".
    #[serde(default = "default_on_error")]
    pub on_error: String,
    /// Consecutive failures that open the breaker, and how long it stays open.
    #[serde(default = "default_failures")]
    pub breaker_failures: u32,
    #[serde(default = "default_open")]
    pub breaker_open_s: u64,
}

fn default_timeout() -> u64 {
    300
}
fn default_on_error() -> String {
    "allow".into()
}
fn default_failures() -> u32 {
    5
}
fn default_open() -> u64 {
    30
}

impl AnalyticsConfig {
    pub fn check(&self, name: &str) -> Result<(), String> {
        let at = |e: String| format!("screening.analytics.{name}: {e}");
        if self.kind != "608" && self.kind != "json" {
            return Err(at(format!(
                "kind {:?}: expected \"608\" or \"json\"",
                self.kind
            )));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(at(format!(
                "url {:?}: expected http:// or https://",
                self.url
            )));
        }
        if self.on_error != "allow" && self.on_error != "block" {
            return Err(at(format!(
                "on_error {:?}: expected allow or block",
                self.on_error
            )));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 10_000 {
            return Err(at(format!(
                "timeout_ms {} must be 1 to 10000",
                self.timeout_ms
            )));
        }
        Ok(())
    }
}

/// What the call offers an engine to judge.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Query {
    pub call_id: String,
    /// The calling and called numbers (From or P-Asserted-Identity user; Request-URI user).
    pub from: String,
    pub to: String,
    pub source: String,
    pub user_agent: String,
    /// The Identity header's token and parameters, and the Date header, when present.
    pub identity: Option<String>,
    pub info: Option<String>,
    pub alg: Option<String>,
    pub date: Option<String>,
}

/// An engine's judgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub block: bool,
    pub reason: String,
    /// The engine verified the caller's identity (STIR) before blocking on analytics: the
    /// 608 may carry the jCard.
    pub identity_verified: bool,
    /// The block is a failed identity check (BAD_DATE, BAD_CERT_LINK, BAD_IDENTITY): the
    /// 608 must not carry the jCard.
    pub identity_failed: bool,
}

/// The 608 engine's plain-text answers.
pub fn parse_608(body: &str) -> Result<Judgement, String> {
    let word = body.trim();
    let (block, verified) = match word {
        "GOOD" => (false, false),
        "BAD_DATE" | "BAD_CERT_LINK" | "BAD_IDENTITY" => (true, false),
        "BAD_ANALYTICS_VERIFIED_IDENTITY" => (true, true),
        other => {
            return Err(format!(
                "unknown answer {:?}",
                other.chars().take(40).collect::<String>()
            ));
        }
    };
    Ok(Judgement {
        block,
        reason: word.to_owned(),
        identity_verified: verified,
        identity_failed: block && !verified,
    })
}

/// Our JSON contract's answer: `{"verdict": "allow" | "block", "reason": "...",
/// "identity_verified": false}`.
#[derive(Debug, Deserialize)]
struct JsonAnswer {
    verdict: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    identity_verified: bool,
}

pub fn parse_json(body: &str) -> Result<Judgement, String> {
    let a: JsonAnswer =
        serde_json::from_str(body).map_err(|e| format!("not our JSON answer: {e}"))?;
    let block = match a.verdict.as_str() {
        "allow" => false,
        "block" => true,
        other => return Err(format!("verdict {other:?}: expected allow or block")),
    };
    Ok(Judgement {
        block,
        reason: if a.reason.is_empty() {
            a.verdict
        } else {
            a.reason
        },
        identity_verified: a.identity_verified,
        identity_failed: false,
    })
}

/// Ask `engine` about `query`, within its timeout.
pub async fn ask(
    client: &reqwest::Client,
    engine: &AnalyticsConfig,
    query: &Query,
) -> Result<Judgement, String> {
    let request = if engine.kind == "608" {
        let mut params: Vec<(&str, &str)> = vec![
            ("from", &query.from),
            ("to", &query.to),
            ("callid", &query.call_id),
        ];
        for (key, value) in [
            ("identity", &query.identity),
            ("info", &query.info),
            ("alg", &query.alg),
            ("date", &query.date),
        ] {
            if let Some(v) = value {
                params.push((key, v));
            }
        }
        client.get(&engine.url).query(&params)
    } else {
        client.post(&engine.url).json(query)
    };
    let response = request
        .timeout(Duration::from_millis(engine.timeout_ms))
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {} ms", engine.timeout_ms)
            } else {
                format!("unreachable: {e}")
            }
        })?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("answer cut short: {e}"))?;
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    if engine.kind == "608" {
        parse_608(&body)
    } else {
        parse_json(&body)
    }
}

/// A circuit breaker per engine: after `threshold` failures in a row, calls skip the engine
/// for `open_for`; then one call tries it again (half open).
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            failures: 0,
            open_until: None,
        }
    }

    /// May a call ask the engine now? (Half open: the first call after the period may.)
    pub fn allows(&mut self, now: Instant) -> bool {
        match self.open_until {
            Some(until) if now < until => false,
            Some(_) => {
                // One trial: if it fails the breaker opens again at once.
                self.open_until = None;
                self.failures = self.threshold - 1;
                true
            }
            None => true,
        }
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    /// Note a failure; true when it opened the breaker.
    pub fn failed(&mut self, now: Instant) -> bool {
        self.failures += 1;
        if self.failures >= self.threshold && self.open_until.is_none() {
            self.open_until = Some(now + self.open_for);
            return true;
        }
        false
    }
}

/// The configured engines with their breakers.
pub struct Engines {
    pub client: reqwest::Client,
    engines: HashMap<String, (AnalyticsConfig, Breaker)>,
}

impl Engines {
    pub fn new(configs: &HashMap<String, AnalyticsConfig>) -> Result<Engines, String> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let mut engines = HashMap::new();
        for (name, c) in configs {
            c.check(name)?;
            let breaker = Breaker::new(c.breaker_failures, Duration::from_secs(c.breaker_open_s));
            engines.insert(name.clone(), (c.clone(), breaker));
        }
        Ok(Engines { client, engines })
    }

    /// The engine's config when it may be asked now; Err(config) when its breaker is open.
    pub fn admit(
        &mut self,
        name: &str,
        now: Instant,
    ) -> Option<Result<AnalyticsConfig, AnalyticsConfig>> {
        let (config, breaker) = self.engines.get_mut(name)?;
        Some(if breaker.allows(now) {
            Ok(config.clone())
        } else {
            Err(config.clone())
        })
    }

    /// Note how asking `name` went.
    pub fn record(&mut self, name: &str, ok: bool, now: Instant) {
        if let Some((_, breaker)) = self.engines.get_mut(name) {
            if ok {
                breaker.succeeded();
            } else if breaker.failed(now) {
                tracing::warn!(
                    engine = name,
                    "analytics engine failing: circuit open, calls skip it for a while"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_608_answers() {
        assert!(!parse_608("GOOD\n").unwrap().block);
        let stir = parse_608("BAD_CERT_LINK").unwrap();
        assert!(stir.block && !stir.identity_verified);
        let analytics = parse_608("BAD_ANALYTICS_VERIFIED_IDENTITY").unwrap();
        assert!(analytics.block && analytics.identity_verified);
        assert!(parse_608("MAYBE").is_err());
    }

    #[test]
    fn the_json_answers() {
        let j = parse_json(r#"{"verdict":"block","reason":"robocall campaign 17"}"#).unwrap();
        assert_eq!((j.block, j.reason.as_str()), (true, "robocall campaign 17"));
        assert!(!parse_json(r#"{"verdict":"allow"}"#).unwrap().block);
        assert!(parse_json(r#"{"verdict":"perhaps"}"#).is_err());
        assert!(parse_json("GOOD").is_err());
    }

    #[test]
    fn the_breaker_opens_after_failures_and_half_opens_after_its_period() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(30));
        assert!(b.allows(t0));
        assert!(!b.failed(t0) && !b.failed(t0));
        assert!(b.failed(t0), "the third failure opens it");
        assert!(!b.allows(t0 + Duration::from_secs(29)));
        assert!(
            b.allows(t0 + Duration::from_secs(30)),
            "half open: one trial"
        );
        assert!(
            b.failed(t0 + Duration::from_secs(30)),
            "a failed trial opens it again"
        );
        assert!(!b.allows(t0 + Duration::from_secs(31)));
        assert!(b.allows(t0 + Duration::from_secs(61)));
        b.succeeded();
        assert!(
            !b.failed(t0 + Duration::from_secs(62)),
            "closed again: failures count from zero"
        );
    }

    #[test]
    fn bad_engine_configs_are_refused() {
        let mut c = AnalyticsConfig {
            kind: "608".into(),
            url: "http://127.0.0.1:9/check".into(),
            timeout_ms: 300,
            on_error: "allow".into(),
            breaker_failures: 5,
            breaker_open_s: 30,
        };
        assert!(c.check("x").is_ok());
        c.kind = "xml".into();
        assert!(c.check("x").unwrap_err().contains("kind \"xml\""));
        c.kind = "json".into();
        c.on_error = "maybe".into();
        assert!(c.check("x").unwrap_err().contains("on_error"));
    }
}

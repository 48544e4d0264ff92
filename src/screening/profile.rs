//! Screening configuration: the `[screening]` table and its profiles (which checks run, their
//! thresholds, what a block answers), read from TOML and checked into a ready [`Profile`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::dialplan::TimeWindow;

/// `[screening]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScreeningConfig {
    /// A high-risk range list replacing the shipped one (`prefix irsf|premium note`).
    pub high_risk_file: Option<PathBuf>,
    /// Networks whose calls skip every check (a trusted trunk, the operator's own PBX).
    pub trusted_sources: Vec<String>,
    /// Networks whose calls are always refused.
    pub blocked_sources: Vec<String>,
    /// New calls one source address may start per second (0: no limit).
    pub calls_per_source_per_second: u32,
    /// User-Agent substrings of SIP scanners (case-insensitive).
    pub scanner_user_agents: Vec<String>,
    /// The operator's contact for redress, carried by 603+ (ATIS-1000099).
    pub redress: Redress,
    /// Who Warden speaks for in 608's jCard (RFC 8688).
    pub jcard: JcardConfig,
    /// Profiles by name; the dialplan's `screen` action picks one. A `default` profile
    /// exists even when none is written.
    pub profiles: HashMap<String, ProfileConfig>,
    /// External analytics engines by name; a profile's `analytics` asks one.
    pub analytics: HashMap<String, super::analytics::AnalyticsConfig>,
    /// STIR/SHAKEN verification for profiles with `stir = true`.
    pub stir: StirConfig,
}

/// `[screening.stir]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StirConfig {
    /// PEM files of the STI-CA certificates signing certificates must chain to.
    pub trust_anchors: Vec<PathBuf>,
    /// How old `iat` may be (ATIS-1000074: 60 s).
    pub max_age_s: u64,
    /// Ports an x5u URL may name (https only).
    pub x5u_ports: Vec<u16>,
    /// How long fetching a certificate may take, and how long one is kept when its
    /// response says nothing (Cache-Control max-age is honoured, up to a day).
    pub fetch_timeout_ms: u64,
    pub default_cache_s: u64,
    /// A CA (PEM) to trust, besides the public web roots, when fetching x5u over HTTPS: a
    /// private certificate repository.
    pub fetch_ca_file: Option<PathBuf>,
}

impl Default for StirConfig {
    fn default() -> Self {
        StirConfig {
            trust_anchors: Vec::new(),
            max_age_s: 60,
            x5u_ports: vec![443, 8443],
            fetch_timeout_ms: 2000,
            default_cache_s: 3600,
            fetch_ca_file: None,
        }
    }
}

impl Default for ScreeningConfig {
    fn default() -> Self {
        ScreeningConfig {
            high_risk_file: None,
            trusted_sources: Vec::new(),
            blocked_sources: Vec::new(),
            calls_per_source_per_second: 50,
            scanner_user_agents: crate::guard::SCANNER_USER_AGENTS.map(String::from).to_vec(),
            redress: Redress::default(),
            jcard: JcardConfig::default(),
            profiles: HashMap::new(),
            analytics: HashMap::new(),
            stir: StirConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Redress {
    pub url: Option<String>,
    pub tel: Option<String>,
    pub email: Option<String>,
    /// Where the block happened (ATIS-1000099 location: LN, TN, RLN, LPN, RPN).
    pub location: String,
}

impl Default for Redress {
    fn default() -> Self {
        Redress {
            url: None,
            tel: None,
            email: None,
            location: "TN".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JcardConfig {
    /// The organisation name (vCard `fn`).
    pub name: String,
    pub email: Option<String>,
    pub tel: Option<String>,
    pub url: Option<String>,
    /// Where callers fetch the jCard: the admin API's `/jcard` as reachable from outside
    /// (default: built from `admin.listen`).
    pub public_url: Option<String>,
    /// ES256 key (PKCS#8 PEM) that signs the jCard, and the URL of its certificate for the
    /// JWS `x5u`; none: a key made at start, its self-signed certificate served at
    /// `/jcard/cert.pem`.
    pub key_file: Option<PathBuf>,
    pub certificate_url: Option<String>,
}

impl Default for JcardConfig {
    fn default() -> Self {
        JcardConfig {
            name: "Warden call screening".into(),
            email: None,
            tel: None,
            url: None,
            public_url: None,
            key_file: None,
            certificate_url: None,
        }
    }
}

/// What a rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Act {
    /// Let it pass, noted (and scored).
    Flag,
    /// The caller must key in a code read to them.
    Challenge,
    Block,
}

/// `{ reject = 603 }`, `{ reject = "603+" }`, `{ reject = 608, prompt = "suspected_fraud" }`,
/// `{ reject = 503 }`, `{ redirect = "999" }`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VerdictConfig {
    pub reject: Option<toml::Value>,
    pub redirect: Option<String>,
    pub prompt: Option<String>,
}

/// How a blocked call is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 603 Decline.
    Decline,
    /// 603 Network Blocked with the ATIS-1000099 Reason (US analytics blocking).
    NetworkBlocked,
    /// 608 Rejected (RFC 8688), with the jCard Call-Info when the caller is verified.
    Rejected,
    /// 503, so an upstream PBX fails over to its next gateway.
    Unavailable,
    /// 302 to the Request-URI with this prefix on its user part.
    Redirect(String),
    /// The RFC 8224 code of a failed identity check (403, 436, 437, 438).
    Identity(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub answer: Answer,
    /// Played as early media before the final response.
    pub prompt: Option<String>,
}

impl Verdict {
    pub fn decline() -> Verdict {
        Verdict {
            answer: Answer::Decline,
            prompt: None,
        }
    }

    pub fn status(&self) -> u16 {
        match self.answer {
            Answer::Decline | Answer::NetworkBlocked => 603,
            Answer::Rejected => 608,
            Answer::Unavailable => 503,
            Answer::Redirect(_) => 302,
            Answer::Identity(code) => code,
        }
    }

    pub fn name(&self) -> String {
        match &self.answer {
            Answer::NetworkBlocked => "603+".into(),
            Answer::Redirect(prefix) => format!("302 {prefix}"),
            _ => self.status().to_string(),
        }
    }
}

impl VerdictConfig {
    fn check(&self) -> Result<Verdict, String> {
        let answer = match (&self.reject, &self.redirect) {
            (Some(_), Some(_)) => return Err("give reject or redirect, not both".into()),
            (None, Some(prefix)) => {
                if prefix.is_empty() || prefix.contains(['@', ':', ';', '>']) {
                    return Err(format!("redirect {prefix:?}: expected a number prefix"));
                }
                Answer::Redirect(prefix.clone())
            }
            (Some(code), None) => {
                let text = match code {
                    toml::Value::Integer(n) => n.to_string(),
                    toml::Value::String(s) => s.clone(),
                    other => {
                        return Err(format!(
                            "reject {other}: expected 603, \"603+\", 608 or 503"
                        ));
                    }
                };
                match text.as_str() {
                    "603" => Answer::Decline,
                    "603+" => Answer::NetworkBlocked,
                    "608" => Answer::Rejected,
                    "503" => Answer::Unavailable,
                    _ => return Err(format!("reject {text}: expected 603, \"603+\", 608 or 503")),
                }
            }
            (None, None) => return Err("a verdict needs reject or redirect".into()),
        };
        Ok(Verdict {
            answer,
            prompt: self.prompt.clone(),
        })
    }
}

/// `[screening.profiles.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileConfig {
    /// ISO code of the country the users are in; calls elsewhere are international.
    pub home_country: String,
    pub international_prefix: String,
    pub national_prefix: String,
    /// Checks that run, in this order: lists, high_risk, premium_burst, scanner, repeats,
    /// quotas, concurrency, new_country, new_source, volume_jump.
    pub checks: Vec<String>,
    pub allow_numbers: Vec<String>,
    pub allow_prefixes: Vec<String>,
    pub allow_countries: Vec<String>,
    pub block_numbers: Vec<String>,
    pub block_prefixes: Vec<String>,
    pub block_countries: Vec<String>,
    pub on_high_risk: Act,
    pub on_premium: Act,
    pub on_new_country: Act,
    /// A user's first call from a network (/24, /64) never seen for them before.
    pub on_new_source: Act,
    pub on_volume_jump: Act,
    pub on_quota: Act,
    /// Quotas per user (0: none).
    pub calls_per_hour: u64,
    pub calls_per_day: u64,
    pub minutes_per_day: u64,
    pub international_per_day: u64,
    /// Live calls per user in business hours, and outside them.
    pub max_concurrent: u32,
    pub max_concurrent_off_hours: u32,
    pub business_hours: BusinessHours,
    /// Same caller to the same number more than `repeat_limit` times in `repeat_window_s`.
    pub repeat_limit: usize,
    pub repeat_window_s: u64,
    /// Premium calls shorter than `premium_short_s` (or unanswered): `premium_burst_calls`
    /// of them in `premium_burst_window_s` block the next.
    pub premium_short_s: u64,
    pub premium_burst_calls: u64,
    pub premium_burst_window_s: u64,
    /// Hourly volume past `volume_jump_factor` x the user's baseline (with at least
    /// `volume_jump_min_calls` calls this hour and `volume_jump_min_history_h` active hours).
    pub volume_jump_factor: f64,
    pub volume_jump_min_calls: u64,
    pub volume_jump_min_history_h: u32,
    /// Each flag adds `flag_score`; at `challenge_score` the caller is challenged, at
    /// `block_score` blocked.
    pub flag_score: u32,
    pub challenge_score: u32,
    pub block_score: u32,
    /// Verify STIR/SHAKEN Identity headers (`[screening.stir]` says against what).
    pub stir: bool,
    /// A failed verification: flag (TN-Validation-Failed toward the callee, and a score),
    /// challenge, or block (by default with the RFC 8224 code).
    pub on_stir_failure: Act,
    /// A call without an Identity header: "pass" (No-TN-Validation toward the callee),
    /// or flag, challenge, block.
    pub on_unsigned: String,
    /// An engine of `[screening.analytics]` asked about calls the local checks let through.
    pub analytics: Option<String>,
    /// What a block answers; per country (ISO code) and per check it may differ.
    pub verdict: VerdictConfig,
    pub verdict_by_country: HashMap<String, VerdictConfig>,
    pub verdict_by_check: HashMap<String, VerdictConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    #[serde(default = "weekdays")]
    pub days: String,
    pub from: String,
    pub to: String,
    pub zone: String,
}

fn weekdays() -> String {
    "mon-fri".into()
}

impl Default for BusinessHours {
    fn default() -> Self {
        BusinessHours {
            days: weekdays(),
            from: "08:00".into(),
            to: "18:00".into(),
            zone: "UTC".into(),
        }
    }
}

pub const CHECKS: [&str; 10] = [
    "lists",
    "high_risk",
    "premium_burst",
    "scanner",
    "repeats",
    "quotas",
    "concurrency",
    "new_country",
    "new_source",
    "volume_jump",
];

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            home_country: "GB".into(),
            international_prefix: "00".into(),
            national_prefix: "0".into(),
            checks: CHECKS.map(String::from).to_vec(),
            allow_numbers: Vec::new(),
            allow_prefixes: Vec::new(),
            allow_countries: Vec::new(),
            block_numbers: Vec::new(),
            block_prefixes: Vec::new(),
            block_countries: Vec::new(),
            on_high_risk: Act::Block,
            on_premium: Act::Flag,
            on_new_country: Act::Flag,
            on_new_source: Act::Flag,
            on_volume_jump: Act::Flag,
            on_quota: Act::Block,
            calls_per_hour: 60,
            calls_per_day: 500,
            minutes_per_day: 1440,
            international_per_day: 50,
            max_concurrent: 10,
            max_concurrent_off_hours: 4,
            business_hours: BusinessHours::default(),
            repeat_limit: 5,
            repeat_window_s: 30,
            premium_short_s: 30,
            premium_burst_calls: 3,
            premium_burst_window_s: 600,
            volume_jump_factor: 5.0,
            volume_jump_min_calls: 20,
            volume_jump_min_history_h: 3,
            flag_score: 30,
            challenge_score: 60,
            block_score: 100,
            stir: false,
            on_stir_failure: Act::Flag,
            on_unsigned: "pass".into(),
            analytics: None,
            verdict: VerdictConfig {
                reject: Some(toml::Value::Integer(603)),
                ..VerdictConfig::default()
            },
            verdict_by_country: HashMap::new(),
            verdict_by_check: HashMap::new(),
        }
    }
}

/// A checked profile, ready for the rules.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub config: ProfileConfig,
    pub home_code: String,
    pub checks: Vec<&'static str>,
    pub business_hours: TimeWindow,
    pub verdict: Verdict,
    pub verdict_by_country: HashMap<String, Verdict>,
    pub verdict_by_check: HashMap<String, Verdict>,
}

impl Profile {
    pub fn runs(&self, check: &str) -> bool {
        self.checks.contains(&check)
    }

    /// The verdict for a block by `check` on a call to `country`.
    pub fn verdict_for(&self, check: &str, country: Option<&str>) -> Verdict {
        self.verdict_by_check
            .get(check)
            .or_else(|| country.and_then(|c| self.verdict_by_country.get(c)))
            .unwrap_or(&self.verdict)
            .clone()
    }
}

impl ScreeningConfig {
    /// Check every profile (a `default` one is added when missing); `iso_code` maps an
    /// ISO country to its calling code, `prompt_exists` says whether a prompt is shipped.
    pub fn profiles(
        &self,
        iso_code: &dyn Fn(&str) -> Option<String>,
        prompt_exists: &dyn Fn(&str) -> bool,
    ) -> Result<HashMap<String, Profile>, String> {
        let mut configs = self.profiles.clone();
        configs.entry("default".into()).or_default();
        let mut out = HashMap::new();
        for (name, config) in configs {
            let at = |e: String| format!("screening.profiles.{name}: {e}");
            let home_code = iso_code(&config.home_country).ok_or_else(|| {
                at(format!(
                    "home_country {:?} is not an ISO country code in the E.164 table",
                    config.home_country
                ))
            })?;
            let mut checks = Vec::new();
            for c in &config.checks {
                let known = CHECKS.iter().find(|k| **k == c).ok_or_else(|| {
                    at(format!("checks: {c:?} is not one of {}", CHECKS.join(", ")))
                })?;
                checks.push(*known);
            }
            for country in config.allow_countries.iter().chain(&config.block_countries) {
                iso_code(country)
                    .ok_or_else(|| at(format!("country {country:?} is not in the E.164 table")))?;
            }
            for number in config
                .allow_numbers
                .iter()
                .chain(&config.allow_prefixes)
                .chain(&config.block_numbers)
                .chain(&config.block_prefixes)
            {
                let digits = number.trim_start_matches('+');
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(at(format!("{number:?} is not an E.164 number or prefix")));
                }
            }
            let b = &config.business_hours;
            let business_hours = TimeWindow::parse(&b.days, &b.from, &b.to, &b.zone)
                .map_err(|e| at(format!("business_hours: {e}")))?;
            let check_verdict = |what: &str, v: &VerdictConfig| -> Result<Verdict, String> {
                let verdict = v.check().map_err(|e| at(format!("{what}: {e}")))?;
                if let Some(p) = &verdict.prompt
                    && !prompt_exists(p)
                {
                    return Err(at(format!("{what}: no prompt named {p:?}")));
                }
                Ok(verdict)
            };
            let verdict = check_verdict("verdict", &config.verdict)?;
            let mut verdict_by_country = HashMap::new();
            for (country, v) in &config.verdict_by_country {
                iso_code(country).ok_or_else(|| {
                    at(format!(
                        "verdict_by_country: {country:?} is not in the E.164 table"
                    ))
                })?;
                verdict_by_country.insert(
                    country.clone(),
                    check_verdict(&format!("verdict_by_country.{country}"), v)?,
                );
            }
            let mut verdict_by_check = HashMap::new();
            for (check, v) in &config.verdict_by_check {
                if !CHECKS.contains(&check.as_str())
                    && !SOURCE_CHECKS.contains(&check.as_str())
                    && check != "analytics"
                    && check != "stir"
                    && check != "score"
                {
                    return Err(at(format!("verdict_by_check: {check:?} is not a check")));
                }
                verdict_by_check.insert(
                    check.clone(),
                    check_verdict(&format!("verdict_by_check.{check}"), v)?,
                );
            }
            if !["pass", "flag", "challenge", "block"].contains(&config.on_unsigned.as_str()) {
                return Err(at(format!(
                    "on_unsigned {:?}: expected pass, flag, challenge or block",
                    config.on_unsigned
                )));
            }
            if let Some(engine) = &config.analytics
                && !self.analytics.contains_key(engine)
            {
                return Err(at(format!(
                    "analytics {engine:?}: no [screening.analytics.{engine}]"
                )));
            }
            if !(config.flag_score <= config.block_score
                && config.challenge_score <= config.block_score)
            {
                return Err(at("scores: block_score must be the highest".into()));
            }
            out.insert(
                name.clone(),
                Profile {
                    name,
                    home_code,
                    checks,
                    business_hours,
                    verdict,
                    verdict_by_country,
                    verdict_by_check,
                    config,
                },
            );
        }
        Ok(out)
    }

    /// Is there a profile by this name (`default` always exists)?
    pub fn has_profile(&self, name: &str) -> bool {
        name == "default" || self.profiles.contains_key(name)
    }

    pub fn trusted(&self) -> Result<Vec<(IpAddr, u8)>, String> {
        networks("screening.trusted_sources", &self.trusted_sources)
    }

    pub fn blocked(&self) -> Result<Vec<(IpAddr, u8)>, String> {
        networks("screening.blocked_sources", &self.blocked_sources)
    }
}

/// Checks on the source that run for every profile.
pub const SOURCE_CHECKS: [&str; 2] = ["blocked_source", "source_rate"];

fn networks(what: &str, list: &[String]) -> Result<Vec<(IpAddr, u8)>, String> {
    list.iter()
        .map(|t| crate::dialplan::parse_network(t).map_err(|e| format!("{what}: {e}")))
        .collect()
}

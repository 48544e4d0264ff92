//! Call screening: a pipeline of checks run after routing and before the callee is called,
//! each passing, flagging (with a score) or blocking, combined into one explained decision.
//!
//! The [`Engine`] is pure and synchronous: facts and the clock in, an [`Outcome`] out, plus
//! changes for the store. Source checks run for every screened call; a profile picks the
//! fraud rules and their thresholds. See the README's "Call screening" section.

pub mod admin;
pub mod analytics;
pub mod driver;
pub mod lists;
pub mod numbers;
pub mod profile;
pub mod stir;
pub mod store;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use lists::{EntryKind, ListEntry, ListName, Lists};
use numbers::{Country, DialingPlan, PrefixTable, Risk, RiskRange};
pub use profile::{Act, Answer, Profile, ScreeningConfig, Verdict};
use usage::{Admission, Usage, UsageChange};

/// What screening is told about a call.
#[derive(Debug, Clone)]
pub struct Request {
    pub call: u64,
    /// The caller's Call-ID, for the decision log.
    pub call_id: String,
    pub profile: String,
    /// Who pays: `user@domain` of the caller (P-Asserted-Identity, else From).
    pub user: String,
    /// The number as dialed (Request-URI user part).
    pub callee: String,
    pub source: IpAddr,
    pub user_agent: String,
    /// The calling number (user part of P-Asserted-Identity, else From).
    pub caller_number: String,
    /// The Identity header (RFC 8224) and the Date header, when present.
    pub identity: Option<String>,
    pub date: Option<String>,
    /// The STIR verification's result, when the profile verifies (the driver fills it in).
    pub stir: Option<stir::Stir>,
    /// Unix seconds.
    pub now: u64,
}

impl Request {
    /// What an analytics engine is asked.
    pub fn query(&self) -> analytics::Query {
        // Identity: TOKEN;info=<URL>;alg=ES256;ppt=shaken
        let mut parts = self.identity.as_deref().unwrap_or_default().split(';');
        let token = parts.next().map(str::trim).filter(|t| !t.is_empty());
        let mut info = None;
        let mut alg = None;
        for p in parts {
            match p.trim().split_once('=') {
                Some(("info", v)) => info = Some(v.trim_matches(['<', '>']).to_owned()),
                Some(("alg", v)) => alg = Some(v.to_owned()),
                _ => {}
            }
        }
        analytics::Query {
            call_id: self.call_id.clone(),
            from: self.caller_number.clone(),
            to: self.callee.clone(),
            source: self.source.to_string(),
            user_agent: self.user_agent.clone(),
            identity: token.map(str::to_owned),
            info,
            alg,
            date: self.date.clone(),
        }
    }
}

/// What one check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub check: &'static str,
    pub act: Act,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow,
    /// Read the caller a code to key in; on success `value` joins the user's allow-list.
    Challenge {
        value: String,
    },
    Block(Verdict),
}

impl Decision {
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Challenge { .. } => "challenge",
            Decision::Block(_) => "block",
        }
    }
}

/// The screening decision with everything that explains it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub decision: Decision,
    pub findings: Vec<Finding>,
    pub score: u32,
    /// The destination in E.164 digits and its country, when it is a number.
    pub destination: Option<String>,
    pub country: Option<String>,
    /// The source is a trusted peer: every check was skipped.
    pub trusted: bool,
    /// The caller's identity was verified (STIR) before an analytics block, or its
    /// verification failed: the first allows the 608 jCard, the second forbids it.
    pub identity_verified: bool,
    pub identity_failed: bool,
    /// STIR: what to tell the callee (verstat) and the signer's attestation.
    pub verstat: Option<&'static str>,
    pub attestation: Option<String>,
}

impl Outcome {
    /// One line for logs and records: the checks that fired and why.
    pub fn reason(&self) -> String {
        if self.trusted {
            return "trusted source".into();
        }
        if self.findings.is_empty() {
            return "no check fired".into();
        }
        self.findings
            .iter()
            .map(|f| format!("{}: {}", f.check, f.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The check that decided a block, or the first flag.
    pub fn deciding_check(&self) -> &'static str {
        self.findings
            .iter()
            .find(|f| f.act == Act::Block)
            .or(self.findings.first())
            .map_or("none", |f| f.check)
    }
}

/// A call held for a challenge: admitted only when the caller keys the code in.
#[derive(Debug, Clone)]
struct Held {
    user: String,
    value: String,
    admission: Admission,
}

/// A change for the store.
#[derive(Debug, Clone)]
pub enum Change {
    Usage(UsageChange),
    ListAdd(ListEntry),
    ListRemove(ListName, EntryKind, String),
    UserAllow {
        user: String,
        value: String,
        at: u64,
    },
    UserForget {
        user: String,
    },
}

pub struct Engine {
    profiles: HashMap<String, Profile>,
    countries: PrefixTable<Country>,
    high_risk: PrefixTable<RiskRange>,
    trusted: Vec<(IpAddr, u8)>,
    blocked: Vec<(IpAddr, u8)>,
    scanners: Vec<String>,
    source_rate: u32,
    /// Per source: (second, calls in it).
    rate: HashMap<IpAddr, (u64, u32)>,
    usage: Usage,
    lists: Lists,
    held: HashMap<u64, Held>,
    changes: Vec<Change>,
    /// Decisions by (decision, deciding check), for metrics.
    pub counts: BTreeMap<(&'static str, &'static str), u64>,
}

/// The shipped E.164 table, loaded (it is checked by a unit test).
pub fn country_table() -> PrefixTable<Country> {
    numbers::countries(numbers::COUNTRY_CODES, "country_codes.txt").unwrap_or_default()
}

/// The calling code of an ISO country in `table` (the shortest prefix naming it).
pub fn calling_code(table: &PrefixTable<Country>, iso: &str) -> Option<String> {
    table
        .iter()
        .filter(|(_, c)| c.iso.eq_ignore_ascii_case(iso))
        .map(|(p, _)| p.to_owned())
        .min_by_key(|p| p.len())
}

impl Engine {
    /// Check the configuration and build the engine on what the store kept.
    pub fn new(
        config: &ScreeningConfig,
        prompt_exists: &dyn Fn(&str) -> bool,
        usage: Usage,
        lists: Lists,
    ) -> Result<Engine, String> {
        let countries = country_table();
        let high_risk = match &config.high_risk_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
                numbers::high_risk(&text, &path.display().to_string())?
            }
            None => numbers::high_risk(numbers::HIGH_RISK, "high_risk.txt")?,
        };
        let profiles = config.profiles(&|iso| calling_code(&countries, iso), prompt_exists)?;
        Ok(Engine {
            profiles,
            countries,
            high_risk,
            trusted: config.trusted()?,
            blocked: config.blocked()?,
            scanners: config
                .scanner_user_agents
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            source_rate: config.calls_per_source_per_second,
            rate: HashMap::new(),
            usage,
            lists,
            held: HashMap::new(),
            changes: Vec::new(),
            counts: BTreeMap::new(),
        })
    }

    pub fn has_profile(&self, name: &str) -> bool {
        self.profiles.contains_key(name)
    }

    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    pub fn lists(&self) -> &Lists {
        &self.lists
    }

    /// Count a call's final decision (once, whatever stages it went through).
    pub fn count(&mut self, outcome: &Outcome) {
        *self
            .counts
            .entry((outcome.decision.name(), outcome.deciding_check()))
            .or_default() += 1;
    }

    /// Run the source checks and the profile's rules on a new call.
    pub fn screen(&mut self, req: &Request) -> Outcome {
        let profile = match self.profiles.get(&req.profile) {
            Some(p) => p.clone(),
            None => {
                // Dialplans are checked against the profiles at load; this is a safety net.
                tracing::error!(profile = %req.profile, "no such screening profile; using default");
                self.profiles.get("default").cloned().unwrap_or_else(|| {
                    unreachable!("ScreeningConfig::profiles always adds `default`")
                })
            }
        };
        let c = &profile.config;
        let dialing = DialingPlan {
            home_code: profile.home_code.clone(),
            international_prefix: c.international_prefix.clone(),
            national_prefix: c.national_prefix.clone(),
        };
        let destination = dialing.international(&req.callee);
        let country = destination
            .as_deref()
            .and_then(|d| self.countries.longest_match(d))
            .map(|(_, c)| c.iso.clone());
        let mut out = Outcome {
            decision: Decision::Allow,
            findings: Vec::new(),
            score: 0,
            destination: destination.clone(),
            country: country.clone(),
            trusted: false,
            identity_verified: false,
            identity_failed: false,
            verstat: None,
            attestation: None,
        };
        if crate::dialplan::in_networks(req.source, &self.trusted) {
            out.trusted = true;
            return out;
        }
        let block = |out: &mut Outcome, check: &'static str, reason: String, verdict: Verdict| {
            out.findings.push(Finding {
                check,
                act: Act::Block,
                reason,
            });
            out.decision = Decision::Block(verdict);
        };
        // Source checks, for every profile.
        let listed_source = self.lists.blocked_source(req.source);
        if crate::dialplan::in_networks(req.source, &self.blocked) || listed_source.is_some() {
            let why = listed_source.map_or("in screening.blocked_sources".into(), |n| {
                format!("on the block list ({n})")
            });
            let verdict = profile.verdict_for("blocked_source", None);
            block(
                &mut out,
                "blocked_source",
                format!("source {} {why}", req.source),
                verdict,
            );
            return out;
        }
        if self.source_rate > 0 {
            let slot = self.rate.entry(req.source).or_insert((req.now, 0));
            if slot.0 != req.now {
                *slot = (req.now, 0);
            }
            slot.1 += 1;
            if slot.1 > self.source_rate {
                let verdict = match profile.verdict_by_check.get("source_rate") {
                    Some(v) => v.clone(),
                    None => Verdict {
                        answer: Answer::Unavailable,
                        prompt: None,
                    },
                };
                let reason = format!("source {} above {} calls/s", req.source, self.source_rate);
                block(&mut out, "source_rate", reason, verdict);
                return out;
            }
        }
        let mut challenge_value = None;
        if c.stir {
            let result = req.stir.clone().unwrap_or(stir::Stir::Unsigned);
            out.verstat = Some(result.verstat());
            out.attestation = result.attestation().map(str::to_owned);
            match &result {
                stir::Stir::Verified { .. } => out.identity_verified = true,
                stir::Stir::Failed { code, reason } => {
                    out.identity_failed = true;
                    challenge_value = Some("stir".to_owned());
                    let reason = format!("{code}: {reason}");
                    out.findings.push(Finding {
                        check: "stir",
                        act: c.on_stir_failure,
                        reason,
                    });
                }
                stir::Stir::Unsigned => {
                    let act = match c.on_unsigned.as_str() {
                        "flag" => Some(Act::Flag),
                        "challenge" => Some(Act::Challenge),
                        "block" => Some(Act::Block),
                        _ => None,
                    };
                    if let Some(act) = act {
                        out.findings.push(Finding {
                            check: "stir",
                            act,
                            reason: "no Identity header".into(),
                        });
                    }
                }
            }
        }
        let international = country.as_deref().is_some_and(|iso| iso != c.home_country);
        let risk = destination
            .as_deref()
            .and_then(|d| self.high_risk.longest_match(d))
            .map(|(p, r)| (p.to_owned(), r.clone()));
        let premium = risk.as_ref().is_some_and(|(_, r)| r.risk == Risk::Premium);
        let figures = self
            .usage
            .figures(&req.user, req.now, c.premium_burst_window_s);
        let iso = country.as_deref();
        let network = usage::network_of(req.source);
        let mut allowed_destination = false;
        let found = |out: &mut Outcome, check: &'static str, act: Act, reason: String| {
            out.findings.push(Finding { check, act, reason });
        };
        for check in &profile.checks {
            match *check {
                "lists" => {
                    let Some(d) = destination.as_deref() else {
                        continue;
                    };
                    let user_allowed = [format!("number:{d}")]
                        .into_iter()
                        .chain(iso.map(|i| format!("country:{i}")))
                        .find(|v| self.lists.user_allows(&req.user, v));
                    let static_allow = c
                        .allow_numbers
                        .iter()
                        .any(|n| n.trim_start_matches('+') == d)
                        || c.allow_prefixes
                            .iter()
                            .any(|p| d.starts_with(p.trim_start_matches('+')))
                        || iso.is_some_and(|i| {
                            c.allow_countries.iter().any(|a| a.eq_ignore_ascii_case(i))
                        });
                    if static_allow
                        || user_allowed.is_some()
                        || self.lists.destination(ListName::Allow, d, iso).is_some()
                    {
                        allowed_destination = true;
                        continue;
                    }
                    let static_block = if c
                        .block_numbers
                        .iter()
                        .any(|n| n.trim_start_matches('+') == d)
                    {
                        Some(format!("number {d}"))
                    } else if let Some(p) = c
                        .block_prefixes
                        .iter()
                        .find(|p| d.starts_with(p.trim_start_matches('+')))
                    {
                        Some(format!("prefix {}", p.trim_start_matches('+')))
                    } else {
                        iso.filter(|i| c.block_countries.iter().any(|b| b.eq_ignore_ascii_case(i)))
                            .map(|i| format!("country {i}"))
                    };
                    let hit = static_block.or_else(|| {
                        self.lists
                            .destination(ListName::Block, d, iso)
                            .map(|l| l.entry)
                    });
                    if let Some(entry) = hit {
                        found(
                            &mut out,
                            "lists",
                            Act::Block,
                            format!("{d} is on the block list ({entry})"),
                        );
                    }
                }
                "high_risk" if !allowed_destination => {
                    if let Some((prefix, range)) = &risk {
                        let act = match range.risk {
                            Risk::Irsf => c.on_high_risk,
                            Risk::Premium => c.on_premium,
                        };
                        let reason = format!(
                            "{} in the {} range +{prefix} ({})",
                            destination.as_deref().unwrap_or_default(),
                            range.risk.as_str(),
                            range.note
                        );
                        found(&mut out, "high_risk", act, reason);
                    }
                }
                "premium_burst"
                    if premium
                        && !allowed_destination
                        && c.premium_burst_calls > 0
                        && figures.premium_short_recent >= c.premium_burst_calls =>
                {
                    let reason = format!(
                        "{} short premium calls in {} s",
                        figures.premium_short_recent, c.premium_burst_window_s
                    );
                    found(&mut out, "premium_burst", Act::Block, reason);
                }
                "scanner" => {
                    if let Some(s) = crate::guard::scanner_in(&self.scanners, &req.user_agent) {
                        found(
                            &mut out,
                            "scanner",
                            Act::Block,
                            format!("User-Agent {:?} is a scanner ({s})", req.user_agent),
                        );
                    }
                }
                "repeats" => {
                    let n =
                        self.usage
                            .note_attempt(&req.user, &req.callee, req.now, c.repeat_window_s);
                    if c.repeat_limit > 0 && n > c.repeat_limit {
                        let reason =
                            format!("{n} calls to {} in {} s", req.callee, c.repeat_window_s);
                        found(&mut out, "repeats", Act::Block, reason);
                    }
                }
                "quotas" => {
                    let over = [
                        (c.calls_per_hour, figures.calls_last_hour, "calls per hour"),
                        (c.calls_per_day, figures.calls_last_day, "calls per day"),
                        (
                            c.minutes_per_day,
                            figures.seconds_last_day / 60,
                            "minutes per day",
                        ),
                        (
                            if international {
                                c.international_per_day
                            } else {
                                0
                            },
                            figures.international_last_day,
                            "international calls per day",
                        ),
                    ]
                    .into_iter()
                    .find(|(limit, used, _)| *limit > 0 && used >= limit);
                    if let Some((limit, used, what)) = over {
                        found(
                            &mut out,
                            "quotas",
                            c.on_quota,
                            format!("{what}: {used} of {limit} used"),
                        );
                        challenge_value.get_or_insert_with(|| "quota".to_owned());
                    }
                }
                "concurrency" => {
                    let ts = jiff::Timestamp::from_second(req.now as i64)
                        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
                    let (limit, when) = if profile.business_hours.contains(ts) {
                        (c.max_concurrent, "business hours")
                    } else {
                        (c.max_concurrent_off_hours, "off hours")
                    };
                    if limit > 0 && figures.live_calls >= limit {
                        found(
                            &mut out,
                            "concurrency",
                            Act::Block,
                            format!(
                                "{} live calls, the limit in {when} is {limit}",
                                figures.live_calls
                            ),
                        );
                    }
                }
                "new_country" if international && !allowed_destination => {
                    if let Some(i) = iso
                        && !self.usage.has_called(&req.user, i)
                    {
                        found(
                            &mut out,
                            "new_country",
                            c.on_new_country,
                            format!("first call to {i}"),
                        );
                        challenge_value.get_or_insert_with(|| format!("country:{i}"));
                    }
                }
                "new_source" => {
                    let known = self.usage.user(&req.user).map(|u| &u.sources);
                    // Only a user with a history can come from somewhere new.
                    if let Some(known) = known.filter(|k| !k.is_empty())
                        && !known.contains(&network)
                        && !self
                            .lists
                            .user_allows(&req.user, &format!("source:{network}"))
                    {
                        found(
                            &mut out,
                            "new_source",
                            c.on_new_source,
                            format!("first call from {network}"),
                        );
                        challenge_value.get_or_insert_with(|| format!("source:{network}"));
                    }
                }
                "volume_jump" => {
                    let this_hour = figures.calls_last_hour + 1;
                    if figures.baseline_hours >= c.volume_jump_min_history_h
                        && this_hour >= c.volume_jump_min_calls
                        && this_hour as f64 > c.volume_jump_factor * figures.baseline_per_hour
                    {
                        let reason = format!(
                            "{this_hour} calls this hour against a baseline of {:.1}/h",
                            figures.baseline_per_hour
                        );
                        found(&mut out, "volume_jump", c.on_volume_jump, reason);
                    }
                }
                _ => {}
            }
        }
        // Combine: a block wins, then a challenge; flags add up to a score.
        out.score =
            c.flag_score * out.findings.iter().filter(|f| f.act == Act::Flag).count() as u32;
        if let Some(f) = out.findings.iter().find(|f| f.act == Act::Block) {
            let verdict = match (&req.stir, f.check) {
                (Some(stir::Stir::Failed { code, .. }), "stir")
                    if !profile.verdict_by_check.contains_key("stir") =>
                {
                    Verdict {
                        answer: Answer::Identity(*code),
                        prompt: None,
                    }
                }
                _ => profile.verdict_for(f.check, iso),
            };
            out.decision = Decision::Block(verdict);
            return out;
        }
        if out.score >= c.block_score {
            out.decision = Decision::Block(profile.verdict_for("score", iso));
            return out;
        }
        let admission = Admission {
            country: country.clone(),
            international,
            premium_short_s: premium.then_some(c.premium_short_s),
            network: Some(network),
        };
        if out.findings.iter().any(|f| f.act == Act::Challenge)
            || out.score >= c.challenge_score.max(1) && out.score > 0
        {
            // What a passed challenge vouches for: a new country or network is remembered;
            // a quota overrun, a STIR failure or a score is not.
            let value = challenge_value.unwrap_or_else(|| "score".to_owned());
            self.held.insert(
                req.call,
                Held {
                    user: req.user.clone(),
                    value: value.clone(),
                    admission,
                },
            );
            out.decision = Decision::Challenge { value };
            return out;
        }
        self.usage.admit(req.call, &req.user, &admission, req.now);
        out
    }

    /// Does this profile verify STIR/SHAKEN?
    pub fn verifies_stir(&self, profile: &str) -> bool {
        self.profiles.get(profile).is_some_and(|p| p.config.stir)
    }

    /// The analytics engine a profile asks, if any.
    pub fn analytics_for(&self, profile: &str) -> Option<String> {
        self.profiles
            .get(profile)
            .and_then(|p| p.config.analytics.clone())
    }

    /// Fold an analytics engine's judgement (or its failure, with the engine's policy) into
    /// an outcome the local checks allowed.
    pub fn apply_analytics(
        &mut self,
        outcome: &mut Outcome,
        profile: &str,
        engine: &str,
        judgement: Result<analytics::Judgement, String>,
        fail_closed: bool,
    ) {
        let verdict = |e: &Engine| {
            e.profiles.get(profile).map_or_else(Verdict::decline, |p| {
                p.verdict_for("analytics", outcome.country.as_deref())
            })
        };
        let (act, reason) = match judgement {
            Ok(j) if !j.block => return,
            Ok(j) => {
                outcome.identity_verified = j.identity_verified;
                outcome.identity_failed = j.identity_failed;
                (Act::Block, format!("engine {engine}: {}", j.reason))
            }
            Err(e) if fail_closed => (Act::Block, format!("engine {engine}: {e}; failing closed")),
            Err(e) => (Act::Flag, format!("engine {engine}: {e}; failing open")),
        };
        if act == Act::Block {
            outcome.decision = Decision::Block(verdict(self));
        }
        outcome.findings.push(Finding {
            check: "analytics",
            act,
            reason,
        });
    }

    /// The caller keyed in the right code: admit the call and remember the value.
    pub fn challenge_passed(&mut self, call: u64, now: u64) {
        let Some(h) = self.held.remove(&call) else {
            return;
        };
        if h.value.starts_with("country:") || h.value.starts_with("source:") {
            self.lists.allow_for_user(&h.user, &h.value);
            self.changes.push(Change::UserAllow {
                user: h.user.clone(),
                value: h.value.clone(),
                at: now,
            });
        }
        self.usage.admit(call, &h.user, &h.admission, now);
    }

    /// A screened call ended (whatever happened to it): `answered_s` seconds of talk.
    pub fn call_ended(&mut self, call: u64, answered_s: u64, now: u64) {
        self.held.remove(&call);
        self.usage.ended(call, answered_s, now);
    }

    /// Operator: clear a user's counters.
    pub fn reset_user(&mut self, user: &str) -> bool {
        self.usage.reset(user)
    }

    /// Operator: forget a user (counters, countries called, allow-list).
    pub fn remove_user(&mut self, user: &str) -> bool {
        let known = self.usage.remove(user) | self.lists.forget_user(user);
        self.changes.push(Change::UserForget {
            user: user.to_owned(),
        });
        known
    }

    /// Operator: add a list entry (the value is checked and normalized).
    pub fn add_entry(
        &mut self,
        list: ListName,
        kind: EntryKind,
        value: &str,
        note: &str,
        now: u64,
    ) -> Result<ListEntry, String> {
        let value = kind.normalize(value)?;
        if kind == EntryKind::Country && calling_code(&self.countries, &value).is_none() {
            return Err(format!("{value:?} is not a country in the E.164 table"));
        }
        let entry = ListEntry {
            list,
            kind,
            value,
            note: note.to_owned(),
            added_at: now,
        };
        self.lists.add(entry.clone());
        self.changes.push(Change::ListAdd(entry.clone()));
        Ok(entry)
    }

    /// Operator: remove a list entry; false when it was not there.
    pub fn remove_entry(
        &mut self,
        list: ListName,
        kind: EntryKind,
        value: &str,
    ) -> Result<bool, String> {
        let value = kind.normalize(value)?;
        let removed = self.lists.remove(list, kind, &value);
        if removed {
            self.changes.push(Change::ListRemove(list, kind, value));
        }
        Ok(removed)
    }

    /// Changes since the last call, for the store.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut out: Vec<Change> = self
            .usage
            .take_changes()
            .into_iter()
            .map(Change::Usage)
            .collect();
        out.append(&mut self.changes);
        out
    }

    /// Drop state nobody will read again (call now and then).
    pub fn sweep(&mut self, now: u64) {
        self.usage.sweep(now, 3600);
        self.rate
            .retain(|_, (second, _)| now.saturating_sub(*second) < 2);
    }
}

#[cfg(test)]
mod tests;

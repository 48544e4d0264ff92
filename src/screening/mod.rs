//! Call screening: a pipeline of checks run after routing and before the callee is called,
//! each passing, flagging (with a score) or blocking, combined into one explained decision.
//!
//! The [`Engine`] is pure and synchronous: facts and the clock in, an [`Outcome`] out, plus
//! changes for the store. Source checks run for every screened call; a profile picks the
//! fraud rules and their thresholds. See the README's "Call screening" section.

pub mod admin;
pub mod analytics;
mod checks;
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
    /// The caller's figures, countries and networks across the cluster, this call left
    /// out (the driver fills them in when `[cluster]` shares counts); None: this node's own.
    pub shared: Option<usage::Shared>,
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

/// What the shared counts need to know of a call before it is screened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counting {
    /// It goes abroad (counts as international).
    pub international: bool,
    /// The profile's premium-burst window and repeated-call window.
    pub premium_window_s: u64,
    pub repeat_window_s: u64,
    /// Calls from the source are metered (`calls_per_source_per_second`).
    pub per_source: bool,
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

    /// Run the source checks and the profile's rules on a new call (one function per
    /// check, in `checks`), and combine what they found into the decision.
    pub fn screen(&mut self, req: &Request) -> Outcome {
        let profile = self.profile_of(req);
        let c = &profile.config;
        let (destination, country) = self.destination(req, &profile);
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
        // Source checks, for every profile: a block at once.
        let source = self.blocked_source(req, &profile);
        if let Some((found, verdict)) = source.or_else(|| self.source_rate(req, &profile)) {
            out.findings.push(found.finding);
            out.decision = Decision::Block(verdict);
            return out;
        }
        let mut vouches = None;
        let mut note = |out: &mut Outcome, found: Option<checks::Found>| {
            if let Some(f) = found {
                if let Some(v) = f.vouches {
                    vouches.get_or_insert(v);
                }
                out.findings.push(f.finding);
            }
        };
        if c.stir {
            let found = checks::stir(req, c, &mut out);
            note(&mut out, found);
        }
        let risk = destination
            .as_deref()
            .and_then(|d| self.high_risk.longest_match(d))
            .map(|(p, r)| (p.to_owned(), r.clone()));
        let subject = checks::Subject {
            req,
            profile: &profile,
            international: country.as_deref().is_some_and(|iso| iso != c.home_country),
            premium: risk.as_ref().is_some_and(|(_, r)| r.risk == Risk::Premium),
            risk,
            figures: req.shared.as_ref().map_or_else(
                || {
                    self.usage
                        .figures(&req.user, req.now, c.premium_burst_window_s)
                },
                |shared| shared.figures,
            ),
            network: usage::network_of(req.source),
            destination,
            iso: country.clone(),
        };
        let mut allowed_destination = false;
        for check in &profile.checks {
            let found = match *check {
                "lists" => match self.listed(&subject) {
                    checks::Listed::Allowed => {
                        allowed_destination = true;
                        None
                    }
                    checks::Listed::Blocked(found) => Some(found),
                    checks::Listed::Neither => None,
                },
                "high_risk" if !allowed_destination => checks::high_risk(&subject),
                "premium_burst" if !allowed_destination => checks::premium_burst(&subject),
                "scanner" => self.scanner(&subject),
                "repeats" => self.repeats(&subject),
                "quotas" => checks::quotas(&subject),
                "concurrency" => checks::concurrency(&subject),
                "new_country" if subject.international && !allowed_destination => {
                    self.new_country(&subject)
                }
                "new_source" => self.new_source(&subject),
                "volume_jump" => checks::volume_jump(&subject),
                _ => None,
            };
            note(&mut out, found);
        }
        let admission = Admission {
            country,
            international: subject.international,
            premium_short_s: subject.premium.then_some(c.premium_short_s),
            network: Some(subject.network),
        };
        self.combine(req, &profile, out, vouches, admission)
    }

    /// Combine the findings: a block wins, then a challenge; flags add up to a score that
    /// may block or challenge too. An admitted call counts toward the caller's usage; a
    /// challenged one is held until the caller passes.
    fn combine(
        &mut self,
        req: &Request,
        profile: &Profile,
        mut out: Outcome,
        vouches: Option<String>,
        admission: Admission,
    ) -> Outcome {
        let c = &profile.config;
        let iso = out.country.clone();
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
                _ => profile.verdict_for(f.check, iso.as_deref()),
            };
            out.decision = Decision::Block(verdict);
            return out;
        }
        if out.score >= c.block_score {
            out.decision = Decision::Block(profile.verdict_for("score", iso.as_deref()));
            return out;
        }
        if out.findings.iter().any(|f| f.act == Act::Challenge)
            || out.score >= c.challenge_score.max(1) && out.score > 0
        {
            // What a passed challenge vouches for: a new country or network is remembered;
            // a quota overrun, a STIR failure or a score is not.
            let value = vouches.unwrap_or_else(|| "score".to_owned());
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

    fn profile_of(&self, req: &Request) -> Profile {
        match self.profiles.get(&req.profile) {
            Some(p) => p.clone(),
            None => {
                // Dialplans are checked against the profiles at load; this is a safety net.
                tracing::error!(profile = %req.profile, "no such screening profile; using default");
                self.profiles.get("default").cloned().unwrap_or_else(|| {
                    unreachable!("ScreeningConfig::profiles always adds `default`")
                })
            }
        }
    }

    /// The number called in E.164 digits, and its country, by the profile's dialing plan.
    fn destination(&self, req: &Request, profile: &Profile) -> (Option<String>, Option<String>) {
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
        (destination, country)
    }

    /// What counting a call needs to know before it is screened. None: the source is
    /// trusted, nothing counts.
    pub fn counting(&self, req: &Request) -> Option<Counting> {
        if crate::dialplan::in_networks(req.source, &self.trusted) {
            return None;
        }
        let profile = self.profile_of(req);
        let (_, country) = self.destination(req, &profile);
        let c = &profile.config;
        Some(Counting {
            international: country.as_deref().is_some_and(|iso| iso != c.home_country),
            premium_window_s: c.premium_burst_window_s,
            repeat_window_s: c.repeat_window_s,
            per_source: self.source_rate > 0,
        })
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
    /// Whether it counts as a short premium call.
    pub fn call_ended(&mut self, call: u64, answered_s: u64, now: u64) -> bool {
        self.held.remove(&call);
        self.usage.ended(call, answered_s, now)
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

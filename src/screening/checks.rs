//! One function per screening check. Each looks at the call (a [`Subject`]: the request
//! with what every check needs worked out once) and says what it found, if anything;
//! `Engine::screen` runs them in the profile's order and combines the findings.

use super::lists::ListName;
use super::numbers::{Risk, RiskRange};
use super::profile::{Act, Answer, Profile, ProfileConfig, Verdict};
use super::usage::Figures;
use super::{Engine, Finding, Request, stir};

/// One call as the checks see it.
pub(super) struct Subject<'a> {
    pub req: &'a Request,
    pub profile: &'a Profile,
    /// The destination in E.164 digits, and its country's ISO code.
    pub destination: Option<String>,
    pub iso: Option<String>,
    pub international: bool,
    /// The high-risk range the destination falls in (its prefix), if any.
    pub risk: Option<(String, RiskRange)>,
    pub premium: bool,
    /// The caller's usage so far.
    pub figures: Figures,
    /// The source's network (a /24 or /48), for the new-source check.
    pub network: String,
}

impl Subject<'_> {
    fn config(&self) -> &ProfileConfig {
        &self.profile.config
    }
}

/// What a check found, and what a passed challenge would vouch for (a new country or
/// network is remembered; most findings vouch for nothing).
pub(super) struct Found {
    pub finding: Finding,
    pub vouches: Option<String>,
}

fn finding(check: &'static str, act: Act, reason: String) -> Found {
    Found {
        finding: Finding { check, act, reason },
        vouches: None,
    }
}

fn vouching(check: &'static str, act: Act, reason: String, value: String) -> Found {
    Found {
        finding: Finding { check, act, reason },
        vouches: Some(value),
    }
}

/// The lists' answer on a destination.
pub(super) enum Listed {
    /// On an allow list: later destination checks pass it.
    Allowed,
    Blocked(Found),
    Neither,
}

impl Engine {
    /// The source is in `screening.blocked_sources` or on the block list: a block, with
    /// the verdict the profile gives `blocked_source`.
    pub(super) fn blocked_source(
        &self,
        req: &Request,
        profile: &Profile,
    ) -> Option<(Found, Verdict)> {
        let listed = self.lists.blocked_source(req.source);
        if !crate::dialplan::in_networks(req.source, &self.blocked) && listed.is_none() {
            return None;
        }
        let why = listed.map_or("in screening.blocked_sources".into(), |n| {
            format!("on the block list ({n})")
        });
        let reason = format!("source {} {why}", req.source);
        let verdict = profile.verdict_for("blocked_source", None);
        Some((finding("blocked_source", Act::Block, reason), verdict))
    }

    /// More calls this second from the source than `screening.source_rate`: a block, 503
    /// unless the profile says otherwise (so an upstream fails over).
    pub(super) fn source_rate(
        &mut self,
        req: &Request,
        profile: &Profile,
    ) -> Option<(Found, Verdict)> {
        if self.source_rate == 0 {
            return None;
        }
        let slot = self.rate.entry(req.source).or_insert((req.now, 0));
        if slot.0 != req.now {
            *slot = (req.now, 0);
        }
        slot.1 += 1;
        let calls = req.shared.as_ref().and_then(|s| s.source_calls);
        if calls.unwrap_or(slot.1) <= self.source_rate {
            return None;
        }
        let verdict = profile
            .verdict_by_check
            .get("source_rate")
            .cloned()
            .unwrap_or(Verdict {
                answer: Answer::Unavailable,
                prompt: None,
            });
        let reason = format!("source {} above {} calls/s", req.source, self.source_rate);
        Some((finding("source_rate", Act::Block, reason), verdict))
    }

    /// The caller passed a challenge for `value` (`country:CU`, `source:NET`) on this node
    /// or, in a cluster, on any node.
    fn user_allows(&self, s: &Subject, value: &str) -> bool {
        self.lists.user_allows(&s.req.user, value)
            || s.req
                .shared
                .as_ref()
                .is_some_and(|shared| shared.allowed.contains(value))
    }

    /// The destination on an allow list, on a block list, or neither.
    pub(super) fn listed(&self, s: &Subject) -> Listed {
        let (Some(d), iso, c) = (s.destination.as_deref(), s.iso.as_deref(), s.config()) else {
            return Listed::Neither;
        };
        let user_allowed = [format!("number:{d}")]
            .into_iter()
            .chain(iso.map(|i| format!("country:{i}")))
            .any(|v| self.user_allows(s, &v));
        let static_allow = c
            .allow_numbers
            .iter()
            .any(|n| n.trim_start_matches('+') == d)
            || c.allow_prefixes
                .iter()
                .any(|p| d.starts_with(p.trim_start_matches('+')))
            || iso.is_some_and(|i| c.allow_countries.iter().any(|a| a.eq_ignore_ascii_case(i)));
        if static_allow || user_allowed || self.lists.destination(ListName::Allow, d, iso).is_some()
        {
            return Listed::Allowed;
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
        match hit {
            Some(entry) => {
                let reason = format!("{d} is on the block list ({entry})");
                Listed::Blocked(finding("lists", Act::Block, reason))
            }
            None => Listed::Neither,
        }
    }

    /// A call from a scanner's User-Agent (sipvicious, friendly-scanner, ...).
    pub(super) fn scanner(&self, s: &Subject) -> Option<Found> {
        let name = crate::guard::scanner_in(&self.scanners, &s.req.user_agent)?;
        let reason = format!("User-Agent {:?} is a scanner ({name})", s.req.user_agent);
        Some(finding("scanner", Act::Block, reason))
    }

    /// The same callee called again and again within the window.
    pub(super) fn repeats(&mut self, s: &Subject) -> Option<Found> {
        let c = s.config();
        // Noted here too, so the node's own window is current if Redis goes away.
        let local =
            self.usage
                .note_attempt(&s.req.user, &s.req.callee, s.req.now, c.repeat_window_s);
        let n = s.req.shared.as_ref().map_or(local, |shared| shared.repeats);
        if c.repeat_limit == 0 || n <= c.repeat_limit {
            return None;
        }
        let reason = format!("{n} calls to {} in {} s", s.req.callee, c.repeat_window_s);
        Some(finding("repeats", Act::Block, reason))
    }

    /// A first call to a foreign country.
    pub(super) fn new_country(&self, s: &Subject) -> Option<Found> {
        let iso = s.iso.as_deref()?;
        let called = match &s.req.shared {
            Some(shared) => shared.countries.contains(iso),
            None => self.usage.has_called(&s.req.user, iso),
        };
        if called {
            return None;
        }
        let reason = format!("first call to {iso}");
        Some(vouching(
            "new_country",
            s.config().on_new_country,
            reason,
            format!("country:{iso}"),
        ))
    }

    /// A user with a history calling from a network never seen for it.
    pub(super) fn new_source(&self, s: &Subject) -> Option<Found> {
        let known = match &s.req.shared {
            Some(shared) => &shared.networks,
            None => self.usage.user(&s.req.user).map(|u| &u.sources)?,
        };
        let network = &s.network;
        if known.is_empty()
            || known.contains(network)
            || self.user_allows(s, &format!("source:{network}"))
        {
            return None;
        }
        let reason = format!("first call from {network}");
        Some(vouching(
            "new_source",
            s.config().on_new_source,
            reason,
            format!("source:{network}"),
        ))
    }
}

/// The caller's STIR/SHAKEN result (the driver verified it): verstat and attestation
/// into the outcome, and a finding for a failure or, as the profile says, no signature.
pub(super) fn stir(req: &Request, c: &ProfileConfig, out: &mut super::Outcome) -> Option<Found> {
    let result = req.stir.clone().unwrap_or(stir::Stir::Unsigned);
    out.verstat = Some(result.verstat());
    out.attestation = result.attestation().map(str::to_owned);
    match &result {
        stir::Stir::Verified { .. } => {
            out.identity_verified = true;
            None
        }
        stir::Stir::Failed { code, reason } => {
            out.identity_failed = true;
            let reason = format!("{code}: {reason}");
            Some(vouching("stir", c.on_stir_failure, reason, "stir".into()))
        }
        stir::Stir::Unsigned => {
            let act = match c.on_unsigned.as_str() {
                "flag" => Act::Flag,
                "challenge" => Act::Challenge,
                "block" => Act::Block,
                _ => return None,
            };
            Some(finding("stir", act, "no Identity header".into()))
        }
    }
}

/// A destination in an IRSF or premium-rate range.
pub(super) fn high_risk(s: &Subject) -> Option<Found> {
    let (prefix, range) = s.risk.as_ref()?;
    let c = s.config();
    let act = match range.risk {
        Risk::Irsf => c.on_high_risk,
        Risk::Premium => c.on_premium,
    };
    let reason = format!(
        "{} in the {} range +{prefix} ({})",
        s.destination.as_deref().unwrap_or_default(),
        range.risk.as_str(),
        range.note
    );
    Some(finding("high_risk", act, reason))
}

/// Many short premium-rate calls in the window (a pumping pattern).
pub(super) fn premium_burst(s: &Subject) -> Option<Found> {
    let c = s.config();
    let recent = s.figures.premium_short_recent;
    if !s.premium || c.premium_burst_calls == 0 || recent < c.premium_burst_calls {
        return None;
    }
    let reason = format!(
        "{recent} short premium calls in {} s",
        c.premium_burst_window_s
    );
    Some(finding("premium_burst", Act::Block, reason))
}

/// A quota used up: calls per hour or day, minutes per day, international calls per day.
pub(super) fn quotas(s: &Subject) -> Option<Found> {
    let (c, f) = (s.config(), &s.figures);
    let international_limit = if s.international {
        c.international_per_day
    } else {
        0
    };
    let (limit, used, what) = [
        (c.calls_per_hour, f.calls_last_hour, "calls per hour"),
        (c.calls_per_day, f.calls_last_day, "calls per day"),
        (
            c.minutes_per_day,
            f.seconds_last_day / 60,
            "minutes per day",
        ),
        (
            international_limit,
            f.international_last_day,
            "international calls per day",
        ),
    ]
    .into_iter()
    .find(|(limit, used, _)| *limit > 0 && used >= limit)?;
    let reason = format!("{what}: {used} of {limit} used");
    Some(vouching("quotas", c.on_quota, reason, "quota".into()))
}

/// As many live calls as the limit for this time of day (business hours or not).
pub(super) fn concurrency(s: &Subject) -> Option<Found> {
    let c = s.config();
    let ts = jiff::Timestamp::from_second(s.req.now as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let (limit, when) = if s.profile.business_hours.contains(ts) {
        (c.max_concurrent, "business hours")
    } else {
        (c.max_concurrent_off_hours, "off hours")
    };
    let live = s.figures.live_calls;
    if limit == 0 || live < limit {
        return None;
    }
    let reason = format!("{live} live calls, the limit in {when} is {limit}");
    Some(finding("concurrency", Act::Block, reason))
}

/// Far more calls this hour than the caller's baseline.
pub(super) fn volume_jump(s: &Subject) -> Option<Found> {
    let (c, f) = (s.config(), &s.figures);
    let this_hour = f.calls_last_hour + 1;
    if f.baseline_hours < c.volume_jump_min_history_h
        || this_hour < c.volume_jump_min_calls
        || this_hour as f64 <= c.volume_jump_factor * f.baseline_per_hour
    {
        return None;
    }
    let reason = format!(
        "{this_hour} calls this hour against a baseline of {:.1}/h",
        f.baseline_per_hour
    );
    Some(finding("volume_jump", c.on_volume_jump, reason))
}

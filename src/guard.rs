//! Flood and abuse protection in front of the core (the job of pike and fail2ban): request
//! rates per source, temporary bans after flooding or failed authentication, scanner user
//! agents, and concurrent calls per source. Sans-IO: every call takes the time, so tests
//! run on virtual time; the core asks before it reads a request and reports what it saw.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// User-Agent substrings (lower case) of well-known SIP scanners: the default of both
/// `guard.scanner_agents` (dropped before reading) and `screening.scanner_user_agents`
/// (the screening check of that name).
pub const SCANNER_USER_AGENTS: [&str; 10] = [
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipsak",
    "iwar",
    "sundayddr",
    "vaxsipuseragent",
    "pplsip",
    "smap",
];

/// The entry of `agents` (lower case) that `user_agent` contains, ignoring case.
pub fn scanner_in<'a>(agents: &'a [String], user_agent: &str) -> Option<&'a str> {
    let agent = user_agent.to_ascii_lowercase();
    agents
        .iter()
        .map(String::as_str)
        .find(|s| agent.contains(s))
}

/// `[guard]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Requests one source may send per second on average (0: no limit). Past it requests
    /// are dropped unanswered: answering a flood would multiply it.
    pub requests_per_s: u32,
    /// How many requests above the average a source may send at once.
    pub burst: u32,
    /// Requests dropped for rate within `window_s` before the source is banned (0: never).
    pub flood_drops: u32,
    /// Failed authentications (wrong password, unknown user) within `window_s` before the
    /// source is banned (0: never).
    pub auth_failures: u32,
    pub window_s: u64,
    /// How long a ban lasts; a banned source's messages are dropped unread.
    pub ban_s: u64,
    /// Concurrent calls from one source (0: no limit); past it INVITEs get 503.
    pub max_calls_per_source: usize,
    /// What to do with requests whose User-Agent names a scanner: "drop" them, "ban" the
    /// source, or "allow" them like any other.
    pub scanners: String,
    /// User-Agent substrings (case-insensitive) that mark a scanner.
    pub scanner_agents: Vec<String>,
    /// Sources no limit applies to (addresses or networks, e.g. your trunks; default:
    /// loopback); the IMS S-CSCFs (`ims.trusted_scscf`) are always exempt.
    pub exempt: Vec<String>,
    /// Sources remembered at once; past it new sources go unmetered until old ones expire
    /// (memory stays bounded when a flood spoofs its addresses).
    pub max_sources: usize,
    /// Proxies in front of Warden (a load balancer such as Kamailio's dispatcher, an SBC;
    /// addresses or networks). A request one of them relays is judged by its origin, the
    /// sender its Via below the proxy's names (`received=`, RFC 3261 18.2.1): the limits,
    /// bans and screening apply to the phone, not to the proxy. Default: none.
    pub edge_proxies: Vec<String>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            requests_per_s: 100,
            burst: 200,
            flood_drops: 1000,
            auth_failures: 10,
            window_s: 60,
            ban_s: 600,
            max_calls_per_source: 200,
            scanners: "drop".into(),
            scanner_agents: SCANNER_USER_AGENTS.map(String::from).to_vec(),
            // Local processes (a proxy in front of Warden, monitoring) are trusted.
            exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_sources: 100_000,
            edge_proxies: Vec::new(),
        }
    }
}

impl GuardConfig {
    /// Refuse settings that cannot work, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            ["drop", "ban", "allow"].contains(&self.scanners.as_str()),
            "guard.scanners {:?}: expected \"drop\", \"ban\" or \"allow\"",
            self.scanners
        );
        anyhow::ensure!(
            self.requests_per_s == 0 || self.burst > 0,
            "guard.burst must be above 0 when guard.requests_per_s is set"
        );
        anyhow::ensure!(self.window_s > 0, "guard.window_s must be above 0");
        for network in &self.edge_proxies {
            crate::dialplan::parse_network(network)
                .map_err(|e| anyhow::anyhow!("guard.edge_proxies: {network:?}: {e}"))?;
        }
        anyhow::ensure!(self.max_sources > 0, "guard.max_sources must be above 0");
        for network in &self.exempt {
            crate::dialplan::parse_network(network)
                .map_err(|e| anyhow::anyhow!("guard.exempt: {e}"))?;
        }
        Ok(())
    }
}

/// Why a message was dropped unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dropped {
    Banned,
    Rate,
    Scanner,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Banned => "banned",
            Dropped::Rate => "rate",
            Dropped::Scanner => "scanner",
        }
    }
}

/// Why a source was banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BanReason {
    Flood,
    Auth,
    Scanner,
}

impl BanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::Flood => "flood",
            BanReason::Auth => "auth",
            BanReason::Scanner => "scanner",
        }
    }

    pub fn parse(text: &str) -> Option<BanReason> {
        [BanReason::Flood, BanReason::Auth, BanReason::Scanner]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// A ban this guard imposed, for the other nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imposed {
    pub source: IpAddr,
    pub reason: BanReason,
    pub duration: Duration,
}

/// What the guard has done since start, for /metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub dropped: std::collections::BTreeMap<Dropped, u64>,
    pub bans: std::collections::BTreeMap<BanReason, u64>,
    pub auth_failures: u64,
    pub call_limit_refused: u64,
    /// Sources seen while the table was full (not metered).
    pub untracked: u64,
}

/// One source's state: a token bucket, counts within the current window, a ban.
#[derive(Debug)]
struct Source {
    tokens: f64,
    refilled: Instant,
    window_start: Instant,
    rate_drops: u32,
    auth_failures: u32,
    banned: Option<(Instant, BanReason)>,
    calls: usize,
}

/// A ban as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ban {
    pub source: IpAddr,
    pub reason: &'static str,
    pub remaining_s: u64,
}

pub struct Guard {
    config: GuardConfig,
    /// `config`'s numbers in the units the checks use, derived once.
    limits: Limits,
    exempt: Vec<(IpAddr, u8)>,
    edges: Vec<(IpAddr, u8)>,
    scanner_agents: Vec<String>,
    sources: HashMap<IpAddr, Source>,
    /// Bans imposed here and not yet taken by `take_imposed` (the cluster shares them).
    imposed: Vec<Imposed>,
    pub counters: Counters,
}

impl Guard {
    /// `trusted`: networks exempt besides `config.exempt` (the S-CSCFs).
    pub fn new(config: &GuardConfig, trusted: &[(IpAddr, u8)]) -> Guard {
        let mut exempt: Vec<(IpAddr, u8)> = config
            .exempt
            .iter()
            .filter_map(|n| crate::dialplan::parse_network(n).ok())
            .collect();
        exempt.extend_from_slice(trusted);
        Guard {
            scanner_agents: config
                .scanner_agents
                .iter()
                .map(|a| a.to_ascii_lowercase())
                .collect(),
            limits: Limits::of(config),
            config: config.clone(),
            exempt,
            edges: config
                .edge_proxies
                .iter()
                .filter_map(|n| crate::dialplan::parse_network(n).ok())
                .collect(),
            sources: HashMap::new(),
            imposed: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// Whether `ip` is a proxy in front of Warden (`guard.edge_proxies`).
    pub fn is_edge(&self, ip: IpAddr) -> bool {
        crate::dialplan::in_networks(ip, &self.edges)
    }

    /// Exempt sources, and the edge proxies (their requests are judged by origin).
    fn is_exempt(&self, ip: IpAddr) -> bool {
        crate::dialplan::in_networks(ip, &self.exempt) || self.is_edge(ip)
    }

    /// Whether a message from `ip` may be read: any message from a banned source is
    /// dropped; requests also spend the source's rate and are checked for scanners.
    pub fn admit(
        &mut self,
        ip: IpAddr,
        is_request: bool,
        user_agent: Option<&str>,
        now: Instant,
    ) -> Result<(), Dropped> {
        if self.is_exempt(ip) {
            return Ok(());
        }
        let scanner = is_request && self.config.scanners != "allow" && self.is_scanner(user_agent);
        let ban_scanners = self.config.scanners == "ban";
        let limits = self.limits;
        let Some(source) = self.source(ip, now) else {
            return Ok(());
        };
        let (verdict, ban) = if source.banned.is_some() {
            (Err(Dropped::Banned), None)
        } else if !is_request {
            (Ok(()), None)
        } else if scanner {
            (
                Err(Dropped::Scanner),
                ban_scanners.then_some(BanReason::Scanner),
            )
        } else if !source.spend(limits.rate, limits.burst, now) {
            source.rate_drops += 1;
            let flooding = limits.flood_drops > 0 && source.rate_drops >= limits.flood_drops;
            (Err(Dropped::Rate), flooding.then_some(BanReason::Flood))
        } else {
            (Ok(()), None)
        };
        if let Some(reason) = ban {
            source.banned = Some((now + limits.ban, reason));
            self.imposed.push(Imposed {
                source: ip,
                reason,
                duration: limits.ban,
            });
            *self.counters.bans.entry(reason).or_default() += 1;
            tracing::warn!(source = %ip, agent = user_agent.unwrap_or_default(), reason = reason.as_str(), ban_s = limits.ban.as_secs(), "source banned");
        }
        if let Err(why) = verdict {
            *self.counters.dropped.entry(why).or_default() += 1;
        }
        verdict
    }

    fn is_scanner(&self, user_agent: Option<&str>) -> bool {
        user_agent.is_some_and(|agent| scanner_in(&self.scanner_agents, agent).is_some())
    }

    /// The source's entry, brought up to date (window rolled, expired ban lifted), made if
    /// new; `None` when the table is full even after dropping the idle.
    fn source(&mut self, ip: IpAddr, now: Instant) -> Option<&mut Source> {
        if !self.sources.contains_key(&ip) {
            if self.sources.len() >= self.config.max_sources {
                self.sweep(now);
            }
            if self.sources.len() >= self.config.max_sources {
                self.counters.untracked += 1;
                return None;
            }
        }
        let window = self.limits.window;
        let source = self.sources.entry(ip).or_insert_with(|| Source {
            tokens: f64::from(self.config.burst),
            refilled: now,
            window_start: now,
            rate_drops: 0,
            auth_failures: 0,
            banned: None,
            calls: 0,
        });
        if now.saturating_duration_since(source.window_start) >= window {
            source.window_start = now;
            source.rate_drops = 0;
            source.auth_failures = 0;
        }
        if source.banned.is_some_and(|(until, _)| until <= now) {
            tracing::info!(source = %ip, "ban over");
            source.banned = None;
        }
        Some(source)
    }

    /// A request from `ip` carried credentials that failed; enough of them ban the source.
    pub fn auth_failed(&mut self, ip: IpAddr, now: Instant) {
        self.counters.auth_failures += 1;
        let (most, ban) = (self.config.auth_failures, self.limits.ban);
        if self.is_exempt(ip) || most == 0 {
            return;
        }
        let Some(source) = self.source(ip, now) else {
            return;
        };
        source.auth_failures += 1;
        if source.auth_failures >= most && source.banned.is_none() {
            source.banned = Some((now + ban, BanReason::Auth));
            let failures = source.auth_failures;
            self.imposed.push(Imposed {
                source: ip,
                reason: BanReason::Auth,
                duration: ban,
            });
            *self.counters.bans.entry(BanReason::Auth).or_default() += 1;
            tracing::warn!(source = %ip, failures, ban_s = ban.as_secs(), "source banned after failed authentication");
        }
    }

    /// Whether a new call from `ip` may start: false when the source has
    /// `max_calls_per_source` live calls (the INVITE is refused, and counted here).
    pub fn admit_call(&mut self, ip: IpAddr) -> bool {
        let max = self.config.max_calls_per_source;
        if max == 0 || self.is_exempt(ip) {
            return true;
        }
        let live = self.sources.get(&ip).map_or(0, |s| s.calls);
        if live >= max {
            self.counters.call_limit_refused += 1;
            return false;
        }
        true
    }

    /// A call from `ip` has started (after `admit_call`); `call_ended` when it is over.
    pub fn call_started(&mut self, ip: IpAddr, now: Instant) {
        if self.config.max_calls_per_source == 0 || self.is_exempt(ip) {
            return;
        }
        if let Some(source) = self.source(ip, now) {
            source.calls += 1;
        }
    }

    /// A call `call_started` admitted has ended.
    pub fn call_ended(&mut self, ip: IpAddr) {
        if let Some(source) = self.sources.get_mut(&ip) {
            source.calls = source.calls.saturating_sub(1);
        }
    }

    /// Forget sources with nothing to remember: no ban, no call, a full bucket.
    pub fn sweep(&mut self, now: Instant) {
        let window = self.limits.window;
        self.sources.retain(|_, s| {
            let idle = now.saturating_duration_since(s.refilled) >= window
                && now.saturating_duration_since(s.window_start) >= window;
            s.calls > 0 || s.banned.is_some_and(|(until, _)| until > now) || !idle
        });
    }

    /// How many sources are banned now (a gauge: no list built).
    pub fn banned(&self, now: Instant) -> usize {
        self.sources
            .values()
            .filter(|s| s.banned.is_some_and(|(until, _)| until > now))
            .count()
    }

    /// Sources banned now.
    pub fn bans(&self, now: Instant) -> Vec<Ban> {
        let mut bans: Vec<Ban> = self
            .sources
            .iter()
            .filter_map(|(ip, s)| {
                let (until, reason) = s.banned?;
                (until > now).then(|| Ban {
                    source: *ip,
                    reason: reason.as_str(),
                    remaining_s: until.duration_since(now).as_secs(),
                })
            })
            .collect();
        bans.sort_by_key(|b| b.source);
        bans
    }

    /// The bans imposed here since the last call (for the other nodes).
    pub fn take_imposed(&mut self) -> Vec<Imposed> {
        std::mem::take(&mut self.imposed)
    }

    /// A ban another node imposed (`duration` from now): this node drops the source too.
    /// Not counted in `counters.bans` (the node that imposed it counts it).
    pub fn impose(&mut self, ban: &Imposed, now: Instant) {
        if self.is_exempt(ban.source) || ban.duration.is_zero() {
            return;
        }
        let until = now + ban.duration;
        if let Some(source) = self.source(ban.source, now)
            && source.banned.is_none_or(|(at, _)| at < until)
        {
            source.banned = Some((until, ban.reason));
        }
    }

    /// Lift a ban; false when `ip` was not banned.
    pub fn unban(&mut self, ip: IpAddr) -> bool {
        match self.sources.get_mut(&ip) {
            Some(s) if s.banned.is_some() => {
                s.banned = None;
                s.rate_drops = 0;
                s.auth_failures = 0;
                true
            }
            _ => false,
        }
    }

    /// Sources remembered (bounded by `max_sources`).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

/// The configuration's numbers in the units the checks use.
#[derive(Debug, Clone, Copy)]
struct Limits {
    rate: f64,
    burst: f64,
    flood_drops: u32,
    window: Duration,
    ban: Duration,
}

impl Limits {
    fn of(c: &GuardConfig) -> Limits {
        Limits {
            rate: f64::from(c.requests_per_s),
            burst: f64::from(c.burst),
            flood_drops: c.flood_drops,
            window: Duration::from_secs(c.window_s),
            ban: Duration::from_secs(c.ban_s),
        }
    }
}

impl Source {
    /// Take one token from the bucket (refilled at `rate` per second up to `burst`); a
    /// rate of 0 means no limit.
    fn spend(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(tweak: impl FnOnce(&mut GuardConfig)) -> Guard {
        let mut config = GuardConfig {
            requests_per_s: 10,
            burst: 20,
            flood_drops: 50,
            auth_failures: 3,
            window_s: 60,
            ban_s: 600,
            max_calls_per_source: 2,
            ..GuardConfig::default()
        };
        tweak(&mut config);
        config.validate().expect("valid");
        Guard::new(&config, &[])
    }

    const FLOODER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_source_gets_its_burst_then_its_rate_and_others_are_untouched() {
        let mut g = guard(|_| {});
        let t0 = Instant::now();
        let passed = (0..30)
            .filter(|_| g.admit(FLOODER, true, None, t0).is_ok())
            .count();
        assert_eq!(passed, 20, "the burst");
        assert_eq!(g.admit(OTHER, true, None, t0), Ok(()));
        // A second later ten more tokens have come.
        let t1 = t0 + Duration::from_secs(1);
        let passed = (0..30)
            .filter(|_| g.admit(FLOODER, true, None, t1).is_ok())
            .count();
        assert_eq!(passed, 10);
        // Responses are not metered.
        assert_eq!(g.admit(FLOODER, false, None, t1), Ok(()));
        assert_eq!(g.counters.dropped[&Dropped::Rate], 30);
    }

    #[test]
    fn a_flood_is_banned_until_the_ban_ends() {
        let mut g = guard(|_| {});
        let t0 = Instant::now();
        for _ in 0..70 {
            let _ = g.admit(FLOODER, true, None, t0);
        }
        assert_eq!(g.counters.bans[&BanReason::Flood], 1);
        assert_eq!(g.admit(FLOODER, false, None, t0), Err(Dropped::Banned));
        let bans = g.bans(t0);
        assert_eq!(
            (bans.len(), bans[0].reason, bans[0].remaining_s),
            (1, "flood", 600)
        );
        assert_eq!(g.banned(t0), 1);
        let later = t0 + Duration::from_secs(599);
        assert_eq!(g.admit(FLOODER, true, None, later), Err(Dropped::Banned));
        let over = t0 + Duration::from_secs(600);
        assert_eq!(g.admit(FLOODER, true, None, over), Ok(()));
        assert!(g.bans(over).is_empty());
        assert_eq!(g.banned(over), 0);
    }

    #[test]
    fn failed_authentication_bans_within_the_window_only() {
        let mut g = guard(|_| {});
        let t0 = Instant::now();
        g.auth_failed(FLOODER, t0);
        g.auth_failed(FLOODER, t0 + Duration::from_secs(30));
        // The window has rolled: the count starts again.
        g.auth_failed(FLOODER, t0 + Duration::from_secs(61));
        assert_eq!(
            g.admit(FLOODER, true, None, t0 + Duration::from_secs(62)),
            Ok(())
        );
        g.auth_failed(FLOODER, t0 + Duration::from_secs(63));
        g.auth_failed(FLOODER, t0 + Duration::from_secs(64));
        let t = t0 + Duration::from_secs(65);
        assert_eq!(g.admit(FLOODER, true, None, t), Err(Dropped::Banned));
        assert_eq!(g.counters.bans[&BanReason::Auth], 1);
        assert_eq!(g.counters.auth_failures, 5);
        assert!(g.unban(FLOODER));
        assert_eq!(g.admit(FLOODER, true, None, t), Ok(()));
        assert!(!g.unban(OTHER));
    }

    #[test]
    fn scanners_are_dropped_or_banned_as_configured() {
        let mut g = guard(|_| {});
        let t0 = Instant::now();
        let sweep = Some("friendly-scanner");
        assert_eq!(g.admit(FLOODER, true, sweep, t0), Err(Dropped::Scanner));
        assert_eq!(g.admit(FLOODER, true, Some("Linphone/5"), t0), Ok(()));
        let mut g = guard(|c| c.scanners = "ban".into());
        assert_eq!(
            g.admit(FLOODER, true, Some("SIPVicious 0.3"), t0),
            Err(Dropped::Scanner)
        );
        assert_eq!(
            g.admit(FLOODER, true, Some("Linphone/5"), t0),
            Err(Dropped::Banned)
        );
        let mut g = guard(|c| c.scanners = "allow".into());
        assert_eq!(g.admit(FLOODER, true, sweep, t0), Ok(()));
    }

    #[test]
    fn calls_per_source_are_limited_and_freed() {
        let mut g = guard(|_| {});
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(g.admit_call(FLOODER));
            g.call_started(FLOODER, t0);
        }
        assert!(!g.admit_call(FLOODER));
        assert!(g.admit_call(OTHER));
        g.call_ended(FLOODER);
        assert!(g.admit_call(FLOODER));
        assert_eq!(g.counters.call_limit_refused, 1);
    }

    #[test]
    fn exempt_sources_pass_everything() {
        let mut g = guard(|c| c.exempt = vec!["192.0.2.0/24".into()]);
        let t0 = Instant::now();
        assert!((0..1000).all(|_| g.admit(FLOODER, true, None, t0).is_ok()));
        for _ in 0..10 {
            g.auth_failed(FLOODER, t0);
        }
        for _ in 0..10 {
            assert!(g.admit_call(FLOODER));
            g.call_started(FLOODER, t0);
        }
        assert!(g.bans(t0).is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_idle_sources_are_swept() {
        let mut g = guard(|c| c.max_sources = 100);
        let t0 = Instant::now();
        for i in 0..300u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(g.admit(ip, true, None, t0), Ok(()));
        }
        assert_eq!(g.tracked(), 100);
        assert_eq!(g.counters.untracked, 200);
        // A window later the idle ones make room.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(g.admit(FLOODER, true, None, later), Ok(()));
        assert_eq!(g.tracked(), 1);
    }

    #[test]
    fn bans_imposed_here_are_handed_out_once_and_another_nodes_hold_until_they_end() {
        let (mut here, mut there) = (guard(|_| {}), guard(|_| {}));
        let t0 = Instant::now();
        for _ in 0..3 {
            here.auth_failed(FLOODER, t0);
        }
        let imposed = here.take_imposed();
        assert_eq!(
            imposed,
            vec![Imposed {
                source: FLOODER,
                reason: BanReason::Auth,
                duration: Duration::from_secs(600),
            }]
        );
        assert!(here.take_imposed().is_empty(), "handed out once");
        there.impose(&imposed[0], t0);
        assert_eq!(there.admit(FLOODER, true, None, t0), Err(Dropped::Banned));
        assert!(there.take_imposed().is_empty(), "not shared back");
        assert_eq!(
            there.counters.bans.get(&BanReason::Auth),
            None,
            "counted by its node"
        );
        let over = t0 + Duration::from_secs(601);
        assert_eq!(there.admit(FLOODER, true, None, over), Ok(()));
    }

    #[test]
    fn edge_proxies_are_never_limited() {
        let mut g = guard(|c| c.edge_proxies = vec!["192.0.2.0/30".into()]);
        let t0 = Instant::now();
        assert!(g.is_edge(FLOODER) && !g.is_edge("192.0.2.9".parse().unwrap()));
        assert!((0..100).all(|_| g.admit(FLOODER, true, None, t0).is_ok()));
        let bad = guard(|_| {});
        let mut config = bad.config.clone();
        config.edge_proxies = vec!["not-a-network".into()];
        let refused = config.validate().expect_err("refused");
        assert!(
            refused.to_string().contains("guard.edge_proxies"),
            "{refused}"
        );
    }
}

//! What each user has been doing: calls, international calls and minutes per minute bucket,
//! countries called, live calls, and caller->callee repeats. Pure, on a clock passed in.
//! Every change that must survive a restart comes out as a [`UsageChange`] for the store.

use std::collections::{HashMap, HashSet, VecDeque};

/// How far back buckets are kept: a week of baseline plus the day quotas look at.
const KEEP_S: u64 = 8 * 86_400;

/// One minute of one user's calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Unix minute (seconds / 60).
    pub minute: u64,
    pub calls: u32,
    pub international: u32,
    /// Answered seconds of calls that ended in this minute.
    pub seconds: u64,
    /// Calls to premium ranges that ended short (or unanswered) in this minute.
    pub premium_short: u32,
}

/// A change to persist; applying them in order to an empty store rebuilds the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageChange {
    /// Add these counts to the user's bucket (an upsert, so replays must not repeat).
    Add { user: String, bucket: Bucket },
    /// The user called this country for the first time.
    Country { user: String, iso: String, at: u64 },
    /// The user called from this network for the first time.
    Source {
        user: String,
        network: String,
        at: u64,
    },
    /// Forget the user's counters (buckets), keeping countries and allow-list.
    Reset { user: String },
    /// Forget everything about the user.
    Remove { user: String },
}

#[derive(Debug, Default, Clone)]
pub struct UserUsage {
    /// Minute buckets, oldest first.
    pub buckets: VecDeque<Bucket>,
    pub countries: HashSet<String>,
    /// Networks (a /24, or a /64) the user's admitted calls came from.
    pub sources: HashSet<String>,
    pub live_calls: u32,
}

/// What an admitted call counts as.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// The destination's country, and whether that is abroad.
    pub country: Option<String>,
    pub international: bool,
    /// For calls to premium ranges: under how many seconds the call counts as short.
    pub premium_short_s: Option<u64>,
    /// The network the call came from.
    pub network: Option<String>,
}

/// The network an address belongs to, for the new-source rule: its /24 (IPv4) or /64.
pub fn network_of(addr: std::net::IpAddr) -> String {
    match addr {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

impl UserUsage {
    fn sum_since(&self, since_minute: u64, field: impl Fn(&Bucket) -> u64) -> u64 {
        self.buckets
            .iter()
            .rev()
            .take_while(|b| b.minute >= since_minute)
            .map(field)
            .sum()
    }

    fn bucket_mut(&mut self, minute: u64) -> &mut Bucket {
        // Buckets arrive in time order; a late one (a clock step back) joins the newest.
        let newest = self.buckets.back().map(|b| b.minute);
        if newest.is_none_or(|m| m < minute) {
            self.buckets.push_back(Bucket {
                minute,
                ..Bucket::default()
            });
        }
        self.buckets.back_mut().expect("just pushed")
    }

    fn prune(&mut self, now: u64) {
        let oldest = now.saturating_sub(KEEP_S) / 60;
        while self.buckets.front().is_some_and(|b| b.minute < oldest) {
            self.buckets.pop_front();
        }
    }
}

/// A user's figures at one moment, as the rules read them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub calls_last_hour: u64,
    pub calls_last_day: u64,
    pub international_last_day: u64,
    pub seconds_last_day: u64,
    pub live_calls: u32,
    pub premium_short_recent: u64,
    /// Mean calls per active hour over the previous week (the current hour left out), and
    /// how many active hours that mean stands on.
    pub baseline_per_hour: f64,
    pub baseline_hours: u32,
}

/// A caller's state across the cluster, as the shared counts read it just before the
/// rules run (the call itself left out).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shared {
    pub figures: Figures,
    /// Countries called abroad (ISO codes) and networks called from, on any node.
    pub countries: HashSet<String>,
    pub networks: HashSet<String>,
    /// Calls from the caller to this callee within the repeated-call window, this one
    /// included, on any node.
    pub repeats: usize,
    /// What the caller is allowed after passing challenges on any node (`country:CU`).
    pub allowed: HashSet<String>,
    /// Calls from the call's source within this second, this one included, on any node
    /// (when sources are metered).
    pub source_calls: Option<u32>,
}

/// A call that was let through and counts until it ends.
#[derive(Debug, Clone)]
struct LiveCall {
    user: String,
    /// For calls to premium ranges: under how many seconds the call counts as short.
    premium_short_s: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Usage {
    users: HashMap<String, UserUsage>,
    /// (caller, callee) -> times of recent attempts, for the repeated-call rule.
    repeats: HashMap<(String, String), VecDeque<u64>>,
    live: HashMap<u64, LiveCall>,
    changes: Vec<UsageChange>,
}

impl Usage {
    /// The state the store kept: buckets and countries per user.
    pub fn restore(
        buckets: impl IntoIterator<Item = (String, Bucket)>,
        countries: impl IntoIterator<Item = (String, String)>,
        sources: impl IntoIterator<Item = (String, String)>,
    ) -> Usage {
        let mut usage = Usage::default();
        for (user, b) in buckets {
            let u = usage.users.entry(user).or_default();
            let slot = u.bucket_mut(b.minute);
            slot.calls += b.calls;
            slot.international += b.international;
            slot.seconds += b.seconds;
            slot.premium_short += b.premium_short;
        }
        for (user, iso) in countries {
            usage.users.entry(user).or_default().countries.insert(iso);
        }
        for (user, network) in sources {
            usage.users.entry(user).or_default().sources.insert(network);
        }
        usage
    }

    pub fn user(&self, user: &str) -> Option<&UserUsage> {
        self.users.get(user)
    }

    pub fn users(&self) -> impl Iterator<Item = (&String, &UserUsage)> {
        self.users.iter()
    }

    pub fn has_called(&self, user: &str, iso: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.countries.contains(iso))
    }

    /// The user's figures at `now`; `premium_window_s` bounds the premium burst count.
    pub fn figures(&self, user: &str, now: u64, premium_window_s: u64) -> Figures {
        let Some(u) = self.users.get(user) else {
            return Figures::default();
        };
        let minute = now / 60;
        let hour_start = minute.saturating_sub(59);
        let day_start = minute.saturating_sub(1439);
        let current_hour = now / 3600;
        let week_start_hour = current_hour.saturating_sub(7 * 24);
        let mut per_hour: HashMap<u64, u64> = HashMap::new();
        for b in &u.buckets {
            let hour = b.minute / 60;
            if hour >= week_start_hour && hour < current_hour && b.calls > 0 {
                *per_hour.entry(hour).or_default() += u64::from(b.calls);
            }
        }
        let active_hours = per_hour.len() as u32;
        let baseline = if active_hours == 0 {
            0.0
        } else {
            per_hour.values().sum::<u64>() as f64 / f64::from(active_hours)
        };
        Figures {
            calls_last_hour: u.sum_since(hour_start, |b| u64::from(b.calls)),
            calls_last_day: u.sum_since(day_start, |b| u64::from(b.calls)),
            international_last_day: u.sum_since(day_start, |b| u64::from(b.international)),
            seconds_last_day: u.sum_since(day_start, |b| b.seconds),
            live_calls: u.live_calls,
            premium_short_recent: u.sum_since((now.saturating_sub(premium_window_s)) / 60, |b| {
                u64::from(b.premium_short)
            }),
            baseline_per_hour: baseline,
            baseline_hours: active_hours,
        }
    }

    /// Attempts from `caller` to `callee` within the last `window_s`, this one included
    /// (it is recorded).
    pub fn note_attempt(&mut self, caller: &str, callee: &str, now: u64, window_s: u64) -> usize {
        let times = self
            .repeats
            .entry((caller.to_owned(), callee.to_owned()))
            .or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= window_s)
        {
            times.pop_front();
        }
        times.push_back(now);
        times.len()
    }

    /// A call was let through: it counts against the user's quotas from now on.
    pub fn admit(&mut self, call: u64, user: &str, what: &Admission, now: u64) {
        let (country, international) = (what.country.as_deref(), what.international);
        let u = self.users.entry(user.to_owned()).or_default();
        u.prune(now);
        let bucket = u.bucket_mut(now / 60);
        bucket.calls += 1;
        bucket.international += u32::from(international);
        u.live_calls += 1;
        self.changes.push(UsageChange::Add {
            user: user.to_owned(),
            bucket: Bucket {
                minute: now / 60,
                calls: 1,
                international: u32::from(international),
                ..Bucket::default()
            },
        });
        if let Some(iso) = country.filter(|_| international)
            && u.countries.insert(iso.to_owned())
        {
            self.changes.push(UsageChange::Country {
                user: user.to_owned(),
                iso: iso.to_owned(),
                at: now,
            });
        }
        if let Some(network) = &what.network
            && u.sources.insert(network.clone())
        {
            self.changes.push(UsageChange::Source {
                user: user.to_owned(),
                network: network.clone(),
                at: now,
            });
        }
        self.live.insert(
            call,
            LiveCall {
                user: user.to_owned(),
                premium_short_s: what.premium_short_s,
            },
        );
    }

    /// An admitted call ended after `answered_s` seconds of talk (0: never answered).
    /// Short premium calls count toward the burst rule; whether this was one.
    pub fn ended(&mut self, call: u64, answered_s: u64, now: u64) -> bool {
        let Some(live) = self.live.remove(&call) else {
            return false;
        };
        let Some(u) = self.users.get_mut(&live.user) else {
            return false;
        };
        u.live_calls = u.live_calls.saturating_sub(1);
        let premium_short = u32::from(live.premium_short_s.is_some_and(|s| answered_s < s));
        if answered_s == 0 && premium_short == 0 {
            return false;
        }
        let bucket = u.bucket_mut(now / 60);
        bucket.seconds += answered_s;
        bucket.premium_short += premium_short;
        self.changes.push(UsageChange::Add {
            user: live.user,
            bucket: Bucket {
                minute: now / 60,
                seconds: answered_s,
                premium_short,
                ..Bucket::default()
            },
        });
        premium_short > 0
    }

    /// Clear a user's counters (the operator's `reset`): quotas start again.
    pub fn reset(&mut self, user: &str) -> bool {
        let known = self
            .users
            .get_mut(user)
            .map(|u| u.buckets.clear())
            .is_some();
        self.repeats.retain(|(caller, _), _| caller != user);
        self.changes.push(UsageChange::Reset {
            user: user.to_owned(),
        });
        known
    }

    /// Forget a user altogether (the operator's `remove`); live calls still end cleanly.
    pub fn remove(&mut self, user: &str) -> bool {
        let known = self.users.remove(user).is_some();
        self.repeats.retain(|(caller, _), _| caller != user);
        self.changes.push(UsageChange::Remove {
            user: user.to_owned(),
        });
        known
    }

    /// Changes since the last call, for the store.
    pub fn take_changes(&mut self) -> Vec<UsageChange> {
        std::mem::take(&mut self.changes)
    }

    /// Drop repeat records nobody will look at again (called now and then).
    pub fn sweep(&mut self, now: u64, repeat_window_s: u64) {
        self.repeats.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.saturating_sub(*t) < repeat_window_s)
        });
        for u in self.users.values_mut() {
            u.prune(now);
        }
        self.users.retain(|_, u| {
            !u.buckets.is_empty()
                || !u.countries.is_empty()
                || !u.sources.is_empty()
                || u.live_calls > 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000; // a fixed clock: 2027-01-15

    fn abroad(iso: &str, premium_short_s: Option<u64>) -> Admission {
        Admission {
            country: Some(iso.into()),
            international: true,
            premium_short_s,
            network: None,
        }
    }

    #[test]
    fn hour_and_day_windows_slide() {
        let mut u = Usage::default();
        for i in 0..5 {
            u.admit(i, "alice", &Admission::default(), T0 + i * 60);
        }
        let f = u.figures("alice", T0 + 300, 600);
        assert_eq!((f.calls_last_hour, f.calls_last_day), (5, 5));
        // An hour after the first call it has left the hour window, not the day window.
        let f = u.figures("alice", T0 + 3600, 600);
        assert_eq!((f.calls_last_hour, f.calls_last_day), (4, 5));
        let f = u.figures("alice", T0 + 86_400 + 240, 600);
        assert_eq!((f.calls_last_hour, f.calls_last_day), (0, 0));
    }

    #[test]
    fn minutes_international_and_live_calls() {
        let mut u = Usage::default();
        u.admit(1, "bob", &abroad("CU", None), T0);
        u.admit(2, "bob", &abroad("DE", None), T0 + 10);
        assert_eq!(u.figures("bob", T0 + 20, 600).live_calls, 2);
        u.ended(1, 125, T0 + 200);
        let f = u.figures("bob", T0 + 300, 600);
        assert_eq!(
            (f.international_last_day, f.seconds_last_day, f.live_calls),
            (2, 125, 1)
        );
        assert!(u.has_called("bob", "CU") && !u.has_called("bob", "JM"));
        // Ending twice (a retransmitted BYE) counts once.
        u.ended(1, 125, T0 + 300);
        assert_eq!(u.figures("bob", T0 + 300, 600).seconds_last_day, 125);
    }

    #[test]
    fn premium_short_calls_count_in_their_window() {
        let mut u = Usage::default();
        for i in 0..3 {
            u.admit(i, "eve", &abroad("+979", Some(30)), T0 + i * 20);
            u.ended(i, 5, T0 + i * 20 + 5);
        }
        u.admit(9, "eve", &abroad("+979", Some(30)), T0 + 100);
        u.ended(9, 300, T0 + 400); // a long call is not the pattern
        assert_eq!(u.figures("eve", T0 + 400, 600).premium_short_recent, 3);
        assert_eq!(u.figures("eve", T0 + 1300, 600).premium_short_recent, 0);
    }

    #[test]
    fn the_baseline_is_the_mean_of_active_hours_before_this_one() {
        let mut u = Usage::default();
        let mut id = 0;
        // Two calls an hour for 4 hours, a day ago.
        for h in 0..4 {
            for _ in 0..2 {
                id += 1;
                u.admit(id, "carol", &Admission::default(), T0 + h * 3600);
            }
        }
        let f = u.figures("carol", T0 + 86_400, 600);
        assert_eq!((f.baseline_hours, f.baseline_per_hour), (4, 2.0));
        // Calls in the current hour do not move the baseline.
        for _ in 0..10 {
            id += 1;
            u.admit(id, "carol", &Admission::default(), T0 + 86_400);
        }
        let f = u.figures("carol", T0 + 86_400 + 60, 600);
        assert_eq!((f.baseline_hours, f.calls_last_hour), (4, 10));
    }

    #[test]
    fn repeats_count_within_the_window() {
        let mut u = Usage::default();
        for i in 0..6 {
            assert_eq!(u.note_attempt("a", "b", T0 + i * 5, 30), i as usize + 1);
        }
        assert_eq!(u.note_attempt("a", "b", T0 + 60, 30), 1);
        assert_eq!(u.note_attempt("a", "c", T0 + 60, 30), 1);
    }

    #[test]
    fn changes_replayed_rebuild_the_counters_and_reset_clears_them() {
        let mut u = Usage::default();
        u.admit(1, "dave", &abroad("CU", None), T0);
        u.ended(1, 42, T0 + 50);
        let mut buckets = Vec::new();
        let mut countries = Vec::new();
        for c in u.take_changes() {
            match c {
                UsageChange::Add { user, bucket } => buckets.push((user, bucket)),
                UsageChange::Country { user, iso, .. } => countries.push((user, iso)),
                other => panic!("unexpected {other:?}"),
            }
        }
        let restored = Usage::restore(buckets, countries, Vec::new());
        let f = restored.figures("dave", T0 + 60, 600);
        assert_eq!((f.calls_last_day, f.seconds_last_day), (1, 42));
        assert!(restored.has_called("dave", "CU"));
        assert!(u.reset("dave"));
        assert_eq!(u.figures("dave", T0 + 60, 600).calls_last_day, 0);
        assert!(
            u.has_called("dave", "CU"),
            "reset keeps what the user is known to call"
        );
        assert!(u.remove("dave") && !u.has_called("dave", "CU"));
    }
}

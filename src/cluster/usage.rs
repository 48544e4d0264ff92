//! The callers' counts shared by every node: calls per minute and hour, international
//! calls, talk seconds, short premium calls and live calls, one Redis hash per user.
//!
//! A call is counted *before* it is screened, in one atomic script that returns the counts
//! without it: concurrent calls on any nodes each see a different count, so a quota of N
//! lets at most N through. A call the screening refuses is uncounted afterwards. Live calls
//! are leases (a sorted set scored by expiry) that their node renews, so the calls of a
//! node that died stop counting after `cluster.lease_s`.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::Redis;
use crate::screening::Counting;
use crate::screening::usage::{Figures, Shared};

/// Returns the figures as strings (the last: calls to this callee within the repeat
/// window, this one included, from KEYS[4], a sorted set per caller and callee), then the
/// members of the user's seen set (`c:ISO` for a country called abroad, `n:NETWORK` for a
/// network called from, `a:VALUE` for what a passed challenge allows it, e.g.
/// `a:country:CU`). Buckets in the hash: `m<minute>c` calls and `m<minute>p` short premium
/// calls (kept for the hour and the premium window), `h<hour>c|i|s|p` the same per hour
/// plus international calls and talk seconds (kept a week, the baseline's span). The day
/// window reads whole hours: calls up to 59 minutes older than a day may count, never
/// fewer than a day's.
const RESERVE: &str = r"
local now_min = tonumber(ARGV[1])
local now_ms = tonumber(ARGV[2])
local intl = ARGV[3] == '1'
local premium_from = tonumber(ARGV[4])
local lease_ms = tonumber(ARGV[5])
local member = ARGV[6]
local repeat_window_ms = tonumber(ARGV[7])
local now_hour = math.floor(now_min / 60)
local hour_from = now_min - 59
local day_from_hour = math.floor((now_min - 1439) / 60)
local week_from_hour = now_hour - 168
local keep_min = math.min(hour_from, premium_from)
local calls_hour, calls_day, intl_day, secs_day, premium, base_sum, base_hours = 0, 0, 0, 0, 0, 0, 0
local flat = redis.call('HGETALL', KEYS[1])
local stale = {}
for i = 1, #flat, 2 do
  local kind, n, what = string.match(flat[i], '^(%a)(%d+)(%a)$')
  n = tonumber(n)
  local v = tonumber(flat[i + 1]) or 0
  if kind == 'm' and n then
    if n < keep_min then
      stale[#stale + 1] = flat[i]
    else
      if what == 'c' and n >= hour_from then calls_hour = calls_hour + v end
      if what == 'p' and n >= premium_from then premium = premium + v end
    end
  elseif kind == 'h' and n then
    if n < week_from_hour then
      stale[#stale + 1] = flat[i]
    else
      if n >= day_from_hour then
        if what == 'c' then calls_day = calls_day + v
        elseif what == 'i' then intl_day = intl_day + v
        elseif what == 's' then secs_day = secs_day + v end
      end
      if what == 'c' and n < now_hour and v > 0 then
        base_sum = base_sum + v
        base_hours = base_hours + 1
      end
    end
  end
end
if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
redis.call('HINCRBY', KEYS[1], 'm' .. now_min .. 'c', 1)
redis.call('HINCRBY', KEYS[1], 'h' .. now_hour .. 'c', 1)
if intl then redis.call('HINCRBY', KEYS[1], 'h' .. now_hour .. 'i', 1) end
redis.call('EXPIRE', KEYS[1], 691200)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
local live = redis.call('ZCARD', KEYS[2])
redis.call('ZADD', KEYS[2], now_ms + lease_ms, member)
redis.call('PEXPIRE', KEYS[2], lease_ms)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now_ms - repeat_window_ms)
redis.call('ZADD', KEYS[4], now_ms, member)
redis.call('PEXPIRE', KEYS[4], math.max(repeat_window_ms, 1))
local repeats = redis.call('ZCARD', KEYS[4])
local out = {calls_hour, calls_day, intl_day, secs_day, live, premium, base_sum, base_hours, repeats}
for i = 1, #out do out[i] = tostring(out[i]) end
for _, seen in ipairs(redis.call('SMEMBERS', KEYS[3])) do out[#out + 1] = seen end
return out
";

/// Take back what RESERVE counted (the call was refused).
const RELEASE: &str = r"
local m = tonumber(ARGV[1])
local h = math.floor(m / 60)
redis.call('HINCRBY', KEYS[1], 'm' .. m .. 'c', -1)
redis.call('HINCRBY', KEYS[1], 'h' .. h .. 'c', -1)
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'h' .. h .. 'i', -1) end
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
";

/// A counted call ended: its live slot goes, its talk time and premium shortness count.
const ENDED: &str = r"
local m = tonumber(ARGV[1])
local h = math.floor(m / 60)
redis.call('ZREM', KEYS[2], ARGV[4])
local s = tonumber(ARGV[2])
if s > 0 then redis.call('HINCRBY', KEYS[1], 'h' .. h .. 's', s) end
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[1], 'm' .. m .. 'p', 1)
  redis.call('HINCRBY', KEYS[1], 'h' .. h .. 'p', 1)
end
redis.call('EXPIRE', KEYS[1], 691200)
return 1
";

/// A user's keys: counts, live calls, and what was seen of it (countries, networks,
/// challenge allowances). One hash tag per user: they live on the same Redis Cluster
/// slot, as a script needs.
pub fn user_keys(user: &str) -> [String; 3] {
    [
        format!("warden:usage:{{{user}}}"),
        format!("warden:live:{{{user}}}"),
        format!("warden:seen:{{{user}}}"),
    ]
}

/// What was counted for one call, to take back or to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub user: String,
    pub call: u64,
    pub minute: u64,
    pub international: bool,
}

/// The shared counts, over this node's Redis connection. Cheap to clone into tasks.
#[derive(Clone)]
pub struct SharedUsage {
    redis: Arc<Redis>,
    /// `node:boot` — the prefix of this run's live-call members.
    member_prefix: String,
    lease: Duration,
    reserve: Script,
    release: Script,
    ended: Script,
}

impl SharedUsage {
    pub fn new(redis: Arc<Redis>, node: &str, lease: Duration) -> SharedUsage {
        SharedUsage {
            redis,
            // Call numbers start again at each run: the boot time keeps a restarted
            // node's calls apart from the leases of its previous run.
            member_prefix: format!("{node}:{}", crate::clock::unix_now_ms()),
            lease,
            reserve: Script::new(RESERVE),
            release: Script::new(RELEASE),
            ended: Script::new(ENDED),
        }
    }

    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn member(&self, call: u64) -> String {
        format!("{}:{call}", self.member_prefix)
    }

    /// Count `call` for its user and return the user's figures without it, the countries
    /// and networks the user has been seen with, the calls to `callee` in the window, and
    /// (when sources are metered) the calls from `source` this second. The source's count
    /// is a second request sent alongside the script on the same connection: it keeps its
    /// own key (no hash tag can put a source and a user on one Redis Cluster slot) and adds
    /// no round trip.
    pub async fn reserve(
        &self,
        counted: &Counted,
        callee: &str,
        source: std::net::IpAddr,
        now_ms: u64,
        counting: Counting,
    ) -> Result<Shared, String> {
        let Some(mut conn) = self.redis.connection() else {
            self.redis.failed("reserve", &"not connected (yet)");
            return Err("not connected to Redis".into());
        };
        let [usage, live, seen] = user_keys(&counted.user);
        let premium_from = (now_ms / 1000).saturating_sub(counting.premium_window_s) / 60;
        let repeats = format!("warden:repeat:{{{}}}:{callee}", counted.user);
        let mut rate_conn = conn.clone();
        let reply = async {
            self.reserve
                .key(usage)
                .key(live)
                .key(seen)
                .key(repeats)
                .arg(counted.minute)
                .arg(now_ms)
                .arg(if counted.international { "1" } else { "0" })
                .arg(premium_from)
                .arg(self.lease.as_millis() as u64)
                .arg(self.member(counted.call))
                .arg(counting.repeat_window_s * 1000)
                .invoke_async::<Vec<String>>(&mut conn)
                .await
        };
        let source_calls = async {
            if !counting.per_source {
                return Ok(None);
            }
            let key = format!("warden:rate:{source}:{}", now_ms / 1000);
            let mut pipe = redis::pipe();
            pipe.incr(&key, 1).expire(&key, 2).ignore();
            let (calls,): (u32,) = pipe.query_async(&mut rate_conn).await?;
            Ok(Some(calls))
        };
        let (v, source_calls) = tokio::join!(
            self.outcome("reserve", reply),
            self.outcome("source rate", source_calls)
        );
        let v = v?;
        let at = |i: usize| {
            v.get(i)
                .and_then(|n| n.parse::<i64>().ok())
                .unwrap_or(0)
                .max(0) as u64
        };
        let baseline_hours = at(7) as u32;
        let mut shared = Shared {
            repeats: at(8) as usize,
            // Without the shared count the node's own meters the source.
            source_calls: source_calls.ok().flatten(),
            ..Default::default()
        };
        for seen in v.iter().skip(9) {
            match seen.split_once(':') {
                Some(("c", iso)) => shared.countries.insert(iso.to_owned()),
                Some(("n", network)) => shared.networks.insert(network.to_owned()),
                Some(("a", value)) => shared.allowed.insert(value.to_owned()),
                _ => false,
            };
        }
        shared.figures = Figures {
            calls_last_hour: at(0),
            calls_last_day: at(1),
            international_last_day: at(2),
            seconds_last_day: at(3),
            live_calls: at(4) as u32,
            premium_short_recent: at(5),
            baseline_per_hour: if baseline_hours == 0 {
                0.0
            } else {
                at(6) as f64 / f64::from(baseline_hours)
            },
            baseline_hours,
        };
        Ok(shared)
    }

    /// The user called a country abroad, or from a network, for the first time (on this
    /// node's reckoning): every node knows it from now on.
    pub async fn seen(&self, user: &str, members: Vec<String>) {
        if members.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        let [_, _, seen] = user_keys(user);
        pipe.sadd(seen, members).ignore();
        let _ = self.redis.run("seen", &pipe, self.redis.timeout()).await;
    }

    /// Take back a reservation: the call was not let through.
    pub async fn release(&self, counted: &Counted) {
        let Some(mut conn) = self.redis.connection() else {
            return;
        };
        let [usage, live, _] = user_keys(&counted.user);
        let reply = async {
            self.release
                .key(usage)
                .key(live)
                .arg(counted.minute)
                .arg(if counted.international { "1" } else { "0" })
                .arg(self.member(counted.call))
                .invoke_async::<i64>(&mut conn)
                .await
        };
        let _ = self.outcome("release", reply).await;
    }

    /// A counted call ended after `answered_s` seconds of talk.
    pub async fn ended(&self, counted: &Counted, now_s: u64, answered_s: u64, premium_short: bool) {
        let Some(mut conn) = self.redis.connection() else {
            return;
        };
        let [usage, live, _] = user_keys(&counted.user);
        let reply = async {
            self.ended
                .key(usage)
                .key(live)
                .arg(now_s / 60)
                .arg(answered_s)
                .arg(if premium_short { "1" } else { "0" })
                .arg(self.member(counted.call))
                .invoke_async::<i64>(&mut conn)
                .await
        };
        let _ = self.outcome("ended", reply).await;
    }

    /// Extend the leases of this node's live calls (one round trip for all of them).
    pub async fn renew(&self, calls: Vec<(String, u64)>, now_ms: u64) {
        if calls.is_empty() {
            return;
        }
        let until = now_ms + self.lease.as_millis() as u64;
        let lease_ms = self.lease.as_millis() as u64;
        let mut pipe = redis::pipe();
        for (user, call) in &calls {
            let [_, live, _] = user_keys(user);
            pipe.zadd(&live, self.member(*call), until)
                .ignore()
                .pexpire(&live, lease_ms as i64)
                .ignore();
        }
        let _ = self.redis.run("renew", &pipe, self.redis.timeout()).await;
    }

    async fn outcome<T>(
        &self,
        what: &str,
        reply: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        self.redis.timed(what, self.redis.timeout(), reply).await
    }
}

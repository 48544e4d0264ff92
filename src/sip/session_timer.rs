//! Session timers (RFC 4028) on one leg: the interval and refresher negotiated from
//! Session-Expires and Min-SE, and when the session must be refreshed or is over. Sans-IO:
//! the core says when a refresh succeeded; `poll` says what is due.

use std::time::{Duration, Instant};

use super::message::{Request, Response};

/// Who keeps the session alive on this leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// Warden sends the refreshes (UPDATE, or re-INVITE when the peer lacks UPDATE).
    Warden,
    /// The peer does; Warden only watches for them.
    Peer,
}

/// What the leg's timer wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerDue {
    /// Time for Warden's refresh.
    Refresh,
    /// No refresh came (or Warden's never succeeded): the session is over (RFC 4028 10).
    Expired,
}

/// The session timer of one leg.
#[derive(Debug, Clone)]
pub struct SessionTimer {
    pub interval: Duration,
    pub refresher: Refresher,
    /// The session's last refresh (its start at first).
    since: Instant,
    /// Warden's refresh is out, or waits to be retried (a 491) until this moment.
    refreshing: bool,
    retry_at: Option<Instant>,
    /// The peer takes UPDATE (its Allow said so): refreshes use it.
    pub peer_allows_update: bool,
}

impl SessionTimer {
    pub fn new(
        interval: Duration,
        refresher: Refresher,
        allows_update: bool,
        now: Instant,
    ) -> Self {
        SessionTimer {
            interval,
            refresher,
            since: now,
            refreshing: false,
            retry_at: None,
            peer_allows_update: allows_update,
        }
    }

    /// A 2xx to an INVITE or UPDATE in this dialog refreshed the session (RFC 4028 10),
    /// perhaps with a new interval and refresher.
    pub fn refreshed(&mut self, now: Instant, renegotiated: Option<(Duration, Refresher)>) {
        self.since = now;
        self.refreshing = false;
        self.retry_at = None;
        if let Some((interval, refresher)) = renegotiated {
            self.interval = interval;
            self.refresher = refresher;
        }
    }

    /// Warden's refresh met glare (491): try again at `at` (RFC 3261 14.1).
    pub fn retry_at(&mut self, at: Instant) {
        self.retry_at = Some(at);
    }

    /// Warden's refresh got a 422 asking for at least `min_se`: the retry (sent at once,
    /// the refresh still counting as out) uses it.
    pub fn raise_to(&mut self, min_se: Duration) {
        self.interval = self.interval.max(min_se);
    }

    /// When the peer's refresh is overdue: the interval less a third of it, at most 32 s
    /// (RFC 4028 10). Warden's own refreshes are given the whole interval.
    fn expiry(&self) -> Instant {
        match self.refresher {
            Refresher::Peer => {
                let grace = (self.interval / 3).min(Duration::from_secs(32));
                self.since + self.interval - grace
            }
            Refresher::Warden => self.since + self.interval,
        }
    }

    fn refresh_due(&self) -> Option<Instant> {
        match (self.refresher, self.refreshing) {
            (Refresher::Warden, false) => Some(self.since + self.interval / 2),
            (Refresher::Warden, true) => self.retry_at,
            (Refresher::Peer, _) => None,
        }
    }

    pub fn next_wake(&self) -> Option<Instant> {
        Some(
            self.refresh_due()
                .map_or(self.expiry(), |t| t.min(self.expiry())),
        )
    }

    pub fn poll(&mut self, now: Instant) -> Option<TimerDue> {
        if self.expiry() <= now {
            return Some(TimerDue::Expired);
        }
        if self.refresh_due().is_some_and(|t| t <= now) {
            self.refreshing = true;
            self.retry_at = None;
            return Some(TimerDue::Refresh);
        }
        None
    }
}

/// `Session-Expires: 1800;refresher=uac` as (seconds, refresher parameter lowercased).
pub fn parse_session_expires(value: &str) -> Option<(u32, Option<String>)> {
    let mut parts = value.split(';');
    let seconds = parts.next()?.trim().parse().ok()?;
    let refresher = parts.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("refresher")
            .then(|| value.trim().to_ascii_lowercase())
    });
    Some((seconds, refresher))
}

/// The numeric value of a Min-SE header (RFC 4028 5).
pub fn parse_min_se(value: &str) -> Option<u32> {
    value.split(';').next()?.trim().parse().ok()
}

/// Warden's session timer settings: the interval it asks for and the least it accepts.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub session_expires: u32,
    pub min_se: u32,
}

/// Warden as UAS (the caller's leg): what its 2xx says, or the 422 to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UasTimer {
    /// No timer on this leg (the policy is off).
    Off,
    /// 422 Session Interval Too Small, with this Min-SE.
    TooSmall(u32),
    /// The 2xx carries `Session-Expires: seconds;refresher=...`, and `Require: timer` when
    /// the caller supports timers.
    Run {
        seconds: u32,
        refresher: Refresher,
        require: bool,
    },
}

/// RFC 4028 9: negotiate the caller leg's timer from its INVITE. A caller asking for less
/// than Warden's Min-SE gets 422 when it supports timers (else the interval is raised);
/// Warden asks for no longer than its own interval; the caller refreshes when it
/// supports timers and did not leave it to Warden, else Warden does.
pub fn negotiate_uas(invite: &Request, policy: Policy) -> UasTimer {
    if policy.session_expires == 0 {
        return UasTimer::Off;
    }
    let supported = invite.lists("Supported", "timer") || invite.lists("Require", "timer");
    let asked = invite
        .header("Session-Expires")
        .and_then(|v| parse_session_expires(&v));
    let their_min = invite
        .header("Min-SE")
        .and_then(|v| parse_min_se(&v))
        .unwrap_or(0);
    let floor = policy.min_se.max(their_min);
    let (seconds, refresher) = match asked {
        Some((s, _)) if s < policy.min_se && supported => return UasTimer::TooSmall(policy.min_se),
        Some((s, r)) => (s.min(policy.session_expires).max(floor), r),
        None => (policy.session_expires.max(floor), None),
    };
    let refresher = match (supported, refresher.as_deref()) {
        (true, Some("uas")) | (false, _) => Refresher::Warden,
        (true, _) => Refresher::Peer,
    };
    UasTimer::Run {
        seconds,
        refresher,
        require: supported,
    }
}

impl UasTimer {
    /// The Session-Expires value for Warden's 2xx (the peer is the UAC).
    pub fn header(seconds: u32, refresher: Refresher) -> String {
        let who = match refresher {
            Refresher::Warden => "uas",
            Refresher::Peer => "uac",
        };
        format!("{seconds};refresher={who}")
    }
}

/// Warden as UAC (a callee's leg, or Warden's own refresh): the peer's 2xx says the
/// interval and who refreshes. With no Session-Expires in it the peer does not do timers,
/// and Warden refreshes at its own interval: an ordinary re-INVITE or UPDATE, which any
/// UA answers, is how a vanished party is found.
pub fn negotiated_uac(ok: &Response, asked: u32) -> (Duration, Refresher) {
    match ok
        .header("Session-Expires")
        .and_then(|v| parse_session_expires(&v))
    {
        Some((seconds, refresher)) => {
            let who = if refresher.as_deref() == Some("uas") {
                Refresher::Peer
            } else {
                Refresher::Warden
            };
            (Duration::from_secs(u64::from(seconds.max(1))), who)
        }
        None => (Duration::from_secs(u64::from(asked)), Refresher::Warden),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF_HOUR: Duration = Duration::from_secs(1800);

    #[test]
    fn warden_refreshes_at_half_the_interval() {
        let start = Instant::now();
        let mut t = SessionTimer::new(HALF_HOUR, Refresher::Warden, true, start);
        assert_eq!(t.next_wake(), Some(start + HALF_HOUR / 2));
        assert_eq!(t.poll(start + HALF_HOUR / 2), Some(TimerDue::Refresh));
        assert_eq!(t.poll(start + HALF_HOUR / 2), None, "one refresh at a time");
        assert_eq!(t.next_wake(), Some(start + HALF_HOUR), "the backstop");
        let at = start + Duration::from_secs(901);
        t.refreshed(at, None);
        assert_eq!(t.next_wake(), Some(at + HALF_HOUR / 2));
    }

    #[test]
    fn a_peer_refresh_is_overdue_a_third_early_at_most_32_s() {
        let start = Instant::now();
        let mut t = SessionTimer::new(HALF_HOUR, Refresher::Peer, true, start);
        assert_eq!(t.next_wake(), Some(start + Duration::from_secs(1768)));
        assert_eq!(t.poll(start + Duration::from_secs(1767)), None);
        assert_eq!(
            t.poll(start + Duration::from_secs(1768)),
            Some(TimerDue::Expired)
        );
        let short = SessionTimer::new(Duration::from_secs(90), Refresher::Peer, true, start);
        assert_eq!(short.next_wake(), Some(start + Duration::from_secs(60)));
    }

    #[test]
    fn glare_retries_at_the_given_time() {
        let start = Instant::now();
        let mut t = SessionTimer::new(HALF_HOUR, Refresher::Warden, true, start);
        let due = start + HALF_HOUR / 2;
        assert_eq!(t.poll(due), Some(TimerDue::Refresh));
        t.retry_at(due + Duration::from_secs(3));
        assert_eq!(t.next_wake(), Some(due + Duration::from_secs(3)));
        assert_eq!(
            t.poll(due + Duration::from_secs(3)),
            Some(TimerDue::Refresh)
        );
    }

    #[test]
    fn session_expires_and_min_se_parse() {
        assert_eq!(
            parse_session_expires("1800;refresher=UAC"),
            Some((1800, Some("uac".into())))
        );
        assert_eq!(parse_session_expires("90"), Some((90, None)));
        assert_eq!(parse_session_expires("x"), None);
        assert_eq!(parse_min_se("120;x=1"), Some(120));
    }
}

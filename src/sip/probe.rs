//! Gateway probing (as Kamailio's dispatcher does it): OPTIONS to each probed bridge target
//! every interval; a gateway is down after so many failures in a row, and up again at its
//! first answer. Sans-IO: the core sends what `due` hands out and reports the outcome.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::transport::Destination;

/// One probed gateway.
#[derive(Debug, Clone)]
struct Gateway {
    uri: String,
    dest: Destination,
    up: bool,
    failures: u32,
    last_status: Option<u16>,
    next: Instant,
    in_flight: bool,
}

/// A gateway as the admin API and /metrics show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GatewayState {
    pub gateway: String,
    pub up: bool,
    /// Failed probes in a row.
    pub failures: u32,
    /// The last probe's answer (408: none came).
    pub last_status: Option<u16>,
}

/// Every probed gateway, by address.
#[derive(Debug)]
pub struct Gateways {
    interval: Duration,
    failures_to_down: u32,
    list: BTreeMap<SocketAddr, Gateway>,
}

impl Gateways {
    pub fn new(interval: Duration, failures_to_down: u32) -> Gateways {
        Gateways {
            interval,
            failures_to_down: failures_to_down.max(1),
            list: BTreeMap::new(),
        }
    }

    /// The gateways to probe from now on (a new dialplan): those kept keep their state,
    /// new ones are probed at once (and count as up until they fail).
    pub fn set(&mut self, targets: Vec<(String, Destination)>, now: Instant) {
        let mut list = BTreeMap::new();
        for (uri, dest) in targets {
            let gateway = self.list.remove(&dest.addr).unwrap_or(Gateway {
                uri,
                dest: dest.clone(),
                up: true,
                failures: 0,
                last_status: None,
                next: now,
                in_flight: false,
            });
            list.insert(dest.addr, gateway);
        }
        self.list = list;
    }

    pub fn next_wake(&self) -> Option<Instant> {
        self.list
            .values()
            .filter(|g| !g.in_flight)
            .map(|g| g.next)
            .min()
    }

    /// The probes due now: (Request-URI, where to send it). Each is in flight until its
    /// outcome is reported.
    pub fn due(&mut self, now: Instant) -> Vec<(String, Destination)> {
        let mut out = Vec::new();
        for g in self.list.values_mut() {
            if !g.in_flight && g.next <= now {
                g.in_flight = true;
                g.next = now + self.interval;
                out.push((g.uri.clone(), g.dest.clone()));
            }
        }
        out
    }

    /// The probe to `addr` got `status` (408 when nothing came). Any answer but a 408 or a
    /// 5xx shows a gateway alive (a 404 or 405 to OPTIONS still comes from a working
    /// peer). Returns the new up/down state when it changed.
    pub fn outcome(&mut self, addr: SocketAddr, status: u16) -> Option<bool> {
        let g = self.list.get_mut(&addr)?;
        g.in_flight = false;
        g.last_status = Some(status);
        let was_up = g.up;
        if status == 408 || status >= 500 {
            g.failures += 1;
            if g.failures >= self.failures_to_down {
                g.up = false;
            }
        } else {
            g.failures = 0;
            g.up = true;
        }
        (g.up != was_up).then_some(g.up)
    }

    /// Is the gateway at `addr` probed and down (bridges skip it at once)?
    pub fn is_down(&self, addr: SocketAddr) -> bool {
        self.list.get(&addr).is_some_and(|g| !g.up)
    }

    pub fn states(&self) -> Vec<GatewayState> {
        self.list
            .values()
            .map(|g| GatewayState {
                gateway: g.uri.clone(),
                up: g.up,
                failures: g.failures,
                last_status: g.last_status,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::transport::Transport;

    fn gw(addr: &str) -> (String, Destination) {
        let dest = Destination {
            transport: Transport::Udp,
            addr: addr.parse().expect("addr"),
            conn: None,
        };
        (format!("sip:{addr}"), dest)
    }

    #[test]
    fn down_after_n_failures_up_at_the_first_answer() {
        let start = Instant::now();
        let every = Duration::from_secs(30);
        let mut g = Gateways::new(every, 3);
        g.set(vec![gw("192.0.2.10:5060")], start);
        let addr = "192.0.2.10:5060".parse().expect("addr");
        let mut now = start;
        for round in 1..=3 {
            assert_eq!(g.due(now).len(), 1, "probe {round}");
            assert_eq!(g.next_wake(), None, "in flight");
            let changed = g.outcome(addr, 408);
            assert_eq!(changed, (round == 3).then_some(false));
            assert_eq!(g.next_wake(), Some(now + every));
            now += every;
        }
        assert!(g.is_down(addr));
        g.due(now);
        assert_eq!(
            g.outcome(addr, 404),
            Some(true),
            "any answer is a live peer"
        );
        assert!(!g.is_down(addr));
        assert_eq!(g.states()[0].last_status, Some(404));
    }

    #[test]
    fn a_new_plan_keeps_the_state_of_gateways_it_still_has() {
        let now = Instant::now();
        let mut g = Gateways::new(Duration::from_secs(10), 1);
        g.set(vec![gw("192.0.2.10:5060"), gw("192.0.2.11:5060")], now);
        g.due(now);
        g.outcome("192.0.2.10:5060".parse().expect("addr"), 503);
        g.set(vec![gw("192.0.2.10:5060")], now);
        assert_eq!(g.states().len(), 1);
        assert!(!g.states()[0].up);
    }
}

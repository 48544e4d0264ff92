//! Gateway probing in the endpoint: the `probe = true` bridge targets of the active plan,
//! their OPTIONS sent when due, and what their answers (or silence) say of them.

use std::net::SocketAddr;
use std::time::Instant;

use crate::dns::literal_destination;
use crate::sip::message::{Method, Uri};
use crate::sip::probe::GatewayState;
use crate::sip::transport::Transport;

use super::{ClientPurpose, Core};

impl Core {
    /// Probe what the active plan asks to be probed (targets with an IP address; a host
    /// name is resolved per call and not probed).
    pub(super) fn set_probed_gateways(&mut self, now: Instant) {
        let targets = self
            .dialplan
            .probed_targets()
            .into_iter()
            .filter_map(|target| {
                let dest = literal_destination(&target)?;
                let host = Uri::parse(&target).ok()?.host()?;
                let transport = match dest.transport {
                    Transport::Udp => String::new(),
                    other => format!(";transport={}", other.as_str().to_ascii_lowercase()),
                };
                let port = dest.addr.port();
                Some((format!("sip:{host}:{port}{transport}"), dest))
            })
            .collect();
        self.gateways.lock().set(targets, now);
    }

    /// Send the probes that are due.
    pub(super) fn send_probes(&mut self, now: Instant) {
        let due = self.gateways.lock().due(now);
        for (uri, dest) in due {
            let from = format!("<sip:warden@{}>", self.local_host(dest.transport));
            let to = format!("<{uri}>");
            let probe = Uri::parse(&uri).ok().and_then(|target| {
                self.own_request(Method::Options, &target, (&from, &to, dest.transport, 70))
            });
            let addr = dest.addr;
            let sent = probe.and_then(|p| self.tx.send_request(p, dest, now));
            match sent {
                Some(key) => {
                    self.client.insert(key, ClientPurpose::Probe { addr });
                }
                None => self.probe_outcome(addr, 503),
            }
        }
    }

    /// A probe's answer, or 408 for none.
    pub(super) fn probe_outcome(&mut self, addr: SocketAddr, status: u16) {
        match self.gateways.lock().outcome(addr, status) {
            Some(false) => {
                tracing::warn!(gateway = %addr, status, "gateway down: bridges skip it until it answers a probe")
            }
            Some(true) => tracing::info!(gateway = %addr, "gateway answers probes again"),
            None => {}
        }
    }

    /// The probed gateways and their state (admin API, metrics).
    pub fn gateways(&self) -> Vec<GatewayState> {
        self.gateways.lock().states()
    }
}

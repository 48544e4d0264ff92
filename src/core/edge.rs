//! Requests an edge proxy relays (`guard.edge_proxies`): their origin is the sender named
//! by the Via below the proxy's, and that origin is what the guard and the screening judge.
//!
//! A refused origin is answered 403, never dropped: a proxy that hears nothing would wait,
//! then fail the request over to another node and take this one out of its set.

use std::net::IpAddr;
use std::time::Instant;

use crate::sip::message::{Method, Request, Response};
use crate::sip::transport::Destination;

use super::Core;
use super::messages::{response_destination, warning_value};

impl Core {
    /// Who sent `req`: the packet's source, or behind an edge proxy the sender of the Via
    /// below the proxy's (its `received=`, which an RFC 3261 proxy adds whenever the
    /// sent-by is not where the request came from). The proxy itself when that Via is
    /// missing or names no address.
    pub(super) fn origin(&self, req: &Request, from: &Destination) -> IpAddr {
        let ip = from.addr.ip();
        if !self.guard.lock().is_edge(ip) {
            return ip;
        }
        req.via_at(1).and_then(|via| via.sender()).unwrap_or(ip)
    }

    /// The guard's verdict on a relayed request's origin (its bans, rate and scanner
    /// check); true when it was refused, with 403 unless it is an ACK.
    pub(super) fn refused_at_edge(
        &mut self,
        req: &Request,
        from: &Destination,
        now: Instant,
    ) -> bool {
        if !self.guard.lock().is_edge(from.addr.ip()) {
            return false;
        }
        let origin = self.origin(req, from);
        let agent = req.header("User-Agent");
        let Err(why) = self.guard.lock().admit(origin, true, agent.as_deref(), now) else {
            return false;
        };
        tracing::debug!(%origin, edge = %from.addr, reason = why.as_str(), "relayed request refused by the guard");
        if req.method() != Method::Ack {
            let mut resp = Response::to_request(req, 403, self.phrase(403));
            let warning = format!("{origin} refused: {}", why.as_str());
            let _ = resp.push_header("Warning", &warning_value(&warning));
            let dest = response_destination(req, from);
            self.out
                .push_back(super::Output::Send(dest, resp.to_bytes()));
        }
        true
    }
}

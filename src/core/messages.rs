//! Warden's own messages: responses to requests, requests inside a leg's dialog, the
//! Via and Contact it advertises, and the reason phrases it uses.

use std::time::Instant;

use bytes::Bytes;

use crate::call::{Call, Leg, Side, new_tag};
use crate::sip::dialog::Stamp;
use crate::sip::message::{Method, Request, Response, Via};
use crate::sip::status::reason_phrase;
use crate::sip::transaction::TxKey;
use crate::sip::transport::{Destination, Transport};

use super::{ALLOW, ClientPurpose, Core};

impl Core {
    /// The reason phrase for `status` in responses Warden generates: the operator's, else
    /// the standard one.
    pub(super) fn phrase(&self, status: u16) -> &str {
        self.phrases
            .get(&status)
            .map_or_else(|| reason_phrase(status), String::as_str)
    }

    /// `specific` (a phrase that names the fault), unless the operator set one for `status`.
    pub(super) fn phrase_or<'a>(&'a self, status: u16, specific: &'a str) -> &'a str {
        self.phrases.get(&status).map_or(specific, String::as_str)
    }

    /// A response Warden generated elsewhere (the registrar's) takes the operator's phrase.
    pub(super) fn localize(&self, out: &mut Response) {
        if let Some(text) = self.phrases.get(&out.status()) {
            out.set_reason(text);
        }
    }

    /// A relayed callee response keeps its phrase unless the operator asked for theirs.
    pub(super) fn relayed_phrase(&self, out: &mut Response) {
        if self.config.sip.rewrite_relayed_phrases {
            self.localize(out);
        }
    }

    pub(super) fn local_host(&self, transport: Transport) -> String {
        self.advertised
            .get(&transport)
            .or_else(|| self.advertised.values().next())
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:5060".into())
    }

    pub(super) fn contact(&self, transport: Transport) -> String {
        match transport {
            Transport::Udp => format!("<sip:warden@{}>", self.local_host(transport)),
            Transport::Tcp => format!("<sip:warden@{};transport=tcp>", self.local_host(transport)),
            // RFC 5630: a SIPS URI asks for TLS on every hop to it.
            Transport::Tls => format!("<sips:warden@{}>", self.local_host(transport)),
        }
    }

    pub(super) fn via(&self, transport: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch=z9hG4bK{branch};rport",
            transport.as_str(),
            self.local_host(transport)
        )
    }

    pub(super) fn respond(
        &mut self,
        key: &TxKey,
        req: &Request,
        status: u16,
        tag: Option<&str>,
        now: Instant,
    ) {
        self.respond_warning(key, req, status, tag, None, now);
    }

    /// A response with a `Warning: 399` saying why (RFC 3261 20.43), for refusals a person
    /// reading a trace should understand.
    pub(super) fn respond_warning(
        &mut self,
        key: &TxKey,
        req: &Request,
        status: u16,
        tag: Option<&str>,
        warning: Option<&str>,
        now: Instant,
    ) {
        let mut resp = Response::to_request(req, status, self.phrase(status));
        if let Some(w) = warning {
            let _ = resp.push_header("Warning", &warning_value(w));
        }
        if status > 100 {
            resp.set_to_tag(tag.map(str::to_owned).unwrap_or_else(new_tag).as_str());
        }
        let _ = resp.push_header("Server", &self.config.sip.user_agent);
        if matches!(status, 405 | 501) || (req.method() == Method::Options && status == 200) {
            let _ = resp.push_header("Allow", ALLOW);
        }
        self.tx.respond(key, resp, now);
    }

    /// A request inside `leg` (increments its CSeq unless `cseq` is given, as for ACK/CANCEL).
    pub(super) fn leg_request(
        &self,
        leg: &mut Leg,
        method: Method,
        cseq: Option<u32>,
    ) -> Option<Request> {
        let stamp = Stamp {
            via: self.via(leg.dest.transport, &new_tag()),
            contact: self.contact(leg.dest.transport),
            user_agent: &self.config.sip.user_agent,
        };
        leg.request(method, cseq, stamp)
    }

    /// The next request into a side's dialog, with where it goes.
    pub(super) fn side_request(
        &self,
        call: &mut Call,
        side: Side,
        method: Method,
        cseq: Option<u32>,
    ) -> Option<(Request, Destination)> {
        let leg = call.leg_mut(side)?;
        let request = self.leg_request(leg, method, cseq)?;
        Some((request, leg.dest.clone()))
    }

    pub(super) fn send_in_dialog(
        &mut self,
        req: Request,
        dest: Destination,
        purpose: ClientPurpose,
        now: Instant,
    ) -> Option<TxKey> {
        let key = self.tx.send_request(req, dest, now)?;
        self.client.insert(key.clone(), purpose);
        Some(key)
    }

    /// A request of Warden's own outside any dialog (a forwarded MESSAGE, a gateway
    /// probe): a fresh Via branch, From tag and Call-ID, CSeq 1. `stamp` is the From
    /// (without tag), the To, the transport and Max-Forwards.
    pub(super) fn own_request(
        &self,
        method: Method,
        uri: &crate::sip::message::Uri,
        (from, to, transport, hops): (&str, &str, Transport, u8),
    ) -> Option<Request> {
        Request::builder(method, uri)
            .header("Via", &self.via(transport, &new_tag()))
            .max_forwards(hops)
            .header("From", &format!("{from};tag={}", new_tag()))
            .header("To", to)
            .header("Call-ID", &self.new_call_id())
            .cseq(1)
            .header("User-Agent", &self.config.sip.user_agent)
            .build()
            .ok()
    }

    /// Warden's own response to the caller's INVITE (not a callee's relayed): the caller
    /// leg's To tag and Server; with `sdp`, Warden's Contact and that body.
    pub(super) fn caller_response(
        &self,
        call: &Call,
        status: u16,
        reason: &str,
        sdp: Option<String>,
    ) -> Response {
        let mut out = Response::to_request(&call.a_invite, status, reason);
        out.set_to_tag(&call.a.local_tag);
        if let Some(sdp) = sdp {
            let _ = out.push_header("Contact", &self.contact(call.a.dest.transport));
            out.set_body(Bytes::from(sdp), Some("application/sdp"));
        }
        let _ = out.push_header("Server", &self.config.sip.user_agent);
        out
    }
}

/// `param` added to the URI of a name-addr (`"A" <sip:a@b>` -> `"A" <sip:a@b;param>`) or a
/// bare URI.
pub(super) fn with_uri_param(name_addr: &str, param: &str) -> String {
    match name_addr.rfind('>') {
        Some(end) => format!("{};{param}{}", &name_addr[..end], &name_addr[end..]),
        None => format!("{name_addr};{param}"),
    }
}

pub(super) fn warning_value(text: &str) -> String {
    format!("399 warden \"{}\"", text.replace(['"', '\\'], "'"))
}

/// RFC 3261 18.2.2: reliable -> the connection; rport -> source address and port;
/// otherwise the source address with the Via sent-by port.
pub(super) fn response_destination(req: &Request, from: &Destination) -> Destination {
    if from.transport.is_reliable() {
        return from.clone();
    }
    let via: Option<Via> = req.top_via();
    let port = match via {
        Some(v) if v.rport.is_some() => from.addr.port(),
        Some(v) => v.port.unwrap_or(5060),
        None => from.addr.port(),
    };
    Destination {
        transport: from.transport,
        addr: std::net::SocketAddr::new(from.addr.ip(), port),
        conn: from.conn,
    }
}

//! SIP messages: Warden's facade over the `sipx-sip` parser, so nothing outside `sip/` names it.
//! Parsing, strict validation (what earns a 400 and why), header access and message building.
//!
//! Why `sipx-sip` and not `sip-core`: on the RFC 4475 torture set sip-core 0.3 drops folded
//! lines, ignores Content-Length and accepts most invalid messages; sipx-sip parses every valid
//! one field-exact, refuses every invalid one and round-trips byte for byte. `tests/rfc4475.rs`
//! keeps that evidence. sipx parses headers lazily (a proxy must forward what it cannot read);
//! a B2BUA acts on every header it reads, so [`Request::check`] forces the strict reading here.

use std::fmt;

use bytes::Bytes;
use sipx_sip::headers::{
    self as sh, Address as SxAddress, CSeq as SxCSeq, ContactValue, Date, Expires, MaxForwards,
};
mod values;
pub use values::{CSeq, Contact, Method, NameAddr, Uri, Via};

use sipx_sip::{
    HeaderName as SxName, Limits as SxLimits, Message as SxMessage, StatusCode, Uri as SxUri,
    build::RequestBuilder, build::ResponseBuilder,
};

/// Size bounds applied to every message before anything is allocated for it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_headers: 128,
        }
    }
}

impl Limits {
    pub(crate) fn to_sipx(self) -> SxLimits {
        let base = SxLimits::datagram();
        SxLimits {
            max_message_bytes: self.max_message_bytes,
            max_body_bytes: self.max_message_bytes,
            max_headers: self.max_headers,
            max_header_bytes: base.max_header_bytes.min(self.max_message_bytes),
            max_folding_lines: base.max_folding_lines,
        }
    }
}

/// Why bytes could not be read as a SIP message at all (nothing to answer: drop and count).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// A message that parsed but must not be acted on: the status to answer and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub status: u16,
    pub reason: String,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request(pub(crate) sipx_sip::Request);

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response(pub(crate) sipx_sip::Response);

/// A request or a response.
#[derive(Debug, Clone)]
pub enum Message {
    Request(Request),
    Response(Response),
}

impl Message {
    /// Parse one message from a datagram (trailing octets are noise, RFC 3261 18.3).
    pub fn parse_datagram(bytes: Bytes, limits: &Limits) -> Result<Message, ParseError> {
        Self::tolerant(bytes, limits, sipx_sip::parse_datagram)
    }

    /// Parse one whole message delimited off a stream (see `framing`).
    pub fn parse_frame(bytes: Bytes, limits: &Limits) -> Result<Message, ParseError> {
        Self::tolerant(bytes, limits, sipx_sip::parse_frame)
    }

    /// Parse; when that fails, parse once more with the deviations `tolerate` knows
    /// repaired. The first error stands when there was nothing to repair.
    fn tolerant(
        bytes: Bytes,
        limits: &Limits,
        parse: fn(Bytes, &SxLimits) -> Result<SxMessage, sipx_sip::error::ParseError>,
    ) -> Result<Message, ParseError> {
        let limits = limits.to_sipx();
        match parse(bytes.clone(), &limits) {
            Ok(m) => Ok(Message::from_sipx(m)),
            Err(first) => {
                let refused = || match super::tolerate::ambiguous_parameter(&bytes) {
                    Some(name) => ParseError(format!(
                        "Request-URI repeats parameter {name} with different values"
                    )),
                    None => ParseError(first.to_string()),
                };
                let Some(repaired) = super::tolerate::repair(&bytes) else {
                    return Err(refused());
                };
                parse(Bytes::from(repaired), &limits)
                    .map(Message::from_sipx)
                    .map_err(|_| refused())
            }
        }
    }

    pub(crate) fn from_sipx(m: SxMessage) -> Message {
        match m {
            SxMessage::Request(r) => Message::Request(Request(r)),
            SxMessage::Response(r) => Message::Response(Response(r)),
        }
    }

    pub(crate) fn into_sipx(self) -> SxMessage {
        match self {
            Message::Request(r) => SxMessage::Request(r.0),
            Message::Response(r) => SxMessage::Response(r.0),
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }

    pub fn call_id(&self) -> Option<String> {
        match self {
            Message::Request(r) => r.call_id(),
            Message::Response(r) => r.call_id(),
        }
    }
}

fn sx_name(name: &str) -> SxName {
    SxName::parse(&Bytes::copy_from_slice(name.as_bytes()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Header access shared by requests and responses.
macro_rules! header_access {
    ($t:ty) => {
        impl $t {
            /// The first header of this name (long or compact form), value unfolded.
            pub fn header(&self, name: &str) -> Option<String> {
                self.0.headers.value(&sx_name(name)).map(|v| text(&v))
            }

            /// Every header line of this name, in order.
            pub fn headers(&self, name: &str) -> Vec<String> {
                let name = sx_name(name);
                self.0
                    .headers
                    .get_all(&name)
                    .map(|h| text(&h.value()))
                    .collect()
            }

            /// Every header as (canonical name, value), in message order.
            pub fn header_pairs(&self) -> Vec<(String, String)> {
                self.0
                    .headers
                    .iter()
                    .map(|h| (text(h.name().canonical()), text(&h.value())))
                    .collect()
            }

            /// The comma-separated tokens of every `name` header (option tags in Require,
            /// Supported, Unsupported; methods in Allow), lowercased.
            pub fn tokens(&self, name: &str) -> Vec<String> {
                self.headers(name)
                    .iter()
                    .flat_map(|v| v.split(','))
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty())
                    .collect()
            }

            /// Does a `name` header list `token` (case-insensitive)?
            pub fn lists(&self, name: &str, token: &str) -> bool {
                self.tokens(name)
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(token))
            }

            pub fn has_header(&self, name: &str) -> bool {
                self.0.headers.get(&sx_name(name)).is_some()
            }

            /// Append a header; refuses values that would break the message (CR/LF).
            pub fn push_header(&mut self, name: &str, value: &str) -> Result<(), ParseError> {
                let header = sipx_sip::Header::build(
                    sx_name(name),
                    Bytes::copy_from_slice(value.as_bytes()),
                )
                .map_err(|e| ParseError(format!("header {name}: {e}")))?;
                self.0.headers.push(header);
                Ok(())
            }

            /// Replace every header of this name with one value.
            pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), ParseError> {
                let header = sipx_sip::Header::build(
                    sx_name(name),
                    Bytes::copy_from_slice(value.as_bytes()),
                )
                .map_err(|e| ParseError(format!("header {name}: {e}")))?;
                let sx = sx_name(name);
                let at = self.0.headers.iter().position(|h| h.name() == &sx);
                match at {
                    Some(at) => {
                        self.0.headers.remove_all(&sx);
                        self.0.headers.insert(at, header);
                    }
                    None => self.0.headers.push(header),
                }
                Ok(())
            }

            pub fn remove_header(&mut self, name: &str) -> usize {
                self.0.headers.remove_all(&sx_name(name))
            }

            /// Replace the body, keeping Content-Length (and optionally Content-Type) true.
            pub fn set_body(&mut self, body: Bytes, content_type: Option<&str>) {
                let len = body.len().to_string();
                let _ = self.set_header("Content-Length", &len);
                match content_type {
                    Some(ct) if !body.is_empty() => {
                        let _ = self.set_header("Content-Type", ct);
                    }
                    _ => {
                        self.remove_header("Content-Type");
                    }
                }
                self.0.set_body(body);
            }

            pub fn body(&self) -> &Bytes {
                self.0.body()
            }

            pub fn call_id(&self) -> Option<String> {
                match self.0.headers.typed::<sh::CallId>() {
                    Some(Ok(c)) => Some(text(&c.0)),
                    _ => None,
                }
            }

            pub fn cseq(&self) -> Option<CSeq> {
                match self.0.headers.typed::<SxCSeq>() {
                    Some(Ok(c)) => Some(CSeq {
                        seq: c.sequence,
                        method: Method::from_sipx(&c.method),
                    }),
                    _ => None,
                }
            }

            pub fn from(&self) -> Option<NameAddr> {
                match self.0.headers.typed::<sh::From>() {
                    Some(Ok(a)) => Some(NameAddr::from_sipx(a.0)),
                    _ => None,
                }
            }

            pub fn to(&self) -> Option<NameAddr> {
                match self.0.headers.typed::<sh::To>() {
                    Some(Ok(a)) => Some(NameAddr::from_sipx(a.0)),
                    _ => None,
                }
            }

            pub fn from_tag(&self) -> Option<String> {
                self.from().and_then(|a| a.tag().map(str::to_owned))
            }

            pub fn to_tag(&self) -> Option<String> {
                self.to().and_then(|a| a.tag().map(str::to_owned))
            }

            /// The topmost Via value.
            pub fn top_via(&self) -> Option<Via> {
                match self.0.headers.typed::<sh::Via>() {
                    Some(Ok(v)) => Some(Via::of(&v)),
                    _ => None,
                }
            }

            /// The Via value at `index` (0: the topmost), when it is there and readable.
            pub fn via_at(&self, index: usize) -> Option<Via> {
                match self.0.headers.typed_all::<sh::Via>().nth(index) {
                    Some(Ok(v)) => Some(Via::of(&v)),
                    _ => None,
                }
            }

            /// Every Contact value (a header line may carry several).
            pub fn contacts(&self) -> Result<Vec<Contact>, Malformed> {
                let mut out = Vec::new();
                for header in self.0.headers.get_all(&SxName::Contact) {
                    for value in split_list(&header.value()) {
                        if value.trim() == "*" {
                            out.push(Contact::Star);
                            continue;
                        }
                        let parsed = SxAddress::parse(value.trim().as_bytes(), "Contact")
                            .map_err(|e| bad(format!("malformed Contact: {e}")))?;
                        out.push(Contact::Address(NameAddr::from_sipx(parsed)));
                    }
                }
                Ok(out)
            }

            /// The URI of the first Contact (the remote target of a dialog).
            pub fn contact_uri(&self) -> Option<String> {
                self.contacts().ok()?.into_iter().find_map(|c| match c {
                    Contact::Address(a) => Some(a.uri.to_string()),
                    Contact::Star => None,
                })
            }

            /// Every value of an address-list header such as Route or Record-Route.
            pub fn address_list(&self, name: &str) -> Result<Vec<NameAddr>, Malformed> {
                let mut out = Vec::new();
                for header in self.0.headers.get_all(&sx_name(name)) {
                    for value in split_list(&header.value()) {
                        let parsed = SxAddress::parse(value.trim().as_bytes(), "address")
                            .map_err(|e| bad(format!("malformed {name}: {e}")))?;
                        out.push(NameAddr::from_sipx(parsed));
                    }
                }
                Ok(out)
            }

            /// The `Expires` header, when present and valid.
            pub fn expires(&self) -> Option<u32> {
                match self.0.headers.typed::<Expires>() {
                    Some(Ok(e)) => Some(e.0),
                    _ => None,
                }
            }

            pub fn to_bytes(&self) -> Bytes {
                let mut out = Vec::with_capacity(self.0.body().len() + 512);
                self.0.write_to(&mut out);
                Bytes::from(out)
            }
        }
    };
}

header_access!(Request);
header_access!(Response);

fn bad(reason: String) -> Malformed {
    Malformed {
        status: 400,
        reason,
    }
}

/// Split a comma-separated header value, respecting quotes and angle brackets.
fn split_list(value: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    for &b in value {
        if escaped {
            escaped = false;
            current.push(b);
            continue;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                out.push(text(&current));
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(b);
    }
    if !current.is_empty() || out.is_empty() {
        out.push(text(&current));
    }
    out
}

impl Request {
    pub fn method(&self) -> Method {
        Method::from_sipx(&self.0.method)
    }

    pub fn uri(&self) -> Uri {
        Uri(self.0.uri.clone())
    }

    pub fn set_uri(&mut self, uri: Uri) -> Result<(), ParseError> {
        self.0
            .set_uri(uri.0)
            .map_err(|e| ParseError(format!("cannot set Request-URI: {e}")))
    }

    /// RFC 3261 18.2.1 / RFC 3581 4: record where the request really came from in the top
    /// Via (`received` when the address differs, `rport` filled in when asked for), so the
    /// response shows the sender its public address.
    pub fn stamp_via(&mut self, source: std::net::SocketAddr) {
        let Some(via) = self.top_via() else { return };
        let ip = source.ip().to_string();
        let mut params = String::new();
        let host = via.host.trim_matches(['[', ']']);
        if host != ip && via.received.is_none() {
            params.push_str(&format!(";received={ip}"));
        }
        let fill_rport = matches!(via.rport, Some(None));
        let Some(at) = self.0.headers.iter().position(|h| h.name() == &SxName::Via) else {
            return;
        };
        let Some(first) = self.0.headers.iter().nth(at).map(|h| text(&h.value())) else {
            return;
        };
        let cut = sh::first_hop_end(first.as_bytes()).min(first.len());
        let (hop, rest) = first.split_at(cut);
        let mut hop = hop.trim_end().to_owned();
        if fill_rport {
            hop = rewrite_bare_rport(&hop, source.port());
        }
        hop.push_str(&params);
        let value = format!("{hop}{rest}");
        if let Ok(header) = sipx_sip::Header::build(SxName::Via, value) {
            let mut index = 0;
            self.0.headers.retain(|_| {
                index += 1;
                index - 1 != at
            });
            self.0.headers.insert(at, header);
        }
    }

    pub fn max_forwards(&self) -> Option<u8> {
        match self.0.headers.typed::<MaxForwards>() {
            Some(Ok(m)) => Some(m.0),
            _ => None,
        }
    }

    /// The strict reading: everything Warden may act on must parse, or the request is refused
    /// with the status and a reason fit for a Warning header (RFC 4475 sections 3.1.2, 3.3).
    pub fn check(&self) -> Result<(), Malformed> {
        // A missing Max-Forwards is repairable (RFC 2543 peers omit it; we assume 70).
        let findings = sipx_sip::validate_request(&self.0);
        if let Some(f) = findings.iter().find(|f| !f.is_repairable()) {
            return Err(Malformed {
                status: f.status(),
                reason: describe_finding(f),
            });
        }
        if !self.0.uri.scheme().is_sip() && !is_tel(&self.0.uri) {
            return Err(Malformed {
                status: 416,
                reason: "Unsupported URI Scheme".into(),
            });
        }
        let headers = &self.0.headers;
        for via in headers.typed_all::<sh::Via>() {
            via.map_err(|e| bad(format!("malformed Via: {e}")))?;
        }
        strict::<sh::From>(headers, "From")?;
        strict::<sh::To>(headers, "To")?;
        strict::<SxCSeq>(headers, "CSeq")?;
        strict::<MaxForwards>(headers, "Max-Forwards")?;
        strict::<Expires>(headers, "Expires")?;
        strict::<Date>(headers, "Date")?;
        strict::<sh::ContentType>(headers, "Content-Type")?;
        for contact in headers.typed_all::<ContactValue>() {
            contact.map_err(|e| bad(format!("malformed Contact: {e}")))?;
        }
        for c in self.contacts()? {
            if let Contact::Address(a) = c
                && let Some(e) = a.param("expires")
                && e.parse::<u32>().is_err()
            {
                return Err(bad(format!("Contact expires parameter out of range: {e}")));
            }
        }
        self.address_list("Route")?;
        self.address_list("Record-Route")?;
        Ok(())
    }
}

/// Replace the bare `;rport` parameter of one Via value with `;rport=PORT`.
fn rewrite_bare_rport(hop: &str, port: u16) -> String {
    hop.split(';')
        .map(|p| {
            if p.trim().eq_ignore_ascii_case("rport") {
                format!("rport={port}")
            } else {
                p.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

fn is_tel(uri: &SxUri) -> bool {
    uri.scheme().as_bytes().eq_ignore_ascii_case(b"tel")
}

fn strict<H: sipx_sip::TypedHeader>(
    headers: &sipx_sip::Headers,
    label: &str,
) -> Result<(), Malformed> {
    match headers.typed::<H>() {
        Some(Err(e)) => Err(bad(format!("malformed {label}: {e}"))),
        _ => Ok(()),
    }
}

fn describe_finding(f: &sipx_sip::Finding) -> String {
    use sipx_sip::Finding as F;
    match f {
        F::MissingRequiredHeader(h) => format!("missing {h} header"),
        F::MalformedRequiredHeader(h) => format!("malformed {h} header"),
        F::RepeatedSingleValueHeader(h) => format!("{h} header appears more than once"),
        F::CSeqMethodMismatch => "CSeq method does not match the request method".into(),
        F::UnsupportedVersion => "SIP version not supported".into(),
        F::RequestUriHasHeaders => "Request-URI carries headers".into(),
        other => format!("{other:?}"),
    }
}

impl Response {
    pub fn status(&self) -> u16 {
        self.0.status.code()
    }

    pub fn reason(&self) -> String {
        text(&self.0.reason)
    }

    /// A response Warden may act on; anything else is dropped (responses are never answered).
    pub fn check(&self) -> Result<(), Malformed> {
        if let Some(f) = sipx_sip::validate_response(&self.0).first() {
            return Err(bad(describe_finding(f)));
        }
        for via in self.0.headers.typed_all::<sh::Via>() {
            via.map_err(|e| bad(format!("malformed Via: {e}")))?;
        }
        strict::<sh::From>(&self.0.headers, "From")?;
        strict::<sh::To>(&self.0.headers, "To")?;
        strict::<SxCSeq>(&self.0.headers, "CSeq")?;
        Ok(())
    }

    /// A response to `request`, copying Via, From, To, Call-ID and CSeq (RFC 3261 8.2.6.2).
    pub fn to_request(request: &Request, status: u16, reason: &str) -> Response {
        let status = StatusCode::new(status).unwrap_or_else(|| {
            // Only reachable with a programming error; 500 keeps the wire valid regardless.
            StatusCode::new(500).unwrap_or_else(|| unreachable!("500 is a valid status"))
        });
        let clean_reason: String = reason.chars().filter(|c| !c.is_control()).collect();
        let response = ResponseBuilder::to_request(&request.0, status, clean_reason)
            .map(ResponseBuilder::build)
            .unwrap_or_else(|_| sipx_sip::Response::new(status, Bytes::from_static(b"Error")));
        Response(response)
    }

    /// Replace the reason phrase (control characters dropped).
    pub fn set_reason(&mut self, reason: &str) {
        let clean: String = reason.chars().filter(|c| !c.is_control()).collect();
        self.0.reason = Bytes::from(clean);
    }

    /// A response copying the status, reason, body and chosen headers of `other`, addressed
    /// to `request` (how a B2BUA relays the far leg's answer).
    pub fn relay(request: &Request, other: &Response) -> Response {
        let mut out = Response::to_request(request, other.status(), &other.reason());
        out.0.reason = other.0.reason.clone();
        out
    }

    /// Set the To tag (only when the To header has none yet).
    pub fn set_to_tag(&mut self, tag: &str) {
        if let Some(to) = self.header("To")
            && self.to_tag().is_none()
        {
            let _ = self.set_header("To", &format!("{to};tag={tag}"));
        }
    }
}

/// Builds an outgoing request line by line.
pub struct RequestBuilderFacade {
    method: Method,
    inner: Result<RequestBuilder, ParseError>,
}

impl Request {
    /// Start building a request with the given method and Request-URI.
    pub fn builder(method: Method, uri: &Uri) -> RequestBuilderFacade {
        RequestBuilderFacade {
            inner: Ok(RequestBuilder::new(method.to_sipx(), uri.0.clone())),
            method,
        }
    }
}

impl RequestBuilderFacade {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.inner = self.inner.and_then(|b| {
            b.header(sx_name(name), Bytes::copy_from_slice(value.as_bytes()))
                .map_err(|e| ParseError(format!("header {name}: {e}")))
        });
        self
    }

    pub fn cseq(mut self, seq: u32) -> Self {
        let method = self.method.to_sipx();
        self.inner = self.inner.and_then(|b| {
            b.cseq(seq, &method)
                .map_err(|e| ParseError(format!("CSeq: {e}")))
        });
        self
    }

    pub fn max_forwards(mut self, hops: u8) -> Self {
        self.inner = self.inner.map(|b| b.max_forwards(hops));
        self
    }

    pub fn body(mut self, body: Bytes, content_type: Option<&str>) -> Self {
        if let Some(ct) = content_type.filter(|_| !body.is_empty()) {
            self = self.header("Content-Type", ct);
        }
        self.inner = self.inner.map(|b| b.body(body));
        self
    }

    pub fn build(self) -> Result<Request, ParseError> {
        self.inner.map(|b| Request(b.build()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Message {
        Message::parse_datagram(Bytes::copy_from_slice(raw.as_bytes()), &Limits::default())
            .expect("parses")
    }

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport, SIP/2.0/TCP p.example;branch=z9hG4bKx\r\n\
        Max-Forwards: 70\r\n\
        To: Bob <sip:bob@example.com>\r\n\
        From: \"Alice A\" <sip:alice@example.net>;tag=1928301774\r\n\
        Call-ID: a84b4c76e66710@example.net\r\n\
        CSeq: 314159 INVITE\r\n\
        Contact: <sip:alice@192.0.2.1:5060>;expires=30, <sip:alice@[2001:db8::1]>\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn reads_the_fields_a_b2bua_needs() {
        let Message::Request(r) = parse(INVITE) else {
            panic!("request")
        };
        assert_eq!(r.method(), Method::Invite);
        assert_eq!(r.uri().user().as_deref(), Some("bob"));
        assert_eq!(r.call_id().as_deref(), Some("a84b4c76e66710@example.net"));
        assert_eq!(
            r.cseq(),
            Some(CSeq {
                seq: 314159,
                method: Method::Invite
            })
        );
        assert_eq!(r.from_tag().as_deref(), Some("1928301774"));
        assert_eq!(r.to_tag(), None);
        let via = r.top_via().expect("via");
        assert_eq!(via.branch.as_deref(), Some("z9hG4bK776asdhds"));
        assert_eq!(via.rport, Some(None));
        assert_eq!(via.port, Some(5060));
        assert_eq!(via.sender(), "192.0.2.1".parse().ok());
        // The second value of a comma-separated Via line; a host name names no sender.
        let below = r.via_at(1).expect("second via");
        assert_eq!((below.transport.as_str(), below.sender()), ("TCP", None));
        assert!(r.via_at(2).is_none());
        let relayed = Via {
            received: Some("203.0.113.9".into()),
            ..below
        };
        assert_eq!(relayed.sender(), "203.0.113.9".parse().ok());
        let contacts = r.contacts().expect("contacts");
        assert_eq!(contacts.len(), 2);
        let Contact::Address(first) = &contacts[0] else {
            panic!("address")
        };
        assert_eq!(first.param("expires"), Some("30"));
        assert_eq!(r.body().as_ref(), b"v=0\n");
        assert!(r.check().is_ok());
    }

    #[test]
    fn stamp_via_fills_rport_and_received_on_the_first_hop_only() {
        let Message::Request(mut r) = parse(INVITE) else {
            panic!("request")
        };
        r.stamp_via("203.0.113.7:41000".parse().unwrap());
        let via = r.top_via().expect("via");
        assert_eq!(via.received.as_deref(), Some("203.0.113.7"));
        assert_eq!(via.rport, Some(Some(41000)));
        assert_eq!(via.branch.as_deref(), Some("z9hG4bK776asdhds"));
        let all = r.headers("Via").join(",");
        assert!(all.contains("p.example;branch=z9hG4bKx"), "{all}");
        assert!(r.check().is_ok());
    }

    #[test]
    fn set_body_keeps_content_length_true() {
        let Message::Request(mut r) = parse(INVITE) else {
            panic!("request")
        };
        r.set_body(
            Bytes::from_static(b"v=0\r\no=x\r\n"),
            Some("application/sdp"),
        );
        let bytes = r.to_bytes();
        let Message::Request(again) = Message::parse_datagram(bytes, &Limits::default()).unwrap()
        else {
            panic!("request")
        };
        assert_eq!(again.body().len(), 10);
        assert_eq!(again.header("Content-Length").as_deref(), Some("10"));
    }

    #[test]
    fn refuses_header_injection_in_built_values() {
        let Message::Request(mut r) = parse(INVITE) else {
            panic!("request")
        };
        assert!(r.push_header("X-Evil", "a\r\nVia: injected").is_err());
    }

    #[test]
    fn response_to_request_copies_dialog_headers_and_adds_tag() {
        let Message::Request(r) = parse(INVITE) else {
            panic!("request")
        };
        let mut resp = Response::to_request(&r, 180, "Ringing");
        resp.set_to_tag("abc");
        assert_eq!(resp.to_tag().as_deref(), Some("abc"));
        assert_eq!(resp.headers("Via").len(), 1);
        assert_eq!(resp.cseq().map(|c| c.seq), Some(314159));
        assert!(resp.check().is_ok());
    }

    #[test]
    fn check_explains_a_bad_cseq() {
        let raw = INVITE.replace("CSeq: 314159 INVITE", "CSeq: 99999999999 INVITE");
        let Message::Request(r) = parse(&raw) else {
            panic!("request")
        };
        let err = r.check().expect_err("overflowing CSeq refused");
        assert_eq!(err.status, 400);
        assert!(err.reason.contains("CSeq"), "{}", err.reason);
    }

    #[test]
    fn split_list_respects_quotes_and_brackets() {
        let parts = split_list(b"\"a, b\" <sip:x@y;p=1,2>, <sip:z@w>");
        assert_eq!(parts.len(), 2);
    }
}

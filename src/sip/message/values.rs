//! The values a SIP message yields: its method, URIs, name-addresses, Contact, Via and
//! CSeq, each over its `sipx-sip` counterpart, read and written without the parser's types.

use std::fmt;

use sipx_sip::headers::{self as sh, Address as SxAddress};
use sipx_sip::{Method as SxMethod, Uri as SxUri};

use bytes::Bytes;

use super::{ParseError, text};

/// Request methods Warden distinguishes; anything else is kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Prack,
    Update,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other(String),
}

impl Method {
    pub(super) fn from_sipx(m: &SxMethod) -> Self {
        match m {
            SxMethod::Invite => Method::Invite,
            SxMethod::Ack => Method::Ack,
            SxMethod::Bye => Method::Bye,
            SxMethod::Cancel => Method::Cancel,
            SxMethod::Register => Method::Register,
            SxMethod::Options => Method::Options,
            SxMethod::Info => Method::Info,
            SxMethod::Prack => Method::Prack,
            SxMethod::Update => Method::Update,
            SxMethod::Subscribe => Method::Subscribe,
            SxMethod::Notify => Method::Notify,
            SxMethod::Refer => Method::Refer,
            SxMethod::Message => Method::Message,
            SxMethod::Publish => Method::Publish,
            other => Method::Other(String::from_utf8_lossy(other.as_bytes()).into_owned()),
        }
    }

    pub(super) fn to_sipx(&self) -> SxMethod {
        SxMethod::parse(&Bytes::copy_from_slice(self.as_str().as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SIP or SIPS URI (or any other scheme, kept opaque).
#[derive(Debug, Clone)]
pub struct Uri(pub(super) SxUri);

impl Uri {
    pub fn parse(text: &str) -> Result<Uri, ParseError> {
        SxUri::parse(Bytes::copy_from_slice(text.as_bytes()))
            .map(Uri)
            .map_err(|e| ParseError(format!("bad URI {text:?}: {e}")))
    }

    pub fn is_sip(&self) -> bool {
        self.0.scheme().is_sip()
    }

    /// A SIPS URI: TLS on every hop (RFC 5630).
    pub fn is_sips(&self) -> bool {
        matches!(self.0.scheme(), sipx_sip::Scheme::Sips)
    }

    /// The user part, %-escapes decoded (RFC 3261 19.1.4 compares users unescaped).
    pub fn user(&self) -> Option<String> {
        self.0
            .decoded_user()
            .map(|u| String::from_utf8_lossy(&u).into_owned())
    }

    /// The host as text: IPv6 references keep their brackets.
    pub fn host(&self) -> Option<String> {
        self.0
            .host()
            .map(|h| String::from_utf8_lossy(&h.to_bytes()).into_owned())
    }

    pub fn port(&self) -> Option<u16> {
        self.0.port()
    }

    /// The `transport=` URI parameter, lower-cased.
    pub fn transport(&self) -> Option<String> {
        self.0
            .transport()
            .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
    }

    /// RFC 3261 19.1.4 URI equality.
    pub fn equivalent(&self, other: &Uri) -> bool {
        self.0.equivalent(&other.0)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0.to_bytes()))
    }
}

/// A name-addr or addr-spec header value (From, To, Contact, Route...).
#[derive(Debug, Clone)]
pub struct NameAddr {
    pub display_name: Option<String>,
    pub uri: Uri,
    /// Header parameters (not URI parameters), names lower-cased.
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    pub(super) fn from_sipx(a: SxAddress) -> Self {
        NameAddr {
            display_name: a
                .display_name
                .map(|d| String::from_utf8_lossy(&d).into_owned()),
            uri: Uri(a.uri),
            params: a
                .params
                .into_iter()
                .map(|p| {
                    (
                        String::from_utf8_lossy(&p.name).to_ascii_lowercase(),
                        p.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                    )
                })
                .collect(),
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    pub fn tag(&self) -> Option<&str> {
        self.param("tag")
    }
}

/// One Contact header value: an address, or `*` (REGISTER only).
#[derive(Debug, Clone)]
pub enum Contact {
    Star,
    Address(NameAddr),
}

/// The parts of the topmost Via a transport and the transaction layer need.
#[derive(Debug, Clone)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub branch: Option<String>,
    pub received: Option<String>,
    /// `Some(None)` is a bare `;rport` (RFC 3581: please fill it in).
    pub rport: Option<Option<u16>>,
}

impl Via {
    pub(super) fn of(v: &sh::Via) -> Via {
        Via {
            transport: text(&v.transport).to_ascii_uppercase(),
            host: text(&v.host.to_bytes()),
            port: v.port,
            branch: v.branch().map(text),
            received: v.received().map(text),
            rport: v.rport().map(|p| p.and_then(|p| text(p).parse().ok())),
        }
    }

    /// The address the hop that added this value sent from: `received` when a proxy
    /// recorded it (RFC 3261 18.2.1), else the sent-by host when it is an address.
    pub fn sender(&self) -> Option<std::net::IpAddr> {
        let host = self.received.as_deref().unwrap_or(&self.host);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }
}

/// The CSeq header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

//! SDP (RFC 8866) as the media anchor needs it: read each m= section's address, ports,
//! direction and codec clock; write the description back with Warden's address and ports.
//!
//! Lines Warden does not rewrite are kept byte for byte (codecs, ptime, telephone-event,
//! direction, anything unknown), except ICE, which cannot survive a relay in the middle.

use std::net::IpAddr;

use super::sdes::Crypto;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SDP line {line}: {cause}")]
pub struct SdpError {
    pub line: usize,
    pub cause: String,
}

fn error(line: usize, cause: impl Into<String>) -> SdpError {
    SdpError {
        line,
        cause: cause.into(),
    }
}

/// Media direction (RFC 3264 section 5.1); sendrecv unless an attribute says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn parse(attr: &str) -> Option<Direction> {
        Some(match attr {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }
}

/// One m= section as the anchor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLine {
    pub kind: String,
    pub port: u16,
    /// The connection address in force (media-level c=, else session-level).
    pub address: Option<IpAddr>,
    /// RTCP port and address from a=rtcp (RFC 3605), when given.
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    pub rtcp_mux: bool,
    /// `a=ptime`: milliseconds of audio the party wants per packet.
    pub ptime: Option<u32>,
    pub direction: Direction,
    /// Clock rate of the first listed payload format.
    pub clock_rate: u32,
    /// The payload formats in the m= line's order.
    pub formats: Vec<Format>,
    /// The transport (RTP/AVP, RTP/SAVP...).
    pub proto: String,
    /// The SRTP keys it declares that Warden can use, in its order (SDES).
    pub crypto: Vec<Crypto>,
    /// It has `a=crypto` lines at all (usable or not).
    pub has_crypto: bool,
}

/// One payload format of an m= line, with the attribute lines that describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub payload_type: u8,
    /// Encoding name, upper case ("PCMA", "TELEPHONE-EVENT"); empty when unknown.
    pub name: String,
    pub clock: u32,
    /// The `a=rtpmap:` and `a=fmtp:` lines for it, verbatim.
    pub rtpmap: Option<String>,
    pub fmtp: Option<String>,
}

impl Format {
    /// A format described by its RFC 3551 static payload type alone.
    pub fn from_static(pt: u8) -> Format {
        let name = match pt {
            0 => "PCMU",
            3 => "GSM",
            8 => "PCMA",
            9 => "G722",
            13 => "CN",
            18 => "G729",
            _ => "",
        };
        Format {
            payload_type: pt,
            name: name.to_owned(),
            clock: static_clock(pt).unwrap_or(8000),
            rtpmap: None,
            fmtp: None,
        }
    }
}

/// How one m= line leaves Warden: its port (None keeps it), and optionally a new format
/// list (None keeps the offered one), transport and keys (None keeps them).
#[derive(Debug, Clone, Default)]
pub struct MediaPlan {
    pub port: Option<u16>,
    pub formats: Option<Vec<Format>>,
    pub security: Option<Security>,
}

/// A line's transport and keys as Warden writes them: this proto, and these `a=crypto`
/// lines in place of the ones it had.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub proto: String,
    pub crypto: Vec<String>,
}

/// A parsed description: its lines, split into the session part and one part per m=.
#[derive(Debug, Clone)]
pub struct Sdp {
    session: Vec<String>,
    sections: Vec<Vec<String>>,
    pub media: Vec<MediaLine>,
}

/// Attributes of ICE (RFC 8839): they describe the party's own candidates, which a relay
/// in the middle replaces, so they are dropped.
const ICE_ATTRIBUTES: [&str; 9] = [
    "candidate",
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "ice-lite",
    "ice-mismatch",
    "ice-pacing",
    "remote-candidates",
    "end-of-candidates",
];

/// Clock rates of the static payload types (RFC 3551 table 4 and 5).
fn static_clock(pt: u8) -> Option<u32> {
    Some(match pt {
        0 | 3..=5 | 7..=9 | 12 | 13 | 15 | 18 => 8000,
        6 => 16000,
        10 | 11 => 44100,
        16 => 11025,
        17 => 22050,
        14 | 25 | 26 | 28 | 31..=34 => 90000,
        _ => return None,
    })
}

fn connection_address(value: &str, line: usize) -> Result<IpAddr, SdpError> {
    // c=IN IP4 192.0.2.1 (a multicast TTL suffix "/127" is cut off).
    let mut parts = value.split_whitespace();
    let (Some("IN"), Some(_family), Some(addr)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(error(line, format!("bad connection line c={value}")));
    };
    let addr = addr.split('/').next().unwrap_or(addr);
    addr.parse()
        .map_err(|_| error(line, format!("bad connection address {addr:?}")))
}

impl Sdp {
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| error(0, "not UTF-8"))?;
        let mut session = Vec::new();
        let mut sections: Vec<Vec<String>> = Vec::new();
        let mut media: Vec<MediaLine> = Vec::new();
        let mut session_address = None;
        let mut session_direction = Direction::SendRecv;
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            if raw.is_empty() {
                continue;
            }
            let Some((kind, value)) = raw.split_once('=') else {
                return Err(error(
                    number,
                    format!("expected <type>=<value>, got {raw:?}"),
                ));
            };
            if index == 0 && kind != "v" {
                return Err(error(1, "description must start with v="));
            }
            if kind == "m" {
                let fields: Vec<&str> = value.split_whitespace().collect();
                if fields.len() < 4 {
                    return Err(error(number, format!("bad media line m={value}")));
                }
                let port = fields[1].split('/').next().unwrap_or("");
                let port = port
                    .parse()
                    .map_err(|_| error(number, format!("bad media port {:?}", fields[1])))?;
                let clock_rate = fields[3]
                    .parse()
                    .ok()
                    .and_then(static_clock)
                    .unwrap_or(8000);
                let formats = fields[3..]
                    .iter()
                    .filter_map(|f| f.parse().ok())
                    .map(Format::from_static)
                    .collect();
                media.push(MediaLine {
                    kind: fields[0].to_owned(),
                    port,
                    address: session_address,
                    rtcp: None,
                    rtcp_mux: false,
                    ptime: None,
                    direction: session_direction,
                    clock_rate,
                    formats,
                    proto: fields[2].to_owned(),
                    crypto: Vec::new(),
                    has_crypto: false,
                });
                sections.push(vec![raw.to_owned()]);
                continue;
            }
            let current = media.last_mut();
            match (kind, current) {
                ("c", None) => session_address = Some(connection_address(value, number)?),
                ("c", Some(m)) => m.address = Some(connection_address(value, number)?),
                ("a", current) => {
                    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                    match (name, current) {
                        (_, None) => {
                            if let Some(d) = Direction::parse(name) {
                                session_direction = d;
                            }
                        }
                        ("rtcp", Some(m)) => {
                            let mut parts = arg.split_whitespace();
                            let port = parts
                                .next()
                                .and_then(|p| p.parse().ok())
                                .ok_or_else(|| error(number, format!("bad a=rtcp:{arg}")))?;
                            let addr = parts.nth(2).and_then(|a| a.parse().ok());
                            m.rtcp = Some((port, addr));
                        }
                        ("rtcp-mux", Some(m)) => m.rtcp_mux = true,
                        ("crypto", Some(m)) => {
                            m.has_crypto = true;
                            m.crypto.extend(Crypto::parse(arg));
                        }
                        ("ptime", Some(m)) => m.ptime = arg.trim().parse().ok(),
                        ("fmtp", Some(m)) => {
                            let pt = arg
                                .split_whitespace()
                                .next()
                                .and_then(|p| p.parse::<u8>().ok());
                            if let Some(f) =
                                m.formats.iter_mut().find(|f| Some(f.payload_type) == pt)
                            {
                                f.fmtp = Some(raw.to_owned());
                            }
                        }
                        ("rtpmap", Some(m)) => {
                            let mut parts = arg.split_whitespace();
                            let pt = parts.next().and_then(|p| p.parse::<u8>().ok());
                            let encoding = parts.next().unwrap_or("");
                            let mut enc = encoding.split('/');
                            if let Some(f) =
                                m.formats.iter_mut().find(|f| Some(f.payload_type) == pt)
                            {
                                f.name = enc.next().unwrap_or("").to_ascii_uppercase();
                                f.clock =
                                    enc.next().and_then(|c| c.parse().ok()).unwrap_or(f.clock);
                                f.rtpmap = Some(raw.to_owned());
                            }
                            // a=rtpmap:<pt> <name>/<clock>[/<channels>], for the first format.
                            let first = sections
                                .last()
                                .and_then(|s| s.first())
                                .and_then(|l| l.split_whitespace().nth(3))
                                .unwrap_or("");
                            let mut parts = arg.split_whitespace();
                            if parts.next() == Some(first)
                                && let Some(clock) = parts
                                    .next()
                                    .and_then(|e| e.split('/').nth(1))
                                    .and_then(|c| c.parse().ok())
                            {
                                m.clock_rate = clock;
                            }
                        }
                        (other, Some(m)) => {
                            if let Some(d) = Direction::parse(other) {
                                m.direction = d;
                            }
                        }
                    }
                }
                _ => {}
            }
            match sections.last_mut() {
                Some(section) => section.push(raw.to_owned()),
                None => session.push(raw.to_owned()),
            }
        }
        if session.is_empty() {
            return Err(error(0, "empty description"));
        }
        for (i, m) in media.iter().enumerate() {
            if m.port != 0 && m.address.is_none() {
                return Err(error(
                    0,
                    format!("m= line {} has no connection address", i + 1),
                ));
            }
        }
        Ok(Sdp {
            session,
            sections,
            media,
        })
    }

    /// The values of m= line `index`'s `a=NAME:value` attributes, in order.
    pub fn attribute_values(&self, index: usize, name: &str) -> Vec<String> {
        let prefix = format!("a={name}:");
        self.sections
            .get(index)
            .into_iter()
            .flatten()
            .filter_map(|line| line.strip_prefix(prefix.as_str()))
            .map(|v| v.trim().to_owned())
            .collect()
    }

    /// m= line `index` with port 0: how an answer rejects that stream (RFC 3264 6).
    pub fn rejected_media_line(&self, index: usize) -> String {
        let line = self
            .sections
            .get(index)
            .and_then(|s| s.first())
            .map_or("", String::as_str);
        let mut fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 2 {
            fields[1] = "0";
        }
        fields.join(" ")
    }

    /// The description with Warden's `address` and, per m= line, Warden's RTP port (`None`
    /// keeps the line's port: a rejected stream stays rejected).
    pub fn rewrite(&self, address: IpAddr, ports: &[Option<u16>]) -> String {
        let plans: Vec<MediaPlan> = ports
            .iter()
            .map(|p| MediaPlan {
                port: *p,
                ..MediaPlan::default()
            })
            .collect();
        self.rewrite_with(address, &plans)
    }

    /// As `rewrite`, and where a plan gives formats, the m= line lists exactly those, with
    /// their rtpmap and fmtp lines (the section's others are dropped).
    pub fn rewrite_with(&self, address: IpAddr, plans: &[MediaPlan]) -> String {
        let family = if address.is_ipv4() { "IP4" } else { "IP6" };
        let connection = |line: &str| {
            // A hold address (0.0.0.0) keeps its meaning; anything else becomes ours.
            let unspecified = connection_address(&line[2..], 0).is_ok_and(|a| a.is_unspecified());
            if unspecified {
                line.to_owned()
            } else {
                format!("c=IN {family} {address}")
            }
        };
        let mut out = String::new();
        for line in &self.session {
            if line.starts_with("c=") {
                out.push_str(&connection(line));
            } else if let Some(origin) = line.strip_prefix("o=") {
                // o=<user> <sess-id> <sess-version> IN IP4 <address>: only the address is ours.
                let fields: Vec<&str> = origin.split_whitespace().collect();
                if fields.len() == 6 {
                    out.push_str(&format!(
                        "o={} {} {} IN {family} {address}",
                        fields[0], fields[1], fields[2]
                    ));
                } else {
                    out.push_str(line);
                }
            } else if !is_ice(line) {
                out.push_str(line);
            } else {
                continue;
            }
            out.push_str("\r\n");
        }
        for (i, section) in self.sections.iter().enumerate() {
            let plan = plans.get(i).cloned().unwrap_or_default();
            let port = plan.port;
            // New format attributes go where the section's attributes start (after any
            // c= and b= lines, as RFC 8866 orders them), or at its end.
            let mut formats_pending = plan.formats.as_ref();
            let mut emit_formats = |out: &mut String| {
                for attr in formats_pending
                    .take()
                    .into_iter()
                    .flatten()
                    .flat_map(|f| [&f.rtpmap, &f.fmtp])
                    .flatten()
                {
                    out.push_str(attr);
                    out.push_str("\r\n");
                }
            };
            for line in section {
                if line.starts_with("a=") {
                    emit_formats(&mut out);
                }
                if let Some(m) = line.strip_prefix("m=") {
                    let mut fields: Vec<String> = m.split_whitespace().map(str::to_owned).collect();
                    if let (Some(p), Some(slot)) = (port, fields.get_mut(1)) {
                        *slot = p.to_string();
                    }
                    if let (Some(security), Some(slot)) = (&plan.security, fields.get_mut(2)) {
                        slot.clone_from(&security.proto);
                    }
                    if let Some(formats) = &plan.formats {
                        fields.truncate(3);
                        fields.extend(formats.iter().map(|f| f.payload_type.to_string()));
                    }
                    out.push_str("m=");
                    out.push_str(&fields.join(" "));
                } else if plan.formats.is_some()
                    && (line.starts_with("a=rtpmap:") || line.starts_with("a=fmtp:"))
                {
                    continue;
                } else if line.starts_with("c=") {
                    out.push_str(&connection(line));
                } else if line.starts_with("a=rtcp:") {
                    match port {
                        Some(p) => out.push_str(&format!(
                            "a=rtcp:{} IN {family} {address}",
                            u32::from(p) + 1
                        )),
                        None => out.push_str(line),
                    }
                } else if is_ice(line) || (plan.security.is_some() && line.starts_with("a=crypto:"))
                {
                    continue;
                } else {
                    out.push_str(line);
                }
                out.push_str("\r\n");
            }
            emit_formats(&mut out);
            for line in plan.security.iter().flat_map(|s| &s.crypto) {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out
    }
}

fn is_ice(line: &str) -> bool {
    line.strip_prefix("a=").is_some_and(|attr| {
        let name = attr.split(':').next().unwrap_or(attr);
        ICE_ATTRIBUTES.contains(&name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844527 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
a=ice-ufrag:F7gI\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=rtcp:49171 IN IP4 192.0.2.10\r\n\
a=candidate:1 1 UDP 2130706431 192.0.2.10 49170 typ host\r\n\
a=sendrecv\r\n\
m=video 51372 RTP/AVP 96\r\n\
c=IN IP4 192.0.2.11\r\n\
a=rtpmap:96 H264/90000\r\n\
a=rtcp-mux\r\n\
a=sendonly\r\n\
m=text 0 RTP/AVP 98\r\n";

    #[test]
    fn reads_every_media_line() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        assert_eq!(sdp.media.len(), 3);
        let names: Vec<(u8, &str, u32)> = sdp.media[0]
            .formats
            .iter()
            .map(|f| (f.payload_type, f.name.as_str(), f.clock))
            .collect();
        assert_eq!(
            names,
            vec![
                (0, "PCMU", 8000),
                (8, "PCMA", 8000),
                (101, "TELEPHONE-EVENT", 8000)
            ]
        );
        assert_eq!(
            sdp.media[0].formats[2].fmtp.as_deref(),
            Some("a=fmtp:101 0-16")
        );
        let audio = &sdp.media[0];
        assert_eq!(
            (
                audio.kind.as_str(),
                audio.port,
                audio.clock_rate,
                audio.direction
            ),
            ("audio", 49170, 8000, Direction::SendRecv)
        );
        assert_eq!(audio.address, "192.0.2.10".parse().ok());
        assert_eq!(audio.rtcp, Some((49171, "192.0.2.10".parse().ok())));
        let video = &sdp.media[1];
        assert_eq!(video.address, "192.0.2.11".parse().ok());
        assert_eq!(
            (video.clock_rate, video.rtcp_mux, video.direction),
            (90000, true, Direction::SendOnly)
        );
        assert_eq!(sdp.media[2].port, 0);
    }

    #[test]
    fn rewrite_puts_warden_in_and_keeps_the_rest() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let out = sdp.rewrite(
            "203.0.113.5".parse().unwrap(),
            &[Some(20000), Some(20002), None],
        );
        let expected = "v=0\r\n\
o=alice 2890844526 2890844527 IN IP4 203.0.113.5\r\n\
s=-\r\n\
c=IN IP4 203.0.113.5\r\n\
t=0 0\r\n\
m=audio 20000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=rtcp:20001 IN IP4 203.0.113.5\r\n\
a=sendrecv\r\n\
m=video 20002 RTP/AVP 96\r\n\
c=IN IP4 203.0.113.5\r\n\
a=rtpmap:96 H264/90000\r\n\
a=rtcp-mux\r\n\
a=sendonly\r\n\
m=text 0 RTP/AVP 98\r\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn a_plan_replaces_the_format_list() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let keep = vec![
            sdp.media[0].formats[1].clone(),
            sdp.media[0].formats[2].clone(),
        ];
        let plans = [MediaPlan {
            port: Some(20000),
            formats: Some(keep),
            security: None,
        }];
        let out = sdp.rewrite_with("203.0.113.5".parse().unwrap(), &plans);
        assert!(out.contains("m=audio 20000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"), "{out}");
        assert!(!out.contains("PCMU"), "{out}");
        assert!(
            out.contains("a=ptime:20\r\n"),
            "other attributes stay: {out}"
        );
    }

    #[test]
    fn a_plan_replaces_transport_and_keys() {
        let body = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                    m=audio 4000 RTP/SAVP 0\r\n\
                    a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
                    a=crypto:2 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm\r\n\
                    a=sendrecv\r\n";
        let sdp = Sdp::parse(body.as_bytes()).unwrap();
        let line = &sdp.media[0];
        assert_eq!(line.proto, "RTP/SAVP");
        assert!(line.has_crypto);
        assert_eq!(line.crypto.len(), 1, "the F8 key is not usable");
        let plain = [MediaPlan {
            security: Some(Security {
                proto: "RTP/AVP".into(),
                crypto: Vec::new(),
            }),
            ..MediaPlan::default()
        }];
        let out = sdp.rewrite_with("203.0.113.5".parse().unwrap(), &plain);
        assert!(out.contains("m=audio 4000 RTP/AVP 0\r\n"), "{out}");
        assert!(!out.contains("crypto"), "{out}");
        assert!(out.contains("a=sendrecv\r\n"), "{out}");
        let keyed = [MediaPlan {
            security: Some(Security {
                proto: "RTP/SAVP".into(),
                crypto: vec!["a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:x".into()],
            }),
            ..MediaPlan::default()
        }];
        let out = sdp.rewrite_with("203.0.113.5".parse().unwrap(), &keyed);
        assert_eq!(out.matches("a=crypto:").count(), 1, "{out}");
        assert!(
            out.ends_with("a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:x\r\n"),
            "{out}"
        );
    }

    #[test]
    fn hold_address_survives_rewrite() {
        let body = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let sdp = Sdp::parse(body.as_bytes()).unwrap();
        let out = sdp.rewrite("::1".parse().unwrap(), &[Some(20000)]);
        assert!(out.contains("c=IN IP4 0.0.0.0\r\n"), "{out}");
        assert!(out.contains("o=- 1 2 IN IP6 ::1\r\n"), "{out}");
    }

    #[test]
    fn malformed_descriptions_say_where() {
        let err = Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio x RTP/AVP 0\r\n")
            .unwrap_err();
        assert_eq!(err.line, 4);
        let err = Sdp::parse(b"v=0\r\ns=-\r\nm=audio 4000 RTP/AVP 0\r\n").unwrap_err();
        assert!(err.cause.contains("no connection address"), "{err}");
        assert_eq!(Sdp::parse(b"hello").unwrap_err().line, 1);
    }
}

//! What can be read of a request that did not parse: its method and the Via, From, To,
//! Call-ID and CSeq lines, enough to answer 400 (RFC 3261 8.2.6, 18.3) as Kamailio does.

use std::net::SocketAddr;

use super::find_bytes;

/// The lines of an unparseable request a response must copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    pub method: String,
    /// (canonical name, value) in the order received: every Via, then From, To, Call-ID
    /// and CSeq.
    lines: Vec<(&'static str, String)>,
    /// Where the top Via asks the response to go: its sent-by port, or None with `rport`
    /// (the source port then, RFC 3581).
    via_port: Option<u16>,
}

/// Read `bytes` as a request far enough to answer it, or None: not a request line, an ACK
/// (never answered), or one of the five headers missing or repeated.
pub fn salvage(bytes: &[u8]) -> Option<Salvaged> {
    let head_end = find_bytes(bytes, b"\r\n\r\n").unwrap_or(bytes.len());
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?;
    let mut parts = request_line.split(' ');
    let method = parts.next()?;
    let version = request_line.rsplit(' ').next()?;
    if method.is_empty()
        || !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
        || !version.starts_with("SIP/")
        || method == "ACK"
    {
        return None;
    }
    let mut vias = Vec::new();
    let mut singles: Vec<(&'static str, String)> = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue; // the broken line itself, or a folded continuation
        };
        let Some(canonical) = canonical(name.trim()) else {
            continue;
        };
        let value = value.trim().to_owned();
        if canonical == "Via" {
            vias.extend(value.split(',').map(|v| v.trim().to_owned()));
        } else if singles.iter().any(|(n, _)| *n == canonical) {
            return None; // which one to copy would be a guess
        } else {
            singles.push((canonical, value));
        }
    }
    let top = vias.first()?;
    let via_port = top_via_port(top)?;
    let rport = has_param(top, "rport");
    let mut out: Vec<(&'static str, String)> = vias.into_iter().map(|v| ("Via", v)).collect();
    for wanted in ["From", "To", "Call-ID", "CSeq"] {
        let (_, value) = singles.iter().find(|(n, _)| *n == wanted)?;
        out.push((wanted, value.clone()));
    }
    Some(Salvaged {
        method: method.to_owned(),
        lines: out,
        via_port: (!rport).then_some(via_port),
    })
}

impl Salvaged {
    /// The 400 answering it, `reason` as the phrase and in a Warning.
    pub fn bad_request(&self, reason: &str, to_tag: &str, server: &str) -> Vec<u8> {
        let phrase: String = reason.chars().filter(|c| !c.is_control()).collect();
        let mut out = format!("SIP/2.0 400 {phrase}\r\n");
        for (name, value) in &self.lines {
            if *name == "To" && !has_param(value, "tag") {
                out.push_str(&format!("To: {value};tag={to_tag}\r\n"));
            } else {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        let warning = phrase.replace(['"', '\\'], "'");
        out.push_str(&format!(
            "Warning: 399 warden \"{warning}\"\r\nServer: {server}\r\nContent-Length: 0\r\n\r\n"
        ));
        out.into_bytes()
    }

    /// Where the answer goes for a request from `source` over UDP (RFC 3261 18.2.2).
    pub fn reply_to(&self, source: SocketAddr) -> SocketAddr {
        SocketAddr::new(source.ip(), self.via_port.unwrap_or(source.port()))
    }
}

fn canonical(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "via" | "v" => "Via",
        "from" | "f" => "From",
        "to" | "t" => "To",
        "call-id" | "i" => "Call-ID",
        "cseq" => "CSeq",
        _ => return None,
    })
}

/// The top Via's sent-by port (5060 when absent), or None when it is no Via at all.
fn top_via_port(via: &str) -> Option<u16> {
    let mut words = via.split_whitespace();
    let protocol = words.next()?;
    if !protocol.to_ascii_uppercase().starts_with("SIP/2.0/") {
        return None;
    }
    let sent_by = words.next()?.split(';').next()?;
    match sent_by.rsplit_once(':') {
        Some((_, port)) if !sent_by.ends_with(']') => port.parse().ok(),
        _ => Some(5060),
    }
}

fn has_param(value: &str, name: &str) -> bool {
    value.split(';').skip(1).any(|p| {
        p.split('=')
            .next()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD_PORT: &str = "INVITE sip:bob@h:50a0 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1\r\nv: SIP/2.0/UDP p:5060;branch=z9hG4bK0\r\n\
        From: <sip:a@x>;tag=1\r\nTo: <sip:bob@h>\r\ni: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn the_answer_copies_the_five_headers_and_names_the_fault() {
        let s = salvage(BAD_PORT.as_bytes()).expect("answerable");
        let out = String::from_utf8(s.bad_request("Request-URI port is not a number", "t9", "w"))
            .unwrap();
        assert!(
            out.starts_with("SIP/2.0 400 Request-URI port is not a number\r\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP p:5060"
            )
        );
        assert!(out.contains("To: <sip:bob@h>;tag=t9\r\n") && out.contains("Call-ID: c1\r\n"));
        let from: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        assert_eq!(
            s.reply_to(from).port(),
            5070,
            "the Via's port without rport"
        );
    }

    #[test]
    fn what_cannot_be_answered_is_not() {
        assert_eq!(salvage(BAD_PORT.replace("i: c1\r\n", "").as_bytes()), None);
        assert_eq!(
            salvage(BAD_PORT.replacen("INVITE", "ACK", 1).as_bytes()),
            None
        );
        assert_eq!(salvage(b"\x16\x03\x01 hello"), None);
        let twice = BAD_PORT.replace("i: c1\r\n", "i: c1\r\nCall-ID: c2\r\n");
        assert_eq!(salvage(twice.as_bytes()), None);
        let rport = BAD_PORT.replace("branch=z9hG4bK1", "branch=z9hG4bK1;rport");
        let from: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        assert_eq!(
            salvage(rport.as_bytes()).unwrap().reply_to(from).port(),
            40000
        );
    }
}

//! Deviations real senders make that have one clear meaning, repaired before a second
//! parse; what is ambiguous is left for the parser to refuse (and Warden to answer 400).
//!
//! - A URI parameter repeated with the same value (`;transport=tcp;transport=tcp`):
//!   baresip 1.0 over TCP, when the account and the dialled URI both name the transport.
//!   Kamailio and sofia-sip take the first; the copies say nothing more, so they go.
//!   A parameter repeated with *different* values is ambiguous and stays refused.

use super::find_bytes;

/// The message with its deviations repaired, or None when there is nothing this module
/// knows how to repair (the parser's error then stands).
pub fn repair(bytes: &[u8]) -> Option<Vec<u8>> {
    let head_end = find_bytes(bytes, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let mut changed = false;
    let mut out = String::with_capacity(head.len());
    for (i, line) in head.split("\r\n").enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let repaired = if i == 0 {
            repair_request_line(line)
        } else {
            repair_header_line(line)
        };
        match repaired {
            Some(fixed) => {
                changed = true;
                out.push_str(&fixed);
            }
            None => out.push_str(line),
        }
    }
    if !changed {
        return None;
    }
    let mut repaired = out.into_bytes();
    repaired.extend_from_slice(&bytes[head_end..]);
    Some(repaired)
}

/// A parameter repeated with different values, in a URI of the start line, or None: what
/// a 400 should name when `repair` could not help.
pub fn ambiguous_parameter(bytes: &[u8]) -> Option<String> {
    let line_end = find_bytes(bytes, b"\r\n")?;
    let line = std::str::from_utf8(&bytes[..line_end]).ok()?;
    let uri = line.split(' ').nth(1)?;
    dedupe(uri).err()
}

fn repair_request_line(line: &str) -> Option<String> {
    let mut parts = line.splitn(3, ' ');
    let (method, uri, version) = (parts.next()?, parts.next()?, parts.next()?);
    let fixed = dedupe(uri).ok()??;
    Some(format!("{method} {fixed} {version}"))
}

/// Headers whose value is a name-addr with one URI in angle brackets.
const ADDRESS_HEADERS: &[&str] = &["to", "t", "from", "f", "contact", "m"];

fn repair_header_line(line: &str) -> Option<String> {
    let (name, value) = line.split_once(':')?;
    if !ADDRESS_HEADERS.contains(&name.trim().to_ascii_lowercase().as_str()) {
        return None;
    }
    let open = value.find('<')?;
    let close = open + value[open..].find('>')?;
    let fixed = dedupe(&value[open + 1..close]).ok()??;
    Some(format!(
        "{name}:{}<{fixed}>{}",
        &value[..open],
        &value[close + 1..]
    ))
}

/// `uri` without parameters that repeat an earlier one exactly (name and value compared
/// without case); Ok(None) when none repeats; Err(name) when one repeats with another value.
fn dedupe(uri: &str) -> Result<Option<String>, String> {
    let (body, headers) = match uri.split_once('?') {
        Some((b, h)) => (b, Some(h)),
        None => (uri, None),
    };
    let mut pieces = body.split(';');
    let Some(address) = pieces.next() else {
        return Ok(None);
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut dropped = false;
    for param in pieces {
        let name = |p: &str| {
            p.split('=')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        };
        match kept.iter().find(|k| name(k) == name(param)) {
            Some(earlier) if earlier.eq_ignore_ascii_case(param) => dropped = true,
            Some(_) => return Err(name(param)),
            None => kept.push(param),
        }
    }
    if !dropped {
        return Ok(None);
    }
    let mut out = address.to_owned();
    for param in kept {
        out.push(';');
        out.push_str(param);
    }
    if let Some(h) = headers {
        out.push('?');
        out.push_str(h);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identical_repeated_parameter_is_dropped_in_the_request_line_and_to() {
        let msg = "INVITE sip:bob@h;transport=tcp;transport=TCP SIP/2.0\r\n\
                   To: <sip:bob@h;transport=tcp;transport=tcp>;x=1\r\nCSeq: 1 INVITE\r\n\r\nbody";
        let fixed = String::from_utf8(repair(msg.as_bytes()).expect("repaired")).unwrap();
        assert_eq!(
            fixed,
            "INVITE sip:bob@h;transport=tcp SIP/2.0\r\n\
             To: <sip:bob@h;transport=tcp>;x=1\r\nCSeq: 1 INVITE\r\n\r\nbody"
        );
    }

    #[test]
    fn different_values_are_ambiguous_and_left_alone() {
        let msg = b"INVITE sip:bob@h;transport=tcp;transport=udp SIP/2.0\r\n\r\n";
        assert_eq!(repair(msg), None);
        assert_eq!(ambiguous_parameter(msg).as_deref(), Some("transport"));
        assert_eq!(repair(b"INVITE sip:bob@h;lr SIP/2.0\r\n\r\n"), None);
    }
}

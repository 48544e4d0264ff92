//! Key presses in SIP INFO bodies: `application/dtmf-relay` ("Signal=5\r\nDuration=160",
//! the de facto format of Cisco and most PBXes) and the bare `application/dtmf` ("5").

use std::time::Duration;

/// The content type Warden sends.
pub const CONTENT_TYPE: &str = "application/dtmf-relay";

/// A phone that sends no duration gets this one.
const DEFAULT_DURATION: Duration = Duration::from_millis(160);

/// Is `content_type` one of the INFO bodies that carry a key press?
pub fn is_dtmf(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .map(str::trim)
        .is_some_and(|t| {
            t.eq_ignore_ascii_case(CONTENT_TYPE) || t.eq_ignore_ascii_case("application/dtmf")
        })
}

/// The key and duration of a body; None when it names no key Warden knows.
pub fn parse(body: &[u8]) -> Option<(char, Duration)> {
    let text = std::str::from_utf8(body).ok()?;
    let mut key = None;
    let mut duration = DEFAULT_DURATION;
    for line in text.lines() {
        match line.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("signal") => {
                key = single_key(value.trim());
            }
            Some((name, value)) if name.trim().eq_ignore_ascii_case("duration") => {
                if let Ok(ms) = value.trim().parse::<u64>() {
                    duration = Duration::from_millis(ms.clamp(40, 5000));
                }
            }
            Some(_) => {}
            // application/dtmf: the key alone.
            None if !line.trim().is_empty() && key.is_none() => key = single_key(line.trim()),
            None => {}
        }
    }
    Some((key?, duration))
}

fn single_key(value: &str) -> Option<char> {
    let mut chars = value.chars();
    let c = chars.next()?.to_ascii_uppercase();
    (chars.next().is_none() && matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')).then_some(c)
}

/// The `application/dtmf-relay` body for a key press.
pub fn body(key: char, duration: Duration) -> String {
    format!("Signal={key}\r\nDuration={}\r\n", duration.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dtmf_relay_and_bare_dtmf_bodies() {
        assert_eq!(
            parse(b"Signal=5\r\nDuration=250\r\n"),
            Some(('5', Duration::from_millis(250)))
        );
        assert_eq!(
            parse(b"signal= #\nduration=100"),
            Some(('#', Duration::from_millis(100)))
        );
        assert_eq!(parse(b"Signal=*\r\n"), Some(('*', DEFAULT_DURATION)));
        assert_eq!(parse(b"7"), Some(('7', DEFAULT_DURATION)));
        assert_eq!(
            parse(b"Signal=d\r\nDuration=5"),
            Some(('D', Duration::from_millis(40)))
        );
        assert_eq!(parse(b"Signal=12\r\n"), None, "one key per INFO");
        assert_eq!(parse(b"Signal=x\r\n"), None);
        assert_eq!(parse(b"\xff\xfe"), None);
        assert_eq!(
            parse(&body('9', Duration::from_millis(120)).into_bytes()),
            Some(('9', Duration::from_millis(120)))
        );
    }

    #[test]
    fn content_types() {
        assert!(is_dtmf(Some("application/dtmf-relay")));
        assert!(is_dtmf(Some("Application/DTMF; charset=x")));
        assert!(!is_dtmf(Some("application/sdp")));
        assert!(!is_dtmf(None));
    }
}

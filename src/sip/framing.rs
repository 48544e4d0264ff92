//! Frames SIP messages off a stream by their Content-Length (RFC 3261 18.3, 7.5) and hands
//! each frame whole to the parser: a frame that does not parse is one bad message to
//! answer, not a lost connection. Only a frame that cannot be delimited loses the stream.

use bytes::{Bytes, BytesMut};

use super::find_bytes;
use super::message::{Limits, Message, ParseError};

/// One delimited frame: a message, or bytes that did not parse and why.
#[derive(Debug)]
pub enum Frame {
    Message(Box<Message>),
    Bad(Bytes, String),
}

/// The stream's framing state: bytes of an incomplete message, and keep-alives seen.
pub struct Framer {
    buf: BytesMut,
    limits: Limits,
    /// CRLF pairs between messages since the last `take_keepalives` (RFC 5626 4.4.1).
    keepalives: usize,
    failed: Option<String>,
    /// How far the search for the end of the front message's head has looked, so a
    /// head arriving in many reads is not searched from its start each time.
    scanned: usize,
    /// The front message's whole length, once its head is read (its body may still come).
    expected: Option<usize>,
}

impl Framer {
    pub fn new(limits: Limits) -> Framer {
        Framer {
            buf: BytesMut::new(),
            limits,
            keepalives: 0,
            failed: None,
            scanned: 0,
            expected: None,
        }
    }

    /// Append `chunk`; the frames it completed. Err when the stream can no longer be
    /// delimited (no or a broken Content-Length, a head past the limit): close it then.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Frame>, ParseError> {
        if let Some(why) = &self.failed {
            return Err(ParseError(why.clone()));
        }
        self.buf.extend_from_slice(chunk);
        let mut frames = Vec::new();
        loop {
            while self.expected.is_none() && self.buf.starts_with(b"\r\n") {
                let _ = self.buf.split_to(2);
                self.scanned = self.scanned.saturating_sub(2);
                self.keepalives += 1;
            }
            match self.next_len() {
                Ok(Some(len)) => {
                    let frame = self.buf.split_to(len).freeze();
                    (self.scanned, self.expected) = (0, None);
                    frames.push(match Message::parse_frame(frame.clone(), &self.limits) {
                        Ok(m) => Frame::Message(Box::new(m)),
                        Err(e) => Frame::Bad(frame, e.0),
                    });
                }
                Ok(None) => return Ok(frames),
                Err(why) => {
                    self.failed = Some(why.clone());
                    // What came before the broken frame still counts.
                    return if frames.is_empty() {
                        Err(ParseError(why))
                    } else {
                        Ok(frames)
                    };
                }
            }
        }
    }

    pub fn take_keepalives(&mut self) -> usize {
        std::mem::take(&mut self.keepalives)
    }

    /// The length of the complete frame at the front, None while it is incomplete.
    fn next_len(&mut self) -> Result<Option<usize>, String> {
        if let Some(total) = self.expected {
            return Ok((self.buf.len() >= total).then_some(total));
        }
        let max = self.limits.max_message_bytes;
        // Back three octets: a terminator may straddle two reads.
        let from = self.scanned.saturating_sub(3);
        let Some(head_end) = find_bytes(&self.buf[from..], b"\r\n\r\n").map(|i| from + i) else {
            self.scanned = self.buf.len();
            if self.buf.len() > max {
                return Err(format!("message head larger than {max} octets"));
            }
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]);
        let mut declared = None;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
                let len: usize = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("Content-Length {:?} is not a number", value.trim()))?;
                if declared.is_some_and(|d| d != len) {
                    return Err("two different Content-Length values".into());
                }
                declared = Some(len);
            }
        }
        let len = declared.ok_or("no Content-Length on a stream")?;
        let total = head_end + 4 + len;
        if total > max {
            return Err(format!("message of {total} octets, above {max}"));
        }
        self.expected = Some(total);
        Ok((self.buf.len() >= total).then_some(total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, body: &str) -> String {
        format!(
            "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n\
             To: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn messages_split_across_chunks_and_a_bad_one_between_good_ones() {
        let mut framer = Framer::new(Limits::default());
        let stream = format!(
            "\r\n\r\n{}{}{}",
            request("sip:b@h", "x"),
            request("sip:b@h:5o60", ""),
            request("sip:b@h", "")
        );
        let (first, rest) = stream.as_bytes().split_at(30);
        assert!(framer.push(first).unwrap().is_empty());
        assert_eq!(framer.take_keepalives(), 2);
        let frames = framer.push(rest).unwrap();
        assert_eq!(frames.len(), 3);
        assert!(matches!(frames[0], Frame::Message(_)));
        assert!(matches!(&frames[1], Frame::Bad(_, why) if why.contains("port")));
        assert!(matches!(frames[2], Frame::Message(_)));
    }

    #[test]
    fn a_stream_arriving_one_octet_at_a_time_frames_the_same() {
        let mut framer = Framer::new(Limits::default());
        let stream = format!(
            "\r\n\r\n{}{}",
            request("sip:b@h", "xy"),
            request("sip:b@h", "")
        );
        let mut frames = Vec::new();
        for octet in stream.as_bytes() {
            frames.extend(framer.push(std::slice::from_ref(octet)).unwrap());
        }
        assert_eq!(framer.take_keepalives(), 2);
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|f| matches!(f, Frame::Message(_))));
    }

    #[test]
    fn a_frame_without_a_length_loses_the_stream() {
        let mut framer = Framer::new(Limits::default());
        let text = request("sip:b@h", "").replace("Content-Length: 0\r\n", "");
        assert!(framer.push(text.as_bytes()).is_err());
        assert!(framer.push(b"\r\n").is_err(), "and stays lost");
    }
}

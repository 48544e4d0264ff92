//! The virtual-time harness: a `Core` with fake media, fed messages and time by the test,
//! and phones that speak SIP to it without a socket (the way quinn-proto's `Pair` drives
//! two endpoints). Nothing here binds a socket or sleeps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warden::cdr::Record;
use warden::config::Config;
use warden::core::{Core, Output};
use warden::dialplan::Dialplan;
use warden::media::fake::{Command, FakeMedia};
use warden::registrar::Registrar;
use warden::sip::message::{Limits, Message, Request, Response};
use warden::sip::transport::{Destination, Transport};
use warden_media::{MediaEvent, Side as MediaSide, StreamId};

/// Where Warden listens, as its Via and Contact say.
pub const WARDEN: &str = "127.0.0.1:5060";
/// The virtual wall clock's start (Unix milliseconds).
pub const UNIX_START_MS: u64 = 1_000_000_000;

pub fn udp(addr: &str) -> Destination {
    Destination {
        transport: Transport::Udp,
        addr: addr.parse().expect("a socket address"),
        conn: None,
    }
}

pub fn parse(bytes: Bytes) -> Message {
    Message::parse_datagram(bytes, &Limits::default()).expect("Warden sent a parseable message")
}

/// A plain audio offer or answer from `port` (PCMU and telephone-event).
pub fn sdp(port: u16, direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
    )
}

/// The port of the first m= line of an SDP body.
pub fn media_port(body: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.trim().parse().ok())
}

/// A core, its fake media and what it handed out, on one virtual clock.
pub struct Net {
    pub core: Core,
    pub media: FakeMedia,
    pub now: Instant,
    start: Instant,
    /// Every record revision the core handed out, in order.
    pub records: Vec<Record>,
    /// Screening requests the core made (answered with `screened`).
    pub screens: Vec<warden::screening::Request>,
    /// Everything else the core asked of the driver, but messages and records.
    pub asks: Vec<Output>,
    /// Messages sent and not yet taken by their addressee.
    wire: Vec<(String, Message)>,
}

impl Net {
    pub fn new() -> Net {
        Net::with_config(Config::default())
    }

    pub fn with_config(config: Config) -> Net {
        let mut advertised = HashMap::new();
        advertised.insert(Transport::Udp, WARDEN.to_owned());
        let registrar = Registrar::new(config.registrar.clone(), Vec::new());
        let prompts = warden::prompts::load(&config).expect("the shipped prompts load");
        let media = FakeMedia::new();
        let now = Instant::now();
        let core = Core::new(
            config,
            registrar,
            advertised,
            Box::new(media.clone()),
            prompts,
        );
        Net {
            core,
            media,
            now,
            start: now,
            records: Vec::new(),
            screens: Vec::new(),
            asks: Vec::new(),
            wire: Vec::new(),
        }
    }

    /// A net around another signalling shard of this net's core: the same registrar,
    /// guard, rooms and counters, its own calls and fake media.
    pub fn sibling(&self, shard: warden::shard::Shard) -> Net {
        let config = Config::default();
        let prompts = warden::prompts::load(&config).expect("the shipped prompts load");
        let media = FakeMedia::new();
        let core = self.core.sibling(shard, Box::new(media.clone()), prompts);
        Net {
            core,
            media,
            now: self.now,
            start: self.start,
            records: Vec::new(),
            screens: Vec::new(),
            asks: Vec::new(),
            wire: Vec::new(),
        }
    }

    /// Route calls by the dialplan `text` (the file format of `dialplans/`).
    pub fn with_plan(config: Config, text: &str) -> Net {
        let mut net = Net::with_config(config);
        let plan = Dialplan::parse(text, "test.toml").expect("the test's dialplan parses");
        net.core.set_dialplan(plan);
        net
    }

    /// Wall-clock time moving with virtual time.
    pub fn unix_ms(&self) -> u64 {
        UNIX_START_MS + self.now.duration_since(self.start).as_millis() as u64
    }

    /// `m` reaches Warden from `from`, through the parser as bytes would.
    pub fn deliver(&mut self, from: &str, m: &Message) {
        let m = parse(m.to_bytes());
        let unix_ms = self.unix_ms();
        self.core.handle_message(m, udp(from), self.now, unix_ms);
        self.collect();
    }

    /// Advance virtual time, firing every timer due on the way.
    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(t) = self.core.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            let unix_ms = self.unix_ms();
            self.core.handle_timeout(self.now, unix_ms);
            self.collect();
        }
        self.now = end;
        let unix_ms = self.unix_ms();
        self.core.handle_timeout(self.now, unix_ms);
        self.collect();
    }

    /// The relay reports something.
    pub fn media_event(&mut self, event: MediaEvent) {
        self.core.handle_media_event(event, self.now);
        self.collect();
    }

    /// The relay reports that a prompt played to the caller ended.
    pub fn prompt_ended(&mut self, stream: StreamId) {
        self.media_event(MediaEvent::PlaybackDone {
            stream,
            side: MediaSide::A,
        });
    }

    /// The screener's answer to the call's request.
    pub fn screened(&mut self, call: u64, outcome: warden::screening::Outcome) {
        self.core.handle_screened(call, outcome, self.now);
        self.collect();
    }

    /// Take what the core handed out (after calling it directly).
    pub fn collect(&mut self) {
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Send(d, bytes) => self.wire.push((d.addr.to_string(), parse(bytes))),
                Output::Record(r) => self.records.push(*r),
                Output::Screen(r) => self.screens.push(*r),
                other => self.asks.push(other),
            }
        }
    }

    /// What was sent to `to` since it last looked, oldest first.
    pub fn take(&mut self, to: &str) -> Vec<Message> {
        let (mine, rest) = std::mem::take(&mut self.wire)
            .into_iter()
            .partition(|(d, _)| d == to);
        self.wire = rest;
        mine.into_iter().map(|(_, m)| m).collect()
    }

    /// Everything sent since the last look, with its addressee, oldest first.
    pub fn take_all(&mut self) -> Vec<(String, Message)> {
        std::mem::take(&mut self.wire)
    }

    /// The latest revision of every call's record, in the order the calls began.
    pub fn latest_records(&self) -> Vec<Record> {
        let mut order: Vec<String> = Vec::new();
        let mut latest: HashMap<String, Record> = HashMap::new();
        for r in &self.records {
            if !latest.contains_key(&r.id) {
                order.push(r.id.clone());
            }
            let newer = latest.get(&r.id).is_none_or(|old| r.rev >= old.rev);
            if newer {
                latest.insert(r.id.clone(), r.clone());
            }
        }
        order
            .into_iter()
            .filter_map(|id| latest.remove(&id))
            .collect()
    }

    /// The latest revision of the only call's record.
    pub fn record(&self) -> Record {
        let mut all = self.latest_records();
        assert_eq!(all.len(), 1, "one call's record: {all:#?}");
        all.remove(0)
    }

    /// Media commands since the last look.
    pub fn media_commands(&self) -> Vec<Command> {
        self.media.take_commands()
    }
}

impl Default for Net {
    fn default() -> Net {
        Net::new()
    }
}

/// One dialog as a phone sees it.
#[derive(Debug, Clone)]
pub struct Dialog {
    pub call_id: String,
    /// Our From (requests we send) with our tag, and the peer's To with its tag.
    pub local: String,
    pub remote: String,
    /// Where our in-dialog requests go (the peer's Contact).
    pub target: String,
    pub cseq: u32,
}

/// A SIP phone on the virtual network: builds requests and answers, keeps its dialogs.
pub struct Phone {
    pub user: String,
    pub addr: String,
    next_branch: u32,
    next_call: u32,
}

impl Phone {
    pub fn new(user: &str, addr: &str) -> Phone {
        Phone {
            user: user.to_owned(),
            addr: addr.to_owned(),
            next_branch: 0,
            next_call: 0,
        }
    }

    fn branch(&mut self) -> String {
        self.next_branch += 1;
        format!("z9hG4bK{}{}", self.user, self.next_branch)
    }

    fn contact(&self) -> String {
        format!("<sip:{}@{}>", self.user, self.addr)
    }

    fn build(&mut self, head: &str, headers: &[String], body: &str) -> Message {
        let ct = if body.starts_with("v=0") {
            "Content-Type: application/sdp\r\n"
        } else {
            ""
        };
        let branch = self.branch();
        let text = format!(
            "{head}\r\nVia: SIP/2.0/UDP {};branch={branch};rport\r\nMax-Forwards: 70\r\n{}{ct}Content-Length: {}\r\n\r\n{body}",
            self.addr,
            headers
                .iter()
                .map(|h| format!("{h}\r\n"))
                .collect::<String>(),
            body.len()
        );
        parse(Bytes::from(text))
    }

    /// Register at Warden and expect its 200.
    pub fn register(&mut self, net: &mut Net) {
        let m = self.build(
            "REGISTER sip:127.0.0.1 SIP/2.0",
            &[
                format!("From: <sip:{}@127.0.0.1>;tag=r{}", self.user, self.user),
                format!("To: <sip:{}@127.0.0.1>", self.user),
                format!("Call-ID: reg-{}-{}", self.user, self.addr),
                "CSeq: 1 REGISTER".into(),
                format!("Contact: {}", self.contact()),
            ],
            "",
        );
        net.deliver(&self.addr, &m);
        let answer = self.responses(net);
        assert!(
            answer.iter().any(|r| r.status() == 200),
            "{} registered: {answer:?}",
            self.user
        );
    }

    /// Call `to` (the Request-URI user) with `body` (an SDP offer or nothing) and `extra`
    /// header lines; returns the INVITE as sent.
    pub fn invite(&mut self, net: &mut Net, to: &str, body: &str, extra: &[&str]) -> Request {
        self.next_call += 1;
        let mut headers = vec![
            format!(
                "From: <sip:{}@127.0.0.1>;tag=f{}",
                self.user, self.next_call
            ),
            format!("To: <sip:{to}@127.0.0.1>"),
            format!("Call-ID: call-{}-{}", self.user, self.next_call),
            "CSeq: 1 INVITE".into(),
            format!("Contact: {}", self.contact()),
        ];
        headers.extend(extra.iter().map(|h| h.to_string()));
        let m = self.build(
            &format!("INVITE sip:{to}@127.0.0.1 SIP/2.0"),
            &headers,
            body,
        );
        net.deliver(&self.addr, &m);
        match m {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!("an INVITE was built"),
        }
    }

    /// CANCEL our `invite`.
    pub fn cancel(&mut self, net: &mut Net, invite: &Request) {
        let mut headers: Vec<String> = ["From", "To", "Call-ID"]
            .iter()
            .filter_map(|h| invite.header(h).map(|v| format!("{h}: {v}")))
            .collect();
        headers.push("CSeq: 1 CANCEL".into());
        let via = invite.header("Via").unwrap_or_default();
        // A CANCEL carries its INVITE's branch (RFC 3261 9.1).
        let text = format!(
            "CANCEL {} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n{}Content-Length: 0\r\n\r\n",
            invite.uri(),
            headers
                .iter()
                .map(|h| format!("{h}\r\n"))
                .collect::<String>()
        );
        net.deliver(&self.addr, &parse(Bytes::from(text)));
    }

    /// Everything Warden sent us since we last looked.
    pub fn receive(&mut self, net: &mut Net) -> Vec<Message> {
        net.take(&self.addr)
    }

    /// The responses among what Warden sent us.
    pub fn responses(&mut self, net: &mut Net) -> Vec<Response> {
        responses(&self.receive(net))
    }

    /// The one request of `method` Warden sent us (others are dropped).
    pub fn expect(&mut self, net: &mut Net, method: &str) -> Request {
        let got = self.receive(net);
        let found = requests(&got, method);
        assert_eq!(
            found.len(),
            1,
            "{} expected one {method}, got {:?}",
            self.user,
            summary(&got)
        );
        found[0].clone()
    }

    /// Answer Warden's request `req` with `status` (tag: ours, Contact: us) and `body`.
    pub fn answer(&self, net: &mut Net, req: &Request, status: u16, body: &str) -> Response {
        self.answer_with(net, req, status, &[], body)
    }

    /// `answer` with extra header lines ("Name: value"); a Contact among them replaces
    /// the phone's own.
    pub fn answer_with(
        &self,
        net: &mut Net,
        req: &Request,
        status: u16,
        headers: &[&str],
        body: &str,
    ) -> Response {
        let mut resp = Response::to_request(req, status, "Reason");
        if status > 100 && req.to_tag().is_none() {
            resp.set_to_tag(&format!("t{}", self.user));
        }
        if !headers.iter().any(|h| h.starts_with("Contact:")) {
            resp.push_header("Contact", &self.contact())
                .expect("a valid Contact");
        }
        for h in headers {
            let (name, value) = h.split_once(": ").expect("Name: value");
            resp.push_header(name, value).expect("a header");
        }
        if !body.is_empty() {
            resp.set_body(Bytes::from(body.to_owned()), Some("application/sdp"));
        }
        net.deliver(&self.addr, &Message::Response(resp.clone()));
        resp
    }

    /// The dialog our INVITE `invite` made with Warden's answer `ok`.
    pub fn dialog_as_caller(&self, invite: &Request, ok: &Response) -> Dialog {
        Dialog {
            call_id: invite.call_id().unwrap_or_default(),
            local: invite.header("From").unwrap_or_default(),
            remote: ok.header("To").unwrap_or_default(),
            target: ok.contact_uri().unwrap_or_else(|| format!("sip:{WARDEN}")),
            cseq: invite.cseq().map_or(1, |c| c.seq),
        }
    }

    /// The dialog Warden's INVITE `invite` made with our answer `ok`.
    pub fn dialog_as_callee(&self, invite: &Request, ok: &Response) -> Dialog {
        Dialog {
            call_id: invite.call_id().unwrap_or_default(),
            local: ok.header("To").unwrap_or_default(),
            remote: invite.header("From").unwrap_or_default(),
            target: invite
                .contact_uri()
                .unwrap_or_else(|| format!("sip:{WARDEN}")),
            cseq: 0,
        }
    }

    /// ACK Warden's 2xx in `dialog`, with `body` (an answer to a delayed offer, or nothing).
    pub fn ack(&mut self, net: &mut Net, dialog: &Dialog, body: &str) {
        let seq = dialog.cseq;
        let m = self.in_dialog_with(dialog, "ACK", seq, &[], body);
        net.deliver(&self.addr, &m);
    }

    /// ACK Warden's failure `resp` to our `invite` (in its transaction: the INVITE's
    /// branch, RFC 3261 17.1.1.3).
    pub fn ack_failure(&mut self, net: &mut Net, invite: &Request, resp: &Response) {
        let text = format!(
            "ACK {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
            invite.uri(),
            invite.header("Via").unwrap_or_default(),
            invite.header("From").unwrap_or_default(),
            resp.header("To").unwrap_or_default(),
            invite.call_id().unwrap_or_default(),
            invite.cseq().map_or(1, |c| c.seq),
        );
        net.deliver(&self.addr, &parse(Bytes::from(text)));
    }

    /// Send `method` in `dialog` with `extra` header lines and `body`; returns the request.
    pub fn request(
        &mut self,
        net: &mut Net,
        dialog: &mut Dialog,
        method: &str,
        extra: &[&str],
        body: &str,
    ) -> Request {
        dialog.cseq += 1;
        let m = self.in_dialog_with(dialog, method, dialog.cseq, extra, body);
        net.deliver(&self.addr, &m);
        match m {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!("a request was built"),
        }
    }

    fn in_dialog_with(
        &mut self,
        d: &Dialog,
        method: &str,
        seq: u32,
        extra: &[&str],
        body: &str,
    ) -> Message {
        let mut headers = vec![
            format!("From: {}", d.local),
            format!("To: {}", d.remote),
            format!("Call-ID: {}", d.call_id),
            format!("CSeq: {seq} {method}"),
            format!("Contact: {}", self.contact()),
        ];
        headers.extend(extra.iter().map(|h| h.to_string()));
        self.build(&format!("{method} {} SIP/2.0", d.target), &headers, body)
    }
}

pub fn responses(messages: &[Message]) -> Vec<Response> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Response(r) => Some(r.clone()),
            Message::Request(_) => None,
        })
        .collect()
}

pub fn requests(messages: &[Message], method: &str) -> Vec<Request> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Request(r) if r.method().as_str() == method => Some(r.clone()),
            _ => None,
        })
        .collect()
}

pub fn statuses(messages: &[Message]) -> Vec<u16> {
    responses(messages).iter().map(|r| r.status()).collect()
}

/// "INVITE", "180", ... for assertion messages.
pub fn summary(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match m {
            Message::Request(r) => r.method().as_str().to_owned(),
            Message::Response(r) => format!("{} {}", r.status(), r.reason()),
        })
        .collect()
}

/// Streams the media was asked to play prompts on, with how many frames each prompt had.
pub fn plays(commands: &[Command]) -> Vec<(StreamId, MediaSide, usize)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Play {
                id, side, prompt, ..
            } => Some((*id, *side, prompt.frames.len())),
            _ => None,
        })
        .collect()
}

//! The test user agent: a minimal SIP phone over real UDP, TCP or TLS sockets, and the
//! call set-up and hang-up most process tests share.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warden::sip::message::{Limits, Message, Request, Response};

use super::process::Warden;

enum Sock {
    Udp(UdpSocket),
    Tcp(Box<dyn Stream>, Vec<u8>),
    Tls(Box<dyn Stream>, Vec<u8>),
}

/// A byte stream a test UA reads SIP from: TCP, or TLS over TCP.
pub trait Stream: Read + Write + Send {
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl Stream for TcpStream {
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(timeout)
    }
}

impl Stream for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }
}

impl Stream for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }
}

/// A minimal SIP user agent for tests.
pub struct Ua {
    pub user: String,
    sock: Sock,
    pub server: SocketAddr,
    pub local: SocketAddr,
    cseq: u32,
    pub call_id: String,
    pub tag: String,
}

/// Dialog state a UA keeps after a call is set up.
#[derive(Clone, Debug)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    pub local_uri: String,
    pub remote_uri: String,
    pub target: String,
    pub cseq: u32,
}

pub fn rand_hex() -> String {
    format!("{:x}", rand::random::<u64>())
}

impl Ua {
    pub fn udp(user: &str, port: u16) -> Ua {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = sock.local_addr().expect("addr");
        Self::new(user, port, Sock::Udp(sock), local)
    }

    /// A UA on another loopback address (127.0.0.2...): a source of its own to Warden.
    pub fn udp_from(user: &str, port: u16, ip: &str) -> Ua {
        let sock = UdpSocket::bind((ip, 0)).expect("bind");
        let local = sock.local_addr().expect("addr");
        Self::new(user, port, Sock::Udp(sock), local)
    }

    /// A UA on [::1] talking to Warden's IPv6 socket.
    pub fn udp6(user: &str, port: u16) -> Ua {
        let sock = UdpSocket::bind("[::1]:0").expect("bind ::1");
        let local = sock.local_addr().expect("addr");
        let mut ua = Self::new(user, port, Sock::Udp(sock), local);
        ua.server = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        ua
    }

    pub fn tcp(user: &str, port: u16) -> Ua {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let local = stream.local_addr().expect("addr");
        Self::new(user, port, Sock::Tcp(Box::new(stream), Vec::new()), local)
    }

    /// A UA taking the next TLS connection on `listener` (Warden dialling out to it), with
    /// `server`'s certificate; None when no connection or handshake comes within 5 s.
    pub fn accept_tls(
        user: &str,
        listener: &TcpListener,
        server: Arc<rustls::ServerConfig>,
    ) -> Option<Ua> {
        listener.set_nonblocking(true).ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let (tcp, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => return None,
            }
        };
        tcp.set_nonblocking(false).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let local = tcp.local_addr().ok()?;
        let conn = rustls::ServerConnection::new(server).ok()?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).ok()?;
        }
        let mut ua = Self::new(
            user,
            peer.port(),
            Sock::Tls(Box::new(stream), Vec::new()),
            local,
        );
        ua.server = peer;
        Some(ua)
    }

    /// A UA on a TLS connection to `port`, verifying Warden's certificate (for 127.0.0.1)
    /// with `client` (the handshake completes here).
    pub fn tls(user: &str, port: u16, client: Arc<rustls::ClientConfig>) -> Result<Ua, String> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let conn = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| e.to_string())?;
        }
        let mut ua = Self::new(user, port, Sock::Tls(Box::new(stream), Vec::new()), local);
        ua.server = SocketAddr::from(([127, 0, 0, 1], port));
        Ok(ua)
    }

    fn new(user: &str, port: u16, sock: Sock, local: SocketAddr) -> Ua {
        Ua {
            user: user.to_owned(),
            sock,
            server: SocketAddr::from(([127, 0, 0, 1], port)),
            local,
            cseq: 0,
            call_id: format!("{}@test", rand_hex()),
            tag: rand_hex(),
        }
    }

    fn transport(&self) -> &'static str {
        match self.sock {
            Sock::Udp(_) => "UDP",
            Sock::Tcp(..) => "TCP",
            Sock::Tls(..) => "TLS",
        }
    }

    pub fn contact(&self) -> String {
        match self.sock {
            Sock::Udp(_) => format!("<sip:{}@{}>", self.user, self.local),
            Sock::Tcp(..) => format!("<sip:{}@{};transport=tcp>", self.user, self.local),
            Sock::Tls(..) => format!("<sips:{}@{}>", self.user, self.local),
        }
    }

    pub fn via(&self) -> String {
        format!(
            "SIP/2.0/{} {};branch=z9hG4bK{};rport",
            self.transport(),
            self.local,
            rand_hex()
        )
    }

    pub fn send_raw(&mut self, text: &str) {
        match &mut self.sock {
            Sock::Udp(s) => {
                s.send_to(text.as_bytes(), self.server).expect("send");
            }
            Sock::Tcp(s, _) | Sock::Tls(s, _) => {
                s.write_all(text.as_bytes()).expect("send");
                s.flush().expect("flush");
            }
        }
    }

    pub fn send(&mut self, m: &Message) {
        let bytes = m.to_bytes();
        match &mut self.sock {
            Sock::Udp(s) => {
                s.send_to(&bytes, self.server).expect("send");
            }
            Sock::Tcp(s, _) | Sock::Tls(s, _) => {
                s.write_all(&bytes).expect("send");
                s.flush().expect("flush");
            }
        }
    }

    /// Next message within `wait`, or None.
    pub fn try_recv(&mut self, wait: Duration) -> Option<Message> {
        let deadline = Instant::now() + wait;
        match &mut self.sock {
            Sock::Udp(s) => {
                let mut buf = vec![0u8; 65536];
                loop {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                        .ok()?;
                    let (n, _) = s.recv_from(&mut buf).ok()?;
                    if let Ok(m) = Message::parse_datagram(
                        Bytes::copy_from_slice(&buf[..n]),
                        &Limits::default(),
                    ) {
                        return Some(m);
                    }
                }
            }
            Sock::Tcp(s, pending) | Sock::Tls(s, pending) => loop {
                if let Some(m) = frame(pending) {
                    return Some(m);
                }
                let left = deadline.checked_duration_since(Instant::now())?;
                s.set_timeout(Some(left.max(Duration::from_millis(1))))
                    .ok()?;
                let mut buf = [0u8; 16384];
                let n = s.read(&mut buf).ok()?;
                if n == 0 {
                    return None;
                }
                pending.extend_from_slice(&buf[..n]);
            },
        }
    }

    pub fn recv(&mut self) -> Message {
        self.try_recv(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{}: nothing received within 5 s", self.user))
    }

    /// The next request, skipping response retransmissions.
    pub fn recv_request(&mut self, method: &str) -> Request {
        loop {
            match self.recv() {
                Message::Request(r) if r.method().as_str() == method => return r,
                Message::Request(r) if r.method().as_str() == "INVITE" && method != "INVITE" => {
                    // A retransmitted INVITE: ignore.
                    let _ = r;
                }
                Message::Request(r) => {
                    panic!("{}: expected {method}, got {}", self.user, r.method())
                }
                Message::Response(_) => {}
            }
        }
    }

    /// The next final (or given) response, skipping 100 Trying.
    pub fn recv_response(&mut self) -> Response {
        loop {
            match self.recv() {
                Message::Response(r) if r.status() == 100 => continue,
                Message::Response(r) => return r,
                Message::Request(r) => {
                    panic!("{}: expected a response, got {}", self.user, r.method())
                }
            }
        }
    }

    /// The next final response, provisional ones skipped (a request is a failure, as in
    /// `recv_response`).
    pub fn final_response(&mut self) -> Response {
        loop {
            let r = self.recv_response();
            if r.status() >= 200 {
                return r;
            }
        }
    }

    pub fn options(&self) -> String {
        format!(
            "OPTIONS sip:warden@{srv} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: <sip:{u}@test>;tag={tag}\r\nTo: <sip:warden@{srv}>\r\nCall-ID: {ci}\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            srv = self.server,
            via = self.via(),
            u = self.user,
            tag = rand_hex(),
            ci = rand_hex()
        )
    }

    pub fn register(&mut self, expires: u32) -> Response {
        self.register_with(expires, None)
    }

    pub fn register_with(&mut self, expires: u32, auth: Option<&str>) -> Response {
        let text = self.register_text(expires, auth);
        self.send_raw(&text);
        self.recv_response()
    }

    /// The next REGISTER this phone would send (its CSeq counted), not sent.
    pub fn register_text(&mut self, expires: u32, auth: Option<&str>) -> String {
        self.cseq += 1;
        let mut text = format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: <sip:{u}@127.0.0.1>;tag={tag}\r\nTo: <sip:{u}@127.0.0.1>\r\n\
             Call-ID: reg-{ci}\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\nExpires: {expires}\r\n",
            via = self.via(),
            u = self.user,
            tag = self.tag,
            ci = self.call_id,
            cseq = self.cseq,
            contact = self.contact()
        );
        if let Some(a) = auth {
            text.push_str(&format!("Authorization: {a}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        text
    }

    /// Send an INVITE to `callee` with an SDP body; returns the request sent.
    pub fn invite(&mut self, callee: &str) -> Request {
        self.invite_sdp(
            callee,
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 40000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n",
        )
    }

    /// Send an INVITE to `callee` offering `sdp`.
    pub fn invite_sdp(&mut self, callee: &str, sdp: &str) -> Request {
        self.invite_with(callee, sdp, "")
    }

    /// Send an INVITE to `callee` offering `sdp`, with `extra` header lines (each ending
    /// in CRLF).
    pub fn invite_with(&mut self, callee: &str, sdp: &str, extra: &str) -> Request {
        let uri = format!("sip:{callee}@{}", self.server);
        self.invite_uri(&uri, callee, sdp, extra)
    }

    /// Send an INVITE with Request-URI `uri` (sent as written) to `callee`.
    pub fn invite_uri(&mut self, uri: &str, callee: &str, sdp: &str, extra: &str) -> Request {
        self.call_id = format!("{}@test", rand_hex());
        self.cseq += 1;
        let text = format!(
            "INVITE {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: \"{u}\" <sip:{u}@127.0.0.1>;tag={tag}\r\nTo: <sip:{callee}@127.0.0.1>\r\n\
             Call-ID: {ci}\r\nCSeq: {cseq} INVITE\r\nContact: {contact}\r\n{extra}\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            via = self.via(),
            u = self.user,
            tag = self.tag,
            ci = self.call_id,
            cseq = self.cseq,
            contact = self.contact(),
            len = sdp.len()
        );
        self.send_raw(&text);
        match Message::parse_datagram(Bytes::from(text), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            _ => panic!("test INVITE does not parse"),
        }
    }

    /// ACK a final failure `resp` to `invite` (same branch, RFC 3261 17.1.1.3).
    pub fn ack_failure(&mut self, invite: &Request, resp: &Response) {
        let to = format!(
            "{};tag={}",
            invite.header("To").unwrap(),
            resp.to_tag().unwrap_or_default()
        );
        self.send_on_branch(invite, "ACK", &to);
    }

    /// CANCEL the INVITE `invite` (same branch, RFC 3261 9.1).
    pub fn cancel(&mut self, invite: &Request) {
        let to = invite.header("To").unwrap();
        self.send_on_branch(invite, "CANCEL", &to);
    }

    /// `method` on `invite`'s branch: its URI, Via, From, Call-ID and CSeq number.
    fn send_on_branch(&mut self, invite: &Request, method: &str, to: &str) {
        let text = format!(
            "{method} {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
             Call-ID: {ci}\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n",
            uri = invite.uri(),
            via = invite.header("Via").unwrap(),
            from = invite.header("From").unwrap(),
            ci = invite.call_id().unwrap(),
            seq = invite.cseq().unwrap().seq
        );
        self.send_raw(&text);
    }

    /// Answer `req` with `status`, a fixed To tag and optional SDP; returns the dialog for 2xx.
    pub fn answer(&mut self, req: &Request, status: u16, sdp: bool) -> Dialog {
        let body = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0\r\n";
        self.answer_sdp(req, status, sdp.then_some(body))
    }

    /// Answer `req` with `status` and an optional SDP body.
    pub fn answer_sdp(&mut self, req: &Request, status: u16, sdp: Option<&str>) -> Dialog {
        let tag = format!("{}-tag", self.user);
        let mut resp =
            Response::to_request(req, status, if status == 200 { "OK" } else { "Failure" });
        if status > 100 {
            resp.set_to_tag(&tag);
        }
        resp.push_header("Contact", &self.contact()).unwrap();
        if let Some(body) = sdp {
            resp.set_body(
                Bytes::copy_from_slice(body.as_bytes()),
                Some("application/sdp"),
            );
        }
        self.send(&Message::Response(resp));
        let contact = req.contacts().unwrap().into_iter().next();
        let target = match contact {
            Some(warden::sip::message::Contact::Address(a)) => a.uri.to_string(),
            _ => String::new(),
        };
        Dialog {
            call_id: req.call_id().unwrap(),
            local_tag: tag,
            remote_tag: req.from_tag().unwrap(),
            local_uri: strip(&req.header("To").unwrap()),
            remote_uri: strip(&req.header("From").unwrap()),
            target,
            cseq: 100,
        }
    }

    /// Dialog from the caller's side after a 2xx.
    pub fn dialog_from(&self, invite: &Request, ok: &Response) -> Dialog {
        let target = match ok.contacts().unwrap().into_iter().next() {
            Some(warden::sip::message::Contact::Address(a)) => a.uri.to_string(),
            _ => panic!("2xx without Contact"),
        };
        Dialog {
            call_id: invite.call_id().unwrap(),
            local_tag: invite.from_tag().unwrap(),
            remote_tag: ok.to_tag().expect("2xx has a To tag"),
            local_uri: strip(&invite.header("From").unwrap()),
            remote_uri: strip(&invite.header("To").unwrap()),
            target,
            cseq: invite.cseq().unwrap().seq,
        }
    }

    /// Send a request within `d` (ACK reuses the given CSeq), its body SDP.
    pub fn in_dialog(&mut self, d: &mut Dialog, method: &str, body: Option<&str>) {
        self.in_dialog_typed(d, method, "application/sdp", body);
    }

    /// Send a request within `d` with a body of `content_type`.
    pub fn in_dialog_typed(
        &mut self,
        d: &mut Dialog,
        method: &str,
        content_type: &str,
        body: Option<&str>,
    ) {
        self.in_dialog_with(d, method, "", content_type, body);
    }

    /// REFER within `d` to `user`, replacing the dialog `replaced` as this phone holds it
    /// (an attended transfer, RFC 3891).
    pub fn refer_replacing(&mut self, d: &mut Dialog, user: &str, replaced: &Dialog) {
        let replaces = format!(
            "{}%3Bto-tag%3D{}%3Bfrom-tag%3D{}",
            replaced.call_id, replaced.remote_tag, replaced.local_tag
        );
        let refer_to = format!("Refer-To: <sip:{user}@127.0.0.1?Replaces={replaces}>\r\n");
        self.in_dialog_with(d, "REFER", &refer_to, "", None);
    }

    /// Send a request within `d` with `extra` header lines (each ending in CRLF).
    pub fn in_dialog_with(
        &mut self,
        d: &mut Dialog,
        method: &str,
        extra: &str,
        content_type: &str,
        body: Option<&str>,
    ) {
        if method != "ACK" {
            d.cseq += 1;
        }
        let body = body.unwrap_or("");
        let ct = if body.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {content_type}\r\n")
        };
        let text = format!(
            "{method} {target} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {lu};tag={lt}\r\n\
             To: {ru};tag={rt}\r\nCall-ID: {ci}\r\nCSeq: {seq} {method}\r\nContact: {contact}\r\n\
             {extra}{ct}Content-Length: {len}\r\n\r\n{body}",
            target = d.target,
            via = self.via(),
            lu = d.local_uri,
            lt = d.local_tag,
            ru = d.remote_uri,
            rt = d.remote_tag,
            ci = d.call_id,
            seq = d.cseq,
            contact = self.contact(),
            len = body.len()
        );
        self.send_raw(&text);
    }

    /// Respond 200 to an in-dialog request.
    pub fn ok(&mut self, req: &Request) {
        let resp = Response::to_request(req, 200, "OK");
        self.send(&Message::Response(resp));
    }
}

fn strip(h: &str) -> String {
    match h.find(";tag=") {
        Some(i) => h[..i].to_owned(),
        None => h.to_owned(),
    }
}

/// Cut one message off a TCP byte stream (Content-Length framing).
fn frame(pending: &mut Vec<u8>) -> Option<Message> {
    let end = pending.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&pending[..end]).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim().eq_ignore_ascii_case("content-length") || n.trim().eq_ignore_ascii_case("l"))
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    if pending.len() < end + len {
        return None;
    }
    let bytes: Vec<u8> = pending.drain(..end + len).collect();
    Message::parse_datagram(Bytes::from(bytes), &Limits::default()).ok()
}

/// Register bob, call him from alice, answer; returns (alice, bob, dialogs).
pub fn establish(w: &Warden, alice: &mut Ua, bob: &mut Ua) -> (Dialog, Dialog) {
    assert_eq!(bob.register(600).status(), 200);
    let invite = alice.invite("bob");
    let incoming = bob.recv_request("INVITE");
    assert_eq!(incoming.uri().user().as_deref(), Some("bob"));
    assert_ne!(
        incoming.call_id(),
        invite.call_id(),
        "B-leg has its own Call-ID"
    );
    assert!(incoming.body().starts_with(b"v=0"), "SDP passes through");
    bob.answer(&incoming, 180, false);
    let ringing = alice.recv_response();
    assert_eq!(ringing.status(), 180);
    let bob_dialog = bob.answer(&incoming, 200, true);
    let ok = alice.recv_response();
    assert_eq!(ok.status(), 200);
    assert!(ok.body().starts_with(b"v=0"), "answer SDP relayed");
    let mut alice_dialog = alice.dialog_from(&invite, &ok);
    alice.in_dialog(&mut alice_dialog, "ACK", None);
    let ack = bob.recv_request("ACK");
    assert_eq!(ack.call_id(), incoming.call_id());
    let _ = w;
    (alice_dialog, bob_dialog)
}

/// `from` hangs up the dialog `d`; `to` answers the relayed BYE; `from` gets 200.
pub fn hang_up(from: &mut Ua, d: &mut Dialog, to: &mut Ua) {
    from.in_dialog(d, "BYE", None);
    let bye = to.recv_request("BYE");
    to.ok(&bye);
    assert_eq!(from.recv_response().status(), 200);
}

/// The nonce of `challenge`'s `header` (WWW- or Proxy-Authenticate) for `alg`.
pub fn nonce_of(
    challenge: &Response,
    header: &str,
    alg: warden::registrar::digest::Algorithm,
) -> String {
    let value = challenge
        .headers(header)
        .into_iter()
        .find(|h| h.contains(alg.name()))
        .unwrap_or_else(|| panic!("{header} for {alg:?}"));
    let nonce = value.split("nonce=\"").nth(1).expect("nonce");
    nonce.split('"').next().expect("nonce").to_owned()
}

//! SIP transports: UDP sockets, and TCP and TLS connections (Content-Length framing, reuse,
//! idle close).
//! Tasks here only move bytes and frame messages; every decision is made by the core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use warden_media::sys::Datagrams;

use super::framing::{Frame, Framer};
use super::message::{Limits, Message};
use super::tls::{TlsContext, server_name};

/// Which transport a message travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    pub fn parse(name: &str) -> Option<Transport> {
        match name.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }

    /// The port a URI without one means (RFC 3261 19.1.2).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5061,
            _ => 5060,
        }
    }
}

/// Identifies one TCP or TLS connection for reuse (responses, in-dialog requests).
pub type ConnId = u64;

/// Where a message goes, or where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The TCP or TLS connection to prefer, when one exists.
    pub conn: Option<ConnId>,
}

/// What transport tasks tell the core.
#[derive(Debug)]
pub enum Inbound {
    Message(Box<Message>, Destination),
    /// Bytes that do not parse as a SIP message, and why: answered 400 when they can be,
    /// else counted and logged.
    Garbage(Destination, Bytes, String),
    ConnOpened(ConnId, SocketAddr, mpsc::Sender<Bytes>),
    ConnClosed(ConnId),
    /// A UDP datagram for a sharded server's lane to parse (`Inbound::parse`).
    Datagram(Bytes, Destination, Limits),
}

impl Inbound {
    /// A datagram parsed into the message it holds, or into garbage with the reason; any
    /// other event as it is.
    pub fn parse(self) -> Inbound {
        match self {
            Inbound::Datagram(bytes, source, limits) => {
                match Message::parse_datagram(bytes.clone(), &limits) {
                    Ok(m) => Inbound::Message(Box::new(m), source),
                    Err(e) => Inbound::Garbage(source, bytes, e.0),
                }
            }
            other => other,
        }
    }
}

/// The Call-ID of a SIP message's header block, found without parsing the message (a
/// sharded server's receive task routes datagrams by it): the value of the first
/// `Call-ID` or compact `i` header, trimmed as the parser trims it.
pub fn call_id_in(message: &[u8]) -> Option<&[u8]> {
    let mut lines = message.split(|&b| b == b'\n');
    lines.next(); // the request or status line
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None; // the end of the headers
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let name = name.trim_ascii();
        if name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i") {
            return value.get(1..).map(<[u8]>::trim_ascii);
        }
    }
    None
}

/// Where the transport tasks hand what they receive: each message to the signalling shard
/// its Call-ID belongs to (`crate::shard`), news of a stream connection to every shard
/// (any of them may answer over it), bytes that do not parse to the shard of their source.
#[derive(Clone)]
pub struct Inbox {
    shards: Arc<[mpsc::Sender<Inbound>]>,
    /// Call-IDs that go to another shard than their hash says (a call handed over for an
    /// attended transfer), and how many there are (none, nearly always: no lock then).
    pins: crate::shard::Shared<HashMap<String, usize>>,
    pinned: Arc<AtomicU64>,
}

/// The first shard has stopped: the server is shutting down.
#[derive(Debug)]
pub struct Closed;

impl Inbox {
    /// An inbox for the shards listening on `shards`, in shard order.
    pub fn new(shards: Vec<mpsc::Sender<Inbound>>) -> Inbox {
        Inbox {
            shards: shards.into(),
            pins: Default::default(),
            pinned: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Bring the messages of `call_id` to shard `lane` from now on.
    pub fn pin(&self, call_id: String, lane: usize) {
        let mut pins = self.pins.lock();
        pins.insert(call_id, lane);
        self.pinned.store(pins.len() as u64, Ordering::Relaxed);
    }

    /// Route `call_id` by its hash again.
    pub fn unpin(&self, call_id: &str) {
        let mut pins = self.pins.lock();
        pins.remove(call_id);
        self.pinned.store(pins.len() as u64, Ordering::Relaxed);
    }

    /// The shard of the messages of `call_id`: its pin, else its hash.
    fn shard_of(&self, call_id: &[u8]) -> usize {
        if self.pinned.load(Ordering::Relaxed) > 0
            && let Ok(text) = std::str::from_utf8(call_id)
            && let Some(&lane) = self.pins.lock().get(text)
        {
            return lane;
        }
        crate::shard::of_call_id_bytes(call_id, self.shards.len())
    }

    /// Hand `event` on, waiting while its shard's queue is full.
    pub async fn send(&self, event: Inbound) -> Result<(), Closed> {
        let count = self.shards.len();
        let shard = match &event {
            Inbound::Message(m, _) if count > 1 => {
                self.shard_of(m.call_id().as_deref().unwrap_or_default().as_bytes())
            }
            Inbound::Datagram(bytes, from, _) => match call_id_in(bytes) {
                Some(call_id) => self.shard_of(call_id),
                // Not SIP enough to name its dialog: the shard of its source answers it.
                None => crate::shard::of_call_id(&from.addr.to_string(), count),
            },
            Inbound::Garbage(from, _, _) if count > 1 => {
                crate::shard::of_call_id(&from.addr.to_string(), count)
            }
            Inbound::ConnOpened(id, addr, tx) if count > 1 => {
                for lane in 0..count {
                    let opened = Inbound::ConnOpened(*id, *addr, tx.clone());
                    self.to_lane(lane, opened).await?;
                }
                return Ok(());
            }
            Inbound::ConnClosed(id) if count > 1 => {
                for lane in 0..count {
                    self.to_lane(lane, Inbound::ConnClosed(*id)).await?;
                }
                return Ok(());
            }
            _ => 0,
        };
        self.to_lane(shard, event).await
    }

    /// `event` to shard `lane`'s queue. The first shard's loop stopping is the server
    /// stopping; another's stopping alone (a panic) loses its messages, not everyone's,
    /// until the leader sees it gone and stops the server.
    async fn to_lane(&self, lane: usize, event: Inbound) -> Result<(), Closed> {
        match self.shards.get(lane) {
            Some(tx) => match tx.send(event).await {
                Ok(()) => Ok(()),
                Err(_) if lane == 0 => Err(Closed),
                Err(_) => Ok(()),
            },
            None => Err(Closed),
        }
    }
}

/// The sending side of every transport, owned by the core's driver.
pub struct Transmitter {
    /// Each UDP socket with whether it is IPv4, learned once at bind (not per packet).
    udp: Vec<(bool, Arc<AsyncFd<std::net::UdpSocket>>)>,
    /// Open stream connections (TCP and TLS), and which one reaches an address.
    tcp: HashMap<ConnId, (SocketAddr, mpsc::Sender<Bytes>)>,
    tcp_by_addr: HashMap<SocketAddr, ConnId>,
    inbound: Inbox,
    limits: Limits,
    idle: Duration,
    tls: TlsContext,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

impl Transmitter {
    /// A transmitter for another shard: the same sockets, and the stream connections it
    /// will hear of (`Inbound::ConnOpened` reaches every shard).
    pub fn sibling(&self) -> Transmitter {
        Transmitter {
            udp: self.udp.clone(),
            tcp: HashMap::new(),
            tcp_by_addr: HashMap::new(),
            inbound: self.inbound.clone(),
            limits: self.limits,
            idle: self.idle,
            tls: self.tls.clone(),
        }
    }

    fn inbox_shards(&self) -> usize {
        self.inbound.shards.len()
    }

    /// Where the transport hands what it receives (a lane pins Call-IDs there).
    pub fn inbox(&self) -> &Inbox {
        &self.inbound
    }

    pub fn on_opened(&mut self, id: ConnId, addr: SocketAddr, tx: mpsc::Sender<Bytes>) {
        self.tcp.insert(id, (addr, tx));
        self.tcp_by_addr.insert(addr, id);
    }

    pub fn on_closed(&mut self, id: ConnId) {
        if let Some((addr, _)) = self.tcp.remove(&id)
            && self.tcp_by_addr.get(&addr) == Some(&id)
        {
            self.tcp_by_addr.remove(&addr);
        }
    }

    /// Send without waiting: UDP straight to the socket, TCP and TLS through their
    /// connection's queue (opening one when none exists: TLS verifies the peer's certificate
    /// for its IP address). A full queue drops, as a lossy network would.
    pub fn send(&mut self, dest: &Destination, bytes: Bytes) {
        match dest.transport {
            Transport::Udp => {
                let socket = self
                    .udp
                    .iter()
                    .find(|(v4, _)| *v4 == dest.addr.is_ipv4())
                    .or_else(|| self.udp.first())
                    .map(|(_, s)| s);
                // The socket is non-blocking: a full send buffer fails at once.
                if let Some(socket) = socket
                    && let Err(e) = socket.get_ref().send_to(&bytes, dest.addr)
                {
                    tracing::debug!(to = %dest.addr, error = %e, "UDP send failed");
                }
            }
            Transport::Tcp | Transport::Tls => {
                let id = dest
                    .conn
                    .filter(|c| self.tcp.contains_key(c))
                    .or_else(|| self.tcp_by_addr.get(&dest.addr).copied());
                if let Some((_, tx)) = id.and_then(|id| self.tcp.get(&id)) {
                    if tx.try_send(bytes).is_err() {
                        tracing::warn!(to = %dest.addr, "TCP send queue full; message dropped");
                    }
                    return;
                }
                let (addr, transport) = (dest.addr, dest.transport);
                let (link, tx) = Link::open(addr, transport, &self.inbound, self.limits, self.idle);
                let id = link.id;
                let _ = tx.try_send(bytes);
                let others = (self.inbox_shards() > 1).then(|| tx.clone());
                self.on_opened(id, addr, tx);
                let inbound = self.inbound.clone();
                let connector = (transport == Transport::Tls).then(|| self.tls.connector());
                tokio::spawn(async move {
                    // Every shard may send on it: the answers to this message may come to
                    // another shard than the one that opened it (a REGISTER's, say).
                    if let Some(tx) = others {
                        let _ = inbound.send(Inbound::ConnOpened(id, addr, tx)).await;
                    }
                    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
                        let stream = TcpStream::connect(addr).await?;
                        let _ = stream.set_nodelay(true);
                        match connector {
                            None => Ok::<_, std::io::Error>(Connected::Tcp(stream)),
                            Some(c) => c
                                .connect(server_name(None, addr.ip()), stream)
                                .await
                                .map(|s| Connected::Tls(Box::new(s))),
                        }
                    })
                    .await;
                    match connected {
                        Ok(Ok(Connected::Tcp(stream))) => run_connection(link, stream).await,
                        Ok(Ok(Connected::Tls(stream))) => run_connection(link, *stream).await,
                        Ok(Err(e)) => {
                            tracing::warn!(to = %addr, transport = transport.as_str(), error = %e, "connect failed");
                            let _ = inbound.send(Inbound::ConnClosed(id)).await;
                        }
                        Err(_) => {
                            tracing::warn!(to = %addr, transport = transport.as_str(), "connect timed out");
                            let _ = inbound.send(Inbound::ConnClosed(id)).await;
                        }
                    }
                });
            }
        }
    }
}

/// How long a TCP connect plus a TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An outbound stream once connected.
enum Connected {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// One stream connection's identity and plumbing.
struct Link {
    id: ConnId,
    addr: SocketAddr,
    transport: Transport,
    outgoing: mpsc::Receiver<Bytes>,
    inbound: Inbox,
    limits: Limits,
    idle: Duration,
}

impl Link {
    /// A new connection's link, numbered, and the sender the core queues its messages on.
    fn open(
        addr: SocketAddr,
        transport: Transport,
        inbound: &Inbox,
        limits: Limits,
        idle: Duration,
    ) -> (Link, mpsc::Sender<Bytes>) {
        let (tx, outgoing) = mpsc::channel(256);
        let link = Link {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            addr,
            transport,
            outgoing,
            inbound: inbound.clone(),
            limits,
            idle,
        };
        (link, tx)
    }
}

/// The listening sockets, bound (so a taken address fails at start) but not yet served:
/// the signalling thread serves them on its own runtime, where its loop runs, so a
/// received message reaches the loop without a wake-up across threads.
pub struct Listeners {
    udp: Vec<std::net::UdpSocket>,
    streams: Vec<(Transport, std::net::TcpListener)>,
    /// Every address bound, in the order configured.
    pub bound: Vec<(Transport, SocketAddr)>,
}

/// Bind every listening address (on the runtime at hand, for its socket options; the
/// sockets are then let go of until `Listeners::serve`).
pub async fn bind(
    listen: &[(Transport, SocketAddr)],
    udp_receive_buffer: usize,
) -> std::io::Result<Listeners> {
    let mut listeners = Listeners {
        udp: Vec::new(),
        streams: Vec::new(),
        bound: Vec::new(),
    };
    for &(transport, addr) in listen {
        match transport {
            Transport::Udp => {
                let socket = UdpSocket::bind(addr).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}"))
                })?;
                let local = socket.local_addr()?;
                let got = grow_receive_buffer(&socket, udp_receive_buffer);
                if got < udp_receive_buffer {
                    tracing::warn!(%local, asked = udp_receive_buffer, got, "SIP UDP receive buffer smaller than sip.udp_receive_buffer_bytes: raise net.core.rmem_max");
                }
                listeners.bound.push((Transport::Udp, local));
                listeners.udp.push(socket.into_std()?);
            }
            Transport::Tcp | Transport::Tls => {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot bind {} {addr}: {e}", transport.as_str()),
                    )
                })?;
                listeners.bound.push((transport, listener.local_addr()?));
                listeners.streams.push((transport, listener.into_std()?));
            }
        }
    }
    Ok(listeners)
}

/// Ask for a receive buffer of `bytes` (past `net.core.rmem_max` when the process may:
/// SO_RCVBUFFORCE); what the kernel granted, in the same terms (it reports double what
/// is set, the half it keeps for bookkeeping).
fn grow_receive_buffer(socket: &UdpSocket, bytes: usize) -> usize {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: setsockopt reads one c_int from a live local for the length given.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&raw const want).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) != 0 {
        set(libc::SO_RCVBUF);
    }
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live c_int and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw mut got).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return 0;
    }
    usize::try_from(got).unwrap_or(0) / 2
}

impl Listeners {
    /// Start the receive and accept tasks on the current runtime; `tls:` listeners present
    /// the certificate `tls` holds.
    pub fn serve(
        self,
        limits: Limits,
        idle: Duration,
        tls: TlsContext,
        inbound: Inbox,
    ) -> std::io::Result<Transmitter> {
        let mut udp = Vec::new();
        for socket in self.udp {
            socket.set_nonblocking(true)?;
            let v4 = socket.local_addr()?.is_ipv4();
            // SAFETY: the std socket owns its descriptor and moves into the AsyncFd, which
            // lends it out only by reference (for sends), never closes or replaces it: the
            // descriptor stays open, and the same, for the AsyncFd's life.
            let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
            let socket = Arc::new(socket);
            udp.push((v4, socket.clone()));
            tokio::spawn(udp_receive(socket, limits, inbound.clone()));
        }
        for (transport, listener) in self.streams {
            let listener = TcpListener::from_std(listener)?;
            let tls = (transport == Transport::Tls).then(|| tls.clone());
            tokio::spawn(stream_accept(listener, tls, limits, idle, inbound.clone()));
        }
        Ok(Transmitter {
            udp,
            tcp: HashMap::new(),
            tcp_by_addr: HashMap::new(),
            inbound,
            limits,
            idle,
            tls,
        })
    }
}

/// Receive datagrams a batch at a time: a batch that does not fill up shows the socket
/// drained, so its readiness is cleared without a read spent on learning that.
async fn udp_receive(socket: Arc<AsyncFd<std::net::UdpSocket>>, limits: Limits, inbound: Inbox) {
    use std::os::fd::AsRawFd;
    let mut datagrams = Datagrams::default();
    loop {
        let mut ready = match socket.readable().await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!(error = %e, "SIP UDP socket cannot be polled; no more UDP is received");
                return;
            }
        };
        let count = match datagrams.recv(ready.get_inner().as_raw_fd()) {
            Ok(count) => count,
            Err(e) => {
                // ICMP port-unreachable surfaces here on some systems; it is not fatal.
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        if count < Datagrams::COUNT {
            ready.clear_ready();
        }
        drop(ready);
        for i in 0..count {
            let Some((data, from)) = datagrams.get(i) else {
                continue;
            };
            if data.iter().all(|b| matches!(b, b'\r' | b'\n' | b' ' | 0)) {
                continue; // RFC 5626 keep-alive or padding
            }
            let source = Destination {
                transport: Transport::Udp,
                addr: from,
                conn: None,
            };
            let bytes = Bytes::copy_from_slice(data);
            // Sharded, each lane parses its own datagrams: this task only finds where they go.
            let event = match inbound.shards.len() {
                1 => match Message::parse_datagram(bytes.clone(), &limits) {
                    Ok(m) => Inbound::Message(Box::new(m), source),
                    Err(e) => Inbound::Garbage(source, bytes, e.0),
                },
                _ => Inbound::Datagram(bytes, source, limits),
            };
            if inbound.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// Accept TCP connections (and do the TLS handshake on a `tls:` listener, each on its own
/// task so a slow client holds up no other).
async fn stream_accept(
    listener: TcpListener,
    tls: Option<TlsContext>,
    limits: Limits,
    idle: Duration,
    inbound: Inbox,
) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let transport = if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        let (link, tx) = Link::open(addr, transport, &inbound, limits, idle);
        let id = link.id;
        let Some(tls) = &tls else {
            if inbound
                .send(Inbound::ConnOpened(id, addr, tx))
                .await
                .is_err()
            {
                return;
            }
            tokio::spawn(run_connection(link, stream));
            continue;
        };
        let Some(acceptor) = tls.acceptor() else {
            tracing::warn!(peer = %addr, "TLS connection refused: no certificate loaded");
            continue;
        };
        let inbound = inbound.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    if inbound
                        .send(Inbound::ConnOpened(id, addr, tx))
                        .await
                        .is_ok()
                    {
                        run_connection(link, stream).await;
                    }
                }
                Ok(Err(e)) => tracing::info!(peer = %addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::info!(peer = %addr, "TLS handshake timed out"),
            }
        });
    }
}

/// Frame messages off a stream connection and write what the core sends on it, until
/// either side closes or it stays idle `link.idle`.
async fn run_connection<S>(link: Link, stream: S)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let Link {
        id,
        addr,
        transport,
        mut outgoing,
        inbound,
        limits,
        idle,
    } = link;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut framer = Framer::new(limits);
    let mut buf = vec![0u8; 16 * 1024];
    let source = Destination {
        transport,
        addr,
        conn: Some(id),
    };
    loop {
        tokio::select! {
            read = tokio::time::timeout(idle, reader.read(&mut buf)) => {
                let n = match read {
                    Err(_) => { tracing::debug!(peer = %addr, transport = transport.as_str(), "closing idle connection"); break; }
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => n,
                };
                let pushed = framer.push(buf.get(..n).unwrap_or_default());
                // RFC 5626 4.4.1: a CRLFCRLF ping (two CRLF pairs) is answered with a CRLF pong,
                // which keeps NAT bindings and this connection alive for registered phones.
                let pongs = framer.take_keepalives() / 2;
                if pongs > 0 && writer.write_all(&b"\r\n".repeat(pongs)).await.is_err() {
                    break;
                }
                match pushed {
                    Ok(frames) => {
                        for frame in frames {
                            let event = match frame {
                                Frame::Message(m) => Inbound::Message(m, source.clone()),
                                Frame::Bad(bytes, why) => Inbound::Garbage(source.clone(), bytes, why),
                            };
                            if inbound.send(event).await.is_err() { return; }
                        }
                    }
                    Err(e) => {
                        // Framing is lost on a stream: report and close (RFC 3261 18.3).
                        let _ = inbound.send(Inbound::Garbage(source.clone(), Bytes::new(), e.0)).await;
                        break;
                    }
                }
            }
            out = outgoing.recv() => {
                match out {
                    Some(bytes) => if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() { break; },
                    None => break,
                }
            }
        }
    }
    let _ = inbound.send(Inbound::ConnClosed(id)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(n: usize) -> String {
        format!(
            "OPTIONS sip:warden@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{n}\r\n\
             From: <sip:t@127.0.0.1>;tag={n}\r\nTo: <sip:warden@127.0.0.1>\r\nCall-ID: burst-{n}\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    }

    #[tokio::test]
    async fn a_burst_bigger_than_a_batch_is_received_whole_and_keep_alives_are_not() {
        let listen = [(Transport::Udp, "127.0.0.1:0".parse().expect("addr"))];
        let listeners = bind(&listen, 1 << 20).await.expect("bind");
        let addr = listeners.bound[0].1;
        let tls = TlsContext::load(&Default::default()).expect("tls");
        let (tx, mut rx) = mpsc::channel(64);
        let _transmitter = listeners
            .serve(
                Limits::default(),
                Duration::from_secs(60),
                tls,
                Inbox::new(vec![tx]),
            )
            .expect("serve");
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("peer");
        // Sent before the receiver runs: 21 datagrams wait together, more than one read.
        let sent = Datagrams::COUNT * 2 + 5;
        for n in 0..sent {
            peer.send_to(options(n).as_bytes(), addr).expect("send");
            peer.send_to(b"\r\n\r\n", addr).expect("keep-alive");
        }
        for n in 0..sent {
            let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("every message arrives")
                .expect("open");
            let Inbound::Message(message, from) = event else {
                panic!("a message, not garbage");
            };
            assert_eq!(
                message.call_id().as_deref(),
                Some(format!("burst-{n}").as_str())
            );
            assert_eq!(from.addr, peer.local_addr().expect("addr"));
        }
        // A message after the burst: readiness was not lost when a read came back full.
        peer.send_to(options(99).as_bytes(), addr).expect("send");
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("arrives")
            .expect("open");
        assert!(
            matches!(event, Inbound::Message(m, _) if m.call_id().as_deref() == Some("burst-99"))
        );
    }

    #[test]
    fn the_call_id_a_datagram_is_routed_by_is_the_one_its_parse_finds() {
        let cases = [
            ("Call-ID: abc@host\r\n", Some("abc@host")),
            ("i:   compact-1 \r\n", Some("compact-1")),
            ("CALL-id :x\r\n", Some("x")),
            ("", None),
        ];
        for (line, expected) in cases {
            let text = format!(
                "OPTIONS sip:w@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK1\r\n\
                 From: <sip:a@x>;tag=1\r\nTo: <sip:w@x>\r\n{line}CSeq: 1 OPTIONS\r\n\
                 Content-Length: 9\r\n\r\nCall-ID:b"
            );
            let found =
                call_id_in(text.as_bytes()).map(|c| String::from_utf8_lossy(c).into_owned());
            assert_eq!(found.as_deref(), expected, "{line:?}");
            if expected.is_some() {
                let parsed = Message::parse_datagram(Bytes::from(text), &Limits::default());
                assert_eq!(parsed.ok().and_then(|m| m.call_id()).as_deref(), expected);
            }
        }
    }

    fn datagram(call_id: &str) -> Inbound {
        let text = format!(
            "OPTIONS sip:w@127.0.0.1 SIP/2.0\r\nCall-ID: {call_id}\r\nContent-Length: 0\r\n\r\n"
        );
        let from = Destination {
            transport: Transport::Udp,
            addr: "127.0.0.1:9".parse().expect("an address"),
            conn: None,
        };
        Inbound::Datagram(Bytes::from(text), from, Limits::default())
    }

    #[tokio::test]
    async fn the_inbox_routes_by_call_id_follows_pins_and_tells_every_lane_of_connections() {
        let (mut txs, mut rxs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (tx, rx) = mpsc::channel(16);
            txs.push(tx);
            rxs.push(rx);
        }
        let inbox = Inbox::new(txs);
        let call_id = "route-me@test";
        let home = crate::shard::of_call_id(call_id, 3);
        let elsewhere = (home + 1) % 3;
        let lane_of = |rxs: &mut Vec<mpsc::Receiver<Inbound>>| {
            (0..3)
                .filter(|&k| rxs[k].try_recv().is_ok())
                .collect::<Vec<_>>()
        };
        inbox.send(datagram(call_id)).await.expect("sent");
        assert_eq!(lane_of(&mut rxs), vec![home]);
        inbox.pin(call_id.to_owned(), elsewhere);
        inbox.send(datagram(call_id)).await.expect("sent");
        assert_eq!(lane_of(&mut rxs), vec![elsewhere], "pinned");
        inbox.unpin(call_id);
        inbox.send(datagram(call_id)).await.expect("sent");
        assert_eq!(lane_of(&mut rxs), vec![home], "by its hash again");

        // A stopped follower loses its own messages; the others still hear of connections.
        let follower = if home == 0 { 1 } else { home };
        let gone = rxs.remove(follower);
        drop(gone);
        let (conn_tx, _conn_rx) = mpsc::channel(1);
        let opened = Inbound::ConnOpened(7, "127.0.0.1:5060".parse().expect("addr"), conn_tx);
        inbox.send(opened).await.expect("the others are told");
        assert!(rxs.iter_mut().all(|rx| rx.try_recv().is_ok()));
        // The first lane stopped is the server stopping.
        drop(rxs);
        assert!(inbox.send(Inbound::ConnClosed(7)).await.is_err());
    }
}

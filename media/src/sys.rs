//! Thin wrappers over the Linux calls the relay's hot path makes (epoll, eventfd, recvmmsg,
//! sendmmsg, connect), and SIP over UDP's batched receive. Each `unsafe` block says why it
//! is sound; only the buffers' construction allocates.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Packets moved per recvmmsg/sendmmsg call.
pub const BATCH: usize = 32;
/// Room per packet: an Ethernet MTU of RTP (video fills it) plus slack; bigger datagrams are
/// truncated by the kernel and dropped by us.
pub const PACKET_ROOM: usize = 2048;

/// A socket address in the kernel's layout, converted once and reused for every send.
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    pub fn new(addr: SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
                size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }
}

/// Read a kernel-filled address back; `None` for families other than IPv4/IPv6.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is aligned
            // for it and large enough.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Packet buffers and the message headers that point into them. One per worker thread,
/// reused for every batch: received packets are sent on from the same memory (no copy).
pub struct Batch {
    bufs: Box<[[u8; PACKET_ROOM]; BATCH]>,
    names: [libc::sockaddr_storage; BATCH],
    iovs: [libc::iovec; BATCH],
    hdrs: [libc::mmsghdr; BATCH],
    out_iovs: [libc::iovec; BATCH],
    out_hdrs: [libc::mmsghdr; BATCH],
}

impl Batch {
    pub fn new() -> Box<Batch> {
        Box::new(Batch {
            bufs: Box::new([[0; PACKET_ROOM]; BATCH]),
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all
            // zero bytes (null pointers, zero lengths) is a valid value.
            names: unsafe { zeroed() },
            iovs: unsafe { zeroed() },
            hdrs: unsafe { zeroed() },
            out_iovs: unsafe { zeroed() },
            out_hdrs: unsafe { zeroed() },
        })
    }

    /// Receive up to BATCH datagrams without blocking; `Ok(0)` when none is waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // The pointers are rebuilt on every call (a few dozen stores, nothing next to the
        // syscall) so they can never dangle, whatever moved since the last call.
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: PACKET_ROOM,
            };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&raw mut self.names[i]).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &raw mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at a live buffer, name and iovec owned by `self`,
        // which outlives the call; the count matches the array length.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        match check(rc) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Datagram `i` of the last receive; a truncated one (bigger than our room) is empty.
    pub fn packet(&self, i: usize) -> &[u8] {
        if self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return &[];
        }
        let len = (self.hdrs[i].msg_len as usize).min(PACKET_ROOM);
        &self.bufs[i][..len]
    }

    /// Datagram `i` of the last receive, to be modified before it is sent on.
    pub fn packet_mut(&mut self, i: usize) -> &mut [u8] {
        if self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return &mut [];
        }
        let len = (self.hdrs[i].msg_len as usize).min(PACKET_ROOM);
        &mut self.bufs[i][..len]
    }

    /// Put `bytes` in place of datagram `i` (SRTP made it shorter or longer); false when
    /// they do not fit its buffer.
    pub fn replace(&mut self, i: usize, bytes: &[u8]) -> bool {
        if bytes.len() > PACKET_ROOM {
            return false;
        }
        self.bufs[i][..bytes.len()].copy_from_slice(bytes);
        self.hdrs[i].msg_len = bytes.len() as libc::c_uint;
        self.hdrs[i].msg_hdr.msg_flags &= !libc::MSG_TRUNC;
        true
    }

    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        socket_addr(&self.names[i])
    }

    /// Send the received datagrams whose bit is set in `keep` out of `fd`, to `to` (or to
    /// the address the socket is connected to). Returns how many the kernel took.
    pub fn send(&mut self, fd: RawFd, keep: u64, to: Option<&RawAddr>) -> usize {
        let mut count = 0;
        for i in 0..BATCH {
            if keep & (1 << i) == 0 {
                continue;
            }
            let len = (self.hdrs[i].msg_len as usize).min(PACKET_ROOM);
            self.out_iovs[count] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: len,
            };
            let hdr = &mut self.out_hdrs[count].msg_hdr;
            match to {
                Some(addr) => {
                    hdr.msg_name = (&raw const addr.storage).cast_mut().cast();
                    hdr.msg_namelen = addr.len;
                }
                None => {
                    hdr.msg_name = std::ptr::null_mut();
                    hdr.msg_namelen = 0;
                }
            }
            hdr.msg_iov = &raw mut self.out_iovs[count];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            count += 1;
        }
        let mut sent = 0;
        while sent < count {
            // SAFETY: headers [sent, count) point at buffers in `self` and at `to`, both
            // alive for the call; the kernel only reads the name.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.out_hdrs[sent..].as_mut_ptr(),
                    (count - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc <= 0 {
                // Full socket buffer or an ICMP error queued on the socket: drop the rest
                // (real-time media is never worth queueing).
                break;
            }
            sent += rc as usize;
        }
        sent
    }
}

/// Send one datagram out of `fd`, to `to` or to the connected peer (transcoded packets,
/// which are made one at a time).
pub fn send_one(fd: RawFd, bytes: &[u8], to: Option<&RawAddr>) -> bool {
    let (name, len) = match to {
        Some(addr) => ((&raw const addr.storage).cast::<libc::sockaddr>(), addr.len),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `bytes` and `to` are valid for the call; a null name with length 0 is the
    // documented form for a connected socket.
    let rc = unsafe {
        libc::sendto(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT,
            name,
            len,
        )
    };
    rc >= 0
}

/// Send up to BATCH datagrams, each to its own address, in one call (load generators and
/// tests; the relay itself sends a batch to one peer with `Batch::send`).
pub fn send_each(fd: RawFd, packets: &[(&[u8], RawAddr)]) -> usize {
    let count = packets.len().min(BATCH);
    // SAFETY: iovec and mmsghdr are plain C structs; all-zero is valid.
    let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    for (i, (bytes, to)) in packets.iter().take(count).enumerate() {
        iovs[i] = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        hdrs[i].msg_hdr.msg_name = (&raw const to.storage).cast_mut().cast();
        hdrs[i].msg_hdr.msg_namelen = to.len;
        hdrs[i].msg_hdr.msg_iov = &raw mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the headers point at `packets` (borrowed for the call) and at `iovs`, all
    // alive until sendmmsg returns; the kernel only reads through these pointers.
    let rc = unsafe {
        libc::sendmmsg(
            fd,
            hdrs.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(rc).unwrap_or(0)
}

/// Datagrams as big as UDP carries, a few per call: the receive side of a signalling
/// socket (SIP over UDP), where a message may fill 64 KB and a read that takes fewer than
/// `Datagrams::COUNT` shows the socket drained, with no read spent to learn it.
pub struct Datagrams {
    bufs: Box<[u8]>,
    names: Box<[libc::sockaddr_storage]>,
    lens: [usize; Datagrams::COUNT],
}

impl Default for Datagrams {
    fn default() -> Self {
        Datagrams {
            bufs: vec![0; Datagrams::ROOM * Datagrams::COUNT].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            names: (0..Datagrams::COUNT).map(|_| unsafe { zeroed() }).collect(),
            lens: [0; Datagrams::COUNT],
        }
    }
}

impl Datagrams {
    /// Datagrams per call.
    pub const COUNT: usize = 8;
    /// Room per datagram: the largest UDP payload, so nothing is ever cut short.
    pub const ROOM: usize = 65_536;

    /// Receive up to `COUNT` datagrams without blocking; `Ok(0)` when none is waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // The headers live on the stack for the call only, so `Datagrams` holds no pointer
        // into itself (it moves freely between an async task's polls).
        // SAFETY: iovec and mmsghdr are plain C structs; all-zero is valid.
        let mut iovs: [libc::iovec; Datagrams::COUNT] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; Datagrams::COUNT] = unsafe { zeroed() };
        let (bufs, names) = (
            self.bufs.chunks_exact_mut(Datagrams::ROOM),
            self.names.iter_mut(),
        );
        for (i, (buf, name)) in bufs.zip(names).enumerate() {
            iovs[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let hdr = &mut hdrs[i].msg_hdr;
            hdr.msg_name = std::ptr::from_mut(name).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &raw mut iovs[i];
            hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a buffer and a name owned by `self` and at an
        // iovec on this stack frame, all alive until recvmmsg returns; the count matches
        // the arrays.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                Datagrams::COUNT as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let n = match check(rc) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        for (len, hdr) in self.lens.iter_mut().zip(&hdrs).take(n) {
            *len = (hdr.msg_len as usize).min(Datagrams::ROOM);
        }
        Ok(n)
    }

    /// Datagram `i` of the last receive, and where it came from.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let len = *self.lens.get(i)?;
        let start = i * Datagrams::ROOM;
        let from = socket_addr(self.names.get(i)?)?;
        Some((self.bufs.get(start..start + len)?, from))
    }
}

/// An epoll instance (level-triggered: a socket with more than one batch waiting is simply
/// reported again, so no extra read is spent discovering EAGAIN).
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; on success we own the returned descriptor.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: the event struct is valid for the call; epoll copies it.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })
            .map(|_| ())
    }

    pub fn remove(&self, fd: RawFd) {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
        unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Wait for ready descriptors; returns how many entries of `events` were filled.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: the kernel writes at most `max` entries into `events`, which we own.
        let rc =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        usize::try_from(rc).unwrap_or(0)
    }
}

/// A counter descriptor the control side writes to wake a worker out of `epoll_wait`.
/// Only the first notification after a drain writes: the worker drains every command
/// queued by then, so the rest would only wake it again for nothing.
pub struct EventFd {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall; on success we own the returned descriptor.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: AtomicBool::new(false),
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wake the worker, unless a wake-up is pending already (queue the work first).
    pub fn notify(&self) {
        if self.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64, as eventfd(2) requires.
        unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Take the wake-up; call before draining the work. The counter is read before the
    /// flag is cleared: a notification in between finds the flag set and writes nothing,
    /// but its work is queued already and is drained next; one after it writes again.
    /// (Cleared first, a notification in between would write, be read here, and leave
    /// the flag set with no wake-up on its way: the worker would sleep through all later
    /// work.)
    pub fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64.
        unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut value).cast(), 8) };
        self.pending.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_addresses_round_trip() {
        for text in ["127.0.0.1:4000", "[::1]:5004", "[2001:db8::7]:65535"] {
            let addr: SocketAddr = text.parse().expect("address");
            let raw = RawAddr::new(addr);
            assert_eq!(socket_addr(&raw.storage), Some(addr));
        }
    }

    #[test]
    fn batch_moves_datagrams_between_sockets() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let c = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        for i in 0..3u8 {
            a.send_to(&[i; 12], b.local_addr().expect("addr"))
                .expect("send");
        }
        let mut batch = Batch::new();
        let n = batch.recv(b.as_raw_fd()).expect("recv");
        assert_eq!(n, 3);
        assert_eq!(batch.source(0), a.local_addr().ok());
        assert_eq!(batch.packet(2), &[2u8; 12]);
        let to = RawAddr::new(c.local_addr().expect("addr"));
        assert_eq!(batch.send(b.as_raw_fd(), 0b101, Some(&to)), 2);
        let mut buf = [0u8; 64];
        let (len, from) = c.recv_from(&mut buf).expect("recv");
        assert_eq!(
            (&buf[..len], from),
            (&[0u8; 12][..], b.local_addr().expect("addr"))
        );
        let (len, _) = c.recv_from(&mut buf).expect("recv");
        assert_eq!(&buf[..len], &[2u8; 12]);
        assert_eq!(batch.recv(b.as_raw_fd()).expect("recv"), 0);
    }

    #[test]
    fn a_worker_woken_by_the_event_fd_never_sleeps_through_queued_work() {
        // The control side queues and notifies as fast as it can while the worker waits,
        // drains the wake-up and takes the work: every item must arrive without the
        // worker ever waiting a whole second for a wake-up that was skipped.
        let wake = std::sync::Arc::new(EventFd::new().expect("eventfd"));
        let (tx, rx) = std::sync::mpsc::channel::<u32>();
        const ITEMS: u32 = 200_000;
        let producer = {
            let wake = wake.clone();
            std::thread::spawn(move || {
                for i in 0..ITEMS {
                    tx.send(i).expect("send");
                    wake.notify();
                    if i % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let mut received = 0;
        while received < ITEMS {
            let mut poll = libc::pollfd {
                fd: wake.raw(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd, as poll(2) requires.
            let ready = unsafe { libc::poll(&mut poll, 1, 1000) };
            assert_eq!(
                ready, 1,
                "no wake-up within 1 s with {received} of {ITEMS} taken"
            );
            wake.drain();
            while rx.try_recv().is_ok() {
                received += 1;
            }
        }
        producer.join().expect("producer");
    }
}

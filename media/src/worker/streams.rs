//! A worker's table of streams and ports: which stream (and which of its sockets) a
//! port's readiness is for, opening, moving and ending streams, and parked sockets.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use super::{NewStream, ROUNDS_PER_WAKE, Stream, Worker};
use crate::sys::Batch;

/// Where a port's readiness goes.
#[derive(Clone, Copy)]
pub(super) enum Route {
    /// Socket `index` of the stream in `slot`.
    Stream { slot: usize, index: usize },
    /// Parked between calls: what arrives is drained and dropped.
    Parked,
}

impl Worker {
    pub(super) fn stream_mut(&mut self, id: u64) -> Option<&mut Stream> {
        let slot = *self.by_id.get(&id)?;
        self.slots.get_mut(slot)?.as_deref_mut()
    }

    /// Open a stream on its ports: parked sockets as they are, new ones watched.
    pub(super) fn open(&mut self, new: NewStream) {
        let NewStream {
            id,
            ports,
            sockets,
            counters,
        } = new;
        let mut taken = Vec::with_capacity(4);
        for (port, socket) in ports.into_iter().zip(sockets) {
            let socket = match socket {
                Some(socket) => {
                    self.watch(&socket, port, id);
                    Some(socket)
                }
                None => self.parked.remove(&port),
            };
            match socket {
                Some(socket) => taken.push(socket),
                None => {
                    // The control side believed this port parked here: a bug, said loudly;
                    // the ports taken so far go back to being parked.
                    tracing::error!(
                        stream = id,
                        port,
                        "media port not parked on its worker; stream not opened"
                    );
                    for (port, socket) in ports.into_iter().zip(taken) {
                        self.parked.insert(port, socket);
                        self.routes.insert(port, Route::Parked);
                    }
                    return;
                }
            }
        }
        let Ok(sockets) = <[UdpSocket; 4]>::try_from(taken) else {
            return;
        };
        self.place(Box::new(Stream::new(id, sockets, ports, counters)));
    }

    /// A stream moved here from another worker, sockets and all.
    pub(super) fn adopt(&mut self, stream: Box<Stream>) {
        for (socket, port) in stream.sockets.iter().zip(stream.ports) {
            self.watch(socket, port, stream.id);
        }
        self.place(stream);
    }

    fn watch(&self, socket: &UdpSocket, port: u16, id: u64) {
        if let Err(e) = self.epoll.add(socket.as_raw_fd(), u64::from(port)) {
            tracing::error!(stream = id, port, error = %e, "cannot watch media socket");
        }
    }

    fn place(&mut self, stream: Box<Stream>) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        for (index, port) in stream.ports.into_iter().enumerate() {
            self.routes.insert(port, Route::Stream { slot, index });
        }
        self.by_id.insert(stream.id, slot);
        self.slots[slot] = Some(stream);
    }

    /// End stream `id`: its sockets stay bound and watched, parked for a later stream.
    pub(super) fn remove(&mut self, id: u64) {
        let Some(stream) = self.unplace(id) else {
            return;
        };
        let Stream {
            sockets,
            ports,
            tap,
            ..
        } = *stream;
        if let Some(tap) = tap {
            tap.end(&mut self.record_out);
        }
        for (port, socket) in ports.into_iter().zip(sockets) {
            self.parked.insert(port, socket);
            self.routes.insert(port, Route::Parked);
        }
    }

    /// A parked pair's sockets, no longer watched here.
    pub(super) fn lend(&mut self, rtp: u16) -> Option<[UdpSocket; 2]> {
        let mut pair = [rtp, rtp.wrapping_add(1)].map(|port| {
            let socket = self.parked.remove(&port)?;
            self.epoll.remove(socket.as_raw_fd());
            self.routes.remove(&port);
            Some(socket)
        });
        match (pair[0].take(), pair[1].take()) {
            (Some(rtp), Some(rtcp)) => Some([rtp, rtcp]),
            _ => None,
        }
    }

    /// Stop serving stream `id` and hand it over (out of its room, its prompts and key
    /// presses of ours dropped); its sockets are no longer watched here.
    pub(super) fn take(&mut self, id: u64) -> Option<Box<Stream>> {
        let stream = self.unplace(id)?;
        for (socket, port) in stream.sockets.iter().zip(stream.ports) {
            self.epoll.remove(socket.as_raw_fd());
            self.routes.remove(&port);
        }
        Some(stream)
    }

    /// Take stream `id` out of its slot (out of its room, its prompts and key presses of
    /// ours dropped).
    fn unplace(&mut self, id: u64) -> Option<Box<Stream>> {
        self.leave(id);
        let slot = self.by_id.remove(&id)?;
        let stream = self.slots.get_mut(slot).and_then(Option::take)?;
        self.players.retain(|p| p.stream != id);
        self.writers.retain(|w| w.stream != id);
        self.free.push(slot);
        Some(stream)
    }

    /// Late packets to a parked port (a call that ended, or a scanner): read and dropped
    /// so they cannot wait there for the port's next call.
    pub(super) fn drain_parked(&mut self, batch: &mut Batch, port: u16) {
        let Some(fd) = self.parked.get(&port).map(|s| s.as_raw_fd()) else {
            return;
        };
        for _ in 0..ROUNDS_PER_WAKE {
            match batch.recv(fd) {
                Ok(n) if n > 0 => {
                    self.unassigned.fetch_add(n as u64, Ordering::Relaxed);
                }
                _ => return,
            }
        }
    }
}

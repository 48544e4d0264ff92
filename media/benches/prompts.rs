//! Prompt playback capacity: N concurrent announcements played by one relay thread, each
//! a PCMA stream of 20 ms frames paced by the worker's clock. For each N it prints the
//! worker's CPU (kernel run time of that thread over the step), late packets (arriving over
//! one frame after their schedule at the receiver) and missing ones; and, in the same run,
//! a bare pacer (one thread sending the same frames from N sockets with `send`, no relay)
//! as the baseline for the CPU ratio.
//!
//! `cargo bench --bench prompts`; WARDEN_BENCH_STREAMS (default "250,500,1000,2000") and
//! WARDEN_BENCH_SECONDS (default 5).

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use warden_media::prompt::{self, Audio};
use warden_media::{Latching, Playback, Relay, RelayConfig, Remote, Side, codec};

const FRAME: Duration = Duration::from_millis(20);

fn main() {
    if common::only_listing_or_testing() {
        return;
    }
    let steps: Vec<usize> = common::steps("WARDEN_BENCH_STREAMS", "250,500,1000,2000");
    let seconds: u64 = common::setting("WARDEN_BENCH_SECONDS", 5);
    let pcma = codec::by_name("PCMA", 8000).expect("pcma");
    let audio = Audio {
        rate: 8000,
        samples: (0..8000 * 3)
            .map(|i| ((i % 40) * 400 - 8000) as i16)
            .collect(),
    };
    let encoded = Arc::new(prompt::encode(&audio, pcma, &Default::default()).expect("encodes"));
    println!("PCMA prompts, 20 ms frames, {seconds} s per step, one relay thread");
    println!(
        "{:>7} {:>12} {:>10} {:>9} {:>12} {:>9} {:>12} {:>7}",
        "streams", "packets", "missing", "late", "p99 late", "relay CPU", "bare CPU", "ratio"
    );
    for streams in steps {
        let relay = play(streams, seconds, &encoded);
        let bare = bare_pacer(streams, seconds, &encoded.frames[0]);
        println!(
            "{:>7} {:>12} {:>10} {:>9} {:>9.2} ms {:>8.1}% {:>11.1}% {:>7.2}",
            streams,
            relay.received,
            relay.expected.saturating_sub(relay.received),
            relay.late,
            relay.p99_late_ms,
            relay.cpu * 100.0,
            bare.cpu * 100.0,
            relay.cpu / bare.cpu.max(1e-9)
        );
    }
}

struct Step {
    expected: u64,
    received: u64,
    late: u64,
    p99_late_ms: f64,
    /// Share of one core.
    cpu: f64,
}

fn receiver() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // Room for a few hundred ms of every stream: the receiver must not be what drops.
    let size: libc::c_int = 64 << 20;
    // SAFETY: setsockopt reads `size` (a c_int, its length given) during the call only.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    socket
}

/// Packets received and each one's lateness in ms.
type Measured = (u64, Vec<f64>);

/// A receiver thread measuring until its flag is set: where to send, the flag, the thread.
fn listen() -> (
    SocketAddr,
    Arc<AtomicBool>,
    std::thread::JoinHandle<Measured>,
) {
    let socket = receiver();
    let target = socket.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    (
        target,
        stop,
        std::thread::spawn(move || measure(socket, flag)),
    )
}

/// Receive until `stop`; per source, lateness of each packet against its RTP timestamp.
fn measure(socket: UdpSocket, stop: Arc<AtomicBool>) -> Measured {
    let mut first: HashMap<SocketAddr, (Instant, u32)> = HashMap::new();
    let mut lateness = Vec::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if n < 12 {
            continue;
        }
        let now = Instant::now();
        let ts = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let (t0, ts0) = *first.entry(from).or_insert((now, ts));
        let due = t0 + Duration::from_micros(u64::from(ts.wrapping_sub(ts0)) * 125);
        lateness.push(now.saturating_duration_since(due).as_secs_f64() * 1e3);
    }
    (lateness.len() as u64, lateness)
}

fn summarize(expected: u64, (received, mut lateness): Measured, cpu: f64) -> Step {
    lateness.sort_by(f64::total_cmp);
    let p99 = lateness
        .get(lateness.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or(0.0);
    Step {
        expected,
        received,
        late: lateness.iter().filter(|l| **l > 20.0).count() as u64,
        p99_late_ms: p99,
        cpu,
    }
}

fn play(streams: usize, seconds: u64, encoded: &Arc<prompt::EncodedPrompt>) -> Step {
    let mut relay = Relay::start(&RelayConfig {
        address: "127.0.0.1".parse().expect("ip"),
        first_port: 40_000,
        last_port: 40_000 + 4 * streams as u16 + 8,
        workers: 1,
        latching: Latching::Strict,
        coalesce: Duration::from_micros(200),
        codecs: Default::default(),
    })
    .expect("relay");
    let (target, stop, listener) = listen();
    let ids: Vec<_> = (0..streams)
        .map(|_| {
            let id = relay.open().expect("stream");
            relay.set_remote(
                id,
                Side::A,
                Some(Remote {
                    rtp: target,
                    rtcp: target,
                    clock_rate: 8000,
                }),
            );
            id
        })
        .collect();
    relay.sync();
    let repeats = (seconds as u32 * 50).div_ceil(encoded.frames.len() as u32) + 1;
    let cpu_before = worker_cpu_ns();
    let started = Instant::now();
    for id in &ids {
        let how = Playback {
            payload_type: 8,
            repeat: repeats,
            stop_on_dtmf: false,
        };
        relay.play(*id, Side::A, encoded.clone(), how);
    }
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = started.elapsed();
    let cpu = (worker_cpu_ns() - cpu_before) as f64 / elapsed.as_nanos() as f64;
    for id in &ids {
        relay.stop_playing(*id, Side::A);
    }
    relay.sync();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let measured = listener.join().expect("receiver");
    for id in ids {
        relay.close(id);
    }
    let expected = streams as u64 * elapsed.as_millis() as u64 / 20;
    summarize(expected, measured, cpu)
}

/// CPU time of the relay's worker thread so far (the thread named warden-relay-0).
fn worker_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "warden-relay-0")
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The floor: one thread sending a frame from each of N sockets every 20 ms.
fn bare_pacer(streams: usize, seconds: u64, payload: &[u8]) -> Step {
    let (target, stop, listener) = listen();
    let senders: Vec<UdpSocket> = (0..streams)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.connect(target).expect("connect");
            s
        })
        .collect();
    let payload = payload.to_vec();
    let pacer = std::thread::spawn(move || {
        let start = Instant::now();
        let mut packet = vec![0x80, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        packet.extend_from_slice(&payload);
        let mut next = start;
        let mut frame: u32 = 0;
        let thread_cpu = || {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes the one timespec it is given.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
            t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
        };
        let cpu0 = thread_cpu();
        while start.elapsed() < Duration::from_secs(seconds) {
            packet[2..4].copy_from_slice(&(frame as u16).to_be_bytes());
            packet[4..8].copy_from_slice(&(frame * 160).to_be_bytes());
            for s in &senders {
                let _ = s.send(&packet);
            }
            frame += 1;
            next += FRAME;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        (thread_cpu() - cpu0) as f64 / start.elapsed().as_nanos() as f64
    });
    let cpu = pacer.join().expect("pacer");
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let measured = listener.join().expect("receiver");
    let expected = streams as u64 * seconds * 50;
    summarize(expected, measured, cpu)
}

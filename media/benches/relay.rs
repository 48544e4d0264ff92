//! RTP relay benchmark: N concurrent bidirectional G.711 calls (172-byte packets, 50 packets/s
//! each way per leg) through a relay on loopback, driven by a load generator in another process.
//!
//! Each relay runs as its own process pinned to CPU 0, the generator pinned to CPU 1. For
//! each load step it reports packets relayed, loss, the relay's CPU (from the kernel's
//! per-thread run time) and cost per packet, and the generator-to-generator latency through
//! the relay. Relays compared in the same run: a bare batched forwarder (the floor: same
//! syscalls, no relay logic), Warden's relay (one worker), Warden's relay recording every
//! call (stereo WAV, the recorder thread on the same CPU, files in WARDEN_BENCH_RECORD_DIR or
//! the temporary directory, deleted after each step; WARDEN_BENCH_RECORD_FORMAT=opus with
//! `--features opus` records Ogg Opus instead), and Debian's rtpengine in userspace
//! mode over its ng control protocol when installed.
//!
//! `cargo bench --bench relay`; WARDEN_BENCH_STEPS="25000,50000,100000" and
//! WARDEN_BENCH_SECONDS=5 change the load steps and measuring window; WARDEN_BENCH_RELAYS
//! ("forwarder,warden,recording,rtpengine") picks the relays measured.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use warden_media::sys::{BATCH, Batch, Epoll, RawAddr, send_each};
use warden_media::{Latching, Relay, RelayConfig, Remote, Side};

const LOOPBACK: [u8; 4] = [127, 0, 0, 1];
const PACKET_BYTES: usize = 172;
const PACKET_INTERVAL: Duration = Duration::from_millis(20);
const WARMUP: Duration = Duration::from_secs(1);

fn main() {
    match std::env::var("WARDEN_RELAY_ROLE").as_deref() {
        Ok("warden") => return serve(Role::Warden),
        Ok("recording") => return serve(Role::Recording),
        Ok("forwarder") => return serve(Role::Forwarder),
        Ok("generator") => return generate(),
        _ => {}
    }
    if common::only_listing_or_testing() {
        return;
    }
    orchestrate();
}

// ----- the relays under test (child processes) --------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Warden,
    /// Warden's relay with every stream recorded.
    Recording,
    Forwarder,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Warden => "warden",
            Role::Recording => "recording",
            Role::Forwarder => "forwarder",
        }
    }
}

/// Read "open N GA GB", open N streams relaying between GA and GB, answer with their ports,
/// then relay until stdin closes; "stats" on the way is answered with what was recorded.
fn serve(role: Role) {
    let mut line = String::new();
    let stdin = std::io::stdin();
    stdin.lock().read_line(&mut line).expect("command");
    let f: Vec<&str> = line.split_whitespace().collect();
    let (n, ga, gb): (usize, SocketAddr, SocketAddr) = (
        f[1].parse().expect("n"),
        f[2].parse().expect("ga"),
        f[3].parse().expect("gb"),
    );
    let mut ports = Vec::new();
    // The recordings' directory (the orchestrator's, which deletes it after the step).
    let records = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_default());
    let relay = match role {
        Role::Warden | Role::Recording => {
            let mut relay = Relay::start(&RelayConfig {
                address: IpAddr::from(LOOPBACK),
                first_port: 50_000,
                last_port: 59_999,
                workers: 1,
                latching: Latching::Strict,
                coalesce: std::time::Duration::from_micros(common::setting(
                    "WARDEN_BENCH_COALESCE_US",
                    200,
                )),
                codecs: Default::default(),
            })
            .expect("relay");
            for _ in 0..n {
                let id = relay.open().expect("stream");
                for (side, to) in [(Side::A, ga), (Side::B, gb)] {
                    let remote = Remote {
                        rtp: to,
                        rtcp: to,
                        clock_rate: 8000,
                    };
                    relay.set_remote(id, side, Some(remote));
                }
                if role == Role::Recording {
                    let pcmu = warden_media::LegCodec {
                        codec: warden_media::codec::by_name("PCMU", 8000).expect("PCMU"),
                        payload_type: 0,
                        params: Default::default(),
                        ptime: 20,
                        dtmf_payload_type: None,
                        cn_payload_type: None,
                    };
                    let spec = warden_media::record::RecordSpec {
                        path: records.join(format!("{}.wav", ports.len())),
                        layout: warden_media::record::Layout::Stereo,
                        format: record_format(),
                        sides: [Some(pcmu), Some(pcmu)],
                        meta: "{}".into(),
                    };
                    assert!(relay.record(id, spec), "recording started");
                }
                ports.push((
                    relay.port(id, Side::A).expect("a"),
                    relay.port(id, Side::B).expect("b"),
                ));
            }
            Some(relay)
        }
        Role::Forwarder => {
            let sockets: Vec<UdpSocket> = (0..2 * n)
                .map(|_| {
                    let s = UdpSocket::bind((IpAddr::from(LOOPBACK), 0)).expect("bind");
                    s.set_nonblocking(true).expect("nonblocking");
                    s
                })
                .collect();
            for pair in sockets.chunks(2) {
                let port = |s: &UdpSocket| s.local_addr().expect("addr").port();
                ports.push((port(&pair[0]), port(&pair[1])));
            }
            std::thread::spawn(move || forward(sockets, ga, gb));
            None
        }
    };
    let list: Vec<String> = ports.iter().map(|(a, b)| format!("{a},{b}")).collect();
    println!("ports {}", list.join(" "));
    std::io::stdout().flush().expect("flush");
    // Relay until the orchestrator closes our stdin.
    loop {
        line.clear();
        if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.trim() == "stats" {
            let bytes: u64 = std::fs::read_dir(&records)
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            let dropped = relay.as_ref().map_or(0, |r| r.recording_dropped());
            println!("recorded {bytes} {dropped}");
            std::io::stdout().flush().expect("flush");
        }
    }
}

/// The recording relay's format: WAV, or Ogg Opus with WARDEN_BENCH_RECORD_FORMAT=opus
/// (in a build with `--features opus`).
fn record_format() -> warden_media::record::Format {
    match std::env::var("WARDEN_BENCH_RECORD_FORMAT").as_deref() {
        Ok("opus") => warden_media::record::Format::OggOpus,
        _ => warden_media::record::Format::Wav,
    }
}

/// The floor: one thread, epoll, recvmmsg from a leg's socket and sendmmsg out of its
/// partner to a fixed address. No latching, no parsing, no statistics.
fn forward(sockets: Vec<UdpSocket>, ga: SocketAddr, gb: SocketAddr) {
    let epoll = Epoll::new().expect("epoll");
    for (i, s) in sockets.iter().enumerate() {
        epoll.add(s.as_raw_fd(), i as u64).expect("watch");
    }
    let (to_a, to_b) = (RawAddr::new(ga), RawAddr::new(gb));
    let mut batch = Batch::new();
    // SAFETY (of the zeroed array): epoll_event is a plain C struct.
    let mut events: [libc::epoll_event; 256] = unsafe { std::mem::zeroed() };
    loop {
        let n = epoll.wait(&mut events, -1);
        for event in &events[..n] {
            let i = event.u64 as usize;
            let got = batch.recv(sockets[i].as_raw_fd()).unwrap_or(0);
            if got == 0 {
                continue;
            }
            let keep = (1u64 << got) - 1;
            let to = if i.is_multiple_of(2) { &to_b } else { &to_a };
            batch.send(sockets[i ^ 1].as_raw_fd(), keep, Some(to));
        }
    }
}

// ----- the load generator (child process) -------------------------------------------------

/// Bind GA and GB, print them, read "go RATE SECONDS IP a,b ...", run the load and print
/// "mark" when the measuring window opens and "result ..." when it closes.
fn generate() {
    let bind = || {
        let s = UdpSocket::bind((IpAddr::from(LOOPBACK), 0)).expect("bind");
        s.set_nonblocking(true).expect("nonblocking");
        s
    };
    let (ga, gb) = (bind(), bind());
    println!(
        "sockets {} {}",
        ga.local_addr().expect("a"),
        gb.local_addr().expect("b")
    );
    std::io::stdout().flush().expect("flush");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("go");
    let f: Vec<&str> = line.split_whitespace().collect();
    let seconds: f64 = f[2].parse().expect("seconds");
    let ip: IpAddr = f[3].parse().expect("ip");
    // One flow per leg direction: GA -> relay A port, GB -> relay B port.
    let mut flows: Vec<(bool, RawAddr)> = Vec::new();
    for pair in &f[4..] {
        let (a, b) = pair.split_once(',').expect("pair");
        flows.push((
            false,
            RawAddr::new(SocketAddr::new(ip, a.parse().expect("a"))),
        ));
        flows.push((
            true,
            RawAddr::new(SocketAddr::new(ip, b.parse().expect("b"))),
        ));
    }
    let epoch = Instant::now();
    let window = (WARMUP, WARMUP + Duration::from_secs_f64(seconds));
    let mut seqs = vec![0u16; flows.len()];
    let (mut sent, mut received, mut marked, mut ended) = (0u64, 0u64, false, false);
    let mut latencies: Vec<u32> = Vec::with_capacity(8_000_000);
    let mut batch = Batch::new();
    let mut packets = [
        vec![[0u8; PACKET_BYTES]; BATCH],
        vec![[0u8; PACKET_BYTES]; BATCH],
    ];
    let mut queues: [Vec<(usize, RawAddr)>; 2] =
        [Vec::with_capacity(BATCH), Vec::with_capacity(BATCH)];
    let (mut round, mut cursor) = (0u64, 0usize);
    let phase = PACKET_INTERVAL.as_nanos() as u64 / flows.len().max(1) as u64;
    let due = |round: u64, k: usize| round * PACKET_INTERVAL.as_nanos() as u64 + k as u64 * phase;
    let end_sending = window.1.as_nanos() as u64;
    let drain_until = window.1 + Duration::from_millis(300);
    loop {
        let now = epoch.elapsed();
        if now >= drain_until {
            break;
        }
        if !marked && now >= window.0 {
            marked = true;
            println!("mark");
            std::io::stdout().flush().expect("flush");
        }
        if !ended && now >= window.1 {
            ended = true;
            println!("end");
            std::io::stdout().flush().expect("flush");
        }
        // Send what is due, batched per generator socket (GA for A legs, GB for B legs).
        let now_ns = now.as_nanos() as u64;
        queues[0].clear();
        queues[1].clear();
        while now_ns < end_sending
            && due(round, cursor) <= now_ns
            && queues.iter().all(|q| q.len() < BATCH)
        {
            let (from_b, to) = flows[cursor];
            queues[usize::from(from_b)].push((cursor, to));
            cursor += 1;
            if cursor == flows.len() {
                cursor = 0;
                round += 1;
            }
        }
        let stamp = epoch.elapsed().as_nanos() as u64;
        for (side, socket) in [&ga, &gb].into_iter().enumerate() {
            for (slot, (k, _)) in queues[side].iter().enumerate() {
                let p = &mut packets[side][slot];
                let seq = seqs[*k];
                seqs[*k] = seq.wrapping_add(1);
                p[0] = 0x80;
                p[2..4].copy_from_slice(&seq.to_be_bytes());
                p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                p[8..12].copy_from_slice(&(*k as u32).to_be_bytes());
                p[12..20].copy_from_slice(&stamp.to_le_bytes());
            }
            let outgoing: Vec<(&[u8], RawAddr)> = queues[side]
                .iter()
                .enumerate()
                .map(|(slot, (_, to))| (&packets[side][slot][..], *to))
                .collect();
            let n = send_each(socket.as_raw_fd(), &outgoing);
            if now >= window.0 {
                sent += n as u64;
            }
        }
        for socket in [&ga, &gb] {
            loop {
                let n = batch.recv(socket.as_raw_fd()).unwrap_or(0);
                let at = epoch.elapsed().as_nanos() as u64;
                for i in 0..n {
                    let p = batch.packet(i);
                    if p.len() < 20 {
                        continue;
                    }
                    let stamp = u64::from_le_bytes(p[12..20].try_into().expect("8 bytes"));
                    if stamp >= window.0.as_nanos() as u64 {
                        received += 1;
                        latencies.push(at.saturating_sub(stamp).min(u64::from(u32::MAX)) as u32);
                    }
                }
                if n < BATCH {
                    break;
                }
            }
        }
        let next = due(round, cursor).saturating_sub(epoch.elapsed().as_nanos() as u64);
        if next > 60_000 {
            std::thread::sleep(Duration::from_nanos(next.min(200_000)));
        }
    }
    latencies.sort_unstable();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "result {sent} {received} {} {} {}",
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
}

// ----- the orchestrator ------------------------------------------------------------------

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(cpu: u32, program: &str, args: &[&str], role: Option<&str>) -> Proc {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(cpu.to_string()).arg(program).args(args);
        if let Some(r) = role {
            cmd.env("WARDEN_RELAY_ROLE", r);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn (is taskset installed?)");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Proc {
            child,
            stdin,
            stdout,
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write");
        stdin.flush().expect("flush");
    }

    fn hear(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        line.trim().to_owned()
    }

    /// CPU time of all the process's threads so far, nanoseconds.
    fn cpu_ns(&self) -> u64 {
        let dir = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
                    .filter_map(|s| {
                        s.split_whitespace()
                            .next()
                            .and_then(|v| v.parse::<u64>().ok())
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Default)]
struct Step {
    sent: u64,
    relayed: u64,
    cpu_ns: u64,
    seconds: f64,
    p50: u32,
    p99: u32,
    p999: u32,
    /// For the recording relay: bytes on disk and audio chunks the recorder dropped.
    recorded: Option<(u64, u64)>,
}

impl Step {
    fn ns_per_packet(&self) -> f64 {
        self.cpu_ns as f64 / self.relayed.max(1) as f64
    }
}

/// The relay side of a run: how to set up N calls and which process to watch.
enum Subject {
    Child(Role),
    Rtpengine,
}

fn orchestrate() {
    let steps: Vec<u32> = common::steps("WARDEN_BENCH_STEPS", "25000,50000,100000");
    let seconds: f64 = common::setting("WARDEN_BENCH_SECONDS", 5.0);
    let exe = std::env::current_exe().expect("own path");
    let exe = exe.to_str().expect("utf-8 path");
    let have_rtpengine = Command::new("rtpengine").arg("--version").output().is_ok();
    let mut subjects = vec![
        ("forwarder", Subject::Child(Role::Forwarder)),
        ("warden", Subject::Child(Role::Warden)),
        ("recording", Subject::Child(Role::Recording)),
    ];
    if have_rtpengine {
        subjects.push(("rtpengine", Subject::Rtpengine));
    } else {
        println!(
            "rtpengine not installed (apt-get install rtpengine-daemon): compared with the forwarder only"
        );
    }
    // WARDEN_BENCH_RELAYS="warden" measures a subset (the ratios need the others).
    let only: Vec<String> = common::steps(
        "WARDEN_BENCH_RELAYS",
        "forwarder,warden,recording,rtpengine",
    );
    subjects.retain(|(name, _)| only.iter().any(|o| o == name));
    println!(
        "{} s per step, relay pinned to CPU 0, generator to CPU 1; latency is generator -> relay -> generator",
        seconds
    );
    println!(
        "{:<10} {:>9} {:>10} {:>7} {:>6} {:>8} {:>11} {:>7} {:>7} {:>7}",
        "relay",
        "load/s",
        "relayed/s",
        "loss%",
        "cpu%",
        "ns/pkt",
        "pkt/s/core",
        "p50us",
        "p99us",
        "p999us"
    );
    let mut results: Vec<(&str, u32, Step)> = Vec::new();
    for &rate in &steps {
        for (name, subject) in &subjects {
            let step = run_step(exe, subject, rate, seconds);
            let relayed_rate = step.relayed as f64 / step.seconds;
            let cpu = step.cpu_ns as f64 / (step.seconds * 1e9);
            println!(
                "{:<10} {:>9} {:>10.0} {:>7.3} {:>6.1} {:>8.0} {:>11.0} {:>7.0} {:>7.0} {:>7.0}",
                name,
                rate,
                relayed_rate,
                100.0 * (1.0 - step.relayed as f64 / step.sent.max(1) as f64),
                100.0 * cpu,
                step.ns_per_packet(),
                1e9 / step.ns_per_packet(),
                f64::from(step.p50) / 1e3,
                f64::from(step.p99) / 1e3,
                f64::from(step.p999) / 1e3
            );
            results.push((name, rate, step));
        }
    }
    println!("\nCPU per relayed packet, ratios in the same run (lower is better for warden):");
    for &rate in &steps {
        let cost = |who: &str| {
            results
                .iter()
                .find(|(n, r, _)| *n == who && *r == rate)
                .map(|(_, _, s)| s.ns_per_packet())
        };
        let (Some(w), Some(f)) = (cost("warden"), cost("forwarder")) else {
            continue;
        };
        let vs_rtpengine = cost("rtpengine")
            .map(|r| format!("{:.2}", w / r))
            .unwrap_or_else(|| "n/a".into());
        println!(
            "{rate:>7}/s  warden/forwarder {:.2}  warden/rtpengine {vs_rtpengine}",
            w / f
        );
    }
    println!(
        "\nRecording every call (stereo {:?} at 8 kHz), against the same relay not recording:",
        record_format()
    );
    for &rate in &steps {
        let step = |who: &str| {
            results
                .iter()
                .find(|(n, r, _)| *n == who && *r == rate)
                .map(|(_, _, s)| s)
        };
        let (Some(plain), Some(recorded)) = (step("warden"), step("recording")) else {
            continue;
        };
        let (bytes, dropped) = recorded.recorded.unwrap_or_default();
        let calls = f64::from((rate / 100).max(1));
        // A call relays 100 packets a second (50 each way).
        let per_core = 1e9 / (recorded.ns_per_packet() * 100.0);
        println!(
            "{rate:>7}/s  recording/warden {:.2} (goal at most 1.30)  recorded calls per core {per_core:.0}  \
             {:.0} kB per call on disk, {dropped} chunks dropped",
            recorded.ns_per_packet() / plain.ns_per_packet(),
            bytes as f64 / calls / 1000.0
        );
    }
}

fn run_step(exe: &str, subject: &Subject, rate: u32, seconds: f64) -> Step {
    let calls = (rate / 100).max(1) as usize;
    let records = std::env::var_os("WARDEN_BENCH_RECORD_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!(
            "warden-bench-recordings-{}-{rate}",
            std::process::id()
        ));
    std::fs::create_dir_all(&records).expect("a directory for the recordings");
    let mut generator = Proc::spawn(1, exe, &[], Some("generator"));
    let sockets = generator.hear();
    let g: Vec<&str> = sockets.split_whitespace().collect();
    let (ga, gb) = (g[1].to_owned(), g[2].to_owned());
    let (mut relay, ports) = match subject {
        Subject::Child(role) => {
            let mut relay = Proc::spawn(0, exe, &[&records.to_string_lossy()], Some(role.name()));
            relay.say(&format!("open {calls} {ga} {gb}"));
            let ports = relay.hear();
            let list = ports.strip_prefix("ports ").unwrap_or("").to_owned();
            (relay, list)
        }
        Subject::Rtpengine => rtpengine_calls(calls, &ga, &gb),
    };
    generator.say(&format!("go {rate} {seconds} 127.0.0.1 {ports}"));
    assert_eq!(generator.hear(), "mark", "generator started measuring");
    let cpu_start = relay.cpu_ns();
    let started = Instant::now();
    assert_eq!(generator.hear(), "end", "generator closed its window");
    // CPU over the sending window; the generator then drains late packets for 300 ms.
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = relay.cpu_ns().saturating_sub(cpu_start);
    let result = generator.hear();
    let r: Vec<u64> = result
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let [sent, relayed, p50, p99, p999] = r[..] else {
        panic!("generator said {result:?}");
    };
    let mut step = Step {
        sent,
        relayed,
        cpu_ns: cpu,
        seconds: elapsed,
        p50: p50 as u32,
        p99: p99 as u32,
        p999: p999 as u32,
        recorded: None,
    };
    if matches!(subject, Subject::Child(Role::Recording)) {
        relay.say("stats");
        let said = relay.hear();
        let v: Vec<u64> = said
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        if let [bytes, dropped] = v[..] {
            step.recorded = Some((bytes, dropped));
        }
    }
    drop(relay);
    let _ = std::fs::remove_dir_all(&records);
    step
}

// ----- rtpengine over the ng protocol ------------------------------------------------------

/// Start rtpengine (userspace only) on CPU 0 and set up `calls` calls between GA and GB with
/// ng offer/answer; returns the process and "a,b" port pairs where the generator sends.
fn rtpengine_calls(calls: usize, ga: &str, gb: &str) -> (Proc, String) {
    let ng_port = 22_000 + (std::process::id() % 1000) as u16;
    let ng = format!("127.0.0.1:{ng_port}");
    let args = [
        "--foreground".to_owned(),
        "--log-stderr".to_owned(),
        "--log-level=3".to_owned(),
        "--interface=127.0.0.1".to_owned(),
        format!("--listen-ng={ng}"),
        "--table=-1".to_owned(),
        "--port-min=30000".to_owned(),
        "--port-max=49999".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = Proc::spawn(0, "rtpengine", &args, None);
    let control = UdpSocket::bind("127.0.0.1:0").expect("bind");
    control
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let sdp = |addr: &str| {
        let a: SocketAddr = addr.parse().expect("addr");
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
            a.port()
        )
    };
    let mut pairs = Vec::with_capacity(calls);
    for i in 0..calls {
        let call_id = format!("bench-{i}");
        let offer = ng_request(&control, &ng, "offer", &call_id, &sdp(ga), None);
        let answer = ng_request(&control, &ng, "answer", &call_id, &sdp(gb), Some("to"));
        // The offer's rewrite is what B sees (B sends there); the answer's is A's.
        pairs.push(format!("{},{}", sdp_port(&answer), sdp_port(&offer)));
    }
    (relay, pairs.join(" "))
}

fn bencode(s: &str) -> String {
    format!("{}:{s}", s.len())
}

fn ng_request(
    control: &UdpSocket,
    ng: &str,
    command: &str,
    call_id: &str,
    sdp: &str,
    to_tag: Option<&str>,
) -> String {
    let mut dict = format!(
        "d{}{}{}{}{}{}{}{}",
        bencode("call-id"),
        bencode(call_id),
        bencode("command"),
        bencode(command),
        bencode("from-tag"),
        bencode("from"),
        bencode("sdp"),
        bencode(sdp)
    );
    if let Some(t) = to_tag {
        dict.push_str(&format!("{}{}", bencode("to-tag"), bencode(t)));
    }
    dict.push('e');
    let cookie = format!("{call_id}-{command}");
    let mut buf = [0u8; 65_536];
    for _ in 0..50 {
        // rtpengine may still be starting: retry until it answers.
        let _ = control.send_to(format!("{cookie} {dict}").as_bytes(), ng);
        if let Ok(n) = control.recv(&mut buf) {
            let reply = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Some(at) = reply.find("3:sdp") {
                let rest = &reply[at + 5..];
                let (len, body) = rest.split_once(':').expect("bencoded sdp");
                let len: usize = len.parse().expect("length");
                return body[..len].to_owned();
            }
            panic!("rtpengine refused {command}: {reply}");
        }
    }
    panic!("rtpengine did not answer on {ng}")
}

fn sdp_port(sdp: &str) -> u16 {
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio port in rtpengine's SDP")
}

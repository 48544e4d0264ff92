//! Call recording over sockets: two parties sending tones through the relay, the call
//! recorded through the API, the file uploaded to an HTTP receiver the test runs, decoded
//! with symphonia: the caller's tone on the left, the callee's on the right. A kill -9
//! while the upload waits, then a restart: the file still arrives.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Ua, Warden, closed_records, metric};
use warden_media::codec::{linear_to_ulaw, tone_power};

/// An upload as the receiver got it.
#[derive(Debug, Clone)]
struct Upload {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A tiny HTTP receiver: every request is kept; answered 200, or 503 while `refusing`.
struct Receiver {
    port: u16,
    uploads: Arc<Mutex<Vec<Upload>>>,
    refusing: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let uploads = Arc::new(Mutex::new(Vec::new()));
        let refusing = Arc::new(AtomicBool::new(false));
        let (kept, refuse) = (uploads.clone(), refusing.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let Some(upload) = read_request(&stream) else {
                    continue;
                };
                let mut stream = stream;
                let status = if refuse.load(Ordering::SeqCst) {
                    "503 Service Unavailable"
                } else {
                    kept.lock().expect("lock").push(upload);
                    "200 OK"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver {
            port,
            uploads,
            refusing,
        }
    }

    fn wait_for(&self, count: usize, limit: Duration) -> Vec<Upload> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.uploads.lock().expect("lock").clone();
            if got.len() >= count || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn read_request(stream: &std::net::TcpStream) -> Option<Upload> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(length) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        body.resize(length, 0);
        reader.read_exact(&mut body).ok()?;
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Some(Upload {
        path,
        headers,
        body,
    })
}

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 3 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
}

fn media_port(body: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(body);
    text.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("an m=audio port")
}

/// Alice's call to bob, answered, each with a media socket of its own.
struct TalkingCall {
    alice: Ua,
    bob: Ua,
    dialog: common::Dialog,
    media: [UdpSocket; 2],
    /// Warden's media ports for alice and for bob.
    warden: [u16; 2],
}

impl TalkingCall {
    fn answered(w: &Warden) -> TalkingCall {
        let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
        assert_eq!(bob.register(600).status(), 200);
        let media = [0, 1].map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"));
        let port = |s: &UdpSocket| s.local_addr().expect("addr").port();
        let invite = alice.invite_sdp("bob", &sdp(port(&media[0])));
        let to_bob = bob.recv_request("INVITE");
        let warden_b = media_port(to_bob.body());
        bob.answer_sdp(&to_bob, 200, Some(&sdp(port(&media[1]))));
        let ok = alice.final_response();
        assert_eq!(ok.status(), 200);
        let warden_a = media_port(ok.body());
        let mut dialog = alice.dialog_from(&invite, &ok);
        alice.in_dialog(&mut dialog, "ACK", None);
        let _ = bob.recv_request("ACK");
        TalkingCall {
            alice,
            bob,
            dialog,
            media,
            warden: [warden_a, warden_b],
        }
    }

    /// Record it through the API: its number and the recording's file.
    fn record(&mut self, w: &Warden) -> (u64, String) {
        let calls: serde_json::Value =
            serde_json::from_str(&common::get(&w.admin("/calls")).1).expect("JSON");
        let id = calls[0]["id"].as_u64().expect("a call");
        let started = reqwest::blocking::Client::new()
            .post(w.admin(&format!("/calls/{id}/record")))
            .json(&serde_json::json!({}))
            .send()
            .expect("record");
        assert_eq!(started.status().as_u16(), 200);
        let started: serde_json::Value = started.json().expect("JSON");
        assert_eq!(started["started"], true, "{started}");
        (
            id,
            started["recording"].as_str().expect("its file").to_owned(),
        )
    }

    /// Alice and bob hum their tones at once for `seconds`; then alice hangs up.
    fn talk(&mut self, alice_hz: f64, bob_hz: f64, seconds: f64) {
        let tones = [(0, alice_hz), (1, bob_hz)].map(|(k, hz)| {
            let socket = self.media[k].try_clone().expect("socket");
            send_tone(socket, self.warden[k], hz, seconds)
        });
        for t in tones {
            t.join().expect("sent");
        }
        common::hang_up(&mut self.alice, &mut self.dialog, &mut self.bob);
    }
}

/// Send `seconds` of a `freq` Hz tone as PCMU from `socket` to Warden's `port`.
fn send_tone(socket: UdpSocket, port: u16, freq: f64, seconds: f64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let ssrc: u32 = rand::random();
        let start = Instant::now();
        let packets = (seconds * 50.0) as u32;
        for n in 0..packets {
            let mut packet = vec![0x80, 0];
            packet.extend_from_slice(&(n as u16).to_be_bytes());
            packet.extend_from_slice(&(n * 160).to_be_bytes());
            packet.extend_from_slice(&ssrc.to_be_bytes());
            for i in 0..160 {
                let t = f64::from(n * 160 + i) / 8000.0;
                let s = (8000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16;
                packet.push(linear_to_ulaw(s));
            }
            let _ = socket.send_to(&packet, ("127.0.0.1", port));
            let next = start + Duration::from_millis(20 * u64::from(n + 1));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    })
}

impl Upload {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The call has ended and its recording waits in the spool while the receiver refuses it:
/// wait for a refused upload, kill Warden (SIGKILL), let the receiver accept, restart on
/// the same spool; the one upload that then arrives.
fn upload_across_a_kill(receiver: &Receiver, w: &mut Warden) -> Upload {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(w, "warden_recording_upload_failures_total", None).unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no upload was tried: {}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(receiver.uploads.lock().expect("lock").is_empty());
    w.stop(); // SIGKILL
    receiver.refusing.store(false, Ordering::SeqCst);
    w.restart(); // a new process on the same spool
    let uploads = receiver.wait_for(1, Duration::from_secs(15));
    assert_eq!(
        uploads.len(),
        1,
        "the recording arrived after the restart: {}",
        w.log()
    );
    uploads[0].clone()
}

/// The caller's tone (`left_hz`) dominates the left channel and the callee's (`right_hz`)
/// the right, each by at least `ratio` in power.
fn assert_sides(rate: u32, left: &[i16], right: &[i16], left_hz: f64, right_hz: f64, ratio: f64) {
    let (ll, lr) = (
        tone_power(left, rate, left_hz),
        tone_power(left, rate, right_hz),
    );
    let (rl, rr) = (
        tone_power(right, rate, left_hz),
        tone_power(right, rate, right_hz),
    );
    assert!(
        ll > ratio * lr,
        "the caller's {left_hz} Hz on the left: {ll} against {lr} of {right_hz} Hz"
    );
    assert!(
        rr > ratio * rl,
        "the callee's {right_hz} Hz on the right: {rr} against {rl} of {left_hz} Hz"
    );
}

/// Decode a WAV file's two channels with symphonia: (rate, left, right).
fn decode_stereo(bytes: Vec<u8>) -> (u32, Vec<i16>, Vec<i16>) {
    use symphonia::core::audio::SampleBuffer;
    use symphonia::core::io::MediaSourceStream;
    let source = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let mut hint = symphonia::core::probe::Hint::new();
    hint.with_extension("wav");
    let probed = symphonia::default::get_probe()
        .format(&hint, source, &Default::default(), &Default::default())
        .expect("a WAV file symphonia reads");
    let mut format = probed.format;
    let track = format.default_track().expect("a track").clone();
    let rate = track.codec_params.sample_rate.expect("a rate");
    assert_eq!(
        track.codec_params.channels.map(|c| c.count()),
        Some(2),
        "stereo"
    );
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &Default::default())
        .expect("a decoder");
    let (mut left, mut right) = (Vec::new(), Vec::new());
    while let Ok(packet) = format.next_packet() {
        let decoded = decoder.decode(&packet).expect("decodes");
        let mut samples = SampleBuffer::<i16>::new(decoded.capacity() as u64, *decoded.spec());
        samples.copy_interleaved_ref(decoded);
        for frame in samples.samples().chunks_exact(2) {
            left.push(frame[0]);
            right.push(frame[1]);
        }
    }
    (rate, left, right)
}

#[test]
fn a_recorded_call_is_uploaded_with_the_caller_left_and_the_callee_right_even_across_a_kill() {
    let receiver = Receiver::start();
    // Refused at first: the upload waits in the spool across a kill -9.
    receiver.refusing.store(true, Ordering::SeqCst);
    let mut w = Warden::start_with(&format!(
        "[recording]\nupload_url = \"http://127.0.0.1:{}/recordings/{{record}}.wav\"\nupload_method = \"put\"\nretry_max_s = 1\n",
        receiver.port
    ));
    let mut call = TalkingCall::answered(&w);
    let (id, file) = call.record(&w);

    // Alice hums 440 Hz, bob 1 kHz, for two seconds, both at once.
    call.talk(440.0, 1000.0, 2.0);
    let records = closed_records(&w, 1);
    assert_eq!(records[0]["recording"], file.as_str(), "{records:?}");

    let upload = upload_across_a_kill(&receiver, &mut w);
    let record = file.trim_end_matches(".wav");
    assert_eq!(upload.path, format!("/recordings/{record}.wav"));
    assert_eq!(upload.header("x-warden-record"), Some(record));
    assert_eq!(
        upload.header("x-warden-call"),
        Some(id.to_string().as_str())
    );
    let (rate, left, right) = decode_stereo(upload.body.clone());
    assert_eq!(rate, 8000);
    let seconds = left.len() as f64 / 8000.0;
    assert!((1.8..4.0).contains(&seconds), "{seconds} s recorded");
    assert_sides(rate, &left, &right, 440.0, 1000.0, 100.0);
    // Uploaded: it left the spool.
    let spool = w.dir.join("recordings");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(
            Instant::now() < deadline,
            "the spool kept the uploaded file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_recording_cut_short_by_a_kill_is_completed_and_uploaded_by_the_next_run() {
    let receiver = Receiver::start();
    let mut w = Warden::start_with(&format!(
        "[recording]\nupload_url = \"http://127.0.0.1:{}/up\"\n",
        receiver.port
    ));
    let (mut alice, mut bob) = (Ua::udp("alice", w.port), Ua::udp("bob", w.port));
    assert_eq!(bob.register(600).status(), 200);
    let alice_media = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let alice_port = alice_media.local_addr().expect("addr").port();
    let invite = alice.invite_sdp("bob", &sdp(alice_port));
    let to_bob = bob.recv_request("INVITE");
    bob.answer_sdp(&to_bob, 200, Some(&sdp(40_000)));
    let ok = alice.final_response();
    let warden_a = media_port(ok.body());
    let mut alice_dialog = alice.dialog_from(&invite, &ok);
    alice.in_dialog(&mut alice_dialog, "ACK", None);
    let calls: serde_json::Value =
        serde_json::from_str(&common::get(&w.admin("/calls")).1).expect("JSON");
    let id = calls[0]["id"].as_u64().expect("a call");
    let started = reqwest::blocking::Client::new()
        .post(w.admin(&format!("/calls/{id}/record")))
        .json(&serde_json::json!({ "layout": "mono" }))
        .send()
        .expect("record");
    assert_eq!(started.status().as_u16(), 200);
    send_tone(alice_media, warden_a, 440.0, 2.5)
        .join()
        .expect("sent");
    // Killed mid-call: the recording is a .part file with what reached the disk.
    w.stop();
    let spool = w.dir.join("recordings");
    let parts: Vec<_> = std::fs::read_dir(&spool)
        .expect("the spool")
        .flatten()
        .filter(|e| e.path().to_string_lossy().ends_with(".wav.part"))
        .collect();
    assert_eq!(parts.len(), 1, "one recording cut short");
    w.restart();
    let uploads = receiver.wait_for(1, Duration::from_secs(15));
    assert_eq!(uploads.len(), 1, "{}", w.log());
    let body = &uploads[0].body;
    let text = String::from_utf8_lossy(body);
    assert!(
        text.contains("name=\"record\""),
        "a form with the record id"
    );
    let wav = body
        .windows(4)
        .position(|w| w == b"RIFF")
        .expect("the file in the form");
    let header = &body[wav..wav + 44];
    let data = u32::from_le_bytes([header[40], header[41], header[42], header[43]]);
    assert_eq!(u16::from_le_bytes([header[22], header[23]]), 1, "mono");
    // At least the second flushed before the kill (of 2.5 s sent).
    assert!(data >= 16_000, "{data} bytes of audio recovered");
}

/// The first of `n` consecutive ports, each free for UDP and TCP on loopback, between
/// 10000 and 20000 (where neither Warden's media ports nor the kernel's ephemeral ones are).
fn free_block(n: u16) -> u16 {
    let start = 10_000 + (std::process::id() % 80) as u16 * 100;
    (0..80)
        .map(|k| 10_000 + (start - 10_000 + k * 120) % 9_600)
        .find(|&base| {
            (base..base + n).all(|p| {
                UdpSocket::bind(("127.0.0.1", p)).is_ok()
                    && TcpListener::bind(("127.0.0.1", p)).is_ok()
            })
        })
        .expect("a block of free ports")
}

/// A 10 s `freq` Hz tone, 16-bit mono WAV at `rate`: what a baresip phone plays.
fn write_tone(path: &std::path::Path, rate: u32, freq: f64) {
    let samples: Vec<i16> = (0..rate * 10)
        .map(|i| {
            (12_000.0 * (2.0 * std::f64::consts::PI * freq * f64::from(i) / f64::from(rate)).sin())
                as i16
        })
        .collect();
    let data = (samples.len() * 2) as u32;
    let mut wav = Vec::with_capacity(44 + data as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, wav).expect("tone file");
}

/// One baresip phone: registered to Warden as `name`, answering on its own, playing
/// `tone`, allowed only `codec`, with `mediaenc` (e.g. srtp-mand) when given.
struct Phone<'a> {
    name: &'a str,
    sip_port: u16,
    rtp_ports: &'a str,
    codec: &'a str,
    mediaenc: Option<&'a str>,
    tone: &'a std::path::Path,
}

/// The phone's baresip config folder in `dir`.
fn baresip_phone(dir: &std::path::Path, phone: Phone, warden_port: u16) -> std::path::PathBuf {
    let Phone {
        name,
        sip_port,
        rtp_ports,
        codec,
        mediaenc,
        tone,
    } = phone;
    let home = dir.join(name);
    std::fs::create_dir_all(&home).expect("phone dir");
    std::fs::write(
        home.join("config"),
        format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{sip_port}\nrtp_ports {rtp_ports}\n\
             module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule g722.so\n\
             module aufile.so\nmodule srtp.so\naudio_source aufile,{}\n\
             audio_player aufile,/dev/null\naudio_alert aufile,/dev/null\n\
             module_app account.so\nmodule_app menu.so\n",
            tone.display()
        ),
    )
    .expect("phone config");
    std::fs::write(
        home.join("accounts"),
        format!(
            "<sip:{name}@127.0.0.1:{warden_port};transport=udp>;regint=600;answermode=auto;audio_codecs={codec}{}\n",
            mediaenc.map(|m| format!(";mediaenc={m}")).unwrap_or_default()
        ),
    )
    .expect("phone account");
    home
}

/// The interop call (when baresip is installed; WARDEN_REQUIRE_BARESIP=1 makes its absence a
/// failure): two baresip phones through Warden, the caller on G.722 with SRTP, the callee on
/// plain PCMA, so Warden decrypts and transcodes. The dialplan records the call; the upload
/// is refused until a kill -9 and a restart; the file that arrives decodes with symphonia at
/// the call's rate (16 kHz) with the caller's 440 Hz on the left and the callee's 1 kHz on the
/// right.
#[test]
fn a_baresip_call_recorded_by_the_dialplan_arrives_across_a_kill() {
    let found = std::process::Command::new("baresip")
        .arg("-h")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("WARDEN_REQUIRE_BARESIP").is_none(),
            "WARDEN_REQUIRE_BARESIP is set but baresip is not installed"
        );
        eprintln!("skipped: baresip is not installed");
        return;
    }
    let phones = tempfile::tempdir().expect("tempdir");
    let plan = phones.path().join("record.toml");
    std::fs::write(
        &plan,
        "[[rule]]\nname = \"recorded\"\nwhen = { ruri_user = '^bob$' }\n\
         do = [{ record = \"stereo\" }, { bridge = \"user:bob\" }]\n",
    )
    .expect("dialplan");
    let receiver = Receiver::start();
    receiver.refusing.store(true, Ordering::SeqCst);
    let mut w = Warden::start_with(&format!(
        "[dialplan]\nfile = \"{}\"\n[media]\nsrtp = \"off\"\n[recording]\n\
         upload_url = \"http://127.0.0.1:{}/r/{{record}}\"\nupload_method = \"put\"\nretry_max_s = 1\n",
        plan.display(),
        receiver.port
    ));
    let (alice_tone, bob_tone) = (
        phones.path().join("alice.wav"),
        phones.path().join("bob.wav"),
    );
    write_tone(&alice_tone, 16_000, 440.0);
    write_tone(&bob_tone, 8_000, 1000.0);
    // The phones' ports, below Warden's media range and the kernel's ephemeral ports: SIP
    // (baresip also takes the port above, for TCP and TLS) and 50 RTP ports each.
    let base = free_block(104);
    let (bob_sip, alice_sip) = (base, base + 2);
    let (bob_rtp, alice_rtp) = (
        format!("{}-{}", base + 4, base + 53),
        format!("{}-{}", base + 54, base + 103),
    );
    let bob = baresip_phone(
        phones.path(),
        Phone {
            name: "bob",
            sip_port: bob_sip,
            rtp_ports: &bob_rtp,
            codec: "PCMA",
            mediaenc: None,
            tone: &bob_tone,
        },
        w.port,
    );
    let alice = baresip_phone(
        phones.path(),
        Phone {
            name: "alice",
            sip_port: alice_sip,
            rtp_ports: &alice_rtp,
            codec: "G722/16000/1",
            mediaenc: Some("srtp-mand"),
            tone: &alice_tone,
        },
        w.port,
    );
    let log =
        |name: &str| std::fs::File::create(phones.path().join(format!("{name}.log"))).expect("log");
    let mut bob_process = std::process::Command::new("baresip")
        .arg("-f")
        .arg(&bob)
        .args(["-t", "14"])
        .stdout(log("bob"))
        .stderr(log("bob-err"))
        .spawn()
        .expect("baresip");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !common::get(&w.admin("/registrations")).1.contains("bob") {
        assert!(
            Instant::now() < deadline,
            "bob did not register: {}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let alice_status = std::process::Command::new("baresip")
        .arg("-f")
        .arg(&alice)
        .args(["-t", "7", "-e"])
        .arg(format!("/dial sip:bob@127.0.0.1:{}", w.port))
        .stdout(log("alice"))
        .stderr(log("alice-err"))
        .status();
    let _ = bob_process.kill();
    let _ = bob_process.wait();
    let phone_logs = || {
        ["alice", "bob"]
            .map(|n| {
                std::fs::read_to_string(phones.path().join(format!("{n}.log"))).unwrap_or_default()
            })
            .join("\n----\n")
    };
    assert!(alice_status.is_ok(), "alice ran");
    let records = closed_records(&w, 1);
    assert!(
        records.first().is_some_and(|r| !r["answered_ms"].is_null()),
        "the call was answered and ended: {records:?}\n{}\n----\n{}",
        phone_logs(),
        w.log()
    );
    let file = records[0]["recording"]
        .as_str()
        .unwrap_or_else(|| panic!("the record names its recording: {records:?}"))
        .to_owned();

    let upload = upload_across_a_kill(&receiver, &mut w);
    assert_eq!(upload.path, format!("/r/{}", file.trim_end_matches(".wav")));
    let (rate, left, right) = decode_stereo(upload.body.clone());
    assert_eq!(rate, 16_000, "G.722's rate, the higher of the two");
    let seconds = left.len() as f64 / f64::from(rate);
    assert!(seconds > 3.0, "{seconds} s recorded\n{}", phone_logs());
    // Past the first second: the phones' jitter buffers and the caller's SRTP handshake.
    let skip = rate as usize;
    assert_sides(rate, &left[skip..], &right[skip..], 440.0, 1000.0, 20.0);
}

/// With `recording.format = "opus"` the file is Ogg Opus, uploaded as audio/ogg: symphonia
/// finds one stereo Opus stream as long as the call was recorded (the audio inside is
/// checked against its tones by the media crate's own test).
#[cfg(feature = "native-codecs")]
#[test]
fn an_ogg_opus_recording_is_uploaded_as_audio_ogg() {
    let receiver = Receiver::start();
    let w = Warden::start_with(&format!(
        "[recording]\nformat = \"opus\"\nupload_url = \"http://127.0.0.1:{}/r/{{record}}.opus\"\nupload_method = \"put\"\n",
        receiver.port
    ));
    let mut call = TalkingCall::answered(&w);
    let (_, file) = call.record(&w);
    assert!(file.ends_with(".opus"), "{file}");
    call.talk(440.0, 1000.0, 2.0);

    let uploads = receiver.wait_for(1, Duration::from_secs(15));
    assert_eq!(uploads.len(), 1, "{}", w.log());
    let upload = &uploads[0];
    assert_eq!(upload.path, format!("/r/{file}"));
    assert_eq!(upload.header("content-type"), Some("audio/ogg"));
    let source = symphonia::core::io::MediaSourceStream::new(
        Box::new(std::io::Cursor::new(upload.body.clone())),
        Default::default(),
    );
    let mut hint = symphonia::core::probe::Hint::new();
    hint.with_extension("opus");
    let mut format = symphonia::default::get_probe()
        .format(&hint, source, &Default::default(), &Default::default())
        .expect("an Ogg stream symphonia reads")
        .format;
    let track = format.default_track().expect("a track").clone();
    assert_eq!(
        track.codec_params.codec,
        symphonia::core::codecs::CODEC_TYPE_OPUS
    );
    assert_eq!(track.codec_params.channels.map(|c| c.count()), Some(2));
    let seconds = track.codec_params.n_frames.unwrap_or(0) as f64 / 48_000.0;
    assert!((1.8..4.0).contains(&seconds), "{seconds} s recorded");
    let mut packets = 0;
    while format.next_packet().is_ok() {
        packets += 1;
    }
    assert!(
        (packets as f64 - seconds * 50.0).abs() < 2.0,
        "{packets} packets of 20 ms in {seconds} s, every page's checksum good"
    );
}

/// A conference member's call recorded: the member on the left, what the room says to it
/// (the other member) on the right; stopped through the API while the call goes on.
#[test]
fn a_conference_member_s_recording_holds_it_left_and_the_room_right() {
    let receiver = Receiver::start();
    let w = Warden::start_with(&format!(
        "[recording]\nupload_url = \"http://127.0.0.1:{}/r/{{record}}\"\nupload_method = \"put\"\n",
        receiver.port
    ));
    // The shipped dialplan: 8000-8999 are conference rooms.
    let mut joined = Vec::new();
    for name in ["alice", "bob"] {
        let mut ua = Ua::udp(name, w.port);
        let media = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let invite = ua.invite_sdp("8042", &sdp(media.local_addr().expect("addr").port()));
        let ok = ua.final_response();
        assert_eq!(ok.status(), 200, "Warden answers the room");
        let port = media_port(ok.body());
        let mut dialog = ua.dialog_from(&invite, &ok);
        ua.in_dialog(&mut dialog, "ACK", None);
        joined.push((ua, dialog, media, port));
    }
    let calls: serde_json::Value =
        serde_json::from_str(&common::get(&w.admin("/calls")).1).expect("JSON");
    let alice_call = calls
        .as_array()
        .and_then(|c| c.iter().find(|c| c["caller"] == "alice"))
        .and_then(|c| c["id"].as_u64())
        .expect("alice's call");
    let started: serde_json::Value = reqwest::blocking::Client::new()
        .post(w.admin(&format!("/calls/{alice_call}/record")))
        .json(&serde_json::json!({}))
        .send()
        .and_then(|r| r.json())
        .expect("record");
    assert_eq!(started["started"], true, "{started}");
    let tones: Vec<_> = joined
        .iter()
        .zip([440.0, 1000.0])
        .map(|((_, _, media, port), freq)| {
            send_tone(media.try_clone().expect("socket"), *port, freq, 2.0)
        })
        .collect();
    for t in tones {
        t.join().expect("sent");
    }
    // Stopped through the API while alice stays in the room: the file goes at once.
    let stopped = reqwest::blocking::Client::new()
        .post(w.admin(&format!("/calls/{alice_call}/stop_recording")))
        .send()
        .expect("stop");
    assert_eq!(stopped.status().as_u16(), 200);
    let uploads = receiver.wait_for(1, Duration::from_secs(15));
    assert_eq!(uploads.len(), 1, "{}", w.log());
    for (ua, dialog, _, _) in &mut joined {
        ua.in_dialog(dialog, "BYE", None);
    }
    let (rate, left, right) = decode_stereo(uploads[0].body.clone());
    assert_eq!(rate, 8000);
    assert!(left.len() > 12_000, "{} frames", left.len());
    // Past the first half second: the join chime.
    assert_sides(rate, &left[4000..], &right[4000..], 440.0, 1000.0, 20.0);
}

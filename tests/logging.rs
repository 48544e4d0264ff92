//! Log formats: with `log.format = "json"` every line Warden writes is one JSON object an
//! operator's log shipper can read, with the level and the event's fields.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port();
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:{port}\"]\n[database]\npath = \"{}\"\n\
             [server]\npid_file = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n",
            dir.path().join("w.sqlite").display(),
            dir.path().join("w.pid").display()
        ),
    )
    .expect("write config");
    let log_path = dir.path().join("warden.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start warden");
    // Ready once the dialplan line is out.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline && !text.contains("dialplan active") {
        std::thread::sleep(Duration::from_millis(100));
        text.clear();
        std::fs::File::open(&log_path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .expect("read log");
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("dialplan active"),
        "Warden did not start:\n{text}"
    );
    let mut listening = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
        if event["fields"]["message"] == "listening" {
            assert_eq!(event["fields"]["transport"], "UDP", "{line}");
            listening = true;
        }
    }
    assert!(
        listening,
        "the listening line is there with its fields:\n{text}"
    );
}

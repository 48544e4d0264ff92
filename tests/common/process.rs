//! The process harness: starts the real `warden` binary on loopback with its own port,
//! data directory and config, and reads its admin API (records, metrics).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tls_ca::TestCa;
use super::ua::Ua;

/// A running Warden process with its own port and data directory.
pub struct Warden {
    pub port: u16,
    /// The admin HTTP API's port.
    pub admin_port: u16,
    child: Option<Child>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    extra: String,
    ipv6: bool,
    /// The `tls:` listener's port, when started with `start_tls`.
    pub tls_port: Option<u16>,
    /// Lines added to the `[sip]` table.
    sip_extra: String,
}

fn free_port() -> u16 {
    for _ in 0..100 {
        let Ok(udp) = UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = udp.local_addr().map(|a| a.port()) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port")
}

impl Warden {
    pub fn start() -> Warden {
        Self::start_with("")
    }

    /// Start with extra TOML appended to the generated config.
    pub fn start_with(extra: &str) -> Warden {
        Self::launch(extra, false)
    }

    /// Also listen on [::1] (UDP and TCP, same port).
    pub fn start_dual_stack() -> Warden {
        Self::launch("", true)
    }

    fn launch(extra: &str, ipv6: bool) -> Warden {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut w = Warden {
            port: free_port(),
            admin_port: free_port(),
            child: None,
            dir: tmp.path().to_owned(),
            _tmp: Some(tmp),
            extra: extra.to_owned(),
            ipv6,
            tls_port: None,
            sip_extra: String::new(),
        };
        w.spawn();
        w
    }

    /// Also listen for TLS (on `tls_port`) with `ca`'s certificate for 127.0.0.1, and trust
    /// `ca` for TLS next hops.
    pub fn start_tls(ca: &TestCa, extra: &str) -> Warden {
        Self::start_tls_with(ca, "", extra)
    }

    /// `start_tls` with `sip_lines` added to the `[sip]` table (timers, limits).
    pub fn start_tls_with(ca: &TestCa, sip_lines: &str, extra: &str) -> Warden {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let [cert, key, ca_file] = ca.write_files(&dir);
        let tls = format!(
            "[sip.tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nca_file = \"{ca_file}\"\n{extra}"
        );
        let mut w = Warden {
            port: free_port(),
            admin_port: free_port(),
            child: None,
            dir,
            _tmp: Some(tmp),
            extra: tls,
            ipv6: false,
            tls_port: Some(free_port()),
            sip_extra: sip_lines.to_owned(),
        };
        w.spawn();
        w
    }

    fn spawn(&mut self) {
        let mut v6 = if self.ipv6 {
            format!(", \"udp:[::1]:{p}\", \"tcp:[::1]:{p}\"", p = self.port)
        } else {
            String::new()
        };
        if let Some(port) = self.tls_port {
            v6.push_str(&format!(", \"tls:127.0.0.1:{port}\""));
        }
        // The pid file goes in [server], which the extra TOML may open itself.
        // WARDEN_TEST_SHARDS runs every process test on a sharded server (unless the
        // test sets its own).
        let shards = std::env::var("WARDEN_TEST_SHARDS")
            .ok()
            .filter(|_| !self.extra.contains("shards ="))
            .map(|n| format!("shards = {n}\n"))
            .unwrap_or_default();
        let pid = format!(
            "[server]\npid_file = \"{}\"\n{shards}",
            self.dir.join("warden.pid").display()
        );
        let (server, extra) = match self.extra.contains("[server]\n") {
            true => (String::new(), self.extra.replacen("[server]\n", &pid, 1)),
            false => (pid, self.extra.clone()),
        };
        let config = format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:{p}\", \"tcp:127.0.0.1:{p}\"{v6}]\n{sip}\
             [database]\npath = \"{db}\"\n{server}\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n{extra}\n",
            p = self.port,
            admin = self.admin_port,
            db = self.dir.join("warden.sqlite").display(),
            sip = self.sip_extra,
        );
        let path = self.dir.join("warden.toml");
        std::fs::write(&path, config).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("warden.log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("--config")
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("WARDEN_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start warden");
        self.child = Some(child);
        // Ready when OPTIONS is answered.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut probe = Ua::udp("probe", self.port);
        loop {
            probe.send_raw(&probe.options());
            if probe.try_recv(Duration::from_millis(200)).is_some() {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited || Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.dir.join("warden.log")).unwrap_or_default();
                panic!("warden did not start; its log:\n{log}");
            }
        }
    }

    /// Stop the process (SIGKILL: a crash, not a clean exit) and start it again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What Warden logged so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("warden.log")).unwrap_or_default()
    }

    /// `warden reload` with this server's config: its output and whether it succeeded.
    pub fn reload_command(&self) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("--config")
            .arg(self.dir.join("warden.toml"))
            .arg("reload")
            .output()
            .expect("run warden reload");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// SIGHUP: reload the dialplan.
    pub fn reload(&self) {
        self.signal(libc::SIGHUP);
    }

    /// SIGTERM: the graceful shutdown.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Send the process `signal` (SIGTERM, SIGINT, SIGHUP).
    pub fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill with a live child's pid and a valid signal number.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    /// Wait up to `limit` for the process to exit; its status when it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The admin API's URL for `path`.
    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// `warden ctl ARGS` with this server's config: whether it succeeded, and its output.
    pub fn ctl(&self, args: &[&str]) -> (bool, String) {
        self.command("ctl", args, "")
    }

    /// `warden user ARGS` with this server's config, `stdin` on its standard input.
    pub fn user(&self, args: &[&str], stdin: &str) -> (bool, String) {
        self.command("user", args, stdin)
    }

    fn command(&self, command: &str, args: &[&str], stdin: &str) -> (bool, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("--config")
            .arg(self.dir.join("warden.toml"))
            .arg(command)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run warden {command}: {e}"));
        let mut input = child.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut input, stdin.as_bytes()).expect("write stdin");
        drop(input);
        let out = child.wait_with_output().expect("warden's output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Warden {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn get(url: &str) -> (u16, String) {
    let response = reqwest::blocking::get(url).expect("admin API reachable");
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_default())
}

/// The records Warden's admin API returns for `query`.
pub fn cdrs(w: &Warden, query: &str) -> Vec<serde_json::Value> {
    let (status, body) = get(&w.admin(&format!("/cdrs?{query}")));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON records")
}

/// Poll until `count` closed records are stored (they are written off the signalling path).
pub fn closed_records(w: &Warden, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = cdrs(w, "open=false&limit=1000");
        if records.len() >= count || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// /metrics, parsed by a Prometheus text-format parser: the value of `name` with `label`.
pub fn metric(w: &Warden, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let (status, text) = get(&w.admin("/metrics"));
    assert_eq!(status, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text format");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

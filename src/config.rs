//! One typed configuration with defaults that run out of the box; a TOML file overrides them.
//! Unknown keys and bad values are refused at load with the file, line and cause.

use std::net::{IpAddr, SocketAddr};

use std::path::{Path, PathBuf};
use std::time::Duration;
use warden_media::Latching;
use warden_media::codec::{self, Codec};

use serde::Deserialize;

use crate::registrar::digest::Algorithm;
use crate::sip::transaction::TimerConfig;
use crate::sip::transport::Transport;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub sip: SipConfig,
    pub registrar: RegistrarConfig,
    pub calls: CallConfig,
    pub media: MediaConfig,
    pub dialplan: DialplanConfig,
    pub ims: ImsConfig,
    pub dns: DnsConfig,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub cdr: CdrConfig,
    pub recording: crate::recording::RecordingConfig,
    pub log: LogConfig,
    pub screening: crate::screening::ScreeningConfig,
    pub admin: AdminConfig,
    pub guard: crate::guard::GuardConfig,
    /// Several nodes sharing state; None: this node alone on its embedded SQLite.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// The admin API, over HTTP and HTTPS on one port (the jCard of 608 responses is served
/// there too, over HTTPS).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on; an empty string turns the API off.
    pub listen: String,
    /// Bearer token the API asks for; required when `listen` is not a loopback address.
    pub token: Option<String>,
    /// PEM certificate chain (leaf first) and key HTTPS presents; none: a self-signed
    /// certificate made at start.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// How many events a `/events` subscriber may fall behind before it is dropped.
    pub event_queue: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:8088".into(),
            token: None,
            tls_cert_file: None,
            tls_key_file: None,
            event_queue: 4096,
        }
    }
}

impl AdminConfig {
    /// The address to serve on, None when the API is off.
    pub fn address(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        let addr: SocketAddr = self
            .listen
            .parse()
            .map_err(|_| anyhow::anyhow!("admin.listen {:?}: expected IP:PORT", self.listen))?;
        anyhow::ensure!(
            addr.ip().is_loopback() || self.token.as_deref().is_some_and(|t| t.len() >= 16),
            "admin.listen {addr} is reachable from other machines: set admin.token (16 characters or more)"
        );
        Ok(Some(addr))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// Listening sockets as "udp:ADDR:PORT" / "tcp:[::1]:5060".
    pub listen: Vec<String>,
    /// Host (and optional port) written into Via/Contact; defaults to the listening address.
    pub advertised_host: Option<String>,
    pub t1_ms: u64,
    pub t2_ms: u64,
    pub t4_ms: u64,
    pub max_message_bytes: usize,
    pub max_headers: usize,
    /// Kernel receive buffer asked for each SIP UDP socket: it holds what arrives while
    /// the signalling thread is busy (the default 208 KiB is about 90 datagrams, 13 ms at
    /// 1,000 calls/s). Capped by `net.core.rmem_max` unless Warden may exceed it.
    pub udp_receive_buffer_bytes: usize,
    /// Close a TCP connection after this long without traffic.
    pub tcp_idle_timeout_s: u64,
    /// Value of the Server / User-Agent header.
    pub user_agent: String,
    /// Reason phrases for the responses Warden generates, by code, e.g.
    /// `{ 486 = "Obsadené" }` (the standard phrase for codes not listed).
    pub reason_phrases: std::collections::BTreeMap<String, String>,
    /// Also put the configured phrase on responses relayed from a callee (default: a
    /// relayed response keeps the callee's phrase).
    pub rewrite_relayed_phrases: bool,
    /// Certificates for `tls:` listeners and for verifying TLS next hops.
    pub tls: crate::sip::tls::TlsConfig,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: vec!["udp:127.0.0.1:5060".into(), "tcp:127.0.0.1:5060".into()],
            advertised_host: None,
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            max_message_bytes: 64 * 1024,
            max_headers: 128,
            udp_receive_buffer_bytes: 4 << 20,
            tcp_idle_timeout_s: 600,
            user_agent: concat!("Warden/", env!("CARGO_PKG_VERSION")).into(),
            reason_phrases: Default::default(),
            rewrite_relayed_phrases: false,
            tls: Default::default(),
        }
    }
}

impl SipConfig {
    /// The configured reason phrases by code (validation has refused bad entries).
    pub fn phrases(&self) -> std::collections::HashMap<u16, String> {
        self.reason_phrases
            .iter()
            .filter_map(|(code, text)| Some((code.parse().ok()?, text.clone())))
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrarConfig {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    /// Most contacts one address of record may bind.
    pub max_contacts: usize,
    /// Require digest authentication for REGISTER (off: a lab registrar).
    pub auth: bool,
    pub realm: String,
    pub nonce_lifetime_s: u64,
    /// The digest algorithms challenged (REGISTER and INVITE), in the order offered. MD5
    /// alone by default: libre before SHA-256 support (baresip 1.0) fails on any
    /// challenge naming another algorithm, wherever it is in the list.
    pub digest_algorithms: Vec<Algorithm>,
    pub users: Vec<UserConfig>,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_contacts: 10,
            auth: false,
            realm: "warden".into(),
            nonce_lifetime_s: 300,
            digest_algorithms: vec![Algorithm::Md5],
            users: Vec::new(),
        }
    }
}

/// A user allowed to register: a password, or precomputed HA1 values (preferred in files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    pub password: Option<String>,
    pub ha1: Option<String>,
    pub ha1_sha256: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallConfig {
    /// Ring time before the caller gets 408 and the callee a CANCEL.
    pub no_answer_timeout_s: u64,
    /// Answer new calls with 503 once this many are up.
    pub max_calls: usize,
    /// Play the caller an announcement (as early media, 183) before a failure: the
    /// `user_unavailable` prompt before 404/480, `busy` before 486/600.
    pub announce_failures: bool,
    /// INVITEs from sources outside `trusted` must authenticate (407, digest) as their From
    /// user, one of the registrar's users.
    pub auth: bool,
    /// Sources whose INVITEs need no credentials (trunks, gateways); the IMS S-CSCFs are
    /// always trusted.
    pub trusted: Vec<String>,
    /// Send provisionals reliably (RFC 3262) to callers that support 100rel, and offer
    /// 100rel to callees.
    pub reliable_provisionals: bool,
    /// The session interval Warden asks for on each leg (RFC 4028); 0: no session timers.
    /// A dialplan rule may set its own with `session_expires`.
    pub session_expires_s: u32,
    /// The shortest session interval Warden accepts (Min-SE; RFC 4028 says at least 90).
    pub min_se_s: u32,
    /// Longest a call may last once answered (0: no limit); the rule's `max_duration`
    /// overrides it. The call is ended with BYE on both legs, end reason `max-duration`.
    pub max_duration_s: u64,
    /// Emergency numbers (the dialplan's `emergency = true`; `urn:service:sos` always is).
    /// Such calls are never refused by screening, quotas, call limits or shutdown.
    pub emergency: Vec<String>,
    /// Bridges with `probe = true`: OPTIONS to each target this often...
    pub probe_s: u64,
    /// ...and a target that failed this many probes in a row is skipped until it answers.
    pub probe_failures: u32,
}

/// Emergency numbers of the home countries Warden is run in (112 EU/GSM, 911 NANP, 999 UK,
/// 000 AU, 110/119 JP/CN/DE police and fire, 118/119 JP, 08 GSM legacy).
pub const DEFAULT_EMERGENCY: &[&str] = &["112", "911", "999", "000", "110", "118", "119", "08"];

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            no_answer_timeout_s: 60,
            max_calls: 100_000,
            announce_failures: false,
            auth: true,
            trusted: vec!["127.0.0.0/8".into(), "::1/128".into()],
            reliable_provisionals: true,
            session_expires_s: 1800,
            min_se_s: 90,
            max_duration_s: 0,
            emergency: DEFAULT_EMERGENCY.iter().map(|n| n.to_string()).collect(),
            probe_s: 30,
            probe_failures: 3,
        }
    }
}

impl CallConfig {
    /// Warden's session timer settings (RFC 4028).
    pub fn session_policy(&self) -> crate::sip::session_timer::Policy {
        crate::sip::session_timer::Policy {
            session_expires: self.session_expires_s,
            min_se: self.min_se_s,
        }
    }

    /// The trusted networks (validation has refused bad entries).
    pub fn trusted(&self) -> Vec<(IpAddr, u8)> {
        self.trusted
            .iter()
            .filter_map(|t| crate::dialplan::parse_network(t).ok())
            .collect()
    }
}

/// DNS for bridge targets: ENUM and host names.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers as "IP" or "IP:PORT"; empty: the system's (/etc/resolv.conf).
    pub servers: Vec<String>,
    /// Where ENUM looks numbers up (RFC 6116).
    pub enum_suffix: String,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            enum_suffix: "e164.arpa".into(),
        }
    }
}

impl DnsConfig {
    /// The servers as socket addresses (validation has refused bad ones).
    pub fn servers(&self) -> Vec<SocketAddr> {
        self.servers
            .iter()
            .filter_map(|s| parse_server(s))
            .collect()
    }
}

fn parse_server(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// Warden as an IMS application server (3GPP TS 24.229).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ImsConfig {
    /// Addresses or networks of the S-CSCFs whose initial requests Warden serves as an AS:
    /// only theirs may set the session case (`orig` Route, P-Served-User), and only their
    /// calls may go on along their Route set (the dialplan target `ims`). Empty: no IMS.
    /// A host name stands for every address it resolves to when the config is loaded
    /// (the system's resolver; a reload resolves it again).
    pub trusted_scscf: Vec<String>,
}

impl ImsConfig {
    /// The trusted networks (validation has refused bad entries), names resolved.
    pub fn trusted(&self) -> Vec<(IpAddr, u8)> {
        self.trusted_scscf
            .iter()
            .flat_map(|t| match crate::dialplan::parse_network(t) {
                Ok(net) => vec![net],
                Err(_) => host_addresses(t)
                    .into_iter()
                    .map(|ip| (ip, if ip.is_ipv4() { 32 } else { 128 }))
                    .collect(),
            })
            .collect()
    }
}

/// The addresses a host name resolves to (empty when it does not).
fn host_addresses(name: &str) -> Vec<IpAddr> {
    use std::net::ToSocketAddrs;
    (name, 0)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .unwrap_or_default()
}

/// Which dialplan routes calls.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DialplanConfig {
    /// A dialplan file (relative paths from the working directory); none: the built-in
    /// `dialplans/default.toml`. Reloaded on SIGHUP.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Address media ports bind to and SDP advertises; default: the first SIP listening
    /// address (or the host it routes from, when that is a wildcard).
    pub address: Option<IpAddr>,
    /// RTP port range (RTP even, RTCP the odd port above).
    pub port_min: u16,
    pub port_max: u16,
    /// Relay threads; 0 = one per core.
    pub workers: usize,
    /// "strict": learn a party's address from its first packet, then hear only it.
    /// "follow": always answer the last sender (roaming phones; weaker against injection).
    pub latching: String,
    /// Microseconds a busy relay thread lets packets gather between polls: fewer wake-ups
    /// per packet (less CPU) for at most this much added latency. 0 polls at once.
    pub coalesce_us: u64,
    /// Codecs Warden adds to an offer toward the far leg, in this order, so legs that share
    /// no codec are bridged by transcoding. Empty: never transcode.
    pub transcode: Vec<String>,
    /// Opus encoder complexity, 0-10: CPU per transcoded Opus call against quality.
    pub opus_complexity: u8,
    /// A folder of prompts (WAV, FLAC, Ogg Vorbis, MP3) named by file stem; they replace or
    /// add to the prompts built into Warden (`prompts/` of the source tree).
    pub prompts_dir: Option<PathBuf>,
    /// End a bridged call after this long without RTP from either side (not while on hold).
    pub rtp_timeout_s: u64,
    /// The prompt a party hears, looped, while the other holds the call (a dialplan route's
    /// `hold_music` overrides it); "" plays nothing.
    pub hold_music: String,
    /// The chimes every member of a conference room hears as a party joins and as one
    /// leaves; "" plays nothing.
    pub conference_join: String,
    pub conference_leave: String,
    /// SRTP (SDES keys) in the offers Warden makes to callees: "mirror" (as the caller's
    /// offer), "mandatory" (RTP/SAVP), "optional" (RTP/AVP with keys) or "off". A dialplan
    /// route's `srtp` overrides it. Warden terminates SRTP on each leg either way.
    pub srtp: crate::anchor::sdes::SrtpPolicy,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            address: None,
            port_min: 20000,
            port_max: 40000,
            workers: 0,
            latching: "strict".into(),
            coalesce_us: 200,
            // G.711 first (what trunks and the IMS core take), then wideband, then the
            // codecs of the native-codecs build when it has them.
            transcode: ["PCMA", "PCMU", "G722", "AMR-WB", "AMR", "opus"]
                .into_iter()
                .filter(|name| codec::all().iter().any(|c| c.name == *name))
                .map(String::from)
                .collect(),
            opus_complexity: codec::DEFAULT_OPUS_COMPLEXITY,
            prompts_dir: None,
            rtp_timeout_s: 60,
            hold_music: "hold_music".into(),
            conference_join: "conference_join".into(),
            conference_leave: "conference_leave".into(),
            srtp: Default::default(),
        }
    }
}

impl MediaConfig {
    /// The `transcode` codecs, looked up (validation has refused unknown names).
    pub fn transcodable(&self) -> Vec<&'static Codec> {
        self.transcode
            .iter()
            .filter_map(|name| {
                codec::all()
                    .iter()
                    .find(|c| c.name.eq_ignore_ascii_case(name))
            })
            .collect()
    }

    pub fn latching(&self) -> Latching {
        if self.latching == "follow" {
            Latching::Follow
        } else {
            Latching::Strict
        }
    }
}

/// The running process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the running server writes its process id (`warden reload` reads it).
    pub pid_file: PathBuf,
    /// This Warden's name in call records; empty: the host name. Instances sharing one
    /// CDR database need distinct names (crash recovery closes only its own records).
    pub instance: String,
    /// On SIGTERM: how long live calls may go on before Warden ends them with BYE.
    pub shutdown_grace_s: u64,
    /// Retry-After (seconds) on the 503 that new calls get while Warden shuts down.
    pub retry_after_s: u64,
    /// Signalling shards, each a core on a thread of its own that owns the calls whose
    /// Call-IDs hash to it (0: one per CPU). Registrations, the guard, rooms and screening
    /// are shared between them.
    pub shards: usize,
}

/// More shards than this buy nothing but lock traffic on the shared state.
const MAX_SHARDS: usize = 64;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            pid_file: PathBuf::from("data/warden.pid"),
            instance: String::new(),
            shutdown_grace_s: 30,
            retry_after_s: 60,
            shards: 1,
        }
    }
}

impl ServerConfig {
    /// How many signalling shards to run (`shards`, with 0 resolved to the CPUs).
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_SHARDS)),
            n => n,
        }
    }

    /// `instance`, else the host name (else "warden"); in a cluster the node's name
    /// (`Config::validate` keeps the two from differing).
    pub fn instance_name(&self) -> String {
        if !self.instance.is_empty() {
            return self.instance.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "warden".into())
    }
}

/// Call detail records.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdrConfig {
    /// The database: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`. Empty: the
    /// SQLite file `cdr.sqlite` beside `database.path` (created on first run).
    pub url: String,
    /// The journal every record passes through (and waits in while the database is away);
    /// default: `cdr.journal` beside `database.path`.
    pub journal: Option<PathBuf>,
    /// Records written per database transaction.
    pub batch: usize,
    /// The writer gathers records this long after being woken before storing them, so a
    /// busy server writes one transaction per interval rather than one per loop turn
    /// (records are safe in the journal meanwhile). 0: stored at once.
    pub write_interval_ms: u64,
    /// Journal appends are made durable (fdatasync, group commit) at most this long after
    /// they are written; 0: never synced (a power cut may lose the kernel's unwritten pages).
    pub fsync_interval_ms: u64,
    /// The journal's size cap while the database is away: at 80% an alarm, at 100% new
    /// calls get 503 (records are never dropped to stay under it). 0: no cap.
    pub spool_max_bytes: u64,
    /// Closed records received more than this many days ago are deleted (hourly, in the
    /// background). 0: kept for ever.
    pub retention_days: u64,
}

impl Default for CdrConfig {
    fn default() -> Self {
        CdrConfig {
            url: String::new(),
            journal: None,
            batch: 500,
            write_interval_ms: 100,
            fsync_interval_ms: 10,
            spool_max_bytes: 1 << 30,
            retention_days: 0,
        }
    }
}

impl Config {
    /// The data directory: where `database.path` lives.
    fn data_dir(&self) -> PathBuf {
        self.database
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The CDR database URL, the default filled in.
    pub fn cdr_url(&self) -> String {
        if self.cdr.url.is_empty() {
            format!("sqlite://{}", self.data_dir().join("cdr.sqlite").display())
        } else {
            self.cdr.url.clone()
        }
    }

    /// Where recordings are written and wait for their upload, the default filled in.
    pub fn recording_dir(&self) -> PathBuf {
        self.recording
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("recordings"))
    }

    /// The CDR journal's path, the default filled in.
    pub fn cdr_journal(&self) -> PathBuf {
        self.cdr
            .journal
            .clone()
            .unwrap_or_else(|| self.data_dir().join("cdr.journal"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Where the SQLite database lives (created on first run).
    pub path: PathBuf,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            path: PathBuf::from("data/warden.sqlite"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter such as "info" or "warden=debug".
    pub level: String,
    /// "human" (one readable line per event) or "json" (one JSON object per line, for a
    /// log shipper).
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "human".into(),
        }
    }
}

impl Config {
    /// Read and validate a TOML file; errors name the file, line and cause.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| {
                    text.as_bytes()[..s.start.min(text.len())]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1
                })
                .unwrap_or(0);
            anyhow::anyhow!("{origin}:{line}: {}", e.message())
        })?;
        if let Some(cluster) = &config.cluster
            && config.server.instance.is_empty()
        {
            config.server.instance = cluster.node.clone();
        }
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
            anyhow::ensure!(
                self.server.instance == cluster.node,
                "server.instance ({:?}) differs from cluster.node ({:?}): a node's records carry its node name; leave server.instance out",
                self.server.instance,
                cluster.node
            );
        }
        let listen = self.listen()?;
        if listen.iter().any(|(t, _)| *t == Transport::Tls) {
            anyhow::ensure!(
                self.sip.tls.cert_file.is_some() && self.sip.tls.key_file.is_some(),
                "sip.listen has a tls: listener: set sip.tls.cert_file and sip.tls.key_file"
            );
        }
        // Unreadable or mismatched files are refused here, naming the file.
        crate::sip::tls::TlsContext::load(&self.sip.tls)?;
        let r = &self.registrar;
        anyhow::ensure!(
            r.min_expires <= r.max_expires,
            "registrar.min_expires ({}) is above registrar.max_expires ({})",
            r.min_expires,
            r.max_expires
        );
        let m = &self.media;
        anyhow::ensure!(
            m.port_min < m.port_max && m.port_max - m.port_min >= 3,
            "media.port_min ({}) must be below media.port_max ({}) with room for two port pairs",
            m.port_min,
            m.port_max
        );
        anyhow::ensure!(
            m.latching == "strict" || m.latching == "follow",
            "media.latching {:?}: expected \"strict\" or \"follow\"",
            m.latching
        );
        anyhow::ensure!(m.rtp_timeout_s > 0, "media.rtp_timeout_s must be above 0");
        for server in &self.dns.servers {
            anyhow::ensure!(
                parse_server(server).is_some(),
                "dns.servers: {server:?} is not an IP address or IP:PORT"
            );
        }
        anyhow::ensure!(
            !self.dns.enum_suffix.trim_matches('.').is_empty(),
            "dns.enum_suffix must name a domain"
        );
        for t in &self.ims.trusted_scscf {
            let is_name = t.contains(|c: char| c.is_ascii_alphabetic()) && !t.contains([':', '/']);
            if is_name {
                anyhow::ensure!(
                    !host_addresses(t).is_empty(),
                    "ims.trusted_scscf: {t:?} does not resolve to any address"
                );
            } else {
                crate::dialplan::parse_network(t)
                    .map_err(|e| anyhow::anyhow!("ims.trusted_scscf: {e}"))?;
            }
        }
        for t in &self.calls.trusted {
            crate::dialplan::parse_network(t).map_err(|e| anyhow::anyhow!("calls.trusted: {e}"))?;
        }
        let c = &self.calls;
        anyhow::ensure!(
            c.min_se_s >= 90,
            "calls.min_se_s ({}) must be at least 90 (RFC 4028 4)",
            c.min_se_s
        );
        anyhow::ensure!(
            c.session_expires_s == 0 || c.session_expires_s >= c.min_se_s,
            "calls.session_expires_s ({}) must be 0 (off) or at least calls.min_se_s ({})",
            c.session_expires_s,
            c.min_se_s
        );
        anyhow::ensure!(c.probe_s > 0, "calls.probe_s must be above 0");
        anyhow::ensure!(c.probe_failures > 0, "calls.probe_failures must be above 0");
        for number in &c.emergency {
            anyhow::ensure!(
                !number.is_empty() && number.chars().all(|ch| ch.is_ascii_digit()),
                "calls.emergency: {number:?} is not a number (digits only)"
            );
        }
        self.guard.validate()?;
        anyhow::ensure!(
            self.server.shards <= MAX_SHARDS,
            "server.shards ({}) may be at most {MAX_SHARDS} (0: one per CPU)",
            self.server.shards
        );
        for name in &m.transcode {
            anyhow::ensure!(
                codec::all()
                    .iter()
                    .any(|c| c.name.eq_ignore_ascii_case(name)),
                "media.transcode: unknown codec {name:?}; this build has {}{}",
                codec::all()
                    .iter()
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join(", "),
                if name.eq_ignore_ascii_case("opus") {
                    " (Opus needs a build with `--features opus` and libopus-dev)"
                } else {
                    ""
                }
            );
        }
        anyhow::ensure!(
            m.opus_complexity <= 10,
            "media.opus_complexity ({}) must be 0 to 10",
            m.opus_complexity
        );
        anyhow::ensure!(
            m.coalesce_us <= 5_000,
            "media.coalesce_us ({}) above 5000 would add audible delay",
            m.coalesce_us
        );
        anyhow::ensure!(self.sip.t1_ms > 0, "sip.t1_ms must be above 0");
        for (code, text) in &self.sip.reason_phrases {
            anyhow::ensure!(
                code.parse::<u16>().is_ok_and(|c| (100..=699).contains(&c)),
                "sip.reason_phrases: {code:?} is not a SIP status code (100-699)"
            );
            anyhow::ensure!(
                !text.trim().is_empty() && !text.chars().any(char::is_control),
                "sip.reason_phrases.{code}: the phrase must be non-empty text on one line"
            );
        }
        anyhow::ensure!(
            self.sip.t2_ms >= self.sip.t1_ms,
            "sip.t2_ms must be at least sip.t1_ms"
        );
        anyhow::ensure!(
            !r.digest_algorithms.is_empty(),
            "registrar.digest_algorithms is empty: list \"MD5\", \"SHA-256\" or both"
        );
        for (i, alg) in r.digest_algorithms.iter().enumerate() {
            anyhow::ensure!(
                !r.digest_algorithms[..i].contains(alg),
                "registrar.digest_algorithms names {} twice",
                alg.name()
            );
        }
        for u in &r.users {
            anyhow::ensure!(
                u.password.is_some() || u.ha1.is_some() || u.ha1_sha256.is_some(),
                "registrar user {:?} has neither password nor ha1",
                u.username
            );
        }
        self.admin.address()?;
        let url = self.cdr_url();
        anyhow::ensure!(
            ["sqlite:", "postgres:", "postgresql:"]
                .iter()
                .any(|scheme| url.starts_with(scheme)),
            "cdr.url {url:?}: expected sqlite://PATH or postgres://USER:PASSWORD@HOST/DB"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.cdr.batch),
            "cdr.batch ({}) must be 1 to 10000",
            self.cdr.batch
        );
        anyhow::ensure!(
            self.cdr.write_interval_ms <= 10_000,
            "cdr.write_interval_ms ({}) must be at most 10000",
            self.cdr.write_interval_ms
        );
        anyhow::ensure!(
            self.log.format == "human" || self.log.format == "json",
            "log.format {:?}: expected \"human\" or \"json\"",
            self.log.format
        );
        // Prompts named by verdicts are checked at start, when the prompts are loaded.
        let countries = crate::screening::country_table();
        self.screening
            .profiles(
                &|iso| crate::screening::calling_code(&countries, iso),
                &|_| true,
            )
            .map_err(anyhow::Error::msg)?;
        self.screening.trusted().map_err(anyhow::Error::msg)?;
        self.screening.blocked().map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// The parsed listening sockets.
    pub fn listen(&self) -> anyhow::Result<Vec<(Transport, SocketAddr)>> {
        anyhow::ensure!(!self.sip.listen.is_empty(), "sip.listen is empty");
        self.sip
            .listen
            .iter()
            .map(|l| {
                let (t, addr) = l
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("sip.listen {l:?}: expected udp:ADDR:PORT"))?;
                let transport = Transport::parse(t)
                    .ok_or_else(|| anyhow::anyhow!("sip.listen {l:?}: unknown transport {t:?}"))?;
                let addr = addr.parse().map_err(|_| {
                    anyhow::anyhow!("sip.listen {l:?}: bad socket address {addr:?}")
                })?;
                Ok((transport, addr))
            })
            .collect()
    }

    /// Where callers fetch the operator's jCard (RFC 8688): `screening.jcard.public_url`,
    /// else the admin API's `/jcard` over HTTPS.
    pub fn jcard_url(&self) -> String {
        self.screening
            .jcard
            .public_url
            .clone()
            .unwrap_or_else(|| format!("https://{}/jcard", self.admin.listen))
    }

    pub fn timers(&self) -> TimerConfig {
        TimerConfig {
            t1: Duration::from_millis(self.sip.t1_ms),
            t2: Duration::from_millis(self.sip.t2_ms),
            t4: Duration::from_millis(self.sip.t4_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_cluster_node_names_its_records_and_a_conflicting_instance_is_refused() {
        let c = Config::parse("[cluster]\nnode = \"a\"\n", "w.toml").unwrap();
        assert_eq!(c.server.instance_name(), "a");
        let e = Config::parse(
            "[server]\ninstance = \"x\"\n[cluster]\nnode = \"a\"\n",
            "w.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("differs from cluster.node"), "{e}");
        let e = Config::parse("[cluster]\nnode = \"a\"\nlease = 3\n", "w.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("w.toml:3:"), "file and line: {e}");
        // The example's commented [cluster] table, uncommented, is valid.
        let example = include_str!("../warden.example.toml");
        let table: String = example
            .lines()
            .skip_while(|l| *l != "# [cluster]")
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        Config::parse(&table, "example [cluster]").unwrap();
    }

    #[test]
    fn the_example_file_is_valid_and_says_the_defaults() {
        let text = include_str!("../warden.example.toml");
        let example = Config::parse(text, "warden.example.toml").unwrap();
        let default = Config::default();
        assert_eq!(example.admin.listen, default.admin.listen);
        let p = &example.screening.profiles["default"];
        assert_eq!(
            (p.calls_per_hour, p.max_concurrent, p.repeat_limit),
            (60, 10, 5)
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let err = Config::parse("[sip]\nt1_ms = 500\nbogus = 1\n", "w.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("w.toml:3:"), "{msg}");
        let err = Config::parse("[sip]\nlisten = [\"sctp:1.2.3.4:5\"]\n", "w.toml").unwrap_err();
        assert!(err.to_string().contains("unknown transport"), "{err}");
        let err = Config::parse("[sip.reason_phrases]\n86 = \"x\"\n", "w.toml").unwrap_err();
        assert!(err.to_string().contains("not a SIP status code"), "{err}");
        let ok = Config::parse("[sip.reason_phrases]\n486 = \"Obsadené\"\n", "w.toml").unwrap();
        assert_eq!(ok.sip.phrases()[&486], "Obsadené");
        let err = Config::parse("[log]\nformat = \"xml\"\n", "w.toml").unwrap_err();
        assert!(err.to_string().contains("log.format \"xml\""), "{err}");
        let err = Config::parse("[recording]\nformat = \"mp3\"\n", "w.toml").unwrap_err();
        assert!(err.to_string().contains("wav or opus"), "{err}");
        let opus = Config::parse("[recording]\nformat = \"opus\"\n", "w.toml");
        match cfg!(feature = "opus") {
            true => assert!(opus.is_ok(), "{opus:?}"),
            false => assert!(
                opus.is_err_and(|e| e.to_string().contains("--features native-codecs")),
                "refused, saying how to build it"
            ),
        }
    }
}

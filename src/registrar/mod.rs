//! The registrar (RFC 3261 section 10): bindings per address of record, expiry, digest auth.
//! Pure logic fed with the current Unix time; `store` persists the changes it reports.

pub mod digest;
pub mod store;
pub mod users;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use crate::config::RegistrarConfig;
use crate::sip::message::{Contact, Request, Response, Uri};
use crate::sip::status::reason_phrase;
use crate::sip::transport::{Destination, Transport};
use digest::{Algorithm, DigestAuth, Verdict};

/// One contact bound to an address of record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The AOR key: the user part of the To URI (Warden serves one domain).
    pub aor: String,
    pub contact: String,
    pub expires_at: u64,
    pub call_id: String,
    pub cseq: u32,
    /// Where the REGISTER came from: how to reach a phone behind NAT.
    pub transport: Transport,
    pub source: SocketAddr,
    pub user_agent: Option<String>,
    /// The Path (RFC 3327) the REGISTER came with, first hop first: requests to the
    /// contact are sent to the first hop with these as their Route set.
    pub path: Vec<String>,
    /// The cluster node that took the REGISTER; None: this node.
    pub node: Option<String>,
}

impl Binding {
    /// Where requests for this contact go: the contact's own address, unless the phone sits
    /// behind NAT (its contact IP differs from the packet source) or the contact is a name;
    /// then the flow the REGISTER arrived on. TCP always reuses the registering connection
    /// when it is still open.
    pub fn destination(&self, conn: Option<u64>) -> Destination {
        let contact = Uri::parse(&self.contact).ok();
        let direct = contact.as_ref().and_then(|u| {
            let host = u.host()?;
            let ip: std::net::IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
            (ip == self.source.ip()).then(|| SocketAddr::new(ip, u.port().unwrap_or(5060)))
        });
        Destination {
            transport: self.transport,
            addr: match self.transport {
                Transport::Udp => direct.unwrap_or(self.source),
                Transport::Tcp | Transport::Tls => self.source,
            },
            conn,
        }
    }
}

/// How a binding is reached from this node: where to send, along which Route set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub dest: Destination,
    pub route: Vec<String>,
}

impl Binding {
    /// How this node reaches the contact: along its Path when it has one (RFC 3327: to
    /// the first hop, the Path as the Route set); else directly, unless it is a TCP or TLS
    /// flow another cluster node holds (only that node's connection reaches the phone:
    /// phones meant to be reached from every node register through an edge proxy that
    /// adds a Path). None: not reachable from here.
    pub fn reach(&self) -> Option<Reach> {
        if let Some(first) = self.path.first() {
            let hop = first.trim_matches(['<', '>']);
            let Some(dest) = crate::dns::literal_destination(hop) else {
                tracing::warn!(aor = %self.aor, hop, "the Path's first hop is not an address; contact skipped");
                return None;
            };
            return Some(Reach {
                dest,
                route: self.path.clone(),
            });
        }
        if self.node.is_some() && self.transport != Transport::Udp {
            tracing::info!(aor = %self.aor, contact = %self.contact, node = ?self.node, "contact on another node's connection, without a Path: skipped here");
            return None;
        }
        Some(Reach {
            dest: self.destination(None),
            route: Vec::new(),
        })
    }
}

/// A change the store must make durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Upsert(Binding),
    Remove { aor: String, contact: String },
}

/// The registrar's state.
pub struct Registrar {
    config: RegistrarConfig,
    auth: DigestAuth,
    /// Who may authenticate: configured users, then those from the database.
    users: HashMap<String, Credentials>,
    bindings: HashMap<String, Vec<Binding>>,
    /// Users that exist (configured, or seen registering): 480 rather than 404 when unbound.
    known: HashSet<String>,
}

/// What proves a user: the password's HA1 per algorithm (a plain password from the config
/// is hashed at load and not kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
}

impl Credentials {
    /// Both HA1 values of `password` in `realm`.
    pub fn from_password(user: &str, realm: &str, password: &str) -> Credentials {
        let secret = format!("{user}:{realm}:{password}");
        Credentials {
            ha1_md5: Some(Algorithm::Md5.hash(&secret)),
            ha1_sha256: Some(Algorithm::Sha256.hash(&secret)),
        }
    }

    fn ha1(&self, alg: Algorithm) -> Option<String> {
        match alg {
            Algorithm::Md5 => self.ha1_md5.clone(),
            Algorithm::Sha256 => self.ha1_sha256.clone(),
        }
    }
}

/// Which challenge a request gets: REGISTER the registrar's (401, WWW-Authenticate), an
/// INVITE the proxy's (407, Proxy-Authenticate), as RFC 3261 22.3 has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    Register,
    Invite,
}

impl AuthKind {
    fn credentials_header(self) -> &'static str {
        match self {
            AuthKind::Register => "Authorization",
            AuthKind::Invite => "Proxy-Authorization",
        }
    }
}

/// A request that did not authenticate: the answer to send, and whether it carried
/// credentials that failed (not merely none yet, or an old nonce), which count toward a ban.
pub struct Refusal {
    pub response: Box<Response>,
    pub failed: bool,
}

/// What handling a REGISTER produced.
pub struct Outcome {
    pub response: Response,
    pub changes: Vec<Change>,
}

impl Registrar {
    pub fn new(config: RegistrarConfig, loaded: Vec<Binding>) -> Self {
        let auth = DigestAuth::new(
            &config.realm,
            config.nonce_lifetime_s,
            &config.digest_algorithms,
        );
        let mut bindings: HashMap<String, Vec<Binding>> = HashMap::new();
        let mut known: HashSet<String> = config.users.iter().map(|u| u.username.clone()).collect();
        for b in loaded {
            known.insert(b.aor.clone());
            bindings.entry(b.aor.clone()).or_default().push(b);
        }
        let mut registrar = Registrar {
            config,
            auth,
            users: HashMap::new(),
            bindings,
            known,
        };
        registrar.set_stored_users(Vec::new());
        registrar
    }

    /// The users kept in the database (`warden user add`), beside the configured ones; a
    /// configured user of the same name wins.
    pub fn set_stored_users(&mut self, stored: Vec<(String, Credentials)>) {
        let realm = &self.config.realm;
        let mut users: HashMap<String, Credentials> = stored.into_iter().collect();
        for u in &self.config.users {
            let credentials = match &u.password {
                Some(p) => Credentials::from_password(&u.username, realm, p),
                None => Credentials {
                    ha1_md5: u.ha1.clone(),
                    ha1_sha256: u.ha1_sha256.clone(),
                },
            };
            users.insert(u.username.clone(), credentials);
        }
        self.known.extend(users.keys().cloned());
        self.users = users;
    }

    /// How many users may authenticate.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Whether this user exists, bound or not.
    /// Every binding still valid at `now_s`, by address of record.
    pub fn all(&self, now_s: u64) -> Vec<&Binding> {
        let mut out: Vec<&Binding> = self
            .bindings
            .values()
            .flatten()
            .filter(|b| b.expires_at > now_s)
            .collect();
        out.sort_by(|a, b| (&a.aor, &a.contact).cmp(&(&b.aor, &b.contact)));
        out
    }

    pub fn knows(&self, aor: &str) -> bool {
        self.known.contains(aor)
    }

    /// Current bindings of a user, newest expiry first.
    pub fn lookup(&self, aor: &str, now_s: u64) -> Vec<&Binding> {
        let mut out: Vec<&Binding> = self
            .bindings
            .get(aor)
            .map(|v| v.iter().filter(|b| b.expires_at > now_s).collect())
            .unwrap_or_default();
        out.sort_by_key(|b| std::cmp::Reverse(b.expires_at));
        out
    }

    pub fn binding_count(&self) -> usize {
        self.bindings.values().map(Vec::len).sum()
    }

    /// A binding another cluster node took or dropped. One this node held for the same
    /// contact gives way (the phone registered again elsewhere): the changes say what
    /// this node's own store must forget.
    pub fn apply_remote(&mut self, node: &str, change: Change) -> Vec<Change> {
        let mut own_dropped = Vec::new();
        match change {
            Change::Upsert(mut b) => {
                b.node = Some(node.to_owned());
                self.known.insert(b.aor.clone());
                let list = self.bindings.entry(b.aor.clone()).or_default();
                if let Some(old) = list.iter().find(|o| o.contact == b.contact)
                    && old.node.is_none()
                {
                    own_dropped.push(Change::Remove {
                        aor: old.aor.clone(),
                        contact: old.contact.clone(),
                    });
                }
                list.retain(|o| o.contact != b.contact);
                list.push(b);
            }
            Change::Remove { aor, contact } => {
                if let Some(list) = self.bindings.get_mut(&aor) {
                    list.retain(|o| o.contact != contact || o.node.is_none());
                    if list.is_empty() {
                        self.bindings.remove(&aor);
                    }
                }
            }
        }
        own_dropped
    }

    /// Every binding the cluster's other nodes hold, read afresh (after a reconnection):
    /// it replaces what this node knew of them; its own bindings stay.
    pub fn replace_remote(&mut self, remote: Vec<Binding>) {
        for list in self.bindings.values_mut() {
            list.retain(|b| b.node.is_none());
        }
        for b in remote {
            self.known.insert(b.aor.clone());
            let list = self.bindings.entry(b.aor.clone()).or_default();
            if !list.iter().any(|o| o.contact == b.contact) {
                list.push(b);
            }
        }
        self.bindings.retain(|_, v| !v.is_empty());
    }

    /// Drop bindings whose time has come. Only this node's own expiries are changes to
    /// store (another node's bindings are its to remove).
    pub fn expire(&mut self, now_s: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        for list in self.bindings.values_mut() {
            list.retain(|b| {
                let live = b.expires_at > now_s;
                if !live && b.node.is_none() {
                    tracing::info!(aor = %b.aor, contact = %b.contact, "registration expired");
                    changes.push(Change::Remove {
                        aor: b.aor.clone(),
                        contact: b.contact.clone(),
                    });
                }
                live
            });
        }
        self.bindings.retain(|_, v| !v.is_empty());
        changes
    }

    /// Whether REGISTER must authenticate (`registrar.auth`).
    pub fn register_needs_auth(&self) -> bool {
        self.config.auth
    }

    /// Check `request`'s credentials for `user` (who must be the one authenticating):
    /// `Err` carries the challenge or refusal to send instead of going on.
    pub fn authenticate(
        &self,
        request: &Request,
        user: &str,
        kind: AuthKind,
        now_s: u64,
    ) -> Result<(), Refusal> {
        let auth = &self.auth;
        let header = request.header(kind.credentials_header());
        let (verdict, claimed) = match &header {
            Some(h) => auth.verify(h, request.method().as_str(), now_s, |u, alg| {
                self.users.get(u).and_then(|c| c.ha1(alg))
            }),
            None => (Verdict::Denied("no credentials"), None),
        };
        let stale = match verdict {
            Verdict::Ok if claimed.as_deref() == Some(user) => return Ok(()),
            Verdict::Ok => {
                tracing::warn!(user, "credentials of another user refused");
                return Err(Refusal {
                    response: Box::new(Response::to_request(request, 403, reason_phrase(403))),
                    failed: true,
                });
            }
            Verdict::Stale => true,
            Verdict::Denied(why) => {
                if header.is_some() {
                    tracing::warn!(user, reason = why, "authentication failed");
                }
                false
            }
        };
        let (status, challenge_header) = match kind {
            AuthKind::Register => (401, "WWW-Authenticate"),
            AuthKind::Invite => (407, "Proxy-Authenticate"),
        };
        let mut r = Response::to_request(request, status, reason_phrase(status));
        r.set_to_tag(&crate::call::new_tag());
        for c in auth.challenges(now_s, stale) {
            let _ = r.push_header(challenge_header, &c);
        }
        Err(Refusal {
            response: Box::new(r),
            failed: header.is_some() && !stale,
        })
    }

    /// Handle an authenticated REGISTER (RFC 3261 10.3 steps 5-8).
    pub fn register(&mut self, request: &Request, source: &Destination, now_s: u64) -> Outcome {
        let fail = |status, reason: &str| Outcome {
            response: Response::to_request(request, status, reason),
            changes: Vec::new(),
        };
        let Some(aor) = request.to().and_then(|t| t.uri.user()) else {
            return fail(404, reason_phrase(404));
        };
        let (Some(call_id), Some(cseq)) = (request.call_id(), request.cseq()) else {
            return fail(400, reason_phrase(400));
        };
        let contacts = match request.contacts() {
            Ok(c) => c,
            Err(m) => return fail(m.status, &m.reason),
        };
        let header_expires = request.expires();
        let mut changes = Vec::new();
        if contacts.iter().any(|c| matches!(c, Contact::Star)) {
            if contacts.len() != 1 || header_expires != Some(0) {
                return fail(400, reason_phrase(400));
            }
            for b in self.bindings.remove(&aor).unwrap_or_default() {
                changes.push(Change::Remove {
                    aor: b.aor,
                    contact: b.contact,
                });
            }
            tracing::info!(aor = %aor, "unregistered all contacts");
        }
        // Validate everything before changing anything: a REGISTER applies whole or not at all.
        let mut wanted = Vec::new();
        for c in &contacts {
            let Contact::Address(addr) = c else { continue };
            let expires = addr
                .param("expires")
                .and_then(|e| e.parse::<u32>().ok())
                .or(header_expires)
                .unwrap_or(self.config.default_expires);
            if expires != 0 && expires < self.config.min_expires {
                let mut r = Response::to_request(request, 423, reason_phrase(423));
                let _ = r.push_header("Min-Expires", &self.config.min_expires.to_string());
                return Outcome {
                    response: r,
                    changes: Vec::new(),
                };
            }
            wanted.push((addr.uri.to_string(), expires.min(self.config.max_expires)));
        }
        self.known.insert(aor.clone());
        let list = self.bindings.entry(aor.clone()).or_default();
        for (contact, _) in &wanted {
            if let Some(b) = list.iter().find(|b| &b.contact == contact)
                && b.call_id == call_id
                && b.cseq >= cseq.seq
            {
                return fail(400, "CSeq out of order");
            }
        }
        let user_agent = request.header("User-Agent");
        let path = crate::sip::dialog::route_set(request.address_list("Path"), false);
        for (contact, expires) in wanted {
            list.retain(|b| b.contact != contact);
            if expires == 0 {
                tracing::info!(aor = %aor, contact = %contact, "unregistered");
                changes.push(Change::Remove {
                    aor: aor.clone(),
                    contact,
                });
                continue;
            }
            let binding = Binding {
                aor: aor.clone(),
                contact: contact.clone(),
                expires_at: now_s + u64::from(expires),
                call_id: call_id.clone(),
                cseq: cseq.seq,
                transport: source.transport,
                source: source.addr,
                user_agent: user_agent.clone(),
                path: path.clone(),
                node: None,
            };
            tracing::info!(aor = %aor, contact = %contact, expires, from = %source.addr, "registered");
            list.push(binding.clone());
            changes.push(Change::Upsert(binding));
        }
        if list.len() > self.config.max_contacts {
            // Oldest first out: a phone that re-registers keeps working.
            list.sort_by_key(|b| std::cmp::Reverse(b.expires_at));
            for b in list.split_off(self.config.max_contacts) {
                changes.push(Change::Remove {
                    aor: b.aor,
                    contact: b.contact,
                });
            }
        }
        let mut response = Response::to_request(request, 200, reason_phrase(200));
        response.set_to_tag(&crate::call::new_tag());
        // RFC 3327 5.3: the Path stored is echoed to a UA that supports it.
        let supports_path = request
            .header("Supported")
            .is_some_and(|s| s.split(',').any(|o| o.trim().eq_ignore_ascii_case("path")));
        if supports_path {
            for hop in &path {
                let _ = response.push_header("Path", hop);
            }
        }
        for b in self.lookup(&aor, now_s) {
            let _ = response.push_header(
                "Contact",
                &format!("<{}>;expires={}", b.contact, b.expires_at - now_s),
            );
        }
        if self.bindings.get(&aor).is_some_and(Vec::is_empty) {
            self.bindings.remove(&aor);
        }
        Outcome { response, changes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{Limits, Message};

    fn register(contact: &str, expires: Option<u32>, cseq: u32) -> Request {
        let mut raw = format!(
            "REGISTER sip:warden SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@warden>;tag=f\r\nTo: <sip:alice@warden>\r\n\
             Call-ID: reg-1\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\n"
        );
        if let Some(e) = expires {
            raw.push_str(&format!("Expires: {e}\r\n"));
        }
        raw.push_str("Content-Length: 0\r\n\r\n");
        match Message::parse_datagram(raw.into(), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn source() -> Destination {
        Destination {
            transport: Transport::Udp,
            addr: "203.0.113.9:40000".parse().unwrap(),
            conn: None,
        }
    }

    fn registrar() -> Registrar {
        Registrar::new(RegistrarConfig::default(), Vec::new())
    }

    #[test]
    fn adds_refreshes_queries_and_removes() {
        let mut r = registrar();
        let out = r.register(
            &register("<sip:alice@10.0.0.5:5060>", Some(600), 1),
            &source(),
            100,
        );
        assert_eq!(out.response.status(), 200);
        assert_eq!(out.response.headers("Contact").len(), 1);
        assert_eq!(r.lookup("alice", 100).len(), 1);
        // A second contact for the same AOR, then a refresh of the first.
        r.register(
            &register("<sip:alice@10.0.0.6:5060>", Some(600), 2),
            &source(),
            101,
        );
        assert_eq!(r.lookup("alice", 101).len(), 2);
        r.register(
            &register("<sip:alice@10.0.0.5:5060>", Some(900), 3),
            &source(),
            102,
        );
        assert_eq!(r.lookup("alice", 102)[0].expires_at, 1002);
        // A query (no Contact) lists both and changes nothing.
        let q = r.register(&register_without_contact(4), &source(), 103);
        assert_eq!(q.response.headers("Contact").len(), 2);
        assert!(q.changes.is_empty());
        // expires=0 removes one; * removes the rest.
        r.register(
            &register("<sip:alice@10.0.0.6:5060>;expires=0", None, 5),
            &source(),
            104,
        );
        assert_eq!(r.lookup("alice", 104).len(), 1);
        let out = r.register(&register("*", Some(0), 6), &source(), 105);
        assert_eq!(out.response.status(), 200);
        assert!(r.lookup("alice", 105).is_empty());
    }

    #[test]
    fn another_nodes_bindings_are_looked_up_replaced_and_never_stored_here() {
        let mut r = registrar();
        r.register(
            &register("<sip:alice@10.0.0.5:5060>", Some(600), 1),
            &source(),
            100,
        );
        let mut theirs = r.lookup("alice", 100)[0].clone();
        theirs.contact = "sip:alice@10.0.0.9:5060".into();
        theirs.expires_at = 400;
        assert!(
            r.apply_remote("b", Change::Upsert(theirs.clone()))
                .is_empty()
        );
        assert_eq!(r.lookup("alice", 100).len(), 2);
        assert_eq!(
            r.lookup("alice", 100)[1].node.as_deref(),
            Some("b"),
            "known as node b's"
        );
        // The phone registers its first contact again through node b: ours gives way
        // and leaves our store.
        let mut moved = theirs.clone();
        moved.contact = "sip:alice@10.0.0.5:5060".into();
        assert_eq!(
            r.apply_remote("b", Change::Upsert(moved)),
            [Change::Remove {
                aor: "alice".into(),
                contact: "sip:alice@10.0.0.5:5060".into()
            }]
        );
        // Node b's bindings expire here too, but their removal is node b's to store.
        assert!(r.expire(500).is_empty());
        assert!(r.lookup("alice", 500).is_empty());
        // A fresh snapshot replaces what we knew of the others.
        r.replace_remote(vec![Binding {
            node: Some("c".into()),
            ..theirs
        }]);
        assert_eq!(r.lookup("alice", 100)[0].node.as_deref(), Some("c"));
    }

    #[test]
    fn a_path_is_stored_echoed_to_who_supports_it_and_reached_along() {
        let mut r = registrar();
        let raw = "REGISTER sip:warden SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKp\r\n\
                   Max-Forwards: 70\r\nFrom: <sip:alice@warden>;tag=f\r\nTo: <sip:alice@warden>\r\n\
                   Call-ID: reg-p\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@192.168.1.7:5060>\r\n\
                   Path: <sip:10.0.0.1:5070;lr;received=sip:198.51.100.4:4000>\r\nSupported: path\r\n\
                   Content-Length: 0\r\n\r\n";
        let Ok(Message::Request(req)) = Message::parse_datagram(raw.into(), &Limits::default())
        else {
            panic!("parse");
        };
        let out = r.register(&req, &source(), 100);
        assert_eq!(
            out.response.header("Path").as_deref(),
            Some("<sip:10.0.0.1:5070;lr;received=sip:198.51.100.4:4000>")
        );
        let reach = r.lookup("alice", 100)[0].reach().expect("reachable");
        assert_eq!(reach.dest.addr, "10.0.0.1:5070".parse().unwrap());
        assert_eq!(reach.route.len(), 1);
    }

    fn register_without_contact(cseq: u32) -> Request {
        let raw = format!(
            "REGISTER sip:warden SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKq{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@warden>;tag=f\r\nTo: <sip:alice@warden>\r\n\
             Call-ID: reg-1\r\nCSeq: {cseq} REGISTER\r\nContent-Length: 0\r\n\r\n"
        );
        match Message::parse_datagram(raw.into(), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn too_brief_interval_gets_423_with_min_expires() {
        let mut r = registrar();
        let out = r.register(&register("<sip:alice@10.0.0.5>", Some(10), 1), &source(), 0);
        assert_eq!(out.response.status(), 423);
        assert_eq!(out.response.header("Min-Expires").as_deref(), Some("60"));
        assert!(r.lookup("alice", 0).is_empty());
    }

    #[test]
    fn long_intervals_are_clamped_and_bindings_expire_on_time() {
        let mut r = registrar();
        r.register(
            &register("<sip:alice@10.0.0.5>", Some(999_999), 1),
            &source(),
            0,
        );
        assert_eq!(r.lookup("alice", 0)[0].expires_at, 3600);
        assert!(r.expire(3599).is_empty());
        assert_eq!(r.expire(3600).len(), 1);
        assert!(r.lookup("alice", 3600).is_empty());
    }

    #[test]
    fn stale_cseq_is_refused() {
        let mut r = registrar();
        r.register(
            &register("<sip:alice@10.0.0.5>", Some(600), 5),
            &source(),
            0,
        );
        let out = r.register(&register("<sip:alice@10.0.0.5>", Some(0), 4), &source(), 1);
        assert_eq!(out.response.status(), 400);
        assert_eq!(r.lookup("alice", 1).len(), 1);
    }

    #[test]
    fn nat_detection_picks_the_flow_for_private_contacts() {
        let mut r = registrar();
        r.register(
            &register("<sip:alice@10.0.0.5:5060>", Some(600), 1),
            &source(),
            0,
        );
        assert_eq!(
            r.lookup("alice", 0)[0].destination(None).addr,
            source().addr
        );
        let local = Destination {
            addr: "10.0.0.5:40000".parse().unwrap(),
            ..source()
        };
        r.register(
            &register("<sip:alice@10.0.0.5:5062>", Some(600), 2),
            &local,
            0,
        );
        let b = r
            .lookup("alice", 0)
            .into_iter()
            .find(|b| b.contact.contains("5062"))
            .cloned();
        assert_eq!(
            b.unwrap().destination(None).addr,
            "10.0.0.5:5062".parse().unwrap()
        );
    }
}

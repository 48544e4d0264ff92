//! Digest authentication (RFC 3261 22.4, RFC 8760 SHA-256): expiring nonces that prove
//! themselves (no state until used), response checking, and replay protection: each nonce
//! count is taken once (RFC 7616 3.3). Passwords and HA1 values never reach a log line.

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};

/// Which hash a challenge or credential uses (`registrar.digest_algorithms` names them
/// as challenges do: "MD5", "SHA-256").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Algorithm {
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "SHA-256")]
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn parse(s: &str) -> Option<Algorithm> {
        match s.to_ascii_uppercase().as_str() {
            "MD5" => Some(Algorithm::Md5),
            "SHA-256" => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    pub fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex(&Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex(&Sha256::digest(data.as_bytes())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Result of checking an Authorization header.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Right password, old nonce: challenge again with `stale=true` (RFC 3261 22.4).
    Stale,
    Denied(&'static str),
}

/// Issues and checks nonces; one per server, keyed by a random secret.
pub struct DigestAuth {
    realm: String,
    /// The algorithms challenged, in the order challenges list them.
    algorithms: Vec<Algorithm>,
    secret: [u8; 32],
    nonce_lifetime_s: u64,
    /// Nonces that authenticated a request: when issued, and the highest nonce count used
    /// (0: used without qop, which allows one use). Only verified credentials enter, and
    /// expired nonces leave, so it stays as small as the live clients.
    used: std::sync::Mutex<std::collections::HashMap<String, (u64, u32)>>,
}

/// Nonces remembered before the expired ones are swept out.
const SWEEP_AT: usize = 4096;

type HmacSha256 = Hmac<Sha256>;

impl DigestAuth {
    pub fn new(realm: &str, nonce_lifetime_s: u64, algorithms: &[Algorithm]) -> Self {
        DigestAuth {
            realm: realm.to_owned(),
            algorithms: algorithms.to_vec(),
            secret: rand::random(),
            nonce_lifetime_s,
            used: Default::default(),
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn mac(&self, issued: u64, salt: u64) -> String {
        // HMAC over the issue time and a random salt: a nonce proves we made it and when,
        // without any state, and no two challenges share one.
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.secret) else {
            return String::new();
        };
        mac.update(&issued.to_be_bytes());
        mac.update(&salt.to_be_bytes());
        hex(&mac.finalize().into_bytes())
    }

    pub fn nonce(&self, now_s: u64) -> String {
        let salt: u64 = rand::random();
        format!("{now_s:x}.{salt:x}.{}", self.mac(now_s, salt))
    }

    /// Take nonce count `count` of `nonce` (issued at `issued`; 0 without qop): false when
    /// it was taken before (a replay).
    fn take_count(&self, nonce: &str, issued: u64, count: u32, now_s: u64) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if used.len() >= SWEEP_AT {
            let lifetime = self.nonce_lifetime_s;
            used.retain(|_, (at, _)| now_s.saturating_sub(*at) <= lifetime);
        }
        match used.get_mut(nonce) {
            Some((_, last)) if count > *last => {
                *last = count;
                true
            }
            Some(_) => false,
            None => {
                used.insert(nonce.to_owned(), (issued, count));
                true
            }
        }
    }

    /// WWW-Authenticate values to send, one per algorithm in the configured order (RFC 8760
    /// 2.4: a phone picks the first it supports; many read only the first).
    pub fn challenges(&self, now_s: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now_s);
        self.algorithms
            .iter()
            .map(|alg| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{}",
                    self.realm,
                    alg.name(),
                    if stale { ", stale=true" } else { "" }
                )
            })
            .collect()
    }

    /// Check credentials for `method`; `ha1_for` yields HA1 for (user, realm, algorithm).
    pub fn verify(
        &self,
        header: &str,
        method: &str,
        now_s: u64,
        ha1_for: impl Fn(&str, Algorithm) -> Option<String>,
    ) -> (Verdict, Option<String>) {
        let Some(params) = parse_digest(header) else {
            return (Verdict::Denied("not a Digest credential"), None);
        };
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let (Some(user), Some(nonce), Some(uri), Some(response)) =
            (get("username"), get("nonce"), get("uri"), get("response"))
        else {
            return (Verdict::Denied("incomplete credentials"), None);
        };
        let user_owned = Some(user.to_owned());
        if get("realm") != Some(self.realm.as_str()) {
            return (Verdict::Denied("wrong realm"), user_owned);
        }
        let Some(alg) = Algorithm::parse(get("algorithm").unwrap_or("MD5")) else {
            return (Verdict::Denied("unsupported algorithm"), user_owned);
        };
        if !self.algorithms.contains(&alg) {
            return (Verdict::Denied("algorithm not offered"), user_owned);
        }
        let Some(ha1) = ha1_for(user, alg) else {
            return (Verdict::Denied("unknown user"), user_owned);
        };
        let ha2 = alg.hash(&format!("{method}:{uri}"));
        let (expected, count) = match get("qop") {
            Some("auth") => {
                let (Some(nc), Some(cnonce)) = (get("nc"), get("cnonce")) else {
                    return (Verdict::Denied("qop without nc/cnonce"), user_owned);
                };
                let Some(count) = u32::from_str_radix(nc, 16).ok().filter(|c| *c > 0) else {
                    return (Verdict::Denied("malformed nonce count"), user_owned);
                };
                let expected = alg.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
                (expected, count)
            }
            None => (alg.hash(&format!("{ha1}:{nonce}:{ha2}")), 0),
            Some(_) => return (Verdict::Denied("unsupported qop"), user_owned),
        };
        if !constant_time_eq(
            expected.as_bytes(),
            response.to_ascii_lowercase().as_bytes(),
        ) {
            return (Verdict::Denied("wrong password"), user_owned);
        }
        let mut parts = nonce.split('.');
        // The password is right but the nonce is not ours (another instance's, or from
        // before a restart): challenge again with stale=true, as for an old nonce, so a
        // phone re-registers without asking its user and is not counted as failing.
        let (Some(issued_hex), Some(salt_hex), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return (Verdict::Stale, user_owned);
        };
        let (Ok(issued), Ok(salt)) = (
            u64::from_str_radix(issued_hex, 16),
            u64::from_str_radix(salt_hex, 16),
        ) else {
            return (Verdict::Stale, user_owned);
        };
        if !constant_time_eq(mac.as_bytes(), self.mac(issued, salt).as_bytes()) {
            return (Verdict::Stale, user_owned);
        }
        if now_s.saturating_sub(issued) > self.nonce_lifetime_s {
            return (Verdict::Stale, user_owned);
        }
        if !self.take_count(nonce, issued, count, now_s) {
            return (Verdict::Denied("replayed nonce count"), user_owned);
        }
        (Verdict::Ok, user_owned)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Digest k=v, k="v"` into pairs (names lower-cased).
fn parse_digest(header: &str) -> Option<Vec<(String, String)>> {
    let rest = header.trim();
    let (scheme, rest) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.trim().is_empty() {
            break;
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            let mut v = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => v.extend(chars.next()),
                    '"' => break,
                    c => v.push(c),
                }
            }
            v
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect()
        };
        out.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Some(out)
}

/// A client's answer to a challenge; used by tests and, later, by outbound registration.
pub fn answer(
    challenge_nonce: &str,
    realm: &str,
    alg: Algorithm,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> String {
    let ha1 = alg.hash(&format!("{user}:{realm}:{password}"));
    let ha2 = alg.hash(&format!("{method}:{uri}"));
    let cnonce = "0a4f113b";
    let response = alg.hash(&format!(
        "{ha1}:{challenge_nonce}:00000001:{cnonce}:auth:{ha2}"
    ));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{challenge_nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={}, qop=auth, nc=00000001, cnonce=\"{cnonce}\"",
        alg.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha1(alg: Algorithm) -> impl Fn(&str, Algorithm) -> Option<String> {
        move |user, a| (user == "alice" && a == alg).then(|| a.hash("alice:warden:secret"))
    }

    #[test]
    fn md5_and_sha256_answers_verify() {
        let auth = DigestAuth::new("warden", 300, &[Algorithm::Md5, Algorithm::Sha256]);
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let nonce = auth.nonce(1000);
            let h = answer(
                &nonce, "warden", alg, "alice", "secret", "REGISTER", "sip:w",
            );
            assert_eq!(auth.verify(&h, "REGISTER", 1010, ha1(alg)).0, Verdict::Ok);
        }
    }

    #[test]
    fn a_nonce_count_is_taken_once_and_counts_must_grow() {
        let auth = DigestAuth::new("warden", 300, &[Algorithm::Md5, Algorithm::Sha256]);
        let nonce = auth.nonce(1000);
        let first = answer(
            &nonce,
            "warden",
            Algorithm::Sha256,
            "alice",
            "secret",
            "REGISTER",
            "sip:w",
        );
        let check = |h: &str| auth.verify(h, "REGISTER", 1001, ha1(Algorithm::Sha256)).0;
        assert_eq!(check(&first), Verdict::Ok);
        assert_eq!(
            check(&first),
            Verdict::Denied("replayed nonce count"),
            "the same request again"
        );
        // The client's next request on the same nonce counts on: accepted.
        let second = first.replace("nc=00000001", "nc=00000002").replace(
            &response_of(&first),
            &Algorithm::Sha256.hash(&format!(
                "{}:{nonce}:00000002:0a4f113b:auth:{}",
                Algorithm::Sha256.hash("alice:warden:secret"),
                Algorithm::Sha256.hash("REGISTER:sip:w")
            )),
        );
        assert_eq!(check(&second), Verdict::Ok);
        assert_eq!(
            check(&first),
            Verdict::Denied("replayed nonce count"),
            "going back"
        );
        // Every challenge's nonce is its own, even within one second.
        assert_ne!(auth.nonce(1000), auth.nonce(1000));
    }

    fn response_of(header: &str) -> String {
        header
            .split("response=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn wrong_passwords_are_refused_and_old_or_foreign_nonces_are_stale() {
        let auth = DigestAuth::new("warden", 300, &[Algorithm::Md5, Algorithm::Sha256]);
        let nonce = auth.nonce(1000);
        let bad = answer(
            &nonce,
            "warden",
            Algorithm::Md5,
            "alice",
            "nope",
            "REGISTER",
            "sip:w",
        );
        assert_eq!(
            auth.verify(&bad, "REGISTER", 1000, ha1(Algorithm::Md5)).0,
            Verdict::Denied("wrong password")
        );
        let good = answer(
            &nonce,
            "warden",
            Algorithm::Md5,
            "alice",
            "secret",
            "REGISTER",
            "sip:w",
        );
        assert_eq!(
            auth.verify(&good, "REGISTER", 1400, ha1(Algorithm::Md5)).0,
            Verdict::Stale
        );
        let forged = answer(
            "3e8.1.00ff",
            "warden",
            Algorithm::Md5,
            "alice",
            "secret",
            "REGISTER",
            "sip:w",
        );
        // A nonce not ours with the right password (another instance's, or from before a
        // restart): stale, so the phone answers a fresh challenge without failing.
        assert_eq!(
            auth.verify(&forged, "REGISTER", 1000, ha1(Algorithm::Md5))
                .0,
            Verdict::Stale
        );
        let forged_bad = forged.replace(&response_of(&forged), &"0".repeat(32));
        assert_eq!(
            auth.verify(&forged_bad, "REGISTER", 1000, ha1(Algorithm::Md5))
                .0,
            Verdict::Denied("wrong password")
        );
    }
}

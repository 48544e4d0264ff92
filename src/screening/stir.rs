//! STIR/SHAKEN verification (RFC 8224, RFC 8225, RFC 8588, ATIS-1000074): the Identity
//! header's PASSporT checked against its x5u certificate, the certificate against the
//! configured STI-CA trust anchors. Pure: the driver fetches the certificate.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use x509_parser::prelude::*;

/// What verification concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stir {
    /// No Identity header.
    Unsigned,
    /// Verified, with the signer's attestation (A, B or C).
    Verified { attestation: String },
    /// Not verified: the RFC 8224 response code (403 stale, 436 bad info, 437 unsupported
    /// credential, 438 invalid identity) and why.
    Failed { code: u16, reason: String },
}

impl Stir {
    /// The verstat value for P-Asserted-Identity and From (3GPP TS 24.229).
    pub fn verstat(&self) -> &'static str {
        match self {
            Stir::Unsigned => "No-TN-Validation",
            Stir::Verified { .. } => "TN-Validation-Passed",
            Stir::Failed { .. } => "TN-Validation-Failed",
        }
    }

    pub fn attestation(&self) -> Option<&str> {
        match self {
            Stir::Verified { attestation } => Some(attestation),
            _ => None,
        }
    }

    fn failed(code: u16, reason: impl Into<String>) -> Stir {
        Stir::Failed {
            code,
            reason: reason.into(),
        }
    }
}

/// The parts of an Identity header: the compact JWS and its `info` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeader {
    pub header_b64: String,
    pub payload_b64: String,
    pub signature_b64: String,
    pub info: Option<String>,
    pub alg: Option<String>,
    pub ppt: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    ppt: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    x5u: String,
}

#[derive(Debug, Deserialize)]
struct Tn {
    tn: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct Passport {
    attest: String,
    dest: Tn,
    iat: i64,
    orig: Tn,
    #[serde(default)]
    #[allow(dead_code)] // carried for the record; not checked
    origid: Option<String>,
}

/// Split an Identity header value; Err is the 438 reason.
pub fn parse_header(value: &str) -> Result<IdentityHeader, String> {
    let mut parts = value.trim().split(';');
    let token = parts.next().unwrap_or_default().trim();
    let pieces: Vec<&str> = token.split('.').collect();
    let [h, p, s] = pieces[..] else {
        return Err("the Identity token is not a full-form JWS (header.payload.signature)".into());
    };
    let mut out = IdentityHeader {
        header_b64: h.to_owned(),
        payload_b64: p.to_owned(),
        signature_b64: s.to_owned(),
        info: None,
        alg: None,
        ppt: None,
    };
    for param in parts {
        match param.trim().split_once('=') {
            Some(("info", v)) => out.info = Some(v.trim().trim_matches(['<', '>']).to_owned()),
            Some(("alg", v)) => out.alg = Some(v.trim().to_owned()),
            Some(("ppt", v)) => out.ppt = Some(v.trim().trim_matches('"').to_owned()),
            _ => {}
        }
    }
    Ok(out)
}

/// The certificate URL a header names (to fetch before verifying), if it parses.
pub fn x5u(value: &str) -> Option<String> {
    let h = parse_header(value).ok()?;
    let header: JoseHeader =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&h.header_b64).ok()?).ok()?;
    Some(header.x5u)
}

/// Where x5u URLs may point (ATIS-1000074: https on 443 or 8443).
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_age_s: u64,
    pub allowed_ports: Vec<u16>,
}

/// A telephone number as STIR compares them: digits only (a leading + dropped).
pub fn tn(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

/// Verify `identity` (the header value) for a call from `orig` to `dest` (numbers as the
/// SIP headers give them) at unix time `now`, with the certificate chain fetched from its
/// x5u (`chain_pem`: leaf first, intermediates after, or the fetch error) and the trust
/// anchors (DER).
pub fn verify(
    identity: &str,
    orig: &str,
    dest: &str,
    now: i64,
    chain_pem: Result<&[u8], String>,
    anchors: &[Vec<u8>],
    policy: &Policy,
) -> Stir {
    let h = match parse_header(identity) {
        Ok(h) => h,
        Err(e) => return Stir::failed(438, e),
    };
    let decode = |b64: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| format!("the PASSporT {what} is not base64url"))
    };
    let header: JoseHeader = match decode(&h.header_b64, "header")
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("PASSporT header: {e}")))
    {
        Ok(v) => v,
        Err(e) => return Stir::failed(438, e),
    };
    if header.alg != "ES256" || h.alg.as_deref().is_some_and(|a| a != "ES256") {
        return Stir::failed(
            437,
            format!("alg {:?}: only ES256 is supported", header.alg),
        );
    }
    if header.ppt.as_deref() != Some("shaken")
        || header.typ.as_deref().is_some_and(|t| t != "passport")
    {
        return Stir::failed(
            438,
            "not a SHAKEN PASSporT (ppt must be shaken, typ passport)",
        );
    }
    if h.info.as_deref().is_some_and(|i| i != header.x5u) {
        return Stir::failed(438, "the info parameter differs from the PASSporT's x5u");
    }
    let passport: Passport = match decode(&h.payload_b64, "payload")
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("PASSporT claims: {e}")))
    {
        Ok(v) => v,
        Err(e) => return Stir::failed(438, e),
    };
    if !["A", "B", "C"].contains(&passport.attest.as_str()) {
        return Stir::failed(
            438,
            format!("attest {:?} is not A, B or C", passport.attest),
        );
    }
    // RFC 8588: orig.tn a string, dest.tn an array of strings.
    let Some(orig_tn) = passport.orig.tn.as_str() else {
        return Stir::failed(438, "orig.tn is not a string");
    };
    let Some(dest_tns) = passport.dest.tn.as_array() else {
        return Stir::failed(438, "dest.tn is not an array");
    };
    if now.abs_diff(passport.iat) > policy.max_age_s {
        return Stir::failed(
            403,
            format!(
                "iat is {} s from now (over {} s): stale",
                now - passport.iat,
                policy.max_age_s
            ),
        );
    }
    if let Err(e) = x5u_allowed(&header.x5u, policy) {
        return Stir::failed(436, e);
    }
    let chain_pem = match chain_pem {
        Ok(c) => c,
        Err(e) => return Stir::failed(436, format!("cannot fetch {}: {e}", header.x5u)),
    };
    let chain = pem_certificates(chain_pem);
    let Some(leaf_der) = chain.first() else {
        return Stir::failed(436, format!("{} holds no PEM certificate", header.x5u));
    };
    let leaf = match parse_x509_certificate(leaf_der) {
        Ok((_, c)) => c,
        Err(e) => return Stir::failed(437, format!("the certificate does not parse: {e}")),
    };
    if let Err(e) = check_chain(&leaf, &chain[1..], anchors, now) {
        return Stir::failed(437, e);
    }
    if let Err(e) = tn_auth_list(&leaf) {
        return Stir::failed(437, e);
    }
    // ES256: raw R||S over "header.payload" (RFC 7518 3.4).
    let signature = match URL_SAFE_NO_PAD.decode(&h.signature_b64) {
        Ok(s) if s.len() == 64 => s,
        _ => {
            return Stir::failed(
                438,
                "the signature is not 64 bytes of base64url (ES256 R||S)",
            );
        }
    };
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        leaf.public_key().subject_public_key.data.as_ref(),
    );
    let signed = format!("{}.{}", h.header_b64, h.payload_b64);
    if key.verify(signed.as_bytes(), &signature).is_err() {
        return Stir::failed(
            438,
            "the signature does not verify with the x5u certificate's key",
        );
    }
    if tn(orig_tn) != tn(orig) {
        return Stir::failed(438, format!("orig.tn {orig_tn} is not the caller {orig}"));
    }
    if !dest_tns
        .iter()
        .filter_map(|d| d.as_str())
        .any(|d| tn(d) == tn(dest))
    {
        return Stir::failed(438, format!("dest.tn does not hold the callee {dest}"));
    }
    Stir::Verified {
        attestation: passport.attest,
    }
}

pub fn x5u_allowed(url: &str, policy: &Policy) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("x5u {url}: not https"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let port = match authority.rsplit_once(':') {
        Some((_, p)) if !authority.ends_with(']') => p
            .parse::<u16>()
            .map_err(|_| format!("x5u {url}: bad port"))?,
        _ => 443,
    };
    if !policy.allowed_ports.contains(&port) {
        return Err(format!(
            "x5u {url}: port {port} is not allowed (screening.stir.x5u_ports)"
        ));
    }
    Ok(())
}

/// The leaf chains, through the intermediates given, to one of the anchors, every link
/// valid at `now` and signed by the next (issuers are CAs).
fn check_chain(
    leaf: &X509Certificate,
    intermediates: &[Vec<u8>],
    anchors: &[Vec<u8>],
    now: i64,
) -> Result<(), String> {
    if anchors.is_empty() {
        return Err("no STI-CA trust anchors configured (screening.stir.trust_anchors)".into());
    }
    let at = ASN1Time::from_timestamp(now).map_err(|e| e.to_string())?;
    let (inter, roots) = (parse_all(intermediates), parse_all(anchors));
    let mut current = leaf.clone();
    for _ in 0..=inter.len() {
        if !current.validity().is_valid_at(at) {
            return Err(format!(
                "certificate {} is not valid at this time",
                current.subject()
            ));
        }
        let issued_by =
            |c: &X509Certificate| c.subject().as_raw() == current.issuer().as_raw() && c.is_ca();
        if let Some(root) = roots.iter().find(|r| issued_by(r)) {
            if !root.validity().is_valid_at(at) {
                return Err(format!(
                    "trust anchor {} is not valid at this time",
                    root.subject()
                ));
            }
            return current
                .verify_signature(Some(root.public_key()))
                .map_err(|_| {
                    format!(
                        "certificate {} is not signed by {}",
                        current.subject(),
                        root.subject()
                    )
                });
        }
        let Some(next) = inter.iter().find(|c| issued_by(c)) else {
            return Err(format!(
                "certificate {} does not chain to a trust anchor",
                current.subject()
            ));
        };
        current
            .verify_signature(Some(next.public_key()))
            .map_err(|_| {
                format!(
                    "certificate {} is not signed by {}",
                    current.subject(),
                    next.subject()
                )
            })?;
        current = next.clone();
    }
    Err("the chain is longer than the certificates given".into())
}

/// The DER of every certificate in a PEM text (other blocks skipped).
pub fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

/// The certificates of `ders` that parse.
fn parse_all(ders: &[Vec<u8>]) -> Vec<X509Certificate<'_>> {
    ders.iter()
        .filter_map(|d| parse_x509_certificate(d).ok().map(|(_, c)| c))
        .collect()
}

/// The TNAuthList extension (RFC 8226, OID 1.3.6.1.5.5.7.1.26): a SEQUENCE of TNEntry,
/// each [0] SPC, [1] range or [2] one number. Returns the service provider codes.
pub fn tn_auth_list(cert: &X509Certificate) -> Result<Vec<String>, String> {
    let oid = x509_parser::der_parser::oid!(1.3.6.1.5.5.7.1.26);
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid == oid)
        .ok_or("the certificate has no TNAuthList extension")?;
    parse_tn_auth_list(ext.value).ok_or_else(|| "the TNAuthList extension is malformed".to_owned())
}

/// DER: one element's (tag, content, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        (
            rest[..n]
                .iter()
                .fold(0usize, |a, b| a << 8 | usize::from(*b)),
            &rest[n..],
        )
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn parse_tn_auth_list(value: &[u8]) -> Option<Vec<String>> {
    let (tag, mut entries, rest) = der(value)?;
    if tag != 0x30 || !rest.is_empty() || entries.is_empty() {
        return None;
    }
    let mut spcs = Vec::new();
    while !entries.is_empty() {
        let (tag, content, rest) = der(entries)?;
        match tag {
            // spc [0] EXPLICIT IA5String
            0xa0 => {
                let (inner, text, tail) = der(content)?;
                if inner != 0x16 || !tail.is_empty() || !text.is_ascii() {
                    return None;
                }
                spcs.push(String::from_utf8_lossy(text).into_owned());
            }
            // range [1] / one [2]: well-formed enough to skip
            0xa1 | 0xa2 | 0x82 => {}
            _ => return None,
        }
        entries = rest;
    }
    Some(spcs)
}

#[cfg(test)]
mod tests;

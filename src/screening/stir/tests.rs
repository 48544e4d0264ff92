//! Verification against PASSporTs this test signs with its own STI-CA, SP certificate and
//! key, and (when the shared conformance data is beside the checkout) the public vectors.

use super::*;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

const NOW: i64 = 1_800_000_000;
const X5U: &str = "https://cert.example.org/sp.pem";

fn policy() -> Policy {
    Policy {
        max_age_s: 60,
        allowed_ports: vec![443, 8443],
    }
}

/// A test STI-CA and an SP certificate it issued, with the SP's signing key.
pub struct Pki {
    pub ca_der: Vec<u8>,
    pub sp_pem: String,
    pub sp_key: EcdsaKeyPair,
}

/// TNAuthList with one SPC (RFC 8226): SEQUENCE { [0] { IA5String spc } }.
pub fn tn_auth_list_der(spc: &str) -> Vec<u8> {
    let ia5 = [&[0x16, spc.len() as u8][..], spc.as_bytes()].concat();
    let entry = [&[0xa0, ia5.len() as u8][..], &ia5].concat();
    [&[0x30, entry.len() as u8][..], &entry].concat()
}

pub fn pki(tn_auth_list: Option<Vec<u8>>) -> Pki {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Test STI-CA");
    ca.not_before = rcgen::date_time_ymd(2026, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2030, 1, 1);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let sp_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut sp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    sp.distinguished_name
        .push(rcgen::DnType::CommonName, "SHAKEN 1234");
    sp.not_before = rcgen::date_time_ymd(2026, 6, 1);
    sp.not_after = rcgen::date_time_ymd(2028, 1, 1);
    if let Some(der) = tn_auth_list {
        sp.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 1, 26],
                der,
            ));
    }
    let sp_cert = sp.signed_by(&sp_key, &ca).unwrap();
    let signing = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &sp_key.serialize_der(),
        &SystemRandom::new(),
    )
    .unwrap();
    Pki {
        ca_der: ca.der().to_vec(),
        sp_pem: sp_cert.pem(),
        sp_key: signing,
    }
}

/// An Identity header signed with `key`.
pub fn identity(key: &EcdsaKeyPair, x5u: &str, orig: &str, dest: &str, iat: i64) -> String {
    let header = format!(r#"{{"alg":"ES256","ppt":"shaken","typ":"passport","x5u":"{x5u}"}}"#);
    let payload = format!(
        r#"{{"attest":"A","dest":{{"tn":["{dest}"]}},"iat":{iat},"orig":{{"tn":"{orig}"}},"origid":"123e4567-e89b-12d3-a456-426655440000"}}"#
    );
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!(
        "{input}.{};info=<{x5u}>;alg=ES256;ppt=shaken",
        URL_SAFE_NO_PAD.encode(sig.as_ref())
    )
}

fn check(p: &Pki, header: &str, orig: &str, dest: &str) -> Stir {
    verify(
        header,
        orig,
        dest,
        NOW,
        Ok(p.sp_pem.as_bytes()),
        std::slice::from_ref(&p.ca_der),
        &policy(),
    )
}

fn code(s: &Stir) -> u16 {
    match s {
        Stir::Failed { code, .. } => *code,
        Stir::Verified { .. } => 200,
        Stir::Unsigned => 0,
    }
}

#[test]
fn a_valid_passport_verifies_with_its_attestation() {
    let p = pki(Some(tn_auth_list_der("1234")));
    let h = identity(&p.sp_key, X5U, "12025550100", "12025550123", NOW - 5);
    let s = check(&p, &h, "+1 202 555 0100", "12025550123");
    assert_eq!(
        s,
        Stir::Verified {
            attestation: "A".into()
        }
    );
    assert_eq!(s.verstat(), "TN-Validation-Passed");
    let leaf = Pem::iter_from_buffer(p.sp_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = parse_x509_certificate(&leaf.contents).unwrap();
    assert_eq!(tn_auth_list(&cert).unwrap(), ["1234"]);
}

#[test]
fn each_failure_gets_its_rfc_8224_code() {
    let p = pki(Some(tn_auth_list_der("1234")));
    let good = |iat| identity(&p.sp_key, X5U, "12025550100", "12025550123", iat);
    // Stale.
    assert_eq!(
        code(&check(&p, &good(NOW - 61), "12025550100", "12025550123")),
        403
    );
    // Wrong signature: signed by another key.
    let other = pki(Some(tn_auth_list_der("9")));
    let forged = identity(&other.sp_key, X5U, "12025550100", "12025550123", NOW);
    assert_eq!(code(&check(&p, &forged, "12025550100", "12025550123")), 438);
    // TN mismatch, either end.
    assert_eq!(
        code(&check(&p, &good(NOW), "12025550199", "12025550123")),
        438
    );
    assert_eq!(
        code(&check(&p, &good(NOW), "12025550100", "12025550199")),
        438
    );
    // No TNAuthList, or a malformed one.
    let bare = pki(None);
    let h = identity(&bare.sp_key, X5U, "12025550100", "12025550123", NOW);
    let s = check(&bare, &h, "12025550100", "12025550123");
    assert!(
        matches!(&s, Stir::Failed { code: 437, reason } if reason.contains("no TNAuthList")),
        "{s:?}"
    );
    let odd = pki(Some(b"\x16\x03abc".to_vec()));
    let h = identity(&odd.sp_key, X5U, "12025550100", "12025550123", NOW);
    assert_eq!(code(&check(&odd, &h, "12025550100", "12025550123")), 437);
    // Another CA of the same name: the signature on the certificate gives it away.
    let s = verify(
        &good(NOW),
        "12025550100",
        "12025550123",
        NOW,
        Ok(p.sp_pem.as_bytes()),
        std::slice::from_ref(&other.ca_der),
        &policy(),
    );
    assert!(
        matches!(&s, Stir::Failed { code: 437, reason } if reason.contains("is not signed by")),
        "{s:?}"
    );
    // No trust anchors at all.
    let s = verify(
        &good(NOW),
        "12025550100",
        "12025550123",
        NOW,
        Ok(p.sp_pem.as_bytes()),
        &[],
        &policy(),
    );
    assert!(
        matches!(&s, Stir::Failed { code: 437, reason } if reason.contains("no STI-CA trust anchors")),
        "{s:?}"
    );
    // The certificate expired (2028) or not yet valid.
    let later = identity(&p.sp_key, X5U, "12025550100", "12025550123", 1_900_000_000);
    let s = verify(
        &later,
        "12025550100",
        "12025550123",
        1_900_000_000,
        Ok(p.sp_pem.as_bytes()),
        std::slice::from_ref(&p.ca_der),
        &policy(),
    );
    assert_eq!(code(&s), 437);
    // x5u over http, or on a port the policy does not allow; the fetch failing.
    let h = identity(
        &p.sp_key,
        "http://cert.example.org/sp.pem",
        "12025550100",
        "12025550123",
        NOW,
    );
    assert_eq!(code(&check(&p, &h, "12025550100", "12025550123")), 436);
    let h = identity(
        &p.sp_key,
        "https://cert.example.org:9443/sp.pem",
        "12025550100",
        "12025550123",
        NOW,
    );
    assert_eq!(code(&check(&p, &h, "12025550100", "12025550123")), 436);
    let s = verify(
        &good(NOW),
        "12025550100",
        "12025550123",
        NOW,
        Err("HTTP 404".into()),
        std::slice::from_ref(&p.ca_der),
        &policy(),
    );
    assert_eq!(code(&s), 436);
    // Garbage, and an info parameter that is not the x5u.
    assert_eq!(code(&check(&p, "not-a-jws", "1", "2")), 438);
    let h = good(NOW).replace(
        "info=<https://cert.example.org/sp.pem>",
        "info=<https://elsewhere.example/x.pem>",
    );
    assert_eq!(code(&check(&p, &h, "12025550100", "12025550123")), 438);
    assert_eq!(x5u(&good(NOW)).as_deref(), Some(X5U));
}

/// The shared public vectors, when the conformance data is beside the checkout.
fn shared(path: &str) -> Option<Vec<u8>> {
    std::fs::read(format!(
        "{}/../shared/conformance/shaken/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .ok()
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    Pem::iter_from_buffer(pem).next().unwrap().unwrap().contents
}

/// A DER element: tag, length, content.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    match len {
        0..=127 => out.push(len as u8),
        128..=255 => out.extend_from_slice(&[0x81, len as u8]),
        _ => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// An "EC PRIVATE KEY" (SEC1) PEM as the P-256 signing key ring wants (PKCS#8 around it).
fn sec1_key(pem: &[u8]) -> EcdsaKeyPair {
    let sec1 = pem_der(pem);
    // AlgorithmIdentifier { id-ecPublicKey, prime256v1 }
    let alg = tlv(
        0x30,
        &[
            &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01][..],
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        ]
        .concat(),
    );
    let pkcs8 = tlv(
        0x30,
        &[&[0x02, 0x01, 0x00][..], &alg, &tlv(0x04, &sec1)].concat(),
    );
    EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &pkcs8,
        &SystemRandom::new(),
    )
    .unwrap()
}

#[test]
fn the_shared_vectors_give_their_expected_results() {
    let Some(sw_header) = shared("signalwire-libstirshaken/identity-header.txt") else {
        eprintln!("skipped: ../shared/conformance/shaken is not beside the checkout");
        return;
    };
    let relaxed = Policy {
        max_age_s: u64::MAX,
        allowed_ports: vec![80, 443, 8080, 8443],
    };
    // libstirshaken: orig/dest are JSON strings holding JSON, not RFC 8588 objects: 438.
    let sw = String::from_utf8_lossy(&sw_header).trim().to_owned();
    let sw_sp = shared("signalwire-libstirshaken/sp.pem").unwrap();
    let sw_ca = pem_der(&shared("signalwire-libstirshaken/ca.pem").unwrap());
    let s = verify(
        &sw,
        "01256789999",
        "01256789999",
        1_603_458_131,
        Ok(&sw_sp),
        &[sw_ca],
        &relaxed,
    );
    assert_eq!(code(&s), 438, "{s:?}");
    // FreeSWITCH line 1: a valid signature, but its x5u is http (436; its certificate,
    // without TNAuthList, is never reached).
    let fs = String::from_utf8_lossy(&shared("freeswitch/identity-headers.txt").unwrap())
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let fs_cert = shared("freeswitch/cert.pem").unwrap();
    let fs_ca = pem_der(&fs_cert);
    let s = verify(
        &fs,
        "15551231234",
        "15553214322",
        1_618_373_174,
        Ok(&fs_cert),
        std::slice::from_ref(&fs_ca),
        &policy(),
    );
    assert_eq!(code(&s), 436, "{s:?}");
    // At the wall clock it is long stale.
    let s = verify(
        &fs,
        "15551231234",
        "15553214322",
        NOW,
        Ok(&fs_cert),
        &[fs_ca],
        &policy(),
    );
    assert_eq!(code(&s), 403, "{s:?}");
    // Asterisk's SPAST2: a correct TNAuthList and a chain to astdev-ca (RSA) until
    // 2026-06-01; signed here with its published test key.
    let key = sec1_key(&shared("asterisk-testsuite/SPAST2-key.pem").unwrap());
    let cert = shared("asterisk-testsuite/SPAST2-cert.pem").unwrap();
    let ca = pem_der(&shared("asterisk-testsuite/astdev-ca.crt").unwrap());
    let t = 1_750_000_000; // 2025-06-15
    let h = identity(&key, X5U, "12025550100", "12025550123", t);
    let s = verify(
        &h,
        "12025550100",
        "12025550123",
        t,
        Ok(&cert),
        std::slice::from_ref(&ca),
        &policy(),
    );
    assert_eq!(
        s,
        Stir::Verified {
            attestation: "A".into()
        }
    );
    let h = identity(&key, X5U, "12025550100", "12025550123", NOW);
    let s = verify(
        &h,
        "12025550100",
        "12025550123",
        NOW,
        Ok(&cert),
        std::slice::from_ref(&ca),
        &policy(),
    );
    assert_eq!(code(&s), 437, "expired since 2026-06-01: {s:?}");
    // SPAST1-caexp: issued by an expired CA, with a malformed TNAuthList.
    let key = sec1_key(&shared("asterisk-testsuite/SPAST1-caexp-key.pem").unwrap());
    let cert = shared("asterisk-testsuite/SPAST1-caexp-cert.pem").unwrap();
    let h = identity(&key, X5U, "12025550100", "12025550123", t);
    let s = verify(
        &h,
        "12025550100",
        "12025550123",
        t,
        Ok(&cert),
        &[ca],
        &policy(),
    );
    assert_eq!(code(&s), 437, "{s:?}");
}

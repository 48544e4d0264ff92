//! The operator's jCard (RFC 7095) that 608 responses point at (RFC 8688 section 3.3), served
//! as a JWS signed with ES256 whose `x5u` names the signing certificate.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;

use crate::screening::profile::JcardConfig;

pub struct Jcard {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// The certificate for the JWS `x5u`.
    certificate_url: String,
    /// The self-signed certificate Warden made for a key of its own (served at
    /// `/jcard/cert.pem`); None when the operator gave key and certificate.
    pub own_certificate: Option<String>,
    card: serde_json::Value,
}

impl Jcard {
    /// Load the configured key, or make one with a self-signed certificate; `base_url` is
    /// where the admin API is reached (for the default `x5u`).
    pub fn new(config: &JcardConfig, base_url: &str) -> anyhow::Result<Jcard> {
        let (key_pair, own_certificate) = match &config.key_file {
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("screening.jcard.key_file {}: {e}", path.display())
                })?;
                let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| {
                    anyhow::anyhow!(
                        "screening.jcard.key_file {}: not a PKCS#8 PEM key: {e}",
                        path.display()
                    )
                })?;
                (key, None)
            }
            None => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                let mut params = rcgen::CertificateParams::new(vec!["warden.invalid".to_owned()])?;
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, config.name.clone());
                let cert = params.self_signed(&key)?;
                (key, Some(cert.pem()))
            }
        };
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &rng,
        )
        .map_err(|_| {
            anyhow::anyhow!("screening.jcard.key_file: not an EC P-256 key (ES256 needs one)")
        })?;
        let certificate_url = match (&config.certificate_url, &own_certificate) {
            (Some(url), _) => url.clone(),
            (None, Some(_)) => format!("{base_url}/jcard/cert.pem"),
            (None, None) => anyhow::bail!(
                "screening.jcard.key_file is set without screening.jcard.certificate_url (the x5u callers verify with)"
            ),
        };
        let mut card = vec![
            json!(["version", {}, "text", "4.0"]),
            json!(["fn", {}, "text", config.name]),
            json!(["kind", {}, "text", "org"]),
        ];
        if let Some(email) = &config.email {
            card.push(json!(["email", {"type": "work"}, "text", email]));
        }
        if let Some(tel) = &config.tel {
            card.push(json!(["tel", {"type": ["work", "voice"]}, "uri", format!("tel:{tel}")]));
        }
        if let Some(url) = &config.url {
            card.push(json!(["url", {}, "uri", url]));
        }
        Ok(Jcard {
            key,
            rng,
            certificate_url,
            own_certificate,
            card: json!(["vcard", card]),
        })
    }

    /// The signed jCard as a compact JWS, issued at `iat` (unix seconds).
    pub fn signed(&self, iat: u64) -> anyhow::Result<String> {
        let header = json!({"alg": "ES256", "typ": "JWT", "x5u": self.certificate_url});
        let payload = json!({"iat": iat, "jcard": self.card});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing the jCard failed"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// The public key (uncompressed point), to check signatures with.
    pub fn public_key(&self) -> Vec<u8> {
        use ring::signature::KeyPair;
        self.key.public_key().as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    #[test]
    fn the_jcard_is_a_jws_that_verifies_with_its_key() {
        let config = JcardConfig {
            email: Some("abuse@example.net".into()),
            tel: Some("+442079460000".into()),
            ..JcardConfig::default()
        };
        let jcard = Jcard::new(&config, "http://127.0.0.1:8088").unwrap();
        let jws = jcard.signed(1_800_000_000).unwrap();
        let parts: Vec<&str> = jws.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["x5u"], "http://127.0.0.1:8088/jcard/cert.pem");
        let payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(payload["jcard"][0], "vcard");
        assert_eq!(payload["jcard"][1][1][3], "Warden call screening");
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(signature.len(), 64, "R||S, as JWS ES256 wants");
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, jcard.public_key());
        key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("the signature verifies");
        assert!(
            jcard
                .own_certificate
                .as_deref()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
    }
}

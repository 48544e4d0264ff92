//! SDES (RFC 4568): the `a=crypto` attributes that carry SRTP master keys in SDP, Warden's
//! own keys, and the policy that says which legs Warden offers SRTP to.
//!
//! Each party declares the key it sends with; Warden terminates SRTP on every leg, so the
//! keys of one leg never reach the other, and a leg in SRTP can bridge to one in plain RTP.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use serde::Deserialize;
use warden_media::Suite;
use warden_media::srtp::KEY_AND_SALT;

/// One usable `a=crypto` attribute: tag, suite and the master key and salt.
#[derive(Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: Suite,
    pub key: [u8; KEY_AND_SALT],
}

impl std::fmt::Debug for Crypto {
    // Keys never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "crypto:{} {}", self.tag, self.suite.name())
    }
}

impl Crypto {
    /// The value of an `a=crypto:` attribute, or None for one Warden cannot use: another
    /// suite, several keys, a master key index, or session parameters (RFC 4568 says an
    /// attribute with parameters one does not understand must be passed over).
    pub fn parse(value: &str) -> Option<Crypto> {
        let mut fields = value.split_whitespace();
        let tag = fields.next()?.parse().ok()?;
        let suite = Suite::from_name(fields.next()?)?;
        let keys = fields.next()?;
        if fields.next().is_some() || keys.contains(';') {
            return None;
        }
        let inline = keys.strip_prefix("inline:")?;
        let mut parts = inline.split('|');
        let key = STANDARD.decode(parts.next()?).ok()?.try_into().ok()?;
        for part in parts {
            // The lifetime (2^n or a number) is advice; a master key index is not supported.
            if part.contains(':') {
                return None;
            }
        }
        Some(Crypto { tag, suite, key })
    }

    /// A new random master key and salt for `suite`.
    pub fn fresh(tag: u32, suite: Suite) -> Crypto {
        let mut key = [0u8; KEY_AND_SALT];
        rand::rng().fill_bytes(&mut key);
        Crypto { tag, suite, key }
    }

    /// The SDP line that declares it.
    pub fn attribute(&self) -> String {
        format!(
            "a=crypto:{} {} inline:{}",
            self.tag,
            self.suite.name(),
            STANDARD.encode(self.key)
        )
    }
}

/// Which legs Warden offers SRTP to (config `media.srtp`, dialplan `srtp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpPolicy {
    /// As the offer Warden received: SRTP when it was SRTP, plain when it was plain.
    #[default]
    Mirror,
    /// RTP/SAVP with keys: the party must do SRTP.
    Mandatory,
    /// RTP/AVP with keys ("best effort"): SRTP when the party answers with a key.
    Optional,
    /// Plain RTP/AVP: bridge to a network without SRTP.
    Off,
}

impl SrtpPolicy {
    pub fn parse(text: &str) -> Option<SrtpPolicy> {
        Some(match text {
            "mirror" => SrtpPolicy::Mirror,
            "mandatory" => SrtpPolicy::Mandatory,
            "optional" => SrtpPolicy::Optional,
            "off" => SrtpPolicy::Off,
            _ => return None,
        })
    }

    /// The mode of an offer under this policy, given the mode of the offer it relays.
    pub fn mode(self, relayed: Mode) -> Mode {
        match self {
            SrtpPolicy::Mirror => relayed,
            SrtpPolicy::Mandatory => Mode::Secure,
            SrtpPolicy::Optional => Mode::BestEffort,
            SrtpPolicy::Off => Mode::Plain,
        }
    }
}

/// How one m= line carries its media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    /// RTP/AVP that lists keys: SRTP if the answer has one too.
    BestEffort,
    /// RTP/SAVP(F).
    Secure,
}

impl Mode {
    /// The mode a line's transport and keys describe; None for a transport Warden leaves
    /// alone (DTLS-SRTP, anything not RTP over UDP).
    pub fn of(proto: &str, has_crypto: bool) -> Option<Mode> {
        match proto.to_ascii_uppercase().as_str() {
            "RTP/SAVP" | "RTP/SAVPF" => Some(Mode::Secure),
            "RTP/AVP" | "RTP/AVPF" if has_crypto => Some(Mode::BestEffort),
            "RTP/AVP" | "RTP/AVPF" => Some(Mode::Plain),
            _ => None,
        }
    }

    /// `proto` (RTP/AVP or RTP/SAVP, with or without F) rewritten for this mode.
    pub fn proto(self, proto: &str) -> String {
        let feedback = proto.to_ascii_uppercase().ends_with('F');
        let base = match self {
            Mode::Secure => "RTP/SAVP",
            Mode::BestEffort | Mode::Plain => "RTP/AVP",
        };
        if feedback {
            format!("{base}F")
        } else {
            base.to_owned()
        }
    }

    pub fn keyed(self) -> bool {
        self != Mode::Plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc_4568_examples_and_passes_over_what_it_cannot_use() {
        let c = Crypto::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4",
        )
        .is_none();
        assert!(c, "an MKI is not supported");
        let c = Crypto::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20",
        )
        .expect("usable");
        assert_eq!((c.tag, c.suite), (1, Suite::AesCm128HmacSha1_80));
        assert_eq!(&c.key[..3], &[0x3d, 0x2d, 0x6e]);
        let c = Crypto::parse(
            "2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj",
        )
        .expect("usable");
        assert_eq!((c.tag, c.suite), (2, Suite::AesCm128HmacSha1_32));
        for unusable in [
            "1 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm",
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR UNENCRYPTED_SRTP",
            "1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=",
            "x AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            "1 AES_CM_128_HMAC_SHA1_80",
            "",
        ] {
            assert!(Crypto::parse(unusable).is_none(), "{unusable}");
        }
    }

    #[test]
    fn fresh_keys_round_trip_and_differ() {
        let (a, b) = (
            Crypto::fresh(1, Suite::AesCm128HmacSha1_80),
            Crypto::fresh(1, Suite::AesCm128HmacSha1_80),
        );
        assert_ne!(a.key, b.key);
        let line = a.attribute();
        let parsed = Crypto::parse(line.strip_prefix("a=crypto:").expect("attribute"));
        assert_eq!(parsed, Some(a.clone()));
        assert!(!format!("{a:?}").contains("inline"));
    }

    #[test]
    fn modes_and_policies() {
        assert_eq!(Mode::of("RTP/SAVP", true), Some(Mode::Secure));
        assert_eq!(Mode::of("RTP/AVP", true), Some(Mode::BestEffort));
        assert_eq!(Mode::of("RTP/AVP", false), Some(Mode::Plain));
        assert_eq!(Mode::of("UDP/TLS/RTP/SAVP", true), None);
        assert_eq!(Mode::Secure.proto("RTP/AVPF"), "RTP/SAVPF");
        assert_eq!(Mode::Plain.proto("RTP/SAVP"), "RTP/AVP");
        assert_eq!(SrtpPolicy::Mirror.mode(Mode::Secure), Mode::Secure);
        assert_eq!(SrtpPolicy::Off.mode(Mode::Secure), Mode::Plain);
        assert_eq!(SrtpPolicy::Mandatory.mode(Mode::Plain), Mode::Secure);
        assert_eq!(SrtpPolicy::parse("optional"), Some(SrtpPolicy::Optional));
        assert_eq!(SrtpPolicy::parse("yes"), None);
    }
}

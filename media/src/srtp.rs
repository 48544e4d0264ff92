//! SRTP and SRTCP (RFC 3711) for one side of a relay stream: the party's packets are
//! authenticated and decrypted on arrival, and everything sent to it is encrypted.
//!
//! The keys come from signalling (SDES, RFC 4568): the party's own master key for what it
//! sends, Warden's for what Warden sends. The cipher work is webrtc-rs's `webrtc-srtp`
//! (pure Rust, the `rtp` crate's sibling); this module checks every length and header
//! before handing it a packet, so hostile input gets an error, never a panic.

use rtp::header::Header;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;
use webrtc_util::marshal::{MarshalSize, Unmarshal};

/// Master key plus master salt, as SDES carries them (16 + 14 bytes for AES-CM-128).
pub const KEY_AND_SALT: usize = 30;
const KEY: usize = 16;
/// SRTCP trailer: E flag with the 31-bit index, then the 80-bit tag (both suites).
const SRTCP_TRAILER: usize = 4 + 10;
/// Packets out of order by more than this are taken for replays (libsrtp uses 128 too).
const REPLAY_WINDOW: usize = 128;

/// The SRTP crypto suites Warden offers and accepts (RFC 4568 section 6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    AesCm128HmacSha1_80,
    /// A 32-bit tag on SRTP (RTCP keeps 80 bits): for narrow links.
    AesCm128HmacSha1_32,
}

impl Suite {
    /// In Warden's order of preference.
    pub const ALL: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    /// The name SDP uses.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Bytes an SRTP packet carries beyond its RTP packet.
    pub fn rtp_overhead(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }
}

/// What one side of a stream needs: the suite, the key its party sends with (inbound) and
/// the key Warden sends to it with (outbound), each master key followed by master salt.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub suite: Suite,
    pub inbound: [u8; KEY_AND_SALT],
    pub outbound: [u8; KEY_AND_SALT],
}

impl std::fmt::Debug for SrtpKeys {
    // Keys never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// What the relay does about SRTP on one side of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SrtpSetting {
    /// Plain RTP both ways (the default).
    #[default]
    Clear,
    /// SRTP is being negotiated: nothing is sent to the party or taken from it until the
    /// keys come, so no packet crosses in the clear.
    Awaiting,
    Keys(SrtpKeys),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("packet too short for SRTP")]
    TooShort,
    #[error("SRTCP without encryption (not negotiated)")]
    Unencrypted,
    #[error("packet does not fit the buffer once protected")]
    TooLong,
    #[error("not an RTP header the cipher can rely on")]
    BadHeader,
    #[error("{0}")]
    Rejected(String),
}

/// The RTP header of `packet`, which must be followed by at least `trailer` bytes.
///
/// Two things found by fuzzing are checked first. The `rtp` crate's parser panics on
/// header extension elements that run past the packet, so Warden walks them itself
/// (`wire_header_len`) before the parser sees them. The cipher finds the payload at the
/// header's re-encoded size, and a header whose encoding differs from the bytes it was
/// read from made it slice out of bounds, so such a header is refused.
fn rtp_header(packet: &[u8], trailer: usize) -> Result<Header, SrtpError> {
    if packet.len() < 12 + trailer || packet[0] >> 6 != 2 {
        return Err(SrtpError::TooShort);
    }
    let wire = wire_header_len(packet).ok_or(SrtpError::BadHeader)?;
    let mut reader = packet;
    let header = Header::unmarshal(&mut reader).map_err(|_| SrtpError::BadHeader)?;
    if header.marshal_size() != wire || wire + trailer > packet.len() {
        return Err(SrtpError::BadHeader);
    }
    Ok(header)
}

/// Bytes of the RTP header at the start of `packet` (fixed part, CSRCs, extension), when
/// it fits the packet and its RFC 8285 extension elements stay inside the extension.
fn wire_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let fixed = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 == 0 {
        return (fixed <= packet.len()).then_some(fixed);
    }
    let word = |at: usize| Some(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
    let (profile, words) = (word(fixed)?, usize::from(word(fixed + 2)?));
    let elements = packet.get(fixed + 4..fixed + 4 + 4 * words)?;
    let mut i = 0;
    match profile {
        // One-byte elements: ID and length-1 in a byte; ID 15 ends the list.
        0xbede => {
            while let Some(&b) = elements.get(i) {
                i += 1;
                match b {
                    0 => continue,
                    _ if b >> 4 == 15 => break,
                    _ => i += usize::from(b & 0x0f) + 1,
                }
            }
        }
        // Two-byte elements: ID, then length.
        0x1000 => {
            while let Some(&b) = elements.get(i) {
                i += 1;
                if b != 0 {
                    i += 1 + usize::from(*elements.get(i)?);
                }
            }
        }
        _ => {}
    }
    (i <= elements.len()).then_some(fixed + 4 + elements.len())
}

/// One side's SRTP contexts (one per direction: RFC 3711 state is per sender).
pub struct SrtpSide {
    keys: SrtpKeys,
    inbound: Context,
    outbound: Context,
}

impl SrtpSide {
    pub fn new(keys: SrtpKeys) -> Result<SrtpSide, SrtpError> {
        let context = |key: &[u8; KEY_AND_SALT], replay: bool| {
            let (srtp, srtcp) = if replay {
                (
                    Some(srtp_replay_protection(REPLAY_WINDOW)),
                    Some(srtcp_replay_protection(REPLAY_WINDOW)),
                )
            } else {
                (None, None)
            };
            Context::new(&key[..KEY], &key[KEY..], keys.suite.profile(), srtp, srtcp)
                .map_err(|e| SrtpError::Rejected(e.to_string()))
        };
        Ok(SrtpSide {
            inbound: context(&keys.inbound, true)?,
            outbound: context(&keys.outbound, false)?,
            keys,
        })
    }

    pub fn keys(&self) -> &SrtpKeys {
        &self.keys
    }

    /// Authenticate and decrypt a packet from the party into `out` (cleared first).
    pub fn unprotect(
        &mut self,
        packet: &[u8],
        is_rtp: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), SrtpError> {
        let plain = if is_rtp {
            let header = rtp_header(packet, self.keys.suite.rtp_overhead())?;
            self.inbound.decrypt_rtp_with_header(packet, &header)
        } else {
            // Checked here: the library indexes the trailer before it checks the length, and
            // returns a packet whose E flag is clear without authenticating it.
            if packet.len() < 8 + SRTCP_TRAILER {
                return Err(SrtpError::TooShort);
            }
            if packet[packet.len() - SRTCP_TRAILER] & 0x80 == 0 {
                return Err(SrtpError::Unencrypted);
            }
            self.inbound.decrypt_rtcp(packet)
        }
        .map_err(|e| SrtpError::Rejected(e.to_string()))?;
        out.clear();
        out.extend_from_slice(&plain);
        Ok(())
    }

    /// Encrypt and sign a packet for the party into `out` (cleared first).
    pub fn protect(
        &mut self,
        packet: &[u8],
        is_rtp: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), SrtpError> {
        let sealed = if is_rtp {
            let header = rtp_header(packet, 0)?;
            self.outbound.encrypt_rtp_with_header(packet, &header)
        } else {
            if packet.len() < 8 {
                return Err(SrtpError::TooShort);
            }
            self.outbound.encrypt_rtcp(packet)
        }
        .map_err(|e| SrtpError::Rejected(e.to_string()))?;
        out.clear();
        out.extend_from_slice(&sealed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(suite: Suite) -> (SrtpKeys, SrtpKeys) {
        let a = [7u8; KEY_AND_SALT];
        let mut b = [9u8; KEY_AND_SALT];
        b[0] = 1;
        // One party's inbound is the other's outbound.
        (
            SrtpKeys {
                suite,
                inbound: a,
                outbound: b,
            },
            SrtpKeys {
                suite,
                inbound: b,
                outbound: a,
            },
        )
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend(std::iter::repeat_n(0xd5, 160));
        p
    }

    #[test]
    fn round_trip_both_suites_rtp_and_rtcp() {
        for suite in Suite::ALL {
            let (ours, theirs) = keys(suite);
            let (mut warden, mut party) = (
                SrtpSide::new(ours).expect("keys"),
                SrtpSide::new(theirs).expect("keys"),
            );
            let (mut sealed, mut opened) = (Vec::new(), Vec::new());
            for seq in [65534, 65535, 0, 1] {
                party
                    .protect(&rtp(seq), true, &mut sealed)
                    .expect("protect");
                assert_eq!(sealed.len(), rtp(seq).len() + suite.rtp_overhead());
                assert_ne!(sealed[12..22], rtp(seq)[12..22], "payload is encrypted");
                warden
                    .unprotect(&sealed, true, &mut opened)
                    .expect("unprotect");
                assert_eq!(opened, rtp(seq), "{suite:?} seq {seq}");
            }
            // A receiver report, the other way.
            let rr = [0x80, 201, 0, 1, 0, 0, 0, 1];
            warden
                .protect(&rr, false, &mut sealed)
                .expect("protect rtcp");
            assert_eq!(sealed.len(), rr.len() + SRTCP_TRAILER);
            party
                .unprotect(&sealed, false, &mut opened)
                .expect("unprotect rtcp");
            assert_eq!(opened, rr);
        }
    }

    #[test]
    fn tampered_replayed_and_short_packets_are_refused() {
        let (ours, theirs) = keys(Suite::AesCm128HmacSha1_80);
        let (mut warden, mut party) = (
            SrtpSide::new(ours).expect("keys"),
            SrtpSide::new(theirs).expect("keys"),
        );
        let (mut sealed, mut opened) = (Vec::new(), Vec::new());
        party.protect(&rtp(10), true, &mut sealed).expect("protect");
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(warden.unprotect(&tampered, true, &mut opened).is_err());
        warden
            .unprotect(&sealed, true, &mut opened)
            .expect("genuine");
        assert!(
            warden.unprotect(&sealed, true, &mut opened).is_err(),
            "replay"
        );
        // Plain RTP from a party that should encrypt fails authentication.
        assert!(warden.unprotect(&rtp(11), true, &mut opened).is_err());
        for len in 0..30 {
            let junk = vec![0x80; len];
            assert!(warden.unprotect(&junk, true, &mut opened).is_err());
            assert!(warden.unprotect(&junk, false, &mut opened).is_err());
        }
        // SRTCP claiming to be unencrypted (E clear) is not taken on trust.
        let mut rtcp = vec![0x80, 201, 0, 1, 0, 0, 0, 1];
        rtcp.extend([0, 0, 0, 1]);
        rtcp.extend([0; 10]);
        assert_eq!(
            warden.unprotect(&rtcp, false, &mut opened),
            Err(SrtpError::Unencrypted)
        );
    }

    #[test]
    fn headers_the_cipher_would_misread_are_refused() {
        let (ours, _) = keys(Suite::AesCm128HmacSha1_80);
        let mut side = SrtpSide::new(ours).expect("keys");
        let mut out = Vec::new();
        // The fuzzer's find: padding and extension bits, version 0, a CSRC, an extension
        // whose length points past the end.
        let found = [
            0x31, 0, 0, 0, 0x80, 0, 0, 0x9d, 0, 0, 0, 0, 0, 0x10, 0, 0xff, 0x10, 0, 0, 1, 0, 0, 0,
            0x1b, 0, 0x21,
        ];
        assert!(side.protect(&found, true, &mut out).is_err());
        assert!(side.unprotect(&found, true, &mut out).is_err());
        // The same with version 2, and with an extension longer than the packet.
        let mut v2 = found;
        v2[0] = 0xb1;
        let _ = side.protect(&v2, true, &mut out);
        let _ = side.unprotect(&v2, true, &mut out);
        // The parser's own panic: a one-byte element running past the packet.
        let past_the_end = [
            0x90, 0, 0, 0, 0x3b, 2, 0x13, 0, 0, 0x2c, 0, 0xff, 0xbe, 0xde, 0, 1, 0x2f, 0, 0x21,
            0x21,
        ];
        assert_eq!(
            side.protect(&past_the_end, true, &mut out),
            Err(SrtpError::BadHeader)
        );
        assert!(side.unprotect(&past_the_end, true, &mut out).is_err());
        // The fuzzer's input: two-byte elements whose lengths leave the extension.
        let two_byte = [
            0x90, 0, 0, 0, 0x3b, 2, 0x13, 0, 0, 0x2c, 0, 0xff, 0x10, 0, 0, 5, 0x2f, 0, 0x21, 0x21,
            0x21, 0x21, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x21, 0x21, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert!(side.protect(&two_byte, true, &mut out).is_err());
        assert!(side.unprotect(&two_byte, true, &mut out).is_err());
        let mut long_extension = rtp(1);
        long_extension[0] = 0x90;
        long_extension[12..16].copy_from_slice(&[0xbe, 0xde, 0xff, 0xff]);
        assert!(side.protect(&long_extension, true, &mut out).is_err());
        // A well-formed one-byte extension (an audio level, RFC 6464) is fine.
        let mut level = rtp(2);
        level[0] = 0x90;
        level.splice(12..12, [0xbe, 0xde, 0, 1, 0x10, 0x2a, 0, 0]);
        side.protect(&level, true, &mut out)
            .expect("extension header");
    }

    #[test]
    fn keys_stay_out_of_debug_output() {
        let (ours, _) = keys(Suite::AesCm128HmacSha1_32);
        let shown = format!("{ours:?}");
        assert!(!shown.contains('7'), "{shown}");
    }
}

//! SRTP cost per packet on the relay path, against the crypto floor measured in the same
//! run: for a 20 ms PCMU packet, what `warden_media::srtp` spends to encrypt (toward an SRTP
//! party) and to authenticate and decrypt (from one), next to the bare work RFC 3711 asks
//! for: AES-128 in counter mode over the payload and HMAC-SHA1 over the packet and its
//! rollover counter (RustCrypto directly, keys derived once, no parsing, no allocation).
//!
//! `cargo bench --bench srtp`; WARDEN_BENCH_PACKETS (default 200000) sets the work.

mod common;

use std::hint::black_box;
use std::time::Instant;

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use warden_media::srtp::{KEY_AND_SALT, SrtpKeys, SrtpSide, Suite};

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

fn main() {
    if common::only_listing_or_testing() {
        return;
    }
    let packets: u32 = common::setting("WARDEN_BENCH_PACKETS", 200_000);
    println!("{packets} PCMU packets (172 bytes) per measurement, one core");
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>7}",
        "suite / direction", "floor ns", "ours ns", "Mpkt/s", "ratio"
    );
    for suite in Suite::ALL {
        let floor = crypto_floor(packets, suite);
        let (protect, unprotect) = ours(packets, suite);
        for (what, ns) in [("protect", protect), ("unprotect", unprotect)] {
            println!(
                "{:<26} {:>9.0} {:>9.0} {:>9.2} {:>7.2}",
                format!("{} {what}", &suite.name()[16..]),
                floor,
                ns,
                1e3 / ns,
                ns / floor
            );
        }
    }
    println!("ratio: ours / floor (1.00 = nothing spent beyond the cipher and the MAC)");
}

fn packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend(std::iter::repeat_n(0xd5, 160));
    p
}

/// Nanoseconds per packet for the bare cipher and MAC.
fn crypto_floor(packets: u32, suite: Suite) -> f64 {
    let key = [7u8; 16];
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(&[9u8; 20]).expect("key");
    let mut buf = packet(0);
    let tag_len = suite.rtp_overhead();
    let start = Instant::now();
    for i in 0..packets {
        let seq = i as u16;
        buf[2..4].copy_from_slice(&seq.to_be_bytes());
        let mut iv = [0u8; 16];
        iv[6..10].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        iv[12..14].copy_from_slice(&seq.to_be_bytes());
        Aes128Ctr::new(&key.into(), &iv.into()).apply_keystream(&mut buf[12..]);
        let mut m = mac.clone();
        m.update(&buf);
        m.update(&0u32.to_be_bytes());
        let tag = m.finalize().into_bytes();
        black_box(&tag[..tag_len]);
    }
    mac.reset();
    start.elapsed().as_nanos() as f64 / f64::from(packets)
}

/// Nanoseconds per packet for Warden's protect and unprotect.
fn ours(packets: u32, suite: Suite) -> (f64, f64) {
    let (a, b) = ([1u8; KEY_AND_SALT], [2u8; KEY_AND_SALT]);
    let mut party = SrtpSide::new(SrtpKeys {
        suite,
        inbound: a,
        outbound: b,
    })
    .expect("keys");
    let mut warden = SrtpSide::new(SrtpKeys {
        suite,
        inbound: b,
        outbound: a,
    })
    .expect("keys");
    let plain: Vec<Vec<u8>> = (0..packets).map(|i| packet(i as u16)).collect();
    let mut out = Vec::new();
    let start = Instant::now();
    for p in &plain {
        warden.protect(p, true, &mut out).expect("protect");
        black_box(&out);
    }
    let protect = start.elapsed().as_nanos() as f64 / f64::from(packets);
    // What the party sends, made outside the measurement.
    let sealed: Vec<Vec<u8>> = plain
        .iter()
        .map(|p| {
            party.protect(p, true, &mut out).expect("protect");
            out.clone()
        })
        .collect();
    let start = Instant::now();
    for p in &sealed {
        warden.unprotect(p, true, &mut out).expect("unprotect");
        black_box(&out);
    }
    let unprotect = start.elapsed().as_nanos() as f64 / f64::from(packets);
    (protect, unprotect)
}

//! Any body through the SDP parser (a=crypto keys too); what it accepts is rewritten as
//! Warden anchors it and parsed again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden::anchor::sdes::{Crypto, Mode};
use warden::anchor::sdp::{MediaPlan, Sdp, Security};

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = Sdp::parse(data) else {
        return;
    };
    let plans: Vec<MediaPlan> = sdp
        .media
        .iter()
        .map(|m| MediaPlan {
            port: Some(40000),
            formats: Some(m.formats.clone()),
            // SDES as Warden answers: the transport flipped, one key of its own.
            security: Mode::of(&m.proto, m.has_crypto).map(|mode| Security {
                proto: mode.proto(&m.proto),
                crypto: m
                    .crypto
                    .first()
                    .map(|c| Crypto::fresh(c.tag, c.suite).attribute())
                    .into_iter()
                    .collect(),
            }),
        })
        .collect();
    let rewritten = sdp.rewrite_with("127.0.0.2".parse().expect("address"), &plans);
    let _ = Sdp::parse(rewritten.as_bytes());
    for i in 0..sdp.media.len() {
        let _ = sdp.rejected_media_line(i);
    }
});

//! Any body through the SDP parser; what it accepts is rewritten as Warden anchors it and
//! parsed again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden::anchor::sdp::{MediaPlan, Sdp};

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
        })
        .collect();
    let rewritten = sdp.rewrite_with("127.0.0.2".parse().expect("address"), &plans);
    let _ = Sdp::parse(rewritten.as_bytes());
    for i in 0..sdp.media.len() {
        let _ = sdp.rejected_media_line(i);
    }
});

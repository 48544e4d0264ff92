//! Transcoding capacity per core: for each codec pair, how many calls (both directions)
//! one core can transcode in real time, against the codec-bound limit measured in the same
//! run (bare decode + encode of the same frames, no resampling, framing or RTP around it).
//!
//! `cargo bench --bench codecs`; WARDEN_BENCH_FRAMES (default 3000 frames = 60 s of audio
//! per direction) sets the amount of work per measurement.

use std::time::{Duration, Instant};

use warden_media::codec::{self, Codec};
use warden_media::transcode::{Direction, LegCodec};

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let frames: usize = std::env::var("WARDEN_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    println!("{frames} frames of 20 ms per direction and measurement (one core)");
    println!(
        "{:<14} {:>13} {:>15} {:>13} {:>15} {:>7}",
        "pair", "codec us/call", "codec-bound", "path us/call", "transcoded", "ratio"
    );
    for (x, y) in [("PCMU", "G722"), ("PCMA", "PCMU"), ("PCMA", "G722")] {
        let (a, b) = (find(x), find(y));
        let bare = best_of(3, || codec_bound(a, b, frames));
        let path = best_of(3, || transcode_path(a, b, frames));
        // Per call and 20 ms of audio: both directions.
        let per_call = |d: Duration| d.as_secs_f64() * 1e6 / frames as f64;
        let calls = |d: Duration| 20_000.0 / per_call(d);
        println!(
            "{:<14} {:>13.1} {:>10.0} calls {:>13.1} {:>10.0} calls {:>7.2}",
            format!("{x}<->{y}"),
            per_call(bare),
            calls(bare),
            per_call(path),
            calls(path),
            calls(path) / calls(bare)
        );
    }
}

fn find(name: &str) -> &'static Codec {
    codec::by_name(name, 8000).expect("registered codec")
}

fn best_of(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().unwrap_or_default()
}

/// 20 ms frames of speech-like audio (two tones) at `rate`.
fn frames_of(rate: u32, count: usize) -> Vec<Vec<i16>> {
    let n = (rate / 50) as usize;
    (0..count)
        .map(|i| {
            (0..n)
                .map(|k| {
                    let t = (i * n + k) as f64 / f64::from(rate);
                    let s = (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                        + 0.5 * (2.0 * std::f64::consts::PI * 1270.0 * t).sin();
                    (8000.0 * s) as i16
                })
                .collect()
        })
        .collect()
}

/// Encoded payloads of `codec` for `count` frames.
fn payloads(codec: &Codec, count: usize) -> Vec<Vec<u8>> {
    let mut enc = (codec.encoder)();
    frames_of(codec.sample_rate, count)
        .iter()
        .map(|f| {
            let mut p = Vec::new();
            enc.encode(f, &mut p);
            p
        })
        .collect()
}

/// The floor: decode `a`, encode `b` and the reverse, frame by frame, nothing else.
fn codec_bound(a: &Codec, b: &Codec, frames: usize) -> Duration {
    let (pa, pb) = (payloads(a, frames), payloads(b, frames));
    let (mut dec_a, mut enc_a) = ((a.decoder)(), (a.encoder)());
    let (mut dec_b, mut enc_b) = ((b.decoder)(), (b.encoder)());
    let (fa, fb) = (frames_of(a.sample_rate, 1), frames_of(b.sample_rate, 1));
    let (mut pcm, mut out) = (Vec::with_capacity(1024), Vec::with_capacity(1024));
    let start = Instant::now();
    for i in 0..frames {
        pcm.clear();
        out.clear();
        dec_a.decode(&pa[i], &mut pcm);
        enc_b.encode(&fb[0], &mut out);
        pcm.clear();
        out.clear();
        dec_b.decode(&pb[i], &mut pcm);
        enc_a.encode(&fa[0], &mut out);
    }
    std::hint::black_box(&out);
    start.elapsed()
}

/// Warden's path: RTP in, decode, resample, re-frame, encode, RTP out, both directions.
fn transcode_path(a: &'static Codec, b: &'static Codec, frames: usize) -> Duration {
    let leg = |codec: &'static Codec| LegCodec {
        codec,
        payload_type: codec.static_payload_type.unwrap_or(96),
        dtmf_payload_type: None,
    };
    let rtp = |codec: &Codec| -> Vec<Vec<u8>> {
        let pt = codec.static_payload_type.unwrap_or(96);
        payloads(codec, frames)
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let mut packet = vec![0x80, pt];
                packet.extend_from_slice(&(i as u16).to_be_bytes());
                packet.extend_from_slice(&((i as u32) * 160).to_be_bytes());
                packet.extend_from_slice(&7u32.to_be_bytes());
                packet.extend_from_slice(&p);
                packet
            })
            .collect()
    };
    let (ra, rb) = (rtp(a), rtp(b));
    let (mut ab, mut ba) = (
        Direction::new(leg(a), leg(b)),
        Direction::new(leg(b), leg(a)),
    );
    let mut sent = 0usize;
    let start = Instant::now();
    for i in 0..frames {
        ab.on_packet(&ra[i], &mut |p| sent += p.len());
        ba.on_packet(&rb[i], &mut |p| sent += p.len());
    }
    std::hint::black_box(sent);
    start.elapsed()
}

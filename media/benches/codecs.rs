//! Transcoding capacity per core: for each codec pair, how many calls (both directions)
//! one core can transcode in real time, against the codec-bound limit measured in the same
//! run (bare decode + encode of the same frames, no resampling, framing or RTP around it).
//! Then the same for conference rooms: members mixed per core against their codecs' floor.
//!
//! Both sides work at the PCM rates the transcoder picks (`codec::pcm_rates_between`): Opus
//! talks to G.711 at 8 kHz, so neither side resamples. With Opus built in, a second table
//! sweeps the Opus encoder complexity, which is what `media.opus_complexity` trades.
//!
//! `cargo bench --bench codecs [--features opus]`; WARDEN_BENCH_FRAMES (default 3000 frames = 60 s of audio
//! per direction) sets the amount of work per measurement.

mod common;

use std::time::{Duration, Instant};

use warden_media::codec::{self, Codec, CodecOptions, FormatParams};

/// Every codec's default payload format (AMR: bandwidth-efficient, all modes).
const NATIVE: FormatParams = FormatParams {
    octet_aligned: false,
    mode_set: 0,
    mode_change_period: 0,
    mode_change_neighbor: false,
    crc_or_interleaving: false,
};
use warden_media::transcode::{Direction, LegCodec};

fn main() {
    if common::only_listing_or_testing() {
        return;
    }
    let frames: usize = common::setting("WARDEN_BENCH_FRAMES", 3000);
    println!("{frames} frames of 20 ms per direction and measurement (one core)");
    println!(
        "{:<14} {:>13} {:>15} {:>13} {:>15} {:>7}",
        "pair", "codec us/call", "codec-bound", "path us/call", "transcoded", "ratio"
    );
    let options = CodecOptions::default();
    let mut pairs = vec![("PCMU", "G722"), ("PCMA", "PCMU"), ("PCMA", "G722")];
    if codec::all().iter().any(|c| c.name == "opus") {
        pairs.extend([("PCMA", "opus"), ("G722", "opus")]);
    }
    if codec::all().iter().any(|c| c.name == "AMR") {
        pairs.extend([
            ("PCMA", "AMR"),
            ("PCMU", "AMR"),
            ("PCMA", "AMR-WB"),
            ("PCMU", "AMR-WB"),
        ]);
    }
    for (x, y) in pairs {
        let (a, b) = (find(x), find(y));
        // Alternate the two measurements and keep each one's best: on a shared machine
        // the load drifts, and alternating exposes both to the same drift.
        let (mut bare, mut path) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            bare = bare.min(codec_bound(a, b, frames, &options));
            path = path.min(transcode_path(a, b, frames, &options));
        }
        // Per call and 20 ms of audio: both directions.
        let per_call = |d: Duration| per_call_us(d, frames);
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
    resampler_table(frames);
    conference_table(frames, &options);
    if codec::all().iter().any(|c| c.name == "opus") {
        opus_complexity_sweep(frames);
    }
}

fn per_call_us(d: Duration, frames: usize) -> f64 {
    d.as_secs_f64() * 1e6 / frames as f64
}

/// Codec-bound calls per core of PCMU<->Opus by encoder complexity, with Opus at 8 kHz (as
/// Warden runs it toward G.711) and at 48 kHz (the usual reference), and the waveform SNR
/// of the two-tone test signal through Opus at 8 kHz as a rough quality indicator.
fn opus_complexity_sweep(frames: usize) {
    let (pcmu, opus) = (find("PCMU"), find("opus"));
    println!();
    println!(
        "{:<10} {:>16} {:>16} {:>12}",
        "complexity", "8 kHz calls", "48 kHz calls", "8 kHz SNR"
    );
    for complexity in [0u8, 2, 3, 5, 7, 9, 10] {
        let options = CodecOptions {
            opus_complexity: complexity,
        };
        let narrow = best_of(3, || codec_bound(pcmu, opus, frames, &options));
        let full = best_of(3, || {
            codec_bound_at(pcmu, opus, (8000, 48000), frames, &options)
        });
        println!(
            "{:<10} {:>16.0} {:>16.0} {:>9.1} dB",
            complexity,
            20_000.0 / per_call_us(narrow, frames),
            20_000.0 / per_call_us(full, frames),
            opus_snr(opus, &options)
        );
    }
}

/// SNR in dB of the bench signal through Opus at 8 kHz (best alignment within 10 ms).
fn opus_snr(opus: &Codec, options: &CodecOptions) -> f64 {
    let (mut enc, mut dec) = (
        opus.encoder_at(8000, options, &NATIVE),
        opus.decoder_at(8000, &NATIVE),
    );
    let input: Vec<i16> = frames_of(8000, 100).concat();
    let mut out = Vec::new();
    for frame in input.chunks_exact(160) {
        let mut p = Vec::new();
        enc.encode(frame, &mut p);
        dec.decode(&p, &mut out);
    }
    let skip = 800; // start-up
    (0..=80)
        .map(|lag| {
            let (mut signal, mut noise) = (0.0f64, 0.0f64);
            for (r, d) in input[skip..].iter().zip(out[skip + lag..].iter()) {
                signal += f64::from(*r).powi(2);
                noise += (f64::from(*r) - f64::from(*d)).powi(2);
            }
            10.0 * (signal / noise.max(1.0)).log10()
        })
        .fold(f64::MIN, f64::max)
}

fn find(name: &str) -> &'static Codec {
    codec::all()
        .iter()
        .find(|c| c.name == name)
        .expect("registered codec")
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
    let mut enc = codec.encoder();
    frames_of(codec.sample_rate, count)
        .iter()
        .map(|f| {
            let mut p = Vec::new();
            enc.encode(f, &mut p);
            p
        })
        .collect()
}

/// The floor: decode `a`, encode `b` and the reverse, frame by frame, nothing else, at the
/// PCM rates the transcoder would use.
fn codec_bound(a: &Codec, b: &Codec, frames: usize, options: &CodecOptions) -> Duration {
    codec_bound_at(a, b, codec::pcm_rates_between(a, b), frames, options)
}

/// As `codec_bound` with `a` at PCM rate `rates.0` and `b` at `rates.1`.
fn codec_bound_at(
    a: &Codec,
    b: &Codec,
    (rate_a, rate_b): (u32, u32),
    frames: usize,
    options: &CodecOptions,
) -> Duration {
    let (pa, pb) = (payloads(a, frames), payloads(b, frames));
    let (mut dec_a, mut enc_a) = (
        a.decoder_at(rate_a, &NATIVE),
        a.encoder_at(rate_a, options, &NATIVE),
    );
    let (mut dec_b, mut enc_b) = (
        b.decoder_at(rate_b, &NATIVE),
        b.encoder_at(rate_b, options, &NATIVE),
    );
    let (fa, fb) = (frames_of(rate_a, 1), frames_of(rate_b, 1));
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

/// Warden's path: RTP in, jitter buffer, decode, resample, re-frame, encode, RTP out, both
/// directions.
fn transcode_path(
    a: &'static Codec,
    b: &'static Codec,
    frames: usize,
    options: &CodecOptions,
) -> Duration {
    let (ra, rb) = (rtp(a, frames), rtp(b, frames));
    let (mut ab, mut ba) = (
        Direction::new(leg(a), leg(b), options),
        Direction::new(leg(b), leg(a), options),
    );
    let mut sent = 0usize;
    // Media time, 20 ms per frame: the jitter buffers see a steady phone and play each
    // packet on the tick after it arrives.
    let t0 = Instant::now();
    let at = |i: usize, offset_ms: u64| t0 + Duration::from_millis(20 * i as u64 + offset_ms);
    let start = Instant::now();
    for i in 0..frames {
        ab.on_packet(&ra[i], at(i, 0), &mut |p| sent += p.len());
        ba.on_packet(&rb[i], at(i, 0), &mut |p| sent += p.len());
        ab.tick(at(i, 10), &mut |p| sent += p.len());
        ba.tick(at(i, 10), &mut |p| sent += p.len());
    }
    std::hint::black_box(sent);
    start.elapsed()
}

/// A leg of `codec` in its default format, 20 ms packets.
fn leg(codec: &'static Codec) -> LegCodec {
    LegCodec {
        codec,
        payload_type: codec.static_payload_type.unwrap_or(96),
        params: NATIVE,
        ptime: 20,
        dtmf_payload_type: None,
        cn_payload_type: None,
    }
}

/// `frames` RTP packets of `codec`, 20 ms each.
fn rtp(codec: &Codec, frames: usize) -> Vec<Vec<u8>> {
    let pt = codec.static_payload_type.unwrap_or(96);
    payloads(codec, frames)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let mut packet = vec![0x80, pt];
            packet.extend_from_slice(&(i as u16).to_be_bytes());
            packet.extend_from_slice(&((i as u32) * codec.rtp_clock / 50).to_be_bytes());
            packet.extend_from_slice(&7u32.to_be_bytes());
            packet.extend_from_slice(&p);
            packet
        })
        .collect()
}

/// Resampling one 20 ms frame, Warden's polyphase filter against rubato's FFT resampler
/// (what the path used before) in the same run.
fn resampler_table(frames: usize) {
    use warden_media::codec::Resampler;
    println!("\nresampling a 20 ms frame");
    println!(
        "{:<14} {:>12} {:>12} {:>7}",
        "rates", "polyphase ns", "rubato FFT ns", "ratio"
    );
    for (from, to) in [(8000, 16000), (16000, 8000), (8000, 48000), (48000, 8000)] {
        let input = frames_of(from, 1).remove(0);
        let mut out = Vec::with_capacity(4096);
        let mut time = |mut r: Resampler| {
            let start = Instant::now();
            for _ in 0..frames {
                r.process(&input, &mut out);
                out.clear();
            }
            start.elapsed()
        };
        let (mut ours, mut fft) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            ours = ours.min(time(Resampler::new(from, to).expect("whole ratio")));
            fft = fft.min(time(Resampler::fft(from, to).expect("20 ms frames")));
        }
        let ns = |d: Duration| d.as_secs_f64() * 1e9 / frames as f64;
        println!(
            "{:<14} {:>12.0} {:>12.0} {:>7.2}",
            format!("{}k->{}k", from / 1000, to / 1000),
            ns(ours),
            ns(fft),
            ns(ours) / ns(fft)
        );
    }
}

/// Conference mixing per core: rooms of members on PCMU, PCMA and G.722 in turn, the cost
/// per member and 20 ms against the codec-bound floor measured in the same run (each
/// member's frame decoded and one encoded, at the member's own rate).
fn conference_table(frames: usize, options: &CodecOptions) {
    println!("\nconference rooms (members on PCMU, PCMA, G722 in turn; mixed at 16 kHz)");
    println!(
        "{:<8} {:>15} {:>17} {:>13} {:>17} {:>7}",
        "members", "codec us/member", "codec-bound", "mix us/member", "mixed", "ratio"
    );
    for size in [3usize, 10] {
        let codecs: Vec<&'static Codec> = (0..size)
            .map(|i| find(["PCMU", "PCMA", "G722"][i % 3]))
            .collect();
        let (mut bare, mut path) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            bare = bare.min(members_bound(&codecs, frames, options));
            path = path.min(mix_path(&codecs, frames, options));
        }
        let per_member = |d: Duration| d.as_secs_f64() * 1e6 / (frames * size) as f64;
        let members = |d: Duration| 20_000.0 / per_member(d);
        println!(
            "{:<8} {:>15.1} {:>9.0} members {:>13.1} {:>9.0} members {:>7.2}",
            size,
            per_member(bare),
            members(bare),
            per_member(path),
            members(path),
            members(path) / members(bare)
        );
    }
}

/// The mixer's PCM rate for a member of `codec` (as `mixer::Member` picks it).
fn member_rate(codec: &Codec) -> u32 {
    if codec.pcm_rates.contains(&warden_media::mixer::MIX_RATE) {
        warden_media::mixer::MIX_RATE
    } else {
        codec.sample_rate
    }
}

/// The floor: every member's frame decoded and one frame encoded for it, nothing else.
fn members_bound(codecs: &[&'static Codec], frames: usize, options: &CodecOptions) -> Duration {
    let inputs: Vec<Vec<Vec<u8>>> = codecs.iter().map(|c| payloads(c, frames)).collect();
    let mut coders: Vec<_> = codecs
        .iter()
        .map(|c| {
            let rate = member_rate(c);
            let frame = frames_of(rate, 1).remove(0);
            (
                c.decoder_at(rate, &NATIVE),
                c.encoder_at(rate, options, &NATIVE),
                frame,
            )
        })
        .collect();
    let (mut pcm, mut out) = (Vec::with_capacity(1024), Vec::with_capacity(1024));
    let start = Instant::now();
    for i in 0..frames {
        for ((decoder, encoder, frame), input) in coders.iter_mut().zip(&inputs) {
            pcm.clear();
            out.clear();
            decoder.decode(&input[i], &mut pcm);
            encoder.encode(frame, &mut out);
        }
    }
    std::hint::black_box(&out);
    start.elapsed()
}

/// Warden's path: each member's RTP through its jitter buffer and decoder, resampled to
/// the mix, summed, each member's share (minus itself) resampled back, encoded, RTP out.
fn mix_path(codecs: &[&'static Codec], frames: usize, options: &CodecOptions) -> Duration {
    use warden_media::mixer::{Member, Room};
    let inputs: Vec<Vec<Vec<u8>>> = codecs.iter().map(|c| rtp(c, frames)).collect();
    let mut room = Room::default();
    for (i, c) in codecs.iter().enumerate() {
        room.add(Member::new(i as u64, i, 0, leg(c), options));
    }
    let mut sent = 0usize;
    let t0 = Instant::now();
    let at = |i: usize, offset_ms: u64| t0 + Duration::from_millis(20 * i as u64 + offset_ms);
    let start = Instant::now();
    for i in 0..frames {
        for (member, input) in (0..codecs.len()).zip(&inputs) {
            if let Some(m) = room.member_mut(member as u64) {
                m.on_packet(&input[i], at(i, 0));
            }
        }
        room.tick(at(i, 10), &mut |_, _, p| sent += p.len());
    }
    std::hint::black_box(sent);
    start.elapsed()
}

//! SIP parse + serialize throughput of a typical INVITE through Warden's facade.
//! Reported against a baseline measured in the same run (copying the same bytes), because
//! absolute times drift on shared machines: the ratio is the figure to compare.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use warden::sip::message::{Limits, Message};

const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO\r\n\
User-Agent: Bench/1.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 142\r\n\r\n\
v=0\r\no=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\ns=-\r\n\
c=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn copy_baseline(raw: &Bytes) -> Bytes {
    Bytes::copy_from_slice(black_box(raw))
}

fn parse(raw: &Bytes) -> Message {
    Message::parse_datagram(Bytes::copy_from_slice(raw), &Limits::default()).expect("parses")
}

fn parse_check_serialize(raw: &Bytes) -> Bytes {
    let m = parse(raw);
    if let Message::Request(r) = &m {
        r.check().expect("valid");
    }
    m.to_bytes()
}

fn per_second(f: impl Fn() -> usize) -> f64 {
    let n = 200_000;
    let start = Instant::now();
    let mut sink = 0;
    for _ in 0..n {
        sink += f();
    }
    black_box(sink);
    f64::from(n) / start.elapsed().as_secs_f64()
}

fn bench(c: &mut Criterion) {
    let raw = Bytes::from_static(INVITE.as_bytes());
    c.bench_function("baseline: copy INVITE bytes", |b| {
        b.iter(|| copy_baseline(&raw))
    });
    c.bench_function("parse INVITE", |b| b.iter(|| parse(black_box(&raw))));
    c.bench_function("parse + check + serialize INVITE", |b| {
        b.iter(|| parse_check_serialize(black_box(&raw)))
    });

    let base = per_second(|| copy_baseline(&raw).len());
    let p = per_second(|| parse(&raw).to_bytes().len());
    let full = per_second(|| parse_check_serialize(&raw).len());
    println!("\nratios against the copy baseline measured in this run (one core):");
    println!("  copy baseline:              {base:>12.0} msg/s  1.00");
    println!(
        "  parse + serialize:          {p:>12.0} msg/s  {:.3}",
        p / base
    );
    println!(
        "  parse + check + serialize:  {full:>12.0} msg/s  {:.3}",
        full / base
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);

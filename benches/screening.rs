//! Screening latency: every local check on (lists, high-risk ranges, premium bursts,
//! scanners, repeats, quotas, concurrency, new countries, volume jumps; no external engine),
//! per call, against routing alone (building the call's facts and evaluating the shipped
//! screening dialplan) measured on the same calls in the same run.
//!
//! Calls arrive at 1,000 per second on the engine's clock (so counters fill as they would at
//! that rate) from 2,000 users: national numbers mostly, international and high-risk ones
//! among them, each call ending a few seconds after it started. The time measured is the CPU
//! time of the call into the engine (its database writes happen behind it, off the call).
//!
//! `cargo bench --bench screening`; WARDEN_BENCH_CALLS (default 120000).

#[path = "../media/benches/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Instant;

use warden::dialplan::{CallFacts, Dialplan};
use warden::screening::lists::Lists;
use warden::screening::usage::Usage;
use warden::screening::{Engine, Request, ScreeningConfig};

const RATE: u64 = 1_000;
const USERS: u64 = 2_000;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn main() {
    if common::only_listing_or_testing() {
        return;
    }
    let calls: u64 = common::setting("WARDEN_BENCH_CALLS", 120_000);
    let plan_text = include_str!("../dialplans/screening.toml");
    let plan = Dialplan::parse(plan_text, "screening.toml").expect("the shipped plan");
    // Generous quotas, so most calls pass and take the admit path, as in production.
    let mut config = ScreeningConfig::default();
    let mut profile = warden::screening::profile::ProfileConfig {
        calls_per_hour: 1_000,
        calls_per_day: 10_000,
        max_concurrent: 100,
        max_concurrent_off_hours: 100,
        ..Default::default()
    };
    profile.block_prefixes = vec!["4930".into()];
    config.profiles.insert("default".into(), profile);
    config.calls_per_source_per_second = 0;
    let mut engine =
        Engine::new(&config, &|_| true, Usage::default(), Lists::default()).expect("engine");
    let numbers = [
        "02079460000",
        "01614960000",
        "01134960000",
        "0049301234567",
        "0033123456789",
        "005371234567",
        "00979123456789",
        "0018765550123",
        "07700900123",
        "02920180000",
    ];
    let start_unix = 1_799_928_000u64;
    let (mut routing, mut screening, mut added) = (Vec::new(), Vec::new(), Vec::new());
    let mut decisions = std::collections::BTreeMap::<&str, u64>::new();
    for i in 0..calls {
        let now = start_unix + i / RATE;
        let user = format!("user{}@example.com", i % USERS);
        // National numbers mostly; every tenth call of a user to one of the others.
        let callee = numbers[((i / USERS) as usize + (i % 7) as usize) % numbers.len()];
        let t = Instant::now();
        let facts = CallFacts {
            ruri_user: callee.to_owned(),
            ruri_host: "example.com".into(),
            from: format!("sip:{user}"),
            from_user: user.clone(),
            to: format!("sip:{callee}@example.com"),
            to_user: callee.to_owned(),
            asserted_identity: None,
            headers: Vec::new(),
            source: "192.0.2.7".parse().expect("ip"),
            transport: "udp".into(),
            session_case: None,
            caller_registered: true,
            emergency: false,
            now: jiff::Timestamp::from_second(now as i64).expect("time"),
        };
        black_box(plan.evaluate(black_box(&facts)));
        let routed = t.elapsed().as_nanos() as u64;
        let t = Instant::now();
        let request = Request {
            call: i,
            call_id: format!("{i}@bench"),
            profile: "default".into(),
            user,
            callee: callee.to_owned(),
            source: facts.source,
            user_agent: "Phone/1.0".into(),
            caller_number: "user".into(),
            identity: None,
            date: None,
            stir: None,
            shared: None,
            now,
        };
        let outcome = engine.screen(black_box(&request));
        let screened = t.elapsed().as_nanos() as u64;
        *decisions.entry(outcome.decision.name()).or_default() += 1;
        routing.push(routed);
        screening.push(routed + screened);
        added.push(screened);
        // Calls last a few seconds: the one started 3 s ago ends now.
        if i >= 3 * RATE {
            engine.call_ended(i - 3 * RATE, 2, now);
        }
        if i % (60 * RATE) == 0 {
            engine.sweep(now);
            black_box(engine.take_changes());
        }
    }
    routing.sort_unstable();
    screening.sort_unstable();
    added.sort_unstable();
    println!(
        "{calls} calls at {RATE}/s on the engine's clock, {USERS} users; decisions: {decisions:?}"
    );
    println!(
        "{:>5} {:>14} {:>20} {:>7} {:>15}",
        "", "routing (us)", "routing+screen (us)", "ratio", "screening (us)"
    );
    for (name, p) in [("p50", 0.50), ("p99", 0.99), ("p99.9", 0.999)] {
        let (r, s, a) = (
            percentile(&routing, p),
            percentile(&screening, p),
            percentile(&added, p),
        );
        println!(
            "{name:>5} {:>14.2} {:>20.2} {:>7.2} {:>15.2}",
            r as f64 / 1000.0,
            s as f64 / 1000.0,
            s as f64 / r.max(1) as f64,
            a as f64 / 1000.0
        );
    }
}

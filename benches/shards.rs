//! Signalling shards: complete calls (INVITE, 100, 200, ACK, BYE, 200, with an SDP offer
//! and answer anchored to fake media) through the sans-IO core on virtual time, at 1,000
//! calls per second of virtual time per shard, on one core; then on two sibling shards on
//! two threads, which share the registrar, guard, rooms and counters as a sharded server's
//! do; and, as the machine's own limit measured in the same run, on two cores on two
//! threads that share nothing. No socket: the figures are the cores' own work.
//!
//! `cargo bench --bench shards`; WARDEN_BENCH_CALLS (default 40000 per thread),
//! WARDEN_BENCH_ROUNDS (default 3: the best round of each counts).

#[path = "../media/benches/common/mod.rs"]
mod common;
#[allow(dead_code)] // the harness serves the tests too; the bench uses part of it
#[path = "../tests/common/core.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Net, Phone, sdp};
use warden::shard::Shard;

/// One call from `alice` to the registered `bob`, answered and hung up by alice.
fn call(net: &mut Net, alice: &mut Phone, bob: &mut Phone) {
    let invite = alice.invite(net, "bob", &sdp(7010, "sendrecv"), &[]);
    alice.receive(net); // 100 Trying
    let b_invite = bob.expect(net, "INVITE");
    bob.answer(net, &b_invite, 200, &sdp(7020, "sendrecv"));
    let ok = alice
        .responses(net)
        .into_iter()
        .find(|r| r.status() == 200)
        .expect("the caller gets the 200");
    let mut dialog = alice.dialog_as_caller(&invite, &ok);
    alice.ack(net, &dialog, "");
    bob.expect(net, "ACK");
    alice.request(net, &mut dialog, "BYE", &[], "");
    let bye = bob.expect(net, "BYE");
    bob.answer(net, &bye, 200, "");
    alice.receive(net);
    // 1,000 calls per second on the core's clock: transactions linger and expire as live.
    net.advance(Duration::from_millis(1));
    net.records.clear();
    net.asks.clear();
}

/// Run `calls` calls on `net` from its own caller, `bob` registered as `bob_addr`; the
/// wall time taken.
fn run(mut net: Net, lane: usize, calls: u64) -> Duration {
    let mut alice = Phone::new(
        &format!("alice{lane}"),
        &format!("127.0.0.{}:5070", lane + 10),
    );
    let mut bob = Phone::new("bob", "127.0.0.2:5080");
    let start = Instant::now();
    for _ in 0..calls {
        call(&mut net, &mut alice, &mut bob);
    }
    start.elapsed()
}

/// A net with bob registered on it.
fn registered() -> Net {
    let mut net = Net::new();
    Phone::new("bob", "127.0.0.2:5080").register(&mut net);
    net
}

/// Calls per second over `nets`, each on a thread of its own.
fn parallel(nets: Vec<Net>, calls: u64) -> f64 {
    let lanes = nets.len() as u64;
    let start = Instant::now();
    std::thread::scope(|scope| {
        let running: Vec<_> = nets
            .into_iter()
            .enumerate()
            .map(|(lane, net)| scope.spawn(move || run(net, lane, calls)))
            .collect();
        for r in running {
            r.join().expect("a lane finished");
        }
    });
    (lanes * calls) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if common::only_listing_or_testing() {
        return;
    }
    let calls: u64 = common::setting("WARDEN_BENCH_CALLS", 40_000);
    let rounds: u32 = common::setting("WARDEN_BENCH_ROUNDS", 3);
    let (mut one, mut sharded, mut apart) = (0f64, 0f64, 0f64);
    for _ in 0..rounds {
        one = one.max(parallel(vec![registered()], calls));
        let mut leader = registered();
        leader.core.set_shard(Shard { index: 0, count: 2 });
        let follower = leader.sibling(Shard { index: 1, count: 2 });
        sharded = sharded.max(parallel(vec![leader, follower], calls));
        apart = apart.max(parallel(vec![registered(), registered()], calls));
    }
    println!("signalling cores, {calls} calls per thread, best of {rounds} rounds:");
    println!("  one core:                     {one:>9.0} calls/s");
    println!(
        "  two shards (shared state):    {sharded:>9.0} calls/s  {:.2}x one core",
        sharded / one
    );
    println!(
        "  two cores sharing nothing:    {apart:>9.0} calls/s  {:.2}x one core (this machine's parallel limit)",
        apart / one
    );
    println!(
        "  sharing's cost: two shards are {:.2}x two independent cores",
        sharded / apart
    );
}

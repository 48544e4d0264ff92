//! The transaction layer (RFC 3261 section 17) fed a sequence of messages with time passing
//! between them: each chunk of the input (split at 0xff) is a time step in tens of
//! milliseconds, then a datagram from one of two peers over UDP or TCP. Requests get a
//! final answer (after a 100, sometimes) as a transaction user would give; timers fire as
//! time passes, and an hour later no transaction may be left.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use warden::sip::message::{Limits, Message, Response};
use warden::sip::transaction::{TimerConfig, Transactions, TxEvent};
use warden::sip::transport::{Destination, Transport};

fuzz_target!(|data: &[u8]| {
    let mut tx = Transactions::new(TimerConfig {
        t1: Duration::from_millis(500),
        t2: Duration::from_secs(4),
        t4: Duration::from_secs(5),
    });
    let mut now = Instant::now();
    for chunk in data.split(|b| *b == 0xff) {
        let Some((&head, datagram)) = chunk.split_first() else {
            continue;
        };
        now += Duration::from_millis(10 * u64::from(head & 0x7f));
        while let Some(due) = tx.poll_timeout().filter(|t| *t <= now) {
            tx.handle_timeout(due);
        }
        let from = Destination {
            transport: if head & 0x80 == 0 {
                Transport::Udp
            } else {
                Transport::Tcp
            },
            addr: if head & 1 == 0 {
                "127.0.0.1:5070".parse().expect("address")
            } else {
                "127.0.0.1:5071".parse().expect("address")
            },
            conn: None,
        };
        if let Ok(m) = Message::parse_datagram(Bytes::copy_from_slice(datagram), &Limits::default())
        {
            tx.receive(m, from, now);
        }
        while let Some(event) = tx.poll_event() {
            if let TxEvent::Request(key, request, _) = event {
                // A 100 first, sometimes; always a final answer (2xx to 6xx).
                if head & 2 != 0 {
                    tx.respond(&key, Response::to_request(&request, 100, "Trying"), now);
                }
                let status = 200 + 100 * u16::from((head >> 2) % 5);
                tx.respond(&key, Response::to_request(&request, status, "Fuzz"), now);
            }
        }
    }
    // Everything ends once time runs on: no transaction may live forever.
    now += Duration::from_secs(3600);
    while let Some(due) = tx.poll_timeout().filter(|t| *t <= now) {
        tx.handle_timeout(due);
    }
    while tx.poll_event().is_some() {}
    assert!(
        tx.is_empty(),
        "transactions left after an hour: {:?}",
        tx.len()
    );
});

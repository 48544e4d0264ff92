//! Any datagram through the SIP parser, then every accessor the core uses on what it
//! accepted, and its serialisation parsed again.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use warden::sip::message::{Limits, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::parse_datagram(Bytes::copy_from_slice(data), &Limits::default())
    else {
        return;
    };
    let _ = message.to_bytes();
    match &message {
        Message::Request(r) => {
            let _ = (r.method(), r.uri().user(), r.uri().host(), r.call_id());
            let _ = (r.from(), r.to(), r.to_tag(), r.cseq(), r.contact_uri());
            let _ = (r.address_list("Route"), r.address_list("Record-Route"));
            let _ = (r.address_list("P-Asserted-Identity"), r.max_forwards());
            let _ = r.header_pairs();
        }
        Message::Response(r) => {
            let _ = (r.status(), r.reason(), r.call_id(), r.cseq(), r.to_tag());
            let _ = (r.contact_uri(), r.address_list("Record-Route"));
        }
    }
    let _ = Message::parse_datagram(message.to_bytes(), &Limits::default());
});

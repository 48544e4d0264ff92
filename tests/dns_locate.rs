//! RFC 3263 against a real DNS server on loopback: a test name server (hickory's message
//! types over a UDP socket) holds NAPTR, SRV and A records; Warden's resolver, pointed at
//! it by `dns.servers`, locates a SIP URI by them.

use std::net::{Ipv4Addr, UdpSocket};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, NAPTR, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use warden::config::DnsConfig;
use warden::dns::{Lookup, resolve, resolver};
use warden::sip::transport::Transport;

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("a DNS name")
}

/// The zone: carrier.test says UDP by NAPTR; its SRV has two targets, priority 10 then 20.
fn answers(qname: &str, qtype: RecordType) -> Vec<Record> {
    let record = |data: RData| Record::from_rdata(name(qname), 60, data);
    match (qname, qtype) {
        ("carrier.test.", RecordType::NAPTR) => vec![record(RData::NAPTR(NAPTR::new(
            10,
            10,
            b"s".to_vec().into_boxed_slice(),
            b"SIP+D2U".to_vec().into_boxed_slice(),
            Vec::new().into_boxed_slice(),
            name("_sip._udp.carrier.test."),
        )))],
        ("_sip._udp.carrier.test.", RecordType::SRV) => vec![
            record(RData::SRV(SRV::new(20, 0, 5071, name("b.carrier.test.")))),
            record(RData::SRV(SRV::new(10, 0, 5070, name("a.carrier.test.")))),
        ],
        ("a.carrier.test.", RecordType::A) => {
            vec![record(RData::A(A(Ipv4Addr::new(127, 0, 0, 1))))]
        }
        ("b.carrier.test.", RecordType::A) => {
            vec![record(RData::A(A(Ipv4Addr::new(127, 0, 0, 2))))]
        }
        _ => Vec::new(),
    }
}

/// Answer queries from the zone until the test ends (the thread dies with the process).
fn name_server() -> std::net::SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
    let addr = socket.local_addr().expect("its address");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::new();
            reply
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_recursion_available(true)
                .add_queries(query.queries().to_vec());
            for q in query.queries() {
                reply.add_answers(answers(&q.name().to_ascii(), q.query_type()));
            }
            if reply.answers().is_empty() {
                reply.set_response_code(ResponseCode::NXDomain);
            }
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, from);
            }
        }
    });
    addr
}

#[tokio::test]
async fn naptr_then_srv_by_priority_then_addresses() {
    let server = name_server();
    let config = DnsConfig {
        servers: vec![server.to_string()],
        ..DnsConfig::default()
    };
    let dns = resolver(&config).expect("a resolver");
    let uri = "sip:0441234567@carrier.test".to_owned();
    let found = resolve(&dns, &Lookup::Host { uri: uri.clone() }, "e164.arpa").await;
    let got: Vec<(String, Transport, String)> = found
        .into_iter()
        .map(|(u, d)| (u, d.transport, d.addr.to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            (uri.clone(), Transport::Udp, "127.0.0.1:5070".into()),
            (uri, Transport::Udp, "127.0.0.2:5071".into()),
        ],
        "priority 10 first, the URI kept as the Request-URI"
    );

    // A port in the URI skips NAPTR and SRV: the host's address on that port.
    let direct = "sip:x@a.carrier.test:5999".to_owned();
    let found = resolve(&dns, &Lookup::Host { uri: direct }, "e164.arpa").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1.addr.to_string(), "127.0.0.1:5999");
}

//! DNS for bridge targets, done by the driver (the core asks with `Output::Resolve` and
//! gets the answer back): ENUM (NAPTR, RFC 6116) and host names in SIP URIs. hickory's
//! resolver caches answers for their TTL.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

use crate::config::DnsConfig;
use crate::e164;
use crate::sip::message::Uri;
use crate::sip::transport::{Destination, Transport};

/// What the core needs looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The SIP URIs ENUM gives for an E.164 number.
    Enum { number: String },
    /// Where a SIP URI with a host name goes.
    Host { uri: String },
    /// Where the next hop of a Route set (a URI with a host name) is, for a request to
    /// `request_uri` (the IMS way on to an S-CSCF given by name).
    Route {
        next_hop: String,
        request_uri: String,
    },
}

/// A target ready to ring: its Request-URI and where to send it.
pub type Found = (String, Destination);

/// The destination of a SIP URI whose host is an IP address (port 5060 unless given;
/// `transport=tcp` for TCP); None for host names and other transports.
pub fn literal_destination(uri: &str) -> Option<Destination> {
    let parsed = Uri::parse(uri).ok()?;
    let ip: IpAddr = parsed.host()?.trim_matches(['[', ']']).parse().ok()?;
    destination(&parsed, ip)
}

/// Where `uri` goes once its host is `ip`: its port (5060, or 5061 for TLS, unless given)
/// over its transport (TLS for a SIPS URI, else UDP unless `transport=` says otherwise;
/// None for transports Warden lacks, or a SIPS URI asking for another).
fn destination(uri: &Uri, ip: IpAddr) -> Option<Destination> {
    let transport = match (uri.is_sips(), uri.transport()) {
        (true, None) => Transport::Tls,
        (true, Some(name)) => Some(Transport::parse(&name)?)
            .filter(|t| matches!(t, Transport::Tls | Transport::Tcp))
            .map(|_| Transport::Tls)?,
        (false, None) => Transport::Udp,
        (false, Some(name)) => Transport::parse(&name)?,
    };
    Some(Destination {
        transport,
        addr: SocketAddr::new(ip, uri.port().unwrap_or(transport.default_port())),
        conn: None,
    })
}

/// The resolver the config asks for: its servers, or the system's (/etc/resolv.conf).
pub fn resolver(config: &DnsConfig) -> anyhow::Result<TokioResolver> {
    if config.servers.is_empty() {
        return Ok(Resolver::builder_tokio()
            .map_err(|e| anyhow::anyhow!("cannot read the system's DNS configuration: {e}"))?
            .build());
    }
    let mut group = NameServerConfigGroup::new();
    for server in config.servers() {
        group.merge(NameServerConfigGroup::from_ips_clear(
            &[server.ip()],
            server.port(),
            true,
        ));
    }
    let config = ResolverConfig::from_parts(None, vec![], group);
    Ok(Resolver::builder_with_config(config, TokioConnectionProvider::default()).build())
}

/// Look `lookup` up; what cannot be found or used is logged and left out. Several
/// destinations for one URI (SRV targets, addresses) come in the order to try them: the
/// core rings the first and fails over to the next.
pub async fn resolve(resolver: &TokioResolver, lookup: &Lookup, enum_suffix: &str) -> Vec<Found> {
    let uris = match lookup {
        Lookup::Host { uri } => return locate(resolver, uri).await,
        Lookup::Route {
            next_hop,
            request_uri,
        } => {
            let found = locate(resolver, next_hop).await;
            return found
                .into_iter()
                .map(|(_, dest)| (request_uri.clone(), dest))
                .collect();
        }
        Lookup::Enum { number } => enum_uris(resolver, number, enum_suffix).await,
    };
    let mut found = Vec::new();
    for uri in uris {
        let Some((host, parsed)) = Uri::parse(&uri).ok().and_then(|u| Some((u.host()?, u))) else {
            continue;
        };
        let ip = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => match resolver.lookup_ip(host.as_str()).await {
                Ok(ips) => match ips.iter().next() {
                    Some(ip) => ip,
                    None => continue,
                },
                Err(e) => {
                    tracing::info!(%host, error = %e, "bridge target host not found");
                    continue;
                }
            },
        };
        found.extend(destination(&parsed, ip).map(|dest| (uri, dest)));
    }
    found
}

/// RFC 3263 4: where a SIP URI with a host name goes. A port in the URI: its host's
/// addresses. Else a `transport=` (or a SIPS URI) picks the SRV name; else NAPTR records
/// choose the transports (SIP+D2U, SIP+D2T, SIPS+D2T, by order and preference), and
/// without them SRV for UDP, TCP, then TLS is tried. SRV targets come by priority, by
/// weight within one (RFC 2782); without SRV the host's addresses on the default port.
async fn locate(resolver: &TokioResolver, uri: &str) -> Vec<Found> {
    let Some((parsed, host)) = Uri::parse(uri).ok().and_then(|u| {
        let host = u.host()?;
        Some((u, host))
    }) else {
        return Vec::new();
    };
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return destination(&parsed, ip)
            .map(|d| (uri.to_owned(), d))
            .into_iter()
            .collect();
    }
    let named = parsed.transport().and_then(|t| Transport::parse(&t));
    let transport = match (parsed.is_sips(), named) {
        (true, _) => Some(Transport::Tls),
        (false, t) => t,
    };
    let mut found = Vec::new();
    if let Some(port) = parsed.port() {
        let transport = transport.unwrap_or(Transport::Udp);
        for ip in addresses(resolver, &host).await {
            found.push((uri.to_owned(), at(transport, ip, port)));
        }
        return found;
    }
    let services: Vec<(Transport, String)> = match transport {
        Some(t) => vec![(t, srv_name(t, &host))],
        None => {
            let chosen = naptr_services(resolver, &host).await;
            if chosen.is_empty() {
                [Transport::Udp, Transport::Tcp, Transport::Tls]
                    .into_iter()
                    .map(|t| (t, srv_name(t, &host)))
                    .collect()
            } else {
                chosen
            }
        }
    };
    for (transport, name) in &services {
        let Ok(answer) = resolver.srv_lookup(name.as_str()).await else {
            continue;
        };
        let records: Vec<Srv> = answer
            .iter()
            .map(|r| Srv {
                priority: r.priority(),
                weight: r.weight(),
                port: r.port(),
                target: r.target().to_utf8().trim_end_matches('.').to_owned(),
            })
            .collect();
        let ordered = order_srv(records, &mut rand::rng());
        for srv in ordered {
            for ip in addresses(resolver, &srv.target).await {
                found.push((uri.to_owned(), at(*transport, ip, srv.port)));
            }
        }
        if !found.is_empty() {
            tracing::debug!(%uri, srv = %name, targets = found.len(), "located by SRV");
            return found;
        }
    }
    let transport = transport.unwrap_or(Transport::Udp);
    for ip in addresses(resolver, &host).await {
        found.push((uri.to_owned(), at(transport, ip, transport.default_port())));
    }
    if found.is_empty() {
        tracing::info!(%host, "bridge target host not found (NAPTR, SRV, A/AAAA)");
    }
    found
}

fn at(transport: Transport, ip: IpAddr, port: u16) -> Destination {
    Destination {
        transport,
        addr: SocketAddr::new(ip, port),
        conn: None,
    }
}

fn srv_name(transport: Transport, host: &str) -> String {
    match transport {
        Transport::Udp => format!("_sip._udp.{host}."),
        Transport::Tcp => format!("_sip._tcp.{host}."),
        Transport::Tls => format!("_sips._tcp.{host}."),
    }
}

async fn addresses(resolver: &TokioResolver, host: &str) -> Vec<IpAddr> {
    match resolver.lookup_ip(format!("{host}.")).await {
        Ok(ips) => ips.iter().collect(),
        Err(e) => {
            tracing::debug!(%host, error = %e, "no address");
            Vec::new()
        }
    }
}

/// The host's NAPTR records for SIP (RFC 3263 4.1): the transports Warden has, by order
/// then preference, with the SRV name each replaces the host by.
async fn naptr_services(resolver: &TokioResolver, host: &str) -> Vec<(Transport, String)> {
    let Ok(answer) = resolver.lookup(format!("{host}."), RecordType::NAPTR).await else {
        return Vec::new();
    };
    let mut records: Vec<(u16, u16, Transport, String)> = answer
        .iter()
        .filter_map(|rdata| match rdata {
            RData::NAPTR(n) if n.flags().eq_ignore_ascii_case(b"s") => {
                let services = String::from_utf8_lossy(n.services()).to_ascii_uppercase();
                let transport = match services.as_str() {
                    "SIP+D2U" => Transport::Udp,
                    "SIP+D2T" => Transport::Tcp,
                    "SIPS+D2T" => Transport::Tls,
                    _ => return None,
                };
                Some((
                    n.order(),
                    n.preference(),
                    transport,
                    n.replacement().to_utf8(),
                ))
            }
            _ => None,
        })
        .collect();
    records.sort_by_key(|(order, preference, _, _)| (*order, *preference));
    records
        .into_iter()
        .map(|(_, _, t, name)| (t, name))
        .collect()
}

/// One SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// SRV records in the order to try them: lowest priority first; within a priority, each
/// next one drawn with a chance in proportion to its weight (RFC 2782).
pub fn order_srv(mut records: Vec<Srv>, rng: &mut impl rand::Rng) -> Vec<Srv> {
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].priority;
        let same = records
            .iter()
            .take_while(|r| r.priority == priority)
            .count();
        let mut group: Vec<Srv> = records.drain(..same).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = if total == 0 {
                0
            } else {
                let mut draw = rng.random_range(0..total);
                group
                    .iter()
                    .position(|r| {
                        let w = u32::from(r.weight);
                        if draw < w {
                            true
                        } else {
                            draw -= w;
                            false
                        }
                    })
                    .unwrap_or(0)
            };
            out.push(group.remove(pick));
        }
    }
    out
}

async fn enum_uris(resolver: &TokioResolver, number: &str, suffix: &str) -> Vec<String> {
    let Some(domain) = e164::domain(number, suffix) else {
        return Vec::new();
    };
    let answer = match resolver.lookup(domain.as_str(), RecordType::NAPTR).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::info!(%number, %domain, error = %e, "ENUM: no NAPTR records");
            return Vec::new();
        }
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let records: Vec<e164::Naptr> = answer
        .iter()
        .filter_map(|rdata| match rdata {
            RData::NAPTR(n) => Some(e164::Naptr {
                order: n.order(),
                preference: n.preference(),
                flags: text(n.flags()),
                services: text(n.services()),
                regexp: text(n.regexp()),
            }),
            _ => None,
        })
        .collect();
    let uris = e164::sip_uris(number, &records);
    tracing::info!(%number, %domain, records = records.len(), uris = ?uris, "ENUM lookup");
    uris
}

#[cfg(test)]
mod srv_tests {
    use super::*;
    use rand::SeedableRng;

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5060,
            target: target.into(),
        }
    }

    #[test]
    fn lower_priority_first_and_weights_share_the_first_place() {
        let records = vec![
            srv(20, 0, "backup"),
            srv(10, 90, "big"),
            srv(10, 10, "small"),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut big_first = 0;
        for _ in 0..1000 {
            let order = order_srv(records.clone(), &mut rng);
            assert_eq!(order[2].target, "backup", "priority 20 after both of 10");
            if order[0].target == "big" {
                big_first += 1;
            }
        }
        assert!(
            (850..=950).contains(&big_first),
            "weight 90 of 100: {big_first}"
        );
    }
}

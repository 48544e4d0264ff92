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

/// Look `lookup` up; what cannot be found or used is logged and left out.
pub async fn resolve(resolver: &TokioResolver, lookup: &Lookup, enum_suffix: &str) -> Vec<Found> {
    let uris = match lookup {
        Lookup::Host { uri } => vec![uri.clone()],
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

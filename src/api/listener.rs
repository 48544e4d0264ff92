//! The admin API's listener: plain HTTP and HTTPS on one port, told apart by the first
//! octet a client sends (a TLS record starts with 22, an HTTP request with a letter).
//!
//! HTTPS is what callers fetch the 608 jCard and its certificate over (RFC 8688 3.3), and
//! it keeps `admin.token` off the wire in the clear; plain HTTP stays for `warden ctl`, health
//! checks and scrapers on loopback. The certificate is the operator's (`admin.tls_cert_file`)
//! or one Warden makes at start.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::PrivateKeyDer;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::AdminConfig;
use crate::sip::tls;

/// First octet of a TLS handshake record (RFC 8446 5.1, `handshake(22)`).
const TLS_HANDSHAKE: u8 = 22;

/// How long a connection may take to send its first octet, to finish a TLS handshake, and
/// to send a request's head: an idle or trickling client cannot hold a task for ever.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate HTTPS presents: the operator's files, or a self-signed one for
/// `names` (the listen address, localhost, the jCard's public host) made now, with a
/// warning, since callers' verifiers will not trust it.
pub fn acceptor(config: &AdminConfig, names: &[String]) -> anyhow::Result<TlsAcceptor> {
    let (certs, key) = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => (
            tls::read_certs(cert, "admin.tls_cert_file")?,
            tls::read_key(key, "admin.tls_key_file")?,
        ),
        (None, None) => {
            let made = rcgen::generate_simple_self_signed(names.to_vec())?;
            tracing::warn!(
                names = ?names,
                "admin API HTTPS: a self-signed certificate made at start; set admin.tls_cert_file and admin.tls_key_file so callers can verify the jCard's host"
            );
            let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
                .map_err(|e| anyhow::anyhow!("admin HTTPS key: {e}"))?;
            (vec![made.cert.der().clone()], key)
        }
        _ => anyhow::bail!("admin.tls_cert_file and admin.tls_key_file go together: set both"),
    };
    let server = tls::server_config(certs, key)
        .map_err(|e| anyhow::anyhow!("admin.tls_cert_file and admin.tls_key_file: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Accept connections until the process ends, each served over TLS or in the clear as
/// its first octet says.
pub async fn serve(listener: TcpListener, app: Router, tls: TlsAcceptor) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, the next accept may work.
                tracing::warn!(error = %e, "admin API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(tcp, app, tls).await {
                tracing::debug!(%peer, error = %e, "admin API connection ended");
            }
        });
    }
}

async fn connection(tcp: TcpStream, app: Router, tls: TlsAcceptor) -> anyhow::Result<()> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(CLIENT_TIMEOUT, tcp.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        return Ok(()); // closed, or silent: nothing to serve
    }
    let service = TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT);
    if first[0] == TLS_HANDSHAKE {
        let stream = tokio::time::timeout(CLIENT_TIMEOUT, tls.accept(tcp)).await??;
        http.serve_connection(TokioIo::new(stream), service)
            // The event stream's WebSocket takes the connection over after its 101.
            .with_upgrades()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    } else {
        http.serve_connection(TokioIo::new(tcp), service)
            // The event stream's WebSocket takes the connection over after its 101.
            .with_upgrades()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_without_its_key_or_an_unreadable_file_is_refused_with_the_key_name() {
        let only_cert = AdminConfig {
            tls_cert_file: Some("/nonexistent/cert.pem".into()),
            ..AdminConfig::default()
        };
        let err = acceptor(&only_cert, &[]).err().expect("refused");
        assert!(err.to_string().contains("set both"), "{err}");
        let missing = AdminConfig {
            tls_key_file: Some("/nonexistent/key.pem".into()),
            ..only_cert
        };
        let err = acceptor(&missing, &[]).err().expect("refused");
        assert!(
            err.to_string()
                .starts_with("admin.tls_cert_file /nonexistent/cert.pem:"),
            "{err}"
        );
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        assert!(acceptor(&AdminConfig::default(), &names).is_ok());
    }
}

//! TLS for SIP (RFC 3261 26.2, RFC 5630): the server certificate and key from files,
//! re-read on reload, and the client side verifying next hops against Mozilla's roots or the
//! operator's CA file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

/// `[sip.tls]` in the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first) presented on `tls:` listeners.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates next hops' certificates must chain to; default: Mozilla's roots.
    pub ca_file: Option<PathBuf>,
}

/// What TLS connections are made with; cheap to clone, shared with the transport tasks.
#[derive(Clone)]
pub struct TlsContext {
    config: TlsConfig,
    server: Arc<RwLock<Option<Arc<rustls::ServerConfig>>>>,
    client: Arc<RwLock<Arc<rustls::ClientConfig>>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The PEM certificates in `path`; an error names `setting` (the key that gave the file).
pub(crate) fn read_certs(
    path: &Path,
    setting: &str,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{setting} {}: {e}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{setting} {}: no PEM certificate in the file",
        path.display()
    );
    Ok(certs)
}

/// The PEM private key in `path`; an error names `setting`.
pub(crate) fn read_key(path: &Path, setting: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("{setting} {}: {e}", path.display()))
}

/// A TLS server presenting `chain` (leaf first) with `key`, on the ring provider and the
/// safe protocol versions every listener of Warden's uses.
pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
}

impl TlsContext {
    /// Read the files `config` names; an error names the key, the file and the cause.
    pub fn load(config: &TlsConfig) -> anyhow::Result<TlsContext> {
        let context = TlsContext {
            config: config.clone(),
            server: Arc::new(RwLock::new(None)),
            client: Arc::new(RwLock::new(Arc::new(Self::client_config(config)?))),
        };
        context.reload()?;
        Ok(context)
    }

    fn client_config(config: &TlsConfig) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        match &config.ca_file {
            Some(path) => {
                for cert in read_certs(path, "sip.tls.ca_file")? {
                    roots
                        .add(cert)
                        .map_err(|e| anyhow::anyhow!("sip.tls.ca_file {}: {e}", path.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// Read the certificate, key and CA files again (SIGHUP); on an error the running
    /// configuration stays and the error says which file.
    pub fn reload(&self) -> anyhow::Result<()> {
        let server = match (&self.config.cert_file, &self.config.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "sip.tls.cert_file")?;
                let key_der = read_key(key, "sip.tls.key_file")?;
                let config = server_config(chain, key_der).map_err(|e| {
                    anyhow::anyhow!(
                        "sip.tls.cert_file {} and key_file {}: {e}",
                        cert.display(),
                        key.display()
                    )
                })?;
                Some(Arc::new(config))
            }
            (None, None) => None,
            _ => anyhow::bail!("sip.tls: cert_file and key_file go together"),
        };
        let client = Arc::new(Self::client_config(&self.config)?);
        *self.server.write().unwrap_or_else(|e| e.into_inner()) = server;
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = client;
        Ok(())
    }

    /// The acceptor for a new inbound connection (the certificate as last loaded); None
    /// when no certificate is configured.
    pub fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        let server = self.server.read().unwrap_or_else(|e| e.into_inner());
        server.clone().map(tokio_rustls::TlsAcceptor::from)
    }

    /// The connector for an outbound connection, verifying the peer's certificate.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        let client = self.client.read().unwrap_or_else(|e| e.into_inner());
        tokio_rustls::TlsConnector::from(client.clone())
    }
}

/// The name a next hop's certificate must carry: its host name when known, else its IP
/// address (an iPAddress subjectAltName).
pub fn server_name(host: Option<&str>, ip: std::net::IpAddr) -> ServerName<'static> {
    host.and_then(|h| ServerName::try_from(h.to_owned()).ok())
        .unwrap_or(ServerName::IpAddress(ip.into()))
}

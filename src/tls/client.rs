//! The upstream-facing TLS configuration, for caches that only accept TLS ("encrypted server
//! connections"): trusted CA bundle, server name for SNI and verification, optional client
//! certificate.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::TlsError;

pub struct UpstreamTlsOptions {
    pub roots: Vec<CertificateDer<'static>>,
    pub server_name: ServerName<'static>,
    /// False when `server_name` was derived from the upstream address (so each memcached node
    /// uses its own host).
    pub server_name_explicit: bool,
    pub client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl std::fmt::Debug for UpstreamTlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsOptions")
            .field("roots", &self.roots.len())
            .field("server_name", &self.server_name)
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

impl Clone for UpstreamTlsOptions {
    fn clone(&self) -> Self {
        Self {
            roots: self.roots.clone(),
            server_name: self.server_name.clone(),
            server_name_explicit: self.server_name_explicit,
            client_cert: self
                .client_cert
                .as_ref()
                .map(|(chain, key)| (chain.clone(), key.clone_key())),
        }
    }
}

pub fn build(opts: &UpstreamTlsOptions) -> Result<Arc<ClientConfig>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in &opts.roots {
        store.add(cert.clone()).map_err(|source| TlsError::Rustls {
            what: "upstream CA bundle",
            source,
        })?;
    }
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            what: "upstream TLS versions",
            source,
        })?
        .with_root_certificates(store);
    let config = match &opts.client_cert {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|source| TlsError::Rustls {
                what: "upstream client certificate and key",
                source,
            })?,
    };
    Ok(Arc::new(config))
}

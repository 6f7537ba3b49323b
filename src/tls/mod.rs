//! TLS for both sides of the proxy, on rustls 0.23 with the ring provider chosen explicitly
//! (no process-wide default is needed or installed).
//!
//! - `server`: the client-facing `ServerConfig` (TLS 1.2/1.3, client certificates, resumption).
//! - `client`: the upstream-facing `ClientConfig` (CA, SNI, optional client certificate).
//! - `pem`: PEM files through rustls-pki-types' `PemObject`, with errors that name the file.
//! - `dev_certs`: a throwaway dev CA and server certificate (rcgen) for running with nothing.

pub mod client;
pub mod dev_certs;
pub mod pem;
pub mod server;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The provider every config in cachegate is built with: ring's, whose suites are all AEAD with
/// ECDHE key exchange (TLS 1.2: ECDHE-{ECDSA,RSA} with AES-GCM or ChaCha20-Poly1305).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Errors while building a TLS configuration; each names what was being built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

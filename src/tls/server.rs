//! The client-facing TLS configuration.
//!
//! TLS 1.2 and 1.3 only (rustls has nothing older), with a configurable floor; AEAD ECDHE suites
//! only (the ring provider's set); no renegotiation (rustls never renegotiates); no 0-RTT
//! (`max_early_data_size` stays 0). Resumption: a stateful session cache for TLS 1.2 and 1.3 and
//! stateless TLS 1.3 tickets, unless turned off.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::TlsError;

/// The lowest protocol version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// Whether clients present certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    Off,
    /// Verified against these roots when presented; a client without one is still admitted.
    Optional(Vec<CertificateDer<'static>>),
    /// A certificate signed by one of these roots is required to finish the handshake.
    Required(Vec<CertificateDer<'static>>),
}

#[derive(Debug, Clone)]
pub struct ServerTlsOptions {
    pub min_version: MinVersion,
    pub client_auth: ClientAuth,
    /// Revoked client certificates (`tls.client_crl`): refused in the handshake. Every
    /// client certificate must then be covered by a CRL of its issuer.
    pub client_crls: Vec<CertificateRevocationListDer<'static>>,
    pub session_resumption: bool,
}

/// Whether `key` is the private key of `chain`'s leaf, as the listener's configuration will
/// check it: the configuration check calls it too, so that a mismatched pair is refused by
/// `cachegate check` and a reload alike, not first at startup.
pub fn check_identity(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), TlsError> {
    ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "listener TLS versions",
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(chain.to_vec(), key.clone_key())
        .map(|_| ())
        .map_err(|source| TlsError::Rustls {
            what: "listener certificate and key",
            source,
        })
}

/// How client certificates are verified (`None` when they are not asked for). The
/// configuration check builds it too, so that a CA bundle or CRL rustls refuses (a v1 CRL,
/// for one) is refused by `cachegate check` and a reload as it is at startup.
pub fn client_verifier(
    auth: &ClientAuth,
    crls: &[CertificateRevocationListDer<'static>],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let (ClientAuth::Optional(roots) | ClientAuth::Required(roots)) = auth else {
        return Ok(WebPkiClientVerifier::no_client_auth());
    };
    let mut store = RootCertStore::empty();
    for cert in roots {
        store.add(cert.clone()).map_err(|source| TlsError::Rustls {
            what: "client CA bundle",
            source,
        })?;
    }
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider);
    if !crls.is_empty() {
        // Every certificate of the chain is checked, intermediates too (a revoked sub-CA
        // revokes what it issued), and one whose issuer's CRL is not given is refused:
        // `client_crl` holds the CRL of every issuer in the chain.
        verifier = verifier.with_crls(crls.iter().cloned());
    }
    if matches!(auth, ClientAuth::Optional(_)) {
        verifier = verifier.allow_unauthenticated();
    }
    verifier
        .build()
        .map_err(|e| TlsError::Invalid(format!("client certificate verifier: {e}")))
}

/// Entries in the stateful session cache (each a few hundred bytes).
const SESSION_CACHE_ENTRIES: usize = 4096;

pub fn build(
    opts: &ServerTlsOptions,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(prefer_aes128(super::provider().as_ref().clone()));
    let versions: &[&'static rustls::SupportedProtocolVersion] = match opts.min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|source| TlsError::Rustls {
            what: "listener TLS versions",
            source,
        })?;
    let builder = match &opts.client_auth {
        ClientAuth::Off => builder.with_no_client_auth(),
        ClientAuth::Optional(_) | ClientAuth::Required(_) => {
            let verifier = client_verifier(&opts.client_auth, &opts.client_crls, provider)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            what: "listener certificate and key",
            source,
        })?;
    config.max_early_data_size = 0;
    // The server's order decides (AES-128-GCM first); see `prefer_aes128`.
    config.ignore_client_order = true;
    if opts.session_resumption {
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|source| TlsError::Rustls {
                what: "TLS 1.3 session tickets",
                source,
            })?;
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// The provider's cipher suites with the AES-128-GCM ones first. Most clients (OpenSSL, rustls)
/// ask for AES-256-GCM with SHA-384 first; AES-128-GCM is as safe for this use, its SHA-256 key
/// schedule runs on the CPU's SHA extensions where SHA-384 cannot, and it encrypts with fewer
/// rounds (measured here: user CPU per handshake 120 -> 100 µs). ChaCha20 stays available for
/// clients without AES instructions that offer nothing else.
fn prefer_aes128(mut provider: CryptoProvider) -> CryptoProvider {
    use rustls::CipherSuite as C;
    provider.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    provider
}

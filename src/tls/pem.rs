//! PEM loading with errors that say which file and why, never a panic.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Why a PEM file gave nothing usable; each names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// It does not exist (here: `cachegate check --allow-missing-files` lists such files).
    #[error("cannot read {}: no such file", .0.display())]
    Missing(PathBuf),
    #[error("cannot read {}: {why}", .0.display(), why = .1)]
    Unreadable(PathBuf, String),
    #[error("{}: not valid PEM: {why}", .0.display(), why = .1)]
    Invalid(PathBuf, String),
    /// Valid PEM without what was asked for (a certificate, a CRL, a private key).
    #[error("{}: no PEM {what} found", .0.display(), what = .1)]
    Empty(PathBuf, &'static str),
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| describe(path, e))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| describe(path, e))?;
    if certs.is_empty() {
        return Err(PemError::Empty(
            path.into(),
            "certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// Every CRL (`-----BEGIN X509 CRL-----`) in a PEM file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, PemError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| describe(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| describe(path, e))?;
    if crls.is_empty() {
        return Err(PemError::Empty(
            path.into(),
            "CRL (-----BEGIN X509 CRL-----)",
        ));
    }
    Ok(crls)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            PemError::Empty(path.into(), "private key (PKCS#8, PKCS#1 or SEC1)")
        }
        e => describe(path, e),
    })
}

fn describe(path: &Path, err: rustls_pki_types::pem::Error) -> PemError {
    match err {
        rustls_pki_types::pem::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            PemError::Missing(path.into())
        }
        rustls_pki_types::pem::Error::Io(io) => PemError::Unreadable(path.into(), io.to_string()),
        other => PemError::Invalid(path.into(), other.to_string()),
    }
}

/// The earliest `notAfter` of these certificates, in seconds since the Unix epoch (`None`
/// when there are none, or none parses).
pub fn earliest_expiry(certs: &[CertificateDer<'_>]) -> Option<i64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    certs
        .iter()
        .filter_map(|der| X509Certificate::from_der(der.as_ref()).ok())
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .min()
}

/// The earliest `nextUpdate` of these CRLs, in seconds since the Unix epoch: when the first
/// of them is due to be replaced (`None` when none says).
pub fn earliest_next_update(crls: &[CertificateRevocationListDer<'_>]) -> Option<i64> {
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;
    crls.iter()
        .filter_map(|der| CertificateRevocationList::from_der(der.as_ref()).ok())
        .filter_map(|(_, crl)| crl.next_update().map(|t| t.timestamp()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = load_certs(&missing).unwrap_err();
        assert_eq!(err, PemError::Missing(missing.clone()));
        assert!(err.to_string().contains("missing.pem"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "hello").unwrap();
        let err = load_certs(&empty).unwrap_err().to_string();
        assert!(
            err.contains("empty.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = load_key(&empty).unwrap_err().to_string();
        assert!(
            err.contains("empty.pem") && err.contains("no PEM private key"),
            "{err}"
        );
    }
}

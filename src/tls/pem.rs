//! PEM loading with errors that say which file and why, never a panic.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| describe(path, e))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| describe(path, e))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) found",
            path.display()
        ));
    }
    Ok(certs)
}

/// Every CRL (`-----BEGIN X509 CRL-----`) in a PEM file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| describe(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| describe(path, e))?;
    if crls.is_empty() {
        return Err(format!(
            "{}: no PEM CRL (-----BEGIN X509 CRL-----) found",
            path.display()
        ));
    }
    Ok(crls)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!(
            "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found",
            path.display()
        ),
        e => describe(path, e),
    })
}

/// How a PEM file that does not exist is described (`cachegate check --allow-missing-files`
/// recognises it by this ending).
pub const MISSING_FILE: &str = "no such file";

fn describe(path: &Path, err: rustls_pki_types::pem::Error) -> String {
    match err {
        rustls_pki_types::pem::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            format!("cannot read {}: {MISSING_FILE}", path.display())
        }
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read {}: {io}", path.display()),
        other => format!("{}: not valid PEM: {other}", path.display()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(load_certs(&missing).unwrap_err().contains("missing.pem"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "hello").unwrap();
        let err = load_certs(&empty).unwrap_err();
        assert!(
            err.contains("empty.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = load_key(&empty).unwrap_err();
        assert!(
            err.contains("empty.pem") && err.contains("no PEM private key"),
            "{err}"
        );
    }
}

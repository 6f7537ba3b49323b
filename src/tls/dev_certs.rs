//! Throwaway development PKI made with rcgen: a dev CA and certificates it signs.
//!
//! Used when a TLS listener has no certificate configured (so that cachegate starts with no files
//! of the user's), and by the test harness to make a fresh PKI per run. Never for production:
//! the CA key sits next to the certificates in the data directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};

/// A certificate authority that can issue server and client certificates.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A CA certificate's parameters: this name, `depth` levels of CAs allowed below it.
fn ca_params(common_name: &str, depth: u8) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(depth));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A random positive serial number.
fn random_serial() -> Result<[u8; 8], rcgen::Error> {
    let mut serial = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| rcgen::Error::RingUnspecified)?;
    // Positive, as DER integers for serial numbers must be.
    serial[0] &= 0x7f;
    Ok(serial)
}

/// A PEM certificate and its PEM private key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate's serial number, to revoke it with [`DevCa::crl_pem`].
    pub serial: Vec<u8>,
}

impl DevCa {
    pub fn generate(common_name: &str) -> Result<Self, rcgen::Error> {
        Self::generate_with_depth(common_name, 0)
    }

    /// A root that may sign `depth` levels of intermediate CAs below it.
    pub fn generate_with_depth(common_name: &str, depth: u8) -> Result<Self, rcgen::Error> {
        let params = ca_params(common_name, depth)?;
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// An intermediate CA signed by this one (which must allow one), and its serial number.
    pub fn issue_intermediate(&self, common_name: &str) -> Result<(DevCa, Vec<u8>), rcgen::Error> {
        let mut params = ca_params(common_name, 0)?;
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let issuer = CertifiedIssuer::signed_by(params, KeyPair::generate()?, &self.issuer)?;
        Ok((DevCa { issuer }, serial.to_vec()))
    }

    /// A server certificate for these DNS names / IP addresses.
    pub fn issue_server(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        self.issue(names, names.first().copied().unwrap_or("cachegate"), false)
    }

    /// A client certificate with this subject common name (also its one DNS SAN).
    pub fn issue_client(&self, common_name: &str) -> Result<Issued, rcgen::Error> {
        self.issue(&[common_name], common_name, true)
    }

    fn issue(&self, names: &[&str], cn: &str, client: bool) -> Result<Issued, rcgen::Error> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial.to_vec(),
        })
    }

    /// A CRL (PEM) of this CA revoking the certificates with these serial numbers.
    pub fn crl_pem(&self, revoked: &[&[u8]]) -> Result<String, rcgen::Error> {
        self.crl_pem_until(revoked, 2099)
    }

    /// [`DevCa::crl_pem`], due to be replaced at the start of `next_year`.
    pub fn crl_pem_until(&self, revoked: &[&[u8]], next_year: i32) -> Result<String, rcgen::Error> {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(next_year, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: rcgen::date_time_ymd(2025, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }
}

/// Where the dev material for a listener lives.
#[derive(Debug, Clone)]
pub struct DevFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes sure `dir` holds a dev CA and a server certificate for localhost, 127.0.0.1 and ::1,
/// reusing what an earlier run made (so a `--cacert` path handed out stays valid). Returns the
/// files and whether they were generated now.
pub fn ensure(dir: &Path) -> Result<(DevFiles, bool), String> {
    let files = DevFiles {
        ca: dir.join("dev-ca.pem"),
        cert: dir.join("dev-server.pem"),
        key: dir.join("dev-server-key.pem"),
    };
    if files.ca.is_file() && files.cert.is_file() && files.key.is_file() {
        return Ok((files, false));
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(&format!("cannot create {}", dir.display()), &e))?;
    let ca = DevCa::generate("cachegate development CA (not for production)")
        .map_err(|e| fail("generating the dev CA", &e))?;
    let server = ca
        .issue_server(&["localhost", "127.0.0.1", "::1"])
        .map_err(|e| fail("generating the dev server certificate", &e))?;
    write_private(&files.key, &server.key_pem)?;
    for (path, pem) in [(&files.cert, &server.cert_pem), (&files.ca, &ca.cert_pem())] {
        std::fs::write(path, pem)
            .map_err(|e| fail(&format!("cannot write {}", path.display()), &e))?;
    }
    Ok((files, true))
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)
        .and_then(|mut f| f.write_all(pem.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let (files, generated) = ensure(dir.path()).unwrap();
        assert!(generated);
        let first = std::fs::read(&files.cert).unwrap();
        let (_, generated) = ensure(dir.path()).unwrap();
        assert!(!generated);
        assert_eq!(std::fs::read(&files.cert).unwrap(), first);
        assert!(crate::tls::pem::load_key(&files.key).is_ok());
        assert_eq!(crate::tls::pem::load_certs(&files.ca).unwrap().len(), 1);
    }
}

//! Certificate identities: the names in a verified client certificate (subject CN, DNS SANs,
//! URI SANs such as SPIFFE IDs), and the configured mapping from those names to users.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The names a client certificate vouches for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    pub cn: Vec<String>,
    pub dns: Vec<String>,
    pub uri: Vec<String>,
}

/// Reads the names of a DER certificate that rustls has already verified.
pub fn names(der: &[u8]) -> Option<CertNames> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut out = CertNames::default();
    // A subject with several CNs names nobody by CN: a CA that checked one of them could be
    // used to get another's mapping (found by a reviewer). Its SANs still count.
    if cert.subject().iter_common_name().count() == 1 {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                out.cn.push(s.to_string());
            }
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => out.dns.push(d.to_string()),
                GeneralName::URI(u) => out.uri.push(u.to_string()),
                _ => {}
            }
        }
    }
    Some(out)
}

/// Which certificate name a mapping matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Cn,
    Dns,
    Uri,
}

/// "A certificate with this name logs in as this user."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertMapping {
    pub kind: NameKind,
    pub value: String,
    pub user: String,
}

/// The user the first matching mapping names, in configuration order.
pub fn user_for<'a>(mappings: &'a [CertMapping], names: &CertNames) -> Option<&'a str> {
    mappings.iter().find_map(|m| {
        let list = match m.kind {
            NameKind::Cn => &names.cn,
            NameKind::Dns => &names.dns,
            NameKind::Uri => &names.uri,
        };
        list.iter()
            .any(|n| n == &m.value)
            .then_some(m.user.as_str())
    })
}

/// The user a verified client certificate logs in as: its mapping's, if the group has it
/// (enabled or not: the caller decides what a disabled one means). The one place both
/// protocols map certificates to users.
pub fn mapped_user<'g>(
    group: &'g crate::auth::acl::UserGroup,
    mappings: &[CertMapping],
    names: Option<&CertNames>,
) -> Option<&'g std::sync::Arc<crate::auth::acl::User>> {
    let name = user_for(mappings, names?)?;
    group.get(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::dev_certs::DevCa;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    #[test]
    fn names_and_mapping() {
        let ca = DevCa::generate("t").unwrap();
        let issued = ca.issue_client("app-client").unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let names = names(&der).unwrap();
        assert_eq!(names.cn, vec!["app-client"]);
        assert_eq!(names.dns, vec!["app-client"]);
        let maps = vec![
            CertMapping {
                kind: NameKind::Uri,
                value: "spiffe://x/y".into(),
                user: "web".into(),
            },
            CertMapping {
                kind: NameKind::Cn,
                value: "app-client".into(),
                user: "app".into(),
            },
        ];
        assert_eq!(user_for(&maps, &names), Some("app"));
        assert_eq!(user_for(&maps[..1], &names), None);
    }

    /// A subject with two CNs (made with `openssl req -subj "/CN=alice/CN=ops-console"`)
    /// matches no CN rule, whichever of its CNs the rule names.
    #[test]
    fn a_subject_with_several_cns_names_nobody_by_cn() {
        const TWO_CNS: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBpDCCAUmgAwIBAgIUK+u+y7X4d6Ep2ZqeJFtaahIW/LQwCgYIKoZIzj0EAwIw\n\
JjEOMAwGA1UEAwwFYWxpY2UxFDASBgNVBAMMC29wcy1jb25zb2xlMCAXDTI2MTEz\n\
MDA4MjIzNFoYDzIxMjYxMTA2MDgyMjM0WjAmMQ4wDAYDVQQDDAVhbGljZTEUMBIG\n\
A1UEAwwLb3BzLWNvbnNvbGUwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATk8t89\n\
cdrqocNtKg3QrRRVNqddMB+Q+nA66RmB+cQoWlqZnUO3alxYRQTubhlGOowDbFbn\n\
Dcz/+GuyRGNjkaOAo1MwUTAdBgNVHQ4EFgQUzaHniQrzvw6LXKTXKJWxKANpBe4w\n\
HwYDVR0jBBgwFoAUzaHniQrzvw6LXKTXKJWxKANpBe4wDwYDVR0TAQH/BAUwAwEB\n\
/zAKBggqhkjOPQQDAgNJADBGAiEAkF7SyfztLuAAKOLK58d9UkFDxoHIEHGyX164\n\
yxldlU0CIQCT8f3ujFSj+XG5ua7Vu2ExNRo8eBQjaECxodvLcH9pFw==\n\
-----END CERTIFICATE-----";
        let der = CertificateDer::from_pem_slice(TWO_CNS.as_bytes()).unwrap();
        let names = names(&der).unwrap();
        assert!(names.cn.is_empty(), "{names:?}");
        for cn in ["alice", "ops-console"] {
            let maps = [CertMapping {
                kind: NameKind::Cn,
                value: cn.into(),
                user: "ops".into(),
            }];
            assert_eq!(user_for(&maps, &names), None, "{cn}");
        }
    }
}

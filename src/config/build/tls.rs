//! The TLS sections: a listener's server side (certificates, client CAs, CRLs, versions) and
//! the upstream's client side, and the address lists (allow-list, trusted proxies).

use super::*;

/// `Some(None)` is a valid plaintext listener; `None` means a problem was recorded.
pub(super) fn server_tls(
    p: &mut Problems,
    key: &str,
    t: ServerTlsFile,
    base: &Path,
) -> Option<Option<ListenerTls>> {
    if t.enabled == Some(false) {
        return Some(None);
    }
    let before = p.list.len();
    let preferred = match t.transit_encryption_mode.as_deref() {
        None | Some("required") => false,
        Some("preferred") if matches!(t.client_auth.as_deref(), Some("required")) => {
            p.add(
                format!("{key}.transit_encryption_mode"),
                "\"preferred\" admits plaintext clients, which cannot present the client certificate that client_auth = \"required\" demands: pick one",
            );
            false
        }
        Some("preferred") => true,
        Some(other) => {
            p.add(
                format!("{key}.transit_encryption_mode"),
                format!("`{other}` is not one of \"required\", \"preferred\""),
            );
            false
        }
    };
    let min_version = match t.min_version.as_deref() {
        None | Some("1.2") => MinVersion::Tls12,
        Some("1.3") => MinVersion::Tls13,
        Some(v) => {
            p.add(
                format!("{key}.min_version"),
                format!("`{v}` is not supported (\"1.2\" or \"1.3\"; older versions are insecure)"),
            );
            MinVersion::Tls12
        }
    };
    let roots = t
        .client_ca
        .as_ref()
        .and_then(|path| certs(p, &format!("{key}.client_ca"), &resolve(base, path)));
    let client_auth = match (t.client_auth.as_deref(), roots) {
        (None | Some("off"), _) => ClientAuth::Off,
        (Some("optional"), Some(r)) => ClientAuth::Optional(r),
        (Some("required"), Some(r)) => ClientAuth::Required(r),
        (Some(mode @ ("optional" | "required")), None) => {
            if t.client_ca.is_none() {
                p.add(
                    format!("{key}.client_ca"),
                    format!(
                        "client_auth = \"{mode}\" needs a CA bundle to verify client certificates"
                    ),
                );
            }
            ClientAuth::Off
        }
        (Some(other), _) => {
            p.add(
                format!("{key}.client_auth"),
                format!("`{other}` is not one of \"off\", \"optional\", \"required\""),
            );
            ClientAuth::Off
        }
    };
    let client_crls = match &t.client_crl {
        None => Vec::new(),
        Some(_) if matches!(t.client_auth.as_deref(), None | Some("off")) => {
            p.add(
                format!("{key}.client_crl"),
                "revokes client certificates: needs client_auth = \"optional\" or \"required\"",
            );
            Vec::new()
        }
        Some(path) => match crate::tls::pem::load_crls(&resolve(base, path)) {
            Ok(crls) => {
                // Still used past its date (a fresh one may be on its way), but said: a CRL
                // pipeline that stopped fails quietly otherwise (found by a reviewer).
                let due = crate::tls::pem::earliest_next_update(&crls);
                if due.is_some_and(|due| due < crate::deadline::unix_now()) {
                    tracing::warn!(setting = %format!("{key}.client_crl"), path = %path.display(), "a client CRL is past its next update: it is still used; replace it");
                }
                crls
            }
            Err(e) => {
                p.pem(format!("{key}.client_crl"), e);
                Vec::new()
            }
        },
    };
    let identity = match (&t.cert, &t.key) {
        (None, None) => Some(Identity::Dev),
        (Some(_), None) | (None, Some(_)) => {
            p.add(
                key,
                "`cert` and `key` go together: give both, or neither for dev certificates",
            );
            None
        }
        (Some(c), Some(k)) => {
            let chain = certs(p, &format!("{key}.cert"), &resolve(base, c));
            let private = match load_key(&resolve(base, k)) {
                Ok(key) => Some(key),
                Err(e) => {
                    p.pem(format!("{key}.key"), e);
                    None
                }
            };
            match (chain, private) {
                (Some(chain), Some(private)) => {
                    match crate::tls::server::check_identity(&chain, &private) {
                        Ok(()) => Some(Identity::Files {
                            chain,
                            key: private,
                        }),
                        Err(e) => {
                            p.add(format!("{key}.key"), e.to_string());
                            None
                        }
                    }
                }
                _ => None,
            }
        }
    };
    if p.list.len() == before {
        // As the listener will build it: what rustls refuses (a v1 CRL) is refused here, in
        // `cachegate check` and a reload too, not only at startup.
        let built =
            crate::tls::server::client_verifier(&client_auth, &client_crls, crate::tls::provider());
        if let Err(e) = built {
            let setting = if client_crls.is_empty() {
                "client_ca"
            } else {
                "client_crl"
            };
            p.add(format!("{key}.{setting}"), e.to_string());
        }
    }
    if p.list.len() > before {
        return None;
    }
    Some(Some(ListenerTls {
        identity: identity?,
        options: ServerTlsOptions {
            min_version,
            client_auth,
            client_crls,
            session_resumption: t.session_resumption.unwrap_or(true),
        },
        handshake_timeout: t.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        preferred,
    }))
}

/// CIDR networks (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a single host).
pub(super) fn networks(p: &mut Problems, key: &str, list: &[String]) -> Option<Vec<ipnet::IpNet>> {
    let before = p.list.len();
    let mut nets = Vec::new();
    for (i, text) in list.iter().enumerate() {
        match text.parse::<ipnet::IpNet>() {
            Ok(net) => nets.push(net.trunc()),
            Err(_) => match text.parse::<std::net::IpAddr>() {
                Ok(ip) => nets.push(ipnet::IpNet::from(ip)),
                Err(_) => p.add(
                    format!("{key}[{i}]"),
                    format!("`{text}` is not a CIDR network (like 10.0.0.0/8) or an IP address"),
                ),
            },
        }
    }
    (p.list.len() == before).then_some(nets)
}

pub(super) fn certs(
    p: &mut Problems,
    key: &str,
    path: &Path,
) -> Option<Vec<CertificateDer<'static>>> {
    load_certs(path).map_err(|e| p.pem(key, e)).ok()
}

pub(super) fn upstream_tls(
    p: &mut Problems,
    key: &str,
    t: ClientTlsFile,
    address: &str,
    base: &Path,
) -> Option<UpstreamTlsOptions> {
    let roots = match &t.ca {
        None => {
            p.add(
                format!("{key}.ca"),
                "missing: the CA bundle that signed the upstream's certificate",
            );
            None
        }
        Some(path) => certs(p, &format!("{key}.ca"), &resolve(base, path)),
    };
    let name = t
        .server_name
        .clone()
        .or_else(|| split_host_port(address).map(|(h, _)| h.to_string()))
        .unwrap_or_default();
    let server_name = match ServerName::try_from(name.clone()) {
        Ok(n) => Some(n),
        Err(_) => {
            p.add(
                format!("{key}.server_name"),
                format!("`{name}` is not a valid DNS name or IP address"),
            );
            None
        }
    };
    let client_cert = match (&t.cert, &t.key) {
        (None, None) => Some(None),
        (Some(c), Some(k)) => {
            let chain = certs(p, &format!("{key}.cert"), &resolve(base, c));
            let private = load_key(&resolve(base, k))
                .map_err(|e| p.pem(format!("{key}.key"), e))
                .ok();
            chain.zip(private).map(Some)
        }
        _ => {
            p.add(key, "`cert` and `key` go together");
            None
        }
    };
    Some(UpstreamTlsOptions {
        roots: roots?,
        server_name: server_name?,
        server_name_explicit: t.server_name.is_some(),
        client_cert: client_cert?,
    })
}

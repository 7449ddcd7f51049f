//! TLS for the service (rustls on ring): the certificate and key, read again when their files
//! change, and optional client certificates verified against a CA, whose subject CN is mapped
//! to a role (`Config::cert_roles`).
//!
//! Every new connection first compares the files' inode, size and mtime with those last read
//! (three `stat`s); when one changed, the certificate, key and client CA are read again and the
//! next handshakes use them. A set that cannot be used (a key that does not match the
//! certificate, a file half-written) is logged once and the previous set stays in use until
//! the files are fixed.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto::ring};

use crate::error::{ApiError, Code};
use crate::tokens::{Identity, Role};

/// The files TLS is served with.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain (PEM), the service's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Client certificates signed by these CAs (PEM) are verified and identify their caller;
    /// clients without a certificate are still served (they then need a bearer token).
    pub client_ca: Option<PathBuf>,
}

/// The TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

type Stamp = Option<(u64, u64, i64, i64, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

/// The served TLS configuration, read again when its files change.
pub(crate) struct Tls {
    files: TlsFiles,
    state: Mutex<State>,
}

struct State {
    /// The stamps of the files the configuration in use was read from.
    stamps: Vec<Stamp>,
    /// The stamps of a set that could not be used (logged once).
    failed: Option<Vec<Stamp>>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the certificate, key and client CA.
    pub(crate) fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let stamps = stamps(&files);
        let config = build(&files)?;
        Ok(Tls {
            files,
            state: Mutex::new(State {
                stamps,
                failed: None,
                acceptor: TlsAcceptor::from(Arc::new(config)),
            }),
        })
    }

    /// The acceptor for a new connection: read again first when a file changed.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let now = stamps(&self.files);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now != state.stamps && state.failed.as_ref() != Some(&now) {
            match build(&self.files) {
                Ok(config) => {
                    state.acceptor = TlsAcceptor::from(Arc::new(config));
                    state.stamps = now;
                    state.failed = None;
                    tracing::info!("TLS certificate, key and client CA read again");
                }
                Err(e) => {
                    tracing::error!("{e}; the previous TLS certificate stays in use");
                    state.failed = Some(now);
                }
            }
        }
        state.acceptor.clone()
    }
}

fn stamps(files: &TlsFiles) -> Vec<Stamp> {
    let mut v = vec![stamp(&files.cert), stamp(&files.key)];
    if let Some(ca) = &files.client_ca {
        v.push(stamp(ca));
    }
    v
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |e: String| TlsError(format!("{what} {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn build(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let chain = certs(&files.cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError(format!("--tls-key {}: {e}", files.key.display())))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca, "--client-ca")? {
                roots
                    .add(c)
                    .map_err(|e| TlsError(format!("--client-ca {}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError(format!("--client-ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError(format!(
            "--tls-cert {} with --tls-key {}: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client certificate the handshake verified: its subject CN, and the role that name is
/// given (`--cert-role`). Put in each request's extensions.
#[derive(Clone, Debug)]
pub(crate) struct ClientCert {
    /// The subject's common name, when it has one.
    pub(crate) name: Option<String>,
    /// Its role, when the name is given one.
    pub(crate) role: Option<Role>,
}

impl ClientCert {
    /// The verified leaf certificate `der` of a connection, its name looked up in `roles`.
    pub(crate) fn new(der: &[u8], roles: &BTreeMap<String, Role>) -> ClientCert {
        let name = common_name(der);
        let role = name.as_ref().and_then(|n| roles.get(n).copied());
        ClientCert { name, role }
    }

    /// The caller it identifies: 403 when its name is given no role.
    pub(crate) fn identity(&self) -> Result<Identity, ApiError> {
        match (&self.name, self.role) {
            (Some(name), Some(role)) => Ok(Identity {
                name: name.clone(),
                role,
            }),
            (Some(name), None) => Err(ApiError::new(
                Code::Forbidden,
                format!(
                    "the client certificate CN={name} is given no role by this service \
                     (--cert-role {name}=requester|admin), and no bearer token was sent"
                ),
            )),
            (None, _) => Err(ApiError::new(
                Code::Forbidden,
                "the client certificate has no subject CN to name the caller by, and no bearer \
                 token was sent",
            )),
        }
    }
}

/// One DER element: tag, contents, what follows. Single-byte tags only (all X.509 uses here).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The subject's common name (OID 2.5.4.3) of a DER certificate: the last one when several.
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] version
    }
    // serialNumber, signature, issuer, validity: then the subject.
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, mut rdns, _) = tlv(rest)? else {
        return None;
    };
    let mut found = None;
    while !rdns.is_empty() {
        let (tag, set, after) = tlv(rdns)?;
        rdns = after;
        if tag != SET {
            return None;
        }
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, attr, after) = tlv(attrs)?;
            attrs = after;
            let (0x06, oid, value) = tlv(attr)? else {
                return None;
            };
            if oid != CN {
                continue;
            }
            let (tag, text, _) = tlv(value)?;
            found = match tag {
                // UTF8String, PrintableString, IA5String, TeletexString (as Latin-1 is rare: take
                // it only when it is UTF-8).
                0x0c | 0x13 | 0x16 | 0x14 => std::str::from_utf8(text).ok().map(str::to_owned),
                _ => None,
            };
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element.
    fn el(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if content.len() < 0x80 {
            v.push(content.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(content);
        v
    }

    fn name(attrs: &[(&[u8], u8, &str)]) -> Vec<u8> {
        let mut rdns = Vec::new();
        for (oid, tag, text) in attrs {
            let attr = [el(0x06, oid), el(*tag, text.as_bytes())].concat();
            rdns.extend(el(0x31, &el(0x30, &attr)));
        }
        el(0x30, &rdns)
    }

    fn cert(subject: &[u8], version: bool) -> Vec<u8> {
        let mut tbs = Vec::new();
        if version {
            tbs.extend(el(0xa0, &el(0x02, &[2])));
        }
        tbs.extend(el(0x02, &[1; 20]));
        tbs.extend(el(0x30, &el(0x06, &[0x2a, 0x86, 0x48])));
        tbs.extend(name(&[(&[0x55, 0x04, 0x03], 0x0c, "issuer-ca")]));
        tbs.extend(el(0x30, &[0x17, 0x00, 0x17, 0x00]));
        tbs.extend_from_slice(subject);
        tbs.extend(el(0x30, &[0u8; 200])); // a long element after: two-byte length
        el(
            0x30,
            &[el(0x30, &tbs), el(0x30, &[]), el(0x03, &[0])].concat(),
        )
    }

    #[test]
    fn the_subject_cn_is_read_not_the_issuers() {
        let subject = name(&[
            (&[0x55, 0x04, 0x0a], 0x0c, "org"),
            (&[0x55, 0x04, 0x03], 0x13, "kube-apiserver"),
        ]);
        assert_eq!(
            common_name(&cert(&subject, true)).as_deref(),
            Some("kube-apiserver")
        );
        assert_eq!(
            common_name(&cert(&subject, false)).as_deref(),
            Some("kube-apiserver")
        );
        let no_cn = name(&[(&[0x55, 0x04, 0x0a], 0x0c, "org")]);
        assert_eq!(common_name(&cert(&no_cn, true)), None);
        // Truncated or not DER: no name, no panic.
        let whole = cert(&subject, true);
        for end in 0..whole.len() {
            let _ = common_name(&whole[..end]);
        }
        assert_eq!(common_name(b"not der"), None);
    }

    #[test]
    fn a_name_without_a_role_is_refused() {
        let roles = BTreeMap::from([("alice".to_owned(), Role::Admin)]);
        let subject = name(&[(&[0x55, 0x04, 0x03], 0x0c, "alice")]);
        let c = ClientCert::new(&cert(&subject, true), &roles);
        assert_eq!(c.identity().expect("a role").role, Role::Admin);
        let subject = name(&[(&[0x55, 0x04, 0x03], 0x0c, "bob")]);
        let e = ClientCert::new(&cert(&subject, true), &roles)
            .identity()
            .expect_err("no role");
        assert_eq!(e.code, Code::Forbidden);
        assert!(e.message.contains("CN=bob"), "{}", e.message);
    }
}

//! Key material for the test registry, made with the `openssl` CLI: the RSA key and self-signed
//! certificate the token endpoint signs with, and a CA plus a server certificate for
//! `127.0.0.1`/`localhost`. Key generation is the slow part of starting a registry, so each kind
//! is made once per test process and kept in memory; every registry writes its own copies into
//! its own temporary directory.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The RSA key pair that signs bearer tokens, with its self-signed certificate (the registry's
/// `rootcertbundle`) and its libtrust key ID (the `kid` of the JWT header).
#[derive(Debug)]
pub struct TokenKey {
    /// PKCS#8 PEM of the RSA private key.
    pub key_pem: Vec<u8>,
    /// PEM of the self-signed certificate of the public key.
    pub cert_pem: Vec<u8>,
    /// libtrust key ID of the public key, as Distribution computes it for the certificates of
    /// its `rootcertbundle`.
    pub kid: String,
}

/// A CA and a server certificate it signed, valid for `IP:127.0.0.1` and `DNS:localhost`.
#[derive(Debug)]
pub struct TlsFiles {
    /// PEM of the CA certificate: the one root a client needs to trust the server.
    pub ca: Vec<u8>,
    /// PEM of the server certificate.
    pub cert: Vec<u8>,
    /// PKCS#8 PEM of the server's (P-256) private key.
    pub key: Vec<u8>,
}

/// Runs `openssl ARGS` in `dir`, feeding it `stdin`; returns its stdout or panics with its
/// stderr.
pub fn openssl(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `openssl {}`: {e}", args.join(" ")));
    if let Some(input) = stdin {
        // Dropped at the end of the statement: openssl sees end of input.
        child
            .stdin
            .take()
            .expect("stdin of openssl is piped")
            .write_all(input)
            .unwrap_or_else(|e| panic!("cannot write to `openssl {}`: {e}", args.join(" ")));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("`openssl {}` did not finish: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`openssl {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ociup-pki-")
        .tempdir()
        .expect("cannot create a temporary directory for openssl")
}

fn write(dir: &Path, name: &str, contents: &str) {
    std::fs::write(dir.join(name), contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", dir.join(name).display()));
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.join(name).display()))
}

/// The token signing key of this test process, made on first use.
pub fn token_key() -> &'static TokenKey {
    static KEY: OnceLock<TokenKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let tmp = scratch();
        let dir = tmp.path();
        // A configuration of our own: nothing depends on the system's openssl.cnf.
        write(
            dir,
            "req.cnf",
            "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n\
             [dn]\nCN = ociup test token issuer\n\
             [ext]\nbasicConstraints = critical,CA:TRUE\n\
             keyUsage = critical,digitalSignature,keyCertSign\nsubjectKeyIdentifier = hash\n",
        );
        openssl(
            dir,
            &[
                "req", "-x509", "-config", "req.cnf", "-newkey", "rsa:2048", "-nodes", "-keyout",
                "key.pem", "-out", "cert.pem", "-days", "2",
            ],
            None,
        );
        let spki = openssl(
            dir,
            &["pkey", "-in", "key.pem", "-pubout", "-outform", "DER"],
            None,
        );
        let digest = openssl(dir, &["dgst", "-sha256", "-binary"], Some(&spki));
        assert_eq!(
            digest.len(),
            32,
            "openssl dgst -sha256 -binary gave {} bytes",
            digest.len()
        );
        TokenKey {
            key_pem: read(dir, "key.pem"),
            cert_pem: read(dir, "cert.pem"),
            kid: libtrust_key_id(&digest),
        }
    })
}

/// The CA and server certificate of this test process, made on first use.
pub fn tls_files() -> &'static TlsFiles {
    static FILES: OnceLock<TlsFiles> = OnceLock::new();
    FILES.get_or_init(|| {
        let tmp = scratch();
        let dir = tmp.path();
        write(
            dir,
            "ca.cnf",
            "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n\
             [dn]\nCN = ociup test CA\n\
             [ext]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier = hash\n",
        );
        write(
            dir,
            "server.cnf",
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = 127.0.0.1\n",
        );
        write(
            dir,
            "server-ext.cnf",
            "[ext]\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature,keyEncipherment\nextendedKeyUsage = serverAuth\n\
             subjectAltName = IP:127.0.0.1,DNS:localhost\nsubjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n",
        );
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut args = vec![
            "req", "-x509", "-config", "ca.cnf", "-keyout", "ca.key", "-out", "ca.pem", "-days",
            "2",
        ];
        args.extend(ec);
        openssl(dir, &args, None);
        let mut args = vec![
            "req",
            "-new",
            "-config",
            "server.cnf",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ];
        args.extend(ec);
        openssl(dir, &args, None);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "2",
                "-days",
                "2",
                "-extfile",
                "server-ext.cnf",
                "-extensions",
                "ext",
                "-out",
                "server.pem",
            ],
            None,
        );
        TlsFiles {
            ca: read(dir, "ca.pem"),
            cert: read(dir, "server.pem"),
            key: read(dir, "server.key"),
        }
    })
}

/// libtrust's key ID for a key whose DER `SubjectPublicKeyInfo` has SHA-256 `spki_sha256`: the
/// first 30 bytes of that digest in base32 (RFC 4648, no padding), in groups of 4 characters
/// joined by `:`.
pub fn libtrust_key_id(spki_sha256: &[u8]) -> String {
    let encoded = base32(&spki_sha256[..30]);
    let groups: Vec<&str> = encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("base32 is ASCII"))
        .collect();
    groups.join(":")
}

/// RFC 4648 base32 with the standard alphabet and no padding.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// A compact JWS (RS256) of `claims`, signed with the key at `key_path` by
/// `openssl dgst -sha256 -sign` (whose output for an RSA key is the PKCS#1 v1.5 signature a JWS
/// carries). The header names the key by its libtrust ID `kid`, which Distribution looks up
/// among the public keys of its `rootcertbundle`.
pub fn sign_jwt(key_path: &Path, kid: &str, claims: &serde_json::Value) -> String {
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": kid});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = key_path
        .to_str()
        .expect("the temporary directory's path is UTF-8");
    let dir = key_path
        .parent()
        .expect("the key file has a parent directory");
    let signature = openssl(
        dir,
        &["dgst", "-sha256", "-sign", key],
        Some(signing_input.as_bytes()),
    );
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(input.as_bytes()), expected);
        }
    }
}

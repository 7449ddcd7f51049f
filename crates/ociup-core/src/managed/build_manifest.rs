//! Build manifests: for one version, the files the recipe put in the image (path, mode, size,
//! sha256), its own layers, its base, and the commands that recreate it, as an in-toto
//! Statement in a DSSE envelope signed with ed25519, attached to the image as an OCI referrer.

use std::io::Read;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::digest::Digest;
use crate::document::canonical_json;
use crate::error::{Error, Result};
use crate::media_type::Compression;

/// DSSE payload type of in-toto statements.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The predicate type of ociup build manifests.
pub const PREDICATE_TYPE: &str = "https://ociup.dev/build-manifest/v1";
/// Media type of the envelope blob, and artifact type of the referrer manifest.
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";

/// One file a recipe put in the image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path in the image (`/opt/app/run`); whiteouts are listed as `removed`.
    pub path: String,
    /// `file`, `dir`, `symlink`, `hardlink`, `removed`, `other`.
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes (files).
    pub size: u64,
    /// sha256 of the contents (files), or the link target (links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Link target (links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// A layer in a build manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerEntry {
    /// Blob digest.
    pub digest: String,
    /// Uncompressed digest.
    pub diff_id: String,
    /// Blob size.
    pub size: u64,
}

/// The predicate: what this version is made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildManifest {
    /// The nick.
    pub nick: String,
    /// The version number.
    pub version: u64,
    /// The base reference and the digest it pointed to.
    pub base: BaseEntry,
    /// The image's own layers (on top of the base's).
    pub layers: Vec<LayerEntry>,
    /// Every entry of those layers.
    pub files: Vec<FileEntry>,
    /// The commands, from the audit trail, that recreate the image from its base.
    pub commands: Vec<String>,
}

/// A base in a build manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseEntry {
    /// Reference.
    pub reference: String,
    /// Digest.
    pub digest: String,
}

/// Lists the entries of a layer blob (gzip, zstd or plain tar) with the sha256 of every file.
///
/// # Errors
/// [`Error::InvalidDocument`] when the blob is not a tar in that compression.
pub fn layer_files(blob: impl Read, compression: Compression) -> Result<Vec<FileEntry>> {
    let reader: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(blob)
                .map_err(|e| Error::io("reading a zstd layer", e))?,
        ),
        _ => Box::new(blob),
    };
    let bad = |e: std::io::Error| Error::InvalidDocument {
        what: "layer".into(),
        reason: format!("not a readable tar: {e}"),
    };
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry
            .path()
            .map_err(bad)?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        let header = entry.header().clone();
        let mode = header.mode().map_err(bad)?;
        let name = path.rsplit('/').next().unwrap_or("");
        let (kind, size, sha256, link) = if let Some(removed) = name.strip_prefix(".wh.") {
            let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
            let target = if removed == ".wh..opq" {
                format!("{parent}/*")
            } else {
                format!("{parent}/{removed}")
            };
            out.push(FileEntry {
                path: format!("/{}", target.trim_start_matches('/')),
                kind: "removed".into(),
                mode: 0,
                size: 0,
                sha256: None,
                link: None,
            });
            continue;
        } else {
            match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut h = crate::digest::Algorithm::Sha256.hasher();
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut n_total = 0u64;
                    loop {
                        let n = entry.read(&mut buf).map_err(bad)?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                        n_total += n as u64;
                    }
                    ("file", n_total, Some(h.finish().hex().to_owned()), None)
                }
                tar::EntryType::Directory => ("dir", 0, None, None),
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(bad)?
                        .map(|l| l.to_string_lossy().into_owned());
                    let kind = if header.entry_type() == tar::EntryType::Symlink {
                        "symlink"
                    } else {
                        "hardlink"
                    };
                    (kind, 0, None, target)
                }
                _ => ("other", 0, None, None),
            }
        };
        out.push(FileEntry {
            path: format!("/{path}"),
            kind: kind.into(),
            mode,
            size,
            sha256,
            link,
        });
    }
    out.sort();
    Ok(out)
}

/// The in-toto Statement for `subject` (an image manifest digest) with this predicate.
pub fn statement(
    subject_name: &str,
    subject: &Digest,
    predicate: &BuildManifest,
) -> serde_json::Value {
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": subject_name, "digest": {subject.algorithm().as_str(): subject.hex()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    })
}

/// DSSE's pre-authentication encoding.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

/// A signing key (ed25519).
#[derive(Debug)]
pub struct Key(SigningKey);

impl Key {
    /// A new random key (from the operating system's generator).
    ///
    /// # Errors
    /// [`Error::Io`] when `/dev/urandom` cannot be read.
    pub fn generate() -> Result<Key> {
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(|e| Error::io("reading /dev/urandom", e))?;
        Ok(Key(SigningKey::from_bytes(&seed)))
    }

    /// The private key as PKCS#8 PEM, and the public key as SPKI PEM.
    ///
    /// # Errors
    /// [`Error::InvalidChange`] if encoding fails.
    pub fn to_pem(&self) -> Result<(String, String)> {
        let enc = |e: String| Error::InvalidChange {
            reason: format!("encoding a key: {e}"),
        };
        let private = self
            .0
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| enc(e.to_string()))?;
        let public = self
            .0
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| enc(e.to_string()))?;
        Ok((private.to_string(), public))
    }

    /// Reads a PKCS#8 PEM private key.
    ///
    /// # Errors
    /// [`Error::InvalidChange`] naming the file when it is not an ed25519 private key.
    pub fn load(path: &Path) -> Result<Key> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        SigningKey::from_pkcs8_pem(&pem)
            .map(Key)
            .map_err(|e| Error::InvalidChange {
                reason: format!(
                    "{} is not an ed25519 private key in PKCS#8 PEM: {e}",
                    path.display()
                ),
            })
    }

    /// The key id: sha256 of the public key, hex.
    pub fn key_id(&self) -> String {
        key_id(&self.0.verifying_key())
    }

    /// Signs `statement` into a DSSE envelope.
    ///
    /// # Errors
    /// [`Error::InvalidDocument`] when the statement cannot be written as canonical JSON.
    pub fn sign(&self, statement: &serde_json::Value) -> Result<Vec<u8>> {
        let payload = canonical_json(statement)?;
        let sig = self.0.sign(&pae(PAYLOAD_TYPE, &payload));
        canonical_json(&json!({
            "payloadType": PAYLOAD_TYPE,
            "payload": STANDARD.encode(&payload),
            "signatures": [{"keyid": self.key_id(), "sig": STANDARD.encode(sig.to_bytes())}],
        }))
    }
}

fn key_id(k: &VerifyingKey) -> String {
    Digest::sha256(k.as_bytes()).hex().to_owned()
}

/// A public key to verify with.
#[derive(Debug)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Reads an SPKI PEM public key.
    ///
    /// # Errors
    /// [`Error::InvalidChange`] naming the file when it is not an ed25519 public key.
    pub fn load(path: &Path) -> Result<PublicKey> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        VerifyingKey::from_public_key_pem(&pem)
            .map(PublicKey)
            .map_err(|e| Error::InvalidChange {
                reason: format!(
                    "{} is not an ed25519 public key in PEM: {e}",
                    path.display()
                ),
            })
    }

    /// Checks a DSSE envelope's signature and returns the statement it carries.
    ///
    /// # Errors
    /// [`Error::InvalidDocument`] for a malformed envelope; [`Error::InvalidChange`] when no
    /// signature verifies with this key.
    pub fn verify(&self, envelope: &[u8]) -> Result<serde_json::Value> {
        #[derive(Deserialize)]
        struct Sig {
            sig: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Envelope {
            payload_type: String,
            payload: String,
            signatures: Vec<Sig>,
        }
        let bad = |reason: String| Error::InvalidDocument {
            what: "build manifest envelope".into(),
            reason,
        };
        let env: Envelope = serde_json::from_slice(envelope).map_err(|e| bad(e.to_string()))?;
        if env.payload_type != PAYLOAD_TYPE {
            return Err(bad(format!(
                "payload type {:?} is not {PAYLOAD_TYPE}",
                env.payload_type
            )));
        }
        let payload = STANDARD
            .decode(&env.payload)
            .map_err(|e| bad(format!("payload: {e}")))?;
        let message = pae(&env.payload_type, &payload);
        let good = env.signatures.iter().any(|s| {
            STANDARD
                .decode(&s.sig)
                .ok()
                .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
                .is_some_and(|sig| self.0.verify(&message, &sig).is_ok())
        });
        if !good {
            return Err(Error::InvalidChange {
                reason: format!(
                    "the build manifest's signature does not verify with key {}",
                    key_id(&self.0)
                ),
            });
        }
        serde_json::from_slice(&payload)
            .map_err(|e| bad(format!("payload is not a statement: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let key = Key::generate().unwrap();
        let (private, public) = key.to_pem().unwrap();
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("k.key"), private).unwrap();
        std::fs::write(t.path().join("k.pub"), public).unwrap();
        let key = Key::load(&t.path().join("k.key")).unwrap();
        let public = PublicKey::load(&t.path().join("k.pub")).unwrap();
        let st = json!({"_type": "https://in-toto.io/Statement/v1", "predicate": {"a": 1}});
        let env = key.sign(&st).unwrap();
        assert_eq!(public.verify(&env).unwrap(), st);

        let mut v: serde_json::Value = serde_json::from_slice(&env).unwrap();
        let other = STANDARD.encode(canonical_json(&json!({"predicate": {"a": 2}})).unwrap());
        v["payload"] = other.into();
        let tampered = serde_json::to_vec(&v).unwrap();
        assert!(
            public
                .verify(&tampered)
                .unwrap_err()
                .to_string()
                .contains("does not verify")
        );

        let stranger = Key::generate().unwrap();
        let (_, stranger_pub) = stranger.to_pem().unwrap();
        std::fs::write(t.path().join("s.pub"), stranger_pub).unwrap();
        let wrong = PublicKey::load(&t.path().join("s.pub")).unwrap();
        assert!(wrong.verify(&env).is_err());
        assert!(
            Key::load(&t.path().join("k.pub")).is_err(),
            "a public key is not a private key"
        );
    }
}

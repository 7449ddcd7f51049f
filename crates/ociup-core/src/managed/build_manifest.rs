//! Build manifests: for one version, the files the recipe put in the image (path, mode, size,
//! sha256), its own layers, its base, and the commands that recreate it, as an in-toto
//! Statement in a DSSE envelope signed with ed25519 or ECDSA P-256, attached to the image as an
//! OCI referrer.

use std::io::Read;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::pkcs8::spki::SubjectPublicKeyInfoRef;
use p256::pkcs8::{
    AssociatedOid, DecodePrivateKey, DecodePublicKey, Document, EncodePrivateKey, EncodePublicKey,
    LineEnding, ObjectIdentifier, PrivateKeyInfo, SecretDocument,
};
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
/// The in-toto statement type ociup writes.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
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
    /// The digest of the recipe blob the version was made from, so that the signature covers
    /// the recipe a regeneration applies. Absent in build manifests of older ociup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
}

/// What a nick's build manifest must name, beside its subject.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    /// The nick.
    pub nick: &'a str,
    /// The version number.
    pub version: u64,
    /// The digest of the recipe blob the catalog holds (checked when the predicate names one).
    pub recipe: Option<&'a str>,
}

/// The predicate of a statement whose signature has been verified, once the statement is
/// found to be an ociup build manifest of `subject` (and, with `expected`, of that nick, version
/// and recipe).
///
/// # Errors
/// [`Error::InvalidChange`] naming what differs: a statement or predicate type ociup does not
/// know, another subject, nick, version or recipe; [`Error::InvalidDocument`] for a predicate
/// that does not parse.
pub fn check_statement(
    statement: &serde_json::Value,
    subject: &Digest,
    expected: Option<&Expected<'_>>,
) -> Result<BuildManifest> {
    let wrong = |reason: String| Error::InvalidChange { reason };
    let text = |pointer: &str| statement.pointer(pointer).and_then(|v| v.as_str());
    match text("/_type") {
        Some(STATEMENT_TYPE) => {}
        other => {
            return Err(wrong(format!(
                "the build manifest is a statement of type {other:?}, not {STATEMENT_TYPE}"
            )));
        }
    }
    match text("/predicateType") {
        Some(PREDICATE_TYPE) => {}
        other => {
            return Err(wrong(format!(
                "the build manifest's predicate type {other:?} is not one ociup knows \
                 ({PREDICATE_TYPE})"
            )));
        }
    }
    let algorithm = subject.algorithm();
    let named = statement
        .pointer("/subject/0/digest")
        .and_then(|d| d.get(algorithm.as_str()))
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if named != subject.hex() || statement.pointer("/subject/1").is_some() {
        return Err(wrong(format!(
            "the build manifest is for {algorithm}:{named}, not {subject}"
        )));
    }
    let predicate: BuildManifest = serde_json::from_value(
        statement
            .get("predicate")
            .cloned()
            .unwrap_or(serde_json::Value::Null),
    )
    .map_err(|e| Error::InvalidDocument {
        what: "build manifest".into(),
        reason: e.to_string(),
    })?;
    if let Some(want) = expected {
        if predicate.nick != want.nick || predicate.version != want.version {
            return Err(wrong(format!(
                "the build manifest of {subject} is of {} version {}, not {} version {}",
                predicate.nick, predicate.version, want.nick, want.version
            )));
        }
        if let (Some(signed), Some(held)) = (&predicate.recipe, want.recipe)
            && signed != held
        {
            return Err(wrong(format!(
                "{} version {} was signed with recipe {signed}, but the catalog holds recipe \
                 {held}: the recipe was changed outside ociup",
                want.nick, want.version
            )));
        }
    }
    Ok(predicate)
}

/// The key ids an envelope's signatures name (for messages: which key signed it).
pub fn envelope_key_ids(envelope: &[u8]) -> Vec<String> {
    serde_json::from_slice::<serde_json::Value>(envelope)
        .ok()
        .and_then(|v| v.get("signatures").and_then(|s| s.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.get("keyid").and_then(|k| k.as_str()))
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
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
    // Extension headers past 1 MiB are refused before the tar reader holds them.
    let mut archive = tar::Archive::new(crate::layer::bounded::BoundedTarHeaders::new(reader));
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
        "_type": STATEMENT_TYPE,
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

/// The algorithm of a signing key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// Ed25519 (RFC 8032); the signature is its 64 bytes.
    #[default]
    Ed25519,
    /// ECDSA on NIST P-256 with SHA-256; the signature is ASN.1 DER, as cosign and the in-toto
    /// tools write it.
    P256,
}

impl Algorithm {
    /// The name on the command line: `ed25519` or `p256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::P256 => "p256",
        }
    }

    /// The name in messages: `ed25519` or `ECDSA P-256`.
    fn describe(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::P256 => "ECDSA P-256",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Algorithm> {
        match s {
            "ed25519" => Ok(Algorithm::Ed25519),
            "p256" => Ok(Algorithm::P256),
            _ => Err(Error::InvalidChange {
                reason: format!("unknown key algorithm {s:?}: expected ed25519 or p256"),
            }),
        }
    }
}

/// id-ecPublicKey (RFC 5480), the PKCS#8 and SPKI algorithm of every EC key; the curve is its
/// parameter.
const EC_PUBLIC_KEY_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// Which of ours a PKCS#8 or SPKI algorithm identifier is, or why it is none.
fn algorithm_of(
    id: &p256::pkcs8::AlgorithmIdentifierRef<'_>,
) -> std::result::Result<Algorithm, String> {
    if id.oid == ed25519_dalek::pkcs8::ALGORITHM_OID {
        return Ok(Algorithm::Ed25519);
    }
    if id.oid == EC_PUBLIC_KEY_OID {
        return match id.parameters_oid() {
            Ok(curve) if curve == p256::NistP256::OID => Ok(Algorithm::P256),
            Ok(curve) => Err(format!(
                "an EC key on curve {curve}, not P-256 (1.2.840.10045.3.1.7)"
            )),
            Err(e) => Err(format!("an EC key without a named curve: {e}")),
        };
    }
    Err(format!("a key of algorithm {}", id.oid))
}

/// A hint for PEM that is not what `load` reads.
fn pem_hint(pem: &str) -> &'static str {
    if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
        " (this is a SEC1 EC key: convert it with `openssl pkcs8 -topk8 -nocrypt`)"
    } else if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        " (encrypted keys are not supported)"
    } else {
        ""
    }
}

/// 32 bytes from the operating system's generator.
fn random_32() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| Error::io("reading /dev/urandom", e))?;
    Ok(seed)
}

/// A signing key: ed25519 or ECDSA P-256.
#[derive(Debug)]
pub struct Key(SecretKey);

#[derive(Debug)]
enum SecretKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl Key {
    /// A new random ed25519 key (from the operating system's generator).
    ///
    /// # Errors
    /// [`Error::Io`] when `/dev/urandom` cannot be read.
    pub fn generate() -> Result<Key> {
        Key::generate_with(Algorithm::Ed25519)
    }

    /// A new random key of `algorithm` (from the operating system's generator).
    ///
    /// # Errors
    /// [`Error::Io`] when `/dev/urandom` cannot be read.
    pub fn generate_with(algorithm: Algorithm) -> Result<Key> {
        match algorithm {
            Algorithm::Ed25519 => Ok(Key(SecretKey::Ed25519(
                ed25519_dalek::SigningKey::from_bytes(&random_32()?),
            ))),
            // 32 random bytes are a valid scalar unless zero or at least the group order, a
            // chance of about 2^-32: the loop all but never turns twice.
            Algorithm::P256 => loop {
                let seed = random_32()?;
                if let Ok(k) = p256::ecdsa::SigningKey::from_bytes(&seed.into()) {
                    return Ok(Key(SecretKey::P256(k)));
                }
            },
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match &self.0 {
            SecretKey::Ed25519(_) => Algorithm::Ed25519,
            SecretKey::P256(_) => Algorithm::P256,
        }
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(match &self.0 {
            SecretKey::Ed25519(k) => VerifyingKey::Ed25519(k.verifying_key()),
            SecretKey::P256(k) => VerifyingKey::P256(*k.verifying_key()),
        })
    }

    /// The private key as PKCS#8 PEM, and the public key as SPKI PEM.
    ///
    /// # Errors
    /// [`Error::InvalidChange`] if encoding fails.
    pub fn to_pem(&self) -> Result<(String, String)> {
        let enc = |e: String| Error::InvalidChange {
            reason: format!("encoding a key: {e}"),
        };
        let private = match &self.0 {
            SecretKey::Ed25519(k) => k.to_pkcs8_pem(LineEnding::LF),
            SecretKey::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
        }
        .map_err(|e| enc(e.to_string()))?;
        Ok((private.to_string(), self.public_key().to_pem()?))
    }

    /// Reads a PKCS#8 PEM private key, ed25519 or ECDSA P-256: the algorithm is the one the
    /// PEM names.
    ///
    /// # Errors
    /// [`Error::InvalidChange`] naming the file when it is not an ed25519 or ECDSA P-256 private
    /// key in PKCS#8 PEM.
    pub fn load(path: &Path) -> Result<Key> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let bad = |why: String| Error::InvalidChange {
            reason: format!(
                "{} is not an ed25519 or ECDSA P-256 private key in PKCS#8 PEM: {why}{}",
                path.display(),
                pem_hint(&pem)
            ),
        };
        let doc = SecretDocument::from_pkcs8_pem(&pem).map_err(|e| bad(e.to_string()))?;
        let info = PrivateKeyInfo::try_from(doc.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let key = match algorithm_of(&info.algorithm).map_err(|why| bad(format!("it is {why}")))? {
            Algorithm::Ed25519 => ed25519_dalek::SigningKey::try_from(info)
                .map(SecretKey::Ed25519)
                .map_err(|e| bad(format!("a malformed ed25519 key: {e}")))?,
            Algorithm::P256 => p256::ecdsa::SigningKey::try_from(info)
                .map(SecretKey::P256)
                .map_err(|e| bad(format!("a malformed ECDSA P-256 key: {e}")))?,
        };
        Ok(Key(key))
    }

    /// The key id: sha256 of the public key's bits as its SPKI carries them (the 32 bytes of
    /// an ed25519 key, the uncompressed SEC1 point of a P-256 key), hex.
    pub fn key_id(&self) -> String {
        self.public_key().key_id()
    }

    /// Signs `statement` into a DSSE envelope: ed25519, or ECDSA P-256 with SHA-256 (DER), over
    /// the DSSE pre-authentication encoding.
    ///
    /// # Errors
    /// [`Error::InvalidDocument`] when the statement cannot be written as canonical JSON.
    pub fn sign(&self, statement: &serde_json::Value) -> Result<Vec<u8>> {
        let payload = canonical_json(statement)?;
        let message = pae(PAYLOAD_TYPE, &payload);
        let sig = match &self.0 {
            SecretKey::Ed25519(k) => k.sign(&message).to_bytes().to_vec(),
            SecretKey::P256(k) => {
                let sig: p256::ecdsa::DerSignature = k.sign(&message);
                sig.as_bytes().to_vec()
            }
        };
        canonical_json(&json!({
            "payloadType": PAYLOAD_TYPE,
            "payload": STANDARD.encode(&payload),
            "signatures": [{"keyid": self.key_id(), "sig": STANDARD.encode(sig)}],
        }))
    }
}

/// Why a signature does not verify.
enum Failure {
    /// It is not a signature of this key's algorithm (or not base64).
    Form(String),
    /// It is one, but not of this payload by this key.
    Mismatch,
}

/// A public key to verify with: ed25519 or ECDSA P-256.
#[derive(Debug)]
pub struct PublicKey(VerifyingKey);

#[derive(Debug)]
enum VerifyingKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl PublicKey {
    /// Reads an SPKI PEM public key, ed25519 or ECDSA P-256: the algorithm is the one the PEM
    /// names.
    ///
    /// # Errors
    /// [`Error::InvalidChange`] naming the file when it is not an ed25519 or ECDSA P-256 public
    /// key in PEM.
    pub fn load(path: &Path) -> Result<PublicKey> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let bad = |why: String| Error::InvalidChange {
            reason: format!(
                "{} is not an ed25519 or ECDSA P-256 public key in PEM: {why}",
                path.display()
            ),
        };
        let doc = Document::from_public_key_pem(&pem).map_err(|e| bad(e.to_string()))?;
        let spki =
            SubjectPublicKeyInfoRef::try_from(doc.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let key = match algorithm_of(&spki.algorithm).map_err(|why| bad(format!("it is {why}")))? {
            Algorithm::Ed25519 => ed25519_dalek::VerifyingKey::try_from(spki)
                .map(VerifyingKey::Ed25519)
                .map_err(|e| bad(format!("a malformed ed25519 key: {e}")))?,
            Algorithm::P256 => p256::ecdsa::VerifyingKey::try_from(spki)
                .map(VerifyingKey::P256)
                .map_err(|e| bad(format!("a malformed ECDSA P-256 key: {e}")))?,
        };
        Ok(PublicKey(key))
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match &self.0 {
            VerifyingKey::Ed25519(_) => Algorithm::Ed25519,
            VerifyingKey::P256(_) => Algorithm::P256,
        }
    }

    /// The public key as SPKI PEM.
    ///
    /// # Errors
    /// [`Error::InvalidChange`] if encoding fails.
    pub fn to_pem(&self) -> Result<String> {
        match &self.0 {
            VerifyingKey::Ed25519(k) => k.to_public_key_pem(LineEnding::LF),
            VerifyingKey::P256(k) => k.to_public_key_pem(LineEnding::LF),
        }
        .map_err(|e| Error::InvalidChange {
            reason: format!("encoding a key: {e}"),
        })
    }

    /// The key id: sha256 of the public key's bits as its SPKI carries them (the 32 bytes of
    /// an ed25519 key, the uncompressed SEC1 point of a P-256 key), hex.
    pub fn key_id(&self) -> String {
        match &self.0 {
            VerifyingKey::Ed25519(k) => Digest::sha256(k.as_bytes()),
            VerifyingKey::P256(k) => Digest::sha256(k.to_encoded_point(false).as_bytes()),
        }
        .hex()
        .to_owned()
    }

    /// Whether one signature verifies `message` with this key; if not, why.
    fn check(&self, message: &[u8], sig: &[u8]) -> std::result::Result<(), Failure> {
        let verified = match &self.0 {
            VerifyingKey::Ed25519(k) => {
                let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| {
                    let hint = if p256::ecdsa::Signature::from_der(sig).is_ok() {
                        ": it is an ECDSA signature, made with a P-256 key"
                    } else {
                        ""
                    };
                    Failure::Form(format!(
                        "{} bytes, not a 64-byte ed25519 signature{hint}",
                        sig.len()
                    ))
                })?;
                k.verify(message, &sig).is_ok()
            }
            VerifyingKey::P256(k) => {
                let sig = p256::ecdsa::Signature::from_der(sig).map_err(|_| {
                    let hint = if sig.len() == ed25519_dalek::SIGNATURE_LENGTH {
                        ": 64 plain bytes, like an ed25519 signature"
                    } else {
                        ""
                    };
                    Failure::Form(format!("not an ASN.1 DER ECDSA P-256 signature{hint}"))
                })?;
                k.verify(message, &sig).is_ok()
            }
        };
        if verified {
            Ok(())
        } else {
            Err(Failure::Mismatch)
        }
    }

    /// Checks a DSSE envelope's signature and returns the statement it carries.
    ///
    /// # Errors
    /// [`Error::InvalidDocument`] for a malformed envelope; [`Error::InvalidChange`] when no
    /// signature verifies with this key, saying for each why: a signature of the other
    /// algorithm, one by another key, or a payload that is not the one signed.
    pub fn verify(&self, envelope: &[u8]) -> Result<serde_json::Value> {
        #[derive(Deserialize)]
        struct Sig {
            #[serde(default)]
            keyid: String,
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
        let ours = self.key_id();
        let mut why = Vec::new();
        for s in &env.signatures {
            let checked = STANDARD
                .decode(&s.sig)
                .map_err(|e| Failure::Form(format!("not base64: {e}")))
                .and_then(|sig| self.check(&message, &sig));
            let reason = match checked {
                Ok(()) => {
                    return serde_json::from_slice(&payload)
                        .map_err(|e| bad(format!("payload is not a statement: {e}")));
                }
                Err(Failure::Form(reason)) => reason,
                Err(Failure::Mismatch) if s.keyid == ours => {
                    "it does not match the payload: the payload or the signature was altered"
                        .to_owned()
                }
                Err(Failure::Mismatch) if s.keyid.is_empty() => {
                    "it does not match the payload with this key".to_owned()
                }
                Err(Failure::Mismatch) => "another key made it".to_owned(),
            };
            if s.keyid.is_empty() {
                why.push(format!("a signature without a key id: {reason}"));
            } else {
                why.push(format!("the signature by key {}: {reason}", s.keyid));
            }
        }
        if why.is_empty() {
            why.push("the envelope carries no signature".into());
        }
        Err(Error::InvalidChange {
            reason: format!(
                "the build manifest's signature does not verify with {} key {ours}: {}",
                self.algorithm().describe(),
                why.join("; ")
            ),
        })
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

    /// Writes `key`'s PEM files as `name.key` and `name.pub` in `dir` and loads them back.
    fn round_trip(dir: &Path, name: &str, key: &Key) -> (Key, PublicKey) {
        let (private, public) = key.to_pem().unwrap();
        std::fs::write(dir.join(format!("{name}.key")), private).unwrap();
        std::fs::write(dir.join(format!("{name}.pub")), public).unwrap();
        (
            Key::load(&dir.join(format!("{name}.key"))).unwrap(),
            PublicKey::load(&dir.join(format!("{name}.pub"))).unwrap(),
        )
    }

    fn statement_for_tests() -> serde_json::Value {
        json!({"_type": "https://in-toto.io/Statement/v1", "predicate": {"a": 1}})
    }

    fn verify_err(key: &PublicKey, envelope: &[u8]) -> String {
        key.verify(envelope).unwrap_err().to_string()
    }

    /// The envelope's one signature, decoded.
    fn signature_of(envelope: &[u8]) -> Vec<u8> {
        let v: serde_json::Value = serde_json::from_slice(envelope).unwrap();
        STANDARD
            .decode(v["signatures"][0]["sig"].as_str().unwrap())
            .unwrap()
    }

    /// Runs `sh -c script` in `dir`; panics with its stderr when it fails.
    fn sh(dir: &Path, script: &str) -> Vec<u8> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn p256_sign_verify_and_tamper() {
        let t = tempfile::tempdir().unwrap();
        let generated = Key::generate_with(Algorithm::P256).unwrap();
        let (key, public) = round_trip(t.path(), "k", &generated);
        assert_eq!(key.algorithm(), Algorithm::P256);
        assert_eq!(public.algorithm(), Algorithm::P256);
        assert_eq!(key.key_id(), generated.key_id());
        assert_eq!(public.key_id(), key.key_id());
        assert_eq!(key.to_pem().unwrap(), generated.to_pem().unwrap());

        let st = statement_for_tests();
        let env = key.sign(&st).unwrap();
        assert_eq!(public.verify(&env).unwrap(), st);
        // ASN.1 DER: a SEQUENCE of two INTEGERs, 8 to 72 bytes.
        let sig = signature_of(&env);
        assert_eq!(sig[0], 0x30, "{sig:02x?}");
        assert!(p256::ecdsa::Signature::from_der(&sig).is_ok());
        let v: serde_json::Value = serde_json::from_slice(&env).unwrap();
        assert_eq!(v["signatures"][0]["keyid"], key.key_id().as_str());

        let mut v: serde_json::Value = serde_json::from_slice(&env).unwrap();
        v["payload"] = STANDARD
            .encode(canonical_json(&json!({"predicate": {"a": 2}})).unwrap())
            .into();
        let err = verify_err(&public, &serde_json::to_vec(&v).unwrap());
        assert!(
            err.contains("does not verify with ECDSA P-256 key") && err.contains("altered"),
            "{err}"
        );

        let (_, stranger) =
            round_trip(t.path(), "s", &Key::generate_with(Algorithm::P256).unwrap());
        let err = verify_err(&stranger, &env);
        assert!(
            err.contains(&stranger.key_id()) && err.contains("another key made it"),
            "{err}"
        );
        assert!(
            Key::load(&t.path().join("k.pub")).is_err(),
            "a public key is not a private key"
        );
        assert!(
            PublicKey::load(&t.path().join("k.key")).is_err(),
            "a private key is not a public key"
        );
    }

    #[test]
    fn a_signature_of_the_other_algorithm_is_rejected() {
        let t = tempfile::tempdir().unwrap();
        let (ed, ed_pub) = round_trip(t.path(), "ed", &Key::generate().unwrap());
        let (p, p_pub) = round_trip(t.path(), "p", &Key::generate_with(Algorithm::P256).unwrap());
        assert_eq!(ed.algorithm(), Algorithm::Ed25519);
        assert_eq!(Algorithm::default(), Algorithm::Ed25519);
        let st = statement_for_tests();

        let err = verify_err(&p_pub, &ed.sign(&st).unwrap());
        assert!(
            err.contains("does not verify with ECDSA P-256 key")
                && err.contains(&ed.key_id())
                && err.contains("not an ASN.1 DER ECDSA P-256 signature")
                && err.contains("like an ed25519 signature"),
            "{err}"
        );
        let err = verify_err(&ed_pub, &p.sign(&st).unwrap());
        assert!(
            err.contains("does not verify with ed25519 key")
                && err.contains(&p.key_id())
                && err.contains("not a 64-byte ed25519 signature")
                && err.contains("made with a P-256 key"),
            "{err}"
        );
    }

    fn predicate_for_tests(nick: &str, version: u64) -> BuildManifest {
        BuildManifest {
            nick: nick.into(),
            version,
            base: BaseEntry {
                reference: "reg/lib/base:latest".into(),
                digest: Digest::sha256(b"base").to_string(),
            },
            layers: vec![LayerEntry {
                digest: Digest::sha256(b"layer").to_string(),
                diff_id: Digest::sha256(b"tar").to_string(),
                size: 5,
            }],
            files: Vec::new(),
            commands: vec!["ociup register app".into()],
            recipe: Some(Digest::sha256(b"recipe").to_string()),
        }
    }

    fn check_err(st: &serde_json::Value, subject: &Digest, want: Option<&Expected<'_>>) -> String {
        check_statement(st, subject, want).unwrap_err().to_string()
    }

    #[test]
    fn a_statement_must_name_its_subject_nick_version_recipe_and_a_known_type() {
        let image = Digest::sha256(b"image");
        let recipe = Digest::sha256(b"recipe").to_string();
        let want = Expected {
            nick: "app",
            version: 2,
            recipe: Some(&recipe),
        };
        let st = statement("reg/team/app", &image, &predicate_for_tests("app", 2));
        assert_eq!(
            check_statement(&st, &image, Some(&want)).unwrap(),
            predicate_for_tests("app", 2)
        );
        // Another image.
        let err = check_err(&st, &Digest::sha256(b"other"), Some(&want));
        assert!(err.contains("is for sha256:"), "{err}");
        // Another nick's, or another version's, build manifest of the same image.
        let other = statement("reg/team/app", &image, &predicate_for_tests("web", 2));
        let err = check_err(&other, &image, Some(&want));
        assert!(
            err.contains("is of web version 2, not app version 2"),
            "{err}"
        );
        assert!(
            check_statement(&other, &image, None).is_ok(),
            "no nick asked"
        );
        let older = statement("reg/team/app", &image, &predicate_for_tests("app", 1));
        let err = check_err(&older, &image, Some(&want));
        assert!(err.contains("app version 1, not app version 2"), "{err}");
        // Another recipe than the one signed.
        let edited = Digest::sha256(b"edited").to_string();
        let err = check_err(
            &st,
            &image,
            Some(&Expected {
                recipe: Some(&edited),
                ..want
            }),
        );
        assert!(
            err.contains("signed with recipe") && err.contains("changed outside ociup"),
            "{err}"
        );
        // A build manifest of older ociup names no recipe: nothing to hold it against.
        let mut legacy = predicate_for_tests("app", 2);
        legacy.recipe = None;
        let legacy = statement("reg/team/app", &image, &legacy);
        assert!(legacy.pointer("/predicate/recipe").is_none());
        assert!(check_statement(&legacy, &image, Some(&want)).is_ok());
        // Types ociup does not know.
        let mut st2 = st.clone();
        st2["predicateType"] = "https://slsa.dev/provenance/v1".into();
        let err = check_err(&st2, &image, Some(&want));
        assert!(
            err.contains("predicate type") && err.contains("slsa.dev"),
            "{err}"
        );
        let mut st3 = st.clone();
        st3["_type"] = "https://in-toto.io/Statement/v0.1".into();
        assert!(check_err(&st3, &image, None).contains("Statement/v0.1"));
        // Two subjects: not what ociup signs.
        let mut st4 = st.clone();
        let first = st4["subject"][0].clone();
        st4["subject"].as_array_mut().unwrap().push(first);
        assert!(check_err(&st4, &image, None).contains("is for"));
    }

    #[test]
    fn envelopes_name_their_signers() {
        let key = Key::generate().unwrap();
        let env = key.sign(&statement_for_tests()).unwrap();
        assert_eq!(envelope_key_ids(&env), [key.key_id()]);
        assert!(envelope_key_ids(b"not json").is_empty());
    }

    #[test]
    fn algorithm_names_parse() {
        for a in [Algorithm::Ed25519, Algorithm::P256] {
            assert_eq!(a.as_str().parse::<Algorithm>().unwrap(), a);
            assert_eq!(a.to_string(), a.as_str());
        }
        let err = "rsa".parse::<Algorithm>().unwrap_err().to_string();
        assert!(err.contains("ed25519 or p256"), "{err}");
    }

    /// A P-256 key that openssl made loads, and each side verifies what the other signed: ours
    /// with `openssl dgst -verify`, openssl's through [`PublicKey::verify`].
    #[test]
    fn p256_keys_and_signatures_interoperate_with_openssl() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        sh(
            d,
            "openssl ecparam -name prime256v1 -genkey | openssl pkcs8 -topk8 -nocrypt -out k.key \
             && openssl ec -in k.key -pubout -out k.pub 2>/dev/null",
        );
        let key = Key::load(&d.join("k.key")).unwrap();
        let public = PublicKey::load(&d.join("k.pub")).unwrap();
        assert_eq!(key.algorithm(), Algorithm::P256);
        assert_eq!(key.key_id(), public.key_id());
        // Our PEM of openssl's public key is openssl's.
        assert_eq!(
            public.to_pem().unwrap(),
            std::fs::read_to_string(d.join("k.pub")).unwrap()
        );

        let st = statement_for_tests();
        let env = key.sign(&st).unwrap();
        assert_eq!(public.verify(&env).unwrap(), st);
        let payload = canonical_json(&st).unwrap();
        std::fs::write(d.join("pae.bin"), pae(PAYLOAD_TYPE, &payload)).unwrap();
        std::fs::write(d.join("ours.sig"), signature_of(&env)).unwrap();
        let out = sh(
            d,
            "openssl dgst -sha256 -verify k.pub -signature ours.sig pae.bin",
        );
        assert_eq!(String::from_utf8_lossy(&out).trim(), "Verified OK");

        let theirs = sh(d, "openssl dgst -sha256 -sign k.key pae.bin");
        let envelope = |sig: &[u8]| {
            serde_json::to_vec(&json!({
                "payloadType": PAYLOAD_TYPE,
                "payload": STANDARD.encode(&payload),
                "signatures": [{"keyid": "", "sig": STANDARD.encode(sig)}],
            }))
            .unwrap()
        };
        assert_eq!(public.verify(&envelope(&theirs)).unwrap(), st);
        let mut flipped = theirs.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let err = verify_err(&public, &envelope(&flipped));
        assert!(err.contains("without a key id"), "{err}");
    }

    #[test]
    fn keys_of_other_kinds_are_refused_with_the_reason() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        sh(
            d,
            "openssl ecparam -name secp384r1 -genkey -noout -out sec1.key \
             && openssl pkcs8 -topk8 -nocrypt -in sec1.key -out p384.key \
             && openssl ec -in p384.key -pubout -out p384.pub 2>/dev/null \
             && openssl ecparam -name prime256v1 -genkey -noout -out p256-sec1.key \
             && openssl genpkey -algorithm ed448 -out ed448.key",
        );
        let err = Key::load(&d.join("p384.key")).unwrap_err().to_string();
        assert!(
            err.contains("not P-256") && err.contains("p384.key"),
            "{err}"
        );
        let err = PublicKey::load(&d.join("p384.pub"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not P-256"), "{err}");
        let err = Key::load(&d.join("p256-sec1.key")).unwrap_err().to_string();
        assert!(err.contains("openssl pkcs8 -topk8"), "{err}");
        let err = Key::load(&d.join("ed448.key")).unwrap_err().to_string();
        assert!(err.contains("algorithm 1.3.101.113"), "{err}");
    }
}

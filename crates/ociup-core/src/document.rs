//! Documents as stored: exact bytes, their digest and media type, plus a parsed view. A document
//! read from a store is never re-serialized; one ociup writes is canonical JSON.

pub use oci_spec::image::Descriptor;
use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::media_type::{self, DocumentKind, Family};

/// Serializes `value` as canonical JSON (OLPC's rules): keys sorted, no insignificant
/// whitespace, integers only. The same value gives the same bytes in every run, whatever order
/// its maps iterate in. Strings are written as given, not normalized to NFC as OLPC (and the
/// `olpc-cjson` crate) would: a file name or value in another normal form must keep its bytes,
/// or a build manifest would list a path its layer does not hold. Control characters are escaped
/// (OLPC leaves them raw, and strict JSON parsers, serde_json and Go's among them, refuse that).
/// For documents with neither, the bytes are OLPC's.
///
/// # Errors
/// [`Error::InvalidDocument`] when the value holds something canonical JSON cannot encode
/// (floating-point numbers).
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::InvalidDocument {
        what: "document to write".into(),
        reason: format!("cannot be written as canonical JSON: {reason}"),
    };
    let value = serde_json::to_value(value).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    write_canonical(&value, &mut out).map_err(bad)?;
    Ok(out)
}

fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) -> std::result::Result<(), String> {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => Err(format!("floating-point number {n}")),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            serde_json::to_writer(&mut *out, v).map_err(|e| e.to_string())
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
            Ok(())
        }
        Value::Object(map) => {
            // Sorted by the encoded keys' bytes, as olpc-cjson sorts them.
            let mut entries = Vec::with_capacity(map.len());
            for (k, v) in map {
                entries.push((serde_json::to_vec(k).map_err(|e| e.to_string())?, v));
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(k);
                out.push(b':');
                write_canonical(v, out)?;
            }
            out.push(b'}');
            Ok(())
        }
    }
}

/// A blob's exact bytes with their sha256 digest and the media type they were stored under.
#[derive(Clone, PartialEq, Eq)]
pub struct RawDocument {
    bytes: Vec<u8>,
    digest: Digest,
    media_type: String,
}

impl std::fmt::Debug for RawDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDocument")
            .field("digest", &self.digest)
            .field("media_type", &self.media_type)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl RawDocument {
    /// Wraps bytes, hashing them with sha256.
    pub fn new(bytes: Vec<u8>, media_type: impl Into<String>) -> Self {
        RawDocument {
            digest: Digest::sha256(&bytes),
            bytes,
            media_type: media_type.into(),
        }
    }

    /// Wraps bytes read under `digest`, checking that they hash to it.
    ///
    /// # Errors
    /// [`Error::DigestMismatch`].
    pub fn verified(
        bytes: Vec<u8>,
        media_type: impl Into<String>,
        digest: &Digest,
    ) -> Result<Self> {
        digest.verify(&bytes, || format!("document {digest}"))?;
        Ok(RawDocument {
            bytes,
            digest: digest.clone(),
            media_type: media_type.into(),
        })
    }

    /// Canonical JSON of `value`.
    ///
    /// # Errors
    /// As [`canonical_json`].
    pub fn canonical<T: Serialize + ?Sized>(
        value: &T,
        media_type: impl Into<String>,
    ) -> Result<Self> {
        Ok(RawDocument::new(canonical_json(value)?, media_type))
    }

    /// The exact bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The digest of the bytes.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The media type.
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// A descriptor of this document.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            MediaType::from(self.media_type.as_str()),
            self.size(),
            self.digest.to_oci(),
        )
    }
}

/// An image manifest (OCI or Docker schema2).
#[derive(Clone, Debug)]
pub struct Manifest {
    raw: RawDocument,
    parsed: ImageManifest,
    family: Family,
}

/// An index (OCI image index or Docker manifest list).
#[derive(Clone, Debug)]
pub struct Index {
    raw: RawDocument,
    parsed: ImageIndex,
    family: Family,
}

/// A manifest or an index, as a tag or digest may name either.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // both are large; a handful exist at a time
pub enum Document {
    /// An image manifest.
    Manifest(Manifest),
    /// An index.
    Index(Index),
}

/// The media type a document names itself, if it does.
fn declared_media_type(bytes: &[u8], what: &str) -> Result<Option<String>> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|source| Error::MalformedDocument {
            what: what.to_owned(),
            source,
        })?;
    Ok(probe.media_type)
}

impl Document {
    /// Parses a manifest or index. The media type comes from the document's own `mediaType`
    /// field, or from `raw`'s (the descriptor's) when the document has none; the two must agree.
    ///
    /// # Errors
    /// [`Error::MalformedDocument`], [`Error::UnsupportedMediaType`] (schema1, artifacts of unknown
    /// types), [`Error::InvalidDocument`] when the declared and stored types disagree.
    pub fn parse(raw: RawDocument) -> Result<Document> {
        let what = format!("manifest {}", raw.digest);
        let declared = declared_media_type(&raw.bytes, &what)?;
        let media_type = match declared {
            Some(d) if !raw.media_type.is_empty() && d != raw.media_type => {
                return Err(Error::InvalidDocument {
                    what,
                    reason: format!(
                        "it declares media type {d:?} but was stored as {:?}",
                        raw.media_type
                    ),
                });
            }
            Some(d) => d,
            None if raw.media_type.is_empty() => {
                return Err(Error::InvalidDocument {
                    what,
                    reason: "it has no mediaType and none was given with it".into(),
                });
            }
            None => raw.media_type.clone(),
        };
        let (kind, family) = media_type::document_kind(&media_type)?;
        let raw = RawDocument { media_type, ..raw };
        let malformed = |source| Error::MalformedDocument {
            what: what.clone(),
            source,
        };
        Ok(match kind {
            DocumentKind::Manifest => Document::Manifest(Manifest {
                parsed: serde_json::from_slice(&raw.bytes).map_err(malformed)?,
                raw,
                family,
            }),
            DocumentKind::Index => Document::Index(Index {
                parsed: serde_json::from_slice(&raw.bytes).map_err(malformed)?,
                raw,
                family,
            }),
        })
    }

    /// The raw document.
    pub fn raw(&self) -> &RawDocument {
        match self {
            Document::Manifest(m) => &m.raw,
            Document::Index(i) => &i.raw,
        }
    }
}

impl Manifest {
    /// Parses a manifest; fails if the document is an index.
    ///
    /// # Errors
    /// As [`Document::parse`], and [`Error::UnsupportedMediaType`] for an index.
    pub fn parse(raw: RawDocument) -> Result<Manifest> {
        match Document::parse(raw)? {
            Document::Manifest(m) => Ok(m),
            Document::Index(i) => Err(Error::UnsupportedMediaType {
                media_type: i.raw.media_type,
                context: "an image manifest (got an index; pick a platform)".into(),
            }),
        }
    }

    /// The exact bytes and digest.
    pub fn raw(&self) -> &RawDocument {
        &self.raw
    }

    /// The parsed view (read-only; write a new manifest to change it).
    pub fn parsed(&self) -> &ImageManifest {
        &self.parsed
    }

    /// OCI or Docker.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The config descriptor's digest.
    ///
    /// # Errors
    /// [`Error::InvalidDigest`] for a digest ociup does not accept.
    pub fn config_digest(&self) -> Result<Digest> {
        Digest::try_from(self.parsed.config().digest())
    }
}

impl Index {
    /// Parses an index; fails if the document is a manifest.
    ///
    /// # Errors
    /// As [`Document::parse`], and [`Error::UnsupportedMediaType`] for a manifest.
    pub fn parse(raw: RawDocument) -> Result<Index> {
        match Document::parse(raw)? {
            Document::Index(i) => Ok(i),
            Document::Manifest(m) => Err(Error::UnsupportedMediaType {
                media_type: m.raw.media_type,
                context: "an index".into(),
            }),
        }
    }

    /// The exact bytes and digest.
    pub fn raw(&self) -> &RawDocument {
        &self.raw
    }

    /// The parsed view.
    pub fn parsed(&self) -> &ImageIndex {
        &self.parsed
    }

    /// OCI or Docker.
    pub fn family(&self) -> Family {
        self.family
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let v = serde_json::json!({"b": 1, "a": {"d": [1, 2], "c": "x"}});
        assert_eq!(
            canonical_json(&v).unwrap(),
            br#"{"a":{"c":"x","d":[1,2]},"b":1}"#
        );
    }

    #[test]
    fn canonical_json_with_control_characters_reads_back() {
        // Found by fuzz/envelope: an env value with a tab gave a config no parser reads.
        let v = serde_json::json!({"Env": ["MSG=a\tb\n\u{1}"], "é\u{1f}": "\"\\"});
        let bytes = canonical_json(&v).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"Env":["MSG=a\tb\n\u0001"],"é\u001f":"\"\\"}"#
        );
        let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn canonical_json_keeps_strings_as_given() {
        // Found by fuzz/envelope: NFC normalization rewrote "e\u{301}" (as macOS names files)
        // to "\u{e9}", so a build manifest listed a path its layer did not hold.
        let v = serde_json::json!({"path": "/opt/e\u{301}.txt", "b\u{327}\u{31a}": 1});
        let bytes = canonical_json(&v).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, v);
        // Beside that, the bytes are olpc-cjson's.
        let v =
            serde_json::json!({"z": [1, -2, true, null, {"é": "x/y\u{7f}", "a\"": "\\"}], "a": {}});
        let mut olpc = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(
            &mut olpc,
            olpc_cjson::CanonicalFormatter::new(),
        );
        v.serialize(&mut ser).unwrap();
        assert_eq!(canonical_json(&v).unwrap(), olpc);
        assert!(canonical_json(&serde_json::json!({"f": 1.5})).is_err());
    }

    #[test]
    fn documents_keep_their_exact_bytes() {
        let bytes =
            br#"{ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [], "x-vendor": true }"#
                .to_vec();
        let raw = RawDocument::new(bytes.clone(), "");
        let digest = raw.digest().clone();
        let Document::Index(i) = Document::parse(raw).unwrap() else {
            panic!("expected an index")
        };
        assert_eq!(i.raw().bytes(), &bytes[..]);
        assert_eq!(i.raw().digest(), &digest);
        assert_eq!(i.raw().media_type(), media_type::OCI_INDEX);
    }

    #[test]
    fn stored_and_declared_media_types_must_agree() {
        let bytes = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let err = Document::parse(RawDocument::new(bytes.to_vec(), media_type::OCI_MANIFEST))
            .unwrap_err();
        assert!(err.to_string().contains("declares media type"), "{err}");
        let schema1 = br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#;
        let err = Document::parse(RawDocument::new(schema1.to_vec(), "")).unwrap_err();
        assert!(
            err.to_string().contains("unsupported media type")
                && err.to_string().contains("v1+prettyjws"),
            "{err}"
        );
    }
}

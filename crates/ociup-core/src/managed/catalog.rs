//! The catalog: recipes, versions and the audit trail, kept as plain OCI artifacts in a store
//! (a registry repository or a layout), next to the images. No database.
//!
//! Each nick is one artifact manifest tagged `nick.<nick>` (artifact type
//! [`NICK_ARTIFACT`]): its layers are JSON blobs (the recipe, the current version record, the last
//! audit entry), its annotations the state. Version records and audit entries link to the one
//! before them by digest, so history is a content-addressed chain. Blobs are written before the
//! manifest that names them, so the tag always points at something complete.
//!
//! The annotations summarize the entry; [`Summary::check`] holds them against the version
//! record they summarize, so an annotation edited by hand is caught, not answered. Blobs read
//! from a registry can be kept in a local [`BlobCache`] by digest, so a check costs no request
//! once a blob has been seen.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::recipe::Recipe;
pub use crate::cache::BlobCache;
use crate::config::Config;
use crate::digest::Digest;
use crate::document::{Manifest, RawDocument, canonical_json};
use crate::error::{Error, Result};
use crate::media_type;
use crate::store::{ManifestRef, Store};

/// Artifact type of a nick's manifest.
pub const NICK_ARTIFACT: &str = "application/vnd.ociup.nick.v1+json";
/// Media type of a recipe blob.
pub const RECIPE_MEDIA_TYPE: &str = "application/vnd.ociup.recipe.v1+json";
/// Media type of a version record blob.
pub const VERSION_MEDIA_TYPE: &str = "application/vnd.ociup.version.v1+json";
/// Media type of an audit entry blob.
pub const AUDIT_MEDIA_TYPE: &str = "application/vnd.ociup.audit.v1+json";
/// The OCI empty descriptor's media type (artifact configs).
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// Where a nick stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Registered, first build not finished.
    Pending,
    /// Has a version.
    Ready,
    /// The first build failed.
    Failed,
    /// Unregistered (`ociup unregister`): not listed by status or upgrade, not resolved; the
    /// entry keeps its recipe, history and audit trail, and a new registration goes on from it.
    Removed,
}

/// One built version of a managed image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The nick.
    pub nick: String,
    /// 1, 2, ...
    pub number: u64,
    /// Digest-pinned reference of the image.
    pub image: String,
    /// Its manifest digest.
    pub digest: String,
    /// The base reference.
    pub base: String,
    /// What it pointed to.
    pub base_digest: String,
    /// Digest of the recipe blob it was made from.
    pub recipe: String,
    /// `registered`, `base moved`, `recipe edited`.
    pub reason: String,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// Who.
    pub actor: String,
    /// Digest of the previous version record.
    pub previous: Option<String>,
    /// The signed build manifest: digest and size of its envelope blob.
    pub build_manifest: Option<(String, u64)>,
    /// `created` of what was built (seconds since 1970), for replays.
    pub epoch: u64,
    /// The image's manifest and config, so that a regeneration need not read them from the
    /// target again (checked against `digest` before use). Absent in records of older ociup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<ImageDocuments>,
    /// The id of the key that signed the build manifest (hex sha256 of the public key). Absent
    /// when unsigned, and in records of older ociup (their build manifest names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// For a version that is an index (its base is one): each platform's manifest, in the
    /// index's order. Empty for a single image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformRecord>,
    /// Platforms the previous version had and the base no longer has: this version was made
    /// from the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_platforms: Vec<String>,
    /// The service that acted for `actor` (`ociup serve`'s identity), when one did. Absent
    /// otherwise, and in records of older ociup: a record without it hashes as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl VersionRecord {
    /// The platform of an index version that `wanted` names (os and architecture, and the
    /// variant when it gives one), as [`crate::ops::select_platform`] picks a child of an
    /// index: its manifest digest is what to run there. `None` for a single image or a
    /// platform the version lacks.
    pub fn platform(&self, wanted: &crate::reference::PlatformSpec) -> Option<&PlatformRecord> {
        self.platforms.iter().find(|p| {
            p.platform
                .parse::<crate::reference::PlatformSpec>()
                .is_ok_and(|have| {
                    have.os == wanted.os
                        && have.architecture == wanted.architecture
                        && (wanted.variant.is_none() || have.variant == wanted.variant)
                })
        })
    }
}

/// One platform of an index version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformRecord {
    /// `os/architecture[/variant]`, as `--platform` names it.
    pub platform: String,
    /// Its manifest digest.
    pub digest: String,
    /// The base manifest it sits on (the base index's entry for this platform).
    pub base_digest: String,
    /// The version that built this manifest: a platform whose base manifest did not move keeps
    /// its manifest, and its build manifest, from an earlier version.
    pub built_in: u64,
    /// Its signed build manifest (a referrer of this manifest): digest and size of its
    /// envelope blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_manifest: Option<(String, u64)>,
    /// Its manifest and config, so that a regeneration need not read them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<ImageDocuments>,
}

/// An image's manifest and config, their exact bytes as text (ociup writes both as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDocuments {
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest.
    pub manifest: String,
    /// The config.
    pub config: String,
}

impl ImageDocuments {
    /// The documents of a manifest and its config.
    ///
    /// # Errors
    /// When either is not UTF-8 text.
    pub fn of(manifest: &RawDocument, config: &RawDocument) -> Result<Self> {
        let text = |d: &RawDocument| {
            String::from_utf8(d.bytes().to_vec()).map_err(|_| Error::InvalidDocument {
                what: format!("document {}", d.digest()),
                reason: "not UTF-8 text".into(),
            })
        };
        Ok(ImageDocuments {
            media_type: manifest.media_type().to_owned(),
            manifest: text(manifest)?,
            config: text(config)?,
        })
    }

    /// The manifest (which must hash to `digest`) and its config (checked against the
    /// manifest's config descriptor).
    ///
    /// # Errors
    /// A digest or size that does not match, or a document that does not parse.
    pub fn load(&self, digest: &Digest) -> Result<(Manifest, Config)> {
        let manifest = Manifest::parse(RawDocument::verified(
            self.manifest.as_bytes().to_vec(),
            self.media_type.clone(),
            digest,
        )?)?;
        let desc = manifest.parsed().config();
        let config_digest = manifest.config_digest()?;
        if desc.size() != self.config.len() as u64 {
            return Err(Error::SizeMismatch {
                digest: config_digest,
                expected: desc.size(),
                actual: self.config.len() as u64,
            });
        }
        let config = Config::parse(RawDocument::verified(
            self.config.as_bytes().to_vec(),
            desc.media_type().to_string(),
            &config_digest,
        )?)?;
        Ok((manifest, config))
    }
}

/// One management command applied to a nick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The command, as a command line.
    pub command: String,
    /// When.
    pub time: String,
    /// Who.
    pub actor: String,
    /// Digest of the previous entry.
    pub previous: Option<String>,
    /// The service that acted for `actor`, when one did (absent otherwise, and in entries of
    /// older ociup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// A blob of the catalog: digest and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    /// Digest.
    pub digest: Digest,
    /// Size.
    pub size: u64,
}

/// A nick as the catalog holds it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The nick.
    pub nick: String,
    /// State.
    pub state: State,
    /// Why the first build failed.
    pub error: Option<String>,
    /// The recipe.
    pub recipe: Recipe,
    /// Its blob.
    pub recipe_blob: BlobRef,
    /// The current version and its blob.
    pub version: Option<(VersionRecord, BlobRef)>,
    /// The last audit entry's blob.
    pub audit: BlobRef,
    /// Read from the store (its manifest and empty config exist there).
    pub stored: bool,
    /// The digest of the manifest it was read from.
    pub manifest: Option<Digest>,
}

/// The current version as a nick's manifest annotates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    /// Version number.
    pub number: u64,
    /// Digest-pinned reference.
    pub image: String,
    /// Manifest digest.
    pub digest: String,
    /// The base digest it sits on.
    pub base_digest: String,
}

impl Current {
    /// The summary of a version record.
    pub fn of(v: &VersionRecord) -> Current {
        Current {
            number: v.number,
            image: v.image.clone(),
            digest: v.digest.clone(),
            base_digest: v.base_digest.clone(),
        }
    }
}

/// One platform of an index version, as a nick's manifest annotates it (and `status` shows it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformSummary {
    /// `os/architecture[/variant]`.
    pub platform: String,
    /// Its manifest digest.
    pub digest: String,
    /// The base manifest it sits on.
    pub base_digest: String,
}

impl PlatformSummary {
    /// The platforms of a version record.
    pub fn of(v: &VersionRecord) -> Vec<PlatformSummary> {
        v.platforms
            .iter()
            .map(|p| PlatformSummary {
                platform: p.platform.clone(),
                digest: p.digest.clone(),
                base_digest: p.base_digest.clone(),
            })
            .collect()
    }
}

/// What a nick's manifest says of it (its annotations), read without its blobs.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The nick.
    pub nick: String,
    /// State.
    pub state: State,
    /// Why the first build failed.
    pub error: Option<String>,
    /// The base reference (absent in entries written before summaries were).
    pub base: Option<String>,
    /// The current version (absent while pending, or in older entries).
    pub current: Option<Current>,
    /// Whether the current version has a signed build manifest (absent in older entries).
    pub signed: Option<bool>,
    /// The id of the key that signed it, when known.
    pub signer: Option<String>,
    /// For an index version: each platform's manifest and base manifest (absent for a single
    /// image, and in older entries).
    pub platforms: Option<Vec<PlatformSummary>>,
    manifest: Value,
    digest: Digest,
}

impl Summary {
    /// Checks what the annotations say against the entry they summarize (read from the same
    /// manifest's blobs): the nick, the base, and the current version's number, image, digest,
    /// base digest and signature. An annotation edited by hand would otherwise be answered by a
    /// resolve with nothing due, which reads the annotations alone.
    ///
    /// # Errors
    /// [`Error::InvalidDocument`] naming the first thing that differs.
    pub fn check(&self, entry: &Entry) -> Result<()> {
        let nick = &self.nick;
        let bad = |reason: String| Error::InvalidDocument {
            what: format!("catalog entry of {nick}"),
            reason: format!("{reason}; the catalog was changed outside ociup"),
        };
        if entry.recipe.nick != *nick {
            return Err(bad(format!("its recipe is of {:?}", entry.recipe.nick)));
        }
        if let Some(base) = &self.base
            && *base != entry.recipe.base
        {
            return Err(bad(format!(
                "its annotations name the base {base}, its recipe {}",
                entry.recipe.base
            )));
        }
        let Some((record, _)) = &entry.version else {
            return match &self.current {
                Some(c) => Err(bad(format!(
                    "its annotations name version {} ({}), but it has no version record",
                    c.number, c.digest
                ))),
                None => Ok(()),
            };
        };
        if record.nick != *nick {
            return Err(bad(format!(
                "its version record is of {:?} (version {}, {})",
                record.nick, record.number, record.image
            )));
        }
        if let Some(c) = &self.current {
            let recorded = Current::of(record);
            if *c != recorded {
                return Err(bad(format!(
                    "its annotations name version {} ({}, base {}), its version record version \
                     {} ({}, base {})",
                    c.number,
                    c.image,
                    c.base_digest,
                    recorded.number,
                    recorded.image,
                    recorded.base_digest
                )));
            }
        }
        if let Some(platforms) = &self.platforms
            && *platforms != PlatformSummary::of(record)
        {
            return Err(bad(format!(
                "its annotations name other platforms than its version record {}",
                record.number
            )));
        }
        if let Some(signed) = self.signed
            && signed != record.build_manifest.is_some()
        {
            return Err(bad(format!(
                "its annotations say version {} is {}, its version record the opposite",
                record.number,
                if signed { "signed" } else { "unsigned" }
            )));
        }
        Ok(())
    }
}

/// A catalog in a store.
#[derive(Clone, Debug)]
pub struct Catalog<S> {
    store: S,
    cache: Option<BlobCache>,
}

fn tag(nick: &str) -> String {
    format!("nick.{nick}")
}

impl<S: Store> Catalog<S> {
    /// A catalog kept in `store`.
    pub fn new(store: S) -> Self {
        Catalog { store, cache: None }
    }

    /// The same catalog, keeping the blobs it reads from a registry in `cache`.
    #[must_use]
    pub fn with_cache(mut self, cache: BlobCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The cache of blobs read, if any.
    pub fn cache(&self) -> Option<&BlobCache> {
        self.cache.as_ref()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Every nick, sorted.
    ///
    /// # Errors
    /// Store errors.
    pub async fn nicks(&self) -> Result<Vec<String>> {
        Ok(self
            .store
            .list_tags()
            .await?
            .into_iter()
            .filter_map(|t| t.strip_prefix("nick.").map(str::to_owned))
            .collect())
    }

    /// Stores a JSON value as a blob (canonical JSON).
    ///
    /// # Errors
    /// Store errors.
    pub async fn put_json<T: Serialize>(&self, value: &T) -> Result<BlobRef> {
        let bytes = canonical_json(value)?;
        let digest = Digest::sha256(&bytes);
        // Records are new by construction (they carry a time); a repeat upload is harmless.
        self.store
            .put_new_blob(&digest, bytes.len() as u64, &bytes[..])
            .await?;
        BlobCache::keep(self.cache.as_ref(), &self.store, &digest, &bytes);
        Ok(BlobRef {
            digest,
            size: bytes.len() as u64,
        })
    }

    async fn get_json<T: DeserializeOwned>(&self, blob: &BlobRef, what: &str) -> Result<T> {
        let bytes =
            BlobCache::read(self.cache.as_ref(), &self.store, &blob.digest, blob.size).await?;
        serde_json::from_slice(&bytes).map_err(|source| Error::MalformedDocument {
            what: format!("{what} {} in the catalog", blob.digest),
            source,
        })
    }

    /// A version record by the digest of its blob.
    ///
    /// # Errors
    /// Store errors, [`Error::MalformedDocument`].
    pub async fn version(&self, digest: &Digest) -> Result<VersionRecord> {
        if let Some(bytes) = BlobCache::lookup(self.cache.as_ref(), &self.store, digest) {
            return serde_json::from_slice(&bytes).map_err(|source| Error::MalformedDocument {
                what: format!("version record {digest} in the catalog"),
                source,
            });
        }
        let size = self
            .store
            .blob_size(digest)
            .await?
            .ok_or_else(|| Error::BlobNotFound {
                digest: digest.clone(),
                store: self.store.location(),
            })?;
        self.get_json(
            &BlobRef {
                digest: digest.clone(),
                size,
            },
            "version record",
        )
        .await
    }

    /// What the nick's manifest says, without reading its blobs (one read), or `None` when it
    /// is not registered.
    ///
    /// # Errors
    /// Store errors; [`Error::InvalidDocument`] for a nick manifest ociup did not write.
    pub async fn summary(&self, nick: &str) -> Result<Option<Summary>> {
        let raw = match self.store.get_manifest(&ManifestRef::Tag(tag(nick))).await {
            Ok(r) => r,
            Err(Error::TagNotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let v: Value =
            serde_json::from_slice(raw.bytes()).map_err(|source| Error::MalformedDocument {
                what: format!("catalog entry of {nick}"),
                source,
            })?;
        let bad = |reason: &str| Error::InvalidDocument {
            what: format!("catalog entry of {nick}"),
            reason: reason.into(),
        };
        if v.get("artifactType").and_then(Value::as_str) != Some(NICK_ARTIFACT) {
            return Err(bad("it is not an ociup nick artifact"));
        }
        let ann = v.get("annotations").cloned().unwrap_or(Value::Null);
        let text = |k: &str| ann.get(k).and_then(Value::as_str).map(str::to_owned);
        let state: State =
            serde_json::from_value(ann.get("dev.ociup.state").cloned().unwrap_or(Value::Null))
                .map_err(|_| bad("no valid state"))?;
        let current = match (
            text("dev.ociup.version").and_then(|n| n.parse().ok()),
            text("dev.ociup.image"),
            text("dev.ociup.digest"),
            text("dev.ociup.base-digest"),
        ) {
            (Some(number), Some(image), Some(digest), Some(base_digest)) => Some(Current {
                number,
                image,
                digest,
                base_digest,
            }),
            _ => None,
        };
        Ok(Some(Summary {
            nick: nick.to_owned(),
            state,
            error: text("dev.ociup.error"),
            base: text("dev.ociup.base"),
            current,
            signed: text("dev.ociup.signed").map(|s| s == "true"),
            signer: text("dev.ociup.signer"),
            platforms: match text("dev.ociup.platforms") {
                Some(t) => {
                    Some(serde_json::from_str(&t).map_err(|_| bad("invalid dev.ociup.platforms"))?)
                }
                None => None,
            },
            manifest: v,
            digest: raw.digest().clone(),
        }))
    }

    /// The whole entry a summary was read from: its recipe, version record and audit head.
    ///
    /// # Errors
    /// Store errors; [`Error::InvalidDocument`] when the manifest lacks a recipe or audit entry.
    pub async fn entry(&self, summary: &Summary) -> Result<Entry> {
        let bad = |reason: &str| Error::InvalidDocument {
            what: format!("catalog entry of {}", summary.nick),
            reason: reason.into(),
        };
        let mut recipe_blob = None;
        let mut version_blob = None;
        let mut audit_blob = None;
        for l in summary
            .manifest
            .get("layers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let digest: Digest = l
                .get("digest")
                .and_then(Value::as_str)
                .unwrap_or("")
                .parse()?;
            let b = BlobRef {
                digest,
                size: l.get("size").and_then(Value::as_u64).unwrap_or(0),
            };
            match l.get("mediaType").and_then(Value::as_str) {
                Some(RECIPE_MEDIA_TYPE) => recipe_blob = Some(b),
                Some(VERSION_MEDIA_TYPE) => version_blob = Some(b),
                Some(AUDIT_MEDIA_TYPE) => audit_blob = Some(b),
                _ => {}
            }
        }
        let recipe_blob = recipe_blob.ok_or_else(|| bad("no recipe"))?;
        let audit = audit_blob.ok_or_else(|| bad("no audit entry"))?;
        let recipe = self.get_json(&recipe_blob, "recipe").await?;
        let version = match version_blob {
            Some(b) => Some((self.get_json(&b, "version record").await?, b)),
            None => None,
        };
        Ok(Entry {
            nick: summary.nick.clone(),
            state: summary.state,
            error: summary.error.clone(),
            recipe,
            recipe_blob,
            version,
            audit,
            stored: true,
            manifest: Some(summary.digest.clone()),
        })
    }

    /// The nick's entry, or `None` when it is not registered.
    ///
    /// # Errors
    /// Store errors; [`Error::InvalidDocument`] for a nick manifest ociup did not write.
    pub async fn get(&self, nick: &str) -> Result<Option<Entry>> {
        match self.summary(nick).await? {
            Some(s) => Ok(Some(self.entry(&s).await?)),
            None => Ok(None),
        }
    }

    /// Writes the nick's manifest (its blobs must be stored already) and points its tag at it.
    ///
    /// # Errors
    /// Store errors.
    pub async fn put(&self, entry: &Entry) -> Result<()> {
        let empty = b"{}";
        let empty_digest = Digest::sha256(empty);
        if !entry.stored {
            self.store.put_blob(&empty_digest, 2, &empty[..]).await?;
        }
        let desc = |mt: &str, b: &BlobRef| json!({"mediaType": mt, "digest": b.digest.to_string(), "size": b.size});
        let mut layers = vec![desc(RECIPE_MEDIA_TYPE, &entry.recipe_blob)];
        if let Some((_, b)) = &entry.version {
            layers.push(desc(VERSION_MEDIA_TYPE, b));
        }
        layers.push(desc(AUDIT_MEDIA_TYPE, &entry.audit));
        let mut ann = serde_json::Map::new();
        ann.insert("dev.ociup.nick".into(), entry.nick.clone().into());
        ann.insert(
            "dev.ociup.state".into(),
            serde_json::to_value(entry.state).unwrap_or(Value::Null),
        );
        if let Some(e) = &entry.error {
            ann.insert("dev.ociup.error".into(), e.clone().into());
        }
        // A summary for readers that need no more (resolve with nothing due, status).
        ann.insert("dev.ociup.base".into(), entry.recipe.base.clone().into());
        if let Some((v, _)) = &entry.version {
            ann.insert("dev.ociup.version".into(), v.number.to_string().into());
            ann.insert("dev.ociup.image".into(), v.image.clone().into());
            ann.insert("dev.ociup.digest".into(), v.digest.clone().into());
            ann.insert("dev.ociup.base-digest".into(), v.base_digest.clone().into());
            let signed = v.build_manifest.is_some();
            ann.insert("dev.ociup.signed".into(), signed.to_string().into());
            if let (true, Some(k)) = (signed, &v.signer) {
                ann.insert("dev.ociup.signer".into(), k.clone().into());
            }
            if !v.platforms.is_empty() {
                let platforms = serde_json::to_string(&PlatformSummary::of(v))
                    .map_err(|e| Error::io("writing a summary", std::io::Error::other(e)))?;
                ann.insert("dev.ociup.platforms".into(), platforms.into());
            }
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "artifactType": NICK_ARTIFACT,
            "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": empty_digest.to_string(), "size": 2},
            "layers": layers,
            "annotations": ann,
        });
        let raw = RawDocument::canonical(&manifest, media_type::OCI_MANIFEST)?;
        self.store.put_manifest(&raw, Some(&tag(&entry.nick))).await
    }

    /// The digest the nick's tag points at now (one HEAD on a registry), or `None`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn head(&self, nick: &str) -> Result<Option<Digest>> {
        match self.store.resolve_tag(&tag(nick)).await {
            Ok(d) => Ok(Some(Digest::try_from(d.digest())?)),
            Err(Error::TagNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every version of a nick, newest first, following the chain from the current one.
    ///
    /// # Errors
    /// Store errors.
    pub async fn history(&self, entry: &Entry) -> Result<Vec<VersionRecord>> {
        let mut out = Vec::new();
        let mut next = entry.version.as_ref().map(|(v, _)| v.clone());
        while let Some(v) = next {
            next = match &v.previous {
                Some(d) => Some(self.version(&d.parse()?).await?),
                None => None,
            };
            out.push(v);
        }
        Ok(out)
    }

    /// The audit trail, oldest first.
    ///
    /// # Errors
    /// Store errors.
    pub async fn audit_trail(&self, entry: &Entry) -> Result<Vec<AuditEntry>> {
        let mut out = Vec::new();
        let mut next = Some(entry.audit.clone());
        while let Some(b) = next {
            let a: AuditEntry = self.get_json(&b, "audit entry").await?;
            next = match &a.previous {
                Some(d) => {
                    let digest: Digest = d.parse()?;
                    let size = self.store.blob_size(&digest).await?.ok_or_else(|| {
                        Error::BlobNotFound {
                            digest: digest.clone(),
                            store: self.store.location(),
                        }
                    })?;
                    Some(BlobRef { digest, size })
                }
                None => None,
            };
            out.push(a);
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn documents() -> (RawDocument, ImageDocuments) {
        let config = RawDocument::canonical(
            &json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}),
            media_type::OCI_CONFIG,
        )
        .unwrap();
        let manifest = RawDocument::canonical(
            &json!({
                "schemaVersion": 2,
                "mediaType": media_type::OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [],
            }),
            media_type::OCI_MANIFEST,
        )
        .unwrap();
        let docs = ImageDocuments::of(&manifest, &config).unwrap();
        (manifest, docs)
    }

    fn record(nick: &str, number: u64, image: &Digest) -> VersionRecord {
        VersionRecord {
            nick: nick.into(),
            number,
            image: format!("oci:/images@{image}"),
            digest: image.to_string(),
            base: "oci:/base:latest".into(),
            base_digest: Digest::sha256(b"base").to_string(),
            recipe: Digest::sha256(b"recipe").to_string(),
            reason: "registered".into(),
            time: "2026-11-28T00:00:00Z".into(),
            actor: "tester".into(),
            previous: None,
            build_manifest: Some((Digest::sha256(b"envelope").to_string(), 9)),
            epoch: 0,
            documents: None,
            signer: Some("ab".repeat(32)),
            platforms: Vec::new(),
            dropped_platforms: Vec::new(),
            via: None,
        }
    }

    fn blob(bytes: &[u8]) -> BlobRef {
        BlobRef {
            digest: Digest::sha256(bytes),
            size: bytes.len() as u64,
        }
    }

    /// An entry of `nick` with `record` and the summary its manifest would carry.
    fn entry_and_summary(nick: &str, record: VersionRecord) -> (Entry, Summary) {
        let entry = Entry {
            nick: nick.into(),
            state: State::Ready,
            error: None,
            recipe: Recipe {
                nick: nick.into(),
                base: record.base.clone(),
                target: "oci:/images".into(),
                steps: Vec::new(),
            },
            recipe_blob: blob(b"recipe"),
            version: Some((record.clone(), blob(b"record"))),
            audit: blob(b"audit"),
            stored: true,
            manifest: None,
        };
        let summary = Summary {
            nick: nick.into(),
            state: State::Ready,
            error: None,
            base: Some(record.base.clone()),
            current: Some(Current::of(&record)),
            signed: Some(true),
            signer: record.signer.clone(),
            platforms: None,
            manifest: Value::Null,
            digest: Digest::sha256(b"manifest"),
        };
        (entry, summary)
    }

    #[test]
    fn a_summary_must_say_what_its_version_record_says() {
        let mine = Digest::sha256(b"mine");
        let theirs = Digest::sha256(b"theirs");
        let (entry, summary) = entry_and_summary("app", record("app", 2, &mine));
        summary.check(&entry).unwrap();
        // Older entries carry no summary: nothing to hold against the record.
        let old = Summary {
            base: None,
            current: None,
            signed: None,
            ..summary.clone()
        };
        old.check(&entry).unwrap();

        // The annotations edited to answer another nick's image.
        let (_, other) = entry_and_summary("web", record("web", 2, &theirs));
        let forged = Summary {
            current: other.current.clone(),
            ..summary.clone()
        };
        let err = forged.check(&entry).unwrap_err().to_string();
        assert!(
            err.contains("catalog entry of app")
                && err.contains(&theirs.to_string())
                && err.contains(&mine.to_string())
                && err.contains("changed outside ociup"),
            "{err}"
        );
        // Another version number, another base, a signature dropped from the annotations.
        let mut older = summary.clone();
        older.current.as_mut().unwrap().number = 1;
        assert!(older.check(&entry).is_err());
        let moved = Summary {
            base: Some("oci:/elsewhere:latest".into()),
            ..summary.clone()
        };
        assert!(
            moved
                .check(&entry)
                .unwrap_err()
                .to_string()
                .contains("elsewhere")
        );
        let unsigned = Summary {
            signed: Some(false),
            ..summary.clone()
        };
        assert!(
            unsigned
                .check(&entry)
                .unwrap_err()
                .to_string()
                .contains("unsigned")
        );

        // The version layer pointed at another nick's record, annotations and all.
        let (mut borrowed, _) = entry_and_summary("app", record("app", 2, &mine));
        borrowed.version = Some((record("web", 2, &theirs), blob(b"web record")));
        let err = other_summary_of("app", &other)
            .check(&borrowed)
            .unwrap_err()
            .to_string();
        assert!(err.contains("record is of \"web\""), "{err}");
        // No record, but annotations that name a version.
        let (mut bare, _) = entry_and_summary("app", record("app", 2, &mine));
        bare.version = None;
        assert!(
            summary
                .check(&bare)
                .unwrap_err()
                .to_string()
                .contains("no version record")
        );
    }

    /// `summary` as if it were `nick`'s.
    fn other_summary_of(nick: &str, summary: &Summary) -> Summary {
        Summary {
            nick: nick.into(),
            ..summary.clone()
        }
    }

    #[tokio::test]
    async fn the_blob_cache_answers_only_bytes_that_hash_to_their_name() {
        let t = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(t.path().join("cache"));
        let bytes = br#"{"nick":"app"}"#;
        let digest = Digest::sha256(bytes);
        assert_eq!(cache.get(&digest), None);
        cache.put(&digest, bytes);
        assert_eq!(cache.get(&digest).as_deref(), Some(&bytes[..]));
        // Edited in place: a miss, not an answer.
        let path = t.path().join("cache/sha256").join(digest.hex());
        std::fs::write(&path, br#"{"nick":"web"}"#).unwrap();
        assert_eq!(cache.get(&digest), None);
        // Written again, it is replaced.
        cache.put(&digest, bytes);
        assert_eq!(cache.get(&digest).as_deref(), Some(&bytes[..]));
        // Read through from a layout: its blobs are local files, nothing is cached.
        let layout = crate::layout::OciLayout::open_or_create(t.path().join("lay")).unwrap();
        let other = br#"{"nick":"db"}"#;
        let d = Digest::sha256(other);
        layout
            .put_blob(&d, other.len() as u64, &other[..])
            .await
            .unwrap();
        let read = BlobCache::read(Some(&cache), &layout, &d, other.len() as u64)
            .await
            .unwrap();
        assert_eq!(read, other);
        assert_eq!(cache.get(&d), None);
    }

    #[test]
    fn recorded_documents_load_only_when_they_match_their_digests() {
        let (manifest, docs) = documents();
        let (m, c) = docs.load(manifest.digest()).unwrap();
        assert_eq!(m.raw().digest(), manifest.digest());
        assert_eq!(c.str_field("os"), Some("linux"));
        // Another image's digest, an edited manifest, an edited config of the same size.
        assert!(docs.load(&Digest::sha256(b"other")).is_err());
        let mut edited = docs.clone();
        edited.manifest = edited.manifest.replace("\"layers\":[]", "\"layers\": []");
        assert!(matches!(
            edited.load(manifest.digest()),
            Err(Error::DigestMismatch { .. })
        ));
        let mut edited = docs.clone();
        edited.config = edited.config.replace("amd64", "arm64");
        assert!(matches!(
            edited.load(manifest.digest()),
            Err(Error::DigestMismatch { .. })
        ));
        edited.config.push(' ');
        assert!(matches!(
            edited.load(manifest.digest()),
            Err(Error::SizeMismatch { .. })
        ));
    }
}

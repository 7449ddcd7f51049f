use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::document::{Index, RawDocument};
use crate::error::{Error, Result};
use crate::media_type::{self, DocumentKind, Family};
use crate::reference::PlatformSpec;

/// The fields of an index entry's platform that say which machines can run it, in the order
/// image-spec lists them.
const PLATFORM_FIELDS: [&str; 5] = ["architecture", "os", "os.version", "os.features", "variant"];

/// One entry of a new index: a manifest and its `platform` object as it goes into the index.
#[derive(Clone, Debug)]
pub struct IndexEntry<'a> {
    /// The manifest.
    pub manifest: &'a RawDocument,
    /// Its platform object: `os`, `architecture` and, when known, `variant`, `os.version`,
    /// `os.features` (kept as given, unknown fields too).
    pub platform: Map<String, Value>,
}

impl<'a> IndexEntry<'a> {
    /// `manifest` for `platform` (os, architecture and variant only).
    pub fn new(manifest: &'a RawDocument, platform: &PlatformSpec) -> Self {
        let mut p = Map::new();
        p.insert("architecture".into(), platform.architecture.clone().into());
        p.insert("os".into(), platform.os.clone().into());
        if let Some(v) = &platform.variant {
            p.insert("variant".into(), v.clone().into());
        }
        IndexEntry {
            manifest,
            platform: p,
        }
    }
}

/// The platform object of an image, read from its config: `os`, `architecture`, and `variant`,
/// `os.version`, `os.features` when the config has them.
pub fn platform_of_config(config: &Config) -> Map<String, Value> {
    PLATFORM_FIELDS
        .iter()
        .filter_map(|k| config.value().get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect()
}

/// A short name of a platform object for messages: `linux/arm64/v8`, with ` (os.version X)`.
pub fn platform_name(p: &Map<String, Value>) -> String {
    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
    let mut name = format!("{}/{}", s("os"), s("architecture"));
    if let Some(v) = p.get("variant").and_then(Value::as_str) {
        name = format!("{name}/{v}");
    }
    if let Some(v) = p.get("os.version").and_then(Value::as_str) {
        name = format!("{name} (os.version {v})");
    }
    name
}

/// The fields of a platform object that tell platforms apart (unknown ones are not compared).
fn platform_key(p: &Map<String, Value>) -> Vec<Option<&Value>> {
    PLATFORM_FIELDS.iter().map(|k| p.get(*k)).collect()
}

/// A new index over `manifests`, each with its platform, in canonical JSON. Every manifest must
/// be of `family`, and the index is of that family too.
///
/// # Errors
/// [`Error::InvalidDocument`] for a manifest of the other family or not a manifest at all.
pub fn new_index(
    family: Family,
    manifests: &[(&RawDocument, &PlatformSpec)],
) -> Result<RawDocument> {
    let entries: Vec<IndexEntry<'_>> = manifests
        .iter()
        .map(|(m, p)| IndexEntry::new(m, p))
        .collect();
    index_of(family, &entries, &BTreeMap::new())
}

/// A new index over `entries`, in their order, with `annotations` (none when empty), in
/// canonical JSON. Every manifest must be of `family`, and the index is of that family too; no
/// two entries may be for the same platform (os, architecture, variant, os.version and
/// os.features all equal).
///
/// # Errors
/// [`Error::InvalidDocument`] for a manifest of the other family or not a manifest at all,
/// [`Error::InvalidChange`] for two entries of one platform or a platform without `os` or
/// `architecture`.
pub fn index_of(
    family: Family,
    entries: &[IndexEntry<'_>],
    annotations: &BTreeMap<String, String>,
) -> Result<RawDocument> {
    let index_type = match family {
        Family::Oci => media_type::OCI_INDEX,
        Family::Docker => media_type::DOCKER_INDEX,
    };
    let mut list = Vec::with_capacity(entries.len());
    for (n, e) in entries.iter().enumerate() {
        let m = e.manifest;
        match media_type::document_kind(m.media_type()) {
            Ok((DocumentKind::Manifest, f)) if f == family => {}
            _ => {
                return Err(Error::InvalidDocument {
                    what: format!("manifest {}", m.digest()),
                    reason: format!(
                        "media type {:?} cannot go into a {index_type} index (one index never \
                         mixes the Docker and OCI families)",
                        m.media_type()
                    ),
                });
            }
        }
        for k in ["os", "architecture"] {
            if e.platform
                .get(k)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(Error::InvalidChange {
                    reason: format!("manifest {} has no platform {k}", m.digest()),
                });
            }
        }
        if let Some(earlier) = entries[..n]
            .iter()
            .find(|o| platform_key(&o.platform) == platform_key(&e.platform))
        {
            return Err(Error::InvalidChange {
                reason: format!(
                    "manifests {} and {} are both for {}: an index has one manifest per platform",
                    earlier.manifest.digest(),
                    m.digest(),
                    platform_name(&e.platform)
                ),
            });
        }
        list.push(json!({
            "mediaType": m.media_type(),
            "digest": m.digest().to_string(),
            "size": m.size(),
            "platform": e.platform,
        }));
    }
    let mut index = Map::new();
    index.insert("schemaVersion".into(), 2.into());
    index.insert("mediaType".into(), index_type.into());
    index.insert("manifests".into(), Value::Array(list));
    if !annotations.is_empty() {
        index.insert("annotations".into(), json!(annotations));
    }
    RawDocument::canonical(&Value::Object(index), index_type)
}

/// `index` with `entries` added after its own, every other field kept as it is (entry
/// annotations, the index's annotations, unknown fields), in canonical JSON.
///
/// # Errors
/// As [`index_of`]: a manifest of the other family, a platform without `os` or `architecture`,
/// or one the index (or another new entry) has already.
pub fn add_to_index(index: &Index, entries: &[IndexEntry<'_>]) -> Result<RawDocument> {
    let mut value = index_value(index)?;
    let existing: Vec<Value> = value["manifests"].as_array().cloned().unwrap_or_default();
    // The new entries checked together (family, fields, duplicates among them).
    let checked = index_of(index.family(), entries, &BTreeMap::new())?;
    let mut new: Vec<Value> = serde_json::from_slice::<Value>(checked.bytes())
        .ok()
        .and_then(|v| v["manifests"].as_array().cloned())
        .unwrap_or_default();
    for (e, v) in entries.iter().zip(&new) {
        if let Some(old) = existing.iter().find(|o| {
            o["platform"]
                .as_object()
                .is_some_and(|p| platform_key(p) == platform_key(&e.platform))
        }) {
            return Err(Error::InvalidChange {
                reason: format!(
                    "index {} already has {} for {}: remove it first (an index has one manifest \
                     per platform)",
                    index.raw().digest(),
                    old["digest"].as_str().unwrap_or("a manifest"),
                    platform_name(&e.platform)
                ),
            });
        }
        debug_assert_eq!(v["digest"], e.manifest.digest().to_string());
    }
    let mut all = existing;
    all.append(&mut new);
    value.insert("manifests".into(), Value::Array(all));
    RawDocument::canonical(&Value::Object(value), index.raw().media_type())
}

/// `index` without the entries `remove` picks, every other field kept as it is, in canonical
/// JSON; and the entries removed.
///
/// # Errors
/// [`Error::InvalidChange`] when `remove` picks no entry, or every one (an index of nothing
/// runs nowhere).
pub fn remove_from_index(
    index: &Index,
    remove: impl Fn(&Value) -> bool,
) -> Result<(RawDocument, Vec<Value>)> {
    let mut value = index_value(index)?;
    let (gone, kept): (Vec<Value>, Vec<Value>) = value["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .partition(|e| remove(e));
    if gone.is_empty() {
        return Err(Error::InvalidChange {
            reason: format!("index {} has no such entry", index.raw().digest()),
        });
    }
    if kept.is_empty() {
        return Err(Error::InvalidChange {
            reason: format!(
                "removing that would leave index {} empty",
                index.raw().digest()
            ),
        });
    }
    value.insert("manifests".into(), Value::Array(kept));
    Ok((
        RawDocument::canonical(&Value::Object(value), index.raw().media_type())?,
        gone,
    ))
}

fn index_value(index: &Index) -> Result<Map<String, Value>> {
    serde_json::from_slice(index.raw().bytes()).map_err(|source| Error::MalformedDocument {
        what: format!("index {}", index.raw().digest()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(media_type: &str, n: u8) -> RawDocument {
        RawDocument::canonical(
            &json!({"schemaVersion": 2, "mediaType": media_type, "n": n}),
            media_type,
        )
        .unwrap()
    }

    fn platform(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn entries_keep_every_platform_field_and_their_order() {
        let (a, b) = (
            manifest(media_type::OCI_MANIFEST, 1),
            manifest(media_type::OCI_MANIFEST, 2),
        );
        let win = platform(json!({"os": "windows", "architecture": "amd64",
            "os.version": "10.0.17763.5329", "os.features": ["win32k"]}));
        let arm = platform(json!({"os": "linux", "architecture": "arm64", "variant": "v8"}));
        let index = index_of(
            Family::Oci,
            &[
                IndexEntry {
                    manifest: &b,
                    platform: win.clone(),
                },
                IndexEntry {
                    manifest: &a,
                    platform: arm.clone(),
                },
            ],
            &BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(index.bytes()).unwrap();
        assert_eq!(v["manifests"][0]["platform"], Value::Object(win));
        assert_eq!(v["manifests"][0]["digest"], b.digest().to_string());
        assert_eq!(v["manifests"][1]["platform"], Value::Object(arm));
        assert_eq!(v["annotations"]["k"], "v");
        assert_eq!(index.media_type(), media_type::OCI_INDEX);
        // Canonical: serializing the parsed value again gives the same bytes.
        assert_eq!(crate::document::canonical_json(&v).unwrap(), index.bytes());
    }

    #[test]
    fn two_manifests_of_one_platform_or_of_two_families_are_refused() {
        let (a, b) = (
            manifest(media_type::OCI_MANIFEST, 1),
            manifest(media_type::OCI_MANIFEST, 2),
        );
        let amd = platform(json!({"os": "linux", "architecture": "amd64"}));
        let err = index_of(
            Family::Oci,
            &[
                IndexEntry {
                    manifest: &a,
                    platform: amd.clone(),
                },
                IndexEntry {
                    manifest: &b,
                    platform: amd.clone(),
                },
            ],
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("both for linux/amd64"), "{err}");
        // Another os.version is another platform.
        let mut other = amd.clone();
        other.insert("os.version".into(), "2".into());
        index_of(
            Family::Oci,
            &[
                IndexEntry {
                    manifest: &a,
                    platform: amd.clone(),
                },
                IndexEntry {
                    manifest: &b,
                    platform: other,
                },
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        let d = manifest(media_type::DOCKER_MANIFEST, 3);
        let err = index_of(
            Family::Oci,
            &[IndexEntry {
                manifest: &d,
                platform: amd,
            }],
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("never mixes"), "{err}");
    }
}

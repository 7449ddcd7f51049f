use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::annotations;
use crate::config::{Config, ConfigChange, apply_changes};
use crate::document::{Manifest, RawDocument};
use crate::error::{Error, Result};
use crate::layer::Layer;
use crate::media_type::{self, Family};
use crate::time::rfc3339;

/// What an image is appended to.
#[derive(Clone, Copy, Debug)]
pub enum Base<'a> {
    /// An existing image: its manifest, its config, and the reference it was named by (recorded as
    /// `org.opencontainers.image.base.name` when given).
    Image {
        /// The base's manifest.
        manifest: &'a Manifest,
        /// The base's config.
        config: &'a Config,
        /// How the user named the base, recorded as [`crate::reference::base_name`] gives it (a
        /// plain distribution reference, no `docker://` prefix).
        name: Option<&'a str>,
    },
    /// Nothing: a new image for a platform, in the OCI family.
    Scratch {
        /// `linux`, ...
        os: &'a str,
        /// `amd64`, `arm64`, ...
        architecture: &'a str,
        /// `v8`, ...
        variant: Option<&'a str>,
    },
}

/// A layer to append, with the history line that describes it.
#[derive(Clone, Debug)]
pub struct NewLayer {
    /// The built layer.
    pub layer: Layer,
    /// `created_by` of its history entry.
    pub created_by: String,
}

/// The documents [`append`] made, ready to store: blobs first, then the config, then the manifest.
#[derive(Clone, Debug)]
pub struct Appended {
    /// The new config.
    pub config: RawDocument,
    /// The new manifest.
    pub manifest: RawDocument,
}

/// Appends layers and config changes to `base`, giving a new config and manifest in canonical
/// JSON. The base config is edited as JSON, so fields no type models survive; the base's
/// manifest annotations are not inherited; `annotations` are set on the new manifest beside the
/// base annotations ociup always writes. `created` (seconds since 1970, usually
/// `SOURCE_DATE_EPOCH`) is the config's and the history entries' time, so the same inputs give
/// the same digests.
///
/// # Errors
/// [`Error::UnsupportedMediaType`] for a zstd layer on a Docker image, [`Error::InvalidDocument`]
/// for a base whose manifest and config disagree, [`Error::InvalidChange`] for bad changes.
pub fn append(
    base: Base<'_>,
    layers: &[NewLayer],
    changes: &[ConfigChange],
    extra_annotations: &BTreeMap<String, String>,
    created: u64,
) -> Result<Appended> {
    let created_at = rfc3339(created);
    let (family, mut config, mut manifest_layers, mut manifest_annotations) = match base {
        Base::Scratch {
            os,
            architecture,
            variant,
        } => (
            Family::Oci,
            Config::scratch(os, architecture, variant),
            Vec::new(),
            BTreeMap::new(),
        ),
        Base::Image {
            manifest,
            config,
            name,
        } => {
            let family = manifest.family();
            // Base layer descriptors exactly as the base wrote them (annotations, urls and all).
            let base_value: Value =
                serde_json::from_slice(manifest.raw().bytes()).map_err(|source| {
                    Error::MalformedDocument {
                        what: format!("manifest {}", manifest.raw().digest()),
                        source,
                    }
                })?;
            let layers = base_value
                .get("layers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let diff_ids = config.diff_ids()?;
            if diff_ids.len() != layers.len() {
                return Err(Error::InvalidDocument {
                    what: format!("base image {}", manifest.raw().digest()),
                    reason: format!(
                        "its manifest has {} layers but its config {} diff_ids",
                        layers.len(),
                        diff_ids.len()
                    ),
                });
            }
            let mut ann = BTreeMap::new();
            if let Some(name) = name {
                ann.insert(
                    annotations::BASE_NAME.to_owned(),
                    crate::reference::base_name(name),
                );
            }
            ann.insert(
                annotations::BASE_DIGEST.to_owned(),
                manifest.raw().digest().to_string(),
            );
            ann.insert(
                annotations::BASE_LAYERS.to_owned(),
                layers.len().to_string(),
            );
            if let Some(top) = diff_ids.last() {
                ann.insert(annotations::BASE_TOP_DIFF_ID.to_owned(), top.to_string());
            }
            let base_history = config
                .value()
                .get("history")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            ann.insert(
                annotations::BASE_HISTORY.to_owned(),
                base_history.to_string(),
            );
            (family, config.value().clone(), layers, ann)
        }
    };

    apply_changes(&mut config, changes)?;

    let mut history: Vec<Value> = match config.get("history") {
        Some(Value::Array(h)) => h.clone(),
        _ => Vec::new(),
    };
    let diff_ids = config
        .get_mut("rootfs")
        .and_then(|r| r.get_mut("diff_ids"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Error::InvalidDocument {
            what: "base config".into(),
            reason: "rootfs.diff_ids is missing".into(),
        })?;
    for new in layers {
        let media_type = new.layer.compression.layer_media_type(family)?;
        diff_ids.push(new.layer.diff_id.to_string().into());
        manifest_layers.push(json!({
            "mediaType": media_type,
            "digest": new.layer.digest.to_string(),
            "size": new.layer.size,
        }));
        history.push(json!({
            "created": created_at,
            "created_by": new.created_by,
            "comment": "ociup",
        }));
    }
    if layers.is_empty() && !changes.is_empty() {
        let line = changes
            .iter()
            .map(ConfigChange::describe)
            .collect::<Vec<_>>()
            .join("; ");
        history.push(json!({
            "created": created_at,
            "created_by": line,
            "comment": "ociup",
            "empty_layer": true,
        }));
    }
    config.insert("history".into(), Value::Array(history));
    config.insert("created".into(), created_at.into());

    let (manifest_type, config_type) = media_type::manifest_and_config(family);
    let config_raw = RawDocument::canonical(&Value::Object(config), config_type)?;
    manifest_annotations.extend(extra_annotations.clone());

    let mut manifest = Map::new();
    manifest.insert("schemaVersion".into(), 2.into());
    manifest.insert("mediaType".into(), manifest_type.into());
    manifest.insert(
        "config".into(),
        json!({
            "mediaType": config_type,
            "digest": config_raw.digest().to_string(),
            "size": config_raw.size(),
        }),
    );
    manifest.insert("layers".into(), Value::Array(manifest_layers));
    if !manifest_annotations.is_empty() {
        manifest.insert("annotations".into(), json!(manifest_annotations));
    }
    let manifest_raw = RawDocument::canonical(&Value::Object(manifest), manifest_type)?;
    Ok(Appended {
        config: config_raw,
        manifest: manifest_raw,
    })
}

//! Rebase: an image's own layers put on top of another version of its base. Pure: the image,
//! its old base (or what the image records of it) and the new base go in; a new config and
//! manifest, and a plan saying what changed, come out. Layer bytes are never touched.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::annotations;
use crate::config::{Config, ConfigChange};
use crate::digest::Digest;
use crate::document::{Manifest, RawDocument};
use crate::error::{Error, Result};
use crate::media_type::{self, Family};
use crate::time::rfc3339;

/// What the image was built on.
#[derive(Clone, Copy, Debug)]
pub enum OldBase<'a> {
    /// The old base itself, fetched.
    Image {
        /// Its manifest.
        manifest: &'a Manifest,
        /// Its config.
        config: &'a Config,
    },
    /// Only what the image records (ociup's `dev.ociup.base.*` annotations), for when the old
    /// base is gone. The config is then kept as the image has it, new-base environment variables
    /// it lacks added.
    Recorded,
}

/// How the new config is derived.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ConfigMode {
    /// Fields the image did not change relative to the old base follow the new base; fields it
    /// changed keep its value; `Env`, `Labels`, `ExposedPorts` and `Volumes` are merged by key.
    #[default]
    ThreeWay,
    /// The image's config as it is (crane's behaviour), with the new base's platform fields.
    Keep,
    /// The new base's config with these changes applied: what a managed image's recipe makes,
    /// so the result is what building the recipe on the new base would give.
    Derive(Vec<ConfigChange>),
}

/// The inputs of [`rebase`].
#[derive(Clone, Debug)]
pub struct RebaseInput<'a> {
    /// The image to rebase.
    pub image: &'a Manifest,
    /// Its config.
    pub image_config: &'a Config,
    /// What it was built on.
    pub old_base: OldBase<'a>,
    /// The base to put it on.
    pub new_base: &'a Manifest,
    /// That base's config.
    pub new_base_config: &'a Config,
    /// How the new base is named, for `org.opencontainers.image.base.name` (kept when `None`),
    /// written as [`crate::reference::base_name`] gives it (no `docker://` prefix).
    pub new_base_name: Option<&'a str>,
    /// How the config is derived.
    pub config: ConfigMode,
    /// `created` of the new config (seconds since 1970); the image's when `None`.
    pub created: Option<u64>,
}

/// One layer in a [`RebasePlan`].
#[derive(Clone, Debug, Serialize)]
pub struct PlanLayer {
    /// Blob digest.
    pub digest: String,
    /// Uncompressed digest.
    pub diff_id: String,
    /// Blob size.
    pub size: u64,
}

/// One config field the rebase changes, relative to the image.
#[derive(Clone, Debug, Serialize)]
pub struct FieldChange {
    /// `config.Env`, `os.version`, ...
    pub field: String,
    /// The image's value (null when absent).
    pub old: Value,
    /// The rebased image's value (null when removed).
    pub new: Value,
}

/// What a rebase does.
#[derive(Clone, Debug, Serialize)]
pub struct RebasePlan {
    /// The image already sits on the new base: nothing to write.
    pub already_current: bool,
    /// Old base layers taken out.
    pub removed_layers: Vec<PlanLayer>,
    /// New base layers put in.
    pub added_layers: Vec<PlanLayer>,
    /// The image's own layers, kept byte for byte.
    pub own_layers: Vec<PlanLayer>,
    /// Config fields that change.
    pub config_changes: Vec<FieldChange>,
}

/// The result of [`rebase`].
#[derive(Clone, Debug)]
pub struct Rebased {
    /// The new config (the image's own when already current).
    pub config: RawDocument,
    /// The new manifest (the image's own when already current).
    pub manifest: RawDocument,
    /// What changed.
    pub plan: RebasePlan,
}

fn manifest_value(m: &Manifest) -> Result<Map<String, Value>> {
    match serde_json::from_slice(m.raw().bytes()) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(Error::InvalidDocument {
            what: format!("manifest {}", m.raw().digest()),
            reason: "it is not a JSON object".into(),
        }),
        Err(source) => Err(Error::MalformedDocument {
            what: format!("manifest {}", m.raw().digest()),
            source,
        }),
    }
}

fn layers_of(m: &Map<String, Value>) -> Vec<Value> {
    m.get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn str_of<'v>(v: &'v Value, key: &str) -> &'v str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn plan_layers(layers: &[Value], diff_ids: &[Digest]) -> Vec<PlanLayer> {
    layers
        .iter()
        .zip(diff_ids)
        .map(|(l, d)| PlanLayer {
            digest: str_of(l, "digest").to_owned(),
            diff_id: d.to_string(),
            size: l.get("size").and_then(Value::as_u64).unwrap_or(0),
        })
        .collect()
}

fn history(c: &Config) -> Vec<Value> {
    c.value()
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn is_empty_layer(h: &Value) -> bool {
    h.get("empty_layer")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Rebases `input.image` from its old base onto `input.new_base`.
///
/// # Errors
/// [`Error::InvalidChange`] when the old base is not a prefix of the image (naming the first
/// layer that differs), when the platforms differ, or when the image records no base and none is
/// given; [`Error::UnsupportedMediaType`] when a new-base layer has no equivalent in the image's
/// media type family (zstd into a Docker image).
pub fn rebase(input: &RebaseInput<'_>) -> Result<Rebased> {
    let image = manifest_value(input.image)?;
    let img_layers = layers_of(&image);
    let img_diff_ids = input.image_config.diff_ids()?;
    if img_layers.len() != img_diff_ids.len() {
        return Err(Error::InvalidDocument {
            what: format!("image {}", input.image.raw().digest()),
            reason: format!(
                "its manifest has {} layers but its config {} diff_ids",
                img_layers.len(),
                img_diff_ids.len()
            ),
        });
    }
    let img_annotations: BTreeMap<String, String> = image
        .get("annotations")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();

    // Where the base ends in the image, checked.
    let (n, old_history_len, old_config, old_digest) = match input.old_base {
        OldBase::Image { manifest, config } => {
            let old = manifest_value(manifest)?;
            let old_layers = layers_of(&old);
            let old_diff_ids = config.diff_ids()?;
            if old_layers.len() > img_layers.len() {
                return Err(Error::InvalidChange {
                    reason: format!(
                        "the old base {} has {} layers, more than the image's {}: the image is not \
                         built on it",
                        manifest.raw().digest(),
                        old_layers.len(),
                        img_layers.len()
                    ),
                });
            }
            for (i, (ol, od)) in old_layers.iter().zip(&old_diff_ids).enumerate() {
                let same_blob = str_of(ol, "digest") == str_of(&img_layers[i], "digest");
                if !same_blob && *od != img_diff_ids[i] {
                    return Err(Error::InvalidChange {
                        reason: format!(
                            "layer {} of the image ({}, diff_id {}) is not layer {} of the old base \
                             ({}, diff_id {}): the image is not built on {}",
                            i + 1,
                            str_of(&img_layers[i], "digest"),
                            img_diff_ids[i],
                            i + 1,
                            str_of(ol, "digest"),
                            od,
                            manifest.raw().digest()
                        ),
                    });
                }
            }
            (
                old_layers.len(),
                Some(history(config).len()),
                Some(config),
                Some(manifest.raw().digest().to_string()),
            )
        }
        OldBase::Recorded => {
            let n: usize = img_annotations
                .get(annotations::BASE_LAYERS)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::InvalidChange {
                    reason: format!(
                        "image {} records no base (no {} annotation): name the old base",
                        input.image.raw().digest(),
                        annotations::BASE_LAYERS
                    ),
                })?;
            if n > img_layers.len() {
                return Err(Error::InvalidChange {
                    reason: format!(
                        "image {} says {n} of its layers are its base's, but it has {}",
                        input.image.raw().digest(),
                        img_layers.len()
                    ),
                });
            }
            if let Some(top) = img_annotations.get(annotations::BASE_TOP_DIFF_ID)
                && n > 0
                && img_diff_ids[n - 1].to_string() != *top
            {
                return Err(Error::InvalidChange {
                    reason: format!(
                        "layer {n} of image {} has diff_id {}, not the base top {top} it records",
                        input.image.raw().digest(),
                        img_diff_ids[n - 1]
                    ),
                });
            }
            let hist = img_annotations
                .get(annotations::BASE_HISTORY)
                .and_then(|v| v.parse().ok());
            (
                n,
                hist,
                None,
                img_annotations.get(annotations::BASE_DIGEST).cloned(),
            )
        }
    };

    check_platform(input.image_config, input.new_base_config)?;

    let new_digest = input.new_base.raw().digest().to_string();
    let own = plan_layers(&img_layers[n..], &img_diff_ids[n..]);
    if old_digest.as_deref() == Some(new_digest.as_str()) {
        return Ok(Rebased {
            config: input.image_config.raw().clone(),
            manifest: input.image.raw().clone(),
            plan: RebasePlan {
                already_current: true,
                removed_layers: Vec::new(),
                added_layers: Vec::new(),
                own_layers: own,
                config_changes: Vec::new(),
            },
        });
    }

    let family = input.image.family();
    let new_base = manifest_value(input.new_base)?;
    let new_layers = layers_of(&new_base)
        .iter()
        .map(|l| convert_layer(l, family))
        .collect::<Result<Vec<_>>>()?;
    let new_diff_ids = input.new_base_config.diff_ids()?;
    if new_layers.len() != new_diff_ids.len() {
        return Err(Error::InvalidDocument {
            what: format!("new base {new_digest}"),
            reason: "its manifest and config list different numbers of layers".into(),
        });
    }

    // History: the new base's, then the image's own entries.
    let img_history = history(input.image_config);
    let own_history = own_history(&img_history, img_layers.len(), n, old_history_len);
    let mut new_history = history(input.new_base_config);
    new_history.extend(own_history);

    // Config.
    let img_cfg = input.image_config.value();
    let new_cfg = input.new_base_config.value();
    let mut cfg = match (&input.config, old_config) {
        (ConfigMode::ThreeWay, Some(old)) => three_way(img_cfg, old.value(), new_cfg),
        (ConfigMode::ThreeWay, None) => keep_adding_env(img_cfg, new_cfg),
        (ConfigMode::Keep, _) => img_cfg.clone(),
        (ConfigMode::Derive(changes), _) => {
            // What building the recipe on the new base gives: the new base's config (all of it,
            // its Docker-only fields too) with the changes; rootfs, history and created follow.
            let mut c = new_cfg.clone();
            let mut derived = serde_json::Map::new();
            derived.insert("config".into(), Value::Object(runtime(new_cfg)));
            crate::config::apply_changes(&mut derived, changes)?;
            c.insert(
                "config".into(),
                derived.remove("config").unwrap_or(Value::Null),
            );
            c
        }
    };
    for key in ["os", "architecture", "variant", "os.version", "os.features"] {
        match new_cfg.get(key) {
            Some(v) => {
                cfg.insert(key.to_owned(), v.clone());
            }
            None => {
                cfg.remove(key);
            }
        }
    }
    let mut diff_ids: Vec<Value> = new_diff_ids.iter().map(|d| d.to_string().into()).collect();
    diff_ids.extend(img_diff_ids[n..].iter().map(|d| Value::from(d.to_string())));
    cfg.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    cfg.insert("history".into(), Value::Array(new_history));
    if let Some(c) = input.created {
        cfg.insert("created".into(), rfc3339(c).into());
    }
    let config_changes = changes(img_cfg, &cfg);
    let config_type = input.image.parsed().config().media_type().to_string();
    let config_raw = RawDocument::canonical(&Value::Object(cfg), config_type.clone())?;

    // Manifest: the image's own, with new config, layers and base annotations.
    let mut manifest = image.clone();
    manifest.insert(
        "config".into(),
        json!({"mediaType": config_type, "digest": config_raw.digest().to_string(), "size": config_raw.size()}),
    );
    let mut layers = new_layers.clone();
    layers.extend(img_layers[n..].iter().cloned());
    manifest.insert("layers".into(), Value::Array(layers));
    let mut ann = img_annotations;
    if let Some(name) = input.new_base_name {
        ann.insert(
            annotations::BASE_NAME.into(),
            crate::reference::base_name(name),
        );
    }
    ann.insert(annotations::BASE_DIGEST.into(), new_digest);
    ann.insert(
        annotations::BASE_LAYERS.into(),
        new_layers.len().to_string(),
    );
    match new_diff_ids.last() {
        Some(top) => ann.insert(annotations::BASE_TOP_DIFF_ID.into(), top.to_string()),
        None => ann.remove(annotations::BASE_TOP_DIFF_ID),
    };
    ann.insert(
        annotations::BASE_HISTORY.into(),
        history(input.new_base_config).len().to_string(),
    );
    manifest.insert("annotations".into(), json!(ann));
    let manifest_raw =
        RawDocument::canonical(&Value::Object(manifest), input.image.raw().media_type())?;

    let old_layers_plan = plan_layers(&img_layers[..n], &img_diff_ids[..n]);
    Ok(Rebased {
        config: config_raw,
        manifest: manifest_raw,
        plan: RebasePlan {
            already_current: false,
            removed_layers: old_layers_plan,
            added_layers: plan_layers(&new_layers, &new_diff_ids),
            own_layers: own,
            config_changes,
        },
    })
}

/// The image's own history entries. When its history lines up with its layers (as many non-empty
/// entries as layers), they are the entries after the base's: the old base's entry count when
/// known, else everything after the `n`-th non-empty entry. Otherwise (no history, a short or
/// squashed one) each own layer gets an entry of its own, so no layer is ever left without one.
fn own_history(hist: &[Value], layers: usize, n: usize, old_len: Option<usize>) -> Vec<Value> {
    let non_empty = hist.iter().filter(|h| !is_empty_layer(h)).count();
    if non_empty == layers {
        let by_count = old_len.filter(|&len| {
            len <= hist.len() && hist[..len].iter().filter(|h| !is_empty_layer(h)).count() == n
        });
        let split = by_count.unwrap_or_else(|| {
            let mut seen = 0;
            let mut at = 0;
            for (i, h) in hist.iter().enumerate() {
                if seen == n {
                    break;
                }
                if !is_empty_layer(h) {
                    seen += 1;
                }
                at = i + 1;
            }
            at
        });
        return hist[split..].to_vec();
    }
    (n..layers)
        .map(|i| {
            json!({
                "created_by": format!("ociup rebase: layer {} of the image (its history did not describe it)", i + 1),
                "comment": "ociup",
            })
        })
        .collect()
}

fn check_platform(image: &Config, new_base: &Config) -> Result<()> {
    for key in ["os", "architecture"] {
        let (a, b) = (image.str_field(key), new_base.str_field(key));
        if a != b {
            return Err(Error::InvalidChange {
                reason: format!(
                    "platform mismatch: the image's {key} is {} and the new base's {}",
                    a.unwrap_or("unset"),
                    b.unwrap_or("unset")
                ),
            });
        }
    }
    if let (Some(a), Some(b)) = (image.str_field("variant"), new_base.str_field("variant"))
        && a != b
    {
        return Err(Error::InvalidChange {
            reason: format!("platform mismatch: the image's variant is {a} and the new base's {b}"),
        });
    }
    Ok(())
}

/// A base layer descriptor in the image's media type family (same bytes, other name).
fn convert_layer(layer: &Value, family: Family) -> Result<Value> {
    let mt = str_of(layer, "mediaType");
    let converted = match (family, mt) {
        (Family::Docker, media_type::OCI_LAYER_GZIP) => media_type::DOCKER_LAYER_GZIP,
        (Family::Docker, media_type::OCI_LAYER_TAR) => media_type::DOCKER_LAYER_TAR,
        (Family::Docker, "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip") => {
            media_type::DOCKER_LAYER_FOREIGN_GZIP
        }
        (Family::Docker, m) if m.starts_with("application/vnd.oci.") => {
            return Err(Error::UnsupportedMediaType {
                media_type: m.to_owned(),
                context: "a layer of a Docker schema2 image (Docker media types have no \
                          equivalent; convert the image to OCI first)"
                    .into(),
            });
        }
        (Family::Oci, media_type::DOCKER_LAYER_GZIP) => media_type::OCI_LAYER_GZIP,
        (Family::Oci, media_type::DOCKER_LAYER_TAR) => media_type::OCI_LAYER_TAR,
        (Family::Oci, media_type::DOCKER_LAYER_FOREIGN_GZIP) => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        _ => return Ok(layer.clone()),
    };
    let mut l = layer.clone();
    if let Value::Object(o) = &mut l {
        o.insert("mediaType".into(), converted.into());
    }
    Ok(l)
}

fn runtime(c: &Map<String, Value>) -> Map<String, Value> {
    c.get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Three-way merge of the runtime config (`config`): what the image changed relative to the old
/// base wins, the rest follows the new base. Top-level fields other than the platform are the
/// image's.
fn three_way(
    img: &Map<String, Value>,
    old: &Map<String, Value>,
    new: &Map<String, Value>,
) -> Map<String, Value> {
    let (ri, ro, rn) = (runtime(img), runtime(old), runtime(new));
    let mut keys: Vec<&String> = ri.keys().chain(ro.keys()).chain(rn.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Map::new();
    for k in keys {
        let merged = match k.as_str() {
            "Env" => Some(merge_env(ri.get(k), ro.get(k), rn.get(k))),
            "Labels" | "ExposedPorts" | "Volumes" => merge_map(ri.get(k), ro.get(k), rn.get(k)),
            _ if ri.get(k) == ro.get(k) => rn.get(k).cloned(),
            _ => ri.get(k).cloned(),
        };
        if let Some(v) = merged.filter(|v| !v.is_null()) {
            out.insert(k.clone(), v);
        }
    }
    let mut cfg = img.clone();
    cfg.insert("config".into(), Value::Object(out));
    cfg
}

/// Without the old base: the image's config, plus environment variables of the new base that
/// the image does not set (a new `JAVA_HOME` arrives; the image's `PATH` stays).
fn keep_adding_env(img: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut cfg = img.clone();
    let mut rc = runtime(img);
    let mut env = env_pairs(rc.get("Env"));
    for (k, v) in env_pairs(runtime(new).get("Env")) {
        if !env.iter().any(|(ek, _)| *ek == k) {
            env.push((k, v));
        }
    }
    if !env.is_empty() {
        rc.insert("Env".into(), env_value(&env));
    }
    cfg.insert("config".into(), Value::Object(rc));
    cfg
}

fn env_pairs(v: Option<&Value>) -> Vec<(String, Option<String>)> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| match s.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (s.to_owned(), None),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(pairs: &[(String, Option<String>)]) -> Value {
    Value::Array(
        pairs
            .iter()
            .map(|(k, v)| match v {
                Some(v) => Value::String(format!("{k}={v}")),
                None => Value::String(k.clone()),
            })
            .collect(),
    )
}

/// `Env` by key: the new base's list, with what the image set or changed (relative to the old
/// base) put in place, and what the image removed taken out.
fn merge_env(img: Option<&Value>, old: Option<&Value>, new: Option<&Value>) -> Value {
    let (img, old) = (env_pairs(img), env_pairs(old));
    let mut out = env_pairs(new);
    for (k, v) in &img {
        let unchanged = old.iter().any(|(ok, ov)| ok == k && ov == v);
        if unchanged {
            continue;
        }
        match out.iter_mut().find(|(ok, _)| ok == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out.retain(|(k, _)| {
        let removed = old.iter().any(|(ok, _)| ok == k) && !img.iter().any(|(ik, _)| ik == k);
        !removed
    });
    env_value(&out)
}

/// An object field (`Labels`, ...) by key, as [`merge_env`].
fn merge_map(img: Option<&Value>, old: Option<&Value>, new: Option<&Value>) -> Option<Value> {
    let obj = |v: Option<&Value>| v.and_then(Value::as_object).cloned().unwrap_or_default();
    let (img, old) = (obj(img), obj(old));
    let mut out = obj(new);
    for (k, v) in &img {
        if old.get(k) != Some(v) {
            out.insert(k.clone(), v.clone());
        }
    }
    for k in old.keys() {
        if !img.contains_key(k) {
            out.remove(k);
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// The fields that differ between two configs, for the plan (history and rootfs left out).
fn changes(before: &Map<String, Value>, after: &Map<String, Value>) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        if matches!(k.as_str(), "history" | "rootfs") {
            continue;
        }
        if k == "config" {
            let (rb, ra) = (runtime(before), runtime(after));
            let mut inner: Vec<&String> = rb.keys().chain(ra.keys()).collect();
            inner.sort();
            inner.dedup();
            for ik in inner {
                if rb.get(ik) != ra.get(ik) {
                    out.push(FieldChange {
                        field: format!("config.{ik}"),
                        old: rb.get(ik).cloned().unwrap_or(Value::Null),
                        new: ra.get(ik).cloned().unwrap_or(Value::Null),
                    });
                }
            }
        } else if before.get(k) != after.get(k) {
            out.push(FieldChange {
                field: k.clone(),
                old: before.get(k).cloned().unwrap_or(Value::Null),
                new: after.get(k).cloned().unwrap_or(Value::Null),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Layer;
    use crate::media_type::Compression;
    use crate::mutate::{Base, NewLayer, append};

    fn layer(name: &str) -> NewLayer {
        NewLayer {
            layer: Layer {
                compression: Compression::Gzip,
                digest: Digest::sha256(format!("blob {name}").as_bytes()),
                diff_id: Digest::sha256(format!("tar {name}").as_bytes()),
                size: 100 + name.len() as u64,
            },
            created_by: format!("layer {name}"),
        }
    }

    struct Img {
        manifest: Manifest,
        config: Config,
    }

    fn img(a: crate::mutate::Appended) -> Img {
        Img {
            manifest: Manifest::parse(a.manifest).unwrap(),
            config: Config::parse(a.config).unwrap(),
        }
    }

    fn env(k: &str, v: &str) -> ConfigChange {
        ConfigChange::Env(k.into(), v.into())
    }

    fn base(version: &str, arch: &str, changes: &[ConfigChange]) -> Img {
        let layers: Vec<NewLayer> = ["etc", "bin", "share"]
            .iter()
            .map(|l| layer(&format!("{version}-{l}")))
            .collect();
        let scratch = Base::Scratch {
            os: "linux",
            architecture: arch,
            variant: None,
        };
        img(append(scratch, &layers, changes, &BTreeMap::new(), 0).unwrap())
    }

    fn on(b: &Img, own: &[&str], changes: &[ConfigChange]) -> Img {
        let layers: Vec<NewLayer> = own.iter().map(|l| layer(l)).collect();
        let base = Base::Image {
            manifest: &b.manifest,
            config: &b.config,
            name: Some("reg/base:latest"),
        };
        img(append(base, &layers, changes, &BTreeMap::new(), 0).unwrap())
    }

    fn v1() -> Img {
        base(
            "v1",
            "amd64",
            &[
                env("PATH", "/usr/bin:/bin"),
                env("BASE", "1"),
                ConfigChange::Cmd(vec!["sh".into()]),
            ],
        )
    }

    fn v2() -> Img {
        base(
            "v2",
            "amd64",
            &[
                env("PATH", "/opt/base/bin:/usr/bin:/bin"),
                env("BASE", "2"),
                env("JAVA_HOME", "/opt/java"),
                ConfigChange::Cmd(vec!["bash".into()]),
            ],
        )
    }

    fn run(image: &Img, old: OldBase<'_>, new: &Img, mode: ConfigMode) -> Result<Rebased> {
        rebase(&RebaseInput {
            image: &image.manifest,
            image_config: &image.config,
            old_base: old,
            new_base: &new.manifest,
            new_base_config: &new.config,
            new_base_name: Some("reg/base:latest"),
            config: mode,
            created: Some(0),
        })
    }

    fn old(b: &Img) -> OldBase<'_> {
        OldBase::Image {
            manifest: &b.manifest,
            config: &b.config,
        }
    }

    fn parsed(r: &Rebased) -> (Map<String, Value>, Map<String, Value>) {
        let m = serde_json::from_slice(r.manifest.bytes()).unwrap();
        let c = serde_json::from_slice(r.config.bytes()).unwrap();
        (m, c)
    }

    #[test]
    fn own_layers_go_on_the_new_base_and_env_merges_by_key() {
        let (b1, b2) = (v1(), v2());
        let image = on(&b1, &["app", "data"], &[env("APP", "1")]);
        let r = run(&image, old(&b1), &b2, ConfigMode::ThreeWay).unwrap();
        let (m, c) = parsed(&r);
        let digests: Vec<&str> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| str_of(l, "digest"))
            .collect();
        let want: Vec<String> = ["v2-etc", "v2-bin", "v2-share", "app", "data"]
            .iter()
            .map(|n| Digest::sha256(format!("blob {n}").as_bytes()).to_string())
            .collect();
        assert_eq!(digests, want);
        assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 5);
        assert_eq!(
            c["config"]["Env"],
            json!([
                "PATH=/opt/base/bin:/usr/bin:/bin",
                "BASE=2",
                "JAVA_HOME=/opt/java",
                "APP=1"
            ])
        );
        assert_eq!(
            c["config"]["Cmd"],
            json!(["bash"]),
            "unchanged by the image: follows the new base"
        );
        let h = c["history"].as_array().unwrap();
        assert_eq!(
            h.iter().filter(|e| !is_empty_layer(e)).count(),
            5,
            "one entry per layer"
        );
        assert_eq!(h.last().unwrap()["created_by"], "layer data");
        let ann = &m["annotations"];
        assert_eq!(
            ann[annotations::BASE_DIGEST],
            b2.manifest.raw().digest().to_string()
        );
        assert_eq!(ann[annotations::BASE_LAYERS], "3");
        assert_eq!(r.plan.removed_layers.len(), 3);
        assert_eq!(r.plan.added_layers.len(), 3);
        assert_eq!(r.plan.own_layers.len(), 2);
        assert!(
            r.plan
                .config_changes
                .iter()
                .any(|f| f.field == "config.Env")
        );
        // Deterministic: the same inputs, the same bytes.
        let again = run(&image, old(&b1), &b2, ConfigMode::ThreeWay).unwrap();
        assert_eq!(again.manifest.bytes(), r.manifest.bytes());
    }

    #[test]
    fn fields_the_image_changed_keep_its_value() {
        let (b1, b2) = (v1(), v2());
        let image = on(
            &b1,
            &["app"],
            &[
                env("PATH", "/app/bin:/usr/bin:/bin"),
                ConfigChange::Cmd(vec!["app".into()]),
            ],
        );
        let (_, c) = parsed(&run(&image, old(&b1), &b2, ConfigMode::ThreeWay).unwrap());
        assert_eq!(
            c["config"]["Env"],
            json!([
                "PATH=/app/bin:/usr/bin:/bin",
                "BASE=2",
                "JAVA_HOME=/opt/java"
            ])
        );
        assert_eq!(c["config"]["Cmd"], json!(["app"]));
        // Keep mode: the image's config as it was.
        let (_, k) = parsed(&run(&image, old(&b1), &b2, ConfigMode::Keep).unwrap());
        assert_eq!(
            k["config"]["Env"],
            json!(["PATH=/app/bin:/usr/bin:/bin", "BASE=1"])
        );
    }

    #[test]
    fn a_base_that_is_not_a_prefix_names_the_first_differing_layer() {
        let (b1, b2) = (v1(), v2());
        let image = on(&b1, &["app"], &[]);
        let err = run(&image, old(&b2), &b2, ConfigMode::ThreeWay)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layer 1 of the image") && err.contains("not built on"),
            "{err}"
        );
    }

    #[test]
    fn platforms_must_match() {
        let b1 = v1();
        let arm = base("v2", "arm64", &[]);
        let image = on(&b1, &["app"], &[]);
        let err = run(&image, old(&b1), &arm, ConfigMode::ThreeWay)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("platform mismatch") && err.contains("arm64"),
            "{err}"
        );
    }

    #[test]
    fn empty_layer_entries_and_missing_history() {
        let (b1, b2) = (v1(), v2());
        // A config-only change (empty_layer entry) then a layer.
        let step = on(&b1, &[], &[env("MODE", "x")]);
        let image = on(&step, &["app"], &[]);
        let r = run(
            &image,
            OldBase::Image {
                manifest: &b1.manifest,
                config: &b1.config,
            },
            &b2,
            ConfigMode::ThreeWay,
        )
        .unwrap();
        let (_, c) = parsed(&r);
        let h = c["history"].as_array().unwrap();
        let own: Vec<&Value> = h[history(&b2.config).len()..].iter().collect();
        assert_eq!(own.len(), 2);
        assert_eq!(own[0]["empty_layer"], true);
        assert_eq!(own[1]["created_by"], "layer app");

        // No history at all: every own layer still gets an entry and none is dropped.
        let mut bare = image.config.value().clone();
        bare.remove("history");
        let bare = Config::parse(
            RawDocument::canonical(&Value::Object(bare), media_type::OCI_CONFIG).unwrap(),
        )
        .unwrap();
        let image2 = Img {
            manifest: image.manifest.clone(),
            config: bare,
        };
        let r = run(&image2, old(&b1), &b2, ConfigMode::ThreeWay).unwrap();
        let (m, c) = parsed(&r);
        assert_eq!(m["layers"].as_array().unwrap().len(), 4);
        let h = c["history"].as_array().unwrap();
        assert_eq!(h.iter().filter(|e| !is_empty_layer(e)).count(), 4);
    }

    #[test]
    fn recorded_base_works_without_the_old_base() {
        let (b1, b2) = (v1(), v2());
        let image = on(&b1, &["app"], &[env("APP", "1")]);
        let r = run(&image, OldBase::Recorded, &b2, ConfigMode::ThreeWay).unwrap();
        let (m, c) = parsed(&r);
        assert_eq!(m["layers"].as_array().unwrap().len(), 4);
        // Without the old base, the image's values stay and new keys arrive.
        assert_eq!(
            c["config"]["Env"],
            json!([
                "PATH=/usr/bin:/bin",
                "BASE=1",
                "APP=1",
                "JAVA_HOME=/opt/java"
            ])
        );
        // Same result layers as with the old base at hand.
        let full = run(&image, old(&b1), &b2, ConfigMode::ThreeWay).unwrap();
        let (fm, _) = parsed(&full);
        assert_eq!(fm["layers"], m["layers"]);

        let bare = base("v1", "amd64", &[]);
        let err = run(&bare, OldBase::Recorded, &b2, ConfigMode::ThreeWay)
            .unwrap_err()
            .to_string();
        assert!(err.contains("records no base"), "{err}");
    }

    #[test]
    fn already_on_the_new_base_changes_nothing() {
        let b1 = v1();
        let image = on(&b1, &["app"], &[]);
        let r = run(&image, old(&b1), &b1, ConfigMode::ThreeWay).unwrap();
        assert!(r.plan.already_current);
        assert_eq!(r.manifest.bytes(), image.manifest.raw().bytes());
        let r = run(&image, OldBase::Recorded, &b1, ConfigMode::ThreeWay).unwrap();
        assert!(r.plan.already_current);
    }

    #[test]
    fn docker_images_stay_docker_and_unknown_fields_survive() {
        let (b1, b2) = (v1(), v2());
        let image = on(&b1, &["app"], &[]);
        // The image as Docker schema2, with fields no type models.
        let mut m: Map<String, Value> =
            serde_json::from_slice(image.manifest.raw().bytes()).unwrap();
        let mut c = image.config.value().clone();
        c.insert("x-vendor".into(), json!({"kept": true}));
        c["config"]
            .as_object_mut()
            .unwrap()
            .insert("Healthcheck".into(), json!({"Test": ["CMD", "true"]}));
        let craw = RawDocument::canonical(&Value::Object(c), media_type::DOCKER_CONFIG).unwrap();
        m.insert("mediaType".into(), media_type::DOCKER_MANIFEST.into());
        m.insert("config".into(), json!({"mediaType": media_type::DOCKER_CONFIG, "digest": craw.digest().to_string(), "size": craw.size()}));
        for l in m["layers"].as_array_mut().unwrap() {
            l["mediaType"] = media_type::DOCKER_LAYER_GZIP.into();
        }
        let docker = Img {
            manifest: Manifest::parse(
                RawDocument::canonical(&Value::Object(m), media_type::DOCKER_MANIFEST).unwrap(),
            )
            .unwrap(),
            config: Config::parse(craw).unwrap(),
        };
        let r = run(&docker, old(&b1), &b2, ConfigMode::ThreeWay).unwrap();
        let (m, c) = parsed(&r);
        assert_eq!(m["mediaType"], media_type::DOCKER_MANIFEST);
        assert_eq!(m["config"]["mediaType"], media_type::DOCKER_CONFIG);
        for l in m["layers"].as_array().unwrap() {
            assert_eq!(
                l["mediaType"],
                media_type::DOCKER_LAYER_GZIP,
                "no OCI descriptor in a Docker manifest"
            );
        }
        assert_eq!(c["x-vendor"], json!({"kept": true}));
        assert_eq!(
            c["config"]["Healthcheck"],
            json!({"Test": ["CMD", "true"]}),
            "set by the image: kept"
        );
    }
}

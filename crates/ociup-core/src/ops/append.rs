//! Append to any base a reference names: a single image, one platform of an index, or every
//! (or several) platforms of an index at once, giving a new index.

use std::path::Path;

use serde_json::{Map, Value};

use super::{
    AppendBase, AppendOutcome, AppendRequest, Image, append_image, build_layers,
    check_before_writing, copy_base_blobs, find_platform, image_from_document, store_appended,
};
use crate::digest::Digest;
use crate::document::{Document, Index, Manifest, RawDocument};
use crate::error::{Error, Result};
use crate::layer::Layer;
use crate::media_type::{self, DocumentKind};
use crate::mutate::{self, Base, IndexEntry, annotations};
use crate::reference::PlatformSpec;
use crate::store::{ManifestRef, Store, check_document_size};

/// The most platform manifests of one index that an append builds on (real indexes list a
/// handful; Docker Hub's largest about a dozen). Past it the index is refused before its
/// manifests are read.
pub const MAX_PLATFORMS: usize = 128;

/// Which platforms of an index base [`append_to_base`] builds. A single image is appended to as
/// it is, whatever the choice (except [`PlatformChoice::Several`], which needs an index).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PlatformChoice {
    /// Every platform of an index, giving a new index; attestation manifests are left out.
    #[default]
    All,
    /// One platform of an index (found in nested indexes too), giving a single manifest.
    One(PlatformSpec),
    /// These platforms of an index, giving a new index of them in the base index's order. A
    /// platform without variant names every variant of it; each must match at least one entry.
    Several(Vec<PlatformSpec>),
}

/// The base of [`append_to_base`]: a document as [`super::load_document`] reads it, with the
/// store it is in and the name the user gave it (recorded as `org.opencontainers.image.base.name`).
#[derive(Debug)]
pub struct BaseDocument<'a, S> {
    /// The store holding the base and its blobs.
    pub store: &'a S,
    /// The base: a manifest or an index.
    pub document: Document,
    /// How the user named the base.
    pub name: &'a str,
}

/// Where [`append_to_base`] writes, and which platforms it builds.
#[derive(Clone, Debug)]
pub struct AppendOptions<'a> {
    /// The tag of the result (of the index, for an index), or `None` for untagged.
    pub tag: Option<&'a str>,
    /// A directory for temporary files (the layers are built there before they are stored).
    pub staging: &'a Path,
    /// Which platforms of an index base to build.
    pub platforms: PlatformChoice,
}

/// One platform of an index [`append_to_base`] made.
#[derive(Clone, Debug)]
pub struct PlatformAppend {
    /// The platform object of the index entry, as the base index has it.
    pub platform: Map<String, Value>,
    /// The new manifest.
    pub manifest: RawDocument,
    /// The new config.
    pub config: RawDocument,
    /// The base manifest it sits on.
    pub base: Digest,
}

impl PlatformAppend {
    /// `os/architecture[/variant]` of this platform (with its `os.version` when it has one).
    pub fn name(&self) -> String {
        mutate::platform_name(&self.platform)
    }
}

/// What [`append_to_base`] stored for a multi-platform base.
#[derive(Clone, Debug)]
pub struct IndexAppendOutcome {
    /// The new index.
    pub index: RawDocument,
    /// Per platform, in the index's order.
    pub platforms: Vec<PlatformAppend>,
    /// The layers built (once, the same on every platform).
    pub layers: Vec<Layer>,
    /// Attestation manifests of the base index left out (they attest the base, not the result).
    pub dropped_attestations: Vec<Digest>,
}

/// What [`append_to_base`] stored: one image, or an index of images.
#[derive(Clone, Debug)]
pub enum AppendResult {
    /// A single manifest (the base was one, or one platform of an index was chosen).
    Image(AppendOutcome),
    /// A new index, one manifest per platform.
    Index(IndexAppendOutcome),
}

impl AppendResult {
    /// The document the tag points to: the manifest or the index.
    pub fn document(&self) -> &RawDocument {
        match self {
            AppendResult::Image(o) => &o.manifest,
            AppendResult::Index(o) => &o.index,
        }
    }

    /// The layers built.
    pub fn layers(&self) -> &[Layer] {
        match self {
            AppendResult::Image(o) => &o.layers,
            AppendResult::Index(o) => &o.layers,
        }
    }
}

/// Attestations are manifests for platform `unknown/unknown` or typed as attestations by
/// BuildKit (provenance and SBOMs of the base).
pub(crate) fn is_attestation(entry: &Value) -> bool {
    let p = &entry["platform"];
    (p["os"] == "unknown" && p["architecture"] == "unknown")
        || entry["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
}

fn matches(platform: &Map<String, Value>, wanted: &PlatformSpec) -> bool {
    platform.get("os").and_then(Value::as_str) == Some(wanted.os.as_str())
        && platform.get("architecture").and_then(Value::as_str)
            == Some(wanted.architecture.as_str())
        && (wanted.variant.is_none()
            || platform.get("variant").and_then(Value::as_str) == wanted.variant.as_deref())
}

/// Builds the request's layers once and appends them, with its config changes and annotations,
/// to `base`: to the image itself, to one platform of an index, or to every chosen platform of
/// an index, giving a new index of the base's family whose entries keep the base index's
/// platform objects (os, architecture, variant, os.version, os.features) and order. Each
/// platform's config is derived from that platform's own base config; the layers are the same
/// bytes on every platform. Attestation manifests of the base index (`unknown/unknown`, or
/// annotated `vnd.docker.reference.type: attestation-manifest`) are not carried over: they
/// attest the base. The index records the base index as its `base.name` and `base.digest`, and
/// the request's annotations; each manifest records its own platform's base manifest.
///
/// Everything is checked before anything is written; then base blobs the destination lacks,
/// the new layers, each platform's config and manifest (untagged), and the index last, tagged
/// `options.tag`.
///
/// # Errors
/// [`Error::InvalidChange`] for a platform the index lacks, for [`PlatformChoice::Several`] on
/// a single image, for an index that nests indexes (choose one platform) or lists two
/// manifests of one platform; [`Error::InvalidDocument`] for an index that mixes the Docker and
/// OCI families or a document larger than ociup reads back; store and layer build errors.
///
/// # Example
///
/// A two-platform base index, then one file appended to both platforms:
///
/// ```
/// use ociup_core::layer::{LayerBuilder, LayerOptions};
/// use ociup_core::layout::OciLayout;
/// use ociup_core::media_type::Family;
/// use ociup_core::mutate::new_index;
/// use ociup_core::ops::{self, AppendBase, AppendOptions, AppendRequest, AppendResult};
/// use ociup_core::ops::{BaseDocument, PlatformChoice, append_to_base};
/// use ociup_core::reference::PlatformSpec;
/// use ociup_core::store::{ManifestRef, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ociup_core::Result<()> {
/// let dir = tempfile::tempdir().map_err(|e| ociup_core::Error::io("a temporary directory", e))?;
/// let layout = OciLayout::open_or_create(dir.path().join("images"))?;
/// let request = |path: &str| -> ociup_core::Result<AppendRequest> {
///     let mut layer = LayerBuilder::new(LayerOptions::default());
///     layer.add_bytes(path, b"x\n".to_vec(), 0o644)?;
///     Ok(AppendRequest { layers: vec![(layer, path.into())], ..AppendRequest::default() })
/// };
/// let (amd64, arm64): (PlatformSpec, PlatformSpec) =
///     ("linux/amd64".parse()?, "linux/arm64".parse()?);
/// let mut children = Vec::new();
/// for p in [&amd64, &arm64] {
///     let made = ops::append_image::<OciLayout, _>(
///         AppendBase::Scratch(p), &layout, None, request("/etc/base")?, dir.path(),
///     )
///     .await?;
///     children.push(made.manifest);
/// }
/// let base = new_index(Family::Oci, &[(&children[0], &amd64), (&children[1], &arm64)])?;
/// layout.put_manifest(&base, Some("base")).await?;
///
/// let document = ops::load_document(&layout, &ManifestRef::Tag("base".into())).await?;
/// let made = append_to_base(
///     BaseDocument { store: &layout, document, name: "oci:images:base" },
///     &layout,
///     request("/opt/app")?,
///     AppendOptions { tag: Some("app"), staging: dir.path(), platforms: PlatformChoice::All },
/// )
/// .await?;
/// let AppendResult::Index(index) = made else { panic!("an index base gives an index") };
/// assert_eq!(index.platforms.len(), 2);
/// assert_eq!(index.platforms[1].name(), "linux/arm64");
/// let tagged = layout.resolve_tag("app").await?;
/// assert_eq!(tagged.digest().to_string(), index.index.digest().to_string());
/// # Ok(())
/// # }
/// ```
pub async fn append_to_base<S: Store, D: Store>(
    base: BaseDocument<'_, S>,
    dest: &D,
    request: AppendRequest,
    options: AppendOptions<'_>,
) -> Result<AppendResult> {
    let BaseDocument {
        store,
        document,
        name,
    } = base;
    let index = match (document, &options.platforms) {
        (Document::Manifest(_), PlatformChoice::Several(_)) => {
            return Err(Error::InvalidChange {
                reason: format!(
                    "{name} is a single image, not a multi-platform index: there are no \
                     platforms to choose from"
                ),
            });
        }
        (Document::Manifest(m), _) => {
            let image = image_from_document(store, Document::Manifest(m), None).await?;
            return one(store, &image, name, dest, request, &options).await;
        }
        (Document::Index(index), PlatformChoice::One(p)) => {
            let manifest = find_platform(store, index, p).await?;
            let image = image_from_document(store, Document::Manifest(manifest), None).await?;
            return one(store, &image, name, dest, request, &options).await;
        }
        (Document::Index(index), _) => index,
    };
    append_to_index(store, &index, name, dest, request, &options)
        .await
        .map(AppendResult::Index)
}

async fn one<S: Store, D: Store>(
    store: &S,
    image: &Image,
    name: &str,
    dest: &D,
    request: AppendRequest,
    options: &AppendOptions<'_>,
) -> Result<AppendResult> {
    append_image(
        AppendBase::Image { store, image, name },
        dest,
        options.tag,
        request,
        options.staging,
    )
    .await
    .map(AppendResult::Image)
}

/// `os/architecture[/variant]` of a platform object, as `--platform` names it.
pub(crate) fn spec_name(p: &Map<String, Value>) -> String {
    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
    let mut name = format!("{}/{}", s("os"), s("architecture"));
    if let Some(v) = p.get("variant").and_then(Value::as_str) {
        name = format!("{name}/{v}");
    }
    name
}

/// The platform manifests of `index` as [`append_to_base`] builds on them, in its order: each
/// entry's platform object (read from the manifest's config when the entry has none, as append
/// does) and its digest. Attestations are left out; a nested index, an entry without a valid
/// digest, or a manifest listed twice is an error.
///
/// # Errors
/// Those, and store errors reading a config.
pub(crate) async fn platform_entries<S: Store>(
    store: &S,
    index: &Index,
) -> Result<Vec<(Map<String, Value>, Digest)>> {
    let what = format!("index {}", index.raw().digest());
    let value: Value =
        serde_json::from_slice(index.raw().bytes()).map_err(|source| Error::MalformedDocument {
            what: what.clone(),
            source,
        })?;
    let mut out: Vec<(Map<String, Value>, Digest)> = Vec::new();
    for entry in value["manifests"].as_array().into_iter().flatten() {
        let digest: Digest = entry["digest"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|_| Error::InvalidDocument {
                what: what.clone(),
                reason: format!("an entry has no valid digest: {}", entry["digest"]),
            })?;
        if is_attestation(entry) {
            continue;
        }
        let media = entry["mediaType"].as_str().unwrap_or_default();
        if matches!(
            media_type::document_kind(media),
            Ok((DocumentKind::Index, _))
        ) {
            return Err(Error::InvalidDocument {
                what,
                reason: format!("nests index {digest}"),
            });
        }
        if out.iter().any(|(_, d)| *d == digest) {
            return Err(Error::InvalidDocument {
                what,
                reason: format!("lists manifest {digest} more than once"),
            });
        }
        if out.len() >= MAX_PLATFORMS {
            return Err(Error::InvalidDocument {
                what,
                reason: format!("lists more than {MAX_PLATFORMS} platform manifests"),
            });
        }
        let platform = match entry["platform"].as_object() {
            Some(p) => p.clone(),
            None => mutate::platform_of_config(&read_child(store, index, &digest).await?.config),
        };
        out.push((platform, digest));
    }
    Ok(out)
}

/// The platforms of `index` to build: each chosen entry's platform object and its manifest with
/// its config; and the attestations left out.
async fn chosen_platforms<S: Store>(
    store: &S,
    index: &Index,
    choice: &PlatformChoice,
) -> Result<(Vec<(Map<String, Value>, Image)>, Vec<Digest>)> {
    let what = format!("index {}", index.raw().digest());
    let value: Value =
        serde_json::from_slice(index.raw().bytes()).map_err(|source| Error::MalformedDocument {
            what: what.clone(),
            source,
        })?;
    let entries = value["manifests"].as_array().cloned().unwrap_or_default();
    let wanted: &[PlatformSpec] = match choice {
        PlatformChoice::Several(w) => w,
        _ => &[],
    };
    let mut chosen = Vec::new();
    let mut dropped = Vec::new();
    let mut available = Vec::new();
    let mut found = vec![false; wanted.len()];
    let mut read: Vec<Digest> = Vec::new();
    for entry in &entries {
        let digest: Digest = entry["digest"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|_| Error::InvalidDocument {
                what: what.clone(),
                reason: format!("an entry has no valid digest: {}", entry["digest"]),
            })?;
        if is_attestation(entry) {
            dropped.push(digest);
            continue;
        }
        let media = entry["mediaType"].as_str().unwrap_or_default();
        if matches!(
            media_type::document_kind(media),
            Ok((DocumentKind::Index, _))
        ) {
            return Err(Error::InvalidChange {
                reason: format!(
                    "{what} nests index {digest}: choose one platform (--platform), which is \
                     searched in nested indexes too"
                ),
            });
        }
        // An entry without a platform object is for the platform its config names: read it to
        // know. Entries of platforms not asked for are not read at all.
        let listed = entry["platform"].as_object().cloned();
        if let Some(p) = &listed
            && !wanted.is_empty()
            && !wanted.iter().any(|w| matches(p, w))
        {
            available.push(mutate::platform_name(p));
            continue;
        }
        // Bounded before anything is read: a hostile index listing one manifest thousands of
        // times (each under another platform object) must not cost thousands of reads and
        // hold every image in memory.
        if read.contains(&digest) {
            return Err(Error::InvalidDocument {
                what: what.clone(),
                reason: format!("lists manifest {digest} more than once"),
            });
        }
        if read.len() >= MAX_PLATFORMS {
            return Err(Error::InvalidDocument {
                what: what.clone(),
                reason: format!(
                    "lists more than {MAX_PLATFORMS} platform manifests to build on; choose                      some with --platform"
                ),
            });
        }
        read.push(digest.clone());
        let image = read_child(store, index, &digest).await?;
        let platform = listed.unwrap_or_else(|| mutate::platform_of_config(&image.config));
        available.push(mutate::platform_name(&platform));
        let mut take = wanted.is_empty();
        for (w, f) in wanted.iter().zip(found.iter_mut()) {
            if matches(&platform, w) {
                *f = true;
                take = true;
            }
        }
        if take {
            chosen.push((platform, image));
        }
    }
    if let Some((w, _)) = wanted.iter().zip(&found).find(|(_, f)| !**f) {
        return Err(Error::InvalidChange {
            reason: format!(
                "{what} has no manifest for {w} (it has: {})",
                available.join(", ")
            ),
        });
    }
    if chosen.is_empty() {
        return Err(Error::InvalidChange {
            reason: format!("{what} lists no platform manifest to build on"),
        });
    }
    Ok((chosen, dropped))
}

/// A child manifest of `index`, of the index's family, with its config.
async fn read_child<S: Store>(store: &S, index: &Index, digest: &Digest) -> Result<Image> {
    let manifest = Manifest::parse(
        store
            .get_manifest(&ManifestRef::Digest(digest.clone()))
            .await?,
    )?;
    if manifest.family() != index.family() {
        return Err(Error::InvalidDocument {
            what: format!("index {}", index.raw().digest()),
            reason: format!(
                "it lists {} manifest {digest} in {} index (one index never mixes the Docker \
                 and OCI families)",
                family_name(manifest.family()),
                family_name(index.family())
            ),
        });
    }
    image_from_document(store, Document::Manifest(manifest), None).await
}

fn base_of<'a>(image: &'a Image, name: &'a str) -> Base<'a> {
    Base::Image {
        manifest: &image.manifest,
        config: &image.config,
        name: Some(name),
    }
}

fn family_name(f: media_type::Family) -> &'static str {
    match f {
        media_type::Family::Oci => "an OCI",
        media_type::Family::Docker => "a Docker",
    }
}

async fn append_to_index<S: Store, D: Store>(
    store: &S,
    index: &Index,
    name: &str,
    dest: &D,
    request: AppendRequest,
    options: &AppendOptions<'_>,
) -> Result<IndexAppendOutcome> {
    let (chosen, dropped_attestations) = chosen_platforms(store, index, &options.platforms).await?;
    let AppendRequest {
        layers,
        changes,
        annotations: extra,
        created,
    } = request;
    // Everything that can be refused is, before anything is written: each platform's config
    // and manifest without the new layers, and the index (its entries have fixed sizes).
    for (_, image) in &chosen {
        check_before_writing(base_of(image, name), &changes, &extra, created)?;
    }
    let mut index_annotations = extra.clone();
    index_annotations.insert(
        annotations::BASE_NAME.to_owned(),
        crate::reference::base_name(name),
    );
    index_annotations.insert(
        annotations::BASE_DIGEST.to_owned(),
        index.raw().digest().to_string(),
    );
    let dry: Vec<mutate::Appended> = chosen
        .iter()
        .map(|(_, image)| mutate::append(base_of(image, name), &[], &changes, &extra, created))
        .collect::<Result<_>>()?;
    let entries: Vec<IndexEntry<'_>> = chosen
        .iter()
        .zip(&dry)
        .map(|((platform, _), d)| IndexEntry {
            manifest: &d.manifest,
            platform: platform.clone(),
        })
        .collect();
    let dry_index = mutate::index_of(index.family(), &entries, &index_annotations)?;
    check_document_size("index", &dry_index)?;

    for (_, image) in &chosen {
        copy_base_blobs(store, image, dest).await?;
    }
    let built = build_layers(layers, dest, options.staging).await?;
    let mut platforms = Vec::with_capacity(chosen.len());
    for (platform, image) in chosen {
        let appended = store_appended(
            base_of(&image, name),
            &built,
            &changes,
            &extra,
            created,
            dest,
            None,
        )
        .await?;
        platforms.push(PlatformAppend {
            platform,
            manifest: appended.manifest,
            config: appended.config,
            base: image.manifest.raw().digest().clone(),
        });
    }
    let entries: Vec<IndexEntry<'_>> = platforms
        .iter()
        .map(|p| IndexEntry {
            manifest: &p.manifest,
            platform: p.platform.clone(),
        })
        .collect();
    let new_index = mutate::index_of(index.family(), &entries, &index_annotations)?;
    check_document_size("index", &new_index)?;
    dest.put_manifest(&new_index, options.tag).await?;
    Ok(IndexAppendOutcome {
        index: new_index,
        platforms,
        layers: built.into_iter().map(|n| n.layer).collect(),
        dropped_attestations,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::layer::{LayerBuilder, LayerOptions};
    use crate::layout::OciLayout;
    use crate::ops::load_document;

    /// An empty image for `arch` (config and manifest) stored untagged.
    async fn image(layout: &OciLayout, arch: &str) -> RawDocument {
        let a = mutate::append(
            Base::Scratch {
                os: "windows",
                architecture: arch,
                variant: None,
            },
            &[],
            &[],
            &std::collections::BTreeMap::new(),
            0,
        )
        .unwrap();
        layout
            .put_blob(a.config.digest(), a.config.size(), a.config.bytes())
            .await
            .unwrap();
        layout.put_manifest(&a.manifest, None).await.unwrap();
        a.manifest
    }

    fn entry(m: &RawDocument, platform: Value) -> Value {
        json!({"mediaType": m.media_type(), "digest": m.digest().to_string(),
            "size": m.size(), "platform": platform})
    }

    /// A base index of two platforms with every platform field, and an attestation between.
    async fn base(layout: &OciLayout) -> (RawDocument, Vec<Value>) {
        let (amd, arm) = (image(layout, "amd64").await, image(layout, "arm64").await);
        let platforms = vec![
            json!({"os": "windows", "architecture": "arm64", "variant": "v8",
                "os.version": "10.0.26100.1", "os.features": ["win32k"]}),
            json!({"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.5329"}),
        ];
        let mut attestation = entry(&amd, json!({"os": "unknown", "architecture": "unknown"}));
        attestation["annotations"] = json!({"vnd.docker.reference.type": "attestation-manifest"});
        let index = RawDocument::canonical(
            &json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [
                entry(&arm, platforms[0].clone()), attestation, entry(&amd, platforms[1].clone()),
            ]}),
            media_type::OCI_INDEX,
        )
        .unwrap();
        layout.put_manifest(&index, Some("base")).await.unwrap();
        (index, platforms)
    }

    fn request() -> AppendRequest {
        let mut layer = LayerBuilder::new(LayerOptions::default());
        layer.add_bytes("/app", b"app\n".to_vec(), 0o644).unwrap();
        AppendRequest {
            layers: vec![(layer, "app".into())],
            ..AppendRequest::default()
        }
    }

    #[tokio::test]
    async fn every_platform_gets_the_one_layer_and_keeps_its_platform_fields_and_place() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let (base_index, platforms) = base(&layout).await;
        let document = load_document(&layout, &ManifestRef::Tag("base".into()))
            .await
            .unwrap();
        let made = append_to_base(
            BaseDocument {
                store: &layout,
                document,
                name: "oci:l:base",
            },
            &layout,
            request(),
            AppendOptions {
                tag: Some("app"),
                staging: t.path(),
                platforms: PlatformChoice::All,
            },
        )
        .await
        .unwrap();
        let AppendResult::Index(made) = made else {
            panic!("an index base gives an index")
        };
        let v: Value = serde_json::from_slice(made.index.bytes()).unwrap();
        let entries = v["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "the attestation is left out");
        assert_eq!(made.dropped_attestations.len(), 1);
        for (n, e) in entries.iter().enumerate() {
            assert_eq!(e["platform"], platforms[n]);
            assert_eq!(e["digest"], made.platforms[n].manifest.digest().to_string());
            let m: Value = serde_json::from_slice(made.platforms[n].manifest.bytes()).unwrap();
            assert_eq!(m["layers"][0]["digest"], made.layers[0].digest.to_string());
            let c: Value = serde_json::from_slice(made.platforms[n].config.bytes()).unwrap();
            assert_eq!(c["architecture"], platforms[n]["architecture"]);
        }
        assert_eq!(
            v["annotations"][annotations::BASE_DIGEST],
            base_index.digest().to_string()
        );
        assert_eq!(
            layout
                .resolve_tag("app")
                .await
                .unwrap()
                .digest()
                .to_string(),
            made.index.digest().to_string()
        );
    }

    #[tokio::test]
    async fn a_platform_the_index_lacks_is_refused_before_anything_is_written() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        base(&layout).await;
        let blobs = |l: &OciLayout| {
            std::fs::read_dir(l.root().join("blobs/sha256"))
                .unwrap()
                .count()
        };
        let before = blobs(&layout);
        let document = load_document(&layout, &ManifestRef::Tag("base".into()))
            .await
            .unwrap();
        let err = append_to_base(
            BaseDocument {
                store: &layout,
                document,
                name: "oci:l:base",
            },
            &layout,
            request(),
            AppendOptions {
                tag: Some("app"),
                staging: t.path(),
                platforms: PlatformChoice::Several(vec![
                    "windows/amd64".parse().unwrap(),
                    "linux/s390x".parse().unwrap(),
                ]),
            },
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("no manifest for linux/s390x"),
            "{err}"
        );
        assert_eq!(blobs(&layout), before);
        assert!(layout.resolve_tag("app").await.is_err());
    }

    #[tokio::test]
    async fn platforms_not_asked_for_are_not_read_and_a_docker_child_of_an_oci_index_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        base(&layout).await;
        let document = load_document(&layout, &ManifestRef::Tag("base".into()))
            .await
            .unwrap();
        let counted = crate::ops::testing::Counted::new(&layout, 100);
        let made = append_to_base(
            BaseDocument {
                store: &counted,
                document,
                name: "oci:l:base",
            },
            &layout,
            request(),
            AppendOptions {
                tag: None,
                staging: t.path(),
                platforms: PlatformChoice::Several(vec!["windows/amd64".parse().unwrap()]),
            },
        )
        .await
        .unwrap();
        let AppendResult::Index(made) = made else {
            panic!("several platforms give an index")
        };
        assert_eq!(made.platforms.len(), 1);
        assert_eq!(counted.reads(), 1, "only the amd64 child is read");

        // The same index claiming to be Docker's: its OCI children are refused.
        let raw = layout
            .get_manifest(&ManifestRef::Tag("base".into()))
            .await
            .unwrap();
        let text = String::from_utf8(raw.bytes().to_vec())
            .unwrap()
            .replace(media_type::OCI_INDEX, media_type::DOCKER_INDEX);
        let docker = RawDocument::new(text.into_bytes(), media_type::DOCKER_INDEX);
        let err = append_to_base(
            BaseDocument {
                store: &layout,
                document: Document::parse(docker).unwrap(),
                name: "oci:l:base",
            },
            &layout,
            request(),
            AppendOptions {
                tag: None,
                staging: t.path(),
                platforms: PlatformChoice::All,
            },
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("an OCI manifest") && err.to_string().contains("never mixes"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_index_listing_one_manifest_many_times_is_refused_after_one_read() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let (base_index, _) = base(&layout).await;
        let v: Value = serde_json::from_slice(base_index.bytes()).unwrap();
        let child = v["manifests"][0].clone();
        let entries: Vec<Value> = (0..1000)
            .map(|n| {
                let mut e = child.clone();
                e["platform"] = serde_json::json!({"os": "linux", "architecture": format!("a{n}")});
                e
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": entries,
        });
        let raw = RawDocument::new(serde_json::to_vec(&index).unwrap(), media_type::OCI_INDEX);
        let counted = crate::ops::testing::Counted::new(&layout, 100);
        let err = append_to_base(
            BaseDocument {
                store: &counted,
                document: Document::parse(raw).unwrap(),
                name: "oci:l:base",
            },
            &layout,
            request(),
            AppendOptions {
                tag: None,
                staging: t.path(),
                platforms: PlatformChoice::All,
            },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
        assert_eq!(counted.reads(), 1, "one read, not a thousand");
    }
}

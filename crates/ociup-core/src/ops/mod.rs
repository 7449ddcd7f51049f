//! Operations that move bytes between stores around the pure transforms: load an image, append
//! to it and store the result in the right order (blobs, config, manifest, tag); rebase.

mod append;
mod index;
pub mod rebase;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::BTreeMap;
use std::path::Path;

use oci_spec::image::Descriptor;

use crate::cache::BlobCache;
use crate::config::{Config, ConfigChange};
use crate::digest::Digest;
use crate::document::{Document, Index, Manifest, RawDocument};
use crate::error::{Error, Result};
use crate::layer::{Layer, LayerBuilder};
use crate::media_type::{self, DocumentKind};
use crate::mutate::{self, Base, NewLayer};
use crate::reference::PlatformSpec;
use crate::store::{ManifestRef, Store, check_document_size, copy_blob};

pub use append::{
    AppendOptions, AppendResult, BaseDocument, IndexAppendOutcome, PlatformAppend, PlatformChoice,
    append_to_base,
};
pub(crate) use append::{is_attestation, platform_entries, spec_name};
pub use index::{
    IndexMember, IndexRemoval, add_to_index, create_index, index_member, remove_from_index,
};

/// An image manifest with its config, as read from a store.
#[derive(Clone, Debug)]
pub struct Image {
    /// The manifest.
    pub manifest: Manifest,
    /// The config.
    pub config: Config,
}

/// Reads a manifest or index.
///
/// # Errors
/// Whatever the store reports; [`Error::UnsupportedMediaType`] for documents that are neither.
pub async fn load_document<S: Store>(store: &S, reference: &ManifestRef) -> Result<Document> {
    Document::parse(store.get_manifest(reference).await?)
}

/// How deep indexes nested in indexes are followed: by [`image_from_document`]'s search for a
/// platform (deeper ones are not searched) and by [`crate::copy::copy_image`] (deeper is an
/// error). Real images nest one level, rarely two.
pub const MAX_INDEX_NESTING: usize = 8;

/// How many nested indexes one search for a platform reads at most. Each distinct index is read
/// once however often the graph lists it, so a hostile graph (nine indexes that each list the
/// next ten times) costs nine reads, not ten to the eighth; a wide one stops here with an error.
pub const MAX_INDEXES_SEARCHED: usize = 64;

/// The platforms an index lists.
pub fn platforms(index: &Index) -> Vec<PlatformSpec> {
    index
        .parsed()
        .manifests()
        .iter()
        .filter_map(|m| m.platform().as_ref())
        .map(|p| PlatformSpec {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        })
        .collect()
}

/// The descriptor in `index` for `platform` (a platform without variant matches any variant).
pub fn select_platform(index: &Index, platform: &PlatformSpec) -> Option<Descriptor> {
    index
        .parsed()
        .manifests()
        .iter()
        .find(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == platform.os
                    && p.architecture().to_string() == platform.architecture
                    && (platform.variant.is_none() || *p.variant() == platform.variant)
            })
        })
        .cloned()
}

/// The manifest for `platform` in `root` or in the indexes nested in it (depth first, in order),
/// reading each distinct index once and at most [`MAX_INDEXES_SEARCHED`] of them.
async fn find_platform<S: Store>(
    store: &S,
    root: Index,
    platform: &PlatformSpec,
) -> Result<Manifest> {
    let root_digest = root.raw().digest().clone();
    let mut available: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::from([root_digest.clone()]);
    let mut read = 0usize;
    // Indexes to read, with their depth; the root is read already.
    let mut stack: Vec<(Digest, usize)> = Vec::new();
    let mut next = Some((root, 0usize));
    loop {
        let (index, depth) = match next.take() {
            Some(found) => found,
            None => {
                let Some((digest, depth)) = stack.pop() else {
                    break;
                };
                read += 1;
                if read > MAX_INDEXES_SEARCHED {
                    return Err(Error::InvalidDocument {
                        what: format!("index {root_digest}"),
                        reason: format!(
                            "it nests more than {MAX_INDEXES_SEARCHED} indexes; the search \
                             for {platform} stopped there"
                        ),
                    });
                }
                let raw = store.get_manifest(&ManifestRef::Digest(digest)).await?;
                (Index::parse(raw)?, depth)
            }
        };
        if let Some(d) = select_platform(&index, platform) {
            let digest = Digest::try_from(d.digest())?;
            let raw = store.get_manifest(&ManifestRef::Digest(digest)).await?;
            return Manifest::parse(raw);
        }
        for p in platforms(&index) {
            let p = p.to_string();
            if !available.contains(&p) {
                available.push(p);
            }
        }
        if depth >= MAX_INDEX_NESTING {
            continue;
        }
        let mut nested = Vec::new();
        for child in index.parsed().manifests() {
            if matches!(
                media_type::document_kind(child.media_type().as_ref()),
                Ok((DocumentKind::Index, _))
            ) {
                let digest = Digest::try_from(child.digest())?;
                if seen.insert(digest.clone()) {
                    nested.push((digest, depth + 1));
                }
            }
        }
        stack.extend(nested.into_iter().rev());
    }
    Err(Error::InvalidChange {
        reason: format!(
            "index {root_digest} has no manifest for {platform} (it has: {})",
            available.join(", ")
        ),
    })
}

/// Loads an image, picking `platform` from an index.
///
/// # Errors
/// [`Error::InvalidChange`] for an index without `platform` (or none given), and whatever the
/// store and parsers report.
pub async fn load_image<S: Store>(
    store: &S,
    reference: &ManifestRef,
    platform: Option<&PlatformSpec>,
) -> Result<Image> {
    let doc = load_document(store, reference).await?;
    image_from_document(store, doc, platform).await
}

/// The image a loaded document names: the manifest itself, or `platform`'s manifest of an index;
/// then its config.
///
/// # Errors
/// As [`load_image`].
pub async fn image_from_document<S: Store>(
    store: &S,
    doc: Document,
    platform: Option<&PlatformSpec>,
) -> Result<Image> {
    image_from_document_cached(store, doc, platform, None).await
}

/// The largest config [`image_from_document_cached`] keeps in its cache.
pub const CACHED_CONFIG_MAX: u64 = 1 << 20;

/// [`image_from_document`], with the config read through `cache` (see [`BlobCache::read`]): a
/// config seen before costs no request. A config is named by its digest, so what the cache
/// answers is what the store would.
///
/// # Errors
/// As [`load_image`].
pub async fn image_from_document_cached<S: Store>(
    store: &S,
    doc: Document,
    platform: Option<&PlatformSpec>,
    cache: Option<&BlobCache>,
) -> Result<Image> {
    let manifest = match doc {
        Document::Manifest(m) => m,
        Document::Index(index) => {
            let Some(platform) = platform else {
                return Err(Error::InvalidChange {
                    reason: format!(
                        "{}@{} is a multi-platform index; choose one with --platform ({})",
                        store.location(),
                        index.raw().digest(),
                        platforms(&index)
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            };
            find_platform(store, index, platform).await?
        }
    };
    let config_digest = manifest.config_digest()?;
    let config_desc = manifest.parsed().config();
    // Only configs of a sane size are kept (real ones are a few KiB): a registry serving huge
    // ones cannot fill the disk through the cache.
    let cache = cache.filter(|_| config_desc.size() <= CACHED_CONFIG_MAX);
    let bytes = BlobCache::read(cache, store, &config_digest, config_desc.size()).await?;
    let config = Config::parse(RawDocument::verified(
        bytes,
        config_desc.media_type().to_string(),
        &config_digest,
    )?)?;
    Ok(Image { manifest, config })
}

/// What to append: layers (each built from its own builder), config changes, annotations.
#[derive(Debug, Default)]
pub struct AppendRequest {
    /// Layers to build and append, each with its history line.
    pub layers: Vec<(LayerBuilder, String)>,
    /// Config changes, in order.
    pub changes: Vec<ConfigChange>,
    /// Annotations for the new manifest.
    pub annotations: BTreeMap<String, String>,
    /// `created` of the config and history, seconds since 1970.
    pub created: u64,
}

/// What [`append_image`] stored.
#[derive(Clone, Debug)]
pub struct AppendOutcome {
    /// The new manifest.
    pub manifest: RawDocument,
    /// The new config.
    pub config: RawDocument,
    /// The layers built.
    pub layers: Vec<Layer>,
}

/// Where an append starts.
#[derive(Debug)]
pub enum AppendBase<'a, S> {
    /// An image in a store, named for the `base.name` annotation.
    Image {
        /// The store holding the base.
        store: &'a S,
        /// The loaded base.
        image: &'a Image,
        /// How the user named the base.
        name: &'a str,
    },
    /// No base.
    Scratch(&'a PlatformSpec),
}

/// What [`mutate::append`] is given for an [`AppendBase`].
fn base_arg<'a, S>(base: &'a AppendBase<'a, S>) -> Base<'a> {
    match base {
        AppendBase::Image { image, name, .. } => Base::Image {
            manifest: &image.manifest,
            config: &image.config,
            name: Some(name),
        },
        AppendBase::Scratch(p) => Base::Scratch {
            os: &p.os,
            architecture: &p.architecture,
            variant: p.variant.as_deref(),
        },
    }
}

/// Builds the requested layers (in `staging`, a directory for temporary files), appends them and
/// the changes to the base, and stores everything in `dest` in order: missing base blobs, new
/// layers, config, manifest (tagged `tag` when given). A failure at any step leaves no tag
/// pointing at anything new.
///
/// # Errors
/// Layer build errors, store errors, those of [`mutate::append`], and
/// [`Error::InvalidDocument`] when the config or manifest would be larger than ociup reads back
/// (checked before anything is written).
///
/// # Example
///
/// A one-layer image on nothing, written to a new layout under a tag:
///
/// ```
/// use ociup_core::config::ConfigChange;
/// use ociup_core::layer::{LayerBuilder, LayerOptions};
/// use ociup_core::layout::OciLayout;
/// use ociup_core::ops::{AppendBase, AppendRequest, append_image};
/// use ociup_core::reference::PlatformSpec;
/// use ociup_core::store::Store;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ociup_core::Result<()> {
/// let dir = tempfile::tempdir().map_err(|e| ociup_core::Error::io("a temporary directory", e))?;
/// let layout = OciLayout::open_or_create(dir.path().join("images"))?;
/// let mut layer = LayerBuilder::new(LayerOptions { epoch: 1_700_000_000, ..LayerOptions::default() });
/// layer.add_bytes("/etc/motd", b"hello\n".to_vec(), 0o644)?;
/// let platform: PlatformSpec = "linux/arm64".parse()?;
/// let request = AppendRequest {
///     layers: vec![(layer, "motd".into())],
///     changes: vec![ConfigChange::Env("GREETING".into(), "hello".into())],
///     created: 1_700_000_000,
///     ..AppendRequest::default()
/// };
/// // The store type of a base is named even for scratch, which has none.
/// let made = append_image::<OciLayout, _>(
///     AppendBase::Scratch(&platform),
///     &layout,
///     Some("motd"),
///     request,
///     dir.path(), // where layers are built before they are stored
/// )
/// .await?;
/// assert_eq!(made.layers.len(), 1);
/// let tagged = layout.resolve_tag("motd").await?;
/// assert_eq!(tagged.digest().to_string(), made.manifest.digest().to_string());
/// # Ok(())
/// # }
/// ```
pub async fn append_image<S: Store, D: Store>(
    base: AppendBase<'_, S>,
    dest: &D,
    tag: Option<&str>,
    request: AppendRequest,
    staging: &Path,
) -> Result<AppendOutcome> {
    let AppendRequest {
        layers,
        changes,
        annotations,
        created,
    } = request;
    check_before_writing(base_arg(&base), &changes, &annotations, created)?;
    // Copy base blobs the destination lacks (none when both are the same store).
    if let AppendBase::Image { store, image, .. } = &base {
        copy_base_blobs(*store, image, dest).await?;
    }
    let built = build_layers(layers, dest, staging).await?;
    let appended = store_appended(
        base_arg(&base),
        &built,
        &changes,
        &annotations,
        created,
        dest,
        tag,
    )
    .await?;
    Ok(AppendOutcome {
        manifest: appended.manifest,
        config: appended.config,
        layers: built.into_iter().map(|n| n.layer).collect(),
    })
}

/// The config and manifest without the new layers: one too large already is refused before
/// anything is written (each layer adds a diff_id, a descriptor and a history entry: the result
/// is checked again by [`store_appended`]).
fn check_before_writing(
    base: Base<'_>,
    changes: &[ConfigChange],
    annotations: &BTreeMap<String, String>,
    created: u64,
) -> Result<()> {
    let dry = mutate::append(base, &[], changes, annotations, created)?;
    check_document_size("config", &dry.config)?;
    check_document_size("manifest", &dry.manifest)
}

/// Copies the layers of `image` that `dest` lacks from `store`.
async fn copy_base_blobs<S: Store, D: Store>(store: &S, image: &Image, dest: &D) -> Result<()> {
    for l in image.manifest.parsed().layers() {
        copy_blob(store, dest, &Digest::try_from(l.digest())?, l.size()).await?;
    }
    Ok(())
}

/// Builds each layer into a temporary file in `staging` and stores it in `dest`.
async fn build_layers<D: Store>(
    layers: Vec<(LayerBuilder, String)>,
    dest: &D,
    staging: &Path,
) -> Result<Vec<NewLayer>> {
    let mut built = Vec::new();
    for (builder, created_by) in layers {
        let staging = staging.to_owned();
        let (layer, file) = tokio::task::spawn_blocking(move || -> Result<_> {
            let tmp = tempfile::Builder::new()
                .prefix(".ociup-layer-")
                .tempfile_in(&staging)
                .map_err(|e| {
                    Error::io(
                        format!("creating a temporary file in {}", staging.display()),
                        e,
                    )
                })?;
            let (layer, tmp) = builder.build(std::io::BufWriter::with_capacity(1 << 20, tmp))?;
            let tmp = tmp
                .into_inner()
                .map_err(|e| Error::io("writing the layer", e.into_error()))?;
            Ok((layer, tmp))
        })
        .await
        .map_err(|e| Error::io("building a layer", std::io::Error::other(e)))??;
        let reader = tokio::fs::File::open(file.path())
            .await
            .map_err(|e| Error::io(format!("reading {}", file.path().display()), e))?;
        dest.put_blob(&layer.digest, layer.size, reader).await?;
        built.push(NewLayer { layer, created_by });
    }
    Ok(built)
}

/// Appends the built layers and the changes to `base` and stores the config, then the manifest
/// (tagged `tag` when given).
async fn store_appended<D: Store>(
    base: Base<'_>,
    built: &[NewLayer],
    changes: &[ConfigChange],
    annotations: &BTreeMap<String, String>,
    created: u64,
    dest: &D,
    tag: Option<&str>,
) -> Result<mutate::Appended> {
    let appended = mutate::append(base, built, changes, annotations, created)?;
    check_document_size("config", &appended.config)?;
    check_document_size("manifest", &appended.manifest)?;
    dest.put_blob(
        appended.config.digest(),
        appended.config.size(),
        appended.config.bytes(),
    )
    .await?;
    dest.put_manifest(&appended.manifest, tag).await?;
    Ok(appended)
}

#[cfg(test)]
mod tests {
    use super::testing::{Counted, index_of, nine_by_ten, tiny_image};
    use super::*;
    use crate::layout::OciLayout;

    #[tokio::test]
    async fn a_platform_search_reads_each_index_once() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let top = nine_by_ten(&layout).await;
        let top = ManifestRef::Digest(top.digest().clone());
        // The root, eight nested indexes, the manifest (before: 1 + 8 x 10 + 1).
        let counted = Counted::new(&layout, 1000);
        let amd64 = "linux/amd64".parse().unwrap();
        load_image(&counted, &top, Some(&amd64)).await.unwrap();
        assert_eq!(counted.reads(), 10);
        // A platform it lacks: every index is read once (before: ten to the eighth reads).
        let counted = Counted::new(&layout, 1000);
        let s390x = "linux/s390x".parse().unwrap();
        let err = load_image(&counted, &top, Some(&s390x)).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("no manifest for linux/s390x (it has: linux/amd64)"),
            "{err}"
        );
        assert_eq!(counted.reads(), 9);
    }

    #[tokio::test]
    async fn a_config_too_large_to_read_back_is_refused_before_anything_is_written() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let listing = |dir: &Path| -> Vec<_> {
            walkdir::WalkDir::new(dir)
                .into_iter()
                .map(|e| e.unwrap().into_path())
                .collect()
        };
        let before = listing(layout.root());
        let amd64: PlatformSpec = "linux/amd64".parse().unwrap();
        let mut layer = LayerBuilder::new(crate::layer::LayerOptions::default());
        layer.add_bytes("/a", b"a".to_vec(), 0o644).unwrap();
        // The value lands twice in the config (Env and the history entry): half the cap is
        // enough, and canonical JSON of it takes seconds in a debug build.
        let big = "x".repeat(crate::store::MAX_DOCUMENT_SIZE as usize / 2 + 1);
        let err = append_image::<OciLayout, _>(
            AppendBase::Scratch(&amd64),
            &layout,
            Some("big"),
            AppendRequest {
                layers: vec![(layer, "a".into())],
                changes: vec![ConfigChange::Env("BIG".into(), big)],
                ..AppendRequest::default()
            },
            t.path(),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("config") && err.to_string().contains("not written"),
            "{err}"
        );
        assert_eq!(listing(layout.root()), before, "not even the layer");
    }

    #[tokio::test]
    async fn a_platform_search_stops_after_so_many_indexes() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let image = tiny_image(&layout).await;
        let mut wide = Vec::new();
        for n in 0..MAX_INDEXES_SEARCHED + 10 {
            wide.push(index_of(&layout, &[(&image, Some("linux/arm64"))], n).await);
        }
        let children: Vec<_> = wide.iter().map(|i| (i, None)).collect();
        let top = index_of(&layout, &children, 0).await;
        let counted = Counted::new(&layout, 1000);
        let err = load_image(
            &counted,
            &ManifestRef::Digest(top.digest().clone()),
            Some(&"linux/s390x".parse().unwrap()),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("nests more than {MAX_INDEXES_SEARCHED} indexes")),
            "{err}"
        );
        assert_eq!(counted.reads(), 1 + MAX_INDEXES_SEARCHED);
    }
}

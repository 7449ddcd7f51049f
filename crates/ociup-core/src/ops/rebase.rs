//! Rebase across stores: load the image and both bases (in parallel), rebase each platform, and
//! write only what is new: base blobs the destination lacks (mounted within one registry), then
//! configs, manifests, and the index last.

use futures_util::TryFutureExt;
use serde::Serialize;
use serde_json::Value;

use super::{image_from_document_cached, load_document};
use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::document::{Document, Index, Manifest, RawDocument};
use crate::error::{Error, Result};
use crate::mutate::{self, ConfigMode, OldBase, RebaseInput, RebasePlan, annotations};
use crate::reference::PlatformSpec;
use crate::store::{
    BlobCopy, ManifestRef, OpenUpload, Store, check_document_size, copy_blob, copy_missing_blob,
    put_manifest_after_blobs, put_manifest_with_blobs,
};

/// The upload opened for the new config before it is known ([`Store::open_upload`]), until it
/// is used or cancelled, and whether opening it is over: the config's upload waits for that,
/// nothing else does (the reads, the layers' mounts go on while the POST is answered).
struct UploadSlot {
    upload: std::sync::Mutex<Option<OpenUpload>>,
    /// Opening is over: opened, failed, or never tried.
    settled: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl UploadSlot {
    /// A slot where nothing is being opened.
    fn none() -> Self {
        UploadSlot {
            upload: std::sync::Mutex::new(None),
            settled: std::sync::atomic::AtomicBool::new(true),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// A slot an upload is being opened for: [`UploadSlot::settle`] says when it is over.
    fn opening() -> Self {
        let slot = Self::none();
        slot.settled
            .store(false, std::sync::atomic::Ordering::SeqCst);
        slot
    }

    /// The opening is over, with `upload` if it opened one.
    fn settle(&self, upload: Option<OpenUpload>) {
        if let Some(u) = upload {
            keep_upload(self, u);
        }
        self.settled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Waits until the opening is over.
    async fn settled(&self) {
        loop {
            // Made before the check, so a `settle` in between still wakes it.
            let woken = self.notify.notified();
            if self.settled.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            woken.await;
        }
    }
}

fn take_upload(slot: &UploadSlot) -> Option<OpenUpload> {
    slot.upload
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

fn keep_upload(slot: &UploadSlot, upload: OpenUpload) {
    *slot
        .upload
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(upload);
}

/// Gives up an opened upload nothing went into. A failure is the store's to report (the
/// registry client logs it; the registry expires the upload): the rebase itself is done.
async fn cancel_upload<D: Store>(dest: &D, upload: OpenUpload) {
    let _ = dest.cancel_upload(upload).await;
}

/// How to rebase.
#[derive(Clone, Debug, Default)]
pub struct RebaseOptions {
    /// How configs are derived.
    pub config: ConfigMode,
    /// Rebase (and write) only these platforms of an index.
    pub platforms: Vec<PlatformSpec>,
    /// `created` of new configs; the image's when `None`.
    pub created: Option<u64>,
    /// `org.opencontainers.image.base.name` to record.
    pub new_base_name: Option<String>,
    /// Plan only: read everything, write nothing.
    pub dry_run: bool,
    /// The config of the image (a single manifest), when the caller has it already (a managed
    /// version records it): it is not read from the image's store again.
    pub image_config: Option<crate::config::Config>,
    /// Where configs read from a registry are kept by digest (see [`BlobCache`]): the image's
    /// and both bases' configs, seen in an earlier rebase, cost no request then. A config is
    /// named by its digest, so the cache answers what the registry would; what is written is
    /// the same with or without it.
    pub cache: Option<BlobCache>,
}

/// What happens to one blob of the result.
#[derive(Clone, Debug, Serialize)]
pub struct BlobAction {
    /// The blob.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// `present`, `mount` or `copy` (planned), or `mounted`/`copied` (done).
    pub action: String,
}

/// One platform's part of a rebase.
#[derive(Clone, Debug, Serialize)]
pub struct PlatformRebase {
    /// The platform (`linux/amd64`), when the image is an index.
    pub platform: Option<String>,
    /// The new manifest's digest.
    pub digest: String,
    /// What changed.
    pub plan: RebasePlan,
}

/// What [`rebase_image`] did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Serialize)]
pub struct RebaseOutcome {
    /// The digest of the result (the image's own when already current).
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Nothing to do: every platform already sits on the new base.
    pub already_current: bool,
    /// Per platform.
    pub platforms: Vec<PlatformRebase>,
    /// Base and own layer blobs, and what is (to be) done with each.
    pub blobs: Vec<BlobAction>,
    /// Attestation manifests left out of a rebased index (they describe the old children).
    pub dropped_attestations: Vec<String>,
    /// Whether anything was written.
    pub written: bool,
    /// The result document (the image's own when already current).
    #[serde(skip)]
    pub document: Option<RawDocument>,
    /// The result's config, when the result is a single manifest that was rebased.
    #[serde(skip)]
    pub config: Option<RawDocument>,
}

/// Where the old base comes from. Its store type `O` is its own: the old base may sit in a
/// layout while the new one is in a registry.
#[derive(Debug)]
pub enum OldBaseSource<'a, O> {
    /// An image in a store.
    Image(&'a O, &'a ManifestRef),
    /// An image in a store, already loaded (as a caller that checked it exists has it).
    Loaded(&'a O, Box<Document>),
    /// What the image records of it (`dev.ociup.base.*` annotations).
    Recorded,
}

/// What to rebase onto what: the image (a manifest or an index, loaded from `image_store` with
/// [`load_document`]), the new base, and where the old base is. [`RebaseRequest::new`] takes the
/// required parts and leaves the old base to what the image records;
/// [`RebaseRequest::old_base`] names it instead, in a store of any type.
#[derive(Debug)]
pub struct RebaseRequest<'a, I, N, O = N> {
    /// The store the image is in (its own layers are read from there).
    pub image_store: &'a I,
    /// The image.
    pub image: Document,
    /// The store the new base is in.
    pub new_base_store: &'a N,
    /// The new base in it (a tag or a digest).
    pub new_base: ManifestRef,
    /// The new base's document, when the caller has loaded it already (as it can while reading
    /// the image, to overlap the two): `new_base` is not read again.
    pub new_base_doc: Option<Document>,
    /// Where the old base is.
    pub old_base: OldBaseSource<'a, O>,
}

impl<'a, I, N> RebaseRequest<'a, I, N> {
    /// `image` (from `image_store`) onto `new_base` (in `new_base_store`); the old base is what
    /// the image records ([`OldBaseSource::Recorded`]).
    pub fn new(
        image_store: &'a I,
        image: Document,
        new_base_store: &'a N,
        new_base: ManifestRef,
    ) -> Self {
        RebaseRequest {
            image_store,
            image,
            new_base_store,
            new_base,
            new_base_doc: None,
            old_base: OldBaseSource::Recorded,
        }
    }
}

impl<'a, I, N, O> RebaseRequest<'a, I, N, O> {
    /// The same request with the old base taken from `old_base` (in a store of any type).
    pub fn old_base<P>(self, old_base: OldBaseSource<'a, P>) -> RebaseRequest<'a, I, N, P> {
        RebaseRequest {
            image_store: self.image_store,
            image: self.image,
            new_base_store: self.new_base_store,
            new_base: self.new_base,
            new_base_doc: self.new_base_doc,
            old_base,
        }
    }

    /// The same request with the new base's document already loaded (from `new_base` in the
    /// new base's store): the rebase reads only its config, not the document again.
    #[must_use]
    pub fn new_base_loaded(mut self, doc: Document) -> Self {
        self.new_base_doc = Some(doc);
        self
    }
}

/// The base an image records: `org.opencontainers.image.base.name` and `.base.digest`, of the
/// image itself or, for an index that has none, of its first child.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedBase {
    /// The base's reference as recorded (a distribution reference, or an `oci:` reference for
    /// a layout base).
    pub name: Option<String>,
    /// The base's manifest (or index) digest.
    pub digest: Option<Digest>,
}

/// Reads what `image` records of its base (see [`RecordedBase`]); reads the first child of an
/// index that records nothing itself. A `base.digest` ociup cannot parse counts as absent.
///
/// # Errors
/// Store errors reading the child.
pub async fn recorded_base<S: Store>(store: &S, image: &Document) -> Result<RecordedBase> {
    let of = |m: Option<&std::collections::HashMap<String, String>>| RecordedBase {
        name: m.and_then(|a| a.get(annotations::BASE_NAME).cloned()),
        digest: m
            .and_then(|a| a.get(annotations::BASE_DIGEST))
            .and_then(|d| d.parse().ok()),
    };
    Ok(match image {
        Document::Manifest(m) => of(m.parsed().annotations().as_ref()),
        Document::Index(i) => {
            let own = of(i.parsed().annotations().as_ref());
            match i.parsed().manifests().first() {
                Some(first) if own.name.is_none() => {
                    let d = Digest::try_from(first.digest())?;
                    match load_document(store, &ManifestRef::Digest(d)).await? {
                        Document::Manifest(m) => of(m.parsed().annotations().as_ref()),
                        Document::Index(_) => RecordedBase::default(),
                    }
                }
                _ => own,
            }
        }
    })
}

/// A base image as loaded: its store, its document and, when that is a single manifest, the
/// manifest with its config (read at once, in parallel with everything else).
struct Base<'a, S> {
    store: &'a S,
    doc: Document,
    image: Option<super::Image>,
    cache: Option<&'a BlobCache>,
}

impl<'a, S: Store> Base<'a, S> {
    async fn load(store: &'a S, doc: Document, cache: Option<&'a BlobCache>) -> Result<Self> {
        let image = match &doc {
            Document::Manifest(_) => {
                Some(image_from_document_cached(store, doc.clone(), None, cache).await?)
            }
            Document::Index(_) => None,
        };
        Ok(Base {
            store,
            doc,
            image,
            cache,
        })
    }

    /// The manifest and config for `platform`: the one image, or the index's match.
    async fn for_platform(&self, platform: &PlatformSpec) -> Result<super::Image> {
        match &self.image {
            Some(i) => Ok(i.clone()),
            None => {
                image_from_document_cached(self.store, self.doc.clone(), Some(platform), self.cache)
                    .await
            }
        }
    }
}

fn platform_of(m: &oci_spec::image::Descriptor) -> Option<PlatformSpec> {
    m.platform().as_ref().map(|p| PlatformSpec {
        os: p.os().to_string(),
        architecture: p.architecture().to_string(),
        variant: p.variant().clone(),
    })
}

fn config_platform(c: &crate::config::Config) -> PlatformSpec {
    PlatformSpec {
        os: c.str_field("os").unwrap_or("").to_owned(),
        architecture: c.str_field("architecture").unwrap_or("").to_owned(),
        variant: c.str_field("variant").map(str::to_owned),
    }
}

/// Attestations are manifests for platform `unknown/unknown` (BuildKit's provenance and SBOMs).
fn is_attestation(m: &oci_spec::image::Descriptor) -> bool {
    let unknown = m.platform().as_ref().is_some_and(|p| {
        p.os().to_string() == "unknown" && p.architecture().to_string() == "unknown"
    });
    let typed = m.annotations().as_ref().is_some_and(|a| {
        a.get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
    });
    unknown || typed
}

/// Rebases the request's image from its old base onto its new base, writing the result to
/// `dest` under `tag` (untagged when `None`). The two bases are fetched in parallel.
///
/// An index is rebased platform by platform against the same platform of the new base (and of
/// the old base). Attestation manifests (`unknown/unknown`) that refer to a rebased child are
/// dropped, as they attest a build the index no longer holds; others are kept as they are. With
/// `platforms`, only those platforms are rebased and written.
///
/// # Errors
/// Store errors, [`Error::InvalidChange`] from [`mutate::rebase`] (not built on the old base,
/// platform mismatch) and when the new base lacks one of the image's platforms;
/// [`Error::InvalidDocument`] when a result would be larger than ociup reads back.
///
/// # Example
///
/// An app appended on base v1, then put on base v2, all in one layout:
///
/// ```
/// use ociup_core::layer::{LayerBuilder, LayerOptions};
/// use ociup_core::layout::OciLayout;
/// use ociup_core::ops::rebase::{RebaseOptions, RebaseRequest, rebase_image};
/// use ociup_core::ops::{self, AppendBase, AppendRequest};
/// use ociup_core::reference::PlatformSpec;
/// use ociup_core::store::{ManifestRef, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ociup_core::Result<()> {
/// let dir = tempfile::tempdir().map_err(|e| ociup_core::Error::io("a temporary directory", e))?;
/// let layout = OciLayout::open_or_create(dir.path().join("images"))?;
/// let platform: PlatformSpec = "linux/amd64".parse()?;
/// let one_file = |path: &str| -> ociup_core::Result<AppendRequest> {
///     let mut layer = LayerBuilder::new(LayerOptions::default());
///     layer.add_bytes(path, path.as_bytes().to_vec(), 0o644)?;
///     Ok(AppendRequest { layers: vec![(layer, path.into())], ..AppendRequest::default() })
/// };
/// // Two versions of a base, and an app on the first.
/// for (tag, file) in [("base-1", "/etc/v1"), ("base-2", "/etc/v2")] {
///     ops::append_image::<OciLayout, _>(
///         AppendBase::Scratch(&platform), &layout, Some(tag), one_file(file)?, dir.path(),
///     )
///     .await?;
/// }
/// let base = ops::load_image(&layout, &ManifestRef::Tag("base-1".into()), None).await?;
/// let name = format!("oci:{}:base-1", layout.root().display());
/// let base = AppendBase::Image { store: &layout, image: &base, name: &name };
/// ops::append_image(base, &layout, Some("app-1"), one_file("/opt/app")?, dir.path()).await?;
///
/// // The app's own layer on base-2: the old base is what the app records.
/// let app = ops::load_document(&layout, &ManifestRef::Tag("app-1".into())).await?;
/// let request = RebaseRequest::new(&layout, app, &layout, ManifestRef::Tag("base-2".into()));
/// let outcome =
///     rebase_image(request, &layout, Some("app-2"), &RebaseOptions::default()).await?;
/// assert!(outcome.written && !outcome.already_current);
/// let plan = &outcome.platforms[0].plan;
/// assert_eq!((plan.removed_layers.len(), plan.added_layers.len()), (1, 1));
/// assert_eq!(layout.resolve_tag("app-2").await?.digest().to_string(), outcome.digest);
/// # Ok(())
/// # }
/// ```
pub async fn rebase_image<I: Store, N: Store, O: Store, D: Store>(
    request: RebaseRequest<'_, I, N, O>,
    dest: &D,
    tag: Option<&str>,
    opts: &RebaseOptions,
) -> Result<RebaseOutcome> {
    // A single manifest rebased onto another base gets a new config: the destination opens its
    // upload (a registry's POST) while the configs are read, so that only the config's PUT and
    // the manifest's are left once they are. Only where the old base is read too (as `ociup
    // rebase` does): a rebase on the recorded base alone (a managed upgrade) reads little to
    // hide the POST behind, and its regenerations often replay a config the repository holds,
    // where the upload would go unused. Not when the image visibly sits on the new base already
    // (nothing is written then). An upload that goes unused (the destination turns out to hold
    // the config, an error) is cancelled, never left open.
    let speculate = !opts.dry_run
        && matches!(request.image, Document::Manifest(_))
        && !matches!(request.old_base, OldBaseSource::Recorded)
        && !visibly_current(
            &request.old_base,
            &request.new_base,
            request.new_base_doc.as_ref(),
        );
    let upload = if speculate {
        UploadSlot::opening()
    } else {
        UploadSlot::none()
    };
    // Opened beside everything else, its POST sent first (the slowest request of the reads,
    // written to disk by the registry): only the config's upload waits for it. (A failure to
    // open it is left to the upload proper to meet, or not.)
    let open = async {
        if speculate {
            upload.settle(dest.open_upload().await.ok().flatten());
        }
    };
    // Boxed: the reads, mounts and uploads make a deep future, polled in place it outgrows a
    // worker thread's stack in a debug build (a service's run regenerating an image).
    let reading = Box::pin(rebase_reading(request, dest, tag, opts, &upload));
    let ((), result) = futures_util::future::join(open, reading).await;
    if let Some(u) = take_upload(&upload) {
        cancel_upload(dest, u).await;
    }
    result
}

/// Whether the image's base is known, from what is at hand without a request, to be the new
/// base: the old base's digest (loaded or pinned) is the new base's.
fn visibly_current<O: Store>(
    old_base: &OldBaseSource<'_, O>,
    new_base: &ManifestRef,
    new_base_doc: Option<&Document>,
) -> bool {
    let new = match (new_base_doc, new_base) {
        (Some(d), _) => d.raw().digest().to_string(),
        (None, ManifestRef::Digest(d)) => d.to_string(),
        (None, ManifestRef::Tag(_)) => return false,
    };
    let old = match old_base {
        OldBaseSource::Loaded(_, d) => Some(d.raw().digest().to_string()),
        OldBaseSource::Image(_, ManifestRef::Digest(d)) => Some(d.to_string()),
        OldBaseSource::Image(..) | OldBaseSource::Recorded => None,
    };
    old.as_deref() == Some(new.as_str())
}

/// [`rebase_image`] with `upload` being opened (or not) beside it; whatever of it is left in
/// `upload` the caller cancels.
async fn rebase_reading<I: Store, N: Store, O: Store, D: Store>(
    request: RebaseRequest<'_, I, N, O>,
    dest: &D,
    tag: Option<&str>,
    opts: &RebaseOptions,
    upload: &UploadSlot,
) -> Result<RebaseOutcome> {
    let RebaseRequest {
        image_store,
        image: image_doc,
        new_base_store,
        new_base,
        new_base_doc,
        old_base,
    } = request;
    let new_base = &new_base;
    let cache = opts.cache.as_ref();
    // The image's config and both bases are independent: fetch them at once, with each base's
    // config when the base is a single manifest.
    let old_fut = async {
        match &old_base {
            OldBaseSource::Image(s, r) => {
                let d = load_document(*s, r).await?;
                Base::load(*s, d, cache).map_ok(Some).await
            }
            OldBaseSource::Loaded(s, d) => Base::load(*s, (**d).clone(), cache).map_ok(Some).await,
            OldBaseSource::Recorded => Ok(None),
        }
    };
    let new_fut = async {
        let d = match new_base_doc {
            Some(d) => d,
            None => load_document(new_base_store, new_base).await?,
        };
        Base::load(new_base_store, d, cache).await
    };
    let image_cfg_fut = async {
        match (&image_doc, &opts.image_config) {
            (Document::Manifest(_), Some(c)) => Ok(Some(c.clone())),
            (Document::Manifest(_), None) => {
                image_from_document_cached(image_store, image_doc.clone(), None, cache)
                    .map_ok(|i| Some(i.config))
                    .await
            }
            (Document::Index(_), _) => Ok(None),
        }
    };
    let (new, old, image_cfg) =
        futures_util::future::try_join3(new_fut, old_fut, image_cfg_fut).await?;

    let mut outcome = RebaseOutcome {
        digest: image_doc.raw().digest().to_string(),
        media_type: image_doc.raw().media_type().to_owned(),
        already_current: false,
        platforms: Vec::new(),
        blobs: Vec::new(),
        dropped_attestations: Vec::new(),
        written: false,
        document: Some(image_doc.raw().clone()),
        config: None,
    };

    match &image_doc {
        Document::Manifest(m) => {
            let image_cfg = image_cfg.ok_or_else(|| Error::InvalidChange {
                reason: "the image's config was not read".into(),
            })?;
            let platform = config_platform(&image_cfg);
            let rebased = rebase_one(m, &image_cfg, &platform, old.as_ref(), &new, opts).await?;
            outcome.already_current = rebased.plan.already_current;
            outcome.digest = rebased.manifest.digest().to_string();
            outcome.document = Some(rebased.manifest.clone());
            if !rebased.plan.already_current {
                outcome.config = Some(rebased.config.clone());
                write_one(
                    image_store,
                    new_base_store,
                    dest,
                    &rebased,
                    tag,
                    &mut outcome.blobs,
                    opts.dry_run,
                    upload,
                )
                .await?;
                outcome.written = !opts.dry_run;
            }
            outcome.platforms.push(PlatformRebase {
                platform: None,
                digest: rebased.manifest.digest().to_string(),
                plan: rebased.plan,
            });
        }
        Document::Index(index) => {
            rebase_index(
                image_store,
                index,
                old.as_ref(),
                &new,
                dest,
                tag,
                opts,
                &mut outcome,
            )
            .await?;
        }
    }
    Ok(outcome)
}

async fn rebase_one<O: Store, N: Store>(
    manifest: &Manifest,
    image_cfg: &crate::config::Config,
    platform: &PlatformSpec,
    old: Option<&Base<'_, O>>,
    new: &Base<'_, N>,
    opts: &RebaseOptions,
) -> Result<mutate::Rebased> {
    let new_fut = new.for_platform(platform).map_err(|e| match e {
        Error::InvalidChange { reason } => Error::InvalidChange {
            reason: format!("the new base: {reason}"),
        },
        other => other,
    });
    let old_fut = async {
        match old {
            Some(o) => o.for_platform(platform).map_ok(Some).await,
            None => Ok(None),
        }
    };
    let (new, old_img) = futures_util::future::try_join(new_fut, old_fut).await?;
    let old_base = match &old_img {
        Some(o) => OldBase::Image {
            manifest: &o.manifest,
            config: &o.config,
        },
        None => OldBase::Recorded,
    };
    let rebased = mutate::rebase(&RebaseInput {
        image: manifest,
        image_config: image_cfg,
        old_base,
        new_base: &new.manifest,
        new_base_config: &new.config,
        new_base_name: opts.new_base_name.as_deref(),
        config: opts.config.clone(),
        created: opts.created,
    })?;
    check_document_size("config", &rebased.config)?;
    check_document_size("manifest", &rebased.manifest)?;
    Ok(rebased)
}

/// Writes (or plans) one rebased manifest with what it needs: new base layers from the new
/// base's store, own layers from the image's (both present already when all share a
/// repository), and its config: through `upload` when one was opened for it (a config found
/// present leaves it there, or cancels it beside the manifest's PUT).
#[allow(clippy::too_many_arguments)]
async fn write_one<I: Store, N: Store, D: Store>(
    image_store: &I,
    new_store: &N,
    dest: &D,
    rebased: &mutate::Rebased,
    tag: Option<&str>,
    blobs: &mut Vec<BlobAction>,
    dry_run: bool,
    upload: &UploadSlot,
) -> Result<()> {
    let mut jobs = Vec::new();
    for l in &rebased.plan.added_layers {
        jobs.push((l.digest.parse::<Digest>()?, l.size, Source::NewBase));
    }
    for l in &rebased.plan.own_layers {
        jobs.push((l.digest.parse::<Digest>()?, l.size, Source::Image));
    }
    if dry_run {
        for (d, size, _) in &jobs {
            let action = if dest.blob_exists(d).await? {
                "present"
            } else if matches!(
                (new_store.mount_source(), dest.mount_source()),
                (Some(a), Some(b)) if a.registry == b.registry && a.repository != b.repository
            ) {
                "mount"
            } else {
                "copy"
            };
            blobs.push(BlobAction {
                digest: d.to_string(),
                size: *size,
                action: action.into(),
            });
        }
        return Ok(());
    }
    let layers = jobs.len();
    let config = &rebased.config;
    jobs.push((config.digest().clone(), config.size(), Source::Config));
    let digests: Vec<Digest> = jobs.iter().map(|(d, _, _)| d.clone()).collect();
    // Own layers are in the image's store by construction: nothing to check when that is the
    // destination.
    let own_here = image_store.location() == dest.location();
    // The config, through the opened upload while there is one (waiting for its POST if that
    // is still out); `check`: not when the destination has it (the upload is kept, for the
    // caller to cancel).
    let put_config = |check: bool| {
        let (digest, size, _) = &jobs[jobs.len() - 1];
        async move {
            upload.settled().await;
            match take_upload(upload) {
                Some(u) => {
                    if check {
                        let exists = dest.blob_exists(digest).await;
                        if !matches!(exists, Ok(false)) {
                            keep_upload(upload, u);
                            return exists.map(|_| BlobCopy::Copied);
                        }
                    }
                    dest.put_blob_into(u, digest, *size, config.bytes()).await
                }
                // Checked before uploading: re-uploading a config the repository has rewrites
                // its link, which on Distribution races with another writer's manifest PUT.
                None if check => dest.put_blob(digest, *size, config.bytes()).await,
                None => dest.put_new_blob(digest, *size, config.bytes()).await,
            }
            .map(|()| BlobCopy::Copied)
        }
    };
    let supply = |i: usize, known_missing: bool| {
        let (digest, size, source) = &jobs[i];
        async move {
            match (source, known_missing) {
                (Source::Image, false) if own_here => Ok(BlobCopy::Present),
                (Source::Image, false) => copy_blob(image_store, dest, digest, *size).await,
                (Source::Image, true) => {
                    copy_missing_blob(image_store, dest, digest, *size, |_| {}).await
                }
                (Source::NewBase, false) => copy_blob(new_store, dest, digest, *size).await,
                (Source::NewBase, true) => {
                    copy_missing_blob(new_store, dest, digest, *size, |_| {}).await
                }
                (Source::Config, known_missing) => put_config(!known_missing).await,
            }
        }
    };
    let done = match dest.known_blobs(&digests) {
        // The destination names what it lacks and was seen holding some of these before:
        // supply the others at once, cheaply (a mount answers whether or not the blob was
        // there; the config is new unless seen), and put the manifest with its tag, no probe.
        // A blob gone since it was seen is named by the refusal and supplied then.
        Some(known) => {
            // A config known there leaves the opened upload unused: cancelled beside the rest
            // once its POST is answered (the manifest's PUT does not wait for that).
            let config_known = known.last().copied().unwrap_or(false);
            let mountable = matches!(
                (new_store.mount_source(), dest.mount_source()),
                (Some(a), Some(b)) if a.registry == b.registry && a.repository != b.repository
            );
            let first = |i: usize| {
                let (digest, size, source) = &jobs[i];
                let known = known.get(i).copied().unwrap_or(false);
                async move {
                    match source {
                        _ if known => Ok(BlobCopy::Present),
                        Source::Image if own_here => Ok(BlobCopy::Present),
                        Source::NewBase if mountable => {
                            copy_missing_blob(new_store, dest, digest, *size, |_| {}).await
                        }
                        Source::Config => put_config(false).await,
                        // Elsewhere a blob is checked before its bytes are sent.
                        _ => supply(i, false).await,
                    }
                }
            };
            let write = async {
                let supplied =
                    futures_util::future::try_join_all((0..jobs.len()).map(first)).await?;
                let supplied = supplied.into_iter().map(Some).collect();
                put_manifest_after_blobs(dest, &rebased.manifest, tag, &digests, supplied, supply)
                    .await
            };
            let cancel = async {
                if config_known {
                    upload.settled().await;
                    if let Some(u) = take_upload(upload) {
                        cancel_upload(dest, u).await;
                    }
                }
            };
            futures_util::future::join(write, cancel).await.0?
        }
        None => put_manifest_with_blobs(dest, &rebased.manifest, tag, &digests, supply).await?,
    };
    for ((d, size, _), how) in jobs.iter().zip(done).take(layers) {
        let action = match how {
            BlobCopy::Present => "present",
            BlobCopy::Mounted => "mounted",
            BlobCopy::Copied => "copied",
        };
        blobs.push(BlobAction {
            digest: d.to_string(),
            size: *size,
            action: action.into(),
        });
    }
    Ok(())
}

/// Where a blob of a rebased manifest comes from.
enum Source {
    NewBase,
    Image,
    Config,
}

#[allow(clippy::too_many_arguments)]
async fn rebase_index<I: Store, O: Store, N: Store, D: Store>(
    image_store: &I,
    index: &Index,
    old: Option<&Base<'_, O>>,
    new: &Base<'_, N>,
    dest: &D,
    tag: Option<&str>,
    opts: &RebaseOptions,
    outcome: &mut RebaseOutcome,
) -> Result<()> {
    let mut value: serde_json::Map<String, Value> = serde_json::from_slice(index.raw().bytes())
        .map_err(|source| Error::MalformedDocument {
            what: format!("index {}", index.raw().digest()),
            source,
        })?;
    let entries: Vec<Value> = value
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let descriptors = index.parsed().manifests();
    let mut new_entries = Vec::new();
    let mut all_current = true;
    let mut pending_attestations = Vec::new();
    for (entry, desc) in entries.iter().zip(descriptors) {
        if is_attestation(desc) {
            pending_attestations.push(entry.clone());
            continue;
        }
        let Some(platform) = platform_of(desc) else {
            new_entries.push(entry.clone());
            continue;
        };
        let wanted = opts.platforms.is_empty()
            || opts.platforms.iter().any(|p| {
                p.os == platform.os
                    && p.architecture == platform.architecture
                    && (p.variant.is_none() || p.variant == platform.variant)
            });
        if !wanted {
            continue;
        }
        let digest = Digest::try_from(desc.digest())?;
        let child = Manifest::parse(
            image_store
                .get_manifest(&ManifestRef::Digest(digest.clone()))
                .await?,
        )?;
        let cfg = image_from_document_cached(
            image_store,
            Document::Manifest(child.clone()),
            None,
            opts.cache.as_ref(),
        )
        .await?
        .config;
        let rebased = rebase_one(&child, &cfg, &platform, old, new, opts).await?;
        let mut e = entry.clone();
        if !rebased.plan.already_current {
            all_current = false;
            write_one(
                image_store,
                new.store,
                dest,
                &rebased,
                None,
                &mut outcome.blobs,
                opts.dry_run,
                &UploadSlot::none(),
            )
            .await?;
            e["digest"] = rebased.manifest.digest().to_string().into();
            e["size"] = rebased.manifest.size().into();
            // Platform fields (os.version, variant, os.features) as the new base has them.
            if let Document::Index(ni) = &new.doc
                && let Some(nd) = super::select_platform(ni, &platform)
                && let Some(np) = nd.platform()
            {
                e["platform"] = serde_json::to_value(np).unwrap_or_else(|_| e["platform"].clone());
            }
        }
        outcome.platforms.push(PlatformRebase {
            platform: Some(platform.to_string()),
            digest: rebased.manifest.digest().to_string(),
            plan: rebased.plan,
        });
        new_entries.push(e);
    }
    if outcome.platforms.is_empty() {
        return Err(Error::InvalidChange {
            reason: format!(
                "index {} has none of the platforms asked for",
                index.raw().digest()
            ),
        });
    }
    // An attestation stays only while the manifest it describes is in the index unchanged.
    let kept: Vec<String> = new_entries
        .iter()
        .filter_map(|e| e.get("digest").and_then(Value::as_str).map(str::to_owned))
        .collect();
    for a in pending_attestations {
        let refers = a
            .get("annotations")
            .and_then(|x| x.get("vnd.docker.reference.digest"))
            .and_then(Value::as_str);
        match refers {
            Some(r) if !kept.iter().any(|k| k == r) => outcome.dropped_attestations.push(
                a.get("digest")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            ),
            _ => new_entries.push(a),
        }
    }
    outcome.already_current = all_current && opts.platforms.is_empty();
    if outcome.already_current {
        return Ok(());
    }
    value.insert("manifests".into(), Value::Array(new_entries));
    let mut ann: serde_json::Map<String, Value> = value
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(n) = &opts.new_base_name {
        ann.insert(
            annotations::BASE_NAME.into(),
            crate::reference::base_name(n).into(),
        );
    }
    ann.insert(
        annotations::BASE_DIGEST.into(),
        new.doc.raw().digest().to_string().into(),
    );
    value.insert("annotations".into(), Value::Object(ann));
    let raw = RawDocument::canonical(&Value::Object(value), index.raw().media_type())?;
    check_document_size("index", &raw)?;
    outcome.digest = raw.digest().to_string();
    outcome.document = Some(raw.clone());
    if !opts.dry_run {
        dest.put_manifest(&raw, tag).await?;
        outcome.written = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{LayerBuilder, LayerOptions};
    use crate::layout::OciLayout;
    use crate::ops::testing::Counted;
    use crate::ops::{self, AppendBase, AppendRequest};
    use crate::store::BlobReader;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncRead;

    /// A layout that opens uploads ahead as a registry does, counting what becomes of them.
    struct Ahead<'a> {
        inner: &'a OciLayout,
        opened: AtomicUsize,
        used: AtomicUsize,
        cancelled: AtomicUsize,
    }

    impl<'a> Ahead<'a> {
        fn new(inner: &'a OciLayout) -> Self {
            Ahead {
                inner,
                opened: AtomicUsize::new(0),
                used: AtomicUsize::new(0),
                cancelled: AtomicUsize::new(0),
            }
        }

        /// (opened, used, cancelled)
        fn counts(&self) -> (usize, usize, usize) {
            let n = |a: &AtomicUsize| a.load(Ordering::Relaxed);
            (n(&self.opened), n(&self.used), n(&self.cancelled))
        }
    }

    impl Store for Ahead<'_> {
        fn location(&self) -> String {
            self.inner.location()
        }
        async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
            self.inner.blob_size(digest).await
        }
        async fn get_blob(&self, digest: &Digest, size: u64) -> Result<BlobReader> {
            self.inner.get_blob(digest, size).await
        }
        async fn put_blob<R: AsyncRead + Send + Unpin>(
            &self,
            digest: &Digest,
            size: u64,
            data: R,
        ) -> Result<()> {
            self.inner.put_blob(digest, size, data).await
        }
        async fn get_manifest(&self, reference: &ManifestRef) -> Result<RawDocument> {
            self.inner.get_manifest(reference).await
        }
        async fn put_manifest(&self, document: &RawDocument, tag: Option<&str>) -> Result<()> {
            self.inner.put_manifest(document, tag).await
        }
        async fn resolve_tag(&self, tag: &str) -> Result<oci_spec::image::Descriptor> {
            self.inner.resolve_tag(tag).await
        }
        async fn list_tags(&self) -> Result<Vec<String>> {
            self.inner.list_tags().await
        }
        async fn open_upload(&self) -> Result<Option<OpenUpload>> {
            let n = self.opened.fetch_add(1, Ordering::Relaxed);
            Ok(Some(OpenUpload {
                location: format!("upload-{n}"),
            }))
        }
        async fn put_blob_into<R: AsyncRead + Send + Unpin>(
            &self,
            upload: OpenUpload,
            digest: &Digest,
            size: u64,
            data: R,
        ) -> Result<()> {
            assert!(upload.location.starts_with("upload-"));
            self.used.fetch_add(1, Ordering::Relaxed);
            self.inner.put_blob(digest, size, data).await
        }
        async fn cancel_upload(&self, upload: OpenUpload) -> Result<()> {
            assert!(upload.location.starts_with("upload-"));
            self.cancelled.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn one_file(path: &str) -> AppendRequest {
        let mut layer = LayerBuilder::new(LayerOptions::default());
        layer
            .add_bytes(path, path.as_bytes().to_vec(), 0o644)
            .unwrap();
        AppendRequest {
            layers: vec![(layer, path.into())],
            ..AppendRequest::default()
        }
    }

    /// base-1, base-2 and app-1 (on base-1, recorded as named `name`) in one layout.
    async fn app_on_base_1(dir: &std::path::Path, name: &str) -> OciLayout {
        let layout = OciLayout::open_or_create(dir.join("l")).unwrap();
        let platform: PlatformSpec = "linux/amd64".parse().unwrap();
        for (tag, file) in [("base-1", "/v1"), ("base-2", "/v2")] {
            ops::append_image::<OciLayout, _>(
                AppendBase::Scratch(&platform),
                &layout,
                Some(tag),
                one_file(file),
                dir,
            )
            .await
            .unwrap();
        }
        let base = ops::load_image(&layout, &ManifestRef::Tag("base-1".into()), None)
            .await
            .unwrap();
        let base = AppendBase::Image {
            store: &layout,
            image: &base,
            name,
        };
        ops::append_image(base, &layout, Some("app-1"), one_file("/app"), dir)
            .await
            .unwrap();
        layout
    }

    #[tokio::test]
    async fn the_old_base_may_be_in_another_kind_of_store() {
        let t = tempfile::tempdir().unwrap();
        let layout = app_on_base_1(t.path(), "reg.example/base:1").await;
        let app = load_document(&layout, &ManifestRef::Tag("app-1".into()))
            .await
            .unwrap();
        // The old base through a store of another type than the new base's.
        let old_store = Counted::new(&layout, 100);
        let old_ref = ManifestRef::Tag("base-1".into());
        let request = RebaseRequest::new(&layout, app, &layout, ManifestRef::Tag("base-2".into()))
            .old_base(OldBaseSource::Image(&old_store, &old_ref));
        let outcome = rebase_image(request, &layout, Some("app-2"), &RebaseOptions::default())
            .await
            .unwrap();
        assert!(outcome.written);
        assert_eq!(
            old_store.reads(),
            1,
            "the old base was read from its own store"
        );
    }

    #[tokio::test]
    async fn an_upload_opened_ahead_is_used_or_cancelled() {
        let t = tempfile::tempdir().unwrap();
        let layout = app_on_base_1(t.path(), "reg.example/base:1").await;
        let rebase = |old: &'static str, to: &'static str, dry_run: bool, created: u64| {
            let layout = &layout;
            async move {
                let dest = Ahead::new(layout);
                let old_ref = ManifestRef::Tag(old.into());
                let image = load_document(layout, &ManifestRef::Tag("app-1".into()))
                    .await
                    .unwrap();
                let request =
                    RebaseRequest::new(layout, image, layout, ManifestRef::Tag("base-2".into()))
                        .old_base(OldBaseSource::Image(layout, &old_ref));
                let opts = RebaseOptions {
                    dry_run,
                    created: Some(created),
                    ..RebaseOptions::default()
                };
                let result = rebase_image(request, &dest, Some(to), &opts).await;
                (result.map(|o| o.written), dest.counts())
            }
        };
        // A new config: it goes through the upload opened while the configs were read.
        let (written, counts) = rebase("base-1", "app-2", false, 1).await;
        assert!(written.unwrap());
        assert_eq!(counts, (1, 1, 0));
        // The same config again: the store has it, the upload is cancelled.
        let (written, counts) = rebase("base-1", "app-2b", false, 1).await;
        assert!(written.unwrap());
        assert_eq!(counts, (1, 0, 1));
        // The rebase fails (the app is not built on base-2): cancelled too.
        let (written, counts) = rebase("base-2", "app-3", false, 2).await;
        assert!(written.is_err());
        assert_eq!(counts, (1, 0, 1));
        // A plan opens nothing.
        let (written, counts) = rebase("base-1", "app-4", true, 3).await;
        assert!(!written.unwrap());
        assert_eq!(counts, (0, 0, 0));
        // Nor does a rebase on the recorded base alone.
        let dest = Ahead::new(&layout);
        let app = load_document(&layout, &ManifestRef::Tag("app-1".into()))
            .await
            .unwrap();
        let request = RebaseRequest::new(&layout, app, &layout, ManifestRef::Tag("base-2".into()));
        let opts = RebaseOptions {
            created: Some(4),
            ..RebaseOptions::default()
        };
        assert!(
            rebase_image(request, &dest, Some("app-5"), &opts)
                .await
                .unwrap()
                .written
        );
        assert_eq!(dest.counts(), (0, 0, 0));
    }

    #[tokio::test]
    async fn the_recorded_base_is_read_from_the_image() {
        let t = tempfile::tempdir().unwrap();
        let layout = app_on_base_1(t.path(), "docker://reg.example/base:1").await;
        let app = load_document(&layout, &ManifestRef::Tag("app-1".into()))
            .await
            .unwrap();
        let base_1 = layout.resolve_tag("base-1").await.unwrap();
        assert_eq!(
            recorded_base(&layout, &app).await.unwrap(),
            RecordedBase {
                name: Some("reg.example/base:1".into()),
                digest: Some(Digest::try_from(base_1.digest()).unwrap()),
            }
        );
        let base_2 = load_document(&layout, &ManifestRef::Tag("base-2".into()))
            .await
            .unwrap();
        assert_eq!(
            recorded_base(&layout, &base_2).await.unwrap(),
            RecordedBase::default()
        );
    }
}

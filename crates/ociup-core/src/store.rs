//! The operations every store offers: an OCI layout directory here, a registry repository in
//! `ociup-registry`. Transforms take and return values; these move bytes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use oci_spec::image::Descriptor;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::digest::Digest;
use crate::document::RawDocument;
use crate::error::{Error, Result};

/// A blob being read. Readers a store returns check size and digest as they stream and fail at
/// the end (or at the first extra byte) on a mismatch.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// What a manifest is asked for by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestRef {
    /// A tag.
    Tag(String),
    /// A digest.
    Digest(Digest),
}

impl fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestRef::Tag(t) => write!(f, ":{t}"),
            ManifestRef::Digest(d) => write!(f, "@{d}"),
        }
    }
}

/// Largest document (manifest, index, config) read whole into memory.
pub const MAX_DOCUMENT_SIZE: u64 = 16 * 1024 * 1024;

/// Refuses a document (manifest, index, config) ociup is about to write when it is larger than
/// [`MAX_DOCUMENT_SIZE`]: ociup never writes what it would refuse to read back.
///
/// # Errors
/// [`Error::InvalidDocument`] naming the document and both sizes.
pub fn check_document_size(what: &str, document: &RawDocument) -> Result<()> {
    if document.size() > MAX_DOCUMENT_SIZE {
        return Err(Error::InvalidDocument {
            what: format!("{what} {}", document.digest()),
            reason: format!(
                "it would be {} bytes, more than the {MAX_DOCUMENT_SIZE} bytes ociup reads back; \
                 not written",
                document.size()
            ),
        });
    }
    Ok(())
}

/// A place that holds blobs and manifests: one repository of a registry, or one OCI layout.
pub trait Store: Send + Sync {
    /// How to name this store in messages (`oci:/path`, `registry/repo`).
    fn location(&self) -> String;

    /// The size of a blob, or `None` if the store does not have it.
    fn blob_size(&self, digest: &Digest) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// A reader of a blob that checks its size and digest as it streams.
    fn get_blob(
        &self,
        digest: &Digest,
        size: u64,
    ) -> impl Future<Output = Result<BlobReader>> + Send;

    /// Stores a blob read from `data`, which must be exactly `size` bytes hashing to `digest`.
    /// Nothing is visible under `digest` unless it matched.
    fn put_blob<R: AsyncRead + Send + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        data: R,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A manifest or index, its bytes checked against its digest, with the media type the store
    /// holds it under (empty when the store does not know it; the document's own field decides).
    fn get_manifest(
        &self,
        reference: &ManifestRef,
    ) -> impl Future<Output = Result<RawDocument>> + Send;

    /// Stores a manifest or index, and points `tag` at it when given (without a tag it is stored
    /// by digest only). Call it only after every blob and child manifest it references is
    /// stored.
    fn put_manifest(
        &self,
        document: &RawDocument,
        tag: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// What a tag points to now (a registry answers this with one HEAD).
    fn resolve_tag(&self, tag: &str) -> impl Future<Output = Result<Descriptor>> + Send;

    /// Every tag, sorted.
    fn list_tags(&self) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Reads a blob without checking it, for a consumer that checks it itself: every
    /// [`Store::put_blob`] verifies size and digest as it writes, so a copy hashes each blob
    /// once, not twice. Defaults to [`Store::get_blob`].
    fn read_blob_raw(
        &self,
        digest: &Digest,
        size: u64,
    ) -> impl Future<Output = Result<BlobReader>> + Send {
        self.get_blob(digest, size)
    }

    /// [`Store::put_blob`] for a blob the caller has just seen missing: a store may skip its own
    /// existence check. Defaults to [`Store::put_blob`].
    fn put_new_blob<R: AsyncRead + Send + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        data: R,
    ) -> impl Future<Output = Result<()>> + Send {
        self.put_blob(digest, size, data)
    }

    /// Opens an upload for a blob that is not known yet, so that once it is its bytes go in one
    /// request (a registry: the upload's POST, sent while the blob is still being worked out).
    /// Finish it with [`Store::put_blob_into`] or give it up with [`Store::cancel_upload`].
    /// `None` where opening first saves nothing (the default).
    fn open_upload(&self) -> impl Future<Output = Result<Option<OpenUpload>>> + Send {
        async { Ok(None) }
    }

    /// [`Store::put_new_blob`] through `upload`, which [`Store::open_upload`] opened. Defaults
    /// to [`Store::put_new_blob`].
    fn put_blob_into<R: AsyncRead + Send + Unpin>(
        &self,
        upload: OpenUpload,
        digest: &Digest,
        size: u64,
        data: R,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = upload;
        self.put_new_blob(digest, size, data)
    }

    /// Gives up an upload [`Store::open_upload`] opened that nothing was put into (a registry:
    /// its DELETE), so that it is not left for the store to expire. The default does nothing.
    fn cancel_upload(&self, upload: OpenUpload) -> impl Future<Output = Result<()>> + Send {
        let _ = upload;
        async { Ok(()) }
    }

    /// Deletes the manifest `digest` (and, in a layout, every tag pointing at it). Blobs stay:
    /// a registry's garbage collector or a layout's owner removes those.
    ///
    /// The default refuses: not every store allows deletion.
    fn delete_manifest(&self, digest: &Digest) -> impl Future<Output = Result<()>> + Send {
        let location = self.location();
        let digest = digest.clone();
        async move {
            Err(Error::InvalidChange {
                reason: format!("{location} does not allow deleting {digest}"),
            })
        }
    }

    /// Whether the store has the manifest `digest` (a registry answers this with one HEAD).
    fn has_manifest(&self, digest: &Digest) -> impl Future<Output = Result<bool>> + Send {
        self.blob_exists(digest)
    }

    /// Where other stores of the same registry can mount this store's blobs from, if anywhere.
    fn mount_source(&self) -> Option<MountSource> {
        None
    }

    /// Makes `digest` of `source` available here without moving its bytes, when the store can
    /// (a registry, for a repository of the same registry). Returns whether it did.
    fn mount_blob(
        &self,
        digest: &Digest,
        source: &MountSource,
    ) -> impl Future<Output = Result<bool>> + Send {
        let _ = (digest, source);
        async { Ok(false) }
    }

    /// Puts `document` by digest only (never a tag: a store may take a manifest whose blobs it
    /// lacks, and a tag must not point at an incomplete image), once, to learn which blobs the
    /// store lacks; call it only where [`Store::rejects_missing_blobs`]. The default puts it
    /// untagged with [`Store::put_manifest`] and never counts an acceptance as proof of blobs.
    ///
    /// # Errors
    /// What is no answer of the store's (an invalid or oversized document, a refused login):
    /// a refusal the store answered is [`Probe::Refused`].
    fn probe_manifest(&self, document: &RawDocument) -> impl Future<Output = Result<Probe>> + Send {
        async move {
            match self.put_manifest(document, None).await {
                Ok(()) => Ok(Probe::Taken {
                    proves_blobs: false,
                }),
                Err(Error::MissingBlobs { digests, .. }) => Ok(Probe::Missing(digests)),
                Err(Error::Backend(_)) => Ok(Probe::Refused),
                Err(e) => Err(e),
            }
        }
    }

    /// Whether [`Store::put_manifest`] refuses a manifest that references a blob the store lacks,
    /// with [`Error::MissingBlobs`] naming it. A writer can then put a manifest first and supply
    /// only the blobs named, instead of checking every blob before. Defaults to `false`: the
    /// writer checks each blob itself.
    fn rejects_missing_blobs(&self) -> bool {
        false
    }

    /// For each of `digests`, whether the store is known to hold it without asking, from what
    /// was learnt before (a registry client remembers, for a while, blobs it saw in a
    /// repository). `None` unless the store [rejects missing blobs](Store::rejects_missing_blobs)
    /// naming them and is known to: a `true` may be stale, and only such a store turns that
    /// into a refusal naming the blob instead of an incomplete image. The default is `None`.
    fn known_blobs(&self, digests: &[Digest]) -> Option<Vec<bool>> {
        let _ = digests;
        None
    }

    /// Whether a manifest the store holds implies that it holds every blob and child manifest
    /// the manifest references, intact. A registry refuses a manifest whose blobs it lacks and
    /// checks every blob it takes, so `true` is the default; a layout directory is files anyone
    /// may have truncated or deleted since, so a copy into one checks each blob (its size, and
    /// with [`crate::copy::CopyOptions::verify`] its digest) instead of trusting the manifest.
    fn manifest_implies_blobs(&self) -> bool {
        true
    }

    /// Whether the store has the blob.
    fn blob_exists(&self, digest: &Digest) -> impl Future<Output = Result<bool>> + Send {
        async move { Ok(self.blob_size(digest).await?.is_some()) }
    }

    /// A small blob (a config) read whole and checked.
    fn get_blob_bytes(
        &self,
        digest: &Digest,
        size: u64,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send {
        async move {
            if size > MAX_DOCUMENT_SIZE {
                return Err(Error::InvalidDocument {
                    what: format!("blob {digest}"),
                    reason: format!(
                        "{size} bytes is larger than the {MAX_DOCUMENT_SIZE} bytes a config may have"
                    ),
                });
            }
            let mut reader = self.get_blob(digest, size).await?;
            let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            reader
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| Error::from_io(format!("reading blob {digest}"), e))?;
            Ok(bytes)
        }
    }
}

/// What [`Store::probe_manifest`] learnt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The store took the manifest (by digest, untagged). `proves_blobs` when the store is
    /// known to refuse a manifest whose blobs it lacks: only then is every blob present.
    Taken {
        /// Whether the acceptance proves every blob present.
        proves_blobs: bool,
    },
    /// Refused for these missing blobs (empty when the store did not say which).
    Missing(Vec<Digest>),
    /// Refused for another reason the store answered: every blob is to be checked.
    Refused,
}

/// An upload a store opened before it knew the blob ([`Store::open_upload`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenUpload {
    /// Where the store goes on with it (a registry: the upload's URL).
    pub location: String,
}

/// A repository a blob can be mounted from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSource {
    /// `host[:port]` of the registry.
    pub registry: String,
    /// The repository in it.
    pub repository: String,
}

/// What [`copy_blob`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobCopy {
    /// The destination had it.
    Present,
    /// Mounted from the source's repository: no bytes moved.
    Mounted,
    /// Streamed from source to destination.
    Copied,
}

/// Copies one blob from `src` to `dst` unless `dst` has it already, mounting it where both are
/// repositories of one registry. `progress` is told the bytes as they stream.
///
/// # Errors
/// Whatever the stores report; the blob is verified on the way.
pub async fn copy_blob<A: Store, B: Store>(
    src: &A,
    dst: &B,
    digest: &Digest,
    size: u64,
) -> Result<BlobCopy> {
    copy_blob_with(src, dst, digest, size, |_| {}).await
}

/// [`copy_blob`] with a callback for every chunk of bytes that streams through.
///
/// # Errors
/// As [`copy_blob`].
pub async fn copy_blob_with<A: Store, B: Store>(
    src: &A,
    dst: &B,
    digest: &Digest,
    size: u64,
    progress: impl Fn(u64) + Send + Sync,
) -> Result<BlobCopy> {
    // Check first, then mount: mounting a blob the repository already has rewrites its link,
    // and on Distribution that races with another writer's manifest PUT (seen as
    // MANIFEST_BLOB_UNKNOWN with eight processes resolving one nick at once).
    if dst.blob_exists(digest).await? {
        return Ok(BlobCopy::Present);
    }
    copy_missing_blob(src, dst, digest, size, progress).await
}

/// [`copy_blob_with`] for a blob `dst` is known to lack (it said so): no existence check.
///
/// # Errors
/// As [`copy_blob`].
pub async fn copy_missing_blob<A: Store, B: Store>(
    src: &A,
    dst: &B,
    digest: &Digest,
    size: u64,
    progress: impl Fn(u64) + Send + Sync,
) -> Result<BlobCopy> {
    if let Some(source) = src.mount_source()
        && dst.mount_blob(digest, &source).await?
    {
        return Ok(BlobCopy::Mounted);
    }
    // Verified once, by the destination as it writes.
    let reader = src.read_blob_raw(digest, size).await?;
    let counted = Counting {
        inner: reader,
        progress: &progress,
    };
    dst.put_new_blob(digest, size, counted).await?;
    Ok(BlobCopy::Copied)
}

/// Puts `document` into `dest` once `dest` has every blob in `blobs` (all the blobs the
/// document references that may be missing), and says what was done for each.
///
/// `supply(i, known_missing)` must make `blobs[i]` present in `dest` (mount, copy or upload it)
/// and say how; `known_missing` is true when `dest` has just said it lacks the blob, so the
/// supplier may skip its own existence check.
///
/// Where `dest` [rejects missing blobs](Store::rejects_missing_blobs), the document is put
/// first and only the blobs `dest` names are supplied before it is put again: within one
/// registry, a rebase onto base layers the repository already holds costs no request per
/// layer. Elsewhere every blob is supplied (checked) first.
///
/// # Errors
/// The supplier's errors, and the store's when it still refuses the document.
pub async fn put_manifest_with_blobs<D, F, Fut>(
    dest: &D,
    document: &RawDocument,
    tag: Option<&str>,
    blobs: &[Digest],
    supply: F,
) -> Result<Vec<BlobCopy>>
where
    D: Store,
    F: Fn(usize, bool) -> Fut,
    Fut: Future<Output = Result<BlobCopy>>,
{
    let done: Vec<Option<BlobCopy>> = vec![None; blobs.len()];
    if !dest.rejects_missing_blobs() {
        let copies =
            futures_util::future::try_join_all((0..blobs.len()).map(|i| supply(i, false))).await?;
        dest.put_manifest(document, tag).await?;
        return Ok(copies);
    }
    // Probed by digest: a tag is written only once the image is known complete.
    let probe = dest.probe_manifest(document).await?;
    supply_named(dest, document, tag, blobs, done, Some(probe), supply).await
}

/// [`put_manifest_with_blobs`] where the caller has made present (or knows present) the blobs
/// `done` says, on a store that [names what it lacks](Store::known_blobs) (`known_blobs` is
/// `Some`): no probe, the document is put with its tag at once, and blobs the store still
/// names are supplied then (`supply(i, true)`) before it is put again.
///
/// # Errors
/// As [`put_manifest_with_blobs`]; [`Error::InvalidChange`] when `done` and `blobs` differ in
/// length.
pub async fn put_manifest_after_blobs<D, F, Fut>(
    dest: &D,
    document: &RawDocument,
    tag: Option<&str>,
    blobs: &[Digest],
    done: Vec<Option<BlobCopy>>,
    supply: F,
) -> Result<Vec<BlobCopy>>
where
    D: Store,
    F: Fn(usize, bool) -> Fut,
    Fut: Future<Output = Result<BlobCopy>>,
{
    if done.len() != blobs.len() {
        return Err(Error::InvalidChange {
            reason: "one state for each blob expected".into(),
        });
    }
    supply_named(dest, document, tag, blobs, done, None, supply).await
}

/// The rounds of [`put_manifest_with_blobs`] after its probe (`probe`), or with none: the
/// document is put, and the blobs the store names supplied, a few times at most.
async fn supply_named<D, F, Fut>(
    dest: &D,
    document: &RawDocument,
    tag: Option<&str>,
    blobs: &[Digest],
    mut done: Vec<Option<BlobCopy>>,
    mut probe: Option<Probe>,
    supply: F,
) -> Result<Vec<BlobCopy>>
where
    D: Store,
    F: Fn(usize, bool) -> Fut,
    Fut: Future<Output = Result<BlobCopy>>,
{
    // A few rounds at most: a store that names the missing blobs needs one.
    for _ in 0..3 {
        let named = match probe.take() {
            Some(Probe::Taken { proves_blobs: true }) => {
                if tag.is_some() {
                    dest.put_manifest(document, tag).await?;
                }
                return Ok(vec![BlobCopy::Present; blobs.len()]);
            }
            // Taken by a store that may not check blobs, or refused for another reason: every
            // blob is checked and supplied, then the manifest put with its tag.
            Some(Probe::Taken { .. } | Probe::Refused) => Vec::new(),
            Some(Probe::Missing(digests)) => digests,
            None => match dest.put_manifest(document, tag).await {
                Ok(()) => {
                    return Ok(done
                        .into_iter()
                        .map(|d| d.unwrap_or(BlobCopy::Present))
                        .collect());
                }
                Err(Error::MissingBlobs { digests, .. }) => digests,
                Err(e) => return Err(e),
            },
        };
        // A blob only believed present (known from before, or found by a check) that the store
        // names is supplied after all.
        let wanted: Vec<usize> = (0..blobs.len())
            .filter(|&i| {
                matches!(done[i], None | Some(BlobCopy::Present)) && named.contains(&blobs[i])
            })
            .collect();
        // Named nothing we can supply (or did not say which): check and supply every blob not
        // yet supplied, then try once more.
        let (wanted, known_missing) = if wanted.is_empty() {
            let rest: Vec<usize> = (0..blobs.len()).filter(|&i| done[i].is_none()).collect();
            if rest.is_empty() {
                break;
            }
            (rest, false)
        } else {
            (wanted, true)
        };
        let copies =
            futures_util::future::try_join_all(wanted.iter().map(|&i| supply(i, known_missing)))
                .await?;
        for (i, c) in wanted.into_iter().zip(copies) {
            done[i] = Some(c);
        }
    }
    dest.put_manifest(document, tag).await?;
    Ok(done
        .into_iter()
        .map(|d| d.unwrap_or(BlobCopy::Present))
        .collect())
}

/// An `AsyncRead` that reports how many bytes pass.
struct Counting<'a, R, F> {
    inner: R,
    progress: &'a F,
}

impl<R: AsyncRead + Unpin, F: Fn(u64)> AsyncRead for Counting<'_, R, F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            (self.progress)(n as u64);
        }
        r
    }
}

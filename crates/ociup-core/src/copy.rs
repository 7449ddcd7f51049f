//! Copying images between any two stores: only missing blobs move, blobs are mounted where both
//! stores are repositories of one registry, blobs go in parallel with a bound, a manifest is
//! written after its blobs and an index after its manifests.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::StreamExt;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::digest::Digest;
use crate::document::{Document, RawDocument};
use crate::error::{Error, Result};
use crate::media_type::{self, DocumentKind};
use crate::ops;
use crate::reference::PlatformSpec;
use crate::store::{BlobCopy, ManifestRef, Probe, Store, copy_blob_with, copy_missing_blob};

/// Blobs a copy into a layout holds at once, per download slot ([`CopyOptions::jobs`]),
/// downloading or being made durable: a blob whose bytes have all arrived gives its slot to the
/// next one while its file is synced and renamed, so the network seldom waits for the disk; the
/// bound keeps what a blob's writer still holds queued (a few MiB) from piling up when the disk
/// is slower than the network.
const BLOBS_IN_FLIGHT_PER_JOB: usize = 2;

/// How to copy.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Blobs moved at once.
    pub jobs: usize,
    /// Copy only this platform of an index; the destination gets that platform's manifest.
    pub platform: Option<PlatformSpec>,
    /// Read every blob a destination layout already holds and check its digest, replacing those
    /// that do not match. Without it, a blob a layout holds counts as present when its size is
    /// right (a registry destination is trusted: it checks every blob it takes).
    pub verify: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            jobs: 4,
            platform: None,
            verify: false,
        }
    }
}

/// What happens during a copy, for progress displays.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum CopyEvent {
    /// A blob is looked at (it may turn out present or mounted).
    BlobStarted {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// Bytes of a blob went through.
    BlobBytes {
        /// The blob.
        digest: Digest,
        /// How many.
        bytes: u64,
    },
    /// A blob is done.
    BlobDone {
        /// The blob.
        digest: Digest,
        /// Present, mounted or copied.
        how: BlobCopy,
    },
}

/// What a copy did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CopyReport {
    /// The digest of what the destination now holds.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Manifests and indexes written (repaired ones included).
    pub manifests_written: u64,
    /// Manifests and indexes the destination had already.
    pub manifests_present: u64,
    /// Tags pointed at the result (0 when the tag pointed there already, or none was given).
    pub tags_written: u64,
    /// Blobs streamed (repaired ones included).
    pub blobs_copied: u64,
    /// Blobs mounted.
    pub blobs_mounted: u64,
    /// Blobs the destination had already.
    pub blobs_present: u64,
    /// Blobs and manifests a destination layout held damaged (wrong size, or with
    /// [`CopyOptions::verify`] wrong digest) and that were written again.
    pub blobs_repaired: u64,
    /// Bytes streamed.
    pub bytes_copied: u64,
}

#[derive(Default)]
struct Counters {
    manifests_written: AtomicU64,
    manifests_present: AtomicU64,
    blobs_copied: AtomicU64,
    blobs_mounted: AtomicU64,
    blobs_present: AtomicU64,
    blobs_repaired: AtomicU64,
    bytes_copied: AtomicU64,
}

/// Copies `reference` of `src` to `dst`, tagged `tag` when given. When the destination tag
/// already points at the same digest, that one check is all the copy costs, unless the
/// destination is a layout: there every blob is checked (by size; by digest too with
/// [`CopyOptions::verify`]) and a missing or damaged one is copied again.
///
/// Indexes nested deeper than [`ops::MAX_INDEX_NESTING`] levels are refused; a child listed
/// several times is copied once.
///
/// # Errors
/// Whatever the stores report, [`Error::InvalidChange`] when `platform` is not in the index,
/// [`Error::InvalidDocument`] for indexes nested too deep.
pub async fn copy_image<A: Store, B: Store>(
    src: &A,
    reference: &ManifestRef,
    dst: &B,
    tag: Option<&str>,
    opts: &CopyOptions,
    events: &(dyn Fn(CopyEvent) + Send + Sync),
) -> Result<CopyReport> {
    if let Some(t) = tag {
        // Refused before any byte moves, not after the blobs.
        crate::layout::validate_tag(t)?;
    }
    let mut doc = ops::load_document(src, reference).await?;
    if let (Document::Index(_), Some(p)) = (&doc, &opts.platform) {
        let image = ops::image_from_document(src, doc, Some(p)).await?;
        doc = Document::Manifest(image.manifest);
    }
    let raw = doc.raw().clone();
    let mut report = CopyReport {
        digest: raw.digest().to_string(),
        media_type: raw.media_type().to_owned(),
        ..CopyReport::default()
    };
    let mut tag_current = false;
    if let Some(t) = tag {
        match dst.resolve_tag(t).await {
            Ok(d) if d.digest().to_string() == raw.digest().to_string() => tag_current = true,
            // A layout's malformed entry for the tag is replaced by the copy.
            Ok(_) | Err(Error::TagNotFound { .. } | Error::InvalidDocument { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if tag_current && dst.manifest_implies_blobs() {
        report.manifests_present = 1;
        return Ok(report);
    }
    let copier = Copier {
        src,
        dst,
        opts,
        events,
        transfers: Arc::new(Semaphore::new(opts.jobs.max(1))),
        counters: Counters::default(),
        seen: Mutex::new(HashSet::new()),
        root: raw.digest().clone(),
    };
    let new_tag = if tag_current { None } else { tag };
    copier.copy_document(doc, new_tag, 0).await?;
    let c = copier.counters;
    report.manifests_written = c.manifests_written.into_inner();
    report.manifests_present = c.manifests_present.into_inner();
    report.tags_written = u64::from(new_tag.is_some());
    report.blobs_copied = c.blobs_copied.into_inner();
    report.blobs_mounted = c.blobs_mounted.into_inner();
    report.blobs_present = c.blobs_present.into_inner();
    report.blobs_repaired = c.blobs_repaired.into_inner();
    report.bytes_copied = c.bytes_copied.into_inner();
    Ok(report)
}

/// One copy: the two stores, what to do, and what was done.
struct Copier<'a, A, B> {
    src: &'a A,
    dst: &'a B,
    opts: &'a CopyOptions,
    events: &'a (dyn Fn(CopyEvent) + Send + Sync),
    /// Blobs being read at once into a layout ([`CopyOptions::jobs`]); see
    /// [`MAX_BLOBS_IN_FLIGHT`].
    transfers: Arc<Semaphore>,
    counters: Counters,
    /// Documents copied (or being copied) already in this copy.
    seen: Mutex<HashSet<Digest>>,
    /// The top document, for messages.
    root: Digest,
}

/// What a destination that does not trust its manifests holds under a digest.
enum Held {
    Missing,
    Intact,
    Damaged,
}

impl<A: Store, B: Store> Copier<'_, A, B> {
    /// Checks a blob the destination layout may hold: size always, digest with `verify`.
    async fn held(&self, digest: &Digest, size: u64) -> Result<Held> {
        match self.dst.blob_size(digest).await? {
            None => Ok(Held::Missing),
            Some(s) if s != size => Ok(Held::Damaged),
            Some(_) if !self.opts.verify => Ok(Held::Intact),
            Some(_) => {
                let mut reader = self.dst.get_blob(digest, size).await?;
                match tokio::io::copy(&mut reader, &mut tokio::io::sink()).await {
                    Ok(_) => Ok(Held::Intact),
                    Err(e) => match Error::from_io(format!("reading blob {digest}"), e) {
                        Error::DigestMismatch { .. } | Error::SizeMismatch { .. } => {
                            Ok(Held::Damaged)
                        }
                        other => Err(other),
                    },
                }
            }
        }
    }

    /// Makes one blob of a manifest present in the destination; `known_missing` when the
    /// destination has just named it missing (no existence check then).
    async fn copy_blob(&self, digest: Digest, size: u64, known_missing: bool) -> Result<()> {
        let c = &self.counters;
        (self.events)(CopyEvent::BlobStarted {
            digest: digest.clone(),
            size,
        });
        let progress = |n| {
            c.bytes_copied.fetch_add(n, Ordering::Relaxed);
            (self.events)(CopyEvent::BlobBytes {
                digest: digest.clone(),
                bytes: n,
            });
        };
        let how = if self.dst.manifest_implies_blobs() {
            let _transfer = self.transfer_permit().await?;
            if known_missing {
                copy_missing_blob(self.src, self.dst, &digest, size, progress).await?
            } else {
                copy_blob_with(self.src, self.dst, &digest, size, progress).await?
            }
        } else {
            // Taken in the order the blobs are listed (largest first; the queue is fair), and
            // before the check, whose stat goes through the blocking pool and would let the
            // blobs reach the queue in any order.
            let permit = self.transfer_permit().await?;
            match self.held(&digest, size).await? {
                Held::Intact => BlobCopy::Present,
                held => {
                    if matches!(held, Held::Damaged) {
                        c.blobs_repaired.fetch_add(1, Ordering::Relaxed);
                    }
                    self.copy_into_layout(&digest, size, permit, progress)
                        .await?
                }
            }
        };
        match how {
            BlobCopy::Present => &c.blobs_present,
            BlobCopy::Mounted => &c.blobs_mounted,
            BlobCopy::Copied => &c.blobs_copied,
        }
        .fetch_add(1, Ordering::Relaxed);
        (self.events)(CopyEvent::BlobDone { digest, how });
        Ok(())
    }

    async fn transfer_permit(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.transfers)
            .acquire_owned()
            .await
            .map_err(|_| {
                Error::io(
                    "copying blobs",
                    std::io::Error::other("the copy was stopped"),
                )
            })
    }

    /// [`crate::store::copy_missing_blob`] into a destination that does not trust its manifests
    /// (a layout): the source is read under `permit`, given back at its last byte, so the
    /// destination's sync and rename of this blob overlap the next blob's download.
    async fn copy_into_layout(
        &self,
        digest: &Digest,
        size: u64,
        permit: OwnedSemaphorePermit,
        progress: impl Fn(u64) + Send + Sync,
    ) -> Result<BlobCopy> {
        if let Some(source) = self.src.mount_source()
            && self.dst.mount_blob(digest, &source).await?
        {
            return Ok(BlobCopy::Mounted);
        }
        // Verified once, by the destination as it writes.
        let reader = self.src.read_blob_raw(digest, size).await?;
        let reader = ReleaseAtEnd {
            inner: reader,
            permit: Some(permit),
            progress: &progress,
        };
        self.dst.put_new_blob(digest, size, reader).await?;
        Ok(BlobCopy::Copied)
    }

    /// Copies a document and everything under it, children before parents; `tag` is for the
    /// top one. Boxed: it recurses into nested indexes, at most [`ops::MAX_INDEX_NESTING`] deep.
    fn copy_document<'s>(
        &'s self,
        doc: Document,
        tag: Option<&'s str>,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 's>>
    where
        A: 's,
        B: 's,
    {
        Box::pin(async move {
            let raw: RawDocument = doc.raw().clone();
            let fresh = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(raw.digest().clone());
            if !fresh {
                return Ok(()); // listed again: copied already (children come before parents)
            }
            let c = &self.counters;
            // A registry that has a manifest has all it references (a store takes a manifest
            // only after its blobs); the top one may still need its tag.
            let trusted = self.dst.manifest_implies_blobs();
            if trusted && self.dst.has_manifest(raw.digest()).await? {
                c.manifests_present.fetch_add(1, Ordering::Relaxed);
                if tag.is_some() {
                    self.dst.put_manifest(&raw, tag).await?;
                }
                return Ok(());
            }
            match &doc {
                Document::Manifest(m) => {
                    let p = m.parsed();
                    let mut blobs =
                        vec![(Digest::try_from(p.config().digest())?, p.config().size())];
                    for l in p.layers() {
                        blobs.push((Digest::try_from(l.digest())?, l.size()));
                    }
                    blobs.sort();
                    blobs.dedup();
                    // Largest first: the long transfers start at once and the small ones fill
                    // the gaps, instead of a large one starting last and running alone.
                    blobs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                    // A registry that names the blobs a manifest lacks is sent the manifest
                    // first, by digest (a tag only once the image is complete): only the blobs
                    // it names move, with no existence check each (a push into a new
                    // repository, a copy within one registry). Its taking the manifest proves
                    // the blobs there only where it is known to check them (it named missing
                    // ones before); elsewhere every blob is checked.
                    let named = if trusted && self.dst.rejects_missing_blobs() {
                        match self.dst.probe_manifest(&raw).await? {
                            Probe::Taken { proves_blobs: true } => {
                                if tag.is_some() {
                                    self.dst.put_manifest(&raw, tag).await?;
                                }
                                for (digest, size) in blobs {
                                    c.blobs_present.fetch_add(1, Ordering::Relaxed);
                                    (self.events)(CopyEvent::BlobStarted {
                                        digest: digest.clone(),
                                        size,
                                    });
                                    (self.events)(CopyEvent::BlobDone {
                                        digest,
                                        how: BlobCopy::Present,
                                    });
                                }
                                c.manifests_written.fetch_add(1, Ordering::Relaxed);
                                return Ok(());
                            }
                            Probe::Missing(digests) => digests.into_iter().collect::<HashSet<_>>(),
                            // Taken by a registry that may not check blobs, or refused for
                            // another reason (a list of missing blobs too long for the error
                            // body ociup reads, say): every blob is checked and supplied as
                            // without the probe, and the manifest PUT after them says what is
                            // still wrong.
                            Probe::Taken { .. } | Probe::Refused => HashSet::new(),
                        }
                    } else {
                        HashSet::new()
                    };
                    // The transfers are bounded by `transfers`; into a layout, as many blobs
                    // again may be syncing meanwhile.
                    let jobs = self.opts.jobs.max(1);
                    let in_flight = if trusted {
                        jobs
                    } else {
                        jobs * BLOBS_IN_FLIGHT_PER_JOB
                    };
                    // On the first error no further blob starts, and the ones under way are
                    // waited for: nothing keeps writing after the copy returned its error.
                    let failed = std::sync::atomic::AtomicBool::new(false);
                    let results: Vec<Result<()>> = futures_util::stream::iter(blobs)
                        .map(|(digest, size)| {
                            let known_missing = named.contains(&digest);
                            let failed = &failed;
                            async move {
                                if failed.load(Ordering::Relaxed) {
                                    return Ok(());
                                }
                                let r = self.copy_blob(digest, size, known_missing).await;
                                if r.is_err() {
                                    failed.store(true, Ordering::Relaxed);
                                }
                                r
                            }
                        })
                        .buffer_unordered(in_flight)
                        .collect()
                        .await;
                    results.into_iter().collect::<Result<Vec<()>>>()?;
                }
                Document::Index(i) => {
                    if depth >= ops::MAX_INDEX_NESTING
                        && i.parsed().manifests().iter().any(|m| {
                            matches!(
                                media_type::document_kind(m.media_type().as_ref()),
                                Ok((DocumentKind::Index, _))
                            )
                        })
                    {
                        return Err(Error::InvalidDocument {
                            what: format!("index {}", self.root),
                            reason: format!(
                                "it nests indexes more than {} levels deep (at {})",
                                ops::MAX_INDEX_NESTING,
                                raw.digest()
                            ),
                        });
                    }
                    for child in i.parsed().manifests() {
                        let digest = Digest::try_from(child.digest())?;
                        let listed = self
                            .seen
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .contains(&digest);
                        if listed {
                            continue;
                        }
                        let child_raw = self.src.get_manifest(&ManifestRef::Digest(digest)).await?;
                        let child_raw = if child_raw.media_type().is_empty() {
                            RawDocument::new(
                                child_raw.bytes().to_vec(),
                                child.media_type().to_string(),
                            )
                        } else {
                            child_raw
                        };
                        let child_doc = Document::parse(child_raw)?;
                        self.copy_document(child_doc, None, depth + 1).await?;
                    }
                }
            }
            if !trusted {
                match self.held(raw.digest(), raw.size()).await? {
                    Held::Intact => {
                        c.manifests_present.fetch_add(1, Ordering::Relaxed);
                        if tag.is_some() {
                            self.dst.put_manifest(&raw, tag).await?;
                        }
                        return Ok(());
                    }
                    Held::Damaged => {
                        c.blobs_repaired.fetch_add(1, Ordering::Relaxed);
                        self.dst
                            .put_new_blob(raw.digest(), raw.size(), raw.bytes())
                            .await?;
                    }
                    Held::Missing => {}
                }
            }
            self.dst.put_manifest(&raw, tag).await?;
            c.manifests_written.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }
}

/// A blob's source that gives its transfer permit back at its end (or when dropped) and
/// reports the bytes read.
struct ReleaseAtEnd<'p, R, F> {
    inner: R,
    permit: Option<OwnedSemaphorePermit>,
    progress: &'p F,
}

impl<R: AsyncRead + Unpin, F: Fn(u64)> AsyncRead for ReleaseAtEnd<'_, R, F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n == 0 && buf.remaining() > 0 {
                    self.permit = None; // the end: the next blob may start
                } else {
                    (self.progress)(n as u64);
                }
            }
            Poll::Ready(Err(_)) => self.permit = None,
            Poll::Pending => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::OciLayout;
    use crate::ops::testing::{Counted, index_of, nine_by_ten, tiny_image};

    fn no_events(_: CopyEvent) {}

    #[tokio::test]
    async fn an_index_listed_many_times_is_copied_once() {
        let t = tempfile::tempdir().unwrap();
        let src = OciLayout::open_or_create(t.path().join("src")).unwrap();
        let dst = OciLayout::open_or_create(t.path().join("dst")).unwrap();
        let top = nine_by_ten(&src).await;
        let counted = Counted::new(&src, 1000);
        let report = copy_image(
            &counted,
            &ManifestRef::Digest(top.digest().clone()),
            &dst,
            Some("t"),
            &CopyOptions::default(),
            &no_events,
        )
        .await
        .unwrap();
        assert_eq!(counted.reads(), 10, "each document read once");
        assert_eq!(report.manifests_written, 10);
        assert_eq!(report.tags_written, 1);
    }

    #[tokio::test]
    async fn deeply_nested_indexes_are_an_error_not_a_stack_overflow() {
        let t = tempfile::tempdir().unwrap();
        let src = OciLayout::open_or_create(t.path().join("src")).unwrap();
        let dst = OciLayout::open_or_create(t.path().join("dst")).unwrap();
        let mut next = tiny_image(&src).await;
        let mut platform = Some("linux/amd64");
        for n in 0..2000 {
            next = index_of(&src, &[(&next, platform.take())], n).await;
        }
        let err = copy_image(
            &src,
            &ManifestRef::Digest(next.digest().clone()),
            &dst,
            Some("t"),
            &CopyOptions::default(),
            &no_events,
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "nests indexes more than {} levels deep",
                ops::MAX_INDEX_NESTING
            )),
            "{err}"
        );
        assert!(dst.list_tags().await.unwrap().is_empty(), "no tag written");
    }

    #[tokio::test]
    async fn a_damaged_layout_is_repaired_not_reported_present() {
        let t = tempfile::tempdir().unwrap();
        let src = OciLayout::open_or_create(t.path().join("src")).unwrap();
        let dst = OciLayout::open_or_create(t.path().join("dst")).unwrap();
        let image = tiny_image(&src).await;
        let index = index_of(&src, &[(&image, Some("linux/amd64"))], 0).await;
        let top = ManifestRef::Digest(index.digest().clone());
        let copy = |verify| {
            let (src, dst, top) = (&src, &dst, &top);
            async move {
                let opts = CopyOptions {
                    verify,
                    ..CopyOptions::default()
                };
                copy_image(src, top, dst, Some("t"), &opts, &no_events)
                    .await
                    .unwrap()
            }
        };
        let first = copy(false).await;
        assert_eq!((first.manifests_written, first.blobs_copied), (2, 1));
        let config = crate::document::Manifest::parse(image.clone())
            .unwrap()
            .config_digest()
            .unwrap();
        let config_path = dst.blob_path(&config);
        let good = std::fs::read(&config_path).unwrap();

        // Deleted: copied again, though the tag points at the index already.
        std::fs::remove_file(&config_path).unwrap();
        let again = copy(false).await;
        assert_eq!((again.blobs_copied, again.tags_written), (1, 0));
        assert_eq!(std::fs::read(&config_path).unwrap(), good);

        // Truncated: the size check catches it.
        std::fs::write(&config_path, &good[..good.len() - 1]).unwrap();
        let again = copy(false).await;
        assert_eq!((again.blobs_copied, again.blobs_repaired), (1, 1));
        assert_eq!(std::fs::read(&config_path).unwrap(), good);

        // Same size, other bytes: only a verify catches it; so too for a manifest.
        let mut bad = good.clone();
        bad[0] ^= 1;
        std::fs::write(&config_path, &bad).unwrap();
        let manifest_path = dst.blob_path(image.digest());
        let mut bad_manifest = image.bytes().to_vec();
        bad_manifest[0] ^= 1;
        std::fs::write(&manifest_path, &bad_manifest).unwrap();
        let unverified = copy(false).await;
        assert_eq!(unverified.blobs_repaired, 0);
        let verified = copy(true).await;
        assert_eq!(
            (
                verified.blobs_repaired,
                verified.blobs_copied,
                verified.blobs_present
            ),
            (2, 1, 0)
        );
        assert_eq!(std::fs::read(&config_path).unwrap(), good);
        assert_eq!(std::fs::read(&manifest_path).unwrap(), image.bytes());
        let clean = copy(true).await;
        assert_eq!(
            (
                clean.blobs_repaired,
                clean.blobs_copied,
                clean.manifests_present
            ),
            (0, 0, 2)
        );
    }
}

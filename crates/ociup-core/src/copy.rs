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
/// downloading or finishing their writes: a blob whose bytes have all arrived gives its slot to
/// the next one while its writer thread writes and checks what it still holds queued, so the
/// network seldom waits for the disk; the bound keeps those queues (a few MiB each) from piling
/// up when the disk is slower than the network. The layout syncs the blobs together and names
/// them before the manifest is written ([`crate::layout::OciLayout::settle`]).
const BLOBS_IN_FLIGHT_PER_JOB: usize = 2;

/// A blob this small, copied into a layout, waits on its requests, not on bytes: it goes in a
/// lane of its own, [`SMALL_BLOBS_PER_JOB`] per download slot, outside the slots and the bound
/// on blobs under way (its writer's queue is the blob itself). An index of many small images
/// is then not read four requests at a time.
const SMALL_BLOB: u64 = 64 * 1024;
/// Small blobs read at once per download slot ([`SMALL_BLOB`]).
const SMALL_BLOBS_PER_JOB: usize = 4;

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
        small: Arc::new(Semaphore::new(opts.jobs.max(1) * SMALL_BLOBS_PER_JOB)),
        in_flight: Arc::new(Semaphore::new(0)),
        counters: Counters::default(),
        seen: Mutex::new(HashSet::new()),
        blobs: Mutex::default(),
        root: raw.digest().clone(),
    };
    copier.in_flight.add_permits(copier.in_flight_bound());
    let new_tag = if tag_current { None } else { tag };
    copier.copy_document(doc, new_tag, 0).await?;
    if new_tag.is_none() && !dst.manifest_implies_blobs() {
        // A layout stages what a copy writes (the blobs, and the documents above them), to
        // sync and name it all at once when a tag is written; untagged, reading the top
        // document back names everything before the copy returns (a layout names what is
        // staged before it serves it).
        dst.get_manifest(&ManifestRef::Digest(raw.digest().clone()))
            .await?;
    }
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
    /// Blobs being read at once ([`CopyOptions::jobs`]).
    transfers: Arc<Semaphore>,
    /// Small blobs being read into a layout at once: [`SMALL_BLOB`].
    small: Arc<Semaphore>,
    /// Blobs under way at once, across every manifest of the copy (the children of an index go
    /// at once): [`Copier::in_flight_bound`].
    in_flight: Arc<Semaphore>,
    counters: Counters,
    /// Documents copied (or being copied) already in this copy.
    seen: Mutex<HashSet<Digest>>,
    /// Blobs taken in hand in this copy (the images of an index go at once and may share one):
    /// whoever comes second waits for the first, and finds it done.
    blobs: Mutex<std::collections::HashMap<Digest, Arc<tokio::sync::Mutex<bool>>>>,
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
        let cell = Arc::clone(
            self.blobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(digest.clone())
                .or_default(),
        );
        let mut done = cell.lock().await;
        if *done {
            c.blobs_present.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
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
            let permit = if self.small_lane(size) {
                Self::permit(&self.small).await?
            } else {
                self.transfer_permit().await?
            };
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
        *done = true;
        (self.events)(CopyEvent::BlobDone { digest, how });
        Ok(())
    }

    /// Whether a blob of `size` goes in the small blobs' lane ([`SMALL_BLOB`]).
    fn small_lane(&self, size: u64) -> bool {
        size <= SMALL_BLOB && !self.dst.manifest_implies_blobs()
    }

    /// Small blobs read at once, beside [`Copier::in_flight_bound`]: none but into a layout.
    fn small_lane_bound(&self) -> usize {
        if self.dst.manifest_implies_blobs() {
            0
        } else {
            self.opts.jobs.max(1) * SMALL_BLOBS_PER_JOB
        }
    }

    async fn transfer_permit(&self) -> Result<OwnedSemaphorePermit> {
        Self::permit(&self.transfers).await
    }

    async fn permit(semaphore: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit> {
        Arc::clone(semaphore).acquire_owned().await.map_err(|_| {
            Error::io(
                "copying blobs",
                std::io::Error::other("the copy was stopped"),
            )
        })
    }

    /// [`crate::store::copy_missing_blob`] into a destination that does not trust its manifests
    /// (a layout): the source is read under `permit`, given back at its last byte, so the
    /// destination's last writes of this blob overlap the next blob's download.
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

    /// Blobs under way at once: [`CopyOptions::jobs`], into a layout
    /// [`BLOBS_IN_FLIGHT_PER_JOB`] times that.
    fn in_flight_bound(&self) -> usize {
        let jobs = self.opts.jobs.max(1);
        if self.dst.manifest_implies_blobs() {
            jobs
        } else {
            jobs * BLOBS_IN_FLIGHT_PER_JOB
        }
    }

    /// Reads the child `digest` of an index (listed as `listed_type`) from the source and copies
    /// it with everything under it.
    async fn copy_child(&self, digest: Digest, listed_type: String, depth: usize) -> Result<()> {
        let child_raw = self.src.get_manifest(&ManifestRef::Digest(digest)).await?;
        let child_raw = if child_raw.media_type().is_empty() {
            RawDocument::new(child_raw.bytes().to_vec(), listed_type)
        } else {
            child_raw
        };
        let child_doc = Document::parse(child_raw)?;
        self.copy_document(child_doc, None, depth + 1).await
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
                    // The transfers are bounded by `transfers`, the blobs under way (across the
                    // manifests copied at once) by `in_flight`: into a layout, as many blobs
                    // again as are read may be finishing their writes meanwhile.
                    // On the first error no further blob starts, and the ones under way are
                    // waited for: nothing keeps writing after the copy returned its error.
                    let failed = std::sync::atomic::AtomicBool::new(false);
                    let results: Vec<Result<()>> = futures_util::stream::iter(blobs)
                        .map(|(digest, size)| {
                            let known_missing = named.contains(&digest);
                            let failed = &failed;
                            async move {
                                let _slot = if self.small_lane(size) {
                                    None
                                } else {
                                    Some(Self::permit(&self.in_flight).await?)
                                };
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
                        .buffer_unordered(self.in_flight_bound() + self.small_lane_bound())
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
                    // Each child once, whatever the list repeats; those an earlier part of the
                    // copy took are complete already (children come before parents).
                    let mut children = Vec::new();
                    let mut listed_here = HashSet::new();
                    for child in i.parsed().manifests() {
                        let digest = Digest::try_from(child.digest())?;
                        let seen = self
                            .seen
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .contains(&digest);
                        if !seen && listed_here.insert(digest.clone()) {
                            let nested = matches!(
                                media_type::document_kind(child.media_type().as_ref()),
                                Ok((DocumentKind::Index, _))
                            );
                            children.push((digest, child.media_type().to_string(), nested));
                        }
                    }
                    // The image manifests at once (their blobs share the copy's bounds, so
                    // more of them than blobs in flight costs only their manifest reads, which
                    // then overlap: an index of many small images waits on requests, not
                    // bytes), then the nested indexes one after another: a document two nested
                    // indexes list is complete before the second one's parent can be written.
                    let (nested, images): (Vec<_>, Vec<_>) =
                        children.into_iter().partition(|c| c.2);
                    let failed = std::sync::atomic::AtomicBool::new(false);
                    let results: Vec<Result<()>> = futures_util::stream::iter(images)
                        .map(|(digest, listed_type, _)| {
                            let failed = &failed;
                            async move {
                                if failed.load(Ordering::Relaxed) {
                                    return Ok(());
                                }
                                let r = self.copy_child(digest, listed_type, depth).await;
                                if r.is_err() {
                                    failed.store(true, Ordering::Relaxed);
                                }
                                r
                            }
                        })
                        .buffer_unordered(2 * self.in_flight_bound())
                        .collect()
                        .await;
                    results.into_iter().collect::<Result<Vec<()>>>()?;
                    for (digest, listed_type, _) in nested {
                        self.copy_child(digest, listed_type, depth).await?;
                    }
                }
            }
            if !trusted {
                match self.held(raw.digest(), raw.size()).await? {
                    Held::Intact => {
                        c.manifests_present.fetch_add(1, Ordering::Relaxed);
                        // Untagged too: a layout puts the blobs copied (repaired) under it in
                        // place first, and finds the manifest there.
                        self.dst.put_manifest(&raw, tag).await?;
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
    use tokio::io::AsyncRead;

    fn no_events(_: CopyEvent) {}

    /// `copy_image` of `top` from `src` into `dst`, tagged `t`.
    async fn copy_tagged<A: Store, B: Store>(
        src: &A,
        top: &RawDocument,
        dst: &B,
        opts: &CopyOptions,
    ) -> CopyReport {
        copy_image(
            src,
            &ManifestRef::Digest(top.digest().clone()),
            dst,
            Some("t"),
            opts,
            &no_events,
        )
        .await
        .unwrap()
    }

    /// An image of layers of `sizes` bytes (distinct by `label`) and a config, stored untagged
    /// in `layout`.
    async fn image_of_layers(layout: &OciLayout, label: &str, sizes: &[usize]) -> RawDocument {
        let mut layers = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let bytes: Vec<u8> = format!("{label}-{i}-")
                .into_bytes()
                .into_iter()
                .cycle()
                .take(*size)
                .collect();
            let digest = Digest::sha256(&bytes);
            layout
                .put_blob(&digest, bytes.len() as u64, &bytes[..])
                .await
                .unwrap();
            layers.push(serde_json::json!({"mediaType": media_type::OCI_LAYER_GZIP,
                "digest": digest.to_string(), "size": bytes.len()}));
        }
        let config = RawDocument::canonical(
            &serde_json::json!({"architecture": "amd64", "os": "linux", "label": label,
                "rootfs": {"type": "layers", "diff_ids": []}}),
            media_type::OCI_CONFIG,
        )
        .unwrap();
        layout
            .put_blob(config.digest(), config.size(), config.bytes())
            .await
            .unwrap();
        let manifest = RawDocument::canonical(
            &serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
                "config": {"mediaType": media_type::OCI_CONFIG,
                    "digest": config.digest().to_string(), "size": config.size()},
                "layers": layers}),
            media_type::OCI_MANIFEST,
        )
        .unwrap();
        layout.put_manifest(&manifest, None).await.unwrap();
        manifest
    }

    /// A layout read through: reading `broken` fails (the others as the layout reads them);
    /// each blob read takes `delay` and the most read at once is counted (and apart, the most
    /// blobs over [`SMALL_BLOB`] read at once).
    struct Source<'a> {
        inner: &'a OciLayout,
        broken: Option<Digest>,
        delay: std::time::Duration,
        reading: AtomicU64,
        most: AtomicU64,
        reading_large: AtomicU64,
        most_large: AtomicU64,
    }

    impl<'a> Source<'a> {
        fn new(inner: &'a OciLayout) -> Self {
            Source {
                inner,
                broken: None,
                delay: std::time::Duration::ZERO,
                reading: AtomicU64::new(0),
                most: AtomicU64::new(0),
                reading_large: AtomicU64::new(0),
                most_large: AtomicU64::new(0),
            }
        }
    }

    impl Store for Source<'_> {
        fn location(&self) -> String {
            self.inner.location()
        }
        async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
            self.inner.blob_size(digest).await
        }
        async fn get_blob(&self, digest: &Digest, size: u64) -> Result<crate::store::BlobReader> {
            self.read_blob_raw(digest, size).await
        }
        async fn read_blob_raw(
            &self,
            digest: &Digest,
            size: u64,
        ) -> Result<crate::store::BlobReader> {
            let now = self.reading.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let large = size > SMALL_BLOB;
            if large {
                let now = self.reading_large.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_large.fetch_max(now, Ordering::SeqCst);
            }
            tokio::time::sleep(self.delay).await;
            self.reading.fetch_sub(1, Ordering::SeqCst);
            if large {
                self.reading_large.fetch_sub(1, Ordering::SeqCst);
            }
            if self.broken.as_ref() == Some(digest) {
                return Err(Error::io(
                    format!("reading blob {digest}"),
                    std::io::Error::other("the source broke off"),
                ));
            }
            self.inner.read_blob_raw(digest, size).await
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
    }

    /// What `blobs/` of a layout holds: blob names, and how many temporary files.
    fn blob_files(layout: &std::path::Path) -> (Vec<String>, usize) {
        let mut named = Vec::new();
        let mut temporary = 0;
        for dir in [layout.join("blobs"), layout.join("blobs/sha256")] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue; // blobs/sha256 appears with the first blob named
            };
            for e in entries {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                if name.starts_with(".ociup-") {
                    temporary += 1;
                } else if name != "sha256" {
                    named.push(name);
                }
            }
        }
        named.sort();
        (named, temporary)
    }

    #[tokio::test]
    async fn a_copy_that_breaks_off_names_nothing_unsynced_and_the_next_one_resumes() {
        let t = tempfile::tempdir().unwrap();
        let src = OciLayout::open_or_create(t.path().join("src")).unwrap();
        let image = image_of_layers(&src, "a", &[3 << 20, 2 << 20]).await;
        let m = crate::document::Manifest::parse(image.clone()).unwrap();
        let config = m.config_digest().unwrap();
        let layers: Vec<String> = m
            .parsed()
            .layers()
            .iter()
            .map(|l| l.digest().to_string())
            .collect();
        let hex = |d: &str| d.split_once(':').unwrap().1.to_owned();
        let dst_dir = t.path().join("dst");
        // One blob at a time, largest first: both layers are written before the config fails.
        let opts = CopyOptions {
            jobs: 1,
            ..CopyOptions::default()
        };
        {
            let dst = OciLayout::open_or_create(&dst_dir).unwrap();
            let mut broken = Source::new(&src);
            broken.broken = Some(config.clone());
            let err = copy_image(
                &broken,
                &ManifestRef::Digest(image.digest().clone()),
                &dst,
                Some("t"),
                &opts,
                &no_events,
            )
            .await
            .unwrap_err();
            assert!(
                matches!(&err, Error::Io { source, .. } if source.to_string() == "the source broke off"),
                "{err:?}"
            );
            assert!(dst.index_entries().unwrap().is_empty(), "nothing tagged");
            // The finished layers are checked and staged, not named: nothing synced them yet.
            assert_eq!(blob_files(&dst_dir), (vec![], 2));
        }
        // The last handle gone, the finished layers are synced and named (on the blocking
        // pool); nothing else is there.
        let mut want: Vec<String> = layers.iter().map(|d| hex(d)).collect();
        want.sort();
        for _ in 0..200 {
            if blob_files(&dst_dir) == (want.clone(), 0) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(blob_files(&dst_dir), (want, 0));

        let dst = OciLayout::open_or_create(&dst_dir).unwrap();
        let report = copy_tagged(&src, &image, &dst, &opts).await;
        assert_eq!((report.blobs_copied, report.blobs_present), (1, 2));
        assert_eq!(dst.list_tags().await.unwrap(), ["t"]);
        for d in layers
            .iter()
            .chain([&config.to_string(), &image.digest().to_string()])
        {
            let digest: Digest = d.parse().unwrap();
            let bytes = std::fs::read(dst.blob_path(&digest)).unwrap();
            assert_eq!(Digest::sha256(&bytes), digest);
        }
        assert_eq!(blob_files(&dst_dir).1, 0, "no temporary file left");
    }

    #[tokio::test]
    async fn the_platforms_of_an_index_are_copied_at_once() {
        let t = tempfile::tempdir().unwrap();
        let src = OciLayout::open_or_create(t.path().join("src")).unwrap();
        let dst = OciLayout::open_or_create(t.path().join("dst")).unwrap();
        let mut images = Vec::new();
        for label in ["a", "b", "c"] {
            images.push(image_of_layers(&src, label, &[1000]).await);
        }
        let children: Vec<_> = images.iter().map(|i| (i, Some("linux/amd64"))).collect();
        let index = index_of(&src, &children, 0).await;
        let mut source = Source::new(&src);
        source.delay = std::time::Duration::from_millis(200);
        let report = copy_tagged(&source, &index, &dst, &CopyOptions::default()).await;
        assert_eq!((report.manifests_written, report.blobs_copied), (4, 6));
        // Blobs, manifests and index synced and named together, not once per platform.
        assert_eq!(dst.batches_named(), 1);
        // Each image has two blobs: more read at once means images copied at once; all six
        // are small, so more than the four download slots go at once, in the small lane.
        let most = source.most.load(Ordering::SeqCst);
        assert_eq!(most, 6, "at most {most} blobs were read at once");
    }

    #[tokio::test]
    async fn small_blobs_have_a_lane_of_their_own_and_large_ones_keep_the_slots() {
        let t = tempfile::tempdir().unwrap();
        let src = OciLayout::open_or_create(t.path().join("src")).unwrap();
        let dst = OciLayout::open_or_create(t.path().join("dst")).unwrap();
        // Six large layers and twenty small ones (and the config).
        let big = SMALL_BLOB as usize + 1;
        let mut sizes = vec![big; 6];
        sizes.extend((0..20).map(|i| 100 + i));
        let image = image_of_layers(&src, "lanes", &sizes).await;
        let mut source = Source::new(&src);
        source.delay = std::time::Duration::from_millis(150);
        let opts = CopyOptions {
            jobs: 2,
            ..CopyOptions::default()
        };
        let report = copy_tagged(&source, &image, &dst, &opts).await;
        assert_eq!(report.blobs_copied, 27);
        let large = source.most_large.load(Ordering::SeqCst);
        assert_eq!(large, 2, "large blobs read at once: {large}, --jobs 2");
        // The small lane (4 per slot) goes beside the two slots.
        let most = source.most.load(Ordering::SeqCst);
        assert!(
            most > 2 && most <= 2 + 2 * SMALL_BLOBS_PER_JOB as u64,
            "{most} blobs read at once"
        );
        // Into a registry (a store whose manifests imply their blobs) there is no small lane.
        assert_eq!(
            Copier {
                src: &source,
                dst: &Counted::new(&dst, usize::MAX),
                opts: &opts,
                events: &no_events,
                transfers: Arc::new(Semaphore::new(2)),
                small: Arc::new(Semaphore::new(8)),
                in_flight: Arc::new(Semaphore::new(0)),
                counters: Counters::default(),
                seen: Mutex::default(),
                blobs: Mutex::default(),
                root: image.digest().clone(),
            }
            .small_lane_bound(),
            0
        );
    }

    #[tokio::test]
    async fn an_index_listed_many_times_is_copied_once() {
        let t = tempfile::tempdir().unwrap();
        let src = OciLayout::open_or_create(t.path().join("src")).unwrap();
        let dst = OciLayout::open_or_create(t.path().join("dst")).unwrap();
        let top = nine_by_ten(&src).await;
        let counted = Counted::new(&src, 1000);
        let report = copy_tagged(&counted, &top, &dst, &CopyOptions::default()).await;
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

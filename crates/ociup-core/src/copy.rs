//! Copying images between any two stores: only missing blobs move, blobs are mounted where both
//! stores are repositories of one registry, blobs go in parallel with a bound, a manifest is
//! written after its blobs and an index after its manifests.

use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::TryStreamExt;

use crate::digest::Digest;
use crate::document::{Document, RawDocument};
use crate::error::{Error, Result};
use crate::ops;
use crate::reference::PlatformSpec;
use crate::store::{BlobCopy, ManifestRef, Store, copy_blob_with};

/// How to copy.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Blobs moved at once.
    pub jobs: usize,
    /// Copy only this platform of an index; the destination gets that platform's manifest.
    pub platform: Option<PlatformSpec>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            jobs: 4,
            platform: None,
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
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Manifests and indexes written.
    pub manifests_written: u64,
    /// Manifests and indexes the destination had already.
    pub manifests_present: u64,
    /// Blobs streamed.
    pub blobs_copied: u64,
    /// Blobs mounted.
    pub blobs_mounted: u64,
    /// Blobs the destination had already.
    pub blobs_present: u64,
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
    bytes_copied: AtomicU64,
}

/// Copies `reference` of `src` to `dst`, tagged `tag` when given. When the destination tag
/// already points at the same digest, that one check is all the copy costs.
///
/// # Errors
/// Whatever the stores report, and [`Error::InvalidChange`] when `platform` is not in the index.
pub async fn copy_image<A: Store, B: Store>(
    src: &A,
    reference: &ManifestRef,
    dst: &B,
    tag: Option<&str>,
    opts: &CopyOptions,
    events: &(dyn Fn(CopyEvent) + Send + Sync),
) -> Result<CopyReport> {
    let mut doc = ops::load_document(src, reference).await?;
    if let (Document::Index(_), Some(p)) = (&doc, &opts.platform) {
        let image = ops::image_from_document(src, doc, Some(p)).await?;
        doc = Document::Manifest(image.manifest);
    }
    let raw = doc.raw().clone();
    let counters = Counters::default();
    let mut report = CopyReport {
        digest: raw.digest().to_string(),
        media_type: raw.media_type().to_owned(),
        ..CopyReport::default()
    };
    if let Some(t) = tag {
        match dst.resolve_tag(t).await {
            Ok(d) if d.digest().to_string() == raw.digest().to_string() => {
                report.manifests_present = 1;
                return Ok(report);
            }
            Ok(_) | Err(Error::TagNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    copy_document(src, dst, doc, tag, opts, events, &counters, true).await?;
    report.manifests_written = counters.manifests_written.into_inner();
    report.manifests_present = counters.manifests_present.into_inner();
    report.blobs_copied = counters.blobs_copied.into_inner();
    report.blobs_mounted = counters.blobs_mounted.into_inner();
    report.blobs_present = counters.blobs_present.into_inner();
    report.bytes_copied = counters.bytes_copied.into_inner();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn copy_document<'a, A: Store, B: Store>(
    src: &'a A,
    dst: &'a B,
    doc: Document,
    tag: Option<&'a str>,
    opts: &'a CopyOptions,
    events: &'a (dyn Fn(CopyEvent) + Send + Sync),
    counters: &'a Counters,
    top: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>> {
    Box::pin(async move {
        let raw: RawDocument = doc.raw().clone();
        // A child the destination has is complete (a store takes a manifest only after its
        // blobs); the top one may still need its tag.
        if dst.has_manifest(raw.digest()).await? {
            counters.manifests_present.fetch_add(1, Ordering::Relaxed);
            if top && tag.is_some() {
                dst.put_manifest(&raw, tag).await?;
            }
            return Ok(());
        }
        match &doc {
            Document::Manifest(m) => {
                let p = m.parsed();
                let mut blobs = vec![(Digest::try_from(p.config().digest())?, p.config().size())];
                for l in p.layers() {
                    blobs.push((Digest::try_from(l.digest())?, l.size()));
                }
                blobs.sort();
                blobs.dedup();
                futures_util::stream::iter(blobs.into_iter().map(Ok::<_, Error>))
                    .map_ok(|(digest, size)| async move {
                        let d = digest.clone();
                        events(CopyEvent::BlobStarted {
                            digest: digest.clone(),
                            size,
                        });
                        let how = copy_blob_with(src, dst, &digest, size, |n| {
                            counters.bytes_copied.fetch_add(n, Ordering::Relaxed);
                            events(CopyEvent::BlobBytes {
                                digest: d.clone(),
                                bytes: n,
                            });
                        })
                        .await?;
                        match how {
                            BlobCopy::Present => &counters.blobs_present,
                            BlobCopy::Mounted => &counters.blobs_mounted,
                            BlobCopy::Copied => &counters.blobs_copied,
                        }
                        .fetch_add(1, Ordering::Relaxed);
                        events(CopyEvent::BlobDone { digest, how });
                        Ok(())
                    })
                    .try_buffer_unordered(opts.jobs.max(1))
                    .try_collect::<Vec<()>>()
                    .await?;
            }
            Document::Index(i) => {
                for child in i.parsed().manifests() {
                    let digest = Digest::try_from(child.digest())?;
                    let child_raw = src.get_manifest(&ManifestRef::Digest(digest)).await?;
                    let child_raw = if child_raw.media_type().is_empty() {
                        RawDocument::new(child_raw.bytes().to_vec(), child.media_type().to_string())
                    } else {
                        child_raw
                    };
                    let child_doc = Document::parse(child_raw)?;
                    copy_document(src, dst, child_doc, None, opts, events, counters, false).await?;
                }
            }
        }
        dst.put_manifest(&raw, if top { tag } else { None }).await?;
        counters.manifests_written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    })
}

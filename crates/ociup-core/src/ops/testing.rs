//! Test helpers: tiny images in layouts, index graphs, and a store that counts what is read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use oci_spec::image::Descriptor;
use serde_json::json;
use tokio::io::AsyncRead;

use crate::digest::Digest;
use crate::document::RawDocument;
use crate::error::{Error, Result};
use crate::layout::OciLayout;
use crate::media_type;
use crate::mutate::{self, Base};
use crate::store::{BlobReader, ManifestRef, Store};

/// An empty linux/amd64 image (config and manifest) stored untagged in `layout`.
pub async fn tiny_image(layout: &OciLayout) -> RawDocument {
    let a = mutate::append(
        Base::Scratch {
            os: "linux",
            architecture: "amd64",
            variant: None,
        },
        &[],
        &[],
        &BTreeMap::new(),
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

/// An index listing `children` (each: document and platform, if any), stored untagged; `n`
/// makes indexes with the same children distinct.
pub async fn index_of(
    layout: &OciLayout,
    children: &[(&RawDocument, Option<&str>)],
    n: usize,
) -> RawDocument {
    let manifests: Vec<_> = children
        .iter()
        .map(|(d, p)| {
            let mut e = json!({
                "mediaType": d.media_type(),
                "digest": d.digest().to_string(),
                "size": d.size(),
            });
            if let Some(p) = p {
                let (os, arch) = p.split_once('/').unwrap();
                e["platform"] = json!({"os": os, "architecture": arch});
            }
            e
        })
        .collect();
    let raw = RawDocument::canonical(
        &json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX,
            "manifests": manifests, "annotations": {"n": n.to_string()}}),
        media_type::OCI_INDEX,
    )
    .unwrap();
    // Written directly, without the store's fsync: some tests write thousands.
    let path = layout.blob_path(raw.digest());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, raw.bytes()).unwrap();
    raw
}

/// Nine indexes, each listing the next ten times; the last lists the tiny image for
/// linux/amd64. Returns the top one.
pub async fn nine_by_ten(layout: &OciLayout) -> RawDocument {
    let image = tiny_image(layout).await;
    let mut next = index_of(layout, &[(&image, Some("linux/amd64"))], 8).await;
    for n in (0..8).rev() {
        let children = vec![(&next, None); 10];
        next = index_of(layout, &children, n).await;
    }
    next
}

/// A layout read through a counter, failing once more than `limit` manifests were read (so a
/// search that would run for hours fails quickly instead).
pub struct Counted<'a> {
    pub inner: &'a OciLayout,
    pub manifest_reads: AtomicUsize,
    pub limit: usize,
}

impl<'a> Counted<'a> {
    pub fn new(inner: &'a OciLayout, limit: usize) -> Self {
        Counted {
            inner,
            manifest_reads: AtomicUsize::new(0),
            limit,
        }
    }

    pub fn reads(&self) -> usize {
        self.manifest_reads.load(Ordering::Relaxed)
    }
}

impl Store for Counted<'_> {
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
        if self.manifest_reads.fetch_add(1, Ordering::Relaxed) >= self.limit {
            return Err(Error::InvalidChange {
                reason: format!("more than {} manifests read", self.limit),
            });
        }
        self.inner.get_manifest(reference).await
    }
    async fn put_manifest(&self, document: &RawDocument, tag: Option<&str>) -> Result<()> {
        self.inner.put_manifest(document, tag).await
    }
    async fn resolve_tag(&self, tag: &str) -> Result<Descriptor> {
        self.inner.resolve_tag(tag).await
    }
    async fn list_tags(&self) -> Result<Vec<String>> {
        self.inner.list_tags().await
    }
}

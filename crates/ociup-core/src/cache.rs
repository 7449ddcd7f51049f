//! A local cache of small immutable blobs by digest: documents read from a registry (image
//! configs, catalog records, build manifests, manifests by digest), kept so that reading them
//! again costs no request.

use std::io::Read;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::document::{Document, RawDocument};
use crate::error::Result;
use crate::store::{MAX_DOCUMENT_SIZE, ManifestRef, Store};

/// A local cache of blobs by digest: catalog records, build manifest envelopes and image
/// configs read from a registry, kept so that reading them again costs no request. Blobs are content-addressed: a
/// cached file is used only when its bytes hash to its name, so a corrupted or edited file is a
/// miss, never an answer. Writing is best effort (a cache that cannot be written is no cache).
#[derive(Clone, Debug)]
pub struct BlobCache {
    dir: PathBuf,
}

impl BlobCache {
    /// A cache in `dir` (`<dir>/<algorithm>/<hex>`), created when first written.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        BlobCache { dir: dir.into() }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// The cached bytes of `digest`, if they are there and hash to it. A file that does not is
    /// removed (best effort), so that the next [`BlobCache::put_if_absent`] writes it again.
    pub fn get(&self, digest: &Digest) -> Option<Vec<u8>> {
        let path = self.path(digest);
        let file = std::fs::File::open(&path).ok()?;
        let mut bytes = Vec::new();
        file.take(MAX_DOCUMENT_SIZE + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        let mut h = digest.algorithm().hasher();
        h.update(&bytes);
        if h.finish() == *digest {
            Some(bytes)
        } else {
            drop(std::fs::remove_file(&path));
            None
        }
    }

    /// [`BlobCache::put`], unless a file is there under `digest` already: a document read
    /// again and again is written once.
    pub fn put_if_absent(&self, digest: &Digest, bytes: &[u8]) {
        if std::fs::symlink_metadata(self.path(digest)).is_err() {
            self.put(digest, bytes);
        }
    }

    /// Keeps `bytes` (which must hash to `digest`) under `digest`: written to a temporary file
    /// and renamed, so a reader never sees a partial one (and a damaged file is replaced).
    pub fn put(&self, digest: &Digest, bytes: &[u8]) {
        let path = self.path(digest);
        let Some(dir) = path.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let written = tempfile::NamedTempFile::new_in(dir).and_then(|mut f| {
            std::io::Write::write_all(&mut f, bytes)?;
            f.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
        // A cache that cannot be written is only slower.
        drop(written);
    }

    /// The blob `digest` of `size` bytes from the cache, or from `store` (then cached). A
    /// layout's blobs are local files already: they are read from the layout, not cached.
    ///
    /// # Errors
    /// Store errors.
    pub async fn read<S: Store>(
        cache: Option<&BlobCache>,
        store: &S,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>> {
        let cache = cache.filter(|_| !is_layout(store));
        if let Some(bytes) = cache.and_then(|c| c.get(digest))
            && bytes.len() as u64 == size
        {
            return Ok(bytes);
        }
        let bytes = store.get_blob_bytes(digest, size).await?;
        if let Some(c) = cache {
            c.put(digest, &bytes);
        }
        Ok(bytes)
    }

    /// The bytes of the manifest or index `digest` from the cache, or from `store` (then
    /// cached; a layout's are read from the layout). Checked against `digest` either way.
    ///
    /// # Errors
    /// Store errors.
    pub async fn read_manifest<S: Store>(
        cache: Option<&BlobCache>,
        store: &S,
        digest: &Digest,
    ) -> Result<Vec<u8>> {
        let cache = cache.filter(|_| !is_layout(store));
        if let Some(bytes) = cache.and_then(|c| c.get(digest)) {
            return Ok(bytes);
        }
        let raw = store
            .get_manifest(&ManifestRef::Digest(digest.clone()))
            .await?;
        digest.verify(raw.bytes(), || format!("document {digest}"))?;
        if let Some(c) = cache {
            c.put(digest, raw.bytes());
        }
        Ok(raw.bytes().to_vec())
    }

    /// The manifest or index `reference` names in `store`. By digest, from the cache when it
    /// holds it (its media type is the document's own `mediaType`; a document without one is
    /// always read from the store); otherwise from `store`, and then kept under its digest
    /// (read by tag too: the base a rebase reads by tag today is the old base it names by
    /// digest tomorrow). A layout's documents are read from the layout, never cached.
    ///
    /// # Errors
    /// As [`crate::ops::load_document`].
    pub async fn load_document<S: Store>(
        cache: Option<&BlobCache>,
        store: &S,
        reference: &ManifestRef,
    ) -> Result<Document> {
        let cache = cache.filter(|_| !is_layout(store));
        if let (Some(c), ManifestRef::Digest(digest)) = (cache, reference)
            && let Some(bytes) = c.get(digest)
            && let Some(media_type) = own_media_type(&bytes)
            && let Ok(doc) =
                RawDocument::verified(bytes, media_type, digest).and_then(Document::parse)
        {
            return Ok(doc);
        }
        let doc = crate::ops::load_document(store, reference).await?;
        if let Some(c) = cache {
            c.put_if_absent(doc.raw().digest(), doc.raw().bytes());
        }
        Ok(doc)
    }

    /// Keeps `bytes`, just written to `store` as `digest`, unless `store` is a layout.
    pub fn keep<S: Store>(cache: Option<&BlobCache>, store: &S, digest: &Digest, bytes: &[u8]) {
        if let Some(c) = cache.filter(|_| !is_layout(store)) {
            c.put(digest, bytes);
        }
    }
}

/// A document's own `mediaType` field.
fn own_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Typed>(bytes).ok()?.media_type
}

/// Whether a store is a layout directory (its blobs are local files).
pub(crate) fn is_layout<S: Store>(store: &S) -> bool {
    store.location().starts_with("oci:")
}

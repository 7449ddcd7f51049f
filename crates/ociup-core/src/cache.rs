//! A local cache of small immutable blobs by digest: documents read from a registry (image
//! configs, catalog records, build manifests, indexes by digest), kept so that reading them
//! again costs no request.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::error::Result;
use crate::store::{MAX_DOCUMENT_SIZE, ManifestRef, Store};

/// A local cache of blobs by digest: catalog records, build manifest envelopes and image
/// configs read from a registry, kept so that reading them again costs no request. Blobs are
/// content-addressed: a cached file is used only when its bytes hash to its name, so a corrupted
/// or edited file is a miss, never an answer. Writing is best effort (a cache that cannot be
/// written is no cache).
///
/// What [`BlobCache::read`], [`BlobCache::read_manifest`] and [`BlobCache::keep`] keep is kept
/// apart for each store (registry and repository) it was read from: a blob read from one
/// repository is never the answer for another, where the registry might not serve it (no link
/// there, or no right to read it), so the cache grants nothing the registry would refuse.
#[derive(Clone, Debug)]
pub struct BlobCache {
    dir: PathBuf,
}

impl BlobCache {
    /// A cache in `dir`, created when first written: [`BlobCache::get`] and [`BlobCache::put`]
    /// use `<dir>/<algorithm>/<hex>`, what is read from or kept for a store
    /// `<dir>/<scope>/<algorithm>/<hex>`, the scope naming the store.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        BlobCache { dir: dir.into() }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// The part of the cache for what is read from `store`: `<dir>/<sha256 of its location,
    /// 32 hex digits>`.
    fn for_store<S: Store>(&self, store: &S) -> BlobCache {
        let scope = Digest::sha256(store.location().as_bytes());
        BlobCache {
            dir: self.dir.join(&scope.hex()[..32]),
        }
    }

    /// The cached bytes of `digest`, if they are there (a regular file, not followed through a
    /// symlink, of at most [`MAX_DOCUMENT_SIZE`] bytes) and hash to it. Opened without
    /// blocking: a FIFO planted under that name is a miss, not a hang.
    pub fn get(&self, digest: &Digest) -> Option<Vec<u8>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(self.path(digest))
            .ok()?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
        let mut bytes = Vec::new();
        file.take(MAX_DOCUMENT_SIZE + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
            return None;
        }
        let mut h = digest.algorithm().hasher();
        h.update(&bytes);
        (h.finish() == *digest).then_some(bytes)
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

    /// The cached bytes of `digest` as read from `store` before, if any (never from a layout:
    /// its blobs are local files, not cached).
    pub fn lookup<S: Store>(
        cache: Option<&BlobCache>,
        store: &S,
        digest: &Digest,
    ) -> Option<Vec<u8>> {
        cache
            .filter(|_| !is_layout(store))
            .and_then(|c| c.for_store(store).get(digest))
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
        let cache = cache
            .filter(|_| !is_layout(store))
            .map(|c| c.for_store(store));
        if let Some(bytes) = cache.as_ref().and_then(|c| c.get(digest))
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
        let cache = cache
            .filter(|_| !is_layout(store))
            .map(|c| c.for_store(store));
        if let Some(bytes) = cache.as_ref().and_then(|c| c.get(digest)) {
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

    /// Keeps `bytes`, just written to `store` as `digest`, unless `store` is a layout.
    pub fn keep<S: Store>(cache: Option<&BlobCache>, store: &S, digest: &Digest, bytes: &[u8]) {
        if let Some(c) = cache.filter(|_| !is_layout(store)) {
            c.for_store(store).put(digest, bytes);
        }
    }
}

/// Whether a store is a layout directory (its blobs are local files).
fn is_layout<S: Store>(store: &S) -> bool {
    store.location().starts_with("oci:")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sits under a digest's name and is not a regular file of the right bytes is a miss:
    /// a FIFO (opened without blocking: no hang), a symlink (not followed, even to the right
    /// bytes), a directory; a put then replaces the FIFO or the symlink.
    #[test]
    fn only_a_regular_file_that_hashes_to_its_name_is_an_answer() {
        let t = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(t.path().join("cache"));
        let bytes = br#"{"architecture":"amd64"}"#;
        let digest = Digest::sha256(bytes);
        let path = cache.path(&digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let good = t.path().join("good");
        std::fs::write(&good, bytes).unwrap();

        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(cache.get(&digest), None);
        cache.put(&digest, bytes);
        assert_eq!(cache.get(&digest).as_deref(), Some(&bytes[..]));

        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&good, &path).unwrap();
        assert_eq!(cache.get(&digest), None);
        cache.put(&digest, bytes);
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(cache.get(&digest).as_deref(), Some(&bytes[..]));

        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert_eq!(cache.get(&digest), None);
    }
}

//! OCI image layout directories (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`), the embedded
//! default store: several images per layout, tagged with `org.opencontainers.image.ref.name`.
//!
//! Writes never leave anything half-done: a blob is written to a hidden temporary file under
//! `blobs/`, checked, and renamed into place; `index.json` is rewritten to a temporary file and
//! renamed over the old one, under an exclusive `flock` of the layout directory so that concurrent writers do not lose
//! each other's tags. `index.json` is edited as JSON, so fields ociup does not know survive.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_spec::image::Descriptor;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWriteExt};

use crate::digest::{Digest, HashingWriter};
use crate::document::{RawDocument, canonical_json};
use crate::error::{Error, Result};
use crate::media_type;
use crate::mutate::annotations::REF_NAME;
use crate::store::{BlobReader, ManifestRef, Store};
use crate::verify::AsyncVerifyingReader;

const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct OciLayout {
    root: PathBuf,
    /// `index.json` as last parsed, with what identified the file then: reading a catalog of
    /// thousands of tags must not parse it once per tag.
    cache: Arc<Mutex<Option<IndexCache>>>,
}

/// The entries of `index.json`, and where each tag is among them.
type IndexView = (Arc<Vec<Descriptor>>, Arc<HashMap<String, usize>>);

#[derive(Debug)]
struct IndexCache {
    stamp: (u64, i64, i64, u64),
    entries: Arc<Vec<Descriptor>>,
    by_tag: Arc<HashMap<String, usize>>,
}

impl OciLayout {
    /// Opens an existing layout.
    ///
    /// # Errors
    /// [`Error::InvalidLayout`] when `oci-layout` is missing or names another version, or
    /// `index.json` is missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<OciLayout> {
        let layout = OciLayout {
            root: root.into(),
            cache: Arc::default(),
        };
        let marker = layout.root.join(LAYOUT_FILE);
        let bytes = std::fs::read(&marker).map_err(|e| {
            layout.invalid(match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "no oci-layout file (not an OCI image layout)".into()
                }
                _ => format!("cannot read oci-layout: {e}"),
            })
        })?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| layout.invalid(format!("oci-layout is not JSON: {e}")))?;
        match v.get("imageLayoutVersion").and_then(Value::as_str) {
            Some("1.0.0") => {}
            Some(other) => {
                return Err(layout.invalid(format!("unsupported imageLayoutVersion {other:?}")));
            }
            None => return Err(layout.invalid("oci-layout has no imageLayoutVersion".into())),
        }
        if !layout.root.join(INDEX_FILE).is_file() {
            return Err(layout.invalid("no index.json".into()));
        }
        Ok(layout)
    }

    /// Opens a layout, creating an empty one if the directory does not exist or is empty.
    ///
    /// # Errors
    /// As [`OciLayout::open`]; [`Error::Io`] when it cannot be created.
    pub fn open_or_create(root: impl Into<PathBuf>) -> Result<OciLayout> {
        let root = root.into();
        let empty = match std::fs::read_dir(&root) {
            Ok(mut d) => d.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(Error::io(format!("reading {}", root.display()), e)),
        };
        if empty {
            // Built aside and renamed into place: a process racing to create the same layout
            // never sees it half made, and the loser opens the winner's.
            let parent = match root.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            };
            std::fs::create_dir_all(&parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
            let staged = parent.join(format!(
                ".ociup-layout-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            let made = (|| -> Result<()> {
                std::fs::create_dir_all(staged.join("blobs"))
                    .map_err(|e| Error::io(format!("creating {}", staged.display()), e))?;
                std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| Error::io(format!("creating {}", staged.display()), e))?;
                let layout = OciLayout {
                    root: staged.clone(),
                    cache: Arc::default(),
                };
                layout.write_atomic(
                    LAYOUT_FILE,
                    &canonical_json(&json!({"imageLayoutVersion": "1.0.0"}))?,
                )?;
                layout.write_atomic(
                    INDEX_FILE,
                    &canonical_json(&json!({
                        "schemaVersion": 2,
                        "mediaType": media_type::OCI_INDEX,
                        "manifests": [],
                    }))?,
                )
            })();
            let moved = made.and_then(|()| {
                std::fs::rename(&staged, &root)
                    .map_err(|e| Error::io(format!("creating {}", root.display()), e))
            });
            if moved.is_err() {
                let _ = std::fs::remove_dir_all(&staged);
                // Another process may have created it first.
                if let Ok(l) = OciLayout::open(&root) {
                    return Ok(l);
                }
            }
            moved?;
            return Ok(OciLayout {
                root,
                cache: Arc::default(),
            });
        }
        OciLayout::open(root)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    fn invalid(&self, reason: String) -> Error {
        Error::InvalidLayout {
            path: self.root.clone(),
            reason,
        }
    }

    /// A writer for a new blob; [`BlobWriter::commit`] checks it and moves it into place. Lets a
    /// layer be built straight into the layout without a second copy.
    ///
    /// # Errors
    /// [`Error::Io`] when the temporary file cannot be created.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let dir = self.root.join("blobs");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".ociup-")
            .tempfile_in(&dir)
            .map_err(|e| Error::io(format!("creating a temporary file in {}", dir.display()), e))?;
        Ok(BlobWriter {
            layout: self.clone(),
            inner: HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, tmp)),
        })
    }

    fn read_index(&self) -> Result<Map<String, Value>> {
        let path = self.root.join(INDEX_FILE);
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let what = format!("{}", path.display());
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|source| Error::MalformedDocument {
                what: what.clone(),
                source,
            })?;
        let Value::Object(map) = v else {
            return Err(Error::InvalidDocument {
                what,
                reason: "it is not a JSON object".into(),
            });
        };
        match map.get("manifests") {
            Some(Value::Array(_)) => Ok(map),
            _ => Err(Error::InvalidDocument {
                what,
                reason: "it has no \"manifests\" list".into(),
            }),
        }
    }

    /// The descriptors listed in `index.json`.
    ///
    /// # Errors
    /// [`Error::MalformedDocument`] or [`Error::InvalidDocument`] for a broken `index.json`.
    pub fn index_entries(&self) -> Result<Vec<Descriptor>> {
        Ok(self.cached_index()?.0.as_ref().clone())
    }

    /// The parsed `index.json`, reparsed only when the file changed (it is replaced by rename,
    /// so a change is a new inode, time or size).
    fn cached_index(&self) -> Result<IndexView> {
        use std::os::unix::fs::MetadataExt;
        let path = self.root.join(INDEX_FILE);
        let m = std::fs::metadata(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let stamp = (m.ino(), m.mtime(), m.mtime_nsec(), m.len());
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cache.as_ref()
            && c.stamp == stamp
        {
            return Ok((Arc::clone(&c.entries), Arc::clone(&c.by_tag)));
        }
        let index = self.read_index()?;
        let entries: Vec<Descriptor> = serde_json::from_value(
            index
                .get("manifests")
                .cloned()
                .unwrap_or(Value::Array(Vec::new())),
        )
        .map_err(|source| Error::MalformedDocument {
            what: format!("{}", path.display()),
            source,
        })?;
        let mut by_tag = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if let Some(t) = e.annotations().as_ref().and_then(|a| a.get(REF_NAME)) {
                by_tag.insert(t.clone(), i);
            }
        }
        let (entries, by_tag) = (Arc::new(entries), Arc::new(by_tag));
        *cache = Some(IndexCache {
            stamp,
            entries: Arc::clone(&entries),
            by_tag: Arc::clone(&by_tag),
        });
        Ok((entries, by_tag))
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(name);
        let ctx = |what: &str| format!("{what} {}", path.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempfile_in(&self.root)
            .map_err(|e| Error::io(ctx("creating a temporary file for"), e))?;
        tmp.write_all(bytes)
            .and_then(|()| readable(tmp.as_file()))
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| Error::io(ctx("writing"), e))?;
        tmp.persist(&path)
            .map_err(|e| Error::io(ctx("replacing"), e.error))?;
        Ok(())
    }

    /// Runs `edit` on `index.json` under the layout's lock and replaces it atomically.
    fn edit_index(&self, edit: impl FnOnce(&mut Vec<Value>)) -> Result<()> {
        // flock on the directory itself: no lock file to leave behind in the layout.
        let lock = std::fs::File::open(&self.root)
            .map_err(|e| Error::io(format!("opening {}", self.root.display()), e))?;
        lock.lock()
            .map_err(|e| Error::io(format!("locking {}", self.root.display()), e))?;
        let mut index = self.read_index()?;
        if let Some(Value::Array(list)) = index.get_mut("manifests") {
            edit(list);
        }
        let result = self.write_atomic(INDEX_FILE, &canonical_json(&Value::Object(index))?);
        drop(lock); // unlocks
        result
    }

    /// Points `tag` at `descriptor` in `index.json` (replacing what it pointed at), or lists the
    /// descriptor untagged when `tag` is `None` and it is not listed yet.
    ///
    /// # Errors
    /// [`Error::InvalidReference`] for an invalid tag; errors reading or writing `index.json`.
    pub fn set_tag(&self, descriptor: &Descriptor, tag: Option<&str>) -> Result<()> {
        if let Some(t) = tag {
            validate_tag(t)?;
        }
        let mut entry =
            serde_json::to_value(descriptor).map_err(|source| Error::MalformedDocument {
                what: "descriptor".into(),
                source,
            })?;
        let digest = descriptor.digest().to_string();
        if let (Some(t), Value::Object(e)) = (tag, &mut entry) {
            let ann = e
                .entry("annotations")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(a) = ann {
                a.insert(REF_NAME.into(), t.into());
            }
        }
        self.edit_index(|list| match tag {
            Some(t) => {
                list.retain(|e| ref_name(e) != Some(t));
                list.push(entry);
            }
            None => {
                if !list
                    .iter()
                    .any(|e| e.get("digest").and_then(Value::as_str) == Some(&digest))
                {
                    list.push(entry);
                }
            }
        })
    }

    /// The image a reference without tag or digest means: the layout's only entry.
    ///
    /// # Errors
    /// [`Error::InvalidReference`] when the layout holds no image or several (naming the tags).
    pub fn sole_image(&self) -> Result<ManifestRef> {
        let entries = self.index_entries()?;
        match entries.as_slice() {
            [one] => Ok(ManifestRef::Digest(Digest::try_from(one.digest())?)),
            _ => {
                let tags: Vec<String> = entries
                    .iter()
                    .filter_map(|e| e.annotations().as_ref()?.get(REF_NAME).cloned())
                    .collect();
                Err(Error::InvalidReference {
                    input: self.location(),
                    reason: format!(
                        "the layout holds {} images; name one as {}:<tag> or @<digest> (tags: {})",
                        entries.len(),
                        self.location(),
                        if tags.is_empty() {
                            "none".into()
                        } else {
                            tags.join(", ")
                        }
                    ),
                })
            }
        }
    }

    async fn open_blob(&self, digest: &Digest) -> Result<tokio::io::BufReader<tokio::fs::File>> {
        let path = self.blob_path(digest);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::BlobNotFound {
                    digest: digest.clone(),
                    store: self.location(),
                },
                _ => Error::io(format!("opening {}", path.display()), e),
            })?;
        Ok(tokio::io::BufReader::with_capacity(1 << 20, file))
    }

    async fn read_blob_verified(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        if let Ok(m) = tokio::fs::metadata(&path).await
            && m.len() > crate::store::MAX_DOCUMENT_SIZE
        {
            return Err(Error::InvalidDocument {
                what: format!("manifest {digest}"),
                reason: format!("{} bytes is larger than a manifest may be", m.len()),
            });
        }
        let bytes = tokio::fs::read(&path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::BlobNotFound {
                digest: digest.clone(),
                store: self.location(),
            },
            _ => Error::io(format!("reading {}", path.display()), e),
        })?;
        digest.verify(&bytes, || format!("blob {digest} in {}", self.location()))?;
        Ok(bytes)
    }
}

/// Temporary files are created 0600; what a layout holds is for every reader of the layout.
fn readable(f: &std::fs::File) -> std::io::Result<()> {
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
}

fn ref_name(entry: &Value) -> Option<&str> {
    entry.get("annotations")?.get(REF_NAME)?.as_str()
}

/// Checks a tag as the distribution spec defines it (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`).
///
/// # Errors
/// [`Error::InvalidReference`] naming the tag.
pub fn validate_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidReference {
            input: tag.into(),
            reason: "a tag is 1 to 128 of [A-Za-z0-9_.-] and does not start with '.' or '-'".into(),
        })
    }
}

/// A blob being written into a layout; see [`OciLayout::blob_writer`].
#[derive(Debug)]
pub struct BlobWriter {
    layout: OciLayout,
    inner: HashingWriter<std::io::BufWriter<tempfile::NamedTempFile>>,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl BlobWriter {
    /// Checks the bytes against `expected` (when given), then moves the blob into place.
    /// Returns its digest and size.
    ///
    /// # Errors
    /// [`Error::DigestMismatch`] (the temporary file is removed), [`Error::Io`].
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let (buf, digest, size) = self.inner.finish();
        if let Some(exp) = expected
            && exp != &digest
        {
            return Err(Error::DigestMismatch {
                what: format!("blob written to {}", self.layout.location()),
                expected: exp.clone(),
                actual: digest,
            });
        }
        let tmp = buf
            .into_inner()
            .map_err(|e| Error::io("writing a blob", e.into_error()))?;
        readable(tmp.as_file())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| Error::io("writing a blob", e))?;
        let dest = self.layout.blob_path(&digest);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        tmp.persist(&dest)
            .map_err(|e| Error::io(format!("moving a blob to {}", dest.display()), e.error))?;
        Ok((digest, size))
    }
}

impl Store for OciLayout {
    fn location(&self) -> String {
        format!("oci:{}", self.root.display())
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    async fn get_blob(&self, digest: &Digest, size: u64) -> Result<BlobReader> {
        let reader = self.open_blob(digest).await?;
        Ok(Box::pin(AsyncVerifyingReader::new(
            reader,
            digest.clone(),
            size,
        )))
    }

    async fn read_blob_raw(&self, digest: &Digest, _size: u64) -> Result<BlobReader> {
        Ok(Box::pin(self.open_blob(digest).await?))
    }

    async fn put_blob<R: AsyncRead + Send + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        data: R,
    ) -> Result<()> {
        if self.blob_size(digest).await? == Some(size) {
            return Ok(());
        }
        let dir = self.root.join("blobs");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".ociup-")
            .tempfile_in(&dir)
            .map_err(|e| Error::io(format!("creating a temporary file in {}", dir.display()), e))?;
        let (std_file, tmp_path) = tmp.into_parts();
        // Large buffers: each write to a tokio file is a trip to the blocking pool.
        let mut file =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(std_file));
        let mut reader = tokio::io::BufReader::with_capacity(
            1 << 20,
            AsyncVerifyingReader::new(data, digest.clone(), size),
        );
        let ctx = || format!("writing blob {digest} to {}", self.location());
        tokio::io::copy_buf(&mut reader, &mut file)
            .await
            .map_err(|e| Error::from_io(ctx(), e))?;
        file.flush().await.map_err(|e| Error::io(ctx(), e))?;
        let file = file.into_inner();
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .await
            .map_err(|e| Error::io(ctx(), e))?;
        file.sync_all().await.map_err(|e| Error::io(ctx(), e))?;
        drop(file);
        let dest = self.blob_path(digest);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        tmp_path
            .persist(&dest)
            .map_err(|e| Error::io(format!("moving a blob to {}", dest.display()), e.error))?;
        Ok(())
    }

    async fn get_manifest(&self, reference: &ManifestRef) -> Result<RawDocument> {
        let (digest, media_type) = match reference {
            ManifestRef::Tag(t) => {
                let d = self.resolve_tag(t).await?;
                (Digest::try_from(d.digest())?, d.media_type().to_string())
            }
            ManifestRef::Digest(d) => {
                // The media type is known when index.json lists the digest; otherwise the
                // document's own mediaType decides.
                let wanted = d.to_string();
                let listed = self
                    .cached_index()?
                    .0
                    .iter()
                    .find(|e| e.digest().to_string() == wanted)
                    .map(|e| e.media_type().to_string());
                (d.clone(), listed.unwrap_or_default())
            }
        };
        let bytes = self.read_blob_verified(&digest).await?;
        RawDocument::verified(bytes, media_type, &digest)
    }

    /// With a tag, the manifest is listed in `index.json` under it; without, only its blob is
    /// stored (as for the children of an index): [`OciLayout::set_tag`] lists it untagged.
    async fn put_manifest(&self, document: &RawDocument, tag: Option<&str>) -> Result<()> {
        if let Some(t) = tag {
            validate_tag(t)?;
        }
        self.put_blob(document.digest(), document.size(), document.bytes())
            .await?;
        match tag {
            Some(t) => self.set_tag(&document.descriptor(), Some(t)),
            None => Ok(()),
        }
    }

    async fn resolve_tag(&self, tag: &str) -> Result<Descriptor> {
        let (entries, by_tag) = self.cached_index()?;
        by_tag
            .get(tag)
            .map(|&i| entries[i].clone())
            .ok_or_else(|| Error::TagNotFound {
                tag: tag.to_owned(),
                store: self.location(),
            })
    }

    async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        let d = digest.to_string();
        self.edit_index(|list| list.retain(|e| e.get("digest").and_then(Value::as_str) != Some(&d)))
    }

    async fn list_tags(&self) -> Result<Vec<String>> {
        let mut tags: Vec<String> = self
            .index_entries()?
            .iter()
            .filter_map(|e| e.annotations().as_ref()?.get(REF_NAME).cloned())
            .collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(n: u32) -> RawDocument {
        RawDocument::canonical(
            &json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [], "n": n}),
            media_type::OCI_INDEX,
        )
        .unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = walkdir::WalkDir::new(dir)
            .into_iter()
            .map(|e| {
                e.unwrap()
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn tags_move_and_unknown_index_fields_survive() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let index_path = layout.root().join(INDEX_FILE);
        let mut v: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        v["x-vendor"] = json!({"keep": [1, 2]});
        std::fs::write(&index_path, serde_json::to_vec(&v).unwrap()).unwrap();

        layout.put_manifest(&doc(1), Some("a")).await.unwrap();
        layout.put_manifest(&doc(2), Some("b")).await.unwrap();
        layout.put_manifest(&doc(3), Some("a")).await.unwrap();
        layout.set_tag(&doc(3).descriptor(), None).unwrap(); // already listed: not added twice
        assert_eq!(layout.list_tags().await.unwrap(), ["a", "b"]);
        let a = layout.resolve_tag("a").await.unwrap();
        assert_eq!(a.digest().to_string(), doc(3).digest().to_string());
        assert_eq!(layout.index_entries().unwrap().len(), 2);
        let v: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        assert_eq!(v["x-vendor"], json!({"keep": [1, 2]}));
        let got = layout
            .get_manifest(&ManifestRef::Tag("b".into()))
            .await
            .unwrap();
        assert_eq!(got.bytes(), doc(2).bytes());
    }

    #[tokio::test]
    async fn a_blob_that_does_not_match_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let before = files(layout.root());
        let d = Digest::sha256(b"hello");
        let err = layout.put_blob(&d, 5, &b"jello"[..]).await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        let err = layout.put_blob(&d, 5, &b"hello!"[..]).await.unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
        let mut w = layout.blob_writer().unwrap();
        w.write_all(b"jello").unwrap();
        assert!(w.commit(Some(&d)).is_err());
        // blobs/ existed already; nothing else may appear.
        assert_eq!(files(layout.root()), before);
        layout.put_blob(&d, 5, &b"hello"[..]).await.unwrap();
        assert_eq!(std::fs::read(layout.blob_path(&d)).unwrap(), b"hello");
    }

    #[test]
    fn concurrent_writers_keep_every_tag() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        std::thread::scope(|s| {
            for w in 0..4u32 {
                let layout = layout.clone();
                s.spawn(move || {
                    for i in 0..10u32 {
                        let d = doc(w * 100 + i);
                        layout
                            .set_tag(&d.descriptor(), Some(&format!("w{w}-{i}")))
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(layout.index_entries().unwrap().len(), 40);
    }

    #[test]
    fn processes_creating_one_layout_at_once_all_get_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("new/layout");
        let opened: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| OciLayout::open_or_create(&root)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for o in opened {
            o.unwrap();
        }
        assert!(
            OciLayout::open(&root)
                .unwrap()
                .index_entries()
                .unwrap()
                .is_empty()
        );
        let strays: Vec<_> = std::fs::read_dir(t.path().join("new"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(strays, ["layout"], "no staging directory left behind");
    }

    #[test]
    fn rejects_what_is_not_a_layout() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("stray"), b"x").unwrap();
        let err = OciLayout::open_or_create(t.path()).unwrap_err().to_string();
        assert!(err.contains("no oci-layout file"), "{err}");
        std::fs::write(
            t.path().join(LAYOUT_FILE),
            br#"{"imageLayoutVersion":"2.0.0"}"#,
        )
        .unwrap();
        let err = OciLayout::open(t.path()).unwrap_err().to_string();
        assert!(err.contains("unsupported imageLayoutVersion"), "{err}");
        assert!(validate_tag("v1.2_x-y").is_ok());
        for bad in ["", ".x", "-x", "a/b", &"x".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
    }
}

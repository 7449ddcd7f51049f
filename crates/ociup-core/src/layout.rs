//! OCI image layout directories (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`), the embedded
//! default store: several images per layout, tagged with `org.opencontainers.image.ref.name`.
//!
//! Writes never leave anything half-done: a blob is written to a hidden temporary file under
//! `blobs/` (by a blocking thread, while the rest of it downloads), checked, synced to disk and
//! renamed into place (a copy's blobs, from [`Store::put_new_blob`], are staged: synced together
//! and renamed before anything names them, see [`OciLayout::settle`]); `index.json` is
//! rewritten to a temporary file and renamed over the old one, under an exclusive `flock` of the
//! layout directory so that concurrent writers do not lose each other's tags. `index.json` is
//! edited as JSON, so fields ociup does not know survive.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_spec::image::Descriptor;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::digest::{Digest, HashingWriter};
use crate::document::{RawDocument, canonical_json};
use crate::error::{Error, Result};
use crate::media_type;
use crate::mutate::annotations::REF_NAME;
use crate::store::{BlobReader, ManifestRef, Store};
use crate::verify::AsyncVerifyingReader;

const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
/// Largest `index.json` read: about 40,000 tags' worth of entries per 16 MiB.
pub const MAX_INDEX_SIZE: u64 = 64 * 1024 * 1024;
/// Largest `oci-layout` read (it holds one short field).
const MAX_MARKER_SIZE: u64 = 64 * 1024;

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct OciLayout {
    root: PathBuf,
    /// `index.json` as last parsed, with what identified the file then: reading a catalog of
    /// thousands of tags must not parse it once per tag.
    cache: Arc<Mutex<Option<IndexCache>>>,
    /// Whether this value has looked for stale temporary files yet (once, at its first write).
    swept: Arc<std::sync::atomic::AtomicBool>,
    /// Blobs [`Store::put_new_blob`] wrote and checked, not yet synced nor named.
    staged: Arc<Staging>,
}

/// How long after its last write a temporary file of a layout (`blobs/.ociup-*`,
/// `.index.json.*`, `.oci-layout.*`) counts as abandoned, left by a write that was killed: the
/// next write to the layout removes it. A live writer writes to its file at least every few
/// seconds (a download that stalls for longer fails at the registry client's idle timeout), so an
/// hour is far beyond any live writer; a writer stopped for longer than that (suspended) finds
/// its file gone and fails without writing anything, rather than leaving a damaged blob.
pub const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// The well-formed entries of `index.json`, where each tag is among them, and the malformed
/// entries.
type IndexView = (
    Arc<Vec<Descriptor>>,
    Arc<HashMap<String, usize>>,
    Arc<Vec<Malformed>>,
);

#[derive(Debug)]
struct IndexCache {
    stamp: (u64, i64, i64, u64),
    entries: Arc<Vec<Descriptor>>,
    by_tag: Arc<HashMap<String, usize>>,
    malformed: Arc<Vec<Malformed>>,
}

/// An entry of `index.json` that is not a descriptor: the others are still served.
#[derive(Debug)]
struct Malformed {
    /// Its position in `manifests` (from 0).
    position: usize,
    /// Its tag, if one can be read from it.
    tag: Option<String>,
    /// The parser's complaint.
    reason: String,
}

impl OciLayout {
    /// Opens an existing layout.
    ///
    /// # Errors
    /// [`Error::InvalidLayout`] when `oci-layout` is missing or names another version, or
    /// `index.json` is missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<OciLayout> {
        let layout = OciLayout::new(root.into());
        let bytes = match layout.read_small(LAYOUT_FILE, MAX_MARKER_SIZE)? {
            Some(b) => b,
            None => {
                return Err(layout.invalid("no oci-layout file (not an OCI image layout)".into()));
            }
        };
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| layout.invalid(format!("oci-layout is not JSON: {e}")))?;
        match v.get("imageLayoutVersion").and_then(Value::as_str) {
            Some("1.0.0") => {}
            Some(other) => {
                return Err(layout.invalid(format!("unsupported imageLayoutVersion {other:?}")));
            }
            None => return Err(layout.invalid("oci-layout has no imageLayoutVersion".into())),
        }
        match std::fs::metadata(layout.root.join(INDEX_FILE)) {
            Ok(m) if m.is_file() => {}
            Ok(m) => {
                return Err(layout.invalid(format!(
                    "{INDEX_FILE} is not a regular file (it is {})",
                    file_kind(&m.file_type())
                )));
            }
            Err(_) => return Err(layout.invalid("no index.json".into())),
        }
        // blobs/ (and blobs/<algorithm>/) must be directories of the layout itself: through a
        // symlink, ociup would write blobs wherever it points.
        for dir in ["blobs", "blobs/sha256", "blobs/sha512"] {
            if let Ok(m) = std::fs::symlink_metadata(layout.root.join(dir))
                && !m.is_dir()
            {
                return Err(layout.invalid(format!(
                    "{dir} is not a directory (it is {}); ociup does not follow a symlinked \
                     blobs directory",
                    file_kind(&m.file_type())
                )));
            }
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
                // Nobody sees the directory before the rename: its files are written in
                // place, and they and the directories are synced at once (one journal commit,
                // not one per file).
                let mut synced = Vec::new();
                for (name, value) in [
                    (LAYOUT_FILE, json!({"imageLayoutVersion": "1.0.0"})),
                    (
                        INDEX_FILE,
                        json!({
                            "schemaVersion": 2,
                            "mediaType": media_type::OCI_INDEX,
                            "manifests": [],
                        }),
                    ),
                ] {
                    let path = staged.join(name);
                    let bytes = canonical_json(&value)?;
                    let f = std::fs::File::create_new(&path)
                        .and_then(|mut f| {
                            f.write_all(&bytes)?;
                            readable(&f)?;
                            Ok(f)
                        })
                        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                    synced.push(f);
                }
                for dir in [staged.join("blobs"), staged.clone()] {
                    synced.push(
                        std::fs::File::open(&dir)
                            .map_err(|e| Error::io(format!("opening {}", dir.display()), e))?,
                    );
                }
                sync_at_once(&synced)
                    .map_err(|e| Error::io(format!("syncing {}", staged.display()), e))
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
            // The rename survives a crash once the parent is synced: without it, a layout a
            // copy then fills could vanish with everything in it. A failure here is ours (the
            // rename succeeded), not another process's layout: it is reported.
            sync_dir(&parent)?;
            return Ok(OciLayout::new(root));
        }
        OciLayout::open(root)
    }

    fn new(root: PathBuf) -> OciLayout {
        OciLayout {
            staged: Arc::new(Staging {
                root: root.clone(),
                blobs: Mutex::default(),
                in_flight: Mutex::default(),
                failures: std::sync::atomic::AtomicU64::new(0),
                settling: Mutex::default(),
                batches: std::sync::atomic::AtomicU64::new(0),
            }),
            root,
            cache: Arc::default(),
            swept: Arc::default(),
        }
    }

    /// Batches of staged blobs synced and named so far ([`OciLayout::settle`]).
    #[cfg(test)]
    pub(crate) fn batches_named(&self) -> u64 {
        self.staged
            .batches
            .load(std::sync::atomic::Ordering::Relaxed)
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

    /// Removes the temporary files of killed writes, last written more than [`STALE_TEMP_AGE`]
    /// ago: once per value, at its first write. Best effort: a file it cannot remove stays for
    /// the next writer.
    pub fn sweep_stale_temp_files(&self) {
        if self.swept.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let now = std::time::SystemTime::now();
        let stale = |e: &std::fs::DirEntry| {
            e.metadata().is_ok_and(|m| {
                m.is_file()
                    && m.modified()
                        .ok()
                        .and_then(|t| now.duration_since(t).ok())
                        .is_some_and(|age| age > STALE_TEMP_AGE)
            })
        };
        for (dir, prefixes) in [
            (self.root.join("blobs"), &[".ociup-"][..]),
            (
                self.root.clone(),
                &[
                    &format!(".{INDEX_FILE}.")[..],
                    &format!(".{LAYOUT_FILE}.")[..],
                ][..],
            ),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if prefixes.iter().any(|p| name.starts_with(p)) && stale(&e) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
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
        self.sweep_stale_temp_files();
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

    /// Reads a small file of the layout whole, refusing what is not a regular file (opened
    /// without blocking, so a FIFO does not hang the open) and more than `cap` bytes. `None`
    /// when it does not exist.
    fn read_small(&self, name: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        let path = self.root.join(name);
        let Some((file, len)) = open_regular(&path, &self.root)? else {
            return Ok(None);
        };
        if len > cap {
            return Err(self.invalid(format!(
                "{name} is {len} bytes, more than the {cap} ociup reads"
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(cap + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if bytes.len() as u64 > cap {
            return Err(self.invalid(format!("{name} grew past the {cap} bytes ociup reads")));
        }
        Ok(Some(bytes))
    }

    fn read_index(&self) -> Result<Map<String, Value>> {
        let path = self.root.join(INDEX_FILE);
        let bytes = self
            .read_small(INDEX_FILE, MAX_INDEX_SIZE)?
            .ok_or_else(|| {
                Error::io(
                    format!("reading {}", path.display()),
                    std::io::ErrorKind::NotFound.into(),
                )
            })?;
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

    /// The descriptors listed in `index.json`; entries that are not valid descriptors are left
    /// out (resolving their tag names them).
    ///
    /// # Errors
    /// [`Error::MalformedDocument`] or [`Error::InvalidDocument`] for a broken `index.json`.
    pub fn index_entries(&self) -> Result<Vec<Descriptor>> {
        Ok(self.cached_index()?.0.as_ref().clone())
    }

    /// Checks that every entry of `index.json` is a valid descriptor, for a caller that must see
    /// all of them (a sweep must not take what a malformed entry names for unreached).
    ///
    /// # Errors
    /// An error naming the first malformed entry; those of [`OciLayout::index_entries`].
    pub fn check_index_entries(&self) -> Result<()> {
        let (_, _, malformed) = self.cached_index()?;
        match malformed.first() {
            Some(m) => Err(self.malformed_entry(m)),
            None => Ok(()),
        }
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
            return Ok((
                Arc::clone(&c.entries),
                Arc::clone(&c.by_tag),
                Arc::clone(&c.malformed),
            ));
        }
        let index = self.read_index()?;
        // Entry by entry: one malformed descriptor must not hide every other tag.
        let mut entries = Vec::new();
        let mut malformed = Vec::new();
        let listed = index.get("manifests").and_then(Value::as_array);
        for (position, e) in listed.into_iter().flatten().enumerate() {
            match serde_json::from_value::<Descriptor>(e.clone()) {
                Ok(d) => entries.push(d),
                Err(err) => malformed.push(Malformed {
                    position,
                    tag: ref_name(e).map(str::to_owned),
                    reason: err.to_string(),
                }),
            }
        }
        let mut by_tag = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if let Some(t) = e.annotations().as_ref().and_then(|a| a.get(REF_NAME)) {
                by_tag.insert(t.clone(), i);
            }
        }
        let (entries, by_tag, malformed) =
            (Arc::new(entries), Arc::new(by_tag), Arc::new(malformed));
        *cache = Some(IndexCache {
            stamp,
            entries: Arc::clone(&entries),
            by_tag: Arc::clone(&by_tag),
            malformed: Arc::clone(&malformed),
        });
        Ok((entries, by_tag, malformed))
    }

    /// The error for an entry of `index.json` that does not parse.
    fn malformed_entry(&self, m: &Malformed) -> Error {
        Error::InvalidDocument {
            what: format!("{}", self.root.join(INDEX_FILE).display()),
            reason: format!(
                "entry {} of \"manifests\"{} is not a valid descriptor: {}",
                m.position,
                m.tag
                    .as_ref()
                    .map(|t| format!(" (tag {t:?})"))
                    .unwrap_or_default(),
                m.reason
            ),
        }
    }

    /// Syncs the blobs [`Store::put_new_blob`] staged, all at once, renames them into place and
    /// syncs the directories holding them; returns when every blob staged before the call is
    /// in place (also those another task was settling meanwhile). A no-op when none is staged.
    /// Whatever names a blob (a manifest written, an `index.json` edit) and whatever reads a
    /// staged one calls it first, and it runs when the last handle on the layout is dropped.
    ///
    /// # Errors
    /// [`Error::Io`] when a sync or a rename fails: the blobs not renamed are removed.
    pub async fn settle(&self) -> Result<()> {
        if let Ok(_idle) = self.staged.settling.try_lock()
            && self.staged.is_empty()
        {
            return Ok(());
        }
        let staging = Arc::clone(&self.staged);
        tokio::task::spawn_blocking(move || staging.settle(None).map(|_| ()))
            .await
            .map_err(|e| Error::io("syncing blobs", std::io::Error::other(e)))?
    }
}

/// Syncs `blobs/` and each of its algorithm directories: the renames that put blobs (and
/// manifests) in place survive a crash. Done before `index.json` names what they hold, once
/// per edit rather than once per blob. `synced`: directories synced since the caller's last
/// rename already (by the settle it ran just before), not synced again.
fn sync_blob_dirs(root: &Path, synced: &[PathBuf]) -> Result<()> {
    let blobs = root.join("blobs");
    let entries = std::fs::read_dir(&blobs)
        .map_err(|e| Error::io(format!("reading {}", blobs.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", blobs.display()), e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) && !synced.contains(&entry.path()) {
            sync_dir(&entry.path())?;
        }
    }
    if synced.contains(&blobs) {
        return Ok(());
    }
    sync_dir(&blobs)
}

impl OciLayout {
    /// Runs `edit` on `index.json` under the layout's lock and replaces it atomically. Blocks
    /// (syncs, a lock): from async code, go through the blocking pool.
    fn edit_index(&self, edit: impl FnOnce(&mut Vec<Value>)) -> Result<()> {
        self.sweep_stale_temp_files();
        // flock on the directory itself: no lock file to leave behind in the layout.
        let lock = std::fs::File::open(&self.root)
            .map_err(|e| Error::io(format!("opening {}", self.root.display()), e))?;
        lock.lock()
            .map_err(|e| Error::io(format!("locking {}", self.root.display()), e))?;
        let mut index = self.read_index()?;
        if let Some(Value::Array(list)) = index.get_mut("manifests") {
            edit(list);
        }
        let result = (|| {
            let path = self.root.join(INDEX_FILE);
            let ctx = |what: &str| format!("{what} {}", path.display());
            let bytes = canonical_json(&Value::Object(index))?;
            let mut tmp = tempfile::Builder::new()
                .prefix(&format!(".{INDEX_FILE}."))
                .tempfile_in(&self.root)
                .map_err(|e| Error::io(ctx("creating a temporary file for"), e))?;
            tmp.write_all(&bytes)
                .and_then(|()| readable(tmp.as_file()))
                .map_err(|e| Error::io(ctx("writing"), e))?;
            // Staged blobs (and documents) are named before the index can name anything that
            // holds them; the new index is synced with them, in the same journal commit.
            let synced = self.staged.settle(Some(tmp.as_file()))?;
            // What the index is about to name that was renamed into place without its
            // directory synced (a blob put whole, a manifest) is made durable first: the
            // directories the settle synced (after every rename made before this call) are
            // not synced again.
            sync_blob_dirs(&self.root, &synced)?;
            tmp.persist(&path)
                .map_err(|e| Error::io(ctx("replacing"), e.error))?;
            // The rename itself survives a crash only once the directory is synced.
            sync_dir(&self.root)
        })();
        drop(lock); // unlocks
        result
    }

    /// Points `tag` at `descriptor` in `index.json` (replacing what it pointed at), or lists the
    /// descriptor untagged when `tag` is `None` and it is not listed yet.
    ///
    /// Names what is staged first ([`OciLayout::settle`]). Blocks on syncs and the layout's
    /// lock: async code calls [`OciLayout::put_tag`].
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

    /// [`OciLayout::set_tag`] on the blocking pool: the runtime's thread does not wait for the
    /// syncs or the lock.
    ///
    /// # Errors
    /// As [`OciLayout::set_tag`].
    pub async fn put_tag(&self, descriptor: Descriptor, tag: Option<String>) -> Result<()> {
        let layout = self.clone();
        tokio::task::spawn_blocking(move || layout.set_tag(&descriptor, tag.as_deref()))
            .await
            .map_err(|e| Error::io("writing index.json", std::io::Error::other(e)))?
    }

    /// The image a reference without tag or digest means: the layout's only entry.
    ///
    /// # Errors
    /// [`Error::InvalidReference`] when the layout holds no image or several (naming the tags).
    pub fn sole_image(&self) -> Result<ManifestRef> {
        let (entries, _, malformed) = self.cached_index()?;
        match (entries.as_slice(), malformed.as_slice()) {
            ([one], []) => Ok(ManifestRef::Digest(Digest::try_from(one.digest())?)),
            ([], [bad]) => Err(self.malformed_entry(bad)),
            _ => {
                let tags: Vec<String> = entries
                    .iter()
                    .filter_map(|e| e.annotations().as_ref()?.get(REF_NAME).cloned())
                    .collect();
                Err(Error::InvalidReference {
                    input: self.location(),
                    reason: format!(
                        "the layout holds {} images; name one as {}:<tag> or @<digest> (tags: {})",
                        entries.len() + malformed.len(),
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

    /// Opens a blob: a regular file (a symlink to one is followed), checked on the opened
    /// descriptor; a FIFO, a device or a link to `/dev/zero` is refused unread. Returns the file
    /// and its size.
    async fn open_blob_file(&self, digest: &Digest) -> Result<(std::fs::File, u64)> {
        if self.staged.size_of(digest).is_some() {
            self.settle().await?;
        }
        let (path, root) = (self.blob_path(digest), self.root.clone());
        let opened = tokio::task::spawn_blocking(move || open_regular(&path, &root))
            .await
            .map_err(|e| Error::io("opening a blob", std::io::Error::other(e)))??;
        opened.ok_or_else(|| Error::BlobNotFound {
            digest: digest.clone(),
            store: self.location(),
        })
    }

    async fn open_blob(&self, digest: &Digest) -> Result<tokio::io::BufReader<tokio::fs::File>> {
        let (file, _) = self.open_blob_file(digest).await?;
        Ok(tokio::io::BufReader::with_capacity(
            1 << 20,
            tokio::fs::File::from_std(file),
        ))
    }

    async fn read_blob_verified(&self, digest: &Digest) -> Result<Vec<u8>> {
        let (file, len) = self.open_blob_file(digest).await?;
        let too_large = |len: u64| Error::InvalidDocument {
            what: format!("manifest {digest}"),
            reason: format!(
                "{len} bytes is larger than the {} bytes a manifest may have",
                crate::store::MAX_DOCUMENT_SIZE
            ),
        };
        if len > crate::store::MAX_DOCUMENT_SIZE {
            return Err(too_large(len));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        tokio::fs::File::from_std(file)
            .take(crate::store::MAX_DOCUMENT_SIZE + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| Error::io(format!("reading {}", self.blob_path(digest).display()), e))?;
        if bytes.len() as u64 > crate::store::MAX_DOCUMENT_SIZE {
            return Err(too_large(bytes.len() as u64));
        }
        digest.verify(&bytes, || format!("blob {digest} in {}", self.location()))?;
        Ok(bytes)
    }
}

/// Opens `path` for reading if it is a regular file (following symlinks), checked with `fstat`
/// on the opened descriptor. Opened with `O_NONBLOCK`, so a FIFO is refused instead of waiting
/// for a writer. `None` when it does not exist.
fn open_regular(path: &Path, root: &Path) -> Result<Option<(std::fs::File, u64)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let m = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if !m.is_file() {
        return Err(Error::InvalidLayout {
            path: root.to_owned(),
            reason: format!(
                "{} is not a regular file (it is {}); ociup does not read it",
                path.strip_prefix(root).unwrap_or(path).display(),
                file_kind(&m.file_type())
            ),
        });
    }
    Ok(Some((file, m.len())))
}

/// What a file that is not a regular file is, for messages.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a regular file"
    }
}

/// Temporary files are created 0600; what a layout holds is for every reader of the layout.
/// `fsync` of a directory: the entries created, renamed or removed in it become durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing the directory {}", dir.display()), e))
}

/// `fsync`s every file at once, a thread each (a few files): the file system commits them
/// together. The first error.
fn sync_at_once(files: &[std::fs::File]) -> std::io::Result<()> {
    std::thread::scope(|scope| {
        let syncs: Vec<_> = files.iter().map(|f| scope.spawn(|| f.sync_all())).collect();
        let results: Vec<std::io::Result<()>> = syncs
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect();
        results.into_iter().collect()
    })
}

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

/// Blobs [`Store::put_new_blob`] wrote and checked, neither synced nor named yet, and the
/// documents [`Store::put_manifest`] staged above them (the children of an index a copy writes). A copy
/// writes every blob of an image this way; [`OciLayout::settle`] then syncs them together
/// (journal commits shared, no download waiting for another blob's sync) and renames them into
/// place, rank by rank (blobs, then the manifests that reference them, then the indexes...),
/// before anything names them. A staged blob counts as present ([`Store::blob_size`]); reading
/// one settles first.
#[derive(Debug)]
struct Staging {
    root: PathBuf,
    blobs: Mutex<Vec<StagedBlob>>,
    /// The batch being synced and renamed (digest, size, rank): still present to
    /// [`Staging::size_of`] (a reader of one waits for the batch, through `settling`), never
    /// missing for a moment (it moves here from `blobs` under both locks).
    in_flight: Mutex<Vec<(Digest, u64, u32)>>,
    /// Batches that failed: their blobs were removed unnamed. A settle that waited while one
    /// failed returns an error, since blobs its caller counted on may have been in it.
    failures: std::sync::atomic::AtomicU64,
    /// Held while a batch is synced and renamed: a settle that finds nothing staged once it
    /// holds this (and no failure meanwhile) knows that every blob staged before it is in place.
    settling: Mutex<()>,
    /// Batches synced and named so far.
    batches: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct StagedBlob {
    digest: Digest,
    size: u64,
    /// Checked and readable; removed when dropped unnamed.
    tmp: tempfile::NamedTempFile,
    /// When it was staged (see [`STAGED_AGE`]).
    at: std::time::Instant,
    /// 0 for a blob; for a document, one more than the highest rank among the staged (or in
    /// flight) blobs and documents it references. A settle names rank after rank, syncing the
    /// directories in between: nothing is named before what it references.
    rank: u32,
    /// What it references that was staged or in flight when it was staged: each must be in
    /// place when it is named. A batch that failed removed its blobs unnamed, and a document
    /// staged over one of them is then not named either ([`name_batch`]).
    needs: Vec<Digest>,
}

/// A blob staged longer than this is settled at the next write: other processes sweep
/// temporary files older than [`STALE_TEMP_AGE`] from `blobs/`, staged ones included.
const STAGED_AGE: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// Threads syncing one batch of staged blobs at once: enough for the file system to put many
/// small files in one journal commit.
const SETTLE_THREADS: usize = 8;

impl Staging {
    fn blobs(&self) -> std::sync::MutexGuard<'_, Vec<StagedBlob>> {
        self.blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_empty(&self) -> bool {
        self.blobs().is_empty()
    }

    fn size_of(&self, digest: &Digest) -> Option<u64> {
        let staged = self
            .blobs()
            .iter()
            .find(|b| &b.digest == digest)
            .map(|b| b.size);
        staged.or_else(|| {
            self.in_flight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .find(|(d, _, _)| d == digest)
                .map(|(_, size, _)| *size)
        })
    }

    /// Whether the oldest blob staged has waited longer than [`STAGED_AGE`].
    fn is_old(&self) -> bool {
        self.blobs().iter().any(|b| b.at.elapsed() > STAGED_AGE)
    }

    /// The rank a document referencing `references` takes ([`StagedBlob::rank`]) and what it
    /// needs in place to be named ([`StagedBlob::needs`]): the references staged or in flight.
    fn rank_above(&self, references: &[Digest]) -> (u32, Vec<Digest>) {
        // Both locks, in the order a settle takes them: a blob moving from one to the other
        // is seen in one of them.
        let blobs = self.blobs();
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut rank = 0;
        let mut needs = Vec::new();
        for r in references {
            let found = blobs
                .iter()
                .find(|b| &b.digest == r)
                .map(|b| b.rank)
                .or_else(|| in_flight.iter().find(|f| &f.0 == r).map(|f| f.2));
            if let Some(below) = found {
                rank = rank.max(below + 1);
                if !needs.contains(r) {
                    needs.push(r.clone());
                }
            }
        }
        (rank, needs)
    }

    /// Raises the rank of the staged `digest` to at least `rank` and adds `needs` to what it
    /// needs; whether it is staged.
    fn raise(&self, digest: &Digest, rank: u32, needs: &[Digest]) -> bool {
        let mut blobs = self.blobs();
        let Some(b) = blobs.iter_mut().find(|b| &b.digest == digest) else {
            return false;
        };
        b.rank = b.rank.max(rank);
        for n in needs {
            if !b.needs.contains(n) {
                b.needs.push(n.clone());
            }
        }
        true
    }

    /// Adds a blob; one staged under the same digest before is replaced (and removed).
    fn stage(&self, blob: StagedBlob) {
        let mut blobs = self.blobs();
        blobs.retain(|b| b.digest != blob.digest);
        blobs.push(blob);
    }

    /// See [`OciLayout::settle`]. `extra` (a file the caller renames once everything staged is
    /// named: a new `index.json`) is synced with the batch, sharing its journal commit. Returns
    /// the directories it synced (none when nothing was staged): all after the call began, so
    /// after every rename the caller made before it.
    fn settle(&self, extra: Option<&std::fs::File>) -> Result<Vec<PathBuf>> {
        use std::sync::atomic::Ordering;
        let failures = self.failures.load(Ordering::SeqCst);
        let _one = self
            .settling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.failures.load(Ordering::SeqCst) != failures {
            return Err(Error::io(
                format!("naming the blobs staged in {}", self.root.display()),
                std::io::Error::other(
                    "another task's sync of staged blobs failed meanwhile; the blobs in it \
                     were removed unnamed",
                ),
            ));
        }
        let batch = {
            let mut blobs = self.blobs();
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *in_flight = blobs
                .iter()
                .map(|b| (b.digest.clone(), b.size, b.rank))
                .collect();
            std::mem::take(&mut *blobs)
        };
        if batch.is_empty() {
            if let Some(f) = extra {
                f.sync_all().map_err(|e| {
                    Error::io(format!("syncing a file in {}", self.root.display()), e)
                })?;
            }
            return Ok(Vec::new());
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        let named = name_batch(&self.root, batch, extra);
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        if named.is_err() {
            self.failures.fetch_add(1, Ordering::SeqCst);
        }
        named
    }
}

/// Syncs a batch of staged blobs (and `extra`) at once, then renames them into place rank by
/// rank ([`StagedBlob::rank`]), syncing the directories renamed into after each rank. Each
/// file's time is set to now first: a sweep of unreached blobs (which keeps those written
/// recently) counts a blob's age from its naming, not from its download, which may be long
/// before. The algorithm directories (`blobs/sha256`) are made first, and `blobs/` holding them
/// is synced with the files (one journal commit): a renamed blob's entry then needs only its
/// own directory synced, one commit per rank. Returns the directories synced.
///
/// A document one of whose [`StagedBlob::needs`] is not in place (its batch failed, and its
/// file was removed unnamed) is not named: its file is removed, the rest is named, and the
/// batch fails naming the missing blob (a caller about to write `index.json` writes nothing).
fn name_batch(
    root: &Path,
    mut batch: Vec<StagedBlob>,
    extra: Option<&std::fs::File>,
) -> Result<Vec<PathBuf>> {
    let now = std::time::SystemTime::now();
    let blobs = root.join("blobs");
    let mut dirs: Vec<PathBuf> = Vec::new();
    for b in &batch {
        b.tmp
            .as_file()
            .set_modified(now)
            .map_err(|e| Error::io(format!("writing blob {}", b.digest), e))?;
        let dir = blobs.join(b.digest.algorithm().as_str());
        if !dirs.contains(&dir) {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            dirs.push(dir);
        }
    }
    let blobs_dir = std::fs::File::open(&blobs)
        .map_err(|e| Error::io(format!("opening {}", blobs.display()), e))?;
    sync_files(&batch, &[Some(&blobs_dir), extra])?;
    let mut synced = vec![blobs];
    batch.sort_by_key(|b| b.rank);
    // The directories renamed into in the rank being named.
    let mut touched: Vec<PathBuf> = Vec::new();
    let mut missing: Option<Error> = None;
    let mut batch = batch.into_iter().peekable();
    while let Some(b) = batch.next() {
        let final_path = |d: &Digest| {
            root.join("blobs")
                .join(d.algorithm().as_str())
                .join(d.hex())
        };
        let mut end_rank = |touched: &mut Vec<PathBuf>| -> Result<()> {
            for dir in touched.drain(..) {
                sync_dir(&dir)?;
                if !synced.contains(&dir) {
                    synced.push(dir);
                }
            }
            Ok(())
        };
        let dest = final_path(&b.digest);
        let rank = b.rank;
        let ends_rank = batch.peek().is_none_or(|next| next.rank != rank);
        if let Some(gone) = b
            .needs
            .iter()
            .find(|d| !std::fs::symlink_metadata(final_path(d)).is_ok_and(|m| m.is_file()))
        {
            missing.get_or_insert_with(|| {
                Error::io(
                    format!(
                        "naming {} in {}: blob {gone} it references is missing",
                        b.digest,
                        root.display()
                    ),
                    std::io::Error::other(
                        "the sync of the batch that held it failed and removed it unnamed",
                    ),
                )
            });
            drop(b); // removes its file
            if ends_rank {
                end_rank(&mut touched)?;
            }
            continue;
        }
        b.tmp
            .persist(&dest)
            .map_err(|e| Error::io(format!("moving a blob to {}", dest.display()), e.error))?;
        if let Some(parent) = dest.parent()
            && !touched.iter().any(|d| d == parent)
        {
            touched.push(parent.to_owned());
        }
        // The renames survive a crash once the directories holding them are synced; the next
        // rank is named only then.
        if ends_rank {
            end_rank(&mut touched)?;
        }
    }
    missing.map_or(Ok(synced), Err)
}

/// What the last handle on a layout left staged, named on a blocking thread (see the `Drop`
/// of [`Staging`]); named where it is dropped if that thread never ran it.
struct Leftover {
    root: PathBuf,
    blobs: Vec<StagedBlob>,
}

impl Leftover {
    fn name(mut self) {
        let blobs = std::mem::take(&mut self.blobs);
        let _ = name_batch(&self.root, blobs, None);
    }
}

impl Drop for Leftover {
    fn drop(&mut self) {
        if !self.blobs.is_empty() {
            let blobs = std::mem::take(&mut self.blobs);
            let _ = name_batch(&self.root, blobs, None);
        }
    }
}

impl Drop for Staging {
    /// The last handle on the layout is gone: what was written and checked is named now (a
    /// copy that failed half way keeps the blobs it finished, for the next one to skip). A
    /// failure leaves those blobs out (their temporary files are removed): nothing named them.
    ///
    /// Within a tokio runtime the syncs and renames go to its blocking pool, so a task that
    /// drops the last handle does not hold up the runtime's thread; the runtime waits for them
    /// as it shuts down (and one it no longer runs names them where it drops them).
    fn drop(&mut self) {
        let blobs = std::mem::take(
            self.blobs
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if blobs.is_empty() {
            return;
        }
        let leftover = Leftover {
            root: self.root.clone(),
            blobs,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || leftover.name())),
            Err(_) => leftover.name(),
        }
    }
}

/// `fsync`s every staged file and the `extra` ones, [`SETTLE_THREADS`] at once; the first
/// error.
fn sync_files(batch: &[StagedBlob], extra: &[Option<&std::fs::File>]) -> Result<()> {
    let extra: Vec<&std::fs::File> = extra.iter().flatten().copied().collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let count = batch.len() + extra.len();
    let work = || -> Result<()> {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(b) = batch.get(i) {
                b.tmp
                    .as_file()
                    .sync_all()
                    .map_err(|e| Error::io(format!("syncing blob {}", b.digest), e))?;
            } else if let Some(f) = i.checked_sub(batch.len()).and_then(|j| extra.get(j)) {
                f.sync_all()
                    .map_err(|e| Error::io("syncing a file of the layout", e))?;
            } else {
                return Ok(());
            }
        }
    };
    let threads = count.min(SETTLE_THREADS);
    if threads <= 1 {
        return work();
    }
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut result = work();
        for h in helpers {
            let r = h
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = result.and(r);
        }
        result
    })
}

/// Bytes read from a download before they go to the writer thread as one chunk.
const WRITE_CHUNK: usize = 1 << 20;
/// Chunks queued per blob between the download and its writer thread (memory per blob in flight:
/// about `WRITE_QUEUE + 2` chunks).
const WRITE_QUEUE: usize = 2;
/// Bytes written to a blob between two requests to its helper thread to `fdatasync` it: the
/// disk writes while the rest downloads, so the `fsync` before the rename finds little left to
/// do (without it, the whole blob waited for the disk after its last byte arrived).
const SYNC_EVERY: u64 = 4 << 20;
/// A staged blob at least this large is `fdatasync`ed by its writer thread at its end: the
/// settle that names it (after the copy's last byte) finds it on disk already. Smaller ones are
/// left to the settle, sharing its journal commit.
const SYNC_AT_END: u64 = 256 << 10;

/// What the download hands to a blob's writer thread.
enum Chunk {
    Data(Vec<u8>),
    /// Every byte was sent (and the size checked): verify, sync and move into place.
    End,
}

/// Reads `data` in [`WRITE_CHUNK`]s into `chunks`, checking the size as it goes (a blob longer
/// than announced fails at the first extra byte), reusing the buffers the writer sends back.
/// Sends [`Chunk::End`] after the last byte; returns early, without it, when the writer is gone.
async fn read_chunks<R: AsyncRead + Unpin>(
    mut data: R,
    digest: &Digest,
    size: u64,
    chunks: &tokio::sync::mpsc::Sender<Chunk>,
    mut spare: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) -> Result<()> {
    let too_long = |actual| Error::SizeMismatch {
        digest: digest.clone(),
        expected: size,
        actual,
    };
    let mut seen = 0u64;
    loop {
        let mut buf = spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(WRITE_CHUNK));
        buf.clear();
        let mut eof = false;
        while buf.len() < WRITE_CHUNK {
            let room = (WRITE_CHUNK - buf.len()) as u64;
            let n = (&mut data)
                .take(room)
                .read_buf(&mut buf)
                .await
                .map_err(|e| Error::from_io(format!("reading blob {digest}"), e))?;
            if n == 0 {
                eof = true;
                break;
            }
            seen += n as u64;
            if seen > size {
                return Err(too_long(seen));
            }
        }
        if !buf.is_empty() && chunks.send(Chunk::Data(buf)).await.is_err() {
            return Ok(()); // the writer failed; its error says why
        }
        if eof {
            if seen != size {
                return Err(too_long(seen));
            }
            let _ = chunks.send(Chunk::End).await;
            return Ok(());
        }
    }
}

impl OciLayout {
    /// A blob's writer thread: writes and hashes the chunks, and after [`Chunk::End`] checks size
    /// and digest, makes the file readable, `fsync`s it and renames it into place (`name_now`),
    /// or returns it to be staged, `fdatasync`ed first when at least [`SYNC_AT_END`] bytes.
    /// Anything else leaves no file behind (`tmp` is removed when dropped).
    ///
    /// Written bytes go to disk while the rest downloads: every [`SYNC_EVERY`] bytes a helper
    /// thread is asked to `fdatasync` the file (the writer does not wait for it), so the `fsync`
    /// before the rename finds little left to write. Its errors fail the blob: they are not
    /// reported again to a later `fsync` of the same file.
    fn write_blob(
        &self,
        tmp: tempfile::NamedTempFile,
        digest: &Digest,
        size: u64,
        mut chunks: tokio::sync::mpsc::Receiver<Chunk>,
        recycle: &tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
        name_now: bool,
    ) -> Result<Option<tempfile::NamedTempFile>> {
        let ctx = || format!("writing blob {digest} to {}", self.location());
        let file = tmp.as_file();
        let (written, actual) = std::thread::scope(|scope| -> Result<(u64, Digest)> {
            let mut hasher = digest.algorithm().hasher();
            let (mut written, mut unsynced) = (0u64, 0u64);
            let mut out = file;
            let mut syncer = None;
            let received = loop {
                match chunks.blocking_recv() {
                    Some(Chunk::Data(buf)) => {
                        hasher.update(&buf);
                        if let Err(e) = out.write_all(&buf) {
                            break Err(Error::io(ctx(), e));
                        }
                        written += buf.len() as u64;
                        unsynced += buf.len() as u64;
                        let _ = recycle.send(buf);
                        if unsynced >= SYNC_EVERY {
                            unsynced = 0;
                            let (wake, _) = syncer.get_or_insert_with(|| {
                                let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
                                let syncing = scope.spawn(move || -> std::io::Result<()> {
                                    while woken.recv().is_ok() {
                                        file.sync_data()?;
                                    }
                                    Ok(())
                                });
                                (wake, syncing)
                            });
                            // Full: a sync is still to come anyway. Gone: it failed (see below).
                            let _ = wake.try_send(());
                        }
                    }
                    Some(Chunk::End) => break Ok(()),
                    // The download failed or was dropped (its error is the one reported).
                    None => {
                        break Err(Error::io(
                            ctx(),
                            std::io::Error::other("the download stopped before the end"),
                        ));
                    }
                }
            };
            if let Some((wake, syncing)) = syncer {
                drop(wake);
                syncing
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    .map_err(|e| Error::io(ctx(), e))?;
            }
            received?;
            Ok((written, hasher.finish()))
        })?;
        if written != size {
            return Err(Error::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: written,
            });
        }
        if &actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("blob {digest}"),
                expected: digest.clone(),
                actual,
            });
        }
        readable(tmp.as_file()).map_err(|e| Error::io(ctx(), e))?;
        if !name_now {
            // Its last bytes go to disk now, while other blobs download (its download slot is
            // free already), not with every other blob's at the settle after the last byte.
            if written >= SYNC_AT_END {
                tmp.as_file().sync_data().map_err(|e| Error::io(ctx(), e))?;
            }
            return Ok(Some(tmp));
        }
        tmp.as_file().sync_all().map_err(|e| Error::io(ctx(), e))?;
        let dest = self.blob_path(digest);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        tmp.persist(&dest)
            .map_err(|e| Error::io(format!("moving a blob to {}", dest.display()), e.error))?;
        Ok(None)
    }

    /// Writes a blob through a writer thread ([`OciLayout::write_blob`]): named at once
    /// (`name_now`), or staged for the next [`OciLayout::settle`].
    async fn write_new_blob<R: AsyncRead + Send + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        data: R,
        name_now: bool,
    ) -> Result<()> {
        self.sweep_stale_temp_files();
        let dir = self.root.join("blobs");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".ociup-")
            .tempfile_in(&dir)
            .map_err(|e| Error::io(format!("creating a temporary file in {}", dir.display()), e))?;
        let (chunks, queued) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let (recycle, spare) = tokio::sync::mpsc::unbounded_channel();
        let writer = {
            let (layout, digest) = (self.clone(), digest.clone());
            tokio::task::spawn_blocking(move || {
                layout.write_blob(tmp, &digest, size, queued, &recycle, name_now)
            })
        };
        let read = read_chunks(data, digest, size, &chunks, spare).await;
        drop(chunks); // without Chunk::End: the writer gives up and removes the file
        let written = writer.await.map_err(|e| {
            Error::io(
                format!("writing blob {digest} to {}", self.location()),
                std::io::Error::other(e),
            )
        });
        // A failed download is the cause of whatever the writer then says.
        read?;
        if let Some(tmp) = written?? {
            self.staged.stage(StagedBlob {
                digest: digest.clone(),
                size,
                tmp,
                at: std::time::Instant::now(),
                rank: 0,
                needs: Vec::new(),
            });
            if self.staged.is_old() {
                self.settle().await?;
            }
        }
        Ok(())
    }
}

impl OciLayout {
    /// Writes a document (manifest or index) unsynced and stages it above the staged blobs and
    /// documents it references ([`StagedBlob::rank`]); whether it is staged. Nothing is written
    /// (and `false` said) when it is in place already; one staged already keeps its file, at a
    /// rank at least as high.
    async fn stage_document(&self, document: &RawDocument) -> Result<bool> {
        let references = referenced_digests(document.bytes());
        let (rank, needs) = self.staged.rank_above(&references);
        if self.staged.raise(document.digest(), rank, &needs) {
            return Ok(true);
        }
        let path = self.blob_path(document.digest());
        if tokio::fs::metadata(&path)
            .await
            .is_ok_and(|m| m.is_file() && m.len() == document.size())
        {
            return Ok(false);
        }
        self.sweep_stale_temp_files();
        let (dir, bytes) = (self.root.join("blobs"), document.bytes().to_vec());
        let tmp = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let mut tmp = tempfile::Builder::new()
                .prefix(".ociup-")
                .tempfile_in(&dir)?;
            tmp.write_all(&bytes)?;
            readable(tmp.as_file())?;
            Ok::<_, std::io::Error>(tmp)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| {
            Error::io(
                format!("writing {} to {}", document.digest(), self.location()),
                e,
            )
        })?;
        let (rank, needs) = self.staged.rank_above(&references);
        self.staged.stage(StagedBlob {
            digest: document.digest().clone(),
            size: document.size(),
            tmp,
            at: std::time::Instant::now(),
            rank,
            needs,
        });
        Ok(true)
    }
}

/// The digests of every descriptor a manifest or index lists (config, layers, manifests,
/// subject, blobs); those that do not parse are left out.
fn referenced_digests(bytes: &[u8]) -> Vec<Digest> {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return Vec::new();
    };
    let one = |d: &Value| d.get("digest")?.as_str()?.parse::<Digest>().ok();
    let mut out = Vec::new();
    for key in ["config", "subject"] {
        out.extend(v.get(key).and_then(one));
    }
    for key in ["layers", "manifests", "blobs"] {
        if let Some(list) = v.get(key).and_then(Value::as_array) {
            out.extend(list.iter().filter_map(one));
        }
    }
    out
}

impl Store for OciLayout {
    fn location(&self) -> String {
        format!("oci:{}", self.root.display())
    }

    /// A layout is files anyone may have damaged: a copy checks each blob.
    fn manifest_implies_blobs(&self) -> bool {
        false
    }

    /// A blob staged by [`Store::put_new_blob`] counts, at its size: it is named before
    /// anything names it.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some(size) = self.staged.size_of(digest) {
            return Ok(Some(size));
        }
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(m) => Err(self.invalid(format!(
                "{} is not a regular file (it is {}); ociup does not read it",
                path.strip_prefix(&self.root).unwrap_or(&path).display(),
                file_kind(&m.file_type())
            ))),
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
        self.write_new_blob(digest, size, data, true).await
    }

    /// Writes the blob whatever the layout holds under its digest: a copy that found it
    /// missing, or damaged, replaces it (by rename, so readers see the old file or the new).
    /// Staged: checked as it is written, then synced and named by the next
    /// [`OciLayout::settle`] together with the other blobs written meanwhile.
    async fn put_new_blob<R: AsyncRead + Send + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        data: R,
    ) -> Result<()> {
        self.write_new_blob(digest, size, data, false).await
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
    ///
    /// Nothing is named before what it references. Untagged, a document that references
    /// staged blobs or documents (a copy's) is staged above them, to be named with them at the
    /// next [`OciLayout::settle`] (an index copy syncs once, not once per platform); otherwise
    /// it is named on return. With a tag, it is staged and everything staged is named with
    /// the `index.json` edit: one sync of all the files at once, the renames rank by rank,
    /// then `index.json`.
    async fn put_manifest(&self, document: &RawDocument, tag: Option<&str>) -> Result<()> {
        if let Some(t) = tag {
            validate_tag(t)?;
        }
        crate::store::check_document_size("manifest", document)?;
        match tag {
            None => {
                if self
                    .staged
                    .rank_above(&referenced_digests(document.bytes()))
                    .0
                    > 0
                    && self.stage_document(document).await?
                {
                    return Ok(());
                }
                // The blobs it references are in place before it is.
                self.settle().await?;
                self.put_blob(document.digest(), document.size(), document.bytes())
                    .await
            }
            Some(t) => {
                self.stage_document(document).await?;
                self.put_tag(document.descriptor(), Some(t.to_owned()))
                    .await
            }
        }
    }

    async fn resolve_tag(&self, tag: &str) -> Result<Descriptor> {
        let (entries, by_tag, malformed) = self.cached_index()?;
        if let Some(&i) = by_tag.get(tag) {
            return Ok(entries[i].clone());
        }
        match malformed.iter().find(|m| m.tag.as_deref() == Some(tag)) {
            Some(m) => Err(self.malformed_entry(m)),
            None => Err(Error::TagNotFound {
                tag: tag.to_owned(),
                store: self.location(),
            }),
        }
    }

    async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        let (layout, d) = (self.clone(), digest.to_string());
        tokio::task::spawn_blocking(move || {
            layout.edit_index(|list| {
                list.retain(|e| e.get("digest").and_then(Value::as_str) != Some(&d));
            })
        })
        .await
        .map_err(|e| Error::io("writing index.json", std::io::Error::other(e)))?
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

    /// A download that breaks off.
    struct Broken;

    impl AsyncRead for Broken {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::Error::other("connection reset")))
        }
    }

    #[tokio::test]
    async fn large_blobs_go_through_the_writer_thread_and_failures_leave_nothing() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let before = files(layout.root());
        // Several chunks and periodic syncs, and a last chunk that is not full.
        let data: Vec<u8> = (0..SYNC_EVERY as usize + 3 * WRITE_CHUNK + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        let (d, size) = (Digest::sha256(&data), data.len() as u64);

        let mut longer = data.clone();
        longer.push(0);
        let err = layout.put_blob(&d, size, &longer[..]).await.unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
        let err = layout.put_blob(&d, size, &data[..5]).await.unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
        let mut wrong = data.clone();
        *wrong.last_mut().unwrap() ^= 1;
        let err = layout.put_blob(&d, size, &wrong[..]).await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        let broken = (&data[..2 * WRITE_CHUNK + 7]).chain(Broken);
        let err = layout.put_blob(&d, size, broken).await.unwrap_err();
        let Error::Io { source, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(source.to_string(), "connection reset");
        assert_eq!(files(layout.root()), before, "no temporary file left");

        layout.put_blob(&d, size, &data[..]).await.unwrap();
        let path = layout.blob_path(&d);
        assert!(std::fs::read(&path).unwrap() == data);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[tokio::test]
    async fn a_failed_settle_fails_its_waiters_and_names_nothing() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("l");
        let layout = OciLayout::open_or_create(&root).unwrap();
        let a = Digest::sha256(b"staged a");
        layout.put_new_blob(&a, 8, &b"staged a"[..]).await.unwrap();
        // The batch cannot be named: blobs/sha256 is a file.
        let dir = root.join("blobs/sha256");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::write(&dir, b"in the way").unwrap();
        // Two settles wait at the lock; the first to take it takes the batch and fails, and
        // the other, which waited meanwhile, fails too: its caller may have counted on blobs
        // of that batch (without the failure count it would find nothing staged and say Ok).
        let held = layout.staged.settling.lock().unwrap();
        let settles: Vec<_> = (0..2)
            .map(|_| {
                let staged = Arc::clone(&layout.staged);
                std::thread::spawn(move || staged.settle(None))
            })
            .collect();
        // Both read the failure count and wait at the lock by then.
        std::thread::sleep(std::time::Duration::from_millis(500));
        drop(held);
        for settle in settles {
            assert!(settle.join().unwrap().is_err());
        }
        assert!(!layout.blob_path(&a).exists());
        // Through the public path: staged again, the settle fails, the blob is not counted as
        // present any more, nothing is left behind, and index.json names nothing.
        layout.put_new_blob(&a, 8, &b"staged a"[..]).await.unwrap();
        let err = layout.settle().await.unwrap_err().to_string();
        assert!(err.contains("blobs/sha256"), "{err}");
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(layout.blob_size(&a).await.unwrap(), None);
        let leftovers = std::fs::read_dir(root.join("blobs"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".ociup-")
            })
            .count();
        assert_eq!(leftovers, 0);
        assert!(layout.list_tags().await.unwrap().is_empty());
    }

    /// Two copies into one layout: the first's batch holds a layer the second also uses (in
    /// flight, so present to it) when the second stages its manifest over it; then that batch
    /// fails and removes the layer. Neither the tag (through `put_tag`) nor the last handle
    /// dropped names the manifest over the missing layer.
    #[test]
    fn a_document_staged_over_a_batch_that_failed_is_not_named() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for through_the_tag in [true, false] {
            let t = tempfile::tempdir().unwrap();
            let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
            let (a, b) = (Digest::sha256(b"layer a"), Digest::sha256(b"layer b"));
            let config = Digest::sha256(b"config");
            runtime.block_on(async {
                layout.put_new_blob(&a, 7, &b"layer a"[..]).await.unwrap();
                layout.put_blob(&config, 6, &b"config"[..]).await.unwrap();
            });
            // (1) A settle takes the batch holding layer a, as `Staging::settle` does.
            let settling = layout.staged.settling.lock().unwrap();
            let batch = {
                let mut blobs = layout.staged.blobs();
                *layout.staged.in_flight.lock().unwrap() = blobs
                    .iter()
                    .map(|b| (b.digest.clone(), b.size, b.rank))
                    .collect();
                std::mem::take(&mut *blobs)
            };
            // (2) The other copy finishes layer b and puts its manifest over both.
            let manifest = manifest_of(&config, &[&a, &b]);
            runtime.block_on(async {
                layout.put_new_blob(&b, 7, &b"layer b"[..]).await.unwrap();
                layout.put_manifest(&manifest, None).await.unwrap();
            });
            // (3) The batch fails: its files are removed unnamed.
            drop(batch);
            layout.staged.in_flight.lock().unwrap().clear();
            layout
                .staged
                .failures
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(settling);
            // (4) The tag, or the last handle dropped (outside a runtime: named where dropped).
            let (root, m) = (
                layout.root().to_owned(),
                layout.blob_path(manifest.digest()),
            );
            if through_the_tag {
                let err = runtime
                    .block_on(layout.put_tag(manifest.descriptor(), Some("t".into())))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(&a.to_string()), "{err}");
                assert!(runtime.block_on(layout.list_tags()).unwrap().is_empty());
            } else {
                drop(layout);
            }
            assert!(!root.join("blobs/sha256").join(a.hex()).exists());
            assert!(!m.exists(), "a manifest named over a missing layer");
            // Layer b, in place, was named all the same; no temporary file is left.
            assert!(root.join("blobs/sha256").join(b.hex()).exists());
            let temporaries = std::fs::read_dir(root.join("blobs"))
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().starts_with(".ociup-")
                })
                .count();
            assert_eq!(temporaries, 0);
        }
    }

    #[tokio::test]
    async fn a_new_blob_is_staged_until_something_reads_or_names_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("l");
        let layout = OciLayout::open_or_create(&root).unwrap();
        let temporaries = || {
            std::fs::read_dir(root.join("blobs"))
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().starts_with(".ociup-")
                })
                .count()
        };
        let put = |bytes: &'static [u8]| {
            let layout = layout.clone();
            async move {
                let d = Digest::sha256(bytes);
                layout
                    .put_new_blob(&d, bytes.len() as u64, bytes)
                    .await
                    .unwrap();
                d
            }
        };
        // Written and checked, not named; it counts as present.
        let a = put(b"staged a").await;
        assert!(!layout.blob_path(&a).exists());
        assert_eq!(temporaries(), 1);
        assert_eq!(layout.blob_size(&a).await.unwrap(), Some(8));
        // Reading it names it first.
        let mut read = Vec::new();
        layout
            .get_blob(&a, 8)
            .await
            .unwrap()
            .read_to_end(&mut read)
            .await
            .unwrap();
        assert_eq!(read, b"staged a");
        assert!(layout.blob_path(&a).exists());
        assert_eq!(temporaries(), 0);

        // A manifest is written only after the blobs staged before it are in place.
        let b = put(b"staged b").await;
        let c = put(b"staged c").await;
        layout.put_manifest(&doc(1), None).await.unwrap();
        for d in [&b, &c, doc(1).digest()] {
            assert!(layout.blob_path(d).exists(), "{d}");
        }
        // So is an index.json edit; a failed write stages nothing.
        let e = put(b"staged e").await;
        let wrong = Digest::sha256(b"something else");
        assert!(layout.put_new_blob(&wrong, 3, &b"abc"[..]).await.is_err());
        layout.set_tag(&doc(1).descriptor(), Some("t")).unwrap();
        assert!(layout.blob_path(&e).exists());
        assert!(!layout.blob_path(&wrong).exists());
        assert_eq!(temporaries(), 0);

        // The last handle gone, what is staged is named (on the blocking pool).
        let f = put(b"staged f").await;
        assert!(!layout.blob_path(&f).exists());
        drop(layout);
        let named = root.join("blobs/sha256").join(f.hex());
        eventually(|| named.exists()).await;
        assert_eq!(std::fs::read(&named).unwrap(), b"staged f");
        assert_eq!(temporaries(), 0);
    }

    /// Waits (10 s at most) until `done`.
    async fn eventually(done: impl Fn() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(done(), "not done after 10 s");
    }

    /// A manifest of `config` and `layers` (descriptors of 1 byte: only the digests matter).
    fn manifest_of(config: &Digest, layers: &[&Digest]) -> RawDocument {
        let desc = |d: &Digest| json!({"mediaType": "x", "digest": d.to_string(), "size": 1});
        RawDocument::canonical(
            &json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
                "config": desc(config), "layers": layers.iter().map(|d| desc(d)).collect::<Vec<_>>()}),
            media_type::OCI_MANIFEST,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn documents_over_staged_blobs_are_staged_above_them_and_named_in_one_batch() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let mut blobs = Vec::new();
        for bytes in [&b"config a"[..], b"layer a", b"config b", b"layer b"] {
            let d = Digest::sha256(bytes);
            layout
                .put_new_blob(&d, bytes.len() as u64, bytes)
                .await
                .unwrap();
            blobs.push(d);
        }
        let a = manifest_of(&blobs[0], &[&blobs[1]]);
        let b = manifest_of(&blobs[2], &[&blobs[3]]);
        let index = RawDocument::canonical(
            &json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX,
                "manifests": [a.descriptor(), b.descriptor()]}),
            media_type::OCI_INDEX,
        )
        .unwrap();
        // Untagged over staged blobs: staged too, one rank up; present, not named.
        layout.put_manifest(&a, None).await.unwrap();
        layout.put_manifest(&b, None).await.unwrap();
        assert!(!layout.blob_path(a.digest()).exists());
        assert_eq!(layout.blob_size(a.digest()).await.unwrap(), Some(a.size()));
        let ranks = |layout: &OciLayout| -> Vec<(Digest, u32)> {
            let mut r: Vec<_> = layout
                .staged
                .blobs()
                .iter()
                .map(|b| (b.digest.clone(), b.rank))
                .collect();
            r.sort();
            r
        };
        let mut want: Vec<_> = blobs.iter().map(|d| (d.clone(), 0)).collect();
        want.extend([(a.digest().clone(), 1), (b.digest().clone(), 1)]);
        want.sort();
        assert_eq!(ranks(&layout), want);
        // Tagged: the index is staged above them, and everything is named at once.
        assert_eq!(layout.batches_named(), 0);
        layout.put_manifest(&index, Some("t")).await.unwrap();
        assert_eq!(layout.batches_named(), 1, "one sync for the whole index");
        for d in blobs.iter().chain([a.digest(), b.digest(), index.digest()]) {
            assert!(layout.blob_path(d).exists(), "{d}");
        }
        assert!(ranks(&layout).is_empty());
        assert_eq!(layout.list_tags().await.unwrap(), ["t"]);
        // Untagged over nothing staged: named on return, as before.
        let c = Digest::sha256(b"config c");
        layout.put_blob(&c, 8, &b"config c"[..]).await.unwrap();
        let m = manifest_of(&c, &[]);
        layout.put_manifest(&m, None).await.unwrap();
        assert!(layout.blob_path(m.digest()).exists());
    }

    #[test]
    fn the_last_handle_dropped_in_a_runtime_names_its_blobs_off_the_runtime_thread() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("l");
        // One thread for tasks, one for blocking work.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        runtime.block_on(async {
            let layout = OciLayout::open_or_create(&root).unwrap();
            let d = Digest::sha256(b"staged");
            layout.put_new_blob(&d, 6, &b"staged"[..]).await.unwrap();
            let named = layout.blob_path(&d);
            // The blocking thread is busy until released.
            let (release, wait) = std::sync::mpsc::channel::<()>();
            let busy = tokio::task::spawn_blocking(move || wait.recv());
            // Dropped on the runtime's thread, which must not sync and rename there: the work
            // waits for the blocking thread.
            drop(layout);
            assert!(!named.exists(), "named on the runtime's thread");
            release.send(()).unwrap();
            busy.await.unwrap().unwrap();
            eventually(|| named.exists()).await;
        });
        // Dropped again while the blocking thread is busy, and the runtime shut down at once
        // (as the CLI's, when its command returns): named by the time the runtime is gone.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        let d = Digest::sha256(b"staged 2");
        let (release, wait) = std::sync::mpsc::channel::<()>();
        runtime.block_on(async {
            let layout = OciLayout::open(&root).unwrap();
            layout.put_new_blob(&d, 8, &b"staged 2"[..]).await.unwrap();
            drop(tokio::task::spawn_blocking(move || wait.recv()));
            drop(layout);
        });
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            release.send(())
        });
        drop(runtime);
        let _ = releaser.join().unwrap();
        assert!(root.join("blobs/sha256").join(d.hex()).exists());
    }

    #[test]
    fn a_tag_written_from_async_code_waits_for_the_lock_off_the_runtime_thread() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("l");
        let layout = OciLayout::open_or_create(&root).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // Another writer holds the layout's lock for a second.
            let lock = std::fs::File::open(&root).unwrap();
            lock.lock().unwrap();
            let unlock = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(1));
                drop(lock);
            });
            let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let ticker = tokio::spawn({
                let ticks = Arc::clone(&ticks);
                async move {
                    loop {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
            layout.put_manifest(&doc(1), Some("a")).await.unwrap();
            // The runtime's only thread went on with the other task meanwhile.
            let ticked = ticks.load(std::sync::atomic::Ordering::Relaxed);
            assert!(
                ticked >= 5,
                "{ticked} ticks while the tag waited for the lock"
            );
            ticker.abort();
            unlock.join().unwrap();
            assert_eq!(layout.list_tags().await.unwrap(), ["a"]);
        });
    }

    #[tokio::test]
    async fn a_blob_staged_long_ago_counts_its_age_from_its_naming() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let d = Digest::sha256(b"downloaded long ago");
        layout
            .put_new_blob(&d, 19, &b"downloaded long ago"[..])
            .await
            .unwrap();
        // Its download ended two hours ago (a copy that went on with larger blobs since).
        let hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600);
        let tmp = layout.staged.blobs()[0].tmp.path().to_owned();
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(hours_ago)
            .unwrap();
        layout.settle().await.unwrap();
        let modified = std::fs::metadata(layout.blob_path(&d))
            .unwrap()
            .modified()
            .unwrap();
        assert!(
            modified.elapsed().unwrap() < std::time::Duration::from_secs(600),
            "named with the time of its download"
        );
        // Not referenced yet (its manifest comes next): a sweep that keeps the last hour's
        // blobs keeps it.
        let swept = crate::managed::gc::sweep(&layout, crate::managed::gc::SweepOptions::default())
            .unwrap();
        assert_eq!(swept.removed, 0);
        assert!(layout.blob_path(&d).exists());
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

    fn mkfifo(path: &Path) {
        let st = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// A guard against the hang this module must not have: a read that blocks fails the test.
    async fn unhung<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(20), f)
            .await
            .expect("it hung")
    }

    #[tokio::test]
    async fn files_that_are_not_regular_are_refused_unread() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        layout.put_manifest(&doc(1), Some("a")).await.unwrap();
        layout.put_manifest(&doc(2), Some("b")).await.unwrap();
        let tag = |t: &str| ManifestRef::Tag(t.into());
        // A manifest blob that is a symlink to /dev/zero, and one that is a FIFO.
        let zero = layout.blob_path(doc(1).digest());
        std::fs::remove_file(&zero).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let fifo = layout.blob_path(doc(2).digest());
        std::fs::remove_file(&fifo).unwrap();
        mkfifo(&fifo);
        for (t, kind) in [("a", "a character device"), ("b", "a FIFO")] {
            let err = unhung(layout.get_manifest(&tag(t))).await.unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("is not a regular file") && msg.contains(kind),
                "{msg}"
            );
        }
        let d = doc(2);
        let err = unhung(layout.get_blob(d.digest(), d.size())).await;
        assert!(err.is_err());
        let err = unhung(layout.blob_size(d.digest())).await.unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");

        // index.json a FIFO: the layout is refused, not waited on.
        let index = layout.root().join(INDEX_FILE);
        std::fs::remove_file(&index).unwrap();
        mkfifo(&index);
        let err = unhung(async { OciLayout::open(layout.root()) })
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("index.json is not a regular file"),
            "{err}"
        );
        let err = unhung(async { layout.index_entries() }).await.unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
    }

    #[test]
    fn a_symlinked_blobs_directory_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let blobs = layout.root().join("blobs");
        std::fs::rename(&blobs, t.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), &blobs).unwrap();
        let err = OciLayout::open(layout.root()).unwrap_err().to_string();
        assert!(
            err.contains("blobs is not a directory (it is a symlink)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn one_malformed_entry_leaves_the_other_tags_readable() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        layout.put_manifest(&doc(1), Some("a")).await.unwrap();
        layout.put_manifest(&doc(2), Some("b")).await.unwrap();
        let path = layout.root().join(INDEX_FILE);
        let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let broken = json!({"mediaType": media_type::OCI_INDEX, "digest": "sha256:nothex",
            "size": 1, "annotations": {REF_NAME: "broken"}});
        v["manifests"].as_array_mut().unwrap().insert(1, broken);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();

        let a = layout.get_manifest(&ManifestRef::Tag("a".into())).await;
        assert_eq!(a.unwrap().bytes(), doc(1).bytes());
        assert_eq!(layout.list_tags().await.unwrap(), ["a", "b"]);
        let err = layout.resolve_tag("broken").await.unwrap_err().to_string();
        assert!(
            err.contains("entry 1 of \"manifests\" (tag \"broken\") is not a valid descriptor"),
            "{err}"
        );
        // Writes keep the entry as it is (it is not ociup's to drop).
        layout.put_manifest(&doc(3), Some("c")).await.unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["manifests"][1]["digest"], "sha256:nothex");
        assert_eq!(layout.list_tags().await.unwrap(), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn the_first_write_removes_temporary_files_of_killed_writes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("l");
        OciLayout::open_or_create(&root).unwrap();
        let aged =
            std::time::SystemTime::now() - STALE_TEMP_AGE - std::time::Duration::from_secs(60);
        let plant = |rel: &str, old: bool| {
            let f = std::fs::File::create(root.join(rel)).unwrap();
            f.set_len(1 << 20).unwrap();
            if old {
                f.set_modified(aged).unwrap();
            }
        };
        plant("blobs/.ociup-killed", true);
        plant(".index.json.killed", true);
        plant("blobs/.ociup-live", false);
        plant("blobs/not-ours", true);
        // Reading removes nothing; the first write does.
        let layout = OciLayout::open(&root).unwrap();
        layout.list_tags().await.unwrap();
        assert!(root.join("blobs/.ociup-killed").exists());
        layout.put_manifest(&doc(1), Some("a")).await.unwrap();
        for (rel, kept) in [
            ("blobs/.ociup-killed", false),
            (".index.json.killed", false),
            ("blobs/.ociup-live", true),
            ("blobs/not-ours", true),
        ] {
            assert_eq!(root.join(rel).exists(), kept, "{rel}");
        }
    }

    #[tokio::test]
    async fn a_document_too_large_to_read_back_is_not_written() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let before = files(layout.root());
        // Built as text: canonical JSON of 16 MiB takes seconds in a debug build.
        let big = format!(
            r#"{{"manifests":[],"mediaType":"{}","schemaVersion":2,"x":"{}"}}"#,
            media_type::OCI_INDEX,
            "x".repeat(crate::store::MAX_DOCUMENT_SIZE as usize)
        );
        let big = RawDocument::new(big.into_bytes(), media_type::OCI_INDEX);
        let err = layout.put_manifest(&big, Some("big")).await.unwrap_err();
        assert!(
            err.to_string().contains("ociup reads back; not written"),
            "{err}"
        );
        assert_eq!(files(layout.root()), before);
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

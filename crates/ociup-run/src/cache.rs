//! The layer cache: each layer unpacked once per diff_id, and the root file system of an image
//! assembled once from its layers by hardlinks.
//!
//! ```text
//! CACHE/layers/sha256-HEX/tree      one layer unpacked alone (whiteouts kept aside, in `meta`)
//! CACHE/layers/sha256-HEX/meta      its whiteouts, links to lower layers, implicit directories
//! CACHE/layers/sha256-HEX.lock      held shared while the layer is used, exclusive to make it
//! CACHE/snapshots/sha256-CHAIN/rootfs  an image's root file system: hardlinks into the layers
//! CACHE/snapshots/sha256-CHAIN.lock    held shared while a container runs from it
//! ```
//!
//! A layer's entry is named after its diff_id (`.caller` is appended when the files keep the
//! caller as owner, not the layers' owners); an image's snapshot after the OCI chain id of its
//! top layer, so two images sharing their layers share one snapshot, and an image on the same
//! base as another unpacks only its own layers. Everything is made in a `.tmp-*` directory and
//! renamed into place; a lock file per entry (`flock`) makes two runs at once wait for one
//! another instead of unpacking twice, and lets `prune` skip what a run uses.
//!
//! Files are hardlinked, never copied: the space taken is one copy of each layer's files plus
//! the directory entries and inodes of each snapshot. A snapshot is meant to be mounted
//! read-only (a container writing to it would write into the cache); [`LayerCache::clone_rootfs`]
//! makes a copy a container may write to.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use filetime::FileTime;
use ociup_core::Digest;
use ociup_core::ops::Image;
use ociup_core::store::Store;

use crate::apply::{self, DirMeta, Isolated, Tree};
use crate::error::{Error, Result};
use crate::path::{self, Missing};
use crate::unpack::{LayerPlan, apply_blob, plan};

/// Directories made in every snapshot, where a runtime mounts the default file systems (a
/// snapshot is shared read-only, so the runtime cannot make them itself).
const MOUNT_POINTS: &[&str] = &["proc", "dev", "sys", "tmp", "var/tmp", "run"];

/// A layer cache in a directory (created when first used).
#[derive(Clone, Debug)]
pub struct LayerCache {
    root: PathBuf,
}

/// What [`LayerCache::snapshot`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotReport {
    /// Layers of the image.
    pub layers: usize,
    /// The diff_ids of the layers unpacked now (the others were in the cache).
    pub unpacked: Vec<String>,
    /// Bytes of file contents unpacked now.
    pub bytes_unpacked: u64,
    /// The chain id naming the snapshot.
    pub chain_id: String,
    /// Whether the snapshot was assembled now (otherwise it was in the cache).
    pub assembled: bool,
    /// Whether files keep the layers' owners.
    pub owners_from_layers: bool,
    /// Entries of the layers not created (device nodes, FIFOs), one note each.
    pub skipped: Vec<String>,
}

/// An image's root file system in the cache, held (shared lock) until dropped so that `prune`
/// leaves it alone while a container runs from it.
#[derive(Debug)]
pub struct Snapshot {
    /// The root file system: mount it read-only.
    pub rootfs: PathBuf,
    /// What was done to get it.
    pub report: SnapshotReport,
    _lock: File,
}

/// One entry of the cache, as [`LayerCache::entries`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheEntry {
    /// `layer` or `snapshot`.
    pub kind: &'static str,
    /// The layer's diff_id or the snapshot's chain id.
    pub digest: String,
    /// Whether its files keep the layers' owners.
    pub owners_from_layers: bool,
    /// Bytes of file contents it alone holds (a snapshot's files are the layers': about 0),
    /// plus 4 KiB per directory.
    pub bytes: u64,
    /// When a run last used it.
    pub last_used: SystemTime,
    /// Where it is.
    pub path: PathBuf,
}

/// What [`LayerCache::prune`] removes.
#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// Remove what no run has used for this long (`Duration::ZERO`: everything not in use).
    pub older_than: Duration,
    /// List what would be removed, remove nothing.
    pub dry_run: bool,
}

/// What [`LayerCache::prune`] removed (or, with `dry_run`, would remove).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PruneReport {
    /// The entries removed.
    pub removed: Vec<CacheEntry>,
    /// Their bytes, summed.
    pub bytes: u64,
    /// Entries kept (used recently, or in use by a run now).
    pub kept: usize,
    /// Entries a run holds now (among `kept`).
    pub in_use: usize,
    /// Unfinished `.tmp-*` directories of interrupted runs removed.
    pub partial: usize,
}

impl LayerCache {
    /// A cache in `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LayerCache { root: root.into() }
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }

    fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// The root file system of `image`, read from `store`: each layer not in the cache is
    /// unpacked alone (as [`crate::unpack`] would, every blob checked against its digest and
    /// diff_id), then the layers are assembled by hardlinks into a snapshot named after the
    /// chain id, unless one is there already. `owners_from_layers`: whether files get the
    /// layers' owners (needs root) or stay the caller's.
    ///
    /// The snapshot must not be written to (mount it read-only): its files are the cache's.
    ///
    /// # Errors
    /// As [`crate::unpack`]; [`Error::Io`] when the cache cannot be written.
    pub async fn snapshot<S: Store>(
        &self,
        store: &S,
        image: &Image,
        owners_from_layers: bool,
    ) -> Result<Snapshot> {
        let plan = plan(image)?;
        let suffix = if owners_from_layers { "" } else { ".caller" };
        let chain = chain_id(plan.iter().map(|l| &l.diff_id));
        let mut report = SnapshotReport {
            layers: plan.len(),
            chain_id: chain.to_string(),
            owners_from_layers,
            ..SnapshotReport::default()
        };
        // As root, the cache holds setuid files and device nodes: no other user may reach it.
        for dir in [self.root.clone(), self.layers(), self.snapshots()] {
            private_dir(&dir)?;
        }
        let snap_name = format!("{}{suffix}", entry_name(&chain));
        let snap_dir = self.snapshots().join(&snap_name);
        let snap_lock = self.snapshots().join(format!("{snap_name}.lock"));
        // Fast path: the snapshot is there; hold it shared.
        let lock = lock_file(&snap_lock, false)?;
        if snap_dir.join("rootfs").is_dir() {
            touch(&snap_dir);
            // Its files are the layers': they are used too, and `prune --older-than` must
            // not take them from under a snapshot it keeps.
            for layer in &plan {
                touch(
                    &self
                        .layers()
                        .join(format!("{}{suffix}", entry_name(&layer.diff_id))),
                );
            }
            return Ok(Snapshot {
                rootfs: snap_dir.join("rootfs"),
                report,
                _lock: lock,
            });
        }
        drop(lock);
        let lock = lock_file(&snap_lock, true)?;
        if !snap_dir.join("rootfs").is_dir() {
            // Every layer, unpacked now or found, held shared while the snapshot is made.
            let mut layers = Vec::with_capacity(plan.len());
            for (i, layer) in plan.into_iter().enumerate() {
                let name = format!("{}{suffix}", entry_name(&layer.diff_id));
                let diff_id = layer.diff_id.to_string();
                let (held, fresh) = self
                    .layer(store, &name, i + 1, layer, owners_from_layers, &mut report)
                    .await?;
                if fresh {
                    report.unpacked.push(diff_id);
                }
                layers.push(held);
            }
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".tmp-{snap_name}-"))
                .tempdir_in(self.snapshots())
                .map_err(|e| Error::io("creating a directory in the cache", e))?;
            let rootfs = tmp.path().join("rootfs");
            let dirs: Vec<PathBuf> = layers.iter().map(|l| l.dir.clone()).collect();
            let chown = owners_from_layers;
            let rootfs2 = rootfs.clone();
            tokio::task::spawn_blocking(move || assemble(&dirs, &rootfs2, chown))
                .await
                .map_err(|e| Error::io("assembling", io::Error::other(e.to_string())))??;
            let made = tmp.keep();
            fs::rename(&made, &snap_dir).map_err(|e| {
                let _ = remove_tree(&made);
                Error::io(format!("renaming {} into place", made.display()), e)
            })?;
            for l in &layers {
                touch(&l.dir);
            }
            report.assembled = true;
        }
        touch(&snap_dir);
        // Downgrade to shared: runs share a snapshot.
        lock.lock_shared()
            .map_err(|e| Error::io(format!("locking {}", snap_lock.display()), e))?;
        Ok(Snapshot {
            rootfs: snap_dir.join("rootfs"),
            report,
            _lock: lock,
        })
    }

    /// The cache entry of one layer, unpacked now when missing; held shared.
    async fn layer<S: Store>(
        &self,
        store: &S,
        name: &str,
        index: usize,
        layer: LayerPlan,
        chown: bool,
        report: &mut SnapshotReport,
    ) -> Result<(HeldLayer, bool)> {
        let dir = self.layers().join(name);
        let lock_path = self.layers().join(format!("{name}.lock"));
        let lock = lock_file(&lock_path, true)?;
        let mut fresh = false;
        if !dir.join("meta").is_file() {
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".tmp-{name}-"))
                .tempdir_in(self.layers())
                .map_err(|e| Error::io("creating a directory in the cache", e))?;
            let tree_dir = tmp.path().join("tree");
            apply::mkdir(&tree_dir).map_err(|f| f.into_error("creating a cache entry"))?;
            let mut tree = Tree::isolated(tree_dir, chown);
            tree = apply_blob(store, tree, index, layer).await?;
            tree.finish_dirs()?;
            let iso = tree.take_isolated();
            report.bytes_unpacked += tree.report.bytes;
            report.skipped.append(&mut tree.report.skipped);
            write_meta(&tmp.path().join("meta"), &iso)?;
            let made = tmp.keep();
            fs::rename(&made, &dir).map_err(|e| {
                let _ = remove_tree(&made);
                Error::io(format!("renaming {} into place", made.display()), e)
            })?;
            fresh = true;
        }
        lock.lock_shared()
            .map_err(|e| Error::io(format!("locking {}", lock_path.display()), e))?;
        Ok((HeldLayer { dir, _lock: lock }, fresh))
    }

    /// Every layer and snapshot in the cache.
    ///
    /// # Errors
    /// [`Error::Io`] when the cache cannot be read.
    pub fn entries(&self) -> Result<Vec<CacheEntry>> {
        let mut out = Vec::new();
        for (kind, dir, data) in [
            ("layer", self.layers(), "tree"),
            ("snapshot", self.snapshots(), "rootfs"),
        ] {
            let read = match fs::read_dir(&dir) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
            };
            let mut names: Vec<OsString> =
                read.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
            names.sort();
            for name in names {
                let text = name.to_string_lossy().into_owned();
                if text.starts_with('.') || text.ends_with(".lock") {
                    continue;
                }
                let path = dir.join(&name);
                let Ok(m) = fs::symlink_metadata(&path) else {
                    continue;
                };
                if !m.is_dir() {
                    continue;
                }
                let (base, owners_from_layers) = match text.strip_suffix(".caller") {
                    Some(b) => (b, false),
                    None => (text.as_str(), true),
                };
                out.push(CacheEntry {
                    kind,
                    digest: base.replacen('-', ":", 1),
                    owners_from_layers,
                    bytes: tree_bytes(&path.join(data), kind == "layer"),
                    last_used: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    path,
                });
            }
        }
        Ok(out)
    }

    /// Removes the layers and snapshots no run has used for `older_than`, except those a run
    /// holds now, and unfinished directories of interrupted runs older than an hour.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn prune(&self, options: &PruneOptions) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let now = SystemTime::now();
        // Snapshots first: they hold links to the layers' files, not the other way round.
        let mut entries = self.entries()?;
        entries.sort_by_key(|e| e.kind != "snapshot");
        for entry in entries {
            let age = now.duration_since(entry.last_used).unwrap_or_default();
            if age < options.older_than {
                report.kept += 1;
                continue;
            }
            let lock_path = PathBuf::from(format!("{}.lock", entry.path.display()));
            let lock = match try_lock_exclusive(&lock_path)? {
                Some(l) => l,
                None => {
                    report.kept += 1;
                    report.in_use += 1;
                    continue;
                }
            };
            if !options.dry_run {
                remove_tree(&entry.path)
                    .map_err(|e| Error::io(format!("removing {}", entry.path.display()), e))?;
                let _ = fs::remove_file(&lock_path);
            }
            drop(lock);
            report.bytes += entry.bytes;
            report.removed.push(entry);
        }
        for dir in [self.layers(), self.snapshots()] {
            let Ok(read) = fs::read_dir(&dir) else {
                continue;
            };
            for e in read.flatten() {
                let name = e.file_name();
                let old = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|a| a > Duration::from_secs(3600));
                if name.as_bytes().starts_with(b".tmp-") && old {
                    // `.tmp-NAME-XXXXXX`: a run making NAME holds NAME.lock; leave it be.
                    let text = name.to_string_lossy();
                    let entry = text[".tmp-".len()..]
                        .rsplit_once('-')
                        .map_or("", |(n, _)| n);
                    let _held = if entry.is_empty() {
                        None
                    } else {
                        match try_lock_exclusive(&dir.join(format!("{entry}.lock")))? {
                            Some(l) => Some(l),
                            None => continue,
                        }
                    };
                    report.partial += 1;
                    if !options.dry_run {
                        remove_tree(&e.path()).map_err(|err| {
                            Error::io(format!("removing {}", e.path().display()), err)
                        })?;
                    }
                }
            }
        }
        Ok(report)
    }
}

impl Snapshot {
    /// Whether `name` (absolute, inside the container) exists in the snapshot, symlinks
    /// followed inside it: a mount point the runtime need not make.
    pub fn has(&self, name: &str) -> bool {
        matches!(
            path::resolve_in_root(&self.rootfs, name.as_bytes()),
            Ok(Some(_))
        )
    }
}

/// A layer of the cache held shared while a snapshot is assembled from it.
struct HeldLayer {
    dir: PathBuf,
    _lock: File,
}

/// The OCI chain id of layers with these diff_ids: the first diff_id, then
/// `sha256(previous + " " + diff_id)` for each next one.
pub fn chain_id<'a>(diff_ids: impl IntoIterator<Item = &'a Digest>) -> Digest {
    let mut chain: Option<Digest> = None;
    for d in diff_ids {
        chain = Some(match chain {
            None => d.clone(),
            Some(c) => Digest::sha256(format!("{c} {d}").as_bytes()),
        });
    }
    chain.unwrap_or_else(|| Digest::sha256(b""))
}

fn entry_name(d: &Digest) -> String {
    d.to_string().replacen(':', "-", 1)
}

/// Opens (creating) and locks `path`, shared or exclusive, waiting for the lock. A lock file
/// removed by `prune` between the open and the lock is opened again.
fn lock_file(path: &Path, exclusive: bool) -> Result<File> {
    let err = |e| Error::io(format!("locking {}", path.display()), e);
    loop {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(err)?;
        if exclusive {
            f.lock().map_err(err)?;
        } else {
            f.lock_shared().map_err(err)?;
        }
        let held = f.metadata().map_err(err)?.ino();
        match fs::metadata(path) {
            Ok(m) if m.ino() == held => return Ok(f),
            _ => continue,
        }
    }
}

/// Locks `path` exclusively if nobody holds it; `None` when someone does.
fn try_lock_exclusive(path: &Path) -> Result<Option<File>> {
    let err = |e| Error::io(format!("locking {}", path.display()), e);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(err(e)),
    }
}

/// Makes `dir` a directory only this process's user may enter: created with mode 0700 (its
/// parents as `create_dir_all` makes them), or, where it exists, checked to be a directory (not
/// a symlink) owned by this user and set to mode 0700.
///
/// The layer cache, the bundles and the runtime's state live in such directories: as root they
/// hold setuid files and device nodes made from the images' layers, which another local user
/// must not reach.
///
/// # Errors
/// [`Error::NotPrivate`] when `dir` is someone else's or not a directory; [`Error::Io`].
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
    }
    let m = fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let not_private = |reason: String| Error::NotPrivate {
        dir: dir.to_owned(),
        reason,
    };
    if !m.is_dir() {
        return Err(not_private("not a directory".into()));
    }
    let me = fs::metadata("/proc/self").map(|p| p.uid()).ok();
    if let Some(me) = me
        && m.uid() != me
    {
        return Err(not_private(format!(
            "owned by uid {}, not by this user (uid {me})",
            m.uid()
        )));
    }
    if m.mode() & 0o7777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("setting the mode of {}", dir.display()), e))?;
    }
    Ok(())
}

/// Marks an entry used now (its directory's time).
fn touch(dir: &Path) {
    let now = FileTime::now();
    if let Err(e) = filetime::set_file_times(dir, now, now) {
        tracing::debug!("marking {} used: {e}", dir.display());
    }
}

/// Removes a tree, making its directories writable first (a layer may hold 0555 ones).
///
/// # Errors
/// As [`std::fs::remove_dir_all`].
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            let mut stack = vec![path.to_path_buf()];
            while let Some(d) = stack.pop() {
                let m = fs::symlink_metadata(&d)?;
                if m.is_dir() {
                    fs::set_permissions(&d, fs::Permissions::from_mode(0o700))?;
                    for e in fs::read_dir(&d)?.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(e.path());
                        }
                    }
                }
            }
            fs::remove_dir_all(path)
        }
    }
}

/// Bytes of file contents under `dir` (each inode once; with `all_files` false only inodes
/// with one link, that is those not shared with a layer), plus 4 KiB per directory.
fn tree_bytes(dir: &Path, all_files: bool) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = std::collections::HashSet::new();
    while let Some(d) = stack.pop() {
        total += 4096;
        let Ok(read) = fs::read_dir(&d) else { continue };
        for e in read.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && (all_files || m.nlink() == 1) && seen.insert(m.ino()) {
                total += m.len();
            }
        }
    }
    total
}

// --- The meta file: what a layer unpacked alone leaves for the assembly. -----------------
//
// NUL-separated fields, so any file name goes through: `W` name (a whiteout or opaque marker),
// `L` name target (a hardlink to a lower layer), `I` name (an implicit directory), `R` (the
// layer has an entry for its root).

fn write_meta(path: &Path, iso: &Isolated) -> Result<()> {
    let mut out = Vec::new();
    let mut field = |tag: &[u8], parts: &[&Path]| {
        out.extend_from_slice(tag);
        out.push(0);
        for p in parts {
            out.extend_from_slice(p.as_os_str().as_bytes());
            out.push(0);
        }
    };
    for w in &iso.whiteouts {
        field(b"W", &[w]);
    }
    for (l, t) in &iso.links {
        field(b"L", &[l, t]);
    }
    let mut implicit: Vec<&PathBuf> = iso.implicit.iter().collect();
    implicit.sort();
    for i in implicit {
        field(b"I", &[i]);
    }
    if iso.root_entry {
        field(b"R", &[]);
    }
    let mut f =
        File::create(path).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.write_all(&out)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn read_meta(path: &Path) -> Result<Isolated> {
    let bytes = fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let bad = || Error::InvalidImage {
        reason: format!(
            "{} is damaged: remove it with `ociup prune --all`",
            path.display()
        ),
    };
    let mut iso = Isolated::default();
    let mut fields = bytes.split(|b| *b == 0);
    let p = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
    while let Some(tag) = fields.next() {
        match tag {
            b"W" => iso.whiteouts.push(p(fields.next().ok_or_else(bad)?)),
            b"L" => {
                let l = p(fields.next().ok_or_else(bad)?);
                let t = p(fields.next().ok_or_else(bad)?);
                iso.links.push((l, t));
            }
            b"I" => {
                iso.implicit.insert(p(fields.next().ok_or_else(bad)?));
            }
            b"R" => iso.root_entry = true,
            b"" => {}
            _ => return Err(bad()),
        }
    }
    Ok(iso)
}

// --- Assembly. ------------------------------------------------------------------------------

/// Applies the cached layers at `layer_dirs`, in order, onto `rootfs` (absent): each layer's
/// whiteouts and opaque markers first (they apply to the layers below, wherever in the layer
/// the marker came), then its entries, hardlinked from the cache, each path resolved inside
/// `rootfs` as [`crate::unpack`] resolves it, then its links to files of lower layers.
fn assemble(layer_dirs: &[PathBuf], rootfs: &Path, chown: bool) -> Result<()> {
    apply::mkdir(rootfs).map_err(|f| f.into_error("creating the root file system"))?;
    let mut tree = Tree::new(rootfs.to_path_buf(), chown);
    for dir in layer_dirs {
        let iso = read_meta(&dir.join("meta"))?;
        let layer_root = dir.join("tree");
        let context = format!("assembling {}", dir.display());
        let fail = |f: apply::Failure| f.into_error(&context);
        tree.next_layer();
        for w in &iso.whiteouts {
            let mut comps = path::clean(w.as_os_str().as_bytes());
            let Some(last) = comps.pop() else { continue };
            let hidden = last.as_bytes().strip_prefix(b".wh.").unwrap_or_default();
            tree.whiteout(&comps, hidden).map_err(fail)?;
        }
        if iso.root_entry {
            let m = fs::symlink_metadata(&layer_root)
                .map_err(|e| Error::io(format!("reading {}", layer_root.display()), e))?;
            tree.dirs.insert(PathBuf::new(), dir_meta_of(&m));
        }
        place_children(&mut tree, &layer_root, Path::new(""), &[], &iso).map_err(fail)?;
        for (link, target) in &iso.links {
            link_below(&mut tree, link, target).map_err(fail)?;
        }
    }
    for p in MOUNT_POINTS {
        path::resolve_dir(
            rootfs,
            &path::clean(p.as_bytes()),
            Missing::Create,
            &mut |_| {},
        )
        .map_err(|e| apply::walk(e).into_error("making mount points"))?;
    }
    tree.finish_dirs()
}

fn dir_meta_of(m: &fs::Metadata) -> DirMeta {
    DirMeta {
        mode: m.mode() & 0o7777,
        uid: u64::from(m.uid()),
        gid: u64::from(m.gid()),
        mtime: m.mtime().max(0),
    }
}

type Placed = std::result::Result<(), apply::Failure>;

/// Places the entries of the layer directory `lrel` into the rootfs directory `at` (a real
/// directory, relative to the rootfs).
fn place_children(
    tree: &mut Tree,
    layer_root: &Path,
    lrel: &Path,
    at: &[OsString],
    iso: &Isolated,
) -> Placed {
    let src_dir = layer_root.join(lrel);
    let mut names: Vec<OsString> = fs::read_dir(&src_dir)
        .map_err(|e| apply::io_failure(lrel, "listing the cached layer's", e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(|e| apply::io_failure(lrel, "listing the cached layer's", e))?;
    names.sort();
    for name in names {
        let child = lrel.join(&name);
        let src = layer_root.join(&child);
        let m = fs::symlink_metadata(&src).map_err(|e| apply::io_failure(&child, "reading", e))?;
        let mut dest_c = at.to_vec();
        dest_c.push(name.clone());
        if m.is_dir() {
            let resolved = if iso.implicit.contains(&child) {
                // Only a parent of entries: walk through what the rootfs has there.
                path::resolve_dir(&tree.root, &dest_c, Missing::Create, &mut |_| {})
                    .map_err(apply::walk)?
                    .unwrap_or_default()
            } else {
                let rel = path::join(&dest_c);
                let full = tree.root.join(&rel);
                match fs::symlink_metadata(&full) {
                    Ok(d) if d.is_dir() => {}
                    Ok(_) => {
                        tree.remove(&rel)?;
                        apply::mkdir(&full)?;
                    }
                    Err(_) => apply::mkdir(&full)?,
                }
                tree.dirs.insert(rel.clone(), dir_meta_of(&m));
                copy_xattrs(&src, &full);
                dest_c
            };
            place_children(tree, layer_root, &child, &resolved, iso)?;
        } else {
            let rel = path::join(&dest_c);
            tree.remove(&rel)?;
            let full = tree.root.join(&rel);
            link_or_copy(&src, &full, &m).map_err(|e| apply::io_failure(&rel, "linking", e))?;
        }
    }
    Ok(())
}

/// A hardlink of a layer to a file of a layer below, made in the assembled tree.
fn link_below(tree: &mut Tree, link: &Path, target: &Path) -> Placed {
    let mut comps = path::clean(link.as_os_str().as_bytes());
    let Some(last) = comps.pop() else {
        return Ok(());
    };
    let dir = path::resolve_dir(&tree.root, &comps, Missing::Create, &mut |_| {})
        .map_err(apply::walk)?
        .unwrap_or_default();
    let rel = path::join(&dir).join(last);
    let target_rel = tree
        .existing(target.as_os_str().as_bytes())?
        .ok_or_else(|| {
            apply::Failure::Entry(format!(
                "hardlink /{} to {}, which is not in the tree",
                rel.display(),
                target.display()
            ))
        })?;
    if target_rel == rel {
        return Ok(());
    }
    let target_full = tree.root.join(&target_rel);
    if fs::symlink_metadata(&target_full).is_ok_and(|m| m.is_dir()) {
        return Err(apply::Failure::Entry(format!(
            "hardlink to the directory /{}",
            target_rel.display()
        )));
    }
    tree.remove(&rel)?;
    fs::hard_link(&target_full, tree.root.join(&rel))
        .map_err(|e| apply::io_failure(&rel, "creating the hardlink", e))
}

/// Hardlinks `src` at `dest`; copies it where a link cannot be made (another file system, too
/// many links).
fn link_or_copy(src: &Path, dest: &Path, m: &fs::Metadata) -> io::Result<()> {
    match fs::hard_link(src, dest) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(18 | 31)) => copy_entry(src, dest, m),
        Err(e) => Err(e),
    }
}

/// Copies a file or symlink with its owner, mode, times and extended attributes.
fn copy_entry(src: &Path, dest: &Path, m: &fs::Metadata) -> io::Result<()> {
    let t = FileTime::from_last_modification_time(m);
    if m.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dest)?;
        let _ = std::os::unix::fs::lchown(dest, Some(m.uid()), Some(m.gid()));
        copy_xattrs(src, dest);
        return filetime::set_symlink_file_times(dest, t, t);
    }
    if !m.is_file() {
        return Ok(());
    }
    // copy_file_range: the blocks are shared (reflink) where the file system can.
    fs::copy(src, dest)?;
    let _ = std::os::unix::fs::lchown(dest, Some(m.uid()), Some(m.gid()));
    // chown drops setuid and setgid bits: the mode goes last.
    fs::set_permissions(dest, fs::Permissions::from_mode(m.mode() & 0o7777))?;
    copy_xattrs(src, dest);
    filetime::set_file_times(dest, t, t)
}

fn copy_xattrs(src: &Path, dest: &Path) {
    let Ok(names) = xattr::list(src) else { return };
    for n in names {
        if let Ok(Some(v)) = xattr::get(src, &n)
            && let Err(e) = xattr::set(dest, &n, &v)
        {
            tracing::debug!(
                "extended attribute {n:?} of {} not set: {e}",
                dest.display()
            );
        }
    }
}

/// A copy of a snapshot's root file system `src` at `dest` (absent) for one run: directories
/// made anew, files hardlinked (`copy_files` false: for a run that mounts it read-only but
/// needs mount points the image lacks) or copied (`copy_files` true: for a container that may
/// write; on file systems with reflinks, such as btrfs and XFS, the kernel shares the blocks
/// until written). Owners, modes, times, extended attributes and hardlink groups are kept.
///
/// # Errors
/// [`Error::Io`].
pub fn clone_rootfs(src: &Path, dest: &Path, copy_files: bool) -> Result<()> {
    let err = |p: &Path, e| Error::io(format!("copying {}", p.display()), e);
    let mut dirs: BTreeMap<PathBuf, fs::Metadata> = BTreeMap::new();
    let mut inodes: HashMap<u64, PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let from = src.join(&rel);
        let to = dest.join(&rel);
        let m = fs::symlink_metadata(&from).map_err(|e| err(&from, e))?;
        apply::mkdir(&to).map_err(|f| f.into_error("copying the root file system"))?;
        copy_xattrs(&from, &to);
        dirs.insert(rel.clone(), m);
        for e in fs::read_dir(&from).map_err(|e| err(&from, e))? {
            let e = e.map_err(|e| err(&from, e))?;
            let child = rel.join(e.file_name());
            let cm = e.metadata().map_err(|e| err(&from, e))?;
            if cm.is_dir() {
                stack.push(child);
                continue;
            }
            let (s, d) = (src.join(&child), dest.join(&child));
            if !copy_files {
                link_or_copy(&s, &d, &cm).map_err(|e| err(&s, e))?;
            } else if cm.is_file() && cm.nlink() > 1 {
                match inodes.get(&cm.ino()) {
                    Some(first) => fs::hard_link(dest.join(first), &d).map_err(|e| err(&s, e))?,
                    None => {
                        copy_entry(&s, &d, &cm).map_err(|e| err(&s, e))?;
                        inodes.insert(cm.ino(), child);
                    }
                }
            } else {
                copy_entry(&s, &d, &cm).map_err(|e| err(&s, e))?;
            }
        }
    }
    for (rel, m) in dirs.iter().rev() {
        let to = dest.join(rel);
        let _ = std::os::unix::fs::lchown(&to, Some(m.uid()), Some(m.gid()));
        fs::set_permissions(&to, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(|e| err(&to, e))?;
        let t = FileTime::from_last_modification_time(m);
        filetime::set_file_times(&to, t, t).map_err(|e| err(&to, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use tar::EntryType as E;

    use super::*;
    use crate::unpack::tests::{image_of, plain, tar_of};
    use crate::{UnpackOptions, unpack};

    /// Type, mode, owner, contents or link target of every entry; and the hardlink groups.
    fn scan(root: &Path) -> (BTreeMap<PathBuf, String>, Vec<Vec<PathBuf>>) {
        let mut out = BTreeMap::new();
        let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                let what = if m.is_dir() {
                    stack.push(p.clone());
                    "dir".to_owned()
                } else if m.file_type().is_symlink() {
                    format!("-> {}", fs::read_link(&p).unwrap().display())
                } else {
                    if m.nlink() > 1 {
                        inodes.entry(m.ino()).or_default().push(rel.clone());
                    }
                    format!("{:?}", String::from_utf8_lossy(&fs::read(&p).unwrap()))
                };
                let mode = if m.file_type().is_symlink() {
                    0
                } else {
                    m.mode() & 0o7777
                };
                out.insert(rel, format!("{what} {mode:o} {}:{}", m.uid(), m.gid()));
            }
        }
        let mut groups: Vec<Vec<PathBuf>> = inodes
            .into_values()
            .filter(|g| g.len() > 1)
            .map(|mut g| {
                g.sort();
                g
            })
            .collect();
        groups.sort();
        (out, groups)
    }

    fn layers() -> (Vec<u8>, Vec<u8>) {
        let lower = tar_of(&[
            (E::Directory, "ro", "", b"", 0o555, 0),
            (E::Regular, "ro/file", "", b"read-only dir", 0o444, 0),
            (E::Directory, "opq", "", b"", 0o755, 0),
            (E::Regular, "opq/old", "", b"old", 0o644, 0),
            (E::Regular, "gone", "", b"x", 0o644, 0),
            (E::Regular, "keep", "", b"kept", 0o4755, 0),
            (E::Regular, "target", "", b"linked", 0o640, 0),
            (E::Symlink, "evil", "/", b"", 0o777, 0),
            (E::Symlink, "etc-link", "etc", b"", 0o777, 0),
            (E::Directory, "etc", "", b"", 0o755, 0),
        ]);
        let upper = tar_of(&[
            (E::Regular, "opq/new", "", b"new", 0o644, 0),
            // The opaque marker after its sibling: the sibling stays.
            (E::Regular, "opq/.wh..wh..opq", "", b"", 0o644, 0),
            (E::Regular, ".wh.gone", "", b"", 0o644, 0),
            // A hardlink to a file of the layer below.
            (E::Link, "link-to-lower", "target", b"", 0o640, 0),
            // Through symlinks of the layer below: into the tree, never the host.
            (E::Regular, "evil/etc/through-root", "", b"in", 0o600, 0),
            (E::Regular, "etc-link/via-link", "", b"via", 0o600, 0),
            (E::Regular, "evil/.wh.keep-not", "", b"", 0o644, 0),
            (E::Regular, "ro/added", "", b"added", 0o600, 0),
        ]);
        (lower, upper)
    }

    #[tokio::test]
    async fn snapshots_match_unpack_and_reuse_cached_layers() {
        let t = tempfile::tempdir().unwrap();
        let (lower, upper) = layers();
        let (layout, image) = image_of(
            &t.path().join("lay"),
            &[plain(lower.clone()), plain(upper.clone())],
        )
        .await;
        let cache = LayerCache::new(t.path().join("cache"));
        let root = crate::runtime::running_as_root();
        let snap = cache.snapshot(&layout, &image, root).await.unwrap();
        assert_eq!(snap.report.unpacked.len(), 2);
        assert!(snap.report.assembled);
        let reference = t.path().join("unpacked");
        unpack(&layout, &image, &reference, &UnpackOptions::default())
            .await
            .unwrap();
        let (mut mine, my_groups) = scan(&snap.rootfs);
        for mp in MOUNT_POINTS {
            assert_eq!(
                mine.remove(Path::new(mp)).map(|s| s.starts_with("dir")),
                Some(true)
            );
        }
        mine.remove(Path::new("var"));
        let (theirs, their_groups) = scan(&reference);
        assert_eq!(mine, theirs);
        assert_eq!(my_groups, their_groups);
        assert!(mine.contains_key(Path::new("opq/new")));
        assert!(!mine.contains_key(Path::new("opq/old")));
        assert!(mine.contains_key(Path::new("etc/through-root")));
        assert!(mine.contains_key(Path::new("etc/via-link")));
        // The snapshot's files are the cache's: one inode.
        let cached = t.path().join("cache/layers");
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        let layer_dir =
            cached.join(entry_name(&Digest::sha256(&lower)) + if root { "" } else { ".caller" });
        assert_eq!(
            ino(&snap.rootfs.join("keep")),
            ino(&layer_dir.join("tree/keep"))
        );
        let first_rootfs = snap.rootfs.clone();
        drop(snap);

        // Again: nothing unpacked, nothing assembled.
        let again = cache.snapshot(&layout, &image, root).await.unwrap();
        assert!(again.report.unpacked.is_empty() && !again.report.assembled);
        assert_eq!(again.rootfs, first_rootfs);
        drop(again);

        // An image on the same base with one more layer: only that layer is unpacked.
        let top = tar_of(&[(E::Regular, "top", "", b"top", 0o644, 0)]);
        let (layout2, image2) = image_of(
            &t.path().join("lay2"),
            &[plain(lower), plain(upper), plain(top.clone())],
        )
        .await;
        let next = cache.snapshot(&layout2, &image2, root).await.unwrap();
        assert_eq!(next.report.unpacked, [Digest::sha256(&top).to_string()]);
        assert!(next.report.assembled);
        assert!(next.has("/top") && next.has("/etc-link/via-link") && !next.has("/nothing"));

        // A writable copy: writing it leaves the cache alone.
        let copy = t.path().join("copy");
        clone_rootfs(&next.rootfs, &copy, true).unwrap();
        assert_eq!(scan(&copy).0, scan(&next.rootfs).0);
        assert_ne!(ino(&copy.join("keep")), ino(&next.rootfs.join("keep")));
        fs::write(copy.join("keep"), b"changed").unwrap();
        assert_eq!(fs::read(layer_dir.join("tree/keep")).unwrap(), b"kept");
        // The hardlink group is kept in the copy.
        assert_eq!(ino(&copy.join("target")), ino(&copy.join("link-to-lower")));

        // prune: what a run holds stays; the rest goes.
        let entries = cache.entries().unwrap();
        assert_eq!(entries.iter().filter(|e| e.kind == "layer").count(), 3);
        assert_eq!(entries.iter().filter(|e| e.kind == "snapshot").count(), 2);
        let all = PruneOptions::default();
        let report = cache.prune(&all).unwrap();
        assert_eq!((report.removed.len(), report.in_use), (4, 1));
        assert!(next.rootfs.join("top").exists());
        drop(next);
        let report = cache.prune(&all).unwrap();
        assert_eq!(report.removed.len(), 1);
        assert!(cache.entries().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_cache_is_private_to_its_user() {
        let t = tempfile::tempdir().unwrap();
        let (layout, image) = image_of(
            &t.path().join("lay"),
            &[plain(tar_of(&[(E::Regular, "f", "", b"x", 0o4755, 0)]))],
        )
        .await;
        // An existing cache directory left open by an older version is closed again.
        let root = t.path().join("data/rootfs-cache");
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let cache = LayerCache::new(&root);
        let snap = cache
            .snapshot(&layout, &image, crate::runtime::running_as_root())
            .await
            .unwrap();
        drop(snap);
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        for d in [root.clone(), root.join("layers"), root.join("snapshots")] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        // A fresh one is made 0700 (umask or not).
        let fresh = t.path().join("fresh/bundles");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        // A symlink in its place is refused.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(matches!(private_dir(&link), Err(Error::NotPrivate { .. })));
        // Someone else's directory is refused (only root can make one to test with).
        if crate::runtime::running_as_root() {
            let theirs = t.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(1234), Some(1234)).unwrap();
            let err = private_dir(&theirs).unwrap_err();
            assert!(err.to_string().contains("owned by uid 1234"), "{err}");
            assert_ne!(mode(&theirs), 0o700);
        }
    }

    #[tokio::test]
    async fn a_used_snapshot_keeps_its_layers_from_prune() {
        let t = tempfile::tempdir().unwrap();
        let (layout, image) = image_of(
            &t.path().join("lay"),
            &[plain(tar_of(&[(E::Regular, "f", "", b"x", 0o644, 0)]))],
        )
        .await;
        let cache = LayerCache::new(t.path().join("cache"));
        let root = crate::runtime::running_as_root();
        drop(cache.snapshot(&layout, &image, root).await.unwrap());
        // Everything last used two hours ago; then the snapshot is used again (cached).
        let old = FileTime::from_unix_time(FileTime::now().unix_seconds() - 7200, 0);
        for e in cache.entries().unwrap() {
            filetime::set_file_times(&e.path, old, old).unwrap();
        }
        let again = cache.snapshot(&layout, &image, root).await.unwrap();
        assert!(!again.report.assembled);
        drop(again);
        let report = cache
            .prune(&PruneOptions {
                older_than: Duration::from_secs(3600),
                dry_run: false,
            })
            .unwrap();
        assert!(report.removed.is_empty(), "{:?}", report.removed);
        assert_eq!(report.kept, 2);
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = Digest::sha256(b"a");
        let b = Digest::sha256(b"b");
        assert_eq!(chain_id([&a]), a);
        assert_eq!(
            chain_id([&a, &b]),
            Digest::sha256(format!("{a} {b}").as_bytes())
        );
    }
}

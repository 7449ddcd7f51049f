//! Applies the entries of one layer's tar onto the tree, and the directories' metadata at the
//! end. Every path goes through [`crate::path`]; nothing here joins a tar name to the root.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use ociup_core::Digest;

use crate::UnpackReport;
use crate::error::{Error, Result};
use crate::path::{self, Missing, WalkError};

/// The most of holes one sparse file of a layer may expand to (written as zeros).
const MAX_SPARSE_HOLES: u64 = 1 << 30;
/// The most of holes all sparse files of one unpack may expand to.
const MAX_SPARSE_HOLES_TOTAL: u64 = 8 << 30;

/// The metadata of a directory, applied once every layer is in.
#[derive(Clone, Debug)]
pub(crate) struct DirMeta {
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) mtime: i64,
}

/// The metadata of an entry, PAX records applied over the header.
#[derive(Debug)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// What a layer unpacked alone (for the layer cache) leaves to be applied when layers are
/// assembled: whiteouts and opaque markers (they apply to the layers below), hardlinks to files
/// of the layers below, and the directories made only as parents of entries (they are walked
/// through in the assembled tree, following its symlinks, not placed).
#[derive(Debug, Default)]
pub(crate) struct Isolated {
    /// Whiteout and opaque markers, each as its cleaned name (`a/.wh.b`, `a/.wh..wh..opq`).
    pub(crate) whiteouts: Vec<PathBuf>,
    /// Hardlinks whose target is not in the layer: (link name, target name), both cleaned.
    pub(crate) links: Vec<(PathBuf, PathBuf)>,
    /// Directories made as parents, not named by an entry (relative to the layer's root).
    pub(crate) implicit: HashSet<PathBuf>,
    /// Whether the layer has an entry for its root directory.
    pub(crate) root_entry: bool,
}

/// The state of one unpack.
#[derive(Debug)]
pub(crate) struct Tree {
    pub(crate) root: PathBuf,
    pub(crate) chown: bool,
    pub(crate) dirs: BTreeMap<PathBuf, DirMeta>,
    /// Set when one layer is unpacked alone: what it leaves for the assembly.
    pub(crate) isolated: Option<Isolated>,
    /// Bytes of sparse files' holes written so far (as zeros).
    sparse_holes: u64,
    /// Paths written by the layer being applied: an opaque marker keeps them.
    this_layer: HashSet<PathBuf>,
    /// Relative paths known to be real directories (not symlinks), so that the walk to an
    /// entry looks at each directory once, not once per entry under it. Every removal goes
    /// through [`Tree::remove`], which forgets what it removes.
    known_dirs: HashSet<PathBuf>,
    /// The uid and gid a file made here gets before any chown (this process's, when the root
    /// is no setgid directory); `None` when unknown: then every file is chowned.
    creator: Option<(u32, u32)>,
    /// This process's umask (from /proc/self/status), when known: a file whose mode it does
    /// not change is created with that mode and needs no chmod.
    umask: Option<u32>,
    /// The buffer file contents are copied through.
    buffer: Vec<u8>,
    pub(crate) report: UnpackReport,
}

/// How much of a file's contents is written at once.
const WRITE_BUFFER: usize = 256 * 1024;

/// This process's umask, read from /proc/self/status (`umask(2)` would change it).
fn current_umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Where an error arose, for messages.
pub(crate) struct At<'a> {
    pub(crate) index: usize,
    pub(crate) digest: &'a Digest,
}

impl Tree {
    pub(crate) fn new(root: PathBuf, chown: bool) -> Self {
        use std::os::unix::fs::MetadataExt;
        // Files take the gid of a setgid directory: then the creator's ids are not known.
        let creator = fs::metadata(&root)
            .ok()
            .filter(|m| m.mode() & 0o2000 == 0)
            .map(|m| (m.uid(), m.gid()));
        Tree {
            known_dirs: HashSet::new(),
            creator,
            umask: current_umask(),
            buffer: Vec::new(),
            root,
            chown,
            dirs: BTreeMap::new(),
            isolated: None,
            sparse_holes: 0,
            this_layer: HashSet::new(),
            report: UnpackReport {
                owners_from_layers: chown,
                ..UnpackReport::default()
            },
        }
    }

    /// A tree for one layer unpacked alone: whiteouts and hardlinks to what is not in the
    /// layer are recorded in [`Isolated`] instead of applied.
    pub(crate) fn isolated(root: PathBuf, chown: bool) -> Self {
        let mut tree = Tree::new(root, chown);
        tree.isolated = Some(Isolated::default());
        tree
    }

    /// What the layer unpacked alone leaves for the assembly (once it is applied).
    pub(crate) fn take_isolated(&mut self) -> Isolated {
        let mut iso = self.isolated.take().unwrap_or_default();
        iso.root_entry = self.dirs.contains_key(Path::new(""));
        let root = self.root.clone();
        iso.implicit.retain(|p| {
            !self.dirs.contains_key(p)
                && fs::symlink_metadata(root.join(p)).is_ok_and(|m| m.is_dir())
        });
        iso
    }

    /// Starts the next layer: an opaque marker keeps only what this one writes.
    pub(crate) fn next_layer(&mut self) {
        self.this_layer.clear();
    }

    /// Applies one layer's tar. Read errors come back as `Err(Ok(io))` so the caller can tell a
    /// failing blob from a broken tar; entry errors as `Err(Err(..))`.
    pub(crate) fn apply_layer(
        &mut self,
        tar: impl Read,
        at: &At<'_>,
    ) -> std::result::Result<(), std::result::Result<io::Error, Error>> {
        self.this_layer.clear();
        // Extension headers past 1 MiB are refused before the tar reader holds them.
        let mut archive =
            tar::Archive::new(ociup_core::layer::bounded::BoundedTarHeaders::new(tar));
        for entry in archive.entries().map_err(Ok)? {
            let mut entry = entry.map_err(Ok)?;
            let name = entry.path_bytes().into_owned();
            let entry_err = |reason: String| Error::Entry {
                index: at.index,
                digest: at.digest.clone(),
                entry: String::from_utf8_lossy(&name).into_owned(),
                reason,
            };
            self.apply_entry(&mut entry, &name).map_err(|e| match e {
                Failure::Read(e) => Ok(e),
                Failure::Entry(reason) => Err(entry_err(reason)),
            })?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
    ) -> std::result::Result<(), Failure> {
        let kind = entry.header().entry_type();
        let meta = meta(entry).map_err(Failure::Read)?;
        let mut components = path::clean(name);
        let Some(last) = components.pop() else {
            // The root itself: only a directory's metadata applies.
            if kind.is_dir() {
                self.dirs.insert(PathBuf::new(), dir_meta(&meta));
            }
            return Ok(());
        };
        let last_bytes = last.as_bytes().to_vec();
        if let Some(hidden) = last_bytes.strip_prefix(b".wh.") {
            return self.whiteout(&components, hidden);
        }
        let mut made = Vec::new();
        let dir = path::resolve_dir_known(
            &self.root,
            &components,
            Missing::Create,
            &mut |p| made.push(p.to_owned()),
            Some(&mut self.known_dirs),
        )
        .map_err(walk)?
        .unwrap_or_default();
        if let Some(iso) = &mut self.isolated {
            iso.implicit.extend(made.iter().cloned());
        }
        self.this_layer.extend(made);
        let rel = path::join(&dir).join(&last);
        let full = self.root.join(&rel);
        self.this_layer.insert(rel.clone());
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&full) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        self.remove(&rel)?;
                        mkdir(&full)?;
                    }
                    Err(_) => mkdir(&full)?,
                }
                self.dirs.insert(rel.clone(), dir_meta(&meta));
                self.set_xattrs(&full, &meta);
                self.report.directories += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                // A sparse entry's holes are written as zeros: bounded, so that a few bytes of
                // layer cannot fill the disk.
                let holes = entry
                    .size()
                    .saturating_sub(entry.header().entry_size().unwrap_or(0));
                self.sparse_holes = self.sparse_holes.saturating_add(holes);
                if holes > MAX_SPARSE_HOLES || self.sparse_holes > MAX_SPARSE_HOLES_TOTAL {
                    return Err(Failure::Entry(format!(
                        "a sparse file of {} bytes with {holes} bytes of holes: at most {} \
                         per file and {} per image are unpacked",
                        entry.size(),
                        MAX_SPARSE_HOLES,
                        MAX_SPARSE_HOLES_TOTAL
                    )));
                }
                // Made with its final mode when the umask leaves it as it is and no chown
                // follows (a chown clears setuid and setgid): then no chmod is needed.
                let ids = (meta.uid as u32, meta.gid as u32);
                let chown = self.chown && self.creator != Some(ids);
                let exact = !chown
                    && meta.mode & 0o7000 == 0
                    && self.umask.is_some_and(|u| meta.mode & u == 0);
                let create_mode = if exact { meta.mode } else { 0o600 };
                let create = |full: &Path| {
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(create_mode)
                        .open(full)
                };
                // Created first; only when something is there already is it removed (one
                // look-up fewer for the usual new file).
                let mut file = match create(&full) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        self.remove(&rel)?;
                        create(&full).map_err(|e| io_failure(&rel, "creating", e))?
                    }
                    Err(e) => return Err(io_failure(&rel, "creating", e)),
                };
                let n = self.copy_contents(entry, &mut file, &rel)?;
                self.report.bytes += n;
                if chown {
                    std::os::unix::fs::fchown(&file, Some(ids.0), Some(ids.1))
                        .map_err(|e| io_failure(&rel, "changing the owner of", e))?;
                }
                if !exact {
                    file.set_permissions(Permissions::from_mode(meta.mode))
                        .map_err(|e| io_failure(&rel, "changing the mode of", e))?;
                }
                self.set_xattrs(&full, &meta);
                let t = FileTime::from_unix_time(meta.mtime, 0);
                filetime::set_file_handle_times(&file, Some(t), Some(t))
                    .map_err(|e| io_failure(&rel, "setting the times of", e))?;
                self.report.files += 1;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Failure::Entry("a symlink without a target".into()))?
                    .into_owned();
                let target = std::ffi::OsStr::from_bytes(&target);
                match std::os::unix::fs::symlink(target, &full) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        self.remove(&rel)?;
                        std::os::unix::fs::symlink(target, &full)
                            .map_err(|e| io_failure(&rel, "creating the symlink", e))?;
                    }
                    Err(e) => return Err(io_failure(&rel, "creating the symlink", e)),
                }
                if self.chown && self.creator != Some((meta.uid as u32, meta.gid as u32)) {
                    std::os::unix::fs::lchown(&full, Some(meta.uid as u32), Some(meta.gid as u32))
                        .map_err(|e| io_failure(&rel, "changing the owner of", e))?;
                }
                self.set_xattrs(&full, &meta);
                let t = FileTime::from_unix_time(meta.mtime, 0);
                filetime::set_symlink_file_times(&full, t, t)
                    .map_err(|e| io_failure(&rel, "setting the times of", e))?;
                self.report.symlinks += 1;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Failure::Entry("a hardlink without a target".into()))?
                    .into_owned();
                let found = self.existing(&target)?;
                if found.is_none()
                    && let Some(iso) = &mut self.isolated
                {
                    // A link to a file of a layer below: made when the layers are assembled.
                    iso.links
                        .push((rel.clone(), path::join(&path::clean(&target))));
                    self.this_layer.remove(&rel);
                    self.report.hardlinks += 1;
                    return Ok(());
                }
                let target_rel = found.ok_or_else(|| {
                    Failure::Entry(format!(
                        "hardlink to {:?}, which is not in the tree",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                if target_rel == rel {
                    return Ok(());
                }
                let target_full = self.root.join(&target_rel);
                let m = fs::symlink_metadata(&target_full)
                    .map_err(|e| io_failure(&target_rel, "reading", e))?;
                if m.is_dir() {
                    return Err(Failure::Entry(format!(
                        "hardlink to the directory /{}",
                        target_rel.display()
                    )));
                }
                self.remove(&rel)?;
                // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
                fs::hard_link(&target_full, &full)
                    .map_err(|e| io_failure(&rel, "creating the hardlink", e))?;
                self.report.hardlinks += 1;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo if self.chown => {
                // As root: made with mknod, as umoci does; where even root may not (a container
                // without CAP_MKNOD), skipped with a note.
                let h = entry.header();
                let dev = rustix::fs::makedev(
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                );
                let file_type = match kind {
                    tar::EntryType::Char => rustix::fs::FileType::CharacterDevice,
                    tar::EntryType::Block => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
                };
                self.remove(&rel)?;
                let mode = rustix::fs::Mode::from_raw_mode(0o600);
                match rustix::fs::mknodat(rustix::fs::CWD, &full, file_type, mode, dev) {
                    Ok(()) => {
                        std::os::unix::fs::lchown(
                            &full,
                            Some(meta.uid as u32),
                            Some(meta.gid as u32),
                        )
                        .map_err(|e| io_failure(&rel, "changing the owner of", e))?;
                        fs::set_permissions(&full, Permissions::from_mode(meta.mode))
                            .map_err(|e| io_failure(&rel, "changing the mode of", e))?;
                        self.set_xattrs(&full, &meta);
                        let t = FileTime::from_unix_time(meta.mtime, 0);
                        filetime::set_symlink_file_times(&full, t, t)
                            .map_err(|e| io_failure(&rel, "setting the times of", e))?;
                        self.report.devices += 1;
                    }
                    Err(e) => {
                        self.this_layer.remove(&rel);
                        self.report.skipped.push(format!(
                            "/{}: {} not created ({e})",
                            rel.display(),
                            kind_name(kind)
                        ));
                    }
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                self.this_layer.remove(&rel);
                tracing::debug!("not created (device or FIFO): /{}", rel.display());
                self.report.skipped.push(format!(
                    "/{}: {} not created (device nodes and FIFOs only as root)",
                    rel.display(),
                    kind_name(kind)
                ));
            }
            other => {
                self.this_layer.remove(&rel);
                tracing::debug!("skipped tar entry of type {other:?}: /{}", rel.display());
                self.report.skipped.push(format!(
                    "/{}: tar entry type {other:?} skipped",
                    rel.display()
                ));
            }
        }
        Ok(())
    }

    /// The relative path an existing entry named `name` resolves to (its last component not
    /// followed), or `None` when it does not exist.
    pub(crate) fn existing(&self, name: &[u8]) -> std::result::Result<Option<PathBuf>, Failure> {
        let mut components = path::clean(name);
        let Some(last) = components.pop() else {
            return Ok(None);
        };
        let Some(dir) =
            path::resolve_dir(&self.root, &components, Missing::Stop, &mut |_| {}).map_err(walk)?
        else {
            return Ok(None);
        };
        let rel = path::join(&dir).join(last);
        match fs::symlink_metadata(self.root.join(&rel)) {
            Ok(_) => Ok(Some(rel)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_failure(&rel, "reading", e)),
        }
    }

    /// Applies `.wh.HIDDEN` in the directory `components`.
    pub(crate) fn whiteout(
        &mut self,
        components: &[OsString],
        hidden: &[u8],
    ) -> std::result::Result<(), Failure> {
        let opaque = hidden == b".wh..opq";
        if !opaque && matches!(hidden, b"" | b"." | b"..") {
            return Err(Failure::Entry(format!(
                "a whiteout of {:?} names no entry of its directory",
                String::from_utf8_lossy(hidden)
            )));
        }
        self.report.whiteouts += 1;
        if let Some(iso) = &mut self.isolated {
            let mut name = b".wh.".to_vec();
            name.extend_from_slice(hidden);
            iso.whiteouts
                .push(path::join(components).join(std::ffi::OsStr::from_bytes(&name)));
            return Ok(());
        }
        let Some(dir) = path::resolve_dir_known(
            &self.root,
            components,
            Missing::Stop,
            &mut |_| {},
            Some(&mut self.known_dirs),
        )
        .map_err(walk)?
        else {
            return Ok(());
        };
        let dir = path::join(&dir);
        if opaque {
            let full = self.root.join(&dir);
            let children = fs::read_dir(&full).map_err(|e| io_failure(&dir, "listing", e))?;
            for child in children {
                let child = child.map_err(|e| io_failure(&dir, "listing", e))?;
                let rel = dir.join(child.file_name());
                if !self.this_layer.contains(&rel) {
                    self.remove(&rel)?;
                }
            }
        } else {
            self.remove(&dir.join(std::ffi::OsStr::from_bytes(hidden)))?;
        }
        Ok(())
    }

    /// Removes whatever is at `rel` (a directory with its contents; a symlink itself).
    pub(crate) fn remove(&mut self, rel: &Path) -> std::result::Result<(), Failure> {
        let full = self.root.join(rel);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => {
                self.known_dirs.retain(|k| !k.starts_with(rel));
                fs::remove_dir_all(&full).map_err(|e| io_failure(rel, "removing", e))?;
                let gone: Vec<PathBuf> = self
                    .dirs
                    .range(rel.to_path_buf()..)
                    .map(|(k, _)| k.clone())
                    .take_while(|k| k.starts_with(rel))
                    .collect();
                for k in gone {
                    self.dirs.remove(&k);
                }
                Ok(())
            }
            Ok(_) => fs::remove_file(&full).map_err(|e| io_failure(rel, "removing", e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_failure(rel, "reading", e)),
        }
    }

    /// Copies an entry's contents into `file` through a large buffer (one write per 256 KiB,
    /// where `io::copy` writes 8 KiB at a time).
    fn copy_contents(
        &mut self,
        entry: &mut impl Read,
        file: &mut fs::File,
        rel: &Path,
    ) -> std::result::Result<u64, Failure> {
        use std::io::Write;
        if self.buffer.len() < WRITE_BUFFER {
            self.buffer.resize(WRITE_BUFFER, 0);
        }
        let mut total = 0u64;
        loop {
            // Filled as far as the entry goes before each write.
            let mut filled = 0;
            while filled < self.buffer.len() {
                match entry.read(&mut self.buffer[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Failure::Read(e)),
                }
            }
            if filled == 0 {
                return Ok(total);
            }
            file.write_all(&self.buffer[..filled])
                .map_err(|e| io_failure(rel, "writing", e))?;
            total += filled as u64;
        }
    }

    fn set_xattrs(&mut self, full: &Path, meta: &Meta) {
        for (key, value) in &meta.xattrs {
            // `xattr::set` does not follow symlinks (lsetxattr).
            if let Err(e) = xattr::set(full, key, value) {
                tracing::debug!(
                    "extended attribute {key:?} of {} not set: {e}",
                    full.display()
                );
                self.report.xattrs_skipped += 1;
            }
        }
    }

    /// Owner, mode and times of every directory, once nothing more is written in them.
    pub(crate) fn finish_dirs(&mut self) -> Result<()> {
        let root_meta = self.dirs.get(Path::new("")).cloned();
        let mut all: Vec<(PathBuf, DirMeta)> = std::mem::take(&mut self.dirs).into_iter().collect();
        if root_meta.is_none() {
            all.push((
                PathBuf::new(),
                DirMeta {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: -1,
                },
            ));
        }
        // Deepest first, though setting a directory's metadata does not touch its parent's.
        all.sort_by(|a, b| b.0.cmp(&a.0));
        for (rel, meta) in all {
            let full = self.root.join(&rel);
            let Ok(m) = fs::symlink_metadata(&full) else {
                continue;
            };
            if !m.is_dir() {
                continue;
            }
            let fail = |what: &str, e| Error::io(format!("{what} /{}", rel.display()), e);
            if self.chown && meta.mtime >= 0 {
                std::os::unix::fs::lchown(&full, Some(meta.uid as u32), Some(meta.gid as u32))
                    .map_err(|e| fail("changing the owner of", e))?;
            }
            fs::set_permissions(&full, Permissions::from_mode(meta.mode))
                .map_err(|e| fail("changing the mode of", e))?;
            if meta.mtime >= 0 {
                let t = FileTime::from_unix_time(meta.mtime, 0);
                filetime::set_symlink_file_times(&full, t, t)
                    .map_err(|e| fail("setting the times of", e))?;
            }
        }
        Ok(())
    }
}

/// Why an entry failed: its bytes could not be read, or it cannot be applied.
#[derive(Debug)]
pub(crate) enum Failure {
    Read(io::Error),
    Entry(String),
}

impl Failure {
    /// An error of the layer cache's assembly (no layer position to name).
    pub(crate) fn into_error(self, context: &str) -> Error {
        match self {
            Failure::Read(e) => Error::io(context.to_owned(), e),
            Failure::Entry(reason) => Error::InvalidImage {
                reason: format!("{context}: {reason}"),
            },
        }
    }
}

pub(crate) fn walk(e: WalkError) -> Failure {
    Failure::Entry(e.to_string())
}

pub(crate) fn io_failure(rel: &Path, what: &str, e: io::Error) -> Failure {
    Failure::Entry(format!("{what} /{}: {e}", rel.display()))
}

pub(crate) fn mkdir(full: &Path) -> std::result::Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt;
    // Owner-writable until the end, whatever the layer says: the final mode is set last.
    fs::DirBuilder::new()
        .mode(0o700)
        .create(full)
        .map_err(|e| Failure::Entry(format!("creating {}: {e}", full.display())))
}

fn dir_meta(m: &Meta) -> DirMeta {
    DirMeta {
        mode: m.mode,
        uid: m.uid,
        gid: m.gid,
        mtime: m.mtime.max(0),
    }
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        _ => "FIFO",
    }
}

/// The header's mode, owner and mtime with PAX records (`uid`, `gid`, `mtime`,
/// `SCHILY.xattr.*`) applied over them.
fn meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let h = entry.header();
    let mut m = Meta {
        mode: h.mode()? & 0o7777,
        // Empty (or unreadable) owner and time fields read as 0; Go's archive/tar, umoci's
        // reader, reads empty ones so.
        uid: h.uid().unwrap_or(0),
        gid: h.gid().unwrap_or(0),
        mtime: h
            .mtime()
            .map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.split('.').next())
                    .and_then(|s| s.parse::<i64>().ok())
            };
            match key {
                b"uid" => {
                    m.uid = number()
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(m.uid)
                }
                b"gid" => {
                    m.gid = number()
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(m.gid)
                }
                b"mtime" => m.mtime = number().unwrap_or(m.mtime),
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        m.xattrs
                            .push((std::ffi::OsStr::from_bytes(name).to_owned(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(m)
}

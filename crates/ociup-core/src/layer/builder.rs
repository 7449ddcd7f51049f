use std::collections::{BTreeMap, HashMap};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::gzip::ParallelGzip;
use super::tar::{Entry, Kind, TarWriter};
use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, Result};
use crate::media_type::Compression;

/// Who owns the files in a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Owner {
    /// 0:0, whoever owns them on disk (the default: layers do not depend on the build user).
    #[default]
    Root,
    /// This uid:gid for every entry.
    Fixed {
        /// User id.
        uid: u64,
        /// Group id.
        gid: u64,
    },
    /// The owners on disk.
    Keep,
}

/// How a layer is built.
#[derive(Clone, Debug)]
pub struct LayerOptions {
    /// Compression of the layer blob.
    pub compression: Compression,
    /// Compression level; `None` is 6 for gzip and 3 for zstd.
    pub level: Option<u32>,
    /// Upper bound of every mtime in the layer, in seconds since 1970 (`SOURCE_DATE_EPOCH`);
    /// the default 0 sets every mtime to 0.
    pub epoch: u64,
    /// Owner of the entries.
    pub owner: Owner,
    /// Compression threads for gzip. The bytes are the same whatever the number.
    pub threads: usize,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            compression: Compression::Gzip,
            level: None,
            epoch: 0,
            owner: Owner::Root,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// A built layer: what a descriptor and a config's `rootfs.diff_ids` need.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Layer {
    /// Compression of the blob.
    #[serde(serialize_with = "ser_compression")]
    pub compression: Compression,
    /// Digest of the blob (compressed bytes).
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
}

fn ser_compression<S: serde::Serializer>(c: &Compression, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match c {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::None => "none",
    })
}

#[derive(Debug)]
enum Data {
    Disk(DiskFile),
    Memory(Vec<u8>),
}

/// A regular file on disk as it was seen when it was added. What is read when the layer is
/// written must be that very file, unchanged: a file swapped for a symlink or another file in
/// between, or rewritten, is an error, never read.
#[derive(Debug)]
struct DiskFile {
    /// The name given or walked, for errors.
    path: PathBuf,
    /// What is opened: `path`, or where it pointed when a symlink was given as the source.
    open: PathBuf,
    seen: Stamp,
}

/// What identifies a file and its contents without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &Metadata) -> Self {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl DiskFile {
    /// Opens the file without following a symlink (a FIFO put in its place does not block
    /// either) and checks through the open handle that it is the file that was added, as it was.
    fn open(&self) -> Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.open)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    self.err("was replaced by a symlink after it was added (not followed)")
                } else {
                    source_err(&self.path, &e)
                }
            })?;
        let now = file.metadata().map_err(|e| source_err(&self.path, &e))?;
        if !now.file_type().is_file() {
            return Err(self.err("is no longer a regular file"));
        }
        let stamp = Stamp::of(&now);
        if (stamp.dev, stamp.ino) != (self.seen.dev, self.seen.ino) {
            return Err(self.err("was replaced by another file after it was added"));
        }
        if stamp != self.seen {
            return Err(self.err("changed after it was added (size, mtime or ctime differ)"));
        }
        Ok(file)
    }

    /// Checks, after the contents were read, that nothing wrote to the file meanwhile: a
    /// rewrite of the same size still moves its mtime and ctime.
    fn check_unchanged(&self, file: &File) -> Result<()> {
        let mut probe = [0u8; 1];
        let grew = (&*file)
            .read(&mut probe)
            .map_err(|e| source_err(&self.path, &e))?;
        if grew != 0 {
            return Err(self.err("grew while it was read"));
        }
        let now = file.metadata().map_err(|e| source_err(&self.path, &e))?;
        if Stamp::of(&now) != self.seen {
            return Err(self.err("changed while it was read (size, mtime or ctime differ)"));
        }
        Ok(())
    }

    fn err(&self, reason: &str) -> Error {
        Error::LayerSource {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug)]
struct Planned {
    entry: Entry,
    data: Option<Data>,
    /// (dev, ino) of a file with more than one link on disk.
    inode: Option<(u64, u64)>,
    /// Created only as the parent of something else.
    implied: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Path,
    Contents,
}

/// Collects what goes into a layer, then writes it in one streaming pass with
/// [`LayerBuilder::build`]. Entries come out sorted by path whatever order they were added in;
/// file contents are read from disk only while the layer is written.
#[derive(Debug)]
pub struct LayerBuilder {
    opts: LayerOptions,
    planned: BTreeMap<String, Planned>,
    removals: BTreeMap<String, Removal>,
}

impl LayerBuilder {
    /// An empty layer with these options.
    pub fn new(opts: LayerOptions) -> Self {
        LayerBuilder {
            opts,
            planned: BTreeMap::new(),
            removals: BTreeMap::new(),
        }
    }

    /// Adds `src` at `dest` in the image: a file becomes the file `dest`; a directory becomes
    /// `dest` with the tree's contents under it (`dest` `/` puts them at the root). A symlink given
    /// as `src` is followed; symlinks inside a tree are kept as links.
    ///
    /// # Errors
    /// [`Error::LayerSource`] when `src` cannot be read or holds something a layer cannot carry
    /// (a socket, a relative symlink that climbs out of the tree, itself or through the tree's
    /// other symlinks, a name that is not UTF-8);
    /// [`Error::LayerPath`] for an invalid `dest` or a path given twice.
    pub fn add(&mut self, src: impl AsRef<Path>, dest: &str) -> Result<()> {
        let src = src.as_ref();
        let dest = normalize(dest)?;
        let meta = std::fs::metadata(src).map_err(|e| source_err(src, &e))?;
        if meta.is_dir() {
            self.add_tree(src, &dest)
        } else {
            if dest.is_empty() {
                return Err(Error::LayerPath {
                    path: "/".into(),
                    reason: format!(
                        "{} is not a directory and cannot be the root",
                        src.display()
                    ),
                });
            }
            let mut entry = self.entry_for(src, &dest, &meta, None)?;
            if let Some(Data::Disk(file)) = &mut entry.data {
                // A symlink given as the source is followed now, once: at build time the file
                // it pointed to is opened without following anything.
                let link = std::fs::symlink_metadata(src).map_err(|e| source_err(src, &e))?;
                if link.file_type().is_symlink() {
                    file.open = std::fs::canonicalize(src).map_err(|e| source_err(src, &e))?;
                }
            }
            self.plan(entry, false)
        }
    }

    /// Adds `src` into the directory `dir`: a file as `dir/<its name>`, a directory's contents
    /// under `dir` (as `ociup layer create` does).
    ///
    /// # Errors
    /// As [`LayerBuilder::add`].
    pub fn add_into(&mut self, src: impl AsRef<Path>, dir: &str) -> Result<()> {
        let src = src.as_ref();
        let meta = std::fs::metadata(src).map_err(|e| source_err(src, &e))?;
        if meta.is_dir() {
            return self.add(src, dir);
        }
        let name = src
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::LayerSource {
                path: src.to_owned(),
                reason: "has no UTF-8 file name".into(),
            })?;
        let dir = normalize(dir)?;
        let dest = if dir.is_empty() {
            name.to_owned()
        } else {
            format!("{dir}/{name}")
        };
        self.add(src, &dest)
    }

    /// Adds a regular file with the given contents and permission bits.
    ///
    /// # Errors
    /// [`Error::LayerPath`] for an invalid path or one given twice.
    pub fn add_bytes(&mut self, dest: &str, contents: Vec<u8>, mode: u32) -> Result<()> {
        let kind = Kind::File {
            size: contents.len() as u64,
        };
        self.add_entry(dest, kind, mode, Some(Data::Memory(contents)))
    }

    /// Adds a directory with the given permission bits (setuid, setgid and sticky included).
    /// Directories that are only the parents of what is added get no entry of their own, so on
    /// a base they keep the base's mode and owner: add one explicitly to set them.
    ///
    /// # Errors
    /// [`Error::LayerPath`] for an invalid path or one given twice.
    pub fn add_dir(&mut self, dest: &str, mode: u32) -> Result<()> {
        self.add_entry(dest, Kind::Dir, mode, None)
    }

    /// Adds a symbolic link at `dest` pointing to `target`, which is written as given.
    ///
    /// # Errors
    /// [`Error::LayerPath`] for an invalid path or one given twice.
    pub fn add_symlink(&mut self, dest: &str, target: &str) -> Result<()> {
        let kind = Kind::Symlink {
            target: target.to_owned(),
        };
        self.add_entry(dest, kind, 0o777, None)
    }

    /// One entry made here (not read from disk): the builder's owner, `mtime` the epoch.
    fn add_entry(&mut self, dest: &str, kind: Kind, mode: u32, data: Option<Data>) -> Result<()> {
        let path = normalize_nonroot(dest)?;
        let (uid, gid) = self.owner(None);
        let entry = Entry {
            path,
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            mtime: self.opts.epoch,
            xattrs: Vec::new(),
        };
        self.plan(
            Planned {
                entry,
                data,
                inode: None,
                implied: false,
            },
            false,
        )
    }

    /// Removes `path` (and everything under it) from the layers below, with a `.wh.` whiteout.
    ///
    /// # Errors
    /// [`Error::LayerPath`] for the root or an invalid path.
    pub fn remove(&mut self, path: &str) -> Result<()> {
        let path = normalize_nonroot(path)?;
        self.removals.insert(path, Removal::Path);
        Ok(())
    }

    /// Hides everything the layers below have under the directory `path` (an opaque whiteout),
    /// keeping the directory itself; what this layer adds under it stays.
    ///
    /// # Errors
    /// [`Error::LayerPath`] for an invalid path.
    pub fn clear_dir(&mut self, path: &str) -> Result<()> {
        let path = normalize(path)?;
        self.removals.insert(path, Removal::Contents);
        Ok(())
    }

    fn owner(&self, meta: Option<&Metadata>) -> (u64, u64) {
        match (self.opts.owner, meta) {
            (Owner::Root, _) | (Owner::Keep, None) => (0, 0),
            (Owner::Fixed { uid, gid }, _) => (uid, gid),
            (Owner::Keep, Some(m)) => (u64::from(m.uid()), u64::from(m.gid())),
        }
    }

    fn add_tree(&mut self, root: &Path, dest: &str) -> Result<()> {
        for item in walkdir::WalkDir::new(root).follow_links(false) {
            let item = item.map_err(|e| {
                let path = e.path().unwrap_or(root).to_owned();
                let reason = match e.io_error() {
                    Some(io) => format!("cannot be read: {io}"),
                    None => e.to_string(),
                };
                Error::LayerSource { path, reason }
            })?;
            let rel = item
                .path()
                .strip_prefix(root)
                .unwrap_or_else(|_| unreachable!("walkdir yields paths under its root"));
            let rel = rel.to_str().ok_or_else(|| Error::LayerSource {
                path: item.path().to_owned(),
                reason: "name is not UTF-8".into(),
            })?;
            let path = match (dest.is_empty(), rel.is_empty()) {
                (_, true) if dest.is_empty() => continue, // the root itself has no entry
                (_, true) => dest.to_owned(),
                (true, false) => rel.to_owned(),
                (false, false) => format!("{dest}/{rel}"),
            };
            let meta = item.metadata().map_err(|e| Error::LayerSource {
                path: item.path().to_owned(),
                reason: format!("cannot be read: {e}"),
            })?;
            let planned = self.entry_for(item.path(), &path, &meta, Some((root, rel)))?;
            self.plan(planned, true)?;
        }
        Ok(())
    }

    /// The entry for one file on disk. `tree` is the source tree's root and the file's path
    /// inside it (for the symlink check), `None` for a single file.
    fn entry_for(
        &self,
        src: &Path,
        path: &str,
        meta: &Metadata,
        tree: Option<(&Path, &str)>,
    ) -> Result<Planned> {
        if let Some(name) = path.rsplit('/').next().filter(|n| n.starts_with(".wh.")) {
            return Err(Error::LayerSource {
                path: src.to_owned(),
                reason: format!("the name {name:?} is reserved for whiteouts"),
            });
        }
        let ft = meta.file_type();
        let mut data = None;
        let mut inode = None;
        let kind = if ft.is_file() {
            data = Some(Data::Disk(DiskFile {
                path: src.to_owned(),
                open: src.to_owned(),
                seen: Stamp::of(meta),
            }));
            if meta.nlink() > 1 {
                inode = Some((meta.dev(), meta.ino()));
            }
            Kind::File { size: meta.len() }
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            let target = std::fs::read_link(src).map_err(|e| source_err(src, &e))?;
            let target = target.to_str().ok_or_else(|| Error::LayerSource {
                path: src.to_owned(),
                reason: "symlink target is not UTF-8".into(),
            })?;
            if let Some((root, rel)) = tree {
                let reason = match resolve_in_tree(rel, target, |p| tree_link(root, p)) {
                    Resolved::Inside => None,
                    Resolved::Outside => Some(format!(
                        "symlink to {target:?} points outside the source tree (absolute \
                         targets are kept as image paths; relative ones, followed through \
                         the tree's other symlinks, must stay inside)"
                    )),
                    Resolved::TooDeep => Some(format!(
                        "symlink to {target:?} leads through more than {MAX_LINK_HOPS} \
                         symlinks (a loop?), so where it ends cannot be checked"
                    )),
                };
                if let Some(reason) = reason {
                    return Err(Error::LayerSource {
                        path: src.to_owned(),
                        reason,
                    });
                }
            }
            Kind::Symlink {
                target: target.to_owned(),
            }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_char_device() || ft.is_block_device() {
            let (major, minor) = dev_numbers(meta.rdev());
            if ft.is_char_device() {
                Kind::CharDevice { major, minor }
            } else {
                Kind::BlockDevice { major, minor }
            }
        } else if ft.is_socket() {
            return Err(Error::LayerSource {
                path: src.to_owned(),
                reason: "is a socket, which a layer cannot carry".into(),
            });
        } else {
            return Err(Error::LayerSource {
                path: src.to_owned(),
                reason: "is of an unknown file type".into(),
            });
        };
        let (uid, gid) = self.owner(Some(meta));
        let mtime = u64::try_from(meta.mtime())
            .unwrap_or(0)
            .min(self.opts.epoch);
        let mode = if matches!(kind, Kind::Symlink { .. }) {
            0o777
        } else {
            meta.permissions().mode() & 0o7777
        };
        Ok(Planned {
            entry: Entry {
                path: path.to_owned(),
                kind,
                mode,
                uid,
                gid,
                mtime,
                xattrs: read_xattrs(src, ft.is_symlink())?,
            },
            data,
            inode,
            implied: false,
        })
    }

    fn plan(&mut self, planned: Planned, from_tree: bool) -> Result<()> {
        let path = planned.entry.path.clone();
        // Nothing may go below a file or link, whichever was given first.
        let mut ancestor = path.as_str();
        while let Some((p, _)) = ancestor.rsplit_once('/') {
            ancestor = p;
            if let Some(a) = self.planned.get(ancestor)
                && !matches!(a.entry.kind, Kind::Dir)
            {
                return Err(Error::LayerPath {
                    path: format!("/{path}"),
                    reason: format!("/{ancestor} is added as something other than a directory"),
                });
            }
        }
        // Parents first, so an explicit directory later replaces an implied one.
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            parent = p;
            if !self.planned.contains_key(parent) {
                let (uid, gid) = self.owner(None);
                let implied = Planned {
                    entry: Entry {
                        path: parent.to_owned(),
                        kind: Kind::Dir,
                        mode: 0o755,
                        uid,
                        gid,
                        mtime: self.opts.epoch,
                        xattrs: Vec::new(),
                    },
                    data: None,
                    inode: None,
                    implied: true,
                };
                self.planned.insert(parent.to_owned(), implied);
            }
        }
        match self.planned.get(&path) {
            Some(old) if !old.implied => {
                let both_dirs =
                    matches!(old.entry.kind, Kind::Dir) && matches!(planned.entry.kind, Kind::Dir);
                // Two trees may share a directory (the first one's metadata is kept); anything
                // else given twice is ambiguous.
                if both_dirs && from_tree {
                    return Ok(());
                }
                Err(Error::LayerPath {
                    path: format!("/{path}"),
                    reason: "given twice".into(),
                })
            }
            Some(_) if !matches!(planned.entry.kind, Kind::Dir) => Err(Error::LayerPath {
                path: format!("/{path}"),
                reason: "is a directory of other added paths and cannot also be a file".into(),
            }),
            _ => {
                self.planned.insert(path, planned);
                Ok(())
            }
        }
    }

    /// The final entries in order: whiteouts checked against additions, hardlinks resolved.
    fn finish_plan(mut self) -> Result<(LayerOptions, Vec<Planned>)> {
        for (path, removal) in &self.removals {
            let under = format!("{path}/");
            let clash = self.planned.keys().find(|p| match removal {
                Removal::Path => *p == path || p.starts_with(&under),
                Removal::Contents => false,
            });
            if let Some(p) = clash {
                return Err(Error::LayerPath {
                    path: format!("/{path}"),
                    reason: format!("is removed and /{p} is added in the same layer"),
                });
            }
            let (parent, name) = match path.rsplit_once('/') {
                Some((parent, name)) => (format!("{parent}/"), name),
                None => (String::new(), path.as_str()),
            };
            let wh = match removal {
                Removal::Path => format!("{parent}.wh.{name}"),
                Removal::Contents if path.is_empty() => ".wh..wh..opq".to_owned(),
                Removal::Contents => format!("{path}/.wh..wh..opq"),
            };
            let (uid, gid) = (0, 0);
            self.planned.insert(
                wh.clone(),
                Planned {
                    entry: Entry {
                        path: wh,
                        kind: Kind::File { size: 0 },
                        mode: 0o644,
                        uid,
                        gid,
                        mtime: self.opts.epoch,
                        xattrs: Vec::new(),
                    },
                    data: Some(Data::Memory(Vec::new())),
                    inode: None,
                    implied: false,
                },
            );
        }
        let mut first_link: HashMap<(u64, u64), String> = HashMap::new();
        let mut out = Vec::with_capacity(self.planned.len());
        for (_, mut p) in self.planned {
            // A directory that is only the parent of something added gets no entry: applied on
            // a base, an entry would replace the base's own directory's mode and owner (a
            // `/tmp` of 1777 would become 0755); where the base lacks it, extractors create it.
            if p.implied {
                continue;
            }
            if let Some(ino) = p.inode {
                match first_link.get(&ino) {
                    Some(target) => {
                        p.entry.kind = Kind::Hardlink {
                            target: target.clone(),
                        };
                        p.data = None;
                    }
                    None => {
                        first_link.insert(ino, p.entry.path.clone());
                    }
                }
            }
            out.push(p);
        }
        Ok((self.opts, out))
    }

    /// Writes the layer blob to `out` and returns its digests and size with `out`. The tar, its
    /// digest (the diff_id), the compressed bytes and their digest come out of one pass.
    ///
    /// # Errors
    /// [`Error::LayerPath`] for conflicting additions and removals, [`Error::LayerSource`] for a
    /// file that cannot be read, that is no longer the file that was added (swapped for a
    /// symlink, a FIFO or another file: symlinks are not followed here) or that was written to
    /// since it was added or while it is read, [`Error::Io`] when `out` fails.
    pub fn build<W: Write>(self, out: W) -> Result<(Layer, W)> {
        let (opts, entries) = self.finish_plan()?;
        let out = HashingWriter::new(out);
        let write_err = |e: io::Error| Error::from_io("writing the layer", e);
        let (out, diff_id) = match opts.compression {
            Compression::Gzip => {
                let level = opts.level.unwrap_or(6);
                let gz = ParallelGzip::new(out, level, opts.threads);
                let (gz, diff_id) = write_tar(&entries, gz)?;
                (gz.finish().map_err(write_err)?, diff_id)
            }
            Compression::Zstd => {
                let level = opts.level.unwrap_or(3);
                let level = i32::try_from(level).unwrap_or(i32::MAX);
                let z = zstd::stream::write::Encoder::new(out, level).map_err(write_err)?;
                let (z, diff_id) = write_tar(&entries, z)?;
                (z.finish().map_err(write_err)?, diff_id)
            }
            Compression::None => write_tar(&entries, out)?,
        };
        let (out, digest, size) = out.finish();
        Ok((
            Layer {
                compression: opts.compression,
                digest,
                diff_id,
                size,
            },
            out,
        ))
    }
}

fn write_tar<W: Write>(entries: &[Planned], out: W) -> Result<(W, Digest)> {
    let mut tar = TarWriter::new(HashingWriter::new(out));
    for p in entries {
        let path = || format!("/{}", p.entry.path);
        match &p.data {
            Some(Data::Disk(src)) => {
                let mut f = src.open()?;
                tar.append(&p.entry, Some(&mut f))
                    .map_err(|e| data_err(&src.path, e))?;
                src.check_unchanged(&f)?;
            }
            Some(Data::Memory(bytes)) => tar
                .append(&p.entry, Some(&mut &bytes[..]))
                .map_err(|e| Error::from_io(format!("writing {} into the layer", path()), e))?,
            None => tar
                .append(&p.entry, None)
                .map_err(|e| Error::from_io(format!("writing {} into the layer", path()), e))?,
        }
    }
    let hashing = tar
        .finish()
        .map_err(|e| Error::from_io("writing the layer", e))?;
    let (out, diff_id, _) = hashing.finish();
    Ok((out, diff_id))
}

fn source_err(path: &Path, e: &io::Error) -> Error {
    Error::LayerSource {
        path: path.to_owned(),
        reason: match e.kind() {
            io::ErrorKind::NotFound => "does not exist".into(),
            io::ErrorKind::PermissionDenied => "cannot be read: permission denied".into(),
            _ => format!("cannot be read: {e}"),
        },
    }
}

/// An error while copying a file into the tar: reading the file (a source problem) or writing
/// the output (an I/O problem) look the same from `io::copy`, so the kind tells them apart.
fn data_err(src: &Path, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::LayerSource {
            path: src.to_owned(),
            reason: e.to_string(),
        }
    } else {
        Error::from_io(format!("copying {} into the layer", src.display()), e)
    }
}

/// `dest` as a relative path with no `.`, empty or trailing components; `""` is the root.
fn normalize(dest: &str) -> Result<String> {
    let mut parts = Vec::new();
    for c in dest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Error::LayerPath {
                    path: dest.into(),
                    reason: "must not contain '..'".into(),
                });
            }
            c if c.contains('\0') => {
                return Err(Error::LayerPath {
                    path: dest.into(),
                    reason: "must not contain NUL".into(),
                });
            }
            c if c.starts_with(".wh.") => {
                return Err(Error::LayerPath {
                    path: dest.into(),
                    reason: format!("{c:?} is reserved for whiteouts"),
                });
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn normalize_nonroot(dest: &str) -> Result<String> {
    let p = normalize(dest)?;
    if p.is_empty() {
        return Err(Error::LayerPath {
            path: dest.into(),
            reason: "must name something below the root".into(),
        });
    }
    Ok(p)
}

/// Symlinks followed at most while resolving one link inside a tree, as Linux's `MAXSYMLINKS`.
const MAX_LINK_HOPS: usize = 40;

/// Where a relative symlink inside a source tree ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolved {
    /// Inside the tree, or at an absolute target (an image path, kept as written).
    Inside,
    /// Above the tree's root.
    Outside,
    /// Through more than [`MAX_LINK_HOPS`] symlinks.
    TooDeep,
}

/// Resolves the symlink at `link` (a path inside a tree) to `target` lexically, component by
/// component as the kernel would, following the tree's other symlinks: `read_link` answers the
/// target of the tree path it is given when that path is a symlink. A chain such as
/// `a/b/up2 -> ../..` and `a/esc -> b/up2/..` leaves the tree though each link alone seems not
/// to. Paths that do not exist are taken as plain names.
fn resolve_in_tree(
    link: &str,
    target: &str,
    mut read_link: impl FnMut(&str) -> Option<String>,
) -> Resolved {
    if target.starts_with('/') {
        return Resolved::Inside;
    }
    // The directory the path has reached, and what is left to walk (next component last).
    let mut at: Vec<String> = link.split('/').map(str::to_owned).collect();
    at.pop();
    let mut todo: Vec<String> = target.split('/').rev().map(str::to_owned).collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => {}
            ".." => {
                if at.pop().is_none() {
                    return Resolved::Outside;
                }
            }
            _ => {
                at.push(c);
                if let Some(next) = read_link(&at.join("/")) {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Resolved::TooDeep;
                    }
                    if next.starts_with('/') {
                        return Resolved::Inside;
                    }
                    at.pop();
                    todo.extend(next.split('/').rev().map(str::to_owned));
                }
            }
        }
    }
    Resolved::Inside
}

/// The target of `rel` under `root` when it is a symlink with a UTF-8 target.
fn tree_link(root: &Path, rel: &str) -> Option<String> {
    let path = root.join(rel);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.file_type().is_symlink() {
        return None;
    }
    std::fs::read_link(&path)
        .ok()?
        .into_os_string()
        .into_string()
        .ok()
}

/// Linux's encoding of device numbers (glibc `gnu_dev_major`/`gnu_dev_minor`).
fn dev_numbers(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// Extended attributes worth carrying, sorted. `security.selinux` is left out: it is a label of
/// the build machine's policy, differs from machine to machine, and runtimes relabel anyway.
/// `system.*` (ACLs) are left out as Docker and BuildKit do.
fn read_xattrs(path: &Path, is_symlink: bool) -> Result<Vec<(String, Vec<u8>)>> {
    if is_symlink {
        return Ok(Vec::new());
    }
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::Unsupported => return Ok(Vec::new()),
        Err(e) if e.raw_os_error() == Some(95) => return Ok(Vec::new()), // EOPNOTSUPP
        Err(e) => return Err(source_err(path, &e)),
    };
    let mut out = Vec::new();
    for name in names {
        let Some(name) = name.to_str() else { continue };
        if name == "security.selinux" || name.starts_with("system.") {
            continue;
        }
        if let Some(value) = xattr::get(path, name).map_err(|e| source_err(path, &e))? {
            out.push((name.to_owned(), value));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_destinations() {
        assert_eq!(normalize("/usr//local/./bin/").unwrap(), "usr/local/bin");
        assert_eq!(normalize("/").unwrap(), "");
        assert!(normalize("/a/../b").is_err());
        assert!(normalize("/a/.wh.b/c").is_err());
        assert!(normalize_nonroot("/").is_err());
    }

    fn climbs_out(link: &str, target: &str) -> bool {
        resolve_in_tree(link, target, |_| None) == Resolved::Outside
    }

    #[test]
    fn detects_symlinks_leaving_the_tree() {
        assert!(!climbs_out("a/link", "../b"));
        assert!(climbs_out("a/link", "../../b"));
        assert!(climbs_out("link", "../x"));
        assert!(!climbs_out("link", "/etc/passwd"));
        assert!(!climbs_out("a/b/link", "c/../../d"));
    }

    #[test]
    fn follows_chains_of_symlinks_inside_the_tree() {
        let links = |p: &str| {
            match p {
                "a/b/up2" => Some("../.."),
                "a/b/abs" => Some("/etc"),
                "a/b/loop1" => Some("loop2"),
                "a/b/loop2" => Some("loop1"),
                "a/b/deep" => Some("c/d/e"),
                "a/b/c" => Some("."),
                _ => None,
            }
            .map(str::to_owned)
        };
        let resolve = |link, target| resolve_in_tree(link, target, links);
        // Each alone stays inside; through up2, `..` leaves the tree.
        assert_eq!(resolve("a/b/up2", "../.."), Resolved::Inside);
        assert_eq!(resolve("a/esc", "b/up2/.."), Resolved::Outside);
        assert_eq!(resolve("a/esc", "b/up2/../x/y"), Resolved::Outside);
        assert_eq!(resolve("a/ok", "b/up2/a"), Resolved::Inside);
        assert_eq!(resolve("x", "a/b/up2/a/b/up2/.."), Resolved::Outside);
        // `..` after a symlink to a directory is the parent of where it points.
        assert_eq!(resolve("a/b/x", "c/.."), Resolved::Inside);
        assert_eq!(resolve("top", "a/b/c/c/c/../.."), Resolved::Inside);
        assert_eq!(resolve("top", "a/b/c/../../.."), Resolved::Outside);
        // An absolute link in the chain is an image path: nothing more to check.
        assert_eq!(resolve("a/x", "b/abs/../../../.."), Resolved::Inside);
        assert_eq!(resolve("a/x", "b/loop1"), Resolved::TooDeep);
        assert_eq!(resolve("a/x", "b/deep"), Resolved::Inside);
    }

    #[test]
    fn device_numbers_decode_like_glibc() {
        // makedev(1, 3) for /dev/null and makedev(259, 70000).
        assert_eq!(dev_numbers(0x103), (1, 3));
        let rdev = (70000u64 & 0xff) | ((259u64 & 0xfff) << 8) | ((70000u64 & !0xff) << 12);
        assert_eq!(dev_numbers(rdev), (259, 70000));
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    #[test]
    fn a_rewrite_of_the_same_size_while_the_file_is_read_is_detected() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        std::fs::write(&path, b"before").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let src = DiskFile {
            path: path.clone(),
            open: path.clone(),
            seen: Stamp::of(&meta),
        };
        let mut f = src.open().unwrap();
        let mut read = Vec::new();
        f.read_to_end(&mut read).unwrap();
        assert!(src.check_unchanged(&f).is_ok());
        // Between reading and the check, another writer puts other bytes of the same size.
        let w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        (&w).write_all(b"after!").unwrap();
        w.set_modified(meta.modified().unwrap() + std::time::Duration::from_secs(1))
            .unwrap();
        let err = src.check_unchanged(&f).unwrap_err().to_string();
        assert!(err.contains("changed while it was read"), "{err}");
    }

    #[test]
    fn nothing_goes_below_a_file_in_either_order() {
        for order in [["/a", "/a/b"], ["/a/b", "/a"]] {
            let mut b = LayerBuilder::new(LayerOptions::default());
            let first = b.add_bytes(order[0], b"x".to_vec(), 0o644);
            let second = b.add_bytes(order[1], b"y".to_vec(), 0o644);
            assert!(first.is_ok());
            assert!(second.is_err(), "{order:?}");
        }
        let mut b = LayerBuilder::new(LayerOptions::default());
        b.add_symlink("/l", "/etc").unwrap();
        assert!(
            b.add_bytes("/l/x", b"x".to_vec(), 0o644).is_err(),
            "nothing below a symlink"
        );
    }
}

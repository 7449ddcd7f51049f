//! `unpack`: an image's layers applied in order into a directory.

use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ociup_core::Digest;
use ociup_core::digest::Hasher;
use ociup_core::media_type::Compression;
use ociup_core::ops::Image;
use ociup_core::store::Store;

use crate::apply::{At, Tree};
use crate::error::{Error, Result};

/// Whose owner the unpacked files get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Owners {
    /// The layers' when running as root, the caller's otherwise.
    #[default]
    Auto,
    /// The layers' uid and gid (needs root, or `CAP_CHOWN`).
    FromLayers,
    /// The caller's, as `umoci unpack --rootless` does: the layers' uids and gids are dropped.
    Caller,
}

/// How to unpack.
#[derive(Clone, Debug, Default)]
pub struct UnpackOptions {
    /// Whose owner the files get.
    pub owners: Owners,
}

/// What [`unpack`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnpackReport {
    /// Layers applied.
    pub layers: usize,
    /// Regular files written (over all layers, counting those a later layer replaced).
    pub files: u64,
    /// Directory entries applied.
    pub directories: u64,
    /// Symlinks made.
    pub symlinks: u64,
    /// Hardlinks made.
    pub hardlinks: u64,
    /// Device nodes and FIFOs made (as root).
    pub devices: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
    /// Whether owners came from the layers (otherwise every file is the caller's).
    pub owners_from_layers: bool,
    /// Extended attributes the file system or the caller's rights refused (logged at debug).
    pub xattrs_skipped: u64,
    /// Entries not created, one note each: device nodes and FIFOs (when not root, or where
    /// `mknod` is refused), unknown entry types.
    pub skipped: Vec<String>,
}

/// Applies the layers of `image`, read from `store`, in order into `dir`, which must be absent
/// or empty.
///
/// The layers are unpacked into a new directory beside `dir` (`.DIR.partial-XXXXXX`, mode
/// 0700, so nothing else writes in it while the unpacker walks it) that is renamed to `dir`
/// once everything is in. On any error it is removed and `dir` is left as it was.
///
/// What the layers hold is applied as `umoci unpack` and containerd apply it: OCI whiteouts
/// (`.wh.NAME`) and opaque directories (`.wh..wh..opq`, which keep what the same layer put
/// there), hardlinks, symlinks, modes including setuid, setgid and sticky bits, owners,
/// extended attributes (`SCHILY.xattr.*`; those the file system or the caller's rights refuse
/// are skipped, logged at debug level and counted), modification times (a directory's once
/// everything inside it is written). gzip, zstd and uncompressed layers are read; each blob is
/// checked against its digest and size as it streams, and its uncompressed bytes against the
/// config's diff_id.
///
/// **Nothing is written outside `dir`**, whatever a layer holds. Names are cleaned as if `dir`
/// were `/`: `../x` and `/x` both land at `dir/x` (confined, not refused, as umoci and
/// containerd do). A symlink met on the way to an entry is followed inside `dir`: `evil -> /`
/// then `evil/etc/x` writes `dir/etc/x`. A hardlink's target is resolved the same way and must
/// already exist in the tree (`/etc/passwd` is the image's, `../../outside` is `dir/outside`).
/// A whiteout of `..`, `.` or an empty name is an error.
///
/// **Owners.** With [`Owners::Auto`], files get the layers' uid and gid when the caller is root,
/// and stay the caller's otherwise (as `umoci unpack --rootless`): modes are kept, directories
/// stay writable by the caller until the end. **Device nodes and FIFOs** are made (`mknod`)
/// only when owners come from the layers (root); otherwise, or where `mknod` is refused, each
/// one is listed in [`UnpackReport::skipped`].
///
/// # Errors
/// [`Error::NotEmpty`] when `dir` holds something; [`Error::Store`] when a blob cannot be read
/// or does not match its digest or size; [`Error::DiffIdMismatch`]; [`Error::Layer`] for a blob
/// that is not a tar in its media type's compression; [`Error::Entry`] for an entry that cannot
/// be applied (a hardlink to nothing, a whiteout of `..`, a file where a directory is needed);
/// [`Error::InvalidImage`] for an unknown layer media type; [`Error::Io`].
pub async fn unpack<S: Store>(
    store: &S,
    image: &Image,
    dir: &Path,
    options: &UnpackOptions,
) -> Result<UnpackReport> {
    let plan = plan(image)?;
    let staging = Staging::new(dir)?;
    let chown = match options.owners {
        Owners::Auto => staging.caller_is_root,
        Owners::FromLayers => true,
        Owners::Caller => false,
    };
    let mut tree = Tree::new(staging.path.clone(), chown);
    for (i, layer) in plan.into_iter().enumerate() {
        tree = apply_blob(store, tree, i + 1, layer).await?;
        tree.report.layers += 1;
    }
    tree.finish_dirs()?;
    let report = std::mem::take(&mut tree.report);
    staging.commit(dir)?;
    Ok(report)
}

/// One layer of an image: its blob and what it must unpack to.
#[derive(Clone, Debug)]
pub(crate) struct LayerPlan {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) compression: Compression,
    pub(crate) diff_id: Digest,
}

/// The layers of `image`, each with its diff_id, checked to be layers and as many as the
/// config's diff_ids.
pub(crate) fn plan(image: &Image) -> Result<Vec<LayerPlan>> {
    let layers = image.manifest.parsed().layers().clone();
    let diff_ids = image.config.diff_ids().map_err(|source| Error::Store {
        what: "reading the diff_ids of the image config".into(),
        source,
    })?;
    if diff_ids.len() != layers.len() {
        return Err(Error::InvalidImage {
            reason: format!(
                "the manifest has {} layers but the config {} diff_ids",
                layers.len(),
                diff_ids.len()
            ),
        });
    }
    let mut plan = Vec::with_capacity(layers.len());
    for (i, (layer, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
        let media_type = layer.media_type().to_string();
        let compression =
            Compression::of_layer(&media_type).ok_or_else(|| Error::InvalidImage {
                reason: format!("layer {} has media type {media_type}, not a layer", i + 1),
            })?;
        let digest = Digest::try_from(layer.digest()).map_err(|source| Error::Store {
            what: format!("layer {}", i + 1),
            source,
        })?;
        plan.push(LayerPlan {
            digest,
            size: layer.size(),
            compression,
            diff_id,
        });
    }
    Ok(plan)
}

/// Streams one layer's blob from `store` onto `tree` (on a blocking thread), checking its
/// digest, size and diff_id; answers the tree.
pub(crate) async fn apply_blob<S: Store>(
    store: &S,
    mut tree: Tree,
    index: usize,
    layer: LayerPlan,
) -> Result<Tree> {
    let LayerPlan {
        digest,
        size,
        compression,
        diff_id,
    } = layer;
    let blob = store
        .get_blob(&digest, size)
        .await
        .map_err(|source| Error::Store {
            what: format!("reading layer {index} ({digest})"),
            source,
        })?;
    let bridge = tokio_util::io::SyncIoBridge::new(blob);
    let blob_error = Arc::new(Mutex::new(None));
    let tap = Tap {
        inner: bridge,
        error: blob_error.clone(),
    };
    let task = tokio::task::spawn_blocking(move || {
        let result = apply_one(&mut tree, tap, compression, &diff_id, &digest, index);
        (tree, result, digest)
    });
    let (back, result, digest) = task.await.map_err(|e| Error::Io {
        context: format!("unpacking layer {index}"),
        source: io::Error::other(e.to_string()),
    })?;
    if let Some(e) = blob_error.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(Error::Store {
            what: format!("reading layer {index} ({digest})"),
            source: ociup_core::Error::from_io(format!("reading layer {index}"), e),
        });
    }
    result?;
    Ok(back)
}

/// How much of a blob is read at once.
const BLOB_BUFFER: usize = 256 * 1024;
/// The chunks of decompressed tar handed from the decompressing thread to the writing one.
const CHUNK: usize = 256 * 1024;
/// How many chunks may wait for the writing thread (4 MiB).
const CHUNKS_AHEAD: usize = 16;

/// Unpacks one layer: decompress and hash for the diff_id on one thread, apply the tar on this
/// one (so that inflating and hashing overlap the file system's work), read to the end.
fn apply_one(
    tree: &mut Tree,
    blob: impl Read + Send,
    compression: Compression,
    diff_id: &Digest,
    digest: &Digest,
    index: usize,
) -> Result<()> {
    let layer_err = |source| Error::Layer {
        index,
        digest: digest.clone(),
        source,
    };
    let at = At { index, digest };
    let (failed, produced) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(CHUNKS_AHEAD);
        let producer = std::thread::Builder::new()
            .name("ociup-inflate".into())
            .spawn_scoped(scope, move || {
                decompress_into(blob, compression, diff_id, tx)
            });
        let producer = match producer {
            Ok(p) => p,
            Err(e) => return (Some(layer_err(e)), None),
        };
        let mut tar = Chunks::new(rx);
        let failed = match tree.apply_layer(&mut tar, &at) {
            // What the tar reader left (padding after the end blocks) counts in the diff_id.
            Ok(()) => io::copy(&mut tar, &mut io::sink()).err().map(layer_err),
            Err(Ok(e)) => Some(layer_err(e)),
            Err(Err(e)) => Some(e),
        };
        // Gone: a producer still sending reads the blob to the end instead, so that a blob
        // that fails its digest is reported as such (the caller checks that first), even when
        // its bytes broke the decompressor or the tar reader.
        drop(tar);
        (failed, Some(producer.join()))
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let actual = match produced {
        Some(Ok(Ok(Some(d)))) => d,
        Some(Ok(Err(e))) => return Err(layer_err(e)),
        _ => {
            return Err(layer_err(io::Error::other(
                "the decompressing thread ended early",
            )));
        }
    };
    // Hashed with the diff_id's own algorithm, so the comparison always runs: a cache entry is
    // named after the diff_id, and an unchecked one would poison it.
    if actual != *diff_id {
        return Err(Error::DiffIdMismatch {
            index,
            digest: digest.clone(),
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(())
}

/// The decompressing thread: reads `blob` through its decompressor, hashing, and sends the tar
/// in chunks (an error as the last one). Answers the digest of the uncompressed bytes once the
/// whole blob is read (its digest checked to the end), `None` when the receiver went away
/// first (the blob is then read to the end all the same), or the decompressor's error.
fn decompress_into(
    blob: impl Read,
    compression: Compression,
    diff_id: &Digest,
    tx: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
) -> io::Result<Option<Digest>> {
    // Large reads: each read of the blob crosses from this thread to the runtime and back.
    let blob = BufReader::with_capacity(BLOB_BUFFER, blob);
    let mut tar = Decompressed::new(blob, compression, diff_id)?;
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let mut filled = 0;
        let mut failed = None;
        while filled < CHUNK {
            match tar.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        chunk.truncate(filled);
        let end = filled == 0 || failed.is_some();
        if filled > 0 && tx.send(Ok(chunk)).is_err() {
            let _ = drain(tar.into_blob());
            return Ok(None);
        }
        if let Some(e) = failed {
            // The tar reader sees the error; the blob is read to the end for its check.
            let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            drop(tx);
            let _ = drain(tar.into_blob());
            return Err(e);
        }
        if end {
            break;
        }
    }
    drop(tx);
    tar.finish().map(Some)
}

/// The tar as the decompressing thread sends it: a reader over the chunks; the end when the
/// sender is gone.
struct Chunks {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Chunks {
    fn new(rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>) -> Self {
        Chunks {
            rx,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Keeps the first error of the blob reader, so a blob that fails its digest is reported as
/// such even when the tar reader wraps the error in its own.
struct Tap<R> {
    inner: R,
    error: Arc<Mutex<Option<io::Error>>>,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => Ok(n),
            Err(e) => {
                let kind = e.kind();
                let message = e.to_string();
                if let Ok(mut slot) = self.error.lock()
                    && slot.is_none()
                {
                    *slot = Some(e);
                }
                Err(io::Error::new(kind, message))
            }
        }
    }
}

/// A layer's tar: the blob decompressed, hashed as it is read with the algorithm of the
/// diff_id it must match (sha256 or sha512).
enum Decoder<R: Read> {
    Gzip(Box<flate2::read::MultiGzDecoder<R>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
    Plain(R),
}

struct Decompressed<R: Read> {
    decoder: Decoder<R>,
    hasher: Hasher,
}

impl<R: Read> Decompressed<R> {
    fn new(blob: R, compression: Compression, diff_id: &Digest) -> io::Result<Self> {
        let decoder = match compression {
            Compression::Gzip => Decoder::Gzip(Box::new(flate2::read::MultiGzDecoder::new(blob))),
            Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::new(blob)?),
            _ => Decoder::Plain(blob),
        };
        Ok(Decompressed {
            decoder,
            hasher: diff_id.algorithm().hasher(),
        })
    }

    /// Reads the rest of the blob itself (after the compressed stream's end), so that its
    /// digest is checked; answers the digest of the uncompressed bytes.
    fn finish(self) -> io::Result<Digest> {
        match self.decoder {
            Decoder::Gzip(d) => drain(d.into_inner())?,
            Decoder::Zstd(d) => drain(d.finish())?,
            Decoder::Plain(r) => drain(r)?,
        }
        Ok(self.hasher.finish())
    }
}

impl<R: Read> Decompressed<R> {
    /// The blob reader, where the decompressor left it.
    fn into_blob(self) -> R {
        match self.decoder {
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish().into_inner(),
            Decoder::Plain(r) => r,
        }
    }
}

fn drain(mut r: impl Read) -> io::Result<()> {
    io::copy(&mut r, &mut io::sink()).map(|_| ())
}

impl<R: Read> Read for Decompressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.decoder {
            Decoder::Gzip(d) => d.read(buf)?,
            Decoder::Zstd(d) => d.read(buf)?,
            Decoder::Plain(r) => r.read(buf)?,
        };
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The directory the layers are unpacked into, beside the target; removed unless committed.
struct Staging {
    path: PathBuf,
    caller_is_root: bool,
    keep: bool,
}

impl Staging {
    fn new(dir: &Path) -> Result<Self> {
        match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(Error::NotEmpty {
                        dir: dir.to_owned(),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        }
        let name = dir
            .file_name()
            .ok_or_else(|| Error::InvalidImage {
                reason: format!("{} names no directory to unpack into", dir.display()),
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        let made = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-"))
            .tempdir_in(&parent)
            .map_err(|e| Error::io(format!("creating a directory in {}", parent.display()), e))?;
        let path = made.keep();
        // Who the caller is: /proc/self belongs to the process's effective user (no unsafe
        // syscall wrapper needed); where /proc is not mounted, the owner of the staging
        // directory it just made (which a root_squash NFS mount would misreport).
        let caller_is_root = std::fs::metadata("/proc/self")
            .or_else(|_| std::fs::metadata(&path))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok(Staging {
            path,
            caller_is_root,
            keep: false,
        })
    }

    /// Renames the staging directory to `dir` (replacing it when it is an empty directory).
    fn commit(mut self, dir: &Path) -> Result<()> {
        std::fs::rename(&self.path, dir).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", self.path.display(), dir.display()),
                e,
            )
        })?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            tracing::debug!("removing {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use ociup_core::document::RawDocument;
    use ociup_core::layout::OciLayout;
    use ociup_core::media_type::{OCI_CONFIG, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST};
    use ociup_core::ops;
    use ociup_core::store::ManifestRef;

    use super::*;

    /// One entry: kind, name, link name, contents, mode, uid.
    pub(crate) type Spec<'a> = (tar::EntryType, &'a str, &'a str, &'a [u8], u32, u64);

    pub(crate) fn tar_of(entries: &[Spec<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (kind, name, link, data, mode, uid) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_path(name).unwrap();
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            h.set_mode(*mode);
            h.set_uid(*uid);
            h.set_gid(*uid);
            h.set_size(data.len() as u64);
            h.set_mtime(1_600_000_000);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A layout at `dir` with one image of `layers` (blob, media type, diff_id), tagged `v1`.
    pub(crate) async fn image_of(
        dir: &Path,
        layers: &[(Vec<u8>, &str, Digest)],
    ) -> (OciLayout, Image) {
        let layout = OciLayout::open_or_create(dir).unwrap();
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (blob, media_type, diff_id) in layers {
            let d = Digest::sha256(blob);
            layout
                .put_blob(&d, blob.len() as u64, &blob[..])
                .await
                .unwrap();
            descs.push(format!(
                r#"{{"mediaType":"{media_type}","digest":"{d}","size":{}}}"#,
                blob.len()
            ));
            diff_ids.push(format!("\"{diff_id}\""));
        }
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            diff_ids.join(",")
        )
        .into_bytes();
        let cd = Digest::sha256(&config);
        layout
            .put_blob(&cd, config.len() as u64, &config[..])
            .await
            .unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            descs.join(",")
        );
        layout
            .put_manifest(
                &RawDocument::new(manifest.into_bytes(), OCI_MANIFEST),
                Some("v1"),
            )
            .await
            .unwrap();
        let image = ops::load_image(&layout, &ManifestRef::Tag("v1".into()), None)
            .await
            .unwrap();
        (layout, image)
    }

    pub(crate) fn plain(tar: Vec<u8>) -> (Vec<u8>, &'static str, Digest) {
        let d = Digest::sha256(&tar);
        (tar, OCI_LAYER_TAR, d)
    }

    use tar::EntryType as E;

    #[tokio::test]
    async fn layers_apply_in_order_with_whiteouts_opaque_dirs_and_final_dir_modes() {
        let t = tempfile::tempdir().unwrap();
        let lower = tar_of(&[
            (E::Directory, "ro", "", b"", 0o555, 0),
            (E::Regular, "ro/file", "", b"in a read-only dir", 0o444, 7),
            (E::Directory, "opq", "", b"", 0o755, 0),
            (E::Regular, "opq/old", "", b"old", 0o644, 0),
            (E::Regular, "gone", "", b"x", 0o644, 0),
            (E::Regular, "keep", "", b"x", 0o644, 0),
            (E::Symlink, "evil", "/", b"", 0o777, 0),
            (E::Fifo, "fifo", "", b"", 0o644, 0),
        ]);
        let upper = tar_of(&[
            // Written before the marker, in the same layer: kept.
            (E::Regular, "opq/new", "", b"new", 0o644, 0),
            (E::Regular, "opq/.wh..wh..opq", "", b"", 0o644, 0),
            (E::Regular, ".wh.gone", "", b"", 0o644, 0),
            // A whiteout under `evil -> /` removes the tree's own path, nothing else.
            (E::Regular, "evil/.wh.nothing-here", "", b"", 0o644, 0),
        ]);
        // The upper layer compressed with zstd.
        let upper_zstd = zstd::encode_all(&upper[..], 3).unwrap();
        let layers = [
            plain(lower),
            (upper_zstd, OCI_LAYER_ZSTD, Digest::sha256(&upper)),
        ];
        let (layout, image) = image_of(&t.path().join("lay"), &layers).await;
        let dir = t.path().join("rootfs");
        let options = UnpackOptions {
            owners: Owners::Caller,
        };
        let report = unpack(&layout, &image, &dir, &options).await.unwrap();
        assert_eq!(report.layers, 2);
        assert_eq!(report.whiteouts, 3);
        assert!(!report.owners_from_layers);
        assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
        assert!(report.skipped[0].starts_with("/fifo: FIFO not created"));
        let mode = |p: &str| std::fs::symlink_metadata(dir.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("ro"), 0o555);
        assert_eq!(mode("ro/file"), 0o444);
        assert_eq!(
            std::fs::read(dir.join("ro/file")).unwrap(),
            b"in a read-only dir"
        );
        // Owners::Caller: the layer's uid 7 is dropped.
        let me = std::fs::metadata(t.path()).unwrap().uid();
        assert_eq!(std::fs::metadata(dir.join("ro/file")).unwrap().uid(), me);
        assert!(!dir.join("opq/old").exists());
        assert!(dir.join("opq/new").exists());
        assert!(!dir.join("gone").exists());
        assert!(dir.join("keep").exists());
        let ro_mtime = std::fs::metadata(dir.join("ro")).unwrap().mtime();
        assert_eq!(
            ro_mtime, 1_600_000_000,
            "a directory's time is set after its contents"
        );
        let link = std::fs::symlink_metadata(dir.join("evil")).unwrap();
        assert_eq!(link.mtime(), 1_600_000_000);
        std::fs::set_permissions(dir.join("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn owners_come_from_the_layers_when_asked() {
        let t = tempfile::tempdir().unwrap();
        if std::fs::metadata(t.path()).unwrap().uid() != 0 {
            // Only root may give files away; the rootless path is tested above.
            return;
        }
        let mut layer = tar_of(&[
            (E::Regular, "f", "", b"x", 0o4755, 1234),
            (E::Fifo, "fifo", "", b"", 0o640, 7),
        ]);
        // A character device 1:3 (as /dev/null), appended with its numbers.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(E::Char);
        h.set_path("null").unwrap();
        h.set_mode(0o666);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        let dev = b.into_inner().unwrap();
        layer.truncate(layer.len() - 1024);
        layer.extend_from_slice(&dev);
        let (layout, image) = image_of(&t.path().join("lay"), &[plain(layer)]).await;
        let dir = t.path().join("rootfs");
        let report = unpack(&layout, &image, &dir, &UnpackOptions::default())
            .await
            .unwrap();
        assert!(report.owners_from_layers);
        let m = std::fs::metadata(dir.join("f")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 1234, 0o4755));
        use std::os::unix::fs::FileTypeExt;
        let fifo = std::fs::symlink_metadata(dir.join("fifo")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!((fifo.uid(), fifo.mode() & 0o7777), (7, 0o640));
        // mknod of a device may be refused even to root (no CAP_MKNOD): then it is listed.
        match std::fs::symlink_metadata(dir.join("null")) {
            Ok(null) => {
                assert!(null.file_type().is_char_device());
                assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
                assert_eq!(report.devices, 2);
            }
            Err(_) => assert!(
                report.skipped[0].starts_with("/null"),
                "{:?}",
                report.skipped
            ),
        }
    }

    #[tokio::test]
    async fn extended_attributes_are_set_or_counted_as_skipped() {
        let t = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("SCHILY.xattr.user.ociup", &b"yes"[..])])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("f").unwrap();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let layer = b.into_inner().unwrap();
        let (layout, image) = image_of(&t.path().join("lay"), &[plain(layer)]).await;
        let dir = t.path().join("rootfs");
        let report = unpack(&layout, &image, &dir, &UnpackOptions::default())
            .await
            .unwrap();
        let got = xattr::get(dir.join("f"), "user.ociup").ok().flatten();
        // Set where the file system allows user attributes, counted as skipped where not.
        match got {
            Some(v) => assert_eq!((v.as_slice(), report.xattrs_skipped), (&b"yes"[..], 0)),
            None => assert_eq!(report.xattrs_skipped, 1),
        }
    }

    /// A GNU sparse entry: `data` stored, then a hole to `real` bytes.
    fn sparse_tar(data: &[u8], real: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(E::GNUSparse);
        h.set_path("sparse").unwrap();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.sparse[0].set_offset(0);
            gnu.sparse[0].set_length(data.len() as u64);
            gnu.sparse[1].set_offset(real);
            gnu.sparse[1].set_length(0);
            gnu.set_real_size(real);
        }
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, data).unwrap();
        b.into_inner().unwrap()
    }

    #[tokio::test]
    async fn sparse_files_expand_within_bounds() {
        let t = tempfile::tempdir().unwrap();
        let small = sparse_tar(b"head", 1 << 20);
        let (layout, image) = image_of(&t.path().join("lay"), &[plain(small)]).await;
        let dir = t.path().join("ok");
        unpack(&layout, &image, &dir, &UnpackOptions::default())
            .await
            .unwrap();
        let got = std::fs::read(dir.join("sparse")).unwrap();
        assert_eq!(got.len(), 1 << 20);
        assert_eq!(&got[..4], b"head");
        // 4 bytes that would expand to 1 TiB are refused before anything is written.
        let huge = sparse_tar(b"head", 1 << 40);
        let (layout, image) = image_of(&t.path().join("lay2"), &[plain(huge)]).await;
        let dir = t.path().join("refused");
        let err = unpack(&layout, &image, &dir, &UnpackOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("sparse file"), "{err}");
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn a_layer_that_does_not_match_its_diff_id_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let layer = tar_of(&[(E::Regular, "f", "", b"x", 0o644, 0)]);
        let wrong = Digest::sha256(b"another tar");
        let (layout, image) =
            image_of(&t.path().join("lay"), &[(layer, OCI_LAYER_TAR, wrong)]).await;
        let dir = t.path().join("rootfs");
        let err = unpack(&layout, &image, &dir, &UnpackOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::DiffIdMismatch { index: 1, .. }),
            "{err}"
        );
        assert!(!dir.exists());
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1, "{err}");
    }

    /// An entry under a relative link climbing out of its directory lands where the link
    /// points (`etc/up -> ../usr`: `etc/up/x` is `usr/x`), and `..` stops at the root.
    #[tokio::test]
    async fn entries_under_relative_dotdot_links_land_where_they_point() {
        let t = tempfile::tempdir().unwrap();
        let layer = tar_of(&[
            (E::Directory, "etc", "", b"", 0o755, 0),
            (E::Directory, "usr", "", b"", 0o755, 0),
            (E::Symlink, "etc/up", "../usr", b"", 0o777, 0),
            (E::Symlink, "etc/top", "../../../..", b"", 0o777, 0),
            (E::Regular, "etc/up/x", "", b"x", 0o644, 0),
            (E::Regular, "etc/top/y", "", b"y", 0o644, 0),
        ]);
        let (layout, image) = image_of(&t.path().join("lay"), &[plain(layer)]).await;
        let dir = t.path().join("rootfs");
        unpack(&layout, &image, &dir, &UnpackOptions::default())
            .await
            .unwrap();
        assert_eq!(std::fs::read(dir.join("usr/x")).unwrap(), b"x");
        assert_eq!(std::fs::read(dir.join("y")).unwrap(), b"y");
        assert!(!dir.join("etc/usr").exists() && !t.path().join("y").exists());
    }

    /// A sha512 diff_id is checked too (it names the cache entry: an unchecked one would let a
    /// layer poison `layers/sha512-HEX` for every image naming that diff_id); the right one
    /// passes.
    #[tokio::test]
    async fn a_sha512_diff_id_is_checked() {
        let t = tempfile::tempdir().unwrap();
        let layer = tar_of(&[(E::Regular, "f", "", b"x", 0o644, 0)]);
        let sha512 = |b: &[u8]| {
            let mut h = ociup_core::digest::Algorithm::Sha512.hasher();
            h.update(b);
            h.finish()
        };
        let wrong = sha512(b"another tar");
        let (layout, image) = image_of(
            &t.path().join("lay"),
            &[(layer.clone(), OCI_LAYER_TAR, wrong.clone())],
        )
        .await;
        let err = unpack(
            &layout,
            &image,
            &t.path().join("rootfs"),
            &UnpackOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, Error::DiffIdMismatch { expected, .. } if *expected == wrong),
            "{err}"
        );
        // Nor does the layer cache take it under that name.
        let cache = crate::LayerCache::new(t.path().join("cache"));
        let err = cache.snapshot(&layout, &image, false).await.unwrap_err();
        assert!(matches!(err, Error::DiffIdMismatch { .. }), "{err}");
        let layers = std::fs::read_dir(t.path().join("cache/layers")).unwrap();
        let names: Vec<_> = layers
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(names.is_empty(), "{names:?}");

        let right = sha512(&layer);
        let (layout, image) =
            image_of(&t.path().join("lay2"), &[(layer, OCI_LAYER_TAR, right)]).await;
        let dir = t.path().join("ok");
        unpack(&layout, &image, &dir, &UnpackOptions::default())
            .await
            .unwrap();
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"x");
    }
}

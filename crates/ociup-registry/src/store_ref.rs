//! References to any store, in the forms skopeo uses, and one `Store` over both kinds.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::Descriptor;
use ociup_core::Digest;
use ociup_core::document::RawDocument;
use ociup_core::layout::OciLayout;
use ociup_core::reference::LayoutRef;
use ociup_core::store::{BlobReader, ManifestRef, MountSource, OpenUpload, Probe, Store};
use tokio::io::AsyncRead;

use crate::client::Client;
use crate::reference::Reference;
use crate::repository::Repository;

/// An image in a layout (`oci:<dir>[:<tag>|@<digest>]`) or a registry
/// (`docker://host/name[:tag][@digest]`, or the same without `docker://`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreRef {
    /// An OCI image layout directory.
    Layout(LayoutRef),
    /// A registry repository.
    Registry(Reference),
}

impl StoreRef {
    /// Parses a store reference.
    ///
    /// # Errors
    /// The layout or registry reference parser's error.
    pub fn parse(input: &str) -> ociup_core::Result<StoreRef> {
        if input.starts_with("oci:") {
            return Ok(StoreRef::Layout(LayoutRef::parse(input)?));
        }
        let bare = input.strip_prefix("docker://").unwrap_or(input);
        Ok(StoreRef::Registry(Reference::parse(bare)?))
    }

    /// Opens the store: a layout that must exist, or a repository handle (no request made).
    ///
    /// # Errors
    /// [`ociup_core::Error::InvalidLayout`] for a layout that is not one.
    pub fn open(&self, client: &Client) -> ociup_core::Result<AnyStore> {
        Ok(match self {
            StoreRef::Layout(l) => AnyStore::Layout(OciLayout::open(&l.dir)?),
            StoreRef::Registry(r) => AnyStore::Registry(client.repository(r)),
        })
    }

    /// Opens the store for writing: a layout is created when missing.
    ///
    /// # Errors
    /// As [`StoreRef::open`].
    pub fn open_for_writing(&self, client: &Client) -> ociup_core::Result<AnyStore> {
        Ok(match self {
            StoreRef::Layout(l) => AnyStore::Layout(OciLayout::open_or_create(&l.dir)?),
            StoreRef::Registry(r) => AnyStore::Registry(client.repository(r)),
        })
    }

    /// The same reference with a relative layout directory made absolute against `base` (which
    /// is made absolute against the working directory first), `.` and `..` resolved as text. A
    /// registry reference is returned as it is.
    ///
    /// # Errors
    /// [`ociup_core::Error::Io`] when the working directory cannot be read.
    pub fn absolute(&self, base: &Path) -> ociup_core::Result<StoreRef> {
        Ok(match self {
            StoreRef::Layout(l) if l.dir.is_relative() => {
                let joined = std::path::absolute(base.join(&l.dir)).map_err(|e| {
                    ociup_core::Error::io("finding the working directory".to_owned(), e)
                })?;
                StoreRef::Layout(LayoutRef {
                    dir: lexically_clean(&joined),
                    image: l.image.clone(),
                })
            }
            other => other.clone(),
        })
    }

    /// The image the reference names in its store, when it names one.
    pub fn image(&self) -> Option<ManifestRef> {
        match self {
            StoreRef::Layout(l) => l.image.clone(),
            StoreRef::Registry(r) => Some(r.manifest_ref()),
        }
    }

    /// The tag, if the reference has one (and no digest).
    pub fn tag(&self) -> Option<&str> {
        match self {
            StoreRef::Layout(l) => l.tag(),
            StoreRef::Registry(r) if r.digest().is_none() => r.tag(),
            StoreRef::Registry(_) => None,
        }
    }
}

impl fmt::Display for StoreRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreRef::Layout(l) => write!(f, "{l}"),
            StoreRef::Registry(r) => write!(f, "docker://{r}"),
        }
    }
}

/// A reference as it should be recorded: an `oci:` reference with a relative directory made
/// absolute against `base` (see [`StoreRef::absolute`]); any other reference unchanged, as typed.
///
/// # Errors
/// The reference does not parse, or the working directory cannot be read.
pub fn absolute_reference(input: &str, base: &Path) -> ociup_core::Result<String> {
    match StoreRef::parse(input)? {
        r @ StoreRef::Layout(_) => Ok(r.absolute(base)?.to_string()),
        StoreRef::Registry(_) => Ok(input.to_owned()),
    }
}

/// `a/./b/../c` as `a/c`, without looking at the file system.
fn lexically_clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// A layout or a registry repository, chosen at run time.
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// An OCI image layout.
    Layout(OciLayout),
    /// A registry repository.
    Registry(Repository),
}

impl AnyStore {
    /// The image a reference without tag or digest means: the layout's only image.
    ///
    /// # Errors
    /// [`ociup_core::Error::InvalidReference`] when the store cannot tell.
    pub fn default_image(&self) -> ociup_core::Result<ManifestRef> {
        match self {
            AnyStore::Layout(l) => l.sole_image(),
            AnyStore::Registry(_) => Ok(ManifestRef::Tag("latest".into())),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Layout($s) => $e,
            AnyStore::Registry($s) => $e,
        }
    };
}

impl Store for AnyStore {
    fn location(&self) -> String {
        delegate!(self, s => s.location())
    }

    async fn blob_size(&self, digest: &Digest) -> ociup_core::Result<Option<u64>> {
        delegate!(self, s => s.blob_size(digest).await)
    }

    async fn get_blob(&self, digest: &Digest, size: u64) -> ociup_core::Result<BlobReader> {
        delegate!(self, s => s.get_blob(digest, size).await)
    }

    async fn put_blob<R: AsyncRead + Send + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        data: R,
    ) -> ociup_core::Result<()> {
        delegate!(self, s => s.put_blob(digest, size, data).await)
    }

    async fn read_blob_raw(&self, digest: &Digest, size: u64) -> ociup_core::Result<BlobReader> {
        delegate!(self, s => s.read_blob_raw(digest, size).await)
    }

    async fn put_new_blob<R: AsyncRead + Send + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        data: R,
    ) -> ociup_core::Result<()> {
        delegate!(self, s => s.put_new_blob(digest, size, data).await)
    }

    async fn get_manifest(&self, reference: &ManifestRef) -> ociup_core::Result<RawDocument> {
        delegate!(self, s => s.get_manifest(reference).await)
    }

    async fn put_manifest(
        &self,
        document: &RawDocument,
        tag: Option<&str>,
    ) -> ociup_core::Result<()> {
        delegate!(self, s => s.put_manifest(document, tag).await)
    }

    async fn probe_manifest(&self, document: &RawDocument) -> ociup_core::Result<Probe> {
        delegate!(self, s => s.probe_manifest(document).await)
    }

    async fn resolve_tag(&self, tag: &str) -> ociup_core::Result<Descriptor> {
        delegate!(self, s => s.resolve_tag(tag).await)
    }

    async fn list_tags(&self) -> ociup_core::Result<Vec<String>> {
        delegate!(self, s => s.list_tags().await)
    }

    async fn has_manifest(&self, digest: &Digest) -> ociup_core::Result<bool> {
        delegate!(self, s => s.has_manifest(digest).await)
    }

    async fn delete_manifest(&self, digest: &Digest) -> ociup_core::Result<()> {
        delegate!(self, s => Store::delete_manifest(s, digest).await)
    }

    fn mount_source(&self) -> Option<MountSource> {
        delegate!(self, s => s.mount_source())
    }

    fn rejects_missing_blobs(&self) -> bool {
        delegate!(self, s => s.rejects_missing_blobs())
    }

    fn known_blobs(&self, digests: &[Digest]) -> Option<Vec<bool>> {
        delegate!(self, s => s.known_blobs(digests))
    }

    fn manifest_implies_blobs(&self) -> bool {
        delegate!(self, s => s.manifest_implies_blobs())
    }

    async fn mount_blob(&self, digest: &Digest, source: &MountSource) -> ociup_core::Result<bool> {
        delegate!(self, s => s.mount_blob(digest, source).await)
    }

    async fn open_upload(&self) -> ociup_core::Result<Option<OpenUpload>> {
        delegate!(self, s => s.open_upload().await)
    }

    async fn put_blob_into<R: AsyncRead + Send + Unpin>(
        &self,
        upload: OpenUpload,
        digest: &Digest,
        size: u64,
        data: R,
    ) -> ociup_core::Result<()> {
        delegate!(self, s => s.put_blob_into(upload, digest, size, data).await)
    }

    async fn cancel_upload(&self, upload: OpenUpload) -> ociup_core::Result<()> {
        delegate!(self, s => s.cancel_upload(upload).await)
    }
}

/// Opens the stores references name, for managed images: layouts and registry repositories
/// through one [`Client`].
#[derive(Clone, Debug)]
pub struct Opener {
    client: Client,
}

impl Opener {
    /// An opener using `client` for registries.
    pub fn new(client: Client) -> Self {
        Opener { client }
    }

    /// Opens the store `reference` names (a layout is created when missing and `write` is
    /// set), and the image it names in it, if any. The same as the [`Stores`] method, callable
    /// without importing that trait.
    ///
    /// [`Stores`]: ociup_core::managed::manager::Stores
    ///
    /// # Errors
    /// The reference does not parse, or the layout cannot be opened.
    pub fn open(
        &self,
        reference: &str,
        write: bool,
    ) -> ociup_core::Result<(AnyStore, Option<ManifestRef>)> {
        let r = StoreRef::parse(reference)?;
        let store = if write {
            r.open_for_writing(&self.client)?
        } else {
            r.open(&self.client)?
        };
        Ok((store, r.image()))
    }

    /// The digest-pinned reference of `digest` in `target`: `docker://host/name@digest`, or
    /// `oci:<absolute dir>@digest`.
    ///
    /// # Errors
    /// The reference does not parse, or the working directory cannot be read.
    pub fn pinned(&self, target: &str, digest: &Digest) -> ociup_core::Result<String> {
        Ok(match StoreRef::parse(target)?.absolute(Path::new("."))? {
            StoreRef::Layout(l) => format!("oci:{}@{digest}", l.dir.display()),
            StoreRef::Registry(r) => {
                format!("docker://{}/{}@{digest}", r.registry(), r.repository())
            }
        })
    }
}

impl ociup_core::managed::manager::Stores for Opener {
    type Store = AnyStore;

    fn open(
        &self,
        reference: &str,
        write: bool,
    ) -> ociup_core::Result<(AnyStore, Option<ManifestRef>)> {
        Opener::open(self, reference, write)
    }

    fn pinned(&self, target: &str, digest: &Digest) -> ociup_core::Result<String> {
        Opener::pinned(self, target, digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Opener::open` and `pinned` need no trait import (none is in scope in this module).
    #[test]
    fn an_opener_is_used_without_importing_a_trait() {
        let t = tempfile::tempdir().unwrap();
        let opener = Opener::new(Client::new(crate::ClientOptions::default()).unwrap());
        let dir = t.path().join("l");
        let (store, image) = opener
            .open(&format!("oci:{}:v1", dir.display()), true)
            .unwrap();
        assert!(matches!(store, AnyStore::Layout(_)));
        assert_eq!(image, Some(ManifestRef::Tag("v1".into())));
        let d = Digest::sha256(b"x");
        assert_eq!(
            opener.pinned("registry.example/a/b:1", &d).unwrap(),
            format!("docker://registry.example/a/b@{d}")
        );
    }

    #[test]
    fn relative_layouts_become_absolute_and_registries_stay_as_typed() {
        let base = Path::new("/work/recipes");
        assert_eq!(
            absolute_reference("oci:images", base).unwrap(),
            "oci:/work/recipes/images"
        );
        assert_eq!(
            absolute_reference("oci:./out/../images:v1", base).unwrap(),
            "oci:/work/recipes/images:v1"
        );
        assert_eq!(
            absolute_reference("oci:/srv/images", base).unwrap(),
            "oci:/srv/images"
        );
        assert_eq!(
            absolute_reference("docker://reg.example/a/b:1", base).unwrap(),
            "docker://reg.example/a/b:1"
        );
        assert_eq!(absolute_reference("alpine", base).unwrap(), "alpine");
        // Against the working directory.
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            absolute_reference("oci:x", Path::new(".")).unwrap(),
            format!("oci:{}", here.join("x").display())
        );
    }
}

//! The media types ociup reads and writes, and the two families they come in.

use crate::error::{Error, Result};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_INDEX: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer (rare, but Docker's own spec names it).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker foreign (non-distributable) gzip layer.
pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Which family of media types a document belongs to. One manifest never mixes the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `application/vnd.oci.*`.
    Oci,
    /// `application/vnd.docker.*` (schema2).
    Docker,
}

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Compression {
    /// gzip (RFC 1952), the default: every runtime reads it.
    #[default]
    Gzip,
    /// zstd (RFC 8878).
    Zstd,
    /// No compression.
    None,
}

impl Compression {
    /// The layer media type for this compression in `family`.
    ///
    /// # Errors
    /// [`Error::UnsupportedMediaType`] for zstd in the Docker family, which has no zstd layer type.
    pub fn layer_media_type(self, family: Family) -> Result<&'static str> {
        Ok(match (family, self) {
            (Family::Oci, Compression::Gzip) => OCI_LAYER_GZIP,
            (Family::Oci, Compression::Zstd) => OCI_LAYER_ZSTD,
            (Family::Oci, Compression::None) => OCI_LAYER_TAR,
            (Family::Docker, Compression::Gzip) => DOCKER_LAYER_GZIP,
            (Family::Docker, Compression::None) => DOCKER_LAYER_TAR,
            (Family::Docker, Compression::Zstd) => {
                return Err(Error::UnsupportedMediaType {
                    media_type: OCI_LAYER_ZSTD.into(),
                    context: "a Docker schema2 image (Docker media types have no zstd layer; \
                              use gzip or convert the image to OCI)"
                        .into(),
                });
            }
        })
    }

    /// The compression of a layer media type, if it is a layer type ociup knows.
    pub fn of_layer(media_type: &str) -> Option<Compression> {
        match media_type {
            OCI_LAYER_GZIP
            | DOCKER_LAYER_GZIP
            | DOCKER_LAYER_FOREIGN_GZIP
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => {
                Some(Compression::Gzip)
            }
            OCI_LAYER_ZSTD | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            OCI_LAYER_TAR
            | DOCKER_LAYER_TAR
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
            _ => None,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "none" => Ok(Compression::None),
            _ => Err(Error::InvalidChange {
                reason: format!("unknown compression {s:?} (gzip, zstd or none)"),
            }),
        }
    }
}

/// What kind of document a manifest-like media type names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentKind {
    /// An image manifest.
    Manifest,
    /// An index (manifest list).
    Index,
}

/// Classifies a manifest or index media type.
///
/// # Errors
/// [`Error::UnsupportedMediaType`] for anything else (schema1, unknown vendor types).
pub fn document_kind(media_type: &str) -> Result<(DocumentKind, Family)> {
    match media_type {
        OCI_MANIFEST => Ok((DocumentKind::Manifest, Family::Oci)),
        OCI_INDEX => Ok((DocumentKind::Index, Family::Oci)),
        DOCKER_MANIFEST => Ok((DocumentKind::Manifest, Family::Docker)),
        DOCKER_INDEX => Ok((DocumentKind::Index, Family::Docker)),
        other => Err(Error::UnsupportedMediaType {
            media_type: other.to_owned(),
            context: "a manifest (OCI or Docker schema2 manifests and indexes are supported)"
                .into(),
        }),
    }
}

/// The family of a config media type, or `None` for artifact configs.
pub fn config_family(media_type: &str) -> Option<Family> {
    match media_type {
        OCI_CONFIG => Some(Family::Oci),
        DOCKER_CONFIG => Some(Family::Docker),
        _ => None,
    }
}

/// The manifest, config media types of a family.
pub fn manifest_and_config(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::Oci => (OCI_MANIFEST, OCI_CONFIG),
        Family::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
    }
}

//! The one error type of `ociup-run`.

use std::path::PathBuf;

use ociup_core::Digest;

/// What can go wrong while unpacking.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target directory exists and holds something.
    #[error("{} is not empty: unpack writes only into an absent or empty directory", dir.display())]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// A directory that must be private to this user (the layer cache, the bundles, the
    /// runtime's state) is not: someone else owns it, or it is not a directory.
    #[error("{}: {reason}; refusing to use it", dir.display())]
    NotPrivate {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store failed, or a blob did not match its digest or size.
    #[error("{what}")]
    Store {
        /// What was being read.
        what: String,
        /// The cause.
        #[source]
        source: ociup_core::Error,
    },
    /// A layer is not a tar this unpacker can read.
    #[error("layer {index} ({digest}) is not a readable tar")]
    Layer {
        /// The layer's position, from 1.
        index: usize,
        /// The layer's blob digest.
        digest: Digest,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// One entry of a layer cannot be applied.
    #[error("layer {index} ({digest}): entry {entry:?}: {reason}")]
    Entry {
        /// The layer's position, from 1.
        index: usize,
        /// The layer's blob digest.
        digest: Digest,
        /// The entry's name as the tar holds it.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A layer's uncompressed bytes do not hash to the diff_id its config names.
    #[error("layer {index} ({digest}) unpacks to {actual}, not to its diff_id {expected}")]
    DiffIdMismatch {
        /// The layer's position, from 1.
        index: usize,
        /// The layer's blob digest.
        digest: Digest,
        /// The diff_id in the config.
        expected: Digest,
        /// The digest of the uncompressed tar.
        actual: Digest,
    },
    /// The image cannot be unpacked as described (unknown layer media type, layer counts).
    #[error("{reason}")]
    InvalidImage {
        /// Why.
        reason: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

//! The one error type of `ociup-core`.

use std::path::PathBuf;

use crate::digest::Digest;

/// Everything that can go wrong in `ociup-core`. Messages are lowercase and name the thing that was
/// wrong (a path, a digest, a media type); the cause, when there is one, is in `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string that should be a digest is not one ociup accepts.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Content did not hash to the digest it was announced with.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was being checked (a blob, a manifest, a file).
        what: String,
        /// The digest announced.
        expected: Digest,
        /// The digest of the bytes actually read.
        actual: Digest,
    },
    /// Content did not have the size it was announced with.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob being read.
        digest: Digest,
        /// The size announced in its descriptor.
        expected: u64,
        /// The number of bytes read (at least this many when the blob is too long).
        actual: u64,
    },
    /// A media type ociup does not handle where it appears.
    #[error("unsupported media type {media_type:?} for {context}")]
    UnsupportedMediaType {
        /// The media type found.
        media_type: String,
        /// Where it was found or what was expected.
        context: String,
    },
    /// A JSON document that does not parse as what it claims to be.
    #[error("malformed {what}")]
    MalformedDocument {
        /// Which document (`index.json`, `manifest sha256:...`).
        what: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A document that parses but breaks a rule of the image spec.
    #[error("invalid {what}: {reason}")]
    InvalidDocument {
        /// Which document.
        what: String,
        /// The rule broken.
        reason: String,
    },
    /// A blob the store does not have.
    #[error("blob {digest} not found in {store}")]
    BlobNotFound {
        /// The digest asked for.
        digest: Digest,
        /// The store asked.
        store: String,
    },
    /// A manifest the store refused because it lacks blobs the manifest references.
    #[error("{store} lacks {} the manifest references: {}", if digests.len() == 1 { "a blob" } else { "blobs" }, join_digests(.digests))]
    MissingBlobs {
        /// The store.
        store: String,
        /// The blobs it named (empty when it did not say which).
        digests: Vec<Digest>,
        /// The store's own error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// A tag the store does not have.
    #[error("tag {tag:?} not found in {store}")]
    TagNotFound {
        /// The tag asked for.
        tag: String,
        /// The store asked.
        store: String,
    },
    /// A directory that is not a usable OCI image layout.
    #[error("invalid OCI layout at {}: {reason}", path.display())]
    InvalidLayout {
        /// The layout directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A store or image reference that does not parse.
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file or tree given to the layer builder that cannot go into a layer as it is.
    #[error("cannot put {} into a layer: {reason}", path.display())]
    LayerSource {
        /// The offending file on disk.
        path: PathBuf,
        /// Why (socket, symlink out of the tree, ...).
        reason: String,
    },
    /// A path inside a layer that is invalid or given twice.
    #[error("invalid layer path {path:?}: {reason}")]
    LayerPath {
        /// The path inside the image.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A requested change that the image cannot take.
    #[error("invalid change: {reason}")]
    InvalidChange {
        /// What is wrong.
        reason: String,
    },
    /// A failure inside a store backend (a registry), kept whole: downcast the source to the
    /// backend's own error type (`ociup_registry::Error`) for status codes and retryability.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// An I/O failure, with what ociup was doing when it happened.
    #[error("{context}")]
    Io {
        /// What was being done (`writing /x/index.json`).
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

fn join_digests(digests: &[Digest]) -> String {
    if digests.is_empty() {
        return "(it did not say which)".into();
    }
    const SHOWN: usize = 10;
    let mut text = digests
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if digests.len() > SHOWN {
        text.push_str(&format!(" and {} more", digests.len() - SHOWN));
    }
    text
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] with the given context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Turns an `io::Error` that carries an ociup error (as the verifying readers produce) back
    /// into that error; any other `io::Error` becomes [`Error::Io`] with the context.
    pub fn from_io(context: impl Into<String>, err: std::io::Error) -> Self {
        match err.downcast::<Error>() {
            Ok(inner) => inner,
            Err(err) => Error::io(context, err),
        }
    }

    /// Wraps this error in an `io::Error` of kind `InvalidData`, so it can travel through
    /// `Read`/`AsyncRead` and be recovered by [`Error::from_io`].
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_blobs_name_ten_then_count_the_rest() {
        let digests: Vec<Digest> = (0..1000u32)
            .map(|n| Digest::sha256(&n.to_le_bytes()))
            .collect();
        let err = Error::MissingBlobs {
            store: "r/x".into(),
            digests: digests.clone(),
            source: None,
        };
        let text = err.to_string();
        assert!(text.contains(&digests[9].to_string()), "{text}");
        assert!(!text.contains(&digests[10].to_string()), "{text}");
        assert!(text.ends_with(" and 990 more"), "{text}");
        assert!(text.len() < 1000, "{} bytes", text.len());
        let few = Error::MissingBlobs {
            store: "r/x".into(),
            digests: digests[..2].to_vec(),
            source: None,
        };
        assert!(!few.to_string().contains("more"), "{few}");
    }
}

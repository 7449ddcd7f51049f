//! `GET /v1/nicks/{nick}/blobs/{digest}`: the manifests, configs and layers of a nick's
//! recorded versions, read from its target with the service's credentials, for a requester
//! that runs the image where it is (`ociup run NICK --server`) and holds no registry rights.
//!
//! Only what one of the nick's versions reaches is served: the version's manifest or index,
//! an index's platform manifests, and each manifest's config and layers. Anything else is
//! 404 `not_found`, however it is spelled, so the route cannot be used to read the target
//! (or anything else the service may read) beyond the nick's images. Blobs are streamed
//! (never held whole in memory) through the store's digest check, and the last byte is held
//! back until the digest is confirmed: a blob that does not match is cut short, never relayed
//! whole.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ociup_core::Digest;
use ociup_core::document::{Document, Manifest, RawDocument};
use ociup_core::managed::catalog::{ImageDocuments, VersionRecord};
use ociup_core::store::{BlobReader, ManifestRef, Store};
use ociup_registry::{AnyStore, Stores};
use tokio::io::{AsyncRead, ReadBuf};

use crate::Service;
use crate::api::{Caller, allowed_entry, nick_param};
use crate::error::{ApiError, Code};
use crate::tokens::Role;

/// What a digest is to a nick's versions.
enum Reached {
    /// A manifest or index (a version's, or an index version's platform manifest).
    Document,
    /// A config or layer, of this size.
    Blob(u64),
}

/// The route: a manifest (its bytes, as the target holds it, with its media type) or a blob
/// (streamed) that one of the nick's recorded versions reaches; 404 `not_found` otherwise.
pub(crate) async fn blob(
    State(s): State<Service>,
    caller: Caller,
    Path((nick, digest)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let actor = caller.require(Role::Requester, "read images")?.to_owned();
    nick_param(&nick)?;
    let wanted: Digest = digest.parse().map_err(|e: ociup_core::Error| {
        ApiError::new(Code::InvalidRequest, format!("the digest: {e}"))
    })?;
    let context = format!("reading {wanted} of {nick}");
    let m = s.manager(&actor)?;
    let entry = allowed_entry(&s, &m, &nick, &context).await?;
    let versions = m
        .history(&nick)
        .await
        .map_err(|e| ApiError::from_core(&context, e))?;
    // The target as every version of the nick is written to it, opened for reading within
    // the allowlist (the check above answered the clearer error).
    let (store, _) = s
        .inner
        .stores
        .open(&entry.recipe.target, false)
        .map_err(|e| ApiError::from_core(&context, e))?;
    match reach(&store, &versions, &wanted)
        .await
        .map_err(|e| ApiError::from_core(&context, e))?
    {
        Some(Reached::Document) => {
            let doc = store
                .get_manifest(&ManifestRef::Digest(wanted.clone()))
                .await
                .map_err(|e| ApiError::from_core(&context, e))?;
            Ok(document(doc))
        }
        Some(Reached::Blob(size)) => {
            let reader = store
                .get_blob(&wanted, size)
                .await
                .map_err(|e| ApiError::from_core(&context, e))?;
            Ok(streamed(&wanted, size, reader))
        }
        None => Err(ApiError::new(
            Code::NotFound,
            format!(
                "{wanted} is not part of any recorded version of {nick} (only their manifests, \
                 configs and layers are served)"
            ),
        )),
    }
}

/// A manifest or index as answered: its exact bytes, its media type (the store's, else the
/// document's own), its digest.
fn document(doc: RawDocument) -> Response {
    let media_type = if doc.media_type().is_empty() {
        Document::parse(doc.clone())
            .map(|d| d.raw().media_type().to_owned())
            .unwrap_or_else(|_| "application/vnd.oci.image.manifest.v1+json".to_owned())
    } else {
        doc.media_type().to_owned()
    };
    let mut resp = (StatusCode::OK, doc.bytes().to_vec()).into_response();
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&media_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&doc.digest().to_string()) {
        headers.insert("docker-content-digest", v);
    }
    resp
}

/// A blob streamed as it is read, its last byte held back until the digest is confirmed.
fn streamed(digest: &Digest, size: u64, reader: BlobReader) -> Response {
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(HoldLast::new(
        reader, size,
    )));
    let mut resp = (StatusCode::OK, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert("docker-content-digest", v);
    }
    resp
}

/// What `wanted` is to the nick's `versions` (newest first), or `None` when none reaches it.
/// Manifest digests are matched from the records alone; configs and layers from the manifests
/// the records hold (checked against their digests), read from the target only for records
/// without them (older ociup) and for indexes without platform records.
async fn reach(
    store: &AnyStore,
    versions: &[VersionRecord],
    wanted: &Digest,
) -> ociup_core::Result<Option<Reached>> {
    let wanted_text = wanted.to_string();
    for v in versions {
        if v.digest == wanted_text || v.platforms.iter().any(|p| p.digest == wanted_text) {
            return Ok(Some(Reached::Document));
        }
    }
    for v in versions {
        let images: Vec<(&str, Option<&ImageDocuments>)> = if v.platforms.is_empty() {
            vec![(v.digest.as_str(), v.documents.as_ref())]
        } else {
            v.platforms
                .iter()
                .map(|p| (p.digest.as_str(), p.documents.as_ref()))
                .collect()
        };
        for (digest, documents) in images {
            for manifest in manifests(store, digest, documents).await? {
                if let Some(found) = in_manifest(&manifest, &wanted_text) {
                    return Ok(Some(found));
                }
            }
        }
    }
    Ok(None)
}

/// The image manifests of one version's image: from the record's documents when it holds
/// them, else read from the target (an index's children with it, which then also count as
/// documents the version reaches, see [`reach`]: those are only looked at here for configs
/// and layers).
async fn manifests(
    store: &AnyStore,
    digest: &str,
    documents: Option<&ImageDocuments>,
) -> ociup_core::Result<Vec<Manifest>> {
    let digest: Digest = digest.parse()?;
    if let Some(docs) = documents {
        return Ok(vec![docs.load(&digest)?.0]);
    }
    match Document::parse(store.get_manifest(&ManifestRef::Digest(digest)).await?)? {
        Document::Manifest(m) => Ok(vec![m]),
        Document::Index(index) => {
            let mut out = Vec::new();
            for child in index.parsed().manifests() {
                let child = Digest::try_from(child.digest())?;
                if let Document::Manifest(m) =
                    Document::parse(store.get_manifest(&ManifestRef::Digest(child)).await?)?
                {
                    out.push(m);
                }
            }
            Ok(out)
        }
    }
}

/// `wanted` as the config or a layer of `manifest`.
fn in_manifest(manifest: &Manifest, wanted: &str) -> Option<Reached> {
    let parsed = manifest.parsed();
    std::iter::once(parsed.config())
        .chain(parsed.layers())
        .find(|d| d.digest().to_string() == wanted)
        .map(|d| Reached::Blob(d.size()))
}

/// Passes a blob reader's bytes on, except the last, which is handed out only once the reader
/// has said the blob is whole and matches its digest (a store's reader checks at its end). A
/// reader that fails there fails this one before the last byte: whoever reads it never gets
/// the whole of a blob that does not match.
struct HoldLast {
    inner: BlobReader,
    /// Bytes still to come before the last one.
    before_last: u64,
    /// The last byte, read and not yet handed out.
    last: Option<u8>,
    /// The reader ended, checked.
    checked: bool,
}

impl HoldLast {
    fn new(inner: BlobReader, size: u64) -> HoldLast {
        HoldLast {
            inner,
            before_last: size.saturating_sub(1),
            last: None,
            checked: false,
        }
    }
}

impl AsyncRead for HoldLast {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.checked {
                if let Some(b) = this.last.take()
                    && buf.remaining() > 0
                {
                    buf.put_slice(&[b]);
                }
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            match this.inner.as_mut().poll_read(cx, buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let got = buf.filled().len() - before;
            if got == 0 {
                // The end, and the reader found the blob whole and matching.
                this.checked = true;
                continue;
            }
            if this.last.is_some() {
                // More after what should have been the last byte (a store's reader fails on
                // that itself): nothing more is handed out.
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the blob is longer than its descriptor says",
                )));
            }
            let passed = (got as u64).min(this.before_last);
            this.before_last -= passed;
            let passed = usize::try_from(passed).unwrap_or(got);
            if passed < got {
                // The rest of this read reaches the end: keep its first byte past `passed` as
                // the last one (any after it are extra, and the reader will fail on them).
                this.last = Some(buf.filled()[before + passed]);
                buf.set_filled(before + passed);
            }
            if passed > 0 {
                return Poll::Ready(Ok(()));
            }
            // Nothing to hand out yet (only the last byte came): ask the reader for its end.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_all(data: &'static [u8], digest: &Digest, size: u64) -> (Vec<u8>, bool) {
        let inner: BlobReader = Box::pin(ociup_core::verify::AsyncVerifyingReader::new(
            data,
            digest.clone(),
            size,
        ));
        let mut out = Vec::new();
        let ok = HoldLast::new(inner, size)
            .read_to_end(&mut out)
            .await
            .is_ok();
        (out, ok)
    }

    #[tokio::test]
    async fn a_matching_blob_is_passed_whole_and_a_bad_one_never_is() {
        let good = b"hello, layer";
        let d = Digest::sha256(good);
        assert_eq!(
            read_all(good, &d, good.len() as u64).await,
            (good.to_vec(), true)
        );
        // Same size, other bytes: all but the last byte, then the failure.
        let (out, ok) = read_all(b"jello, layer", &d, good.len() as u64).await;
        assert!(!ok);
        assert!(out.len() < good.len(), "{out:?}");
        // Longer and shorter than announced.
        let (out, ok) = read_all(b"hello, layer!", &d, good.len() as u64).await;
        assert!(!ok && out.len() < good.len(), "{out:?}");
        let (out, ok) = read_all(b"hello", &d, good.len() as u64).await;
        assert!(!ok && out.len() < good.len(), "{out:?}");
        // One byte, and none.
        let one = Digest::sha256(b"x");
        assert_eq!(read_all(b"x", &one, 1).await, (b"x".to_vec(), true));
        let (out, ok) = read_all(b"y", &one, 1).await;
        assert!(!ok && out.is_empty());
        let empty = Digest::sha256(b"");
        assert_eq!(read_all(b"", &empty, 0).await, (Vec::new(), true));
    }
}

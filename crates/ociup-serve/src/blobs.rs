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

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ociup_core::Digest;
use ociup_core::document::{Document, Manifest, RawDocument};
use ociup_core::managed::catalog::VersionRecord;
use ociup_core::store::{BlobReader, ManifestRef, Store};
use ociup_registry::{AnyStore, Stores};
use tokio::io::{AsyncRead, ReadBuf};

use crate::Service;
use crate::api::{Caller, allowed_entry, nick_param};
use crate::error::{ApiError, Code};
use crate::tokens::Role;

/// The chunks a blob is streamed in.
const CHUNK: usize = 64 * 1024;

/// How many nicks' walks [`ReachCache`] keeps (the least recently asked go first).
pub(crate) const REACH_CACHE_NICKS: usize = 256;

/// What a digest is to a nick's versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reached {
    /// A manifest or index (a version's, or an index version's platform manifest).
    Document,
    /// A config or layer, of this size.
    Blob(u64),
}

/// The route: a manifest (its bytes, as the target holds it, with its media type) or a blob
/// (streamed) that one of the nick's recorded versions reaches; 404 `not_found` otherwise.
/// HEAD on a blob answers from its descriptor, without opening it.
pub(crate) async fn blob(
    State(s): State<Service>,
    method: Method,
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
    // The target as every version of the nick is written to it, opened for reading within
    // the allowlist (the check above answered the clearer error).
    let (store, _) = s
        .inner
        .stores
        .open(&entry.recipe.target, false)
        .map_err(|e| ApiError::from_core(&context, e))?;
    let reached = match &entry.version {
        Some((head, head_blob)) => {
            let source = Live {
                catalog: m.catalog(),
                store: &store,
            };
            s.inner
                .reach
                .reach(&source, &head_blob.digest.to_string(), head, &wanted)
                .await
                .map_err(|e| ApiError::from_core(&context, e))?
        }
        None => None,
    };
    match reached {
        Some(Reached::Document) => {
            let doc = store
                .get_manifest(&ManifestRef::Digest(wanted.clone()))
                .await
                .map_err(|e| ApiError::from_core(&context, e))?;
            Ok(document(doc))
        }
        Some(Reached::Blob(size)) if method == Method::HEAD => Ok(blob_head(&wanted, size)),
        Some(Reached::Blob(size)) => {
            let reader = store
                .get_blob(&wanted, size)
                .await
                .map_err(|e| ApiError::from_core(&context, e))?;
            Ok(streamed(&nick, &wanted, size, reader))
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

/// The headers of a blob's answer.
fn blob_headers(resp: &mut Response, digest: &Digest, size: u64) {
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert("docker-content-digest", v);
    }
}

/// HEAD on a blob: its size from the descriptor that reaches it; the blob is not opened.
fn blob_head(digest: &Digest, size: u64) -> Response {
    let mut resp = StatusCode::OK.into_response();
    blob_headers(&mut resp, digest, size);
    resp
}

/// A blob streamed as it is read in chunks of [`CHUNK`], its last byte held back until the
/// digest is confirmed. A stream cut short (the blob does not match, or the target failed) is
/// logged as a warning.
fn streamed(nick: &str, digest: &Digest, size: u64, reader: BlobReader) -> Response {
    let reader = Logged {
        inner: HoldLast::new(reader, size),
        what: format!("{digest} of {nick}"),
    };
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, CHUNK);
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    blob_headers(&mut resp, digest, size);
    resp
}

/// Where a walk of a nick's history goes on from: the head record (given with the catalog
/// entry, so never read again) or an older one, read by its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cursor {
    Head,
    Record(String),
}

/// What the walk of one history has found so far. Version records never change, and the
/// head record's digest names the whole history behind it, so this stays true for as long as
/// that head is the nick's: another head is another key.
#[derive(Debug)]
struct Walk {
    /// The digests met so far (the newer versions'), and what they are.
    known: HashMap<String, Reached>,
    /// The next record to look at; `None` once the first version has been.
    next: Option<Cursor>,
    /// When it was last asked (for eviction).
    used: u64,
}

/// Per service: the walks of nicks' histories, by the digest of their head version record,
/// the [`REACH_CACHE_NICKS`] most recently asked kept. A digest a walk has met is answered
/// without a registry request; one it has not continues the walk from where it stopped (newest
/// first, up to the first version that reaches it).
#[derive(Debug)]
pub(crate) struct ReachCache {
    capacity: usize,
    walks: Mutex<(u64, HashMap<String, Walk>)>,
}

impl Default for ReachCache {
    fn default() -> Self {
        ReachCache::new(REACH_CACHE_NICKS)
    }
}

/// What the walk reads: version records from the catalog, manifests from the target.
trait Source {
    async fn record(&self, digest: &Digest) -> ociup_core::Result<VersionRecord>;
    async fn manifest(&self, digest: &Digest) -> ociup_core::Result<RawDocument>;
}

/// The service's catalog and the nick's target.
struct Live<'a, S> {
    catalog: &'a ociup_core::managed::catalog::Catalog<S>,
    store: &'a AnyStore,
}

impl<S: Store> Source for Live<'_, S> {
    async fn record(&self, digest: &Digest) -> ociup_core::Result<VersionRecord> {
        self.catalog.version(digest).await
    }
    async fn manifest(&self, digest: &Digest) -> ociup_core::Result<RawDocument> {
        self.store
            .get_manifest(&ManifestRef::Digest(digest.clone()))
            .await
    }
}

impl ReachCache {
    pub(crate) fn new(capacity: usize) -> ReachCache {
        ReachCache {
            capacity: capacity.max(1),
            walks: Mutex::new((0, HashMap::new())),
        }
    }

    /// What `wanted` is to the history whose head record (of digest `head_key`) is `head`, or
    /// `None` when no version reaches it.
    async fn reach(
        &self,
        source: &impl Source,
        head_key: &str,
        head: &VersionRecord,
        wanted: &Digest,
    ) -> ociup_core::Result<Option<Reached>> {
        let wanted = wanted.to_string();
        let start = {
            let mut guard = self.walks.lock().unwrap_or_else(|e| e.into_inner());
            let (tick, walks) = &mut *guard;
            *tick += 1;
            match walks.get_mut(head_key) {
                Some(w) => {
                    w.used = *tick;
                    if let Some(r) = w.known.get(&wanted) {
                        return Ok(Some(*r));
                    }
                    match &w.next {
                        None => return Ok(None),
                        Some(c) => c.clone(),
                    }
                }
                None => Cursor::Head,
            }
        };
        // Walked without the lock (it reads), newest first, up to the first version that
        // reaches `wanted`.
        let mut known = HashMap::new();
        let mut cursor = start.clone();
        let (found, next) = loop {
            let read;
            let v = match &cursor {
                Cursor::Head => head,
                Cursor::Record(d) => {
                    read = source.record(&d.parse()?).await?;
                    &read
                }
            };
            met(source, v, &mut known).await?;
            let next = v.previous.clone().map(Cursor::Record);
            if let Some(r) = known.get(&wanted) {
                break (Some(*r), next);
            }
            match next {
                Some(c) => cursor = c,
                None => break (None, None),
            }
        };
        let mut guard = self.walks.lock().unwrap_or_else(|e| e.into_inner());
        let (tick, walks) = &mut *guard;
        *tick += 1;
        let w = walks.entry(head_key.to_owned()).or_insert_with(|| Walk {
            known: HashMap::new(),
            next: Some(Cursor::Head),
            used: 0,
        });
        // Another request may have walked on meanwhile: what it met is true too, and where it
        // stopped is kept when it went further.
        if w.next.as_ref() == Some(&start) {
            w.next = next;
        }
        w.known.extend(known);
        w.used = *tick;
        while walks.len() > self.capacity {
            let Some(oldest) = walks
                .iter()
                .min_by_key(|(_, w)| w.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            walks.remove(&oldest);
        }
        Ok(found)
    }
}

/// Adds what version `v` reaches to `known`: its manifest or index and platform manifests
/// (from the record alone), each image manifest's config and layers (from the manifests the
/// record holds, checked against their digests; read from the target only for records
/// without them, older ociup, and for indexes without platform records).
async fn met(
    source: &impl Source,
    v: &VersionRecord,
    known: &mut HashMap<String, Reached>,
) -> ociup_core::Result<()> {
    known.insert(v.digest.clone(), Reached::Document);
    for p in &v.platforms {
        known.insert(p.digest.clone(), Reached::Document);
    }
    let mut manifests = Vec::new();
    if v.platforms.is_empty() {
        let digest: Digest = v.digest.parse()?;
        match &v.documents {
            Some(docs) => manifests.push(docs.load(&digest)?.0),
            None => read_manifests(source, &digest, known, &mut manifests).await?,
        }
    } else {
        for p in &v.platforms {
            let digest: Digest = p.digest.parse()?;
            match &p.documents {
                Some(docs) => manifests.push(docs.load(&digest)?.0),
                None => read_manifests(source, &digest, known, &mut manifests).await?,
            }
        }
    }
    for m in &manifests {
        let parsed = m.parsed();
        for d in std::iter::once(parsed.config()).chain(parsed.layers()) {
            known
                .entry(d.digest().to_string())
                .or_insert(Reached::Blob(d.size()));
        }
    }
    Ok(())
}

/// The image manifests of `digest` read from the target: itself, or an index's children
/// (which are then documents the version reaches too).
async fn read_manifests(
    source: &impl Source,
    digest: &Digest,
    known: &mut HashMap<String, Reached>,
    out: &mut Vec<Manifest>,
) -> ociup_core::Result<()> {
    match Document::parse(source.manifest(digest).await?)? {
        Document::Manifest(m) => out.push(m),
        Document::Index(index) => {
            for child in index.parsed().manifests() {
                let child = Digest::try_from(child.digest())?;
                known.insert(child.to_string(), Reached::Document);
                if let Document::Manifest(m) = Document::parse(source.manifest(&child).await?)? {
                    out.push(m);
                }
            }
        }
    }
    Ok(())
}

/// A reader whose failure is logged as a warning (the answer it feeds is then cut short).
struct Logged<R> {
    inner: R,
    what: String,
}

impl<R: AsyncRead + Unpin> AsyncRead for Logged<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = &polled {
            tracing::warn!(blob = %this.what, error = %e, "a blob's answer was cut short");
        }
        polled
    }
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

    /// A catalog and target in memory, counting what is read.
    #[derive(Default)]
    struct Fake {
        records: HashMap<String, VersionRecord>,
        manifests: HashMap<String, RawDocument>,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl Source for Fake {
        async fn record(&self, digest: &Digest) -> ociup_core::Result<VersionRecord> {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(self.records[&digest.to_string()].clone())
        }
        async fn manifest(&self, digest: &Digest) -> ociup_core::Result<RawDocument> {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(self.manifests[&digest.to_string()].clone())
        }
    }

    impl Fake {
        fn reads(&self) -> usize {
            self.reads.swap(0, std::sync::atomic::Ordering::Relaxed)
        }
    }

    fn blob_digest(name: &str) -> String {
        Digest::sha256(name.as_bytes()).to_string()
    }

    /// Versions 1..=n, each with a manifest of config cN, the shared layer `base` and its own
    /// layer lN (of size N), read from the target (records without documents). The head record
    /// and its digest.
    fn history(fake: &mut Fake, n: u64) -> (VersionRecord, String) {
        let mut previous: Option<String> = None;
        let mut head = None;
        for i in 1..=n {
            let desc = |name: &str, size: u64, mt: &str| serde_json::json!({"mediaType": mt, "digest": blob_digest(name), "size": size});
            let layer = "application/vnd.oci.image.layer.v1.tar+gzip";
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": desc(&format!("c{i}"), 100 + i, "application/vnd.oci.image.config.v1+json"),
                "layers": [desc("base", 1000, layer), desc(&format!("l{i}"), i, layer)],
            });
            let raw = RawDocument::new(
                serde_json::to_vec(&manifest).unwrap(),
                "application/vnd.oci.image.manifest.v1+json",
            );
            let digest = raw.digest().to_string();
            fake.manifests.insert(digest.clone(), raw);
            let record: VersionRecord = serde_json::from_value(serde_json::json!({
                "nick": "app", "number": i, "image": format!("r/app@{digest}"),
                "digest": digest, "base": "r/base", "base_digest": blob_digest("b"),
                "recipe": blob_digest("recipe"), "reason": "test", "time": "t", "actor": "a",
                "previous": previous, "build_manifest": null, "epoch": 0,
            }))
            .unwrap();
            let key = Digest::sha256(&serde_json::to_vec(&record).unwrap()).to_string();
            fake.records.insert(key.clone(), record.clone());
            previous = Some(key.clone());
            head = Some((record, key));
        }
        head.unwrap()
    }

    #[tokio::test]
    async fn reach_walks_newest_first_stops_at_the_first_match_and_remembers() {
        let mut fake = Fake::default();
        let (head, key) = history(&mut fake, 3);
        let cache = ReachCache::new(2);
        let ask = |name: &str| -> Digest { blob_digest(name).parse().unwrap() };
        // The head's own layer: its manifest read, no record (the entry holds the head).
        assert_eq!(
            cache.reach(&fake, &key, &head, &ask("l3")).await.unwrap(),
            Some(Reached::Blob(3))
        );
        assert_eq!(fake.reads(), 1);
        // Again, and the shared layer met on the way: nothing read.
        assert_eq!(
            cache.reach(&fake, &key, &head, &ask("l3")).await.unwrap(),
            Some(Reached::Blob(3))
        );
        assert_eq!(
            cache.reach(&fake, &key, &head, &ask("base")).await.unwrap(),
            Some(Reached::Blob(1000))
        );
        assert_eq!(fake.reads(), 0);
        // Version 2's config: one record and one manifest more, version 1 not read.
        assert_eq!(
            cache.reach(&fake, &key, &head, &ask("c2")).await.unwrap(),
            Some(Reached::Blob(102))
        );
        assert_eq!(fake.reads(), 2);
        // Version 1's manifest: from its record, the walk goes on from version 1.
        let v1 = fake
            .records
            .values()
            .find(|r| r.number == 1)
            .unwrap()
            .digest
            .clone();
        assert_eq!(
            cache
                .reach(&fake, &key, &head, &v1.parse().unwrap())
                .await
                .unwrap(),
            Some(Reached::Document)
        );
        assert_eq!(fake.reads(), 2);
        // The walk is complete: anything else is unknown without a read.
        assert_eq!(
            cache
                .reach(&fake, &key, &head, &ask("other"))
                .await
                .unwrap(),
            None
        );
        assert_eq!(fake.reads(), 0);
        // A fresh cache and an unknown digest: the whole history, once.
        let cache = ReachCache::new(1);
        assert_eq!(
            cache
                .reach(&fake, &key, &head, &ask("other"))
                .await
                .unwrap(),
            None
        );
        assert_eq!(fake.reads(), 2 + 3);
        assert_eq!(
            cache.reach(&fake, &key, &head, &ask("l1")).await.unwrap(),
            Some(Reached::Blob(1))
        );
        assert_eq!(fake.reads(), 0);
        // Another head (another nick) beyond the capacity evicts the least recently asked.
        let mut other = Fake::default();
        let (head2, key2) = history(&mut other, 1);
        fake.records.extend(other.records);
        fake.manifests.extend(other.manifests);
        assert!(
            cache
                .reach(&fake, &key2, &head2, &ask("l1"))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(fake.reads(), 1);
        assert!(
            cache
                .reach(&fake, &key, &head, &ask("l1"))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(fake.reads(), 2 + 3, "walked again after eviction");
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

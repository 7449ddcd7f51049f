//! One repository of a registry, as a [`Store`].

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, TryStreamExt};
use oci_spec::image::{Descriptor, MediaType};
use ociup_core::Digest;
use ociup_core::document::RawDocument;
use ociup_core::media_type;
use ociup_core::store::{
    BlobReader, MAX_DOCUMENT_SIZE, ManifestRef, MountSource, OpenUpload, Probe, Store,
    check_document_size,
};
use ociup_core::verify::AsyncVerifyingReader;
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, LINK, LOCATION, RANGE,
};
use reqwest::{Method, Response};
use tokio::io::{AsyncRead, AsyncReadExt};
use url::Url;

use crate::body::{Watchdog, Watched, read_capped};
use crate::client::{Client, Request, Target};
use crate::error::{Error, Result, display_url, excerpt};
use crate::reference::Reference;

/// Every manifest type ociup reads.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

const DIGEST_HEADER: &str = "docker-content-digest";

/// A repository (`registry/name`) reached through a [`Client`].
#[derive(Clone, Debug)]
pub struct Repository {
    client: Client,
    registry: String,
    api_host: String,
    name: String,
}

impl Repository {
    pub(crate) fn new(client: Client, reference: &Reference) -> Self {
        Repository {
            client,
            registry: reference.registry().to_owned(),
            api_host: reference.api_host().to_owned(),
            name: reference.repository().to_owned(),
        }
    }

    /// The registry (`host[:port]`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client this handle uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn pull(&self) -> Vec<String> {
        vec![format!("repository:{}:pull", self.name)]
    }

    fn push(&self) -> Vec<String> {
        vec![format!("repository:{}:pull,push", self.name)]
    }

    fn path(&self, rest: &str) -> Target {
        Target::Path(format!("/v2/{}/{rest}", self.name))
    }

    async fn send(&self, req: Request, ok: &[u16]) -> Result<Response> {
        self.client.send_expect(&self.api_host, &req, ok).await
    }

    /// HEAD of a manifest: its descriptor, or `None` when the registry does not have it. Falls
    /// back to GET when the registry leaves out `Docker-Content-Digest`.
    ///
    /// # Errors
    /// Registry and transport errors other than 404.
    pub async fn head_manifest(&self, reference: &ManifestRef) -> Result<Option<Descriptor>> {
        let req = Request::new(
            Method::HEAD,
            self.path(&format!("manifests/{}", ref_str(reference))),
            self.pull(),
        )
        .header(ACCEPT, ACCEPT_MANIFESTS);
        let resp = self.client.send(&self.api_host, &req).await?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self
                .client
                .http_error(&self.api_host, &Method::HEAD, resp)
                .await);
        }
        let media_type = header_str(resp.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
        let size =
            header_str(resp.headers(), CONTENT_LENGTH.as_str()).and_then(|s| s.parse::<u64>().ok());
        let digest =
            header_str(resp.headers(), DIGEST_HEADER).and_then(|d| d.parse::<Digest>().ok());
        match (digest, size) {
            (Some(d), Some(size)) if !media_type.is_empty() => {
                if let ManifestRef::Digest(want) = reference
                    && want != &d
                {
                    return Err(Error::Protocol {
                        url: display_url(resp.url()),
                        reason: format!("asked for {want}, the registry answered for {d}"),
                    });
                }
                Ok(Some(Descriptor::new(
                    MediaType::from(media_type.as_str()),
                    size,
                    d.to_oci(),
                )))
            }
            _ => {
                let raw = self.fetch_manifest(reference).await?;
                Ok(Some(raw.descriptor()))
            }
        }
    }

    async fn fetch_manifest(&self, reference: &ManifestRef) -> Result<RawDocument> {
        let req = Request::new(
            Method::GET,
            self.path(&format!("manifests/{}", ref_str(reference))),
            self.pull(),
        )
        .header(ACCEPT, ACCEPT_MANIFESTS);
        let (url, headers, body) = self.get_document(&req, &[200], "manifest").await?;
        let url = display_url(&url);
        if let ManifestRef::Digest(want) = reference {
            want.verify(&body, || format!("manifest from {url}"))
                .map_err(|e| Error::Protocol {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        }
        if let Some(header) = header_str(&headers, DIGEST_HEADER)
            && let Ok(d) = header.parse::<Digest>()
        {
            let mine = d.same_algorithm_of(&body);
            if mine != d {
                return Err(Error::Protocol {
                    url,
                    reason: format!("Docker-Content-Digest says {d} but the body hashes to {mine}"),
                });
            }
        }
        let media_type = header_str(&headers, CONTENT_TYPE.as_str())
            .map(|m| m.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|m| media_type::document_kind(m).is_ok())
            .unwrap_or_default();
        Ok(RawDocument::new(body.to_vec(), media_type))
    }

    /// Sends a GET for a document (a manifest, a tag list) and reads its body, capped at
    /// [`MAX_DOCUMENT_SIZE`]. A body that breaks off or stalls is asked for again, within the
    /// retry policy's attempts.
    async fn get_document(
        &self,
        req: &Request,
        ok: &[u16],
        what: &str,
    ) -> Result<(Url, HeaderMap, Bytes)> {
        let attempts = self.client.options().retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let resp = self.send(req.clone(), ok).await?;
            let url = resp.url().clone();
            let shown = display_url(&url);
            let headers = resp.headers().clone();
            let idle = self.client.options().idle_timeout;
            match read_capped(
                resp,
                MAX_DOCUMENT_SIZE,
                idle,
                req.method.as_str(),
                &shown,
                what,
            )
            .await
            {
                Ok(body) => return Ok((url, headers, body)),
                Err(e) if e.is_retryable() && attempt < attempts => {
                    attempt += 1;
                    tracing::debug!(%e, attempt, "reading the {what} again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes a manifest by digest (where the registry allows deletion).
    ///
    /// # Errors
    /// [`Error::Http`] with `UNSUPPORTED` or 405 when deletion is off.
    pub async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        let req = Request::new(
            Method::DELETE,
            self.path(&format!("manifests/{digest}")),
            self.push_delete(),
        );
        self.send(req, &[202, 200]).await.map(drop)
    }

    /// Deletes a tag (distribution-spec 1.1; many registries refuse and want the digest deleted).
    ///
    /// # Errors
    /// [`Error::Http`] when the registry refuses.
    pub async fn delete_tag(&self, tag: &str) -> Result<()> {
        let req = Request::new(
            Method::DELETE,
            self.path(&format!("manifests/{tag}")),
            self.push_delete(),
        );
        self.send(req, &[202, 200]).await.map(drop)
    }

    fn push_delete(&self) -> Vec<String> {
        vec![format!("repository:{}:delete,pull,push", self.name)]
    }

    /// Manifests that refer to `digest` (their `subject`), from the referrers API, or from the
    /// `<alg>-<hex>` tag index where the registry has no referrers API.
    ///
    /// # Errors
    /// Registry and transport errors.
    pub async fn referrers(&self, digest: &Digest) -> Result<Vec<Descriptor>> {
        let req = Request::new(
            Method::GET,
            self.path(&format!("referrers/{digest}")),
            self.pull(),
        )
        .header(ACCEPT, media_type::OCI_INDEX);
        let resp = self.client.send(&self.api_host, &req).await?;
        let doc = if resp.status().is_success()
            && header_str(resp.headers(), CONTENT_TYPE.as_str())
                .is_some_and(|c| c.starts_with(media_type::OCI_INDEX))
        {
            let url = display_url(resp.url());
            let idle = self.client.options().idle_timeout;
            read_capped(
                resp,
                MAX_DOCUMENT_SIZE,
                idle,
                "GET",
                &url,
                "referrers index",
            )
            .await?
            .to_vec()
        } else if matches!(resp.status().as_u16(), 404 | 405 | 400) || resp.status().is_success() {
            // No referrers API: the tag schema.
            let tag = ManifestRef::Tag(format!("{}-{}", digest.algorithm(), digest.hex()));
            match self.fetch_manifest(&tag).await {
                Ok(raw) => raw.bytes().to_vec(),
                Err(Error::Http { status: 404, .. }) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        } else {
            return Err(self
                .client
                .http_error(&self.api_host, &Method::GET, resp)
                .await);
        };
        let index: oci_spec::image::ImageIndex =
            serde_json::from_slice(&doc).map_err(|e| Error::Protocol {
                url: format!("{}/{}", self.registry, self.name),
                reason: format!(
                    "the referrers index does not parse: {}",
                    excerpt(&e.to_string(), 200)
                ),
            })?;
        Ok(index.manifests().clone())
    }

    /// Mounts a blob from another repository of the same registry: true when mounted, false when
    /// the registry answered 202 (it opened an upload instead, which is left to expire).
    async fn mount(&self, digest: &Digest, from: &str) -> Result<bool> {
        let mut scopes = self.push();
        scopes.push(format!("repository:{from}:pull"));
        let target = self.path(&format!("blobs/uploads/?mount={digest}&from={from}"));
        let req = Request::new(Method::POST, target, scopes).header(CONTENT_LENGTH, "0");
        let resp = self.send(req, &[201, 202]).await?;
        let mounted = resp.status().as_u16() == 201;
        if mounted {
            self.note_blobs([digest.to_string().as_str()].into_iter());
        }
        Ok(mounted)
    }

    /// Notes that this repository holds these blobs (see [`crate::known`]).
    fn note_blobs<'a>(&self, digests: impl Iterator<Item = &'a str>) {
        self.client.note_blobs(&self.api_host, &self.name, digests);
    }

    /// After the registry took `document`: when it is known to check a manifest's blobs, the
    /// blobs the manifest references are all here.
    fn note_manifest_blobs(&self, document: &RawDocument) {
        if !self.client.checks_blobs(&self.api_host) {
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(document.bytes()) else {
            return;
        };
        let config = v.get("config").into_iter();
        let layers = v
            .get("layers")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten();
        let digests = config
            .chain(layers)
            .filter_map(|d| d.get("digest").and_then(serde_json::Value::as_str));
        self.note_blobs(digests);
    }

    async fn start_upload(&self) -> Result<Url> {
        let req = Request::new(Method::POST, self.path("blobs/uploads/"), self.push())
            .header(CONTENT_LENGTH, "0");
        let resp = self.send(req, &[202]).await?;
        location(&resp)
    }

    /// Uploads a blob. Up to one [`PUMP_BUFFER`] (or the chunk size, if smaller), it is read
    /// whole and sent in one PUT (retried as any request). Up to the chunk size, it streams in
    /// the one PUT that commits it, its last piece held back until the source is known to hash
    /// to `digest`. Larger, it streams in one PATCH, then an empty PUT commits it. A streamed
    /// request that fails is resumed from the registry's `Range`: the bytes kept of what was
    /// sent (the last [`RESUME_KEEP`] at least), then `data` again, in a PATCH; an empty PUT
    /// commits.
    async fn upload<R: AsyncRead + Send + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        data: R,
    ) -> ociup_core::Result<()> {
        let url = self.start_upload().await?;
        // Whether a blob goes in one request is this client's own chunk size; the registry's
        // `OCI-Chunk-Min-Length` does not apply to a single request or to the last PATCH, and
        // does not size the bytes kept (a hostile minimum would make an upload hold a layer).
        let chunk_size = self.client.options().chunk_size.max(1);
        // A source that does not match its digest fails here, before the commit.
        let read_err = |e| ociup_core::Error::from_io(format!("reading blob {digest}"), e);
        if size <= PUMP_BUFFER.min(chunk_size) as u64 {
            let mut reader = AsyncVerifyingReader::new(data, digest.clone(), size);
            let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            reader.read_to_end(&mut body).await.map_err(read_err)?;
            let req = Request::new(
                Method::PUT,
                Target::Url(with_digest(&url, digest)),
                self.push(),
            )
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Bytes::from(body));
            let resp = self.send(req, &[201]).await?;
            return Ok(self.check_blob_digest(&resp, digest)?);
        }
        // Hashed on a thread of its own beside the send; checked before the commit.
        let mut reader = StreamSource::new(data, digest, size);
        let mut sent = Sent::new(RESUME_KEEP.min(chunk_size));
        let mut url = url;
        let mut offset = 0u64;
        let mut resumes = self.client.options().retry.max_attempts.max(1);
        let mut how = if size <= chunk_size as u64 {
            Streamed::Commit
        } else {
            Streamed::Append
        };
        loop {
            let failure = match self
                .send_from(how, url.clone(), offset, size, &mut sent, &mut reader)
                .await
                .map_err(read_err)?
            {
                Ok(Answer::Committed(resp)) => return Ok(self.check_blob_digest(&resp, digest)?),
                Ok(Answer::Appended(next)) => {
                    url = next;
                    break;
                }
                Err(failure) => failure,
            };
            if resumes == 0 {
                return Err(failure.into());
            }
            resumes -= 1;
            // How much did the registry keep?
            let req = Request::new(Method::GET, Target::Url(url.clone()), self.push());
            let resp = match self.send(req, &[204]).await {
                Ok(resp) => resp,
                // The registry no longer knows the upload. A PUT whose answer was lost may have
                // committed the blob (its bytes were checked before the last piece went).
                // Distribution forgets an upload whose request broke off (its URL's state
                // names the offset before that request): where every byte sent is still kept,
                // the blob starts again in a new upload; otherwise it cannot go on.
                Err(Error::Http { status: 404, .. }) => {
                    if matches!(how, Streamed::Commit)
                        && self.blob_size(digest).await.ok().flatten() == Some(size)
                    {
                        return Ok(());
                    }
                    if sent.start > 0 {
                        return Err(Error::Protocol {
                            url: display_url(&url),
                            reason: format!(
                                "the upload cannot resume: the registry no longer knows it \
                                 ({failure}), and only bytes {}-{} of the blob are kept to \
                                 send again",
                                sent.start,
                                sent.end()
                            ),
                        }
                        .into());
                    }
                    tracing::debug!(%failure, "the registry lost the upload; starting it again");
                    url = self.start_upload().await?;
                    offset = 0;
                    if size <= chunk_size as u64 {
                        how = Streamed::Commit;
                    }
                    continue;
                }
                Err(_) => return Err(failure.into()),
            };
            // `Range: 0-E` holds E+1 bytes, except that Distribution answers `0-0` for an
            // upload that holds none: a single byte cannot be told from none, so `0-0` counts
            // as nothing kept (sending a byte again is harmless; skipping one is not).
            let have = match header_str(resp.headers(), RANGE.as_str())
                .and_then(|r| r.split('-').nth(1).and_then(|e| e.parse::<u64>().ok()))
            {
                None | Some(0) => 0,
                Some(e) => e.checked_add(1).ok_or_else(|| Error::Protocol {
                    url: display_url(&url),
                    reason: format!("the upload's Range ends at {e}, past any blob"),
                })?,
            };
            url = location(&resp).unwrap_or(url);
            if have < sent.start || have > sent.end() {
                return Err(Error::Protocol {
                    url: display_url(&url),
                    reason: format!(
                        "the upload cannot resume: the registry holds {have} bytes, the bytes \
                         kept to send again are {}-{}",
                        sent.start,
                        sent.end()
                    ),
                }
                .into());
            }
            tracing::debug!(have, sent = sent.end(), "resuming an upload");
            // The rest goes as a PATCH, committed by an empty PUT.
            how = Streamed::Append;
            if have == size {
                break;
            }
            offset = have;
        }
        // The registry holds `size` bytes; the source must be at its end too (reading at the
        // end again is harmless), and hash to `digest`, or nothing is committed.
        let more = reader.next().await.map_err(read_err)?;
        if let Some(more) = more
            && !more.is_empty()
        {
            return Err(ociup_core::Error::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: sent.end() + more.len() as u64,
            });
        }
        if sent.end() != size {
            return Err(ociup_core::Error::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: sent.end(),
            });
        }
        reader.verify().await?;
        let req = Request::new(
            Method::PUT,
            Target::Url(with_digest(&url, digest)),
            self.push(),
        )
        .header(CONTENT_LENGTH, "0");
        let resp = self.send(req, &[201]).await?;
        Ok(self.check_blob_digest(&resp, digest)?)
    }

    /// One request with the bytes from `offset` to the end: the kept bytes from `offset`, then
    /// the rest read from `reader` as the request goes. A PATCH ([`Streamed::Append`]), or the
    /// PUT that commits ([`Streamed::Commit`], from 0 only), whose last piece goes only once
    /// the source has ended there and hashes to its digest. `Err` when reading or that check
    /// fails (the request is broken off, nothing is committed); `Ok(Err)` when the request
    /// fails; `Ok(Ok)` when the registry took every byte.
    async fn send_from<R: AsyncRead + Unpin>(
        &self,
        how: Streamed,
        url: Url,
        offset: u64,
        size: u64,
        sent: &mut Sent,
        reader: &mut StreamSource<R>,
    ) -> std::io::Result<Result<Answer>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
        let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|item| (item, rx))
        }));
        let commit = matches!(how, Streamed::Commit);
        let (method, req) = if commit {
            let req = Request::new(
                Method::PUT,
                Target::Url(with_digest(&url, &reader.digest)),
                self.push(),
            );
            (Method::PUT, req)
        } else {
            let req = Request::new(Method::PATCH, Target::Url(url.clone()), self.push())
                .header(CONTENT_RANGE, &format!("{offset}-{}", size - 1));
            (Method::PATCH, req)
        };
        let req = req.header(CONTENT_TYPE, "application/octet-stream");
        let request = self
            .client
            .send_streamed(&self.api_host, &req, body, size - offset);
        // A registry that stops reading the body would hold the request until its answer
        // deadline (a second per 16 KiB of the whole blob): when it takes no chunk for the idle
        // timeout while one waits, the request is given up, as a broken one (resumed).
        let idle = self.client.options().idle_timeout;
        let (stall_tx, stall_rx) = tokio::sync::oneshot::channel::<()>();
        let mut stall_tx = Some(stall_tx);
        let request = async move {
            use futures_util::future::{Either, select};
            match select(std::pin::pin!(request), stall_rx).await {
                Either::Left((answer, _)) => Some(answer),
                Either::Right((Ok(()), _)) => None,
                // The pump ended without a stall.
                Either::Right((Err(_), request)) => Some(request.await),
            }
        };
        let pump = async move {
            // Whether the chunk was taken; on a stall the request is told to give up.
            let mut give = async |b: Bytes| match tokio::time::timeout(idle, tx.send(Ok(b))).await {
                Ok(sent) => sent.is_ok(),
                Err(_) => {
                    if let Some(s) = stall_tx.take() {
                        let _ = s.send(());
                    }
                    false
                }
            };
            for b in sent.from(offset) {
                if !give(b).await {
                    return Ok(());
                }
            }
            loop {
                let mut b = reader.next().await;
                if commit
                    && let Ok(Some(_)) = b
                    && reader.seen == size
                {
                    // The last piece: the source must end here and hash to the digest before
                    // the registry has the whole body (and commits it).
                    b = match reader.next().await {
                        Ok(_) => reader.verify().await.map_err(|e| e.into_io()).and(b),
                        Err(e) => Err(e),
                    };
                }
                let b = match b {
                    Ok(Some(b)) => b,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        // Breaks the body off, so the registry keeps nothing of it as whole.
                        let _ = tx
                            .send(Err(std::io::Error::other("the source failed")))
                            .await;
                        return Err(e);
                    }
                };
                sent.push(b.clone());
                if !give(b).await {
                    return Ok(());
                }
            }
        };
        let (pumped, answer) = futures_util::future::join(pump, request).await;
        pumped?;
        let want = if commit { 201 } else { 202 };
        Ok(match answer {
            Some(Ok(resp)) if resp.status().as_u16() == want => {
                if commit {
                    Ok(Answer::Committed(resp))
                } else {
                    location(&resp).map(Answer::Appended)
                }
            }
            Some(Ok(resp)) => Err(self.client.http_error(&self.api_host, &method, resp).await),
            Some(Err(e)) => Err(e),
            None => Err(Error::Transport {
                method: method.to_string(),
                url: display_url(&url),
                reason: format!(
                    "timed out: the registry took none of the upload for {} (it stopped \
                     reading)",
                    crate::body::secs(idle)
                ),
                retryable: true,
            }),
        })
    }

    fn check_blob_digest(&self, resp: &Response, digest: &Digest) -> Result<()> {
        if let Some(d) = header_str(resp.headers(), DIGEST_HEADER)
            && d != digest.to_string()
        {
            return Err(Error::Protocol {
                url: display_url(resp.url()),
                reason: format!(
                    "uploaded {digest}, the registry stored {}",
                    excerpt(&d, 150)
                ),
            });
        }
        Ok(())
    }

    /// Every tag, following `Link` pagination.
    async fn tags(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut target = self.path("tags/list?n=1000");
        for _ in 0..10_000 {
            let req = Request::new(Method::GET, target.clone(), self.pull());
            let (url, headers, body) = match self.get_document(&req, &[200], "tag list").await {
                // NAME_UNKNOWN: no tags
                Err(Error::Http { status: 404, .. }) => break,
                other => other?,
            };
            let next = header_str(&headers, LINK.as_str())
                .and_then(|l| next_link(&l))
                .map(|n| url.join(&n));
            let url = display_url(&url);
            let page: Page = serde_json::from_slice(&body).map_err(|e| Error::Protocol {
                url: url.clone(),
                reason: format!(
                    "the tag list does not parse: {}",
                    excerpt(&e.to_string(), 200)
                ),
            })?;
            out.extend(page.tags.unwrap_or_default());
            match next {
                Some(Ok(u)) => target = Target::Url(u),
                Some(Err(e)) => {
                    return Err(Error::Protocol {
                        url,
                        reason: format!("bad Link header: {e}"),
                    });
                }
                None => break,
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn blob_stream(&self, digest: &Digest, size: u64) -> Result<BlobStream> {
        let first = self.get_blob_from(digest, 0).await?;
        let state = Download {
            repo: self.clone(),
            digest: digest.clone(),
            size,
            offset: 0,
            skip: 0,
            body: Box::pin(first.bytes_stream()),
            resumes_left: self.client.options().download_resumes,
            watch: Watchdog::new(self.client.options().idle_timeout),
        };
        Ok(Box::pin(futures_util::stream::try_unfold(
            state,
            Download::next,
        )))
    }

    /// [`Repository::blob_stream`], with a 404 as [`ociup_core::Error::BlobNotFound`].
    async fn blob_stream_or_not_found(
        &self,
        digest: &Digest,
        size: u64,
    ) -> ociup_core::Result<BlobStream> {
        match self.blob_stream(digest, size).await {
            Ok(s) => Ok(s),
            Err(Error::Http { status: 404, .. }) => Err(ociup_core::Error::BlobNotFound {
                digest: digest.clone(),
                store: self.location(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_blob_from(&self, digest: &Digest, offset: u64) -> Result<Response> {
        let mut req = Request::new(
            Method::GET,
            self.path(&format!("blobs/{digest}")),
            self.pull(),
        );
        if offset > 0 {
            req = req.header(RANGE, &format!("bytes={offset}-"));
        }
        self.send(req, &[200, 206]).await
    }
}

type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Bytes read from a blob's source at once while streaming it: as large as the layout's read
/// buffer, which a read this large bypasses (one copy fewer).
const PUMP_BUFFER: usize = 1024 * 1024;

/// Pieces queued for an upload's hashing thread (memory: this many [`PUMP_BUFFER`]s at most,
/// shared with the send, which holds them anyway). Kept short: with four uploads at once on a
/// loaded machine, eight pieces each took a push's peak memory past 64 MiB; hashing runs at
/// several times the speed of a loopback upload, so two pieces keep it off the send's path.
const HASH_QUEUE: usize = 2;

/// The bytes a streamed upload keeps of what it has sent (at least; at most one
/// [`PUMP_BUFFER`] more), to send again when a request breaks off. A registry that answers the
/// upload's status with a `Range` lost what it had not yet stored: at most this process's queue
/// (a few pieces), the two sockets' buffers and its own. Distribution instead forgets an upload
/// whose request broke off (`it::resume_keep` cuts uploads to it mid-body): a blob of at most
/// this size, kept whole, starts again in a new upload; a larger one fails with a clear error
/// (a new copy sends it again). Four uploads at once keep 16 MiB in all, where a whole chunk
/// (8 MiB) each took a push's peak memory past 64 MiB.
pub(crate) const RESUME_KEEP: usize = 4 * 1024 * 1024;

/// How a streamed request carries a blob's bytes.
#[derive(Clone, Copy, Debug)]
enum Streamed {
    /// A PATCH of the bytes from an offset to the end, the commit left to an empty PUT.
    Append,
    /// The PUT `?digest=` of the whole blob, which commits it.
    Commit,
}

/// What a streamed request that the registry took gives.
enum Answer {
    /// The next upload URL (after a PATCH).
    Appended(Url),
    /// The registry's answer to the committing PUT.
    Committed(Response),
}

/// The source of a streamed upload: read [`PUMP_BUFFER`] at a time, its size checked as it
/// goes (a source longer than announced fails at the first extra byte, shorter at its end) and
/// its digest computed on a blocking thread beside the send, so hashing does not hold up the
/// bytes going out. [`StreamSource::verify`] gives the verdict before the upload is committed.
struct StreamSource<R> {
    reader: R,
    digest: Digest,
    size: u64,
    seen: u64,
    hash: Option<tokio::sync::mpsc::Sender<Bytes>>,
    hashed: Option<tokio::task::JoinHandle<Digest>>,
}

impl<R: AsyncRead + Unpin> StreamSource<R> {
    fn new(reader: R, digest: &Digest, size: u64) -> Self {
        let (hash, mut pieces) = tokio::sync::mpsc::channel::<Bytes>(HASH_QUEUE);
        let algorithm = digest.algorithm();
        let hashed = tokio::task::spawn_blocking(move || {
            let mut hasher = algorithm.hasher();
            while let Some(piece) = pieces.blocking_recv() {
                hasher.update(&piece);
            }
            hasher.finish()
        });
        StreamSource {
            reader,
            digest: digest.clone(),
            size,
            seen: 0,
            hash: Some(hash),
            hashed: Some(hashed),
        }
    }

    fn size_mismatch(&self, actual: u64) -> std::io::Error {
        ociup_core::Error::SizeMismatch {
            digest: self.digest.clone(),
            expected: self.size,
            actual,
        }
        .into_io()
    }

    /// The next piece of the source, `None` at its end.
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        let mut buf = BytesMut::with_capacity(PUMP_BUFFER);
        // Filled before it goes: a source read in small chunks (another registry's body, 16 KiB
        // a frame) would otherwise pin a whole buffer for each chunk among the pieces kept for
        // a resume, hundreds of MiB for an upload's 4 MiB.
        while buf.len() < PUMP_BUFFER {
            if self.reader.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        let n = buf.len();
        if n == 0 {
            if self.seen != self.size {
                return Err(self.size_mismatch(self.seen));
            }
            return Ok(None);
        }
        self.seen += n as u64;
        if self.seen > self.size {
            return Err(self.size_mismatch(self.seen));
        }
        let piece = buf.freeze();
        if let Some(hash) = &self.hash
            && hash.send(piece.clone()).await.is_err()
        {
            return Err(std::io::Error::other("the hashing thread stopped"));
        }
        Ok(Some(piece))
    }

    /// After the last piece: whether what was read hashes to the digest.
    async fn verify(&mut self) -> ociup_core::Result<()> {
        drop(self.hash.take());
        let Some(hashed) = self.hashed.take() else {
            return Ok(());
        };
        let actual = hashed.await.map_err(|e| {
            ociup_core::Error::io(
                format!("hashing blob {}", self.digest),
                std::io::Error::other(e),
            )
        })?;
        if actual != self.digest {
            return Err(ociup_core::Error::DigestMismatch {
                what: format!("blob {}", self.digest),
                expected: self.digest.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// What an upload has read of its source so far, with the last `keep` bytes (at least) kept in
/// memory to send again from wherever the registry says it stopped.
struct Sent {
    keep: usize,
    /// Offset of the first kept byte.
    start: u64,
    kept: std::collections::VecDeque<Bytes>,
    kept_len: usize,
}

impl Sent {
    fn new(keep: usize) -> Self {
        Sent {
            keep,
            start: 0,
            kept: std::collections::VecDeque::new(),
            kept_len: 0,
        }
    }

    /// Offset just past the last byte read.
    fn end(&self) -> u64 {
        self.start + self.kept_len as u64
    }

    fn push(&mut self, b: Bytes) {
        self.kept_len += b.len();
        self.kept.push_back(b);
        while let Some(front) = self.kept.front() {
            if self.kept_len - front.len() < self.keep {
                break;
            }
            self.start += front.len() as u64;
            self.kept_len -= front.len();
            self.kept.pop_front();
        }
    }

    /// The kept bytes from `offset` on (`offset` within the kept range).
    fn from(&self, offset: u64) -> Vec<Bytes> {
        let mut at = self.start;
        let mut out = Vec::new();
        for b in &self.kept {
            let end = at + b.len() as u64;
            if end > offset {
                let skip = usize::try_from(offset.saturating_sub(at)).unwrap_or(0);
                out.push(b.slice(skip..));
            }
            at = end;
        }
        out
    }
}

/// A blob download that picks up where it broke off.
struct Download {
    repo: Repository,
    digest: Digest,
    size: u64,
    offset: u64,
    /// Bytes to drop from the body: a registry that ignored `Range` and sent it all again.
    skip: u64,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    resumes_left: u32,
    /// A body that goes silent (or trickles) counts as broken off.
    watch: Watchdog,
}

impl Download {
    async fn next(mut self) -> std::io::Result<Option<(Bytes, Download)>> {
        loop {
            let next = match self.watch.next(&mut self.body).await {
                Watched::Item(item) => item.map(|r| r.map_err(|e| e.to_string())),
                Watched::Stalled => Some(Err(self.watch.stalled_reason())),
            };
            match next {
                Some(Ok(mut chunk)) => {
                    if self.skip > 0 {
                        let drop = self.skip.min(chunk.len() as u64) as usize;
                        self.skip -= drop as u64;
                        chunk = chunk.slice(drop..);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    self.offset += chunk.len() as u64;
                    return Ok(Some((chunk, self)));
                }
                None => return Ok(None),
                Some(Err(e)) if self.resumes_left > 0 && self.offset < self.size => {
                    self.resumes_left -= 1;
                    tracing::debug!(digest = %self.digest, offset = self.offset, error = %e, "resuming a blob download");
                    let resp = self
                        .repo
                        .get_blob_from(&self.digest, self.offset)
                        .await
                        .map_err(|e| ociup_core::Error::from(e).into_io())?;
                    self.skip = if resp.status().as_u16() == 206 {
                        0
                    } else {
                        self.offset
                    };
                    self.body = Box::pin(resp.bytes_stream());
                    self.watch.reset();
                }
                Some(Err(e)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        format!("downloading blob {}: {e}", self.digest),
                    ));
                }
            }
        }
    }
}

fn ref_str(r: &ManifestRef) -> String {
    match r {
        ManifestRef::Tag(t) => t.clone(),
        ManifestRef::Digest(d) => d.to_string(),
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The `Location` of an upload answer, relative or absolute, resolved against the request URL.
fn location(resp: &Response) -> Result<Url> {
    let loc = header_str(resp.headers(), LOCATION.as_str()).ok_or_else(|| Error::Protocol {
        url: display_url(resp.url()),
        reason: format!("{} without a Location header", resp.status()),
    })?;
    resp.url().join(&loc).map_err(|e| Error::Protocol {
        url: display_url(resp.url()),
        reason: format!("the Location {:?} is not a URL: {e}", excerpt(&loc, 200)),
    })
}

fn with_digest(url: &Url, digest: &Digest) -> Url {
    let mut u = url.clone();
    u.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    u
}

/// The `rel="next"` target of a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next")
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

/// Uploads opened before their blob is known ([`Store::open_upload`]).
impl Repository {
    /// Puts a blob that fits one request through the upload at `url`: its closing PUT with the
    /// bytes. An upload the registry no longer knows (expired, 404) is started again.
    async fn upload_into(
        &self,
        url: Url,
        digest: &Digest,
        size: u64,
        data: impl AsyncRead + Send + Unpin,
    ) -> ociup_core::Result<()> {
        let mut reader = AsyncVerifyingReader::new(data, digest.clone(), size);
        let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        reader
            .read_to_end(&mut body)
            .await
            .map_err(|e| ociup_core::Error::from_io(format!("reading blob {digest}"), e))?;
        let body = Bytes::from(body);
        let req = Request::new(
            Method::PUT,
            Target::Url(with_digest(&url, digest)),
            self.push(),
        )
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(body.clone());
        match self.send(req, &[201]).await {
            Ok(resp) => Ok(self.check_blob_digest(&resp, digest)?),
            Err(Error::Http { status: 404, .. }) => {
                tracing::debug!(%digest, "the upload opened before is gone; starting another");
                self.upload(digest, size, &body[..]).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// DELETE of an upload nothing was put into; a failure is logged (the registry's purge
    /// removes the upload later) and returned.
    async fn delete_upload(&self, url: Url) -> Result<()> {
        let req = Request::new(Method::DELETE, Target::Url(url.clone()), self.push());
        match self.send(req, &[204, 200, 202, 404]).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(url = %display_url(&url), %e, "could not cancel an unused blob upload; the registry will expire it");
                Err(e)
            }
        }
    }
}

impl Store for Repository {
    fn location(&self) -> String {
        format!("{}/{}", self.registry, self.name)
    }

    async fn blob_size(&self, digest: &Digest) -> ociup_core::Result<Option<u64>> {
        let req = Request::new(
            Method::HEAD,
            self.path(&format!("blobs/{digest}")),
            self.pull(),
        );
        let resp = self.client.send(&self.api_host, &req).await?;
        match resp.status().as_u16() {
            404 => Ok(None),
            200 => {
                self.note_blobs([digest.to_string().as_str()].into_iter());
                Ok(header_str(resp.headers(), CONTENT_LENGTH.as_str())
                    .and_then(|s| s.parse().ok())
                    .or(Some(0)))
            }
            _ => Err(self
                .client
                .http_error(&self.api_host, &Method::HEAD, resp)
                .await
                .into()),
        }
    }

    async fn get_blob(&self, digest: &Digest, size: u64) -> ociup_core::Result<BlobReader> {
        let stream = self.blob_stream_or_not_found(digest, size).await?;
        let reader = tokio_util::io::StreamReader::new(stream.map_err(|e| e));
        Ok(Box::pin(AsyncVerifyingReader::new(
            reader,
            digest.clone(),
            size,
        )))
    }

    async fn put_blob<R: AsyncRead + Send + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        data: R,
    ) -> ociup_core::Result<()> {
        if self.blob_size(digest).await?.is_some() {
            return Ok(());
        }
        self.upload(digest, size, data).await?;
        self.note_blobs([digest.to_string().as_str()].into_iter());
        Ok(())
    }

    async fn put_new_blob<R: AsyncRead + Send + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        data: R,
    ) -> ociup_core::Result<()> {
        self.upload(digest, size, data).await?;
        self.note_blobs([digest.to_string().as_str()].into_iter());
        Ok(())
    }

    /// The upload's POST, answered with its URL.
    async fn open_upload(&self) -> ociup_core::Result<Option<OpenUpload>> {
        let url = self.start_upload().await?;
        Ok(Some(OpenUpload {
            location: url.to_string(),
        }))
    }

    /// The closing PUT with the bytes, where the blob is small enough to be read whole (one
    /// [`PUMP_BUFFER`], or the client's chunk size if smaller); a larger blob cancels the
    /// upload and goes as [`Store::put_new_blob`] does (streamed, never held whole).
    async fn put_blob_into<R: AsyncRead + Send + Unpin>(
        &self,
        upload: OpenUpload,
        digest: &Digest,
        size: u64,
        data: R,
    ) -> ociup_core::Result<()> {
        let url = Url::parse(&upload.location).map_err(|e| Error::Protocol {
            url: excerpt(&upload.location, 200),
            reason: format!("not an upload URL: {e}"),
        })?;
        if size > PUMP_BUFFER.min(self.client.options().chunk_size.max(1)) as u64 {
            let _ = self.delete_upload(url).await;
            return self.put_new_blob(digest, size, data).await;
        }
        self.upload_into(url, digest, size, data).await?;
        self.note_blobs([digest.to_string().as_str()].into_iter());
        Ok(())
    }

    async fn cancel_upload(&self, upload: OpenUpload) -> ociup_core::Result<()> {
        let url = Url::parse(&upload.location).map_err(|e| Error::Protocol {
            url: excerpt(&upload.location, 200),
            reason: format!("not an upload URL: {e}"),
        })?;
        Ok(self.delete_upload(url).await?)
    }

    async fn read_blob_raw(&self, digest: &Digest, size: u64) -> ociup_core::Result<BlobReader> {
        let stream = self.blob_stream_or_not_found(digest, size).await?;
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }

    async fn get_manifest(&self, reference: &ManifestRef) -> ociup_core::Result<RawDocument> {
        match self.fetch_manifest(reference).await {
            Ok(raw) => Ok(raw),
            Err(Error::Http { status: 404, .. }) => match reference {
                ManifestRef::Tag(t) => Err(ociup_core::Error::TagNotFound {
                    tag: t.clone(),
                    store: self.location(),
                }),
                ManifestRef::Digest(d) => Err(ociup_core::Error::BlobNotFound {
                    digest: d.clone(),
                    store: self.location(),
                }),
            },
            Err(e) => Err(e.into()),
        }
    }

    async fn put_manifest(
        &self,
        document: &RawDocument,
        tag: Option<&str>,
    ) -> ociup_core::Result<()> {
        let reference = match tag {
            Some(t) => {
                ociup_core::layout::validate_tag(t)?;
                t.to_owned()
            }
            None => document.digest().to_string(),
        };
        // What ociup could not read back is not written.
        let len = document.bytes().len() as u64;
        if len > MAX_DOCUMENT_SIZE {
            return Err(ociup_core::Error::InvalidDocument {
                what: format!("manifest {}", document.digest()),
                reason: format!(
                    "{len} bytes is larger than the {MAX_DOCUMENT_SIZE} bytes ociup reads back; \
                     not pushed to {}",
                    self.location()
                ),
            });
        }
        let req = Request::new(
            Method::PUT,
            self.path(&format!("manifests/{reference}")),
            self.push(),
        )
        .header(CONTENT_TYPE, document.media_type())
        .body(Bytes::copy_from_slice(document.bytes()));
        // Distribution rewrites a blob's link in place when a blob it has is uploaded or mounted
        // again; a manifest PUT that reads the link meanwhile fails with DIGEST_INVALID and
        // MANIFEST_BLOB_UNKNOWN although the blob is there. Concurrent writers of one image hit
        // that window: a few short retries get past it.
        let mut attempt = 0u64;
        let resp = loop {
            match self.send(req.clone(), &[201, 200]).await {
                Err(e @ Error::Http { status: 400, .. })
                    if attempt < 4
                        && e.codes().iter().any(|c| c == "MANIFEST_BLOB_UNKNOWN")
                        && e.codes().iter().any(|c| c == "DIGEST_INVALID") =>
                {
                    attempt += 1;
                    tracing::debug!(%e, attempt, "manifest PUT raced a blob link rewrite, retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                Err(e @ Error::Http { status: 400, .. })
                    if e.codes().iter().any(|c| c == "MANIFEST_BLOB_UNKNOWN")
                        && !e.codes().iter().any(|c| c == "DIGEST_INVALID") =>
                {
                    return Err(ociup_core::Error::MissingBlobs {
                        store: self.location(),
                        digests: e.unknown_blobs(),
                        source: Some(Box::new(e)),
                    });
                }
                other => break other?,
            }
        };
        if let Some(d) = header_str(resp.headers(), DIGEST_HEADER)
            && d != document.digest().to_string()
        {
            return Err(Error::Protocol {
                url: display_url(resp.url()),
                reason: format!(
                    "put manifest {}, the registry stored {}",
                    document.digest(),
                    excerpt(&d, 150)
                ),
            }
            .into());
        }
        self.note_manifest_blobs(document);
        if tag.is_some() {
            // A tagged PUT ends a write: what was learnt is kept now, whatever comes later.
            self.client.save_state();
        }
        Ok(())
    }

    async fn resolve_tag(&self, tag: &str) -> ociup_core::Result<Descriptor> {
        self.head_manifest(&ManifestRef::Tag(tag.to_owned()))
            .await?
            .ok_or_else(|| ociup_core::Error::TagNotFound {
                tag: tag.to_owned(),
                store: self.location(),
            })
    }

    async fn list_tags(&self) -> ociup_core::Result<Vec<String>> {
        Ok(self.tags().await?)
    }

    async fn delete_manifest(&self, digest: &Digest) -> ociup_core::Result<()> {
        Ok(Repository::delete_manifest(self, digest).await?)
    }

    async fn has_manifest(&self, digest: &Digest) -> ociup_core::Result<bool> {
        Ok(self
            .head_manifest(&ManifestRef::Digest(digest.clone()))
            .await?
            .is_some())
    }

    /// One PUT by digest, not tried again: any refusal the registry answers (but a refused
    /// login) is a [`Probe::Refused`] and the caller checks every blob instead.
    async fn probe_manifest(&self, document: &RawDocument) -> ociup_core::Result<Probe> {
        check_document_size("manifest", document)?;
        let req = Request::new(
            Method::PUT,
            self.path(&format!("manifests/{}", document.digest())),
            self.push(),
        )
        .header(CONTENT_TYPE, document.media_type())
        .body(Bytes::copy_from_slice(document.bytes()))
        .once();
        match self.send(req, &[201, 200]).await {
            Ok(resp) => {
                if let Some(d) = header_str(resp.headers(), DIGEST_HEADER)
                    && d != document.digest().to_string()
                {
                    return Err(Error::Protocol {
                        url: display_url(resp.url()),
                        reason: format!(
                            "put manifest {}, the registry stored {}",
                            document.digest(),
                            excerpt(&d, 150)
                        ),
                    }
                    .into());
                }
                self.note_manifest_blobs(document);
                Ok(Probe::Taken {
                    proves_blobs: self.client.checks_blobs(&self.api_host),
                })
            }
            Err(e @ Error::Http { status: 400, .. })
                if e.codes().iter().any(|c| c == "MANIFEST_BLOB_UNKNOWN")
                    && !e.codes().iter().any(|c| c == "DIGEST_INVALID") =>
            {
                let named = e.unknown_blobs();
                if !named.is_empty() {
                    self.client.note_checks_blobs(&self.api_host);
                }
                Ok(Probe::Missing(named))
            }
            Err(Error::Http { status, .. }) if !matches!(status, 401 | 403) => Ok(Probe::Refused),
            Err(e @ Error::Transport { .. }) if e.is_retryable() => Ok(Probe::Refused),
            Err(e) => Err(e.into()),
        }
    }

    fn rejects_missing_blobs(&self) -> bool {
        !self.client.options().check_blobs_first
    }

    /// Only where the registry is known to check a manifest's blobs: what it does not hold, a
    /// manifest PUT names, so a stale answer costs a request, never an incomplete image.
    fn known_blobs(&self, digests: &[Digest]) -> Option<Vec<bool>> {
        if self.client.options().check_blobs_first || !self.client.checks_blobs(&self.api_host) {
            return None;
        }
        Some(
            digests
                .iter()
                .map(|d| {
                    self.client
                        .knows_blob(&self.api_host, &self.name, &d.to_string())
                })
                .collect(),
        )
    }

    fn mount_source(&self) -> Option<MountSource> {
        Some(MountSource {
            registry: self.registry.clone(),
            repository: self.name.clone(),
        })
    }

    async fn mount_blob(&self, digest: &Digest, source: &MountSource) -> ociup_core::Result<bool> {
        if source.registry != self.registry || source.repository == self.name {
            return Ok(false);
        }
        Ok(self.mount(digest, &source.repository).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an upload keeps to resume stays within [`RESUME_KEEP`] and one piece, however long
    /// the blob, and gives back exactly the bytes from any offset it still holds.
    #[test]
    fn an_upload_keeps_a_bounded_tail_of_what_it_sent() {
        let piece = |i: u64| Bytes::from(vec![(i % 251) as u8; PUMP_BUFFER]);
        let mut sent = Sent::new(RESUME_KEEP);
        for i in 0..100u64 {
            sent.push(piece(i));
            assert!(
                sent.kept_len < RESUME_KEEP + PUMP_BUFFER,
                "{}",
                sent.kept_len
            );
            assert!(sent.kept_len >= RESUME_KEEP.min((i as usize + 1) * PUMP_BUFFER));
        }
        assert_eq!(sent.end(), 100 * PUMP_BUFFER as u64);
        assert_eq!(sent.kept_len as u64, sent.end() - sent.start);
        // From an offset within the kept range: the bytes of the pieces from there on.
        let at = sent.start + PUMP_BUFFER as u64 + 10;
        let from: Vec<u8> = sent.from(at).iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(from.len() as u64, sent.end() - at);
        let first_piece = at / PUMP_BUFFER as u64;
        assert!(
            from[..PUMP_BUFFER - 10]
                .iter()
                .all(|b| u64::from(*b) == first_piece % 251)
        );
        assert_eq!(from.last(), Some(&99));
    }

    /// A source that hands out at most 16 KiB a read, as an HTTP/2 body does.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
    }

    impl tokio::io::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = (self.data.len() - self.at)
                .min(16 * 1024)
                .min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_source_read_in_small_chunks_goes_in_whole_pieces() {
        let data: Vec<u8> = (0..2 * PUMP_BUFFER + 100)
            .map(|i| (i % 253) as u8)
            .collect();
        let digest = Digest::sha256(&data);
        let mut source = StreamSource::new(
            Trickle {
                data: data.clone(),
                at: 0,
            },
            &digest,
            data.len() as u64,
        );
        let mut lens = Vec::new();
        let mut back = Vec::new();
        while let Some(piece) = source.next().await.unwrap() {
            lens.push(piece.len());
            back.extend_from_slice(&piece);
        }
        // Each piece fills its buffer: 4 MiB kept for a resume are 4 buffers, not 256.
        assert_eq!(lens, [PUMP_BUFFER, PUMP_BUFFER, 100]);
        assert_eq!(back, data);
        source.verify().await.unwrap();
    }

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(r#"</v2/x/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/x/tags/list?n=2&last=b")
        );
        assert_eq!(next_link(r#"<https://a/b>; rel="prev""#), None);
    }
}

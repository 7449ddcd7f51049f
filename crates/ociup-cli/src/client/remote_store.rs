//! A read-only [`Store`] over a service's `GET /v1/nicks/{nick}/blobs/{digest}`: the manifests,
//! configs and layers of a nick's versions, read by the service with its own credentials, so
//! that `ociup run NICK --server` unpacks and caches them as a local run does (the layer cache
//! and `ops::load_image` take any store) without registry rights of its own.
//!
//! Everything is asked by digest and checked here against it (documents whole, blobs as they
//! stream), whatever the service sends.

use futures_util::TryStreamExt;
use oci_spec::image::Descriptor;
use ociup_core::Digest;
use ociup_core::document::RawDocument;
use ociup_core::store::{BlobReader, MAX_DOCUMENT_SIZE, ManifestRef, Store};
use ociup_core::verify::AsyncVerifyingReader;
use ociup_core::{Error, Result};
use tokio::io::AsyncRead;

use super::{Server, segment};

/// The images of one nick, read through a service.
#[derive(Clone, Debug)]
pub(super) struct RemoteStore {
    http: reqwest::Client,
    /// `URL/v1/nicks/NICK/blobs/`.
    blobs: String,
    token: String,
    /// The repository or layout the versions live in, as a local store names itself.
    location: String,
}

impl RemoteStore {
    /// The images of `nick` through `server`; `reference` (the pinned reference the service
    /// answered) names their store in messages.
    pub(super) fn new(server: &Server, nick: &str, reference: &str) -> RemoteStore {
        let repo = reference
            .rsplit_once('@')
            .map_or(reference, |(repo, _)| repo);
        RemoteStore {
            http: server.blob_http.clone(),
            blobs: format!("{}/v1/nicks/{}/blobs/", server.base, segment(nick)),
            token: server.token.clone(),
            location: repo.strip_prefix("docker://").unwrap_or(repo).to_owned(),
        }
    }

    /// Asks for `digest`: the answer, whatever its status. A 429 (the token's rate limit) or
    /// a 503 with `Retry-After` is asked again after the time it says (at most
    /// [`MAX_RETRY_WAIT`] each time, [`RETRIES`] times).
    async fn send(&self, method: reqwest::Method, digest: &Digest) -> Result<reqwest::Response> {
        let url = format!("{}{digest}", self.blobs);
        let mut tries = 0;
        loop {
            let mut req = self.http.request(method.clone(), &url);
            if !self.token.is_empty() {
                req = req.bearer_auth(&self.token);
            }
            let resp = req.send().await.map_err(|e| {
                backend(format!(
                    "reading {digest} of {} through the service: {e}",
                    self.location
                ))
            })?;
            let wait = retry_after(&resp);
            match wait {
                Some(wait) if tries < RETRIES => {
                    tries += 1;
                    drop(resp);
                    tokio::time::sleep(wait).await;
                }
                _ => return Ok(resp),
            }
        }
    }

    /// Asks for `digest`: the answer when it is 200, else the service's error.
    async fn get(&self, method: reqwest::Method, digest: &Digest) -> Result<reqwest::Response> {
        let resp = self.send(method, digest).await?;
        if resp.status() == reqwest::StatusCode::OK {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        Err(backend(format!(
            "reading {digest} of {} through the service: {} (the service: {}, HTTP {status})",
            self.location,
            v["message"].as_str().unwrap_or("(no message)"),
            v["code"].as_str().unwrap_or("?")
        )))
    }

    fn read_only(&self) -> Error {
        Error::InvalidChange {
            reason: format!(
                "{} is read through a service here, which writes nothing for a requester",
                self.location
            ),
        }
    }
}

/// How many times a busy answer is asked again.
const RETRIES: u32 = 5;

/// The longest wait for a busy answer's `Retry-After`.
const MAX_RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long to wait before asking again: a 429, or a 503 with `Retry-After` (its seconds,
/// 1 s when absent or unreadable, at most [`MAX_RETRY_WAIT`]); `None` for any other answer.
fn retry_after(resp: &reqwest::Response) -> Option<std::time::Duration> {
    let header = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    match resp.status().as_u16() {
        429 => {}
        503 if header.is_some() => {}
        _ => return None,
    }
    Some(std::time::Duration::from_secs(header.unwrap_or(1).max(1)).min(MAX_RETRY_WAIT))
}

fn backend(message: String) -> Error {
    Error::Backend(message.into())
}

impl Store for RemoteStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let resp = self.send(reqwest::Method::HEAD, digest).await?;
        match resp.status().as_u16() {
            // The header, not the body's length: a HEAD answer has no body.
            200 => Ok(resp
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())),
            404 => Ok(None),
            status => Err(backend(format!(
                "asking for {digest} of {} through the service: HTTP {status}",
                self.location
            ))),
        }
    }

    async fn get_blob(&self, digest: &Digest, size: u64) -> Result<BlobReader> {
        let resp = self.get(reqwest::Method::GET, digest).await?;
        let stream = Box::pin(resp.bytes_stream().map_err(std::io::Error::other));
        let reader = tokio_util::io::StreamReader::new(stream);
        Ok(Box::pin(AsyncVerifyingReader::new(
            reader,
            digest.clone(),
            size,
        )))
    }

    async fn put_blob<R: AsyncRead + Send + Unpin>(
        &self,
        _digest: &Digest,
        _size: u64,
        _data: R,
    ) -> Result<()> {
        Err(self.read_only())
    }

    async fn get_manifest(&self, reference: &ManifestRef) -> Result<RawDocument> {
        let ManifestRef::Digest(digest) = reference else {
            return Err(Error::InvalidChange {
                reason: format!(
                    "{}{reference}: through a service images are read by digest only",
                    self.location
                ),
            });
        };
        let resp = self.get(reqwest::Method::GET, digest).await?;
        let too_large = || Error::InvalidDocument {
            what: format!("manifest {digest}"),
            reason: format!("larger than the {MAX_DOCUMENT_SIZE} bytes ociup reads"),
        };
        if resp.content_length().is_some_and(|n| n > MAX_DOCUMENT_SIZE) {
            return Err(too_large());
        }
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|v| v != "application/octet-stream")
            .unwrap_or_default();
        let mut bytes = Vec::new();
        let mut stream = std::pin::pin!(resp.bytes_stream());
        while let Some(chunk) = stream.try_next().await.map_err(|e| {
            backend(format!(
                "reading manifest {digest} of {} through the service: {e}",
                self.location
            ))
        })? {
            if (bytes.len() + chunk.len()) as u64 > MAX_DOCUMENT_SIZE {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        RawDocument::verified(bytes, media_type, digest)
    }

    async fn put_manifest(&self, _document: &RawDocument, _tag: Option<&str>) -> Result<()> {
        Err(self.read_only())
    }

    async fn resolve_tag(&self, tag: &str) -> Result<Descriptor> {
        Err(Error::InvalidChange {
            reason: format!(
                "{}:{tag}: through a service images are read by digest only",
                self.location
            ),
        })
    }

    async fn list_tags(&self) -> Result<Vec<String>> {
        Err(Error::InvalidChange {
            reason: format!("{}: through a service tags are not listed", self.location),
        })
    }
}

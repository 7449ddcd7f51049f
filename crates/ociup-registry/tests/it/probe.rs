//! The manifest probe of a push against registries that answer it otherwise than Distribution:
//! one that takes any manifest whatever blobs it lacks (the distribution spec allows it), and
//! one that answers a server error while blobs are missing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ociup_core::Digest;
use ociup_core::copy::{CopyOptions, copy_image};
use ociup_core::document::Manifest;
use ociup_core::store::{BlobCopy, ManifestRef, Store, put_manifest_with_blobs};
use ociup_registry::{Client, ClientOptions, Reference, Repository, RetryPolicy};

use crate::fake::{Fake, Reply, Seen};
use crate::registry::image_of_layers;

/// A registry keeping uploaded blobs (monolithic uploads only) and answering a manifest PUT
/// with `manifest_put(blobs it lacks)`.
fn blob_keeping_registry(
    blobs: Arc<Mutex<HashSet<String>>>,
    needed: Vec<String>,
    manifest_put: fn(usize) -> u16,
) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |req: &Seen| {
        let path = req.path.as_str();
        match req.method.as_str() {
            "HEAD" if path.contains("/blobs/") => {
                let d = path.rsplit('/').next().unwrap();
                let have = blobs.lock().unwrap().contains(d);
                Reply::new(if have { 200 } else { 404 }).header("Content-Length", "1")
            }
            "POST" if path.contains("/blobs/uploads/") => {
                Reply::new(202).header("Location", "/v2/test/x/blobs/uploads/s1")
            }
            "PUT" if path.contains("/blobs/uploads/") => {
                let d = path.split("digest=").nth(1).unwrap().replace("%3A", ":");
                assert_eq!(Digest::sha256(&req.body).to_string(), d, "uploaded bytes");
                blobs.lock().unwrap().insert(d.clone());
                Reply::new(201).header("Docker-Content-Digest", &d)
            }
            "PUT" if path.contains("/manifests/") => {
                let have = blobs.lock().unwrap().clone();
                let lacking = needed.iter().filter(|n| !have.contains(*n)).count();
                let status = manifest_put(lacking);
                Reply::new(status)
                    .header(
                        "Docker-Content-Digest",
                        &Digest::sha256(&req.body).to_string(),
                    )
                    .header("Content-Type", "application/json")
                    .body(if status >= 400 {
                        br#"{"errors":[{"code":"UNKNOWN","message":"try later"}]}"#.to_vec()
                    } else {
                        Vec::new()
                    })
            }
            _ => Reply::new(404),
        }
    }
}

fn repo_of(fake: &Fake) -> Repository {
    Client::new(ClientOptions {
        insecure: vec![fake.host.clone()],
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
        },
        ..ClientOptions::default()
    })
    .unwrap()
    .repository(&Reference::parse(&format!("{}/test/x", fake.host)).unwrap())
}

/// Every blob `manifest` references.
fn blobs_of(manifest: &ociup_core::document::RawDocument) -> Vec<String> {
    let m = Manifest::parse(manifest.clone()).unwrap();
    let p = m.parsed();
    let mut out = vec![p.config().digest().to_string()];
    out.extend(p.layers().iter().map(|l| l.digest().to_string()));
    out
}

/// The index of the request that put the manifest under `tag`, checking it is the only one and
/// that no blob went up after it.
fn tag_put_is_last(seen: &[Seen], tag: &str) -> usize {
    let tagged: Vec<usize> = (0..seen.len())
        .filter(|&i| {
            seen[i].method == "PUT" && seen[i].path.ends_with(&format!("/manifests/{tag}"))
        })
        .collect();
    assert_eq!(tagged.len(), 1, "one PUT under the tag: {seen:#?}");
    let last_blob = (0..seen.len())
        .filter(|&i| seen[i].path.contains("/blobs/"))
        .max()
        .unwrap_or(0);
    assert!(tagged[0] > last_blob, "the tag after every blob request");
    tagged[0]
}

#[tokio::test]
async fn a_registry_that_takes_any_manifest_gets_every_blob_before_the_tag() {
    let t = tempfile::tempdir().unwrap();
    let (src, manifest) = image_of_layers(&t.path().join("src"), 3).await;
    let needed = blobs_of(&manifest);

    // copy (push): the acceptance of the probe proves nothing here.
    let blobs = Arc::new(Mutex::new(HashSet::new()));
    let fake = Fake::start(blob_keeping_registry(
        Arc::clone(&blobs),
        needed.clone(),
        |_| 201,
    ))
    .await;
    let dst = repo_of(&fake);
    let report = copy_image(
        &src,
        &ManifestRef::Tag("v1".into()),
        &dst,
        Some("v1"),
        &CopyOptions::default(),
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.blobs_copied, 4, "{report:?}");
    assert_eq!(
        *blobs.lock().unwrap(),
        needed.iter().cloned().collect::<HashSet<_>>(),
        "every blob uploaded"
    );
    let seen = fake.requests();
    tag_put_is_last(&seen, "v1");
    assert!(
        seen.iter()
            .filter(|r| r.method == "PUT" && r.path.contains("/manifests/"))
            .all(|r| r.path.ends_with("/manifests/v1")
                || r.path
                    .ends_with(&format!("/manifests/{}", manifest.digest()))),
        "the probe goes by digest"
    );

    // put_manifest_with_blobs (rebase): every blob checked and supplied, then the tag.
    let blobs = Arc::new(Mutex::new(HashSet::new()));
    let fake = Fake::start(blob_keeping_registry(
        Arc::clone(&blobs),
        needed.clone(),
        |_| 201,
    ))
    .await;
    let dst = repo_of(&fake);
    let digests: Vec<Digest> = needed.iter().map(|d| d.parse().unwrap()).collect();
    let calls = Mutex::new(Vec::new());
    let done = put_manifest_with_blobs(&dst, &manifest, Some("v2"), &digests, |i, known| {
        calls.lock().unwrap().push((i, known));
        let (dst, blobs, d) = (&dst, &blobs, digests[i].clone());
        async move {
            if !known && dst.blob_exists(&d).await? {
                return Ok(BlobCopy::Present);
            }
            blobs.lock().unwrap().insert(d.to_string());
            Ok(BlobCopy::Copied)
        }
    })
    .await
    .unwrap();
    assert_eq!(done, vec![BlobCopy::Copied; 4]);
    assert_eq!(
        *calls.lock().unwrap(),
        (0..4).map(|i| (i, false)).collect::<Vec<_>>(),
        "each blob checked, none taken as known missing"
    );
    tag_put_is_last(&fake.requests(), "v2");
}

#[tokio::test]
async fn a_probe_answered_with_a_server_error_is_sent_once() {
    let t = tempfile::tempdir().unwrap();
    let (src, manifest) = image_of_layers(&t.path().join("src"), 2).await;
    let blobs = Arc::new(Mutex::new(HashSet::new()));
    let fake = Fake::start(blob_keeping_registry(
        Arc::clone(&blobs),
        blobs_of(&manifest),
        |lacking| if lacking > 0 { 500 } else { 201 },
    ))
    .await;
    let report = copy_image(
        &src,
        &ManifestRef::Tag("v1".into()),
        &repo_of(&fake),
        Some("v1"),
        &CopyOptions::default(),
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.blobs_copied, 3);
    let seen = fake.requests();
    let probes = seen
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/manifests/sha256:"))
        .count();
    assert_eq!(probes, 1, "the probe is not tried again: {seen:#?}");
    tag_put_is_last(&seen, "v1");

    // A tag ociup would refuse is refused before any request.
    let fake = Fake::start(|_| Reply::new(500)).await;
    let err = copy_image(
        &src,
        &ManifestRef::Tag("v1".into()),
        &repo_of(&fake),
        Some("not a tag"),
        &CopyOptions::default(),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not a tag"), "{err}");
    assert!(fake.requests().is_empty(), "no request");
}

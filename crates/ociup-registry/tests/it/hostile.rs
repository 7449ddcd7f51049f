//! Answers a real registry will not give, from the fake server: each gets the right behaviour,
//! and nothing unverified reaches a store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ociup_core::Digest;
use ociup_core::layout::OciLayout;
use ociup_core::store::{ManifestRef, Store, copy_blob};
use ociup_registry::{
    Client, ClientOptions, Credential, Credentials, Reference, Repository, RetryPolicy,
};
use tokio::io::AsyncReadExt;

use crate::fake::{Fake, Reply, Seen};

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

fn client_for(host: &str, credentials: Credentials) -> Client {
    Client::new(ClientOptions {
        credentials,
        insecure: vec![host.to_owned()],
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(5),
        },
        ..ClientOptions::default()
    })
    .unwrap()
}

fn repo(fake: &Fake) -> Repository {
    client_for(&fake.host, Credentials::anonymous())
        .repository(&Reference::parse(&format!("{}/test/x:v1", fake.host)).unwrap())
}

/// A repository of `fake` whose uploads stream in one PATCH past 1,000 bytes and get one retry.
fn resuming_repo(fake: &Fake, name: &str) -> Repository {
    Client::new(ClientOptions {
        insecure: vec![fake.host.clone()],
        chunk_size: 1000,
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        },
        ..ClientOptions::default()
    })
    .unwrap()
    .repository(&Reference::parse(&format!("{}/{name}", fake.host)).unwrap())
}

fn registry_error(e: &ociup_core::Error) -> &ociup_registry::Error {
    match e {
        ociup_core::Error::Backend(b) => b.downcast_ref().expect("a registry error"),
        other => panic!("expected a registry error, got {other:?}"),
    }
}

/// Basic credentials (`user`, `secret`) for `host` only.
fn user_secret(host: &str) -> Credentials {
    Credentials::anonymous().with(
        host.to_owned(),
        Credential::Basic {
            username: "user".into(),
            password: "secret".into(),
        },
    )
}

/// A registry that wants Basic credentials, then redirects every request to `location`.
async fn redirecting_registry(location: String) -> Fake {
    Fake::start(move |req: &Seen| match req.headers.get("authorization") {
        None => Reply::new(401).header("WWW-Authenticate", r#"Basic realm="fake""#),
        Some(_) => Reply::new(307).header("Location", &location),
    })
    .await
}

fn empty_layout() -> (tempfile::TempDir, OciLayout) {
    let t = tempfile::tempdir().unwrap();
    let l = OciLayout::open_or_create(t.path().join("l")).unwrap();
    (t, l)
}

fn blob_files(l: &OciLayout) -> usize {
    walk(l.root())
        .iter()
        .filter(|p| p.contains("blobs/"))
        .count()
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn a_wrong_digest_header_is_refused() {
    let fake = Fake::start(|_| {
        Reply::new(200)
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .header(
                "Docker-Content-Digest",
                &Digest::sha256(b"other").to_string(),
            )
            .body(MANIFEST)
    })
    .await;
    let err = repo(&fake)
        .get_manifest(&ManifestRef::Tag("v1".into()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Docker-Content-Digest says"),
        "{err}"
    );

    // By digest, a body that hashes to something else is refused too.
    let want = Digest::sha256(b"what we asked for");
    let err = repo(&fake)
        .get_manifest(&ManifestRef::Digest(want.clone()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");

    let (_t, layout) = empty_layout();
    let copied = ociup_core::copy::copy_image(
        &repo(&fake),
        &ManifestRef::Tag("v1".into()),
        &layout,
        Some("v1"),
        &Default::default(),
        &|_| {},
    )
    .await;
    assert!(copied.is_err());
    assert!(layout.index_entries().unwrap().is_empty(), "nothing tagged");
    assert_eq!(blob_files(&layout), 0, "nothing stored");
}

#[tokio::test]
async fn blobs_shorter_or_longer_than_announced_never_reach_a_store() {
    let data = b"0123456789".repeat(100);
    let digest = Digest::sha256(&data);
    for (label, served) in [
        ("short", data[..900].to_vec()),
        ("long", [&data[..], b"extra"].concat()),
    ] {
        let served2 = served.clone();
        let fake = Fake::start(move |req: &Seen| match req.method.as_str() {
            "GET" => Reply::new(200).body(served2.clone()),
            _ => Reply::new(404),
        })
        .await;
        let mut reader = repo(&fake)
            .get_blob(&digest, data.len() as u64)
            .await
            .unwrap();
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).await.unwrap_err();
        let err = ociup_core::Error::from_io("reading", err);
        assert!(
            matches!(err, ociup_core::Error::SizeMismatch { .. }),
            "{label}: {err}"
        );

        let (_t, layout) = empty_layout();
        let err = copy_blob(&repo(&fake), &layout, &digest, data.len() as u64)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("size mismatch"), "{label}: {err}");
        assert_eq!(
            blob_files(&layout),
            0,
            "{label}: no blob, no temporary file"
        );
    }
}

#[tokio::test]
async fn an_html_error_page_and_registry_error_codes_are_reported() {
    let fake = Fake::start(|req: &Seen| {
        if req.path.contains("/manifests/") {
            Reply::new(403)
                .header("Content-Type", "text/html")
                .body("<html><head><title>Access Denied by proxy</title></head><body>no</body></html>")
        } else {
            Reply::new(404)
                .header("Content-Type", "application/json")
                .body(r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#)
        }
    })
    .await;
    let err = repo(&fake)
        .get_manifest(&ManifestRef::Tag("v1".into()))
        .await
        .unwrap_err();
    let reg = registry_error(&err);
    assert_eq!(reg.status(), Some(403));
    assert!(!reg.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("HTML page") && text.contains("Access Denied by proxy"),
        "{text}"
    );
    assert!(
        text.contains(&format!("http://{}/v2/test/x/manifests/v1", fake.host)),
        "{text}"
    );

    let err = repo(&fake).list_tags().await;
    // tags/list 404 means no tags; a blob GET 404 is a clear not-found.
    assert_eq!(err.unwrap(), Vec::<String>::new());
    let err = match repo(&fake).get_blob(&Digest::sha256(b"x"), 1).await {
        Err(e) => e,
        Ok(_) => panic!("a 404 blob must fail"),
    };
    assert!(
        matches!(err, ociup_core::Error::BlobNotFound { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn upload_locations_relative_and_absolute() {
    for absolute in [false, true] {
        let host = Arc::new(Mutex::new(String::new()));
        let h = Arc::clone(&host);
        let fake = Fake::start(
            move |req: &Seen| match (req.method.as_str(), req.path.as_str()) {
                ("HEAD", _) => Reply::new(404),
                ("POST", _) => {
                    let loc = "/v2/test/x/blobs/uploads/session-1?state=abc";
                    let loc = if absolute {
                        format!("http://{}{loc}", h.lock().unwrap())
                    } else {
                        loc.to_owned()
                    };
                    Reply::new(202).header("Location", &loc)
                }
                ("PUT", p)
                    if p.starts_with("/v2/test/x/blobs/uploads/session-1?state=abc&digest=") =>
                {
                    Reply::new(201).header(
                        "Docker-Content-Digest",
                        &Digest::sha256(&req.body).to_string(),
                    )
                }
                _ => Reply::new(400),
            },
        )
        .await;
        *host.lock().unwrap() = fake.host.clone();
        let data = b"layer bytes".to_vec();
        let digest = Digest::sha256(&data);
        repo(&fake)
            .put_blob(&digest, data.len() as u64, &data[..])
            .await
            .unwrap();
        let put = fake
            .requests()
            .into_iter()
            .find(|r| r.method == "PUT")
            .expect("a PUT");
        assert_eq!(put.body, data, "absolute={absolute}");
        assert!(
            put.path
                .ends_with(&format!("digest=sha256%3A{}", digest.hex())),
            "{}",
            put.path
        );
    }
}

#[tokio::test]
async fn retry_after_on_429_and_500_then_success() {
    for (status, retry_after) in [(429, Some("1")), (500, None)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let fake = Fake::start(move |_| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                let r = Reply::new(status);
                match retry_after {
                    Some(s) => r.header("Retry-After", s),
                    None => r,
                }
            } else {
                Reply::new(200)
                    .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                    .body(MANIFEST)
            }
        })
        .await;
        let started = Instant::now();
        let raw = repo(&fake)
            .get_manifest(&ManifestRef::Tag("v1".into()))
            .await
            .unwrap();
        assert_eq!(raw.bytes(), MANIFEST);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{status}: one retry");
        if retry_after.is_some() {
            assert!(
                started.elapsed() >= Duration::from_millis(950),
                "Retry-After honoured"
            );
        }
    }
    // A storm that never ends: bounded attempts, then the error, marked retryable.
    let fake = Fake::start(|_| Reply::new(503)).await;
    let err = repo(&fake)
        .get_manifest(&ManifestRef::Tag("v1".into()))
        .await
        .unwrap_err();
    assert!(registry_error(&err).is_retryable());
    assert_eq!(fake.requests().len(), 4, "max_attempts");
}

#[tokio::test]
async fn a_dropped_download_resumes_with_range() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256(&data);
    let d = data.clone();
    let fake = Fake::start(move |req: &Seen| match req.headers.get("range") {
        None => Reply {
            status: 200,
            body: d.clone(),
            cut_after: Some(70_000),
            ..Reply::default()
        },
        Some(r) => {
            let from: usize = r
                .trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse()
                .unwrap();
            Reply::new(206)
                .header(
                    "Content-Range",
                    &format!("bytes {from}-{}/{}", d.len() - 1, d.len()),
                )
                .body(d[from..].to_vec())
        }
    })
    .await;
    let (_t, layout) = empty_layout();
    copy_blob(&repo(&fake), &layout, &digest, data.len() as u64)
        .await
        .unwrap();
    // Copied blobs are staged until something names them; read by path, it is named first.
    layout.settle().await.unwrap();
    assert_eq!(std::fs::read(layout.blob_path(&digest)).unwrap(), data);
    let gets = fake.requests();
    assert_eq!(gets.len(), 2);
    let range = gets[1]
        .headers
        .get("range")
        .expect("the second GET asks for a range");
    let from: usize = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from > 0 && from <= 70_000, "{range}");
}

#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_host() {
    let data = b"blob stored elsewhere".to_vec();
    let digest = Digest::sha256(&data);
    let d = data.clone();
    let storage = Fake::start(move |_| Reply::new(200).body(d.clone())).await;
    // Same machine, other host name: a different origin as far as HTTP is concerned.
    let elsewhere = format!(
        "http://localhost:{}/bucket/blob",
        storage.host.rsplit(':').next().unwrap()
    );
    let registry = redirecting_registry(elsewhere).await;
    let creds = user_secret(&registry.host);
    let client = client_for(&registry.host, creds);
    let repo = client.repository(&Reference::parse(&format!("{}/test/x", registry.host)).unwrap());
    let mut out = Vec::new();
    repo.get_blob(&digest, data.len() as u64)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert_eq!(out, data);
    let at_registry = registry.requests();
    assert!(
        at_registry
            .last()
            .unwrap()
            .headers
            .contains_key("authorization")
    );
    let at_storage = storage.requests();
    assert_eq!(at_storage.len(), 1);
    assert!(
        !at_storage[0].headers.contains_key("authorization"),
        "credentials leaked across hosts"
    );
}

#[tokio::test]
async fn tag_lists_follow_link_pagination() {
    let fake = Fake::start(|req: &Seen| {
        if req.path.contains("last=b") {
            Reply::new(200).body(r#"{"name":"test/x","tags":["c"]}"#)
        } else {
            Reply::new(200)
                .header("Link", r#"</v2/test/x/tags/list?n=2&last=b>; rel="next""#)
                .body(r#"{"name":"test/x","tags":["b","a"]}"#)
        }
    })
    .await;
    assert_eq!(repo(&fake).list_tags().await.unwrap(), ["a", "b", "c"]);
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_failed_upload_resumes_from_the_registry_range() {
    let data: Vec<u8> = (0..2500u32).map(|i| (i % 253) as u8).collect();
    let digest = Digest::sha256(&data);
    let fake = Fake::start(|req: &Seen| {
        let range = req
            .headers
            .get("content-range")
            .cloned()
            .unwrap_or_default();
        match req.method.as_str() {
            "HEAD" => Reply::new(404),
            "POST" => Reply::new(202).header("Location", "/v2/test/x/blobs/uploads/s1"),
            // The streamed PATCH "fails" every time it starts at 0, after the registry kept 100
            // bytes of it.
            "PATCH" if range.starts_with("0-") => Reply::new(500),
            "GET" => Reply::new(204)
                .header("Range", "0-99")
                .header("Location", "/v2/test/x/blobs/uploads/s2"),
            "PATCH" => Reply::new(202).header("Location", "/v2/test/x/blobs/uploads/s3"),
            "PUT" => Reply::new(201),
            _ => Reply::new(400),
        }
    })
    .await;
    let repo = resuming_repo(&fake, "test/x");
    repo.put_blob(&digest, data.len() as u64, &data[..])
        .await
        .unwrap();
    let seen = fake.requests();
    let patches: Vec<(&str, &str, &[u8])> = seen
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| {
            (
                r.path.as_str(),
                r.headers["content-range"].as_str(),
                &r.body[..],
            )
        })
        .collect();
    // The whole blob in one request, then the rest from where the registry stopped, at the URL
    // it gave: not from zero.
    assert_eq!(
        patches,
        [
            ("/v2/test/x/blobs/uploads/s1", "0-2499", &data[..]),
            ("/v2/test/x/blobs/uploads/s2", "100-2499", &data[100..]),
        ]
    );
    let puts: Vec<&str> = seen
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(
        puts,
        [format!(
            "/v2/test/x/blobs/uploads/s3?digest={}",
            digest.to_string().replace(':', "%3A")
        )]
    );

    // A source that does not hash to its digest is never committed, resumed or not.
    let before = fake.requests().len();
    let mut wrong = data.clone();
    wrong[2000] ^= 1;
    let err = repo
        .put_new_blob(&digest, data.len() as u64, &wrong[..])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ociup_core::Error::DigestMismatch { .. }),
        "{err}"
    );
    assert!(
        fake.requests()[before..].iter().all(|r| r.method != "PUT"),
        "no commit"
    );
}

#[tokio::test]
async fn credentials_do_not_go_to_an_upload_location_on_another_host() {
    let elsewhere = Fake::start(|req: &Seen| match req.method.as_str() {
        "PUT" => Reply::new(201),
        _ => Reply::new(400),
    })
    .await;
    let target = format!(
        "http://localhost:{}/uploads/s1",
        elsewhere.host.rsplit(':').next().unwrap()
    );
    let registry = Fake::start(move |req: &Seen| {
        match (req.method.as_str(), req.headers.get("authorization")) {
            (_, None) => Reply::new(401).header("WWW-Authenticate", r#"Basic realm="fake""#),
            ("HEAD", Some(_)) => Reply::new(404),
            ("POST", Some(_)) => Reply::new(202).header("Location", &target),
            _ => Reply::new(400),
        }
    })
    .await;
    let creds = user_secret(&registry.host);
    let repo = client_for(&registry.host, creds)
        .repository(&Reference::parse(&format!("{}/test/x", registry.host)).unwrap());
    let data = b"blob".to_vec();
    repo.put_blob(&Digest::sha256(&data), 4, &data[..])
        .await
        .unwrap();
    let put = elsewhere
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .expect("the upload went there");
    assert!(
        !put.headers.contains_key("authorization"),
        "credentials sent to another host"
    );
    assert_eq!(put.body, data);
}

/// A registry that refuses a manifest while a blob it references is missing, naming the missing
/// blobs in the error detail as `detail` says (or not at all).
fn refusing_registry(
    present: Arc<Mutex<Vec<String>>>,
    needed: Vec<String>,
    detail: fn(&str) -> String,
) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |req: &Seen| {
        let have = present.lock().unwrap().clone();
        if req.method == "HEAD" && req.path.contains("/blobs/") {
            let d = req.path.rsplit('/').next().unwrap();
            return Reply::new(if have.iter().any(|h| h == d) {
                200
            } else {
                404
            })
            .header("Content-Length", "1");
        }
        if req.method == "PUT" && req.path.contains("/manifests/") {
            let missing: Vec<String> = needed
                .iter()
                .filter(|n| !have.contains(n))
                .map(|n| {
                    format!(
                        r#"{{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry"{}}}"#,
                        detail(n)
                    )
                })
                .collect();
            if missing.is_empty() {
                return Reply::new(201).header(
                    "Docker-Content-Digest",
                    &Digest::sha256(&req.body).to_string(),
                );
            }
            return Reply::new(400)
                .header("Content-Type", "application/json")
                .body(format!(r#"{{"errors":[{}]}}"#, missing.join(",")));
        }
        Reply::new(500)
    }
}

/// Supplies `blobs[i]` to the fake registry, checking first unless told it is missing; records
/// each call as (index, known_missing).
async fn supply_to(
    repo: &Repository,
    present: &Mutex<Vec<String>>,
    calls: &Mutex<Vec<(usize, bool)>>,
    blobs: &[Digest],
    i: usize,
    known_missing: bool,
) -> ociup_core::Result<ociup_core::store::BlobCopy> {
    calls.lock().unwrap().push((i, known_missing));
    if !known_missing && repo.blob_exists(&blobs[i]).await? {
        return Ok(ociup_core::store::BlobCopy::Present);
    }
    present.lock().unwrap().push(blobs[i].to_string());
    Ok(ociup_core::store::BlobCopy::Copied)
}

#[tokio::test]
async fn a_manifest_goes_first_and_only_the_blobs_the_registry_names_are_supplied() {
    use ociup_core::store::{BlobCopy, put_manifest_with_blobs};
    let doc = ociup_core::document::RawDocument::new(
        MANIFEST.to_vec(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let blobs = [Digest::sha256(b"a"), Digest::sha256(b"b")];
    let needed: Vec<String> = blobs.iter().map(ToString::to_string).collect();
    // How registries spell the detail: the digest itself (Distribution), an object holding it,
    // or nothing at all (then every blob is checked, as with --check-blobs-first).
    type Spelling = (&'static str, fn(&str) -> String, bool);
    let spellings: [Spelling; 3] = [
        ("string", |d| format!(r#","detail":"{d}""#), true),
        (
            "object",
            |d| format!(r#","detail":{{"digest":"{d}"}}"#),
            true,
        ),
        ("none", |_| String::new(), false),
    ];
    for (name, detail, named) in spellings {
        let present = Arc::new(Mutex::new(vec![needed[0].clone()]));
        let fake = Fake::start(refusing_registry(
            Arc::clone(&present),
            needed.clone(),
            detail,
        ))
        .await;
        let repo = repo(&fake);
        assert!(repo.rejects_missing_blobs());
        let calls = Mutex::new(Vec::new());
        let done = put_manifest_with_blobs(&repo, &doc, Some("t"), &blobs, |i, missing| {
            supply_to(&repo, &present, &calls, &blobs, i, missing)
        })
        .await
        .unwrap();
        assert_eq!(done, vec![BlobCopy::Present, BlobCopy::Copied], "{name}");
        let seen: Vec<String> = fake.requests().iter().map(|r| r.method.clone()).collect();
        if named {
            // Only the missing blob, known missing: no HEAD at all.
            assert_eq!(*calls.lock().unwrap(), vec![(1, true)], "{name}");
            assert_eq!(seen, ["PUT", "PUT"], "{name}");
        } else {
            assert_eq!(
                *calls.lock().unwrap(),
                vec![(0, false), (1, false)],
                "{name}"
            );
            assert_eq!(seen.iter().filter(|m| *m == "HEAD").count(), 2, "{name}");
            assert_eq!(seen.iter().filter(|m| *m == "PUT").count(), 2, "{name}");
        }
    }

    // A blob the caller does not know of stays missing: a clear error naming it, after the
    // caller's blobs were checked.
    let stranger = Digest::sha256(b"stranger");
    let present = Arc::new(Mutex::new(needed.clone()));
    let mut all = needed.clone();
    all.push(stranger.to_string());
    let fake = Fake::start(refusing_registry(Arc::clone(&present), all, |d| {
        format!(r#","detail":"{d}""#)
    }))
    .await;
    let repo = repo(&fake);
    let calls = Mutex::new(Vec::new());
    let err = put_manifest_with_blobs(&repo, &doc, Some("t"), &blobs, |i, missing| {
        supply_to(&repo, &present, &calls, &blobs, i, missing)
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ociup_core::Error::MissingBlobs { digests, .. } if digests == std::slice::from_ref(&stranger)),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&stranger.to_string()) && text.contains("lacks a blob"),
        "{text}"
    );
}

/// A registry on plain HTTP that sends blob downloads to storage on HTTPS: the plain-HTTP side
/// loads no root certificates, so the HTTPS hop is made by the client that does (here with the
/// harness CA), and without the registry's credentials.
#[tokio::test]
async fn a_plain_http_registry_may_redirect_a_download_to_https() {
    use crate::support::{AuthMode, RegistryOptions, TestRegistry};
    let storage = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: true,
    });
    let data = b"blob kept behind TLS".to_vec();
    let digest = Digest::sha256(&data);
    let tls_client = Client::new(ClientOptions {
        ca_file: storage.ca_pem(),
        ..ClientOptions::default()
    })
    .unwrap();
    let stored =
        tls_client.repository(&Reference::parse(&format!("{}/bucket/x", storage.host())).unwrap());
    stored
        .put_blob(&digest, data.len() as u64, &data[..])
        .await
        .unwrap();
    let target = format!("{}/v2/bucket/x/blobs/{digest}", storage.base_url());
    let registry = redirecting_registry(target).await;
    let creds = user_secret(&registry.host);
    let client = Client::new(ClientOptions {
        credentials: creds,
        insecure: vec![registry.host.clone()],
        ca_file: storage.ca_pem(),
        ..ClientOptions::default()
    })
    .unwrap();
    let repo = client.repository(&Reference::parse(&format!("{}/test/x", registry.host)).unwrap());
    let mut out = Vec::new();
    repo.get_blob(&digest, data.len() as u64)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert_eq!(out, data);
    assert_eq!(
        storage.requests("GET", &format!("/v2/bucket/x/blobs/{digest}")),
        1
    );
    // The storage's access log names the user of a request that carried Basic credentials;
    // this one carried none.
    let log = storage.log();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("GET /v2/bucket/x/blobs/{digest}")))
        .unwrap();
    assert!(!line.contains("user"), "{line}");
}

/// Distribution answers `Range: 0-0` for an upload that holds no byte yet: the resume starts at
/// 0, not 1 (which it would refuse, or append after a missing byte). A registry that asks for a
/// huge minimum chunk does not make the upload hold the blob in memory for one PUT.
#[tokio::test]
async fn a_resume_after_nothing_was_kept_starts_at_zero() {
    let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256(&data);
    let failed_once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = failed_once.clone();
    let fake = Fake::start(move |req: &Seen| match req.method.as_str() {
        "HEAD" => Reply::new(404),
        "POST" => Reply::new(202)
            .header("Location", "/v2/test/z/blobs/uploads/s1")
            .header("OCI-Chunk-Min-Length", "1099511627776"),
        "PATCH" if !flag.swap(true, std::sync::atomic::Ordering::SeqCst) => Reply::new(500),
        "GET" => Reply::new(204)
            .header("Range", "0-0")
            .header("Location", "/v2/test/z/blobs/uploads/s2"),
        "PATCH" => Reply::new(202).header("Location", "/v2/test/z/blobs/uploads/s3"),
        "PUT" => Reply::new(201),
        _ => Reply::new(400),
    })
    .await;
    let repo = resuming_repo(&fake, "test/z");
    repo.put_blob(&digest, data.len() as u64, &data[..])
        .await
        .unwrap();
    let seen = fake.requests();
    let patches: Vec<(&str, &str, usize)> = seen
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| {
            (
                r.path.as_str(),
                r.headers["content-range"].as_str(),
                r.body.len(),
            )
        })
        .collect();
    assert!(failed_once.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(
        patches,
        [
            ("/v2/test/z/blobs/uploads/s1", "0-2499", 2500),
            ("/v2/test/z/blobs/uploads/s2", "0-2499", 2500),
        ],
        "streamed PATCHes (not one PUT of the whole blob), the second from byte 0"
    );
}

/// A redirect to another port of the same host is another origin: the registry's credentials
/// stay behind. A redirect within the registry keeps them (the control: the fake sees them).
#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_port() {
    let data = b"blob on another port".to_vec();
    let digest = Digest::sha256(&data);
    let d = data.clone();
    let storage = Fake::start(move |_| Reply::new(200).body(d.clone())).await;
    // Same host (127.0.0.1) and scheme, only the port differs.
    let registry = redirecting_registry(format!("http://{}/bucket/blob", storage.host)).await;
    let client = client_for(&registry.host, user_secret(&registry.host));
    let repo = client.repository(&Reference::parse(&format!("{}/test/x", registry.host)).unwrap());
    let mut out = Vec::new();
    repo.get_blob(&digest, data.len() as u64)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert_eq!(out, data);
    let at_storage = storage.requests();
    assert_eq!(at_storage.len(), 1);
    assert!(
        !at_storage[0].headers.contains_key("authorization"),
        "credentials followed the redirect to another port"
    );

    // Within the registry's own origin they are kept.
    let d = data.clone();
    let same = Fake::start(move |req: &Seen| {
        match (req.path.as_str(), req.headers.get("authorization")) {
            (_, None) => Reply::new(401).header("WWW-Authenticate", r#"Basic realm="fake""#),
            ("/elsewhere/blob", Some(_)) => Reply::new(200).body(d.clone()),
            (_, Some(_)) => Reply::new(307).header("Location", "/elsewhere/blob"),
        }
    })
    .await;
    let client = client_for(&same.host, user_secret(&same.host));
    let repo = client.repository(&Reference::parse(&format!("{}/test/x", same.host)).unwrap());
    let mut out = Vec::new();
    repo.get_blob(&digest, data.len() as u64)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert_eq!(out, data);
    let last = same.requests().pop().unwrap();
    assert_eq!(last.path, "/elsewhere/blob");
    assert!(last.headers.contains_key("authorization"));
}

/// A registry that takes an upload's PATCH and then stops reading its body: the upload fails
/// after the idle timeout (here 1 s) with a timeout, instead of hanging until the answer
/// deadline of the whole blob (a second per 16 KiB: over 17 minutes for these 16 MiB).
#[tokio::test]
async fn an_upload_the_registry_stops_reading_times_out() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let patches = Arc::new(AtomicUsize::new(0));
    let seen_patches = Arc::clone(&patches);
    let server = tokio::spawn(async move {
        // Connections whose PATCH body is never read, held open.
        let mut held = Vec::new();
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if sock.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let reply: &[u8] = match head.split(|b| *b == b' ').next().unwrap_or(b"") {
                b"PATCH" => {
                    seen_patches.fetch_add(1, Ordering::SeqCst);
                    held.push(sock);
                    continue;
                }
                b"POST" => {
                    b"HTTP/1.1 202 Accepted\r\nLocation: /v2/test/s/blobs/uploads/u1\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n"
                }
                _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            };
            let _ = sock.write_all(reply).await;
        }
    });
    let client = Client::new(ClientOptions {
        insecure: vec![host.clone()],
        chunk_size: 64 * 1024,
        idle_timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            max_attempts: 1,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        },
        ..ClientOptions::default()
    })
    .unwrap();
    let repo = client.repository(&Reference::parse(&format!("{host}/test/s")).unwrap());
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256(&data);
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        repo.put_blob(&digest, data.len() as u64, &data[..]),
    )
    .await
    .expect("the upload hung")
    .unwrap_err();
    let took = started.elapsed();
    server.abort();
    assert_eq!(patches.load(Ordering::SeqCst), 1);
    let msg = err.to_string();
    assert!(
        msg.contains("PATCH") && msg.contains("took none of the upload for 1 s"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

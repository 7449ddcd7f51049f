//! Registries and token servers that answer without end, go silent, trickle, send ociup where
//! it must not go or echo whatever they like: every body is capped, every wait bounded, no
//! credential travels in clear text off this machine, and errors quote servers only briefly.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use ociup_core::Digest;
use ociup_core::document::RawDocument;
use ociup_core::store::ManifestRef;
// The prelude brings the Store trait, for the repositories' methods.
use ociup_registry::prelude::*;
use ociup_registry::{Client, ClientOptions, Credential, Credentials, Reference, RetryPolicy};
use tokio::io::AsyncReadExt;

use crate::fake::{Fake, Pace, Reply, Seen};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A short idle timeout, two attempts, quick retries.
fn options(host: &str) -> ClientOptions {
    ClientOptions {
        insecure: vec![host.to_owned()],
        idle_timeout: Duration::from_millis(300),
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        },
        download_resumes: 1,
        ..ClientOptions::default()
    }
}

fn repo_with(opts: ClientOptions, host: &str) -> ociup_registry::Repository {
    Client::new(opts)
        .unwrap()
        .repository(&Reference::parse(&format!("{host}/test/x:v1")).unwrap())
}

fn user_secret(host: &str) -> Credentials {
    Credentials::anonymous().with(
        host.to_owned(),
        Credential::Basic {
            username: "user".into(),
            password: "secret".into(),
        },
    )
}

/// Fails the test instead of hanging it when ociup waits for ever (as it did).
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after 60 s"))
}

/// The far end's limit of an endless body: far above any cap, small enough to pass quickly.
const ENDLESS: u64 = 256 * 1024 * 1024;

#[tokio::test]
async fn an_endless_error_body_is_cut_at_the_cap() {
    let fake = Fake::start(|_| Reply::new(403).pace(Pace::Endless(ENDLESS))).await;
    let err = within(
        "an endless error body",
        repo_with(options(&fake.host), &fake.host).get_manifest(&ManifestRef::Tag("v1".into())),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("403"), "{text}");
    assert!(text.len() < 1000, "a short excerpt: {} bytes", text.len());
    // Reading stopped at the cap: the server could not send it all (it would have, 256 MiB,
    // had the body been read whole, as it was).
    assert!(
        fake.bytes_sent() < ENDLESS,
        "the whole endless body was read: {}",
        fake.bytes_sent()
    );
}

#[tokio::test]
async fn an_endless_token_answer_is_refused_past_the_cap() {
    let token = Fake::start(|_| Reply::new(200).pace(Pace::Endless(ENDLESS))).await;
    let realm = format!("http://{}/token", token.host);
    let registry = Fake::start(move |_: &Seen| {
        Reply::new(401).header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="fake""#),
        )
    })
    .await;
    let err = within(
        "an endless token answer",
        repo_with(options(&registry.host), &registry.host)
            .get_manifest(&ManifestRef::Tag("v1".into())),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("token answer is larger than") && text.contains("1048576"),
        "{text}"
    );
    assert!(token.bytes_sent() < ENDLESS, "{}", token.bytes_sent());
}

#[tokio::test]
async fn an_endless_manifest_or_tag_list_is_refused_past_the_cap() {
    let fake = Fake::start(|_| {
        Reply::new(200)
            .header("Content-Type", MANIFEST_TYPE)
            .pace(Pace::Endless(ENDLESS))
    })
    .await;
    let repo = repo_with(options(&fake.host), &fake.host);
    let err = within(
        "an endless manifest",
        repo.get_manifest(&ManifestRef::Tag("v1".into())),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("manifest is larger than"), "{err}");
    let err = within("an endless tag list", repo.list_tags())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tag list is larger than"), "{err}");
    assert!(fake.bytes_sent() < ENDLESS);
}

#[tokio::test]
async fn a_registry_that_never_answers_times_out_after_the_retries() {
    let fake = Fake::start(|_| Reply::new(200).pace(Pace::Silent)).await;
    let err = within(
        "a silent registry",
        repo_with(options(&fake.host), &fake.host).get_manifest(&ManifestRef::Tag("v1".into())),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("timed out: no answer within 0.3 s"), "{text}");
    assert_eq!(fake.requests().len(), 2, "tried again once, then gave up");
}

#[tokio::test]
async fn a_manifest_that_trickles_times_out_after_the_retries() {
    let fake = Fake::start(|_| {
        Reply::new(200)
            .header("Content-Type", MANIFEST_TYPE)
            .body(vec![b' '; 100_000])
            .pace(Pace::Trickle(Duration::from_millis(5)))
    })
    .await;
    let err = within(
        "a trickling registry",
        repo_with(options(&fake.host), &fake.host).get_manifest(&ManifestRef::Tag("v1".into())),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("the registry sent less than 1024 bytes in 0.3 s"),
        "{text}"
    );
    assert_eq!(fake.requests().len(), 2, "read again once, then gave up");
}

/// A blob served by a registry whose first answer stalls after `stall_at` bytes; asked again
/// with `Range`, it sends the rest when `recovers`, else stalls again.
async fn stalling_blob_server(data: Vec<u8>, stall_at: usize, recovers: bool) -> Fake {
    Fake::start(move |req: &Seen| match req.headers.get("range") {
        Some(r) if recovers => {
            let from: usize = r
                .trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse()
                .unwrap();
            Reply::new(206)
                .header(
                    "Content-Range",
                    &format!("bytes {from}-{}/{}", data.len() - 1, data.len()),
                )
                .body(data[from..].to_vec())
        }
        _ => Reply::new(200)
            .body(data.clone())
            .pace(Pace::StallAfter(stall_at)),
    })
    .await
}

#[tokio::test]
async fn a_blob_that_stalls_after_its_headers_is_resumed_or_fails_clearly() {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let digest = Digest::sha256(&data);

    let fake = stalling_blob_server(data.clone(), 100_000, true).await;
    let repo = repo_with(options(&fake.host), &fake.host);
    let mut out = Vec::new();
    within("a stalled blob", async {
        repo.get_blob(&digest, data.len() as u64)
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
    })
    .await
    .unwrap();
    assert_eq!(out, data);
    let seen = fake.requests();
    assert_eq!(seen.len(), 2, "one resume");
    let range = seen[1].headers.get("range").expect("resumed with Range");
    assert!(
        range.starts_with("bytes=") && range != "bytes=0-",
        "{range}"
    );

    // Stalling every time: resumes run out, then a clear error.
    let fake = stalling_blob_server(data.clone(), 100_000, false).await;
    let repo = repo_with(options(&fake.host), &fake.host);
    let err = within("a blob stalling for ever", async {
        let mut out = Vec::new();
        repo.get_blob(&digest, data.len() as u64)
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
    })
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("downloading blob {digest}"))
            && text.contains("less than 1024 bytes in 0.3 s"),
        "{text}"
    );
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn credentials_go_in_clear_text_only_to_a_loopback_or_named_realm() {
    let token = Fake::start(|_| Reply::new(200).body(r#"{"token":"t"}"#)).await;
    let token_addr: SocketAddr = token.host.parse().unwrap();
    // A loopback registry whose realm names another host, in plain HTTP. (That host is
    // resolved to the fake token server here, so nothing leaves this machine either way.)
    let realm = format!("http://auth.example.test:{}/token", token_addr.port());
    let registry = Fake::start(move |req: &Seen| match req.headers.get("authorization") {
        Some(_) => Reply::new(200)
            .header("Content-Type", MANIFEST_TYPE)
            .body("{}"),
        None => Reply::new(401).header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="fake""#),
        ),
    })
    .await;
    let resolving = |credentials: Credentials, insecure: Vec<String>| ClientOptions {
        credentials,
        insecure,
        resolve: vec![("auth.example.test".into(), token_addr)],
        ..options(&registry.host)
    };
    let err = repo_with(
        resolving(user_secret(&registry.host), vec![registry.host.clone()]),
        &registry.host,
    )
    .get_manifest(&ManifestRef::Tag("v1".into()))
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("plain HTTP") && text.contains("not sent there in clear text"),
        "{text}"
    );
    assert!(
        token.requests().is_empty(),
        "the password went to the realm"
    );

    // Anonymous: nothing secret to send, the token is fetched.
    repo_with(
        resolving(Credentials::anonymous(), vec![registry.host.clone()]),
        &registry.host,
    )
    .get_manifest(&ManifestRef::Tag("v1".into()))
    .await
    .unwrap();
    assert_eq!(token.requests().len(), 1);
    assert!(!token.requests()[0].headers.contains_key("authorization"));

    // The realm's host named insecure: allowed.
    repo_with(
        resolving(
            user_secret(&registry.host),
            vec![registry.host.clone(), "auth.example.test".into()],
        ),
        &registry.host,
    )
    .get_manifest(&ManifestRef::Tag("v1".into()))
    .await
    .unwrap();
    assert_eq!(token.requests().len(), 2);
    assert!(token.requests()[1].headers.contains_key("authorization"));
}

/// Redirects and upload locations pointing at a cloud metadata service are refused before any
/// connection is made (the addresses below are never reached: the refusal comes first).
#[tokio::test]
async fn a_redirect_to_a_metadata_address_is_refused() {
    for target in [
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
    ] {
        let to = target.to_owned();
        let fake = Fake::start(move |req: &Seen| match req.method.as_str() {
            "GET" => Reply::new(307).header("Location", &to),
            "HEAD" => Reply::new(404),
            "POST" => Reply::new(202).header("Location", &to),
            _ => Reply::new(400),
        })
        .await;
        let repo = repo_with(options(&fake.host), &fake.host);
        let err = match repo.get_blob(&Digest::sha256(b"x"), 1).await {
            Err(e) => e,
            Ok(_) => panic!("{target}: followed"),
        };
        let text = err.to_string();
        assert!(
            text.contains("refusing to follow the registry"),
            "{target}: {text}"
        );
        assert_eq!(fake.requests().len(), 1, "{target}: not retried");

        let err = repo
            .put_blob(&Digest::sha256(b"x"), 1, &b"x"[..])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("refusing to follow the registry"),
            "{target}: {err}"
        );
    }
}

#[tokio::test]
async fn errors_quote_a_registry_only_briefly_and_cleanly() {
    let long = format!("\x1b[2J\x1b]0;owned\x07{}", "blah ".repeat(5000));
    let entries: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                r#"{{"code":"DENIED{i}","message":{}}}"#,
                serde_json::to_string(&format!("{long}{i}")).unwrap()
            )
        })
        .collect();
    let json = format!(r#"{{"errors":[{}]}}"#, entries.join(","));
    let text_body = format!("{long}\r\nSet-Cookie: x\r\n");
    let fake = Fake::start(move |req: &Seen| {
        if req.path.contains("/manifests/") {
            Reply::new(400)
                .header("Content-Type", "application/json")
                .body(json.clone())
        } else {
            Reply::new(400).body(text_body.clone())
        }
    })
    .await;
    let repo = repo_with(options(&fake.host), &fake.host);
    let err = repo
        .get_manifest(&ManifestRef::Tag("v1".into()))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.len() < 2000, "{} bytes", text.len());
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(text.contains("DENIED0"), "{text}");
    let err = repo.list_tags().await.unwrap_err();
    let text = err.to_string();
    assert!(text.len() < 500, "{} bytes", text.len());
    assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
}

#[tokio::test]
async fn a_manifest_over_the_read_cap_is_not_pushed() {
    let fake = Fake::start(|_| Reply::new(201)).await;
    let repo = repo_with(options(&fake.host), &fake.host);
    let cap = ociup_core::store::MAX_DOCUMENT_SIZE as usize;
    let mut big = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"a":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', cap));
    big.extend_from_slice(br#""}}"#);
    let doc = RawDocument::new(big, MANIFEST_TYPE);
    let err = repo.put_manifest(&doc, Some("v1")).await.unwrap_err();
    assert!(
        err.to_string().contains("larger than") && err.to_string().contains("reads back"),
        "{err}"
    );
    assert!(fake.requests().is_empty(), "a PUT was sent");
}

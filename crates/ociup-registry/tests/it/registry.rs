//! Against the real CNCF Distribution server: no auth, htpasswd basic auth, bearer tokens from
//! the harness's own token endpoint, and TLS with a CA the harness makes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ociup_core::Digest;
use ociup_core::copy::{CopyOptions, copy_image};
use ociup_core::layout::OciLayout;
use ociup_core::store::{ManifestRef, Store};
use ociup_registry::{Client, ClientOptions, Credential, Credentials, Reference, Repository};

use crate::support::{AuthMode, RegistryOptions, TestRegistry};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn client(reg: &TestRegistry, with_credentials: bool, opts: ClientOptions) -> Client {
    let mut credentials = Credentials::anonymous();
    if with_credentials && let Some((u, p)) = reg.credentials() {
        credentials = credentials.with(
            reg.host(),
            Credential::Basic {
                username: u,
                password: p,
            },
        );
    }
    Client::new(ClientOptions {
        credentials,
        ca_file: reg.ca_pem(),
        ..opts
    })
    .unwrap()
}

fn repo(c: &Client, reg: &TestRegistry, name: &str) -> Repository {
    c.repository(&Reference::parse(&format!("{}/{name}", reg.host())).unwrap())
}

fn layout(name: &str) -> OciLayout {
    OciLayout::open(fixtures().join(name)).unwrap()
}

fn tag(t: &str) -> ManifestRef {
    ManifestRef::Tag(t.into())
}

async fn push_multi(c: &Client, reg: &TestRegistry, name: &str) -> ociup_core::copy::CopyReport {
    copy_image(
        &layout("multi"),
        &tag("v1"),
        &repo(c, reg, name),
        Some("v1"),
        &CopyOptions::default(),
        &|_| {},
    )
    .await
    .unwrap()
}

/// Request lines of the registry's log whose method is `method` and URI contains `part`.
fn logged(reg: &TestRegistry, method: &str, part: &str) -> usize {
    reg.log()
        .lines()
        .filter(|l| l.contains("response completed"))
        .filter(|l| l.contains(&format!("http.request.method={method} ")))
        .filter(|l| l.contains(part))
        .count()
}

#[tokio::test]
async fn round_trip_without_auth_moves_only_what_is_missing() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let c = client(&reg, false, ClientOptions::default());
    let first = push_multi(&c, &reg, "base/multi").await;
    assert_eq!(first.manifests_written, 3, "index and two manifests");
    assert!(first.blobs_copied > 0);

    // Already there: one HEAD and nothing else.
    let before = c.requests_sent();
    let again = push_multi(&c, &reg, "base/multi").await;
    assert_eq!(
        c.requests_sent() - before,
        1,
        "one HEAD for a present image"
    );
    assert_eq!((again.manifests_written, again.blobs_copied), (0, 0));

    // Back to a layout: digest for digest.
    let t = tempfile::tempdir().unwrap();
    let back = OciLayout::open_or_create(t.path().join("back")).unwrap();
    let r = repo(&c, &reg, "base/multi");
    let report = copy_image(
        &r,
        &tag("v1"),
        &back,
        Some("v1"),
        &CopyOptions::default(),
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.digest, first.digest);
    for entry in std::fs::read_dir(fixtures().join("multi/blobs/sha256")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap();
        let copied = t.path().join("back/blobs/sha256").join(name);
        // Only v1's blobs travel; those that did are byte-identical.
        if copied.exists() {
            assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&copied).unwrap());
        }
    }
    assert_eq!(r.list_tags().await.unwrap(), ["v1"]);
    let d = r.resolve_tag("v1").await.unwrap();
    assert_eq!(d.digest().to_string(), first.digest);
    let err = r.resolve_tag("nope").await.unwrap_err();
    assert!(
        matches!(err, ociup_core::Error::TagNotFound { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn basic_auth_needs_the_credentials() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Basic,
        tls: false,
    });
    let anonymous = client(&reg, false, ClientOptions::default());
    let err = anonymous
        .repository(&Reference::parse(&format!("{}/x/y:v1", reg.host())).unwrap())
        .list_tags()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("401") && text.contains("UNAUTHORIZED"),
        "{text}"
    );
    let c = client(&reg, true, ClientOptions::default());
    push_multi(&c, &reg, "x/y").await;
    assert_eq!(repo(&c, &reg, "x/y").list_tags().await.unwrap(), ["v1"]);
    assert!(
        !text.contains(&reg.credentials().unwrap().1),
        "no password in errors"
    );
}

#[tokio::test]
async fn bearer_tokens_are_fetched_once_per_scope_set_and_reused() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Token,
        tls: false,
    });
    let c = client(&reg, true, ClientOptions::default());
    let report = push_multi(&c, &reg, "team/app").await;
    assert!(report.blobs_copied > 0);
    let fetched = reg.token_requests();
    assert!(
        fetched <= 2,
        "{fetched} tokens for one push: {:?}",
        reg.token_scopes()
    );
    assert!(c.requests_sent() > 10, "many requests shared those tokens");

    // Pull with the same client: its pull token (a new scope set) at most once more.
    let t = tempfile::tempdir().unwrap();
    let back = OciLayout::open_or_create(t.path().join("b")).unwrap();
    copy_image(
        &repo(&c, &reg, "team/app"),
        &tag("v1"),
        &back,
        Some("v1"),
        &CopyOptions::default(),
        &|_| {},
    )
    .await
    .unwrap();
    assert!(reg.token_requests() <= fetched + 1);

    // Anonymous: may pull (the harness grants pull), may not push.
    let anon = client(&reg, false, ClientOptions::default());
    let err = copy_image(
        &layout("base"),
        &tag("v2"),
        &repo(&anon, &reg, "team/app"),
        Some("v2"),
        &CopyOptions::default(),
        &|_| {},
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("401") || text.contains("403") || text.contains("DENIED"),
        "{text}"
    );
}

#[tokio::test]
async fn tls_with_the_harness_ca_and_not_without() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: true,
    });
    let c = client(&reg, false, ClientOptions::default());
    push_multi(&c, &reg, "secure/app").await;
    let no_ca = Client::new(ClientOptions::default()).unwrap();
    let err = repo(&no_ca, &reg, "secure/app")
        .list_tags()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.to_lowercase().contains("certificate"), "{text}");
}

#[tokio::test]
async fn a_large_blob_goes_in_one_patch_and_mounts_move_nothing() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let c = client(
        &reg,
        false,
        ClientOptions {
            chunk_size: 64 * 1024,
            ..ClientOptions::default()
        },
    );
    let r = repo(&c, &reg, "big/one");
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let digest = Digest::sha256(&data);
    r.put_blob(&digest, data.len() as u64, &data[..])
        .await
        .unwrap();
    // Larger than a chunk: streamed in one PATCH, then the PUT that commits it.
    assert_eq!(
        (
            logged(&reg, "POST", "/v2/big/one/blobs/uploads/"),
            logged(&reg, "PATCH", "/v2/big/one/blobs/uploads/"),
            logged(&reg, "PUT", "/v2/big/one/blobs/uploads/"),
        ),
        (1, 1, 1),
        "{}",
        reg.log()
    );
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(
        &mut r.get_blob(&digest, data.len() as u64).await.unwrap(),
        &mut back,
    )
    .await
    .unwrap();
    assert_eq!(back, data);

    // A second repository of the same registry: every blob mounted, no layer byte uploaded.
    push_multi(&c, &reg, "lib/base").await;
    let report = copy_image(
        &repo(&c, &reg, "lib/base"),
        &tag("v1"),
        &repo(&c, &reg, "lib/copy"),
        Some("v1"),
        &CopyOptions::default(),
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!((report.blobs_copied, report.bytes_copied), (0, 0));
    assert!(report.blobs_mounted >= 6, "{report:?}");
    assert_eq!(logged(&reg, "PUT", "/v2/lib/copy/blobs/"), 0);
    assert_eq!(logged(&reg, "PATCH", "/v2/lib/copy/blobs/"), 0);
    assert!(logged(&reg, "POST", "/v2/lib/copy/blobs/uploads/?mount=") >= 6);
}

#[tokio::test]
async fn referrers_fall_back_to_the_tag_schema_and_deletes_work() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let c = client(&reg, false, ClientOptions::default());
    let report = push_multi(&c, &reg, "ref/app").await;
    let r = repo(&c, &reg, "ref/app");
    let subject: Digest = report.digest.parse().unwrap();
    assert!(r.referrers(&subject).await.unwrap().is_empty());

    // An artifact referring to the index, listed in the fallback tag's index.
    let config =
        ociup_core::document::RawDocument::new(b"{}".to_vec(), "application/vnd.oci.empty.v1+json");
    r.put_blob(config.digest(), config.size(), config.bytes())
        .await
        .unwrap();
    let artifact = ociup_core::document::RawDocument::canonical(
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.example.sbom",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.digest().to_string(), "size": 2},
            "layers": [],
            "subject": {"mediaType": report.media_type, "digest": report.digest, "size": 1}
        }),
        "application/vnd.oci.image.manifest.v1+json",
    )
    .unwrap();
    r.put_manifest(&artifact, None).await.unwrap();
    let fallback = ociup_core::mutate::new_index(ociup_core::media_type::Family::Oci, &[]).unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(fallback.bytes()).unwrap();
    value["manifests"] = serde_json::json!([{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": artifact.digest().to_string(),
        "size": artifact.size(),
        "artifactType": "application/vnd.example.sbom"
    }]);
    let fallback =
        ociup_core::document::RawDocument::canonical(&value, ociup_core::media_type::OCI_INDEX)
            .unwrap();
    r.put_manifest(&fallback, Some(&format!("sha256-{}", subject.hex())))
        .await
        .unwrap();
    let found = r.referrers(&subject).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].digest().to_string(), artifact.digest().to_string());

    r.delete_manifest(artifact.digest()).await.unwrap();
    assert!(!r.has_manifest(artifact.digest()).await.unwrap());
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn skopeo_reads_what_ociup_pushes_and_ociup_pulls_what_skopeo_pushes() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let c = client(&reg, false, ClientOptions::default());
    let pushed = push_multi(&c, &reg, "interop/ours").await;
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/interop/ours:v1", reg.host()),
        ])
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        Digest::sha256(&out.stdout).to_string(),
        pushed.digest,
        "skopeo sees the same bytes"
    );

    for (src, all) in [("oci:{F}/multi:v2", true), ("oci:{F}/base:v2", false)] {
        let src = src.replace("{F}", &fixtures().display().to_string());
        let dest = format!("docker://{}/interop/theirs:v2", reg.host());
        let mut args = vec!["copy", "--dest-tls-verify=false"];
        if all {
            args.push("--all");
        }
        args.extend([src.as_str(), dest.as_str()]);
        let out = std::process::Command::new("skopeo")
            .args(&args)
            .output()
            .expect("skopeo runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = tempfile::tempdir().unwrap();
        let pulled = OciLayout::open_or_create(t.path().join("p")).unwrap();
        let theirs = repo(&c, &reg, "interop/theirs");
        let report = copy_image(
            &theirs,
            &tag("v2"),
            &pulled,
            Some("v2"),
            &CopyOptions::default(),
            &|_| {},
        )
        .await
        .unwrap();
        let original =
            ociup_core::ops::load_document(&layout(if all { "multi" } else { "base" }), &tag("v2"))
                .await
                .unwrap();
        assert_eq!(
            report.digest,
            original.raw().digest().to_string(),
            "{src}: digest for digest"
        );
        for blob in std::fs::read_dir(t.path().join("p/blobs/sha256")).unwrap() {
            let p = blob.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(
                Digest::sha256(&bytes).hex(),
                p.file_name().unwrap().to_str().unwrap()
            );
        }
    }
}

/// A layer blob and a manifest referring to it (and to the empty config), unique to `label`.
fn small_image(label: &str) -> (Vec<u8>, ociup_core::document::RawDocument) {
    let layer = format!("layer of {label}\n").into_bytes();
    let manifest = ociup_core::document::RawDocument::canonical(
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": Digest::sha256(b"{}").to_string(),
                "size": 2
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": Digest::sha256(&layer).to_string(),
                "size": layer.len()
            }]
        }),
        "application/vnd.oci.image.manifest.v1+json",
    )
    .unwrap();
    (layer, manifest)
}

/// Pushes [`small_image`]'s blobs and manifest (tagged `v1`) to `r`.
async fn push_small(r: &Repository, label: &str) -> ociup_core::Result<()> {
    let (layer, manifest) = small_image(label);
    r.put_blob(&Digest::sha256(b"{}"), 2, &b"{}"[..]).await?;
    r.put_blob(&Digest::sha256(&layer), layer.len() as u64, &layer[..])
        .await?;
    r.put_manifest(&manifest, Some("v1")).await
}

/// Reads [`small_image`] back from `r` (by tag, then the layer) and checks its bytes.
async fn pull_small(r: &Repository, label: &str) {
    let (layer, manifest) = small_image(label);
    let got = r.get_manifest(&tag("v1")).await.unwrap();
    assert_eq!(got.bytes(), manifest.bytes());
    assert_eq!(got.digest(), manifest.digest());
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(
        &mut r
            .get_blob(&Digest::sha256(&layer), layer.len() as u64)
            .await
            .unwrap(),
        &mut back,
    )
    .await
    .unwrap();
    assert_eq!(back, layer);
}

/// A client whose only credential source is a Docker `config.json` in `dir` giving
/// `identitytoken` for the registry.
fn identity_token_client(reg: &TestRegistry, dir: &Path, identity_token: &str) -> Client {
    let config = dir.join("config.json");
    let json = serde_json::json!({"auths": {reg.host(): {"identitytoken": identity_token}}});
    std::fs::write(&config, json.to_string()).unwrap();
    Client::new(ClientOptions {
        credentials: Credentials::anonymous().with_config_file(&config),
        ..ClientOptions::default()
    })
    .unwrap()
}

#[tokio::test]
async fn identity_tokens_from_config_json_are_exchanged_by_the_oauth2_refresh_flow() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Token,
        tls: false,
    });
    let refresh = reg.refresh_token().unwrap();
    let t = tempfile::tempdir().unwrap();
    let c = identity_token_client(&reg, t.path(), &refresh);
    let r = repo(&c, &reg, "oauth/app");
    push_small(&r, "oauth").await.unwrap();
    pull_small(&r, "oauth").await;
    // Another client from the same file: the pull alone, with a token of its own.
    let fresh = identity_token_client(&reg, t.path(), &refresh);
    pull_small(&repo(&fresh, &reg, "oauth/app"), "oauth").await;

    // The registry took the tokens: the push went through with the refresh token's user.
    assert!(logged(&reg, "PUT", "/v2/oauth/app/manifests/v1") >= 1);
    let user = reg.credentials().unwrap().0;
    assert!(reg.log().contains(&format!("auth.user.name={user} ")));
    let log = reg.token_log();
    assert!(log.len() >= 2, "{log:?}");
    for request in &log {
        assert_eq!(
            (
                request.method.as_str(),
                request.grant_type.as_deref(),
                request.basic_auth,
                request.status
            ),
            ("POST", Some("refresh_token"), false, 200),
            "only refresh-token POSTs, all granted: {log:?}"
        );
        assert!(
            request
                .client_id
                .as_deref()
                .is_some_and(|id| !id.is_empty())
        );
    }
    assert!(
        log.iter().any(|r| r
            .scopes
            .iter()
            .any(|s| s == "repository:oauth/app:pull,push")),
        "{log:?}"
    );

    // A wrong identity token: an auth error naming the registry, without either token.
    let wrong = "identity-token-that-the-harness-never-issued";
    let u = tempfile::tempdir().unwrap();
    let bad = identity_token_client(&reg, u.path(), wrong);
    let before = reg.token_log().len();
    let err = push_small(&repo(&bad, &reg, "oauth/other"), "other")
        .await
        .unwrap_err();
    let text = err.to_string();
    let ociup_core::Error::Backend(source) = &err else {
        panic!("not a registry error: {err:?}");
    };
    let Some(ociup_registry::Error::Auth { registry, .. }) = source.downcast_ref() else {
        panic!("not an auth error: {err:?}");
    };
    assert_eq!(registry, &reg.host());
    assert!(text.contains(&reg.host()) && text.contains("400"), "{text}");
    // The endpoint's OAuth2 reason is passed on: the token was refused, not the network.
    assert!(text.contains("invalid_grant"), "{text}");
    assert!(!text.contains(wrong) && !text.contains(&refresh), "{text}");
    assert!(!format!("{err:?}").contains(wrong), "{err:?}");
    let refused = &reg.token_log()[before..];
    assert!(
        !refused.is_empty()
            && refused.iter().all(|r| r.method == "POST"
                && r.grant_type.as_deref() == Some("refresh_token")
                && !r.basic_auth
                && r.status == 400),
        "{refused:?}"
    );
    assert_eq!(logged(&reg, "PUT", "/v2/oauth/other/"), 0);
}

#[tokio::test]
async fn tls_requests_use_http2() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: true,
    });
    let agent = "ociup-http2-test";
    let c = client(
        &reg,
        false,
        ClientOptions {
            user_agent: agent.to_owned(),
            ..ClientOptions::default()
        },
    );
    let r = repo(&c, &reg, "h2/app");
    push_small(&r, "h2").await.unwrap();
    pull_small(&r, "h2").await;

    // Access-log lines end with the quoted user agent; the request's protocol is in the
    // quoted request line (`"PUT /v2/... HTTP/2.0" 201 ...`).
    let log = reg.log();
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("] \"") && l.ends_with(&format!("\"{agent}\"")))
        .collect();
    assert!(ours.len() >= 6, "pushes and pulls were logged: {log}");
    let protocols: Vec<&str> = ours
        .iter()
        .filter_map(|l| l.split('"').nth(1))
        .filter_map(|request| request.rsplit(' ').next())
        .collect();
    assert!(
        protocols.iter().all(|p| *p == "HTTP/2.0"),
        "every request of ociup over HTTP/2: {protocols:?}\n{log}"
    );
}

#[tokio::test]
async fn a_streamed_upload_goes_over_tls_with_bearer_tokens() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Token,
        tls: true,
    });
    let c = client(
        &reg,
        true,
        ClientOptions {
            chunk_size: 64 * 1024,
            ..ClientOptions::default()
        },
    );
    let r = repo(&c, &reg, "tls/big");
    let data: Vec<u8> = (0..700_000u32)
        .map(|i| (i.wrapping_mul(2246822519) >> 24) as u8)
        .collect();
    let digest = Digest::sha256(&data);
    r.put_blob(&digest, data.len() as u64, &data[..])
        .await
        .unwrap();
    assert_eq!(logged(&reg, "PATCH", "/v2/tls/big/blobs/uploads/"), 1);
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(
        &mut r.get_blob(&digest, data.len() as u64).await.unwrap(),
        &mut back,
    )
    .await
    .unwrap();
    assert_eq!(back, data);
}

/// An image of `n` small layers in a new layout under `dir`, tagged `v1`.
pub(crate) async fn image_of_layers(
    dir: &Path,
    n: u32,
) -> (OciLayout, ociup_core::document::RawDocument) {
    let src = OciLayout::open_or_create(dir).unwrap();
    let mut layers = Vec::new();
    for i in 0..n {
        let bytes = format!("layer {i}").into_bytes();
        let digest = Digest::sha256(&bytes);
        src.put_blob(&digest, bytes.len() as u64, &bytes[..])
            .await
            .unwrap();
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest.to_string(),
            "size": bytes.len(),
        }));
    }
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = Digest::sha256(config);
    src.put_blob(&config_digest, config.len() as u64, &config[..])
        .await
        .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": layers,
    }))
    .unwrap();
    let manifest = ociup_core::document::RawDocument::new(
        manifest,
        "application/vnd.oci.image.manifest.v1+json",
    );
    src.put_manifest(&manifest, Some("v1")).await.unwrap();
    (src, manifest)
}

/// A push sends the manifest first and uploads only the blobs the registry names, without a
/// HEAD each; a manifest of so many layers that the registry's list of missing blobs is longer
/// than the error body ociup reads is pushed all the same: the blobs named in the part read go
/// without a HEAD, the rest are checked.
#[tokio::test]
async fn a_push_uploads_what_the_manifest_probe_names_even_past_the_error_body_cap() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let c = client(&reg, false, ClientOptions::default());
    let t = tempfile::tempdir().unwrap();
    for (name, n) in [("few", 3u32), ("many", 450)] {
        // 450 layers: Distribution names each missing one in about 150 bytes, past 64 KiB.
        let (src, manifest) = image_of_layers(&t.path().join(name), n).await;
        let report = copy_image(
            &src,
            &tag("v1"),
            &repo(&c, &reg, &format!("probe/{name}")),
            Some("v1"),
            &CopyOptions {
                jobs: 16,
                ..CopyOptions::default()
            },
            &|_| {},
        )
        .await
        .unwrap();
        assert_eq!(
            (report.blobs_copied, report.manifests_written),
            (u64::from(n) + 1, 1)
        );
        let d = repo(&c, &reg, &format!("probe/{name}"))
            .resolve_tag("v1")
            .await
            .unwrap();
        assert_eq!(d.digest().to_string(), manifest.digest().to_string());
        // Requests, not log lines: a refusal logs a line per error it names.
        let requests = |method: &str, part: &str| {
            let log = reg.log();
            let ids: std::collections::HashSet<&str> = log
                .lines()
                .filter(|l| l.contains("response completed"))
                .filter(|l| l.contains(&format!("http.request.method={method} ")))
                .filter(|l| l.contains(part))
                .filter_map(|l| l.split("http.request.id=").nth(1))
                .filter_map(|rest| rest.split_whitespace().next())
                .collect();
            ids.len()
        };
        let heads = requests("HEAD", &format!("/v2/probe/{name}/blobs/"));
        let puts = requests("PUT", &format!("/v2/probe/{name}/manifests/"));
        if n == 3 {
            assert_eq!(
                (heads, puts),
                (0, 2),
                "the probe, then the manifest; no blob HEAD"
            );
        } else {
            assert_eq!(puts, 2);
            assert!(
                heads > 0 && heads < 60,
                "{heads} blob HEADs: only those past the part of the list read"
            );
        }
    }
}

//! What a client remembers of a registry between processes (`ClientOptions::state_dir`): a
//! rebase in a new process neither probes nor checks blobs the last one saw, against the real
//! Distribution server; and a remembered blob that is not there costs a request, never an
//! incomplete image.

use std::path::Path;

use ociup_core::cache::BlobCache;
use ociup_core::copy::{CopyOptions, copy_image};
use ociup_core::layer::{LayerBuilder, LayerOptions};
use ociup_core::layout::OciLayout;
use ociup_core::ops::rebase::{OldBaseSource, RebaseOptions, RebaseRequest, rebase_image};
use ociup_core::ops::{self, AppendBase, AppendRequest};
use ociup_core::reference::PlatformSpec;
use ociup_core::store::{ManifestRef, Store};
use ociup_registry::{Client, ClientOptions, Reference, Repository};

use crate::support::{AuthMode, RegistryOptions, TestRegistry};

fn tag(t: &str) -> ManifestRef {
    ManifestRef::Tag(t.into())
}

/// A layout with base-1 and base-2 (one layer each) and app-1 (one layer) on base-1.
async fn images(dir: &Path) -> OciLayout {
    let layout = OciLayout::open_or_create(dir.join("images")).unwrap();
    let platform: PlatformSpec = "linux/amd64".parse().unwrap();
    let one_file = |path: &str| {
        let mut layer = LayerBuilder::new(LayerOptions::default());
        layer
            .add_bytes(path, path.as_bytes().repeat(100), 0o644)
            .unwrap();
        AppendRequest {
            layers: vec![(layer, path.into())],
            ..AppendRequest::default()
        }
    };
    for (t, file) in [("base-1", "/etc/v1"), ("base-2", "/etc/v2")] {
        ops::append_image::<OciLayout, _>(
            AppendBase::Scratch(&platform),
            &layout,
            Some(t),
            one_file(file),
            dir,
        )
        .await
        .unwrap();
    }
    let base = ops::load_image(&layout, &tag("base-1"), None)
        .await
        .unwrap();
    let name = format!("oci:{}:base-1", layout.root().display());
    let base = AppendBase::Image {
        store: &layout,
        image: &base,
        name: &name,
    };
    ops::append_image(base, &layout, Some("app-1"), one_file("/opt/app"), dir)
        .await
        .unwrap();
    layout
}

/// [`images`] made in `dir` and pushed to `reg` by a process remembering in `state`: lib/base:v1
/// and :v2, team/app:v1.
async fn push_images(dir: &Path, state: &Path, reg: &TestRegistry) {
    let layout = images(dir).await;
    let c = process(state, reg);
    for (from, to, name) in [
        ("base-1", "v1", "lib/base"),
        ("base-2", "v2", "lib/base"),
        ("app-1", "v1", "team/app"),
    ] {
        let dst = repo(&c, reg, name);
        copy_image(
            &layout,
            &tag(from),
            &dst,
            Some(to),
            &CopyOptions::default(),
            &|_| {},
        )
        .await
        .unwrap();
    }
}

/// A client as a new process makes it, remembering in `state`, for the plain-HTTP `reg` (no
/// HTTPS attempt first, which would count as a request).
fn process(state: &Path, reg: &TestRegistry) -> Client {
    Client::new(ClientOptions {
        state_dir: Some(state.to_owned()),
        insecure: vec![reg.host()],
        ..ClientOptions::default()
    })
    .unwrap()
}

/// The file of what the client learnt of `reg` (the one of `state`'s `registries-v2/` naming
/// its host).
fn facts_file(state: &Path, reg: &TestRegistry) -> std::path::PathBuf {
    let first_line = format!("host {}\n", reg.host());
    std::fs::read_dir(state.join("registries-v2"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.starts_with(&first_line)))
        .expect("a file of what was learnt of the registry")
}

fn repo(c: &Client, reg: &TestRegistry, name: &str) -> Repository {
    c.repository(&Reference::parse(&format!("{}/{name}", reg.host())).unwrap())
}

/// Rebases team/app:v1 from lib/base:v1 onto lib/base:v2 into `dest_repo`:`to` with a new
/// process remembering in `state`, and checks the result is complete: the number of requests
/// it sent, and (method, path) of each as the registry logged them.
async fn rebase(
    reg: &TestRegistry,
    state: &Path,
    dest_repo: &str,
    to: &str,
    created: u64,
) -> (u64, Vec<(String, String)>) {
    let (sent, seen, _) = rebase_cached(reg, state, dest_repo, to, created, None).await;
    (sent, seen)
}

/// [`rebase`] with configs read through `cache`; also the digest of what it wrote.
async fn rebase_cached(
    reg: &TestRegistry,
    state: &Path,
    dest_repo: &str,
    to: &str,
    created: u64,
    cache: Option<&BlobCache>,
) -> (u64, Vec<(String, String)>, String) {
    let from = reg.completed();
    let c = process(state, reg);
    let (app, old, new) = (
        repo(&c, reg, "team/app"),
        repo(&c, reg, "lib/base"),
        repo(&c, reg, "lib/base"),
    );
    let dest = repo(&c, reg, dest_repo);
    let image = ops::load_document(&app, &tag("v1")).await.unwrap();
    let old_ref = tag("v1");
    let request = RebaseRequest::new(&app, image, &new, tag("v2"))
        .old_base(OldBaseSource::Image(&old, &old_ref));
    let opts = RebaseOptions {
        created: Some(created),
        cache: cache.cloned(),
        ..RebaseOptions::default()
    };
    let outcome = rebase_image(request, &dest, Some(to), &opts).await.unwrap();
    assert!(outcome.written);
    // (method, URI) of each request answered since.
    let seen: Vec<(String, String)> = reg
        .completed_since(from)
        .into_iter()
        .map(|c| (c.method, c.uri))
        .collect();
    // The result is complete where it was written: every blob it names is there.
    let check = process(&state.join("unused"), reg);
    let d = repo(&check, reg, dest_repo);
    let m = ops::load_image(&d, &tag(to), None).await.unwrap();
    for l in m.manifest.parsed().layers() {
        let digest = l.digest().to_string().parse().unwrap();
        assert!(
            d.blob_exists(&digest).await.unwrap(),
            "{dest_repo}:{to} lacks {digest}"
        );
    }
    (c.requests_sent(), seen, outcome.digest)
}

#[tokio::test]
async fn a_new_process_rebases_without_asking_what_the_last_one_learnt() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    // The pushes teach the client that this registry checks a manifest's blobs (its probe is
    // refused naming them).
    push_images(t.path(), &state, &reg).await;
    assert!(
        std::fs::read_to_string(facts_file(&state, &reg))
            .unwrap()
            .contains("\nchecks-blobs "),
        "remembered that the registry checks blobs"
    );

    // Cold: the new base's layer is not in team/app. 6 reads (image manifest and config, each
    // base's manifest and config), its mount, the config's POST (sent beside the reads) and
    // PUT, the tagged PUT: no probe by digest.
    let cancelled = |seen: &[(String, String)]| {
        seen.iter()
            .filter(|(m, p)| m == "DELETE" && p.contains("/blobs/uploads/"))
            .count()
    };
    let (sent, seen) = rebase(&reg, &state, "team/app", "r1", 1).await;
    assert_eq!(sent, 10, "{seen:#?}");
    assert_eq!(cancelled(&seen), 0, "the upload opened ahead was used");
    assert!(
        !seen
            .iter()
            .any(|(m, p)| m == "PUT" && p.contains("/manifests/sha256:")),
        "no probe: {seen:?}"
    );
    // Warm, another config: the layer is known there; no HEAD, no mount.
    let (sent, seen) = rebase(&reg, &state, "team/app", "r2", 2).await;
    assert_eq!(sent, 9, "{seen:#?}");
    assert!(
        !seen
            .iter()
            .any(|(m, p)| m == "HEAD" || p.contains("mount=")),
        "nothing asked of blobs: {seen:?}"
    );
    // The same config again: only the tagged PUT is written; the upload opened for the config
    // beside the reads goes unused and is cancelled (its DELETE), not left open.
    let (sent, seen) = rebase(&reg, &state, "team/app", "r3", 2).await;
    assert_eq!(sent, 9, "{seen:#?}");
    assert_eq!(cancelled(&seen), 1, "{seen:#?}");

    // Remembered wrongly (the blobs of team/app claimed for a new repository): the tagged PUT
    // is refused naming them, they are supplied, and the result is complete (checked in
    // `rebase`).
    let file = facts_file(&state, &reg);
    let facts = std::fs::read_to_string(&file).unwrap();
    let claimed: String = facts
        .lines()
        .filter(|l| l.starts_with("blob team/app "))
        .map(|l| l.replace(" team/app ", " team/copy ") + "\n")
        .collect();
    assert!(!claimed.is_empty());
    std::fs::write(&file, facts + &claimed).unwrap();
    let (sent, seen) = rebase(&reg, &state, "team/copy", "r1", 3).await;
    let refused = seen
        .iter()
        .filter(|(m, p)| m == "PUT" && p.ends_with("/team/copy/manifests/r1"))
        .count();
    let mounts = seen.iter().filter(|(_, p)| p.contains("mount=")).count();
    // (Distribution's refusal may say DIGEST_INVALID too, which the client takes for a race
    // with a link rewrite and sends once more before supplying.)
    assert!(refused >= 2, "refused, then taken: {seen:#?}");
    assert_eq!(mounts, 2, "the two claimed layers supplied: {seen:#?}");
    assert!(sent > 9, "{sent}");
}

/// Configs are named by their digests: a rebase reading them through a `BlobCache` asks the
/// registry for none it has seen, and writes what a rebase without the cache writes. A cached
/// file that does not hash to its name is read again from the registry, and what is read from
/// one repository is kept apart from what is read from another.
#[tokio::test]
async fn configs_seen_before_cost_no_request_and_change_nothing() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    push_images(t.path(), &state, &reg).await;
    let config_reads = |seen: &[(String, String)]| {
        seen.iter()
            .filter(|(m, p)| m == "GET" && p.contains("/blobs/sha256:"))
            .count()
    };
    let cache = BlobCache::new(t.path().join("cache"));
    // Cold: the image's config and both bases' are read, and kept.
    let (sent_cold, seen, cold) =
        rebase_cached(&reg, &state, "team/app", "r1", 1, Some(&cache)).await;
    assert_eq!(config_reads(&seen), 3, "{seen:#?}");
    // Warm: none is read; the rebase writes what it wrote without the cache (same epoch).
    let (sent, seen, warm) = rebase_cached(&reg, &state, "team/app", "r2", 1, Some(&cache)).await;
    assert_eq!(config_reads(&seen), 0, "{seen:#?}");
    assert!(
        sent <= sent_cold - 3,
        "{sent} requests, {sent_cold} cold: {seen:#?}"
    );
    let (_, seen, uncached) = rebase_cached(&reg, &state, "team/app", "r3", 1, None).await;
    assert_eq!(config_reads(&seen), 3, "{seen:#?}");
    assert_eq!((&cold, &warm), (&uncached, &uncached));

    // A cached config edited in place (same length, so only its hash tells) is not taken: read
    // again (and the result is the same).
    let files = walkdir_files(&t.path().join("cache"));
    assert_eq!(files.len(), 3, "{files:?}");
    let damaged = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], vec![b' '; damaged.len()]).unwrap();
    let (_, seen, again) = rebase_cached(&reg, &state, "team/app", "r4", 1, Some(&cache)).await;
    assert_eq!(config_reads(&seen), 1, "{seen:#?}");
    assert_eq!(again, uncached);
    // ... and it is replaced by the good one.
    assert_eq!(std::fs::read(&files[0]).unwrap(), damaged);
    let (_, seen, _) = rebase_cached(&reg, &state, "team/app", "r5", 1, Some(&cache)).await;
    assert_eq!(config_reads(&seen), 0, "{seen:#?}");

    // Kept apart by repository: a config read from lib/base is no answer for another
    // repository, where the registry might not serve it.
    let c = process(&state, &reg);
    let base = repo(&c, &reg, "lib/base");
    let v2 = ops::load_image(&base, &tag("v2"), None).await.unwrap();
    let config = v2.manifest.config_digest().unwrap();
    assert!(BlobCache::lookup(Some(&cache), &base, &config).is_some());
    let elsewhere = repo(&c, &reg, "team/other");
    assert!(BlobCache::lookup(Some(&cache), &elsewhere, &config).is_none());
}

/// Every file under `dir`, sorted.
fn walkdir_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

//! The fixtures in `fixtures/` are made by this code: the test regenerates them into a temporary
//! directory and compares every file byte for byte, which proves they are reproducible and pins
//! every digest in them. `OCIUP_BLESS_FIXTURES=1 cargo test --test cli fixtures` rewrites them.

use std::collections::BTreeMap;
use std::path::Path;

use ociup_core::config::ConfigChange;
use ociup_core::document::RawDocument;
use ociup_core::layer::{LayerBuilder, LayerOptions};
use ociup_core::layout::OciLayout;
use ociup_core::media_type::{self, Family};
use ociup_core::mutate::{self, Base, NewLayer};
use ociup_core::reference::PlatformSpec;
use ociup_core::store::Store;
use serde_json::json;

use crate::support::{fixtures, snapshot};

/// SOURCE_DATE_EPOCH of every fixture.
const EPOCH: u64 = 1_700_000_000;

fn builder(files: &[(&str, &str, u32)]) -> LayerBuilder {
    let mut b = LayerBuilder::new(LayerOptions {
        epoch: EPOCH,
        threads: 2,
        ..LayerOptions::default()
    });
    for (path, contents, mode) in files {
        b.add_bytes(path, contents.as_bytes().to_vec(), *mode)
            .unwrap();
    }
    b
}

fn platform(s: &str) -> PlatformSpec {
    s.parse().unwrap()
}

/// Stores layers, config and manifest (untagged) and returns the manifest.
async fn store_image(
    layout: &OciLayout,
    platform: &PlatformSpec,
    layers: Vec<(LayerBuilder, &str)>,
    changes: &[ConfigChange],
) -> RawDocument {
    let mut built = Vec::new();
    for (b, created_by) in layers {
        let (layer, w) = b.build(layout.blob_writer().unwrap()).unwrap();
        w.commit(Some(&layer.digest)).unwrap();
        built.push(NewLayer {
            layer,
            created_by: created_by.into(),
        });
    }
    let base = Base::Scratch {
        os: &platform.os,
        architecture: &platform.architecture,
        variant: platform.variant.as_deref(),
    };
    let out = mutate::append(base, &built, changes, &BTreeMap::new(), EPOCH).unwrap();
    put(layout, &out.config).await;
    put(layout, &out.manifest).await;
    out.manifest
}

async fn put(layout: &OciLayout, doc: &RawDocument) {
    layout
        .put_blob(doc.digest(), doc.size(), doc.bytes())
        .await
        .unwrap();
}

fn env(k: &str, v: &str) -> ConfigChange {
    ConfigChange::Env(k.into(), v.into())
}

/// One version of the single-platform base: three layers (etc, bin, share), PATH and a version.
async fn base_version(layout: &OciLayout, v: u32, arch: &str) -> RawDocument {
    let os_release =
        format!("ID=ociup-fixture\nVERSION_ID={v}\nPRETTY_NAME=\"ociup fixture base {v}\"\n");
    let hello = format!("#!/bin/sh\necho \"hello from base v{v} ({arch})\"\n");
    let only = format!("usr/share/base/only-in-v{v}.txt");
    let version = format!("{v}\n");
    let path = if v == 1 {
        "/usr/local/bin:/usr/bin:/bin"
    } else {
        "/opt/base/bin:/usr/local/bin:/usr/bin:/bin"
    };
    let mut changes = vec![
        env("PATH", path),
        env("BASE_VERSION", &v.to_string()),
        ConfigChange::Cmd(vec!["/bin/hello".into()]),
        ConfigChange::Label("org.opencontainers.image.version".into(), v.to_string()),
    ];
    if v >= 2 {
        changes.push(env("JAVA_HOME", "/opt/java"));
    }
    let mut etc = builder(&[
        ("etc/os-release", &os_release, 0o644),
        ("etc/motd", "welcome to the fixture base\n", 0o644),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
    ]);
    etc.add_bytes("etc/shadow", b"root:*:19000::::::\n".to_vec(), 0o600)
        .unwrap();
    // Directories are explicit, as in a real base: a layer on top that adds under them does
    // not carry them, so they keep these modes (/tmp stays world-writable and sticky).
    etc.add_dir("etc", 0o755).unwrap();
    etc.add_dir("tmp", 0o1777).unwrap();
    let mut bin = builder(&[
        ("bin/hello", &hello, 0o755),
        (&format!("bin/tool-v{v}"), "#!/bin/sh\n", 0o4755),
    ]);
    bin.add_dir("bin", 0o755).unwrap();
    let mut share = builder(&[
        ("usr/share/base/VERSION", &version, 0o644),
        (&only, "only here\n", 0o644),
    ]);
    for d in ["usr", "usr/share", "usr/share/base"] {
        share.add_dir(d, 0o755).unwrap();
    }
    store_image(
        layout,
        &platform(&format!("linux/{arch}")),
        vec![
            (etc, "fixture: etc"),
            (bin, "fixture: bin"),
            (share, "fixture: share"),
        ],
        &changes,
    )
    .await
}

/// A Docker schema2 image whose config carries fields oci-spec does not model.
async fn docker_image(layout: &OciLayout) -> RawDocument {
    let mut etc = builder(&[("etc/docker-fixture", "schema2\n", 0o644)]);
    etc.add_dir("etc", 0o755).unwrap();
    let (layer, w) = etc.build(layout.blob_writer().unwrap()).unwrap();
    w.commit(Some(&layer.digest)).unwrap();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "docker_version": "24.0.7",
        "config": {
            "Env": ["PATH=/usr/bin:/bin"],
            "Cmd": ["/bin/sh"],
            "ArgsEscaped": true,
            "Healthcheck": {"Test": ["CMD", "/bin/true"], "Interval": 30_000_000_000_u64, "Retries": 3},
            "OnBuild": ["RUN echo onbuild"],
            "Shell": ["/bin/bash", "-c"],
            "StopTimeout": 20
        },
        "container_config": {"Hostname": "fixture", "Cmd": ["/bin/sh", "-c", "#(nop) ADD file"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "/bin/sh -c #(nop) ADD file in /etc"}],
        "x-vendor-field": {"kept": true, "nested": [1, 2, 3]}
    });
    let config = RawDocument::canonical(&config, media_type::DOCKER_CONFIG).unwrap();
    put(layout, &config).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::DOCKER_MANIFEST,
        "config": {"mediaType": media_type::DOCKER_CONFIG, "digest": config.digest().to_string(), "size": config.size()},
        "layers": [{"mediaType": media_type::DOCKER_LAYER_GZIP, "digest": layer.digest.to_string(), "size": layer.size}]
    });
    RawDocument::canonical(&manifest, media_type::DOCKER_MANIFEST).unwrap()
}

/// Writes every fixture layout under `dir`.
pub async fn generate(dir: &Path) {
    let base = OciLayout::open_or_create(dir.join("base")).unwrap();
    let v1 = base_version(&base, 1, "amd64").await;
    let v2 = base_version(&base, 2, "amd64").await;
    for (doc, tag) in [(&v1, "v1"), (&v2, "v2"), (&v1, "latest")] {
        base.put_manifest(doc, Some(tag)).await.unwrap();
    }

    let multi = OciLayout::open_or_create(dir.join("multi")).unwrap();
    for v in [1, 2] {
        let amd = base_version(&multi, v, "amd64").await;
        let arm = base_version(&multi, v, "arm64/v8").await;
        let (pa, pb) = (platform("linux/amd64"), platform("linux/arm64/v8"));
        let index = mutate::new_index(Family::Oci, &[(&amd, &pa), (&arm, &pb)]).unwrap();
        multi
            .put_manifest(&index, Some(&format!("v{v}")))
            .await
            .unwrap();
    }

    let docker = OciLayout::open_or_create(dir.join("docker")).unwrap();
    let m = docker_image(&docker).await;
    docker.put_manifest(&m, Some("v1")).await.unwrap();
}

#[tokio::test]
async fn fixtures_are_reproducible_and_small() {
    if std::env::var_os("OCIUP_BLESS_FIXTURES").is_some() {
        for name in ["base", "multi", "docker"] {
            let _ = std::fs::remove_dir_all(fixtures().join(name));
        }
        generate(&fixtures()).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    generate(tmp.path()).await;
    for name in ["base", "multi", "docker"] {
        let fresh = snapshot(&tmp.path().join(name));
        let committed = snapshot(&fixtures().join(name));
        assert_eq!(
            fresh.keys().collect::<Vec<_>>(),
            committed.keys().collect::<Vec<_>>(),
            "fixtures/{name} lists other files than a fresh generation \
             (OCIUP_BLESS_FIXTURES=1 rewrites them)"
        );
        for (path, bytes) in &fresh {
            assert!(
                committed[path] == *bytes,
                "fixtures/{name}/{} differs from a fresh generation",
                path.display()
            );
        }
    }
    let total: usize = snapshot(&fixtures()).values().map(Vec::len).sum();
    assert!(total < 1_000_000, "fixtures hold {total} bytes");
}

//! `ociup append`: golden manifest digest, same bytes from a second process, config derived from
//! the base without losing fields, Docker images kept Docker, platforms picked from an index.

use crate::support::{blob, json, ociup_err, ociup_in, repo, sample_tree};

/// `append` of `sample_tree` at /opt/app onto fixtures/base:v1 with the flags of
/// `append_to_base_v1`. Pins the layer, config and manifest ociup writes.
const GOLDEN_MANIFEST: &str =
    "sha256:b3e14c7caf954a244c2a5fdf7573eb06ec2269c09b3992d38f09768c90f3a3c5";
/// fixtures/base:v1 (pinned by the fixtures test as well).
const BASE_V1: &str = "sha256:04834a0cd30fdcd9e563b4e605f3506ecb663cf1419a010a76e3e34464ead1e2";

fn run_in_repo(args: &[&str]) -> serde_json::Value {
    let out = ociup_in(args, Some(&repo()));
    assert!(
        out.status.success(),
        "ociup {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&String::from_utf8(out.stdout).unwrap())
}

fn append_to_base_v1(tree: &std::path::Path, to: &str) -> serde_json::Value {
    let add = format!("{}:/opt/app", tree.display());
    run_in_repo(&[
        "append",
        "--base",
        "oci:fixtures/base:v1",
        "--add",
        &add,
        "--remove",
        "/etc/motd",
        "--env",
        "APP_HOME=/opt/app",
        "--env",
        "BASE_VERSION=custom",
        "--entrypoint",
        r#"["/opt/app/bin/tool","--serve"]"#,
        "--label",
        "team=infra",
        "--expose",
        "8080",
        "--annotation",
        "org.example.note=hello",
        "--source-date-epoch",
        "1700000000",
        "--to",
        to,
        "--json",
    ])
}

fn config_of(
    layout: &std::path::Path,
    manifest_digest: &str,
) -> (serde_json::Value, serde_json::Value) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(layout, manifest_digest)).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    (manifest, config)
}

#[test]
fn append_is_golden_and_reproducible_in_a_second_process() {
    let t = tempfile::tempdir().unwrap();
    sample_tree(&t.path().join("tree"));
    let out1 = t.path().join("out1");
    let out2 = t.path().join("out2");
    let first = append_to_base_v1(
        &t.path().join("tree"),
        &format!("oci:{}:app", out1.display()),
    );
    let second = append_to_base_v1(
        &t.path().join("tree"),
        &format!("oci:{}:app", out2.display()),
    );
    assert_eq!(first["digest"], GOLDEN_MANIFEST, "golden manifest digest");
    assert_eq!(first["digest"], second["digest"]);
    let d = first["digest"].as_str().unwrap();
    assert_eq!(blob(&out1, d), blob(&out2, d), "byte-identical manifests");
    // The reference printed parses back, and layout files are readable by others.
    let printed = first["reference"].as_str().unwrap();
    assert_eq!(
        json(&crate::support::ociup_ok(&["inspect", printed, "--json"]))["digest"],
        d
    );
    use std::os::unix::fs::PermissionsExt;
    for f in [
        out1.join("index.json"),
        out1.join("oci-layout"),
        out1.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:")),
    ] {
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o644,
            "{}",
            f.display()
        );
    }

    let (manifest, config) = config_of(&out1, d);
    let base_layers = 3;
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        base_layers + 1
    );
    let ann = &manifest["annotations"];
    assert_eq!(
        ann["org.opencontainers.image.base.name"],
        "oci:fixtures/base:v1"
    );
    assert_eq!(ann["org.opencontainers.image.base.digest"], BASE_V1);
    assert_eq!(ann["dev.ociup.base.layers"], "3");
    assert_eq!(
        ann["dev.ociup.base.history"], "3",
        "the base has one history entry per layer"
    );
    assert_eq!(ann["org.example.note"], "hello");
    let rc = &config["config"];
    assert_eq!(
        rc["Env"],
        serde_json::json!([
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "BASE_VERSION=custom",
            "APP_HOME=/opt/app"
        ]),
        "env merged by key, base PATH kept"
    );
    assert_eq!(
        rc["Entrypoint"],
        serde_json::json!(["/opt/app/bin/tool", "--serve"])
    );
    assert!(
        rc.get("Cmd").is_none(),
        "the base Cmd is cleared by a new entrypoint"
    );
    assert_eq!(rc["Labels"]["team"], "infra");
    assert_eq!(
        rc["Labels"]["org.opencontainers.image.version"], "1",
        "base labels kept"
    );
    assert!(rc["ExposedPorts"].get("8080/tcp").is_some());
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), base_layers + 1);
    assert_eq!(diff_ids[3], first["layers"][0]["diff_id"]);
    let history = config["history"].as_array().unwrap();
    assert_eq!(history.len(), base_layers + 1);
    assert!(
        history[3]["created_by"]
            .as_str()
            .unwrap()
            .contains("ADD /opt/app")
    );
    assert!(
        !history[3]["created_by"]
            .as_str()
            .unwrap()
            .contains(&t.path().display().to_string()),
        "host paths stay out of the image"
    );
}

#[test]
fn docker_config_fields_survive_and_the_image_stays_docker() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    std::fs::write(t.path().join("f"), b"f").unwrap();
    let add = format!("{}:/f", t.path().join("f").display());
    let to = format!("oci:{}:d", out.display());
    let result = run_in_repo(&[
        "append",
        "--base",
        "oci:fixtures/docker:v1",
        "--add",
        &add,
        "--env",
        "X=1",
        "--to",
        &to,
        "--json",
    ]);
    let d = result["digest"].as_str().unwrap();
    let (manifest, config) = config_of(&out, d);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    for l in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    let base = repo().join("fixtures/docker");
    let base_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("index.json")).unwrap()).unwrap();
    let base_digest = base_manifest["manifests"][0]["digest"].as_str().unwrap();
    let (_, base_config) = config_of(&base, base_digest);
    for key in [
        "Healthcheck",
        "OnBuild",
        "Shell",
        "ArgsEscaped",
        "StopTimeout",
        "Cmd",
    ] {
        assert_eq!(
            config["config"][key], base_config["config"][key],
            "config.{key} kept"
        );
    }
    for key in ["x-vendor-field", "container_config", "docker_version"] {
        assert_eq!(config[key], base_config[key], "{key} kept");
    }
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!(["PATH=/usr/bin:/bin", "X=1"])
    );

    let zstd = ociup_in(
        &[
            "append",
            "--base",
            "oci:fixtures/docker:v1",
            "--add",
            &add,
            "--compression",
            "zstd",
            "--to",
            &to,
        ],
        Some(&repo()),
    );
    let err = String::from_utf8_lossy(&zstd.stderr);
    assert!(
        !zstd.status.success() && err.contains("Docker") && err.contains("zstd"),
        "{err}"
    );
}

#[test]
fn platforms_are_picked_from_an_index() {
    let t = tempfile::tempdir().unwrap();
    let to = format!("oci:{}:x", t.path().join("out").display());
    let base = format!("oci:{}:v1", repo().join("fixtures/multi").display());
    // Without --platform every platform is built: see multi.rs.
    let err = ociup_err(&[
        "append",
        "--base",
        &base,
        "--platform",
        "linux/s390x",
        "--env",
        "A=1",
        "--to",
        &to,
    ]);
    assert!(err.contains("no manifest for linux/s390x"), "{err}");

    let out = crate::support::ociup_ok(&[
        "append",
        "--base",
        &base,
        "--platform",
        "linux/arm64",
        "--env",
        "A=1",
        "--to",
        &to,
        "--json",
    ]);
    let d = json(&out)["digest"].as_str().unwrap().to_owned();
    let (manifest, config) = config_of(&t.path().join("out"), &d);
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["variant"], "v8");
    let index = json(&crate::support::ociup_ok(&["inspect", &base, "--json"]))["index"].clone();
    let arm = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "arm64")
        .unwrap();
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.base.digest"],
        arm["digest"]
    );
    // A config-only change adds no layer, one empty_layer history entry.
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
    let history = config["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["empty_layer"], true);
    assert_eq!(history.last().unwrap()["created_by"], "ENV A=1");
}

#[test]
fn platforms_are_found_in_nested_indexes() {
    use ociup_core::document::RawDocument;
    use ociup_core::media_type::OCI_INDEX;
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("nested");
    crate::support::copy_tree(&repo().join("fixtures/multi"), &lay);
    let inner = json(&crate::support::ociup_ok(&[
        "inspect",
        &format!("oci:{}:v1", lay.display()),
        "--json",
    ]));
    let inner_digest = inner["digest"].as_str().unwrap();
    let inner_size = blob(&lay, inner_digest).len();
    let outer = RawDocument::canonical(
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_INDEX, "digest": inner_digest, "size": inner_size}
        ]}),
        OCI_INDEX,
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let layout = ociup_core::layout::OciLayout::open(&lay).unwrap();
        ociup_core::store::Store::put_manifest(&layout, &outer, Some("outer"))
            .await
            .unwrap();
    });
    let to = format!("oci:{}:x", t.path().join("out").display());
    let out = json(&crate::support::ociup_ok(&[
        "append",
        "--base",
        &format!("oci:{}:outer", lay.display()),
        "--platform",
        "linux/arm64",
        "--env",
        "A=1",
        "--to",
        &to,
        "--json",
    ]));
    let (manifest, config) = config_of(&t.path().join("out"), out["digest"].as_str().unwrap());
    assert_eq!(config["architecture"], "arm64");
    let arm = inner["index"]["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "arm64")
        .unwrap();
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.base.digest"],
        arm["digest"]
    );
}

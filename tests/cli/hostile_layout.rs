//! Layouts and document graphs someone else controls: files in a layout that are not regular
//! files, a symlinked `blobs/`, a malformed entry of `index.json`, temporary files of killed
//! writes, blobs missing or damaged under a manifest the layout holds, and index graphs that
//! list the same index many times (against a layout and against the real registry, counting
//! its requests).

use std::path::Path;

use serde_json::{Value, json};

use crate::registry_support::{AuthMode, RegistryOptions, TestRegistry};
use crate::support::{copy_tree, fixtures, json, ociup, ociup_err, ociup_ok};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A copy of `fixtures/base` (tags v1, v2, latest) at `dir/lay`.
fn base_copy(dir: &Path) -> std::path::PathBuf {
    let lay = dir.join("lay");
    copy_tree(&fixtures().join("base"), &lay);
    lay
}

fn blob_path(lay: &Path, digest: &str) -> std::path::PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    lay.join("blobs").join(alg).join(hex)
}

/// The manifest a tag of a layout points at, and its config's digest.
fn manifest_and_config(lay: &Path, tag: &str) -> (String, String) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(lay.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let digest = entry["digest"].as_str().unwrap().to_owned();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blob_path(lay, &digest)).unwrap()).unwrap();
    (
        digest,
        manifest["config"]["digest"].as_str().unwrap().to_owned(),
    )
}

fn mkfifo(path: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn files_that_are_not_regular_are_refused_and_blobs_must_not_be_a_symlink() {
    let t = tempfile::tempdir().unwrap();
    let lay = base_copy(t.path());
    let at = |tag: &str| format!("oci:{}:{tag}", lay.display());
    // v1's config a symlink to /dev/zero: refused, not read forever.
    let (_, config) = manifest_and_config(&lay, "v1");
    std::fs::remove_file(blob_path(&lay, &config)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", blob_path(&lay, &config)).unwrap();
    let err = ociup_err(&["inspect", &at("v1")]);
    assert!(
        err.contains("is not a regular file (it is a character device)"),
        "{err}"
    );
    // v2's manifest a FIFO: refused, not waited on.
    let (manifest, _) = manifest_and_config(&lay, "v2");
    std::fs::remove_file(blob_path(&lay, &manifest)).unwrap();
    mkfifo(&blob_path(&lay, &manifest));
    let err = ociup_err(&["inspect", &at("v2")]);
    assert!(
        err.contains("is not a regular file (it is a FIFO)"),
        "{err}"
    );

    // index.json a FIFO.
    let fifo_index = t.path().join("fifo-index");
    copy_tree(&fixtures().join("base"), &fifo_index);
    std::fs::remove_file(fifo_index.join("index.json")).unwrap();
    mkfifo(&fifo_index.join("index.json"));
    let err = ociup_err(&["inspect", &format!("oci:{}:v1", fifo_index.display())]);
    assert!(err.contains("index.json is not a regular file"), "{err}");

    // blobs/ a symlink to another directory: refused, for reading and for writing.
    let linked = t.path().join("linked");
    copy_tree(&fixtures().join("base"), &linked);
    std::fs::rename(linked.join("blobs"), t.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(t.path().join("elsewhere"), linked.join("blobs")).unwrap();
    for args in [
        vec!["inspect".to_owned(), format!("oci:{}:v1", linked.display())],
        vec![
            "copy".to_owned(),
            format!("oci:{}:v1", fixtures().join("base").display()),
            format!("oci:{}:copied", linked.display()),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = ociup_err(&args);
        assert!(
            err.contains("blobs is not a directory (it is a symlink)"),
            "{err}"
        );
    }
}

#[test]
fn a_malformed_entry_is_named_and_the_other_tags_still_work() {
    let t = tempfile::tempdir().unwrap();
    let lay = base_copy(t.path());
    let path = lay.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    index["manifests"].as_array_mut().unwrap().insert(
        1,
        json!({"mediaType": INDEX, "digest": "sha256:1234", "size": "big",
            "annotations": {"org.opencontainers.image.ref.name": "broken"}}),
    );
    std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    let at = |tag: &str| format!("oci:{}:{tag}", lay.display());
    let v1 = json(&ociup_ok(&["inspect", &at("v1"), "--json"]));
    assert_eq!(v1["digest"], manifest_and_config(&lay, "v1").0);
    ociup_ok(&["inspect", &at("v2")]);
    let err = ociup_err(&["inspect", &at("broken")]);
    assert!(
        err.contains(r#"entry 1 of "manifests" (tag "broken") is not a valid descriptor"#),
        "{err}"
    );
    // Writing to the layout keeps working, and keeps the entry.
    ociup_ok(&["copy", &at("v2"), &at("again")]);
    let index: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(index["manifests"][1]["digest"], "sha256:1234");
    // A copy to the broken tag replaces the entry.
    ociup_ok(&["copy", &at("v2"), &at("broken")]);
    let fixed = json(&ociup_ok(&["inspect", &at("broken"), "--json"]));
    assert_eq!(fixed["digest"], manifest_and_config(&lay, "v2").0);
}

#[test]
fn a_write_removes_temporary_files_of_killed_writes() {
    let t = tempfile::tempdir().unwrap();
    let lay = base_copy(t.path());
    let aged = std::time::SystemTime::now()
        - ociup_core::layout::STALE_TEMP_AGE
        - std::time::Duration::from_secs(60);
    for (name, old) in [(".ociup-killed", true), (".ociup-writing", false)] {
        let f = std::fs::File::create(lay.join("blobs").join(name)).unwrap();
        f.set_len(4 << 20).unwrap();
        if old {
            f.set_modified(aged).unwrap();
        }
    }
    // Reading leaves them; a copy into the layout removes the abandoned one only.
    ociup_ok(&["inspect", &format!("oci:{}:v1", lay.display())]);
    assert!(lay.join("blobs/.ociup-killed").exists());
    ociup_ok(&[
        "copy",
        &format!("oci:{}:v1", fixtures().join("multi").display()),
        &format!("oci:{}:multi", lay.display()),
    ]);
    assert!(!lay.join("blobs/.ociup-killed").exists());
    assert!(lay.join("blobs/.ociup-writing").exists());
}

#[test]
fn copy_repairs_a_layout_whose_blobs_are_missing_or_damaged() {
    let t = tempfile::tempdir().unwrap();
    let src = format!("oci:{}:v1", fixtures().join("multi").display());
    let lay = t.path().join("mirror");
    let dst = format!("oci:{}:v1", lay.display());
    ociup_ok(&["copy", &src, &dst]);
    let report = |extra: &[&str]| {
        let mut args = vec!["copy", &src, &dst, "--json"];
        args.extend(extra);
        json(&ociup_ok(&args))["report"].clone()
    };
    // A layer of one platform deleted, a config truncated: both found by size and copied again.
    let manifests: Vec<String> = {
        let index: Value = serde_json::from_str(&ociup_ok(&["inspect", &dst, "--raw"])).unwrap();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap().to_owned())
            .collect()
    };
    let child: Value =
        serde_json::from_slice(&std::fs::read(blob_path(&lay, &manifests[0])).unwrap()).unwrap();
    let layer = blob_path(&lay, child["layers"][0]["digest"].as_str().unwrap());
    let config = blob_path(&lay, child["config"]["digest"].as_str().unwrap());
    let (layer_bytes, config_bytes) = (
        std::fs::read(&layer).unwrap(),
        std::fs::read(&config).unwrap(),
    );
    std::fs::remove_file(&layer).unwrap();
    std::fs::write(&config, &config_bytes[..config_bytes.len() / 2]).unwrap();
    let r = report(&[]);
    assert_eq!(
        (r["blobs_copied"].as_u64(), r["blobs_repaired"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(std::fs::read(&layer).unwrap(), layer_bytes);
    assert_eq!(std::fs::read(&config).unwrap(), config_bytes);

    // Same size, other bytes: present by size; --verify reads it and repairs it.
    let mut flipped = layer_bytes.clone();
    flipped[100] ^= 0xff;
    std::fs::write(&layer, &flipped).unwrap();
    assert_eq!(report(&[])["blobs_repaired"], 0);
    let r = report(&["--verify"]);
    assert_eq!(
        (r["blobs_copied"].as_u64(), r["blobs_repaired"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(std::fs::read(&layer).unwrap(), layer_bytes);
    let r = report(&["--verify"]);
    assert_eq!(
        (r["blobs_copied"].as_u64(), r["blobs_repaired"].as_u64()),
        (Some(0), Some(0))
    );
    // skopeo reads the repaired copy whole.
    crate::support::tool("skopeo", &["inspect", &dst]);
}

/// Writes a canonical JSON document as a blob of `lay`; returns its descriptor.
fn put_doc(lay: &Path, doc: &Value) -> Value {
    let raw = ociup_core::document::RawDocument::canonical(doc, INDEX).unwrap();
    let path = blob_path(lay, &raw.digest().to_string());
    std::fs::write(path, raw.bytes()).unwrap();
    json!({"mediaType": INDEX, "digest": raw.digest().to_string(), "size": raw.size()})
}

/// Nine indexes in a copy of `fixtures/base`, each listing the next ten times; the last lists
/// base v1 for linux/amd64. The first is tagged `graph`.
fn nine_by_ten(dir: &Path) -> std::path::PathBuf {
    let lay = base_copy(dir);
    let (v1, _) = manifest_and_config(&lay, "v1");
    let size = std::fs::metadata(blob_path(&lay, &v1)).unwrap().len();
    let mut next = put_doc(
        &lay,
        &json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": v1, "size": size,
            "platform": {"os": "linux", "architecture": "amd64"}}]}),
    );
    for n in 0..8 {
        next = put_doc(
            &lay,
            &json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": vec![next; 10],
                "annotations": {"n": n.to_string()}}),
        );
    }
    let path = lay.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    next["annotations"] = json!({"org.opencontainers.image.ref.name": "graph"});
    index["manifests"].as_array_mut().unwrap().push(next);
    std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    lay
}

#[test]
fn an_index_listed_many_times_is_searched_once_in_a_layout_and_a_registry() {
    let t = tempfile::tempdir().unwrap();
    let lay = nine_by_ten(t.path());
    let graph = format!("oci:{}:graph", lay.display());
    let (v1, _) = manifest_and_config(&lay, "v1");
    let found = json(&ociup_ok(&[
        "inspect",
        &graph,
        "--platform",
        "linux/amd64",
        "--json",
    ]));
    assert_eq!(found["digest"], v1);
    let err = ociup_err(&["inspect", &graph, "--platform", "linux/s390x"]);
    assert!(err.contains("no manifest for linux/s390x"), "{err}");

    // The same graph in the real registry: each index is fetched once (before: 1 + 8 x 10).
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let host = reg.host();
    let pushed = json(&ociup_ok(&[
        "copy",
        &graph,
        &format!("{host}/hostile/graph:g"),
        "--json",
    ]));
    assert_eq!(
        pushed["report"]["manifests_written"], 10,
        "each index pushed once"
    );
    let gets = |reg: &TestRegistry| reg.requests("GET", "/v2/hostile/graph/manifests/");
    let before = gets(&reg);
    let found = json(&ociup_ok(&[
        "inspect",
        &format!("{host}/hostile/graph:g"),
        "--platform",
        "linux/amd64",
        "--json",
    ]));
    assert_eq!(found["digest"], v1);
    assert!(gets(&reg) - before <= 10, "{} GETs", gets(&reg) - before);
    let before = gets(&reg);
    let out = ociup(&[
        "inspect",
        &format!("{host}/hostile/graph:g"),
        "--platform",
        "linux/s390x",
    ]);
    assert!(!out.status.success());
    assert_eq!(gets(&reg) - before, 9, "the nine indexes, once each");
}

//! Bad input: each case gets an error naming the problem, and nothing is left half-written.

use std::path::Path;

use crate::support::{copy_tree, fixtures, json, ociup_err, ociup_ok, snapshot};

/// A private copy of fixtures/base to damage.
fn base_copy(dir: &Path) -> std::path::PathBuf {
    let copy = dir.join("base");
    copy_tree(&fixtures().join("base"), &copy);
    copy
}

fn digests_of(layout: &Path, tag: &str) -> (String, String, Vec<(String, u64)>) {
    let r = format!("oci:{}:{tag}", layout.display());
    let v = json(&ociup_ok(&["inspect", &r, "--json"]));
    let layers = v["manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_owned(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    (
        v["digest"].as_str().unwrap().to_owned(),
        v["manifest"]["config"]["digest"]
            .as_str()
            .unwrap()
            .to_owned(),
        layers,
    )
}

fn blob_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(alg).join(hex)
}

/// Every blob in a layout hashes to its name, and no temporary file is left.
fn assert_clean(layout: &Path) {
    for (path, bytes) in snapshot(layout) {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            !name.starts_with('.'),
            "temporary file left: {}",
            path.display()
        );
        if path.starts_with("blobs/sha256") {
            let actual = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&bytes));
            assert_eq!(actual, name, "blob {} holds other bytes", path.display());
        }
    }
}

#[test]
fn corrupted_config_is_a_digest_mismatch() {
    let t = tempfile::tempdir().unwrap();
    let base = base_copy(t.path());
    let (_, config, _) = digests_of(&base, "v1");
    let p = blob_path(&base, &config);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&p, bytes).unwrap();
    let err = ociup_err(&["inspect", &format!("oci:{}:v1", base.display())]);
    assert!(
        err.contains("digest mismatch") && err.contains(&config),
        "{err}"
    );
}

#[test]
fn corrupted_or_truncated_layers_do_not_reach_another_layout() {
    let t = tempfile::tempdir().unwrap();
    let base = base_copy(t.path());
    let (_, _, layers) = digests_of(&base, "v1");
    let dest = t.path().join("dest");
    let to = format!("oci:{}:x", dest.display());
    let from = format!("oci:{}:v1", base.display());
    // A first good append creates the destination with an image in it.
    ociup_ok(&["append", "--base", &from, "--env", "A=1", "--to", &to]);
    let before = std::fs::read(dest.join("index.json")).unwrap();

    // Damage the top layer in the source, and remove it from the destination so it must be copied.
    let (top, size) = &layers[2];
    let p = blob_path(&base, top);
    let good = std::fs::read(&p).unwrap();
    std::fs::remove_file(blob_path(&dest, top)).unwrap();
    let mut bad = good.clone();
    bad[20] ^= 1;
    std::fs::write(&p, &bad).unwrap();
    let err = ociup_err(&["append", "--base", &from, "--env", "A=2", "--to", &to]);
    assert!(
        err.contains("digest mismatch") && err.contains(top),
        "{err}"
    );

    std::fs::write(&p, &good[..good.len() - 7]).unwrap();
    let err = ociup_err(&["append", "--base", &from, "--env", "A=2", "--to", &to]);
    assert!(
        err.contains("size mismatch") && err.contains(&format!("expected {size} bytes")),
        "{err}"
    );

    assert_eq!(
        std::fs::read(dest.join("index.json")).unwrap(),
        before,
        "index.json untouched"
    );
    assert!(
        !blob_path(&dest, top).exists(),
        "the bad blob never got its name"
    );
    assert_clean(&dest);
}

#[test]
fn malformed_index_missing_blob_missing_tag_unknown_media_type() {
    let t = tempfile::tempdir().unwrap();
    let base = base_copy(t.path());
    let r = |tag: &str| format!("oci:{}:{tag}", base.display());

    let err = ociup_err(&["inspect", &r("nope")]);
    assert!(err.contains(r#"tag "nope" not found"#), "{err}");

    let (manifest, _, _) = digests_of(&base, "v2");
    std::fs::remove_file(blob_path(&base, &manifest)).unwrap();
    let err = ociup_err(&["inspect", &r("v2")]);
    assert!(err.contains(&format!("blob {manifest} not found")), "{err}");

    // An index entry whose manifest is of a type ociup does not handle.
    let odd = br#"{"schemaVersion":2,"mediaType":"application/vnd.example.thing+json"}"#;
    let digest = format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(odd));
    std::fs::write(blob_path(&base, &digest), odd).unwrap();
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.example.thing+json", "digest": digest, "size": odd.len(),
            "annotations": {"org.opencontainers.image.ref.name": "odd"}
        }));
    std::fs::write(base.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let err = ociup_err(&["inspect", &r("odd")]);
    assert!(
        err.contains("unsupported media type") && err.contains("vnd.example.thing"),
        "{err}"
    );

    std::fs::write(base.join("index.json"), b"{\"manifests\": [").unwrap();
    let err = ociup_err(&["inspect", &r("v1")]);
    assert!(
        err.contains("malformed") && err.contains("index.json"),
        "{err}"
    );

    let err = ociup_err(&[
        "inspect",
        &format!("oci:{}", t.path().join("nowhere").display()),
    ]);
    assert!(err.contains("not an OCI image layout"), "{err}");
}

#[test]
fn rejected_input_leaves_the_destination_unchanged() {
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("dest");
    let to = format!("oci:{}:x", dest.display());
    let from = format!("oci:{}:v1", fixtures().join("base").display());
    ociup_ok(&["append", "--base", &from, "--env", "A=1", "--to", &to]);
    let before = snapshot(&dest);
    let missing = format!("{}:/x", t.path().join("missing").display());
    for args in [
        vec!["--add", missing.as_str()],
        vec!["--env", "NOEQUALS"],
        vec!["--expose", "http"],
        vec!["--remove", "/"],
        vec!["--entrypoint", "[not json"],
    ] {
        let mut full = vec!["append", "--base", from.as_str(), "--to", to.as_str()];
        full.extend(args.iter().copied());
        let err = ociup_err(&full);
        assert!(!err.is_empty());
        assert_eq!(snapshot(&dest), before, "{args:?} changed the layout");
    }
    let err = ociup_err(&[
        "append",
        "--base",
        &from,
        "--to",
        &format!("oci:{}:-bad", dest.display()),
    ]);
    assert!(err.contains("-bad"), "{err}");
    assert_eq!(snapshot(&dest), before);
}

#[test]
fn a_layout_named_without_oci_is_not_looked_up_on_docker_hub() {
    // `fixtures/base:v1` reads as docker.io/fixtures/base:v1; the directory is a layout here, so
    // the error says how to name it instead of asking Docker Hub.
    let t = tempfile::tempdir().unwrap();
    let lay = base_copy(t.path());
    for (input, dir) in [
        ("base:v1".to_owned(), "base"),
        ("base".to_owned(), "base"),
        ("./base:v1".to_owned(), "./base"),
    ] {
        let out = crate::support::ociup_in(&["inspect", &input], Some(t.path()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{input}");
        assert!(
            err.contains(&format!("{dir} is an OCI layout directory"))
                && err.contains(&format!("oci:{input}")),
            "{input}: {err}"
        );
        assert!(!err.contains("docker.io"), "{input}: {err}");
    }
    let absolute = format!("{}:v1", lay.display());
    let err = ociup_err(&["copy", &absolute, "oci:elsewhere:v1"]);
    assert!(err.contains(&format!("oci:{absolute}")), "{err}");
    assert!(!Path::new("elsewhere").exists());
}

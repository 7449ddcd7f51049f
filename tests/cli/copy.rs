//! `ociup copy` between layouts (registries are covered by ociup-registry's tests).

use crate::support::{fixtures, json, ociup_err, ociup_ok, snapshot};

#[test]
fn copies_whole_indexes_then_nothing_the_second_time() {
    let t = tempfile::tempdir().unwrap();
    let src = format!("oci:{}:v1", fixtures().join("multi").display());
    let dst = format!("oci:{}:copied", t.path().join("l").display());
    let first = json(&ociup_ok(&["copy", &src, &dst, "--json"]));
    let r = &first["report"];
    assert_eq!(r["manifests_written"], 3);
    assert_eq!(r["media_type"], "application/vnd.oci.image.index.v1+json");
    let source_digest = json(&ociup_ok(&["inspect", &src, "--json"]))["digest"].clone();
    assert_eq!(r["digest"], source_digest);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join("l/index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"].as_array().unwrap().len(),
        1,
        "children are not listed in index.json"
    );

    let before = snapshot(&t.path().join("l"));
    let second = json(&ociup_ok(&["copy", &src, &dst, "--json"]));
    // Into a layout every document and blob is checked again (a damaged one is repaired), the
    // index and its two manifests found present; nothing is copied and no tag written.
    assert_eq!(second["report"]["manifests_present"], 3);
    assert_eq!(second["report"]["blobs_copied"], 0);
    assert_eq!(second["report"]["tags_written"], 0);
    assert_eq!(snapshot(&t.path().join("l")), before, "nothing rewritten");
    // skopeo reads the copy as the original.
    let raw = crate::support::tool("skopeo", &["inspect", "--raw", &dst]);
    assert_eq!(
        format!(
            "sha256:{:x}",
            <sha2::Sha256 as sha2::Digest>::digest(raw.as_bytes())
        ),
        source_digest.as_str().unwrap()
    );
}

#[test]
fn one_platform_of_an_index() {
    let t = tempfile::tempdir().unwrap();
    let src = format!("oci:{}:v2", fixtures().join("multi").display());
    let dst = format!("oci:{}:arm", t.path().join("l").display());
    let out = json(&ociup_ok(&[
        "copy",
        &src,
        &dst,
        "--platform",
        "linux/arm64",
        "--json",
    ]));
    assert_eq!(
        out["report"]["media_type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let seen = json(&ociup_ok(&["inspect", &dst, "--json"]));
    assert_eq!(seen["config"]["architecture"], "arm64");
    let err = ociup_err(&["copy", &src, &dst, "--platform", "linux/riscv64"]);
    assert!(err.contains("no manifest for linux/riscv64"), "{err}");
    let err = ociup_err(&["copy", &src, "Bad/Name:x"]);
    assert!(err.contains("Bad/Name"), "{err}");
}

#[test]
fn the_summary_counts_a_tag_it_wrote() {
    let t = tempfile::tempdir().unwrap();
    let src = format!("oci:{}:v1", fixtures().join("base").display());
    let lay = t.path().join("l");
    let first = format!("oci:{}:first", lay.display());
    let second = format!("oci:{}:second", lay.display());
    let report = json(&ociup_ok(&["copy", &src, &first, "--json"]))["report"].clone();
    assert_eq!(report["manifests_written"], 1);
    assert_eq!(report["tags_written"], 1);
    // The image is there already: only a tag is written, and the summary says so.
    let report = json(&ociup_ok(&["copy", &src, &second, "--json"]))["report"].clone();
    assert_eq!(report["manifests_written"], 0, "{report}");
    assert_eq!(report["manifests_present"], 1, "{report}");
    assert_eq!(report["tags_written"], 1, "{report}");
    let digest = json(&ociup_ok(&["inspect", &src, "--json"]))["digest"].clone();
    for tagged in [&first, &second] {
        let seen = json(&ociup_ok(&["inspect", tagged, "--json"]));
        assert_eq!(seen["digest"], digest, "{tagged}");
    }
    // Once more: the tag already points there, nothing is written.
    let text = ociup_ok(&["copy", &src, &second]);
    assert!(text.contains("tags       0 written (second)"), "{text}");
    let report = json(&ociup_ok(&["copy", &src, &second, "--json"]))["report"].clone();
    assert_eq!(report["tags_written"], 0, "{report}");
    // A new tag in text.
    let third = format!("oci:{}:third", lay.display());
    let text = ociup_ok(&["copy", &src, &third]);
    assert!(text.contains("tags       1 written (third)"), "{text}");
}

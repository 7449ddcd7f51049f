//! Multi-platform custom images: `append` on an index base builds every platform (or those
//! asked for) under a new index, read back by skopeo and umoci.

use std::path::Path;

use serde_json::Value;

use crate::support::{blob, copy_tree, fixtures, json, ociup_err, ociup_ok, tool};

pub(crate) fn multi(tag: &str) -> String {
    format!("oci:{}:{tag}", fixtures().join("multi").display())
}

pub(crate) fn doc(layout: &Path, digest: &str) -> Value {
    serde_json::from_slice(&blob(layout, digest)).unwrap()
}

/// The custom files: a small file and one large enough for several compression threads.
pub(crate) fn app(dir: &Path) -> Vec<String> {
    std::fs::write(dir.join("app.txt"), b"custom app\n").unwrap();
    let big: Vec<u8> = (0u32..600_000)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761) >> 7).to_le_bytes())
        .collect();
    std::fs::write(dir.join("big.bin"), big).unwrap();
    vec![
        "--add".into(),
        format!("{}:/opt/app.txt", dir.join("app.txt").display()),
        "--add".into(),
        format!("{}:/opt/big.bin", dir.join("big.bin").display()),
        "--env".into(),
        "APP=1".into(),
    ]
}

fn append(base: &str, to: &str, extra: &[String]) -> Value {
    let mut args: Vec<&str> = vec!["append", "--base", base, "--to", to, "--json"];
    args.extend(extra.iter().map(String::as_str));
    json(&ociup_ok(&args))
}

/// Tags a manifest of a layout, for umoci, which names images by tag only.
pub(crate) fn tag(layout: &Path, digest: &str, tag: &str) {
    let raw = ociup_core::document::RawDocument::new(
        blob(layout, digest),
        ociup_core::media_type::OCI_MANIFEST,
    );
    ociup_core::layout::OciLayout::open(layout)
        .unwrap()
        .set_tag(&raw.descriptor(), Some(tag))
        .unwrap();
}

#[test]
fn append_on_an_index_base_builds_every_platform_under_a_new_index() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let made = append(
        &multi("v1"),
        &format!("oci:{}:app", out.display()),
        &app(t.path()),
    );
    assert_eq!(made["media_type"], ociup_core::media_type::OCI_INDEX);
    let base_index = json(&ociup_ok(&["inspect", &multi("v1"), "--json"]))["index"].clone();
    let index = doc(&out, made["digest"].as_str().unwrap());
    let entries = index["manifests"].as_array().unwrap();
    let base_entries = base_index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let layers = made["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "the custom layer is built once");
    let custom = layers[0]["digest"].as_str().unwrap();
    for (n, (entry, base_entry)) in entries.iter().zip(base_entries).enumerate() {
        // The base index's platform and order; the JSON names each child.
        assert_eq!(entry["platform"], base_entry["platform"]);
        assert_eq!(made["platforms"][n]["digest"], entry["digest"]);
        assert_eq!(made["platforms"][n]["base_digest"], base_entry["digest"]);
        let base_manifest = doc(
            &fixtures().join("multi"),
            base_entry["digest"].as_str().unwrap(),
        );
        let manifest = doc(&out, entry["digest"].as_str().unwrap());
        let mut want: Vec<Value> = base_manifest["layers"].as_array().unwrap().clone();
        want.push(manifest["layers"][3].clone());
        assert_eq!(manifest["layers"].as_array().unwrap(), &want);
        assert_eq!(
            manifest["layers"][3]["digest"], custom,
            "the same custom layer"
        );
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.base.digest"], base_entry["digest"],
            "each child sits on its own platform's base"
        );
        let config = doc(&out, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(
            config["architecture"],
            base_entry["platform"]["architecture"]
        );
        assert_eq!(config["variant"], base_entry["platform"]["variant"]);
        assert!(
            config["config"]["Env"]
                .as_array()
                .unwrap()
                .contains(&"APP=1".into())
        );
    }
    assert_eq!(
        index["annotations"]["org.opencontainers.image.base.digest"],
        json(&ociup_ok(&["inspect", &multi("v1"), "--json"]))["digest"]
    );

    // skopeo picks each platform of the index.
    let image = format!("oci:{}:app", out.display());
    for (n, arch, variant) in [(0, "amd64", None), (1, "arm64", Some("v8"))] {
        let mut args = vec!["inspect", "--override-arch", arch];
        if let Some(v) = variant {
            args.extend(["--override-variant", v]);
        }
        args.push(&image);
        let seen = json(&tool("skopeo", &args));
        assert_eq!(seen["Architecture"], arch);
        // The child's own layers (the base's differ per platform), the custom one on top.
        let child = doc(&out, entries[n]["digest"].as_str().unwrap());
        let want: Vec<&Value> = child["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["digest"])
            .collect();
        assert_eq!(
            seen["Layers"]
                .as_array()
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            want
        );
        assert_eq!(seen["Layers"][3], custom);
    }

    // umoci unpacks each child: the base's platform marker and the custom files.
    for (n, marker) in [(0, "(amd64)"), (1, "(arm64/v8)")] {
        let name = format!("child{n}");
        tag(&out, entries[n]["digest"].as_str().unwrap(), &name);
        let bundle = t.path().join(format!("bundle{n}"));
        tool(
            "umoci",
            &[
                "unpack",
                "--rootless",
                "--image",
                &format!("{}:{name}", out.display()),
                bundle.to_str().unwrap(),
            ],
        );
        let rootfs = bundle.join("rootfs");
        let hello = std::fs::read_to_string(rootfs.join("bin/hello")).unwrap();
        assert!(hello.contains(marker), "{hello}");
        assert_eq!(
            std::fs::read(rootfs.join("opt/app.txt")).unwrap(),
            b"custom app\n"
        );
        assert_eq!(
            std::fs::read(rootfs.join("opt/big.bin")).unwrap(),
            std::fs::read(t.path().join("big.bin")).unwrap()
        );
    }
}

#[test]
fn an_index_append_gives_the_same_digest_in_two_processes_whatever_the_threads() {
    let t = tempfile::tempdir().unwrap();
    let steps = app(t.path());
    let digests: Vec<Value> = [("a", "1"), ("b", "4")]
        .iter()
        .map(|(dir, threads)| {
            let mut args = steps.clone();
            args.extend(["--threads".into(), (*threads).into()]);
            append(
                &multi("v1"),
                &format!("oci:{}:app", t.path().join(dir).display()),
                &args,
            )["digest"]
                .clone()
        })
        .collect();
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn platforms_can_be_chosen_and_one_gives_a_single_manifest() {
    let t = tempfile::tempdir().unwrap();
    let steps = app(t.path());
    let to = |n: &str| format!("oci:{}:{n}", t.path().join("out").display());
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v = steps.clone();
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let all = append(&multi("v1"), &to("all"), &steps);
    let one = append(
        &multi("v1"),
        &to("one"),
        &with(&["--platform", "linux/arm64"]),
    );
    assert_eq!(one["media_type"], ociup_core::media_type::OCI_MANIFEST);
    assert_eq!(
        one["digest"], all["platforms"][1]["digest"],
        "the same manifest as the index's arm64 child"
    );
    // Asked in another order, built in the base index's order; "all" is the default.
    let both = append(
        &multi("v1"),
        &to("both"),
        &with(&["--platform", "linux/arm64", "--platform", "linux/amd64"]),
    );
    assert_eq!(both["digest"], all["digest"]);
    let every = append(&multi("v1"), &to("every"), &with(&["--platform", "all"]));
    assert_eq!(every["digest"], all["digest"]);
    let err = ociup_err(
        &[
            &["append", "--base", &multi("v1"), "--to", &to("x")][..],
            &[
                "--env",
                "A=1",
                "--platform",
                "linux/amd64",
                "--platform",
                "linux/s390x",
            ],
        ]
        .concat(),
    );
    assert!(err.contains("no manifest for linux/s390x"), "{err}");
}

#[test]
fn attestations_of_the_base_are_left_out_and_a_docker_list_gives_a_docker_list() {
    use ociup_core::document::RawDocument;
    use ociup_core::media_type::{DOCKER_INDEX, DOCKER_MANIFEST, OCI_INDEX};
    use ociup_core::store::{ManifestRef, Store};
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("multi");
    copy_tree(&fixtures().join("multi"), &lay);
    let docker = t.path().join("docker");
    copy_tree(&fixtures().join("docker"), &docker);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        // The multi base with an attestation of its amd64 child (BuildKit's form).
        let layout = ociup_core::layout::OciLayout::open(&lay).unwrap();
        let raw = layout
            .get_manifest(&ManifestRef::Tag("v1".into()))
            .await
            .unwrap();
        let mut v: Value = serde_json::from_slice(raw.bytes()).unwrap();
        let mut att = v["manifests"][0].clone();
        att["platform"] = serde_json::json!({"os": "unknown", "architecture": "unknown"});
        att["annotations"] = serde_json::json!({
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": v["manifests"][0]["digest"],
        });
        v["manifests"].as_array_mut().unwrap().push(att);
        let index = RawDocument::canonical(&v, OCI_INDEX).unwrap();
        layout.put_manifest(&index, Some("att")).await.unwrap();
        // A Docker manifest list over the Docker fixture.
        let layout = ociup_core::layout::OciLayout::open(&docker).unwrap();
        let m = layout
            .get_manifest(&ManifestRef::Tag("v1".into()))
            .await
            .unwrap();
        let list = RawDocument::canonical(
            &serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_INDEX, "manifests": [
                {"mediaType": DOCKER_MANIFEST, "digest": m.digest().to_string(), "size": m.size(),
                 "platform": {"os": "linux", "architecture": "amd64"}}]}),
            DOCKER_INDEX,
        )
        .unwrap();
        layout.put_manifest(&list, Some("list")).await.unwrap();
    });
    let out = t.path().join("out");
    let made = append(
        &format!("oci:{}:att", lay.display()),
        &format!("oci:{}:att", out.display()),
        &["--env".into(), "A=1".into()],
    );
    let index = doc(&out, made["digest"].as_str().unwrap());
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(made["dropped_attestations"].as_array().unwrap().len(), 1);
    assert!(
        !index.to_string().contains("unknown"),
        "no attestation entry: {index}"
    );

    let made = append(
        &format!("oci:{}:list", docker.display()),
        &format!("oci:{}:list", out.display()),
        &["--env".into(), "A=1".into()],
    );
    assert_eq!(made["media_type"], DOCKER_INDEX);
    let child = doc(&out, made["platforms"][0]["digest"].as_str().unwrap());
    assert_eq!(child["mediaType"], DOCKER_MANIFEST);
}

#[test]
fn index_create_add_and_remove_assemble_an_index_skopeo_reads() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let r = |tag: &str| format!("oci:{}:{tag}", out.display());
    let steps = vec!["--env".to_owned(), "A=1".to_owned()];
    let mut digests = Vec::new();
    for (tag, platform) in [("amd", "linux/amd64"), ("arm", "linux/arm64")] {
        let mut args = steps.clone();
        args.extend(["--platform".into(), platform.into()]);
        digests.push(append(&multi("v1"), &r(tag), &args)["digest"].clone());
    }
    let index = json(&ociup_ok(&[
        "index",
        "create",
        "--to",
        &r("both"),
        &r("amd"),
        &r("arm"),
        "--json",
    ]));
    assert_eq!(index["media_type"], ociup_core::media_type::OCI_INDEX);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests[0]["platform"], "linux/amd64");
    assert_eq!(
        manifests[1]["platform"], "linux/arm64/v8",
        "the variant from the config"
    );
    assert_eq!(manifests[0]["digest"], digests[0]);
    assert_eq!(manifests[1]["digest"], digests[1]);
    let stored = doc(&out, index["digest"].as_str().unwrap());
    assert_eq!(
        stored["manifests"][1]["platform"],
        serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})
    );
    for (n, arch, variant) in [(0, "amd64", "v1"), (1, "arm64", "v8")] {
        let seen = json(&tool(
            "skopeo",
            &[
                "inspect",
                "--override-arch",
                arch,
                "--override-variant",
                variant,
                &r("both"),
            ],
        ));
        assert_eq!(seen["Architecture"], arch);
        let child = doc(&out, digests[n].as_str().unwrap());
        // The bin layer tells the platforms apart (it says which one it is).
        assert_eq!(seen["Layers"][1], child["layers"][1]["digest"]);
        assert_ne!(
            seen["Layers"][1],
            doc(&out, digests[1 - n].as_str().unwrap())["layers"][1]["digest"]
        );
    }

    // Refused: two of one platform, Docker beside OCI, a manifest of another store.
    let err = ociup_err(&["index", "create", "--to", &r("x"), &r("amd"), &r("amd")]);
    assert!(err.contains("both for linux/amd64"), "{err}");
    ociup_ok(&[
        "copy",
        &format!("oci:{}:v1", fixtures().join("docker").display()),
        &r("docker"),
    ]);
    let err = ociup_err(&["index", "create", "--to", &r("x"), &r("arm"), &r("docker")]);
    assert!(err.contains("never mixes Docker and OCI"), "{err}");
    let err = ociup_err(&[
        "index",
        "create",
        "--to",
        &r("x"),
        &format!("oci:{}:v1", fixtures().join("base").display()),
    ]);
    assert!(err.contains("not in the store of --to"), "{err}");

    // remove and add change it; adding back gives the same index.
    let one = json(&ociup_ok(&[
        "index",
        "remove",
        "--to",
        &r("both"),
        "--platform",
        "linux/arm64",
        "--json",
    ]));
    assert_eq!(one["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(one["removed"][0], digests[1]);
    let err = ociup_err(&["index", "add", "--to", &r("both"), &r("amd")]);
    assert!(err.contains("already has"), "{err}");
    let again = json(&ociup_ok(&[
        "index",
        "add",
        "--to",
        &r("both"),
        &r("arm"),
        "--json",
    ]));
    assert_eq!(again["digest"], index["digest"]);
    let by_digest = json(&ociup_ok(&[
        "index",
        "remove",
        "--to",
        &r("both"),
        "--digest",
        digests[0].as_str().unwrap(),
        "--json",
    ]));
    assert_eq!(by_digest["manifests"][0]["digest"], digests[1]);
    let tagged = json(&ociup_ok(&["inspect", &r("both"), "--json"]));
    assert_eq!(tagged["digest"], by_digest["digest"], "the tag moved");
}

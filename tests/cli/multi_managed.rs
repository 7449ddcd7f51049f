//! Managed images on a multi-platform base: `register` records an index version, `resolve`
//! rebuilds only the platforms whose base manifest moved, build manifests per platform and for
//! the index, replay, and a base that drops a platform.

use std::path::Path;

use crate::multi::{app, doc, tag};
use crate::support::{copy_tree, fixtures, json, ociup_at, ok_at, tool};

/// The children of `fixtures/multi`: amd64 and arm64 of v1, arm64 of v2.
const AMD64_V1: &str = "sha256:04834a0cd30fdcd9e563b4e605f3506ecb663cf1419a010a76e3e34464ead1e2";
const ARM64_V1: &str = "sha256:d0134590836c3eebb90699039c57f9e2a0a96996d02f36ca605dd5bc5f15829e";
const ARM64_V2: &str = "sha256:b1069d47d11f4045b73683368df4151fa2f694e6cdb7951fa6fd667cfa49e3a8";
const AMD64_V2: &str = "sha256:0a3090c27a071b86cf04f716e579a8e1104d60a6c86fd655691d805eb903f6c8";

/// Points the tag `cur` of the layout `multi` in `d` at an index of these manifests of it.
fn point_cur(d: &Path, children: &[&str]) {
    let mut args = vec!["index", "create", "--to", "oci:multi:cur"];
    let refs: Vec<String> = children.iter().map(|c| format!("oci:multi@{c}")).collect();
    args.extend(refs.iter().map(String::as_str));
    ok_at(d, &args);
}

/// umoci unpacks `child` of the layout `out`: the base's platform marker and the custom files.
fn unpacks_with(out: &Path, child: &str, marker: &str, d: &Path) {
    let name = format!("c{}", &child[7..19]);
    tag(out, child, &name);
    let bundle = d.join(format!("bundle-{name}"));
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
        std::fs::read(d.join("big.bin")).unwrap()
    );
}

fn register_args<'a>(steps: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "register",
        "app",
        "--base",
        "oci:multi:cur",
        "--to",
        "oci:img",
        "--json",
    ];
    args.extend(extra);
    args.extend(steps.iter().map(String::as_str));
    args
}

#[test]
#[allow(clippy::too_many_lines)]
fn an_index_nick_regenerates_only_the_platforms_whose_base_moved() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    copy_tree(&fixtures().join("multi"), &d.join("multi"));
    ok_at(d, &["copy", "oci:multi:v1", "oci:multi:cur"]);
    ok_at(d, &["keygen", "--out", "k"]);
    let steps = app(d);
    let v1 = json(&ok_at(d, &register_args(&steps, &["--sign-key", "k.key"])));
    let img = d.join("img");
    let base_index = json(&ok_at(d, &["inspect", "oci:multi:v1", "--json"]));
    assert_eq!(v1["base_digest"], base_index["digest"]);
    let index = doc(&img, v1["digest"].as_str().unwrap());
    assert_eq!(index["mediaType"], ociup_core::media_type::OCI_INDEX);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let mut custom = None;
    for (n, (entry, (arch, base))) in entries
        .iter()
        .zip([("amd64", AMD64_V1), ("arm64", ARM64_V1)])
        .enumerate()
    {
        let p = &v1["platforms"][n];
        assert_eq!(p["digest"], entry["digest"]);
        assert_eq!(p["base_digest"], base, "each on its own platform's base");
        assert_eq!(p["built_in"], 1);
        assert!(p["build_manifest"].is_array(), "each platform is signed");
        let manifest = doc(&img, entry["digest"].as_str().unwrap());
        let base_manifest = doc(&d.join("multi"), base);
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(
            layers[..3],
            base_manifest["layers"].as_array().unwrap()[..],
            "the base's layers"
        );
        let own = layers[3]["digest"].clone();
        assert_eq!(*custom.get_or_insert(own.clone()), own, "the same layer");
        let config = doc(&img, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["architecture"], arch);
    }
    // skopeo picks each platform of the nick's index; umoci unpacks each child.
    // (skopeo takes a layout's tag, not its digest: the nick's own tag.)
    let pinned = &format!("oci:{}:app", img.display());
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
        let mut args = vec!["inspect", "--override-arch", arch];
        if let Some(v) = variant {
            args.extend(["--override-variant", v]);
        }
        args.push(pinned);
        let seen = json(&tool("skopeo", &args));
        assert_eq!(seen["Architecture"], arch);
        assert_eq!(seen["Layers"][3], custom.clone().unwrap());
    }
    let amd64 = v1["platforms"][0]["digest"].as_str().unwrap().to_owned();
    let arm64 = v1["platforms"][1]["digest"].as_str().unwrap().to_owned();
    unpacks_with(&img, &amd64, "(amd64)", d);
    unpacks_with(&img, &arm64, "(arm64/v8)", d);

    // Only arm64 of the base moves: amd64 keeps its manifest byte for byte.
    point_cur(d, &[AMD64_V1, ARM64_V2]);
    let signed = ["--sign-key", "k.key"];
    let r = json(&ok_at(
        d,
        &[&["resolve", "app", "--json"][..], &signed].concat(),
    ));
    assert_eq!(
        (r["upgraded"].as_bool(), r["version"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(r["platforms"][0]["digest"], amd64.as_str());
    assert_eq!(r["platforms"][0]["base_digest"], AMD64_V1);
    assert_ne!(r["platforms"][1]["digest"], arm64.as_str());
    assert_eq!(r["platforms"][1]["base_digest"], ARM64_V2);
    assert!(r.get("dropped_platforms").is_none(), "{r}");
    let new_arm64 = r["platforms"][1]["digest"].as_str().unwrap().to_owned();
    let arm_manifest = doc(&img, &new_arm64);
    assert_eq!(arm_manifest["layers"][3]["digest"], custom.clone().unwrap());
    assert_eq!(
        arm_manifest["annotations"]["org.opencontainers.image.base.digest"],
        ARM64_V2
    );
    unpacks_with(&img, &new_arm64, "(arm64/v8)", d);
    let history = json(&ok_at(d, &["history", "app", "--json"]));
    assert_eq!(history.as_array().unwrap().len(), 2, "one new version");
    assert_eq!(history[0]["platforms"][0]["built_in"], 1, "amd64 kept");
    assert_eq!(history[0]["platforms"][1]["built_in"], 2);
    let text = ok_at(d, &["history", "app"]);
    assert!(text.contains("(kept from v1)"), "{text}");
    let status = json(&ok_at(d, &["status", "--json"]));
    assert_eq!(status[0]["status"], "current");
    assert_eq!(status[0]["digest"], r["digest"]);
    assert_eq!(status[0]["platforms"], r["platforms"]);
    // Nothing more to do.
    let again = json(&ok_at(
        d,
        &[&["resolve", "app", "--json"][..], &signed].concat(),
    ));
    assert_eq!(
        (again["upgraded"].as_bool(), again["version"].as_u64()),
        (Some(false), Some(2))
    );

    // Verify: the whole index, a platform of it, and the nick (each platform against the
    // version that built it).
    let whole = json(&ok_at(
        d,
        &[
            "verify",
            r["reference"].as_str().unwrap(),
            "--key",
            "k.pub",
            "--json",
        ],
    ));
    assert_eq!(whole["version"], 2);
    assert_eq!(whole["platforms"].as_array().unwrap().len(), 2);
    assert_eq!(whole["platforms"][0]["version"], 1);
    let child = json(&ok_at(
        d,
        &[
            "verify",
            &format!("oci:img@{new_arm64}"),
            "--key",
            "k.pub",
            "--json",
        ],
    ));
    assert_eq!(
        (child["version"].as_u64(), child["layers"].as_u64()),
        (Some(2), Some(1))
    );
    let nick = json(&ok_at(d, &["verify", "app", "--key", "k.pub", "--json"]));
    assert_eq!(nick["digest"], r["digest"]);
    // Replays reach both versions' index digests.
    for v in ["app@1", "app@2"] {
        let out = json(&ok_at(
            d,
            &["replay", v, "--dir", d.to_str().unwrap(), "--json"],
        ));
        assert_eq!(out["same"], true, "{v}: {out}");
    }

    // The base drops arm64: a version of amd64 alone, saying so.
    point_cur(d, &[AMD64_V2]);
    let (code, out, err) = ociup_at(d, &[&["resolve", "app", "--json"][..], &signed].concat());
    assert_eq!(code, 0, "{err}");
    let r3 = json(&out);
    assert_eq!(r3["version"], 3);
    assert_eq!(
        r3["dropped_platforms"],
        serde_json::json!(["linux/arm64/v8"])
    );
    assert!(err.contains("no longer has linux/arm64/v8"), "{err}");
    assert_eq!(r3["platforms"].as_array().unwrap().len(), 1);
    assert_eq!(r3["platforms"][0]["base_digest"], AMD64_V2);
    let index3 = doc(&img, r3["digest"].as_str().unwrap());
    assert_eq!(index3["manifests"].as_array().unwrap().len(), 1);
    let history = json(&ok_at(d, &["history", "app", "--json"]));
    assert_eq!(history[0]["dropped_platforms"], r3["dropped_platforms"]);
    let out = json(&ok_at(
        d,
        &["replay", "app@3", "--dir", d.to_str().unwrap(), "--json"],
    ));
    assert_eq!(out["same"], true, "{out}");
    ok_at(d, &["verify", "app", "--key", "k.pub"]);
}

#[test]
fn register_on_an_index_is_deterministic_and_platform_restricts_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    copy_tree(&fixtures().join("multi"), &d.join("multi"));
    ok_at(d, &["copy", "oci:multi:v1", "oci:multi:cur"]);
    let steps = app(d);
    let base = format!("oci:{}:cur", d.join("multi").display());
    // Two processes, one limited to one core (so one compression thread), each with a catalog
    // and target of its own, on the same base.
    let mut made = Vec::new();
    for (sub, one_core) in [("a", true), ("b", false)] {
        let dir = d.join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec![
            "register", "app", "--base", &base, "--to", "oci:img", "--json",
        ];
        args.extend(steps.iter().map(String::as_str));
        let out = if one_core {
            let out = std::process::Command::new("taskset")
                .args(["-c", "0", env!("CARGO_BIN_EXE_ociup")])
                .args(&args)
                .current_dir(&dir)
                .env(
                    "OCIUP_CATALOG",
                    format!("oci:{}", dir.join("catalog").display()),
                )
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .env_remove("OCIUP_SIGNING_KEY")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        } else {
            ok_at(&dir, &args)
        };
        made.push(json(&out));
    }
    assert_eq!(made[0]["digest"], made[1]["digest"]);
    assert_eq!(made[0]["platforms"], made[1]["platforms"]);

    // --platform restricts the nick: one named gives a single image; a platform it lacks is
    // named.
    let one = json(&ok_at(
        d,
        &register_args(&steps, &["--platform", "linux/arm64"]),
    ));
    assert!(one["platforms"].is_null(), "{one}");
    assert_eq!(
        one["digest"], made[0]["platforms"][1]["digest"],
        "the same manifest as the index's arm64 child"
    );
    let (code, _, err) = ociup_at(
        d,
        &[
            "register",
            "bad",
            "--base",
            "oci:multi:cur",
            "--to",
            "oci:img",
            "--env",
            "A=1",
            "--platform",
            "linux/amd64",
            "--platform",
            "linux/s390x",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no manifest for linux/s390x"), "{err}");
    // Several: an index of them, which keeps them when the base gains or moves others.
    let two = json(&ok_at(
        d,
        &[
            "register",
            "pair",
            "--base",
            "oci:multi:cur",
            "--to",
            "oci:img",
            "--env",
            "A=1",
            "--platform",
            "linux/arm64",
            "--platform",
            "linux/amd64",
            "--json",
        ],
    ));
    assert_eq!(two["platforms"].as_array().unwrap().len(), 2);
    // An edit rebuilds the nick's platforms, as an index again.
    let edited = json(&ok_at(d, &["edit", "pair", "--env", "B=2", "--json"]));
    assert_eq!(edited["number"], 2);
    assert_eq!(edited["platforms"].as_array().unwrap().len(), 2);
    assert_eq!(edited["platforms"][1]["built_in"], 2);
    assert_ne!(
        edited["platforms"][1]["digest"],
        two["platforms"][1]["digest"]
    );
    let single = json(&ok_at(d, &["edit", "app", "--env", "B=2", "--json"]));
    assert!(
        single["platforms"].is_null(),
        "a single image stays one: {single}"
    );
}

#[test]
fn on_a_registry_only_the_moved_platform_is_read_and_written() {
    use crate::registry::run;
    use crate::registry_support::{AuthMode, RegistryOptions, TestRegistry};
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let host = reg.host();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let catalog = format!("oci:{}", d.join("catalog").display());
    let env = [("OCIUP_CATALOG", catalog.as_str())];
    let ok = |args: &[&str]| {
        let (ok, out, err) = run(args, &env, "");
        assert!(ok, "ociup {args:?}: {err}");
        out
    };
    for (tag, to) in [("v1", "v1"), ("v2", "v2"), ("v1", "cur")] {
        ok(&[
            "copy",
            &format!("oci:{}:{tag}", fixtures().join("multi").display()),
            &format!("{host}/lib/multi:{to}"),
        ]);
    }
    let steps = app(d);
    let mut args = vec![
        "register".to_owned(),
        "app".into(),
        "--base".into(),
        format!("{host}/lib/multi:cur"),
        "--to".into(),
        format!("{host}/team/app"),
        "--json".into(),
    ];
    args.extend(steps);
    let v1 = json(&ok(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let amd64 = v1["platforms"][0]["digest"].as_str().unwrap().to_owned();
    let arm64 = v1["platforms"][1]["digest"].as_str().unwrap().to_owned();
    let child = |digest: &str| {
        let (_, out, _) = run(
            &["inspect", &format!("{host}/team/app@{digest}"), "--json"],
            &env,
            "",
        );
        json(&out)
    };
    let custom = child(&amd64)["manifest"]["layers"][3]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    // The amd64 blobs: the base's config and layers, and the nick's own config.
    let base_amd64 = doc(&fixtures().join("multi"), AMD64_V1);
    let mut amd64_blobs: Vec<String> = base_amd64["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(std::iter::once(&base_amd64["config"]))
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    amd64_blobs.push(
        child(&amd64)["manifest"]["config"]["digest"]
            .as_str()
            .unwrap()
            .to_owned(),
    );

    // Only arm64 of the base index moves.
    ok(&[
        "index",
        "create",
        "--to",
        &format!("{host}/lib/multi:cur"),
        &format!("{host}/lib/multi@{AMD64_V1}"),
        &format!("{host}/lib/multi@{ARM64_V2}"),
    ]);
    let count = |method: &str, part: &str| reg.requests(method, part);
    let blob_reads = |reg_count: &dyn Fn(&str, &str) -> usize| {
        amd64_blobs
            .iter()
            .map(|b| reg_count("GET", &format!("/blobs/{b}")))
            .sum::<usize>()
    };
    let reads_before = blob_reads(&count);
    let uploads = || {
        count("PUT", "/v2/team/app/blobs/uploads/") + count("PATCH", "/v2/team/app/blobs/uploads/")
    };
    let uploads_before = uploads();
    let custom_writes = || {
        ["POST", "PUT", "PATCH"]
            .iter()
            .map(|m| count(m, &custom[7..]))
            .sum::<usize>()
    };
    let custom_before = custom_writes();
    let r = json(&ok(&["resolve", "app", "--json"]));
    assert_eq!(
        (r["upgraded"].as_bool(), r["version"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(r["platforms"][0]["digest"], amd64.as_str(), "amd64 kept");
    assert_ne!(r["platforms"][1]["digest"], arm64.as_str(), "arm64 rebuilt");
    assert_eq!(
        json(&ok(&["history", "app", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        2,
        "one new version"
    );
    assert_eq!(
        custom_writes(),
        custom_before,
        "the custom layer is not uploaded or mounted"
    );
    assert_eq!(
        uploads() - uploads_before,
        1,
        "only arm64's new config is uploaded"
    );
    assert_eq!(blob_reads(&count), reads_before, "no amd64 blob is read");
    // The new arm64 child: its base's layers and the same custom layer.
    let new_arm64 = child(r["platforms"][1]["digest"].as_str().unwrap());
    assert_eq!(
        new_arm64["manifest"]["layers"][3]["digest"],
        custom.as_str()
    );
    assert_eq!(new_arm64["config"]["architecture"], "arm64");
}

/// The catalog layout of `d`, its entry of `nick` (the manifest) and its version record.
mod forge {
    use std::path::Path;

    use ociup_core::digest::Digest;
    use ociup_core::document::RawDocument;
    use ociup_core::layout::OciLayout;
    use ociup_core::store::{ManifestRef, Store};
    use serde_json::Value;

    const VERSION: &str = "application/vnd.ociup.version.v1+json";

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Runtime::new().unwrap().block_on(f)
    }

    fn catalog(d: &Path) -> OciLayout {
        OciLayout::open(d.join("catalog")).unwrap()
    }

    /// Rewrites the version record of `nick` with `change` (and the entry's summary annotations
    /// with `annotate`), as someone with write access to the catalog could.
    pub fn version(
        d: &Path,
        nick: &str,
        change: impl FnOnce(&mut Value),
        annotate: impl FnOnce(&mut Value),
    ) {
        let tag = format!("nick.{nick}");
        let raw = block_on(catalog(d).get_manifest(&ManifestRef::Tag(tag.clone()))).unwrap();
        let mut entry: Value = serde_json::from_slice(raw.bytes()).unwrap();
        let layer = entry["layers"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|l| l["mediaType"] == VERSION)
            .unwrap();
        let path = d.join("catalog/blobs/sha256").join(
            layer["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:"),
        );
        let mut record: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        change(&mut record);
        let bytes = ociup_core::document::canonical_json(&record).unwrap();
        let digest = Digest::sha256(&bytes);
        block_on(catalog(d).put_blob(&digest, bytes.len() as u64, &bytes[..])).unwrap();
        layer["digest"] = digest.to_string().into();
        layer["size"] = bytes.len().into();
        annotate(&mut entry["annotations"]);
        let raw = RawDocument::canonical(&entry, ociup_core::media_type::OCI_MANIFEST).unwrap();
        block_on(catalog(d).put_manifest(&raw, Some(&tag))).unwrap();
    }

    /// Sets `key` of the JSON list in the annotation `dev.ociup.platforms` at `n`.
    pub fn platforms_annotation(ann: &mut Value, n: usize, key: &str, value: &str) {
        let mut list: Value =
            serde_json::from_str(ann["dev.ociup.platforms"].as_str().unwrap()).unwrap();
        list[n][key] = value.into();
        ann["dev.ociup.platforms"] = list.to_string().into();
    }
}

#[test]
fn a_record_naming_another_platform_manifest_than_its_index_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    copy_tree(&fixtures().join("multi"), &d.join("multi"));
    ok_at(d, &["copy", "oci:multi:v1", "oci:multi:cur"]);
    ok_at(d, &["keygen", "--out", "k"]);
    let steps = app(d);
    let v1 = json(&ok_at(d, &register_args(&steps, &["--sign-key", "k.key"])));
    // amd64 made to name the base's own amd64 manifest (kept, as its base did not move).
    forge::version(
        d,
        "app",
        |r| {
            r["platforms"][0]["digest"] = AMD64_V1.into();
            r["platforms"][0]
                .as_object_mut()
                .unwrap()
                .remove("documents");
        },
        |ann| forge::platforms_annotation(ann, 0, "digest", AMD64_V1),
    );
    let signed = ["resolve", "app", "--json", "--sign-key", "k.key"];
    let (code, out, err) = ociup_at(d, &signed);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("changed outside ociup"), "{err}");
    assert!(err.contains(AMD64_V1), "names the foreign manifest: {err}");
    // After arm64 moved, no version is made on it: nothing is written to the target.
    point_cur(d, &[AMD64_V1, ARM64_V2]);
    let before = crate::support::snapshot(&d.join("img"));
    let (code, _, err) = ociup_at(d, &signed);
    assert_eq!(code, 1);
    assert!(err.contains("changed outside ociup"), "{err}");
    assert_eq!(before, crate::support::snapshot(&d.join("img")));
    let history = json(&ok_at(d, &["history", "app", "--json"]));
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert_eq!(history[0]["digest"], v1["digest"]);
}

#[test]
fn a_base_moving_from_an_oci_index_to_a_docker_list_keeps_the_nicks_family() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    copy_tree(&fixtures().join("multi"), &d.join("multi"));
    ok_at(d, &["copy", "oci:multi:v1", "oci:multi:cur"]);
    let steps = app(d);
    let v1 = json(&ok_at(d, &register_args(&steps, &[])));
    // The same platforms as Docker manifests (skopeo converts them), under a Docker list.
    let layout = d.join("multi");
    let mut docker = Vec::new();
    for (child, name) in [(AMD64_V1, "amd"), (ARM64_V2, "arm")] {
        tag(&layout, child, name);
        let from = format!("oci:{}:{name}", layout.display());
        let to = format!("oci:{}:d{name}", layout.display());
        tool(
            "skopeo",
            &["copy", "--format", "v2s2", "--quiet", &from, &to],
        );
        let inspected = json(&ok_at(
            d,
            &["inspect", &format!("oci:multi:d{name}"), "--json"],
        ));
        docker.push(inspected["digest"].as_str().unwrap().to_owned());
    }
    let refs: Vec<&str> = docker.iter().map(String::as_str).collect();
    point_cur(d, &refs);
    let base = doc(
        &layout,
        json(&ok_at(d, &["inspect", "oci:multi:cur", "--json"]))["digest"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        base["mediaType"],
        ociup_core::media_type::DOCKER_INDEX,
        "{base}"
    );
    let r = json(&ok_at(d, &["resolve", "app", "--json"]));
    assert_eq!(
        (r["upgraded"].as_bool(), r["version"].as_u64()),
        (Some(true), Some(2)),
        "{r}"
    );
    let img = d.join("img");
    let index = doc(&img, r["digest"].as_str().unwrap());
    assert_eq!(
        index["mediaType"],
        doc(&img, v1["digest"].as_str().unwrap())["mediaType"],
        "the nick's own family"
    );
    for (n, base) in docker.iter().enumerate() {
        assert_eq!(r["platforms"][n]["base_digest"], base.as_str());
        let child = &index["manifests"][n];
        assert_eq!(child["digest"], r["platforms"][n]["digest"]);
        assert_eq!(child["mediaType"], ociup_core::media_type::OCI_MANIFEST);
    }
}

/// Points the tag `cur` of the layout `multi` in `d` at an index of these manifests of it whose
/// entries have no platform object (each platform is in its config).
fn point_cur_without_platforms(d: &Path, children: &[&str]) {
    use ociup_core::store::Store as _;
    point_cur(d, children);
    let layout = ociup_core::layout::OciLayout::open(d.join("multi")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let raw = rt
        .block_on(layout.get_manifest(&ociup_core::store::ManifestRef::Tag("cur".into())))
        .unwrap();
    let mut index: serde_json::Value = serde_json::from_slice(raw.bytes()).unwrap();
    for e in index["manifests"].as_array_mut().unwrap() {
        e.as_object_mut().unwrap().remove("platform");
    }
    let raw =
        ociup_core::document::RawDocument::canonical(&index, ociup_core::media_type::OCI_INDEX)
            .unwrap();
    rt.block_on(layout.put_manifest(&raw, Some("cur"))).unwrap();
}

#[test]
fn a_base_index_without_platform_objects_is_resolved_as_append_reads_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    copy_tree(&fixtures().join("multi"), &d.join("multi"));
    point_cur_without_platforms(d, &[AMD64_V1, ARM64_V1]);
    let steps = app(d);
    let v1 = json(&ok_at(d, &register_args(&steps, &[])));
    assert_eq!(v1["platforms"].as_array().unwrap().len(), 2, "{v1}");
    point_cur_without_platforms(d, &[AMD64_V1, ARM64_V2]);
    let r = json(&ok_at(d, &["resolve", "app", "--json"]));
    assert_eq!(
        (r["upgraded"].as_bool(), r["version"].as_u64()),
        (Some(true), Some(2)),
        "{r}"
    );
    assert_eq!(r["platforms"][0]["digest"], v1["platforms"][0]["digest"]);
    assert_eq!(r["platforms"][1]["base_digest"], ARM64_V2);
    assert_ne!(r["platforms"][1]["digest"], v1["platforms"][1]["digest"]);
    assert!(r.get("dropped_platforms").is_none(), "{r}");
}

//! Managed images: the quickstart, register/resolve on the real registry with a base that
//! moves, concurrent resolves, bad input, and verify against tampering.

use std::process::Command;

use crate::registry_support::{AuthMode, RegistryOptions, TestRegistry};
use crate::support::{fixtures, json, ociup_at, ok_at, repo, snapshot, tool};

#[test]
fn the_quickstart_upgrades_exactly_once() {
    let t = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("scripts/quickstart.sh"))
        .env("OCIUP", env!("CARGO_BIN_EXE_ociup"))
        .env("QUICKSTART_DIR", t.path().join("qs"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The answers of the three resolves, in order.
    let answers: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("oci:") && l.contains("@sha256:"))
        .collect();
    let registered = stdout
        .lines()
        .skip_while(|l| !l.starts_with("registered trainer version 1"))
        .nth(1)
        .unwrap()
        .trim();
    assert_eq!(answers.len(), 3, "{stdout}");
    assert_eq!(
        answers[0], registered,
        "base unchanged: the registered version"
    );
    assert_ne!(answers[1], answers[0], "base moved: a new version");
    assert_eq!(
        answers[2], answers[1],
        "nothing moved since: the same version"
    );
    assert!(stdout.contains("trainer              stale"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("v2 ") && l.contains("base moved"))
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("v1 ") && l.contains("registered"))
    );
    // One file added, /opt/train.py: the /opt it lives in is the base's, not the layer's.
    assert!(stdout.contains("signature good, 1 own layer and 1 entry as listed"));
    assert!(stdout.contains("replay reached the recorded digest"));
}

#[test]
fn register_and_resolve_on_a_registry_whose_base_moves() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let host = reg.host();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let base_v1 = format!("oci:{}:v1", fixtures().join("base").display());
    let base_v2 = format!("oci:{}:v2", fixtures().join("base").display());
    ok_at(d, &["copy", &base_v1, &format!("{host}/lib/base:latest")]);
    std::fs::create_dir(d.join("app")).unwrap();
    std::fs::write(d.join("app/run.sh"), b"#!/bin/sh\necho run\n").unwrap();
    ok_at(d, &["keygen", "--out", "k"]);
    let base = format!("{host}/lib/base:latest");
    let target = format!("{host}/team/trainer");
    let reg_out = json(&ok_at(
        d,
        &[
            "register",
            "trainer",
            "--base",
            &base,
            "--to",
            &target,
            "--add",
            "app:/opt/app",
            "--env",
            "MODE=train",
            "--sign-key",
            "k.key",
            "--json",
        ],
    ));
    assert_eq!(reg_out["number"], 1);
    let first = json(&ok_at(d, &["resolve", "trainer", "--json"]));
    assert_eq!(first["upgraded"], false);
    assert_eq!(first["digest"], reg_out["digest"]);

    // The base moves, pushed by a tool nobody here wrote.
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &base_v2,
            &format!("docker://{base}"),
        ],
    );
    let (code, out, _) = ociup_at(d, &["resolve", "trainer", "--check"]);
    assert_eq!((code, out.trim()), (0, "upgrade due"));
    // The version record holds the image's manifest and config: the upgrade does not read
    // them from the target again.
    let v1 = json(&ok_at(
        d,
        &["inspect", first["reference"].as_str().unwrap(), "--json"],
    ));
    let v1_config = v1["manifest"]["config"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let reads_of_v1 = |reg: &TestRegistry| {
        reg.requests(
            "GET",
            &format!(
                "/v2/team/trainer/manifests/{}",
                first["digest"].as_str().unwrap()
            ),
        ) + reg.requests("GET", &format!("/v2/team/trainer/blobs/{v1_config}"))
    };
    let read_before = reads_of_v1(&reg);
    let up = json(&ok_at(
        d,
        &["resolve", "trainer", "--json", "--sign-key", "k.key"],
    ));
    assert_eq!(reads_of_v1(&reg), read_before);
    assert_eq!(up["upgraded"], true);
    assert_eq!(up["version"], 2);
    assert_eq!(up["previous_base_digest"], first["base_digest"]);
    assert_ne!(up["digest"], first["digest"]);
    assert!(
        up["reference"]
            .as_str()
            .unwrap()
            .starts_with(&format!("docker://{target}@sha256:"))
    );

    // The upgrade unpacks with base v2's files and the recipe's.
    let lay = d.join("pulled");
    ok_at(
        d,
        &[
            "copy",
            up["reference"].as_str().unwrap(),
            &format!("oci:{}:x", lay.display()),
        ],
    );
    let bundle = d.join("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:x", lay.display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read_to_string(bundle.join("rootfs/etc/os-release"))
            .unwrap()
            .contains("VERSION_ID=2")
    );
    assert_eq!(
        std::fs::read(bundle.join("rootfs/opt/app/run.sh")).unwrap(),
        b"#!/bin/sh\necho run\n"
    );
    let (code, out, err) = ociup_at(d, &["verify", "trainer", "--key", "k.pub"]);
    assert_eq!(code, 0, "{out}{err}");

    // Nothing due: one HEAD of the base and nothing else at the registry.
    let all = |reg: &TestRegistry| -> usize {
        ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]
            .iter()
            .map(|m| reg.requests(m, "/v2/"))
            .sum()
    };
    let (before, heads) = (
        all(&reg),
        reg.requests("HEAD", "/v2/lib/base/manifests/latest"),
    );
    let again = json(&ok_at(d, &["resolve", "trainer", "--json"]));
    assert_eq!(again["digest"], up["digest"]);
    assert_eq!(all(&reg) - before, 1, "only the base lookup: {}", reg.log());
    assert_eq!(
        reg.requests("HEAD", "/v2/lib/base/manifests/latest"),
        heads + 1
    );

    // The base moves back; eight processes resolve at once: one new version, one answer.
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &base_v1,
            &format!("docker://{base}"),
        ],
    );
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_ociup"))
                .args(["resolve", "trainer", "--json"])
                .current_dir(d)
                .env(
                    "OCIUP_CATALOG",
                    format!("oci:{}", d.join("catalog").display()),
                )
                .env("SOURCE_DATE_EPOCH", "1700000000")
                // Signed since version 2: regenerated with its key (or refused).
                .env("OCIUP_SIGNING_KEY", d.join("k.key"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let answers: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            json(&String::from_utf8_lossy(&out.stdout))["digest"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    let history = json(&ok_at(d, &["history", "trainer", "--json"]));
    assert_eq!(
        history.as_array().unwrap().len(),
        3,
        "one new version in the history: {history}"
    );
    assert_eq!(history[0]["digest"].as_str().unwrap(), answers[0]);
    // Back on v1 with the same recipe: the same bytes as the first version.
    assert_eq!(answers[0], reg_out["digest"].as_str().unwrap());
}

#[test]
fn bad_input_is_named_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir(d.join("base")).unwrap();
    crate::support::copy_tree(&fixtures().join("base"), &d.join("base"));
    let (code, _, err) = ociup_at(d, &["register", "--recipe", "missing.json"]);
    assert!(code != 0 && err.contains("missing.json"), "{err}");
    std::fs::write(
        d.join("bad.json"),
        br#"{"nick": "x", "base": "oci:base:v1", "target": "oci:img", "steps": [{"copy": {}}]}"#,
    )
    .unwrap();
    let (code, _, err) = ociup_at(d, &["register", "--recipe", "bad.json"]);
    assert!(
        code != 0 && err.contains("bad.json") && err.contains("copy"),
        "{err}"
    );
    let (code, _, err) = ociup_at(
        d,
        &[
            "register",
            "x",
            "--base",
            "oci:base:v1",
            "--to",
            "oci:img",
            "--add",
            "nope.txt:/nope",
        ],
    );
    assert!(
        code != 0 && err.contains("nope.txt") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!d.join("catalog").exists(), "nothing written");
    assert!(!d.join("img").exists(), "nothing written");
    let (code, _, err) = ociup_at(d, &["resolve", "nobody"]);
    assert!(code != 0 && err.contains("nobody"), "{err}");

    // A base that disappears: a clear error, or the last good version marked stale.
    ok_at(
        d,
        &[
            "register",
            "svc",
            "--base",
            "oci:base:latest",
            "--to",
            "oci:img",
            "--env",
            "A=1",
        ],
    );
    let good = json(&ok_at(d, &["resolve", "svc", "--json"]));
    let before = snapshot(&d.join("catalog"));
    std::fs::remove_dir_all(d.join("base")).unwrap();
    let (code, _, err) = ociup_at(d, &["resolve", "svc"]);
    assert!(code != 0 && err.contains("base"), "{err}");
    let stale = json(&ok_at(
        d,
        &["resolve", "svc", "--if-unreachable", "stale", "--json"],
    ));
    assert_eq!(stale["stale"], true);
    assert_eq!(stale["digest"], good["digest"]);
    assert_eq!(
        snapshot(&d.join("catalog")),
        before,
        "no write on a failed or stale resolve"
    );
    let offline = json(&ok_at(d, &["resolve", "svc", "--offline", "--json"]));
    assert_eq!(offline["digest"], good["digest"]);
}

#[test]
fn verify_fails_on_tampering_and_the_wrong_key() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    crate::support::copy_tree(&fixtures().join("base"), &d.join("base"));
    std::fs::write(d.join("f.txt"), b"payload\n").unwrap();
    ok_at(d, &["keygen", "--out", "k"]);
    ok_at(d, &["keygen", "--out", "other"]);
    let out = json(&ok_at(
        d,
        &[
            "register",
            "v",
            "--base",
            "oci:base:v1",
            "--to",
            "oci:img",
            "--add",
            "f.txt:/f.txt",
            "--sign-key",
            "k.key",
            "--json",
        ],
    ));
    ok_at(d, &["verify", "v", "--key", "k.pub"]);
    let (code, _, err) = ociup_at(d, &["verify", "v", "--key", "other.pub"]);
    assert!(code != 0 && err.contains("does not verify"), "{err}");

    let blob = |digest: &str| {
        d.join("img/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    // The envelope tampered with in place.
    let env_digest = out["build_manifest"][0].as_str().unwrap().to_owned();
    let original = std::fs::read(blob(&env_digest)).unwrap();
    let mut bad = original.clone();
    let i = bad.len() / 2;
    bad[i] ^= 1;
    std::fs::write(blob(&env_digest), &bad).unwrap();
    let (code, _, err) = ociup_at(d, &["verify", "v", "--key", "k.pub"]);
    assert!(code != 0 && err.contains("digest mismatch"), "{err}");
    std::fs::write(blob(&env_digest), &original).unwrap();

    // The own layer swapped for another one's bytes.
    let image = json(&ok_at(
        d,
        &[
            "inspect",
            &format!("oci:img@{}", out["digest"].as_str().unwrap()),
            "--json",
        ],
    ));
    let own = image["manifest"]["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    // Corrupted in its gzip trailer: the same size, and the tar still reads.
    let original = std::fs::read(blob(&own)).unwrap();
    let mut bad = original.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(blob(&own), &bad).unwrap();
    let (code, _, err) = ociup_at(d, &["verify", "v", "--key", "k.pub"]);
    assert!(code != 0 && err.contains("digest mismatch"), "{err}");
    std::fs::write(blob(&own), &original).unwrap();

    let base_layer = image["manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::copy(blob(&base_layer), blob(&own)).unwrap();
    let (code, _, err) = ociup_at(d, &["verify", "v", "--key", "k.pub"]);
    assert!(code != 0 && err.contains("mismatch"), "{err}");
}

#[test]
fn edit_adds_a_version_that_replays_and_upgrade_all_is_eager() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    crate::support::copy_tree(&fixtures().join("base"), &d.join("base"));
    std::fs::write(d.join("a.txt"), b"a\n").unwrap();
    std::fs::write(d.join("b.txt"), b"b\n").unwrap();
    ok_at(
        d,
        &[
            "register",
            "app",
            "--base",
            "oci:base:latest",
            "--to",
            "oci:img",
            "--add",
            "a.txt:/a.txt",
            "--env",
            "X=1",
        ],
    );
    ok_at(
        d,
        &[
            "register",
            "web",
            "--base",
            "oci:base:v1",
            "--to",
            "oci:img",
            "--env",
            "W=1",
        ],
    );
    let edited = json(&ok_at(
        d,
        &[
            "edit",
            "app",
            "--add",
            "b.txt:/b.txt",
            "--env",
            "Y=2",
            "--json",
        ],
    ));
    assert_eq!(
        (edited["number"].as_u64(), edited["reason"].as_str()),
        (Some(2), Some("recipe edited"))
    );
    let tagged = json(&ok_at(d, &["inspect", "oci:img:app-2", "--json"]));
    assert_eq!(
        tagged["digest"], edited["digest"],
        "each version has its own tag"
    );
    let first = json(&ok_at(d, &["inspect", "oci:img:app-1", "--json"]));
    assert_ne!(first["digest"], edited["digest"]);
    let (code, out, err) = ociup_at(d, &["replay", "app@2"]);
    assert_eq!(code, 0, "{out}{err}");
    let seen = json(&ok_at(d, &["inspect", "oci:img:app", "--json"]));
    let env = seen["config"]["config"]["Env"].as_array().unwrap().clone();
    assert!(
        env.contains(&serde_json::json!("X=1")) && env.contains(&serde_json::json!("Y=2")),
        "{env:?}"
    );

    // Nothing is upgraded unless asked; upgrade --all asks for every nick.
    ok_at(d, &["copy", "oci:base:v2", "oci:base:latest"]);
    let status = json(&ok_at(d, &["status", "--json"]));
    let of = |n: &str| {
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["nick"] == n)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(
        (of("app"), of("web")),
        (serde_json::json!("stale"), serde_json::json!("current"))
    );
    let all = json(&ok_at(d, &["upgrade", "--all", "--json"]));
    let upgraded: Vec<(String, bool)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["nick"].as_str().unwrap().to_owned(),
                r["upgraded"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        upgraded,
        [("app".to_owned(), true), ("web".to_owned(), false)]
    );
    let history = json(&ok_at(d, &["history", "app", "--json"]));
    let reasons: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["base moved", "recipe edited", "registered"]);
}

#[test]
fn gc_keeps_the_newest_versions_and_the_whole_history() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    crate::support::copy_tree(&fixtures().join("base"), &d.join("base"));
    ok_at(
        d,
        &[
            "register",
            "app",
            "--base",
            "oci:base:latest",
            "--to",
            "oci:img",
            "--env",
            "X=1",
        ],
    );
    for v in ["v2", "v1"] {
        ok_at(d, &["copy", &format!("oci:base:{v}"), "oci:base:latest"]);
        ok_at(d, &["resolve", "app"]);
    }
    let history = json(&ok_at(d, &["history", "app", "--json"]));
    assert_eq!(history.as_array().unwrap().len(), 3);
    // Versions 1 and 3 are the same image (same base, same recipe): only version 2's goes.
    let (code, _, err) = ociup_at(d, &["gc", "--keep", "0"]);
    assert!(code != 0 && err.contains("at least 1"), "{err}");
    let out = json(&ok_at(d, &["gc", "app", "--keep", "1", "--json"]));
    assert_eq!(
        out["nicks"][0]["deleted"],
        serde_json::json!([history[1]["digest"]])
    );
    let index = std::fs::read_to_string(d.join("img/index.json")).unwrap();
    assert!(!index.contains(history[1]["digest"].as_str().unwrap()));
    assert!(
        index.contains(history[0]["digest"].as_str().unwrap()),
        "the current version stays"
    );
    assert_eq!(
        json(&ok_at(d, &["history", "app", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let (code, out, _) = ociup_at(d, &["resolve", "app"]);
    assert_eq!(
        (code, out.trim()),
        (0, history[0]["image"].as_str().unwrap())
    );
}

#[test]
fn a_base_index_that_moves_without_our_platform_is_recorded_once() {
    use ociup_core::document::RawDocument;
    use ociup_core::store::{ManifestRef, Store};
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    crate::support::copy_tree(&fixtures().join("multi"), &d.join("multi"));
    ok_at(d, &["copy", "oci:multi:v1", "oci:multi:latest"]);
    ok_at(
        d,
        &[
            "register",
            "m",
            "--base",
            "oci:multi:latest",
            "--platform",
            "linux/amd64",
            "--to",
            "oci:img",
            "--env",
            "A=1",
        ],
    );
    let first = json(&ok_at(d, &["resolve", "m", "--json"]));
    // The index gets an annotation: a new digest, the same children.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let layout = ociup_core::layout::OciLayout::open(d.join("multi")).unwrap();
        let raw = layout
            .get_manifest(&ManifestRef::Tag("latest".into()))
            .await
            .unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(raw.bytes()).unwrap();
        v["annotations"] = serde_json::json!({"org.example.rebuilt": "yes"});
        let index = RawDocument::canonical(&v, ociup_core::media_type::OCI_INDEX).unwrap();
        layout.put_manifest(&index, Some("latest")).await.unwrap();
    });
    for _ in 0..2 {
        let r = json(&ok_at(d, &["resolve", "m", "--json"]));
        assert_eq!(r["upgraded"], false, "{r}");
        assert_eq!(r["digest"], first["digest"], "the same image");
        assert_ne!(
            r["base_digest"], first["base_digest"],
            "recorded on the new index digest"
        );
    }
    let status = json(&ok_at(d, &["status", "--json"]));
    assert_eq!(status[0]["status"], "current");
    assert_eq!(
        json(&ok_at(d, &["history", "m", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

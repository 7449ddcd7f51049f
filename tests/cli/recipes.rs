//! Recipes and the catalog's housekeeping: what a recipe may read, bad values refused before
//! anything is written, unregister and `register --replace`, and garbage collection of layouts.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::support::{copy_tree, fixtures, json, ociup_at, ok_at, snapshot};

/// A directory holding a copy of the base fixture as `base`.
fn workdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    copy_tree(&fixtures().join("base"), &t.path().join("base"));
    t
}

fn recipe_file(path: &Path, nick: &str, base: &str, target: &str, steps: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        format!(
            r#"{{"nick": "{nick}", "base": "{base}", "target": "{target}", "steps": [{steps}]}}"#
        ),
    )
    .unwrap();
}

/// The audit trail of a nick, oldest first, read with the library.
fn audit_trail(catalog: &Path, nick: &str) -> Vec<String> {
    use ociup_core::managed::catalog::Catalog;
    let layout = ociup_core::layout::OciLayout::open(catalog).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = Catalog::new(layout);
        let e = c.get(nick).await.unwrap().unwrap();
        c.audit_trail(&e)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.command)
            .collect()
    })
}

/// Sets every blob of a layout two hours back, as if written long ago.
fn age_blobs(layout: &Path) {
    let old = SystemTime::now() - Duration::from_secs(7200);
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let f = std::fs::File::options()
            .write(true)
            .open(e.unwrap().path())
            .unwrap();
        f.set_modified(old).unwrap();
    }
}

fn blob_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[test]
fn a_recipe_file_reads_only_under_its_folder() {
    let t = workdir();
    let d = t.path();
    std::fs::write(d.join("secret.txt"), b"secret\n").unwrap();
    std::fs::create_dir(d.join("outside")).unwrap();
    std::fs::write(d.join("outside/key"), b"key\n").unwrap();
    std::fs::create_dir_all(d.join("proj/app")).unwrap();
    std::fs::write(d.join("proj/app/run.sh"), b"run\n").unwrap();
    std::os::unix::fs::symlink(d.join("outside"), d.join("proj/data")).unwrap();
    std::os::unix::fs::symlink("app", d.join("proj/inner")).unwrap();
    let base = format!("oci:{}:v1", d.join("base").display());
    let img = format!("oci:{}", d.join("img").display());
    let absolute = d.join("secret.txt").display().to_string();
    for src in ["../secret.txt", absolute.as_str(), "data/key", "data"] {
        recipe_file(
            &d.join("proj/r.json"),
            "x",
            &base,
            &img,
            &format!(r#"{{"add": {{"src": "{src}", "dest": "/s"}}}}"#),
        );
        let (code, _, err) = ociup_at(d, &["register", "--recipe", "proj/r.json"]);
        assert!(
            code != 0 && err.contains("outside") && err.contains("own directory"),
            "{src}: {err}"
        );
        assert!(!d.join("catalog").exists(), "{src}: nothing written");
        assert!(!d.join("img").exists(), "{src}: nothing written");
    }
    // A symlink that stays inside the folder is fine.
    recipe_file(
        &d.join("proj/r.json"),
        "x",
        &base,
        &img,
        r#"{"add": {"src": "inner/run.sh", "dest": "/s"}}"#,
    );
    ok_at(d, &["register", "--recipe", "proj/r.json"]);
}

#[test]
fn absolute_command_line_sources_are_allowed_and_edit_and_replay_ask_for_them() {
    let t = workdir();
    let d = t.path();
    let elsewhere = tempfile::tempdir().unwrap();
    let abs = elsewhere.path().join("abs.txt");
    std::fs::write(&abs, b"abs\n").unwrap();
    let add = format!("{}:/abs.txt", abs.display());
    let reg = json(&ok_at(
        d,
        &[
            "register",
            "n",
            "--base",
            "oci:base:v1",
            "--to",
            "oci:img",
            "--add",
            &add,
            "--json",
        ],
    ));
    assert_eq!(reg["number"], 1);
    // The stored recipe names a file outside the directory: edit and replay say so and write
    // nothing, unless told the recipe may read there.
    let before = snapshot(&d.join("catalog"));
    let (code, _, err) = ociup_at(d, &["edit", "n", "--env", "Y=1"]);
    assert!(
        code != 0 && err.contains(&abs.display().to_string()) && err.contains("--allow-outside"),
        "{err}"
    );
    assert_eq!(snapshot(&d.join("catalog")), before, "nothing written");
    let edited = json(&ok_at(
        d,
        &["edit", "n", "--env", "Y=1", "--allow-outside", "--json"],
    ));
    assert_eq!(edited["number"], 2);
    let (code, _, err) = ociup_at(d, &["replay", "n@2"]);
    assert!(code != 0 && err.contains("--allow-outside"), "{err}");
    let replayed = json(&ok_at(d, &["replay", "n@2", "--allow-outside", "--json"]));
    assert_eq!(replayed["same"], true, "{replayed}");
}

#[test]
fn a_symlink_swapped_in_after_registration_does_not_escape_a_replay() {
    let t = workdir();
    let d = t.path();
    std::fs::create_dir(d.join("data")).unwrap();
    std::fs::write(d.join("data/f.txt"), b"f\n").unwrap();
    ok_at(
        d,
        &[
            "register",
            "s",
            "--base",
            "oci:base:v1",
            "--to",
            "oci:img",
            "--add",
            "data/f.txt:/f.txt",
        ],
    );
    ok_at(d, &["replay", "s@1"]);
    // The same text, data/f.txt, now leads out of the directory.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir(elsewhere.path().join("data")).unwrap();
    std::fs::write(elsewhere.path().join("data/f.txt"), b"f\n").unwrap();
    std::fs::remove_dir_all(d.join("data")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("data"), d.join("data")).unwrap();
    let (code, _, err) = ociup_at(d, &["replay", "s@1"]);
    assert!(code != 0 && err.contains("outside"), "{err}");
    let (code, _, err) = ociup_at(d, &["edit", "s", "--env", "A=1"]);
    assert!(code != 0 && err.contains("outside"), "{err}");
}

#[test]
fn bad_values_are_refused_before_anything_is_written() {
    let t = workdir();
    let d = t.path();
    std::fs::write(d.join("f.txt"), b"f\n").unwrap();
    for (step, want) in [
        (r#"{"env": {"key": "A=B", "value": "1"}}"#, "environment"),
        (r#"{"expose": {"port": "http"}}"#, "http"),
        (r#"{"workdir": {"path": "relative"}}"#, "absolute"),
        (r#"{"volume": {"path": "data"}}"#, "absolute"),
        (r#"{"user": {"user": "a b"}}"#, "USER"),
        (r#"{"stop_signal": {"signal": "NOT A SIGNAL"}}"#, "signal"),
        (r#"{"label": {"key": "", "value": "x"}}"#, "key"),
        (r#"{"annotation": {"key": "", "value": "x"}}"#, "key"),
        (r#"{"remove": {"path": "/"}}"#, "below the root"),
        (r#"{"clear_dir": {"path": "/a/../b"}}"#, ".."),
        (
            r#"{"add": {"src": "f.txt", "dest": "/etc/.wh.x"}}"#,
            "whiteout",
        ),
        (
            r#"{"add": {"src": "f.txt", "dest": "/a"}}, {"add": {"src": "f.txt", "dest": "/a"}}"#,
            "/a",
        ),
    ] {
        recipe_file(&d.join("r.json"), "x", "oci:base:v1", "oci:img", step);
        let (code, _, err) = ociup_at(d, &["register", "--recipe", "r.json"]);
        assert!(code != 0 && err.contains(want), "{step}: {err}");
        assert!(!d.join("catalog").exists(), "{step}: nothing written");
        assert!(!d.join("img").exists(), "{step}: nothing written");
    }
    for flags in [
        ["--env", "=1"],
        ["--expose", "http"],
        ["--workdir", "relative"],
        ["--stop-signal", "99"],
    ] {
        let mut args = vec!["register", "x", "--base", "oci:base:v1", "--to", "oci:img"];
        args.extend(flags);
        let (code, _, err) = ociup_at(d, &args);
        assert!(code != 0 && err.contains(flags[1]), "{flags:?}: {err}");
        assert!(!d.join("catalog").exists(), "{flags:?}: nothing written");
    }
}

#[test]
fn a_config_past_the_document_cap_is_refused_before_anything_is_written() {
    use ociup_core::config::ConfigChange;
    use ociup_core::store::{ManifestRef, Store};
    let t = workdir();
    let d = t.path();
    // A base whose config is 6 MiB (a big label): itself well within the 16 MiB cap.
    let six = "b".repeat(6 << 20);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let layout = ociup_core::layout::OciLayout::open(d.join("base")).unwrap();
        let image = ociup_core::ops::load_image(&layout, &ManifestRef::Tag("v1".into()), None)
            .await
            .unwrap();
        let made = ociup_core::mutate::append(
            ociup_core::mutate::Base::Image {
                manifest: &image.manifest,
                config: &image.config,
                name: None,
            },
            &[],
            &[ConfigChange::Label("big".into(), six.clone())],
            &Default::default(),
            0,
        )
        .unwrap();
        let c = &made.config;
        layout
            .put_blob(c.digest(), c.size(), c.bytes())
            .await
            .unwrap();
        layout
            .put_manifest(&made.manifest, Some("big"))
            .await
            .unwrap();
    });
    // 6 MiB more from the recipe, twice (its env and the history line): past the cap together.
    recipe_file(
        &d.join("r.json"),
        "big",
        "oci:base:big",
        "oci:img",
        &format!(r#"{{"env": {{"key": "A", "value": "{six}"}}}}"#),
    );
    let (code, _, err) = ociup_at(d, &["register", "--recipe", "r.json"]);
    assert!(
        code != 0 && err.contains("config of big") && err.contains("nothing was written"),
        "{}",
        &err[..err.len().min(2000)]
    );
    // The catalog's layout may be made (empty) before the base is read; no entry is written.
    assert_eq!(
        json(&ok_at(d, &["status", "--json"])),
        serde_json::json!([])
    );
    assert!(!d.join("img").exists(), "nothing written");
    std::fs::remove_dir_all(d.join("catalog")).unwrap();
    // The recipe alone past the cap: refused without reading the base.
    let nine = "n".repeat(9 << 20);
    recipe_file(
        &d.join("r.json"),
        "big",
        "oci:nowhere:v1",
        "oci:img",
        &format!(r#"{{"label": {{"key": "a", "value": "{nine}"}}}}"#),
    );
    let (code, _, err) = ociup_at(d, &["register", "--recipe", "r.json"]);
    assert!(code != 0 && err.contains("recipe big sets"), "{err:.2000}");
    assert!(!d.join("catalog").exists(), "nothing written");
}

#[test]
fn a_failed_registration_can_be_unregistered_or_replaced() {
    let t = workdir();
    let d = t.path();
    // A base with a layer blob missing: the checks pass, the build fails.
    copy_tree(&d.join("base"), &d.join("broken"));
    let v1 = json(&ok_at(d, &["inspect", "oci:broken:v1", "--json"]));
    let layer = v1["manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let layer_blob = std::fs::read(blob_path(&d.join("broken"), &layer)).unwrap();
    std::fs::remove_file(blob_path(&d.join("broken"), &layer)).unwrap();
    let register = [
        "register",
        "f",
        "--base",
        "oci:broken:v1",
        "--to",
        "oci:img",
        "--env",
        "A=1",
    ];
    let (code, _, err) = ociup_at(d, &register);
    assert!(code != 0, "{err}");
    let status = json(&ok_at(d, &["status", "--json"]));
    assert_eq!(status[0]["status"], "failed", "{status}");

    ok_at(d, &["unregister", "f"]);
    let status = json(&ok_at(d, &["status", "--json"]));
    assert_eq!(status, serde_json::json!([]), "not listed any more");
    let named = json(&ok_at(d, &["status", "f", "--json"]));
    assert_eq!(named[0]["status"], "removed");
    let (code, _, err) = ociup_at(d, &["resolve", "f"]);
    assert!(code != 0 && err.contains("unregistered"), "{err}");
    let all = json(&ok_at(d, &["upgrade", "--all", "--json"]));
    assert_eq!(all, serde_json::json!([]), "not upgraded");
    let (code, _, err) = ociup_at(d, &["edit", "f", "--env", "B=1"]);
    assert!(code != 0 && err.contains("unregistered"), "{err}");
    let (code, _, err) = ociup_at(d, &["unregister", "f"]);
    assert!(code != 0 && err.contains("already"), "{err}");
    let (code, _, err) = ociup_at(d, &["unregister", "nobody"]);
    assert!(code != 0 && err.contains("nobody"), "{err}");

    // Registered again once the base is whole: the trail keeps the failure and the removal.
    std::fs::write(blob_path(&d.join("broken"), &layer), &layer_blob).unwrap();
    let first = json(&ok_at(d, &[&register[..], &["--json"]].concat()));
    assert_eq!(first["number"], 1);
    let trail = audit_trail(&d.join("catalog"), "f");
    assert_eq!(trail.len(), 3, "{trail:?}");
    assert!(trail[0].starts_with("ociup register f"), "{trail:?}");
    assert_eq!(trail[1], "ociup unregister f");
    assert!(trail[2].starts_with("ociup register f"), "{trail:?}");

    // A registered nick is replaced only when asked.
    let (code, _, err) = ociup_at(d, &register);
    assert!(code != 0 && err.contains("--replace-recipe"), "{err}");
    let replaced = json(&ok_at(
        d,
        &[
            "register",
            "f",
            "--base",
            "oci:base:v1",
            "--to",
            "oci:img",
            "--env",
            "A=2",
            "--replace-recipe",
            "--json",
        ],
    ));
    assert_eq!(
        (replaced["number"].as_u64(), replaced["reason"].as_str()),
        (Some(2), Some("registered"))
    );
    let now = json(&ok_at(d, &["resolve", "f", "--json"]));
    assert_eq!(now["digest"], replaced["digest"]);
    let history = json(&ok_at(d, &["history", "f", "--json"]));
    assert_eq!(history.as_array().unwrap().len(), 2);
    assert!(audit_trail(&d.join("catalog"), "f")[3].ends_with("--replace-recipe"));

    // A replacement whose build fails leaves the nick answering its version: v2's top layer,
    // which the target does not hold yet, is missing.
    let v2 = json(&ok_at(d, &["inspect", "oci:broken:v2", "--json"]));
    let top = v2["manifest"]["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::remove_file(blob_path(&d.join("broken"), &top)).unwrap();
    let (code, _, err) = ociup_at(
        d,
        &[
            "register",
            "f",
            "--base",
            "oci:broken:v2",
            "--to",
            "oci:img",
            "--env",
            "A=3",
            "--replace-recipe",
        ],
    );
    assert!(code != 0, "{err}");
    let still = json(&ok_at(d, &["resolve", "f", "--json"]));
    assert_eq!(still["digest"], replaced["digest"]);
    let status = json(&ok_at(d, &["status", "f", "--json"]));
    assert_ne!(status[0]["status"], "failed", "{status}");
}

#[test]
fn gc_sweeps_unreached_blobs_and_keeps_the_catalog_in_the_same_layout() {
    let t = workdir();
    let d = t.path();
    std::fs::write(d.join("f.txt"), b"f\n").unwrap();
    ok_at(d, &["keygen", "--out", "k"]);
    ok_at(d, &["copy", "oci:base:v1", "oci:base:latest"]);
    // Catalog and images in one layout.
    let shared = ["--catalog", "oci:shared"];
    ok_at(
        d,
        &[
            &[
                "register",
                "app",
                "--base",
                "oci:base:latest",
                "--to",
                "oci:shared",
                "--add",
                "f.txt:/f.txt",
                "--sign-key",
                "k.key",
            ][..],
            &shared[..],
        ]
        .concat(),
    );
    ok_at(d, &["copy", "oci:base:v2", "oci:base:latest"]);
    ok_at(
        d,
        &[&["resolve", "app", "--sign-key", "k.key"][..], &shared[..]].concat(),
    );
    ok_at(d, &["copy", "oci:base:v1", "oci:base:latest"]);
    ok_at(
        d,
        &[&["resolve", "app", "--sign-key", "k.key"][..], &shared[..]].concat(),
    );
    let history = json(&ok_at(
        d,
        &[&["history", "app", "--json"][..], &shared[..]].concat(),
    ));
    assert_eq!(history.as_array().unwrap().len(), 3);
    // Version 2's image: its manifest and config go once it is deleted.
    let v2 = history[1]["digest"].as_str().unwrap().to_owned();
    let v2_config = json(&ok_at(
        d,
        &["inspect", &format!("oci:shared@{v2}"), "--json"],
    ))["manifest"]["config"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let lay = d.join("shared");
    assert!(blob_path(&lay, &v2_config).exists());
    age_blobs(&lay);
    // One fresh blob nothing names: kept by the minimum age.
    let fresh = ociup_core::Digest::sha256(b"fresh");
    std::fs::write(blob_path(&lay, &fresh.to_string()), b"fresh").unwrap();

    let out = json(&ok_at(
        d,
        &[&["gc", "--keep", "1", "--json"][..], &shared[..]].concat(),
    ));
    assert_eq!(out["nicks"][0]["deleted"], serde_json::json!([v2]), "{out}");
    let swept = &out["layouts"][0];
    assert!(swept["removed"].as_u64().unwrap() >= 2, "{out}");
    assert_eq!(swept["kept_recent"], 1, "{out}");
    assert!(
        !blob_path(&lay, &v2).exists(),
        "the deleted image's manifest"
    );
    assert!(!blob_path(&lay, &v2_config).exists(), "and its config");
    assert!(
        blob_path(&lay, &fresh.to_string()).exists(),
        "too new to go"
    );

    // What stays works: history, the current image and its build manifest, the recipe
    // (replay of the first version), the audit trail, a copy of the whole current image.
    assert_eq!(
        json(&ok_at(
            d,
            &[&["history", "app", "--json"][..], &shared[..]].concat()
        ))
        .as_array()
        .unwrap()
        .len(),
        3
    );
    ok_at(
        d,
        &[&["verify", "app", "--key", "k.pub"][..], &shared[..]].concat(),
    );
    let replay = json(&ok_at(
        d,
        &[&["replay", "app@1", "--json"][..], &shared[..]].concat(),
    ));
    assert_eq!(replay["same"], true);
    assert_eq!(audit_trail(&lay, "app").len(), 1);
    ok_at(d, &["copy", "oci:shared:app", "oci:copied:app"]);
    let status = json(&ok_at(
        d,
        &[&["status", "--json"][..], &shared[..]].concat(),
    ));
    assert_eq!(status[0]["status"], "current");

    // Again: nothing is reported twice, nothing more goes but the fresh blob when allowed.
    let again = json(&ok_at(
        d,
        &[
            &["gc", "--keep", "1", "--min-age", "0", "--json"][..],
            &shared[..],
        ]
        .concat(),
    ));
    assert_eq!(
        again["nicks"][0]["deleted"],
        serde_json::json!([]),
        "{again}"
    );
    assert_eq!(again["layouts"][0]["removed"], 1, "{again}");
    assert!(!blob_path(&lay, &fresh.to_string()).exists());
}

#[test]
fn registering_an_unregistered_nick_again_keeps_its_versions_even_when_the_build_fails() {
    let t = workdir();
    let d = t.path();
    fn register<'a>(base: &'a str, value: &'a str) -> [&'a str; 8] {
        [
            "register", "r", "--base", base, "--to", "oci:img", "--env", value,
        ]
    }
    let first = json(&ok_at(
        d,
        &[&register("oci:base:v1", "A=1")[..], &["--json"]].concat(),
    ));
    assert_eq!(first["number"], 1);
    ok_at(d, &["unregister", "r"]);
    // A base whose layer is missing: the checks pass, the build fails.
    copy_tree(&d.join("base"), &d.join("broken"));
    let v2 = json(&ok_at(d, &["inspect", "oci:broken:v2", "--json"]));
    let top = v2["manifest"]["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::remove_file(blob_path(&d.join("broken"), &top)).unwrap();
    let (code, _, err) = ociup_at(d, &register("oci:broken:v2", "A=2"));
    assert!(code != 0, "{err}");
    let history = json(&ok_at(d, &["history", "r", "--json"]));
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "version 1 kept: {history}"
    );
    let named = json(&ok_at(d, &["status", "r", "--json"]));
    assert_eq!(named[0]["status"], "removed", "{named}");
    // Registered again for real: numbers go on, so the tag r-1 is never reused.
    let again = json(&ok_at(
        d,
        &[&register("oci:base:v2", "A=3")[..], &["--json"]].concat(),
    ));
    assert_eq!(again["number"], 2, "{again}");
    let one = json(&ok_at(d, &["inspect", "oci:img:r-1", "--json"]));
    assert_eq!(one["digest"], first["digest"]);
}

#[test]
fn gc_keeps_an_old_version_that_another_tag_names() {
    let t = workdir();
    let d = t.path();
    let v1 = json(&ok_at(
        d,
        &[
            "register",
            "k",
            "--base",
            "oci:base:v1",
            "--to",
            "oci:img",
            "--env",
            "A=1",
            "--json",
        ],
    ));
    json(&ok_at(d, &["edit", "k", "--env", "B=2", "--json"]));
    ok_at(d, &["copy", "oci:img:k-1", "oci:img:stable"]);
    let out = json(&ok_at(
        d,
        &["gc", "k", "--keep", "1", "--min-age", "0", "--json"],
    ));
    assert_eq!(
        out["nicks"][0]["deleted"],
        serde_json::json!([]),
        "the image tagged stable stays: {out}"
    );
    let stable = json(&ok_at(d, &["inspect", "oci:img:stable", "--json"]));
    assert_eq!(stable["digest"], v1["digest"]);
    ok_at(d, &["copy", "oci:img:stable", "oci:copied", "--verify"]);
}

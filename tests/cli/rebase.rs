//! `ociup rebase` on layouts: the result unpacks with umoci, the same inputs give the same
//! digest in two processes, whole indexes with attestations, dry runs write nothing, and the
//! recorded base boundary works when the old base is gone.

use std::path::Path;

use crate::support::{copy_tree, fixtures, json, ociup, ociup_in, ociup_ok, snapshot, tool};

/// A layout holding base v1 and v2 (copied from the fixtures) and an app appended on v1 that
/// removes a base file, adds its own and sets an env var.
fn app_on_v1(dir: &Path) -> String {
    copy_tree(&fixtures().join("base"), &dir.join("lay"));
    std::fs::write(dir.join("app.txt"), b"app\n").unwrap();
    let lay = dir.join("lay");
    ociup_ok(&[
        "append",
        "--base",
        &format!("oci:{}:v1", lay.display()),
        "--add",
        &format!("{}:/opt/app.txt", dir.join("app.txt").display()),
        "--remove",
        "/usr/share/base/VERSION",
        "--env",
        "APP=1",
        "--source-date-epoch",
        "1700000000",
        "--to",
        &format!("oci:{}:app", lay.display()),
    ]);
    format!("oci:{}", lay.display())
}

fn status(args: &[&str]) -> (i32, String, String) {
    let out = ociup(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn rebase_unpacks_with_the_new_base_and_the_own_layers() {
    let t = tempfile::tempdir().unwrap();
    let lay = app_on_v1(t.path());
    let before = snapshot(&t.path().join("lay"));
    let new_base = format!("{lay}:v2");
    let (code, out, err) = status(&[
        "rebase",
        &format!("{lay}:app"),
        "--new-base",
        &new_base,
        "--dry-run",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let plan = json(&out);
    assert_eq!(plan["written"], false);
    assert_eq!(
        snapshot(&t.path().join("lay")),
        before,
        "a dry run writes nothing"
    );
    let p = &plan["platforms"][0]["plan"];
    assert_eq!(p["removed_layers"].as_array().unwrap().len(), 3);
    assert_eq!(p["added_layers"].as_array().unwrap().len(), 3);
    assert_eq!(p["own_layers"].as_array().unwrap().len(), 1);

    let (code, out, err) = status(&[
        "rebase",
        &format!("{lay}:app"),
        "--new-base",
        &new_base,
        "--tag",
        "app2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let done = json(&out);
    assert_eq!(
        done["digest"], plan["digest"],
        "the dry run announced the digest written"
    );
    assert!(
        done["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["action"] == "present"),
        "no layer moved"
    );

    let bundle = t.path().join("bundle");
    let image = format!("{}:app2", t.path().join("lay").display());
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &image,
            bundle.to_str().unwrap(),
        ],
    );
    let root = bundle.join("rootfs");
    assert!(
        std::fs::read_to_string(root.join("etc/os-release"))
            .unwrap()
            .contains("VERSION_ID=2")
    );
    assert!(
        root.join("usr/share/base/only-in-v2.txt").exists(),
        "new base files"
    );
    assert!(
        !root.join("usr/share/base/only-in-v1.txt").exists(),
        "old base files gone"
    );
    assert!(
        !root.join("usr/share/base/VERSION").exists(),
        "the own whiteout still removes it"
    );
    assert_eq!(std::fs::read(root.join("opt/app.txt")).unwrap(), b"app\n");
    let cfg = json(&ociup_ok(&["inspect", &format!("{lay}:app2"), "--json"]));
    assert_eq!(
        cfg["config"]["config"]["Env"],
        serde_json::json!([
            "PATH=/opt/base/bin:/usr/local/bin:/usr/bin:/bin",
            "BASE_VERSION=2",
            "JAVA_HOME=/opt/java",
            "APP=1"
        ])
    );

    // To a layout without a tag: listed, so oci:<dir> finds it.
    let untagged = t.path().join("untagged");
    let to = format!("oci:{}", untagged.display());
    let (code, _, err) = status(&[
        "rebase",
        &format!("{lay}:app"),
        "--new-base",
        &new_base,
        "--to",
        &to,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&ociup_ok(&["inspect", &to, "--json"]))["digest"],
        done["digest"]
    );

    // Again: already current, exit 3, nothing written.
    let before = snapshot(&t.path().join("lay"));
    let (code, out, _) = status(&["rebase", &format!("{lay}:app2"), "--new-base", &new_base]);
    assert_eq!(code, 3);
    assert!(out.contains("already sits on"), "{out}");
    assert_eq!(snapshot(&t.path().join("lay")), before);
}

#[test]
fn two_processes_give_the_same_digest() {
    // Identical inputs: the same relative references (base names are recorded as given).
    let mut digests = Vec::new();
    for _ in 0..2 {
        let t = tempfile::tempdir().unwrap();
        copy_tree(&fixtures().join("base"), &t.path().join("lay"));
        std::fs::write(t.path().join("app.txt"), b"app\n").unwrap();
        let run = |args: &[&str]| {
            let out = ociup_in(args, Some(t.path()));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            json(&String::from_utf8(out.stdout).unwrap())
        };
        run(&[
            "append",
            "--base",
            "oci:lay:v1",
            "--add",
            "app.txt:/opt/app.txt",
            "--source-date-epoch",
            "1700000000",
            "--to",
            "oci:lay:app",
            "--json",
        ]);
        let out = run(&[
            "rebase",
            "oci:lay:app",
            "--new-base",
            "oci:lay:v2",
            "--tag",
            "r",
            "--json",
        ]);
        digests.push(out["digest"].clone());
    }
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn a_gone_old_base_falls_back_to_the_recorded_boundary_and_a_wrong_one_is_named() {
    let t = tempfile::tempdir().unwrap();
    // The app records its base as a layout that is then deleted.
    let gone = t.path().join("gone");
    copy_tree(&fixtures().join("base"), &gone);
    std::fs::write(t.path().join("f"), b"f").unwrap();
    let app = format!("oci:{}:app", t.path().join("apps").display());
    ociup_ok(&[
        "append",
        "--base",
        &format!("oci:{}:v1", gone.display()),
        "--add",
        &format!("{}:/f", t.path().join("f").display()),
        "--to",
        &app,
    ]);
    std::fs::remove_dir_all(&gone).unwrap();
    let new_base = format!("oci:{}:v2", fixtures().join("base").display());
    let (code, out, err) = status(&[
        "rebase",
        &app,
        "--new-base",
        &new_base,
        "--tag",
        "r",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is gone"), "{err}");
    assert_eq!(
        json(&out)["platforms"][0]["plan"]["own_layers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Naming an old base the image is not built on: exit 1, the first differing layer named.
    let wrong = format!("oci:{}:v2", fixtures().join("base").display());
    let (code, _, err) = status(&[
        "rebase",
        &app,
        "--old-base",
        &wrong,
        "--new-base",
        &new_base,
        "--tag",
        "x",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("layer 1 of the image") && err.contains("not built on"),
        "{err}"
    );
}

#[test]
fn whole_indexes_with_attestations_and_platform_restriction() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("lay");
    copy_tree(&fixtures().join("multi"), &lay);
    std::fs::write(t.path().join("f"), b"own\n").unwrap();
    let add = format!("{}:/own", t.path().join("f").display());
    let (children, mut index) = crate::support::custom_index(&lay, &add);
    // An attestation for the amd64 child, as BuildKit writes them.
    index["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": children[0].0, "size": children[0].1,
        "platform": {"os": "unknown", "architecture": "unknown"},
        "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": children[0].0}
    }));
    crate::support::put_index(&lay, &index, "idx");
    let img = format!("oci:{}:idx", lay.display());
    let new_base = format!("oci:{}:v2", lay.display());
    let old_base = format!("oci:{}:v1", lay.display());
    let out = json(&ociup_ok(&[
        "rebase",
        &img,
        "--old-base",
        &old_base,
        "--new-base",
        &new_base,
        "--tag",
        "idx2",
        "--json",
    ]));
    assert_eq!(out["media_type"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(out["platforms"].as_array().unwrap().len(), 2);
    assert_eq!(out["dropped_attestations"].as_array().unwrap().len(), 1);
    for p in ["linux/amd64", "linux/arm64"] {
        let seen = json(&ociup_ok(&[
            "inspect",
            &format!("oci:{}:idx2", lay.display()),
            "--platform",
            p,
            "--json",
        ]));
        let env = seen["config"]["config"]["Env"].as_array().unwrap().clone();
        assert!(
            env.contains(&serde_json::json!("JAVA_HOME=/opt/java")),
            "{p}: {env:?}"
        );
        assert_eq!(seen["manifest"]["layers"].as_array().unwrap().len(), 4);
    }
    // One platform only: the result lists only it.
    let out = json(&ociup_ok(&[
        "rebase",
        &img,
        "--old-base",
        &old_base,
        "--new-base",
        &new_base,
        "--platform",
        "linux/arm64",
        "--tag",
        "arm",
        "--json",
    ]));
    assert_eq!(out["platforms"].as_array().unwrap().len(), 1);
    let idx = json(&ociup_ok(&[
        "inspect",
        &format!("oci:{}:arm", lay.display()),
        "--json",
    ]));
    let listed = idx["index"]["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["platform"]["architecture"], "arm64");
    // skopeo reads the rebased index whole.
    tool(
        "skopeo",
        &[
            "copy",
            "--all",
            &format!("oci:{}:idx2", lay.display()),
            &format!("oci:{}:copy", t.path().join("sk").display()),
        ],
    );
}

/// regctl, when installed (on PATH or where `../shared/peers/install.sh` puts it): the suite
/// never requires it.
fn regctl() -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("regctl"))
            .find(|f| f.is_file())
    });
    on_path.or_else(|| {
        let home = std::path::PathBuf::from(std::env::var_os("HOME")?);
        Some(home.join(".local/bin/regctl")).filter(|f| f.is_file())
    })
}

/// `org.opencontainers.image.base.name` is a plain distribution reference however the base was
/// typed (`docker://` dropped), on append and on rebase; regctl, when installed, accepts it.
#[test]
fn base_name_is_a_plain_distribution_reference() {
    use crate::registry_support::{AuthMode, RegistryOptions, TestRegistry};
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let host = reg.host();
    for tag in ["v1", "v2"] {
        ociup_ok(&[
            "copy",
            &format!("oci:{}:{tag}", fixtures().join("base").display()),
            &format!("docker://{host}/lib/base:{tag}"),
        ]);
    }
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("own"), b"own\n").unwrap();
    ociup_ok(&[
        "append",
        "--base",
        &format!("docker://{host}/lib/base:v1"),
        "--add",
        &format!("{}:/opt/own", t.path().join("own").display()),
        "--to",
        &format!("docker://{host}/team/app:v1"),
    ]);
    ociup_ok(&[
        "rebase",
        &format!("docker://{host}/team/app:v1"),
        "--new-base",
        &format!("docker://{host}/lib/base:v2"),
        "--tag",
        "v2",
    ]);
    for (tag, base) in [("v1", "v1"), ("v2", "v2")] {
        let m = json(&ociup_ok(&[
            "inspect",
            &format!("{host}/team/app:{tag}"),
            "--raw",
        ]));
        assert_eq!(
            m["annotations"]["org.opencontainers.image.base.name"],
            format!("{host}/lib/base:{base}"),
            "team/app:{tag}"
        );
    }
    // The recorded name is read back: a rebase with no --new-base finds the base again.
    let (code, out, err) = status(&["rebase", &format!("{host}/team/app:v2")]);
    assert_eq!(code, 3, "{out}{err}");

    let Some(regctl) = regctl() else {
        eprintln!("skipped: regctl is not installed (bash ../shared/peers/install.sh)");
        return;
    };
    let conf = tempfile::tempdir().unwrap();
    for tag in ["v1", "v2"] {
        let out = std::process::Command::new(&regctl)
            .env("HOME", conf.path())
            .args([
                "--host",
                &format!("reg={host},tls=disabled"),
                "image",
                "check-base",
                &format!("{host}/team/app:{tag}"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "regctl image check-base team/app:{tag}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

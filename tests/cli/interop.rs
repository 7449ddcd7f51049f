//! Interop with tools nobody here wrote: umoci unpacks what ociup appends, skopeo reads and copies
//! ociup's layouts, and ociup reads layouts that umoci and skopeo wrote.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::support::{fixtures, json, ociup_ok, sample_tree, tool};

fn unpack(layout: &Path, tag: &str, bundle: &Path) -> std::path::PathBuf {
    let image = format!("{}:{tag}", layout.display());
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
    bundle.join("rootfs")
}

#[test]
fn umoci_unpacks_what_ociup_appended() {
    let t = tempfile::tempdir().unwrap();
    sample_tree(&t.path().join("tree"));
    let out = t.path().join("out");
    let add = format!("{}:/opt/app", t.path().join("tree").display());
    std::fs::write(t.path().join("scratch"), b"scratch\n").unwrap();
    let add_tmp = format!("{}:/tmp/scratch", t.path().join("scratch").display());
    ociup_ok(&[
        "append",
        "--base",
        &format!("oci:{}:v1", fixtures().join("base").display()),
        "--add",
        &add,
        "--add",
        &add_tmp,
        "--remove",
        "/etc/motd",
        "--clear-dir",
        "/usr/share/base",
        "--to",
        &format!("oci:{}:app", out.display()),
    ]);
    let rootfs = unpack(&out, "app", &t.path().join("bundle"));
    let mode = |p: &str| std::fs::symlink_metadata(rootfs.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/os-release"))
            .unwrap()
            .lines()
            .nth(1),
        Some("VERSION_ID=1")
    );
    assert!(
        !rootfs.join("etc/motd").exists(),
        "whiteout removed /etc/motd"
    );
    assert!(rootfs.join("usr/share/base").is_dir(), "opaque dir kept");
    assert_eq!(
        std::fs::read_dir(rootfs.join("usr/share/base"))
            .unwrap()
            .count(),
        0,
        "its base contents hidden"
    );
    // A file added under the base's /tmp leaves /tmp as the base has it (sticky, world
    // writable): the layer has no entry for a directory that is only a parent. /opt, which the
    // base lacks, is created by the unpacker.
    assert_eq!(mode("tmp"), 0o1777, "the base's /tmp kept its mode");
    assert_eq!(
        std::fs::read(rootfs.join("tmp/scratch")).unwrap(),
        b"scratch\n"
    );
    assert_eq!(mode("opt"), 0o755);
    let manifest = json(&ociup_ok(&[
        "inspect",
        &format!("oci:{}:app", out.display()),
        "--json",
    ]));
    let top = manifest["manifest"]["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let entries = crate::support::read_layer(&crate::support::blob(&out, &top));
    for parent in ["tmp/", "opt/", "etc/"] {
        assert!(
            !entries.contains_key(parent),
            "{parent} in {:?}",
            entries.keys()
        );
    }
    assert!(
        entries.contains_key("opt/app/"),
        "the added tree's own root is there"
    );
    assert_eq!(mode("opt/app/bin/tool"), 0o4755);
    assert_eq!(mode("opt/app/etc/app.conf"), 0o640);
    assert_eq!(mode("opt/app/empty"), 0o1777);
    assert_eq!(
        std::fs::read_link(rootfs.join("opt/app/bin/data-link")).unwrap(),
        Path::new("../share/data.txt")
    );
    let a = std::fs::metadata(rootfs.join("opt/app/etc/app.conf")).unwrap();
    let b = std::fs::metadata(rootfs.join("opt/app/etc/app.conf.hard")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hardlink unpacked as a hardlink");
    let long = rootfs
        .join("opt/app")
        .join("deep".repeat(30))
        .join("n".repeat(120));
    assert_eq!(std::fs::read(long).unwrap(), b"long name\n");
}

#[test]
fn skopeo_reads_and_copies_ociup_layouts() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let made = json(&ociup_ok(&[
        "append",
        "--base",
        &format!("oci:{}:v2", fixtures().join("base").display()),
        "--env",
        "A=1",
        "--to",
        &format!("oci:{}:app", out.display()),
        "--json",
    ]));
    let inspected = json(&tool(
        "skopeo",
        &["inspect", &format!("oci:{}:app", out.display())],
    ));
    assert_eq!(inspected["Digest"], made["digest"]);
    assert!(
        inspected["Env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("A=1"))
    );

    let copy = t.path().join("copy");
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci:{}:app", out.display()),
            &format!("oci:{}:app", copy.display()),
        ],
    );
    let back = json(&ociup_ok(&[
        "inspect",
        &format!("oci:{}:app", copy.display()),
        "--json",
    ]));
    assert_eq!(
        back["digest"], made["digest"],
        "skopeo kept the manifest bytes"
    );

    // A whole multi-platform index, every child.
    let multi = format!("oci:{}:v2", fixtures().join("multi").display());
    let mcopy = t.path().join("mcopy");
    tool(
        "skopeo",
        &[
            "copy",
            "--all",
            &multi,
            &format!("oci:{}:v2", mcopy.display()),
        ],
    );
    let a = json(&ociup_ok(&["inspect", &multi, "--json"]));
    let b = json(&ociup_ok(&[
        "inspect",
        &format!("oci:{}:v2", mcopy.display()),
        "--json",
    ]));
    assert_eq!(a["digest"], b["digest"]);
}

#[test]
fn ociup_reads_layouts_umoci_and_skopeo_wrote() {
    let t = tempfile::tempdir().unwrap();
    // umoci: a new image, a file added through unpack/repack.
    let lay = t.path().join("umoci");
    let image = format!("{}:base", lay.display());
    tool("umoci", &["init", "--layout", lay.to_str().unwrap()]);
    tool("umoci", &["new", "--image", &image]);
    let bundle = t.path().join("bundle");
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
    std::fs::write(bundle.join("rootfs/from-umoci"), b"umoci\n").unwrap();
    tool(
        "umoci",
        &["repack", "--image", &image, bundle.to_str().unwrap()],
    );
    tool(
        "umoci",
        &["config", "--image", &image, "--config.env", "FROM_UMOCI=1"],
    );

    let r = format!("oci:{}:base", lay.display());
    let seen = json(&ociup_ok(&["inspect", &r, "--json"]));
    assert_eq!(seen["manifest"]["layers"].as_array().unwrap().len(), 1);
    assert!(
        seen["config"]["config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("FROM_UMOCI=1"))
    );
    std::fs::write(t.path().join("mine"), b"ociup\n").unwrap();
    ociup_ok(&[
        "append",
        "--base",
        &r,
        "--add",
        &format!("{}:/mine", t.path().join("mine").display()),
        "--to",
        &format!("oci:{}:next", lay.display()),
    ]);
    let rootfs = unpack(&lay, "next", &t.path().join("bundle2"));
    assert_eq!(
        std::fs::read(rootfs.join("from-umoci")).unwrap(),
        b"umoci\n"
    );
    assert_eq!(std::fs::read(rootfs.join("mine")).unwrap(), b"ociup\n");
    assert!(
        umoci_lists(&lay).contains(&"base".to_owned()),
        "umoci still lists its own tag"
    );

    // skopeo: a copy recompressed with zstd, which ociup must read and append to.
    let sk = t.path().join("skopeo");
    let from = format!("oci:{}:v1", fixtures().join("base").display());
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-compress-format",
            "zstd",
            &from,
            &format!("oci:{}:z", sk.display()),
        ],
    );
    let z = json(&ociup_ok(&[
        "inspect",
        &format!("oci:{}:z", sk.display()),
        "--json",
    ]));
    assert!(
        z["manifest"]["layers"][0]["mediaType"]
            .as_str()
            .unwrap()
            .ends_with("+zstd")
    );
    ociup_ok(&[
        "append",
        "--base",
        &format!("oci:{}:z", sk.display()),
        "--env",
        "B=2",
        "--to",
        &format!("oci:{}:z2", sk.display()),
    ]);
    let again = json(&tool(
        "skopeo",
        &["inspect", &format!("oci:{}:z2", sk.display())],
    ));
    assert!(
        again["Env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("B=2"))
    );
}

fn umoci_lists(layout: &Path) -> Vec<String> {
    tool("umoci", &["ls", "--layout", layout.to_str().unwrap()])
        .lines()
        .map(str::to_owned)
        .collect()
}

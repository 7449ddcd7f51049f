//! `ociup layer create`: golden digest, determinism across processes, thread counts and source
//! locations, what the tar holds, and clear errors for what a layer cannot carry.

use crate::support::{json, ociup_err, ociup_ok, read_layer, sample_tree};

/// The layer of `sample_tree` at /opt with SOURCE_DATE_EPOCH 1700000000, gzip level 6. A change
/// here means every layer ociup builds changed bytes (a deflate backend switched, an entry
/// encoding changed): existing digests would no longer be reproduced.
const GOLDEN_LAYER: &str =
    "sha256:2aad312863b130d6ba14eb13b0d4422175bd84f9ebe5b852b5cc1beea96acbd0";
const GOLDEN_DIFF_ID: &str =
    "sha256:8c34ea8095299d07a3ad996ba2f2a8f886348476f811f8b5f1acfaae63e90ce2";

fn create(tree: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "layer",
        "create",
        tree.to_str().unwrap(),
        "--to",
        "/opt",
        "-o",
        out.to_str().unwrap(),
        "--json",
        "--source-date-epoch",
        "1700000000",
    ];
    args.extend_from_slice(extra);
    json(&ociup_ok(&args))
}

#[test]
fn same_digest_in_every_process_thread_count_and_location() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    sample_tree(&a.path().join("tree"));
    // A second copy made later, elsewhere: other inode numbers, mtimes and parent path.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    sample_tree(&b.path().join("elsewhere"));

    let first = create(
        &a.path().join("tree"),
        &a.path().join("1.tgz"),
        &["--threads", "1"],
    );
    let second = create(
        &b.path().join("elsewhere"),
        &b.path().join("2.tgz"),
        &["--threads", "2"],
    );
    let third = create(
        &a.path().join("tree"),
        &a.path().join("3.tgz"),
        &["--threads", "7"],
    );
    assert_eq!(first["digest"], GOLDEN_LAYER, "golden layer digest");
    assert_eq!(first["diff_id"], GOLDEN_DIFF_ID, "golden diff_id");
    for other in [&second, &third] {
        assert_eq!(first["digest"], other["digest"]);
        assert_eq!(first["size"], other["size"]);
    }
    let bytes = std::fs::read(a.path().join("1.tgz")).unwrap();
    assert_eq!(bytes, std::fs::read(b.path().join("2.tgz")).unwrap());
    assert_eq!(first["size"], bytes.len());
}

#[test]
fn tar_keeps_modes_links_empty_dirs_and_long_names_in_order() {
    let t = tempfile::tempdir().unwrap();
    sample_tree(&t.path().join("tree"));
    let out = t.path().join("l.tgz");
    create(&t.path().join("tree"), &out, &[]);
    let blob = std::fs::read(&out).unwrap();

    // Entry order as written.
    let mut gz = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut gz).unwrap();
    let mut order = Vec::new();
    for e in tar::Archive::new(&gz[..]).entries().unwrap() {
        order.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "entries are sorted");

    let items = read_layer(&blob);
    let get = |p: &str| {
        items
            .get(p)
            .unwrap_or_else(|| panic!("{p} missing from {:?}", items.keys()))
    };
    assert_eq!(
        get("opt/").mode,
        0o755,
        "a directory of the tree keeps its entry"
    );
    assert_eq!(get("opt/bin/tool").mode, 0o4755, "setuid kept");
    assert_eq!(get("opt/shared/").mode, 0o3775, "setgid kept");
    assert_eq!(get("opt/empty/").mode, 0o1777, "sticky empty dir kept");
    assert_eq!(get("opt/empty/").kind, '5');
    assert_eq!(get("opt/etc/app.conf").mode, 0o640);
    let link = get("opt/bin/data-link");
    assert_eq!(
        (link.kind, link.link.as_deref()),
        ('2', Some("../share/data.txt"))
    );
    let hard = get("opt/etc/app.conf.hard");
    assert_eq!(
        (hard.kind, hard.link.as_deref()),
        ('1', Some("opt/etc/app.conf"))
    );
    assert!(hard.data.is_empty(), "a hardlink's data is stored once");
    assert_eq!(get("opt/etc/app.conf").data, b"key = value\n");
    let long = format!("opt/{}/{}", "deep".repeat(30), "n".repeat(120));
    assert_eq!(get(&long).data, b"long name\n");
    for (path, item) in &items {
        assert_eq!(item.uid, 0, "{path} owned by root");
        assert_eq!(item.mtime, 1_700_000_000, "{path} mtime clamped");
    }
}

#[test]
fn compressions_none_and_zstd() {
    let t = tempfile::tempdir().unwrap();
    sample_tree(&t.path().join("tree"));
    let none = create(
        &t.path().join("tree"),
        &t.path().join("l.tar"),
        &["--compression", "none"],
    );
    assert_eq!(
        none["digest"], none["diff_id"],
        "an uncompressed layer's digest is its diff_id"
    );
    assert_eq!(
        none["diff_id"], GOLDEN_DIFF_ID,
        "same tar whatever the compression"
    );
    assert_eq!(none["media_type"], "application/vnd.oci.image.layer.v1.tar");
    let z1 = create(
        &t.path().join("tree"),
        &t.path().join("1.zst"),
        &["--compression", "zstd"],
    );
    let z2 = create(
        &t.path().join("tree"),
        &t.path().join("2.zst"),
        &["--compression", "zstd"],
    );
    assert_eq!(z1["digest"], z2["digest"]);
    assert_eq!(z1["diff_id"], GOLDEN_DIFF_ID);
    assert_eq!(
        z1["media_type"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let magic = &std::fs::read(t.path().join("1.zst")).unwrap()[..4];
    assert_eq!(magic, [0x28, 0xb5, 0x2f, 0xfd]);
}

#[test]
fn sockets_and_escaping_symlinks_are_errors_that_name_the_file() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    sample_tree(&tree);
    let sock = tree.join("etc/control.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let out = t.path().join("x.tgz");
    let args = |tree: &std::path::Path| {
        vec![
            "layer".to_owned(),
            "create".into(),
            tree.to_str().unwrap().into(),
            "-o".into(),
            out.to_str().unwrap().into(),
        ]
    };
    let run = |a: Vec<String>| ociup_err(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let err = run(args(&tree));
    assert!(
        err.contains("control.sock") && err.contains("socket"),
        "{err}"
    );
    std::fs::remove_file(&sock).unwrap();

    std::os::unix::fs::symlink("../../../etc/passwd", tree.join("bin/escape")).unwrap();
    let err = run(args(&tree));
    assert!(
        err.contains("bin/escape") && err.contains("outside the source tree"),
        "{err}"
    );
    std::fs::remove_file(tree.join("bin/escape")).unwrap();

    let err = run(args(&t.path().join("missing")));
    assert!(
        err.contains("missing") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!out.exists(), "no output is left behind after a failure");
}

#[test]
fn a_file_that_disappears_or_cannot_be_read_is_reported() {
    use ociup_core::layer::{LayerBuilder, LayerOptions};
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("vanishing");
    std::fs::write(&f, b"x").unwrap();
    let mut b = LayerBuilder::new(LayerOptions::default());
    b.add(&f, "/vanishing").unwrap();
    std::fs::remove_file(&f).unwrap();
    let err = b.build(Vec::new()).unwrap_err().to_string();
    assert!(
        err.contains("vanishing") && err.contains("does not exist"),
        "{err}"
    );

    // Permission bits do not stop root, so this half runs only for other users.
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !is_root {
        use std::os::unix::fs::PermissionsExt;
        let locked = t.path().join("locked");
        std::fs::write(&locked, b"secret").unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let mut b = LayerBuilder::new(LayerOptions::default());
        b.add(&locked, "/locked").unwrap();
        let err = b.build(Vec::new()).unwrap_err().to_string();
        assert!(
            err.contains("locked") && err.contains("permission denied"),
            "{err}"
        );
    }
}

/// A tree with one file, `tree/conf`, and a root-only secret of the same size beside the tree:
/// the layer of the tree is planned (walked), then the test changes `conf` before it is built.
fn planned_tree() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    ociup_core::layer::LayerBuilder,
) {
    use ociup_core::layer::{LayerBuilder, LayerOptions};
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("conf"), b"public-data!").unwrap();
    let secret = t.path().join("secret");
    std::fs::write(&secret, b"root-secret!").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut b = LayerBuilder::new(LayerOptions {
        compression: ociup_core::media_type::Compression::None,
        ..LayerOptions::default()
    });
    b.add(&tree, "/etc/app").unwrap();
    (t, tree, b)
}

/// The build fails naming `conf` with `reason` and writes none of the secret's bytes.
fn build_refuses(b: ociup_core::layer::LayerBuilder, reason: &str) {
    let mut out = Vec::new();
    let res = b.build(&mut out).map(|(layer, _)| layer);
    let leaked = out.windows(12).any(|w| w == b"root-secret!");
    match res {
        Ok(_) => panic!("the build succeeded (secret in the layer: {leaked})"),
        Err(e) => {
            let err = e.to_string();
            assert!(err.contains("conf") && err.contains(reason), "{err}");
        }
    }
    assert!(!leaked, "the secret's bytes reached the output");
}

#[test]
fn a_source_swapped_for_a_symlink_after_the_walk_is_not_followed() {
    let (t, tree, b) = planned_tree();
    std::fs::remove_file(tree.join("conf")).unwrap();
    std::os::unix::fs::symlink(t.path().join("secret"), tree.join("conf")).unwrap();
    build_refuses(b, "replaced by a symlink");
}

#[test]
fn a_source_swapped_for_another_file_or_rewritten_after_the_walk_is_refused() {
    // Another file of the same size renamed over it: another inode.
    let (t, tree, b) = planned_tree();
    let other = t.path().join("other");
    std::fs::copy(t.path().join("secret"), &other).unwrap();
    std::fs::rename(&other, tree.join("conf")).unwrap();
    build_refuses(b, "replaced by another file");

    // The same file rewritten in place with other bytes of the same size.
    let (t, tree, b) = planned_tree();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(tree.join("conf"))
        .unwrap();
    std::io::Write::write_all(&mut &f, b"root-secret!").unwrap();
    let old = std::fs::metadata(t.path().join("secret")).unwrap();
    f.set_modified(old.modified().unwrap() - std::time::Duration::from_secs(60))
        .unwrap();
    drop(f);
    build_refuses(b, "changed after it was added");
}

#[test]
fn a_source_swapped_for_a_fifo_after_the_walk_does_not_block() {
    let (_t, tree, b) = planned_tree();
    std::fs::remove_file(tree.join("conf")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(tree.join("conf"))
        .status()
        .unwrap();
    assert!(made.success());
    build_refuses(b, "no longer a regular file");
}

#[test]
fn a_symlink_given_as_the_source_is_still_followed() {
    use ociup_core::layer::{LayerBuilder, LayerOptions};
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("real"), b"contents").unwrap();
    std::os::unix::fs::symlink("real", t.path().join("link")).unwrap();
    let mut b = LayerBuilder::new(LayerOptions::default());
    b.add(t.path().join("link"), "/x").unwrap();
    let (_, blob) = b.build(Vec::new()).unwrap();
    let items = read_layer(&blob);
    assert_eq!(items["x"].data, b"contents");
}

#[test]
fn chained_relative_symlinks_that_climb_out_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    // Each link alone stays inside the tree; together `a/esc` is the tree's parent.
    std::os::unix::fs::symlink("../..", tree.join("a/b/up2")).unwrap();
    std::os::unix::fs::symlink("b/up2/..", tree.join("a/esc")).unwrap();
    let out = t.path().join("x.tgz");
    let run = || {
        ociup_err(&[
            "layer",
            "create",
            tree.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let err = run();
    assert!(
        err.contains("a/esc") && err.contains("outside the source tree"),
        "{err}"
    );
    assert!(!out.exists(), "no output is left behind after a failure");

    // A loop cannot be followed to its end.
    std::fs::remove_file(tree.join("a/esc")).unwrap();
    std::os::unix::fs::symlink("l2", tree.join("a/l1")).unwrap();
    std::os::unix::fs::symlink("l1/../..", tree.join("a/l2")).unwrap();
    let err = run();
    assert!(err.contains("symlinks (a loop?)"), "{err}");

    // Without them, the chain that stays inside is kept.
    std::fs::remove_file(tree.join("a/l1")).unwrap();
    std::fs::remove_file(tree.join("a/l2")).unwrap();
    std::os::unix::fs::symlink("b/up2/a", tree.join("a/ok")).unwrap();
    let ok = ociup_ok(&[
        "layer",
        "create",
        tree.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(out.exists(), "{ok}");
}

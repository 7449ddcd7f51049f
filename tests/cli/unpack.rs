//! `ociup unpack`: the result matches `umoci unpack` of the same image (file list, types, modes,
//! owners, link targets, sizes, hardlink groups, times of files and symlinks), and hostile
//! layers write nothing outside the directory.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::support::{fixtures, json, ociup_err, ociup_ok, sample_tree, sha256, tool, write};

/// What is compared of one entry of a tree.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Item {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    link: Option<PathBuf>,
    /// Modification time, for files and symlinks (directories the unpackers create as parents
    /// get the time of the unpack).
    mtime: Option<i64>,
}

/// Every entry under `root` (not `root` itself), and the hardlink groups (paths sharing an
/// inode, groups of two or more).
pub(crate) fn scan(root: &Path) -> (BTreeMap<PathBuf, Item>, BTreeSet<BTreeSet<PathBuf>>) {
    let mut items = BTreeMap::new();
    let mut inodes: BTreeMap<u64, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            if kind == "file" && m.nlink() > 1 {
                inodes.entry(m.ino()).or_default().insert(rel.clone());
            }
            items.insert(
                rel,
                Item {
                    kind,
                    mode: if kind == "symlink" {
                        0
                    } else {
                        m.mode() & 0o7777
                    },
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if kind == "dir" { 0 } else { m.size() },
                    link: ft.is_symlink().then(|| std::fs::read_link(&path).unwrap()),
                    mtime: (kind != "dir").then_some(m.mtime()),
                },
            );
        }
    }
    let groups = inodes.into_values().filter(|g| g.len() > 1).collect();
    (items, groups)
}

/// Unpacks `layout:tag` with umoci and with ociup and asserts both trees are the same; answers
/// ociup's tree.
fn same_as_umoci(layout: &Path, tag: &str, work: &Path) -> PathBuf {
    let name = layout.file_name().unwrap().to_string_lossy();
    let bundle = work.join(format!("umoci-{name}-{tag}"));
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{tag}", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let ours = work.join(format!("ociup-{name}-{tag}"));
    ociup_ok(&[
        "unpack",
        &format!("oci:{}:{tag}", layout.display()),
        ours.to_str().unwrap(),
    ]);
    let (theirs, their_groups) = scan(&bundle.join("rootfs"));
    let (mine, my_groups) = scan(&ours);
    assert!(!mine.is_empty());
    for (path, item) in &theirs {
        assert_eq!(mine.get(path), Some(item), "{}", path.display());
    }
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    assert_eq!(my_groups, their_groups, "hardlink groups");
    ours
}

#[test]
fn fixtures_unpack_as_umoci_unpacks_them() {
    let t = tempfile::tempdir().unwrap();
    for tag in ["v1", "v2"] {
        same_as_umoci(&fixtures().join("base"), tag, t.path());
    }
    // One platform of an index: umoci needs a tag naming a manifest, ociup picks it itself.
    let arm64 = t.path().join("amd64");
    ociup_ok(&[
        "copy",
        &format!("oci:{}:v1", fixtures().join("multi").display()),
        &format!("oci:{}:v1", arm64.display()),
        "--platform",
        "linux/arm64",
    ]);
    let ours = same_as_umoci(&arm64, "v1", t.path());
    let direct = t.path().join("direct");
    let out = json(&ociup_ok(&[
        "unpack",
        &format!("oci:{}:v1", fixtures().join("multi").display()),
        direct.to_str().unwrap(),
        "--platform",
        "linux/arm64",
        "--json",
    ]));
    assert_eq!(out["layers"], 3);
    // Every key is documented.
    let doc = std::fs::read_to_string(crate::support::repo().join("docs/json.md")).unwrap();
    let section = doc.split("## `ociup unpack --json`").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    for key in out.as_object().unwrap().keys() {
        assert!(
            section.contains(&format!("| `{key}` |")),
            "{key} not in docs/json.md"
        );
    }
    assert_eq!(out["owners_from_layers"], true);
    assert_eq!(scan(&direct), scan(&ours));
}

/// An image of three layers over the base: a tree with setuid, setgid and sticky bits, a
/// hardlink, symlinks and a long name, owned 1000:1001 in an uncompressed layer; then removals
/// and opaque directories over it; then a file put back where one was removed, in a zstd layer.
#[test]
fn whiteouts_and_opaque_dirs_unpack_as_umoci_unpacks_them() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    sample_tree(&tree);
    let lay = t.path().join("lay");
    let img = |tag: &str| format!("oci:{}:{tag}", lay.display());
    ociup_ok(&[
        "append",
        "--base",
        &format!("oci:{}:v1", fixtures().join("base").display()),
        "--add",
        &format!("{}:/opt/app", tree.display()),
        "--owner",
        "1000:1001",
        "--compression",
        "none",
        "--to",
        &img("one"),
    ]);
    ociup_ok(&[
        "append",
        "--base",
        &img("one"),
        "--remove",
        "/etc/motd",
        "--remove",
        "/opt/app/bin/data-link",
        "--clear-dir",
        "/usr/share/base",
        "--clear-dir",
        "/opt/app/share",
        "--to",
        &img("two"),
    ]);
    let back = t.path().join("back");
    write(&back, b"back again\n", 0o600);
    ociup_ok(&[
        "append",
        "--base",
        &img("two"),
        "--add",
        &format!("{}:/etc/motd", back.display()),
        "--compression",
        "zstd",
        "--to",
        &img("three"),
    ]);
    let zstd_ok = std::process::Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:three", lay.display())])
        .arg(t.path().join("probe"))
        .output()
        .unwrap()
        .status
        .success();
    for tag in ["one", "two"] {
        same_as_umoci(&lay, tag, t.path());
    }
    let ours = if zstd_ok {
        same_as_umoci(&lay, "three", t.path())
    } else {
        // This umoci cannot read zstd layers: the zstd image is checked on its own.
        let dir = t.path().join("three");
        ociup_ok(&["unpack", &img("three"), dir.to_str().unwrap()]);
        dir
    };
    let (items, groups) = scan(&ours);
    assert_eq!(
        std::fs::read(ours.join("etc/motd")).unwrap(),
        b"back again\n"
    );
    assert!(!items.contains_key(Path::new("opt/app/bin/data-link")));
    assert_eq!(items[Path::new("opt/app/bin/tool")].mode, 0o4755);
    assert_eq!(items[Path::new("opt/app/bin/tool")].uid, 1000);
    assert_eq!(items[Path::new("opt/app/shared")].mode, 0o3775);
    assert_eq!(items[Path::new("opt/app/empty")].mode, 0o1777);
    assert_eq!(items[Path::new("opt/app/share")].kind, "dir");
    assert!(!items.contains_key(Path::new("opt/app/share/data.txt")));
    assert_eq!(
        std::fs::read_dir(ours.join("usr/share/base"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        groups,
        BTreeSet::from([BTreeSet::from([
            PathBuf::from("opt/app/etc/app.conf"),
            PathBuf::from("opt/app/etc/app.conf.hard")
        ])])
    );
    // --owners caller: the layers' 1000:1001 are dropped, the files are the caller's.
    let mine = t.path().join("mine");
    let out = json(&ociup_ok(&[
        "unpack",
        &img("one"),
        mine.to_str().unwrap(),
        "--owners",
        "caller",
        "--json",
    ]));
    assert_eq!(out["owners_from_layers"], false);
    let me = std::fs::metadata(t.path()).unwrap();
    let tool = std::fs::metadata(mine.join("opt/app/bin/tool")).unwrap();
    assert_eq!((tool.uid(), tool.gid()), (me.uid(), me.gid()));
    assert_eq!(tool.mode() & 0o7777, 0o4755);
}

/// A tar entry with its name (and link name) written as raw bytes, as a hostile layer would
/// hold them: `tar::Header::set_path` refuses `..`.
pub(crate) fn entry(
    out: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &str,
    link: &str,
    data: &[u8],
) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    out.append(&h, data).unwrap();
}

/// A layout holding one image of `layers` (uncompressed tars), tagged `v1`.
pub(crate) fn layout_with(dir: &Path, layers: &[Vec<u8>]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha256(bytes);
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
        d
    };
    let diff_ids: Vec<String> = layers.iter().map(|l| put(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(&config), "size": config.len()},
        "layers": layers.iter().zip(&diff_ids).map(|(l, d)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": l.len()
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": put(&manifest), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

pub(crate) fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

/// Everything under `dir` with its contents (symlink targets for symlinks).
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        let m = std::fs::symlink_metadata(&e).unwrap();
        let v = if m.file_type().is_symlink() {
            std::fs::read_link(&e)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if m.is_file() {
            std::fs::read(&e).unwrap()
        } else {
            Vec::new()
        };
        out.insert(e, v);
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A work directory with a sentinel tree beside where the image is unpacked.
struct Scene {
    _t: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
    before: BTreeMap<PathBuf, Vec<u8>>,
    passwd: Vec<u8>,
}

impl Scene {
    fn new() -> Scene {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        write(&root.join("sentinel/keep"), b"untouched\n", 0o644);
        write(&root.join("outside"), b"outside\n", 0o644);
        Scene {
            dir: root.join("a/b/rootfs"),
            before: snapshot(&root),
            passwd: std::fs::read("/etc/passwd").unwrap_or_default(),
            root,
            _t: t,
        }
    }

    /// Unpacks an image of `layers`; answers ociup's stderr when it failed.
    fn unpack(&self, layers: &[Vec<u8>]) -> Result<(), String> {
        let lay = self.root.parent().unwrap().join("lay");
        let _ = std::fs::remove_dir_all(&lay);
        layout_with(&lay, layers);
        let out = crate::support::ociup(&[
            "unpack",
            &format!("oci:{}:v1", lay.display()),
            self.dir.to_str().unwrap(),
        ]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Nothing changed outside `dir` (its parents aside), nor /etc/passwd.
    fn nothing_escaped(&self) {
        let mut now = snapshot(&self.root);
        now.retain(|p, _| !p.starts_with(&self.dir));
        for parent in [self.root.join("a"), self.root.join("a/b")] {
            now.remove(&parent);
        }
        assert_eq!(
            now, self.before,
            "the tree beside the unpacked directory changed"
        );
        assert_eq!(
            std::fs::read("/etc/passwd").unwrap_or_default(),
            self.passwd
        );
    }
}

use tar::EntryType as E;

#[test]
fn hostile_names_are_confined_inside_the_directory() {
    let s = Scene::new();
    let escape = format!("ociup-unpack-escape-{}", std::process::id());
    let layer = tar_of(|b| {
        entry(b, E::Regular, "../../../x", "", b"dotdot\n");
        entry(b, E::Regular, "/abs", "", b"absolute\n");
        entry(b, E::Symlink, "evil", "/", b"");
        entry(
            b,
            E::Regular,
            &format!("evil/etc/{escape}"),
            "",
            b"through /\n",
        );
        entry(b, E::Symlink, "up", "../../../..", b"");
        entry(b, E::Regular, "up/sentinel/keep", "", b"through ..\n");
        // A file over a symlink replaces the symlink, never writes where it points.
        entry(b, E::Symlink, "pw", "/etc/passwd", b"");
        entry(b, E::Regular, "pw", "", b"not passwd\n");
        // A hardlink to a symlink links the symlink, not what it points to.
        entry(b, E::Symlink, "pw2", "/etc/passwd", b"");
        entry(b, E::Link, "hl", "pw2", b"");
        entry(b, E::Symlink, "parent", "..", b"");
        entry(b, E::Directory, "parent/parent/parent/d", "", b"");
    });
    s.unpack(&[layer]).unwrap();
    s.nothing_escaped();
    assert!(!Path::new("/etc").join(&escape).exists());
    let read = |p: &str| std::fs::read(s.dir.join(p)).unwrap();
    assert_eq!(read("x"), b"dotdot\n");
    assert_eq!(read("abs"), b"absolute\n");
    assert_eq!(read(&format!("etc/{escape}")), b"through /\n");
    assert_eq!(read("sentinel/keep"), b"through ..\n");
    assert_eq!(read("pw"), b"not passwd\n");
    assert!(s.dir.join("d").is_dir());
    let hl = std::fs::symlink_metadata(s.dir.join("hl")).unwrap();
    assert!(hl.file_type().is_symlink());
    assert_eq!(
        hl.ino(),
        std::fs::symlink_metadata(s.dir.join("pw2")).unwrap().ino()
    );
}

#[test]
fn hardlinks_out_of_the_directory_and_whiteouts_of_dotdot_are_refused() {
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "/etc/passwd",
            tar_of(|b| entry(b, E::Link, "hl", "/etc/passwd", b"")),
        ),
        (
            "../../outside",
            tar_of(|b| entry(b, E::Link, "hl", "../../outside", b"")),
        ),
        (
            "evil/etc/passwd",
            tar_of(|b| {
                entry(b, E::Symlink, "evil", "/", b"");
                entry(b, E::Link, "hl", "evil/etc/passwd", b"");
            }),
        ),
        (
            "\"..\"",
            tar_of(|b| {
                entry(b, E::Directory, "sub", "", b"");
                entry(b, E::Regular, "sub/.wh...", "", b"");
            }),
        ),
    ];
    for (what, layer) in cases {
        let s = Scene::new();
        let err = s.unpack(&[layer]).unwrap_err();
        assert!(err.contains(what), "{what}: {err}");
        assert!(
            err.contains("not in the tree") || err.contains("names no entry"),
            "{err}"
        );
        s.nothing_escaped();
        assert!(!s.dir.exists(), "a failed unpack leaves no directory");
        assert_eq!(
            std::fs::read_dir(s.dir.parent().unwrap()).unwrap().count(),
            0,
            "nor a partial one"
        );
    }
    // A hardlink to a file of the image itself is made, through a symlink resolved inside.
    let s = Scene::new();
    let layer = tar_of(|b| {
        entry(b, E::Regular, "etc/passwd", "", b"image's own\n");
        entry(b, E::Symlink, "evil", "/", b"");
        entry(b, E::Link, "hl", "evil/etc/passwd", b"");
    });
    s.unpack(&[layer]).unwrap();
    s.nothing_escaped();
    let a = std::fs::metadata(s.dir.join("hl")).unwrap();
    let b = std::fs::metadata(s.dir.join("etc/passwd")).unwrap();
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("lay");
    crate::support::copy_tree(&fixtures().join("base"), &lay);
    let image = json(&ociup_ok(&[
        "inspect",
        &format!("oci:{}:v1", lay.display()),
        "--json",
    ]));
    let layer = image["manifest"]["layers"][2]["digest"].as_str().unwrap();
    let path = lay.join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    // Same size, the last byte changed: the gzip trailer no longer matches either, but the
    // digest is what is reported.
    let n = bytes.len() - 1;
    bytes[n] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let dir = t.path().join("rootfs");
    let err = ociup_err(&[
        "unpack",
        &format!("oci:{}:v1", lay.display()),
        dir.to_str().unwrap(),
    ]);
    assert!(
        err.contains(layer) && err.contains("layer 3") && err.contains("digest mismatch"),
        "{err}"
    );
    assert!(!dir.exists());
    assert_eq!(
        std::fs::read_dir(t.path()).unwrap().count(),
        1,
        "no partial directory left"
    );
}

#[test]
fn a_directory_that_is_not_empty_is_refused() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("rootfs/keep"), b"mine\n", 0o644);
    let err = ociup_err(&[
        "unpack",
        &format!("oci:{}:v1", fixtures().join("base").display()),
        t.path().join("rootfs").to_str().unwrap(),
    ]);
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(
        std::fs::read(t.path().join("rootfs/keep")).unwrap(),
        b"mine\n"
    );
    // An empty one is used.
    std::fs::remove_file(t.path().join("rootfs/keep")).unwrap();
    ociup_ok(&[
        "unpack",
        &format!("oci:{}:v1", fixtures().join("base").display()),
        t.path().join("rootfs").to_str().unwrap(),
    ]);
    assert!(t.path().join("rootfs/etc/os-release").is_file());
}

/// The Debian root file system (`debootstrap --variant=minbase bookworm` from deb.debian.org,
/// device nodes left out), made once and kept as a tar in
/// `$XDG_CACHE_HOME/ociup-tests/debootstrap/bookworm-minbase.tar` (`~/.cache` without it).
/// `None`, with the reason printed, when it cannot be made here (no debootstrap, not root, no
/// network).
pub(crate) fn debian_rootfs_tar() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
        .join("ociup-tests/debootstrap");
    let tar = cache.join("bookworm-minbase.tar");
    if tar.is_file() {
        return Some(tar);
    }
    let skip = |why: String| {
        eprintln!("SKIPPED: the Debian root file system test: {why}");
        None
    };
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return skip("debootstrap needs root".into());
    }
    std::fs::create_dir_all(&cache).ok()?;
    let work = tempfile::tempdir_in(&cache).ok()?;
    let root = work.path().join("root");
    let out = std::process::Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&root)
        .arg("http://deb.debian.org/debian")
        .output();
    match out {
        Err(e) => {
            return skip(format!(
                "debootstrap cannot run ({e}); apt-get install debootstrap"
            ));
        }
        Ok(o) if !o.status.success() => {
            let log = String::from_utf8_lossy(&o.stderr);
            return skip(format!(
                "debootstrap failed (no network to deb.debian.org?): {}",
                log.lines().last().unwrap_or_default()
            ));
        }
        Ok(_) => {}
    }
    let partial = work.path().join("rootfs.tar");
    let status = std::process::Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--exclude=./dev/*", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&partial)
        .arg(".")
        .status()
        .ok()?;
    if !status.success() {
        return skip("tar of the debootstrap tree failed".into());
    }
    std::fs::rename(&partial, &tar).ok()?;
    Some(tar)
}

/// A Debian root file system (debootstrap minbase, ~200 MB, cached between runs) made into an
/// image with `ociup append --keep-owner`, unpacked by ociup and by umoci: the same trees.
#[test]
fn debian_root_file_system_unpacks_as_umoci_unpacks_it() {
    let Some(tar) = debian_rootfs_tar() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("debian");
    std::fs::create_dir(&root).unwrap();
    tool(
        "tar",
        &[
            "--numeric-owner",
            "--xattrs",
            "-xpf",
            tar.to_str().unwrap(),
            "-C",
            root.to_str().unwrap(),
        ],
    );
    let lay = t.path().join("lay");
    ociup_ok(&[
        "append",
        "--base",
        "scratch",
        "--add",
        &format!("{}:/", root.display()),
        "--keep-owner",
        "--compression",
        "none",
        "--to",
        &format!("oci:{}:debian", lay.display()),
    ]);
    std::fs::remove_dir_all(&root).unwrap();
    let ours = same_as_umoci(&lay, "debian", t.path());
    let (items, groups) = scan(&ours);
    assert!(items.len() > 5000, "{} entries", items.len());
    assert_eq!(items[Path::new("usr/bin/passwd")].mode, 0o4755);
    assert_eq!(items[Path::new("etc/shadow")].gid, 42);
    assert!(!groups.is_empty(), "Debian has hardlinks (perl, for one)");
}

//! Helpers shared by the tests: running `ociup`, making trees, reading layers.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The committed fixtures.
pub fn fixtures() -> PathBuf {
    repo().join("fixtures")
}

/// Runs `ociup` with `args` and a fixed environment (no SOURCE_DATE_EPOCH from outside).
pub fn ociup(args: &[&str]) -> Output {
    ociup_in(args, None)
}

pub fn ociup_in(args: &[&str], cwd: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ociup"));
    cmd.args(args).env_remove("SOURCE_DATE_EPOCH");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    cmd.output().expect("ociup runs")
}

/// Runs `ociup` and returns stdout, failing the test with stderr when it fails.
pub fn ociup_ok(args: &[&str]) -> String {
    let out = ociup(args);
    assert!(
        out.status.success(),
        "ociup {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs `ociup`, expects it to fail, returns stderr.
pub fn ociup_err(args: &[&str]) -> String {
    let out = ociup(args);
    assert!(
        !out.status.success(),
        "ociup {args:?} should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).expect("utf-8 output")
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Runs an external tool; panics with its output when it fails or is missing.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{program} could not be run ({e}); the README's test command installs it \
             (apt-get install -y skopeo umoci)"
            )
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn write(path: &Path, contents: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A small tree with the cases a layer must keep: modes with setuid, setgid and sticky bits, a
/// symlink, a hardlink, an empty directory, a long name. Modes are set explicitly, so the umask
/// does not matter.
pub fn sample_tree(root: &Path) {
    write(&root.join("bin/tool"), b"#!/bin/sh\necho tool\n", 0o4755);
    write(&root.join("etc/app.conf"), b"key = value\n", 0o640);
    write(&root.join("share/data.txt"), &b"data ".repeat(1000), 0o644);
    std::fs::create_dir_all(root.join("shared")).unwrap();
    std::fs::set_permissions(root.join("shared"), std::fs::Permissions::from_mode(0o3775)).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink("../share/data.txt", root.join("bin/data-link")).unwrap();
    std::fs::hard_link(root.join("etc/app.conf"), root.join("etc/app.conf.hard")).unwrap();
    let long = format!("{}/{}", "deep".repeat(30), "n".repeat(120));
    write(&root.join(long), b"long name\n", 0o600);
    for d in ["bin", "etc", "share"] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        root.join("deep".repeat(30)),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
}

/// One entry of a layer as a standard tar reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarItem {
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub mtime: u64,
    pub link: Option<String>,
    pub data: Vec<u8>,
}

/// Reads a layer blob (gzip, zstd or plain tar) with the `tar` crate.
pub fn read_layer(blob: &[u8]) -> BTreeMap<String, TarItem> {
    let mut tar = Vec::new();
    if blob.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(blob)
            .read_to_end(&mut tar)
            .unwrap();
    } else {
        tar = blob.to_vec();
    }
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(&tar[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let h = e.header().clone();
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(
            path,
            TarItem {
                kind: char::from(h.entry_type().as_byte()),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                mtime: h.mtime().unwrap(),
                link,
                data,
            },
        );
    }
    out
}

/// The blob `digest` of a layout.
pub fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let (alg, hex) = digest.split_once(':').unwrap();
    std::fs::read(layout.join("blobs").join(alg).join(hex)).unwrap()
}

/// Every file of a directory tree with its bytes, for "nothing changed" checks.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walkdir(dir) {
        if e.is_file() {
            out.insert(
                e.strip_prefix(dir).unwrap().to_owned(),
                std::fs::read(&e).unwrap(),
            );
        }
    }
    out
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Copies a directory tree (for tests that damage a copy of a fixture).
pub fn copy_tree(from: &Path, to: &Path) {
    for p in walkdir(from) {
        let dest = to.join(p.strip_prefix(from).unwrap());
        if p.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// Appends `add` (SRC:DEST) to each platform of the layout `lay`'s multi-platform `v1` (a copy
/// of `fixtures/multi`), and returns the children (digest, size) and an OCI index over them,
/// not yet stored.
pub fn custom_index(lay: &Path, add: &str) -> (Vec<(String, u64)>, serde_json::Value) {
    let mut children = Vec::new();
    let mut manifests = Vec::new();
    for (p, platform) in [
        (
            "linux/amd64",
            serde_json::json!({"os": "linux", "architecture": "amd64"}),
        ),
        (
            "linux/arm64/v8",
            serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ),
    ] {
        let made = json(&ociup_ok(&[
            "append",
            "--base",
            &format!("oci:{}:v1", lay.display()),
            "--platform",
            p,
            "--add",
            add,
            "--to",
            &format!("oci:{}:{}", lay.display(), p.replace('/', "-")),
            "--json",
        ]));
        let (digest, size) = (
            made["digest"].as_str().unwrap().to_owned(),
            made["size"].as_u64().unwrap(),
        );
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size, "platform": platform,
        }));
        children.push((digest, size));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    (children, index)
}

/// Stores an index document (canonical JSON) in the layout `lay` under `tag`.
pub fn put_index(lay: &Path, index: &serde_json::Value, tag: &str) {
    let raw =
        ociup_core::document::RawDocument::canonical(index, ociup_core::media_type::OCI_INDEX)
            .unwrap();
    let layout = ociup_core::layout::OciLayout::open(lay).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(ociup_core::store::Store::put_manifest(
            &layout,
            &raw,
            Some(tag),
        ))
        .unwrap();
}

/// Runs ociup in `dir` with the catalog of that directory (`OCIUP_CATALOG=oci:<dir>/catalog`),
/// a data directory of its own (`<dir>/.ociup-data`: what the registry client remembers of
/// registries is keyed by address, and another test's registry may have had this one's port)
/// and a cache of its own (`<dir>/.ociup-cache`: documents read from registries, by digest),
/// actor `tester`, `SOURCE_DATE_EPOCH=1700000000` and no signing key from the environment:
/// exit code, stdout, stderr.
pub fn ociup_at(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ociup"))
        .args(args)
        .current_dir(dir)
        .env("XDG_DATA_HOME", dir.join(".ociup-data"))
        .env("XDG_CACHE_HOME", dir.join(".ociup-cache"))
        .env(
            "OCIUP_CATALOG",
            format!("oci:{}", dir.join("catalog").display()),
        )
        .env("OCIUP_ACTOR", "tester")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env_remove("OCIUP_SIGNING_KEY")
        .output()
        .expect("ociup runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`ociup_at`] that must succeed: its stdout.
pub fn ok_at(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = ociup_at(dir, args);
    assert_eq!(code, 0, "ociup {args:?}: {err}");
    out
}

/// A static busybox (Debian's busybox-static), if installed.
pub fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Whether runc can run containers here (root, runc and a static busybox at hand); when not,
/// says that `what` is skipped and why.
pub fn can_run(what: &str) -> bool {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    let runc = Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !runc || busybox().is_none() {
        eprintln!(
            "SKIPPED: {what}: needs root, runc and a static busybox (scripts/test.sh installs \
             runc and busybox-static)"
        );
        return false;
    }
    true
}

/// `sha256:` and the hex SHA-256 of `bytes`: a digest as OCI writes it.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

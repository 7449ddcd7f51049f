//! Names the commit in `ociup --version` when the crate is built from a git checkout
//! (`0.1.0 (1a2b3c4)`); from a source tarball, or without git, the version is the package's alone.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let version = env!("CARGO_PKG_VERSION");
    let full = match commit() {
        Some(c) => format!("{version} ({c})"),
        None => version.to_owned(),
    };
    println!("cargo:rustc-env=OCIUP_VERSION={full}");
}

/// The short hash of HEAD, and the files whose change means another commit (HEAD, the branch's
/// ref, packed refs) registered for a rerun.
fn commit() -> Option<String> {
    // Only this repository's own checkout: a source archive unpacked inside another git
    // repository (vendored) must not print that repository's commit.
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    let here = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    if top.join("crates/ociup-cli").canonicalize().ok()? != here.canonicalize().ok()? {
        return None;
    }
    let git_dir = PathBuf::from(git(&["rev-parse", "--absolute-git-dir"])?);
    watch(&git_dir.join("HEAD"));
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        let common = absolute(Path::new(&common));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch(&common.join(branch));
        }
        watch(&common.join("packed-refs"));
    }
    git(&["rev-parse", "--short", "HEAD"])
}

/// A path git printed relative to the crate directory, where build scripts run.
fn absolute(p: &Path) -> PathBuf {
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) if p.is_relative() => Path::new(&dir).join(p),
        _ => p.to_owned(),
    }
}

/// Reruns the build script when `path` changes; a path that does not exist is not named, as
/// Cargo would then rerun the script on every build.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// One line of git's output, or `None` when git is missing, fails or this is no checkout.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!line.is_empty()).then_some(line)
}

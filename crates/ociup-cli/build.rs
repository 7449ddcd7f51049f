//! Names the commit in `ociup --version` when the crate is built from ociup's git checkout
//! (`0.1.0 (1a2b3c4)`); from a source archive, or without git, the version is the package's
//! alone.

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

/// The short hash of HEAD of the repository this crate sits in (`crates/ociup-cli` under its
/// root), with the files whose change means another commit registered for a rerun first, so a
/// failed lookup is retried at the next commit instead of sticking.
fn commit() -> Option<String> {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?).join("../..");
    let dot_git = root.join(".git");
    // Only ociup's own checkout: a source archive unpacked inside another git repository
    // (vendored) must not print that repository's commit.
    if !dot_git.exists() {
        return None;
    }
    watch_refs(&dot_git);
    let out = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "--short", "HEAD"])
        // Run from a git hook, these would name another repository or index.
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .ok()?;
    let hash = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !hash.is_empty()).then_some(hash)
}

/// Reruns the build script when HEAD moves: `HEAD`, the branch it names and `packed-refs`. A
/// worktree's `.git` is a file naming its git directory, whose `commondir` holds the refs.
fn watch_refs(dot_git: &Path) {
    let git_dir = match std::fs::read_to_string(dot_git) {
        Ok(text) => match text.trim().strip_prefix("gitdir:") {
            Some(p) => dot_git.parent().unwrap_or(Path::new(".")).join(p.trim()),
            None => return,
        },
        Err(_) => dot_git.to_owned(),
    };
    let common = std::fs::read_to_string(git_dir.join("commondir"))
        .map(|c| git_dir.join(c.trim()))
        .unwrap_or_else(|_| git_dir.clone());
    watch(&git_dir.join("HEAD"));
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD"))
        && let Some(branch) = head.trim().strip_prefix("ref:")
    {
        watch(&common.join(branch.trim()));
    }
    watch(&common.join("packed-refs"));
}

/// Reruns the build script when `path` changes; a path that does not exist is not named, as
/// Cargo would then rerun the script on every build.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

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
    link_position_dependent();
}

/// Links the `ociup` executable at a fixed address (not as a position-independent executable)
/// on Linux, unless `OCIUP_PIE=1` is set at build time.
///
/// Why: as a PIE the binary carries about 45,000 relative relocations that the dynamic loader
/// applies at every start, writing to (so copying) some 190 pages of relocated read-only data
/// (`.data.rel.ro`, the GOT). Linked at a fixed address it has none: `ociup --version` takes
/// about 200 fewer page faults and 1 to 1.6 ms less CPU (2026-11-29, medians of 100-200 runs on
/// 2 loaded cores: 3.98 against 4.95-5.61 ms, 326 against 507-527 faults), a rebase about as
/// much: a few percent of a `rebase` against a nearby registry.
///
/// The cost: the executable's own code and data are no longer at a random address (the
/// libraries, stack, heap and every other mapping still are), which makes a memory-safety bug,
/// were one found (ociup's crates forbid `unsafe`, but dependencies have some, and zstd is C),
/// easier to exploit. A build for a long-running `ociup serve` exposed to others, or one for a
/// distribution whose policy requires PIE, sets `OCIUP_PIE=1`.
///
/// `-no-pie` reaches only this package's binaries (not build scripts or proc-macros, which must
/// stay position-independent); the code is compiled position-independent as before, and the
/// linker resolves its relocations at link time.
fn link_position_dependent() {
    println!("cargo:rerun-if-env-changed=OCIUP_PIE");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let keep_pie = std::env::var_os("OCIUP_PIE").is_some_and(|v| v == "1");
    if linux && !keep_pie {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
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

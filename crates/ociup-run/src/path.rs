//! Paths of a layer resolved inside the root, never outside it.
//!
//! A name from a tar is first cleaned lexically as if the root were `/` (`.` dropped, `..` never
//! climbs above the root, a leading `/` means the root). The directories on the way to it are
//! then walked one component at a time with `symlink_metadata`: a symlink met on the way is
//! followed by reading its target and interpreting it inside the root (an absolute target
//! starts again at the root, `..` stops at the root), as `securejoin` does for umoci and
//! containerd. The last component is never followed.
//!
//! The walk is race-free because nothing but the unpacker writes in the tree while it runs: it
//! unpacks into a fresh directory created mode 0700 beside the target, renamed into place at
//! the end.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// How many symlinks one walk follows before it gives up (the kernel's limit is 40).
const MAX_LINKS: usize = 40;

/// The components of `name` cleaned as if rooted at `/`; empty for the root itself.
pub(crate) fn clean(name: &[u8]) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(OsStr::from_bytes(c).to_owned()),
        }
    }
    out
}

/// A relative path from components.
pub(crate) fn join(components: &[OsString]) -> PathBuf {
    components.iter().collect()
}

/// What a walk does with a directory that is missing on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Create it (mode 0755, the caller's owner), reporting it to the callback.
    Create,
    /// Stop: the walk answers `None`.
    Stop,
}

/// Why a walk failed.
#[derive(Debug)]
pub(crate) enum WalkError {
    /// A component on the way is neither a directory nor a symlink.
    NotADirectory(PathBuf),
    /// Too many symlinks.
    Loop,
    /// The file system failed.
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::NotADirectory(p) => {
                write!(f, "/{} is not a directory", p.display())
            }
            WalkError::Loop => write!(f, "more than {MAX_LINKS} symlinks on the way"),
            WalkError::Io(p, e) => write!(f, "/{}: {e}", p.display()),
        }
    }
}

/// Resolves the directory `components` inside `root` (see the module doc) and answers its path
/// relative to `root`, made only of real directories. `created` is told of each directory
/// made on the way (relative path).
pub(crate) fn resolve_dir(
    root: &Path,
    components: &[OsString],
    missing: Missing,
    created: &mut dyn FnMut(&Path),
) -> Result<Option<Vec<OsString>>, WalkError> {
    resolve_dir_known(root, components, missing, created, None)
}

/// [`resolve_dir`], with `known`: relative paths already found to be real directories (not
/// symlinks) in this walk or earlier ones, which are not looked at again; those found or made
/// now are added. The caller must forget every path at or under one it removes.
pub(crate) fn resolve_dir_known(
    root: &Path,
    components: &[OsString],
    missing: Missing,
    created: &mut dyn FnMut(&Path),
    mut known: Option<&mut HashSet<PathBuf>>,
) -> Result<Option<Vec<OsString>>, WalkError> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = components.iter().cloned().collect();
    let mut links = 0usize;
    while let Some(c) = pending.pop_front() {
        if c == "." || c.is_empty() {
            continue;
        }
        if c == ".." {
            resolved.pop();
            continue;
        }
        resolved.push(c);
        let rel = join(&resolved);
        if known.as_ref().is_some_and(|k| k.contains(&rel)) {
            continue;
        }
        let path = root.join(&rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                if let Some(k) = known.as_mut() {
                    k.insert(rel);
                }
            }
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(WalkError::Loop);
                }
                let target = std::fs::read_link(&path).map_err(|e| WalkError::Io(rel, e))?;
                resolved.pop();
                let bytes = target.as_os_str().as_bytes();
                if bytes.starts_with(b"/") {
                    resolved.clear();
                }
                for part in bytes.split(|b| *b == b'/').rev() {
                    pending.push_front(OsStr::from_bytes(part).to_owned());
                }
            }
            Ok(_) => return Err(WalkError::NotADirectory(rel)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match missing {
                Missing::Stop => return Ok(None),
                Missing::Create => {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .map_err(|e| WalkError::Io(rel.clone(), e))?;
                    created(&rel);
                    if let Some(k) = known.as_mut() {
                        k.insert(rel);
                    }
                }
            },
            Err(e) => return Err(WalkError::Io(rel, e)),
        }
    }
    Ok(Some(resolved))
}

/// Where `name` is inside `root`, following symlinks inside it (the last component too), as a
/// path relative to `root`; `None` when nothing is there.
///
/// A symlink's target is joined, as it is, to the directory holding the link and walked one
/// component at a time: `etc/link -> ../nowhere` is `nowhere` (not `etc/nowhere`), and `..`
/// never climbs above the root.
pub(crate) fn resolve_in_root(root: &Path, name: &[u8]) -> Result<Option<PathBuf>, WalkError> {
    let mut components = clean(name);
    for _ in 0..MAX_LINKS {
        // Trailing `.`, `..` and empty parts (from a link's target) are walked as directories.
        let last = match components.last() {
            None => return Ok(Some(PathBuf::new())),
            Some(c) if c.is_empty() || c == "." || c == ".." => None,
            Some(_) => components.pop(),
        };
        let Some(dir) = resolve_dir(root, &components, Missing::Stop, &mut |_| {})? else {
            return Ok(None);
        };
        let Some(last) = last else {
            return Ok(Some(join(&dir)));
        };
        let rel = join(&dir).join(&last);
        match std::fs::symlink_metadata(root.join(&rel)) {
            Ok(m) if m.file_type().is_symlink() => {
                let target =
                    std::fs::read_link(root.join(&rel)).map_err(|e| WalkError::Io(rel, e))?;
                let bytes = target.as_os_str().as_bytes();
                components = if bytes.starts_with(b"/") {
                    Vec::new()
                } else {
                    dir
                };
                // Raw: `..` is resolved by the walk against real directories, never dropped.
                components.extend(
                    bytes
                        .split(|b| *b == b'/')
                        .filter(|c| !c.is_empty() && *c != b".")
                        .map(|c| OsStr::from_bytes(c).to_owned()),
                );
            }
            Ok(_) => return Ok(Some(rel)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WalkError::Io(rel, e)),
        }
    }
    Err(WalkError::Loop)
}

/// The contents of the regular file `name` inside `root` (symlinks followed inside it), at most
/// `limit` bytes; `None` when it is missing or not a regular file.
pub(crate) fn read_in_root(root: &Path, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let rel = match resolve_in_root(root, name.as_bytes()) {
        Ok(Some(rel)) => rel,
        Ok(None) => return Ok(None),
        Err(e) => return Err(io::Error::other(e.to_string())),
    };
    let full = root.join(rel);
    match std::fs::symlink_metadata(&full) {
        Ok(m) if m.is_file() => {}
        _ => return Ok(None),
    }
    let mut out = Vec::new();
    std::fs::File::open(&full)?
        .take(limit)
        .read_to_end(&mut out)?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(c: &[OsString]) -> Vec<&str> {
        c.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn clean_never_climbs_above_the_root() {
        assert_eq!(names(&clean(b"../../etc/passwd")), ["etc", "passwd"]);
        assert_eq!(names(&clean(b"/abs/./x/")), ["abs", "x"]);
        assert_eq!(names(&clean(b"a/../../b")), ["b"]);
        assert!(clean(b"./").is_empty());
        assert!(clean(b"..").is_empty());
    }

    #[test]
    fn symlinks_on_the_way_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        std::os::unix::fs::symlink("../../../../real", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        std::fs::write(root.join("file"), b"x").unwrap();
        let mut made = Vec::new();
        let mut note = |p: &Path| made.push(p.to_owned());
        let r = |c: &str, m, note: &mut dyn FnMut(&Path)| {
            resolve_dir(&root, &clean(c.as_bytes()), m, note)
        };
        // `up -> /` is the root, not the host's /.
        let got = r("up/etc", Missing::Create, &mut note).unwrap().unwrap();
        assert_eq!(names(&got), ["etc"]);
        assert!(root.join("etc").is_dir());
        let got = r("rel/sub", Missing::Stop, &mut note).unwrap().unwrap();
        assert_eq!(names(&got), ["real", "sub"]);
        assert!(
            r("nothing/here", Missing::Stop, &mut note)
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            r("file/x", Missing::Create, &mut note),
            Err(WalkError::NotADirectory(_))
        ));
        assert!(matches!(
            r("loop/x", Missing::Create, &mut note),
            Err(WalkError::Loop)
        ));
        assert_eq!(made, [PathBuf::from("etc")]);
    }

    #[test]
    fn relative_links_with_dotdot_resolve_against_the_links_directory() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/share/zoneinfo/Etc")).unwrap();
        std::fs::write(root.join("usr/share/zoneinfo/Etc/UTC"), b"TZif").unwrap();
        std::fs::write(root.join("real-passwd"), b"root:x:0:0::/:/bin/sh\n").unwrap();
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(target, root.join(at)).unwrap();
        };
        link("../nowhere", "etc/link");
        link("../usr/share/zoneinfo/Etc/UTC", "etc/localtime");
        link("../real-passwd", "etc/passwd");
        link("../../../../../../etc", "etc/up");
        link("..", "etc/parent");
        let r = |n: &str| resolve_in_root(&root, n.as_bytes()).unwrap();
        // `../nowhere` from /etc is /nowhere: missing, not /etc/nowhere.
        assert_eq!(r("/etc/link"), None);
        std::fs::write(root.join("etc/nowhere"), b"decoy").unwrap();
        assert_eq!(r("/etc/link"), None);
        std::fs::write(root.join("nowhere"), b"x").unwrap();
        assert_eq!(r("/etc/link"), Some(PathBuf::from("nowhere")));
        assert_eq!(
            r("/etc/localtime"),
            Some(PathBuf::from("usr/share/zoneinfo/Etc/UTC"))
        );
        // `..` stops at the root.
        assert_eq!(r("/etc/up"), Some(PathBuf::from("etc")));
        assert_eq!(r("/etc/parent"), Some(PathBuf::new()));
        assert_eq!(r("/etc/parent/etc/link"), Some(PathBuf::from("nowhere")));
        assert_eq!(
            read_in_root(&root, "/etc/passwd", 100).unwrap().unwrap(),
            b"root:x:0:0::/:/bin/sh\n"
        );
    }
}

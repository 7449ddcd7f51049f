//! What the service may read and write: repository patterns.
//!
//! A pattern names repositories as `registry/repository` (`localhost:5000/base/python`,
//! `docker.io/library/python` for Docker Hub) or layouts as `oci:/absolute/dir`, without tag or
//! digest. `*` matches any characters but `/`, `**` any characters at all:
//! `localhost:5000/base/*` allows `localhost:5000/base/python` but not
//! `localhost:5000/base/team/python`; `localhost:5000/**` allows the whole registry.
//! What may be written may also be read (a target is read back); the catalog must be writable.

use std::path::{Component, Path, PathBuf};

use ociup_core::store::ManifestRef;
use ociup_registry::{AnyStore, Opener, StoreRef, Stores};

/// Read and write patterns.
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    read: Vec<String>,
    write: Vec<String>,
}

/// Reading or writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Pulling (a base).
    Read,
    /// Pushing (a target, the catalog).
    Write,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// A reference outside the allowlist, or one that names no repository.
#[derive(Debug, thiserror::Error)]
#[error("{reference}: {reason}")]
pub struct Refused {
    /// The reference.
    pub reference: String,
    /// Why.
    pub reason: String,
}

/// The name a pattern is matched against: `registry/repository`, or `oci:` and the layout's
/// directory (absolute only: a relative one would depend on the service's working directory).
///
/// # Errors
/// A reference that does not parse, or a relative layout.
pub fn repository_of(reference: &str) -> Result<String, Refused> {
    let refuse = |reason: String| Refused {
        reference: reference.to_owned(),
        reason,
    };
    match StoreRef::parse(reference).map_err(|e| refuse(e.to_string()))? {
        StoreRef::Registry(r) => Ok(format!("{}/{}", r.registry(), r.repository())),
        StoreRef::Layout(l) if l.dir.is_absolute() => {
            let dir = resolved(&l.dir).map_err(refuse)?;
            Ok(format!("oci:{}", dir.display()))
        }
        StoreRef::Layout(_) => Err(refuse(
            "a layout the service reaches must be named by an absolute path".into(),
        )),
    }
}

/// `dir` as the file system reaches it: refused with a `..` component (it could climb out of an
/// allowed directory), and its longest existing prefix made canonical (symbolic links followed,
/// so a link inside an allowed directory that points outside it is matched where it points).
fn resolved(dir: &Path) -> Result<PathBuf, String> {
    if dir.components().any(|c| c == Component::ParentDir) {
        return Err("a layout path may not contain `..`".into());
    }
    let mut existing = dir.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut real) = existing.canonicalize() {
            real.extend(rest.iter().rev());
            return Ok(real);
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = parent.to_path_buf();
            }
            _ => return Ok(dir.components().collect()),
        }
    }
}

/// An `oci:` pattern with its literal leading directories (those before the first `*`) resolved
/// as layouts are, so that both sides are compared as the file system reaches them.
fn resolved_pattern(pattern: &str) -> Result<String, String> {
    let Some(dir) = pattern.strip_prefix("oci:") else {
        return Ok(pattern.to_owned());
    };
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err("an oci: pattern must be an absolute path".into());
    }
    let literal: PathBuf = path
        .components()
        .take_while(|c| !c.as_os_str().to_string_lossy().contains('*'))
        .collect();
    let globbed: PathBuf = path
        .components()
        .skip(literal.components().count())
        .collect();
    if globbed.components().any(|c| c == Component::ParentDir) {
        return Err("an oci: pattern may not contain `..` after a `*`".into());
    }
    // A `..` in the leading directories is taken only where they exist: the file system then
    // says exactly where it leads. Anywhere else it is refused.
    let mut out = match literal.canonicalize() {
        Ok(real) => real,
        Err(_) => resolved(&literal).map_err(|_| {
            "an oci: pattern may not contain `..` (but in directories that exist)".to_owned()
        })?,
    };
    if !globbed.as_os_str().is_empty() {
        out.push(globbed);
    }
    Ok(format!("oci:{}", out.display()))
}

/// Whether `name` matches `pattern` (`*` within one path segment, `**` across them).
pub fn matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p {
            [] => n.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=n.len()).any(|i| go(rest, &n[i..])),
            [b'*', rest @ ..] => {
                let seg = n.iter().position(|&c| c == b'/').unwrap_or(n.len());
                (0..=seg).any(|i| go(rest, &n[i..]))
            }
            [c, rest @ ..] => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

impl Allowlist {
    /// An allowlist of these patterns. With no pattern at all, nothing is allowed.
    ///
    /// # Errors
    /// A pattern with a tag or digest, or empty; an `oci:` pattern that is relative or has a
    /// `..` component.
    pub fn new(read: Vec<String>, write: Vec<String>) -> Result<Allowlist, Refused> {
        let resolve = |ps: Vec<String>| -> Result<Vec<String>, Refused> {
            ps.into_iter()
                .map(|p| {
                    resolved_pattern(&p).map_err(|reason| Refused {
                        reference: p.clone(),
                        reason,
                    })
                })
                .collect()
        };
        for p in read.iter().chain(&write) {
            let bare = p.strip_prefix("oci:").unwrap_or(p);
            let tagged = !p.starts_with("oci:")
                && (bare.contains('@') || bare.rsplit('/').next().is_some_and(|s| s.contains(':')));
            if p.is_empty() || tagged {
                return Err(Refused {
                    reference: p.clone(),
                    reason: "an allowlist pattern names repositories (registry/repo, * and **), \
                             without tag or digest"
                        .into(),
                });
            }
        }
        Ok(Allowlist {
            read: resolve(read)?,
            write: resolve(write)?,
        })
    }

    /// Checks that the service may read (or write) what `reference` names.
    ///
    /// # Errors
    /// It may not, or the reference names no repository.
    pub fn check(&self, reference: &str, access: Access) -> Result<(), Refused> {
        let name = repository_of(reference)?;
        let patterns: Vec<&String> = match access {
            Access::Read => self.read.iter().chain(&self.write).collect(),
            Access::Write => self.write.iter().collect(),
        };
        if patterns.iter().any(|p| matches(p, &name)) {
            Ok(())
        } else {
            Err(Refused {
                reference: reference.to_owned(),
                reason: format!(
                    "the service may not {} {name} (outside --allow-{})",
                    access.as_str(),
                    access.as_str()
                ),
            })
        }
    }
}

/// Opens stores as [`Opener`] does, but only those the allowlist lets it: a store opened for
/// writing must match a write pattern, one opened for reading a read or write pattern. This is
/// the floor under the checks the handlers make first (which answer a clearer error).
#[derive(Clone, Debug)]
pub struct Guarded {
    opener: std::sync::Arc<Opener>,
    allow: std::sync::Arc<Allowlist>,
}

impl Guarded {
    /// `opener`, bounded by `allow`.
    pub fn new(opener: Opener, allow: Allowlist) -> Guarded {
        Guarded {
            opener: std::sync::Arc::new(opener),
            allow: std::sync::Arc::new(allow),
        }
    }
}

impl Stores for Guarded {
    type Store = AnyStore;

    fn open(
        &self,
        reference: &str,
        write: bool,
    ) -> ociup_core::Result<(AnyStore, Option<ManifestRef>)> {
        let access = if write { Access::Write } else { Access::Read };
        self.allow
            .check(reference, access)
            .map_err(|e| ociup_core::Error::Backend(Box::new(e)))?;
        self.opener.open(reference, write)
    }

    fn pinned(&self, target: &str, digest: &ociup_core::Digest) -> ociup_core::Result<String> {
        Stores::pinned(&*self.opener, target, digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_within_and_across_segments() {
        assert!(matches(
            "localhost:5000/base/*",
            "localhost:5000/base/python"
        ));
        assert!(!matches(
            "localhost:5000/base/*",
            "localhost:5000/base/team/python"
        ));
        assert!(!matches(
            "localhost:5000/base/*",
            "localhost:5000/basement/python"
        ));
        assert!(matches(
            "localhost:5000/**",
            "localhost:5000/base/team/python"
        ));
        assert!(matches("localhost:5000/app", "localhost:5000/app"));
        assert!(!matches("localhost:5000/app", "localhost:5000/app2"));
        assert!(matches("oci:/srv/images/*", "oci:/srv/images/app"));
    }

    #[test]
    fn write_implies_read_but_not_the_reverse() {
        let a = Allowlist::new(
            vec!["localhost:5000/base/*".into()],
            vec!["localhost:5000/apps/*".into()],
        )
        .expect("allowlist");
        assert!(
            a.check("localhost:5000/base/python:3.12", Access::Read)
                .is_ok()
        );
        assert!(
            a.check("localhost:5000/base/python:3.12", Access::Write)
                .is_err()
        );
        assert!(
            a.check("docker://localhost:5000/apps/x", Access::Read)
                .is_ok()
        );
        assert!(a.check("localhost:5000/apps/x", Access::Write).is_ok());
        assert!(a.check("localhost:5000/other/x", Access::Read).is_err());
        // Docker Hub names are normalized before matching.
        let hub = Allowlist::new(vec!["docker.io/library/*".into()], vec![]).expect("allowlist");
        assert!(hub.check("python:3.12", Access::Read).is_ok());
        assert!(a.check("oci:relative/dir", Access::Read).is_err());
        assert!(Allowlist::new(vec!["localhost:5000/base:v1".into()], vec![]).is_err());
    }

    #[test]
    fn layouts_cannot_climb_out_of_an_allowed_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let imgs = root.path().join("imgs");
        std::fs::create_dir_all(imgs.join("x")).expect("mkdir");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, imgs.join("link")).expect("symlink");
        let a =
            Allowlist::new(vec![], vec![format!("oci:{}/**", imgs.display())]).expect("allowlist");
        let at = |rel: &str| format!("oci:{}/{rel}", imgs.display());
        // Inside: allowed, existing or not yet.
        assert!(a.check(&at("app"), Access::Write).is_ok());
        assert!(a.check(&at("x/app"), Access::Write).is_ok());
        // `..` anywhere is refused, even when it would land back inside.
        for rel in ["..", "../../escaped", "x/../../y", "x/../app"] {
            let e = a.check(&at(rel), Access::Write).expect_err(rel);
            assert!(e.reason.contains(".."), "{rel}: {}", e.reason);
        }
        // A link inside the allowed directory that points outside it is matched where it points.
        assert!(a.check(&at("link"), Access::Write).is_err());
        assert!(a.check(&at("link/app"), Access::Write).is_err());
        // Patterns: no `..` but in directories that exist (resolved), absolute only.
        assert!(Allowlist::new(vec![], vec![format!("oci:{}/**/../x", imgs.display())]).is_err());
        assert!(Allowlist::new(vec![], vec![format!("oci:{}/no/../x", imgs.display())]).is_err());
        let up = Allowlist::new(vec![], vec![format!("oci:{}/x/../*", imgs.display())])
            .expect("allowlist");
        assert!(up.check(&at("app"), Access::Write).is_ok());
        assert!(
            up.check(&format!("oci:{}/app", root.path().display()), Access::Write)
                .is_err()
        );
        assert!(Allowlist::new(vec!["oci:rel/**".into()], vec![]).is_err());
        // A pattern through a link is matched where the link points.
        let via = Allowlist::new(vec![], vec![format!("oci:{}/link/*", imgs.display())])
            .expect("allowlist");
        assert!(
            via.check(&format!("oci:{}/app", outside.display()), Access::Write)
                .is_ok()
        );
    }
}

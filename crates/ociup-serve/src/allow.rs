//! What the service may read and write: repository patterns.
//!
//! A pattern names repositories as `registry/repository` (`localhost:5000/base/python`,
//! `docker.io/library/python` for Docker Hub) or layouts as `oci:/absolute/dir`, without tag or
//! digest. `*` matches any characters but `/`, `**` any characters at all:
//! `localhost:5000/base/*` allows `localhost:5000/base/python` but not
//! `localhost:5000/base/team/python`; `localhost:5000/**` allows the whole registry.
//! What may be written may also be read (a target is read back); the catalog must be writable.

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
        StoreRef::Layout(l) if l.dir.is_absolute() => Ok(format!("oci:{}", l.dir.display())),
        StoreRef::Layout(_) => Err(refuse(
            "a layout the service reaches must be named by an absolute path".into(),
        )),
    }
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
    /// A pattern with a tag or digest, or empty.
    pub fn new(read: Vec<String>, write: Vec<String>) -> Result<Allowlist, Refused> {
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
        Ok(Allowlist { read, write })
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
}

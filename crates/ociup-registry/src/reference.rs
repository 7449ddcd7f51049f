//! Image references as Docker writes them: `[registry[:port]/]name[:tag][@digest]`, with Docker
//! Hub as the default registry and `library/` for its one-component names.

use std::fmt;

use ociup_core::Digest;

use crate::error::{Error, Result};

/// The registry names that mean Docker Hub.
const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's API answers.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference. A first component with a `.` or `:`, `localhost`, or an IPv6 literal
    /// in brackets is a registry; otherwise the registry is Docker Hub. Without tag or digest,
    /// the tag is `latest`.
    ///
    /// # Errors
    /// [`Error::InvalidReference`] naming what is wrong.
    pub fn parse(input: &str) -> Result<Reference> {
        let bad = |reason: &str| Error::InvalidReference {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?),
            ),
            None => (input, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                (first.to_owned(), path)
            }
            _ => (DOCKER_HUB.to_owned(), rest),
        };
        // The tag is after the last ':' of the path (the registry's port is already split off).
        let (name, tag) = match path.rsplit_once(':') {
            Some((n, t)) => (n, Some(t.to_owned())),
            None => (path, None),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | DOCKER_HUB_API => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        validate_registry(&registry).map_err(|r| bad(&r))?;
        let repository = if registry == DOCKER_HUB && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_owned()
        };
        validate_repository(&repository).map_err(|r| bad(&r))?;
        if let Some(t) = &tag {
            ociup_core::layout::validate_tag(t).map_err(|e| bad(&e.to_string()))?;
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository pinned to a digest (keeping the tag for display).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The registry as written (`docker.io` for Docker Hub), with its port.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Where the registry's API answers (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository (`library/alpine`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What the reference names in its repository: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> ociup_core::store::ManifestRef {
        match (&self.digest, &self.tag) {
            (Some(d), _) => ociup_core::store::ManifestRef::Digest(d.clone()),
            (None, Some(t)) => ociup_core::store::ManifestRef::Tag(t.clone()),
            (None, None) => ociup_core::store::ManifestRef::Tag("latest".into()),
        }
    }

    /// Whether the registry is on this machine (`localhost`, 127.0.0.0/8, `[::1]`), where plain
    /// HTTP is allowed without asking.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

/// Whether `host[:port]` names this machine.
pub(crate) fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

fn validate_registry(r: &str) -> std::result::Result<(), String> {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in the registry".to_owned())?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
        (None, after.strip_prefix(':'))
    } else {
        match r.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(r), None),
        }
    };
    if let Some(h) = host {
        let ok = !h.is_empty()
            && h.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(format!("{h:?} is not a valid registry host"));
        }
    }
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(format!("{p:?} is not a valid port"));
    }
    Ok(())
}

/// Repository names: lowercase components of `[a-z0-9]` separated by `.`, `_`, `__` or dashes,
/// joined with `/`, at most 255 characters (distribution spec).
fn validate_repository(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty repository name".into());
    }
    if name.len() > 255 {
        return Err("repository name longer than 255 characters".into());
    }
    for component in name.split('/') {
        let b = component.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let ok = !b.is_empty()
            && alnum(b[0])
            && alnum(b[b.len() - 1])
            && b.iter()
                .all(|&c| alnum(c) || matches!(c, b'.' | b'_' | b'-'))
            && !component.contains("..")
            && !component.contains("___")
            && !component.contains("._")
            && !component.contains("_.");
        if !ok {
            return Err(format!(
                "{component:?} is not a valid repository component (lowercase letters, digits, \
                 and . _ __ - between them)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_defaults() {
        let a = r("alpine");
        assert_eq!(
            (a.registry(), a.repository(), a.tag()),
            ("docker.io", "library/alpine", Some("latest"))
        );
        assert_eq!(a.api_host(), "registry-1.docker.io");
        assert_eq!(r("index.docker.io/user/app:1").repository(), "user/app");
        assert_eq!(r("user/app:1.2").to_string(), "docker.io/user/app:1.2");
    }

    #[test]
    fn registries_ports_ipv6_localhost_digests() {
        let d = format!("sha256:{}", "c".repeat(64));
        let a = r(&format!("localhost:5000/ns/app:v1@{d}"));
        assert_eq!(
            (a.registry(), a.repository(), a.tag()),
            ("localhost:5000", "ns/app", Some("v1"))
        );
        assert_eq!(a.digest().unwrap().to_string(), d);
        assert!(a.is_loopback());
        let b = r("[::1]:5000/app");
        assert_eq!((b.registry(), b.repository()), ("[::1]:5000", "app"));
        assert!(b.is_loopback());
        let c = r(&format!("ghcr.io/o/p@{d}"));
        assert_eq!(c.tag(), None);
        assert!(!c.is_loopback());
        assert!(r("127.0.0.1:5000/x").is_loopback());
        assert_eq!(r("localhost/x").registry(), "localhost");
    }

    #[test]
    fn invalid_names_are_named() {
        for (input, want) in [
            ("", "empty"),
            ("Upper/app", "not a valid repository component"),
            ("reg.io/app:bad/tag", "a tag is"),
            ("reg.io:99999/app", "not a valid port"),
            ("[zz]:1/app", "not an IPv6 address"),
            ("reg.io/app@sha256:xyz", "invalid digest"),
            ("reg.io/a..b", "not a valid repository component"),
            ("reg.io/app:-x", "tag"),
        ] {
            let err = Reference::parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }
}

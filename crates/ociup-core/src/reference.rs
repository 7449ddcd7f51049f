//! Store references in the forms skopeo uses. Layouts: `oci:<dir>[:<tag>|@<digest>]`. Registry
//! references (`docker://...`) arrive with `ociup-registry`.

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::validate_tag;
use crate::store::ManifestRef;

/// An image in an OCI layout directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutRef {
    /// The layout directory.
    pub dir: PathBuf,
    /// The image in it; `None` means the layout's only image (for reading) or untagged (for
    /// writing).
    pub image: Option<ManifestRef>,
}

impl LayoutRef {
    /// Parses `oci:<dir>[:<tag>|@<digest>]`. The last `@` or `:` splits off the image, so a
    /// directory name may itself hold `:` only when an image is named after it.
    ///
    /// # Errors
    /// [`Error::InvalidReference`] for a missing `oci:` prefix, an empty directory, an invalid tag
    /// or digest.
    pub fn parse(input: &str) -> Result<LayoutRef> {
        let bad = |reason: &str| Error::InvalidReference {
            input: input.into(),
            reason: reason.into(),
        };
        let rest = input
            .strip_prefix("oci:")
            .ok_or_else(|| bad("expected oci:<dir>[:<tag>|@<digest>]"))?;
        let (dir, image) = if let Some((dir, digest)) = rest.rsplit_once('@') {
            let d = digest.parse::<Digest>().map_err(|e| bad(&e.to_string()))?;
            (dir, Some(ManifestRef::Digest(d)))
        } else if let Some((dir, tag)) = rest.rsplit_once(':') {
            validate_tag(tag).map_err(|e| bad(&e.to_string()))?;
            (dir, Some(ManifestRef::Tag(tag.to_owned())))
        } else {
            (rest, None)
        };
        if dir.is_empty() {
            return Err(bad("the layout directory is empty"));
        }
        Ok(LayoutRef {
            dir: PathBuf::from(dir),
            image,
        })
    }

    /// The tag, if the image is named by one.
    pub fn tag(&self) -> Option<&str> {
        match &self.image {
            Some(ManifestRef::Tag(t)) => Some(t),
            _ => None,
        }
    }
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci:{}", self.dir.display())?;
        match &self.image {
            Some(r) => write!(f, "{r}"),
            None => Ok(()),
        }
    }
}

/// The value ociup records in `org.opencontainers.image.base.name` for a base named `typed`.
///
/// The image-spec asks for an image reference there, so a registry base is written as a plain,
/// fully qualified distribution reference, as Docker normalizes it: no `docker://` prefix, the
/// registry named (`docker.io` for Docker Hub, `library/` for its one-component names), and
/// `:latest` when neither tag nor digest was given. `alpine`, `docker://alpine` and
/// `docker.io/library/alpine:latest` all give `docker.io/library/alpine:latest`.
///
/// A layout base has no distribution reference: its `oci:<dir>[:<tag>|@<digest>]` reference is
/// written as given (no tool can resolve it but one that reads the same directory, and no
/// distribution-reference parser mistakes it for one: `oci` is no registry and `:<dir>` no port).
pub fn base_name(typed: &str) -> String {
    if typed.starts_with("oci:") {
        return typed.to_owned();
    }
    let plain = typed.strip_prefix("docker://").unwrap_or(typed);
    let (rest, digest) = match plain.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (plain, None),
    };
    let (registry, path) = match rest.split_once('/') {
        Some((first, path))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.starts_with('[') =>
        {
            (first, path)
        }
        _ => ("docker.io", rest),
    };
    let registry = match registry {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        r => r,
    };
    let mut out = format!("{registry}/");
    if registry == "docker.io" && !path.contains('/') {
        out.push_str("library/");
    }
    out.push_str(path);
    if digest.is_none()
        && !path
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
    {
        out.push_str(":latest");
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    out
}

/// A platform as `os/architecture[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSpec {
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub architecture: String,
    /// `v8`.
    pub variant: Option<String>,
}

impl std::str::FromStr for PlatformSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = (2..=3).contains(&parts.len()) && parts.iter().all(|p| !p.is_empty());
        if !ok {
            return Err(Error::InvalidReference {
                input: s.into(),
                reason: "a platform is os/architecture[/variant], e.g. linux/arm64/v8".into(),
            });
        }
        Ok(PlatformSpec {
            os: parts[0].into(),
            architecture: parts[1].into(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layout_references() {
        let r = LayoutRef::parse("oci:fixtures/base:v1").unwrap();
        assert_eq!(r.dir, PathBuf::from("fixtures/base"));
        assert_eq!(r.tag(), Some("v1"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = LayoutRef::parse(&format!("oci:/tmp/x@{d}")).unwrap();
        assert_eq!(r.image, Some(ManifestRef::Digest(d.parse().unwrap())));
        assert_eq!(LayoutRef::parse("oci:dir").unwrap().image, None);
        assert_eq!(r.to_string(), format!("oci:/tmp/x@{d}"));
        for bad in ["dir:tag", "oci:", "oci::v1", "oci:d:-x", "oci:d@sha256:12"] {
            assert!(LayoutRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_names_are_plain_distribution_references() {
        let d = format!("sha256:{}", "a".repeat(64));
        for (typed, written) in [
            (
                "docker://127.0.0.1:5000/lib/base:2",
                "127.0.0.1:5000/lib/base:2",
            ),
            ("127.0.0.1:5000/lib/base:2", "127.0.0.1:5000/lib/base:2"),
            ("docker://alpine", "docker.io/library/alpine:latest"),
            ("python:3.12", "docker.io/library/python:3.12"),
            ("index.docker.io/user/app", "docker.io/user/app:latest"),
            ("localhost/x:1", "localhost/x:1"),
            ("docker://[::1]:5000/a/b", "[::1]:5000/a/b:latest"),
            ("oci:fixtures/base:v1", "oci:fixtures/base:v1"),
        ] {
            assert_eq!(base_name(typed), written, "{typed}");
        }
        assert_eq!(
            base_name(&format!("docker://reg.example/a:1@{d}")),
            format!("reg.example/a:1@{d}")
        );
        assert_eq!(
            base_name(&format!("reg.example:443/a@{d}")),
            format!("reg.example:443/a@{d}")
        );
    }

    #[test]
    fn parses_platforms() {
        let p: PlatformSpec = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<PlatformSpec>().is_err());
    }
}

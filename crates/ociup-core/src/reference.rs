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
    fn parses_platforms() {
        let p: PlatformSpec = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<PlatformSpec>().is_err());
    }
}

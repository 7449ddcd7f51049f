//! [`Stores`] over OCI layouts alone: managed images with no registry at all (air-gapped use,
//! tests, examples). `ociup-registry`'s `Opener` opens registries too.

use std::path::PathBuf;

use super::manager::Stores;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::OciLayout;
use crate::store::ManifestRef;

/// Opens `oci:<dir>[:<tag>|@<digest>]` references as [`OciLayout`]s; anything else is refused.
#[derive(Clone, Copy, Debug, Default)]
pub struct Layouts;

/// The directory and image of an `oci:` reference.
fn parse(reference: &str) -> Result<(PathBuf, Option<ManifestRef>)> {
    let bad = |reason: &str| Error::InvalidReference {
        input: reference.into(),
        reason: reason.into(),
    };
    let rest = reference
        .strip_prefix("oci:")
        .ok_or_else(|| bad("only OCI layouts (oci:<dir>) are opened here"))?;
    if let Some((dir, digest)) = rest.rsplit_once('@') {
        return Ok((
            PathBuf::from(dir),
            Some(ManifestRef::Digest(digest.parse()?)),
        ));
    }
    // A tag follows the last ':' when what follows holds no '/' (a path may hold ':').
    match rest.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => {
            Ok((PathBuf::from(dir), Some(ManifestRef::Tag(tag.into()))))
        }
        _ if rest.is_empty() => Err(bad("names no directory")),
        _ => Ok((PathBuf::from(rest), None)),
    }
}

impl Stores for Layouts {
    type Store = OciLayout;

    fn open(&self, reference: &str, write: bool) -> Result<(OciLayout, Option<ManifestRef>)> {
        let (dir, image) = parse(reference)?;
        let layout = if write {
            OciLayout::open_or_create(dir)?
        } else {
            OciLayout::open(dir)?
        };
        Ok((layout, image))
    }

    fn pinned(&self, target: &str, digest: &Digest) -> Result<String> {
        let (dir, _) = parse(target)?;
        Ok(format!("oci:{}@{digest}", dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_references_parse() {
        let (dir, image) = parse("oci:/a/b:v1").unwrap();
        assert_eq!(
            (dir, image),
            (PathBuf::from("/a/b"), Some(ManifestRef::Tag("v1".into())))
        );
        let d = Digest::sha256(b"x");
        let (dir, image) = parse(&format!("oci:x@{d}")).unwrap();
        assert_eq!(
            (dir, image),
            (PathBuf::from("x"), Some(ManifestRef::Digest(d)))
        );
        assert_eq!(
            parse("oci:images").unwrap(),
            (PathBuf::from("images"), None)
        );
        assert!(parse("registry.example/a/b:1").is_err());
        assert!(parse("oci:").is_err());
    }
}

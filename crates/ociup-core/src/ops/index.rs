//! Indexes assembled from manifests already in one store: create one, add manifests to one,
//! remove entries from one. Each manifest's platform is read from its config.

use serde_json::{Map, Value};

use super::image_from_document;
use crate::digest::Digest;
use crate::document::{Document, Index, Manifest, RawDocument};
use crate::error::{Error, Result};
use crate::media_type::Family;
use crate::mutate::{self, IndexEntry};
use crate::reference::PlatformSpec;
use crate::store::{ManifestRef, Store, check_document_size};

/// A manifest of a store with the platform its config names.
#[derive(Clone, Debug)]
pub struct IndexMember {
    /// The manifest.
    pub manifest: RawDocument,
    /// Its platform object: `os`, `architecture`, and `variant`, `os.version`, `os.features`
    /// when its config has them.
    pub platform: Map<String, Value>,
}

impl IndexMember {
    /// `os/architecture[/variant]` (with its `os.version` when it has one).
    pub fn name(&self) -> String {
        mutate::platform_name(&self.platform)
    }
}

/// What to remove from an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexRemoval {
    /// The entries of a platform (without variant: of every variant).
    Platform(PlatformSpec),
    /// The entries of a manifest.
    Digest(Digest),
}

/// Reads the manifest `reference` names in `store` and its platform from its config, so no
/// one has to type a platform an image already states.
///
/// # Errors
/// [`Error::InvalidChange`] when the reference names an index; store and parse errors.
pub async fn index_member<S: Store>(store: &S, reference: &ManifestRef) -> Result<IndexMember> {
    let manifest = match super::load_document(store, reference).await? {
        Document::Manifest(m) => m,
        Document::Index(i) => {
            return Err(Error::InvalidChange {
                reason: format!(
                    "{}{reference} is an index ({}), not a manifest: an index lists manifests",
                    store.location(),
                    i.raw().digest()
                ),
            });
        }
    };
    let image = image_from_document(store, Document::Manifest(manifest), None).await?;
    Ok(IndexMember {
        platform: mutate::platform_of_config(&image.config),
        manifest: image.manifest.raw().clone(),
    })
}

fn entries(members: &[IndexMember]) -> Vec<IndexEntry<'_>> {
    members
        .iter()
        .map(|m| IndexEntry {
            manifest: &m.manifest,
            platform: m.platform.clone(),
        })
        .collect()
}

fn family_of(members: &[IndexMember]) -> Result<Family> {
    let family = |m: &IndexMember| Manifest::parse(m.manifest.clone()).map(|m| m.family());
    let Some(first) = members.first() else {
        return Err(Error::InvalidChange {
            reason: "an index needs at least one manifest".into(),
        });
    };
    let f = family(first)?;
    for m in &members[1..] {
        if family(m)? != f {
            return Err(Error::InvalidChange {
                reason: format!(
                    "manifests {} ({}) and {} ({}) are of different families: one index never \
                     mixes Docker and OCI manifests",
                    first.manifest.digest(),
                    first.manifest.media_type(),
                    m.manifest.digest(),
                    m.manifest.media_type()
                ),
            });
        }
    }
    Ok(f)
}

/// Writes a new index over `members` (read with [`index_member`] from the same store), in
/// their order, of their family, tagged `tag`: the manifests and their blobs are in the store
/// already, the index goes in before the tag.
///
/// # Errors
/// [`Error::InvalidChange`] for no member, members of both families or two of one platform;
/// [`Error::InvalidDocument`] for an index larger than ociup reads back; store errors.
pub async fn create_index<S: Store>(
    store: &S,
    members: &[IndexMember],
    tag: Option<&str>,
) -> Result<RawDocument> {
    let family = family_of(members)?;
    let index = mutate::index_of(family, &entries(members), &Default::default())?;
    check_document_size("index", &index)?;
    store.put_manifest(&index, tag).await?;
    Ok(index)
}

/// Writes `index` with `members` added after its entries, tagged `tag`.
///
/// # Errors
/// As [`create_index`], and [`Error::InvalidChange`] for a platform the index has already.
pub async fn add_to_index<S: Store>(
    store: &S,
    index: &Index,
    members: &[IndexMember],
    tag: Option<&str>,
) -> Result<RawDocument> {
    family_of(members)?;
    let new = mutate::add_to_index(index, &entries(members))?;
    check_document_size("index", &new)?;
    store.put_manifest(&new, tag).await?;
    Ok(new)
}

/// Writes `index` without the entries `removal` names, tagged `tag`; returns it with the
/// digests removed. The manifests themselves stay in the store.
///
/// # Errors
/// [`Error::InvalidChange`] when no entry matches or none would remain; store errors.
pub async fn remove_from_index<S: Store>(
    store: &S,
    index: &Index,
    removal: &IndexRemoval,
    tag: Option<&str>,
) -> Result<(RawDocument, Vec<String>)> {
    let picks = |e: &Value| match removal {
        IndexRemoval::Digest(d) => e["digest"].as_str() == Some(d.to_string().as_str()),
        IndexRemoval::Platform(p) => {
            let q = &e["platform"];
            q["os"].as_str() == Some(p.os.as_str())
                && q["architecture"].as_str() == Some(p.architecture.as_str())
                && (p.variant.is_none() || q["variant"].as_str() == p.variant.as_deref())
        }
    };
    let (new, gone) = mutate::remove_from_index(index, picks).map_err(|e| match e {
        Error::InvalidChange { reason } if reason.contains("no such entry") => {
            Error::InvalidChange {
                reason: match removal {
                    IndexRemoval::Digest(d) => format!("{reason}: none is {d}"),
                    IndexRemoval::Platform(p) => format!(
                        "{reason}: none is for {p} (it has: {})",
                        super::platforms(index)
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            }
        }
        other => other,
    })?;
    store.put_manifest(&new, tag).await?;
    let gone = gone
        .iter()
        .filter_map(|e| e["digest"].as_str().map(str::to_owned))
        .collect();
    Ok((new, gone))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::OciLayout;
    use crate::mutate::Base;

    async fn image(layout: &OciLayout, arch: &str, docker: bool) -> ManifestRef {
        let mut a = mutate::append(
            Base::Scratch {
                os: "linux",
                architecture: arch,
                variant: None,
            },
            &[],
            &[],
            &Default::default(),
            0,
        )
        .unwrap();
        if docker {
            // The same documents in Docker's media types.
            let swap = |raw: &RawDocument, from: &str, to: &str, t: &str| {
                let text = String::from_utf8(raw.bytes().to_vec())
                    .unwrap()
                    .replace(from, to);
                RawDocument::new(text.into_bytes(), t)
            };
            let config =
                RawDocument::new(a.config.bytes().to_vec(), crate::media_type::DOCKER_CONFIG);
            let m = swap(
                &a.manifest,
                crate::media_type::OCI_CONFIG,
                crate::media_type::DOCKER_CONFIG,
                crate::media_type::DOCKER_MANIFEST,
            );
            let m = swap(
                &m,
                crate::media_type::OCI_MANIFEST,
                crate::media_type::DOCKER_MANIFEST,
                crate::media_type::DOCKER_MANIFEST,
            );
            a = mutate::Appended {
                config,
                manifest: m,
            };
        }
        layout
            .put_blob(a.config.digest(), a.config.size(), a.config.bytes())
            .await
            .unwrap();
        layout.put_manifest(&a.manifest, None).await.unwrap();
        ManifestRef::Digest(a.manifest.digest().clone())
    }

    #[tokio::test]
    async fn an_index_is_made_changed_and_refuses_duplicates_and_mixed_families() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let amd = index_member(&layout, &image(&layout, "amd64", false).await)
            .await
            .unwrap();
        let arm = index_member(&layout, &image(&layout, "arm64", false).await)
            .await
            .unwrap();
        let docker = index_member(&layout, &image(&layout, "s390x", true).await)
            .await
            .unwrap();
        assert_eq!(arm.name(), "linux/arm64");
        let index = create_index(&layout, std::slice::from_ref(&amd), Some("i"))
            .await
            .unwrap();
        let err = create_index(&layout, &[amd.clone(), amd.clone()], None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("both for linux/amd64"), "{err}");
        let err = create_index(&layout, &[amd.clone(), docker.clone()], None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("never mixes"), "{err}");
        let index = Index::parse(index).unwrap();
        let err = add_to_index(&layout, &index, std::slice::from_ref(&amd), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already has"), "{err}");
        let two = add_to_index(&layout, &index, std::slice::from_ref(&arm), Some("i"))
            .await
            .unwrap();
        let two = Index::parse(two).unwrap();
        assert_eq!(super::super::platforms(&two).len(), 2);
        let (one, gone) = remove_from_index(
            &layout,
            &two,
            &IndexRemoval::Platform("linux/amd64".parse().unwrap()),
            Some("i"),
        )
        .await
        .unwrap();
        assert_eq!(gone, vec![amd.manifest.digest().to_string()]);
        let one = Index::parse(one).unwrap();
        let err = remove_from_index(
            &layout,
            &one,
            &IndexRemoval::Platform("linux/arm64".parse().unwrap()),
            None,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}

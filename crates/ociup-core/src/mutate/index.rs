use serde_json::{Map, json};

use crate::document::RawDocument;
use crate::error::{Error, Result};
use crate::media_type::{self, DocumentKind, Family};
use crate::reference::PlatformSpec;

/// A new index over `manifests`, each with its platform, in canonical JSON. Every manifest must
/// be of `family`, and the index is of that family too.
///
/// # Errors
/// [`Error::InvalidDocument`] for a manifest of the other family or not a manifest at all.
pub fn new_index(
    family: Family,
    manifests: &[(&RawDocument, &PlatformSpec)],
) -> Result<RawDocument> {
    let index_type = match family {
        Family::Oci => media_type::OCI_INDEX,
        Family::Docker => media_type::DOCKER_INDEX,
    };
    let mut list = Vec::with_capacity(manifests.len());
    for (m, p) in manifests {
        match media_type::document_kind(m.media_type()) {
            Ok((DocumentKind::Manifest, f)) if f == family => {}
            _ => {
                return Err(Error::InvalidDocument {
                    what: format!("manifest {}", m.digest()),
                    reason: format!(
                        "media type {:?} cannot go into a {index_type} index",
                        m.media_type()
                    ),
                });
            }
        }
        let mut platform = Map::new();
        platform.insert("architecture".into(), p.architecture.clone().into());
        platform.insert("os".into(), p.os.clone().into());
        if let Some(v) = &p.variant {
            platform.insert("variant".into(), v.clone().into());
        }
        list.push(json!({
            "mediaType": m.media_type(),
            "digest": m.digest().to_string(),
            "size": m.size(),
            "platform": platform,
        }));
    }
    RawDocument::canonical(
        &json!({"schemaVersion": 2, "mediaType": index_type, "manifests": list}),
        index_type,
    )
}

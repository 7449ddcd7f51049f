//! Garbage collection of an OCI layout: the blobs that nothing listed in its `index.json`
//! reaches any more are removed.
//!
//! What is reached: every descriptor `index.json` lists (tagged or not), and from each manifest
//! or index its config, layers, `blobs` and child manifests, recursively. A catalog kept in the
//! layout is followed as ociup writes it: a nick's entry reaches its recipe, version record and
//! audit entry, a version record the previous record, its recipe and its build manifest
//! envelope, an audit entry the previous entry; so `ociup history`, the audit trail and every
//! recorded recipe survive, while the images of deleted versions (their manifests no longer
//! listed) go. A referrer does not keep its subject.
//!
//! Safety: nothing is removed when a reached document cannot be read or parsed (the sweep
//! cannot tell what it references); a reached blob that is missing is skipped. `index.json`
//! is held locked while the layout is walked and swept, so no tag moves meanwhile; a blob
//! written less than [`SweepOptions::min_age`] ago is kept, because a writer stores blobs
//! before the manifest that names them. A writer that reuses an old unreferenced blob while a
//! sweep runs can still lose it: sweep a layout nothing else is writing to.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use super::catalog::{AUDIT_MEDIA_TYPE, NICK_ARTIFACT, VERSION_MEDIA_TYPE};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::OciLayout;
use crate::store::MAX_DOCUMENT_SIZE;

/// How to sweep.
#[derive(Clone, Copy, Debug)]
pub struct SweepOptions {
    /// Unreached blobs modified less than this long ago are kept: a writer may be about to
    /// name them. Default: one hour.
    pub min_age: Duration,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            min_age: Duration::from_secs(3600),
        }
    }
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Swept {
    /// The layout.
    pub layout: String,
    /// Blobs removed.
    pub removed: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Unreached blobs kept because they are newer than the minimum age.
    pub kept_recent: usize,
}

/// What a descriptor points at, as far as the walk is concerned.
enum Kind {
    /// A manifest or index: read and followed.
    Document,
    /// A version record of a catalog.
    Version,
    /// An audit entry of a catalog.
    Audit,
    /// Anything else: kept, not read.
    Opaque,
}

/// Every blob of `layout` that its `index.json` reaches.
///
/// # Errors
/// A broken `index.json` or one with a malformed entry (what it names would look unreached); a
/// reached document that cannot be read or parsed.
pub fn reachable(layout: &OciLayout) -> Result<HashSet<Digest>> {
    layout.check_index_entries()?;
    let mut seen = HashSet::new();
    let mut todo: Vec<(Digest, Kind)> = Vec::new();
    for d in layout.index_entries()? {
        // What index.json lists is a manifest or index, whatever its media type says.
        todo.push((Digest::try_from(d.digest())?, Kind::Document));
    }
    while let Some((digest, kind)) = todo.pop() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        if matches!(kind, Kind::Opaque) {
            continue;
        }
        let Some(v) = read_json(layout, &digest)? else {
            continue;
        };
        match kind {
            Kind::Document => follow_document(&v, &mut todo)?,
            Kind::Version => {
                if let Some(d) = digest_at(&v, "previous")? {
                    todo.push((d, Kind::Version));
                }
                if let Some(d) = digest_at(&v, "recipe")? {
                    todo.push((d, Kind::Opaque));
                }
                if let Some(d) = v
                    .get("build_manifest")
                    .and_then(|b| b.get(0))
                    .and_then(Value::as_str)
                {
                    todo.push((d.parse()?, Kind::Opaque));
                }
            }
            Kind::Audit => {
                if let Some(d) = digest_at(&v, "previous")? {
                    todo.push((d, Kind::Audit));
                }
            }
            Kind::Opaque => {}
        }
    }
    Ok(seen)
}

fn digest_at(v: &Value, key: &str) -> Result<Option<Digest>> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::parse)
        .transpose()
}

/// The descriptors a manifest or index names.
fn follow_document(v: &Value, todo: &mut Vec<(Digest, Kind)>) -> Result<()> {
    let nick = v.get("artifactType").and_then(Value::as_str) == Some(NICK_ARTIFACT);
    let list = |k: &'static str| {
        v.get(k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(move |d| (k == "manifests", d))
    };
    let config = v.get("config").into_iter().map(|d| (false, d));
    for (child, d) in config
        .chain(list("layers"))
        .chain(list("blobs"))
        .chain(list("manifests"))
    {
        let Some(digest) = d.get("digest").and_then(Value::as_str) else {
            continue;
        };
        let kind = match d.get("mediaType").and_then(Value::as_str) {
            _ if child => Kind::Document,
            Some(VERSION_MEDIA_TYPE) if nick => Kind::Version,
            Some(AUDIT_MEDIA_TYPE) if nick => Kind::Audit,
            _ => Kind::Opaque,
        };
        todo.push((digest.parse()?, kind));
    }
    Ok(())
}

/// A reached JSON blob, checked against its digest; `None` when the layout lacks it.
fn read_json(layout: &OciLayout, digest: &Digest) -> Result<Option<Value>> {
    let path = layout.blob_path(digest);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let refuse = |reason: String| Error::InvalidDocument {
        what: format!("{digest} in {}", layout.root().display()),
        reason: format!("{reason}; garbage collection cannot tell what it references"),
    };
    if !meta.is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    if meta.len() > MAX_DOCUMENT_SIZE {
        return Err(refuse(format!(
            "{} bytes is larger than a document may be",
            meta.len()
        )));
    }
    let bytes =
        std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    digest.verify(&bytes, || {
        format!("blob {digest} in {}", layout.root().display())
    })?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| refuse(format!("it is not JSON ({e})")))
}

/// Removes the blobs of `layout` that nothing listed in its `index.json` reaches (see the
/// module documentation for what is kept, and when a sweep is safe).
///
/// # Errors
/// As [`reachable`] (then nothing is removed); errors listing or removing blobs.
pub fn sweep(layout: &OciLayout, opts: SweepOptions) -> Result<Swept> {
    let root = layout.root();
    // The lock writers of index.json take: no tag moves while the layout is walked and swept.
    let lock = std::fs::File::open(root)
        .map_err(|e| Error::io(format!("opening {}", root.display()), e))?;
    lock.lock()
        .map_err(|e| Error::io(format!("locking {}", root.display()), e))?;
    let keep = reachable(layout)?;
    let cutoff = SystemTime::now()
        .checked_sub(opts.min_age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut swept = Swept {
        layout: format!("oci:{}", root.display()),
        ..Swept::default()
    };
    let blobs = root.join("blobs");
    let algorithms = match std::fs::read_dir(&blobs) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(Error::io(format!("reading {}", blobs.display()), e)),
    };
    for alg in algorithms {
        let alg = alg.map_err(|e| Error::io(format!("reading {}", blobs.display()), e))?;
        if !alg.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        sweep_dir(&alg.path(), &keep, cutoff, &mut swept)?;
    }
    drop(lock);
    Ok(swept)
}

/// Sweeps `blobs/<alg>`: regular files named as digests of that algorithm, unreached and old
/// enough. Anything else (temporary files, foreign names) is left alone.
fn sweep_dir(
    dir: &Path,
    keep: &HashSet<Digest>,
    cutoff: SystemTime,
    swept: &mut Swept,
) -> Result<()> {
    let alg = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(digest) = format!("{alg}:{name}").parse::<Digest>() else {
            continue;
        };
        if keep.contains(&digest) {
            continue;
        }
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|err| Error::io(format!("reading {}", path.display()), err))?;
        if !meta.is_file() {
            continue;
        }
        if meta.modified().is_ok_and(|m| m > cutoff) {
            swept.kept_recent += 1;
            continue;
        }
        std::fs::remove_file(&path)
            .map_err(|err| Error::io(format!("removing {}", path.display()), err))?;
        swept.removed += 1;
        swept.bytes += meta.len();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::document::RawDocument;
    use crate::media_type;
    use crate::store::Store;

    async fn blob(layout: &OciLayout, bytes: &[u8]) -> (Digest, u64) {
        let d = Digest::sha256(bytes);
        layout
            .put_blob(&d, bytes.len() as u64, bytes)
            .await
            .unwrap();
        (d, bytes.len() as u64)
    }

    fn desc(media_type: &str, (d, size): &(Digest, u64)) -> Value {
        json!({"mediaType": media_type, "digest": d.to_string(), "size": size})
    }

    const NOW: SweepOptions = SweepOptions {
        min_age: Duration::ZERO,
    };

    #[tokio::test]
    async fn keeps_what_images_and_catalog_chains_reach_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let config = blob(&layout, b"{\"os\":\"linux\"}").await;
        let layer = blob(&layout, b"layer").await;
        let image = RawDocument::canonical(
            &json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
                    "config": desc(media_type::OCI_CONFIG, &config),
                    "layers": [desc(media_type::OCI_LAYER_GZIP, &layer)]}),
            media_type::OCI_MANIFEST,
        )
        .unwrap();
        layout.put_manifest(&image, Some("app")).await.unwrap();
        // A catalog entry whose current record links to an older one, which names a recipe
        // and an envelope no manifest lists.
        let old_recipe = blob(&layout, b"{\"nick\":\"old\"}").await;
        let envelope = blob(&layout, b"{\"payload\":\"\"}").await;
        let old = blob(
            &layout,
            json!({"recipe": old_recipe.0.to_string(),
                   "build_manifest": [envelope.0.to_string(), envelope.1]})
            .to_string()
            .as_bytes(),
        )
        .await;
        let current = blob(
            &layout,
            json!({"previous": old.0.to_string()})
                .to_string()
                .as_bytes(),
        )
        .await;
        let first_audit = blob(&layout, b"{\"command\":\"register\"}").await;
        let audit = blob(
            &layout,
            json!({"previous": first_audit.0.to_string()})
                .to_string()
                .as_bytes(),
        )
        .await;
        let recipe = blob(&layout, b"{\"nick\":\"n\"}").await;
        let empty = blob(&layout, b"{}").await;
        let entry = RawDocument::canonical(
            &json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
                    "artifactType": NICK_ARTIFACT,
                    "config": desc("application/vnd.oci.empty.v1+json", &empty),
                    "layers": [desc("application/vnd.ociup.recipe.v1+json", &recipe),
                               desc(VERSION_MEDIA_TYPE, &current),
                               desc(AUDIT_MEDIA_TYPE, &audit)]}),
            media_type::OCI_MANIFEST,
        )
        .unwrap();
        layout.put_manifest(&entry, Some("nick.n")).await.unwrap();
        let orphan = blob(&layout, b"nobody names me").await;
        let gone_image = RawDocument::canonical(
            &json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
                    "config": desc(media_type::OCI_CONFIG, &config),
                    "layers": [desc(media_type::OCI_LAYER_GZIP, &orphan)]}),
            media_type::OCI_MANIFEST,
        )
        .unwrap();
        layout.put_manifest(&gone_image, Some("old")).await.unwrap();
        layout.delete_manifest(gone_image.digest()).await.unwrap();

        // Too new to go, by default.
        let swept = sweep(&layout, SweepOptions::default()).unwrap();
        assert_eq!((swept.removed, swept.kept_recent), (0, 2));
        let swept = sweep(&layout, NOW).unwrap();
        assert_eq!(
            swept.removed, 2,
            "the unlisted manifest and the blob only it named"
        );
        assert!(!layout.blob_path(gone_image.digest()).exists());
        assert!(!layout.blob_path(&orphan.0).exists());
        for (d, _) in [
            &config,
            &layer,
            &old_recipe,
            &envelope,
            &old,
            &current,
            &first_audit,
            &audit,
            &recipe,
            &empty,
        ] {
            assert!(layout.blob_path(d).exists(), "{d} is reached");
        }
        assert!(layout.blob_path(image.digest()).exists());
        assert!(layout.blob_path(entry.digest()).exists());
        assert_eq!(sweep(&layout, NOW).unwrap().removed, 0);
    }

    #[tokio::test]
    async fn a_reached_document_that_does_not_parse_stops_the_sweep() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let orphan = blob(&layout, b"nobody names me").await;
        let garbage = blob(&layout, b"not json").await;
        let d: oci_spec::image::Descriptor =
            serde_json::from_value(desc(media_type::OCI_MANIFEST, &garbage)).unwrap();
        layout.set_tag(&d, Some("broken")).unwrap();
        let err = sweep(&layout, NOW).unwrap_err().to_string();
        assert!(err.contains("cannot tell what it references"), "{err}");
        assert!(layout.blob_path(&orphan.0).exists(), "nothing removed");
    }

    #[tokio::test]
    async fn a_malformed_index_entry_stops_the_sweep() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let config = blob(&layout, b"{\"os\":\"linux\"}").await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": desc(media_type::OCI_CONFIG, &config),
            "layers": [],
        });
        let manifest = blob(&layout, &serde_json::to_vec(&manifest).unwrap()).await;
        // The entry naming the manifest has its size as a string: not a valid descriptor, but
        // what it names is not unreached.
        let mut entry = desc(media_type::OCI_MANIFEST, &manifest);
        entry["size"] = json!(manifest.1.to_string());
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": "odd"});
        let index = json!({"schemaVersion": 2, "manifests": [entry]});
        std::fs::write(
            layout.root().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        let err = sweep(&layout, NOW).unwrap_err().to_string();
        assert!(err.contains("odd"), "the entry is named: {err}");
        assert!(layout.blob_path(&manifest.0).exists(), "nothing removed");
        assert!(layout.blob_path(&config.0).exists(), "nothing removed");
    }
}

//! The flows of managed images over any stores: register, resolve (the request to run, with
//! lazy upgrade), status, history and verify.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{Value, json};

use super::build_manifest::{
    BaseEntry, BuildManifest, ENVELOPE_MEDIA_TYPE, FileEntry, Key, LayerEntry, PublicKey,
    layer_files, statement,
};
use super::catalog::{
    AuditEntry, BlobRef, Catalog, Current, EMPTY_MEDIA_TYPE, Entry, ImageDocuments, State, Summary,
    VersionRecord,
};
use super::recipe::{Recipe, validate_nick};
use crate::digest::Digest;
use crate::document::{Document, Manifest, RawDocument};
use crate::error::{Error, Result};
use crate::layer::LayerOptions;
use crate::media_type::{self, Compression};
use crate::mutate::ConfigMode;
use crate::ops::rebase::{OldBaseSource, RebaseOptions, rebase_image};
use crate::ops::{self, AppendBase, AppendRequest};
use crate::reference::PlatformSpec;
use crate::store::{ManifestRef, Store};
use crate::time::rfc3339;

/// Opens the stores that references name. `ociup-registry` implements it for layouts and
/// registries; tests may implement it over layouts alone.
pub trait Stores: Send + Sync {
    /// The store type.
    type Store: Store + Clone + 'static;

    /// The store a reference names, and the image in it (a tag or digest) when it names one.
    /// With `write`, a layout that does not exist yet is created.
    ///
    /// # Errors
    /// An invalid reference, a layout that is not one.
    fn open(&self, reference: &str, write: bool) -> Result<(Self::Store, Option<ManifestRef>)>;

    /// The digest-pinned reference of `digest` in the repository or layout `target`.
    ///
    /// # Errors
    /// An invalid reference.
    fn pinned(&self, target: &str, digest: &Digest) -> Result<String>;
}

/// What to do when the base cannot be reached during a resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Unreachable {
    /// Fail.
    #[default]
    Fail,
    /// Answer the current version, marked stale.
    Stale,
}

/// How to resolve.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResolveOptions {
    /// Say whether an upgrade is due; change nothing.
    pub check: bool,
    /// Answer the current version without asking the base.
    pub offline: bool,
    /// What an unreachable base means.
    pub unreachable: Unreachable,
}

/// The answer to a request to run.
#[derive(Clone, Debug, Serialize)]
pub struct Resolution {
    /// The nick.
    pub nick: String,
    /// Digest-pinned reference to run.
    pub reference: String,
    /// Its manifest digest.
    pub digest: String,
    /// The version number.
    pub version: u64,
    /// Whether this request made a new version.
    pub upgraded: bool,
    /// With `check`: whether an upgrade is due.
    pub upgrade_due: bool,
    /// The base could not be asked; this is the last good version.
    pub stale: bool,
    /// The base digest the answer sits on.
    pub base_digest: String,
    /// The base digest the previous version sat on (when upgraded).
    pub previous_base_digest: Option<String>,
}

/// A nick in `status`.
#[derive(Clone, Debug, Serialize)]
pub struct NickStatus {
    /// The nick.
    pub nick: String,
    /// `current`, `stale` (base moved), `pending`, `failed`, or `unknown` (base unreachable).
    pub status: String,
    /// The base reference.
    pub base: String,
    /// The current version, if any.
    pub version: Option<u64>,
    /// Its digest.
    pub digest: Option<String>,
    /// The base digest it sits on.
    pub base_digest: Option<String>,
    /// What the base points to now.
    pub current_base_digest: Option<String>,
    /// Why it failed or could not be checked.
    pub error: Option<String>,
}

/// What `verify` checked.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    /// The image digest.
    pub digest: String,
    /// The nick and version the build manifest names.
    pub nick: String,
    /// Version number.
    pub version: u64,
    /// Own layers checked.
    pub layers: usize,
    /// Files checked.
    pub files: usize,
}

/// Managed images over a catalog store and the stores references name.
pub struct Manager<P: Stores> {
    stores: P,
    catalog: Catalog<P::Store>,
    actor: String,
    key: Option<Key>,
    epoch: u64,
    platform: Option<PlatformSpec>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<P: Stores> std::fmt::Debug for Manager<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("catalog", &self.catalog.store().location())
            .finish_non_exhaustive()
    }
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidChange {
        reason: reason.into(),
    }
}

impl<P: Stores> Manager<P> {
    /// A manager. `actor` is recorded with every command and version; `key` signs build
    /// manifests (none are made without it); `epoch` is `created` of what is built; `platform`
    /// picks the platform of a multi-platform base.
    pub fn new(
        stores: P,
        catalog: P::Store,
        actor: String,
        key: Option<Key>,
        epoch: u64,
        platform: Option<PlatformSpec>,
    ) -> Self {
        Manager {
            stores,
            catalog: Catalog::new(catalog),
            actor,
            key,
            epoch,
            platform,
            locks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog<P::Store> {
        &self.catalog
    }

    /// The catalog entry of `nick`, or an error naming it.
    async fn entry(&self, nick: &str) -> Result<Entry> {
        self.catalog
            .get(nick)
            .await?
            .ok_or_else(|| invalid(format!("no managed image is registered as {nick:?}")))
    }

    fn lock_for(&self, nick: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(nick.to_owned()).or_default())
    }

    async fn base_digest(&self, base: &str) -> Result<(P::Store, Digest)> {
        let (store, image) = self.stores.open(base, false)?;
        let digest = match image {
            Some(ManifestRef::Tag(t)) => Digest::try_from(store.resolve_tag(&t).await?.digest())?,
            Some(ManifestRef::Digest(d)) => d,
            None => return Err(invalid(format!("the base {base} names no tag or digest"))),
        };
        Ok((store, digest))
    }

    /// Registers a recipe and builds its first version. A pending entry is written first, so a
    /// record exists even if the build fails (the entry is then marked failed).
    ///
    /// # Errors
    /// A missing source file or an invalid reference (nothing written); a nick already
    /// registered; build and store errors.
    pub async fn register(
        &self,
        recipe: Recipe,
        dir: &Path,
        command: String,
    ) -> Result<VersionRecord> {
        validate_nick(&recipe.nick)?;
        recipe.check_sources(dir)?;
        let (target, _) = self.stores.open(&recipe.target, true)?;
        self.stores.open(&recipe.base, false)?;
        let lock = self.lock_for(&recipe.nick);
        let _held = lock.lock().await;
        let prior = self.catalog.get(&recipe.nick).await?;
        // A nick with a version is registered; one left pending or failed (its first build never
        // finished) may be registered again.
        if let Some(e) = &prior
            && e.version.is_some()
        {
            return Err(invalid(format!(
                "{} is registered already; change it with `ociup edit`",
                recipe.nick
            )));
        }
        let recipe_blob = self.catalog.put_json(&recipe).await?;
        let audit = self
            .catalog
            .put_json(&AuditEntry {
                command,
                time: now(),
                actor: self.actor.clone(),
                previous: prior.map(|p| p.audit.digest.to_string()),
            })
            .await?;
        let mut entry = Entry {
            nick: recipe.nick.clone(),
            state: State::Pending,
            error: None,
            recipe: recipe.clone(),
            recipe_blob,
            version: None,
            audit,
            stored: false,
            manifest: None,
        };
        self.catalog.put(&entry).await?;
        match self
            .build_version(&recipe, dir, &target, &entry, 1, "registered", None)
            .await
        {
            Ok((record, blob)) => {
                entry.state = State::Ready;
                entry.version = Some((record.clone(), blob));
                self.catalog.put(&entry).await?;
                Ok(record)
            }
            Err(e) => {
                entry.state = State::Failed;
                entry.error = Some(e.to_string());
                // The build error is what the caller needs; a failure to record it is secondary.
                let _ = self.catalog.put(&entry).await;
                Err(e)
            }
        }
    }

    /// The recipe built on `base_digest` of `base_store` (its layer from the sources in `dir`,
    /// the config from the base's and the recipe's changes, `created` = `epoch`), stored in
    /// `dest` under `tag`. Registration, edits and replays all build through here, so a replay
    /// reaches the same bytes.
    #[allow(clippy::too_many_arguments)]
    async fn build_image<D: Store>(
        &self,
        recipe: &Recipe,
        dir: &Path,
        base_store: &P::Store,
        base_digest: &Digest,
        epoch: u64,
        dest: &D,
        tag: Option<&str>,
        staging: &Path,
    ) -> Result<ops::AppendOutcome> {
        let image = ops::load_image(
            base_store,
            &ManifestRef::Digest(base_digest.clone()),
            self.platform.as_ref(),
        )
        .await?;
        let layer = recipe.layer(
            dir,
            LayerOptions {
                epoch,
                ..LayerOptions::default()
            },
        )?;
        let request = AppendRequest {
            layers: layer
                .map(|b| vec![(b, format!("ociup recipe {}", recipe.nick))])
                .unwrap_or_default(),
            changes: recipe.config_changes(),
            annotations: recipe.annotations(),
            created: epoch,
        };
        ops::append_image(
            AppendBase::Image {
                store: base_store,
                image: &image,
                name: &recipe.base,
            },
            dest,
            tag,
            request,
            staging,
        )
        .await
    }

    /// Builds version `number` from the recipe (sources in `dir`) on what the base points to now.
    #[allow(clippy::too_many_arguments)]
    async fn build_version(
        &self,
        recipe: &Recipe,
        dir: &Path,
        target: &P::Store,
        entry: &Entry,
        number: u64,
        reason: &str,
        previous: Option<&BlobRef>,
    ) -> Result<(VersionRecord, BlobRef)> {
        let (base_store, base_digest) = self.base_digest(&recipe.base).await?;
        let nick = &recipe.nick;
        let out = self
            .build_image(
                recipe,
                dir,
                &base_store,
                &base_digest,
                self.epoch,
                target,
                Some(&format!("{nick}-{number}")),
                &std::env::temp_dir(),
            )
            .await?;
        target.put_manifest(&out.manifest, Some(nick)).await?;
        let manifest = Manifest::parse(out.manifest.clone())?;
        let pinned = self.stores.pinned(&recipe.target, out.manifest.digest())?;
        let build_manifest = match &self.key {
            Some(key) => {
                let own = out.layers.len();
                let predicate = BuildManifest {
                    nick: nick.clone(),
                    version: number,
                    base: BaseEntry {
                        reference: recipe.base.clone(),
                        digest: base_digest.to_string(),
                    },
                    layers: own_layers(&manifest, &image_diff_ids(&out.config)?, own)?,
                    files: own_files(target, &manifest, own).await?,
                    commands: self.commands(entry).await?,
                };
                Some(attach(target, key, &out.manifest, &pinned, &predicate).await?)
            }
            None => None,
        };
        let record = VersionRecord {
            nick: nick.clone(),
            number,
            image: pinned,
            digest: out.manifest.digest().to_string(),
            base: recipe.base.clone(),
            base_digest: base_digest.to_string(),
            recipe: entry.recipe_blob.digest.to_string(),
            reason: reason.into(),
            time: now(),
            actor: self.actor.clone(),
            previous: previous.map(|b| b.digest.to_string()),
            build_manifest,
            epoch: self.epoch,
            documents: Some(ImageDocuments::of(&out.manifest, &out.config)?),
        };
        let blob = self.catalog.put_json(&record).await?;
        Ok((record, blob))
    }

    /// Appends steps to a nick's recipe, records the command in its audit trail, and builds a
    /// new version from the whole recipe (sources in `dir`, the earlier steps' too) on what the
    /// base points to now.
    ///
    /// # Errors
    /// An unknown nick or one without a version, a missing source file (nothing written), build
    /// and store errors.
    pub async fn edit(
        &self,
        nick: &str,
        steps: Vec<super::recipe::Step>,
        dir: &Path,
        command: String,
    ) -> Result<VersionRecord> {
        let lock = self.lock_for(nick);
        let _held = lock.lock().await;
        let entry = self.entry(nick).await?;
        let Some((current, current_blob)) = entry.version.clone() else {
            return Err(invalid(format!("{nick} has no version yet to edit")));
        };
        let mut recipe = entry.recipe.clone();
        recipe.steps.extend(steps);
        entry.recipe.check_confined()?;
        recipe.check_sources(dir)?;
        let (target, _) = self.stores.open(&recipe.target, true)?;
        let recipe_blob = self.catalog.put_json(&recipe).await?;
        let audit = self
            .catalog
            .put_json(&AuditEntry {
                command,
                time: now(),
                actor: self.actor.clone(),
                previous: Some(entry.audit.digest.to_string()),
            })
            .await?;
        let mut next = Entry {
            recipe: recipe.clone(),
            recipe_blob,
            audit,
            ..entry
        };
        let (record, blob) = self
            .build_version(
                &recipe,
                dir,
                &target,
                &next,
                current.number + 1,
                "recipe edited",
                Some(&current_blob),
            )
            .await?;
        next.version = Some((record.clone(), blob));
        self.catalog.put(&next).await?;
        Ok(record)
    }

    /// Deletes the images of every version of `nick` but the newest `keep` (and their build
    /// manifest tags), where the target store allows deletion. The version records stay in the
    /// catalog, so the history keeps every version. Returns the digests deleted.
    ///
    /// # Errors
    /// An unknown nick; `keep` of 0 (the current version must stay); store errors.
    pub async fn gc(&self, nick: &str, keep: usize) -> Result<Vec<String>> {
        if keep == 0 {
            return Err(invalid(
                "--keep must be at least 1: the current version stays",
            ));
        }
        let lock = self.lock_for(nick);
        let _held = lock.lock().await;
        let e = self.entry(nick).await?;
        let (target, _) = self.stores.open(&e.recipe.target, false)?;
        let versions = self.catalog.history(&e).await?;
        // An old version can be the same image as a kept one (the base moved and came back):
        // that image stays.
        let kept: Vec<&str> = versions
            .iter()
            .take(keep)
            .map(|v| v.digest.as_str())
            .collect();
        let mut deleted = Vec::new();
        for v in versions.iter().skip(keep) {
            if kept.contains(&v.digest.as_str()) || deleted.contains(&v.digest) {
                continue;
            }
            let digest: Digest = v.digest.parse()?;
            if !target.has_manifest(&digest).await? {
                continue;
            }
            target.delete_manifest(&digest).await?;
            // Its build manifest's tag index goes with it.
            let referrers = format!("{}-{}", digest.algorithm(), digest.hex());
            if let Ok(d) = target.resolve_tag(&referrers).await {
                target
                    .delete_manifest(&Digest::try_from(d.digest())?)
                    .await?;
            }
            deleted.push(v.digest.clone());
        }
        Ok(deleted)
    }

    /// Resolves every nick (the eager path): each answer, or the error that nick met.
    ///
    /// # Errors
    /// Store errors listing the catalog.
    pub async fn upgrade_all(&self) -> Result<Vec<(String, Result<Resolution>)>> {
        let mut out = Vec::new();
        for nick in self.catalog.nicks().await? {
            let r = self.resolve(&nick, ResolveOptions::default()).await;
            out.push((nick, r));
        }
        Ok(out)
    }

    async fn commands(&self, entry: &Entry) -> Result<Vec<String>> {
        Ok(self
            .catalog
            .audit_trail(entry)
            .await?
            .into_iter()
            .map(|a| a.command)
            .collect())
    }

    /// The request to run: the current version if it sits on what the base points to now,
    /// otherwise a new version regenerated on the new base (its own layers reused byte for byte,
    /// its config derived from the new base's and the recipe), recorded and answered.
    /// Concurrent resolves of one nick in this process share one regeneration.
    ///
    /// # Errors
    /// An unknown nick, a nick without a version, an unreachable base (unless
    /// [`Unreachable::Stale`]), store errors.
    pub async fn resolve(&self, nick: &str, opts: ResolveOptions) -> Result<Resolution> {
        let lock = self.lock_for(nick);
        let _held = lock.lock().await;
        let summary = self
            .catalog
            .summary(nick)
            .await?
            .ok_or_else(|| invalid(format!("no managed image is registered as {nick:?}")))?;
        // The manifest's summary answers when nothing is due; the blobs are read only for a
        // regeneration (or for an entry written before summaries were).
        let mut entry = None;
        let (current, base) = match (&summary.current, &summary.base) {
            (Some(c), Some(b)) => (c.clone(), b.clone()),
            _ => {
                let e = self.catalog.entry(&summary).await?;
                let Some((v, _)) = &e.version else {
                    return Err(invalid(format!(
                        "{nick} has no version yet (state {:?}{})",
                        e.state,
                        e.error
                            .as_ref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    )));
                };
                let found = (Current::of(v), e.recipe.base.clone());
                entry = Some(e);
                found
            }
        };
        let answer = |v: &Current, upgraded: bool, due: bool, stale: bool, prev: Option<String>| {
            Resolution {
                nick: nick.to_owned(),
                reference: v.image.clone(),
                digest: v.digest.clone(),
                version: v.number,
                upgraded,
                upgrade_due: due,
                stale,
                base_digest: v.base_digest.clone(),
                previous_base_digest: prev,
            }
        };
        if opts.offline {
            return Ok(answer(&current, false, false, false, None));
        }
        let (base_store, base_digest) = match self.base_digest(&base).await {
            Ok(x) => x,
            Err(_) if opts.unreachable == Unreachable::Stale => {
                return Ok(answer(&current, false, false, true, None));
            }
            Err(e) => return Err(e),
        };
        if base_digest.to_string() == current.base_digest {
            return Ok(answer(&current, false, false, false, None));
        }
        if opts.check {
            return Ok(answer(&current, false, true, false, None));
        }
        let entry = match entry {
            Some(e) => e,
            None => self.catalog.entry(&summary).await?,
        };
        let (record, record_blob) = entry
            .version
            .clone()
            .ok_or_else(|| invalid(format!("{nick} has no version yet")))?;
        let (next, upgraded) = self
            .regenerate(&entry, &record, &record_blob, &base_store, &base_digest)
            .await?;
        let previous = upgraded.then(|| current.base_digest.clone());
        Ok(answer(
            &Current::of(&next),
            upgraded,
            false,
            false,
            previous,
        ))
    }

    /// Regenerates the current version on `base_digest`. Returns the version to answer and
    /// whether it is a new image.
    async fn regenerate(
        &self,
        entry: &Entry,
        current: &VersionRecord,
        current_blob: &BlobRef,
        base_store: &P::Store,
        base_digest: &Digest,
    ) -> Result<(VersionRecord, bool)> {
        let recipe = &entry.recipe;
        let nick = &recipe.nick;
        let number = current.number + 1;
        let (target, _) = self.stores.open(&recipe.target, true)?;
        let digest: Digest = current.digest.parse()?;
        // The record holds the image's manifest and config (checked against its digest): no
        // need to read them from the target. Records of older versions of ociup do not.
        let (doc, image_config) = match current.documents.as_ref().map(|d| d.load(&digest)) {
            Some(Ok((manifest, config))) => (Document::Manifest(manifest), Some(config)),
            _ => (
                ops::load_document(&target, &ManifestRef::Digest(digest)).await?,
                None,
            ),
        };
        let outcome = rebase_image(
            &target,
            doc,
            OldBaseSource::<P::Store>::Recorded,
            base_store,
            &ManifestRef::Digest(base_digest.clone()),
            &target,
            Some(&format!("{nick}-{number}")),
            &RebaseOptions {
                config: ConfigMode::Derive(recipe.config_changes()),
                platforms: Vec::new(),
                // The own layers were built with this epoch: the version keeps it, so a replay
                // reaches the same bytes.
                created: Some(current.epoch),
                new_base_name: Some(recipe.base.clone()),
                dry_run: false,
                image_config,
            },
        )
        .await?;
        // Unchanged since it was read (one HEAD), or read again to see what changed.
        let latest = if self.catalog.head(nick).await? == entry.manifest {
            None
        } else {
            self.catalog.get(nick).await?
        };
        if let Some(latest) = &latest {
            // Another process may have recorded this very regeneration meanwhile: adopt it.
            if let Some((v, _)) = &latest.version
                && v.digest == outcome.digest
                && v.base_digest == base_digest.to_string()
            {
                return Ok((v.clone(), v.number != current.number));
            }
            if latest.recipe_blob != entry.recipe_blob || latest.audit != entry.audit {
                return Err(invalid(format!(
                    "{nick} was changed by another command while it was regenerated; resolve again"
                )));
            }
        }
        if outcome.already_current {
            // The base reference moved (an index gained or changed another platform) but the
            // image's own platform did not: the same image, now recorded on the new digest.
            let record = VersionRecord {
                base_digest: base_digest.to_string(),
                time: now(),
                actor: self.actor.clone(),
                ..current.clone()
            };
            let blob = self.catalog.put_json(&record).await?;
            let mut next = entry.clone();
            next.version = Some((record.clone(), blob));
            self.catalog.put(&next).await?;
            return Ok((record, false));
        }
        let document = outcome
            .document
            .clone()
            .ok_or_else(|| invalid("the rebase returned no document"))?;
        target.put_manifest(&document, Some(nick)).await?;
        let pinned = self.stores.pinned(&recipe.target, document.digest())?;
        let build_manifest = match (&self.key, &current.build_manifest) {
            (Some(key), Some((envelope, size))) => {
                // Same own layers, same files: carry the previous predicate over.
                let bytes = target.get_blob_bytes(&envelope.parse()?, *size).await?;
                let mut predicate = predicate_of(&bytes)?;
                predicate.version = number;
                predicate.base = BaseEntry {
                    reference: recipe.base.clone(),
                    digest: base_digest.to_string(),
                };
                Some(attach(&target, key, &document, &pinned, &predicate).await?)
            }
            _ => None,
        };
        let record = VersionRecord {
            nick: nick.clone(),
            number,
            image: pinned,
            digest: document.digest().to_string(),
            base: recipe.base.clone(),
            base_digest: base_digest.to_string(),
            recipe: entry.recipe_blob.digest.to_string(),
            reason: "base moved".into(),
            time: now(),
            actor: self.actor.clone(),
            previous: Some(current_blob.digest.to_string()),
            build_manifest,
            epoch: current.epoch,
            documents: match &outcome.config {
                Some(config) => Some(ImageDocuments::of(&document, config)?),
                None => None,
            },
        };
        let blob = self.catalog.put_json(&record).await?;
        let mut next = entry.clone();
        next.version = Some((record.clone(), blob));
        self.catalog.put(&next).await?;
        Ok((record, true))
    }

    /// Every nick (or those given): current, stale, pending or failed, with one base lookup per
    /// distinct base reference.
    ///
    /// # Errors
    /// Store errors reading the catalog; an unknown nick among those given.
    pub async fn status(&self, nicks: &[String]) -> Result<Vec<NickStatus>> {
        let names = if nicks.is_empty() {
            self.catalog.nicks().await?
        } else {
            nicks.to_vec()
        };
        // One manifest read per nick (its summary), several at once.
        let rows: Vec<(Summary, String, Option<Current>)> =
            futures_util::stream::iter(names.iter().map(|n| self.status_row(n)))
                .buffered(8)
                .try_collect()
                .await?;
        // One lookup per distinct base, several at once.
        let distinct: std::collections::BTreeSet<&String> =
            rows.iter().map(|(_, base, _)| base).collect();
        let bases: BTreeMap<String, std::result::Result<String, String>> =
            futures_util::stream::iter(distinct.into_iter().map(|base| async move {
                let d = self
                    .base_digest(base)
                    .await
                    .map(|(_, d)| d.to_string())
                    .map_err(|e| e.to_string());
                (base.clone(), d)
            }))
            .buffer_unordered(8)
            .collect()
            .await;
        Ok(rows
            .into_iter()
            .map(|(summary, base, current)| {
                let base_now = bases.get(&base).cloned().unwrap_or(Err(String::new()));
                let (status, error) = match (summary.state, &current, &base_now) {
                    (State::Pending, None, _) => ("pending", None),
                    (State::Failed, None, _) => ("failed", summary.error.clone()),
                    (_, Some(_), Err(err)) => ("unknown", Some(err.clone())),
                    (_, Some(v), Ok(d)) if *d == v.base_digest => ("current", None),
                    (_, Some(_), Ok(_)) => ("stale", None),
                    (_, None, _) => ("pending", None),
                };
                NickStatus {
                    nick: summary.nick.clone(),
                    status: status.into(),
                    base,
                    version: current.as_ref().map(|v| v.number),
                    digest: current.as_ref().map(|v| v.digest.clone()),
                    base_digest: current.as_ref().map(|v| v.base_digest.clone()),
                    current_base_digest: base_now.ok(),
                    error,
                }
            })
            .collect())
    }

    /// A nick's summary, its base and current version: from the manifest's annotations, or
    /// from the entry's blobs when they are missing (entries written before summaries were).
    async fn status_row(&self, nick: &str) -> Result<(Summary, String, Option<Current>)> {
        let summary = self
            .catalog
            .summary(nick)
            .await?
            .ok_or_else(|| invalid(format!("no managed image is registered as {nick:?}")))?;
        let complete =
            summary.base.is_some() && (summary.current.is_some() || summary.state != State::Ready);
        if let (true, Some(base)) = (complete, &summary.base) {
            let (base, current) = (base.clone(), summary.current.clone());
            return Ok((summary, base, current));
        }
        let e = self.catalog.entry(&summary).await?;
        let current = e.version.as_ref().map(|(v, _)| Current::of(v));
        Ok((summary, e.recipe.base, current))
    }

    /// Every version of a nick, newest first.
    ///
    /// # Errors
    /// An unknown nick; store errors.
    pub async fn history(&self, nick: &str) -> Result<Vec<VersionRecord>> {
        let e = self.entry(nick).await?;
        self.catalog.history(&e).await
    }

    /// Rebuilds version `number` of a nick from its recipe (sources read from `dir`) on the base
    /// digest it recorded, in a scratch layout, and returns the digest the rebuild reached and
    /// the recorded one. Nothing is written to the stores.
    ///
    /// # Errors
    /// An unknown nick or version, a missing source file, store errors.
    pub async fn replay(&self, nick: &str, number: u64, dir: &Path) -> Result<(String, String)> {
        let versions = self.history(nick).await?;
        let v = versions
            .iter()
            .find(|v| v.number == number)
            .ok_or_else(|| invalid(format!("{nick} has no version {number}")))?;
        let recipe_digest: Digest = v.recipe.parse()?;
        let size = self
            .catalog
            .store()
            .blob_size(&recipe_digest)
            .await?
            .unwrap_or(0);
        let bytes = self
            .catalog
            .store()
            .get_blob_bytes(&recipe_digest, size)
            .await?;
        let recipe = Recipe::parse(&bytes, &format!("{nick} version {number}"))?;
        recipe.check_confined()?;
        recipe.check_sources(dir)?;
        let (base_store, _) = self.stores.open(&recipe.base, false)?;
        let scratch =
            tempfile::tempdir().map_err(|e| Error::io("creating a scratch directory", e))?;
        let layout = crate::layout::OciLayout::open_or_create(scratch.path().join("replay"))?;
        let out = self
            .build_image(
                &recipe,
                dir,
                &base_store,
                &v.base_digest.parse()?,
                v.epoch,
                &layout,
                None,
                scratch.path(),
            )
            .await?;
        Ok((out.manifest.digest().to_string(), v.digest.clone()))
    }

    /// The current version of a nick: its target store and manifest digest.
    ///
    /// # Errors
    /// An unknown nick or one without a version.
    pub async fn current(&self, nick: &str) -> Result<(P::Store, Digest)> {
        let e = self.entry(nick).await?;
        let (v, _) = e
            .version
            .ok_or_else(|| invalid(format!("{nick} has no version yet")))?;
        let (store, _) = self.stores.open(&e.recipe.target, false)?;
        Ok((store, v.digest.parse()?))
    }
}

fn image_diff_ids(config: &RawDocument) -> Result<Vec<Digest>> {
    crate::config::Config::parse(config.clone())?.diff_ids()
}

/// The last `own` layers of a manifest with their diff_ids.
fn own_layers(m: &Manifest, diff_ids: &[Digest], own: usize) -> Result<Vec<LayerEntry>> {
    let layers = m.parsed().layers();
    if own > layers.len() || layers.len() != diff_ids.len() {
        return Err(invalid(format!(
            "image {} has {} layers, not {own} of its own",
            m.raw().digest(),
            layers.len()
        )));
    }
    let start = layers.len() - own;
    Ok(layers[start..]
        .iter()
        .zip(&diff_ids[start..])
        .map(|(l, d)| LayerEntry {
            digest: l.digest().to_string(),
            diff_id: d.to_string(),
            size: l.size(),
        })
        .collect())
}

/// The files of the last `own` layers, read from the store as they stream.
async fn own_files<S: Store + Clone + 'static>(
    store: &S,
    m: &Manifest,
    own: usize,
) -> Result<Vec<FileEntry>> {
    let layers = m.parsed().layers();
    let mut files = Vec::new();
    for l in &layers[layers.len().saturating_sub(own)..] {
        let digest = Digest::try_from(l.digest())?;
        let compression = Compression::of_layer(l.media_type().as_ref()).ok_or_else(|| {
            Error::UnsupportedMediaType {
                media_type: l.media_type().to_string(),
                context: "a layer whose files are listed".into(),
            }
        })?;
        let reader = store.get_blob(&digest, l.size()).await?;
        let bridge = tokio_util::io::SyncIoBridge::new(reader);
        let listed = tokio::task::spawn_blocking(move || {
            let mut bridge = bridge;
            let files = layer_files(&mut bridge, compression)?;
            // A tar reader stops at its end marker: read the rest, so the blob's size and digest
            // are checked (a corrupted trailer would pass otherwise).
            std::io::copy(&mut bridge, &mut std::io::sink())
                .map_err(|e| Error::from_io(format!("reading layer {digest}"), e))?;
            Ok::<_, Error>(files)
        })
        .await
        .map_err(|e| Error::io("reading a layer", std::io::Error::other(e)))??;
        files.extend(listed);
    }
    files.sort();
    Ok(files)
}

fn predicate_of(envelope: &[u8]) -> Result<BuildManifest> {
    let bad = |reason: String| Error::InvalidDocument {
        what: "build manifest envelope".into(),
        reason,
    };
    let v: Value = serde_json::from_slice(envelope).map_err(|e| bad(e.to_string()))?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(v.get("payload").and_then(Value::as_str).unwrap_or(""))
        .map_err(|e| bad(e.to_string()))?;
    let st: Value = serde_json::from_slice(&payload).map_err(|e| bad(e.to_string()))?;
    serde_json::from_value(st.get("predicate").cloned().unwrap_or(Value::Null))
        .map_err(|e| bad(e.to_string()))
}

/// Signs the build manifest of `subject` and attaches it as a referrer: the envelope blob, an
/// artifact manifest whose `subject` is the image, and the `<alg>-<hex>` tag index that lists
/// referrers where a store has no referrers API. Returns the envelope's digest and size.
async fn attach<S: Store>(
    store: &S,
    key: &Key,
    subject: &RawDocument,
    name: &str,
    predicate: &BuildManifest,
) -> Result<(String, u64)> {
    let envelope = key.sign(&statement(name, subject.digest(), predicate))?;
    let env_digest = Digest::sha256(&envelope);
    store
        .put_blob(&env_digest, envelope.len() as u64, &envelope[..])
        .await?;
    let empty = b"{}";
    let empty_digest = Digest::sha256(empty);
    store.put_blob(&empty_digest, 2, &empty[..]).await?;
    let referrer = RawDocument::canonical(
        &json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "artifactType": ENVELOPE_MEDIA_TYPE,
            "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": empty_digest.to_string(), "size": 2},
            "layers": [{"mediaType": ENVELOPE_MEDIA_TYPE, "digest": env_digest.to_string(), "size": envelope.len()}],
            "subject": {"mediaType": subject.media_type(), "digest": subject.digest().to_string(), "size": subject.size()},
        }),
        media_type::OCI_MANIFEST,
    )?;
    store.put_manifest(&referrer, None).await?;
    let tag = format!(
        "{}-{}",
        subject.digest().algorithm(),
        subject.digest().hex()
    );
    let mut listed: Vec<Value> = match store.get_manifest(&ManifestRef::Tag(tag.clone())).await {
        Ok(raw) => serde_json::from_slice::<Value>(raw.bytes())
            .ok()
            .and_then(|v| v.get("manifests").and_then(Value::as_array).cloned())
            .unwrap_or_default(),
        Err(Error::TagNotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    listed.retain(|e| {
        e.get("digest").and_then(Value::as_str) != Some(&referrer.digest().to_string())
    });
    listed.push(json!({
        "mediaType": media_type::OCI_MANIFEST,
        "digest": referrer.digest().to_string(),
        "size": referrer.size(),
        "artifactType": ENVELOPE_MEDIA_TYPE,
    }));
    let index = RawDocument::canonical(
        &json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": listed}),
        media_type::OCI_INDEX,
    )?;
    store.put_manifest(&index, Some(&tag)).await?;
    Ok((env_digest.to_string(), envelope.len() as u64))
}

/// Checks an image against its signed build manifest: a referrer whose envelope verifies with
/// `key`, whose subject is the image, whose layers are the image's own (digest, diff_id, size)
/// and whose files are exactly those the layers hold.
///
/// # Errors
/// [`Error::InvalidChange`] naming what does not match; store errors.
pub async fn verify<S: Store + Clone + 'static>(
    store: &S,
    image: &ManifestRef,
    key: &PublicKey,
) -> Result<Verified> {
    let doc = ops::load_document(store, image).await?;
    let Document::Manifest(m) = &doc else {
        return Err(invalid("verify a platform's manifest, not an index"));
    };
    let digest = m.raw().digest().clone();
    let config = ops::image_from_document(store, doc.clone(), None)
        .await?
        .config;
    let tag = format!("{}-{}", digest.algorithm(), digest.hex());
    let listed = match store.get_manifest(&ManifestRef::Tag(tag)).await {
        Ok(raw) => serde_json::from_slice::<Value>(raw.bytes())
            .ok()
            .and_then(|v| v.get("manifests").and_then(Value::as_array).cloned())
            .unwrap_or_default(),
        Err(Error::TagNotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut last_err = invalid(format!("image {digest} has no build manifest attached"));
    for r in listed
        .iter()
        .filter(|r| r.get("artifactType").and_then(Value::as_str) == Some(ENVELOPE_MEDIA_TYPE))
    {
        let rd: Digest = r
            .get("digest")
            .and_then(Value::as_str)
            .unwrap_or("")
            .parse()?;
        let referrer: Value =
            serde_json::from_slice(store.get_manifest(&ManifestRef::Digest(rd)).await?.bytes())
                .map_err(|source| Error::MalformedDocument {
                    what: "build manifest referrer".into(),
                    source,
                })?;
        let Some(layer) = referrer.get("layers").and_then(|l| l.get(0)) else {
            continue;
        };
        let ed: Digest = layer
            .get("digest")
            .and_then(Value::as_str)
            .unwrap_or("")
            .parse()?;
        let envelope = store
            .get_blob_bytes(&ed, layer.get("size").and_then(Value::as_u64).unwrap_or(0))
            .await?;
        let st = match key.verify(&envelope) {
            Ok(st) => st,
            Err(e) => {
                last_err = e;
                continue;
            }
        };
        let subject = st
            .pointer("/subject/0/digest/sha256")
            .and_then(Value::as_str)
            .unwrap_or("");
        if subject != digest.hex() {
            return Err(invalid(format!(
                "the build manifest is for sha256:{subject}, not {digest}"
            )));
        }
        let predicate: BuildManifest = serde_json::from_value(
            st.get("predicate").cloned().unwrap_or(Value::Null),
        )
        .map_err(|e| Error::InvalidDocument {
            what: "build manifest".into(),
            reason: e.to_string(),
        })?;
        let own = predicate.layers.len();
        let actual = own_layers(m, &config.diff_ids()?, own)?;
        for (i, (want, got)) in predicate.layers.iter().zip(&actual).enumerate() {
            if want != got {
                return Err(invalid(format!(
                    "own layer {} of {digest} is {} but the build manifest lists {}",
                    i + 1,
                    got.digest,
                    want.digest
                )));
            }
        }
        let files = own_files(store, m, own).await?;
        let mut listed_files = predicate.files.clone();
        listed_files.sort();
        if files != listed_files {
            let diff = files
                .iter()
                .find(|f| !listed_files.contains(f))
                .map(|f| format!("{} is in the image but not as listed", f.path))
                .or_else(|| {
                    listed_files
                        .iter()
                        .find(|f| !files.contains(f))
                        .map(|f| format!("{} is listed but not in the image", f.path))
                })
                .unwrap_or_default();
            return Err(invalid(format!(
                "the files of {digest} differ from its build manifest: {diff}"
            )));
        }
        return Ok(Verified {
            digest: digest.to_string(),
            nick: predicate.nick,
            version: predicate.version,
            layers: own,
            files: files.len(),
        });
    }
    Err(last_err)
}

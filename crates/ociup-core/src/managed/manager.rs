//! The flows of managed images over any stores: register, resolve (the request to run, with
//! lazy upgrade), status, history and verify.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{Value, json};

use super::build_manifest::{
    BaseEntry, BuildManifest, ENVELOPE_MEDIA_TYPE, Expected, FileEntry, Key, LayerEntry, PublicKey,
    check_statement, envelope_key_ids, layer_files, statement,
};
use super::catalog::{
    AuditEntry, BlobCache, BlobRef, Catalog, Current, EMPTY_MEDIA_TYPE, Entry, ImageDocuments,
    PlatformRecord, PlatformSummary, State, Summary, VersionRecord,
};
use super::recipe::{Recipe, SourceAccess, Step};
use crate::digest::Digest;
use crate::document::{Document, Index, Manifest, RawDocument};
use crate::error::{Error, Result};
use crate::layer::{Layer, LayerOptions};
use crate::media_type::{self, Compression};
use crate::mutate::ConfigMode;
use crate::mutate::NewLayer;
use crate::ops::rebase::{RebaseOptions, RebaseRequest, rebase_image};
use crate::ops::{
    self, AppendBase, AppendOptions, AppendRequest, AppendResult, BaseDocument, IndexAppendOutcome,
    PlatformChoice, append_to_base, is_attestation, spec_name,
};
use crate::reference::PlatformSpec;
use crate::store::MAX_DOCUMENT_SIZE;
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

/// What a resolve is about to write, shown to [`ResolveOptions::before_write`] once the
/// regeneration is computed and before any blob, manifest or catalog entry is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// The nick.
    pub nick: String,
    /// The digest-pinned reference the resolve will answer.
    pub reference: String,
    /// Its manifest (or index) digest.
    pub digest: String,
    /// The version number that will be recorded.
    pub version: u64,
    /// The base digest it sits on.
    pub base_digest: String,
    /// Whether it is a new image (`false`: the base reference moved but the image stays the
    /// same, and only the version record is written again, on the new base digest).
    pub new_image: bool,
}

/// The callback of [`ResolveOptions::before_write`].
pub type BeforeWrite =
    Arc<dyn Fn(&Planned) -> futures_util::future::BoxFuture<'static, Result<()>> + Send + Sync>;

/// How to resolve.
#[derive(Clone, Default)]
pub struct ResolveOptions {
    /// Say whether an upgrade is due; change nothing.
    pub check: bool,
    /// Answer the current version without asking the base.
    pub offline: bool,
    /// What an unreachable base means.
    pub unreachable: Unreachable,
    /// Called when a resolve is about to write a version, with what it will write (the digest
    /// is computed first: a regeneration is deterministic), before any blob, manifest or
    /// catalog write. An `Err` aborts the resolve with that error and nothing written. Not
    /// called when nothing is to be written (the base has not moved, `check`, `offline`,
    /// a stale answer).
    ///
    /// A caller that must prepare something naming the digest first (a suspended Kubernetes
    /// Job) does it here:
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use futures_util::FutureExt;
    /// use ociup_core::managed::manager::{Planned, ResolveOptions};
    ///
    /// let seen: Arc<Mutex<Option<Planned>>> = Arc::default();
    /// let keep = Arc::clone(&seen);
    /// let opts = ResolveOptions {
    ///     before_write: Some(Arc::new(move |planned: &Planned| {
    ///         *keep.lock().unwrap() = Some(planned.clone());
    ///         let refuse = planned.digest.is_empty();
    ///         async move {
    ///             if refuse {
    ///                 return Err(ociup_core::Error::InvalidChange {
    ///                     reason: "no digest".into(),
    ///                 });
    ///             }
    ///             Ok(())
    ///         }
    ///         .boxed()
    ///     })),
    ///     ..ResolveOptions::default()
    /// };
    /// // manager.resolve("app", opts).await? answers `seen`'s digest when it upgrades.
    /// # drop(opts);
    /// ```
    pub before_write: Option<BeforeWrite>,
}

impl std::fmt::Debug for ResolveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolveOptions")
            .field("check", &self.check)
            .field("offline", &self.offline)
            .field("unreachable", &self.unreachable)
            .field("before_write", &self.before_write.as_ref().map(|_| "Fn"))
            .finish()
    }
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
    /// For an index version: each platform's manifest and the base manifest it sits on
    /// (omitted for a single image).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformSummary>,
    /// Platforms the previous version had and the base no longer has, when this resolve made
    /// a version without them (omitted when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped_platforms: Vec<String>,
}

/// A nick in `status`.
#[derive(Clone, Debug, Serialize)]
pub struct NickStatus {
    /// The nick.
    pub nick: String,
    /// `current`, `stale` (base moved), `pending`, `failed`, `unknown` (base unreachable), or
    /// `removed` (unregistered; shown only when named).
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
    /// Whether the current version has a signed build manifest (new versions are then signed
    /// too, or refused without the key).
    pub signed: bool,
    /// The id of the key that signed it, when the catalog records it.
    pub signer: Option<String>,
    /// Why it failed or could not be checked.
    pub error: Option<String>,
    /// For an index version: each platform's manifest and the base manifest it sits on
    /// (omitted for a single image).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformSummary>,
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
    /// For an index: each platform's manifest, checked against its own build manifest
    /// (omitted for a single image).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<VerifiedPlatform>,
}

/// One platform of an index that `verify` checked.
#[derive(Clone, Debug, Serialize)]
pub struct VerifiedPlatform {
    /// `os/architecture[/variant]`.
    pub platform: String,
    /// Its manifest digest.
    pub digest: String,
    /// The version whose build manifest it carries (an unchanged platform keeps an earlier
    /// version's manifest).
    pub version: u64,
}

/// The base of a nick could not be looked up by a resolve that was to fail then (not
/// [`Unreachable::Stale`]). Carried as [`Error::Backend`], so that a caller can tell it from
/// other failures and suggest answering the last good version instead.
#[derive(Debug)]
pub struct BaseUnreachable {
    /// The nick.
    pub nick: String,
    /// Its base reference.
    pub base: String,
    /// Why the lookup failed.
    pub source: Error,
}

impl std::fmt::Display for BaseUnreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the base {} of {} cannot be reached",
            self.base, self.nick
        )
    }
}

impl std::error::Error for BaseUnreachable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// How a new version of a nick is signed.
enum Signing {
    /// Its current version is unsigned: so is the new one.
    Unsigned,
    /// Signed again: the current version's predicate, checked.
    Carry(Box<BuildManifest>),
    /// Signed, but no key was given and an unsigned version was accepted.
    Dropped,
}

/// Managed images over a catalog store and the stores references name.
///
/// Registering a nick on a base kept in an OCI layout, with the catalog and the versions in
/// layouts too ([`Layouts`](super::layouts::Layouts) opens `oci:` references; `ociup-registry`'s
/// `Opener` opens registries as well), then asking for it as a request to run would:
///
/// ```
/// use ociup_core::layout::OciLayout;
/// use ociup_core::managed::layouts::Layouts;
/// use ociup_core::managed::manager::{Manager, ManagerOptions, Registration, ResolveOptions};
/// use ociup_core::managed::recipe::{Recipe, Step};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/base");
/// std::fs::write(dir.path().join("app.conf"), "mode = test\n")?;
///
/// let catalog = OciLayout::open_or_create(dir.path().join("catalog"))?;
/// let manager = Manager::new(
///     Layouts,
///     catalog,
///     ManagerOptions {
///         actor: "docs".into(),
///         epoch: 1_700_000_000,
///         ..ManagerOptions::default()
///     },
/// );
/// let recipe = Recipe {
///     nick: "app".into(),
///     base: format!("oci:{base}:v1"),
///     target: format!("oci:{}", dir.path().join("images").display()),
///     steps: vec![
///         Step::Add { src: "app.conf".into(), dest: "/etc/app.conf".into() },
///         Step::Env { key: "MODE".into(), value: "test".into() },
///     ],
/// };
/// // Sources are read under this directory only (the recipe's folder).
/// let v1 = manager.register(Registration::new(recipe, dir.path())).await?;
/// assert_eq!(v1.number, 1);
///
/// // The base has not moved: the answer is the registered version, pinned by digest.
/// let answer = manager.resolve("app", ResolveOptions::default()).await?;
/// assert_eq!((answer.digest, answer.upgraded), (v1.digest, false));
/// assert!(answer.reference.contains("@sha256:"));
/// assert_eq!(manager.history("app").await?.len(), 1);
/// # Ok(())
/// # }
/// ```
pub struct Manager<P: Stores> {
    stores: P,
    catalog: Catalog<P::Store>,
    actor: String,
    via: Option<String>,
    key: Option<Key>,
    epoch: u64,
    platform: Option<PlatformSpec>,
    platforms: Vec<PlatformSpec>,
    stored_sources: SourceAccess,
    unsigned: bool,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// How a [`Manager`] works: who it records, how it signs, what it builds.
#[derive(Debug, Default)]
pub struct ManagerOptions {
    /// Recorded with every command and version (`unknown` when empty).
    pub actor: String,
    /// Signs build manifests; none are made without it.
    pub key: Option<Key>,
    /// `created` of what is built, seconds since 1970 (`SOURCE_DATE_EPOCH`).
    pub epoch: u64,
    /// The platform to pick from a multi-platform base: the nick is then a single image.
    /// Without it (and without `platforms`), a nick registered on a multi-platform base is an
    /// index of every platform of the base (attestations left out), regenerated as a whole.
    pub platform: Option<PlatformSpec>,
    /// The platforms of a multi-platform base that a nick registered on it has (each must be
    /// in the base; one without variant names every variant of it); the nick is an index of
    /// them. Empty: every platform (or `platform` alone).
    pub platforms: Vec<PlatformSpec>,
    /// What the recipe read back from the catalog by [`Manager::edit`] and [`Manager::replay`]
    /// may read: by default only files under their directory, symlinks resolved, so that a
    /// recipe someone else wrote into the catalog cannot read the machine's other files.
    pub stored_sources: SourceAccess,
    /// Keeps the catalog's blobs and the build manifests read from a registry, by digest, so
    /// that checking them again costs no request.
    pub cache: Option<BlobCache>,
    /// Lets a nick whose current version is signed get an unsigned version when no key is
    /// given, recorded in its audit trail; without it, such a regeneration or edit is refused.
    pub unsigned: bool,
}

/// A base as read to check a recipe against it, then built on: one read for both.
struct BaseImage<S> {
    store: S,
    digest: Digest,
    image: BaseKind,
}

/// What a nick is built on: one image, or the chosen platforms of an index.
enum BaseKind {
    One(Box<ops::Image>),
    Index(Box<Index>, PlatformChoice),
}

/// Which platforms of a multi-platform base a version is built on.
struct Shape {
    /// One platform: a single image.
    one: Option<PlatformSpec>,
    /// These platforms (all when empty): an index.
    several: Vec<PlatformSpec>,
}

/// What [`Manager::register`] registers: a recipe, where its files are, and how.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The recipe.
    pub recipe: Recipe,
    /// Where its source files are read from: a recipe file's folder.
    pub dir: PathBuf,
    /// What its `add` and `replace` steps may read: by default only files under `dir`,
    /// symlinks resolved; [`SourceAccess::Anywhere`] for steps typed on a command line.
    pub access: SourceAccess,
    /// The command recorded in the audit trail.
    pub command: String,
    /// Replace the recipe of a nick that has a version: its next version is built from the new
    /// recipe, and the nick answers the current one until it is.
    pub replace: bool,
}

impl Registration {
    /// A registration of `recipe` with its files under `dir`, confined there, recorded as the
    /// `ociup register` command that names its steps.
    pub fn new(recipe: Recipe, dir: impl Into<PathBuf>) -> Self {
        let command = std::iter::once(format!(
            "ociup register {} --base {} --to {}",
            recipe.nick, recipe.base, recipe.target
        ))
        .chain(recipe.commands())
        .collect::<Vec<_>>()
        .join(" ");
        Registration {
            recipe,
            dir: dir.into(),
            access: SourceAccess::Confined,
            command,
            replace: false,
        }
    }
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

/// A stored recipe's source outside the directory: say how to let it read there.
fn outside_hint(e: Error) -> Error {
    match e {
        Error::LayerSource { path, reason } if reason.contains("outside") => Error::LayerSource {
            path,
            reason: format!(
                "{reason}; if you trust this recipe, let it read there \
                 (ociup: --allow-outside; library: ManagerOptions::stored_sources)"
            ),
        },
        e => e,
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidChange {
        reason: reason.into(),
    }
}

impl<P: Stores> Manager<P> {
    /// Records `via` beside the actor in the audit entries and version records this manager
    /// writes: the service that acts for the actor (`ociup serve` records itself so). Left out
    /// of what is written when not set, so records without it read and hash as before.
    #[must_use]
    pub fn with_via(mut self, via: impl Into<String>) -> Self {
        let via = via.into();
        self.via = (!via.is_empty()).then_some(via);
        self
    }

    /// A manager of the nicks in the catalog kept in `catalog`, opening the stores recipes
    /// name with `stores`.
    pub fn new(stores: P, catalog: P::Store, options: ManagerOptions) -> Self {
        let ManagerOptions {
            actor,
            key,
            epoch,
            platform,
            platforms,
            stored_sources,
            cache,
            unsigned,
        } = options;
        let catalog = match cache {
            Some(cache) => Catalog::new(catalog).with_cache(cache),
            None => Catalog::new(catalog),
        };
        Manager {
            stores,
            catalog,
            actor: if actor.is_empty() {
                "unknown".into()
            } else {
                actor
            },
            via: None,
            key,
            epoch,
            platform,
            platforms,
            stored_sources,
            unsigned,
            locks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The same manager, registering nicks on these platforms of a multi-platform base (see
    /// [`ManagerOptions::platforms`]).
    #[must_use]
    pub fn with_platforms(mut self, platforms: Vec<PlatformSpec>) -> Self {
        self.platforms = platforms;
        self
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
            .ok_or_else(|| self.unknown(nick))
    }

    /// The error for a nick the catalog does not hold, naming the catalog searched.
    fn unknown(&self, nick: &str) -> Error {
        invalid(format!(
            "no managed image is registered as {nick:?} in the catalog {}",
            self.catalog.store().location()
        ))
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

    /// Registers a recipe and builds its first version. Everything given is checked before
    /// anything is written (every step's values, the source files and where they are, the
    /// size of the config and manifest on what the base points to now); then a pending entry is
    /// written, so a record exists even if the build fails (the entry is then marked failed).
    /// A nick left pending, failed or unregistered may be registered again; one with a version
    /// only with [`Registration::replace`]. Its audit trail and history go on from the earlier
    /// registration's.
    ///
    /// # Errors
    /// An invalid step, a missing source file or one outside the recipe's directory, an invalid
    /// reference, a version that would exceed the document size cap (nothing written); a nick
    /// registered already; build and store errors.
    pub async fn register(&self, registration: Registration) -> Result<VersionRecord> {
        let Registration {
            recipe,
            dir,
            access,
            command,
            replace,
        } = registration;
        let dir = dir.as_path();
        recipe.check(dir, access)?;
        self.stores.open(&recipe.base, false)?;
        let base = self
            .check_documents(
                &recipe,
                Shape {
                    one: self.platform.clone(),
                    several: self.platforms.clone(),
                },
            )
            .await?;
        let (target, _) = self.stores.open(&recipe.target, true)?;
        let lock = self.lock_for(&recipe.nick);
        let _held = lock.lock().await;
        let prior = self.catalog.get(&recipe.nick).await?;
        // A nick with a version is registered; one left pending or failed (its first build never
        // finished), or unregistered, may be registered again.
        if let Some(e) = &prior
            && e.version.is_some()
            && e.state != State::Removed
            && !replace
        {
            return Err(invalid(format!(
                "{} is registered already; change it with `ociup edit`, or replace its recipe \
                 with `ociup register --replace-recipe`",
                recipe.nick
            )));
        }
        // Versions go on from the earlier registration's, so their tags stay unique.
        let earlier = prior.as_ref().and_then(|p| p.version.clone());
        let number = earlier.as_ref().map_or(1, |(v, _)| v.number + 1);
        // Replacing a nick that has a version (or registering again one that was unregistered)
        // is like an edit: the catalog changes only once the new version is built, so the entry
        // keeps its version chain and state until then, and still does if the build fails (tags
        // `<nick>-<number>` never repeat).
        let in_place = prior.as_ref().is_some_and(|p| p.version.is_some());
        // Replacing the recipe of a signed nick keeps it signed, or says it does not.
        let command = match prior.as_ref().filter(|_| in_place) {
            Some(
                p @ Entry {
                    version: Some((v, _)),
                    ..
                },
            ) => {
                let (signed_target, _) = self.stores.open(&p.recipe.target, false)?;
                match self.signing_for(p, v, &signed_target).await? {
                    Signing::Dropped => format!("{command} --unsigned"),
                    _ => command,
                }
            }
            _ => command,
        };
        let recipe_blob = self.catalog.put_json(&recipe).await?;
        let audit = self
            .catalog
            .put_json(&AuditEntry {
                command,
                time: now(),
                actor: self.actor.clone(),
                via: self.via.clone(),
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
        if !in_place {
            self.catalog.put(&entry).await?;
        }
        match self
            .build_version(
                &recipe,
                dir,
                &target,
                &entry,
                number,
                "registered",
                earlier.as_ref().map(|(_, b)| b),
                base,
            )
            .await
        {
            Ok((record, blob)) => {
                entry.state = State::Ready;
                entry.version = Some((record.clone(), blob));
                self.catalog.put(&entry).await?;
                Ok(record)
            }
            Err(e) if in_place => Err(e),
            Err(e) => {
                entry.state = State::Failed;
                entry.error = Some(e.to_string());
                // The build error is what the caller needs; a failure to record it is secondary.
                let _ = self.catalog.put(&entry).await;
                Err(e)
            }
        }
    }

    /// Checks that the config and manifest a version of `recipe` would have on what its base
    /// points to now stay within [`MAX_DOCUMENT_SIZE`], before anything is written: ociup
    /// writes no document it could not read back.
    async fn check_documents(&self, recipe: &Recipe, shape: Shape) -> Result<BaseImage<P::Store>> {
        let (store, digest) = self.base_digest(&recipe.base).await?;
        let document = ops::load_document(&store, &ManifestRef::Digest(digest.clone())).await?;
        let document = match (document, &shape.one) {
            // Every platform, or those asked for: each is checked as it is built, before
            // anything of the version is written.
            (Document::Index(index), None) => {
                // A platform asked for that the index lacks is refused before anything is
                // written (an entry without a platform object is read when it is built).
                let listed: Vec<serde_json::Map<String, Value>> =
                    serde_json::from_slice::<Value>(index.raw().bytes())
                        .ok()
                        .and_then(|v| v.get("manifests").and_then(Value::as_array).cloned())
                        .unwrap_or_default()
                        .iter()
                        .filter(|e| !is_attestation(e))
                        .map(|e| e["platform"].as_object().cloned())
                        .collect::<Option<_>>()
                        .unwrap_or_default();
                if !listed.is_empty()
                    && let Some(missing) = shape.several.iter().find(|w| {
                        !listed.iter().any(|p| {
                            let have = |k: &str| p.get(k).and_then(Value::as_str);
                            have("os") == Some(w.os.as_str())
                                && have("architecture") == Some(w.architecture.as_str())
                                && (w.variant.is_none() || have("variant") == w.variant.as_deref())
                        })
                    })
                {
                    return Err(invalid(format!(
                        "{} has no manifest for {missing} (it has: {}); nothing was written",
                        recipe.base,
                        listed.iter().map(spec_name).collect::<Vec<_>>().join(", ")
                    )));
                }
                let choice = if shape.several.is_empty() {
                    PlatformChoice::All
                } else {
                    PlatformChoice::Several(shape.several)
                };
                return Ok(BaseImage {
                    store,
                    digest,
                    image: BaseKind::Index(Box::new(index), choice),
                });
            }
            (d, _) => d,
        };
        if !shape.several.is_empty() {
            return Err(invalid(format!(
                "{} is a single image, not a multi-platform index: there are no platforms to \
                 choose from",
                recipe.base
            )));
        }
        let image = ops::image_from_document(&store, document, shape.one.as_ref()).await?;
        let placeholder = Digest::sha256(b"");
        let layer = NewLayer {
            layer: Layer {
                compression: Compression::Gzip,
                digest: placeholder.clone(),
                diff_id: placeholder,
                size: u64::MAX,
            },
            created_by: format!("ociup recipe {}", recipe.nick),
        };
        let has_layer = recipe.steps.iter().any(|s| {
            matches!(
                s,
                Step::Add { .. }
                    | Step::Replace { .. }
                    | Step::Remove { .. }
                    | Step::ClearDir { .. }
            )
        });
        let made = crate::mutate::append(
            crate::mutate::Base::Image {
                manifest: &image.manifest,
                config: &image.config,
                name: Some(&recipe.base),
            },
            if has_layer {
                std::slice::from_ref(&layer)
            } else {
                &[]
            },
            &recipe.config_changes(),
            &recipe.annotations(),
            self.epoch,
        )?;
        for (what, doc) in [("config", &made.config), ("manifest", &made.manifest)] {
            if doc.size() > MAX_DOCUMENT_SIZE {
                return Err(invalid(format!(
                    "the {what} of {} on {} would be {} bytes, more than the {MAX_DOCUMENT_SIZE} \
                     bytes a document may have; nothing was written",
                    recipe.nick,
                    recipe.base,
                    doc.size()
                )));
            }
        }
        Ok(BaseImage {
            store,
            digest,
            image: BaseKind::One(Box::new(image)),
        })
    }

    /// The platforms a new version of a nick is built on, as its current version has them: the
    /// same platforms of an index, or the one platform of a single image (read from its config;
    /// [`ManagerOptions::platform`] for a record of older ociup without it).
    fn shape_of(&self, current: &VersionRecord) -> Shape {
        if !current.platforms.is_empty() {
            return Shape {
                one: None,
                several: current
                    .platforms
                    .iter()
                    .filter_map(|p| p.platform.parse().ok())
                    .collect(),
            };
        }
        let one = current
            .documents
            .as_ref()
            .and_then(|d| d.load(&current.digest.parse().ok()?).ok())
            .and_then(|(_, config)| {
                spec_name(&crate::mutate::platform_of_config(&config))
                    .parse()
                    .ok()
            })
            .or_else(|| self.platform.clone());
        Shape {
            one,
            several: Vec::new(),
        }
    }

    /// Unregisters a nick: its entry is marked removed, with `command` in its audit trail. It
    /// is then neither listed by [`Manager::status`] and [`Manager::upgrade_all`] nor resolved;
    /// its images stay in the target (delete old ones first with [`Manager::gc`]), its history
    /// and audit trail stay readable, and registering it again goes on from them.
    ///
    /// # Errors
    /// An unknown nick, one unregistered already; store errors.
    pub async fn unregister(&self, nick: &str, command: String) -> Result<()> {
        let lock = self.lock_for(nick);
        let _held = lock.lock().await;
        let mut entry = self.entry(nick).await?;
        if entry.state == State::Removed {
            return Err(invalid(format!("{nick} is unregistered already")));
        }
        entry.audit = self
            .catalog
            .put_json(&AuditEntry {
                command,
                time: now(),
                actor: self.actor.clone(),
                via: self.via.clone(),
                previous: Some(entry.audit.digest.to_string()),
            })
            .await?;
        entry.state = State::Removed;
        entry.error = None;
        self.catalog.put(&entry).await
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
        image: &ops::Image,
        epoch: u64,
        dest: &D,
        tag: Option<&str>,
        staging: &Path,
    ) -> Result<ops::AppendOutcome> {
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
                image,
                name: &recipe.base,
            },
            dest,
            tag,
            request,
            staging,
        )
        .await
    }

    /// Builds version `number` from the recipe (sources in `dir`) on `base`, what the base
    /// pointed to when the recipe was checked (read once for both).
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
        base: BaseImage<P::Store>,
    ) -> Result<(VersionRecord, BlobRef)> {
        let BaseImage {
            store: base_store,
            digest: base_digest,
            image,
        } = base;
        let image = match image {
            BaseKind::One(image) => *image,
            BaseKind::Index(index, choice) => {
                return self
                    .build_index_version(
                        recipe,
                        dir,
                        target,
                        entry,
                        (number, reason, previous),
                        (&base_store, &base_digest),
                        (*index, choice),
                    )
                    .await;
            }
        };
        let nick = &recipe.nick;
        let out = self
            .build_image(
                recipe,
                dir,
                &base_store,
                &image,
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
                    recipe: Some(entry.recipe_blob.digest.to_string()),
                };
                Some(
                    attach(
                        target,
                        self.catalog.cache(),
                        key,
                        &out.manifest,
                        &pinned,
                        &predicate,
                    )
                    .await?,
                )
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
            via: self.via.clone(),
            previous: previous.map(|b| b.digest.to_string()),
            build_manifest,
            epoch: self.epoch,
            documents: Some(ImageDocuments::of(&out.manifest, &out.config)?),
            signer: self.key.as_ref().map(Key::key_id),
            platforms: Vec::new(),
            dropped_platforms: Vec::new(),
        };
        let blob = self.catalog.put_json(&record).await?;
        Ok((record, blob))
    }

    /// The recipe built on the chosen platforms of the base index `index` (in `base_store`),
    /// stored in `dest` under `tag`: the own layer built once, each platform's manifest on its
    /// base manifest, and an index of them. Registration, edits and replays of index versions
    /// all build through here.
    #[allow(clippy::too_many_arguments)]
    async fn build_index<D: Store>(
        &self,
        recipe: &Recipe,
        dir: &Path,
        (base_store, index): (&P::Store, Index),
        epoch: u64,
        dest: &D,
        tag: Option<&str>,
        staging: &Path,
        platforms: PlatformChoice,
    ) -> Result<IndexAppendOutcome> {
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
        let made = append_to_base(
            BaseDocument {
                store: base_store,
                document: Document::Index(index),
                name: &recipe.base,
            },
            dest,
            request,
            AppendOptions {
                tag,
                staging,
                platforms,
            },
        )
        .await?;
        match made {
            AppendResult::Index(out) => Ok(out),
            AppendResult::Image(_) => Err(invalid("an index base gave a single image")),
        }
    }

    /// [`Manager::build_version`] on a multi-platform base: an index version, with a signed
    /// build manifest for each platform's manifest and one for the index.
    #[allow(clippy::too_many_arguments)]
    async fn build_index_version(
        &self,
        recipe: &Recipe,
        dir: &Path,
        target: &P::Store,
        entry: &Entry,
        (number, reason, previous): (u64, &str, Option<&BlobRef>),
        (base_store, base_digest): (&P::Store, &Digest),
        (index, choice): (Index, PlatformChoice),
    ) -> Result<(VersionRecord, BlobRef)> {
        let nick = &recipe.nick;
        let out = self
            .build_index(
                recipe,
                dir,
                (base_store, index),
                self.epoch,
                target,
                Some(&format!("{nick}-{number}")),
                &std::env::temp_dir(),
                choice,
            )
            .await?;
        target.put_manifest(&out.index, Some(nick)).await?;
        let pinned = self.stores.pinned(&recipe.target, out.index.digest())?;
        let own = out.layers.len();
        let mut platforms = Vec::with_capacity(out.platforms.len());
        // The own layers are the same bytes on every platform: their files are read once.
        let mut files: Option<Vec<FileEntry>> = None;
        let mut index_predicate = None;
        let commands = match &self.key {
            Some(_) => self.commands(entry).await?,
            None => Vec::new(),
        };
        for p in &out.platforms {
            let build_manifest = match &self.key {
                Some(key) => {
                    let manifest = Manifest::parse(p.manifest.clone())?;
                    if files.is_none() {
                        files = Some(own_files(target, &manifest, own).await?);
                    }
                    let predicate = BuildManifest {
                        nick: nick.clone(),
                        version: number,
                        base: BaseEntry {
                            reference: recipe.base.clone(),
                            digest: p.base.to_string(),
                        },
                        layers: own_layers(&manifest, &image_diff_ids(&p.config)?, own)?,
                        files: files.clone().unwrap_or_default(),
                        commands: commands.clone(),
                        recipe: Some(entry.recipe_blob.digest.to_string()),
                    };
                    let child = self.stores.pinned(&recipe.target, p.manifest.digest())?;
                    let attached = attach(
                        target,
                        self.catalog.cache(),
                        key,
                        &p.manifest,
                        &child,
                        &predicate,
                    )
                    .await?;
                    index_predicate.get_or_insert(predicate);
                    Some(attached)
                }
                None => None,
            };
            platforms.push(PlatformRecord {
                platform: spec_name(&p.platform),
                digest: p.manifest.digest().to_string(),
                base_digest: p.base.to_string(),
                built_in: number,
                build_manifest,
                documents: Some(ImageDocuments::of(&p.manifest, &p.config)?),
            });
        }
        let build_manifest = match (&self.key, index_predicate) {
            (Some(key), Some(mut predicate)) => {
                predicate.base.digest = base_digest.to_string();
                Some(
                    attach(
                        target,
                        self.catalog.cache(),
                        key,
                        &out.index,
                        &pinned,
                        &predicate,
                    )
                    .await?,
                )
            }
            _ => None,
        };
        let record = VersionRecord {
            nick: nick.clone(),
            number,
            image: pinned,
            digest: out.index.digest().to_string(),
            base: recipe.base.clone(),
            base_digest: base_digest.to_string(),
            recipe: entry.recipe_blob.digest.to_string(),
            reason: reason.into(),
            time: now(),
            actor: self.actor.clone(),
            via: self.via.clone(),
            previous: previous.map(|b| b.digest.to_string()),
            build_manifest,
            epoch: self.epoch,
            documents: None,
            signer: self.key.as_ref().map(Key::key_id),
            platforms,
            dropped_platforms: Vec::new(),
        };
        let blob = self.catalog.put_json(&record).await?;
        Ok((record, blob))
    }

    /// Appends steps to a nick's recipe, records the command in its audit trail, and builds a
    /// new version from the whole recipe (sources in `dir`, the earlier steps' too) on what the
    /// base points to now. The new steps read what they name; the stored ones only what
    /// [`ManagerOptions::stored_sources`] allows (by default, files under `dir`).
    ///
    /// # Errors
    /// An unknown or unregistered nick, one without a version, an invalid step, a missing
    /// source file or a stored one outside `dir`, a version that would exceed the document
    /// size cap (nothing written); build and store errors.
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
        if entry.state == State::Removed {
            return Err(invalid(format!(
                "{nick} is unregistered; register it again with `ociup register`"
            )));
        }
        let Some((current, current_blob)) = entry.version.clone() else {
            return Err(invalid(format!("{nick} has no version yet to edit")));
        };
        // A signed nick stays signed, from the recipe it was signed with.
        let (signed_target, _) = self.stores.open(&entry.recipe.target, false)?;
        let command = match self.signing_for(&entry, &current, &signed_target).await? {
            Signing::Dropped => format!("{command} --unsigned"),
            _ => command,
        };
        // The steps typed now read what they name; the stored ones only what
        // `stored_sources` allows. Everything is checked before anything is written.
        let typed = Recipe {
            steps: steps.clone(),
            ..entry.recipe.clone()
        };
        let mut recipe = entry.recipe.clone();
        recipe.steps.extend(steps);
        recipe.validate()?;
        entry
            .recipe
            .check_sources(dir, self.stored_sources)
            .map_err(outside_hint)?;
        typed.check_sources(dir, SourceAccess::Anywhere)?;
        recipe.layer(dir, LayerOptions::default())?;
        let base = self
            .check_documents(&recipe, self.shape_of(&current))
            .await?;
        let (target, _) = self.stores.open(&recipe.target, true)?;
        let recipe_blob = self.catalog.put_json(&recipe).await?;
        let audit = self
            .catalog
            .put_json(&AuditEntry {
                command,
                time: now(),
                actor: self.actor.clone(),
                via: self.via.clone(),
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
                base,
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
        // Deleting a manifest drops every tag on it (in a layout and in a registry alike), so
        // an old version that another tag still names (a copy tagged `stable`, another nick's
        // version of the same image) stays. Read once, only when something is old enough.
        let mut named_elsewhere: Option<Vec<String>> = None;
        for v in versions.iter().skip(keep) {
            if kept.contains(&v.digest.as_str()) || deleted.contains(&v.digest) {
                continue;
            }
            if named_elsewhere.is_none() {
                named_elsewhere = Some(self.digests_tagged_elsewhere(nick, &target).await?);
            }
            if named_elsewhere
                .as_ref()
                .is_some_and(|d| d.contains(&v.digest))
            {
                continue;
            }
            let digest: Digest = v.digest.parse()?;
            // Deleted already when its version tag is gone: a layout keeps the manifest's blob
            // (until a sweep) after its index entries are dropped, so the blob says nothing.
            let listed = match target.resolve_tag(&format!("{nick}-{}", v.number)).await {
                Ok(d) => d.digest().to_string() == v.digest,
                Err(Error::TagNotFound { .. }) => false,
                Err(e) => return Err(e),
            };
            if !listed {
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

    /// The digests that tags of `target` other than `nick`'s own version and build-manifest
    /// tags point to.
    async fn digests_tagged_elsewhere(&self, nick: &str, target: &P::Store) -> Result<Vec<String>> {
        let own_version = |tag: &str| {
            tag.strip_prefix(nick)
                .and_then(|t| t.strip_prefix('-'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        let referrers = |tag: &str| {
            tag.strip_prefix("sha256-")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        let mut digests = Vec::new();
        for tag in target.list_tags().await? {
            if own_version(&tag) || referrers(&tag) {
                continue;
            }
            match target.resolve_tag(&tag).await {
                Ok(d) => digests.push(d.digest().to_string()),
                Err(Error::TagNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(digests)
    }

    /// Resolves every nick (the eager path): each answer, or the error that nick met.
    ///
    /// # Errors
    /// Store errors listing the catalog.
    pub async fn upgrade_all(&self) -> Result<Vec<(String, Result<Resolution>)>> {
        let mut out = Vec::new();
        for nick in self.catalog.nicks().await? {
            let r = self.resolve(&nick, ResolveOptions::default()).await;
            // Unregistered nicks are not upgraded: resolve refuses them, and only then is the
            // entry read again to tell that from a failure.
            if r.is_err()
                && self
                    .catalog
                    .summary(&nick)
                    .await
                    .is_ok_and(|s| s.is_some_and(|s| s.state == State::Removed))
            {
                continue;
            }
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
            .ok_or_else(|| self.unknown(nick))?;
        if summary.state == State::Removed {
            return Err(invalid(format!(
                "{nick} is unregistered; register it again with `ociup register`"
            )));
        }
        // The answer comes from the version record, once the manifest's summary is found to
        // say what the record says and the record to pin an image of the nick's own target.
        // The recipe and record are read through the local cache: no request once seen.
        let entry = self.checked_entry(&summary).await?;
        let Some((record, record_blob)) = entry.version.clone() else {
            return Err(invalid(format!(
                "{nick} has no version yet (state {:?}{})",
                entry.state,
                entry
                    .error
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )));
        };
        let (current, base) = (Current::of(&record), entry.recipe.base.clone());
        // With the key that signed it at hand, the answer is also held against its signed build
        // manifest (read through the cache): it must name this nick, version, image and recipe.
        // (Nicks signed by other keys, in a shared catalog, are answered as without a key.)
        if let Some(key) = &self.key
            && record.build_manifest.is_some()
            && record.signer.as_deref() == Some(key.key_id().as_str())
        {
            let (target, _) = self.stores.open(&entry.recipe.target, false)?;
            self.signing_for(&entry, &record, &target).await?;
        }
        let answer =
            |v: &VersionRecord, upgraded: bool, due: bool, stale: bool, prev: Option<String>| {
                let c = Current::of(v);
                Resolution {
                    nick: nick.to_owned(),
                    reference: c.image,
                    digest: c.digest,
                    version: c.number,
                    upgraded,
                    upgrade_due: due,
                    stale,
                    base_digest: c.base_digest,
                    previous_base_digest: prev,
                    platforms: PlatformSummary::of(v),
                    dropped_platforms: if upgraded {
                        v.dropped_platforms.clone()
                    } else {
                        Vec::new()
                    },
                }
            };
        if opts.offline {
            return Ok(answer(&record, false, false, false, None));
        }
        let (base_store, base_digest) = match self.base_digest(&base).await {
            Ok(x) => x,
            Err(_) if opts.unreachable == Unreachable::Stale => {
                return Ok(answer(&record, false, false, true, None));
            }
            Err(source) => {
                return Err(Error::Backend(Box::new(BaseUnreachable {
                    nick: nick.to_owned(),
                    base,
                    source,
                })));
            }
        };
        if base_digest.to_string() == current.base_digest {
            return Ok(answer(&record, false, false, false, None));
        }
        if opts.check {
            return Ok(answer(&record, false, true, false, None));
        }
        let (next, upgraded) = self
            .regenerate(
                &entry,
                &record,
                &record_blob,
                &base_store,
                &base_digest,
                opts.before_write.as_ref(),
            )
            .await?;
        let previous = upgraded.then(|| current.base_digest.clone());
        Ok(answer(&next, upgraded, false, false, previous))
    }

    /// The entry a summary was read from, once checked: the summary says what the version
    /// record says ([`Summary::check`]), and the record pins an image of the recipe's target.
    async fn checked_entry(&self, summary: &Summary) -> Result<Entry> {
        let entry = self.catalog.entry(summary).await?;
        summary.check(&entry)?;
        if let Some((v, _)) = &entry.version {
            let digest: Digest = v.digest.parse()?;
            // Both through the same normalization, so a target written in an older form
            // compares equal.
            let pinned = |location: &str| self.stores.pinned(location, &digest);
            let in_target = v
                .image
                .strip_suffix(&format!("@{digest}"))
                .map(pinned)
                .transpose()?;
            if in_target != Some(pinned(&entry.recipe.target)?) {
                return Err(Error::InvalidDocument {
                    what: format!("catalog entry of {}", entry.nick),
                    reason: format!(
                        "its version record {} names the image {}, which is not {digest} in its \
                         target {}; the catalog was changed outside ociup",
                        v.number, v.image, entry.recipe.target
                    ),
                });
            }
            if !v.platforms.is_empty() {
                // The platforms the record lists are those of the index it pins, in its
                // order: a record rewritten to name other manifests is refused, not answered
                // or rebuilt on. The index is read through the cache (no request once seen).
                let (target, _) = self.stores.open(&entry.recipe.target, false)?;
                let bytes =
                    BlobCache::read_manifest(self.catalog.cache(), &target, &digest).await?;
                check_index_platforms(&entry.nick, v, &bytes)?;
            }
        }
        Ok(entry)
    }

    /// What signing a new version of a nick means, decided before anything is written: an
    /// unsigned nick stays unsigned; a signed one is signed again, once its current build
    /// manifest verifies with the key and names this nick, version, image and recipe (so a recipe
    /// changed outside ociup is refused, not signed); without a key it is refused, unless
    /// [`ManagerOptions::unsigned`] accepts an unsigned version.
    async fn signing_for(
        &self,
        entry: &Entry,
        current: &VersionRecord,
        target: &P::Store,
    ) -> Result<Signing> {
        let nick = &entry.nick;
        let Some((envelope, size)) = &current.build_manifest else {
            return Ok(Signing::Unsigned);
        };
        let envelope_digest: Digest = envelope.parse()?;
        let Some(key) = &self.key else {
            if self.unsigned {
                return Ok(Signing::Dropped);
            }
            let signer = match &current.signer {
                Some(k) => k.clone(),
                None => BlobCache::read(self.catalog.cache(), target, &envelope_digest, *size)
                    .await
                    .map(|b| envelope_key_ids(&b).join(", "))
                    .unwrap_or_default(),
            };
            let signer = if signer.is_empty() {
                "its signing key".to_owned()
            } else {
                format!("key {signer}")
            };
            return Err(invalid(format!(
                "{nick} is signed (version {} by {signer}) and no signing key was given, so its \
                 new version would be unsigned: give the key with --sign-key FILE (or \
                 OCIUP_SIGNING_KEY), or accept an unsigned version with --unsigned (recorded in \
                 its audit trail)",
                current.number
            )));
        };
        let refuse = |why: String| {
            invalid(format!(
                "{nick} version {} does not check out against its signed build manifest with \
                 key {}, so nothing is answered or signed: {why}",
                current.number,
                key.key_id()
            ))
        };
        let bytes = BlobCache::read(self.catalog.cache(), target, &envelope_digest, *size).await?;
        let statement = match key.public_key().verify(&bytes) {
            Ok(statement) => statement,
            // Signed by another key: its recipe cannot be vouched for with this one. A build
            // manifest that the record says this very key signed and that does not verify is
            // refused, --unsigned or not.
            Err(_) if self.unsigned && current.signer.as_deref() != Some(key.key_id().as_str()) => {
                return Ok(Signing::Dropped);
            }
            Err(e) => {
                return Err(refuse(format!(
                    "{e}; give the key that signed it with --sign-key, or accept an unsigned \
                     version with --unsigned"
                )));
            }
        };
        let recipe = entry.recipe_blob.digest.to_string();
        let predicate = check_statement(
            &statement,
            &current.digest.parse()?,
            Some(&Expected {
                nick,
                version: current.number,
                recipe: Some(&recipe),
            }),
        )
        .map_err(|e| refuse(e.to_string()))?;
        Ok(Signing::Carry(Box::new(predicate)))
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
        before_write: Option<&BeforeWrite>,
    ) -> Result<(VersionRecord, bool)> {
        let recipe = &entry.recipe;
        let nick = &recipe.nick;
        let number = current.number + 1;
        let (target, _) = self.stores.open(&recipe.target, true)?;
        let signing = self.signing_for(entry, current, &target).await?;
        if !current.platforms.is_empty() {
            return self
                .regenerate_index(
                    entry,
                    (current, current_blob),
                    &target,
                    signing,
                    (base_store, base_digest),
                    before_write,
                )
                .await;
        }
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
        let options = |dry_run: bool| RebaseOptions {
            config: ConfigMode::Derive(recipe.config_changes()),
            platforms: Vec::new(),
            // The own layers were built with this epoch: the version keeps it, so a replay
            // reaches the same bytes.
            created: Some(current.epoch),
            new_base_name: Some(recipe.base.clone()),
            dry_run,
            image_config: image_config.clone(),
            // The bases' configs, seen at the last regeneration, cost no request.
            cache: self.catalog.cache().cloned(),
        };
        // The digest is computed first (a dry run writes nothing) for a caller that must learn
        // it, or refuse it, before anything is written.
        let planned = match before_write {
            Some(hook) => {
                let plan = rebase_image(
                    RebaseRequest::new(
                        &target,
                        doc.clone(),
                        base_store,
                        ManifestRef::Digest(base_digest.clone()),
                    ),
                    &target,
                    None,
                    &options(true),
                )
                .await?;
                let planned = Planned {
                    nick: nick.clone(),
                    reference: self.stores.pinned(&recipe.target, &plan.digest.parse()?)?,
                    digest: plan.digest.clone(),
                    version: if plan.already_current {
                        current.number
                    } else {
                        number
                    },
                    base_digest: base_digest.to_string(),
                    new_image: !plan.already_current,
                };
                hook(&planned).await?;
                Some(planned)
            }
            None => None,
        };
        let outcome = rebase_image(
            RebaseRequest::new(
                &target,
                doc,
                base_store,
                ManifestRef::Digest(base_digest.clone()),
            ),
            &target,
            Some(&format!("{nick}-{number}")),
            &options(false),
        )
        .await?;
        if let Some(planned) = &planned
            && planned.digest != outcome.digest
        {
            return Err(invalid(format!(
                "the regeneration of {nick} reached {}, not the {} it planned; nothing was \
                 recorded",
                outcome.digest, planned.digest
            )));
        }
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
                via: self.via.clone(),
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
        let mut dropped_audit = None;
        let build_manifest = match (&self.key, signing) {
            (Some(key), Signing::Carry(carried)) => {
                // Same own layers, same files: the previous predicate, checked, carried over.
                let mut predicate = *carried;
                predicate.version = number;
                predicate.base = BaseEntry {
                    reference: recipe.base.clone(),
                    digest: base_digest.to_string(),
                };
                predicate.recipe = Some(entry.recipe_blob.digest.to_string());
                Some(
                    attach(
                        &target,
                        self.catalog.cache(),
                        key,
                        &document,
                        &pinned,
                        &predicate,
                    )
                    .await?,
                )
            }
            (_, Signing::Dropped) => {
                // Accepted explicitly: the audit trail says so.
                let audit = self
                    .catalog
                    .put_json(&AuditEntry {
                        command: format!("ociup resolve {nick} --unsigned"),
                        time: now(),
                        actor: self.actor.clone(),
                        via: self.via.clone(),
                        previous: Some(entry.audit.digest.to_string()),
                    })
                    .await?;
                dropped_audit = Some(audit);
                None
            }
            _ => None,
        };
        let signer = build_manifest
            .as_ref()
            .and(self.key.as_ref())
            .map(Key::key_id);
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
            via: self.via.clone(),
            previous: Some(current_blob.digest.to_string()),
            build_manifest,
            epoch: current.epoch,
            documents: match &outcome.config {
                Some(config) => Some(ImageDocuments::of(&document, config)?),
                None => None,
            },
            signer,
            platforms: Vec::new(),
            dropped_platforms: Vec::new(),
        };
        let blob = self.catalog.put_json(&record).await?;
        let mut next = entry.clone();
        next.version = Some((record.clone(), blob));
        if let Some(audit) = dropped_audit {
            next.audit = audit;
        }
        self.catalog.put(&next).await?;
        Ok((record, true))
    }

    /// Another process may have recorded a version meanwhile: the same regeneration is
    /// adopted (`Some`); a changed recipe or audit trail is refused.
    async fn recorded_meanwhile(
        &self,
        entry: &Entry,
        current: &VersionRecord,
        digest: &str,
        base_digest: &Digest,
    ) -> Result<Option<(VersionRecord, bool)>> {
        let nick = &entry.nick;
        // Unchanged since it was read (one HEAD), or read again to see what changed.
        if self.catalog.head(nick).await? == entry.manifest {
            return Ok(None);
        }
        let Some(latest) = self.catalog.get(nick).await? else {
            return Ok(None);
        };
        if let Some((v, _)) = &latest.version
            && v.digest == digest
            && v.base_digest == base_digest.to_string()
        {
            return Ok(Some((v.clone(), v.number != current.number)));
        }
        if latest.recipe_blob != entry.recipe_blob || latest.audit != entry.audit {
            return Err(invalid(format!(
                "{nick} was changed by another command while it was regenerated; resolve again"
            )));
        }
        Ok(None)
    }

    /// [`Manager::regenerate`] of an index version: the platforms whose base manifest moved
    /// get new manifests (their own layers reused), the others keep theirs byte for byte, and
    /// a new index of them is written in the base index's order, with the platform objects it
    /// has. A platform the base no longer has is left out (and named in the record); none left
    /// is an error. A platform the base gained is not added (the nick keeps the platforms it
    /// was registered with).
    #[allow(clippy::too_many_lines)]
    async fn regenerate_index(
        &self,
        entry: &Entry,
        (current, current_blob): (&VersionRecord, &BlobRef),
        target: &P::Store,
        signing: Signing,
        (base_store, base_digest): (&P::Store, &Digest),
        before_write: Option<&BeforeWrite>,
    ) -> Result<(VersionRecord, bool)> {
        let recipe = &entry.recipe;
        let nick = &recipe.nick;
        let number = current.number + 1;
        let Document::Index(index) =
            ops::load_document(base_store, &ManifestRef::Digest(base_digest.clone())).await?
        else {
            return Err(invalid(format!(
                "the base {} of {nick} is now a single image, not a multi-platform index as \
                 when version {} was made; register {nick} again (--replace-recipe) to build \
                 on it",
                recipe.base, current.number
            )));
        };
        // The base index's platforms that the nick has, in the base index's order, chosen as
        // append chooses them (an entry without a platform object is for the platform its
        // config names).
        let mut plan: Vec<(serde_json::Map<String, Value>, Digest, usize)> = Vec::new();
        let mut taken = vec![false; current.platforms.len()];
        for (platform, child) in ops::platform_entries(base_store, &index).await? {
            let name = spec_name(&platform);
            let Some(i) = current
                .platforms
                .iter()
                .enumerate()
                .position(|(i, p)| p.platform == name && !taken[i])
            else {
                continue;
            };
            taken[i] = true;
            plan.push((platform, child, i));
        }
        let dropped: Vec<String> = current
            .platforms
            .iter()
            .zip(&taken)
            .filter(|(_, t)| !**t)
            .map(|(p, _)| p.platform.clone())
            .collect();
        if plan.is_empty() {
            return Err(invalid(format!(
                "the base {} of {nick} ({base_digest}) has none of its platforms ({}) any more",
                recipe.base,
                current
                    .platforms
                    .iter()
                    .map(|p| p.platform.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let options = |dry_run: bool, config: Option<crate::config::Config>| RebaseOptions {
            config: ConfigMode::Derive(recipe.config_changes()),
            platforms: Vec::new(),
            created: Some(current.epoch),
            new_base_name: Some(recipe.base.clone()),
            dry_run,
            image_config: config,
            cache: self.catalog.cache().cloned(),
        };
        // Each platform's current manifest (with its config when the record holds it): those
        // kept go into the new index as they are, those whose base manifest moved are rebased.
        let mut olds: Vec<(Document, Option<crate::config::Config>)> = Vec::new();
        for (_, child, i) in &plan {
            let old = &current.platforms[*i];
            if old.base_digest == child.to_string() {
                olds.push((
                    Document::Manifest(Manifest::parse(kept_manifest(old)?)?),
                    None,
                ));
                continue;
            }
            let digest: Digest = old.digest.parse()?;
            olds.push(match old.documents.as_ref().map(|d| d.load(&digest)) {
                Some(Ok((m, c))) => (Document::Manifest(m), Some(c)),
                _ => (
                    ops::load_document(target, &ManifestRef::Digest(digest)).await?,
                    None,
                ),
            });
        }
        // The index is of the family of its manifests, the nick's own (a rebase keeps each
        // image's family), whatever the base index's is now.
        let family = match olds.first().map(|(d, _)| d) {
            Some(Document::Manifest(m)) => m.family(),
            _ => {
                return Err(invalid(format!(
                    "{nick} version {} lists a platform that is not an image manifest",
                    current.number
                )));
            }
        };
        // Each platform whose base manifest moved, rebased (or, `dry`, planned): its manifest
        // and config, or `None` when kept.
        let rebuild = |dry: bool| {
            let (plan, olds) = (&plan, &olds);
            async move {
                let mut made: Vec<Option<(RawDocument, Option<RawDocument>)>> = Vec::new();
                for ((_, child, i), (doc, config)) in plan.iter().zip(olds) {
                    let old = &current.platforms[*i];
                    if old.base_digest == child.to_string() {
                        made.push(None);
                        continue;
                    }
                    let outcome = rebase_image(
                        RebaseRequest::new(
                            target,
                            doc.clone(),
                            base_store,
                            ManifestRef::Digest(child.clone()),
                        ),
                        target,
                        None,
                        &options(dry, config.clone()),
                    )
                    .await?;
                    let document = outcome
                        .document
                        .ok_or_else(|| invalid("the rebase returned no document"))?;
                    made.push(Some((document, outcome.config)));
                }
                Ok::<_, Error>(made)
            }
        };
        let mut annotations = recipe.annotations();
        annotations.insert(
            crate::mutate::annotations::BASE_NAME.to_owned(),
            crate::reference::base_name(&recipe.base),
        );
        annotations.insert(
            crate::mutate::annotations::BASE_DIGEST.to_owned(),
            base_digest.to_string(),
        );
        let index_of =
            |made: &[Option<(RawDocument, Option<RawDocument>)>]| -> Result<RawDocument> {
                let kept: Vec<RawDocument> = plan
                    .iter()
                    .zip(made)
                    .map(|((_, _, i), m)| match m {
                        Some((doc, _)) => Ok(doc.clone()),
                        None => kept_manifest(&current.platforms[*i]),
                    })
                    .collect::<Result<_>>()?;
                let entries: Vec<crate::mutate::IndexEntry<'_>> = plan
                    .iter()
                    .zip(&kept)
                    .map(|((platform, _, _), manifest)| crate::mutate::IndexEntry {
                        manifest,
                        platform: platform.clone(),
                    })
                    .collect();
                let raw = crate::mutate::index_of(family, &entries, &annotations)?;
                crate::store::check_document_size("index", &raw)?;
                Ok(raw)
            };
        // The index of the current manifests, checked (family, platforms, duplicates, size)
        // before anything is written: a rebuilt manifest differs only in its digest and size.
        {
            let current_manifests: Vec<Option<(RawDocument, Option<RawDocument>)>> = olds
                .iter()
                .map(|(d, _)| match d {
                    Document::Manifest(m) => Some((m.raw().clone(), None)),
                    Document::Index(i) => Some((i.raw().clone(), None)),
                })
                .collect();
            index_of(&current_manifests)?;
        }
        // The digest is computed first for a caller that must learn it, or refuse it, before
        // anything is written.
        let planned = match before_write {
            Some(hook) => {
                let digest = index_of(&rebuild(true).await?)?.digest().clone();
                let planned = Planned {
                    nick: nick.clone(),
                    reference: self.stores.pinned(&recipe.target, &digest)?,
                    digest: digest.to_string(),
                    version: number,
                    base_digest: base_digest.to_string(),
                    new_image: true,
                };
                hook(&planned).await?;
                Some(planned)
            }
            None => None,
        };
        let made = rebuild(false).await?;
        let new_index = index_of(&made)?;
        if let Some(planned) = &planned
            && planned.digest != new_index.digest().to_string()
        {
            return Err(invalid(format!(
                "the regeneration of {nick} reached {}, not the {} it planned; nothing was \
                 recorded",
                new_index.digest(),
                planned.digest
            )));
        }
        if let Some(adopted) = self
            .recorded_meanwhile(entry, current, &new_index.digest().to_string(), base_digest)
            .await?
        {
            return Ok(adopted);
        }
        target
            .put_manifest(&new_index, Some(&format!("{nick}-{number}")))
            .await?;
        target.put_manifest(&new_index, Some(nick)).await?;
        let pinned = self.stores.pinned(&recipe.target, new_index.digest())?;
        let (carried, dropped_audit) = match (&self.key, signing) {
            (Some(_), Signing::Carry(carried)) => (Some(*carried), None),
            (_, Signing::Dropped) => {
                let audit = self
                    .catalog
                    .put_json(&AuditEntry {
                        command: format!("ociup resolve {nick} --unsigned"),
                        time: now(),
                        actor: self.actor.clone(),
                        via: self.via.clone(),
                        previous: Some(entry.audit.digest.to_string()),
                    })
                    .await?;
                (None, Some(audit))
            }
            _ => (None, None),
        };
        // Same own layers, same files: the previous predicate, checked, carried over to each
        // new manifest and to the index.
        let sign = |subject: &RawDocument, base: String| {
            let carried = carried.clone();
            let pinned = self.stores.pinned(&recipe.target, subject.digest());
            let subject = subject.clone();
            async move {
                let (Some(key), Some(mut predicate)) = (&self.key, carried) else {
                    return Ok(None);
                };
                predicate.version = number;
                predicate.base = BaseEntry {
                    reference: recipe.base.clone(),
                    digest: base,
                };
                predicate.recipe = Some(entry.recipe_blob.digest.to_string());
                attach(
                    target,
                    self.catalog.cache(),
                    key,
                    &subject,
                    &pinned?,
                    &predicate,
                )
                .await
                .map(Some)
            }
        };
        let mut platforms = Vec::with_capacity(plan.len());
        for ((platform, child, i), m) in plan.iter().zip(made) {
            let old = &current.platforms[*i];
            let record = match m {
                None => old.clone(),
                Some((manifest, config)) if manifest.digest().to_string() == old.digest => {
                    // Its base manifest moved but the image stays the same.
                    drop(config);
                    PlatformRecord {
                        base_digest: child.to_string(),
                        ..old.clone()
                    }
                }
                Some((manifest, config)) => PlatformRecord {
                    platform: spec_name(platform),
                    digest: manifest.digest().to_string(),
                    base_digest: child.to_string(),
                    built_in: number,
                    build_manifest: sign(&manifest, child.to_string()).await?,
                    documents: match &config {
                        Some(config) => Some(ImageDocuments::of(&manifest, config)?),
                        None => None,
                    },
                },
            };
            platforms.push(record);
        }
        let build_manifest = sign(&new_index, base_digest.to_string()).await?;
        let signer = build_manifest
            .as_ref()
            .and(self.key.as_ref())
            .map(Key::key_id);
        let record = VersionRecord {
            nick: nick.clone(),
            number,
            image: pinned,
            digest: new_index.digest().to_string(),
            base: recipe.base.clone(),
            base_digest: base_digest.to_string(),
            recipe: entry.recipe_blob.digest.to_string(),
            reason: "base moved".into(),
            time: now(),
            actor: self.actor.clone(),
            via: self.via.clone(),
            previous: Some(current_blob.digest.to_string()),
            build_manifest,
            epoch: current.epoch,
            documents: None,
            signer,
            platforms,
            dropped_platforms: dropped,
        };
        let blob = self.catalog.put_json(&record).await?;
        let mut next = entry.clone();
        next.version = Some((record.clone(), blob));
        if let Some(audit) = dropped_audit {
            next.audit = audit;
        }
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
        let mut rows: Vec<(Summary, String, Option<Current>)> =
            futures_util::stream::iter(names.iter().map(|n| self.status_row(n)))
                .buffered(8)
                .try_collect()
                .await?;
        // Unregistered nicks are shown only when named.
        if nicks.is_empty() {
            rows.retain(|(s, _, _)| s.state != State::Removed);
        }
        // One lookup per distinct base, several at once.
        let distinct: std::collections::BTreeSet<&String> = rows
            .iter()
            .filter(|(s, _, _)| s.state != State::Removed)
            .map(|(_, base, _)| base)
            .collect();
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
                    (State::Removed, _, _) => ("removed", None),
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
                    signed: summary.signed.unwrap_or(false),
                    signer: summary.signer.clone(),
                    error,
                    platforms: summary.platforms.clone().unwrap_or_default(),
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
            .ok_or_else(|| self.unknown(nick))?;
        let complete = summary.base.is_some()
            && (summary.current.is_some() || summary.state != State::Ready)
            && (summary.signed.is_some() || summary.current.is_none());
        if let (true, Some(base)) = (complete, &summary.base) {
            let (base, current) = (base.clone(), summary.current.clone());
            return Ok((summary, base, current));
        }
        let e = self.catalog.entry(&summary).await?;
        let current = e.version.as_ref().map(|(v, _)| Current::of(v));
        let mut summary = summary;
        if let Some((v, _)) = &e.version {
            summary.signed = Some(v.build_manifest.is_some());
            summary.signer.clone_from(&v.signer);
        }
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
    /// the recorded one. Nothing is written to the stores. The recipe reads only what
    /// [`ManagerOptions::stored_sources`] allows (by default, files under `dir`).
    ///
    /// # Errors
    /// An unknown nick or version, a missing source file or one outside `dir`, store errors.
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
        // Its values were taken when the version was built: a replay repeats them as they are
        // (checks added since must not make an old version unreplayable); its files are
        // checked like any stored recipe's.
        recipe
            .check_sources(dir, self.stored_sources)
            .map_err(outside_hint)?;
        let (base_store, _) = self.stores.open(&recipe.base, false)?;
        let document =
            ops::load_document(&base_store, &ManifestRef::Digest(v.base_digest.parse()?)).await?;
        let scratch =
            tempfile::tempdir().map_err(|e| Error::io("creating a scratch directory", e))?;
        let layout = crate::layout::OciLayout::open_or_create(scratch.path().join("replay"))?;
        if !v.platforms.is_empty() {
            // The platforms the version has, on the base index it recorded: the platforms it
            // kept from earlier versions sit on the same base manifests, so they are rebuilt to
            // the same bytes too.
            let Document::Index(index) = document else {
                return Err(invalid(format!(
                    "{nick} version {number} sits on {}, which is not an index",
                    v.base_digest
                )));
            };
            let platforms = v
                .platforms
                .iter()
                .map(|p| p.platform.parse())
                .collect::<Result<Vec<PlatformSpec>>>()?;
            let out = self
                .build_index(
                    &recipe,
                    dir,
                    (&base_store, index),
                    v.epoch,
                    &layout,
                    None,
                    scratch.path(),
                    PlatformChoice::Several(platforms),
                )
                .await?;
            return Ok((out.index.digest().to_string(), v.digest.clone()));
        }
        let image =
            ops::image_from_document(&base_store, document, self.shape_of(v).one.as_ref()).await?;
        let out = self
            .build_image(
                &recipe,
                dir,
                &base_store,
                &image,
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

    /// Checks a nick's current version against its signed build manifest, as [`verify`] does,
    /// once the catalog entry is found consistent (as a resolve checks it): the build manifest
    /// must name this nick, the version the catalog records, that version's image, and the
    /// recipe the catalog holds (when it names one).
    ///
    /// # Errors
    /// An unknown nick or one without a version, an entry changed outside ociup, and what
    /// [`verify`] refuses.
    pub async fn verify_nick(&self, nick: &str, key: &PublicKey) -> Result<Verified> {
        let summary = self
            .catalog
            .summary(nick)
            .await?
            .ok_or_else(|| self.unknown(nick))?;
        let entry = self.checked_entry(&summary).await?;
        let (v, _) = entry
            .version
            .as_ref()
            .ok_or_else(|| invalid(format!("{nick} has no version yet")))?;
        let (store, _) = self.stores.open(&entry.recipe.target, false)?;
        let recipe = entry.recipe_blob.digest.to_string();
        let expected = Expected {
            nick,
            version: v.number,
            recipe: Some(&recipe),
        };
        let image = ManifestRef::Digest(v.digest.parse()?);
        if v.platforms.is_empty() {
            return verify_expecting(&store, &image, key, Some(&expected)).await;
        }
        // Each platform's manifest must carry the build manifest of the version that built it.
        let Document::Index(index) = ops::load_document(&store, &image).await? else {
            return Err(invalid(format!(
                "{nick} version {} is recorded as an index, but {} is a single image",
                v.number, v.digest
            )));
        };
        verify_index(&store, &index, key, Some(&expected), Some(&v.platforms)).await
    }
}

/// Checks that the platforms an index version's record lists are the entries of the index it
/// pins (`index`, its bytes): the same manifests, platforms and order, none more or fewer.
fn check_index_platforms(nick: &str, v: &VersionRecord, index: &[u8]) -> Result<()> {
    let value: Value =
        serde_json::from_slice(index).map_err(|source| Error::MalformedDocument {
            what: format!("index {}", v.digest),
            source,
        })?;
    let listed: Vec<(String, String)> = value["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let platform = e["platform"].as_object().map(spec_name).unwrap_or_default();
            (
                e["digest"].as_str().unwrap_or_default().to_owned(),
                platform,
            )
        })
        .collect();
    let recorded: Vec<(String, String)> = v
        .platforms
        .iter()
        .map(|p| (p.digest.clone(), p.platform.clone()))
        .collect();
    if listed != recorded {
        let show = |l: &[(String, String)]| {
            l.iter()
                .map(|(d, p)| format!("{p} {d}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Error::InvalidDocument {
            what: format!("catalog entry of {nick}"),
            reason: format!(
                "its version record {} lists the platforms [{}], but the index {} it pins \
                 lists [{}]; the catalog was changed outside ociup",
                v.number,
                show(&recorded),
                v.digest,
                show(&listed)
            ),
        });
    }
    Ok(())
}

/// The manifest of a platform an index version keeps, from its record: it must be the manifest
/// the record names, and sit on the base manifest the record says (its base digest
/// annotation), since it is kept because that base manifest did not move.
fn kept_manifest(p: &PlatformRecord) -> Result<RawDocument> {
    let digest: Digest = p.digest.parse()?;
    let documents = p.documents.as_ref().ok_or_else(|| {
        invalid(format!(
            "the version record lacks the manifest of {} ({digest})",
            p.platform
        ))
    })?;
    let raw = RawDocument::verified(
        documents.manifest.as_bytes().to_vec(),
        documents.media_type.clone(),
        &digest,
    )?;
    let value: Value =
        serde_json::from_slice(raw.bytes()).map_err(|source| Error::MalformedDocument {
            what: format!("manifest {digest}"),
            source,
        })?;
    let on = value["annotations"][crate::mutate::annotations::BASE_DIGEST].as_str();
    if on != Some(p.base_digest.as_str()) {
        return Err(invalid(format!(
            "the manifest {digest} of {} says it sits on the base manifest {}, but the version \
             record says {}; the catalog was changed outside ociup",
            p.platform,
            on.unwrap_or("(none)"),
            p.base_digest
        )));
    }
    Ok(raw)
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

/// Signs the build manifest of `subject` and attaches it as a referrer: the envelope blob, an
/// artifact manifest whose `subject` is the image, and the `<alg>-<hex>` tag index that lists
/// referrers where a store has no referrers API. Returns the envelope's digest and size.
async fn attach<S: Store>(
    store: &S,
    cache: Option<&BlobCache>,
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
    // A resolve with the key checks it: no need to read it back.
    BlobCache::keep(cache, store, &env_digest, &envelope);
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
    verify_expecting(store, image, key, None).await
}

/// [`verify`], with a build manifest that must also name `expected`'s nick, version and recipe
/// (a nick's current version, as the catalog records it). Referrers that name another nick or
/// version of the same image (two nicks with one recipe, a base that moved back) are skipped.
///
/// # Errors
/// As [`verify`]; [`Error::InvalidChange`] when no build manifest names the expected nick and
/// version, or one names another recipe.
pub async fn verify_expecting<S: Store + Clone + 'static>(
    store: &S,
    image: &ManifestRef,
    key: &PublicKey,
    expected: Option<&Expected<'_>>,
) -> Result<Verified> {
    match ops::load_document(store, image).await? {
        Document::Index(index) => verify_index(store, &index, key, expected, None).await,
        Document::Manifest(m) => Ok(verify_manifest(store, &m, key, expected).await?.0),
    }
}

/// The predicate of the first build manifest attached to `digest` that verifies with `key` and
/// names `expected`.
async fn signed_predicate<S: Store>(
    store: &S,
    digest: &Digest,
    key: &PublicKey,
    expected: Option<&Expected<'_>>,
) -> Result<BuildManifest> {
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
        match check_statement(&st, digest, expected) {
            Ok(p) => return Ok(p),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

/// An index checked against its signed build manifest, and each of its manifests against its
/// own: each must name the same nick, a version no later than the index's, and the same own
/// layers and files. With `children` (the platforms of the version record), each manifest
/// must be one of them and its build manifest name the version that built it.
async fn verify_index<S: Store + Clone + 'static>(
    store: &S,
    index: &Index,
    key: &PublicKey,
    expected: Option<&Expected<'_>>,
    children: Option<&[PlatformRecord]>,
) -> Result<Verified> {
    let digest = index.raw().digest().clone();
    let predicate = signed_predicate(store, &digest, key, expected).await?;
    let mut platforms = Vec::new();
    for d in index.parsed().manifests() {
        let child = Digest::try_from(d.digest())?;
        let name = d
            .platform()
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok())
            .and_then(|v| v.as_object().map(spec_name))
            .unwrap_or_default();
        let built_in = match children {
            Some(records) => Some(
                records
                    .iter()
                    .find(|p| p.digest == child.to_string())
                    .ok_or_else(|| {
                        invalid(format!(
                            "index {digest} lists {child} ({name}), which its version record \
                             does not"
                        ))
                    })?
                    .built_in,
            ),
            None => None,
        };
        let want = built_in.map(|version| Expected {
            nick: &predicate.nick,
            version,
            recipe: expected.and_then(|e| e.recipe),
        });
        let m = Manifest::parse(
            store
                .get_manifest(&ManifestRef::Digest(child.clone()))
                .await?,
        )?;
        let (got, child_predicate) = verify_manifest(store, &m, key, want.as_ref()).await?;
        if child_predicate.nick != predicate.nick || child_predicate.version > predicate.version {
            return Err(invalid(format!(
                "{name} ({child}) of index {digest} is signed as {} version {}, not as a \
                 version of {} up to {}",
                child_predicate.nick, child_predicate.version, predicate.nick, predicate.version
            )));
        }
        let mut files = child_predicate.files.clone();
        files.sort();
        let mut index_files = predicate.files.clone();
        index_files.sort();
        if child_predicate.layers != predicate.layers || files != index_files {
            return Err(invalid(format!(
                "the own layers or files of {name} ({child}) differ from those the build \
                 manifest of index {digest} lists"
            )));
        }
        platforms.push(VerifiedPlatform {
            platform: name,
            digest: got.digest,
            version: got.version,
        });
    }
    if let Some(records) = children
        && records.len() != platforms.len()
    {
        return Err(invalid(format!(
            "index {digest} lists {} manifests, its version record {}",
            platforms.len(),
            records.len()
        )));
    }
    Ok(Verified {
        digest: digest.to_string(),
        nick: predicate.nick,
        version: predicate.version,
        layers: predicate.layers.len(),
        files: predicate.files.len(),
        platforms,
    })
}

/// A manifest checked against its signed build manifest (see [`verify`]); with the predicate.
async fn verify_manifest<S: Store + Clone + 'static>(
    store: &S,
    m: &Manifest,
    key: &PublicKey,
    expected: Option<&Expected<'_>>,
) -> Result<(Verified, BuildManifest)> {
    let digest = m.raw().digest().clone();
    let config = ops::image_from_document(store, Document::Manifest(m.clone()), None)
        .await?
        .config;
    let predicate = signed_predicate(store, &digest, key, expected).await?;
    {
        let own = predicate.layers.len();
        // No own layers listed: nothing of the image's contents would be checked.
        if own == 0 {
            return Err(invalid(format!(
                "the build manifest of {digest} lists no own layers, so none of the image's \
                 files can be checked: not verified"
            )));
        }
        // ociup records how many layers are the base's: the rest must all be listed.
        let base_layers = m
            .parsed()
            .annotations()
            .as_ref()
            .and_then(|a| a.get(crate::mutate::annotations::BASE_LAYERS))
            .and_then(|n| n.parse::<usize>().ok());
        let layer_count = m.parsed().layers().len();
        if let Some(base) = base_layers
            && base + own != layer_count
        {
            return Err(invalid(format!(
                "{digest} has {} own layers above its {base} base layers, but its build \
                 manifest lists {own}",
                layer_count.saturating_sub(base)
            )));
        }
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
        Ok((
            Verified {
                digest: digest.to_string(),
                nick: predicate.nick.clone(),
                version: predicate.version,
                layers: own,
                files: files.len(),
                platforms: Vec::new(),
            },
            predicate,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures_util::FutureExt;

    use super::*;
    use crate::layout::OciLayout;
    use crate::managed::layouts::Layouts;

    /// A copy of `fixtures/base` whose tag `cur` names v1, a catalog and a target in `dir`, and
    /// a nick `app` registered on `cur` (one file, one env); then `cur` moves to v2.
    async fn registered(dir: &Path) -> (Manager<Layouts>, OciLayout) {
        registered_on(dir, "base").await
    }

    /// [`registered`] on a copy of the fixture layout `fixture` (`base`, or `multi`: an index).
    async fn registered_on(dir: &Path, fixture: &str) -> (Manager<Layouts>, OciLayout) {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(fixture);
        let base_dir = dir.join("base");
        for entry in walkdir::WalkDir::new(&fixture) {
            let entry = entry.unwrap();
            let to = base_dir.join(entry.path().strip_prefix(&fixture).unwrap());
            if entry.file_type().is_dir() {
                std::fs::create_dir_all(&to).unwrap();
            } else {
                std::fs::copy(entry.path(), &to).unwrap();
            }
        }
        let base = OciLayout::open(&base_dir).unwrap();
        let v1 = base
            .get_manifest(&ManifestRef::Tag("v1".into()))
            .await
            .unwrap();
        base.put_manifest(&v1, Some("cur")).await.unwrap();
        std::fs::write(dir.join("app.conf"), "mode = test\n").unwrap();
        let manager = Manager::new(
            Layouts,
            OciLayout::open_or_create(dir.join("catalog")).unwrap(),
            ManagerOptions {
                actor: "test".into(),
                epoch: 1_700_000_000,
                ..ManagerOptions::default()
            },
        );
        let recipe = Recipe {
            nick: "app".into(),
            base: format!("oci:{}:cur", base_dir.display()),
            target: format!("oci:{}", dir.join("images").display()),
            steps: vec![
                Step::Add {
                    src: "app.conf".into(),
                    dest: "/etc/app.conf".into(),
                },
                Step::Env {
                    key: "MODE".into(),
                    value: "test".into(),
                },
            ],
        };
        manager
            .register(Registration::new(recipe, dir))
            .await
            .unwrap();
        // The base moves to v2.
        let v2 = base
            .get_manifest(&ManifestRef::Tag("v2".into()))
            .await
            .unwrap();
        base.put_manifest(&v2, Some("cur")).await.unwrap();
        (manager, base)
    }

    /// Every file under `dir` with its bytes.
    fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| (e.path().to_owned(), std::fs::read(e.path()).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn before_write_sees_the_digest_the_resolve_answers() {
        let t = tempfile::tempdir().unwrap();
        let (manager, base) = registered(t.path()).await;
        let seen: Arc<Mutex<Vec<(Planned, usize)>>> = Arc::default();
        let keep = Arc::clone(&seen);
        let images = t.path().join("images");
        let opts = ResolveOptions {
            before_write: Some(Arc::new(move |p: &Planned| {
                // What the target holds when the callback runs: nothing of the new version yet.
                let blobs = files(&images).len();
                keep.lock().unwrap().push((p.clone(), blobs));
                async { Ok(()) }.boxed()
            })),
            ..ResolveOptions::default()
        };
        let before = files(&t.path().join("images")).len();
        let answer = manager.resolve("app", opts.clone()).await.unwrap();
        assert!(answer.upgraded);
        let calls = seen.lock().unwrap().clone();
        assert_eq!(calls.len(), 1, "called once");
        let (planned, blobs_then) = &calls[0];
        assert_eq!(blobs_then, &before, "called before anything was written");
        let v2 = base.resolve_tag("v2").await.unwrap().digest().to_string();
        assert_eq!(
            planned,
            &Planned {
                nick: "app".into(),
                reference: answer.reference.clone(),
                digest: answer.digest.clone(),
                version: 2,
                base_digest: v2,
                new_image: true,
            }
        );
        // Nothing to write: not called.
        let again = manager.resolve("app", opts).await.unwrap();
        assert!(!again.upgraded);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn before_write_sees_an_index_version_before_it_is_written() {
        let t = tempfile::tempdir().unwrap();
        let (manager, _base) = registered_on(t.path(), "multi").await;
        assert_eq!(manager.history("app").await.unwrap()[0].platforms.len(), 2);
        let catalog = files(&t.path().join("catalog"));
        let images = files(&t.path().join("images"));
        let refuse = ResolveOptions {
            before_write: Some(Arc::new(|p: &Planned| {
                let reason = format!("refused {} version {}", p.digest, p.version);
                async move { Err(Error::InvalidChange { reason }) }.boxed()
            })),
            ..ResolveOptions::default()
        };
        let err = manager.resolve("app", refuse).await.unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        assert_eq!(files(&t.path().join("catalog")), catalog);
        assert_eq!(files(&t.path().join("images")), images);
        let seen: Arc<Mutex<Vec<Planned>>> = Arc::default();
        let keep = Arc::clone(&seen);
        let opts = ResolveOptions {
            before_write: Some(Arc::new(move |p: &Planned| {
                keep.lock().unwrap().push(p.clone());
                async { Ok(()) }.boxed()
            })),
            ..ResolveOptions::default()
        };
        let answer = manager.resolve("app", opts).await.unwrap();
        assert!(answer.upgraded);
        assert_eq!(seen.lock().unwrap().len(), 1, "called exactly once");
        let planned = seen.lock().unwrap()[0].clone();
        assert_eq!(
            (planned.digest, planned.reference, planned.version),
            (answer.digest, answer.reference, 2)
        );
        assert_eq!(answer.platforms.len(), 2);
    }

    #[tokio::test]
    async fn an_error_from_before_write_leaves_everything_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let (manager, _base) = registered(t.path()).await;
        let catalog = files(&t.path().join("catalog"));
        let images = files(&t.path().join("images"));
        let opts = ResolveOptions {
            before_write: Some(Arc::new(|p: &Planned| {
                let reason = format!("refused {}", p.digest);
                async move { Err(Error::InvalidChange { reason }) }.boxed()
            })),
            ..ResolveOptions::default()
        };
        let err = manager.resolve("app", opts).await.unwrap_err();
        assert!(err.to_string().contains("refused sha256:"), "{err}");
        assert_eq!(files(&t.path().join("catalog")), catalog);
        assert_eq!(files(&t.path().join("images")), images);
        assert_eq!(manager.history("app").await.unwrap().len(), 1);
        // Without the veto the same resolve upgrades.
        let answer = manager
            .resolve("app", ResolveOptions::default())
            .await
            .unwrap();
        assert_eq!((answer.version, answer.upgraded), (2, true));
    }

    #[tokio::test]
    async fn via_is_recorded_beside_the_actor_and_absent_without_it() {
        let t = tempfile::tempdir().unwrap();
        let (manager, _base) = registered(t.path()).await;
        let first = serde_json::to_value(&manager.history("app").await.unwrap()[0]).unwrap();
        assert!(first.get("via").is_none(), "left out when not set: {first}");
        let manager = manager.with_via("ociup-serve@test");
        let answer = manager
            .resolve("app", ResolveOptions::default())
            .await
            .unwrap();
        assert!(answer.upgraded);
        let history = manager.history("app").await.unwrap();
        let newest = history.iter().find(|r| r.number == 2).unwrap();
        assert_eq!(
            (newest.actor.as_str(), newest.via.as_deref()),
            ("test", Some("ociup-serve@test"))
        );
        let older = history.iter().find(|r| r.number == 1).unwrap();
        assert_eq!(serde_json::to_value(older).unwrap(), first, "unchanged");
    }
}

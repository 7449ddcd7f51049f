//! ociup's service mode: an HTTP API (JSON, versioned under `/v1/`) over the managed-image
//! library, for requesters who hold no registry rights. The service holds the registry
//! credentials and the signing key, and bounds itself by an [`Allowlist`]; requesters present
//! bearer tokens ([`tokens`]) whose role says what they may do.
//!
//! The API is described by the OpenAPI document served at `/v1/openapi.json` (kept in the
//! repository as `docs/openapi.json`). Errors are JSON `{"code", "message"}` ([`error::Code`]).
//!
//! ```no_run
//! # async fn f(config: ociup_serve::Config) -> Result<(), Box<dyn std::error::Error>> {
//! let service = ociup_serve::Service::new(config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! ociup_serve::serve(listener, service, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod admission;
pub mod allow;
mod api;
mod blobs;
mod coalesce;
pub mod error;
pub mod metrics;
pub mod ratelimit;
pub mod runs;
pub mod tls;
pub mod tokens;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ociup_core::managed::build_manifest::{Key, PublicKey};
use ociup_core::managed::catalog::{BlobCache, VersionRecord};
use ociup_core::managed::manager::{Manager, ManagerOptions};
use ociup_registry::{AnyStore, Client, Opener};
use tokio_util::task::TaskTracker;

pub use allow::{Access, Allowlist, Guarded};
pub use error::{ApiError, Code};
pub use tls::TlsFiles;
pub use tokens::{Identity, Role, TokenStore};

/// The OpenAPI document the service serves (the repository's `docs/openapi.json`).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// How the service works.
#[derive(Debug)]
pub struct Config {
    /// The catalog: a layout (`oci:/dir`) or a registry repository; must be allowed for writing.
    pub catalog: String,
    /// The registry client, with the service's credentials.
    pub client: Client,
    /// The signing key (PKCS#8 PEM), read for each requester's manager.
    pub key: Option<PathBuf>,
    /// Let a signed nick get an unsigned version when no key is given (see `ociup resolve
    /// --unsigned`).
    pub unsigned: bool,
    /// `created` of what is built, seconds since 1970.
    pub epoch: u64,
    /// Where catalog blobs and build manifests read from a registry are kept by digest.
    pub cache: Option<PathBuf>,
    /// The tokens file.
    pub tokens: PathBuf,
    /// What the service may read and write.
    pub allow: Allowlist,
    /// The largest JSON body taken, in bytes.
    pub body_limit: usize,
    /// The largest upload (a registration's tar), in bytes.
    pub upload_limit: usize,
    /// The longest a request may take; work it started (a regeneration) goes on.
    pub timeout: Duration,
    /// At most this many regenerations at once; more get 503 with `Retry-After`. 0 refuses
    /// every regeneration (only current versions are answered).
    pub max_regenerations: usize,
    /// The `Retry-After` of that 503, in seconds.
    pub retry_after: u64,
    /// The longest a client may take to send a request's head (line and headers); the
    /// connection is closed beyond. Its body is bounded by `timeout`.
    pub header_timeout: Duration,
    /// How long before a request the reads of its nick's catalog tag and base tag may have
    /// begun for a resolve with nothing due (0: after it arrived). See `coalesce.rs`.
    pub fresh_within: Duration,
    /// Runs (Kubernetes Jobs): the cluster, and the namespaces they may use.
    pub runs: runs::RunsConfig,
    /// Requests per second allowed to each token, with a burst; `None`: no limit.
    pub rate_limit: Option<ratelimit::Rate>,
    /// The service's own identity, recorded as `via` beside the requester in what it writes
    /// (`ociup-serve@<hostname>` by default in the CLI).
    pub identity: String,
    /// Serve HTTPS with these files (read again when they change); `None`: plain HTTP.
    pub tls: Option<tls::TlsFiles>,
    /// The role of each client certificate's subject CN (with `tls.client_ca`).
    pub cert_roles: std::collections::BTreeMap<String, Role>,
    /// Serve the mutating admission webhook at `/v1/admission` (docs/serve.md).
    pub admission: Option<admission::Admission>,
}

/// How long after a version was recorded it is counted in `ociup_upgrades_total`
/// ([`Service::count_upgrade_later`]): longer than another replica regenerating the same nick
/// at once takes from its last check of the catalog to writing its own record (a few requests).
pub const COUNT_AFTER: Duration = Duration::from_secs(3);

/// Whether the version a resolve answered as made (`upgraded`, with `digest`), acting for
/// `actor` on the service named `identity`, was recorded here: `seen` is the catalog's record
/// of that version number read after it (`Some(None)`: the catalog has none; `None`: it could
/// not be read). It was when that record has the digest, the actor, and `via` this service
/// (`identity`, or `identity for <caller>` as the admission webhook records it). A record by
/// another replica (another `via`: replicas need identities of their own, as the default
/// `ociup-serve@HOSTNAME` is per pod) was adopted or won the race: not this replica's. A record
/// that cannot be read is counted on the resolve's word.
pub(crate) fn written_here(
    seen: Option<Option<&VersionRecord>>,
    digest: &str,
    actor: &str,
    identity: &str,
) -> bool {
    let Some(seen) = seen else {
        return true;
    };
    seen.is_some_and(|r| {
        let via = r.via.as_deref().unwrap_or_default();
        let ours = via == identity
            || via
                .strip_prefix(identity)
                .is_some_and(|rest| rest.starts_with(" for "));
        r.digest == digest && r.actor == actor && ours
    })
}

/// A service error at start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The tokens file.
    #[error(transparent)]
    Tokens(#[from] tokens::TokenError),
    /// The catalog is outside the allowlist.
    #[error("the catalog {0}")]
    Catalog(#[from] allow::Refused),
    /// The catalog or key cannot be opened.
    #[error(transparent)]
    Core(#[from] ociup_core::Error),
    /// The TLS certificate, key or client CA.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A setting out of its bounds (what [`runs::check_work_limit`] refuses).
    #[error("{0}")]
    Setting(String),
}

/// The service: what every request shares. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    tokens: TokenStore,
    stores: Guarded,
    catalog: AnyStore,
    public_key: Option<PublicKey>,
    managers: Mutex<HashMap<String, Arc<Manager<Guarded>>>>,
    /// One regeneration per nick at a time across requesters (each has its own manager).
    nick_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    regenerations: Arc<tokio::sync::Semaphore>,
    metrics: metrics::Metrics,
    tracker: TaskTracker,
    /// Answers with nothing due: tag reads coalesced, entries known by digest.
    coalesce: coalesce::Coalescer,
    /// What each nick's versions reach, for the blob route.
    reach: blobs::ReachCache,
    runs: runs::Runs,
    limiter: ratelimit::Limiter,
    /// The TLS configuration, read again when its files change.
    tls: Option<Arc<tls::Tls>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("catalog", &self.config.catalog)
            .field("tokens", &self.config.tokens)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Opens the tokens file, the catalog (which must be allowed for writing) and the key.
    ///
    /// # Errors
    /// A malformed tokens file, a catalog outside the allowlist or not openable, a bad key, a
    /// work limit of runs out of its bounds.
    pub fn new(config: Config) -> Result<Service, StartError> {
        runs::check_work_limit(config.runs.work_limit).map_err(StartError::Setting)?;
        let tokens = TokenStore::open(&config.tokens)?;
        let tls = config
            .tls
            .clone()
            .map(tls::Tls::load)
            .transpose()?
            .map(Arc::new);
        config.allow.check(&config.catalog, Access::Write)?;
        let opener = Opener::new(config.client.clone());
        let (catalog, _) = opener.open(&config.catalog, true)?;
        let public_key = match &config.key {
            Some(p) => Some(Key::load(p)?.public_key()),
            None => None,
        };
        let stores = Guarded::new(opener, config.allow.clone());
        Ok(Service {
            inner: Arc::new(Inner {
                regenerations: Arc::new(tokio::sync::Semaphore::new(config.max_regenerations)),
                config,
                tokens,
                stores,
                catalog,
                public_key,
                managers: Mutex::new(HashMap::new()),
                nick_locks: Mutex::new(HashMap::new()),
                metrics: metrics::Metrics::default(),
                tracker: TaskTracker::new(),
                tls,
                coalesce: coalesce::Coalescer::default(),
                reach: blobs::ReachCache::default(),
                runs: runs::Runs::default(),
                limiter: ratelimit::Limiter::default(),
            }),
        })
    }

    /// The HTTP routes, with their middleware.
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// The routes as `(method, path template)`, as the OpenAPI document must list them.
    pub fn routes() -> Vec<(&'static str, &'static str)> {
        api::routes()
    }

    /// The manager acting for `actor`: recorded in the audit trail of what it does. Kept for
    /// the service's life: only for actors the service knows (token names, certificate names
    /// given a role, the service itself), never for names a request makes up.
    fn manager(&self, actor: &str) -> Result<Arc<Manager<Guarded>>, ApiError> {
        let mut managers = self
            .inner
            .managers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(m) = managers.get(actor) {
            return Ok(Arc::clone(m));
        }
        let m = Arc::new(self.new_manager(actor, self.inner.config.identity.clone())?);
        managers.insert(actor.to_owned(), Arc::clone(&m));
        Ok(m)
    }

    /// A manager acting for `actor` with `via` recorded beside it, kept by nobody: for actors
    /// a request names (an admission review's Kubernetes user), dropped with the request.
    fn new_manager(&self, actor: &str, via: String) -> Result<Manager<Guarded>, ApiError> {
        let c = &self.inner.config;
        let key = match &c.key {
            Some(p) => {
                Some(Key::load(p).map_err(|e| ApiError::from_core("reading the signing key", e))?)
            }
            None => None,
        };
        Ok(Manager::new(
            self.inner.stores.clone(),
            self.inner.catalog.clone(),
            ManagerOptions {
                actor: actor.to_owned(),
                key,
                epoch: c.epoch,
                stored_sources: ociup_core::managed::recipe::SourceAccess::Confined,
                cache: c.cache.clone().map(BlobCache::new),
                unsigned: c.unsigned,
                ..ManagerOptions::default()
            },
        )
        .with_via(via))
    }

    /// The service's lock of `nick`, taken by whatever writes it.
    fn nick_lock(&self, nick: &str) -> NickLock {
        let mut locks = self
            .inner
            .nick_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        NickLock {
            lock: Arc::clone(locks.entry(nick.to_owned()).or_default()),
            service: self.clone(),
            nick: nick.to_owned(),
        }
    }

    /// A permit to regenerate, or `busy` with `Retry-After`.
    fn regeneration_permit(&self) -> Result<Regenerating, ApiError> {
        match Arc::clone(&self.inner.regenerations).try_acquire_owned() {
            Ok(permit) => {
                self.inner
                    .metrics
                    .regenerations_in_flight
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(Regenerating {
                    _permit: permit,
                    service: self.clone(),
                })
            }
            Err(_) => {
                self.inner
                    .metrics
                    .regenerations_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut e = ApiError::new(
                    Code::Busy,
                    format!(
                        "{} regeneration(s) are running, as many as the service allows; retry later",
                        self.inner.config.max_regenerations
                    ),
                );
                e.retry_after = Some(self.inner.config.retry_after);
                Err(e)
            }
        }
    }

    /// [`Service::count_upgrade`], [`COUNT_AFTER`] from now, in a task of its own: by then a
    /// replica that recorded the same version a moment after this one has written its record
    /// (the catalog's tag names the last one written; there is no compare-and-swap), and the
    /// read tells which replica's record the history holds. A version recorded just before the
    /// service stops may go uncounted.
    fn count_upgrade_later(
        &self,
        m: Arc<Manager<Guarded>>,
        nick: &str,
        version: u64,
        digest: &str,
        actor: &str,
    ) {
        let (service, nick, digest, actor) = (
            self.clone(),
            nick.to_owned(),
            digest.to_owned(),
            actor.to_owned(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(COUNT_AFTER).await;
            let here = service
                .count_upgrade(&m, &nick, version, &digest, &actor)
                .await;
            tracing::info!(
                nick,
                version,
                digest,
                recorded_here = here,
                "upgrade counted"
            );
        });
    }

    /// Counts in `ociup_upgrades_total` a version that a resolve of `nick` acting for `actor`
    /// answered as made (`upgraded`: version `version`, digest `digest`), once the catalog's
    /// record of that version is found to be this replica's ([`written_here`]). A replica that
    /// lost a race for the nick (it adopted the version another replica recorded meanwhile,
    /// or its record was overwritten by theirs) does not count it: the replicas' counts add up
    /// to the versions the history holds. Whether it was counted.
    async fn count_upgrade(
        &self,
        m: &Manager<Guarded>,
        nick: &str,
        version: u64,
        digest: &str,
        actor: &str,
    ) -> bool {
        let read = async {
            let Some(entry) = m.catalog().get(nick).await? else {
                return Ok(None);
            };
            match &entry.version {
                Some((r, _)) if r.number == version => Ok(Some(r.clone())),
                // Moved on already (a later version recorded meanwhile): the history has it.
                Some((r, _)) if r.number > version => Ok(m
                    .catalog()
                    .history(&entry)
                    .await?
                    .into_iter()
                    .find(|r| r.number == version)),
                _ => Ok(None),
            }
        };
        let read: ociup_core::Result<Option<VersionRecord>> = read.await;
        let seen = match &read {
            Ok(r) => Some(r.as_ref()),
            Err(e) => {
                tracing::warn!(
                    nick,
                    version,
                    "reading the record of the version just made, to count it: {}",
                    error::chain(e)
                );
                None
            }
        };
        let counted = written_here(seen, digest, actor, &self.inner.config.identity);
        if counted {
            self.inner
                .metrics
                .upgrades
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        counted
    }

    /// Runs `work` as a task the service waits for at shutdown, so that a regeneration finishes
    /// even when its request times out or its client goes away.
    async fn run_to_end<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.inner
            .tracker
            .spawn(work)
            .await
            .map_err(|e| ApiError::new(Code::Internal, format!("the work failed: {e}")))?
    }
}

/// The service's lock of one nick (whatever writes the nick takes it).
struct NickLock {
    lock: Arc<tokio::sync::Mutex<()>>,
    service: Service,
    nick: String,
}

impl NickLock {
    async fn lock(&self) -> NickHeld {
        NickHeld {
            _guard: Arc::clone(&self.lock).lock_owned().await,
            service: self.service.clone(),
            nick: self.nick.clone(),
        }
    }

    async fn lock_owned(self) -> NickHeld {
        NickHeld {
            _guard: self.lock.lock_owned().await,
            service: self.service,
            nick: self.nick,
        }
    }
}

/// A nick's lock, held. Released after a write, so it sets aside the reads of the nick's tags
/// begun before (still holding the lock): the next resolve here reads them again, whatever
/// `--fresh-within` says (see `coalesce.rs`).
struct NickHeld {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    service: Service,
    nick: String,
}

impl Drop for NickHeld {
    fn drop(&mut self) {
        self.service.inner.coalesce.forget(&self.nick);
    }
}

/// A running regeneration: holds a permit of the bound, counted in the metrics.
struct Regenerating {
    _permit: tokio::sync::OwnedSemaphorePermit,
    service: Service,
}

impl Drop for Regenerating {
    fn drop(&mut self) {
        self.service
            .inner
            .metrics
            .regenerations_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long after the request timeout a shutdown waits for connections still open (an answer
/// still being streamed) before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves until `shutdown` completes, then stops taking connections, lets the requests in
/// flight finish (for at most the request timeout and [`SHUTDOWN_GRACE`]), and waits for the
/// regenerations they started.
///
/// # Errors
/// Accepting connections failed for good; unauthenticated admission reviews
/// ([`admission::Admission::unauthenticated`]) on a listener that is not on loopback.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    if service
        .inner
        .config
        .admission
        .as_ref()
        .is_some_and(|a| a.unauthenticated)
    {
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{addr}: unauthenticated admission reviews are served on a loopback address \
                     only (anyone who reaches this one could have images regenerated and pinned)"
                ),
            ));
        }
    }
    let app = service.router();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(service.inner.config.header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Some(tls) = &service.inner.tls {
            // The handshake runs in the connection's task, bounded by the header timeout: a
            // client that never finishes it holds nothing for long. Shutdown waits for it
            // (the watcher is taken now) and then closes the connection once idle.
            let (acceptor, watcher, http, app) = (
                tls.acceptor(),
                graceful.watcher(),
                http.clone(),
                app.clone(),
            );
            let (limit, roles) = (
                service.inner.config.header_timeout,
                service.inner.config.cert_roles.clone(),
            );
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, "TLS handshake refused: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake not finished within {limit:?}: closed");
                        return;
                    }
                };
                let cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|leaf| tls::ClientCert::new(leaf, &roles));
                let app = match cert {
                    Some(c) => app.layer(axum::Extension(c)),
                    None => app,
                };
                let conn =
                    http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, "connection: {e}");
                }
            });
            continue;
        }
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
    drop(listener);
    // Requests in flight have the request timeout to be answered; an answer still streaming
    // (a blob to a client that stopped reading) gets SHUTDOWN_GRACE more, then its connection
    // is dropped. Regenerations are waited for below, however long.
    let grace = service.inner.config.timeout + SHUTDOWN_GRACE;
    let drained = tokio::time::timeout(grace, graceful.shutdown()).await;
    if drained.is_err() {
        tracing::warn!(
            "connections still open {}s after shutdown began (a client not reading its \
             answer?): dropped",
            grace.as_secs()
        );
    }
    service.inner.tracker.close();
    service.inner.tracker.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service on a layout catalog, taking unauthenticated admission reviews.
    fn unauthenticated(dir: &std::path::Path) -> Service {
        let catalog = format!("oci:{}/catalog", dir.display());
        Service::new(Config {
            catalog: catalog.clone(),
            client: Client::new(ociup_registry::ClientOptions::default()).expect("client"),
            key: None,
            unsigned: false,
            epoch: 0,
            cache: None,
            tokens: dir.join("tokens.json"),
            allow: Allowlist::new(Vec::new(), vec![catalog]).expect("allowlist"),
            body_limit: 1024,
            upload_limit: 1024,
            timeout: Duration::from_secs(5),
            max_regenerations: 1,
            retry_after: 1,
            header_timeout: Duration::from_secs(5),
            fresh_within: Duration::ZERO,
            runs: runs::RunsConfig::default(),
            rate_limit: None,
            identity: "ociup-serve@test".into(),
            tls: None,
            cert_roles: Default::default(),
            admission: Some(admission::Admission::new(
                Duration::from_secs(1),
                admission::Failure::Refuse,
                true,
                Vec::new(),
            )),
        })
        .expect("service")
    }

    /// A replica named `identity` over the layout catalog `dir/catalog`, reading the layout
    /// `dir/base` and writing `dir/images`.
    fn replica(
        dir: &std::path::Path,
        identity: &str,
        runs: runs::RunsConfig,
    ) -> Result<Service, StartError> {
        let layout = |name: &str| format!("oci:{}", dir.join(name).display());
        Service::new(Config {
            catalog: layout("catalog"),
            client: Client::new(ociup_registry::ClientOptions::default()).expect("client"),
            key: None,
            unsigned: false,
            epoch: 1_700_000_000,
            cache: None,
            tokens: dir.join("tokens.json"),
            allow: Allowlist::new(
                vec![layout("base")],
                vec![layout("catalog"), layout("images")],
            )
            .expect("allowlist"),
            body_limit: 1024,
            upload_limit: 1024,
            timeout: Duration::from_secs(30),
            max_regenerations: 2,
            retry_after: 1,
            header_timeout: Duration::from_secs(5),
            fresh_within: Duration::ZERO,
            runs,
            rate_limit: None,
            identity: identity.into(),
            tls: None,
            cert_roles: Default::default(),
            admission: None,
        })
    }

    /// `from` copied to `to`, recursively.
    fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read_dir") {
            let e = e.expect("entry");
            let target = to.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                copy_tree(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), &target).expect("copy");
            }
        }
    }

    #[test]
    fn a_work_limit_out_of_bounds_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        for limit in [Duration::ZERO, Duration::from_secs(2 * 24 * 3600)] {
            let runs = runs::RunsConfig {
                work_limit: limit,
                ..runs::RunsConfig::default()
            };
            let e = replica(dir.path(), "ociup-serve@a", runs).expect_err("refused");
            assert!(
                matches!(e, StartError::Setting(_))
                    && e.to_string()
                        .contains("the work limit of runs (--work-limit) is"),
                "{e}"
            );
        }
        let runs = runs::RunsConfig {
            work_limit: Duration::from_secs(2),
            ..runs::RunsConfig::default()
        };
        let s = replica(dir.path(), "ociup-serve@a", runs).expect("a short limit is taken");
        assert_eq!(s.inner.config.runs.work_limit, Duration::from_secs(2));
    }

    #[test]
    fn an_upgrade_is_counted_by_the_replica_whose_record_the_catalog_holds() {
        let record: VersionRecord = serde_json::from_value(serde_json::json!({
            "nick": "app", "number": 2, "image": "r/a@sha256:aa", "digest": "sha256:aa",
            "base": "r/b", "base_digest": "sha256:bb", "recipe": "sha256:cc",
            "reason": "base moved", "time": "2026-11-29T08:00:00Z", "actor": "alice",
            "via": "ociup-serve@a", "previous": null, "build_manifest": null, "epoch": 0
        }))
        .expect("a version record");
        let here = |r: &VersionRecord, digest: &str, actor: &str, identity: &str| {
            written_here(Some(Some(r)), digest, actor, identity)
        };
        assert!(here(&record, "sha256:aa", "alice", "ociup-serve@a"));
        // Another replica's record (adopted, or it won the race): not counted here.
        assert!(!here(&record, "sha256:aa", "alice", "ociup-serve@b"));
        assert!(!here(&record, "sha256:aa", "alice", "ociup-serve@"));
        // Another requester's, another digest's.
        assert!(!here(&record, "sha256:aa", "bob", "ociup-serve@a"));
        assert!(!here(&record, "sha256:ff", "alice", "ociup-serve@a"));
        // The admission webhook records `<identity> for <caller>`.
        let webhook = VersionRecord {
            via: Some("ociup-serve@a for kube-apiserver".into()),
            ..record.clone()
        };
        assert!(here(&webhook, "sha256:aa", "alice", "ociup-serve@a"));
        let longer = VersionRecord {
            via: Some("ociup-serve@ab for kube-apiserver".into()),
            ..record.clone()
        };
        assert!(!here(&longer, "sha256:aa", "alice", "ociup-serve@a"));
        // A record with no `via` (a local command's).
        let local = VersionRecord {
            via: None,
            ..record
        };
        assert!(!here(&local, "sha256:aa", "alice", "ociup-serve@a"));
        // No record of that version in the catalog: not counted; unreadable: on the resolve's word.
        assert!(!written_here(
            Some(None),
            "sha256:aa",
            "alice",
            "ociup-serve@a"
        ));
        assert!(written_here(None, "sha256:aa", "alice", "ociup-serve@a"));
    }

    /// Two replicas over one catalog regenerate one nick at once: b's regeneration finds, just
    /// before it records, the same version recorded by a, and adopts it. The manager answers
    /// b `upgraded` too; only a counts it ([`COUNT_AFTER`] later).
    #[tokio::test]
    async fn a_version_adopted_from_another_replica_is_not_counted() {
        use ociup_core::managed::manager::{Planned, Registration, ResolveOptions, Unreachable};
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path();
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/base");
        copy_tree(&fixture, &d.join("base"));
        std::fs::write(d.join("app.conf"), "mode = test\n").expect("write");
        let a = replica(d, "ociup-serve@a", runs::RunsConfig::default()).expect("a");
        let b = replica(d, "ociup-serve@b", runs::RunsConfig::default()).expect("b");
        let (ma, mb) = (
            a.manager("alice").expect("a's"),
            b.manager("alice").expect("b's"),
        );
        let recipe: ociup_core::managed::recipe::Recipe =
            serde_json::from_value(serde_json::json!({
                "nick": "app",
                "base": format!("oci:{}:latest", d.join("base").display()),
                "target": format!("oci:{}", d.join("images").display()),
                "steps": [{"add": {"src": "app.conf", "dest": "/etc/app.conf"}}]
            }))
            .expect("a recipe");
        ma.register(Registration::new(recipe, d))
            .await
            .expect("registered");
        // The base moves: its `latest` names v2's manifest.
        let index_path = d.join("base/index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index_path).expect("index")).expect("json");
        let manifests = index["manifests"].as_array_mut().expect("manifests");
        let name =
            |m: &serde_json::Value| m["annotations"]["org.opencontainers.image.ref.name"].clone();
        let v2 = manifests
            .iter()
            .find(|m| name(m) == "v2")
            .expect("v2")
            .clone();
        for m in manifests.iter_mut().filter(|m| name(m) == "latest") {
            m["digest"] = v2["digest"].clone();
            m["size"] = v2["size"].clone();
        }
        std::fs::write(&index_path, serde_json::to_vec(&index).expect("json")).expect("write");

        // b's regeneration: a makes and records the same version just before b writes.
        let (first, first_m) = (a.clone(), Arc::clone(&ma));
        let opts = ResolveOptions {
            before_write: Some(Arc::new(move |_: &Planned| {
                let (a, m) = (first.clone(), Arc::clone(&first_m));
                Box::pin(async move {
                    let r = a
                        .resolve_pinned(m, "alice", "app", false, false, Unreachable::Fail)
                        .await
                        .map_err(|e| ociup_core::Error::InvalidChange { reason: e.message })?;
                    assert!(r.upgraded && r.version == 2, "{r:?}");
                    Ok(())
                })
            })),
            ..ResolveOptions::default()
        };
        let r = mb.resolve("app", opts).await.expect("b resolves");
        assert!(
            r.upgraded && r.version == 2,
            "the manager answers b as if it made it: {r:?}"
        );
        let counted = b
            .count_upgrade(&mb, "app", r.version, &r.digest, "alice")
            .await;
        assert!(!counted, "b adopted a's version");
        let count = |s: &Service| {
            s.inner
                .metrics
                .upgrades
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        // a counts it COUNT_AFTER after it recorded it (a's resolve answered before b's).
        assert_eq!((count(&a), count(&b)), (0, 0), "not yet counted");
        let end = tokio::time::Instant::now() + COUNT_AFTER + Duration::from_secs(10);
        while count(&a) == 0 {
            assert!(tokio::time::Instant::now() < end, "a never counted it");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!((count(&a), count(&b)), (1, 0));
        // The history holds one version 2: a's.
        let history = ma.history("app").await.expect("history");
        assert_eq!(history.len(), 2);
        assert_eq!(
            (
                history[0].number,
                history[0].via.as_deref(),
                history[0].digest.as_str()
            ),
            (2, Some("ociup-serve@a"), r.digest.as_str())
        );
        // Counted again by a (the replica that recorded it), it would be.
        assert!(a.count_upgrade(&ma, "app", 2, &r.digest, "alice").await);
    }

    /// Releasing a nick's lock (after a write) makes the next resolve read the nick's catalog
    /// tag again, whatever the window.
    #[tokio::test]
    async fn releasing_a_nick_lock_sets_aside_the_reads_of_its_tag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = unauthenticated(dir.path());
        let tags = &s.inner.coalesce;
        let read = |v: &'static str| tags.catalog_tags_for_test("n", Duration::from_secs(60), v);
        assert_eq!(read("e1").await.as_deref(), Some("e1"));
        assert_eq!(read("e2").await.as_deref(), Some("e1"), "within the window");
        {
            let lock = s.nick_lock("n");
            let _held = lock.lock().await;
        }
        assert_eq!(read("e3").await.as_deref(), Some("e3"), "read again");
        s.nick_lock("n").lock_owned().await;
        assert_eq!(read("e4").await.as_deref(), Some("e4"), "read again");
    }

    #[tokio::test]
    async fn unauthenticated_admission_is_served_on_loopback_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = unauthenticated(dir.path());
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
            .await
            .expect("bind");
        let e = serve(listener, s.clone(), std::future::pending())
            .await
            .expect_err("refused off loopback");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("loopback"), "{e}");
        // On loopback it serves (and stops when told).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        serve(listener, s, std::future::ready(()))
            .await
            .expect("served on loopback");
    }
}

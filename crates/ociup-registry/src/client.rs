//! The HTTP client: one per process or per operation, shared by every repository handle made
//! from it. It owns the connection pool, the bound on concurrent requests, what it learned about
//! each registry (scheme, auth scheme, tokens per scope set) and the retry policy.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::{Mutex, Semaphore};
use url::Url;

use crate::auth::token::{self, Token};
use crate::auth::{Credential, Credentials, challenge};
use crate::body::{self, answer_deadline};
use crate::error::{Error, Result, display_url, excerpt};
use crate::policy::{RedirectStep, credentials_may_go, redirect_step, refused_target};
use crate::reference::{Reference, is_loopback_host};
use crate::repository::Repository;

/// How failed requests are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles with each further one, with jitter.
    pub base_delay: Duration,
    /// Longest single delay, `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
        }
    }
}

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Where credentials come from.
    pub credentials: Credentials,
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback registries may always fall
    /// back to plain HTTP when HTTPS fails; no other registry ever does.
    pub insecure: Vec<String>,
    /// A PEM file of extra CA certificates, trusted beside the system roots.
    pub ca_file: Option<PathBuf>,
    /// Requests in flight at once, across all registries of this client.
    pub max_concurrent_requests: usize,
    /// Retries of failed requests.
    pub retry: RetryPolicy,
    /// Blobs up to this size are uploaded in one PUT (streamed beyond 1 MiB, never held whole);
    /// larger ones stream in one PATCH, then an empty PUT commits them. A streamed upload keeps
    /// the last 4 MiB it sent (or this size, if smaller) to resume from where the registry
    /// stopped: about the most a single upload holds in memory, beside the pieces in flight.
    pub chunk_size: usize,
    /// Times a broken blob download is resumed with `Range`.
    pub download_resumes: u32,
    /// The User-Agent header.
    pub user_agent: String,
    /// Check every blob a manifest references (one HEAD each) before putting the manifest.
    /// Off (the default), a writer puts the manifest first and supplies only the blobs the
    /// registry names in its `MANIFEST_BLOB_UNKNOWN` refusal, as Distribution gives. The
    /// distribution spec lets a registry store a manifest whatever it references: turn this on
    /// for one that does.
    pub check_blobs_first: bool,
    /// The longest a registry may stay silent: for the answer to a request to start (plus a
    /// second per 16 KiB of request body, sent meanwhile), and within any answer, where less
    /// than 1 KiB in this time counts as silence (a registry trickling a byte a second). Also
    /// the longest a registry may go without taking any of a streamed upload's body (a registry
    /// that stops reading). A request that times out is retried, a blob download or upload
    /// resumed, as for a broken connection. Default: 60 s.
    pub idle_timeout: Duration,
    /// Fixed addresses for host names, used instead of DNS (as curl's `--resolve`): for split
    /// horizons and tests.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// Where the client keeps, between processes, which registries check a manifest's blobs
    /// and which blobs repositories hold (for a day each), so that the next process writing
    /// there need not ask again; `None` (the default) keeps them for this client's life only.
    /// The CLI uses `ociup`'s data directory.
    pub state_dir: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            credentials: Credentials::anonymous(),
            insecure: Vec::new(),
            ca_file: None,
            max_concurrent_requests: 8,
            retry: RetryPolicy::default(),
            chunk_size: 8 * 1024 * 1024,
            download_resumes: 3,
            user_agent: concat!("ociup/", env!("CARGO_PKG_VERSION")).to_owned(),
            check_blobs_first: false,
            idle_timeout: Duration::from_secs(60),
            resolve: Vec::new(),
            state_dir: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
enum AuthScheme {
    /// Not known yet: requests go without credentials until a 401 says what to do.
    #[default]
    Unknown,
    Basic(HeaderValue),
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Debug, Default)]
struct RegistryState {
    scheme: Option<&'static str>,
    auth: AuthScheme,
    tokens: HashMap<String, Token>,
    credential: Option<Credential>,
}

struct Inner {
    /// For plain HTTP: built without loading any root certificate, which takes several
    /// milliseconds (a rebase on a loopback registry takes little more).
    plain: reqwest::Client,
    /// For HTTPS, with the system roots (and the CA file's): built on first use.
    tls: std::sync::OnceLock<reqwest::Client>,
    /// The CA file's certificates, for `tls`.
    extra_roots: Vec<reqwest::Certificate>,
    opts: ClientOptions,
    permits: Semaphore,
    registries: Mutex<HashMap<String, RegistryState>>,
    /// Held while a token is fetched, so concurrent requests wanting the same scope set wait for
    /// one fetch instead of each making their own.
    token_fetch: Mutex<()>,
    requests: AtomicU64,
    token_fetches: AtomicU64,
    /// Registries (API hosts) seen refusing a manifest for blobs they lacked, naming them: they
    /// check a manifest's blobs, so their taking a manifest proves it complete; and blobs seen
    /// in repositories. Kept in `opts.state_dir` between processes.
    known: crate::known::Known,
}

/// A registry client. Cheap to clone; clones share connections, tokens and limits.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("insecure", &self.inner.opts.insecure)
            .field("requests", &self.requests_sent())
            .finish_non_exhaustive()
    }
}

/// Where a request goes.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A path under the registry's root, starting with `/v2/`.
    Path(String),
    /// A full URL (an upload `Location`).
    Url(Url),
}

/// One request, replayable: bodies are in memory so retries and re-authentication can resend.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    pub method: Method,
    pub target: Target,
    /// Token scopes the request needs (`repository:name:pull,push`).
    pub scopes: Vec<String>,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// Whether a failure that may pass (5xx, 429, a broken connection) is tried again.
    pub retry: bool,
}

impl Request {
    pub fn new(method: Method, target: Target, scopes: Vec<String>) -> Self {
        Request {
            method,
            target,
            scopes,
            headers: HeaderMap::new(),
            body: None,
            retry: true,
        }
    }

    /// Sent once: a failure is answered as it is, not tried again (a probe whose failure has a
    /// fallback).
    pub fn once(mut self) -> Self {
        self.retry = false;
        self
    }

    pub fn header(mut self, name: reqwest::header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    pub fn body(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }
}

impl Client {
    /// A client with these options.
    ///
    /// # Errors
    /// [`Error::Config`] when the CA file cannot be read or parsed.
    pub fn new(opts: ClientOptions) -> Result<Client> {
        let mut extra_roots = Vec::new();
        if let Some(ca) = &opts.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::Config(format!("reading CA file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::Config(format!(
                    "CA file {} holds no usable PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "CA file {} holds no PEM certificate",
                    ca.display()
                )));
            }
            extra_roots = certs;
        }
        // A redirect from plain HTTP to HTTPS is not followed by this client (it trusts no
        // root): `send` hands it to the HTTPS one.
        let plain = Self::builder(&opts)
            .tls_built_in_root_certs(false)
            .redirect(redirect_policy(true))
            .build()
            .map_err(|e| Error::Config(format!("setting up HTTP: {e}")))?;
        let known = crate::known::Known::new(opts.state_dir.as_deref());
        Ok(Client {
            inner: Arc::new(Inner {
                permits: Semaphore::new(opts.max_concurrent_requests.max(1)),
                plain,
                tls: std::sync::OnceLock::new(),
                extra_roots,
                opts,
                registries: Mutex::new(HashMap::new()),
                token_fetch: Mutex::new(()),
                requests: AtomicU64::new(0),
                token_fetches: AtomicU64::new(0),
                known,
            }),
        })
    }

    fn builder(opts: &ClientOptions) -> reqwest::ClientBuilder {
        let mut b = reqwest::Client::builder()
            .user_agent(opts.user_agent.clone())
            .connect_timeout(
                Duration::from_secs(15).min(opts.idle_timeout.max(Duration::from_millis(1))),
            )
            .pool_idle_timeout(Duration::from_secs(60))
            // Credentials never follow a redirect to another origin (a blob download sent to
            // object storage) and no redirect downgrades to plain HTTP or leads to a
            // link-local or metadata address: see `redirect_step`.
            .redirect(redirect_policy(false));
        for (host, addr) in &opts.resolve {
            b = b.resolve(host, *addr);
        }
        b
    }

    /// The HTTP client for `url`: the plain one for `http://`, else the HTTPS one (built now if
    /// this is the first HTTPS request).
    fn http_for(&self, url: &Url) -> Result<&reqwest::Client> {
        if url.scheme() == "http" {
            return Ok(&self.inner.plain);
        }
        if let Some(c) = self.inner.tls.get() {
            return Ok(c);
        }
        let mut builder = Self::builder(&self.inner.opts);
        for c in &self.inner.extra_roots {
            builder = builder.add_root_certificate(c.clone());
        }
        let built = builder
            .build()
            .map_err(|e| Error::Config(format!("setting up HTTPS: {e}")))?;
        // Two first requests at once may both build one: either is fine.
        Ok(self.inner.tls.get_or_init(|| built))
    }

    /// A handle on one repository.
    pub fn repository(&self, reference: &Reference) -> Repository {
        Repository::new(self.clone(), reference)
    }

    /// Checks the credentials this client has for `registry` (`host[:port]`, as in references):
    /// asks the registry's API root (`GET /v2/`), authenticating as it asks, as `docker login`
    /// does.
    ///
    /// # Errors
    /// [`Error::Http`] with status 401 (saying whether credentials were refused or none were
    /// found), [`Error::Auth`] when the token endpoint refuses them, transport errors.
    pub async fn check_login(&self, registry: &str) -> Result<()> {
        let api_host = Reference::parse(&format!("{registry}/ociup-login-check"))
            .map_err(|e| Error::Config(format!("{registry:?} is not a registry: {e}")))?
            .api_host()
            .to_owned();
        let req = Request::new(Method::GET, Target::Path("/v2/".into()), Vec::new());
        self.send_expect(&api_host, &req, &[200]).await.map(drop)
    }

    /// HTTP requests sent so far (retries and token fetches not included in the latter).
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Whether `registry` (its API host) has refused a manifest through this client naming the
    /// blobs it lacked: such a registry checks a manifest's blobs, and its taking a manifest
    /// proves it has them. The distribution spec lets a registry take a manifest without them.
    pub(crate) fn checks_blobs(&self, registry: &str) -> bool {
        self.inner.known.checks_blobs(registry)
    }

    /// Notes that `registry` refused a manifest naming the blobs it lacked.
    pub(crate) fn note_checks_blobs(&self, registry: &str) {
        self.inner.known.note_checks_blobs(registry);
    }

    /// Whether `repository` of `registry` was seen holding `digest` (within a day).
    pub(crate) fn knows_blob(&self, registry: &str, repository: &str, digest: &str) -> bool {
        self.inner.known.has_blob(registry, repository, digest)
    }

    /// Notes that `repository` of `registry` holds these blobs.
    pub(crate) fn note_blobs<'a>(
        &self,
        registry: &str,
        repository: &str,
        digests: impl Iterator<Item = &'a str>,
    ) {
        self.inner.known.note_blobs(registry, repository, digests);
    }

    /// Writes what was learnt of registries to [`ClientOptions::state_dir`] now (it is written
    /// when the last clone of the client is dropped too).
    pub fn save_state(&self) {
        self.inner.known.save();
    }

    /// Tokens fetched so far.
    pub fn token_fetches(&self) -> u64 {
        self.inner.token_fetches.load(Ordering::Relaxed)
    }

    pub(crate) fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    async fn url_for(&self, registry: &str, target: &Target) -> Result<(Url, bool)> {
        match target {
            Target::Url(u) => Ok((u.clone(), true)),
            Target::Path(p) => {
                let known = self.known_scheme(registry).await;
                let scheme = known.unwrap_or_else(|| self.default_scheme(registry));
                let url = Url::parse(&format!("{scheme}://{registry}{p}")).map_err(|e| {
                    Error::Config(format!("cannot make a URL for {registry}{p}: {e}"))
                })?;
                Ok((url, known.is_some()))
            }
        }
    }

    /// The scheme `registry` is known to speak, once a request has reached it.
    async fn known_scheme(&self, registry: &str) -> Option<&'static str> {
        self.inner
            .registries
            .lock()
            .await
            .get(registry)
            .and_then(|s| s.scheme)
    }

    fn default_scheme(&self, registry: &str) -> &'static str {
        if self.inner.opts.insecure.iter().any(|r| r == registry) {
            "http"
        } else {
            "https"
        }
    }

    async fn credential(&self, registry: &str) -> Result<Credential> {
        if let Some(c) = self
            .inner
            .registries
            .lock()
            .await
            .get(registry)
            .and_then(|s| s.credential.clone())
        {
            return Ok(c);
        }
        let creds = self.inner.opts.credentials.clone();
        let reg = registry.to_owned();
        // A credential helper is a process; keep it off the async threads.
        let c = tokio::task::spawn_blocking(move || creds.lookup(&reg))
            .await
            .map_err(|e| Error::Auth {
                registry: registry.to_owned(),
                reason: format!("credential lookup failed: {e}"),
            })?
            .map_err(|reason| Error::Auth {
                registry: registry.to_owned(),
                reason,
            })?;
        self.update(registry, |st| st.credential = Some(c.clone()))
            .await;
        Ok(c)
    }

    /// The Authorization header for a request, fetching a token for its scopes when the registry
    /// is known to want one and none is cached or the cached one expired.
    async fn authorization(
        &self,
        registry: &str,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>> {
        let auth = self
            .inner
            .registries
            .lock()
            .await
            .get(registry)
            .map(|s| s.auth.clone())
            .unwrap_or_default();
        match auth {
            AuthScheme::Unknown => Ok(None),
            AuthScheme::Basic(h) => Ok(Some(h)),
            AuthScheme::Bearer { realm, service } => {
                let key = scope_key(scopes);
                let token = match self.cached_token(registry, &key).await {
                    Some(t) => t,
                    None => {
                        let _one_at_a_time = self.inner.token_fetch.lock().await;
                        // Another request may have fetched it while this one waited.
                        match self.cached_token(registry, &key).await {
                            Some(t) => t,
                            None => {
                                self.fetch_token(registry, &realm, service.as_deref(), scopes)
                                    .await?
                            }
                        }
                    }
                };
                Ok(HeaderValue::from_str(&format!("Bearer {}", token.value)).ok())
            }
        }
    }

    async fn cached_token(&self, registry: &str, key: &str) -> Option<Token> {
        self.inner
            .registries
            .lock()
            .await
            .get(registry)
            .and_then(|s| s.tokens.get(key).cloned())
            .filter(Token::is_fresh)
    }

    async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Token> {
        let credential = self.credential(registry).await?;
        let realm_url = Url::parse(realm).map_err(|e| Error::Auth {
            registry: registry.to_owned(),
            reason: format!(
                "the token realm {:?} is not a URL: {e}",
                excerpt(realm, 200)
            ),
        })?;
        if let Some(why) = refused_target(&realm_url) {
            return Err(Error::Auth {
                registry: registry.to_owned(),
                reason: format!("the token realm: {why}"),
            });
        }
        // The realm's own host decides, not the registry's: a loopback or insecure registry
        // may name a realm anywhere.
        if credential != Credential::Anonymous
            && !credentials_may_go(&realm_url, &self.inner.opts.insecure)
        {
            return Err(Error::Auth {
                registry: registry.to_owned(),
                reason: format!(
                    "the token realm {} is plain HTTP; credentials are not sent there in clear \
                     text (name its host with --insecure-registry to allow it)",
                    display_url(&realm_url)
                ),
            });
        }
        self.inner.token_fetches.fetch_add(1, Ordering::Relaxed);
        let t = token::fetch(
            self.http_for(&realm_url)?,
            token::TokenRequest {
                registry,
                realm: &realm_url,
                service,
                scopes,
                credential: &credential,
                idle: self.inner.opts.idle_timeout,
            },
        )
        .await?;
        self.update(registry, |st| {
            st.tokens.insert(scope_key(scopes), t.clone());
        })
        .await;
        Ok(t)
    }

    /// Learns how to authenticate from a 401. Returns whether retrying with credentials makes
    /// sense.
    async fn learn_auth(&self, registry: &str, resp: &Response, scopes: &[String]) -> Result<bool> {
        let challenges: Vec<challenge::Challenge> = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(challenge::parse)
            .collect();
        if let Some(b) = challenges.iter().find(|c| c.scheme == "bearer") {
            let Some(realm) = b.params.get("realm").cloned() else {
                return Err(Error::Auth {
                    registry: registry.to_owned(),
                    reason: "the bearer challenge names no realm".into(),
                });
            };
            let service = b.params.get("service").cloned();
            let mut wanted: Vec<String> = scopes.to_vec();
            if let Some(s) = b.params.get("scope") {
                wanted.extend(s.split(' ').map(str::to_owned));
            }
            wanted.sort();
            wanted.dedup();
            self.update(registry, |st| {
                st.auth = AuthScheme::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                };
            })
            .await;
            let token = self
                .fetch_token(registry, &realm, service.as_deref(), &wanted)
                .await?;
            // Requests with the original scope set use this token too.
            self.update(registry, |st| {
                st.tokens.insert(scope_key(scopes), token);
            })
            .await;
            return Ok(true);
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let Credential::Basic { username, password } = self.credential(registry).await? else {
                return Ok(false);
            };
            let header = basic_header(&username, &password);
            self.update(registry, |st| st.auth = AuthScheme::Basic(header))
                .await;
            return Ok(true);
        }
        Ok(false)
    }

    /// Sends a request: authenticates on a 401 (once), retries what may pass with backoff and
    /// jitter, honours `Retry-After`, and on a loopback registry falls back from HTTPS to HTTP.
    /// The response may still be an error status; see [`Client::check`].
    pub(crate) async fn send(&self, registry: &str, req: &Request) -> Result<Response> {
        let policy = &self.inner.opts.retry;
        let mut attempt: u32 = 0;
        let mut authenticated = false;
        let mut fell_back = false;
        if let Target::Url(u) = &req.target
            && let Some(why) = refused_target(u)
        {
            return Err(Error::Protocol {
                url: display_url(u),
                reason: why,
            });
        }
        let deadline = answer_deadline(
            self.inner.opts.idle_timeout,
            req.body.as_ref().map_or(0, Bytes::len),
        );
        loop {
            let (url, scheme_known) = self.url_for(registry, &req.target).await?;
            let auth = if self.same_origin(registry, &req.target).await {
                self.authorization(registry, &req.scopes).await?
            } else {
                None
            };
            let mut rb = self
                .http_for(&url)?
                .request(req.method.clone(), url.clone())
                .headers(req.headers.clone());
            if let Some(h) = auth {
                rb = rb.header(AUTHORIZATION, h);
            }
            if let Some(b) = &req.body {
                rb = rb.body(b.clone());
            }
            let sent = {
                let _permit =
                    self.inner.permits.acquire().await.map_err(|_| {
                        Error::Config("the client's request limit was closed".into())
                    })?;
                self.inner.requests.fetch_add(1, Ordering::Relaxed);
                let answer = async {
                    match rb.send().await {
                        Ok(r) if r.status().is_redirection() && url.scheme() == "http" => {
                            self.follow_to_https(req, r).await
                        }
                        Ok(r) => Ok(r),
                        Err(e) => Err(transport_error(&req.method, &url, &e)),
                    }
                };
                match tokio::time::timeout(deadline, answer).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Transport {
                        method: req.method.to_string(),
                        url: display_url(&url),
                        reason: format!("timed out: no answer within {}", body::secs(deadline)),
                        retryable: true,
                    }),
                }
            };
            match sent {
                Err(err) => {
                    // A certificate problem means the server speaks TLS: plain HTTP would only
                    // hide the real error.
                    let tls_spoken = err.to_string().to_ascii_lowercase().contains("certificate");
                    if !scheme_known
                        && !fell_back
                        && !tls_spoken
                        && url.scheme() == "https"
                        && is_loopback_host(registry)
                        && matches!(req.target, Target::Path(_))
                    {
                        tracing::debug!(
                            registry,
                            "HTTPS failed on a loopback registry, trying HTTP"
                        );
                        fell_back = true;
                        self.set_scheme(registry, "http").await;
                        continue;
                    }
                    if req.retry && err.is_retryable() && attempt + 1 < policy.max_attempts {
                        let delay = backoff(policy, attempt);
                        attempt += 1;
                        tracing::debug!(%err, attempt, ?delay, "retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(err);
                }
                Ok(resp) => {
                    if !scheme_known && matches!(req.target, Target::Path(_)) {
                        self.set_scheme(
                            registry,
                            if url.scheme() == "http" {
                                "http"
                            } else {
                                "https"
                            },
                        )
                        .await;
                    }
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && !authenticated {
                        authenticated = true;
                        // Only the registry itself may ask for its credentials: a 401 from a
                        // host that a redirect, an upload Location or a Link led to is answered
                        // as it is, so the registry's login never goes to a realm it names.
                        let from_registry = resp.url().host_str() == url.host_str()
                            && resp.url().port_or_known_default() == url.port_or_known_default()
                            && self.same_origin(registry, &req.target).await;
                        if from_registry && self.learn_auth(registry, &resp, &req.scopes).await? {
                            continue;
                        }
                        return Ok(resp);
                    }
                    let retryable = matches!(status.as_u16(), 408 | 429)
                        || (status.is_server_error() && !matches!(status.as_u16(), 501 | 505));
                    if req.retry && retryable && attempt + 1 < policy.max_attempts {
                        let delay = retry_after(&resp)
                            .map(|d| d.min(policy.max_delay))
                            .unwrap_or_else(|| backoff(policy, attempt));
                        attempt += 1;
                        tracing::debug!(
                            method = %req.method,
                            url = %display_url(&url),
                            %status,
                            attempt,
                            ?delay,
                            "retrying"
                        );
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Ok(resp);
                }
            }
        }
    }

    /// Whether a request to `target` may carry the registry's credentials: they go only to the
    /// registry itself, so an upload Location or a Link naming another host (or plain HTTP where
    /// the registry speaks HTTPS) gets none.
    async fn same_origin(&self, registry: &str, target: &Target) -> bool {
        match target {
            Target::Path(_) => true,
            Target::Url(u) => {
                let host = u.host_str().unwrap_or("");
                let authority = match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_owned(),
                };
                let known = self.known_scheme(registry).await;
                authority.trim_start_matches('[').replace(']', "")
                    == registry.trim_start_matches('[').replace(']', "")
                    && known.is_none_or(|k| k == u.scheme())
            }
        }
    }

    /// Sends `req` once with a streamed `body` of `len` bytes (announced as its
    /// `Content-Length`) instead of the request's own: no retry, no re-authentication and no
    /// redirect, since the body cannot be sent twice. The caller has already authenticated for
    /// the request's scopes (the upload's POST did), and resumes from the registry's offset
    /// itself. The response may be an error status.
    pub(crate) async fn send_streamed(
        &self,
        registry: &str,
        req: &Request,
        body: reqwest::Body,
        len: u64,
    ) -> Result<Response> {
        let Target::Url(url) = &req.target else {
            return Err(Error::Config(
                "a streamed request goes to an upload URL".into(),
            ));
        };
        if let Some(why) = refused_target(url) {
            return Err(Error::Protocol {
                url: display_url(url),
                reason: why,
            });
        }
        let auth = if self.same_origin(registry, &req.target).await {
            self.authorization(registry, &req.scopes).await?
        } else {
            None
        };
        let mut rb = self
            .http_for(url)?
            .request(req.method.clone(), url.clone())
            .headers(req.headers.clone())
            .header(reqwest::header::CONTENT_LENGTH, len.to_string());
        if let Some(h) = auth {
            rb = rb.header(AUTHORIZATION, h);
        }
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Config("the client's request limit was closed".into()))?;
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let deadline = answer_deadline(
            self.inner.opts.idle_timeout,
            usize::try_from(len).unwrap_or(usize::MAX),
        );
        match tokio::time::timeout(deadline, rb.body(body).send()).await {
            Ok(r) => r.map_err(|e| transport_error(&req.method, url, &e)),
            Err(_) => Err(Error::Transport {
                method: req.method.to_string(),
                url: display_url(url),
                reason: format!("timed out: no answer within {}", body::secs(deadline)),
                retryable: true,
            }),
        }
    }

    /// Follows a redirect the plain-HTTP client stopped at because it leads to HTTPS (a
    /// registry on plain HTTP sending a blob download to object storage): the same request
    /// goes there through the HTTPS client, without the Authorization header (another origin),
    /// which follows any further redirects itself.
    async fn follow_to_https(&self, req: &Request, resp: Response) -> Result<Response> {
        let next = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| resp.url().join(l).ok())
            .filter(|u| u.scheme() == "https");
        let Some(next) = next else {
            return Ok(resp);
        };
        if let Some(why) = refused_target(&next) {
            return Err(Error::Protocol {
                url: display_url(resp.url()),
                reason: why,
            });
        }
        let Ok(http) = self.http_for(&next) else {
            return Ok(resp);
        };
        let next_shown = next.clone();
        let mut headers = req.headers.clone();
        headers.remove(AUTHORIZATION);
        let mut rb = http.request(req.method.clone(), next).headers(headers);
        if let Some(b) = &req.body {
            rb = rb.body(b.clone());
        }
        rb.send()
            .await
            .map_err(|e| transport_error(&req.method, &next_shown, &e))
    }

    /// Changes what the client knows of `registry`.
    async fn update(&self, registry: &str, f: impl FnOnce(&mut RegistryState)) {
        f(self
            .inner
            .registries
            .lock()
            .await
            .entry(registry.to_owned())
            .or_default());
    }

    async fn set_scheme(&self, registry: &str, scheme: &'static str) {
        self.update(registry, |st| st.scheme = Some(scheme)).await;
    }

    /// Sends and turns an unexpected status into [`Error::Http`].
    pub(crate) async fn send_expect(
        &self,
        registry: &str,
        req: &Request,
        ok: &[u16],
    ) -> Result<Response> {
        let resp = self.send(registry, req).await?;
        if ok.contains(&resp.status().as_u16()) {
            Ok(resp)
        } else {
            Err(self.http_error(registry, &req.method, resp).await)
        }
    }

    /// An [`Error::Http`] from an error answer of `registry`: its codes and a short, cleaned
    /// excerpt of its messages, read from at most the first 64 KiB of the body. A 401 says
    /// whether credentials were sent (and refused) or none were found.
    pub(crate) async fn http_error(
        &self,
        registry: &str,
        method: &Method,
        resp: Response,
    ) -> Error {
        let url = display_url(resp.url());
        let status = resp.status().as_u16();
        let body = body::read_error_body(resp, self.inner.opts.idle_timeout).await;
        let note = if status == 401 {
            let sent = self
                .inner
                .registries
                .lock()
                .await
                .get(registry)
                .and_then(|s| s.credential.clone());
            Some(match sent {
                Some(Credential::Basic { username, .. }) => format!(
                    "the registry refused the password of user {} (wrong, expired, or without \
                     access to this repository)",
                    excerpt(&username, 100)
                ),
                Some(Credential::IdentityToken(_)) => "the registry refused the identity token \
                     (expired or revoked: log in again)"
                    .to_owned(),
                _ => format!(
                    "the registry wants credentials and none were found for {registry} (log in \
                     with `ociup login {registry}`, or give --username with --password-stdin)"
                ),
            })
        } else {
            None
        };
        error_from_body(method, url, status, &body, note)
    }
}

/// The redirect policy of the plain-HTTP client (`plain`) or of the HTTPS one.
fn redirect_policy(plain: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        match redirect_step(attempt.previous(), attempt.url(), plain) {
            RedirectStep::Follow => attempt.follow(),
            RedirectStep::Stop => attempt.stop(),
            RedirectStep::Refuse(why) => attempt.error(why),
        }
    })
}

fn scope_key(scopes: &[String]) -> String {
    let mut s = scopes.to_vec();
    s.sort();
    s.dedup();
    s.join(" ")
}

fn basic_header(username: &str, password: &str) -> HeaderValue {
    use base64::Engine;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

/// Exponential backoff with jitter: base * 2^attempt, capped, times a factor in [0.5, 1).
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .base_delay
        .saturating_mul(1u32 << attempt.min(16))
        .min(policy.max_delay);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let jitter = 0.5 + (h.finish() % 1000) as f64 / 2000.0;
    exp.mul_f64(jitter)
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn transport_error(method: &Method, url: &Url, e: &reqwest::Error) -> Error {
    // reqwest's own text names the URL with its query (upload state, signed URLs): the URL is
    // given without query beside it instead.
    let bare = reqwest_error_without_url(e);
    let mut reason = bare;
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        src = s.source();
    }
    Error::Transport {
        method: method.to_string(),
        url: display_url(url),
        reason,
        retryable: e.is_connect() || e.is_timeout() || e.is_request() || e.is_body(),
    }
}

fn reqwest_error_without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else if e.is_redirect() {
        "a redirect was not followed"
    } else {
        "request failed"
    };
    kind.to_owned()
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(serde::Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    detail: serde_json::Value,
}

/// Error entries kept from one answer (the body is capped at 64 KiB before that: Distribution
/// names each blob a manifest lacks in an entry of about 150 bytes, some 430 of them).
const MAX_ERROR_ENTRIES: usize = 1000;

/// An [`Error::Http`] from an error body: the registry's codes and messages, or a short
/// description of a body that is not the spec's error JSON (an HTML page from a proxy). Messages
/// are cut short and cleaned of control characters; `note` is added to them.
fn error_from_body(
    method: &Method,
    url: String,
    status: u16,
    body: &[u8],
    note: Option<String>,
) -> Error {
    let parsed = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .or_else(|| complete_entries(body));
    let (codes, details, message) = match parsed {
        Some(b) if !b.errors.is_empty() => {
            let errors = &b.errors[..b.errors.len().min(MAX_ERROR_ENTRIES)];
            let mut codes: Vec<String> = Vec::new();
            let mut messages: Vec<String> = Vec::new();
            for e in errors {
                codes.push(excerpt(&e.code, 64));
                let m = excerpt(&e.message, 200);
                if !m.is_empty() && !messages.contains(&m) && messages.len() < 3 {
                    messages.push(m);
                }
            }
            (
                codes,
                errors
                    .iter()
                    .map(|e| match &e.detail {
                        serde_json::Value::Null => String::new(),
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect(),
                messages.join("; "),
            )
        }
        _ => (Vec::new(), Vec::new(), describe_body(body)),
    };
    let message = match note {
        Some(n) if message.is_empty() => n,
        Some(n) => format!("{message}: {n}"),
        None => message,
    };
    Error::Http {
        method: method.to_string(),
        url,
        status,
        codes,
        details,
        message,
    }
}

/// The complete entries at the start of an error body cut short at the read cap (a long list of
/// blobs a manifest lacks): the body up to the last `}`, `,`, `{` between two entries (white
/// space allowed between them), closed. `None` when that does not parse either.
fn complete_entries(body: &[u8]) -> Option<ErrorBody> {
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&body[..e.valid_up_to()]).ok()?,
    };
    let end = last_entry_boundary(text)?;
    serde_json::from_str(&format!("{}]}}", &text[..=end])).ok()
}

/// The byte offset of the `}` of the last `}` white space `,` white space `{` in `text`.
fn last_entry_boundary(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let skip_ws_back = |mut i: usize| {
        while i > 0 && b[i - 1].is_ascii_whitespace() {
            i -= 1;
        }
        i
    };
    let mut at = text.len();
    while let Some(open) = text[..at].rfind('{') {
        let before = skip_ws_back(open);
        if before > 0 && b[before - 1] == b',' {
            let close = skip_ws_back(before - 1);
            if close > 0 && b[close - 1] == b'}' {
                return Some(close - 1);
            }
        }
        at = open;
    }
    None
}

fn describe_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    if text.starts_with('<') {
        let title = text
            .find("<title>")
            .and_then(|i| text[i + 7..].split("</title>").next())
            .map(str::trim)
            .unwrap_or("");
        return if title.is_empty() {
            "an HTML page instead of a registry answer".into()
        } else {
            format!(
                "an HTML page instead of a registry answer ({})",
                excerpt(title, 100)
            )
        };
    }
    excerpt(text, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        let d0 = backoff(&p, 0);
        assert!(d0 >= Duration::from_millis(50) && d0 < Duration::from_millis(100));
        let d3 = backoff(&p, 3);
        assert!(d3 >= Duration::from_millis(400) && d3 < Duration::from_millis(800));
        assert!(backoff(&p, 10) < Duration::from_millis(1000));
    }

    #[test]
    fn a_cut_error_body_keeps_its_complete_entries_however_spaced() {
        let entry = |n: u32| format!(r#"{{"code":"MANIFEST_BLOB_UNKNOWN","detail":"d{n}"}}"#);
        for sep in [",", ", ", " ,\n  ", ",\r\n\t"] {
            let body = format!(
                "{{\n  \"errors\": [\n    {}{sep}{}{sep}{}",
                entry(1),
                entry(2),
                &entry(3)[..10]
            );
            let parsed = complete_entries(body.as_bytes()).expect(sep);
            let details: Vec<_> = parsed.errors.iter().map(|e| e.detail.to_string()).collect();
            assert_eq!(details, [r#""d1""#, r#""d2""#], "{sep:?}");
        }
        assert!(complete_entries(br#"{"errors":[{"code":"X""#).is_none());
    }

    #[test]
    fn bodies_are_described_briefly() {
        assert_eq!(
            describe_body(b"<html><head><title>502 Bad Gateway</title></head></html>"),
            "an HTML page instead of a registry answer (502 Bad Gateway)"
        );
        assert_eq!(describe_body(b"  plain\n text "), "plain text");
    }
}

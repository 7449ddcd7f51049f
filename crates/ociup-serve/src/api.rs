//! The routes and their handlers.

use std::path::{Component, Path as FsPath};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use ociup_core::managed::build_manifest::PublicKey;
use ociup_core::managed::manager::{Registration, ResolveOptions, Unreachable};
use ociup_core::managed::recipe::{Recipe, SourceAccess, validate_nick};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, Code, chain};
use crate::tokens::{Identity, Role};
use crate::{Access, Service};

type Answer = Result<Response, ApiError>;

/// Every route: method, path template, handler. The router and the route list the OpenAPI test
/// checks are both made from it.
fn table() -> Vec<(&'static str, &'static str, MethodRouter<Service>)> {
    vec![
        ("GET", "/healthz", get(healthz)),
        ("GET", "/readyz", get(readyz)),
        ("GET", "/metrics", get(metrics)),
        ("GET", "/v1/openapi.json", get(openapi)),
        ("POST", "/v1/nicks/{nick}/resolve", post(resolve)),
        ("GET", "/v1/status", get(status)),
        ("GET", "/v1/nicks/{nick}/history", get(history)),
        ("POST", "/v1/nicks/{nick}/verify", post(verify)),
        ("DELETE", "/v1/nicks/{nick}", delete(unregister)),
        ("POST", "/v1/nicks/{nick}/gc", post(gc)),
        ("POST", "/v1/upgrade-all", post(upgrade_all)),
        ("POST", "/v1/register", post(register)),
        ("POST", "/v1/nicks/{nick}/runs", post(create_run)),
        ("GET", "/v1/runs/{id}", get(show_run)),
        ("POST", "/v1/nicks/{nick}/edit", post(edit)),
        ("GET", "/v1/nicks/{nick}/recipe", get(recipe)),
        (
            "GET",
            "/v1/nicks/{nick}/blobs/{digest}",
            get(crate::blobs::blob),
        ),
        ("POST", "/v1/admission", post(crate::admission::admit)),
    ]
}

pub(crate) fn routes() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

pub(crate) fn router(service: Service) -> Router {
    let c = &service.inner.config;
    let (body_limit, upload_limit) = (c.body_limit, c.upload_limit);
    let mut r = Router::new();
    for (_, path, handler) in table() {
        let handler = if path == "/v1/register" || path == "/v1/nicks/{nick}/edit" {
            handler.layer(DefaultBodyLimit::max(upload_limit))
        } else {
            handler
        };
        r = r.route(path, handler);
    }
    r.fallback(|| async { ApiError::new(Code::NotFound, "no such route; see /v1/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                Code::MethodNotAllowed,
                "the route takes another method; see /v1/openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(service.clone(), timeout))
        .layer(middleware::from_fn_with_state(service.clone(), observe))
        .with_state(service)
}

/// Counts the request by route and status, and logs it.
async fn observe(State(s): State<Service>, req: Request, next: Next) -> Response {
    // The template as the router holds it (shared, not copied).
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = method_label(req.method());
    let started = Instant::now();
    s.inner.metrics.start();
    let resp = next.run(req).await;
    let took = started.elapsed();
    s.inner
        .metrics
        .end(route, method, resp.status().as_u16(), took);
    tracing::info!(
        method,
        route,
        status = resp.status().as_u16(),
        ms = took.as_millis() as u64,
        "request"
    );
    resp
}

/// The method as a metrics label: the standard ones by name, any other as `other`, so that a
/// client inventing methods cannot grow the label set (routes are templates or `unmatched`).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Answers 504 when a request takes longer than allowed (reading its body included).
async fn timeout(State(s): State<Service>, req: Request, next: Next) -> Response {
    let limit = s.inner.config.timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            Code::Timeout,
            format!(
                "no answer within {}s; a regeneration it started goes on, ask again later",
                limit.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

/// The caller, from `Authorization: Bearer <token>`.
pub(crate) struct Caller(Identity);

impl FromRequestParts<Service> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &Service) -> Result<Caller, ApiError> {
        // A verified client certificate (TLS with --client-ca) names the caller when no token
        // is sent.
        let caller = if !parts.headers.contains_key(header::AUTHORIZATION)
            && let Some(cert) = parts.extensions.get::<crate::tls::ClientCert>()
        {
            Caller(cert.identity()?)
        } else {
            Self::from_token(parts, s)?
        };
        // The rate limit, keyed by the identity however it was proven (token or certificate).
        if let Some(rate) = s.inner.config.rate_limit
            && let Err(wait) = s.inner.limiter.take(&caller.0.name, rate, Instant::now())
        {
            s.inner
                .metrics
                .rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut e = ApiError::new(
                Code::RateLimited,
                format!(
                    "{} has made more requests than this service allows ({}/s, bursts of {}); \
                     retry later",
                    caller.0.name, rate.per_second, rate.burst
                ),
            );
            e.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
            return Err(e);
        }
        Ok(caller)
    }
}

impl Caller {
    /// The caller named by `Authorization: Bearer <token>`.
    fn from_token(parts: &Parts, s: &Service) -> Result<Caller, ApiError> {
        let token = bearer(parts.headers.get(header::AUTHORIZATION)).ok_or_else(|| {
            ApiError::new(
                Code::Unauthorized,
                "no bearer token (Authorization: Bearer <token>)",
            )
        })?;
        s.inner
            .tokens
            .identify(token)
            .map_err(|_| {
                ApiError::new(
                    Code::TokensUnreadable,
                    "the service cannot read its tokens file, so no token is accepted now (its \
                     log says why)",
                )
            })?
            .map(Caller)
            .ok_or_else(|| ApiError::new(Code::Unauthorized, "unknown or revoked token"))
    }
}

impl Caller {
    pub(crate) fn require(&self, role: Role, what: &str) -> Result<&str, ApiError> {
        if role == Role::Admin && self.0.role != Role::Admin {
            return Err(ApiError::new(
                Code::Forbidden,
                format!(
                    "{} ({}) may not {what}: it takes an admin token",
                    self.0.name,
                    self.0.role.as_str()
                ),
            ));
        }
        Ok(&self.0.name)
    }

    fn is_admin(&self) -> bool {
        self.0.role == Role::Admin
    }
}

/// A JSON body whose rejections are API errors; an empty body reads as `{}`.
pub(crate) struct Body<T>(T);

impl<T: serde::de::DeserializeOwned + Default> FromRequest<Service> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, s: &Service) -> Result<Body<T>, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/json")
            });
        let bytes = Bytes::from_request(req, s).await?;
        if bytes.is_empty() {
            return Ok(Body(T::default()));
        }
        if json_type == Some(false) {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ApiError::new(Code::InvalidRequest, format!("the body: {e}")))
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(value: Option<&axum::http::HeaderValue>) -> Option<&str> {
    let v = value?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

pub(crate) fn nick_param(nick: &str) -> Result<(), ApiError> {
    validate_nick(nick).map_err(|e| ApiError::new(Code::InvalidRequest, e.to_string()))
}

fn refused(e: crate::allow::Refused) -> ApiError {
    ApiError::new(Code::OutsideAllowlist, e.to_string())
}

fn json(value: &impl serde::Serialize) -> Answer {
    serde_json::to_value(value)
        .map(|v| Json(v).into_response())
        .map_err(|e| ApiError::new(Code::Internal, e.to_string()))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the catalog can be read.
async fn readyz(State(s): State<Service>) -> Answer {
    let m = s.manager("ociup-serve")?;
    m.catalog().nicks().await.map_err(|e| {
        ApiError::new(
            Code::NotReady,
            format!("reading the catalog: {}", chain(&e)),
        )
    })?;
    json(&json!({"status": "ready"}))
}

async fn metrics(State(s): State<Service>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.inner.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Policy {
    #[default]
    Fail,
    Stale,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    #[serde(default)]
    check: bool,
    #[serde(default)]
    offline: bool,
    #[serde(default)]
    if_unreachable: Policy,
}

/// The request to run: the fields of `ociup resolve --json`.
async fn resolve(
    State(s): State<Service>,
    caller: Caller,
    Path(nick): Path<String>,
    Body(body): Body<ResolveBody>,
) -> Answer {
    let actor = caller.require(Role::Requester, "resolve")?;
    nick_param(&nick)?;
    if body.check && body.offline {
        return Err(ApiError::new(
            Code::InvalidRequest,
            "check and offline exclude each other",
        ));
    }
    // Nothing due: answered from tag reads coalesced across requests (see coalesce.rs), with
    // the JSON kept for the catalog entry.
    if !body.offline
        && let Some(answer) = s.nothing_due(actor, &nick).await
    {
        return Ok(([(header::CONTENT_TYPE, "application/json")], answer).into_response());
    }
    // The library's way, in a future of its own (boxed): the answer above stays small to
    // move and poll, this one is large.
    Box::pin(async {
        let m = s.manager(actor)?;
        allowed_entry(&s, &m, &nick, &format!("resolving {nick}")).await?;
        let unreachable = match body.if_unreachable {
            Policy::Fail => Unreachable::Fail,
            Policy::Stale => Unreachable::Stale,
        };
        // Requests for one nick that find an upgrade due wait for each other (whoever the
        // requester): the first regenerates; the others then find the new version current and
        // take no permit.
        let r = s
            .resolve_pinned(
                m,
                actor,
                &nick,
                body.check || body.offline,
                body.offline,
                unreachable,
            )
            .await?;
        json(&r)
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    /// Comma-separated nicks (default: all).
    #[serde(default)]
    nicks: Option<String>,
}

async fn status(
    State(s): State<Service>,
    caller: Caller,
    q: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let actor = caller.require(Role::Requester, "show status")?;
    let Query(q) = q?;
    let nicks: Vec<String> = q
        .nicks
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    for n in &nicks {
        nick_param(n)?;
    }
    let m = s.manager(actor)?;
    // `Manager::status`'s future is not provably Send (rustc cannot see through a closure over
    // `&String` in it), so it runs on a blocking thread of its own.
    let handle = tokio::runtime::Handle::current();
    let all = tokio::task::spawn_blocking(move || handle.block_on(m.status(&nicks)))
        .await
        .map_err(|e| ApiError::new(Code::Internal, e.to_string()))?
        .map_err(|e| ApiError::from_core("status", e))?;
    json(&all)
}

async fn history(State(s): State<Service>, caller: Caller, Path(nick): Path<String>) -> Answer {
    let actor = caller.require(Role::Requester, "show history")?;
    nick_param(&nick)?;
    let versions = s
        .manager(actor)?
        .history(&nick)
        .await
        .map_err(|e| ApiError::from_core(&format!("history of {nick}"), e))?;
    json(&versions)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    /// The public key (SPKI PEM); default: the service's signing key's.
    #[serde(default)]
    public_key: Option<String>,
}

async fn verify(
    State(s): State<Service>,
    caller: Caller,
    Path(nick): Path<String>,
    Body(body): Body<VerifyBody>,
) -> Answer {
    let actor = caller.require(Role::Requester, "verify")?;
    nick_param(&nick)?;
    let given;
    let key: &PublicKey = match (&body.public_key, &s.inner.public_key) {
        (Some(pem), _) => {
            given = public_key(pem)?;
            &given
        }
        (None, Some(k)) => k,
        (None, None) => {
            return Err(ApiError::new(
                Code::InvalidRequest,
                "give public_key: the service has no signing key of its own",
            ));
        }
    };
    let checked = s
        .manager(actor)?
        .verify_nick(&nick, key)
        .await
        .map_err(|e| {
            let mut err = ApiError::from_core(&format!("verifying {nick}"), e);
            if !matches!(
                err.code,
                Code::UnknownNick | Code::StoreError | Code::OutsideAllowlist
            ) {
                err.code = Code::VerificationFailed;
            }
            err
        })?;
    json(&checked)
}

/// A public key from PEM text (the library reads keys from files).
fn public_key(pem: &str) -> Result<PublicKey, ApiError> {
    let bad = |e: String| ApiError::new(Code::InvalidRequest, format!("public_key: {e}"));
    if pem.len() > 16 * 1024 {
        return Err(bad("longer than a public key".into()));
    }
    let mut f = tempfile::NamedTempFile::new().map_err(|e| bad(e.to_string()))?;
    std::io::Write::write_all(&mut f, pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    PublicKey::load(f.path()).map_err(|e| bad(e.to_string()))
}

async fn unregister(State(s): State<Service>, caller: Caller, Path(nick): Path<String>) -> Answer {
    let actor = caller.require(Role::Admin, "unregister")?;
    nick_param(&nick)?;
    let m = s.manager(actor)?;
    // Each requester has a manager of its own, whose per-nick lock is its own: the service's
    // lock keeps this from interleaving with another requester's regeneration of the nick.
    let lock = s.nick_lock(&nick);
    let _held = lock.lock().await;
    m.unregister(&nick, format!("ociup unregister {nick}"))
        .await
        .map_err(|e| ApiError::from_core(&format!("unregistering {nick}"), e))?;
    json(&json!({"nick": nick, "unregistered": true}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GcBody {
    /// Versions to keep, the current one included (at least 1).
    keep: Option<usize>,
}

async fn gc(
    State(s): State<Service>,
    caller: Caller,
    Path(nick): Path<String>,
    Body(body): Body<GcBody>,
) -> Answer {
    let actor = caller.require(Role::Admin, "collect garbage")?;
    nick_param(&nick)?;
    let keep = body.keep.ok_or_else(|| {
        ApiError::new(Code::InvalidRequest, "give keep: how many versions to keep")
    })?;
    if keep == 0 {
        return Err(ApiError::new(
            Code::InvalidRequest,
            "keep must be at least 1: the current version stays",
        ));
    }
    let m = s.manager(actor)?;
    let lock = s.nick_lock(&nick);
    let _held = lock.lock().await;
    let deleted = m
        .gc(&nick, keep)
        .await
        .map_err(|e| ApiError::from_core(&format!("collecting {nick}"), e))?;
    json(&json!({"nick": nick, "deleted": deleted}))
}

/// Every nick resolved: the array `ociup upgrade --json` prints.
async fn upgrade_all(State(s): State<Service>, caller: Caller) -> Answer {
    let actor = caller.require(Role::Admin, "upgrade all")?;
    let m = s.manager(actor)?;
    let permit = s.regeneration_permit()?;
    let (service, actor) = (s.clone(), actor.to_owned());
    let out = s
        .run_to_end(async move {
            let _permit = permit;
            // As `Manager::upgrade_all`, nick by nick, each under the service's lock of that
            // nick (shared with every requester's resolves).
            let nicks = m
                .catalog()
                .nicks()
                .await
                .map_err(|e| ApiError::from_core("upgrading all", e))?;
            let mut out = Vec::new();
            for nick in nicks {
                let r = {
                    let lock = service.nick_lock(&nick);
                    let _held = lock.lock().await;
                    m.resolve(&nick, ResolveOptions::default()).await
                };
                // Unregistered nicks are not upgraded: resolve refuses them, and only then is
                // the entry read again to tell that from a failure.
                if r.is_err()
                    && m.catalog().summary(&nick).await.is_ok_and(|s| {
                        s.is_some_and(|s| s.state == ociup_core::managed::catalog::State::Removed)
                    })
                {
                    continue;
                }
                out.push(match r {
                    Ok(r) => {
                        if r.upgraded {
                            service.count_upgrade_later(
                                std::sync::Arc::clone(&m),
                                &nick,
                                r.version,
                                &r.digest,
                                &actor,
                            );
                        }
                        serde_json::to_value(&r)
                            .map_err(|e| ApiError::new(Code::Internal, e.to_string()))?
                    }
                    Err(e) => json!({"nick": nick, "error": chain(&e)}),
                });
            }
            Ok(out)
        })
        .await?;
    json(&out)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterQuery {
    #[serde(default)]
    replace_recipe: bool,
}

/// The largest number of entries an upload may hold.
const MAX_UPLOAD_ENTRIES: usize = 10_000;

/// Registers the recipe `recipe.json` at the root of an uploaded tar (its first entry of that
/// name), with the files it names beside it (one of which may be named `recipe.json` too),
/// checked as `ociup register --recipe` checks them.
async fn register(
    State(s): State<Service>,
    caller: Caller,
    q: Result<Query<RegisterQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Answer {
    let actor = caller.require(Role::Admin, "register")?.to_owned();
    let Query(q) = q?;
    let is_tar = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-tar"));
    if !is_tar {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "the body must be a tar (Content-Type: application/x-tar) holding recipe.json and its files",
        ));
    }
    let bytes = Bytes::from_request(req, &s).await?;
    let dir = tempfile::tempdir()
        .map_err(|e| ApiError::new(Code::Internal, format!("a staging directory: {e}")))?;
    let root = dir.path().to_owned();
    let recipe = tokio::task::spawn_blocking(move || -> Result<Recipe, ApiError> {
        let text = unpack_upload(&bytes, &root, "recipe.json")?.ok_or_else(|| {
            ApiError::new(
                Code::InvalidRecipe,
                "the upload holds no recipe.json at its root",
            )
        })?;
        let recipe = Recipe::parse(&text, "recipe.json")
            .map_err(|e| ApiError::new(Code::InvalidRecipe, chain(&e)))?;
        recipe.check(&root, SourceAccess::Confined).map_err(|e| {
            ApiError::new(
                Code::InvalidRecipe,
                format!("registering {}: {}", recipe.nick, chain(&e)),
            )
        })?;
        Ok(recipe)
    })
    .await
    .map_err(|e| ApiError::new(Code::Internal, e.to_string()))??;
    let nick = recipe.nick.clone();
    untagged(&recipe.target)?;
    let allow = &s.inner.config.allow;
    allow.check(&recipe.base, Access::Read).map_err(refused)?;
    allow
        .check(&recipe.target, Access::Write)
        .map_err(refused)?;
    let m = s.manager(&actor)?;
    let permit = s.regeneration_permit()?;
    let service = s.clone();
    let record = s
        .run_to_end(async move {
            let _permit = permit;
            let lock = service.nick_lock(&nick);
            let _held = lock.lock().await;
            let mut registration = Registration::new(recipe, dir.path());
            registration.replace = q.replace_recipe;
            if q.replace_recipe {
                registration.command.push_str(" --replace-recipe");
            }
            let record = m
                .register(registration)
                .await
                .map_err(|e| ApiError::from_core(&format!("registering {nick}"), e))?;
            drop(dir);
            Ok(record)
        })
        .await?;
    let mut resp = json(&record)?;
    *resp.status_mut() = StatusCode::CREATED;
    Ok(resp)
}

/// A target names a repository or layout without tag or digest (each version is tagged with
/// the nick), as `ociup register --to` wants it.
fn untagged(target: &str) -> Result<(), ApiError> {
    let tagged = if let Some(rest) = target.strip_prefix("oci:") {
        rest.contains('@') || rest.rsplit_once(':').is_some_and(|(_, t)| !t.contains('/'))
    } else {
        let bare = target.strip_prefix("docker://").unwrap_or(target);
        bare.contains('@') || bare.rsplit('/').next().is_some_and(|n| n.contains(':'))
    };
    if tagged {
        return Err(ApiError::new(
            Code::InvalidRecipe,
            format!("target {target}: name a layout or repository without a tag or digest"),
        ));
    }
    Ok(())
}

/// Unpacks an upload into `root`: regular files and directories only, each under `root` by a
/// relative name without `..`, none twice. Anything else refuses the whole upload. The first
/// entry named `control` at the top (the recipe or the steps) is not unpacked but answered:
/// every other entry is a file the recipe may name, so a file may itself be named `control`.
/// Modes are kept with their setuid, setgid and sticky bits (the staging directory is 0700),
/// directories' once everything is in (deepest first, so a read-only one still takes its files).
fn unpack_upload(bytes: &[u8], root: &FsPath, control: &str) -> Result<Option<Vec<u8>>, ApiError> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let bad = |m: String| ApiError::new(Code::InvalidRecipe, format!("the upload: {m}"));
    let mut archive = tar::Archive::new(bytes);
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    let mut found = None;
    let mut dirs = Vec::new();
    for (i, entry) in entries.enumerate() {
        if i >= MAX_UPLOAD_ENTRIES {
            return Err(bad(format!("more than {MAX_UPLOAD_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let mut rel = std::path::PathBuf::new();
        for c in name.components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::CurDir => {}
                _ => return Err(bad(format!("{}: absolute, or with `..`", name.display()))),
            }
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().map_err(|e| bad(e.to_string()))? & 0o7777;
        if found.is_none() && kind.is_file() && rel == FsPath::new(control) {
            let mut text = Vec::new();
            entry
                .read_to_end(&mut text)
                .map_err(|e| bad(format!("{control}: {e}")))?;
            found = Some(text);
            continue;
        }
        let dest = root.join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&dest).map_err(|e| bad(format!("{}: {e}", name.display())))?;
            if !rel.as_os_str().is_empty() {
                dirs.push((rel.components().count(), dest, mode));
            }
            continue;
        }
        if !kind.is_file() || rel.as_os_str().is_empty() {
            return Err(bad(format!(
                "{}: only regular files and directories are taken (no links or devices)",
                name.display()
            )));
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| bad(format!("{}: {e}", name.display())))?;
        }
        let mut out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)
                .map_err(|e| bad(format!("{}: {e}", name.display())))?
        };
        std::io::copy(&mut entry, &mut out).map_err(|e| bad(e.to_string()))?;
        drop(out);
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
            .map_err(|e| bad(format!("{}: {e}", name.display())))?;
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (_, dest, mode) in dirs {
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
            .map_err(|e| bad(format!("{}: {e}", dest.display())))?;
    }
    Ok(found)
}

/// The nick's catalog entry, its recipe checked against the allowlist (as a resolve checks it).
pub(crate) async fn allowed_entry(
    s: &Service,
    m: &ociup_core::managed::manager::Manager<crate::Guarded>,
    nick: &str,
    context: &str,
) -> Result<ociup_core::managed::catalog::Entry, ApiError> {
    let entry = m
        .catalog()
        .get(nick)
        .await
        .map_err(|e| ApiError::from_core(context, e))?
        .ok_or_else(|| {
            ApiError::new(
                Code::UnknownNick,
                format!("no managed image is registered as {nick:?}"),
            )
        })?;
    let allow = &s.inner.config.allow;
    allow
        .check(&entry.recipe.base, Access::Read)
        .map_err(refused)?;
    allow
        .check(&entry.recipe.target, Access::Write)
        .map_err(refused)?;
    Ok(entry)
}

/// The service's cluster, or `no_cluster` saying why there is none.
fn cluster(s: &Service) -> Result<ociup_kube::Cluster, ApiError> {
    match &s.inner.config.runs.cluster {
        Some(Ok(c)) => Ok(c.clone()),
        Some(Err(why)) => Err(ApiError::new(
            Code::NoCluster,
            format!("this service has no Kubernetes cluster to run on: {why}"),
        )),
        None => Err(ApiError::new(
            Code::NoCluster,
            "this service has no Kubernetes cluster to run on (start it with --kubeconfig, \
             KUBECONFIG or in a pod with a service account)",
        )),
    }
}

/// The request to run, as a Kubernetes Job: answered at once (202, `pending`); the nick is
/// resolved (regenerated when its base moved, the Job held suspended meanwhile) and the Job
/// submitted in a task of its own. `GET /v1/runs/{id}` says how it went.
async fn create_run(
    State(s): State<Service>,
    caller: Caller,
    Path(nick): Path<String>,
    Body(body): Body<crate::runs::RunRequest>,
) -> Answer {
    let actor = caller.require(Role::Requester, "create runs")?.to_owned();
    nick_param(&nick)?;
    let options = body
        .job_options()
        .map_err(|e| ApiError::new(Code::InvalidRequest, e.to_string()))?;
    if s.inner.config.runs.allow_namespaces.is_empty() {
        return Err(ApiError::new(
            Code::OutsideAllowlist,
            "this service runs nothing: it was started without --allow-namespace",
        ));
    }
    let cluster = cluster(&s)?;
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.default_namespace().to_owned());
    if !s.inner.config.runs.allows(&namespace) {
        return Err(ApiError::new(
            Code::OutsideAllowlist,
            format!(
                "namespace {namespace} is outside what this service may run in \
                 (--allow-namespace {})",
                s.inner.config.runs.allow_namespaces.join(", ")
            ),
        ));
    }
    let m = s.manager(&actor)?;
    let context = format!("running {nick}");
    allowed_entry(&s, &m, &nick, &context).await?;
    let resolve = ResolveOptions {
        offline: body.offline,
        unreachable: match body.if_unreachable {
            crate::runs::IfUnreachable::Fail => Unreachable::Fail,
            crate::runs::IfUnreachable::Stale => Unreachable::Stale,
        },
        ..ResolveOptions::default()
    };
    // Whether a regeneration is due, first: only then is a permit of the bound taken, here, so
    // that a service at its bound answers 503 rather than a run that fails.
    let permit = if body.offline {
        None
    } else {
        let first = m
            .resolve(
                &nick,
                ResolveOptions {
                    check: true,
                    ..resolve.clone()
                },
            )
            .await
            .map_err(|e| ApiError::from_core(&context, e))?;
        if first.upgrade_due {
            Some(s.regeneration_permit()?)
        } else {
            None
        }
    };
    let id = crate::runs::new_id(&namespace)
        .map_err(|e| ApiError::new(Code::Internal, format!("a run id: {e}")))?;
    let run = crate::runs::Run::new(
        id.clone(),
        &nick,
        &actor,
        &namespace,
        ociup_core::time::rfc3339(unix_now()),
    );
    if !s.inner.runs.insert(run.clone()) {
        let mut e = ApiError::new(
            Code::Busy,
            format!(
                "{} runs are pending, as many as the service keeps; retry later",
                crate::runs::MAX_RUNS
            ),
        );
        e.retry_after = Some(s.inner.config.retry_after);
        return Err(e);
    }
    tracing::info!(run = id, nick, namespace, requester = actor, "run accepted");
    let (service, run_id) = (s.clone(), id.clone());
    let created = run.clone();
    s.inner.tracker.spawn(async move {
        let (_permit, id) = (permit, run_id);
        let lock = service.nick_lock(&nick);
        let _held = lock.lock().await;
        // The work is given up after the service's work limit (a held Job deleted); the Job
        // carries the run's mark, requester, time and that deadline: any replica can answer the
        // run, and tell a Job held for good by a replica that stopped from one still being
        // regenerated, whatever its own limit.
        let limit = service.inner.config.runs.work_limit;
        let deadline = ociup_core::time::rfc3339(unix_now() + limit.as_secs());
        let marks = crate::runs::marks(&created, &deadline);
        let timed_out = std::sync::atomic::AtomicBool::new(false);
        let give_up = async {
            tokio::time::sleep(limit).await;
            timed_out.store(true, std::sync::atomic::Ordering::SeqCst);
        };
        // Boxed: the request to run is a deep future, too large for a worker's stack in a
        // debug build when polled in place.
        let applied =
            Box::pin(cluster.apply_marked(&m, &nick, resolve, &options, &marks, give_up)).await;
        let context = if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
            format!(
                "{context}: not done by {deadline} ({} after its work began, the service's bound \
                 of a run's work, --work-limit)",
                crate::runs::duration_text(limit)
            )
        } else {
            context
        };
        match applied {
            Ok(a) => {
                if a.upgraded {
                    service.count_upgrade_later(
                        std::sync::Arc::clone(&m),
                        &nick,
                        a.version,
                        &a.digest,
                        &actor,
                    );
                }
                tracing::info!(
                    run = id,
                    job = format!("{}/{}", a.namespace, a.name),
                    digest = a.digest,
                    held = a.held,
                    "run submitted"
                );
                service.inner.runs.update(&id, |r| r.submitted(&a));
            }
            Err(e) => {
                let why = chain(&e);
                let left = crate::runs::Left::by(&e);
                // The version is recorded: its record names the image and digests it pins.
                let recorded = match &left {
                    crate::runs::Left::Unreleased { version, .. } => {
                        let recorded = m
                            .history(&nick)
                            .await
                            .ok()
                            .and_then(|h| h.into_iter().find(|r| r.number == *version));
                        if let Some(r) = &recorded {
                            service.count_upgrade_later(
                                std::sync::Arc::clone(&m),
                                &nick,
                                r.number,
                                &r.digest,
                                &actor,
                            );
                        }
                        recorded
                    }
                    _ => None,
                };
                if let crate::runs::Left::Unreleased { job, version } = &left {
                    tracing::warn!(
                        run = id,
                        job,
                        version,
                        "run unreleased (its version is recorded, its Job left held): {why}"
                    );
                } else {
                    tracing::warn!(run = id, left = ?left, "run failed: {why}");
                }
                service.inner.runs.update(&id, |r| {
                    r.ended(left, format!("{context}: {why}"), recorded.as_ref());
                });
            }
        }
    });
    let mut resp = json(&run_answer(&run, None))?;
    *resp.status_mut() = StatusCode::ACCEPTED;
    if let Ok(v) = header::HeaderValue::from_str(&format!("/v1/runs/{id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Seconds since 1970 by this machine's clock (0 before).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A run as answered: its fields, `job` (the Job's status as the API server has it, once
/// submitted or unreleased) and `job_error` (why it could not be read).
fn run_answer(
    run: &crate::runs::Run,
    job: Option<Result<crate::runs::JobStatus, String>>,
) -> Value {
    let mut v = serde_json::to_value(run).unwrap_or_default();
    let (status, error) = match job {
        Some(Ok(j)) => (serde_json::to_value(j).unwrap_or_default(), Value::Null),
        Some(Err(e)) => (Value::Null, Value::String(e)),
        None => (Value::Null, Value::Null),
    };
    v["job"] = status;
    v["job_error"] = error;
    v
}

/// A run: its state, and its Job's read from the API server. Only its requester and admins
/// see it. A run this replica does not hold (made by another, or forgotten) is answered from
/// its Job, looked up by the mark its id names ([`crate::runs::RunId`]).
async fn show_run(State(s): State<Service>, caller: Caller, Path(id): Path<String>) -> Answer {
    let name = caller.require(Role::Requester, "show runs")?;
    let held = s
        .inner
        .runs
        .get(&id)
        .filter(|r| r.requester == name || caller.is_admin());
    let run = match held {
        Some(run) => run,
        None => {
            let Some(run_id) = crate::runs::RunId::parse(&id) else {
                return Err(ApiError::new(
                    Code::NotFound,
                    format!("no run {id:?} (not an id this service makes)"),
                ));
            };
            let (run, job) = run_from_cluster(&s, &caller, name, &id, run_id).await?;
            // The Job's status once submitted or unreleased, as the replica that made it says.
            let shown = matches!(
                run.state,
                crate::runs::State::Submitted | crate::runs::State::Unreleased
            );
            return json(&run_answer(&run, shown.then_some(Ok(job))));
        }
    };
    let job = match (&run.state, &run.name) {
        (crate::runs::State::Submitted | crate::runs::State::Unreleased, Some(job_name)) => {
            Some(match cluster(&s) {
                Ok(c) => crate::runs::read_job(&c, &run.namespace, job_name).await,
                Err(e) => Err(e.message),
            })
        }
        _ => None,
    };
    json(&run_answer(&run, job))
}

/// The run `id` this replica does not hold, from its Job in the cluster: found by its mark
/// within the cluster's request timeout and shown to its requester (or an admin) as the
/// replica that made it would show it. No such Job (or someone else's): 404 `run_unknown`,
/// since the run may still be pending on another replica, before its Job is created.
async fn run_from_cluster(
    s: &Service,
    caller: &Caller,
    name: &str,
    id: &str,
    run_id: crate::runs::RunId<'_>,
) -> Result<(crate::runs::Run, crate::runs::JobStatus), ApiError> {
    let unknown = || {
        ApiError::new(
            Code::RunUnknown,
            format!(
                "no run {id:?} on this replica and no Job of it in the cluster (yet): it may be \
                 pending on another replica, before its Job is created, or have failed there \
                 (ask again), or it is not yours"
            ),
        )
    };
    if !s.inner.config.runs.allows(run_id.namespace) {
        return Err(unknown());
    }
    let cluster = cluster(s)?;
    // Read before the Job: a deadline past by then was past while the Job and the catalog
    // were read (the work given up, nothing recorded or released after).
    let now = unix_now();
    // A lookup that fails (the API server slow, say) is no answer either: asked again later.
    let found = cluster
        .find_marked(run_id.namespace, run_id.mark)
        .await
        .map_err(|e| {
            ApiError::new(
                Code::RunUnknown,
                format!(
                    "no run {id:?} on this replica, and its Job could not be looked up: {}",
                    chain(&e)
                ),
            )
        })?;
    let Some(job) = found.filter(|j| crate::runs::visible(j, name, caller.is_admin())) else {
        return Err(unknown());
    };
    let mut run = crate::runs::Run::of_job(id, &job).ok_or_else(unknown)?;
    if run.state == crate::runs::State::Pending {
        // Held: released soon, or left so when its version has long been recorded, or given up
        // (or left held for good) when its deadline passed before it was recorded.
        // A catalog that cannot be read says nothing: pending, asked again.
        let history = match s.manager(name) {
            Ok(m) => m.history(&run.nick).await.ok(),
            Err(_) => None,
        };
        if let Some(history) = history {
            let recorded = history.into_iter().find(|r| Some(r.number) == run.version);
            let grace = crate::runs::release_grace(&cluster).as_secs();
            let deadline = crate::runs::deadline_of(&job);
            run.settle_held(recorded.as_ref(), deadline, now, grace);
        }
    }
    Ok((run, crate::runs::JobStatus::of(&job)))
}

/// The recipe a nick is built from, as the catalog holds it (its steps name the files an edit
/// must upload again).
async fn recipe(State(s): State<Service>, caller: Caller, Path(nick): Path<String>) -> Answer {
    let actor = caller.require(Role::Requester, "show recipes")?;
    nick_param(&nick)?;
    let entry = s
        .manager(actor)?
        .catalog()
        .get(&nick)
        .await
        .map_err(|e| ApiError::from_core(&format!("reading the recipe of {nick}"), e))?
        .ok_or_else(|| {
            ApiError::new(
                Code::UnknownNick,
                format!("no managed image is registered as {nick:?}"),
            )
        })?;
    json(&entry.recipe)
}

/// The steps of an edit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBody {
    /// Steps appended to the recipe, in the recipe's format.
    steps: Vec<ociup_core::managed::recipe::Step>,
}

/// `ociup edit`: steps appended to a nick's recipe, and the version made of it. The body is
/// JSON `{"steps": [...]}` when no step (stored or new) reads a file, else a tar holding
/// `steps.json` (its first entry of that name at the root) and every file the recipe's steps
/// name, by their relative names (regular files and directories only, as a registration's
/// upload; a file may itself be named `steps.json`).
async fn edit(
    State(s): State<Service>,
    caller: Caller,
    Path(nick): Path<String>,
    req: Request,
) -> Answer {
    let actor = caller.require(Role::Admin, "edit")?.to_owned();
    nick_param(&nick)?;
    let kind = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let is_tar = match kind.as_deref() {
        Some("application/x-tar") => true,
        Some("application/json") | None => false,
        Some(_) => {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "the body must be JSON {\"steps\": [...]} or a tar (application/x-tar) of \
                 steps.json and the files the steps name",
            ));
        }
    };
    let bytes = Bytes::from_request(req, &s).await?;
    let dir = tempfile::tempdir()
        .map_err(|e| ApiError::new(Code::Internal, format!("a staging directory: {e}")))?;
    let root = dir.path().to_owned();
    let body = tokio::task::spawn_blocking(move || -> Result<EditBody, ApiError> {
        let text = if is_tar {
            unpack_upload(&bytes, &root, "steps.json")?.ok_or_else(|| {
                ApiError::new(
                    Code::InvalidRecipe,
                    "the upload holds no steps.json at its root",
                )
            })?
        } else {
            bytes.to_vec()
        };
        serde_json::from_slice(&text)
            .map_err(|e| ApiError::new(Code::InvalidRequest, format!("the steps: {e}")))
    })
    .await
    .map_err(|e| ApiError::new(Code::Internal, e.to_string()))??;
    if body.steps.is_empty() {
        return Err(ApiError::new(
            Code::InvalidRequest,
            "no steps given: say what to add, remove or set",
        ));
    }
    let m = s.manager(&actor)?;
    let context = format!("editing {nick}");
    allowed_entry(&s, &m, &nick, &context).await?;
    // The steps given read only what was uploaded (the library lets steps typed on a command
    // line read anywhere: here they come from the network).
    let typed = Recipe {
        nick: nick.clone(),
        base: "-".into(),
        target: "-".into(),
        steps: body.steps.clone(),
    };
    typed
        .check_sources(dir.path(), SourceAccess::Confined)
        .map_err(|e| ApiError::new(Code::InvalidRecipe, format!("{context}: {}", chain(&e))))?;
    let command = std::iter::once(format!("ociup edit {nick}"))
        .chain(
            body.steps
                .iter()
                .map(ociup_core::managed::recipe::Step::command),
        )
        .collect::<Vec<_>>()
        .join(" ");
    let permit = s.regeneration_permit()?;
    let service = s.clone();
    let record = s
        .run_to_end(async move {
            let _permit = permit;
            let lock = service.nick_lock(&nick);
            let _held = lock.lock().await;
            let record = m
                .edit(&nick, body.steps, dir.path(), command)
                .await
                .map_err(|e| ApiError::from_core(&context, e))?;
            drop(dir);
            Ok(record)
        })
        .await?;
    json(&record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // set_path refuses `..`; write the name field directly as a hostile client would.
            let field = &mut h.as_old_mut().name;
            field[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn an_upload_with_dotdot_absolute_names_or_links_is_refused() {
        for (name, kind) in [
            ("../evil", tar::EntryType::Regular),
            ("/etc/evil", tar::EntryType::Regular),
            ("a/../../evil", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
            ("hard", tar::EntryType::Link),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let err = unpack_upload(&tar_of(&[(name, kind, b"x")]), dir.path(), "recipe.json")
                .expect_err(name);
            assert_eq!(err.code, Code::InvalidRecipe, "{name}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let recipe = unpack_upload(
            &tar_of(&[
                ("./recipe.json", tar::EntryType::Regular, b"{}"),
                ("files/a", tar::EntryType::Regular, b"a"),
            ]),
            dir.path(),
            "recipe.json",
        )
        .expect("a plain upload");
        assert_eq!(recipe.as_deref(), Some(&b"{}"[..]));
        assert!(!dir.path().join("recipe.json").exists());
        assert_eq!(
            std::fs::read(dir.path().join("files/a")).expect("read"),
            b"a"
        );
        // A name given twice is refused, not overwritten.
        let dir = tempfile::tempdir().expect("tempdir");
        let twice = tar_of(&[
            ("a", tar::EntryType::Regular, b"1"),
            ("a", tar::EntryType::Regular, b"2"),
        ]);
        assert!(unpack_upload(&twice, dir.path(), "recipe.json").is_err());
    }

    #[test]
    fn a_file_may_be_named_as_the_recipe() {
        // The first recipe.json at the top is the recipe; a second one is a file it names.
        let dir = tempfile::tempdir().expect("tempdir");
        let upload = tar_of(&[
            (
                "recipe.json",
                tar::EntryType::Regular,
                b"{\"the\": \"recipe\"}",
            ),
            ("recipe.json", tar::EntryType::Regular, b"a source"),
            ("sub/recipe.json", tar::EntryType::Regular, b"another"),
        ]);
        let recipe = unpack_upload(&upload, dir.path(), "recipe.json").expect("unpacked");
        assert_eq!(recipe.as_deref(), Some(&b"{\"the\": \"recipe\"}"[..]));
        assert_eq!(
            std::fs::read(dir.path().join("recipe.json")).expect("read"),
            b"a source"
        );
        assert_eq!(
            std::fs::read(dir.path().join("sub/recipe.json")).expect("read"),
            b"another"
        );
        // No recipe at the top: none answered (a nested one is a file).
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = tar_of(&[("sub/steps.json", tar::EntryType::Regular, b"[]")]);
        assert_eq!(
            unpack_upload(&nested, dir.path(), "steps.json").expect("unpacked"),
            None
        );
    }

    #[test]
    fn modes_are_kept_with_special_bits_and_on_directories() {
        use std::os::unix::fs::PermissionsExt;
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, mode) in [
            ("d", tar::EntryType::Directory, 0o555),
            ("d/run", tar::EntryType::Regular, 0o4755),
            ("d/inner", tar::EntryType::Directory, 0o1750),
            ("d/inner/g", tar::EntryType::Regular, 0o2711),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(if kind.is_dir() { 0 } else { 1 });
            h.set_mode(mode);
            let data: &[u8] = if kind.is_dir() { b"" } else { b"x" };
            b.append_data(&mut h, name, data).expect("append");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        unpack_upload(&b.into_inner().expect("tar"), dir.path(), "recipe.json").expect("unpacked");
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join(p))
                .expect("stat")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("d"), 0o555);
        assert_eq!(mode("d/run"), 0o4755);
        assert_eq!(mode("d/inner"), 0o1750);
        // setgid on a file is kept by the kernel only for a member of its group: the owner's
        // own group here.
        assert_eq!(mode("d/inner/g"), 0o2711);
        std::fs::set_permissions(dir.path().join("d"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod back, to clean up");
    }

    #[test]
    fn invented_methods_share_one_metrics_label() {
        use axum::http::Method;
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for m in ["XYZ1", "XYZ2", "TRACE", "CONNECT"] {
            let m = Method::from_bytes(m.as_bytes()).expect("method");
            assert_eq!(method_label(&m), "other", "{m}");
        }
    }

    #[test]
    fn targets_with_a_tag_or_digest_are_refused() {
        assert!(untagged("localhost:5000/apps/x").is_ok());
        assert!(untagged("oci:/srv/images").is_ok());
        assert!(untagged("localhost:5000/apps/x:v1").is_err());
        assert!(untagged("oci:/srv/images:v1").is_err());
    }
}

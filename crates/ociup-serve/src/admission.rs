//! The Kubernetes mutating admission webhook (`POST /v1/admission`, AdmissionReview
//! `admission.k8s.io/v1`): a workload whose containers name a nick gets those images rewritten
//! to the nick's pinned reference, regenerated first when its base moved.
//!
//! What names a nick (docs/serve.md says it for users):
//! - a container or initContainer whose image is exactly `ociup.dev/<nick>`;
//! - the object's annotation `ociup.dev/nick.<container-name>: <nick>`: that container or
//!   initContainer, whatever its image;
//! - the object's annotation `ociup.dev/nick: <nick>`: the pod template's only container (an
//!   object with several containers is refused: name the container instead).
//!
//! `ephemeralContainers` are not rewritten. A CronJob is checked but not pinned: each Job it
//! creates is pinned when that Job is created (its `jobTemplate` would otherwise freeze the
//! version of the day the CronJob was applied).
//!
//! An image that already carries a digest is left as it is when only an annotation names it (a
//! Deployment's ReplicaSets carry its annotations and its pinned template: they are not pinned
//! again to a newer version). Objects that name no nick are admitted at once, untouched,
//! without reading the catalog.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ociup_core::managed::manager::{Resolution, ResolveOptions, Unreachable};
use ociup_core::managed::recipe::validate_nick;
use serde_json::{Value, json};

use crate::error::{ApiError, Code};
use crate::{Access, Service};

/// The image prefix that names a nick: `ociup.dev/<nick>`.
pub const IMAGE_PREFIX: &str = "ociup.dev/";
/// The annotation that names the nick of the only container.
pub const NICK_ANNOTATION: &str = "ociup.dev/nick";
/// The annotation set on an object admitted with a stale version, saying why.
pub const STALE_ANNOTATION: &str = "ociup.dev/stale";

/// The largest AdmissionReview read (an object and its old version; the API server's own
/// request limit is 3 MiB).
const BODY_LIMIT: usize = 8 * 1024 * 1024;
/// How long past the admission timeout the stale policy may spend reading the catalog's current
/// versions once regenerations failed or timed out (one deadline shared by every nick).
const FALLBACK_LIMIT: Duration = Duration::from_secs(1);
/// The longest Kubernetes username kept as it is in an actor and the log, in bytes; longer
/// ones are cut (see [`bounded_user`]).
pub const USER_LIMIT: usize = 256;

/// What to do when a nick cannot be resolved in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Deny the object (`allowed: false`, with the reason).
    Refuse,
    /// Admit it with the last recorded version, annotated `ociup.dev/stale: <reason>`.
    Stale,
}

/// The webhook's settings.
#[derive(Debug)]
pub struct Admission {
    /// The longest a review may take resolving (the regeneration it started goes on).
    pub timeout: Duration,
    /// What a failure or a timeout does.
    pub failure: Failure,
    /// Serve reviews from callers that present no credentials (an API server not configured
    /// to authenticate to webhooks). Only on a loopback listener ([`crate::serve`] refuses
    /// another).
    pub unauthenticated: bool,
    /// The token names and client-certificate CNs that may call the webhook (the API server's
    /// identities); any other caller gets 403, whatever its role.
    pub callers: BTreeSet<String>,
    /// The last version pinned per nick: what the stale policy falls back to when the catalog
    /// cannot be read either.
    last: Mutex<HashMap<String, Resolution>>,
}

impl Admission {
    /// The webhook's settings: callers named in `callers` (token names, client-certificate
    /// CNs), or any caller at all when `unauthenticated`.
    pub fn new(
        timeout: Duration,
        failure: Failure,
        unauthenticated: bool,
        callers: impl IntoIterator<Item = String>,
    ) -> Admission {
        Admission {
            timeout,
            failure,
            unauthenticated,
            callers: callers.into_iter().collect(),
            last: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, r: &Resolution) {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(r.nick.clone(), r.clone());
    }

    fn remembered(&self, nick: &str) -> Option<Resolution> {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(nick)
            .cloned()
    }
}

/// One image to rewrite.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// JSON pointer of the image in the object.
    pointer: String,
    container: String,
    /// The image, empty when the container has none.
    image: String,
    /// Whether the container has an `image` (else the patch adds it).
    has_image: bool,
    nick: String,
}

/// What the review answers.
#[derive(Debug, Default)]
struct Outcome {
    denied: Option<String>,
    patch: Vec<Value>,
    warnings: Vec<String>,
    pinned: usize,
    stale: Vec<String>,
}

impl Outcome {
    fn deny(message: String) -> Outcome {
        Outcome {
            denied: Some(message),
            ..Outcome::default()
        }
    }
}

/// `POST /v1/admission`.
pub(crate) async fn admit(State(s): State<Service>, req: Request) -> Response {
    match review(&s, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn review(s: &Service, req: Request) -> Result<Response, ApiError> {
    let Some(settings) = s.inner.config.admission.as_ref() else {
        return Err(ApiError::new(
            Code::NotFound,
            "this service was started without --admission",
        ));
    };
    let caller = if settings.unauthenticated {
        None
    } else {
        let name = authenticate(s, &req)?;
        if !settings.callers.contains(&name) {
            return Err(ApiError::new(
                Code::Forbidden,
                format!(
                    "{name} may not call the admission webhook: only the API server's identities \
                     may (--admission-caller {name})"
                ),
            ));
        }
        Some(name)
    };
    let bytes = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|e| {
            ApiError::new(
                Code::PayloadTooLarge,
                format!("the AdmissionReview: {e} (at most {BODY_LIMIT} bytes)"),
            )
        })?;
    let review: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            Code::InvalidRequest,
            format!("the body is not an AdmissionReview: {e}"),
        )
    })?;
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err(ApiError::new(
            Code::InvalidRequest,
            "the body is not an AdmissionReview of admission.k8s.io/v1 (configure the webhook \
             with admissionReviewVersions: [v1])",
        ));
    }
    let request = &review["request"];
    let uid = request["uid"].as_str().ok_or_else(|| {
        ApiError::new(
            Code::InvalidRequest,
            "the AdmissionReview has no request.uid",
        )
    })?;
    let user = bounded_user(
        request["userInfo"]["username"]
            .as_str()
            .filter(|u| !u.is_empty())
            .unwrap_or("unknown"),
    );
    let actor = format!("k8s:{user}");
    // Who made the change, and through whom: the service for the authenticated webhook caller.
    let via = match &caller {
        Some(c) => format!("{} for {c}", s.inner.config.identity),
        None => format!("{} for an unauthenticated caller", s.inner.config.identity),
    };
    let outcome = decide(s, settings, request, &actor, &via).await;
    let kind = request["kind"]["kind"].as_str().unwrap_or("");
    let name = request["name"]
        .as_str()
        .or_else(|| request["object"]["metadata"]["generateName"].as_str())
        .unwrap_or("");
    // Every field bounded: the log holds no more than a few hundred bytes of what was sent.
    let (uid_logged, namespace, name) = (
        bounded_user(uid),
        bounded_user(request["namespace"].as_str().unwrap_or("")),
        bounded_user(name),
    );
    tracing::info!(
        uid = uid_logged,
        kind = bounded_user(kind),
        namespace,
        name,
        user,
        caller = caller.as_deref().unwrap_or("(unauthenticated)"),
        allowed = outcome.denied.is_none(),
        pinned = outcome.pinned,
        stale = outcome.stale.join(","),
        "admission"
    );
    let mut response = json!({"uid": uid, "allowed": outcome.denied.is_none()});
    if let Some(message) = &outcome.denied {
        response["status"] = json!({"code": 403, "reason": "Forbidden", "message": message});
    }
    if !outcome.patch.is_empty() {
        let patch = serde_json::to_vec(&outcome.patch)
            .map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    if !outcome.warnings.is_empty() {
        response["warnings"] = json!(outcome.warnings);
    }
    Ok(Json(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
    .into_response())
}

/// Who calls the webhook: a client certificate given a role (when no Authorization header is
/// sent), or a bearer token of any role.
fn authenticate(s: &Service, req: &Request) -> Result<String, ApiError> {
    let auth = req.headers().get(header::AUTHORIZATION);
    if auth.is_none()
        && let Some(cert) = req.extensions().get::<crate::tls::ClientCert>()
    {
        return cert.identity().map(|i| i.name);
    }
    let token = crate::api::bearer(auth).ok_or_else(|| {
        ApiError::new(
            Code::Unauthorized,
            "the webhook takes a bearer token or a client certificate (the API server's \
                 AdmissionConfiguration kubeConfigFile gives them), or a service started with \
                 --admission-unauthenticated",
        )
    })?;
    s.inner
        .tokens
        .identify(token)
        .map_err(|_| {
            ApiError::new(
                Code::TokensUnreadable,
                "the service cannot read its tokens file, so no token is accepted now",
            )
        })?
        .map(|i| i.name)
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "unknown or revoked token"))
}

/// The pod spec of an object of `kind`, and its JSON pointer; `None` for kinds without one.
fn pod_spec<'a>(kind: &str, object: &'a Value) -> Option<(&'a Value, &'static str)> {
    let pointer = match kind {
        "Pod" => "/spec",
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => "/spec/template/spec",
        "PodTemplate" => "/template/spec",
        _ => return None,
    };
    object.pointer(pointer).map(|v| (v, pointer))
}

/// The images of `object` that name a nick; `Err` (the object is denied) for a name that is
/// meant for ociup but wrong.
fn targets(kind: &str, object: &Value) -> Result<Vec<Target>, String> {
    let Some((spec, base)) = pod_spec(kind, object) else {
        return Ok(Vec::new());
    };
    let mut containers = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            containers.push((
                list,
                format!("{base}/{list}/{i}/image"),
                c["name"].as_str().unwrap_or("").to_owned(),
                c["image"].as_str().unwrap_or("").to_owned(),
                c["image"].is_string(),
            ));
        }
    }
    let mut out: Vec<Target> = Vec::new();
    for (_, pointer, container, image, _) in &containers {
        if let Some(nick) = image.strip_prefix(IMAGE_PREFIX) {
            validate_nick(nick).map_err(|e| {
                format!(
                    "container {container}: image {image}: write {IMAGE_PREFIX}<nick> with no \
                     tag or digest ({e})"
                )
            })?;
            out.push(Target {
                pointer: pointer.clone(),
                container: container.clone(),
                image: image.clone(),
                has_image: true,
                nick: nick.to_owned(),
            });
        }
    }
    let annotations = object["metadata"]["annotations"].as_object();
    for (key, value) in annotations.into_iter().flatten() {
        let chosen = if key == NICK_ANNOTATION {
            let only: Vec<_> = containers
                .iter()
                .filter(|(list, ..)| *list == "containers")
                .collect();
            if only.len() != 1 {
                return Err(format!(
                    "annotation {key}: the pod template has {} containers; name the one to pin \
                     with {NICK_ANNOTATION}.<container-name>",
                    only.len()
                ));
            }
            only[0]
        } else if let Some(name) = key.strip_prefix("ociup.dev/nick.") {
            containers
                .iter()
                .find(|(_, _, c, ..)| c == name)
                .ok_or_else(|| {
                    format!("annotation {key}: no container or initContainer is named {name}")
                })?
        } else {
            continue;
        };
        let nick = value.as_str().unwrap_or("");
        validate_nick(nick).map_err(|e| format!("annotation {key}: {nick:?}: {e}"))?;
        let (_, pointer, container, image, has_image) = chosen;
        if let Some(named) = out.iter().find(|t| &t.pointer == pointer) {
            if named.nick != nick {
                return Err(format!(
                    "container {container}: its image names the nick {} and annotation {key} \
                     names {nick}",
                    named.nick
                ));
            }
            continue;
        }
        if image.contains('@') {
            continue; // pinned already (a copy of a pinned template): left as it is
        }
        out.push(Target {
            pointer: pointer.clone(),
            container: container.clone(),
            image: image.clone(),
            has_image: *has_image,
            nick: nick.to_owned(),
        });
    }
    Ok(out)
}

async fn decide(
    s: &Service,
    settings: &Admission,
    request: &Value,
    actor: &str,
    via: &str,
) -> Outcome {
    let object = &request["object"];
    let kind = request["kind"]["kind"]
        .as_str()
        .or_else(|| object["kind"].as_str())
        .unwrap_or("");
    if !object.is_object() {
        return Outcome::default();
    }
    if kind == "CronJob" {
        return cron_job(object);
    }
    let targets = match targets(kind, object) {
        Ok(t) if t.is_empty() => return Outcome::default(),
        Ok(t) => t,
        Err(message) => return Outcome::deny(format!("ociup: {message}")),
    };
    let dry_run = request["dryRun"].as_bool().unwrap_or(false);
    let mut nicks: Vec<String> = targets.iter().map(|t| t.nick.clone()).collect();
    nicks.sort();
    nicks.dedup();
    let unreachable = match settings.failure {
        Failure::Refuse => Unreachable::Fail,
        Failure::Stale => Unreachable::Stale,
    };
    // Every nick at once, all within one deadline; the stale policy's fallbacks (run in the
    // same tasks, at once too) within one more shared second.
    let deadline = tokio::time::Instant::now() + settings.timeout;
    let fallback_deadline = deadline + FALLBACK_LIMIT;
    let (limit, stale_policy) = (settings.timeout, settings.failure == Failure::Stale);
    let mut set = tokio::task::JoinSet::new();
    for nick in &nicks {
        let (s, nick, actor, via) = (s.clone(), nick.clone(), actor.to_owned(), via.to_owned());
        set.spawn(async move {
            let work = async {
                let shared = s.manager("ociup-serve")?;
                s.check_allowed(&shared, &nick).await?;
                // The nick exists and is allowed: a manager for this review's actor, dropped
                // with it (actors are whatever the API server names; none is kept).
                let m = Arc::new(s.new_manager(&actor, via)?);
                s.resolve_pinned(m, &actor, &nick, dry_run, false, unreachable)
                    .await
            };
            let r = match tokio::time::timeout_at(deadline, work).await {
                Ok(r) => r,
                Err(_) => Err(ApiError::new(
                    Code::Timeout,
                    format!(
                        "no version within the admission timeout ({}s); a regeneration it \
                         started goes on",
                        limit.as_secs_f64()
                    ),
                )),
            };
            let fallback = match &r {
                Err(e) if stale_policy && recoverable(e.code) => {
                    stale_version(&s, &nick, fallback_deadline).await
                }
                _ => None,
            };
            (nick, r, fallback)
        });
    }
    let mut pinned: BTreeMap<String, String> = BTreeMap::new();
    let mut outcome = Outcome::default();
    while let Some(joined) = set.join_next().await {
        let (nick, r, fallback) = match joined {
            Ok(x) => x,
            Err(e) => return Outcome::deny(format!("ociup: resolving failed: {e}")),
        };
        let r = match r {
            Ok(r) => {
                if r.stale {
                    outcome.stale.push(nick.clone());
                    outcome.warnings.push(format!(
                        "ociup: {nick}: the base could not be reached; version {} is the last \
                         recorded",
                        r.version
                    ));
                }
                settings.remember(&r);
                r
            }
            Err(e) if settings.failure == Failure::Refuse || !recoverable(e.code) => {
                return Outcome::deny(format!("ociup: nick {nick}: {}", e.message));
            }
            Err(e) => match fallback.or_else(|| settings.remembered(&nick)) {
                Some(r) => {
                    outcome.stale.push(nick.clone());
                    outcome.warnings.push(format!(
                        "ociup: {nick}: {}; version {} is the last recorded",
                        e.message, r.version
                    ));
                    r
                }
                None => {
                    return Outcome::deny(format!(
                        "ociup: nick {nick}: {}; and no recorded version could be read to \
                         admit instead",
                        e.message
                    ));
                }
            },
        };
        // What a cluster pulls: the reference without ociup's `docker://` transport.
        let reference = r
            .reference
            .strip_prefix("docker://")
            .unwrap_or(&r.reference);
        pinned.insert(nick, reference.to_owned());
    }
    let reason = (!outcome.stale.is_empty()).then(|| {
        outcome
            .warnings
            .iter()
            .map(|w| w.trim_start_matches("ociup: "))
            .collect::<Vec<_>>()
            .join("; ")
            .chars()
            .take(2000)
            .collect::<String>()
    });
    outcome.pinned = targets.len();
    outcome.patch = patch(object, &targets, &pinned, reason.as_deref());
    outcome
}

/// A CronJob is checked, not pinned: each Job it creates is pinned at its own CREATE (a pinned
/// `jobTemplate` would freeze the version of the day the CronJob was applied).
fn cron_job(object: &Value) -> Outcome {
    match targets("Job", &object["spec"]["jobTemplate"]) {
        Ok(t) if t.is_empty() => Outcome::default(),
        Ok(_) => Outcome {
            warnings: vec![
                "ociup: a CronJob is not pinned; each Job it creates is pinned when it is \
                 created (have the webhook match jobs)"
                    .to_owned(),
            ],
            ..Outcome::default()
        },
        Err(message) => Outcome::deny(format!("ociup: spec.jobTemplate: {message}")),
    }
}

/// The JSON patch pinning `targets` to `pinned` (nick to reference): `replace` of an image,
/// `add` where a container has none; the stale annotation set to `stale` (its reason), or
/// removed when the object carries it and every nick resolved cleanly.
fn patch(
    object: &Value,
    targets: &[Target],
    pinned: &BTreeMap<String, String>,
    stale: Option<&str>,
) -> Vec<Value> {
    let mut patch = Vec::new();
    for t in targets {
        let Some(reference) = pinned.get(&t.nick) else {
            continue;
        };
        if t.image != *reference || !t.has_image {
            let op = if t.has_image { "replace" } else { "add" };
            patch.push(json!({"op": op, "path": t.pointer, "value": reference}));
        }
    }
    // RFC 6901: `~` is `~0`, `/` is `~1` in a pointer's token.
    let key = format!(
        "/metadata/annotations/{}",
        STALE_ANNOTATION.replace('~', "~0").replace('/', "~1")
    );
    let annotations = object["metadata"]["annotations"].as_object();
    match (stale, annotations) {
        (Some(reason), Some(_)) => patch.push(json!({"op": "add", "path": key, "value": reason})),
        (Some(reason), None) => patch.push(json!({
            "op": "add", "path": "/metadata/annotations",
            "value": {STALE_ANNOTATION: reason},
        })),
        (None, Some(a)) if a.contains_key(STALE_ANNOTATION) => {
            patch.push(json!({"op": "remove", "path": key}));
        }
        (None, _) => {}
    }
    patch
}

/// `username` as an actor and the log may hold it: control and odd space characters escaped
/// (`\n`, `\u{2028}`), and when that is longer than [`USER_LIMIT`] bytes, its first 200 bytes
/// and the marker `…[N bytes, sha256:<16 hex>]` (N the username's length): two long names
/// stay apart, none grows what is kept or logged without bound.
pub fn bounded_user(username: &str) -> String {
    let mut out = String::new();
    for c in username.chars() {
        if c.is_control() || (c.is_whitespace() && c != ' ') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if out.len() <= USER_LIMIT {
        return out;
    }
    let mut cut = 200;
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}…[{} bytes, sha256:{}]",
        &out[..cut],
        username.len(),
        &crate::tokens::hash(username)[..16]
    )
}

/// Whether the stale policy may admit the last version after this failure: not when the
/// object names something that is not there or not allowed (there is no version to fall back
/// to, or none it may use).
fn recoverable(code: Code) -> bool {
    !matches!(
        code,
        Code::UnknownNick | Code::OutsideAllowlist | Code::InvalidRequest | Code::Conflict
    )
}

/// The stale policy's version: the catalog's current one, read without asking the base, by
/// `deadline`; `None` when it cannot be (the caller then takes the last this service pinned).
async fn stale_version(
    s: &Service,
    nick: &str,
    deadline: tokio::time::Instant,
) -> Option<Resolution> {
    // The service's own manager: the review's may hold the nick's lock for the very
    // regeneration that is late. Nothing is written, so the actor does not matter.
    let offline = async {
        let m = s.manager("ociup-serve")?;
        s.check_allowed(&m, nick).await?;
        m.resolve(
            nick,
            ResolveOptions {
                offline: true,
                ..ResolveOptions::default()
            },
        )
        .await
        .map_err(|e| ApiError::from_core(nick, e))
    };
    tokio::time::timeout_at(deadline, offline).await.ok()?.ok()
}

impl Service {
    /// The nick's entry, its recipe within the allowlist (as a resolve checks it), its target
    /// a registry (a cluster cannot pull from a layout): checked before anything is resolved.
    async fn check_allowed(
        &self,
        m: &ociup_core::managed::manager::Manager<crate::Guarded>,
        nick: &str,
    ) -> Result<(), ApiError> {
        let entry = m
            .catalog()
            .get(nick)
            .await
            .map_err(|e| ApiError::from_core(&format!("resolving {nick}"), e))?
            .ok_or_else(|| {
                ApiError::new(
                    Code::UnknownNick,
                    format!("no managed image is registered as {nick:?}"),
                )
            })?;
        let allow = &self.inner.config.allow;
        for (reference, access) in [
            (&entry.recipe.base, Access::Read),
            (&entry.recipe.target, Access::Write),
        ] {
            allow
                .check(reference, access)
                .map_err(|e| ApiError::new(Code::OutsideAllowlist, e.to_string()))?;
        }
        if entry.recipe.target.starts_with("oci:") {
            return Err(ApiError::new(
                Code::InvalidRequest,
                format!(
                    "its versions are written to a layout ({}), which a cluster cannot pull",
                    entry.recipe.target
                ),
            ));
        }
        Ok(())
    }

    /// The nick's version to run, regenerated when its base moved: what `POST
    /// /v1/nicks/{nick}/resolve` and the webhook answer. Whether an upgrade is due is asked
    /// first; only then is the service's lock of the nick taken (shared with every resolve,
    /// registration and upgrade of it), asked again under it, and a permit of the regeneration
    /// bound taken, so that requests at once for one nick make one version. `check_only` (a
    /// dry run, a check, an offline resolve) answers the current version and writes nothing;
    /// `offline` reads nothing of the base. `m` acts for `actor`: a version it makes is counted
    /// in `ociup_upgrades_total` when recorded here ([`Service::count_upgrade_later`]).
    pub(crate) async fn resolve_pinned(
        &self,
        m: Arc<ociup_core::managed::manager::Manager<crate::Guarded>>,
        actor: &str,
        nick: &str,
        check_only: bool,
        offline: bool,
        unreachable: Unreachable,
    ) -> Result<Resolution, ApiError> {
        let opts = move |check: bool| ResolveOptions {
            check,
            offline,
            unreachable,
            ..ResolveOptions::default()
        };
        let context = format!("resolving {nick}");
        let first = m
            .resolve(nick, opts(true))
            .await
            .map_err(|e| ApiError::from_core(&context, e))?;
        if check_only || !first.upgrade_due {
            return Ok(first);
        }
        let held = self.nick_lock(nick).lock_owned().await;
        let again = m
            .resolve(nick, opts(true))
            .await
            .map_err(|e| ApiError::from_core(&context, e))?;
        if !again.upgrade_due {
            return Ok(again);
        }
        let permit = self.regeneration_permit()?;
        let service = self.clone();
        let (nick, actor) = (nick.to_owned(), actor.to_owned());
        self.run_to_end(async move {
            let (_held, _permit) = (held, permit);
            let r = m
                .resolve(&nick, opts(false))
                .await
                .map_err(|e| ApiError::from_core(&context, e))?;
            if r.upgraded {
                tracing::info!(nick, version = r.version, digest = r.digest, "upgraded");
                service.count_upgrade_later(Arc::clone(&m), &nick, r.version, &r.digest, &actor);
            }
            Ok(r)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: Value, annotations: Value) -> Value {
        json!({"metadata": {"annotations": annotations}, "spec": containers})
    }

    #[test]
    fn images_and_annotations_name_nicks() {
        let p = pod(
            json!({
                "initContainers": [{"name": "init", "image": "ociup.dev/setup"}],
                "containers": [
                    {"name": "app", "image": "ociup.dev/app"},
                    {"name": "side", "image": "registry.example/side:1"},
                    {"name": "pinned", "image": "registry.example/x@sha256:00"},
                ],
            }),
            json!({"ociup.dev/nick.side": "helper", "ociup.dev/nick.pinned": "x",
                   "ociup.dev/stale": "ignored", "other": "ignored"}),
        );
        let t = targets("Pod", &p).expect("targets");
        let got: Vec<_> = t
            .iter()
            .map(|t| (t.pointer.as_str(), t.nick.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/spec/initContainers/0/image", "setup"),
                ("/spec/containers/0/image", "app"),
                ("/spec/containers/1/image", "helper"),
            ]
        );
        // Nothing named: nothing to do (no catalog read).
        let plain = pod(
            json!({"containers": [{"name": "a", "image": "busybox"}]}),
            json!({}),
        );
        assert!(targets("Pod", &plain).expect("ok").is_empty());
        assert!(targets("ConfigMap", &p).expect("ok").is_empty());
    }

    #[test]
    fn workload_kinds_are_walked_to_their_pod_template() {
        let containers = json!({"containers": [{"name": "a", "image": "ociup.dev/app"}]});
        let template = json!({"template": {"spec": containers}});
        for (kind, object, pointer) in [
            (
                "Deployment",
                json!({"spec": template}),
                "/spec/template/spec/containers/0/image",
            ),
            (
                "Job",
                json!({"spec": template}),
                "/spec/template/spec/containers/0/image",
            ),
        ] {
            let t = targets(kind, &object).expect(kind);
            assert_eq!(t.len(), 1, "{kind}");
            assert_eq!(t[0].pointer, pointer);
        }
    }

    #[test]
    fn a_cron_job_is_checked_but_its_jobs_are_what_is_pinned() {
        let cron = |image: &str, annotations: Value| {
            json!({"spec": {"jobTemplate": {
                "metadata": {"annotations": annotations},
                "spec": {"template": {"spec": {"containers": [{"name": "a", "image": image}]}}},
            }}})
        };
        // Naming a nick: admitted, no patch, a warning saying when it is pinned.
        let o = cron_job(&cron("ociup.dev/app", json!({})));
        assert_eq!((o.denied, o.patch.len()), (None, 0));
        assert!(
            o.warnings[0].contains("each Job it creates"),
            "{:?}",
            o.warnings
        );
        // The job template's annotations name nicks too (the Jobs carry them).
        let o = cron_job(&cron("r.example/x:1", json!({"ociup.dev/nick": "app"})));
        assert_eq!((o.denied, o.warnings.len()), (None, 1));
        // Wrong names are denied now rather than at each Job.
        let o = cron_job(&cron("ociup.dev/app:v1", json!({})));
        assert!(o.denied.expect("denied").contains("spec.jobTemplate"));
        // Nothing named: untouched, silent.
        let o = cron_job(&cron("busybox", json!({})));
        assert_eq!((o.denied, o.warnings.len(), o.patch.len()), (None, 0, 0));
    }

    #[test]
    fn patches_replace_or_add_images_and_escape_the_stale_annotation() {
        let object = json!({"metadata": {"annotations": {"team": "x"}}, "spec": {"containers": [
            {"name": "a", "image": "ociup.dev/app"},
            {"name": "b"},
            {"name": "c", "image": "r.example/app@sha256:11"},
        ]}});
        let t = |i: usize, image: &str, has_image: bool| Target {
            pointer: format!("/spec/containers/{i}/image"),
            container: String::new(),
            image: image.to_owned(),
            has_image,
            nick: "app".to_owned(),
        };
        let targets = [
            t(0, "ociup.dev/app", true),
            t(1, "", false),
            t(2, "r.example/app@sha256:11", true),
        ];
        let pinned = BTreeMap::from([("app".to_owned(), "r.example/app@sha256:11".to_owned())]);
        let p = patch(&object, &targets, &pinned, Some("app: late"));
        assert_eq!(
            p,
            [
                json!({"op": "replace", "path": "/spec/containers/0/image", "value": "r.example/app@sha256:11"}),
                json!({"op": "add", "path": "/spec/containers/1/image", "value": "r.example/app@sha256:11"}),
                json!({"op": "add", "path": "/metadata/annotations/ociup.dev~1stale", "value": "app: late"}),
            ]
        );
        // No annotations yet: the map is added whole.
        let bare = json!({"metadata": {}});
        assert_eq!(
            patch(&bare, &[], &pinned, Some("why")),
            [
                json!({"op": "add", "path": "/metadata/annotations", "value": {"ociup.dev/stale": "why"}})
            ]
        );
        // Resolved cleanly, once marked stale: the mark is removed; never marked: nothing.
        let marked = json!({"metadata": {"annotations": {"ociup.dev/stale": "old"}}});
        assert_eq!(
            patch(&marked, &[], &pinned, None),
            [json!({"op": "remove", "path": "/metadata/annotations/ociup.dev~1stale"})]
        );
        assert!(patch(&object, &targets[2..], &pinned, None).is_empty());
    }

    #[test]
    fn usernames_are_bounded_before_they_become_actors_or_log_lines() {
        let sa = "system:serviceaccount:team-a:deployer";
        assert_eq!(bounded_user(sa), sa);
        assert_eq!(bounded_user("eve\nforged line"), "eve\\nforged line");
        assert_eq!(bounded_user("a\u{2028}b\u{7}"), "a\\u{2028}b\\u{7}");
        let long = |c: char| format!("{}{c}", "x".repeat(10_000));
        let (a, b) = (bounded_user(&long('a')), bounded_user(&long('b')));
        assert!(a.len() <= USER_LIMIT && b.len() <= USER_LIMIT, "{a}");
        assert_ne!(a, b, "two long names stay apart");
        assert!(
            a.starts_with(&"x".repeat(200)) && a.contains("[10001 bytes, sha256:"),
            "{a}"
        );
        // Cut on a character boundary.
        let wide = bounded_user(&"é".repeat(300));
        assert!(wide.len() <= USER_LIMIT && wide.starts_with("éé"), "{wide}");
    }

    #[test]
    fn names_meant_for_ociup_but_wrong_are_refused() {
        for (containers, annotations, says) in [
            (
                json!([{"name": "a", "image": "ociup.dev/app:v1"}]),
                json!({}),
                "no tag or digest",
            ),
            (
                json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]),
                json!({"ociup.dev/nick": "app"}),
                "2 containers",
            ),
            (
                json!([{"name": "a", "image": "x"}]),
                json!({"ociup.dev/nick.b": "app"}),
                "no container or initContainer is named b",
            ),
            (
                json!([{"name": "a", "image": "ociup.dev/one"}]),
                json!({"ociup.dev/nick.a": "two"}),
                "names the nick one",
            ),
            (
                json!([{"name": "a", "image": "x"}]),
                json!({"ociup.dev/nick": "Bad/Nick"}),
                "Bad/Nick",
            ),
        ] {
            let p = pod(json!({"containers": containers}), annotations);
            let e = targets("Pod", &p).expect_err(says);
            assert!(e.contains(says), "{e}");
        }
        // The only container, by the plain annotation; a pinned image is left alone.
        let p = pod(
            json!({"containers": [{"name": "a", "image": "r.example/app:latest"}]}),
            json!({"ociup.dev/nick": "app"}),
        );
        assert_eq!(targets("Pod", &p).expect("ok")[0].nick, "app");
        let p = pod(
            json!({"containers": [{"name": "a", "image": "r.example/app@sha256:00"}]}),
            json!({"ociup.dev/nick": "app"}),
        );
        assert!(targets("Pod", &p).expect("ok").is_empty());
    }
}

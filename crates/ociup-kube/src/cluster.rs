//! A cluster's API server: creating, releasing, deleting and following Jobs.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::job::keys;

/// Where the client configuration comes from. The default finds it as kubectl does:
/// `KUBECONFIG` (a list of files, merged), else `~/.kube/config`, else the in-cluster service
/// account (`KUBERNETES_SERVICE_HOST` and `/var/run/secrets/kubernetes.io/serviceaccount`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// A kubeconfig file to read instead (kubectl's `--kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
    /// The context to use instead of the current one (kubectl's `--context`).
    pub context: Option<String>,
}

/// A condition of a Job's status (`Complete`, `Failed`, `Suspended`, …).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// The condition type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A one-word reason (`BackoffLimitExceeded`), or `null`.
    pub reason: Option<String>,
    /// A message for people, or `null`.
    pub message: Option<String>,
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.kind, self.status)?;
        if let Some(r) = &self.reason {
            write!(f, " ({r})")?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// The conditions of a Job, in the order the server lists them.
pub fn conditions(job: &Job) -> Vec<Condition> {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| Condition {
                    kind: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How a Job ended: `Complete` (`succeeded`) or `Failed`, with all its conditions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finished {
    /// Whether it completed (`Complete=True`) rather than failed (`Failed=True`).
    pub succeeded: bool,
    /// Its conditions when it finished.
    pub conditions: Vec<Condition>,
}

/// Whether a Job has finished, and how.
pub fn finished(job: &Job) -> Option<Finished> {
    let conditions = conditions(job);
    let is = |kind: &str| {
        conditions
            .iter()
            .any(|c| c.kind == kind && c.status == "True")
    };
    let succeeded = if is("Complete") {
        true
    } else if is("Failed") {
        false
    } else {
        return None;
    };
    Some(Finished {
        succeeded,
        conditions,
    })
}

/// A Kubernetes API server and the namespace Jobs go to by default.
///
/// ```no_run
/// use ociup_kube::{Cluster, ConnectOptions, JobOptions, Pinned, build_job};
///
/// # async fn example() -> Result<(), ociup_kube::Error> {
/// let cluster = Cluster::connect(&ConnectOptions::default()).await?;
/// let pinned = Pinned {
///     nick: "trainer".into(),
///     version: 3,
///     reference: "docker://registry.example/team/trainer@sha256:aaaa".into(),
///     digest: "sha256:aaaa".into(),
///     base_digest: "sha256:bbbb".into(),
/// };
/// let job = cluster
///     .create(&build_job(&pinned, &JobOptions::default(), false)?)
///     .await?;
/// let name = job.metadata.name.unwrap();
/// let finished = cluster
///     .wait(cluster.default_namespace(), &name, None)
///     .await?;
/// println!("succeeded: {}", finished.succeeded);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    url: String,
    namespace: String,
    request_timeout: Option<Duration>,
}

/// How long a call to the API server may take unless [`Cluster::with_request_timeout`] says
/// otherwise: connecting, sending, and the whole answer.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a watch stays open before the server ends it and it is resumed from the last
/// resourceVersion seen.
const WATCH_SECONDS: u32 = 60;

/// How often in a row following a Job may fail (the server unreachable, a watch that breaks
/// before it brings anything) before [`Cluster::wait`] gives up.
const FOLLOW_ATTEMPTS: u32 = 6;

/// What a call to the API server ended with.
pub(crate) enum Call<T> {
    Done(T),
    Failed(kube::Error),
    TimedOut(Duration),
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.url)
            .field("namespace", &self.namespace)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects as kubectl would (see [`ConnectOptions`]); no request is made yet.
    ///
    /// # Errors
    /// [`Error::Config`]: no configuration found, an unknown context, a kubeconfig that does
    /// not parse or names files that cannot be read.
    pub async fn connect(options: &ConnectOptions) -> Result<Cluster> {
        let which = KubeConfigOptions {
            context: options.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config_error = |what: String| {
            move |e: Box<dyn std::error::Error + Send + Sync>| Error::Config { what, error: e }
        };
        let config = match (&options.kubeconfig, &options.context) {
            (Some(path), _) => {
                let what = format!("reading the kubeconfig {}", path.display());
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| config_error(what.clone())(Box::new(e)))?;
                kube::Config::from_custom_kubeconfig(file, &which)
                    .await
                    .map_err(|e| config_error(what)(Box::new(e)))?
            }
            (None, Some(context)) => kube::Config::from_kubeconfig(&which).await.map_err(|e| {
                config_error(format!(
                    "loading context {context:?} from the kubeconfig (KUBECONFIG or \
                         ~/.kube/config)"
                ))(Box::new(e))
            })?,
            (None, None) => kube::Config::infer().await.map_err(|e| {
                config_error(
                    "no Kubernetes client configuration: set KUBECONFIG or give --kubeconfig, \
                     have ~/.kube/config, or run in a pod with a service account"
                        .to_owned(),
                )(Box::new(e))
            })?,
        };
        Cluster::from_config(config)
    }

    /// A cluster from a kube configuration made elsewhere.
    ///
    /// # Errors
    /// [`Error::Config`]: a client cannot be made of it (bad certificates, say).
    pub fn from_config(config: kube::Config) -> Result<Cluster> {
        let url = config.cluster_url.to_string();
        let namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config).map_err(|e| Error::Config {
            what: format!("making a Kubernetes client for {url}"),
            error: Box::new(e),
        })?;
        Ok(Cluster::new(client, url, namespace))
    }

    /// A cluster from a client made elsewhere; `url` is named in errors, `namespace` is where
    /// Jobs without one go. Each call must be answered within [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn new(client: kube::Client, url: impl Into<String>, namespace: impl Into<String>) -> Self {
        Cluster {
            client,
            url: url.into().trim_end_matches('/').to_owned(),
            namespace: namespace.into(),
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
        }
    }

    /// The same cluster, each call to the API server bounded by `timeout` instead of
    /// [`DEFAULT_REQUEST_TIMEOUT`]: connecting, sending the request and reading the whole answer
    /// (kubectl's `--request-timeout`). `None` (kubectl's `0`): no bound, except for the
    /// deletion of a held Job after a failure, which is always bounded (by
    /// [`DEFAULT_REQUEST_TIMEOUT`] then). A call that runs out of time fails with
    /// [`Error::TimedOut`]. [`Cluster::wait`] bounds each request it makes, and the silence of
    /// a watch (the server ends each watch after a minute; a watch silent for a minute more
    /// than that is resumed).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// The bound on each call ([`Cluster::with_request_timeout`]).
    pub fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }

    /// The bound on deleting a Job after a failure: never unbounded.
    pub(crate) fn cleanup_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT)
    }

    /// Runs one call to the API server within `limit`.
    pub(crate) async fn within<T>(
        limit: Option<Duration>,
        call: impl Future<Output = kube::Result<T>>,
    ) -> Call<T> {
        let answer = match limit {
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(answer) => answer,
                Err(_) => return Call::TimedOut(limit),
            },
            None => call.await,
        };
        match answer {
            Ok(v) => Call::Done(v),
            Err(e) => Call::Failed(e),
        }
    }

    /// Runs one call to the API server within the request timeout; its error sorted and
    /// named with `action`.
    async fn call<T>(
        &self,
        action: impl FnOnce() -> String,
        call: impl Future<Output = kube::Result<T>>,
    ) -> Result<T> {
        match Cluster::within(self.request_timeout, call).await {
            Call::Done(v) => Ok(v),
            Call::Failed(e) => Err(self.failed(action(), e)),
            Call::TimedOut(after) => Err(self.timed_out(action(), after)),
        }
    }

    pub(crate) fn timed_out(&self, action: String, after: Duration) -> Error {
        Error::TimedOut {
            action,
            url: self.url.clone(),
            after,
        }
    }

    /// The client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The API server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The namespace of the configuration's context (`default` without one).
    pub fn default_namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn jobs(&self, namespace: &str) -> Api<Job> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// An error of the client, sorted: refused by the server, or the server not reached.
    pub(crate) fn failed(&self, action: String, e: kube::Error) -> Error {
        match e {
            kube::Error::Api(s) => Error::Refused {
                action,
                code: s.code,
                reason: s.reason,
                message: s.message,
            },
            e @ kube::Error::Auth(_) => Error::Auth {
                action,
                url: self.url.clone(),
                error: e,
            },
            e @ (kube::Error::HyperError(_)
            | kube::Error::Service(_)
            | kube::Error::HttpError(_)
            | kube::Error::RustlsTls(_)
            | kube::Error::TlsRequired) => Error::Unreachable {
                action,
                url: self.url.clone(),
                error: e,
            },
            e => Error::Client { action, error: e },
        }
    }

    /// Asks the API server (SelfSubjectAccessReviews) whether this client may `verbs` Jobs in
    /// `namespace`; nothing is created.
    ///
    /// # Errors
    /// [`Error::Refused`] (403) naming the verbs not allowed; [`Error::Unreachable`].
    pub async fn check_access(&self, namespace: &str, verbs: &[&str]) -> Result<()> {
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let action = format!("checking access to Jobs in namespace {namespace}");
        let (mut denied, mut reasons) = (Vec::new(), Vec::new());
        for verb in verbs {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(namespace.to_owned()),
                        verb: Some((*verb).to_owned()),
                        group: Some("batch".into()),
                        resource: Some("jobs".into()),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            let answer = self
                .call(
                    || action.clone(),
                    api.create(&PostParams::default(), &review),
                )
                .await?;
            let status = answer.status.unwrap_or_default();
            if !status.allowed {
                denied.push(*verb);
                reasons.extend(status.reason.filter(|r| !r.is_empty()));
            }
        }
        if denied.is_empty() {
            return Ok(());
        }
        let mut message = format!(
            "this user may not {} jobs.batch in namespace {namespace} (ociup needs {} for this)",
            denied.join(", "),
            verbs.join(", ")
        );
        if !reasons.is_empty() {
            message = format!("{message}: {}", reasons.join("; "));
        }
        Err(Error::Refused {
            action,
            code: 403,
            reason: "Forbidden".into(),
            message,
        })
    }

    /// Creates a Job in its namespace (the default namespace when it names none) and answers
    /// it as the server stored it (with its generated name, for a `generateName`).
    ///
    /// # Errors
    /// [`Error::Refused`] (forbidden, a name taken, invalid; no Job exists then);
    /// [`Error::Unreachable`], [`Error::TimedOut`], a 5xx [`Error::Refused`]: the Job may or
    /// may not have been created (the connection cut or the answer lost after the request was
    /// sent). [`Cluster::apply`] looks for it then.
    pub async fn create(&self, job: &Job) -> Result<Job> {
        let namespace = job
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| self.namespace.clone());
        let mut job = job.clone();
        job.metadata.namespace = Some(namespace.clone());
        let what = job
            .metadata
            .name
            .clone()
            .or_else(|| job.metadata.generate_name.as_ref().map(|g| format!("{g}*")))
            .unwrap_or_default();
        let api = self.jobs(&namespace);
        self.call(
            || format!("creating Job {namespace}/{what}"),
            api.create(&PostParams::default(), &job),
        )
        .await
    }

    /// Releases a Job created suspended: `spec.suspend` false, its `ociup.dev/held`
    /// annotation and label removed. The Job controller then creates its pods.
    ///
    /// # Errors
    /// [`Error::Refused`], [`Error::Unreachable`].
    pub async fn release(&self, namespace: &str, name: &str) -> Result<Job> {
        let patch = serde_json::json!({
            "metadata": {"annotations": {keys::HELD: null}, "labels": {keys::HELD: null}},
            "spec": {"suspend": false},
        });
        let api = self.jobs(namespace);
        self.call(
            || format!("unsuspending Job {namespace}/{name}"),
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
    }

    /// Deletes a Job and, in the background, its pods. A Job already gone is not an error.
    ///
    /// # Errors
    /// [`Error::Refused`], [`Error::Unreachable`].
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<()> {
        self.delete_within(namespace, name, self.request_timeout)
            .await
    }

    /// The Job in `namespace` that carries the request mark `mark` (its `ociup.dev/request`
    /// label and annotation, as [`Cluster::apply`] and [`Cluster::apply_marked`] put them),
    /// listed by that label within the request timeout; `None` when there is none. Needs
    /// `list` on `jobs.batch` in `namespace`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a mark that is not a label value; [`Error::Refused`],
    /// [`Error::Unreachable`], [`Error::TimedOut`].
    pub async fn find_marked(&self, namespace: &str, mark: &str) -> Result<Option<Job>> {
        crate::apply::check_mark(mark)?;
        let api = self.jobs(namespace);
        let params = ListParams::default().labels(&format!("{}={mark}", keys::REQUEST));
        let list = self
            .call(
                || format!("looking for the Job of request {mark} in {namespace}"),
                api.list(&params),
            )
            .await?;
        Ok(list
            .items
            .into_iter()
            .find(|job| crate::apply::is_ours(job, mark)))
    }

    /// [`Cluster::delete`] bounded by `limit`.
    pub(crate) async fn delete_within(
        &self,
        namespace: &str,
        name: &str,
        limit: Option<Duration>,
    ) -> Result<()> {
        let api = self.jobs(namespace);
        let action = || format!("deleting Job {namespace}/{name}");
        match Cluster::within(limit, api.delete(name, &DeleteParams::background())).await {
            Call::Done(_) => Ok(()),
            Call::Failed(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Call::Failed(e) => Err(self.failed(action(), e)),
            Call::TimedOut(after) => Err(self.timed_out(action(), after)),
        }
    }

    /// Deletes a Job after a failure, bounded even when calls are not
    /// ([`Cluster::with_request_timeout`]).
    pub(crate) async fn clean_up(&self, namespace: &str, name: &str) -> Result<()> {
        self.delete_within(namespace, name, Some(self.cleanup_timeout()))
            .await
    }

    /// Follows a Job until it has finished (`Complete` or `Failed`), watching it rather than
    /// polling; `timeout` bounds the wait.
    ///
    /// A watch that ends (the server closes each after a minute) or breaks (a connection cut,
    /// a silent server) is resumed from the last resourceVersion it brought; one the server no
    /// longer has (410 Gone) starts again from a fresh list. Six failures in a row (the
    /// server unreachable or not answering, a stream cut before it brought anything), or six
    /// watches in a row that end at once or answer 410 Gone, end the wait. A Job deleted after
    /// it finished (its `ttlSecondsAfterFinished`) is answered as it finished.
    ///
    /// # Errors
    /// [`Error::Wait`]: the Job was deleted, or the time ran out; [`Error::Refused`],
    /// [`Error::Unreachable`], [`Error::TimedOut`].
    pub async fn wait(
        &self,
        namespace: &str,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<Finished> {
        let follow = self.follow(namespace, name);
        match timeout {
            Some(t) => tokio::time::timeout(t, follow).await.unwrap_or_else(|_| {
                Err(Error::Wait(format!(
                    "Job {namespace}/{name} had not finished after {}s",
                    t.as_secs()
                )))
            }),
            None => follow.await,
        }
    }

    async fn follow(&self, namespace: &str, name: &str) -> Result<Finished> {
        let api = self.jobs(namespace);
        let action = || format!("following Job {namespace}/{name}");
        let gone = || {
            Error::Wait(format!(
                "Job {namespace}/{name} was deleted before it finished"
            ))
        };
        let selector = format!("metadata.name={name}");
        // The resourceVersion to watch from; `None`: list first.
        let mut from: Option<String> = None;
        // Failures in a row (the server unreachable or not answering, a stream cut), and watches
        // ended at once or 410 Gone in a row: counted apart, so the message says which.
        let (mut failures, mut empty) = (0u32, 0u32);
        // A failure that may pass (the server restarting, a connection cut): retried after a
        // pause, up to FOLLOW_ATTEMPTS in a row.
        let again = |failures: &mut u32, e: Error| {
            *failures += 1;
            if *failures >= FOLLOW_ATTEMPTS || !e.is_transient() {
                return Err(e);
            }
            tracing::debug!("{e}; following again");
            Ok(Duration::from_millis(250 << (*failures).min(5)))
        };
        // A watch that ended at once, or answered 410 Gone.
        let ended = |empty: &mut u32| {
            *empty += 1;
            if *empty >= FOLLOW_ATTEMPTS {
                return Err(Error::Wait(format!(
                    "following Job {namespace}/{name}: the Kubernetes API server at {} ended \
                     {FOLLOW_ATTEMPTS} watches in a row without an event",
                    self.url
                )));
            }
            Ok(Duration::from_millis(250 << (*empty).min(5)))
        };
        loop {
            let version = match from.take() {
                Some(v) => v,
                None => {
                    let list = self
                        .call(action, api.list(&ListParams::default().fields(&selector)))
                        .await;
                    let list = match list {
                        Ok(l) => l,
                        Err(e) => {
                            tokio::time::sleep(again(&mut failures, e)?).await;
                            continue;
                        }
                    };
                    let Some(job) = list.items.first() else {
                        return Err(gone());
                    };
                    if let Some(f) = finished(job) {
                        return Ok(f);
                    }
                    list.metadata.resource_version.unwrap_or_default()
                }
            };
            tracing::debug!("watching Job {namespace}/{name} from resourceVersion {version}");
            let params = WatchParams::default()
                .fields(&selector)
                .timeout(WATCH_SECONDS);
            let events = match self.call(action, api.watch(&params, &version)).await {
                Ok(events) => events,
                // Too old a version: list again.
                Err(e) if e.status_code() == Some(410) => {
                    tokio::time::sleep(ended(&mut empty)?).await;
                    continue;
                }
                Err(e) => {
                    tokio::time::sleep(again(&mut failures, e)?).await;
                    from = Some(version);
                    continue;
                }
            };
            let mut events = events.boxed();
            let opened = std::time::Instant::now();
            let mut last = version;
            // The server ends the watch after WATCH_SECONDS; silence well beyond that is a
            // server that stopped answering.
            let silence = Duration::from_secs(u64::from(WATCH_SECONDS))
                + self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
            loop {
                let next = tokio::time::timeout(silence, events.try_next()).await;
                match next {
                    Ok(Ok(Some(WatchEvent::Added(job) | WatchEvent::Modified(job)))) => {
                        (failures, empty) = (0, 0);
                        if let Some(f) = finished(&job) {
                            return Ok(f);
                        }
                        last = job.metadata.resource_version.unwrap_or(last);
                    }
                    // Deleted after it finished (its TTL, say): how it ended is in its last state.
                    Ok(Ok(Some(WatchEvent::Deleted(job)))) => {
                        return finished(&job).ok_or_else(gone);
                    }
                    Ok(Ok(Some(WatchEvent::Bookmark(b)))) => {
                        (failures, empty) = (0, 0);
                        last = b.metadata.resource_version;
                    }
                    // The server ended the watch: on from the last version.
                    Ok(Ok(None)) => {
                        // Ended at once: counted, and paused after, so that a server that ends
                        // every watch is not asked again and again. A watch that lasted is
                        // a server that works.
                        if opened.elapsed() < Duration::from_secs(1) {
                            tokio::time::sleep(ended(&mut empty)?).await;
                        } else {
                            (failures, empty) = (0, 0);
                        }
                        from = Some(last);
                        break;
                    }
                    // 410 Gone: the server no longer has that version; list again.
                    Ok(Ok(Some(WatchEvent::Error(status)))) if status.code == 410 => {
                        tracing::debug!(
                            "watching Job {namespace}/{name}: {} (410); listing again",
                            status.message
                        );
                        tokio::time::sleep(ended(&mut empty)?).await;
                        break;
                    }
                    Ok(Ok(Some(WatchEvent::Error(status)))) => {
                        let e = Error::Refused {
                            action: action(),
                            code: status.code,
                            reason: status.reason,
                            message: status.message,
                        };
                        tokio::time::sleep(again(&mut failures, e)?).await;
                        from = Some(last);
                        break;
                    }
                    // A stream cut short: on from the last version, after a pause.
                    Ok(Err(e)) => {
                        tokio::time::sleep(again(&mut failures, self.failed(action(), e))?).await;
                        from = Some(last);
                        break;
                    }
                    Err(_) => {
                        let e = self.timed_out(action(), silence);
                        tokio::time::sleep(again(&mut failures, e)?).await;
                        from = Some(last);
                        break;
                    }
                }
            }
        }
    }
}

//! A cluster's API server: creating, releasing, deleting and following Jobs.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
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
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.url)
            .field("namespace", &self.namespace)
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
    /// Jobs without one go.
    pub fn new(client: kube::Client, url: impl Into<String>, namespace: impl Into<String>) -> Self {
        Cluster {
            client,
            url: url.into().trim_end_matches('/').to_owned(),
            namespace: namespace.into(),
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

    fn jobs(&self, namespace: &str) -> Api<Job> {
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
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| self.failed(action.clone(), e))?;
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
            "this user may not {} jobs.batch in namespace {namespace} (ociup job --apply needs {})",
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
    /// it as the server stored it (with its generated name).
    ///
    /// # Errors
    /// [`Error::Refused`] (forbidden, a name taken, invalid), [`Error::Unreachable`]; no Job
    /// exists then.
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
        self.jobs(&namespace)
            .create(&PostParams::default(), &job)
            .await
            .map_err(|e| self.failed(format!("creating Job {namespace}/{what}"), e))
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
        self.jobs(namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| self.failed(format!("unsuspending Job {namespace}/{name}"), e))
    }

    /// Deletes a Job and, in the background, its pods. A Job already gone is not an error.
    ///
    /// # Errors
    /// [`Error::Refused`], [`Error::Unreachable`].
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<()> {
        match self
            .jobs(namespace)
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.failed(format!("deleting Job {namespace}/{name}"), e)),
        }
    }

    /// Follows a Job until it has finished (`Complete` or `Failed`), watching it rather than
    /// polling; `timeout` bounds the wait.
    ///
    /// # Errors
    /// [`Error::Wait`]: the Job was deleted, or the time ran out; [`Error::Refused`],
    /// [`Error::Unreachable`].
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
        loop {
            let job = match api.get(name).await {
                Ok(job) => job,
                Err(kube::Error::Api(s)) if s.code == 404 => return Err(gone()),
                Err(e) => return Err(self.failed(action(), e)),
            };
            if let Some(f) = finished(&job) {
                return Ok(f);
            }
            let version = job.metadata.resource_version.unwrap_or_default();
            // The server ends a watch after its timeout (or sooner); the loop reads the Job
            // again and watches on from there.
            let params = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(240);
            let mut events = api
                .watch(&params, &version)
                .await
                .map_err(|e| self.failed(action(), e))?
                .boxed();
            loop {
                match events.try_next().await {
                    Ok(Some(WatchEvent::Added(job) | WatchEvent::Modified(job))) => {
                        if let Some(f) = finished(&job) {
                            return Ok(f);
                        }
                    }
                    Ok(Some(WatchEvent::Deleted(_))) => return Err(gone()),
                    Ok(Some(WatchEvent::Bookmark(_))) => {}
                    // The server closed the watch (after its timeout): read the Job again.
                    Ok(None) => break,
                    // 410 Gone (the version is too old), a stream cut short: read the Job
                    // again (which fails if the server is gone), after a pause.
                    Ok(Some(WatchEvent::Error(_))) | Err(_) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                }
            }
        }
    }
}

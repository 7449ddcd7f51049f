//! The request to run as a Kubernetes Job: resolve the nick (regenerating it when its base
//! moved) and run the answer, the Job held suspended while the new version is written.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use k8s_openapi::api::batch::v1::Job;
use ociup_core::managed::manager::{Manager, Planned, Resolution, ResolveOptions, Stores};
use serde::Serialize;

use crate::cluster::{Call, Cluster};
use crate::error::{Error, Lookup, Result};
use crate::job::{JobOptions, Pinned, build_job, keys};

/// What [`Cluster::apply`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    /// The Job's namespace.
    pub namespace: String,
    /// Its name: the one given, else its stem and five letters ociup picked, as the server
    /// would for `generateName`.
    pub name: String,
    /// Its uid.
    pub uid: Option<String>,
    /// The nick.
    pub nick: String,
    /// The version the Job runs.
    pub version: u64,
    /// The image it runs, pinned by digest, as the cluster pulls it.
    pub image: String,
    /// Its manifest digest.
    pub digest: String,
    /// The base digest the version sits on.
    pub base_digest: String,
    /// Whether this request made a new version.
    pub upgraded: bool,
    /// Whether the Job was created suspended while the new version was written, then released.
    pub held: bool,
    /// The base could not be asked; this is the last good version.
    pub stale: bool,
    /// The Job as the server answered last.
    #[serde(skip)]
    pub job: Job,
    /// The resolve's answer.
    #[serde(skip)]
    pub resolution: Resolution,
}

impl Applied {
    fn new(job: Job, resolution: Resolution, image: String, held: bool) -> Self {
        Applied {
            namespace: job.metadata.namespace.clone().unwrap_or_default(),
            name: job.metadata.name.clone().unwrap_or_default(),
            uid: job.metadata.uid.clone(),
            nick: resolution.nick.clone(),
            version: resolution.version,
            image,
            digest: resolution.digest.clone(),
            base_digest: resolution.base_digest.clone(),
            upgraded: resolution.upgraded,
            held,
            stale: resolution.stale,
            job,
            resolution,
        }
    }
}

/// How many times a release is sent when its answer is lost, and the pause before the
/// second (doubled each time).
const RELEASE_ATTEMPTS: u32 = 4;
const RELEASE_PAUSE: Duration = Duration::from_millis(500);

/// How many times a Job whose creation went unanswered is looked for while it is not there,
/// and the longest pause in between (the pause is the request timeout, at most this).
const LOOKS: u32 = 2;
const LOOK_AGAIN_MAX: Duration = Duration::from_secs(30);

/// Whether `job` carries this request's `mark`.
pub(crate) fn is_ours(job: &Job, mark: &str) -> bool {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::REQUEST))
        .is_some_and(|m| m == mark)
}

/// Whether a held Job has been released (`spec.suspend` false or unset).
fn released(job: &Job) -> bool {
    !job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false)
}

/// Letters the API server uses for generated names (no vowels, no look-alikes).
const NAME_LETTERS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A fresh mark for one request: 16 letters of [`NAME_LETTERS`], from the standard library's
/// per-process random hash keys, the time and a counter.
fn request_mark() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let (mut a, mut b) = (h.finish(), {
        h.write_u8(1);
        h.finish()
    });
    let n = NAME_LETTERS.len() as u64;
    (0..16)
        .map(|i| {
            let x = if i < 8 { &mut a } else { &mut b };
            let c = NAME_LETTERS[(*x % n) as usize];
            *x /= n;
            char::from(c)
        })
        .collect()
}

/// A request mark given to [`Cluster::apply_marked`] or [`Cluster::find_marked`]: 5 to 63
/// lowercase letters and digits (a label value, and its first five letters a name's suffix).
pub(crate) fn check_mark(mark: &str) -> Result<()> {
    if (5..=63).contains(&mark.len())
        && mark
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "request mark {mark:?}: expected 5 to 63 lowercase letters and digits"
        )))
    }
}

/// What [`Cluster::apply_marked`] puts on the Job beyond what [`Cluster::apply`] puts.
#[derive(Clone, Debug, Default)]
pub struct Marks {
    /// The request's mark ([`keys::REQUEST`], label and annotation): given, the Job can be
    /// found by it later ([`Cluster::find_marked`]); `None` picks a fresh one. 5 to 63
    /// lowercase letters and digits, unguessable if it is to stay private.
    pub request: Option<String>,
    /// Annotations on the Job (not its pods): who asked, say. Keys ociup sets itself win.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// Annotate the Job with how its version was come to ([`keys::RESOLUTION`]).
    pub outcome: bool,
}

impl Marks {
    /// `job` with the annotations, and `outcome` when asked for.
    fn put(&self, job: &mut Job, outcome: &str) {
        let annotations = job
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        for (k, v) in &self.annotations {
            annotations.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if self.outcome {
            annotations.insert(keys::RESOLUTION.into(), outcome.to_owned());
        }
    }
}

/// The words of [`keys::RESOLUTION`] for a Job created as it is.
fn outcome_of(resolution: &Resolution) -> String {
    let words: Vec<&str> = [
        (resolution.upgraded, "upgraded"),
        (resolution.stale, "stale"),
    ]
    .into_iter()
    .filter_map(|(on, w)| on.then_some(w))
    .collect();
    if words.is_empty() {
        "current".to_owned()
    } else {
        words.join(" ")
    }
}

/// Marks a Job as this request's (its [`keys::REQUEST`] annotation and label: `kubectl get
/// jobs -l` finds it) and, when the server was to pick its name's suffix (`generateName`),
/// picks it here, as the server would (five letters): a Job whose creation goes unanswered can
/// then be looked for by name. Answers the stem when the name was picked here.
fn own(job: &mut Job, mark: &str) -> Option<String> {
    let meta = &mut job.metadata;
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(keys::REQUEST.into(), mark.to_owned());
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(keys::REQUEST.into(), mark.to_owned());
    if meta.name.is_none()
        && let Some(stem) = meta.generate_name.take()
    {
        meta.name = Some(format!("{stem}{}", &mark[..5]));
        return Some(stem);
    }
    None
}

/// Whether a failed create may have created the Job all the same, so that it is looked for:
/// every failure but a refusal (a 4xx answer) and a request never sent (no credential, a
/// request that could not be built).
fn may_have_created(e: &Error) -> bool {
    match e {
        Error::Refused { code, .. } => *code >= 500,
        Error::Auth { .. } | Error::Config { .. } | Error::Invalid(_) => false,
        Error::Client { error, .. } => !matches!(error, kube::Error::BuildRequest(_)),
        _ => true,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The namespace and name of a Job created suspended and not yet released or deleted.
type Held = Arc<tokio::sync::Mutex<Option<(String, String)>>>;

/// The error a `before_write` callback returns to stop a resolve; the real one is kept aside.
#[derive(Debug)]
struct Vetoed(String);

impl std::fmt::Display for Vetoed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Vetoed {}

/// `opts` with `check` off and a `before_write` callback that first calls the caller's own (if
/// any), then `then` with the planned version; an error of `then` is kept in `refusal` and
/// stops the resolve before anything is written.
fn with_hook<F>(
    mut opts: ResolveOptions,
    refusal: Arc<Mutex<Option<Error>>>,
    then: F,
) -> ResolveOptions
where
    F: Fn(Pinned) -> futures_util::future::BoxFuture<'static, Result<()>> + Send + Sync + 'static,
{
    let previous = opts.before_write.take();
    opts.check = false;
    opts.before_write = Some(Arc::new(move |planned: &Planned| {
        let earlier = previous.as_ref().map(|f| f(planned));
        let next = then(Pinned::from(planned));
        let refusal = Arc::clone(&refusal);
        async move {
            if let Some(earlier) = earlier {
                earlier.await?;
            }
            next.await.map_err(|e| {
                let text = e.to_string();
                *lock(&refusal) = Some(e);
                ociup_core::Error::Backend(Box::new(Vetoed(text)))
            })
        }
        .boxed()
    }));
    opts
}

/// The Job that runs a nick, without a cluster: the nick resolved as `ociup resolve` does
/// (a version regenerated and recorded when its base moved), then [`build_job`] on the answer.
/// A version that no cluster could pull (kept in a layout) is refused before it is written.
///
/// # Errors
/// Options [`JobOptions::validate`] refuses, resolve errors, an image a cluster cannot pull.
pub async fn job_for<P: Stores>(
    manager: &Manager<P>,
    nick: &str,
    resolve: ResolveOptions,
    options: &JobOptions,
) -> Result<(Job, Resolution)> {
    options.validate()?;
    let refusal = Arc::default();
    let resolve = with_hook(resolve, Arc::clone(&refusal), |pinned| {
        async move { pinned.image().map(drop) }.boxed()
    });
    let resolution = match manager.resolve(nick, resolve).await {
        Ok(r) => r,
        Err(e) => return Err(lock(&refusal).take().unwrap_or(Error::Resolve(e))),
    };
    let job = build_job(&Pinned::from(&resolution), options, false)?;
    Ok((job, resolution))
}

impl Cluster {
    /// The request to run, as a Job: resolves `nick` and creates a Job running the answer.
    ///
    /// When nothing is due (the base has not moved, `offline`, a stale answer), the Job is
    /// created as it is. When an upgrade is due, the regeneration is computed first, and
    /// before anything is written the Job is created suspended with the digest it will
    /// produce; the new version is then written and recorded, and the Job released
    /// (`spec.suspend: false`). If the regeneration fails, the Job is deleted and the error
    /// says why. Before the nick is resolved, the API server is asked (SelfSubjectAccessReview)
    /// whether this client may create, get, patch and delete Jobs in the namespace: when it may
    /// not, nothing is written. If the Job cannot be created (forbidden, a name taken, the server
    /// down), nothing is written and no Job is left.
    ///
    /// `cancel` stops the request when it completes first (give it SIGINT and SIGTERM, say):
    /// a Job created meanwhile (suspended, or running when nothing was due and `apply` had not
    /// answered yet) is deleted before [`Error::Cancelled`] is returned. Once the held Job's
    /// version is recorded, `cancel` no longer stops it: the release (retried a bounded number
    /// of times) finishes and answers as it would have, since that Job pins a recorded version.
    /// A Job left behind all the same (ociup killed outright) carries the label
    /// `ociup.dev/held=true` until it is released: `kubectl delete jobs -l ociup.dev/held=true`.
    ///
    /// ```no_run
    /// # use ociup_core::managed::manager::{Manager, ResolveOptions, Stores};
    /// use ociup_kube::{Cluster, ConnectOptions, JobOptions};
    ///
    /// # async fn example<P: Stores>(manager: Manager<P>) -> Result<(), ociup_kube::Error> {
    /// let cluster = Cluster::connect(&ConnectOptions::default()).await?;
    /// let options = JobOptions {
    ///     args: vec!["--epochs".into(), "5".into()],
    ///     ..JobOptions::default()
    /// };
    /// let applied = cluster
    ///     .apply(&manager, "trainer", ResolveOptions::default(), &options, std::future::pending())
    ///     .await?;
    /// println!("job.batch/{} runs {}", applied.name, applied.image);
    /// let finished = cluster.wait(&applied.namespace, &applied.name, None).await?;
    /// # drop(finished);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// Options [`JobOptions::validate`] refuses; [`Error::Resolve`]; [`Error::Refused`] from
    /// the access check or creating the Job (nothing written, no Job); [`Error::Unreachable`],
    /// [`Error::TimedOut`] from the access check (nothing written); [`Error::Unanswered`] when
    /// creating the Job failed without a refusal (nothing written; the Job looked for and
    /// deleted if it was made all the same); [`Error::Withdrawn`] when the version could not
    /// be written after the held Job was created (the Job deleted); [`Error::Unreleased`] when
    /// the version was recorded but the Job could not be released (the Job left suspended);
    /// [`Error::Cancelled`].
    pub async fn apply<P: Stores>(
        &self,
        manager: &Manager<P>,
        nick: &str,
        resolve: ResolveOptions,
        options: &JobOptions,
        cancel: impl Future<Output = ()>,
    ) -> Result<Applied> {
        self.apply_marked(manager, nick, resolve, options, &Marks::default(), cancel)
            .await
    }

    /// [`Cluster::apply`], the Job marked as `marks` says: with a request mark of the caller's
    /// (found again by [`Cluster::find_marked`]), annotations, and how its version was come to.
    ///
    /// # Errors
    /// As [`Cluster::apply`]; [`Error::Invalid`] for a request mark that is not 5 to 63
    /// lowercase letters and digits.
    pub async fn apply_marked<P: Stores>(
        &self,
        manager: &Manager<P>,
        nick: &str,
        resolve: ResolveOptions,
        options: &JobOptions,
        marks: &Marks,
        cancel: impl Future<Output = ()>,
    ) -> Result<Applied> {
        options.validate()?;
        if let Some(mark) = &marks.request {
            check_mark(mark)?;
        }
        let mut options = options.clone();
        let namespace = options
            .namespace
            .get_or_insert_with(|| self.default_namespace().to_owned())
            .clone();
        // Every right the request needs, asked before anything is written.
        let created: Held = Arc::default();
        let running = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Set once the held Job's version is recorded: the Job then pins a recorded version and
        // is released, or left for the user to release, never deleted.
        let recorded = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let work = async {
            self.check_access(&namespace, &["create", "get", "patch", "delete"])
                .await?;
            self.apply_checked(
                manager,
                nick,
                resolve,
                &options,
                marks,
                Arc::clone(&created),
                Arc::clone(&running),
                Arc::clone(&recorded),
            )
            .await
        };
        let (work, cancel) = (std::pin::pin!(work), std::pin::pin!(cancel));
        match futures_util::future::select(work, cancel).await {
            Either::Left((result, _)) => result,
            // Stopped while the Job of a recorded version is being released: the release
            // (retried a bounded number of times) is let finish, and answers.
            Either::Right(((), work)) if recorded.load(std::sync::atomic::Ordering::SeqCst) => {
                work.await
            }
            // The work is not polled again (it is dropped on return).
            Either::Right(((), _)) => {
                // A create still in flight holds the slot until it is answered.
                let held = created.lock().await.take();
                let Some((namespace, name)) = held else {
                    return Err(Error::Cancelled {
                        job: None,
                        cleanup: None,
                        running: false,
                    });
                };
                let cleanup = self.clean_up(&namespace, &name).await.err().map(Box::new);
                Err(Error::Cancelled {
                    job: Some(format!("{namespace}/{name}")),
                    cleanup,
                    running: running.load(std::sync::atomic::Ordering::SeqCst),
                })
            }
        }
    }

    /// [`Cluster::apply`] once the rights are checked; `created` names the held Job while it
    /// is suspended, or the Job created unsuspended until `apply` answers (for the cancellation
    /// to delete; `running` then).
    #[allow(clippy::too_many_arguments)]
    async fn apply_checked<P: Stores>(
        &self,
        manager: &Manager<P>,
        nick: &str,
        resolve: ResolveOptions,
        options: &JobOptions,
        marks: &Marks,
        created: Held,
        running: Arc<std::sync::atomic::AtomicBool>,
        recorded: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Applied> {
        let options = options.clone();
        let mark = marks.request.clone().unwrap_or_else(request_mark);
        let held: Arc<Mutex<Option<(Job, Pinned)>>> = Arc::default();
        let refusal = Arc::default();
        let resolve = {
            let (cluster, options, held) = (self.clone(), options.clone(), Arc::clone(&held));
            let marks = marks.clone();
            let created = Arc::clone(&created);
            let mark = mark.clone();
            with_hook(resolve, Arc::clone(&refusal), move |pinned| {
                let (cluster, options, held, created) = (
                    cluster.clone(),
                    options.clone(),
                    Arc::clone(&held),
                    Arc::clone(&created),
                );
                let (mark, marks) = (mark.clone(), marks.clone());
                async move {
                    let mut job = build_job(&pinned, &options, true)?;
                    // Only a regeneration holds a Job: the version is new.
                    marks.put(&mut job, "upgraded held");
                    let job = cluster.create_recorded(job, mark, created).await?;
                    *lock(&held) = Some((job, pinned));
                    Ok(())
                }
                .boxed()
            })
        };
        let resolved = manager.resolve(nick, resolve).await;
        let held = lock(&held).take();
        let Some((job, planned)) = held else {
            let resolution = match resolved {
                Ok(r) => r,
                Err(e) => return Err(lock(&refusal).take().unwrap_or(Error::Resolve(e))),
            };
            let pinned = Pinned::from(&resolution);
            let image = pinned.image()?;
            let mut job = build_job(&pinned, &options, false)?;
            marks.put(&mut job, &outcome_of(&resolution));
            running.store(true, std::sync::atomic::Ordering::SeqCst);
            let job = self
                .create_recorded(job, mark, Arc::clone(&created))
                .await?;
            return Ok(Applied::new(job, resolution, image, false));
        };
        let namespace = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let (namespace, name) = (namespace.as_str(), name.as_str());
        let created = &created;
        let failed = |what: String, source: Error| async move {
            let cleanup = self.clean_up(namespace, name).await.err().map(Box::new);
            *created.lock().await = None;
            Err(Error::Withdrawn {
                what,
                job: format!("{namespace}/{name}"),
                source: Box::new(source),
                cleanup,
            })
        };
        let resolution = match resolved {
            Ok(r) if r.digest == planned.digest => r,
            Ok(r) => {
                let why = Error::Invalid(format!(
                    "the regeneration answered {}, not the planned {}",
                    r.digest, planned.digest
                ));
                return failed(format!("regenerating {nick} failed"), why).await;
            }
            Err(e) => {
                return failed(format!("regenerating {nick} failed"), Error::Resolve(e)).await;
            }
        };
        recorded.store(true, std::sync::atomic::Ordering::SeqCst);
        match self.release_retrying(namespace, name).await {
            Ok(job) => {
                *created.lock().await = None;
                Ok(Applied::new(job, resolution, planned.image()?, true))
            }
            // The version is recorded and the Job pins it: it is left for the user to release
            // (it may even be released already, the answer lost), not deleted.
            // Looked at once more: released after all (an answer lost), or still suspended.
            Err((e, attempts)) => {
                *created.lock().await = None;
                let api = self.jobs(namespace);
                let suspended =
                    match Cluster::within(Some(self.cleanup_timeout()), api.get_opt(name)).await {
                        Call::Done(Some(job)) if released(&job) => {
                            return Ok(Applied::new(job, resolution, planned.image()?, true));
                        }
                        Call::Done(Some(_)) => Some(true),
                        _ => None,
                    };
                Err(Error::Unreleased {
                    nick: nick.to_owned(),
                    version: resolution.version,
                    job: format!("{namespace}/{name}"),
                    attempts,
                    cause: Box::new(e),
                    suspended,
                })
            }
        }
    }

    /// Marks `job` as this request's ([`own`]) and creates it ([`Cluster::create_owned`]) on a
    /// task of its own holding `created` until it is answered, then naming it there: a
    /// cancellation meanwhile waits for the answer and deletes what was made.
    async fn create_recorded(&self, mut job: Job, mark: String, created: Held) -> Result<Job> {
        let stem = own(&mut job, &mark);
        let mut slot = created.lock_owned().await;
        let cluster = self.clone();
        let task = tokio::spawn(async move {
            let job = cluster.create_owned(&job, &mark, stem.as_deref()).await?;
            *slot = Some((
                job.metadata.namespace.clone().unwrap_or_default(),
                job.metadata.name.clone().unwrap_or_default(),
            ));
            Ok::<_, Error>(job)
        });
        task.await
            .map_err(|e| Error::Invalid(format!("creating the Job: {e}")))?
    }

    /// [`Cluster::release`], sent again (it is idempotent) while it fails in a way that may
    /// pass (no answer in time, the connection cut, 5xx): at most [`RELEASE_ATTEMPTS`] times,
    /// pausing [`RELEASE_PAUSE`], doubled each time, in between. The last error and how many
    /// were sent, on failure.
    async fn release_retrying(
        &self,
        namespace: &str,
        name: &str,
    ) -> std::result::Result<Job, (Error, u32)> {
        let mut pause = RELEASE_PAUSE;
        let mut attempt = 1;
        loop {
            match self.release(namespace, name).await {
                Ok(job) => return Ok(job),
                Err(e) if e.is_transient() && attempt < RELEASE_ATTEMPTS => {
                    tracing::debug!("{e}; sending it again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(e) => return Err((e, attempt)),
            }
        }
    }

    /// [`Cluster::create`]; when the creation may have happened all the same (no answer in
    /// time, the connection cut, 5xx: any failure but a refusal), the Job is looked for and
    /// deleted if it is this request's (`mark`), within the cleanup bound, and
    /// [`Error::Unanswered`] says what was found. When ociup picked the name (`stem` and five
    /// letters) and it is taken (409 AlreadyExists), it is sent once more with five others.
    async fn create_owned(&self, job: &Job, mark: &str, stem: Option<&str>) -> Result<Job> {
        let mut answer = self.create(job).await;
        let mut job = std::borrow::Cow::Borrowed(job);
        if let (Err(e @ Error::Refused { reason, .. }), Some(stem)) = (&answer, stem)
            && e.status_code() == Some(409)
            && reason == "AlreadyExists"
        {
            tracing::debug!("{e}; sending it again with another name");
            let mut again = job.into_owned();
            again.metadata.name = Some(format!("{stem}{}", &request_mark()[..5]));
            answer = self.create(&again).await;
            job = std::borrow::Cow::Owned(again);
        }
        match answer {
            Err(e) if may_have_created(&e) => {
                let namespace = job
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| self.default_namespace().to_owned());
                let name = job.metadata.name.clone().unwrap_or_default();
                let (lookup, cleanup) = match self.withdraw(&namespace, &name, mark).await {
                    Ok(found) => (Some(found), None),
                    Err(e) => (None, Some(Box::new(e))),
                };
                Err(Error::Unanswered {
                    job: format!("{namespace}/{name}"),
                    cause: Box::new(e),
                    cleanup,
                    mark: mark.to_owned(),
                    lookup,
                })
            }
            other => other,
        }
    }

    /// Deletes the Job `namespace/name` if it exists and is this request's (`mark`), each call
    /// within the cleanup bound. Not there, it is looked for once more after that bound (the
    /// server may still be creating it: a slow admission webhook, a request still open).
    async fn withdraw(&self, namespace: &str, name: &str, mark: &str) -> Result<Lookup> {
        let api: kube::Api<Job> = kube::Api::namespaced(self.client().clone(), namespace);
        let limit = Some(self.cleanup_timeout());
        let action = || format!("looking for Job {namespace}/{name}");
        let apart = self.cleanup_timeout().min(LOOK_AGAIN_MAX);
        let mut looks = 0;
        let job = loop {
            looks += 1;
            match Cluster::within(limit, api.get_opt(name)).await {
                Call::Done(Some(job)) => break job,
                Call::Done(None) if looks < LOOKS => {
                    tracing::debug!("Job {namespace}/{name} not there; looking again in {apart:?}");
                    tokio::time::sleep(apart).await;
                }
                Call::Done(None) => return Ok(Lookup::Absent { looks, apart }),
                Call::Failed(e) => return Err(self.failed(action(), e)),
                Call::TimedOut(after) => return Err(self.timed_out(action(), after)),
            }
        };
        if !is_ours(&job, mark) {
            return Ok(Lookup::Foreign);
        }
        let params = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: job.metadata.uid.clone(),
                resource_version: None,
            }),
            ..kube::api::DeleteParams::background()
        };
        let action = || format!("deleting Job {namespace}/{name}");
        match Cluster::within(limit, api.delete(name, &params)).await {
            Call::Done(_) => Ok(Lookup::Deleted),
            Call::Failed(kube::Error::Api(s)) if s.code == 404 => Ok(Lookup::Deleted),
            Call::Failed(e) => Err(self.failed(action(), e)),
            Call::TimedOut(after) => Err(self.timed_out(action(), after)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u16) -> Error {
        Error::Refused {
            action: "creating Job ns/x".into(),
            code,
            reason: "Reason".into(),
            message: "no".into(),
        }
    }

    #[test]
    fn own_marks_the_job_by_label_and_annotation_and_picks_a_generated_name() {
        let mut job = Job::default();
        job.metadata.generate_name = Some("trainer-v3-".into());
        let mark = request_mark();
        assert_eq!(own(&mut job, &mark).as_deref(), Some("trainer-v3-"));
        assert_eq!(
            job.metadata.name.as_deref(),
            Some(format!("trainer-v3-{}", &mark[..5]).as_str())
        );
        assert_eq!(job.metadata.generate_name, None);
        assert_eq!(job.metadata.labels.as_ref().unwrap()[keys::REQUEST], mark);
        assert!(is_ours(&job, &mark));
        assert!(!is_ours(&job, &request_mark()));

        // A name given is kept: no stem, nothing to pick again on a 409.
        let mut named = Job::default();
        named.metadata.name = Some("given".into());
        assert_eq!(own(&mut named, &mark), None);
        assert_eq!(named.metadata.name.as_deref(), Some("given"));
    }

    #[test]
    fn request_marks_are_fresh_and_fit_a_label_value() {
        let (a, b) = (request_mark(), request_mark());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| NAME_LETTERS.contains(&c)), "{a}");
    }

    #[test]
    fn every_create_failure_but_a_refusal_is_looked_after() {
        assert!(!may_have_created(&refused(403)));
        assert!(!may_have_created(&refused(409)));
        assert!(!may_have_created(&refused(429)));
        assert!(may_have_created(&refused(500)));
        assert!(may_have_created(&refused(504)));
        let timed_out = Error::TimedOut {
            action: "creating Job ns/x".into(),
            url: "https://127.0.0.1:6443".into(),
            after: Duration::from_secs(2),
        };
        assert!(may_have_created(&timed_out));
        // An answer that does not parse: the server may well have created it.
        let garbled = Error::Client {
            action: "creating Job ns/x".into(),
            error: kube::Error::SerdeError(serde_json::from_str::<u8>("x").unwrap_err()),
        };
        assert!(may_have_created(&garbled));
        assert!(!may_have_created(&Error::Invalid("bad".into())));
    }

    #[test]
    fn released_reads_spec_suspend() {
        let mut job = Job::default();
        assert!(released(&job), "no spec: not suspended");
        job.spec = Some(Default::default());
        job.spec.as_mut().unwrap().suspend = Some(true);
        assert!(!released(&job));
        job.spec.as_mut().unwrap().suspend = Some(false);
        assert!(released(&job));
    }
}

//! Runs: a nick's request to run as a Kubernetes Job, made by the service on a requester's
//! behalf through [`ociup_kube::Cluster::apply`] (the Job held suspended with the planned digest
//! while the new version is written, released once it is recorded, deleted if writing fails).
//!
//! A run is answered at once (`pending`); the work goes on in a task of its own, and the run
//! turns (see [`State`]) `submitted` (the Job created unsuspended, or released), `unreleased`
//! (the new version recorded and its Job created, but releasing it failed: the Job is left, most
//! likely suspended) or `failed` (with why; no Job is left, unless `job_left` names one that may
//! be: [`Left`]). Runs are kept in memory, at most [`MAX_RUNS`]: the oldest finished ones
//! are forgotten first, and a restart forgets them all.
//!
//! A run is read from any replica all the same: its id names its namespace and the mark its Job
//! carries (`run-<namespace>-<32 hex digits>`, [`RunId`]; the digits, from the operating
//! system's random source, are the Job's `ociup.dev/request` label), and the Job is annotated
//! with its requester ([`REQUESTER`], bounded as admission usernames are) and the time it was
//! asked ([`REQUESTED`]). A replica that does not hold a run looks its Job up by that mark
//! ([`Cluster::find_marked`]) and answers it as the replica that made it would
//! ([`Run::of_job`], [`Run::settle_held`]), to its requester only.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use ociup_core::managed::catalog::VersionRecord;
use ociup_kube::k8s_openapi::api::batch::v1::Job;
use ociup_kube::{Applied, Cluster, Condition, DEFAULT_REQUEST_TIMEOUT, JobOptions};
use serde::{Deserialize, Serialize};

/// The most runs kept in memory; beyond, the oldest finished run is forgotten (a new run is
/// refused with 503 `busy` only when every run kept is still pending).
pub const MAX_RUNS: usize = 1024;

/// Where runs go: a cluster (or why there is none), the namespaces the service may use, and
/// how long a run's work may take.
#[derive(Debug)]
pub struct RunsConfig {
    /// The cluster, or why none could be configured (said to whoever asks for a run).
    pub cluster: Option<Result<Cluster, String>>,
    /// Namespace patterns a run may use (`*` matches any run of characters): none refuses
    /// every run.
    pub allow_namespaces: Vec<String>,
    /// How long a run's work may take before it is given up ([`DEFAULT_WORK_LIMIT`] by
    /// default; within [`MIN_WORK_LIMIT`]..=[`MAX_WORK_LIMIT`], see [`check_work_limit`]).
    pub work_limit: std::time::Duration,
}

impl Default for RunsConfig {
    /// No cluster, no namespace, [`DEFAULT_WORK_LIMIT`].
    fn default() -> Self {
        RunsConfig {
            cluster: None,
            allow_namespaces: Vec::new(),
            work_limit: DEFAULT_WORK_LIMIT,
        }
    }
}

impl RunsConfig {
    /// Whether `namespace` matches an `--allow-namespace` pattern.
    pub fn allows(&self, namespace: &str) -> bool {
        self.allow_namespaces
            .iter()
            .any(|p| glob(p.as_bytes(), namespace.as_bytes()))
    }
}

/// `*` matches any run of characters (none included); everything else itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((c, rest)) => text
            .split_first()
            .is_some_and(|(t, tr)| t == c && glob(rest, tr)),
    }
}

/// An environment variable of the container.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    /// Its name.
    pub name: String,
    /// Its value.
    #[serde(default)]
    pub value: String,
}

/// What a requester asks for: `ociup job`'s options.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The namespace (default: the service's cluster configuration's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Job's name (default: `<nick>-v<version>-` and a suffix the API server picks).
    #[serde(default)]
    pub name: Option<String>,
    /// Arguments: they replace the image's Cmd.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables, in order.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// The pod's service account.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Secrets holding registry credentials for pulling the image.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// Retries before the Job is marked failed.
    #[serde(default)]
    pub backoff_limit: Option<i32>,
    /// Seconds after it finishes before the Job is deleted.
    #[serde(default)]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Labels on the Job and its pods.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Resource requests.
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    /// Resource limits.
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
    /// Run the current version without asking the base.
    #[serde(default)]
    pub offline: bool,
    /// When the base cannot be reached: `fail`, or `stale` (the last good version).
    #[serde(default)]
    pub if_unreachable: IfUnreachable,
}

/// What a run does when the base cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IfUnreachable {
    /// Fail.
    #[default]
    Fail,
    /// Run the last good version (marked stale).
    Stale,
}

impl RunRequest {
    /// The Job options, checked as the API server would check them.
    ///
    /// # Errors
    /// What [`JobOptions::validate`] refuses.
    pub fn job_options(&self) -> Result<JobOptions, ociup_kube::Error> {
        let options = JobOptions {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            args: self.args.clone(),
            env: self
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            service_account: self.service_account.clone(),
            image_pull_secrets: self.image_pull_secrets.clone(),
            backoff_limit: self.backoff_limit,
            ttl_seconds_after_finished: self.ttl_seconds_after_finished,
            labels: self.labels.clone(),
            requests: self.requests.clone(),
            limits: self.limits.clone(),
        };
        options.validate()?;
        Ok(options)
    }
}

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Accepted; the version is being resolved (and regenerated), the Job held if created.
    Pending,
    /// The Job exists and is released: the controller creates its pods.
    Submitted,
    /// The new version is written and recorded and its Job exists (`name`, `job_left`), but
    /// releasing it failed ([`ociup_kube::Error::Unreleased`]): the Job is left as it is, most
    /// likely still suspended (it may be running if a release answer was lost). `error` says
    /// how to release it or delete it.
    Unreleased,
    /// It failed (`error` says why). No Job is left, unless `job_left` names one that may be
    /// ([`Left::MaybeJob`]).
    Failed,
}

/// What a failed [`ociup_kube::Cluster::apply`] left in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Left {
    /// No Job: none was created, or it was deleted.
    Nothing,
    /// A Job (`namespace/name`) that may be left: deleting it (or looking for it to delete
    /// it) failed, or its creation went unanswered and it was not found (yet).
    MaybeJob(String),
    /// The version `version` is recorded and its Job (`namespace/name`) exists, not released.
    Unreleased {
        /// The Job, as `namespace/name`.
        job: String,
        /// The version recorded.
        version: u64,
    },
}

impl Left {
    /// What `e` says was left.
    pub fn by(e: &ociup_kube::Error) -> Left {
        use ociup_kube::{Error, Lookup};
        match e {
            Error::Unreleased { job, version, .. } => Left::Unreleased {
                job: job.clone(),
                version: *version,
            },
            // Found and deleted, or someone else's (not this run's): nothing of the run's left.
            Error::Unanswered {
                cleanup: None,
                lookup: Some(Lookup::Deleted | Lookup::Foreign),
                ..
            } => Left::Nothing,
            // Not found but may still appear, not looked for, or looking failed.
            Error::Unanswered { job, .. } => Left::MaybeJob(job.clone()),
            Error::Withdrawn {
                job,
                cleanup: Some(_),
                ..
            }
            | Error::Cancelled {
                job: Some(job),
                cleanup: Some(_),
                ..
            } => Left::MaybeJob(job.clone()),
            _ => Left::Nothing,
        }
    }
}

/// A run as kept, and as answered (with the Job's status read when asked).
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// Its id.
    pub id: String,
    /// The nick.
    pub nick: String,
    /// Who asked (the token's name).
    pub requester: String,
    /// When it was asked (RFC 3339, UTC).
    pub created: String,
    /// Where it is.
    pub state: State,
    /// Why it failed (`failed`), or why its Job was not released (`unreleased`).
    pub error: Option<String>,
    /// A Job left in the cluster (`namespace/name`) by a run that did not end `submitted`:
    /// the unreleased Job, or one that may be left ([`Left::MaybeJob`]).
    pub job_left: Option<String>,
    /// The Job's namespace (known at once).
    pub namespace: String,
    /// The Job's name, its uid, the version it runs, as [`Applied`] says (once submitted).
    pub name: Option<String>,
    /// The Job's uid.
    pub uid: Option<String>,
    /// The version the Job runs.
    pub version: Option<u64>,
    /// The image it runs, pinned by digest.
    pub image: Option<String>,
    /// Its manifest digest.
    pub digest: Option<String>,
    /// The base digest the version sits on.
    pub base_digest: Option<String>,
    /// Whether this run made a new version.
    pub upgraded: bool,
    /// Whether the Job was created suspended while the new version was written, then released.
    pub held: bool,
    /// The base could not be asked; the last good version runs.
    pub stale: bool,
}

/// The Job of a run as the API server has it now.
#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    /// Whether it is suspended.
    pub suspended: bool,
    /// Pods running.
    pub active: i32,
    /// Pods that succeeded.
    pub succeeded: i32,
    /// Pods that failed.
    pub failed: i32,
    /// Its conditions (`Complete`, `Failed`, `Suspended`…).
    pub conditions: Vec<Condition>,
    /// Whether it has finished, and how: `true` completed, `false` failed, `null` running.
    pub finished: Option<bool>,
}

impl JobStatus {
    /// The status of `job`.
    pub fn of(job: &Job) -> JobStatus {
        let status = job.status.clone().unwrap_or_default();
        JobStatus {
            suspended: job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false),
            active: status.active.unwrap_or(0),
            succeeded: status.succeeded.unwrap_or(0),
            failed: status.failed.unwrap_or(0),
            conditions: ociup_kube::conditions(job),
            finished: ociup_kube::finished(job).map(|f| f.succeeded),
        }
    }
}

impl Run {
    /// A new pending run.
    pub fn new(id: String, nick: &str, requester: &str, namespace: &str, created: String) -> Run {
        Run {
            id,
            nick: nick.to_owned(),
            requester: requester.to_owned(),
            created,
            state: State::Pending,
            error: None,
            job_left: None,
            namespace: namespace.to_owned(),
            name: None,
            uid: None,
            version: None,
            image: None,
            digest: None,
            base_digest: None,
            upgraded: false,
            held: false,
            stale: false,
        }
    }

    /// Submitted, as `applied` says.
    pub fn submitted(&mut self, applied: &Applied) {
        self.state = State::Submitted;
        self.namespace.clone_from(&applied.namespace);
        self.name = Some(applied.name.clone());
        self.uid.clone_from(&applied.uid);
        self.version = Some(applied.version);
        self.image = Some(applied.image.clone());
        self.digest = Some(applied.digest.clone());
        self.base_digest = Some(applied.base_digest.clone());
        self.upgraded = applied.upgraded;
        self.held = applied.held;
        self.stale = applied.stale;
    }

    /// Ended by `error` (the text said), as [`Left::by`] says what it left: `unreleased` with
    /// the Job's name, the version and (when `recorded` is that version's record) its image and
    /// digests, or `failed`, with `job_left` when a Job may be left.
    pub fn ended(&mut self, left: Left, error: String, recorded: Option<&VersionRecord>) {
        self.error = Some(error);
        match left {
            Left::Nothing => self.state = State::Failed,
            Left::MaybeJob(job) => {
                self.state = State::Failed;
                self.job_left = Some(job);
            }
            Left::Unreleased { job, version } => {
                self.state = State::Unreleased;
                if let Some((namespace, name)) = job.split_once('/') {
                    self.namespace = namespace.to_owned();
                    self.name = Some(name.to_owned());
                }
                self.job_left = Some(job);
                self.version = Some(version);
                if let Some(r) = recorded.filter(|r| r.number == version) {
                    self.image = Some(r.image.clone());
                    self.digest = Some(r.digest.clone());
                    self.base_digest = Some(r.base_digest.clone());
                }
                // Only a regeneration holds a Job: the version is new.
                self.upgraded = true;
                self.held = true;
            }
        }
    }
}

/// The status of the Job `namespace/name` as the API server has it now, or why it cannot be
/// read: each read bounded by the cluster's request timeout ([`DEFAULT_REQUEST_TIMEOUT`] when it
/// has none), so that a silent API server does not hold the answer.
pub async fn read_job(cluster: &Cluster, namespace: &str, name: &str) -> Result<JobStatus, String> {
    let api: ociup_kube::kube::Api<Job> =
        ociup_kube::kube::Api::namespaced(cluster.client().clone(), namespace);
    let limit = cluster.request_timeout().unwrap_or(DEFAULT_REQUEST_TIMEOUT);
    match tokio::time::timeout(limit, api.get_opt(name)).await {
        Ok(Ok(Some(job))) => Ok(JobStatus::of(&job)),
        Ok(Ok(None)) => Err(format!("Job {namespace}/{name} is gone from the cluster")),
        Ok(Err(e)) => Err(format!(
            "reading Job {namespace}/{name}: {}",
            crate::error::chain(&e)
        )),
        Err(_) => Err(format!(
            "reading Job {namespace}/{name}: the Kubernetes API server at {} did not answer \
             within {limit:?}",
            cluster.url()
        )),
    }
}

/// The runs kept, oldest first.
#[derive(Debug, Default)]
pub struct Runs {
    runs: Mutex<VecDeque<Run>>,
}

impl Runs {
    /// Keeps `run`, forgetting the oldest finished run when [`MAX_RUNS`] are kept; `false`
    /// (and nothing kept) when every run kept is still pending.
    pub fn insert(&self, run: Run) -> bool {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if runs.len() >= MAX_RUNS {
            let Some(i) = runs.iter().position(|r| r.state != State::Pending) else {
                return false;
            };
            runs.remove(i);
        }
        runs.push_back(run);
        true
    }

    /// Changes the run `id` (if still kept).
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Run)) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = runs.iter_mut().find(|r| r.id == id) {
            f(r);
        }
    }

    /// The run `id`.
    pub fn get(&self, id: &str) -> Option<Run> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.iter().find(|r| r.id == id).cloned()
    }
}

/// A new run id for a run in `namespace`: `run-<namespace>-` and 32 hex digits (128 bits) from
/// the operating system's random source, the mark of its Job ([`RunId`]).
pub fn new_id(namespace: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "run-{namespace}-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Annotation on a run's Job: who asked (the token's name, escaped and bounded as admission
/// usernames are: [`crate::admission::bounded_user`]).
pub const REQUESTER: &str = "ociup.dev/requester";
/// Annotation on a run's Job: when the run was asked (RFC 3339, UTC).
pub const REQUESTED: &str = "ociup.dev/requested";
/// Annotation on a run's Job: when the replica making it gives its work up (RFC 3339, UTC; the
/// moment the work began, by that replica's clock, and its work limit,
/// [`RunsConfig::work_limit`]). A Job still held then was deleted by that replica, or was left
/// held for good by a replica that stopped: another replica answers it `failed` once that time
/// has passed by its own clock ([`CLOCK_SKEW`] later), whatever its own work limit.
pub const DEADLINE: &str = "ociup.dev/deadline";

/// How long a run's work (resolving and regenerating its nick, creating and releasing its Job)
/// may take by default ([`RunsConfig::work_limit`], `ociup serve --work-limit`) from the moment
/// it began (the nick's lock taken) before the replica doing it gives it up: the work is
/// stopped, a Job held meanwhile deleted ([`ociup_kube::Error::Cancelled`]) and the run
/// `failed`. A Job the replica holds when it stops (killed, crashed) outlives it: the limit
/// also bounds how long other replicas answer such a Job `pending` ([`Run::settle_held`]).
pub const DEFAULT_WORK_LIMIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The shortest work limit taken: the deadline a run's Job carries counts whole seconds.
pub const MIN_WORK_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest work limit taken: a day. A run's Job is held suspended, and answered `pending`
/// by every replica, for as long as its work may take; a regeneration taking longer than that
/// is stuck rather than slow.
pub const MAX_WORK_LIMIT: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// `limit` as a work limit of runs, or why it is refused: zero, under [`MIN_WORK_LIMIT`] or
/// over [`MAX_WORK_LIMIT`].
///
/// # Errors
/// A text naming the value and the bounds.
pub fn check_work_limit(limit: std::time::Duration) -> Result<(), String> {
    if (MIN_WORK_LIMIT..=MAX_WORK_LIMIT).contains(&limit) {
        return Ok(());
    }
    Err(format!(
        "the work limit of runs (--work-limit) is {}: give {} to {} seconds ({}), the longest \
         a run's regeneration and Job may take before the run is given up",
        duration_text(limit),
        MIN_WORK_LIMIT.as_secs(),
        MAX_WORK_LIMIT.as_secs(),
        duration_text(MAX_WORK_LIMIT)
    ))
}

/// `d` for people: `15 min`, `2 h`, `90 s`, `1.5 s`.
pub fn duration_text(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{d:?}")
    } else if secs == 0 {
        "0 s".to_owned()
    } else if secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// How far apart, in seconds, two replicas' clocks may be for what one says of a run made on
/// the other: a run's deadline ([`DEADLINE`], by the clock of the replica making it) counts as
/// passed only this much later by the clock of the one answering.
pub const CLOCK_SKEW: u64 = 5;

/// What a run id says: the Job's namespace and the mark it carries (`ociup.dev/request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunId<'a> {
    /// The namespace the run's Job is in.
    pub namespace: &'a str,
    /// The 32 lowercase hex digits that mark its Job.
    pub mark: &'a str,
}

impl<'a> RunId<'a> {
    /// `id` read as [`new_id`] makes them: `run-`, a namespace (an RFC 1123 label) and `-`
    /// with 32 lowercase hex digits; `None` otherwise (an id of an older service, say, or one
    /// made up: no replica can have it then but the one that holds it).
    pub fn parse(id: &'a str) -> Option<RunId<'a>> {
        let (namespace, mark) = id.strip_prefix("run-")?.rsplit_once('-')?;
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        let label = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let ok_mark = mark.len() == 32 && mark.bytes().all(hex);
        let ok_namespace = (1..=63).contains(&namespace.len())
            && namespace.bytes().all(|b| label(b) || b == b'-')
            && namespace.bytes().next().is_some_and(label)
            && namespace.bytes().last().is_some_and(label);
        (ok_mark && ok_namespace).then_some(RunId { namespace, mark })
    }
}

/// How [`ociup_kube::Cluster::apply_marked`] marks the Job of `run`: its id's mark, who asked
/// and when, when its work is given up (`deadline`, RFC 3339, UTC: [`DEADLINE`]), and how its
/// version was come to.
pub fn marks(run: &Run, deadline: &str) -> ociup_kube::Marks {
    ociup_kube::Marks {
        request: RunId::parse(&run.id).map(|id| id.mark.to_owned()),
        annotations: BTreeMap::from([
            (
                REQUESTER.to_owned(),
                crate::admission::bounded_user(&run.requester),
            ),
            (REQUESTED.to_owned(), run.created.clone()),
            (DEADLINE.to_owned(), deadline.to_owned()),
        ]),
        outcome: true,
    }
}

/// The [`DEADLINE`] of `job`, if it has one of the form [`ociup_core::time::rfc3339`] writes
/// (`YYYY-MM-DDTHH:MM:SSZ`, compared as text); `None` for a Job made before replicas wrote one,
/// or an annotation edited into something else.
pub fn deadline_of(job: &Job) -> Option<&str> {
    let d = job.metadata.annotations.as_ref()?.get(DEADLINE)?;
    let shape = d.len() == 20
        && d.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    shape.then_some(d.as_str())
}

/// Whether `job` (a run's, found by its mark) may be shown to `requester`: its requester
/// annotation is theirs (bounded as it was written), or they are an admin. A Job without
/// that annotation (made by `ociup job --apply`, not a service) is no requester's run.
pub fn visible(job: &Job, requester: &str, admin: bool) -> bool {
    let Some(annotations) = job.metadata.annotations.as_ref() else {
        return false;
    };
    match annotations.get(REQUESTER) {
        Some(owner) => admin || *owner == crate::admission::bounded_user(requester),
        None => false,
    }
}

/// Whether `job` is held: created suspended while its version was written, not released
/// (its `ociup.dev/held` label).
pub fn is_held(job: &Job) -> bool {
    job.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ociup_kube::keys::HELD))
        .is_some_and(|v| v == "true")
}

/// How long after its version was recorded a held Job may still be being released by the
/// replica that made it (the release is tried 4 times, each bounded by the request timeout,
/// with pauses of 3.5 s in all, then the Job read once more): until then another replica says
/// `pending`, after it `unreleased`.
pub fn release_grace(cluster: &Cluster) -> std::time::Duration {
    let call = cluster.request_timeout().unwrap_or(DEFAULT_REQUEST_TIMEOUT);
    call * 5 + std::time::Duration::from_secs(5)
}

impl Run {
    /// The run `id` as its Job `job` (found by the id's mark) says it: `submitted`, or
    /// `pending` while the Job is held (see [`Run::settle_held`]); what the Job does not say
    /// (`upgraded`, `held`, `stale` without a [`ociup_kube::keys::RESOLUTION`] annotation) is
    /// `false`. `None` for a Job that is no run's (no [`REQUESTER`] annotation).
    pub fn of_job(id: &str, job: &Job) -> Option<Run> {
        use ociup_kube::keys;
        let meta = &job.metadata;
        let annotations = meta.annotations.as_ref()?;
        let get = |k: &str| annotations.get(k).cloned();
        let requester = get(REQUESTER)?;
        let words = get(keys::RESOLUTION).unwrap_or_default();
        let word = |w: &str| words.split(' ').any(|x| x == w);
        let image = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.image.clone())
            .or_else(|| get(keys::IMAGE));
        let held = is_held(job);
        Some(Run {
            id: id.to_owned(),
            nick: get(keys::NICK).unwrap_or_default(),
            requester,
            created: get(REQUESTED).unwrap_or_default(),
            state: if held {
                State::Pending
            } else {
                State::Submitted
            },
            error: None,
            job_left: None,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone(),
            uid: meta.uid.clone(),
            version: get(keys::VERSION).and_then(|v| v.parse().ok()),
            image,
            digest: get(keys::DIGEST),
            base_digest: get(keys::BASE_DIGEST),
            upgraded: word("upgraded"),
            held: word("held"),
            stale: word("stale"),
        })
    }

    /// A run read from its held Job ([`Run::of_job`], `pending`), as the replica that made it
    /// would say it, `now` (seconds since 1970) read before the Job was: while its version is
    /// not recorded (`recorded`: the record of the nick's version the Job pins, if the catalog
    /// has it with the Job's digest), still `pending` (being regenerated) until the Job's
    /// `deadline` ([`deadline_of`]) is more than [`CLOCK_SKEW`] behind `now`, `failed` after
    /// it (the replica that made it gave the work up and deletes the Job, or stopped before
    /// recording the version and left the Job held for good: `job_left` names it); a Job
    /// without a deadline stays `pending`. Once recorded: `pending` while that was less than
    /// `grace` before `now` (being released), `unreleased` after.
    pub fn settle_held(
        &mut self,
        recorded: Option<&VersionRecord>,
        deadline: Option<&str>,
        now: u64,
        grace: u64,
    ) {
        if self.state != State::Pending {
            return;
        }
        let Some(record) = recorded.filter(|r| {
            Some(r.number) == self.version && Some(r.digest.as_str()) == self.digest.as_deref()
        }) else {
            // Both are `YYYY-MM-DDTHH:MM:SSZ`: compared as text, as times.
            let passed = ociup_core::time::rfc3339(now.saturating_sub(CLOCK_SKEW));
            if let Some(deadline) = deadline.filter(|d| passed.as_str() > *d) {
                self.given_up(deadline);
            }
            return;
        };
        // Both are `YYYY-MM-DDTHH:MM:SSZ`: compared as text, as times.
        let before = ociup_core::time::rfc3339(now.saturating_sub(grace));
        if record.time.as_str() > before.as_str() {
            return;
        }
        let name = self.name.clone().unwrap_or_default();
        let (namespace, nick) = (&self.namespace, &self.nick);
        self.state = State::Unreleased;
        self.job_left = Some(format!("{namespace}/{name}"));
        self.image = Some(record.image.clone());
        self.base_digest = Some(record.base_digest.clone());
        self.upgraded = true;
        self.held = true;
        self.error = Some(format!(
            "version {} of {nick} was recorded at {} but its Job {namespace}/{name} is still held, \
             not released (releasing it failed, or the replica that made it stopped): release it \
             with kubectl patch job -n {namespace} {name} --type merge -p \
             '{{\"spec\":{{\"suspend\":false}}}}' (and remove its ociup.dev/held label), or \
             delete it with kubectl delete job -n {namespace} {name}",
            record.number, record.time
        ));
    }

    /// `failed`: its Job still held, its version not recorded, past its `deadline`.
    fn given_up(&mut self, deadline: &str) {
        let name = self.name.clone().unwrap_or_default();
        let (namespace, nick) = (&self.namespace, &self.nick);
        let version = self
            .version
            .map_or_else(|| "its version".to_owned(), |v| format!("version {v}"));
        self.state = State::Failed;
        self.job_left = Some(format!("{namespace}/{name}"));
        self.error = Some(format!(
            "{version} of {nick} was not recorded by {deadline}, when the replica that made \
             this run gives its work up: that replica stopped before recording it (or gave it \
             up, and deletes the Job), so its Job {namespace}/{name}, held suspended, will not \
             be released; delete it with kubectl delete job -n {namespace} {name}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_limit_is_taken_between_a_second_and_a_day() {
        use std::time::Duration;
        assert_eq!(RunsConfig::default().work_limit, DEFAULT_WORK_LIMIT);
        assert_eq!(DEFAULT_WORK_LIMIT, Duration::from_secs(900));
        for ok in [1, 2, 900, 3600, 86_400] {
            assert_eq!(check_work_limit(Duration::from_secs(ok)), Ok(()), "{ok}");
        }
        for (bad, said) in [
            (Duration::ZERO, "is 0 s:"),
            (Duration::from_millis(500), "is 500ms:"),
            (Duration::from_secs(86_401), "is 86401 s:"),
            (Duration::from_secs(u64::MAX), "s:"),
        ] {
            let e = check_work_limit(bad).expect_err("refused");
            assert!(
                e.starts_with("the work limit of runs (--work-limit) ")
                    && e.contains(said)
                    && e.contains("give 1 to 86400 seconds (24 h)"),
                "{bad:?}: {e}"
            );
        }
        assert_eq!(duration_text(Duration::from_secs(900)), "15 min");
        assert_eq!(duration_text(Duration::from_secs(7200)), "2 h");
        assert_eq!(duration_text(Duration::from_secs(90)), "90 s");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn namespace_patterns() {
        let c = RunsConfig {
            allow_namespaces: vec!["ml".into(), "team-*".into()],
            ..RunsConfig::default()
        };
        assert!(c.allows("ml"));
        assert!(c.allows("team-a") && c.allows("team-"));
        assert!(!c.allows("mlx") && !c.allows("default") && !c.allows("xteam-a"));
        assert!(!RunsConfig::default().allows("default"), "none: refused");
    }

    #[test]
    fn the_oldest_finished_run_is_forgotten_first_and_pending_ones_kept() {
        let runs = Runs::default();
        let run = |i: usize| Run::new(format!("r{i}"), "n", "a", "ns", String::new());
        for i in 0..MAX_RUNS {
            assert!(runs.insert(run(i)));
        }
        assert!(!runs.insert(run(MAX_RUNS)), "all pending: refused");
        runs.update("r5", |r| r.state = State::Failed);
        runs.update("r9", |r| r.state = State::Failed);
        assert!(runs.insert(run(MAX_RUNS)));
        assert!(runs.get("r5").is_none() && runs.get("r9").is_some());
        assert!(runs.get("r0").is_some() && runs.get(&format!("r{MAX_RUNS}")).is_some());
    }

    fn withdrawn(cleanup: Option<Box<ociup_kube::Error>>) -> ociup_kube::Error {
        ociup_kube::Error::Withdrawn {
            what: "regenerating trainer failed".into(),
            job: "ml/trainer-v3-x".into(),
            source: Box::new(ociup_kube::Error::Invalid("the base is gone".into())),
            cleanup,
        }
    }

    #[test]
    fn a_job_left_behind_is_named_and_nothing_else_is() {
        assert_eq!(Left::by(&withdrawn(None)), Left::Nothing, "deleted");
        let silent = Box::new(ociup_kube::Error::Invalid("no answer".into()));
        assert_eq!(
            Left::by(&withdrawn(Some(silent))),
            Left::MaybeJob("ml/trainer-v3-x".into())
        );
        assert_eq!(
            Left::by(&ociup_kube::Error::Invalid("bad".into())),
            Left::Nothing
        );
        let unanswered = |lookup, cleanup| ociup_kube::Error::Unanswered {
            job: "ml/t".into(),
            cause: Box::new(ociup_kube::Error::Invalid("no answer".into())),
            cleanup,
            mark: "m".into(),
            lookup,
        };
        let absent = ociup_kube::Lookup::Absent {
            looks: 2,
            apart: std::time::Duration::from_secs(1),
        };
        let maybe = Left::MaybeJob("ml/t".into());
        assert_eq!(Left::by(&unanswered(Some(absent), None)), maybe);
        assert_eq!(Left::by(&unanswered(None, None)), maybe);
        let failed = Box::new(ociup_kube::Error::Invalid("silent".into()));
        assert_eq!(Left::by(&unanswered(None, Some(failed))), maybe);
        assert_eq!(
            Left::by(&unanswered(Some(ociup_kube::Lookup::Deleted), None)),
            Left::Nothing
        );
        assert_eq!(
            Left::by(&unanswered(Some(ociup_kube::Lookup::Foreign), None)),
            Left::Nothing,
            "someone else's Job is not the run's"
        );
        let cancelled = |cleanup| ociup_kube::Error::Cancelled {
            job: Some("ml/t".into()),
            cleanup,
            running: false,
        };
        assert_eq!(Left::by(&cancelled(None)), Left::Nothing);
        let failed = Box::new(ociup_kube::Error::Invalid("silent".into()));
        assert_eq!(Left::by(&cancelled(Some(failed))), maybe);
        let unreleased = ociup_kube::Error::Unreleased {
            nick: "t".into(),
            version: 3,
            job: "ml/t".into(),
            attempts: 4,
            cause: Box::new(ociup_kube::Error::Invalid("refused".into())),
            suspended: Some(true),
        };
        assert_eq!(
            Left::by(&unreleased),
            Left::Unreleased {
                job: "ml/t".into(),
                version: 3
            }
        );

        let mut run = Run::new("r".into(), "trainer", "alice", "ml", String::new());
        run.ended(Left::Nothing, "running trainer: bad".into(), None);
        assert_eq!((run.state, run.job_left.as_deref()), (State::Failed, None));
        let mut run = Run::new("r".into(), "trainer", "alice", "ml", String::new());
        run.ended(Left::MaybeJob("ml/t".into()), "e".into(), None);
        assert_eq!(run.state, State::Failed);
        assert_eq!(run.job_left.as_deref(), Some("ml/t"));
        assert!(
            run.name.is_none() && !run.upgraded,
            "no version was recorded"
        );
    }

    #[test]
    fn an_unreleased_run_names_its_job_and_the_recorded_version() {
        let record: VersionRecord = serde_json::from_value(serde_json::json!({
            "nick": "trainer", "number": 3, "image": "r/t@sha256:aa", "digest": "sha256:aa",
            "base": "r/b", "base_digest": "sha256:bb", "recipe": "sha256:cc",
            "reason": "base moved", "time": "2026-11-29T08:00:00Z", "actor": "alice",
            "previous": null, "build_manifest": null, "epoch": 0
        }))
        .expect("a version record");
        let left = Left::Unreleased {
            job: "team-a/trainer-v3-x".into(),
            version: 3,
        };
        let mut run = Run::new("r".into(), "trainer", "alice", "default", String::new());
        run.ended(left.clone(), "released it not".into(), Some(&record));
        assert_eq!(run.state, State::Unreleased);
        assert_eq!(run.namespace, "team-a");
        assert_eq!(run.name.as_deref(), Some("trainer-v3-x"));
        assert_eq!(run.job_left.as_deref(), Some("team-a/trainer-v3-x"));
        assert_eq!(run.version, Some(3));
        assert_eq!(run.digest.as_deref(), Some("sha256:aa"));
        assert_eq!(run.image.as_deref(), Some("r/t@sha256:aa"));
        assert_eq!(run.base_digest.as_deref(), Some("sha256:bb"));
        assert!(run.upgraded && run.held);
        assert_eq!(run.error.as_deref(), Some("released it not"));
        let answer = serde_json::to_value(&run).expect("json");
        assert_eq!(answer["state"], "unreleased");
        assert_eq!(answer["job_left"], "team-a/trainer-v3-x");

        // Another version's record (a later run's) is not taken for this one's.
        let mut run = Run::new("r".into(), "trainer", "alice", "default", String::new());
        let other = VersionRecord {
            number: 4,
            ..record
        };
        run.ended(left, "e".into(), Some(&other));
        assert_eq!((run.version, run.digest.as_deref()), (Some(3), None));
    }

    #[test]
    fn a_run_id_names_its_namespace_and_an_unguessable_mark() {
        let id = new_id("team-a").expect("an id");
        let parsed = RunId::parse(&id).expect("parsed");
        assert_eq!(parsed.namespace, "team-a");
        assert_eq!(parsed.mark.len(), 32);
        assert_eq!(id, format!("run-team-a-{}", parsed.mark));
        let other = new_id("team-a").expect("an id");
        assert_ne!(RunId::parse(&other).expect("parsed").mark, parsed.mark);
        let mark = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            RunId::parse(&format!("run-a-b-c-{mark}")),
            Some(RunId {
                namespace: "a-b-c",
                mark
            })
        );
        for bad in [
            // An older service's id: no namespace.
            format!("run-{mark}"),
            format!("run--{mark}"),
            format!("run-ns-{}", &mark[..31]),
            format!("run-ns-{mark}0"),
            format!("run-ns-{}", mark.to_uppercase()),
            format!("run-Ns-{mark}"),
            format!("run--ns-{mark}"),
            format!("run-ns--{mark}"),
            format!("run-n.s-{mark}"),
            format!("run-{}-{mark}", "a".repeat(64)),
            format!("job-ns-{mark}"),
            "run-".into(),
            String::new(),
        ] {
            assert_eq!(RunId::parse(&bad), None, "{bad}");
        }
        assert!(RunId::parse(&format!("run-{}-{mark}", "a".repeat(63))).is_some());
    }

    /// The deadline of the runs of [`job_of`]: 15 minutes after 2026-11-29T10:00:00Z.
    const DEADLINE_AT: &str = "2026-11-29T10:15:00Z";

    /// A run's Job as `Cluster::apply_marked` makes it, from the marks of `run`.
    fn job_of(run: &Run, held: bool) -> Job {
        let pinned = ociup_kube::Pinned {
            nick: run.nick.clone(),
            version: 3,
            reference: "r.example/t@sha256:aa".into(),
            digest: "sha256:aa".into(),
            base_digest: "sha256:bb".into(),
        };
        let options = JobOptions {
            namespace: Some(run.namespace.clone()),
            ..JobOptions::default()
        };
        let mut job = ociup_kube::build_job(&pinned, &options, held).expect("a job");
        let marks = marks(run, DEADLINE_AT);
        let meta = &mut job.metadata;
        let annotations = meta.annotations.get_or_insert_with(Default::default);
        annotations.extend(marks.annotations);
        let outcome = if held { "upgraded held" } else { "current" };
        annotations.insert(ociup_kube::keys::RESOLUTION.into(), outcome.into());
        meta.name = Some("trainer-v3-abcde".into());
        meta.namespace = Some(run.namespace.clone());
        meta.uid = Some("u-1".into());
        job
    }

    #[test]
    fn a_runs_job_shows_it_to_its_requester_only() {
        let id = new_id("ml").expect("an id");
        let run = Run::new(
            id.clone(),
            "trainer",
            "alice",
            "ml",
            "2026-11-29T10:00:00Z".into(),
        );
        let m = marks(&run, DEADLINE_AT);
        assert_eq!(m.request.as_deref(), RunId::parse(&id).map(|r| r.mark));
        assert_eq!(m.annotations[DEADLINE], DEADLINE_AT);
        assert!(m.outcome);
        let job = job_of(&run, false);
        assert!(visible(&job, "alice", false));
        assert!(!visible(&job, "bob", false));
        assert!(visible(&job, "bob", true), "admins see every run");
        // A requester whose name needs escaping: written bounded, compared bounded.
        let odd = Run::new(id.clone(), "trainer", "eve\nx", "ml", String::new());
        let job_odd = job_of(&odd, false);
        assert_eq!(
            job_odd.metadata.annotations.as_ref().unwrap()[REQUESTER],
            "eve\\nx"
        );
        assert!(visible(&job_odd, "eve\nx", false));
        assert!(!visible(&job_odd, "eve", false) && !visible(&job_odd, "evenx", false));
        // A Job no service made (no requester annotation) is no one's run, not even an admin's.
        let mut plain = job.clone();
        plain
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(REQUESTER);
        assert!(!visible(&plain, "alice", true));
        assert!(Run::of_job(&id, &plain).is_none());

        let seen = Run::of_job(&id, &job).expect("a run");
        assert_eq!(seen.state, State::Submitted);
        assert_eq!(
            (
                seen.id.as_str(),
                seen.nick.as_str(),
                seen.requester.as_str()
            ),
            (id.as_str(), "trainer", "alice")
        );
        assert_eq!(seen.created, "2026-11-29T10:00:00Z");
        assert_eq!(
            (
                seen.namespace.as_str(),
                seen.name.as_deref(),
                seen.uid.as_deref()
            ),
            ("ml", Some("trainer-v3-abcde"), Some("u-1"))
        );
        assert_eq!(seen.version, Some(3));
        assert_eq!(seen.image.as_deref(), Some("r.example/t@sha256:aa"));
        assert_eq!(seen.digest.as_deref(), Some("sha256:aa"));
        assert_eq!(seen.base_digest.as_deref(), Some("sha256:bb"));
        assert!(!seen.upgraded && !seen.held && !seen.stale);
        assert!(seen.error.is_none() && seen.job_left.is_none());
    }

    #[test]
    fn a_held_job_is_pending_until_its_version_has_long_been_recorded() {
        let id = new_id("ml").expect("an id");
        let run = Run::new(id.clone(), "trainer", "alice", "ml", String::new());
        let job = job_of(&run, true);
        assert!(is_held(&job));
        let seen = Run::of_job(&id, &job).expect("a run");
        assert_eq!(seen.state, State::Pending);
        assert!(seen.upgraded && seen.held);
        let record: VersionRecord = serde_json::from_value(serde_json::json!({
            "nick": "trainer", "number": 3, "image": "r.example/t@sha256:aa",
            "digest": "sha256:aa", "base": "r/b", "base_digest": "sha256:bb",
            "recipe": "sha256:cc", "reason": "base moved", "time": "2026-11-29T10:00:00Z",
            "actor": "alice", "previous": null, "build_manifest": null, "epoch": 0
        }))
        .expect("a version record");
        let at = 1_795_946_400; // 2026-11-29T10:00:00Z
        assert_eq!(ociup_core::time::rfc3339(at), record.time);
        let settled = |recorded: Option<&VersionRecord>, now: u64| {
            let mut r = seen.clone();
            // A Job made before replicas wrote deadlines: see the next test for those.
            r.settle_held(recorded, None, now, 155);
            r
        };
        // Not recorded (being regenerated): pending.
        assert_eq!(settled(None, at + 10_000).state, State::Pending);
        // Recorded just now (being released): pending.
        assert_eq!(settled(Some(&record), at + 154).state, State::Pending);
        // Another version's record, or this number with another digest: not this Job's.
        let other = VersionRecord {
            digest: "sha256:ff".into(),
            ..record.clone()
        };
        assert_eq!(settled(Some(&other), at + 10_000).state, State::Pending);
        // Recorded long ago and still held: unreleased, the Job named and how to release it.
        let r = settled(Some(&record), at + 155);
        assert_eq!(r.state, State::Unreleased);
        assert_eq!(r.job_left.as_deref(), Some("ml/trainer-v3-abcde"));
        let e = r.error.as_deref().unwrap();
        assert!(
            e.contains("kubectl patch job -n ml trainer-v3-abcde")
                && e.contains("kubectl delete job -n ml trainer-v3-abcde"),
            "{e}"
        );
        // A released Job is submitted whatever the catalog says.
        let mut released = Run::of_job(&id, &job_of(&run, false)).expect("a run");
        released.settle_held(Some(&record), Some(DEADLINE_AT), at + 10_000, 155);
        assert_eq!(released.state, State::Submitted);
    }

    #[test]
    fn a_held_job_whose_version_is_not_recorded_fails_once_its_deadline_has_passed() {
        let id = new_id("ml").expect("an id");
        let run = Run::new(id.clone(), "trainer", "alice", "ml", String::new());
        let job = job_of(&run, true);
        let deadline = deadline_of(&job).expect("the Job's deadline");
        assert_eq!(deadline, DEADLINE_AT);
        let due = 1_795_946_400 + 15 * 60;
        assert_eq!(ociup_core::time::rfc3339(due), deadline);
        let seen = Run::of_job(&id, &job).expect("a run");
        assert_eq!(seen.state, State::Pending);
        let settled = |recorded: Option<&VersionRecord>, deadline: Option<&str>, now: u64| {
            let mut r = seen.clone();
            r.settle_held(recorded, deadline, now, 155);
            r
        };
        // Being regenerated: pending until the deadline, and CLOCK_SKEW seconds more (the clock
        // of the replica that wrote it may be behind this one's).
        for now in [due - 600, due, due + CLOCK_SKEW] {
            assert_eq!(
                settled(None, Some(deadline), now).state,
                State::Pending,
                "{now}"
            );
        }
        // Past it, never recorded (the replica that made it stopped, or gave it up): failed,
        // the Job held for good named, and how to delete it.
        let r = settled(None, Some(deadline), due + CLOCK_SKEW + 1);
        assert_eq!(r.state, State::Failed);
        assert_eq!(r.job_left.as_deref(), Some("ml/trainer-v3-abcde"));
        assert_eq!(
            (r.version, r.digest.as_deref()),
            (Some(3), Some("sha256:aa"))
        );
        let e = r.error.as_deref().expect("why");
        assert!(
            e.contains("version 3 of trainer was not recorded by 2026-11-29T10:15:00Z")
                && e.contains("kubectl delete job -n ml trainer-v3-abcde"),
            "{e}"
        );
        // Answered as a failed run with a Job left: a final state.
        let answer = serde_json::to_value(&r).expect("json");
        assert_eq!(answer["state"], "failed");
        assert_eq!(answer["job_left"], "ml/trainer-v3-abcde");
        // A record of this number with another digest is not this Job's version: failed too.
        let record: VersionRecord = serde_json::from_value(serde_json::json!({
            "nick": "trainer", "number": 3, "image": "r.example/t@sha256:aa",
            "digest": "sha256:aa", "base": "r/b", "base_digest": "sha256:bb",
            "recipe": "sha256:cc", "reason": "base moved",
            "time": ociup_core::time::rfc3339(due - 60),
            "actor": "alice", "previous": null, "build_manifest": null, "epoch": 0
        }))
        .expect("a version record");
        let other = VersionRecord {
            digest: "sha256:ff".into(),
            ..record.clone()
        };
        let late = due + 10_000;
        assert_eq!(
            settled(Some(&other), Some(deadline), late).state,
            State::Failed
        );
        // Recorded before the deadline: being released, then unreleased, never failed.
        assert_eq!(
            settled(Some(&record), Some(deadline), due + CLOCK_SKEW + 1).state,
            State::Pending
        );
        assert_eq!(
            settled(Some(&record), Some(deadline), late).state,
            State::Unreleased
        );
        // No deadline (a Job of a replica that wrote none): pending however late.
        assert_eq!(settled(None, None, late).state, State::Pending);
        // A deadline of another shape is none.
        for odd in [
            "2026-11-29 10:15:00Z",
            "2026-11-29T10:15:00+00:00",
            "soon",
            "",
        ] {
            let mut j = job.clone();
            j.metadata
                .annotations
                .as_mut()
                .expect("annotations")
                .insert(DEADLINE.into(), odd.into());
            assert_eq!(deadline_of(&j), None, "{odd}");
        }
    }

    #[tokio::test]
    async fn reading_a_job_from_a_silent_api_server_is_bounded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        // Accepts, reads nothing, answers nothing.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let config = ociup_kube::kube::Config::new(url.parse().expect("url"));
        let cluster = Cluster::from_config(config)
            .expect("cluster")
            .with_request_timeout(Some(std::time::Duration::from_millis(300)));
        let started = std::time::Instant::now();
        let e = read_job(&cluster, "ml", "t").await.expect_err("silent");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(
            e.starts_with("reading Job ml/t: the Kubernetes API server at http://127.0.0.1:")
                && e.ends_with("did not answer within 300ms"),
            "{e}"
        );
        silent.abort();
    }
}

//! What can go wrong between ociup and a cluster.

/// Errors of the Job builder and submitter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option or a version a Job cannot be made of, named with what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// No usable client configuration (no kubeconfig, an unknown context, no in-cluster
    /// service account).
    #[error("{what}: {}", causes(error.as_ref()))]
    Config {
        /// What was being loaded.
        what: String,
        /// Why it failed (its causes are in the message).
        error: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The API server answered and refused: forbidden (403), a name already taken (409), an
    /// invalid object (422), not found (404).
    #[error("{action}: the API server refused ({code} {reason}): {message}")]
    Refused {
        /// What was asked (`creating Job ns/name`).
        action: String,
        /// The HTTP status code.
        code: u16,
        /// The status reason (`Forbidden`, `AlreadyExists`, `Invalid`).
        reason: String,
        /// The server's message.
        message: String,
    },
    /// The client could not authenticate to the API server (a token file or exec plugin that
    /// fails, an expired credential it cannot refresh).
    #[error(
        "{action}: authenticating to the Kubernetes API server at {url}: {}",
        causes(error)
    )]
    Auth {
        /// What was asked.
        action: String,
        /// The server's URL.
        url: String,
        /// Why (its causes are in the message).
        error: kube::Error,
    },
    /// The API server could not be reached (connection refused, TLS failures, a timeout).
    #[error(
        "{action}: cannot reach the Kubernetes API server at {url}: {}",
        causes(error)
    )]
    Unreachable {
        /// What was asked.
        action: String,
        /// The server's URL.
        url: String,
        /// Why (its causes are in the message).
        error: kube::Error,
    },
    /// The API server did not answer in time ([`Cluster::with_request_timeout`](crate::Cluster::with_request_timeout)):
    /// it accepted the connection and then went silent, or answered too slowly. Whether the
    /// request took effect is unknown.
    #[error("{action}: the Kubernetes API server at {url} did not answer within {after:?}")]
    TimedOut {
        /// What was asked.
        action: String,
        /// The server's URL.
        url: String,
        /// The time given.
        after: std::time::Duration,
    },
    /// Another failure of the client (an answer that does not parse as what was asked).
    #[error("{action}: {}", causes(error))]
    Client {
        /// What was asked.
        action: String,
        /// Why (its causes are in the message).
        error: kube::Error,
    },
    /// Resolving the nick failed; no Job was created.
    #[error(transparent)]
    Resolve(#[from] ociup_core::Error),
    /// A Job created suspended while its version was regenerated was withdrawn: the
    /// regeneration failed (`source`), or the version was recorded but the Job could not be
    /// released. The Job was deleted (`cleanup` is `None`), or deleting it failed too.
    #[error(
        "{what}, {}",
        match cleanup {
            None => format!("so its suspended Job {job} was deleted"),
            Some(e) => format!(
                "and deleting its suspended Job {job} failed too ({e}); it may be left: \
                 delete it with {}",
                kubectl_delete(job)
            ),
        }
    )]
    Withdrawn {
        /// What failed (`regenerating trainer failed`).
        what: String,
        /// The Job, as `namespace/name`.
        job: String,
        /// Why.
        #[source]
        source: Box<Error>,
        /// Why deleting the Job failed, if it did.
        cleanup: Option<Box<Error>>,
    },
    /// Creating a Job was not answered (the server silent, the connection cut): it may have
    /// been created all the same. It was looked for and deleted if it had been (`cleanup` is
    /// `None`), or that failed too and it may be left. When it was to be held, no version was
    /// written.
    #[error(
        "{cause}; {}",
        match cleanup {
            None => format!(
                "the Job {job} was looked for and deleted in case the server created it"
            ),
            Some(e) => format!(
                "the Job {job} may have been created and may be left: looking for it to delete \
                 it failed ({e}); delete it with {}",
                kubectl_delete(job)
            ),
        }
    )]
    Unanswered {
        /// The Job, as `namespace/name`.
        job: String,
        /// Why the creation is not known to have happened or not (in the message).
        cause: Box<Error>,
        /// Why looking for it or deleting it failed, if it did.
        cleanup: Option<Box<Error>>,
    },
    /// The version was written and recorded, but releasing its held Job failed (the server
    /// refused, or did not answer after `attempts` tries): the Job is left as it is, most
    /// likely still suspended. The error names it and the command that releases it.
    #[error(
        "{nick} version {version} is recorded, but releasing its Job {job} failed{} ({cause}); \
         the Job may still be suspended: release it with {} (or delete it with {})",
        if *attempts > 1 { format!(" {attempts} times") } else { String::new() },
        kubectl_release(job),
        kubectl_delete(job)
    )]
    Unreleased {
        /// The nick.
        nick: String,
        /// The version recorded.
        version: u64,
        /// The Job, as `namespace/name`.
        job: String,
        /// How many times the release was sent.
        attempts: u32,
        /// Why the last one failed (in the message).
        cause: Box<Error>,
    },
    /// The request was stopped (SIGINT, SIGTERM) before it finished. A Job created suspended
    /// meanwhile was deleted (`cleanup` is `None`), or deleting it failed too.
    #[error(
        "stopped before the Job was released{}",
        match (job, cleanup) {
            (None, _) => String::new(),
            (Some(job), None) => format!(", so its suspended Job {job} was deleted"),
            (Some(job), Some(e)) => format!(
                "; deleting its suspended Job {job} failed ({e}); it may be left: delete it \
                 with {}",
                kubectl_delete(job)
            ),
        }
    )]
    Cancelled {
        /// The Job created suspended, as `namespace/name`, if there was one.
        job: Option<String>,
        /// Why deleting it failed, if it did.
        cleanup: Option<Box<Error>>,
    },
    /// Waiting on a Job ended before it finished: deleted meanwhile, or the time given ran out.
    #[error("{0}")]
    Wait(String),
}

impl Error {
    /// Whether asking again may succeed: the server not reached or not answering in time, a
    /// stream cut short, a 5xx or 429 answer. A refusal (4xx), an authentication or
    /// configuration failure is not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::TimedOut { .. } => true,
            Error::Client { error, .. } => !matches!(
                error,
                kube::Error::SerdeError(_) | kube::Error::BuildRequest(_)
            ),
            Error::Refused { code, .. } => *code >= 500 || *code == 429,
            _ => false,
        }
    }

    /// The HTTP status of a refusal by the API server.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Error::Refused { code, .. } => Some(*code),
            Error::Withdrawn { source, .. } => source.status_code(),
            Error::Unanswered { cause, .. } | Error::Unreleased { cause, .. } => {
                cause.status_code()
            }
            _ => None,
        }
    }
}

/// `kubectl delete` of a Job given as `namespace/name`.
fn kubectl_delete(job: &str) -> String {
    let (namespace, name) = job.split_once('/').unwrap_or(("default", job));
    format!("kubectl delete job -n {namespace} {name}")
}

/// The `kubectl patch` that releases a held Job (`namespace/name`) as ociup would: suspend
/// false, its held label and annotation removed.
fn kubectl_release(job: &str) -> String {
    let (namespace, name) = job.split_once('/').unwrap_or(("default", job));
    format!(
        "kubectl patch job -n {namespace} {name} --type merge -p \
         '{{\"spec\":{{\"suspend\":false}},\"metadata\":{{\"labels\":{{\"{held}\":null}},\
         \"annotations\":{{\"{held}\":null}}}}}}'",
        held = crate::job::keys::HELD
    )
}

/// An error and its causes, each said once (kube's errors repeat their cause in their message).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// A result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

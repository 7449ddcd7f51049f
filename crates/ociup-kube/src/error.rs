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
    /// The API server could not be reached (connection refused, TLS failures), or the
    /// connection was cut (before the request was sent, or after: whether it took effect is
    /// then unknown).
    #[error("{action}: {}: {}", reach(url, error), causes(error))]
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
    /// regeneration failed, or answered another digest than the planned one (`source`). The Job
    /// was deleted (`cleanup` is `None`), or deleting it failed too. (A Job that could not be
    /// released after its version was recorded is [`Error::Unreleased`], not deleted.)
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
    /// Creating a Job failed without a refusal (the server silent, the connection cut, a 5xx,
    /// an answer that does not parse): it may have been created all the same. It was looked
    /// for by name (`lookup` says what was found: deleted if it was this request's), or that
    /// failed too (`cleanup`) and it may be left. When it was to be held, no version was
    /// written.
    #[error(
        "{cause}; {}",
        match (cleanup, lookup) {
            (None, Some(Lookup::Deleted)) => format!(
                "the server had created the Job {job} all the same: it was found and deleted"
            ),
            (None, Some(Lookup::Foreign)) => format!(
                "a Job {job} exists but is not this request's (its {} annotation is not {mark}): \
                 it was left alone",
                crate::job::keys::REQUEST
            ),
            (None, Some(Lookup::Absent { looks, apart })) => format!(
                "the Job {job} was not found (looked for {looks} times, {apart:?} apart) but may \
                 still appear: it carries the label {request}={mark}; find it with {} and delete \
                 it with {}",
                kubectl_by_mark("get", job, mark),
                kubectl_by_mark("delete", job, mark),
                request = crate::job::keys::REQUEST
            ),
            (Some(e), _) => format!(
                "the Job {job} may have been created and may be left: looking for it to delete \
                 it failed ({e}); delete it with {}",
                kubectl_delete(job)
            ),
            (None, None) => format!(
                "the Job {job} may have been created: delete it with {}",
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
        /// This request's mark: the Job's `ociup.dev/request` label and annotation.
        mark: String,
        /// What looking for it found, when that did not fail.
        lookup: Option<Lookup>,
    },
    /// The version was written and recorded, but releasing its held Job failed (the server
    /// refused, or did not answer after `attempts` tries): the Job is left as it is, still
    /// suspended (`suspended` is `Some(true)`: it was looked at afterwards) or most likely so
    /// (`None`: looking failed too). The error names it and the command that releases it.
    #[error(
        "{nick} version {version} is recorded, but releasing its Job {job} failed{} ({cause}); \
         the Job {}: release it with {} (or delete it with {})",
        if *attempts > 1 { format!(" {attempts} times") } else { String::new() },
        if *suspended == Some(true) { "is still suspended" } else { "may still be suspended" },
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
        /// Whether the Job was seen still suspended afterwards (`None`: it could not be seen).
        suspended: Option<bool>,
    },
    /// The request was stopped (SIGINT, SIGTERM) before it finished. A Job created meanwhile
    /// (suspended, or `running` when nothing was due) was deleted (`cleanup` is `None`), or
    /// deleting it failed too.
    #[error(
        "stopped before the Job was released{}",
        match (job, cleanup) {
            (None, _) => String::new(),
            (Some(job), None) => format!(
                ", so its {} Job {job} was deleted",
                if *running { "just created" } else { "suspended" }
            ),
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
        /// Whether the Job was created unsuspended (nothing was due).
        running: bool,
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

/// What looking for a Job whose creation went unanswered found ([`Error::Unanswered`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lookup {
    /// It was there, this request's, and was deleted.
    Deleted,
    /// A Job by that name is there but is not this request's: it was left alone.
    Foreign,
    /// It was not there, `looks` times, `apart` apart; it may still appear (the server may
    /// still be working on the creation).
    Absent {
        /// How many times it was looked for.
        looks: u32,
        /// The pause between two looks.
        apart: std::time::Duration,
    },
}

/// `kubectl VERB jobs` selecting the Jobs of a request by its mark, in the namespace of `job`
/// (`namespace/name`).
fn kubectl_by_mark(verb: &str, job: &str, mark: &str) -> String {
    let (namespace, _) = job.split_once('/').unwrap_or(("default", job));
    format!(
        "kubectl {verb} jobs -n {namespace} -l {}={mark}",
        crate::job::keys::REQUEST
    )
}

/// How an [`Error::Unreachable`] begins: the connection cut once the request was sent (its
/// answer cut short: hyper's "connection closed before message completed"), or the server
/// not reached.
fn reach(url: &str, error: &kube::Error) -> String {
    if causes(error).contains("connection closed before message completed") {
        format!(
            "the connection to the Kubernetes API server at {url} was cut before its answer \
             (the request may have taken effect)"
        )
    } else {
        format!("cannot reach the Kubernetes API server at {url}")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn unanswered(lookup: Option<Lookup>, cleanup: Option<Box<Error>>) -> String {
        Error::Unanswered {
            job: "ns/trainer-v3-bcdfg".into(),
            cause: Box::new(Error::Invalid(
                "creating Job ns/trainer-v3-bcdfg: no answer".into(),
            )),
            cleanup,
            mark: "bcdfghjklmnpqrst".into(),
            lookup,
        }
        .to_string()
    }

    #[test]
    fn unanswered_says_what_the_lookup_found() {
        let deleted = unanswered(Some(Lookup::Deleted), None);
        assert_eq!(
            deleted,
            "creating Job ns/trainer-v3-bcdfg: no answer; the server had created the Job \
             ns/trainer-v3-bcdfg all the same: it was found and deleted"
        );
        let absent = unanswered(
            Some(Lookup::Absent {
                looks: 2,
                apart: std::time::Duration::from_secs(30),
            }),
            None,
        );
        assert!(
            absent.contains(
                "the Job ns/trainer-v3-bcdfg was not found (looked for 2 times, 30s apart) but \
                 may still appear: it carries the label ociup.dev/request=bcdfghjklmnpqrst; find \
                 it with kubectl get jobs -n ns -l ociup.dev/request=bcdfghjklmnpqrst and delete \
                 it with kubectl delete jobs -n ns -l ociup.dev/request=bcdfghjklmnpqrst"
            ),
            "{absent}"
        );
        let foreign = unanswered(Some(Lookup::Foreign), None);
        assert!(
            foreign.ends_with(
                "a Job ns/trainer-v3-bcdfg exists but is not this request's (its \
                 ociup.dev/request annotation is not bcdfghjklmnpqrst): it was left alone"
            ),
            "{foreign}"
        );
        let failed = unanswered(None, Some(Box::new(Error::Invalid("silent".into()))));
        assert!(
            failed.ends_with(
                "may be left: looking for it to delete it failed (silent); delete it with \
                 kubectl delete job -n ns trainer-v3-bcdfg"
            ),
            "{failed}"
        );
    }

    #[test]
    fn unreleased_says_still_suspended_only_when_it_was_seen() {
        let unreleased = |suspended| {
            Error::Unreleased {
                nick: "trainer".into(),
                version: 3,
                job: "ns/t".into(),
                attempts: 4,
                cause: Box::new(Error::Invalid("refused".into())),
                suspended,
            }
            .to_string()
        };
        assert!(unreleased(Some(true)).contains("failed 4 times (refused); the Job is still suspended: release it with kubectl patch job -n ns t"));
        assert!(unreleased(None).contains("the Job may still be suspended: release it"));
    }

    #[test]
    fn unreachable_says_when_the_connection_was_cut_after_sending() {
        let unreachable = |why: &str| {
            Error::Unreachable {
                action: "creating Job ns/t".into(),
                url: "https://127.0.0.1:6443".into(),
                error: kube::Error::Service(Box::new(std::io::Error::other(why.to_owned()))),
            }
            .to_string()
        };
        assert_eq!(
            unreachable("connection closed before message completed"),
            "creating Job ns/t: the connection to the Kubernetes API server at \
             https://127.0.0.1:6443 was cut before its answer (the request may have taken \
             effect): ServiceError: connection closed before message completed"
        );
        assert_eq!(
            unreachable("Connection refused (os error 111)"),
            "creating Job ns/t: cannot reach the Kubernetes API server at \
             https://127.0.0.1:6443: ServiceError: Connection refused (os error 111)"
        );
    }

    #[test]
    fn cancelled_names_what_it_deleted() {
        let cancelled = |running| {
            Error::Cancelled {
                job: Some("ns/t".into()),
                cleanup: None,
                running,
            }
            .to_string()
        };
        assert_eq!(
            cancelled(false),
            "stopped before the Job was released, so its suspended Job ns/t was deleted"
        );
        assert_eq!(
            cancelled(true),
            "stopped before the Job was released, so its just created Job ns/t was deleted"
        );
    }
}

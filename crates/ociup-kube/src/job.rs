//! The Job builder: a `batch/v1` Job running one version of a nick, pinned by digest.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, LocalObjectReference, PodSpec, PodTemplateSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ociup_core::managed::manager::{Planned, Resolution};
use serde::Serialize;

use crate::error::{Error, Result};

/// Label and annotation keys ociup puts on the Jobs it makes (and on their pods).
pub mod keys {
    /// Label: the nick (made label-safe: `_` reads `-`, at most 63 characters).
    /// Annotation: the nick as it is.
    pub const NICK: &str = "ociup.dev/nick";
    /// Label and annotation: the version number.
    pub const VERSION: &str = "ociup.dev/version";
    /// Annotation: ociup's digest-pinned reference of the version (`docker://…@sha256:…`).
    pub const IMAGE: &str = "ociup.dev/image";
    /// Annotation: the manifest digest of the version.
    pub const DIGEST: &str = "ociup.dev/digest";
    /// Annotation: the digest of the base the version sits on.
    pub const BASE_DIGEST: &str = "ociup.dev/base-digest";
    /// Annotation on a Job created suspended: what it waits for. Label (`true`) on the Job
    /// itself, not its pods, so that held Jobs can be listed
    /// (`kubectl get jobs -l ociup.dev/held=true`). Both are removed when it is released.
    pub const HELD: &str = "ociup.dev/held";
    /// Annotation on a Job submitted by [`Cluster::apply`](crate::Cluster::apply): a mark of
    /// that request, so that a Job whose creation went unanswered is known as its own before
    /// it is deleted.
    pub const REQUEST: &str = "ociup.dev/request";
    /// Annotation on a Job submitted by [`Cluster::apply_marked`](crate::Cluster::apply_marked)
    /// with [`Marks::outcome`](crate::Marks::outcome): how its version was come to, words among
    /// `upgraded` (the version is new), `held` (the Job was created suspended while it was
    /// written) and `stale` (the base could not be asked), `current` when none applies.
    pub const RESOLUTION: &str = "ociup.dev/resolution";
    /// The standard label naming the tool that manages the object: `ociup`.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
}

/// The version a Job runs: from a [`Resolution`] (what `resolve` answered) or a [`Planned`]
/// version (what a regeneration is about to write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pinned {
    /// The nick.
    pub nick: String,
    /// The version number.
    pub version: u64,
    /// ociup's digest-pinned reference (`docker://registry/repo@sha256:…` or
    /// `oci:dir@sha256:…`).
    pub reference: String,
    /// The manifest (or index) digest.
    pub digest: String,
    /// The digest of the base it sits on.
    pub base_digest: String,
}

impl From<&Resolution> for Pinned {
    fn from(r: &Resolution) -> Self {
        Pinned {
            nick: r.nick.clone(),
            version: r.version,
            reference: r.reference.clone(),
            digest: r.digest.clone(),
            base_digest: r.base_digest.clone(),
        }
    }
}

impl From<&Planned> for Pinned {
    fn from(p: &Planned) -> Self {
        Pinned {
            nick: p.nick.clone(),
            version: p.version,
            reference: p.reference.clone(),
            digest: p.digest.clone(),
            base_digest: p.base_digest.clone(),
        }
    }
}

impl Pinned {
    /// The image reference a kubelet pulls: `registry/repository@sha256:…`, never a tag.
    ///
    /// # Errors
    /// A version kept in an OCI layout (`oci:…`), which no cluster can pull; a reference that is
    /// not pinned to this version's digest.
    pub fn image(&self) -> Result<String> {
        if self.reference.starts_with("oci:") {
            return Err(Error::Invalid(format!(
                "{} version {} is kept in an OCI layout ({}), which a cluster cannot pull: \
                 register the nick with --to a registry repository (or copy the image to one and \
                 run that)",
                self.nick, self.version, self.reference
            )));
        }
        let bare = self
            .reference
            .strip_prefix("docker://")
            .unwrap_or(&self.reference);
        match bare.rsplit_once('@') {
            Some((name, digest)) if digest == self.digest && !name.is_empty() => {
                // A tag beside the digest would be ignored by the runtime; leave it out so the
                // Job reads as what runs.
                let untagged = match name.rsplit_once(':') {
                    Some((repo, tag)) if !tag.contains('/') => repo,
                    _ => name,
                };
                Ok(format!("{untagged}@{digest}"))
            }
            _ => Err(Error::Invalid(format!(
                "{} version {}: the reference {} is not pinned to its digest {}",
                self.nick, self.version, self.reference, self.digest
            ))),
        }
    }
}

/// What to put in a Job besides the image; [`JobOptions::default`] gives a Job named after the
/// nick and version (a fresh suffix per Job), in the namespace of the client's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobOptions {
    /// The Job's name; `None`: `generateName: <nick>-v<version>-`, the API server adding a
    /// random suffix.
    pub name: Option<String>,
    /// Its namespace; `None`: left out of a printed Job, the client's default when applied.
    pub namespace: Option<String>,
    /// Arguments: replace the image's `Cmd`, as `docker run IMAGE ARGS` does.
    pub args: Vec<String>,
    /// Environment variables, in order (later ones win in the container).
    pub env: Vec<(String, String)>,
    /// The pod's service account.
    pub service_account: Option<String>,
    /// Secrets holding registry credentials for pulling the image.
    pub image_pull_secrets: Vec<String>,
    /// Retries before the Job is marked failed (Kubernetes' default is 6).
    pub backoff_limit: Option<i32>,
    /// Seconds after it finishes before the Job is deleted.
    pub ttl_seconds_after_finished: Option<i32>,
    /// Extra labels, on the Job and its pods.
    pub labels: BTreeMap<String, String>,
    /// Resource requests (`cpu` = `500m`, `memory` = `1Gi`).
    pub requests: BTreeMap<String, String>,
    /// Resource limits.
    pub limits: BTreeMap<String, String>,
}

impl JobOptions {
    /// Checks every field as the API server would, so that bad input is refused before
    /// anything is resolved, written or sent.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and what is wrong with it.
    pub fn validate(&self) -> Result<()> {
        if let Some(name) = &self.name {
            check_dns_label("--name", name, 63)?;
        }
        if let Some(ns) = &self.namespace {
            check_dns_label("--namespace", ns, 63)?;
        }
        if let Some(sa) = &self.service_account {
            check_dns_subdomain("--service-account", sa)?;
        }
        for s in &self.image_pull_secrets {
            check_dns_subdomain("--image-pull-secret", s)?;
        }
        for (k, _) in &self.env {
            check_env_name(k)?;
        }
        for (what, n) in [
            ("--backoff-limit", self.backoff_limit),
            (
                "--ttl-seconds-after-finished",
                self.ttl_seconds_after_finished,
            ),
        ] {
            if let Some(n) = n
                && n < 0
            {
                return Err(Error::Invalid(format!("{what} {n}: must be 0 or more")));
            }
        }
        for (k, v) in &self.labels {
            check_label_key(k)?;
            if k == keys::NICK || k == keys::VERSION || k == keys::MANAGED_BY {
                return Err(Error::Invalid(format!(
                    "--label {k}: ociup sets this label itself"
                )));
            }
            check_label_value(k, v)?;
        }
        for (what, map) in [("--request", &self.requests), ("--limit", &self.limits)] {
            for (k, v) in map {
                check_resource_name(what, k)?;
                check_quantity(what, k, v)?;
            }
        }
        Ok(())
    }
}

/// The `batch/v1` Job running `pinned`: its one container's image is the version pinned by
/// digest, the nick, version and digests recorded in labels and annotations (on the Job and
/// its pod template), `restartPolicy: Never`. With `suspend`, the Job is created held
/// (`spec.suspend: true`, an `ociup.dev/held` annotation saying why): the pending Job of a
/// regeneration, released by [`Cluster::release`](crate::Cluster::release).
///
/// ```
/// use ociup_kube::{JobOptions, Pinned, build_job, to_yaml};
///
/// let pinned = Pinned {
///     nick: "trainer".into(),
///     version: 3,
///     reference: "docker://registry.example/team/trainer@sha256:aaaa".into(),
///     digest: "sha256:aaaa".into(),
///     base_digest: "sha256:bbbb".into(),
/// };
/// let options = JobOptions {
///     args: vec!["--epochs".into(), "5".into()],
///     env: vec![("MODE".into(), "train".into())],
///     backoff_limit: Some(0),
///     ..JobOptions::default()
/// };
/// let job = build_job(&pinned, &options, false)?;
/// let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
/// assert_eq!(
///     pod.containers[0].image.as_deref(),
///     Some("registry.example/team/trainer@sha256:aaaa")
/// );
/// assert_eq!(job.metadata.generate_name.as_deref(), Some("trainer-v3-"));
/// assert!(to_yaml(&job)?.contains("ociup.dev/base-digest: sha256:bbbb"));
/// # Ok::<(), ociup_kube::Error>(())
/// ```
///
/// # Errors
/// Options that [`JobOptions::validate`] refuses; a version that a cluster cannot pull
/// ([`Pinned::image`]).
pub fn build_job(pinned: &Pinned, options: &JobOptions, suspend: bool) -> Result<Job> {
    options.validate()?;
    let image = pinned.image()?;
    let nick_label = label_safe(&pinned.nick);
    let mut labels = options.labels.clone();
    labels.insert(keys::MANAGED_BY.into(), "ociup".into());
    labels.insert(keys::NICK.into(), nick_label.clone());
    labels.insert(keys::VERSION.into(), pinned.version.to_string());
    let mut annotations = BTreeMap::from([
        (keys::NICK.to_owned(), pinned.nick.clone()),
        (keys::VERSION.to_owned(), pinned.version.to_string()),
        (keys::IMAGE.to_owned(), pinned.reference.clone()),
        (keys::DIGEST.to_owned(), pinned.digest.clone()),
        (keys::BASE_DIGEST.to_owned(), pinned.base_digest.clone()),
    ]);
    let pod_annotations = annotations.clone();
    let pod_labels = labels.clone();
    if suspend {
        labels.insert(keys::HELD.into(), "true".into());
        annotations.insert(
            keys::HELD.into(),
            format!(
                "until version {} of {} ({}) is written and recorded",
                pinned.version, pinned.nick, pinned.digest
            ),
        );
    }
    let (name, generate_name) = match &options.name {
        Some(n) => (Some(n.clone()), None),
        None => {
            // The API server appends 5 characters; a Job's name is at most 63.
            let version = format!("-v{}-", pinned.version);
            let room = 58usize.saturating_sub(version.len());
            let stem: String = nick_label.chars().take(room).collect();
            let stem = stem.trim_end_matches(['-', '_', '.']);
            (None, Some(format!("{stem}{version}")))
        }
    };
    let quantities = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect::<BTreeMap<_, _>>()
        })
    };
    let resources = (!options.requests.is_empty() || !options.limits.is_empty()).then(|| {
        ResourceRequirements {
            requests: quantities(&options.requests),
            limits: quantities(&options.limits),
            ..ResourceRequirements::default()
        }
    });
    let container = Container {
        name: container_name(&pinned.nick),
        image: Some(image),
        args: (!options.args.is_empty()).then(|| options.args.clone()),
        env: (!options.env.is_empty()).then(|| {
            options
                .env
                .iter()
                .map(|(k, v)| EnvVar {
                    name: k.clone(),
                    value: Some(v.clone()),
                    ..EnvVar::default()
                })
                .collect()
        }),
        resources,
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        service_account_name: options.service_account.clone(),
        image_pull_secrets: (!options.image_pull_secrets.is_empty()).then(|| {
            options
                .image_pull_secrets
                .iter()
                .map(|s| LocalObjectReference { name: s.clone() })
                .collect()
        }),
        ..PodSpec::default()
    };
    Ok(Job {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: options.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: options.backoff_limit,
            ttl_seconds_after_finished: options.ttl_seconds_after_finished,
            suspend: suspend.then_some(true),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
}

/// A Job as YAML, as `kubectl create -f -` reads it.
///
/// # Errors
/// Serialization errors (none for a Job made by [`build_job`]).
pub fn to_yaml(job: &Job) -> Result<String> {
    // Plain or quoted scalars only: a long image reference stays on its line (no folded `>-`
    // blocks). Strings YAML 1.1 readers (kubectl's) would take for numbers, booleans or null
    // are quoted.
    let options = serde_saphyr::ser_options! {
        prefer_block_scalars: false,
    };
    serde_saphyr::to_string_with_options(job, options)
        .map_err(|e| Error::Invalid(format!("writing the Job as YAML: {e}")))
}

/// The nick as a label value: `_` becomes `-` (so it can also name a container), at most 63
/// characters, ending with a letter or digit.
fn label_safe(nick: &str) -> String {
    let s: String = nick
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .take(63)
        .collect();
    s.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The container's name: the nick as a DNS label.
fn container_name(nick: &str) -> String {
    let s = label_safe(nick);
    if s.is_empty() { "main".into() } else { s }
}

fn invalid(flag: &str, value: &str, rule: &str) -> Error {
    Error::Invalid(format!("{flag} {value:?}: {rule}"))
}

/// An RFC 1123 label: lowercase letters, digits and `-`, starting and ending with a letter or
/// digit.
fn check_dns_label(flag: &str, v: &str, max: usize) -> Result<()> {
    let b = v.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(invalid(
            flag,
            v,
            &format!(
                "a name is 1 to {max} of lowercase letters, digits and '-', starting and ending \
                 with a letter or digit"
            ),
        ))
    }
}

/// An RFC 1123 subdomain: dot-separated labels, at most 253 characters.
fn check_dns_subdomain(flag: &str, v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|l| check_dns_label(flag, l, 63).is_ok());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            flag,
            v,
            "a name is lowercase letters, digits, '-' and '.', at most 253, starting and ending \
             with a letter or digit",
        ))
    }
}

/// An environment variable name as Kubernetes v1.26 accepts it: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn check_env_name(k: &str) -> Result<()> {
    let b = k.as_bytes();
    let ok = !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
        && k != "."
        && k != ".."
        && !k.starts_with("..");
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "--env",
            k,
            "a variable name is letters, digits, '_', '-' and '.', not starting with a digit",
        ))
    }
}

/// The name part of a label key, or a label value: at most 63 of letters, digits, `-`, `_`
/// and `.`, starting and ending with a letter or digit.
fn qualified_part(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn check_label_key(k: &str) -> Result<()> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if !qualified_part(name) || prefix.is_some_and(|p| check_dns_subdomain("", p).is_err()) {
        return Err(invalid(
            "--label",
            k,
            "a label key is [PREFIX/]NAME: NAME at most 63 of letters, digits, '-', '_' and '.', \
             starting and ending with a letter or digit; PREFIX a DNS subdomain",
        ));
    }
    Ok(())
}

fn check_label_value(k: &str, v: &str) -> Result<()> {
    if v.is_empty() || qualified_part(v) {
        Ok(())
    } else {
        Err(invalid(
            &format!("--label {k}="),
            v,
            "a label value is empty or at most 63 of letters, digits, '-', '_' and '.', \
             starting and ending with a letter or digit",
        ))
    }
}

fn check_resource_name(flag: &str, k: &str) -> Result<()> {
    // cpu, memory, ephemeral-storage, hugepages-2Mi, or a qualified extended resource
    // (nvidia.com/gpu).
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if qualified_part(name) && prefix.is_none_or(|p| check_dns_subdomain("", p).is_ok()) {
        Ok(())
    } else {
        Err(invalid(
            flag,
            k,
            "a resource is cpu, memory, ephemeral-storage or a qualified name (nvidia.com/gpu)",
        ))
    }
}

/// A Kubernetes quantity: a non-negative decimal number with an optional SI (`m`, `k`, `M`,
/// `G`, `T`, `P`, `E`, `n`, `u`), binary (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`) or exponent
/// (`e3`) suffix.
fn check_quantity(flag: &str, k: &str, v: &str) -> Result<()> {
    let number_end = v
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && *c == '+')))
        .map_or(v.len(), |(i, _)| i);
    let (number, suffix) = v.split_at(number_end);
    let digits = number.trim_start_matches('+');
    let number_ok = !digits.is_empty()
        && digits.matches('.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "n"
            | "u"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(invalid(
            &format!("{flag} {k}="),
            v,
            "a quantity is a number with an optional suffix: 500m, 2, 1.5, 256Mi, 1Gi, 1e3",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pinned() -> Pinned {
        Pinned {
            nick: "train_er".into(),
            version: 12,
            reference: "docker://127.0.0.1:5000/team/trainer@sha256:1111".into(),
            digest: "sha256:1111".into(),
            base_digest: "sha256:2222".into(),
        }
    }

    fn pod(job: &Job) -> &PodSpec {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn the_image_is_pinned_by_digest_never_a_tag() {
        let job = build_job(&pinned(), &JobOptions::default(), false).unwrap();
        assert_eq!(
            pod(&job).containers[0].image.as_deref(),
            Some("127.0.0.1:5000/team/trainer@sha256:1111")
        );
        // A reference that also names a tag runs the digest alone.
        let tagged = Pinned {
            reference: "docker://registry.example:443/a/b:v1@sha256:1111".into(),
            ..pinned()
        };
        assert_eq!(
            tagged.image().unwrap(),
            "registry.example:443/a/b@sha256:1111"
        );
        // Not pinned to its own digest, or not pinned at all: refused.
        for reference in [
            "docker://registry.example/a/b@sha256:9999",
            "docker://registry.example/a/b:v1",
        ] {
            let p = Pinned {
                reference: reference.into(),
                ..pinned()
            };
            let e = build_job(&p, &JobOptions::default(), false)
                .unwrap_err()
                .to_string();
            assert!(e.contains("is not pinned to its digest sha256:1111"), "{e}");
        }
        // A layout cannot be pulled by a cluster.
        let layout = Pinned {
            reference: "oci:/srv/images@sha256:1111".into(),
            ..pinned()
        };
        let e = build_job(&layout, &JobOptions::default(), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("kept in an OCI layout"), "{e}");
        assert!(e.contains("--to a registry repository"), "{e}");
    }

    #[test]
    fn labels_and_annotations_record_the_nick_version_and_digests() {
        let options = JobOptions {
            labels: BTreeMap::from([("team".into(), "ml".into())]),
            ..JobOptions::default()
        };
        let job = build_job(&pinned(), &options, false).unwrap();
        let template = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap();
        for meta in [&job.metadata, template] {
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels[keys::NICK], "train-er");
            assert_eq!(labels[keys::VERSION], "12");
            assert_eq!(labels[keys::MANAGED_BY], "ociup");
            assert_eq!(labels["team"], "ml");
            let a = meta.annotations.as_ref().unwrap();
            assert_eq!(a[keys::NICK], "train_er");
            assert_eq!(a[keys::VERSION], "12");
            assert_eq!(a[keys::DIGEST], "sha256:1111");
            assert_eq!(a[keys::BASE_DIGEST], "sha256:2222");
            assert_eq!(a[keys::IMAGE], pinned().reference);
            assert!(!a.contains_key(keys::HELD));
        }
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.suspend, None);
        assert_eq!(pod(&job).restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod(&job).containers[0].name, "train-er");
        assert_eq!(job.metadata.name, None);
        assert_eq!(job.metadata.generate_name.as_deref(), Some("train-er-v12-"));
        assert_eq!(job.metadata.namespace, None);
    }

    #[test]
    fn every_option_lands_where_kubernetes_reads_it() {
        let options = JobOptions {
            name: Some("nightly".into()),
            namespace: Some("ml".into()),
            args: vec!["--epochs".into(), "5".into()],
            env: vec![
                ("MODE".into(), "train".into()),
                ("A.B".into(), String::new()),
            ],
            service_account: Some("trainer".into()),
            image_pull_secrets: vec!["pull-1".into(), "pull-2".into()],
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(600),
            labels: BTreeMap::new(),
            requests: BTreeMap::from([("cpu".into(), "500m".into())]),
            limits: BTreeMap::from([
                ("memory".into(), "1Gi".into()),
                ("nvidia.com/gpu".into(), "1".into()),
            ]),
        };
        let job = build_job(&pinned(), &options, true).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("nightly"));
        assert_eq!(job.metadata.generate_name, None);
        assert_eq!(job.metadata.namespace.as_deref(), Some("ml"));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.suspend, Some(true));
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.ttl_seconds_after_finished, Some(600));
        assert!(job.metadata.annotations.as_ref().unwrap()[keys::HELD].contains("version 12"));
        assert_eq!(job.metadata.labels.as_ref().unwrap()[keys::HELD], "true");
        let template = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap();
        assert!(!template.labels.as_ref().unwrap().contains_key(keys::HELD));
        let p = pod(&job);
        assert_eq!(p.service_account_name.as_deref(), Some("trainer"));
        let secrets: Vec<_> = p
            .image_pull_secrets
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(secrets, ["pull-1", "pull-2"]);
        let c = &p.containers[0];
        assert_eq!(c.args.as_ref().unwrap(), &["--epochs", "5"]);
        assert_eq!(c.command, None, "the image's entrypoint stays");
        let env: Vec<_> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap()))
            .collect();
        assert_eq!(env, [("MODE", "train"), ("A.B", "")]);
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "500m");
        assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "1Gi");
        assert_eq!(r.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
    }

    #[test]
    fn yaml_reads_back_as_the_same_job() {
        // Values YAML would read as numbers or booleans ("12", "true") stay strings.
        let options = JobOptions {
            args: vec![
                "12".into(),
                "true".into(),
                "yes".into(),
                "null".into(),
                "a: b".into(),
                "two\nlines".into(),
            ],
            env: vec![("N".into(), "0x10".into())],
            labels: BTreeMap::from([("flag".into(), "true".into())]),
            ..JobOptions::default()
        };
        let job = build_job(&pinned(), &options, true).unwrap();
        let yaml = to_yaml(&job).unwrap();
        assert!(yaml.starts_with("apiVersion: batch/v1\n"), "{yaml}");
        assert!(yaml.contains("kind: Job"), "{yaml}");
        // The image on one line, as written.
        assert!(
            yaml.contains("  image: 127.0.0.1:5000/team/trainer@sha256:1111\n"),
            "{yaml}"
        );
        let back: Job = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, job, "{yaml}");
        let json: Job = serde_json::from_value(serde_json::to_value(&job).unwrap()).unwrap();
        assert_eq!(json, job);
    }

    #[test]
    fn a_default_name_fits_the_limit_for_a_long_nick() {
        let long = Pinned {
            nick: format!("a{}_", "b".repeat(62)),
            version: 123_456,
            ..pinned()
        };
        let job = build_job(&long, &JobOptions::default(), false).unwrap();
        let g = job.metadata.generate_name.unwrap();
        assert!(g.len() <= 58, "{g}");
        assert!(g.ends_with("b-v123456-"), "{g}");
        let label = &job.metadata.labels.unwrap()[keys::NICK];
        assert_eq!(label.len(), 63);
        assert!(label.ends_with('b'));
    }

    #[test]
    fn bad_options_are_refused_naming_the_flag() {
        let cases: Vec<(JobOptions, &str)> = vec![
            (
                JobOptions {
                    name: Some("Bad_Name".into()),
                    ..JobOptions::default()
                },
                "--name \"Bad_Name\"",
            ),
            (
                JobOptions {
                    name: Some("x".repeat(64)),
                    ..JobOptions::default()
                },
                "1 to 63",
            ),
            (
                JobOptions {
                    namespace: Some("a.b".into()),
                    ..JobOptions::default()
                },
                "--namespace",
            ),
            (
                JobOptions {
                    env: vec![("1X".into(), "v".into())],
                    ..JobOptions::default()
                },
                "--env \"1X\"",
            ),
            (
                JobOptions {
                    backoff_limit: Some(-1),
                    ..JobOptions::default()
                },
                "--backoff-limit -1",
            ),
            (
                JobOptions {
                    labels: BTreeMap::from([("a b".into(), "c".into())]),
                    ..JobOptions::default()
                },
                "--label \"a b\"",
            ),
            (
                JobOptions {
                    labels: BTreeMap::from([("team".into(), "-x".into())]),
                    ..JobOptions::default()
                },
                "--label team=",
            ),
            (
                JobOptions {
                    labels: BTreeMap::from([(keys::NICK.into(), "x".into())]),
                    ..JobOptions::default()
                },
                "ociup sets this label itself",
            ),
            (
                JobOptions {
                    requests: BTreeMap::from([("cpu".into(), "lots".into())]),
                    ..JobOptions::default()
                },
                "--request cpu=",
            ),
            (
                JobOptions {
                    limits: BTreeMap::from([("memory".into(), "1GB".into())]),
                    ..JobOptions::default()
                },
                "--limit memory=",
            ),
            (
                JobOptions {
                    image_pull_secrets: vec!["UPPER".into()],
                    ..JobOptions::default()
                },
                "--image-pull-secret",
            ),
        ];
        for (options, expected) in cases {
            let e = build_job(&pinned(), &options, false)
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{expected:?} not in {e:?}");
        }
        for q in ["1", "0.5", "500m", "1Gi", "1e3", "+2", "1.5E-2", "100Ki"] {
            check_quantity("--limit", "cpu", q).unwrap();
        }
        for q in ["", "-1", "1..2", "m", "1GB", "1e", "1 Gi"] {
            assert!(check_quantity("--limit", "cpu", q).is_err(), "{q:?}");
        }
    }
}

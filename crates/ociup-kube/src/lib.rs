//! Runs a managed image as a Kubernetes Job.
//!
//! A nick's request to run, on a cluster: [`build_job`] makes a `batch/v1` Job whose one
//! container runs the version pinned by digest (never a tag), with labels and annotations that
//! record the nick, the version and the base digest; [`Cluster`] creates, releases, deletes and
//! follows Jobs through the Kubernetes API (kubeconfig or in-cluster configuration, found as
//! kubectl finds them); [`Cluster::apply`] ties them to a resolve: when the base moved, the Job
//! is created suspended with the digest the regeneration will produce, released once the new
//! version is recorded, and deleted if the regeneration fails.
//!
//! `ociup-core` stays free of Kubernetes: this crate depends on it, not the other way round.
//!
//! ```
//! use ociup_kube::{JobOptions, Pinned, build_job, to_yaml};
//!
//! // What `resolve` answered (`Pinned::from(&resolution)`), written out here.
//! let pinned = Pinned {
//!     nick: "trainer".into(),
//!     version: 2,
//!     reference: "docker://registry.example/team/trainer@sha256:aaaa".into(),
//!     digest: "sha256:aaaa".into(),
//!     base_digest: "sha256:bbbb".into(),
//! };
//! let options = JobOptions {
//!     namespace: Some("ml".into()),
//!     requests: [("cpu".to_owned(), "500m".to_owned())].into(),
//!     ..JobOptions::default()
//! };
//! let yaml = to_yaml(&build_job(&pinned, &options, false)?)?;
//! assert!(yaml.contains("image: registry.example/team/trainer@sha256:aaaa"));
//! assert!(yaml.contains("namespace: ml"));
//! # Ok::<(), ociup_kube::Error>(())
//! ```
//!
//! The types of the Kubernetes API are `k8s-openapi`'s, the client `kube`'s; both are
//! re-exported, so a caller uses the same versions.

#![doc = ""]
#![doc = include_str!("../README.md")]

mod apply;
mod cluster;
mod error;
mod job;

pub use apply::{Applied, Marks, job_for};
pub use cluster::{
    Cluster, Condition, ConnectOptions, DEFAULT_REQUEST_TIMEOUT, Finished, conditions, finished,
};
pub use error::{Error, Lookup, Result};
pub use job::{JobOptions, Pinned, build_job, keys, to_yaml};
pub use {k8s_openapi, kube};

#![doc = include_str!("../README.md")]

mod apply;
pub mod cache;
pub mod error;
mod path;
pub mod runtime;
pub mod seccomp;
pub mod spec;
mod unpack;

pub use cache::{CacheEntry, LayerCache, PruneOptions, PruneReport, Snapshot, SnapshotReport};
pub use error::{Error, Result};
pub use runtime::{Exit, RuntimeOptions, run_bundle};
pub use spec::{BindMount, Network, Rootless, Seccomp, SpecOptions, runtime_spec};
pub use unpack::{Owners, UnpackOptions, UnpackReport, unpack};

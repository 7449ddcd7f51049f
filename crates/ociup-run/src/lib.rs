#![doc = include_str!("../README.md")]

mod apply;
pub mod cache;
pub mod error;
mod path;
pub mod runtime;
pub mod spec;
mod unpack;

pub use cache::{CacheEntry, LayerCache, PruneOptions, PruneReport, Snapshot, SnapshotReport};
pub use error::{Error, Result};
pub use runtime::{RuntimeOptions, run_bundle};
pub use spec::{BindMount, Network, Rootless, SpecOptions, runtime_spec};
pub use unpack::{Owners, UnpackOptions, UnpackReport, unpack};

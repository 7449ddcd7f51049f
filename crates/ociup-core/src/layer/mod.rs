//! Deterministic layer builds: files and trees from disk, in-memory files and removals (OCI
//! whiteouts) become one layer whose bytes depend only on the inputs and the options.

pub mod bounded;
mod builder;
pub mod gzip;
mod tar;

pub use builder::{Layer, LayerBuilder, LayerOptions, Owner};

//! Pure transforms: values in, values out, no I/O.

mod append;
mod index;
mod rebase;

pub use append::{Appended, Base, NewLayer, append};
pub use index::{
    IndexEntry, add_to_index, index_of, new_index, platform_name, platform_of_config,
    remove_from_index,
};
pub use rebase::{
    ConfigMode, FieldChange, OldBase, PlanLayer, RebaseInput, RebasePlan, Rebased, rebase,
};

/// Annotation keys ociup writes on every image it makes.
pub mod annotations {
    /// The reference of the base image (image-spec).
    pub const BASE_NAME: &str = "org.opencontainers.image.base.name";
    /// The manifest digest of the base image (image-spec).
    pub const BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
    /// How many of the image's layers belong to its base, so a rebase can work even when the old
    /// base is gone.
    pub const BASE_LAYERS: &str = "dev.ociup.base.layers";
    /// The diff_id of the base's top layer, to check [`BASE_LAYERS`] against.
    pub const BASE_TOP_DIFF_ID: &str = "dev.ociup.base.top-diff-id";
    /// How many of the image's history entries belong to its base.
    pub const BASE_HISTORY: &str = "dev.ociup.base.history";
    /// A tag in an OCI layout's `index.json` (image-spec).
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
}

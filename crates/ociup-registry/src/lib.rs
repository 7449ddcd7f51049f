#![doc = include_str!("../README.md")]

pub mod auth;
mod body;
mod client;
pub mod error;
mod known;
mod policy;
pub mod reference;
mod repository;
mod store_ref;

pub use auth::{Credential, Credentials};
pub use client::{Client, ClientOptions, RetryPolicy};
pub use error::{Error, Result};
/// The trait [`Opener`] implements for `ociup_core::managed::Manager`, re-exported so that
/// calling it needs no import from another crate (`Opener` also has the same methods inherent).
pub use ociup_core::managed::manager::Stores;
pub use reference::Reference;
pub use repository::Repository;
pub use store_ref::{AnyStore, Opener, StoreRef, absolute_reference};

/// The traits an embedder calls methods of: `use ociup_registry::prelude::*;` brings
/// [`Store`](ociup_core::store::Store) (blobs and manifests of a [`Repository`] or an
/// [`AnyStore`]) and [`Stores`] into scope.
pub mod prelude {
    pub use ociup_core::managed::manager::Stores;
    pub use ociup_core::store::Store;
}

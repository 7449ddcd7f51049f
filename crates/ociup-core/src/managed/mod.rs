//! Managed images: recipes, the catalog kept in the store, signed build manifests, and the
//! register / resolve flows over any stores.

pub mod build_manifest;
pub mod catalog;
pub mod gc;
pub mod layouts;
pub mod manager;
pub mod recipe;

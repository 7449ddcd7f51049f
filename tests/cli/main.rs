//! End-to-end tests of the `ociup` binary and the library under it, with the fixtures in
//! `fixtures/` and tools nobody here wrote (skopeo, umoci). One binary, a module per topic.

// A test binary: a panic with the failing value is the right outcome of an unexpected error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admission;
mod append;
mod bad_input;
mod conventions;
mod copy;
mod durable_copy;
mod faults;
mod fixtures;
mod hostile_layout;
mod integrity;
mod interop;
mod job;
mod keys;
mod layer;
mod login;
mod managed;
mod multi;
mod multi_managed;
mod rebase;
mod recipes;
mod registry;
#[path = "../../crates/ociup-registry/tests/support/mod.rs"]
mod registry_support;
mod run;
mod serve;
mod serve_replicas;
mod serve_tls;
mod support;
mod unpack;

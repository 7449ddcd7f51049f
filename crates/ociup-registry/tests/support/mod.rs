//! Test support: [`TestRegistry`] runs the real CNCF Distribution registry
//! (`docker-registry serve`) on a free port of 127.0.0.1, without auth, with htpasswd basic
//! auth, or with bearer tokens from an endpoint of the harness's own, over HTTP or HTTPS.
//!
//! Shared by several test binaries (`mod support;`), each using part of it.

#![allow(dead_code)]

mod pki;
mod registry;
mod token;

pub use registry::{AuthMode, RegistryOptions, TestRegistry};

//! Tests of the registry client: against the real CNCF Distribution server (started on a free
//! loopback port by the harness in `support/`), and against a fake server for hostile answers.

// A test binary: a panic with the failing value is the right outcome of an unexpected error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bounds;
mod fake;
mod hostile;
mod known;
mod probe;
mod registry;
mod resume_keep;
#[path = "../support/mod.rs"]
mod support;
mod upload_ahead;

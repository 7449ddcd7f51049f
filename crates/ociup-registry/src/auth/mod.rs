//! Authentication: credentials, `WWW-Authenticate` challenges, bearer tokens.

pub mod challenge;
mod credentials;
pub(crate) mod token;

pub use credentials::{Credential, Credentials};

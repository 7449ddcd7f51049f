//! Authentication: credentials, `WWW-Authenticate` challenges, bearer tokens, and saving logins.

pub mod challenge;
mod credentials;
pub mod login;
pub(crate) mod token;

pub use credentials::{Credential, Credentials, docker_config_path};

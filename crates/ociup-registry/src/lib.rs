#![doc = include_str!("../README.md")]

pub mod auth;
mod client;
pub mod error;
pub mod reference;
mod repository;
mod store_ref;

pub use auth::{Credential, Credentials};
pub use client::{Client, ClientOptions, RetryPolicy};
pub use error::{Error, Result};
pub use reference::Reference;
pub use repository::Repository;
pub use store_ref::{AnyStore, Opener, StoreRef};

#![doc = include_str!("../README.md")]

pub mod digest;
pub mod error;
pub mod layer;
pub mod media_type;

pub use digest::Digest;
pub use error::{Error, Result};
pub mod cache;
pub mod config;
pub mod copy;
pub mod document;
pub mod layout;
pub mod managed;
pub mod mutate;
pub mod ops;
pub mod reference;
pub mod store;
pub mod time;
pub mod verify;

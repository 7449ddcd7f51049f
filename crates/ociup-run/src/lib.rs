#![doc = include_str!("../README.md")]

mod apply;
pub mod error;
mod path;
mod unpack;

pub use error::{Error, Result};
pub use unpack::{Owners, UnpackOptions, UnpackReport, unpack};

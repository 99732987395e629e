//! tiergate: a deduplicating, compressing, encrypting backup gateway.
//!
//! Layout (dependencies point downwards; the core never imports a protocol crate):
//! - front-ends: [`fuse`] and [`webdav`] (with [`auth`]), thin adapters over [`volume`]
//! - core: [`volume`] (the filesystem), [`meta`] (its records in the metadata store)
//! - data path: [`chunker`] → [`crypto`] (keys, chunk ids) → [`blob`] (codec) → [`pack`] (files)
//! - storage: [`kv`] (the small key-value interface sled sits behind)
//! - tiering: [`backend`] (object stores: S3, local directory; the core does not use it yet)
//! - edges: [`config`], [`error`]

pub mod auth;
pub mod backend;
pub mod blob;
pub mod chunker;
pub mod config;
pub mod crypto;
pub mod error;
pub mod fuse;
pub mod kv;
pub mod meta;
pub mod pack;
pub mod volume;
pub mod webdav;

pub use error::{Error, Result};

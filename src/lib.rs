//! tiergate: a deduplicating, compressing, encrypting backup gateway.
//!
//! Layout (dependencies point downwards; the core never imports a protocol crate):
//! - front-ends: [`fuse`] and [`webdav`] (with [`auth`]), thin adapters over [`volume`]
//! - core: [`volume`] (the filesystem), [`meta`] (its records in the metadata store)
//! - data path: [`chunker`] → [`crypto`] (keys, chunk ids) → [`blob`] (codec) → [`pack`] (files)
//! - storage: [`kv`] (the small key-value interface sled sits behind), [`durable`] (fsync and
//!   atomic file replacement)
//! - tiering: [`tiering`] (uploader, evictor, fetcher; registered with the core as a
//!   [`volume::Tier`]) over [`backend`] (object stores: S3, local directory; their options in
//!   `backend::options`, every object name in `backend::layout`); [`control`] is the local
//!   socket `tiergate sync` talks to
//! - base, importing nothing above: [`events`] (the recent-events log the status page reads),
//!   [`clock`] (UTC dates), [`bytesize`], [`secret`], [`error`]
//! - edges: [`config`] (assembles the options each module owns), [`status`], [`web`]

pub mod auth;
pub mod backend;
pub mod blob;
pub mod bytesize;
pub mod chunker;
pub mod clock;
pub mod config;
pub mod control;
pub mod crypto;
pub mod durable;
pub mod error;
pub mod events;
pub mod fuse;
pub mod journal;
pub mod kv;
pub mod meta;
pub mod notify;
pub mod pack;
pub mod recover;
pub mod repair;
pub mod secret;
pub mod serve;
pub mod status;
pub mod tiering;
pub mod volume;
pub mod web;
pub mod webdav;
pub mod xmldepth;

pub use error::{Error, Result};

//! The integration suite: one test binary (fewer, faster builds) with a module per area.
//! Tests that mount need root (or fusermount3) and /dev/fuse; `scripts/test.sh` provides both.

mod appliance;
mod backend;
mod common;
mod core;
mod durability;
mod faults;
mod firstday_cli;
mod firstday_daemon;
mod firstday_recycle;
mod hostile_auth;
mod hostile_dav;
mod hostile_listeners;
mod hostile_quota;
mod hostile_recovery;
mod image;
mod mount;
mod objectlock;
mod posix_acl;
mod posix_data;
mod posix_dirs;
mod posix_handles;
mod recovery;
mod repair;
mod retention;
mod snapshots;
mod statuspage;
mod tiering;
mod web;
mod webdav;

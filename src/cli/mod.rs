//! The `tiergate` command's subcommands, by where they run: [`serve`] (the daemon), [`daemon`]
//! (ask the running daemon over its control socket), [`offline`] (open the volume or the
//! store directly, the daemon stopped or not needed). Shared helpers below.

pub mod daemon;
pub mod logging;
pub mod offline;
pub mod progress;
pub mod recycle;
pub mod serve;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use tiergate::config::Config;
use tiergate::volume::{Volume, VolumeOptions};

/// Where the appliance's config file is when neither `--config` nor `TIERGATE_CONFIG` says.
pub const DEFAULT_CONFIG: &str = "/etc/tiergate/tiergate.toml";
/// The environment variable naming the config file (below `--config`, above the default).
pub const CONFIG_ENV: &str = "TIERGATE_CONFIG";

/// Exit statuses, the same for every command (docs/OPERATIONS.md, "Exit statuses"). 0 is
/// success; a panic is 101 (Rust's), a closed output pipe ends the process by SIGPIPE.
pub mod exit {
    /// An error: the command could not do its job.
    pub const ERROR: i32 = 1;
    /// A usage error: unknown option, missing argument (clap's code, as every Unix tool's).
    pub const USAGE: i32 = 2;
    /// Done only in part: `key change` changed the local key file but not the store's copy.
    pub const PARTIAL: i32 = 3;
    /// The check ran to its end and found damage it could not repair (`verify`), or chunks
    /// in no pack (`index rebuild`): fsck's code for errors left uncorrected.
    pub const DAMAGE: i32 = 4;
    /// `sync --timeout` passed before everything was off-site (the code of timeout(1)).
    pub const TIMEOUT: i32 = 124;
}

/// `--config`, flattened into every command: the flag, else `TIERGATE_CONFIG`, else
/// [`DEFAULT_CONFIG`]. Derefs to the path to load, so a command reads `Config::load(&config)`.
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigArg {
    /// The appliance's config file [default: /etc/tiergate/tiergate.toml]
    #[arg(long, short, env = CONFIG_ENV, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// For `serve`: the config named, or the default one if it exists; None (the demo volume)
    /// when neither.
    pub fn for_serve(&self) -> Option<PathBuf> {
        match &self.config {
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        }
    }
}

impl Deref for ConfigArg {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.config
            .as_deref()
            .unwrap_or_else(|| Path::new(DEFAULT_CONFIG))
    }
}

pub fn volume_options(cfg: &Config) -> VolumeOptions {
    VolumeOptions {
        zstd_level: cfg.volume.zstd_level,
        pack_target_size: cfg.volume.pack_size_mib << 20,
        dirty_limit: cfg.volume.dirty_limit_mib << 20,
        metadata_cache_bytes: cfg.volume.metadata_cache_mib << 20,
    }
}

pub fn open(cfg: &Config) -> Result<Arc<Volume>> {
    let pass = cfg.passphrase()?;
    let vol = Volume::open(&cfg.volume.path, &pass.0, volume_options(cfg))
        .with_context(|| format!("opening volume {}", cfg.volume.path.display()))?;
    vol.set_quota(cfg.quota.limit.map(|l| l.bytes()));
    vol.set_quota_warn_percent(cfg.quota.warn_percent);
    vol.set_recycle_days(cfg.recycle.days);
    vol.set_snapshot_schedule(cfg.snapshots.interval_minutes, cfg.snapshots.keep());
    Ok(vol)
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Bytes in the largest binary unit that keeps the number at least 1: "512 B", "1.5 KiB",
/// "310.2 MiB", "2.0 TiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A duration for a person: "45s", "3m20s", "2h05m".
pub fn duration_text(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A Unix time as "2026-12-03 07:00:00Z".
pub fn utc_time(unix: u64) -> String {
    tiergate::clock::utc_date(unix).replacen('T', " ", 1)
}

/// The snapshot schedule in words (`[snapshots] interval_minutes`; 0: none).
pub fn schedule_text(every_minutes: u64) -> String {
    match every_minutes {
        0 => "no schedule".into(),
        m => format!("a scheduled one every {m} min"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_durations_read_as_a_person_would_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(310 << 20), "310.0 MiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
        assert_eq!(duration_text(Duration::from_secs(45)), "45s");
        assert_eq!(duration_text(Duration::from_secs(200)), "3m20s");
        assert_eq!(duration_text(Duration::from_secs(7500)), "2h05m");
    }
}

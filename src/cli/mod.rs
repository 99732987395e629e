//! The `tiergate` command's subcommands, by where they run: [`serve`] (the daemon), [`daemon`]
//! (ask the running daemon over its control socket), [`offline`] (open the volume or the
//! store directly, the daemon stopped or not needed). Shared helpers below.

pub mod daemon;
pub mod offline;
pub mod recycle;
pub mod serve;

use std::sync::Arc;

use anyhow::{Context, Result};

use tiergate::config::Config;
use tiergate::volume::{Volume, VolumeOptions};

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

/// A Unix time as "2026-12-03 07:00:00Z".
pub fn utc_time(unix: u64) -> String {
    tiergate::backend::utc_date(unix).replacen('T', " ", 1)
}

/// The snapshot schedule in words (`[snapshots] interval_minutes`; 0: none).
pub fn schedule_text(every_minutes: u64) -> String {
    match every_minutes {
        0 => "no schedule".into(),
        m => format!("a scheduled one every {m} min"),
    }
}

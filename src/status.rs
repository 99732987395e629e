//! The appliance's state in one document: what the status page shows, `GET /api/v1/status`
//! returns, `/metrics` exports and `tiergate status` prints. Schema: docs/STATUS.md.
//!
//! [`Reporter`] assembles it from the volume, tiering and front-end counters, and keeps a small
//! in-memory history (one sample every [`SAMPLE_EVERY`], [`HISTORY_LEN`] samples: 12 hours) of
//! upload and fetch rates and dirty bytes for the page's plots.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;

use crate::meta::{unix_now, unix_secs};
use crate::tiering::Tiering;
use crate::volume::{SnapshotStatus, Volume};

pub const SCHEMA_VERSION: u32 = 1;
pub const SAMPLE_EVERY: Duration = Duration::from_secs(30);
pub const HISTORY_LEN: usize = 1440;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub schema: u32,
    pub version: &'static str,
    pub uptime_s: u64,
    pub now_unix: u64,
    pub volume: VolumeInfo,
    pub offsite: Offsite,
    pub cache: Cache,
    pub upload: Upload,
    pub fetch: Fetch,
    pub space: Space,
    pub store: Store,
    pub frontends: Frontends,
    pub gc: Gc,
    /// Read-only snapshots of the volume (src/volume/snapshot.rs, docs/RETENTION.md#snapshots).
    pub snapshots: SnapshotStatus,
    /// Settings in force that do not come from the config file (changed through the
    /// management API and saved in managed.json): each with the config file's value.
    pub overrides: Vec<Override>,
}

/// A setting whose value in force is not the config file's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Override {
    /// The status field it shows in, e.g. `upload.limit_bps`, `cache.max_bytes`,
    /// `space.quota_bytes`.
    pub field: &'static str,
    /// The value in force and the config file's, in words ("20 MiB/s", "unlimited").
    pub value: String,
    pub config_value: String,
    /// Where the value in force comes from, e.g. "management API (/var/lib/.../managed.json)".
    pub source: String,
}

/// Where the store is, seen from this machine.
#[derive(Debug, Clone, Copy)]
struct StoreLocation {
    offsite: bool,
    same_disk: bool,
}

impl StoreLocation {
    fn of(tiering: &Tiering, volume_dir: &std::path::Path) -> StoreLocation {
        use std::os::unix::fs::MetadataExt;
        match tiering.store_local_dir() {
            None => StoreLocation {
                offsite: true,
                same_disk: false,
            },
            Some(dir) => {
                let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev()).ok();
                // The directory may not exist yet (made by the first upload): its parent's.
                let store_dev = dev(&dir).or_else(|| dir.parent().and_then(dev));
                StoreLocation {
                    offsite: false,
                    same_disk: store_dev.is_some() && store_dev == dev(volume_dir),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub id: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Offsite {
    /// Newest metadata journal position that is off-site and recoverable; 0: none yet.
    pub consistency_point: u64,
    /// Newest journal position (changes made so far).
    pub journal_position: u64,
    /// Changes not yet off-site.
    pub pending_changes: u64,
    /// When the consistency point last advanced (Unix seconds; 0: never).
    pub consistency_point_unix: u64,
    /// How long the oldest change not yet off-site has been waiting; 0 when all is off-site.
    pub oldest_pending_s: u64,
    /// Whether the bucket can rebuild this volume (a checkpoint is off-site).
    pub recoverable: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cache {
    pub max_bytes: u64,
    pub used_bytes: u64,
    pub used_percent: f64,
    /// Local data not yet off-site (queued packs, the open pack, data in memory).
    pub dirty_bytes: u64,
    /// `dirty_bytes` as a percentage of `max_bytes` (like AWS Storage Gateway's
    /// CachePercentDirty).
    pub dirty_percent: f64,
    pub evicted_bytes: u64,
    /// Writes that waited for uploads because the cache was full of data not yet off-site.
    pub throttled_writes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Upload {
    pub queued_bytes: u64,
    pub queued_packs: u64,
    pub uploading_packs: u64,
    pub uploaded_bytes: u64,
    pub uploaded_packs: u64,
    pub put_requests: u64,
    pub failures: u64,
    /// Bytes per second over the last sample interval, and since the daemon started.
    pub rate_bps: f64,
    pub average_rate_bps: f64,
    /// The bandwidth limit in force now (bytes per second); null: unlimited.
    pub limit_bps: Option<u64>,
    pub metadata_bytes: u64,
    pub metadata_segments: u64,
    pub checkpoints: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fetch {
    pub fetched_bytes: u64,
    pub get_requests: u64,
    pub rate_bps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Space {
    /// File data as users see it.
    pub logical_bytes: u64,
    /// Distinct chunks before compression.
    pub unique_bytes: u64,
    /// Distinct chunks as stored (compressed, encrypted).
    pub stored_bytes: u64,
    /// logical / unique, and unique / stored (1.0 when empty).
    pub dedup_ratio: f64,
    pub compression_ratio: f64,
    pub metadata_bytes: u64,
    /// The tenant's quota, when one is set (config or management API); enforced on writes.
    pub quota_bytes: Option<u64>,
    /// What counts against it: stored bytes (the recycle bin's included) plus written data
    /// not yet committed.
    pub quota_used_bytes: Option<u64>,
    pub quota_used_percent: Option<f64>,
    /// The soft threshold, in percent of the quota, and whether usage has reached it.
    pub quota_warn_percent: u8,
    pub quota_warning: bool,
    /// The recycle bin: files deleted within `[recycle] days`, their sizes, and the stored
    /// bytes only they hold (part of `quota_used_bytes`; purged oldest first when a write
    /// needs the room).
    pub recycle_files: u64,
    pub recycle_logical_bytes: u64,
    pub recycle_stored_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Store {
    pub description: String,
    /// Whether the store is away from this machine (an object store). False for a directory
    /// of this machine: uploads then copy data to it, but nothing is off-site.
    pub offsite: bool,
    /// The store is a directory on the same file system as the volume (the demo's default):
    /// losing the disk loses both.
    pub same_disk: bool,
    /// No upload error since the last success.
    pub healthy: bool,
    pub last_error: Option<String>,
    pub last_error_unix: Option<u64>,
    /// Another appliance holds the volume's lease: nothing is uploaded.
    pub lease_held_by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Frontends {
    pub open_handles: u64,
    pub webdav_requests: u64,
}

/// The last garbage collection pass since the daemon started (docs/RETENTION.md).
#[derive(Debug, Clone, Serialize)]
pub struct Gc {
    pub last_run_unix: Option<u64>,
    pub last_seconds: Option<f64>,
    /// What that pass dropped, rewrote and deleted off-site.
    pub last_bytes_dropped: u64,
    pub last_bytes_rewritten: u64,
    pub last_objects_deleted: u64,
    /// Dropped packs whose objects still wait in the store (grace period, metadata, checkpoint,
    /// Object Lock retention).
    pub packs_waiting: u64,
    /// Of those, the ones under Object Lock retention, and the earliest date one can go.
    pub packs_waiting_retention: u64,
    pub retention_until_unix: Option<u64>,
    /// Dead bytes left in packs kept (below the rewrite threshold's trigger).
    pub garbage_bytes: u64,
}

/// One point of the history.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub t_unix: u64,
    pub upload_bps: f64,
    pub fetch_bps: f64,
    pub dirty_bytes: u64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if a == 0 || b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

pub struct Reporter {
    vol: Arc<Volume>,
    tiering: Arc<Tiering>,
    started: Instant,
    history: Mutex<VecDeque<Sample>>,
    /// (when, uploaded bytes, fetched bytes) at the previous sample.
    last: Mutex<(Instant, u64, u64)>,
    location: StoreLocation,
    overrides: Mutex<Vec<Override>>,
}

impl Reporter {
    pub fn new(vol: Arc<Volume>, tiering: Arc<Tiering>) -> Arc<Reporter> {
        Arc::new(Reporter {
            started: Instant::now(),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_LEN)),
            last: Mutex::new((Instant::now(), 0, 0)),
            location: StoreLocation::of(&tiering, vol.dir()),
            vol,
            tiering,
            overrides: Mutex::new(Vec::new()),
        })
    }

    /// The settings in force that do not come from the config file (see [`Override`]).
    pub fn set_overrides(&self, overrides: Vec<Override>) {
        *self.overrides.lock() = overrides;
    }

    pub fn status(&self) -> Status {
        let t = self.tiering.status();
        let vs = self.vol.stats().ok();
        let quota = self.vol.quota();
        let quota_used = self.vol.quota_used();
        let quota_percent = quota.map(|q| quota_used as f64 * 100.0 / q as f64);
        let warn = self.vol.quota_warn_percent();
        let recycle = self.vol.recycle_stats();
        let st = vs.as_ref().map(|s| s.stats).unwrap_or_default();
        let j = self.vol.journal();
        let dirty = t.queued_bytes + self.vol.uncommitted_bytes();
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                a as f64 * 100.0 / b as f64
            }
        };
        let uptime = self.started.elapsed();
        let (rate_up, rate_fetch) = self
            .history
            .lock()
            .back()
            .map_or((0.0, 0.0), |s| (s.upload_bps, s.fetch_bps));
        let now = SystemTime::now();
        Status {
            schema: SCHEMA_VERSION,
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: uptime.as_secs(),
            now_unix: unix_secs(now),
            volume: VolumeInfo {
                id: self.vol.info().volume_id.clone(),
                path: self.vol.dir().display().to_string(),
            },
            offsite: Offsite {
                consistency_point: t.consistency_point,
                journal_position: t.journal_position,
                pending_changes: t.journal_position.saturating_sub(t.consistency_point),
                consistency_point_unix: j.consistency_point_time().unwrap_or(0),
                oldest_pending_s: j
                    .oldest_unshipped()
                    .and_then(|o| now.duration_since(o).ok())
                    .map_or(0, |d| d.as_secs()),
                recoverable: t.recoverable,
            },
            cache: Cache {
                max_bytes: t.cache_max,
                used_bytes: t.cache_used,
                used_percent: pct(t.cache_used, t.cache_max),
                dirty_bytes: dirty,
                dirty_percent: pct(dirty, t.cache_max),
                evicted_bytes: t.evicted_bytes,
                throttled_writes: t.throttled_writes,
            },
            upload: Upload {
                queued_bytes: t.queued_bytes,
                queued_packs: t.queued_packs,
                uploading_packs: t.uploading_packs,
                uploaded_bytes: t.uploaded_bytes,
                uploaded_packs: t.uploaded_packs,
                put_requests: t.put_requests,
                failures: t.upload_failures,
                rate_bps: rate_up,
                average_rate_bps: t.uploaded_bytes as f64 / uptime.as_secs_f64().max(1.0),
                limit_bps: t.bandwidth_limit,
                metadata_bytes: t.meta_bytes,
                metadata_segments: t.meta_segments,
                checkpoints: t.checkpoints,
            },
            fetch: Fetch {
                fetched_bytes: t.fetched_bytes,
                get_requests: t.get_requests,
                rate_bps: rate_fetch,
            },
            space: Space {
                logical_bytes: st.logical_bytes,
                unique_bytes: st.unique_bytes,
                stored_bytes: st.stored_bytes,
                dedup_ratio: ratio(st.logical_bytes, st.unique_bytes),
                compression_ratio: ratio(st.unique_bytes, st.stored_bytes),
                metadata_bytes: vs.as_ref().map_or(0, |s| s.metadata_bytes),
                quota_bytes: quota,
                quota_used_bytes: quota.map(|_| quota_used),
                quota_used_percent: quota_percent,
                quota_warn_percent: warn,
                quota_warning: quota_percent.is_some_and(|p| p >= warn as f64),
                recycle_files: recycle.files,
                recycle_logical_bytes: recycle.logical_bytes,
                recycle_stored_bytes: recycle.stored_bytes,
            },
            store: Store {
                description: t.store.clone(),
                offsite: self.location.offsite,
                same_disk: self.location.same_disk,
                healthy: t.last_error.is_none() && t.fenced_by.is_none(),
                last_error: t.last_error.as_ref().map(|(_, m)| m.clone()),
                last_error_unix: t.last_error.as_ref().map(|(at, _)| unix_secs(*at)),
                lease_held_by: t.fenced_by.clone(),
            },
            frontends: Frontends {
                open_handles: self.vol.open_handles() as u64,
                webdav_requests: crate::webdav::REQUESTS.load(Ordering::Relaxed),
            },
            gc: {
                let g = self.tiering.gc_last();
                Gc {
                    last_run_unix: g.as_ref().map(|g| g.finished_unix),
                    last_seconds: g.as_ref().map(|g| g.seconds),
                    last_bytes_dropped: g.as_ref().map_or(0, |g| g.core.bytes_dropped),
                    last_bytes_rewritten: g.as_ref().map_or(0, |g| g.core.bytes_rewritten),
                    last_objects_deleted: g.as_ref().map_or(0, |g| g.objects_deleted),
                    packs_waiting: g.as_ref().map_or(0, |g| g.waiting()),
                    packs_waiting_retention: g.as_ref().map_or(0, |g| g.waiting_retention),
                    retention_until_unix: g.as_ref().and_then(|g| g.retention_until_unix),
                    garbage_bytes: g.as_ref().map_or(0, |g| g.core.garbage_left_bytes),
                }
            },
            snapshots: self.vol.snapshot_status(),
            overrides: self.overrides.lock().clone(),
        }
    }

    /// Takes one history sample (the daemon calls this every [`SAMPLE_EVERY`]).
    pub fn sample(&self) {
        let t = self.tiering.status();
        let now = Instant::now();
        let mut last = self.last.lock();
        let secs = now.duration_since(last.0).as_secs_f64().max(0.001);
        let s = Sample {
            t_unix: unix_now(),
            upload_bps: t.uploaded_bytes.saturating_sub(last.1) as f64 / secs,
            fetch_bps: t.fetched_bytes.saturating_sub(last.2) as f64 / secs,
            dirty_bytes: t.queued_bytes + self.vol.uncommitted_bytes(),
        };
        *last = (now, t.uploaded_bytes, t.fetched_bytes);
        let mut h = self.history.lock();
        if h.len() == HISTORY_LEN {
            h.pop_front();
        }
        h.push_back(s);
    }

    pub fn history(&self) -> Vec<Sample> {
        self.history.lock().iter().copied().collect()
    }

    pub fn tiering(&self) -> &Arc<Tiering> {
        &self.tiering
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.vol
    }
}

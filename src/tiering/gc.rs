//! Garbage collection, the off-site half: runs the core's pass (src/volume/gc.rs), then deletes
//! the objects of dropped packs once nothing can need them, and reports what it did.
//!
//! A dropped pack's object is deleted only when all of these hold (docs/RETENTION.md):
//! - the metadata journal through the last change that could name the pack is off-site (the
//!   consistency point has passed it), so a recovery to the consistency point never names it;
//! - the newest off-site checkpoint was taken after that change too, so not even the
//!   checkpoint alone names it (one is asked for when that is all that is missing);
//! - the grace period since it was dropped has passed (a recovery that started from older
//!   metadata meanwhile still finds it);
//! - the lease is ours;
//! - with S3 Object Lock, its retention has ended: the object is HEADed before every delete
//!   (the retain-until date is the store's, so a period changed in the config since the upload,
//!   or a governance retention an admin shortened or extended, is honoured), and a pack still
//!   under retention waits, reported with the earliest date one can go. The delete then removes
//!   every version by version id ([`crate::backend::Backend::delete`]).
//!
//! Then its record goes. A crash between the delete and the record's removal repeats the
//! delete, which the store accepts for a missing object. The same pass also deletes metadata
//! objects the newest checkpoint made unnecessary whose retention has ended since the shipper
//! last tried ([`Tiering::prune_meta`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::{metasync, run_blocking, Tiering};
use crate::backend::{layout, ErrorKind};
use crate::error::Result;
use crate::meta::{unix_now, unix_secs, PackState};
use crate::volume::{CorePass, GcPolicy};

/// The knobs of GC (from `[gc]`).
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Between background passes; None: only on demand.
    pub interval: Option<Duration>,
    pub min_live_percent: u8,
    pub max_unused_percent: u8,
    pub grace: Duration,
    /// Bytes per second read and rewritten while repacking.
    pub max_rate: u64,
}

/// What one pass did (`tiergate gc`, the status page).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// When it finished (Unix seconds).
    pub finished_unix: u64,
    pub seconds: f64,
    /// Files whose time in the recycle bin was up, deleted for good by this pass.
    pub recycled_purged: u64,
    pub recycled_purged_bytes: u64,
    #[serde(flatten)]
    pub core: CorePass,
    /// Objects of dropped packs deleted from the store, and their bytes.
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    /// Requests this pass sent to the store: deletes, and reads of evicted data it rewrote.
    pub delete_requests: u64,
    pub get_requests: u64,
    /// Dropped packs whose objects wait, and what for.
    pub waiting_grace: u64,
    pub waiting_metadata: u64,
    pub waiting_checkpoint: u64,
    /// Dropped packs whose objects are otherwise due but still under S3 Object Lock retention,
    /// and the earliest retain-until date among them (Unix seconds): "retention until ...".
    pub waiting_retention: u64,
    pub retention_until_unix: Option<u64>,
    /// Unneeded metadata objects (old segments and checkpoints) deleted by this pass, and those
    /// still under retention.
    pub meta_objects_deleted: u64,
    pub meta_waiting_retention: u64,
    /// Why the off-site part did not run, if it did not (store unreachable, lease).
    pub offsite_skipped: Option<String>,
}

impl GcReport {
    /// Dropped packs still in the store, whatever they wait for.
    pub fn waiting(&self) -> u64 {
        self.waiting_grace
            + self.waiting_metadata
            + self.waiting_checkpoint
            + self.waiting_retention
    }

    /// A retain-until date met while deciding: counts the pack and keeps the earliest date.
    fn retained(&mut self, until: Option<u64>) {
        self.waiting_retention += 1;
        if let Some(u) = until {
            self.retention_until_unix = Some(self.retention_until_unix.map_or(u, |e| e.min(u)));
        }
    }
}

impl GcOptions {
    pub fn from_config(cfg: &crate::config::Config) -> GcOptions {
        let g = &cfg.gc;
        GcOptions {
            interval: (g.interval_minutes > 0)
                .then(|| Duration::from_secs(g.interval_minutes * 60)),
            min_live_percent: g.min_live_percent,
            max_unused_percent: g.max_unused_percent,
            grace: Duration::from_secs(g.grace_minutes * 60),
            max_rate: g.max_rate.bytes(),
        }
    }
}

impl Tiering {
    /// One GC pass, start to end. Blocking: call from a blocking context. Passes never overlap.
    pub fn gc(self: &Arc<Self>) -> Result<GcReport> {
        let _one = self.gc_running.lock();
        let started = Instant::now();
        let gets_before = self.fetcher.counters.get_requests.load(Ordering::Relaxed);
        let opts = &self.opts.gc;
        let policy = GcPolicy {
            min_live_percent: opts.min_live_percent,
            max_unused_percent: opts.max_unused_percent,
            // One pass rewrites what the rate allows in about ten minutes.
            max_rewrite_bytes: opts.max_rate.saturating_mul(600),
        };
        let rate = opts.max_rate.max(1) as f64;
        // Expired recycled files first: their data becomes garbage in this same pass.
        let (recycled_purged, recycled_purged_bytes) = self.vol.recycle_expire()?;
        let mut paced = 0u64;
        let core = self.vol.gc_collect(&policy, |bytes| {
            paced += bytes;
            let due = Duration::from_secs_f64(paced as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        })?;
        let mut rep = GcReport {
            core,
            recycled_purged,
            recycled_purged_bytes,
            ..GcReport::default()
        };
        if let Err(e) = self.gc_offsite(&mut rep) {
            rep.offsite_skipped = Some(e.to_string());
        }
        rep.get_requests = self.fetcher.counters.get_requests.load(Ordering::Relaxed) - gets_before;
        rep.seconds = started.elapsed().as_secs_f64();
        rep.finished_unix = unix_now();
        let c = &rep.core;
        if c.packs_dropped + rep.objects_deleted > 0 || c.packs_rewritten > 0 {
            let msg = format!(
                "gc: {} packs dropped ({} bytes, {} freed locally), {} rewritten ({} bytes \
                 copied), {} objects deleted off-site ({} bytes), {} waiting",
                c.packs_dropped,
                c.bytes_dropped,
                c.local_bytes_freed,
                c.packs_rewritten,
                c.bytes_rewritten,
                rep.objects_deleted,
                rep.bytes_deleted,
                rep.waiting()
            );
            let msg = match rep.retention_until_unix {
                Some(t) => format!(
                    "{msg} ({} under Object Lock retention, the first until {})",
                    rep.waiting_retention,
                    crate::clock::utc_date(t)
                ),
                None => msg,
            };
            tracing::info!("{msg}");
            crate::events::record("info", msg);
        }
        *self.gc_last.lock() = Some(rep.clone());
        let _t = self.table.lock();
        self.progress.notify_all();
        Ok(rep)
    }

    /// Deletes the objects of dropped packs that nothing can need any more.
    fn gc_offsite(self: &Arc<Self>, rep: &mut GcReport) -> Result<()> {
        let grace = self.opts.gc.grace.as_secs();
        let shipped = self.consistency_point()?;
        let checkpoint_start = if self.has_checkpoint()? {
            metasync::local_u64(self, metasync::CKPT_START)?
        } else {
            0
        };
        let now = unix_now();
        let mut ready = Vec::new();
        for (id, r) in self.vol.pack_table()? {
            let PackState::Doomed {
                after_seq,
                since_unix,
            } = r.state
            else {
                continue;
            };
            if now.saturating_sub(since_unix) < grace {
                rep.waiting_grace += 1;
            } else if shipped < after_seq {
                rep.waiting_metadata += 1;
            } else if checkpoint_start < after_seq {
                rep.waiting_checkpoint += 1;
            } else {
                ready.push((id, r.size));
            }
        }
        if rep.waiting_metadata > 0 {
            self.wake_meta.notify_one();
        }
        if rep.waiting_checkpoint > 0 {
            self.checkpoint_wanted.store(true, Ordering::SeqCst);
            self.wake_meta.notify_one();
        }
        if self.backend.retention().is_some() {
            // Metadata objects left under retention by the shipper. A failure here is logged
            // and does not keep the packs below from going.
            let me = self.clone();
            let pruned = run_blocking(&self.handle, async move {
                if !me.lease_still_ours().await? {
                    return Ok(None);
                }
                me.prune_meta().await.map(Some)
            })?;
            match pruned {
                Ok(Some(p)) => {
                    rep.meta_objects_deleted = p.deleted;
                    rep.meta_waiting_retention = p.retained;
                    rep.delete_requests += p.deleted;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("gc: deleting unneeded metadata objects: {e}"),
            }
        }
        if ready.is_empty() {
            return Ok(());
        }
        let locked = self.backend.retention().is_some();
        for (id, size) in ready {
            let me = self.clone();
            let outcome = run_blocking(&self.handle, async move {
                // Checked before every delete, like before every upload.
                if !me.lease_still_ours().await? {
                    return Err(crate::error::Error::Invalid(
                        "another appliance holds this volume's lease".into(),
                    ));
                }
                let key = layout::pack_key(id);
                if locked {
                    match me.backend.head(&key).await {
                        Ok(info) => {
                            if let Some(until) = info.retain_until {
                                if until > SystemTime::now() {
                                    return Ok(Deleted::Retained(Some(unix_secs(until))));
                                }
                            }
                        }
                        // The current version is gone; older ones may remain behind a delete
                        // marker, and the delete below removes them.
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                match me.backend.delete(&key).await {
                    Ok(()) => Ok(Deleted::Yes),
                    // An older version locked longer than the current one (a pack uploaded
                    // twice): it waits like the others.
                    Err(e) if e.kind() == ErrorKind::Retained => Ok(Deleted::Retained(None)),
                    Err(e) => Err(e.into()),
                }
            })?;
            match outcome? {
                Deleted::Yes => rep.delete_requests += 1,
                Deleted::Retained(until) => {
                    rep.retained(until);
                    continue;
                }
            }
            self.vol.forget_pack(id)?;
            rep.objects_deleted += 1;
            rep.bytes_deleted += size;
            tracing::debug!(pack = id, size, "gc: pack object deleted off-site");
        }
        Ok(())
    }

    /// The last pass's report, if one ran since the daemon started.
    pub fn gc_last(&self) -> Option<GcReport> {
        self.gc_last.lock().clone()
    }

    pub(super) async fn gc_loop(self: Arc<Self>) {
        let Some(every) = self.opts.gc.interval else {
            return;
        };
        while !self.stopping.load(Ordering::SeqCst) {
            tokio::time::sleep(every).await;
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.gc()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!("gc pass failed: {e}"),
                Err(e) => tracing::error!("gc task: {e}"),
            }
        }
    }
}

/// What became of one dropped pack's object.
enum Deleted {
    Yes,
    /// Still under retention, until then if the store said.
    Retained(Option<u64>),
}

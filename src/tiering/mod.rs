//! Tiering: ships sealed packs to the object store, keeps the local cache under its limit,
//! and fetches evicted data back.
//!
//! - **Uploader.** The pack table in the metadata store is the upload queue: a *sealed* pack
//!   waits for upload, an *uploaded* one is off-site and still cached, a *remote* one is
//!   off-site only. Up to `tiering.upload_concurrency` packs go up at once, each paced by the
//!   bandwidth limiter ([`rate`]), each marked uploaded only after the store confirmed the
//!   exact bytes (the backend verifies checksum, size and ETag). Failures back off
//!   exponentially (1 s → 60 s, jittered) and are retried for ever: the queue survives
//!   restarts and outages.
//! - **Evictor.** Cache usage = whole local packs + the fetch cache. Above the high watermark
//!   of `cache.max_size` it drops least-recently-used *uploaded* packs and fetched ranges until
//!   usage is under the low watermark. Data not yet off-site is never dropped.
//! - **Backpressure.** Writers wait (see [`Tier::admit_write`]) while the data waiting for
//!   upload is at the high watermark; they resume as uploads complete. They never fail for it.
//! - **Fetcher** ([`fetch`]): reads of evicted packs.
//! - **Sync** ([`Tiering::sync`]): everything committed before the call is off-site.

pub mod fetch;
pub mod gc;
pub mod metasync;
pub mod rate;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};

use crate::backend::{layout, Backend};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::meta::PackState;
use crate::pack::BlobLocation;
use crate::volume::{Tier, Volume};
use fetch::Fetcher;
use rate::{RateLimiter, Schedule};

/// Directory of the fetch cache inside the volume directory.
pub const FETCH_CACHE_DIR: &str = "cache";
/// Longest pause between upload retries after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The uploader re-reads the pack table this often, in case a seal notice was missed.
const RESCAN: Duration = Duration::from_secs(30);

static LRU_CLOCK: AtomicU64 = AtomicU64::new(1);

/// A logical time for least-recently-used ordering (shared by packs and the fetch cache).
pub(crate) fn lru_tick() -> u64 {
    LRU_CLOCK.fetch_add(1, Ordering::Relaxed)
}

/// Runs `fut` on `rt` and waits for it from a thread that is not one of `rt`'s workers
/// (FUSE workers, blocking pools). Never call it from inside `rt`.
pub(crate) fn run_blocking<F>(rt: &tokio::runtime::Handle, fut: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| Error::Remote("tiering is shutting down".into()))
}

/// Limits and knobs, from `[cache]` and `[tiering]`.
#[derive(Clone, Debug)]
pub struct TieringOptions {
    pub cache_max: u64,
    /// Eviction starts above this many bytes; writers wait while this much awaits upload.
    pub high_watermark: u64,
    /// Eviction stops below this.
    pub low_watermark: u64,
    pub upload_concurrency: usize,
    pub readahead: u64,
    pub schedule: Schedule,
    /// The volume's pack size: the open pack may hold this much not yet counted as queued.
    pub pack_size: u64,
    pub gc: gc::GcOptions,
}

impl TieringOptions {
    pub fn from_config(cfg: &Config) -> Result<TieringOptions> {
        let max = cfg.cache.max_size.bytes();
        let limit = cfg.tiering.bandwidth_limit.map(|b| b.bytes());
        Ok(TieringOptions {
            cache_max: max,
            high_watermark: max / 100 * cfg.cache.high_watermark_percent as u64,
            low_watermark: max / 100 * cfg.cache.low_watermark_percent as u64,
            upload_concurrency: cfg.tiering.upload_concurrency,
            readahead: cfg.tiering.readahead.bytes(),
            schedule: Schedule::new(limit, &cfg.tiering.schedule)?,
            pack_size: cfg.volume.pack_size_mib << 20,
            gc: gc::GcOptions::from_config(cfg),
        })
    }
}

/// What the tiering machinery knows of one pack.
#[derive(Clone, Copy, Debug)]
struct PackInfo {
    state: PackState,
    size: u64,
    last_used: u64,
}

#[derive(Default)]
struct Table {
    packs: BTreeMap<u64, PackInfo>,
    uploading: HashSet<u64>,
    /// Bytes of sealed packs (waiting for upload).
    queued: u64,
    /// Bytes of uploaded packs still whole in the local cache.
    cached_whole: u64,
}

impl Table {
    fn set(&mut self, id: u64, info: PackInfo) {
        if let Some(old) = self.packs.insert(id, info) {
            self.account(&old, false);
        }
        self.account(&info, true);
    }

    fn account(&mut self, p: &PackInfo, add: bool) {
        let slot = match p.state {
            PackState::Sealed => &mut self.queued,
            PackState::Uploaded => &mut self.cached_whole,
            PackState::Open | PackState::Remote | PackState::Doomed { .. } => return,
        };
        if add {
            *slot += p.size;
        } else {
            *slot -= p.size;
        }
    }

    fn change_state(&mut self, id: u64, state: PackState) {
        if let Some(p) = self.packs.get(&id).copied() {
            self.set(id, PackInfo { state, ..p });
        }
    }
}

/// Counters for status, metrics and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub uploaded_packs: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    /// PUT-type requests sent for packs (a multipart upload counts create + parts + complete).
    pub put_requests: AtomicU64,
    pub upload_failures: AtomicU64,
    pub evicted_packs: AtomicU64,
    pub evicted_bytes: AtomicU64,
    /// Writes that had to wait for uploads (backpressure).
    pub throttled_writes: AtomicU64,
    /// Journal segments shipped, and metadata bytes (segments + checkpoints) uploaded.
    pub meta_segments: AtomicU64,
    pub meta_bytes: AtomicU64,
    pub checkpoints: AtomicU64,
}

/// A snapshot of the tiering state.
#[derive(Clone, Debug)]
pub struct TieringStatus {
    pub store: String,
    pub cache_max: u64,
    pub cache_used: u64,
    /// Bytes waiting for upload (sealed packs plus the open pack).
    pub queued_bytes: u64,
    pub queued_packs: u64,
    pub uploading_packs: u64,
    pub uploaded_packs: u64,
    pub uploaded_bytes: u64,
    pub put_requests: u64,
    pub upload_failures: u64,
    pub evicted_bytes: u64,
    pub fetched_bytes: u64,
    pub get_requests: u64,
    pub throttled_writes: u64,
    pub bandwidth_limit: Option<u64>,
    /// The newest metadata journal position that is off-site and recoverable (0: none yet),
    /// and the newest position there is.
    pub consistency_point: u64,
    pub journal_position: u64,
    pub meta_segments: u64,
    pub meta_bytes: u64,
    pub checkpoints: u64,
    /// Another appliance holds the volume's lease: nothing is uploaded.
    pub fenced_by: Option<String>,
    /// A checkpoint is off-site: the bucket can rebuild this volume.
    pub recoverable: bool,
    /// The last upload error and when it happened (cleared by the next success).
    pub last_error: Option<(SystemTime, String)>,
}

/// What a [`Tiering::sync`] did.
#[derive(Clone, Debug)]
pub struct SyncReport {
    /// Everything committed before the call is off-site.
    pub complete: bool,
    pub packs: u64,
    pub bytes: u64,
    /// Packs of this sync still waiting when it gave up.
    pub pending_packs: u64,
    /// The metadata journal had not reached the sync's position off-site yet.
    pub metadata_pending: bool,
    /// The consistency point when the sync returned.
    pub consistency_point: u64,
    pub elapsed: Duration,
    pub last_error: Option<String>,
    /// The daemon began shutting down before the sync finished.
    pub interrupted: bool,
}

pub struct Tiering {
    vol: Arc<Volume>,
    backend: Arc<dyn Backend>,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    opts: TieringOptions,
    /// Never held while calling into the volume (which may call back through [`Tier`]).
    table: Mutex<Table>,
    /// Signalled when a pack was uploaded or evicted (sync and throttled writers wait on it).
    progress: Condvar,
    wake_uploader: tokio::sync::Notify,
    wake_evictor: tokio::sync::Notify,
    stopping: AtomicBool,
    /// No upload starts before this (backoff after failures).
    retry_at: Mutex<Option<Instant>>,
    /// Upload failures since the last success (the backoff exponent).
    fail_streak: AtomicU32,
    /// Cache limit, high and low watermark in bytes (changeable at run time).
    limits: Mutex<(u64, u64, u64)>,
    /// Held by an eviction round, so two never pick the same victims.
    evicting: Mutex<()>,
    last_error: Mutex<Option<(SystemTime, String)>>,
    limiter: RateLimiter,
    fetcher: Arc<Fetcher>,
    pub counters: Counters,
    wake_meta: tokio::sync::Notify,
    /// This appliance's id (the lease names it).
    appliance: String,
    /// `serve --take-over`: claim the lease even if another appliance holds it (once).
    take_over: AtomicBool,
    /// The lease is ours: uploads may start.
    leased: AtomicBool,
    /// Held by a lease claim: the start-up check and the metadata loop both claim, and two
    /// claims racing would both read the old holder, and the second (its one-shot take-over
    /// spent by the first) would refuse the volume it has just taken.
    claiming: tokio::sync::Mutex<()>,
    /// The lease holder that stopped us, if another appliance holds it.
    fenced_by: Mutex<Option<metasync::Lease>>,
    /// Held by a GC pass (passes never overlap).
    gc_running: Mutex<()>,
    gc_last: Mutex<Option<gc::GcReport>>,
    /// GC waits for a checkpoint newer than the packs it dropped: take one at the next round.
    checkpoint_wanted: AtomicBool,
}

impl Tiering {
    /// Loads the pack table, registers with the volume and starts the uploader and evictor.
    pub fn start(
        vol: Arc<Volume>,
        backend: Arc<dyn Backend>,
        opts: TieringOptions,
        take_over: bool,
    ) -> Result<Arc<Tiering>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tiering")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the tiering runtime", e))?;
        let handle = rt.handle().clone();
        let fetcher = Arc::new(Fetcher::new(
            &vol.dir().join(FETCH_CACHE_DIR),
            backend.clone(),
            handle.clone(),
            opts.readahead,
        )?);
        let limits = (opts.cache_max, opts.high_watermark, opts.low_watermark);
        let t = Arc::new(Tiering {
            vol: vol.clone(),
            backend,
            rt: Mutex::new(Some(rt)),
            handle,
            limiter: RateLimiter::new(opts.schedule.clone()),
            opts,
            table: Mutex::new(Table::default()),
            progress: Condvar::new(),
            wake_uploader: tokio::sync::Notify::new(),
            wake_evictor: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            retry_at: Mutex::new(None),
            evicting: Mutex::new(()),
            limits: Mutex::new(limits),
            fail_streak: AtomicU32::new(0),
            last_error: Mutex::new(None),
            fetcher,
            counters: Counters::default(),
            wake_meta: tokio::sync::Notify::new(),
            appliance: metasync::appliance_id(vol.dir())?,
            take_over: AtomicBool::new(take_over),
            leased: AtomicBool::new(false),
            claiming: tokio::sync::Mutex::new(()),
            fenced_by: Mutex::new(None),
            gc_running: Mutex::new(()),
            gc_last: Mutex::new(None),
            checkpoint_wanted: AtomicBool::new(false),
        });
        // Registered before the scan, so a pack sealed in between is seen by one of the two.
        vol.set_tier(t.clone());
        t.rescan()?;
        {
            let tt = t.clone();
            t.handle.spawn(async move { tt.upload_loop().await });
            let tt = t.clone();
            t.handle.spawn(async move { tt.evict_loop().await });
            let tt = t.clone();
            t.handle.spawn(async move { tt.meta_loop().await });
            let tt = t.clone();
            t.handle.spawn(async move { tt.gc_loop().await });
        }
        let st = t.status();
        tracing::info!(
            store = %st.store,
            queued_packs = st.queued_packs,
            queued_bytes = st.queued_bytes,
            cache_used = st.cache_used,
            cache_max = st.cache_max,
            "tiering started"
        );
        Ok(t)
    }

    /// Stops uploads and fetches (an upload in flight is abandoned: its pack stays queued) and
    /// unregisters from the volume. Call after the front-ends stopped and the volume shut down.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake_uploader.notify_waiters();
        self.wake_evictor.notify_waiters();
        self.wake_meta.notify_waiters();
        self.vol.clear_tier();
        {
            let _t = self.table.lock();
            self.progress.notify_all();
        }
        if let Some(rt) = self.rt.lock().take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }

    /// Changes the cache size at run time (the management API); the watermarks keep their
    /// percentages. Eviction follows at once if usage is now above the high watermark.
    pub fn set_cache_max(&self, bytes: u64) {
        let (max, high, low) = *self.limits.lock();
        let scale = |w: u64| (w as u128 * bytes as u128 / max.max(1) as u128) as u64;
        *self.limits.lock() = (bytes, scale(high), scale(low));
        tracing::info!(cache_max = bytes, "cache size changed");
        crate::events::record("info", format!("cache size set to {bytes} bytes"));
        self.wake_evictor.notify_one();
    }

    /// The runtime tiering runs on (the control socket runs there too).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    /// The store's directory when it is a directory of this machine ([`Backend::local_dir`]).
    pub fn store_local_dir(&self) -> Option<std::path::PathBuf> {
        self.backend.local_dir().map(|p| p.to_path_buf())
    }

    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// Re-reads the pack table from the volume.
    fn rescan(&self) -> Result<()> {
        let packs = self.vol.pack_table()?;
        let mut t = self.table.lock();
        for (id, rec) in packs {
            let last_used = t.packs.get(&id).map_or(0, |p| p.last_used);
            t.set(
                id,
                PackInfo {
                    state: rec.state,
                    size: rec.size,
                    last_used,
                },
            );
        }
        Ok(())
    }

    /// Local pack data: whole packs (queued, cached, open) plus the fetch cache.
    pub fn cache_used(&self) -> u64 {
        let whole = {
            let t = self.table.lock();
            t.queued + t.cached_whole
        };
        whole + self.vol.open_pack_bytes() + self.fetcher.cached_bytes()
    }

    pub fn status(&self) -> TieringStatus {
        let (queued, queued_packs, uploading, cached_whole) = {
            let t = self.table.lock();
            let n = t
                .packs
                .values()
                .filter(|p| p.state == PackState::Sealed)
                .count();
            (t.queued, n as u64, t.uploading.len() as u64, t.cached_whole)
        };
        let open = self.vol.open_pack_bytes();
        let c = &self.counters;
        let f = &self.fetcher.counters;
        TieringStatus {
            store: self.backend.describe(),
            cache_max: self.limits.lock().0,
            cache_used: queued + cached_whole + open + self.fetcher.cached_bytes(),
            queued_bytes: queued + open,
            queued_packs,
            uploading_packs: uploading,
            uploaded_packs: c.uploaded_packs.load(Ordering::Relaxed),
            uploaded_bytes: c.uploaded_bytes.load(Ordering::Relaxed),
            put_requests: c.put_requests.load(Ordering::Relaxed),
            upload_failures: c.upload_failures.load(Ordering::Relaxed),
            evicted_bytes: c.evicted_bytes.load(Ordering::Relaxed),
            fetched_bytes: f.fetched_bytes.load(Ordering::Relaxed),
            get_requests: f.get_requests.load(Ordering::Relaxed),
            throttled_writes: c.throttled_writes.load(Ordering::Relaxed),
            bandwidth_limit: self.limiter.current_limit(),
            consistency_point: self.consistency_point().unwrap_or(0),
            recoverable: self.has_checkpoint().unwrap_or(false),
            journal_position: self.vol.journal().last_seq(),
            meta_segments: c.meta_segments.load(Ordering::Relaxed),
            meta_bytes: c.meta_bytes.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            fenced_by: self
                .fenced_by
                .lock()
                .as_ref()
                .map(|l| format!("appliance {} on {}", l.appliance, l.host)),
            last_error: self.last_error.lock().clone(),
        }
    }

    // ------------------------------------------------------------------ uploader

    async fn upload_loop(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.opts.upload_concurrency));
        let mut last_scan = Instant::now();
        while !self.stopping.load(Ordering::SeqCst) {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            if !self.leased.load(Ordering::SeqCst) {
                // Until the lease is ours another appliance may be writing these pack ids.
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = self.wake_uploader.notified() => {}
                }
                continue;
            }
            if let Some(wait) = self.backoff_left() {
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.wake_uploader.notified() => {}
                }
                continue;
            }
            let next = {
                let mut t = self.table.lock();
                let id = t
                    .packs
                    .iter()
                    .find(|(id, p)| p.state == PackState::Sealed && !t.uploading.contains(id))
                    .map(|(id, p)| (*id, p.size));
                if let Some((id, _)) = id {
                    t.uploading.insert(id);
                }
                id
            };
            let Some((id, size)) = next else {
                drop(permit);
                if last_scan.elapsed() >= RESCAN {
                    last_scan = Instant::now();
                    let me = self.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.rescan()).await {
                        tracing::error!("re-reading the pack table: {e}");
                    }
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RESCAN) => {}
                    _ = self.wake_uploader.notified() => {}
                }
                continue;
            };
            let me = self.clone();
            self.handle.spawn(async move {
                let result = me.upload(id, size).await;
                me.table.lock().uploading.remove(&id);
                match result {
                    Ok(()) => {
                        *me.retry_at.lock() = None;
                        let failed = me.fail_streak.swap(0, Ordering::Relaxed);
                        if failed > 0 {
                            crate::events::record(
                                "info",
                                format!("uploads work again after {failed} failed attempts"),
                            );
                        }
                    }
                    Err(e) => me.upload_failed(id, e),
                }
                drop(permit);
                me.wake_uploader.notify_one();
            });
        }
    }

    fn backoff_left(&self) -> Option<Duration> {
        let at = (*self.retry_at.lock())?;
        at.checked_duration_since(Instant::now())
    }

    fn upload_failed(&self, id: u64, e: Error) {
        self.counters
            .upload_failures
            .fetch_add(1, Ordering::Relaxed);
        // Exponential from 1 s up to MAX_BACKOFF, each wait drawn from its upper half so that
        // appliances restarted together do not retry in step; any success resets it.
        let streak = self.fail_streak.fetch_add(1, Ordering::Relaxed).min(16);
        let base = Duration::from_secs(1u64 << streak).min(MAX_BACKOFF);
        let wait = base.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        let mut retry = self.retry_at.lock();
        let at = Instant::now() + wait;
        *retry = Some(retry.map_or(at, |r| r.max(at)));
        let msg = format!("uploading pack {id}: {e}");
        // One event per distinct failure, not one per retry.
        let same = self.last_error.lock().as_ref().is_some_and(|(_, m)| {
            m.split_once(": ").map(|x| x.1) == msg.split_once(": ").map(|x| x.1)
        });
        if !same {
            crate::events::record("warning", format!("{msg} (retrying)"));
        }
        tracing::warn!(
            consecutive_failures = streak + 1,
            retry_in_s = wait.as_secs_f64(),
            "{msg}"
        );
        *self.last_error.lock() = Some((SystemTime::now(), msg));
    }

    async fn upload(&self, id: u64, size: u64) -> Result<()> {
        self.limiter.acquire(size).await;
        // Pack ids are only unique per appliance: never write one under another's lease.
        if !self.lease_still_ours().await? {
            return Err(Error::Invalid(
                "another appliance holds this volume's lease".into(),
            ));
        }
        let path = self.vol.pack_file(id);
        let key = layout::pack_key(id);
        let receipt = match self.backend.put_file(&key, &path).await {
            Ok(r) => r,
            Err(e) => {
                // A store refusing a request (bad key, no bucket) may cut the connection while
                // the body is still being sent, which looks like a network failure: a small
                // request tells the admin the real reason.
                if let Err(why) = self.backend.check_access().await {
                    if why.kind() != e.kind() {
                        return Err(why.into());
                    }
                }
                return Err(e.into());
            }
        };
        // Count what went on the wire even if we reject the result below.
        let requests = if receipt.parts == 0 {
            1
        } else {
            receipt.parts as u64 + 2
        };
        self.counters
            .put_requests
            .fetch_add(requests, Ordering::Relaxed);
        if receipt.size != size {
            return Err(Error::Corrupt(format!(
                "the store holds {} bytes for pack {id}, the pack has {size}",
                receipt.size
            )));
        }
        let vol = self.vol.clone();
        tokio::task::spawn_blocking(move || vol.mark_pack_uploaded(id))
            .await
            .map_err(|e| Error::Store(format!("marking pack {id} uploaded: {e}")))??;
        {
            let mut t = self.table.lock();
            t.change_state(id, PackState::Uploaded);
            if let Some(p) = t.packs.get_mut(&id) {
                p.last_used = lru_tick();
            }
            self.progress.notify_all();
        }
        *self.last_error.lock() = None;
        self.counters.uploaded_packs.fetch_add(1, Ordering::Relaxed);
        self.counters
            .uploaded_bytes
            .fetch_add(size, Ordering::Relaxed);
        tracing::debug!(pack = id, size, parts = receipt.parts, "pack uploaded");
        self.wake_evictor.notify_one();
        self.wake_meta.notify_one();
        Ok(())
    }

    // ------------------------------------------------------------------ evictor

    async fn evict_loop(self: Arc<Self>) {
        while !self.stopping.load(Ordering::SeqCst) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.wake_evictor.notified() => {}
            }
            if self.cache_used() <= self.limits.lock().1 {
                continue;
            }
            let me = self.clone();
            let low = self.limits.lock().2;
            match tokio::task::spawn_blocking(move || me.evict_down_to(low)).await {
                Ok(Err(e)) => tracing::error!("eviction: {e}"),
                Err(e) => tracing::error!("eviction task: {e}"),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Drops least-recently-used off-site data from the local cache until usage is at most
    /// `target`, or nothing evictable is left. Returns the bytes freed.
    pub fn evict_down_to(&self, target: u64) -> Result<u64> {
        let _one_at_a_time = self.evicting.lock();
        enum Victim {
            Whole(u64),
            Fetched(u64),
        }
        let mut victims: Vec<(u64, Victim)> = {
            let t = self.table.lock();
            t.packs
                .iter()
                .filter(|(id, p)| p.state == PackState::Uploaded && !t.uploading.contains(id))
                .map(|(id, p)| (p.last_used, Victim::Whole(*id)))
                .collect()
        };
        victims.extend(
            self.fetcher
                .cached_packs()
                .into_iter()
                .map(|(id, used, _)| (used, Victim::Fetched(id))),
        );
        victims.sort_by_key(|(used, _)| *used);
        let mut freed = 0;
        for (_, v) in victims {
            if self.cache_used() <= target {
                break;
            }
            match v {
                Victim::Whole(id) => {
                    let n = self.vol.evict_pack(id)?;
                    let mut t = self.table.lock();
                    t.change_state(id, PackState::Remote);
                    self.counters.evicted_packs.fetch_add(1, Ordering::Relaxed);
                    self.counters.evicted_bytes.fetch_add(n, Ordering::Relaxed);
                    freed += n;
                }
                Victim::Fetched(id) => {
                    let n = self.fetcher.drop_pack(id);
                    self.counters.evicted_bytes.fetch_add(n, Ordering::Relaxed);
                    freed += n;
                }
            }
        }
        if freed > 0 {
            tracing::debug!(freed, used = self.cache_used(), "evicted");
            let _t = self.table.lock();
            self.progress.notify_all();
        }
        Ok(freed)
    }

    // ------------------------------------------------------------------ sync

    /// Commits everything written so far, seals the open pack and waits until every pack
    /// holding it is off-site, or `timeout` passes.
    pub fn sync(&self, timeout: Option<Duration>) -> Result<SyncReport> {
        let started = Instant::now();
        self.vol.commit_all(true)?;
        self.vol.seal_open_pack()?;
        self.rescan()?;
        let (targets, bytes): (Vec<u64>, u64) = {
            let t = self.table.lock();
            let ids: Vec<u64> = t
                .packs
                .iter()
                .filter(|(_, p)| p.state == PackState::Sealed)
                .map(|(id, _)| *id)
                .collect();
            let bytes = ids.iter().map(|id| t.packs[id].size).sum();
            (ids, bytes)
        };
        // Every change made so far: the metadata naming the data must be off-site too.
        let target = self.vol.journal().last_seq();
        // A sync is someone waiting: retry now rather than after the backoff.
        *self.retry_at.lock() = None;
        self.wake_uploader.notify_one();
        let deadline = timeout.map(|d| started + d);
        loop {
            self.wake_meta.notify_one();
            let cp = self.consistency_point().unwrap_or(0);
            let meta_done = self.has_checkpoint().unwrap_or(false) && cp >= target;
            let mut t = self.table.lock();
            let pending = targets
                .iter()
                .filter(|id| matches!(t.packs.get(id), Some(p) if p.state == PackState::Sealed))
                .count() as u64;
            let stopped = self.stopping.load(Ordering::SeqCst);
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            let complete = pending == 0 && meta_done;
            if complete || stopped || timed_out {
                drop(t);
                return Ok(SyncReport {
                    complete,
                    packs: targets.len() as u64,
                    bytes,
                    pending_packs: pending,
                    metadata_pending: !meta_done,
                    consistency_point: cp,
                    elapsed: started.elapsed(),
                    last_error: self.last_error.lock().as_ref().map(|(_, m)| m.clone()),
                    interrupted: stopped && !complete,
                });
            }
            let wait = deadline.map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1))
            });
            self.progress.wait_for(&mut t, wait);
        }
    }
}

impl Tier for Tiering {
    fn pack_sealed(&self, pack: u64, size: u64) {
        self.table.lock().set(
            pack,
            PackInfo {
                state: PackState::Sealed,
                size,
                last_used: lru_tick(),
            },
        );
        self.wake_uploader.notify_one();
    }

    fn pack_used(&self, pack: u64) {
        if let Some(p) = self.table.lock().packs.get_mut(&pack) {
            p.last_used = lru_tick();
        }
    }

    fn fetch_blob(
        &self,
        pack: u64,
        loc: BlobLocation,
        verify: &dyn Fn(&[u8]) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let (info, next) = {
            let t = self.table.lock();
            let next = t
                .packs
                .range(pack + 1..)
                .next()
                .filter(|(_, p)| p.state == PackState::Remote)
                .map(|(id, p)| (*id, p.size));
            (t.packs.get(&pack).copied(), next)
        };
        match info {
            Some(p) if p.state.is_offsite() => {
                self.fetcher.fetch_blob(pack, p.size, next, loc, verify)
            }
            Some(p) => Err(Error::Corrupt(format!(
                "pack {pack} is not off-site yet ({:?}) and its local copy is unreadable",
                p.state
            ))),
            None => Err(Error::Corrupt(format!(
                "pack {pack} is not in the pack table"
            ))),
        }
    }

    fn pack_dropped(&self, pack: u64) {
        let mut t = self.table.lock();
        if let Some(old) = t.packs.remove(&pack) {
            t.account(&old, false);
        }
        drop(t);
        self.fetcher.drop_pack(pack);
        let _t = self.table.lock();
        self.progress.notify_all();
    }

    fn admit_write(&self, vol: &Volume, _bytes: u64) {
        // Everything local and not yet off-site: queued packs, the open pack, and data still
        // in memory (it lands in packs whatever happens next).
        let pending = |t: &Table| t.queued + vol.open_pack_bytes() + vol.uncommitted_bytes();
        let (_, limit, low) = *self.limits.lock();
        // Make room now rather than at the evictor's next round: a fast writer could otherwise
        // push usage well past the limit in between.
        let evictable = self.table.lock().cached_whole + self.fetcher.cached_bytes();
        if evictable > 0 && self.cache_used() > limit {
            if let Err(e) = self.evict_down_to(low) {
                tracing::error!("eviction: {e}");
            }
        }
        let mut t = self.table.lock();
        if pending(&t) < limit || self.stopping.load(Ordering::Relaxed) {
            return;
        }
        self.counters
            .throttled_writes
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            pending = pending(&t),
            limit,
            "cache full of data not yet off-site: the writer waits for uploads"
        );
        while pending(&t) >= limit && !self.stopping.load(Ordering::Relaxed) {
            drop(t);
            // Data in memory and in the open pack can only leave once committed and sealed.
            if let Err(e) = vol.commit_all(false).and_then(|()| vol.seal_open_pack()) {
                tracing::error!("committing for upload: {e}");
            }
            self.wake_uploader.notify_one();
            t = self.table.lock();
            self.progress.wait_for(&mut t, Duration::from_secs(1));
        }
    }
}

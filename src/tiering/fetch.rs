//! The fetcher: reads of evicted packs, by ranged GET, with a local fetch cache and read-ahead.
//!
//! A pack whose local copy was evicted gets a *sparse* cache file of the pack's size under
//! `cache/`; fetched byte ranges are written at their own offsets, so a cached blob is read
//! exactly like one in a whole local pack. Which ranges are present is kept in memory only: the
//! cache directory is emptied at startup (it is a cache; the store has everything).
//!
//! Bytes are trusted only after the caller's `verify` (decrypt + re-hash) accepts them: a blob
//! fetched for a read is verified before it is cached, and a cached range that fails to verify
//! (read-ahead bytes, a damaged cache file) is dropped and fetched again.
//!
//! Read-ahead: a read near where the previous one in the same pack ended (within two pieces:
//! the kernel's read-ahead reaches us on several FUSE threads, a little out of order) is
//! sequential. A sequential miss fetches a whole 4 MiB piece from the blob on, and keeps a
//! window ahead of the reader in flight, doubling from 4 MiB up to `tiering.readahead`, fetched
//! in pieces of at most 4 MiB in parallel; when the window runs past the end of the pack it
//! continues into the next pack if that one is off-site only too. Readers that need bytes a
//! piece is still fetching wait for it rather
//! than asking the store twice.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::{lru_tick, run_blocking};
use crate::backend::{layout, Backend};
use crate::error::{Error, Result};
use crate::pack::{self, BlobLocation};

/// Largest single read-ahead request.
const PIECE: u64 = 4 << 20;
/// Smallest read-ahead window (the first sequential step).
const FIRST_WINDOW: u64 = 4 << 20;

/// Byte ranges, merged and non-overlapping: start → end.
#[derive(Default, Debug)]
pub(crate) struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    /// Adds `r`; returns how many bytes were not present before.
    pub(crate) fn insert(&mut self, r: Range<u64>) -> u64 {
        if r.is_empty() {
            return 0;
        }
        let (mut start, mut end) = (r.start, r.end);
        let mut covered = 0;
        // Every range touching or overlapping [start, end).
        let first = match self.0.range(..=start).next_back() {
            Some((&s, &e)) if e >= start => s,
            _ => start,
        };
        let touching: Vec<(u64, u64)> = self.0.range(first..=end).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in touching {
            covered += e.min(r.end).saturating_sub(s.max(r.start));
            start = start.min(s);
            end = end.max(e);
            self.0.remove(&s);
        }
        self.0.insert(start, end);
        (r.end - r.start) - covered
    }

    /// Removes `r`; returns how many bytes were present.
    pub(crate) fn remove(&mut self, r: Range<u64>) -> u64 {
        let first = match self.0.range(..r.start).next_back() {
            Some((&s, &e)) if e > r.start => s,
            _ => r.start,
        };
        let hit: Vec<(u64, u64)> = self.0.range(first..r.end).map(|(&s, &e)| (s, e)).collect();
        let mut removed = 0;
        for (s, e) in hit {
            self.0.remove(&s);
            removed += e.min(r.end) - s.max(r.start);
            if s < r.start {
                self.0.insert(s, r.start);
            }
            if e > r.end {
                self.0.insert(r.end, e);
            }
        }
        removed
    }

    pub(crate) fn covers(&self, r: &Range<u64>) -> bool {
        matches!(self.0.range(..=r.start).next_back(), Some((_, &e)) if e >= r.end)
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }
}

/// A GET in progress; readers needing its bytes wait on it.
struct Flight {
    range: Range<u64>,
    done: Mutex<bool>,
    cv: Condvar,
}

impl Flight {
    fn wait(&self) {
        let mut d = self.done.lock();
        while !*d {
            self.cv.wait(&mut d);
        }
    }
    fn finish(&self) {
        *self.done.lock() = true;
        self.cv.notify_all();
    }
}

/// The fetch cache of one evicted pack.
struct Partial {
    /// Tells this cache file apart from a later one of the same pack (after an eviction).
    generation: u64,
    file: Arc<File>,
    size: u64,
    present: RangeSet,
    inflight: Vec<Arc<Flight>>,
    last_used: u64,
    /// Where the previous read in this pack ended (sequential detection).
    next_seq: u64,
    /// End of what read-ahead has fetched or is fetching.
    ahead_end: u64,
    window: u64,
}

/// Fetch counters, for status and tests.
#[derive(Debug, Default)]
pub struct FetchCounters {
    pub get_requests: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub readahead_bytes: AtomicU64,
    /// Cached ranges that failed verification and were fetched again.
    pub refetched: AtomicU64,
}

pub struct Fetcher {
    dir: PathBuf,
    backend: Arc<dyn Backend>,
    rt: tokio::runtime::Handle,
    readahead: u64,
    packs: Mutex<HashMap<u64, Partial>>,
    generation: AtomicU64,
    cached: AtomicU64,
    pub counters: FetchCounters,
}

impl Fetcher {
    /// A fetcher caching under `dir`, which it empties first.
    pub fn new(
        dir: &Path,
        backend: Arc<dyn Backend>,
        rt: tokio::runtime::Handle,
        readahead: u64,
    ) -> Result<Fetcher> {
        if dir.exists() {
            fs::remove_dir_all(dir)
                .map_err(|e| Error::io(format!("clearing {}", dir.display()), e))?;
        }
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Fetcher {
            dir: dir.to_path_buf(),
            backend,
            rt,
            readahead,
            packs: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            cached: AtomicU64::new(0),
            counters: FetchCounters::default(),
        })
    }

    /// Bytes held in the fetch cache.
    pub fn cached_bytes(&self) -> u64 {
        self.cached.load(Ordering::Relaxed)
    }

    /// Cached packs as (pack, last use, bytes), for the evictor.
    pub fn cached_packs(&self) -> Vec<(u64, u64, u64)> {
        self.packs
            .lock()
            .iter()
            .map(|(&id, p)| (id, p.last_used, p.present.total()))
            .collect()
    }

    /// Drops the cache of one pack; returns the bytes freed. Readers still using its file
    /// finish on the unlinked file; their results are not cached.
    pub fn drop_pack(&self, pack: u64) -> u64 {
        let Some(p) = self.packs.lock().remove(&pack) else {
            return 0;
        };
        let bytes = p.present.total();
        self.cached.fetch_sub(bytes, Ordering::Relaxed);
        let _ = fs::remove_file(self.path(pack));
        bytes
    }

    fn path(&self, pack: u64) -> PathBuf {
        self.dir.join(pack::pack_file_name(pack))
    }

    fn open_partial(&self, pack: u64, size: u64) -> Result<Partial> {
        let path = self.path(pack);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        // Sparse: only fetched ranges take space.
        file.set_len(size)
            .map_err(|e| Error::io(format!("sizing {}", path.display()), e))?;
        Ok(Partial {
            generation: self.generation.fetch_add(1, Ordering::Relaxed),
            file: Arc::new(file),
            size,
            present: RangeSet::default(),
            inflight: Vec::new(),
            last_used: 0,
            next_seq: 0,
            ahead_end: 0,
            window: 0,
        })
    }

    /// Records `range` of `pack` as present if its cache is still the one it was written to.
    fn mark_present(&self, pack: u64, generation: u64, range: Range<u64>) {
        let mut g = self.packs.lock();
        if let Some(p) = g.get_mut(&pack).filter(|p| p.generation == generation) {
            let added = p.present.insert(range);
            self.cached.fetch_add(added, Ordering::Relaxed);
        }
    }

    fn end_flight(&self, pack: u64, flight: &Arc<Flight>) {
        if let Some(p) = self.packs.lock().get_mut(&pack) {
            p.inflight.retain(|f| !Arc::ptr_eq(f, flight));
        }
        flight.finish();
    }

    /// One ranged GET of exactly `range`; a short answer is a damaged object.
    fn get(&self, pack: u64, range: Range<u64>) -> Result<Vec<u8>> {
        let backend = self.backend.clone();
        let key = layout::pack_key(pack);
        let want = range.end - range.start;
        let r = range.clone();
        let bytes = run_blocking(&self.rt, async move { backend.get_range(&key, r).await })?
            .map_err(Error::from)?;
        self.counters.get_requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .fetched_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() as u64 != want {
            return Err(Error::Corrupt(format!(
                "pack {pack} off-site: asked for bytes {}..{}, the store returned {} bytes \
                 (object truncated?)",
                range.start,
                range.end,
                bytes.len()
            )));
        }
        Ok(bytes.to_vec())
    }

    /// The decoded blob at `loc` of evicted pack `pack` (`size` bytes long); `next` is the
    /// following pack (id, size) if it is off-site only, for read-ahead.
    pub fn fetch_blob(
        self: &Arc<Self>,
        pack: u64,
        size: u64,
        next: Option<(u64, u64)>,
        loc: BlobLocation,
        verify: &dyn Fn(&[u8]) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let want = loc.offset..loc.offset + loc.len as u64;
        if want.end > size {
            return Err(Error::Corrupt(format!(
                "blob {}..{} lies beyond the end of pack {pack} ({size} bytes)",
                want.start, want.end
            )));
        }
        loop {
            let mut g = self.packs.lock();
            let p = match g.entry(pack) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(self.open_partial(pack, size)?)
                }
            };
            p.last_used = lru_tick();
            if p.present.covers(&want) {
                let (file, generation) = (p.file.clone(), p.generation);
                self.read_ahead(&mut g, pack, &want, next);
                drop(g);
                let bytes = pack::read_blob(&file, loc)?;
                match verify(&bytes) {
                    Ok(plain) => return Ok(plain),
                    Err(e) => {
                        tracing::warn!(
                            pack,
                            offset = loc.offset,
                            "cached blob did not verify ({e}); fetching it again"
                        );
                        self.counters.refetched.fetch_add(1, Ordering::Relaxed);
                        let mut g = self.packs.lock();
                        if let Some(p) = g.get_mut(&pack).filter(|p| p.generation == generation) {
                            let gone = p.present.remove(want.clone());
                            self.cached.fetch_sub(gone, Ordering::Relaxed);
                        }
                        continue;
                    }
                }
            }
            if let Some(f) = p
                .inflight
                .iter()
                .find(|f| f.range.start < want.end && want.start < f.range.end)
                .cloned()
            {
                drop(g);
                f.wait();
                continue;
            }
            // Fetch this blob now (a sequential reader gets a whole piece from it: its next
            // blobs are there), and start read-ahead behind it.
            let sequential = want.start.abs_diff(p.next_seq) <= 2 * PIECE;
            let range = if sequential {
                want.start..(want.start + PIECE).min(size).max(want.end)
            } else {
                want.clone()
            };
            let flight = Arc::new(Flight {
                range: range.clone(),
                done: Mutex::new(false),
                cv: Condvar::new(),
            });
            p.inflight.push(flight.clone());
            if sequential {
                p.ahead_end = p.ahead_end.max(range.end);
            }
            let (file, generation) = (p.file.clone(), p.generation);
            self.read_ahead(&mut g, pack, &want, next);
            drop(g);
            let result = self.get(pack, range.clone()).and_then(|bytes| {
                let plain = verify(&bytes[..loc.len as usize])?;
                // A failed cache write only costs a later refetch.
                if file.write_all_at(&bytes, range.start).is_ok() {
                    self.mark_present(pack, generation, range.clone());
                }
                Ok(plain)
            });
            self.end_flight(pack, &flight);
            return result;
        }
    }

    /// Keeps read-ahead going for a sequential reader of `pack` that just asked for `want`;
    /// `next` is the pack after it, if that one is off-site only too (a restore of a large
    /// file moves on to it, so the window continues there).
    fn read_ahead(
        self: &Arc<Self>,
        g: &mut HashMap<u64, Partial>,
        pack: u64,
        want: &Range<u64>,
        next: Option<(u64, u64)>,
    ) {
        let Some(p) = g.get_mut(&pack) else { return };
        // Concurrent readers (the kernel's read-ahead on several FUSE threads) arrive a little
        // out of order: near where the last read ended still counts as sequential.
        if want.start.abs_diff(p.next_seq) > 2 * PIECE {
            p.next_seq = want.end;
            p.window = 0;
            return;
        }
        p.next_seq = p.next_seq.max(want.end);
        p.window = (p.window * 2).clamp(FIRST_WINDOW.min(self.readahead), self.readahead);
        let window = p.window;
        let reach = want.end + window;
        let target = reach.min(p.size);
        // Refill once less than half a window is left ahead of the reader.
        if p.ahead_end < want.end + window / 2 && p.ahead_end < target {
            let from = p.ahead_end.max(want.end);
            self.fetch_ahead(pack, p, from, target);
        }
        let spill = reach.saturating_sub(p.size);
        let Some((next_id, next_size)) = next.filter(|_| spill > 0) else {
            return;
        };
        let to = spill.min(next_size);
        let q = match g.entry(next_id) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                match self.open_partial(next_id, next_size) {
                    Ok(q) => v.insert(q),
                    Err(_) => return,
                }
            }
        };
        // Whole pieces only, so a reader creeping forward does not cause tiny requests.
        if to >= q.ahead_end + PIECE || (to == next_size && q.ahead_end < to) {
            q.window = q.window.max(window);
            let from = q.ahead_end;
            self.fetch_ahead(next_id, q, from, to);
        }
    }

    /// Starts GETs of `from..to` of `pack` in pieces, skipping what is cached already.
    fn fetch_ahead(self: &Arc<Self>, pack: u64, p: &mut Partial, from: u64, to: u64) {
        let mut start = from;
        while start < to {
            let end = (start + PIECE).min(to);
            let range = start..end;
            start = end;
            if p.present.covers(&range) {
                continue;
            }
            let flight = Arc::new(Flight {
                range: range.clone(),
                done: Mutex::new(false),
                cv: Condvar::new(),
            });
            p.inflight.push(flight.clone());
            let (file, generation) = (p.file.clone(), p.generation);
            let fetcher = self.clone();
            self.rt.spawn(async move {
                let want = range.end - range.start;
                let key = layout::pack_key(pack);
                match fetcher.backend.get_range(&key, range.clone()).await {
                    Ok(bytes) if bytes.len() as u64 == want => {
                        let c = &fetcher.counters;
                        c.get_requests.fetch_add(1, Ordering::Relaxed);
                        c.fetched_bytes.fetch_add(want, Ordering::Relaxed);
                        c.readahead_bytes.fetch_add(want, Ordering::Relaxed);
                        let start = range.start;
                        let written = tokio::task::spawn_blocking(move || {
                            file.write_all_at(&bytes, start).is_ok()
                        })
                        .await
                        .unwrap_or(false);
                        if written {
                            fetcher.mark_present(pack, generation, range);
                        }
                    }
                    // The reader that needs these bytes fetches them itself and reports.
                    Ok(_) => tracing::warn!(pack, "read-ahead got a short answer"),
                    Err(e) => tracing::warn!(pack, "read-ahead failed: {e}"),
                }
                fetcher.end_flight(pack, &flight);
            });
        }
        p.ahead_end = p.ahead_end.max(to);
    }
}

#[cfg(test)]
mod tests {
    use super::RangeSet;

    #[test]
    fn range_set_merges_counts_and_splits() {
        let mut s = RangeSet::default();
        assert_eq!(s.insert(10..20), 10);
        assert_eq!(s.insert(30..40), 10);
        // Bridges the gap: only 20..30 is new.
        assert_eq!(s.insert(15..35), 10);
        assert!(s.covers(&(10..40)));
        assert!(!s.covers(&(9..12)));
        assert_eq!(s.total(), 30);
        // Touching ranges merge too.
        assert_eq!(s.insert(40..45), 5);
        assert!(s.covers(&(12..45)));
        // A hole in the middle splits the range.
        assert_eq!(s.remove(20..25), 5);
        assert!(!s.covers(&(18..27)));
        assert!(s.covers(&(10..20)) && s.covers(&(25..45)));
        assert_eq!(s.total(), 30);
        assert_eq!(s.remove(0..100), 30);
        assert_eq!(s.total(), 0);
        assert_eq!(s.insert(5..5), 0);
    }
}

//! The small key-value interface the metadata store sits behind.
//!
//! sled is known for space amplification and has had no release since 2021, so nothing but this
//! module names it. The interface is deliberately tiny: point reads, ordered range scans, atomic
//! batches and an explicit durability barrier. Read-modify-write is the caller's business: the
//! volume serializes its commits, so batches need no optimistic concurrency here.
//!
//! The conformance tests at the bottom are written against the trait; a replacement store
//! (redb, fjall) must pass them unchanged.

use std::ops::Bound;
use std::path::Path;

use crate::error::{Error, Result};

pub type KvPair = (Vec<u8>, Vec<u8>);

/// An ordered byte-key store with atomic batches.
pub trait KvStore: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Pairs with `start <= key < end` in key order (`end = None`: to the end of the store).
    fn range(&self, start: &[u8], end: Option<&[u8]>) -> Result<Vec<KvPair>>;
    /// At most `limit` pairs with `start <= key < end`, for paged scans of large ranges.
    fn range_limit(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KvPair>>;
    /// The greatest pair with `lower <= key <= at`.
    fn last_in(&self, lower: &[u8], at: &[u8]) -> Result<Option<KvPair>>;
    /// Applies every operation of the batch, or none of them (also across a crash).
    fn apply(&self, batch: Batch) -> Result<()>;
    /// Durability barrier: when this returns, every applied batch is on stable storage.
    fn flush(&self) -> Result<()>;
    /// Bytes the store occupies on disk.
    fn size_on_disk(&self) -> Result<u64>;
}

/// An ordered list of puts and deletes, applied atomically. Later operations on the same key win.
#[derive(Default, Debug)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
    }
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// The operations in order: (key, Some(value)) for a put, (key, None) for a delete.
    pub fn ops(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.ops.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))
    }
}

/// The key just past every key that starts with `prefix` (None if there is no such key).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// sled behind [`KvStore`]. One tree holds every record so that a batch spanning namespace,
/// extents and chunk index is atomic.
pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    /// Opens (or creates) the store. `cache_bytes` bounds sled's page cache; sled's own periodic
    /// flush is disabled so that nothing reaches disk ahead of the pack data it names (the
    /// volume calls [`KvStore::flush`] where it promises durability).
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .mode(sled::Mode::LowSpace);
        // sled releases its file lock from a background thread shortly after the last handle
        // is dropped, so a reopen in the same process can briefly find it held.
        let mut tries = 0;
        let opened = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && tries < 50 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        };
        let db = opened.map_err(|e| match e {
            sled::Error::Io(io) => {
                Error::io(format!("opening metadata store {}", dir.display()), io)
            }
            other => Error::Store(format!("opening {}: {other}", dir.display())),
        })?;
        Ok(SledStore { db })
    }
}

/// What a compaction of the metadata store did.
#[derive(Debug, Clone)]
pub struct CompactReport {
    pub records: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub elapsed: std::time::Duration,
}

/// Compaction runs at open when the store holds at least this much...
const COMPACT_MIN_BYTES: u64 = 64 << 20;
/// ...and has grown to this many times its size after the last compaction (amortized: the copy
/// costs about as much as reading the store once, and happens only after it doubled).
const COMPACT_GROWTH: u64 = 2;

/// Records go into the copy in batches of about this size: the smallest copy of the volume
/// measured (44 MiB for 15 MB of records; 4 MiB batches gave 66 MiB, single records 126 MiB).
const COPY_BATCH_BYTES: usize = 512 << 10;

/// Beside the store directory `D`: `D.compacting` (the copy being built), `D.old` (the store
/// being replaced), `D.compacted` (its size after the last compaction, decimal text).
fn sibling(dir: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Bytes of the files under `dir` (sled's `size_on_disk` without opening it).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                // Allocated bytes: sled's files can be sparse.
                m.blocks() * 512
            }
            Err(_) => 0,
        })
        .sum()
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let context = format!("{what} {}", path.display());
    move |e| Error::io(context, e)
}

/// Finishes or undoes a compaction a crash interrupted, so that `dir` is a whole store again.
/// The copy is complete and durable before the first rename, so: `dir` present means any
/// sibling is garbage; `dir` missing with `D.old` present means the crash fell between the
/// two renames, and the copy takes its place.
fn settle_compaction(dir: &Path) -> Result<()> {
    let (new, old) = (sibling(dir, ".compacting"), sibling(dir, ".old"));
    if !dir.exists() && old.exists() {
        let from = if new.exists() { &new } else { &old };
        std::fs::rename(from, dir).map_err(io_err("restoring metadata store from", from))?;
        crate::durable::fsync_parent(dir)?;
    }
    for leftover in [new, old] {
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover).map_err(io_err("removing", &leftover))?;
        }
    }
    Ok(())
}

impl SledStore {
    /// Opens the store at `dir` like [`SledStore::open`], first rewriting it into a fresh copy
    /// when it has grown past [`COMPACT_MIN_BYTES`] and [`COMPACT_GROWTH`] times its size after
    /// the last compaction. sled never gives back the space of records written and deleted
    /// since (every change passes through the journal records, which are deleted once
    /// off-site): a volume of 44,000 files held 15 MB of records in 240 MiB, and 41 MiB after
    /// a copy. The copy needs free space for one more store of the live records; without it
    /// the store is opened as it is.
    pub fn open_compacted(dir: &Path, cache_bytes: u64) -> Result<(Self, Option<CompactReport>)> {
        settle_compaction(dir)?;
        let before = dir_bytes(dir);
        let last: u64 = std::fs::read_to_string(sibling(dir, ".compacted"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        if before < COMPACT_MIN_BYTES || before < last.saturating_mul(COMPACT_GROWTH) {
            return Ok((Self::open(dir, cache_bytes)?, None));
        }
        let free = nix::sys::statvfs::statvfs(dir.parent().unwrap_or(Path::new(".")))
            .map(|s| s.blocks_available() * s.fragment_size())
            .unwrap_or(0);
        if free < before / 2 {
            tracing::warn!(
                store = %dir.display(),
                size = before,
                free,
                "metadata store not compacted: too little free space for the copy"
            );
            return Ok((Self::open(dir, cache_bytes)?, None));
        }
        let report = compact(dir, cache_bytes)?;
        Ok((Self::open(dir, cache_bytes)?, Some(report)))
    }
}

/// fsyncs every file and directory under `dir`.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let path = entry.map_err(io_err("listing", dir))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err("syncing", &path))?;
        }
    }
    crate::durable::fsync_dir(dir)
}

/// Copies every record of the store at `dir` into a fresh store and puts it in its place
/// (crash-safe: see [`settle_compaction`]). The store must not be open.
pub fn compact(dir: &Path, cache_bytes: u64) -> Result<CompactReport> {
    let started = std::time::Instant::now();
    settle_compaction(dir)?;
    let before = dir_bytes(dir);
    let (new, old) = (sibling(dir, ".compacting"), sibling(dir, ".old"));
    let mut records = 0u64;
    {
        let src = SledStore::open(dir, cache_bytes)?;
        let dst = SledStore::open(&new, cache_bytes)?;
        let mut batch = Batch::default();
        let mut batch_bytes = 0usize;
        for pair in src.db.iter() {
            let (k, v) = pair?;
            batch_bytes += k.len() + v.len();
            batch.put(k.to_vec(), v.to_vec());
            records += 1;
            if batch_bytes >= COPY_BATCH_BYTES {
                dst.apply(std::mem::take(&mut batch))?;
                batch_bytes = 0;
            }
        }
        dst.apply(batch)?;
        dst.flush()?;
    }
    // sled fsyncs its data at flush; the files it created and their directory entries too.
    sync_tree(&new)?;
    crate::durable::fsync_parent(&new)?;
    std::fs::rename(dir, &old).map_err(io_err("moving aside", dir))?;
    std::fs::rename(&new, dir).map_err(io_err("moving into place", &new))?;
    crate::durable::fsync_parent(dir)?;
    std::fs::remove_dir_all(&old).map_err(io_err("removing", &old))?;
    let after = dir_bytes(dir);
    crate::durable::write_file_durably(
        &sibling(dir, ".compacted"),
        format!("{after}\n").as_bytes(),
        0o644,
    )?;
    Ok(CompactReport {
        records,
        bytes_before: before,
        bytes_after: after,
        elapsed: started.elapsed(),
    })
}

fn pair(r: sled::Result<(sled::IVec, sled::IVec)>) -> Result<KvPair> {
    let (k, v) = r?;
    Ok((k.to_vec(), v.to_vec()))
}

impl KvStore for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>) -> Result<Vec<KvPair>> {
        self.range_limit(start, end, usize::MAX)
    }

    fn range_limit(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KvPair>> {
        let upper = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        self.db
            .range::<&[u8], _>((Bound::Included(start), upper))
            .take(limit)
            .map(pair)
            .collect()
    }

    fn last_in(&self, lower: &[u8], at: &[u8]) -> Result<Option<KvPair>> {
        if lower > at {
            return Ok(None);
        }
        self.db
            .range::<&[u8], _>((Bound::Included(lower), Bound::Included(at)))
            .next_back()
            .map(pair)
            .transpose()
    }

    fn apply(&self, batch: Batch) -> Result<()> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        Ok(self.db.apply_batch(b)?)
    }

    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! Behaviour every [`KvStore`] must have.
    use super::*;

    pub fn run_all(open: &dyn Fn(&Path) -> Box<dyn KvStore>) {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        point_ops(&*open(&a));
        let b = dir.path().join("b");
        ranges(&*open(&b));
        let c = dir.path().join("c");
        batch_order_and_atomicity(&*open(&c));
        let d = dir.path().join("d");
        durable_after_flush_and_reopen(open, &d);
    }

    fn point_ops(kv: &dyn KvStore) {
        assert_eq!(kv.get(b"k").unwrap(), None);
        let mut b = Batch::default();
        b.put(b"k".to_vec(), b"v1".to_vec());
        kv.apply(b).unwrap();
        assert_eq!(kv.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
        let mut b = Batch::default();
        b.put(b"k".to_vec(), b"v2".to_vec());
        kv.apply(b).unwrap();
        assert_eq!(kv.get(b"k").unwrap().as_deref(), Some(&b"v2"[..]));
        let mut b = Batch::default();
        b.delete(b"k".to_vec());
        b.delete(b"never-there".to_vec());
        kv.apply(b).unwrap();
        assert_eq!(kv.get(b"k").unwrap(), None);
        // Empty values and binary keys are legal.
        let mut b = Batch::default();
        b.put(vec![0u8, 255, 0], Vec::new());
        kv.apply(b).unwrap();
        assert_eq!(kv.get(&[0, 255, 0]).unwrap(), Some(Vec::new()));
    }

    fn ranges(kv: &dyn KvStore) {
        let mut b = Batch::default();
        for i in 0u16..300 {
            b.put(
                [b"r".as_slice(), &i.to_be_bytes()].concat(),
                i.to_le_bytes().to_vec(),
            );
        }
        b.put(b"q".to_vec(), b"before".to_vec());
        b.put(b"s".to_vec(), b"after".to_vec());
        kv.apply(b).unwrap();
        let all = kv.range(b"r", prefix_end(b"r").as_deref()).unwrap();
        assert_eq!(all.len(), 300);
        assert!(
            all.windows(2).all(|w| w[0].0 < w[1].0),
            "keys come in order"
        );
        let page = kv
            .range_limit(b"r", prefix_end(b"r").as_deref(), 7)
            .unwrap();
        assert_eq!(page.len(), 7);
        assert_eq!(page[..], all[..7]);
        let k100 = [b"r".as_slice(), &100u16.to_be_bytes()].concat();
        let k150 = [b"r".as_slice(), &150u16.to_be_bytes()].concat();
        assert_eq!(kv.range(&k100, Some(&k150)).unwrap().len(), 50);
        // last_in finds the greatest key at or below, within the lower bound.
        let probe = [b"r".as_slice(), &100u16.to_be_bytes(), b"x"].concat();
        let (k, _) = kv.last_in(b"r", &probe).unwrap().unwrap();
        assert_eq!(k, k100);
        assert_eq!(kv.last_in(b"r", &k100).unwrap().unwrap().0, k100);
        assert_eq!(kv.last_in(b"r0", b"r0").unwrap(), None);
        assert_eq!(kv.last_in(b"z", b"a").unwrap(), None);
        assert!(kv.range(b"s", None).unwrap().len() == 1);
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
    }

    fn batch_order_and_atomicity(kv: &dyn KvStore) {
        let mut b = Batch::default();
        b.put(b"x".to_vec(), b"1".to_vec());
        b.delete(b"x".to_vec());
        b.put(b"y".to_vec(), b"1".to_vec());
        b.put(b"y".to_vec(), b"2".to_vec());
        assert_eq!(b.len(), 4);
        kv.apply(b).unwrap();
        assert_eq!(kv.get(b"x").unwrap(), None, "later delete wins");
        assert_eq!(kv.get(b"y").unwrap().as_deref(), Some(&b"2"[..]));
        assert!(Batch::default().is_empty());
    }

    fn durable_after_flush_and_reopen(open: &dyn Fn(&Path) -> Box<dyn KvStore>, dir: &Path) {
        {
            let kv = open(dir);
            let mut b = Batch::default();
            for i in 0u32..2000 {
                b.put(i.to_be_bytes().to_vec(), vec![7u8; 100]);
            }
            kv.apply(b).unwrap();
            kv.flush().unwrap();
            assert!(kv.size_on_disk().unwrap() > 0);
        }
        let kv = open(dir);
        assert_eq!(kv.range(&[], None).unwrap().len(), 2000);
        assert_eq!(
            kv.get(&1999u32.to_be_bytes()).unwrap(),
            Some(vec![7u8; 100])
        );
    }
}

/// The store's errors as the crate's: only this module knows the store is sled.
impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => Error::io("metadata store", io),
            other => Error::Store(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store grown by churn (records written and deleted, as the journal does) shrinks when
    /// compacted, keeps every live record, and a crash at any step leaves a whole store.
    #[test]
    fn compaction_keeps_every_record_and_survives_interruption() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("meta");
        let live = |kv: &SledStore| kv.range(&[], None).unwrap();
        let expected = {
            let kv = SledStore::open(&dir, 1 << 20).unwrap();
            for i in 0u64..20_000 {
                let mut b = Batch::default();
                b.put(
                    [b"I".as_slice(), &(i % 2000).to_be_bytes()].concat(),
                    vec![i as u8; 90],
                );
                b.put([b"J".as_slice(), &i.to_be_bytes()].concat(), vec![7; 300]);
                if i >= 10 {
                    b.delete([b"J".as_slice(), &(i - 10).to_be_bytes()].concat());
                }
                kv.apply(b).unwrap();
                kv.flush().unwrap();
            }
            live(&kv)
        };
        let before = dir_bytes(&dir);
        let r = compact(&dir, 1 << 20).unwrap();
        assert_eq!(r.records, expected.len() as u64);
        assert_eq!(r.bytes_before, before);
        assert!(
            r.bytes_after * 2 < r.bytes_before,
            "compaction should at least halve a churned store: {r:?}"
        );
        assert_eq!(live(&SledStore::open(&dir, 1 << 20).unwrap()), expected);
        let recorded = std::fs::read_to_string(sibling(&dir, ".compacted")).unwrap();
        assert_eq!(recorded.trim(), r.bytes_after.to_string());

        // A crash between the two renames: the store is missing, the old one and the complete
        // copy are beside it. The copy takes its place.
        let (new, old) = (sibling(&dir, ".compacting"), sibling(&dir, ".old"));
        copy_tree(&dir, &new);
        std::fs::rename(&dir, &old).unwrap();
        let (kv, report) = SledStore::open_compacted(&dir, 1 << 20).unwrap();
        assert!(report.is_none(), "small store: no compaction at open");
        assert_eq!(live(&kv), expected);
        drop(kv);
        assert!(!new.exists() && !old.exists());

        // A crash while copying: the half copy is thrown away, the store is untouched.
        std::fs::create_dir_all(new.join("blobs")).unwrap();
        std::fs::write(new.join("db"), b"half a copy").unwrap();
        let (kv, _) = SledStore::open_compacted(&dir, 1 << 20).unwrap();
        assert_eq!(live(&kv), expected);
        assert!(!new.exists());
    }

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    #[test]
    fn sled_store_passes_conformance() {
        conformance::run_all(&|p| Box::new(SledStore::open(p, 8 << 20).unwrap()));
    }
}

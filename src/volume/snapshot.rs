//! Snapshots: read-only point-in-time views of the whole volume, under `/.snapshots/<name>/`.
//!
//! A snapshot copies the namespace and the extent maps, never data: every chunk a copied extent
//! names gains a reference, so the data stays shared until the live files change, and the
//! chunks only snapshots still use stay stored (and billed) until the snapshot is deleted.
//!
//! Snapshot `n`'s copy of live inode `i` is inode `2^63 | n << 40 | i`: the copies are ordinary
//! inode, directory-entry, extent and xattr records, found by the same code paths as live ones,
//! and one key range per record kind holds a whole snapshot (purging it is a range delete).
//! The `.snapshots` directory itself is inode `2^63 | 1`; the root does not list it, but a
//! lookup of the name finds it (a real `.snapshots` entry in the root cannot be made).
//!
//! Taking a snapshot commits every file's dirty data, then copies with the namespace and commit
//! locks held: nothing changes while it copies, so the copy is one consistent point in time
//! (writers wait for the copy; it is metadata only). Copying and purging take many batches;
//! the snapshot's record says which is under way, and opening the volume finishes a purge (a
//! half-made snapshot is purged, never shown). Snapshot records are journaled like any other
//! metadata, so they go off-site and come back with a recovery from the bucket.

use std::collections::{HashSet, VecDeque};

use serde::Serialize;

use super::*;
use crate::meta::{unix_now, SnapshotRecord, SnapshotState};

/// Name of the hidden read-only directory in the volume root that holds the snapshots.
pub const SNAPSHOT_DIR_NAME: &str = ".snapshots";
/// Inode numbers from here on belong to snapshots (live ones stay below [`MAX_LIVE_INO`]).
const SNAPSHOT_BASE: u64 = 1 << 63;
/// The `.snapshots` directory.
pub const SNAPSHOT_DIR_INO: u64 = SNAPSHOT_BASE | 1;
const ID_SHIFT: u32 = 40;
/// Live inode numbers must fit the low bits of a snapshot's inode numbers.
const MAX_LIVE_INO: u64 = (1 << ID_SHIFT) - 1;
/// Snapshot ids are 1..MAX_ID (id 0 is the range of the `.snapshots` directory).
const MAX_ID: u64 = (1 << (63 - ID_SHIFT)) - 1;
/// Records copied or purged per metadata batch (a few in unit tests, so that their copies and
/// purges span many pages, splitting files and directories).
const COPY_PAGE: usize = if cfg!(test) { 7 } else { 2000 };

pub fn is_snapshot_ino(ino: u64) -> bool {
    ino >= SNAPSHOT_BASE
}

/// Snapshot `id`'s copy of live inode `ino`.
fn snap_ino(id: u64, ino: u64) -> u64 {
    SNAPSHOT_BASE | id << ID_SHIFT | ino
}

/// Which snapshots the schedule keeps, as in restic's `forget`: the newest `last`, and the
/// newest snapshot of each of the newest `daily` days, `weekly` weeks (from Monday) and
/// `monthly` months, in UTC. One kept by any rule stays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        self.last == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }

    /// For times sorted newest first: whether each is kept.
    fn select(&self, newest_first: &[u64]) -> Vec<bool> {
        let mut keep = vec![false; newest_first.len()];
        let day = |t: u64| t / 86400;
        let rules: [(u32, &dyn Fn(u64) -> String); 4] = [
            (self.last, &|t| t.to_string()),
            (self.daily, &|t| day(t).to_string()),
            // 1970-01-01 was a Thursday: +3 makes weeks start on Monday.
            (self.weekly, &|t| ((day(t) + 3) / 7).to_string()),
            (self.monthly, &|t| {
                crate::clock::utc_date(t)[..7].to_string()
            }),
        ];
        for (mut n, bucket) in rules {
            let mut last = None;
            for (i, &t) in newest_first.iter().enumerate() {
                if n == 0 {
                    break;
                }
                let b = bucket(t);
                if last.as_ref() != Some(&b) {
                    keep[i] = true;
                    n -= 1;
                    last = Some(b);
                }
            }
        }
        keep
    }
}

/// One snapshot, as listed.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    pub id: u64,
    pub name: String,
    pub created_unix: u64,
    /// Taken by the schedule (pruned by the keep policy) rather than by hand.
    pub scheduled: bool,
}

/// The snapshots, for the status page.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapshotStatus {
    pub count: u64,
    pub newest_name: Option<String>,
    pub newest_unix: Option<u64>,
    pub oldest_unix: Option<u64>,
    /// Minutes between scheduled snapshots; 0 = no schedule.
    pub every_minutes: u64,
    /// Why the last scheduled snapshot or prune failed, until one succeeds.
    pub last_error: Option<String>,
}

#[derive(Default)]
pub(super) struct SnapshotsState {
    /// One snapshot is taken or deleted at a time.
    busy: Mutex<()>,
    schedule: Mutex<(u64, KeepPolicy)>,
    last_error: Mutex<Option<String>>,
}

/// A snapshot's name: a file name that does not start with a dot.
fn check_snapshot_name(name: &str) -> Result<()> {
    check_name(name.as_bytes())?;
    if name.starts_with('.') || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "bad snapshot name {name:?} (no leading dot, no control characters)"
        )));
    }
    Ok(())
}

/// "2026-12-09_194407Z": a time as part of a generated snapshot name (sorts by time).
fn stamp(unix: u64) -> String {
    crate::clock::utc_date(unix)
        .replace('T', "_")
        .replace(':', "")
}

impl Volume {
    // ------------------------------------------------------------------ read-only checks

    /// Refuses a change to a snapshot's inode (EROFS / 403).
    pub(super) fn check_writable(&self, ino: u64) -> Result<()> {
        if is_snapshot_ino(ino) {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    /// For a new name: not in a snapshot, and not the reserved name in the root.
    pub(super) fn check_new_name(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.check_writable(parent)?;
        if parent == ROOT_INO && name == SNAPSHOT_DIR_NAME.as_bytes() {
            return Err(Error::Exists);
        }
        Ok(())
    }

    /// For a name that goes away or is replaced (unlink, rename): nothing of the snapshots.
    pub(super) fn check_writable_name(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.check_writable(parent)?;
        if parent == ROOT_INO && name == SNAPSHOT_DIR_NAME.as_bytes() {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    /// For front-ends: an open for writing or truncating (EROFS inside a snapshot).
    pub fn check_open_for_write(&self, ino: u64) -> Result<()> {
        self.check_writable(ino)
    }

    /// The `.snapshots` directory's attributes before its first snapshot gave it a record.
    pub(super) fn snapshot_dir_inode(&self) -> Result<Inode> {
        let root = self.load_inode(ROOT_INO)?;
        let mut d = Inode::new(FileKind::Dir, 0o555, root.uid, root.gid, ROOT_INO);
        d.atime = root.ctime;
        d.mtime = root.ctime;
        d.ctime = root.ctime;
        Ok(d)
    }

    // ------------------------------------------------------------------ create, list, delete

    /// Takes a snapshot now (by hand); `None` names it `manual-<UTC time>`.
    pub fn snapshot_create(&self, name: Option<&str>) -> Result<SnapshotInfo> {
        let now = unix_now();
        let name = match name {
            Some(n) => n.to_string(),
            None => format!("manual-{}", stamp(now)),
        };
        self.take_snapshot(&name, false, now)
    }

    /// The snapshots that are ready, oldest first.
    pub fn snapshot_list(&self) -> Result<Vec<SnapshotInfo>> {
        Ok(self
            .snapshot_records()?
            .into_iter()
            .filter(|(_, r)| r.state == SnapshotState::Ready)
            .map(|(id, r)| SnapshotInfo {
                id,
                name: r.name,
                created_unix: r.created_unix,
                scheduled: r.scheduled,
            })
            .collect())
    }

    /// Deletes a snapshot: its name goes at once, its records and chunk references in pages.
    pub fn snapshot_delete(&self, name: &str) -> Result<()> {
        let _busy = self.snapshots.busy.lock();
        let (id, mut rec) = self
            .snapshot_records()?
            .into_iter()
            .find(|(_, r)| r.name == name && r.state == SnapshotState::Ready)
            .ok_or(Error::NotFound)?;
        {
            let _ns = self.ns.lock();
            let de = self.entry(SNAPSHOT_DIR_INO)?;
            let mut dd = de.data.write();
            let t = now();
            dd.attr.nlink = dd.attr.nlink.saturating_sub(1).max(2);
            dd.attr.mtime = t;
            dd.attr.ctime = t;
            rec.state = SnapshotState::Deleting;
            let mut b = Batch::default();
            b.put(meta::snapshot_key(id), rec.encode());
            b.delete(meta::dirent_key(SNAPSHOT_DIR_INO, name.as_bytes()));
            b.put(meta::inode_key(SNAPSHOT_DIR_INO), dd.attr.encode());
            self.apply(b)?;
        }
        self.changed(&[Changed::Entry {
            parent: SNAPSHOT_DIR_INO,
            name: name.as_bytes().to_vec(),
        }]);
        self.purge_snapshot(id)?;
        tracing::info!(snapshot = name, "snapshot deleted");
        Ok(())
    }

    fn snapshot_records(&self) -> Result<Vec<(u64, SnapshotRecord)>> {
        let p = meta::snapshot_prefix();
        self.kv
            .range(&p, prefix_end(&p).as_deref())?
            .into_iter()
            .map(|(k, v)| Ok((meta::key_tail_u64(&k), SnapshotRecord::decode(&v)?)))
            .collect()
    }

    fn take_snapshot(&self, name: &str, scheduled: bool, now_unix: u64) -> Result<SnapshotInfo> {
        check_snapshot_name(name)?;
        let _busy = self.snapshots.busy.lock();
        if self.snapshot_records()?.iter().any(|(_, r)| r.name == name) {
            return Err(Error::Exists);
        }
        let started = Instant::now();
        // Everything written before the call is part of the snapshot.
        self.commit_all(true)?;
        let _ns = self.ns.lock();
        let de = self.entry(SNAPSHOT_DIR_INO)?;
        let mut dd = de.data.write();
        let mut cs = self.commit.lock();
        if self.next_ino.load(Ordering::Relaxed) > MAX_LIVE_INO {
            return Err(Error::Unsupported(
                "snapshots of a volume with more than 2^40 inode numbers used",
            ));
        }
        let id = match self.kv.get(&meta::misc_key("next_snapshot"))? {
            Some(v) => u64::from_le_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt("counter next_snapshot".into()))?,
            ),
            None => 1,
        };
        if id > MAX_ID {
            return Err(Error::Unsupported("more than 2^23 snapshots taken"));
        }
        let mut rec = SnapshotRecord {
            name: name.to_string(),
            created_unix: now_unix,
            scheduled,
            state: SnapshotState::Creating,
        };
        let mut b = Batch::default();
        b.put(meta::snapshot_key(id), rec.encode());
        b.put(
            meta::misc_key("next_snapshot"),
            (id + 1).to_le_bytes().to_vec(),
        );
        self.kv.apply(b)?;
        let (files, records) = match self.copy_tree(id, &mut cs) {
            Ok(n) => n,
            Err(e) => {
                // Take back what was copied now (a restart would too), so that no chunk keeps
                // a reference from a snapshot that will never exist.
                drop((cs, dd, _ns));
                if let Err(p) = self.purge_snapshot(id) {
                    tracing::error!(snapshot = name, "removing a failed snapshot: {p}");
                }
                return Err(e);
            }
        };
        // Last: the snapshot becomes visible and ready in one batch.
        let t = now();
        dd.attr.nlink += 1;
        dd.attr.mtime = t;
        dd.attr.ctime = t;
        rec.state = SnapshotState::Ready;
        let mut b = Batch::default();
        b.put(meta::snapshot_key(id), rec.encode());
        b.put(
            meta::dirent_key(SNAPSHOT_DIR_INO, name.as_bytes()),
            meta::encode_dirent(snap_ino(id, ROOT_INO), FileKind::Dir),
        );
        b.put(meta::inode_key(SNAPSHOT_DIR_INO), dd.attr.encode());
        self.kv.apply(b)?;
        self.kv.flush()?;
        drop(cs);
        drop(dd);
        tracing::info!(
            snapshot = name,
            scheduled,
            files,
            records,
            ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        Ok(SnapshotInfo {
            id,
            name: name.to_string(),
            created_unix: now_unix,
            scheduled,
        })
    }

    /// Copies everything reachable from the root into snapshot `id`'s inode range, a page of
    /// records per batch, adding a reference to each chunk a copied extent names. Returns the
    /// inodes and records copied.
    fn copy_tree(&self, id: u64, cs: &mut CommitState) -> Result<(u64, u64)> {
        let mut page = CopyPage::default();
        let mut queue = VecDeque::from([ROOT_INO]);
        // Files with more than one name are copied once.
        let mut linked = HashSet::new();
        let mut inodes = 0u64;
        while let Some(dir) = queue.pop_front() {
            self.copy_inode(id, dir, &mut page, cs)?;
            inodes += 1;
            let p = meta::dirent_prefix(dir);
            self.scan_pages(&p, |entries| {
                for (k, v) in entries {
                    let (child, kind) = meta::decode_dirent(&v)?;
                    page.put(
                        meta::dirent_key(snap_ino(id, dir), &k[p.len()..]),
                        meta::encode_dirent(snap_ino(id, child), kind),
                    );
                    if kind == FileKind::Dir {
                        queue.push_back(child);
                    } else if self.load_inode(child)?.nlink < 2 || linked.insert(child) {
                        self.copy_inode(id, child, &mut page, cs)?;
                        inodes += 1;
                    }
                    page.flush_if_full(self, cs)?;
                }
                Ok(())
            })?;
        }
        let records = page.total + page.b.len() as u64;
        page.flush(self, cs)?;
        Ok((inodes, records))
    }

    /// Copies one inode's record, xattrs and extents into `page` (flushing it as it fills: a
    /// large file has many extents).
    fn copy_inode(
        &self,
        id: u64,
        ino: u64,
        page: &mut CopyPage,
        cs: &mut CommitState,
    ) -> Result<()> {
        let mut attr = self.load_inode(ino)?;
        attr.parent = if ino == ROOT_INO {
            SNAPSHOT_DIR_INO
        } else {
            snap_ino(id, attr.parent)
        };
        let to = snap_ino(id, ino);
        page.put(meta::inode_key(to), attr.encode());
        let xp = meta::xattr_prefix(ino);
        for (k, v) in self.kv.range(&xp, prefix_end(&xp).as_deref())? {
            page.put(meta::xattr_key(to, &k[xp.len()..]), v);
        }
        self.scan_pages(&meta::extent_prefix(ino), |extents| {
            for (k, v) in extents {
                let x = Extent::decode(&v)?;
                *page.refs.entry(x.chunk).or_default() += 1;
                page.put(meta::extent_key(to, meta::key_tail_u64(&k)), v);
                page.flush_if_full(self, cs)?;
            }
            Ok(())
        })
    }

    /// Calls `f` with the records under `prefix`, [`COPY_PAGE`] at a time, in key order.
    fn scan_pages(
        &self,
        prefix: &[u8],
        mut f: impl FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> Result<()>,
    ) -> Result<()> {
        let end = prefix_end(prefix);
        let mut start = prefix.to_vec();
        loop {
            let page = self.kv.range_limit(&start, end.as_deref(), COPY_PAGE)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            start = [last.0.as_slice(), &[0]].concat();
            f(page)?;
        }
    }

    /// Removes snapshot `id`'s records (its name is already gone) and the chunk references
    /// of its extents, then the snapshot's own record.
    fn purge_snapshot(&self, id: u64) -> Result<()> {
        let (lo, hi) = (snap_ino(id, 0), snap_ino(id + 1, 0));
        self.entries.lock().retain(|ino, _| !(lo..hi).contains(ino));
        let ranges: [fn(u64) -> Vec<u8>; 4] = [
            meta::extent_prefix,
            meta::xattr_prefix,
            meta::dirent_prefix,
            meta::inode_key,
        ];
        for (i, key) in ranges.into_iter().enumerate() {
            let extents = i == 0;
            loop {
                let recs = self.kv.range_limit(&key(lo), Some(&key(hi)), COPY_PAGE)?;
                if recs.is_empty() {
                    break;
                }
                let mut b = Batch::default();
                let mut refs: HashMap<ChunkId, i64> = HashMap::new();
                for (k, v) in recs {
                    if extents {
                        *refs.entry(Extent::decode(&v)?.chunk).or_default() -= 1;
                    }
                    b.delete(k);
                }
                self.apply_extent_batch(b, refs, 0)?;
            }
        }
        let mut b = Batch::default();
        b.delete(meta::snapshot_key(id));
        self.apply(b)?;
        self.kv.flush()
    }

    /// At open: finishes what a crash interrupted (purges half-made and half-deleted snapshots).
    pub(super) fn finish_snapshots(&self) -> Result<()> {
        for (id, r) in self.snapshot_records()? {
            if r.state != SnapshotState::Ready {
                tracing::info!(
                    snapshot = r.name,
                    state = ?r.state,
                    "finishing a snapshot's removal interrupted by a restart"
                );
                self.purge_snapshot(id)?;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ schedule

    /// Takes a snapshot every `every_minutes` (0: never) and keeps scheduled ones per `keep`.
    pub fn set_snapshot_schedule(&self, every_minutes: u64, keep: KeepPolicy) {
        *self.snapshots.schedule.lock() = (every_minutes, keep);
    }

    /// Takes a scheduled snapshot when one is due and deletes scheduled snapshots the keep
    /// policy no longer keeps (never hand-made ones). Cheap when nothing is due.
    pub fn snapshot_tick(&self) -> Result<()> {
        let (every, keep) = *self.snapshots.schedule.lock();
        if every == 0 {
            return Ok(());
        }
        let r = self.run_schedule(unix_now(), every, keep);
        *self.snapshots.last_error.lock() = r.as_ref().err().map(|e| e.to_string());
        if let Err(e) = &r {
            tracing::error!("scheduled snapshot: {e}");
        }
        r
    }

    fn run_schedule(&self, now_unix: u64, every_minutes: u64, keep: KeepPolicy) -> Result<()> {
        let newest = self
            .snapshot_list()?
            .iter()
            .filter(|s| s.scheduled)
            .map(|s| s.created_unix)
            .max();
        if newest.is_none_or(|t| now_unix >= t + every_minutes * 60) {
            self.take_snapshot(&format!("auto-{}", stamp(now_unix)), true, now_unix)?;
        }
        let mut scheduled: Vec<SnapshotInfo> = self
            .snapshot_list()?
            .into_iter()
            .filter(|s| s.scheduled)
            .collect();
        scheduled.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then(b.id.cmp(&a.id)));
        let times: Vec<u64> = scheduled.iter().map(|s| s.created_unix).collect();
        for (s, kept) in scheduled.iter().zip(keep.select(&times)) {
            if !kept {
                self.snapshot_delete(&s.name)?;
            }
        }
        Ok(())
    }

    pub fn snapshot_status(&self) -> SnapshotStatus {
        let list = self.snapshot_list().unwrap_or_default();
        let newest = list.iter().max_by_key(|s| (s.created_unix, s.id));
        SnapshotStatus {
            count: list.len() as u64,
            newest_name: newest.map(|s| s.name.clone()),
            newest_unix: newest.map(|s| s.created_unix),
            oldest_unix: list.iter().map(|s| s.created_unix).min(),
            every_minutes: self.snapshots.schedule.lock().0,
            last_error: self.snapshots.last_error.lock().clone(),
        }
    }
}

/// Records copied into a snapshot, applied a page at a time with their chunk references.
#[derive(Default)]
struct CopyPage {
    b: Batch,
    refs: HashMap<ChunkId, i64>,
    total: u64,
}

impl CopyPage {
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.b.put(k, v);
    }

    fn flush_if_full(&mut self, vol: &Volume, cs: &mut CommitState) -> Result<()> {
        if self.b.len() >= COPY_PAGE {
            self.flush(vol, cs)?;
        }
        Ok(())
    }

    fn flush(&mut self, vol: &Volume, cs: &mut CommitState) -> Result<()> {
        let mut b = std::mem::take(&mut self.b);
        let refs = std::mem::take(&mut self.refs);
        self.total += b.len() as u64;
        vol.apply_refs_with_data(cs, &mut b, refs, &HashMap::new(), 0, &HashMap::new())?;
        vol.kv.apply(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KdfParams;
    use crate::volume::testutil::{read_path, write, ME};

    const DAY: u64 = 86400;

    fn data(seed: u64, len: usize) -> Vec<u8> {
        use rand::{RngCore, SeedableRng};
        let mut v = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    fn volume(tmp: &tempfile::TempDir) -> Arc<Volume> {
        let dir = tmp.path().join("vol");
        if !Volume::exists(&dir) {
            let params = ChunkerParams {
                min_size: 16 << 10,
                avg_size: 64 << 10,
                max_size: 256 << 10,
            };
            Volume::create(&dir, "pw", params, KdfParams::for_tests()).unwrap();
        }
        Volume::open(&dir, "pw", VolumeOptions::default()).unwrap()
    }

    /// Every chunk record's count equals the extents naming it; no extent names a chunk the
    /// index lacks. Returns the number of chunk records.
    fn check_refs(vol: &Volume) -> usize {
        let mut uses: HashMap<ChunkId, u64> = HashMap::new();
        let ep = meta::extent_prefix(0)[..1].to_vec();
        for (_, v) in vol.kv.range(&ep, prefix_end(&ep).as_deref()).unwrap() {
            *uses.entry(Extent::decode(&v).unwrap().chunk).or_default() += 1;
        }
        let cp = meta::chunk_prefix();
        let index = vol.kv.range(&cp, prefix_end(&cp).as_deref()).unwrap();
        for (k, v) in &index {
            let id = ChunkId(k[1..].try_into().unwrap());
            let r = ChunkRecord::decode(v).unwrap();
            assert_eq!(uses.remove(&id), Some(r.refs), "chunk {id}");
        }
        assert!(uses.is_empty(), "extents name chunks not indexed: {uses:?}");
        index.len()
    }

    fn records_of(vol: &Volume, id: u64) -> usize {
        let (lo, hi) = (snap_ino(id, 0), snap_ino(id + 1, 0));
        [
            meta::inode_key as fn(u64) -> Vec<u8>,
            meta::dirent_prefix,
            meta::extent_prefix,
            meta::xattr_prefix,
        ]
        .iter()
        .map(|k| vol.kv.range(&k(lo), Some(&k(hi))).unwrap().len())
        .sum()
    }

    #[test]
    fn a_snapshot_keeps_the_old_contents_is_read_only_and_purges_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = volume(&tmp);
        let d = vol.mkdir(ROOT_INO, b"d", 0o755, ME).unwrap().ino;
        let (a, b) = (data(1, 700 << 10), data(2, 300 << 10));
        let fa = write(&vol, d, "a", &a);
        write(&vol, ROOT_INO, "b", &b);
        write(&vol, ROOT_INO, "b-again", &b); // dedup: chunks with two references
        vol.link(fa, ROOT_INO, b"a-link").unwrap();
        vol.setxattr(fa, b"user.k", b"v", XattrSet::Any).unwrap();
        vol.symlink(d, b"s", b"../b", ME).unwrap();
        // Dirty data written before the call is in the snapshot.
        let (tail, fh) = vol.create_file(ROOT_INO, b"tail", 0o644, ME).unwrap();
        vol.write(tail.ino, 0, b"not yet committed").unwrap();
        let stored = vol.stats().unwrap().stats;
        let chunks = check_refs(&vol);

        let info = vol.snapshot_create(Some("s1")).unwrap();
        vol.release(fh).unwrap();
        assert_eq!(
            vol.snapshot_create(Some("s1")).unwrap_err().errno(),
            libc::EEXIST
        );
        // No chunk but the one of the dirty bytes it committed first.
        assert_eq!(check_refs(&vol), chunks + 1);
        let after = vol.stats().unwrap().stats;
        assert_eq!(after.logical_bytes, stored.logical_bytes + 17);
        assert!(after.stored_bytes - stored.stored_bytes < 100, "{after:?}");

        // The live files change completely.
        vol.unlink(d, b"a").unwrap();
        vol.unlink(ROOT_INO, b"a-link").unwrap();
        let e = vol.lookup(ROOT_INO, b"b").unwrap().ino;
        vol.write(e, 0, &data(3, 300 << 10)).unwrap();
        vol.fsync(e).unwrap();

        let root = "/.snapshots/s1";
        assert_eq!(read_path(&vol, &format!("{root}/d/a")), a);
        assert_eq!(read_path(&vol, &format!("{root}/a-link")), a);
        assert_eq!(read_path(&vol, &format!("{root}/b")), b);
        assert_eq!(
            read_path(&vol, &format!("{root}/tail")),
            b"not yet committed"
        );
        let sa = vol.resolve(format!("{root}/d/a").as_bytes()).unwrap();
        let sl = vol.resolve(format!("{root}/a-link").as_bytes()).unwrap();
        assert_eq!(
            (sa.ino, sa.inode.nlink),
            (sl.ino, 2),
            "one inode, two names"
        );
        assert_eq!(vol.getxattr(sa.ino, b"user.k").unwrap(), b"v");
        let s = vol.resolve(format!("{root}/d/s").as_bytes()).unwrap();
        assert_eq!(vol.readlink(s.ino).unwrap(), b"../b");
        let sroot = vol.resolve(root.as_bytes()).unwrap();
        assert_eq!(sroot.inode.parent, SNAPSHOT_DIR_INO);
        assert_eq!(vol.lookup(sroot.ino, b"..").unwrap().ino, SNAPSHOT_DIR_INO);
        assert_eq!(vol.getattr(SNAPSHOT_DIR_INO).unwrap().inode.nlink, 3);
        // Hidden in the root's listing.
        let fh = vol.opendir(ROOT_INO).unwrap();
        let names: Vec<Vec<u8>> = vol
            .readdir(fh, 0, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(!names.contains(&SNAPSHOT_DIR_NAME.as_bytes().to_vec()));

        // Read-only, every way.
        let rofs = |r: Result<()>| assert_eq!(r.unwrap_err().errno(), libc::EROFS);
        rofs(vol.write(sa.ino, 0, b"x").map(|_| ()));
        rofs(vol.unlink(sroot.ino, b"b"));
        rofs(vol.rmdir(ROOT_INO, SNAPSHOT_DIR_NAME.as_bytes()));
        rofs(vol.mkdir(sroot.ino, b"new", 0o755, ME).map(|_| ()));
        rofs(vol.rename(sroot.ino, b"b", ROOT_INO, b"stolen", RenameMode::Replace));
        rofs(vol.rename(ROOT_INO, b"b", sroot.ino, b"planted", RenameMode::Replace));
        rofs(vol.link(sa.ino, ROOT_INO, b"l").map(|_| ()));
        rofs(vol.setxattr(sa.ino, b"user.k", b"w", XattrSet::Any));
        rofs(vol.removexattr(sa.ino, b"user.k"));
        let chmod = SetAttr {
            mode: Some(0o777),
            ..SetAttr::default()
        };
        rofs(vol.setattr(sa.ino, &chmod).map(|_| ()));
        rofs(vol.copy_range(e, 0, sa.ino, 0, 10).map(|_| ()));
        let mkdir_reserved = vol.mkdir(ROOT_INO, SNAPSHOT_DIR_NAME.as_bytes(), 0o755, ME);
        assert_eq!(mkdir_reserved.unwrap_err().errno(), libc::EEXIST);
        // Cloning out of a snapshot is the cheap way back.
        let (back, fh) = vol.create_file(ROOT_INO, b"back", 0o644, ME).unwrap();
        vol.copy_range(sa.ino, 0, back.ino, 0, a.len() as u64)
            .unwrap();
        vol.release(fh).unwrap();
        assert_eq!(read_path(&vol, "/back"), a);

        vol.snapshot_delete("s1").unwrap();
        assert_eq!(vol.snapshot_delete("s1").unwrap_err().errno(), libc::ENOENT);
        assert_eq!(records_of(&vol, info.id), 0);
        assert!(vol.resolve(root.as_bytes()).is_err());
        assert_eq!(vol.getattr(SNAPSHOT_DIR_INO).unwrap().inode.nlink, 2);
        check_refs(&vol);
        assert_eq!(read_path(&vol, "/back"), a, "the clone keeps its chunks");
    }

    #[test]
    fn a_restart_purges_a_snapshot_left_half_made_or_half_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = volume(&tmp);
        for i in 0..30 {
            write(&vol, ROOT_INO, &format!("f{i}"), &data(i, 50 << 10));
        }
        let chunks = check_refs(&vol);
        let stats = vol.stats().unwrap().stats;
        let half_made = vol.snapshot_create(Some("half-made")).unwrap();
        let half_deleted = vol.snapshot_create(Some("half-deleted")).unwrap();
        let kept = vol.snapshot_create(Some("kept")).unwrap();
        // As a crash would leave them: one copied but never marked ready (nor named), one
        // marked for deletion with its records still there.
        for (info, state) in [
            (&half_made, SnapshotState::Creating),
            (&half_deleted, SnapshotState::Deleting),
        ] {
            let rec = SnapshotRecord {
                name: info.name.clone(),
                created_unix: info.created_unix,
                scheduled: false,
                state,
            };
            let mut b = Batch::default();
            b.put(meta::snapshot_key(info.id), rec.encode());
            b.delete(meta::dirent_key(SNAPSHOT_DIR_INO, info.name.as_bytes()));
            vol.kv.apply(b).unwrap();
        }
        assert!(records_of(&vol, half_made.id) > 60);
        assert_eq!(
            vol.snapshot_list().unwrap().len(),
            1,
            "only ready ones are listed"
        );
        drop(vol);
        let vol = volume(&tmp);
        assert_eq!(records_of(&vol, half_made.id), 0);
        assert_eq!(records_of(&vol, half_deleted.id), 0);
        assert!(records_of(&vol, kept.id) > 60);
        assert_eq!(vol.snapshot_list().unwrap()[0].name, "kept");
        assert_eq!(check_refs(&vol), chunks);
        vol.snapshot_delete("kept").unwrap();
        assert_eq!(check_refs(&vol), chunks);
        assert_eq!(vol.stats().unwrap().stats, stats);
        assert!(vol.snapshot_records().unwrap().is_empty());
    }

    #[test]
    fn the_schedule_keeps_what_the_policy_says_and_never_prunes_manual_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = volume(&tmp);
        write(&vol, ROOT_INO, "f", b"some data");
        vol.snapshot_create(Some("by-hand")).unwrap();
        let keep = KeepPolicy {
            last: 0,
            daily: 3,
            weekly: 2,
            monthly: 0,
        };
        // Every 6 hours for 30 simulated days, a schedule of one a day: each tick may take one.
        let start = 1_767_614_400; // Monday 2026-01-05T12:00:00Z
        let mut taken = 0;
        for tick in 0..(30 * 4) {
            let now = start + tick * 6 * 3600;
            let newest = || {
                let list = vol.snapshot_list().unwrap();
                list.iter().filter(|s| s.scheduled).map(|s| s.id).max()
            };
            let before = newest();
            vol.run_schedule(now, 1440, keep).unwrap();
            taken += (newest() != before) as u32;
            let n = vol.snapshot_list().unwrap().len();
            assert!(n <= 1 + 3 + 2, "tick {tick}: {n} snapshots");
        }
        assert_eq!(taken, 30, "one a day");
        let list = vol.snapshot_list().unwrap();
        let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
        // The last three days, and the Sunday before (the newest week's newest is the newest
        // day): 2026-02-03 is the 30th day, a Tuesday.
        assert_eq!(names[0], "by-hand");
        assert_eq!(
            &names[1..],
            [
                "auto-2026-02-01_120000Z",
                "auto-2026-02-02_120000Z",
                "auto-2026-02-03_120000Z"
            ]
        );
        check_refs(&vol);
    }

    #[test]
    fn keep_policy_keeps_the_newest_of_each_period() {
        // One snapshot a day at noon for 100 days, from Monday 2026-01-05.
        let start = 1_767_614_400; // 2026-01-05T12:00:00Z
        let mut times: Vec<u64> = (0..100).map(|d| start + d * DAY).collect();
        times.reverse();
        let keep = KeepPolicy {
            last: 2,
            daily: 7,
            weekly: 4,
            monthly: 3,
        };
        let kept: Vec<u64> = times
            .iter()
            .zip(keep.select(&times))
            .filter(|(_, k)| *k)
            .map(|(t, _)| *t)
            .collect();
        let newest = times[0];
        // 7 daily (covering the 2 last); weekly: the Sundays 2, 9 and 16 days back (the
        // newest week's newest is today, a Tuesday); monthly: March 31 and February 28.
        let days_back: Vec<u64> = kept.iter().map(|t| (newest - t) / DAY).collect();
        assert_eq!(days_back, [0, 1, 2, 3, 4, 5, 6, 9, 14, 16, 45]);
        assert!(KeepPolicy::default().select(&times).iter().all(|k| !k));
    }

    #[test]
    fn generated_names_sort_by_time_and_are_valid() {
        let a = format!("auto-{}", stamp(1_767_614_400));
        assert_eq!(a, "auto-2026-01-05_120000Z");
        check_snapshot_name(&a).unwrap();
        assert!(stamp(1_767_614_400) < stamp(1_767_614_401));
        assert!(check_snapshot_name(".hidden").is_err());
        assert!(check_snapshot_name("a/b").is_err());
        assert!(check_snapshot_name("").is_err());
    }
}

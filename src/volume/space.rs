//! The space a file takes: what `st_blocks` counts and what `fallocate` reserves.
//!
//! ## st_blocks
//! A file's blocks are what its extents cover (holes, and all-zero chunks, which commits store
//! as holes, take nothing), plus its written bytes not yet committed, plus its preallocated
//! ranges, in 512-byte units. The extent bytes of each file are a counter kept next to its
//! extent map (`M space.<ino>`), changed in the same metadata batch as the map (every commit,
//! punch, truncate and clone passes its change through [`Volume::note_extents`]), so a getattr
//! reads one key instead of walking the map. A file without the counter (written before it
//! existed, or whose extents a snapshot copied) is counted by one walk, and the result kept.
//!
//! ## Reservations
//! `fallocate` (mode 0 and KEEP_SIZE) reserves the range's bytes that are neither stored nor
//! written yet: they count against the tenant quota (and as used in statfs) from then on,
//! and a preallocation that does not fit is refused with ENOSPC up front, as on a local
//! filesystem. Without a quota, the reservation must fit the local disk's free space. A
//! reservation is counted at the range's full size (a later write may compress or
//! deduplicate to less: the reservation is the promise that it fits even if it does not).
//! It is released, range by range, when the range is written (the write then counts as dirty
//! data, later as stored bytes), punched, zeroed, truncated away, or cloned over, and when the
//! file is deleted. Reservations are metadata (`M falloc.<ino>`: the file's reserved ranges),
//! journaled like the rest: they survive a restart and a disaster recovery. A release by a
//! write that was never made durable may be lost in a crash with that write: the range is
//! then reserved again, which is the conservative side.

use std::sync::atomic::Ordering;

use super::*;

/// Separate reserved ranges one file may hold: bounds the record rewritten at each change
/// (a hostile pattern of tiny preallocations with gaps between them).
const MAX_RESERVED_RANGES: usize = 4096;

#[derive(Default)]
pub(super) struct SpaceState {
    /// Preallocated ranges not written yet, per inode: sorted, disjoint, non-empty.
    reserved: Mutex<HashMap<u64, Vec<(u64, u64)>>>,
    /// Their bytes, over all files (counts against the quota).
    total: AtomicU64,
}

fn extent_bytes_key(ino: u64) -> Vec<u8> {
    meta::misc_key(&format!("space.{ino}"))
}

fn reserved_key(ino: u64) -> Vec<u8> {
    meta::misc_key(&format!("falloc.{ino}"))
}

fn encode_ranges(r: &[(u64, u64)]) -> Vec<u8> {
    r.iter()
        .flat_map(|(s, e)| s.to_le_bytes().into_iter().chain(e.to_le_bytes()))
        .collect()
}

fn decode_ranges(v: &[u8]) -> Result<Vec<(u64, u64)>> {
    if !v.len().is_multiple_of(16) {
        return Err(Error::Corrupt("reserved ranges record".into()));
    }
    let u = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
    Ok(v.chunks(16).map(|c| (u(&c[..8]), u(&c[8..]))).collect())
}

fn total_len(r: &[(u64, u64)]) -> u64 {
    r.iter().map(|(s, e)| e - s).sum()
}

/// `from` without the parts `cut` (sorted, disjoint) covers.
fn subtract(from: &[(u64, u64)], cut: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s, e) in from {
        let mut at = s;
        for &(cs, ce) in cut.iter().filter(|(cs, ce)| *ce > s && *cs < e) {
            if cs > at {
                out.push((at, cs));
            }
            at = at.max(ce);
        }
        if at < e {
            out.push((at, e));
        }
    }
    out
}

impl Volume {
    /// Reads every file's reserved ranges (at open).
    pub(super) fn load_reservations(&self) -> Result<()> {
        let p = meta::misc_key("falloc.");
        let mut map = self.space.reserved.lock();
        let mut total = 0;
        for (k, v) in self.kv.range(&p, prefix_end(&p).as_deref())? {
            let ino = std::str::from_utf8(&k[p.len()..])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::Corrupt("reserved ranges key".into()))?;
            let r = decode_ranges(&v)?;
            total += total_len(&r);
            map.insert(ino, r);
        }
        self.space.total.store(total, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes preallocated by fallocate and not written yet, over all files.
    pub fn reserved_bytes(&self) -> u64 {
        self.space.total.load(Ordering::Relaxed)
    }

    /// Extent bytes of `ino` before the batch being built: its counter, or one walk.
    fn stored_extent_bytes(&self, ino: u64) -> Result<(u64, bool)> {
        if let Some(v) = self.kv.get(&extent_bytes_key(ino))? {
            let b: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| Error::Corrupt(format!("space counter of inode {ino}")))?;
            return Ok((u64::from_le_bytes(b), true));
        }
        let p = meta::extent_prefix(ino);
        let end = prefix_end(&p);
        let mut from = p.clone();
        let mut sum = 0u64;
        loop {
            let page = self.kv.range_limit(&from, end.as_deref(), DELETE_PAGE)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            from = last.clone();
            from.push(0);
            for (_, v) in &page {
                sum += Extent::decode(v)?.len as u64;
            }
        }
        Ok((sum, false))
    }

    /// Records in `b` that the extent map of `ino` changes by `delta` bytes in the same batch
    /// (called with the file's commit gate held, before `b` is applied).
    pub(super) fn note_extents(&self, b: &mut Batch, ino: u64, delta: i64) -> Result<()> {
        let (now, counted) = self.stored_extent_bytes(ino)?;
        if delta == 0 && counted {
            return Ok(());
        }
        let new = now.saturating_add_signed(delta);
        b.put(extent_bytes_key(ino), new.to_le_bytes().to_vec());
        Ok(())
    }

    /// Forgets the space records of a deleted inode (in its last batch).
    pub(super) fn forget_space(&self, b: &mut Batch, ino: u64) {
        b.delete(extent_bytes_key(ino));
        if let Some(r) = self.space.reserved.lock().remove(&ino) {
            self.space.total.fetch_sub(total_len(&r), Ordering::Relaxed);
            b.delete(reserved_key(ino));
        }
    }

    /// `st_blocks` of a file (512-byte units): extents + uncommitted bytes + reservations.
    /// Other kinds report their size.
    pub fn blocks(&self, a: &Attr) -> u64 {
        if a.inode.kind != FileKind::File {
            return a.blocks();
        }
        match self.file_blocks(a) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(ino = a.ino, "st_blocks: {e}");
                a.blocks()
            }
        }
    }

    fn file_blocks(&self, a: &Attr) -> Result<u64> {
        let e = self.entries.lock().get(&a.ino).cloned();
        let mut dirty = 0;
        if let Some(e) = &e {
            let d = e.data.read();
            dirty = d.dirty_bytes
                + d.committing
                    .iter()
                    .flat_map(|c| c.values())
                    .map(|v| v.len() as u64)
                    .sum::<u64>();
        }
        // Under the gate no extent change is under way: a count made there can be kept.
        let gate = e.as_ref().and_then(|e| e.commit_gate.try_lock());
        let (extent, counted) = self.stored_extent_bytes(a.ino)?;
        if !counted && gate.is_some() {
            let mut b = Batch::default();
            b.put(extent_bytes_key(a.ino), extent.to_le_bytes().to_vec());
            self.kv.apply(b)?;
        }
        drop(gate);
        let (reserved, reserved_end) = match self.space.reserved.lock().get(&a.ino) {
            Some(r) => (total_len(r), r.last().map_or(0, |l| l.1)),
            None => (0, 0),
        };
        // Committed and dirty bytes may overlap (an overwrite not committed yet): never more
        // than the file's size, plus what is reserved beyond it.
        let cap = a.inode.size.max(reserved_end);
        Ok((extent + dirty + reserved).min(cap).div_ceil(512))
    }

    /// fallocate mode 0 / KEEP_SIZE of `offset..end`: reserves what of it is neither stored,
    /// written nor reserved yet, or refuses with ENOSPC when that does not fit (the quota's
    /// room, or without a quota the local disk's free space). Called with the file's data
    /// lock held.
    pub(super) fn reserve(&self, ino: u64, d: &FileData, offset: u64, end: u64) -> Result<()> {
        let mut taken: Vec<(u64, u64)> = self
            .extents(ino, offset, end)?
            .into_iter()
            .map(|(o, x)| (o, o + x.len as u64))
            .collect();
        taken.extend(
            d.committing
                .iter()
                .flat_map(|c| c.iter())
                .chain(d.dirty.iter())
                .map(|(o, v)| (*o, *o + v.len() as u64)),
        );
        let mut map = self.space.reserved.lock();
        let mine = map.get(&ino).cloned().unwrap_or_default();
        taken.extend(mine.iter().copied());
        let taken = merge_intervals(taken, offset, end);
        let new = subtract(&[(offset, end)], &taken);
        let want = total_len(&new);
        if want == 0 {
            return Ok(());
        }
        let room = match self.quota() {
            Some(q) => q.saturating_sub(self.quota_used()),
            None => {
                let s = nix::sys::statvfs::statvfs(&self.dir)
                    .map_err(|e| Error::io("statvfs", e.into()))?;
                (s.blocks_available() as u64 * s.fragment_size() as u64)
                    .saturating_sub(self.reserved_bytes())
            }
        };
        if want > room {
            return Err(Error::NoSpace(format!(
                "fallocate of {want} bytes refused: {room} bytes left{}",
                if self.quota().is_some() {
                    " under the tenant quota"
                } else {
                    " on the local disk"
                }
            )));
        }
        let mut all = mine;
        all.extend(new);
        let all = merge_intervals(all, 0, u64::MAX);
        if all.len() > MAX_RESERVED_RANGES {
            return Err(Error::NoSpace(format!(
                "fallocate refused: a file may hold at most {MAX_RESERVED_RANGES} separate \
                 preallocated ranges"
            )));
        }
        let mut b = Batch::default();
        b.put(reserved_key(ino), encode_ranges(&all));
        self.kv.apply(b)?;
        map.insert(ino, all);
        self.space.total.fetch_add(want, Ordering::Relaxed);
        Ok(())
    }

    /// Releases what `ino` has reserved inside `start..end` (written, punched, truncated away
    /// or cloned over).
    pub(super) fn release_reserved(&self, ino: u64, start: u64, end: u64) -> Result<()> {
        if self.reserved_bytes() == 0 {
            return Ok(());
        }
        let mut map = self.space.reserved.lock();
        let Some(r) = map.get(&ino) else {
            return Ok(());
        };
        let left = subtract(r, &[(start, end)]);
        let freed = total_len(r) - total_len(&left);
        if freed == 0 {
            return Ok(());
        }
        let mut b = Batch::default();
        if left.is_empty() {
            b.delete(reserved_key(ino));
        } else {
            b.put(reserved_key(ino), encode_ranges(&left));
        }
        self.kv.apply(b)?;
        if left.is_empty() {
            map.remove(&ino);
        } else {
            map.insert(ino, left);
        }
        self.space.total.fetch_sub(freed, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_cuts_ranges() {
        assert_eq!(
            subtract(&[(0, 100)], &[(10, 20), (50, 200)]),
            [(0, 10), (20, 50)]
        );
        assert_eq!(
            subtract(&[(0, 10), (20, 30)], &[(5, 25)]),
            [(0, 5), (25, 30)]
        );
        assert_eq!(subtract(&[(0, 10)], &[]), [(0, 10)]);
        assert!(subtract(&[(0, 10)], &[(0, 10)]).is_empty());
    }

    #[test]
    fn ranges_round_trip() {
        let r = vec![(0, 4096), (1 << 40, u64::MAX)];
        assert_eq!(decode_ranges(&encode_ranges(&r)).unwrap(), r);
        assert!(decode_ranges(&[1, 2, 3]).is_err());
    }
}

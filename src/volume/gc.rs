//! Garbage collection, the core's half: finds packs that no chunk record names any more (or
//! only a little of), rewrites the live blobs of sparse ones into new packs, and drops the
//! dead ones here (state `Doomed`, local file removed). Deleting their off-site objects once
//! that is safe is the tiering side's job (src/tiering/gc.rs); docs/RETENTION.md tells the
//! rules.
//!
//! Why it is safe against writers: chunk records only ever point into packs that were being
//! appended to when the record was written. [`Volume::gc_horizon`] waits for every commit in
//! flight and takes the open pack's id, so every pack below it is complete: a chunk record
//! that names it exists now or never will. Relocations happen under the commit lock and only
//! if the record still points where it did when the blob was copied.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::*;

/// The knobs of one pass (from `[gc]`).
#[derive(Clone, Debug)]
pub struct GcPolicy {
    /// Packs whose live bytes are below this share of their size are rewritten.
    pub min_live_percent: u8,
    /// Fuller packs are rewritten too, emptiest first, while the dead bytes of all kept packs
    /// exceed this share of their size (restic's `prune --max-unused` bound; 100 = off).
    pub max_unused_percent: u8,
    /// At most this many live bytes are rewritten per pass (bounds one pass's work).
    pub max_rewrite_bytes: u64,
}

/// What the core's half of a pass found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CorePass {
    /// Complete packs looked at (sealed, uploaded or off-site only).
    pub packs_considered: u64,
    /// Packs that held no live data, or were emptied by rewriting, now dropped.
    pub packs_dropped: u64,
    pub packs_rewritten: u64,
    /// Live stored bytes copied into new packs.
    pub bytes_rewritten: u64,
    /// Bytes of the dropped packs (their local copies are gone now; the off-site objects
    /// follow when that is safe).
    pub bytes_dropped: u64,
    /// Local disk freed (dropped packs that still had a local file).
    pub local_bytes_freed: u64,
    /// Dead bytes left in packs kept (above the rewrite threshold and within the unused bound,
    /// or over this pass's budget).
    pub garbage_left_bytes: u64,
    /// Packs left alone because a chunk in them could not be read (see the log).
    pub packs_unreadable: u64,
}

/// Chunk records go through the index in pages of this many (bounded memory).
const SCAN_PAGE: usize = 10_000;
/// Chunks copied between two metadata batches of a rewrite.
const REWRITE_GROUP: usize = 64;

impl Volume {
    /// The id below which every pack is complete (see the module comment). Waits for commits
    /// in flight.
    fn gc_horizon(&self) -> u64 {
        let _gate = self.store_gate.write();
        let _cs = self.commit.lock();
        match self.packs.writer.lock().as_ref() {
            Some((w, _)) => w.pack_id(),
            None => self.packs.next_pack.load(Ordering::SeqCst),
        }
    }

    /// Live stored bytes per pack, and the chunks of the packs in `collect`.
    #[allow(clippy::type_complexity)]
    fn live_by_pack(
        &self,
        collect: &HashSet<u64>,
    ) -> Result<(HashMap<u64, u64>, HashMap<u64, Vec<(ChunkId, ChunkRecord)>>)> {
        let mut live: HashMap<u64, u64> = HashMap::new();
        let mut chunks: HashMap<u64, Vec<(ChunkId, ChunkRecord)>> = HashMap::new();
        let prefix = meta::chunk_prefix();
        let end = prefix_end(&prefix);
        let mut start = prefix.clone();
        loop {
            let page = self.kv.range_limit(&start, end.as_deref(), SCAN_PAGE)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            // The smallest key after the last one seen.
            start = last.clone();
            start.push(0);
            let full = page.len() == SCAN_PAGE;
            for (k, v) in page {
                let rec = ChunkRecord::decode(&v)?;
                *live.entry(rec.pack).or_default() += rec.stored_len as u64;
                if collect.contains(&rec.pack) {
                    let mut id = [0u8; 32];
                    id.copy_from_slice(&k[k.len() - 32..]);
                    chunks.entry(rec.pack).or_default().push((ChunkId(id), rec));
                }
            }
            if !full {
                break;
            }
        }
        Ok((live, chunks))
    }

    /// One pass of the core's half: rewrites sparse packs (within the policy's budget; `pace`
    /// is called with the bytes about to be copied, to keep to a rate) and drops every pack
    /// with no live data left.
    pub fn gc_collect(&self, policy: &GcPolicy, mut pace: impl FnMut(u64)) -> Result<CorePass> {
        let mut pass = CorePass::default();
        let horizon = self.gc_horizon();
        let table: Vec<(u64, PackRecord)> = self
            .pack_table()?
            .into_iter()
            .filter(|(id, r)| {
                *id < horizon
                    && matches!(
                        r.state,
                        PackState::Sealed | PackState::Uploaded | PackState::Remote
                    )
            })
            .collect();
        pass.packs_considered = table.len() as u64;
        let (live, _) = self.live_by_pack(&HashSet::new())?;
        let mut dead = Vec::new();
        let mut kept: Vec<(u64, u64, u64)> = Vec::new(); // (live, id, size)
        for (id, r) in &table {
            match live.get(id).copied().unwrap_or(0) {
                0 => dead.push((*id, r.size)),
                l => kept.push((l.min(r.size), *id, r.size)),
            }
        }
        // The emptiest first: the most space back for the bytes copied.
        kept.sort_by(|a, b| (a.0 * b.2).cmp(&(b.0 * a.2)));
        // What the kept packs will hold once the chosen ones are rewritten: a rewrite removes
        // the pack's dead bytes (its live bytes move into a new pack).
        let mut garbage: u64 = kept.iter().map(|k| k.2 - k.0).sum();
        let mut stored: u64 = kept.iter().map(|k| k.2).sum();
        let mut budget = policy.max_rewrite_bytes;
        let mut chosen = HashSet::new();
        let mut sparse: Vec<(u64, u64, u64)> = Vec::new(); // the chosen, in order
        for &(l, id, size) in &kept {
            let below_threshold = l * 100 < size * policy.min_live_percent as u64;
            let over_bound = garbage * 100 > stored * policy.max_unused_percent as u64;
            if l < size && (below_threshold || over_bound) && l <= budget {
                budget -= l;
                chosen.insert(id);
                sparse.push((l, id, size));
                garbage -= size - l;
                stored -= size - l;
            }
        }
        pass.garbage_left_bytes = garbage;
        if !chosen.is_empty() {
            let (_, chunks) = self.live_by_pack(&chosen)?;
            for &(_, id, size) in &sparse {
                let Some(list) = chunks.get(&id) else {
                    dead.push((id, size)); // emptied meanwhile
                    continue;
                };
                match self.rewrite_pack(id, list, &mut pace) {
                    Ok(bytes) => {
                        pass.packs_rewritten += 1;
                        pass.bytes_rewritten += bytes;
                        dead.push((id, size));
                    }
                    Err(e) => {
                        tracing::error!(pack = id, "gc: pack not rewritten: {e}");
                        pass.packs_unreadable += 1;
                    }
                }
            }
        }
        if !dead.is_empty() {
            pass.local_bytes_freed = self.drop_packs(&dead)?;
            pass.packs_dropped = dead.len() as u64;
            pass.bytes_dropped = dead.iter().map(|d| d.1).sum();
        }
        Ok(pass)
    }

    /// Copies the live blobs of `pack` into the open pack and points their records there.
    /// Returns the live bytes copied.
    fn rewrite_pack(
        &self,
        pack: u64,
        chunks: &[(ChunkId, ChunkRecord)],
        pace: &mut impl FnMut(u64),
    ) -> Result<u64> {
        let mut copied = 0;
        for group in chunks.chunks(REWRITE_GROUP) {
            // Read first (possibly from the store), without holding up commits.
            let mut plain = Vec::with_capacity(group.len());
            for (id, old) in group {
                pace(old.stored_len as u64);
                plain.push((id, *old, self.chunk_data(id)?));
            }
            // Held from the first append until the records name the copies: GC's own writes
            // are a commit like any other (see gc_horizon).
            let _gate = self.store_gate.read();
            let mut fresh = Vec::with_capacity(plain.len());
            for (id, old, data) in plain {
                let blob = blob::encode(&self.keys, id, &data, self.opts.zstd_level);
                let (to, loc) = self.packs.append(self, id, &blob)?;
                fresh.push((id, old, to, loc));
            }
            self.packs.sync_current()?;
            let mut cs = self.commit.lock();
            let mut b = Batch::default();
            let mut dead: HashMap<u64, u64> = HashMap::new();
            for (id, old, to, loc) in fresh {
                let now = match self.kv.get(&meta::chunk_key(id))? {
                    Some(v) => Some(ChunkRecord::decode(&v)?),
                    None => None,
                };
                match now {
                    Some(mut r) if r.pack == pack && r.offset == old.offset => {
                        cs.stats.stored_bytes =
                            cs.stats.stored_bytes - r.stored_len as u64 + loc.len as u64;
                        r.pack = to;
                        r.offset = loc.offset;
                        r.stored_len = loc.len;
                        b.put(meta::chunk_key(id), r.encode());
                        copied += loc.len as u64;
                    }
                    // Dropped (or changed) while we copied: the copy is garbage.
                    _ => *dead.entry(to).or_default() += loc.len as u64,
                }
            }
            self.add_dead_bytes(&mut b, dead)?;
            b.put(meta::misc_key("stats"), cs.stats.encode());
            self.stored_now
                .store(cs.stats.stored_bytes, Ordering::Relaxed);
            self.kv.apply(b)?;
        }
        tracing::info!(
            pack,
            bytes = copied,
            "gc: live data of a sparse pack rewritten"
        );
        Ok(copied)
    }

    /// Marks `packs` (id, size) dropped and removes their local files. Returns the bytes of
    /// local files removed.
    fn drop_packs(&self, packs: &[(u64, u64)]) -> Result<u64> {
        let since_unix = meta::unix_now();
        {
            let _cs = self.commit.lock();
            // Every change that removed a reference to these packs is at or before this
            // position: it was applied before the scan that found them empty.
            let after_seq = self.kv.last_seq();
            let mut b = Batch::default();
            for &(id, _) in packs {
                if let Some(v) = self.kv.get(&meta::pack_key(id))? {
                    let mut r = PackRecord::decode(&v)?;
                    r.state = PackState::Doomed {
                        after_seq,
                        since_unix,
                    };
                    b.put(meta::pack_key(id), r.encode());
                }
            }
            self.kv.apply(b)?;
        }
        // Durable before a file goes, so no restart looks for one.
        self.kv.flush()?;
        // A reader that looked up a record before it was moved may still open the old pack:
        // wait for reads in flight (they hold a decode stripe).
        let stripes: Vec<_> = self.decode_locks.iter().map(|l| l.lock()).collect();
        let mut freed = 0;
        for &(id, _) in packs {
            self.packs.readers.lock().remove(&id);
            let path = self.packs.path(id);
            if let Ok(m) = fs::metadata(&path) {
                fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
                freed += m.len();
            }
        }
        drop(stripes);
        if let Some(t) = self.tier.read().clone() {
            for &(id, _) in packs {
                t.pack_dropped(id);
            }
        }
        tracing::info!(packs = packs.len(), freed, "gc: dead packs dropped");
        Ok(freed)
    }

    /// Forgets a dropped pack whose off-site object is gone (the last step of its collection).
    pub fn forget_pack(&self, id: u64) -> Result<()> {
        let _cs = self.commit.lock();
        match self.kv.get(&meta::pack_key(id))? {
            Some(v) if PackRecord::decode(&v)?.state.is_doomed() => {
                let mut b = Batch::default();
                b.delete(meta::pack_key(id));
                self.kv.apply(b)
            }
            _ => Err(Error::Invalid(format!(
                "pack {id} is not dropped: it cannot be forgotten"
            ))),
        }
    }
}

//! The recycle bin (insider protection): with `[recycle] days` > 0, a regular file that loses
//! its last name (unlink, or replaced by a rename, which is also how a WebDAV PUT replaces a
//! file) keeps its inode and data for that many days, recorded under an `R` key instead of
//! being deleted. It has no name, so neither front-end shows it; `tiergate recycle list` and
//! `restore` reach it; GC purges it when its time is up, and only then do its chunks become
//! garbage.
//!
//! Files in a hidden directory ([`Volume::hidden_dir`]: the WebDAV staging area, where refused
//! and aborted uploads die) never had a name the tenant saw, and are never recycled.
//!
//! The bytes recycled files hold count against the tenant's quota: the provider stores (and
//! pays for) them like any other. When a write would take the volume past its quota and the
//! bin holds files, the oldest recycled files are deleted before their time until the write
//! fits ([`Volume::recycle_make_room`]), each time with a warning in the log and an event on
//! the status page: under quota pressure the protection window shrinks rather than the quota
//! leaking. Only when the bin is empty (or what is left in it frees nothing) is the write
//! refused (ENOSPC / 507). The bin's own figures (files, bytes, the stored bytes only it
//! holds) walk the recycled files' extents, so they are refreshed in the background after
//! changes, not on every write.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::meta::unix_now;

use serde::Serialize;

use super::*;

/// How long the recycled-bytes figure may lag behind a delete.
const RECOUNT_AFTER: Duration = Duration::from_secs(2);

/// One file in the recycle bin.
#[derive(Clone, Debug, Serialize)]
pub struct Recycled {
    pub ino: u64,
    pub deleted_unix: u64,
    pub size: u64,
    /// Where it was, as far as that directory still exists ("?/name" when not).
    pub path: String,
}

/// What the recycle bin holds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RecycleStats {
    pub files: u64,
    /// Sum of the recycled files' sizes.
    pub logical_bytes: u64,
    /// Stored bytes that only recycled files reference (freed when they are purged).
    pub stored_bytes: u64,
}

impl Volume {
    /// Keeps deleted files this many days (0: off, deleted files go at once).
    pub fn set_recycle_days(&self, days: u64) {
        self.recycle.days.store(days, Ordering::Relaxed);
    }

    pub fn recycle_days(&self) -> u64 {
        self.recycle.days.load(Ordering::Relaxed)
    }

    /// For `drop_link`: the record (key, value) that sends the file that just lost its last
    /// name (at `from`) to the recycle bin instead of deleting it, if it goes there.
    pub(super) fn recycle_instead(
        &self,
        attr: &Inode,
        ino: u64,
        from: (u64, &[u8]),
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        if self.recycle_days() == 0 || attr.kind != FileKind::File || attr.size == 0 {
            return None;
        }
        if self.recycle.hidden_dirs.lock().contains(&from.0) {
            return None; // a staging file: never visible, never recycled
        }
        self.recycle.dirty.store(true, Ordering::Relaxed);
        Some((
            meta::recycled_key(unix_now(), ino),
            meta::encode_recycled(from.0, from.1),
        ))
    }

    /// Notes a hidden directory: what is unlinked there is not recycled.
    pub(super) fn recycle_skip_dir(&self, ino: u64) {
        let mut h = self.recycle.hidden_dirs.lock();
        if !h.contains(&ino) {
            h.push(ino);
        }
    }

    /// The recycle bin's records, oldest first.
    fn recycled_records(&self) -> Result<Vec<RecycledRecord>> {
        self.recycled_records_limit(usize::MAX)
    }

    /// The oldest `limit` records of the recycle bin, oldest first.
    fn recycled_records_limit(&self, limit: usize) -> Result<Vec<RecycledRecord>> {
        let p = meta::recycled_prefix();
        let end = prefix_end(&p);
        let rows = if limit == usize::MAX {
            self.kv.range(&p, end.as_deref())?
        } else {
            self.kv.range_limit(&p, end.as_deref(), limit)?
        };
        rows.into_iter()
            .map(|(key, v)| {
                let (parent, name) = meta::decode_recycled(&v)?;
                Ok(RecycledRecord {
                    when: u64::from_be_bytes(key[1..9].try_into().unwrap()),
                    ino: meta::key_tail_u64(&key),
                    key,
                    parent,
                    name,
                })
            })
            .collect()
    }

    /// A directory's path from the root, if it still exists.
    fn dir_path(&self, mut ino: u64) -> Result<Option<String>> {
        let mut parts: Vec<String> = Vec::new();
        for _ in 0..256 {
            if ino == ROOT_INO {
                parts.reverse();
                return Ok(Some(parts.join("/")));
            }
            let Ok(attr) = self.getattr(ino) else {
                return Ok(None);
            };
            if attr.inode.kind != FileKind::Dir || attr.inode.nlink == 0 {
                return Ok(None);
            }
            let parent = attr.inode.parent;
            let p = meta::dirent_prefix(parent);
            let name = self
                .kv
                .range(&p, prefix_end(&p).as_deref())?
                .into_iter()
                .find(|(_, v)| meta::decode_dirent(v).is_ok_and(|(i, _)| i == ino))
                .map(|(k, _)| String::from_utf8_lossy(&k[p.len()..]).into_owned());
            let Some(name) = name else {
                return Ok(None);
            };
            parts.push(name);
            ino = parent;
        }
        Ok(None)
    }

    /// The files in the recycle bin, oldest first.
    pub fn recycle_list(&self) -> Result<Vec<Recycled>> {
        let mut out = Vec::new();
        for RecycledRecord {
            when,
            ino,
            parent,
            name,
            ..
        } in self.recycled_records()?
        {
            let name = String::from_utf8_lossy(&name).into_owned();
            let path = match self.dir_path(parent)? {
                Some(d) if d.is_empty() => name,
                Some(d) => format!("{d}/{name}"),
                None => format!("?/{name}"),
            };
            out.push(Recycled {
                ino,
                deleted_unix: when,
                size: self.getattr(ino).map_or(0, |a| a.inode.size),
                path,
            });
        }
        Ok(out)
    }

    /// Gives recycled file `ino` a name again: in `to` (directory, name) if given, else where
    /// it was (its directory if that still exists, else the root; its name, with a suffix if
    /// the name is taken meanwhile). Returns the directory and name it got.
    pub fn recycle_restore(&self, ino: u64, to: Option<(u64, &[u8])>) -> Result<(u64, Vec<u8>)> {
        let _ns = self.ns.lock();
        let Some(RecycledRecord {
            key, parent, name, ..
        }) = self.recycled_records()?.into_iter().find(|r| r.ino == ino)
        else {
            return Err(Error::NotFound);
        };
        let (dir, mut name) = match to {
            Some((d, n)) => {
                check_name(n)?;
                (d, n.to_vec())
            }
            None => {
                let dir = match self.getattr(parent) {
                    Ok(a) if a.inode.kind == FileKind::Dir && a.inode.nlink > 0 => parent,
                    _ => ROOT_INO,
                };
                (dir, name)
            }
        };
        self.check_new_name(dir, &name)?;
        if self.lookup_ino(dir, &name)?.is_some() {
            if to.is_some() {
                return Err(Error::Exists);
            }
            let base = name.clone();
            let mut i = 1;
            while self.lookup_ino(dir, &name)?.is_some() {
                name = [base.as_slice(), format!(".restored-{i}").as_bytes()].concat();
                i += 1;
            }
            check_name(&name)?;
        }
        let pe = self.dir_entry(dir)?;
        let e = self.entry(ino)?;
        let mut pd = pe.data.write();
        let mut d = e.data.write();
        let t = now();
        d.attr.nlink = 1;
        d.attr.ctime = t;
        d.attr.parent = dir;
        pd.attr.mtime = t;
        pd.attr.ctime = t;
        let mut b = Batch::default();
        b.put(
            meta::dirent_key(dir, &name),
            meta::encode_dirent(ino, FileKind::File),
        );
        b.put(meta::inode_key(ino), d.attr.encode());
        b.put(meta::inode_key(dir), pd.attr.encode());
        b.delete(key);
        self.apply(b)?;
        self.kv.flush()?;
        drop((pd, d));
        self.recycle.dirty.store(true, Ordering::Relaxed);
        self.changed(&[
            Changed::Entry {
                parent: dir,
                name: name.clone(),
            },
            Changed::Inode(dir),
        ]);
        tracing::info!(ino, dir, name = %String::from_utf8_lossy(&name), "restored from the recycle bin");
        Ok((dir, name))
    }

    /// Deletes for good the recycled files deleted before `cutoff_unix` (all with `u64::MAX`).
    /// Returns how many, and their bytes.
    pub fn recycle_purge(&self, cutoff_unix: u64) -> Result<(u64, u64)> {
        let mut files = 0;
        let mut bytes = 0;
        for r in self.recycled_records()? {
            if r.when >= cutoff_unix {
                break; // oldest first
            }
            bytes += self.purge_record(r)?;
            files += 1;
        }
        if files > 0 {
            tracing::info!(files, bytes, "recycle bin: expired files deleted");
        }
        Ok((files, bytes))
    }

    /// Deletes one recycled file for good; returns its size.
    fn purge_record(&self, r: RecycledRecord) -> Result<u64> {
        let RecycledRecord { key, ino, .. } = r;
        let _ns = self.ns.lock();
        let e = self.entry(ino)?;
        let size = e.data.read().attr.size;
        let mut b = Batch::default();
        b.delete(key);
        // Still open by someone: the last close deletes it, like an unlinked open file.
        let open = e.opens.load(Ordering::Acquire) > 0;
        b.put(meta::orphan_key(ino), Vec::new());
        if open {
            e.data.write().orphan = true;
        }
        self.apply(b)?;
        if !open {
            self.delete_inode_data(ino)?;
        }
        self.recycle.dirty.store(true, Ordering::Relaxed);
        Ok(size)
    }

    /// Before a write of `len` bytes: if it would take the volume past its quota, deletes the
    /// oldest recycled files until it fits or the bin is empty (loudly: the insider protection
    /// shrinks). The quota check that follows refuses the write if it still does not fit.
    pub(super) fn recycle_make_room(&self, len: u64) -> Result<()> {
        let Some(q) = self.quota() else {
            return Ok(());
        };
        let fits = |v: &Volume| v.quota_used().saturating_add(len) <= q;
        if fits(self) {
            return Ok(());
        }
        // One writer purges at a time; the others find room (or an empty bin) after it.
        let _one = self.recycle.making_room.lock();
        let (mut files, mut bytes, mut oldest) = (0u64, 0u64, None);
        while !fits(self) {
            let Some(r) = self.recycled_records_limit(1)?.pop() else {
                break;
            };
            oldest.get_or_insert(r.when);
            bytes += self.purge_record(r)?;
            files += 1;
        }
        if files > 0 {
            let age_days = oldest.map_or(0, |w| unix_now().saturating_sub(w) / 86_400);
            let msg = format!(
                "quota reached: {files} file(s) ({bytes} bytes) deleted from the recycle bin \
                 before their {} days were up, to make room for new writes (oldest deleted \
                 {age_days} day(s) ago); raise the quota or shorten [recycle] days to keep \
                 the full protection",
                self.recycle_days()
            );
            tracing::warn!("{msg}");
            crate::status::event("warning", msg);
        }
        Ok(())
    }

    /// Purges what is older than the configured days.
    pub fn recycle_expire(&self) -> Result<(u64, u64)> {
        let days = self.recycle_days();
        if days == 0 {
            // Turned off: what is in the bin goes.
            return self.recycle_purge(u64::MAX);
        }
        self.recycle_purge(unix_now().saturating_sub(days * 86_400))
    }

    /// The recycle bin's figures as of the last count.
    pub fn recycle_stats(&self) -> RecycleStats {
        *self.recycle.stats.lock()
    }

    /// Recounts the recycle bin's figures if something changed (called from `tick`).
    pub(super) fn recycle_recount_if_due(&self) -> Result<()> {
        if !self.recycle.dirty.load(Ordering::Relaxed) {
            return Ok(());
        }
        {
            let mut last = self.recycle.counted_at.lock();
            if last.is_some_and(|t| t.elapsed() < RECOUNT_AFTER) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        self.recycle.dirty.store(false, Ordering::Relaxed);
        self.recycle_recount()
    }

    /// Counts the recycled files, their bytes, and the stored bytes only they reference.
    pub fn recycle_recount(&self) -> Result<()> {
        let mut st = RecycleStats::default();
        let mut uses: HashMap<ChunkId, u64> = HashMap::new();
        for RecycledRecord { ino, .. } in self.recycled_records()? {
            st.files += 1;
            st.logical_bytes += self.getattr(ino).map_or(0, |a| a.inode.size);
            let p = meta::extent_prefix(ino);
            for (_, v) in self.kv.range(&p, prefix_end(&p).as_deref())? {
                *uses.entry(Extent::decode(&v)?.chunk).or_default() += 1;
            }
        }
        for (id, n) in uses {
            if let Some(v) = self.kv.get(&meta::chunk_key(&id))? {
                let r = ChunkRecord::decode(&v)?;
                if r.refs <= n {
                    st.stored_bytes += r.stored_len as u64;
                }
            }
        }
        *self.recycle.stats.lock() = st;
        Ok(())
    }
}

/// An `R` record, decoded.
struct RecycledRecord {
    key: Vec<u8>,
    /// When the file was deleted (Unix seconds).
    when: u64,
    ino: u64,
    /// Where it was: its directory and name.
    parent: u64,
    name: Vec<u8>,
}

/// The recycle bin's settings and figures, kept in the volume.
#[derive(Default)]
pub(super) struct RecycleState {
    pub(super) days: AtomicU64,
    /// Something changed since the last count.
    pub(super) dirty: std::sync::atomic::AtomicBool,
    pub(super) counted_at: Mutex<Option<Instant>>,
    pub(super) stats: Mutex<RecycleStats>,
    /// Hidden directories ([`Volume::hidden_dir`]) known to this process: not recycled from.
    pub(super) hidden_dirs: Mutex<Vec<u64>>,
    /// Held while the bin is purged to make room under the quota.
    pub(super) making_room: Mutex<()>,
}

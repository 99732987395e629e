//! The recycle bin (insider protection): with `[recycle] days` > 0, a regular file that loses
//! its last name (unlink, or replaced by a rename, which is also how a WebDAV PUT replaces a
//! file) keeps its inode and data for that many days, recorded under an `R` key instead of
//! being deleted. It has no name, so neither front-end shows it; `tiergate recycle list` and
//! `restore` reach it; GC purges it when its time is up, and only then do its chunks become
//! garbage.
//!
//! Every record keeps the entry's full path at deletion. A directory removed after its
//! contents (`rm -rf` unlinks the files, then removes the directories bottom up) is recycled
//! too when something recycled was in it, and stands for that tree: its members are the
//! entries recycled out of it (their records name its inode, never reused), so `recycle list`
//! shows one line per deleted tree and a restore brings the tree back, at its path (missing
//! parents made again, as `mkdir -p` would) or elsewhere. Empty files and directories that
//! held nothing recycled are not kept.
//!
//! Files in a hidden directory ([`Volume::hidden_dir`]: the WebDAV staging area, where refused
//! and aborted uploads die), or anywhere the root does not lead to, never had a name the
//! tenant saw, and are never recycled.
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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::meta::{unix_now, RecycledValue};

use serde::Serialize;

use super::*;

/// How long the recycled-bytes figure may lag behind a delete.
const RECOUNT_AFTER: Duration = Duration::from_secs(2);
/// Entries restored per metadata batch when a tree comes back.
const RESTORE_BATCH: usize = 512;
/// Directory names remembered for the paths of recycled entries (then the memory starts over).
const NAME_CACHE: usize = 65_536;

/// An entry of the recycle bin: a file, or a deleted directory with the tree recycled with it.
#[derive(Clone, Debug, Serialize)]
pub struct Recycled {
    /// Its id (inode number), for `tiergate recycle restore`.
    pub ino: u64,
    /// "file" or "dir".
    pub kind: &'static str,
    pub deleted_unix: u64,
    /// A file's size; a directory's: the bytes of the files in its tree.
    pub size: u64,
    /// Where it was when deleted, from the root ("/a/b/c"). Records written before the bin
    /// kept paths show where their directory is now, or "?/name" when it is gone too.
    pub path: String,
    /// A directory: the files and directories in its tree (itself not counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirs: Option<u64>,
    /// In a list of every entry: the id of the recycled directory it was deleted with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_tree: Option<u64>,
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct Restored {
    pub ino: u64,
    pub kind: &'static str,
    /// Where it was ([`Recycled::path`]).
    pub from: String,
    /// Where it is now, from the root.
    pub path: String,
    /// Files restored (a file: 1) and their bytes; directories restored (the tree's own
    /// directory included).
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// The directory it is in now, and its name there.
    pub dir: u64,
    pub name: String,
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

/// Raw bytes of a path from the root, shown with a leading `/`.
fn shown(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// `dir/name`, or `name` in the root.
fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

fn kind_name(k: FileKind) -> &'static str {
    if k == FileKind::Dir {
        "dir"
    } else {
        "file"
    }
}

impl Volume {
    /// Keeps deleted files this many days (0: off, deleted files go at once).
    pub fn set_recycle_days(&self, days: u64) {
        self.recycle.days.store(days, Ordering::Relaxed);
    }

    pub fn recycle_days(&self) -> u64 {
        self.recycle.days.load(Ordering::Relaxed)
    }

    /// For `drop_link`: the record (key, value) that sends the file or directory that just
    /// lost its last name (at `from`) to the recycle bin instead of deleting it, if it goes
    /// there. Files go unless empty; a directory goes when something recycled was in it (a
    /// tree removed with `rm -rf` loses its files first, then its directories bottom up), so
    /// it can come back as a tree. Each record keeps the entry's full path at deletion.
    pub(super) fn recycle_instead(
        &self,
        attr: &Inode,
        ino: u64,
        from: (u64, &[u8]),
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        if self.recycle_days() == 0 {
            return None;
        }
        match attr.kind {
            FileKind::File if attr.size > 0 => {}
            FileKind::Dir => {}
            _ => return None,
        }
        if self.recycle.hidden_dirs.lock().contains(&from.0) {
            return None; // a staging file: never visible, never recycled
        }
        if attr.kind == FileKind::Dir && self.recycled_children(ino) == 0 {
            return None;
        }
        // A directory the root does not lead to (a hidden one, or below one) never showed
        // what it holds to anyone: nothing there is kept.
        let dir = match self.dir_path(from.0) {
            Ok(Some(d)) => d,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(
                    ino,
                    "recycle bin: path of directory {} unknown: {e}",
                    from.0
                );
                return None;
            }
        };
        self.count_child(from.0, 1);
        self.recycle.dirty.store(true, Ordering::Relaxed);
        Some((
            meta::recycled_key(unix_now(), ino),
            meta::encode_recycled(from.0, from.1, attr.kind, &join(&dir, from.1)),
        ))
    }

    /// Notes a hidden directory: what is unlinked there is not recycled.
    pub(super) fn recycle_skip_dir(&self, ino: u64) {
        let mut h = self.recycle.hidden_dirs.lock();
        if !h.contains(&ino) {
            h.push(ino);
        }
    }

    /// How many entries of the bin were recycled out of directory `ino`.
    fn recycled_children(&self, ino: u64) -> u64 {
        let mut c = self.recycle.children.lock();
        if c.is_none() {
            let mut m: HashMap<u64, u64> = HashMap::new();
            match self.recycled_records() {
                Ok(rs) => rs
                    .iter()
                    .for_each(|r| *m.entry(r.v.parent).or_default() += 1),
                Err(e) => tracing::warn!("recycle bin: reading its records: {e}"),
            }
            *c = Some(m);
        }
        c.as_ref().and_then(|m| m.get(&ino).copied()).unwrap_or(0)
    }

    /// Counts an entry recycled out of (`delta` 1) or gone from the bin for (-1) `parent`.
    fn count_child(&self, parent: u64, delta: i64) {
        if let Some(m) = self.recycle.children.lock().as_mut() {
            let n = m.entry(parent).or_default();
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                m.remove(&parent);
            }
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
                Ok(RecycledRecord {
                    when: u64::from_be_bytes(key[1..9].try_into().unwrap()),
                    ino: meta::key_tail_u64(&key),
                    key,
                    v: meta::decode_recycled(&v)?,
                })
            })
            .collect()
    }

    /// A directory's path from the root ("" for the root), if the root leads to it.
    fn dir_path(&self, mut ino: u64) -> Result<Option<Vec<u8>>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for _ in 0..4096 {
            if ino == ROOT_INO {
                parts.reverse();
                return Ok(Some(parts.join(&b'/')));
            }
            let Ok(attr) = self.getattr(ino) else {
                return Ok(None);
            };
            if attr.inode.kind != FileKind::Dir || attr.inode.nlink == 0 {
                return Ok(None);
            }
            let parent = attr.inode.parent;
            let Some(name) = self.dir_name(ino, parent)? else {
                return Ok(None);
            };
            parts.push(name);
            ino = parent;
        }
        Ok(None)
    }

    /// The name of directory `ino` in `parent`: remembered from an earlier call if its dirent
    /// still says so (one lookup), else found by reading `parent`.
    fn dir_name(&self, ino: u64, parent: u64) -> Result<Option<Vec<u8>>> {
        let known = self.recycle.names.lock().get(&ino).cloned();
        if let Some(name) = known {
            if self
                .lookup_ino(parent, &name)?
                .is_some_and(|(i, _)| i == ino)
            {
                return Ok(Some(name));
            }
        }
        let p = meta::dirent_prefix(parent);
        let name = self
            .kv
            .range(&p, prefix_end(&p).as_deref())?
            .into_iter()
            .find(|(_, v)| meta::decode_dirent(v).is_ok_and(|(i, _)| i == ino))
            .map(|(k, _)| k[p.len()..].to_vec());
        if let Some(n) = &name {
            let mut names = self.recycle.names.lock();
            if names.len() >= NAME_CACHE {
                names.clear();
            }
            names.insert(ino, n.clone());
        }
        Ok(name)
    }

    /// Where a record's entry was, from the root, as shown ([`Recycled::path`]).
    fn record_path(&self, r: &RecycledRecord) -> Result<String> {
        if let Some(p) = &r.v.path {
            return Ok(shown(p));
        }
        Ok(match self.dir_path(r.v.parent)? {
            Some(d) => shown(&join(&d, &r.v.name)),
            None => format!("?/{}", String::from_utf8_lossy(&r.v.name)),
        })
    }

    /// What the recycle bin holds, oldest first: with `all`, every recycled file and directory;
    /// else one entry per deletion, a directory standing for the tree recycled with it (its
    /// counts and total size).
    pub fn recycle_list(&self, all: bool) -> Result<Vec<Recycled>> {
        let records = self.recycled_records()?;
        let bin = Bin::new(&records);
        let mut out = Vec::new();
        for r in &records {
            let top = bin.tree_of(r);
            if top.is_some() && !all {
                continue;
            }
            let mut e = Recycled {
                ino: r.ino,
                kind: kind_name(r.v.kind),
                deleted_unix: r.when,
                size: 0,
                path: self.record_path(r)?,
                files: None,
                dirs: None,
                in_tree: top,
            };
            if r.v.kind == FileKind::Dir {
                let (mut files, mut dirs) = (0, 0);
                for m in bin.members(r) {
                    if m.v.kind == FileKind::Dir {
                        dirs += 1;
                    } else {
                        files += 1;
                        e.size += self.getattr(m.ino).map_or(0, |a| a.inode.size);
                    }
                }
                (e.files, e.dirs) = (Some(files), Some(dirs));
            } else {
                e.size = self.getattr(r.ino).map_or(0, |a| a.inode.size);
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Restores the newest entry of the bin that was deleted from `path` (from the root; a
    /// leading or trailing `/` does not matter), as [`Volume::recycle_restore`] does.
    pub fn recycle_restore_path(&self, path: &[u8], to: Option<&[u8]>) -> Result<Restored> {
        let want = shown(trim_slashes(path));
        let mut found = None;
        for r in self.recycled_records()? {
            if self.record_path(&r)? == want {
                found = Some(r.ino); // oldest first: the last match is the newest
            }
        }
        match found {
            Some(ino) => self.recycle_restore(ino, to),
            None => Err(Error::Invalid(format!(
                "nothing in the recycle bin was deleted from {want} (`tiergate recycle list                  --all` shows every path)"
            ))),
        }
    }

    /// Gives recycled entry `ino` a name again, and a directory its tree (every entry recycled
    /// out of it, at the same places below it): at `to` (a path from the root) if given, else
    /// where it was: in its directory if that still exists, else at its path at deletion, the
    /// missing parent directories created again (records from before the bin kept paths: in
    /// the root). Its name gets a suffix if taken meanwhile (with `to`: refused).
    pub fn recycle_restore(&self, ino: u64, to: Option<&[u8]>) -> Result<Restored> {
        let records = self.recycled_records()?;
        let Some(rec) = records.iter().find(|r| r.ino == ino) else {
            return Err(Error::NotFound);
        };
        let from = self.record_path(rec)?;
        let alive = |d: u64| {
            self.getattr(d)
                .is_ok_and(|a| a.inode.kind == FileKind::Dir && a.inode.nlink > 0)
        };
        // Parents are made before the namespace lock is taken (mkdir takes it).
        let (dir, name) = match (to, &rec.v.path) {
            (Some(p), _) => {
                let (d, n) = self.make_parents(p)?;
                check_name(&n)?;
                (d, n)
            }
            (None, _) if alive(rec.v.parent) => (rec.v.parent, rec.v.name.clone()),
            (None, Some(p)) => self.make_parents(p)?,
            (None, None) => (ROOT_INO, rec.v.name.clone()),
        };
        let bin = Bin::new(&records);
        let mut done = Tally::default();
        let name = {
            let _ns = self.ns.lock();
            self.check_new_name(dir, &name)?;
            let pe = self.dir_entry(dir)?;
            if pe.data.read().attr.nlink == 0 {
                return Err(Error::NotFound);
            }
            let mut name = name;
            if self.lookup_ino(dir, &name)?.is_some() {
                if to.is_some() {
                    return Err(Error::Exists);
                }
                name = free_name(&name, |n| Ok(self.lookup_ino(dir, n)?.is_some()))?;
            }
            let mut b = Batch::default();
            let t = now();
            let (placed, attr) = self.relink(rec, dir, &name, t, &mut b, &mut done)?;
            {
                let mut pd = pe.data.write();
                pd.attr.mtime = t;
                pd.attr.ctime = t;
                if rec.v.kind == FileKind::Dir {
                    pd.attr.nlink += 1;
                }
                b.put(meta::inode_key(dir), pd.attr.encode());
            }
            if let Some(attr) = attr {
                self.relink_tree(&bin, (rec.ino, placed, attr), t, &mut b, &mut done)?;
            }
            self.apply(b)?;
            self.kv.flush()?;
            name
        };
        self.recycle.dirty.store(true, Ordering::Relaxed);
        self.changed(&[
            Changed::Entry {
                parent: dir,
                name: name.clone(),
            },
            Changed::Inode(dir),
        ]);
        let path = match self.dir_path(dir)? {
            Some(d) => shown(&join(&d, &name)),
            None => format!("?/{}", String::from_utf8_lossy(&name)),
        };
        tracing::info!(
            ino,
            files = done.files,
            dirs = done.dirs,
            bytes = done.bytes,
            "restored {from} from the recycle bin as {path}"
        );
        Ok(Restored {
            ino,
            kind: kind_name(rec.v.kind),
            from,
            path,
            files: done.files,
            dirs: done.dirs,
            bytes: done.bytes,
            dir,
            name: String::from_utf8_lossy(&name).into_owned(),
        })
    }

    /// The directory that `path` (from the root) names the last element of, created with its
    /// missing parents as `mkdir -p` would (mode 0755, owned like the root); and that name.
    fn make_parents(&self, path: &[u8]) -> Result<(u64, Vec<u8>)> {
        let root = self.getattr(ROOT_INO)?.inode;
        let who = Caller {
            uid: root.uid,
            gid: root.gid,
        };
        self.walk_to_parent(path, Some(who))
    }

    /// Inside batch `b`: gives recycled `r` the name `name` in directory `dir` and takes it out
    /// of the bin. A directory comes back as a new inode with the old one's attributes and
    /// extended attributes (the kernel may still hold the removed one as dead); returns the
    /// inode it has now, and a directory's attributes as put. The caller updates `dir`'s own
    /// record.
    fn relink(
        &self,
        r: &RecycledRecord,
        dir: u64,
        name: &[u8],
        t: Timestamp,
        b: &mut Batch,
        done: &mut Tally,
    ) -> Result<(u64, Option<Inode>)> {
        let e = self.entry(r.ino)?;
        let mut d = e.data.write();
        let (ino, dir_attr) = if r.v.kind == FileKind::Dir {
            let mut attr = d.attr.clone();
            attr.nlink = 2;
            attr.ctime = t;
            attr.parent = dir;
            let ino = self.alloc_ino(b);
            b.put(meta::inode_key(ino), attr.encode());
            let xp = meta::xattr_prefix(r.ino);
            for (k, v) in self.kv.range(&xp, prefix_end(&xp).as_deref())? {
                b.put(meta::xattr_key(ino, &k[xp.len()..]), v);
                b.delete(k);
            }
            b.delete(meta::inode_key(r.ino));
            d.gone = true;
            drop(d);
            self.entries.lock().remove(&r.ino);
            done.dirs += 1;
            (ino, Some(attr))
        } else {
            d.attr.nlink = 1;
            d.attr.ctime = t;
            d.attr.parent = dir;
            b.put(meta::inode_key(r.ino), d.attr.encode());
            done.files += 1;
            done.bytes += d.attr.size;
            (r.ino, None)
        };
        b.put(
            meta::dirent_key(dir, name),
            meta::encode_dirent(ino, r.v.kind),
        );
        b.delete(r.key.clone());
        self.count_child(r.v.parent, -1);
        Ok((ino, dir_attr))
    }

    /// Restores the tree recycled out of directory `top` = (its inode in the bin, its inode
    /// now, its attributes now) below it: each directory's members newest first, so where two
    /// were deleted under one name (at different times) the newest gets it and the other a
    /// suffix. Batches are applied as they fill; `b` is left for the caller.
    fn relink_tree(
        &self,
        bin: &Bin,
        top: (u64, u64, Inode),
        t: Timestamp,
        b: &mut Batch,
        done: &mut Tally,
    ) -> Result<()> {
        let mut stack = vec![top];
        let mut queued = 0usize;
        while let Some((old, new, mut attr)) = stack.pop() {
            let mut taken: HashSet<Vec<u8>> = HashSet::new();
            let mut kids: Vec<&RecycledRecord> = bin.children(old).collect();
            kids.sort_by_key(|r| std::cmp::Reverse((r.when, r.ino)));
            for r in kids {
                let name = free_name(&r.v.name, |n| Ok(taken.contains(n)))?;
                taken.insert(name.clone());
                let (ino, sub) = self.relink(r, new, &name, t, b, done)?;
                if let Some(sub) = sub {
                    attr.nlink += 1;
                    stack.push((r.ino, ino, sub));
                }
                queued += 1;
            }
            attr.mtime = t;
            b.put(meta::inode_key(new), attr.encode());
            if queued >= RESTORE_BATCH {
                self.apply(std::mem::take(b))?;
                queued = 0;
            }
        }
        Ok(())
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
            let is_file = r.v.kind != FileKind::Dir;
            let size = self.purge_record(r)?;
            if is_file {
                bytes += size;
                files += 1;
            }
        }
        if files > 0 {
            tracing::info!(files, bytes, "recycle bin: expired files deleted");
        }
        Ok((files, bytes))
    }

    /// Deletes one recycled entry for good; returns its size.
    fn purge_record(&self, r: RecycledRecord) -> Result<u64> {
        let RecycledRecord { key, ino, v, .. } = r;
        let _ns = self.ns.lock();
        self.count_child(v.parent, -1);
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
            let is_file = r.v.kind != FileKind::Dir;
            let size = self.purge_record(r)?;
            if is_file {
                bytes += size;
                files += 1;
            }
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
            crate::events::record("warning", msg);
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
        for RecycledRecord { ino, v, .. } in self.recycled_records()? {
            if v.kind == FileKind::Dir {
                continue;
            }
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
    /// When the entry was deleted (Unix seconds).
    when: u64,
    ino: u64,
    /// Where it was: its directory and name, its kind, its path.
    v: RecycledValue,
}

/// The bin's records, by where they were recycled from: a recycled directory's members are
/// the records whose directory is its inode (inode numbers are never reused).
struct Bin<'a> {
    dirs: HashMap<u64, &'a RecycledRecord>,
    by_parent: HashMap<u64, Vec<&'a RecycledRecord>>,
}

impl<'a> Bin<'a> {
    fn new(records: &'a [RecycledRecord]) -> Self {
        let mut bin = Bin {
            dirs: HashMap::new(),
            by_parent: HashMap::new(),
        };
        for r in records {
            if r.v.kind == FileKind::Dir {
                bin.dirs.insert(r.ino, r);
            }
            bin.by_parent.entry(r.v.parent).or_default().push(r);
        }
        bin
    }

    /// The recycled directories' members recycled out of directory `ino`.
    fn children(&self, ino: u64) -> impl Iterator<Item = &'a RecycledRecord> + '_ {
        let is_dir = self.dirs.contains_key(&ino);
        self.by_parent
            .get(&ino)
            .filter(|_| is_dir)
            .into_iter()
            .flatten()
            .copied()
    }

    /// Every member of recycled directory `r`'s tree, below it.
    fn members(&self, r: &RecycledRecord) -> Vec<&'a RecycledRecord> {
        let mut out = Vec::new();
        let mut stack = vec![r.ino];
        while let Some(d) = stack.pop() {
            for m in self.children(d) {
                if m.v.kind == FileKind::Dir {
                    stack.push(m.ino);
                }
                out.push(m);
            }
        }
        out
    }

    /// The top recycled directory whose tree `r` belongs to, if any.
    fn tree_of(&self, r: &RecycledRecord) -> Option<u64> {
        let mut top = None;
        let mut p = r.v.parent;
        for _ in 0..4096 {
            match self.dirs.get(&p) {
                Some(d) => {
                    top = Some(d.ino);
                    p = d.v.parent;
                }
                None => break,
            }
        }
        top
    }
}

/// What a restore brought back.
#[derive(Default)]
struct Tally {
    files: u64,
    dirs: u64,
    bytes: u64,
}

/// `path` without leading and trailing slashes.
fn trim_slashes(path: &[u8]) -> &[u8] {
    let start = path.iter().position(|&c| c != b'/').unwrap_or(path.len());
    let end = path
        .iter()
        .rposition(|&c| c != b'/')
        .map_or(start, |e| e + 1);
    &path[start..end.max(start)]
}

/// `name`, or `name.restored-N` with the first N that `taken` says is free.
fn free_name(name: &[u8], mut taken: impl FnMut(&[u8]) -> Result<bool>) -> Result<Vec<u8>> {
    if !taken(name)? {
        return Ok(name.to_vec());
    }
    for i in 1.. {
        let n = [name, format!(".restored-{i}").as_bytes()].concat();
        if !taken(&n)? {
            check_name(&n)?;
            return Ok(n);
        }
    }
    unreachable!()
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
    /// Entries in the bin by the directory they were recycled out of (loaded at first use):
    /// whether a removed directory has a tree to keep.
    pub(super) children: Mutex<Option<HashMap<u64, u64>>>,
    /// Directory names seen while recording paths ([`Volume::dir_name`]).
    pub(super) names: Mutex<HashMap<u64, Vec<u8>>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KdfParams;
    use crate::volume::testutil::{read_path, write, ME};

    fn volume(tmp: &tempfile::TempDir) -> Arc<Volume> {
        let dir = tmp.path().join("vol");
        let params = ChunkerParams {
            min_size: 16 << 10,
            avg_size: 64 << 10,
            max_size: 256 << 10,
        };
        Volume::create(&dir, "pw", params, KdfParams::for_tests()).unwrap();
        let vol = Volume::open(&dir, "pw", VolumeOptions::default()).unwrap();
        vol.set_recycle_days(7);
        vol
    }

    fn mkdir(vol: &Volume, parent: u64, name: &str) -> u64 {
        vol.mkdir(parent, name.as_bytes(), 0o750, ME).unwrap().ino
    }

    /// A tree removed bottom up is one entry; it comes back with its directories (their
    /// modes kept), and where one name was deleted twice the newest keeps it.
    #[test]
    fn a_removed_tree_is_one_entry_and_comes_back_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = volume(&tmp);
        let a = mkdir(&vol, ROOT_INO, "a");
        let b = mkdir(&vol, a, "b");
        write(&vol, b, "x", b"first x");
        vol.unlink(b, b"x").unwrap();
        write(&vol, b, "x", b"second x");
        write(&vol, b, "y", b"y!");
        write(&vol, a, "z", b"zz");
        vol.unlink(b, b"x").unwrap();
        vol.unlink(b, b"y").unwrap();
        vol.rmdir(a, b"b").unwrap();
        vol.unlink(a, b"z").unwrap();
        vol.rmdir(ROOT_INO, b"a").unwrap();
        // Nothing recycled in it: not kept.
        mkdir(&vol, ROOT_INO, "empty");
        vol.rmdir(ROOT_INO, b"empty").unwrap();

        let top = vol.recycle_list(false).unwrap();
        assert_eq!(top.len(), 1, "{top:?}");
        let t = &top[0];
        assert_eq!((t.kind, t.path.as_str()), ("dir", "/a"));
        assert_eq!((t.files, t.dirs, t.size), (Some(4), Some(1), 7 + 8 + 2 + 2));
        let all = vol.recycle_list(true).unwrap();
        let mut paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
        paths.sort();
        assert_eq!(paths, ["/a", "/a/b", "/a/b/x", "/a/b/x", "/a/b/y", "/a/z"]);

        let r = vol.recycle_restore(t.ino, None).unwrap();
        assert_eq!(
            (r.from.as_str(), r.path.as_str(), r.files, r.dirs, r.bytes),
            ("/a", "/a", 4, 2, 19)
        );
        assert_eq!(read_path(&vol, "a/b/x"), b"second x");
        assert_eq!(read_path(&vol, "a/b/x.restored-1"), b"first x");
        assert_eq!(read_path(&vol, "a/b/y"), b"y!");
        assert_eq!(read_path(&vol, "a/z"), b"zz");
        let a = vol.resolve(b"a").unwrap();
        assert_eq!((a.inode.perm, a.inode.nlink), (0o750, 3));
        assert!(vol.recycle_list(true).unwrap().is_empty());
        // Counted out again: a directory emptied later is not kept for what was restored.
        let b = vol.resolve(b"a/b").unwrap().ino;
        for n in ["x", "x.restored-1", "y"] {
            vol.rename(b, n.as_bytes(), ROOT_INO, n.as_bytes(), RenameMode::Replace)
                .unwrap();
        }
        vol.rmdir(a.ino, b"b").unwrap();
        assert!(vol.recycle_list(true).unwrap().is_empty());
    }

    /// Records from before the bin kept paths: listed where their directory is now, or as
    /// `?/name` with the directory gone, and restored into the root then.
    #[test]
    fn records_without_a_path_still_list_and_restore() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = volume(&tmp);
        let d = mkdir(&vol, ROOT_INO, "d");
        let e = mkdir(&vol, ROOT_INO, "e");
        let f = write(&vol, d, "f", b"ff");
        let g = write(&vol, e, "g", b"ggg");
        vol.unlink(d, b"f").unwrap();
        vol.unlink(e, b"g").unwrap();
        // Back to the first layout, and e deleted the way it was then: gone for good.
        let mut b = Batch::default();
        for r in vol.recycled_records().unwrap() {
            let mut old = r.v.parent.to_le_bytes().to_vec();
            old.extend_from_slice(&r.v.name);
            b.put(r.key, old);
        }
        vol.apply(b).unwrap();
        vol.rename(ROOT_INO, b"e", d, b"e2", RenameMode::Replace)
            .unwrap();
        vol.rmdir(d, b"e2").unwrap();
        let mut b = Batch::default();
        for r in vol.recycled_records().unwrap() {
            if r.ino == e {
                b.delete(r.key);
                b.delete(meta::inode_key(e));
            }
        }
        vol.apply(b).unwrap();
        let list = vol.recycle_list(true).unwrap();
        let by_ino = |i| list.iter().find(|r| r.ino == i).unwrap().path.clone();
        assert_eq!(list.len(), 2, "{list:?}");
        assert_eq!((by_ino(f), by_ino(g)), ("/d/f".into(), "?/g".into()));
        assert_eq!(vol.recycle_restore(g, None).unwrap().path, "/g");
        assert_eq!(read_path(&vol, "g"), b"ggg");
        let r = vol.recycle_restore_path(b"/d/f/", None).unwrap();
        assert_eq!((r.from.as_str(), r.path.as_str()), ("/d/f", "/d/f"));
    }
}

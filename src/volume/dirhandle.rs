//! Directory handles (opendir … releasedir) that read the metadata store at every READDIR.
//!
//! A handle holds no listing: it names its directory and remembers the last few hundred names
//! it returned ([`RECENT_OFFSETS`]), so its memory does not grow with the directory. Each
//! READDIR reads the next entries from the store's `D` keys (sorted by name), so a READDIR at
//! offset 0 (`rewinddir`) starts afresh and sees names created since `opendir` and no longer
//! shows removed ones.
//!
//! ## Offsets
//! `.` is at offset 1, `..` at 2; every other entry's offset is a hash of its name
//! ([`name_offset`], at least 3), not a position in a list. An offset therefore stays valid
//! whatever else is created or removed, and "continue after offset o" means "continue after
//! the name whose offset is o", in the store's name order: the kernel's next READDIR, a
//! `seekdir` to an earlier `telldir`, or another handle (as an NFS server does) all resume at
//! the same place. The name behind an offset comes from the handle's recent names, else from a
//! scan of the directory for it (paged; only for offsets this handle returned long ago or
//! never). Across a walk, a name that exists throughout is returned exactly once; a name
//! created or removed during it may or may not appear (POSIX leaves it open, as ext4 does).
//! The one offset that cannot be resumed is that of a name removed since *and* no longer among
//! the handle's recent names: that READDIR fails with EINVAL rather than guess (restarting
//! would repeat names, ending would hide them).
//!
//! ## A directory removed while open
//! An open handle counts as an open of the directory's inode, as for files: `rmdir` or a
//! rename over it leaves the inode (nlink 0) until the last handle is released, so `fstat` of
//! the open descriptor still answers, and READDIR returns nothing. The orphan record written
//! with the removal makes a restart finish the deletion if the daemon stopped first.

use std::collections::VecDeque;

use super::*;

/// Names a handle remembers with their offsets (the newest ones it returned): the kernel
/// resumes at the offset of the last entry it used, which is one of these, so a walk never
/// scans. Up to ~40 KiB per handle with 50-byte names.
const RECENT_OFFSETS: usize = 512;
/// Directory entries read per page while looking for the name behind an unremembered offset.
const SCAN_PAGE: usize = 1000;
/// Offsets of `.` and `..`; names follow them.
const DOT: u64 = 1;
const DOTDOT: u64 = 2;

/// An open directory: which one, and the names it returned last.
pub(super) struct DirCursor {
    ino: u64,
    recent: VecDeque<(u64, Box<[u8]>)>,
}

/// The READDIR offset of the entry named `name`: derived from the name alone, so it stays
/// that entry's position across concurrent changes and across handles. 62 bits of blake3
/// plus 3 (below `i64::MAX`, as directory offsets must be; clear of 0, `.` and `..`).
pub(super) fn name_offset(name: &[u8]) -> u64 {
    let h = blake3::hash(name);
    let mut v = [0u8; 8];
    v.copy_from_slice(&h.as_bytes()[..8]);
    3 + (u64::from_le_bytes(v) >> 2)
}

impl Volume {
    /// Opens directory `ino` for reading. The handle keeps the inode alive (see the module doc).
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let e = self.dir_entry(ino)?;
        {
            let d = e.data.read();
            if d.gone || (d.attr.nlink == 0 && !d.orphan) {
                return Err(Error::NotFound);
            }
            // Counted under the lock, as open_file does: drop_link reads `opens` under the
            // write lock to choose between deleting now and keeping an orphan.
            e.opens.fetch_add(1, Ordering::AcqRel);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let cursor = DirCursor {
            ino,
            recent: VecDeque::new(),
        };
        self.handles.lock().insert(fh, Handle::Dir(cursor));
        Ok(fh)
    }

    /// At most `max` entries of open directory `fh` after position `offset` (0: from the
    /// start, `.` and `..` first), read from the store now. Each carries its own offset.
    pub fn readdir(&self, fh: u64, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        let (ino, remembered) = match self.handles.lock().get(&fh) {
            Some(Handle::Dir(c)) => (
                c.ino,
                c.recent
                    .iter()
                    .rev()
                    .find(|(o, _)| *o == offset)
                    .map(|(_, n)| n.to_vec()),
            ),
            _ => return Err(Error::BadHandle),
        };
        let attr = self.getattr(ino)?;
        if attr.inode.nlink == 0 {
            // Removed or replaced while open: nothing to list, not even `.` (as on ext4).
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let dot = |name: &[u8], ino, offset| DirEntry {
            name: name.to_vec(),
            ino,
            kind: FileKind::Dir,
            offset,
        };
        if offset == 0 && max > out.len() {
            out.push(dot(b".", ino, DOT));
        }
        if offset <= DOT && max > out.len() {
            out.push(dot(b"..", attr.inode.parent, DOTDOT));
        }
        let p = meta::dirent_prefix(ino);
        let start = if offset <= DOTDOT {
            p.clone()
        } else {
            let name = match remembered {
                Some(n) => n,
                None => self.name_at_offset(ino, offset)?.ok_or_else(|| {
                    Error::Invalid(format!(
                        "directory offset {offset}: its entry was removed since"
                    ))
                })?,
            };
            let mut k = meta::dirent_key(ino, &name);
            k.push(0); // the first key after that name
            k
        };
        let want = max - out.len();
        if want > 0 {
            for (k, v) in self
                .kv
                .range_limit(&start, prefix_end(&p).as_deref(), want)?
            {
                let (child, kind) = meta::decode_dirent(&v)?;
                let name = k[p.len()..].to_vec();
                out.push(DirEntry {
                    offset: name_offset(&name),
                    name,
                    ino: child,
                    kind,
                });
            }
        }
        if let Some(Handle::Dir(c)) = self.handles.lock().get_mut(&fh) {
            let named = out.iter().filter(|e| e.offset > DOTDOT);
            let skip = named.clone().count().saturating_sub(RECENT_OFFSETS);
            for e in named.skip(skip) {
                if c.recent.len() == RECENT_OFFSETS {
                    c.recent.pop_front();
                }
                c.recent
                    .push_back((e.offset, e.name.clone().into_boxed_slice()));
            }
        }
        Ok(out)
    }

    /// The name in directory `ino` whose offset is `offset`, by a paged scan.
    fn name_at_offset(&self, ino: u64, offset: u64) -> Result<Option<Vec<u8>>> {
        let p = meta::dirent_prefix(ino);
        let end = prefix_end(&p);
        let mut start = p.clone();
        loop {
            let page = self.kv.range_limit(&start, end.as_deref(), SCAN_PAGE)?;
            if let Some((k, _)) = page
                .iter()
                .find(|(k, _)| name_offset(&k[p.len()..]) == offset)
            {
                return Ok(Some(k[p.len()..].to_vec()));
            }
            match page.last() {
                Some((k, _)) if page.len() == SCAN_PAGE => {
                    start = k.clone();
                    start.push(0);
                }
                _ => return Ok(None),
            }
        }
    }

    /// Closes a directory handle; the last close of a directory removed while open frees it.
    pub fn releasedir(&self, fh: u64) -> Result<()> {
        let ino = match self.handles.lock().remove(&fh) {
            Some(Handle::Dir(c)) => c.ino,
            _ => return Err(Error::BadHandle),
        };
        self.close_open(ino).map(|_| ())
    }

    /// Counts one handle of `ino` (a file's or a directory's) closed. The last close of an
    /// inode that lost its last name while open frees it (and gives `None`).
    pub(super) fn close_open(&self, ino: u64) -> Result<Option<Arc<Entry>>> {
        let e = self.entry(ino)?;
        let last = e.opens.fetch_sub(1, Ordering::AcqRel) == 1;
        let orphan = e.data.read().orphan;
        if last && orphan {
            let _ns = self.ns.lock();
            self.delete_inode_data(ino)?;
            return Ok(None);
        }
        Ok(Some(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::testutil::{volume, write, ME};

    fn names(vol: &Volume, fh: u64, offset: u64, max: usize) -> Vec<(String, u64)> {
        vol.readdir(fh, offset, max)
            .unwrap()
            .into_iter()
            .map(|e| (String::from_utf8(e.name).unwrap(), e.offset))
            .collect()
    }

    #[test]
    fn rewind_is_fresh_and_offsets_survive_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = volume(&tmp);
        for i in 0..10 {
            write(&vol, ROOT_INO, &format!("f{i}"), b"");
        }
        let fh = vol.opendir(ROOT_INO).unwrap();
        let first = names(&vol, fh, 0, 5);
        assert_eq!(first[0].0, ".");
        assert_eq!(first[1].0, "..");
        assert_eq!(first[2].0, "f0");
        // A name before the resume point goes, one after it comes: the walk goes on from f2.
        vol.unlink(ROOT_INO, b"f1").unwrap();
        write(&vol, ROOT_INO, "f5a", b"");
        let rest = names(&vol, fh, first[4].1, 100);
        let rest: Vec<&str> = rest.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(rest, ["f3", "f4", "f5", "f5a", "f6", "f7", "f8", "f9"]);
        // Another handle resumes at an offset this one returned (a scan, not a memory).
        let other = vol.opendir(ROOT_INO).unwrap();
        assert_eq!(names(&vol, other, first[4].1, 1)[0].0, "f3");
        // Rewind: fresh.
        let again: Vec<String> = names(&vol, fh, 0, 100).into_iter().map(|e| e.0).collect();
        assert!(again.contains(&"f5a".to_string()) && !again.contains(&"f1".to_string()));
        // A removed name this handle never returned: EINVAL.
        let gone = name_offset(b"f1");
        assert!(matches!(
            vol.readdir(other, gone, 10),
            Err(Error::Invalid(_))
        ));
        vol.releasedir(fh).unwrap();
        vol.releasedir(other).unwrap();
    }

    #[test]
    fn open_directory_outlives_its_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = volume(&tmp);
        let a = vol.mkdir(ROOT_INO, b"a", 0o755, ME).unwrap();
        let fh = vol.opendir(a.ino).unwrap();
        vol.rmdir(ROOT_INO, b"a").unwrap();
        let st = vol.getattr(a.ino).unwrap();
        assert_eq!((st.inode.nlink, st.inode.kind), (0, FileKind::Dir));
        assert!(vol.readdir(fh, 0, 10).unwrap().is_empty());
        vol.releasedir(fh).unwrap();
        assert!(matches!(vol.getattr(a.ino), Err(Error::NotFound)));
        // Open again, removed, and the volume closed before the release: the restart frees it.
        let b = vol.mkdir(ROOT_INO, b"b", 0o755, ME).unwrap();
        vol.opendir(b.ino).unwrap();
        vol.rmdir(ROOT_INO, b"b").unwrap();
        drop(vol);
        let vol = volume(&tmp);
        assert!(matches!(vol.getattr(b.ino), Err(Error::NotFound)));
    }
}

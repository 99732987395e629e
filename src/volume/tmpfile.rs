//! `O_TMPFILE`: a regular file made open and without a name, as tools use it for atomic
//! writes (write the file, then `linkat` it into place, or let it vanish at close).
//!
//! The file is an *orphan* from its first moment, recorded as one in the same batch that
//! creates it: the same state as a file unlinked while open. So the last close deletes it, and
//! after a crash the next start does (`finish_orphans`): a temporary file that never got a name
//! leaves nothing behind. `link` gives it its first name (the kernel allows that only for a
//! file made with `O_TMPFILE` and without `O_EXCL`), which ends its orphan state in the batch
//! that adds the name.

use super::*;

impl Volume {
    /// Creates an unnamed regular file in directory `parent` (its owner, group and mode as a
    /// new file there would get them) and opens it; returns its attributes (link count 0) and
    /// a handle.
    pub fn create_tmpfile(&self, parent: u64, mode: u32, who: Caller) -> Result<(Attr, u64)> {
        self.check_writable(parent)?;
        let (ino, inode) = {
            let _ns = self.ns.lock();
            let pe = self.dir_entry(parent)?;
            let pd = pe.data.read();
            if pd.gone || pd.attr.nlink == 0 {
                return Err(Error::NotFound);
            }
            let mut gid = who.gid;
            let mut perm = (mode & 0o7777) as u16;
            if pd.attr.perm & libc::S_ISGID as u16 != 0 {
                gid = pd.attr.gid;
            }
            drop(pd);
            let acls = self.acl_inherit(parent, FileKind::File, &mut perm)?;
            let mut inode = Inode::new(FileKind::File, perm, who.uid, gid, parent);
            inode.nlink = 0;
            let mut b = Batch::default();
            let ino = self.alloc_ino(&mut b);
            b.put(meta::inode_key(ino), inode.encode());
            for (xname, value) in acls {
                b.put(meta::xattr_key(ino, xname), value);
            }
            b.put(meta::orphan_key(ino), Vec::new());
            self.apply(b)?;
            (ino, inode)
        };
        let e = self.entry(ino)?;
        e.data.write().orphan = true;
        let fh = self.open_file(ino)?;
        Ok((Attr { ino, inode }, fh))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::volume;
    use super::*;

    #[test]
    fn tmpfile_linked_keeps_data_and_unlinked_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = volume(&tmp);
        let who = Caller { uid: 0, gid: 0 };
        let (a, fh) = vol.create_tmpfile(ROOT_INO, 0o600, who).unwrap();
        assert_eq!(a.inode.nlink, 0);
        vol.write(a.ino, 0, b"tmp data").unwrap();
        let linked = vol.link(a.ino, ROOT_INO, b"named").unwrap();
        assert_eq!(linked.inode.nlink, 1);
        vol.release(fh).unwrap();
        let found = vol.lookup(ROOT_INO, b"named").unwrap();
        assert_eq!(found.ino, a.ino);
        assert_eq!(found.inode.size, 8);

        let (b, fh) = vol.create_tmpfile(ROOT_INO, 0o600, who).unwrap();
        vol.write(b.ino, 0, b"gone").unwrap();
        vol.release(fh).unwrap();
        assert!(matches!(vol.getattr(b.ino), Err(Error::NotFound)));
    }
}

//! File handles that outlive the kernel's caches: what NFS exports (kernel nfsd re-exporting
//! the mount) and `open_by_handle_at` need.
//!
//! With FUSE export support negotiated, the kernel encodes a handle as (inode number,
//! generation). To open a handle whose inode it no longer caches (caches dropped, or a new
//! mount after a restart) it asks the daemon for the inode itself ("." looked up in it) and, to
//! reconnect a directory, for its parent (".."). Both are answered from the store for any inode
//! number, whether or not the daemon has seen it since it started.
//!
//! **Inode numbers are never reused** within a volume's history: live ones come from a
//! persistent counter (`next_ino`), a snapshot's copies are numbered from the snapshot's id,
//! which also comes from a counter that only grows. A handle of a deleted file therefore finds
//! nothing and fails with ESTALE, never another file. Files in the recycle bin have no name
//! (link count 0): their handles fail the same way until a restore gives them one again.
//!
//! The one way a number can come back is a disaster recovery (`tiergate recover`): the
//! volume is rebuilt as of its consistency point, and numbers the lost appliance handed out
//! after that point are handed out again. The **generation** covers that: one value for the
//! whole volume, 0 until the first recovery, which sets it to a new value (the recovery's Unix
//! time, and always above the previous one). Handles made before a recovery then fail with
//! ESTALE. The root keeps generation 0, as the kernel requires.

use super::*;

/// The misc record that holds the volume's handle generation (absent: 0).
const GENERATION_KEY: &str = "export_generation";

fn decode(v: Option<Vec<u8>>) -> Result<u32> {
    match v {
        None => Ok(0),
        Some(v) => {
            Ok(u32::from_le_bytes(v.as_slice().try_into().map_err(
                |_| Error::Corrupt(format!("counter {GENERATION_KEY}")),
            )?))
        }
    }
}

/// For `tiergate recover`: the record that gives the rebuilt volume a generation of its own,
/// so that handles given out by the lost appliance never open a file that reuses a number.
pub(crate) fn next_generation(kv: &impl KvStore) -> Result<(Vec<u8>, Vec<u8>)> {
    let old = decode(kv.get(&meta::misc_key(GENERATION_KEY))?)?;
    let new = (meta::unix_now() as u32).max(old.wrapping_add(1)).max(1);
    Ok((meta::misc_key(GENERATION_KEY), new.to_le_bytes().to_vec()))
}

impl Volume {
    /// The generation that goes with every inode number in replies to the kernel (see the
    /// module doc). Read once when the mount starts.
    pub fn handle_generation(&self) -> Result<u32> {
        decode(self.kv.get(&meta::misc_key(GENERATION_KEY))?)
    }

    /// An inode by its number alone, as a file handle names it: found if it exists and has a
    /// name. A deleted or recycled inode (link count 0) is `NotFound`, which the kernel turns
    /// into ESTALE; one still open is in the kernel's cache and never asked for.
    pub fn handle_lookup(&self, ino: u64) -> Result<Attr> {
        let a = self.getattr(ino)?;
        if a.inode.nlink == 0 {
            return Err(Error::NotFound);
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::volume;
    use super::*;

    #[test]
    fn recovery_generation_is_new_and_nonzero_every_time() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = volume(&tmp);
        assert_eq!(vol.handle_generation().unwrap(), 0);
        let mut seen = vec![0];
        for _ in 0..3 {
            let (k, v) = next_generation(&vol.kv).unwrap();
            let mut b = Batch::default();
            b.put(k, v);
            vol.kv.apply(b).unwrap();
            let g = vol.handle_generation().unwrap();
            assert!(g > *seen.last().unwrap(), "{g} after {seen:?}");
            seen.push(g);
        }
    }

    #[test]
    fn handle_lookup_finds_named_inodes_only() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = volume(&tmp);
        let who = Caller { uid: 0, gid: 0 };
        let (f, fh) = vol.create_file(ROOT_INO, b"f", 0o644, who).unwrap();
        vol.release(fh).unwrap();
        let d = vol.mkdir(ROOT_INO, b"d", 0o755, who).unwrap();
        assert_eq!(vol.handle_lookup(f.ino).unwrap().ino, f.ino);
        assert_eq!(vol.handle_lookup(d.ino).unwrap().ino, d.ino);
        vol.unlink(ROOT_INO, b"f").unwrap();
        vol.rmdir(ROOT_INO, b"d").unwrap();
        assert!(matches!(vol.handle_lookup(f.ino), Err(Error::NotFound)));
        assert!(matches!(vol.handle_lookup(d.ino), Err(Error::NotFound)));
        assert!(matches!(
            vol.handle_lookup(u64::MAX >> 2),
            Err(Error::NotFound)
        ));
    }
}

//! Set-uid and set-gid bits cleared by changes, as the kernel clears them on a local
//! filesystem (Linux 6.x: `setattr_should_drop_suidgid`, `setattr_should_drop_sgid`).
//!
//! The FUSE mount negotiates `FUSE_HANDLE_KILLPRIV_V2`, which makes this the daemon's job: the
//! kernel's own fallback for FUSE clears set-gid only on group-executable files, so a write by
//! someone outside the file's group left set-gid on a file without group-exec, where ext4 and
//! tmpfs clear it. The rules, for regular files only:
//!
//! - **write, truncate, fallocate, copy_file_range into the file** by a caller without
//!   `CAP_FSETID`: set-uid is cleared; set-gid is cleared if the file is group-executable or
//!   the caller is not in the file's group. A caller with `CAP_FSETID` (root) clears nothing.
//! - **chown/chgrp** (any caller, root too): set-uid is cleared; set-gid is cleared if the file
//!   is group-executable, or the caller is neither in the file's (old) group nor has
//!   `CAP_FSETID`.
//!
//! Who the caller is (its groups and capability) is the front-end's knowledge, asked for
//! lazily through [`Creds`] only when the file carries one of the bits.

use super::*;

/// What a front-end knows about the caller of a change.
#[derive(Debug, Clone, Default)]
pub struct Creds {
    /// The filesystem group id and the supplementary groups.
    pub groups: Vec<u32>,
    /// Holds `CAP_FSETID` (normally: root).
    pub fsetid: bool,
}

/// The kind of change that may clear the bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivChange {
    /// write, truncate, fallocate, copy_file_range.
    Modify,
    /// chown or chgrp.
    Chown,
}

const SUID: u16 = libc::S_ISUID as u16;
const SGID: u16 = libc::S_ISGID as u16;
const XGRP: u16 = libc::S_IXGRP as u16;

/// The bits a change by `creds` clears from a regular file with `perm` and group `gid`.
pub fn bits_to_clear(perm: u16, gid: u32, change: PrivChange, creds: &Creds) -> u16 {
    if change == PrivChange::Modify && creds.fsetid {
        return 0;
    }
    let mut kill = perm & SUID;
    if perm & SGID != 0 {
        let in_group = creds.groups.contains(&gid);
        if perm & XGRP != 0 || (!in_group && !creds.fsetid) {
            kill |= SGID;
        }
    }
    kill
}

impl Volume {
    /// Clears what `change` by the caller clears from `ino` (see the module doc). `creds` is
    /// called only when the file has set-uid or set-gid.
    pub fn drop_privs(
        &self,
        ino: u64,
        change: PrivChange,
        creds: impl FnOnce() -> Creds,
    ) -> Result<()> {
        let a = self.getattr(ino)?;
        if a.inode.kind != FileKind::File || a.inode.perm & (SUID | SGID) == 0 {
            return Ok(());
        }
        let kill = bits_to_clear(a.inode.perm, a.inode.gid, change, &creds());
        if kill == 0 {
            return Ok(());
        }
        self.check_writable(ino)?;
        let _ns = self.ns.lock();
        let e = self.entry(ino)?;
        let mut d = e.data.write();
        if d.gone {
            return Err(Error::NotFound);
        }
        d.attr.perm &= !kill;
        d.attr.ctime = now();
        let mut b = Batch::default();
        b.put(meta::inode_key(ino), d.attr.encode());
        self.apply(b)?;
        d.attr_dirty = false;
        drop(d);
        drop(_ns);
        // The kernel does not refresh the mode after a write or fallocate by itself.
        self.changed(&[Changed::Attr(ino)]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_the_kernel_on_tmpfs() {
        // Measured on tmpfs (Linux 6.18) as uid 65534 (groups: 65534 only) and as root.
        let user = Creds {
            groups: vec![65534],
            fsetid: false,
        };
        let root = Creds {
            groups: vec![0],
            fsetid: true,
        };
        use PrivChange::*;
        let after = |perm: u16, gid: u32, c: PrivChange, who: &Creds| {
            perm & !bits_to_clear(perm, gid, c, who)
        };
        for c in [Modify, Chown] {
            assert_eq!(after(0o6755, 65534, c, &user), 0o755);
            assert_eq!(after(0o6745, 65534, c, &user), 0o2745);
            assert_eq!(after(0o2745, 65534, c, &user), 0o2745);
            assert_eq!(after(0o6745, 0, c, &user), 0o745);
            assert_eq!(after(0o2745, 0, c, &user), 0o745);
            assert_eq!(after(0o2755, 0, c, &user), 0o755);
        }
        assert_eq!(after(0o6755, 0, Modify, &root), 0o6755);
        assert_eq!(after(0o6745, 0, Chown, &root), 0o2745);
        assert_eq!(after(0o6755, 0, Chown, &root), 0o755);
        assert_eq!(after(0o2745, 65534, Chown, &root), 0o2745);
    }
}

//! POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`), kept in step with the
//! mode the way a local filesystem keeps them.
//!
//! The FUSE mount negotiates `FUSE_POSIX_ACL`: the kernel then checks permissions against the
//! ACLs itself (it reads them through getxattr and caches them), turns `setfacl`'s xattr into
//! a parsed ACL and back before it reaches us, and sends the caller's umask with each create
//! instead of applying it. What stays the daemon's job, and lives here:
//!
//! - **One truth for mode and access ACL.** Setting an access ACL sets the mode's owner,
//!   group (the mask when there is one) and other bits from it; an ACL that says no more than
//!   the mode (owner, owning group and other only) is not stored at all, so a file without
//!   extended entries has no ACL record (getfacl shows the mode). A chmod rewrites the stored
//!   ACL's owner, mask (or owning group) and other entries.
//! - **Inheritance.** A new entry under a directory with a default ACL gets the default as its
//!   access ACL, masked by the requested mode, and the umask is not applied (POSIX.1e; the
//!   kernel's `posix_acl_create`). A new directory also inherits the default ACL. Without a
//!   default ACL the umask applies ([`Volume::create_mode`]). Symlinks never carry ACLs.
//! - **Strict parsing.** ACL values are parsed and validated like the kernel's
//!   `posix_acl_valid` (version 2, entries ordered by tag and id, exactly one owner, owning
//!   group and other entry, a mask whenever named entries exist, permissions within rwx);
//!   anything else is `Invalid` (EINVAL), never stored.
//!
//! Set-gid rules for new entries (the parent's group, set-gid passed on to directories) are in
//! `make_node`; this file only adjusts the permission bits.

use super::*;

/// The access ACL's xattr name.
pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
/// The default ACL's xattr name (directories only).
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

const ACL_VERSION: u32 = 2;
const TAG_USER_OBJ: u16 = 0x01;
const TAG_USER: u16 = 0x02;
const TAG_GROUP_OBJ: u16 = 0x04;
const TAG_GROUP: u16 = 0x08;
const TAG_MASK: u16 = 0x10;
const TAG_OTHER: u16 = 0x20;
/// The id stored for entries that name no user or group.
const UNDEFINED_ID: u32 = u32::MAX;
/// More entries than any filesystem accepts in one xattr (ext4 takes ~500 in a block).
const MAX_ENTRIES: usize = 8191;

pub fn is_acl_name(name: &[u8]) -> bool {
    name == ACL_ACCESS || name == ACL_DEFAULT
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A parsed, valid POSIX ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

fn invalid(why: &str) -> Error {
    Error::Invalid(format!("POSIX ACL: {why}"))
}

impl Acl {
    /// Parses the xattr form (`posix_acl_xattr_header` + entries, little-endian) and checks
    /// it as the kernel's `posix_acl_valid` does.
    pub fn parse(bytes: &[u8]) -> Result<Acl> {
        if bytes.len() < 4 || !(bytes.len() - 4).is_multiple_of(8) {
            return Err(invalid("size is not a header plus whole entries"));
        }
        let version = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        if version != ACL_VERSION {
            return Err(invalid("unknown version"));
        }
        let n = (bytes.len() - 4) / 8;
        if n == 0 || n > MAX_ENTRIES {
            return Err(invalid("no entries or too many"));
        }
        let mut entries = Vec::with_capacity(n);
        for c in bytes[4..].chunks_exact(8) {
            let tag = u16::from_le_bytes([c[0], c[1]]);
            let perm = u16::from_le_bytes([c[2], c[3]]);
            let id = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            let id = match tag {
                TAG_USER | TAG_GROUP => id,
                // The kernel ignores the id of unnamed entries; keep the canonical form.
                TAG_USER_OBJ | TAG_GROUP_OBJ | TAG_MASK | TAG_OTHER => UNDEFINED_ID,
                _ => return Err(invalid("unknown entry tag")),
            };
            if perm & !7 != 0 {
                return Err(invalid("permissions beyond rwx"));
            }
            entries.push(Entry { tag, perm, id });
        }
        let acl = Acl { entries };
        acl.validate()?;
        Ok(acl)
    }

    /// Order: owner, named users by id, owning group, named groups by id, mask, other; one
    /// each of owner, owning group, other; a mask exactly when named entries exist or
    /// optionally without them.
    fn validate(&self) -> Result<()> {
        let rank = |t: u16| match t {
            TAG_USER_OBJ => 0,
            TAG_USER => 1,
            TAG_GROUP_OBJ => 2,
            TAG_GROUP => 3,
            TAG_MASK => 4,
            _ => 5,
        };
        let mut prev: Option<&Entry> = None;
        let (mut user_obj, mut group_obj, mut other, mut mask, mut named) = (0, 0, 0, 0, 0);
        for e in &self.entries {
            if let Some(p) = prev {
                let ordered = rank(p.tag) < rank(e.tag)
                    || (p.tag == e.tag && matches!(e.tag, TAG_USER | TAG_GROUP) && p.id < e.id);
                if !ordered {
                    return Err(invalid("entries out of order or repeated"));
                }
            }
            match e.tag {
                TAG_USER_OBJ => user_obj += 1,
                TAG_GROUP_OBJ => group_obj += 1,
                TAG_OTHER => other += 1,
                TAG_MASK => mask += 1,
                _ => {
                    if e.id == UNDEFINED_ID {
                        return Err(invalid("a named entry without an id"));
                    }
                    named += 1
                }
            }
            prev = Some(e);
        }
        if user_obj != 1 || group_obj != 1 || other != 1 {
            return Err(invalid(
                "owner, owning group and other entries are required",
            ));
        }
        if named > 0 && mask == 0 {
            return Err(invalid("named entries without a mask entry"));
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + 8 * self.entries.len());
        v.extend_from_slice(&ACL_VERSION.to_le_bytes());
        for e in &self.entries {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }

    fn perm_of(&self, tag: u16) -> Option<u16> {
        self.entries.iter().find(|e| e.tag == tag).map(|e| e.perm)
    }

    /// The permission bits (0o777) the ACL stands for: owner, mask or owning group, other.
    pub fn mode_bits(&self) -> u16 {
        let group = self
            .perm_of(TAG_MASK)
            .or(self.perm_of(TAG_GROUP_OBJ))
            .unwrap_or(0);
        self.perm_of(TAG_USER_OBJ).unwrap_or(0) << 6
            | group << 3
            | self.perm_of(TAG_OTHER).unwrap_or(0)
    }

    /// Whether the mode alone says everything this ACL says (kernel: `posix_acl_equiv_mode`
    /// returning 0): no named entries and no mask.
    pub fn is_minimal(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, TAG_USER_OBJ | TAG_GROUP_OBJ | TAG_OTHER))
    }

    /// chmod: owner, mask (or owning group) and other take the new bits
    /// (`posix_acl_chmod_masq`).
    pub fn chmod(&mut self, perm: u16) {
        let has_mask = self.perm_of(TAG_MASK).is_some();
        for e in &mut self.entries {
            match e.tag {
                TAG_USER_OBJ => e.perm = (perm >> 6) & 7,
                TAG_MASK => e.perm = (perm >> 3) & 7,
                TAG_GROUP_OBJ if !has_mask => e.perm = (perm >> 3) & 7,
                TAG_OTHER => e.perm = perm & 7,
                _ => {}
            }
        }
    }

    /// A new entry's access ACL from its parent's default ACL and the requested mode
    /// (`posix_acl_create_masq`): both are narrowed to what the other allows. Returns the
    /// new permission bits (0o777); special bits of `mode` are the caller's.
    pub fn create_masq(&mut self, mode: u16) -> u16 {
        let mut m = mode & 0o777;
        let has_mask = self.perm_of(TAG_MASK).is_some();
        for e in &mut self.entries {
            match e.tag {
                TAG_USER_OBJ => {
                    e.perm &= (m >> 6) & 7;
                    m &= (e.perm << 6) | !0o700;
                }
                TAG_OTHER => {
                    e.perm &= m & 7;
                    m &= e.perm | !0o007;
                }
                _ => {}
            }
        }
        let gtag = if has_mask { TAG_MASK } else { TAG_GROUP_OBJ };
        if let Some(e) = self.entries.iter_mut().find(|e| e.tag == gtag) {
            e.perm &= (m >> 3) & 7;
            m &= (e.perm << 3) | !0o070;
        }
        m & 0o777
    }
}

impl Volume {
    /// The mode a new entry is created with from FUSE's request: the umask applies unless the
    /// parent has a default ACL, which then takes its place (see [`Acl::create_masq`]).
    pub fn create_mode(&self, parent: u64, mode: u32, umask: u32) -> u32 {
        match self.kv.get(&meta::xattr_key(parent, ACL_DEFAULT)) {
            Ok(Some(_)) => mode,
            _ => mode & !umask,
        }
    }

    /// For `make_node`: narrows `perm` by the parent's default ACL and returns the ACL xattrs
    /// the new entry gets (name, value); nothing when the parent has no default ACL.
    pub(super) fn acl_inherit(
        &self,
        parent: u64,
        kind: FileKind,
        perm: &mut u16,
    ) -> Result<Vec<(&'static [u8], Vec<u8>)>> {
        if kind == FileKind::Symlink {
            return Ok(Vec::new());
        }
        let Some(raw) = self.kv.get(&meta::xattr_key(parent, ACL_DEFAULT))? else {
            return Ok(Vec::new());
        };
        let default = Acl::parse(&raw)?;
        let mut out = Vec::new();
        if kind == FileKind::Dir {
            out.push((ACL_DEFAULT, default.encode()));
        }
        let mut access = default;
        let bits = access.create_masq(*perm);
        *perm = (*perm & !0o777) | bits;
        if !access.is_minimal() {
            out.push((ACL_ACCESS, access.encode()));
        }
        Ok(out)
    }

    /// A file made elsewhere (the WebDAV share's staging area) that now takes a new name under
    /// `parent`: it gets the group, mode and ACL a file created there with `mode` would have
    /// (the parent's group if it is set-gid, its default ACL).
    pub fn settle_new_file(&self, ino: u64, parent: u64, mode: u32) -> Result<()> {
        let p = self.getattr(parent)?.inode;
        let mut perm = (mode & 0o7777) as u16;
        let acls = self.acl_inherit(parent, FileKind::File, &mut perm)?;
        let setgid = p.perm & libc::S_ISGID as u16 != 0;
        self.check_writable(ino)?;
        let _ns = self.ns.lock();
        let e = self.entry(ino)?;
        let mut d = e.data.write();
        if d.gone {
            return Err(Error::NotFound);
        }
        d.attr.perm = perm;
        if setgid {
            d.attr.gid = p.gid;
        }
        let mut b = Batch::default();
        b.put(meta::inode_key(ino), d.attr.encode());
        for (name, value) in acls {
            b.put(meta::xattr_key(ino, name), value);
        }
        self.apply(b)
    }

    /// Gives `to` the stored access ACL of `from`, if it has one (the share replacing a file).
    pub fn copy_access_acl(&self, from: u64, to: u64) -> Result<()> {
        match self.kv.get(&meta::xattr_key(from, ACL_ACCESS))? {
            Some(v) => self.set_acl(to, ACL_ACCESS, &v, XattrSet::Any),
            None => Ok(()),
        }
    }

    /// For `setattr` with a mode: rewrites a stored access ACL to match `perm`.
    pub(super) fn acl_chmod(&self, ino: u64, perm: u16, b: &mut Batch) -> Result<()> {
        let key = meta::xattr_key(ino, ACL_ACCESS);
        if let Some(raw) = self.kv.get(&key)? {
            let mut acl = Acl::parse(&raw)?;
            acl.chmod(perm);
            b.put(key, acl.encode());
        }
        Ok(())
    }

    /// setxattr of an ACL name: validated; an access ACL sets the mode and is stored only if
    /// it says more than the mode.
    pub(super) fn set_acl(&self, ino: u64, name: &[u8], value: &[u8], how: XattrSet) -> Result<()> {
        let acl = Acl::parse(value)?;
        self.check_writable(ino)?;
        let _ns = self.ns.lock();
        let e = self.entry(ino)?;
        let mut d = e.data.write();
        if d.gone {
            return Err(Error::NotFound);
        }
        match d.attr.kind {
            FileKind::Symlink => return Err(Error::Unsupported("ACLs on symlinks")),
            FileKind::Dir => {}
            _ if name == ACL_DEFAULT => {
                return Err(Error::Invalid(
                    "a default ACL on something that is not a directory".into(),
                ))
            }
            _ => {}
        }
        let key = meta::xattr_key(ino, name);
        let exists = self.kv.get(&key)?.is_some();
        match how {
            XattrSet::Create if exists => return Err(Error::Exists),
            XattrSet::Replace if !exists => return Err(Error::NoXattr),
            _ => {}
        }
        let mut b = Batch::default();
        if name == ACL_ACCESS {
            d.attr.perm = (d.attr.perm & !0o777) | acl.mode_bits();
            if acl.is_minimal() {
                if exists {
                    b.delete(key);
                }
            } else {
                b.put(key, acl.encode());
            }
        } else {
            b.put(key, acl.encode());
        }
        d.attr.ctime = now();
        b.put(meta::inode_key(ino), d.attr.encode());
        self.apply(b)
    }

    /// removexattr of an ACL name: removing one that is not stored succeeds, as on ext4 (an
    /// access ACL equal to the mode is never stored, yet `getfacl` shows one).
    pub(super) fn remove_acl(&self, ino: u64, name: &[u8]) -> Result<()> {
        self.check_writable(ino)?;
        let _ns = self.ns.lock();
        let e = self.entry(ino)?;
        let mut d = e.data.write();
        if d.gone {
            return Err(Error::NotFound);
        }
        let key = meta::xattr_key(ino, name);
        if self.kv.get(&key)?.is_none() {
            return Ok(());
        }
        d.attr.ctime = now();
        let mut b = Batch::default();
        b.delete(key);
        b.put(meta::inode_key(ino), d.attr.encode());
        self.apply(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = ACL_VERSION.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }
    const U: u32 = UNDEFINED_ID;

    #[test]
    fn parse_accepts_canonical_and_round_trips() {
        let bytes = acl(&[
            (TAG_USER_OBJ, 6, U),
            (TAG_USER, 4, 1000),
            (TAG_USER, 6, 1001),
            (TAG_GROUP_OBJ, 4, U),
            (TAG_GROUP, 5, 50),
            (TAG_MASK, 7, U),
            (TAG_OTHER, 0, U),
        ]);
        let a = Acl::parse(&bytes).unwrap();
        assert_eq!(a.encode(), bytes);
        assert_eq!(a.mode_bits(), 0o670);
        assert!(!a.is_minimal());
        let m = Acl::parse(&acl(&[
            (TAG_USER_OBJ, 7, U),
            (TAG_GROUP_OBJ, 5, U),
            (TAG_OTHER, 1, U),
        ]));
        assert!(m.unwrap().is_minimal());
    }

    #[test]
    fn parse_refuses_hostile_values() {
        let ok = [
            (TAG_USER_OBJ, 6, U),
            (TAG_GROUP_OBJ, 4, U),
            (TAG_OTHER, 4, U),
        ];
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![2, 0, 0],
            acl(&[]),
            {
                let mut v = acl(&ok);
                v[0] = 1;
                v
            },
            {
                let mut v = acl(&ok);
                v.push(0);
                v
            },
            acl(&[(TAG_USER_OBJ, 6, U), (TAG_OTHER, 4, U)]),
            acl(&[
                (TAG_GROUP_OBJ, 4, U),
                (TAG_USER_OBJ, 6, U),
                (TAG_OTHER, 4, U),
            ]),
            acl(&[
                (TAG_USER_OBJ, 6, U),
                (TAG_USER_OBJ, 6, U),
                (TAG_GROUP_OBJ, 4, U),
                (TAG_OTHER, 4, U),
            ]),
            acl(&[
                (TAG_USER_OBJ, 8, U),
                (TAG_GROUP_OBJ, 4, U),
                (TAG_OTHER, 4, U),
            ]),
            acl(&[
                (TAG_USER_OBJ, 6, U),
                (0x40, 4, U),
                (TAG_GROUP_OBJ, 4, U),
                (TAG_OTHER, 4, U),
            ]),
            // Named entry without a mask; repeated and unordered ids; a named entry with no id.
            acl(&[
                (TAG_USER_OBJ, 6, U),
                (TAG_USER, 4, 5),
                (TAG_GROUP_OBJ, 4, U),
                (TAG_OTHER, 4, U),
            ]),
            acl(&[
                (TAG_USER_OBJ, 6, U),
                (TAG_USER, 4, 5),
                (TAG_USER, 4, 5),
                (TAG_GROUP_OBJ, 4, U),
                (TAG_MASK, 4, U),
                (TAG_OTHER, 4, U),
            ]),
            acl(&[
                (TAG_USER_OBJ, 6, U),
                (TAG_USER, 4, 9),
                (TAG_USER, 4, 5),
                (TAG_GROUP_OBJ, 4, U),
                (TAG_MASK, 4, U),
                (TAG_OTHER, 4, U),
            ]),
            acl(&[
                (TAG_USER_OBJ, 6, U),
                (TAG_USER, 4, U),
                (TAG_GROUP_OBJ, 4, U),
                (TAG_MASK, 4, U),
                (TAG_OTHER, 4, U),
            ]),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(
                matches!(Acl::parse(c), Err(Error::Invalid(_))),
                "case {i} accepted"
            );
        }
    }

    #[test]
    fn create_masq_and_chmod_follow_the_kernel() {
        // default: u::rwx u:1000:rwx g::r-x m::rwx o::r-x, created with 0666 → 0664 (mask rw-).
        let mut d = Acl::parse(&acl(&[
            (TAG_USER_OBJ, 7, U),
            (TAG_USER, 7, 1000),
            (TAG_GROUP_OBJ, 5, U),
            (TAG_MASK, 7, U),
            (TAG_OTHER, 5, U),
        ]))
        .unwrap();
        assert_eq!(d.clone().create_masq(0o666), 0o664);
        assert_eq!(d.clone().create_masq(0o750), 0o750);
        let bits = d.create_masq(0o644);
        assert_eq!(bits, 0o644);
        assert_eq!(d.perm_of(TAG_MASK), Some(4));
        d.chmod(0o710);
        assert_eq!(d.mode_bits(), 0o710);
        assert_eq!(
            d.perm_of(TAG_GROUP_OBJ),
            Some(5),
            "the owning group sits behind the mask"
        );
        // Without a mask the owning group takes the group bits.
        let mut m = Acl::parse(&acl(&[
            (TAG_USER_OBJ, 7, U),
            (TAG_GROUP_OBJ, 7, U),
            (TAG_OTHER, 0, U),
        ]))
        .unwrap();
        assert_eq!(m.create_masq(0o755), 0o750);
    }
}

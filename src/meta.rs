//! Records of the metadata store: keys and fixed binary layouts.
//!
//! Every record lives in one ordered key space (see [`crate::kv`]), distinguished by a one-byte
//! tag. Integers in keys are big-endian so that keys sort numerically (extents of a file come in
//! offset order, dirents of a directory in name order). Values are little-endian fixed layouts
//! with a leading version byte where the record may grow. docs/FORMAT.md describes them byte by
//! byte; do not change a layout without bumping its version and keeping the old decoder.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::crypto::ChunkId;
use crate::error::{Error, Result};

pub const ROOT_INO: u64 = 1;

// ---- key tags: on-disk format, do not change ----
const TAG_INODE: u8 = b'I';
const TAG_DIRENT: u8 = b'D';
const TAG_EXTENT: u8 = b'E';
const TAG_CHUNK: u8 = b'C';
const TAG_PACK: u8 = b'P';
const TAG_XATTR: u8 = b'X';
const TAG_ORPHAN: u8 = b'O';
const TAG_MISC: u8 = b'M';
const TAG_RECYCLED: u8 = b'R';
const TAG_SNAPSHOT: u8 = b'S';

fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(tag);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub fn inode_key(ino: u64) -> Vec<u8> {
    key(TAG_INODE, &[&ino.to_be_bytes()])
}
pub fn dirent_key(parent: u64, name: &[u8]) -> Vec<u8> {
    key(TAG_DIRENT, &[&parent.to_be_bytes(), name])
}
pub fn dirent_prefix(parent: u64) -> Vec<u8> {
    key(TAG_DIRENT, &[&parent.to_be_bytes()])
}
pub fn extent_key(ino: u64, offset: u64) -> Vec<u8> {
    key(TAG_EXTENT, &[&ino.to_be_bytes(), &offset.to_be_bytes()])
}
pub fn extent_prefix(ino: u64) -> Vec<u8> {
    key(TAG_EXTENT, &[&ino.to_be_bytes()])
}
pub fn chunk_key(id: &ChunkId) -> Vec<u8> {
    key(TAG_CHUNK, &[&id.0])
}
pub fn chunk_prefix() -> Vec<u8> {
    vec![TAG_CHUNK]
}
pub fn pack_key(pack: u64) -> Vec<u8> {
    key(TAG_PACK, &[&pack.to_be_bytes()])
}
pub fn pack_prefix() -> Vec<u8> {
    vec![TAG_PACK]
}
pub fn xattr_key(ino: u64, name: &[u8]) -> Vec<u8> {
    key(TAG_XATTR, &[&ino.to_be_bytes(), name])
}
pub fn xattr_prefix(ino: u64) -> Vec<u8> {
    key(TAG_XATTR, &[&ino.to_be_bytes()])
}
pub fn orphan_key(ino: u64) -> Vec<u8> {
    key(TAG_ORPHAN, &[&ino.to_be_bytes()])
}
pub fn orphan_prefix() -> Vec<u8> {
    vec![TAG_ORPHAN]
}
/// A file in the recycle bin: when it was deleted (Unix seconds, so keys sort oldest first),
/// and its inode. The value is [`encode_recycled`].
pub fn recycled_key(deleted_unix: u64, ino: u64) -> Vec<u8> {
    key(
        TAG_RECYCLED,
        &[&deleted_unix.to_be_bytes(), &ino.to_be_bytes()],
    )
}
pub fn recycled_prefix() -> Vec<u8> {
    vec![TAG_RECYCLED]
}
/// What a recycle-bin record says: where the entry was (its directory's inode and its name)
/// and, in records written since the bin keeps paths, its kind and its full path at deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecycledValue {
    pub parent: u64,
    pub name: Vec<u8>,
    pub kind: FileKind,
    /// From the root, without a leading `/` ("a/b/c"); `None` in the first layout.
    pub path: Option<Vec<u8>>,
}
const RECYCLED_V1: u8 = 1;
/// directory (8, LE) | name | 0 | version 1 | kind (1) | path. The first layout was directory
/// and name only; a name never holds a NUL, so the NUL tells the layouts apart.
pub fn encode_recycled(parent: u64, name: &[u8], kind: FileKind, path: &[u8]) -> Vec<u8> {
    let mut v = parent.to_le_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&[0, RECYCLED_V1, kind.to_u8()]);
    v.extend_from_slice(path);
    v
}
pub fn decode_recycled(b: &[u8]) -> Result<RecycledValue> {
    let mut r = Reader(b);
    let parent = r.u64().ok_or_else(|| corrupt("recycled"))?;
    let Some(nul) = r.0.iter().position(|&c| c == 0) else {
        return Ok(RecycledValue {
            parent,
            name: r.0.to_vec(),
            kind: FileKind::File,
            path: None,
        });
    };
    let (name, rest) = r.0.split_at(nul);
    match rest {
        [0, RECYCLED_V1, kind, path @ ..] => Ok(RecycledValue {
            parent,
            name: name.to_vec(),
            kind: FileKind::from_u8(*kind).ok_or_else(|| corrupt("recycled"))?,
            path: Some(path.to_vec()),
        }),
        _ => Err(corrupt("recycled")),
    }
}
/// A snapshot (src/volume/snapshot.rs), by id; the value is a [`SnapshotRecord`].
pub fn snapshot_key(id: u64) -> Vec<u8> {
    key(TAG_SNAPSHOT, &[&id.to_be_bytes()])
}
pub fn snapshot_prefix() -> Vec<u8> {
    vec![TAG_SNAPSHOT]
}
pub fn misc_key(name: &str) -> Vec<u8> {
    key(TAG_MISC, &[name.as_bytes()])
}

/// The trailing big-endian u64 of a key (inode of an orphan key, offset of an extent key, ...).
pub fn key_tail_u64(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[k.len() - 8..]);
    u64::from_be_bytes(b)
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!(
        "metadata record {what} has a bad length or version"
    ))
}

struct Reader<'a>(&'a [u8]);
impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (h, t) = self.0.split_at_checked(N)?;
        self.0 = t;
        h.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
}

/// Now, in whole Unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

/// A time in whole Unix seconds (0 if before 1970).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl FileKind {
    fn to_u8(self) -> u8 {
        match self {
            FileKind::File => 1,
            FileKind::Dir => 2,
            FileKind::Symlink => 3,
            FileKind::Fifo => 4,
            FileKind::Socket => 5,
            FileKind::CharDev => 6,
            FileKind::BlockDev => 7,
        }
    }
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::Socket,
            6 => FileKind::CharDev,
            7 => FileKind::BlockDev,
            _ => return None,
        })
    }
    /// From the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            _ => return None,
        })
    }
}

/// Seconds and nanoseconds since the epoch; seconds may be negative (utimensat allows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    /// The time for a new or changed timestamp: the kernel's coarse clock
    /// (`CLOCK_REALTIME_COARSE`, what its `current_time()` reads for the times it keeps itself
    /// under the FUSE writeback cache), so that times the kernel sets and times we set never run
    /// backwards against each other. The fine clock ran up to a tick (~4 ms) ahead of it: a file
    /// linked after another was created showed the older ctime (issue 22).
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the pointer it is given.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
            return SystemTime::now().into();
        }
        Timestamp {
            secs: ts.tv_sec,
            nanos: ts.tv_nsec as u32,
        }
    }
    pub fn to_system_time(self) -> SystemTime {
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::new(self.secs as u64, self.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.secs.unsigned_abs())
                + Duration::from_nanos(self.nanos as u64)
        }
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { secs, nanos }
            }
        }
    }
}

/// An inode: attributes of a file, directory, symlink or special file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub kind: FileKind,
    /// Permission bits including set-uid, set-gid and sticky (`mode & 0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev: u32,
    pub size: u64,
    /// The containing directory (kept exact for directories, where `..` needs it).
    pub parent: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// Target of a symlink; empty for everything else.
    pub symlink: Vec<u8>,
}

const INODE_V1: u8 = 1;

impl Inode {
    pub fn new(kind: FileKind, perm: u16, uid: u32, gid: u32, parent: u64) -> Self {
        let now = Timestamp::now();
        Inode {
            kind,
            perm,
            uid,
            gid,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            rdev: 0,
            size: 0,
            parent,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            symlink: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(84 + self.symlink.len());
        v.push(INODE_V1);
        v.push(self.kind.to_u8());
        v.extend_from_slice(&self.perm.to_le_bytes());
        for x in [self.uid, self.gid, self.nlink, self.rdev] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.parent.to_le_bytes());
        for t in [self.atime, self.mtime, self.ctime, self.crtime] {
            v.extend_from_slice(&t.secs.to_le_bytes());
            v.extend_from_slice(&t.nanos.to_le_bytes());
        }
        v.extend_from_slice(&self.symlink);
        v
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = Reader(b);
        let parse = |r: &mut Reader| -> Option<Inode> {
            if r.u8()? != INODE_V1 {
                return None;
            }
            let kind = FileKind::from_u8(r.u8()?)?;
            let perm = r.u16()?;
            let (uid, gid, nlink, rdev) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
            let size = r.u64()?;
            let parent = r.u64()?;
            let mut ts = [Timestamp::default(); 4];
            for t in ts.iter_mut() {
                *t = Timestamp {
                    secs: r.i64()?,
                    nanos: r.u32()?,
                };
            }
            Some(Inode {
                kind,
                perm,
                uid,
                gid,
                nlink,
                rdev,
                size,
                parent,
                atime: ts[0],
                mtime: ts[1],
                ctime: ts[2],
                crtime: ts[3],
                symlink: r.0.to_vec(),
            })
        };
        parse(&mut r).ok_or_else(|| corrupt("inode"))
    }
}

/// A directory entry's value: the inode it names and its kind (for readdir without a lookup).
pub fn encode_dirent(ino: u64, kind: FileKind) -> Vec<u8> {
    let mut v = ino.to_le_bytes().to_vec();
    v.push(kind.to_u8());
    v
}

pub fn decode_dirent(b: &[u8]) -> Result<(u64, FileKind)> {
    let mut r = Reader(b);
    (|| Some((r.u64()?, FileKind::from_u8(r.u8()?)?)))().ok_or_else(|| corrupt("dirent"))
}

/// A run of a file's bytes stored in (part of) one chunk. Keyed by (inode, logical offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub chunk: ChunkId,
    /// Where in the chunk's plaintext this run starts (non-zero after a clone or a trim).
    pub chunk_offset: u32,
    pub len: u32,
}

impl Extent {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.chunk.0.to_vec();
        v.extend_from_slice(&self.chunk_offset.to_le_bytes());
        v.extend_from_slice(&self.len.to_le_bytes());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = Reader(b);
        (|| {
            Some(Extent {
                chunk: ChunkId(r.take::<32>()?),
                chunk_offset: r.u32()?,
                len: r.u32()?,
            })
        })()
        .filter(|_| r.0.is_empty())
        .ok_or_else(|| corrupt("extent"))
    }
    /// The part of this extent that covers `skip..skip+len` of it.
    pub fn slice(&self, skip: u32, len: u32) -> Extent {
        debug_assert!(skip + len <= self.len);
        Extent {
            chunk: self.chunk,
            chunk_offset: self.chunk_offset + skip,
            len,
        }
    }
}

/// The chunk index: where a chunk's blob lives and how many extents reference it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRecord {
    pub pack: u64,
    pub offset: u64,
    pub stored_len: u32,
    pub plain_len: u32,
    pub refs: u64,
}

impl ChunkRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(&self.pack.to_le_bytes());
        v.extend_from_slice(&self.offset.to_le_bytes());
        v.extend_from_slice(&self.stored_len.to_le_bytes());
        v.extend_from_slice(&self.plain_len.to_le_bytes());
        v.extend_from_slice(&self.refs.to_le_bytes());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = Reader(b);
        (|| {
            Some(ChunkRecord {
                pack: r.u64()?,
                offset: r.u64()?,
                stored_len: r.u32()?,
                plain_len: r.u32()?,
                refs: r.u64()?,
            })
        })()
        .ok_or_else(|| corrupt("chunk"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackState {
    /// Being appended to; may have a torn tail after a crash.
    Open,
    /// Footer written and fsync'd; immutable; waiting for upload (the upload queue).
    Sealed,
    /// Off-site (the store confirmed the object) and still whole in the local cache.
    Uploaded,
    /// Off-site only: the local file was evicted (blobs read since sit in the fetch cache).
    Remote,
    /// Garbage: no chunk record names it any more (GC dropped it; src/volume/gc.rs). Its local
    /// file is gone; the off-site object is deleted once the metadata through journal position
    /// `after_seq` (the last change that could name it) is off-site, a checkpoint taken after it
    /// is too, and the grace period since `since_unix` has passed. Then the record goes.
    Doomed { after_seq: u64, since_unix: u64 },
}

impl PackState {
    /// Whether the store holds the pack, so its local copy may be dropped.
    pub fn is_offsite(self) -> bool {
        matches!(self, PackState::Uploaded | PackState::Remote)
    }

    /// Whether GC dropped the pack (nothing names it; it only waits to leave the store).
    pub fn is_doomed(self) -> bool {
        matches!(self, PackState::Doomed { .. })
    }
}

/// The pack table: state and space accounting of each pack file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackRecord {
    pub state: PackState,
    pub size: u64,
    /// Bytes of blobs no longer referenced by any chunk record (garbage for a later GC).
    pub dead_bytes: u64,
}

impl PackRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![match self.state {
            PackState::Open => 0,
            PackState::Sealed => 1,
            PackState::Uploaded => 2,
            PackState::Remote => 3,
            PackState::Doomed { .. } => 4,
        }];
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.dead_bytes.to_le_bytes());
        if let PackState::Doomed {
            after_seq,
            since_unix,
        } = self.state
        {
            v.extend_from_slice(&after_seq.to_le_bytes());
            v.extend_from_slice(&since_unix.to_le_bytes());
        }
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = Reader(b);
        (|| {
            let state = match r.u8()? {
                0 => PackState::Open,
                1 => PackState::Sealed,
                2 => PackState::Uploaded,
                3 => PackState::Remote,
                4 => PackState::Doomed {
                    after_seq: 0,
                    since_unix: 0,
                },
                _ => return None,
            };
            let size = r.u64()?;
            let dead_bytes = r.u64()?;
            let state = match state {
                PackState::Doomed { .. } => PackState::Doomed {
                    after_seq: r.u64()?,
                    since_unix: r.u64()?,
                },
                s => s,
            };
            Some(PackRecord {
                state,
                size,
                dead_bytes,
            })
        })()
        .ok_or_else(|| corrupt("pack"))
    }
}

/// Where a snapshot is in its life. Copying and purging take many batches; the state says what
/// a restart must finish (a half-made snapshot is purged, never shown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotState {
    Creating,
    Ready,
    Deleting,
}

/// A snapshot's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub name: String,
    pub created_unix: u64,
    /// Taken by the schedule (and so pruned by the keep policy), not by hand.
    pub scheduled: bool,
    pub state: SnapshotState,
}

impl SnapshotRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![
            1, // version
            match self.state {
                SnapshotState::Creating => 0,
                SnapshotState::Ready => 1,
                SnapshotState::Deleting => 2,
            },
            self.scheduled as u8,
        ];
        v.extend_from_slice(&self.created_unix.to_le_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = Reader(b);
        (|| {
            if r.u8()? != 1 {
                return None;
            }
            let state = match r.u8()? {
                0 => SnapshotState::Creating,
                1 => SnapshotState::Ready,
                2 => SnapshotState::Deleting,
                _ => return None,
            };
            let scheduled = r.u8()? != 0;
            let created_unix = r.u64()?;
            let name = String::from_utf8(r.0.to_vec()).ok()?;
            Some(SnapshotRecord {
                name,
                created_unix,
                scheduled,
                state,
            })
        })()
        .ok_or_else(|| corrupt("snapshot"))
    }
}

/// Volume-wide space accounting, updated in the same batch as the records it counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sum of the lengths of all extents: the file data as users see it (holes excluded).
    pub logical_bytes: u64,
    /// Plaintext bytes of distinct chunks.
    pub unique_bytes: u64,
    /// Bytes of distinct chunks as stored (compressed, encrypted, with blob headers).
    pub stored_bytes: u64,
    pub chunks: u64,
}

impl Stats {
    pub fn encode(&self) -> Vec<u8> {
        [
            self.logical_bytes,
            self.unique_bytes,
            self.stored_bytes,
            self.chunks,
        ]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect()
    }
    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = Reader(b);
        (|| {
            Some(Stats {
                logical_bytes: r.u64()?,
                unique_bytes: r.u64()?,
                stored_bytes: r.u64()?,
                chunks: r.u64()?,
            })
        })()
        .ok_or_else(|| corrupt("stats"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let mut ino = Inode::new(FileKind::Symlink, 0o777, 1000, 100, 1);
        ino.symlink = b"/target/of/link".to_vec();
        ino.atime = Timestamp { secs: -5, nanos: 7 };
        assert_eq!(Inode::decode(&ino.encode()).unwrap(), ino);
        assert!(Inode::decode(&ino.encode()[..40]).is_err());
        let e = Extent {
            chunk: ChunkId([9; 32]),
            chunk_offset: 5,
            len: 77,
        };
        assert_eq!(Extent::decode(&e.encode()).unwrap(), e);
        assert!(Extent::decode(&[0; 39]).is_err());
        let c = ChunkRecord {
            pack: 3,
            offset: 99,
            stored_len: 10,
            plain_len: 20,
            refs: 2,
        };
        assert_eq!(ChunkRecord::decode(&c.encode()).unwrap(), c);
        let p = PackRecord {
            state: PackState::Sealed,
            size: 1 << 25,
            dead_bytes: 12,
        };
        assert_eq!(PackRecord::decode(&p.encode()).unwrap(), p);
        let doomed = PackRecord {
            state: PackState::Doomed {
                after_seq: 77,
                since_unix: 1_800_000_000,
            },
            ..p
        };
        assert_eq!(PackRecord::decode(&doomed.encode()).unwrap(), doomed);
        assert!(PackRecord::decode(&doomed.encode()[..20]).is_err());
        assert_eq!(
            decode_dirent(&encode_dirent(42, FileKind::Dir)).unwrap(),
            (42, FileKind::Dir)
        );
    }

    #[test]
    fn recycled_records_keep_the_path_and_read_the_first_layout() {
        let v = encode_recycled(7, b"c d", FileKind::Dir, b"a/b/c d");
        let golden = [&7u64.to_le_bytes()[..], b"c d", &[0, 1, 2], b"a/b/c d"].concat();
        assert_eq!(v, golden);
        let r = decode_recycled(&v).unwrap();
        assert_eq!(
            (r.parent, r.name.as_slice(), r.kind, r.path.as_deref()),
            (7, &b"c d"[..], FileKind::Dir, Some(&b"a/b/c d"[..]))
        );
        // Written before the bin kept paths: directory and name.
        let old = [&9u64.to_le_bytes()[..], b"x.vbk"].concat();
        let r = decode_recycled(&old).unwrap();
        assert_eq!(
            (r.parent, r.name.as_slice(), r.kind, r.path),
            (9, &b"x.vbk"[..], FileKind::File, None)
        );
        assert!(decode_recycled(&[1, 2, 3]).is_err());
        assert!(decode_recycled(&[&v[..11], &[0, 9, 1]].concat()).is_err());
    }

    #[test]
    fn keys_sort_numerically_and_timestamps_convert_both_ways() {
        assert!(extent_key(1, 255) < extent_key(1, 256));
        assert!(extent_key(1, u64::MAX) < extent_key(2, 0));
        assert_eq!(key_tail_u64(&extent_key(7, 12345)), 12345);
        for t in [
            Timestamp { secs: 0, nanos: 0 },
            Timestamp {
                secs: -1,
                nanos: 500,
            },
            Timestamp {
                secs: 1_700_000_000,
                nanos: 999_999_999,
            },
        ] {
            assert_eq!(Timestamp::from(t.to_system_time()), t);
        }
    }
}

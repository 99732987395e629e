//! The filesystem core: one volume, served to every front-end.
//!
//! ## Data path
//! A write lands in the file's in-memory *dirty map* (non-overlapping byte ranges). A *commit*
//! turns dirty ranges into chunks: each range is widened to the extents it touches (so the
//! content-defined boundaries around it stay where they were), the widened region is rebuilt
//! from committed chunks plus dirty bytes, cut with FastCDC, and only the new chunks are
//! encoded and appended to the open pack. The file's extent map is then spliced over the region
//! in one atomic metadata batch. Work is proportional to the written range plus at most one
//! chunk on each side, never to the file. A range smaller than the smallest chunk that lies
//! wholly inside committed data (a random overwrite) is a *patch* instead: stored as one chunk
//! of its own and laid over slices of the chunks around it, so a 4 KiB overwrite stores 4 KiB,
//! not the chunk it falls in. A commit rebuilds at most [`COMMIT_PIECE`] bytes at a
//! time: it is stored and applied in pieces (each its own batch), which bounds its memory; the
//! next piece is chunked while the one before is encoded and written (two in flight).
//!
//! ## Ordering and durability
//! Metadata never names pack bytes that are not on stable storage: every commit fsyncs the packs
//! it appended to *before* applying its metadata batch. A durable commit (fsync, close) also
//! flushes the metadata store. After a crash, torn pack tails therefore hold only blobs nothing
//! references, and startup recovery can simply cut them off.
//!
//! ## Locks (always taken in this order)
//! `ns` (namespace changes) → an inode's `data` lock → `commit` (the metadata batch, chunk
//! refcounts, stats) → pack writer. An inode's attributes are changed only under its `data`
//! lock, through its in-memory [`Entry`], which is authoritative while it exists.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::blob;
use crate::chunker::{self, ChunkerParams};
use crate::crypto::{self, ChunkId, KdfParams, Keys};
use crate::error::{Error, Result};
use crate::journal::JournaledKv;
use crate::kv::{prefix_end, Batch, KvStore, SledStore};
use crate::meta::{
    self, ChunkRecord, Extent, FileKind, Inode, PackRecord, PackState, Stats, Timestamp, ROOT_INO,
};
use crate::pack::{self, BlobLocation, PackWriter};

mod acl;
mod dirhandle;
mod export;
mod gc;
mod privs;
mod recycle;
mod snapshot;
mod space;
#[cfg(test)]
mod testutil;
mod tmpfile;
pub(crate) use export::next_generation as next_handle_generation;
pub use gc::{CorePass, GcPolicy};
pub use privs::{Creds, PrivChange};
pub use recycle::{RecycleStats, Recycled};
pub use snapshot::{
    is_snapshot_ino, KeepPolicy, SnapshotInfo, SnapshotStatus, SNAPSHOT_DIR_INO, SNAPSHOT_DIR_NAME,
};

/// Largest file offset we accept (what Linux allows for a 64-bit filesystem).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;
pub const MAX_NAME_LEN: usize = 255;
const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Xattrs under this prefix hold the WebDAV share's dead properties (src/webdav.rs). Whoever
/// sets them (a PROPPATCH, or `setfattr` through the mount), the same limits hold: the XML
/// inside nests at most [`crate::xmldepth::MAX_DEPTH`] levels (deeper XML would crash the
/// parser that reads it back), and an inode holds at most [`MAX_DAV_PROPS`] of them, each at
/// most [`MAX_DAV_PROP_BYTES`], together at most [`MAX_DAV_PROP_TOTAL`].
pub const DAV_PROP_PREFIX: &[u8] = b"user.tiergate.dav.";
/// Dead properties per resource (real clients set a handful: Windows 4, macOS 1-3).
pub const MAX_DAV_PROPS: usize = 64;
/// Bytes of one stored dead property (its XML and names).
pub const MAX_DAV_PROP_BYTES: usize = 16 * 1024;
/// Bytes of all dead properties of one resource: bounds a PROPFIND answer to ~64 KiB per
/// member and the metadata a resource can hold outside its data.
pub const MAX_DAV_PROP_TOTAL: usize = 64 * 1024;
/// Dirty bytes of one file above which a write commits the file's data (keeping the last,
/// still-growing chunk in memory so that a streaming write is chunked exactly once).
const FILE_DIRTY_COMMIT: u64 = 64 << 20;
/// Bytes of file data a commit rebuilds and chunks at a time (at least four of the volume's
/// largest chunks): a commit of more is stored and applied in pieces, which bounds its memory.
/// Random overwrites spread over a large file touch a chunk per write; a commit of hundreds of
/// them rebuilt every touched chunk at once before (~120-600 MiB, docs/BENCHMARKS.md (d)).
/// Two pieces are in flight (one chunked while the one before is stored): at 32 MiB that
/// raised the daemon's peak in (d) from ~0.9 to 1.2 GiB; 16 MiB brought it back to 0.9 GiB at
/// the same write speed (pack writeback starts at each append, so more fsyncs cost little).
const COMMIT_PIECE: usize = 16 << 20;
/// Extents removed per metadata batch when a large file is deleted (sled grows badly with huge
/// batches; see BRIEF §9).
const DELETE_PAGE: usize = 1000;
/// Decoded chunks kept in memory for reads and read-modify-write.
const CHUNK_CACHE_ENTRIES: usize = 96;
/// Locks that let one reader decode a chunk while others wanting it wait (by chunk id).
const DECODE_STRIPES: usize = 64;
/// A pack nobody appended to for this long is sealed.
pub const PACK_IDLE_SEAL: Duration = Duration::from_secs(30);

pub const VOLUME_FILE: &str = "volume.toml";
pub const KEY_FILE: &str = "key";
const LOCK_FILE: &str = "lock";
pub const META_DIR: &str = "meta";
pub const PACK_DIR: &str = "packs";
const VOLUME_FORMAT: u32 = 1;

/// The volume's own record, written once at creation (plaintext: it holds no secret, but it is
/// authenticated: see [`VolumeInfo::mac`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeInfo {
    pub format_version: u32,
    pub volume_id: String,
    pub created_unix: i64,
    pub chunking: ChunkerParams,
    /// MAC of the fields above under the volume's MAC subkey ([`VolumeInfo::canonical`]), so
    /// that an edited copy in the bucket (other chunking parameters, another id) is refused.
    /// Missing in volumes made before it existed: added at their next open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// MAC purpose label of `volume.toml` (part of the format: do not change).
pub const VOLUME_MAC_PURPOSE: &str = "tiergate volume.toml v1";

/// What [`VolumeInfo::check_mac`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacState {
    Valid,
    /// Written before `volume.toml` carried a MAC (or the MAC line was removed).
    Missing,
}

impl VolumeInfo {
    /// The authenticated fields in a fixed binary form (independent of TOML formatting):
    /// format version (4), volume id length (4) and bytes, creation time (8, i64), chunker
    /// min, avg, max (4 each), all little-endian.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.format_version.to_le_bytes());
        out.extend_from_slice(&(self.volume_id.len() as u32).to_le_bytes());
        out.extend_from_slice(self.volume_id.as_bytes());
        out.extend_from_slice(&self.created_unix.to_le_bytes());
        for v in [
            self.chunking.min_size,
            self.chunking.avg_size,
            self.chunking.max_size,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// blake3 of [`Self::canonical`]: what a metadata head records of this config.
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&self.canonical()).as_bytes()
    }

    /// Sets the MAC for `keys`.
    pub fn seal(&mut self, keys: &crypto::Keys) {
        self.mac = Some(keys.mac_hex(VOLUME_MAC_PURPOSE, &self.canonical()));
    }

    /// `Err(Corrupt)` when a MAC is present and wrong (an edited config, or another volume's).
    pub fn check_mac(&self, keys: &crypto::Keys, what: &str) -> Result<MacState> {
        match &self.mac {
            None => Ok(MacState::Missing),
            Some(m) if keys.mac_ok(VOLUME_MAC_PURPOSE, &self.canonical(), m) => Ok(MacState::Valid),
            Some(_) => Err(Error::Corrupt(format!(
                "{what} is not authentic: its MAC does not match its contents under this \
                 volume's key (edited, or from another volume); refusing to use its chunking \
                 parameters and ids"
            ))),
        }
    }

    /// The TOML text of this record.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Invalid(e.to_string()))
    }
}

/// Run-time settings (from the config); none of them changes the on-disk format.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    pub zstd_level: i32,
    pub pack_target_size: u64,
    pub dirty_limit: u64,
    pub metadata_cache_bytes: u64,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            zstd_level: 3,
            pack_target_size: 32 << 20,
            dirty_limit: 256 << 20,
            metadata_cache_bytes: 64 << 20,
        }
    }
}

/// Attributes as front-ends see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub inode: Inode,
}

impl Attr {
    /// 512-byte blocks of the logical size (holes not subtracted): what directories and
    /// symlinks report; a file's st_blocks is [`Volume::blocks`].
    pub fn blocks(&self) -> u64 {
        self.inode.size.div_ceil(512)
    }
}

/// Changes requested by setattr; `None` leaves a field alone.
#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// Who is asking: used for new files' owner and group.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace an existing target (plain rename(2)).
    Replace,
    /// Fail with `Exists` if the target exists (RENAME_NOREPLACE).
    NoReplace,
    /// Swap source and target atomically; both must exist (RENAME_EXCHANGE).
    Exchange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrSet {
    Any,
    /// XATTR_CREATE: fail if it exists.
    Create,
    /// XATTR_REPLACE: fail if it does not exist.
    Replace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocate {
    /// Reserve the range against the quota (src/volume/space.rs); the size grows unless
    /// `keep_size`.
    Allocate { keep_size: bool },
    /// Deallocate a range; the size never changes.
    PunchHole,
    /// Make a range read as zeros, growing the size unless `keep_size`.
    ZeroRange { keep_size: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    Data,
    Hole,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: FileKind,
    /// Where a listing resumes after this entry (src/volume/dirhandle.rs).
    pub offset: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// Volume-wide figures for status output and tests.
#[derive(Debug, Clone, Copy)]
pub struct VolumeStats {
    pub stats: Stats,
    pub dirty_bytes: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    pub metadata_bytes: u64,
}

/// An inode in use: its authoritative attributes plus written-but-uncommitted data.
struct Entry {
    ino: u64,
    data: RwLock<FileData>,
    /// Held by a commit in flight (and by anything else that rewrites the extent map), so
    /// those happen one at a time per file. Taken before `data`.
    commit_gate: Mutex<()>,
    opens: AtomicU32,
}

struct FileData {
    attr: Inode,
    /// Written ranges not yet in packs: start offset → bytes; never overlapping.
    dirty: DirtyMap,
    /// Dirty ranges a commit in flight took; reads see them under `dirty`.
    committing: Option<Arc<DirtyMap>>,
    dirty_bytes: u64,
    /// Attributes changed by writes, not yet in the store.
    attr_dirty: bool,
    /// Changed since the last durable commit: close must make it durable.
    unsynced: bool,
    last_write: Instant,
    /// Dirty bytes at which the next write commits (raised after a partial commit that had to
    /// hold much back, so a stalled gap does not make every write re-chunk the same bytes).
    commit_at: u64,
    /// When a commit of this file last failed for lack of disk space.
    disk_full_at: Option<Instant>,
    /// Unlinked while open: delete on last release.
    orphan: bool,
    /// Deleted from the store: any further use is a stale handle.
    gone: bool,
}

enum Handle {
    File { ino: u64 },
    Dir(dirhandle::DirCursor),
}

struct CommitState {
    stats: Stats,
}

/// The local pack files: one open writer, cached readers, sealing.
struct PackStore {
    dir: PathBuf,
    target: u64,
    writer: Mutex<Option<(PackWriter, Instant)>>,
    readers: Mutex<HashMap<u64, Arc<File>>>,
    next_pack: AtomicU64,
    /// Length of the open pack, readable without its lock (tiering asks on every write).
    open_len: AtomicU64,
}

/// What another front-end changed behind a cache (the kernel's, for the FUSE mount).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// An inode's data or attributes.
    Inode(u64),
    /// An inode's attributes only: the kernel keeps its cached pages, so this is safe to send
    /// while a request on the inode is in flight.
    Attr(u64),
    /// A name in a directory (created, removed or renamed).
    Entry { parent: u64, name: Vec<u8> },
}

type Invalidator = Box<dyn Fn(&Changed) + Send + Sync>;

/// What the tiering machinery (src/tiering/) does for the core: it learns of sealed packs,
/// fetches blobs of packs whose local copy was evicted, and holds writers back while too much
/// data waits for upload. Registered by the daemon with [`Volume::set_tier`].
pub trait Tier: Send + Sync {
    /// A pack was sealed and may be uploaded. Called with the pack writer locked: must not block.
    fn pack_sealed(&self, pack: u64, size: u64);
    /// A blob of `pack` was read from its local file (keeps the eviction order fresh).
    fn pack_used(&self, pack: u64);
    /// The stored bytes of a blob whose pack has no whole local copy (or whose local copy is
    /// damaged), decoded by `verify`: from the fetch cache, else from the store. Only bytes
    /// `verify` accepts may be cached.
    fn fetch_blob(
        &self,
        pack: u64,
        loc: BlobLocation,
        verify: &dyn Fn(&[u8]) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>>;
    /// Called before a front-end write is taken in; blocks while the data waiting for upload is
    /// at the cache limit (backpressure), so the cache never fills with data not yet off-site.
    fn admit_write(&self, vol: &Volume, bytes: u64);
    /// GC dropped `pack` (nothing names it; its local file is gone): forget its cached state.
    fn pack_dropped(&self, pack: u64);
}

pub struct Volume {
    dir: PathBuf,
    info: VolumeInfo,
    kv: JournaledKv<SledStore>,
    keys: Keys,
    opts: VolumeOptions,
    packs: PackStore,
    ns: Mutex<()>,
    commit: Mutex<CommitState>,
    /// Read-held by everything that writes blobs a chunk record will name later (from the
    /// first append to the metadata batch); GC write-holds it for a moment to know which packs
    /// are complete (src/volume/gc.rs).
    store_gate: RwLock<()>,
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    next_ino: AtomicU64,
    dirty_total: AtomicU64,
    /// Stored bytes (`Stats::stored_bytes`) as of the last commit, readable without the commit
    /// lock: the quota check runs on every write.
    stored_now: AtomicU64,
    /// The most file data one piece of a commit has rebuilt at once since the volume opened
    /// (see [`COMMIT_PIECE`]).
    largest_piece: AtomicU64,
    /// File bytes commits have copied since the volume opened (see
    /// [`Volume::commit_copied_bytes`]).
    copied_bytes: AtomicU64,
    /// The tenant quota on stored bytes; 0 = none (see [`Volume::set_quota`]).
    quota: AtomicU64,
    /// The status page warns from this share of the quota on, in percent.
    quota_warn_percent: std::sync::atomic::AtomicU8,
    /// When the last "quota reached" line was logged (rate-limits the log, not the refusal).
    quota_logged: Mutex<Option<Instant>>,
    recycle: recycle::RecycleState,
    snapshots: snapshot::SnapshotsState,
    space: space::SpaceState,
    chunk_cache: Mutex<lru::LruCache<ChunkId, Arc<Vec<u8>>>>,
    decode_locks: [Mutex<()>; DECODE_STRIPES],
    invalidator: RwLock<Option<Invalidator>>,
    tier: RwLock<Option<Arc<dyn Tier>>>,
    _lock: nix::fcntl::Flock<File>,
}

fn now() -> Timestamp {
    Timestamp::now()
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::Invalid(format!(
            "bad file name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

use crate::durable::write_file_durably;

/// Takes an exclusive lock on the volume directory so two daemons never share a volume. The
/// holder writes its pid into the lock file, so that a refused start can name it.
fn lock_volume(dir: &Path) -> Result<nix::fcntl::Flock<File>> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(mut f, _)| {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut f, &mut text);
            Error::Invalid(format!(
                "volume {} is in use by another tiergate process{}",
                dir.display(),
                lock_holder(text.trim())
            ))
        },
    )?;
    // Advisory: a failure to record the pid costs only the name in that message.
    let _ = lock.set_len(0).and_then(|()| {
        use std::os::unix::fs::FileExt;
        lock.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
    });
    Ok(lock)
}

/// ": pid N (command line)" for the pid a lock file holds, from /proc; empty if unknown.
fn lock_holder(pid: &str) -> String {
    let Ok(pid) = pid.parse::<u32>() else {
        return String::new();
    };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    match cmdline.trim() {
        "" => format!(" (pid {pid})"),
        c => format!(" (pid {pid}: {c})"),
    }
}

impl Volume {
    /// Creates a new, empty volume in `dir` (which must not hold one already).
    pub fn create(
        dir: &Path,
        passphrase: &str,
        chunking: ChunkerParams,
        kdf: KdfParams,
    ) -> Result<VolumeInfo> {
        chunking.validate()?;
        if dir.join(VOLUME_FILE).exists() {
            return Err(Error::Exists);
        }
        fs::create_dir_all(dir.join(PACK_DIR))
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let master = crypto::MasterKey::generate();
        write_file_durably(
            &dir.join(KEY_FILE),
            &crypto::wrap_master_key(&master, passphrase.as_bytes(), kdf),
            0o600,
        )?;
        let mut info = VolumeInfo {
            format_version: VOLUME_FORMAT,
            volume_id: hex::encode(rand::random::<[u8; 16]>()),
            created_unix: now().secs,
            chunking,
            mac: None,
        };
        info.seal(&master.subkeys());
        let kv = SledStore::open(&dir.join(META_DIR), 8 << 20)?;
        let mut root = Inode::new(FileKind::Dir, 0o755, 0, 0, ROOT_INO);
        // The creating user owns the root, so an unprivileged demo volume is writable.
        root.uid = nix::unistd::geteuid().as_raw();
        root.gid = nix::unistd::getegid().as_raw();
        let mut b = Batch::default();
        b.put(meta::inode_key(ROOT_INO), root.encode());
        b.put(
            meta::misc_key("next_ino"),
            (ROOT_INO + 1).to_le_bytes().to_vec(),
        );
        b.put(meta::misc_key("stats"), Stats::default().encode());
        kv.apply(b)?;
        kv.flush()?;
        drop(kv);
        let text = info.to_toml()?;
        // Written last: its presence marks a complete volume.
        write_file_durably(&dir.join(VOLUME_FILE), text.as_bytes(), 0o644)?;
        Ok(info)
    }

    pub fn exists(dir: &Path) -> bool {
        dir.join(VOLUME_FILE).exists()
    }

    /// Compacts the metadata store of the volume in `dir` now (the daemon stopped: this takes
    /// the volume's lock), whatever its size; [`Volume::open`] does it by itself once the store
    /// has doubled. Needs no passphrase: the records are copied as they are.
    pub fn compact_metadata(dir: &Path) -> Result<crate::kv::CompactReport> {
        if !Volume::exists(dir) {
            return Err(Error::Invalid(format!("{} holds no volume", dir.display())));
        }
        let _lock = lock_volume(dir)?;
        crate::kv::compact(&dir.join(META_DIR), 64 << 20)
    }

    /// Opens a volume: checks the passphrase before touching anything, then recovers packs
    /// left open by a crash and finishes deletions that were under way.
    pub fn open(dir: &Path, passphrase: &str, opts: VolumeOptions) -> Result<Arc<Volume>> {
        let info_path = dir.join(VOLUME_FILE);
        let text = fs::read_to_string(&info_path).map_err(|e| {
            Error::io(
                format!(
                    "reading {} (is this a tiergate volume?)",
                    info_path.display()
                ),
                e,
            )
        })?;
        let info: VolumeInfo = toml::from_str(&text)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", info_path.display())))?;
        if info.format_version != VOLUME_FORMAT {
            return Err(Error::Unsupported(
                "volume format version newer than this build",
            ));
        }
        let key_path = dir.join(KEY_FILE);
        let wrapped = fs::read(&key_path)
            .map_err(|e| Error::io(format!("reading {}", key_path.display()), e))?;
        let master = crypto::unwrap_master_key(&wrapped, passphrase.as_bytes())?;
        let lock = lock_volume(dir)?;
        let mut info = info;
        let keys = master.subkeys();
        if info.check_mac(&keys, &info_path.display().to_string())? == MacState::Missing {
            // Made before volume.toml carried a MAC: add it (the shipper uploads the new bytes).
            tracing::warn!(path = %info_path.display(),
                "volume.toml has no MAC (made by an older tiergate): adding it");
            info.seal(&keys);
            write_file_durably(&info_path, info.to_toml()?.as_bytes(), 0o644)?;
        }
        let (kv, compacted) =
            SledStore::open_compacted(&dir.join(META_DIR), opts.metadata_cache_bytes)?;
        if let Some(r) = compacted {
            tracing::info!(
                records = r.records,
                before_mib = r.bytes_before >> 20,
                after_mib = r.bytes_after >> 20,
                seconds = r.elapsed.as_secs_f64(),
                "metadata store compacted"
            );
        }
        let get_u64 = |name: &str| -> Result<u64> {
            Ok(match kv.get(&meta::misc_key(name))? {
                Some(v) => u64::from_le_bytes(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| Error::Corrupt(format!("counter {name}")))?,
                ),
                None => 0,
            })
        };
        let next_ino = get_u64("next_ino")?.max(ROOT_INO + 1);
        let stats = match kv.get(&meta::misc_key("stats"))? {
            Some(v) => Stats::decode(&v)?,
            None => Stats::default(),
        };
        let vol = Volume {
            dir: dir.to_path_buf(),
            packs: PackStore {
                dir: dir.join(PACK_DIR),
                target: opts.pack_target_size,
                writer: Mutex::new(None),
                readers: Mutex::new(HashMap::new()),
                next_pack: AtomicU64::new(get_u64("next_pack")?.max(1)),
                open_len: AtomicU64::new(0),
            },
            info,
            kv: JournaledKv::new(kv)?,
            keys,
            opts,
            ns: Mutex::new(()),
            commit: Mutex::new(CommitState { stats }),
            store_gate: RwLock::new(()),
            entries: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            next_ino: AtomicU64::new(next_ino),
            dirty_total: AtomicU64::new(0),
            stored_now: AtomicU64::new(stats.stored_bytes),
            largest_piece: AtomicU64::new(0),
            copied_bytes: AtomicU64::new(0),
            quota: AtomicU64::new(0),
            quota_warn_percent: std::sync::atomic::AtomicU8::new(90),
            quota_logged: Mutex::new(None),
            recycle: recycle::RecycleState::default(),
            snapshots: snapshot::SnapshotsState::default(),
            space: space::SpaceState::default(),
            decode_locks: std::array::from_fn(|_| Mutex::new(())),
            chunk_cache: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(CHUNK_CACHE_ENTRIES).unwrap(),
            )),
            invalidator: RwLock::new(None),
            tier: RwLock::new(None),
            _lock: lock,
        };
        vol.recover_packs()?;
        vol.finish_orphans()?;
        vol.finish_snapshots()?;
        vol.load_reservations()?;
        // Count the recycle bin at the first tick.
        vol.recycle
            .dirty
            .store(true, std::sync::atomic::Ordering::Relaxed);
        vol.kv.flush()?;
        Ok(Arc::new(vol))
    }

    /// Registers the cache that front-ends other than its owner must keep fresh (the FUSE
    /// adapter registers the kernel's caches here).
    pub fn set_invalidator(&self, f: Invalidator) {
        *self.invalidator.write() = Some(f);
    }

    /// Called by a front-end after it changed something that another front-end may cache.
    /// Never call it from inside a FUSE request: the kernel may wait on that request.
    pub fn changed(&self, what: &[Changed]) {
        if let Some(f) = self.invalidator.read().as_ref() {
            for c in what {
                f(c);
            }
        }
    }

    pub fn info(&self) -> &VolumeInfo {
        &self.info
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // ------------------------------------------------------------------ recovery

    /// Seals every pack a crash left open (cutting a torn tail) and registers pack files the
    /// pack table does not know yet (a crash between creating the file and its first commit).
    fn recover_packs(&self) -> Result<()> {
        let mut known: HashMap<u64, PackRecord> = HashMap::new();
        for (k, v) in self.kv.range(
            &meta::pack_prefix(),
            prefix_end(&meta::pack_prefix()).as_deref(),
        )? {
            known.insert(meta::key_tail_u64(&k), PackRecord::decode(&v)?);
        }
        let mut max_id = 0;
        let rd = fs::read_dir(&self.packs.dir)
            .map_err(|e| Error::io(format!("listing {}", self.packs.dir.display()), e))?;
        for ent in rd {
            let ent = ent.map_err(|e| Error::io("listing packs", e))?;
            let name = ent.file_name().to_string_lossy().to_string();
            let Some(id) = name
                .strip_suffix(".pack")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            max_id = max_id.max(id);
            let path = ent.path();
            let rec = known.remove(&id);
            match rec.map(|r| r.state) {
                Some(PackState::Sealed | PackState::Uploaded) => continue,
                Some(PackState::Doomed { .. }) => {
                    // GC dropped it and a crash came before the file went.
                    fs::remove_file(&path)
                        .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
                    continue;
                }
                Some(PackState::Remote) => {
                    // An eviction the crash interrupted after its state change.
                    fs::remove_file(&path)
                        .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
                    continue;
                }
                Some(PackState::Open) | None => {}
            }
            let file = File::open(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            let len = file
                .metadata()
                .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
                .len();
            if len < pack::HEADER_LEN {
                // A crash inside pack creation: no blob was ever in it, nothing names it.
                tracing::warn!(
                    pack = id,
                    len,
                    "removing pack file cut short while being created"
                );
                fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
                let mut b = Batch::default();
                b.delete(meta::pack_key(id));
                self.kv.apply(b)?;
                continue;
            }
            let size = if pack::is_sealed(&file)? {
                file.metadata()
                    .map_err(|e| Error::io("stat pack", e))?
                    .len()
            } else {
                let rec = pack::recover_unsealed(&path)?;
                if rec.truncated_bytes > 0 {
                    tracing::warn!(
                        pack = id,
                        bytes = rec.truncated_bytes,
                        "cut torn tail of pack left open by a crash"
                    );
                }
                let valid = rec.valid_len;
                let w = PackWriter::reopen(&path, id, rec)?;
                self.check_chunks_within(id, valid)?;
                w.seal()?
            };
            let mut b = Batch::default();
            b.put(
                meta::pack_key(id),
                PackRecord {
                    state: PackState::Sealed,
                    size,
                    dead_bytes: rec.map(|r| r.dead_bytes).unwrap_or(0),
                }
                .encode(),
            );
            self.kv.apply(b)?;
            tracing::info!(pack = id, size, "sealed pack recovered after restart");
        }
        for (id, mut rec) in known {
            if rec.state == PackState::Remote || rec.state.is_doomed() {
                continue;
            }
            if rec.state == PackState::Uploaded {
                // The local copy vanished, the off-site one is confirmed: read from there.
                tracing::warn!(
                    pack = id,
                    "uploaded pack missing locally: reading it off-site"
                );
                rec.state = PackState::Remote;
                let mut b = Batch::default();
                b.put(meta::pack_key(id), rec.encode());
                self.kv.apply(b)?;
            } else if rec.state == PackState::Open {
                // Registered, then a crash before the file was created: it never held data
                // (chunk records are written only after their pack is fsync'd).
                let mut b = Batch::default();
                b.delete(meta::pack_key(id));
                self.kv.apply(b)?;
            } else {
                tracing::error!(
                    pack = id,
                    "sealed pack file missing from {}: data in it is lost locally",
                    self.packs.dir.display()
                );
            }
        }
        let next = self.packs.next_pack.load(Ordering::Relaxed).max(max_id + 1);
        self.packs.next_pack.store(next, Ordering::Relaxed);
        Ok(())
    }

    /// Metadata must never name bytes beyond a recovered pack's valid length; if it does, the
    /// ordering invariant was broken and we say so loudly rather than serve garbage later.
    fn check_chunks_within(&self, pack: u64, valid_len: u64) -> Result<()> {
        let mut bad = 0u64;
        let mut start = meta::chunk_prefix();
        let end = prefix_end(&meta::chunk_prefix());
        loop {
            let page = self.kv.range_limit(&start, end.as_deref(), 4096)?;
            let Some(last) = page.last() else { break };
            start = [last.0.as_slice(), &[0]].concat();
            for (_, v) in &page {
                let r = ChunkRecord::decode(v)?;
                if r.pack == pack && r.offset + r.stored_len as u64 > valid_len {
                    bad += 1;
                }
            }
        }
        if bad > 0 {
            tracing::error!(
                pack,
                chunks = bad,
                "chunks point past the recovered end of a pack"
            );
        }
        Ok(())
    }

    fn finish_orphans(&self) -> Result<()> {
        let orphans = self.kv.range(
            &meta::orphan_prefix(),
            prefix_end(&meta::orphan_prefix()).as_deref(),
        )?;
        for (k, _) in orphans {
            let ino = meta::key_tail_u64(&k);
            tracing::info!(ino, "finishing deletion of a file unlinked while open");
            self.delete_inode_data(ino)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ inode entries

    fn load_inode(&self, ino: u64) -> Result<Inode> {
        match self.kv.get(&meta::inode_key(ino))? {
            Some(v) => Inode::decode(&v),
            None if ino == SNAPSHOT_DIR_INO => self.snapshot_dir_inode(),
            None => Err(Error::NotFound),
        }
    }

    /// The in-memory entry of an inode, loading it if needed.
    fn entry(&self, ino: u64) -> Result<Arc<Entry>> {
        let mut map = self.entries.lock();
        if let Some(e) = map.get(&ino) {
            return Ok(e.clone());
        }
        let attr = self.load_inode(ino)?;
        let e = Arc::new(Entry {
            ino,
            data: RwLock::new(FileData {
                attr,
                dirty: BTreeMap::new(),
                committing: None,
                dirty_bytes: 0,
                attr_dirty: false,
                unsynced: false,
                last_write: Instant::now(),
                commit_at: FILE_DIRTY_COMMIT,
                disk_full_at: None,
                orphan: false,
                gone: false,
            }),
            opens: AtomicU32::new(0),
            commit_gate: Mutex::new(()),
        });
        map.insert(ino, e.clone());
        if map.len() > 4096 {
            Self::sweep_locked(&mut map);
        }
        Ok(e)
    }

    /// Drops entries nobody holds, that are not open and carry no uncommitted state.
    fn sweep_locked(map: &mut HashMap<u64, Arc<Entry>>) {
        map.retain(|_, e| {
            if Arc::strong_count(e) > 1 || e.opens.load(Ordering::Acquire) > 0 {
                return true;
            }
            match e.data.try_read() {
                Some(d) => d.dirty_bytes > 0 || d.attr_dirty,
                None => true,
            }
        });
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let cached = self.entries.lock().get(&ino).cloned();
        let inode = match cached {
            Some(e) => {
                let d = e.data.read();
                if d.gone {
                    return Err(Error::NotFound);
                }
                d.attr.clone()
            }
            None => self.load_inode(ino)?,
        };
        Ok(Attr { ino, inode })
    }

    fn lookup_ino(&self, parent: u64, name: &[u8]) -> Result<Option<(u64, FileKind)>> {
        match self.kv.get(&meta::dirent_key(parent, name))? {
            Some(v) => Ok(Some(meta::decode_dirent(&v)?)),
            None => Ok(None),
        }
    }

    fn dir_entry(&self, ino: u64) -> Result<Arc<Entry>> {
        let e = self.entry(ino)?;
        if e.data.read().attr.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        Ok(e)
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        if name.len() > MAX_NAME_LEN {
            return Err(Error::NameTooLong);
        }
        let pattr = self.getattr(parent)?;
        if pattr.inode.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        if name == b"." {
            return Ok(pattr);
        }
        if name == b".." {
            return self.getattr(pattr.inode.parent);
        }
        if parent == ROOT_INO && name == SNAPSHOT_DIR_NAME.as_bytes() {
            return self.getattr(SNAPSHOT_DIR_INO);
        }
        match self.lookup_ino(parent, name)? {
            Some((ino, _)) => self.getattr(ino),
            None => Err(Error::NotFound),
        }
    }

    // ------------------------------------------------------------------ namespace

    fn alloc_ino(&self, b: &mut Batch) -> u64 {
        let ino = self.next_ino.fetch_add(1, Ordering::SeqCst);
        b.put(meta::misc_key("next_ino"), (ino + 1).to_le_bytes().to_vec());
        ino
    }

    /// Creates any kind of node under `parent`. Set-gid directories pass on their group (and,
    /// to subdirectories, the set-gid bit), as on ext4.
    fn make_node(&self, parent: u64, name: &[u8], node: NewNode, who: Caller) -> Result<Attr> {
        let NewNode {
            kind,
            mode,
            rdev,
            symlink,
        } = node;
        check_name(name)?;
        self.check_new_name(parent, name)?;
        let _ns = self.ns.lock();
        let pe = self.dir_entry(parent)?;
        let mut pd = pe.data.write();
        if pd.gone || pd.attr.nlink == 0 {
            return Err(Error::NotFound);
        }
        if self.lookup_ino(parent, name)?.is_some() {
            return Err(Error::Exists);
        }
        let mut gid = who.gid;
        let mut perm = (mode & 0o7777) as u16;
        if pd.attr.perm & libc::S_ISGID as u16 != 0 {
            gid = pd.attr.gid;
            if kind == FileKind::Dir {
                perm |= libc::S_ISGID as u16;
            }
        }
        let acls = self.acl_inherit(parent, kind, &mut perm)?;
        let mut inode = Inode::new(kind, perm, who.uid, gid, parent);
        inode.rdev = rdev;
        inode.symlink = symlink.to_vec();
        inode.size = symlink.len() as u64;
        let mut b = Batch::default();
        let ino = self.alloc_ino(&mut b);
        b.put(meta::inode_key(ino), inode.encode());
        for (xname, value) in acls {
            b.put(meta::xattr_key(ino, xname), value);
        }
        b.put(
            meta::dirent_key(parent, name),
            meta::encode_dirent(ino, kind),
        );
        let t = now();
        pd.attr.mtime = t;
        pd.attr.ctime = t;
        if kind == FileKind::Dir {
            pd.attr.nlink += 1;
        }
        b.put(meta::inode_key(parent), pd.attr.encode());
        self.apply(b)?;
        Ok(Attr { ino, inode })
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        who: Caller,
    ) -> Result<Attr> {
        let kind = FileKind::from_mode(mode).unwrap_or(FileKind::File);
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return Err(Error::Invalid(
                "mknod cannot make directories or symlinks".into(),
            ));
        }
        self.make_node(parent, name, NewNode::new(kind, mode).rdev(rdev), who)
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, who: Caller) -> Result<Attr> {
        self.make_node(parent, name, NewNode::new(FileKind::Dir, mode), who)
    }

    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], who: Caller) -> Result<Attr> {
        if target.is_empty() {
            return Err(Error::NotFound);
        }
        if target.len() > 4095 {
            return Err(Error::NameTooLong);
        }
        self.make_node(
            parent,
            name,
            NewNode::new(FileKind::Symlink, 0o777).target(target),
            who,
        )
    }

    /// Creates a regular file and opens it; returns its attributes and a handle.
    pub fn create_file(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        who: Caller,
    ) -> Result<(Attr, u64)> {
        let attr = self.make_node(parent, name, NewNode::new(FileKind::File, mode), who)?;
        let fh = self.open_file(attr.ino)?;
        // Even a file closed without a write must exist after close returns.
        self.entry(attr.ino)?.data.write().unsynced = true;
        Ok((attr, fh))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let a = self.getattr(ino)?;
        if a.inode.kind != FileKind::Symlink {
            return Err(Error::Invalid("not a symlink".into()));
        }
        Ok(a.inode.symlink)
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr> {
        check_name(new_name)?;
        self.check_writable(ino)?;
        self.check_new_name(new_parent, new_name)?;
        let _ns = self.ns.lock();
        let pe = self.dir_entry(new_parent)?;
        let e = self.entry(ino)?;
        let mut pd = pe.data.write();
        if pd.attr.nlink == 0 {
            return Err(Error::NotFound);
        }
        let mut d = e.data.write();
        if d.attr.kind == FileKind::Dir {
            return Err(Error::NotPermitted);
        }
        // An orphan may get a first name: O_TMPFILE (src/volume/tmpfile.rs).
        if d.gone || (d.attr.nlink == 0 && !d.orphan) {
            return Err(Error::NotFound);
        }
        if d.attr.nlink >= u32::MAX - 1 {
            return Err(Error::Invalid("too many links".into()));
        }
        if self.lookup_ino(new_parent, new_name)?.is_some() {
            return Err(Error::Exists);
        }
        let t = now();
        d.attr.nlink += 1;
        d.attr.ctime = t;
        pd.attr.mtime = t;
        pd.attr.ctime = t;
        let mut b = Batch::default();
        b.put(
            meta::dirent_key(new_parent, new_name),
            meta::encode_dirent(ino, d.attr.kind),
        );
        b.put(meta::inode_key(ino), d.attr.encode());
        b.put(meta::inode_key(new_parent), pd.attr.encode());
        if d.orphan {
            b.delete(meta::orphan_key(ino));
        }
        self.apply(b)?;
        d.orphan = false;
        Ok(Attr {
            ino,
            inode: d.attr.clone(),
        })
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn dir_is_empty(&self, ino: u64) -> Result<bool> {
        let p = meta::dirent_prefix(ino);
        Ok(self
            .kv
            .range_limit(&p, prefix_end(&p).as_deref(), 1)?
            .is_empty())
    }

    fn remove(&self, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        if name == b"." {
            return Err(Error::Invalid("cannot remove '.'".into()));
        }
        if name == b".." {
            return Err(Error::NotEmpty);
        }
        self.check_writable_name(parent, name)?;
        let _ns = self.ns.lock();
        let pe = self.dir_entry(parent)?;
        let (ino, kind) = self.lookup_ino(parent, name)?.ok_or(Error::NotFound)?;
        match (dir, kind == FileKind::Dir) {
            (true, false) => return Err(Error::NotDir),
            (false, true) => return Err(Error::IsDir),
            _ => {}
        }
        if dir && !self.dir_is_empty(ino)? {
            return Err(Error::NotEmpty);
        }
        let mut b = Batch::default();
        b.delete(meta::dirent_key(parent, name));
        let t = now();
        {
            let mut pd = pe.data.write();
            pd.attr.mtime = t;
            pd.attr.ctime = t;
            if dir {
                pd.attr.nlink -= 1;
            }
            b.put(meta::inode_key(parent), pd.attr.encode());
        }
        let delete_now = self.drop_link(ino, dir, t, &mut b, (parent, name))?;
        self.apply(b)?;
        if delete_now {
            self.delete_inode_data(ino)?;
        }
        Ok(())
    }

    /// Takes one name away from `ino` inside batch `b`. Returns true when the inode has no
    /// names and no open handles left, so its data must be deleted after the batch.
    fn drop_link(
        &self,
        ino: u64,
        is_dir: bool,
        t: Timestamp,
        b: &mut Batch,
        from: (u64, &[u8]),
    ) -> Result<bool> {
        let e = self.entry(ino)?;
        let mut d = e.data.write();
        d.attr.ctime = t;
        d.attr.nlink = if is_dir {
            0
        } else {
            d.attr.nlink.saturating_sub(1)
        };
        b.put(meta::inode_key(ino), d.attr.encode());
        if d.attr.nlink > 0 {
            return Ok(false);
        }
        if let Some((k, v)) = self.recycle_instead(&d.attr, ino, from) {
            b.put(k, v);
            // Preallocated, never written: nothing to keep for the bin.
            self.release_reserved(ino, 0, u64::MAX)?;
            return Ok(false);
        }
        // Recorded in the same batch, so a crash before the data is gone finishes it at startup.
        b.put(meta::orphan_key(ino), Vec::new());
        if e.opens.load(Ordering::Acquire) > 0 {
            d.orphan = true;
            return Ok(false);
        }
        Ok(true)
    }

    /// Frees an inode with no names and no handles: its extents (in pages), xattrs and record.
    fn delete_inode_data(&self, ino: u64) -> Result<()> {
        let e = self.entry(ino)?;
        let mut d = e.data.write();
        Self::wait_commit(&e, &mut d);
        self.dirty_total.fetch_sub(d.dirty_bytes, Ordering::Relaxed);
        d.dirty.clear();
        d.dirty_bytes = 0;
        d.attr_dirty = false;
        loop {
            let p = meta::extent_prefix(ino);
            let page = self
                .kv
                .range_limit(&p, prefix_end(&p).as_deref(), DELETE_PAGE)?;
            if page.is_empty() {
                break;
            }
            let mut b = Batch::default();
            let mut refs: HashMap<ChunkId, i64> = HashMap::new();
            let mut logical = 0i64;
            for (k, v) in page {
                let x = Extent::decode(&v)?;
                *refs.entry(x.chunk).or_default() -= 1;
                logical -= x.len as i64;
                b.delete(k);
            }
            self.apply_extent_batch(b, refs, logical)?;
        }
        let mut b = Batch::default();
        for (k, _) in self.kv.range(
            &meta::xattr_prefix(ino),
            prefix_end(&meta::xattr_prefix(ino)).as_deref(),
        )? {
            b.delete(k);
        }
        b.delete(meta::inode_key(ino));
        self.forget_space(&mut b, ino);
        b.delete(meta::orphan_key(ino));
        self.apply(b)?;
        d.gone = true;
        drop(d);
        self.entries.lock().remove(&ino);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        check_name(new_name)?;
        check_name(name)?;
        self.check_writable_name(parent, name)?;
        self.check_writable_name(new_parent, new_name)?;
        let _ns = self.ns.lock();
        let (src, src_kind) = self.lookup_ino(parent, name)?.ok_or(Error::NotFound)?;
        self.dir_entry(new_parent)?;
        let dst = self.lookup_ino(new_parent, new_name)?;
        if parent == new_parent && name == new_name {
            return if mode == RenameMode::NoReplace {
                Err(Error::Exists)
            } else {
                Ok(())
            };
        }
        if src_kind == FileKind::Dir && mode != RenameMode::Exchange {
            // Refuse to move a directory under itself (the kernel checks too; we do not rely on it).
            let mut p = new_parent;
            while p != ROOT_INO {
                if p == src {
                    return Err(Error::Invalid("cannot move a directory into itself".into()));
                }
                p = self.getattr(p)?.inode.parent;
            }
        }
        let t = now();
        let mut b = Batch::default();
        let mut delete_after = None;
        match (mode, dst) {
            (RenameMode::Exchange, None) => return Err(Error::NotFound),
            (RenameMode::NoReplace, Some(_)) => return Err(Error::Exists),
            (RenameMode::Exchange, Some((dino, dkind))) => {
                b.put(
                    meta::dirent_key(parent, name),
                    meta::encode_dirent(dino, dkind),
                );
                b.put(
                    meta::dirent_key(new_parent, new_name),
                    meta::encode_dirent(src, src_kind),
                );
                self.reparent(src, src_kind, parent, new_parent, t, &mut b)?;
                self.reparent(dino, dkind, new_parent, parent, t, &mut b)?;
            }
            (_, existing) => {
                if let Some((dino, dkind)) = existing {
                    if dino == src {
                        // Two names of one inode: POSIX says do nothing.
                        return Ok(());
                    }
                    match (src_kind == FileKind::Dir, dkind == FileKind::Dir) {
                        (true, false) => return Err(Error::NotDir),
                        (false, true) => return Err(Error::IsDir),
                        (true, true) if !self.dir_is_empty(dino)? => return Err(Error::NotEmpty),
                        _ => {}
                    }
                    if dkind == FileKind::Dir {
                        let npe = self.entry(new_parent)?;
                        let mut npd = npe.data.write();
                        npd.attr.nlink -= 1;
                        b.put(meta::inode_key(new_parent), npd.attr.encode());
                    }
                    let at = (new_parent, new_name);
                    if self.drop_link(dino, dkind == FileKind::Dir, t, &mut b, at)? {
                        delete_after = Some(dino);
                    }
                }
                b.delete(meta::dirent_key(parent, name));
                b.put(
                    meta::dirent_key(new_parent, new_name),
                    meta::encode_dirent(src, src_kind),
                );
                self.reparent(src, src_kind, parent, new_parent, t, &mut b)?;
            }
        }
        for p in [parent, new_parent] {
            let pe = self.entry(p)?;
            let mut pd = pe.data.write();
            pd.attr.mtime = t;
            pd.attr.ctime = t;
            b.put(meta::inode_key(p), pd.attr.encode());
        }
        self.apply(b)?;
        if let Some(ino) = delete_after {
            self.delete_inode_data(ino)?;
        }
        Ok(())
    }

    /// Moves `ino` from directory `from` to `to` in the inode records (ctime, `..`, link counts).
    fn reparent(
        &self,
        ino: u64,
        kind: FileKind,
        from: u64,
        to: u64,
        t: Timestamp,
        b: &mut Batch,
    ) -> Result<()> {
        {
            let e = self.entry(ino)?;
            let mut d = e.data.write();
            d.attr.ctime = t;
            d.attr.parent = to;
            b.put(meta::inode_key(ino), d.attr.encode());
        }
        if kind == FileKind::Dir && from != to {
            for (p, delta) in [(from, -1i64), (to, 1)] {
                let pe = self.entry(p)?;
                let mut pd = pe.data.write();
                pd.attr.nlink = (pd.attr.nlink as i64 + delta) as u32;
                b.put(meta::inode_key(p), pd.attr.encode());
            }
        }
        Ok(())
    }

    pub fn setattr(&self, ino: u64, s: &SetAttr) -> Result<Attr> {
        self.check_writable(ino)?;
        let _ns = self.ns.lock();
        let e = self.entry(ino)?;
        let mut d = e.data.write();
        if d.gone {
            return Err(Error::NotFound);
        }
        let t = now();
        if let Some(size) = s.size {
            if d.attr.kind == FileKind::Dir {
                return Err(Error::IsDir);
            }
            if d.attr.kind != FileKind::File {
                return Err(Error::Invalid("truncate of a special file".into()));
            }
            if size > MAX_FILE_SIZE {
                return Err(Error::TooBig);
            }
            self.truncate_locked(&e, &mut d, size)?;
            d.attr.mtime = t;
        }
        if let Some(mode) = s.mode {
            d.attr.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = s.uid {
            d.attr.uid = uid;
        }
        if let Some(gid) = s.gid {
            d.attr.gid = gid;
        }
        let resolve = |ts: TimeSet| match ts {
            TimeSet::Now => t,
            TimeSet::At(x) => x,
        };
        if let Some(a) = s.atime {
            d.attr.atime = resolve(a);
        }
        if let Some(m) = s.mtime {
            d.attr.mtime = resolve(m);
        }
        d.attr.ctime = s.ctime.unwrap_or(t);
        let mut b = Batch::default();
        if s.mode.is_some() {
            self.acl_chmod(ino, d.attr.perm, &mut b)?;
        }
        b.put(meta::inode_key(ino), d.attr.encode());
        self.apply(b)?;
        d.attr_dirty = false;
        Ok(Attr {
            ino,
            inode: d.attr.clone(),
        })
    }

    // ------------------------------------------------------------------ handles

    pub fn open_file(&self, ino: u64) -> Result<u64> {
        let e = self.entry(ino)?;
        {
            let d = e.data.read();
            // No name and no handle: an unlink or a rename over it since the caller's lookup
            // dropped its last link, and its data is being deleted. Opening it would serve holes
            // (found by faults::concurrent_writers_readers_and_renames...).
            if d.gone || (d.attr.nlink == 0 && !d.orphan) {
                return Err(Error::NotFound);
            }
            if d.attr.kind == FileKind::Dir {
                return Err(Error::IsDir);
            }
            // Counted under the lock: drop_link reads `opens` under the write lock to choose
            // between deleting now and keeping an orphan.
            e.opens.fetch_add(1, Ordering::AcqRel);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, Handle::File { ino });
        Ok(fh)
    }

    /// Closes a handle; the last close of a file unlinked while open deletes it.
    pub fn release(&self, fh: u64) -> Result<()> {
        tracing::debug!(fh, "release");
        let Some(Handle::File { ino }) = self.handles.lock().remove(&fh) else {
            return Err(Error::BadHandle);
        };
        let Some(e) = self.close_open(ino)? else {
            return Ok(());
        };
        let mut d = e.data.write();
        if d.dirty_bytes > 0 || d.attr_dirty {
            self.commit_locked(&e, &mut d, true, false)?;
        }
        Ok(())
    }

    pub fn handle_ino(&self, fh: u64) -> Result<u64> {
        match self.handles.lock().get(&fh) {
            Some(Handle::File { ino }) => Ok(*ino),
            _ => Err(Error::BadHandle),
        }
    }

    // ------------------------------------------------------------------ xattrs

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], how: XattrSet) -> Result<()> {
        if name.is_empty() || name.len() > 255 {
            return Err(Error::Range);
        }
        if value.len() > MAX_XATTR_VALUE {
            return Err(Error::TooBig);
        }
        if acl::is_acl_name(name) {
            return self.set_acl(ino, name, value, how);
        }
        let dav = name.starts_with(DAV_PROP_PREFIX);
        if dav {
            if value.len() > MAX_DAV_PROP_BYTES {
                return Err(Error::TooBig);
            }
            match crate::xmldepth::prop_record(value) {
                None => {
                    return Err(Error::Invalid(
                        "not a WebDAV property record (the share's own xattr namespace)".into(),
                    ))
                }
                Some([.., xml]) if crate::xmldepth::too_deep(xml) => {
                    return Err(Error::Invalid(format!(
                        "a WebDAV property nested deeper than {} levels",
                        crate::xmldepth::MAX_DEPTH
                    )))
                }
                Some(_) => {}
            }
        }
        self.check_writable(ino)?;
        let _ns = self.ns.lock();
        let e = self.entry(ino)?;
        let mut d = e.data.write();
        let key = meta::xattr_key(ino, name);
        let old = self.kv.get(&key)?;
        let exists = old.is_some();
        match how {
            XattrSet::Create if exists => return Err(Error::Exists),
            XattrSet::Replace if !exists => return Err(Error::NoXattr),
            _ => {}
        }
        if dav {
            self.check_dav_props(ino, &key, value.len())?;
            let grows = value.len().saturating_sub(old.map_or(0, |o| o.len()));
            self.check_quota(grows as u64)?;
        }
        d.attr.ctime = now();
        let mut b = Batch::default();
        b.put(key, value.to_vec());
        b.put(meta::inode_key(ino), d.attr.encode());
        self.apply(b)
    }

    /// Refuses a dead property (see [`DAV_PROP_PREFIX`]) of `len` bytes at `key` that would
    /// take `ino` past [`MAX_DAV_PROPS`] or [`MAX_DAV_PROP_TOTAL`] (507 / ENOSPC).
    fn check_dav_props(&self, ino: u64, key: &[u8], len: usize) -> Result<()> {
        let mut p = meta::xattr_prefix(ino);
        p.extend_from_slice(DAV_PROP_PREFIX);
        let (mut count, mut total) = (1, len);
        for (k, v) in self.kv.range(&p, prefix_end(&p).as_deref())? {
            if k != key {
                count += 1;
                total += v.len();
            }
        }
        if count > MAX_DAV_PROPS || total > MAX_DAV_PROP_TOTAL {
            return Err(Error::NoSpace(format!(
                "inode {ino}: dead properties are limited to {MAX_DAV_PROPS} and \
                 {MAX_DAV_PROP_TOTAL} bytes per resource"
            )));
        }
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        self.getattr(ino)?;
        self.kv
            .get(&meta::xattr_key(ino, name))?
            .ok_or(Error::NoXattr)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        self.getattr(ino)?;
        let p = meta::xattr_prefix(ino);
        Ok(self
            .kv
            .range(&p, prefix_end(&p).as_deref())?
            .into_iter()
            .map(|(k, _)| k[p.len()..].to_vec())
            .collect())
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        if acl::is_acl_name(name) {
            return self.remove_acl(ino, name);
        }
        self.check_writable(ino)?;
        let _ns = self.ns.lock();
        let e = self.entry(ino)?;
        let mut d = e.data.write();
        let key = meta::xattr_key(ino, name);
        if self.kv.get(&key)?.is_none() {
            return Err(Error::NoXattr);
        }
        d.attr.ctime = now();
        let mut b = Batch::default();
        b.delete(key);
        b.put(meta::inode_key(ino), d.attr.encode());
        self.apply(b)
    }

    // ------------------------------------------------------------------ data: read

    fn file_entry(&self, ino: u64) -> Result<Arc<Entry>> {
        let e = self.entry(ino)?;
        let kind = e.data.read().attr.kind;
        match kind {
            FileKind::File => Ok(e),
            FileKind::Dir => Err(Error::IsDir),
            _ => Err(Error::Invalid("not a regular file".into())),
        }
    }

    /// Committed extents of `ino` overlapping `start..end`, in offset order.
    fn extents(&self, ino: u64, start: u64, end: u64) -> Result<Vec<(u64, Extent)>> {
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let lower = meta::extent_key(ino, 0);
        if let Some((k, v)) = self.kv.last_in(&lower, &meta::extent_key(ino, start))? {
            let off = meta::key_tail_u64(&k);
            let x = Extent::decode(&v)?;
            if off < start && off + x.len as u64 > start {
                out.push((off, x));
            }
        }
        for (k, v) in self.kv.range(
            &meta::extent_key(ino, start),
            Some(&meta::extent_key(ino, end)),
        )? {
            out.push((meta::key_tail_u64(&k), Extent::decode(&v)?));
        }
        Ok(out)
    }

    /// A chunk's plaintext, from the cache or its pack (verified: decrypted and re-hashed).
    fn chunk_data(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
        if let Some(c) = self.chunk_cache.lock().get(id) {
            return Ok(c.clone());
        }
        // Kernel readahead asks for several pieces of one chunk at once: let one reader decode
        // it and the others find it in the cache, instead of each decoding the whole chunk.
        let _decoding = self.decode_locks[id.0[0] as usize % DECODE_STRIPES].lock();
        if let Some(c) = self.chunk_cache.lock().get(id) {
            return Ok(c.clone());
        }
        let rec = match self.kv.get(&meta::chunk_key(id))? {
            Some(v) => ChunkRecord::decode(&v)?,
            None => {
                return Err(Error::Corrupt(format!(
                    "chunk {id} is referenced but not indexed"
                )))
            }
        };
        let loc = BlobLocation {
            offset: rec.offset,
            len: rec.stored_len,
        };
        let verify = |blob: &[u8]| blob::decode(&self.keys, id, blob);
        let local = self
            .packs
            .reader(rec.pack)
            .and_then(|file| pack::read_blob(&file, loc))
            .and_then(|blob| blob::decode_vec(&self.keys, id, blob));
        let tier = self.tier.read().clone();
        let plain = match (local, tier) {
            (Ok(plain), tier) => {
                if let Some(t) = tier {
                    t.pack_used(rec.pack);
                }
                plain
            }
            // No whole local copy (evicted), or a damaged one: the off-site copy serves.
            (Err(local_err), Some(t)) => {
                if self.packs.path(rec.pack).exists() {
                    tracing::error!(chunk = %id, pack = rec.pack, offset = rec.offset,
                        "local copy unreadable ({local_err}); reading the off-site copy");
                }
                t.fetch_blob(rec.pack, loc, &verify).inspect_err(|e| {
                    tracing::error!(chunk = %id, pack = rec.pack, offset = rec.offset, "unreadable chunk: {e}");
                })?
            }
            (Err(e), None) => {
                tracing::error!(chunk = %id, pack = rec.pack, offset = rec.offset, "unreadable chunk: {e}");
                return Err(e);
            }
        };
        let plain = Arc::new(plain);
        self.chunk_cache.lock().put(*id, plain.clone());
        Ok(plain)
    }

    /// Fills `buf` with the committed bytes at `start` (holes stay as they are: zero), from
    /// `extents`, those of `ino` around the range.
    fn read_committed(
        &self,
        ino: u64,
        extents: &[(u64, Extent)],
        start: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let end = start + buf.len() as u64;
        for (off, x) in extents {
            let (s, e) = ((*off).max(start), (off + x.len as u64).min(end));
            if s >= e {
                continue;
            }
            let data = self.chunk_data(&x.chunk)?;
            let src = extent_range(ino, &data, *off, x, s, e)?;
            buf[(s - start) as usize..(e - start) as usize].copy_from_slice(&data[src]);
        }
        Ok(())
    }

    /// Lays the bytes a reader must see over committed data: a commit's bytes in flight, then
    /// the dirty map (newest).
    fn overlay_uncommitted(d: &FileData, start: u64, buf: &mut [u8]) {
        if let Some(c) = &d.committing {
            overlay(c, start, buf);
        }
        overlay(&d.dirty, start, buf);
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<ReadData> {
        let e = self.file_entry(ino)?;
        let d = e.data.read();
        if offset >= d.attr.size {
            return Ok(ReadData::Owned(Vec::new()));
        }
        let n = (size as u64).min(d.attr.size - offset) as usize;
        let end = offset + n as u64;
        let extents = self.extents(ino, offset, end)?;
        // The common case of a sequential read: one committed chunk holds the whole range.
        // Lend a slice of the cached chunk instead of copying it into a fresh buffer.
        if let [(off, x)] = extents.as_slice() {
            let covered = *off <= offset && off + x.len as u64 >= end;
            if covered && d.dirty.is_empty() && d.committing.is_none() {
                let data = self.chunk_data(&x.chunk)?;
                let range = extent_range(ino, &data, *off, x, offset, end)?;
                return Ok(ReadData::Chunk(data, range));
            }
        }
        let mut buf = vec![0u8; n];
        self.read_committed(ino, &extents, offset, &mut buf)?;
        Self::overlay_uncommitted(&d, offset, &mut buf);
        Ok(ReadData::Owned(buf))
    }

    // ------------------------------------------------------------------ data: write

    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::TooBig)?;
        self.check_writable(ino)?;
        // A preallocated range written: its reservation gives way to the data's own count.
        self.release_reserved(ino, offset, end)?;
        self.recycle_make_room(data.len() as u64)?;
        self.check_quota(data.len() as u64)?;
        let tier = self.tier.read().clone();
        if let Some(t) = tier {
            t.admit_write(self, data.len() as u64);
        }
        let e = self.file_entry(ino)?;
        let mut d = e.data.write();
        if data.is_empty() {
            return Ok(0);
        }
        let added = insert_dirty(&mut d.dirty, offset, data);
        d.dirty_bytes += added;
        self.dirty_total.fetch_add(added, Ordering::Relaxed);
        d.attr.size = d.attr.size.max(end);
        let t = now();
        d.attr.mtime = t;
        d.attr.ctime = t;
        d.attr_dirty = true;
        d.unsynced = true;
        d.last_write = Instant::now();
        let over_global = self.dirty_total.load(Ordering::Relaxed) >= self.opts.dirty_limit
            && d.dirty_bytes >= self.opts.dirty_limit / 16;
        if d.dirty_bytes >= d.commit_at || over_global {
            // With the disk full, every further write would re-encode the same dirty data only
            // to fail again: refuse at once for a moment instead.
            if let Some(t) = d.disk_full_at {
                if t.elapsed() < Duration::from_secs(2) {
                    return Err(Error::NoSpace("local disk is full".into()));
                }
            }
            if let Err(err) = self.commit_locked(&e, &mut d, false, true) {
                if err.errno() == libc::ENOSPC {
                    d.disk_full_at = Some(Instant::now());
                }
                return Err(err);
            }
            d.disk_full_at = None;
        }
        Ok(data.len() as u32)
    }

    /// Makes everything written to `ino` durable (fsync).
    pub fn fsync(&self, ino: u64) -> Result<()> {
        tracing::debug!(ino, "fsync");
        let e = self.entry(ino)?;
        let mut d = e.data.write();
        if d.gone {
            return Ok(());
        }
        self.commit_locked(&e, &mut d, true, false)
    }

    /// Makes `ino` durable if anything changed since it last was (close of a file).
    pub fn flush(&self, ino: u64) -> Result<()> {
        tracing::debug!(ino, "flush");
        let e = self.entry(ino)?;
        let mut d = e.data.write();
        if d.gone || !(d.unsynced || d.dirty_bytes > 0 || d.attr_dirty) {
            return Ok(());
        }
        self.commit_locked(&e, &mut d, true, false)
    }

    /// Commits every file's dirty data; durable if asked (shutdown). Files written to in the
    /// last seconds keep their growing last chunk in memory unless `durable`.
    pub fn commit_all(&self, durable: bool) -> Result<()> {
        let all: Vec<Arc<Entry>> = self.entries.lock().values().cloned().collect();
        for e in all {
            let mut d = e.data.write();
            if !d.gone && (d.dirty_bytes > 0 || d.attr_dirty) {
                let keep_tail = !durable && d.last_write.elapsed() < Duration::from_secs(5);
                self.commit_locked(&e, &mut d, false, keep_tail)?;
            }
        }
        if durable {
            self.kv.flush()?;
        }
        Ok(())
    }

    /// Turns a file's dirty ranges into chunks and splices them into its extent map.
    /// `keep_tail` makes it a partial commit, which may leave bytes likely to grow in memory
    /// (see [`Volume::plan_commit`]).
    ///
    /// The expensive part (re-chunking, hashing, encoding, pack fsync) runs with the file's
    /// data lock released: the bytes being committed move to `committing`, where reads still
    /// find them, and writers fill a fresh dirty map meanwhile. The file's `commit_gate` keeps
    /// commits and every other extent-map change of the file one at a time.
    fn commit_locked(
        &self,
        e: &Entry,
        d: &mut DataGuard<'_>,
        durable: bool,
        keep_tail: bool,
    ) -> Result<()> {
        let ino = e.ino;
        let _gate = match e.commit_gate.try_lock() {
            Some(g) => g,
            None => DataGuard::unlocked(d, || e.commit_gate.lock()),
        };
        if d.dirty.is_empty() {
            if d.attr_dirty {
                let mut b = Batch::default();
                b.put(meta::inode_key(ino), d.attr.encode());
                self.apply(b)?;
                d.attr_dirty = false;
            }
            if durable {
                self.kv.flush()?;
                d.unsynced = false;
            }
            return Ok(());
        }
        let started = Instant::now();
        // A partial commit past a memory bound commits everything regardless.
        let hold_back = keep_tail && d.dirty_bytes < 2 * FILE_DIRTY_COMMIT;
        if keep_tail && !hold_back {
            tracing::debug!(
                ino,
                dirty = d.dirty_bytes,
                "partial commit over its memory bound"
            );
        }
        let snapshot = Arc::new(std::mem::take(&mut d.dirty));
        let snapshot_bytes = std::mem::take(&mut d.dirty_bytes);
        d.committing = Some(snapshot.clone());
        let size = d.attr.size;
        // On failure nothing is lost: the snapshot goes back under what was written since (the
        // pieces already applied hold the same bytes, so committing them again is harmless).
        let give_back = |vol: &Volume, d: &mut DataGuard<'_>| {
            d.committing = None;
            let snapshot = Arc::try_unwrap(snapshot.clone()).unwrap_or_else(|a| (*a).clone());
            vol.replace_dirty(d, snapshot, snapshot_bytes);
        };
        let planned =
            DataGuard::unlocked(d, || self.plan_segments(ino, &snapshot, size, hold_back));
        let (segments, mut new_tail) = match planned {
            Ok(p) => p,
            Err(err) => {
                give_back(self, d);
                return Err(err);
            }
        };
        // Pieces of at most COMMIT_PIECE bytes go through two stages: this thread rebuilds and
        // chunks a piece, later applies its metadata batch under the data lock; a store stage
        // hashes it, encodes and appends its new chunks and fsyncs their pack. With more than
        // one piece the store stage runs on a scoped thread, so piece N+1 is chunked while
        // piece N is encoded and fsync'd. Every extent-map read and write stays on this
        // thread, in piece order; each applied piece leaves a consistent extent map, and reads
        // meanwhile see the snapshot.
        let mut cursor = PieceCursor {
            segment: 0,
            pos: segments.first().map_or(0, |s| s.start),
        };
        let mut t = CommitTally::default();
        let gate = self.store_gate.read();
        let snap: &DirtyMap = &snapshot;
        let outcome = (|| -> Result<()> {
            if segments.is_empty() {
                return Ok(());
            }
            let t0 = Instant::now();
            let first = DataGuard::unlocked(d, || {
                self.next_piece(ino, &segments, snap, hold_back, &mut cursor, &mut new_tail)
            })?;
            t.times[0] += t0.elapsed();
            if cursor.segment >= segments.len() {
                let mut plans = first;
                let stored =
                    DataGuard::unlocked(d, || self.store_piece(&mut plans, &mut HashSet::new()))?;
                return self.finish_piece(ino, d, plans, stored, &mut t);
            }
            std::thread::scope(|s| {
                let (piece_tx, piece_rx) = mpsc::sync_channel::<Vec<RegionPlan>>(1);
                let (done_tx, done_rx) = mpsc::sync_channel(1);
                s.spawn(move || {
                    let mut inflight = HashSet::new();
                    for mut plans in piece_rx {
                        let r = self.store_piece(&mut plans, &mut inflight);
                        let failed = r.is_err();
                        if done_tx.send(r.map(|st| (plans, st))).is_err() || failed {
                            break;
                        }
                    }
                });
                let stopped = || Error::Store("the store stage of a commit stopped".into());
                piece_tx.send(first).map_err(|_| stopped())?;
                let mut queued = 1usize;
                let mut next = None;
                loop {
                    if next.is_none() && cursor.segment < segments.len() {
                        let t0 = Instant::now();
                        next = Some(DataGuard::unlocked(d, || {
                            self.next_piece(
                                ino,
                                &segments,
                                snap,
                                hold_back,
                                &mut cursor,
                                &mut new_tail,
                            )
                        })?);
                        t.times[0] += t0.elapsed();
                    }
                    if queued == 0 {
                        return Ok(());
                    }
                    let (plans, stored) =
                        DataGuard::unlocked(d, || done_rx.recv()).map_err(|_| stopped())??;
                    queued -= 1;
                    // Hand the store stage its next piece before applying this one.
                    if let Some(p) = next.take() {
                        piece_tx.send(p).map_err(|_| stopped())?;
                        queued += 1;
                    }
                    self.finish_piece(ino, d, plans, stored, &mut t)?;
                }
            })
        })();
        drop(gate);
        if let Err(err) = outcome {
            give_back(self, d);
            return Err(err);
        }
        d.committing = None;
        self.largest_piece
            .fetch_max(t.region_bytes, Ordering::Relaxed);
        let tail_bytes: u64 = new_tail.values().map(|v| v.len() as u64).sum();
        self.replace_dirty(d, new_tail, snapshot_bytes);
        if t.pieces == 0 {
            // Everything was held back: the inode's attributes still go to the store.
            let mut b = Batch::default();
            b.put(meta::inode_key(ino), d.attr.encode());
            self.apply(b)?;
        }
        if durable {
            self.kv.flush()?;
            d.unsynced = !d.dirty.is_empty();
        }
        d.commit_at = FILE_DIRTY_COMMIT.max(d.dirty_bytes + FILE_DIRTY_COMMIT / 4);
        d.attr_dirty = !d.dirty.is_empty();
        tracing::debug!(
            ino,
            segments = segments.len(),
            pieces = t.pieces,
            largest_piece = t.region_bytes,
            chunks = t.chunks,
            new_chunks = t.new_chunks,
            tail = tail_bytes,
            durable,
            plan_ms = t.times[0].as_millis() as u64,
            hash_ms = t.times[1].as_millis() as u64,
            store_ms = t.times[2].as_millis() as u64,
            meta_ms = t.times[3].as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "commit"
        );
        Ok(())
    }

    /// The store stage of one piece of a commit: the chunks' ids, then the chunks neither the
    /// index nor an earlier piece of the same commit (`inflight`, not applied yet) has,
    /// encoded, appended and made durable. Returns them with the hash and store times.
    fn store_piece(
        &self,
        plans: &mut [RegionPlan],
        inflight: &mut HashSet<ChunkId>,
    ) -> Result<StoredPiece> {
        let t0 = Instant::now();
        self.hash_chunks(plans);
        let wanted = self.new_chunks(plans, inflight)?;
        let t1 = Instant::now();
        let stored = self.store_chunks(&wanted)?;
        inflight.extend(stored.keys().copied());
        Ok((stored, [t1 - t0, t1.elapsed()]))
    }

    /// Applies a stored piece's metadata (under the data lock) and adds it to the tally.
    fn finish_piece(
        &self,
        ino: u64,
        d: &mut DataGuard<'_>,
        plans: Vec<RegionPlan>,
        (new_chunks, [hash_t, store_t]): StoredPiece,
        t: &mut CommitTally,
    ) -> Result<()> {
        let t3 = Instant::now();
        self.apply_piece(ino, &d.attr, &plans, &new_chunks)?;
        t.pieces += 1;
        t.chunks += plans.iter().map(|p| p.chunks.len()).sum::<usize>();
        t.new_chunks += new_chunks.len();
        t.region_bytes = t
            .region_bytes
            .max(plans.iter().map(|p| p.buf.len() as u64).sum());
        t.times[1] += hash_t;
        t.times[2] += store_t;
        t.times[3] += t3.elapsed();
        Ok(())
    }

    /// The metadata of one piece of a commit, in one atomic batch: each planned segment's range
    /// is punched out of the extent map and replaced by its chunks (all-zero ones as holes),
    /// refcounts and stats follow, and the inode's attributes are written. The new chunks' packs
    /// are already durable ([`Volume::store_chunks`]).
    fn apply_piece(
        &self,
        ino: u64,
        attr: &Inode,
        plans: &[RegionPlan],
        new_chunks: &HashMap<ChunkId, NewChunk>,
    ) -> Result<()> {
        let mut b = Batch::default();
        let mut refs: HashMap<ChunkId, i64> = HashMap::new();
        // Punched together: patches of one piece can lie in the same extent, and the batch is
        // not applied between them.
        let ranges: Vec<(u64, u64)> = plans
            .iter()
            .filter(|p| p.end > p.start)
            .map(|p| (p.start, p.end))
            .collect();
        let mut logical = self.punch_ranges_into(ino, &ranges, &mut b, &mut refs)?;
        for p in plans {
            if p.end <= p.start {
                continue;
            }
            for c in &p.chunks {
                if let Some(id) = c.id {
                    let x = Extent {
                        chunk: id,
                        chunk_offset: 0,
                        len: c.len as u32,
                    };
                    b.put(meta::extent_key(ino, c.offset), x.encode());
                    *refs.entry(id).or_default() += 1;
                    logical += c.len as i64;
                }
            }
        }
        self.note_extents(&mut b, ino, logical)?;
        b.put(meta::inode_key(ino), attr.encode());
        let mut cs = self.commit.lock();
        // Every chunk this piece references, in case one is collected under our feet.
        let plain: HashMap<ChunkId, &[u8]> = plans
            .iter()
            .flat_map(|p| {
                p.chunks.iter().filter_map(|c| {
                    c.id.map(|id| (id, &p.buf[c.start_in_buf..c.start_in_buf + c.len]))
                })
            })
            .collect();
        self.apply_refs_with_data(&mut cs, &mut b, refs, new_chunks, logical, &plain)?;
        self.kv.apply(b)
    }

    /// Makes `base` (bytes a commit took and gives back, `base_bytes` of dirty accounting) the
    /// file's dirty map again, with whatever was written meanwhile laid over it.
    fn replace_dirty(&self, d: &mut FileData, mut base: DirtyMap, base_bytes: u64) {
        for (off, bytes) in std::mem::take(&mut d.dirty) {
            // A range that only touches what is given back (a streaming write went on past the
            // held-back tail) stays a range of its own: merging would copy all of it, tens of
            // MiB, onto the end of a tail of one chunk. Overlapping ranges merge, newest on top.
            let end = off + bytes.len() as u64;
            let overlaps = base
                .range(..end)
                .next_back()
                .is_some_and(|(s, v)| s + v.len() as u64 > off);
            if overlaps {
                self.copied_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                insert_dirty(&mut base, off, &bytes);
            } else {
                base.insert(off, bytes);
            }
        }
        let now: u64 = base.values().map(|v| v.len() as u64).sum();
        self.dirty_total
            .fetch_sub(base_bytes + d.dirty_bytes, Ordering::Relaxed);
        self.dirty_total.fetch_add(now, Ordering::Relaxed);
        d.dirty = base;
        d.dirty_bytes = now;
    }

    /// Waits until no commit of this file is in flight (before changing its extent map by
    /// other means: truncate, delete).
    fn wait_commit(e: &Entry, d: &mut DataGuard<'_>) {
        if e.commit_gate.try_lock().is_none() {
            drop(DataGuard::unlocked(d, || e.commit_gate.lock()));
        }
    }

    /// Plans a commit of `dirty` (a file of `size` bytes): the segments to rebuild (each
    /// widened region minus its holes) and the bytes to keep dirty. The segments are rebuilt
    /// and chunked piece by piece later ([`Volume::next_piece`]), so planning holds no data.
    ///
    /// A partial commit (`hold_back`) leaves alone what is likely to grow: a segment that
    /// starts in mid-air (the kernel writes pages back out of order, so the bytes before it
    /// usually arrive soon) and the last chunk of a segment not closed by committed data.
    /// Chunking them now would cut where a continuous write never would, and the copies of a
    /// file would stop deduplicating.
    fn plan_segments(
        &self,
        ino: u64,
        dirty: &DirtyMap,
        size: u64,
        hold_back: bool,
    ) -> Result<(Vec<Segment>, DirtyMap)> {
        let mut segments = Vec::new();
        let mut new_tail: DirtyMap = BTreeMap::new();
        for Region {
            start: a,
            end: b,
            patch,
            ..
        } in self.widen_regions(ino, dirty, size)?
        {
            if patch {
                segments.push(Segment {
                    start: a,
                    end: b,
                    closed: true,
                    patch: true,
                });
                continue;
            }
            let extents = self.extents(ino, a, b)?;
            let mut covered: Vec<(u64, u64)> = extents
                .iter()
                .map(|(o, x)| (*o, o + x.len as u64))
                .collect();
            covered.extend(
                dirty
                    .range(..b)
                    .filter(|(o, v)| *o + v.len() as u64 > a)
                    .map(|(o, v)| (*o, *o + v.len() as u64)),
            );
            for (s, t) in merge_intervals(covered, a, b) {
                let anchored = s == 0
                    || extents.iter().any(|(o, _)| *o == s)
                    || self.extent_ends_at(ino, s)?;
                if hold_back && !anchored {
                    new_tail.insert(s, self.rebuild(ino, dirty, s, t)?.into_owned());
                    continue;
                }
                let closed = t == b
                    && self
                        .extents(ino, t, t + 1)?
                        .first()
                        .is_some_and(|(o, _)| *o == t);
                segments.push(Segment {
                    start: s,
                    end: t,
                    closed,
                    patch: false,
                });
            }
        }
        Ok((segments, new_tail))
    }

    /// The bytes of `ino` at `start..end` as a commit sees them: committed data with `dirty`
    /// laid over it. Borrowed from `dirty` when one dirty range holds them all (a streaming
    /// write), which spares a copy of every byte and the fresh pages to copy into.
    fn rebuild<'d>(
        &self,
        ino: u64,
        dirty: &'d DirtyMap,
        start: u64,
        end: u64,
    ) -> Result<Cow<'d, [u8]>> {
        if let Some((&off, v)) = dirty.range(..=start).next_back() {
            if off + v.len() as u64 >= end {
                return Ok(Cow::Borrowed(
                    &v[(start - off) as usize..(end - off) as usize],
                ));
            }
        }
        self.copied_bytes.fetch_add(end - start, Ordering::Relaxed);
        let mut buf = vec![0u8; (end - start) as usize];
        let extents = self.extents(ino, start, end)?;
        self.read_committed(ino, &extents, start, &mut buf)?;
        overlay(dirty, start, &mut buf);
        Ok(Cow::Owned(buf))
    }

    /// Rebuilds and chunks the next piece of a commit, from `cursor` on: whole segments while
    /// they fit in [`COMMIT_PIECE`] bytes, a segment larger than that in windows. A window that
    /// ends before its segment does keeps all but its last chunk and the next window starts at
    /// that chunk, so the cut points are exactly those of chunking the segment in one go (a
    /// FastCDC cut depends only on the bytes from the chunk's start to the cut). Bytes a
    /// partial commit holds back go to `tail`.
    fn next_piece<'d>(
        &self,
        ino: u64,
        segments: &[Segment],
        dirty: &'d DirtyMap,
        hold_back: bool,
        cursor: &mut PieceCursor,
        tail: &mut DirtyMap,
    ) -> Result<Vec<RegionPlan<'d>>> {
        let params = self.info.chunking;
        // A window longer than the largest chunk always yields a cut before its end.
        let min_window = 2 * params.max_size as u64;
        let cap = (COMMIT_PIECE as u64).max(2 * min_window);
        let mut plans = Vec::new();
        let mut bytes = 0u64;
        while let Some(seg) = segments.get(cursor.segment) {
            let room = cap - bytes;
            let left = seg.end - cursor.pos;
            if !plans.is_empty() && left > room && room < min_window {
                break;
            }
            let start = cursor.pos;
            let mut end = seg.end.min(start + room.max(min_window));
            // A window that runs past the dirty range it starts in is rebuilt into a copy.
            // Windows borrow instead where they can: one that starts in a large range ends
            // with it, and one that starts elsewhere ends a window past the start of the next
            // large range, so that only the bytes around a join are copied.
            let run_end = dirty
                .range(..=start)
                .next_back()
                .map_or(start, |(o, v)| (o + v.len() as u64).max(start));
            if run_end < end {
                if run_end - start >= min_window {
                    end = run_end;
                } else if let Some((&o, _)) = dirty
                    .range(start + 1..end)
                    .find(|(_, v)| v.len() as u64 >= min_window)
                {
                    end = end.min(o + min_window);
                }
            }
            let last = end == seg.end;
            let buf = self.rebuild(ino, dirty, start, end)?;
            // A patch is one chunk as it is (it is smaller than any cut FastCDC could make).
            let cuts = if seg.patch {
                vec![buf.len()]
            } else {
                chunker::cut_points(&params, &buf)
            };
            let mut chunks = Vec::new();
            let mut prev = 0usize;
            let mut commit_end = end;
            for (ci, &cut) in cuts.iter().enumerate() {
                let at = start + prev as u64;
                if ci == cuts.len() - 1 {
                    if !last {
                        commit_end = at;
                        break;
                    }
                    if hold_back && !seg.closed && !seg.patch {
                        commit_end = at;
                        tail.insert(at, buf[prev..cut].to_vec());
                        break;
                    }
                }
                chunks.push(PlannedChunk {
                    offset: at,
                    start_in_buf: prev,
                    len: cut - prev,
                    id: None,
                });
                prev = cut;
            }
            bytes += buf.len() as u64;
            plans.push(RegionPlan {
                start,
                end: commit_end,
                buf,
                chunks,
            });
            if last {
                cursor.segment += 1;
                cursor.pos = segments.get(cursor.segment).map_or(0, |s| s.start);
            } else {
                cursor.pos = commit_end;
            }
            if bytes >= cap {
                break;
            }
        }
        Ok(plans)
    }

    /// Computes the keyed id of every planned chunk on the pool; all-zero chunks stay `None`
    /// (they become holes).
    fn hash_chunks(&self, plans: &mut [RegionPlan]) {
        let keys = &self.keys;
        for p in plans.iter_mut() {
            let buf = &p.buf;
            p.chunks.par_iter_mut().for_each(|c| {
                let bytes = &buf[c.start_in_buf..c.start_in_buf + c.len];
                if !bytes.iter().all(|&x| x == 0) {
                    c.id = Some(keys.chunk_id(bytes));
                }
            });
        }
    }

    /// The planned chunks neither the index nor `skip` has yet (each once), with their bytes.
    fn new_chunks<'p>(
        &self,
        plans: &'p [RegionPlan],
        skip: &HashSet<ChunkId>,
    ) -> Result<Vec<(ChunkId, &'p [u8])>> {
        let mut wanted = Vec::new();
        let mut seen = HashSet::new();
        for p in plans {
            for c in &p.chunks {
                if let Some(id) = c.id {
                    if !skip.contains(&id)
                        && seen.insert(id)
                        && self.kv.get(&meta::chunk_key(&id))?.is_none()
                    {
                        wanted.push((id, &p.buf[c.start_in_buf..c.start_in_buf + c.len]));
                    }
                }
            }
        }
        Ok(wanted)
    }

    /// Widens each dirty range to whole extents: the extent holding the byte before it and
    /// the one holding the byte after it (so also a neighbour it merely touches), then merges
    /// overlapping results. Re-chunking a touching neighbour costs at most a chunk per side; if
    /// its boundary was a natural CDC cut, chunking reproduces it (same id, nothing stored);
    /// if it was cut short by an fsync in mid-stream, the data gets its natural boundaries back
    /// and keeps deduplicating against other copies.
    ///
    /// Except a patch: a range smaller than the volume's smallest chunk, wholly inside
    /// committed data and apart from every other region, stays as it is. Re-chunking its
    /// neighbours would store one or two whole chunks again for a few KiB written (random
    /// overwrites); a later copy of the file's data no longer deduplicates the one chunk
    /// around it, which is the price.
    fn widen_regions(&self, ino: u64, dirty: &DirtyMap, size: u64) -> Result<Vec<Region>> {
        let mut out: Vec<Region> = Vec::new();
        let patch_below = self.info.chunking.min_size as u64;
        for (&off, bytes) in dirty {
            let end = off + bytes.len() as u64;
            let mut a = off;
            let mut b = end;
            if a > 0 {
                if let Some((o, _)) = self.extents(ino, a - 1, a)?.first() {
                    a = a.min(*o);
                }
            }
            if let Some((o, x)) = self.extents(ino, b, b + 1)?.first() {
                b = b.max(o + x.len as u64);
            }
            b = b.min(size.max(end));
            // Other patches inside the same chunk are fine; a widened region reaching it is not.
            let apart = out.last().is_none_or(|last| last.end < off);
            if apart && end - off < patch_below && self.inside_committed(ino, off, end)? {
                out.push(Region {
                    start: off,
                    end,
                    patch: true,
                    wide_start: a,
                });
                continue;
            }
            // A widened region takes in every region it reaches, not only the last: several
            // patches may lie in the extent it starts in. A patch taken in is widened too.
            let (mut start, mut end) = (a, b);
            while let Some(last) = out.last().filter(|last| start <= last.end) {
                start = start.min(if last.patch {
                    last.wide_start
                } else {
                    last.start
                });
                end = end.max(last.end);
                out.pop();
            }
            out.push(Region {
                start,
                end,
                patch: false,
                wide_start: start,
            });
        }
        Ok(out)
    }

    /// Whether committed extents of `ino` cover `start..end` without a gap (no hole, not past
    /// the committed end of the file).
    fn inside_committed(&self, ino: u64, start: u64, end: u64) -> Result<bool> {
        let mut at = start;
        for (o, x) in self.extents(ino, start, end)? {
            if o > at {
                return Ok(false);
            }
            at = at.max(o + x.len as u64);
        }
        Ok(at >= end)
    }

    /// Whether a committed extent of `ino` ends exactly at `at`.
    fn extent_ends_at(&self, ino: u64, at: u64) -> Result<bool> {
        if at == 0 {
            return Ok(false);
        }
        Ok(self
            .extents(ino, at - 1, at)?
            .first()
            .is_some_and(|(o, x)| o + x.len as u64 == at))
    }

    /// Encodes new chunks in parallel and appends them to packs, then makes those packs durable
    /// (before any metadata names them).
    fn store_chunks(&self, wanted: &[(ChunkId, &[u8])]) -> Result<HashMap<ChunkId, NewChunk>> {
        let level = self.opts.zstd_level;
        let mut out = HashMap::new();
        if wanted.is_empty() {
            return Ok(out);
        }
        // Bounded batches keep peak memory to a few chunks per core.
        for group in wanted.chunks(16) {
            let blobs: Vec<Vec<u8>> = group
                .par_iter()
                .map(|(id, plain)| blob::encode(&self.keys, id, plain, level))
                .collect();
            for ((id, plain), blob) in group.iter().zip(blobs) {
                let (pack, loc) = self.packs.append(self, id, &blob)?;
                out.insert(
                    *id,
                    NewChunk {
                        pack,
                        loc,
                        plain_len: plain.len() as u32,
                    },
                );
            }
        }
        self.packs.sync_current()?;
        Ok(out)
    }

    /// Removes `ranges` (sorted, not overlapping) from the extent map inside batch `b`, keeping
    /// the parts of each extent they touch that lie outside all of them (as slices of its
    /// chunk). Returns the change in logical bytes; refcount changes go to `refs`.
    fn punch_ranges_into(
        &self,
        ino: u64,
        ranges: &[(u64, u64)],
        b: &mut Batch,
        refs: &mut HashMap<ChunkId, i64>,
    ) -> Result<i64> {
        let mut logical = 0i64;
        let mut done = HashSet::new();
        for &(start, end) in ranges {
            for (off, x) in self.extents(ino, start, end)? {
                if !done.insert(off) {
                    continue;
                }
                let xend = off + x.len as u64;
                b.delete(meta::extent_key(ino, off));
                *refs.entry(x.chunk).or_default() -= 1;
                logical -= x.len as i64;
                let mut keep = |from: u64, to: u64| {
                    let part = x.slice((from - off) as u32, (to - from) as u32);
                    b.put(meta::extent_key(ino, from), part.encode());
                    *refs.entry(x.chunk).or_default() += 1;
                    logical += part.len as i64;
                };
                let mut at = off;
                let first = ranges.partition_point(|r| r.1 <= off);
                for &(s, e) in ranges[first..].iter().take_while(|r| r.0 < xend) {
                    if s > at {
                        keep(at, s);
                    }
                    at = at.max(e);
                }
                if at < xend {
                    keep(at, xend);
                }
            }
        }
        Ok(logical)
    }

    /// Removes `start..end` from the extent map inside batch `b`, trimming extents that straddle
    /// the edges. Returns the change in logical bytes; refcount changes go to `refs`.
    fn punch_into(
        &self,
        ino: u64,
        start: u64,
        end: u64,
        b: &mut Batch,
        refs: &mut HashMap<ChunkId, i64>,
    ) -> Result<i64> {
        self.punch_ranges_into(ino, &[(start, end)], b, refs)
    }

    /// Applies a batch of extent-map changes that store no new chunks (truncate, punch, clone,
    /// delete), with its refcount and logical-size changes, under the commit lock.
    fn apply_extent_batch(
        &self,
        mut b: Batch,
        refs: HashMap<ChunkId, i64>,
        logical: i64,
    ) -> Result<()> {
        let mut cs = self.commit.lock();
        self.apply_refs_with_data(
            &mut cs,
            &mut b,
            refs,
            &HashMap::new(),
            logical,
            &HashMap::new(),
        )?;
        self.kv.apply(b)
    }

    /// Applies refcount changes to the chunk index inside batch `b` (under the commit lock).
    /// A chunk whose count drops to zero leaves the index and its bytes count as dead in its
    /// pack. A chunk found at dedup time but collected since is stored again from `plain`.
    fn apply_refs_with_data(
        &self,
        cs: &mut CommitState,
        b: &mut Batch,
        refs: HashMap<ChunkId, i64>,
        new: &HashMap<ChunkId, NewChunk>,
        logical: i64,
        plain: &HashMap<ChunkId, &[u8]>,
    ) -> Result<()> {
        let mut dead: HashMap<u64, u64> = HashMap::new();
        for (id, delta) in refs {
            if delta == 0 && !new.contains_key(&id) {
                continue;
            }
            let existing = match self.kv.get(&meta::chunk_key(&id))? {
                Some(v) => Some(ChunkRecord::decode(&v)?),
                None => None,
            };
            let rec = match (existing, new.get(&id)) {
                (Some(mut r), fresh) => {
                    if let Some(f) = fresh {
                        // Someone stored the same chunk first: our copy is garbage.
                        *dead.entry(f.pack).or_default() += f.loc.len as u64;
                    }
                    r.refs = (r.refs as i64 + delta) as u64;
                    r
                }
                (None, fresh) => {
                    if delta <= 0 {
                        return Err(Error::Corrupt(format!("chunk {id} lost its index record")));
                    }
                    let f = match fresh {
                        Some(f) => *f,
                        None => {
                            let data = plain.get(&id).ok_or_else(|| {
                                Error::Corrupt(format!(
                                    "chunk {id} vanished while being referenced"
                                ))
                            })?;
                            let blob = blob::encode(&self.keys, &id, data, self.opts.zstd_level);
                            let (pack, loc) = self.packs.append(self, &id, &blob)?;
                            self.packs.sync_current()?;
                            NewChunk {
                                pack,
                                loc,
                                plain_len: data.len() as u32,
                            }
                        }
                    };
                    cs.stats.chunks += 1;
                    cs.stats.unique_bytes += f.plain_len as u64;
                    cs.stats.stored_bytes += f.loc.len as u64;
                    ChunkRecord {
                        pack: f.pack,
                        offset: f.loc.offset,
                        stored_len: f.loc.len,
                        plain_len: f.plain_len,
                        refs: delta as u64,
                    }
                }
            };
            if rec.refs == 0 {
                b.delete(meta::chunk_key(&id));
                cs.stats.chunks -= 1;
                cs.stats.unique_bytes -= rec.plain_len as u64;
                cs.stats.stored_bytes -= rec.stored_len as u64;
                *dead.entry(rec.pack).or_default() += rec.stored_len as u64;
                self.chunk_cache.lock().pop(&id);
            } else {
                b.put(meta::chunk_key(&id), rec.encode());
            }
        }
        self.add_dead_bytes(b, dead)?;
        cs.stats.logical_bytes = (cs.stats.logical_bytes as i64 + logical) as u64;
        b.put(meta::misc_key("stats"), cs.stats.encode());
        self.stored_now
            .store(cs.stats.stored_bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Adds bytes no chunk names any more to their packs' dead-byte counts (in `b`).
    fn add_dead_bytes(&self, b: &mut Batch, dead: HashMap<u64, u64>) -> Result<()> {
        for (pack, bytes) in dead {
            if let Some(v) = self.kv.get(&meta::pack_key(pack))? {
                let mut r = PackRecord::decode(&v)?;
                r.dead_bytes += bytes;
                b.put(meta::pack_key(pack), r.encode());
            }
        }
        Ok(())
    }

    /// Shrinks or grows a file (its dirty data first), with the inode's data lock held.
    fn truncate_locked(&self, e: &Entry, d: &mut DataGuard<'_>, size: u64) -> Result<()> {
        Self::wait_commit(e, d);
        if size < d.attr.size {
            // Drop dirty bytes past the new end.
            let mut removed = 0u64;
            let keys: Vec<u64> = d
                .dirty
                .range(..)
                .filter(|(o, v)| **o + v.len() as u64 > size)
                .map(|(o, _)| *o)
                .collect();
            for o in keys {
                let mut v = d.dirty.remove(&o).unwrap();
                if o < size {
                    removed += v.len() as u64 - (size - o);
                    v.truncate((size - o) as usize);
                    d.dirty.insert(o, v);
                } else {
                    removed += v.len() as u64;
                }
            }
            d.dirty_bytes -= removed;
            d.unsynced = true;
            self.dirty_total.fetch_sub(removed, Ordering::Relaxed);
            let mut b = Batch::default();
            let mut refs = HashMap::new();
            let logical = self.punch_into(e.ino, size, u64::MAX, &mut b, &mut refs)?;
            self.note_extents(&mut b, e.ino, logical)?;
            self.release_reserved(e.ino, size, u64::MAX)?;
            d.attr.size = size;
            b.put(meta::inode_key(e.ino), d.attr.encode());
            self.apply_extent_batch(b, refs, logical)?;
        } else {
            d.attr.size = size;
        }
        Ok(())
    }

    pub fn fallocate(&self, ino: u64, offset: u64, len: u64, mode: Allocate) -> Result<()> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::TooBig)?;
        if len == 0 {
            return Err(Error::Invalid("fallocate of zero bytes".into()));
        }
        self.check_writable(ino)?;
        let e = self.file_entry(ino)?;
        let mut d = e.data.write();
        d.unsynced = true;
        let (punch, keep_size) = match mode {
            Allocate::Allocate { keep_size } => (false, keep_size),
            Allocate::PunchHole => (true, true),
            Allocate::ZeroRange { keep_size } => (true, keep_size),
        };
        if punch {
            // Commit first so the punch is a pure extent-map change.
            self.commit_locked(&e, &mut d, false, false)?;
            let mut b = Batch::default();
            let mut refs = HashMap::new();
            let logical = self.punch_into(ino, offset, end, &mut b, &mut refs)?;
            self.note_extents(&mut b, ino, logical)?;
            self.release_reserved(ino, offset, end)?;
            let t = now();
            d.attr.mtime = t;
            d.attr.ctime = t;
            if !keep_size {
                d.attr.size = d.attr.size.max(end);
            }
            b.put(meta::inode_key(ino), d.attr.encode());
            self.apply_extent_batch(b, refs, logical)?;
        } else {
            // Counts against the quota until written (src/volume/space.rs).
            self.reserve(ino, &d, offset, end)?;
            if !keep_size && end > d.attr.size {
                d.attr.size = end;
                d.attr.ctime = now();
                let mut b = Batch::default();
                b.put(meta::inode_key(ino), d.attr.encode());
                self.apply(b)?;
            }
        }
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE over committed extents and dirty ranges.
    pub fn lseek(&self, ino: u64, offset: u64, whence: Whence) -> Result<u64> {
        let e = self.file_entry(ino)?;
        let d = e.data.read();
        let size = d.attr.size;
        if offset >= size {
            return Err(Error::NoSuchOffset);
        }
        // Walk data intervals from `offset` in pages (the map can be large).
        let mut pos = offset;
        loop {
            let window_end = size.min(pos.saturating_add(1 << 30));
            let mut iv: Vec<(u64, u64)> = self
                .extents(ino, pos, window_end)?
                .into_iter()
                .map(|(o, x)| (o, o + x.len as u64))
                .collect();
            iv.extend(
                d.committing
                    .iter()
                    .flat_map(|c| c.iter())
                    .chain(d.dirty.iter())
                    .map(|(o, v)| (*o, *o + v.len() as u64)),
            );
            let merged = merge_intervals(iv, pos, window_end);
            match whence {
                Whence::Data => {
                    if let Some((s, _)) = merged.first() {
                        return Ok(*s);
                    }
                }
                Whence::Hole => match merged.first() {
                    Some((s, _)) if *s > pos => return Ok(pos),
                    Some((_, e)) if *e < window_end => return Ok(*e),
                    None => return Ok(pos),
                    _ => {}
                },
            }
            if window_end >= size {
                return match whence {
                    Whence::Data => Err(Error::NoSuchOffset),
                    Whence::Hole => Ok(size),
                };
            }
            pos = window_end;
        }
    }

    /// Clones `len` bytes of `src` at `src_off` into `dst` at `dst_off` by sharing extents:
    /// no data is read or written. Returns the bytes cloned (short at the source's EOF).
    pub fn copy_range(
        &self,
        src: u64,
        src_off: u64,
        dst: u64,
        dst_off: u64,
        len: u64,
    ) -> Result<u64> {
        self.check_writable(dst)?;
        let se = self.file_entry(src)?;
        let de = self.file_entry(dst)?;
        if src == dst && src_off.max(dst_off) < src_off.min(dst_off) + len {
            return Err(Error::Invalid("overlapping copy within one file".into()));
        }
        // Lock in inode order to avoid deadlock between two opposite copies.
        let (mut sd, mut dd) = if src == dst {
            (e_write(&se), None)
        } else if src < dst {
            let s = e_write(&se);
            (s, Some(e_write(&de)))
        } else {
            let dd = e_write(&de);
            (e_write(&se), Some(dd))
        };
        // Both extent maps must be complete (and no commit in flight) before splicing.
        self.commit_locked(&se, &mut sd, false, false)?;
        if let Some(dg) = dd.as_mut() {
            self.commit_locked(&de, dg, false, false)?;
            // Committing dst may have let a write to src in: commit src again (cheap if not).
            self.commit_locked(&se, &mut sd, false, false)?;
        }
        let len = len.min(sd.attr.size.saturating_sub(src_off));
        if len == 0 {
            return Ok(0);
        }
        let dend = dst_off
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::TooBig)?;
        let src_extents = self.extents(src, src_off, src_off + len)?;
        let dd_ref: &mut FileData = match dd.as_mut() {
            Some(x) => x,
            None => &mut sd,
        };
        let mut b = Batch::default();
        let mut refs = HashMap::new();
        let mut logical = self.punch_into(dst, dst_off, dend, &mut b, &mut refs)?;
        for (off, x) in src_extents {
            let s = off.max(src_off);
            let e = (off + x.len as u64).min(src_off + len);
            let piece = x.slice((s - off) as u32, (e - s) as u32);
            b.put(
                meta::extent_key(dst, dst_off + (s - src_off)),
                piece.encode(),
            );
            *refs.entry(piece.chunk).or_default() += 1;
            logical += piece.len as i64;
        }
        let t = now();
        dd_ref.attr.size = dd_ref.attr.size.max(dend);
        dd_ref.unsynced = true;
        dd_ref.attr.mtime = t;
        dd_ref.attr.ctime = t;
        self.note_extents(&mut b, dst, logical)?;
        self.release_reserved(dst, dst_off, dend)?;
        b.put(meta::inode_key(dst), dd_ref.attr.encode());
        self.apply_extent_batch(b, refs, logical)?;
        Ok(len)
    }

    // ------------------------------------------------------------------ volume-wide

    fn apply(&self, b: Batch) -> Result<()> {
        self.kv.apply(b)
    }

    /// The inode a path from the volume's root names ("a/b/c"; empty segments ignored).
    pub fn resolve(&self, path: &[u8]) -> Result<Attr> {
        let mut a = self.getattr(ROOT_INO)?;
        for seg in path.split(|&c| c == b'/').filter(|s| !s.is_empty()) {
            a = self.lookup(a.ino, seg)?;
        }
        Ok(a)
    }

    /// The directory that holds the last name of `path`, and that name.
    pub fn resolve_parent(&self, path: &[u8]) -> Result<(u64, Vec<u8>)> {
        self.walk_to_parent(path, None)
    }

    /// The directory that holds the last name of `path` (from the root), and that name. With
    /// `create`, directories missing on the way are made as `mkdir -p` would (mode 0755, as
    /// that caller); without, a missing one is `NotFound`.
    pub(crate) fn walk_to_parent(
        &self,
        path: &[u8],
        create: Option<Caller>,
    ) -> Result<(u64, Vec<u8>)> {
        let segs: Vec<&[u8]> = path
            .split(|&c| c == b'/')
            .filter(|s| !s.is_empty())
            .collect();
        let (name, dirs) = segs
            .split_last()
            .ok_or_else(|| Error::Invalid("the root itself has no parent directory".into()))?;
        let mut ino = ROOT_INO;
        for d in dirs {
            let a = match (self.lookup(ino, d), create) {
                (Err(Error::NotFound), Some(who)) => match self.mkdir(ino, d, 0o755, who) {
                    Err(Error::Exists) => self.lookup(ino, d)?,
                    r => {
                        // The mount may remember the name as missing.
                        self.changed(&[
                            Changed::Entry {
                                parent: ino,
                                name: d.to_vec(),
                            },
                            Changed::Inode(ino),
                        ]);
                        r?
                    }
                },
                (r, _) => r?,
            };
            if a.inode.kind != FileKind::Dir {
                return Err(Error::NotDir);
            }
            ino = a.ino;
        }
        Ok((ino, name.to_vec()))
    }

    /// Durability barrier for namespace changes (fsyncdir).
    pub fn sync_metadata(&self) -> Result<()> {
        self.kv.flush()
    }

    pub fn stats(&self) -> Result<VolumeStats> {
        let stats = self.commit.lock().stats;
        let mut packs = 0;
        let mut pack_bytes = 0;
        for (_, v) in self.kv.range(
            &meta::pack_prefix(),
            prefix_end(&meta::pack_prefix()).as_deref(),
        )? {
            packs += 1;
            pack_bytes += PackRecord::decode(&v)?.size;
        }
        if let Some((w, _)) = self.packs.writer.lock().as_ref() {
            pack_bytes += w.len();
        }
        Ok(VolumeStats {
            stats,
            dirty_bytes: self.dirty_total.load(Ordering::Relaxed),
            packs,
            pack_bytes,
            metadata_bytes: self.kv.size_on_disk()?,
        })
    }

    /// statfs. With a quota: total = the quota, used = what counts against it (the recycle
    /// bin included), free = the rest, and available (what backup software plans with) = free
    /// plus what the recycle bin would give up for a write (as of its last count). Without
    /// one: the local disk holding the volume.
    pub fn statfs(&self) -> Result<StatFs> {
        let bsize = 4096u64;
        let (total, free, avail) = match self.quota() {
            Some(q) => {
                let free = q.saturating_sub(self.quota_used());
                let avail = free
                    .saturating_add(self.recycle_stats().stored_bytes)
                    .min(q);
                (q, free, avail)
            }
            None => {
                let s = nix::sys::statvfs::statvfs(&self.dir)
                    .map_err(|e| Error::io("statvfs", e.into()))?;
                let frsize = s.fragment_size() as u64;
                (
                    s.blocks() as u64 * frsize,
                    s.blocks_free() as u64 * frsize,
                    s.blocks_available() as u64 * frsize,
                )
            }
        };
        Ok(StatFs {
            blocks: total / bsize,
            bfree: free / bsize,
            bavail: avail / bsize,
            files: u32::MAX as u64,
            ffree: u32::MAX as u64 - self.next_ino.load(Ordering::Relaxed),
            bsize: bsize as u32,
            namelen: MAX_NAME_LEN as u32,
        })
    }

    /// Sets (or with `None` removes) the tenant quota on stored bytes. Takes effect at once;
    /// data already stored is never touched, only new writes are refused.
    pub fn set_quota(&self, bytes: Option<u64>) {
        self.quota.store(bytes.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn set_quota_warn_percent(&self, percent: u8) {
        self.quota_warn_percent.store(percent, Ordering::Relaxed);
    }

    pub fn quota_warn_percent(&self) -> u8 {
        self.quota_warn_percent.load(Ordering::Relaxed)
    }

    pub fn quota(&self) -> Option<u64> {
        Some(self.quota.load(Ordering::Relaxed)).filter(|&q| q > 0)
    }

    /// What counts against the quota: stored bytes (after dedup and compression, as billed,
    /// the recycle bin's included: the provider stores them too) plus written data not yet
    /// committed, counted at full size until it is.
    pub fn quota_used(&self) -> u64 {
        self.stored_now.load(Ordering::Relaxed)
            + self.dirty_total.load(Ordering::Relaxed)
            + self.reserved_bytes()
    }

    /// Refuses a write of `len` bytes that would take the volume past its quota (ENOSPC / 507).
    fn check_quota(&self, len: u64) -> Result<()> {
        let Some(q) = self.quota() else {
            return Ok(());
        };
        let used = self.quota_used();
        if used.saturating_add(len) <= q {
            return Ok(());
        }
        let msg = format!(
            "tenant quota reached: {used} of {q} bytes used, a write of {len} bytes refused \
             (delete data or raise the quota)"
        );
        let mut logged = self.quota_logged.lock();
        if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *logged = Some(Instant::now());
            tracing::warn!("{msg}");
            crate::events::record("warning", msg.clone());
        }
        Err(Error::NoSpace(msg))
    }

    /// Background duties: seal an idle pack, commit data left dirty for a while, drop idle
    /// entries. Called periodically by the daemon.
    pub fn tick(&self) -> Result<()> {
        self.commit_all(false)?;
        self.packs.seal_if_idle(self, PACK_IDLE_SEAL)?;
        Self::sweep_locked(&mut self.entries.lock());
        self.recycle_recount_if_due()
    }

    /// Orderly shutdown: commit everything durably and seal the open pack.
    pub fn shutdown(&self) -> Result<()> {
        self.commit_all(true)?;
        self.packs.seal_if_idle(self, Duration::ZERO)?;
        self.kv.flush()
    }
}

/// What a new inode is made of (everything but its name and owner).
struct NewNode<'a> {
    kind: FileKind,
    mode: u32,
    rdev: u32,
    symlink: &'a [u8],
}

impl<'a> NewNode<'a> {
    fn new(kind: FileKind, mode: u32) -> Self {
        NewNode {
            kind,
            mode,
            rdev: 0,
            symlink: &[],
        }
    }
    fn rdev(self, rdev: u32) -> Self {
        NewNode { rdev, ..self }
    }
    fn target(self, symlink: &'a [u8]) -> Self {
        NewNode { symlink, ..self }
    }
}

/// Byte ranges of a file not yet in packs: start offset → bytes, never overlapping.
type DirtyMap = BTreeMap<u64, Vec<u8>>;

type DataGuard<'a> = parking_lot::RwLockWriteGuard<'a, FileData>;

fn e_write(e: &Entry) -> DataGuard<'_> {
    e.data.write()
}

struct PlannedChunk {
    offset: u64,
    start_in_buf: usize,
    len: usize,
    /// None for an all-zero chunk, which is stored as a hole.
    id: Option<ChunkId>,
}

/// One planned piece of a segment: `start..end` of the file is rebuilt from `chunks`, which
/// point into `buf` (the file's bytes from `start` on, rebuilt).
struct RegionPlan<'d> {
    start: u64,
    end: u64,
    buf: Cow<'d, [u8]>,
    chunks: Vec<PlannedChunk>,
}

/// A range of a file a commit rebuilds: a widened dirty region without its holes. `closed`:
/// committed data starts right at `end` (so its last chunk cannot grow). `patch`: stored as
/// one chunk, not cut (see [`Volume::widen_regions`]).
struct Segment {
    start: u64,
    end: u64,
    closed: bool,
    patch: bool,
}

/// A dirty range as a commit plans it: widened to the extents around it, or a patch left as
/// it is (`wide_start`: where it would start widened, should it merge with a neighbour).
struct Region {
    start: u64,
    end: u64,
    patch: bool,
    wide_start: u64,
}

/// Where the next piece of a commit starts: a segment and an offset inside it.
struct PieceCursor {
    segment: usize,
    pos: u64,
}

/// What a commit did, for its log line.
#[derive(Default)]
struct CommitTally {
    pieces: usize,
    chunks: usize,
    new_chunks: usize,
    /// The largest piece's rebuilt bytes.
    region_bytes: u64,
    /// Plan, hash, store, metadata.
    times: [Duration; 4],
}

/// What a commit piece's store stage returns: its new chunks, the hash and store times.
type StoredPiece = (HashMap<ChunkId, NewChunk>, [Duration; 2]);

#[derive(Clone, Copy)]
struct NewChunk {
    pack: u64,
    loc: BlobLocation,
    plain_len: u32,
}

/// Where the bytes `s..e` of the file lie in the chunk `data` of the extent at `off`.
/// `Error::Corrupt` if the extent runs past its chunk.
fn extent_range(
    ino: u64,
    data: &[u8],
    off: u64,
    x: &Extent,
    s: u64,
    e: u64,
) -> Result<std::ops::Range<usize>> {
    let from = x.chunk_offset as usize + (s - off) as usize;
    let range = from..from + (e - s) as usize;
    if range.end > data.len() {
        return Err(Error::Corrupt(format!(
            "extent of inode {ino} runs past chunk {}",
            x.chunk
        )));
    }
    Ok(range)
}

/// What [`Volume::read`] returns: a range of a cached chunk when one chunk holds all of it (no
/// copy), else a buffer put together from several chunks, holes and unwritten data.
#[derive(Debug)]
pub enum ReadData {
    Chunk(Arc<Vec<u8>>, std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl std::ops::Deref for ReadData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadData::Chunk(chunk, range) => &chunk[range.clone()],
            ReadData::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for ReadData {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// Copies the parts of `map`'s ranges that fall in `start..start+buf.len()` into `buf`.
fn overlay(map: &DirtyMap, start: u64, buf: &mut [u8]) {
    let end = start + buf.len() as u64;
    let first = map
        .range(..start)
        .next_back()
        .map(|(k, _)| *k)
        .unwrap_or(start);
    for (&off, bytes) in map.range(first..end) {
        let s = off.max(start);
        let e = (off + bytes.len() as u64).min(end);
        if s < e {
            buf[(s - start) as usize..(e - start) as usize]
                .copy_from_slice(&bytes[(s - off) as usize..(e - off) as usize]);
        }
    }
}

/// Sorted, merged union of intervals, clipped to `lo..hi`.
fn merge_intervals(mut iv: Vec<(u64, u64)>, lo: u64, hi: u64) -> Vec<(u64, u64)> {
    iv.retain(|(s, e)| *e > lo && *s < hi);
    iv.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in iv {
        let (s, e) = (s.max(lo), e.min(hi));
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Inserts `data` at `offset` into a map of non-overlapping ranges (new bytes win), merging
/// with ranges it overlaps or touches (a range that starts right after a streaming append may
/// stay apart: ranges may touch). Returns how many bytes the map grew by.
fn insert_dirty(map: &mut DirtyMap, offset: u64, data: &[u8]) -> u64 {
    let end = offset + data.len() as u64;
    // Fast path: a streaming write that extends the range ending exactly here.
    if let Some((&s, v)) = map.range_mut(..=offset).next_back() {
        if s + v.len() as u64 == offset && map.range(offset..end).next().is_none() {
            map.get_mut(&s).unwrap().extend_from_slice(data);
            return data.len() as u64;
        }
    }
    let mut start = offset;
    let mut stop = end;
    let mut victims = Vec::new();
    if let Some((&s, v)) = map.range(..offset).next_back() {
        if s + v.len() as u64 >= offset {
            victims.push(s);
        }
    }
    victims.extend(map.range(offset..=end).map(|(s, _)| *s));
    let mut old_bytes = 0u64;
    for s in &victims {
        let v = &map[s];
        start = start.min(*s);
        stop = stop.max(s + v.len() as u64);
        old_bytes += v.len() as u64;
    }
    // The range starting first, if it starts where the merged one does, is grown in place:
    // writes that arrive slightly out of order (several FUSE threads) then cost their own
    // bytes, not a copy of everything written before them.
    let mut merged = match victims.first() {
        Some(&s) if s == start => map.remove(&s).unwrap(),
        _ => Vec::new(),
    };
    merged.resize((stop - start) as usize, 0);
    for s in victims {
        if let Some(v) = map.remove(&s) {
            merged[(s - start) as usize..(s - start) as usize + v.len()].copy_from_slice(&v);
        }
    }
    merged[(offset - start) as usize..(end - start) as usize].copy_from_slice(data);
    let grew = merged.len() as u64 - old_bytes;
    map.insert(start, merged);
    grew
}

impl PackStore {
    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(pack::pack_file_name(id))
    }

    fn reader(&self, id: u64) -> Result<Arc<File>> {
        let mut r = self.readers.lock();
        if let Some(f) = r.get(&id) {
            return Ok(f.clone());
        }
        let path = self.path(id);
        let f = Arc::new(
            File::open(&path)
                .map_err(|e| Error::io(format!("opening pack {}", path.display()), e))?,
        );
        if r.len() > 256 {
            r.clear();
        }
        r.insert(id, f.clone());
        Ok(f)
    }

    /// Appends one blob to the open pack (creating one if needed, sealing it when full).
    fn append(&self, vol: &Volume, id: &ChunkId, blob: &[u8]) -> Result<(u64, BlobLocation)> {
        let mut w = self.writer.lock();
        if w.is_none() {
            let pid = self.next_pack.fetch_add(1, Ordering::SeqCst);
            let mut b = Batch::default();
            b.put(
                meta::misc_key("next_pack"),
                (pid + 1).to_le_bytes().to_vec(),
            );
            b.put(
                meta::pack_key(pid),
                PackRecord {
                    state: PackState::Open,
                    size: 0,
                    dead_bytes: 0,
                }
                .encode(),
            );
            vol.kv.apply(b)?;
            *w = Some((PackWriter::create(&self.path(pid), pid)?, Instant::now()));
        }
        let (writer, last) = w.as_mut().unwrap();
        let loc = writer.append(id, blob)?;
        self.open_len.store(writer.len(), Ordering::Relaxed);
        *last = Instant::now();
        let pid = writer.pack_id();
        if writer.len() >= self.target {
            // Sealing fsyncs, so these blobs are durable before any metadata names them.
            let (writer, _) = w.take().unwrap();
            self.seal(vol, writer)?;
        }
        Ok((pid, loc))
    }

    fn seal(&self, vol: &Volume, writer: PackWriter) -> Result<()> {
        let pid = writer.pack_id();
        self.open_len.store(0, Ordering::Relaxed);
        let size = writer.seal()?;
        let dead = match vol.kv.get(&meta::pack_key(pid))? {
            Some(v) => PackRecord::decode(&v)?.dead_bytes,
            None => 0,
        };
        let mut b = Batch::default();
        b.put(
            meta::pack_key(pid),
            PackRecord {
                state: PackState::Sealed,
                size,
                dead_bytes: dead,
            }
            .encode(),
        );
        vol.kv.apply(b)?;
        self.readers.lock().remove(&pid);
        tracing::debug!(pack = pid, size, "pack sealed");
        if let Some(t) = vol.tier.read().as_ref() {
            t.pack_sealed(pid, size);
        }
        Ok(())
    }

    fn sync_current(&self) -> Result<()> {
        if let Some((w, _)) = self.writer.lock().as_mut() {
            w.sync()?;
        }
        Ok(())
    }

    fn seal_if_idle(&self, vol: &Volume, idle: Duration) -> Result<()> {
        let mut w = self.writer.lock();
        if matches!(w.as_ref(), Some((_, last)) if last.elapsed() >= idle) {
            let (writer, _) = w.take().unwrap();
            self.seal(vol, writer)?;
        }
        Ok(())
    }
}

// ---- used by tiering (src/tiering/) ----
impl Volume {
    /// Registers the tiering machinery (see [`Tier`]).
    pub fn set_tier(&self, t: Arc<dyn Tier>) {
        *self.tier.write() = Some(t);
    }

    /// Unregisters it (at shutdown: it holds the volume, so this breaks the cycle).
    pub fn clear_tier(&self) {
        *self.tier.write() = None;
    }

    /// Open file and directory handles (front-end activity, for the status page).
    pub fn open_handles(&self) -> usize {
        self.handles.lock().len()
    }

    /// The metadata journal (shipped off-site by tiering).
    pub fn journal(&self) -> &JournaledKv<SledStore> {
        &self.kv
    }

    /// The volume's keys (tiering encrypts metadata objects with the metadata key).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Packs with an id below this may be named by the metadata (the open one included).
    pub fn next_pack_id(&self) -> u64 {
        self.packs.next_pack.load(Ordering::SeqCst)
    }

    /// The pack table, in pack id order.
    pub fn pack_table(&self) -> Result<Vec<(u64, PackRecord)>> {
        self.kv
            .range(
                &meta::pack_prefix(),
                prefix_end(&meta::pack_prefix()).as_deref(),
            )?
            .into_iter()
            .map(|(k, v)| Ok((meta::key_tail_u64(&k), PackRecord::decode(&v)?)))
            .collect()
    }

    /// The local file of a pack (present unless the pack was evicted).
    pub fn pack_file(&self, id: u64) -> PathBuf {
        self.packs.path(id)
    }

    /// Bytes in the pack being appended to (not yet sealed, so not yet uploadable).
    pub fn open_pack_bytes(&self) -> u64 {
        self.packs.open_len.load(Ordering::Relaxed)
    }

    /// The most file data one piece of a commit has rebuilt in memory at once since the volume
    /// opened: what bounds a commit's memory, for tests and the debug log.
    pub fn largest_commit_piece(&self) -> u64 {
        self.largest_piece.load(Ordering::Relaxed)
    }

    /// File bytes commits have copied since the volume opened: into a window of their own to
    /// chunk them, and back under data written meanwhile. A streaming write is chunked where
    /// it lies, so this stays a small share of what was written. For tests and profiles.
    pub fn commit_copied_bytes(&self) -> u64 {
        self.copied_bytes.load(Ordering::Relaxed)
    }

    /// Data written but not yet committed to packs (in memory).
    pub fn uncommitted_bytes(&self) -> u64 {
        self.dirty_total.load(Ordering::Relaxed)
    }

    /// Seals the open pack now, so it can be uploaded (sync, backpressure).
    pub fn seal_open_pack(&self) -> Result<()> {
        self.packs.seal_if_idle(self, Duration::ZERO)
    }

    /// Changes a pack's state under the commit lock (commits update the same records).
    fn update_pack(&self, id: u64, f: impl FnOnce(&mut PackRecord) -> Result<()>) -> Result<()> {
        let _cs = self.commit.lock();
        let mut r = match self.kv.get(&meta::pack_key(id))? {
            Some(v) => PackRecord::decode(&v)?,
            None => return Err(Error::Invalid(format!("no pack {id} in the pack table"))),
        };
        f(&mut r)?;
        let mut b = Batch::default();
        b.put(meta::pack_key(id), r.encode());
        self.kv.apply(b)
    }

    /// Records that the store confirmed pack `id` (sealed → uploaded). Not flushed: if the
    /// record is lost in a crash the pack is simply uploaded again.
    pub fn mark_pack_uploaded(&self, id: u64) -> Result<()> {
        self.update_pack(id, |r| match r.state {
            PackState::Sealed => {
                r.state = PackState::Uploaded;
                Ok(())
            }
            // GC dropped it while it was going up: it stays dropped (GC deletes the object).
            PackState::Doomed { .. } => Ok(()),
            s => Err(Error::Invalid(format!(
                "pack {id} cannot become uploaded from state {s:?}"
            ))),
        })
    }

    /// Drops the local copy of an uploaded pack (uploaded → remote); reads then go to the
    /// store. The new state is flushed before the file goes, so no restart ever looks for it.
    /// Returns the bytes freed.
    pub fn evict_pack(&self, id: u64) -> Result<u64> {
        let mut size = 0;
        self.update_pack(id, |r| match r.state {
            PackState::Uploaded => {
                r.state = PackState::Remote;
                size = r.size;
                Ok(())
            }
            s => Err(Error::Invalid(format!(
                "pack {id} is {s:?}: only uploaded packs may be evicted"
            ))),
        })?;
        self.kv.flush()?;
        self.packs.readers.lock().remove(&id);
        let path = self.packs.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }
}

// ---- used by the WebDAV front-end ----
impl Volume {
    /// A directory inode with no name anywhere in the namespace, created on first use and kept
    /// under a metadata record named after `purpose`. FUSE cannot reach it (no lookup leads
    /// there); the WebDAV front-end stages uploads in it, so an unfinished PUT is never visible
    /// under any name, and renames finished ones into place atomically. Files unlinked there
    /// are never recycled.
    pub fn hidden_dir(&self, purpose: &str) -> Result<u64> {
        let _ns = self.ns.lock();
        let key = meta::misc_key(&format!("hidden_dir.{purpose}"));
        if let Some(v) = self.kv.get(&key)? {
            let ino = u64::from_le_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt(format!("hidden directory record {purpose}")))?,
            );
            if self.load_inode(ino).is_ok() {
                self.recycle_skip_dir(ino);
                return Ok(ino);
            }
        }
        let root = self.getattr(ROOT_INO)?;
        let inode = Inode::new(
            FileKind::Dir,
            0o700,
            root.inode.uid,
            root.inode.gid,
            ROOT_INO,
        );
        let mut b = Batch::default();
        let ino = self.alloc_ino(&mut b);
        b.put(meta::inode_key(ino), inode.encode());
        b.put(key, ino.to_le_bytes().to_vec());
        self.apply(b)?;
        self.kv.flush()?;
        self.recycle_skip_dir(ino);
        Ok(ino)
    }

    /// Content identity of a regular file: a hash of its size and extent map (chunk ids are
    /// keyed hashes of the content, so equal maps mean equal bytes, and any change of the bytes
    /// changes the map). Dirty data is committed first (not durably) so the map is complete.
    pub fn content_tag(&self, ino: u64) -> Result<[u8; 32]> {
        let e = self.file_entry(ino)?;
        let mut d = e.data.write();
        if d.gone {
            return Err(Error::NotFound);
        }
        // Also waits for a commit in flight, so the map read below is complete.
        self.commit_locked(&e, &mut d, false, false)?;
        let mut h = blake3::Hasher::new();
        h.update(b"tiergate content tag v1");
        h.update(&d.attr.size.to_le_bytes());
        for (off, x) in self.extents(ino, 0, d.attr.size)? {
            h.update(&off.to_le_bytes());
            h.update(&x.encode());
        }
        Ok(*h.finalize().as_bytes())
    }

    /// Small state a front-end keeps in the metadata store (WebDAV locks), by name.
    pub fn frontend_state(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.kv.get(&meta::misc_key(&format!("frontend.{name}")))
    }

    /// Every front-end state whose name starts with `prefix`, by name (one record per WebDAV
    /// lock, say: a change rewrites one small record, not a table).
    pub fn frontend_states(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let p = meta::misc_key(&format!("frontend.{prefix}"));
        let skip = meta::misc_key("frontend.").len();
        Ok(self
            .kv
            .range(&p, prefix_end(&p).as_deref())?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k[skip..]).into_owned(), v))
            .collect())
    }

    /// Replaces (or with `None` removes) a front-end's state; durable when this returns.
    pub fn set_frontend_state(&self, name: &str, value: Option<&[u8]>) -> Result<()> {
        let key = meta::misc_key(&format!("frontend.{name}"));
        let mut b = Batch::default();
        match value {
            Some(v) => b.put(key, v.to_vec()),
            None => b.delete(key),
        }
        self.apply(b)?;
        self.kv.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `volume.toml` of master 00 01 .. 1f (see crypto's golden vectors), pinned: a change
    /// breaks the MAC of every existing volume's config.
    const GOLDEN_VOLUME_MAC: &str =
        "70a54a2ceff8c9e0efb532ac79a74bfe5cdd5f46cfc10b22f1e811d891653e89";

    fn golden_info() -> VolumeInfo {
        VolumeInfo {
            format_version: 1,
            volume_id: "00112233445566778899aabbccddeeff".into(),
            created_unix: 1_795_000_000,
            chunking: ChunkerParams {
                min_size: 131_072,
                avg_size: 524_288,
                max_size: 2_097_152,
            },
            mac: None,
        }
    }

    #[test]
    fn golden_volume_mac() {
        let keys = crypto::MasterKey::from_bytes(std::array::from_fn(|i| i as u8)).subkeys();
        let mut info = golden_info();
        assert_eq!(info.check_mac(&keys, "t").unwrap(), MacState::Missing);
        info.seal(&keys);
        assert_eq!(info.mac.as_deref(), Some(GOLDEN_VOLUME_MAC));
        assert_eq!(info.check_mac(&keys, "t").unwrap(), MacState::Valid);
        // Survives a TOML round trip; any edited field, or another volume's key, fails.
        let back: VolumeInfo = toml::from_str(&info.to_toml().unwrap()).unwrap();
        assert_eq!(back.check_mac(&keys, "t").unwrap(), MacState::Valid);
        let mut edited = info.clone();
        edited.chunking.avg_size *= 2;
        assert!(edited.check_mac(&keys, "t").is_err());
        let other = crypto::MasterKey::from_bytes([9; 32]).subkeys();
        assert!(info.check_mac(&other, "t").is_err());
    }

    #[test]
    fn insert_dirty_merges_and_overwrites() {
        let mut m = BTreeMap::new();
        assert_eq!(insert_dirty(&mut m, 10, b"abc"), 3);
        assert_eq!(insert_dirty(&mut m, 13, b"def"), 3); // streaming append
        assert_eq!(m.len(), 1);
        assert_eq!(insert_dirty(&mut m, 0, b"xy"), 2);
        assert_eq!(m.len(), 2);
        // Covers 1..13, swallowing "xy" (0..2) and "abcdef" (10..16): 16 bytes from 8.
        assert_eq!(insert_dirty(&mut m, 1, b"123456789012"), 8);
        assert_eq!(m.len(), 1);
        let (s, v) = m.iter().next().unwrap();
        assert_eq!(*s, 0);
        assert_eq!(v.as_slice(), b"x123456789012def");
    }

    /// Writes in random order and overlap (several FUSE threads deliver a stream out of order)
    /// leave the map equal to a byte-array model: ranges disjoint and not touching, every
    /// written byte the newest, and the growth reported equal to the bytes first written.
    #[test]
    fn insert_dirty_matches_a_model_under_random_order() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let mut m: DirtyMap = BTreeMap::new();
            let mut model: Vec<Option<u8>> = vec![None; 4096];
            let mut grown = 0u64;
            for step in 0..200u32 {
                let off = rng.gen_range(0..4000usize);
                let len = rng.gen_range(1..=(4096 - off).min(300));
                let data: Vec<u8> = (0..len).map(|i| (step as usize * 31 + i) as u8).collect();
                grown += insert_dirty(&mut m, off as u64, &data);
                for (i, b) in data.iter().enumerate() {
                    model[off + i] = Some(*b);
                }
            }
            let written = model.iter().filter(|b| b.is_some()).count() as u64;
            assert_eq!(grown, written);
            let mut last_end = None;
            for (&s, v) in &m {
                if let Some(e) = last_end {
                    assert!(s > e, "ranges touch or overlap at {s}");
                }
                for (i, b) in v.iter().enumerate() {
                    assert_eq!(model[s as usize + i], Some(*b), "byte {}", s as usize + i);
                }
                last_end = Some(s + v.len() as u64);
            }
            assert_eq!(m.values().map(|v| v.len() as u64).sum::<u64>(), written);
        }
    }

    #[test]
    fn intervals_merge_and_clip() {
        let m = merge_intervals(vec![(5, 10), (0, 3), (9, 20), (30, 40)], 2, 35);
        assert_eq!(m, vec![(2, 3), (5, 20), (30, 35)]);
    }
}

//! Offline maintenance of a volume the daemon is not serving: a new passphrase, the chunk index
//! rebuilt from pack footers, and a check (with repair where a good copy exists) of everything
//! the files reference.
//!
//! Every entry point takes an open [`Volume`]. `Volume::open` holds the volume directory's lock,
//! so none of this runs beside the daemon, and nothing else writes the metadata meanwhile.
//! Changes go through the journaled metadata store, so the daemon ships them off-site like any
//! other change when it next runs.
//!
//! - **Passphrase** ([`change_passphrase`]): the master key is unwrapped with the current
//!   passphrase and wrapped again with the new one; the key file is replaced (temp file, fsync,
//!   rename) and then uploaded as the store's key object, so a recovery needs the new
//!   passphrase. No data is re-encrypted. If the upload fails the local change stands: the
//!   daemon's metadata shipper uploads the key object at its next start (it compares the two).
//!   An appliance that does not hold the store's lease refuses, before writing anything: the
//!   key object belongs to the appliance that does.
//! - **Index rebuild** ([`rebuild_index`]): reference counts come from the extents, locations
//!   from the pack footers (local files; off-site only packs by two ranged GETs, trailer then
//!   footer). A chunk found in several packs keeps its current location if that is one of them,
//!   else the newest copy wins (a chunk is stored again only after its record was deleted, so
//!   older copies are garbage). Footer entries nothing references are garbage, counted as their
//!   pack's dead bytes; referenced chunks in no footer are damage. The plaintext length is read
//!   from the blob header (plaintext, 12 bytes) for local packs; for off-site only packs it is
//!   kept from a record at the same place, else taken from the furthest extent end (exact
//!   unless every file using the chunk was truncated inside it; only the unique-bytes figure
//!   depends on it, and it is subtracted again exactly as added). `stats` and the dead bytes of
//!   every pack read are recomputed in the same pass, and only records that differ are written.
//!   A store that does not answer stops the rebuild before anything is written; a pack whose
//!   footer is damaged keeps the index records that point into it.
//! - **Verify** ([`verify`]): every chunk an extent references must have an index record inside
//!   a pack of the pack table, listed at that place by the pack's footer, in a local file or
//!   off-site. `remote` asks the store for every off-site pack (existence, size, and the footer
//!   of off-site only ones); `deep` reads and decodes every referenced chunk (authentication and
//!   the keyed hash), from the local copy where there is one, else from the store, and with
//!   `remote` also the off-site copy of packs that have both. Damage is reported per file, with
//!   byte ranges. A damaged local copy of an uploaded pack (a chunk that fails, a footer that
//!   does not verify, a file of the wrong size) is repaired when the off-site copy of every
//!   chunk the files use from that pack verifies: the pack is evicted ([`Volume::evict_pack`])
//!   and reads fetch from the store. Pack files are never rewritten.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use rayon::prelude::*;

use crate::backend::layout::{KEY_OBJECT, LEASE_OBJECT};
use crate::backend::{layout, list_all, Backend};
use crate::blob;
use crate::crypto::{self, ChunkId, KdfParams};
use crate::error::{Error, Result};
use crate::kv::{prefix_end, Batch, KvStore};
use crate::meta::{self, ChunkRecord, Extent, FileKind, PackRecord, PackState, Stats, ROOT_INO};
use crate::pack::{self, BlobLocation, PackEntry};
use crate::tiering::metasync::{judge_lease, LeaseState, APPLIANCE_ID_FILE};
use crate::volume::{self, is_snapshot_ino, Volume, SNAPSHOT_DIR_INO, SNAPSHOT_DIR_NAME};

/// Records per page of a metadata scan.
const SCAN_PAGE: usize = 4096;
/// Operations per metadata batch (sled grows badly with huge batches).
const WRITE_BATCH: usize = 1000;
/// Ranged GETs in flight.
const PARALLEL_GETS: usize = 8;
/// Blobs of one pack closer than this are fetched in one GET (record headers are 48 bytes).
const SPAN_GAP: u64 = 256 << 10;
/// Largest single GET of a deep check. With [`PARALLEL_GETS`] × 2 in a round this bounds the
/// fetched bytes held at once to 128 MiB (16 MiB spans measured 240 MiB peak RSS).
const SPAN_MAX: u64 = 8 << 20;
/// Blob bytes decoded per round of a local deep check (bounds memory, paces the progress bar).
const LOCAL_ROUND: u64 = 256 << 20;

/// Progress of a long step, for a progress bar: (step, done, total) in bytes.
pub type Progress<'a> = &'a dyn Fn(&str, u64, u64);

/// The object store, and a small runtime for its calls (these commands are synchronous).
pub struct Store {
    backend: Arc<dyn Backend>,
    rt: tokio::runtime::Runtime,
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting a runtime for the object store", e))?;
        Ok(Store { backend, rt })
    }

    /// Where objects go, for messages.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    fn pack_range(&self, id: u64, range: Range<u64>) -> Result<Bytes> {
        self.rt
            .block_on(fetch_exact(self.backend.clone(), id, range))
    }

    /// Several ranges of pack objects, [`PARALLEL_GETS`] at a time; results in request order.
    fn pack_ranges(&self, reqs: Vec<(u64, Range<u64>)>) -> Vec<Result<Bytes>> {
        let backend = self.backend.clone();
        self.rt.block_on(
            stream::iter(reqs)
                .map(|(id, r)| fetch_exact(backend.clone(), id, r))
                .buffered(PARALLEL_GETS)
                .collect(),
        )
    }
}

/// Exactly `range` of pack `id`'s object. A missing or short object is `Error::Corrupt` (the
/// store lacks data it should hold); `Error::Remote` means the store could not be asked.
async fn fetch_exact(backend: Arc<dyn Backend>, id: u64, range: Range<u64>) -> Result<Bytes> {
    let key = layout::pack_key(id);
    let want = range.end - range.start;
    let bytes = match backend.get_range(&key, range.clone()).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            return Err(Error::Corrupt(format!("the store has no object {key}")))
        }
        Err(e) => return Err(e.into()),
    };
    if bytes.len() as u64 != want {
        return Err(Error::Corrupt(format!(
            "{key}: asked for bytes {}..{}, the store returned {} (object truncated?)",
            range.start,
            range.end,
            bytes.len()
        )));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------- passphrase

/// What [`change_passphrase`] did.
#[derive(Debug)]
pub struct KeyChange {
    pub key_file: PathBuf,
    /// Where the key object went (or should have).
    pub store: String,
    /// `Err(why)`: the store's key object still opens only with the old passphrase, until the
    /// daemon uploads the new one at its next start.
    pub upload: std::result::Result<(), String>,
}

/// Wraps the volume's master key with `new` instead of `old`: replaces the key file, then the
/// store's key object. `Error::WrongPassphrase` (nothing written) if `old` does not open it.
pub fn change_passphrase(
    vol: &Volume,
    store: &Store,
    old: &str,
    new: &str,
    kdf: KdfParams,
) -> Result<KeyChange> {
    if new.is_empty() {
        return Err(Error::Invalid("the new passphrase is empty".into()));
    }
    if new == old {
        return Err(Error::Invalid(
            "the new passphrase is the same as the current one".into(),
        ));
    }
    let key_file = vol.dir().join(volume::KEY_FILE);
    let wrapped = std::fs::read(&key_file)
        .map_err(|e| Error::io(format!("reading {}", key_file.display()), e))?;
    let master = crypto::unwrap_master_key(&wrapped, old.as_bytes())?;

    let lease_check = match store.rt.block_on(store.backend.get(LEASE_OBJECT)) {
        Ok(bytes) => {
            let me = std::fs::read_to_string(vol.dir().join(APPLIANCE_ID_FILE))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            // Only a lease an appliance of this volume signed can hold the change back; a
            // forged one is what the daemon replaces at its next start.
            let held = match judge_lease(&bytes, vol.keys(), &vol.info().volume_id) {
                LeaseState::Authentic(held) => Some(held),
                LeaseState::Absent => None,
                LeaseState::NotAuthentic(why, _) => {
                    tracing::warn!(
                        "the lease object in the bucket is not authentic ({why}): ignored"
                    );
                    None
                }
            };
            if let Some(held) = held.filter(|h| h.appliance != me) {
                return Err(Error::Invalid(format!(
                    "{} is in use by appliance {} on {}: its key object belongs to that \
                     appliance's volume, so nothing was changed. Change the passphrase there; or, \
                     if that appliance is gone for good and this one replaces it, run \
                     `tiergate serve --take-over` once first",
                    store.describe(),
                    held.appliance,
                    held.host
                )));
            }
            Ok(())
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.to_string()),
    };

    let rewrapped = crypto::wrap_master_key(&master, new.as_bytes(), kdf);
    // The key file is the only way into the data: never replace it with one that does not open.
    let reopened = crypto::unwrap_master_key(&rewrapped, new.as_bytes())?;
    if reopened.subkeys().data_key() != master.subkeys().data_key() {
        return Err(Error::Corrupt(
            "the rewrapped key file does not give back the master key; nothing was changed".into(),
        ));
    }
    crate::durable::write_file_durably(&key_file, &rewrapped, 0o600)?;
    let upload = lease_check.and_then(|()| {
        store
            .rt
            .block_on(store.backend.put(KEY_OBJECT, Bytes::from(rewrapped)))
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    Ok(KeyChange {
        key_file,
        store: store.describe(),
        upload,
    })
}

// ---------------------------------------------------------------------------- shared scans

/// Calls `f` on every record whose key starts with `prefix`, in key order, a page at a time.
fn scan(
    kv: &dyn KvStore,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let end = prefix_end(prefix);
    let mut start = prefix.to_vec();
    loop {
        let page = kv.range_limit(&start, end.as_deref(), SCAN_PAGE)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        start = [last.0.as_slice(), &[0]].concat();
        for (k, v) in &page {
            f(k, v)?;
        }
    }
}

/// The tag byte that starts every extent key.
fn extent_tag() -> Vec<u8> {
    meta::extent_prefix(0)[..1].to_vec()
}

/// (inode, file offset) of an extent key.
fn extent_key_parts(k: &[u8]) -> Result<(u64, u64)> {
    if k.len() != 17 {
        return Err(Error::Corrupt(format!(
            "extent key of {} bytes, expected 17",
            k.len()
        )));
    }
    Ok((
        u64::from_be_bytes(k[1..9].try_into().unwrap()),
        meta::key_tail_u64(k),
    ))
}

/// How the extents use one chunk.
#[derive(Clone, Copy, Default)]
struct Use {
    refs: u64,
    /// The furthest byte of the chunk any extent reaches.
    max_end: u32,
}

/// Every chunk the extents reference.
struct Uses {
    chunks: HashMap<ChunkId, Use>,
    extents: u64,
    files: u64,
    logical_bytes: u64,
}

fn chunk_uses(kv: &dyn KvStore) -> Result<Uses> {
    let mut u = Uses {
        chunks: HashMap::new(),
        extents: 0,
        files: 0,
        logical_bytes: 0,
    };
    let mut last_ino = None;
    scan(kv, &extent_tag(), |k, v| {
        let (ino, _) = extent_key_parts(k)?;
        let x = Extent::decode(v)?;
        u.extents += 1;
        // A snapshot's copies hold references but are not files of the share (nor logical
        // bytes: src/volume/snapshot.rs).
        if !is_snapshot_ino(ino) {
            if last_ino != Some(ino) {
                last_ino = Some(ino);
                u.files += 1;
            }
            u.logical_bytes += x.len as u64;
        }
        let e = u.chunks.entry(x.chunk).or_default();
        e.refs += 1;
        e.max_end = e.max_end.max(x.chunk_offset.saturating_add(x.len));
        Ok(())
    })?;
    Ok(u)
}

/// The invariants of the extent maps and the chunk index (docs/FORMAT.md): a file's extents
/// never overlap; each extent lies inside its chunk; every referenced chunk is indexed, and a
/// chunk's reference count equals the number of extents naming it. Returns one line per
/// violation (none: consistent). Reads the whole metadata store.
pub fn check_extent_map(vol: &Volume) -> Result<Vec<String>> {
    let kv: &dyn KvStore = vol.journal();
    let (index, _) = read_index(kv)?;
    let uses = chunk_uses(kv)?;
    let mut problems = Vec::new();
    let mut last: Option<(u64, u64)> = None;
    scan(kv, &extent_tag(), |k, v| {
        let (ino, off) = extent_key_parts(k)?;
        let x = Extent::decode(v)?;
        if let Some((last_ino, last_end)) = last {
            if last_ino == ino && off < last_end {
                problems.push(format!(
                    "inode {ino}: the extent at {off} overlaps the one before (ends at {last_end})"
                ));
            }
        }
        last = Some((ino, off + x.len as u64));
        Ok(())
    })?;
    for (id, u) in &uses.chunks {
        match index.get(id) {
            None => problems.push(format!(
                "chunk {id} is named by {} extent(s) but not indexed",
                u.refs
            )),
            Some(c) if u.max_end > c.plain_len => problems.push(format!(
                "chunk {id}: an extent reaches byte {} of its {} bytes",
                u.max_end, c.plain_len
            )),
            Some(_) => {}
        }
    }
    for (id, c) in &index {
        let named = uses.chunks.get(id).map_or(0, |u| u.refs);
        if c.refs != named {
            problems.push(format!(
                "chunk {id}: reference count {}, named by {named} extent(s)",
                c.refs
            ));
        }
    }
    Ok(problems)
}

/// The chunk index as stored.
type Index = HashMap<ChunkId, ChunkRecord>;

/// The chunk index as stored, and the keys of records that do not decode.
fn read_index(kv: &dyn KvStore) -> Result<(Index, Vec<Vec<u8>>)> {
    let mut index = HashMap::new();
    let mut bad = Vec::new();
    scan(kv, &meta::chunk_prefix(), |k, v| {
        match (ChunkId::from_slice(&k[1..]), ChunkRecord::decode(v)) {
            (Ok(id), Ok(r)) => {
                index.insert(id, r);
            }
            _ => bad.push(k.to_vec()),
        }
        Ok(())
    })?;
    Ok((index, bad))
}

/// The footer of a local pack file.
fn local_footer(vol: &Volume, id: u64) -> Result<Vec<PackEntry>> {
    let path = vol.pack_file(id);
    let file =
        File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    pack::read_footer(&file).map_err(|e| match e {
        Error::Corrupt(why) => Error::Corrupt(format!("{}: {why}", path.display())),
        other => other,
    })
}

/// The footer of a pack in the store of `size` bytes: its trailer, then the footer it names.
fn remote_footer(store: &Store, id: u64, size: u64) -> Result<Vec<PackEntry>> {
    let key = layout::pack_key(id);
    if size < pack::HEADER_LEN + pack::TRAILER_LEN {
        return Err(Error::Corrupt(format!(
            "{key}: the pack table gives it {size} bytes, too small for a sealed pack"
        )));
    }
    let footer_end = size - pack::TRAILER_LEN;
    let tb = store.pack_range(id, footer_end..size)?;
    let trailer =
        pack::Trailer::parse(&tb).map_err(|e| Error::Corrupt(format!("{key}: trailer: {e}")))?;
    if trailer.pack_id != id
        || trailer.footer_offset.checked_add(trailer.footer_len()) != Some(footer_end)
    {
        return Err(Error::Corrupt(format!(
            "{key}: the trailer (pack {}, {} entries at {}) does not fit an object of {size} bytes",
            trailer.pack_id, trailer.entry_count, trailer.footer_offset
        )));
    }
    let footer = if trailer.footer_len() == 0 {
        Bytes::new()
    } else {
        store.pack_range(id, trailer.footer_offset..footer_end)?
    };
    pack::parse_footer(&trailer, &footer).map_err(|e| Error::Corrupt(format!("{key}: {e}")))
}

/// The plaintext length in a blob header (the first 12 bytes of a blob), if it is one.
fn header_plain_len(h: &[u8]) -> Option<u32> {
    (h.len() >= blob::BLOB_HEADER_LEN && h[..4] == blob::BLOB_MAGIC && h[4] == blob::BLOB_VERSION)
        .then(|| u32::from_le_bytes(h[8..12].try_into().unwrap()))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// "1 file", "2 files".
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn short(id: &ChunkId) -> String {
    hex::encode(&id.0[..8])
}

// ---------------------------------------------------------------------------- index rebuild

/// What [`rebuild_index`] found and did.
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    pub extents: u64,
    /// Records of the new index: referenced chunks found in a pack (plus any kept, below).
    pub chunks_indexed: u64,
    /// Referenced chunks that no readable pack holds: their files cannot be read there.
    pub missing: Vec<ChunkId>,
    pub packs_local: u64,
    /// Packs whose footer came from the store (off-site only, or a damaged local copy).
    pub packs_remote: u64,
    /// Packs whose footer could not be read, and why.
    pub packs_unreadable: Vec<(u64, String)>,
    /// Records kept unverified because they point into an unreadable pack.
    pub kept: u64,
    /// Footer entries no extent references (not indexed; dead bytes of their packs).
    pub garbage_chunks: u64,
    pub garbage_bytes: u64,
    /// Referenced chunks found in more than one pack (one copy is indexed).
    pub duplicates: u64,
    /// Off-site chunks whose plaintext length came from their extents.
    pub plain_len_from_extents: u64,
    pub written: u64,
    pub unchanged: u64,
    pub removed: u64,
    /// Pack records whose dead bytes changed.
    pub packs_updated: u64,
    pub stats_updated: bool,
    pub elapsed: Duration,
}

impl RebuildReport {
    /// True if every referenced chunk was found and every pack was read.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.packs_unreadable.is_empty()
    }
}

impl fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "read the footers of {} packs ({} local, {} from the store) and {} extents in \
             {:.2} s",
            self.packs_local + self.packs_remote,
            self.packs_local,
            self.packs_remote,
            self.extents,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "chunks indexed:   {} ({} records written, {} unchanged, {} removed)",
            self.chunks_indexed, self.written, self.unchanged, self.removed
        )?;
        writeln!(
            f,
            "garbage:          {} ({}) in packs, not indexed",
            count(self.garbage_chunks as usize, "unreferenced chunk"),
            mib(self.garbage_bytes)
        )?;
        if self.duplicates > 0 {
            writeln!(
                f,
                "duplicates:       {} chunks stored in more than one pack (one copy indexed)",
                self.duplicates
            )?;
        }
        if self.plain_len_from_extents > 0 {
            writeln!(
                f,
                "note:             the plaintext length of {} chunks came from their extents",
                self.plain_len_from_extents
            )?;
        }
        writeln!(
            f,
            "accounting:       {}{}",
            if self.stats_updated {
                "volume statistics recomputed"
            } else {
                "volume statistics unchanged"
            },
            match self.packs_updated {
                0 => String::new(),
                n => format!(", dead bytes of {n} packs recomputed"),
            }
        )?;
        for (id, why) in &self.packs_unreadable {
            writeln!(f, "UNREADABLE pack {id}: {why}")?;
        }
        if self.kept > 0 {
            writeln!(
                f,
                "kept:             {} records pointing into unreadable packs, unverified",
                self.kept
            )?;
        }
        if self.missing.is_empty() {
            write!(
                f,
                "damage:           none: every referenced chunk is in a pack"
            )
        } else {
            writeln!(
                f,
                "DAMAGE:           {} referenced chunks are in no pack; `tiergate verify` names \
                 the files",
                self.missing.len()
            )?;
            for id in self.missing.iter().take(20) {
                writeln!(f, "  missing chunk {id}")?;
            }
            if self.missing.len() > 20 {
                writeln!(f, "  ... and {} more", self.missing.len() - 20)?;
            }
            Ok(())
        }
    }
}

/// One place a chunk was found.
#[derive(Clone, Copy)]
struct Found {
    pack: u64,
    loc: BlobLocation,
    local: bool,
}

/// Rebuilds the chunk index (`C` records), `stats` and the packs' dead bytes from the pack
/// footers and the extents (see the module docs).
pub fn rebuild_index(vol: &Volume, store: &Store) -> Result<RebuildReport> {
    let started = Instant::now();
    let kv: &dyn KvStore = vol.journal();
    let mut rep = RebuildReport::default();
    let uses = chunk_uses(kv)?;
    rep.extents = uses.extents;
    let (old, undecodable) = read_index(kv)?;
    let packs: Vec<_> = vol
        .pack_table()?
        .into_iter()
        .filter(|(_, r)| !r.state.is_doomed())
        .collect();

    // 1. Every footer; local files first, so that a local copy is found before a remote one.
    let mut copies: HashMap<ChunkId, Vec<Found>> = HashMap::new();
    let mut footers: Vec<(u64, PackRecord, Vec<PackEntry>)> = Vec::new();
    let mut unreadable = HashSet::new();
    let mut order: Vec<&(u64, PackRecord)> = packs.iter().collect();
    order.sort_by_key(|(id, r)| (r.state == PackState::Remote, *id));
    for (id, rec) in order {
        let found = if rec.state == PackState::Remote {
            remote_footer(store, *id, rec.size).map(|e| (e, false))
        } else {
            match local_footer(vol, *id) {
                Ok(e) => Ok((e, true)),
                Err(local) if rec.state.is_offsite() => remote_footer(store, *id, rec.size)
                    .map(|e| (e, false))
                    .map_err(|e| match e {
                        Error::Remote(m) => Error::Remote(m),
                        e => Error::Corrupt(format!("local copy: {local}; off-site copy: {e}")),
                    }),
                Err(e) => Err(e),
            }
        };
        match found {
            Ok((entries, local)) => {
                if local {
                    rep.packs_local += 1;
                } else {
                    rep.packs_remote += 1;
                }
                for e in &entries {
                    if uses.chunks.contains_key(&e.id) {
                        copies.entry(e.id).or_default().push(Found {
                            pack: *id,
                            loc: e.loc,
                            local,
                        });
                    }
                }
                footers.push((*id, *rec, entries));
            }
            Err(Error::Remote(m)) => {
                return Err(Error::Remote(format!(
                    "reading the footer of pack {id}: {m}; nothing was changed (run the rebuild \
                     again when the store answers)"
                )))
            }
            Err(e) => {
                unreadable.insert(*id);
                rep.packs_unreadable.push((*id, e.to_string()));
            }
        }
    }

    // 2. One location per referenced chunk.
    let mut new: HashMap<ChunkId, ChunkRecord> = HashMap::with_capacity(uses.chunks.len());
    let mut local_picks: HashMap<u64, Vec<ChunkId>> = HashMap::new();
    let mut chosen: HashSet<(u64, u64)> = HashSet::new();
    for (id, u) in &uses.chunks {
        let prev = old.get(id);
        let Some(cands) = copies.get(id) else {
            match prev {
                Some(p) if unreadable.contains(&p.pack) => {
                    new.insert(*id, ChunkRecord { refs: u.refs, ..*p });
                    rep.kept += 1;
                }
                _ => rep.missing.push(*id),
            }
            continue;
        };
        if cands.len() > 1 {
            rep.duplicates += 1;
        }
        let same_place = |c: &&Found| {
            prev.is_some_and(|p| {
                p.pack == c.pack && p.offset == c.loc.offset && p.stored_len == c.loc.len
            })
        };
        // The volume appends a chunk again only after its record went, so the newest copy is
        // the one the index named.
        let pick = *cands
            .iter()
            .find(same_place)
            .or_else(|| cands.iter().max_by_key(|c| c.pack))
            .unwrap();
        chosen.insert((pick.pack, pick.loc.offset));
        let plain_len = match prev {
            Some(p) if same_place(&&pick) && !pick.local => p.plain_len,
            _ => u.max_end,
        };
        if pick.local {
            local_picks.entry(pick.pack).or_default().push(*id);
        } else if !same_place(&&pick) {
            rep.plain_len_from_extents += 1;
        }
        new.insert(
            *id,
            ChunkRecord {
                pack: pick.pack,
                offset: pick.loc.offset,
                stored_len: pick.loc.len,
                plain_len,
                refs: u.refs,
            },
        );
    }
    rep.missing.sort();

    // 3. Exact plaintext lengths from the blob headers of local copies.
    for (pack_id, ids) in &mut local_picks {
        ids.sort_by_key(|id| new[id].offset);
        let path = vol.pack_file(*pack_id);
        let file =
            File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        for id in ids.iter() {
            let r = new.get_mut(id).unwrap();
            let mut h = [0u8; blob::BLOB_HEADER_LEN];
            match file
                .read_exact_at(&mut h, r.offset)
                .ok()
                .and_then(|_| header_plain_len(&h))
            {
                Some(n) => r.plain_len = n,
                // A damaged header: `verify --deep` will report the chunk.
                None => rep.plain_len_from_extents += 1,
            }
        }
    }

    // 4. Garbage and dead bytes of every pack read.
    let mut dead_updates = Vec::new();
    for (id, rec, entries) in &footers {
        let mut dead = 0u64;
        for e in entries {
            if !chosen.contains(&(*id, e.loc.offset)) {
                dead += e.loc.len as u64;
                if !uses.chunks.contains_key(&e.id) {
                    rep.garbage_chunks += 1;
                    rep.garbage_bytes += e.loc.len as u64;
                }
            }
        }
        if dead != rec.dead_bytes {
            dead_updates.push((
                *id,
                PackRecord {
                    dead_bytes: dead,
                    ..*rec
                },
            ));
        }
    }

    // 5. Write what differs.
    let mut batch = Batch::default();
    let put = |batch: &mut Batch, k: Vec<u8>, v: Option<Vec<u8>>| -> Result<()> {
        match v {
            Some(v) => batch.put(k, v),
            None => batch.delete(k),
        }
        if batch.len() >= WRITE_BATCH {
            kv.apply(std::mem::take(batch))?;
        }
        Ok(())
    };
    for (id, r) in &new {
        if old.get(id) == Some(r) {
            rep.unchanged += 1;
        } else {
            put(&mut batch, meta::chunk_key(id), Some(r.encode()))?;
            rep.written += 1;
        }
    }
    for id in old.keys().filter(|id| !new.contains_key(*id)) {
        put(&mut batch, meta::chunk_key(id), None)?;
        rep.removed += 1;
    }
    for k in undecodable {
        put(&mut batch, k, None)?;
        rep.removed += 1;
    }
    for (id, r) in &dead_updates {
        put(&mut batch, meta::pack_key(*id), Some(r.encode()))?;
    }
    rep.packs_updated = dead_updates.len() as u64;
    let stats = Stats {
        logical_bytes: uses.logical_bytes,
        unique_bytes: new.values().map(|r| r.plain_len as u64).sum(),
        stored_bytes: new.values().map(|r| r.stored_len as u64).sum(),
        chunks: new.len() as u64,
    };
    let stats_key = meta::misc_key("stats");
    let current = kv.get(&stats_key)?.and_then(|v| Stats::decode(&v).ok());
    if current != Some(stats) {
        put(&mut batch, stats_key, Some(stats.encode()))?;
        rep.stats_updated = true;
    }
    if !batch.is_empty() {
        kv.apply(batch)?;
    }
    kv.flush()?;
    rep.chunks_indexed = new.len() as u64;
    rep.elapsed = started.elapsed();
    tracing::info!(
        chunks = rep.chunks_indexed,
        written = rep.written,
        removed = rep.removed,
        missing = rep.missing.len(),
        "chunk index rebuilt"
    );
    Ok(rep)
}

// ---------------------------------------------------------------------------- verify

/// What [`verify`] checks beyond the metadata and the local files.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Ask the store for every off-site pack: exists, has its recorded size; and read the
    /// footers of off-site only packs. With `deep`, also decode the off-site copies of packs
    /// that have a local one.
    pub remote: bool,
    /// Read and decode every referenced chunk.
    pub deep: bool,
}

/// Bytes of a file that cannot be read correctly, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    pub start: u64,
    pub end: u64,
    pub chunk: ChunkId,
    pub reason: String,
}

/// A file with damaged bytes.
#[derive(Debug, Clone)]
pub struct DamagedFile {
    pub ino: u64,
    /// Its names, found by walking the namespace (several for hard links; none for a file
    /// no directory names).
    pub paths: Vec<String>,
    pub ranges: Vec<DamagedRange>,
}

/// A pack whose local copy was damaged and whose off-site copy verified: evicted.
#[derive(Debug, Clone)]
pub struct Repair {
    pub pack: u64,
    /// What was wrong with the local copy.
    pub reason: String,
    pub bytes_freed: u64,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub options: VerifyOptions,
    pub files: u64,
    pub extents: u64,
    /// Distinct chunks referenced.
    pub chunks: u64,
    /// Of those, in a local pack file / only off-site.
    pub chunks_local: u64,
    pub chunks_remote: u64,
    pub bytes_local: u64,
    pub bytes_remote: u64,
    pub damaged: Vec<DamagedFile>,
    /// Problems of a pack rather than of file bytes (an off-site copy missing, a footer
    /// damaged): the files read, but a copy the volume counts on is not whole.
    pub pack_problems: Vec<String>,
    /// Breaks of the extent map's rules ([`check_extent_map`]): overlapping extents, an extent
    /// past its chunk's end, a chunk named but not indexed, a reference count that is off.
    pub extent_map_problems: Vec<String>,
    pub repaired: Vec<Repair>,
    pub elapsed: Duration,
}

impl VerifyReport {
    /// No damage and no pack problem left (repairs done do not count).
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
            && self.pack_problems.is_empty()
            && self.extent_map_problems.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.damaged {
            match d.paths.split_first() {
                Some((p, [])) => writeln!(f, "DAMAGED {p}")?,
                Some((p, rest)) => writeln!(f, "DAMAGED {p} (also named {})", rest.join(", "))?,
                None => writeln!(f, "DAMAGED inode {} (no name in the namespace)", d.ino)?,
            }
            for r in &d.ranges {
                writeln!(
                    f,
                    "  bytes {}-{} ({}): chunk {}: {}",
                    r.start,
                    r.end - 1,
                    mib(r.end - r.start),
                    short(&r.chunk),
                    r.reason
                )?;
            }
        }
        for p in &self.pack_problems {
            writeln!(f, "PACK PROBLEM {p}")?;
        }
        for p in &self.extent_map_problems {
            writeln!(f, "EXTENT MAP {p}")?;
        }
        for r in &self.repaired {
            writeln!(
                f,
                "repaired pack {}: its local copy was damaged ({}) and the off-site copy \
                 verifies: dropped the local copy ({} freed); reads fetch from the store",
                r.pack,
                r.reason,
                mib(r.bytes_freed)
            )?;
        }
        let o = self.options;
        writeln!(
            f,
            "checked {}, {}, {} ({} in local packs, {} off-site only): extent map, index, \
             pack table, footers{}{}",
            count(self.files as usize, "file"),
            count(self.extents as usize, "extent"),
            count(self.chunks as usize, "chunk"),
            self.chunks_local,
            self.chunks_remote,
            if o.remote { ", off-site objects" } else { "" },
            if o.deep { ", contents" } else { "" },
        )?;
        writeln!(
            f,
            "read {} ({} local, {} from the store) in {:.2} s",
            mib(self.bytes_local + self.bytes_remote),
            mib(self.bytes_local),
            mib(self.bytes_remote),
            self.elapsed.as_secs_f64()
        )?;
        if self.is_clean() {
            write!(
                f,
                "result: no damage found{}",
                if self.repaired.is_empty() {
                    ""
                } else {
                    " (after the repairs above)"
                }
            )
        } else {
            write!(
                f,
                "result: {}, {}",
                count(self.damaged.len(), "damaged file"),
                count(self.pack_problems.len(), "pack problem")
            )?;
            if !self.extent_map_problems.is_empty() {
                write!(
                    f,
                    ", {}",
                    count(self.extent_map_problems.len(), "extent map problem")
                )?;
            }
            Ok(())
        }
    }
}

/// A referenced chunk that passed the metadata checks: where it is read from.
#[derive(Clone, Copy)]
struct Target {
    id: ChunkId,
    pack: u64,
    loc: BlobLocation,
}

/// Checks every chunk the files reference (see the module docs); repairs what a verified
/// off-site copy can repair. `progress` gets the bytes of the deep reads.
pub fn verify(
    vol: &Volume,
    store: &Store,
    opts: VerifyOptions,
    progress: Progress<'_>,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let kv: &dyn KvStore = vol.journal();
    let mut rep = VerifyReport {
        options: opts,
        extent_map_problems: check_extent_map(vol)?,
        ..Default::default()
    };
    let uses = chunk_uses(kv)?;
    rep.files = uses.files;
    rep.extents = uses.extents;
    rep.chunks = uses.chunks.len() as u64;
    let (index, _) = read_index(kv)?;
    // Packs GC dropped hold nothing anyone needs (and their objects may be gone already).
    let packs: HashMap<u64, PackRecord> = vol
        .pack_table()?
        .into_iter()
        .filter(|(_, r)| !r.state.is_doomed())
        .collect();
    let mut bad: HashMap<ChunkId, String> = HashMap::new();

    // Local pack files: their length and footer.
    let mut local_len: HashMap<u64, u64> = HashMap::new();
    let mut local_damage: HashMap<u64, String> = HashMap::new();
    let mut footer_of: HashMap<u64, HashMap<ChunkId, BlobLocation>> = HashMap::new();
    let mut ids: Vec<u64> = packs.keys().copied().collect();
    ids.sort();
    for id in &ids {
        let rec = packs[id];
        if rec.state == PackState::Remote {
            continue;
        }
        let Ok(md) = std::fs::metadata(vol.pack_file(*id)) else {
            continue;
        };
        local_len.insert(*id, md.len());
        if md.len() != rec.size {
            local_damage.insert(
                *id,
                format!(
                    "the local file is {} bytes, the pack table says {}",
                    md.len(),
                    rec.size
                ),
            );
            continue;
        }
        match local_footer(vol, *id) {
            Ok(entries) => {
                footer_of.insert(*id, entries.into_iter().map(|e| (e.id, e.loc)).collect());
            }
            Err(e) => {
                local_damage.insert(*id, format!("its footer does not verify ({e})"));
            }
        }
    }

    // The store's view of the off-site packs.
    let mut offsite_ok: HashMap<u64, bool> = HashMap::new();
    if opts.remote {
        let objects =
            store
                .rt
                .block_on(list_all(store.backend.as_ref(), layout::PACKS_PREFIX, 1000))?;
        let sizes: HashMap<u64, u64> = objects
            .iter()
            .filter_map(|o| {
                let name = o.key.strip_prefix(layout::PACKS_PREFIX)?;
                let id = u64::from_str_radix(name.strip_suffix(".pack")?, 16).ok()?;
                Some((id, o.size))
            })
            .collect();
        for id in &ids {
            let rec = packs[id];
            if !rec.state.is_offsite() {
                continue;
            }
            let key = layout::pack_key(*id);
            let problem = match sizes.get(id) {
                None => Some(format!("the store has no object {key}")),
                Some(&s) if s != rec.size => Some(format!(
                    "the store's {key} is {s} bytes, the pack table says {}",
                    rec.size
                )),
                Some(_) => None,
            };
            offsite_ok.insert(*id, problem.is_none());
            match (problem, rec.state) {
                (Some(p), PackState::Uploaded) => rep.pack_problems.push(format!(
                    "{id}: recorded as off-site, but {p}: its data is only in the local copy \
                     (a recovery from the store would miss it)"
                )),
                // Off-site only: the chunks' own checks below report it, per file.
                (Some(_), _) => {}
                (None, PackState::Remote) => match remote_footer(store, *id, rec.size) {
                    Ok(entries) => {
                        footer_of.insert(*id, entries.into_iter().map(|e| (e.id, e.loc)).collect());
                    }
                    Err(Error::Remote(m)) => return Err(Error::Remote(m)),
                    Err(e) => rep.pack_problems.push(format!(
                        "{id}: the off-site copy's footer does not verify ({e})"
                    )),
                },
                (None, _) => {}
            }
        }
    }

    // Metadata checks of every referenced chunk.
    let mut local_targets = Vec::new();
    let mut remote_targets = Vec::new();
    for id in uses.chunks.keys() {
        let Some(rec) = index.get(id) else {
            bad.insert(
                *id,
                "not in the chunk index (`tiergate index rebuild` rebuilds it from the packs)"
                    .into(),
            );
            continue;
        };
        let Some(prec) = packs.get(&rec.pack) else {
            bad.insert(
                *id,
                format!(
                    "indexed in pack {}, which the pack table does not know",
                    rec.pack
                ),
            );
            continue;
        };
        let loc = BlobLocation {
            offset: rec.offset,
            len: rec.stored_len,
        };
        let end = rec.offset + rec.stored_len as u64;
        let place = format!("pack {} at {}+{}", rec.pack, rec.offset, rec.stored_len);
        if let Some(footer) = footer_of.get(&rec.pack) {
            if footer.get(id) != Some(&loc) {
                bad.insert(
                    *id,
                    format!(
                        "indexed in {place}, but that pack's footer does not list it there \
                         (`tiergate index rebuild` rebuilds the index from the packs)"
                    ),
                );
                continue;
            }
        }
        let local = local_len.get(&rec.pack).is_some_and(|&l| l >= end);
        let offsite = prec.state.is_offsite() && offsite_ok.get(&rec.pack).copied().unwrap_or(true);
        let t = Target {
            id: *id,
            pack: rec.pack,
            loc,
        };
        if local {
            rep.chunks_local += 1;
            local_targets.push(t);
        } else if offsite {
            rep.chunks_remote += 1;
            remote_targets.push(t);
        } else {
            let why = match (prec.state, local_len.get(&rec.pack)) {
                (PackState::Remote | PackState::Uploaded, _) => format!(
                    "in {place}, off-site only, and {}",
                    if opts.remote {
                        "the store's object is missing or of the wrong size"
                    } else {
                        "the local copy is gone"
                    }
                ),
                (_, None) => {
                    format!("in {place}, which is not off-site yet and whose local file is missing")
                }
                (_, Some(l)) => format!(
                    "in {place}, which is not off-site yet and whose local file ends at {l} \
                     (truncated?)"
                ),
            };
            bad.insert(*id, why);
        }
    }

    // Contents.
    if opts.deep {
        local_targets.sort_by_key(|t| (t.pack, t.loc.offset));
        let failed = check_local(vol, &local_targets, &mut rep.bytes_local, progress)?;
        // Packs with a damaged local copy: repairable if the whole off-site copy verifies.
        let repairable =
            |p: u64| packs[&p].state.is_offsite() && offsite_ok.get(&p).copied().unwrap_or(true);
        let mut by_pack: HashMap<u64, Vec<(ChunkId, String)>> = local_damage
            .keys()
            .filter(|p| repairable(**p))
            .map(|p| (*p, Vec::new()))
            .collect();
        for (id, why) in failed {
            let pack = index[&id].pack;
            if repairable(pack) {
                by_pack.entry(pack).or_default().push((id, why));
            } else {
                bad.insert(
                    id,
                    format!(
                        "the local copy in pack {pack} fails verification ({why}); the pack is \
                         not off-site, so there is no other copy"
                    ),
                );
            }
        }
        let mut to_check: Vec<Target> = remote_targets.clone();
        let mut both: HashSet<u64> = by_pack.keys().copied().collect();
        if opts.remote {
            // Both copies of packs that have both.
            both.extend(
                local_targets
                    .iter()
                    .filter(|t| packs[&t.pack].state.is_offsite())
                    .map(|t| t.pack),
            );
        }
        to_check.extend(local_targets.iter().filter(|t| both.contains(&t.pack)));
        to_check.sort_by_key(|t| (t.pack, t.loc.offset));
        let remote_failed = check_remote(vol, store, &to_check, &mut rep.bytes_remote, progress);
        let mut remote_failed_by_pack: HashMap<u64, Vec<(ChunkId, String)>> = HashMap::new();
        for t in &to_check {
            if let Some(why) = remote_failed.get(&t.id) {
                remote_failed_by_pack
                    .entry(t.pack)
                    .or_default()
                    .push((t.id, why.clone()));
            }
        }
        // Off-site only chunks that fail are damage.
        for t in &remote_targets {
            if let Some(why) = remote_failed.get(&t.id) {
                bad.insert(
                    t.id,
                    format!(
                        "the off-site copy in pack {} fails verification ({why})",
                        t.pack
                    ),
                );
            }
        }
        let mut repair_packs: Vec<u64> = by_pack.keys().copied().collect();
        repair_packs.sort();
        for pack in repair_packs {
            let local_bad = &by_pack[&pack];
            let remote_bad = remote_failed_by_pack.remove(&pack).unwrap_or_default();
            let mut reasons: Vec<String> = local_damage.get(&pack).cloned().into_iter().collect();
            if let Some((_, first)) = local_bad.first() {
                reasons.push(format!(
                    "{} fail verification, first: {first}",
                    count(local_bad.len(), "chunk")
                ));
            }
            let reason = reasons.join("; ");
            if remote_bad.is_empty() {
                let freed = vol.evict_pack(pack)?;
                tracing::warn!(pack, %reason, "damaged local copy evicted; off-site copy good");
                local_damage.remove(&pack);
                rep.repaired.push(Repair {
                    pack,
                    reason,
                    bytes_freed: freed,
                });
                continue;
            }
            let remote_set: HashMap<ChunkId, &String> =
                remote_bad.iter().map(|(id, w)| (*id, w)).collect();
            let mut unreadable = 0;
            for (id, why) in local_bad {
                if let Some(rwhy) = remote_set.get(id) {
                    unreadable += 1;
                    bad.insert(
                        *id,
                        format!(
                            "both copies in pack {pack} fail verification: local: {why}; \
                             off-site: {rwhy}"
                        ),
                    );
                }
            }
            if unreadable < remote_bad.len() || unreadable < local_bad.len() {
                local_damage.remove(&pack);
                rep.pack_problems.push(format!(
                    "{pack}: the local copy is damaged ({reason}) and the off-site copy fails \
                     verification in {} (first: {}); not repaired: the daemon reads each chunk \
                     from a copy that verifies, but neither copy is whole",
                    count(remote_bad.len(), "chunk"),
                    remote_bad[0].1
                ));
            }
        }
        // Off-site copies of packs whose local copy verifies.
        let mut rest: Vec<_> = remote_failed_by_pack
            .into_iter()
            .filter(|(p, _)| packs[p].state == PackState::Uploaded)
            .collect();
        rest.sort_by_key(|(p, _)| *p);
        for (pack, failed) in rest {
            rep.pack_problems.push(format!(
                "{pack}: the off-site copy fails verification in {} (first: {}); the local copy \
                 verifies and must not be evicted",
                count(failed.len(), "chunk"),
                failed[0].1
            ));
        }
    }
    let mut local_damage: Vec<(u64, String)> = local_damage.into_iter().collect();
    local_damage.sort();
    for (pack, why) in local_damage {
        let hint = match packs[&pack].state {
            PackState::Uploaded if !opts.deep => {
                "; `tiergate verify --deep` replaces it with the off-site copy if that verifies"
            }
            PackState::Uploaded => "; the off-site copy could not be confirmed",
            _ => "; the pack is not off-site yet, and the index cannot be rebuilt from it",
        };
        rep.pack_problems
            .push(format!("{pack}: the local copy is damaged: {why}{hint}"));
    }

    if !bad.is_empty() {
        rep.damaged = damaged_files(kv, &bad)?;
    }
    rep.elapsed = started.elapsed();
    Ok(rep)
}

/// Reads and decodes `targets` (sorted by pack and offset) from the local pack files, in
/// rounds of [`LOCAL_ROUND`] bytes decoded in parallel. Returns the failures.
fn check_local(
    vol: &Volume,
    targets: &[Target],
    bytes: &mut u64,
    progress: Progress<'_>,
) -> Result<Vec<(ChunkId, String)>> {
    let mut files: HashMap<u64, File> = HashMap::new();
    for t in targets {
        if let std::collections::hash_map::Entry::Vacant(e) = files.entry(t.pack) {
            let path = vol.pack_file(t.pack);
            e.insert(
                File::open(&path)
                    .map_err(|e| Error::io(format!("opening {}", path.display()), e))?,
            );
        }
    }
    let total: u64 = targets.iter().map(|t| t.loc.len as u64).sum();
    let done = AtomicU64::new(0);
    let keys = vol.keys();
    let mut failed = Vec::new();
    let mut rest = targets;
    while !rest.is_empty() {
        let mut n = 0;
        let mut round_bytes = 0;
        while n < rest.len() && (n == 0 || round_bytes < LOCAL_ROUND) {
            round_bytes += rest[n].loc.len as u64;
            n += 1;
        }
        let (round, tail) = rest.split_at(n);
        rest = tail;
        let results: Vec<(ChunkId, String)> = round
            .par_iter()
            .filter_map(|t| {
                let r = pack::read_blob(&files[&t.pack], t.loc)
                    .and_then(|b| blob::decode_vec(keys, &t.id, b));
                done.fetch_add(t.loc.len as u64, Ordering::Relaxed);
                r.err().map(|e| (t.id, e.to_string()))
            })
            .collect();
        failed.extend(results);
        progress("reading local packs", done.load(Ordering::Relaxed), total);
    }
    *bytes += total;
    Ok(failed)
}

/// A run of one pack object fetched in one GET, and the targets in it.
struct Span {
    pack: u64,
    range: Range<u64>,
    members: Vec<Target>,
}

/// Reads and decodes `targets` (sorted by pack and offset) from the store: nearby blobs of a
/// pack are fetched in one GET of at most [`SPAN_MAX`]. Returns the failures by chunk.
fn check_remote(
    vol: &Volume,
    store: &Store,
    targets: &[Target],
    bytes: &mut u64,
    progress: Progress<'_>,
) -> HashMap<ChunkId, String> {
    let mut spans: Vec<Span> = Vec::new();
    for t in targets {
        let (s, e) = (t.loc.offset, t.loc.offset + t.loc.len as u64);
        match spans.last_mut() {
            Some(sp)
                if sp.pack == t.pack
                    && s >= sp.range.end
                    && s - sp.range.end <= SPAN_GAP
                    && e - sp.range.start <= SPAN_MAX =>
            {
                sp.range.end = e;
                sp.members.push(*t);
            }
            _ => spans.push(Span {
                pack: t.pack,
                range: s..e,
                members: vec![*t],
            }),
        }
    }
    let total: u64 = spans.iter().map(|s| s.range.end - s.range.start).sum();
    let keys = vol.keys();
    let mut failed = HashMap::new();
    let mut done = 0;
    for group in spans.chunks(PARALLEL_GETS * 2) {
        let reqs = group.iter().map(|s| (s.pack, s.range.clone())).collect();
        let fetched = store.pack_ranges(reqs);
        for (sp, got) in group.iter().zip(fetched) {
            done += sp.range.end - sp.range.start;
            match got {
                Ok(data) => {
                    let fails: Vec<(ChunkId, String)> = sp
                        .members
                        .par_iter()
                        .filter_map(|t| {
                            let at = (t.loc.offset - sp.range.start) as usize;
                            let b = data[at..at + t.loc.len as usize].to_vec();
                            blob::decode_vec(keys, &t.id, b)
                                .err()
                                .map(|e| (t.id, e.to_string()))
                        })
                        .collect();
                    failed.extend(fails);
                }
                Err(e) => {
                    for t in &sp.members {
                        failed.insert(t.id, format!("reading it from the store: {e}"));
                    }
                }
            }
        }
        progress("reading from the store", done, total);
    }
    *bytes += total;
    failed
}

/// The files that use the chunks in `bad`, with the byte ranges and reasons, sorted by name.
fn damaged_files(kv: &dyn KvStore, bad: &HashMap<ChunkId, String>) -> Result<Vec<DamagedFile>> {
    let mut files: Vec<DamagedFile> = Vec::new();
    scan(kv, &extent_tag(), |k, v| {
        let x = Extent::decode(v)?;
        let Some(reason) = bad.get(&x.chunk) else {
            return Ok(());
        };
        let (ino, off) = extent_key_parts(k)?;
        if files.last().is_none_or(|f| f.ino != ino) {
            files.push(DamagedFile {
                ino,
                paths: Vec::new(),
                ranges: Vec::new(),
            });
        }
        let ranges = &mut files.last_mut().unwrap().ranges;
        let end = off + x.len as u64;
        match ranges.last_mut() {
            Some(r) if r.end == off && r.chunk == x.chunk => r.end = end,
            _ => ranges.push(DamagedRange {
                start: off,
                end,
                chunk: x.chunk,
                reason: reason.clone(),
            }),
        }
        Ok(())
    })?;
    let want: HashSet<u64> = files.iter().map(|f| f.ino).collect();
    let mut names = names_of(kv, &want)?;
    for f in &mut files {
        f.paths = names.remove(&f.ino).unwrap_or_default();
        f.paths.sort();
    }
    files.sort_by(|a, b| {
        a.paths
            .first()
            .cmp(&b.paths.first())
            .then(a.ino.cmp(&b.ino))
    });
    Ok(files)
}

/// The names of the inodes in `want`, by walking the namespace from the root, then from each
/// hidden directory (shown as `<hidden PURPOSE>/...`).
fn names_of(kv: &dyn KvStore, want: &HashSet<u64>) -> Result<HashMap<u64, Vec<String>>> {
    let mut out: HashMap<u64, Vec<String>> = HashMap::new();
    let mut queue: VecDeque<(u64, String)> = VecDeque::from([
        (ROOT_INO, String::new()),
        (SNAPSHOT_DIR_INO, format!("/{SNAPSHOT_DIR_NAME}")),
    ]);
    let hidden = meta::misc_key("hidden_dir.");
    scan(kv, &hidden, |k, v| {
        if let Ok(b) = <[u8; 8]>::try_from(v) {
            let purpose = String::from_utf8_lossy(&k[hidden.len()..]);
            queue.push_back((u64::from_le_bytes(b), format!("<hidden {purpose}>")));
        }
        Ok(())
    })?;
    let mut seen = HashSet::new();
    while let Some((dir, path)) = queue.pop_front() {
        if !seen.insert(dir) {
            continue;
        }
        let prefix = meta::dirent_prefix(dir);
        scan(kv, &prefix, |k, v| {
            let (child, kind) = meta::decode_dirent(v)?;
            let p = format!("{path}/{}", String::from_utf8_lossy(&k[prefix.len()..]));
            if want.contains(&child) {
                out.entry(child).or_default().push(p.clone());
            }
            if kind == FileKind::Dir {
                queue.push_back((child, p));
            }
            Ok(())
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalDir;
    use crate::chunker::ChunkerParams;
    use crate::volume::{Caller, VolumeOptions};

    const ME: Caller = Caller { uid: 0, gid: 0 };

    fn params() -> ChunkerParams {
        ChunkerParams {
            min_size: 16 << 10,
            avg_size: 64 << 10,
            max_size: 256 << 10,
        }
    }

    fn data(seed: u8, len: usize) -> Vec<u8> {
        let mut x = seed as u64 * 2 + 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn write(vol: &Volume, parent: u64, name: &str, bytes: &[u8]) -> u64 {
        let (a, fh) = vol.create_file(parent, name.as_bytes(), 0o644, ME).unwrap();
        vol.write(a.ino, 0, bytes).unwrap();
        vol.release(fh).unwrap();
        a.ino
    }

    fn all(vol: &Volume, prefix: Vec<u8>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let kv: &dyn KvStore = vol.journal();
        kv.range(&prefix, prefix_end(&prefix).as_deref()).unwrap()
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        store: Store,
        files: Vec<(u64, Vec<u8>)>,
    }

    /// A volume with two files sharing content, a deleted file (garbage) whose chunks a later
    /// file stores again (duplicates), one pack uploaded and evicted (off-site only), one
    /// uploaded and cached, one sealed only.
    fn fixture() -> (Fixture, Arc<Volume>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        Volume::create(&dir, "pw", params(), KdfParams::for_tests()).unwrap();
        let backend = Arc::new(LocalDir::open(&tmp.path().join("store")).unwrap());
        let store = Store::new(backend.clone()).unwrap();
        let opts = VolumeOptions {
            pack_target_size: 1 << 20,
            ..VolumeOptions::default()
        };
        let vol = Volume::open(&dir, "pw", opts).unwrap();
        let dirino = vol.mkdir(ROOT_INO, b"d", 0o755, ME).unwrap().ino;
        let a = data(1, 1500 << 10);
        let mut files = vec![(write(&vol, ROOT_INO, "a", &a), a.clone())];
        files.push((write(&vol, dirino, "a-copy", &a), a));
        let b = data(3, 700 << 10);
        write(&vol, ROOT_INO, "gone", &b[..300 << 10]);
        vol.unlink(ROOT_INO, b"gone").unwrap();
        vol.seal_open_pack().unwrap();
        files.push((write(&vol, dirino, "b", &b), b));
        vol.shutdown().unwrap();
        let table = vol.pack_table().unwrap();
        assert!(table.len() >= 3, "{table:?}");
        for (i, (id, _)) in table.iter().enumerate().take(2) {
            store
                .rt
                .block_on(backend.put_file(&layout::pack_key(*id), &vol.pack_file(*id)))
                .unwrap();
            vol.mark_pack_uploaded(*id).unwrap();
            if i == 0 {
                vol.evict_pack(*id).unwrap();
            }
        }
        (
            Fixture {
                _tmp: tmp,
                dir,
                store,
                files,
            },
            vol,
        )
    }

    fn no_progress(_: &str, _: u64, _: u64) {}

    #[test]
    fn rebuild_gives_back_the_same_index_stats_and_dead_bytes() {
        let (fx, vol) = fixture();
        let index = all(&vol, meta::chunk_prefix());
        let packs = all(&vol, meta::pack_prefix());
        let stats = vol.journal().get(&meta::misc_key("stats")).unwrap();
        assert!(index
            .iter()
            .any(|(_, v)| ChunkRecord::decode(v).unwrap().refs == 2));

        // Nothing to do on an intact index.
        let r = rebuild_index(&vol, &fx.store).unwrap();
        assert!(r.is_complete(), "{r}");
        assert_eq!((r.written, r.removed), (0, 0), "{r}");
        assert_eq!(r.unchanged as usize, index.len());
        assert!(r.garbage_chunks > 0 && r.duplicates > 0, "{r}");
        assert_eq!(r.packs_remote, 1, "{r}");

        let mut b = Batch::default();
        for (k, _) in &index {
            b.delete(k.clone());
        }
        vol.journal().apply(b).unwrap();
        let r = rebuild_index(&vol, &fx.store).unwrap();
        assert!(r.is_complete(), "{r}");
        assert_eq!(r.written as usize, index.len(), "{r}");
        assert_eq!(all(&vol, meta::chunk_prefix()), index);
        assert_eq!(all(&vol, meta::pack_prefix()), packs);
        assert_eq!(vol.journal().get(&meta::misc_key("stats")).unwrap(), stats);
        let v = verify(
            &vol,
            &fx.store,
            VerifyOptions {
                remote: true,
                deep: true,
            },
            &no_progress,
        )
        .unwrap();
        assert!(v.is_clean(), "{v}");
        assert!(v.chunks_remote > 0 && v.chunks_local > 0, "{v}");
        drop(vol);
        // "b" is in local packs only (off-site only chunks would need the tiering fetcher).
        let vol = Volume::open(&fx.dir, "pw", VolumeOptions::default()).unwrap();
        let (ino, bytes) = &fx.files[2];
        assert!(*vol.read(*ino, 0, bytes.len() as u32).unwrap() == **bytes);
    }

    #[test]
    fn rebuild_keeps_records_of_unreadable_packs_and_reports_chunks_in_no_pack() {
        let (fx, vol) = fixture();
        let (id, _) = *vol.pack_table().unwrap().last().unwrap();
        std::fs::remove_file(vol.pack_file(id)).unwrap();
        let in_pack = |vol: &Volume| {
            all(vol, meta::chunk_prefix())
                .iter()
                .filter(|(_, v)| ChunkRecord::decode(v).unwrap().pack == id)
                .count() as u64
        };
        let before = in_pack(&vol);
        let r = rebuild_index(&vol, &fx.store).unwrap();
        assert!(!r.is_complete());
        assert_eq!(r.packs_unreadable.len(), 1, "{r}");
        assert!(r.missing.is_empty(), "{r}");
        // The chunks "gone" stored too are taken from its (garbage) copies; the rest are kept.
        assert!(r.written > 0 && r.kept > 0, "{r}");
        assert_eq!(in_pack(&vol), r.kept);
        assert_eq!(r.kept + r.written, before, "{r}");
        let v = verify(&vol, &fx.store, VerifyOptions::default(), &no_progress).unwrap();
        assert_eq!(v.damaged.len(), 1, "{v}");
        assert_eq!(v.damaged[0].paths, ["/d/b"], "{v}");
        assert!(v.to_string().contains("local file is missing"), "{v}");

        // Without a pack record, its chunks are in no pack.
        let mut b = Batch::default();
        b.delete(meta::pack_key(id));
        vol.journal().apply(b).unwrap();
        let r = rebuild_index(&vol, &fx.store).unwrap();
        assert!(!r.missing.is_empty() && r.kept == 0, "{r}");
        assert!(r.to_string().contains("DAMAGE"), "{r}");
        let v = verify(&vol, &fx.store, VerifyOptions::default(), &no_progress).unwrap();
        assert_eq!(v.damaged[0].paths, ["/d/b"], "{v}");
        assert!(v.to_string().contains("not in the chunk index"), "{v}");
    }

    /// Flips a byte in the middle of the blob of the first extent (in key order) whose chunk is
    /// in a pack `want` accepts; returns (pack, inode).
    fn flip(vol: &Volume, want: impl Fn(u64) -> bool) -> (u64, u64) {
        let kv: &dyn KvStore = vol.journal();
        let (ino, rec) = all(vol, extent_tag())
            .into_iter()
            .find_map(|(k, v)| {
                let x = Extent::decode(&v).unwrap();
                let r = ChunkRecord::decode(&kv.get(&meta::chunk_key(&x.chunk)).unwrap()?).unwrap();
                want(r.pack).then(|| (extent_key_parts(&k).unwrap().0, r))
            })
            .expect("an extent in such a pack");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(vol.pack_file(rec.pack))
            .unwrap();
        let at = rec.offset + rec.stored_len as u64 / 2;
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
        (rec.pack, ino)
    }

    #[test]
    fn deep_verify_reports_damage_in_a_pack_not_yet_off_site() {
        let (fx, vol) = fixture();
        let deep = VerifyOptions {
            remote: false,
            deep: true,
        };
        let table: HashMap<u64, PackRecord> = vol.pack_table().unwrap().into_iter().collect();
        let (pack, ino) = flip(&vol, |p| table[&p].state == PackState::Sealed);
        assert_eq!(ino, fx.files[2].0, "b is the file in the sealed pack");
        let v = verify(&vol, &fx.store, VerifyOptions::default(), &no_progress).unwrap();
        assert!(
            v.is_clean(),
            "without --deep the contents are not read: {v}"
        );
        let v = verify(&vol, &fx.store, deep, &no_progress).unwrap();
        assert!(!v.is_clean());
        assert_eq!(v.damaged.len(), 1, "{v}");
        assert_eq!(v.damaged[0].paths, ["/d/b"]);
        assert!(v.damaged[0].ranges[0].start == 0, "{v}");
        assert!(v.to_string().contains("not off-site"), "{v}");
        assert!(vol.pack_file(pack).exists());
        assert!(v.repaired.is_empty());
    }

    #[test]
    fn damaged_local_copy_of_an_uploaded_pack_is_evicted() {
        let (fx, vol) = fixture();
        let table: HashMap<u64, PackRecord> = vol.pack_table().unwrap().into_iter().collect();
        let (pack, _) = flip(&vol, |p| table[&p].state == PackState::Uploaded);
        let deep = VerifyOptions {
            remote: true,
            deep: true,
        };
        let v = verify(&vol, &fx.store, deep, &no_progress).unwrap();
        assert!(v.is_clean(), "{v}");
        assert_eq!(v.repaired.len(), 1, "{v}");
        assert_eq!(v.repaired[0].pack, pack);
        assert!(!vol.pack_file(pack).exists());
        let v = verify(&vol, &fx.store, deep, &no_progress).unwrap();
        assert!(v.is_clean() && v.repaired.is_empty(), "{v}");
    }

    #[test]
    fn damaged_footer_of_an_uploaded_pack_is_reported_then_repaired() {
        let (fx, vol) = fixture();
        let (pack, rec) = vol
            .pack_table()
            .unwrap()
            .into_iter()
            .find(|(_, r)| r.state == PackState::Uploaded)
            .unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(vol.pack_file(pack))
            .unwrap();
        f.write_all_at(&[0xEE; 4], rec.size - 30).unwrap();
        let v = verify(&vol, &fx.store, VerifyOptions::default(), &no_progress).unwrap();
        assert!(v.damaged.is_empty(), "the blobs are intact: {v}");
        assert_eq!(v.pack_problems.len(), 1, "{v}");
        assert!(v.to_string().contains("verify --deep` replaces it"), "{v}");
        let deep = VerifyOptions {
            remote: false,
            deep: true,
        };
        let v = verify(&vol, &fx.store, deep, &no_progress).unwrap();
        assert!(v.is_clean(), "{v}");
        assert_eq!(v.repaired.len(), 1, "{v}");
        assert!(v.repaired[0].reason.contains("footer"), "{v}");
        assert_eq!(
            vol.pack_table()
                .unwrap()
                .iter()
                .find(|p| p.0 == pack)
                .unwrap()
                .1
                .state,
            PackState::Remote
        );
    }
}

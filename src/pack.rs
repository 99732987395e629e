//! Pack files: append-only containers of blobs.
//!
//! A pack is written locally, sealed when full or idle, and later uploaded as one object; the
//! local file and the object are the same bytes, so a [`BlobLocation`] is valid for both (a
//! ranged GET of `offset..offset+len` fetches exactly one blob).
//!
//! Layout (integers little-endian):
//!
//! ```text
//! header (24) | record | record | ... | footer (44 per entry) | trailer (48)
//! record = record header (48) | blob (len bytes)
//! ```
//!
//! | header offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TGPACK\0\0` |
//! | 8 | 4 | format version = 1 |
//! | 12 | 4 | reserved, 0 |
//! | 16 | 8 | pack id |
//!
//! | record offset | size | field |
//! |---|---|---|
//! | 0 | 32 | chunk id |
//! | 32 | 4 | blob length |
//! | 36 | 12 | checksum: blake3(chunk id, blob length, blob), first 12 bytes |
//!
//! | footer entry offset | size | field |
//! |---|---|---|
//! | 0 | 32 | chunk id |
//! | 32 | 8 | blob offset in the pack (of the blob itself, past its record header) |
//! | 40 | 4 | blob length |
//!
//! | trailer offset | size | field |
//! |---|---|---|
//! | 0 | 8 | pack id |
//! | 8 | 8 | footer offset |
//! | 16 | 4 | entry count |
//! | 20 | 4 | format version = 1 |
//! | 24 | 16 | checksum: blake3(footer, trailer bytes 0..24), first 16 bytes |
//! | 40 | 8 | magic `TGPKSEAL` |
//!
//! Everything here except the blobs' payloads is plaintext: chunk ids (keyed, so they reveal
//! nothing about content without the id key), blob lengths and offsets. The checksums need no
//! key: they detect torn and garbled writes, not tampering, which the blobs' AEAD covers.
//!
//! Life of a pack and what a crash leaves behind:
//! 1. [`PackWriter::create`] writes the header with `create_new`, fsyncs the file and its
//!    directory. A crash inside `create` leaves a file shorter than the header, or none;
//!    [`recover_unsealed`] reports the former as corrupt, and it holds no data.
//! 2. [`PackWriter::append`] writes one record; [`PackWriter::sync`] makes all records so far
//!    durable. A crash leaves the synced records intact plus, possibly, a torn tail.
//! 3. At startup, for each pack the core knows to be unsealed, [`recover_unsealed`] keeps the
//!    longest prefix of complete, checksummed records and truncates the rest; the writer can then
//!    continue via [`PackWriter::reopen`]. It stops at the first bad record, so damage in the
//!    middle of a pack (not a torn tail: those records were synced) also drops the good records
//!    after it; the core should compare the result with its index, which knows what it
//!    acknowledged.
//! 4. [`PackWriter::seal`] appends footer and trailer and fsyncs. A crash during sealing leaves
//!    a trailer that does not verify: [`is_sealed`] says false and recovery trims the partial
//!    footer, after which the pack can be sealed again.
//! 5. Sealed packs are immutable. [`read_footer`] lists their blobs without any key, so the
//!    chunk index can be rebuilt from packs alone.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::crypto::ChunkId;
use crate::durable::fsync_parent;
use crate::error::{Error, Result};

// =============================================================================================
// DO NOT CHANGE: on-disk format. Local packs and uploaded pack objects use this layout; a new
// layout gets a new version number and readers keep accepting the old one.
// =============================================================================================

/// Pack header magic.
pub const PACK_MAGIC: [u8; 8] = *b"TGPACK\0\0";
/// Trailer magic, the last 8 bytes of a sealed pack.
pub const TRAILER_MAGIC: [u8; 8] = *b"TGPKSEAL";
/// Current pack format version (header and trailer).
pub const PACK_VERSION: u32 = 1;
/// Pack header length.
pub const HEADER_LEN: u64 = 24;
/// Record header length (chunk id, blob length, checksum).
pub const RECORD_HEADER_LEN: u64 = 48;
/// Bytes of blake3 kept as the record checksum.
pub const RECORD_CHECKSUM_LEN: usize = 12;
/// Footer entry length (chunk id, offset, length).
pub const FOOTER_ENTRY_LEN: u64 = 44;
/// Trailer length.
pub const TRAILER_LEN: u64 = 48;
/// Bytes of blake3 kept as the footer checksum.
pub const FOOTER_CHECKSUM_LEN: usize = 16;

// ====================================== end of format ========================================

/// Where a blob's bytes are inside its pack (the blob itself, not its record header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    pub offset: u64,
    pub len: u32,
}

/// One blob of a pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub loc: BlobLocation,
}

/// The result of [`recover_unsealed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredPack {
    /// Complete records, in file order.
    pub entries: Vec<PackEntry>,
    /// File length after recovery: header plus complete records.
    pub valid_len: u64,
    /// Bytes cut off the end (a torn record, a partial footer, garbage).
    pub truncated_bytes: u64,
}

/// The parsed trailer of a sealed pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    pub pack_id: u64,
    pub footer_offset: u64,
    pub entry_count: u32,
    checksum: [u8; FOOTER_CHECKSUM_LEN],
}

impl Trailer {
    /// Parses the last [`TRAILER_LEN`] bytes of a pack (magic and version only; the checksum
    /// is checked by [`parse_footer`] against the footer bytes).
    pub fn parse(bytes: &[u8]) -> Result<Trailer> {
        Self::try_parse(bytes).map_err(Error::Corrupt)
    }

    fn try_parse(b: &[u8]) -> std::result::Result<Trailer, String> {
        if b.len() != TRAILER_LEN as usize {
            return Err(format!("trailer of {} bytes", b.len()));
        }
        if b[40..48] != TRAILER_MAGIC {
            return Err("no trailer (pack not sealed)".into());
        }
        let version = u32_at(b, 20);
        if version != PACK_VERSION {
            return Err(format!(
                "unsupported pack version {version} (this build reads {PACK_VERSION})"
            ));
        }
        Ok(Trailer {
            pack_id: u64_at(b, 0),
            footer_offset: u64_at(b, 8),
            entry_count: u32_at(b, 16),
            checksum: b[24..40].try_into().unwrap(),
        })
    }

    /// Length of the footer this trailer describes.
    pub fn footer_len(&self) -> u64 {
        self.entry_count as u64 * FOOTER_ENTRY_LEN
    }

    fn encode_without_checksum(&self) -> [u8; 24] {
        let mut t = [0u8; 24];
        t[0..8].copy_from_slice(&self.pack_id.to_le_bytes());
        t[8..16].copy_from_slice(&self.footer_offset.to_le_bytes());
        t[16..20].copy_from_slice(&self.entry_count.to_le_bytes());
        t[20..24].copy_from_slice(&PACK_VERSION.to_le_bytes());
        t
    }
}

/// Parses and verifies a footer against its trailer: checksum, and every entry pointing inside
/// the record area in increasing, non-overlapping order. Used by [`read_footer`] and by readers
/// that fetch trailer and footer with ranged requests.
pub fn parse_footer(trailer: &Trailer, footer: &[u8]) -> Result<Vec<PackEntry>> {
    check_footer(trailer, footer).map_err(Error::Corrupt)
}

fn check_footer(trailer: &Trailer, footer: &[u8]) -> std::result::Result<Vec<PackEntry>, String> {
    if footer.len() as u64 != trailer.footer_len() {
        return Err(format!(
            "footer of {} bytes, trailer says {} entries",
            footer.len(),
            trailer.entry_count
        ));
    }
    if footer_checksum(footer, &trailer.encode_without_checksum()) != trailer.checksum {
        return Err("footer checksum mismatch".into());
    }
    let mut entries = Vec::with_capacity(trailer.entry_count as usize);
    let mut next_free = HEADER_LEN;
    for e in footer.chunks_exact(FOOTER_ENTRY_LEN as usize) {
        let id = ChunkId(e[0..32].try_into().unwrap());
        let loc = BlobLocation {
            offset: u64_at(e, 32),
            len: u32_at(e, 40),
        };
        let end = loc.offset.checked_add(loc.len as u64);
        if loc.offset < next_free + RECORD_HEADER_LEN
            || end.is_none_or(|x| x > trailer.footer_offset)
        {
            return Err(format!(
                "footer entry {} for chunk {id} at {}+{} is out of place",
                entries.len(),
                loc.offset,
                loc.len
            ));
        }
        next_free = end.unwrap();
        entries.push(PackEntry { id, loc });
    }
    Ok(entries)
}

/// Appends records to one pack file. Not shared between threads; the core serialises writers.
pub struct PackWriter {
    file: File,
    path: PathBuf,
    pack_id: u64,
    len: u64,
    entries: Vec<PackEntry>,
    /// Set when a failed write could not be undone; the pack then needs [`recover_unsealed`].
    broken: bool,
}

impl PackWriter {
    /// Creates a new pack (fails if `path` exists), writes its header and makes the file and
    /// its directory entry durable.
    pub fn create(path: &Path, pack_id: u64) -> Result<Self> {
        let ctx = |what: &str| format!("pack {}: {what}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(ctx("create"), e))?;
        file.write_all_at(&header_bytes(pack_id), 0)
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::io(ctx("write header"), e))?;
        fsync_parent(path)?;
        Ok(PackWriter {
            file,
            path: path.to_path_buf(),
            pack_id,
            len: HEADER_LEN,
            entries: Vec::new(),
            broken: false,
        })
    }

    /// Continues an unsealed pack after [`recover_unsealed`] returned `recovered` for it.
    /// Checks that the file still has that length and the expected pack id.
    pub fn reopen(path: &Path, pack_id: u64, recovered: RecoveredPack) -> Result<Self> {
        let ctx = |what: &str| format!("pack {}: {what}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(ctx("open"), e))?;
        let actual_id = read_header(&file, path)?;
        if actual_id != pack_id {
            return Err(Error::Corrupt(ctx(&format!(
                "holds pack id {actual_id}, expected {pack_id}"
            ))));
        }
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(ctx("stat"), e))?
            .len();
        let records_end = recovered
            .entries
            .last()
            .map_or(HEADER_LEN, |e| e.loc.offset + e.loc.len as u64);
        if file_len != recovered.valid_len || records_end != recovered.valid_len {
            return Err(Error::Invalid(ctx(&format!(
                "is {file_len} bytes, recovery result says {} (records end at {records_end})",
                recovered.valid_len
            ))));
        }
        Ok(PackWriter {
            file,
            path: path.to_path_buf(),
            pack_id,
            len: recovered.valid_len,
            entries: recovered.entries,
            broken: false,
        })
    }

    /// Appends one record and returns where its blob lies. Not durable until [`Self::sync`].
    /// On a write error (ENOSPC, say) the partial record is cut off again and the writer stays
    /// usable; if even that fails, every later call fails.
    pub fn append(&mut self, id: &ChunkId, blob: &[u8]) -> Result<BlobLocation> {
        self.check_usable()?;
        let len = u32::try_from(blob.len()).map_err(|_| {
            Error::Invalid(format!(
                "blob of {} bytes for chunk {id} is too large",
                blob.len()
            ))
        })?;
        let mut rh = [0u8; RECORD_HEADER_LEN as usize];
        rh[0..32].copy_from_slice(&id.0);
        rh[32..36].copy_from_slice(&len.to_le_bytes());
        let sum = record_checksum(&rh[0..36], blob);
        rh[36..48].copy_from_slice(&sum);

        let start = self.len;
        let blob_offset = start + RECORD_HEADER_LEN;
        let written = self
            .file
            .write_all_at(&rh, start)
            .and_then(|_| self.file.write_all_at(blob, blob_offset));
        if let Err(e) = written {
            if self.file.set_len(start).is_err() {
                self.broken = true;
            }
            return Err(Error::io(
                format!("pack {}: append chunk {id}", self.path.display()),
                e,
            ));
        }
        let loc = BlobLocation {
            offset: blob_offset,
            len,
        };
        self.len = blob_offset + len as u64;
        self.entries.push(PackEntry { id: *id, loc });
        start_writeback(&self.file, start, self.len - start);
        Ok(loc)
    }

    /// Current file length (header and records).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when no record has been appended yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    pub fn pack_id(&self) -> u64 {
        self.pack_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// fdatasync: every record appended so far is on stable storage when this returns.
    pub fn sync(&mut self) -> Result<()> {
        self.check_usable()?;
        self.file
            .sync_data()
            .map_err(|e| Error::io(format!("pack {}: fdatasync", self.path.display()), e))
    }

    /// Writes footer and trailer, fsyncs the file and its directory, and returns the final
    /// size. The pack is immutable afterwards.
    pub fn seal(self) -> Result<u64> {
        self.check_usable()?;
        let entry_count = u32::try_from(self.entries.len())
            .map_err(|_| Error::Invalid("too many entries for one pack".into()))?;
        let mut tail = Vec::with_capacity(
            (self.entries.len() as u64 * FOOTER_ENTRY_LEN + TRAILER_LEN) as usize,
        );
        for e in &self.entries {
            tail.extend_from_slice(&e.id.0);
            tail.extend_from_slice(&e.loc.offset.to_le_bytes());
            tail.extend_from_slice(&e.loc.len.to_le_bytes());
        }
        let trailer = Trailer {
            pack_id: self.pack_id,
            footer_offset: self.len,
            entry_count,
            checksum: [0; FOOTER_CHECKSUM_LEN],
        };
        let head = trailer.encode_without_checksum();
        let sum = footer_checksum(&tail, &head);
        tail.extend_from_slice(&head);
        tail.extend_from_slice(&sum);
        tail.extend_from_slice(&TRAILER_MAGIC);

        let ctx = |what: &str| format!("pack {}: {what}", self.path.display());
        self.file
            .write_all_at(&tail, self.len)
            .map_err(|e| Error::io(ctx("write footer"), e))?;
        self.file
            .sync_all()
            .map_err(|e| Error::io(ctx("fsync"), e))?;
        fsync_parent(&self.path)?;
        Ok(self.len + tail.len() as u64)
    }

    fn check_usable(&self) -> Result<()> {
        if self.broken {
            return Err(Error::Invalid(format!(
                "pack {}: writer unusable after a failed write; recover the pack",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// Reads exactly the blob at `loc` with one positioned read. `Error::Corrupt` if the file
/// ends first.
pub fn read_blob(file: &File, loc: BlobLocation) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; loc.len as usize];
    file.read_exact_at(&mut buf, loc.offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::Corrupt(format!(
                "blob at {}+{}: pack file is shorter",
                loc.offset, loc.len
            ))
        } else {
            Error::io(format!("reading blob at {}+{}", loc.offset, loc.len), e)
        }
    })?;
    Ok(buf)
}

/// Lists the blobs of a sealed pack from its trailer and footer (no key needed), reading only
/// those two from `file`. `Error::Corrupt` if the pack is not sealed or they do not verify.
pub fn read_footer(file: &File) -> Result<Vec<PackEntry>> {
    match sealed_entries(file)? {
        Ok(entries) => Ok(entries),
        Err(why) => Err(Error::Corrupt(why)),
    }
}

/// True if `file` ends in a trailer whose footer verifies. False for an unsealed pack and for
/// a torn or damaged seal ([`read_footer`] says why). Errors only on I/O failure.
pub fn is_sealed(file: &File) -> Result<bool> {
    Ok(sealed_entries(file)?.is_ok())
}

/// Outer error: I/O. Inner error: why the pack is not (validly) sealed.
fn sealed_entries(file: &File) -> Result<std::result::Result<Vec<PackEntry>, String>> {
    let file_len = file
        .metadata()
        .map_err(|e| Error::io("pack: stat", e))?
        .len();
    if file_len < HEADER_LEN + TRAILER_LEN {
        return Ok(Err(format!("pack of {file_len} bytes has no trailer")));
    }
    let mut tb = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut tb, file_len - TRAILER_LEN)
        .map_err(|e| Error::io("pack: read trailer", e))?;
    let trailer = match Trailer::try_parse(&tb) {
        Ok(t) => t,
        Err(why) => return Ok(Err(why)),
    };
    if trailer.footer_offset < HEADER_LEN
        || trailer.footer_offset.checked_add(trailer.footer_len()) != Some(file_len - TRAILER_LEN)
    {
        return Ok(Err(format!(
            "trailer puts {} footer entries at {} in a pack of {file_len} bytes",
            trailer.entry_count, trailer.footer_offset
        )));
    }
    let mut hb = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut hb, 0)
        .map_err(|e| Error::io("pack: read header", e))?;
    match parse_header(&hb) {
        Ok(id) if id == trailer.pack_id => {}
        Ok(id) => {
            return Ok(Err(format!(
                "header says pack {id}, trailer says {}",
                trailer.pack_id
            )))
        }
        Err(why) => return Ok(Err(why)),
    }
    let mut footer = vec![0u8; trailer.footer_len() as usize];
    file.read_exact_at(&mut footer, trailer.footer_offset)
        .map_err(|e| Error::io("pack: read footer", e))?;
    Ok(check_footer(&trailer, &footer))
}

/// Startup recovery of an unsealed pack after a crash: scans the records after the header,
/// stops at the first incomplete or failing one, truncates the file there (and fsyncs it), and
/// returns the complete records. Refuses (`Error::Invalid`) a validly sealed pack, which must
/// never be truncated; check [`is_sealed`] first.
pub fn recover_unsealed(path: &Path) -> Result<RecoveredPack> {
    let ctx = |what: &str| format!("pack {}: {what}", path.display());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(ctx("open"), e))?;
    if is_sealed(&file)? {
        return Err(Error::Invalid(ctx(
            "is sealed; recovery applies to unsealed packs",
        )));
    }
    read_header(&file, path)?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(ctx("stat"), e))?
        .len();

    let mut entries = Vec::new();
    let mut pos = HEADER_LEN;
    let mut buf = vec![0u8; 1 << 20];
    while pos + RECORD_HEADER_LEN <= file_len {
        let mut rh = [0u8; RECORD_HEADER_LEN as usize];
        file.read_exact_at(&mut rh, pos)
            .map_err(|e| Error::io(ctx("read record"), e))?;
        let len = u32_at(&rh, 32);
        let blob_offset = pos + RECORD_HEADER_LEN;
        let end = blob_offset + len as u64;
        if end > file_len {
            break;
        }
        // Stream the blob through the hash: a garbage length may be large.
        let mut h = blake3::Hasher::new();
        h.update(&rh[0..36]);
        let mut off = blob_offset;
        while off < end {
            let n = buf.len().min((end - off) as usize);
            file.read_exact_at(&mut buf[..n], off)
                .map_err(|e| Error::io(ctx("read record"), e))?;
            h.update(&buf[..n]);
            off += n as u64;
        }
        if h.finalize().as_bytes()[..RECORD_CHECKSUM_LEN] != rh[36..48] {
            break;
        }
        entries.push(PackEntry {
            id: ChunkId(rh[0..32].try_into().unwrap()),
            loc: BlobLocation {
                offset: blob_offset,
                len,
            },
        });
        pos = end;
    }
    if pos < file_len {
        file.set_len(pos)
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(ctx("truncate torn tail"), e))?;
    }
    Ok(RecoveredPack {
        entries,
        valid_len: pos,
        truncated_bytes: file_len - pos,
    })
}

/// File (and object) name of a pack: 16 lowercase hex digits, e.g. `0000000000000001.pack`.
pub fn pack_file_name(pack_id: u64) -> String {
    format!("{pack_id:016x}.pack")
}

fn header_bytes(pack_id: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&PACK_MAGIC);
    h[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&pack_id.to_le_bytes());
    h
}

fn parse_header(h: &[u8; HEADER_LEN as usize]) -> std::result::Result<u64, String> {
    if h[0..8] != PACK_MAGIC {
        return Err("not a pack (bad magic)".into());
    }
    let version = u32_at(h, 8);
    if version != PACK_VERSION {
        return Err(format!(
            "unsupported pack version {version} (this build reads {PACK_VERSION})"
        ));
    }
    if u32_at(h, 12) != 0 {
        return Err("reserved header bytes are not zero".into());
    }
    Ok(u64_at(h, 16))
}

/// Reads and checks the header; returns the pack id.
fn read_header(file: &File, path: &Path) -> Result<u64> {
    let mut h = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut h, 0).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::Corrupt(format!(
                "pack {}: header incomplete (crash during create; the pack holds no data)",
                path.display()
            ))
        } else {
            Error::io(format!("pack {}: read header", path.display()), e)
        }
    })?;
    parse_header(&h).map_err(|why| Error::Corrupt(format!("pack {}: {why}", path.display())))
}

fn record_checksum(id_and_len: &[u8], blob: &[u8]) -> [u8; RECORD_CHECKSUM_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(id_and_len);
    h.update(blob);
    h.finalize().as_bytes()[..RECORD_CHECKSUM_LEN]
        .try_into()
        .unwrap()
}

fn footer_checksum(footer: &[u8], trailer_head: &[u8; 24]) -> [u8; FOOTER_CHECKSUM_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(footer);
    h.update(trailer_head);
    h.finalize().as_bytes()[..FOOTER_CHECKSUM_LEN]
        .try_into()
        .unwrap()
}

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to the disk now, without
/// waiting. A commit fsyncs its pack before naming the new records in metadata; without this
/// the disk would start on a piece's data only at that fsync, and the commit would wait for all
/// of it there instead of encoding while the disk writes. Advisory: a failure changes nothing
/// (the fsync still makes the data durable and reports errors).
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn blob(n: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ n).collect()
    }

    fn open(path: &Path) -> File {
        File::open(path).unwrap()
    }

    #[test]
    fn file_names() {
        assert_eq!(pack_file_name(1), "0000000000000001.pack");
        assert_eq!(pack_file_name(u64::MAX), "ffffffffffffffff.pack");
    }

    #[test]
    fn append_read_seal_footer_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(pack_file_name(5));
        let mut w = PackWriter::create(&path, 5).unwrap();
        assert!(w.is_empty());
        assert_eq!(w.len(), HEADER_LEN);
        let blobs: Vec<Vec<u8>> = (0..10).map(|i| blob(i, 100 + i as usize * 1000)).collect();
        let mut locs = Vec::new();
        for (i, b) in blobs.iter().enumerate() {
            locs.push(w.append(&id(i as u8), b).unwrap());
        }
        // Empty blobs are legal records.
        locs.push(w.append(&id(99), &[]).unwrap());
        w.sync().unwrap();
        assert_eq!(w.entries().len(), 11);
        assert!(!is_sealed(&open(&path)).unwrap());
        for (b, loc) in blobs.iter().zip(&locs) {
            assert_eq!(&read_blob(&open(&path), *loc).unwrap(), b);
        }
        let entries = w.entries().to_vec();
        let size = w.seal().unwrap();

        let f = open(&path);
        assert_eq!(f.metadata().unwrap().len(), size);
        assert!(is_sealed(&f).unwrap());
        assert_eq!(read_footer(&f).unwrap(), entries);
        for (b, loc) in blobs.iter().zip(&locs) {
            assert_eq!(&read_blob(&f, *loc).unwrap(), b);
        }
        // The same via the ranged-request helpers.
        let bytes = std::fs::read(&path).unwrap();
        let t = Trailer::parse(&bytes[bytes.len() - TRAILER_LEN as usize..]).unwrap();
        assert_eq!(t.pack_id, 5);
        let footer = &bytes[t.footer_offset as usize..(t.footer_offset + t.footer_len()) as usize];
        assert_eq!(parse_footer(&t, footer).unwrap(), entries);
        // A sealed pack is never truncated by recovery.
        assert!(matches!(recover_unsealed(&path), Err(Error::Invalid(_))));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    }

    #[test]
    fn empty_pack_seals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.pack");
        let size = PackWriter::create(&path, 1).unwrap().seal().unwrap();
        assert_eq!(size, HEADER_LEN + TRAILER_LEN);
        assert_eq!(read_footer(&open(&path)).unwrap(), vec![]);
    }

    #[test]
    fn create_refuses_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pack");
        PackWriter::create(&path, 1).unwrap();
        assert!(matches!(
            PackWriter::create(&path, 1),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn read_blob_past_end_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pack");
        let mut w = PackWriter::create(&path, 1).unwrap();
        let loc = w.append(&id(1), &blob(1, 50)).unwrap();
        let beyond = BlobLocation {
            offset: loc.offset,
            len: loc.len + 1,
        };
        assert!(matches!(
            read_blob(&open(&path), beyond),
            Err(Error::Corrupt(_))
        ));
    }

    /// Writes a pack with `n` complete records (sizes from `sizes`) and returns its bytes.
    fn unsealed_bytes(dir: &Path, sizes: &[usize]) -> (Vec<u8>, Vec<PackEntry>) {
        let path = dir.join("src.pack");
        let _ = std::fs::remove_file(&path);
        let mut w = PackWriter::create(&path, 9).unwrap();
        for (i, &s) in sizes.iter().enumerate() {
            w.append(&id(i as u8 + 1), &blob(i as u8, s)).unwrap();
        }
        let entries = w.entries().to_vec();
        drop(w);
        (std::fs::read(&path).unwrap(), entries)
    }

    #[test]
    fn recovery_keeps_exactly_complete_records_at_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (full, entries) = unsealed_bytes(dir.path(), &[300, 17, 200]);
        let last_start = (entries[1].loc.offset + entries[1].loc.len as u64) as usize;
        let path = dir.path().join("cut.pack");
        for cut in last_start..=full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let r = recover_unsealed(&path).unwrap();
            let complete = if cut == full.len() { 3 } else { 2 };
            assert_eq!(r.entries, entries[..complete], "cut at {cut}");
            let expect_len = if complete == 3 {
                full.len()
            } else {
                last_start
            } as u64;
            assert_eq!(r.valid_len, expect_len, "cut at {cut}");
            assert_eq!(r.truncated_bytes, cut as u64 - expect_len);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), expect_len);
        }
    }

    #[test]
    fn recovery_drops_garbage_tails_and_damaged_records() {
        let dir = tempfile::tempdir().unwrap();
        let (full, entries) = unsealed_bytes(dir.path(), &[300, 17, 200]);
        let path = dir.path().join("g.pack");
        let tails: [Vec<u8>; 4] = [
            vec![0; 5000],
            vec![0xff; 100],
            (0..4096u32).map(|i| (i * 7 + 3) as u8).collect(),
            // A plausible record header whose checksum does not match.
            {
                let mut t = id(42).0.to_vec();
                t.extend_from_slice(&4u32.to_le_bytes());
                t.extend_from_slice(&[0; 12]);
                t.extend_from_slice(b"abcd");
                t
            },
        ];
        for tail in tails {
            let mut bytes = full.clone();
            bytes.extend_from_slice(&tail);
            std::fs::write(&path, &bytes).unwrap();
            let r = recover_unsealed(&path).unwrap();
            assert_eq!(r.entries, entries);
            assert_eq!(r.truncated_bytes, tail.len() as u64);
        }
        // A flipped byte inside the second record's blob ends the scan there.
        let mut bytes = full.clone();
        bytes[entries[1].loc.offset as usize + 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let r = recover_unsealed(&path).unwrap();
        assert_eq!(r.entries, entries[..1]);
    }

    #[test]
    fn recovery_of_torn_seal_then_reopen_and_seal_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.pack");
        let mut w = PackWriter::create(&path, 3).unwrap();
        w.append(&id(1), &blob(1, 1000)).unwrap();
        w.append(&id(2), &blob(2, 500)).unwrap();
        let entries = w.entries().to_vec();
        let records_end = w.len();
        let sealed_len = w.seal().unwrap();
        // Lose the last byte of the trailer: the seal no longer verifies.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(sealed_len - 1).unwrap();
        assert!(!is_sealed(&open(&path)).unwrap());
        assert!(matches!(read_footer(&open(&path)), Err(Error::Corrupt(_))));

        let r = recover_unsealed(&path).unwrap();
        assert_eq!(r.entries, entries);
        assert_eq!(r.valid_len, records_end);
        let mut w = PackWriter::reopen(&path, 3, r.clone()).unwrap();
        assert_eq!(w.len(), records_end);
        let loc = w.append(&id(3), &blob(3, 10)).unwrap();
        assert_eq!(loc.offset, records_end + RECORD_HEADER_LEN);
        w.seal().unwrap();
        let listed = read_footer(&open(&path)).unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(&listed[..2], &entries[..]);
        assert_eq!(read_blob(&open(&path), loc).unwrap(), blob(3, 10));

        // Reopen checks the pack id and that the file matches the recovery result.
        assert!(PackWriter::reopen(&path, 4, r.clone()).is_err());
    }

    #[test]
    fn recovery_refuses_foreign_or_headless_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.pack");
        std::fs::write(&path, &header_bytes(1)[..10]).unwrap();
        let err = recover_unsealed(&path).unwrap_err();
        assert!(err.to_string().contains("header incomplete"), "{err}");
        std::fs::write(&path, b"definitely not a pack file at all").unwrap();
        assert!(matches!(recover_unsealed(&path), Err(Error::Corrupt(_))));
        // Neither was modified.
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"definitely not a pack file at all"
        );
    }

    #[test]
    fn damaged_footer_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.pack");
        let mut w = PackWriter::create(&path, 8).unwrap();
        w.append(&id(1), &blob(1, 64)).unwrap();
        w.append(&id(2), &blob(2, 64)).unwrap();
        let footer_start = w.len() as usize;
        w.seal().unwrap();
        let good = std::fs::read(&path).unwrap();
        for i in footer_start..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(read_footer(&open(&path)).is_err(), "byte {i}");
            assert!(!is_sealed(&open(&path)).unwrap());
        }
    }

    // ---------------------------------------------------------------------------------------
    // Golden vector. Do not change: pins the pack layout (header, records, footer, trailer).
    // ---------------------------------------------------------------------------------------

    /// blake3 of pack 0x0102030405060708 holding three fixed records, sealed.
    const GOLDEN_PACK_BLAKE3: &str =
        "597dc5f5ced950a30e94c559bb610b515cf8cd0801e8bf3f4de6af323e4e3be5";

    #[test]
    fn golden_pack_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(pack_file_name(0x0102_0304_0506_0708));
        let mut w = PackWriter::create(&path, 0x0102_0304_0506_0708).unwrap();
        w.append(&id(0xa1), b"first blob").unwrap();
        w.append(&id(0xb2), &[]).unwrap();
        w.append(&id(0xc3), &[0x5a; 300]).unwrap();
        let size = w.seal().unwrap();
        assert_eq!(size, 24 + (48 + 10) + 48 + (48 + 300) + 3 * 44 + 48);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), GOLDEN_PACK_BLAKE3);
        let entries = read_footer(&open(&path)).unwrap();
        assert_eq!(
            entries[2].loc,
            BlobLocation {
                offset: 24 + 58 + 48 + 48,
                len: 300
            }
        );
    }
}

//! The metadata journal: every change to the metadata store, in order, so that it can be shipped
//! off-site as it happens and replayed on a replacement appliance.
//!
//! [`JournaledKv`] wraps the metadata store. Every batch the volume applies is also recorded as a
//! journal entry (key `J` + sequence number) *in the same atomic batch*, so an entry exists
//! exactly when its change does. Entries are full puts and deletes, so replaying them in order on
//! top of any state that already contains some of them gives the same result (this is what makes
//! checkpoints taken without a store snapshot correct: see [`Checkpoint`]).
//!
//! Keys tagged `L` are local bookkeeping (where shipping stands, which appliance this is) and are
//! neither journaled nor part of a checkpoint; `J` keys are the journal itself.
//!
//! Off-site objects (under `meta/`, encrypted with the volume's metadata key, AES-256-GCM, the
//! header as associated data, zstd-compressed inside):
//! - `meta/journal/<first>-<last>.seg`: entries `first..=last` (16 hex digits each);
//! - `meta/checkpoint/<end>-<start>.ckpt`: every non-local key/value pair, read between journal
//!   positions `start` and `end`; recovery loads it and replays the entries after `start`;
//! - `meta/head/<generation>.head`: the newest consistency point the appliance shipped, with
//!   the checkpoint it builds on and the digest of `volume.toml` ([`Head`]). Its generation
//!   grows with every head written, and sits in the authenticated header, so an old head
//!   copied under a newer name is refused; recovery refuses to stop short of the newest one.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use parking_lot::Mutex;

use crate::backend::layout::{CHECKPOINT_PREFIX, HEAD_PREFIX, JOURNAL_PREFIX};
use crate::crypto::Keys;
use crate::error::{Error, Result};
use crate::kv::{prefix_end, Batch, KvPair, KvStore};

pub const TAG_JOURNAL: u8 = b'J';
pub const TAG_LOCAL: u8 = b'L';

const SEGMENT_MAGIC: [u8; 8] = *b"TGMSEG\0\0";
const CHECKPOINT_MAGIC: [u8; 8] = *b"TGMCKPT\0";
const HEAD_MAGIC: [u8; 8] = *b"TGMHEAD\0";
const FORMAT_VERSION: u32 = 1;
/// magic (8) + version (4) + two positions (16) + nonce (12).
const HEADER_LEN: usize = 40;
const TAG_LEN: usize = 16;

/// A journal entry: its position and its encoded operations.
pub type Entry = (u64, Vec<u8>);

pub fn journal_key(seq: u64) -> Vec<u8> {
    let mut k = vec![TAG_JOURNAL];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A local-only bookkeeping key (not journaled, not checkpointed).
pub fn local_key(name: &str) -> Vec<u8> {
    let mut k = vec![TAG_LOCAL];
    k.extend_from_slice(name.as_bytes());
    k
}

/// Local key: the newest journal position that is off-site (segments and the packs they name).
pub const CONSISTENCY_POINT: &str = "journal.consistency_point";
/// Local key: when the consistency point last advanced (Unix seconds).
pub const CONSISTENCY_POINT_TIME: &str = "journal.consistency_point_unix";

fn is_journaled(key: &[u8]) -> bool {
    !matches!(key.first(), Some(&TAG_JOURNAL) | Some(&TAG_LOCAL))
}

/// Encodes the journaled operations of a batch: count, then per op key length, key, a put flag,
/// value length and value (little-endian u32 lengths).
fn encode_ops<'a>(ops: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>) -> (Vec<u8>, usize) {
    let mut out = vec![0u8; 4];
    let mut n = 0u32;
    for (k, v) in ops.filter(|(k, _)| is_journaled(k)) {
        n += 1;
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        match v {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    out[..4].copy_from_slice(&n.to_le_bytes());
    (out, n as usize)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::Corrupt("journal record cut short".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

/// The batch a journal entry records.
pub fn decode_entry(entry: &[u8]) -> Result<Batch> {
    let mut c = Cursor(entry);
    let n = c.u32()?;
    let mut b = Batch::default();
    for _ in 0..n {
        let klen = c.u32()? as usize;
        let k = c.take(klen)?.to_vec();
        match c.take(1)?[0] {
            1 => {
                let vlen = c.u32()? as usize;
                b.put(k, c.take(vlen)?.to_vec());
            }
            0 => b.delete(k),
            _ => return Err(Error::Corrupt("journal record: bad operation".into())),
        }
    }
    if !c.0.is_empty() {
        return Err(Error::Corrupt("journal record: trailing bytes".into()));
    }
    Ok(b)
}

/// The metadata store, journaling every batch (see the module docs).
pub struct JournaledKv<S: KvStore> {
    inner: S,
    /// The last sequence number given out; held while a batch is applied, so entries are
    /// numbered in the order their changes were applied.
    seq: Mutex<u64>,
    /// When the oldest change not yet shipped was made (None: everything is shipped, as far as
    /// this process knows; after a restart the first shipping round sets it right).
    oldest_unshipped: Mutex<Option<std::time::SystemTime>>,
}

impl<S: KvStore> JournaledKv<S> {
    pub fn new(inner: S) -> Result<Self> {
        let last_entry = inner
            .last_in(&[TAG_JOURNAL], &journal_key(u64::MAX))?
            .map(|(k, _)| crate::meta::key_tail_u64(&k))
            .unwrap_or(0);
        let shipped = read_u64(&inner, CONSISTENCY_POINT)?;
        Ok(JournaledKv {
            inner,
            seq: Mutex::new(last_entry.max(shipped)),
            oldest_unshipped: Mutex::new((last_entry > shipped).then(std::time::SystemTime::now)),
        })
    }

    /// The position of the newest change.
    pub fn last_seq(&self) -> u64 {
        *self.seq.lock()
    }

    /// Entries after `after`, in order, until their total size passes `max_bytes` (at least
    /// one entry if there is any).
    pub fn entries_after(&self, after: u64, max_bytes: usize) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut size = 0;
        let mut start = journal_key(after.saturating_add(1));
        let end = prefix_end(&[TAG_JOURNAL]);
        'pages: loop {
            let page = self.inner.range_limit(&start, end.as_deref(), 256)?;
            let Some(last) = page.last() else { break };
            start = [last.0.as_slice(), &[0]].concat();
            for (k, v) in page {
                size += v.len();
                out.push((crate::meta::key_tail_u64(&k), v));
                if size >= max_bytes {
                    break 'pages;
                }
            }
        }
        Ok(out)
    }

    /// Records that everything up to `seq` is off-site and forgets those entries.
    pub fn shipped_through(&self, seq: u64) -> Result<()> {
        let mut b = Batch::default();
        b.put(local_key(CONSISTENCY_POINT), seq.to_le_bytes().to_vec());
        let now = std::time::SystemTime::now();
        let unix = crate::meta::unix_secs(now);
        b.put(
            local_key(CONSISTENCY_POINT_TIME),
            unix.to_le_bytes().to_vec(),
        );
        self.inner.apply(b)?;
        self.inner.flush()?;
        {
            let mut oldest = self.oldest_unshipped.lock();
            // Changes after `seq` are younger than this shipping round: count from now.
            *oldest = (self.last_seq() > seq).then_some(now);
        }
        loop {
            let page = self
                .inner
                .range_limit(&[TAG_JOURNAL], Some(&journal_key(seq + 1)), 1000)?;
            if page.is_empty() {
                return Ok(());
            }
            let mut b = Batch::default();
            for (k, _) in page {
                b.delete(k);
            }
            self.inner.apply(b)?;
        }
    }

    /// When the consistency point was last advanced (Unix seconds; 0: never).
    pub fn consistency_point_time(&self) -> Result<u64> {
        read_u64(&self.inner, CONSISTENCY_POINT_TIME)
    }

    /// When the oldest change that is not yet off-site was made.
    pub fn oldest_unshipped(&self) -> Option<std::time::SystemTime> {
        *self.oldest_unshipped.lock()
    }

    /// The consistency point: the newest position whose changes are all off-site.
    pub fn consistency_point(&self) -> Result<u64> {
        read_u64(&self.inner, CONSISTENCY_POINT)
    }

    /// Applies a batch without journaling it (local bookkeeping only: `L` keys).
    pub fn apply_local(&self, batch: Batch) -> Result<()> {
        debug_assert!(batch.ops().all(|(k, _)| !is_journaled(k)));
        self.inner.apply(batch)
    }
}

fn read_u64(kv: &dyn KvStore, name: &str) -> Result<u64> {
    Ok(match kv.get(&local_key(name))? {
        Some(v) => u64::from_le_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| Error::Corrupt(format!("local record {name}")))?,
        ),
        None => 0,
    })
}

impl<S: KvStore> KvStore for JournaledKv<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn range(&self, start: &[u8], end: Option<&[u8]>) -> Result<Vec<KvPair>> {
        self.inner.range(start, end)
    }
    fn range_limit(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KvPair>> {
        self.inner.range_limit(start, end, limit)
    }
    fn last_in(&self, lower: &[u8], at: &[u8]) -> Result<Option<KvPair>> {
        self.inner.last_in(lower, at)
    }
    fn apply(&self, mut batch: Batch) -> Result<()> {
        let (entry, n) = encode_ops(batch.ops());
        if n == 0 {
            return self.inner.apply(batch);
        }
        let mut seq = self.seq.lock();
        batch.put(journal_key(*seq + 1), entry);
        self.inner.apply(batch)?;
        *seq += 1;
        drop(seq);
        self.oldest_unshipped
            .lock()
            .get_or_insert_with(std::time::SystemTime::now);
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn size_on_disk(&self) -> Result<u64> {
        self.inner.size_on_disk()
    }
}

// ---------------------------------------------------------------------- off-site objects

fn cipher(keys: &Keys) -> Aes256Gcm {
    Aes256Gcm::new(keys.meta_key().into())
}

fn seal(keys: &Keys, magic: [u8; 8], a: u64, b: u64, plain: &[u8]) -> Vec<u8> {
    let nonce: [u8; 12] = rand::random();
    let mut out = Vec::with_capacity(HEADER_LEN + plain.len() / 2 + TAG_LEN);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    out.extend_from_slice(&nonce);
    let mut body = zstd::bulk::compress(plain, 3).expect("zstd compress to memory");
    let tag = cipher(keys)
        .encrypt_inout_detached(&Nonce::from(nonce), &out, body.as_mut_slice().into())
        .expect("AES-GCM encryption");
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    out
}

fn open(keys: &Keys, magic: [u8; 8], what: &str, obj: &[u8]) -> Result<(u64, u64, Vec<u8>)> {
    let bad = |why: &str| Error::Corrupt(format!("{what}: {why}"));
    if obj.len() < HEADER_LEN + TAG_LEN || obj[..8] != magic {
        return Err(bad("not a tiergate metadata object of this kind"));
    }
    let mut c = Cursor(&obj[8..HEADER_LEN]);
    let version = c.u32()?;
    if version != FORMAT_VERSION {
        return Err(bad(&format!("format version {version} is not supported")));
    }
    let (a, b) = (c.u64()?, c.u64()?);
    let (header, rest) = obj.split_at(HEADER_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut body = body.to_vec();
    cipher(keys)
        .decrypt_inout_detached(
            &Nonce::try_from(&header[28..40]).expect("12-byte nonce"),
            header,
            body.as_mut_slice().into(),
            &Tag::try_from(tag).expect("tag slice of TAG_LEN"),
        )
        .map_err(|_| bad("does not decrypt with this volume's key (damaged, or another volume)"))?;
    let plain = zstd::stream::decode_all(body.as_slice()).map_err(|e| bad(&e.to_string()))?;
    Ok((a, b, plain))
}

/// Entries `first..=last` of the journal as one sealed object.
pub fn seal_segment(keys: &Keys, entries: &[Entry]) -> Vec<u8> {
    let first = entries.first().map_or(0, |e| e.0);
    let last = entries.last().map_or(0, |e| e.0);
    let mut plain = Vec::new();
    for (seq, e) in entries {
        plain.extend_from_slice(&seq.to_le_bytes());
        plain.extend_from_slice(&(e.len() as u32).to_le_bytes());
        plain.extend_from_slice(e);
    }
    seal(keys, SEGMENT_MAGIC, first, last, &plain)
}

/// A journal segment fetched back: its entries, checked to be exactly `first..=last` in order.
pub fn open_segment(keys: &Keys, obj: &[u8]) -> Result<(u64, u64, Vec<Entry>)> {
    let (first, last, plain) = open(keys, SEGMENT_MAGIC, "journal segment", obj)?;
    let mut c = Cursor(&plain);
    let mut entries = Vec::new();
    let mut expect = first;
    while !c.0.is_empty() {
        let seq = c.u64()?;
        let len = c.u32()? as usize;
        if seq != expect {
            return Err(Error::Corrupt(format!(
                "journal segment {first}-{last}: entry {seq} where {expect} was expected"
            )));
        }
        entries.push((seq, c.take(len)?.to_vec()));
        expect += 1;
    }
    if expect != last + 1 {
        return Err(Error::Corrupt(format!(
            "journal segment {first}-{last} ends at {}",
            expect - 1
        )));
    }
    Ok((first, last, entries))
}

pub fn segment_key(first: u64, last: u64) -> String {
    format!("{JOURNAL_PREFIX}{first:016x}-{last:016x}.seg")
}

pub fn checkpoint_key(start: u64, end: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{end:016x}-{start:016x}.ckpt")
}

/// The two positions in a segment or checkpoint key (first/last, or end/start).
pub fn parse_key_range(key: &str) -> Option<(u64, u64)> {
    let name = key.rsplit('/').next()?;
    let stem = name.split('.').next()?;
    let (a, b) = stem.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

pub fn head_key(generation: u64) -> String {
    format!("{HEAD_PREFIX}{generation:016x}.head")
}

/// The generation in a head's key.
pub fn parse_head_key(key: &str) -> Option<u64> {
    let stem = key.strip_prefix(HEAD_PREFIX)?.strip_suffix(".head")?;
    (stem.len() == 16)
        .then(|| u64::from_str_radix(stem, 16).ok())
        .flatten()
}

/// The newest consistency point an appliance shipped, authenticated with the metadata key:
/// what a recovery must reach. Written after every segment and checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Grows by one (at least) with every head written, across appliances of the volume.
    pub generation: u64,
    /// The consistency point: the last journal position whose segment is in the bucket.
    pub point: u64,
    /// The newest checkpoint in the bucket when it was written (start, end).
    pub checkpoint: (u64, u64),
    /// When it was written (Unix seconds).
    pub written_unix: u64,
    /// [`crate::volume::VolumeInfo::digest`] of the volume's config.
    pub volume_digest: [u8; 32],
}

impl Head {
    pub fn seal(&self, keys: &Keys) -> Vec<u8> {
        let mut plain = Vec::with_capacity(56);
        plain.extend_from_slice(&self.checkpoint.0.to_le_bytes());
        plain.extend_from_slice(&self.checkpoint.1.to_le_bytes());
        plain.extend_from_slice(&self.written_unix.to_le_bytes());
        plain.extend_from_slice(&self.volume_digest);
        seal(keys, HEAD_MAGIC, self.generation, self.point, &plain)
    }

    /// Opens the head stored under `key`, checking that the name carries its generation.
    pub fn open(keys: &Keys, key: &str, obj: &[u8]) -> Result<Head> {
        let (generation, point, plain) = open(keys, HEAD_MAGIC, "metadata head", obj)?;
        if parse_head_key(key) != Some(generation) {
            return Err(Error::Corrupt(format!(
                "{key}: its header says generation {generation} (renamed or copied)"
            )));
        }
        let mut c = Cursor(&plain);
        let checkpoint = (c.u64()?, c.u64()?);
        let written_unix = c.u64()?;
        let volume_digest: [u8; 32] = c.take(32)?.try_into().expect("32 bytes");
        if !c.0.is_empty() {
            return Err(Error::Corrupt(format!("{key}: trailing bytes")));
        }
        Ok(Head {
            generation,
            point,
            checkpoint,
            written_unix,
            volume_digest,
        })
    }
}

/// A compact copy of the whole metadata store (without local and journal keys).
///
/// It is read while the volume keeps changing, so it holds some mix of the states between
/// journal positions `start` (read before the first key) and `end` (after the last). Replaying
/// every entry after `start` on top of it yields exactly the state at the replay's end, because
/// entries are whole puts and deletes applied in their original order.
pub struct Checkpoint {
    pub start: u64,
    pub end: u64,
    pub pairs: Vec<KvPair>,
}

impl Checkpoint {
    /// Reads the store (paged) between two journal positions.
    pub fn take<S: KvStore>(kv: &JournaledKv<S>) -> Result<Checkpoint> {
        let start = kv.last_seq();
        let mut pairs = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let page = kv.inner.range_limit(&from, None, 4096)?;
            let Some(last) = page.last() else { break };
            from = [last.0.as_slice(), &[0]].concat();
            pairs.extend(page.into_iter().filter(|(k, _)| is_journaled(k)));
        }
        let end = kv.last_seq();
        Ok(Checkpoint { start, end, pairs })
    }

    pub fn seal(&self, keys: &Keys) -> Vec<u8> {
        let mut plain = Vec::new();
        for (k, v) in &self.pairs {
            plain.extend_from_slice(&(k.len() as u32).to_le_bytes());
            plain.extend_from_slice(k);
            plain.extend_from_slice(&(v.len() as u32).to_le_bytes());
            plain.extend_from_slice(v);
        }
        seal(keys, CHECKPOINT_MAGIC, self.start, self.end, &plain)
    }

    pub fn open(keys: &Keys, obj: &[u8]) -> Result<Checkpoint> {
        let (start, end, plain) = open(keys, CHECKPOINT_MAGIC, "metadata checkpoint", obj)?;
        let mut c = Cursor(&plain);
        let mut pairs = Vec::new();
        while !c.0.is_empty() {
            let klen = c.u32()? as usize;
            let k = c.take(klen)?.to_vec();
            let vlen = c.u32()? as usize;
            pairs.push((k, c.take(vlen)?.to_vec()));
        }
        Ok(Checkpoint { start, end, pairs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::SledStore;

    fn keys() -> Keys {
        crate::crypto::MasterKey::from_bytes([7; 32]).subkeys()
    }

    #[test]
    fn every_batch_is_journaled_in_order_and_replays_to_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let kv = JournaledKv::new(SledStore::open(dir.path(), 1 << 20).unwrap()).unwrap();
        // A state from before journaling (a volume created by an older version): only a
        // checkpoint carries it.
        let mut b = Batch::default();
        b.put(b"Mold".to_vec(), b"1".to_vec());
        kv.inner.apply(b).unwrap();
        let ckpt = Checkpoint::take(&kv).unwrap();
        for i in 0..50u32 {
            let mut b = Batch::default();
            b.put(format!("I{i:04}").into_bytes(), i.to_le_bytes().to_vec());
            if i % 7 == 0 {
                b.delete(format!("I{:04}", i / 2).into_bytes());
            }
            b.put(local_key("ignored"), vec![1]);
            kv.apply(b).unwrap();
        }
        let mut lb = Batch::default();
        lb.put(local_key("only-local"), vec![2]);
        kv.apply(lb).unwrap();
        assert_eq!(kv.last_seq(), 50, "local-only batches take no position");

        // Ship in two segments, then replay checkpoint + segments into a fresh store.
        let k = keys();
        let a = kv.entries_after(0, 200).unwrap();
        let seg1 = seal_segment(&k, &a);
        let after = a.last().unwrap().0;
        let b2 = kv.entries_after(after, usize::MAX).unwrap();
        assert_eq!(b2.last().unwrap().0, 50);
        let seg2 = seal_segment(&k, &b2);
        kv.shipped_through(50).unwrap();
        assert!(kv.entries_after(0, usize::MAX).unwrap().is_empty());
        assert_eq!(kv.consistency_point().unwrap(), 50);

        let dir2 = tempfile::tempdir().unwrap();
        let fresh = SledStore::open(dir2.path(), 1 << 20).unwrap();
        let c = Checkpoint::open(&k, &ckpt.seal(&k)).unwrap();
        let mut b = Batch::default();
        for (key, v) in c.pairs {
            b.put(key, v);
        }
        fresh.apply(b).unwrap();
        for seg in [seg1, seg2] {
            let (_, _, entries) = open_segment(&k, &seg).unwrap();
            for (seq, e) in entries {
                if seq > c.start {
                    fresh.apply(decode_entry(&e).unwrap()).unwrap();
                }
            }
        }
        let visible = |s: &dyn KvStore| -> Vec<KvPair> {
            s.range(b"", None)
                .unwrap()
                .into_iter()
                .filter(|(k, _)| is_journaled(k))
                .collect()
        };
        assert_eq!(visible(&fresh), visible(&kv));
        assert!(fresh.get(b"Mold").unwrap().is_some());

        // Reopening continues the numbering after the consistency point.
        drop(kv);
        let kv = JournaledKv::new(SledStore::open(dir.path(), 1 << 20).unwrap()).unwrap();
        assert_eq!(kv.last_seq(), 50);
    }

    #[test]
    fn heads_round_trip_and_refuse_renaming_and_other_kinds() {
        let k = keys();
        let h = Head {
            generation: 41,
            point: 13_978,
            checkpoint: (1_000, 1_010),
            written_unix: 1_795_000_000,
            volume_digest: [3; 32],
        };
        let obj = h.seal(&k);
        assert_eq!(Head::open(&k, &head_key(41), &obj).unwrap(), h);
        assert_eq!(parse_head_key(&head_key(41)), Some(41));
        // An old head copied under a newer name.
        let err = Head::open(&k, &head_key(42), &obj).unwrap_err();
        assert!(err.to_string().contains("generation 41"), "{err}");
        // Another volume's key, a segment under a head's name, junk.
        let other = crate::crypto::MasterKey::from_bytes([8; 32]).subkeys();
        assert!(Head::open(&other, &head_key(41), &obj).is_err());
        let seg = seal_segment(&k, &[(41, b"x".to_vec())]);
        assert!(Head::open(&k, &head_key(41), &seg).is_err());
        assert!(Head::open(&k, &head_key(41), &[0u8; 100]).is_err());
        assert_eq!(parse_head_key("meta/head/xyz.head"), None);
    }

    #[test]
    fn damaged_or_foreign_objects_are_refused() {
        let k = keys();
        let seg = seal_segment(&k, &[(5, b"x".to_vec()), (6, b"y".to_vec())]);
        assert_eq!(open_segment(&k, &seg).unwrap().0, 5);
        let mut bad = seg.clone();
        let n = bad.len();
        bad[n / 2] ^= 1;
        assert!(open_segment(&k, &bad).is_err());
        let other = crate::crypto::MasterKey::from_bytes([8; 32]).subkeys();
        assert!(open_segment(&other, &seg).is_err());
        assert!(open_segment(&k, &seg[..seg.len() - 1]).is_err());
        // A checkpoint is not a segment.
        let c = Checkpoint {
            start: 1,
            end: 2,
            pairs: vec![],
        };
        assert!(open_segment(&k, &c.seal(&k)).is_err());
        assert_eq!(
            parse_key_range(&segment_key(0x10, 0x2f)),
            Some((0x10, 0x2f))
        );
        assert_eq!(parse_key_range(&checkpoint_key(3, 9)), Some((9, 3)));
    }
}

//! `tiergate recover`: rebuild a lost appliance's volume from the bucket and the passphrase.
//!
//! Reads the volume and key objects (a wrong passphrase stops here, before anything is
//! written), the newest metadata checkpoint and the journal segments after it, and writes a new
//! volume directory: the metadata store as of the consistency point (the last shipped segment),
//! every pack marked off-site only (data is fetched when read), and the volume and key files.
//! `volume.toml` is written last, so an interrupted recovery leaves no half volume that `serve`
//! would open; running `recover` again starts over.

use std::time::{Duration, Instant};

use crate::backend::{layout, list_all, Backend};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::journal::{self, Checkpoint};
use crate::kv::{Batch, KvStore, SledStore};
use crate::meta::{self, PackRecord, PackState};
use crate::tiering::metasync::{self, KEY_OBJECT, VOLUME_OBJECT};
use crate::volume::{self, Volume, VolumeInfo};

/// What a recovery did.
#[derive(Debug, Clone)]
pub struct RecoverReport {
    pub volume_id: String,
    /// The journal position the volume was rebuilt to.
    pub consistency_point: u64,
    pub checkpoint_records: usize,
    pub segments: usize,
    pub entries: u64,
    pub packs: usize,
    pub downloaded_bytes: u64,
    pub elapsed: Duration,
}

/// Progress of the long steps, for a progress bar: (step, done, total).
pub type Progress<'a> = &'a dyn Fn(&str, u64, u64);

/// Rebuilds the volume of `cfg` from its store. `volume.path` must not hold a volume.
pub fn recover(cfg: &Config, passphrase: &str, progress: Progress<'_>) -> Result<RecoverReport> {
    let started = Instant::now();
    let dir = cfg.volume.path.clone();
    if Volume::exists(&dir) {
        return Err(Error::Invalid(format!(
            "{} already holds a volume; recover builds a new one (move the old one away first)",
            dir.display()
        )));
    }
    let backend = crate::backend::from_config(cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the recovery runtime", e))?;
    let get_raw = |key: &str| {
        let b = backend.clone();
        let k = key.to_string();
        rt.block_on(async move { b.get(&k).await })
    };
    let get = |key: &str| -> Result<bytes::Bytes> { get_raw(key).map_err(Error::from) };
    let mut downloaded = 0u64;

    // 1. Volume and key: nothing is written before the passphrase proved right.
    let volume_text = get_raw(VOLUME_OBJECT).map_err(|e| {
        if e.is_not_found() {
            Error::Invalid(format!(
                "no tiergate volume in {} (no {VOLUME_OBJECT} object): check the bucket and \
                 prefix",
                backend.describe()
            ))
        } else {
            e.into()
        }
    })?;
    let info: VolumeInfo = toml::from_str(std::str::from_utf8(&volume_text).unwrap_or(""))
        .map_err(|e| Error::Corrupt(format!("{VOLUME_OBJECT} in the bucket: {e}")))?;
    let wrapped = get(KEY_OBJECT)?;
    downloaded += (volume_text.len() + wrapped.len()) as u64;
    let master = crate::crypto::unwrap_master_key(&wrapped, passphrase.as_bytes())?;
    let keys = master.subkeys();

    // 2. The newest checkpoint and the chain of segments after its start.
    let (ckpt_key, ckpt_start, ckpt_end, segs) = rt.block_on(plan(backend.as_ref()))?;
    let obj = get(&ckpt_key)?;
    downloaded += obj.len() as u64;
    let ck = Checkpoint::open(&keys, &obj)?;
    if (ck.start, ck.end) != (ckpt_start, ckpt_end) {
        return Err(Error::Corrupt(format!(
            "{ckpt_key}: its header says {}-{}",
            ck.start, ck.end
        )));
    }
    let consistency_point = segs.last().map_or(ck.end, |s| s.2);
    if consistency_point < ck.end {
        return Err(Error::Corrupt(format!(
            "the journal in the bucket ends at {consistency_point}, before the checkpoint's end {}",
            ck.end
        )));
    }

    // 3. A fresh directory; leftovers of an interrupted recovery are cleared.
    for sub in [
        volume::META_DIR,
        volume::PACK_DIR,
        "cache",
        volume::KEY_FILE,
    ] {
        let p = dir.join(sub);
        if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else if p.exists() {
            std::fs::remove_file(&p)
        } else {
            Ok(())
        }
        .map_err(|e| Error::io(format!("clearing {}", p.display()), e))?;
    }
    std::fs::create_dir_all(dir.join(volume::PACK_DIR))
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let kv = SledStore::open(&dir.join(volume::META_DIR), 64 << 20)?;
    let records = ck.pairs.len();
    for (i, page) in ck.pairs.chunks(10_000).enumerate() {
        let mut b = Batch::default();
        for (k, v) in page {
            b.put(k.clone(), v.clone());
        }
        kv.apply(b)?;
        progress(
            "checkpoint records",
            ((i + 1) * 10_000).min(records) as u64,
            records as u64,
        );
    }
    drop(ck);

    // 4. Replay the journal after the checkpoint's start, segment by segment.
    let mut entries = 0u64;
    for (n, (key, first, last)) in segs.iter().enumerate() {
        let obj = get(key)?;
        downloaded += obj.len() as u64;
        let (f, l, list) = journal::open_segment(&keys, &obj)?;
        if (f, l) != (*first, *last) {
            return Err(Error::Corrupt(format!("{key}: its header says {f}-{l}")));
        }
        // Consecutive entries go in one batch (a later operation on a key wins, as in order).
        let mut merged = Batch::default();
        for (seq, e) in list {
            if seq > ckpt_start {
                for (k, v) in journal::decode_entry(&e)?.ops() {
                    match v {
                        Some(v) => merged.put(k, v),
                        None => merged.delete(k),
                    }
                }
                entries += 1;
                if merged.len() >= 20_000 {
                    kv.apply(std::mem::take(&mut merged))?;
                }
            }
        }
        kv.apply(merged)?;
        progress("journal segments", n as u64 + 1, segs.len() as u64);
    }

    // 5. Packs: every one named is off-site only now; records of packs the bucket does not
    // hold (never uploaded) go. New pack ids continue after every object in the bucket.
    let objects = rt.block_on(list_all(backend.as_ref(), layout::PACKS_PREFIX, 1000))?;
    let remote: std::collections::HashMap<u64, u64> = objects
        .iter()
        .filter_map(|o| {
            let name = o.key.strip_prefix(layout::PACKS_PREFIX)?;
            let id = u64::from_str_radix(name.strip_suffix(".pack")?, 16).ok()?;
            Some((id, o.size))
        })
        .collect();
    let mut b = Batch::default();
    let mut packs = 0;
    for (k, v) in kv.range(
        &meta::pack_prefix(),
        crate::kv::prefix_end(&meta::pack_prefix()).as_deref(),
    )? {
        let id = meta::key_tail_u64(&k);
        match remote.get(&id) {
            Some(&size) => {
                let mut r = PackRecord::decode(&v)?;
                // A pack GC dropped stays dropped (GC deletes its object when safe).
                if !r.state.is_doomed() {
                    r.state = PackState::Remote;
                }
                r.size = size;
                b.put(k, r.encode());
                packs += 1;
            }
            None => b.delete(k),
        }
    }
    let next_pack = remote.keys().max().map_or(1, |m| m + 1);
    let recorded_next = kv
        .get(&meta::misc_key("next_pack"))?
        .and_then(|v| v.as_slice().try_into().ok().map(u64::from_le_bytes))
        .unwrap_or(1);
    b.put(
        meta::misc_key("next_pack"),
        next_pack.max(recorded_next).to_le_bytes().to_vec(),
    );
    // The new journal continues after the recovered position; the bucket's checkpoint and
    // segments already cover everything up to it.
    for (name, value) in [
        (journal::CONSISTENCY_POINT, consistency_point),
        (metasync::CKPT_START, ckpt_start),
        (metasync::CKPT_END, ckpt_end),
        (metasync::HAVE_CKPT, 1),
    ] {
        b.put(journal::local_key(name), value.to_le_bytes().to_vec());
    }
    kv.apply(b)?;
    kv.flush()?;
    drop(kv);

    volume::write_file_durably(&dir.join(volume::KEY_FILE), &wrapped, 0o600)?;
    // Last: its presence marks a complete volume.
    volume::write_file_durably(&dir.join(volume::VOLUME_FILE), &volume_text, 0o644)?;
    Ok(RecoverReport {
        volume_id: info.volume_id,
        consistency_point,
        checkpoint_records: records,
        segments: segs.len(),
        entries,
        packs,
        downloaded_bytes: downloaded,
        elapsed: started.elapsed(),
    })
}

/// The newest checkpoint (key, start, end) and the segments (key, first, last) that continue
/// from its start without a gap.
async fn plan(b: &dyn Backend) -> Result<(String, u64, u64, Vec<(String, u64, u64)>)> {
    let ckpts = list_all(b, journal::CHECKPOINT_PREFIX, 1000).await?;
    let (key, start, end) = ckpts
        .iter()
        .filter_map(|o| {
            let (end, start) = journal::parse_key_range(&o.key)?;
            Some((o.key.clone(), start, end))
        })
        .max_by_key(|c| c.2)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{} holds no metadata checkpoint: this volume never reached a consistency point \
                 off-site (run `tiergate sync` on the appliance while it still exists)",
                b.describe()
            ))
        })?;
    let mut segs: Vec<(String, u64, u64)> = list_all(b, journal::JOURNAL_PREFIX, 1000)
        .await?
        .into_iter()
        .filter_map(|o| {
            let (first, last) = journal::parse_key_range(&o.key)?;
            Some((o.key, first, last))
        })
        .collect();
    segs.sort_by_key(|s| s.1);
    let mut chain = Vec::new();
    let mut next = start + 1;
    for s in segs {
        if s.2 < next {
            continue;
        }
        if s.1 > next {
            return Err(Error::Corrupt(format!(
                "the journal in the bucket has a gap: position {next} is missing before {}",
                s.0
            )));
        }
        next = s.2 + 1;
        chain.push(s);
    }
    Ok((key, start, end, chain))
}

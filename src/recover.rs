//! `tiergate recover`: rebuild a lost appliance's volume from the bucket and the passphrase.
//!
//! Reads the volume and key objects (a wrong passphrase stops here, before anything is
//! written), the newest metadata checkpoint and the journal segments after it, and writes a new
//! volume directory: the metadata store as of the consistency point (the last shipped segment),
//! every pack marked off-site only (data is fetched when read), and the volume and key files.
//! `volume.toml` is written last, so an interrupted recovery leaves no half volume that `serve`
//! would open; running `recover` again starts over.
//!
//! Against someone who can write the bucket but lacks the passphrase: `volume.toml` must carry
//! a valid MAC (or, from older volumes, none, with a warning) and match the digest the newest
//! metadata head records; a checkpoint that does not open is skipped for an older one whose
//! journal still reaches its end; and the journal must reach the newest authentic head's
//! consistency point. A bucket that cannot (segments deleted, heads deleted) is refused,
//! naming what is missing and the newest reachable point, unless `accept_older` is given.

use std::time::{Duration, Instant};

use crate::backend::layout::{KEY_OBJECT, VOLUME_OBJECT};
use crate::backend::{layout, list_all, Backend};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::journal::{self, Checkpoint};
use crate::kv::{Batch, KvStore, SledStore};
use crate::meta::{self, PackRecord, PackState};
use crate::tiering::metasync;
use crate::volume::{self, Volume, VolumeInfo};

/// Choices the operator makes.
#[derive(Debug, Clone, Default)]
pub struct RecoverOptions {
    /// Recover to the newest point the bucket can still reach even when it is older than the
    /// newest authenticated head (or no head is left).
    pub accept_older: bool,
}

/// What a recovery did.
#[derive(Debug, Clone)]
pub struct RecoverReport {
    /// Things the operator must know (a damaged checkpoint skipped, an unsigned config, a
    /// recovery older than the newest head): print them loudly.
    pub warnings: Vec<String>,
    /// The newest authentic metadata head: (generation, consistency point).
    pub newest_head: Option<(u64, u64)>,
    /// The recovery stopped short of the newest head (only with `accept_older`).
    pub older_than_head: bool,
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
pub fn recover(
    cfg: &Config,
    passphrase: &str,
    opts: &RecoverOptions,
    progress: Progress<'_>,
) -> Result<RecoverReport> {
    let started = Instant::now();
    let dir = cfg.volume.path.clone();
    if Volume::exists(&dir) {
        return Err(Error::Invalid(format!(
            "{} already holds a volume; recover builds a new one (move the old one away first)",
            dir.display()
        )));
    }
    let backend = cfg.open_backend()?;
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
    let mut info: VolumeInfo = toml::from_str(std::str::from_utf8(&volume_text).unwrap_or(""))
        .map_err(|e| Error::Corrupt(format!("{VOLUME_OBJECT} in the bucket: {e}")))?;
    let wrapped = get(KEY_OBJECT)?;
    downloaded += (volume_text.len() + wrapped.len()) as u64;
    let master = crate::crypto::unwrap_master_key(&wrapped, passphrase.as_bytes())?;
    let keys = master.subkeys();
    let mut warnings = Vec::new();
    let unsigned = info.check_mac(&keys, &format!("{VOLUME_OBJECT} in the bucket"))?
        == volume::MacState::Missing;

    // 2. The newest authentic head: the point the recovery must reach.
    let head = rt.block_on(newest_head(backend.as_ref(), &keys, &mut warnings))?;
    if let Some(h) = &head {
        if h.volume_digest != info.digest() {
            return Err(Error::Corrupt(format!(
                "{VOLUME_OBJECT} in the bucket is not the config the volume's newest metadata head \
                 (generation {}) records: it was edited; refusing to use its chunking parameters \
                 and ids",
                h.generation
            )));
        }
    }
    if unsigned {
        warnings.push(format!(
            "{VOLUME_OBJECT} in the bucket carries no MAC (made by a tiergate from before configs \
             were signed{}); the recovered copy is signed",
            if head.is_some() {
                ", and it matches the newest metadata head"
            } else {
                ", or edited with the MAC removed: check its chunking parameters"
            }
        ));
        info.seal(&keys);
    }

    // 3. The newest checkpoint that opens and whose journal reaches its end, and the chain of
    // segments after its start.
    let listing = rt.block_on(list_meta(backend.as_ref()))?;
    let mut chosen = None;
    for (ckpt_key, start, end) in &listing.checkpoints {
        let segs = chain(&listing.segments, *start);
        let reach = segs.last().map_or(*start, |s| s.2);
        if reach < *end {
            warnings.push(format!(
                "{ckpt_key} skipped: the journal in the bucket after its start reaches only \
                 {reach}, before its end {end} ({})",
                missing_after(&listing.segments, reach)
            ));
            continue;
        }
        let opened = get(ckpt_key).and_then(|obj| {
            downloaded += obj.len() as u64;
            let ck = Checkpoint::open(&keys, &obj)?;
            if (ck.start, ck.end) != (*start, *end) {
                return Err(Error::Corrupt(format!(
                    "{ckpt_key}: its header says {}-{}",
                    ck.start, ck.end
                )));
            }
            Ok(ck)
        });
        match opened {
            Ok(ck) => {
                chosen = Some((ck, segs));
                break;
            }
            Err(e) => warnings.push(format!(
                "{ckpt_key} cannot be used ({e}): falling back to an older checkpoint"
            )),
        }
    }
    let Some((ck, segs)) = chosen else {
        return Err(if listing.checkpoints.is_empty() {
            Error::Invalid(format!(
                "{} holds no metadata checkpoint: this volume never reached a consistency point \
                 off-site (run `tiergate sync` on the appliance while it still exists)",
                backend.describe()
            ))
        } else {
            Error::Corrupt(format!(
                "no checkpoint in the bucket can be used: {}",
                warnings.join("; ")
            ))
        });
    };
    let (ckpt_start, ckpt_end) = (ck.start, ck.end);
    let planned_point = segs.last().map_or(ck.end, |s| s.2);
    check_point(&head, planned_point, &listing.segments, opts, &mut warnings)?;

    // 4. A fresh directory; leftovers of an interrupted recovery are cleared.
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

    // 5. Replay the journal after the checkpoint's start, segment by segment. A segment that
    // does not open ends the replay (like a gap) if what came before reaches the checkpoint's
    // end; the point reached is then checked against the head again.
    let mut entries = 0u64;
    let mut consistency_point = planned_point;
    let mut replayed = 0;
    for (n, (key, first, last)) in segs.iter().enumerate() {
        let opened = get(key).and_then(|obj| {
            downloaded += obj.len() as u64;
            let (f, l, list) = journal::open_segment(&keys, &obj)?;
            if (f, l) != (*first, *last) {
                return Err(Error::Corrupt(format!("{key}: its header says {f}-{l}")));
            }
            Ok(list)
        });
        let list = match opened {
            Ok(list) => list,
            Err(e) if *first > ckpt_end => {
                consistency_point = first - 1;
                warnings.push(format!(
                    "{key} cannot be used ({e}): the journal ends at {consistency_point}"
                ));
                check_point(
                    &head,
                    consistency_point,
                    &listing.segments,
                    opts,
                    &mut warnings,
                )?;
                break;
            }
            Err(e) => return Err(e),
        };
        replayed += 1;
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

    // 6. Packs: every one named is off-site only now; records of packs the bucket does not
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
    // segments already cover everything up to it. Stopped short of the newest head, it
    // continues after every position the bucket has seen instead (so no new segment takes the
    // name of an old one left there), and a new checkpoint is taken first: until then the
    // bucket's own objects do not chain to the new journal.
    let older_than_head = head.as_ref().is_none_or(|h| consistency_point < h.point);
    let seen = listing
        .segments
        .iter()
        .map(|s| s.2)
        .chain(head.as_ref().map(|h| h.point))
        .chain(listing.checkpoints.iter().map(|c| c.2))
        .max()
        .unwrap_or(0)
        .max(consistency_point);
    let (next_from, have_ckpt) = if older_than_head {
        (seen, 0)
    } else {
        (consistency_point, 1)
    };
    for (name, value) in [
        (journal::CONSISTENCY_POINT, next_from),
        (metasync::CKPT_START, ckpt_start),
        (metasync::CKPT_END, ckpt_end),
        (metasync::HAVE_CKPT, have_ckpt),
        // Heads that do not open are not trusted to count.
        (
            metasync::HEAD_GENERATION,
            head.as_ref().map_or(0, |h| h.generation),
        ),
    ] {
        b.put(journal::local_key(name), value.to_le_bytes().to_vec());
    }
    // File handles given out before (NFS clients of the lost appliance) must not open files
    // that reuse inode numbers it handed out after the consistency point.
    let (k, v) = volume::next_handle_generation(&kv)?;
    b.put(k, v);
    kv.apply(b)?;
    kv.flush()?;
    drop(kv);

    crate::durable::write_file_durably(&dir.join(volume::KEY_FILE), &wrapped, 0o600)?;
    // Last: its presence marks a complete volume.
    let text = if unsigned {
        info.to_toml()?.into_bytes()
    } else {
        volume_text.to_vec()
    };
    crate::durable::write_file_durably(&dir.join(volume::VOLUME_FILE), &text, 0o644)?;
    Ok(RecoverReport {
        warnings,
        newest_head: head.as_ref().map(|h| (h.generation, h.point)),
        older_than_head,
        volume_id: info.volume_id,
        consistency_point,
        checkpoint_records: records,
        segments: replayed,
        entries,
        packs,
        downloaded_bytes: downloaded,
        elapsed: started.elapsed(),
    })
}

/// A segment or checkpoint object: key and its two positions (segment: first, last;
/// checkpoint: start, end).
type MetaObject = (String, u64, u64);

/// The metadata objects of the bucket.
struct Listing {
    /// Newest first (by end, then start).
    checkpoints: Vec<MetaObject>,
    /// By first position.
    segments: Vec<MetaObject>,
}

async fn list_meta(b: &dyn Backend) -> Result<Listing> {
    let mut checkpoints: Vec<MetaObject> = list_all(b, layout::CHECKPOINT_PREFIX, 1000)
        .await?
        .into_iter()
        .filter_map(|o| {
            let (end, start) = journal::parse_key_range(&o.key)?;
            Some((o.key, start, end))
        })
        .collect();
    checkpoints.sort_by_key(|c| std::cmp::Reverse((c.2, c.1)));
    let mut segments: Vec<MetaObject> = list_all(b, layout::JOURNAL_PREFIX, 1000)
        .await?
        .into_iter()
        .filter_map(|o| {
            let (first, last) = journal::parse_key_range(&o.key)?;
            Some((o.key, first, last))
        })
        .collect();
    segments.sort_by_key(|s| (s.1, s.2));
    Ok(Listing {
        checkpoints,
        segments,
    })
}

/// The newest head that opens under this volume's key; heads that do not are reported.
async fn newest_head(
    b: &dyn Backend,
    keys: &crate::crypto::Keys,
    warnings: &mut Vec<String>,
) -> Result<Option<journal::Head>> {
    let mut gens = list_meta_heads(b).await?;
    gens.sort_unstable_by(|a, c| c.cmp(a));
    for g in gens {
        let key = journal::head_key(g);
        let obj = match b.get(&key).await {
            Ok(o) => o,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        match journal::Head::open(keys, &key, &obj) {
            Ok(h) => return Ok(Some(h)),
            Err(e) => warnings.push(format!(
                "{key} is not an authentic metadata head ({e}): ignored"
            )),
        }
    }
    Ok(None)
}

async fn list_meta_heads(b: &dyn Backend) -> Result<Vec<u64>> {
    Ok(list_all(b, layout::HEAD_PREFIX, 1000)
        .await?
        .iter()
        .filter_map(|o| journal::parse_head_key(&o.key))
        .collect())
}

/// The segments that continue from `start` without a gap (ending at the first gap).
fn chain(segments: &[MetaObject], start: u64) -> Vec<MetaObject> {
    let mut out = Vec::new();
    let mut next = start + 1;
    for s in segments {
        if s.2 < next {
            continue;
        }
        if s.1 > next {
            break;
        }
        next = s.2 + 1;
        out.push(s.clone());
    }
    out
}

/// What the bucket lacks after position `reach`, for messages.
fn missing_after(segments: &[MetaObject], reach: u64) -> String {
    match segments.iter().find(|s| s.1 > reach) {
        Some(s) => format!(
            "positions {}-{} are missing: no segment meta/journal/{:016x}-…; the next one is {}",
            reach + 1,
            s.1 - 1,
            reach + 1,
            s.0
        ),
        None => format!(
            "no segment after position {reach}: meta/journal/{:016x}-… and later are missing",
            reach + 1
        ),
    }
}

/// Refuses a recovery to `point` when the newest authentic head names a newer one, or when no
/// head is left, unless the operator accepted it; then says so loudly.
fn check_point(
    head: &Option<journal::Head>,
    point: u64,
    segments: &[MetaObject],
    opts: &RecoverOptions,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let problem = match head {
        Some(h) if point >= h.point => return Ok(()),
        Some(h) => format!(
            "the newest authenticated consistency point in the bucket is {} (metadata head \
             generation {}, written at {} Unix time), but its journal reaches only {point}: {}. \
             Objects were deleted or damaged (by someone with write access to the bucket, a \
             lifecycle rule, an incomplete copy); restore them if the bucket keeps versions",
            h.point,
            h.generation,
            h.written_unix,
            missing_after(segments, point)
        ),
        None => format!(
            "the bucket holds no authentic metadata head ({}…): nothing proves that {point}, the \
             newest point its journal reaches, is the newest the appliance shipped (heads \
             deleted, or a volume last written by a tiergate from before heads existed)",
            layout::HEAD_PREFIX
        ),
    };
    if !opts.accept_older {
        return Err(Error::Invalid(format!(
            "{problem}. To recover to consistency point {point} anyway \
             (losing every change after it), run again with --accept-older"
        )));
    }
    warnings.push(format!(
        "RECOVERING TO AN OLDER POINT ({point}) THAN THE BUCKET ONCE HELD, as --accept-older \
         asked: {problem}"
    ));
    Ok(())
}

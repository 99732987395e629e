//! Shipping the metadata off-site: the volume and key objects, the lease, journal segments and
//! checkpoints (formats in [`crate::journal`]).
//!
//! A journal segment ending at position S is uploaded only once every pack that the metadata up
//! to S may name is off-site (all packs with an id below the volume's next pack id, read after
//! the entries). So the consistency point, the last position shipped, always describes a state
//! whose data is entirely in the bucket: a recovery to it never meets a missing pack.
//!
//! Recovery needs a checkpoint (the volume's state before journaling began is only there), so
//! the first one is taken as soon as the shipper has caught up, and a new one whenever the
//! segments shipped since the last one pass [`CHECKPOINT_AFTER_BYTES`]; segments and checkpoints
//! the newest checkpoint makes unnecessary are then deleted.
//!
//! The lease object names the appliance that writes the volume's prefix. Nothing is uploaded
//! (packs included: two appliances would write different packs under the same ids) until this
//! appliance holds it; one that finds another appliance's lease stops and says so.
//!
//! Someone who can write the bucket but does not hold the passphrase must not be able to stop
//! uploads or make a recovery silently older, so:
//! - the lease carries a MAC under the volume's MAC subkey. A lease that fails it (forged,
//!   edited, or written by a tiergate from before leases were signed) is not honoured: the
//!   appliance says so loudly (error log, status event) and writes its own. So is an authentic
//!   lease of another appliance that is older than this appliance's own claim (a replayed copy),
//!   and a lease that went missing. Only a genuine appliance of the volume (it holds the key)
//!   can fence this one.
//! - after every segment and checkpoint a [`journal::Head`] names the new consistency point,
//!   sealed under the metadata key with a growing generation: recovery refuses to stop short of
//!   the newest one it finds without `--accept-older` (see `recover`).
//! - the bucket's `volume.toml` is checked at every start: one that differs from the local copy
//!   and fails its MAC is reported as tampering, then replaced.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::Tiering;
use crate::backend::layout::{self, KEY_OBJECT, LEASE_OBJECT, VOLUME_OBJECT};
use crate::backend::list_all;
use crate::error::{Error, Result};
use crate::journal::{self, Checkpoint};
use crate::kv::Batch;

/// Largest journal segment, before compression.
const SEGMENT_MAX: usize = 8 << 20;
/// A new checkpoint once this many segment bytes were shipped since the last one.
pub const CHECKPOINT_AFTER_BYTES: u64 = 64 << 20;
/// How often the shipper looks for new entries when nobody wakes it.
const SHIP_INTERVAL: Duration = Duration::from_secs(5);

/// Local file naming this appliance (random, made at first start).
pub const APPLIANCE_ID_FILE: &str = "appliance-id";

/// Local key: the generation of the newest metadata head this appliance wrote.
pub const HEAD_GENERATION: &str = "journal.head_generation";
/// Local key: `since_unix` of the lease this appliance last wrote.
const LEASE_SINCE: &str = "lease.since_unix";
/// MAC purpose label of the lease (part of the format: do not change).
pub const LEASE_MAC_PURPOSE: &str = "tiergate lease v1";

pub const CKPT_START: &str = "journal.checkpoint_start";
pub const CKPT_END: &str = "journal.checkpoint_end";
/// 1 once a checkpoint is off-site (before that, nothing is recoverable from the bucket).
pub const HAVE_CKPT: &str = "journal.have_checkpoint";
const SINCE_CKPT: &str = "journal.bytes_since_checkpoint";

/// Who holds the lease of a volume's prefix.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub appliance: String,
    pub host: String,
    pub since_unix: u64,
    /// MAC of the fields above and the volume id ([`Lease::canonical`]) under the volume's MAC
    /// subkey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Lease {
    /// The authenticated bytes: volume id, appliance, host (each as length (4) and bytes),
    /// `since_unix` (8), little-endian.
    pub fn canonical(&self, volume_id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for s in [volume_id, &self.appliance, &self.host] {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.since_unix.to_le_bytes());
        out
    }

    pub fn sign(&mut self, keys: &crate::crypto::Keys, volume_id: &str) {
        self.mac = Some(keys.mac_hex(LEASE_MAC_PURPOSE, &self.canonical(volume_id)));
    }

    pub fn is_authentic(&self, keys: &crate::crypto::Keys, volume_id: &str) -> bool {
        self.mac
            .as_deref()
            .is_some_and(|m| keys.mac_ok(LEASE_MAC_PURPOSE, &self.canonical(volume_id), m))
    }
}

/// The bucket's lease object, judged.
#[derive(Debug)]
pub enum LeaseState {
    Absent,
    Authentic(Lease),
    /// Not written by an appliance of this volume: why, and what it claims (if it parses).
    NotAuthentic(String, Option<Lease>),
}

/// Judges the bytes of a lease object.
pub fn judge_lease(bytes: &[u8], keys: &crate::crypto::Keys, volume_id: &str) -> LeaseState {
    match serde_json::from_slice::<Lease>(bytes) {
        Err(e) => LeaseState::NotAuthentic(format!("not a lease ({e})"), None),
        Ok(l) if l.is_authentic(keys, volume_id) => LeaseState::Authentic(l),
        Ok(l) => LeaseState::NotAuthentic(
            if l.mac.is_none() {
                "it carries no MAC (forged, or written by a tiergate from before leases were \
                 signed)"
                    .into()
            } else {
                "its MAC does not verify under this volume's key (forged or edited)".into()
            },
            Some(l),
        ),
    }
}

/// The id of this appliance (one per volume directory), made on first use.
pub fn appliance_id(volume_dir: &std::path::Path) -> Result<String> {
    let path = volume_dir.join(APPLIANCE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let id = hex::encode(rand::random::<[u8; 12]>());
            crate::durable::write_file_durably(&path, format!("{id}\n").as_bytes(), 0o644)?;
            Ok(id)
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub(super) fn local_u64(t: &Tiering, name: &str) -> Result<u64> {
    use crate::kv::KvStore;
    Ok(match t.vol.journal().get(&journal::local_key(name))? {
        Some(v) => u64::from_le_bytes(v.as_slice().try_into().unwrap_or([0; 8])),
        None => 0,
    })
}

fn set_local(t: &Tiering, pairs: &[(&str, u64)]) -> Result<()> {
    let mut b = Batch::default();
    for (name, v) in pairs {
        b.put(journal::local_key(name), v.to_le_bytes().to_vec());
    }
    t.vol.journal().apply_local(b)?;
    use crate::kv::KvStore;
    t.vol.journal().flush()
}

impl Tiering {
    /// The bucket's lease object, judged against this volume's key.
    async fn read_lease(&self) -> Result<LeaseState> {
        match self.backend.get(LEASE_OBJECT).await {
            Ok(bytes) => Ok(judge_lease(
                &bytes,
                self.vol.keys(),
                &self.vol.info().volume_id,
            )),
            Err(e) if e.is_not_found() => Ok(LeaseState::Absent),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes this appliance's signed lease.
    async fn write_lease(&self) -> Result<()> {
        let mut lease = Lease {
            appliance: self.appliance.clone(),
            host: host_name(),
            since_unix: crate::meta::unix_now(),
            mac: None,
        };
        lease.sign(self.vol.keys(), &self.vol.info().volume_id);
        let body = serde_json::to_vec_pretty(&lease).expect("lease to JSON");
        self.backend.put(LEASE_OBJECT, Bytes::from(body)).await?;
        set_local(self, &[(LEASE_SINCE, lease.since_unix)])
    }

    /// Says loudly that the lease object was not written by an appliance of this volume.
    fn report_false_lease(&self, why: &str) {
        let msg = format!(
            "the lease object in the bucket is not authentic: {why}. Someone who can write the \
             bucket but does not hold the passphrase wrote it; it is ignored and replaced by \
             this appliance's lease, and uploads continue. Check who has write access to the \
             bucket"
        );
        tracing::error!("{msg}");
        crate::events::record("error", msg);
    }

    /// Takes (or confirms) the lease of the volume's prefix. `Ok(false)`: another appliance
    /// holds it and `take_over` was not given.
    pub async fn claim_lease(&self) -> Result<bool> {
        let _claiming = self.claiming.lock().await;
        if self.leased.load(Ordering::SeqCst) {
            return Ok(true);
        }
        let me = self.appliance.clone();
        match self.read_lease().await? {
            LeaseState::Absent => {}
            LeaseState::Authentic(held) if held.appliance == me => {}
            LeaseState::Authentic(held) if held.since_unix < local_u64(self, LEASE_SINCE)? => {
                self.report_false_lease(&format!(
                    "it names appliance {} since {}, before this appliance's own claim (a \
                     replayed old lease)",
                    held.appliance, held.since_unix
                ));
            }
            LeaseState::Authentic(held) => {
                if !self.take_over.load(Ordering::SeqCst) {
                    *self.fenced_by.lock() = Some(held);
                    return Ok(false);
                }
                tracing::warn!(previous = %held.appliance, host = %held.host,
                    "taking over the volume from another appliance (--take-over)");
            }
            // An unsigned lease of this very appliance: written before leases were signed.
            LeaseState::NotAuthentic(_, Some(held))
                if held.appliance == me && held.mac.is_none() =>
            {
                tracing::info!("signing this appliance's lease (written by an older tiergate)");
            }
            LeaseState::NotAuthentic(why, _) => self.report_false_lease(&why),
        }
        self.write_lease().await?;
        *self.fenced_by.lock() = None;
        self.leased.store(true, Ordering::SeqCst);
        // A take-over is for the first claim only: if yet another appliance takes the volume
        // later, this one must stop, not take it back.
        self.take_over.store(false, Ordering::SeqCst);
        Ok(true)
    }

    /// Whether the lease is still ours (checked before every upload, packs included). A lease
    /// that is missing, not authentic, or an authentic one older than ours (replayed) does not
    /// stop uploads: it is reported and ours is written again.
    pub(super) async fn lease_still_ours(&self) -> Result<bool> {
        let held = match self.read_lease().await? {
            LeaseState::Authentic(held) if held.appliance == self.appliance => return Ok(true),
            LeaseState::Authentic(held) if held.since_unix < local_u64(self, LEASE_SINCE)? => {
                self.report_false_lease(&format!(
                    "it names appliance {} since {}, before this appliance's own claim (a \
                     replayed old lease)",
                    held.appliance, held.since_unix
                ));
                self.write_lease().await?;
                return Ok(true);
            }
            LeaseState::Authentic(held) => held,
            LeaseState::Absent => {
                let msg = "the lease object went missing from the bucket: written again";
                tracing::warn!("{msg}");
                crate::events::record("warning", msg);
                self.write_lease().await?;
                return Ok(true);
            }
            LeaseState::NotAuthentic(why, _) => {
                self.report_false_lease(&why);
                self.write_lease().await?;
                return Ok(true);
            }
        };
        tracing::error!(appliance = %held.appliance, host = %held.host,
            "another appliance took over this volume: this one stops uploading");
        crate::events::record(
            "error",
            format!(
                "appliance {} on {} took over this volume: nothing more is uploaded from here",
                held.appliance, held.host
            ),
        );
        self.leased.store(false, Ordering::SeqCst);
        *self.fenced_by.lock() = Some(held);
        Ok(false)
    }

    /// The volume config and the wrapped master key, uploaded when missing or different.
    async fn ship_volume_objects(&self) -> Result<()> {
        let dir = self.vol.dir();
        for (key, file) in [
            (VOLUME_OBJECT, crate::volume::VOLUME_FILE),
            (KEY_OBJECT, crate::volume::KEY_FILE),
        ] {
            let path = dir.join(file);
            let local = std::fs::read(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let same = match self.backend.get(key).await {
                Ok(remote) if remote.as_ref() == local.as_slice() => true,
                Ok(remote) if key == VOLUME_OBJECT => {
                    self.check_remote_volume_object(&remote);
                    false
                }
                Ok(_) => false,
                Err(e) if e.is_not_found() => false,
                Err(e) => return Err(e.into()),
            };
            if !same {
                self.backend.put(key, Bytes::from(local)).await?;
                tracing::info!(object = key, "volume object uploaded");
            }
        }
        Ok(())
    }

    /// The bucket's `volume.toml` differs from the local one: fine if it is an older,
    /// authentic or unsigned copy of the same config (an upgrade adds the MAC), tampering
    /// otherwise. Either way the local copy replaces it.
    fn check_remote_volume_object(&self, remote: &[u8]) {
        let local = self.vol.info();
        let parsed = std::str::from_utf8(remote)
            .ok()
            .and_then(|t| toml::from_str::<crate::volume::VolumeInfo>(t).ok());
        let why = match parsed {
            None => Some("it is not a volume config".to_string()),
            Some(r) => match r.check_mac(self.vol.keys(), VOLUME_OBJECT) {
                Err(e) => Some(e.to_string()),
                Ok(_) if r.canonical() != local.canonical() => {
                    Some("it differs from this volume's config and carries no MAC".into())
                }
                Ok(_) => None,
            },
        };
        if let Some(why) = why {
            let msg = format!(
                "{VOLUME_OBJECT} in the bucket was altered ({why}): replaced with this \
                 appliance's copy. Someone who can write the bucket changed it; check who has \
                 write access"
            );
            tracing::error!("{msg}");
            crate::events::record("error", msg);
        }
    }

    /// Writes a new [`journal::Head`] naming the current consistency point and checkpoint
    /// (nothing before the first checkpoint: the bucket cannot rebuild the volume then). The
    /// generation is made durable locally before the upload, so it never repeats. Without
    /// Object Lock the previous head is deleted; with it, heads stay until their retention
    /// ends (prune_meta removes them), so that deleting the newest is impossible.
    /// `checkpoint`: the one just uploaded (before the local bookkeeping names it), or None
    /// for the one the bookkeeping names.
    pub(super) async fn write_head(
        &self,
        point: u64,
        checkpoint: Option<(u64, u64)>,
    ) -> Result<()> {
        let checkpoint = match checkpoint {
            Some(c) => c,
            None if local_u64(self, HAVE_CKPT)? == 0 => return Ok(()),
            None => (local_u64(self, CKPT_START)?, local_u64(self, CKPT_END)?),
        };
        let generation = local_u64(self, HEAD_GENERATION)? + 1;
        set_local(self, &[(HEAD_GENERATION, generation)])?;
        let head = journal::Head {
            generation,
            point,
            checkpoint,
            written_unix: crate::meta::unix_now(),
            volume_digest: self.vol.info().digest(),
        };
        self.backend
            .put(
                &journal::head_key(generation),
                Bytes::from(head.seal(self.vol.keys())),
            )
            .await?;
        if self.backend.retention().is_none() && generation > 1 {
            match self
                .backend
                .delete(&journal::head_key(generation - 1))
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::debug!("deleting the previous metadata head: {e}"),
            }
        }
        tracing::debug!(generation, point = head.point, "metadata head off-site");
        Ok(())
    }

    pub(super) async fn meta_loop(self: Arc<Self>) {
        let mut objects_shipped = false;
        while !self.stopping.load(Ordering::SeqCst) {
            let step = async {
                if !self.leased.load(Ordering::SeqCst) && !self.claim_lease().await? {
                    return Ok(false);
                }
                if !objects_shipped {
                    self.ship_volume_objects().await?;
                    // A head at every start: volumes from before heads existed get one, and
                    // a head deleted from the bucket comes back.
                    self.write_head(self.vol.journal().consistency_point()?, None)
                        .await?;
                    objects_shipped = true;
                }
                self.ship_journal().await
            };
            match step.await {
                Ok(_) => {
                    let mut last = self.last_error.lock();
                    if last
                        .as_ref()
                        .is_some_and(|(_, m)| m.starts_with("shipping metadata"))
                    {
                        *last = None;
                    }
                }
                Err(e) => {
                    let msg = format!("shipping metadata: {e}");
                    tracing::warn!("{msg}");
                    *self.last_error.lock() = Some((SystemTime::now(), msg));
                }
            }
            if let Some(l) = self.fenced_by.lock().clone() {
                tracing::error!(appliance = %l.appliance, host = %l.host, since = l.since_unix,
                    "the volume's lease is held by another appliance: nothing is uploaded \
                     (restart with --take-over on the appliance that replaces it)");
            }
            tokio::select! {
                _ = tokio::time::sleep(SHIP_INTERVAL) => {}
                _ = self.wake_meta.notified() => {}
            }
        }
    }

    /// Ships every journal segment whose packs are off-site, then a checkpoint if one is due.
    /// Returns whether it caught up with the journal.
    pub(super) async fn ship_journal(&self) -> Result<bool> {
        loop {
            let j = self.vol.journal();
            let cp = j.consistency_point()?;
            if j.last_seq() <= cp {
                self.maybe_checkpoint().await?;
                return Ok(true);
            }
            let entries = j.entries_after(cp, SEGMENT_MAX)?;
            let Some(&(last, _)) = entries.last() else {
                return Ok(true);
            };
            // Read after the entries: every pack they can name has a smaller id.
            let horizon = self.vol.next_pack_id();
            let waiting = self
                .vol
                .pack_table()?
                .into_iter()
                // Dropped packs need not be: nothing names them from here on.
                .filter(|(id, r)| *id < horizon && !r.state.is_offsite() && !r.state.is_doomed())
                .count();
            if waiting > 0 {
                tracing::debug!(
                    waiting,
                    last,
                    "journal segment waits for packs to go off-site"
                );
                return Ok(false);
            }
            if !self.lease_still_ours().await? {
                return Ok(false);
            }
            // The entries must be durable here before the bucket has them: otherwise a crash
            // could make this appliance reuse their positions for other changes.
            let vol = self.vol.clone();
            tokio::task::spawn_blocking(move || {
                use crate::kv::KvStore;
                vol.journal().flush()
            })
            .await
            .map_err(|e| Error::Store(format!("journal flush: {e}")))??;
            let first = entries[0].0;
            let obj = journal::seal_segment(self.vol.keys(), &entries);
            let size = obj.len() as u64;
            self.backend
                .put(&journal::segment_key(first, last), Bytes::from(obj))
                .await?;
            // Before the local bookkeeping, so that a `tiergate sync` that returned has its
            // point named by a head too.
            self.write_head(last, None).await?;
            let vol = self.vol.clone();
            tokio::task::spawn_blocking(move || vol.journal().shipped_through(last))
                .await
                .map_err(|e| Error::Store(format!("journal bookkeeping: {e}")))??;
            let since = local_u64(self, SINCE_CKPT)? + size;
            set_local(self, &[(SINCE_CKPT, since)])?;
            self.counters.meta_segments.fetch_add(1, Ordering::Relaxed);
            self.counters.meta_bytes.fetch_add(size, Ordering::Relaxed);
            tracing::debug!(first, last, size, "journal segment off-site");
            let _t = self.table.lock();
            self.progress.notify_all();
        }
    }

    /// Whether a checkpoint is off-site (before the first, the bucket cannot rebuild a volume).
    pub fn has_checkpoint(&self) -> Result<bool> {
        Ok(local_u64(self, HAVE_CKPT)? > 0)
    }

    /// The newest position that is off-site *and* recoverable (0 until the first checkpoint).
    pub fn consistency_point(&self) -> Result<u64> {
        if local_u64(self, HAVE_CKPT)? == 0 {
            return Ok(0);
        }
        self.vol.journal().consistency_point()
    }

    async fn maybe_checkpoint(&self) -> Result<()> {
        let have = local_u64(self, HAVE_CKPT)? > 0;
        // GC asks for one when only an older checkpoint still names packs it dropped.
        let wanted = self.checkpoint_wanted.swap(false, Ordering::SeqCst);
        if have && !wanted && local_u64(self, SINCE_CKPT)? < CHECKPOINT_AFTER_BYTES {
            return Ok(());
        }
        let vol = self.vol.clone();
        let ck = tokio::task::spawn_blocking(move || Checkpoint::take(vol.journal()))
            .await
            .map_err(|e| Error::Store(format!("checkpoint: {e}")))??;
        // The entries up to its end (written while it was read) must be off-site first.
        if self.vol.journal().consistency_point()? < ck.end || !self.lease_still_ours().await? {
            if wanted {
                self.checkpoint_wanted.store(true, Ordering::SeqCst);
            }
            return Ok(()); // the next round ships them and tries again
        }
        let obj = ck.seal(self.vol.keys());
        let size = obj.len() as u64;
        let key = journal::checkpoint_key(ck.start, ck.end);
        self.backend.put(&key, Bytes::from(obj)).await?;
        // Before the bookkeeping: once the volume counts as recoverable, a head names it.
        self.write_head(
            self.vol.journal().consistency_point()?,
            Some((ck.start, ck.end)),
        )
        .await?;
        set_local(
            self,
            &[
                (CKPT_START, ck.start),
                (CKPT_END, ck.end),
                (HAVE_CKPT, 1),
                (SINCE_CKPT, 0),
            ],
        )?;
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.counters.meta_bytes.fetch_add(size, Ordering::Relaxed);
        tracing::info!(
            start = ck.start,
            end = ck.end,
            size,
            records = ck.pairs.len(),
            "metadata checkpoint off-site"
        );
        crate::events::record(
            "info",
            format!(
                "metadata checkpoint off-site ({} records, {size} bytes)",
                ck.pairs.len()
            ),
        );
        // Older checkpoints, and segments wholly before this one's start, are now unneeded.
        self.prune_meta().await?;
        let _t = self.table.lock();
        self.progress.notify_all();
        Ok(())
    }

    /// Deletes the metadata objects the newest off-site checkpoint makes unnecessary: older
    /// checkpoints, and segments that end at or before its start. Never a newer checkpoint
    /// (one the shipper may be uploading while GC calls this reads older bookkeeping). With
    /// Object Lock, an object still under retention is left (HEAD before each delete) and
    /// counted; the shipper after the next checkpoint, or the next GC pass, tries again.
    pub(super) async fn prune_meta(&self) -> Result<PruneStats> {
        let mut stats = PruneStats::default();
        if local_u64(self, HAVE_CKPT)? == 0 {
            return Ok(stats);
        }
        let (start, end) = (local_u64(self, CKPT_START)?, local_u64(self, CKPT_END)?);
        let current = journal::checkpoint_key(start, end);
        let mut unneeded = Vec::new();
        for o in list_all(self.backend.as_ref(), layout::CHECKPOINT_PREFIX, 1000).await? {
            let older = match journal::parse_key_range(&o.key) {
                Some((e, s)) => (e, s) < (end, start),
                None => false,
            };
            if o.key != current && older {
                unneeded.push(o.key);
            }
        }
        for o in list_all(self.backend.as_ref(), layout::JOURNAL_PREFIX, 1000).await? {
            if matches!(journal::parse_key_range(&o.key), Some((_, last)) if last <= start) {
                unneeded.push(o.key);
            }
        }
        // Heads older than the newest this appliance wrote (left by Object Lock, or by a
        // delete that failed).
        let newest_head = local_u64(self, HEAD_GENERATION)?;
        for o in list_all(self.backend.as_ref(), layout::HEAD_PREFIX, 1000).await? {
            if journal::parse_head_key(&o.key).is_some_and(|g| g < newest_head) {
                unneeded.push(o.key);
            }
        }
        let locked = self.backend.retention().is_some();
        for key in unneeded {
            if locked {
                match self.backend.head(&key).await {
                    Ok(i) if i.retain_until.is_some_and(|t| t > SystemTime::now()) => {
                        stats.retained += 1;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match self.backend.delete(&key).await {
                Ok(()) => stats.deleted += 1,
                Err(e) if e.kind() == crate::backend::ErrorKind::Retained => stats.retained += 1,
                Err(e) => return Err(e.into()),
            }
        }
        if stats.retained > 0 {
            tracing::debug!(
                retained = stats.retained,
                "unneeded metadata objects kept until their retention ends"
            );
        }
        Ok(stats)
    }
}

/// What [`Tiering::prune_meta`] did.
#[derive(Debug, Default)]
pub(super) struct PruneStats {
    pub deleted: u64,
    /// Left in place: under Object Lock retention.
    pub retained: u64,
}

//! Object keys of the bucket layout (BRIEF §3), relative to the tenant prefix.

/// Probe objects: written and deleted again by [`super::probe`].
pub const PROBE_PREFIX: &str = "probe/";
/// Sealed packs, one object each, the same bytes as the local pack file.
pub const PACKS_PREFIX: &str = "packs/";
/// Metadata journal segments and checkpoints.
pub const META_PREFIX: &str = "meta/";
/// Journal segments: `meta/journal/<first>-<last>.seg`.
pub const JOURNAL_PREFIX: &str = "meta/journal/";
/// Checkpoints: `meta/checkpoint/<end>-<start>.ckpt`.
pub const CHECKPOINT_PREFIX: &str = "meta/checkpoint/";
/// Metadata heads: `meta/head/<generation>.head`.
pub const HEAD_PREFIX: &str = "meta/head/";
/// The volume's config (with its MAC): what `tiergate recover` reads first.
pub const VOLUME_OBJECT: &str = "volume.toml";
/// The master key, wrapped by the passphrase.
pub const KEY_OBJECT: &str = "keys/master";
/// Which appliance writes to this prefix (see docs/TIERING.md, fencing).
pub const LEASE_OBJECT: &str = "lease";

/// The object of pack `id`: `packs/<16 hex digits>.pack`.
pub fn pack_key(id: u64) -> String {
    format!("{PACKS_PREFIX}{}", crate::pack::pack_file_name(id))
}

/// Whether an object is written with the configured Object Lock retention: packs, the
/// metadata journal and checkpoints, the volume config and the wrapped master key (without
/// which no pack can be read).
///
/// Not the `lease`: it is rewritten at every start and take-over, and on the versioned
/// bucket Object Lock requires every rewrite keeps the previous version; locked, those
/// versions could not be removed for the whole period. It protects no data (a missing
/// lease is simply written again). Not probe objects either: the probe deletes them at once.
pub fn is_locked(key: &str) -> bool {
    key.starts_with(PACKS_PREFIX)
        || key.starts_with(META_PREFIX)
        || key == VOLUME_OBJECT
        || key == KEY_OBJECT
}

//! The appliance configuration (TOML): one struct per section, unknown keys rejected, cross-field
//! rules in [`Config::validate`]. Secrets (the passphrase) come from a file or the environment,
//! never from the config text itself, and never appear in `Debug` output.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use crate::backend::options::{
    LockMode, ObjectLockConfig, S3Config, S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV,
};
use crate::backend::{self, BResult, Backend};
pub use crate::bytesize::ByteSize;
use crate::bytesize::{GIB, MIB};
use crate::chunker::ChunkerParams;
use crate::error::{Error, Result};
pub use crate::secret::{secret_file_warning, Secret};
pub use crate::tiering::rate::BandwidthRule;
use crate::volume::KeepPolicy;

/// Environment variable that may carry the passphrase instead of `volume.passphrase_file`.
pub const PASSPHRASE_ENV: &str = "TIERGATE_PASSPHRASE";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub volume: VolumeConfig,
    #[serde(default)]
    pub chunking: ChunkingConfig,
    #[serde(default)]
    pub fuse: FuseConfig,
    #[serde(default)]
    pub webdav: WebdavConfig,
    /// The local directory store, used when there is no `[s3]` section.
    #[serde(default)]
    pub backend: BackendConfig,
    /// The tenant's S3 bucket (src/backend/s3.rs). Absent: the local directory store.
    pub s3: Option<S3Config>,
    /// Local disk space for pack data.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Uploads to the object store: concurrency, bandwidth, read-ahead of evicted data.
    #[serde(default)]
    pub tiering: TieringConfig,
    /// The status page, JSON API, metrics, management API and heartbeat (src/web.rs).
    #[serde(default)]
    pub web: WebConfig,
    /// The tenant quota on stored bytes (enforced by src/volume.rs).
    #[serde(default)]
    pub quota: QuotaConfig,
    /// Garbage collection of unreferenced data, local and off-site (src/volume/gc.rs,
    /// src/tiering/gc.rs).
    #[serde(default)]
    pub gc: GcConfig,
    /// Deleted files kept for a while (src/volume/recycle.rs).
    #[serde(default)]
    pub recycle: RecycleConfig,
    /// Scheduled read-only snapshots of the whole volume and how many are kept
    /// (src/volume/snapshot.rs).
    #[serde(default)]
    pub snapshots: SnapshotsConfig,
}

/// `[snapshots]`: a snapshot of the volume every `interval_minutes`, pruned restic-style by the
/// `keep_*` rules (docs/RETENTION.md#snapshots). Hand-made snapshots are never pruned.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsConfig {
    /// Minutes between scheduled snapshots; 0: none (only `tiergate snapshot create`).
    #[serde(default)]
    pub interval_minutes: u64,
    /// Keep the newest N scheduled snapshots.
    #[serde(default)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the newest N days (UTC) that have one.
    #[serde(default)]
    pub keep_daily: u32,
    /// The same per ISO week.
    #[serde(default)]
    pub keep_weekly: u32,
    /// The same per calendar month.
    #[serde(default)]
    pub keep_monthly: u32,
}

/// Upper bound of each `keep_*` rule: far beyond any real retention, low enough that a typo
/// (an extra digit or two) is caught.
const SNAPSHOT_KEEP_MAX: u32 = 10_000;
/// Upper bound of `[snapshots] interval_minutes`: one year.
const SNAPSHOT_INTERVAL_MAX: u64 = 525_600;

impl SnapshotsConfig {
    /// The keep rules, as the core takes them.
    pub fn keep(&self) -> KeepPolicy {
        KeepPolicy {
            last: self.keep_last,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.interval_minutes > SNAPSHOT_INTERVAL_MAX {
            return Err(Error::Invalid(format!(
                "snapshots.interval_minutes = {} is more than a year ({SNAPSHOT_INTERVAL_MAX})",
                self.interval_minutes
            )));
        }
        for (key, n) in [
            ("keep_last", self.keep_last),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
        ] {
            if n > SNAPSHOT_KEEP_MAX {
                return Err(Error::Invalid(format!(
                    "snapshots.{key} = {n} is more than {SNAPSHOT_KEEP_MAX}"
                )));
            }
        }
        if self.interval_minutes > 0 && self.keep().is_empty() {
            return Err(Error::Invalid(format!(
                "snapshots.interval_minutes = {} with no keep rule: every scheduled snapshot \
                 would be deleted as soon as it is taken. Set at least one of keep_last, \
                 keep_daily, keep_weekly, keep_monthly (or interval_minutes = 0 for no schedule)",
                self.interval_minutes
            )));
        }
        Ok(())
    }
}

/// `[recycle]`: insider protection. Files deleted (or replaced by a rename or a WebDAV PUT)
/// are kept this many days before their data can be collected.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecycleConfig {
    /// 0: off (deleted files go at once).
    #[serde(default)]
    pub days: u64,
}

/// `[quota]`: the limit the provider sells, on stored bytes (after dedup and compression).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Absent: no quota (statfs then reports the local disk). The management API overrides it.
    pub limit: Option<ByteSize>,
    /// The status page warns from this share of the limit on, in percent.
    #[serde(default = "default_quota_warn")]
    pub warn_percent: u8,
}

fn default_quota_warn() -> u8 {
    90
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            limit: None,
            warn_percent: default_quota_warn(),
        }
    }
}

/// `[gc]`: when and how hard garbage collection works (docs/RETENTION.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// Minutes between background passes; 0 = only on demand (`tiergate gc`).
    #[serde(default = "default_gc_interval")]
    pub interval_minutes: u64,
    /// Packs whose live data falls below this share of their size are repacked, in percent;
    /// wholly dead packs are always dropped.
    #[serde(default = "default_gc_min_live")]
    pub min_live_percent: u8,
    /// Packs above `min_live_percent` are repacked too, emptiest first, while the dead bytes in
    /// the volume's packs exceed this share of all pack bytes, in percent; 100 = off.
    #[serde(default = "default_gc_max_unused")]
    pub max_unused_percent: u8,
    /// A dropped pack stays in the bucket at least this long (and until the metadata that no
    /// longer names it is off-site), so a recovery running meanwhile never misses it.
    #[serde(default = "default_gc_grace")]
    pub grace_minutes: u64,
    /// Repacking reads and rewrites at most this many bytes per second.
    #[serde(default = "default_gc_rate")]
    pub max_rate: ByteSize,
}

fn default_gc_interval() -> u64 {
    60
}
fn default_gc_min_live() -> u8 {
    50
}
fn default_gc_max_unused() -> u8 {
    10
}
fn default_gc_grace() -> u64 {
    24 * 60
}
fn default_gc_rate() -> ByteSize {
    ByteSize(64 * MIB)
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval_minutes: default_gc_interval(),
            min_live_percent: default_gc_min_live(),
            max_unused_percent: default_gc_max_unused(),
            grace_minutes: default_gc_grace(),
            max_rate: default_gc_rate(),
        }
    }
}

/// Where objects go when no S3 store is configured (src/backend/local.rs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Directory of the local store. Default: `backend/` inside the volume directory.
    pub path: Option<PathBuf>,
}

/// `[cache]`: the local disk space for pack data and when eviction runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Local disk space for pack data: not-yet-uploaded packs plus cached copies of uploaded ones.
    #[serde(default = "default_cache_max_size")]
    pub max_size: ByteSize,
    /// Eviction of uploaded packs starts above this share of `max_size`, in percent.
    #[serde(default = "default_high_watermark")]
    pub high_watermark_percent: u8,
    /// Eviction stops below this share of `max_size`, in percent.
    #[serde(default = "default_low_watermark")]
    pub low_watermark_percent: u8,
}

fn default_cache_max_size() -> ByteSize {
    ByteSize(10 * GIB)
}
fn default_high_watermark() -> u8 {
    90
}
fn default_low_watermark() -> u8 {
    80
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: default_cache_max_size(),
            high_watermark_percent: default_high_watermark(),
            low_watermark_percent: default_low_watermark(),
        }
    }
}

impl CacheConfig {
    /// Checks the section; `pack_size_mib` is `volume.pack_size_mib`.
    pub fn validate(&self, pack_size_mib: u64) -> Result<()> {
        let (low, high) = (self.low_watermark_percent, self.high_watermark_percent);
        for (key, v) in [
            ("high_watermark_percent", high),
            ("low_watermark_percent", low),
        ] {
            if !(1..=100).contains(&v) {
                return Err(Error::Invalid(format!(
                    "cache.{key} = {v} is outside 1..=100"
                )));
            }
        }
        if low >= high {
            return Err(Error::Invalid(format!(
                "cache.low_watermark_percent = {low} must be below \
                 cache.high_watermark_percent = {high}"
            )));
        }
        // Packs are the unit of upload and eviction, so the cache must hold a few at once.
        let min = pack_size_mib.saturating_mul(4).saturating_mul(MIB);
        if self.max_size.bytes() < min {
            return Err(Error::Invalid(format!(
                "cache.max_size = {} is too small: it must hold at least 4 packs \
                 (4 × volume.pack_size_mib = {})",
                self.max_size,
                ByteSize(min)
            )));
        }
        Ok(())
    }
}

/// `[tiering]`: uploads to the object store (concurrency, bandwidth) and reads back from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TieringConfig {
    /// Packs uploaded at once.
    #[serde(default = "default_upload_concurrency")]
    pub upload_concurrency: usize,
    /// Upload bandwidth limit in bytes per second outside any schedule rule; None = unlimited.
    pub bandwidth_limit: Option<ByteSize>,
    /// Weekly rules; the first rule matching the local time wins, else bandwidth_limit applies.
    #[serde(default)]
    pub schedule: Vec<BandwidthRule>,
    /// Read-ahead window for sequential reads of evicted data.
    #[serde(default = "default_readahead")]
    pub readahead: ByteSize,
}

fn default_upload_concurrency() -> usize {
    4
}
fn default_readahead() -> ByteSize {
    ByteSize(32 * MIB)
}

impl Default for TieringConfig {
    fn default() -> Self {
        TieringConfig {
            upload_concurrency: default_upload_concurrency(),
            bandwidth_limit: None,
            schedule: Vec::new(),
            readahead: default_readahead(),
        }
    }
}

impl TieringConfig {
    pub fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.upload_concurrency) {
            return Err(Error::Invalid(format!(
                "tiering.upload_concurrency = {} is outside 1..=64",
                self.upload_concurrency
            )));
        }
        if self.bandwidth_limit == Some(ByteSize(0)) {
            return Err(Error::Invalid(
                "tiering.bandwidth_limit = 0: leave the key out for unlimited uploads \
                 (a schedule rule with limit = 0 makes a window unlimited)"
                    .into(),
            ));
        }
        for (i, rule) in self.schedule.iter().enumerate() {
            crate::tiering::rate::parse_rule(rule).map_err(|e| match e {
                Error::Invalid(m) => Error::Invalid(format!("tiering.schedule[{i}].{m}")),
                other => other,
            })?;
        }
        if !(MIB..=GIB).contains(&self.readahead.bytes()) {
            return Err(Error::Invalid(format!(
                "tiering.readahead = {} is outside 1 MiB..=1 GiB",
                self.readahead
            )));
        }
        Ok(())
    }

    /// The upload bandwidth schedule of this section.
    pub fn bandwidth_schedule(&self) -> Result<crate::tiering::rate::Schedule> {
        crate::tiering::rate::Schedule::new(
            self.bandwidth_limit.map(ByteSize::bytes),
            &self.schedule,
        )
        .map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("tiering.{m}")),
            other => other,
        })
    }
}

/// `[web]`: the status page, JSON API, Prometheus metrics, health endpoints, the management API
/// and the heartbeat push (src/web.rs, docs/STATUS.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Serve the status page and the APIs at all. The heartbeat, and settings saved earlier
    /// through the management API, apply either way.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `IP:port` to listen on; port 0 picks a free port (logged at start). The status pages are
    /// read-only but show the volume's path and id and the store's description to whoever can
    /// reach this address.
    #[serde(default = "default_web_listen")]
    pub listen: std::net::SocketAddr,
    /// File whose first line is the bearer token of the management API (at least 16
    /// characters). Absent: the management API answers 404.
    pub management_token_file: Option<PathBuf>,
    /// `http://` or `https://` URL the status document is POSTed to every
    /// `heartbeat_interval_secs`. Absent: no heartbeat.
    pub heartbeat_url: Option<String>,
    /// Seconds between heartbeats (5..=86400).
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval_secs: u64,
    /// File whose first line is sent as `Authorization: Bearer ...` with each heartbeat.
    pub heartbeat_token_file: Option<PathBuf>,
    /// PEM certificate chain and private key: serve the status server over HTTPS (rustls)
    /// instead of plain HTTP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Connections open at once (1..=65536); more are answered 503 and closed at once.
    #[serde(default = "default_web_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one IPv4 address or IPv6 /64 (1..=max_connections).
    #[serde(default = "default_web_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Seconds a TLS client has to finish its handshake (1..=3600).
    #[serde(default = "default_tls_handshake_timeout")]
    pub tls_handshake_timeout_secs: u64,
    /// Seconds a client has to send a request head, counted from when the connection waits
    /// for one, so also how long an idle kept-alive connection stays open (1..=3600).
    #[serde(default = "default_web_header_timeout")]
    pub header_timeout_secs: u64,
    /// Seconds a request body may send nothing while the server waits for it (1..=3600).
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
}

fn default_web_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_heartbeat_interval() -> u64 {
    60
}
fn default_web_max_connections() -> usize {
    64
}
fn default_web_max_connections_per_ip() -> usize {
    16
}
fn default_tls_handshake_timeout() -> u64 {
    10
}
fn default_web_header_timeout() -> u64 {
    30
}
fn default_body_timeout() -> u64 {
    60
}
fn default_webdav_max_connections() -> usize {
    256
}
fn default_webdav_max_connections_per_ip() -> usize {
    64
}
fn default_webdav_header_timeout() -> u64 {
    60
}

/// Checks a listener's limits; `section` names it in the message.
#[allow(clippy::too_many_arguments)]
fn validate_listener(
    section: &str,
    tls_cert: &Option<PathBuf>,
    tls_key: &Option<PathBuf>,
    max_connections: usize,
    per_ip: usize,
    timeouts: [(&str, u64); 3],
) -> Result<()> {
    let bad = |m: String| Err(Error::Invalid(format!("{section}.{m}")));
    if tls_cert.is_some() != tls_key.is_some() {
        return bad(format!(
            "tls_cert and {section}.tls_key go together: set both or neither"
        ));
    }
    if !(1..=65536).contains(&max_connections) {
        return bad(format!(
            "max_connections = {max_connections} is outside 1..=65536"
        ));
    }
    if !(1..=max_connections).contains(&per_ip) {
        return bad(format!(
            "max_connections_per_ip = {per_ip} is outside 1..=max_connections ({max_connections})"
        ));
    }
    for (key, secs) in timeouts {
        if !(1..=3600).contains(&secs) {
            return bad(format!("{key} = {secs} is outside 1..=3600"));
        }
    }
    Ok(())
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            listen: default_web_listen(),
            management_token_file: None,
            heartbeat_url: None,
            heartbeat_interval_secs: default_heartbeat_interval(),
            heartbeat_token_file: None,
            tls_cert: None,
            tls_key: None,
            max_connections: default_web_max_connections(),
            max_connections_per_ip: default_web_max_connections_per_ip(),
            tls_handshake_timeout_secs: default_tls_handshake_timeout(),
            header_timeout_secs: default_web_header_timeout(),
            body_timeout_secs: default_body_timeout(),
        }
    }
}

impl WebConfig {
    pub fn validate(&self) -> Result<()> {
        validate_listener(
            "web",
            &self.tls_cert,
            &self.tls_key,
            self.max_connections,
            self.max_connections_per_ip,
            [
                (
                    "tls_handshake_timeout_secs",
                    self.tls_handshake_timeout_secs,
                ),
                ("header_timeout_secs", self.header_timeout_secs),
                ("body_timeout_secs", self.body_timeout_secs),
            ],
        )?;
        let bad = |m: String| Err(Error::Invalid(format!("web.{m}")));
        if !(5..=86400).contains(&self.heartbeat_interval_secs) {
            return bad(format!(
                "heartbeat_interval_secs = {} is outside 5..=86400",
                self.heartbeat_interval_secs
            ));
        }
        match &self.heartbeat_url {
            Some(url) => {
                let uri: Option<http::Uri> = url.parse().ok();
                let scheme_ok = uri
                    .as_ref()
                    .and_then(|u| u.scheme_str())
                    .is_some_and(|s| s == "http" || s == "https");
                if !scheme_ok || uri.as_ref().and_then(|u| u.host()).is_none() {
                    return bad(format!(
                        "heartbeat_url = {url:?} is not an http:// or https:// URL with a host"
                    ));
                }
                if uri
                    .as_ref()
                    .and_then(|u| u.authority())
                    .is_some_and(|a| a.as_str().contains('@'))
                {
                    return bad(format!(
                        "heartbeat_url = {url:?} carries credentials: put the token in \
                         web.heartbeat_token_file instead"
                    ));
                }
            }
            None if self.heartbeat_token_file.is_some() => {
                return bad("heartbeat_token_file is set but heartbeat_url is not".into());
            }
            None => {}
        }
        Ok(())
    }

    /// The status server's connection limits and timeouts.
    pub fn limits(&self) -> crate::serve::Limits {
        crate::serve::Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            tls_handshake_timeout: Duration::from_secs(self.tls_handshake_timeout_secs),
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            body_timeout: Duration::from_secs(self.body_timeout_secs),
            // Requests to the status server are a line and a token.
            max_header_size: 16 << 10,
        }
    }

    /// The TLS acceptor when `tls_cert` and `tls_key` are set.
    pub fn tls(&self) -> Result<Option<tokio_rustls::TlsAcceptor>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => crate::serve::load_tls("web", c, k).map(Some),
            _ => Ok(None),
        }
    }

    /// The management token: the first line of `management_token_file`, if one is configured.
    pub fn management_token(&self) -> Result<Option<Secret>> {
        self.management_token_file
            .as_deref()
            .map(|f| read_token(f, "web.management_token_file", 16))
            .transpose()
    }

    /// The heartbeat's bearer token: the first line of `heartbeat_token_file`, if configured.
    pub fn heartbeat_token(&self) -> Result<Option<Secret>> {
        self.heartbeat_token_file
            .as_deref()
            .map(|f| read_token(f, "web.heartbeat_token_file", 1))
            .transpose()
    }
}

/// The first line of a token file, trimmed; refused when shorter than `min` characters or not
/// a valid HTTP header value.
fn read_token(file: &Path, key: &str, min: usize) -> Result<Secret> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::io(format!("reading {key} {}", file.display()), e))?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() < min {
        return Err(Error::Invalid(format!(
            "{key} {}: the token (first line) must have at least {min} characters",
            file.display()
        )));
    }
    if !line.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(Error::Invalid(format!(
            "{key} {}: the token (first line) must be printable ASCII without spaces",
            file.display()
        )));
    }
    Ok(Secret(line.to_string()))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Directory holding the volume: key file, metadata store, packs.
    pub path: PathBuf,
    /// File whose first line is the passphrase. If absent, `TIERGATE_PASSPHRASE` is used.
    pub passphrase_file: Option<PathBuf>,
    /// Page cache of the metadata store, in MiB.
    #[serde(default = "default_metadata_cache_mib")]
    pub metadata_cache_mib: u64,
    /// zstd level for chunk compression (1..=19).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Packs are sealed at about this size, in MiB.
    #[serde(default = "default_pack_size_mib")]
    pub pack_size_mib: u64,
    /// Dirty (written, not yet committed) data held in memory before writers commit it, in MiB.
    #[serde(default = "default_dirty_limit_mib")]
    pub dirty_limit_mib: u64,
}

/// Chunk sizes: used only when the volume is created, then fixed in the volume's own record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkingConfig {
    #[serde(default = "default_min")]
    pub min_size: u32,
    #[serde(default = "default_avg")]
    pub avg_size: u32,
    #[serde(default = "default_max")]
    pub max_size: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FuseConfig {
    /// Where to mount. No mount if absent.
    pub mountpoint: Option<PathBuf>,
    /// Let users other than the one running tiergate use the mount (needed for Samba/NFS exports).
    #[serde(default)]
    pub allow_other: bool,
    /// Let the kernel cache writes (coalesces small writes; fsync and close still flush).
    #[serde(default = "yes")]
    pub writeback_cache: bool,
    /// Worker threads serving FUSE requests.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// How far ahead the kernel reads a file being read sequentially (the mount's
    /// `read_ahead_kb`, which is 128 KiB for a FUSE mount unless set). 0: leave it.
    #[serde(default = "default_kernel_readahead")]
    pub readahead: ByteSize,
    /// Mount over a mountpoint that holds files, hiding them while mounted (libfuse's
    /// `nonempty`). Default: a non-empty mountpoint refuses the start.
    #[serde(default)]
    pub allow_non_empty: bool,
}

fn default_kernel_readahead() -> ByteSize {
    ByteSize(4 * MIB)
}

/// The WebDAV share (src/webdav.rs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebdavConfig {
    /// Serve the share at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `IP:port` to listen on; port 0 picks a free port (printed at start).
    #[serde(default = "default_webdav_listen")]
    pub listen: std::net::SocketAddr,
    /// HTTP Basic authentication against `users_file`. Default: required unless `listen` is a
    /// loopback address; `false` is refused for any other address.
    pub require_auth: Option<bool>,
    /// The users file (`tiergate user add`), one `name:argon2id-hash` per line.
    /// Default: `webdav-users` next to the config file.
    pub users_file: Option<PathBuf>,
    /// PEM certificate chain and private key: serve HTTPS (rustls) instead of plain HTTP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Connections open at once (1..=65536); more are answered 503 and closed at once.
    #[serde(default = "default_webdav_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one IPv4 address or IPv6 /64 (1..=max_connections).
    #[serde(default = "default_webdav_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Seconds a TLS client has to finish its handshake (1..=3600).
    #[serde(default = "default_tls_handshake_timeout")]
    pub tls_handshake_timeout_secs: u64,
    /// Seconds a client has to send a request head, counted from when the connection waits
    /// for one, so also how long an idle kept-alive connection stays open (1..=3600).
    #[serde(default = "default_webdav_header_timeout")]
    pub header_timeout_secs: u64,
    /// Seconds a request body (a PUT's data) may send nothing while the share waits for it
    /// (1..=3600). Not a limit on the upload's total time.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
}

impl Default for WebdavConfig {
    fn default() -> Self {
        WebdavConfig {
            enabled: true,
            listen: default_webdav_listen(),
            require_auth: None,
            users_file: None,
            tls_cert: None,
            tls_key: None,
            max_connections: default_webdav_max_connections(),
            max_connections_per_ip: default_webdav_max_connections_per_ip(),
            tls_handshake_timeout_secs: default_tls_handshake_timeout(),
            header_timeout_secs: default_webdav_header_timeout(),
            body_timeout_secs: default_body_timeout(),
        }
    }
}

impl WebdavConfig {
    /// The share's connection limits and timeouts.
    pub fn limits(&self) -> crate::serve::Limits {
        crate::serve::Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            tls_handshake_timeout: Duration::from_secs(self.tls_handshake_timeout_secs),
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            body_timeout: Duration::from_secs(self.body_timeout_secs),
            // Request heads above 64 KiB get 431 (long Destination and If headers fit).
            max_header_size: 64 << 10,
        }
    }

    /// The TLS acceptor when `tls_cert` and `tls_key` are set.
    pub fn tls(&self) -> Result<Option<tokio_rustls::TlsAcceptor>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => crate::serve::load_tls("webdav", c, k).map(Some),
            _ => Ok(None),
        }
    }

    /// Whether requests must carry credentials.
    pub fn auth_required(&self) -> bool {
        self.require_auth.unwrap_or(!self.listen.ip().is_loopback())
    }

    /// The users file (the default is resolved by [`Config::load`]).
    pub fn users_path(&self) -> PathBuf {
        self.users_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("webdav-users"))
    }
}

fn default_webdav_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

fn default_metadata_cache_mib() -> u64 {
    64
}
fn default_zstd_level() -> i32 {
    3
}
fn default_pack_size_mib() -> u64 {
    32
}
fn default_dirty_limit_mib() -> u64 {
    256
}
fn default_min() -> u32 {
    ChunkerParams::default().min_size
}
fn default_avg() -> u32 {
    ChunkerParams::default().avg_size
}
fn default_max() -> u32 {
    ChunkerParams::default().max_size
}
fn yes() -> bool {
    true
}
fn default_threads() -> usize {
    8
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        ChunkingConfig {
            min_size: default_min(),
            avg_size: default_avg(),
            max_size: default_max(),
        }
    }
}

impl Default for FuseConfig {
    fn default() -> Self {
        FuseConfig {
            mountpoint: None,
            allow_other: false,
            writeback_cache: true,
            threads: default_threads(),
            readahead: default_kernel_readahead(),
            allow_non_empty: false,
        }
    }
}

impl ChunkingConfig {
    pub fn params(&self) -> ChunkerParams {
        ChunkerParams {
            min_size: self.min_size,
            avg_size: self.avg_size,
            max_size: self.max_size,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading config {}", path.display()), e))?;
        let mut cfg = Self::parse(&text).map_err(|e| match e {
            Error::Invalid(msg) => Error::Invalid(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        // Relative paths in a config file are relative to the file, not to the working directory.
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.volume.path = base.join(&cfg.volume.path);
        if let Some(p) = &cfg.volume.passphrase_file {
            cfg.volume.passphrase_file = Some(base.join(p));
        }
        if let Some(m) = &cfg.fuse.mountpoint {
            cfg.fuse.mountpoint = Some(base.join(m));
        }
        if let Some(p) = &cfg.backend.path {
            cfg.backend.path = Some(base.join(p));
        }
        if let Some(s3) = &mut cfg.s3 {
            if let Some(f) = &s3.secret_access_key_file {
                s3.secret_access_key_file = Some(base.join(f));
            }
        }
        let w = &mut cfg.webdav;
        w.users_file = Some(base.join(w.users_path()));
        for p in [&mut w.tls_cert, &mut w.tls_key].into_iter().flatten() {
            *p = base.join(&*p);
        }
        let web = &mut cfg.web;
        for p in [
            &mut web.management_token_file,
            &mut web.heartbeat_token_file,
            &mut web.tls_cert,
            &mut web.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            *p = base.join(&*p);
        }
        let mut warnings = cfg.warnings();
        if cfg
            .s3
            .as_ref()
            .is_some_and(|s3| s3.secret_access_key.is_some())
        {
            warnings.extend(secret_file_warning(
                path,
                "the config file (it holds s3.secret_access_key)",
            ));
        }
        for w in warnings {
            tracing::warn!("{}: {w}", path.display());
        }
        Ok(cfg)
    }

    /// Settings that work but expose the volume: a share without authentication or without
    /// TLS on the network, secret files other users can read. Logged by [`Config::load`];
    /// errors for what must not run at all are in [`Config::validate`].
    pub fn warnings(&self) -> Vec<String> {
        let mut out = self.share_exposure_warnings();
        let web = &self.web;
        if web.enabled
            && web.management_token_file.is_some()
            && !web.listen.ip().is_loopback()
            && web.tls_cert.is_none()
        {
            out.push(format!(
                "the status server on {} serves the management API over plain HTTP: its token \
                 crosses the network unencrypted; set web.tls_cert and web.tls_key",
                web.listen
            ));
        }
        out.extend(self.secret_file_warnings());
        out
    }

    fn share_exposure_warnings(&self) -> Vec<String> {
        let w = &self.webdav;
        let mut out = Vec::new();
        if !w.enabled {
            return out;
        }
        if !w.auth_required() {
            out.push(format!(
                "the WebDAV share on {} asks for no password: every local user and process can \
                 read, change and delete the whole volume through it; set \
                 webdav.require_auth = true and add users with `tiergate user add`",
                w.listen
            ));
        }
        if !w.listen.ip().is_loopback() && w.tls_cert.is_none() {
            out.push(format!(
                "the WebDAV share listens on {} over plain HTTP: its passwords and every file \
                 cross the network unencrypted; set webdav.tls_cert and webdav.tls_key",
                w.listen
            ));
        }
        out
    }

    fn secret_file_warnings(&self) -> Vec<String> {
        let mut files: Vec<(&Path, &str)> = Vec::new();
        if let Some(f) = &self.volume.passphrase_file {
            files.push((f, "volume.passphrase_file"));
        }
        if let Some(f) = self
            .s3
            .as_ref()
            .and_then(|s3| s3.secret_access_key_file.as_ref())
        {
            files.push((f, "s3.secret_access_key_file"));
        }
        if self.webdav.enabled {
            if let Some(f) = &self.webdav.users_file {
                files.push((f, "webdav.users_file"));
            }
            if let Some(f) = &self.webdav.tls_key {
                files.push((f, "webdav.tls_key"));
            }
        }
        if let Some(f) = &self.web.management_token_file {
            files.push((f, "web.management_token_file"));
        }
        if let Some(f) = self.web.tls_key.as_ref().filter(|_| self.web.enabled) {
            files.push((f, "web.tls_key"));
        }
        if let Some(f) = &self.web.heartbeat_token_file {
            files.push((f, "web.heartbeat_token_file"));
        }
        files
            .into_iter()
            .filter_map(|(f, key)| secret_file_warning(f, key))
            .collect()
    }

    pub fn parse(text: &str) -> Result<Self> {
        let cfg: Config = toml::from_str(text).map_err(|e| Error::Invalid(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let v = &self.volume;
        if !(1..=19).contains(&v.zstd_level) {
            return Err(Error::Invalid(format!(
                "volume.zstd_level = {} is outside 1..=19",
                v.zstd_level
            )));
        }
        if !(1..=1024).contains(&v.pack_size_mib) {
            return Err(Error::Invalid(format!(
                "volume.pack_size_mib = {} is outside 1..=1024",
                v.pack_size_mib
            )));
        }
        if v.metadata_cache_mib == 0 {
            return Err(Error::Invalid(
                "volume.metadata_cache_mib must be > 0".into(),
            ));
        }
        if v.dirty_limit_mib < 16 {
            return Err(Error::Invalid(
                "volume.dirty_limit_mib must be >= 16".into(),
            ));
        }
        if self.fuse.readahead.bytes() > GIB {
            return Err(Error::Invalid(format!(
                "fuse.readahead = {} is over 1 GiB",
                self.fuse.readahead
            )));
        }
        if !(1..=256).contains(&self.fuse.threads) {
            return Err(Error::Invalid(format!(
                "fuse.threads = {} is outside 1..=256",
                self.fuse.threads
            )));
        }
        let w = &self.webdav;
        validate_listener(
            "webdav",
            &w.tls_cert,
            &w.tls_key,
            w.max_connections,
            w.max_connections_per_ip,
            [
                ("tls_handshake_timeout_secs", w.tls_handshake_timeout_secs),
                ("header_timeout_secs", w.header_timeout_secs),
                ("body_timeout_secs", w.body_timeout_secs),
            ],
        )?;
        if w.require_auth == Some(false) && !w.listen.ip().is_loopback() {
            return Err(Error::Invalid(format!(
                "webdav.listen = {} is not a loopback address, so the share needs \
                 authentication: remove `require_auth = false`",
                w.listen
            )));
        }
        if let Some(s3) = &self.s3 {
            if self.backend.path.is_some() {
                return Err(Error::Invalid(
                    "backend.path and [s3] are alternatives: objects go to the S3 bucket when \
                     [s3] is present, so remove backend.path"
                        .into(),
                ));
            }
            s3.validate()?;
        }
        self.cache.validate(v.pack_size_mib)?;
        self.tiering.validate()?;
        if self.quota.limit == Some(ByteSize(0)) {
            return Err(Error::Invalid(
                "quota.limit = 0: leave the key out for no quota".into(),
            ));
        }
        if !(1..=100).contains(&self.quota.warn_percent) {
            return Err(Error::Invalid(format!(
                "quota.warn_percent = {} is outside 1..=100",
                self.quota.warn_percent
            )));
        }
        if self.gc.min_live_percent > 95 {
            return Err(Error::Invalid(format!(
                "gc.min_live_percent = {} is above 95 (every pass would rewrite nearly every pack)",
                self.gc.min_live_percent
            )));
        }
        if !(1..=100).contains(&self.gc.max_unused_percent) {
            return Err(Error::Invalid(format!(
                "gc.max_unused_percent = {} is outside 1..=100 (100 turns the bound off)",
                self.gc.max_unused_percent
            )));
        }
        if self.recycle.days > 3650 {
            return Err(Error::Invalid(format!(
                "recycle.days = {} is more than ten years",
                self.recycle.days
            )));
        }
        self.snapshots.validate()?;
        if self.gc.max_rate.bytes() < MIB {
            return Err(Error::Invalid(format!(
                "gc.max_rate = {} is below 1 MiB per second",
                self.gc.max_rate
            )));
        }
        self.web.validate()?;
        if self.web.enabled
            && self.webdav.enabled
            && self.web.listen == w.listen
            && self.web.listen.port() != 0
        {
            return Err(Error::Invalid(format!(
                "web.listen and webdav.listen are both {}: give them different ports",
                w.listen
            )));
        }
        self.chunking
            .params()
            .validate()
            .map_err(|e| Error::Invalid(format!("[chunking]: {e}")))
    }
    /// The backend this config asks for: S3 if it has an `[s3]` section, else the local
    /// directory (`[backend] path`, default `<volume.path>/backend`).
    pub fn open_backend(&self) -> BResult<Arc<dyn Backend>> {
        match &self.s3 {
            Some(s3cfg) => Ok(Arc::new(backend::s3::S3Backend::new(s3cfg)?)),
            None => Ok(Arc::new(backend::local::LocalDir::open(
                &self.backend_dir(),
            )?)),
        }
    }

    /// The local store's directory: `backend.path`, or `backend/` in the volume directory.
    pub fn backend_dir(&self) -> PathBuf {
        self.backend
            .path
            .clone()
            .unwrap_or_else(|| self.volume.path.join("backend"))
    }

    /// The passphrase, from `volume.passphrase_file` or the environment.
    pub fn passphrase(&self) -> Result<Passphrase> {
        if let Some(file) = &self.volume.passphrase_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::io(format!("reading passphrase file {}", file.display()), e))?;
            let line = text.lines().next().unwrap_or("").to_string();
            if line.is_empty() {
                return Err(Error::Invalid(format!(
                    "passphrase file {} is empty",
                    file.display()
                )));
            }
            return Ok(Passphrase(line));
        }
        match std::env::var(PASSPHRASE_ENV) {
            Ok(p) if !p.is_empty() => Ok(Passphrase(p)),
            _ => Err(Error::Invalid(format!(
                "no passphrase: set volume.passphrase_file or {PASSPHRASE_ENV}"
            ))),
        }
    }
}

/// A passphrase; `Debug` never shows it.
#[derive(Clone)]
pub struct Passphrase(pub String);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// The annotated example printed by `tiergate init --print-config`.
pub const EXAMPLE: &str = include_str!("../config/tiergate.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let cfg = Config::parse(EXAMPLE).unwrap();
        assert_eq!(cfg.volume.zstd_level, 3);
        assert!(cfg.fuse.mountpoint.is_some());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = Config::parse("[volume]\npath = \"x\"\nzstd = 3\n").unwrap_err();
        assert!(err.to_string().contains("zstd"), "{err}");
        let err = Config::parse("[volume]\npath = \"x\"\nzstd_level = 40\n").unwrap_err();
        assert!(err.to_string().contains("volume.zstd_level"), "{err}");
        let err = Config::parse("[volume]\npath = \"x\"\n[fusee]\n").unwrap_err();
        assert!(err.to_string().contains("fusee"), "{err}");
    }

    #[test]
    fn webdav_section_defaults_and_rules() {
        let cfg = Config::parse("[volume]\npath = \"x\"\n").unwrap();
        assert!(cfg.webdav.enabled);
        assert!(cfg.webdav.listen.ip().is_loopback());
        assert!(!cfg.webdav.auth_required());
        let cfg =
            Config::parse("[volume]\npath = \"x\"\n[webdav]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
        assert!(cfg.webdav.auth_required());
        let err = Config::parse(
            "[volume]\npath = \"x\"\n[webdav]\nlisten = \"0.0.0.0:80\"\nrequire_auth = false\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
        let err =
            Config::parse("[volume]\npath = \"x\"\n[webdav]\ntls_cert = \"c.pem\"\n").unwrap_err();
        assert!(err.to_string().contains("tls_key"), "{err}");
        let err = Config::parse("[volume]\npath = \"x\"\n[webdav]\nport = 1\n").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
            match path.file_name().unwrap().to_str().unwrap() {
                "aws-s3.toml" => {
                    let s3 = cfg.s3.unwrap();
                    assert_eq!(s3.endpoint, None);
                    assert!(!s3.path_style);
                    assert_eq!(s3.key_prefix(), "site-berlin/");
                    assert!(s3.secret_access_key_file.unwrap().is_absolute());
                }
                "s3-compatible.toml" => {
                    let s3 = cfg.s3.unwrap();
                    assert!(s3.path_style);
                    assert_eq!(s3.part_size_mib, 8);
                    assert_eq!(s3.max_attempts, 5);
                }
                "local-dir.toml" => {
                    assert!(cfg.s3.is_none());
                    assert_eq!(cfg.backend_dir(), Path::new("/mnt/nas/tiergate-objects"));
                }
                "managed.toml" => {
                    assert!(cfg.web.management_token_file.unwrap().is_absolute());
                    assert!(cfg.web.heartbeat_url.unwrap().starts_with("https://"));
                    assert!(!cfg.web.listen.ip().is_loopback());
                    assert_eq!(cfg.tiering.schedule.len(), 1);
                    assert_eq!(cfg.s3.unwrap().key_prefix(), "tenant-0042/");
                    assert_eq!(cfg.quota.limit, Some(ByteSize(2 << 40)));
                    assert_eq!(cfg.recycle.days, 14);
                    let s = &cfg.snapshots;
                    assert_eq!(
                        (s.interval_minutes, s.keep_last, s.keep_daily, s.keep_weekly),
                        (1440, 0, 14, 8)
                    );
                    assert_eq!(s.keep_monthly, 6);
                }
                other => panic!("add a check for config/examples/{other}"),
            }
        }
        assert_eq!(seen, 4);
        // The main example: no [s3], so the local store in the volume directory.
        let cfg = Config::parse(EXAMPLE).unwrap();
        assert!(cfg.s3.is_none());
        assert_eq!(
            cfg.backend_dir(),
            Path::new("/var/lib/tiergate/volume/backend")
        );
        assert_eq!((cfg.recycle.days, cfg.quota.limit), (7, None));
        assert_eq!((cfg.gc.min_live_percent, cfg.gc.grace_minutes), (50, 1440));
        assert_eq!(cfg.gc.max_unused_percent, 10);
        let s = &cfg.snapshots;
        assert_eq!(
            (s.interval_minutes, s.keep_last, s.keep_daily, s.keep_weekly),
            (1440, 3, 7, 4)
        );
        assert_eq!(s.keep_monthly, 3);
    }

    #[test]
    fn snapshots_section_defaults_and_good_values() {
        let base = "[volume]\npath = \"x\"\n";
        // Absent: no schedule, no rules.
        let cfg = Config::parse(base).unwrap();
        assert_eq!(cfg.snapshots.interval_minutes, 0);
        assert!(cfg.snapshots.keep().is_empty());
        for (extra, want) in [
            ("interval_minutes = 60\nkeep_last = 24", (60, 24, 0, 0, 0)),
            (
                "interval_minutes = 525600\nkeep_monthly = 10000",
                (525600, 0, 0, 0, 10000),
            ),
            (
                "interval_minutes = 1\nkeep_daily = 1\nkeep_weekly = 2",
                (1, 0, 1, 2, 0),
            ),
            // Rules without a schedule are accepted (they prune nothing taken by hand).
            ("keep_daily = 7", (0, 0, 7, 0, 0)),
            ("interval_minutes = 0", (0, 0, 0, 0, 0)),
        ] {
            let cfg = Config::parse(&format!("{base}[snapshots]\n{extra}\n"))
                .unwrap_or_else(|e| panic!("{extra}: {e}"));
            let (s, k) = (&cfg.snapshots, cfg.snapshots.keep());
            assert_eq!(
                (s.interval_minutes, k.last, k.daily, k.weekly, k.monthly),
                want,
                "{extra}"
            );
        }
    }

    #[test]
    fn retention_settings_are_checked() {
        let base = "[volume]\npath = \"x\"\n";
        for (extra, needle) in [
            ("[quota]\nlimit = 0", "quota.limit = 0"),
            ("[quota]\nwarn_percent = 0", "quota.warn_percent"),
            ("[quota]\nlimit = \"1 furlong\"", "furlong"),
            ("[gc]\nmin_live_percent = 99", "gc.min_live_percent"),
            ("[gc]\nmax_unused_percent = 0", "gc.max_unused_percent"),
            ("[gc]\nmax_rate = \"10KiB\"", "gc.max_rate"),
            ("[recycle]\ndays = 5000", "recycle.days"),
            ("[recycle]\nweeks = 1", "weeks"),
            (
                "[snapshots]\ninterval_minutes = 1440",
                "snapshots.interval_minutes = 1440 with no keep rule",
            ),
            (
                "[snapshots]\ninterval_minutes = 525601\nkeep_last = 1",
                "snapshots.interval_minutes = 525601",
            ),
            (
                "[snapshots]\ninterval_minutes = 60\nkeep_last = 10001",
                "snapshots.keep_last = 10001",
            ),
            ("[snapshots]\nkeep_daily = 99999", "snapshots.keep_daily"),
            ("[snapshots]\nkeep_weekly = 20000", "snapshots.keep_weekly"),
            (
                "[snapshots]\nkeep_monthly = 12345",
                "snapshots.keep_monthly",
            ),
            ("[snapshots]\nkeep_hourly = 24", "keep_hourly"),
            ("[snapshots]\nkeep_last = -1", "keep_last"),
            (
                "[snapshots]\ninterval_minutes = \"daily\"",
                "interval_minutes",
            ),
        ] {
            let e = Config::parse(&format!("{base}{extra}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{extra}: {e}");
        }
        let cfg = Config::parse(&format!(
            "{base}[quota]\nlimit = \"5TiB\"\n[gc]\ninterval_minutes = 0\n"
        ))
        .unwrap();
        assert_eq!(cfg.quota.limit, Some(ByteSize(5 << 40)));
        assert_eq!(cfg.gc.interval_minutes, 0);
    }

    const S3_MIN: &str = "[volume]\npath = \"x\"\n[s3]\nregion = \"r\"\nbucket = \"bkt\"\n";

    #[test]
    fn s3_section_rules() {
        let cfg = Config::parse(S3_MIN).unwrap();
        let s3 = cfg.s3.unwrap();
        assert_eq!((s3.part_size_mib, s3.part_concurrency), (16, 4));
        assert_eq!(s3.key_prefix(), "");
        for (extra, needle) in [
            ("endpoint = \"s3.example.com\"", "http://"),
            ("prefix = \"a//b\"", "prefix"),
            ("part_size_mib = 4", "part_size_mib"),
            ("max_attempts = 0", "max_attempts"),
            ("part_concurrency = 0", "part_concurrency"),
            (
                "secret_access_key = \"s\"\nsecret_access_key_file = \"f\"",
                "not both",
            ),
            ("multipart_threshold_mib = 8", "multipart_threshold_mib"),
            ("bucket_name = \"x\"", "bucket_name"),
        ] {
            let err = Config::parse(&format!("{S3_MIN}{extra}\n")).unwrap_err();
            assert!(err.to_string().contains(needle), "{extra}: {err}");
        }
        let err =
            Config::parse("[volume]\npath = \"x\"\n[s3]\nregion = \"r\"\nbucket = \"Bad_Name\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("bucket"), "{err}");
        let err = Config::parse(&format!("{S3_MIN}[backend]\npath = \"/b\"\n")).unwrap_err();
        assert!(err.to_string().contains("alternatives"), "{err}");
        let cfg = Config::parse(&format!("{S3_MIN}prefix = \"/tenant-1/\"\n")).unwrap();
        assert_eq!(cfg.s3.unwrap().key_prefix(), "tenant-1/");
    }

    #[test]
    fn s3_credentials_come_from_config_file_or_environment_and_stay_hidden() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "filesecret\n").unwrap();
        std::fs::write(
            dir.path().join("c.toml"),
            format!("{S3_MIN}access_key_id = \"AK\"\nsecret_access_key_file = \"secret\"\n"),
        )
        .unwrap();
        let cfg = Config::load(&dir.path().join("c.toml")).unwrap();
        let s3 = cfg.s3.as_ref().unwrap();
        let (id, secret) = s3.credentials().unwrap();
        assert_eq!((id.as_str(), secret.0.as_str()), ("AK", "filesecret"));
        assert!(!format!("{cfg:?} {secret:?}").contains("filesecret"));

        let cfg = Config::parse(&format!(
            "{S3_MIN}access_key_id = \"AK\"\nsecret_access_key = \"inline-secret\"\n"
        ))
        .unwrap();
        assert_eq!(
            cfg.s3.as_ref().unwrap().credentials().unwrap().1 .0,
            "inline-secret"
        );
        assert!(!format!("{cfg:?}").contains("inline-secret"));

        // Neither in the config: the environment (the only test here that touches it).
        let cfg = Config::parse(S3_MIN).unwrap();
        let s3 = cfg.s3.unwrap();
        std::env::remove_var(S3_ACCESS_KEY_ENV);
        std::env::remove_var(S3_SECRET_KEY_ENV);
        let err = s3.credentials().unwrap_err();
        assert!(err.to_string().contains(S3_ACCESS_KEY_ENV), "{err}");
        std::env::set_var(S3_ACCESS_KEY_ENV, "ENVKEY");
        let err = s3.credentials().unwrap_err();
        assert!(err.to_string().contains(S3_SECRET_KEY_ENV), "{err}");
        std::env::set_var(S3_SECRET_KEY_ENV, "envsecret");
        let (id, secret) = s3.credentials().unwrap();
        assert_eq!((id.as_str(), secret.0.as_str()), ("ENVKEY", "envsecret"));
        std::env::remove_var(S3_ACCESS_KEY_ENV);
        std::env::remove_var(S3_SECRET_KEY_ENV);
    }

    #[test]
    fn byte_sizes_parse_with_binary_units() {
        let ok = |t: &str| {
            ByteSize::parse(t)
                .unwrap_or_else(|e| panic!("{t}: {e}"))
                .bytes()
        };
        assert_eq!(ok("0"), 0);
        assert_eq!(ok("1000"), 1000);
        assert_eq!(ok("1000B"), 1000);
        assert_eq!(ok("512KiB"), 512 << 10);
        assert_eq!(ok("20MiB"), 20 << 20);
        assert_eq!(ok("20 MiB"), 20 << 20);
        assert_eq!(ok(" 20M "), 20 << 20);
        assert_eq!(ok("20MB"), 20 << 20);
        assert_eq!(ok("20MIB"), 20 << 20);
        assert_eq!(ok("20mB"), 20 << 20);
        assert_eq!(ok("1.5GiB"), 3 << 29);
        assert_eq!(ok("1.5 G"), 3 << 29);
        assert_eq!(ok("2TiB"), 2 << 40);
        assert_eq!(ok("2t"), 2 << 40);
        assert_eq!(ok("0.1KiB"), 102, "rounded down");
        assert_eq!(ok("16777215TiB"), 16_777_215 << 40);
        for (bad, needle) in [
            ("", "number"),
            ("MiB", "number"),
            ("-1MiB", "negative"),
            ("-5", "negative"),
            ("1.5", "no fraction"),
            ("1.5B", "no fraction"),
            (".5GiB", "number"),
            ("5.GiB", "number"),
            ("1.2.3MiB", "number"),
            ("20 MiB/s", "unknown unit"),
            ("20 PiB", "unknown unit"),
            ("1e6", "unknown unit"),
            ("twenty", "number"),
            ("20Mb", "bits"),
            ("20 kb", "bits"),
            ("20b", "bits"),
            ("20mib", "bits"),
            ("16777216TiB", "too large"),
            ("18446744073709551616", "too large"),
            ("99999999999999999999999999999999999999999", "too large"),
        ] {
            let err = ByteSize::parse(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
        let err = ByteSize::parse("20Mb").unwrap_err().to_string();
        assert!(err.contains("\"20MiB\""), "{err}");
    }

    #[test]
    fn byte_sizes_display_exactly_and_parse_back() {
        for (n, text) in [
            (0, "0 B"),
            (1000, "1000 B"),
            (1024, "1 KiB"),
            (20 << 20, "20 MiB"),
            (3 << 29, "1536 MiB"),
            (10 << 30, "10 GiB"),
            (2 << 40, "2 TiB"),
            ((1 << 20) + 1, "1048577 B"),
            (u64::MAX, "18446744073709551615 B"),
        ] {
            assert_eq!(ByteSize(n).to_string(), text);
            assert_eq!(ByteSize::parse(text).unwrap(), ByteSize(n));
        }
    }

    #[test]
    fn byte_sizes_in_toml_take_integers_and_strings() {
        let p = |extra: &str| Config::parse(&format!("[volume]\npath = \"x\"\n{extra}\n"));
        let cfg = p("[tiering]\nreadahead = 2097152\nbandwidth_limit = \"1.5 MiB\"").unwrap();
        assert_eq!(cfg.tiering.readahead, ByteSize(2 << 20));
        assert_eq!(cfg.tiering.bandwidth_limit, Some(ByteSize(3 << 19)));
        for (extra, needle) in [
            ("[tiering]\nreadahead = -1", "negative"),
            ("[tiering]\nreadahead = 1.5", "byte count"),
            ("[tiering]\nreadahead = \"4 furlongs\"", "unknown unit"),
            ("[cache]\nmax_size = \"10Gb\"", "bits"),
        ] {
            let err = p(extra).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
        // toml names the key and the line.
        let err = p("[tiering]\nreadahead = \"x\"").unwrap_err().to_string();
        assert!(err.contains("readahead") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn cache_and_tiering_defaults() {
        let cfg = Config::parse("[volume]\npath = \"x\"\n").unwrap();
        let c = &cfg.cache;
        assert_eq!(c.max_size, ByteSize(10 << 30));
        assert_eq!(
            (c.high_watermark_percent, c.low_watermark_percent),
            (90, 80)
        );
        let t = &cfg.tiering;
        assert_eq!(t.upload_concurrency, 4);
        assert_eq!(t.bandwidth_limit, None);
        assert!(t.schedule.is_empty());
        assert_eq!(t.readahead, ByteSize(32 << 20));
        assert_eq!(t.bandwidth_schedule().unwrap().limit_now(), None);
    }

    #[test]
    fn cache_and_tiering_rules() {
        let base = "[volume]\npath = \"x\"\npack_size_mib = 32\n";
        for (extra, needle) in [
            (
                "[cache]\nhigh_watermark_percent = 0",
                "cache.high_watermark_percent = 0",
            ),
            ("[cache]\nhigh_watermark_percent = 101", "outside 1..=100"),
            (
                "[cache]\nlow_watermark_percent = 0",
                "cache.low_watermark_percent = 0",
            ),
            ("[cache]\nlow_watermark_percent = 90", "must be below"),
            ("[cache]\nlow_watermark_percent = 95", "must be below"),
            (
                "[cache]\nmax_size = \"127MiB\"",
                "4 × volume.pack_size_mib = 128 MiB",
            ),
            ("[cache]\nmax_size = 0", "cache.max_size = 0 B is too small"),
            ("[cache]\nsize = \"1GiB\"", "size"),
            (
                "[tiering]\nupload_concurrency = 0",
                "tiering.upload_concurrency = 0",
            ),
            ("[tiering]\nupload_concurrency = 65", "outside 1..=64"),
            ("[tiering]\nbandwidth_limit = 0", "leave the key out"),
            ("[tiering]\nbandwidth_limit = \"0MiB\"", "leave the key out"),
            (
                "[tiering]\nreadahead = \"1023KiB\"",
                "tiering.readahead = 1023 KiB",
            ),
            (
                "[tiering]\nreadahead = \"1025MiB\"",
                "outside 1 MiB..=1 GiB",
            ),
            (
                "[fuse]\nreadahead = \"2GiB\"",
                "fuse.readahead = 2 GiB is over 1 GiB",
            ),
            ("[tiering]\nbandwidth = \"1MiB\"", "bandwidth"),
            (
                "[[tiering.schedule]]\ndays = \"mon\"\nfrom = \"08:00\"\nto = \"18:00\"",
                "limit",
            ),
            (
                "[[tiering.schedule]]\ndays = \"mon\"\nfrom = \"08:00\"\nto = \"18:00\"\n\
                 limit = 1\nrate = 2",
                "rate",
            ),
        ] {
            let err = Config::parse(&format!("{base}{extra}\n")).unwrap_err();
            assert!(err.to_string().contains(needle), "{extra}: {err}");
        }
        // Edges that pass.
        for extra in [
            "[cache]\nmax_size = \"128MiB\"\nhigh_watermark_percent = 100\nlow_watermark_percent = 1",
            "[tiering]\nupload_concurrency = 64\nreadahead = \"1MiB\"",
            "[tiering]\nupload_concurrency = 1\nreadahead = \"1GiB\"\nbandwidth_limit = 1",
        ] {
            Config::parse(&format!("{base}{extra}\n")).unwrap_or_else(|e| panic!("{extra}: {e}"));
        }
        // A larger pack size needs a larger cache.
        let err = Config::parse(
            "[volume]\npath = \"x\"\npack_size_mib = 1024\n[cache]\nmax_size = \"3GiB\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("4 GiB"), "{err}");
    }

    #[test]
    fn schedule_rules_are_checked_and_named() {
        let rule = |days: &str, from: &str, to: &str| {
            format!(
                "[[tiering.schedule]]\ndays = \"{days}\"\nfrom = \"{from}\"\nto = \"{to}\"\n\
                 limit = \"1MiB\"\n"
            )
        };
        let good = rule("mon-fri", "08:00", "18:00");
        for (bad, needle) in [
            (
                rule("mun", "08:00", "18:00"),
                "tiering.schedule[1].days: unknown day \"mun\"",
            ),
            (
                rule("mon", "8h", "18:00"),
                "tiering.schedule[1].from: \"8h\"",
            ),
            (
                rule("mon", "08:00", "24:01"),
                "tiering.schedule[1].to: \"24:01\"",
            ),
            (rule("", "08:00", "18:00"), "tiering.schedule[1].days"),
        ] {
            let text = format!("[volume]\npath = \"x\"\n{good}{bad}");
            let err = Config::parse(&text).unwrap_err();
            assert!(err.to_string().contains(needle), "{bad}: {err}");
        }
        let text = format!(
            "[volume]\npath = \"x\"\n[tiering]\nbandwidth_limit = \"5MiB\"\n{good}{}",
            rule("sat,sun", "22:00", "06:00").replace("\"1MiB\"", "0")
        );
        let cfg = Config::parse(&text).unwrap();
        let t = &cfg.tiering;
        assert_eq!(t.schedule.len(), 2);
        assert_eq!(t.schedule[1].limit, ByteSize(0));
        let s = t.bandwidth_schedule().unwrap();
        use crate::tiering::rate::WeekTime;
        let at = |weekday, minute| s.limit_at(WeekTime { weekday, minute });
        assert_eq!(at(0, 9 * 60), Some(1 << 20));
        assert_eq!(at(5, 23 * 60), None);
        assert_eq!(at(0, 5 * 60), None, "Sunday night runs into Monday");
        assert_eq!(at(0, 19 * 60), Some(5 << 20));
    }

    #[test]
    fn example_tiering_section_parses_uncommented() {
        let cfg = Config::parse(EXAMPLE).unwrap();
        assert_eq!(cfg.cache.max_size, ByteSize(10 << 30));
        assert_eq!(cfg.tiering.readahead, ByteSize(32 << 20));
        assert!(cfg.tiering.schedule.is_empty());
        // The commented-out bandwidth settings are valid too once uncommented.
        let mut text = String::new();
        let mut in_tiering = false;
        for line in EXAMPLE.lines() {
            in_tiering = match line {
                "[tiering]" => true,
                l if l.starts_with('[') => false,
                _ => in_tiering,
            };
            let key_or_table = |l: &str| {
                l.starts_with("[[") || l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' '))
            };
            match line.strip_prefix("# ") {
                Some(l) if in_tiering && key_or_table(l) => text.push_str(l),
                _ => text.push_str(line),
            }
            text.push('\n');
        }
        let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let t = &cfg.tiering;
        assert_eq!(t.bandwidth_limit, Some(ByteSize(50 << 20)));
        assert_eq!(t.schedule.len(), 1);
        assert_eq!(t.schedule[0].days, "mon-fri");
        assert_eq!(t.schedule[0].limit, ByteSize(20 << 20));
    }

    #[test]
    fn web_section_defaults_and_rules() {
        let base = "[volume]\npath = \"x\"\n";
        let cfg = Config::parse(base).unwrap();
        let w = &cfg.web;
        assert!(w.enabled);
        assert_eq!(w.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(w.heartbeat_interval_secs, 60);
        assert!(w.management_token().unwrap().is_none());
        assert!(w.heartbeat_token().unwrap().is_none());
        for (extra, needle) in [
            (
                "heartbeat_interval_secs = 4",
                "web.heartbeat_interval_secs = 4 is outside 5..=86400",
            ),
            ("heartbeat_interval_secs = 86401", "outside 5..=86400"),
            (
                "heartbeat_url = \"ftp://h/x\"",
                "web.heartbeat_url = \"ftp://h/x\"",
            ),
            (
                "heartbeat_url = \"monitor.example.net\"",
                "http:// or https://",
            ),
            ("heartbeat_url = \"http://\"", "web.heartbeat_url"),
            (
                "heartbeat_url = \"https://u:p@mon.example.net/\"",
                "carries credentials",
            ),
            (
                "heartbeat_token_file = \"t\"",
                "heartbeat_token_file is set but heartbeat_url is not",
            ),
            ("listen = \"localhost:80\"", "listen"),
            ("token_file = \"t\"", "token_file"),
        ] {
            let err = Config::parse(&format!("{base}[web]\n{extra}\n")).unwrap_err();
            assert!(err.to_string().contains(needle), "{extra}: {err}");
        }
        for extra in [
            "heartbeat_url = \"http://127.0.0.1:9000/hb\"\nheartbeat_interval_secs = 5",
            "heartbeat_url = \"https://mon.example.net/x?site=1\"\nheartbeat_interval_secs = 86400",
            "enabled = false\nlisten = \"0.0.0.0:0\"",
        ] {
            Config::parse(&format!("{base}[web]\n{extra}\n"))
                .unwrap_or_else(|e| panic!("{extra}: {e}"));
        }
        // The status server and the share cannot share a port (port 0 is two free ports).
        let err =
            Config::parse(&format!("{base}[webdav]\nlisten = \"127.0.0.1:8081\"\n")).unwrap_err();
        assert!(err.to_string().contains("different ports"), "{err}");
        Config::parse(&format!(
            "{base}[webdav]\nlisten = \"127.0.0.1:0\"\n[web]\nlisten = \"127.0.0.1:0\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn web_tokens_come_from_files_relative_to_the_config_and_stay_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("mgmt", "0123456789abcdef-management\nsecond line ignored\n");
        write("hb", "  heartbeat-secret  \n");
        write(
            "c.toml",
            "[volume]\npath = \"v\"\n[web]\nmanagement_token_file = \"mgmt\"\n\
             heartbeat_url = \"http://127.0.0.1:1/\"\nheartbeat_token_file = \"hb\"\n",
        );
        let cfg = Config::load(&dir.path().join("c.toml")).unwrap();
        let w = &cfg.web;
        assert_eq!(
            w.management_token_file.as_deref(),
            Some(&*dir.path().join("mgmt"))
        );
        assert_eq!(
            w.management_token().unwrap().unwrap().0,
            "0123456789abcdef-management"
        );
        assert_eq!(w.heartbeat_token().unwrap().unwrap().0, "heartbeat-secret");
        let shown = format!("{:?} {:?}", w.management_token(), w.heartbeat_token());
        assert!(!shown.contains("management") && !shown.contains("heartbeat-secret"));
        for (text, needle) in [
            ("short\n", "at least 16 characters"),
            ("\n", "at least 16 characters"),
            ("0123456789 abcdef\n", "printable ASCII"),
        ] {
            write("mgmt", text);
            let err = w.management_token().unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.contains("web.management_token_file"), "{err}");
        }
        std::fs::remove_file(dir.path().join("mgmt")).unwrap();
        let err = w.management_token().unwrap_err().to_string();
        assert!(err.contains("mgmt"), "{err}");
    }

    #[test]
    fn example_web_section_parses_uncommented() {
        let cfg = Config::parse(EXAMPLE).unwrap();
        assert!(cfg.web.enabled);
        assert!(cfg.web.listen.ip().is_loopback());
        let mut text = String::new();
        let mut in_web = false;
        for line in EXAMPLE.lines() {
            in_web = match line {
                "[web]" => true,
                l if l.starts_with('[') => false,
                _ => in_web,
            };
            match line.strip_prefix("# ") {
                Some(l) if in_web && l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')) => {
                    text.push_str(l)
                }
                _ => text.push_str(line),
            }
            text.push('\n');
        }
        let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let w = &cfg.web;
        assert!(w.management_token_file.is_some() && w.heartbeat_token_file.is_some());
        assert_eq!(w.heartbeat_interval_secs, 60);
        assert!(w.heartbeat_url.as_deref().unwrap().starts_with("https://"));
    }

    #[test]
    fn s3_endpoint_with_credentials_is_refused_without_echoing_them() {
        for ep in [
            "https://AKIAX:topsecret@s3.example.com",
            "http://AKIAX@s3.example.com:3900/",
            "https://a:b@c@s3.example.com/x",
        ] {
            let err = Config::parse(&format!("{S3_MIN}endpoint = \"{ep}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("carries credentials"), "{ep}: {err}");
            assert!(err.contains("s3.example.com"), "{ep}: {err}");
            assert!(
                !err.contains("topsecret") && !err.contains("AKIAX"),
                "{ep}: {err}"
            );
        }
        // An '@' in the path or query is not userinfo.
        let cfg = Config::parse(&format!(
            "{S3_MIN}endpoint = \"https://s3.example.com/a@b?x=@\"\n"
        ))
        .unwrap();
        assert!(cfg.s3.unwrap().endpoint.unwrap().contains("a@b"));
    }

    #[test]
    fn exposed_shares_are_warned_about() {
        let w = |extra: &str| {
            Config::parse(&format!("[volume]\npath = \"x\"\n[webdav]\n{extra}\n"))
                .unwrap()
                .warnings()
        };
        // The default loopback share runs without a password, with a warning.
        let ws = w("");
        assert!(
            ws.iter().any(|m| m.contains("asks for no password")),
            "{ws:?}"
        );
        assert!(w("require_auth = true").is_empty());
        let ws = w("enabled = false");
        assert!(ws.is_empty(), "{ws:?}");
        // On the network: authentication is forced, plain HTTP is warned about.
        let ws = w("listen = \"0.0.0.0:8080\"");
        assert_eq!(ws.len(), 1, "{ws:?}");
        assert!(
            ws[0].contains("plain HTTP") && ws[0].contains("tls_cert"),
            "{ws:?}"
        );
        let ws = w("listen = \"0.0.0.0:8080\"\ntls_cert = \"c\"\ntls_key = \"k\"");
        assert!(ws.is_empty(), "{ws:?}");
    }

    #[test]
    fn secret_files_readable_by_others_are_named_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("pass", "volume.passphrase_file"),
            ("s3-secret", "s3.secret_access_key_file"),
            ("webdav-users", "webdav.users_file"),
            ("token", "web.management_token_file"),
        ];
        for (f, _) in files {
            std::fs::write(dir.path().join(f), "0123456789abcdef0123\n").unwrap();
        }
        let cfg_path = dir.path().join("tiergate.toml");
        std::fs::write(
            &cfg_path,
            "[volume]\npath = \"v\"\npassphrase_file = \"pass\"\n\
             [webdav]\nrequire_auth = true\n\
             [web]\nmanagement_token_file = \"token\"\n\
             [s3]\nregion = \"r\"\nbucket = \"bkt\"\nsecret_access_key_file = \"s3-secret\"\n",
        )
        .unwrap();
        let chmod = |f: &str, mode: u32| {
            std::fs::set_permissions(dir.path().join(f), std::fs::Permissions::from_mode(mode))
                .unwrap()
        };
        for (f, _) in files {
            chmod(f, 0o600);
        }
        let cfg = Config::load(&cfg_path).unwrap();
        assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());
        for (i, (f, key)) in files.into_iter().enumerate() {
            chmod(f, [0o644, 0o640, 0o604, 0o660][i]);
            let ws = Config::load(&cfg_path).unwrap().warnings();
            let path = dir.path().join(f);
            assert_eq!(ws.len(), 1, "{f}: {ws:?}");
            assert!(ws[0].starts_with(key), "{ws:?}");
            assert!(
                ws[0].contains(&format!("chmod 600 {}", path.display())),
                "{ws:?}"
            );
            chmod(f, 0o600);
        }
        // A secret written into the config itself makes the config file a secret file.
        std::fs::write(
            &cfg_path,
            format!("{S3_MIN}secret_access_key = \"s\"\n").replace("\"x\"", "\"v\""),
        )
        .unwrap();
        std::fs::set_permissions(&cfg_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(secret_file_warning(&cfg_path, "the config file").is_some());
        std::fs::set_permissions(&cfg_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(secret_file_warning(&cfg_path, "the config file").is_none());
        assert!(secret_file_warning(&dir.path().join("absent"), "x").is_none());
    }

    #[test]
    fn passphrase_is_redacted_in_debug() {
        let p = Passphrase("hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
    }
    #[test]
    fn object_lock_section_is_parsed_and_checked() {
        let base = "[volume]\npath = \"x\"\n[s3]\nregion = \"r\"\nbucket = \"bkt\"\n";
        let cfg = Config::parse(base).unwrap();
        assert_eq!(cfg.s3.unwrap().object_lock, None);
        let cfg = Config::parse(&format!(
            "{base}[s3.object_lock]\nmode = \"compliance\"\ndays = 30\n"
        ))
        .unwrap();
        assert_eq!(
            cfg.s3.unwrap().object_lock,
            Some(ObjectLockConfig {
                mode: LockMode::Compliance,
                days: 30
            })
        );
        let e = Config::parse(&format!(
            "{base}[s3.object_lock]\nmode = \"strict\"\ndays = 30\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("governance") && e.contains("compliance"), "{e}");
        let e = Config::parse(&format!(
            "{base}[s3.object_lock]\nmode = \"governance\"\ndays = 0\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("[s3.object_lock] days = 0"), "{e}");
        assert!(
            Config::parse(&format!("{base}[s3.object_lock]\nmode = \"governance\"\n")).is_err()
        );
        // The annotated example's section, uncommented, is valid.
        let section: Vec<&str> = EXAMPLE
            .lines()
            .skip_while(|l| *l != "# [s3.object_lock]")
            .map_while(|l| l.strip_prefix("# "))
            .take_while(|l| l.starts_with('[') || l.contains(" = "))
            .collect();
        assert_eq!(section.len(), 3, "{section:?}");
        let cfg = Config::parse(&format!("{base}{}\n", section.join("\n"))).unwrap();
        let lock = cfg.s3.unwrap().object_lock.unwrap();
        assert_eq!((lock.mode, lock.days), (LockMode::Governance, 30));
    }
}

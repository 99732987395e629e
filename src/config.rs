//! The appliance configuration (TOML): one struct per section, unknown keys rejected, cross-field
//! rules in [`Config::validate`]. Secrets (the passphrase) come from a file or the environment,
//! never from the config text itself, and never appear in `Debug` output.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::chunker::ChunkerParams;
use crate::error::{Error, Result};

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
}

/// Where objects go when no S3 store is configured (src/backend/local.rs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Directory of the local store. Default: `backend/` inside the volume directory.
    pub path: Option<PathBuf>,
}

/// Environment variables read when the config names no access key / secret key.
pub const S3_ACCESS_KEY_ENV: &str = "AWS_ACCESS_KEY_ID";
pub const S3_SECRET_KEY_ENV: &str = "AWS_SECRET_ACCESS_KEY";

/// The tenant's S3 bucket or prefix, on AWS or an S3-compatible store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `https://host[:port]` of the store. Absent: AWS S3's endpoint for `region`.
    pub endpoint: Option<String>,
    /// Region name used for request signing (S3-compatible stores have one too, e.g. "garage").
    pub region: String,
    pub bucket: String,
    /// Key prefix of this tenant inside the bucket, e.g. "tenant-42/". Default: none.
    #[serde(default)]
    pub prefix: String,
    /// Path-style URLs (`https://host/bucket/key`) instead of virtual-hosted ones
    /// (`https://bucket.host/key`). Most self-hosted stores need this.
    #[serde(default)]
    pub path_style: bool,
    /// Access key id. Default: the `AWS_ACCESS_KEY_ID` environment variable.
    pub access_key_id: Option<String>,
    /// File whose first line is the secret key (chmod 600). Preferred over `secret_access_key`.
    pub secret_access_key_file: Option<PathBuf>,
    /// The secret key itself. Default (with no file either): `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<Secret>,
    /// Seconds to wait for a TCP (and TLS) connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Seconds one attempt of one request may take, transfer included (a part of
    /// `part_size_mib` must fit in it at the slowest expected upload rate).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Attempts per request, the first included: transient failures (timeouts, 5xx, throttling)
    /// are retried with exponential backoff and full jitter.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Files larger than this are uploaded in parts, in MiB.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold_mib: u64,
    /// Part size of multipart uploads, in MiB (S3 requires at least 5).
    #[serde(default = "default_part_size")]
    pub part_size_mib: u64,
    /// Parts of one upload in flight at once; memory use is at most this × part size.
    #[serde(default = "default_part_concurrency")]
    pub part_concurrency: usize,
}

fn default_connect_timeout() -> u64 {
    10
}
fn default_request_timeout() -> u64 {
    300
}
fn default_max_attempts() -> u32 {
    5
}
fn default_multipart_threshold() -> u64 {
    64
}
fn default_part_size() -> u64 {
    16
}
fn default_part_concurrency() -> usize {
    4
}

impl S3Config {
    /// A config for `endpoint` with every optional setting at its default.
    pub fn new(endpoint: Option<&str>, region: &str, bucket: &str) -> Self {
        S3Config {
            endpoint: endpoint.map(str::to_owned),
            region: region.into(),
            bucket: bucket.into(),
            prefix: String::new(),
            path_style: false,
            access_key_id: None,
            secret_access_key_file: None,
            secret_access_key: None,
            connect_timeout_secs: default_connect_timeout(),
            request_timeout_secs: default_request_timeout(),
            max_attempts: default_max_attempts(),
            multipart_threshold_mib: default_multipart_threshold(),
            part_size_mib: default_part_size(),
            part_concurrency: default_part_concurrency(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("[s3] {m}")));
        if let Some(ep) = &self.endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return bad(format!(
                    "endpoint = {ep:?} must start with http:// or https://"
                ));
            }
        }
        if self.region.is_empty() {
            return bad("region must not be empty".into());
        }
        // S3's bucket naming rules (3..=63 of a-z 0-9 . -), which every store accepts.
        let b = &self.bucket;
        if !(3..=63).contains(&b.len())
            || !b
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        {
            return bad(format!(
                "bucket = {b:?} is not a valid bucket name (3-63 of a-z 0-9 . -)"
            ));
        }
        let p = self.prefix.trim_start_matches('/');
        if crate::backend::check_prefix(p).is_err() {
            return bad(format!(
                "prefix = {:?}: use segments of A-Z a-z 0-9 . _ - separated by /",
                self.prefix
            ));
        }
        if self.secret_access_key.is_some() && self.secret_access_key_file.is_some() {
            return bad("set secret_access_key or secret_access_key_file, not both".into());
        }
        if !(1..=20).contains(&self.max_attempts) {
            return bad(format!(
                "max_attempts = {} is outside 1..=20",
                self.max_attempts
            ));
        }
        if self.connect_timeout_secs == 0 || self.request_timeout_secs == 0 {
            return bad("timeouts must be > 0".into());
        }
        if !(5..=5120).contains(&self.part_size_mib) {
            return bad(format!(
                "part_size_mib = {} is outside 5..=5120 (S3's part size limits)",
                self.part_size_mib
            ));
        }
        if self.multipart_threshold_mib < self.part_size_mib {
            return bad("multipart_threshold_mib must be >= part_size_mib".into());
        }
        if !(1..=64).contains(&self.part_concurrency) {
            return bad(format!(
                "part_concurrency = {} is outside 1..=64",
                self.part_concurrency
            ));
        }
        Ok(())
    }

    /// The tenant prefix as used in object keys: empty, or ending in `/`.
    pub fn key_prefix(&self) -> String {
        let p = self.prefix.trim_matches('/');
        if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        }
    }

    /// Access key id and secret key, from the config, the secret file, or the environment.
    pub fn credentials(&self) -> Result<(String, Secret)> {
        let id = match &self.access_key_id {
            Some(id) => id.clone(),
            None => std::env::var(S3_ACCESS_KEY_ENV)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "[s3] no access key: set s3.access_key_id or {S3_ACCESS_KEY_ENV}"
                    ))
                })?,
        };
        let secret = if let Some(s) = &self.secret_access_key {
            s.clone()
        } else if let Some(file) = &self.secret_access_key_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                Error::io(format!("reading s3 secret key file {}", file.display()), e)
            })?;
            let line = text.lines().next().unwrap_or("").trim().to_string();
            if line.is_empty() {
                return Err(Error::Invalid(format!(
                    "s3 secret key file {} is empty",
                    file.display()
                )));
            }
            Secret(line)
        } else {
            match std::env::var(S3_SECRET_KEY_ENV) {
                Ok(v) if !v.is_empty() => Secret(v),
                _ => {
                    return Err(Error::Invalid(format!(
                        "[s3] no secret key: set s3.secret_access_key_file, \
                         s3.secret_access_key or {S3_SECRET_KEY_ENV}"
                    )))
                }
            }
        };
        Ok((id, secret))
    }
}

/// A secret string (an S3 secret key); `Debug` never shows it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
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
        }
    }
}

impl WebdavConfig {
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
        Ok(cfg)
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
        if !(1..=256).contains(&self.fuse.threads) {
            return Err(Error::Invalid(format!(
                "fuse.threads = {} is outside 1..=256",
                self.fuse.threads
            )));
        }
        let w = &self.webdav;
        if w.tls_cert.is_some() != w.tls_key.is_some() {
            return Err(Error::Invalid(
                "webdav.tls_cert and webdav.tls_key go together: set both or neither".into(),
            ));
        }
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
        self.chunking
            .params()
            .validate()
            .map_err(|e| Error::Invalid(format!("[chunking]: {e}")))
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
                other => panic!("add a check for config/examples/{other}"),
            }
        }
        assert_eq!(seen, 3);
        // The main example: no [s3], so the local store in the volume directory.
        let cfg = Config::parse(EXAMPLE).unwrap();
        assert!(cfg.s3.is_none());
        assert_eq!(
            cfg.backend_dir(),
            Path::new("/var/lib/tiergate/volume/backend")
        );
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
    fn passphrase_is_redacted_in_debug() {
        let p = Passphrase("hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}

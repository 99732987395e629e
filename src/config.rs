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
        self.chunking
            .params()
            .validate()
            .map_err(|e| Error::Invalid(format!("[chunking]: {e}")))
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
    fn passphrase_is_redacted_in_debug() {
        let p = Passphrase("hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}

//! The options of the object stores (`[s3]` and its Object Lock settings), owned here and
//! assembled into the config by [`crate::config`].

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::secret::Secret;

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
    /// `[s3.object_lock]`: write packs and metadata objects with an S3 Object Lock retention
    /// period (docs/RETENTION.md#s3-object-lock). Absent: objects are not locked.
    #[serde(default)]
    pub object_lock: Option<ObjectLockConfig>,
}

/// `[s3.object_lock]`: the retention every pack and metadata object is written with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockConfig {
    /// `"governance"` (users with `s3:BypassGovernanceRetention` can shorten or lift it) or
    /// `"compliance"` (nobody can, not even the bucket's owner, until it ends).
    pub mode: LockMode,
    /// Retention period of each object, in days from its upload (1..=36500).
    pub days: u32,
}

/// The two S3 Object Lock retention modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    /// The name S3 uses (`x-amz-object-lock-mode`).
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

impl ObjectLockConfig {
    pub fn validate(&self) -> Result<()> {
        if !(1..=36500).contains(&self.days) {
            return Err(Error::Invalid(format!(
                "[s3.object_lock] days = {} is outside 1..=36500 (S3 retention is set in whole \
                 days; to write unlocked objects, remove the section)",
                self.days
            )));
        }
        Ok(())
    }
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
            object_lock: None,
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
            endpoint_has_no_credentials(ep)?;
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
        if let Some(lock) = &self.object_lock {
            lock.validate()?;
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

/// An endpoint URL with credentials in it (`https://KEY:SECRET@host`) is refused: the URL is
/// logged and shown by `tiergate status`, and the SDK would not use them anyway. The message
/// names only the scheme and host, never what comes before the `@`.
fn endpoint_has_no_credentials(ep: &str) -> Result<()> {
    let (scheme, rest) = ep.split_once("://").unwrap_or(("", ep));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((_, host)) => Err(Error::Invalid(format!(
            "[s3] endpoint = \"{scheme}://<credentials>@{host}...\" carries credentials in the \
             URL: they would end up in logs and status output; write endpoint = \"{scheme}://{host}\", \
             the access key as s3.access_key_id and the secret key in s3.secret_access_key_file"
        ))),
        None => Ok(()),
    }
}

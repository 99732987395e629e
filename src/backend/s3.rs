//! The S3 backend: aws-sdk-s3 against AWS S3 or an S3-compatible store (Garage, MinIO, Ceph
//! RGW, Wasabi, ...).
//!
//! Settings that make S3-compatible stores work (BRIEF §9): request checksum calculation and
//! response checksum validation are `WhenRequired` (since aws-sdk-s3 1.69 the defaults add CRC
//! trailers that many stores reject), bodies are sent from memory with a known length, and
//! path-style addressing and a custom endpoint are a config switch. Integrity comes from a
//! checksum we compute and the store recomputes, refusing a body that arrived damaged:
//!
//! - Content-MD5 with a SigV4-signed payload (SHA-256 of the body), which every S3-compatible
//!   store understands. Both hashes cost CPU: on a 2-core appliance MD5 alone was a quarter of
//!   the daemon's time during a large write (docs/BENCHMARKS.md).
//! - Once [`S3Backend::probe_crc32c`] (a probe step) has seen this store refuse a body
//!   whose `x-amz-checksum-crc32c` does not match and accept one that does, both sent with an
//!   unsigned payload, single-part puts without Object Lock retention carry that CRC32C
//!   (hardware-accelerated) instead and skip the payload hash. A tampered body still fails on
//!   read: every pack and metadata object is authenticated (AES-256-GCM) and chunks are
//!   verified against their keyed BLAKE3 ids.
//!
//! Verification before success: a single-part put checks what the store returned (the ETag
//! against our MD5, or the CRC32C it echoes against ours), then HEADs the object and checks its
//! size (and ETag, with MD5). A multipart upload (always Content-MD5) checks every part's ETag,
//! then the HEAD size and the multipart ETag (`md5(part md5s)-<parts>`). ETags that are not
//! MD5-shaped (SSE-KMS, SSE-C) are not compared; the checksum still protects the transfer.
//!
//! Retries: the SDK's standard mode (exponential backoff with full jitter, a retry token
//! bucket) for timeouts, connection errors, 5xx and throttling, `s3.max_attempts` attempts in
//! all. Timeouts: `s3.connect_timeout_secs` for connecting, `s3.request_timeout_secs` for one
//! attempt. Memory: a multipart upload holds at most `part_concurrency` parts of
//! `part_size_mib` at once.
//!
//! Object Lock (`[s3.object_lock]`): puts of [`layout::is_locked`] keys carry
//! `x-amz-object-lock-mode` and `x-amz-object-lock-retain-until-date` (now + days), on the
//! single PUT and on CreateMultipartUpload. S3 requires an integrity checksum on such requests:
//! they always carry Content-MD5 (so do UploadParts), even where the probe chose CRC32C for
//! other puts. [`Backend::head`]
//! reports the retain-until date, and [`Backend::delete`] removes every version of the key by
//! version id (a plain DELETE on the versioned bucket only adds a delete marker).

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ObjectLockEnabled, ObjectLockMode,
};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use super::{
    check_key, check_prefix, layout, BResult, Backend, BackendError, ErrorKind, ListPage,
    ObjectInfo, ObjectLock, PutReceipt,
};
use crate::config::{LockMode, ObjectLockConfig, S3Config};

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// An S3 bucket (and key prefix) as an object store.
pub struct S3Backend {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Tenant prefix: empty or ending in `/`.
    prefix: String,
    endpoint: String,
    part_size: u64,
    multipart_threshold: u64,
    part_concurrency: usize,
    /// `[s3.object_lock]`: the retention locked keys are written with.
    lock: Option<ObjectLockConfig>,
    /// Set by [`S3Backend::probe_crc32c`]: single-part puts carry a CRC32C and an
    /// unsigned payload instead of Content-MD5 and a signed one.
    crc32c_puts: AtomicBool,
}

impl std::fmt::Debug for S3Backend {
    // By hand: no credentials, not even the access key id.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A clock that runs `offset` ahead of (or behind) the system clock, for clock-skew tests.
#[derive(Debug)]
struct OffsetClock {
    ahead: bool,
    offset: Duration,
}

impl aws_smithy_async::time::TimeSource for OffsetClock {
    fn now(&self) -> SystemTime {
        if self.ahead {
            SystemTime::now() + self.offset
        } else {
            SystemTime::now() - self.offset
        }
    }
}

impl S3Backend {
    /// A client for `cfg`; reads the credentials (config, secret file or environment) now.
    /// Makes no request: [`super::probe`] checks the store.
    pub fn new(cfg: &S3Config) -> BResult<Self> {
        Self::build(cfg, None)
    }

    /// [`S3Backend::new`] with request signing `offset` seconds off the system clock (positive:
    /// ahead). Only for testing what a store says to a machine whose clock is wrong.
    #[doc(hidden)]
    pub fn with_clock_offset(cfg: &S3Config, offset_secs: i64) -> BResult<Self> {
        Self::build(
            cfg,
            Some(OffsetClock {
                ahead: offset_secs >= 0,
                offset: Duration::from_secs(offset_secs.unsigned_abs()),
            }),
        )
    }

    fn build(cfg: &S3Config, clock: Option<OffsetClock>) -> BResult<Self> {
        cfg.validate()
            .map_err(|e| BackendError::new(ErrorKind::Invalid, e.to_string()))?;
        let (id, secret) = cfg
            .credentials()
            .map_err(|e| BackendError::new(ErrorKind::Invalid, e.to_string()))?;
        let creds = Credentials::new(id, secret.0, None, None, "tiergate-config");
        let retry = RetryConfig::standard()
            .with_max_attempts(cfg.max_attempts)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(20));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
            .operation_attempt_timeout(Duration::from_secs(cfg.request_timeout_secs))
            .build();
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(creds)
            .force_path_style(cfg.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep.trim_end_matches('/'));
        }
        if let Some(c) = clock {
            b = b.time_source(c);
        }
        Ok(S3Backend {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            prefix: cfg.key_prefix(),
            endpoint: cfg
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("AWS S3 {}", cfg.region)),
            part_size: cfg.part_size_mib << 20,
            multipart_threshold: cfg.multipart_threshold_mib << 20,
            part_concurrency: cfg.part_concurrency,
            lock: cfg.object_lock.clone(),
            crc32c_puts: AtomicBool::new(false),
        })
    }

    /// The lock mode and retain-until date a put of `key` carries, if it is to be locked: now
    /// plus the configured days, in whole seconds (S3 stores seconds).
    fn lock_for(&self, key: &str) -> Option<(ObjectLockMode, aws_sdk_s3::primitives::DateTime)> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.lock_at(key, now)
    }

    /// [`Self::lock_for`] at the Unix time `now` (seconds).
    fn lock_at(
        &self,
        key: &str,
        now: u64,
    ) -> Option<(ObjectLockMode, aws_sdk_s3::primitives::DateTime)> {
        let lock = self.lock.as_ref().filter(|_| layout::is_locked(key))?;
        let until = now + u64::from(lock.days) * 86_400;
        let mode = match lock.mode {
            LockMode::Governance => ObjectLockMode::Governance,
            LockMode::Compliance => ObjectLockMode::Compliance,
        };
        Some((
            mode,
            aws_sdk_s3::primitives::DateTime::from_secs(until as i64),
        ))
    }

    /// Deletes every version of `key` and every delete marker, by version id, page by page.
    async fn delete_versions(&self, key: &str, full: &str) -> BResult<()> {
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let out = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(full)
                .set_key_marker(key_marker)
                .set_version_id_marker(version_marker)
                .send()
                .await
                .map_err(|e| self.error("list versions of", key, e))?;
            // The prefix also matches longer keys: only this exact one.
            let ids: Vec<String> = out
                .versions()
                .iter()
                .filter(|v| v.key() == Some(full))
                .filter_map(|v| v.version_id())
                .chain(
                    out.delete_markers()
                        .iter()
                        .filter(|m| m.key() == Some(full))
                        .filter_map(|m| m.version_id()),
                )
                .map(str::to_owned)
                .collect();
            for id in ids {
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(full)
                    .version_id(&id)
                    .send()
                    .await
                    .map_err(|e| self.error(&format!("delete version {id} of"), key, e))?;
            }
            if out.is_truncated() != Some(true) {
                return Ok(());
            }
            key_marker = out.next_key_marker().map(str::to_owned);
            version_marker = out.next_version_id_marker().map(str::to_owned);
            if key_marker.is_none() && version_marker.is_none() {
                return Ok(());
            }
        }
    }

    fn full_key(&self, key: &str) -> BResult<String> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// Turns an SDK error into a classified [`BackendError`] naming the operation and object.
    fn error<E>(&self, op: &str, key: &str, err: SdkError<E, HttpResponse>) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let what = format!(
            "{op} s3://{}/{}{key} at {}",
            self.bucket, self.prefix, self.endpoint
        );
        let (kind, detail) = classify(&err);
        BackendError::new(kind, format!("{what}: {detail}"))
    }

    /// Stores one object from memory and verifies it.
    async fn put_bytes(&self, key: &str, full: &str, data: Bytes) -> BResult<PutReceipt> {
        let size = data.len() as u64;
        let lock = self.lock_for(key);
        // A put with a retention keeps Content-MD5: S3 documents that one (or an SDK-computed
        // checksum, which brings the chunked trailers many stores refuse) as required there.
        let crc32c = lock.is_none() && self.crc32c_puts.load(Ordering::Relaxed);
        let (mode, until) = lock.unzip();
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .content_length(size as i64)
            .set_object_lock_mode(mode)
            .set_object_lock_retain_until_date(until);
        let (etag, md5) = if crc32c {
            let crc = crc32c_b64(&data);
            let out = put
                .checksum_crc32_c(&crc)
                .body(ByteStream::from(data))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| self.error("put", key, e))?;
            check_crc32c(key, out.checksum_crc32_c(), &crc)?;
            (out.e_tag().map(unquote), None)
        } else {
            let digest = Md5::digest(&data);
            let md5 = hex::encode(digest);
            let out = put
                .content_md5(b64(&digest))
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| self.error("put", key, e))?;
            let etag = out.e_tag().map(unquote);
            check_etag(key, "put response", etag.as_deref(), &md5)?;
            (etag, Some(md5))
        };
        self.verify(key, full, size, md5.as_deref()).await?;
        Ok(PutReceipt {
            size,
            etag,
            parts: 0,
            peak_buffered: size,
        })
    }

    /// The probe's check of the faster upload checksum: a small object put with an unsigned
    /// payload and a wrong `x-amz-checksum-crc32c` must be refused, and the same put with the
    /// right one accepted. Only then are single-part puts switched to it; otherwise they keep
    /// Content-MD5 and a signed payload, and the returned text says why.
    async fn probe_crc32c(&self, key: &str) -> BResult<String> {
        let full = self.full_key(key)?;
        let body = Bytes::from_static(b"tiergate upload checksum probe");
        let right = crc32c_b64(&body);
        let wrong = crc32c_b64(b"something else");
        let put = |crc: String| {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .content_length(body.len() as i64)
                .checksum_crc32_c(crc)
                .body(ByteStream::from(body.clone()))
                .customize()
                .disable_payload_signing()
                .send()
        };
        let keep_md5 = "uploads carry Content-MD5 and a signed payload";
        match put(wrong).await {
            Ok(_) => {
                self.delete(key).await?;
                return Ok(format!(
                    "the store accepted a body whose CRC32C did not match: {keep_md5}"
                ));
            }
            // Only a 400 says the body was checked (S3: BadDigest or InvalidRequest, Garage:
            // InvalidDigest); a 5xx that outlived the retries, or a 403, says nothing about it.
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 400 => {
                tracing::debug!(
                    key,
                    "a put with a wrong CRC32C was refused: {:?}",
                    se.err().code()
                );
            }
            Err(e) => {
                let (kind, detail) = classify(&e);
                if matches!(kind, ErrorKind::Unreachable | ErrorKind::Tls) {
                    return Err(self.error("put (wrong checksum)", key, e));
                }
                return Ok(format!(
                    "a put with a wrong CRC32C failed without a 400 ({detail}): {keep_md5}"
                ));
            }
        }
        if let Err(e) = put(right).await {
            let (kind, detail) = classify(&e);
            if matches!(kind, ErrorKind::Unreachable | ErrorKind::Tls) {
                return Err(self.error("put (checksum)", key, e));
            }
            return Ok(format!(
                "the store refused an unsigned put with a CRC32C ({detail}): {keep_md5}"
            ));
        }
        self.delete(key).await?;
        self.crc32c_puts.store(true, Ordering::Relaxed);
        Ok("the store checks CRC32C: single-part uploads carry it with an unsigned payload".into())
    }

    /// HEADs a just-written object: size must match, and the ETag (if we know its MD5 and it is
    /// MD5-shaped).
    async fn verify(&self, key: &str, full: &str, size: u64, etag: Option<&str>) -> BResult<()> {
        let h = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| self.error("verify (head)", key, e))?;
        let stored = h.content_length().unwrap_or(-1);
        if stored != size as i64 {
            return Err(BackendError::new(
                ErrorKind::Corrupt,
                format!("put {key}: the store holds {stored} bytes, {size} were sent"),
            ));
        }
        match etag {
            Some(want) => check_etag(key, "head", h.e_tag().map(unquote).as_deref(), want),
            None => Ok(()),
        }
    }

    async fn multipart(
        &self,
        key: &str,
        full: &str,
        path: &Path,
        size: u64,
    ) -> BResult<PutReceipt> {
        let (mode, until) = self.lock_for(key).unzip();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .set_object_lock_mode(mode)
            .set_object_lock_retain_until_date(until)
            .send()
            .await
            .map_err(|e| self.error("create multipart upload", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = self.upload_parts(key, full, &upload_id, path, size).await;
        let (parts, digests, peak) = match result {
            Ok(r) => r,
            Err(e) => {
                self.abort(full, &upload_id).await;
                return Err(e);
            }
        };
        let n = parts.len();
        let done = match self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
        {
            Ok(done) => done,
            Err(e) => {
                let err = self.error("complete multipart upload", key, e);
                self.abort(full, &upload_id).await;
                return Err(err);
            }
        };
        let want = format!("{}-{n}", hex::encode(Md5::digest(digests.concat())));
        let etag = done.e_tag().map(unquote);
        check_etag(key, "complete response", etag.as_deref(), &want)?;
        self.verify(key, full, size, Some(&want)).await?;
        Ok(PutReceipt {
            size,
            etag,
            parts: n as u32,
            peak_buffered: peak,
        })
    }

    /// Drops the parts of a failed multipart upload. Best effort: if this fails too, the
    /// store keeps the parts until a lifecycle rule for incomplete uploads expires them.
    async fn abort(&self, full: &str, upload_id: &str) {
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .send()
            .await
        {
            tracing::warn!(
                key = full,
                "aborting a failed multipart upload: {}",
                classify(&e).1
            );
        }
    }

    /// Uploads the parts of `path`, at most `part_concurrency` at a time. Returns the parts in
    /// order, their MD5s, and the most part bytes held at once.
    async fn upload_parts(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
    ) -> BResult<(Vec<CompletedPart>, Vec<[u8; 16]>, u64)> {
        let file = Arc::new(
            std::fs::File::open(path)
                .map_err(|e| BackendError::io(format!("opening {}", path.display()), e))?,
        );
        let n_parts = size.div_ceil(self.part_size);
        let held = AtomicU64::new(0);
        let peak = AtomicU64::new(0);
        let mut parts: Vec<(CompletedPart, [u8; 16])> = futures_util::stream::iter(0..n_parts)
            .map(|i| {
                let file = file.clone();
                let (held, peak) = (&held, &peak);
                async move {
                    let off = i * self.part_size;
                    let len = self.part_size.min(size - off);
                    let now = held.fetch_add(len, Ordering::SeqCst) + len;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let r = self
                        .upload_part(key, full, upload_id, file, i, off, len)
                        .await;
                    held.fetch_sub(len, Ordering::SeqCst);
                    r
                }
            })
            .buffer_unordered(self.part_concurrency)
            .try_collect()
            .await?;
        parts.sort_by_key(|(p, _)| p.part_number());
        let digests = parts.iter().map(|(_, d)| *d).collect();
        Ok((
            parts.into_iter().map(|(p, _)| p).collect(),
            digests,
            peak.load(Ordering::SeqCst),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_part(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        file: Arc<std::fs::File>,
        index: u64,
        off: u64,
        len: u64,
    ) -> BResult<(CompletedPart, [u8; 16])> {
        let path_ctx = format!("reading part {} of the file for {key}", index + 1);
        let buf = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, off).map(|_| buf)
        })
        .await
        .map_err(|e| BackendError::new(ErrorKind::Io, format!("{path_ctx}: {e}")))?
        .map_err(|e| BackendError::io(path_ctx, e))?;
        let digest: [u8; 16] = Md5::digest(&buf).into();
        let number = index as i32 + 1;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(len as i64)
            .content_md5(b64(&digest))
            .body(ByteStream::from(buf))
            .send()
            .await
            .map_err(|e| self.error(&format!("upload part {number}"), key, e))?;
        let etag = out.e_tag().map(unquote);
        check_etag(
            key,
            &format!("part {number}"),
            etag.as_deref(),
            &hex::encode(digest),
        )?;
        Ok((
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build(),
            digest,
        ))
    }
}

fn b64(digest: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The CRC32C (Castagnoli) of `data` as S3's `x-amz-checksum-crc32c` carries it: the four
/// big-endian bytes, base64.
fn crc32c_b64(data: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32;
    b64(&crc.to_be_bytes())
}

/// A store that echoes the CRC32C it computed must echo ours.
fn check_crc32c(key: &str, got: Option<&str>, want: &str) -> BResult<()> {
    match got {
        Some(g) if g != want => Err(BackendError::new(
            ErrorKind::Corrupt,
            format!("put {key}: the store computed CRC32C {g}, {want} was sent"),
        )),
        _ => Ok(()),
    }
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

/// True for `<32 hex>` and `<32 hex>-<n>`: ETags that are MD5-based and can be compared.
fn md5_shaped(etag: &str) -> bool {
    let (hash, parts) = match etag.split_once('-') {
        Some((h, n)) => (h, Some(n)),
        None => (etag, None),
    };
    hash.len() == 32
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && parts.is_none_or(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn check_etag(key: &str, what: &str, got: Option<&str>, want: &str) -> BResult<()> {
    match got {
        Some(g) if md5_shaped(g) && !g.eq_ignore_ascii_case(want) => Err(BackendError::new(
            ErrorKind::Corrupt,
            format!("put {key}: {what} ETag {g} differs from the {want} computed here"),
        )),
        _ => Ok(()),
    }
}

/// An error and its sources, `: `-separated (Display only: the SDK's Debug dumps are noise).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = e.source();
    }
    text
}

/// The error class and a one-line description.
fn classify<E>(err: &SdkError<E, HttpResponse>) -> (ErrorKind, String)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            let message = se.err().message().unwrap_or("");
            let lower = message.to_ascii_lowercase();
            // Stores that answer auth failures with a generic code say which in the text
            // (Garage: 403 AccessDenied "Invalid signature" / "No such key: GK...", and 400
            // InvalidRequest "Date is too old" for a clock more than a day behind).
            let says = |words: &[&str]| words.iter().any(|w| lower.contains(w));
            let kind = match code {
                "NoSuchKey" | "NotFound" => ErrorKind::NotFound,
                "NoSuchBucket" => ErrorKind::NoSuchBucket,
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "InvalidSignature"
                | "InvalidToken"
                | "ExpiredToken" => ErrorKind::WrongCredentials,
                "RequestTimeTooSkewed" => ErrorKind::ClockSkew,
                "NotImplemented" => ErrorKind::Unsupported,
                _ if (status == 400 || status == 403)
                    && says(&["skew", "too far", "date is too old", "request time"]) =>
                {
                    ErrorKind::ClockSkew
                }
                _ if status == 403
                    && says(&["signature", "no such key", "access key", "invalid key"]) =>
                {
                    ErrorKind::WrongCredentials
                }
                // AWS (and moto): 403 AccessDenied "Access Denied because object protected by
                // object lock."
                _ if status == 403 && says(&["object lock", "retention", "legal hold"]) => {
                    ErrorKind::Retained
                }
                _ => match status {
                    404 => ErrorKind::NotFound,
                    403 => ErrorKind::AccessDenied,
                    501 => ErrorKind::Unsupported,
                    _ => ErrorKind::Other,
                },
            };
            let code = if code.is_empty() { "(no code)" } else { code };
            (kind, format!("HTTP {status} {code}: {message}"))
        }
        SdkError::TimeoutError(_) => (ErrorKind::Unreachable, format!("timed out: {}", chain(err))),
        SdkError::DispatchFailure(_) => {
            let text = chain(err);
            let lower = text.to_ascii_lowercase();
            let kind = if [
                "tls",
                "certificate",
                "handshake",
                "corrupt message",
                "invalidcontenttype",
            ]
            .iter()
            .any(|w| lower.contains(w))
            {
                ErrorKind::Tls
            } else {
                ErrorKind::Unreachable
            };
            (kind, text)
        }
        SdkError::ConstructionFailure(_) => (
            ErrorKind::Invalid,
            format!("request not built: {}", chain(err)),
        ),
        _ => (ErrorKind::Other, chain(err)),
    }
}

#[async_trait::async_trait]
impl Backend for S3Backend {
    fn describe(&self) -> String {
        format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
    }

    async fn put(&self, key: &str, data: Bytes) -> BResult<PutReceipt> {
        let full = self.full_key(key)?;
        self.put_bytes(key, &full, data).await
    }

    async fn put_file(&self, key: &str, path: &Path) -> BResult<PutReceipt> {
        let full = self.full_key(key)?;
        let size = std::fs::metadata(path)
            .map_err(|e| BackendError::io(format!("stat {}", path.display()), e))?
            .len();
        if size <= self.multipart_threshold {
            let p = path.to_path_buf();
            let data = tokio::task::spawn_blocking(move || std::fs::read(&p))
                .await
                .map_err(|e| BackendError::new(ErrorKind::Io, e.to_string()))?
                .map_err(|e| BackendError::io(format!("reading {}", path.display()), e))?;
            if data.len() as u64 != size {
                return Err(BackendError::new(
                    ErrorKind::Corrupt,
                    format!("{} changed while being uploaded", path.display()),
                ));
            }
            return self.put_bytes(key, &full, Bytes::from(data)).await;
        }
        self.multipart(key, &full, path, size).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> BResult<Bytes> {
        let full = self.full_key(key)?;
        if range.is_empty() {
            return Err(BackendError::new(
                ErrorKind::Invalid,
                format!("get {key}: empty range {range:?}"),
            ));
        }
        let want = range.end - range.start;
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
        {
            Ok(o) => o,
            // 416: the range starts at or past the end of the object.
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 416 => {
                return Ok(Bytes::new())
            }
            Err(e) => return Err(self.error("get", key, e)),
        };
        let bytes = read_body(out.body, || format!("get {key} {range:?}")).await?;
        if bytes.len() as u64 > want {
            return Err(BackendError::new(
                ErrorKind::Corrupt,
                format!(
                    "get {key} {range:?}: the store sent {} bytes for a {want}-byte range \
                     (Range header ignored?)",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }

    async fn get(&self, key: &str) -> BResult<Bytes> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.error("get", key, e))?;
        let expect = out.content_length();
        let bytes = read_body(out.body, || format!("get {key}")).await?;
        if expect.is_some_and(|n| n != bytes.len() as i64) {
            return Err(BackendError::new(
                ErrorKind::Corrupt,
                format!(
                    "get {key}: {} bytes received, {expect:?} announced",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }

    async fn head(&self, key: &str) -> BResult<ObjectInfo> {
        let full = self.full_key(key)?;
        let h = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.error("head", key, e))?;
        Ok(ObjectInfo {
            key: key.to_owned(),
            size: h.content_length().unwrap_or(0).max(0) as u64,
            etag: h.e_tag().map(unquote),
            last_modified: h
                .last_modified()
                .and_then(|t| SystemTime::try_from(*t).ok()),
            retain_until: h
                .object_lock_retain_until_date()
                .and_then(|t| SystemTime::try_from(*t).ok()),
        })
    }

    async fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
        max_keys: u32,
    ) -> BResult<ListPage> {
        check_prefix(prefix)?;
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.prefix))
            .max_keys(max_keys.clamp(1, 1000) as i32)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| self.error("list", prefix, e))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                let key = o.key()?.strip_prefix(&self.prefix)?.to_owned();
                Some(ObjectInfo {
                    key,
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().map(unquote),
                    last_modified: o
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok()),
                    retain_until: None,
                })
            })
            .collect();
        let next = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_owned)
        } else {
            None
        };
        Ok(ListPage { objects, next })
    }

    async fn delete(&self, key: &str) -> BResult<()> {
        let full = self.full_key(key)?;
        if self.lock.is_some() {
            return self.delete_versions(key, &full).await;
        }
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.error("delete", key, e))?;
        Ok(())
    }

    async fn check_access(&self) -> BResult<()> {
        // A listing rather than HeadBucket: HEAD answers carry no error body, so a 403 could
        // not tell a wrong secret from a missing permission or a skewed clock.
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| self.error("list", "", e))?;
        Ok(())
    }

    async fn check_upload_checksums(&self, key: &str) -> BResult<String> {
        self.probe_crc32c(key).await
    }

    fn retention(&self) -> Option<&ObjectLockConfig> {
        self.lock.as_ref()
    }

    async fn object_lock(&self) -> BResult<ObjectLock> {
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => {
                let Some(c) = out.object_lock_configuration() else {
                    return Ok(ObjectLock::Disabled);
                };
                if c.object_lock_enabled() != Some(&ObjectLockEnabled::Enabled) {
                    return Ok(ObjectLock::Disabled);
                }
                let retention = c.rule().and_then(|r| r.default_retention()).map(|d| {
                    let mode = d.mode().map(|m| m.as_str().to_owned()).unwrap_or_default();
                    match (d.days(), d.years()) {
                        (Some(n), _) => format!("{mode} {n} days"),
                        (_, Some(n)) => format!("{mode} {n} years"),
                        _ => mode,
                    }
                });
                Ok(ObjectLock::Enabled(retention))
            }
            Err(e) => {
                let code = e.code().unwrap_or("").to_owned();
                if code == "ObjectLockConfigurationNotFoundError" {
                    return Ok(ObjectLock::Disabled);
                }
                let (kind, detail) = classify(&e);
                match kind {
                    // The store's own words are enough here (e.g. Garage: "HTTP 501
                    // NotImplemented: Unimplemented action: GetObjectLockConfiguration").
                    ErrorKind::Unsupported | ErrorKind::Other | ErrorKind::NotFound => {
                        Ok(ObjectLock::Unsupported(detail))
                    }
                    _ => Err(self.error("get object lock configuration", "", e)),
                }
            }
        }
    }
}

/// Collects a GET response body; a connection lost mid-body is an unreachable store, named by
/// `what` (the request).
async fn read_body(
    body: aws_sdk_s3::primitives::ByteStream,
    what: impl FnOnce() -> String,
) -> BResult<Bytes> {
    match body.collect().await {
        Ok(b) => Ok(b.into_bytes()),
        Err(e) => Err(BackendError::new(
            ErrorKind::Unreachable,
            format!("{}: reading the body: {e}", what()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_the_castagnoli_check_value_big_endian_in_base64() {
        // CRC-32C of "123456789" is 0xE3069283 (RFC 3720, appendix B.4 check value).
        assert_eq!(crc32c_b64(b"123456789"), b64(&[0xE3, 0x06, 0x92, 0x83]));
        check_crc32c("k", Some("4waSgw=="), &crc32c_b64(b"123456789")).unwrap();
        check_crc32c("k", None, "4waSgw==").unwrap();
        let e = check_crc32c("k", Some("AAAAAA=="), "4waSgw==").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn etags_are_compared_only_when_md5_shaped() {
        let md5 = "9e107d9d372bb6826bd81d3542a419d6";
        assert!(md5_shaped(md5));
        assert!(md5_shaped(&format!("{md5}-12")));
        assert!(!md5_shaped("abc"));
        assert!(!md5_shaped(&format!("{md5}-")));
        check_etag("k", "put", Some(md5), md5).unwrap();
        check_etag("k", "put", Some(&md5.to_uppercase()), md5).unwrap();
        // An SSE-KMS style opaque tag is not compared; a different MD5 is an error.
        check_etag("k", "put", Some("opaque-tag"), md5).unwrap();
        check_etag("k", "put", None, md5).unwrap();
        let e = check_etag("k", "put", Some("00000000000000000000000000000000"), md5).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("differs"), "{e}");
    }

    #[test]
    fn locked_keys_get_mode_and_retain_until_now_plus_days() {
        let mut cfg = S3Config::new(Some("http://127.0.0.1:1"), "r", "bkt");
        cfg.access_key_id = Some("id".into());
        cfg.secret_access_key = Some(crate::config::Secret("s".into()));
        assert!(S3Backend::new(&cfg)
            .unwrap()
            .lock_for("packs/x.pack")
            .is_none());
        cfg.object_lock = Some(ObjectLockConfig {
            mode: LockMode::Compliance,
            days: 30,
        });
        let b = S3Backend::new(&cfg).unwrap();
        // A fixed clock: exactly now plus 30 days, whatever the machine's load.
        let now = 1_795_848_708u64;
        let (mode, until) = b.lock_at("packs/x.pack", now).unwrap();
        assert_eq!(mode, ObjectLockMode::Compliance);
        assert_eq!(until.secs(), (now + 30 * 86_400) as i64, "{until}");
        assert_eq!(until.subsec_nanos(), 0);
        // lock_for reads the system clock.
        let before = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (_, until) = b.lock_for("packs/x.pack").unwrap();
        let after = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let days = 30 * 86_400;
        assert!(
            (before + days..=after + days).contains(&(until.secs() as u64)),
            "{until}"
        );
        assert!(b.lock_for("lease").is_none());
        assert!(b.lock_for("probe/1-2").is_none());
        assert_eq!(b.retention().unwrap().days, 30);
    }

    #[test]
    fn debug_output_shows_no_credentials() {
        let mut cfg = S3Config::new(Some("http://127.0.0.1:1"), "garage", "bucket-x");
        cfg.access_key_id = Some("GK0123456789abcdef01234567".into());
        cfg.secret_access_key = Some(crate::config::Secret("topsecretvalue".into()));
        let b = S3Backend::new(&cfg).unwrap();
        let dbg = format!("{b:?} {cfg:?}");
        assert!(!dbg.contains("topsecretvalue"), "{dbg}");
        assert!(dbg.contains("bucket-x"), "{dbg}");
        assert_eq!(b.describe(), "s3://bucket-x/ at http://127.0.0.1:1");
    }
}

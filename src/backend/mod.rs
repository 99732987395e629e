//! Object stores behind the tiering machinery: the tenant's S3 bucket, or a local directory.
//!
//! The [`Backend`] trait is the whole interface tiering needs: whole-object put (from memory, or
//! from a file with multipart upload for large objects), ranged get, head, paginated list and
//! delete. Keys are relative to the tenant's prefix (the S3 backend prepends `s3.prefix`; the
//! local backend maps them under its root directory) and follow the bucket layout in
//! [`layout`]. Two implementations:
//!
//! - [`local::LocalDir`]: a directory on a local or network filesystem, the embedded default
//!   when the config has no `[s3]` section. Every put is temp file → fsync → rename → fsync dir.
//! - [`s3::S3Backend`]: aws-sdk-s3 against AWS or an S3-compatible store (Garage, MinIO, Ceph),
//!   with checksums "when required", path-style addressing, timeouts, retries with backoff and
//!   jitter, and every upload verified (Content-MD5 on the wire, then HEAD size and ETag) before
//!   it is reported as stored.
//!
//! Errors are [`BackendError`]: a [`ErrorKind`] that says which class of failure it is (the
//! probe, the uploader, the fetcher and GC act on the class: retry later, stop and tell the
//! admin, treat as missing, wait out an Object Lock retention) plus a message naming the operation, the object and the store. It converts into
//! the core's [`crate::Error`] as `Error::Remote` (EIO / 502), except corruption and local
//! errno-carrying I/O errors, which keep their own variants.
//!
//! [`probe`] checks a configured store at startup (and for `tiergate probe`): reachable,
//! credentials accepted, bucket present, a probe object written, read back, listed and deleted,
//! object lock availability. Each failure class gets a message that says what to fix.
//!
//! The filesystem core never calls a backend: src/tiering/ does (the uploader, the fetcher,
//! metadata sync and GC's off-site deletes), so a slow or failing store delays only what waits
//! for it, never a front-end request on cached data. With `[s3.object_lock]`, puts of packs and
//! metadata carry a retention and deletes remove every version (src/backend/s3.rs).

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

pub mod layout;
pub mod local;
pub mod options;
pub mod s3;

/// Result of a backend operation.
pub type BResult<T> = std::result::Result<T, BackendError>;

/// What an object store holds about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the tenant prefix.
    pub key: String,
    pub size: u64,
    /// The store's entity tag without quotes (S3: the MD5 of a single-part object); `None` for
    /// the local directory backend.
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    /// S3 Object Lock: the object (its current version) cannot be deleted before this time.
    /// Only [`Backend::head`] fills it in (listings do not carry it); `None` when not locked.
    pub retain_until: Option<SystemTime>,
}

/// One page of a listing.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    /// Objects in ascending key order.
    pub objects: Vec<ObjectInfo>,
    /// Pass to the next [`Backend::list_page`] call; `None` on the last page.
    pub next: Option<String>,
}

/// What a successful put stored, as confirmed by the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutReceipt {
    pub size: u64,
    pub etag: Option<String>,
    /// 0 for a single-request upload, else the number of multipart parts.
    pub parts: u32,
    /// The most object bytes this upload held in memory at once: the memory bound of
    /// [`Backend::put_file`] (part size × parts in flight for a multipart upload).
    pub peak_buffered: u64,
}

/// Object lock (WORM) support of the bucket, from the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectLock {
    /// Enabled on the bucket; the default retention if one is set (e.g. "COMPLIANCE 30 days").
    Enabled(Option<String>),
    /// The store supports it but the bucket was created without it.
    Disabled,
    /// The store (or this backend) does not implement it.
    Unsupported(String),
}

impl fmt::Display for ObjectLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectLock::Enabled(Some(r)) => write!(f, "enabled, default retention {r}"),
            ObjectLock::Enabled(None) => f.write_str("enabled, no default retention"),
            ObjectLock::Disabled => f.write_str("not enabled on this bucket"),
            ObjectLock::Unsupported(why) => write!(f, "not supported ({why})"),
        }
    }
}

/// An object store. Every method is safe to call concurrently; retries of transient failures
/// happen inside (S3), so an error returned is final for this call.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Where objects go, for messages: `s3://bucket/prefix at https://endpoint`, `dir /path`.
    fn describe(&self) -> String;

    /// The directory objects go to when the store is a directory of this machine (the local
    /// backend), so the status can say that nothing in it is off-site.
    fn local_dir(&self) -> Option<&std::path::Path> {
        None
    }

    /// Stores `data` as `key` in one request, replacing any object of that name, and returns
    /// only once the store confirmed exactly these bytes.
    async fn put(&self, key: &str, data: Bytes) -> BResult<PutReceipt>;

    /// Stores the contents of a local file as `key`: one request below the backend's multipart
    /// threshold, else a multipart upload holding at most a few parts in memory. The file must
    /// not change meanwhile (sealed packs never do). Verified like [`Backend::put`].
    async fn put_file(&self, key: &str, path: &Path) -> BResult<PutReceipt>;

    /// The bytes of `range` (non-empty). Shorter than asked, possibly empty, if the object
    /// ends first: callers that expect exact lengths (a blob of a pack) must check.
    /// `ErrorKind::NotFound` if there is no such object.
    async fn get_range(&self, key: &str, range: Range<u64>) -> BResult<Bytes>;

    /// The whole object. Meant for small objects (config, keys, footers); packs are read by
    /// range.
    async fn get(&self, key: &str) -> BResult<Bytes>;

    /// Size and tag of an object; `ErrorKind::NotFound` if there is none.
    async fn head(&self, key: &str) -> BResult<ObjectInfo>;

    /// Up to `max_keys` objects whose key starts with `prefix` (relative to the tenant prefix),
    /// in key order, starting after the page that returned `token`.
    async fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
        max_keys: u32,
    ) -> BResult<ListPage>;

    /// Removes an object. Removing a missing object succeeds (as in S3). With object lock
    /// configured ([`Backend::retention`]) every version of the key goes, delete markers
    /// included: on the versioned bucket object lock requires, a plain DELETE only hides the
    /// data behind a delete marker and it stays billed. A version still under retention fails
    /// the call with [`ErrorKind::Retained`] (callers HEAD first and do not try).
    async fn delete(&self, key: &str) -> BResult<()>;

    /// A cheap check that the store is reachable, the credentials are accepted and the bucket
    /// (or directory) exists.
    async fn check_access(&self) -> BResult<()>;

    /// Whether objects can be locked against deletion for a retention period.
    async fn object_lock(&self) -> BResult<ObjectLock>;

    /// Picks how uploads prove their bytes arrived intact; a probe step that may write and
    /// delete `key` (a probe key). Returns what was chosen, for the probe's report.
    async fn check_upload_checksums(&self, _key: &str) -> BResult<String> {
        Ok("local files: nothing travels over a network".into())
    }

    /// The retention this backend writes [`layout::is_locked`] objects with
    /// (`[s3.object_lock]`); `None`: objects are not locked. The local directory backend never
    /// locks (docs/RETENTION.md#s3-object-lock).
    fn retention(&self) -> Option<&options::ObjectLockConfig> {
        None
    }
}

/// When configured retention requires it, checks that the bucket has Object Lock enabled. An
/// error of class [`ErrorKind::Unsupported`] says what to do; `serve` refuses to start on it
/// and the probe fails. (S3 itself refuses a PUT with lock headers into a bucket without Object
/// Lock, so nothing would be written unlocked anyway: this makes the reason plain at once.)
pub async fn check_object_lock(backend: &dyn Backend) -> BResult<ObjectLock> {
    let lock = backend.object_lock().await?;
    let Some(want) = backend.retention() else {
        return Ok(lock);
    };
    match &lock {
        ObjectLock::Enabled(_) => Ok(lock),
        other => Err(BackendError::new(
            ErrorKind::Unsupported,
            format!(
                "[s3.object_lock] asks for {} retention of {} days, but object lock on {} is \
                 {other}: create a bucket with Object Lock enabled (it cannot be turned on for \
                 most existing buckets), or remove [s3.object_lock] to write unlocked objects",
                want.mode.as_str(),
                want.days,
                backend.describe()
            ),
        )),
    }
}

/// Every object under `prefix`, following pages of `page_size` keys.
pub async fn list_all(
    backend: &dyn Backend,
    prefix: &str,
    page_size: u32,
) -> BResult<Vec<ObjectInfo>> {
    let mut all = Vec::new();
    let mut token = None;
    loop {
        let page = backend.list_page(prefix, token, page_size).await?;
        all.extend(page.objects);
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(all),
        }
    }
}

/// Checks that a key can be used on every backend: non-empty, at most 512 bytes, segments
/// separated by single `/` (no leading or trailing one), no `.` or `..` segment, and only
/// `A-Z a-z 0-9 . _ -` in segments. Strict on purpose: the local backend maps keys to paths.
pub fn check_key(key: &str) -> BResult<()> {
    let bad = |why: &str| {
        Err(BackendError::new(
            ErrorKind::Invalid,
            format!("object key {key:?}: {why}"),
        ))
    };
    if key.is_empty() || key.len() > 512 {
        return bad("must be 1..=512 bytes");
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("empty, `.` or `..` path segment");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad("only A-Z a-z 0-9 . _ - and / are allowed");
        }
    }
    Ok(())
}

/// Like [`check_key`] for a listing prefix, which may be empty and may end in `/`.
pub fn check_prefix(prefix: &str) -> BResult<()> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        return if prefix.is_empty() {
            Ok(())
        } else {
            check_key("/")
        };
    }
    check_key(trimmed)
}

/// The class of a backend failure. The probe prints [`ErrorKind::hint`] with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No object of that key.
    NotFound,
    /// The bucket does not exist (or is in another region).
    NoSuchBucket,
    /// The store does not know the access key, or the secret key does not match it.
    WrongCredentials,
    /// The credentials are valid but not allowed to do this.
    AccessDenied,
    /// The store rejected the request's timestamp: the appliance clock is off.
    ClockSkew,
    /// No connection: refused, DNS, timeout, reset.
    Unreachable,
    /// The TLS handshake failed: certificate not trusted or expired, or http/https mixed up.
    Tls,
    /// The store answered but the answer is wrong: size or checksum mismatch after an upload,
    /// or a corrupt local object.
    Corrupt,
    /// A caller error: bad key, empty range, bad configuration.
    Invalid,
    /// A local I/O error (local backend, or reading the file to upload).
    Io,
    /// The store does not implement the request.
    Unsupported,
    /// The object is under S3 Object Lock retention (or a legal hold) and cannot be deleted yet.
    Retained,
    /// Anything else the store said (its code and message are in the error text).
    Other,
}

impl ErrorKind {
    /// What the admin should check, for the probe's messages.
    pub fn hint(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "the object does not exist",
            ErrorKind::NoSuchBucket => {
                "the bucket does not exist at this endpoint: check s3.bucket and s3.region, or \
                 create the bucket"
            }
            ErrorKind::WrongCredentials => {
                "the store rejected the credentials: check s3.access_key_id and the secret key \
                 (s3.secret_access_key_file, s3.secret_access_key or AWS_SECRET_ACCESS_KEY)"
            }
            ErrorKind::AccessDenied => {
                "the credentials are valid but lack permission on this bucket or prefix: the \
                 key needs read, write, list and delete"
            }
            ErrorKind::ClockSkew => {
                "the store rejected the request time: this machine's clock is off; enable time \
                 synchronisation (e.g. `timedatectl set-ntp true`)"
            }
            ErrorKind::Unreachable => {
                "cannot reach the endpoint: check s3.endpoint (host and port), DNS, firewall and \
                 that the store is running"
            }
            ErrorKind::Tls => {
                "TLS handshake failed: check http:// vs https:// in s3.endpoint and that the \
                 store's certificate is valid and trusted by this machine"
            }
            ErrorKind::Corrupt => "the store returned or kept different bytes than were sent",
            ErrorKind::Invalid => "invalid request or configuration",
            ErrorKind::Io => "local I/O error",
            ErrorKind::Unsupported => "the store does not support this request",
            ErrorKind::Retained => {
                "the object is under Object Lock retention: it can be deleted once that ends"
            }
            ErrorKind::Other => "the store refused the request",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "no such object",
            ErrorKind::NoSuchBucket => "no such bucket",
            ErrorKind::WrongCredentials => "wrong credentials",
            ErrorKind::AccessDenied => "access denied",
            ErrorKind::ClockSkew => "clock skew",
            ErrorKind::Unreachable => "endpoint unreachable",
            ErrorKind::Tls => "TLS error",
            ErrorKind::Corrupt => "verification failed",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Io => "I/O error",
            ErrorKind::Unsupported => "not supported",
            ErrorKind::Retained => "under retention",
            ErrorKind::Other => "store error",
        })
    }
}

/// A failed backend operation: its class and a message naming the operation and object.
#[derive(Debug)]
pub struct BackendError {
    kind: ErrorKind,
    msg: String,
    /// The OS error behind an `Io` failure, kept so a full disk stays ENOSPC.
    os_errno: Option<i32>,
}

impl BackendError {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        BackendError {
            kind,
            msg: msg.into(),
            os_errno: None,
        }
    }

    /// A local I/O error, with what we were doing.
    pub fn io(context: impl fmt::Display, e: std::io::Error) -> Self {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Io
        };
        BackendError {
            kind,
            msg: format!("{context}: {e}"),
            os_errno: e.raw_os_error(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// The message without the class.
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// The same error with `what` in front of its message.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.msg, self.kind)
    }
}

impl std::error::Error for BackendError {}

impl From<BackendError> for crate::Error {
    fn from(e: BackendError) -> Self {
        match (e.kind, e.os_errno) {
            (ErrorKind::Corrupt, _) => crate::Error::Corrupt(e.to_string()),
            // A local disk error keeps its errno (ENOSPC stays "no space", not EIO).
            (ErrorKind::Io, Some(errno)) => {
                crate::Error::io(e.msg, std::io::Error::from_raw_os_error(errno))
            }
            _ => crate::Error::Remote(e.to_string()),
        }
    }
}

/// One step of the probe and how long it took.
#[derive(Clone, Debug)]
pub struct ProbeStep {
    pub name: &'static str,
    pub elapsed: Duration,
    pub detail: String,
}

/// A passed probe.
#[derive(Clone, Debug)]
pub struct ProbeReport {
    pub store: String,
    pub steps: Vec<ProbeStep>,
    pub object_lock: ObjectLock,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "store: {}", self.store)?;
        for s in &self.steps {
            writeln!(
                f,
                "  ok  {:<12} {:>7.1} ms  {}",
                s.name,
                s.elapsed.as_secs_f64() * 1e3,
                s.detail
            )?;
        }
        write!(f, "object lock: {}", self.object_lock)
    }
}

/// A failed probe: the step, the error, and what to do about it.
#[derive(Debug)]
pub struct ProbeError {
    pub step: &'static str,
    pub error: BackendError,
    pub store: String,
}

impl ProbeError {
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "probe of {} failed at step {:?}: {}: {}\n  {}",
            self.store,
            self.step,
            self.error.kind(),
            self.error.message(),
            self.error.kind().hint()
        )
    }
}

impl std::error::Error for ProbeError {}

/// Checks that `backend` is usable: access (bucket reachable, credentials valid), then a probe
/// object of a few KiB written, read back in full and by range, found by list, deleted and
/// gone, then object lock availability. Leaves no object behind unless a step after the write
/// fails (then the object lies under [`layout::PROBE_PREFIX`] and a later probe removes it).
pub async fn probe(backend: &dyn Backend) -> std::result::Result<ProbeReport, ProbeError> {
    let store = backend.describe();
    let mut steps = Vec::new();
    let fail = |step: &'static str, error: BackendError| ProbeError {
        step,
        error,
        store: store.clone(),
    };
    let key = format!(
        "{}{}-{}",
        layout::PROBE_PREFIX,
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        hex::encode(rand::random::<[u8; 8]>())
    );
    let body: Bytes = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into();

    let t = Instant::now();
    backend
        .check_access()
        .await
        .map_err(|e| fail("access", e))?;
    steps.push(ProbeStep {
        name: "access",
        elapsed: t.elapsed(),
        detail: "store reachable, credentials accepted, bucket present".into(),
    });

    let t = Instant::now();
    let receipt = backend
        .put(&key, body.clone())
        .await
        .map_err(|e| fail("write", e))?;
    steps.push(ProbeStep {
        name: "write",
        elapsed: t.elapsed(),
        detail: format!("{key}: {} bytes, verified", receipt.size),
    });

    let t = Instant::now();
    let detail = backend
        .check_upload_checksums(&format!("{key}-checksum"))
        .await
        .map_err(|e| fail("checksums", e))?;
    steps.push(ProbeStep {
        name: "checksums",
        elapsed: t.elapsed(),
        detail,
    });

    let t = Instant::now();
    let got = backend.get(&key).await.map_err(|e| fail("read", e))?;
    if got != body {
        return Err(fail(
            "read",
            BackendError::new(
                ErrorKind::Corrupt,
                format!(
                    "{key}: read back {} bytes that differ from the {} written",
                    got.len(),
                    body.len()
                ),
            ),
        ));
    }
    let part = backend
        .get_range(&key, 1000..1100)
        .await
        .map_err(|e| fail("read", e))?;
    if part[..] != body[1000..1100] {
        return Err(fail(
            "read",
            BackendError::new(
                ErrorKind::Corrupt,
                format!("{key}: ranged read of 1000..1100 returned other bytes"),
            ),
        ));
    }
    steps.push(ProbeStep {
        name: "read",
        elapsed: t.elapsed(),
        detail: "whole and ranged read match".into(),
    });

    let t = Instant::now();
    let listed = list_all(backend, layout::PROBE_PREFIX, 1000)
        .await
        .map_err(|e| fail("list", e))?;
    if !listed.iter().any(|o| o.key == key) {
        return Err(fail(
            "list",
            BackendError::new(
                ErrorKind::Other,
                format!(
                    "{key} was written but a listing of {} does not show it",
                    layout::PROBE_PREFIX
                ),
            ),
        ));
    }
    steps.push(ProbeStep {
        name: "list",
        elapsed: t.elapsed(),
        detail: format!("{} object(s) under {}", listed.len(), layout::PROBE_PREFIX),
    });

    let t = Instant::now();
    // Leftovers of earlier probes that failed half-way go too.
    for o in &listed {
        backend.delete(&o.key).await.map_err(|e| {
            if e.kind() == ErrorKind::Retained {
                // Probe objects are written without retention: only a default retention rule
                // on the bucket locks them.
                return fail(
                    "delete",
                    e.context(
                        "the bucket's default Object Lock retention locked the probe object \
                         (remove the default retention rule: tiergate sets retention on the \
                         objects that need it, and the lease must stay unlocked)",
                    ),
                );
            }
            fail("delete", e)
        })?;
    }
    match backend.head(&key).await {
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(fail("delete", e)),
        Ok(_) => {
            return Err(fail(
                "delete",
                BackendError::new(ErrorKind::Other, format!("{key} still exists after delete")),
            ))
        }
    }
    steps.push(ProbeStep {
        name: "delete",
        elapsed: t.elapsed(),
        detail: "probe object removed".into(),
    });

    let t = Instant::now();
    let object_lock = check_object_lock(backend)
        .await
        .map_err(|e| fail("object-lock", e))?;
    steps.push(ProbeStep {
        name: "object-lock",
        elapsed: t.elapsed(),
        detail: object_lock.to_string(),
    });
    Ok(ProbeReport {
        store,
        steps,
        object_lock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_strictly() {
        for good in ["a", "packs/0000000000000001.pack", "meta/ckpt-1_x", "A.B-C"] {
            check_key(good).unwrap();
        }
        for bad in [
            "", "/a", "a/", "a//b", "../x", "a/./b", "a b", "a\\b", "é", "a\0b", ".",
        ] {
            let e = check_key(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad:?}");
            assert!(e.to_string().contains("object key"), "{e}");
        }
        check_key(&"x".repeat(512)).unwrap();
        assert!(check_key(&"x".repeat(513)).is_err());
        for good in ["", "packs/", "packs", "probe/abc"] {
            check_prefix(good).unwrap();
        }
        for bad in ["/", "//", "../", "a//"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_map_into_the_core_error() {
        let e: crate::Error = BackendError::new(ErrorKind::Unreachable, "put packs/x").into();
        assert!(matches!(e, crate::Error::Remote(_)));
        assert_eq!(e.errno(), libc::EIO);
        assert_eq!(e.http_status(), 502);
        assert!(e.to_string().contains("put packs/x"), "{e}");
        let e: crate::Error = BackendError::new(ErrorKind::NotFound, "get packs/y").into();
        assert!(matches!(e, crate::Error::Remote(_)));
        let e: crate::Error = BackendError::new(ErrorKind::Corrupt, "short").into();
        assert!(matches!(e, crate::Error::Corrupt(_)));
        let full = BackendError::io(
            "writing packs/z",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(full.kind(), ErrorKind::Io);
        let e: crate::Error = full.into();
        assert_eq!(e.errno(), libc::ENOSPC);
        assert_eq!(e.http_status(), 507);
        let missing = BackendError::io("x", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(missing.is_not_found());
    }

    #[test]
    fn only_data_and_metadata_objects_are_locked() {
        use layout::{KEY_OBJECT, LEASE_OBJECT, VOLUME_OBJECT};
        let seg = crate::journal::segment_key(1, 9);
        let ckpt = crate::journal::checkpoint_key(1, 9);
        for k in [&layout::pack_key(7), &seg, &ckpt, VOLUME_OBJECT, KEY_OBJECT] {
            assert!(layout::is_locked(k), "{k}");
        }
        for k in [LEASE_OBJECT, "probe/1795848708-2830e9e84118cfa7"] {
            assert!(!layout::is_locked(k), "{k}");
        }
    }

    #[test]
    fn layout_names_packs_like_local_files() {
        assert_eq!(layout::pack_key(1), "packs/0000000000000001.pack");
        check_key(&layout::pack_key(u64::MAX)).unwrap();
    }
}

//! The one error type of the filesystem core.
//!
//! Every layer below the front-ends (formats, key handling, metadata store, volume) returns
//! [`Error`]. Front-ends translate it exactly once: [`Error::errno`] for FUSE,
//! [`Error::http_status`] for WebDAV. Variants say what went wrong in the user's terms; the message
//! carries the context (which file, which chunk, which key) a user needs to act on it.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("name too long")]
    NameTooLong,
    #[error("no such extended attribute")]
    NoXattr,
    #[error("buffer too small for the answer")]
    Range,
    #[error("file too large")]
    TooBig,
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    #[error("operation not permitted")]
    NotPermitted,
    /// A change inside a snapshot (read-only by design).
    #[error("read-only: snapshots cannot be changed")]
    ReadOnly,
    #[error("bad file handle")]
    BadHandle,
    #[error("cross-device operation")]
    CrossDevice,
    /// lseek SEEK_DATA/SEEK_HOLE found nothing at or after the offset.
    #[error("no data or hole at or after this offset")]
    NoSuchOffset,
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("wrong passphrase or key file for this volume")]
    WrongPassphrase,
    /// Stored bytes failed a check (checksum, authentication tag, chunk id, framing).
    /// Never served as data.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The I/O error is part of the message (not a `source`), so that it is printed once.
    #[error("{context}: {err}")]
    Io { context: String, err: io::Error },
    #[error("metadata store: {0}")]
    Store(String),
    /// The object store (S3 or the local backend directory) failed or is unreachable; the
    /// message names the object and the class of failure (src/backend/).
    #[error("object store: {0}")]
    Remote(String),
}

impl Error {
    /// Wraps an I/O error with what we were doing when it happened.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            err: source,
        }
    }

    /// The errno a POSIX front-end returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound => libc::ENOENT,
            Error::Exists => libc::EEXIST,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::Invalid(_) => libc::EINVAL,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::NoXattr => libc::ENODATA,
            Error::Range => libc::ERANGE,
            Error::TooBig => libc::EFBIG,
            Error::Unsupported(_) => libc::EOPNOTSUPP,
            Error::NotPermitted => libc::EPERM,
            Error::ReadOnly => libc::EROFS,
            Error::BadHandle => libc::EBADF,
            Error::CrossDevice => libc::EXDEV,
            Error::NoSuchOffset => libc::ENXIO,
            Error::NoSpace(_) => libc::ENOSPC,
            // A wrong key is only ever met at open time; to a running mount it is an access error.
            Error::WrongPassphrase => libc::EACCES,
            // Corruption and store failures are I/O errors to the application: the data exists
            // but cannot be served, and the log line carries the detail.
            Error::Corrupt(_) | Error::Store(_) => libc::EIO,
            // Data that is only off-site and cannot be fetched now: an I/O error, as a read
            // from a failing disk would be; the log line says which store and why.
            Error::Remote(_) => libc::EIO,
            // Keep the underlying errno where there is one (ENOSPC on a full disk, say).
            Error::Io { err, .. } => err.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl Error {
    /// The HTTP status a WebDAV front-end answers with for this error (RFC 9110 / RFC 4918).
    pub fn http_status(&self) -> u16 {
        match self {
            Error::NotFound | Error::NoXattr => 404,
            // RFC 4918 §9.3.1: MKCOL on an existing resource is 405 Method Not Allowed.
            Error::Exists => 405,
            // A path component that is a file where a collection is needed: RFC 4918 answers
            // 409 Conflict (the request cannot apply in the resource's current state).
            Error::NotDir | Error::NotEmpty => 409,
            // Writing file contents to a collection.
            Error::IsDir => 405,
            Error::Invalid(_) => 400,
            // A path segment of more than 255 bytes: the URI names nothing we could ever store.
            Error::NameTooLong => 414,
            Error::TooBig => 413,
            Error::Unsupported(_) => 501,
            Error::NotPermitted | Error::WrongPassphrase | Error::ReadOnly => 403,
            // Debatable: like dav-server's own local filesystem, EXDEV is 502 Bad Gateway.
            Error::CrossDevice => 502,
            Error::NoSuchOffset => 416,
            // RFC 4918 §11.5: 507 Insufficient Storage.
            Error::NoSpace(_) => 507,
            // Keep what the OS said where it has an HTTP meaning (a full disk is 507).
            Error::Io { err, .. } => match err.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => 507,
                Some(libc::EFBIG) => 413,
                Some(libc::ENAMETOOLONG) => 414,
                _ => 500,
            },
            // ERANGE (a buffer too small) and a bad handle are our own bugs, never the
            // client's; corruption and store failures are server errors with the detail logged.
            Error::Range | Error::BadHandle | Error::Corrupt(_) | Error::Store(_) => 500,
            // RFC 9110 §15.6.3: we act as a gateway and the upstream store failed.
            Error::Remote(_) => 502,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_keeps_os_errors_and_hides_corruption_as_eio() {
        let full = Error::io("pack 7", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.errno(), libc::ENOSPC);
        assert_eq!(Error::Corrupt("chunk ab".into()).errno(), libc::EIO);
        assert_eq!(Error::NotEmpty.errno(), libc::ENOTEMPTY);
        assert_eq!(Error::NoXattr.errno(), libc::ENODATA);
        let other = Error::io("x", io::Error::other("no errno"));
        assert_eq!(other.errno(), libc::EIO);
        assert_eq!(Error::Remote("s3 down".into()).errno(), libc::EIO);
    }

    #[test]
    fn http_status_mapping_keeps_full_disk_and_hides_corruption_as_500() {
        let full = Error::io("pack 7", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.http_status(), 507);
        assert_eq!(Error::NoSpace("quota".into()).http_status(), 507);
        assert_eq!(Error::NotFound.http_status(), 404);
        assert_eq!(Error::Exists.http_status(), 405);
        assert_eq!(Error::NotDir.http_status(), 409);
        assert_eq!(Error::NameTooLong.http_status(), 414);
        assert_eq!(Error::Invalid("name with NUL".into()).http_status(), 400);
        assert_eq!(Error::Corrupt("chunk ab".into()).http_status(), 500);
        let other = Error::io("x", io::Error::other("no errno"));
        assert_eq!(other.http_status(), 500);
        assert_eq!(Error::Remote("s3 down".into()).http_status(), 502);
    }
}

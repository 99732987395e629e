//! The WebDAV front-end: a thin adapter that serves the [`Volume`] core through dav-server.
//!
//! dav-server speaks the protocol (methods, XML, conditional requests, ranges, multistatus);
//! this module gives it the volume as a [`DavFileSystem`] and a durable [`DavLockSystem`],
//! and puts a small HTTP layer in front (authentication, TLS, path checks). Every filesystem
//! call resolves the request path to an inode by lookups from the root and calls the core on
//! tokio's blocking pool, never on the reactor. Errors are translated once, through
//! [`Error::http_status`].
//!
//! ## Uploads
//! A PUT is written into a fresh file in a staging directory that has no name in the
//! namespace ([`Volume::hidden_dir`]), then fsync'd and renamed over the target: the 2xx
//! answer comes after both, so an acknowledged PUT is durable, and readers of the target (over
//! WebDAV or FUSE) see the old or the new content, never a mix. A PUT that does not finish
//! (connection dropped, body short, error) drops its file object, which unlinks the staging
//! file; a crash leaves it in the staging directory, which is emptied at the next start.
//! A partial PUT (Content-Range) clones the old content into the staging file first (an
//! extent-map copy, no data moved), so it is atomic too.
//!
//! ## Other front-ends
//! After each change the adapter calls [`Volume::changed`] so the FUSE mount drops what the
//! kernel cached about the changed names and inodes.

use std::io::SeekFrom;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use dav_server::body::Body;
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, DavProp, FsError, FsFuture, FsResult,
    FsStream, OpenOptions, ReadDirMeta,
};
use dav_server::ls::{DavLock, DavLockSystem, LsFuture};
use dav_server::{DavConfig, DavHandler};
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use tokio_rustls::TlsAcceptor;

use crate::auth::{self, Gate, Users};
use crate::config::WebdavConfig;
use crate::error::{Error, Result};
use crate::meta::{unix_secs, FileKind, ROOT_INO};
use crate::volume::{
    Attr, Caller, Changed, RenameMode, SetAttr, Volume, XattrSet, DAV_PROP_PREFIX, MAX_NAME_LEN,
};
use crate::xmldepth;

/// Bytes of a PUT body gathered before one core `write` (one blocking-pool round trip).
const WRITE_BATCH: usize = 1 << 20;
/// Largest single read handed to dav-server for GET.
const READ_BATCH: usize = 1 << 20;
/// Dead properties live in xattrs under this prefix, so they are durable, move with the file
/// on MOVE, and are visible (read-only in spirit) through the mount. The core bounds their
/// number, size and nesting whoever sets them ([`crate::volume::DAV_PROP_PREFIX`]).
const PROP_PREFIX: &[u8] = DAV_PROP_PREFIX;
/// How long a request with wrong credentials waits before its 401.
const FAILED_AUTH_DELAY: Duration = Duration::from_secs(1);
/// Name of the staging directory record ([`Volume::hidden_dir`]).
const STAGING: &str = "webdav-staging";
/// Where earlier versions kept the whole lock table in one record ([`Volume::frontend_state`]);
/// read once at start and converted to one record per lock.
const LOCK_STATE: &str = "webdav.locks";
/// One record per lock: this prefix and the lock token ([`Volume::frontend_states`]).
const LOCK_PREFIX: &str = "webdav.lock.";
/// Timeout of a lock whose LOCK asked for none, or for `Infinite` (RFC 4918 §10.7 lets the
/// server choose). Clients refresh well within it: Windows and macOS every few minutes.
pub const LOCK_DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest timeout granted: a client that vanished holds a lock at most this long.
pub const LOCK_MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Locks one user may hold at once (a desktop client holds one per open document).
pub const MAX_LOCKS_PER_USER: usize = 100;
/// Locks held at once on the share; each is a small record kept in memory and on disk.
pub const MAX_LOCKS: usize = 1000;

// ------------------------------------------------------------------------ errors and paths

/// The one translation: core error → HTTP status ([`Error::http_status`]) → the dav-server
/// result code that produces that status.
fn fs_error(e: &Error) -> FsError {
    let status = e.http_status();
    if status >= 500 {
        tracing::error!("webdav: {e}");
    } else {
        tracing::debug!("webdav: {e}");
    }
    match status {
        404 | 409 => FsError::NotFound, // dav-server answers 409 itself where the parent is missing
        405 | 412 => FsError::Exists,
        400 | 403 => FsError::Forbidden,
        413 => FsError::TooLarge,
        414 => FsError::PathTooLong,
        501 => FsError::NotImplemented,
        502 => FsError::IsRemote,
        507 => FsError::InsufficientStorage,
        _ => FsError::GeneralFailure,
    }
}

/// Runs a core call on the blocking pool.
async fn blocking<T, F>(f: F) -> FsResult<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(fs_error(&e)),
        Err(e) => {
            tracing::error!("webdav: blocking task failed: {e}");
            Err(FsError::GeneralFailure)
        }
    }
}

/// The inode a (decoded) request path names.
fn resolve(vol: &Volume, path: &[u8]) -> Result<Attr> {
    vol.resolve(path)
}

/// The directory that holds the last name of `path`, and that name.
fn resolve_parent(vol: &Volume, path: &[u8]) -> Result<(u64, Vec<u8>)> {
    vol.resolve_parent(path)
}

fn lookup_opt(vol: &Volume, parent: u64, name: &[u8]) -> Result<Option<Attr>> {
    match vol.lookup(parent, name) {
        Ok(a) => Ok(Some(a)),
        Err(Error::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

fn entry_changed(vol: &Volume, parent: u64, name: &[u8], ino: Option<u64>) {
    let mut what = vec![Changed::Entry {
        parent,
        name: name.to_vec(),
    }];
    what.extend(ino.map(Changed::Inode));
    vol.changed(&what);
}

// ------------------------------------------------------------------------ metadata

#[derive(Debug, Clone)]
struct Meta {
    size: u64,
    kind: FileKind,
    perm: u16,
    mtime: SystemTime,
    atime: SystemTime,
    ctime: SystemTime,
    crtime: SystemTime,
    etag: Option<String>,
}

/// Attributes plus, for files, the content-identity ETag.
fn meta_of(vol: &Volume, a: &Attr) -> Result<Meta> {
    let i = &a.inode;
    let etag = match i.kind {
        FileKind::File => Some(hex::encode(&vol.content_tag(a.ino)?[..16])),
        // A collection's "content" is its listing; its mtime changes with every name.
        _ => Some(format!(
            "d{:x}-{:x}-{:x}",
            a.ino, i.mtime.secs, i.mtime.nanos
        )),
    };
    Ok(Meta {
        size: if i.kind == FileKind::File { i.size } else { 0 },
        kind: i.kind,
        perm: i.perm,
        mtime: i.mtime.to_system_time(),
        atime: i.atime.to_system_time(),
        ctime: i.ctime.to_system_time(),
        crtime: i.crtime.to_system_time(),
        etag,
    })
}

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.size
    }
    fn modified(&self) -> FsResult<SystemTime> {
        Ok(self.mtime)
    }
    fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }
    fn is_symlink(&self) -> bool {
        self.kind == FileKind::Symlink
    }
    fn etag(&self) -> Option<String> {
        self.etag.clone()
    }
    fn accessed(&self) -> FsResult<SystemTime> {
        Ok(self.atime)
    }
    fn created(&self) -> FsResult<SystemTime> {
        Ok(self.crtime)
    }
    fn status_changed(&self) -> FsResult<SystemTime> {
        Ok(self.ctime)
    }
    fn executable(&self) -> FsResult<bool> {
        Ok(self.perm & 0o100 != 0)
    }
}

struct Dirent {
    vol: Arc<Volume>,
    name: Vec<u8>,
    ino: u64,
    kind: FileKind,
}

impl DavDirEntry for Dirent {
    fn name(&self) -> Vec<u8> {
        self.name.clone()
    }
    fn metadata(&self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let (vol, ino) = (self.vol.clone(), self.ino);
        async move {
            let m = blocking(move || meta_of(&vol, &vol.getattr(ino)?)).await?;
            Ok(Box::new(m) as Box<dyn DavMetaData>)
        }
        .boxed()
    }
    fn is_dir(&self) -> FsFuture<'_, bool> {
        futures_util::future::ready(Ok(self.kind == FileKind::Dir)).boxed()
    }
    fn is_file(&self) -> FsFuture<'_, bool> {
        futures_util::future::ready(Ok(self.kind == FileKind::File)).boxed()
    }
    fn is_symlink(&self) -> FsFuture<'_, bool> {
        futures_util::future::ready(Ok(self.kind == FileKind::Symlink)).boxed()
    }
}

// ------------------------------------------------------------------------ dead properties

/// The xattr that holds one dead property: a hash of its namespace and name keeps the
/// xattr name short and free of characters xattr names cannot hold.
fn prop_xattr(ns: &Option<String>, name: &str) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(ns.as_deref().unwrap_or("").as_bytes());
    h.update(b"\0");
    h.update(name.as_bytes());
    let mut x = PROP_PREFIX.to_vec();
    x.extend_from_slice(hex::encode(&h.finalize().as_bytes()[..20]).as_bytes());
    x
}

fn put_field(v: &mut Vec<u8>, f: &[u8]) {
    v.extend_from_slice(&(f.len() as u32).to_le_bytes());
    v.extend_from_slice(f);
}

/// Value layout: version byte 1, then namespace, prefix, name and the property's XML, each as
/// (u32 little-endian length, bytes); an absent namespace or prefix is stored empty.
#[doc(hidden)]
pub fn encode_prop(p: &DavProp) -> Vec<u8> {
    let mut v = vec![1u8];
    put_field(&mut v, p.namespace.as_deref().unwrap_or("").as_bytes());
    put_field(&mut v, p.prefix.as_deref().unwrap_or("").as_bytes());
    put_field(&mut v, p.name.as_bytes());
    put_field(&mut v, p.xml.as_deref().unwrap_or(b""));
    v
}

/// The inverse of [`encode_prop`]; `None` for bytes it did not write, and for a property
/// whose XML nests deeper than [`xmldepth::MAX_DEPTH`] or does not parse: dav-server would
/// parse it recursively (a stack overflow) or fail the whole PROPFIND on it, so such a
/// property (set through the mount, or stored before the limits) is hidden instead. (Public,
/// like the lock table's codec and [`destination_path`], for the fuzz targets in `fuzz/`.)
#[doc(hidden)]
pub fn decode_prop(b: &[u8], with_content: bool) -> Option<DavProp> {
    let [ns, prefix, name, xml] = xmldepth::prop_record(b)?;
    if xmldepth::too_deep(xml) || (!xml.is_empty() && xmltree::Element::parse(xml).is_err()) {
        return None;
    }
    let s = |f: &[u8]| String::from_utf8(f.to_vec()).ok();
    let opt = |f: String| if f.is_empty() { None } else { Some(f) };
    Some(DavProp {
        name: s(name)?,
        prefix: opt(s(prefix)?),
        namespace: opt(s(ns)?),
        xml: (with_content && !xml.is_empty()).then(|| xml.to_vec()),
    })
}

/// Copies the dead properties of `from` onto `to` (COPY, and PUT over an existing file).
fn copy_props(vol: &Volume, from: u64, to: u64) -> Result<()> {
    for x in vol.listxattr(from)? {
        if x.starts_with(PROP_PREFIX) {
            match vol.getxattr(from, &x) {
                Ok(v) => vol.setxattr(to, &x, &v, XattrSet::Any)?,
                Err(Error::NoXattr) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------ the filesystem

/// The volume as dav-server sees it.
#[derive(Clone)]
struct TgFs {
    vol: Arc<Volume>,
    staging: u64,
}

impl TgFs {
    /// Finds (or creates) the staging directory and empties it: anything in it is an upload
    /// that a crash interrupted before it was acknowledged.
    fn new(vol: Arc<Volume>) -> Result<TgFs> {
        let staging = vol.hidden_dir(STAGING)?;
        let fh = vol.opendir(staging)?;
        let entries = vol.readdir(fh, 0, usize::MAX);
        vol.releasedir(fh)?;
        let mut n = 0;
        for e in entries? {
            if e.name != b"." && e.name != b".." {
                vol.unlink(staging, &e.name)?;
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!("removed {n} unfinished WebDAV upload(s) left by a crash");
        }
        Ok(TgFs { vol, staging })
    }
}

/// Owner of everything created over WebDAV: the owner of the volume's root.
fn owner(vol: &Volume) -> Result<Caller> {
    let r = vol.getattr(ROOT_INO)?;
    Ok(Caller {
        uid: r.inode.uid,
        gid: r.inode.gid,
    })
}

fn staging_name() -> Vec<u8> {
    format!("put-{:016x}", rand::random::<u64>()).into_bytes()
}

/// Makes a staged file the target name: fsync (data and metadata durable), rename over the
/// target, flush the rename. Carries over the permissions and dead properties of a file it
/// replaces. Returns the inode now under the target name.
fn commit_staged(
    vol: &Volume,
    staging: u64,
    sname: &[u8],
    ino: u64,
    parent: u64,
    name: &[u8],
) -> Result<u64> {
    if let Some(old) = lookup_opt(vol, parent, name)? {
        if old.inode.kind == FileKind::Dir {
            return Err(Error::IsDir);
        }
        if old.inode.kind == FileKind::File && old.ino != ino {
            copy_props(vol, old.ino, ino)?;
            vol.setattr(
                ino,
                &SetAttr {
                    mode: Some(old.inode.perm as u32),
                    ..SetAttr::default()
                },
            )?;
            vol.copy_access_acl(old.ino, ino)?;
        }
    } else {
        // A new name: the group, mode and ACL a file created in `parent` gets.
        vol.settle_new_file(ino, parent, 0o644)?;
    }
    vol.fsync(ino)?;
    vol.rename(staging, sname, parent, name, RenameMode::Replace)?;
    vol.sync_metadata()?;
    entry_changed(vol, parent, name, Some(ino));
    Ok(ino)
}

/// Creates a staging file; `init` fills it (clone of an old version, say). On any error the
/// staging file is removed again.
fn stage(
    vol: &Volume,
    staging: u64,
    init: impl FnOnce(u64) -> Result<()>,
) -> Result<(Vec<u8>, u64, u64)> {
    let sname = staging_name();
    let (attr, fh) = vol.create_file(staging, &sname, 0o644, owner(vol)?)?;
    if let Err(e) = init(attr.ino) {
        let _ = vol.unlink(staging, &sname);
        let _ = vol.release(fh);
        return Err(e);
    }
    Ok((sname, attr.ino, fh))
}

impl DavFileSystem for TgFs {
    fn open<'a>(
        &'a self,
        path: &'a DavPath,
        options: OpenOptions,
    ) -> FsFuture<'a, Box<dyn DavFile>> {
        let vol = self.vol.clone();
        let staging = self.staging;
        let p = path.as_bytes().to_vec();
        async move {
            if !options.write {
                let v = vol.clone();
                let (ino, fh) = blocking(move || {
                    let a = resolve(&v, &p)?;
                    if a.inode.kind == FileKind::Dir {
                        return Err(Error::IsDir);
                    }
                    Ok((a.ino, v.open_file(a.ino)?))
                })
                .await?;
                return Ok(Box::new(TgFile {
                    vol,
                    ino,
                    fh: Some(fh),
                    pos: 0,
                    upload: None,
                }) as Box<dyn DavFile>);
            }
            let v = vol.clone();
            let o = options.clone();
            let (parent, name, sname, ino, fh, pos) = blocking(move || {
                let (parent, name) = resolve_parent(&v, &p)?;
                let existing = lookup_opt(&v, parent, &name)?;
                match &existing {
                    Some(a) if a.inode.kind == FileKind::Dir => return Err(Error::IsDir),
                    Some(_) if o.create_new => return Err(Error::Exists),
                    None if !o.create => return Err(Error::NotFound),
                    _ => {}
                }
                // Refuse a body that cannot fit before reading any of it.
                if let Some(n) = o.size {
                    let s = v.statfs()?;
                    if n > s.bavail.saturating_mul(s.bsize as u64) {
                        return Err(Error::NoSpace(format!(
                            "a PUT of {n} bytes does not fit in the free space"
                        )));
                    }
                }
                let keep = existing.filter(|a| !o.truncate && a.inode.kind == FileKind::File);
                let mut pos = 0;
                let (sname, ino, fh) = stage(&v, staging, |ino| {
                    if let Some(a) = &keep {
                        v.copy_range(a.ino, 0, ino, 0, a.inode.size)?;
                        if o.append {
                            pos = a.inode.size;
                        }
                    }
                    Ok(())
                })?;
                Ok((parent, name, sname, ino, fh, pos))
            })
            .await?;
            Ok(Box::new(TgFile {
                vol,
                ino,
                fh: Some(fh),
                pos,
                upload: Some(Upload {
                    staging,
                    sname,
                    parent,
                    name,
                    expected: options.size,
                    received: 0,
                    pending: Vec::new(),
                    pending_off: 0,
                    done: false,
                }),
            }) as Box<dyn DavFile>)
        }
        .boxed()
    }

    fn read_dir<'a>(
        &'a self,
        path: &'a DavPath,
        _meta: ReadDirMeta,
    ) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        let vol = self.vol.clone();
        let p = path.as_bytes().to_vec();
        async move {
            let v = vol.clone();
            let entries = blocking(move || {
                let a = resolve(&v, &p)?;
                let fh = v.opendir(a.ino)?;
                let list = v.readdir(fh, 0, usize::MAX);
                v.releasedir(fh)?;
                list
            })
            .await?;
            let items: Vec<FsResult<Box<dyn DavDirEntry>>> = entries
                .into_iter()
                .filter(|e| e.name != b"." && e.name != b"..")
                .map(|e| {
                    Ok(Box::new(Dirent {
                        vol: vol.clone(),
                        name: e.name,
                        ino: e.ino,
                        kind: e.kind,
                    }) as Box<dyn DavDirEntry>)
                })
                .collect();
            Ok(Box::pin(futures_util::stream::iter(items)) as FsStream<Box<dyn DavDirEntry>>)
        }
        .boxed()
    }

    fn metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        let vol = self.vol.clone();
        let p = path.as_bytes().to_vec();
        async move {
            let m = blocking(move || meta_of(&vol, &resolve(&vol, &p)?)).await?;
            Ok(Box::new(m) as Box<dyn DavMetaData>)
        }
        .boxed()
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        let vol = self.vol.clone();
        let p = path.as_bytes().to_vec();
        blocking(move || {
            let (parent, name) = resolve_parent(&vol, &p)?;
            let a = vol.mkdir(parent, &name, 0o755, owner(&vol)?)?;
            vol.sync_metadata()?;
            entry_changed(&vol, parent, &name, Some(a.ino));
            Ok(())
        })
        .boxed()
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        let vol = self.vol.clone();
        let p = path.as_bytes().to_vec();
        blocking(move || {
            let (parent, name) = resolve_parent(&vol, &p)?;
            vol.rmdir(parent, &name)?;
            vol.sync_metadata()?;
            entry_changed(&vol, parent, &name, None);
            Ok(())
        })
        .boxed()
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        let vol = self.vol.clone();
        let p = path.as_bytes().to_vec();
        blocking(move || {
            let (parent, name) = resolve_parent(&vol, &p)?;
            let a = vol.lookup(parent, &name)?;
            if a.inode.kind == FileKind::Dir {
                return Err(Error::IsDir);
            }
            vol.unlink(parent, &name)?;
            vol.sync_metadata()?;
            entry_changed(&vol, parent, &name, Some(a.ino));
            Ok(())
        })
        .boxed()
    }

    fn rename<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        let vol = self.vol.clone();
        let (f, t) = (from.as_bytes().to_vec(), to.as_bytes().to_vec());
        blocking(move || {
            let (fp, fname) = resolve_parent(&vol, &f)?;
            let (tp, tname) = resolve_parent(&vol, &t)?;
            vol.rename(fp, &fname, tp, &tname, RenameMode::Replace)?;
            vol.sync_metadata()?;
            entry_changed(&vol, fp, &fname, None);
            entry_changed(&vol, tp, &tname, None);
            Ok(())
        })
        .boxed()
    }

    /// COPY of one file: an extent-map clone into a staging file, renamed into place.
    fn copy<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        let vol = self.vol.clone();
        let staging = self.staging;
        let (f, t) = (from.as_bytes().to_vec(), to.as_bytes().to_vec());
        blocking(move || {
            let src = resolve(&vol, &f)?;
            if src.inode.kind != FileKind::File {
                return Err(Error::Unsupported("COPY of a special file"));
            }
            let (parent, name) = resolve_parent(&vol, &t)?;
            let (sname, ino, fh) = stage(&vol, staging, |ino| {
                vol.copy_range(src.ino, 0, ino, 0, src.inode.size)?;
                copy_props(&vol, src.ino, ino)?;
                vol.setattr(
                    ino,
                    &SetAttr {
                        mode: Some(src.inode.perm as u32),
                        ..SetAttr::default()
                    },
                )?;
                Ok(())
            })?;
            let released = vol.release(fh);
            let r = released.and_then(|_| commit_staged(&vol, staging, &sname, ino, parent, &name));
            if r.is_err() {
                let _ = vol.unlink(staging, &sname);
            }
            r.map(|_| ())
        })
        .boxed()
    }

    fn have_props<'a>(
        &'a self,
        _path: &'a DavPath,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        futures_util::future::ready(true).boxed()
    }

    fn patch_props<'a>(
        &'a self,
        path: &'a DavPath,
        patch: Vec<(bool, DavProp)>,
    ) -> FsFuture<'a, Vec<(StatusCode, DavProp)>> {
        let vol = self.vol.clone();
        let p = path.as_bytes().to_vec();
        blocking(move || {
            let a = resolve(&vol, &p)?;
            let mut out = Vec::new();
            let mut failed = false;
            // What each applied change replaced, to undo them all if a later one fails
            // (RFC 4918 §9.2: a PROPPATCH is applied entirely or not at all).
            let mut undo: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
            for (set, prop) in patch {
                let x = prop_xattr(&prop.namespace, &prop.name);
                if !failed {
                    let before = match vol.getxattr(a.ino, &x) {
                        Ok(v) => Some(v),
                        Err(Error::NoXattr) => None,
                        Err(e) => return Err(e),
                    };
                    undo.push((x.clone(), before));
                }
                let r = if failed {
                    Err(StatusCode::FAILED_DEPENDENCY)
                } else if set {
                    // The core bounds dead properties (nesting, size, count, total per
                    // resource, quota); RFC 4918 §9.2.1 answers 507 where one does not fit.
                    vol.setxattr(a.ino, &x, &encode_prop(&prop), XattrSet::Any)
                        .map_err(|e| match e {
                            Error::TooBig | Error::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
                            e => status(e.http_status()),
                        })
                } else {
                    // Removing a property that does not exist succeeds (RFC 4918 §14.23).
                    match vol.removexattr(a.ino, &x) {
                        Ok(()) | Err(Error::NoXattr) => Ok(()),
                        Err(e) => Err(status(e.http_status())),
                    }
                };
                let st = match r {
                    Ok(()) => StatusCode::OK,
                    Err(s) => {
                        failed = true;
                        s
                    }
                };
                let shown = DavProp { xml: None, ..prop };
                out.push((st, shown));
            }
            if failed {
                undo.pop(); // the one that failed changed nothing
                for (x, before) in undo.into_iter().rev() {
                    match before {
                        Some(v) => vol.setxattr(a.ino, &x, &v, XattrSet::Any)?,
                        None => match vol.removexattr(a.ino, &x) {
                            Ok(()) | Err(Error::NoXattr) => {}
                            Err(e) => return Err(e),
                        },
                    }
                }
                for (st, _) in out.iter_mut().filter(|(st, _)| *st == StatusCode::OK) {
                    *st = StatusCode::FAILED_DEPENDENCY;
                }
            }
            vol.sync_metadata()?;
            vol.changed(&[Changed::Inode(a.ino)]);
            Ok(out)
        })
        .boxed()
    }

    fn get_props<'a>(&'a self, path: &'a DavPath, do_content: bool) -> FsFuture<'a, Vec<DavProp>> {
        let vol = self.vol.clone();
        let p = path.as_bytes().to_vec();
        blocking(move || {
            let a = resolve(&vol, &p)?;
            let mut out = Vec::new();
            for x in vol.listxattr(a.ino)? {
                if !x.starts_with(PROP_PREFIX) {
                    continue;
                }
                if let Ok(v) = vol.getxattr(a.ino, &x) {
                    out.extend(decode_prop(&v, do_content));
                }
            }
            Ok(out)
        })
        .boxed()
    }

    fn get_prop<'a>(&'a self, path: &'a DavPath, prop: DavProp) -> FsFuture<'a, Vec<u8>> {
        let vol = self.vol.clone();
        let p = path.as_bytes().to_vec();
        async move {
            let v = blocking(move || {
                let a = resolve(&vol, &p)?;
                vol.getxattr(a.ino, &prop_xattr(&prop.namespace, &prop.name))
            })
            .await?;
            decode_prop(&v, true)
                .and_then(|p| p.xml)
                .ok_or(FsError::NotFound)
        }
        .boxed()
    }

    /// RFC 4331: used and total bytes as statfs reports them to the mount.
    fn get_quota(&self) -> FsFuture<'_, (u64, Option<u64>)> {
        let vol = self.vol.clone();
        blocking(move || {
            let s = vol.statfs()?;
            let bs = s.bsize as u64;
            let used = s.blocks.saturating_sub(s.bfree) * bs;
            Ok((used, Some(used + s.bavail * bs)))
        })
        .boxed()
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

// ------------------------------------------------------------------------ open files

struct Upload {
    staging: u64,
    sname: Vec<u8>,
    parent: u64,
    name: Vec<u8>,
    /// Content-Length (or range length) announced by the client.
    expected: Option<u64>,
    received: u64,
    pending: Vec<u8>,
    pending_off: u64,
    /// Renamed into place: nothing to clean up.
    done: bool,
}

/// An open file: a handle on the core for reads, or an upload into a staging file.
struct TgFile {
    vol: Arc<Volume>,
    ino: u64,
    fh: Option<u64>,
    pos: u64,
    upload: Option<Upload>,
}

impl std::fmt::Debug for TgFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TgFile")
            .field("ino", &self.ino)
            .field("pos", &self.pos)
            .field("upload", &self.upload.is_some())
            .finish()
    }
}

impl TgFile {
    fn upload(&mut self) -> FsResult<&mut Upload> {
        match self.upload.as_mut() {
            Some(u) if !u.done => Ok(u),
            _ => Err(FsError::Forbidden),
        }
    }

    fn queue(&mut self, data: &[u8]) -> FsResult<bool> {
        let pos = self.pos;
        let u = self.upload()?;
        if u.pending.is_empty() {
            u.pending_off = pos;
        }
        u.pending.extend_from_slice(data);
        u.received += data.len() as u64;
        self.pos += data.len() as u64;
        Ok(self.upload.as_ref().unwrap().pending.len() >= WRITE_BATCH)
    }

    async fn write_pending(&mut self) -> FsResult<()> {
        let Some(u) = self.upload.as_mut() else {
            return Ok(());
        };
        if u.pending.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut u.pending);
        let off = u.pending_off;
        let (vol, ino) = (self.vol.clone(), self.ino);
        blocking(move || vol.write(ino, off, &data).map(|_| ())).await
    }
}

impl DavFile for TgFile {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        async move {
            self.write_pending().await?;
            let (vol, ino) = (self.vol.clone(), self.ino);
            let m = blocking(move || meta_of(&vol, &vol.getattr(ino)?)).await?;
            Ok(Box::new(m) as Box<dyn DavMetaData>)
        }
        .boxed()
    }

    fn write_buf(&mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async move {
            while buf.has_remaining() {
                let n = buf.chunk().len();
                let full = self.queue(buf.chunk())?;
                buf.advance(n);
                if full {
                    self.write_pending().await?;
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn write_bytes(&mut self, buf: Bytes) -> FsFuture<'_, ()> {
        async move {
            if self.queue(&buf)? {
                self.write_pending().await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn read_bytes(&mut self, count: usize) -> FsFuture<'_, Bytes> {
        async move {
            let (vol, ino, pos) = (self.vol.clone(), self.ino, self.pos);
            let n = count.min(READ_BATCH) as u32;
            let data = blocking(move || vol.read(ino, pos, n)).await?;
            self.pos += data.len() as u64;
            Ok(Bytes::from_owner(data))
        }
        .boxed()
    }

    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move {
            self.write_pending().await?;
            let (vol, ino) = (self.vol.clone(), self.ino);
            let new = match pos {
                SeekFrom::Start(n) => Some(n),
                SeekFrom::Current(d) => self.pos.checked_add_signed(d),
                SeekFrom::End(d) => {
                    let size = blocking(move || Ok(vol.getattr(ino)?.inode.size)).await?;
                    size.checked_add_signed(d)
                }
            };
            self.pos = new.ok_or(FsError::GeneralFailure)?;
            Ok(self.pos)
        }
        .boxed()
    }

    /// For an upload: the end of the body. Checks the length, then commits (see the module
    /// docs); dav-server answers 2xx only after this returns Ok.
    fn flush(&mut self) -> FsFuture<'_, ()> {
        async move {
            if self.upload.as_ref().is_none_or(|u| u.done) {
                return Ok(());
            }
            self.write_pending().await?;
            let u = self.upload.as_ref().unwrap();
            if let Some(exp) = u.expected {
                if u.received != exp {
                    tracing::warn!(
                        "webdav: PUT body of {} bytes where {exp} were announced: discarded",
                        u.received
                    );
                    return Err(FsError::GeneralFailure);
                }
            }
            let (vol, ino, fh) = (self.vol.clone(), self.ino, self.fh.take());
            let (staging, sname, parent, name) =
                (u.staging, u.sname.clone(), u.parent, u.name.clone());
            blocking(move || {
                if let Some(fh) = fh {
                    vol.release(fh)?;
                }
                commit_staged(&vol, staging, &sname, ino, parent, &name)
            })
            .await?;
            self.upload.as_mut().unwrap().done = true;
            Ok(())
        }
        .boxed()
    }
}

impl Drop for TgFile {
    /// Closes the handle; an upload that was not committed loses its staging file (unlinked
    /// first, so the release deletes it without committing its data).
    fn drop(&mut self) {
        let fh = self.fh.take();
        let discard = self
            .upload
            .as_ref()
            .filter(|u| !u.done)
            .map(|u| (u.staging, u.sname.clone()));
        if fh.is_none() && discard.is_none() {
            return;
        }
        let vol = self.vol.clone();
        let work = move || {
            if let Some((dir, name)) = discard {
                match vol.unlink(dir, &name) {
                    Ok(()) => tracing::info!("webdav: unfinished upload discarded"),
                    Err(Error::NotFound) => {}
                    Err(e) => tracing::warn!("webdav: discarding an unfinished upload: {e}"),
                }
            }
            if let Some(fh) = fh {
                if let Err(e) = vol.release(fh) {
                    tracing::warn!("webdav: release: {e}");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(work);
            }
            Err(_) => work(),
        }
    }
}

// ------------------------------------------------------------------------ locks

/// WebDAV locks (RFC 4918 §6–7) kept in the volume's metadata store, so they survive a
/// restart: one small record per lock, written durably before the client gets its answer.
/// Every lock expires ([`LOCK_DEFAULT_TIMEOUT`], at most [`LOCK_MAX_TIMEOUT`]); expired locks
/// are dropped whenever the table is consulted. [`MAX_LOCKS`] and [`MAX_LOCKS_PER_USER`] bound
/// the table.
#[derive(Clone)]
struct DurableLs {
    vol: Arc<Volume>,
    locks: Arc<parking_lot::Mutex<Vec<DavLock>>>,
    persist: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for DurableLs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DurableLs({} locks)", self.locks.lock().len())
    }
}

fn segs_of(p: &DavPath) -> Vec<&[u8]> {
    p.as_bytes()
        .split(|&c| c == b'/')
        .filter(|s| !s.is_empty())
        .collect()
}

/// Does `lock` apply to `path` (its own resource, or a member of a depth-infinity lock)?
fn covers(lock: &DavLock, path: &[&[u8]]) -> bool {
    let l = segs_of(&lock.path);
    path.starts_with(&l) && (l.len() == path.len() || lock.deep)
}

/// Is `lock` on `path` or below it?
fn below(lock: &DavLock, path: &[&[u8]]) -> bool {
    segs_of(&lock.path).starts_with(path)
}

fn held(
    lock: &DavLock,
    principal: Option<&str>,
    ignore_principal: bool,
    tokens: &[String],
) -> bool {
    tokens.iter().any(|t| t == &lock.token)
        && (ignore_principal || principal == lock.principal.as_deref())
}

fn new_token() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn opt_hex(v: Option<&[u8]>) -> String {
    v.map(hex::encode).unwrap_or_else(|| "-".into())
}

/// One lock per line, space-separated fields (hex for anything free-form, `-` for none):
/// `v1 token path principal owner-xml timeout-at timeout shared deep`.
#[doc(hidden)]
pub fn encode_locks(locks: &[DavLock]) -> Vec<u8> {
    let mut out = String::new();
    for l in locks {
        let owner = l.owner.as_ref().and_then(|o| {
            let mut v = Vec::new();
            o.write(&mut v).ok().map(|_| v)
        });
        out.push_str(&format!(
            "v1 {} {} {} {} {} {} {} {}\n",
            hex::encode(&l.token),
            hex::encode(l.path.as_url_string()),
            opt_hex(l.principal.as_deref().map(str::as_bytes)),
            opt_hex(owner.as_deref()),
            l.timeout_at
                .map(|t| unix_secs(t).to_string())
                .unwrap_or("-".into()),
            l.timeout
                .map(|t| t.as_secs().to_string())
                .unwrap_or("-".into()),
            l.shared as u8,
            l.deep as u8,
        ));
    }
    out.into_bytes()
}

/// The inverse of [`encode_locks`]; unreadable records are dropped with a warning.
#[doc(hidden)]
pub fn decode_locks(b: &[u8]) -> Vec<DavLock> {
    let text = String::from_utf8_lossy(b);
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let parse = || -> Option<DavLock> {
            if f.len() != 9 || f[0] != "v1" {
                return None;
            }
            let s = |x: &str| String::from_utf8(hex::decode(x).ok()?).ok();
            let opt = |x: &str| if x == "-" { Some(None) } else { s(x).map(Some) };
            let num = |x: &str| {
                if x == "-" {
                    Some(None)
                } else {
                    x.parse::<u64>().ok().map(Some)
                }
            };
            let owner = match opt(f[4])? {
                // Bounded first: xmltree parses (and drops) recursively.
                Some(xml) if xmldepth::too_deep(xml.as_bytes()) => return None,
                Some(xml) => Some(Box::new(xmltree::Element::parse(xml.as_bytes()).ok()?)),
                None => None,
            };
            Some(DavLock {
                token: s(f[1])?,
                path: Box::new(DavPath::new(&s(f[2])?).ok()?),
                principal: opt(f[3])?,
                owner,
                timeout_at: num(f[5])?.map(|t| UNIX_EPOCH + Duration::from_secs(t)),
                timeout: num(f[6])?.map(Duration::from_secs),
                shared: f[7] == "1",
                deep: f[8] == "1",
            })
        };
        match parse() {
            Some(l) => out.push(l),
            None => tracing::warn!("webdav: unreadable lock record dropped: {line}"),
        }
    }
    out
}

impl DurableLs {
    fn load(vol: Arc<Volume>) -> Result<DurableLs> {
        let locks = load_locks(&vol)?;
        if !locks.is_empty() {
            tracing::info!("webdav: {} lock(s) restored", locks.len());
        }
        Ok(DurableLs {
            vol,
            locks: Arc::new(parking_lot::Mutex::new(locks)),
            persist: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The table with expired locks removed (their records are deleted in the background:
    /// one left behind is dropped at the next start anyway).
    fn table(&self) -> parking_lot::MutexGuard<'_, Vec<DavLock>> {
        let mut t = self.locks.lock();
        let now = SystemTime::now();
        let expired: Vec<String> = t
            .iter()
            .filter(|l| l.timeout_at.is_some_and(|at| at <= now))
            .map(|l| l.token.clone())
            .collect();
        if !expired.is_empty() {
            t.retain(|l| l.timeout_at.is_none_or(|at| at > now));
            let vol = self.vol.clone();
            let work = move || {
                for tok in expired {
                    if let Err(e) = vol.set_frontend_state(&lock_key(&tok), None) {
                        tracing::warn!("webdav: removing an expired lock: {e}");
                    }
                }
            };
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn_blocking(work);
            }
        }
        t
    }

    /// Makes the stored record of `token` match the table: written if the lock is in it,
    /// removed if not. Serialised, so the last change of a lock is the one stored.
    async fn save(&self, token: &str) -> std::result::Result<(), ()> {
        let _g = self.persist.lock().await;
        let record = self
            .table()
            .iter()
            .find(|l| l.token == token)
            .map(|l| encode_locks(std::slice::from_ref(l)));
        let (vol, key) = (self.vol.clone(), lock_key(token));
        blocking(move || vol.set_frontend_state(&key, record.as_deref()))
            .await
            .map_err(|_| ())
    }
}

/// The frontend-state name of one lock's record.
fn lock_key(token: &str) -> String {
    format!("{LOCK_PREFIX}{token}")
}

/// The timeout a lock gets: [`LOCK_DEFAULT_TIMEOUT`] when the client asked for none or for
/// `Infinite` (dav-server passes both as `None`), never more than [`LOCK_MAX_TIMEOUT`].
fn lock_timeout(asked: Option<Duration>) -> Duration {
    asked.unwrap_or(LOCK_DEFAULT_TIMEOUT).min(LOCK_MAX_TIMEOUT)
}

/// Every stored lock that has not expired. Reads the one-record table of earlier versions
/// too, rewrites it as one record per lock and removes it; removes expired records.
fn load_locks(vol: &Volume) -> Result<Vec<DavLock>> {
    let now = SystemTime::now();
    let live = |l: &DavLock| l.timeout_at.is_none_or(|at| at > now);
    let mut out = Vec::new();
    for (name, v) in vol.frontend_states(LOCK_PREFIX)? {
        let ls = decode_locks(&v);
        if ls.iter().all(|l| !live(l)) {
            vol.set_frontend_state(&name, None)?;
        }
        out.extend(ls.into_iter().filter(live));
    }
    if let Some(old) = vol.frontend_state(LOCK_STATE)? {
        let ls: Vec<DavLock> = decode_locks(&old).into_iter().filter(live).collect();
        for l in &ls {
            vol.set_frontend_state(
                &lock_key(&l.token),
                Some(&encode_locks(std::slice::from_ref(l))),
            )?;
        }
        vol.set_frontend_state(LOCK_STATE, None)?;
        tracing::info!(
            "webdav: lock table of an earlier version converted ({} lock(s))",
            ls.len()
        );
        out.extend(ls);
    }
    // A lock stored without a timeout (earlier versions allowed it) gets the maximum from now.
    for l in out.iter_mut().filter(|l| l.timeout_at.is_none()) {
        l.timeout = Some(LOCK_MAX_TIMEOUT);
        l.timeout_at = Some(now + LOCK_MAX_TIMEOUT);
    }
    Ok(out)
}

/// A stored WebDAV lock, as `tiergate locks list` shows it.
#[derive(Debug, Clone)]
pub struct LockInfo {
    pub token: String,
    /// The locked path, percent-encoded as in the request.
    pub path: String,
    /// The user who took it (none on a share without authentication).
    pub principal: Option<String>,
    /// When it expires (Unix seconds).
    pub expires_unix: Option<u64>,
    pub shared: bool,
    /// Depth infinity: it covers everything below a collection too.
    pub deep: bool,
}

/// The locks stored in `vol` (the daemon must be stopped: it keeps the table in memory and
/// reads it at start).
pub fn list_locks(vol: &Volume) -> Result<Vec<LockInfo>> {
    Ok(load_locks(vol)?
        .into_iter()
        .map(|l| LockInfo {
            path: l.path.as_url_string(),
            token: l.token,
            principal: l.principal,
            expires_unix: l.timeout_at.map(unix_secs),
            shared: l.shared,
            deep: l.deep,
        })
        .collect())
}

/// Removes stored locks: all of them (`which` = None), the one with token `which`, or those
/// on the path `which` (percent-encoded or not) or below it. Returns how many were removed.
pub fn clear_locks(vol: &Volume, which: Option<&str>) -> Result<usize> {
    let want = which.map(|w| {
        let p = DavPath::new(w).ok();
        (
            w.to_string(),
            p.map(|p| segs_of(&p).iter().map(|s| s.to_vec()).collect::<Vec<_>>()),
        )
    });
    let mut n = 0;
    for l in load_locks(vol)? {
        let hit = match &want {
            None => true,
            Some((w, segs)) => {
                l.token == *w
                    || segs.as_ref().is_some_and(|s| {
                        let s: Vec<&[u8]> = s.iter().map(|x| x.as_slice()).collect();
                        below(&l, &s)
                    })
            }
        };
        if hit {
            vol.set_frontend_state(&lock_key(&l.token), None)?;
            n += 1;
        }
    }
    Ok(n)
}

impl DavLockSystem for DurableLs {
    fn lock(
        &self,
        path: &DavPath,
        principal: Option<&str>,
        owner: Option<&xmltree::Element>,
        timeout: Option<Duration>,
        shared: bool,
        deep: bool,
    ) -> LsFuture<'_, std::result::Result<DavLock, DavLock>> {
        let segs = segs_of(path);
        let timeout = lock_timeout(timeout);
        let lock = DavLock {
            token: new_token(),
            path: Box::new(path.clone()),
            principal: principal.map(str::to_string),
            owner: owner.map(|o| Box::new(o.clone())),
            timeout_at: Some(SystemTime::now() + timeout),
            timeout: Some(timeout),
            shared,
            deep,
        };
        {
            let mut t = self.table();
            let conflict = t
                .iter()
                .find(|l| (covers(l, &segs) || (deep && below(l, &segs))) && !(l.shared && shared));
            if let Some(c) = conflict {
                return futures_util::future::ready(Err(c.clone())).boxed();
            }
            // Limits: refused like a conflict (423 Locked), which is all dav-server can answer.
            let mine = t
                .iter()
                .filter(|l| l.principal.as_deref() == principal)
                .count();
            if t.len() >= MAX_LOCKS || mine >= MAX_LOCKS_PER_USER {
                tracing::warn!(
                    user = principal.unwrap_or("-"),
                    "webdav: LOCK refused: {} locks held ({mine} by this user; limits {MAX_LOCKS} \
                     and {MAX_LOCKS_PER_USER} per user)",
                    t.len()
                );
                return futures_util::future::ready(Err(lock)).boxed();
            }
            t.push(lock.clone());
        }
        async move {
            if self.save(&lock.token).await.is_err() {
                // Not durable: take it back and refuse (the conflict answer is the only
                // failure dav-server can send here; the log says why).
                self.locks.lock().retain(|l| l.token != lock.token);
                let _ = self.save(&lock.token).await;
                tracing::error!("webdav: lock could not be saved; LOCK refused");
                return Err(lock);
            }
            Ok(lock)
        }
        .boxed()
    }

    fn unlock(&self, path: &DavPath, token: &str) -> LsFuture<'_, std::result::Result<(), ()>> {
        let segs = segs_of(path);
        let removed = {
            let mut t = self.table();
            let before = t.len();
            t.retain(|l| !(l.token == token && covers(l, &segs)));
            t.len() != before
        };
        let token = token.to_string();
        async move {
            if !removed {
                return Err(());
            }
            self.save(&token).await
        }
        .boxed()
    }

    fn refresh(
        &self,
        path: &DavPath,
        token: &str,
        timeout: Option<Duration>,
    ) -> LsFuture<'_, std::result::Result<DavLock, ()>> {
        let segs = segs_of(path);
        let timeout = lock_timeout(timeout);
        let found = {
            let mut t = self.table();
            t.iter_mut()
                .find(|l| l.token == token && covers(l, &segs))
                .map(|l| {
                    l.timeout = Some(timeout);
                    l.timeout_at = Some(SystemTime::now() + timeout);
                    l.clone()
                })
        };
        async move {
            let l = found.ok_or(())?;
            self.save(&l.token).await?;
            Ok(l)
        }
        .boxed()
    }

    fn check(
        &self,
        path: &DavPath,
        principal: Option<&str>,
        ignore_principal: bool,
        deep: bool,
        tokens: &[String],
    ) -> LsFuture<'_, std::result::Result<(), DavLock>> {
        let segs = segs_of(path);
        let t = self.table();
        let mut holds = false;
        let mut first_shared = None;
        for l in t.iter().filter(|l| covers(l, &segs)) {
            if held(l, principal, ignore_principal, tokens) {
                holds = true;
            } else if !l.shared {
                return futures_util::future::ready(Err(l.clone())).boxed();
            } else {
                first_shared.get_or_insert(l);
            }
        }
        let mut r = match first_shared {
            Some(l) if !holds => Err(l.clone()),
            _ => Ok(()),
        };
        if r.is_ok() && deep {
            if let Some(l) = t
                .iter()
                .find(|l| below(l, &segs) && !held(l, principal, ignore_principal, tokens))
            {
                r = Err(l.clone());
            }
        }
        futures_util::future::ready(r).boxed()
    }

    fn discover(&self, path: &DavPath) -> LsFuture<'_, Vec<DavLock>> {
        let segs = segs_of(path);
        let found = self
            .table()
            .iter()
            .filter(|l| covers(l, &segs))
            .cloned()
            .collect();
        futures_util::future::ready(found).boxed()
    }

    fn delete(&self, path: &DavPath) -> LsFuture<'_, std::result::Result<(), ()>> {
        let segs = segs_of(path);
        let removed: Vec<String> = {
            let mut t = self.table();
            let gone = t
                .iter()
                .filter(|l| below(l, &segs))
                .map(|l| l.token.clone())
                .collect();
            t.retain(|l| !below(l, &segs));
            gone
        };
        async move {
            for tok in removed {
                self.save(&tok).await?;
            }
            Ok(())
        }
        .boxed()
    }
}

// ------------------------------------------------------------------------ HTTP layer

/// Checks a raw (percent-encoded) request path before dav-server sees it: `..` segments
/// (also encoded), NUL and encoded `/` in names are refused, and so are names longer than
/// the core can store. The error's HTTP status is the answer.
pub fn check_uri_path(raw: &str) -> Result<()> {
    for seg in raw.split('/') {
        let name = percent_decode(seg)
            .ok_or_else(|| Error::Invalid(format!("bad percent-encoding in {seg:?}")))?;
        if name == b".." {
            return Err(Error::Invalid("'..' in a path is refused".into()));
        }
        if name.contains(&0) {
            return Err(Error::Invalid("a name cannot contain NUL".into()));
        }
        if name.contains(&b'/') {
            return Err(Error::Invalid("a name cannot contain '/' (%2F)".into()));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(Error::NameTooLong);
        }
    }
    Ok(())
}

/// True if an `If` header (RFC 4918 §10.4) has a `<...>` or `[...]` token that runs to the end
/// of the value. dav-server 0.11's tokenizer (`davheaders.rs`, `scan_until`) indexes past the
/// end on those and panics, so [`Share`] refuses them first (found by `fuzz/`, target
/// `webdav_request`, with `If: [;`). Follows that tokenizer: whitespace, `(`, `)`, words (and
/// `Not`), and `<`/`[` tokens up to the closing character, quotes toggled inside; a token it
/// would refuse without panicking (whitespace inside) is left to it.
#[doc(hidden)]
pub fn if_header_unterminated(v: &[u8]) -> bool {
    const WS: &[u8] = b" \t\r\n";
    let mut b = v;
    loop {
        while b.first().is_some_and(|c| WS.contains(c)) {
            b = &b[1..];
        }
        let Some(&first) = b.first() else {
            return false;
        };
        match first {
            b'(' | b')' => b = &b[1..],
            b'<' | b'[' => {
                let close = if first == b'<' { b'>' } else { b']' };
                let (mut i, mut quote) = (1, false);
                loop {
                    let Some(&c) = b.get(i) else {
                        return true;
                    };
                    if !quote && c == close {
                        break;
                    }
                    if WS.contains(&c) {
                        return false;
                    }
                    if c == b'"' {
                        quote = !quote;
                    }
                    i += 1;
                }
                b = &b[i + 1..];
            }
            _ => {
                let n = b
                    .iter()
                    .position(|&c| WS.contains(&c) || b"<>()[]".contains(&c) || c < 32)
                    .unwrap_or(b.len());
                if n == 0 {
                    return false;
                }
                b = &b[n..];
            }
        }
    }
}

/// True if an entity tag in an `If-Match`, `If-None-Match` or `If-Range` value is a lone `"`
/// (or `W/"`): dav-server 0.11's `ETag::from_str` slices `s[1..0]` on it and panics, so
/// [`Share`] refuses it first (found by `fuzz/`, target `webdav_request`, with
/// `If-None-Match: "`).
#[doc(hidden)]
pub fn etag_lone_quote(v: &[u8]) -> bool {
    v.split(|&c| c == b',').any(|item| {
        let t = item.trim_ascii();
        t.strip_prefix(b"W/").unwrap_or(t) == b"\""
    })
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = b.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The path of a Destination header (absolute URL or absolute path), without its query.
#[doc(hidden)]
pub fn destination_path(v: &str) -> &str {
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .map(|r| r.find('/').map(|i| &r[i..]).unwrap_or("/"))
        .unwrap_or(v);
    rest.split(['?', '#']).next().unwrap_or(rest)
}

/// Largest XML body (PROPFIND, PROPPATCH, LOCK) read: dav-server's own limit for them.
const MAX_XML_BODY: usize = 64 << 10;
/// Most ranges served from one Range header; a header with more is ignored (a 200 with the
/// whole body, RFC 9110 §14.2). Real clients ask for one; 16 leaves room for PDF viewers.
pub const MAX_RANGES: usize = 16;

/// Reads the body of a request whose body dav-server parses as XML, up to [`MAX_XML_BODY`],
/// and refuses it (400) if it nests deeper than [`xmldepth::MAX_DEPTH`]: xml-rs and xmltree
/// recurse per level, and ~2,000 levels (14 KB) overflowed the thread's stack and aborted the
/// daemon. The answer is the bytes to hand on, or the response to send instead.
async fn read_xml_body<B>(body: B) -> std::result::Result<Bytes, Response<Body>>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    use http_body_util::BodyExt;
    let b = match http_body_util::Limited::new(body, MAX_XML_BODY)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(simple(
                413,
                &format!("XML body larger than {MAX_XML_BODY} bytes"),
            ))
        }
        Err(e) => return Err(simple(400, &format!("reading the request body: {e}"))),
    };
    if xmldepth::too_deep(&b) {
        return Err(simple(
            400,
            &format!("XML body nested deeper than {} levels", xmldepth::MAX_DEPTH),
        ));
    }
    Ok(b)
}

/// What to do with a `Range` header of a GET or HEAD on a file of `len` bytes, before
/// dav-server sees it. dav-server 0.11 serves every range as asked (`bytes=0-,0-,...`: 3,000
/// copies of the file from a 9 KB header) and computes `end - start + 1` unchecked
/// (`bytes=0-18446744073709551615` wraps to a broken 206). Here: more than [`MAX_RANGES`]
/// ranges, or any malformed one, drops the header (200, the whole body); otherwise the
/// satisfiable ranges are clamped to the file, sorted and coalesced where they overlap or
/// touch, and handed on in that canonical form; none satisfiable gives a header dav-server
/// answers with 416. `None`: drop the header; `Some(v)`: replace it with `v`.
#[doc(hidden)]
pub fn normalise_range(v: &[u8], len: u64) -> Option<String> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let (unit, specs) = v.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let specs: Vec<&str> = specs.split(',').map(str::trim).collect();
    if specs.len() > MAX_RANGES {
        return None;
    }
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for spec in specs {
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        let r = if a.is_empty() {
            // Suffix: the last `n` bytes.
            let n = num(b)?;
            (n > 0 && len > 0).then(|| (len - n.min(len), len - 1))
        } else {
            let start = num(a)?;
            let end = if b.is_empty() { None } else { Some(num(b)?) };
            if end.is_some_and(|e| e < start) {
                return None;
            }
            (start < len).then(|| (start, end.unwrap_or(u64::MAX).min(len - 1)))
        };
        ranges.extend(r);
    }
    if ranges.is_empty() {
        return Some(format!("bytes={len}-"));
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let parts: Vec<String> = merged.iter().map(|(s, e)| format!("{s}-{e}")).collect();
    Some(format!("bytes={}", parts.join(",")))
}

/// Content types a browser runs or renders as a document of the share's origin.
fn active_content(ct: &str) -> bool {
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ["html", "xml", "javascript", "ecmascript", "svg"]
        .iter()
        .any(|w| ct.contains(w))
}

/// Headers on every answer of the share, so that what users uploaded cannot act in the
/// browser of someone viewing the share (stored XSS from its origin, credentials in hand):
/// `nosniff`; for files a `sandbox` CSP that runs no script and loads nothing, and
/// `Content-Disposition: attachment` for active types (HTML, SVG, XML, JavaScript); for the
/// directory listing (our own HTML) a CSP that allows only its inline style.
fn harden(resp: &mut Response<Body>, listing: bool) {
    use http::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
    let h = resp.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    let ct = h
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if listing && ct.starts_with("text/html") {
        h.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
        );
        return;
    }
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox; frame-ancestors 'none'"),
    );
    if active_content(&ct) {
        h.insert(CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    }
}

fn simple(code: u16, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("{text}\n")));
    *r.status_mut() = status(code);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The answer to a request the authentication gate refused (401, 429, 503, 400).
fn auth_refused(v: &auth::Verdict) -> Response<Body> {
    let mut r = simple(v.status(), v.message());
    if let Some(s) = v.retry_after_secs() {
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(s));
    }
    if v.status() == 401 {
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"tiergate\", charset=\"UTF-8\""),
        );
    }
    r
}

/// The share: dav-server over the volume, with authentication and TLS in front.
/// WebDAV requests served since the daemon started (for the status page).
pub static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct Share {
    dav: DavHandler,
    users: Option<Arc<Gate>>,
    tls: Option<TlsAcceptor>,
    /// For the checks in [`Share::route`] that look at the volume (ranges, LOCK).
    vol: Arc<Volume>,
    ls: DurableLs,
}

impl Share {
    /// Prepares the share: staging directory (emptied), lock table, users, TLS. Refuses to
    /// serve without users when authentication is required.
    pub fn new(vol: Arc<Volume>, cfg: &WebdavConfig) -> Result<Share> {
        let users = if cfg.auth_required() {
            let path = cfg.users_path();
            let u = Users::load(&path)?;
            if u.count() == 0 {
                return Err(Error::Invalid(format!(
                    "the WebDAV share on {} requires authentication, but the users file {} \
                     has no users: add one with `tiergate user add NAME --config FILE`",
                    cfg.listen,
                    path.display()
                )));
            }
            Some(Arc::new(Gate::new(u, FAILED_AUTH_DELAY)?))
        } else {
            None
        };
        let tls = cfg.tls()?;
        let fs = TgFs::new(vol.clone())?;
        let ls = DurableLs::load(vol.clone())?;
        let dav = DavHandler::builder()
            .filesystem(Box::new(fs))
            .locksystem(Box::new(ls.clone()))
            .read_buf_size(READ_BATCH)
            .autoindex(true)
            .build_handler();
        Ok(Share {
            dav,
            users,
            tls,
            vol,
            ls,
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The TLS acceptor the share is served through (None: plain HTTP).
    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.clone()
    }

    /// The share as a router for [`serve::serve`](crate::serve::serve): every request goes
    /// through [`Share::route`].
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(
            move |axum::Extension(peer): axum::Extension<crate::serve::Peer>,
                  req: Request<axum::body::Body>| {
                let me = self.clone();
                async move { me.handle(req, peer.0).await.map(axum::body::Body::new) }
            },
        )
    }

    async fn handle(&self, req: Request<axum::body::Body>, peer: SocketAddr) -> Response<Body> {
        REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.route(req, peer).await
    }

    /// One request through the share without a connection: authentication, the path checks
    /// and dav-server, as for a request that arrived from `127.0.0.1`. For the fuzz target
    /// `fuzz/fuzz_targets/webdav_request.rs`, which has no socket.
    #[doc(hidden)]
    pub async fn serve_request<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body,
        B::Data: Buf + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        self.route(req, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    async fn route<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body,
        B::Data: Buf + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let mut principal = None;
        if let Some(gate) = &self.users {
            let auth = req.headers().get(http::header::AUTHORIZATION);
            match gate
                .authenticate(auth.map(|v| v.as_bytes()), peer.ip())
                .await
            {
                auth::Verdict::Allowed(name) => principal = Some(name),
                refused => return auth_refused(&refused),
            }
        }
        let mut paths = vec![req.uri().path().to_string()];
        if let Some(d) = req
            .headers()
            .get("destination")
            .and_then(|v| v.to_str().ok())
        {
            paths.push(destination_path(d).to_string());
        }
        for p in &paths {
            if let Err(e) = check_uri_path(p) {
                return simple(e.http_status(), &e.to_string());
            }
        }
        if req
            .headers()
            .get("if")
            .is_some_and(|v| if_header_unterminated(v.as_bytes()))
        {
            return simple(400, "malformed If header: a <...> or [...] is not closed");
        }
        for h in ["if-match", "if-none-match", "if-range"] {
            if req
                .headers()
                .get_all(h)
                .iter()
                .any(|v| etag_lone_quote(v.as_bytes()))
            {
                return simple(400, &format!("malformed {h} header: a lone '\"'"));
            }
        }
        // PROPFIND Depth: infinity over a big tree is a denial of service (RFC 4918 §9.1 lets
        // a server refuse it with this precondition).
        let infinite = req
            .headers()
            .get("depth")
            .is_some_and(|d| d.as_bytes().eq_ignore_ascii_case(b"infinity"));
        if req.method().as_str() == "PROPFIND" && infinite {
            let mut r = Response::new(Body::from(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
                 <D:error xmlns:D=\"DAV:\"><D:propfind-finite-depth/></D:error>\n",
            ));
            *r.status_mut() = StatusCode::FORBIDDEN;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/xml; charset=utf-8"),
            );
            return r;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        if matches!(method.as_str(), "PROPFIND" | "PROPPATCH" | "LOCK") {
            let (parts, body) = req.into_parts();
            let body = match read_xml_body(body).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let req = Request::from_parts(parts, http_body_util::Full::new(body));
            let resp = self.dav_handle(principal, req).await;
            if method.as_str() == "LOCK" && resp.status() == StatusCode::CREATED {
                return self.lock_created(resp, &path).await;
            }
            return resp;
        }
        let get = method == http::Method::GET || method == http::Method::HEAD;
        let mut req = req;
        if get && req.headers().contains_key(http::header::RANGE) {
            self.normalise_range_header(&mut req, &path).await;
        }
        let mut resp = self.dav_handle(principal, req).await;
        if get {
            harden(&mut resp, path.ends_with('/'));
        }
        resp
    }

    async fn dav_handle<B>(&self, principal: Option<String>, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body,
        B::Data: Buf + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        match principal {
            Some(p) => {
                self.dav
                    .handle_with(DavConfig::new().principal(p), req)
                    .await
            }
            None => self.dav.handle(req).await,
        }
    }

    /// Rewrites (or drops) the Range header of a GET or HEAD on a file ([`normalise_range`]).
    async fn normalise_range_header<B>(&self, req: &mut Request<B>, path: &str) {
        let Some(p) = percent_decode(path) else {
            return;
        };
        let vol = self.vol.clone();
        let len = tokio::task::spawn_blocking(move || {
            vol.resolve(&p)
                .ok()
                .filter(|a| a.inode.kind == FileKind::File)
                .map(|a| a.inode.size)
        })
        .await
        .ok()
        .flatten();
        let Some(len) = len else {
            return; // not a file: dav-server answers (404, a listing) without ranges
        };
        let h = req.headers_mut();
        let fixed = h
            .get(http::header::RANGE)
            .and_then(|v| normalise_range(v.as_bytes(), len));
        match fixed.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
            Some(v) => {
                h.insert(http::header::RANGE, v);
            }
            None => {
                h.remove(http::header::RANGE);
            }
        }
    }

    /// After a LOCK that dav-server answered 201 (an unmapped URL): makes the empty resource
    /// RFC 4918 §7.3 says it creates. (dav-server opens the file for writing and drops it,
    /// which for us is an upload never finished, so nothing would be left.) If that fails,
    /// the lock is released and the error is the answer.
    async fn lock_created(&self, resp: Response<Body>, path: &str) -> Response<Body> {
        let vol = self.vol.clone();
        let p = percent_decode(path).unwrap_or_default();
        let made = tokio::task::spawn_blocking(move || -> Result<()> {
            let (parent, name) = resolve_parent(&vol, &p)?;
            if lookup_opt(&vol, parent, &name)?.is_some() {
                return Ok(());
            }
            let (a, fh) = vol.create_file(parent, &name, 0o644, owner(&vol)?)?;
            vol.release(fh)?;
            vol.sync_metadata()?;
            entry_changed(&vol, parent, &name, Some(a.ino));
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(Error::Invalid(format!("lock task: {e}"))));
        match made {
            Ok(()) => resp,
            Err(e) => {
                let token = resp
                    .headers()
                    .get("lock-token")
                    .and_then(|v| v.to_str().ok())
                    .map(|t| t.trim_matches(['<', '>']).to_string());
                if let (Some(t), Ok(dp)) = (token, DavPath::new(path)) {
                    let _ = self.ls.unlock(&dp, &t).await;
                }
                tracing::warn!("webdav: LOCK of unmapped {path}: creating it failed: {e}");
                simple(e.http_status(), &e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_paths_refuse_traversal_nul_and_long_names() {
        assert!(check_uri_path("/a/b%20c/d").is_ok());
        assert!(check_uri_path("/caf%C3%A9/").is_ok());
        for bad in ["/a/../b", "/a/%2e%2E/b", "/a%00b", "/a%2fb", "/%zz"] {
            assert_eq!(check_uri_path(bad).unwrap_err().http_status(), 400, "{bad}");
        }
        let long = format!("/{}", "x".repeat(256));
        assert_eq!(check_uri_path(&long).unwrap_err().http_status(), 414);
        assert!(check_uri_path(&format!("/{}", "x".repeat(255))).is_ok());
        assert_eq!(destination_path("http://h:1/a/b?x"), "/a/b");
        assert_eq!(destination_path("/a%20b"), "/a%20b");
    }

    #[test]
    fn unterminated_if_headers_are_caught_before_dav_server_sees_them() {
        // fuzz/artifacts: `If: [;` made dav-server index past the end of the value.
        for bad in [
            "[;",
            "<",
            "<urn:uuid:x",
            "(<urn:a> [\"e\"",
            "Not <a",
            "(Not[\"x>",
        ] {
            assert!(if_header_unterminated(bad.as_bytes()), "{bad}");
        }
        for ok in [
            "",
            "(<urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2>)",
            "<http://h/a> ([\"etag\"] Not <urn:x>)",
            "([\"a]b\"])",
            "(<a b>)",
            "word",
        ] {
            assert!(!if_header_unterminated(ok.as_bytes()), "{ok}");
        }
    }

    #[test]
    fn lone_quote_etags_are_caught_before_dav_server_sees_them() {
        // fuzz/artifacts: `If-None-Match: "` made dav-server slice s[1..0].
        for bad in ["\"", "W/\"", "\"a\", \"", " W/\" , \"b\""] {
            assert!(etag_lone_quote(bad.as_bytes()), "{bad}");
        }
        for ok in ["\"\"", "*", "\"a\", W/\"b\"", "W/\"\"", ""] {
            assert!(!etag_lone_quote(ok.as_bytes()), "{ok}");
        }
    }

    #[test]
    fn ranges_are_bounded_clamped_and_coalesced() {
        let n = |v: &str, len| normalise_range(v.as_bytes(), len);
        assert_eq!(
            n("bytes=0-18446744073709551615", 100).as_deref(),
            Some("bytes=0-99")
        );
        assert_eq!(
            n("bytes=10-19, 0-14,90-", 100).as_deref(),
            Some("bytes=0-19,90-99")
        );
        assert_eq!(n("bytes=-10,95-", 100).as_deref(), Some("bytes=90-99"));
        assert_eq!(n("bytes=0-9,10-19", 100).as_deref(), Some("bytes=0-19"));
        assert_eq!(n("bytes=-500", 100).as_deref(), Some("bytes=0-99"));
        assert_eq!(n("bytes=200-", 100).as_deref(), Some("bytes=100-"));
        let many = format!("bytes={}", vec!["0-"; 17].join(","));
        assert_eq!(n(&many, 100), None);
        let sixteen = format!("bytes={}", vec!["0-"; 16].join(","));
        assert_eq!(n(&sixteen, 100).as_deref(), Some("bytes=0-99"));
        for bad in [
            "bytes=5-1",
            "bytes=a-",
            "items=0-1",
            "bytes=",
            "bytes=1",
            "bytes=-",
        ] {
            assert_eq!(n(bad, 100), None, "{bad}");
        }
    }

    #[test]
    fn deep_or_malformed_dead_properties_are_hidden() {
        let prop = |xml: Vec<u8>| DavProp {
            name: "n".into(),
            prefix: Some("Z".into()),
            namespace: Some("http://example.com/z".into()),
            xml: Some(xml),
        };
        let deep = |n: usize| {
            let mut x = "<Z:n xmlns:Z=\"http://example.com/z\">".to_string();
            x.push_str(&"<a>".repeat(n));
            x.push_str(&"</a>".repeat(n));
            x.push_str("</Z:n>");
            x.into_bytes()
        };
        assert!(decode_prop(&encode_prop(&prop(deep(10))), true).is_some());
        assert!(decode_prop(&encode_prop(&prop(deep(5000))), true).is_none());
        assert!(decode_prop(&encode_prop(&prop(b"<a><b></a>".to_vec())), true).is_none());
        // A lock record whose owner is too deep is dropped, not parsed.
        let owner = String::from_utf8(deep(5000)).unwrap();
        let line = format!(
            "v1 {} {} - {} - - 0 0\n",
            hex::encode("t"),
            hex::encode("/a"),
            hex::encode(owner)
        );
        assert!(decode_locks(line.as_bytes()).is_empty());
    }

    #[test]
    fn lock_timeouts_have_a_default_and_a_maximum() {
        assert_eq!(lock_timeout(None), LOCK_DEFAULT_TIMEOUT);
        assert_eq!(
            lock_timeout(Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(
            lock_timeout(Some(Duration::from_secs(86400))),
            LOCK_MAX_TIMEOUT
        );
    }

    #[test]
    fn active_types_are_attachments() {
        for ct in [
            "text/html; charset=utf-8",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/javascript",
            "application/xml",
        ] {
            assert!(active_content(ct), "{ct}");
        }
        for ct in ["text/plain", "application/octet-stream", "image/png", ""] {
            assert!(!active_content(ct), "{ct}");
        }
    }

    #[test]
    fn props_and_locks_round_trip() {
        let p = DavProp {
            name: "color".into(),
            prefix: Some("x".into()),
            namespace: Some("http://example.com/ns".into()),
            xml: Some(b"<x:color xmlns:x=\"http://example.com/ns\">r\xc3\xa9d</x:color>".to_vec()),
        };
        let d = decode_prop(&encode_prop(&p), true).unwrap();
        assert_eq!(d.name, "color");
        assert_eq!(d.namespace, p.namespace);
        assert_eq!(d.xml, p.xml);
        assert!(decode_prop(&encode_prop(&p), false).unwrap().xml.is_none());
        assert_ne!(
            prop_xattr(&p.namespace, "color"),
            prop_xattr(&None, "color")
        );

        let owner =
            xmltree::Element::parse(&b"<D:owner xmlns:D=\"DAV:\">me</D:owner>"[..]).unwrap();
        let l = DavLock {
            token: new_token(),
            path: Box::new(DavPath::new("/dir/caf%C3%A9").unwrap()),
            principal: Some("alice".into()),
            owner: Some(Box::new(owner)),
            timeout_at: Some(UNIX_EPOCH + Duration::from_secs(4_000_000_000)),
            timeout: Some(Duration::from_secs(600)),
            shared: false,
            deep: true,
        };
        let back = decode_locks(&encode_locks(std::slice::from_ref(&l)));
        assert_eq!(back.len(), 1);
        let b = &back[0];
        assert_eq!(b.token, l.token);
        assert_eq!(b.path.as_bytes(), l.path.as_bytes());
        assert_eq!(b.principal, l.principal);
        assert_eq!(b.timeout_at, l.timeout_at);
        assert!(b.deep && !b.shared);
        assert_eq!(b.owner.as_ref().unwrap().name, "owner");
        // Locks cover their resource, and members only when deep.
        let segs: Vec<&[u8]> = vec![b"dir", "café".as_bytes(), b"x"];
        assert!(covers(b, &segs));
        assert!(below(b, &segs[..1]));
    }
}

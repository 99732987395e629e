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
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{self, Gate, Users};
use crate::config::WebdavConfig;
use crate::error::{Error, Result};
use crate::meta::{unix_secs, FileKind, ROOT_INO};
use crate::volume::{Attr, Caller, Changed, RenameMode, SetAttr, Volume, XattrSet, MAX_NAME_LEN};

/// Bytes of a PUT body gathered before one core `write` (one blocking-pool round trip).
const WRITE_BATCH: usize = 1 << 20;
/// Largest single read handed to dav-server for GET.
const READ_BATCH: usize = 1 << 20;
/// Dead properties live in xattrs under this prefix, so they are durable, move with the file
/// on MOVE, and are visible (read-only in spirit) through the mount.
const PROP_PREFIX: &[u8] = b"user.tiergate.dav.";
/// How long a request with wrong credentials waits before its 401.
const FAILED_AUTH_DELAY: Duration = Duration::from_secs(1);
/// Name of the staging directory record ([`Volume::hidden_dir`]).
const STAGING: &str = "webdav-staging";
/// Where the lock table is kept ([`Volume::set_frontend_state`]).
const LOCK_STATE: &str = "webdav.locks";

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

fn take_field<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let f = b.get(4..4 + n)?;
    *b = &b[4 + n..];
    Some(f)
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

/// The inverse of [`encode_prop`]; `None` for bytes it did not write. (Public, like the lock
/// table's codec and [`destination_path`], for the fuzz targets in `fuzz/`.)
#[doc(hidden)]
pub fn decode_prop(b: &[u8], with_content: bool) -> Option<DavProp> {
    let (&ver, mut rest) = b.split_first()?;
    if ver != 1 {
        return None;
    }
    let s = |f: &[u8]| String::from_utf8(f.to_vec()).ok();
    let opt = |f: String| if f.is_empty() { None } else { Some(f) };
    let ns = s(take_field(&mut rest)?)?;
    let prefix = s(take_field(&mut rest)?)?;
    let name = s(take_field(&mut rest)?)?;
    let xml = take_field(&mut rest)?.to_vec();
    Some(DavProp {
        name,
        prefix: opt(prefix),
        namespace: opt(ns),
        xml: (with_content && !xml.is_empty()).then_some(xml),
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
        }
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
            for (set, prop) in patch {
                let x = prop_xattr(&prop.namespace, &prop.name);
                let r = if failed {
                    Err(StatusCode::FAILED_DEPENDENCY)
                } else if set {
                    vol.setxattr(a.ino, &x, &encode_prop(&prop), XattrSet::Any)
                        .map_err(|e| status(e.http_status()))
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
/// restart. Every change rewrites the (small) table durably before the client gets its answer.
/// Expired locks are dropped whenever the table is consulted.
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
        let locks = vol
            .frontend_state(LOCK_STATE)?
            .map(|b| decode_locks(&b))
            .unwrap_or_default();
        if !locks.is_empty() {
            tracing::info!("webdav: {} lock(s) restored", locks.len());
        }
        Ok(DurableLs {
            vol,
            locks: Arc::new(parking_lot::Mutex::new(locks)),
            persist: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The table with expired locks removed.
    fn table(&self) -> parking_lot::MutexGuard<'_, Vec<DavLock>> {
        let mut t = self.locks.lock();
        let now = SystemTime::now();
        t.retain(|l| l.timeout_at.is_none_or(|at| at > now));
        t
    }

    /// Writes the current table durably. The snapshot is taken under the persist lock, so
    /// the last writer always stores a table that includes every earlier change.
    async fn save(&self) -> std::result::Result<(), ()> {
        let _g = self.persist.lock().await;
        let snapshot = encode_locks(&self.table());
        let vol = self.vol.clone();
        blocking(move || vol.set_frontend_state(LOCK_STATE, Some(&snapshot)))
            .await
            .map_err(|_| ())
    }
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
        let lock = {
            let mut t = self.table();
            let conflict = t
                .iter()
                .find(|l| (covers(l, &segs) || (deep && below(l, &segs))) && !(l.shared && shared));
            if let Some(c) = conflict {
                return futures_util::future::ready(Err(c.clone())).boxed();
            }
            let lock = DavLock {
                token: new_token(),
                path: Box::new(path.clone()),
                principal: principal.map(str::to_string),
                owner: owner.map(|o| Box::new(o.clone())),
                timeout_at: timeout.map(|d| SystemTime::now() + d),
                timeout,
                shared,
                deep,
            };
            t.push(lock.clone());
            lock
        };
        async move {
            if self.save().await.is_err() {
                // Not durable: take it back and refuse (the conflict answer is the only
                // failure dav-server can send here; the log says why).
                self.locks.lock().retain(|l| l.token != lock.token);
                tracing::error!("webdav: lock table could not be saved; LOCK refused");
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
        async move {
            if !removed {
                return Err(());
            }
            self.save().await
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
        let found = {
            let mut t = self.table();
            t.iter_mut()
                .find(|l| l.token == token && covers(l, &segs))
                .map(|l| {
                    l.timeout = timeout;
                    l.timeout_at = timeout.map(|d| SystemTime::now() + d);
                    l.clone()
                })
        };
        async move {
            let l = found.ok_or(())?;
            self.save().await?;
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
        let removed = {
            let mut t = self.table();
            let before = t.len();
            t.retain(|l| !below(l, &segs));
            t.len() != before
        };
        async move {
            if removed {
                self.save().await?;
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
        let ls = DurableLs::load(vol)?;
        let dav = DavHandler::builder()
            .filesystem(Box::new(fs))
            .locksystem(Box::new(ls))
            .read_buf_size(READ_BATCH)
            .autoindex(true)
            .build_handler();
        Ok(Share { dav, users, tls })
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
            match gate.authenticate(auth.map(|v| v.as_bytes()), peer.ip()).await {
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
        match principal {
            Some(p) => {
                self.dav
                    .handle_with(DavConfig::new().principal(p), req)
                    .await
            }
            None => self.dav.handle(req).await,
        }
    }
}

/// Binds the share's address (port 0: any free port) and returns the listener and the
/// address actually bound.
pub async fn bind(cfg: &WebdavConfig) -> Result<(TcpListener, SocketAddr)> {
    crate::serve::bind(cfg.listen, "webdav.listen").await
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

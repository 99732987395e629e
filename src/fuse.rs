//! The FUSE front-end: a thin adapter that links fuser's callbacks to the [`Volume`] core.
//!
//! Each callback converts arguments, calls one core method, and replies or maps the core's
//! error through [`Error::errno`]. There is no filesystem logic here, so the core can be
//! tested without a mount. fuser runs several event-loop threads, so one slow request (a
//! large commit, a cold read) never stalls the others.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags,
    PollEvents, PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyBmap, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow,
    WriteFlags,
};

use crate::error::Error;
use crate::meta::{FileKind, Inode, ROOT_INO};
use crate::volume::{
    Allocate, Attr, Caller, Changed, PrivChange, RenameMode, SetAttr, TimeSet, Volume, Whence,
    XattrSet,
};

mod creds;
mod seek;

/// How long the kernel may cache attributes and names. Short, because a second front-end
/// (WebDAV) changes the same volume behind the kernel's back.
const TTL: Duration = Duration::from_secs(1);
/// Largest write request the kernel sends us.
const MAX_WRITE: u32 = 1 << 20;

pub struct FuseOptions {
    pub allow_other: bool,
    pub writeback_cache: bool,
    pub threads: usize,
    /// The kernel's readahead for the mount in bytes; 0 leaves the kernel's default.
    pub readahead: u64,
}

pub struct FuseFs {
    vol: Arc<Volume>,
    /// Inodes with handles open for writing (src/fuse/seek.rs).
    writers: seek::Writers,
    writeback_cache: bool,
    /// The volume's file-handle generation (src/volume/export.rs).
    generation: u32,
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

/// Logs what the application will only see as an errno, for errors worth an operator's eye.
fn report(op: &str, e: &Error) -> Errno {
    match e {
        Error::Corrupt(_) | Error::Io { .. } | Error::Store(_) | Error::NoSpace(_) => {
            tracing::error!("{op}: {e}")
        }
        _ => tracing::debug!("{op}: {e}"),
    }
    errno(e)
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let i = &a.inode;
    FileAttr {
        ino: INodeNo(a.ino),
        size: i.size,
        blocks: a.blocks(),
        atime: i.atime.to_system_time(),
        mtime: i.mtime.to_system_time(),
        ctime: i.ctime.to_system_time(),
        crtime: i.crtime.to_system_time(),
        kind: kind(i.kind),
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: 1 << 20,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(s) => TimeSet::At(s.into()),
    }
}

impl FuseFs {
    pub fn new(vol: Arc<Volume>, writeback_cache: bool) -> Self {
        let generation = vol.handle_generation().unwrap_or_else(|e| {
            tracing::warn!("file-handle generation unreadable ({e}); using 0");
            0
        });
        FuseFs {
            vol,
            writers: seek::Writers::default(),
            writeback_cache,
            generation,
        }
    }

    /// The generation the kernel puts in file handles with `ino` (the root's must be 0).
    fn generation(&self, ino: u64) -> Generation {
        Generation(if ino == ROOT_INO {
            0
        } else {
            self.generation.into()
        })
    }

    /// Attributes for the kernel, with st_blocks counting what the file takes.
    fn file_attr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            blocks: self.vol.blocks(a),
            ..file_attr(a)
        }
    }

    fn entry(&self, r: crate::Result<Attr>, op: &str, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry(&TTL, &self.file_attr(&a), self.generation(a.ino)),
            Err(e) => reply.error(report(op, &e)),
        }
    }

    fn empty(&self, r: crate::Result<()>, op: &str, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(report(op, &e)),
        }
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        // Export support: handles (NFS, open_by_handle_at) of inodes the kernel no longer
        // caches are looked up by number ("." and "..", see src/volume/export.rs).
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_EXPORT_SUPPORT;
        if self.writeback_cache {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        // POSIX ACLs: the kernel checks them; with DONT_MASK it leaves the umask to us, to
        // apply only where no default ACL replaces it (src/volume/acl.rs).
        wanted |= InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK;
        // Set-uid/set-gid bits are cleared by us, with the local filesystems' rules
        // (src/volume/privs.rs); the kernel's fallback for FUSE keeps set-gid too often.
        wanted |= InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        if let Err(missing) = config.add_capabilities(wanted) {
            tracing::warn!("kernel lacks FUSE capabilities {missing:?}; continuing without them");
            let _ = config.add_capabilities(wanted - missing);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // "." in any inode, file or directory: the kernel opening a file handle.
        let r = if name.as_bytes() == b"." {
            self.vol.handle_lookup(parent.0)
        } else {
            self.vol.lookup(parent.0, name.as_bytes())
        };
        self.entry(r, "lookup", reply)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vol.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &self.file_attr(&a)),
            Err(e) => reply.error(report("getattr", &e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = creds::setattr_change(size.is_some(), uid.is_some() || gid.is_some());
        if let Err(e) = creds::drop_privs(&self.vol, req, ino.0, change) {
            return reply.error(report("setattr", &e));
        }
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(Into::into),
        };
        let times_only = mode.is_none() && uid.is_none() && gid.is_none() && size.is_none();
        match self.vol.setattr(ino.0, &s) {
            Ok(a) => reply.attr(&TTL, &self.file_attr(&a)),
            // With the writeback cache the kernel writes cached times back for an inode it still
            // holds, also after the file was deleted (syncfs, `sync -f`). Nothing is left to
            // update; an error here would fail the whole sync, so answer with a gone file.
            Err(Error::NotFound) if times_only => {
                let mut inode = Inode::new(FileKind::File, 0, 0, 0, ROOT_INO);
                inode.nlink = 0;
                reply.attr(&Duration::ZERO, &file_attr(&Attr { ino: ino.0, inode }))
            }
            Err(e) => reply.error(report("setattr", &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.vol.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(report("readlink", &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let mode = self.vol.create_mode(parent.0, mode, umask);
        let r = self
            .vol
            .mknod(parent.0, name.as_bytes(), mode, rdev, caller(req));
        self.entry(r, "mknod", reply)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mode = self.vol.create_mode(parent.0, mode, umask);
        let r = self.vol.mkdir(parent.0, name.as_bytes(), mode, caller(req));
        self.entry(r, "mkdir", reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(self.vol.unlink(parent.0, name.as_bytes()), "unlink", reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(self.vol.rmdir(parent.0, name.as_bytes()), "rmdir", reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.vol.symlink(
            parent.0,
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            caller(req),
        );
        self.entry(r, "symlink", reply)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            // RENAME_WHITEOUT is for overlay filesystems.
            return reply.error(Errno::EINVAL);
        };
        let r = self.vol.rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            mode,
        );
        self.empty(r, "rename", reply)
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(
            self.vol.link(ino.0, newparent.0, newname.as_bytes()),
            "link",
            reply,
        )
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        if writes {
            if let Err(e) = self.vol.check_open_for_write(ino.0) {
                return reply.error(report("open", &e));
            }
        }
        match self.vol.open_file(ino.0) {
            Ok(fh) => {
                self.writers.opened(ino.0, flags.0);
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(report("open", &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.vol.read(ino.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(report("read", &e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Sent (with HANDLE_KILLPRIV_V2) when the writer lacks CAP_FSETID.
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = creds::drop_privs(&self.vol, req, ino.0, Some(PrivChange::Modify)) {
                return reply.error(report("write", &e));
            }
        }
        match self.vol.write(ino.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(report("write", &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): what was written through this file is durable when close returns.
        self.empty(self.vol.flush(ino.0), "flush", reply)
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.writers.released(ino.0, flags.0);
        self.empty(self.vol.release(fh.0), "release", reply)
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty(self.vol.fsync(ino.0), "fsync", reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.vol.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(report("opendir", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.vol.readdir(fh.0, offset, 512) {
            Ok(entries) => {
                for e in &entries {
                    if reply.add(
                        INodeNo(e.ino),
                        e.offset,
                        kind(e.kind),
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(report("readdir", &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.vol.readdir(fh.0, offset, 256) {
            Ok(entries) => {
                for e in &entries {
                    // The kernel makes a dentry of each entry. A name removed, renamed away or
                    // replaced since it was read from the store is skipped:
                    // sent with its old inode, it would stand for that inode under a name it no
                    // longer has, and an open(O_CREAT|O_TRUNC) of that name would truncate the
                    // other file (found by faults::concurrent_writers_readers_and_renames...).
                    let a = match self.vol.lookup(ino.0, &e.name) {
                        Ok(a) if a.ino == e.ino => a,
                        _ => continue,
                    };
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(
                        INodeNo(e.ino),
                        e.offset,
                        name,
                        &TTL,
                        &self.file_attr(&a),
                        self.generation(a.ino),
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(report("readdirplus", &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.empty(self.vol.releasedir(fh.0), "releasedir", reply)
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty(self.vol.sync_metadata(), "fsyncdir", reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.vol.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(report("statfs", &e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let how = match flags {
            0 => XattrSet::Any,
            libc::XATTR_CREATE => XattrSet::Create,
            libc::XATTR_REPLACE => XattrSet::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        let r = self.vol.setxattr(ino.0, name.as_bytes(), value, how);
        self.empty(r, "setxattr", reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.vol.getxattr(ino.0, name.as_bytes()) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(report("getxattr", &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.vol.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                xattr_reply(&buf, size, reply)
            }
            Err(e) => reply.error(report("listxattr", &e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(
            self.vol.removexattr(ino.0, name.as_bytes()),
            "removexattr",
            reply,
        )
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Only called without default_permissions; we always mount with it.
        self.empty(self.vol.getattr(ino.0).map(|_| ()), "access", reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mode = self.vol.create_mode(parent.0, mode, umask);
        let r = self
            .vol
            .create_file(parent.0, name.as_bytes(), mode, caller(req));
        if let Ok((a, _)) = &r {
            self.writers.opened(a.ino, flags);
        }
        match r {
            Ok((a, fh)) => reply.created(
                &TTL,
                &self.file_attr(&a),
                self.generation(a.ino),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(report("create", &e)),
        }
    }

    /// O_TMPFILE (src/volume/tmpfile.rs). The kernel counts the link count it is told down by
    /// one, so it hears 1 for the file's 0.
    fn tmpfile(
        &self,
        req: &Request,
        parent: INodeNo,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mode = self.vol.create_mode(parent.0, mode, umask);
        match self.vol.create_tmpfile(parent.0, mode, caller(req)) {
            Ok((a, fh)) => {
                self.writers.opened(a.ino, flags);
                let attr = FileAttr {
                    nlink: 1,
                    ..self.file_attr(&a)
                };
                reply.created(
                    &TTL,
                    &attr,
                    self.generation(a.ino),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(report("tmpfile", &e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        let how = if mode & !known != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        } else if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            if !keep_size {
                // The kernel requires KEEP_SIZE with PUNCH_HOLE.
                return reply.error(Errno::EOPNOTSUPP);
            }
            Allocate::PunchHole
        } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            Allocate::ZeroRange { keep_size }
        } else {
            Allocate::Allocate { keep_size }
        };
        if let Err(e) = creds::drop_privs(&self.vol, req, ino.0, Some(PrivChange::Modify)) {
            return reply.error(report("fallocate", &e));
        }
        self.empty(
            self.vol.fallocate(ino.0, offset, length, how),
            "fallocate",
            reply,
        )
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let w = match whence {
            libc::SEEK_DATA => Whence::Data,
            libc::SEEK_HOLE => Whence::Hole,
            // SEEK_SET/CUR/END are handled by the kernel.
            _ => return reply.error(Errno::EINVAL),
        };
        if offset < 0 {
            return reply.error(Errno::ENXIO);
        }
        if self.writeback_cache && self.writers.any(ino.0) {
            // The kernel may hold dirty pages of it: have them written back first.
            let answer = move |r: crate::Result<u64>| match r {
                Ok(o) => reply.offset(o as i64),
                Err(e) => reply.error(report("lseek", &e)),
            };
            return seek::after_writeback(self.vol.clone(), ino.0, offset as u64, w, answer);
        }
        match self.vol.lseek(ino.0, offset as u64, w) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(report("lseek", &e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The reply carries a u32; larger requests are answered short and the caller loops.
        let len = len.min(1 << 30);
        if let Err(e) = creds::drop_privs(&self.vol, req, ino_out.0, Some(PrivChange::Modify)) {
            return reply.error(report("copy_file_range", &e));
        }
        match self
            .vol
            .copy_range(ino_in.0, offset_in, ino_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(report("copy_file_range", &e)),
        }
    }

    // The operations below are not supported. fuser's defaults answer them too, but log each
    // call as a multi-line "[Not Implemented]" warning: borg alone asked FS_IOC_GETFLAGS 86
    // times in one run. These answer what the kernel and the callers expect, quietly.

    /// No ioctl is supported: ENOTTY, the "inappropriate ioctl for device" of any file system
    /// without it (borg and rsync read FS_IOC_GETFLAGS, and take ENOTTY as "no flags").
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        tracing::trace!(
            cmd = format_args!("{cmd:#x}"),
            "ioctl: not supported (ENOTTY)"
        );
        reply.error(Errno::ENOTTY)
    }

    /// ENOSYS: the kernel stops asking and treats the files as always ready (the default
    /// poll mask), as for a regular file on disk.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS)
    }

    /// FIBMAP: there is no block device under the files.
    fn bmap(&self, _req: &Request, _ino: INodeNo, _blocksize: u32, _idx: u64, reply: ReplyBmap) {
        reply.error(Errno::ENOSYS)
    }

    /// POSIX locks stay local to the kernel (FUSE_POSIX_LOCKS is not negotiated, so these
    /// are not sent; answered quietly should a kernel send them anyway).
    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        reply.error(Errno::ENOSYS)
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS)
    }
}

fn xattr_reply(value: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}

/// The source (`fsname`) of this volume's mounts, as /proc/self/mountinfo shows it: how a
/// later start recognises a mount of its own volume left behind by a crash.
pub fn fsname(volume_id: &str) -> String {
    format!("tiergate:{volume_id}")
}

/// One line of /proc/self/mountinfo, the fields the start-up checks look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted (octal escapes decoded).
    pub target: PathBuf,
    /// The file system type, e.g. `fuse.tiergate`.
    pub fstype: String,
    /// The mount's source: for a tiergate mount, [`fsname`].
    pub source: String,
}

impl MountEntry {
    /// A FUSE mount made by tiergate (whichever volume).
    pub fn is_tiergate(&self) -> bool {
        self.fstype.starts_with("fuse") && self.source.starts_with("tiergate:")
    }
}

/// /proc/self/mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses /proc/self/mountinfo: `id parent major:minor root target options [optional...] -
/// fstype source super-options` (proc(5)).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let target = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let (fstype, source) = (r.next()?, r.next()?);
            Some(MountEntry {
                target: PathBuf::from(unescape_mount_field(target)),
                fstype: unescape_mount_field(fstype),
                source: unescape_mount_field(source),
            })
        })
        .collect()
}

/// The topmost mount at `path` (already absolute and free of symlinks), if any.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.target == path)
}

/// `path` made absolute with its parent's symlinks resolved, without a stat of `path`
/// itself (a dead FUSE mount answers every stat with ENOTCONN).
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => match parent.canonicalize() {
            Ok(p) => Ok(p.join(name)),
            Err(_) => Ok(abs),
        },
        _ => Ok(abs),
    }
}

/// What [`prepare_mountpoint`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The mountpoint was free.
    Free,
    /// A dead mount of this volume (its daemon was killed) was detached first.
    ClearedStale,
}

/// The start-up check of the mountpoint, run before anything else starts; `Ok` with the
/// mountpoint's absolute path when the volume can be mounted there.
///
/// A mount of this very volume whose daemon died (recognised by its source, [`fsname`], and
/// by the ENOTCONN its statfs gets) is what a crash or a `kill -9` leaves behind: it is
/// detached (umount2 with MNT_DETACH, as `fusermount3 -u -z` does) and the start goes on, as
/// rclone's `mount` does. Any other mount there (another file system, another volume, or this
/// volume served by a live process) is never touched: the start is refused. The mountpoint must
/// then be an existing, empty directory; `allow_non_empty` (`[fuse] allow_non_empty`) lets the
/// mount cover what is in it (libfuse's `nonempty`).
pub fn prepare_mountpoint(
    path: &Path,
    volume_id: &str,
    allow_non_empty: bool,
) -> anyhow::Result<(PathBuf, Prepared)> {
    let abs = absolute(path)?;
    let mut prepared = Prepared::Free;
    if let Some(m) = mount_at(&abs) {
        let ours = m.source == fsname(volume_id) && m.is_tiergate();
        // statfs always asks the daemon (a stat may be answered from the kernel's attribute
        // cache for a second after the daemon died). Only our own volume's mount is probed:
        // the volume's lock, held by now, means no daemon of this volume serves it, while a
        // foreign FUSE mount might hang the probe.
        let dead = ours
            && matches!(nix::sys::statfs::statfs(&abs), Err(e) if e == nix::errno::Errno::ENOTCONN);
        if ours && dead {
            nix::mount::umount2(&abs, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
                anyhow::anyhow!(
                    "{} holds a dead mount of this volume (its daemon was killed), and detaching \
                     it failed: {e}; run `umount -l {}` as root and start again",
                    abs.display(),
                    abs.display()
                )
            })?;
            tracing::warn!(
                mountpoint = %abs.display(),
                source = %m.source,
                "detached a dead mount of this volume left by a daemon that did not stop \
                 cleanly (killed or crashed)"
            );
            prepared = Prepared::ClearedStale;
        } else {
            let who = if ours {
                " (this volume, served by a running process: is another `tiergate serve` \
                 running with a copy of this volume?)"
            } else {
                " (if it is a dead mount nothing needs, `umount -l` it)"
            };
            anyhow::bail!(
                "{} is busy: {} ({}) is already mounted there{who}; unmount it first or set \
                 [fuse] mountpoint to another directory",
                abs.display(),
                m.source,
                m.fstype
            );
        }
    }
    let meta = std::fs::metadata(&abs).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "the mountpoint {} does not exist: create it (`mkdir -p {}`) or set [fuse] \
             mountpoint to an existing directory",
            abs.display(),
            abs.display()
        ),
        _ => anyhow::anyhow!("the mountpoint {}: {e}", abs.display()),
    })?;
    anyhow::ensure!(
        meta.is_dir(),
        "the mountpoint {} is not a directory: set [fuse] mountpoint to an empty directory",
        abs.display()
    );
    if !allow_non_empty {
        let mut entries = std::fs::read_dir(&abs)
            .map_err(|e| anyhow::anyhow!("the mountpoint {}: {e}", abs.display()))?;
        if let Some(first) = entries.next() {
            let first = first.map(|e| e.file_name()).unwrap_or_default();
            anyhow::bail!(
                "the mountpoint {} is not empty (it holds {:?}{}): the mount would hide those \
                 files. Empty it, choose another [fuse] mountpoint, or set [fuse] \
                 allow_non_empty = true to mount over them",
                abs.display(),
                first,
                if entries.next().is_some() {
                    " and more"
                } else {
                    ""
                }
            );
        }
    }
    Ok((abs, prepared))
}

/// Sets the kernel's readahead for the FUSE mount at `mountpoint` (its backing device's
/// `read_ahead_kb`). FUSE mounts start at 128 KiB: a sequential reader then waits for every
/// 128 KiB in turn, and a chunk is decoded only when the reader reaches it. With a few MiB the
/// kernel asks for the next chunks while the reader copies this one, on several FUSE threads.
/// Needs root; without it, the mount works at the default and a warning says so.
fn set_kernel_readahead(mountpoint: &Path, bytes: u64) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) => m.dev(),
        Err(e) => {
            tracing::warn!(
                "cannot set the mount's readahead: stat {}: {e}",
                mountpoint.display()
            );
            return;
        }
    };
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    match std::fs::write(&path, format!("{}\n", bytes.div_ceil(1024))) {
        Ok(()) => tracing::debug!(path, kib = bytes.div_ceil(1024), "kernel readahead set"),
        Err(e) => tracing::warn!(
            "cannot set the mount's readahead in {path}: {e}; sequential reads stay at the \
             kernel's default of 128 KiB"
        ),
    }
}

/// Mounts the volume at `mountpoint` (checked and cleared by [`prepare_mountpoint`] first)
/// and serves it on background threads until the returned session is unmounted (or dropped).
pub fn mount(
    vol: Arc<Volume>,
    mountpoint: &Path,
    opts: &FuseOptions,
) -> anyhow::Result<fuser::BackgroundSession> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        // How a later start recognises this mount as its own after a crash.
        MountOption::FSName(fsname(&vol.info().volume_id)),
        MountOption::Subtype("tiergate".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        // Backups may hold device nodes and set-uid programs: they are stored and restored as
        // they are, but never opened as devices or run with their owner's rights from here.
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    let fs = FuseFs::new(vol.clone(), opts.writeback_cache);
    let session = fuser::Session::new(fs, mountpoint, &config).map_err(|e| {
        anyhow::anyhow!(
            "cannot mount at {}: {e} (is /dev/fuse present and are we root or is fusermount3 installed?)",
            mountpoint.display()
        )
    })?;
    let session = session.spawn()?;
    if opts.readahead > 0 {
        // After spawn: stat of the mountpoint is answered by the session.
        set_kernel_readahead(mountpoint, opts.readahead);
    }
    // Changes made through other front-ends reach the kernel's caches at once.
    let notifier = session.notifier();
    vol.set_invalidator(Box::new(move |c| {
        let r = match c {
            Changed::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
            Changed::Attr(ino) => notifier.inval_inode(INodeNo(*ino), -1, 0),
            Changed::Entry { parent, name } => {
                notifier.inval_entry(INodeNo(*parent), OsStr::from_bytes(name))
            }
        };
        // ENOENT: the kernel did not have it cached, which is fine.
        if let Err(e) = r {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!("kernel cache invalidation of {c:?}: {e}");
            }
        }
    }));
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_target_type_and_source() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    95 22 0:50 / /srv/back\\040up rw,nosuid,nodev,noatime shared:60 - \
                    fuse.tiergate tiergate:0f1e rw,user_id=0,group_id=0\n\
                    96 22 0:51 / /mnt/x rw - fuse sshfs#h:/ rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].target, Path::new("/srv/back up"));
        assert_eq!(m[1].fstype, "fuse.tiergate");
        assert_eq!(m[1].source, fsname("0f1e"));
        assert!(m[1].is_tiergate());
        assert!(!m[0].is_tiergate() && !m[2].is_tiergate());
    }
}

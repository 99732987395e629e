//! Issue-22 filesystem fidelity tests (see docs/SEMANTICS.md): file handles that survive the
//! kernel's caches and daemon restarts (what an NFS export of the mount needs), and a quiet
//! log when the mount is unmounted from outside.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::common::*;

/// A `struct file_handle` (kept in u32s for its alignment): `handle_bytes`, `handle_type`,
/// then the filesystem's bytes.
#[derive(Clone, Debug, PartialEq)]
struct Handle(Vec<u32>);

const HANDLE_MAX: usize = 128;

fn handle_of(path: &Path) -> Handle {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u32; 2 + HANDLE_MAX / 4];
    buf[0] = HANDLE_MAX as u32;
    let mut mount_id = 0;
    // SAFETY: buf holds a file_handle header and HANDLE_MAX bytes, as handle_bytes says.
    let r = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr().cast::<libc::file_handle>(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "name_to_handle_at {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let len = 2 + (buf[0] as usize).div_ceil(4);
    buf.truncate(len);
    Handle(buf)
}

/// `open_by_handle_at` with the mount's root as `mount_fd`: the file, or the errno.
fn open_handle(mnt: &Path, h: &Handle, flags: i32) -> Result<File, i32> {
    let root = File::open(mnt).unwrap();
    let mut buf = h.0.clone();
    // SAFETY: buf is a complete file_handle as name_to_handle_at filled it.
    let fd = unsafe {
        libc::open_by_handle_at(
            root.as_raw_fd(),
            buf.as_mut_ptr().cast::<libc::file_handle>(),
            flags,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Makes the kernel forget every inode and name it does not need (ours included).
fn drop_caches() {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

fn read_all(mut f: File) -> Vec<u8> {
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

fn listing(dir: File) -> Vec<String> {
    crate::common::names_in(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())))
}

#[test]
fn handles_open_after_cache_drop_and_restart() {
    let mut tv = TestVolume::new("");
    tv.start();
    let data = random_bytes(22, 300_000);
    std::fs::create_dir_all(tv.path("a/b")).unwrap();
    std::fs::write(tv.path("a/b/file"), &data).unwrap();
    std::fs::write(tv.path("a/b/other"), b"other").unwrap();
    let fh = handle_of(&tv.path("a/b/file"));
    let dh = handle_of(&tv.path("a/b"));
    assert_ne!(fh, dh);

    // Cached: works today too. Then with the inodes gone from the kernel's caches.
    assert_eq!(
        read_all(open_handle(&tv.mnt, &fh, libc::O_RDONLY).unwrap()),
        data
    );
    drop_caches();
    let f = open_handle(&tv.mnt, &fh, libc::O_RDONLY).expect("file handle after drop_caches");
    assert_eq!(read_all(f), data);
    drop_caches();
    let d = open_handle(&tv.mnt, &dh, libc::O_RDONLY | libc::O_DIRECTORY)
        .expect("directory handle after drop_caches");
    assert_eq!(listing(d), ["file", "other"]);

    // A new daemon and a new mount: the same handle bytes open the same objects.
    tv.stop();
    tv.start();
    let f = open_handle(&tv.mnt, &fh, libc::O_RDONLY).expect("file handle after a restart");
    assert_eq!(read_all(f), data);
    let d = open_handle(&tv.mnt, &dh, libc::O_RDONLY | libc::O_DIRECTORY)
        .expect("directory handle after a restart");
    assert_eq!(listing(d), ["file", "other"]);
    // Writable too (what an NFS client's write does).
    let mut f = open_handle(&tv.mnt, &fh, libc::O_WRONLY).unwrap();
    std::io::Write::write_all(&mut f, b"NEW").unwrap();
    drop(f);
    assert_eq!(&std::fs::read(tv.path("a/b/file")).unwrap()[..3], b"NEW");
    // The handle of a renamed file follows it.
    std::fs::rename(tv.path("a/b/file"), tv.path("a/moved")).unwrap();
    drop_caches();
    let f = open_handle(&tv.mnt, &fh, libc::O_RDONLY).unwrap();
    assert_eq!(&read_all(f)[3..], &data[3..]);
    tv.stop();
}

#[test]
fn handle_of_a_deleted_file_is_stale() {
    // With the recycle bin on, the deleted file's inode stays in the store: its handle must
    // still fail, as on a local filesystem.
    let mut tv = TestVolume::new("[recycle]\ndays = 7\n");
    tv.start();
    std::fs::write(tv.path("doomed"), b"deleted data").unwrap();
    std::fs::write(tv.path("plain"), b"").unwrap();
    std::fs::create_dir(tv.path("dir")).unwrap();
    let doomed = handle_of(&tv.path("doomed"));
    let plain = handle_of(&tv.path("plain"));
    let dir = handle_of(&tv.path("dir"));
    std::fs::remove_file(tv.path("doomed")).unwrap();
    std::fs::remove_file(tv.path("plain")).unwrap();
    std::fs::remove_dir(tv.path("dir")).unwrap();
    std::fs::write(tv.path("newer"), b"someone else's data").unwrap();
    drop_caches();
    for h in [&doomed, &plain, &dir] {
        assert_eq!(
            open_handle(&tv.mnt, h, libc::O_RDONLY).map(|_| ()),
            Err(libc::ESTALE)
        );
    }
    tv.stop();
    tv.start();
    for h in [&doomed, &plain, &dir] {
        assert_eq!(
            open_handle(&tv.mnt, h, libc::O_RDONLY).map(|_| ()),
            Err(libc::ESTALE)
        );
    }
    tv.stop();
}

#[test]
fn external_umount_is_logged_quietly() {
    let mut tv = TestVolume::new("");
    tv.start();
    std::fs::write(tv.path("f"), b"x").unwrap();
    let pid = tv.pid();
    let out = std::process::Command::new("umount")
        .arg(&tv.mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "umount: {}", text(&out));
    // The daemon notices within a second or so and exits by itself: wait for it to be a
    // zombie (stop() then reaps it and checks the exit status).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        if state.starts_with('Z') || stat.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "daemon still running:\n{}",
            tv.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tv.stop();
    // From the unmount on (the start warns of the test's config: no password, no S3).
    let log = std::fs::read_to_string(tv.log_path()).unwrap();
    let at = log
        .find("the mount was unmounted from outside: shutting down")
        .unwrap_or_else(|| panic!("the unmount is not logged:\n{log}"));
    let rest = &log[at..];
    let noisy: Vec<&str> = rest
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(noisy.is_empty(), "warnings or errors logged:\n{rest}");
    assert!(!rest.contains("Unmounting"), "{rest}");
    assert!(rest.contains("stopped cleanly"), "{rest}");
}

/// `open(dir, O_TMPFILE | O_RDWR)`: the descriptor, or the errno.
fn open_tmpfile(dir: &Path) -> Result<File, i32> {
    let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path; the descriptor is owned by the File below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, 0o640) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `linkat(fd, "", AT_FDCWD, to, AT_EMPTY_PATH)`.
fn link_fd(f: &File, to: &Path) -> Result<(), i32> {
    let c = CString::new(to.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid descriptor and paths.
    let r = unsafe {
        libc::linkat(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    Ok(())
}

#[test]
fn o_tmpfile_links_into_place_or_leaves_nothing() {
    use std::io::Write;
    let mut tv = TestVolume::new("");
    tv.start();
    std::fs::create_dir(tv.path("d")).unwrap();
    let data = random_bytes(51, 200_000);

    // Written, then linked into place: the name appears with the data, as written.
    let mut f = open_tmpfile(&tv.path("d")).expect("O_TMPFILE");
    f.write_all(&data).unwrap();
    assert!(std::fs::read_dir(tv.path("d")).unwrap().next().is_none());
    link_fd(&f, &tv.path("d/placed")).expect("linkat AT_EMPTY_PATH");
    f.write_all(b"tail").unwrap();
    drop(f);
    let mut want = data.clone();
    want.extend_from_slice(b"tail");
    assert_eq!(std::fs::read(tv.path("d/placed")).unwrap(), want);
    let m = std::fs::metadata(tv.path("d/placed")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&m), 1);

    // Through /proc/self/fd, as tools without AT_EMPTY_PATH do (needs no privilege).
    let mut f = open_tmpfile(&tv.path("d")).unwrap();
    f.write_all(b"via proc").unwrap();
    let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
    let (a, b) = (
        CString::new(proc_path).unwrap(),
        CString::new(tv.path("d/via-proc").as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: valid paths.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    drop(f);
    assert_eq!(std::fs::read(tv.path("d/via-proc")).unwrap(), b"via proc");

    // Never linked: gone at close, and nothing of it counts or comes back after a restart.
    let before = std::fs::read_dir(tv.path("d")).unwrap().count();
    let mut f = open_tmpfile(&tv.path("d")).unwrap();
    f.write_all(&random_bytes(52, 300_000)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // One more left open while the daemon stops: the next start deletes it.
    let mut open_one = open_tmpfile(&tv.path("d")).unwrap();
    open_one.write_all(&random_bytes(53, 300_000)).unwrap();
    open_one.sync_all().unwrap();
    tv.kill();
    drop(open_one);
    tv.start();
    assert_eq!(std::fs::read_dir(tv.path("d")).unwrap().count(), before);
    tv.stop();
    // Only the two linked files' data is stored.
    let stats = tv.stats();
    assert!(
        stats.stats.logical_bytes < 300_000,
        "unlinked temporary files still hold data: {stats:?}"
    );
}

//! Issue-22 filesystem fidelity tests (see docs/SEMANTICS.md): directories through the mount.
//! An open directory removed or renamed over keeps its inode (nlink 0) until closed; directory
//! handles read the store at each READDIR (fresh `rewinddir`, stable offsets, bounded memory).

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiergate::volume::{Volume, VolumeOptions};

use crate::common::{status_kib, TestVolume, PASSPHRASE};
use crate::webdav::share;

/// A libc directory stream (`opendir`/`readdir`/`telldir`/`seekdir`/`rewinddir`).
struct Dir(*mut libc::DIR);

impl Dir {
    fn open(path: &Path) -> Dir {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let d = unsafe { libc::opendir(c.as_ptr()) };
        assert!(
            !d.is_null(),
            "opendir {path:?}: {}",
            std::io::Error::last_os_error()
        );
        Dir(d)
    }

    /// A stream over a duplicate of `fd` (as `fdopendir` takes it over).
    fn of_fd(fd: &File) -> Dir {
        // SAFETY: `fd` is an open descriptor; dup has no other requirement.
        let dup = unsafe { libc::dup(fd.as_raw_fd()) };
        assert!(dup >= 0);
        // SAFETY: `dup` is a descriptor we own; the stream takes it over.
        let d = unsafe { libc::fdopendir(dup) };
        assert!(!d.is_null(), "{}", std::io::Error::last_os_error());
        Dir(d)
    }

    /// The next name, `None` at the end; an error is the errno readdir set.
    fn next(&mut self) -> Result<Option<String>, i32> {
        // SAFETY: errno is this thread's; `self.0` is an open stream (closed only in drop).
        let e = unsafe {
            *libc::__errno_location() = 0;
            libc::readdir(self.0)
        };
        if e.is_null() {
            return match std::io::Error::last_os_error().raw_os_error() {
                Some(0) | None => Ok(None),
                Some(errno) => Err(errno),
            };
        }
        // SAFETY: a non-null entry from readdir stays valid until the next call on the stream,
        // and its d_name is NUL-terminated; the name is copied out before that.
        let name = unsafe { CStr::from_ptr((*e).d_name.as_ptr()) };
        Ok(Some(name.to_string_lossy().into_owned()))
    }

    /// Every remaining name but `.` and `..`.
    fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(n) = self.next().expect("readdir") {
            if n != "." && n != ".." {
                out.push(n);
            }
        }
        out
    }

    fn tell(&self) -> libc::c_long {
        // SAFETY: `self.0` is an open stream.
        unsafe { libc::telldir(self.0) }
    }

    fn seek(&mut self, pos: libc::c_long) {
        // SAFETY: `self.0` is an open stream; `pos` came from telldir on it.
        unsafe { libc::seekdir(self.0, pos) }
    }

    fn rewind(&mut self) {
        // SAFETY: `self.0` is an open stream.
        unsafe { libc::rewinddir(self.0) }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: `self.0` is an open stream, closed once, here.
        unsafe { libc::closedir(self.0) };
    }
}

fn open_dir(path: &Path) -> File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
        .unwrap()
}

/// What a local filesystem answers for an open directory that lost its name: `fstat` works
/// (same inode, a directory, nlink 0) and a listing is empty (or ENOENT, as the VFS answers
/// for a directory it saw die).
fn assert_dead_dir(fd: &File, ino: u64, what: &str) {
    let st = fd
        .metadata()
        .unwrap_or_else(|e| panic!("{what}: fstat: {e}"));
    assert_eq!(st.ino(), ino, "{what}: same inode");
    assert!(st.is_dir(), "{what}: still a directory");
    assert_eq!(st.nlink(), 0, "{what}: nlink 0");
    let mut d = Dir::of_fd(fd);
    match d.next() {
        Ok(None) | Err(libc::ENOENT) => {}
        other => panic!("{what}: listing a removed directory gave {other:?}"),
    }
}

/// `fd = open(d2); rename(d1, d2); fstat(fd)`, `rmdir` of an open directory, and a WebDAV
/// MOVE over a collection open through the mount: each keeps the inode until the last close,
/// and nothing is left over for a restart to finish.
#[test]
fn open_directory_outlives_rename_over_and_rmdir() {
    let mut v = TestVolume::new("");
    v.start();
    let dav = share(&v);
    for d in ["d1", "d2", "d3", "w1", "w2"] {
        std::fs::create_dir(v.path(d)).unwrap();
    }
    std::fs::write(v.path("d1/kept"), b"x").unwrap();
    std::fs::write(v.path("w1/moved"), b"y").unwrap();
    std::fs::write(v.path("w2/replaced"), b"z").unwrap();
    let mut inos = Vec::new();

    let d2 = open_dir(&v.path("d2"));
    let ino = d2.metadata().unwrap().ino();
    std::fs::rename(v.path("d1"), v.path("d2")).unwrap();
    assert_dead_dir(&d2, ino, "renamed over");
    assert!(v.path("d2/kept").exists());
    inos.push(ino);

    let d3 = open_dir(&v.path("d3"));
    let ino = d3.metadata().unwrap().ino();
    std::fs::remove_dir(v.path("d3")).unwrap();
    assert_dead_dir(&d3, ino, "removed");
    inos.push(ino);

    // The share replaces the collection behind the kernel's back: the daemon itself answers
    // nlink 0 and an empty listing (the kernel does not know the directory died).
    let w2 = open_dir(&v.path("w2"));
    let ino = w2.metadata().unwrap().ino();
    let dest = format!("http://{}/w2", dav.addr());
    let r = dav.req(
        "MOVE",
        "/w1",
        &[("Destination", &dest), ("Overwrite", "T")],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    std::thread::sleep(Duration::from_millis(1100)); // the kernel's attribute cache (1 s)
    assert_dead_dir(&w2, ino, "replaced through WebDAV");
    assert_eq!(std::fs::read(v.path("w2/moved")).unwrap(), b"y");
    inos.push(ino);

    drop((d2, d3, w2));
    v.stop();
    let vol = Volume::open(&v.vol_dir(), PASSPHRASE, VolumeOptions::default()).unwrap();
    for ino in inos {
        assert!(
            vol.getattr(ino).is_err(),
            "inode {ino} freed at the last close"
        );
    }
    drop(vol);
    assert!(
        !std::fs::read_to_string(v.log_path())
            .unwrap()
            .contains("finishing deletion"),
        "no orphan was left for the next start to finish"
    );
}

/// `rewinddir` lists the directory as it is now: a name created after `opendir` appears, a
/// removed one is gone. `telldir`/`seekdir` come back to the same place, also after names
/// before and after it changed.
#[test]
fn rewinddir_is_fresh_and_seekdir_returns() {
    let mut v = TestVolume::new("");
    v.start();
    let dir = v.path("d");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..300 {
        std::fs::write(dir.join(format!("f{i:03}")), b"").unwrap();
    }
    let mut d = Dir::open(&dir);
    let first: HashSet<String> = d.rest().into_iter().collect();
    assert_eq!(first.len(), 300);
    std::fs::write(dir.join("late"), b"").unwrap();
    std::fs::remove_file(dir.join("f007")).unwrap();
    d.rewind();
    let again: HashSet<String> = d.rest().into_iter().collect();
    assert!(
        again.contains("late"),
        "rewinddir shows a name created after opendir"
    );
    assert!(
        !again.contains("f007"),
        "rewinddir no longer shows a removed name"
    );
    assert_eq!(again.len(), 300);

    // telldir in the middle, read on, seekdir back: the same names again.
    d.rewind();
    let mut before = Vec::new();
    for _ in 0..150 {
        before.push(d.next().unwrap().unwrap());
    }
    let pos = d.tell();
    let after = d.rest();
    d.seek(pos);
    assert_eq!(d.rest(), after, "seekdir to a telldir position");
    // Names change on both sides of the position; every name that stayed after it is listed
    // again, once.
    let old_before = before.iter().find(|n| n.starts_with('f')).unwrap().clone();
    std::fs::remove_file(dir.join(&old_before)).unwrap();
    // The name at the position itself goes too: the stream still resumes after it.
    std::fs::remove_file(dir.join(before.last().unwrap())).unwrap();
    std::fs::remove_file(dir.join(&after[10])).unwrap();
    d.seek(pos);
    let later = d.rest();
    let stayed: Vec<&String> = after.iter().filter(|n| **n != after[10]).collect();
    assert_eq!(later.iter().collect::<Vec<_>>(), stayed);
}

/// A directory of 20,000 names listed over and over while another thread creates and removes
/// names in it: every name that exists throughout appears exactly once per pass, nothing
/// appears twice, and a rewind of the same stream then shows what was created meanwhile.
#[test]
fn listing_under_concurrent_changes_is_exact() {
    const N: usize = 20_000;
    let mut v = TestVolume::new("");
    v.start();
    let dir = v.path("big");
    std::fs::create_dir(&dir).unwrap();
    let t = Instant::now();
    for i in 0..N {
        std::os::unix::fs::symlink("t", dir.join(format!("stable-{i:05}"))).unwrap();
    }
    eprintln!("{N} names made in {:?}", t.elapsed());
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let churn = {
        let (dir, stop, made) = (dir.clone(), stop.clone(), made.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Names spread over the whole order (before, among and after the stable ones).
                let name = format!("{}-churn-{i}", ["a", "stable-1", "z"][i as usize % 3]);
                std::os::unix::fs::symlink("t", dir.join(&name)).unwrap();
                if i.is_multiple_of(2) {
                    std::fs::remove_file(dir.join(&name)).unwrap();
                }
                i += 1;
                made.store(i, Ordering::Relaxed);
            }
            i
        })
    };
    let mut d = Dir::open(&dir);
    // At least three passes, and on until the other thread made 1,000 names meanwhile.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pass = 0;
    while pass < 3 || (made.load(Ordering::Relaxed) < 1000 && Instant::now() < deadline) {
        if pass > 0 {
            d.rewind();
        }
        let mut seen: HashMap<String, u32> = HashMap::new();
        for n in d.rest() {
            *seen.entry(n).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
        assert!(twice.is_empty(), "pass {pass}: listed twice: {twice:?}");
        let missing = (0..N)
            .map(|i| format!("stable-{i:05}"))
            .filter(|n| !seen.contains_key(n))
            .count();
        assert_eq!(missing, 0, "pass {pass}: stable names missing");
        pass += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let made = churn.join().unwrap();
    eprintln!("{made} names created (half removed again) during {pass} passes");
    assert!(
        made >= 1000,
        "the other thread changed the directory during the walk"
    );
    d.rewind();
    let now: HashSet<String> = d.rest().into_iter().collect();
    let kept = format!("{}-churn-{}", ["a", "stable-1", "z"][1], 1);
    assert!(
        now.contains(&kept),
        "the rewound stream shows names made after opendir"
    );
    assert_eq!(now.len(), N + made as usize / 2);
}

/// 200 handles open on a directory of 10,000 long names, each read a little: the daemon's
/// memory grows by far less than 200 listings (each handle keeps a cursor, not a listing).
#[test]
fn many_open_handles_on_a_large_directory_use_bounded_memory() {
    const N: usize = 10_000;
    const HANDLES: usize = 200;
    let mut v = TestVolume::new("");
    v.start();
    let dir = v.path("big");
    std::fs::create_dir(&dir).unwrap();
    let pad = "x".repeat(100);
    for i in 0..N {
        std::os::unix::fs::symlink("t", dir.join(format!("{pad}-{i:05}"))).unwrap();
    }
    // Warm up the daemon's caches with one full listing first.
    assert_eq!(Dir::open(&dir).rest().len(), N);
    let pid = v.pid();
    let before = status_kib(pid, "VmRSS:");
    let mut open = Vec::new();
    for _ in 0..HANDLES {
        let mut d = Dir::open(&dir);
        d.next().unwrap().unwrap();
        open.push(d);
    }
    let after = status_kib(pid, "VmRSS:");
    let grown = after.saturating_sub(before);
    // 200 listings of 10,000 names of 106 bytes hold ~300 MiB (measured +310 MiB before
    // handles became cursors); cursors hold at most a few hundred names each.
    eprintln!("daemon RSS {before} KiB -> {after} KiB with {HANDLES} open handles (+{grown} KiB)");
    assert!(grown < 48 << 10, "RSS grew by {grown} KiB");
    // And each still lists the whole directory, from where it stood.
    for d in open.iter_mut().take(3) {
        assert_eq!(d.rest().len(), N);
    }
}

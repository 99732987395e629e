//! Tests through the real FUSE mount served by a real `tiergate serve` process.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{random_bytes, TestVolume};

const SMALL_CHUNKS: &str = "";

fn small_chunk_volume() -> TestVolume {
    let mut v = TestVolume::new(&format!(
        "{SMALL_CHUNKS}\n[chunking]\nmin_size = 16384\navg_size = 65536\nmax_size = 262144\n"
    ));
    v.start();
    v
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap()
}

/// fsx-style: thousands of seeded random writes, reads, truncates, hole punches and
/// copy_file_range calls on files far larger than one chunk, checked against a model.
#[test]
fn random_io_through_the_mount_matches_a_model() {
    let seed: u64 = std::env::var("TIERGATE_FSX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261128);
    eprintln!("fsx-style seed {seed} (set TIERGATE_FSX_SEED to replay)");
    let mut v = small_chunk_volume();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    const MAX: usize = 24 << 20;
    let paths = [v.path("f1"), v.path("f2")];
    let files: Vec<File> = paths
        .iter()
        .map(|p| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .unwrap()
        })
        .collect();
    let mut model = vec![Vec::<u8>::new(), Vec::new()];
    for step in 0..4000 {
        let f = rng.gen_range(0..2);
        let file = &files[f];
        match rng.gen_range(0..100) {
            0..=44 => {
                let off = rng.gen_range(0..MAX - (1 << 20));
                let max_len = if rng.gen_bool(0.9) { 64 << 10 } else { 1 << 20 };
                let len = rng.gen_range(1..max_len);
                let data = random_bytes(rng.gen(), len);
                file.write_all_at(&data, off as u64).unwrap();
                let m = &mut model[f];
                if m.len() < off + len {
                    m.resize(off + len, 0);
                }
                m[off..off + len].copy_from_slice(&data);
            }
            45..=69 => {
                let m = &model[f];
                let off = rng.gen_range(0..m.len() + 1);
                let len = rng.gen_range(1..256 << 10);
                let mut buf = vec![0u8; len];
                let mut got = 0;
                while got < len {
                    let n = file.read_at(&mut buf[got..], (off + got) as u64).unwrap();
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                let want_end = (off + len).min(m.len());
                let want = if off < m.len() {
                    &m[off..want_end]
                } else {
                    &[][..]
                };
                assert!(
                    &buf[..got] == want,
                    "step {step}: read {off}+{len} of f{f} differs"
                );
            }
            70..=77 => {
                let size = rng.gen_range(0..MAX);
                file.set_len(size as u64).unwrap();
                model[f].resize(size, 0);
            }
            78..=84 => {
                let m = &mut model[f];
                if m.is_empty() {
                    continue;
                }
                let off = rng.gen_range(0..m.len());
                let len = rng.gen_range(1..(m.len() - off).min(2 << 20) + 1);
                // SAFETY: the fd is open for the call; the flags and range are plain integers.
                let r = unsafe {
                    libc::fallocate(
                        file.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        off as i64,
                        len as i64,
                    )
                };
                assert_eq!(r, 0, "punch hole: {}", std::io::Error::last_os_error());
                m[off..off + len].fill(0);
            }
            85..=91 => {
                let g = 1 - f;
                let src_len = model[f].len();
                if src_len == 0 {
                    continue;
                }
                let off_in = rng.gen_range(0..src_len);
                let len = rng.gen_range(1..(src_len - off_in).min(2 << 20) + 1);
                let off_out = rng.gen_range(0..MAX - (2 << 20));
                let mut done = 0;
                while done < len {
                    let mut oi = (off_in + done) as i64;
                    let mut oo = (off_out + done) as i64;
                    // SAFETY: both fds are open and the offsets are locals the call may update.
                    let n = unsafe {
                        libc::copy_file_range(
                            file.as_raw_fd(),
                            &mut oi,
                            files[g].as_raw_fd(),
                            &mut oo,
                            len - done,
                            0,
                        )
                    };
                    assert!(
                        n > 0,
                        "copy_file_range: {}",
                        std::io::Error::last_os_error()
                    );
                    done += n as usize;
                }
                let piece = model[f][off_in..off_in + len].to_vec();
                let m = &mut model[g];
                if m.len() < off_out + len {
                    m.resize(off_out + len, 0);
                }
                m[off_out..off_out + len].copy_from_slice(&piece);
            }
            _ => file.sync_all().unwrap(),
        }
        assert_eq!(
            file.metadata().unwrap().len(),
            model[f].len() as u64,
            "step {step}: size"
        );
    }
    drop(files);
    // Everything survives a clean restart.
    v.stop();
    v.start();
    for (p, m) in paths.iter().zip(&model) {
        assert!(
            fs::read(p).unwrap() == *m,
            "{} differs after restart",
            p.display()
        );
    }
    v.stop();
}

#[test]
fn rename_link_unlink_edge_cases() {
    let mut v = small_chunk_volume();
    let p = |s: &str| v.path(s);
    fs::write(p("a"), b"A").unwrap();
    fs::write(p("b"), b"B").unwrap();
    // Plain rename replaces the target atomically.
    fs::rename(p("a"), p("b")).unwrap();
    assert_eq!(fs::read(p("b")).unwrap(), b"A");
    assert!(!p("a").exists());
    // Directories: over an empty one works, over a non-empty one fails, file over dir fails.
    fs::create_dir(p("d1")).unwrap();
    fs::create_dir(p("d2")).unwrap();
    fs::write(p("d1/x"), b"x").unwrap();
    fs::rename(p("d1"), p("d2")).unwrap();
    assert_eq!(fs::read(p("d2/x")).unwrap(), b"x");
    fs::create_dir(p("d3")).unwrap();
    assert_eq!(errno_of(fs::rename(p("d3"), p("d2"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::rename(p("b"), p("d3"))), libc::EISDIR);
    assert_eq!(errno_of(fs::rename(p("d3"), p("b"))), libc::ENOTDIR);
    // Moving a directory below itself is refused before the target's type is looked at.
    assert_eq!(errno_of(fs::rename(p("d2"), p("d2/x"))), libc::EINVAL);
    fs::create_dir(p("d2/sub")).unwrap();
    assert_eq!(
        errno_of(fs::rename(p("d2"), p("d2/sub/inside"))),
        libc::EINVAL
    );
    // Link counts of directories follow their subdirectories.
    assert_eq!(fs::metadata(p("d2")).unwrap().nlink(), 3);
    fs::rename(p("d2/sub"), p("d3/sub")).unwrap();
    assert_eq!(fs::metadata(p("d2")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(p("d3")).unwrap().nlink(), 3);
    // renameat2 flags.
    let c = |s: &str| std::ffi::CString::new(p(s).to_str().unwrap()).unwrap();
    // SAFETY: the CStrings outlive the call (built in its arguments).
    let renameat2 = |a: &str, b: &str, flags: u32| unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(a).as_ptr(),
            libc::AT_FDCWD,
            c(b).as_ptr(),
            flags,
        )
    };
    fs::write(p("n1"), b"one").unwrap();
    fs::write(p("n2"), b"two").unwrap();
    assert_eq!(renameat2("n1", "n2", libc::RENAME_NOREPLACE), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(renameat2("n1", "n2", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(p("n1")).unwrap(), b"two");
    assert_eq!(fs::read(p("n2")).unwrap(), b"one");
    // Exchange a file and a directory.
    assert_eq!(renameat2("n1", "d3", libc::RENAME_EXCHANGE), 0);
    assert!(p("n1/sub").is_dir());
    assert_eq!(fs::read(p("d3")).unwrap(), b"two");
    assert_eq!(renameat2("zz", "n2", libc::RENAME_EXCHANGE), -1);
    // Hard links share data; the last unlink frees it; an open file outlives its name.
    fs::write(p("h1"), b"shared").unwrap();
    fs::hard_link(p("h1"), p("h2")).unwrap();
    assert_eq!(fs::metadata(p("h1")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(p("h1")).unwrap().ino(),
        fs::metadata(p("h2")).unwrap().ino()
    );
    fs::remove_file(p("h1")).unwrap();
    assert_eq!(fs::read(p("h2")).unwrap(), b"shared");
    assert_eq!(fs::metadata(p("h2")).unwrap().nlink(), 1);
    let mut open = File::open(p("h2")).unwrap();
    fs::remove_file(p("h2")).unwrap();
    assert!(!p("h2").exists());
    let mut s = String::new();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(s, "shared");
    drop(open);
    assert_eq!(errno_of(fs::remove_dir(p("d2"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_file(p("d2"))), libc::EISDIR);
    assert_eq!(errno_of(fs::hard_link(p("d2"), p("dl"))), libc::EPERM);
    // Symlinks.
    std::os::unix::fs::symlink("d2/x", p("sl")).unwrap();
    assert_eq!(fs::read_link(p("sl")).unwrap().to_str(), Some("d2/x"));
    assert_eq!(fs::read(p("sl")).unwrap(), b"x");
    // Long names.
    let long = "n".repeat(255);
    fs::write(p(&long), b"ok").unwrap();
    assert_eq!(
        errno_of(fs::write(p(&"n".repeat(256)), b"no")),
        libc::ENAMETOOLONG
    );
    let mut names: Vec<String> = fs::read_dir(&v.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["b", "d2", "d3", "n1", "n2", long.as_str(), "sl"]
    );
    v.stop();
}

#[test]
fn sparse_files_seek_data_and_hole() {
    let mut v = small_chunk_volume();
    let path = v.path("sparse");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let tib16 = 16u64 << 40;
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(&random_bytes(3, 1 << 20), 100 << 20)
        .unwrap();
    f.write_all_at(b"tail", tib16 - 4).unwrap();
    f.sync_all().unwrap();
    assert_eq!(f.metadata().unwrap().len(), tib16);
    // SAFETY: the fd is open for the whole test; lseek takes plain integers.
    let seek = |off: i64, whence: i32| unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    assert_eq!(seek(0, libc::SEEK_DATA), 0);
    let hole = seek(0, libc::SEEK_HOLE);
    assert!((4..=100 << 20).contains(&hole), "hole at {hole}");
    assert_eq!(seek(hole, libc::SEEK_DATA), 100 << 20);
    assert_eq!(seek(100 << 20, libc::SEEK_HOLE), (100 << 20) + (1 << 20));
    // The kernel's page cache writes whole pages, so data may start at the page boundary
    // (ext4 answers with block granularity too).
    let tail = seek((101 << 20) as i64, libc::SEEK_DATA);
    assert!(
        tail >= (tib16 - 4096) as i64 && tail <= (tib16 - 4) as i64,
        "tail data at {tail}"
    );
    assert_eq!(seek((tib16 - 4) as i64, libc::SEEK_HOLE), tib16 as i64);
    assert_eq!(seek(tib16 as i64, libc::SEEK_DATA), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENXIO)
    );
    let mut buf = [1u8; 8];
    f.read_exact_at(&mut buf, 50 << 20).unwrap();
    assert_eq!(buf, [0; 8], "holes read as zeros");
    f.read_exact_at(&mut buf[..4], tib16 - 4).unwrap();
    assert_eq!(&buf[..4], b"tail");
    // Beyond the 16 TiB mark is still writable.
    f.write_all_at(b"x", tib16 + 1).unwrap();
    drop(f);
    v.stop();
    let s = v.stats();
    assert!(
        s.stats.logical_bytes < 2 << 20,
        "holes store nothing: {:?}",
        s.stats
    );
}

#[test]
fn extended_attributes() {
    let mut v = small_chunk_volume();
    let path = v.path("x");
    fs::write(&path, b"data").unwrap();
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let name = |n: &str| std::ffi::CString::new(n).unwrap();
    // SAFETY: the CStrings and the value slice outlive the call; the length is the slice's.
    let set = |n: &str, val: &[u8], flags: i32| unsafe {
        libc::setxattr(
            c.as_ptr(),
            name(n).as_ptr(),
            val.as_ptr().cast(),
            val.len(),
            flags,
        )
    };
    assert_eq!(set("user.one", b"1", 0), 0);
    assert_eq!(set("user.two", &[7u8; 5000], 0), 0);
    assert_eq!(set("user.one", b"again", libc::XATTR_CREATE), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(set("user.none", b"x", libc::XATTR_REPLACE), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENODATA)
    );
    let mut buf = vec![0u8; 8192];
    // SAFETY: buf is writable for the length passed.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name("user.two").as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 5000);
    assert_eq!(&buf[..5000], &[7u8; 5000][..]);
    // SAFETY: buf is writable for the (smaller) length passed.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name("user.two").as_ptr(),
            buf.as_mut_ptr().cast(),
            10,
        )
    };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ERANGE)
    );
    // SAFETY: buf is writable for the length passed.
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"user.one\0user.two\0");
    assert_eq!(
        // SAFETY: both CStrings outlive the call.
        unsafe { libc::removexattr(c.as_ptr(), name("user.one").as_ptr()) },
        0
    );
    // Survives a restart.
    v.stop();
    v.start();
    // SAFETY: buf is writable for the length passed.
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"user.two\0");
    v.stop();
}

/// copy_file_range clones extents: the copy reads back identical and stores nothing new.
#[test]
fn copy_file_range_shares_chunks() {
    let mut v = small_chunk_volume();
    let data = random_bytes(9, 48 << 20);
    fs::write(v.path("orig"), &data).unwrap();
    v.stop();
    let before = v.stats();
    v.start();
    let src = File::open(v.path("orig")).unwrap();
    let dst = File::create(v.path("copy")).unwrap();
    let mut left = data.len();
    while left > 0 {
        // SAFETY: both fds are open; null offsets mean the files' own positions.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                left,
                0,
            )
        };
        assert!(n > 0, "{}", std::io::Error::last_os_error());
        left -= n as usize;
    }
    drop((src, dst));
    assert!(fs::read(v.path("copy")).unwrap() == data);
    v.stop();
    let after = v.stats();
    assert_eq!(
        after.stats.stored_bytes, before.stats.stored_bytes,
        "no new chunks"
    );
    assert_eq!(after.stats.logical_bytes, 2 * before.stats.logical_bytes);
    assert_eq!(after.pack_bytes, before.pack_bytes, "no data written");
}

/// The kernel writes the cached times of a just-written file back at syncfs, also when the file
/// is deleted by then: that must not fail the sync (`sync -f` used to say "Input/output error").
#[test]
fn syncfs_after_deleting_a_just_written_file_succeeds() {
    let mut v = TestVolume::new("");
    v.start();
    for i in 0..20 {
        let p = v.path(&format!("f{i}"));
        fs::write(&p, random_bytes(i, 100_000)).unwrap();
        fs::remove_file(&p).unwrap();
    }
    let out = std::process::Command::new("sync")
        .arg("-f")
        .arg(&v.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sync -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(v.path("kept"), b"still here").unwrap();
    v.stop();
    v.start();
    assert_eq!(fs::read(v.path("kept")).unwrap(), b"still here");
}

#[test]
fn refuses_busy_mountpoint_and_bad_config() {
    let mut v = small_chunk_volume();
    // A second daemon on the same mountpoint (another volume) is refused with a clear message.
    let other = TestVolume::new("");
    let cfg = fs::read_to_string(&other.config).unwrap().replace(
        "mountpoint = \"mnt\"",
        &format!("mountpoint = \"{}\"", v.mnt.display()),
    );
    fs::write(&other.config, cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(["serve", "--config"])
        .arg(&other.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busy"), "{err}");
    // A config with an unknown key names the key and the file.
    let bad = v.dir.path().join("bad.toml");
    fs::write(&bad, "[volume]\npath = \"v\"\ncache_sise = 3\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cache_sise") && err.contains("bad.toml"),
        "{err}"
    );
    // The running mount is untouched.
    fs::write(v.path("still"), b"fine").unwrap();
    assert_eq!(fs::read(v.path("still")).unwrap(), b"fine");
    v.stop();
}

/// statfs answers and many files written concurrently land intact.
#[test]
fn concurrent_writers_and_statfs() {
    let mut v = small_chunk_volume();
    let st = nix::sys::statvfs::statvfs(&v.mnt).unwrap();
    assert!(st.blocks() > 0 && st.name_max() == 255);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let dir = v.mnt.clone();
            s.spawn(move || {
                let data = random_bytes(100 + t, (3 << 20) + t as usize * 4097);
                let mut f = File::create(dir.join(format!("w{t}"))).unwrap();
                for part in data.chunks(128 << 10) {
                    f.write_all(part).unwrap();
                }
                f.sync_all().unwrap();
            });
        }
    });
    for t in 0..8u64 {
        let want = random_bytes(100 + t, (3 << 20) + t as usize * 4097);
        assert!(fs::read(v.path(&format!("w{t}"))).unwrap() == want, "w{t}");
    }
    v.stop();
}

/// The mount's kernel readahead is raised from FUSE's 128 KiB to `fuse.readahead` (4 MiB by
/// default), so a sequential reader has the next chunks asked for while it copies this one.
#[test]
fn the_mount_reads_ahead_four_mib() {
    use std::os::unix::fs::MetadataExt;
    let mut v = TestVolume::new("");
    v.start();
    let dev = fs::metadata(&v.mnt).unwrap().dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let kib = fs::read_to_string(&knob).unwrap();
    assert_eq!(kib.trim(), "4096", "{knob}");
    // And a file larger than the window reads back whole.
    let data = random_bytes(77, 20 << 20);
    fs::write(v.path("big"), &data).unwrap();
    v.stop();
    v.start();
    assert!(fs::read(v.path("big")).unwrap() == data);
}

/// Device nodes and set-uid programs are stored as they are (type, device number, mode), also
/// across a restart, but the mount is `nodev,nosuid`: a stored device cannot be opened.
#[test]
fn device_nodes_and_setuid_bits_are_stored_but_not_honoured() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut v = TestVolume::new("");
    v.start();
    let mnt = v.mnt.canonicalize().unwrap();
    let options = fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split_whitespace().nth(1) == mnt.to_str())
        .map(|l| l.split_whitespace().nth(3).unwrap().to_string())
        .expect("the mount in /proc/self/mounts");
    let options: Vec<&str> = options.split(',').collect();
    assert!(
        options.contains(&"nodev") && options.contains(&"nosuid"),
        "{options:?}"
    );
    // The device /dev/null is (1, 3).
    nix::sys::stat::mknod(
        &v.path("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        libc::makedev(1, 3),
    )
    .unwrap();
    fs::write(v.path("tool"), b"#!/bin/sh\nid -u\n").unwrap();
    fs::set_permissions(v.path("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(errno_of(File::open(v.path("null"))), libc::EACCES);
    v.stop();
    v.start();
    let dev = fs::metadata(v.path("null")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), libc::makedev(1, 3));
    assert_eq!(
        fs::metadata(v.path("tool")).unwrap().mode() & 0o7777,
        0o4755
    );
    v.stop();
}

/// The mount's file system type names tiergate (`fuse.tiergate`, as fusermount3 would mount
/// it), so `findmnt -t fuse.tiergate` and `df -T` find it.
#[test]
fn the_mount_shows_its_type_as_fuse_tiergate() {
    let mut v = TestVolume::new("");
    v.start();
    let mnt = v.mnt.to_str().unwrap().to_string();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mnt.as_str()))
        .unwrap_or_else(|| panic!("{mnt} not in mountinfo:\n{info}"));
    // Fields after the " - " separator: type, source, super options (proc(5)).
    let after = line.split(" - ").nth(1).unwrap();
    let mut f = after.split(' ');
    assert_eq!(f.next(), Some("fuse.tiergate"), "{line}");
    assert!(f.next().unwrap().starts_with("tiergate:"), "{line}");
    v.stop();
}

//! Issue-22 filesystem fidelity tests (see docs/SEMANTICS.md): data and space as a local
//! filesystem reports them, with the kernel's writeback cache on (the default): SEEK_DATA and
//! SEEK_HOLE right after a write, timestamps in order between what the kernel and the daemon
//! set, fallocate reserving quota, st_blocks counting what is allocated.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;

use crate::common::TestVolume;

fn lseek(f: &File, offset: u64, whence: i32) -> Result<u64, i32> {
    // SAFETY: lseek on a descriptor we own.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(r as u64)
    }
}

/// A write past a hole, then SEEK_DATA/SEEK_HOLE on the same descriptor without fsync: the
/// written bytes are data and the gap before them a hole, 50 times at varied offsets. Before,
/// the kernel still held the written pages and we answered ENXIO ("no data").
#[test]
fn seek_data_and_hole_right_after_a_write() {
    let mut v = TestVolume::new("");
    v.start();
    for i in 0..50u64 {
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(v.path(&format!("sparse-{i}")))
            .unwrap();
        // Varied offsets, most not page-aligned; the second piece far past the first.
        let a = 4096 + (i * 7919 % 97) * 65_536 + i * 131;
        let b = a + (2 << 20) + i * 4099;
        let len = 1 + (i as usize * 37) % 5000;
        f.write_all_at(&vec![0xa5; len], a).unwrap();
        let page = |x: u64| x & !4095;
        let data = lseek(&f, 0, libc::SEEK_DATA);
        assert!(
            matches!(data, Ok(d) if d <= a && d >= page(a)),
            "try {i}: SEEK_DATA(0) = {data:?}, data written at {a}"
        );
        assert_eq!(lseek(&f, 0, libc::SEEK_HOLE), Ok(0), "try {i}: the gap");
        assert_eq!(lseek(&f, a, libc::SEEK_HOLE), Ok(a + len as u64), "try {i}");
        f.write_all_at(b"tail", b).unwrap();
        let hole = lseek(&f, a, libc::SEEK_HOLE).unwrap();
        assert!(
            hole >= a + len as u64 && hole <= page(b),
            "try {i}: SEEK_HOLE({a}) = {hole}, data {a}+{len} and {b}+4"
        );
        let data = lseek(&f, a + len as u64 + 8192, libc::SEEK_DATA).unwrap();
        assert!(
            data <= b && data >= page(b),
            "try {i}: SEEK_DATA past the first piece = {data}, second at {b}"
        );
        assert_eq!(lseek(&f, b + 1, libc::SEEK_HOLE), Ok(b + 4), "try {i}: EOF");
        assert_eq!(lseek(&f, b + 4, libc::SEEK_DATA), Err(libc::ENXIO));
        // What was written is there.
        let mut buf = [0u8; 4];
        f.read_exact_at(&mut buf, b).unwrap();
        assert_eq!(&buf, b"tail");
    }
    v.stop();
}

fn ctime(m: &std::fs::Metadata) -> (i64, i64) {
    (m.ctime(), m.ctime_nsec())
}

/// Times the kernel sets (with the writeback cache it keeps ctime/mtime of what it changes)
/// and times the daemon sets come from the same clock: an object changed after another was
/// created never shows an older time. Before, `ln` gave the linked file a ctime ~3 ms older
/// than a file created before it, almost every time.
#[test]
fn timestamps_stay_in_order_between_kernel_and_daemon() {
    let mut v = TestVolume::new("");
    v.start();
    let w = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(v.path("written"))
        .unwrap();
    let mut out_of_order = Vec::new();
    for i in 0..200 {
        std::fs::write(v.path(&format!("b{i}")), b"b").unwrap();
        let a = v.path(&format!("a{i}"));
        std::fs::write(&a, b"a").unwrap();
        let a_time = ctime(&std::fs::metadata(&a).unwrap());
        // ln: the kernel sets the linked inode's ctime itself.
        std::fs::hard_link(v.path(&format!("b{i}")), v.path(&format!("c{i}"))).unwrap();
        let c_time = ctime(&std::fs::metadata(v.path(&format!("c{i}"))).unwrap());
        if c_time < a_time {
            out_of_order.push(format!("ln {i}: ctime {c_time:?} < {a_time:?}"));
        }
        // A write through the cache: the kernel sets mtime and ctime.
        w.write_all_at(b"x", i).unwrap();
        let m = w.metadata().unwrap();
        if (m.mtime(), m.mtime_nsec()) < a_time || ctime(&m) < a_time {
            out_of_order.push(format!("write {i}: mtime {:?} < {a_time:?}", m.mtime()));
        }
    }
    assert!(
        out_of_order.is_empty(),
        "{} of 200 out of order: {:?}",
        out_of_order.len(),
        &out_of_order[..out_of_order.len().min(5)]
    );
    drop(w);
    v.stop();
}

fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> Result<(), i32> {
    // SAFETY: fallocate on a descriptor we own.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// st_blocks in bytes, asked of the daemon (not the kernel's cached attributes).
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: struct statx is plain integers: all-zero is a valid value.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx writes one struct statx into the buffer it is given.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BLOCKS,
            &mut sx,
        )
    };
    assert_eq!(r, 0, "statx {}", path.display());
    sx.stx_blocks * 512
}

/// Used bytes as statfs reports them.
fn statfs_used(path: &std::path::Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    (s.blocks() - s.blocks_free()) * s.fragment_size()
}

const MIB: u64 = 1 << 20;

/// `du` of a sparse file counts what it holds: a 1 GiB file with 1 MiB written takes ~1 MiB
/// (before: 1 GiB), a 10 MiB preallocation adds 10 MiB, punching takes them away again.
#[test]
fn st_blocks_count_what_a_file_holds() {
    let mut v = TestVolume::new("");
    v.start();
    let p = v.path("sparse");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.set_len(1 << 30).unwrap();
    f.write_all_at(&crate::common::random_bytes(7, MIB as usize), 512 * MIB)
        .unwrap();
    // Still in the kernel's or the daemon's memory, then committed: ~1 MiB either way.
    f.sync_all().unwrap();
    let du = allocated(&p);
    assert!((MIB..=MIB + 64 * 1024).contains(&du), "1 MiB written: {du}");
    assert_eq!(f.metadata().unwrap().len(), 1 << 30);
    fallocate(&f, 0, 100 * MIB, 10 * MIB).unwrap();
    let du2 = allocated(&p);
    assert_eq!(
        du2 - du,
        10 * MIB,
        "after fallocate of 10 MiB: {du} -> {du2}"
    );
    // Preallocated beyond EOF (KEEP_SIZE): counted, size unchanged.
    fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 2 << 30, 4 * MIB).unwrap();
    assert_eq!(allocated(&p), du2 + 4 * MIB);
    assert_eq!(f.metadata().unwrap().len(), 1 << 30);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fallocate(&f, punch, 100 * MIB, 10 * MIB).unwrap();
    fallocate(&f, punch, 512 * MIB, MIB).unwrap();
    assert_eq!(
        allocated(&p),
        4 * MIB,
        "after punching the data and the 10 MiB"
    );
    // Truncated below the preallocation beyond EOF: nothing left.
    f.set_len(MIB).unwrap();
    assert_eq!(allocated(&p), 0);
    // Written and committed, then read back through a restart: the counter persists.
    f.write_all_at(&crate::common::random_bytes(8, 3 * MIB as usize), 0)
        .unwrap();
    drop(f);
    let du = allocated(&p);
    assert!((3 * MIB..=3 * MIB + 64 * 1024).contains(&du), "3 MiB: {du}");
    v.stop();
    v.start();
    assert_eq!(allocated(&p), du);
    v.stop();
}

/// A preallocation past the tenant quota is refused up front (ENOSPC), one within it counts
/// as used (statfs) and against a second file's, writing into it is never refused, and the
/// reservation survives a restart and goes with the file. Before, every fallocate succeeded
/// and reserved nothing.
#[test]
fn fallocate_reserves_quota() {
    let mut v = TestVolume::new("\n[quota]\nlimit = \"64MiB\"\n");
    v.start();
    let mnt = v.mnt.clone();
    let open = |name: &str| {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(mnt.join(name))
            .unwrap()
    };
    let a = open("a");
    assert_eq!(fallocate(&a, 0, 0, 100 * MIB), Err(libc::ENOSPC));
    assert_eq!(
        fallocate(&a, 0, 0, 1 << 62),
        Err(libc::ENOSPC),
        "huge length"
    );
    assert_eq!(
        fallocate(&a, 0, i64::MAX as u64 - 10, 100),
        Err(libc::EFBIG),
        "offset + len past the largest file"
    );
    assert_eq!(
        a.metadata().unwrap().len(),
        0,
        "a refused preallocation grew the file"
    );
    let used0 = statfs_used(&v.mnt);
    fallocate(&a, 0, 0, 40 * MIB).unwrap();
    assert_eq!(a.metadata().unwrap().len(), 40 * MIB);
    let used1 = statfs_used(&v.mnt);
    assert!(
        used1 >= used0 + 40 * MIB,
        "statfs used {used0} -> {used1} after reserving 40 MiB"
    );
    // Preallocating the same range again reserves nothing more.
    fallocate(&a, 0, 0, 40 * MIB).unwrap();
    let b = open("b");
    assert_eq!(fallocate(&b, 0, 0, 40 * MIB), Err(libc::ENOSPC));
    assert_eq!(
        fallocate(&b, libc::FALLOC_FL_KEEP_SIZE, 1 << 30, 40 * MIB),
        Err(libc::ENOSPC),
        "KEEP_SIZE beyond EOF counts too"
    );
    // Survives a restart.
    drop((a, b));
    v.stop();
    v.start();
    let (a, b) = (open("a"), open("b"));
    assert!(statfs_used(&v.mnt) >= used0 + 40 * MIB);
    assert_eq!(fallocate(&b, 0, 0, 40 * MIB), Err(libc::ENOSPC));
    // Writing the preallocated range is never refused: the reservation gives way.
    a.write_all_at(&crate::common::random_bytes(9, 40 << 20), 0)
        .unwrap();
    a.sync_all().unwrap();
    assert_eq!(fallocate(&b, 0, 0, 40 * MIB), Err(libc::ENOSPC));
    // Deleting the file frees its space; then the second one fits.
    drop(a);
    std::fs::remove_file(v.path("a")).unwrap();
    fallocate(&b, 0, 0, 40 * MIB).unwrap();
    // Punching it releases the reservation.
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fallocate(&b, punch, 0, 40 * MIB).unwrap();
    let c = open("c");
    fallocate(&c, 0, 0, 50 * MIB).unwrap();
    drop((b, c));
    v.stop();
}

/// Figures for docs/SEMANTICS.md (run by hand: `cargo test --release --test integration
/// posix_data::measure -- --ignored --nocapture`): the cost of SEEK_DATA with the writeback
/// first, of a getattr that counts st_blocks, and the ingest the writeback cache buys.
#[test]
#[ignore]
fn measure() {
    use std::time::Instant;
    let mut v = TestVolume::new("");
    v.start();
    let per = |t: Instant, n: u32| t.elapsed().as_secs_f64() * 1e6 / n as f64;
    // lseek: a file open read-only (answered at once) against one open for writing with a
    // dirty page (written back first).
    let p = v.path("seek");
    std::fs::write(&p, vec![1u8; 8 << 20]).unwrap();
    let n = 2000;
    let r = File::open(&p).unwrap();
    let t = Instant::now();
    for i in 0..n {
        lseek(&r, (i as u64 * 4096) % (8 << 20), libc::SEEK_DATA).unwrap();
    }
    let ro = per(t, n);
    drop(r);
    let w = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let t = Instant::now();
    for i in 0..n {
        lseek(&w, (i as u64 * 4096) % (8 << 20), libc::SEEK_DATA).unwrap();
    }
    let clean = per(t, n);
    let t = Instant::now();
    for i in 0..n {
        let off = (i as u64 * 4096) % (8 << 20);
        w.write_all_at(b"x", off).unwrap();
        lseek(&w, off, libc::SEEK_DATA).unwrap();
    }
    let dirty = per(t, n);
    drop(w);
    println!(
        "lseek SEEK_DATA µs: read-only {ro:.1}, open for writing {clean:.1} ({:.1}x), \
         after a 1-byte write each {dirty:.1} ({:.1}x)",
        clean / ro,
        dirty / ro
    );
    // getattr: a file (st_blocks from its counter) against a directory (no lookup).
    std::fs::create_dir(v.path("dir")).unwrap();
    let n = 20_000;
    for (name, what) in [("dir", "directory"), ("seek", "file")] {
        let t = Instant::now();
        for _ in 0..n {
            allocated(&v.path(name));
        }
        println!(
            "getattr (statx FORCE_SYNC) of a {what}: {:.1} µs",
            per(t, n)
        );
    }
    v.stop();
    // Ingest with the writeback cache on (default) and off: dd-like sequential writes.
    for wb in [true, false] {
        let mut v = TestVolume::new("");
        if !wb {
            let mut c = std::fs::read_to_string(&v.config).unwrap();
            c.push_str("writeback_cache = false\n");
            std::fs::write(&v.config, c).unwrap();
        }
        v.start();
        for bs in [4096usize, 1 << 20] {
            let data = crate::common::random_bytes(bs as u64, 256 << 20);
            let f = File::create(v.path(&format!("ingest-{bs}"))).unwrap();
            let t = Instant::now();
            for (i, c) in data.chunks(bs).enumerate() {
                f.write_all_at(c, (i * bs) as u64).unwrap();
            }
            f.sync_all().unwrap();
            let mib_s = 256.0 / t.elapsed().as_secs_f64();
            println!("writeback cache {wb}: 256 MiB in {bs}-byte writes + fsync: {mib_s:.0} MiB/s");
        }
        v.stop();
    }
}

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

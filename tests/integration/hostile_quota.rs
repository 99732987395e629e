//! Hostile input against the quota (issue 20): the recycle bin must not let stored bytes grow
//! past the tenant's quota, and uploads that never completed must not land in the bin.
//! Real daemon, real WebDAV over loopback.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{random_bytes, text, tiergate, TestVolume};
use crate::retention::{n, status};
use crate::webdav::share;

const QUOTA: u64 = 64 << 20;
/// What stored bytes may exceed the quota by: blob headers and tags of data that counted at
/// its plain size while dirty (~40 bytes per chunk), and rounding.
const SLACK: u64 = 1 << 20;

fn recycle_paths(v: &TestVolume) -> Vec<String> {
    let o = tiergate(&["recycle", "list", "--json"], &v.config);
    assert!(o.status.success(), "recycle list: {}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    r["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

/// Stored bytes once the daemon's figures settled (the bin is recounted in the background).
fn stored(v: &TestVolume) -> (u64, serde_json::Value) {
    std::thread::sleep(Duration::from_millis(100));
    let sp = status(v)["space"].clone();
    (n(&sp, "stored_bytes"), sp)
}

/// PUT 40 MiB + DELETE, four times, under a 64 MiB quota with a 7-day recycle bin: every PUT
/// succeeds (the oldest recycled file gives way, with a warning), and stored bytes never pass
/// the quota. Before: 160 MiB stored, the bin counted outside the quota.
#[test]
fn put_delete_cycles_never_store_more_than_the_quota() {
    let mut v = TestVolume::new(
        "\n[recycle]\ndays = 7\n[quota]\nlimit = \"64MiB\"\n[gc]\ninterval_minutes = 0\n",
    );
    v.start();
    let d = share(&v);
    let mut peak = 0;
    for i in 0..4u64 {
        let body = random_bytes(200 + i, 40 << 20);
        let path = format!("/backup-{i}.bin");
        let r = d.put(&path, &body);
        assert_eq!(r.status, 201, "PUT {i}: {}\n{}", r.text(), v.log_tail());
        let (s, sp) = stored(&v);
        peak = peak.max(s);
        assert!(s <= QUOTA + SLACK, "after PUT {i}: {s} stored: {sp}");
        let r = d.req("DELETE", &path, &[], b"");
        assert_eq!(r.status, 204, "DELETE {i}: {}", r.text());
        // The bin's figure (what statfs and the PUT check offer as available) is recounted in
        // the background within seconds of a change.
        let deadline = Instant::now() + Duration::from_secs(20);
        let (s, sp) = loop {
            let (s, sp) = stored(&v);
            if n(&sp, "recycle_files") == 1 && n(&sp, "recycle_stored_bytes") >= 40 << 20 {
                break (s, sp);
            }
            assert!(Instant::now() < deadline, "bin never counted: {sp}");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(s <= QUOTA + SLACK, "after DELETE {i}: {s} stored: {sp}");
        // The bin counts against the quota.
        assert!(n(&sp, "quota_used_bytes") >= s, "{sp}");
    }
    // Only the newest deletion is left in the bin: the older ones made room, loudly.
    assert_eq!(recycle_paths(&v), vec!["/backup-3.bin".to_string()]);
    let log = std::fs::read_to_string(v.log_path()).unwrap();
    assert!(
        log.contains("deleted from the recycle bin before their 7 days were up"),
        "{}",
        v.log_tail()
    );
    println!(
        "hostile_quota: 4 x (PUT 40 MiB + DELETE) under a 64 MiB quota: peak stored {:.1} MiB",
        peak as f64 / (1 << 20) as f64
    );
    v.stop();
}

/// A PUT cut off mid-body and a PUT refused by the quota leave nothing in the recycle bin (their
/// staging files never had a name the tenant saw).
#[test]
fn aborted_and_refused_puts_are_not_recycled() {
    let mut v = TestVolume::new("\n[recycle]\ndays = 7\n[quota]\nlimit = \"16MiB\"\n");
    v.start();
    let d = share(&v);
    // Cut off: 8 of the announced 12 MiB, then the connection drops.
    let mut s = TcpStream::connect(d.addr()).unwrap();
    write!(
        s,
        "PUT /cut.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        12 << 20
    )
    .unwrap();
    s.write_all(&random_bytes(7, 8 << 20)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    // Refused: a chunked body (no length to check up front) past the quota.
    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "PUT /big.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let piece = random_bytes(8, 1 << 20);
    for _ in 0..24 {
        if write!(s, "{:x}\r\n", piece.len())
            .and_then(|_| s.write_all(&piece))
            .and_then(|_| s.write_all(b"\r\n"))
            .is_err()
        {
            break; // answered early
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 507"), "{answer:.200}");
    // Both staging files are gone (the upload's file object is dropped when the connection
    // goes), and neither is in the bin.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, sp) = stored(&v);
        if s < 1 << 20 {
            break;
        }
        assert!(Instant::now() < deadline, "staging data still stored: {sp}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(recycle_paths(&v), Vec::<String>::new());
    assert_eq!(d.get("/cut.bin").status, 404);
    assert_eq!(d.get("/big.bin").status, 404);
    v.stop();
}

//! Snapshots through the real mount and share: a rollback point that ransomware sweeping the
//! share cannot touch, read-only every way, recoverable from the bucket, kept by GC while it
//! exists and freed once deleted; and the schedule as the status page and metrics show it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{
    names_in, random_bytes, s3_section, shared_s3, text, tiergate, unique_prefix, TestVolume,
};
use crate::retention::{
    check_files, gc, gc_until_settled, lose_and_recover, n, pack_objects, status, SMALL,
};
use crate::web::web;
use crate::webdav::share;

/// `tiergate snapshot ARGS`, asserting success; the JSON answer when `--json` is among them.
fn snapshot(v: &TestVolume, args: &[&str]) -> serde_json::Value {
    let all: Vec<&str> = [&["snapshot"], args].concat();
    let o = tiergate(&all, &v.config);
    assert!(
        o.status.success(),
        "snapshot {args:?}: {}\n{}",
        text(&o),
        v.log_tail()
    );
    if args.contains(&"--json") {
        serde_json::from_slice(&o.stdout).unwrap()
    } else {
        serde_json::Value::Null
    }
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap()
}

/// What a backup job leaves: nested directories, a hard link, a symlink, an empty file.
fn backup_tree(v: &TestVolume) -> BTreeMap<String, Vec<u8>> {
    fs::create_dir_all(v.path("jobs/daily")).unwrap();
    let mut files = BTreeMap::new();
    let sizes = [3 << 20, 400 << 10, 300 << 10, 5000];
    let names = [
        "jobs/daily/full.vbk",
        "jobs/daily/inc1.vib",
        "jobs/daily/inc2.vib",
        "jobs/catalog.xml",
    ];
    for (i, (name, size)) in names.iter().zip(sizes).enumerate() {
        let data = random_bytes(100 + i as u64, size);
        fs::write(v.path(name), &data).unwrap();
        files.insert(name.to_string(), data);
    }
    fs::write(v.path("jobs/empty"), b"").unwrap();
    files.insert("jobs/empty".into(), Vec::new());
    fs::hard_link(v.path("jobs/daily/full.vbk"), v.path("jobs/full.link")).unwrap();
    files.insert(
        "jobs/full.link".into(),
        files["jobs/daily/full.vbk"].clone(),
    );
    std::os::unix::fs::symlink("daily/full.vbk", v.path("jobs/latest")).unwrap();
    files
}

/// What ransomware does to a share: every file encrypted in place, one renamed, one deleted.
/// Returns the live files after it.
fn ransomware(v: &TestVolume, files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    let mut after = BTreeMap::new();
    for (name, data) in files {
        let garbage: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
        if !name.ends_with(".link") {
            // (the link is the same inode as full.vbk)
            let mut f = OpenOptions::new().write(true).open(v.path(name)).unwrap();
            f.write_all(&garbage).unwrap();
            f.sync_all().unwrap();
        }
        after.insert(name.clone(), garbage);
    }
    fs::rename(
        v.path("jobs/daily/inc1.vib"),
        v.path("jobs/daily/inc1.vib.locked"),
    )
    .unwrap();
    let locked = after.remove("jobs/daily/inc1.vib").unwrap();
    after.insert("jobs/daily/inc1.vib.locked".into(), locked);
    fs::remove_file(v.path("jobs/catalog.xml")).unwrap();
    after.remove("jobs/catalog.xml");
    after
}

fn in_snapshot(name: &str, files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    files
        .iter()
        .map(|(k, v)| (format!(".snapshots/{name}/{k}"), v.clone()))
        .collect()
}

#[test]
fn snapshot_is_a_read_only_rollback_point_through_the_mount_and_the_share() {
    let mut v = TestVolume::new(&format!(
        "{SMALL}\n[gc]\ninterval_minutes = 0\ngrace_minutes = 0\n"
    ));
    v.start();
    let files = backup_tree(&v);
    let info = snapshot(&v, &["create", "before-attack", "--json"]);
    assert_eq!(info["name"], "before-attack", "{info}");
    assert_eq!(info["scheduled"], false, "{info}");
    let snapped = in_snapshot("before-attack", &files);
    let snap_root = v.path(".snapshots/before-attack");
    let snap = |rel: &str| snap_root.join(rel);

    // Hidden from the root's listing, reachable by name.
    assert_eq!(names_in(&v.mnt), ["jobs"]);
    assert_eq!(names_in(&v.path(".snapshots")), ["before-attack"]);

    let live = ransomware(&v, &files);
    check_files(&v, &live, "the live files after the attack");
    check_files(&v, &snapped, "the snapshot after the attack");
    let (full, link) = (
        fs::metadata(snap("jobs/daily/full.vbk")).unwrap(),
        fs::metadata(snap("jobs/full.link")).unwrap(),
    );
    assert_eq!(
        (full.ino(), full.nlink()),
        (link.ino(), 2),
        "one inode, two names"
    );
    assert_eq!(
        fs::read_link(snap("jobs/latest")).unwrap(),
        Path::new("daily/full.vbk")
    );

    // Read-only, every way, through the mount.
    let rofs = libc::EROFS;
    assert_eq!(errno_of(File::create(snap("jobs/planted"))), rofs);
    let open_rw = OpenOptions::new()
        .write(true)
        .open(snap("jobs/daily/full.vbk"));
    assert_eq!(errno_of(open_rw), rofs);
    assert_eq!(errno_of(fs::remove_file(snap("jobs/catalog.xml"))), rofs);
    assert_eq!(
        errno_of(fs::rename(snap("jobs/catalog.xml"), v.path("stolen"))),
        rofs
    );
    assert_eq!(
        errno_of(fs::rename(v.path("jobs/empty"), snap("jobs/planted"))),
        rofs
    );
    assert_eq!(errno_of(fs::create_dir(snap("jobs/d"))), rofs);
    let perm = fs::Permissions::from_mode(0o777);
    assert_eq!(
        errno_of(fs::set_permissions(snap("jobs/catalog.xml"), perm)),
        rofs
    );
    assert_eq!(errno_of(fs::remove_dir_all(v.path(".snapshots"))), rofs);
    assert_eq!(errno_of(fs::create_dir(v.path(".snapshots"))), libc::EEXIST);
    check_files(&v, &snapped, "the snapshot after attempts to change it");

    // And through the share.
    let d = share(&v);
    let g = d.get("/.snapshots/before-attack/jobs/daily/full.vbk");
    assert_eq!(g.status, 200);
    assert!(g.body == files["jobs/daily/full.vbk"]);
    let base = "/.snapshots/before-attack/jobs";
    assert_eq!(d.put(&format!("{base}/planted"), b"x").status, 403);
    let put_over = d.put(&format!("{base}/catalog.xml"), b"x");
    assert_eq!(put_over.status, 403);
    let delete = d.req("DELETE", &format!("{base}/daily/full.vbk"), &[], b"");
    assert_eq!(delete.status, 403);
    assert_eq!(d.req("MKCOL", &format!("{base}/new"), &[], b"").status, 403);
    let listing = d.req("PROPFIND", "/", &[("Depth", "1")], b"");
    assert_eq!(listing.status, 207);
    assert!(listing.text().contains("/jobs/") && !listing.text().contains(".snapshots"));
    check_files(
        &v,
        &snapped,
        "the snapshot after attempts through the share",
    );

    // The rollback: the live tree replaced by the snapshot's (clones: no data is copied).
    fs::remove_dir_all(v.path("jobs")).unwrap();
    let cp = Command::new("cp")
        .arg("-a")
        .arg(snap("jobs"))
        .arg(v.path("jobs"))
        .output()
        .unwrap();
    assert!(cp.status.success(), "cp: {}", text(&cp));
    check_files(&v, &files, "after the rollback");
    assert_eq!(
        fs::read_link(v.path("jobs/latest")).unwrap(),
        Path::new("daily/full.vbk")
    );

    let list = snapshot(&v, &["list", "--json"]);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "{list}");
    v.stop();
    v.start();
    check_files(&v, &snapped, "the snapshot after a restart");

    snapshot(&v, &["delete", "before-attack"]);
    assert!(!snap("jobs").exists());
    assert!(names_in(&v.path(".snapshots")).is_empty());
    let list = snapshot(&v, &["list", "--json"]);
    assert!(list["snapshots"].as_array().unwrap().is_empty(), "{list}");
    gc(&v);
    check_files(&v, &files, "the rolled-back files after the snapshot went");
    v.stop();
    v.start();
    check_files(&v, &files, "the rolled-back files after a restart");
    v.stop();
}

#[test]
fn s3_snapshot_outlives_a_ransomware_sweep_gc_and_a_recovery() {
    let s3 = shared_s3();
    let prefix = unique_prefix("snapshots");
    let mut v = TestVolume::new(&format!(
        "{SMALL}\n[gc]\ninterval_minutes = 0\ngrace_minutes = 0\nmin_live_percent = 50\n{}",
        s3_section(&s3, &prefix)
    ));
    v.start();
    let files = backup_tree(&v);
    snapshot(&v, &["create", "nightly"]);
    let live = ransomware(&v, &files);
    let snapped = in_snapshot("nightly", &files);

    // GC cannot take what the snapshot holds, locally or off-site.
    gc_until_settled(&v);
    check_files(&v, &snapped, "the snapshot after GC");

    // The bucket alone brings the snapshot back.
    lose_and_recover(&mut v);
    check_files(
        &v,
        &snapped,
        "the snapshot after a recovery from the bucket",
    );
    check_files(&v, &live, "the live files after a recovery from the bucket");
    let list = snapshot(&v, &["list", "--json"]);
    let names: Vec<&str> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["nightly"]);

    // Deleting it frees what only it held, off-site too.
    gc_until_settled(&v);
    let before: u64 = pack_objects(&s3, &prefix).values().sum();
    snapshot(&v, &["delete", "nightly"]);
    gc_until_settled(&v);
    let after: u64 = pack_objects(&s3, &prefix).values().sum();
    eprintln!("bucket: {before} bytes of packs with the snapshot, {after} without");
    assert!(
        after + (3 << 20) <= before,
        "deleting the snapshot freed too little: {before} -> {after}"
    );
    check_files(&v, &live, "the live files after the snapshot went");
    v.stop();
}

#[test]
fn scheduled_snapshots_start_at_once_and_show_on_the_status_page() {
    let mut v = TestVolume::new(
        "[web]\nlisten = \"127.0.0.1:0\"\n\n[snapshots]\ninterval_minutes = 60\nkeep_last = 2\n",
    );
    v.start();
    // The daemon takes the first one at start: none was due before.
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = status(&v)["snapshots"].clone();
        if n(&st, "count") == 1 {
            break st;
        }
        assert!(Instant::now() < deadline, "no scheduled snapshot: {st}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(n(&st, "every_minutes"), 60, "{st}");
    assert!(st["last_error"].is_null(), "{st}");
    let name = st["newest_name"].as_str().unwrap().to_string();
    assert!(name.starts_with("auto-"), "{st}");
    let age = meta_now() - n(&st, "newest_unix") as i64;
    assert!((0..60).contains(&age), "{st}");
    assert_eq!(names_in(&v.path(".snapshots")), std::slice::from_ref(&name));

    let metrics = web(&v, 1).get("/metrics").text();
    let sample = |m: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{m} ")))
            .unwrap_or_else(|| panic!("no {m} in the metrics"))
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(sample("tiergate_snapshots"), 1.0);
    assert_eq!(
        sample("tiergate_snapshot_newest_timestamp_seconds"),
        n(&st, "newest_unix") as f64
    );

    // One by hand, named by the time; the schedule never prunes it.
    let by_hand = snapshot(&v, &["create", "--json"]);
    let hand = by_hand["name"].as_str().unwrap().to_string();
    assert!(hand.starts_with("manual-"), "{by_hand}");
    let list = snapshot(&v, &["list", "--json"]);
    let kinds: Vec<(String, bool)> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["scheduled"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, [(name, true), (hand, false)]);
    assert_eq!(n(&status(&v)["snapshots"], "count"), 2);
    v.stop();
}

fn meta_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

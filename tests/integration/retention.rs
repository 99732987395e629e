//! Retention: the tenant quota through both front-ends (statfs, ENOSPC, 507, a backup client
//! running into it), garbage collection against the real Garage server (dead packs dropped,
//! sparse ones rewritten, objects deleted off-site only when safe, SIGKILLs in the middle), and
//! a backup-retention simulation over many days with a recovery from the bucket at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tiergate::backend::{layout, list_all};

use crate::common::{
    random_bytes, s3_section, shared_s3, text, tiergate, unique_prefix, TestVolume, S3,
};
use crate::tiering::{backend_of, local_pack_bytes, rt, sync_ok};
use crate::webdav::share;

/// Small chunks and packs, so a few MiB make many packs (GC works per pack).
pub(crate) const SMALL: &str =
    "pack_size_mib = 1\n\n[chunking]\nmin_size = 16384\navg_size = 65536\n\
                     max_size = 262144\n";

/// `tiergate gc --json`, asserting success.
pub(crate) fn gc(v: &TestVolume) -> serde_json::Value {
    let o = tiergate(&["gc", "--json"], &v.config);
    assert!(o.status.success(), "gc: {}\n{}", text(&o), v.log_tail());
    serde_json::from_slice(&o.stdout).unwrap()
}

pub(crate) fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

fn waiting(r: &serde_json::Value) -> u64 {
    n(r, "waiting_grace") + n(r, "waiting_metadata") + n(r, "waiting_checkpoint")
}

/// Sync and collect until no dropped pack waits to leave the store (grace 0: a pack waits only
/// for the metadata and a checkpoint that no longer name it). Returns the pass reports.
pub(crate) fn gc_until_settled(v: &TestVolume) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut reports = Vec::new();
    loop {
        sync_ok(v, "60");
        let r = gc(v);
        let done = waiting(&r) == 0;
        reports.push(r);
        if done {
            return reports;
        }
        assert!(
            Instant::now() < deadline,
            "dropped packs still wait: {reports:?}\n{}",
            v.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Pack objects in the bucket under `prefix`.
pub(crate) fn pack_objects(s3: &S3, prefix: &str) -> BTreeMap<String, u64> {
    let b = backend_of(s3, prefix);
    rt().block_on(list_all(&b, layout::PACKS_PREFIX, 1000))
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect()
}

/// Local pack files of a volume.
fn local_packs(v: &TestVolume) -> BTreeSet<String> {
    std::fs::read_dir(v.vol_dir().join("packs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pack"))
        .collect()
}

pub(crate) fn status(v: &TestVolume) -> serde_json::Value {
    let o = tiergate(&["status", "--json"], &v.config);
    assert!(o.status.success(), "status: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Destroys the volume directory, recovers it from the bucket and serves it again.
pub(crate) fn lose_and_recover(v: &mut TestVolume) {
    v.stop();
    std::fs::remove_dir_all(v.vol_dir()).unwrap();
    let o = tiergate(&["recover"], &v.config);
    assert!(o.status.success(), "recover: {}", text(&o));
    v.start_with(&["--take-over"]);
}

pub(crate) fn check_files(v: &TestVolume, files: &BTreeMap<String, Vec<u8>>, when: &str) {
    for (name, data) in files {
        let got = std::fs::read(v.path(name))
            .unwrap_or_else(|e| panic!("{when}: reading {name}: {e}\n{}", v.log_tail()));
        assert!(got == *data, "{when}: {name} differs");
    }
}

// ------------------------------------------------------------------------------------ quota

#[test]
fn quota_limits_writes_through_both_front_ends_and_statfs_reports_it() {
    const QUOTA: u64 = 24 << 20;
    let mut v = TestVolume::new("\n[quota]\nlimit = \"24MiB\"\nwarn_percent = 50\n");
    v.start();
    let d = share(&v);

    // statfs: total = the quota, free = the quota minus what is stored.
    let s = nix::sys::statvfs::statvfs(&v.mnt).unwrap();
    let fr = s.fragment_size() as u64;
    assert_eq!(s.blocks() as u64 * fr, QUOTA);
    assert!(s.blocks_available() as u64 * fr > QUOTA - (1 << 20));

    // 14 MiB of incompressible data fits, durably.
    let keep = random_bytes(1, 14 << 20);
    {
        let mut f = std::fs::File::create(v.path("keep.bin")).unwrap();
        f.write_all(&keep).unwrap();
        f.sync_all().unwrap();
    }
    let s = nix::sys::statvfs::statvfs(&v.mnt).unwrap();
    let free = s.blocks_available() as u64 * s.fragment_size() as u64;
    assert!(
        free < QUOTA - (14 << 20) && free > QUOTA - (15 << 20),
        "free {free} after 14 MiB stored"
    );
    let st = status(&v);
    assert_eq!(st["space"]["quota_bytes"], QUOTA);
    assert_eq!(st["space"]["quota_warning"], true, "{}", st["space"]);

    // Past the quota through the mount: ENOSPC, and what is stored stays intact.
    let mut f = std::fs::File::create(v.path("over.bin")).unwrap();
    let mut err = None;
    for i in 0..20u64 {
        if let Err(e) = f
            .write_all(&random_bytes(100 + i, 1 << 20))
            .and_then(|()| f.sync_all())
        {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("20 MiB more went past a 24 MiB quota");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    assert!(
        v.log_tail().contains("tenant quota reached"),
        "{}",
        v.log_tail()
    );
    assert!(std::fs::read(v.path("keep.bin")).unwrap() == keep);

    // Through the share: announced too large, refused before the body (507).
    let r = d.put("/big.bin", &random_bytes(2, 12 << 20));
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(d.get("/keep.bin").body, keep);

    // Deleting data gives the space back at once (its chunks are no longer stored).
    std::fs::remove_file(v.path("over.bin")).unwrap();
    std::fs::remove_file(v.path("keep.bin")).unwrap();
    let r = d.put("/after.bin", &random_bytes(3, 12 << 20));
    assert_eq!(r.status, 201, "{}", r.text());
    let st = status(&v);
    assert!(
        n(&st["space"], "quota_used_bytes") < 13 << 20,
        "{}",
        st["space"]
    );
    v.stop();
}

/// rsync (a backup client that copies trees) runs into the quota: it fails with "No space left
/// on device" and a non-zero exit, and the earlier backup stays byte-identical. (restic retries
/// a failed save with backoff for up to 15 minutes before it gives up, too long for a test.)
#[test]
fn a_backup_client_running_into_the_quota_fails_cleanly_and_keeps_earlier_backups() {
    let mut v = TestVolume::new("\n[quota]\nlimit = \"40MiB\"\n");
    v.start();
    let src = v.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4u64 {
        std::fs::write(src.join(format!("a{i}.bin")), random_bytes(10 + i, 4 << 20)).unwrap();
    }
    let rsync = |to: &str| {
        Command::new("rsync")
            .args([
                "-a",
                &format!("{}/", src.display()),
                v.path(to).to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("rsync (installed by scripts/install-test-deps.sh)")
    };
    let o = rsync("monday");
    assert!(o.status.success(), "first backup: {}", text(&o));
    // A second backup of 48 MiB more does not fit: rsync fails and says why.
    for i in 0..12u64 {
        std::fs::write(src.join(format!("b{i}.bin")), random_bytes(20 + i, 4 << 20)).unwrap();
    }
    let o = rsync("tuesday");
    assert!(!o.status.success(), "a backup past the quota succeeded");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    // The first backup is intact, byte for byte, also after a restart.
    v.stop();
    v.start();
    for i in 0..4u64 {
        assert!(
            std::fs::read(v.path(&format!("monday/a{i}.bin"))).unwrap()
                == random_bytes(10 + i, 4 << 20),
            "monday/a{i}.bin differs"
        );
    }
    v.stop();
}

// ------------------------------------------------------------------------------ garbage collection

#[test]
fn s3_gc_drops_dead_packs_rewrites_sparse_ones_and_deletes_objects_when_safe() {
    let s3 = shared_s3();
    let prefix = unique_prefix("gc");
    let mut v = TestVolume::new(&format!(
        "{SMALL}\n[gc]\ninterval_minutes = 0\ngrace_minutes = 0\nmin_live_percent = 60\n\
         max_unused_percent = 100\n{}",
        s3_section(&s3, &prefix)
    ));
    v.start();
    let mut files = BTreeMap::new();
    // Two files written interleaved, so their chunks share packs; and one written alone.
    {
        let mut a = std::fs::File::create(v.path("a.bin")).unwrap();
        let mut b = std::fs::File::create(v.path("b.bin")).unwrap();
        let (da, db) = (random_bytes(1, 6 << 20), random_bytes(2, 6 << 20));
        for i in 0..24 {
            let r = i * (256 << 10)..(i + 1) * (256 << 10);
            a.write_all(&da[r.clone()]).unwrap();
            a.sync_all().unwrap();
            b.write_all(&db[r]).unwrap();
            b.sync_all().unwrap();
        }
        files.insert("a.bin".to_string(), da);
        files.insert("b.bin".to_string(), db);
    }
    let doomed = random_bytes(3, 8 << 20);
    std::fs::write(v.path("doomed.bin"), &doomed).unwrap();
    sync_ok(&v, "120");
    let before = pack_objects(&s3, &prefix);
    assert!(before.len() >= 16, "{before:?}");

    // No file is deleted yet: a pass drops nothing. (The tails each fsync cut short and the
    // next write re-cut are a little garbage; this test turns the bound on it off, see
    // gc_rewrites_fuller_packs_while_the_unused_share_is_over_its_bound.)
    let r = gc(&v);
    assert_eq!(n(&r, "packs_dropped"), 0, "{r}");
    assert_eq!(n(&r, "packs_rewritten"), 0, "{r}");

    std::fs::remove_file(v.path("doomed.bin")).unwrap();
    std::fs::remove_file(v.path("b.bin")).unwrap();
    files.remove("b.bin");
    let stored_before = n(&status(&v)["space"], "stored_bytes");
    let reports = gc_until_settled(&v);
    let first = &reports[0];
    assert!(n(first, "packs_dropped") >= 6, "{first}");
    assert!(n(first, "packs_rewritten") >= 2, "{first}");
    assert!(n(first, "local_bytes_freed") >= 8 << 20, "{first}");
    let deleted: u64 = reports.iter().map(|r| n(r, "objects_deleted")).sum();
    let dropped: u64 = reports.iter().map(|r| n(r, "packs_dropped")).sum();
    assert_eq!(deleted, dropped, "{reports:?}");
    // The bucket lost exactly the dropped packs' objects and gained the rewritten data's.
    let after = pack_objects(&s3, &prefix);
    let gone: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    assert_eq!(gone.len() as u64, deleted, "{before:?}\n{after:?}");
    let bytes_before: u64 = before.values().sum();
    let bytes_after: u64 = after.values().sum();
    assert!(
        bytes_after < bytes_before - (10 << 20),
        "{bytes_before} -> {bytes_after} bytes in the bucket"
    );
    // Live stored bytes are what they were minus the deleted files' (the copies replaced
    // the originals, they did not add to them).
    let stored_after = n(&status(&v)["space"], "stored_bytes");
    assert!(
        stored_after <= stored_before,
        "{stored_before} -> {stored_after}"
    );
    // Every kept file reads back from the store, after a restart, and after a recovery.
    let o = tiergate(&["evict"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
    check_files(&v, &files, "after gc and eviction");
    v.stop();
    v.start();
    check_files(&v, &files, "after a restart");
    lose_and_recover(&mut v);
    check_files(&v, &files, "after a recovery from the bucket");
    let o = tiergate(&["sync", "--timeout", "60"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
    v.stop();
    let o = tiergate(&["verify", "--remote"], &v.config);
    assert!(o.status.success(), "verify after gc: {}", text(&o));
}

/// Packs three quarters live are far above `min_live_percent` (0 here), yet their dead quarters
/// add up: with `max_unused_percent = 10` GC rewrites the emptiest of them until the dead bytes
/// left are at most a tenth of the pack bytes, and no more; with the bound off (100) it
/// rewrites nothing. Embedded store: the rule is the core's.
#[test]
fn gc_rewrites_fuller_packs_while_the_unused_share_is_over_its_bound() {
    const ROUNDS: usize = 16;
    const KEEP: usize = 768 << 10;
    const GONE: usize = 256 << 10;
    for bound in [100u64, 10] {
        let mut v = TestVolume::new(&format!(
            "{SMALL}\n[gc]\ninterval_minutes = 0\ngrace_minutes = 0\nmin_live_percent = 0\n\
             max_unused_percent = {bound}\n"
        ));
        v.start();
        let keep = random_bytes(21, ROUNDS * KEEP);
        {
            // Interleaved with fsyncs, so nearly every pack holds both files, about 3:1.
            let gone = random_bytes(22, ROUNDS * GONE);
            let mut a = std::fs::File::create(v.path("keep.bin")).unwrap();
            let mut b = std::fs::File::create(v.path("gone.bin")).unwrap();
            for i in 0..ROUNDS {
                a.write_all(&keep[i * KEEP..(i + 1) * KEEP]).unwrap();
                a.sync_all().unwrap();
                b.write_all(&gone[i * GONE..(i + 1) * GONE]).unwrap();
                b.sync_all().unwrap();
            }
        }
        sync_ok(&v, "60");
        std::fs::remove_file(v.path("gone.bin")).unwrap();
        let reports = gc_until_settled(&v);
        let first = &reports[0];
        let (rewritten, copied) = (n(first, "packs_rewritten"), n(first, "bytes_rewritten"));
        let left = n(first, "garbage_left_bytes");
        if bound == 100 {
            assert_eq!(rewritten, 0, "{first}");
            // Most of the deleted file is still there, in packs kept as they were.
            assert!(left >= (ROUNDS * GONE / 2) as u64, "{first}");
        } else {
            assert!(rewritten >= 2, "{first}");
            let packs = local_pack_bytes(&v.vol_dir());
            assert!(
                left * 100 <= packs * bound,
                "{left} dead of {packs}: {first}"
            );
            // Emptiest first, and only until the bound holds: not every live byte moved.
            assert!(copied < (ROUNDS * KEEP) as u64 * 9 / 10, "{first}");
            assert!(left > 0, "{first}");
        }
        let o = tiergate(&["evict"], &v.config);
        assert!(o.status.success(), "{}", text(&o));
        let got = std::fs::read(v.path("keep.bin")).unwrap();
        assert!(got == keep, "keep.bin differs after gc (bound {bound})");
        v.stop();
        let o = tiergate(&["verify"], &v.config);
        assert!(o.status.success(), "verify after gc: {}", text(&o));
    }
}

#[test]
fn s3_gc_waits_out_the_grace_period_before_deleting_objects() {
    let s3 = shared_s3();
    let prefix = unique_prefix("gc-grace");
    let mut v = TestVolume::new(&format!(
        "{SMALL}\n[gc]\ninterval_minutes = 0\ngrace_minutes = 600\n{}",
        s3_section(&s3, &prefix)
    ));
    v.start();
    std::fs::write(v.path("x.bin"), random_bytes(5, 4 << 20)).unwrap();
    sync_ok(&v, "60");
    let before = pack_objects(&s3, &prefix);
    std::fs::remove_file(v.path("x.bin")).unwrap();
    sync_ok(&v, "60");
    let r = gc(&v);
    assert!(n(&r, "packs_dropped") >= 3, "{r}");
    assert_eq!(n(&r, "objects_deleted"), 0, "{r}");
    assert_eq!(waiting(&r), n(&r, "packs_dropped"), "{r}");
    assert_eq!(n(&r, "waiting_grace"), n(&r, "packs_dropped"), "{r}");
    // Dropped locally at once; still in the bucket for a recovery that may be running.
    assert!(
        local_packs(&v).len() < before.len(),
        "{:?}",
        local_packs(&v)
    );
    assert_eq!(pack_objects(&s3, &prefix), before);
    let st = status(&v);
    assert_eq!(n(&st["gc"], "packs_waiting"), waiting(&r), "{}", st["gc"]);
    v.stop();
}

/// SIGKILLs while a slow (rate-limited) pass rewrites packs and deletes objects: after each
/// restart every file is intact, and a final pass plus a recovery from the bucket still find
/// every byte.
#[test]
fn s3_gc_killed_mid_pass_loses_nothing() {
    let s3 = shared_s3();
    let prefix = unique_prefix("gc-crash");
    let mut v = TestVolume::new(&format!(
        "{SMALL}\n[gc]\ninterval_minutes = 0\ngrace_minutes = 0\nmin_live_percent = 90\n\
         max_rate = \"1MiB\"\n{}",
        s3_section(&s3, &prefix)
    ));
    v.start();
    let mut files = BTreeMap::new();
    for round in 0..3u64 {
        // Files interleaved in packs, then half of them deleted: sparse packs to rewrite.
        let mut handles: Vec<(String, std::fs::File, Vec<u8>)> = (0..4)
            .map(|i| {
                let name = format!("r{round}-{i}.bin");
                let f = std::fs::File::create(v.path(&name)).unwrap();
                (name, f, random_bytes(round * 10 + i, 2 << 20))
            })
            .collect();
        for piece in 0..8usize {
            for (_, f, data) in handles.iter_mut() {
                f.write_all(&data[piece * (256 << 10)..(piece + 1) * (256 << 10)])
                    .unwrap();
                f.sync_all().unwrap();
            }
        }
        for (i, (name, _, data)) in handles.into_iter().enumerate() {
            if i % 2 == 0 {
                std::fs::remove_file(v.path(&name)).unwrap();
            } else {
                files.insert(name, data);
            }
        }
        sync_ok(&v, "60");
        // A pass in the background, killed part-way (it paces itself to 1 MiB/s).
        let mut pass = Command::new(env!("CARGO_BIN_EXE_tiergate"))
            .args(["gc", "--config", v.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700 + round * 600));
        v.kill();
        let _ = pass.wait();
        v.start();
        check_files(&v, &files, &format!("after the kill in round {round}"));
    }
    let reports = gc_until_settled(&v);
    assert!(
        reports.iter().map(|r| n(r, "packs_dropped")).sum::<u64>() > 0,
        "{reports:?}"
    );
    check_files(&v, &files, "after the final pass");
    lose_and_recover(&mut v);
    check_files(&v, &files, "after a recovery from the bucket");
    v.stop();
}

// ------------------------------------------------------------------------------ the simulation

/// Daily backups for two simulated weeks: a full on day 0 and day 7, incrementals in between
/// (about 3% of the blocks of a 16 MiB "disk" change per day), each restore point a file;
/// retention keeps the newest 5 restore points plus the full they build on, deleting older
/// ones every day, and GC runs after each day (time is accelerated: no grace period). The
/// bucket's pack bytes must stay bounded (not grow with the days), and after a recovery from
/// the bucket every surviving restore point reads back byte-identical.
#[test]
fn s3_backup_retention_simulation_stays_bounded_and_recovers() {
    const DISK: usize = 16 << 20;
    const BLOCK: usize = 64 << 10;
    let s3 = shared_s3();
    let prefix = unique_prefix("retention");
    let mut v = TestVolume::new(&format!(
        "{SMALL}\n[gc]\ninterval_minutes = 0\ngrace_minutes = 0\nmin_live_percent = 50\n{}",
        s3_section(&s3, &prefix)
    ));
    v.start();
    std::fs::create_dir(v.path("backups")).unwrap();
    let mut disk = random_bytes(7, DISK);
    // name → content of the restore points that exist now, oldest first
    let mut points: Vec<(String, Vec<u8>)> = Vec::new();
    let mut bucket_bytes = Vec::new();
    for day in 0..14u64 {
        // The day's changes to the disk: ~3% of its blocks, deterministic.
        let changed: Vec<usize> = (0..DISK / BLOCK)
            .filter(|b| (b * 7919 + day as usize * 104_729) % 100 < 3)
            .collect();
        for &b in &changed {
            disk[b * BLOCK..(b + 1) * BLOCK]
                .copy_from_slice(&random_bytes(1000 + day * 1000 + b as u64, BLOCK));
        }
        let (name, content) = if day % 7 == 0 {
            (format!("backups/day{day:02}.full"), disk.clone())
        } else {
            // An incremental: the changed blocks with their offsets.
            let mut inc = Vec::new();
            for &b in &changed {
                inc.extend_from_slice(&(b as u64).to_le_bytes());
                inc.extend_from_slice(&disk[b * BLOCK..(b + 1) * BLOCK]);
            }
            (format!("backups/day{day:02}.inc"), inc)
        };
        let f = std::fs::File::create(v.path(&name)).unwrap();
        f.write_all_at(&content, 0).unwrap();
        f.sync_all().unwrap();
        points.push((name, content));
        // Retention: keep the newest 5 points and the full the oldest kept one builds on.
        while points.len() > 5 {
            let oldest_kept = points.len() - 5;
            let base = (0..=oldest_kept)
                .rev()
                .find(|&i| points[i].0.ends_with(".full"))
                .unwrap_or(0);
            let victim = (0..oldest_kept).find(|&i| i != base);
            let Some(victim) = victim else { break };
            let (name, _) = points.remove(victim);
            std::fs::remove_file(v.path(&name)).unwrap();
        }
        gc_until_settled(&v);
        let bytes: u64 = pack_objects(&s3, &prefix).values().sum();
        eprintln!(
            "day {day}: {} restore points, {bytes} bytes of packs in the bucket",
            points.len()
        );
        bucket_bytes.push(bytes);
    }
    // Bounded: the second week costs no more than the first (the first full is gone by then,
    // the second replaced it), and never more than two fulls and the incrementals kept.
    let peak_first = *bucket_bytes[..7].iter().max().unwrap();
    let last = *bucket_bytes.last().unwrap();
    assert!(
        last <= peak_first + (DISK as u64 / 2),
        "bucket grew: {bucket_bytes:?}"
    );
    assert!(
        bucket_bytes.iter().all(|&b| b < 3 * DISK as u64),
        "bucket holds more than the restore points kept: {bucket_bytes:?}"
    );
    let expected: BTreeMap<String, Vec<u8>> = points.into_iter().collect();
    lose_and_recover(&mut v);
    check_files(&v, &expected, "after a recovery from the bucket");
    let left: BTreeSet<String> = std::fs::read_dir(v.path("backups"))
        .unwrap()
        .flatten()
        .map(|e| format!("backups/{}", e.file_name().to_string_lossy()))
        .collect();
    assert_eq!(left, expected.keys().cloned().collect::<BTreeSet<_>>());
    v.stop();
}

// ------------------------------------------------------------------------------ recycle bin

fn recycle_list(v: &TestVolume) -> Vec<serde_json::Value> {
    let o = tiergate(&["recycle", "list", "--json"], &v.config);
    assert!(o.status.success(), "recycle list: {}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    r["files"].as_array().unwrap().clone()
}

/// Deleted and replaced files go to the recycle bin: invisible in the share, counted against
/// the quota, listed and restorable, kept through GC, and gone for good only once
/// their days are up (here: turned off, which empties the bin at the next pass).
#[test]
fn recycle_bin_keeps_deleted_and_replaced_files_and_restores_them() {
    let mut v = TestVolume::new(&format!(
        "{SMALL}\n[recycle]\ndays = 7\n[quota]\nlimit = \"64MiB\"\n[gc]\ninterval_minutes = 0\n\
         grace_minutes = 0\n"
    ));
    v.start();
    let d = share(&v);
    std::fs::create_dir_all(v.path("jobs/daily")).unwrap();
    let (one, two, old) = (
        random_bytes(31, 3 << 20),
        random_bytes(32, 2 << 20),
        random_bytes(33, 1 << 20),
    );
    std::fs::write(v.path("jobs/daily/one.vbk"), &one).unwrap();
    std::fs::write(v.path("jobs/daily/two.vib"), &two).unwrap();
    assert_eq!(d.put("/jobs/replaced.bin", &old).status, 201);
    // A ransomware-like sweep: one file deleted, one replaced through the share, one renamed
    // over through the mount.
    std::fs::remove_file(v.path("jobs/daily/one.vbk")).unwrap();
    assert_eq!(d.put("/jobs/replaced.bin", b"encrypted!").status, 204);
    std::fs::write(v.path("jobs/daily/tmp"), b"also encrypted").unwrap();
    std::fs::rename(v.path("jobs/daily/tmp"), v.path("jobs/daily/two.vib")).unwrap();
    assert!(!v.path("jobs/daily/one.vbk").exists());
    assert_eq!(
        std::fs::read(v.path("jobs/daily/two.vib")).unwrap(),
        b"also encrypted"
    );

    let list = recycle_list(&v);
    let paths: BTreeSet<&str> = list.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        BTreeSet::from([
            "/jobs/daily/one.vbk",
            "/jobs/daily/two.vib",
            "/jobs/replaced.bin"
        ]),
        "{list:?}"
    );
    // Shown apart from the tenant's data, and counted against the quota (the provider stores
    // it); statfs offers it as available space (a write would purge it).
    let deadline = Instant::now() + Duration::from_secs(20);
    let space = loop {
        let s = status(&v)["space"].clone();
        if n(&s, "recycle_files") == 3 {
            break s;
        }
        assert!(Instant::now() < deadline, "recycle bin never counted: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        n(&space, "recycle_logical_bytes"),
        (6 << 20) as u64,
        "{space}"
    );
    assert!(n(&space, "recycle_stored_bytes") >= 6 << 20, "{space}");
    assert!(
        n(&space, "quota_used_bytes") >= n(&space, "recycle_stored_bytes"),
        "{space}"
    );
    let sfs = nix::sys::statvfs::statvfs(&v.mnt).unwrap();
    let avail = sfs.blocks_available() as u64 * sfs.fragment_size() as u64;
    let free = sfs.blocks_free() as u64 * sfs.fragment_size() as u64;
    assert!(avail >= free + (6 << 20), "avail {avail}, free {free}");

    // GC keeps what the bin holds.
    let r = gc(&v);
    assert_eq!(n(&r, "recycled_purged"), 0, "{r}");
    let ino_of = |path: &str| {
        list.iter()
            .find(|f| f["path"] == path)
            .map(|f| f["ino"].as_u64().unwrap())
            .unwrap()
    };
    // Back where it was; where the name is taken, beside it; or where asked.
    let o = tiergate(
        &[
            "recycle",
            "restore",
            &ino_of("/jobs/daily/one.vbk").to_string(),
        ],
        &v.config,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(v.path("jobs/daily/one.vbk")).unwrap() == one);
    let o = tiergate(
        &[
            "recycle",
            "restore",
            &ino_of("/jobs/daily/two.vib").to_string(),
        ],
        &v.config,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(v.path("jobs/daily/two.vib.restored-1")).unwrap() == two);
    let ino = ino_of("/jobs/replaced.bin").to_string();
    let o = tiergate(
        &[
            "recycle",
            "restore",
            &ino,
            "--to",
            "jobs/replaced.before-attack",
        ],
        &v.config,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(d.get("/jobs/replaced.before-attack").body, old);
    assert!(recycle_list(&v).is_empty());
    let o = tiergate(&["recycle", "restore", &ino], &v.config);
    assert!(!o.status.success(), "restored twice");

    // The bin survives a restart; with the bin turned off, the next pass empties it.
    std::fs::remove_file(v.path("jobs/daily/one.vbk")).unwrap();
    v.stop();
    v.start();
    assert_eq!(recycle_list(&v).len(), 1);
    v.stop();
    let cfg = std::fs::read_to_string(&v.config)
        .unwrap()
        .replace("days = 7", "days = 0");
    std::fs::write(&v.config, cfg).unwrap();
    v.start();
    let r = gc(&v);
    assert_eq!(n(&r, "recycled_purged"), 1, "{r}");
    assert_eq!(n(&r, "recycled_purged_bytes"), 3 << 20, "{r}");
    assert!(n(&r, "packs_dropped") >= 2, "{r}");
    assert!(recycle_list(&v).is_empty());
    v.stop();
}

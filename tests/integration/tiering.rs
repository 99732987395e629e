//! Tiering end to end against a real Garage server on 127.0.0.1: write through the mount,
//! `tiergate sync`, evict everything, read back through FUSE and WebDAV; an S3 outage while
//! writing; cache pressure at 3× the cache size; the upload bandwidth limit; wrong
//! credentials, a missing bucket, an unreachable endpoint; truncated and corrupted objects.
//!
//! Like tests/integration/backend.rs these read `TIERGATE_TEST_S3_*` (the shared server that
//! `scripts/test.sh` starts) and fail without it. The outage test starts a private Garage of
//! its own through `scripts/garage.sh`, so it can stop and restart it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tiergate::backend::s3::S3Backend;
use tiergate::backend::{layout, list_all, Backend};
use tiergate::config::{S3Config, Secret};
use tiergate::meta::PackState;
use tiergate::volume::{Volume, VolumeOptions};

use crate::common::{
    random_bytes, s3_section, shared_s3, text, tiergate, unique_prefix, TestVolume, PASSPHRASE, S3,
};
use crate::webdav::share;

/// The same store, for the test to look at what tiergate put there.
pub(crate) fn backend_of(s3: &S3, prefix: &str) -> S3Backend {
    let mut c = S3Config::new(Some(&s3.endpoint), &s3.region, &s3.bucket);
    c.path_style = true;
    c.access_key_id = Some(s3.key_id.clone());
    c.secret_access_key = Some(Secret(s3.secret.clone()));
    c.prefix = prefix.to_string();
    S3Backend::new(&c).unwrap()
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `tiergate sync`, asserting success; returns its output.
pub(crate) fn sync_ok(v: &TestVolume, timeout: &str) -> String {
    let o = tiergate(&["sync", "--timeout", timeout], &v.config);
    assert!(
        o.status.success(),
        "sync failed: {}\n{}",
        text(&o),
        v.log_tail()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The daemon's tiering status.
fn status(v: &TestVolume) -> serde_json::Value {
    tiergate::control::call(&v.vol_dir(), "status").unwrap()
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Pack files in the local cache: whole packs and fetched ranges (allocated bytes).
pub(crate) fn local_pack_bytes(vol_dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for sub in ["packs", "cache"] {
        if let Ok(rd) = std::fs::read_dir(vol_dir.join(sub)) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    total += m.blocks() * 512;
                }
            }
        }
    }
    total
}

/// The pack table of a stopped volume.
fn pack_states(v: &TestVolume) -> Vec<(u64, PackState, u64)> {
    let vol = Volume::open(&v.vol_dir(), PASSPHRASE, VolumeOptions::default()).unwrap();
    vol.pack_table()
        .unwrap()
        .into_iter()
        .map(|(id, r)| (id, r.state, r.size))
        .collect()
}

/// A tree of files written through the mount: name → content.
fn write_tree(v: &TestVolume, seed: u64, big: usize) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("big.bin".to_string(), random_bytes(seed, big)),
        (
            "notes.txt".to_string(),
            (0..200_000u32)
                .flat_map(|i| format!("line {i} of a compressible log file\n").into_bytes())
                .collect(),
        ),
    ];
    std::fs::create_dir_all(v.path("small")).unwrap();
    for i in 0..40u64 {
        let len = 1000 + (i as usize * 7919) % 100_000;
        files.push((format!("small/{i}.dat"), random_bytes(seed + 1000 + i, len)));
    }
    for (name, data) in &files {
        std::fs::write(v.path(name), data).unwrap();
    }
    files
}

fn check_tree_via_mount(v: &TestVolume, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let got = std::fs::read(v.path(name))
            .unwrap_or_else(|e| panic!("reading {name}: {e}\n{}", v.log_tail()));
        assert!(got == *data, "{name} differs after the round trip");
    }
}

#[test]
fn s3_write_sync_evict_and_read_back_through_both_front_ends() {
    let s3 = shared_s3();
    let prefix = unique_prefix("roundtrip");
    let mut v = TestVolume::new(&format!(
        "pack_size_mib = 8\n[cache]\nmax_size = \"1GiB\"\n{}",
        s3_section(&s3, &prefix)
    ));
    v.start();
    let files = write_tree(&v, 7, 96 << 20);
    let logical: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();

    let out = sync_ok(&v, "300");
    assert!(out.contains("off-site"), "{out}");
    // An object store is off-site (a local directory store is not: web.rs).
    let report = tiergate::control::call(&v.vol_dir(), "report").unwrap();
    assert_eq!(report["store"]["offsite"], true, "{}", report["store"]);
    assert_eq!(report["store"]["same_disk"], false, "{}", report["store"]);
    let st = status(&v);
    assert_eq!(num(&st, "queued_bytes"), 0, "{st}");
    assert_eq!(num(&st, "upload_failures"), 0, "{st}");

    // The bucket holds one object per pack, each as large as the local pack.
    let store = backend_of(&s3, &prefix);
    let objects = rt()
        .block_on(list_all(&store, layout::PACKS_PREFIX, 1000))
        .unwrap();
    let uploaded = num(&st, "uploaded_bytes");
    let stored: u64 = objects.iter().map(|o| o.size).sum();
    assert_eq!(stored, uploaded, "objects in the bucket vs bytes uploaded");
    let puts = num(&st, "put_requests");
    let per_gib = puts as f64 / (logical as f64 / (1u64 << 30) as f64);
    eprintln!(
        "round trip: {} MiB written, {} packs / {} MiB off-site, {} PUT requests = {:.0} per GiB \
         written (8 MiB packs)",
        logical >> 20,
        objects.len(),
        stored >> 20,
        puts,
        per_gib
    );
    // Packs are sealed at 8 MiB; only the last one (sealed by sync) may be short.
    let full = objects.iter().filter(|o| o.size >= 8 << 20).count();
    assert!(
        full + 1 >= objects.len(),
        "too many short packs: {objects:?}"
    );
    assert_eq!(
        puts,
        objects.len() as u64,
        "one PUT per pack below the multipart threshold"
    );

    // Evict everything: no pack data stays local.
    let o = tiergate(&["evict"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        local_pack_bytes(&v.vol_dir()) < (1 << 20),
        "local packs left after evict: {} bytes",
        local_pack_bytes(&v.vol_dir())
    );

    // Restart (empties the kernel's and the fetch cache), read back through FUSE.
    v.stop();
    let states = pack_states(&v);
    assert!(
        states.iter().all(|(_, s, _)| *s == PackState::Remote),
        "{states:?}"
    );
    v.start();
    check_tree_via_mount(&v, &files);
    let st = status(&v);
    assert!(num(&st, "get_requests") > 0, "{st}");
    assert!(num(&st, "fetched_bytes") >= uploaded / 2, "{st}");

    // Evict again and read back through WebDAV.
    let o = tiergate(&["evict"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
    let before = num(&status(&v), "fetched_bytes");
    let dav = share(&v);
    for (name, data) in &files {
        let r = dav.get(&format!("/{name}"));
        assert_eq!(r.status, 200, "GET {name}");
        assert!(r.body == *data, "{name} differs through WebDAV");
    }
    assert!(num(&status(&v), "fetched_bytes") > before);
    v.stop();
}

/// A Garage server of the test's own, which it can stop and start again.
struct PrivateGarage {
    s3: S3,
    pid: i32,
    /// The restarted server (the first one is not our child).
    child: Option<std::process::Child>,
    dir: PathBuf,
}

impl PrivateGarage {
    fn start() -> PrivateGarage {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/garage.sh");
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "unset GARAGE_PID GARAGE_DIR; source {} start >&2 && env",
                script.display()
            ))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "starting a private garage failed");
        let env = String::from_utf8_lossy(&out.stdout);
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("garage.sh did not export {name}"))
                .to_string()
        };
        PrivateGarage {
            s3: S3 {
                endpoint: var("TIERGATE_TEST_S3_ENDPOINT"),
                region: var("TIERGATE_TEST_S3_REGION"),
                bucket: var("TIERGATE_TEST_S3_BUCKET"),
                key_id: var("TIERGATE_TEST_S3_ACCESS_KEY_ID"),
                secret: var("TIERGATE_TEST_S3_SECRET_ACCESS_KEY"),
            },
            pid: var("GARAGE_PID").parse().unwrap(),
            child: None,
            dir: PathBuf::from(var("GARAGE_DIR")),
        }
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        // Maybe not our child: wait until it is gone.
        while nix::sys::signal::kill(pid, None).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The same server (same data, same ports) again.
    fn restart(&mut self) {
        let garage = which_garage();
        let log = std::fs::File::create(self.dir.join("garage-restart.log")).unwrap();
        let child = Command::new(garage)
            .arg("-c")
            .arg(self.dir.join("garage.toml"))
            .arg("server")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.pid = child.id() as i32;
        self.child = Some(child);
        let store = backend_of(&self.s3, "probe-wait");
        let deadline = Instant::now() + Duration::from_secs(60);
        while rt().block_on(store.check_access()).is_err() {
            assert!(Instant::now() < deadline, "garage did not come back");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PrivateGarage {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which_garage() -> PathBuf {
    let out = Command::new("bash")
        .arg("-c")
        .arg("command -v garage || echo \"${CARGO_HOME:-$HOME/.cargo}/bin/garage\"")
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The store stops while files are written, the daemon is killed with uploads pending, the store
/// and the daemon come back: nothing is lost and the backlog goes off-site.
#[test]
fn s3_outage_while_writing_loses_nothing() {
    let mut garage = PrivateGarage::start();
    let prefix = unique_prefix("outage");
    let mut v = TestVolume::new(&format!(
        "pack_size_mib = 4\n[cache]\nmax_size = \"1GiB\"\n{}",
        s3_section(&garage.s3, &prefix)
    ));
    v.start();
    let mut files = Vec::new();
    let mut write = |v: &TestVolume, i: u64| {
        let data = random_bytes(100 + i, 3 << 20);
        let name = format!("f{i}.bin");
        std::fs::write(v.path(&name), &data).unwrap();
        files.push((name, data));
    };
    for i in 0..6 {
        write(&v, i);
    }
    sync_ok(&v, "120");

    // The store goes down; writes keep landing in the cache.
    garage.stop();
    let t = Instant::now();
    for i in 6..20 {
        write(&v, i);
    }
    let write_time = t.elapsed();
    assert!(
        write_time < Duration::from_secs(60),
        "writes stalled during the outage: {write_time:?}"
    );
    // A sync cannot finish now: it times out (exit 124) and says why.
    let o = tiergate(&["sync", "--timeout", "5"], &v.config);
    assert_eq!(o.status.code(), Some(124), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("still waiting"), "{out}");
    assert!(out.contains("last error"), "{out}");
    let st = status(&v);
    assert!(num(&st, "upload_failures") > 0, "{st}");
    assert!(num(&st, "queued_bytes") > 0, "{st}");

    // The appliance crashes with that backlog, the store comes back, the appliance restarts:
    // the upload queue is in the metadata store, so the backlog drains.
    v.kill();
    garage.restart();
    v.start();
    let out = sync_ok(&v, "180");
    assert!(out.contains("off-site"), "{out}");
    let o = tiergate(&["evict"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
    v.stop();
    let states = pack_states(&v);
    assert!(
        states.iter().all(|(_, s, _)| *s == PackState::Remote),
        "{states:?}"
    );
    // Every pack object is there and exactly as large as its pack.
    let store = backend_of(&garage.s3, &prefix);
    let objects = rt()
        .block_on(list_all(&store, layout::PACKS_PREFIX, 1000))
        .unwrap();
    for (id, _, size) in &states {
        let key = layout::pack_key(*id);
        let o = objects.iter().find(|o| o.key == key);
        assert_eq!(o.map(|o| o.size), Some(*size), "object of pack {id}");
    }
    v.start();
    check_tree_via_mount(&v, &files);
    v.stop();
}

#[test]
fn s3_cache_pressure_slows_writers_and_keeps_the_cache_bounded() {
    let s3 = shared_s3();
    let prefix = unique_prefix("pressure");
    let cache = 48u64 << 20;
    let pack = 4u64 << 20;
    // Uploads at 16 MiB/s are slower than the writer: the cache fills with data not yet
    // off-site and writers must wait for uploads.
    let mut v = TestVolume::new(&format!(
        "pack_size_mib = 4\ndirty_limit_mib = 16\n[cache]\nmax_size = \"48MiB\"\n\
         [tiering]\nbandwidth_limit = \"16MiB\"\n{}",
        s3_section(&s3, &prefix)
    ));
    v.start();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, dir) = (stop.clone(), peak.clone(), v.vol_dir());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(local_pack_bytes(&dir), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut files = Vec::new();
    let total = 3 * cache;
    let per_file = 8u64 << 20;
    for i in 0..total / per_file {
        let data = random_bytes(500 + i, per_file as usize);
        let name = format!("p{i}.bin");
        std::fs::write(v.path(&name), &data).unwrap();
        files.push((name, data));
    }
    let st = status(&v);
    assert!(
        num(&st, "throttled_writes") > 0,
        "writers were never slowed: {st}"
    );
    sync_ok(&v, "300");
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    // Margin: up to two packs beyond max_size (docs/TIERING.md, "Backpressure"); peaks seen:
    // 48.1-48.7 MiB on a quiet machine, 52.7 MiB under a full parallel test run.
    let margin = 2 * pack;
    eprintln!(
        "cache pressure: wrote {} MiB through a {} MiB cache, peak local pack data {:.1} MiB",
        total >> 20,
        cache >> 20,
        peak as f64 / (1 << 20) as f64
    );
    assert!(
        peak <= cache + margin,
        "cache peaked at {peak} bytes, limit {cache} + margin {margin}"
    );
    let o = tiergate(&["evict"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
    v.stop();
    v.start();
    check_tree_via_mount(&v, &files);
    v.stop();
}

#[test]
fn s3_upload_rate_follows_the_bandwidth_limit() {
    let s3 = shared_s3();
    let prefix = unique_prefix("bwlimit");
    let limit = 8u64 << 20;
    let mut v = TestVolume::new(&format!(
        "pack_size_mib = 4\n[cache]\nmax_size = \"1GiB\"\n[tiering]\nbandwidth_limit = \"8MiB\"\n{}",
        s3_section(&s3, &prefix)
    ));
    v.start();
    let data = random_bytes(900, 112 << 20);
    std::fs::write(v.path("big.bin"), &data).unwrap();
    // Seal the last pack so the whole file is queued, then watch the upload drain.
    let vol_dir = v.vol_dir();
    let syncer = {
        let config = v.config.clone();
        std::thread::spawn(move || tiergate(&["sync", "--timeout", "120"], &config))
    };
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    loop {
        let st = tiergate::control::call(&vol_dir, "status").unwrap();
        samples.push((Instant::now(), num(&st, "uploaded_bytes")));
        if syncer.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = syncer.join().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // Steady state: from the first sample with 16 MiB uploaded to the last.
    let (t0, b0) = *samples.iter().find(|(_, b)| *b >= 16 << 20).unwrap();
    let (t1, b1) = *samples.last().unwrap();
    let rate = (b1 - b0) as f64 / (t1 - t0).as_secs_f64();
    eprintln!(
        "bandwidth limit {} MiB/s: measured {:.2} MiB/s over {:.1} s ({:.1}%)",
        limit >> 20,
        rate / (1 << 20) as f64,
        (t1 - t0).as_secs_f64(),
        (rate / limit as f64 - 1.0) * 100.0
    );
    assert!(
        (rate - limit as f64).abs() <= 0.1 * limit as f64,
        "upload rate {rate:.0} B/s is not within 10% of {limit}"
    );
    v.stop();
}

/// Starts a volume whose `[s3]` section is broken, writes through the mount and checks that
/// writes work, sync reports the failure class, and nothing is marked off-site.
fn broken_store(section: &str, expect: &str) {
    let mut v = TestVolume::new(&format!("pack_size_mib = 4\n{section}"));
    v.start();
    let data = random_bytes(1234, 10 << 20);
    std::fs::write(v.path("kept.bin"), &data).unwrap();
    let o = tiergate(&["sync", "--timeout", "4"], &v.config);
    assert_eq!(o.status.code(), Some(124), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(expect),
        "sync output should name {expect:?}: {out}"
    );
    let log = std::fs::read_to_string(v.log_path()).unwrap();
    assert!(
        log.contains("store probe failed") && log.contains(expect),
        "the log should say the probe failed with {expect:?}:\n{}",
        v.log_tail()
    );
    assert_eq!(std::fs::read(v.path("kept.bin")).unwrap(), data);
    v.stop();
    let states = pack_states(&v);
    assert!(!states.is_empty());
    assert!(
        states.iter().all(|(_, s, _)| *s == PackState::Sealed),
        "packs marked off-site although the store never took them: {states:?}"
    );
}

#[test]
fn s3_wrong_credentials_missing_bucket_and_unreachable_endpoint() {
    let s3 = shared_s3();
    let prefix = unique_prefix("bad");
    let wrong_secret = S3 {
        secret: "0".repeat(64),
        ..s3.clone()
    };
    broken_store(&s3_section(&wrong_secret, &prefix), "wrong credentials");
    let no_bucket = S3 {
        bucket: "no-such-bucket-here".into(),
        ..s3.clone()
    };
    broken_store(&s3_section(&no_bucket, &prefix), "no such bucket");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = S3 {
        endpoint: format!("http://127.0.0.1:{port}"),
        ..s3
    };
    broken_store(&s3_section(&unreachable, &prefix), "unreachable");
}

#[test]
fn s3_truncated_or_corrupted_object_is_an_error_not_data() {
    let s3 = shared_s3();
    let prefix = unique_prefix("corrupt");
    let mut v = TestVolume::new(&format!("pack_size_mib = 8\n{}", s3_section(&s3, &prefix)));
    v.start();
    let data = random_bytes(77, 6 << 20);
    std::fs::write(v.path("victim.bin"), &data).unwrap();
    sync_ok(&v, "120");
    let o = tiergate(&["evict"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
    v.stop();
    let states = pack_states(&v);
    assert_eq!(states.len(), 1, "{states:?}");
    let key = layout::pack_key(states[0].0);
    let store = backend_of(&s3, &prefix);
    let rt = rt();
    let good: Bytes = rt.block_on(store.get(&key)).unwrap();

    let damaged = [
        ("truncated", good.slice(..good.len() / 2)),
        ("corrupted", {
            let mut b = good.to_vec();
            let mid = b.len() / 2;
            b[mid] ^= 0x40;
            Bytes::from(b)
        }),
    ];
    // One daemon throughout: whatever a failed read left in the fetch cache must not be
    // served once the store has the good object again.
    v.start();
    for (what, bytes) in damaged {
        rt.block_on(store.put(&key, bytes)).unwrap();
        let err = std::fs::read(v.path("victim.bin")).expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{what}: {err}");
        let log = std::fs::read_to_string(v.log_path()).unwrap();
        assert!(
            log.matches("unreadable chunk").count() > 0,
            "{what}: {}",
            v.log_tail()
        );
    }
    rt.block_on(store.put(&key, good)).unwrap();
    assert!(std::fs::read(v.path("victim.bin")).unwrap() == data);
    v.stop();
}

#[test]
fn s3_damaged_local_copy_of_an_uploaded_pack_is_served_from_off_site() {
    let s3 = shared_s3();
    let prefix = unique_prefix("localdamage");
    let mut v = TestVolume::new(&format!("pack_size_mib = 8\n{}", s3_section(&s3, &prefix)));
    v.start();
    let data = random_bytes(4242, 5 << 20);
    std::fs::write(v.path("kept.bin"), &data).unwrap();
    sync_ok(&v, "120");
    v.stop();
    // Still cached locally (uploaded, not evicted): damage the local copy in the middle.
    let states = pack_states(&v);
    assert!(
        states.iter().all(|(_, s, _)| *s == PackState::Uploaded),
        "{states:?}"
    );
    let (id, _, size) = states[0];
    let path = v
        .vol_dir()
        .join("packs")
        .join(tiergate::pack::pack_file_name(id));
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, size);
    bytes[(size / 2) as usize] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    v.start();
    assert!(std::fs::read(v.path("kept.bin")).unwrap() == data);
    let log = std::fs::read_to_string(v.log_path()).unwrap();
    assert!(
        log.contains("local copy unreadable"),
        "the damage should be logged:\n{}",
        v.log_tail()
    );
    assert!(num(&status(&v), "get_requests") > 0);
    v.stop();
}

#[test]
fn eviction_drops_least_recently_used_packs_first() {
    // The local directory store: this is about the cache, not the network.
    let mut v = TestVolume::new(
        "pack_size_mib = 4\n[cache]\nmax_size = \"64MiB\"\n[webdav]\nenabled = false\n",
    );
    let ids_of = |v: &TestVolume| -> Vec<u64> { pack_states(v).iter().map(|p| p.0).collect() };
    v.start();
    let a = random_bytes(61, 12 << 20);
    std::fs::write(v.path("a.bin"), &a).unwrap();
    sync_ok(&v, "60");
    v.stop();
    let a_packs = ids_of(&v);
    v.start();
    std::fs::write(v.path("b.bin"), random_bytes(62, 12 << 20)).unwrap();
    sync_ok(&v, "60");
    v.stop();
    let b_packs: Vec<u64> = ids_of(&v)
        .into_iter()
        .filter(|id| !a_packs.contains(id))
        .collect();
    // After a restart nothing has been used; then a.bin is read (its packs become recent)
    // and c.bin pushes the cache over its high watermark.
    v.start();
    assert!(std::fs::read(v.path("a.bin")).unwrap() == a);
    std::fs::write(v.path("c.bin"), random_bytes(63, 36 << 20)).unwrap();
    sync_ok(&v, "60");
    // Wait for the evictor (it looks every second, or when woken) to bring the cache back under
    // its high watermark, however busy the machine, rather than for a fixed time.
    let high = num(&status(&v), "cache_max") / 100
        * tiergate::config::CacheConfig::default().high_watermark_percent as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(&v);
        if num(&s, "evicted_bytes") > 0 && num(&s, "cache_used") <= high {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no eviction: {s}\n{}",
            v.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    v.stop();
    let states = pack_states(&v);
    let state = |id: &u64| states.iter().find(|p| p.0 == *id).unwrap().1;
    let evicted_b = b_packs
        .iter()
        .filter(|id| state(id) == PackState::Remote)
        .count();
    let evicted_a = a_packs
        .iter()
        .filter(|id| state(id) == PackState::Remote)
        .count();
    eprintln!(
        "LRU: evicted {evicted_b}/{} packs of b.bin (idle), {evicted_a}/{} of a.bin (read)",
        b_packs.len(),
        a_packs.len()
    );
    assert!(
        evicted_b > 0,
        "nothing of the idle file was evicted: {states:?}"
    );
    assert!(
        evicted_a == 0 || evicted_b == b_packs.len(),
        "a recently read pack went before an idle one: {states:?}"
    );
}

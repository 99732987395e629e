//! Off-site metadata and disaster recovery against the real Garage server: a whole tree written
//! through both front-ends is rebuilt on a fresh appliance from the bucket and the passphrase;
//! crashes while packs and journal segments are uploaded; what a small change costs in metadata
//! uploads; wrong passphrase, empty bucket and a second appliance are refused.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tiergate::backend::{BResult, PutReceipt};

use crate::common::{random_bytes, shared_s3, text, tiergate, unique_prefix, TestVolume};
use crate::webdav::share;

fn s3_section(prefix: &str) -> String {
    crate::common::s3_section(&shared_s3(), prefix)
}

fn sync_ok(v: &TestVolume) -> String {
    let o = tiergate(&["sync", "--timeout", "300"], &v.config);
    assert!(o.status.success(), "sync: {}\n{}", text(&o), v.log_tail());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn status(v: &TestVolume) -> serde_json::Value {
    tiergate::control::call(&v.vol_dir(), "status").unwrap()
}

/// Everything a backup client could notice about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Desc {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    nlink: u64,
    /// The inode shared with the first path of its hard-link group, as that path's name.
    link_group: Option<String>,
    xattrs: BTreeMap<String, Vec<u8>>,
    content: Option<blake3::Hash>,
    target: Option<String>,
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "listxattr {}", p.display());
    let mut out = BTreeMap::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 64 * 1024];
        // SAFETY: valid C strings and buffer.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(m >= 0, "getxattr {}", p.display());
        val.truncate(m as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), val);
    }
    out
}

/// Every path under `root` (relative) with its description.
fn describe_tree(root: &Path) -> BTreeMap<String, Desc> {
    let mut out = BTreeMap::new();
    let mut first_of_inode: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(p.clone());
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else {
                "file"
            };
            let link_group = (kind == "file" && m.nlink() > 1).then(|| {
                first_of_inode
                    .entry(m.ino())
                    .or_insert_with(|| rel.clone())
                    .clone()
            });
            out.insert(
                rel,
                Desc {
                    kind,
                    mode: m.permissions().mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if kind == "dir" { 0 } else { m.len() },
                    mtime: (m.mtime(), m.mtime_nsec()),
                    nlink: if kind == "dir" { 0 } else { m.nlink() },
                    link_group,
                    xattrs: xattrs(&p),
                    content: (kind == "file").then(|| blake3::hash(&std::fs::read(&p).unwrap())),
                    target: (kind == "symlink").then(|| {
                        std::fs::read_link(&p)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned()
                    }),
                },
            );
        }
    }
    out
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let r = crate::common::setxattr(p, name, value);
    assert_eq!(r, Ok(()), "setxattr {name} on {}", p.display());
}

/// A tree with the shapes backups have: large, small, sparse, xattrs, hard links, symlinks,
/// renamed and overwritten files, odd modes and owners, old mtimes; two files via WebDAV.
fn write_tree(v: &TestVolume) {
    let m = |rel: &str| v.path(rel);
    std::fs::create_dir_all(m("backup/2026-11-27/db")).unwrap();
    std::fs::create_dir_all(m("backup/2026-11-28")).unwrap();
    std::fs::write(m("backup/2026-11-27/full.vbk"), random_bytes(1, 24 << 20)).unwrap();
    for i in 0..60u64 {
        std::fs::write(
            m(&format!("backup/2026-11-27/db/part{i:03}.dat")),
            random_bytes(100 + i, (i as usize * 3571) % 70_000),
        )
        .unwrap();
    }
    // Sparse: data at 0 and at 40 MiB, a hole between.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(m("backup/sparse.img")).unwrap();
        f.write_all(&random_bytes(7, 100_000)).unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(&random_bytes(8, 50_000)).unwrap();
    }
    std::fs::write(m("backup/catalog.xml"), b"<catalog version=\"1\"/>\n").unwrap();
    set_xattr(
        &m("backup/catalog.xml"),
        "user.veeam.id",
        b"0123456789abcdef",
    );
    set_xattr(&m("backup/2026-11-27"), "user.retention", b"30d");
    std::fs::hard_link(m("backup/catalog.xml"), m("backup/2026-11-28/catalog.link")).unwrap();
    std::os::unix::fs::symlink("2026-11-27/full.vbk", m("backup/latest")).unwrap();
    // Renamed and overwritten.
    std::fs::write(m("backup/incr.tmp"), random_bytes(9, 3 << 20)).unwrap();
    std::fs::rename(m("backup/incr.tmp"), m("backup/2026-11-28/incr.vib")).unwrap();
    std::fs::write(m("backup/2026-11-28/incr.vib"), random_bytes(10, 2 << 20)).unwrap();
    std::fs::write(m("backup/gone.txt"), b"deleted before the sync").unwrap();
    std::fs::remove_file(m("backup/gone.txt")).unwrap();
    // Modes, owners, times.
    std::fs::set_permissions(
        m("backup/catalog.xml"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::chown(m("backup/2026-11-27/db"), Some(1234), Some(5678)).unwrap();
    let old = std::fs::FileTimes::new()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000));
    std::fs::File::options()
        .write(true)
        .open(m("backup/2026-11-27/full.vbk"))
        .unwrap()
        .set_times(old)
        .unwrap();
    // Through WebDAV.
    let dav = share(v);
    for (name, data) in [
        ("/backup/dav-a.bin", random_bytes(11, 5 << 20)),
        ("/backup/dav-b.txt", b"written over WebDAV\n".to_vec()),
    ] {
        let r = dav.put(name, &data);
        assert!(r.status / 100 == 2, "PUT {name}: {}", r.status);
    }
}

#[test]
fn disaster_recovery_rebuilds_every_file_and_its_metadata() {
    let prefix = unique_prefix("dr");
    let mut v = TestVolume::new(&format!("pack_size_mib = 8\n{}", s3_section(&prefix)));
    v.start();
    write_tree(&v);
    let out = sync_ok(&v);
    assert!(out.contains("data and metadata"), "{out}");
    let seen = describe_tree(&v.mnt);
    assert!(seen.len() > 60, "{}", seen.len());
    // The reference is what the daemon itself stored (its view after a remount). With the
    // writeback cache the kernel may show a file's mtime a few ms off what it sent us (a file
    // truncated by open and rewritten; see docs/SEMANTICS.md); everything else must agree.
    v.stop();
    v.start();
    let before = describe_tree(&v.mnt);
    for (path, want) in &seen {
        let got = before
            .get(path)
            .unwrap_or_else(|| panic!("{path} gone after a restart"));
        assert_eq!(
            Desc {
                mtime: want.mtime,
                ..got.clone()
            },
            *want,
            "{path} differs after a plain restart"
        );
    }
    v.stop();

    // The appliance is lost: a new one with the same config and an empty volume directory.
    std::fs::remove_dir_all(v.vol_dir()).unwrap();
    let t = Instant::now();
    let o = tiergate(&["recover"], &v.config);
    let took = t.elapsed();
    assert!(o.status.success(), "recover: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("disaster recovery: {} in {took:?}", out.trim());
    assert!(out.contains("recovered volume"), "{out}");

    // The old appliance's lease is still in the bucket: serve refuses without --take-over.
    let o = tiergate(&["serve"], &v.config);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--take-over"), "{err}");

    v.start_with(&["--take-over"]);
    let after = describe_tree(&v.mnt);
    for (path, want) in &before {
        assert_eq!(after.get(path), Some(want), "{path} differs after recovery");
    }
    assert_eq!(after.len(), before.len());
    // Data came from the store, not from anything local.
    let st = status(&v);
    assert!(st["get_requests"].as_u64().unwrap() > 0, "{st}");
    // And the recovered appliance keeps working: a write goes off-site.
    std::fs::write(v.path("backup/after-recovery.txt"), b"new appliance").unwrap();
    sync_ok(&v);
    v.stop();
}

#[test]
fn recovery_refuses_a_wrong_passphrase_and_a_bucket_without_a_volume() {
    let prefix = unique_prefix("drbad");
    let mut v = TestVolume::new(&format!("pack_size_mib = 8\n{}", s3_section(&prefix)));
    v.start();
    std::fs::write(v.path("f"), b"x").unwrap();
    sync_ok(&v);
    v.stop();
    std::fs::remove_dir_all(v.vol_dir()).unwrap();

    // Wrong passphrase: a clear error, nothing written.
    let pass = v.dir.path().join("passphrase");
    let good = std::fs::read(&pass).unwrap();
    std::fs::write(&pass, "not the passphrase\n").unwrap();
    let o = tiergate(&["recover"], &v.config);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(err.contains("passphrase"), "{err}");
    assert!(
        !v.vol_dir().join("volume.toml").exists() && !v.vol_dir().join("meta").exists(),
        "a failed recovery wrote a volume"
    );
    std::fs::write(&pass, good).unwrap();

    // A prefix with no volume in it.
    let other = v.config.with_file_name("empty.toml");
    let cfg = std::fs::read_to_string(&v.config)
        .unwrap()
        .replace(&prefix, &unique_prefix("nothing-here"));
    std::fs::write(&other, cfg).unwrap();
    let o = tiergate(&["recover"], &other);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no tiergate volume"), "{err}");

    // The right passphrase works.
    let o = tiergate(&["recover"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn crashes_while_uploading_never_lose_acknowledged_data() {
    let prefix = unique_prefix("drcrash");
    // Slow uploads, so that kills land while packs and segments are in flight.
    let mut v = TestVolume::new(&format!(
        "pack_size_mib = 4\n[tiering]\nbandwidth_limit = \"16MiB\"\n{}",
        s3_section(&prefix)
    ));
    let mut written: Vec<(String, Vec<u8>)> = Vec::new();
    for round in 0..6u64 {
        v.start();
        for i in 0..3u64 {
            let name = format!("r{round}-{i}.bin");
            let data = random_bytes(round * 10 + i, (2 << 20) + (i as usize * 77_777));
            std::fs::write(v.path(&name), &data).unwrap();
            written.push((name, data));
        }
        // Also rename and delete, so the journal holds namespace changes around the kills.
        if round > 0 {
            let (old, data) = written.remove(0);
            let new = format!("renamed-{old}");
            std::fs::rename(v.path(&old), v.path(&new)).unwrap();
            written.push((new, data));
        }
        std::thread::sleep(Duration::from_millis(200 + rand::random::<u64>() % 1300));
        v.kill();
    }
    v.start();
    let out = sync_ok(&v);
    assert!(out.contains("data and metadata"), "{out}");
    v.stop();

    std::fs::remove_dir_all(v.vol_dir()).unwrap();
    let o = tiergate(&["recover"], &v.config);
    assert!(o.status.success(), "recover: {}", text(&o));
    v.start_with(&["--take-over"]);
    for (name, data) in &written {
        let got = std::fs::read(v.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == *data, "{name} differs after crashes and recovery");
    }
    let mut names: Vec<String> = std::fs::read_dir(&v.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = written.iter().map(|(n, _)| n.clone()).collect();
    want.sort();
    assert_eq!(names, want);
    v.stop();
}

#[test]
fn a_small_change_ships_a_small_amount_of_metadata() {
    let prefix = unique_prefix("metacost");
    let mut v = TestVolume::new(&format!("pack_size_mib = 8\n{}", s3_section(&prefix)));
    v.start();
    for d in 0..20 {
        std::fs::create_dir(v.path(&format!("d{d}"))).unwrap();
        for f in 0..100 {
            std::fs::write(
                v.path(&format!("d{d}/f{f}")),
                format!("file {d}/{f}").repeat(f + 1),
            )
            .unwrap();
        }
    }
    std::fs::write(v.path("big.bin"), random_bytes(3, 32 << 20)).unwrap();
    sync_ok(&v);
    let initial = status(&v)["meta_bytes"].as_u64().unwrap();
    let mut per_change = Vec::new();
    for round in 0..3 {
        let before = status(&v)["meta_bytes"].as_u64().unwrap();
        std::fs::write(v.path(&format!("d3/f{round}")), b"changed").unwrap();
        sync_ok(&v);
        per_change.push(status(&v)["meta_bytes"].as_u64().unwrap() - before);
    }
    eprintln!(
        "metadata shipping: initial tree (2000 files + 32 MiB) {initial} bytes; one small \
         file changed: {per_change:?} bytes per change"
    );
    for c in &per_change {
        assert!(*c > 0, "the change was not shipped");
        assert!(
            *c * 20 < initial,
            "a one-file change shipped {c} bytes, the whole tree {initial}"
        );
    }
    v.stop();
}

/// A real local store whose lease traffic is slow: a lease PUT reaches the store after 200 ms,
/// and the second lease GET answers with what it read only 500 ms later (a slow reply).
#[derive(Debug)]
struct SlowLease {
    inner: tiergate::backend::local::LocalDir,
    lease_gets: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl tiergate::backend::Backend for SlowLease {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: bytes::Bytes) -> BResult<PutReceipt> {
        if key == "lease" {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.inner.put(key, data).await
    }
    async fn put_file(&self, key: &str, path: &Path) -> BResult<PutReceipt> {
        self.inner.put_file(key, path).await
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> BResult<bytes::Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn get(&self, key: &str) -> BResult<bytes::Bytes> {
        let r = self.inner.get(key).await;
        if key == "lease" && self.lease_gets.fetch_add(1, Ordering::SeqCst) == 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        r
    }
    async fn head(&self, key: &str) -> BResult<tiergate::backend::ObjectInfo> {
        self.inner.head(key).await
    }
    async fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
        max_keys: u32,
    ) -> BResult<tiergate::backend::ListPage> {
        self.inner.list_page(prefix, token, max_keys).await
    }
    async fn delete(&self, key: &str) -> BResult<()> {
        self.inner.delete(key).await
    }
    async fn check_access(&self) -> BResult<()> {
        self.inner.check_access().await
    }
    async fn object_lock(&self) -> BResult<tiergate::backend::ObjectLock> {
        self.inner.object_lock().await
    }
}

/// `serve --take-over` claims the lease at start while the metadata loop, already running,
/// claims it too. Both once read the old holder's lease and the one that lost the race, its
/// one-shot take-over spent by the other, refused the volume it had just taken (seen as a
/// flaky CI failure against Garage). Against a store whose lease traffic is slow enough that
/// the two claims always overlap, the take-over must hold and the lease name this appliance.
#[test]
fn a_take_over_is_not_refused_by_its_own_racing_claim() {
    use std::sync::Arc;
    use tiergate::backend::layout::VOLUME_OBJECT;
    use tiergate::backend::local::LocalDir;
    use tiergate::backend::Backend;
    use tiergate::chunker::ChunkerParams;
    use tiergate::crypto::KdfParams;
    use tiergate::tiering::{Tiering, TieringOptions};
    use tiergate::volume::{Volume, VolumeOptions};

    let cfg = tiergate::config::Config::parse("[volume]\npath = \"/unused\"\n").unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let vol_dir = dir.path().join("vol");
    Volume::create(
        &vol_dir,
        "pw",
        ChunkerParams::default(),
        KdfParams::for_tests(),
    )
    .unwrap();
    let vol = Volume::open(&vol_dir, "pw", VolumeOptions::default()).unwrap();
    let store = Arc::new(SlowLease {
        inner: LocalDir::open(&dir.path().join("store")).unwrap(),
        lease_gets: Default::default(),
    });
    let old = br#"{"appliance":"gone","host":"elsewhere","since_unix":0}"#;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(store.inner.put("lease", bytes::Bytes::from_static(old)))
        .unwrap();

    // What `serve --take-over` does: start tiering (its metadata loop claims at once), then
    // claim before mounting.
    let opts = TieringOptions::from_config(&cfg).unwrap();
    let t = Tiering::start(vol.clone(), store.clone(), opts, true).unwrap();
    let claimed = t.handle().block_on(t.claim_lease());
    // Wait for the event the race is about, however slow the machine: the metadata loop past
    // its own claim. Having the lease (its own or the take-over's), it ships the volume objects
    // next; having lost the race, it names the holder that fenced it (and would only claim again
    // 5 s later, after its interval). The deadline only bounds a hang.
    let deadline = Instant::now() + Duration::from_secs(120);
    let fenced_by = loop {
        let fenced_by = t.status().fenced_by;
        if fenced_by.is_some() || rt.block_on(store.inner.head(VOLUME_OBJECT)).is_ok() {
            break fenced_by;
        }
        assert!(
            Instant::now() < deadline,
            "the metadata loop never got past its claim of the lease: {:?}",
            t.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    t.stop();
    vol.shutdown().unwrap();
    assert!(matches!(claimed, Ok(true)), "{claimed:?}");
    assert_eq!(
        fenced_by, None,
        "the metadata loop thinks the volume is someone else's"
    );
    let lease = rt.block_on(store.inner.get("lease")).unwrap();
    let lease: serde_json::Value = serde_json::from_slice(&lease).unwrap();
    assert_ne!(lease["appliance"], "gone", "{lease}");
}

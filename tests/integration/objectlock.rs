//! S3 Object Lock, end to end through `tiergate serve`, `gc` and `probe`.
//!
//! Garage, the S3 server of the other tests, does not implement Object Lock (it answers
//! GetObjectLockConfiguration with 501). These tests run against moto's S3 server instead
//! (`moto_server`, PyPI `moto[server]`, installed by scripts/install-test-deps.sh): a separate
//! implementation of the S3 API whose Object Lock keeps per-version retention, reports it on
//! HEAD, refuses a put with lock headers but no Content-MD5 (as S3 does), and refuses to delete
//! a version before its retain-until date with 403 AccessDenied (as S3 does). Each test starts
//! its own server on 127.0.0.1 and stops it at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::types::{ObjectLockRetention, ObjectLockRetentionMode};

use crate::common::{
    close_after, header_value, random_bytes, read_head, s3_section, text, tiergate, wait_timeout,
    TestVolume, S3,
};
use crate::retention::{gc, n};
use crate::tiering::{rt, sync_ok};
use tiergate::meta::unix_now as now_unix;

/// Small chunks and packs, so a few MiB make several packs (single PUTs: see
/// docs/RETENTION.md for why multipart uploads are not exercised against moto).
const SMALL: &str = "pack_size_mib = 1\n\n[chunking]\nmin_size = 16384\navg_size = 65536\n\
                     max_size = 262144\n";

/// A moto S3 server of this test, stopped (by its pid) when dropped.
struct Moto {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Moto {
    fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run moto_server ({e}): the Object Lock tests need moto's S3 server \
                     (Garage has no Object Lock); `pip install 'moto[server]'` or run \
                     scripts/install-test-deps.sh"
                )
            });
        let mut m = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = m.child.try_wait().unwrap() {
                panic!(
                    "moto_server exited with {st}: {}",
                    std::fs::read_to_string(m._dir.path().join("moto.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    fn s3(&self, bucket: &str) -> S3 {
        S3 {
            endpoint: self.endpoint.clone(),
            region: "us-east-1".into(),
            bucket: bucket.into(),
            key_id: "testing".into(),
            secret: "testing".into(),
        }
    }

    fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Creates a bucket, with Object Lock (and so versioning) enabled or not.
    fn bucket(&self, name: &str, lock: bool) {
        rt().block_on(
            self.client()
                .create_bucket()
                .bucket(name)
                .object_lock_enabled_for_bucket(lock)
                .send(),
        )
        .unwrap();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lock mode and retain-until (Unix seconds) of every object under `prefix`, by key relative
/// to it, as HEAD reports them (`None`: not locked).
fn locks(
    c: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> BTreeMap<String, Option<(String, u64)>> {
    rt().block_on(async {
        let list = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix(format!("{prefix}/"))
            .send()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for o in list.contents() {
            let key = o.key().unwrap();
            let h = c
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            let lock = h.object_lock_mode().map(|m| {
                let until = h.object_lock_retain_until_date().expect("retain-until");
                (m.as_str().to_owned(), until.secs() as u64)
            });
            let rel = key.strip_prefix(&format!("{prefix}/")).unwrap();
            out.insert(rel.to_owned(), lock);
        }
        out
    })
}

/// Every version and delete marker under `prefix`: (key, version id).
fn versions(c: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> BTreeSet<(String, String)> {
    rt().block_on(async {
        let out = c
            .list_object_versions()
            .bucket(bucket)
            .prefix(format!("{prefix}/"))
            .send()
            .await
            .unwrap();
        assert_ne!(out.is_truncated(), Some(true));
        let v = out
            .versions()
            .iter()
            .map(|v| (v.key().unwrap(), v.version_id().unwrap()));
        let m = out
            .delete_markers()
            .iter()
            .map(|m| (m.key().unwrap(), m.version_id().unwrap()));
        v.chain(m)
            .map(|(k, id)| (k.to_owned(), id.to_owned()))
            .collect()
    })
}

const DAY: u64 = 86_400;

#[test]
fn s3_object_lock_packs_and_metadata_locked_gc_waits_for_retention_then_deletes_versions() {
    let moto = Moto::start();
    moto.bucket("locked", true);
    let s3 = moto.s3("locked");
    let prefix = "site-1";
    let mut v = TestVolume::new(&format!(
        "{SMALL}\n[gc]\ninterval_minutes = 0\ngrace_minutes = 0\n{}\
         [s3.object_lock]\nmode = \"governance\"\ndays = 1\n",
        s3_section(&s3, prefix)
    ));
    v.start();
    let keep = random_bytes(11, 2 << 20);
    std::fs::write(v.path("keep.bin"), &keep).unwrap();
    sync_ok(&v, "120");
    let doomed = random_bytes(12, 5 << 20);
    std::fs::write(v.path("doomed.bin"), &doomed).unwrap();
    let t0 = now_unix();
    sync_ok(&v, "120");
    let c = moto.client();

    // Every pack and metadata object carries the configured lock, the lease none. (moto, like
    // S3, refuses a put with lock headers but no Content-MD5: these objects exist, so it was sent.)
    let before = locks(&c, "locked", prefix);
    let packs: Vec<&String> = before.keys().filter(|k| k.starts_with("packs/")).collect();
    assert!(packs.len() >= 3, "{before:?}");
    assert!(
        before.keys().any(|k| k.starts_with("meta/journal/")),
        "{before:?}"
    );
    assert!(
        before.keys().any(|k| k.starts_with("meta/checkpoint/")),
        "{before:?}"
    );
    for (key, lock) in &before {
        if key == "lease" {
            assert_eq!(lock, &None, "the lease must not be locked");
            continue;
        }
        let (mode, until) = lock
            .as_ref()
            .unwrap_or_else(|| panic!("{key} is not locked: {before:?}"));
        assert_eq!(mode, "GOVERNANCE", "{key}");
        // Now + 1 day at upload time (uploads happened in the last few minutes).
        assert!(
            *until > now_unix() + DAY - 600 && *until <= now_unix() + DAY,
            "{key}: retain-until {until}, now {}",
            now_unix()
        );
    }
    for k in ["volume.toml", "keys/master"] {
        assert!(before.contains_key(k), "{k} missing: {before:?}");
    }
    // Drop the doomed file: its packs become garbage, but their retention has a day to run.
    std::fs::remove_file(v.path("doomed.bin")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let waiting = loop {
        sync_ok(&v, "60");
        let r = gc(&v);
        let other =
            n(&r, "waiting_grace") + n(&r, "waiting_metadata") + n(&r, "waiting_checkpoint");
        if other == 0 && n(&r, "waiting_retention") > 0 {
            break r;
        }
        assert_eq!(n(&r, "objects_deleted"), 0, "{r}");
        assert!(Instant::now() < deadline, "{r}\n{}", v.log_tail());
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(n(&waiting, "objects_deleted"), 0, "{waiting}");
    let held = n(&waiting, "waiting_retention");
    assert!(held >= 2, "{waiting}");
    let until = n(&waiting, "retention_until_unix");
    assert!(
        until >= t0 + DAY - 5 && until <= now_unix() + DAY,
        "retention until {until}, t0 {t0}"
    );
    // Nothing left the bucket; the status and `tiergate gc` say what it waits for.
    let mid = locks(&c, "locked", prefix);
    for p in &packs {
        assert!(mid.contains_key(*p), "{p} deleted under retention");
    }
    let st = tiergate::control::call(&v.vol_dir(), "report").unwrap();
    assert_eq!(
        n(&st["gc"], "packs_waiting_retention"),
        held,
        "{}",
        st["gc"]
    );
    assert_eq!(n(&st["gc"], "retention_until_unix"), until, "{}", st["gc"]);
    let o = tiergate(&["gc"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "under Object Lock retention: {held} packs and {} metadata objects, the first until {}",
            n(&waiting, "meta_waiting_retention"),
            tiergate::clock::utc_date(until)
        )),
        "{}",
        text(&o)
    );
    // The checkpoint GC asked for replaced the first one, which stays: it is locked too.
    let checkpoints = |m: &BTreeMap<String, Option<(String, u64)>>| {
        m.keys()
            .filter(|k| k.starts_with("meta/checkpoint/"))
            .count()
    };
    assert!(checkpoints(&mid) >= 2, "{mid:?}");
    assert!(
        !v.log_tail().contains("shipping metadata"),
        "{}",
        v.log_tail()
    );

    // An admin shortens the governance retention of everything (allowed with
    // s3:BypassGovernanceRetention); once it has passed, the next pass deletes the dropped
    // packs, every version, and the unneeded metadata objects.
    let soon = now_unix() + 10;
    rt().block_on(async {
        for key in mid.keys().filter(|k| *k != "lease") {
            c.put_object_retention()
                .bucket("locked")
                .key(format!("{prefix}/{key}"))
                .bypass_governance_retention(true)
                .retention(
                    ObjectLockRetention::builder()
                        .mode(ObjectLockRetentionMode::Governance)
                        .retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(soon as i64))
                        .build(),
                )
                .send()
                .await
                .unwrap();
        }
    });
    // Still under retention for a moment: nothing goes.
    let r = gc(&v);
    assert_eq!(n(&r, "objects_deleted"), 0, "{r}");
    assert_eq!(n(&r, "waiting_retention"), held, "{r}");
    assert_eq!(n(&r, "retention_until_unix"), soon, "{r}");
    while now_unix() <= soon {
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = gc(&v);
    assert_eq!(n(&r, "objects_deleted"), held, "{r}");
    assert_eq!(n(&r, "waiting_retention"), 0, "{r}");
    assert!(n(&r, "meta_objects_deleted") >= 1, "{r}");
    let after = locks(&c, "locked", prefix);
    let gone: Vec<&String> = mid.keys().filter(|k| !after.contains_key(*k)).collect();
    assert_eq!(
        gone.iter().filter(|k| k.starts_with("packs/")).count() as u64,
        held,
        "{gone:?}"
    );
    assert_eq!(checkpoints(&after), 1, "{after:?}");
    // Deleted by version id: no version and no delete marker of them is left (a plain DELETE
    // on this versioned bucket would have left the data behind a delete marker).
    let left = versions(&c, "locked", prefix);
    for k in &gone {
        let full = format!("{prefix}/{k}");
        assert!(
            !left.iter().any(|(key, _)| *key == full),
            "{full} still has versions: {left:?}"
        );
    }
    // The probe at serve start removed its object the same way.
    assert!(!left.iter().any(|(k, _)| k.contains("/probe/")), "{left:?}");
    // What is kept reads back from the store.
    let o = tiergate(&["evict"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(v.path("keep.bin")).unwrap() == keep);
    v.stop();
}

#[test]
fn s3_object_lock_configured_on_a_bucket_without_it_fails_probe_and_serve() {
    let moto = Moto::start();
    moto.bucket("plain", false);
    moto.bucket("locked", true);
    let lock = "[s3.object_lock]\nmode = \"compliance\"\ndays = 7\n";
    let v = TestVolume::new(&format!("{}{lock}", s3_section(&moto.s3("plain"), "t")));

    let o = tiergate(&["probe"], &v.config);
    assert!(!o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("failed at step \"object-lock\""), "{out}");
    assert!(
        out.contains("COMPLIANCE retention of 7 days")
            && out.contains("object lock on s3://plain/t/")
            && out.contains("not enabled on this bucket")
            && out.contains("create a bucket with Object Lock enabled"),
        "{out}"
    );

    // serve refuses to start, with the same reason, and writes nothing but the lease check.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(["serve", "--config"])
        .arg(&v.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_timeout(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!st.success(), "{err}");
    assert!(
        err.contains("not enabled on this bucket") && err.contains("[s3.object_lock]"),
        "{err}"
    );
    assert!(!crate::common::is_mounted(&v.mnt));
    let objects = rt()
        .block_on(moto.client().list_objects_v2().bucket("plain").send())
        .unwrap();
    assert_eq!(objects.key_count(), Some(0), "{objects:?}");

    // The same config against a bucket with Object Lock passes the probe and says so.
    let ok = TestVolume::new(&format!("{}{lock}", s3_section(&moto.s3("locked"), "t")));
    let o = tiergate(&["probe"], &ok.config);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("object lock: enabled, no default retention"),
        "{}",
        text(&o)
    );
    assert!(Path::new(&ok.config).exists());
}

/// A loopback proxy that forwards every request unchanged (one per connection) and keeps its
/// head, to see what was sent where the server does not tell.
struct Recorder {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start(upstream: &str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = upstream.trim_start_matches("http://").to_owned();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (up, h) = (up.clone(), h.clone());
                std::thread::spawn(move || forward(client, &up, &h));
            }
        });
        Recorder { port, heads }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn forward(mut client: TcpStream, upstream: &str, heads: &Mutex<Vec<String>>) {
    let Some((head, rest)) = read_head(&mut client) else {
        return;
    };
    heads
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&head).into_owned());
    let mut up = TcpStream::connect(upstream).unwrap();
    up.write_all(&close_after(&head)).unwrap();
    up.write_all(&rest).unwrap();
    let (mut c2, mut u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    let pump = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
    });
    let _ = std::io::copy(&mut up, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
    let _ = pump.join();
}

/// A multipart upload asks for the lock on CreateMultipartUpload and sends Content-MD5 with
/// every part. moto ignores lock headers there (and answers CompleteMultipartUpload with an
/// element aws-sdk-s3 does not parse), so this is checked on the wire, through [`Recorder`].
#[test]
fn s3_object_lock_multipart_upload_asks_for_the_lock() {
    use tiergate::backend::Backend;
    let moto = Moto::start();
    moto.bucket("locked", true);
    let rec = Recorder::start(&moto.endpoint);
    let s3 = moto.s3("locked");
    let mut cfg = tiergate::config::S3Config::new(Some(&rec.endpoint()), &s3.region, &s3.bucket);
    cfg.path_style = true;
    cfg.access_key_id = Some(s3.key_id.clone());
    cfg.secret_access_key = Some(tiergate::config::Secret(s3.secret.clone()));
    cfg.multipart_threshold_mib = 5;
    cfg.part_size_mib = 5;
    cfg.max_attempts = 1;
    cfg.object_lock = Some(tiergate::config::ObjectLockConfig {
        mode: tiergate::config::LockMode::Compliance,
        days: 3,
    });
    let backend = tiergate::backend::s3::S3Backend::new(&cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pack");
    std::fs::write(&file, random_bytes(21, 11 << 20)).unwrap();
    let t0 = now_unix();
    // The error is moto's answer to CompleteMultipartUpload (see above), not the upload's.
    let put = rt().block_on(backend.put_file("packs/00000000000000aa.pack", &file));
    let e = put.expect_err("moto's CompleteMultipartUpload answer parses now: assert success");
    assert!(e.to_string().contains("complete multipart upload"), "{e}");
    let heads = rec.heads.lock().unwrap().clone();
    let create: Vec<&String> = heads
        .iter()
        .filter(|h| h.starts_with("POST ") && h.contains("?uploads"))
        .collect();
    assert_eq!(create.len(), 1, "{heads:?}");
    let c = create[0].as_bytes();
    assert_eq!(
        header_value(c, "x-amz-object-lock-mode").as_deref(),
        Some("COMPLIANCE")
    );
    let until = header_value(c, "x-amz-object-lock-retain-until-date").unwrap();
    let until = aws_sdk_s3::primitives::DateTime::from_str(
        &until,
        aws_sdk_s3::primitives::DateTimeFormat::DateTime,
    )
    .unwrap()
    .secs() as u64;
    assert!(
        until >= t0 + 3 * DAY && until <= now_unix() + 3 * DAY,
        "retain-until {until}, t0 {t0}"
    );
    let parts: Vec<&String> = heads
        .iter()
        .filter(|h| h.starts_with("PUT ") && h.contains("partNumber="))
        .collect();
    assert_eq!(parts.len(), 3, "{heads:?}");
    for p in parts {
        assert!(header_value(p.as_bytes(), "content-md5").is_some(), "{p}");
    }
    // The lease is never locked; a lease put through the same backend carries no lock.
    rt().block_on(backend.put("lease", bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let last = rec
        .heads
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|h| h.starts_with("PUT "))
        .cloned()
        .unwrap();
    assert!(last.contains("/lease"), "{last}");
    assert_eq!(
        header_value(last.as_bytes(), "x-amz-object-lock-mode"),
        None,
        "{last}"
    );
}

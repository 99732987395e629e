//! Object store backends: one conformance body run against the local directory backend and
//! against a real Garage server on 127.0.0.1 (started by `scripts/test.sh` through
//! `scripts/garage.sh`), multipart uploads of a large file in bounded memory, the startup probe
//! and its failure classes, and corruption of stored packs caught by the pack and blob checks.
//!
//! The S3 tests read the server's address and keys from `TIERGATE_TEST_S3_*`. Without them they
//! fail (never skip): run `bash scripts/test.sh`, or `source scripts/garage.sh start` first.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use rand::{RngCore, SeedableRng};

use tiergate::backend::local::LocalDir;
use tiergate::backend::s3::S3Backend;
use tiergate::backend::{self, layout, list_all, Backend, ErrorKind, ObjectLock};
use tiergate::config::{S3Config, Secret};
use tiergate::pack::{self, PackWriter};

// The Garage server of this test run: TIERGATE_TEST_S3_* (common.rs).
use crate::common::{shared_s3 as garage, S3 as Garage};

/// A config for the Garage bucket under a prefix of its own, so tests do not see each other.
fn s3_config(g: &Garage, test: &str) -> S3Config {
    let mut c = S3Config::new(Some(&g.endpoint), &g.region, &g.bucket);
    c.path_style = true;
    c.access_key_id = Some(g.key_id.clone());
    c.secret_access_key = Some(Secret(g.secret.clone()));
    c.prefix = format!("{test}-{}", hex::encode(rand::random::<[u8; 4]>()));
    c
}

fn garage_backend(test: &str) -> S3Backend {
    S3Backend::new(&s3_config(&garage(), test)).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn bytes(seed: u64, len: usize) -> Bytes {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v.into()
}

async fn remove_all(b: &dyn Backend) {
    for o in list_all(b, "", 1000).await.unwrap() {
        b.delete(&o.key).await.unwrap();
    }
    assert!(list_all(b, "", 1000).await.unwrap().is_empty());
}

fn keys_of(objs: &[backend::ObjectInfo]) -> Vec<String> {
    objs.iter().map(|o| o.key.clone()).collect()
}

/// The behaviour every backend must have.
async fn conformance(b: &dyn Backend) {
    // put / get / head
    let one = bytes(1, 1000);
    let r = b.put("a/one", one.clone()).await.unwrap();
    assert_eq!(r.size, 1000);
    assert_eq!(b.get("a/one").await.unwrap(), one);
    let h = b.head("a/one").await.unwrap();
    assert_eq!((h.key.as_str(), h.size), ("a/one", 1000));
    if let Some(etag) = &h.etag {
        assert_eq!(etag, &hex::encode(<md5::Md5 as md5::Digest>::digest(&one)));
    }

    // Ranged reads, including ranges past the end.
    assert_eq!(
        b.get_range("a/one", 10..20).await.unwrap(),
        one.slice(10..20)
    );
    assert_eq!(b.get_range("a/one", 0..1000).await.unwrap(), one);
    assert_eq!(
        b.get_range("a/one", 990..2000).await.unwrap(),
        one.slice(990..)
    );
    assert!(b.get_range("a/one", 1000..1100).await.unwrap().is_empty());
    assert!(b.get_range("a/one", 5000..5001).await.unwrap().is_empty());
    assert_eq!(
        b.get_range("a/one", 5..5).await.unwrap_err().kind(),
        ErrorKind::Invalid
    );

    // Overwrite with a different length.
    let two = bytes(2, 333);
    b.put("a/one", two.clone()).await.unwrap();
    assert_eq!(b.get("a/one").await.unwrap(), two);
    assert_eq!(b.head("a/one").await.unwrap().size, 333);

    // An empty object.
    b.put("a/empty", Bytes::new()).await.unwrap();
    assert_eq!(b.head("a/empty").await.unwrap().size, 0);
    assert!(b.get("a/empty").await.unwrap().is_empty());

    // Missing objects: NotFound, naming the key; deleting one succeeds.
    for e in [
        b.get("a/missing").await.unwrap_err(),
        b.head("a/missing").await.unwrap_err(),
        b.get_range("a/missing", 0..10).await.unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("a/missing"), "{e}");
    }
    b.delete("a/missing").await.unwrap();

    // Bad keys never reach the store.
    for bad in ["../x", "/abs", "a//b", "sp ace"] {
        let e = b.put(bad, Bytes::from_static(b"x")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{bad}");
    }

    // Listing: key order, pages of a small size, prefixes, no duplicates.
    let keys: Vec<String> = (0..25).map(|i| format!("l/k{i:03}")).collect();
    futures_util::stream::iter(keys.clone())
        .map(|k| async move { b.put(&k, Bytes::from(k.clone().into_bytes())).await })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let mut paged = Vec::new();
    let mut token = None;
    let mut sizes = Vec::new();
    loop {
        let page = b.list_page("l/", token, 7).await.unwrap();
        sizes.push(page.objects.len());
        paged.extend(keys_of(&page.objects));
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(sizes, [7, 7, 7, 4]);
    assert_eq!(paged, keys);
    let all = list_all(b, "l/", 1000).await.unwrap();
    assert_eq!(keys_of(&all), keys);
    assert!(all.iter().all(|o| o.size == 6));
    assert_eq!(keys_of(&list_all(b, "l/k00", 3).await.unwrap()), keys[..10]);
    let none = b.list_page("nothing/", None, 10).await.unwrap();
    assert!(none.objects.is_empty() && none.next.is_none());
    assert_eq!(
        keys_of(&list_all(b, "a/", 10).await.unwrap()),
        ["a/empty", "a/one"]
    );

    // Delete.
    b.delete("l/k005").await.unwrap();
    assert!(b.head("l/k005").await.unwrap_err().is_not_found());
    assert_eq!(list_all(b, "l/", 10).await.unwrap().len(), 24);

    // A small file goes up in one request.
    let dir = tmpdir();
    let path = dir.path().join("small");
    std::fs::write(&path, bytes(3, 100_000)).unwrap();
    let r = b.put_file("f/small", &path).await.unwrap();
    assert_eq!((r.size, r.parts), (100_000, 0));
    assert_eq!(b.get("f/small").await.unwrap(), bytes(3, 100_000));

    remove_all(b).await;
}

#[test]
fn local_dir_conformance() {
    let dir = tmpdir();
    let b = LocalDir::open(dir.path()).unwrap();
    rt().block_on(conformance(&b));
    // No temp file of a put is left behind.
    assert_eq!(
        std::fs::read_dir(dir.path().join(".tmp")).unwrap().count(),
        0
    );
}

#[test]
fn garage_conformance() {
    let b = garage_backend("conformance");
    rt().block_on(conformance(&b));
}

/// More keys than one S3 listing page (1000): the continuation token must carry on.
async fn list_beyond_one_page(b: &dyn Backend) {
    let keys: Vec<String> = (0..1005).map(|i| format!("many/{i:05}")).collect();
    futures_util::stream::iter(keys.clone())
        .map(|k| async move { b.put(&k, Bytes::from_static(b"x")).await })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let first = b.list_page("many/", None, 1000).await.unwrap();
    assert_eq!(first.objects.len(), 1000);
    assert!(first.next.is_some());
    let all = list_all(b, "many/", 1000).await.unwrap();
    assert_eq!(keys_of(&all), keys);
    futures_util::stream::iter(keys)
        .map(|k| async move { b.delete(&k).await })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert!(list_all(b, "many/", 1000).await.unwrap().is_empty());
}

#[test]
fn local_dir_lists_beyond_one_page() {
    let dir = tmpdir();
    rt().block_on(list_beyond_one_page(&LocalDir::open(dir.path()).unwrap()));
}

#[test]
fn garage_lists_beyond_one_page() {
    rt().block_on(list_beyond_one_page(&garage_backend("list1005")));
}

/// Writes `len` pseudo-random bytes to `path` in 1 MiB blocks; returns their blake3.
fn write_big_file(path: &Path, len: u64) -> blake3::Hash {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let mut h = blake3::Hasher::new();
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        rng.fill_bytes(&mut block[..n]);
        h.update(&block[..n]);
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
    h.finalize()
}

/// Reads `key` back in 8 MiB ranges (bounded memory) and returns the blake3 of its bytes.
async fn hash_by_ranges(b: &dyn Backend, key: &str, len: u64) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let step = 8u64 << 20;
    let mut off = 0;
    while off < len {
        let end = (off + step).min(len);
        let got = b.get_range(key, off..end).await.unwrap();
        assert_eq!(got.len() as u64, end - off, "range {off}..{end}");
        h.update(&got);
        off = end;
    }
    h.finalize()
}

const BIG: u64 = (110 << 20) + 12_345;

#[test]
fn garage_multipart_upload_of_110_mib_in_bounded_memory() {
    let g = garage();
    let mut cfg = s3_config(&g, "multipart");
    cfg.part_size_mib = 16;
    cfg.multipart_threshold_mib = 64;
    cfg.part_concurrency = 4;
    let b = S3Backend::new(&cfg).unwrap();
    let dir = tmpdir();
    let path = dir.path().join("big");
    let want = write_big_file(&path, BIG);
    rt().block_on(async {
        let t = Instant::now();
        let r = b.put_file("packs/big", &path).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "multipart upload to garage: {} MiB in {secs:.2} s = {:.0} MiB/s ({} parts, peak {} MiB held)",
            BIG >> 20,
            BIG as f64 / (1 << 20) as f64 / secs,
            r.parts,
            r.peak_buffered >> 20
        );
        assert_eq!(r.size, BIG);
        assert_eq!(r.parts, 7);
        assert!(r.etag.as_deref().unwrap().ends_with("-7"), "{:?}", r.etag);
        assert!(r.peak_buffered <= 4 * (16 << 20), "{}", r.peak_buffered);
        assert!(r.peak_buffered >= 16 << 20, "{}", r.peak_buffered);
        assert_eq!(b.head("packs/big").await.unwrap().size, BIG);

        // A range across the first part boundary equals the file's bytes there.
        let at = (16u64 << 20) - 100;
        let mut local = vec![0u8; 200];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&path).unwrap(),
            &mut local,
            at,
        )
        .unwrap();
        assert_eq!(b.get_range("packs/big", at..at + 200).await.unwrap(), local);
        let t = Instant::now();
        assert_eq!(hash_by_ranges(&b, "packs/big", BIG).await, want);
        println!(
            "ranged read-back from garage: {:.0} MiB/s",
            BIG as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
        );
        remove_all(&b).await;
    });
}

#[test]
fn local_dir_put_file_of_110_mib() {
    let dir = tmpdir();
    let path = dir.path().join("big");
    let want = write_big_file(&path, BIG);
    let b = LocalDir::open(&dir.path().join("store")).unwrap();
    rt().block_on(async {
        let r = b.put_file("packs/big", &path).await.unwrap();
        assert_eq!(r.size, BIG);
        assert!(r.peak_buffered <= 1 << 20);
        assert_eq!(hash_by_ranges(&b, "packs/big", BIG).await, want);
    });
}

// ---- probe -----------------------------------------------------------------------------------

#[test]
fn probe_passes_on_garage_and_leaves_nothing_behind() {
    let b = garage_backend("probe-ok");
    rt().block_on(async {
        let t = Instant::now();
        let report = backend::probe(&b).await.unwrap();
        println!("{report}\nprobe of garage: {:?}", t.elapsed());
        let names: Vec<_> = report.steps.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "access",
                "write",
                "checksums",
                "read",
                "list",
                "delete",
                "object-lock"
            ]
        );
        // Garage checks x-amz-checksum-crc32c: uploads use it instead of Content-MD5.
        assert!(report.steps[2].detail.contains("checks CRC32C"), "{report}");
        // Garage 2.5 does not implement object lock; the probe says so instead of failing.
        assert!(
            matches!(report.object_lock, ObjectLock::Unsupported(_)),
            "{report}"
        );
        assert!(list_all(&b, layout::PROBE_PREFIX, 100)
            .await
            .unwrap()
            .is_empty());
    });
}

#[test]
fn probe_passes_on_a_local_dir() {
    let dir = tmpdir();
    let b = LocalDir::open(dir.path()).unwrap();
    let report = rt().block_on(backend::probe(&b)).unwrap();
    assert_eq!(
        report.object_lock,
        ObjectLock::Unsupported("local directory".into())
    );
    assert!(report.to_string().contains("dir "), "{report}");
}

/// Runs the probe with a changed config; returns the error's class and text.
fn probe_failure(cfg: &S3Config) -> (ErrorKind, String, Duration) {
    let b = S3Backend::new(cfg).unwrap();
    let t = Instant::now();
    let e = rt().block_on(backend::probe(&b)).unwrap_err();
    (e.kind(), e.to_string(), t.elapsed())
}

#[test]
fn probe_names_a_wrong_secret_key() {
    let g = garage();
    let mut cfg = s3_config(&g, "probe-secret");
    cfg.secret_access_key = Some(Secret("0".repeat(64)));
    let (kind, msg, t) = probe_failure(&cfg);
    println!("wrong secret: {t:?}\n{msg}");
    assert_eq!(kind, ErrorKind::WrongCredentials, "{msg}");
    assert!(msg.contains("step \"access\""), "{msg}");
    assert!(
        msg.contains("check s3.access_key_id and the secret key"),
        "{msg}"
    );
    assert!(
        !msg.contains(&"0".repeat(64)),
        "the secret is printed: {msg}"
    );
}

#[test]
fn probe_names_an_unknown_access_key() {
    let g = garage();
    let mut cfg = s3_config(&g, "probe-key");
    cfg.access_key_id = Some("GK000000000000000000000000".into());
    let (kind, msg, _) = probe_failure(&cfg);
    assert_eq!(kind, ErrorKind::WrongCredentials, "{msg}");
}

#[test]
fn probe_names_a_missing_bucket() {
    let g = garage();
    let mut cfg = s3_config(&g, "probe-bucket");
    cfg.bucket = "no-such-bucket-here".into();
    let (kind, msg, _) = probe_failure(&cfg);
    println!("{msg}");
    assert_eq!(kind, ErrorKind::NoSuchBucket, "{msg}");
    assert!(msg.contains("no-such-bucket-here"), "{msg}");
    assert!(msg.contains("create the bucket"), "{msg}");
}

#[test]
fn probe_names_an_unreachable_endpoint() {
    let g = garage();
    // A loopback port nobody listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = s3_config(&g, "probe-closed");
    cfg.endpoint = Some(format!("http://127.0.0.1:{port}"));
    cfg.max_attempts = 2;
    cfg.connect_timeout_secs = 2;
    let (kind, msg, t) = probe_failure(&cfg);
    println!("closed port: {t:?}\n{msg}");
    assert_eq!(kind, ErrorKind::Unreachable, "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.contains("check s3.endpoint"), "{msg}");
    assert!(t < Duration::from_secs(20), "{t:?}");
}

#[test]
fn requests_to_a_silent_endpoint_time_out() {
    let g = garage();
    // A real socket that accepts connections (the kernel's backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = s3_config(&g, "probe-silent");
    cfg.endpoint = Some(format!("http://{}", silent.local_addr().unwrap()));
    cfg.request_timeout_secs = 1;
    cfg.max_attempts = 2;
    let (kind, msg, t) = probe_failure(&cfg);
    println!("silent endpoint: {t:?}\n{msg}");
    assert_eq!(kind, ErrorKind::Unreachable, "{msg}");
    assert!(msg.contains("timed out"), "{msg}");
    // Two attempts of one second each, plus a backoff: the timeout applies per attempt.
    assert!(t >= Duration::from_secs(2), "{t:?}");
    assert!(t < Duration::from_secs(15), "{t:?}");
    drop(silent);
}

#[test]
fn probe_names_a_tls_failure() {
    let g = garage();
    // TLS spoken to a plain-HTTP port: the handshake fails.
    let mut cfg = s3_config(&g, "probe-tls");
    cfg.endpoint = Some(g.endpoint.replace("http://", "https://"));
    cfg.max_attempts = 1;
    let (kind, msg, _) = probe_failure(&cfg);
    println!("{msg}");
    assert_eq!(kind, ErrorKind::Tls, "{msg}");
    assert!(msg.contains("http:// vs https://"), "{msg}");
}

#[test]
fn probe_names_clock_skew() {
    let g = garage();
    let cfg = s3_config(&g, "probe-skew");
    // Garage refuses requests signed more than a day in the past.
    let b = S3Backend::with_clock_offset(&cfg, -2 * 86_400).unwrap();
    let e = rt().block_on(backend::probe(&b)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ClockSkew, "{e}");
    assert!(e.to_string().contains("timedatectl"), "{e}");
}

#[test]
fn probe_command_prints_the_result() {
    let g = garage();
    let dir = tmpdir();
    std::fs::write(dir.path().join("secret"), format!("{}\n", g.secret)).unwrap();
    let write_cfg = |secret_file: &str| {
        let path = dir.path().join("tiergate.toml");
        std::fs::write(
            &path,
            format!(
                "[volume]\npath = \"vol\"\n\n[s3]\nendpoint = \"{}\"\nregion = \"{}\"\n\
                 bucket = \"{}\"\nprefix = \"probe-cli\"\npath_style = true\n\
                 access_key_id = \"{}\"\nsecret_access_key_file = \"{secret_file}\"\n\
                 max_attempts = 1\n",
                g.endpoint, g.region, g.bucket, g.key_id
            ),
        )
        .unwrap();
        path
    };
    let run = |cfg: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"))
            .args(["probe", "--config"])
            .arg(cfg)
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap()
    };
    let out = run(&write_cfg("secret"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("probe passed"), "{stdout}");
    assert!(stdout.contains("object lock: not supported"), "{stdout}");

    std::fs::write(dir.path().join("bad-secret"), "x".repeat(40)).unwrap();
    let out = run(&write_cfg("bad-secret"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("wrong credentials"), "{stderr}");
    assert!(!stderr.contains(&"x".repeat(40)), "{stderr}");
}

#[test]
fn probe_command_uses_the_local_store_without_s3() {
    let dir = tmpdir();
    let cfg = dir.path().join("tiergate.toml");
    std::fs::write(&cfg, "[volume]\npath = \"vol\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(["probe", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = dir.path().join("vol/backend");
    assert!(
        stdout.contains(&format!("store: dir {}", store.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("object lock: not supported (local directory)"),
        "{stdout}"
    );
    // The probe object is gone again.
    assert!(std::fs::read_dir(store.join("probe"))
        .unwrap()
        .next()
        .is_none());
}

// ---- corruption ------------------------------------------------------------------------------

/// A sealed pack of three encrypted chunks; returns its path and the chunks' plaintexts.
fn sample_pack(dir: &Path, keys: &tiergate::crypto::Keys) -> (std::path::PathBuf, Vec<Bytes>) {
    let path = dir.join(pack::pack_file_name(7));
    let mut w = PackWriter::create(&path, 7).unwrap();
    let plains: Vec<Bytes> = (0..3).map(|i| bytes(10 + i, 50_000 + i as usize)).collect();
    for p in &plains {
        let id = keys.chunk_id(p);
        w.append(&id, &tiergate::blob::encode(keys, &id, p, 3))
            .unwrap();
    }
    w.seal().unwrap();
    (path, plains)
}

/// Stores a pack, reads it back through the store (footer, then each blob by ranged GET,
/// decoded), then replaces the object with damaged versions and checks each is refused.
async fn corrupted_pack_is_detected(b: &dyn Backend) {
    let dir = tmpdir();
    let keys = tiergate::crypto::MasterKey::generate().subkeys();
    let (path, plains) = sample_pack(dir.path(), &keys);
    let key = layout::pack_key(7);
    b.put_file(&key, &path).await.unwrap();
    let good = b.get(&key).await.unwrap();
    assert_eq!(good, std::fs::read(&path).unwrap());

    // The good copy: the footer lists the blobs and every BlobLocation is a valid ranged GET.
    let fetched = dir.path().join("fetched.pack");
    std::fs::write(&fetched, &good).unwrap();
    let entries = pack::read_footer(&std::fs::File::open(&fetched).unwrap()).unwrap();
    assert_eq!(entries.len(), 3);
    for (e, plain) in entries.iter().zip(&plains) {
        let (off, len) = (e.loc.offset, e.loc.len as u64);
        let blob = b.get_range(&key, off..off + len).await.unwrap();
        assert_eq!(
            tiergate::blob::decode(&keys, &e.id, &blob).unwrap(),
            plain[..]
        );
    }

    // Truncated on the store: no valid trailer, and the last blob comes back short.
    let cut = good.slice(..good.len() - 3000);
    b.put(&key, cut.clone()).await.unwrap();
    std::fs::write(&fetched, b.get(&key).await.unwrap()).unwrap();
    let err = pack::read_footer(&std::fs::File::open(&fetched).unwrap()).unwrap_err();
    assert!(matches!(err, tiergate::Error::Corrupt(_)), "{err}");
    let last = entries.last().unwrap().loc;
    let short = b
        .get_range(&key, last.offset..last.offset + last.len as u64)
        .await
        .unwrap();
    assert!(short.len() < last.len as usize, "{}", short.len());

    // One flipped bit inside the second blob: the AEAD refuses it, naming corruption.
    let mut flipped = good.to_vec();
    flipped[entries[1].loc.offset as usize + 100] ^= 0x04;
    b.put(&key, flipped.into()).await.unwrap();
    let e = &entries[1];
    let blob = b
        .get_range(&key, e.loc.offset..e.loc.offset + e.loc.len as u64)
        .await
        .unwrap();
    let err = tiergate::blob::decode(&keys, &e.id, &blob).unwrap_err();
    assert!(matches!(err, tiergate::Error::Corrupt(_)), "{err}");
    // The footer still verifies: the damage is only in that blob.
    std::fs::write(&fetched, b.get(&key).await.unwrap()).unwrap();
    pack::read_footer(&std::fs::File::open(&fetched).unwrap()).unwrap();

    remove_all(b).await;
}

#[test]
fn local_dir_corrupted_pack_is_detected() {
    let dir = tmpdir();
    rt().block_on(corrupted_pack_is_detected(
        &LocalDir::open(dir.path()).unwrap(),
    ));
}

#[test]
fn garage_corrupted_pack_is_detected() {
    rt().block_on(corrupted_pack_is_detected(&garage_backend("corrupt")));
}

#[test]
fn backends_are_usable_as_trait_objects_across_tasks() {
    // The uploader will share one backend between tasks.
    let dir = tmpdir();
    let b: Arc<dyn Backend> = Arc::new(LocalDir::open(dir.path()).unwrap());
    rt().block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.put(&format!("t/{i}"), bytes(i, 10_000)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(list_all(b.as_ref(), "t/", 3).await.unwrap().len(), 8);
    });
}

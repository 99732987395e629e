//! Fault tests: the daemon under a misbehaving network to its store, a full local disk while
//! tiering to S3, many threads renaming and rewriting in the same directories, and a bounded
//! soak that watches the daemon's memory and file descriptors. In every one, nothing
//! acknowledged may be lost: each test keeps a model of what was acknowledged (fsync, close,
//! a 2xx PUT) and compares the volume with it at the end and after a restart.
//!
//! The S3 tests put a [`FaultProxy`] between `tiergate serve` and the shared Garage of the
//! test run (`TIERGATE_TEST_S3_*`, like tiering.rs: without them they fail saying so). The
//! proxy speaks just enough HTTP/1.1 to act per request: it adds latency, answers with a
//! well-formed S3 error (503 SlowDown, 500 InternalError) instead of forwarding, resets the
//! connection in the middle of a request or of a response, or stalls (accepts, then neither
//! reads nor writes). It closes every connection after one exchange, so each request is a
//! fresh decision.
//!
//! Environment: `TIERGATE_TEST_CONCURRENCY_SECS` (default 20) bounds the concurrent test,
//! `TIERGATE_SOAK_SECS` (default 60) the soak, which also writes its figures as JSON to
//! `TIERGATE_SOAK_REPORT` if set. `benches/run.sh` runs the soak for 10 minutes and puts
//! those figures in its results.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{
    close_after, header_value, random_bytes, read_head, shared_s3, status_kib, text, tiergate,
    unique_prefix, TestVolume, S3,
};
use crate::tiering::sync_ok;
use crate::webdav::share;

// ------------------------------------------------------------------------ the fault proxy

/// What the proxy does to the requests it receives from now on. Percentages apply in this
/// order: error reply, reset while reading the request, reset in the middle of the response;
/// the rest is forwarded (after `latency`). The choice is not random: request n gets the
/// "roll" (n mod 10) * 10 + (n / 10) mod 10, so every ten consecutive requests cover each
/// tenth of the range once, and a phase of ten requests or more sees every fault it enables.
#[derive(Clone, Debug, Default)]
struct Faults {
    latency: Duration,
    error_pct: u32,
    reset_request_pct: u32,
    reset_response_pct: u32,
    /// Accept and hold every new connection without reading or writing until cleared.
    stall: bool,
    /// Flip one bit of every forwarded PUT body on its way to the store: damage in transit.
    damage_put_bodies: bool,
    /// Answer 200 to every PUT carrying `x-amz-checksum-crc32c` without forwarding it, as a
    /// store that ignores that checksum seems to the client.
    ignore_crc32c_puts: bool,
}

/// A snapshot of [`Counters`].
#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct Counts {
    requests: u64,
    forwarded: u64,
    errors: u64,
    reset_requests: u64,
    reset_responses: u64,
    stalls: u64,
    crc32c_puts: u64,
    md5_puts: u64,
}

/// What the proxy did, for assertions that the faults really happened.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    forwarded: AtomicU64,
    errors: AtomicU64,
    reset_requests: AtomicU64,
    reset_responses: AtomicU64,
    stalls: AtomicU64,
    /// PUT requests carrying `x-amz-checksum-crc32c`, and those carrying `Content-MD5`.
    crc32c_puts: AtomicU64,
    md5_puts: AtomicU64,
}

struct ProxyState {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    /// PUTs carrying `x-amz-checksum-crc32c` still to be answered with a 5xx error.
    fail_crc32c_puts: AtomicU64,
    n: Counters,
    stop: AtomicBool,
}

/// A TCP proxy on 127.0.0.1 in front of an S3 server, with faults switched on and off by the
/// test. Threads, no async: one per connection, each closed after one request.
struct FaultProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
}

impl FaultProxy {
    /// A proxy in front of `endpoint` (`http://127.0.0.1:PORT`).
    fn start(endpoint: &str) -> FaultProxy {
        let upstream: SocketAddr = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("endpoint {endpoint}: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            faults: Mutex::new(Faults::default()),
            fail_crc32c_puts: AtomicU64::new(0),
            n: Counters::default(),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        FaultProxy { addr, state }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, f: Faults) {
        *self.state.faults.lock().unwrap() = f;
    }

    fn clear(&self) {
        self.set(Faults::default());
    }

    /// Answers the next `n` PUTs that carry `x-amz-checksum-crc32c` with a 5xx error.
    fn fail_next_crc32c_puts(&self, n: u64) {
        self.state.fail_crc32c_puts.store(n, Ordering::SeqCst);
    }

    /// What the proxy has done so far.
    fn counts(&self) -> Counts {
        let n = &self.state.n;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Counts {
            requests: get(&n.requests),
            forwarded: get(&n.forwarded),
            errors: get(&n.errors),
            reset_requests: get(&n.reset_requests),
            reset_responses: get(&n.reset_responses),
            stalls: get(&n.stalls),
            crc32c_puts: get(&n.crc32c_puts),
            md5_puts: get(&n.md5_puts),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Closes with a TCP RST instead of a FIN (SO_LINGER 0), as a crashed peer or middlebox does.
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// Reads and drops the rest of a request body framed by Content-Length or chunked encoding.
fn drain_body(s: &mut TcpStream, head: &[u8], already: usize) {
    if let Some(n) = header_value(head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut left = n.saturating_sub(already);
        let mut buf = [0u8; 16 << 10];
        while left > 0 {
            match s.read(&mut buf[..left.min(16 << 10)]) {
                Ok(0) | Err(_) => return,
                Ok(k) => left -= k,
            }
        }
    } else if header_value(head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        // Up to the terminating zero-size chunk; good enough for an error reply.
        let mut seen = Vec::new();
        let mut buf = [0u8; 16 << 10];
        while !seen.ends_with(b"0\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(k) => {
                    seen.extend_from_slice(&buf[..k]);
                    let keep = seen.len().saturating_sub(8);
                    seen.drain(..keep);
                }
            }
        }
    }
}

fn error_reply(s: &mut TcpStream, method: &str, n: u64) {
    let (status, code, message) = if n.is_multiple_of(2) {
        (
            "503 Service Unavailable",
            "SlowDown",
            "Please reduce your request rate (injected by the test fault proxy)",
        )
    } else {
        (
            "500 Internal Server Error",
            "InternalError",
            "We encountered an internal error (injected by the test fault proxy)",
        )
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>fault-{n}</RequestId></Error>"
    );
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: fault-{n}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        out.push_str(&body);
    }
    let _ = s.write_all(out.as_bytes());
}

/// One client connection: one request, then close.
fn serve(mut client: TcpStream, st: &ProxyState) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(120)));
    let Some((head, rest)) = read_head(&mut client) else {
        return;
    };
    let n = st.n.requests.fetch_add(1, Ordering::SeqCst);
    let method = String::from_utf8_lossy(&head)
        .split(' ')
        .next()
        .unwrap_or("")
        .to_string();
    let f = st.faults.lock().unwrap().clone();
    let put = method == "PUT";
    let crc32c = put && header_value(&head, "x-amz-checksum-crc32c").is_some();
    if crc32c {
        st.n.crc32c_puts.fetch_add(1, Ordering::SeqCst);
    }
    if put && header_value(&head, "content-md5").is_some() {
        st.n.md5_puts.fetch_add(1, Ordering::SeqCst);
    }
    let fail = crc32c
        && st
            .fail_crc32c_puts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
            .is_ok();
    if crc32c && f.ignore_crc32c_puts {
        if header_value(&head, "expect").is_none() {
            drain_body(&mut client, &head, rest.len());
        }
        let _ = client.write_all(
            b"HTTP/1.1 200 OK\r\nETag: \"not-checked\"\r\nContent-Length: 0\r\n\
              Connection: close\r\n\r\n",
        );
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    if f.stall {
        st.n.stalls.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(120);
        while st.faults.lock().unwrap().stall
            && !st.stop.load(Ordering::SeqCst)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        reset(client);
        return;
    }
    std::thread::sleep(f.latency);
    let roll = ((n % 10) * 10 + (n / 10) % 10) as u32;
    if fail || roll < f.error_pct {
        st.n.errors.fetch_add(1, Ordering::SeqCst);
        // A client waiting for 100-continue gets the final answer instead, without a body.
        if header_value(&head, "expect").is_none() {
            drain_body(&mut client, &head, rest.len());
        }
        error_reply(&mut client, &method, n);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    if roll < f.error_pct + f.reset_request_pct {
        st.n.reset_requests.fetch_add(1, Ordering::SeqCst);
        reset(client);
        return;
    }
    let cut_response = roll < f.error_pct + f.reset_request_pct + f.reset_response_pct;
    let Ok(mut up) = TcpStream::connect(st.upstream) else {
        reset(client);
        return;
    };
    let _ = up.set_read_timeout(Some(Duration::from_secs(120)));
    let mut rest = rest;
    let mut damage = put && f.damage_put_bodies;
    if damage && !rest.is_empty() {
        rest[0] ^= 1;
        damage = false;
    }
    if up.write_all(&close_after(&head)).is_err() || up.write_all(&rest).is_err() {
        reset(client);
        return;
    }
    // The rest of the request body, as the client sends it (its first byte damaged if asked
    // and not done yet).
    let pump = {
        let (mut c, mut u) = (client.try_clone().unwrap(), up.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        if damage {
                            buf[0] ^= 1;
                            damage = false;
                        }
                        if u.write_all(&buf[..k]).is_err() {
                            break;
                        }
                    }
                }
            }
        })
    };
    // Interim 100 Continue answers go through as they are.
    let (rhead, rrest) = loop {
        let Some((h, r)) = read_head(&mut up) else {
            reset(client);
            let _ = up.shutdown(Shutdown::Both);
            let _ = pump.join();
            return;
        };
        if h.starts_with(b"HTTP/1.1 100") {
            let _ = client.write_all(&h);
            // What came after the interim head starts the final one: push it back.
            if !r.is_empty() {
                let mut h2 = r;
                let mut chunk = [0u8; 16 << 10];
                while !h2.windows(4).any(|w| w == b"\r\n\r\n") {
                    match up.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => h2.extend_from_slice(&chunk[..k]),
                    }
                }
                if let Some(i) = h2.windows(4).position(|w| w == b"\r\n\r\n") {
                    let rest2 = h2.split_off(i + 4);
                    break (h2, rest2);
                }
                reset(client);
                let _ = pump.join();
                return;
            }
            continue;
        }
        break (h, r);
    };
    if cut_response {
        st.n.reset_responses.fetch_add(1, Ordering::SeqCst);
        let len = header_value(&rhead, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let _ = client.write_all(&close_after(&rhead));
        let half = len / 2;
        let first = rrest.len().min(half);
        let _ = client.write_all(&rrest[..first]);
        let mut left = half - first;
        let mut buf = [0u8; 16 << 10];
        while left > 0 {
            match up.read(&mut buf[..left.min(16 << 10)]) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    let _ = client.write_all(&buf[..k]);
                    left -= k;
                }
            }
        }
        let _ = up.shutdown(Shutdown::Both);
        let c2 = client.try_clone().unwrap();
        reset(client);
        let _ = c2.shutdown(Shutdown::Both);
        let _ = pump.join();
        return;
    }
    st.n.forwarded.fetch_add(1, Ordering::SeqCst);
    let _ = client.write_all(&close_after(&rhead));
    let _ = client.write_all(&rrest);
    let _ = std::io::copy(&mut up, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
    let _ = pump.join();
}

// ------------------------------------------------------------------------ helpers

/// The `[s3]` section for `s3` through `endpoint` (the proxy): attempts time out after 5 s
/// so a stall costs seconds, not minutes; three attempts per request.
fn s3_section_via(s3: &S3, endpoint: &str, prefix: &str) -> String {
    format!(
        "[s3]\nendpoint = \"{endpoint}\"\nregion = \"{}\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\n\
         path_style = true\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\
         connect_timeout_secs = 2\nrequest_timeout_secs = 5\nmax_attempts = 3\n",
        s3.region, s3.bucket, s3.key_id, s3.secret
    )
}

fn status(v: &TestVolume) -> serde_json::Value {
    tiergate::control::call(&v.vol_dir(), "status").unwrap()
}

fn evict(v: &TestVolume) {
    let o = tiergate(&["evict"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
}

/// Writes `data` to `path` and fsyncs it: acknowledged when this returns.
fn write_synced(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Every file of `files` reads back identical through the mount.
fn check_files(v: &TestVolume, files: &BTreeMap<String, Vec<u8>>, when: &str) {
    for (name, data) in files {
        let got = std::fs::read(v.path(name))
            .unwrap_or_else(|e| panic!("{when}: reading {name}: {e}\n{}", v.log_tail()));
        assert!(
            got == *data,
            "{when}: {name} differs ({} bytes, want {})",
            got.len(),
            data.len()
        );
    }
}

/// Runs `f` on a thread and fails the test if it has not returned within `limit`: a hang is a
/// failure, not a stuck test run.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let h = std::thread::spawn(f);
    let deadline = Instant::now() + limit;
    while !h.is_finished() {
        assert!(Instant::now() < deadline, "{what} hung for {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    h.join().unwrap()
}

fn seed() -> u64 {
    let s = rand::random::<u64>();
    eprintln!("fault test seed {s}");
    s
}

// ------------------------------------------------------------------------ S3 faults

/// A body damaged on its way to the store is refused, whichever upload checksum the probe
/// chose, and nothing is stored under its key. Garage checks CRC32C, so the probe switches
/// single-part puts to it (unsigned payload); behind a proxy that makes the store seem to take
/// any CRC32C, or that answers the probe's wrong-checksum put with a 5xx (which proves nothing),
/// the probe keeps Content-MD5 with a signed payload.
#[test]
fn s3_a_body_damaged_in_transit_is_refused_whichever_checksum_the_probe_chose() {
    use tiergate::backend::{self, s3::S3Backend, Backend};
    use tiergate::config::{S3Config, Secret};
    let s3 = shared_s3();
    let proxy = FaultProxy::start(&s3.endpoint);
    let backend_via_proxy = |name: &str| {
        let mut c = S3Config::new(Some(&proxy.endpoint()), &s3.region, &s3.bucket);
        c.path_style = true;
        c.access_key_id = Some(s3.key_id.clone());
        c.secret_access_key = Some(Secret(s3.secret.clone()));
        c.prefix = unique_prefix(name);
        c.max_attempts = 2;
        S3Backend::new(&c).unwrap()
    };
    let checksum_step = |report: &backend::ProbeReport| {
        report
            .steps
            .iter()
            .find(|s| s.name == "checksums")
            .map(|s| s.detail.clone())
            .unwrap_or_else(|| panic!("no checksums step in\n{report}"))
    };
    let data = bytes::Bytes::from(random_bytes(seed(), 1 << 20));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fast = backend_via_proxy("crc32c");
        let report = backend::probe(&fast).await.unwrap();
        assert!(checksum_step(&report).contains("checks CRC32C"), "{report}");
        let before = proxy.counts();
        refused_then_stored(&proxy, &fast, "packs/crc32c", &data).await;
        let after = proxy.counts();
        assert_eq!(after.crc32c_puts - before.crc32c_puts, 2, "{after:?}");
        assert_eq!(after.md5_puts, before.md5_puts, "{after:?}");

        let careful = backend_via_proxy("md5");
        proxy.set(Faults {
            ignore_crc32c_puts: true,
            ..Faults::default()
        });
        let report = backend::probe(&careful).await.unwrap();
        assert!(
            checksum_step(&report).contains("accepted a body whose CRC32C did not match"),
            "{report}"
        );
        let before = proxy.counts();
        refused_then_stored(&proxy, &careful, "packs/md5", &data).await;
        let after = proxy.counts();
        assert_eq!(after.md5_puts - before.md5_puts, 2, "{after:?}");
        assert_eq!(after.crc32c_puts, before.crc32c_puts, "{after:?}");
        proxy.clear();

        // Both attempts (max_attempts = 2) of the wrong-checksum put answered 503/500.
        let unsure = backend_via_proxy("unsure");
        proxy.fail_next_crc32c_puts(2);
        let report = backend::probe(&unsure).await.unwrap();
        assert!(
            checksum_step(&report).contains("failed without a 400"),
            "{report}"
        );
        let before = proxy.counts();
        unsure.put("packs/unsure", data.clone()).await.unwrap();
        let after = proxy.counts();
        assert_eq!(after.md5_puts - before.md5_puts, 1, "{after:?}");
        unsure.delete("packs/unsure").await.unwrap();
    });
}

/// A put through `proxy` damaged in transit fails and leaves nothing under `key`; the same
/// put undamaged then succeeds and reads back.
async fn refused_then_stored(
    proxy: &FaultProxy,
    b: &tiergate::backend::s3::S3Backend,
    key: &str,
    data: &bytes::Bytes,
) {
    use tiergate::backend::Backend;
    proxy.set(Faults {
        damage_put_bodies: true,
        ..Faults::default()
    });
    let err = b.put(key, data.clone()).await.unwrap_err();
    proxy.clear();
    eprintln!("damaged put of {key}: {err}");
    assert!(
        b.head(key).await.unwrap_err().is_not_found(),
        "{key} stored"
    );
    b.put(key, data.clone()).await.unwrap();
    assert_eq!(&b.get(key).await.unwrap(), data);
    b.delete(key).await.unwrap();
}

/// Latency, error replies, resets and stalls between the daemon and the store while files
/// are written through the mount and the share; then a clean sync, eviction, reads back under
/// read faults, and a restart: every acknowledged byte is there, and while the store
/// misbehaves `tiergate sync` and the status name the fault.
#[test]
fn s3_faults_on_the_network_lose_nothing() {
    let s3 = shared_s3();
    let proxy = FaultProxy::start(&s3.endpoint);
    let prefix = unique_prefix("faults");
    let mut v = TestVolume::new(&format!(
        "pack_size_mib = 4\n[cache]\nmax_size = \"1GiB\"\n{}",
        s3_section_via(&s3, &proxy.endpoint(), &prefix)
    ));
    v.start();
    let mut files = BTreeMap::new();
    let mut n = 0u64;
    let mut write_some = |v: &TestVolume, files: &mut BTreeMap<String, Vec<u8>>, count: u64| {
        for _ in 0..count {
            let name = format!("f{n}.bin");
            let data = random_bytes(7000 + n, 1_500_000 + (n as usize * 7919) % 1_500_000);
            write_synced(&v.path(&name), &data)
                .unwrap_or_else(|e| panic!("writing {name}: {e}\n{}", v.log_tail()));
            files.insert(name, data);
            n += 1;
        }
    };

    // 1. Everything at once, at rates the SDK's retries mostly absorb.
    proxy.set(Faults {
        latency: Duration::from_millis(20),
        error_pct: 20,
        reset_request_pct: 10,
        reset_response_pct: 10,
        ..Faults::default()
    });
    write_some(&v, &mut files, 8);
    let dav = share(&v);
    for i in 0..3u64 {
        let name = format!("dav{i}.bin");
        let data = random_bytes(9100 + i, 700_000);
        let r = dav.put(&format!("/{name}"), &data);
        assert!(
            r.status == 201 || r.status == 204,
            "PUT {name}: {}",
            r.status
        );
        files.insert(name, data);
    }
    // Uploads go on through the faults; a sync may or may not get through in time.
    let _ = tiergate(&["sync", "--timeout", "20"], &v.config);

    // 2. Every request refused: a sync cannot finish and says why.
    proxy.set(Faults {
        error_pct: 100,
        ..Faults::default()
    });
    write_some(&v, &mut files, 3);
    let o = tiergate(&["sync", "--timeout", "8"], &v.config);
    assert_eq!(o.status.code(), Some(124), "sync timeout: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("injected by the test fault proxy")
            && (out.contains("503") || out.contains("500")),
        "sync should name the store's error: {out}"
    );
    let st = status(&v);
    let last = st["last_error"].as_str().unwrap_or("");
    assert!(
        last.contains("SlowDown") || last.contains("InternalError"),
        "status last_error should name the fault: {st}"
    );
    assert!(st["upload_failures"].as_u64().unwrap() > 0, "{st}");

    // 3. Stalls: writes and fsyncs stay local and quick, the daemon keeps answering.
    proxy.set(Faults {
        stall: true,
        ..Faults::default()
    });
    let t = Instant::now();
    write_some(&v, &mut files, 3);
    eprintln!(
        "3 files written and fsync'd during a stall in {:?}",
        t.elapsed()
    );
    let o = tiergate(&["sync", "--timeout", "8"], &v.config);
    assert_eq!(o.status.code(), Some(124), "sync timeout: {}", text(&o));
    let st = status(&v);
    assert!(st["queued_bytes"].as_u64().unwrap() > 0, "{st}");

    // 4. Clean again: everything goes off-site.
    proxy.clear();
    let out = sync_ok(&v, "240");
    assert!(out.contains("off-site"), "{out}");
    let c = proxy.counts();
    eprintln!("after the write faults: {c:?}");
    assert!(c.errors > 0 && c.reset_requests > 0 && c.reset_responses > 0 && c.stalls > 0);

    // 5. Reads of evicted data through the faults: a read is the data or an error, never
    // other bytes, and each file reads whole within a few tries.
    evict(&v);
    let before = proxy.counts();
    proxy.set(Faults {
        latency: Duration::from_millis(10),
        error_pct: 10,
        reset_request_pct: 5,
        reset_response_pct: 10,
        ..Faults::default()
    });
    let mut failed_reads = 0;
    for (name, data) in &files {
        let mut ok = false;
        for _ in 0..6 {
            match std::fs::read(v.path(name)) {
                Ok(got) => {
                    assert!(
                        got == *data,
                        "{name}: a read under faults returned other bytes"
                    );
                    ok = true;
                    break;
                }
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}: {e}");
                    failed_reads += 1;
                }
            }
        }
        assert!(ok, "{name} did not read back in 6 tries\n{}", v.log_tail());
    }
    let after = proxy.counts();
    eprintln!("reads under faults: {failed_reads} failed with EIO and were retried; {after:?}");
    assert!(
        after.errors + after.reset_responses > before.errors + before.reset_responses,
        "no fault hit a fetch"
    );
    proxy.clear();

    // 6. Restart, evict, and read everything from the store once more.
    v.stop();
    v.start();
    evict(&v);
    check_files(&v, &files, "after a restart");
    assert!(status(&v)["get_requests"].as_u64().unwrap() > 0);
    v.stop();
}

/// The volume on a small filesystem, tiering to S3 through a stalled store so nothing can
/// leave: writers get ENOSPC (they do not hang), what they had acknowledged stays intact, and
/// once uploads drain and the cache is evicted, writing works again.
#[test]
fn s3_full_disk_while_tiering_gives_enospc_then_recovers() {
    let s3 = shared_s3();
    let proxy = FaultProxy::start(&s3.endpoint);
    let prefix = unique_prefix("fulldisk");
    // The cache limit is above the disk's size, so backpressure does not save the writer:
    // the disk fills first.
    let mut v = TestVolume::new(&format!(
        "pack_size_mib = 4\n[cache]\nmax_size = \"1GiB\"\n{}",
        s3_section_via(&s3, &proxy.endpoint(), &prefix)
    ));
    let _tmpfs = v.move_to_tmpfs("96m");
    v.start();
    let mut files = BTreeMap::new();
    let keep = random_bytes(501, 8 << 20);
    write_synced(&v.path("keep.bin"), &keep).unwrap();
    files.insert("keep.bin".to_string(), keep);
    sync_ok(&v, "60");

    proxy.set(Faults {
        stall: true,
        ..Faults::default()
    });
    // Files of 4 MiB, each fsync'd, until the disk is full: the error must be ENOSPC.
    let mnt = v.mnt.clone();
    let (acked, err) = within(
        Duration::from_secs(180),
        "writing into a full disk",
        move || {
            let mut acked = Vec::new();
            for i in 0..64u64 {
                let name = format!("fill{i}.bin");
                let data = random_bytes(600 + i, 4 << 20);
                match write_synced(&mnt.join(&name), &data) {
                    Ok(()) => acked.push((name, data)),
                    Err(e) => return (acked, Some((name, e))),
                }
            }
            (acked, None)
        },
    );
    let (failed, err) = err.expect("256 MiB fitted into a 96 MiB filesystem");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{failed}: {err}");
    eprintln!("{} files of 4 MiB acknowledged before ENOSPC", acked.len());
    // As a backup tool would: give up on the failed file.
    let _ = std::fs::remove_file(v.path(&failed));
    for (name, data) in acked {
        files.insert(name, data);
    }
    check_files(&v, &files, "with the disk full");
    // On the tmpfs now, not at `v.vol_dir()`.
    let st = tiergate::control::call(&v.dir.path().join("small/vol"), "status").unwrap();
    assert!(st["queued_bytes"].as_u64().unwrap() > 0, "{st}");

    // The store comes back: uploads drain, the cache is emptied, there is room again.
    proxy.clear();
    sync_ok(&v, "240");
    evict(&v);
    let more = random_bytes(700, 16 << 20);
    let path = v.path("after.bin");
    within(
        Duration::from_secs(60),
        "writing after eviction",
        move || write_synced(&path, &more),
    )
    .unwrap_or_else(|e| panic!("writing after the space came back: {e}\n{}", v.log_tail()));
    files.insert("after.bin".to_string(), random_bytes(700, 16 << 20));
    check_files(&v, &files, "after space came back");
    // Those reads filled the fetch cache, which is bounded by cache.max_size (above the disk's
    // size here), not by free space: the disk is full again, and a daemon cannot start on a
    // full disk (the metadata store needs room to open). Evicting empties the fetch cache.
    evict(&v);
    v.stop();
    v.start();
    check_files(&v, &files, "after a restart");
    v.stop();
}

// ------------------------------------------------------------------------ concurrency

/// A file's content names itself: a header line `id version len`, then bytes derived from
/// (id, version). A reader can check any file it opens without knowing the model.
fn content(id: u64, version: u64) -> Vec<u8> {
    let len = 1 + ((id * 7919 + version * 104_729) % 300_000) as usize;
    let mut v = format!("{id} {version} {len}\n").into_bytes();
    v.extend_from_slice(&random_bytes(id << 20 | version, len));
    v
}

fn parse_content(b: &[u8]) -> Option<(u64, u64)> {
    let nl = b.iter().position(|&c| c == b'\n')?;
    let head = std::str::from_utf8(&b[..nl]).ok()?;
    let mut f = head.split(' ').map(|x| x.parse::<u64>().ok());
    let (id, version) = (f.next()??, f.next()??);
    (content(id, version) == b).then_some((id, version))
}

/// Several threads create, replace (write a temporary file, fsync, rename over), rename
/// across directories and delete files in the same three directories, while others list and
/// read them; each file belongs to one writer, which records what it acknowledged. Readers
/// must only ever see whole versions. At the end, and after a restart, the tree is exactly
/// the model.
#[test]
fn concurrent_writers_readers_and_renames_keep_every_acknowledged_file() {
    let secs: u64 = std::env::var("TIERGATE_TEST_CONCURRENCY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed = seed();
    let mut v = TestVolume::new("[webdav]\nenabled = false\n");
    v.start();
    const DIRS: u64 = 3;
    const WRITERS: u64 = 3;
    const READERS: u64 = 2;
    for d in 0..DIRS {
        std::fs::create_dir(v.path(&format!("d{d}"))).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (mnt, stop) = (v.mnt.clone(), stop.clone());
        writers.push(std::thread::spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (w + 1));
            // id -> (path relative to the mount, version)
            let mut mine: HashMap<u64, (String, u64)> = HashMap::new();
            let mut next_id = w << 32;
            let mut ops = 0u64;
            while !stop.load(Ordering::Relaxed) {
                ops += 1;
                let pick = mine
                    .keys()
                    .copied()
                    .nth(rng.gen_range(0..mine.len().max(1)));
                match (rng.gen_range(0..10), pick) {
                    (0..=2, _) | (_, None) => {
                        let id = next_id;
                        next_id += 1;
                        // Written under a temporary name and renamed into place, so readers
                        // never see it half written.
                        let rel = format!("d{}/w{w}-{id}", rng.gen_range(0..DIRS));
                        let tmp = format!("{rel}.tmp");
                        write_synced(&mnt.join(&tmp), &content(id, 0)).unwrap();
                        std::fs::rename(mnt.join(&tmp), mnt.join(&rel)).unwrap();
                        mine.insert(id, (rel, 0));
                    }
                    (3..=5, Some(id)) => {
                        let (rel, ver) = mine[&id].clone();
                        let tmp = format!("{}.tmp", rel);
                        write_synced(&mnt.join(&tmp), &content(id, ver + 1)).unwrap();
                        std::fs::rename(mnt.join(&tmp), mnt.join(&rel)).unwrap();
                        mine.insert(id, (rel, ver + 1));
                    }
                    (6..=8, Some(id)) => {
                        let (rel, ver) = mine[&id].clone();
                        let to = format!("d{}/w{w}-{id}-{ops}", rng.gen_range(0..DIRS));
                        std::fs::rename(mnt.join(&rel), mnt.join(&to)).unwrap();
                        mine.insert(id, (to, ver));
                    }
                    (_, Some(id)) => {
                        let (rel, _) = mine.remove(&id).unwrap();
                        std::fs::remove_file(mnt.join(&rel)).unwrap();
                    }
                }
            }
            // Durable for the restart below: the renames and deletes too.
            std::fs::File::open(mnt.join("d0"))
                .unwrap()
                .sync_all()
                .unwrap();
            (mine, ops)
        }));
    }
    let mut readers = Vec::new();
    for r in 0..READERS {
        let (mnt, stop, reads) = (v.mnt.clone(), stop.clone(), reads.clone());
        readers.push(std::thread::spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (100 + r));
            while !stop.load(Ordering::Relaxed) {
                let dir = mnt.join(format!("d{}", rng.gen_range(0..DIRS)));
                let names: Vec<_> = std::fs::read_dir(&dir)
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.ends_with(".tmp"))
                    .collect();
                for name in names.iter().take(8) {
                    match std::fs::read(dir.join(name)) {
                        Ok(b) => {
                            assert!(
                                parse_content(&b).is_some(),
                                "{name}: a reader saw a torn or foreign file ({} bytes)",
                                b.len()
                            );
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                        // Renamed or deleted since the listing.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => panic!("{name}: {e}"),
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut model: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut total_ops = 0;
    for h in writers {
        let (mine, ops) = h.join().unwrap();
        total_ops += ops;
        for (id, (rel, ver)) in mine {
            model.insert(rel, (id, ver));
        }
    }
    for h in readers {
        h.join().unwrap();
    }
    let reads = reads.load(Ordering::Relaxed);
    eprintln!(
        "{secs} s: {total_ops} writer operations, {reads} verified reads, {} files at the end",
        model.len()
    );
    assert!(
        total_ops > 100 && reads > 100,
        "too little happened to prove anything"
    );

    let check = |v: &TestVolume, when: &str| {
        let mut found = BTreeMap::new();
        for d in 0..DIRS {
            for e in std::fs::read_dir(v.path(&format!("d{d}"))).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                let rel = format!("d{d}/{name}");
                let b = std::fs::read(v.path(&rel)).unwrap();
                let parsed = parse_content(&b)
                    .unwrap_or_else(|| panic!("{when}: {rel} holds no whole version"));
                found.insert(rel, parsed);
            }
        }
        assert_eq!(found, model, "{when}: the tree is not the model");
    };
    check(&v, "at the end");
    v.stop();
    v.start();
    check(&v, "after a restart");
    v.stop();
}

/// The deterministic form of what the concurrent test found: a directory listing (taken at
/// opendir) still names `z.tmp` after `z.tmp` was renamed over `z`. If that stale name reaches
/// the kernel with `z`'s inode, the next `open("z.tmp", O_CREAT|O_TRUNC)` truncates `z`, an
/// acknowledged file, and the writer's rename then fails with ENOENT.
#[test]
fn a_stale_directory_listing_never_truncates_a_renamed_file() {
    use std::os::fd::AsRawFd;
    let mut v = TestVolume::new("[webdav]\nenabled = false\n");
    v.start();
    std::fs::create_dir(v.path("d")).unwrap();
    // Enough names before `z.tmp` that a small getdents buffer stops before it.
    for i in 0..200 {
        std::fs::write(v.path(&format!("d/a{i:03}")), b"filler").unwrap();
    }
    let old = random_bytes(1, 100_000);
    write_synced(&v.path("d/z"), &old).unwrap();
    let new = random_bytes(2, 100_000);
    write_synced(&v.path("d/z.tmp"), &new).unwrap();

    let dir = std::fs::File::open(v.path("d")).unwrap();
    let mut buf = vec![0u8; 1024];
    let getdents = |buf: &mut [u8]| -> isize {
        // SAFETY: a directory fd and a buffer of the given length.
        unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            ) as isize
        }
    };
    assert!(getdents(&mut buf) > 0);
    // Replace `z` atomically, as backup tools do, while the listing is open.
    std::fs::rename(v.path("d/z.tmp"), v.path("d/z")).unwrap();
    while getdents(&mut buf) > 0 {}
    drop(dir);
    // The next round of the same tool writes `z.tmp` again.
    let newer = random_bytes(3, 50_000);
    write_synced(&v.path("d/z.tmp"), &newer).unwrap();
    assert!(
        std::fs::read(v.path("d/z")).unwrap() == new,
        "creating z.tmp changed z"
    );
    std::fs::rename(v.path("d/z.tmp"), v.path("d/z")).unwrap();
    assert!(std::fs::read(v.path("d/z")).unwrap() == newer);
    v.stop();
}

// ------------------------------------------------------------------------ soak

/// Resident memory (KiB) and open file descriptors of a process.
fn rss_and_fds(pid: u32) -> (u64, u64) {
    let rss = status_kib(pid, "VmRSS:");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    (rss, fds)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Writes, overwrites, deletes, reads (some from the store after an eviction) and syncs in a
/// loop for `TIERGATE_SOAK_SECS` (default 60) against S3, sampling the daemon's RSS and open
/// descriptors every half second; the later half of the run must not sit above the first
/// half (margins below), and the files must match the model at the end and after a restart.
#[test]
fn soak_memory_and_descriptors_stay_flat() {
    let secs: u64 = std::env::var("TIERGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let s3 = shared_s3();
    let prefix = unique_prefix("soak");
    let seed = seed();
    let mut v = TestVolume::new(&format!(
        "pack_size_mib = 4\n[cache]\nmax_size = \"1GiB\"\n{}",
        crate::common::s3_section(&s3, &prefix)
    ));
    v.start();
    let pid = v.pid();
    let dav = share(&v);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let start = Instant::now();
    let mut last_sample = Instant::now() - Duration::from_secs(1);
    let (mut ops, mut syncs, mut evictions) = (0u64, 0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        if last_sample.elapsed() >= Duration::from_millis(500) {
            samples.push(rss_and_fds(pid));
            last_sample = Instant::now();
        }
        ops += 1;
        let name = format!("s{}.bin", rng.gen_range(0..40));
        match rng.gen_range(0..100) {
            0..=34 => {
                let data = random_bytes(rng.gen(), rng.gen_range(1..2_000_000));
                write_synced(&v.path(&name), &data).unwrap();
                model.insert(name, data);
            }
            35..=44 => {
                // A partial overwrite inside the file.
                if let Some(old) = model.get_mut(&name) {
                    let at = rng.gen_range(0..old.len());
                    let patch = random_bytes(rng.gen(), rng.gen_range(1..200_000));
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(v.path(&name))
                        .unwrap();
                    f.write_all_at(&patch, at as u64).unwrap();
                    f.sync_all().unwrap();
                    if old.len() < at + patch.len() {
                        old.resize(at + patch.len(), 0);
                    }
                    old[at..at + patch.len()].copy_from_slice(&patch);
                }
            }
            45..=49 => {
                let data = random_bytes(rng.gen(), rng.gen_range(1..500_000));
                let r = dav.put(&format!("/{name}"), &data);
                assert!(
                    r.status == 201 || r.status == 204,
                    "PUT {name}: {}",
                    r.status
                );
                model.insert(name, data);
            }
            50..=59 => {
                if model.remove(&name).is_some() {
                    std::fs::remove_file(v.path(&name)).unwrap();
                }
            }
            60..=94 => {
                if let Some(want) = model.get(&name) {
                    let got = std::fs::read(v.path(&name)).unwrap();
                    assert!(got == *want, "{name} differs during the soak");
                }
            }
            95..=97 => {
                sync_ok(&v, "120");
                syncs += 1;
            }
            _ => {
                sync_ok(&v, "120");
                evict(&v);
                evictions += 1;
            }
        }
    }
    samples.push(rss_and_fds(pid));
    let half = samples.len() / 2;
    let (first, later) = samples.split_at(half);
    let rss_first_max = first.iter().map(|s| s.0).max().unwrap();
    let rss_later_median = median(later.iter().map(|s| s.0).collect());
    let rss_later_max = later.iter().map(|s| s.0).max().unwrap();
    let fds_first_max = first.iter().map(|s| s.1).max().unwrap();
    let fds_later_median = median(later.iter().map(|s| s.1).collect());
    eprintln!(
        "soak {secs} s: {ops} operations, {syncs} syncs, {evictions} evictions, {} files; \
         RSS first half max {} MiB, later half median {} MiB, max {} MiB; fds first half max \
         {fds_first_max}, later half median {fds_later_median}",
        model.len(),
        rss_first_max >> 10,
        rss_later_median >> 10,
        rss_later_max >> 10
    );
    // Margins: the later half's median may exceed the first half's peak by 25% plus 64 MiB
    // (the metadata store's cache, 64 MiB by default, fills as the volume grows) and by 16
    // descriptors (uploads and fetches in flight at the moment of a sample).
    let rss_flat = rss_later_median <= rss_first_max + rss_first_max / 4 + (64 << 10);
    let fds_flat = fds_later_median <= fds_first_max + 16;
    if let Ok(path) = std::env::var("TIERGATE_SOAK_REPORT") {
        let peak_kib = status_kib(pid, "VmHWM:");
        let report = serde_json::json!({
            "secs": secs, "operations": ops, "syncs": syncs, "evictions": evictions,
            "files": model.len(), "samples": samples.len(), "peak_rss_kib": peak_kib,
            "rss_first_half_max_kib": rss_first_max, "rss_later_half_median_kib": rss_later_median,
            "rss_later_half_max_kib": rss_later_max, "fds_first_half_max": fds_first_max,
            "fds_later_half_median": fds_later_median, "flat": rss_flat && fds_flat,
        });
        std::fs::write(path, report.to_string()).unwrap();
    }
    assert!(
        rss_flat,
        "RSS grew: first half peak {rss_first_max} KiB, later half median {rss_later_median} KiB"
    );
    assert!(
        fds_flat,
        "open descriptors grew: first half peak {fds_first_max}, later half median \
         {fds_later_median}"
    );
    check_files(&v, &model, "after the soak");
    sync_ok(&v, "120");
    v.stop();
    v.start();
    check_files(&v, &model, "after a restart");
    v.stop();
}

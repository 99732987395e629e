//! Tests of the WebDAV share over a real socket, served by a real `tiergate serve` process
//! (which also mounts the volume, so both views of one volume can be compared).
//!
//! The HTTP client here is deliberately minimal (one request per connection, `Connection:
//! close`): it lets a test stream a body of any size, cut a body off mid-way, or send a
//! malformed request, which a full client library would not allow.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{random_bytes, status_kib, TestVolume, PASSPHRASE};

// ------------------------------------------------------------------------ a small client

#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Clone)]
pub(crate) struct Dav {
    addr: SocketAddr,
    auth: Option<String>,
}

pub(crate) fn read_response(stream: TcpStream, method: &str) -> std::io::Result<Resp> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if method == "HEAD" || status == 204 || status == 304 || status < 200 {
        return Ok(resp);
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if n == 0 {
                break;
            }
            let start = resp.body.len();
            resp.body.resize(start + n, 0);
            r.read_exact(&mut resp.body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(n) = resp.header("content-length").and_then(|v| v.parse().ok()) {
        resp.body.resize(n, 0);
        r.read_exact(&mut resp.body)?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

impl Dav {
    /// The share's address, for tests that speak raw HTTP.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        s
    }

    fn head(&self, method: &str, path: &str, headers: &[(&str, &str)], len: Option<u64>) -> String {
        let mut h = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(a) = &self.auth {
            h.push_str(&format!("Authorization: {a}\r\n"));
        }
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(n) = len {
            h.push_str(&format!("Content-Length: {n}\r\n"));
        }
        h.push_str("\r\n");
        h
    }

    /// One request with a body held in memory.
    pub(crate) fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut s = self.connect();
        let len = (!body.is_empty() || method == "PUT").then_some(body.len() as u64);
        // The server may refuse a request head (431) or answer (401, 507) before reading the
        // body, and close: not an error here, the answer says what happened.
        let _ = s.write_all(self.head(method, path, headers, len).as_bytes());
        // The server may answer (401, 507) before reading the body and close: not an error.
        let _ = s.write_all(body);
        read_response(s, method).unwrap()
    }

    /// A PUT whose body is produced piece by piece by `fill` (called until it returns 0).
    fn put_stream(
        &self,
        path: &str,
        len: u64,
        mut fill: impl FnMut(&mut [u8]) -> usize,
    ) -> std::io::Result<Resp> {
        let mut s = self.connect();
        s.write_all(self.head("PUT", path, &[], Some(len)).as_bytes())?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = fill(&mut buf);
            if n == 0 {
                break;
            }
            if s.write_all(&buf[..n]).is_err() {
                break; // the server answered early; read what it said
            }
        }
        read_response(s, "PUT")
    }

    pub(crate) fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], b"")
    }

    pub(crate) fn put(&self, path: &str, body: &[u8]) -> Resp {
        self.req("PUT", path, &[], body)
    }
}

/// The share's address from the daemon's log line `webdav listening on http://ADDR/`.
pub(crate) fn share(v: &TestVolume) -> Dav {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(v.log_path()).unwrap_or_default();
        // The last such line: the log is appended to across restarts.
        if let Some(rest) = log
            .rsplit("webdav listening on http://")
            .next()
            .filter(|_| log.contains("webdav listening on http://"))
        {
            let addr = rest.split('/').next().unwrap().parse().unwrap();
            return Dav { addr, auth: None };
        }
        assert!(
            Instant::now() < deadline,
            "no webdav address:\n{}",
            v.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn started(extra: &str) -> (TestVolume, Dav) {
    let mut v = TestVolume::new(extra);
    v.start();
    let d = share(&v);
    (v, d)
}

/// The pid of the `tiergate serve` process serving `v` (found by its config path).
fn daemon_pid(v: &TestVolume) -> u32 {
    let want = v.config.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(" serve ") && cmd.contains(&want) {
            return pid;
        }
    }
    panic!("no daemon process for {want}");
}

fn etag(r: &Resp) -> String {
    r.header("etag").expect("an ETag").to_string()
}

// ------------------------------------------------------------------------ tests

/// A 2 GiB PUT streams through in bounded memory, and the bytes read back through the FUSE
/// mount are the bytes sent.
#[test]
fn webdav_put_of_2_gib_streams_in_bounded_memory() {
    let (v, d) = started("");
    let pid = daemon_pid(&v);
    let before = status_kib(pid, "VmHWM:");
    const LEN: u64 = 2 << 30;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut sent = blake3::Hasher::new();
    let mut left = LEN;
    let t = Instant::now();
    let r = d
        .put_stream("/big.bin", LEN, |buf| {
            let n = (left as usize).min(buf.len());
            rng.fill_bytes(&mut buf[..n]);
            sent.update(&buf[..n]);
            left -= n as u64;
            n
        })
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.status, 201, "{}", r.text());
    let hwm = status_kib(pid, "VmHWM:");
    eprintln!(
        "2 GiB PUT: {secs:.1} s ({:.0} MiB/s); daemon peak RSS (VmHWM) {} MiB before, {} MiB after",
        2048.0 / secs,
        before >> 10,
        hwm >> 10
    );
    // Bounded by the volume's dirty limit (256 MiB) plus chunk buffers, never by the body.
    assert!(
        hwm < 512 << 10,
        "peak RSS {} MiB for a 2 GiB PUT",
        hwm >> 10
    );
    let mut f = std::fs::File::open(v.path("big.bin")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), LEN);
    let mut got = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.update(&buf[..n]);
    }
    assert_eq!(
        got.finalize(),
        sent.finalize(),
        "content read through FUSE differs"
    );
}

/// Range GETs, HEAD, content-identity ETags and conditional requests.
#[test]
fn webdav_ranges_etags_and_conditional_requests() {
    let (_v, d) = started("");
    let data = random_bytes(1, 3 << 20);
    let r = d.put("/f.bin", &data);
    assert_eq!(r.status, 201);
    let tag = etag(&r);
    assert!(tag.starts_with('"') && tag.len() > 20, "{tag}");

    let g = d.req("GET", "/f.bin", &[("Range", "bytes=100-199")], b"");
    assert_eq!(g.status, 206);
    assert_eq!(g.body, &data[100..200]);
    assert_eq!(g.header("content-range"), Some("bytes 100-199/3145728"));
    let g = d.req("GET", "/f.bin", &[("Range", "bytes=-10")], b"");
    assert_eq!(g.status, 206);
    assert_eq!(g.body, &data[data.len() - 10..]);
    let g = d.req("GET", "/f.bin", &[("Range", "bytes=3000000-")], b"");
    assert_eq!(g.status, 206);
    assert_eq!(g.body, &data[3000000..]);
    let g = d.req("GET", "/f.bin", &[("Range", "bytes=9999999-")], b"");
    assert_eq!(g.status, 416);
    let h = d.req("HEAD", "/f.bin", &[], b"");
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some("3145728"));
    assert_eq!(etag(&h), tag);

    // If-None-Match with the current tag: 304; If-Match with a stale tag: 412, nothing written.
    let g = d.req("GET", "/f.bin", &[("If-None-Match", &tag)], b"");
    assert_eq!(g.status, 304);
    let other = random_bytes(2, 3 << 20);
    let p = d.req("PUT", "/f.bin", &[("If-Match", "\"0000\"")], &other);
    assert_eq!(p.status, 412);
    assert_eq!(d.get("/f.bin").body, data);
    let p = d.req("PUT", "/f.bin", &[("If-Match", &tag)], &other);
    assert_eq!(p.status, 204);
    let tag2 = etag(&p);
    assert_ne!(tag2, tag, "same length, new content: new ETag");
    // If-None-Match: * refuses to overwrite an existing file.
    let p = d.req("PUT", "/f.bin", &[("If-None-Match", "*")], b"x");
    assert_eq!(p.status, 412);

    // The ETag is the content's identity, not length+mtime: the old bytes bring the old tag
    // back, and another file with those bytes has it too.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(etag(&d.put("/f.bin", &data)), tag);
    assert_eq!(etag(&d.put("/g.bin", &data)), tag);
    // A conditional range request with the right tag gives the range.
    let g = d.req(
        "GET",
        "/f.bin",
        &[("Range", "bytes=0-9"), ("If-Range", &tag)],
        b"",
    );
    assert_eq!(g.status, 206);
    assert_eq!(g.body, &data[..10]);
}

/// MOVE over an existing file (Overwrite honoured), COPY as an extent clone.
#[test]
fn webdav_move_and_copy_honour_overwrite_and_copy_is_a_clone() {
    let (mut v, d) = started("");
    let a = random_bytes(3, 8 << 20);
    let b = random_bytes(4, 1 << 20);
    assert_eq!(d.put("/a", &a).status, 201);
    assert_eq!(d.put("/b", &b).status, 201);
    let dest = format!("http://{}/b", d.addr);
    let m = d.req(
        "MOVE",
        "/a",
        &[("Destination", &dest), ("Overwrite", "F")],
        b"",
    );
    assert_eq!(m.status, 412, "Overwrite: F onto an existing file");
    assert_eq!(d.get("/b").body, b);
    let m = d.req("MOVE", "/a", &[("Destination", &dest)], b"");
    assert_eq!(m.status, 204, "{}", m.text());
    assert_eq!(d.get("/a").status, 404);
    assert_eq!(d.get("/b").body, a);
    assert_eq!(std::fs::read(v.path("b")).unwrap(), a);
    assert!(!v.path("a").exists());

    // COPY into a new collection; the copy shares the source's chunks.
    assert_eq!(d.req("MKCOL", "/c", &[], b"").status, 201);
    let dest = format!("http://{}/c/copy", d.addr);
    let c = d.req("COPY", "/b", &[("Destination", &dest)], b"");
    assert_eq!(c.status, 201, "{}", c.text());
    assert_eq!(d.get("/c/copy").body, a);
    assert_eq!(
        etag(&d.req("HEAD", "/c/copy", &[], b"")),
        etag(&d.req("HEAD", "/b", &[], b""))
    );
    let c = d.req(
        "COPY",
        "/b",
        &[("Destination", &dest), ("Overwrite", "F")],
        b"",
    );
    assert_eq!(c.status, 412);
    v.stop();
    let st = v.stats().stats;
    eprintln!(
        "after COPY: logical {} MiB, stored {} MiB",
        st.logical_bytes >> 20,
        st.stored_bytes >> 20
    );
    assert_eq!(st.logical_bytes, 2 * (8 << 20));
    assert!(
        st.stored_bytes < (8 << 20) + (2 << 20),
        "COPY stored data again: {st:?}"
    );
}

/// Concurrent PUTs: to different files all land; to one file, exactly one body wins whole.
#[test]
fn webdav_concurrent_puts() {
    let (v, d) = started("");
    let mut threads = Vec::new();
    for i in 0..6u64 {
        let d = d.clone();
        threads.push(std::thread::spawn(move || {
            let body = random_bytes(100 + i, 3 << 20);
            let r = d.put(&format!("/own-{i}"), &body);
            assert_eq!(r.status, 201);
            let r = d.put("/shared", &body);
            assert!(r.status == 201 || r.status == 204, "{}", r.status);
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let shared = std::fs::read(v.path("shared")).unwrap();
    let mut winners = 0;
    for i in 0..6u64 {
        let body = random_bytes(100 + i, 3 << 20);
        assert_eq!(d.get(&format!("/own-{i}")).body, body);
        if shared == body {
            winners += 1;
        }
    }
    assert_eq!(
        winners, 1,
        "the shared file is not exactly one of the bodies"
    );
    assert_eq!(d.get("/shared").body, shared);
}

/// What one front-end writes, the other sees at once, byte for byte.
#[test]
fn webdav_and_fuse_see_each_others_changes() {
    let (v, d) = started("");
    let one = random_bytes(5, 5 << 20);
    assert_eq!(d.put("/w.bin", &one).status, 201);
    assert_eq!(std::fs::read(v.path("w.bin")).unwrap(), one);
    // The kernel has the old file cached now; a WebDAV overwrite must not be hidden by it.
    let two = random_bytes(6, 5 << 20);
    assert_eq!(d.put("/w.bin", &two).status, 204);
    assert_eq!(std::fs::read(v.path("w.bin")).unwrap(), two);

    let three = random_bytes(7, 3 << 20);
    std::fs::write(v.path("f.bin"), &three).unwrap();
    let g = d.get("/f.bin");
    assert_eq!(g.status, 200);
    assert_eq!(g.body, three);
    let t1 = etag(&g);
    std::fs::write(v.path("f.bin"), b"changed through the mount").unwrap();
    let g = d.get("/f.bin");
    assert_eq!(g.body, b"changed through the mount");
    assert_ne!(etag(&g), t1);

    std::fs::create_dir(v.path("from-fuse")).unwrap();
    let p = d.req("PROPFIND", "/", &[("Depth", "1")], b"");
    assert_eq!(p.status, 207);
    assert!(p.text().contains("/from-fuse/"), "{}", p.text());
    assert_eq!(d.req("MKCOL", "/from-dav", &[], b"").status, 201);
    assert!(v.path("from-dav").is_dir());
    assert_eq!(d.req("DELETE", "/w.bin", &[], b"").status, 204);
    assert!(
        !v.path("w.bin").exists(),
        "deleted over WebDAV, still seen by FUSE"
    );

    // Unicode and percent-encoded names arrive as the UTF-8 bytes FUSE shows.
    assert_eq!(d.put("/caf%C3%A9%20%E2%9C%93.txt", b"u").status, 201);
    assert_eq!(std::fs::read(v.path("café ✓.txt")).unwrap(), b"u");
    let long = "n".repeat(255);
    assert_eq!(d.put(&format!("/{long}"), b"l").status, 201);
    assert_eq!(std::fs::read(v.path(&long)).unwrap(), b"l");
}

/// A PUT cut off mid-body leaves nothing under its name, keeps an older version intact, and
/// leaves no staging file behind.
#[test]
fn webdav_interrupted_put_leaves_nothing() {
    let (mut v, d) = started("");
    let old = random_bytes(8, 1 << 20);
    assert_eq!(d.put("/kept", &old).status, 201);
    for path in ["/kept", "/never"] {
        let mut s = d.connect();
        s.write_all(d.head("PUT", path, &[], Some(64 << 20)).as_bytes())
            .unwrap();
        for i in 0..20 {
            s.write_all(&random_bytes(i, 1 << 20)).unwrap();
        }
        drop(s);
    }
    // The server notices the closed connection and discards the uploads.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(v.log_path())
        .unwrap_or_default()
        .matches("unfinished upload discarded")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", v.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.get("/never").status, 404);
    assert!(!v.path("never").exists());
    assert_eq!(d.get("/kept").body, old);
    assert_eq!(std::fs::read(v.path("kept")).unwrap(), old);
    // A body shorter than announced is refused too (the client half-closes).
    let mut s = d.connect();
    s.write_all(d.head("PUT", "/short", &[], Some(1000)).as_bytes())
        .unwrap();
    s.write_all(&[1u8; 10]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let r = read_response(s, "PUT");
    assert!(r.is_err() || r.unwrap().status >= 400);
    assert_eq!(d.get("/short").status, 404);

    v.stop();
    let vol = tiergate::volume::Volume::open(
        &v.vol_dir(),
        PASSPHRASE,
        tiergate::volume::VolumeOptions::default(),
    )
    .unwrap();
    let staging = vol.hidden_dir("webdav-staging").unwrap();
    let fh = vol.opendir(staging).unwrap();
    let left = vol.readdir(fh, 2, 100).unwrap();
    assert!(left.is_empty(), "staging files left: {left:?}");
}

/// Basic auth against the users file: 401 without (or with wrong) credentials, and nothing
/// touched; a non-loopback share without users refuses to start.
#[test]
fn webdav_auth_required_gives_401_and_touches_nothing() {
    let mut v = TestVolume::new("\n[webdav]\nrequire_auth = true\n");
    // Without users, a share that needs authentication does not start.
    let open = v.dir.path().join("open.toml");
    let cfg = std::fs::read_to_string(&v.config)
        .unwrap()
        .replace("require_auth = true", "listen = \"0.0.0.0:0\"");
    std::fs::write(&open, cfg).unwrap();
    let out = crate::common::tiergate_stdin(&["serve"], &open, "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("requires authentication"), "{err}");
    assert!(err.contains("tiergate user add"), "{err}");

    let out = crate::common::tiergate_stdin(&["user", "add", "alice"], &v.config, "wonderland\n");
    assert!(out.status.success(), "{out:?}");
    let users = std::fs::read_to_string(v.dir.path().join("webdav-users")).unwrap();
    assert!(users.contains("alice:$argon2id$") && !users.contains("wonderland"));
    v.start();
    let mut d = share(&v);

    let r = d.put("/secret", b"data");
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    assert!(!v.path("secret").exists());
    for m in ["PROPFIND", "MKCOL", "DELETE", "GET"] {
        assert_eq!(d.req(m, "/x", &[], b"").status, 401, "{m}");
    }
    assert!(!v.path("x").exists());
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    d.auth = Some(format!("Basic {}", b64("alice:wrong")));
    assert_eq!(d.put("/secret", b"data").status, 401);
    assert!(!v.path("secret").exists());
    d.auth = Some(format!("Basic {}", b64("alice:wonderland")));
    assert_eq!(d.put("/secret", b"data").status, 201);
    assert_eq!(std::fs::read(v.path("secret")).unwrap(), b"data");
    // Removing the user takes effect without a restart.
    let out = crate::common::tiergate_stdin(&["user", "del", "alice"], &v.config, "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(d.get("/secret").status, 401);
}

/// Dead properties and locks survive a restart of the daemon.
#[test]
fn webdav_props_and_locks_survive_restart() {
    let (mut v, d) = started("");
    assert_eq!(d.put("/doc", b"v1").status, 201);
    let set = br#"<?xml version="1.0" encoding="utf-8"?>
<D:propertyupdate xmlns:D="DAV:" xmlns:Z="http://example.com/z"><D:set><D:prop>
<Z:color>blue &amp; gr&#xE9;en</Z:color></D:prop></D:set></D:propertyupdate>"#;
    let r = d.req("PROPPATCH", "/doc", &[], set);
    assert_eq!(r.status, 207);
    assert!(r.text().contains("200 OK"), "{}", r.text());
    let lock = br#"<?xml version="1.0" encoding="utf-8"?>
<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>
<D:locktype><D:write/></D:locktype><D:owner>tests</D:owner></D:lockinfo>"#;
    let r = d.req("LOCK", "/doc", &[("Timeout", "Second-3600")], lock);
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.header("lock-token").unwrap().to_string();

    v.stop();
    v.start();
    let d = share(&v);
    let get = br#"<?xml version="1.0" encoding="utf-8"?>
<D:propfind xmlns:D="DAV:" xmlns:Z="http://example.com/z"><D:prop><Z:color/><D:lockdiscovery/></D:prop></D:propfind>"#;
    let r = d.req("PROPFIND", "/doc", &[("Depth", "0")], get);
    assert_eq!(r.status, 207);
    let t = r.text();
    assert!(t.contains("blue &amp; gr"), "{t}");
    assert!(t.contains(token.trim_matches(['<', '>'])), "lock lost: {t}");
    assert_eq!(d.put("/doc", b"v2").status, 423, "locked file overwritten");
    let with = format!("({token})");
    assert_eq!(d.req("PUT", "/doc", &[("If", &with)], b"v2").status, 204);
    assert_eq!(
        d.req("UNLOCK", "/doc", &[("Lock-Token", &token)], b"")
            .status,
        204
    );
    assert_eq!(d.put("/doc", b"v3").status, 204);
    // Dead properties stay with the file across PUT (and MOVE).
    let r = d.req("PROPFIND", "/doc", &[("Depth", "0")], get);
    assert!(r.text().contains("blue"), "{}", r.text());
}

/// Bad input gets a clear status and leaves earlier data alone.
#[test]
fn webdav_bad_input_gets_clear_statuses() {
    let (v, d) = started("");
    assert_eq!(d.put("/keep", b"precious").status, 201);
    let p = |body: &[u8]| d.req("PROPFIND", "/", &[("Depth", "0")], body).status;
    assert_eq!(
        p(b"<D:propfind xmlns:D=\"DAV:\"><D:prop>"),
        400,
        "malformed XML"
    );
    let laughs = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<D:propfind xmlns:D="DAV:"><D:prop><D:getetag>&lol3;</D:getetag></D:prop></D:propfind>"#;
    assert_eq!(p(laughs), 400, "entity expansion");
    let pp = br#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]><D:propertyupdate xmlns:D="DAV:" xmlns:Z="z:"><D:set><D:prop><Z:p>&d;&d;&d;&d;</Z:p></D:prop></D:set></D:propertyupdate>"#;
    let s = d.req("PROPPATCH", "/keep", &[], pp).status;
    assert_eq!(s, 400, "entity expansion in PROPPATCH");
    assert_eq!(p(&vec![b'x'; 100 << 10]), 413, "body over 64 KiB");
    let big = "x".repeat(100 << 10);
    assert_eq!(
        d.req("GET", "/keep", &[("X-Big", &big)], b"").status,
        431,
        "oversized header"
    );
    assert_eq!(
        d.req("PROPFIND", "/", &[("Depth", "infinity")], b"").status,
        403
    );
    assert_eq!(d.put("/a%00b", b"x").status, 400, "NUL in a name");
    assert_eq!(d.put("/a%2Fb", b"x").status, 400, "encoded / in a name");
    assert_eq!(d.put("/../etc/passwd", b"x").status, 400);
    assert_eq!(d.put("/x/%2e%2e/%2E%2E/escape", b"x").status, 400);
    assert_eq!(d.put(&format!("/{}", "n".repeat(256)), b"x").status, 414);
    assert_eq!(d.put("/keep/child", b"x").status, 409, "parent is a file");
    assert_eq!(d.put("/missing/child", b"x").status, 409, "no parent");
    let dest = format!("http://{}/a/%2e%2e/%2e%2e/out", d.addr);
    assert_eq!(
        d.req("COPY", "/keep", &[("Destination", &dest)], b"")
            .status,
        400
    );
    assert_eq!(d.get("/keep").body, b"precious");
    assert_eq!(std::fs::read(v.path("keep")).unwrap(), b"precious");
    let names: Vec<_> = std::fs::read_dir(&v.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep"], "bad requests created something");
}

/// RFC 4331 quota at the root matches what statfs reports to the mount.
#[test]
fn webdav_quota_matches_statfs() {
    let (v, d) = started("");
    let body = br#"<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>
<D:quota-available-bytes/><D:quota-used-bytes/></D:prop></D:propfind>"#;
    let r = d.req("PROPFIND", "/", &[("Depth", "0")], body);
    assert_eq!(r.status, 207);
    let t = r.text();
    let num = |tag: &str| -> u64 {
        let s = t.split(&format!("<D:{tag}>")).nth(1).expect(tag);
        s.split('<').next().unwrap().parse().unwrap()
    };
    let s = nix::sys::statvfs::statvfs(&v.mnt).unwrap();
    let fr = s.fragment_size() as u64;
    let avail = s.blocks_available() as u64 * fr;
    let used = (s.blocks() as u64 - s.blocks_free() as u64) * fr;
    let close = |a: u64, b: u64| a.abs_diff(b) < 256 << 20;
    assert!(close(num("quota-available-bytes"), avail), "{t} vs {avail}");
    assert!(close(num("quota-used-bytes"), used), "{t} vs {used}");
}

/// A full disk during PUT: exactly 507 (before the body when the announced length cannot fit,
/// during it when the disk fills), nothing left under the refused name, and every acknowledged
/// write reads back intact, through the share and through the mount.
#[test]
fn webdav_full_disk_put_gets_507_and_keeps_data() {
    let mut v = TestVolume::new("");
    let _tmpfs = v.move_to_tmpfs("96m");
    v.start();
    let d = share(&v);
    let keep = random_bytes(9, 8 << 20);
    assert_eq!(d.put("/keep", &keep).status, 201);
    assert_eq!(d.get("/keep").body, keep);
    // Announced too large: refused before any byte is read.
    let r = d.put_stream("/huge", 200 << 20, |_| 0).unwrap();
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(d.get("/huge").status, 404);
    // Fits the free space as announced, but the disk fills while it is written.
    let mut n = 0u64;
    let mut sent = 0u64;
    let total = 80 << 20;
    let r = d.put_stream("/filler", total, |buf| {
        n += 1;
        let k = ((total - sent) as usize).min(buf.len());
        buf[..k].copy_from_slice(&random_bytes(1000 + n, k));
        sent += k as u64;
        k
    });
    // The share answers, and with 507: a dropped connection or a 2xx (an acknowledged file
    // that cannot be all there) is a failure.
    let r = r.unwrap_or_else(|e| panic!("no answer to the PUT that filled the disk: {e}"));
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(d.get("/filler").status, 404);
    assert!(!v.path("filler").exists());
    assert_eq!(d.get("/keep").body, keep);
    assert_eq!(std::fs::read(v.path("keep")).unwrap(), keep);
}

/// rclone's WebDAV remote copies a tree in and out unchanged.
#[test]
fn webdav_rclone_round_trip() {
    if Command::new("rclone").arg("version").output().is_err() {
        panic!("rclone is not installed (scripts/install-test-deps.sh installs it)");
    }
    let (v, d) = started("");
    let src = v.dir.path().join("tree-in");
    let out = v.dir.path().join("tree-out");
    for (i, rel) in [
        "a.bin",
        "dir/b.bin",
        "dir/sub/c d.txt",
        "dir/sub/é.bin",
        "empty",
    ]
    .iter()
    .enumerate()
    {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let len = if *rel == "empty" { 0 } else { (i + 1) << 19 };
        std::fs::write(&p, random_bytes(200 + i as u64, len)).unwrap();
    }
    let rclone = |args: &[&str]| {
        let out = Command::new("rclone")
            .args(args)
            .env_remove("AWS_CA_BUNDLE")
            .env("RCLONE_CONFIG", "/dev/null")
            .env("RCLONE_CONFIG_TG_TYPE", "webdav")
            .env("RCLONE_CONFIG_TG_URL", format!("http://{}/", d.addr))
            .env("RCLONE_CONFIG_TG_VENDOR", "other")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rclone {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    rclone(&["copy", src.to_str().unwrap(), "tg:backup"]);
    rclone(&["copy", "tg:backup", out.to_str().unwrap()]);
    rclone(&["check", src.to_str().unwrap(), "tg:backup"]);
    let diff = Command::new("diff")
        .args(["-r"])
        .arg(&src)
        .arg(&out)
        .output()
        .unwrap();
    assert!(diff.status.success(), "{diff:?}");
    let diff = Command::new("diff")
        .args(["-r"])
        .arg(&src)
        .arg(v.path("backup"))
        .output()
        .unwrap();
    assert!(diff.status.success(), "through the mount: {diff:?}");
}

/// With `tls_cert`/`tls_key` the share speaks HTTPS only; a client that trusts the
/// certificate works, plain HTTP gets no WebDAV answer.
#[test]
fn webdav_over_tls() {
    let mut v = TestVolume::new("");
    let dir = v.dir.path().to_path_buf();
    crate::common::self_signed_cert(&dir);
    let cfg = std::fs::read_to_string(&v.config).unwrap();
    let cfg = cfg.replace(
        "[fuse]",
        "[webdav]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n\n[fuse]",
    );
    std::fs::write(&v.config, cfg).unwrap();
    v.start();
    let log = std::fs::read_to_string(v.log_path()).unwrap();
    let url = log
        .split("webdav listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    // Plain HTTP to the TLS port: no HTTP answer.
    let addr = url["https://".len()..]
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let plain = Dav { addr, auth: None };
    let mut s = plain.connect();
    let _ = s.write_all(plain.head("GET", "/", &[], None).as_bytes());
    assert!(read_response(s, "GET").is_err());

    let data = random_bytes(300, 1 << 20);
    std::fs::write(dir.join("up.bin"), &data).unwrap();
    let rclone = |args: &[&str]| {
        let out = Command::new("rclone")
            .args(args)
            .arg("--ca-cert")
            .arg(dir.join("cert.pem"))
            .env_remove("AWS_CA_BUNDLE")
            .env("RCLONE_CONFIG", "/dev/null")
            .env("RCLONE_CONFIG_TG_TYPE", "webdav")
            .env("RCLONE_CONFIG_TG_URL", &url)
            .env("RCLONE_CONFIG_TG_VENDOR", "other")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rclone {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    rclone(&["copyto", dir.join("up.bin").to_str().unwrap(), "tg:up.bin"]);
    assert_eq!(rclone(&["cat", "tg:up.bin"]), data);
    assert_eq!(std::fs::read(v.path("up.bin")).unwrap(), data);
}

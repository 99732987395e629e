//! Hostile clients against the daemon's two listeners, the WebDAV share and the status
//! server, both served by src/serve.rs: floods of idle connections, TLS clients that never
//! say hello, heads and bodies sent a byte at a time or not at all. Each test runs a real
//! `tiergate serve` with low limits and short timeouts, and checks that the listeners keep
//! answering, that the daemon's descriptors stay bounded, and that stalled clients are cut
//! off in bounded time while a slow but steady upload is not.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_rustls::rustls;

use crate::common::TestVolume;

const SHARE_MAX: usize = 40;
const SHARE_PER_IP: usize = 10;
const WEB_MAX: usize = 20;
const WEB_PER_IP: usize = 5;
/// The header, body and TLS handshake timeouts of both listeners, in seconds.
const TIMEOUT: u64 = 3;
const TOKEN: &str = "hostile-listeners-management-token";

fn limits(section: &str, max: usize, per_ip: usize) -> String {
    format!(
        "[{section}]\nmax_connections = {max}\nmax_connections_per_ip = {per_ip}\n\
         header_timeout_secs = {TIMEOUT}\nbody_timeout_secs = {TIMEOUT}\n\
         tls_handshake_timeout_secs = {TIMEOUT}\n"
    )
}

/// A daemon with both listeners under low limits; `tls` adds `tls_cert`/`tls_key` to both.
fn daemon(tls: bool) -> TestVolume {
    let tls_keys = if tls {
        "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n"
    } else {
        ""
    };
    let extra = format!(
        "{}{tls_keys}{}listen = \"127.0.0.1:0\"\nmanagement_token_file = \"token\"\n{tls_keys}",
        limits("webdav", SHARE_MAX, SHARE_PER_IP),
        limits("web", WEB_MAX, WEB_PER_IP),
    );
    let mut v = TestVolume::new(&extra);
    std::fs::write(v.dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    if tls {
        crate::common::self_signed_cert(v.dir.path());
    }
    v.start();
    v
}

/// The address after `prefix` in the daemon's log (`webdav listening on https://`...).
fn logged_addr(v: &TestVolume, prefix: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(v.log_path()).unwrap_or_default();
        if let Some(rest) = log.split(prefix).nth(1) {
            return rest.split('/').next().unwrap().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no {prefix}:\n{}", v.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP connection to `to` from the loopback address `from` (any of 127.0.0.0/8 is ours).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, owned by the TcpStream from the start; plain sockaddr_in values.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = TcpStream::from_raw_fd(fd);
        let src = sockaddr(SocketAddrV4::new(from, 0));
        if libc::bind(fd, &src as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let dst = sockaddr(to);
        if libc::connect(fd, &dst as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(s)
    }
}

/// One `GET path` from `from` with `Connection: close`: the status code, or the error.
fn get_from(from: Ipv4Addr, to: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = connect_from(from, to)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let head = String::from_utf8_lossy(&out);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {head:?}")))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Opens `n` idle connections to `to`, spread over `sources` (kept open by the caller).
fn flood(to: SocketAddr, n: usize, sources: &[Ipv4Addr]) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|i| connect_from(sources[i % sources.len()], to).ok())
        .collect()
}

/// Of `conns`, how many the server closed (EOF or reset) or answered 503 within `wait`.
fn refused(conns: &mut [TcpStream], wait: Duration) -> (usize, usize) {
    let (mut closed, mut answered_503) = (0, 0);
    std::thread::sleep(wait);
    for s in conns.iter_mut() {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => closed += 1,
            Ok(n) => {
                assert!(buf[..n].starts_with(b"HTTP/1.1 503 "), "{:?}", &buf[..n]);
                answered_503 += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            Err(_) => {} // still open: admitted and idle
        }
    }
    (closed, answered_503)
}

/// Latency of a fresh client's request to both listeners.
fn answers_both(share: SocketAddr, web: SocketAddr, from: Ipv4Addr) -> Duration {
    let t = Instant::now();
    assert_eq!(get_from(from, share, "/").unwrap(), 200);
    assert_eq!(get_from(from, web, "/api/v1/status").unwrap(), 200);
    t.elapsed()
}

/// Twice as many idle connections as each listener admits, first from one address, then from
/// many: refused ones are closed at once (with a 503 on these plain listeners), a client from
/// elsewhere is answered at once (one address) or within the header timeout (many), and the
/// daemon's descriptors grow by no more than the limits.
#[test]
fn idle_connection_floods_leave_both_listeners_answering() {
    let mut v = daemon(false);
    let pid = v.pid();
    let dav = logged_addr(&v, "webdav listening on http://");
    let status = logged_addr(&v, "web status page on http://");
    let me = Ipv4Addr::new(127, 0, 0, 2);
    let quiet = answers_both(dav, status, me);
    std::thread::sleep(Duration::from_millis(200));
    let (fd0, rss0) = (fd_count(pid), rss_kib(pid));

    // One source: it gets its per-IP share, the rest is refused; others are unaffected.
    let one = [Ipv4Addr::new(127, 0, 0, 1)];
    let mut a = flood(dav, 2 * SHARE_MAX, &one);
    let mut b = flood(status, 2 * WEB_MAX, &one);
    let (closed_a, r503_a) = refused(&mut a, Duration::from_millis(500));
    let (closed_b, r503_b) = refused(&mut b, Duration::from_millis(500));
    assert_eq!(closed_a + r503_a, 2 * SHARE_MAX - SHARE_PER_IP, "share");
    assert_eq!(closed_b + r503_b, 2 * WEB_MAX - WEB_PER_IP, "status server");
    assert!(r503_a > 0 && r503_b > 0, "refusals are answered 503");
    let fd1 = fd_count(pid);
    let busy = answers_both(dav, status, me);
    assert!(
        fd1 <= fd0 + SHARE_PER_IP + WEB_PER_IP + 8,
        "descriptors {fd0} -> {fd1} under a one-address flood"
    );
    assert!(busy < Duration::from_secs(2), "{busy:?}");
    drop((a, b));

    // Many sources: the total limit is reached; a newcomer waits at most for the idle ones'
    // header timeout.
    let many: Vec<Ipv4Addr> = (10..26).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut a = flood(dav, 2 * SHARE_MAX, &many);
    let mut b = flood(status, 2 * WEB_MAX, &many);
    let (ca, ra) = refused(&mut a, Duration::from_millis(500));
    let (cb, rb) = refused(&mut b, Duration::from_millis(500));
    assert_eq!(ca + ra, SHARE_MAX, "share: the total limit");
    assert_eq!(cb + rb, WEB_MAX, "status server: the total limit");
    let fd2 = fd_count(pid);
    let rss2 = rss_kib(pid);
    assert!(
        fd2 <= fd0 + SHARE_MAX + WEB_MAX + 8,
        "descriptors {fd0} -> {fd2} under a many-address flood"
    );
    let t = Instant::now();
    let deadline = t + Duration::from_secs(TIMEOUT + 5);
    let mut tries = 0;
    let late = loop {
        tries += 1;
        let ok = get_from(me, dav, "/").is_ok_and(|c| c == 200)
            && get_from(me, status, "/healthz").is_ok_and(|c| c == 200);
        if ok {
            break t.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no answer within the header timeout:\n{}",
            v.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "idle flood: descriptors {fd0} quiet, {fd1} one address ({} + {} conns), {fd2} many \
         addresses ({} + {}); RSS {rss0} KiB quiet, {rss2} KiB flooded; fresh GET on both \
         {quiet:?} quiet, {busy:?} under a one-address flood, answered after {late:?} \
         ({tries} tries) under a many-address flood",
        2 * SHARE_MAX,
        2 * WEB_MAX,
        2 * SHARE_MAX,
        2 * WEB_MAX,
    );
    let log = std::fs::read_to_string(v.log_path()).unwrap();
    assert!(
        log.contains("webdav.max_connections_per_ip = 10 reached"),
        "{}",
        v.log_tail()
    );
    // Refusals are logged rate-limited: a handful of lines for hundreds of refusals.
    let lines = log.matches("connection(s) since the last report").count();
    assert!((1..=8).contains(&lines), "{lines} refusal lines");
    drop((a, b));
    v.stop();
}

/// A client that connects to a TLS listener and never sends its ClientHello is dropped after
/// the handshake timeout, on the share and on the status server; the status server over TLS
/// answers with its security headers.
#[test]
fn tls_listeners_drop_silent_clients_and_serve_the_status_over_https() {
    let mut v = daemon(true);
    let dav = logged_addr(&v, "webdav listening on https://");
    let status = logged_addr(&v, "web status page on https://");
    for addr in [dav, status] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(TIMEOUT + 10)))
            .unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 64];
        let r = s.read(&mut buf);
        let took = t.elapsed();
        assert!(
            matches!(r, Ok(0))
                || r.as_ref()
                    .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
            "{addr}: {r:?} after {took:?}"
        );
        assert!(
            took >= Duration::from_secs(TIMEOUT - 1) && took < Duration::from_secs(TIMEOUT + 4),
            "{addr}: closed after {took:?}"
        );
        eprintln!("silent TLS client on {addr} closed after {took:?}");
    }

    let cert = v.dir.path().join("cert.pem");
    let (head, body) = https_get(status, &cert, "/api/v1/status");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(j["schema"].is_number(), "{j}");
    assert!(head
        .to_ascii_lowercase()
        .contains("x-content-type-options: nosniff"));
    let (head, body) = https_get(status, &cert, "/");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(String::from_utf8_lossy(&body).contains("<script>"));
    let (head, _) = https_get(dav, &cert, "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    v.stop();
}

/// A GET over TLS trusting `cert` only; the answer's head and body.
fn https_get(addr: SocketAddr, cert: &Path, path: &str) -> (String, Vec<u8>) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::from(addr.ip());
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = Vec::new();
    // A peer that closes without close_notify is an error for rustls; what came is enough.
    let _ = tls.read_to_end(&mut out);
    let i = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {:?}", String::from_utf8_lossy(&out)));
    (
        String::from_utf8_lossy(&out[..i]).into_owned(),
        out[i + 4..].to_vec(),
    )
}

/// Sends `parts` with `gap` between them; returns how long until the server closed the
/// connection or answered (None: still open after all parts and `wait`), and what it said.
fn dribble(
    addr: SocketAddr,
    parts: &[&[u8]],
    gap: Duration,
    wait: Duration,
) -> (Option<Duration>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nonblocking(true).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let done = |s: &mut TcpStream, got: &mut Vec<u8>| -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return !got.is_empty(),
                Err(_) => return true,
            }
        }
    };
    for p in parts {
        if s.write_all(p).is_err() || done(&mut s, &mut got) {
            return (
                Some(t.elapsed()),
                String::from_utf8_lossy(&got).into_owned(),
            );
        }
        let until = Instant::now() + gap;
        while Instant::now() < until {
            if done(&mut s, &mut got) {
                return (
                    Some(t.elapsed()),
                    String::from_utf8_lossy(&got).into_owned(),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if done(&mut s, &mut got) {
            return (
                Some(t.elapsed()),
                String::from_utf8_lossy(&got).into_owned(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (None, String::from_utf8_lossy(&got).into_owned())
}

/// A head sent a byte a second, and a body that stops, are cut off after the timeouts on both
/// listeners; a body that keeps coming a little at a time for longer than the body timeout
/// is stored whole.
#[test]
fn slow_heads_and_stalled_bodies_are_cut_off_steady_slow_uploads_are_not() {
    let mut v = daemon(false);
    let dav = logged_addr(&v, "webdav listening on http://");
    let status = logged_addr(&v, "web status page on http://");
    let limit = Duration::from_secs(TIMEOUT + 3);

    for addr in [dav, status] {
        // A head a byte a second: never complete within the header timeout.
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let parts: Vec<&[u8]> = head.chunks(1).collect();
        let (cut, said) = dribble(addr, &parts, Duration::from_secs(1), Duration::ZERO);
        let cut = cut.unwrap_or_else(|| panic!("{addr}: a slow head was never cut off"));
        assert!(cut < limit, "{addr}: slow head cut after {cut:?}");
        assert!(!said.contains(" 200 "), "{addr}: {said}");
        eprintln!("slow head on {addr} cut after {cut:?}");
    }

    // A PUT body that stops after a few bytes: the share answers or closes, and stores nothing.
    let put = b"PUT /stalled.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n0123456789";
    let (cut, said) = dribble(dav, &[put], Duration::ZERO, limit);
    let cut = cut.expect("a stalled PUT body was never cut off");
    assert!(
        cut >= Duration::from_secs(TIMEOUT - 1),
        "cut after {cut:?}: {said}"
    );
    eprintln!(
        "stalled PUT body cut after {cut:?}: {:?}",
        said.lines().next()
    );
    // The same on the management API (with the token, so the body is read).
    let bw = format!(
        "PUT /api/v1/manage/bandwidth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 100\r\n\r\n{{\"limit\":"
    );
    let (cut, said) = dribble(status, &[bw.as_bytes()], Duration::ZERO, limit);
    let cut = cut.expect("a stalled management body was never cut off");
    assert!(
        cut >= Duration::from_secs(TIMEOUT - 1),
        "cut after {cut:?}: {said}"
    );
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 400"),
        "{said}"
    );

    // Steady but slow: 2 s between pieces, 5 pieces (10 s, beyond the body timeout of 3 s).
    let body: &[u8] = b"slow but steady upload";
    let head = format!(
        "PUT /steady.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut parts: Vec<&[u8]> = vec![head.as_bytes()];
    parts.extend(body.chunks(body.len().div_ceil(5)));
    let (t, said) = dribble(dav, &parts, Duration::from_secs(2), Duration::from_secs(10));
    assert!(t.is_some(), "no answer to the steady PUT");
    assert!(
        said.starts_with("HTTP/1.1 201") || said.starts_with("HTTP/1.1 204"),
        "{said}"
    );
    assert_eq!(std::fs::read(v.path("steady.txt")).unwrap(), body);
    assert!(
        !v.path("stalled.bin").exists(),
        "a cut-off PUT left its file"
    );
    v.stop();
}

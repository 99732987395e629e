//! The one HTTP serving stack of the daemon's listeners: the WebDAV share (src/webdav.rs) and
//! the status server (src/web.rs) both run [`serve`], with their own [`Limits`].
//!
//! A listener is an accept loop on hyper's HTTP/1 connection driver, with an axum [`Router`]
//! as the service and tower-http layers around it. What it defends against, and how:
//!
//! - **Descriptor exhaustion** (idle sockets opened faster than they time out): a connection
//!   is admitted only while fewer than `max_connections` are open, and fewer than
//!   `max_connections_per_ip` from its source (an IPv4 address, or an IPv6 /64, which one
//!   host typically owns whole). An excess connection is answered `503` at once on a plain
//!   listener (without reading it) or closed on a TLS one, and its socket is closed straight
//!   away: refusals cost no descriptor and no task. Refusals are counted and logged at most
//!   once per [`REFUSAL_LOG_EVERY`].
//! - **A TLS client that never finishes its handshake**: `tls_handshake_timeout`.
//! - **Slow or absent request heads**, also between requests of a kept-alive connection:
//!   hyper's header read timeout (`header_timeout`), from the moment the connection waits for
//!   a head until the head is complete. An idle kept-alive connection is closed then.
//! - **Slow request bodies** (slowloris on PUT): a body that makes no progress for
//!   `body_timeout` while the handler waits for it fails, and the handler answers and the
//!   connection closes. An inactivity timeout, not a total one: a many-GB upload that keeps
//!   sending is never cut, and the clock does not run while the handler is busy (writing to the
//!   volume, waiting for room in the cache) rather than waiting for the client.
//! - Heads above `max_header_size` are answered 431; a connection buffers at most
//!   [`MAX_BUF`] of what it reads.
//!
//! Each request runs in a `http` tracing span (listener, method, path, peer) and is logged at
//! debug level with its status and latency. The peer's address reaches handlers as a [`Peer`]
//! request extension.
//!
//! Shutdown: when the watch channel turns true the listener stops accepting, every connection
//! is told to finish the request in flight and close (idle ones close at once), and whatever
//! is still open after [`SHUTDOWN_GRACE`] is dropped (a PUT cut off this way is discarded like
//! any interrupted upload).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::{Error, Result};

/// How long connections may finish their request after shutdown was asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Refused connections are logged at most this often (with the count since the last line).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Most a connection buffers of what it reads (heads, and body data not yet taken).
pub const MAX_BUF: usize = 256 << 10;

/// A listener's limits (`[web]` and `[webdav]` keys of the same names; defaults and reasons
/// in the config module and docs/WEBDAV.md, docs/STATUS.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub tls_handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_header_size: usize,
}

/// The client's address, as a request extension (for logs and the auth throttles).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Loads a PEM certificate chain and private key into a TLS acceptor (rustls with ring,
/// TLS 1.2 and 1.3, ALPN `http/1.1`). `section` names the config section in errors.
pub fn load_tls(section: &str, cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
        Error::Invalid(format!("{section} TLS {what} {}: {e}", p.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("certificate", cert, &e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("certificate", cert, &e))?;
    if certs.is_empty() {
        return Err(bad("certificate", cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("setup", cert, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad("certificate/key pair", cert, &e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

// ------------------------------------------------------------------------ admission

/// The source a per-IP limit counts: an IPv4 address, or the /64 of an IPv6 one.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Open connections of one listener, and the refusals not yet logged.
struct Admission {
    name: &'static str,
    limits: Limits,
    counts: parking_lot::Mutex<Counts>,
    refused: parking_lot::Mutex<Refusals>,
}

struct Refusals {
    since_log: u64,
    last_log: Option<Instant>,
}

/// One admitted connection; gives its place back when dropped.
struct Slot {
    adm: Arc<Admission>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.adm.counts.lock();
        c.total -= 1;
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

impl Admission {
    fn admit(self: &Arc<Self>, peer: IpAddr) -> std::result::Result<Slot, &'static str> {
        let source = source(peer);
        let mut c = self.counts.lock();
        if c.total >= self.limits.max_connections {
            return Err("max_connections");
        }
        let n = c.per_source.entry(source).or_insert(0);
        if *n >= self.limits.max_connections_per_ip {
            return Err("max_connections_per_ip");
        }
        *n += 1;
        c.total += 1;
        Ok(Slot {
            adm: self.clone(),
            source,
        })
    }

    /// Counts a refusal; logs (with the count so far) at most once per [`REFUSAL_LOG_EVERY`].
    fn refused(&self, peer: SocketAddr, why: &str) {
        let mut r = self.refused.lock();
        r.since_log += 1;
        let now = Instant::now();
        if r.last_log.is_some_and(|t| now < t + REFUSAL_LOG_EVERY) {
            return;
        }
        let limit = match why {
            "max_connections" => self.limits.max_connections,
            _ => self.limits.max_connections_per_ip,
        };
        tracing::warn!(
            "{}: refused {} connection(s) since the last report, latest from {peer}: \
             {}.{why} = {limit} reached",
            self.name,
            r.since_log,
            self.name,
        );
        r.since_log = 0;
        r.last_log = Some(now);
    }
}

/// What a refused connection on a plain listener reads (nothing of its request was read).
const REFUSED_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    Content-Type: text/plain; charset=utf-8\r\nContent-Length: 40\r\n\
    Retry-After: 5\r\nConnection: close\r\n\r\n\
    too many connections, try again shortly\n";

// ------------------------------------------------------------------------ serving

/// Serves `router` on `listener` (through `tls` when given) under `limits` until `shutdown`
/// turns true or its sender goes away; see the module doc. `name` is the config section
/// ("web", "webdav"), used in logs.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let adm = Arc::new(Admission {
        name,
        limits: limits.clone(),
        counts: Default::default(),
        refused: parking_lot::Mutex::new(Refusals {
            since_log: 0,
            last_log: None,
        }),
    });
    let service = tower::ServiceBuilder::new()
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |req: &Request<Incoming>| {
                    let peer = req.extensions().get::<Peer>().map(|p| p.0);
                    tracing::debug_span!(
                        "http",
                        listener = name,
                        method = %req.method(),
                        path = %req.uri().path(),
                        peer = ?peer,
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                // 5xx answers (a 503 from /readyz, a store error) are the handler's to log.
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .service(router);
    let mut conns = tokio::task::JoinSet::new();
    while !*shutdown.borrow_and_update() {
        tokio::select! {
            r = shutdown.changed() => if r.is_err() { break },
            r = listener.accept() => match r {
                Ok((s, peer)) => match adm.admit(peer.ip()) {
                    Ok(slot) => {
                        conns.spawn(connection(
                            s, peer, tls.clone(), limits.clone(), service.clone(),
                            shutdown.clone(), slot,
                        ));
                    }
                    Err(why) => {
                        if tls.is_none() {
                            let _ = s.try_write(REFUSED_503);
                        }
                        drop(s);
                        adm.refused(peer, why);
                    }
                },
                Err(e) => {
                    // Out of descriptors (EMFILE) or the like: wait rather than spin.
                    tracing::warn!("{name} accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            "{name}: dropping {} connection(s) still open after the shutdown grace",
            conns.len()
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// One admitted connection: the TLS handshake (bounded), then HTTP/1 until it closes.
#[allow(clippy::too_many_arguments)]
async fn connection<S>(
    s: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    service: S,
    shutdown: watch::Receiver<bool>,
    _slot: Slot,
) where
    S: tower::Service<Request<Incoming>, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: IntoHyperResponse,
{
    let _ = s.set_nodelay(true);
    match tls {
        None => http(s, peer, &limits, service, shutdown).await,
        Some(acc) => {
            match tokio::time::timeout(limits.tls_handshake_timeout, acc.accept(s)).await {
                Ok(Ok(t)) => http(t, peer, &limits, service, shutdown).await,
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake: {e}"),
                Err(_) => tracing::debug!(
                    %peer,
                    "TLS handshake not done within {} s: closed",
                    limits.tls_handshake_timeout.as_secs()
                ),
            }
        }
    }
}

/// The response types hyper can send (a tower-http traced axum response).
pub trait IntoHyperResponse: Send + 'static {
    type Body: hyper::body::Body<Data = bytes::Bytes, Error = Self::BodyError> + Send + 'static;
    type BodyError: Into<Box<dyn std::error::Error + Send + Sync>>;
    fn into_hyper(self) -> http::Response<Self::Body>;
}

impl<B> IntoHyperResponse for http::Response<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Body = B;
    type BodyError = B::Error;
    fn into_hyper(self) -> http::Response<B> {
        self
    }
}

async fn http<I, S>(
    io: I,
    peer: SocketAddr,
    limits: &Limits,
    service: S,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: IntoHyperResponse,
{
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        let svc = service.clone();
        async move { svc.oneshot(req).await.map(IntoHyperResponse::into_hyper) }
    });
    let mut b = http1::Builder::new();
    b.max_header_size(limits.max_header_size)
        .max_buf_size(MAX_BUF)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = b.serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    let done = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = shutdown.wait_for(|stop| *stop) => None,
    };
    let r = match done {
        Some(r) => r,
        None => {
            // Finish the request in flight (an idle connection closes at once), briefly.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = r {
        tracing::debug!(%peer, "connection: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            tls_handshake_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_header_size: 1 << 10,
        }
    }

    #[test]
    fn admission_counts_per_source_and_in_total_and_gives_places_back() {
        let adm = Arc::new(Admission {
            name: "t",
            limits: limits(5, 2),
            counts: Default::default(),
            refused: parking_lot::Mutex::new(Refusals {
                since_log: 0,
                last_log: None,
            }),
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b2: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let c: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let a1 = adm.admit(a).unwrap();
        let _a2 = adm.admit(a).unwrap();
        assert_eq!(adm.admit(a).err(), Some("max_connections_per_ip"));
        // One IPv6 /64 is one source.
        let _b1 = adm.admit(b).unwrap();
        let _b2 = adm.admit(b2).unwrap();
        assert_eq!(adm.admit(b).err(), Some("max_connections_per_ip"));
        let _c1 = adm.admit(c).unwrap();
        assert_eq!(adm.admit(c).err(), Some("max_connections"));
        drop(a1);
        let _c2 = adm.admit(c).unwrap();
        assert_eq!(adm.counts.lock().total, 5);
        assert_eq!(adm.counts.lock().per_source.len(), 3);
        // The v4-mapped form of an IPv4 address is that address.
        assert_eq!(source("::ffff:127.0.0.1".parse().unwrap()), a);
    }
}

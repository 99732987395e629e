//! The WebDAV request path end to end, in process: arbitrary requests (method, path, the
//! headers WebDAV parses — Depth, Destination, Overwrite, If, Lock-Token, Timeout,
//! Content-Range, Range, conditional headers — and bodies such as LOCK and PROPPATCH XML) go
//! through `Share::serve_request`: tiergate's path checks, dav-server's parsing, and the
//! adapter's filesystem and lock table over a real volume on a tmpfs.
//!
//! Properties: nothing panics; a path the checks refuse gets the status of the refusal;
//! `PROPFIND` with `Depth: infinity` gets 403; a plain PUT that succeeded reads back
//! byte-identical with GET; the share keeps answering (a final OPTIONS gets 200).
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tiergate::config::WebdavConfig;
use tiergate::volume::{Volume, VolumeOptions};
use tiergate::webdav::{self, Share};

#[derive(Arbitrary, Debug)]
enum Verb {
    Get,
    Head,
    Put,
    Delete,
    Mkcol,
    Copy,
    Move,
    Propfind,
    Proppatch,
    Lock,
    Unlock,
    Options,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Header {
    Depth(String),
    Destination(String),
    Overwrite(String),
    If(String),
    LockToken(String),
    Timeout(String),
    ContentRange(String),
    Range(String),
    IfMatch(String),
    IfNoneMatch(String),
    ContentType(String),
    Other(String, String),
}

/// A body as sent, or an XML body nested `depth` levels deep around arbitrary text inside
/// the usual PROPFIND, PROPPATCH or LOCK wrapping (the form that overflowed the stack).
#[derive(Arbitrary, Debug)]
enum ReqBody {
    Raw(Vec<u8>),
    Nested { depth: u16, inner: String },
}

#[derive(Arbitrary, Debug)]
struct Req {
    verb: Verb,
    path: String,
    headers: Vec<Header>,
    body: ReqBody,
}

fn nested_body(verb: &Verb, depth: usize, inner: &str) -> Vec<u8> {
    let (open, close) = ("<Z:n>".repeat(depth), "</Z:n>".repeat(depth));
    let ns = "xmlns:D=\"DAV:\" xmlns:Z=\"http://example.com/z\"";
    match verb {
        Verb::Proppatch => format!(
            "<D:propertyupdate {ns}><D:set><D:prop>{open}{inner}{close}</D:prop></D:set>\
             </D:propertyupdate>"
        ),
        Verb::Lock => format!(
            "<D:lockinfo {ns}><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/>\
             </D:locktype><D:owner>{open}{inner}{close}</D:owner></D:lockinfo>"
        ),
        _ => format!("<D:propfind {ns}><D:prop>{open}{inner}{close}</D:prop></D:propfind>"),
    }
    .into_bytes()
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    share: Share,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let b = tempfile::Builder::new()
            .prefix("tiergate-fuzz-dav")
            .to_owned();
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            b.tempdir_in("/dev/shm").unwrap()
        } else {
            b.tempdir().unwrap()
        };
        let vdir = dir.path().join("vol");
        Volume::create(
            &vdir,
            "fuzz",
            Default::default(),
            tiergate::crypto::KdfParams::for_tests(),
        )
        .unwrap();
        let vol: Arc<Volume> = Volume::open(&vdir, "fuzz", VolumeOptions::default()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Loopback without users: no authentication, as the default share.
        let share = {
            let _g = rt.enter();
            Share::new(vol, &WebdavConfig::default()).unwrap()
        };
        Fixture {
            rt,
            share,
            _dir: dir,
        }
    })
}

fn method(v: &Verb) -> Option<Method> {
    Some(match v {
        Verb::Get => Method::GET,
        Verb::Head => Method::HEAD,
        Verb::Put => Method::PUT,
        Verb::Delete => Method::DELETE,
        Verb::Mkcol => Method::from_bytes(b"MKCOL").unwrap(),
        Verb::Copy => Method::from_bytes(b"COPY").unwrap(),
        Verb::Move => Method::from_bytes(b"MOVE").unwrap(),
        Verb::Propfind => Method::from_bytes(b"PROPFIND").unwrap(),
        Verb::Proppatch => Method::from_bytes(b"PROPPATCH").unwrap(),
        Verb::Lock => Method::from_bytes(b"LOCK").unwrap(),
        Verb::Unlock => Method::from_bytes(b"UNLOCK").unwrap(),
        Verb::Options => Method::OPTIONS,
        Verb::Other(m) => Method::from_bytes(m.as_bytes()).ok()?,
    })
}

fn header(h: &Header) -> (&str, &str) {
    match h {
        Header::Depth(v) => ("depth", v),
        Header::Destination(v) => ("destination", v),
        Header::Overwrite(v) => ("overwrite", v),
        Header::If(v) => ("if", v),
        Header::LockToken(v) => ("lock-token", v),
        Header::Timeout(v) => ("timeout", v),
        Header::ContentRange(v) => ("content-range", v),
        Header::Range(v) => ("range", v),
        Header::IfMatch(v) => ("if-match", v),
        Header::IfNoneMatch(v) => ("if-none-match", v),
        Header::ContentType(v) => ("content-type", v),
        Header::Other(n, v) => (n, v),
    }
}

/// Sends one request; returns the status and the whole response body.
async fn send(share: &Share, req: Request<Full<Bytes>>) -> (u16, Bytes) {
    let resp = share.serve_request(req).await;
    let status = resp.status().as_u16();
    let body = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    (status, body)
}

fuzz_target!(|reqs: Vec<Req>| {
    let f = fixture();
    f.rt.block_on(async {
        for r in reqs.iter().take(8) {
            let Some(m) = method(&r.verb) else { continue };
            let path = format!("/{}", r.path.trim_start_matches('/'));
            let mut b = Request::builder().method(m.clone()).uri(&path);
            for h in &r.headers {
                let (n, v) = header(h);
                b = b.header(n, v);
            }
            let body = match &r.body {
                ReqBody::Raw(b) => b.clone(),
                ReqBody::Nested { depth, inner } => {
                    nested_body(&r.verb, usize::from(depth % 4096), inner)
                }
            };
            let deep = tiergate::xmldepth::too_deep(&body);
            let Ok(req) = b.body(Full::new(Bytes::from(body.clone()))) else {
                continue;
            };
            let uri_path = req.uri().path().to_string();
            let plain = req.headers().keys().all(|k| {
                !matches!(
                    k.as_str(),
                    "content-range" | "content-length" | "transfer-encoding" | "expect"
                )
            });
            let infinite = req
                .headers()
                .get("depth")
                .is_some_and(|d| d.as_bytes().eq_ignore_ascii_case(b"infinity"));
            let path_ok = webdav::check_uri_path(&uri_path);
            let (status, _) = send(&f.share, req).await;
            assert!((100..600).contains(&status));
            if let Err(e) = &path_ok {
                assert_eq!(status, e.http_status(), "refused path {uri_path:?}");
                continue;
            }
            if m.as_str() == "PROPFIND" && infinite && status != 400 {
                assert_eq!(status, 403, "PROPFIND Depth: infinity");
            }
            if deep && matches!(m.as_str(), "PROPFIND" | "PROPPATCH" | "LOCK") && !infinite {
                assert!(
                    matches!(status, 400 | 401 | 413),
                    "deep XML body got {status}"
                );
            }
            if m == Method::PUT && plain && (status == 201 || status == 204) {
                let get = Request::get(&path).body(Full::new(Bytes::new())).unwrap();
                let (s, got) = send(&f.share, get).await;
                assert_eq!(s, 200, "GET after a successful PUT of {path:?}");
                assert!(got == body, "PUT of {path:?} did not read back");
            }
        }
        let opt = Request::options("/").body(Full::new(Bytes::new())).unwrap();
        assert_eq!(
            send(&f.share, opt).await.0,
            200,
            "the share stopped answering"
        );
    });
});

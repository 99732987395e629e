//! The status server: a status page, its JSON API, Prometheus metrics, health checks, the
//! management API, and the heartbeat push. Schema, endpoints and examples: docs/STATUS.md.
//!
//! A thin HTTP layer over [`Reporter`] (which assembles the one status document) and the few
//! run-time knobs of [`Tiering`](crate::tiering::Tiering): the upload bandwidth schedule, the
//! cache size, and the quota (stored and reported; enforcement comes with the retention work).
//! Served with hyper on whatever tokio runtime the daemon gives it; anything that touches the
//! volume or a file (the status document reads the metadata store, a sync waits for uploads,
//! a settings change is written durably) runs on that runtime's blocking pool.
//!
//! ## Reading
//! `GET` (and `HEAD`) on `/`, `/api/v1/status`, `/api/v1/history`, `/api/v1/events`,
//! `/metrics`, `/healthz`, `/readyz`; no authentication: these are read-only, but they show the
//! volume's path and id, the store's description and recent errors to whoever can connect.
//!
//! ## Management
//! `/api/v1/manage/*` exists only when `web.management_token_file` is set (404 otherwise), and
//! every request must carry `Authorization: Bearer <token>`. The check comes before the method,
//! the path or the body are looked at, so a request without the token changes nothing; the
//! token is kept only as a BLAKE3 hash and compared through the hash's constant-time equality.
//! Changes are validated in full, then written to `<volume>/managed.json` (temp file, fsync,
//! rename, fsync of the directory), then applied, all under one lock, so the file and the
//! running daemon never disagree and a change that could not be saved is not applied. At start
//! [`WebApp::new`] re-applies the file: settings changed at run time survive restarts and
//! override the config file (delete the file, daemon stopped, to return to the config's
//! values). Each change is logged and recorded as a [`crate::events::record`].
//!
//! ## Heartbeat
//! With `web.heartbeat_url`, the status document is POSTed there at start and then every
//! `heartbeat_interval_secs`. A failed push (no connection, no answer within
//! [`HEARTBEAT_TIMEOUT`] or the interval, a non-2xx answer) is retried after 1 s, 2 s, 4 s ...
//! up to the interval; the first failure of a streak is logged as a warning and recorded as an
//! event, and so is the first success after it. The monitor sees a fresh document each try.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::{Extension, Router};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::{BandwidthRule, ByteSize, WebConfig};
use crate::error::{Error, Result};
use crate::serve::{self, Peer};
use crate::status::{self, Reporter, Status};
use crate::tiering::rate::Schedule;
use crate::tiering::SyncReport;

/// The status page (self-contained HTML; it reads the JSON API).
const STATUS_PAGE: &str = include_str!("../assets/status.html");
/// Settings changed through the management API, in the volume directory.
pub const MANAGED_FILE: &str = "managed.json";
const MANAGED_VERSION: u32 = 1;
/// Largest request body accepted (management requests are a few hundred bytes).
const MAX_BODY: usize = 64 << 10;
/// Smallest cache the management API accepts: two default packs.
const MIN_CACHE: u64 = 64 << 20;
/// `POST /api/v1/manage/sync` without `timeout_s` waits this long; at most [`MAX_SYNC`].
const DEFAULT_SYNC: Duration = Duration::from_secs(60);
const MAX_SYNC: Duration = Duration::from_secs(3600);
/// How long a request with a wrong token waits before its 401 (as the WebDAV share does).
const FAILED_AUTH_DELAY: Duration = Duration::from_secs(1);
/// Longest a heartbeat may take (connection, request, answer), unless the interval is shorter.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
const HEARTBEAT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /api/v1/manage/verify` runs this (filled in by the daemon); its JSON is the answer.
pub type VerifyHook = Arc<dyn Fn() -> Result<serde_json::Value> + Send + Sync>;

type Body = Full<Bytes>;
type Resp = Response<Body>;
type Req = Request<axum::body::Body>;
type HeartbeatClient = Client<HttpsConnector<HttpConnector>, Body>;

// ------------------------------------------------------------------------ managed settings

/// One weekly bandwidth rule as the management API and `managed.json` write it (the same
/// fields as `[[tiering.schedule]]`; `limit` in bytes per second, or a string like "20MiB").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub days: String,
    pub from: String,
    pub to: String,
    #[serde(deserialize_with = "byte_count")]
    pub limit: u64,
}

/// The upload bandwidth setting: `PUT /api/v1/manage/bandwidth`'s body. `limit` must be given
/// (`null`: unlimited outside the schedule's windows); `schedule` may be left out (no rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bandwidth {
    #[serde(deserialize_with = "opt_byte_count")]
    pub limit: Option<u64>,
    #[serde(default)]
    pub schedule: Vec<Rule>,
}

fn byte_count<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    ByteSize::deserialize(d).map(ByteSize::bytes)
}

fn opt_byte_count<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    Option::<ByteSize>::deserialize(d).map(|o| o.map(ByteSize::bytes))
}

impl Bandwidth {
    /// The limiter's schedule; the error names the rule and field at fault.
    pub fn schedule(&self) -> Result<Schedule> {
        if self.limit == Some(0) {
            return Err(Error::Invalid(
                "limit = 0: use null for unlimited (a schedule rule with limit 0 makes its \
                 window unlimited)"
                    .into(),
            ));
        }
        let rules: Vec<BandwidthRule> = self
            .schedule
            .iter()
            .map(|r| BandwidthRule {
                days: r.days.clone(),
                from: r.from.clone(),
                to: r.to.clone(),
                limit: ByteSize(r.limit),
            })
            .collect();
        Schedule::new(self.limit, &rules)
    }

    fn describe(&self) -> String {
        match self.schedule() {
            Ok(s) => s.describe(),
            Err(e) => format!("invalid: {}", message(&e)),
        }
    }
}

/// What `managed.json` holds: the settings changed through the management API (absent: the
/// config file's value applies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Managed {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_max_bytes: Option<u64>,
    /// The tenant's quota on stored bytes (None: the config file's `[quota] limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

impl Default for Managed {
    fn default() -> Self {
        Managed {
            version: MANAGED_VERSION,
            bandwidth: None,
            cache_max_bytes: None,
            quota_bytes: None,
        }
    }
}

impl Managed {
    /// Reads `path`; a missing file is no settings. A damaged file is an error (rather than
    /// silently falling back to the config's values, which may be what the admin overrode).
    pub fn load(path: &Path) -> Result<Managed> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Managed::default()),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let bad = |m: String| {
            Error::Invalid(format!(
                "{}: {m}. The file holds settings changed through the management API; fix it, \
                 or delete it (daemon stopped) to use the config file's values",
                path.display()
            ))
        };
        let m: Managed = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if m.version != MANAGED_VERSION {
            return Err(bad(format!(
                "version {} is not {MANAGED_VERSION} (written by another tiergate version?)",
                m.version
            )));
        }
        if let Some(b) = &m.bandwidth {
            b.schedule()
                .map_err(|e| bad(format!("bandwidth: {}", message(&e))))?;
        }
        Ok(m)
    }

    /// Writes `path` durably: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(self).expect("settings to JSON");
        text.push(b'\n');
        crate::durable::write_file_durably(path, &text, 0o600)
    }

    fn is_empty(&self) -> bool {
        self.bandwidth.is_none() && self.cache_max_bytes.is_none() && self.quota_bytes.is_none()
    }
}

/// The text of an error without the variant's prefix ("invalid argument: ").
fn message(e: &Error) -> String {
    match e {
        Error::Invalid(m) => m.clone(),
        other => other.to_string(),
    }
}

// ------------------------------------------------------------------------ the application

/// Everything the status server serves, and the background tasks that feed it.
pub struct WebApp {
    reporter: Arc<Reporter>,
    /// BLAKE3 hash of the management token (None: management API off).
    token: Option<blake3::Hash>,
    managed_path: PathBuf,
    /// The settings in force that came from the management API. Held while a change is
    /// validated, saved and applied, so changes apply in the order they were saved.
    managed: parking_lot::Mutex<Managed>,
    /// The config file's quota, in force whenever the management API has none.
    config_quota: Option<u64>,
    /// The config file's values of the settings the management API can change, in words,
    /// for the overrides the status shows.
    config_values: ConfigValues,
    heartbeat: Option<Heartbeat>,
    /// `POST /api/v1/manage/verify`; None: 501 (verification runs offline).
    pub verify: Option<VerifyHook>,
    verifying: AtomicBool,
    /// Turns true when the background tasks should end ([`WebApp::stop`]).
    stop_bg: watch::Sender<bool>,
    /// `web.tls_cert`/`web.tls_key` (None: plain HTTP) and the connection limits.
    tls: Option<TlsAcceptor>,
    limits: serve::Limits,
}

/// The config file's values of the settings the management API can change, in words.
struct ConfigValues {
    bandwidth: String,
    cache_max: String,
    quota: String,
}

impl WebApp {
    /// The settings of `m` that override the config file, with the config's values.
    fn overrides(&self, m: &Managed) -> Vec<status::Override> {
        let source = format!("management API ({})", self.managed_path.display());
        let mut out = Vec::new();
        let mut add = |field, value: String, config_value: &String| {
            out.push(status::Override {
                field,
                value,
                config_value: config_value.clone(),
                source: source.clone(),
            })
        };
        let c = &self.config_values;
        if let Some(b) = &m.bandwidth {
            add("upload.limit_bps", b.describe(), &c.bandwidth);
        }
        if let Some(bytes) = m.cache_max_bytes {
            add("cache.max_bytes", ByteSize(bytes).to_string(), &c.cache_max);
        }
        if let Some(q) = m.quota_bytes {
            add("space.quota_bytes", ByteSize(q).to_string(), &c.quota);
        }
        out
    }
}

struct Heartbeat {
    url: http::Uri,
    /// The URL without query and user info, for logs and events.
    shown: String,
    interval: Duration,
    /// `Bearer <token>`, marked sensitive.
    auth: Option<HeaderValue>,
    client: HeartbeatClient,
}

impl WebApp {
    /// Loads the management token and the heartbeat settings, prepares the heartbeat's HTTP
    /// client, and re-applies the settings saved in `<volume_dir>/managed.json` (they override
    /// the config file). Call after tiering started, before front-ends serve.
    pub fn new(reporter: Arc<Reporter>, cfg: &WebConfig, volume_dir: &Path) -> Result<Arc<WebApp>> {
        let token = cfg.management_token()?;
        let tls = cfg.tls()?;
        let heartbeat = match &cfg.heartbeat_url {
            Some(url) => Some(Heartbeat::new(url, cfg)?),
            None => None,
        };
        let managed_path = volume_dir.join(MANAGED_FILE);
        let managed = Managed::load(&managed_path)?;
        let t = reporter.tiering();
        let config_values = ConfigValues {
            bandwidth: t.limiter().schedule().describe(),
            cache_max: ByteSize(t.status().cache_max).to_string(),
            quota: reporter
                .volume()
                .quota()
                .map_or("no quota".into(), |q| ByteSize(q).to_string()),
        };
        if let Some(b) = &managed.bandwidth {
            t.limiter().set_schedule(b.schedule()?);
        }
        if let Some(c) = managed.cache_max_bytes {
            t.set_cache_max(c);
        }
        // What the config set, for when the management API removes its own quota again.
        let config_quota = reporter.volume().quota();
        if let Some(q) = managed.quota_bytes {
            reporter.volume().set_quota(Some(q));
        }
        if !managed.is_empty() {
            let text = summary(&managed);
            tracing::info!(
                "settings changed through the management API override the config ({}): {text}",
                managed_path.display()
            );
            crate::events::record(
                "info",
                format!("settings from the management API in force: {text}"),
            );
        }
        let app = Arc::new(WebApp {
            reporter,
            token: token.map(|t| blake3::hash(t.0.as_bytes())),
            managed_path,
            managed: parking_lot::Mutex::new(managed.clone()),
            config_quota,
            config_values,
            heartbeat,
            verify: None,
            verifying: AtomicBool::new(false),
            stop_bg: watch::channel(false).0,
            tls,
            limits: cfg.limits(),
        });
        app.reporter.set_overrides(app.overrides(&managed));
        Ok(app)
    }

    /// The status document. Reads the metadata store: call from a blocking context.
    pub fn status(&self) -> Status {
        self.reporter.status()
    }

    async fn status_async(self: &Arc<Self>) -> Option<Status> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.status()).await.ok()
    }

    /// The settings the management API changed (what `managed.json` holds).
    pub fn managed(&self) -> Managed {
        self.managed.lock().clone()
    }

    /// Ends the background tasks ([`spawn_background`]).
    pub fn stop(&self) {
        self.stop_bg.send_replace(true);
    }

    /// Validated change: edits a copy, saves it, then applies it, under the settings lock.
    /// Nothing is applied if the save fails. Blocking (file I/O).
    fn change(&self, edit: impl FnOnce(&mut Managed), apply: impl FnOnce()) -> Result<Managed> {
        let mut m = self.managed.lock();
        let mut next = m.clone();
        edit(&mut next);
        next.save(&self.managed_path)?;
        *m = next.clone();
        apply();
        self.reporter.set_overrides(self.overrides(&next));
        Ok(next)
    }

    /// The scheme the status server speaks: `https` with `web.tls_cert`, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Whether the request carries the management token. The token is kept only as a BLAKE3
    /// hash; the comparison of hashes is `blake3::Hash`'s constant-time equality.
    fn authorized(&self, h: &HeaderMap) -> bool {
        let Some(want) = &self.token else {
            return false;
        };
        bearer(h).is_some_and(|given| blake3::hash(given.as_bytes()) == *want)
    }
}

fn summary(m: &Managed) -> String {
    let mut parts = Vec::new();
    if let Some(b) = &m.bandwidth {
        parts.push(format!("upload bandwidth {}", b.describe()));
    }
    if let Some(c) = m.cache_max_bytes {
        parts.push(format!("cache size {}", ByteSize(c)));
    }
    if let Some(q) = m.quota_bytes {
        parts.push(format!("quota {}", ByteSize(q)));
    }
    parts.join(", ")
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

// ------------------------------------------------------------------------ responses

fn respond(code: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Every answer is the state of now: never serve one from a cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn json_resp<T: Serialize + ?Sized>(code: StatusCode, v: &T) -> Resp {
    let mut b = serde_json::to_vec(v).expect("JSON of plain data");
    b.push(b'\n');
    respond(code, "application/json", b)
}

fn api_error(code: StatusCode, msg: impl std::fmt::Display) -> Resp {
    json_resp(code, &json!({ "error": msg.to_string() }))
}

fn text(code: StatusCode, msg: impl std::fmt::Display) -> Resp {
    respond(code, "text/plain; charset=utf-8", format!("{msg}\n"))
}

fn not_allowed(allow: &'static str, api: bool) -> Resp {
    let msg = format!("method not allowed here (allowed: {allow})");
    let mut r = if api {
        api_error(StatusCode::METHOD_NOT_ALLOWED, msg)
    } else {
        text(StatusCode::METHOD_NOT_ALLOWED, msg)
    };
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn unauthorized() -> Resp {
    let mut r = api_error(
        StatusCode::UNAUTHORIZED,
        "the management API needs Authorization: Bearer <token> (web.management_token_file)",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tiergate\""),
    );
    r
}

fn internal() -> Resp {
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error (see the daemon's log)",
    )
}

fn error_status(e: &Error) -> StatusCode {
    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A refused request: its status and message (answered as `{"error": message}`).
struct Refusal(StatusCode, String);

impl From<Refusal> for Resp {
    fn from(r: Refusal) -> Resp {
        api_error(r.0, r.1)
    }
}

/// The request body, at most [`MAX_BODY`] bytes (413 beyond; checked against Content-Length
/// before reading, and while reading for chunked bodies).
async fn read_body(req: Req) -> std::result::Result<Bytes, Refusal> {
    let too_large = || Refusal(StatusCode::PAYLOAD_TOO_LARGE, too_large_message());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if over_limit(&*e) => Err(too_large()),
        Err(e) => Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("reading the request body: {e}"),
        )),
    }
}

/// Whether a body error is a length limit's (ours, or the router's limit layer's, which
/// reaches here wrapped).
fn over_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> std::result::Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))
}

/// The JSON body of a request.
async fn json_body<T: serde::de::DeserializeOwned>(req: Req) -> std::result::Result<T, Refusal> {
    parse_json(&read_body(req).await?)
}

// ------------------------------------------------------------------------ metrics

enum Num {
    U(u64),
    F(f64),
}

impl From<u64> for Num {
    fn from(v: u64) -> Num {
        Num::U(v)
    }
}
impl From<f64> for Num {
    fn from(v: f64) -> Num {
        Num::F(v)
    }
}
impl From<bool> for Num {
    fn from(v: bool) -> Num {
        Num::U(v as u64)
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::U(v) => write!(f, "{v}"),
            Num::F(v) if v.is_nan() => f.write_str("NaN"),
            Num::F(v) if v.is_infinite() => f.write_str(if *v > 0.0 { "+Inf" } else { "-Inf" }),
            Num::F(v) => write!(f, "{v}"),
        }
    }
}

/// Prometheus text exposition format 0.0.4: each family's `# HELP` and `# TYPE`, then its
/// sample.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write;
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, v: Num) {
        use std::fmt::Write;
        let _ = writeln!(self.0, "{name}{labels} {v}");
    }

    fn gauge(&mut self, name: &str, help: &str, v: impl Into<Num>) {
        self.family(name, "gauge", help);
        self.sample(name, "", v.into());
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        debug_assert!(name.ends_with("_total"), "{name}");
        self.family(name, "counter", help);
        self.sample(name, "", Num::U(v));
    }
}

fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics of one status document (names and meanings: docs/STATUS.md).
pub fn metrics_text(s: &Status) -> String {
    let mut m = Exposition::default();
    let (c, u, f, o, sp) = (&s.cache, &s.upload, &s.fetch, &s.offsite, &s.space);
    m.gauge(
        "tiergate_cache_max_bytes",
        "Local disk space for pack data (cache size in force).",
        c.max_bytes,
    );
    m.gauge(
        "tiergate_cache_used_bytes",
        "Local pack data: packs not uploaded yet, cached copies, fetched ranges.",
        c.used_bytes,
    );
    m.gauge(
        "tiergate_cache_dirty_bytes",
        "Local data not yet off-site (queued packs, the open pack, data in memory).",
        c.dirty_bytes,
    );
    m.counter(
        "tiergate_cache_evicted_bytes_total",
        "Bytes of uploaded packs dropped from the local cache.",
        c.evicted_bytes,
    );
    m.counter(
        "tiergate_cache_throttled_writes_total",
        "Writes that waited for uploads because the cache was full of data not yet off-site.",
        c.throttled_writes,
    );
    m.gauge(
        "tiergate_upload_queued_bytes",
        "Bytes waiting for upload (sealed packs and the open pack).",
        u.queued_bytes,
    );
    m.gauge(
        "tiergate_upload_queued_packs",
        "Sealed packs waiting for upload.",
        u.queued_packs,
    );
    m.counter(
        "tiergate_upload_uploaded_bytes_total",
        "Pack bytes uploaded since the daemon started.",
        u.uploaded_bytes,
    );
    m.counter(
        "tiergate_upload_uploaded_packs_total",
        "Packs uploaded since the daemon started.",
        u.uploaded_packs,
    );
    m.counter(
        "tiergate_upload_put_requests_total",
        "PUT-type requests sent for packs since the daemon started.",
        u.put_requests,
    );
    m.counter(
        "tiergate_upload_failures_total",
        "Failed pack uploads since the daemon started (each is retried).",
        u.failures,
    );
    m.family(
        "tiergate_upload_limit_bytes_per_second",
        "gauge",
        "Upload bandwidth limit in force; no sample while uploads are unlimited.",
    );
    if let Some(l) = u.limit_bps {
        m.sample("tiergate_upload_limit_bytes_per_second", "", Num::U(l));
    }
    m.counter(
        "tiergate_fetch_bytes_total",
        "Bytes fetched from the store for reads of evicted data.",
        f.fetched_bytes,
    );
    m.counter(
        "tiergate_fetch_get_requests_total",
        "GET requests sent to the store for reads of evicted data.",
        f.get_requests,
    );
    m.gauge(
        "tiergate_offsite_consistency_point",
        "Newest metadata journal position that is off-site and recoverable (0: none yet).",
        o.consistency_point,
    );
    m.gauge(
        "tiergate_offsite_journal_position",
        "Newest metadata journal position (changes made so far).",
        o.journal_position,
    );
    m.gauge(
        "tiergate_offsite_pending_changes",
        "Metadata changes not yet off-site.",
        o.pending_changes,
    );
    m.gauge(
        "tiergate_offsite_oldest_pending_seconds",
        "Age of the oldest change not yet off-site (0: everything is off-site).",
        o.oldest_pending_s,
    );
    m.gauge(
        "tiergate_offsite_recoverable",
        "1 if the store holds what is needed to rebuild the volume (a checkpoint), else 0.",
        o.recoverable,
    );
    m.gauge(
        "tiergate_space_logical_bytes",
        "File data as users see it.",
        sp.logical_bytes,
    );
    m.gauge(
        "tiergate_space_unique_bytes",
        "Distinct chunks before compression.",
        sp.unique_bytes,
    );
    m.gauge(
        "tiergate_space_stored_bytes",
        "Distinct chunks as stored (compressed, encrypted).",
        sp.stored_bytes,
    );
    m.gauge(
        "tiergate_space_metadata_bytes",
        "Size of the local metadata store.",
        sp.metadata_bytes,
    );
    m.gauge(
        "tiergate_quota_bytes",
        "The tenant quota on stored bytes in force; 0: none.",
        sp.quota_bytes.unwrap_or(0),
    );
    m.gauge(
        "tiergate_quota_used_bytes",
        "What counts against the quota: stored bytes plus uncommitted writes.",
        sp.quota_used_bytes.unwrap_or(sp.stored_bytes),
    );
    m.gauge(
        "tiergate_gc_packs_waiting",
        "Packs dropped by garbage collection whose objects still wait in the store.",
        s.gc.packs_waiting,
    );
    m.gauge(
        "tiergate_gc_packs_waiting_retention",
        "Of those, packs under S3 Object Lock retention (deleted once it ends).",
        s.gc.packs_waiting_retention,
    );
    m.gauge(
        "tiergate_gc_garbage_bytes",
        "Dead data left in kept packs after the last garbage collection pass.",
        s.gc.garbage_bytes,
    );
    m.gauge(
        "tiergate_snapshots",
        "Snapshots of the volume (scheduled and hand-made).",
        s.snapshots.count,
    );
    m.gauge(
        "tiergate_snapshot_newest_timestamp_seconds",
        "When the newest snapshot was taken (Unix seconds); 0: there is none.",
        s.snapshots.newest_unix.unwrap_or(0),
    );
    m.gauge(
        "tiergate_dedup_ratio",
        "Logical bytes per unique byte (1 when empty).",
        sp.dedup_ratio,
    );
    m.gauge(
        "tiergate_compression_ratio",
        "Unique bytes per stored byte (1 when empty).",
        sp.compression_ratio,
    );
    m.gauge(
        "tiergate_store_healthy",
        "1 if no upload failed since the last success and the lease is ours, else 0.",
        s.store.healthy,
    );
    m.gauge(
        "tiergate_store_offsite",
        "1 if the store is away from this machine (an object store); 0 for a local directory.",
        s.store.offsite,
    );
    m.gauge(
        "tiergate_settings_overridden",
        "Settings in force that come from the management API rather than the config file.",
        s.overrides.len() as u64,
    );
    m.gauge(
        "tiergate_frontend_open_handles",
        "Open file handles of the FUSE mount and the WebDAV share.",
        s.frontends.open_handles,
    );
    m.counter(
        "tiergate_webdav_requests_total",
        "WebDAV requests served since the daemon started.",
        s.frontends.webdav_requests,
    );
    m.gauge(
        "tiergate_uptime_seconds",
        "Seconds since the daemon started.",
        s.uptime_s,
    );
    m.family(
        "tiergate_build_info",
        "gauge",
        "Always 1; the version label is the daemon's version.",
    );
    m.sample(
        "tiergate_build_info",
        &format!("{{version=\"{}\"}}", label_value(s.version)),
        Num::U(1),
    );
    m.0
}

// ------------------------------------------------------------------------ routing

#[derive(Clone, Copy)]
enum Page {
    Index,
    Status,
    History,
    Events,
    Metrics,
    Healthz,
    Readyz,
}

const GET: &str = "GET, HEAD";

/// A reading endpoint: GET (and HEAD, answered by axum from GET without the body).
fn reading(page: Page, api: bool) -> axum::routing::MethodRouter<Arc<WebApp>> {
    axum::routing::get(move |State(app): State<Arc<WebApp>>| async move { app.page(page).await })
        .fallback(move || async move { not_allowed(GET, api) })
}

/// One management endpoint: `method` runs `f(app, request, peer)`; other methods get 405.
fn manage_op<F, Fut>(method: Method, f: F) -> axum::routing::MethodRouter<Arc<WebApp>>
where
    F: Fn(Arc<WebApp>, Req, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Resp> + Send + 'static,
{
    let allow: &'static str = match method.as_str() {
        "PUT" => "PUT",
        _ => "POST",
    };
    let filter = axum::routing::MethodFilter::try_from(method).expect("a plain method");
    axum::routing::on(
        filter,
        move |State(app): State<Arc<WebApp>>, Extension(Peer(peer)): Extension<Peer>, req: Req| {
            f(app, req, peer)
        },
    )
    .fallback(move || async move { not_allowed(allow, true) })
}

/// The status page's Content-Security-Policy: nothing but the page's own inline script (by
/// its hash), its inline styles (style attributes need 'unsafe-inline'), and requests to this
/// server.
fn content_security_policy() -> &'static HeaderValue {
    static CSP: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        let script = STATUS_PAGE
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map(|(s, _)| s)
            .expect("the status page has one inline script");
        use base64::Engine;
        let hash = base64::engine::general_purpose::STANDARD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            script.as_bytes(),
        ));
        HeaderValue::from_str(&format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        ))
        .expect("a header value")
    })
}

/// The status server's routes (docs/STATUS.md), for [`serve::serve`]. Every answer carries
/// `X-Content-Type-Options: nosniff`; no request body may exceed [`MAX_BODY`] (413).
pub fn router(app: Arc<WebApp>) -> Router {
    // The token gate wraps every management path, the unknown ones included: without the
    // token nothing below it is looked at.
    let manage = Router::new()
        .route(
            "/api/v1/manage/status",
            reading_manage(|app| async move {
                match app.status_async().await {
                    Some(s) => json_resp(
                        StatusCode::OK,
                        &json!({ "status": s, "managed": app.managed_json() }),
                    ),
                    None => internal(),
                }
            }),
        )
        .route(
            "/api/v1/manage/events",
            reading_manage(|_| async { json_resp(StatusCode::OK, &crate::events::recent()) }),
        )
        .route(
            "/api/v1/manage/bandwidth",
            manage_op(Method::PUT, |app, req, peer| async move {
                app.put_bandwidth(req, peer).await
            }),
        )
        .route(
            "/api/v1/manage/cache",
            manage_op(Method::PUT, |app, req, peer| async move {
                app.put_cache(req, peer).await
            }),
        )
        .route(
            "/api/v1/manage/quota",
            manage_op(Method::PUT, |app, req, peer| async move {
                app.put_quota(req, peer).await
            }),
        )
        .route(
            "/api/v1/manage/sync",
            manage_op(Method::POST, |app, req, peer| async move {
                app.sync(req, peer).await
            }),
        )
        .route(
            "/api/v1/manage/verify",
            manage_op(Method::POST, |app, _req, peer| async move {
                app.run_verify(peer).await
            }),
        )
        .fallback(|uri: http::Uri| async move {
            let op = uri.path()["/api/v1/manage".len().min(uri.path().len())..]
                .trim_start_matches('/')
                .to_string();
            api_error(
                StatusCode::NOT_FOUND,
                format!("no such management endpoint {op:?}"),
            )
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), gate))
        .with_state(app.clone());
    Router::new()
        .route("/", reading(Page::Index, false))
        .route("/index.html", reading(Page::Index, false))
        .route("/api/v1/status", reading(Page::Status, true))
        .route("/api/v1/history", reading(Page::History, true))
        .route("/api/v1/events", reading(Page::Events, true))
        .route("/metrics", reading(Page::Metrics, false))
        .route("/healthz", reading(Page::Healthz, false))
        .route("/readyz", reading(Page::Readyz, false))
        .fallback(move |req: Req| {
            let manage = manage.clone();
            async move {
                let path = req.uri().path().to_string();
                if path == "/api/v1/manage" || path.starts_with("/api/v1/manage/") {
                    return manage.oneshot(req).await.into_response();
                }
                if path.starts_with("/api/") {
                    let msg = format!("no such endpoint {path}");
                    return api_error(StatusCode::NOT_FOUND, msg).into_response();
                }
                text(StatusCode::NOT_FOUND, "not found").into_response()
            }
        })
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(axum::middleware::map_response(too_large_as_json))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .with_state(app)
}

/// A reading management endpoint (GET, HEAD).
fn reading_manage<F, Fut>(f: F) -> axum::routing::MethodRouter<Arc<WebApp>>
where
    F: Fn(Arc<WebApp>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Resp> + Send + 'static,
{
    axum::routing::get(move |State(app): State<Arc<WebApp>>| f(app))
        .fallback(|| async { not_allowed(GET, true) })
}

/// The management API's gate: 404 when it is off, 401 (after [`FAILED_AUTH_DELAY`] for a
/// wrong token) without the right bearer token; before the method, path or body are looked at.
async fn gate(
    State(app): State<Arc<WebApp>>,
    Extension(Peer(peer)): Extension<Peer>,
    req: Req,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if app.token.is_none() {
        return api_error(
            StatusCode::NOT_FOUND,
            "management API is not enabled (set web.management_token_file)",
        )
        .into_response();
    }
    if !app.authorized(req.headers()) {
        if req.headers().contains_key(header::AUTHORIZATION) {
            tracing::warn!(%peer, "web: wrong management token");
            tokio::time::sleep(FAILED_AUTH_DELAY).await;
        }
        return unauthorized().into_response();
    }
    next.run(req).await
}

/// The body limit layer's 413 as the API's JSON error.
async fn too_large_as_json(r: axum::response::Response) -> axum::response::Response {
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return api_error(StatusCode::PAYLOAD_TOO_LARGE, too_large_message()).into_response();
    }
    r
}

fn too_large_message() -> String {
    format!("request body larger than {} KiB", MAX_BODY >> 10)
}

impl WebApp {
    async fn page(self: Arc<Self>, page: Page) -> Resp {
        match page {
            Page::Index => {
                let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE);
                let h = r.headers_mut();
                h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
                h.insert(
                    header::CONTENT_SECURITY_POLICY,
                    content_security_policy().clone(),
                );
                h.insert(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                );
                r
            }
            Page::Status => match self.status_async().await {
                Some(s) => json_resp(StatusCode::OK, &s),
                None => internal(),
            },
            Page::History => json_resp(StatusCode::OK, &self.reporter.history()),
            Page::Events => json_resp(StatusCode::OK, &crate::events::recent()),
            Page::Metrics => match self.status_async().await {
                Some(s) => respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics_text(&s),
                ),
                None => text(StatusCode::INTERNAL_SERVER_ERROR, "status unavailable"),
            },
            Page::Healthz => text(StatusCode::OK, "ok"),
            Page::Readyz => match self.status_async().await {
                Some(s) => match not_ready(&s) {
                    None => text(StatusCode::OK, "ready"),
                    Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
                },
                None => text(StatusCode::SERVICE_UNAVAILABLE, "status unavailable"),
            },
        }
    }

    fn managed_json(&self) -> serde_json::Value {
        let m = self.managed();
        json!({
            "file": self.managed_path.display().to_string(),
            "bandwidth": m.bandwidth,
            "cache_max_bytes": m.cache_max_bytes,
            "quota_bytes": m.quota_bytes,
            "quota_in_force": self.reporter.volume().quota(),
        })
    }

    /// Saves and applies a change on the blocking pool; logs and records it on success.
    async fn apply(
        self: &Arc<Self>,
        peer: SocketAddr,
        what: String,
        edit: impl FnOnce(&mut Managed) + Send + 'static,
        apply: impl FnOnce(&WebApp) + Send + 'static,
    ) -> std::result::Result<(), Resp> {
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || me.change(edit, || apply(&me))).await;
        match r {
            Ok(Ok(_)) => {
                tracing::info!(%peer, "management API: {what}");
                crate::events::record("info", format!("management API: {what}"));
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(
                    "management API: saving {}: {e}",
                    self.managed_path.display()
                );
                Err(api_error(
                    error_status(&e),
                    format!("the change was not saved, nothing changed: {e}"),
                ))
            }
            Err(_) => Err(internal()),
        }
    }

    async fn put_bandwidth(self: &Arc<Self>, req: Req, peer: SocketAddr) -> Resp {
        let b: Bandwidth = match json_body(req).await {
            Ok(b) => b,
            Err(r) => return r.into(),
        };
        let schedule = match b.schedule() {
            Ok(s) => s,
            Err(e) => return api_error(StatusCode::BAD_REQUEST, message(&e)),
        };
        let what = format!("upload bandwidth set to {}", b.describe());
        let saved = b.clone();
        if let Err(r) = self
            .apply(
                peer,
                what,
                move |m| m.bandwidth = Some(saved),
                move |app| app.reporter.tiering().limiter().set_schedule(schedule),
            )
            .await
        {
            return r;
        }
        json_resp(
            StatusCode::OK,
            &json!({
                "bandwidth": b,
                "limit_now_bps": self.reporter.tiering().limiter().current_limit(),
            }),
        )
    }

    async fn put_cache(self: &Arc<Self>, req: Req, peer: SocketAddr) -> Resp {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            #[serde(deserialize_with = "byte_count")]
            max_bytes: u64,
        }
        let b: Body = match json_body(req).await {
            Ok(b) => b,
            Err(r) => return r.into(),
        };
        if b.max_bytes < MIN_CACHE {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "max_bytes = {} is below the minimum of {}",
                    ByteSize(b.max_bytes),
                    ByteSize(MIN_CACHE)
                ),
            );
        }
        let n = b.max_bytes;
        // Tiering records its own event for the new size.
        if let Err(r) = self
            .apply(
                peer,
                format!("cache size set to {}", ByteSize(n)),
                move |m| m.cache_max_bytes = Some(n),
                move |app| app.reporter.tiering().set_cache_max(n),
            )
            .await
        {
            return r;
        }
        json_resp(
            StatusCode::OK,
            &json!({
                "max_bytes": n,
                "used_bytes": self.reporter.tiering().cache_used(),
            }),
        )
    }

    async fn put_quota(self: &Arc<Self>, req: Req, peer: SocketAddr) -> Resp {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            #[serde(deserialize_with = "opt_byte_count")]
            bytes: Option<u64>,
        }
        let b: Body = match json_body(req).await {
            Ok(b) => b,
            Err(r) => return r.into(),
        };
        if b.bytes == Some(0) {
            return api_error(StatusCode::BAD_REQUEST, "bytes = 0: use null for no quota");
        }
        let q = b.bytes;
        let in_force = q.or(self.config_quota);
        let what = match (q, in_force) {
            (Some(q), _) => format!("quota set to {}", ByteSize(q)),
            (None, Some(c)) => format!("quota back to the config's {}", ByteSize(c)),
            (None, None) => "quota removed".into(),
        };
        if let Err(r) = self
            .apply(
                peer,
                what,
                move |m| m.quota_bytes = q,
                move |app| app.reporter.volume().set_quota(in_force),
            )
            .await
        {
            return r;
        }
        let used = self.reporter.volume().quota_used();
        json_resp(
            StatusCode::OK,
            &json!({
                "quota_bytes": in_force,
                "used_bytes": used,
                "enforced": in_force.is_some(),
            }),
        )
    }

    async fn sync(self: &Arc<Self>, req: Req, peer: SocketAddr) -> Resp {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            timeout_s: Option<f64>,
        }
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(r) => return r.into(),
        };
        let timeout = if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            match parse_json::<Body>(&body) {
                Ok(b) => b.timeout_s,
                Err(r) => return r.into(),
            }
        };
        let timeout = match timeout {
            None => DEFAULT_SYNC,
            Some(t) if t.is_finite() && (0.0..=MAX_SYNC.as_secs_f64()).contains(&t) => {
                Duration::from_secs_f64(t)
            }
            Some(t) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "timeout_s = {t} is outside 0..={} seconds",
                        MAX_SYNC.as_secs()
                    ),
                )
            }
        };
        tracing::info!(%peer, "management API: sync (timeout {:.0} s)", timeout.as_secs_f64());
        let t = self.reporter.tiering().clone();
        let r = match tokio::task::spawn_blocking(move || t.sync(Some(timeout))).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return api_error(error_status(&e), format!("sync: {e}")),
            Err(_) => return internal(),
        };
        let code = if r.complete {
            StatusCode::OK
        } else if r.interrupted {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::GATEWAY_TIMEOUT
        };
        let outcome = if r.complete {
            "everything is off-site"
        } else if r.interrupted {
            "interrupted by shutdown"
        } else {
            "timed out with data not yet off-site"
        };
        crate::events::record(
            if r.complete { "info" } else { "warning" },
            format!(
                "management API: sync of {} pack(s), {}: {outcome}",
                r.packs,
                ByteSize(r.bytes)
            ),
        );
        json_resp(code, &sync_json(&r))
    }

    async fn run_verify(self: &Arc<Self>, peer: SocketAddr) -> Resp {
        let Some(hook) = self.verify.clone() else {
            return api_error(
                StatusCode::NOT_IMPLEMENTED,
                "verification does not run inside the daemon yet: stop it and run \
                 `tiergate verify --config FILE` (it runs offline)",
            );
        };
        if self.verifying.swap(true, Ordering::SeqCst) {
            return api_error(StatusCode::CONFLICT, "a verification is already running");
        }
        tracing::info!(%peer, "management API: verify");
        crate::events::record("info", "management API: verification started");
        let r = tokio::task::spawn_blocking(move || hook()).await;
        self.verifying.store(false, Ordering::SeqCst);
        match r {
            Ok(Ok(v)) => {
                crate::events::record("info", "management API: verification finished");
                json_resp(StatusCode::OK, &v)
            }
            Ok(Err(e)) => {
                crate::events::record("error", format!("management API: verification failed: {e}"));
                api_error(error_status(&e), format!("verify: {e}"))
            }
            Err(_) => internal(),
        }
    }
}

/// Why the appliance is not ready (None: ready): the lease is another's, or the store fails.
fn not_ready(s: &Status) -> Option<String> {
    if let Some(h) = &s.store.lease_held_by {
        return Some(format!(
            "not ready: the volume's lease is held by {h}: nothing is uploaded"
        ));
    }
    if !s.store.healthy {
        let e = s.store.last_error.as_deref().unwrap_or("unknown error");
        return Some(format!("not ready: the store is failing: {e}"));
    }
    None
}

/// A [`SyncReport`] as JSON (the same fields as `tiergate sync --json`).
fn sync_json(r: &SyncReport) -> serde_json::Value {
    json!({
        "complete": r.complete,
        "packs": r.packs,
        "bytes": r.bytes,
        "pending_packs": r.pending_packs,
        "metadata_pending": r.metadata_pending,
        "consistency_point": r.consistency_point,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "last_error": r.last_error,
        "interrupted": r.interrupted,
    })
}

// ------------------------------------------------------------------------ serving

/// Serves until `stop` turns true (or its sender goes away), over TLS when `web.tls_cert` is
/// set, under the `[web]` connection limits ([`serve::serve`]).
pub async fn run(listener: TcpListener, app: Arc<WebApp>, stop: watch::Receiver<bool>) {
    let (tls, limits) = (app.tls.clone(), app.limits.clone());
    serve::serve("web", listener, tls, limits, router(app), stop).await
}

/// Starts the background tasks on `rt`: the history sampler (every
/// [`status::SAMPLE_EVERY`]) and, when configured, the heartbeat. They end at
/// [`WebApp::stop`] or when the runtime shuts down.
pub fn spawn_background(app: &Arc<WebApp>, rt: &Handle) {
    let (a, stop) = (app.clone(), app.stop_bg.subscribe());
    rt.spawn(sample_loop(a, stop));
    if app.heartbeat.is_some() {
        let (a, stop) = (app.clone(), app.stop_bg.subscribe());
        rt.spawn(heartbeat_loop(a, stop));
    }
}

async fn sample_loop(app: Arc<WebApp>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(status::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let r = app.reporter.clone();
                let _ = tokio::task::spawn_blocking(move || r.sample()).await;
            }
            _ = stop.changed() => return,
        }
    }
}

// ------------------------------------------------------------------------ heartbeat

impl Heartbeat {
    fn new(url: &str, cfg: &WebConfig) -> Result<Heartbeat> {
        let bad = |m: String| Error::Invalid(format!("web.heartbeat_url = {url:?}: {m}"));
        let uri: http::Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
        let https = uri.scheme_str() == Some("https");
        let auth = match cfg.heartbeat_token()? {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.0)).map_err(|_| {
                    Error::Invalid("web.heartbeat_token_file: not a valid header value".into())
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let shown = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("http"),
            uri.host().unwrap_or(""),
            uri.port().map(|p| format!(":{p}")).unwrap_or_default()
        ) + uri.path();
        Ok(Heartbeat {
            client: heartbeat_client(https)?,
            url: uri,
            shown,
            interval: Duration::from_secs(cfg.heartbeat_interval_secs),
            auth,
        })
    }
}

/// An HTTP(S) client: rustls with ring (as the WebDAV share) and the system's CA roots (only
/// loaded for an https URL, so a plain http URL works on a system without them).
fn heartbeat_client(https: bool) -> Result<HeartbeatClient> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = if https {
        builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| {
                Error::io(
                    "web.heartbeat_url: loading the system's CA certificates (install \
                     ca-certificates)",
                    e,
                )
            })?
    } else {
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(format!("heartbeat TLS setup: {e}")))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        builder.with_tls_config(tls)
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(HEARTBEAT_CONNECT_TIMEOUT));
    let conn = builder.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(conn))
}

/// The pause after the `failures`-th failure in a row: 1 s, 2 s, 4 s ... at most `cap`.
fn backoff(failures: u32, cap: Duration) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(20)).min(cap)
}

/// An error and its causes on one line (hyper's client errors say little on their own).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl WebApp {
    async fn push_heartbeat(self: &Arc<Self>, hb: &Heartbeat) -> std::result::Result<(), String> {
        let st = self
            .status_async()
            .await
            .ok_or("the status document could not be built")?;
        let body = serde_json::to_vec(&st).map_err(|e| e.to_string())?;
        let mut req = Request::post(hb.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("tiergate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        if let Some(a) = &hb.auth {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        let limit = hb.interval.min(HEARTBEAT_TIMEOUT);
        let exchange = async {
            let resp = hb.client.request(req).await.map_err(|e| chain(&e))?;
            let code = resp.status();
            // Read the (small) answer so the connection can be reused.
            let _ = Limited::new(resp.into_body(), MAX_BODY).collect().await;
            if code.is_success() {
                Ok(())
            } else {
                Err(format!("the receiver answered {code}"))
            }
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
        }
    }
}

async fn heartbeat_loop(app: Arc<WebApp>, mut stop: watch::Receiver<bool>) {
    let Some(hb) = &app.heartbeat else {
        return;
    };
    tracing::info!(
        "heartbeat: pushing the status to {} every {} s",
        hb.shown,
        hb.interval.as_secs()
    );
    let mut failures: u32 = 0;
    loop {
        let wait = match app.push_heartbeat(hb).await {
            Ok(()) => {
                if failures > 0 {
                    let m = format!(
                        "heartbeat to {} delivered again after {failures} failed attempt(s)",
                        hb.shown
                    );
                    tracing::info!("{m}");
                    crate::events::record("info", m);
                }
                failures = 0;
                hb.interval
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    let m = format!("heartbeat to {} failed: {e}", hb.shown);
                    tracing::warn!("{m}; retrying with backoff");
                    crate::events::record("warning", m);
                } else {
                    tracing::debug!(failures, "heartbeat to {} failed: {e}", hb.shown);
                }
                backoff(failures, hb.interval)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_bodies_are_checked_and_named() {
        let b: Bandwidth = serde_json::from_str(
            r#"{"limit": "20MiB", "schedule": [{"days":"mon-fri","from":"08:00","to":"18:00","limit":1048576}]}"#,
        )
        .unwrap();
        assert_eq!(b.limit, Some(20 << 20));
        assert_eq!(b.schedule[0].limit, 1 << 20);
        b.schedule().unwrap();
        assert_eq!(b.describe(), "20 MiB/s outside 1 schedule rule(s)");
        let b: Bandwidth = serde_json::from_str(r#"{"limit": null}"#).unwrap();
        assert_eq!(b.schedule().unwrap().limit_now(), None);
        assert_eq!(b.describe(), "unlimited");

        for (body, needle) in [
            (r#"{"schedule": []}"#, "missing field `limit`"),
            (r#"{"limit": 1, "rate": 2}"#, "unknown field `rate`"),
            (r#"{"limit": "20Mb"}"#, "bits"),
            (r#"{"limit": -5}"#, "negative"),
            (
                r#"{"limit": 1, "schedule": [{"days":"mon","from":"08:00","to":"18:00"}]}"#,
                "missing field `limit`",
            ),
            ("{\"limit\": 1", "EOF"),
        ] {
            let err = serde_json::from_str::<Bandwidth>(body).unwrap_err();
            assert!(err.to_string().contains(needle), "{body}: {err}");
        }
        for (body, needle) in [
            (r#"{"limit": 0}"#, "use null for unlimited"),
            (
                r#"{"limit": null, "schedule": [{"days":"mun","from":"08:00","to":"18:00","limit":1}]}"#,
                "schedule[0].days: unknown day \"mun\"",
            ),
            (
                r#"{"limit": null, "schedule": [{"days":"mon","from":"8h","to":"18:00","limit":1}]}"#,
                "schedule[0].from",
            ),
        ] {
            let b: Bandwidth = serde_json::from_str(body).unwrap();
            let err = message(&b.schedule().unwrap_err());
            assert!(err.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn managed_settings_round_trip_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANAGED_FILE);
        assert_eq!(Managed::load(&path).unwrap(), Managed::default());
        let m = Managed {
            bandwidth: Some(Bandwidth {
                limit: Some(5 << 20),
                schedule: vec![Rule {
                    days: "sat,sun".into(),
                    from: "22:00".into(),
                    to: "06:00".into(),
                    limit: 0,
                }],
            }),
            cache_max_bytes: Some(1 << 30),
            quota_bytes: Some(5 << 40),
            ..Managed::default()
        };
        m.save(&path).unwrap();
        assert_eq!(Managed::load(&path).unwrap(), m);
        assert!(!dir.path().join("managed.tmp").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            summary(&m),
            "upload bandwidth 5 MiB/s outside 1 schedule rule(s), cache size 1 GiB, quota 5 TiB"
        );

        for (text, needle) in [
            ("{\"version\": 1, \"cache_max_bytes\": ", "EOF"),
            ("{\"version\": 2}", "version 2"),
            ("{\"version\": 1, \"colour\": 1}", "colour"),
            (
                "{\"version\": 1, \"bandwidth\": {\"limit\": 0}}",
                "bandwidth: limit = 0",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Managed::load(&path).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(
                err.contains("managed.json") && err.contains("delete it"),
                "{err}"
            );
        }
    }

    #[test]
    fn bearer_tokens_are_parsed_from_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn heartbeat_backoff_doubles_up_to_the_interval() {
        let cap = Duration::from_secs(60);
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n, cap).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(1000, cap), cap);
        assert_eq!(backoff(3, Duration::from_secs(5)).as_secs(), 4);
        assert_eq!(backoff(4, Duration::from_secs(5)).as_secs(), 5);
    }

    fn sample_status(limit: Option<u64>) -> Status {
        use crate::status::*;
        Status {
            schema: SCHEMA_VERSION,
            version: "1.2.3-\"x\"",
            uptime_s: 42,
            now_unix: 1_700_000_000,
            volume: VolumeInfo {
                id: "v".into(),
                path: "/p".into(),
            },
            offsite: Offsite {
                consistency_point: 7,
                journal_position: 9,
                pending_changes: 2,
                consistency_point_unix: 1,
                oldest_pending_s: 3,
                recoverable: true,
            },
            cache: Cache {
                max_bytes: 100,
                used_bytes: 50,
                used_percent: 50.0,
                dirty_bytes: 10,
                dirty_percent: 10.0,
                evicted_bytes: 5,
                throttled_writes: 1,
            },
            upload: Upload {
                queued_bytes: 10,
                queued_packs: 1,
                uploading_packs: 0,
                uploaded_bytes: 1 << 40,
                uploaded_packs: 4,
                put_requests: 6,
                failures: 2,
                rate_bps: 0.0,
                average_rate_bps: 0.0,
                limit_bps: limit,
                metadata_bytes: 0,
                metadata_segments: 0,
                checkpoints: 0,
            },
            fetch: Fetch {
                fetched_bytes: 3,
                get_requests: 1,
                rate_bps: 0.0,
            },
            space: Space {
                logical_bytes: 300,
                unique_bytes: 200,
                stored_bytes: 100,
                dedup_ratio: 1.5,
                compression_ratio: 2.0,
                metadata_bytes: 8,
                quota_bytes: None,
                quota_used_bytes: None,
                quota_used_percent: None,
                quota_warn_percent: 90,
                quota_warning: false,
                recycle_files: 0,
                recycle_logical_bytes: 0,
                recycle_stored_bytes: 0,
            },
            store: Store {
                description: "local".into(),
                offsite: true,
                same_disk: false,
                healthy: false,
                last_error: Some("boom".into()),
                last_error_unix: Some(1),
                lease_held_by: None,
            },
            frontends: Frontends {
                open_handles: 2,
                webdav_requests: 11,
            },
            gc: Gc {
                last_run_unix: None,
                last_seconds: None,
                last_bytes_dropped: 0,
                last_bytes_rewritten: 0,
                last_objects_deleted: 0,
                packs_waiting: 1,
                packs_waiting_retention: 0,
                retention_until_unix: None,
                garbage_bytes: 5,
            },
            snapshots: crate::volume::SnapshotStatus {
                count: 2,
                newest_name: Some("auto-2023-11-14_220000Z".into()),
                newest_unix: Some(1_700_000_000),
                oldest_unix: Some(1_699_900_000),
                every_minutes: 60,
                last_error: None,
            },
            overrides: Vec::new(),
        }
    }

    #[test]
    fn metrics_follow_the_exposition_format() {
        let text = metrics_text(&sample_status(Some(1 << 20)));
        let mut typed = std::collections::HashMap::new();
        let mut samples = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(kind == "gauge" || kind == "counter", "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
                assert!(typed.insert(name.to_string(), kind).is_none(), "{line}");
            } else if !line.starts_with("# HELP ") {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let name = series.split('{').next().unwrap();
                assert!(typed.contains_key(name), "sample before its TYPE: {line}");
                samples.insert(series.to_string(), value.parse::<f64>().unwrap());
            }
        }
        assert_eq!(
            samples["tiergate_upload_uploaded_bytes_total"],
            (1u64 << 40) as f64
        );
        assert_eq!(samples["tiergate_upload_limit_bytes_per_second"], 1048576.0);
        assert_eq!(samples["tiergate_dedup_ratio"], 1.5);
        assert_eq!(samples["tiergate_store_healthy"], 0.0);
        assert_eq!(samples["tiergate_store_offsite"], 1.0);
        assert_eq!(samples["tiergate_settings_overridden"], 0.0);
        assert_eq!(samples["tiergate_offsite_recoverable"], 1.0);
        assert_eq!(
            samples["tiergate_build_info{version=\"1.2.3-\\\"x\\\"\"}"],
            1.0
        );
        assert_eq!(typed.len(), 39);
        assert_eq!(samples["tiergate_quota_bytes"], 0.0);
        assert_eq!(samples["tiergate_gc_packs_waiting"], 1.0);
        assert_eq!(samples["tiergate_gc_packs_waiting_retention"], 0.0);
        assert_eq!(samples["tiergate_snapshots"], 2.0);
        assert_eq!(
            samples["tiergate_snapshot_newest_timestamp_seconds"],
            1_700_000_000.0
        );
        // No snapshot: the newest's time is 0 (alerts on its age then fire).
        let mut s = sample_status(None);
        s.snapshots = Default::default();
        let text = metrics_text(&s);
        assert!(text.contains("\ntiergate_snapshots 0\n"));
        assert!(text.contains("\ntiergate_snapshot_newest_timestamp_seconds 0\n"));
        // Unlimited: the family is declared, without a sample.
        let text = metrics_text(&sample_status(None));
        assert!(text.contains("# TYPE tiergate_upload_limit_bytes_per_second gauge"));
        assert!(!text.contains("\ntiergate_upload_limit_bytes_per_second "));
        assert_eq!(Num::F(f64::NAN).to_string(), "NaN");
        assert_eq!(Num::F(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Num::F(0.25).to_string(), "0.25");
    }

    #[test]
    fn readiness_names_the_reason() {
        let mut s = sample_status(None);
        assert!(not_ready(&s)
            .unwrap()
            .contains("the store is failing: boom"));
        s.store.lease_held_by = Some("appliance-b on host-b".into());
        assert!(not_ready(&s)
            .unwrap()
            .contains("lease is held by appliance-b"));
        s.store.lease_held_by = None;
        s.store.healthy = true;
        assert_eq!(not_ready(&s), None);
    }

    // ---------------------------------------------------------------- in-process server

    use crate::tiering::{Tiering, TieringOptions};
    use crate::volume::{Volume, VolumeOptions};
    use std::io::{Read, Write};

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    /// A volume, tiering on a local directory store, and the status server on port 0.
    struct Served {
        _dir: tempfile::TempDir,
        vol_dir: PathBuf,
        vol: Arc<Volume>,
        tiering: Arc<Tiering>,
        app: Arc<WebApp>,
        addr: SocketAddr,
        stop: watch::Sender<bool>,
    }

    fn serve(web: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let text = format!("[volume]\npath = \"vol\"\n[web]\nlisten = \"127.0.0.1:0\"\n{web}\n");
        std::fs::write(dir.path().join("c.toml"), text).unwrap();
        let cfg = crate::config::Config::load(&dir.path().join("c.toml")).unwrap();
        let vol_dir = cfg.volume.path.clone();
        Volume::create(
            &vol_dir,
            "pw",
            cfg.chunking.params(),
            crate::crypto::KdfParams::for_tests(),
        )
        .unwrap();
        let vol = Volume::open(&vol_dir, "pw", VolumeOptions::default()).unwrap();
        let backend = Arc::new(crate::backend::local::LocalDir::open(&cfg.backend_dir()).unwrap());
        let opts = TieringOptions::from_config(&cfg).unwrap();
        let tiering = Tiering::start(vol.clone(), backend, opts, false).unwrap();
        let reporter = Reporter::new(vol.clone(), tiering.clone());
        let app = WebApp::new(reporter, &cfg.web, &vol_dir).unwrap();
        let rt = tiering.handle();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(cfg.web.listen))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        rt.spawn(run(listener, app.clone(), stopped));
        spawn_background(&app, &rt);
        Served {
            _dir: dir,
            vol_dir,
            vol,
            tiering,
            app,
            addr,
            stop,
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = self.stop.send(true);
            self.app.stop();
            let _ = self.vol.shutdown();
            self.tiering.stop();
        }
    }

    struct Answer {
        status: u16,
        head: String,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then_some(v.trim())
            })
        }
        fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
        }
    }

    fn call(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>, body: &str) -> Answer {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(t) = auth {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        let _ = s.write_all(req.as_bytes());
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        Answer {
            status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    #[test]
    fn reading_endpoints_and_their_methods() {
        let s = serve("");
        let a = call(s.addr, "GET", "/api/v1/status", None, "");
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-type"), Some("application/json"));
        assert_eq!(a.header("cache-control"), Some("no-store"));
        let j = a.json();
        assert_eq!(j["schema"], status::SCHEMA_VERSION);
        assert_eq!(j["volume"]["path"], s.vol_dir.display().to_string());
        assert!(j["space"]["quota_bytes"].is_null());

        let a = call(s.addr, "GET", "/", None, "");
        assert_eq!(a.status, 200);
        assert_eq!(a.body, STATUS_PAGE);
        assert!(a.header("content-type").unwrap().starts_with("text/html"));
        let a = call(s.addr, "HEAD", "/metrics", None, "");
        assert_eq!(a.status, 200);
        assert!(a.body.is_empty());
        assert!(a.header("content-length").unwrap().parse::<u64>().unwrap() > 1000);
        let a = call(s.addr, "GET", "/metrics", None, "");
        assert!(
            a.body.contains("\ntiergate_store_healthy 1\n"),
            "{}",
            a.body
        );
        assert_eq!(
            a.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(call(s.addr, "GET", "/api/v1/history", None, "")
            .json()
            .is_array());
        assert!(call(s.addr, "GET", "/api/v1/events", None, "")
            .json()
            .is_array());
        let a = call(s.addr, "GET", "/healthz", None, "");
        assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));
        let a = call(s.addr, "GET", "/readyz", None, "");
        assert_eq!((a.status, a.body.as_str()), (200, "ready\n"));

        let a = call(s.addr, "POST", "/api/v1/status", None, "{}");
        assert_eq!(a.status, 405);
        assert_eq!(a.header("allow"), Some("GET, HEAD"));
        assert_eq!(call(s.addr, "DELETE", "/healthz", None, "").status, 405);
        assert_eq!(call(s.addr, "GET", "/nope", None, "").status, 404);
        let a = call(s.addr, "GET", "/api/v2/status", None, "");
        assert_eq!(a.status, 404);
        assert!(a.json()["error"]
            .as_str()
            .unwrap()
            .contains("/api/v2/status"));
        // No token file: the management API is off, whatever the request.
        for (m, p) in [
            ("GET", "/api/v1/manage/status"),
            ("PUT", "/api/v1/manage/bandwidth"),
        ] {
            let a = call(s.addr, m, p, Some(TOKEN), "{\"limit\": 1}");
            assert_eq!(a.status, 404, "{m} {p}");
            assert!(
                a.body.contains("management API is not enabled"),
                "{}",
                a.body
            );
        }
    }

    #[test]
    fn management_changes_need_the_token_and_survive_a_restart() {
        let s = serve("management_token_file = \"token\"");
        let limiter = || s.tiering.limiter().current_limit();
        let managed = s.vol_dir.join(MANAGED_FILE);
        let put = |tok: Option<&str>, body: &str| {
            call(s.addr, "PUT", "/api/v1/manage/bandwidth", tok, body)
        };
        let body = r#"{"limit": 2097152}"#;
        for tok in [None, Some("wrong"), Some(&TOKEN[1..])] {
            let a = put(tok, body);
            assert_eq!(a.status, 401, "{tok:?}");
            assert_eq!(
                a.header("www-authenticate"),
                Some("Bearer realm=\"tiergate\"")
            );
        }
        // Even for paths or methods that do not exist.
        assert_eq!(
            call(s.addr, "GET", "/api/v1/manage/nope", None, "").status,
            401
        );
        assert_eq!(limiter(), None);
        assert!(!managed.exists());

        let a = put(Some(TOKEN), body);
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["limit_now_bps"], 2 << 20);
        assert_eq!(limiter(), Some(2 << 20));
        let st = call(s.addr, "GET", "/api/v1/status", None, "").json();
        assert_eq!(st["upload"]["limit_bps"], 2 << 20);

        for (body, code, needle) in [
            (r#"{"limit": 0}"#, 400, "use null"),
            (
                r#"{"limit": 1, "schedule": [{"days":"mun","from":"08:00","to":"18:00","limit":1}]}"#,
                400,
                "schedule[0].days",
            ),
            (r#"{"limit": 1"#, 400, "malformed JSON body"),
            ("", 400, "malformed JSON body"),
            (r#"{"schedule": []}"#, 400, "missing field `limit`"),
        ] {
            let a = put(Some(TOKEN), body);
            assert_eq!(a.status, code, "{body}: {}", a.body);
            assert!(
                a.json()["error"].as_str().unwrap().contains(needle),
                "{}",
                a.body
            );
        }
        let big = format!("{{\"limit\": 1, \"x\": \"{}\"}}", "y".repeat(70 << 10));
        assert_eq!(put(Some(TOKEN), &big).status, 413);
        assert_eq!(limiter(), Some(2 << 20), "bad requests changed nothing");
        let a = call(
            s.addr,
            "POST",
            "/api/v1/manage/bandwidth",
            Some(TOKEN),
            body,
        );
        assert_eq!((a.status, a.header("allow")), (405, Some("PUT")));

        let cache = |body: &str| call(s.addr, "PUT", "/api/v1/manage/cache", Some(TOKEN), body);
        let a = cache(r#"{"max_bytes": "63MiB"}"#);
        assert_eq!(a.status, 400);
        assert!(a.body.contains("below the minimum of 64 MiB"), "{}", a.body);
        assert_eq!(cache(r#"{"max_bytes": "512MiB"}"#).status, 200);
        assert_eq!(s.tiering.status().cache_max, 512 << 20);

        let quota = |body: &str| call(s.addr, "PUT", "/api/v1/manage/quota", Some(TOKEN), body);
        assert_eq!(quota(r#"{"bytes": 0}"#).status, 400);
        let a = quota(r#"{"bytes": 1000000}"#);
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["enforced"], true);
        let st = call(s.addr, "GET", "/api/v1/manage/status", Some(TOKEN), "").json();
        assert_eq!(st["status"]["space"]["quota_bytes"], 1_000_000);
        assert_eq!(st["managed"]["quota_in_force"], 1_000_000);
        assert!(st["status"]["space"]["quota_used_percent"].is_number());
        assert_eq!(st["managed"]["cache_max_bytes"], 512 << 20);

        let ev = call(s.addr, "GET", "/api/v1/manage/events", Some(TOKEN), "").json();
        let msgs: Vec<&str> = ev
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap())
            .collect();
        for m in [
            "management API: upload bandwidth set to 2 MiB/s",
            "management API: cache size set to 512 MiB",
            "management API: quota set to 1000000 B",
        ] {
            assert!(msgs.iter().any(|x| x.starts_with(m)), "{m}: {msgs:?}");
        }

        let a = call(
            s.addr,
            "POST",
            "/api/v1/manage/sync",
            Some(TOKEN),
            r#"{"timeout_s": 30}"#,
        );
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["complete"], true);
        let a = call(
            s.addr,
            "POST",
            "/api/v1/manage/sync",
            Some(TOKEN),
            r#"{"timeout_s": -1}"#,
        );
        assert_eq!(a.status, 400);
        let a = call(s.addr, "POST", "/api/v1/manage/verify", Some(TOKEN), "");
        assert_eq!(a.status, 501);
        assert!(a.body.contains("tiergate verify"), "{}", a.body);

        // A new WebApp (as at the next start) re-applies the saved settings.
        s.tiering.limiter().set_schedule(Schedule::unlimited());
        s.tiering.set_cache_max(1 << 30);
        let saved = Managed::load(&managed).unwrap();
        assert_eq!(saved.quota_bytes, Some(1_000_000));
        let cfg = WebConfig::default();
        let app = WebApp::new(s.app.reporter.clone(), &cfg, &s.vol_dir).unwrap();
        assert_eq!(limiter(), Some(2 << 20));
        assert_eq!(s.tiering.status().cache_max, 512 << 20);
        assert_eq!(app.status().space.quota_bytes, Some(1_000_000));
    }

    /// Accepts HTTP requests on 127.0.0.1 and returns their heads and bodies; answers `code`.
    fn receiver(code: u16) -> (SocketAddr, std::sync::mpsc::Receiver<(String, String)>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = c.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let t = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((h, b)) = t.split_once("\r\n\r\n") {
                        let len: usize = h
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if b.len() >= len {
                            break (h.to_string(), b.to_string());
                        }
                    }
                };
                let _ = c.write_all(
                    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                if tx.send((head, body)).is_err() {
                    return;
                }
            }
        });
        (addr, rx)
    }

    #[test]
    fn heartbeat_posts_the_status_with_the_token() {
        let s = serve("");
        let (ok, got) = receiver(204);
        let (fail, _) = receiver(500);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hb"), "hb-secret\n").unwrap();
        let hb_cfg = |addr: SocketAddr| WebConfig {
            heartbeat_url: Some(format!("http://{addr}/hb?site=1")),
            heartbeat_token_file: Some(dir.path().join("hb")),
            ..WebConfig::default()
        };
        let app = WebApp::new(s.app.reporter.clone(), &hb_cfg(ok), &s.vol_dir).unwrap();
        let hb = app.heartbeat.as_ref().unwrap();
        assert_eq!(hb.shown, format!("http://{ok}/hb"));
        let rt = s.tiering.handle();
        let a = app.clone();
        rt.block_on(async move { a.push_heartbeat(a.heartbeat.as_ref().unwrap()).await })
            .unwrap();
        let (head, body) = got.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(head.starts_with("POST /hb?site=1 HTTP/1.1"), "{head}");
        assert!(head.contains("authorization: Bearer hb-secret"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(j["schema"], status::SCHEMA_VERSION);

        let app = WebApp::new(s.app.reporter.clone(), &hb_cfg(fail), &s.vol_dir).unwrap();
        let a = app.clone();
        let err = rt
            .block_on(async move { a.push_heartbeat(a.heartbeat.as_ref().unwrap()).await })
            .unwrap_err();
        assert!(err.contains("500"), "{err}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let app = WebApp::new(s.app.reporter.clone(), &hb_cfg(closed), &s.vol_dir).unwrap();
        let a = app.clone();
        let err = rt
            .block_on(async move { a.push_heartbeat(a.heartbeat.as_ref().unwrap()).await })
            .unwrap_err();
        assert!(err.to_lowercase().contains("connect"), "{err}");
    }
}

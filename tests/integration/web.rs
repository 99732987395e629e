//! Tests of the status server against a real `tiergate serve` process: the JSON document and
//! the Prometheus metrics (both checked against docs/STATUS.md, so the document stays honest),
//! health checks, the management API, and the heartbeat push to a receiver in the test.
//!
//! The address comes from the daemon's log line `web status page on http://ADDR/`; every
//! daemon here listens on a free port. One request per connection (`Connection: close`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{random_bytes, TestVolume};

const LOG_LINE: &str = "web status page on http://";
const TOKEN: &str = "tg-test-management-token-0123456789";
const HB_TOKEN: &str = "tg-test-heartbeat-token";

// ------------------------------------------------------------------------ a small client

pub(crate) struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Web {
    addr: SocketAddr,
}

impl Web {
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Resp {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if !body.is_empty() || method == "PUT" || method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        // The server may answer (401, 413) before reading the body and close: not an error.
        let _ = s.write_all(req.as_bytes());
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Resp {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }

    pub(crate) fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None, "")
    }

    pub(crate) fn status(&self) -> Value {
        let r = self.get("/api/v1/status");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    fn events(&self) -> Vec<String> {
        self.get("/api/v1/events")
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The status server of the `nth` start of the daemon (1 = first), from the log, which is
/// appended to across restarts.
pub(crate) fn web(v: &TestVolume, nth: usize) -> Web {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(v.log_path()).unwrap_or_default();
        if let Some(rest) = log.split(LOG_LINE).nth(nth) {
            let addr = rest.split('/').next().unwrap().parse().unwrap();
            return Web { addr };
        }
        assert!(
            Instant::now() < deadline,
            "no status server address in the log:\n{}",
            v.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tiergate(args: &[&str], v: &TestVolume) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(args)
        .arg("--config")
        .arg(&v.config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn write_synced(v: &TestVolume, name: &str, data: &[u8]) {
    let mut f = std::fs::File::create(v.path(name)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

// ------------------------------------------------------------------------ the document

/// The rows of the first table under `## <section>` in docs/STATUS.md: first cell (without
/// backticks) → second cell.
fn documented(section: &str) -> BTreeMap<String, String> {
    let doc = include_str!("../../docs/STATUS.md");
    let start = doc
        .find(&format!("\n## {section}\n"))
        .unwrap_or_else(|| panic!("docs/STATUS.md has no section {section:?}"));
    let body = &doc[start + 1..];
    let body = &body[..body[3..].find("\n## ").map_or(body.len(), |i| i + 3)];
    let mut rows = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        rows.insert(cells[1].trim_matches('`').to_string(), cells[2].to_string());
    }
    assert!(rows.len() > 10, "section {section:?} has too few rows");
    rows
}

/// Leaf fields of a JSON object as dotted paths.
fn leaves(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(x, &p, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn has_type(v: &Value, ty: &str) -> bool {
    let one = |t: &str| match t {
        "integer" => v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "null" => v.is_null(),
        "array" => v.is_array(),
        other => panic!("unknown type {other:?} in docs/STATUS.md"),
    };
    ty.split(" or ").any(one)
}

/// Every documented field is there with its documented type, and nothing undocumented is.
fn check_schema(status: &Value) {
    let doc = documented("The status document");
    let mut got = BTreeMap::new();
    leaves(status, "", &mut got);
    for (field, ty) in &doc {
        let v = got
            .get(field)
            .unwrap_or_else(|| panic!("documented field {field} missing: {status:#}"));
        assert!(has_type(v, ty), "{field} = {v} is not {ty}");
    }
    let extra: Vec<&String> = got.keys().filter(|k| !doc.contains_key(*k)).collect();
    assert!(extra.is_empty(), "undocumented fields {extra:?}");
}

// ------------------------------------------------------------------------ metrics

struct Metrics {
    /// Family name → type.
    types: HashMap<String, String>,
    /// Sample (name and labels, as written) → value.
    samples: HashMap<String, f64>,
}

fn parse_value(s: &str) -> f64 {
    match s {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s
            .parse()
            .unwrap_or_else(|_| panic!("sample value {s:?} is not a number")),
    }
}

/// The sample's metric name and the rest (labels, value), checking label syntax.
fn split_sample(line: &str) -> (&str, &str) {
    let end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit()),
        "bad metric name in {line:?}"
    );
    let mut rest = &line[end..];
    if let Some(labels) = rest.strip_prefix('{') {
        // name="value" pairs; values escape \ " and newline.
        let mut chars = labels.char_indices();
        let mut in_value = false;
        let mut close = None;
        while let Some((i, c)) = chars.next() {
            match (in_value, c) {
                (true, '\\') => {
                    chars.next();
                }
                (_, '"') => in_value = !in_value,
                (false, '}') => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let close = close.unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
        rest = &labels[close + 1..];
    }
    (name, rest)
}

/// Parses the text exposition format 0.0.4, asserting its rules: each family's HELP and TYPE
/// come once and before its samples, every sample belongs to a typed family, counters end in
/// `_total`, values are numbers.
fn parse_metrics(text: &str) -> Metrics {
    let mut types = HashMap::new();
    let mut helped = HashSet::new();
    let mut sampled = HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP text");
            assert!(!help.trim().is_empty(), "{line}");
            assert!(helped.insert(name.to_string()), "second HELP: {line}");
            assert!(!sampled.contains(name), "HELP after samples: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                "{line}"
            );
            assert!(
                types.insert(name.to_string(), ty.to_string()).is_none(),
                "second TYPE: {line}"
            );
            assert!(!sampled.contains(name), "TYPE after samples: {line}");
            if ty == "counter" {
                assert!(name.ends_with("_total"), "counter not named _total: {line}");
            } else {
                assert!(!name.ends_with("_total"), "{ty} named _total: {line}");
            }
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let (name, rest) = split_sample(line);
            assert!(types.contains_key(name), "sample without TYPE: {line}");
            assert!(helped.contains(name), "sample without HELP: {line}");
            sampled.insert(name.to_string());
            let mut f = rest.split_whitespace();
            let value = parse_value(f.next().expect("a value"));
            if let Some(ts) = f.next() {
                ts.parse::<i64>().expect("a timestamp");
            }
            let series = &line[..line.len() - rest.len()];
            assert!(
                samples.insert(series.to_string(), value).is_none(),
                "duplicate series {series}"
            );
        }
    }
    Metrics { types, samples }
}

// ------------------------------------------------------------------------ tests

/// The status document has every documented field with its type, its figures follow what
/// was written, and after `tiergate sync` everything is off-site; /metrics parses and agrees
/// with it; health checks, methods, unknown paths, and no management API without a token.
#[test]
fn web_status_document_metrics_and_health() {
    let mut v = TestVolume::new("[web]\nlisten = \"127.0.0.1:0\"");
    v.start();
    let w = web(&v, 1);

    let data = random_bytes(600, 4 << 20);
    write_synced(&v, "a.bin", &data);
    write_synced(&v, "copy-of-a.bin", &data);
    let o = tiergate(&["sync", "--timeout", "120"], &v);
    assert!(
        o.status.success(),
        "sync: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    let s = w.status();
    check_schema(&s);
    assert_eq!(s["schema"], 1);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["volume"]["path"], v.vol_dir().display().to_string());
    // The default store is a directory inside the volume: in the store, but not off-site.
    assert_eq!(s["store"]["offsite"], false, "{}", s["store"]);
    assert_eq!(s["store"]["same_disk"], true, "{}", s["store"]);
    assert_eq!(s["overrides"], serde_json::json!([]));
    let sp = &s["space"];
    assert!(
        sp["logical_bytes"].as_u64().unwrap() >= 2 * data.len() as u64,
        "{sp}"
    );
    assert!(
        sp["unique_bytes"].as_u64().unwrap() >= data.len() as u64,
        "{sp}"
    );
    assert!(
        sp["dedup_ratio"].as_f64().unwrap() > 1.5,
        "the copy deduplicates: {sp}"
    );
    assert!(sp["quota_bytes"].is_null());
    let off = &s["offsite"];
    assert_eq!(off["pending_changes"], 0, "after sync: {off}");
    assert_eq!(off["recoverable"], true, "{off}");
    assert!(off["consistency_point"].as_u64().unwrap() > 0);
    assert_eq!(off["consistency_point"], off["journal_position"]);
    assert_eq!(off["oldest_pending_s"], 0);
    let up = &s["upload"];
    assert!(up["uploaded_packs"].as_u64().unwrap() >= 1, "{up}");
    assert!(
        up["uploaded_bytes"].as_u64().unwrap() >= data.len() as u64,
        "{up}"
    );
    assert_eq!(up["queued_packs"], 0, "{up}");
    assert!(up["limit_bps"].is_null());
    assert_eq!(s["store"]["healthy"], true);
    let r = w.get("/api/v1/status");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // Metrics: the format's rules, the documented families, and the JSON's figures.
    let r = w.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.header("content-type")
    );
    let m = parse_metrics(&r.text());
    let doc = documented("Metrics");
    let typed: BTreeMap<String, String> = m.types.clone().into_iter().collect();
    assert_eq!(typed, doc, "metric families and types vs docs/STATUS.md");
    let s = w.status();
    for (metric, field) in [
        ("tiergate_space_logical_bytes", "/space/logical_bytes"),
        ("tiergate_space_unique_bytes", "/space/unique_bytes"),
        ("tiergate_cache_max_bytes", "/cache/max_bytes"),
        (
            "tiergate_upload_uploaded_packs_total",
            "/upload/uploaded_packs",
        ),
        (
            "tiergate_upload_uploaded_bytes_total",
            "/upload/uploaded_bytes",
        ),
        (
            "tiergate_offsite_consistency_point",
            "/offsite/consistency_point",
        ),
    ] {
        assert_eq!(
            m.samples[metric],
            s.pointer(field).unwrap().as_u64().unwrap() as f64,
            "{metric} vs {field}"
        );
    }
    assert_eq!(m.samples["tiergate_offsite_recoverable"], 1.0);
    assert_eq!(m.samples["tiergate_store_healthy"], 1.0);
    assert!(
        !m.samples
            .contains_key("tiergate_upload_limit_bytes_per_second"),
        "no limit sample while unlimited"
    );
    let info = format!(
        "tiergate_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(m.samples.get(&info), Some(&1.0), "{:?}", m.samples.keys());

    // The page, history, events, health.
    let r = w.get("/");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().to_lowercase().contains("<html"));
    assert!(w.get("/api/v1/history").json().is_array());
    assert!(w.get("/api/v1/events").json().is_array());
    let r = w.get("/healthz");
    assert_eq!((r.status, r.text().trim()), (200, "ok"));
    let r = w.get("/readyz");
    assert_eq!(r.status, 200, "{}", r.text());

    // HEAD like GET without a body; wrong methods 405 with Allow; unknown paths 404.
    let r = w.call("HEAD", "/api/v1/status", None, "");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert!(r.header("content-length").is_some());
    for path in ["/", "/api/v1/status", "/metrics", "/healthz", "/readyz"] {
        let r = w.call("POST", path, None, "{}");
        assert_eq!(r.status, 405, "{path}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{path}");
    }
    assert_eq!(w.get("/nothing-here").status, 404);
    assert_eq!(w.get("/api/v1/nothing").status, 404);

    // No management_token_file: the management API does not exist.
    for (method, path) in [
        ("GET", "/api/v1/manage/status"),
        ("PUT", "/api/v1/manage/bandwidth"),
        ("POST", "/api/v1/manage/sync"),
    ] {
        let r = w.call(method, path, Some(TOKEN), "{\"limit\": 1}");
        assert_eq!(r.status, 404, "{method} {path}");
        assert!(
            r.error().contains("management API is not enabled"),
            "{}",
            r.text()
        );
    }
    assert!(!v.vol_dir().join("managed.json").exists());
    v.stop();
}

/// The settings the management API may change, as the status reports them.
fn settings(s: &Value) -> (Value, Value, Value) {
    (
        s["upload"]["limit_bps"].clone(),
        s["cache"]["max_bytes"].clone(),
        s["space"]["quota_bytes"].clone(),
    )
}

/// Without the right token nothing changes; with it bandwidth, cache and quota change, show in
/// the status and survive a restart; bad input is refused with the reason; sync works.
#[test]
fn web_management_api_needs_the_token_and_changes_survive_a_restart() {
    let mut v =
        TestVolume::new("[web]\nlisten = \"127.0.0.1:0\"\nmanagement_token_file = \"mgmt-token\"");
    std::fs::write(v.dir.path().join("mgmt-token"), format!("{TOKEN}\n")).unwrap();
    v.start();
    let w = web(&v, 1);
    let managed = v.vol_dir().join("managed.json");

    let before = settings(&w.status());
    assert!(before.0.is_null() && before.2.is_null(), "{before:?}");
    let bandwidth = r#"{"limit": "3MiB", "schedule": [
        {"days": "daily", "from": "00:00", "to": "24:00", "limit": 4194304}]}"#;
    let changes = [
        ("PUT", "/api/v1/manage/bandwidth", bandwidth),
        ("PUT", "/api/v1/manage/cache", r#"{"max_bytes": 268435456}"#),
        ("PUT", "/api/v1/manage/quota", r#"{"bytes": 1073741824}"#),
        ("POST", "/api/v1/manage/sync", r#"{"timeout_s": 1}"#),
        ("GET", "/api/v1/manage/status", ""),
        ("GET", "/api/v1/manage/events", ""),
        ("GET", "/api/v1/manage/no-such-thing", ""),
    ];
    for token in [
        None,
        Some("wrong-token-wrong-token"),
        Some(&TOKEN[..TOKEN.len() - 1]),
    ] {
        for (method, path, body) in changes {
            let r = w.call(method, path, token, body);
            assert_eq!(
                r.status,
                401,
                "{method} {path} with {token:?}: {}",
                r.text()
            );
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Bearer")),
                "{method} {path}"
            );
        }
    }
    assert_eq!(
        settings(&w.status()),
        before,
        "refused requests changed nothing"
    );
    assert!(!managed.exists());

    // Bandwidth: the schedule's all-day rule is in force.
    let r = w.call("PUT", "/api/v1/manage/bandwidth", Some(TOKEN), bandwidth);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(w.status()["upload"]["limit_bps"], 4 << 20);
    let m = parse_metrics(&w.get("/metrics").text());
    assert_eq!(
        m.samples["tiergate_upload_limit_bytes_per_second"],
        (4 << 20) as f64
    );
    for (body, needle) in [
        (
            r#"{"limit": null, "schedule": [{"days": "mon", "from": "25:00", "to": "18:00", "limit": 1}]}"#,
            "schedule[0].from",
        ),
        (
            r#"{"limit": null, "schedule": [{"days": "someday", "from": "08:00", "to": "18:00", "limit": 1}]}"#,
            "schedule[0].days",
        ),
        (r#"{"limit": 0}"#, "null for unlimited"),
        (r#"{"schedule": []}"#, "limit"),
        (r#"{"limit": 5, "burst": 1}"#, "burst"),
        (r#"{"limit": 5"#, "JSON"),
        ("not json", "JSON"),
    ] {
        let r = w.call("PUT", "/api/v1/manage/bandwidth", Some(TOKEN), body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.error().contains(needle), "{body}: {}", r.text());
    }
    let huge = format!("{{\"limit\": 1, \"pad\": \"{}\"}}", "x".repeat(80 << 10));
    assert_eq!(
        w.call("PUT", "/api/v1/manage/bandwidth", Some(TOKEN), &huge)
            .status,
        413
    );
    assert_eq!(
        w.status()["upload"]["limit_bps"],
        4 << 20,
        "bad input changed nothing"
    );
    let r = w.call("GET", "/api/v1/manage/bandwidth", Some(TOKEN), "");
    assert_eq!((r.status, r.header("allow")), (405, Some("PUT")));

    // Cache size and quota.
    let r = w.call(
        "PUT",
        "/api/v1/manage/cache",
        Some(TOKEN),
        r#"{"max_bytes": 1048576}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("64 MiB"), "{}", r.text());
    let r = w.call(
        "PUT",
        "/api/v1/manage/cache",
        Some(TOKEN),
        r#"{"max_bytes": 268435456}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(w.status()["cache"]["max_bytes"], 256 << 20);
    let r = w.call(
        "PUT",
        "/api/v1/manage/quota",
        Some(TOKEN),
        r#"{"bytes": 1073741824}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["enforced"], true);
    let s = w.status();
    assert_eq!(s["space"]["quota_bytes"], 1 << 30);
    assert!(s["space"]["quota_used_percent"].is_number());

    // Sync, management status and events.
    write_synced(&v, "f.bin", &random_bytes(601, 3 << 20));
    let r = w.call(
        "POST",
        "/api/v1/manage/sync",
        Some(TOKEN),
        r#"{"timeout_s": 120}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let rep = r.json();
    assert_eq!(rep["complete"], true);
    assert!(rep["bytes"].as_u64().unwrap() > 0, "{rep}");
    assert_eq!(w.status()["offsite"]["pending_changes"], 0);
    let r = w.call("GET", "/api/v1/manage/status", Some(TOKEN), "");
    assert_eq!(r.status, 200);
    let ms = r.json();
    assert_eq!(ms["managed"]["cache_max_bytes"], 256 << 20);
    assert_eq!(ms["managed"]["bandwidth"]["schedule"][0]["days"], "daily");
    assert_eq!(ms["status"]["space"]["quota_bytes"], 1 << 30);
    let r = w.call("GET", "/api/v1/manage/events", Some(TOKEN), "");
    let events: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    for needle in ["upload bandwidth set", "cache size set", "quota set"] {
        assert!(
            events.iter().any(|e| e.contains(needle)),
            "{needle}: {events:?}"
        );
    }
    let r = w.call("POST", "/api/v1/manage/verify", Some(TOKEN), "");
    assert!(
        r.status == 501 && r.error().contains("tiergate verify") || r.status == 200,
        "{} {}",
        r.status,
        r.text()
    );

    // A restart keeps every change (managed.json overrides the config file).
    assert!(managed.exists());
    v.stop();
    v.start();
    let w = web(&v, 2);
    let s = w.status();
    assert_eq!(s["upload"]["limit_bps"], 4 << 20);
    assert_eq!(s["cache"]["max_bytes"], 256 << 20);
    assert_eq!(s["space"]["quota_bytes"], 1 << 30);
    // Each override is shown with the config file's value it replaces.
    let overrides: BTreeMap<String, Value> = s["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["field"].as_str().unwrap().to_string(), o.clone()))
        .collect();
    assert_eq!(overrides.len(), 3, "{overrides:?}");
    let quota = &overrides["space.quota_bytes"];
    assert_eq!(quota["value"], "1 GiB", "{quota}");
    assert_eq!(quota["config_value"], "no quota", "{quota}");
    assert!(
        quota["source"].as_str().unwrap().contains("managed.json"),
        "{quota}"
    );
    assert_eq!(
        overrides["upload.limit_bps"]["config_value"], "unlimited",
        "{overrides:?}"
    );
    assert_eq!(overrides["cache.max_bytes"]["value"], "256 MiB");
    // `tiergate status` shows them next to the values, and that the store is not off-site.
    let o = tiergate(&["status"], &v);
    let shown = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{shown}");
    for needle in [
        "1024.0 MiB [set through the management API (",
        "managed.json); the config file says no quota]",
        "limit 4.0 MiB/s [set through the management API",
        "the config file says unlimited]",
        "(a directory on this appliance's own disk: NOT off-site)",
    ] {
        assert!(shown.contains(needle), "{needle:?} not in:\n{shown}");
    }
    assert!(
        w.get("/metrics")
            .text()
            .contains("\ntiergate_settings_overridden 3\n"),
        "metrics"
    );
    assert!(
        w.events().iter().any(|e| e.contains("management API")),
        "{:?}",
        w.events()
    );
    // Back to unlimited.
    let r = w.call(
        "PUT",
        "/api/v1/manage/bandwidth",
        Some(TOKEN),
        r#"{"limit": null}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(w.status()["upload"]["limit_bps"].is_null());
    v.stop();
}

/// One request the receiver got: when, its head, its body.
type Push = (Instant, String, Vec<u8>);

/// A heartbeat receiver on a fixed local port: records each request's head and body, answers
/// 204. Stopping it closes the port (pushes then fail to connect).
struct Receiver {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(addr: SocketAddr, tx: mpsc::Sender<Push>) -> Receiver {
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        if let Some((head, body)) = serve_one(c) {
                            let _ = tx.send((Instant::now(), head, body));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Receiver {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
    }
}

fn serve_one(mut c: TcpStream) -> Option<(String, Vec<u8>)> {
    c.set_nonblocking(false).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = c.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..split]).into_owned();
        let len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.trim().parse().unwrap());
        if buf.len() >= split + 4 + len {
            let body = buf[split + 4..split + 4 + len].to_vec();
            let _ = c.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            return Some((head, body));
        }
    }
}

/// Checks one heartbeat: a POST of the status document with the bearer token.
fn check_push(head: &str, body: &[u8]) {
    let first = head.lines().next().unwrap();
    assert!(first.starts_with("POST /hb HTTP/1."), "{head}");
    let has = |name: &str, value: &str| {
        head.lines().any(|l| {
            l.split_once(':')
                .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case(name) && v.trim() == value)
        })
    };
    assert!(
        has("authorization", &format!("Bearer {HB_TOKEN}")),
        "{head}"
    );
    assert!(has("content-type", "application/json"), "{head}");
    let s: Value = serde_json::from_slice(body).expect("the pushed body is JSON");
    assert_eq!(s["schema"], 1);
    assert!(
        s["volume"]["id"].is_string() && s["offsite"].is_object(),
        "{s}"
    );
}

/// The status is pushed every interval with the token; while the receiver is gone pushes fail
/// (an event says so), and once it is back they resume.
#[test]
fn web_heartbeat_pushes_and_resumes_after_the_receiver_returns() {
    let (tx, rx) = mpsc::channel();
    let recv = Receiver::start("127.0.0.1:0".parse().unwrap(), tx.clone());
    let port = recv.addr.port();
    let mut v = TestVolume::new(&format!(
        "[web]\nlisten = \"127.0.0.1:0\"\nheartbeat_url = \"http://127.0.0.1:{port}/hb\"\n\
         heartbeat_interval_secs = 5\nheartbeat_token_file = \"hb-token\""
    ));
    std::fs::write(v.dir.path().join("hb-token"), format!("{HB_TOKEN}\n")).unwrap();
    v.start();
    let w = web(&v, 1);

    let mut at = Vec::new();
    for i in 0..2 {
        let (t, head, body) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("heartbeat {i} did not arrive:\n{}", v.log_tail()));
        check_push(&head, &body);
        at.push(t);
    }
    let gap = at[1] - at[0];
    assert!(
        gap >= Duration::from_secs(4),
        "pushes {gap:?} apart with a 5 s interval"
    );

    // Receiver gone: the failure is recorded once the next push fails.
    recv.stop();
    while rx.try_recv().is_ok() {}
    let url = format!("http://127.0.0.1:{port}/hb");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w
        .events()
        .iter()
        .any(|e| e.contains(&format!("heartbeat to {url} failed")))
    {
        assert!(
            Instant::now() < deadline,
            "no failure event: {:?}\n{}",
            w.events(),
            v.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(4));

    // Back on the same port: pushes resume within the backoff (at most the interval).
    let recv = Receiver::start(SocketAddr::from(([127, 0, 0, 1], port)), tx);
    let (_, head, body) = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("heartbeats did not resume:\n{}", v.log_tail()));
    check_push(&head, &body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.events().iter().any(|e| e.contains("delivered again")) {
        assert!(Instant::now() < deadline, "{:?}", w.events());
        std::thread::sleep(Duration::from_millis(100));
    }
    recv.stop();
    v.stop();
}

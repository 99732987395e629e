//! The status page (assets/status.html, served at `GET /` of `[web] listen`) in a real browser.
//!
//! Headless Chromium renders the page of a real daemon while a writer fills the volume and
//! uploads run. Every figure the page shows carries `data-field` (its JSON path: "cache.
//! dirty_bytes" in `/api/v1/status`, "history[3].upload_bps", "events[0].message") and `data-raw`
//! (the JSON value it was drawn from); each is compared with the API fetched right after, allowing
//! what moved in between to differ only in the direction and by the amount the elapsed time
//! allows. The text beside each raw value must say the same in human units. A stand-in server then
//! feeds the same page a changing status, an empty history and finally errors, to check that it
//! refreshes in place, its empty states and its offline banner.
//!
//! Screenshots (phone 390x844, desktop 1280x900) go to target/test-logs/status-page-*.png; the
//! daemon's CPU time and bytes per status refresh are printed for docs/STATUS.md.
//!
//! Needs /usr/bin/chromium (scripts/install-test-deps.sh installs it): without it the test fails.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{random_bytes, wait_timeout, TestVolume};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound on the page's size (bytes of `GET /`): it is fetched on every visit, maybe over a
/// phone's link. The page is about 19 KB; 25 KB leaves room without letting it bloat.
const PAGE_MAX_BYTES: usize = 25_000;
/// Bound on the daemon's CPU time per `GET /api/v1/status` (measured: well under 1 ms).
const CPU_MS_PER_STATUS_MAX: f64 = 20.0;
const MIB: u64 = 1 << 20;
const PACK_BYTES: u64 = 4 * MIB;
/// Upload limit of the test volume, slower than the writer so that a queue builds up.
const LIMIT_BPS: u64 = 8 * MIB;
const WRITER_BPS: u64 = 10 * MIB;
const FILE_BYTES: usize = 2 << 20;
/// Generous rates for the counters with no tighter bound: what moved between the page's
/// snapshot and the API's may differ by at most this much per second.
const ANY_BYTES_PER_S: f64 = 1024.0 * 1024.0 * 1024.0;
const ANY_COUNT_PER_S: f64 = 10_000.0;

// ------------------------------------------------------------------------------ HTTP client

struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
    fn json(&self) -> Value {
        assert_eq!(self.status, 200, "{}", self.head);
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// One `GET` on its own connection (`Connection: close`), the body de-chunked if need be.
fn http_get(addr: SocketAddr, path: &str) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of response head");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let mut r = Resp {
        status,
        head,
        body: all[split + 4..].to_vec(),
    };
    if r.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let (mut body, mut rest) = (Vec::new(), &r.body[..]);
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = String::from_utf8_lossy(&rest[..eol]);
            let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[eol + 4 + n..];
        }
        r.body = body;
    }
    r
}

/// The status server's address, from the daemon's `web status page on http://ADDR/` line (the
/// last one: the log is appended to across restarts).
fn web_addr(v: &TestVolume) -> SocketAddr {
    const LINE: &str = "web status page on http://";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(v.log_path()).unwrap_or_default();
        if let Some(rest) = log.rsplit(LINE).next().filter(|_| log.contains(LINE)) {
            return rest.split('/').next().unwrap().parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no `{LINE}ADDR/` line in the daemon's log:\n{}",
            v.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name start at field 3 (state); utime is 14.
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

// ------------------------------------------------------------------------------ the browser

fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the status page test renders the page in headless Chromium. \
         Run scripts/install-test-deps.sh (as root) to install it."
    );
    CHROMIUM
}

/// Runs headless Chromium on `url` with a fresh profile, a `w`x`h` window and `budget_ms` of
/// virtual time for the page's scripts (its timers run in virtual time, fetches in real time),
/// plus `args` (`--dump-dom` or `--screenshot=...`); returns what it printed.
fn run_chromium(url: &str, (w, h): (u32, u32), budget_ms: u32, args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = profile.path().join("stdout");
    let err = profile.path().join("stderr");
    let mut child = Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("p").display()
        ))
        .arg(format!("--window-size={w},{h}"))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(args)
        .arg(url)
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(120));
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        status.success(),
        "chromium {args:?} {url}: {status}\n{stderr}"
    );
    std::fs::read_to_string(&out).unwrap()
}

fn dump_dom(url: &str, window: (u32, u32), budget_ms: u32) -> String {
    let dom = run_chromium(url, window, budget_ms, &["--dump-dom".to_string()]);
    assert!(dom.contains("</html>"), "no DOM from chromium:\n{dom}");
    dom
}

/// Screenshots `url` into target/test-logs/status-page-`name`.png; checks it is a PNG of the
/// window's size with more in it than a blank page.
fn screenshot(url: &str, window: (u32, u32), name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join(format!("status-page-{name}.png"));
    let _ = std::fs::remove_file(&png);
    run_chromium(
        url,
        window,
        2000,
        &[format!("--screenshot={}", png.display())],
    );
    let data = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert_eq!(
        &data[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        png.display()
    );
    let dim = |at: usize| u32::from_be_bytes(data[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), window, "{}: size", png.display());
    // A blank page of this size compresses to 2-5 KB; the rendered page is 50-150 KB.
    assert!(
        data.len() > 15_000,
        "{}: only {} bytes, the page looks blank",
        png.display(),
        data.len()
    );
    png
}

// ------------------------------------------------------------------------------ the DOM

/// A figure on the page: its JSON path, the raw JSON value it was drawn from, and the text shown.
#[derive(Debug, Clone)]
struct Shown {
    path: String,
    raw: Option<String>,
    text: String,
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').filter(|&e| e < 10);
        let ent = end.map(|e| &rest[1..e]);
        let c = match ent {
            Some("amp") => Some('&'),
            Some("lt") => Some('<'),
            Some("gt") => Some('>'),
            Some("quot") => Some('"'),
            Some("apos") => Some('\''),
            Some("nbsp") => Some('\u{a0}'),
            Some(e) if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            Some(e) if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match (c, end) {
            (Some(c), Some(e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            _ => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The end of the tag that starts at `start` (a `<`), skipping `>` inside quoted values.
fn tag_end(dom: &str, start: usize) -> usize {
    let mut quote = None;
    for (i, c) in dom[start..].char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '>') => return start + i,
            _ => {}
        }
    }
    panic!("unterminated tag at {start}");
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    let j = tag[i..].find('"')?;
    Some(unescape(&tag[i..i + j]))
}

/// The page's body without its script (whose source spells attribute templates).
fn body(dom: &str) -> &str {
    let b = dom.find("<body").expect("no <body>");
    let e = dom[b..].find("<script").map_or(dom.len(), |e| b + e);
    &dom[b..e]
}

/// Every element with a `data-field`, in document order.
fn shown_fields(dom: &str) -> Vec<Shown> {
    let dom = body(dom);
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = dom[from..].find(" data-field=\"") {
        let at = from + i;
        let start = dom[..at].rfind('<').unwrap();
        let end = tag_end(dom, start);
        let tag = &dom[start..end];
        let text_end = dom[end + 1..].find('<').map_or(dom.len(), |t| end + 1 + t);
        out.push(Shown {
            path: attr(tag, "data-field").unwrap(),
            raw: attr(tag, "data-raw"),
            text: unescape(&dom[end + 1..text_end]).trim().to_string(),
        });
        from = end;
    }
    out
}

/// The inner HTML of the element with `id`.
fn inner_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let dom = body(dom);
    let at = dom
        .find(&format!(" id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let start = dom[..at].rfind('<').unwrap();
    let name: String = dom[start + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let inner_start = tag_end(dom, start) + 1;
    let inner_end = inner_start + dom[inner_start..].find(&format!("</{name}>")).unwrap();
    &dom[inner_start..inner_end]
}

/// The text of the element with `id`, tags stripped.
fn text_of(dom: &str, id: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in inner_of(dom, id).chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    unescape(&text)
}

/// The opening tag of the element with `id`.
fn tag_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let dom = body(dom);
    let at = dom
        .find(&format!(" id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let start = dom[..at].rfind('<').unwrap();
    &dom[start..=tag_end(dom, start)]
}

/// The figures by path; the same path shown twice (headline and card) must agree.
fn by_path(fields: &[Shown]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for f in fields {
        let raw = f
            .raw
            .clone()
            .unwrap_or_else(|| panic!("{} shown without data-raw: the page never loaded", f.path));
        if let Some(prev) = m.insert(f.path.clone(), raw.clone()) {
            assert_eq!(prev, raw, "{} shown twice with different values", f.path);
        }
    }
    m
}

// ------------------------------------------------------------------------------ JSON paths

/// The value at `path` ("a.b", "history[3].c") in the status, or in history or events.
fn lookup<'a>(
    status: &'a Value,
    history: &'a Value,
    events: &'a Value,
    path: &str,
) -> Option<&'a Value> {
    let mut v = status;
    for (n, seg) in path.split('.').enumerate() {
        let (name, index) = match seg.split_once('[') {
            Some((name, i)) => (name, Some(i.trim_end_matches(']').parse::<usize>().ok()?)),
            None => (seg, None),
        };
        v = match (n, name) {
            (0, "history") => history,
            (0, "events") => events,
            _ => v.get(name)?,
        };
        if let Some(i) = index {
            v = v.get(i)?;
        }
    }
    Some(v)
}

/// Every leaf path of a JSON object ("cache.dirty_bytes").
fn leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &p, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// Whether the page's raw string is the JSON value (numbers compared as numbers: JavaScript
/// prints 30.0 as "30").
fn same(raw: &str, v: &Value) -> bool {
    match v {
        Value::Null => raw == "null",
        Value::Bool(b) => raw == b.to_string(),
        // serde_json's default float parsing can be one ulp off the correctly rounded value
        // the browser got: equal to 12 significant digits is the same number.
        Value::Number(n) => match (raw.parse::<f64>(), n.as_f64()) {
            (Ok(a), Some(b)) => a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs()),
            _ => false,
        },
        Value::String(s) => raw == s,
        // Arrays and objects: the page keeps them as JSON.
        other => serde_json::from_str::<Value>(raw).is_ok_and(|r| r == *other),
    }
}

fn num(m: &BTreeMap<String, String>, path: &str) -> f64 {
    m.get(path)
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{path} not shown as a number"))
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-9
}

/// Parses "12.3 MiB" (or "512 B") into bytes.
fn parse_bytes(text: &str) -> Option<f64> {
    let (n, unit) = text.trim().split_once(' ')?;
    let k = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        .iter()
        .position(|u| *u == unit)?;
    Some(n.parse::<f64>().ok()? * 1024f64.powi(k as i32))
}

/// Parses the page's durations ("45 s", "12 min", "3 h 5 min", "2 d 4 h") into seconds and the
/// precision of the form.
fn parse_dur(text: &str) -> Option<(f64, f64)> {
    let w: Vec<&str> = text.split_whitespace().collect();
    let n = |i: usize| w.get(i).and_then(|s| s.parse::<f64>().ok());
    match w.as_slice() {
        [_, "s"] => Some((n(0)?, 1.0)),
        [_, "min"] => Some((n(0)? * 60.0, 60.0)),
        [_, "h", _, "min"] => Some((n(0)? * 3600.0 + n(2)? * 60.0, 60.0)),
        [_, "d", _, "h"] => Some((n(0)? * 86400.0 + n(2)? * 3600.0, 3600.0)),
        _ => None,
    }
}

/// The appliance's clock as the page shows it (`now_unix`), which the page's relative times use.
fn now_unix(fields: &[Shown]) -> f64 {
    fields
        .iter()
        .find(|f| f.path == "now_unix")
        .and_then(|f| f.raw.as_deref()?.parse().ok())
        .expect("the page shows now_unix")
}

/// Checks that each figure's text says its raw value in human units.
fn check_texts(fields: &[Shown], errors: &mut Vec<String>) {
    for f in fields {
        let (p, t) = (f.path.as_str(), f.text.as_str());
        let raw = f.raw.as_deref().unwrap_or("");
        let val: Option<f64> = raw.parse().ok();
        let mut bad = |why: &str| errors.push(format!("{p} = {raw} shown as {t:?}: {why}"));
        let leaf = p.rsplit('.').next().unwrap();
        if raw == "null" {
            let ok = match leaf {
                "limit_bps" => t == "unlimited",
                "quota_bytes" => t == "no quota",
                "quota_used_percent" | "last_error_unix" => t.is_empty(),
                "last_run_unix" | "newest_unix" | "oldest_unix" => t == "never",
                "quota_used_bytes" | "last_seconds" | "retention_until_unix" => t.is_empty(),
                "last_error" | "newest_name" => t == "none",
                "lease_held_by" => t == "this appliance",
                _ => false,
            };
            if !ok {
                bad("not the text for null");
            }
        } else if leaf == "newest_name" {
            if t != raw {
                bad("not the snapshot's name");
            }
        } else if leaf == "every_minutes" {
            let want = match val {
                Some(0.0) => "no schedule".to_string(),
                Some(v) => format!("every {v} min"),
                None => String::new(),
            };
            if t.replace(',', "") != want {
                bad("not the schedule (\"every N min\" or \"no schedule\")");
            }
        } else if leaf.ends_with("_bytes") {
            let v = val.unwrap();
            match parse_bytes(t) {
                Some(s) if close(s, v, 0.01) => {}
                _ => bad("not these bytes in B/KiB/MiB/GiB"),
            }
        } else if leaf.ends_with("_bps") {
            let v = val.unwrap();
            match t.strip_suffix("/s").and_then(parse_bytes) {
                Some(s) if close(s, v, 0.01) || (v < 0.5 && s == 0.0) => {}
                _ => bad("not this rate in B/s, KiB/s, MiB/s"),
            }
        } else if leaf.ends_with("_percent") {
            let v = val.unwrap();
            let s = t
                .trim_start_matches(" (")
                .split(" %")
                .next()
                .and_then(|s| s.trim().parse::<f64>().ok());
            if !s.is_some_and(|s| (s - v).abs() <= 0.051) {
                bad("not this percentage");
            }
        } else if leaf.ends_with("_ratio") {
            let v = val.unwrap();
            let s = t.strip_suffix('×').and_then(|s| s.parse::<f64>().ok());
            if !s.is_some_and(|s| (s - v).abs() <= 0.0051) {
                bad("not this ratio");
            }
        } else if leaf == "now_unix" {
            if !t.contains(':') {
                bad("not a time of day");
            }
        } else if leaf == "retention_until_unix" {
            // A date to come: "(the first lock ends in 3 d 2 h)".
            let ends = t
                .strip_prefix("(the first lock ends ")
                .and_then(|t| t.strip_suffix(')'));
            let due = val.unwrap() - now_unix(fields);
            let ok = match ends {
                Some("now") => due <= 1.0,
                Some(d) => d
                    .strip_prefix("in ")
                    .and_then(parse_dur)
                    .is_some_and(|(s, step)| (s - due).abs() <= step + 1.0),
                None => false,
            };
            if !ok {
                bad("not the time until the lock ends");
            }
        } else if leaf.ends_with("_unix") {
            let ok =
                t == "never" && raw == "0" || ["ago", "just now"].iter().any(|w| t.contains(w));
            if !ok {
                bad("not an age (\"3 min ago\")");
            }
        } else if leaf.ends_with("_s") {
            let v = val.unwrap();
            match parse_dur(t) {
                Some((s, step)) if (s - v).abs() <= step => {}
                None if leaf == "oldest_pending_s" && v == 0.0 && t == "nothing waiting" => {}
                _ => bad("not this duration"),
            }
        } else if let Some(v) = val.filter(|_| raw.bytes().all(|c| c.is_ascii_digit())) {
            // "1,234", or "3 packs"
            let n = t.split(' ').next().unwrap().replace(',', "");
            if n.parse::<f64>().ok() != Some(v) {
                bad("not this count");
            }
        } else if leaf == "quota_warning" {
            if (raw == "true") != t.contains("above the warning threshold") {
                bad("not the quota warning");
            }
        } else if t.is_empty() {
            bad("nothing shown");
        }
    }
}

/// Checks that one status snapshot as shown is consistent with itself.
fn check_snapshot(m: &BTreeMap<String, String>, errors: &mut Vec<String>) {
    let n = |p: &str| num(m, p);
    let mut want = |what: &str, ok: bool| {
        if !ok {
            errors.push(format!("shown snapshot inconsistent: {what}"));
        }
    };
    let pct = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a * 100.0 / b };
    let ratio = |a: f64, b: f64| if a == 0.0 || b == 0.0 { 1.0 } else { a / b };
    want(
        "pending_changes = journal_position - consistency_point",
        n("offsite.pending_changes")
            == (n("offsite.journal_position") - n("offsite.consistency_point")).max(0.0),
    );
    want(
        "dirty_percent",
        close(
            n("cache.dirty_percent"),
            pct(n("cache.dirty_bytes"), n("cache.max_bytes")),
            1e-12,
        ),
    );
    want(
        "used_percent",
        close(
            n("cache.used_percent"),
            pct(n("cache.used_bytes"), n("cache.max_bytes")),
            1e-12,
        ),
    );
    want(
        "dedup_ratio",
        close(
            n("space.dedup_ratio"),
            ratio(n("space.logical_bytes"), n("space.unique_bytes")),
            1e-12,
        ),
    );
    want(
        "compression_ratio",
        close(
            n("space.compression_ratio"),
            ratio(n("space.unique_bytes"), n("space.stored_bytes")),
            1e-12,
        ),
    );
    // average = uploaded / max(uptime, 1 s), with uptime in [uptime_s, uptime_s + 1).
    let (up, avg) = (n("upload.uploaded_bytes"), n("upload.average_rate_bps"));
    let secs = n("uptime_s").max(1.0);
    want(
        "average_rate_bps = uploaded_bytes / uptime",
        avg <= up / secs * (1.0 + 1e-9) && avg >= up / (secs + 1.0) * (1.0 - 1e-9),
    );
    want(
        "limit_bps is the configured limit",
        n("upload.limit_bps") == LIMIT_BPS as f64,
    );
}

/// What the page's snapshot and the API's, taken `elapsed_s` later, may differ by.
struct Window {
    /// Seconds from the browser's start to the API's answer.
    elapsed_s: f64,
    /// Bytes the writer wrote (and fsynced) in that time.
    written: f64,
}

/// Compares every figure shown with the API: equal, or moved only in the direction and by the
/// amount the time between the two allows.
fn check_against_api(
    m: &BTreeMap<String, String>,
    api: &Value,
    history: &Value,
    events: &Value,
    w: &Window,
    errors: &mut Vec<String>,
) {
    let api_n = |p: &str| {
        lookup(api, history, events, p)
            .and_then(Value::as_f64)
            .unwrap()
    };
    let moved = |p: &str| api_n(p) - num(m, p);
    let t = w.elapsed_s + 2.0;
    let pack = PACK_BYTES as f64;
    let file = FILE_BYTES as f64;
    // A history sample taken between the two snapshots changes the "now" rates.
    let sampled_between = history.as_array().unwrap().iter().any(|s| {
        let at = s["t_unix"].as_f64().unwrap();
        at >= num(m, "now_unix") && at <= api_n("now_unix")
    });
    for (path, raw) in m {
        let Some(a) = lookup(api, history, events, path) else {
            errors.push(format!("{path} shown, but the API has no such value"));
            continue;
        };
        if same(raw, a) {
            continue;
        }
        if path.starts_with("history[") || path.starts_with("events[") {
            // Both only grow (until 1440 samples and 200 events): an index keeps its value.
            errors.push(format!("{path}: shown {raw}, API has {a}"));
            continue;
        }
        let (Ok(s), Some(a)) = (raw.parse::<f64>(), a.as_f64()) else {
            errors.push(format!("{path}: shown {raw}, API has {a}"));
            continue;
        };
        let d = a - s;
        let ok = match path.as_str() {
            "uptime_s" | "now_unix" => (0.0..=t).contains(&d),
            "upload.uploaded_bytes" => d >= 0.0 && d <= LIMIT_BPS as f64 * t + 2.0 * pack,
            "space.logical_bytes" | "space.unique_bytes" | "space.stored_bytes" => {
                d >= 0.0 && d <= w.written * 1.05 + 2.0 * file
            }
            "offsite.consistency_point"
            | "offsite.journal_position"
            | "offsite.consistency_point_unix"
            | "upload.uploaded_packs"
            | "upload.put_requests"
            | "upload.failures"
            | "upload.metadata_segments"
            | "upload.checkpoints"
            | "fetch.get_requests"
            | "cache.throttled_writes"
            | "frontends.webdav_requests" => d >= 0.0 && d <= ANY_COUNT_PER_S * t,
            "upload.metadata_bytes" | "fetch.fetched_bytes" | "cache.evicted_bytes" => {
                d >= 0.0 && d <= ANY_BYTES_PER_S * t
            }
            // Grows by what is written, shrinks by what is uploaded (or evicted).
            "cache.dirty_bytes" | "upload.queued_bytes" | "cache.used_bytes" => {
                let gone = moved("upload.uploaded_bytes") + moved("cache.evicted_bytes");
                d <= w.written * 1.05 + 2.0 * (file + pack) && -d <= gone + 2.0 * pack
            }
            "upload.queued_packs" | "upload.uploading_packs" => {
                d.abs() <= moved("upload.uploaded_packs") + w.written / pack + 2.0
            }
            "offsite.pending_changes" => {
                d.abs() <= moved("offsite.journal_position") + moved("offsite.consistency_point")
            }
            // The oldest waiting change ages with the clock, or leaves and a younger is oldest.
            "offsite.oldest_pending_s" => d <= t,
            "upload.rate_bps" | "fetch.rate_bps" => sampled_between,
            // Derived from the fields above; checked within the snapshot.
            "cache.dirty_percent"
            | "cache.used_percent"
            | "upload.average_rate_bps"
            | "space.dedup_ratio"
            | "space.compression_ratio" => true,
            "space.metadata_bytes" => d.abs() <= ANY_BYTES_PER_S * t,
            "frontends.open_handles" => d.abs() <= 2.0,
            _ => false,
        };
        if !ok {
            errors.push(format!(
                "{path}: shown {raw}, API {a} {:.1} s later: more than time allows",
                w.elapsed_s
            ));
        }
    }
    // recoverable only ever turns true.
    if m["offsite.recoverable"] == "true" && api["offsite"]["recoverable"] != Value::Bool(true) {
        errors.push("offsite.recoverable went back to false".into());
    }
}

/// The headline the page must show for its snapshot.
fn check_headline(dom: &str, m: &BTreeMap<String, String>, errors: &mut Vec<String>) {
    let state = text_of(dom, "state");
    let pending = num(m, "offsite.pending_changes") as u64;
    let want = if m["store.lease_held_by"] != "null" {
        "Uploads stopped: another appliance holds this volume".to_string()
    } else if m["offsite.recoverable"] != "true" {
        "Not yet recoverable from the bucket".to_string()
    } else if pending > 0 {
        let n = pending.to_string();
        let mut grouped = String::new();
        for (i, c) in n.chars().enumerate() {
            if i > 0 && (n.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        let s = if pending == 1 { "" } else { "s" };
        format!("{grouped} change{s} waiting to go off-site (oldest ")
    } else if m["store.offsite"] != "true" {
        if m["store.same_disk"] == "true" {
            "Nothing is off-site: the store is a directory on this appliance's own disk"
        } else {
            "Nothing is off-site: the store is a directory of this machine"
        }
        .to_string()
    } else {
        "Everything is off-site".to_string()
    };
    if !state.contains(&want) {
        errors.push(format!("headline {state:?}, expected it to say {want:?}"));
    }
}

/// The checks every rendering of a live daemon's page passes.
fn check_page(dom: &str, errors: &mut Vec<String>) -> (Vec<Shown>, BTreeMap<String, String>) {
    let fields = shown_fields(dom);
    let m = by_path(&fields);
    check_texts(&fields, errors);
    check_snapshot(&m, errors);
    check_headline(dom, &m, errors);
    if !tag_of(dom, "offline").contains("hidden") {
        errors.push(format!("offline banner shown: {}", text_of(dom, "offline")));
    }
    if !dom.contains("data-hscroll=\"no\"") {
        errors.push("the page scrolls sideways (or never laid out)".into());
    }
    (fields, m)
}

// ------------------------------------------------------------------------------ the writer

/// Writes files of incompressible data through the mount at about [`WRITER_BPS`], each
/// fsynced before it is counted in `written`.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(dir: PathBuf) -> Writer {
        std::fs::create_dir_all(&dir).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (s, w) = (stop.clone(), written.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let data = random_bytes(0x57a7 + i, FILE_BYTES);
                let mut f = File::create(dir.join(format!("f{i:05}"))).unwrap();
                f.write_all(&data).unwrap();
                f.sync_all().unwrap();
                drop(f);
                let total = w.fetch_add(data.len() as u64, Ordering::SeqCst) + data.len() as u64;
                i += 1;
                let due = Duration::from_secs_f64(total as f64 / WRITER_BPS as f64);
                if let Some(ahead) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
        });
        Writer {
            stop,
            written,
            thread: Some(thread),
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
    }
}

// ------------------------------------------------------------------------------ a stand-in

/// Serves the page and a scripted series of status documents (then 503s), an empty history
/// and no events, and records what was asked for.
struct StandIn {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl StandIn {
    fn start(page: Vec<u8>, statuses: Vec<Vec<u8>>) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (page, statuses) = (Arc::new(page), Arc::new(statuses));
        let served = Arc::new(AtomicUsize::new(0));
        let (reqs, halt) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let (page, statuses, served, reqs) =
                    (page.clone(), statuses.clone(), served.clone(), reqs.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if conn.read(&mut b).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    reqs.lock().unwrap().push(path.clone());
                    let (code, ctype, body): (&str, &str, Vec<u8>) = match path.as_str() {
                        "/" => ("200 OK", "text/html; charset=utf-8", page.to_vec()),
                        "/api/v1/status" => {
                            match statuses.get(served.fetch_add(1, Ordering::SeqCst)) {
                                Some(s) => ("200 OK", "application/json", s.clone()),
                                None => ("503 Service Unavailable", "text/plain", b"gone".to_vec()),
                            }
                        }
                        "/api/v1/history" | "/api/v1/events" => {
                            ("200 OK", "application/json", b"[]".to_vec())
                        }
                        _ => ("404 Not Found", "text/plain", b"no".to_vec()),
                    };
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
                         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(&body);
                });
            }
        });
        StandIn {
            addr,
            requests,
            stop,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

// ------------------------------------------------------------------------------ the test

fn report(errors: Vec<String>, what: &str, dom: &str) {
    assert!(
        errors.is_empty(),
        "{what}: {} problems:\n  {}\n--- page body:\n{}",
        errors.len(),
        errors.join("\n  "),
        body(dom)
    );
}

#[test]
fn status_page_shows_what_the_api_says() {
    chromium();
    let mut v = TestVolume::new(&format!(
        "pack_size_mib = {}\n[tiering]\nbandwidth_limit = \"{}MiB\"\n[web]\nlisten = \"127.0.0.1:0\"\n",
        PACK_BYTES / MIB,
        LIMIT_BPS / MIB
    ));
    v.start();
    let addr = web_addr(&v);
    let url = format!("http://{addr}/");

    // The page itself: small, HTML, nothing fetched from elsewhere.
    let page = http_get(addr, "/");
    assert_eq!(page.status, 200, "{}", page.head);
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{}",
        page.head
    );
    assert_eq!(page.body, include_bytes!("../../assets/status.html"));
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(
        page.body.len() < PAGE_MAX_BYTES,
        "the page is {} bytes, over the {PAGE_MAX_BYTES} bound",
        page.body.len()
    );
    let lower = html.to_ascii_lowercase();
    for bad in [
        "http://", "https://", "@import", "url(", "<iframe", "<img", "<object",
    ] {
        assert!(!lower.contains(bad), "the page contains {bad:?}");
    }
    for a in ["src", "href", "action", "data"] {
        let mut rest = lower.as_str();
        while let Some(i) = rest.find(&format!(" {a}=\"")) {
            rest = &rest[i + a.len() + 3..];
            let value = &rest[..rest.find('"').unwrap()];
            assert!(
                value.starts_with("data:") || !(value.contains(':') || value.starts_with("//")),
                "the page refers to {a}=\"{value}\", not its own origin"
            );
        }
    }

    // Live: a writer fills the volume, uploads run at the limit. Two history samples (one at
    // start, one 30 s later) make a line and an upload rate.
    let mut writer = Writer::start(v.path("w"));
    let deadline = Instant::now() + Duration::from_secs(75);
    while http_get(addr, "/api/v1/history")
        .json()
        .as_array()
        .unwrap()
        .len()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "not two history samples after 75 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for (name, window) in [("phone", (390, 844)), ("desktop", (1280, 900))] {
        let (t0, w0) = (Instant::now(), writer.written());
        let dom = dump_dom(&url, window, 2000);
        let api = http_get(addr, "/api/v1/status").json();
        let history = http_get(addr, "/api/v1/history").json();
        let events = http_get(addr, "/api/v1/events").json();
        let w = Window {
            elapsed_s: t0.elapsed().as_secs_f64(),
            written: (writer.written() - w0) as f64,
        };
        let mut errors = Vec::new();
        let (fields, m) = check_page(&dom, &mut errors);
        check_against_api(&m, &api, &history, &events, &w, &mut errors);
        // Every value of the status document is on the page.
        let mut all = Vec::new();
        leaves(&api, "", &mut all);
        for p in all.iter().filter(|p| !m.contains_key(*p)) {
            errors.push(format!("{p} is not shown"));
        }
        // The plots: history exists, so both are drawn, with their latest points tagged.
        let n = history.as_array().unwrap().len();
        for (id, key) in [("p-up", "upload_bps"), ("p-dirty", "dirty_bytes")] {
            let plot = inner_of(&dom, id);
            let line = plot
                .split("<path d=\"")
                .nth(1)
                .is_some_and(|d| d.starts_with('M') && d.split('"').next().unwrap().contains('L'));
            if plot.contains("collecting data") || !plot.contains("<svg") || !line {
                errors.push(format!(
                    "#{id}: no line drawn through {n} samples: {plot:?}"
                ));
            }
            if !m
                .keys()
                .any(|p| p.starts_with("history[") && p.ends_with(key))
            {
                errors.push(format!("#{id}: no history[..].{key} shown"));
            }
        }
        if num(&m, "upload.rate_bps") <= 0.0 {
            errors
                .push("uploads ran over the last sample interval, yet the rate shown is 0".into());
        }
        if !m.keys().any(|p| p.starts_with("events[")) {
            let ev = text_of(&dom, "events");
            if !ev.contains("No events since the daemon started.") {
                errors.push(format!("no events shown, and no empty state: {ev:?}"));
            }
        }
        eprintln!(
            "status page ({name}): {} figures, shown vs API {:.1} s apart, writer wrote {:.0} MiB meanwhile, \
             headline {:?}",
            fields.len(),
            w.elapsed_s,
            w.written / MIB as f64,
            text_of(&dom, "state").trim()
        );
        report(errors, &format!("live page ({name})"), &dom);
        screenshot(&url, window, name);
    }
    writer.stop();

    // A stand-in daemon: two status documents (the second 5 s later), then failures.
    let first = http_get(addr, "/api/v1/status").json();
    let mut second = first.clone();
    second["uptime_s"] = (first["uptime_s"].as_u64().unwrap() + 5).into();
    second["now_unix"] = (first["now_unix"].as_u64().unwrap() + 5).into();
    // The live volume has no snapshots: the second document has some, so the page's texts for
    // them are checked too.
    let now = second["now_unix"].as_u64().unwrap();
    second["snapshots"] = serde_json::json!({
        "count": 12,
        "newest_name": "auto-2026-12-03_070000Z",
        "newest_unix": now - 3600,
        "oldest_unix": now - 9 * 86400,
        "every_minutes": 1440,
        "last_error": "metadata store: disk full",
    });
    let docs = [&first, &second]
        .map(|d| serde_json::to_vec(d).unwrap())
        .to_vec();
    let stand_in = StandIn::start(page.body.clone(), docs.clone());
    // Virtual time: status at 0, 5 and 10 s (the third fails), history and events at 0.
    let dom = dump_dom(&format!("http://{}/", stand_in.addr), (390, 844), 12_000);
    let reqs = stand_in.requests();
    let mut errors = Vec::new();
    let fields = shown_fields(&dom);
    let m = by_path(&fields);
    check_texts(&fields, &mut errors);
    for (p, raw) in &m {
        match lookup(&second, &Value::Null, &Value::Null, p) {
            Some(a) if same(raw, a) => {}
            a => errors.push(format!(
                "{p}: shown {raw}, the last status served was {a:?}"
            )),
        }
    }
    let count = |p: &str| reqs.iter().filter(|r| *r == p).count();
    if count("/") != 1 || count("/api/v1/status") < 3 {
        errors.push(format!(
            "expected one page load and >= 3 status refreshes: {reqs:?}"
        ));
    }
    for r in &reqs {
        if !["/", "/api/v1/status", "/api/v1/history", "/api/v1/events"].contains(&r.as_str()) {
            errors.push(format!("the page asked for {r}"));
        }
    }
    let banner = text_of(&dom, "offline");
    if tag_of(&dom, "offline").contains("hidden")
        || !banner
            .to_lowercase()
            .contains("cannot reach the appliance daemon")
    {
        errors.push(format!("no offline banner: {banner:?}"));
    }
    let body_tag = &body(&dom)[..=body(&dom).find('>').unwrap()];
    if !body_tag.contains("stale") {
        errors.push("figures not marked stale".into());
    }
    for id in ["p-up", "p-dirty"] {
        if !text_of(&dom, id).contains("collecting data: a point every 30 s") {
            errors.push(format!("#{id}: no empty state: {:?}", text_of(&dom, id)));
        }
    }
    if !text_of(&dom, "events").contains("No events since the daemon started.") {
        errors.push("no empty state for events".into());
    }
    report(errors, "stand-in (refresh, empty history, offline)", &dom);
    drop(stand_in);
    let stand_in = StandIn::start(page.body.clone(), docs);
    let shot_url = format!("http://{}/", stand_in.addr);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("status-page-offline-phone.png");
    run_chromium(
        &shot_url,
        (390, 844),
        12_000,
        &[format!("--screenshot={}", png.display())],
    );
    assert!(std::fs::metadata(&png).unwrap().len() > 15_000);
    drop(stand_in);

    // Drained: the headline says everything is in the store, and (the store being a directory
    // inside the volume, as in the demo) that nothing is off-site.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = http_get(addr, "/api/v1/status").json();
        if s["offsite"]["pending_changes"] == 0
            && s["cache"]["dirty_bytes"] == 0
            && s["offsite"]["recoverable"] == true
        {
            break;
        }
        assert!(Instant::now() < deadline, "uploads did not drain: {s:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let dom = dump_dom(&url, (1280, 900), 2000);
    let mut errors = Vec::new();
    check_page(&dom, &mut errors);
    if !text_of(&dom, "state")
        .contains("Nothing is off-site: the store is a directory on this appliance's own disk")
    {
        errors.push(format!(
            "drained, yet the headline says {:?}",
            text_of(&dom, "state")
        ));
    }
    report(errors, "drained page", &dom);

    // The cost of a refresh: the daemon's CPU time over 200 status requests, and their size.
    let pid = daemon_pid(&v);
    // SAFETY: sysconf reads a constant of the system and takes no pointer.
    let tick_ms = 1000.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    const N: u32 = 200;
    let (c0, t0) = (cpu_ticks(pid), Instant::now());
    let mut bytes = 0;
    for _ in 0..N {
        let r = http_get(addr, "/api/v1/status");
        assert_eq!(r.status, 200);
        bytes = r.body.len();
    }
    let (busy, wall) = (cpu_ticks(pid) - c0, t0.elapsed());
    std::thread::sleep(wall);
    let idle = cpu_ticks(pid) - c0 - busy;
    let per = busy as f64 * tick_ms / N as f64;
    let history = http_get(addr, "/api/v1/history").body.len();
    let events = http_get(addr, "/api/v1/events").body.len();
    eprintln!(
        "status page: page {} bytes; per status refresh: {bytes} bytes of JSON, daemon CPU {per:.2} ms \
         ({busy} ticks of {tick_ms} ms over {N} requests in {:.0} ms wall; idle over the same time: \
         {idle} ticks), {:.2} ms wall; history {history} bytes, events {events} bytes",
        page.body.len(),
        wall.as_secs_f64() * 1000.0,
        wall.as_secs_f64() * 1000.0 / N as f64,
    );
    assert!(
        per < CPU_MS_PER_STATUS_MAX,
        "{per:.2} ms of daemon CPU per status request (bound {CPU_MS_PER_STATUS_MAX} ms)"
    );
    v.stop();
}

//! The daemon's local control socket: how `tiergate sync` and `tiergate evict` reach a running
//! `tiergate serve`.
//!
//! A Unix socket `control.sock` in the volume directory, mode 0600 (whoever may run the daemon
//! may control it; nobody else). One request per connection: a single line (`sync [SECONDS]`,
//! `evict`, `gc`, `status` (tiering counters), `report` (the whole status document of
//! src/status.rs), `recycle list [all]|restore INO [PATH]|restore-path JSON`, `snapshot list|create [NAME]|delete NAME`),
//! answered with a single line of JSON and the connection closed.
//! Unknown or malformed requests get `{"error": "..."}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::status::Reporter;
use crate::tiering::{SyncReport, TieringStatus};

pub const SOCKET_NAME: &str = "control.sock";
/// Longest request line accepted: room for a path of PATH_MAX (4096) bytes and the words before.
const MAX_REQUEST: usize = 8192;

pub fn socket_path(volume_dir: &Path) -> PathBuf {
    volume_dir.join(SOCKET_NAME)
}

/// Listens on the control socket of `tiering`'s volume until the runtime stops.
pub fn serve(
    rt: &tokio::runtime::Handle,
    volume_dir: &Path,
    reporter: Arc<Reporter>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(volume_dir);
    // We hold the volume lock, so a socket left here is from a daemon that died.
    let _ = std::fs::remove_file(&path);
    let listener = {
        let _guard = rt.enter();
        tokio::net::UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("binding {}", path.display()), e))?
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    rt.spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let r = reporter.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(conn, r).await {
                    tracing::debug!("control connection: {e}");
                }
            });
        }
    });
    Ok(())
}

async fn handle(conn: tokio::net::UnixStream, r: Arc<Reporter>) -> std::io::Result<()> {
    let (rd, mut wr) = conn.into_split();
    let mut line = String::new();
    let mut rd = tokio::io::BufReader::new(rd).take(MAX_REQUEST as u64);
    rd.read_line(&mut line).await?;
    // Cut at MAX_REQUEST: never act on part of a name or path.
    let reply = if line.len() >= MAX_REQUEST && !line.ends_with('\n') {
        json!({ "error": format!("request longer than {MAX_REQUEST} bytes") })
    } else {
        match request(&line, r).await {
            Ok(v) => v,
            Err(e) => json!({ "error": e.to_string() }),
        }
    };
    wr.write_all(format!("{reply}\n").as_bytes()).await?;
    wr.shutdown().await
}

async fn request(line: &str, r: Arc<Reporter>) -> Result<serde_json::Value> {
    let t = r.tiering().clone();
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["sync"] | ["sync", _] => {
            let timeout = match words.get(1) {
                Some(s) => Some(Duration::from_secs_f64(
                    s.parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v >= 0.0)
                        .ok_or_else(|| Error::Invalid(format!("bad timeout {s:?}")))?,
                )),
                None => None,
            };
            let r = tokio::task::spawn_blocking(move || t.sync(timeout))
                .await
                .map_err(|e| Error::Invalid(format!("sync task: {e}")))??;
            Ok(sync_json(&r))
        }
        ["evict"] => {
            let freed = tokio::task::spawn_blocking(move || t.evict_down_to(0))
                .await
                .map_err(|e| Error::Invalid(format!("evict task: {e}")))??;
            Ok(json!({ "evicted_bytes": freed }))
        }
        ["status"] => Ok(status_json(&t.status())),
        ["report"] => {
            let s = tokio::task::spawn_blocking(move || r.status())
                .await
                .map_err(|e| Error::Invalid(format!("status task: {e}")))?;
            serde_json::to_value(s).map_err(|e| Error::Invalid(format!("status document: {e}")))
        }
        ["recycle", "list"] | ["recycle", "list", "all"] => {
            let all = words.len() == 3;
            let vol = r.volume().clone();
            let list = tokio::task::spawn_blocking(move || vol.recycle_list(all))
                .await
                .map_err(|e| Error::Invalid(format!("recycle task: {e}")))??;
            Ok(json!({ "files": list, "days": r.volume().recycle_days() }))
        }
        ["recycle", "restore", ino, ..] => {
            let ino: u64 = ino
                .parse()
                .map_err(|_| Error::Invalid(format!("bad inode number {ino:?}")))?;
            // The destination is the rest of the line: a path may hold spaces.
            let to = after_words(line, 3).map(str::to_string);
            let vol = r.volume().clone();
            let done = tokio::task::spawn_blocking(move || {
                vol.recycle_restore(ino, to.as_deref().map(str::as_bytes))
            })
            .await
            .map_err(|e| Error::Invalid(format!("recycle task: {e}")))?
            .map_err(|e| match e {
                Error::NotFound => {
                    Error::Invalid(format!("nothing in the recycle bin has the id {ino}"))
                }
                e => e,
            })?;
            serde_json::to_value(done).map_err(|e| Error::Invalid(format!("restore report: {e}")))
        }
        ["recycle", "restore-path", _, ..] => {
            // {"path": ..., "to": ... or null}: two paths, each of which may hold spaces.
            #[derive(serde::Deserialize)]
            struct Ask {
                path: String,
                to: Option<String>,
            }
            let ask: Ask = serde_json::from_str(after_words(line, 2).unwrap_or_default())
                .map_err(|e| Error::Invalid(format!("bad restore-path request: {e}")))?;
            let vol = r.volume().clone();
            let done = tokio::task::spawn_blocking(move || {
                vol.recycle_restore_path(ask.path.as_bytes(), ask.to.as_deref().map(str::as_bytes))
            })
            .await
            .map_err(|e| Error::Invalid(format!("recycle task: {e}")))??;
            serde_json::to_value(done).map_err(|e| Error::Invalid(format!("restore report: {e}")))
        }
        ["snapshot", "list"] => {
            let vol = r.volume().clone();
            let (list, status) = tokio::task::spawn_blocking(move || {
                Ok::<_, Error>((vol.snapshot_list()?, vol.snapshot_status()))
            })
            .await
            .map_err(|e| Error::Invalid(format!("snapshot task: {e}")))??;
            Ok(json!({ "snapshots": list, "status": status }))
        }
        ["snapshot", "create", ..] => {
            // The name is the rest of the line (the core says whether it is a good one).
            let name = after_words(line, 2).map(str::to_string);
            let vol = r.volume().clone();
            let asked = name.clone();
            let info = tokio::task::spawn_blocking(move || vol.snapshot_create(asked.as_deref()))
                .await
                .map_err(|e| Error::Invalid(format!("snapshot task: {e}")))?
                .map_err(|e| match (e, &name) {
                    (Error::Exists, Some(n)) => {
                        Error::Invalid(format!("a snapshot named {n:?} exists already"))
                    }
                    (e, _) => e,
                })?;
            serde_json::to_value(info).map_err(|e| Error::Invalid(format!("snapshot info: {e}")))
        }
        ["snapshot", "delete", _, ..] => {
            let name = after_words(line, 2).unwrap_or_default().to_string();
            let vol = r.volume().clone();
            let asked = name.clone();
            tokio::task::spawn_blocking(move || vol.snapshot_delete(&asked))
                .await
                .map_err(|e| Error::Invalid(format!("snapshot task: {e}")))?
                .map_err(|e| match e {
                    Error::NotFound => Error::Invalid(format!(
                        "no snapshot named {name:?} (`tiergate snapshot list` shows them)"
                    )),
                    e => e,
                })?;
            Ok(json!({ "deleted": name }))
        }
        ["gc"] => {
            let rep = tokio::task::spawn_blocking(move || t.gc())
                .await
                .map_err(|e| Error::Invalid(format!("gc task: {e}")))??;
            serde_json::to_value(rep).map_err(|e| Error::Invalid(format!("gc report: {e}")))
        }
        _ => Err(Error::Invalid(format!(
            "unknown request {:?} (expected sync [SECONDS], evict, gc, recycle list [all], recycle restore INO [PATH], \
             recycle restore-path {{\"path\": P, \"to\": Q}}, \
             snapshot list, snapshot create [NAME], snapshot delete NAME, status or report)",
            line.trim()
        ))),
    }
}

/// The rest of a request line after its first `n` words, trimmed; None if nothing is left. A
/// name or path there may hold spaces.
fn after_words(line: &str, n: usize) -> Option<&str> {
    let mut rest = line.trim();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = rest[end..].trim_start();
    }
    let rest = rest.trim_end();
    (!rest.is_empty()).then_some(rest)
}

fn sync_json(r: &SyncReport) -> serde_json::Value {
    json!({
        "complete": r.complete,
        "packs": r.packs,
        "bytes": r.bytes,
        "pending_packs": r.pending_packs,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "last_error": r.last_error,
        "interrupted": r.interrupted,
        "metadata_pending": r.metadata_pending,
        "consistency_point": r.consistency_point,
    })
}

pub fn status_json(s: &TieringStatus) -> serde_json::Value {
    json!({
        "store": s.store,
        "cache_max": s.cache_max,
        "cache_used": s.cache_used,
        "queued_bytes": s.queued_bytes,
        "queued_packs": s.queued_packs,
        "uploading_packs": s.uploading_packs,
        "uploaded_packs": s.uploaded_packs,
        "uploaded_bytes": s.uploaded_bytes,
        "put_requests": s.put_requests,
        "upload_failures": s.upload_failures,
        "evicted_bytes": s.evicted_bytes,
        "fetched_bytes": s.fetched_bytes,
        "get_requests": s.get_requests,
        "throttled_writes": s.throttled_writes,
        "bandwidth_limit": s.bandwidth_limit,
        "consistency_point": s.consistency_point,
        "journal_position": s.journal_position,
        "meta_segments": s.meta_segments,
        "meta_bytes": s.meta_bytes,
        "checkpoints": s.checkpoints,
        "fenced_by": s.fenced_by,
        "last_error": s.last_error.as_ref().map(|(_, m)| m),
    })
}

/// Sends one request to the daemon serving `volume_dir` and returns its JSON answer (an
/// `{"error": ...}` answer becomes an error).
pub fn call(volume_dir: &Path, req: &str) -> Result<serde_json::Value> {
    // One line per request: a name or path with a line break would be cut there.
    if req.contains(['\n', '\r']) {
        return Err(Error::Invalid(format!(
            "{req:?}: a line break in a name or path cannot be sent to the daemon"
        )));
    }
    let path = socket_path(volume_dir);
    let mut s = UnixStream::connect(&path).map_err(|e| {
        Error::io(
            format!(
                "connecting to {} (is `tiergate serve` running on this volume?)",
                path.display()
            ),
            e,
        )
    })?;
    s.write_all(format!("{req}\n").as_bytes())
        .map_err(|e| Error::io("sending the request", e))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| Error::io("reading the answer", e))?;
    let v: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| Error::Invalid(format!("bad answer from the daemon ({e}): {line:?}")))?;
    if let Some(msg) = v.get("error").and_then(|m| m.as_str()) {
        // Said once: the daemon's message already starts with "invalid argument: " when it is one.
        let prefix = Error::Invalid(String::new()).to_string();
        let msg = msg.strip_prefix(prefix.as_str()).unwrap_or(msg);
        return Err(Error::Invalid(msg.to_string()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_of_a_request_line_keeps_its_spaces() {
        assert_eq!(after_words("snapshot create\n", 2), None);
        assert_eq!(after_words("snapshot create   \n", 2), None);
        assert_eq!(
            after_words("snapshot create before upgrade\n", 2),
            Some("before upgrade")
        );
        assert_eq!(after_words("  snapshot   delete  x  y \n", 2), Some("x  y"));
        assert_eq!(
            after_words("recycle restore 17 a b/c d\n", 3),
            Some("a b/c d")
        );
        assert_eq!(after_words("recycle restore 17", 3), None);
    }

    #[test]
    fn the_daemons_error_is_said_once() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap();
        let daemon = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).unwrap();
            let e = Error::Invalid("no snapshot named \"x\"".into()).to_string();
            writeln!(conn, "{}", json!({ "error": e })).unwrap();
        });
        let e = call(dir.path(), "snapshot delete x")
            .unwrap_err()
            .to_string();
        daemon.join().unwrap();
        assert_eq!(e, "invalid argument: no snapshot named \"x\"");
    }

    #[test]
    fn a_request_with_a_line_break_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let e = call(dir.path(), "snapshot create a\nb")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line break"), "{e}");
    }
}

//! The systemd notification protocol (`sd_notify(3)`), without libsystemd or a crate.
//!
//! Under `Type=notify` systemd passes a datagram socket in `NOTIFY_SOCKET`: a path, or an
//! abstract name written with a leading `@`. The service sends newline-separated `KEY=VALUE`
//! assignments to it: `READY=1` once it serves (systemd holds back units ordered after it until
//! then, and `systemctl start` returns), `STATUS=...` (shown by `systemctl status`),
//! `STOPPING=1` when shutdown begins, and `WATCHDOG=1` keep-alives. With `WatchdogSec=` set,
//! systemd exports `WATCHDOG_USEC` (and `WATCHDOG_PID`, the process meant) and kills and
//! restarts the service when no keep-alive arrives within that time.
//!
//! Every function here is a no-op without `NOTIFY_SOCKET`, so the daemon behaves the same when
//! started by hand. A failed send is logged and otherwise ignored: notification is advisory,
//! and the daemon must not stop serving backups because systemd is not listening.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::thread::JoinHandle;
use std::time::Duration;

/// The environment variable naming the notification socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// The watchdog timeout in microseconds, set by systemd when the unit has `WatchdogSec=`.
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// The process the watchdog settings are meant for (absent: whoever reads them).
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";

/// Sends `state` (one or more `KEY=VALUE` lines) to `NOTIFY_SOCKET`. `Ok(false)`: no socket is
/// configured, nothing was sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os(NOTIFY_SOCKET_ENV) else {
        return Ok(false);
    };
    let path = path.into_encoded_bytes();
    let addr = socket_addr(&path)?;
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// The address `NOTIFY_SOCKET` names: a filesystem path, or (leading `@`) an abstract name.
fn socket_addr(path: &[u8]) -> io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    match path {
        [] => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is empty",
        )),
        [b'@', name @ ..] => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        _ => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path)),
    }
}

/// Sends `state`, logging (not returning) a failure.
fn send(state: &str) {
    if let Err(e) = notify(state) {
        let what = state.lines().next().unwrap_or_default();
        tracing::warn!("systemd notification {what:?} not sent: {e}");
    }
}

/// Tells systemd the service is up (`READY=1`), with a status line.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={}", one_line(status)));
}

/// Tells systemd shutdown has begun (`STOPPING=1`).
pub fn stopping() {
    send("STOPPING=1");
}

/// Sets the status line `systemctl status` shows.
pub fn status(msg: &str) {
    send(&format!("STATUS={}", one_line(msg)));
}

/// One keep-alive for the watchdog (`WATCHDOG=1`).
pub fn watchdog_ping() {
    send("WATCHDOG=1");
}

/// A newline would end the assignment and start a bogus one.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The watchdog timeout systemd expects keep-alives within, if one is set for this process:
/// `WATCHDOG_USEC` (positive), and `WATCHDOG_PID`, if set, naming this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var(WATCHDOG_USEC_ENV).ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var(WATCHDOG_PID_ENV) {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Starts a thread that sends a keep-alive every half watchdog interval (systemd's own advice)
/// while `healthy()` says the service answers; `None` if no watchdog is set. When `healthy()`
/// fails or hangs, the keep-alives stop and systemd restarts the service once the interval
/// has passed. The thread ends when `healthy()` returns `None` (the service is going away).
pub fn spawn_watchdog<F>(healthy: F) -> io::Result<Option<JoinHandle<()>>>
where
    F: Fn() -> Option<Result<(), String>> + Send + 'static,
{
    let Some(interval) = watchdog_interval() else {
        return Ok(None);
    };
    if std::env::var_os(NOTIFY_SOCKET_ENV).is_none() {
        return Ok(None);
    }
    let period = interval / 2;
    tracing::info!("systemd watchdog: {interval:?}, keep-alive every {period:?}");
    let handle = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut was_healthy = true;
            loop {
                match healthy() {
                    None => return,
                    Some(Ok(())) => {
                        if !was_healthy {
                            tracing::info!("watchdog: the service answers again");
                        }
                        was_healthy = true;
                        watchdog_ping();
                    }
                    Some(Err(e)) => {
                        if was_healthy {
                            tracing::error!(
                                "watchdog: health check failed, withholding keep-alives \
                                 (systemd restarts the service after {interval:?}): {e}"
                            );
                        }
                        was_healthy = false;
                    }
                }
                std::thread::sleep(period);
            }
        })?;
    Ok(Some(handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    // The environment is process-global: every case that sets it lives in this one test.
    #[test]
    fn protocol_over_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        // Without NOTIFY_SOCKET: nothing is sent, no error.
        std::env::remove_var(NOTIFY_SOCKET_ENV);
        assert!(!notify("READY=1").unwrap());
        ready("x");
        assert!(spawn_watchdog(|| Some(Ok(()))).unwrap().is_none());

        // A filesystem socket.
        std::env::set_var(NOTIFY_SOCKET_ENV, &path);
        ready("mounted at /srv/tiergate\nwebdav on :8080");
        assert_eq!(
            recv(&sock),
            "READY=1\nSTATUS=mounted at /srv/tiergate webdav on :8080"
        );
        status("sealing");
        assert_eq!(recv(&sock), "STATUS=sealing");
        watchdog_ping();
        assert_eq!(recv(&sock), "WATCHDOG=1");
        stopping();
        assert_eq!(recv(&sock), "STOPPING=1");

        // An abstract socket, named with a leading '@'.
        let name = format!("tiergate-notify-test-{}", std::process::id());
        let abs = {
            use std::os::linux::net::SocketAddrExt;
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap()
        };
        abs.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::env::set_var(NOTIFY_SOCKET_ENV, format!("@{name}"));
        status("abstract");
        assert_eq!(recv(&abs), "STATUS=abstract");

        // A socket nobody listens on: an error from notify(), only a log line from the rest.
        std::env::set_var(NOTIFY_SOCKET_ENV, dir.path().join("absent.sock"));
        assert!(notify("STATUS=x").is_err());
        status("x");
        std::env::set_var(NOTIFY_SOCKET_ENV, "");
        assert!(notify("STATUS=x").is_err());

        // The watchdog interval, and whose it is.
        std::env::remove_var(WATCHDOG_PID_ENV);
        std::env::remove_var(WATCHDOG_USEC_ENV);
        assert_eq!(watchdog_interval(), None);
        std::env::set_var(WATCHDOG_USEC_ENV, "0");
        assert_eq!(watchdog_interval(), None);
        std::env::set_var(WATCHDOG_USEC_ENV, "nonsense");
        assert_eq!(watchdog_interval(), None);
        std::env::set_var(WATCHDOG_USEC_ENV, "200000");
        assert_eq!(watchdog_interval(), Some(Duration::from_millis(200)));
        std::env::set_var(WATCHDOG_PID_ENV, std::process::id().to_string());
        assert_eq!(watchdog_interval(), Some(Duration::from_millis(200)));
        std::env::set_var(WATCHDOG_PID_ENV, "1");
        assert_eq!(watchdog_interval(), None, "meant for another process");
        std::env::remove_var(WATCHDOG_PID_ENV);

        // The watchdog thread: keep-alives while healthy, none while not, ends on None.
        std::env::set_var(NOTIFY_SOCKET_ENV, &path);
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = calls.clone();
        let t = spawn_watchdog(
            move || match c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Some(Ok(())),
                2 => Some(Err("volume does not answer".into())),
                3 => Some(Ok(())),
                _ => None,
            },
        )
        .unwrap()
        .expect("watchdog configured");
        t.join().unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 5);
        for _ in 0..3 {
            assert_eq!(recv(&sock), "WATCHDOG=1");
        }
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        assert!(
            sock.recv(&mut buf).is_err(),
            "no keep-alive while unhealthy"
        );

        std::env::remove_var(NOTIFY_SOCKET_ENV);
        std::env::remove_var(WATCHDOG_USEC_ENV);
    }
}

//! `tiergate serve`: open the volume and start the store connection, the status server, the
//! WebDAV share and the FUSE mount; run until SIGTERM/SIGINT or until the mount goes away.
//!
//! Everything that can refuse a start is checked first, before anything starts ([`preflight`]):
//! the mountpoint (a dead mount of this volume left by a crash is cleared; anything else there,
//! a missing or non-empty directory, refuses), the users file and TLS files, and both ports
//! (bound here and handed on, so nobody can take them in between). A failed check is one
//! message naming the fix and exit status 1, with no listener, lease, snapshot or mount made.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use tiergate::config::Config;
use tiergate::crypto::KdfParams;
use tiergate::fuse::{self, FuseOptions};
use tiergate::status::Reporter;
use tiergate::tiering::{Tiering, TieringOptions};
use tiergate::volume::Volume;

use super::open;

/// The demo's status page and share ports when free at its first start (else any free port).
const DEMO_WEB_PORT: u16 = 8081;
const DEMO_WEBDAV_PORT: u16 = 8080;

/// A free loopback port: `preferred` if it can be bound now, else one the kernel picks.
fn free_port(preferred: u16) -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", preferred))
        .or_else(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .context("finding a free port for the demo")?;
    Ok(l.local_addr()?.port())
}

/// Writes the demo config (and a random passphrase, 0600) under ./tiergate-demo/ once. The
/// status page's and the share's ports are picked at the first start and written into it, so
/// that a bookmark or a configured client (an rclone remote) keeps working across restarts; a
/// demo config from an older version without them gets them added.
fn demo_config() -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::current_dir()?.join("tiergate-demo");
    let cfg_path = dir.join("tiergate.toml");
    if !cfg_path.exists() {
        std::fs::create_dir_all(dir.join("mnt"))?;
        let pass: String = hex::encode(rand::random::<[u8; 24]>());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("passphrase"))
            .context("writing the demo passphrase")?;
        f.write_all(format!("{pass}\n").as_bytes())?;
        std::fs::write(
            &cfg_path,
            "# Demo volume written by `tiergate serve` without --config.\n\
             [volume]\npath = \"volume\"\npassphrase_file = \"passphrase\"\n\n\
             [fuse]\nmountpoint = \"mnt\"\n",
        )?;
        eprintln!(
            "tiergate: demo volume in {} (passphrase in {}/passphrase; keep it to read the data)",
            dir.display(),
            dir.display()
        );
    }
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let mut add = String::new();
    for (section, preferred, what) in [
        ("web", DEMO_WEB_PORT, "bookmarks"),
        (
            "webdav",
            DEMO_WEBDAV_PORT,
            "configured clients (an rclone remote)",
        ),
    ] {
        if !text.lines().any(|l| l.trim() == format!("[{section}]")) {
            let port = free_port(preferred)?;
            add.push_str(&format!(
                "\n[{section}]\n# Picked at the demo's first start and kept, so that {what} \
                 keep working.\nlisten = \"127.0.0.1:{port}\"\n"
            ));
        }
    }
    if !add.is_empty() {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&cfg_path)
            .with_context(|| format!("writing {}", cfg_path.display()))?;
        f.write_all(add.as_bytes())?;
    }
    Ok(cfg_path)
}

/// What the start-up checks prepared: the mountpoint to mount (absolute, free) and the bound
/// listeners of the status page and the share.
struct Preflight {
    mountpoint: Option<PathBuf>,
    web: Option<std::net::TcpListener>,
    webdav: Option<std::net::TcpListener>,
}

/// The start-up checks, in the order a person would fix them: mountpoint, users and TLS files,
/// ports. Runs before the tiering, the status server, the share, the control socket or a
/// snapshot starts; an error names the fix.
fn preflight(cfg: &Config, cfg_path: &Path, vol: &Volume) -> Result<Preflight> {
    let mountpoint = match &cfg.fuse.mountpoint {
        None => None,
        Some(_) if !Path::new("/dev/fuse").exists() => {
            tracing::warn!("FUSE is not available here (no /dev/fuse): running without the mount");
            None
        }
        Some(mp) => {
            let (abs, _) =
                fuse::prepare_mountpoint(mp, &vol.info().volume_id, cfg.fuse.allow_non_empty)?;
            Some(abs)
        }
    };
    if cfg.webdav.enabled {
        if cfg.webdav.auth_required() {
            let path = cfg.webdav.users_path();
            let users = tiergate::auth::Users::load(&path).with_context(|| {
                format!(
                    "the WebDAV share on {} requires authentication: its users file {} \
                     (webdav.users_file) cannot be read; add a user with `tiergate user add \
                     NAME --config {}`",
                    cfg.webdav.listen,
                    path.display(),
                    cfg_path.display()
                )
            })?;
            anyhow::ensure!(
                users.count() > 0,
                "the WebDAV share on {} requires authentication, but the users file {} has no \
                 users: add one with `tiergate user add NAME --config {}`",
                cfg.webdav.listen,
                path.display(),
                cfg_path.display()
            );
        }
        cfg.webdav
            .tls()
            .context("the share's TLS (webdav.tls_cert, webdav.tls_key)")?;
    }
    if cfg.web.enabled {
        cfg.web
            .tls()
            .context("the status page's TLS (web.tls_cert, web.tls_key)")?;
    }
    let web = cfg
        .web
        .enabled
        .then(|| listen(cfg.web.listen, "the status page", "[web] listen", cfg_path))
        .transpose()?;
    let webdav = cfg
        .webdav
        .enabled
        .then(|| {
            listen(
                cfg.webdav.listen,
                "the WebDAV share",
                "[webdav] listen",
                cfg_path,
            )
        })
        .transpose()?;
    Ok(Preflight {
        mountpoint,
        web,
        webdav,
    })
}

/// Binds `addr` for `what` (configured as `key`), with the fix in the message if it cannot.
fn listen(
    addr: SocketAddr,
    what: &str,
    key: &str,
    cfg_path: &Path,
) -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        let fix = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "port {} is in use by another program (or another tiergate): stop it, or set \
                 {key} in {} to a free port",
                addr.port(),
                cfg_path.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "a port below 1024 needs CAP_NET_BIND_SERVICE (see systemd/README.md), or set \
                 {key} in {} to a port above 1023",
                cfg_path.display()
            ),
            _ => format!(
                "set {key} in {} to an address of this machine",
                cfg_path.display()
            ),
        };
        anyhow::anyhow!(
            "{what} cannot listen on {addr} (port {}): {e}; {fix}",
            addr.port()
        )
    })?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The demo's one banner: where everything is and how to stop it.
fn demo_banner(cfg: &Config, mounted: Option<&Path>, share: Option<&str>, page: Option<&str>) {
    let pid = std::process::id();
    let mut b = format!("\ntiergate demo is running (pid {pid})\n");
    match mounted {
        Some(mp) => b.push_str(&format!("  mounted at    {}\n", mp.display())),
        None => b.push_str("  mounted at    (not mounted: see the log above)\n"),
    }
    if let Some(url) = share {
        b.push_str(&format!(
            "  share         {url}  (WebDAV; this port is kept in tiergate-demo/tiergate.toml)\n"
        ));
    }
    if let Some(url) = page {
        b.push_str(&format!("  status page   {url}\n"));
    }
    if cfg.s3.is_none() {
        b.push_str(&format!(
            "  store         {}: the store is a directory on this disk: nothing is off-site\n",
            cfg.backend_dir().display()
        ));
    }
    b.push_str(&format!("  stop it with  Ctrl-C, or `kill {pid}`\n\n"));
    // The banner is for a person; a closed stderr must not stop the daemon.
    let _ = std::io::stderr().lock().write_all(b.as_bytes());
}

pub fn serve(config: Option<&Path>, take_over: bool) -> Result<()> {
    let demo = config.is_none();
    let cfg_path = match config {
        Some(p) => p.to_path_buf(),
        None => demo_config()?,
    };
    let cfg = Config::load(&cfg_path)?;
    if demo && !Volume::exists(&cfg.volume.path) {
        Volume::create(
            &cfg.volume.path,
            &cfg.passphrase()?.0,
            cfg.chunking.params(),
            KdfParams::interactive(),
        )?;
    }
    // Block the shutdown signals before any thread starts, so every thread inherits the mask
    // and only the main thread's sigtimedwait sees them.
    let mut sigs = nix::sys::signal::SigSet::empty();
    sigs.add(nix::sys::signal::Signal::SIGINT);
    sigs.add(nix::sys::signal::Signal::SIGTERM);
    sigs.thread_block()?;

    tiergate::notify::status("opening the volume");
    let vol = open(&cfg)?;
    tracing::info!(volume = %vol.info().volume_id, path = %cfg.volume.path.display(), "volume open");
    tiergate::notify::status("checking the mountpoint, the users file and the ports");
    let pre = preflight(&cfg, &cfg_path, &vol)?;
    if cfg.s3.is_none() && !demo {
        tracing::warn!(
            store = %cfg.backend_dir().display(),
            "the store is a directory on this disk: nothing is off-site (configure [s3])"
        );
    }
    let reporter = start_tiering(&vol, &cfg, take_over)?;
    let tiering = reporter.tiering().clone();
    let (web, web_url) = start_web(&reporter, &cfg, pre.web)?;
    let ticker = {
        let vol = vol.clone();
        std::thread::Builder::new()
            .name("tick".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                if Arc::strong_count(&vol) == 1 {
                    return;
                }
                if let Err(e) = vol.tick() {
                    tracing::error!("background commit: {e}");
                }
            })?
    };

    // The WebDAV share starts before the mount, so its address is in the log by the time the
    // mount appears. It runs on its own small tokio runtime; blocking core calls go to that
    // runtime's blocking pool.
    let (webdav, webdav_url) = match pre.webdav {
        Some(listener) => {
            let (rt, stop, url) = start_webdav(&vol, &cfg, listener)?;
            (Some((rt, stop)), Some(url))
        }
        None => (None, None),
    };

    let mut session = None;
    if let Some(mp) = &pre.mountpoint {
        let opts = FuseOptions {
            allow_other: cfg.fuse.allow_other,
            writeback_cache: cfg.fuse.writeback_cache,
            threads: cfg.fuse.threads,
            readahead: cfg.fuse.readahead.bytes(),
        };
        match fuse::mount(vol.clone(), mp, &opts) {
            Ok(s) => {
                tracing::info!(mountpoint = %mp.display(), "mounted");
                session = Some(s);
            }
            // The mountpoint passed its checks: what is left is mount(2) itself (no
            // permission, no fusermount3). A configured daemon refuses to run without it.
            Err(e) if !demo => return Err(e),
            Err(e) => tracing::warn!("FUSE mount failed, running without it: {e:#}"),
        }
    }
    if session.is_none() && cfg.fuse.mountpoint.is_some() && webdav.is_none() {
        tracing::warn!("no front-end is running; press Ctrl-C to stop");
    }
    // Scheduled snapshots only once everything serves (a refused start takes none).
    let snapshots = start_snapshots(&vol)?;
    // Tell systemd (Type=notify) we serve, and keep its watchdog fed while the volume answers.
    let mut serving = Vec::new();
    match (&session, &pre.mountpoint) {
        (Some(_), Some(mp)) => serving.push(format!("mounted at {}", mp.display())),
        _ => serving.push("not mounted".to_string()),
    }
    serving.push(format!("webdav {}", webdav_url.as_deref().unwrap_or("off")));
    serving.push(format!(
        "status page {}",
        web_url.as_deref().unwrap_or("off")
    ));
    tiergate::notify::ready(&serving.join(", "));
    if demo {
        let mounted = session.as_ref().and(pre.mountpoint.as_deref());
        demo_banner(&cfg, mounted, webdav_url.as_deref(), web_url.as_deref());
    }
    let watched = Arc::downgrade(&vol);
    tiergate::notify::spawn_watchdog(move || {
        let vol = watched.upgrade()?;
        Some(
            vol.getattr(tiergate::meta::ROOT_INO)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        )
    })?;

    // Wait for SIGINT/SIGTERM, or for the mount to go away (someone ran umount).
    loop {
        let ts = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: sigtimedwait with a valid, initialized signal set and timeout.
        let sig = unsafe { libc::sigtimedwait(sigs.as_ref(), std::ptr::null_mut(), &ts) };
        if sig > 0 {
            tracing::info!("signal {sig}: shutting down");
            tiergate::notify::stopping();
            break;
        }
        if let Some(s) = &session {
            if s.guard.is_finished() {
                tracing::info!("the mount was unmounted from outside: shutting down");
                tiergate::notify::stopping();
                break;
            }
        }
    }
    if let Some((rt, stop)) = webdav {
        let _ = stop.send(true);
        rt.shutdown_timeout(Duration::from_secs(10));
    }
    tiergate::notify::status("stopping: unmounting");
    if let Some(s) = session {
        // The session ends by itself only when the kernel closed the connection: someone
        // unmounted it (fuser then still tries an unmount of its own, which fails).
        let went_away = s.guard.is_finished();
        let mp = pre.mountpoint.as_deref().unwrap_or(Path::new("."));
        if !went_away {
            tracing::info!("unmounting {}", mp.display());
        }
        if let Err(e) = s.umount_and_join() {
            if went_away && !tiergate::fuse::mount_at(mp).is_some_and(|m| m.is_tiergate()) {
                tracing::debug!("{} was unmounted already: {e}", mp.display());
            } else {
                unmount_lazily(mp, &e);
            }
        }
    }
    {
        let (app, stop) = web;
        app.stop();
        let _ = stop.send(true);
    }
    // No scheduled snapshot after the final commit: wait for one in progress, then stop.
    let (stop_snapshots, snapshot_thread) = snapshots;
    drop(stop_snapshots);
    if snapshot_thread.join().is_err() {
        tracing::error!("the snapshot thread panicked");
    }
    tiergate::notify::status("stopping: sealing and committing");
    let done = vol.shutdown().context("final commit");
    // Leave as much off-site as a short wait allows, unless the store is failing anyway.
    if done.is_ok() && tiering.status().last_error.is_none() {
        tiergate::notify::status("stopping: final off-site sync (up to 10 s)");
        match tiering.sync(Some(Duration::from_secs(10))) {
            Ok(r) if r.complete && cfg.s3.is_none() => tracing::info!(
                consistency_point = r.consistency_point,
                "everything is in the store (a directory on this disk: nothing is off-site)"
            ),
            Ok(r) if r.complete => tracing::info!(
                consistency_point = r.consistency_point,
                "everything is off-site"
            ),
            Ok(r) => tracing::warn!(
                pending_packs = r.pending_packs,
                metadata_pending = r.metadata_pending,
                "stopping with data not yet off-site; it is uploaded at the next start"
            ),
            Err(e) => tracing::warn!("final off-site sync: {e}"),
        }
    }
    tiering.stop();
    done?;
    drop(ticker);
    tracing::info!("stopped cleanly");
    Ok(())
}

/// How often the daemon asks the volume whether a scheduled snapshot is due.
const SNAPSHOT_TICK: Duration = Duration::from_secs(60);

/// Starts the thread "snapshots": [`Volume::snapshot_tick`] at once and then every
/// [`SNAPSHOT_TICK`] (the volume knows the schedule and keep rules; a tick with nothing due costs
/// nothing). It ends when the returned sender is dropped, after the tick in progress.
fn start_snapshots(
    vol: &Arc<Volume>,
) -> Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    use std::sync::mpsc::RecvTimeoutError;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let vol = vol.clone();
    let thread = std::thread::Builder::new()
        .name("snapshots".into())
        .spawn(move || loop {
            if let Err(e) = vol.snapshot_tick() {
                tracing::error!("scheduled snapshot: {e}");
            }
            match stopped.recv_timeout(SNAPSHOT_TICK) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        })?;
    Ok((stop, thread))
}

/// Connects the off-site store (probing it in the background: a failure is logged with what
/// to fix, and the daemon serves anyway, queueing uploads until the store works), starts the uploader,
/// evictor and fetcher, and the control socket.
fn start_tiering(vol: &Arc<Volume>, cfg: &Config, take_over: bool) -> Result<Arc<Reporter>> {
    let backend = cfg.open_backend()?;
    // Configured Object Lock on a bucket without it: refuse before anything is written, rather
    // than upload nothing (S3 refuses lock headers there) with the reason only in the log. A
    // store that does not answer is no reason to refuse (as for the lease).
    if backend.retention().is_some() {
        let check = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the object lock check")?
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(15),
                    tiergate::backend::check_object_lock(backend.as_ref()),
                )
                .await
            });
        match check {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == tiergate::backend::ErrorKind::Unsupported => {
                anyhow::bail!("{}", e.message());
            }
            Ok(Err(e)) => tracing::warn!("cannot check the bucket's object lock yet: {e}"),
            Err(_) => tracing::warn!("the store did not answer the object lock check within 15 s"),
        }
    }
    let opts = TieringOptions::from_config(cfg)?;
    let tiering = Tiering::start(vol.clone(), backend.clone(), opts, take_over)?;
    let rt = tiering.handle();
    // Two appliances must never write one volume: refuse to start if another holds the lease.
    // An unreachable store is not a reason to refuse; uploads wait until the lease is ours.
    let claim = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(15), tiering.claim_lease()).await
    });
    match claim {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            let holder = tiering.status().fenced_by.unwrap_or_default();
            tiering.stop();
            anyhow::bail!(
                "this volume's bucket prefix is in use by {holder}. Two appliances must not \
                 write one volume; if that appliance is gone for good (it failed and this one \
                 was rebuilt with `tiergate recover`), start with --take-over"
            );
        }
        Ok(Err(e)) => {
            tracing::warn!("cannot check the volume's lease yet ({e}); uploads wait until it can")
        }
        Err(_) => tracing::warn!(
            "the store did not answer the lease check within 15 s; uploads wait until it does"
        ),
    }
    // In the background: an unreachable store must not delay the mount.
    rt.spawn(async move {
        match tiergate::backend::probe(backend.as_ref()).await {
            Ok(report) => tracing::info!(store = %report.store, object_lock = %report.object_lock, "store probe passed"),
            Err(e) => {
                // Not a reason to refuse the start, but an operator must see it: in the log
                // and among the status page's events (the management API's too).
                let msg = format!("store probe failed; uploads are retried until it works: {e}");
                tiergate::events::record("error", msg.clone());
                tracing::error!("{msg}");
            }
        }
    });
    let reporter = Reporter::new(vol.clone(), tiering.clone());
    tiergate::control::serve(&rt, vol.dir(), reporter.clone())?;
    Ok(reporter)
}

/// The status server's app and the switch that stops its listener.
type WebServer = (Arc<tiergate::web::WebApp>, tokio::sync::watch::Sender<bool>);

/// Starts the status page, JSON API, metrics and management API on the tiering runtime;
/// returns the app and the switch that stops its listener, and the page's URL if it listens.
fn start_web(
    reporter: &Arc<Reporter>,
    cfg: &Config,
    listener: Option<std::net::TcpListener>,
) -> Result<(WebServer, Option<String>)> {
    use tiergate::repair;
    let rt = reporter.tiering().handle();
    // Settings saved through the management API, the history and the heartbeat apply even
    // when the page itself is switched off.
    let mut app = tiergate::web::WebApp::new(reporter.clone(), &cfg.web, &cfg.volume.path)
        .context("status server")?;
    // The management API's verify: the metadata-level check of `tiergate verify --remote`
    // (every referenced chunk indexed, in a pack that exists locally or in the store), run
    // on a thread of its own (it drives the store through a runtime of its own).
    let backend = cfg.open_backend()?;
    let vol = reporter.volume().clone();
    Arc::get_mut(&mut app).expect("a new app").verify = Some(Arc::new(move || {
        let (vol, backend) = (vol.clone(), backend.clone());
        std::thread::spawn(move || -> tiergate::Result<serde_json::Value> {
            let store = repair::Store::new(backend)?;
            let opts = repair::VerifyOptions {
                remote: true,
                deep: false,
            };
            let r = repair::verify(&vol, &store, opts, &|_, _, _| {})?;
            Ok(serde_json::json!({
                "clean": r.is_clean(),
                "files": r.files,
                "chunks": r.chunks,
                "damaged_files": r.damaged.iter().map(|d| d.paths.join(", ")).collect::<Vec<_>>(),
                "pack_problems": r.pack_problems,
                "elapsed_s": r.elapsed.as_secs_f64(),
                "report": r.to_string(),
            }))
        })
        .join()
        .map_err(|_| tiergate::Error::Invalid("verify thread panicked".into()))?
    }));
    tiergate::web::spawn_background(&app, &rt);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut url = None;
    if let Some(listener) = listener {
        // Bound by the start-up checks: a busy port refused the start there.
        let listener = {
            let _rt = rt.enter();
            tokio::net::TcpListener::from_std(listener).context("the status page's listener")?
        };
        let addr = listener.local_addr()?;
        let scheme = app.scheme();
        tracing::info!("web status page on {scheme}://{addr}/");
        url = Some(format!("{scheme}://{addr}/"));
        rt.spawn(tiergate::web::run(listener, app.clone(), stopped));
    }
    Ok(((app, stop), url))
}

/// Starts the WebDAV share on `listener`; returns its runtime, the switch that stops it, and
/// its URL.
fn start_webdav(
    vol: &Arc<Volume>,
    cfg: &Config,
    listener: std::net::TcpListener,
) -> Result<(
    tokio::runtime::Runtime,
    tokio::sync::watch::Sender<bool>,
    String,
)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("webdav")
        .enable_all()
        .build()
        .context("starting the WebDAV runtime")?;
    let share =
        Arc::new(tiergate::webdav::Share::new(vol.clone(), &cfg.webdav).context("WebDAV share")?);
    let listener = {
        let _rt = rt.enter();
        tokio::net::TcpListener::from_std(listener).context("the share's listener")?
    };
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tracing::info!(
        "webdav listening on {}://{addr}/{}",
        share.scheme(),
        if cfg.webdav.auth_required() {
            " (authentication required)"
        } else {
            ""
        }
    );
    let url = format!("{}://{addr}/", share.scheme());
    let (tls, limits) = (share.tls(), cfg.webdav.limits());
    rt.spawn(tiergate::serve::serve(
        "webdav",
        listener,
        tls,
        limits,
        share.router(),
        stopped,
    ));
    Ok((rt, stop, url))
}

/// Busy (a shell or an open file inside): detach the mount from the namespace instead. The
/// kernel drops it once its last user goes; our exit ends the connection.
fn unmount_lazily(mp: &Path, e: &std::io::Error) {
    tracing::warn!(
        "unmount of {}: {e}; detaching it lazily (processes using it will see errors)",
        mp.display()
    );
    if let Err(e) = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH) {
        tracing::error!("lazy unmount of {} failed: {e}", mp.display());
    }
}

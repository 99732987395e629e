//! `tiergate serve`: open the volume and start the store connection, the status server, the
//! WebDAV share and the FUSE mount; run until SIGTERM/SIGINT or until the mount goes away.

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

/// Writes the demo config (and a random passphrase, 0600) under ./tiergate-demo/ once.
fn demo_config() -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::current_dir()?.join("tiergate-demo");
    let cfg_path = dir.join("tiergate.toml");
    if cfg_path.exists() {
        return Ok(cfg_path);
    }
    std::fs::create_dir_all(dir.join("mnt"))?;
    let pass: String = hex::encode(rand::random::<[u8; 24]>());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("passphrase"))
        .context("writing the demo passphrase")?;
    std::io::Write::write_all(&mut f, format!("{pass}\n").as_bytes())?;
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
    Ok(cfg_path)
}

pub fn serve(config: Option<&Path>, take_over: bool) -> Result<()> {
    let cfg_path = match config {
        Some(p) => p.to_path_buf(),
        None => demo_config()?,
    };
    let cfg = Config::load(&cfg_path)?;
    if config.is_none() && !Volume::exists(&cfg.volume.path) {
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
    let reporter = start_tiering(&vol, &cfg, take_over)?;
    let tiering = reporter.tiering().clone();
    let (web, web_url) = start_web(&reporter, &cfg)?;
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
    let snapshots = start_snapshots(&vol)?;

    // The WebDAV share starts before the mount, so its address is in the log by the time the
    // mount appears. It runs on its own small tokio runtime; blocking core calls go to that
    // runtime's blocking pool.
    let (webdav, webdav_url) = if cfg.webdav.enabled {
        let (rt, stop, url) = start_webdav(&vol, &cfg)?;
        (Some((rt, stop)), Some(url))
    } else {
        (None, None)
    };

    let mut session = None;
    if let Some(mp) = &cfg.fuse.mountpoint {
        if !Path::new("/dev/fuse").exists() {
            tracing::warn!("FUSE is not available here (no /dev/fuse): running without the mount");
        } else {
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
                // A busy or broken mountpoint is a configuration error: refuse to start.
                Err(e) if config.is_some() => return Err(e),
                Err(e) => tracing::warn!("FUSE mount failed, running without it: {e:#}"),
            }
        }
    }
    if session.is_none() && cfg.fuse.mountpoint.is_some() && webdav.is_none() {
        tracing::warn!("no front-end is running; press Ctrl-C to stop");
    }
    // Tell systemd (Type=notify) we serve, and keep its watchdog fed while the volume answers.
    let mut serving = Vec::new();
    match (&session, &cfg.fuse.mountpoint) {
        (Some(_), Some(mp)) => serving.push(format!("mounted at {}", mp.display())),
        _ => serving.push("not mounted".to_string()),
    }
    serving.push(format!("webdav {}", webdav_url.as_deref().unwrap_or("off")));
    serving.push(format!(
        "status page {}",
        web_url.as_deref().unwrap_or("off")
    ));
    tiergate::notify::ready(&serving.join(", "));
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
                tracing::info!("mount went away: shutting down");
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
        if let Err(e) = s.umount_and_join() {
            // Busy (a shell or an open file inside): detach it from the namespace instead. The
            // kernel drops the mount once its last user goes; our exit ends the connection.
            let mp = cfg.fuse.mountpoint.as_deref().unwrap_or(Path::new("."));
            tracing::warn!(
                "unmount of {}: {e}; detaching it lazily (processes using it will see errors)",
                mp.display()
            );
            if let Err(e) = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH) {
                tracing::error!("lazy unmount of {} failed: {e}", mp.display());
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
    let backend = tiergate::backend::from_config(cfg)?;
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
            Err(e) => tracing::error!("store probe failed; uploads are retried until it works: {e}"),
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
fn start_web(reporter: &Arc<Reporter>, cfg: &Config) -> Result<(WebServer, Option<String>)> {
    use tiergate::repair;
    let rt = reporter.tiering().handle();
    // Settings saved through the management API, the history and the heartbeat apply even
    // when the page itself is switched off.
    let mut app = tiergate::web::WebApp::new(reporter.clone(), &cfg.web, &cfg.volume.path)
        .context("status server")?;
    // The management API's verify: the metadata-level check of `tiergate verify --remote`
    // (every referenced chunk indexed, in a pack that exists locally or in the store), run
    // on a thread of its own (it drives the store through a runtime of its own).
    let backend = tiergate::backend::from_config(cfg)?;
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
    if cfg.web.enabled {
        // Without its status page the appliance still stores backups: say so loudly, go on.
        match rt.block_on(tiergate::web::bind(&cfg.web)) {
            Ok((listener, addr)) => {
                let scheme = app.scheme();
                tracing::info!("web status page on {scheme}://{addr}/");
                url = Some(format!("{scheme}://{addr}/"));
                rt.spawn(tiergate::web::run(listener, app.clone(), stopped));
            }
            Err(e) => tracing::error!("status page not started: {e:#}"),
        }
    }
    Ok(((app, stop), url))
}

/// Starts the WebDAV share; returns its runtime, the switch that stops it, and its URL.
fn start_webdav(
    vol: &Arc<Volume>,
    cfg: &Config,
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
    let (listener, addr) = rt.block_on(tiergate::webdav::bind(&cfg.webdav))?;
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

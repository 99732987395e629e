//! The `tiergate` command: create a volume, run the appliance.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use tiergate::config::{self, Config};
use tiergate::crypto::KdfParams;
use tiergate::fuse::{self, FuseOptions};
use tiergate::status::Reporter;
use tiergate::tiering::{Tiering, TieringOptions};
use tiergate::volume::{Volume, VolumeOptions};

#[derive(Parser)]
#[command(
    name = "tiergate",
    version,
    about = "Deduplicating, encrypting backup gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a volume from a config file, or print an annotated example config.
    Init {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the annotated example configuration and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Run the appliance. Without --config: a demo volume under ./tiergate-demo/.
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Claim the volume's lease in the bucket even though another appliance holds it: for
        /// the replacement of a failed appliance, after `tiergate recover`.
        #[arg(long)]
        take_over: bool,
    },
    /// Rebuild a lost appliance's volume from the bucket and the passphrase, into the empty
    /// `volume.path` of the config. Then `tiergate serve --take-over`.
    Recover {
        #[arg(long, short)]
        config: PathBuf,
        /// Recover even though the bucket's journal stops short of the newest authenticated
        /// consistency point (objects deleted or damaged), or no authenticated head is left:
        /// every change after the point reached is lost.
        #[arg(long)]
        accept_older: bool,
    },
    /// Tiering state of the running daemon: cache, upload queue, consistency point, errors.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print space and dedup figures of a volume that is not being served.
    Stats {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check the object store of a config (the `[s3]` bucket, or the local backend
    /// directory): reachable, credentials, bucket, write/read/list/delete, object lock.
    Probe {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Wait until everything written so far is off-site (asks the running daemon). Exit
    /// status 0: done; 2: the timeout passed first; 1: error.
    Sync {
        #[arg(long, short)]
        config: PathBuf,
        /// Give up after this long: "90" (seconds), "30s", "10m", "2h".
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop every off-site pack from the local cache now (asks the running daemon); later
    /// reads fetch from the store. Data not yet off-site stays.
    Evict {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Collect garbage now (asks the running daemon): drop packs no file needs, rewrite
    /// sparse ones, delete dropped packs off-site once that is safe (docs/RETENTION.md).
    Gc {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the daemon's report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The recycle bin: files deleted within `[recycle] days` (asks the running daemon).
    Recycle {
        #[command(subcommand)]
        cmd: RecycleCmd,
    },
    /// WebDAV locks held on the share: list them, or clear those a vanished client left
    /// (offline: the daemon must be stopped; it reads the locks at start).
    Locks {
        #[command(subcommand)]
        cmd: LocksCmd,
    },
    /// Snapshots: read-only views of the whole volume under /.snapshots/NAME/ in the mount and
    /// the share (asks the running daemon).
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
    /// Manage the users of the WebDAV share (its `webdav.users_file`).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// The volume's key (offline: the daemon must be stopped).
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// The chunk index (offline: the daemon must be stopped).
    Index {
        #[command(subcommand)]
        cmd: IndexCmd,
    },
    /// Check that every file's data is indexed and stored, locally or off-site; repair a damaged
    /// local copy from a verified off-site one (offline: the daemon must be stopped). Exit
    /// status 0: no damage (after repairs); 1: damage, listed per file, or an error.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        /// Also ask the store: every off-site pack exists with its recorded size (with --deep,
        /// the off-site copies of cached packs are read too).
        #[arg(long)]
        remote: bool,
        /// Read and decode every chunk the files reference (authentication and content hash).
        #[arg(long)]
        deep: bool,
    },
}

#[derive(Subcommand)]
enum RecycleCmd {
    /// The files in the recycle bin, oldest first: inode number, when deleted, size, where.
    List {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Give a recycled file a name again: where it was (a suffix if the name is taken), or
    /// the path given with --to (relative to the volume's root).
    Restore {
        /// Its inode number, from `tiergate recycle list`.
        ino: u64,
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum LocksCmd {
    /// Every lock: token, path, user, expiry, scope.
    List {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove locks: the one with this token, or those on this path (and below it), or with
    /// --all every lock.
    Clear {
        /// A lock token (`urn:uuid:...`) or a path on the share (`/dir/file`).
        target: Option<String>,
        #[arg(long, conflicts_with = "target")]
        all: bool,
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Take a snapshot now; it stays until `tiergate snapshot delete` (the schedule's keep rules
    /// prune only scheduled ones).
    Create {
        /// Its name. Default: "manual-YYYY-MM-DD_HHMMSSZ" (UTC).
        name: Option<String>,
        #[arg(long, short)]
        config: PathBuf,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The snapshots, oldest first: name, when taken (UTC), scheduled or manual; and the
    /// schedule.
    List {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot. Data only it held is freed by the next GC pass.
    Delete {
        name: String,
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user or set a new password. The password is read from standard input (first
    /// line), or asked for twice when standard input is a terminal.
    Add {
        name: String,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove a user.
    Del {
        name: String,
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Caps glibc's malloc arenas at one per core (at least two) unless `MALLOC_ARENA_MAX` is set.
/// glibc's default of eight per core lets each of the FUSE, commit and tiering threads keep
/// chunk-sized buffers in an arena of its own, freed but never returned: in the benchmark's
/// random-overwrite workload the daemon's peak RSS was 1,211 MiB with the default and 698 MiB
/// with two arenas, at the same throughput (docs/BENCHMARKS.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // SAFETY: mallopt only sets a malloc tunable; called before any other thread starts.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, cores.max(2) as libc::c_int) };
    }
}

fn main() {
    limit_malloc_arenas();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in journald or log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Init {
            config,
            print_config,
        } => {
            if print_config {
                print!("{}", config::EXAMPLE);
                Ok(())
            } else {
                match config {
                    Some(c) => init(&c),
                    None => Err(anyhow::anyhow!(
                        "init needs --config FILE (or --print-config)"
                    )),
                }
            }
        }
        Cmd::Serve { config, take_over } => serve(config.as_deref(), take_over),
        Cmd::Recover {
            config,
            accept_older,
        } => recover(&config, accept_older),
        Cmd::Status { config, json } => status(&config, json),
        Cmd::Stats { config } => stats(&config),
        Cmd::Probe { config } => probe(&config),
        Cmd::User { cmd } => user(cmd),
        Cmd::Sync {
            config,
            timeout,
            json,
        } => sync(&config, timeout, json),
        Cmd::Evict { config } => evict(&config),
        Cmd::Gc { config, json } => gc(&config, json),
        Cmd::Recycle { cmd } => recycle(cmd),
        Cmd::Snapshot { cmd } => snapshot(cmd),
        Cmd::Locks { cmd } => locks(cmd),
        Cmd::Key {
            cmd: KeyCmd::Change { config },
        } => key_change(&config),
        Cmd::Index {
            cmd: IndexCmd::Rebuild { config },
        } => index_rebuild(&config),
        Cmd::Verify {
            config,
            remote,
            deep,
        } => verify(&config, remote, deep),
    };
    if let Err(e) = r {
        eprintln!("tiergate: {e:#}");
        std::process::exit(1);
    }
}

fn volume_options(cfg: &Config) -> VolumeOptions {
    VolumeOptions {
        zstd_level: cfg.volume.zstd_level,
        pack_target_size: cfg.volume.pack_size_mib << 20,
        dirty_limit: cfg.volume.dirty_limit_mib << 20,
        metadata_cache_bytes: cfg.volume.metadata_cache_mib << 20,
    }
}

fn init(path: &Path) -> Result<()> {
    let cfg = Config::load(path)?;
    let pass = cfg.passphrase()?;
    let info = Volume::create(
        &cfg.volume.path,
        &pass.0,
        cfg.chunking.params(),
        KdfParams::interactive(),
    )
    .with_context(|| format!("creating volume in {}", cfg.volume.path.display()))?;
    println!(
        "created volume {} in {}",
        info.volume_id,
        cfg.volume.path.display()
    );
    Ok(())
}

fn open(cfg: &Config) -> Result<Arc<Volume>> {
    let pass = cfg.passphrase()?;
    let vol = Volume::open(&cfg.volume.path, &pass.0, volume_options(cfg))
        .with_context(|| format!("opening volume {}", cfg.volume.path.display()))?;
    vol.set_quota(cfg.quota.limit.map(|l| l.bytes()));
    vol.set_quota_warn_percent(cfg.quota.warn_percent);
    vol.set_recycle_days(cfg.recycle.days);
    vol.set_snapshot_schedule(cfg.snapshots.interval_minutes, cfg.snapshots.keep());
    Ok(vol)
}

fn stats(path: &Path) -> Result<()> {
    let cfg = Config::load(path)?;
    let vol = open(&cfg)?;
    let s = vol.stats()?;
    let st = s.stats;
    println!("logical bytes:   {}", st.logical_bytes);
    println!("unique bytes:    {}", st.unique_bytes);
    println!("stored bytes:    {}", st.stored_bytes);
    println!("chunks:          {}", st.chunks);
    println!("packs:           {} ({} bytes)", s.packs, s.pack_bytes);
    println!("metadata bytes:  {}", s.metadata_bytes);
    if st.stored_bytes > 0 {
        println!(
            "reduction:       {:.2}x",
            st.logical_bytes as f64 / st.stored_bytes as f64
        );
    }
    Ok(())
}

/// `tiergate probe`: prints each step with its time; exit status 1 and the failure class with
/// what to fix if a step fails.
fn probe(path: &Path) -> Result<()> {
    let cfg = Config::load(path)?;
    let backend = tiergate::backend::from_config(&cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the probe runtime")?;
    let report = rt.block_on(tiergate::backend::probe(backend.as_ref()))?;
    println!("{report}");
    println!("probe passed");
    Ok(())
}

fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("bad duration {s:?} (examples: 90, 30s, 10m, 2h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad unit in {s:?}: use s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// With the writeback cache the kernel holds written pages and file times for a while: hands
/// them to the daemon (syncfs of the mount), so that what follows covers what users see there.
fn flush_kernel_cache(cfg: &Config) {
    if let Some(mp) = &cfg.fuse.mountpoint {
        if let Ok(dir) = std::fs::File::open(mp) {
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs on an open directory descriptor.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                tracing::warn!(
                    "syncfs {}: {}",
                    mp.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn sync(path: &Path, timeout: Option<Duration>, json: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    flush_kernel_cache(&cfg);
    let req = match timeout {
        Some(t) => format!("sync {}", t.as_secs_f64()),
        None => "sync".into(),
    };
    let r = tiergate::control::call(&cfg.volume.path, &req)?;
    let complete = r["complete"].as_bool().unwrap_or(false);
    if json {
        println!("{r}");
    } else if complete {
        println!(
            "off-site: everything written before the sync, data and metadata (consistency \
             point {}; waited for {} packs, {}, {:.1} s)",
            r["consistency_point"],
            r["packs"],
            mib(r["bytes"].as_u64().unwrap_or(0)),
            r["elapsed_s"].as_f64().unwrap_or(0.0)
        );
    } else if r["pending_packs"].as_u64() == Some(0) {
        println!(
            "{}: the data is off-site but the metadata naming it is not yet (consistency point \
             {}){}",
            if r["interrupted"].as_bool() == Some(true) {
                "interrupted (the daemon is stopping)"
            } else {
                "timeout"
            },
            r["consistency_point"],
            match r["last_error"].as_str() {
                Some(e) => format!("; last error: {e}"),
                None => String::new(),
            }
        );
    } else {
        let why = if r["interrupted"].as_bool() == Some(true) {
            "interrupted (the daemon is stopping)"
        } else {
            "timeout"
        };
        println!(
            "{why}: {} of {} packs still waiting for upload{}",
            r["pending_packs"],
            r["packs"],
            match r["last_error"].as_str() {
                Some(e) => format!("; last error: {e}"),
                None => String::new(),
            }
        );
    }
    if !complete {
        std::process::exit(2);
    }
    Ok(())
}

fn status(path: &Path, json: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    let r = tiergate::control::call(&cfg.volume.path, "report")?;
    if json {
        println!("{r}");
        return Ok(());
    }
    let u = |sec: &str, k: &str| r[sec][k].as_u64().unwrap_or(0);
    let f = |sec: &str, k: &str| r[sec][k].as_f64().unwrap_or(0.0);
    let rate = |bps: f64| format!("{:.1} MiB/s", bps / (1 << 20) as f64);
    println!(
        "volume:             {} (tiergate {}, up {} s)",
        r["volume"]["id"].as_str().unwrap_or("?"),
        r["version"].as_str().unwrap_or("?"),
        r["uptime_s"]
    );
    println!(
        "store:              {}",
        r["store"]["description"].as_str().unwrap_or("?")
    );
    if let Some(h) = r["store"]["lease_held_by"].as_str() {
        println!("LEASE HELD BY:      {h}: nothing is uploaded from here");
    }
    let (cp, pending) = (
        u("offsite", "consistency_point"),
        u("offsite", "pending_changes"),
    );
    println!(
        "off-site:           {}",
        if r["offsite"]["recoverable"].as_bool() != Some(true) {
            "not yet recoverable from the bucket (no checkpoint off-site yet)".to_string()
        } else if pending == 0 {
            format!("everything is off-site (consistency point {cp})")
        } else {
            format!(
                "{pending} changes waiting (consistency point {cp}; oldest waiting {} s)",
                u("offsite", "oldest_pending_s")
            )
        }
    );
    println!(
        "cache:              {} of {} used ({:.1}%); dirty {} ({:.1}%)",
        mib(u("cache", "used_bytes")),
        mib(u("cache", "max_bytes")),
        f("cache", "used_percent"),
        mib(u("cache", "dirty_bytes")),
        f("cache", "dirty_percent")
    );
    println!(
        "uploads:            {} queued in {} packs; {} uploaded; now {}, average {}; limit {}",
        mib(u("upload", "queued_bytes")),
        u("upload", "queued_packs"),
        mib(u("upload", "uploaded_bytes")),
        rate(f("upload", "rate_bps")),
        rate(f("upload", "average_rate_bps")),
        match r["upload"]["limit_bps"].as_u64() {
            Some(l) => rate(l as f64),
            None => "unlimited".into(),
        }
    );
    println!(
        "fetches:            {} in {} GET requests; now {}",
        mib(u("fetch", "fetched_bytes")),
        u("fetch", "get_requests"),
        rate(f("fetch", "rate_bps"))
    );
    println!(
        "space:              {} logical, {} stored; dedup {:.2}x, compression {:.2}x",
        mib(u("space", "logical_bytes")),
        mib(u("space", "stored_bytes")),
        f("space", "dedup_ratio"),
        f("space", "compression_ratio")
    );
    if let Some(q) = r["space"]["quota_bytes"].as_u64() {
        println!(
            "quota:              {} of {} used ({:.1}%){}",
            mib(u("space", "quota_used_bytes")),
            mib(q),
            f("space", "quota_used_percent"),
            if r["space"]["quota_warning"] == true {
                "  WARNING: above the soft threshold"
            } else {
                ""
            }
        );
    }
    let snap = &r["snapshots"];
    println!(
        "snapshots:          {}; {}",
        match (snap["newest_name"].as_str(), snap["newest_unix"].as_u64()) {
            (Some(n), Some(t)) => format!("{}, newest {n} ({})", snap["count"], utc_time(t)),
            _ => "none".to_string(),
        },
        schedule_text(snap["every_minutes"].as_u64().unwrap_or(0))
    );
    if let Some(e) = snap["last_error"].as_str() {
        println!("snapshot error:     {e}");
    }
    println!(
        "front-ends:         {} open handles, {} WebDAV requests",
        u("frontends", "open_handles"),
        u("frontends", "webdav_requests")
    );
    if let Some(e) = r["store"]["last_error"].as_str() {
        println!("last error:         {e}");
    }
    Ok(())
}

fn recover(path: &Path, accept_older: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    let pass = cfg.passphrase()?;
    let bars =
        std::cell::RefCell::new(std::collections::HashMap::<String, indicatif::ProgressBar>::new());
    let progress = |step: &str, done: u64, total: u64| {
        let mut bars = bars.borrow_mut();
        let bar = bars.entry(step.to_string()).or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg:>20} [{bar:40}] {pos}/{len} {eta}")
                    .expect("progress template")
                    .progress_chars("=> "),
            );
            b.set_message(step.to_string());
            b
        });
        bar.set_position(done);
        if done >= total {
            bar.finish();
        }
    };
    let opts = tiergate::recover::RecoverOptions { accept_older };
    let r = tiergate::recover::recover(&cfg, &pass.0, &opts, &progress)
        .with_context(|| format!("recovering into {}", cfg.volume.path.display()))?;
    for w in &r.warnings {
        eprintln!("tiergate: WARNING: {w}");
    }
    if r.older_than_head {
        eprintln!(
            "tiergate: WARNING: recovered to consistency point {}, OLDER than the newest one \
             the bucket proves ({}): every change after {} is lost",
            r.consistency_point,
            r.newest_head
                .map_or("none left".to_string(), |(g, p)| format!(
                    "{p}, head generation {g}"
                )),
            r.consistency_point
        );
    }
    println!(
        "recovered volume {} to consistency point {}: {} records from the checkpoint, {} journal \
         entries from {} segments, {} packs off-site; downloaded {} in {:.1} s",
        r.volume_id,
        r.consistency_point,
        r.checkpoint_records,
        r.entries,
        r.segments,
        r.packs,
        mib(r.downloaded_bytes),
        r.elapsed.as_secs_f64()
    );
    println!(
        "next: tiergate serve --config {} --take-over",
        path.display()
    );
    Ok(())
}

fn evict(path: &Path) -> Result<()> {
    let cfg = Config::load(path)?;
    let r = tiergate::control::call(&cfg.volume.path, "evict")?;
    println!(
        "evicted {} from the local cache",
        mib(r["evicted_bytes"].as_u64().unwrap_or(0))
    );
    Ok(())
}

fn gc(path: &Path, json: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    let r = tiergate::control::call(&cfg.volume.path, "gc")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let u = |k: &str| r[k].as_u64().unwrap_or(0);
    println!(
        "dropped {} packs ({}; {} freed locally), rewrote {} sparse packs ({} copied)",
        u("packs_dropped"),
        mib(u("bytes_dropped")),
        mib(u("local_bytes_freed")),
        u("packs_rewritten"),
        mib(u("bytes_rewritten"))
    );
    println!(
        "off-site: {} objects deleted ({}), {} delete and {} GET requests",
        u("objects_deleted"),
        mib(u("bytes_deleted")),
        u("delete_requests"),
        u("get_requests")
    );
    let waiting = u("waiting_grace") + u("waiting_metadata") + u("waiting_checkpoint");
    if waiting > 0 {
        println!(
            "waiting to leave the store: {waiting} packs ({} in the grace period, {} for metadata \
             to go off-site, {} for a newer checkpoint)",
            u("waiting_grace"),
            u("waiting_metadata"),
            u("waiting_checkpoint")
        );
    }
    if u("waiting_retention") + u("meta_waiting_retention") > 0 {
        let until = r["retention_until_unix"]
            .as_u64()
            .map(|t| format!(", the first until {}", tiergate::backend::utc_date(t)))
            .unwrap_or_default();
        println!(
            "under Object Lock retention: {} packs and {} metadata objects{until}",
            u("waiting_retention"),
            u("meta_waiting_retention")
        );
    }
    if let Some(why) = r["offsite_skipped"].as_str() {
        println!("off-site part skipped: {why}");
    }
    if u("packs_unreadable") > 0 {
        println!(
            "{} packs could not be rewritten (unreadable data; see the log, run `tiergate verify`)",
            u("packs_unreadable")
        );
    }
    println!(
        "garbage left in kept packs: {}; took {:.1} s",
        mib(u("garbage_left_bytes")),
        r["seconds"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}

fn recycle(cmd: RecycleCmd) -> Result<()> {
    match cmd {
        RecycleCmd::List { config, json } => {
            let cfg = Config::load(&config)?;
            let r = tiergate::control::call(&cfg.volume.path, "recycle list")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let files = r["files"].as_array().cloned().unwrap_or_default();
            println!(
                "{} files in the recycle bin (kept {} days after deletion)",
                files.len(),
                r["days"]
            );
            for f in files {
                let when = f["deleted_unix"].as_u64().unwrap_or(0);
                let age = tiergate::meta::unix_now().saturating_sub(when);
                println!(
                    "{:>10}  deleted {:>6.1} h ago  {:>12} bytes  {}",
                    f["ino"],
                    age as f64 / 3600.0,
                    f["size"],
                    f["path"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        RecycleCmd::Restore { ino, config, to } => {
            let cfg = Config::load(&config)?;
            let req = match &to {
                Some(p) => format!("recycle restore {ino} {p}"),
                None => format!("recycle restore {ino}"),
            };
            let r = tiergate::control::call(&cfg.volume.path, &req)?;
            println!(
                "restored inode {ino} as {:?} in directory inode {}",
                r["name"].as_str().unwrap_or("?"),
                r["dir"]
            );
            Ok(())
        }
    }
}

fn locks(cmd: LocksCmd) -> Result<()> {
    match cmd {
        LocksCmd::List { config, json } => {
            let cfg = Config::load(&config)?;
            let vol = open(&cfg)?;
            let locks = tiergate::webdav::list_locks(&vol)?;
            if json {
                let v: Vec<_> = locks
                    .iter()
                    .map(|l| {
                        serde_json::json!({
                            "token": l.token, "path": l.path, "user": l.principal,
                            "expires_unix": l.expires_unix, "shared": l.shared, "deep": l.deep,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("{} WebDAV lock(s)", locks.len());
            for l in locks {
                println!(
                    "{}  {}  user {}  expires {}  {}{}",
                    l.token,
                    l.path,
                    l.principal.as_deref().unwrap_or("-"),
                    l.expires_unix
                        .map(utc_time)
                        .unwrap_or_else(|| "never".into()),
                    if l.shared { "shared" } else { "exclusive" },
                    if l.deep { ", depth infinity" } else { "" },
                );
            }
            Ok(())
        }
        LocksCmd::Clear {
            target,
            all,
            config,
        } => {
            if target.is_none() && !all {
                anyhow::bail!("say which locks: a token, a path, or --all");
            }
            let cfg = Config::load(&config)?;
            let vol = open(&cfg)?;
            let n = tiergate::webdav::clear_locks(&vol, target.as_deref())?;
            println!("{n} lock(s) removed");
            Ok(())
        }
    }
}

/// A Unix time as "2026-12-03 07:00:00Z".
fn utc_time(unix: u64) -> String {
    tiergate::backend::utc_date(unix).replacen('T', " ", 1)
}

/// The snapshot schedule in words (`[snapshots] interval_minutes`; 0: none).
fn schedule_text(every_minutes: u64) -> String {
    match every_minutes {
        0 => "no schedule".into(),
        m => format!("a scheduled one every {m} min"),
    }
}

fn snapshot(cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Create { name, config, json } => {
            let cfg = Config::load(&config)?;
            // The snapshot then holds every write made through the mount before this command.
            flush_kernel_cache(&cfg);
            let req = match &name {
                Some(n) => format!("snapshot create {n}"),
                None => "snapshot create".into(),
            };
            let r = tiergate::control::call(&cfg.volume.path, &req)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let name = r["name"].as_str().unwrap_or("?");
            println!(
                "took snapshot {name} at {}: read-only under /{}/{name}/ in the mount and the share",
                utc_time(r["created_unix"].as_u64().unwrap_or(0)),
                tiergate::volume::SNAPSHOT_DIR_NAME
            );
            Ok(())
        }
        SnapshotCmd::List { config, json } => {
            let cfg = Config::load(&config)?;
            let r = tiergate::control::call(&cfg.volume.path, "snapshot list")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let list = r["snapshots"].as_array().cloned().unwrap_or_default();
            let st = &r["status"];
            println!(
                "{} snapshots; {}",
                list.len(),
                schedule_text(st["every_minutes"].as_u64().unwrap_or(0))
            );
            if let Some(e) = st["last_error"].as_str() {
                println!("last scheduled snapshot failed: {e}");
            }
            let width = list
                .iter()
                .filter_map(|s| s["name"].as_str())
                .map(str::len)
                .chain([4])
                .max()
                .unwrap_or(4);
            if !list.is_empty() {
                println!("{:<width$}  {:<20}  kind", "name", "created (UTC)");
            }
            for s in list {
                println!(
                    "{:<width$}  {:<20}  {}",
                    s["name"].as_str().unwrap_or("?"),
                    utc_time(s["created_unix"].as_u64().unwrap_or(0)),
                    if s["scheduled"] == true {
                        "scheduled"
                    } else {
                        "manual"
                    }
                );
            }
            Ok(())
        }
        SnapshotCmd::Delete { name, config } => {
            let cfg = Config::load(&config)?;
            tiergate::control::call(&cfg.volume.path, &format!("snapshot delete {name}"))?;
            println!(
                "deleted snapshot {name}; data only it held is freed by the next GC pass \
                 (`tiergate gc` runs one now)"
            );
            Ok(())
        }
    }
}

fn user(cmd: UserCmd) -> Result<()> {
    use tiergate::auth;
    match cmd {
        UserCmd::Add { name, config } => {
            let cfg = Config::load(&config)?;
            auth::check_user_name(&name)?;
            let path = cfg.webdav.users_path();
            let password = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                let p = rpassword::prompt_password(format!("password for {name}: "))?;
                if rpassword::prompt_password("again: ")? != p {
                    anyhow::bail!("the passwords differ");
                }
                p
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_string()
            };
            let existed = auth::set_user(&path, &name, &password)?;
            println!(
                "{} user {name} in {}",
                if existed { "updated" } else { "added" },
                path.display()
            );
        }
        UserCmd::Del { name, config } => {
            let cfg = Config::load(&config)?;
            let path = cfg.webdav.users_path();
            if !auth::remove_user(&path, &name)? {
                anyhow::bail!("no user {name} in {}", path.display());
            }
            println!("removed user {name} from {}", path.display());
        }
    }
    Ok(())
}

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

fn serve(config: Option<&Path>, take_over: bool) -> Result<()> {
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

#[derive(Subcommand)]
enum KeyCmd {
    /// Wrap the master key with a new passphrase: the key file, and the store's key object (so a
    /// recovery needs the new one). The master key itself stays the same and no data is
    /// re-encrypted: an older copy of the key object (a version kept by Object Lock or bucket
    /// versioning, a copy of the bucket) still opens the volume with the old passphrase
    /// (docs/RECOVERY.md#changing-the-passphrase). The current passphrase comes from the config;
    /// the new one from standard input (first line), or asked for twice at a terminal. Exit
    /// status 0: done; 1: nothing changed; 2: changed locally, the store's key object is
    /// updated when the daemon next starts.
    Change {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum IndexCmd {
    /// Rebuild the chunk index from the pack footers (local files, and the store for packs
    /// only off-site) and the files' extents. Exit status 1 if referenced chunks are in no pack.
    Rebuild {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// The store of a config, for the offline commands.
fn offline_store(cfg: &Config) -> Result<tiergate::repair::Store> {
    Ok(tiergate::repair::Store::new(
        tiergate::backend::from_config(cfg)?,
    )?)
}

fn key_change(path: &Path) -> Result<()> {
    let cfg = Config::load(path)?;
    let old = cfg.passphrase()?;
    let vol = open(&cfg)?;
    if let Some(lock) = cfg.s3.as_ref().and_then(|s3| s3.object_lock.as_ref()) {
        eprintln!("tiergate: WARNING: {}", old_key_versions_warning(lock));
    }
    let new = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let p = rpassword::prompt_password("new passphrase: ")?;
        if rpassword::prompt_password("again: ")? != p {
            anyhow::bail!("the passphrases differ; nothing was changed");
        }
        p
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    let store = offline_store(&cfg)?;
    let r =
        tiergate::repair::change_passphrase(&vol, &store, &old.0, &new, KdfParams::interactive())?;
    drop(vol);
    println!(
        "passphrase changed for volume {}: {} now opens with the new passphrase (the data is \
         unchanged)",
        cfg.volume.path.display(),
        r.key_file.display()
    );
    match &cfg.volume.passphrase_file {
        Some(f) => println!(
            "now put the new passphrase in {} (the daemon reads it from there)",
            f.display()
        ),
        None => println!(
            "now put the new passphrase in {} for the daemon",
            tiergate::config::PASSPHRASE_ENV
        ),
    }
    match r.upload {
        Ok(()) => {
            println!(
                "the store's key object ({}) is updated: a recovery needs the new passphrase",
                r.store
            );
            Ok(())
        }
        Err(e) => {
            println!(
                "could not upload the key object to {}: {e}\nthe daemon uploads it at its next \
                 start; until then a recovery from the store needs the OLD passphrase",
                r.store
            );
            std::process::exit(2);
        }
    }
}

/// What `key change` cannot undo under Object Lock: the bucket keeps the key object wrapped
/// under the old passphrase, and it opens the same master key.
fn old_key_versions_warning(lock: &tiergate::config::ObjectLockConfig) -> String {
    format!(
        "[s3.object_lock] is on ({} mode, {} days): the bucket keeps every earlier version of \
         keys/master until its retention ends, each wrapped under the passphrase it had then. \
         This command wraps the SAME master key under the new passphrase and re-encrypts no \
         data, so whoever holds an old passphrase and can read the bucket still opens the whole \
         volume, including data written after this change. If an old passphrase leaked, this \
         does not lock it out: see docs/RECOVERY.md (Changing the passphrase).",
        lock.mode.as_str(),
        lock.days
    )
}

fn index_rebuild(path: &Path) -> Result<()> {
    let cfg = Config::load(path)?;
    let vol = open(&cfg)?;
    let store = offline_store(&cfg)?;
    let r = tiergate::repair::rebuild_index(&vol, &store).with_context(|| {
        format!(
            "rebuilding the chunk index of {}",
            cfg.volume.path.display()
        )
    })?;
    drop(vol);
    println!("{r}");
    if !r.is_complete() {
        std::process::exit(1);
    }
    Ok(())
}

fn verify(path: &Path, remote: bool, deep: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    let vol = open(&cfg)?;
    let store = offline_store(&cfg)?;
    let bars =
        std::cell::RefCell::new(std::collections::HashMap::<String, indicatif::ProgressBar>::new());
    let progress = |step: &str, done: u64, total: u64| {
        let mut bars = bars.borrow_mut();
        let bar = bars.entry(step.to_string()).or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>24} [{bar:40}] {bytes}/{total_bytes} {eta}",
                )
                .expect("progress template")
                .progress_chars("=> "),
            );
            b.set_message(step.to_string());
            b
        });
        bar.set_position(done);
        if done >= total {
            bar.finish();
        }
    };
    let opts = tiergate::repair::VerifyOptions { remote, deep };
    let r = tiergate::repair::verify(&vol, &store, opts, &progress)
        .with_context(|| format!("verifying {}", cfg.volume.path.display()))?;
    drop(vol);
    println!("{r}");
    if !r.is_clean() {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_change_under_object_lock_says_the_old_passphrase_still_opens_the_volume() {
        let lock = tiergate::config::ObjectLockConfig {
            mode: tiergate::config::LockMode::Compliance,
            days: 30,
        };
        let w = old_key_versions_warning(&lock);
        for needle in [
            "COMPLIANCE",
            "30 days",
            "SAME master key",
            "old passphrase",
            "RECOVERY.md",
        ] {
            assert!(w.contains(needle), "{needle}: {w}");
        }
    }
}

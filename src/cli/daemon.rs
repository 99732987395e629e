//! Subcommands that ask the running daemon over its control socket (`tiergate::control`).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use tiergate::config::Config;

use super::progress::SyncProgress;
use super::{exit, mib, schedule_text, utc_time};
use crate::SnapshotCmd;

/// With the writeback cache the kernel holds written pages and file times for a while: hands
/// them to the daemon (syncfs of the mount), so that what follows covers what users see there.
pub fn flush_kernel_cache(cfg: &Config) {
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

pub fn sync(path: &Path, timeout: Option<Duration>, json: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    flush_kernel_cache(&cfg);
    let req = match timeout {
        Some(t) => format!("sync {}", t.as_secs_f64()),
        None => "sync".into(),
    };
    // Progress from the daemon's counters on another thread: the sync call answers at the end.
    let progress = SyncProgress::start(cfg.volume.path.clone(), json);
    let r = tiergate::control::call(&cfg.volume.path, &req);
    if let Some(p) = progress {
        p.finish();
    }
    let r = r?;
    let complete = r["complete"].as_bool().unwrap_or(false);
    let interrupted = r["interrupted"].as_bool() == Some(true);
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
    if interrupted && !complete {
        std::process::exit(exit::ERROR);
    }
    if !complete {
        std::process::exit(exit::TIMEOUT);
    }
    Ok(())
}

pub fn status(path: &Path, json: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    let r = tiergate::control::call(&cfg.volume.path, "report")?;
    if json {
        println!("{r}");
        return Ok(());
    }
    let u = |sec: &str, k: &str| r[sec][k].as_u64().unwrap_or(0);
    let f = |sec: &str, k: &str| r[sec][k].as_f64().unwrap_or(0.0);
    let rate = |bps: f64| format!("{:.1} MiB/s", bps / (1 << 20) as f64);
    // A setting the management API changed, after its value: where it comes from and what the
    // config file says (it no longer rules after a restart).
    let overridden = |field: &str| -> String {
        r["overrides"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["field"] == field)
            .map_or(String::new(), |o| {
                format!(
                    " [set through the {}; the config file says {}]",
                    o["source"].as_str().unwrap_or("management API"),
                    o["config_value"].as_str().unwrap_or("?")
                )
            })
    };
    let offsite_store = r["store"]["offsite"].as_bool() != Some(false);
    println!(
        "volume:             {} (tiergate {}, up {} s)",
        r["volume"]["id"].as_str().unwrap_or("?"),
        r["version"].as_str().unwrap_or("?"),
        r["uptime_s"]
    );
    println!(
        "store:              {}{}",
        r["store"]["description"].as_str().unwrap_or("?"),
        match (offsite_store, r["store"]["same_disk"].as_bool()) {
            (true, _) => "",
            (false, Some(true)) => " (a directory on this appliance's own disk: NOT off-site)",
            (false, _) => " (a directory of this machine: NOT off-site)",
        }
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
        } else if pending == 0 && !offsite_store {
            format!(
                "nothing is: everything is in the store (consistency point {cp}), but the store \
                 is on this machine; configure [s3] to protect against its loss"
            )
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
        "cache:              {} of {}{} used ({:.1}%); dirty {} ({:.1}%)",
        mib(u("cache", "used_bytes")),
        mib(u("cache", "max_bytes")),
        overridden("cache.max_bytes"),
        f("cache", "used_percent"),
        mib(u("cache", "dirty_bytes")),
        f("cache", "dirty_percent")
    );
    println!(
        "uploads:            {} queued in {} packs; {} uploaded; now {}, average {}; limit {}{}",
        mib(u("upload", "queued_bytes")),
        u("upload", "queued_packs"),
        mib(u("upload", "uploaded_bytes")),
        rate(f("upload", "rate_bps")),
        rate(f("upload", "average_rate_bps")),
        match r["upload"]["limit_bps"].as_u64() {
            Some(l) => rate(l as f64),
            None => "unlimited".into(),
        },
        overridden("upload.limit_bps")
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
            "quota:              {} of {}{} used ({:.1}%){}",
            mib(u("space", "quota_used_bytes")),
            mib(q),
            overridden("space.quota_bytes"),
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

pub fn evict(path: &Path, json: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    let r = tiergate::control::call(&cfg.volume.path, "evict")?;
    if json {
        println!("{r}");
        return Ok(());
    }
    println!(
        "evicted {} from the local cache",
        mib(r["evicted_bytes"].as_u64().unwrap_or(0))
    );
    Ok(())
}

pub fn gc(path: &Path, json: bool) -> Result<()> {
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
            .map(|t| format!(", the first until {}", tiergate::clock::utc_date(t)))
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

pub fn snapshot(cmd: SnapshotCmd) -> Result<()> {
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
        SnapshotCmd::Delete { name, config, json } => {
            let cfg = Config::load(&config)?;
            let r = tiergate::control::call(&cfg.volume.path, &format!("snapshot delete {name}"))?;
            if json {
                println!("{r}");
                return Ok(());
            }
            println!(
                "deleted snapshot {name}; data only it held is freed by the next GC pass \
                 (`tiergate gc` runs one now)"
            );
            Ok(())
        }
    }
}

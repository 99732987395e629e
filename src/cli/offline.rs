//! Subcommands that open the volume, the store or the config directly: the daemon is stopped
//! or not involved.

use std::path::Path;

use anyhow::{Context, Result};

use tiergate::config::Config;
use tiergate::crypto::KdfParams;
use tiergate::volume::Volume;

use super::progress::{Steps, Unit};
use super::{exit, human_bytes, mib, open, utc_time};
use crate::{LocksCmd, UserCmd};

pub fn init(path: &Path) -> Result<()> {
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

/// `tiergate stats`: sizes in binary units for a person (as `status`), exact bytes with --json.
pub fn stats(path: &Path, json: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    let vol = open(&cfg)?;
    let s = vol.stats()?;
    let st = s.stats;
    let reduction = (st.stored_bytes > 0).then(|| st.logical_bytes as f64 / st.stored_bytes as f64);
    if json {
        let v = serde_json::json!({
            "logical_bytes": st.logical_bytes,
            "unique_bytes": st.unique_bytes,
            "stored_bytes": st.stored_bytes,
            "chunks": st.chunks,
            "packs": s.packs,
            "pack_bytes": s.pack_bytes,
            "metadata_bytes": s.metadata_bytes,
            "dirty_bytes": s.dirty_bytes,
            "reduction": reduction,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("logical:   {}", human_bytes(st.logical_bytes));
    println!("unique:    {}", human_bytes(st.unique_bytes));
    println!("stored:    {}", human_bytes(st.stored_bytes));
    println!("chunks:    {}", st.chunks);
    println!("packs:     {} ({})", s.packs, human_bytes(s.pack_bytes));
    println!("metadata:  {}", human_bytes(s.metadata_bytes));
    if let Some(r) = reduction {
        println!("reduction: {r:.2}x");
    }
    Ok(())
}

/// `tiergate compact`: the metadata store rewritten with only its live records.
pub fn compact(path: &Path, json: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    let r = tiergate::volume::Volume::compact_metadata(&cfg.volume.path)
        .with_context(|| format!("compacting the metadata of {}", cfg.volume.path.display()))?;
    if json {
        let v = serde_json::json!({
            "records": r.records,
            "bytes_before": r.bytes_before,
            "bytes_after": r.bytes_after,
            "seconds": r.elapsed.as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "metadata store compacted: {} records, {} -> {} in {:.1} s",
        r.records,
        human_bytes(r.bytes_before),
        human_bytes(r.bytes_after),
        r.elapsed.as_secs_f64()
    );
    Ok(())
}

/// `tiergate probe`: prints each step with its time; exit status 1 and the failure class with
/// what to fix if a step fails.
pub fn probe(path: &Path, json: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    let backend = cfg.open_backend()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the probe runtime")?;
    let report = rt.block_on(tiergate::backend::probe(backend.as_ref()));
    if json {
        let v = match &report {
            Ok(r) => serde_json::json!({
                "passed": true,
                "store": r.store,
                "steps": r.steps.iter().map(|s| serde_json::json!({
                    "name": s.name,
                    "ms": s.elapsed.as_secs_f64() * 1e3,
                    "detail": s.detail,
                })).collect::<Vec<_>>(),
                "object_lock": r.object_lock.to_string(),
            }),
            Err(e) => serde_json::json!({
                "passed": false,
                "store": e.store,
                "failed_step": e.step,
                "class": e.kind().to_string(),
                "error": e.error.message(),
                "hint": e.kind().hint(),
            }),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        if report.is_err() {
            std::process::exit(exit::ERROR);
        }
        return Ok(());
    }
    let report = report?;
    println!("{report}");
    println!("probe passed");
    Ok(())
}

pub fn recover(path: &Path, accept_older: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    let pass = cfg.passphrase()?;
    let steps = Steps::new(Unit::Items);
    let progress = |step: &str, done: u64, total: u64| steps.update(step, done, total);
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

pub fn locks(cmd: LocksCmd) -> Result<()> {
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

pub fn user(cmd: UserCmd) -> Result<()> {
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
        UserCmd::List { config, json } => {
            let cfg = Config::load(&config)?;
            let names = auth::user_names(&cfg.webdav.users_path())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&names)?);
            } else {
                for n in names {
                    println!("{n}");
                }
            }
        }
    }
    Ok(())
}

/// The store of a config, for the offline commands.
pub fn offline_store(cfg: &Config) -> Result<tiergate::repair::Store> {
    Ok(tiergate::repair::Store::new(cfg.open_backend()?)?)
}

pub fn key_change(path: &Path) -> Result<()> {
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
            std::process::exit(exit::PARTIAL);
        }
    }
}

/// What `key change` cannot undo under Object Lock: the bucket keeps the key object wrapped
/// under the old passphrase, and it opens the same master key.
pub fn old_key_versions_warning(lock: &tiergate::config::ObjectLockConfig) -> String {
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

pub fn index_rebuild(path: &Path) -> Result<()> {
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
        std::process::exit(exit::DAMAGE);
    }
    Ok(())
}

pub fn verify(path: &Path, remote: bool, deep: bool, json: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    let vol = open(&cfg)?;
    let store = offline_store(&cfg)?;
    let steps = Steps::new(Unit::Bytes);
    let progress = |step: &str, done: u64, total: u64| steps.update(step, done, total);
    let opts = tiergate::repair::VerifyOptions { remote, deep };
    let r = tiergate::repair::verify(&vol, &store, opts, &progress)
        .with_context(|| format!("verifying {}", cfg.volume.path.display()))?;
    drop(vol);
    if json {
        println!("{}", serde_json::to_string_pretty(&verify_json(&r))?);
    } else {
        println!("{r}");
    }
    if !r.is_clean() {
        std::process::exit(exit::DAMAGE);
    }
    Ok(())
}

/// The verify report for scripts: the counts, and each problem as the text the report prints.
fn verify_json(r: &tiergate::repair::VerifyReport) -> serde_json::Value {
    serde_json::json!({
        "clean": r.is_clean(),
        "remote": r.options.remote,
        "deep": r.options.deep,
        "files": r.files,
        "extents": r.extents,
        "chunks": r.chunks,
        "chunks_local": r.chunks_local,
        "chunks_remote": r.chunks_remote,
        "bytes_local": r.bytes_local,
        "bytes_remote": r.bytes_remote,
        "damaged": r.damaged.iter().map(|d| serde_json::json!({
            "ino": d.ino,
            "paths": d.paths,
            "ranges": d.ranges.iter().map(|g| serde_json::json!({
                "start": g.start,
                "end": g.end,
                "chunk": g.chunk.to_string(),
                "reason": g.reason,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "pack_problems": r.pack_problems,
        "extent_map_problems": r.extent_map_problems,
        "repaired": r.repaired.iter().map(|p| serde_json::json!({
            "pack": p.pack,
            "reason": p.reason,
            "bytes_freed": p.bytes_freed,
        })).collect::<Vec<_>>(),
        "seconds": r.elapsed.as_secs_f64(),
    })
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

//! `tiergate recycle`: the recycle bin of the running daemon (list, restore).

use anyhow::{bail, Result};

use tiergate::config::Config;

use crate::RecycleCmd;

pub fn recycle(cmd: RecycleCmd) -> Result<()> {
    match cmd {
        RecycleCmd::List { config, json, all } => {
            let cfg = Config::load(&config)?;
            let req = if all {
                "recycle list all"
            } else {
                "recycle list"
            };
            let r = tiergate::control::call(&cfg.volume.path, req)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let entries = r["files"].as_array().cloned().unwrap_or_default();
            println!(
                "{} in the recycle bin (kept {} days after deletion; restore with \
                 `tiergate recycle restore ID` or `--path PATH`)",
                count(entries.len() as u64, "entry", "entries"),
                r["days"]
            );
            for f in entries {
                let when = f["deleted_unix"].as_u64().unwrap_or(0);
                let age = tiergate::meta::unix_now().saturating_sub(when);
                let path = f["path"].as_str().unwrap_or("?");
                let what = if f["kind"] == "dir" {
                    format!(
                        "{path}/  (directory, {})",
                        count(f["files"].as_u64().unwrap_or(0), "file", "files")
                    )
                } else {
                    path.to_string()
                };
                println!(
                    "{:>10}  deleted {:>6.1} h ago  {:>14} bytes  {what}",
                    f["ino"].as_u64().unwrap_or(0),
                    age as f64 / 3600.0,
                    f["size"].as_u64().unwrap_or(0),
                );
            }
            Ok(())
        }
        RecycleCmd::Restore {
            ino,
            config,
            to,
            path,
        } => {
            let cfg = Config::load(&config)?;
            let req = match (ino, &path) {
                (_, Some(p)) => format!(
                    "recycle restore-path {}",
                    serde_json::json!({ "path": p, "to": to })
                ),
                (Some(ino), None) => match &to {
                    Some(t) => format!("recycle restore {ino} {t}"),
                    None => format!("recycle restore {ino}"),
                },
                (None, None) => bail!("name the entry to restore: its id, or --path PATH"),
            };
            let r = tiergate::control::call(&cfg.volume.path, &req)?;
            let what = if r["kind"] == "dir" {
                format!(
                    "{}, ",
                    count(r["files"].as_u64().unwrap_or(0), "file", "files")
                )
            } else {
                String::new()
            };
            println!(
                "restored {} ({what}{} bytes) as {}",
                r["from"].as_str().unwrap_or("?"),
                r["bytes"],
                r["path"].as_str().unwrap_or("?"),
            );
            Ok(())
        }
    }
}

/// "1 file", "3 files".
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

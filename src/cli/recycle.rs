//! `tiergate recycle`: the recycle bin of the running daemon (list, restore).

use anyhow::Result;

use tiergate::config::Config;

use crate::RecycleCmd;

pub fn recycle(cmd: RecycleCmd) -> Result<()> {
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

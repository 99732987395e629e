//! The `tiergate` command: create a volume, run the appliance.

mod cli;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use cli::daemon::*;
use cli::offline::*;
use cli::recycle::recycle;
use cli::serve::serve;
use tiergate::config;

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
    /// What the recycle bin holds, oldest first: id, when deleted, size, original path. A
    /// deleted directory tree is one line (its file count and total size) unless --all.
    List {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// Every recycled file and directory on a line of its own, instead of one line per
        /// deleted tree.
        #[arg(long, visible_alias = "files")]
        all: bool,
    },
    /// Give a recycled file or directory tree its name again: at its original path (missing
    /// parent directories are recreated; a suffix if the name is taken meanwhile), or at the
    /// path given with --to.
    Restore {
        /// Its id, from `tiergate recycle list`.
        #[arg(required_unless_present = "path", conflicts_with = "path")]
        ino: Option<u64>,
        #[arg(long, short)]
        config: PathBuf,
        /// Restore it as this path instead (from the volume's root).
        #[arg(long)]
        to: Option<String>,
        /// Restore the newest recycled entry that was deleted from this path (from the
        /// volume's root, e.g. /backups/host1) instead of naming its id.
        #[arg(long)]
        path: Option<String>,
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

/// Parses `--timeout` values: "90" (seconds), "30s", "10m", "2h".
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

//! The `tiergate` command: create a volume, run the appliance. The clap definition of every
//! subcommand is here (completions and man pages are generated from it); the code that runs
//! them is in `cli/`.

mod cli;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cli::daemon::*;
use cli::offline::*;
use cli::recycle::recycle;
use cli::serve::serve;
use cli::{exit, ConfigArg};
use tiergate::config;

#[derive(Parser)]
#[command(
    name = "tiergate",
    version,
    about = "Deduplicating, encrypting backup gateway",
    after_help = "Every command reads the appliance's config file: --config FILE, else \
                  $TIERGATE_CONFIG, else /etc/tiergate/tiergate.toml.\n\
                  Exit status: 0 done; 1 error; 2 usage error; sync: 124 when its --timeout \
                  passed first; key change: 3 when only the local key changed; verify, \
                  index rebuild: 4 when damage is left (docs/OPERATIONS.md, \"Exit statuses\")."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a volume from a config file, or print an annotated example config.
    Init {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the annotated example configuration and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Run the appliance. With no config named and none at /etc/tiergate/tiergate.toml: a demo
    /// volume under ./tiergate-demo/.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Claim the volume's lease in the bucket even though another appliance holds it: for
        /// the replacement of a failed appliance, after `tiergate recover`.
        #[arg(long)]
        take_over: bool,
    },
    /// Rebuild a lost appliance's volume from the bucket and the passphrase, into the empty
    /// `volume.path` of the config. Then `tiergate serve --take-over`.
    Recover {
        #[command(flatten)]
        config: ConfigArg,
        /// Recover even though the bucket's journal stops short of the newest authenticated
        /// consistency point (objects deleted or damaged), or no authenticated head is left:
        /// every change after the point reached is lost.
        #[arg(long)]
        accept_older: bool,
    },
    /// Tiering state of the running daemon: cache, upload queue, consistency point, errors.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print space and dedup figures of a volume that is not being served.
    Stats {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the figures as JSON, in bytes.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite the local metadata store into a fresh copy that holds only its live records
    /// (offline: the daemon must be stopped). `serve` does this by itself at start once the
    /// store has doubled since the last compaction (docs/OPERATIONS.md, local metadata).
    Compact {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the object store of a config (the `[s3]` bucket, or the local backend
    /// directory): reachable, credentials, bucket, write/read/list/delete, object lock.
    Probe {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the steps, or the failed step and its class, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until everything written so far is off-site (asks the running daemon), showing the
    /// upload queue, rate and time left on standard error. Exit status 0: done; 124: the
    /// timeout passed first; 1: error (also: the daemon stopped before the end); 2: usage error.
    Sync {
        #[command(flatten)]
        config: ConfigArg,
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
        #[command(flatten)]
        config: ConfigArg,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Collect garbage now (asks the running daemon): drop packs no file needs, rewrite
    /// sparse ones, delete dropped packs off-site once that is safe (docs/RETENTION.md).
    Gc {
        #[command(flatten)]
        config: ConfigArg,
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
    /// status 0: no damage (after repairs); 4: damage, listed per file; 1: an error (the check
    /// could not run); 2: usage error.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also ask the store: every off-site pack exists with its recorded size (with --deep,
        /// the off-site copies of cached packs are read too).
        #[arg(long)]
        remote: bool,
        /// Read and decode every chunk the files reference (authentication and content hash).
        #[arg(long)]
        deep: bool,
    },
    /// Print a shell completion script: `tiergate completions bash >
    /// /etc/bash_completion.d/tiergate` (zsh: a file `_tiergate` in $fpath; fish:
    /// ~/.config/fish/completions/tiergate.fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page of tiergate, or with --dir write one page per command there
    /// (tiergate.1, tiergate-sync.1, tiergate-recycle-list.1, ...).
    Man {
        /// Write every page into this directory (e.g. /usr/share/man/man1).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RecycleCmd {
    /// What the recycle bin holds, oldest first: id, when deleted, size, original path. A
    /// deleted directory tree is one line (its file count and total size) unless --all.
    List {
        #[command(flatten)]
        config: ConfigArg,
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
        #[command(flatten)]
        config: ConfigArg,
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
        #[command(flatten)]
        config: ConfigArg,
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
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Take a snapshot now; it stays until `tiergate snapshot delete` (the schedule's keep rules
    /// prune only scheduled ones).
    Create {
        /// Its name. Default: "manual-YYYY-MM-DD_HHMMSSZ" (UTC).
        name: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The snapshots, oldest first: name, when taken (UTC), scheduled or manual; and the
    /// schedule.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot. Data only it held is freed by the next GC pass.
    Delete {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user or set a new password. The password is read from standard input (first
    /// line), or asked for twice when standard input is a terminal.
    Add {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a user.
    Del {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The users' names, sorted (never their password hashes).
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print a JSON array of names.
        #[arg(long)]
        json: bool,
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
    cli::logging::init();
    let matches = Cli::command().try_get_matches().unwrap_or_else(|e| {
        let _ = e.print();
        // Help and version go to standard output and are no error.
        std::process::exit(if e.use_stderr() { exit::USAGE } else { 0 })
    });
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if !matches!(cli.cmd, Cmd::Serve { .. }) {
        restore_sigpipe();
    }
    // The innermost subcommand: does it take a config, and did the flag or the variable name one?
    let (mut leaf, mut leaf_cmd) = (&matches, Cli::command());
    while let Some((name, sub)) = leaf.subcommand() {
        leaf = sub;
        leaf_cmd = leaf_cmd
            .find_subcommand(name)
            .expect("a parsed subcommand is defined")
            .clone();
    }
    let config_defaulted = leaf_cmd.get_arguments().any(|a| a.get_id() == "config")
        && leaf.value_source("config").is_none();
    let needs_config = !matches!(
        cli.cmd,
        Cmd::Serve { .. }
            | Cmd::Init {
                print_config: true,
                ..
            }
    );
    if config_defaulted && needs_config && !Path::new(cli::DEFAULT_CONFIG).exists() {
        eprintln!(
            "tiergate: no config file: {} (the default) does not exist; name one with \
             --config FILE or {}=FILE",
            cli::DEFAULT_CONFIG,
            cli::CONFIG_ENV
        );
        std::process::exit(exit::ERROR);
    }
    let r = match cli.cmd {
        Cmd::Init {
            config,
            print_config,
        } => {
            if print_config {
                print!("{}", config::EXAMPLE);
                Ok(())
            } else {
                init(&config)
            }
        }
        Cmd::Serve { config, take_over } => serve(config.for_serve().as_deref(), take_over),
        Cmd::Recover {
            config,
            accept_older,
        } => recover(&config, accept_older),
        Cmd::Status { config, json } => status(&config, json),
        Cmd::Stats { config, json } => stats(&config, json),
        Cmd::Compact { config, json } => compact(&config, json),
        Cmd::Probe { config, json } => probe(&config, json),
        Cmd::User { cmd } => user(cmd),
        Cmd::Sync {
            config,
            timeout,
            json,
        } => sync(&config, timeout, json),
        Cmd::Evict { config, json } => evict(&config, json),
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
            json,
            remote,
            deep,
        } => verify(&config, remote, deep, json),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tiergate",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Man { dir } => man(dir.as_deref()),
    };
    if let Err(e) = r {
        eprintln!("tiergate: {e:#}");
        std::process::exit(exit::ERROR);
    }
}

/// Rust starts every program with SIGPIPE ignored, so a write to a closed pipe fails with
/// EPIPE and `println!` panics ("failed printing to stdout: Broken pipe"). For the commands
/// that print and end, a reader that has gone away (`tiergate recycle list | head -1`) should
/// end the writer quietly, as it does `ls` or `cat`: the default action, termination by
/// SIGPIPE, restored before any thread starts, covers every print of every such command. Never
/// for `serve`: the daemon writes to sockets and must get EPIPE from a vanished client, not die.
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to its default; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// `tiergate man`: the top page on standard output, or every command's page into `dir`.
fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    match dir {
        None => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("writing the man page"),
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            clap_mangen::generate_to(Cli::command(), d)
                .with_context(|| format!("writing man pages into {}", d.display()))?;
            println!("man pages written to {}", d.display());
            Ok(())
        }
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
    /// status 0: done; 1: nothing changed; 3: changed locally, the store's key object is
    /// updated when the daemon next starts; 2: usage error.
    Change {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum IndexCmd {
    /// Rebuild the chunk index from the pack footers (local files, and the store for packs
    /// only off-site) and the files' extents. Exit status 0: complete; 4: referenced chunks are
    /// in no pack; 1: an error; 2: usage error.
    Rebuild {
        #[command(flatten)]
        config: ConfigArg,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_exit_with_their_own_code() {
        let Err(e) = Cli::try_parse_from(["tiergate", "sync", "--bogus"]) else {
            panic!("--bogus parsed");
        };
        assert!(e.use_stderr());
        assert_eq!(e.exit_code(), exit::USAGE);
        assert_ne!(exit::USAGE, exit::TIMEOUT);
        assert_ne!(exit::USAGE, exit::PARTIAL);
    }

    /// Every command that reads a config takes it the same way, with the same help.
    #[test]
    fn every_config_argument_is_the_shared_one() {
        fn walk(cmd: &clap::Command, path: &str, seen: &mut u32) {
            for a in cmd.get_arguments().filter(|a| a.get_id() == "config") {
                *seen += 1;
                assert_eq!(a.get_long(), Some("config"), "{path}");
                assert_eq!(a.get_short(), Some('c'), "{path}");
                assert_eq!(
                    a.get_env().and_then(|e| e.to_str()),
                    Some(cli::CONFIG_ENV),
                    "{path}"
                );
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(help.starts_with("The appliance's config file"), "{path}");
                assert!(help.contains(cli::DEFAULT_CONFIG), "{path}");
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), seen);
            }
        }
        let mut seen = 0;
        walk(&Cli::command(), "tiergate", &mut seen);
        assert!(seen >= 20, "{seen}");
    }
}

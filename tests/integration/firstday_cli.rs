//! Issue "first day", the command line as scripts and administrators meet it: list commands
//! whose reader goes away (`| head -1`) end quietly instead of panicking; a usage error and a
//! sync timeout exit with different codes; `--config` comes from the flag, `TIERGATE_CONFIG` or
//! /etc/tiergate/tiergate.toml; `--json` where a script parses; `user list`; completions and man
//! pages from the CLI definition; and `sync` showing its progress (rate, ETA) in a terminal,
//! recorded through tmux into target/test-logs/sync-progress.txt.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{random_bytes, text, tiergate, tiergate_stdin, wait_timeout, TestVolume};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tiergate"))
}

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

/// Runs `tiergate ARGS --config CONFIG` with its output into a pipe whose reader reads
/// `lines` lines and then closes it, as `| head -1` does; returns the exit status and stderr.
fn closed_pipe(args: &[&str], config: &Path, lines: usize) -> (std::process::ExitStatus, String) {
    let mut child = bin()
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..lines {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(
            !line.is_empty(),
            "{args:?} printed fewer than {lines} lines"
        );
    }
    drop(out);
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

/// `recycle list | head -1`, `snapshot list | head`, `status | head`: the writer ends by
/// SIGPIPE (or had finished), never with a panic about a broken pipe.
#[test]
fn list_commands_end_quietly_when_the_reader_goes_away() {
    let mut v = TestVolume::new("[recycle]\ndays = 7\n");
    v.start();
    // More than a pipe's 64 KiB of recycle bin lines, so most are written after the reader
    // closed: the write fails for certain, not by chance of timing.
    for i in 0..1500 {
        let p = v.path(&format!("deleted-file-with-a-long-name-{i:05}.bin"));
        std::fs::write(&p, b"x").unwrap();
        std::fs::remove_file(&p).unwrap();
    }
    for n in ["one", "two", "three"] {
        let o = tiergate(&["snapshot", "create", n], &v.config);
        assert!(o.status.success(), "{}", text(&o));
    }
    let full = tiergate(&["recycle", "list", "--all"], &v.config);
    assert!(full.stdout.len() > 128 << 10, "{}", text(&full));
    let cases: [(&[&str], usize); 5] = [
        (&["recycle", "list", "--all"], 1),
        (&["recycle", "list", "--json"], 1),
        // These print less than a pipe holds: the reader closes before the first line.
        (&["snapshot", "list"], 0),
        (&["status"], 0),
        (&["status", "--json"], 0),
    ];
    for (args, lines) in cases {
        let (status, err) = closed_pipe(args, &v.config, lines);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {status}\n{err}"
        );
        assert_ne!(status.code(), Some(101), "{args:?}: {err}");
        assert!(
            status.success() || status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {status}\n{err}"
        );
        if lines > 0 {
            assert_eq!(status.signal(), Some(libc::SIGPIPE), "{args:?}: {err}");
        }
    }
    v.stop();
}

/// A daemon whose uploads crawl: the local directory store behind a bandwidth limit.
fn slow_uploads(limit: &str) -> TestVolume {
    let v = TestVolume::new(&format!(
        "pack_size_mib = 4\n[tiering]\nbandwidth_limit = \"{limit}\"\n[webdav]\nenabled = false\n"
    ));
    // No warning about a readable secret in the recording.
    std::fs::set_permissions(
        v.dir.path().join("passphrase"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    v
}

#[test]
fn a_usage_error_and_a_sync_timeout_exit_differently() {
    // clap's usage errors: 2, as every Unix tool.
    for args in [
        &["sync", "--bogus"][..],
        &["sync", "--timeout", "soon"],
        &["nosuch"],
    ] {
        let o = bin().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }
    let mut v = slow_uploads("64KiB");
    v.start();
    std::fs::write(v.path("f.bin"), random_bytes(21, 2 << 20)).unwrap();
    let t = Instant::now();
    let o = tiergate(&["sync", "--timeout", "2"], &v.config);
    assert_eq!(o.status.code(), Some(124), "{}", text(&o));
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("timeout"),
        "{}",
        text(&o)
    );
    let o = tiergate(&["sync", "--timeout", "1", "--json"], &v.config);
    assert_eq!(o.status.code(), Some(124), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["complete"], false, "{r}");
    // The help says which code is which.
    let help = bin().args(["sync", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("124") && help.contains("TIERGATE_CONFIG"),
        "{help}"
    );
    v.kill();
}

/// Flag, then `TIERGATE_CONFIG`, then /etc/tiergate/tiergate.toml; a missing default says how
/// to name one.
#[test]
fn the_config_comes_from_the_flag_the_environment_or_the_default_path() {
    let v = TestVolume::new("");
    // The environment variable alone.
    let o = bin()
        .arg("stats")
        .env("TIERGATE_CONFIG", &v.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("logical:"),
        "{}",
        text(&o)
    );
    // The flag wins over the variable.
    let o = bin()
        .args(["stats", "--config"])
        .arg(&v.config)
        .env("TIERGATE_CONFIG", "/nonexistent/tiergate.toml")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = bin()
        .arg("stats")
        .env("TIERGATE_CONFIG", "/nonexistent/tiergate.toml")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/tiergate.toml"),
        "{}",
        text(&o)
    );

    // The default path, in a mount namespace of its own so that no other test or program sees
    // a config there: a directory with the test's config is bound over /etc/tiergate.
    let etc = PathBuf::from("/etc/tiergate");
    let made = !etc.exists();
    if made {
        std::fs::create_dir(&etc).unwrap();
    }
    let shadow = v.dir.path().join("etc-tiergate");
    std::fs::create_dir(&shadow).unwrap();
    let cfg = std::fs::read_to_string(&v.config)
        .unwrap()
        .replace(
            "path = \"vol\"",
            &format!("path = \"{}\"", v.vol_dir().display()),
        )
        .replace(
            "passphrase_file = \"passphrase\"",
            &format!(
                "passphrase_file = \"{}\"",
                v.dir.path().join("passphrase").display()
            ),
        );
    std::fs::write(shadow.join("tiergate.toml"), cfg).unwrap();
    let empty = v.dir.path().join("etc-empty");
    std::fs::create_dir(&empty).unwrap();
    let in_namespace = |dir: &Path| {
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$1\" /etc/tiergate && exec \"$2\" stats")
            .arg("sh")
            .arg(dir)
            .arg(env!("CARGO_BIN_EXE_tiergate"))
            .env_remove("TIERGATE_CONFIG")
            .output()
            .unwrap()
    };
    let found = in_namespace(&shadow);
    let missing = in_namespace(&empty);
    if made {
        let _ = std::fs::remove_dir(&etc);
    }
    assert!(found.status.success(), "{}", text(&found));
    assert!(
        String::from_utf8_lossy(&found.stdout).contains("logical:"),
        "{}",
        text(&found)
    );
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("/etc/tiergate/tiergate.toml") && err.contains("TIERGATE_CONFIG"),
        "{err}"
    );
    // Every command says what --config is for.
    for cmd in [
        &["status"][..],
        &["recycle", "list"],
        &["user", "add"],
        &["verify"],
    ] {
        let o = bin().args(cmd).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(
            help.contains("The appliance's config file"),
            "{cmd:?}: {help}"
        );
    }
}

#[test]
fn json_for_scripts_and_user_list() {
    let mut v = TestVolume::new("pack_size_mib = 4\n");
    for (name, pw) in [("bob", "pw-b"), ("alice", "pw-a")] {
        let o = tiergate_stdin(&["user", "add", name], &v.config, &format!("{pw}\n"));
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = tiergate(&["user", "list"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "alice\nbob\n");
    assert_eq!(
        json(&tiergate(&["user", "list", "--json"], &v.config)),
        serde_json::json!(["alice", "bob"])
    );

    v.start();
    let data = random_bytes(31, 6 << 20);
    std::fs::write(v.path("a.bin"), &data).unwrap();
    let o = tiergate(&["sync", "--timeout", "60"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&tiergate(&["evict", "--json"], &v.config));
    assert!(r["evicted_bytes"].as_u64().unwrap() > 0, "{r}");
    let o = tiergate(&["snapshot", "create", "s1"], &v.config);
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&tiergate(
        &["snapshot", "delete", "s1", "--json"],
        &v.config,
    ));
    assert_eq!(r["deleted"], "s1", "{r}");
    v.stop();

    let s = json(&tiergate(&["stats", "--json"], &v.config));
    assert_eq!(s["logical_bytes"], data.len() as u64, "{s}");
    for k in ["stored_bytes", "chunks", "packs", "metadata_bytes"] {
        assert!(s[k].as_u64().unwrap() > 0, "{k}: {s}");
    }
    // The text says it in binary units, as `status` does.
    let o = tiergate(&["stats"], &v.config);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("logical:   6.0 MiB"), "{out}");

    let p = json(&tiergate(&["probe", "--json"], &v.config));
    assert_eq!(p["passed"], true, "{p}");
    assert!(p["steps"].as_array().unwrap().len() >= 4, "{p}");

    let r = json(&tiergate(
        &["verify", "--remote", "--deep", "--json"],
        &v.config,
    ));
    assert_eq!(r["clean"], true, "{r}");
    assert_eq!(r["files"], 1, "{r}");
    assert!(r["bytes_remote"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["damaged"], serde_json::json!([]), "{r}");
}

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let o = bin().args(["completions", shell]).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        for word in ["recycle", "snapshot", "sync", "config"] {
            assert!(out.contains(word), "{shell}: no {word}");
        }
    }
    let o = bin().arg("man").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(
        page.contains(".TH tiergate 1") && page.contains("recycle"),
        "{page}"
    );

    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for name in [
        "tiergate.1",
        "tiergate-sync.1",
        "tiergate-recycle-list.1",
        "tiergate-user-list.1",
    ] {
        let p = std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        assert!(p.contains(".TH"), "{name}: {p}");
    }
    let sync = std::fs::read_to_string(dir.path().join("tiergate-sync.1")).unwrap();
    assert!(
        sync.contains("124") && sync.contains("TIERGATE_CONFIG"),
        "{sync}"
    );
}

/// `tiergate sync` in a terminal (tmux) while a bandwidth limit holds the upload back: the pane
/// shows the queue going down with a rate and an ETA before the sync ends.
#[test]
fn sync_shows_rate_and_eta_in_a_terminal() {
    let mut v = slow_uploads("1MiB");
    v.start();
    std::fs::write(v.path("big.bin"), random_bytes(41, 12 << 20)).unwrap();
    let server = format!("tiergate-test-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &server])
            .args(args)
            .env_remove("TMUX")
            .output()
            .unwrap()
    };
    let shell_cmd = format!(
        "{} sync --config {}; echo SYNC-EXIT=$?; sleep 120",
        env!("CARGO_BIN_EXE_tiergate"),
        v.config.display()
    );
    let o = tmux(&[
        "new-session",
        "-d",
        "-x",
        "120",
        "-y",
        "30",
        "-s",
        "sync",
        &shell_cmd,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(120);
    // Ends the tmux server (and the shell waiting in it) however the test ends.
    struct Server<'a>(&'a dyn Fn(&[&str]) -> std::process::Output);
    impl Drop for Server<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["kill-server"]);
        }
    }
    let guard = Server(&tmux);
    let mut progress = None;
    let last = loop {
        let pane = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "sync"]).stdout)
            .into_owned();
        if progress.is_none() && !pane.contains("SYNC-EXIT") {
            let line = pane
                .lines()
                .find(|l| l.contains("queued") && l.contains("/s,") && has_eta(l));
            if line.is_some() {
                progress = Some(pane.clone());
            }
        }
        if pane.contains("SYNC-EXIT=") {
            break pane;
        }
        assert!(Instant::now() < deadline, "sync did not end:\n{pane}");
        std::thread::sleep(Duration::from_millis(250));
    };
    drop(guard);
    let log_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::write(
        log_dir.join("sync-progress.txt"),
        format!(
            "# tiergate sync in a 120x30 tmux pane, uploads limited to 1 MiB/s, 12 MiB written\n\
             # while it waits:\n{}\n# at the end:\n{last}\n",
            progress.as_deref().unwrap_or("(no progress line seen)")
        ),
    )
    .unwrap();
    assert!(
        progress.is_some(),
        "no progress line with rate and ETA before the end:\n{last}"
    );
    assert!(last.contains("SYNC-EXIT=0"), "{last}");
    assert!(last.contains("off-site: everything written"), "{last}");
    v.stop();
}

/// "ETA 12s", "ETA 1m05s": a time, not the "--" shown before any rate is known.
fn has_eta(line: &str) -> bool {
    line.split("ETA ")
        .nth(1)
        .is_some_and(|t| t.starts_with(|c: char| c.is_ascii_digit()))
}

/// `tiergate compact` rewrites the metadata store with its live records only: refused while the
/// daemon holds the volume, and the files read back the same after it.
#[test]
fn compact_rewrites_the_metadata_store_offline() {
    let mut v = TestVolume::new("");
    v.start();
    let mut files = Vec::new();
    for i in 0..300u64 {
        let data = random_bytes(i, 2000 + i as usize * 7);
        let p = v.path(&format!("f{i}"));
        std::fs::write(&p, &data).unwrap();
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
        // Churn: a rewrite and a rename per file, as backup tools do.
        std::fs::write(v.path("tmp"), &data[..100]).unwrap();
        std::fs::rename(v.path("tmp"), v.path(&format!("g{i}"))).unwrap();
        files.push((p, data));
    }
    let busy = tiergate(&["compact"], &v.config);
    assert!(!busy.status.success(), "compact under a running daemon");
    assert!(
        text(&busy).contains("in use by another tiergate process"),
        "{}",
        text(&busy)
    );
    v.stop();

    let r = json(&tiergate(&["compact", "--json"], &v.config));
    // 600 files: an inode, a name and an extent each, and a chunk record per distinct chunk.
    let records = r["records"].as_u64().unwrap();
    assert!(records >= 4 * 600, "{r}");
    let (before, after) = (
        r["bytes_before"].as_u64().unwrap(),
        r["bytes_after"].as_u64().unwrap(),
    );
    assert!(after > 0 && after < before, "{r}");
    let recorded = std::fs::read_to_string(v.vol_dir().join("meta.compacted")).unwrap_or_default();
    assert_eq!(recorded.trim(), after.to_string());
    let o = tiergate(&["compact"], &v.config);
    assert!(
        text(&o).contains("metadata store compacted:") && text(&o).contains(" records, "),
        "{}",
        text(&o)
    );

    v.start();
    for (p, data) in &files {
        assert!(
            std::fs::read(p).unwrap() == *data,
            "{} differs",
            p.display()
        );
    }
    v.stop();
}

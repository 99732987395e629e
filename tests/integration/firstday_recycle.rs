//! The recycle bin after `rm -rf` (issue 21): every entry keeps its full path, a deleted tree
//! lists as one line and comes back as a tree (parents made again, elsewhere with --to, or by
//! its path), off-site metadata carries the paths, and an upload cut off mid-body never lands
//! in the bin. Real daemon, real mount, `rm -rf` and the CLI as an administrator runs them.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{random_bytes, text, tiergate, TestVolume};
use crate::retention::{lose_and_recover, n, status};
use crate::tiering::sync_ok;
use crate::webdav::share;

const BIN: &str = "\n[recycle]\ndays = 7\n";

/// A directory tree as seen through the mount: relative path → content (None: a directory).
type Tree = BTreeMap<String, Option<Vec<u8>>>;

/// Writes 50 files in nested directories under `root` (a path in the mount); returns them.
fn write_tree(v: &TestVolume, root: &str, seed: u64) -> Tree {
    let mut t = Tree::new();
    for (i, dir) in [
        "",
        "daily",
        "daily/2026-12-01",
        "daily/2026-12-02 (retry)",
        "weekly/w48/parts",
    ]
    .iter()
    .enumerate()
    {
        if !dir.is_empty() {
            let mut p = String::new();
            for seg in dir.split('/') {
                p = if p.is_empty() {
                    seg.to_string()
                } else {
                    format!("{p}/{seg}")
                };
                t.insert(p.clone(), None);
            }
        }
        std::fs::create_dir_all(v.path(&format!("{root}/{dir}"))).unwrap();
        for j in 0..10 {
            let name = if dir.is_empty() {
                format!("file {j}.vbk")
            } else {
                format!("{dir}/part-{j}.vib")
            };
            // Mostly small, one larger file per directory.
            let len = if j == 0 { 700_000 } else { 1000 + 3000 * j };
            let data = random_bytes(seed * 1000 + (i * 10 + j) as u64, len);
            std::fs::write(v.path(&format!("{root}/{name}")), &data).unwrap();
            t.insert(name, Some(data));
        }
    }
    t
}

/// What is under `dir` (recursively).
fn read_tree(dir: &Path) -> Tree {
    let mut t = Tree::new();
    fn walk(base: &Path, dir: &Path, t: &mut Tree) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                t.insert(rel, None);
                walk(base, &p, t);
            } else {
                t.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    walk(dir, dir, &mut t);
    t
}

fn tree_bytes(t: &Tree) -> u64 {
    t.values().flatten().map(|d| d.len() as u64).sum()
}

fn files_in(t: &Tree) -> u64 {
    t.values().filter(|d| d.is_some()).count() as u64
}

/// `rm -rf PATH` in the mount, as an administrator would.
fn rm_rf(v: &TestVolume, rel: &str) {
    let o = Command::new("rm")
        .arg("-rf")
        .arg(v.path(rel))
        .output()
        .unwrap();
    assert!(o.status.success(), "rm -rf {rel}: {}", text(&o));
    assert!(!v.path(rel).exists());
}

/// `tiergate recycle list --json [--all]`: its entries.
fn list(v: &TestVolume, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["recycle", "list", "--json"];
    if all {
        args.push("--all");
    }
    let o = tiergate(&args, &v.config);
    assert!(o.status.success(), "recycle list: {}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    r["files"].as_array().unwrap().clone()
}

/// `tiergate recycle ARGS`, asserting success; its standard output.
fn recycle(v: &TestVolume, args: &[&str]) -> String {
    let o = tiergate(&[&["recycle"][..], args].concat(), &v.config);
    assert!(
        o.status.success(),
        "recycle {args:?}: {}\n{}",
        text(&o),
        v.log_tail()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// After `rm -rf` of a tree of 50 files: one line in the list, with its full path, its file
/// count and its size (before: 50 lines of `?/name`); restored by its id, every file comes
/// back byte-identical at its original path, directories included, and the restore says
/// where in paths (before: "directory inode 1", everything in the root).
#[test]
fn rm_rf_tree_lists_as_one_entry_with_its_path_and_restores_as_a_tree() {
    let mut v = TestVolume::new(BIN);
    v.start();
    std::fs::create_dir_all(v.path("backups")).unwrap();
    std::fs::write(v.path("backups/keep.txt"), b"stays").unwrap();
    let tree = write_tree(&v, "backups/host1", 1);
    assert_eq!(files_in(&tree), 50);
    rm_rf(&v, "backups/host1");

    let out = recycle(&v, &["list"]);
    assert!(!out.contains("?/"), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "one tree, one line:\n{out}");
    assert!(lines[0].starts_with("1 entry in the recycle bin"), "{out}");
    assert!(
        lines[1].contains("/backups/host1/  (directory, 50 files)")
            && lines[1].contains(&format!("{} bytes", tree_bytes(&tree))),
        "{out}"
    );
    let entries = list(&v, false);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(
        (e["kind"].as_str(), e["path"].as_str()),
        (Some("dir"), Some("/backups/host1")),
        "{e}"
    );
    assert_eq!(n(e, "files"), 50, "{e}");
    assert_eq!(n(e, "dirs"), 6, "{e}");
    assert_eq!(n(e, "size"), tree_bytes(&tree), "{e}");
    // Every file and directory, each with its own path.
    let all = list(&v, true);
    assert_eq!(all.len(), tree.len() + 1);
    for f in &all {
        let p = f["path"].as_str().unwrap();
        if p == "/backups/host1" {
            continue;
        }
        let rel = p
            .strip_prefix("/backups/host1/")
            .unwrap_or_else(|| panic!("{f}"));
        let want = tree
            .get(rel)
            .unwrap_or_else(|| panic!("{p} not in the tree"));
        assert_eq!(f["kind"] == "dir", want.is_none(), "{f}");
        assert_eq!(n(f, "in_tree"), n(e, "ino"), "{f}");
    }

    let id = n(e, "ino").to_string();
    let out = recycle(&v, &["restore", &id]);
    assert_eq!(
        out.trim(),
        format!(
            "restored /backups/host1 (50 files, {} bytes) as /backups/host1",
            tree_bytes(&tree)
        )
    );
    assert_eq!(read_tree(&v.path("backups/host1")), tree);
    assert_eq!(std::fs::read(v.path("backups/keep.txt")).unwrap(), b"stays");
    assert!(list(&v, true).is_empty());
    // The restored tree is a tree like any other: it can go again and come back again.
    rm_rf(&v, "backups/host1/weekly");
    let e = &list(&v, false)[0];
    assert_eq!(e["path"], "/backups/host1/weekly", "{e}");
    assert_eq!(n(e, "files"), 10, "{e}");
    recycle(&v, &["restore", &n(e, "ino").to_string()]);
    assert_eq!(read_tree(&v.path("backups/host1")), tree);
    v.stop();
}

/// The parents of a deleted tree deleted too (and the daemon restarted in between): the tree
/// restored by its path makes them again, as `mkdir -p` would; --to puts a tree or a file
/// elsewhere; a restore onto a name taken meanwhile gets a suffix. Before: no `--path`, a file
/// of a removed directory landed in the root, directories did not come back.
#[test]
fn restore_by_path_recreates_parents_and_to_puts_it_elsewhere() {
    let mut v = TestVolume::new(BIN);
    v.start();
    let host1 = write_tree(&v, "site/backups/host1", 2);
    let host2 = write_tree(&v, "site/backups/host2", 3);
    let report = random_bytes(9, 5000);
    std::fs::write(v.path("site/report.txt"), &report).unwrap();
    rm_rf(&v, "site/backups/host1");
    v.stop();
    v.start();
    rm_rf(&v, "site");
    // One deletion after the other: host1 first, then the rest of the site with it inside.
    let top = list(&v, false);
    assert_eq!(top.len(), 1, "{top:?}");
    assert_eq!(top[0]["path"], "/site", "{top:?}");
    assert_eq!(n(&top[0], "files"), 101, "{top:?}");
    let all = list(&v, true);
    assert!(all
        .iter()
        .all(|f| f["path"].as_str().is_some_and(|p| p.starts_with("/site"))));

    let out = recycle(&v, &["restore", "--path", "/site/backups/host1/"]);
    assert_eq!(
        out.trim(),
        format!(
            "restored /site/backups/host1 (50 files, {} bytes) as /site/backups/host1",
            tree_bytes(&host1)
        )
    );
    assert_eq!(read_tree(&v.path("site/backups/host1")), host1);
    assert!(!v.path("site/backups/host2").exists());
    assert!(!v.path("site/report.txt").exists());

    // A file by its path, elsewhere (parents made).
    let out = recycle(
        &v,
        &[
            "restore",
            "--path",
            "site/report.txt",
            "--to",
            "/restores/old report.txt",
        ],
    );
    assert_eq!(
        out.trim(),
        "restored /site/report.txt (5000 bytes) as /restores/old report.txt"
    );
    assert_eq!(
        std::fs::read(v.path("restores/old report.txt")).unwrap(),
        report
    );
    // The rest of the site: /site exists again, so beside it.
    let site = list(&v, false);
    assert_eq!(site.len(), 1, "{site:?}");
    let out = recycle(&v, &["restore", &n(&site[0], "ino").to_string()]);
    assert!(out.contains("as /site.restored-1"), "{out}");
    assert_eq!(read_tree(&v.path("site.restored-1/backups/host2")), host2);
    // A tree elsewhere.
    rm_rf(&v, "site.restored-1/backups/host2");
    let out = recycle(
        &v,
        &[
            "restore",
            "--path",
            "/site.restored-1/backups/host2",
            "--to",
            "/restores/h2",
        ],
    );
    assert!(out.trim().ends_with("as /restores/h2"), "{out}");
    assert_eq!(read_tree(&v.path("restores/h2")), host2);
    // --to never replaces; a path nothing was deleted from is an error that says so.
    rm_rf(&v, "site/backups/host1/daily");
    let o = tiergate(
        &[
            "recycle",
            "restore",
            "--path",
            "/site/backups/host1/daily",
            "--to",
            "/restores/h2",
        ],
        &v.config,
    );
    assert!(!o.status.success(), "{}", text(&o));
    let o = tiergate(
        &["recycle", "restore", "--path", "/no/such/thing"],
        &v.config,
    );
    assert!(
        !o.status.success()
            && text(&o).contains("nothing in the recycle bin was deleted from /no/such/thing"),
        "{}",
        text(&o)
    );
    assert!(list(&v, true).iter().all(|f| f["path"]
        .as_str()
        .is_some_and(|p| p.starts_with("/site/backups/host1/daily"))));
    v.stop();
}

/// The paths travel with the off-site metadata: after the appliance is lost and recovered
/// from the store, the bin lists the tree by its path and restores it.
#[test]
fn recycled_paths_survive_a_recovery_from_the_store() {
    let mut v = TestVolume::new(&format!("\n[backend]\npath = \"store\"\n{BIN}"));
    v.start();
    let tree = write_tree(&v, "veeam/job1", 4);
    rm_rf(&v, "veeam/job1");
    sync_ok(&v, "120");
    lose_and_recover(&mut v);
    let top = list(&v, false);
    assert_eq!(top.len(), 1, "{top:?}");
    assert_eq!(top[0]["path"], "/veeam/job1", "{top:?}");
    recycle(&v, &["restore", "--path", "/veeam/job1"]);
    assert_eq!(read_tree(&v.path("veeam/job1")), tree);
    v.stop();
}

/// A large PUT cut off halfway (the client announced 64 MiB, sent 32 and closed), once onto
/// a new name and once over an existing file: nothing lands in the bin, the old file is
/// untouched, and the space comes back.
#[test]
fn aborted_large_put_leaves_the_bin_empty_and_gives_the_space_back() {
    let mut v = TestVolume::new(BIN);
    v.start();
    let d = share(&v);
    let old = random_bytes(21, 300_000);
    assert_eq!(d.put("/existing.bin", &old).status, 201);
    let stored = || n(&status(&v)["space"], "stored_bytes");
    let before = stored();
    for target in ["/new.bin", "/existing.bin"] {
        let mut s = TcpStream::connect(d.addr()).unwrap();
        write!(
            s,
            "PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            64 << 20
        )
        .unwrap();
        s.write_all(&random_bytes(22, 32 << 20)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = stored();
            if s <= before + (1 << 20) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{target}: {s} bytes stored, {before} before the upload"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(list(&v, true).is_empty(), "{target}: {:?}", list(&v, true));
    }
    assert_eq!(d.get("/new.bin").status, 404);
    assert_eq!(d.get("/existing.bin").body, old);
    let sp = status(&v)["space"].clone();
    assert_eq!(n(&sp, "recycle_files"), 0, "{sp}");
    v.stop();
}

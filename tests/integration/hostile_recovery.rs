//! Someone who can write the bucket but does not hold the passphrase: deleting the newest
//! journal segments, a junk object named like the newest checkpoint, an edited `volume.toml`
//! and a forged `lease` must not make a recovery silently older, block it, or stop uploads.
//!
//! The local directory store (`[backend] path`, outside the volume directory so it survives
//! the loss of the appliance) has the bucket's object names, so the real daemon and the real
//! `tiergate recover` run against it with no S3 server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::{random_bytes, text, tiergate, TestVolume};

/// A volume whose store is `<test dir>/store`.
fn volume() -> TestVolume {
    TestVolume::new("\n[backend]\npath = \"store\"\n")
}

fn store(v: &TestVolume) -> PathBuf {
    v.dir.path().join("store")
}

fn sync(v: &TestVolume) {
    let o = tiergate(&["sync", "--timeout", "120"], &v.config);
    assert!(o.status.success(), "sync: {}\n{}", text(&o), v.log_tail());
}

/// Object names under `dir` of the store (e.g. "meta/journal"), sorted.
fn objects(v: &TestVolume, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store(v).join(dir))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Writes batches of files for rounds `rounds`, each followed by `tiergate sync` (one or more
/// journal segments per round); returns every file by name.
fn ship_rounds(v: &TestVolume, rounds: std::ops::Range<u64>) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for r in rounds {
        for i in 0..3 {
            let name = format!("r{r}-f{i}.bin");
            let data = random_bytes(r * 10 + i, 40_000 + (i as usize) * 1000);
            std::fs::write(v.path(&name), &data).unwrap();
            files.insert(name, data);
        }
        sync(v);
    }
    files
}

/// Stops the daemon and removes the volume directory: the appliance is lost.
fn lose(v: &mut TestVolume) {
    v.stop();
    std::fs::remove_dir_all(v.vol_dir()).unwrap();
}

fn recover(v: &TestVolume, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["recover"];
    args.extend_from_slice(extra);
    tiergate(&args, &v.config)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The consistency point a successful `recover` printed.
fn recovered_point(o: &std::process::Output) -> u64 {
    let out = String::from_utf8_lossy(&o.stdout);
    let tail = out
        .split("to consistency point ")
        .nth(1)
        .unwrap_or_else(|| panic!("no point in {out}"));
    tail.split(':').next().unwrap().trim().parse().unwrap()
}

#[test]
fn deleting_the_newest_segments_needs_accept_older_and_names_the_point() {
    let mut v = volume();
    v.start();
    let early = ship_rounds(&v, 0..2);
    let segs_early = objects(&v, "meta/journal");
    let late = ship_rounds(&v, 2..4);
    lose(&mut v);
    let segs = objects(&v, "meta/journal");
    let newer: Vec<&String> = segs.iter().filter(|s| !segs_early.contains(s)).collect();
    assert!(!newer.is_empty(), "{segs:?}");
    assert!(
        !objects(&v, "meta/head").is_empty(),
        "no metadata head in the store"
    );
    // The attacker deletes every segment written after the first two rounds.
    for s in &newer {
        std::fs::remove_file(store(&v).join("meta/journal").join(s)).unwrap();
    }

    let o = recover(&v, &[]);
    assert!(!o.status.success(), "recovered silently: {}", text(&o));
    let err = stderr(&o);
    assert!(err.contains("--accept-older"), "{err}");
    assert!(err.contains("reaches only"), "{err}");
    assert!(
        !v.vol_dir().join("volume.toml").exists(),
        "a refused recovery left a volume"
    );

    let o = recover(&v, &["--accept-older"]);
    assert!(o.status.success(), "{}", text(&o));
    let point = recovered_point(&o);
    let err = stderr(&o);
    assert!(err.contains("WARNING") && err.contains("OLDER"), "{err}");
    assert!(
        stderr(&recover_refusal_again(&v)).contains(&point.to_string()),
        "the refusal names the reachable point {point}"
    );
    v.start_with(&["--take-over"]);
    crate::retention::check_files(&v, &early, "recovered to the older point");
    for name in late.keys() {
        assert!(!v.path(name).exists(), "{name} came back from nowhere");
    }
    // The recovered appliance ships again, and a later recovery reaches its new point.
    std::fs::write(v.path("after.txt"), b"after the rollback").unwrap();
    sync(&v);
    lose(&mut v);
    let o = recover(&v, &[]);
    assert!(o.status.success(), "{}", text(&o));
    v.start_with(&["--take-over"]);
    assert_eq!(
        std::fs::read(v.path("after.txt")).unwrap(),
        b"after the rollback"
    );
    crate::retention::check_files(&v, &early, "second recovery");
    v.stop();
}

/// Runs the refused recovery once more on a copy of the config into a scratch directory (the
/// real volume directory now holds the accepted recovery) and returns its output.
fn recover_refusal_again(v: &TestVolume) -> std::process::Output {
    let cfg = std::fs::read_to_string(&v.config)
        .unwrap()
        .replace("path = \"vol\"", "path = \"scratch\"");
    let c = v.dir.path().join("scratch.toml");
    std::fs::write(&c, cfg).unwrap();
    let o = tiergate(&["recover"], &c);
    assert!(!o.status.success(), "{}", text(&o));
    o
}

#[test]
fn deleting_every_head_is_not_a_silent_rollback() {
    let mut v = volume();
    v.start();
    let files = ship_rounds(&v, 0..2);
    lose(&mut v);
    let heads = objects(&v, "meta/head");
    assert!(!heads.is_empty());
    std::fs::remove_dir_all(store(&v).join("meta/head")).unwrap();
    let o = recover(&v, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("no authentic metadata head") && err.contains("--accept-older"),
        "{err}"
    );
    let o = recover(&v, &["--accept-older"]);
    assert!(o.status.success(), "{}", text(&o));
    v.start_with(&["--take-over"]);
    crate::retention::check_files(&v, &files, "recovered without a head");
    v.stop();
}

#[test]
fn a_junk_newest_checkpoint_falls_back_to_an_older_one() {
    let mut v = volume();
    v.start();
    let files = ship_rounds(&v, 0..3);
    lose(&mut v);
    let ckpts = objects(&v, "meta/checkpoint");
    assert!(!ckpts.is_empty());
    let segs = objects(&v, "meta/journal");
    let last: u64 = segs
        .iter()
        .map(|s| u64::from_str_radix(&s[17..33], 16).unwrap())
        .max()
        .unwrap();
    // Junk under the name of a checkpoint newer than every real one.
    let junk = format!("{:016x}-{:016x}.ckpt", last, last - 1);
    std::fs::write(
        store(&v).join("meta/checkpoint").join(&junk),
        random_bytes(99, 5000),
    )
    .unwrap();

    let o = recover(&v, &[]);
    assert!(
        o.status.success(),
        "junk checkpoint blocked recovery: {}",
        text(&o)
    );
    let err = stderr(&o);
    assert!(
        err.contains("WARNING") && err.contains(&junk) && err.contains("older checkpoint"),
        "{err}"
    );
    assert_eq!(recovered_point(&o), last);
    v.start_with(&["--take-over"]);
    crate::retention::check_files(&v, &files, "after falling back");
    v.stop();
}

#[test]
fn an_edited_volume_toml_is_refused() {
    let mut v = volume();
    v.start();
    ship_rounds(&v, 0..1);
    lose(&mut v);
    let path = store(&v).join("volume.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    assert!(original.contains("mac = "), "{original}");
    let info: toml::Value = toml::from_str(&original).unwrap();
    let avg = info["chunking"]["avg_size"].as_integer().unwrap();
    let edited = original.replace(
        &format!("avg_size = {avg}"),
        &format!("avg_size = {}", avg * 2),
    );
    assert_ne!(edited, original);
    std::fs::write(&path, &edited).unwrap();
    let o = recover(&v, &[]);
    assert!(!o.status.success(), "edited config accepted: {}", text(&o));
    let err = stderr(&o);
    assert!(err.contains("not authentic"), "{err}");
    assert!(!v.vol_dir().join("volume.toml").exists());

    // Without its MAC line the edit is still caught: the head records the config's digest.
    let stripped: String = edited
        .lines()
        .filter(|l| !l.starts_with("mac = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, &stripped).unwrap();
    let o = recover(&v, &[]);
    assert!(!o.status.success(), "edited config accepted: {}", text(&o));
    assert!(stderr(&o).contains("edited"), "{}", text(&o));

    // The genuine one recovers.
    std::fs::write(&path, &original).unwrap();
    let o = recover(&v, &[]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_forged_lease_does_not_stop_uploads() {
    let mut v = volume();
    v.start();
    ship_rounds(&v, 0..1);
    let lease = store(&v).join("lease");
    let genuine: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&lease).unwrap()).unwrap();
    assert!(genuine["mac"].is_string(), "{genuine}");
    // Another "appliance" claims the volume, without the key (no MAC, then a wrong one).
    for forged in [
        serde_json::json!({"appliance": "intruder", "host": "evil", "since_unix": 4_000_000_000u64}),
        serde_json::json!({"appliance": "intruder", "host": "evil", "since_unix": 4_000_000_000u64,
                           "mac": "00".repeat(32)}),
    ] {
        std::fs::write(&lease, serde_json::to_vec(&forged).unwrap()).unwrap();
        let name = format!("after-{}.bin", forged["mac"].is_string());
        let data = random_bytes(7, 300_000);
        std::fs::write(v.path(&name), &data).unwrap();
        // Uploads continue: sync completes and the metadata naming the file is off-site.
        sync(&v);
        let held: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&lease).unwrap()).unwrap();
        assert_eq!(held["appliance"], genuine["appliance"], "{held}");
        let st = tiergate::control::call(&v.vol_dir(), "status").unwrap();
        assert!(st["fenced_by"].is_null(), "{st}");
    }
    // And it was said loudly.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(v.log_path()).unwrap();
        if log.contains("lease object in the bucket is not authentic") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", v.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    v.stop();
}

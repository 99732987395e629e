//! Offline maintenance through the real binary, with the local directory store (no `[s3]`
//! section: objects go under `<volume>/backend/`): `tiergate key change` then `tiergate recover`
//! needs the new passphrase; `tiergate index rebuild` after losing every chunk record gives
//! back the same index and files; `tiergate verify --deep` names a file damaged in a pack not
//! yet off-site, and repairs a damaged local copy of an uploaded pack from the store.
//!
//! Packs get uploaded (and evicted) deterministically by writing through the mount of a
//! running daemon, then `tiergate sync` (and `tiergate evict`), then stopping the daemon.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiergate::kv::{prefix_end, Batch, KvPair, KvStore};
use tiergate::meta::{self, ChunkRecord, Extent, PackState};
use tiergate::volume::{Caller, Volume, VolumeOptions};

use crate::common::{random_bytes, tiergate_stdin as run, TestVolume, PASSPHRASE};

const NEW_PASSPHRASE: &str = "a new passphrase for the volume";
const ROOT: u64 = 1;

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sync(v: &TestVolume) {
    let o = run(&["sync", "--timeout", "120"], &v.config, "");
    assert!(o.status.success(), "sync: {}\n{}", text(&o), v.log_tail());
}

fn open(v: &TestVolume, passphrase: &str) -> Arc<Volume> {
    Volume::open(&v.vol_dir(), passphrase, VolumeOptions::default()).unwrap()
}

fn records(vol: &Volume, prefix: Vec<u8>) -> Vec<KvPair> {
    let kv: &dyn KvStore = vol.journal();
    kv.range(&prefix, prefix_end(&prefix).as_deref()).unwrap()
}

fn ino_of(vol: &Volume, path: &str) -> u64 {
    path.split('/')
        .filter(|s| !s.is_empty())
        .fold(ROOT, |dir, name| {
            vol.lookup(dir, name.as_bytes()).unwrap().ino
        })
}

/// Flips one byte in the middle of the blob of `path`'s first chunk; returns the pack.
fn flip_first_chunk(v: &TestVolume, path: &str) -> u64 {
    let vol = open(v, PASSPHRASE);
    let ino = ino_of(&vol, path);
    let x = Extent::decode(&records(&vol, meta::extent_prefix(ino))[0].1).unwrap();
    let kv: &dyn KvStore = vol.journal();
    let rec = ChunkRecord::decode(&kv.get(&meta::chunk_key(&x.chunk)).unwrap().unwrap()).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vol.pack_file(rec.pack))
        .unwrap();
    let at = rec.offset + rec.stored_len as u64 / 2;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    rec.pack
}

fn pack_state(v: &TestVolume, pack: u64) -> PackState {
    let vol = open(v, PASSPHRASE);
    let table = vol.pack_table().unwrap();
    table.iter().find(|(id, _)| *id == pack).unwrap().1.state
}

/// A config for recovering `v`'s store into `<v>/recovered`, with `passphrase` in its file.
fn recovery_config(v: &TestVolume, passphrase: &str) -> PathBuf {
    let d = v.dir.path();
    std::fs::write(d.join("recovery-passphrase"), format!("{passphrase}\n")).unwrap();
    let c = d.join("recovery.toml");
    std::fs::write(
        &c,
        format!(
            "[volume]\npath = \"recovered\"\npassphrase_file = \"recovery-passphrase\"\n\n\
             [backend]\npath = \"{}\"\n",
            v.vol_dir().join("backend").display()
        ),
    )
    .unwrap();
    c
}

#[test]
fn key_change_then_recover_needs_the_new_passphrase() {
    let mut v = TestVolume::new("");
    v.start();
    std::fs::write(v.path("hello.txt"), b"hello, world").unwrap();
    sync(&v);
    v.stop();
    let key_file = v.vol_dir().join("key");
    let key_object = v.vol_dir().join("backend/keys/master");
    let old_key = std::fs::read(&key_file).unwrap();
    assert_eq!(std::fs::read(&key_object).unwrap(), old_key);

    // Same passphrase again, or an empty one: refused, nothing written.
    for bad in [format!("{PASSPHRASE}\n"), "\n".to_string()] {
        let o = run(&["key", "change"], &v.config, &bad);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert_eq!(std::fs::read(&key_file).unwrap(), old_key);
    }

    let o = run(
        &["key", "change"],
        &v.config,
        &format!("{NEW_PASSPHRASE}\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    assert!(out.contains("passphrase changed"), "{out}");
    assert!(out.contains("put the new passphrase in"), "{out}");
    let new_key = std::fs::read(&key_file).unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(std::fs::read(&key_object).unwrap(), new_key);
    let err = Volume::open(&v.vol_dir(), PASSPHRASE, VolumeOptions::default())
        .err()
        .expect("the old passphrase no longer opens the volume");
    assert!(matches!(err, tiergate::Error::WrongPassphrase), "{err}");

    // The config still names the old passphrase: the next change is refused.
    let o = run(&["key", "change"], &v.config, "another\n");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&key_file).unwrap(), new_key);

    // Recovery from the store: the old passphrase is refused, the new one works.
    let c2 = recovery_config(&v, PASSPHRASE);
    let o = run(&["recover"], &c2, "");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"),
        "{}",
        text(&o)
    );
    assert!(!v.dir.path().join("recovered/volume.toml").exists());
    let c2 = recovery_config(&v, NEW_PASSPHRASE);
    let o = run(&["recover"], &c2, "");
    assert!(o.status.success(), "{}", text(&o));
    let rec = Volume::open(
        &v.dir.path().join("recovered"),
        NEW_PASSPHRASE,
        VolumeOptions::default(),
    )
    .unwrap();
    assert_eq!(rec.lookup(ROOT, b"hello.txt").unwrap().inode.size, 12);
    drop(rec);

    // With the passphrase file updated, the appliance serves as before.
    std::fs::write(
        v.dir.path().join("passphrase"),
        format!("{NEW_PASSPHRASE}\n"),
    )
    .unwrap();
    v.start();
    assert_eq!(std::fs::read(v.path("hello.txt")).unwrap(), b"hello, world");
    v.stop();
}

#[test]
fn key_change_with_the_store_failing_stands_locally_and_the_daemon_uploads_it() {
    let mut v = TestVolume::new("");
    v.start();
    std::fs::write(v.path("f"), b"data").unwrap();
    sync(&v);
    v.stop();
    // A directory where the key object goes: the store refuses the upload.
    let key_object = v.vol_dir().join("backend/keys/master");
    std::fs::remove_file(&key_object).unwrap();
    std::fs::create_dir_all(key_object.join("in-the-way")).unwrap();

    let o = run(
        &["key", "change"],
        &v.config,
        &format!("{NEW_PASSPHRASE}\n"),
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = stdout(&o);
    assert!(out.contains("uploads it at its next start"), "{out}");
    let new_key = std::fs::read(v.vol_dir().join("key")).unwrap();
    drop(Volume::open(&v.vol_dir(), NEW_PASSPHRASE, VolumeOptions::default()).unwrap());

    std::fs::remove_dir_all(&key_object).unwrap();
    std::fs::write(
        v.dir.path().join("passphrase"),
        format!("{NEW_PASSPHRASE}\n"),
    )
    .unwrap();
    v.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(&key_object).ok().as_deref() != Some(&new_key[..]) {
        assert!(
            Instant::now() < deadline,
            "the daemon did not upload the key object:\n{}",
            v.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    v.stop();
}

#[test]
fn index_rebuild_after_losing_every_chunk_record() {
    let mut v = TestVolume::new("pack_size_mib = 1");
    v.start();
    std::fs::create_dir(v.path("a")).unwrap();
    let big = random_bytes(21, 3 << 20);
    let mut files = vec![
        ("a/big.bin", big.clone()),
        ("a/copy.bin", big),
        ("a/small.bin", random_bytes(22, 100_000)),
    ];
    for (name, data) in &files {
        std::fs::write(v.path(name), data).unwrap();
    }
    std::fs::write(v.path("gone.bin"), random_bytes(23, 1 << 20)).unwrap();
    std::fs::remove_file(v.path("gone.bin")).unwrap();
    sync(&v);
    let o = run(&["evict"], &v.config, "");
    assert!(o.status.success(), "{}", text(&o));
    let later: Vec<u8> = (0..100_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    files.push(("later.txt", later));
    files.push(("b.bin", random_bytes(24, 2 << 20)));
    for (name, data) in &files[3..] {
        std::fs::write(v.path(name), data).unwrap();
    }
    v.stop();

    let vol = open(&v, PASSPHRASE);
    let states: Vec<PackState> = vol
        .pack_table()
        .unwrap()
        .iter()
        .map(|p| p.1.state)
        .collect();
    assert!(states.contains(&PackState::Remote), "{states:?}");
    let index = records(&vol, meta::chunk_prefix());
    let packs = records(&vol, meta::pack_prefix());
    let stats = records(&vol, meta::misc_key("stats"));
    let mut b = Batch::default();
    for (k, _) in &index {
        b.delete(k.clone());
    }
    vol.journal().apply(b).unwrap();
    vol.journal().flush().unwrap();
    drop(vol);

    let o = run(&["verify"], &v.config, "");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let out = stdout(&o);
    for name in ["/a/big.bin", "/a/copy.bin", "/b.bin", "/later.txt"] {
        assert!(out.contains(&format!("DAMAGED {name}")), "{out}");
    }
    assert!(out.contains("not in the chunk index"), "{out}");

    let o = run(&["index", "rebuild"], &v.config, "");
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    eprintln!("{out}");
    assert!(
        out.contains(&format!("chunks indexed:   {}", index.len())),
        "{out}"
    );
    assert!(out.contains("damage:           none"), "{out}");
    let vol = open(&v, PASSPHRASE);
    assert!(
        records(&vol, meta::chunk_prefix()) == index,
        "index differs"
    );
    assert_eq!(records(&vol, meta::pack_prefix()), packs);
    assert_eq!(records(&vol, meta::misc_key("stats")), stats);
    drop(vol);

    let o = run(&["verify", "--deep", "--remote"], &v.config, "");
    assert!(o.status.success(), "{}", text(&o));
    eprintln!("{}", stdout(&o));
    assert!(
        stdout(&o).contains("result: no damage found"),
        "{}",
        text(&o)
    );

    v.start();
    for (name, data) in &files {
        assert!(
            std::fs::read(v.path(name)).unwrap() == *data,
            "{name} differs after the rebuild"
        );
    }
    v.stop();
}

#[test]
fn verify_deep_names_a_file_damaged_in_a_pack_not_yet_off_site() {
    let v = TestVolume::new("");
    // Written in-process, without the daemon: nothing is uploaded.
    let vol = open(&v, PASSPHRASE);
    let me = Caller { uid: 0, gid: 0 };
    let dir = vol.mkdir(ROOT, b"dir", 0o755, me).unwrap().ino;
    for (parent, name, seed) in [(dir, "victim.bin", 31), (ROOT, "other.bin", 32)] {
        let (a, fh) = vol.create_file(parent, name.as_bytes(), 0o644, me).unwrap();
        vol.write(a.ino, 0, &random_bytes(seed, 2 << 20)).unwrap();
        vol.release(fh).unwrap();
    }
    vol.shutdown().unwrap();
    drop(vol);
    let pack = flip_first_chunk(&v, "dir/victim.bin");
    assert_eq!(pack_state(&v, pack), PackState::Sealed);

    let o = run(&["verify"], &v.config, "");
    assert!(o.status.success(), "without --deep: {}", text(&o));
    let o = run(&["verify", "--deep"], &v.config, "");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let out = stdout(&o);
    eprintln!("{out}");
    assert!(out.contains("DAMAGED /dir/victim.bin\n  bytes 0-"), "{out}");
    assert!(out.contains("fails verification"), "{out}");
    assert!(!out.contains("other.bin"), "{out}");
    assert!(out.contains("result: 1 damaged file,"), "{out}");
    assert!(
        v.vol_dir()
            .join("packs")
            .join(tiergate::pack::pack_file_name(pack))
            .exists(),
        "pack files are never removed without an off-site copy"
    );
}

/// `tiergate verify` checks the extent map's rules too: an extent laid over another (as a
/// planner bug would leave it) makes it fail and say where, without `--deep`.
#[test]
fn verify_reports_overlapping_extents() {
    let v = TestVolume::new("");
    let vol = open(&v, PASSPHRASE);
    let me = Caller { uid: 0, gid: 0 };
    let (a, fh) = vol.create_file(ROOT, b"f.bin", 0o644, me).unwrap();
    vol.write(a.ino, 0, &random_bytes(41, 4 << 20)).unwrap();
    vol.release(fh).unwrap();
    vol.shutdown().unwrap();
    drop(vol);
    let o = run(&["verify"], &v.config, "");
    assert!(o.status.success(), "a sound volume: {}", text(&o));
    assert!(stdout(&o).contains("extent map, index"), "{}", text(&o));

    // A copy of the second extent, moved 4 KiB back over the first.
    let vol = open(&v, PASSPHRASE);
    let extents = records(&vol, meta::extent_prefix(a.ino));
    assert!(extents.len() >= 2, "the file needs two chunks");
    let first = Extent::decode(&extents[0].1).unwrap();
    let mut b = Batch::default();
    b.put(
        meta::extent_key(a.ino, first.len as u64 - 4096),
        extents[1].1.clone(),
    );
    let kv: &dyn KvStore = vol.journal();
    kv.apply(b).unwrap();
    vol.shutdown().unwrap();
    drop(vol);
    let o = run(&["verify"], &v.config, "");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("EXTENT MAP inode {}: the extent at ", a.ino)),
        "{out}"
    );
    assert!(out.contains("overlaps the one before"), "{out}");
    assert!(out.contains("extent map problem"), "{out}");
}

#[test]
fn verify_deep_repairs_a_damaged_local_copy_of_an_uploaded_pack() {
    let mut v = TestVolume::new("");
    v.start();
    std::fs::create_dir(v.path("x")).unwrap();
    let data = random_bytes(41, 4 << 20);
    std::fs::write(v.path("x/data.bin"), &data).unwrap();
    sync(&v);
    // The daemon holds the volume: offline commands refuse, with the reason.
    let o = run(&["verify"], &v.config, "");
    // An error, not damage: exit status 1 (damage is 4).
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use by another tiergate process"),
        "{}",
        text(&o)
    );
    v.stop();

    let pack = flip_first_chunk(&v, "x/data.bin");
    assert_eq!(pack_state(&v, pack), PackState::Uploaded);
    let o = run(&["verify", "--deep"], &v.config, "");
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    eprintln!("{out}");
    assert!(out.contains(&format!("repaired pack {pack}")), "{out}");
    assert!(out.contains("result: no damage found"), "{out}");
    assert_eq!(pack_state(&v, pack), PackState::Remote);

    let o = run(&["verify", "--deep", "--remote"], &v.config, "");
    assert!(o.status.success(), "{}", text(&o));
    assert!(!stdout(&o).contains("repaired"), "{}", text(&o));

    v.start();
    assert!(std::fs::read(v.path("x/data.bin")).unwrap() == data);
    v.stop();
}

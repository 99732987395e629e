//! The filesystem core driven directly (no mount): a seeded random-operation model test and
//! the cost of a small overwrite in a large file.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tiergate::chunker::ChunkerParams;
use tiergate::crypto::KdfParams;
use tiergate::volume::{Allocate, Caller, Volume, VolumeOptions};

use crate::common::random_bytes;

const ROOT: u64 = 1;
const ME: Caller = Caller { uid: 0, gid: 0 };

fn small_chunks() -> ChunkerParams {
    ChunkerParams {
        min_size: 16 << 10,
        avg_size: 64 << 10,
        max_size: 256 << 10,
    }
}

fn open(dir: &std::path::Path) -> Arc<Volume> {
    Volume::open(dir, "pw", VolumeOptions::default()).unwrap()
}

fn reopen(vol: Arc<Volume>, dir: &std::path::Path) -> Arc<Volume> {
    vol.shutdown().unwrap();
    drop(vol);
    open(dir)
}

/// A reference model (one byte vector per file) driven by random writes, truncates, punches,
/// clones, commits and restarts; every read is compared with the model.
#[test]
fn random_operations_match_a_reference_model() {
    let seed: u64 = std::env::var("TIERGATE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7157_6a7e);
    eprintln!("model seed {seed} (set TIERGATE_MODEL_SEED to replay)");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    Volume::create(&dir, "pw", small_chunks(), KdfParams::for_tests()).unwrap();
    let mut vol = open(&dir);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    const MAX: usize = 12 << 20;
    let names = [b"a".as_slice(), b"b", b"c"];
    let mut inos = Vec::new();
    let mut model: Vec<Vec<u8>> = Vec::new();
    for n in names {
        let (a, fh) = vol.create_file(ROOT, n, 0o644, ME).unwrap();
        vol.release(fh).unwrap();
        inos.push(a.ino);
        model.push(Vec::new());
    }
    // A pool of content so that some writes repeat earlier data (exercises dedup paths).
    let pool = random_bytes(seed, 4 << 20);
    let mut near = vec![0usize; inos.len()];
    for step in 0..3000 {
        let f = rng.gen_range(0..inos.len());
        let ino = inos[f];
        match rng.gen_range(0..100) {
            0..=44 => {
                // Some writes land near the file's last one: several changed ranges in one
                // chunk before a commit (patches, and regions widened over them).
                let off = if rng.gen_bool(0.3) {
                    (near[f] + rng.gen_range(0..256 << 10)).min(MAX - (1 << 20) - 1)
                } else {
                    rng.gen_range(0..MAX - (1 << 20))
                };
                near[f] = off.saturating_sub(64 << 10);
                let len = if rng.gen_bool(0.8) {
                    rng.gen_range(1..64 << 10)
                } else {
                    rng.gen_range(1..1 << 20)
                };
                let data: Vec<u8> = if rng.gen_bool(0.5) {
                    let s = rng.gen_range(0..pool.len() - len);
                    pool[s..s + len].to_vec()
                } else {
                    random_bytes(rng.gen(), len)
                };
                assert_eq!(vol.write(ino, off as u64, &data).unwrap() as usize, len);
                let m = &mut model[f];
                if m.len() < off + len {
                    m.resize(off + len, 0);
                }
                m[off..off + len].copy_from_slice(&data);
            }
            45..=69 => {
                let m = &model[f];
                let off = rng.gen_range(0..m.len().max(1) + 1000);
                let len = rng.gen_range(1..2 << 20);
                let got = vol.read(ino, off as u64, len as u32).unwrap();
                let end = (off + len).min(m.len());
                let want = if off < m.len() { &m[off..end] } else { &[][..] };
                assert!(
                    *got == *want,
                    "step {step}: read {off}+{len} of file {f} differs"
                );
            }
            70..=76 => {
                let size = rng.gen_range(0..MAX);
                vol.setattr(
                    ino,
                    &tiergate::volume::SetAttr {
                        size: Some(size as u64),
                        ..Default::default()
                    },
                )
                .unwrap();
                model[f].resize(size, 0);
            }
            77..=82 => {
                let m = &mut model[f];
                if m.is_empty() {
                    continue;
                }
                let off = rng.gen_range(0..m.len());
                let len = rng.gen_range(1..(m.len() - off).min(2 << 20) + 1);
                vol.fallocate(ino, off as u64, len as u64, Allocate::PunchHole)
                    .unwrap();
                m[off..off + len].fill(0);
            }
            83..=88 => {
                let g = (f + 1) % inos.len();
                let src_len = model[f].len();
                if src_len == 0 {
                    continue;
                }
                let off_in = rng.gen_range(0..src_len);
                let len = rng.gen_range(1..(src_len - off_in).min(3 << 20) + 1);
                let off_out = rng.gen_range(0..MAX - (3 << 20));
                let n = vol
                    .copy_range(ino, off_in as u64, inos[g], off_out as u64, len as u64)
                    .unwrap() as usize;
                assert_eq!(n, len);
                let piece = model[f][off_in..off_in + len].to_vec();
                let m = &mut model[g];
                if m.len() < off_out + len {
                    m.resize(off_out + len, 0);
                }
                m[off_out..off_out + len].copy_from_slice(&piece);
            }
            89..=94 => {
                vol.fsync(ino).unwrap();
                let problems = tiergate::repair::check_extent_map(&vol).unwrap();
                assert!(problems.is_empty(), "step {step}: {problems:#?}");
            }
            95..=97 => vol.commit_all(false).unwrap(),
            _ => {
                vol = reopen(vol, &dir);
            }
        }
        for (i, &ino) in inos.iter().enumerate() {
            assert_eq!(
                vol.getattr(ino).unwrap().inode.size,
                model[i].len() as u64,
                "step {step}: size of file {i}"
            );
        }
    }
    // Final full comparison after a restart.
    vol = reopen(vol, &dir);
    let problems = tiergate::repair::check_extent_map(&vol).unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    for (i, &ino) in inos.iter().enumerate() {
        let got = read_all(&vol, ino);
        assert!(got == model[i], "file {i} differs after restart");
    }
    // Delete everything: every chunk reference must go away with the files.
    for n in names {
        vol.unlink(ROOT, n).unwrap();
    }
    vol = reopen(vol, &dir);
    let s = vol.stats().unwrap().stats;
    assert_eq!(
        (s.logical_bytes, s.chunks, s.stored_bytes),
        (0, 0, 0),
        "{s:?}"
    );
}

fn read_all(vol: &Volume, ino: u64) -> Vec<u8> {
    let size = vol.getattr(ino).unwrap().inode.size;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let part = vol.read(ino, out.len() as u64, 4 << 20).unwrap();
        assert!(!part.is_empty());
        out.extend_from_slice(&part);
    }
    out
}

/// A volume with default chunking in `tmp` holding one file, `data` written in 8 MiB writes
/// and fsync'd. Returns the volume, the file's inode and its open handle.
fn volume_with_big_file(tmp: &std::path::Path, data: &[u8]) -> (Arc<Volume>, u64, u64) {
    let dir = tmp.join("vol");
    Volume::create(&dir, "pw", ChunkerParams::default(), KdfParams::for_tests()).unwrap();
    let vol = open(&dir);
    let (a, fh) = vol.create_file(ROOT, b"big", 0o644, ME).unwrap();
    for (i, part) in data.chunks(8 << 20).enumerate() {
        vol.write(a.ino, (i * (8 << 20)) as u64, part).unwrap();
    }
    vol.fsync(a.ino).unwrap();
    (vol, a.ino, fh)
}

/// A read that one committed chunk holds lends a slice of the cached chunk (no copy); one that
/// spans chunks, or sees data not yet committed, is put together in a buffer. Both read the
/// same bytes.
#[test]
fn reads_inside_one_chunk_lend_the_cached_chunk() {
    use tiergate::volume::ReadData;
    let tmp = tempfile::tempdir().unwrap();
    let data = random_bytes(9, 16 << 20);
    let (vol, ino, fh) = volume_with_big_file(tmp.path(), &data);
    let (mut lent, mut built) = (0, 0);
    for off in (0..data.len()).step_by(128 << 10) {
        let got = vol.read(ino, off as u64, 128 << 10).unwrap();
        assert!(
            *got == data[off..off + (128 << 10)],
            "read at {off} differs"
        );
        match got {
            ReadData::Chunk(..) => lent += 1,
            ReadData::Owned(_) => built += 1,
        }
    }
    // 128 reads over chunks of 128 KiB to 2 MiB: most lie inside one chunk, a few span two.
    assert!(lent > 64 && built >= 1, "lent {lent}, built {built}");
    // Uncommitted data over a chunk: the read overlays it, so it is built.
    vol.write(ino, 1000, b"fresh").unwrap();
    let got = vol.read(ino, 0, 4096).unwrap();
    assert!(matches!(got, ReadData::Owned(_)));
    assert_eq!(&got[1000..1005], b"fresh");
    assert_eq!(&got[..1000], &data[..1000]);
    vol.release(fh).unwrap();
}

/// Overwriting 4 KiB inside a 256 MiB file stores those 4 KiB as a patch: not the file, and
/// not the chunk around them either.
#[test]
fn small_overwrite_in_large_file_stores_only_its_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let params = ChunkerParams::default();
    let (vol, ino, fh) = volume_with_big_file(tmp.path(), &random_bytes(1, 256 << 20));
    let before = vol.stats().unwrap();
    vol.write(ino, 100 << 20, &[0xAB; 4096]).unwrap();
    vol.fsync(ino).unwrap();
    let after = vol.stats().unwrap();
    vol.release(fh).unwrap();
    let grew = after.pack_bytes - before.pack_bytes;
    let new_chunks = after.stats.chunks as i64 - before.stats.chunks as i64;
    eprintln!("4 KiB overwrite in 256 MiB: {grew} pack bytes, {new_chunks:+} chunks");
    assert!(params.min_size > 4096);
    // The blob's header and tag and the pack record: well under 1 KiB.
    assert!(grew <= 4096 + 1024, "grew {grew}");
    assert_eq!(new_chunks, 1);
    let got = vol.read(ino, (100 << 20) - 10, 4116).unwrap();
    assert_eq!(&got[10..4106], &[0xAB; 4096][..]);
}

/// Random overwrites smaller than the smallest chunk are stored as patches: the packs grow by
/// about the bytes written, not by the chunks they fall in. Reads (whole, and small ones that
/// fall inside a patch or a slice of the chunk around it) match a model, before and after a
/// restart, and writing a patch over a patch frees the first.
#[test]
fn small_random_overwrites_are_stored_as_patches() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 64usize << 20;
    let mut model = random_bytes(11, size);
    let (vol, ino, fh) = volume_with_big_file(tmp.path(), &model);
    let laid_out = vol.stats().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // 200 spots of 4-64 KiB, unaligned, each in a 256 KiB slot of its own (so that no two
    // merge into a range as large as a chunk), in random order.
    let mut slots: Vec<usize> = (0..size / (256 << 10)).collect();
    for i in (1..slots.len()).rev() {
        slots.swap(i, rng.gen_range(0..=i));
    }
    let spots: Vec<(usize, usize)> = slots[..200]
        .iter()
        .map(|&slot| {
            let len = rng.gen_range(1..=16usize) * 4096 - rng.gen_range(0..100);
            (
                slot * (256 << 10) + rng.gen_range(0..(256 << 10) - len),
                len,
            )
        })
        .collect();
    let mut written = 0u64;
    // Three rounds over the same spots: each round's patches replace the round's before.
    for _round in 0..3 {
        for &(off, len) in &spots {
            let data = random_bytes(rng.gen(), len);
            vol.write(ino, off as u64, &data).unwrap();
            model[off..off + len].copy_from_slice(&data);
            written += len as u64;
        }
        vol.fsync(ino).unwrap();
    }
    let after = vol.stats().unwrap();
    let grew = after.pack_bytes - laid_out.pack_bytes;
    eprintln!(
        "600 small overwrites ({written} bytes): packs grew {grew}, chunks {} -> {}",
        laid_out.stats.chunks, after.stats.chunks
    );
    // Each write is stored once (with ~100 bytes of blob and record overhead): no chunk around
    // it is stored again.
    assert!(
        grew <= written + 600 * 1024,
        "packs grew {grew} for {written} written"
    );
    // Only the last round's patches stay referenced, one chunk per spot; the chunks around
    // them stay too (sliced).
    assert_eq!(after.stats.chunks, laid_out.stats.chunks + 200);
    let check = |vol: &Volume, when: &str| {
        let problems = tiergate::repair::check_extent_map(vol).unwrap();
        assert!(problems.is_empty(), "{when}: {problems:#?}");
        assert!(read_all(vol, ino) == model, "content differs {when}");
        for &(off, len) in &spots {
            for (a, b) in [(off, off + len), (off.saturating_sub(5000), off + 100)] {
                let b = b.min(size);
                let got = vol.read(ino, a as u64, (b - a) as u32).unwrap();
                assert!(*got == model[a..b], "read of {a}..{b} differs {when}");
            }
        }
    };
    check(&vol, "after the overwrites");
    vol.release(fh).unwrap();
    let dir = tmp.path().join("vol");
    let vol = reopen(vol, &dir);
    check(&vol, "after a restart");
}

/// Two patches inside one chunk and, before the same commit, a write of more than a chunk's
/// minimum that starts in that chunk: the large write is widened to the chunk's start and
/// takes both patches in (a region that took in only the nearer one overlapped the other).
#[test]
fn a_widened_write_takes_in_every_patch_of_its_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let params = ChunkerParams::default();
    let mut model = random_bytes(13, 16 << 20);
    let (vol, ino, fh) = volume_with_big_file(tmp.path(), &model);
    let cuts = tiergate::chunker::cut_points(&params, &model);
    // A chunk of at least 400 KiB: [cs, ce).
    let (cs, _ce) = std::iter::once(0)
        .chain(cuts.iter().copied())
        .zip(cuts.iter().copied())
        .find(|(s, e)| e - s >= 400 << 10)
        .expect("a chunk of 400 KiB");
    for (off, len) in [
        (cs + 10_000, 4096),
        (cs + 60_000, 5000),
        (cs + 120_000, 200 << 10),
    ] {
        let data = random_bytes(off as u64, len);
        vol.write(ino, off as u64, &data).unwrap();
        model[off..off + len].copy_from_slice(&data);
    }
    vol.fsync(ino).unwrap();
    let problems = tiergate::repair::check_extent_map(&vol).unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(read_all(&vol, ino) == model, "content differs");
    vol.release(fh).unwrap();
}

/// A wrong passphrase is refused before anything is opened or changed.
#[test]
fn wrong_passphrase_is_refused_and_touches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    Volume::create(&dir, "right", small_chunks(), KdfParams::for_tests()).unwrap();
    let listing = |d: &std::path::Path| {
        let mut v: Vec<_> = walk(d);
        v.sort();
        v
    };
    let before = listing(&dir);
    let err = Volume::open(&dir, "wrong", VolumeOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, tiergate::Error::WrongPassphrase), "{err}");
    assert!(err.to_string().contains("passphrase"));
    assert_eq!(before, listing(&dir));
    // A second opener is refused while the first holds the volume.
    let v = open_with(&dir, "right");
    let err = Volume::open(&dir, "right", VolumeOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(v);
}

fn open_with(dir: &std::path::Path, pw: &str) -> Arc<Volume> {
    Volume::open(dir, pw, VolumeOptions::default()).unwrap()
}

/// Files with their size and mtime, to show a refused open changed nothing.
fn walk(d: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push((
                e.path().display().to_string(),
                m.len(),
                m.modified().unwrap(),
            ));
        }
    }
    out
}

/// Crash leftovers around pack creation never stop a volume from opening: a pack file cut
/// short inside its header is removed, a torn tail is cut, and the data stays readable.
#[test]
fn pack_creation_leftovers_and_torn_tails_are_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    Volume::create(&dir, "pw", small_chunks(), KdfParams::for_tests()).unwrap();
    let vol = open(&dir);
    let (a, fh) = vol.create_file(ROOT, b"f", 0o644, ME).unwrap();
    let data = random_bytes(11, 3 << 20);
    vol.write(a.ino, 0, &data).unwrap();
    vol.fsync(a.ino).unwrap();
    vol.release(fh).unwrap();
    drop(vol); // no shutdown: the pack stays open, as after a crash
    let packs = dir.join("packs");
    let open_pack = std::fs::read_dir(&packs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // A torn record after the durable ones, and a pack file cut inside its header.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&open_pack)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0xEE; 1000]).unwrap();
    drop(f);
    let stub = packs.join(tiergate::pack::pack_file_name(0x99));
    std::fs::write(&stub, b"TGPA").unwrap();
    let vol = open(&dir);
    assert!(!stub.exists(), "header-less pack removed");
    assert_eq!(read_all(&vol, a.ino), data);
    // And new data still lands in fresh packs.
    let (b, fh) = vol.create_file(ROOT, b"g", 0o644, ME).unwrap();
    vol.write(b.ino, 0, b"after").unwrap();
    vol.fsync(b.ino).unwrap();
    vol.release(fh).unwrap();
    let vol = reopen(vol, &dir);
    assert_eq!(&*vol.read(b.ino, 0, 100).unwrap(), b"after");
}

/// Random small overwrites spread over a large file: a commit rebuilds only the chunks the
/// writes touch (what it stores is bounded by their size, whatever lies between them), and it
/// does so in pieces of bounded size instead of holding every touched chunk at once (before
/// pieces, 300 writes here made one commit rebuild ~200 MiB).
#[test]
fn random_overwrites_store_touched_chunks_in_bounded_pieces() {
    let tmp = tempfile::tempdir().unwrap();
    let params = ChunkerParams::default();
    let size = 256usize << 20;
    let mut model = random_bytes(7, size);
    let (vol, ino, fh) = volume_with_big_file(tmp.path(), &model);
    // A sequential write commits in pieces too, and they cut exactly where chunking the whole
    // file at once does: one chunk per natural cut, nothing forced at a piece's end.
    let cuts = tiergate::chunker::cut_points(&params, &model);
    let laid_out = vol.stats().unwrap();
    assert_eq!(laid_out.stats.chunks, cuts.len() as u64);
    assert_eq!(laid_out.stats.unique_bytes, size as u64);

    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut touched = std::collections::BTreeSet::new();
    let mut written = 0usize;
    for _ in 0..300 {
        // At least the smallest chunk: smaller ones are patches (the next test).
        let len = rng.gen_range(32..=48usize) * 4096;
        let off = rng.gen_range(0..(size - len) / 4096) * 4096;
        let data = random_bytes(rng.gen(), len);
        vol.write(ino, off as u64, &data).unwrap();
        model[off..off + len].copy_from_slice(&data);
        written += len;
        // The chunks holding the first and the last byte written, and any between.
        let first = cuts.partition_point(|&c| c <= off);
        let last = cuts.partition_point(|&c| c < off + len);
        touched.extend(first..=last);
    }
    vol.fsync(ino).unwrap();
    let after = vol.stats().unwrap();
    let chunk_len = |c: usize| cuts[c] - if c == 0 { 0 } else { cuts[c - 1] };
    let touched_bytes: usize = touched.iter().map(|&c| chunk_len(c)).sum();
    let grew = after.pack_bytes - laid_out.pack_bytes;
    let piece = vol.largest_commit_piece();
    eprintln!(
        "300 overwrites ({written} bytes) touched {} chunks ({touched_bytes} bytes): packs grew \
         {grew}, largest commit piece {piece}",
        touched.len()
    );
    // Each touched chunk is stored again once (a rewritten chunk may come out as two), plus
    // blob and pack overhead; untouched chunks are never stored again.
    assert!(
        grew <= touched_bytes as u64 + touched.len() as u64 * 1024 + (4 << 20),
        "packs grew {grew} for {touched_bytes} bytes of touched chunks"
    );
    // Each piece of the commit rebuilt at most 16 MiB (or four of the largest chunks).
    assert!(
        piece > 0
            && piece <= (16 << 20).max(4 * params.max_size as u64) + 2 * params.max_size as u64,
        "{piece}"
    );
    assert!(
        touched_bytes > 4 * piece as usize,
        "the test must need several pieces"
    );
    vol.release(fh).unwrap();
    assert!(
        read_all(&vol, ino) == model,
        "content differs after the overwrites"
    );
}

/// Two writers deliver one stream slightly out of order, each every other MiB and at most a
/// few MiB apart (as the kernel's writeback through several FUSE threads does), and commits
/// run while the other writer goes on. The file is still cut exactly where chunking it in one
/// go cuts, and nothing is stored twice.
#[test]
fn an_interleaved_stream_is_cut_as_in_one_go() {
    let tmp = tempfile::tempdir().unwrap();
    let params = ChunkerParams::default();
    let size = 320usize << 20;
    let data = Arc::new(random_bytes(11, size));
    let dir = tmp.path().join("vol");
    Volume::create(&dir, "pw", params, KdfParams::for_tests()).unwrap();
    let vol = open(&dir);
    let (a, fh) = vol.create_file(ROOT, b"stream", 0o644, ME).unwrap();
    let piece = 1usize << 20;
    // How many pieces each writer has written; neither runs more than 4 pieces ahead.
    let done = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (vol, data, done) = (vol.clone(), data.clone(), done.clone());
            std::thread::spawn(move || {
                for (i, part) in data.chunks(piece).enumerate().filter(|(i, _)| i % 2 == w) {
                    while i > 2 * done[1 - w].load(Ordering::Acquire) + 8 {
                        std::thread::yield_now();
                    }
                    vol.write(a.ino, (i * piece) as u64, part).unwrap();
                    done[w].fetch_add(1, Ordering::Release);
                }
                done[w].store(usize::MAX / 4, Ordering::Release);
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    vol.fsync(a.ino).unwrap();
    assert_cut_as_in_one_go(&vol, &params, &data);
    vol.release(fh).unwrap();
    assert!(read_all(&vol, a.ino) == *data, "content differs");
}

/// One writer streams while another thread keeps committing (as the 5-second tick and the
/// commit threshold do while the kernel writes back): each commit holds back the growing last
/// chunk and gives it back beside what was written meanwhile. The file is cut as in one go,
/// and commits copy little of it: what was written during a commit is not copied onto the
/// held-back chunk, and windows are chunked where they lie.
#[test]
fn a_stream_committed_meanwhile_is_cut_as_in_one_go_and_hardly_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let params = ChunkerParams::default();
    let size = 320usize << 20;
    let data = Arc::new(random_bytes(12, size));
    let dir = tmp.path().join("vol");
    Volume::create(&dir, "pw", params, KdfParams::for_tests()).unwrap();
    let vol = open(&dir);
    let (a, fh) = vol.create_file(ROOT, b"stream", 0o644, ME).unwrap();
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let done_commits = Arc::new(AtomicUsize::new(0));
    let committer = {
        let (vol, writing, done_commits) = (vol.clone(), writing.clone(), done_commits.clone());
        std::thread::spawn(move || {
            while writing.load(Ordering::Acquire) {
                vol.commit_all(false).unwrap();
                done_commits.fetch_add(1, Ordering::AcqRel);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            done_commits.load(Ordering::Acquire)
        })
    };
    for (i, part) in data.chunks(1 << 20).enumerate() {
        vol.write(a.ino, (i << 20) as u64, part).unwrap();
        // At the pace of a disk, so that commits overlap the stream.
        std::thread::sleep(std::time::Duration::from_millis(2));
        // And every 16 MiB, until one more commit ended: the overlap this test is about
        // must not depend on how fast this machine commits (20 commits at least).
        if i % 16 == 15 {
            let seen = done_commits.load(Ordering::Acquire);
            while done_commits.load(Ordering::Acquire) == seen {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
    writing.store(false, Ordering::Release);
    let commits = committer.join().unwrap();
    vol.fsync(a.ino).unwrap();
    let copied = vol.commit_copied_bytes();
    eprintln!("{commits} commits from the other thread; {copied} bytes copied by commits");
    assert!(
        commits > 10,
        "the test needs commits while the writer goes on"
    );
    assert_cut_as_in_one_go(&vol, &params, &data);
    // About one window (two of the largest chunks) around each join, some 5-6 MiB a commit
    // here, so the total follows the number of commits (timing: 77-155 MB seen); before,
    // every byte written during a commit was copied onto the held-back chunk (1.6 times the
    // file in this test).
    let per_commit = 8u64 << 20;
    assert!(
        copied < size as u64 && copied < (commits as u64 + 1) * per_commit,
        "commits copied {copied} of {size} bytes in {commits} commits"
    );
    vol.release(fh).unwrap();
    assert!(read_all(&vol, a.ino) == *data, "content differs");
}

/// The volume holds `data` as its only file, cut exactly where chunking it in one go cuts
/// (nothing forced at a commit's or a window's end), each chunk once, extent map sound.
fn assert_cut_as_in_one_go(vol: &Volume, params: &ChunkerParams, data: &[u8]) {
    let cuts = tiergate::chunker::cut_points(params, data);
    let st = vol.stats().unwrap();
    assert_eq!(st.stats.chunks, cuts.len() as u64, "cut differently");
    assert_eq!(st.stats.unique_bytes, data.len() as u64);
    let problems = tiergate::repair::check_extent_map(vol).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
}

/// A commit that runs out of disk after some of its pieces were applied (the store stage fails
/// in the middle of a pipelined commit) fails with ENOSPC and loses nothing: the applied pieces
/// and the bytes given back read as written, the extent map stays consistent, and once there is
/// room again the same fsync succeeds, stores nothing twice, and the file survives a reopen.
#[test]
fn a_commit_that_fills_the_disk_halfway_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    let _tmpfs = crate::common::mount_tmpfs(&small, "160m");
    let dir = small.join("vol");
    Volume::create(&dir, "pw", ChunkerParams::default(), KdfParams::for_tests()).unwrap();
    let mut vol = open(&dir);
    let (a, fh) = vol.create_file(ROOT, b"big", 0o644, ME).unwrap();
    // 60 MiB stays under a file's commit threshold, so the fsync commits it in one go: four
    // pieces of 16 MiB, of which only about two fit.
    let size = 60usize << 20;
    let data = random_bytes(0xd15c, size);
    for (i, part) in data.chunks(4 << 20).enumerate() {
        vol.write(a.ino, (i * (4 << 20)) as u64, part).unwrap();
    }
    let s = nix::sys::statvfs::statvfs(&small).unwrap();
    let free = s.blocks_available() as u64 * s.fragment_size() as u64;
    let room = 36u64 << 20;
    assert!(free > room + (16 << 20), "tmpfs has {free} bytes free");
    std::fs::write(small.join("ballast"), vec![0u8; (free - room) as usize]).unwrap();

    let err = vol.fsync(a.ino).expect_err("60 MiB fitted into 36 MiB");
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    let stored = vol.stats().unwrap().stats.unique_bytes;
    eprintln!("stored {stored} of {size} bytes before the disk was full");
    assert!(
        stored >= 16 << 20 && stored < size as u64,
        "the commit must fail after its first piece: {stored} of {size} bytes stored"
    );
    assert!(
        read_all(&vol, a.ino) == data,
        "content differs with the disk full"
    );
    let problems = tiergate::repair::check_extent_map(&vol).unwrap();
    assert!(problems.is_empty(), "with the disk full: {problems:?}");

    std::fs::remove_file(small.join("ballast")).unwrap();
    vol.fsync(a.ino).expect("fsync once there is room again");
    assert_eq!(
        vol.stats().unwrap().stats.unique_bytes,
        size as u64,
        "the retry stores each chunk once"
    );
    vol.release(fh).unwrap();
    vol = reopen(vol, &dir);
    assert!(
        read_all(&vol, a.ino) == data,
        "content differs after a reopen"
    );
    let problems = tiergate::repair::check_extent_map(&vol).unwrap();
    assert!(problems.is_empty(), "after a reopen: {problems:?}");
}

//! Data-path throughput: chunking, chunk ids, blob encode/decode, the chunk index, snapshots.
//!
//! `cargo bench --bench datapath` (add `-- <group>` to run one group). Inputs are generated
//! from fixed seeds, so runs are comparable. Throughput is reported per plaintext byte.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use tiergate::blob;
use tiergate::chunker::{self, ChunkerParams};
use tiergate::crypto::MasterKey;

const MIB: usize = 1024 * 1024;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Log-like text: words from a small vocabulary with numbers mixed in. zstd level 3 shrinks
/// it by roughly 3-5x, about what the brief measured on text-like data.
fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "backup",
        "job",
        "started",
        "finished",
        "volume",
        "chunk",
        "pack",
        "upload",
        "retry",
        "error",
        "warning",
        "info",
        "debug",
        "client",
        "server",
        "session",
        "file",
        "directory",
        "read",
        "write",
        "merge",
        "synthetic",
        "full",
        "incremental",
        "retention",
        "deleted",
        "bytes",
        "seconds",
        "queue",
        "worker",
        "thread",
        "repository",
        "restore",
        "verify",
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let r = rng.next_u32();
        match r % 8 {
            0 => out.extend_from_slice(format!("{} ", r >> 12).as_bytes()),
            1 => out.extend_from_slice(b"\n2026-11-28T05:21:46Z "),
            _ => {
                out.extend_from_slice(WORDS[(r >> 8) as usize % WORDS.len()].as_bytes());
                out.push(b' ');
            }
        }
    }
    out.truncate(len);
    out
}

fn chunking(c: &mut Criterion) {
    let data = random_bytes(64 * MIB, 1);
    let params = ChunkerParams::default();
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("cut_points_64MiB_random_default_params", |b| {
        b.iter(|| chunker::cut_points(&params, black_box(&data)))
    });
    g.finish();
}

fn chunk_id(c: &mut Criterion) {
    let keys = MasterKey::from_bytes([1; 32]).subkeys();
    let data = random_bytes(MIB, 2);
    let mut g = c.benchmark_group("chunk_id");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("keyed_blake3_1MiB", |b| {
        b.iter(|| keys.chunk_id(black_box(&data)))
    });
    g.finish();
}

fn blob_codec(c: &mut Criterion) {
    let keys = MasterKey::from_bytes([1; 32]).subkeys();
    let inputs = [
        ("incompressible", random_bytes(MIB, 3)),
        ("text", text_bytes(MIB, 4)),
    ];
    let mut g = c.benchmark_group("blob");
    g.throughput(Throughput::Bytes(MIB as u64));
    g.sample_size(20);
    for (name, data) in &inputs {
        let id = keys.chunk_id(data);
        for level in [3, 1] {
            let param = format!("{name}_1MiB_zstd{level}");
            g.bench_with_input(BenchmarkId::new("encode", &param), data, |b, d| {
                b.iter(|| blob::encode(&keys, &id, black_box(d), level))
            });
            // The same without the incompressibility probe (zstd tried on the whole chunk,
            // as before the probe): the ratio of the two is the probe's effect.
            g.bench_with_input(
                BenchmarkId::new("encode_without_probe", &param),
                data,
                |b, d| b.iter(|| blob::encode_without_probe(&keys, &id, black_box(d), level)),
            );
            let encoded = blob::encode(&keys, &id, data, level);
            g.bench_with_input(BenchmarkId::new("decode", &param), &encoded, |b, e| {
                b.iter(|| blob::decode(&keys, &id, black_box(e)).unwrap())
            });
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
/// The chunk index in the metadata store: batched inserts of chunk records (as commits do,
/// ~1,000 per batch), and point lookups of present and absent ids (the dedup check), in an index
/// already holding 200,000 chunks (~200 GiB of unique data at 1 MiB chunks).
fn index(c: &mut Criterion) {
    use tiergate::crypto::ChunkId;
    use tiergate::kv::{Batch, KvStore, SledStore};
    use tiergate::meta::{chunk_key, ChunkRecord};
    let dir = tempfile::tempdir().unwrap();
    let kv = SledStore::open(dir.path(), 64 << 20).unwrap();
    let id = |i: u64| ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes());
    let rec = |i: u64| ChunkRecord {
        pack: i / 32,
        offset: i * 1000,
        stored_len: 1 << 20,
        plain_len: 1 << 20,
        refs: 1,
    };
    const N: u64 = 200_000;
    for start in (0..N).step_by(1000) {
        let mut b = Batch::default();
        for i in start..start + 1000 {
            b.put(chunk_key(&id(i)), rec(i).encode());
        }
        kv.apply(b).unwrap();
    }
    kv.flush().unwrap();
    let mut g = c.benchmark_group("index");
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1000));
    let mut next = N;
    g.bench_function("insert_batch_1000", |b| {
        b.iter(|| {
            let mut batch = Batch::default();
            for i in next..next + 1000 {
                batch.put(chunk_key(&id(i)), rec(i).encode());
            }
            next += 1000;
            kv.apply(batch).unwrap();
        })
    });
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("lookup_present", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            black_box(kv.get(&chunk_key(&id(i))).unwrap().unwrap());
        })
    });
    g.bench_function("lookup_absent", |b| {
        b.iter(|| {
            i += 1;
            assert!(kv.get(&chunk_key(&id(u64::MAX - i))).unwrap().is_none());
        })
    });
    g.finish();
    eprintln!(
        "index: sled on disk after {} records: {} MiB",
        next,
        kv.size_on_disk().unwrap() >> 20
    );
}
// ---------------------------------------------------------------------------------------------

/// A snapshot of 10,000 files in 100 directories (taken and deleted each iteration), against
/// the baseline of walking the same tree once (readdir + getattr of every entry): the least
/// any copy of the namespace must read.
fn snapshot(c: &mut Criterion) {
    use tiergate::crypto::KdfParams;
    use tiergate::meta::ROOT_INO;
    use tiergate::volume::{Caller, Volume, VolumeOptions};
    const ME: Caller = Caller { uid: 0, gid: 0 };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    Volume::create(&dir, "pw", ChunkerParams::default(), KdfParams::for_tests()).unwrap();
    let vol = Volume::open(&dir, "pw", VolumeOptions::default()).unwrap();
    for d in 0..100u64 {
        let di = vol
            .mkdir(ROOT_INO, format!("d{d}").as_bytes(), 0o755, ME)
            .unwrap()
            .ino;
        for f in 0..100u64 {
            let name = format!("f{f}");
            let (a, fh) = vol.create_file(di, name.as_bytes(), 0o644, ME).unwrap();
            vol.write(a.ino, 0, &random_bytes(100, d * 100 + f))
                .unwrap();
            vol.release(fh).unwrap();
        }
    }
    vol.commit_all(true).unwrap();
    let walk = |ino: u64| -> u64 {
        let mut seen = 0;
        let mut stack = vec![ino];
        while let Some(d) = stack.pop() {
            let fh = vol.opendir(d).unwrap();
            for e in vol.readdir(fh, 2, usize::MAX).unwrap() {
                let a = vol.getattr(e.ino).unwrap();
                if a.inode.kind == tiergate::meta::FileKind::Dir {
                    stack.push(e.ino);
                }
                seen += 1;
            }
            vol.releasedir(fh).unwrap();
        }
        seen
    };
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    g.throughput(Throughput::Elements(10_100));
    g.bench_function("walk_10k_files", |b| {
        b.iter(|| assert_eq!(walk(ROOT_INO), 10_100));
    });
    g.bench_function("create_and_delete_10k_files", |b| {
        b.iter(|| {
            vol.snapshot_create(Some("bench")).unwrap();
            vol.snapshot_delete("bench").unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, chunking, chunk_id, blob_codec, index, snapshot);
criterion_main!(benches);

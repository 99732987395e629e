//! Data-path throughput: chunking, chunk ids, blob encode/decode.
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
            let encoded = blob::encode(&keys, &id, data, level);
            g.bench_with_input(BenchmarkId::new("decode", &param), &encoded, |b, e| {
                b.iter(|| blob::decode(&keys, &id, black_box(e)).unwrap())
            });
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// INDEX BENCHMARK GOES HERE (chunk index lookups/inserts in the metadata store; written with
// the core). Add its function to `criterion_group!` below.
// ---------------------------------------------------------------------------------------------

criterion_group!(benches, chunking, chunk_id, blob_codec);
criterion_main!(benches);

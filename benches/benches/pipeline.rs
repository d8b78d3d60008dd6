//! Criterion benches of the upload pipeline and its stages, on incompressible and text-like data,
//! with memcpy as the baseline in the same run. `Throughput::Bytes` everywhere, so criterion
//! prints bytes per second.
//!
//! Run: `cargo bench -p dooz-benches --bench pipeline` (add `-- NAME` to filter).
//! The `throughput` binary measures the same things and prints JSON lines; see
//! `benches/RESULTS.md`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dooz_benches::{BenchVault, random_bytes, text_like, upload};
use dooz_client::{ChunkerConfig, StreamChunker};
use dooz_crypto::ChunkId;

const PIECE: usize = 64 * 1024;
const BULK: usize = 64 << 20;

fn inputs(len: usize) -> [(&'static str, Vec<u8>); 2] {
    [
        ("random", random_bytes(len, 1)),
        ("text", text_like(len, 1)),
    ]
}

/// The per-chunk primitives on one 64 KiB piece (hot in cache).
fn primitives(c: &mut Criterion) {
    let vault = BenchVault::new(ChunkerConfig::DEFAULT).unwrap();
    let mut group = c.benchmark_group("64KiB");
    group.throughput(Throughput::Bytes(PIECE as u64));
    for (name, data) in inputs(PIECE) {
        let id = vault.identity.chunk_id(&data);
        let sealed = vault.epoch.seal_chunk(&id, &data).unwrap();

        let mut dst = vec![0u8; PIECE];
        group.bench_function(BenchmarkId::new("memcpy", name), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&data)));
        });
        group.bench_function(BenchmarkId::new("chunk_id", name), |b| {
            b.iter(|| vault.identity.chunk_id(black_box(&data)));
        });
        let mut out = Vec::new();
        group.bench_function(BenchmarkId::new("seal_chunk_into", name), |b| {
            b.iter(|| {
                vault
                    .epoch
                    .seal_chunk_into(&id, black_box(&data), &mut out)
                    .unwrap();
            });
        });
        group.bench_function(BenchmarkId::new("open_chunk", name), |b| {
            b.iter(|| vault.ring.open_chunk(&id, black_box(&sealed)).unwrap());
        });
    }
    group.finish();
}

/// Chunking and the whole pipeline over 64 MiB, against a 64 MiB memcpy.
fn bulk(c: &mut Criterion) {
    let vault = BenchVault::new(ChunkerConfig::DEFAULT).unwrap();
    let mut group = c.benchmark_group("64MiB");
    group
        .throughput(Throughput::Bytes(BULK as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    for (name, data) in inputs(BULK) {
        let mut dst = vec![0u8; BULK];
        group.bench_function(BenchmarkId::new("memcpy", name), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&data)));
        });
        group.bench_function(BenchmarkId::new("chunk", name), |b| {
            b.iter(|| vault.chunker.cut_points(black_box(&data)).count());
        });
        let mut buffer = Vec::new();
        group.bench_function(BenchmarkId::new("stream_chunk", name), |b| {
            b.iter(|| {
                let mut stream = StreamChunker::with_buffer(
                    vault.chunker.clone(),
                    black_box(&data[..]),
                    std::mem::take(&mut buffer),
                );
                while let Some(chunk) = stream.next_chunk().unwrap() {
                    black_box(chunk.data);
                }
                buffer = stream.into_parts().1;
            });
        });
        for threads in [1, 2] {
            let sealed = AtomicU64::new(0);
            let sink = |_: &ChunkId, bytes: &[u8]| {
                sealed.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(())
            };
            group.bench_function(
                BenchmarkId::new(format!("pipeline_{threads}t"), name),
                |b| b.iter(|| upload(&vault, black_box(&data[..]), threads, &sink).unwrap()),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, primitives, bulk);
criterion_main!(benches);

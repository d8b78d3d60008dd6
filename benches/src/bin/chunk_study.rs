//! Chunk-size study: for each candidate average chunk size (min = avg/4, max = avg×4, and two
//! variants with min = avg/2), on 64 MiB
//! of random and of text-like data, measures
//!
//! - chunking throughput (in-memory cut points, median and best of 9 runs) and the chunk size
//!   spread;
//! - upload amplification for edits: the bytes of chunks of the edited file that the original
//!   did not have, divided by the bytes the edit changed. Scenarios:
//!   - `scattered_1pct`: 16 edits spread over the file (inserts, overwrites and deletions in
//!     turn), together 1% of the file;
//!   - `contiguous_1pct`: one overwrite of 1% of the file;
//!   - `insert_1_byte`: one byte inserted.
//!
//!   Each scenario is averaged over 3 random placements.
//!
//! Prints one JSON line per (data, avg, measurement).
//!
//! Run: `cargo run --release -p dooz-benches --bin chunk_study [-- MiB]` (default 64).

use std::collections::HashSet;
use std::time::Instant;

use anyhow::Context as _;
use dooz_benches::{Rng, random_bytes, text_like};
use dooz_client::{Chunker, ChunkerConfig};

const SEED: [u8; 32] = [0x5e; 32];
const TRIALS: u64 = 3;
const EDITS: usize = 16;

#[derive(Clone, Copy)]
enum Op {
    Insert,
    Overwrite,
    Delete,
}

struct Edit {
    at: usize,
    op: Op,
    len: usize,
}

fn main() -> anyhow::Result<()> {
    let mib: usize = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .context("the argument is the input size in MiB")?,
        None => 64,
    };
    let len = mib << 20;
    // (min, avg, max): the candidates min = avg/4, max = avg×4, plus min = avg/2 variants.
    let mut candidates: Vec<(u32, u32, u32)> =
        [8u32 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10, 1 << 20]
            .into_iter()
            .map(|avg| (avg / 4, avg, avg * 4))
            .collect();
    candidates.extend([
        (8 << 10, 16 << 10, 64 << 10),
        (16 << 10, 32 << 10, 128 << 10),
    ]);
    for (name, data) in [
        ("random", random_bytes(len, 1)),
        ("text", text_like(len, 1)),
    ] {
        let filler = |n: usize, seed: u64| match name {
            "random" => random_bytes(n, seed),
            _ => text_like(n, seed),
        };
        for &(min, avg, max) in &candidates {
            let config = ChunkerConfig::new(min, avg, max)?;
            let chunker = Chunker::new(config, &SEED);
            study(name, &data, &chunker, &filler)?;
        }
    }
    Ok(())
}

fn study(
    name: &str,
    data: &[u8],
    chunker: &Chunker,
    filler: &dyn Fn(usize, u64) -> Vec<u8>,
) -> anyhow::Result<()> {
    let config = chunker.config();
    let tag = format!(
        "\"data\":\"{name}\",\"mib\":{},\"min\":{},\"avg\":{},\"max\":{}",
        data.len() >> 20,
        config.min(),
        config.avg(),
        config.max()
    );

    // Throughput and size spread.
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..9 {
        let start = Instant::now();
        count = std::hint::black_box(chunker.cut_points(data)).count();
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let best = times.first().copied().unwrap_or(f64::NAN);
    let lens: Vec<f64> = chunker.cut_points(data).map(|c| c.len as f64).collect();
    let mean = lens.iter().sum::<f64>() / lens.len() as f64;
    let sd = (lens.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lens.len() as f64).sqrt();
    println!(
        "{{{tag},\"measure\":\"chunking\",\"chunks\":{count},\"mean_size\":{mean:.0},\"sd_size\":{sd:.0},\"mb_s\":{:.0},\"best_mb_s\":{:.0}}}",
        data.len() as f64 / median / 1e6,
        data.len() as f64 / best / 1e6
    );

    let before: HashSet<[u8; 32]> = chunker
        .cut_points(data)
        .map(|c| *blake3::hash(data.get(c.range()).unwrap_or_default()).as_bytes())
        .collect();
    let upload = |edited: &[u8]| -> (u64, usize) {
        let mut bytes = 0u64;
        let mut chunks = 0;
        for c in chunker.cut_points(edited) {
            let chunk = edited.get(c.range()).unwrap_or_default();
            if !before.contains(blake3::hash(chunk).as_bytes()) {
                bytes += chunk.len() as u64;
                chunks += 1;
            }
        }
        (bytes, chunks)
    };

    let one_pct = data.len() / 100;
    for scenario in ["scattered_1pct", "contiguous_1pct", "insert_1_byte"] {
        let mut changed_total = 0u64;
        let mut upload_total = 0u64;
        let mut chunks_total = 0usize;
        for trial in 0..TRIALS {
            let mut rng = Rng::new(trial * 1000 + 7);
            let edits = match scenario {
                "scattered_1pct" => {
                    let segment = data.len() / EDITS;
                    let each = one_pct / EDITS;
                    let ops = [Op::Insert, Op::Overwrite, Op::Delete];
                    (0..EDITS)
                        .map(|i| Edit {
                            at: i * segment + rng.below(segment - each),
                            op: ops
                                .get((i + trial as usize) % 3)
                                .copied()
                                .unwrap_or(Op::Insert),
                            len: each,
                        })
                        .collect()
                }
                "contiguous_1pct" => vec![Edit {
                    at: rng.below(data.len() - one_pct),
                    op: Op::Overwrite,
                    len: one_pct,
                }],
                _ => vec![Edit {
                    at: rng.below(data.len()),
                    op: Op::Insert,
                    len: 1,
                }],
            };
            let (edited, changed) = apply(data, &edits, filler, trial);
            let (bytes, chunks) = upload(&edited);
            changed_total += changed;
            upload_total += bytes;
            chunks_total += chunks;
        }
        println!(
            "{{{tag},\"measure\":\"{scenario}\",\"changed_bytes\":{},\"upload_bytes\":{},\"new_chunks\":{:.1},\"amplification\":{:.2}}}",
            changed_total / TRIALS,
            upload_total / TRIALS,
            chunks_total as f64 / TRIALS as f64,
            upload_total as f64 / changed_total as f64
        );
    }
    Ok(())
}

/// Applies non-overlapping edits sorted by position; returns the new file and the bytes changed
/// (inserted + overwritten + deleted).
fn apply(
    data: &[u8],
    edits: &[Edit],
    filler: &dyn Fn(usize, u64) -> Vec<u8>,
    trial: u64,
) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(data.len() + data.len() / 50);
    let mut pos = 0;
    let mut changed = 0u64;
    for (i, edit) in edits.iter().enumerate() {
        out.extend_from_slice(data.get(pos..edit.at).unwrap_or_default());
        pos = edit.at;
        let fresh = || filler(edit.len, 1_000_000 + trial * 100 + i as u64);
        match edit.op {
            Op::Insert => out.extend_from_slice(&fresh()),
            Op::Overwrite => {
                out.extend_from_slice(&fresh());
                pos += edit.len;
            }
            Op::Delete => pos += edit.len,
        }
        changed += edit.len as u64;
    }
    out.extend_from_slice(data.get(pos..).unwrap_or_default());
    (out, changed)
}

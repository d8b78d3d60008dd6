//! Throughput harness: the criterion measurements without criterion. Prints one JSON line per
//! measurement with the median MB/s (10^6 bytes per second) of N runs (default 5), the best run,
//! and the ratio of the median to the 64 MiB memcpy baseline of the same data set.
//!
//! Runs are interleaved: each round measures everything once, in order, and the rounds repeat.
//! On a shared machine a burst of other work then lands on one run of several measurements
//! instead of on every run of one.
//!
//! Run: `cargo run --release -p dooz-benches --bin throughput [-- --runs N] [--mib M]
//! [--only MEASURE] [--data random|text] [--chunker MIN,AVG,MAX]`
//!
//! Measurements, on incompressible (`random`) and text-like (`text`) data:
//! - `memcpy_64mib`, `memcpy_64kib`: copy baselines (the pipeline's working set, and hot cache);
//! - `chunk`: in-memory cut points over the whole input;
//! - `stream_chunk`: the streaming chunker reading the input through `Read`;
//! - `chunk_id_64kib`: keyed BLAKE3 over each 64 KiB piece of the input;
//! - `seal_64kib`, `seal_16kib`: `seal_chunk_into` for each 64 KiB (16 KiB) piece;
//! - `open_64kib`: `open_chunk` for each sealed 64 KiB piece (includes the id check);
//! - `pipeline` with `threads` 1 and 2: stream-chunk → chunk id → seal, see `dooz_benches::upload`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use dooz_benches::{BenchVault, random_bytes, text_like, upload};
use dooz_client::{ChunkerConfig, StreamChunker};
use dooz_crypto::ChunkId;

const PIECE: usize = 64 * 1024;
const SMALL_PIECE: usize = 16 * 1024;

struct Args {
    runs: usize,
    mib: usize,
    only: Option<String>,
    data: Option<String>,
    chunker: ChunkerConfig,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: 5,
        mib: 64,
        only: None,
        data: None,
        chunker: ChunkerConfig::DEFAULT,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--runs" => args.runs = value.parse().context("--runs takes a number")?,
            "--mib" => args.mib = value.parse().context("--mib takes a number")?,
            "--only" => args.only = Some(value),
            "--data" => args.data = Some(value),
            "--chunker" => {
                let sizes = value
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<u32>, _>>()
                    .context("--chunker takes MIN,AVG,MAX in bytes")?;
                let [min, avg, max] = sizes[..] else {
                    anyhow::bail!("--chunker takes three sizes: MIN,AVG,MAX");
                };
                args.chunker = ChunkerConfig::new(min, avg, max)?;
            }
            other => anyhow::bail!(
                "unknown flag {other}; use --runs N, --mib M, --only MEASURE, --data random|text \
                 or --chunker MIN,AVG,MAX"
            ),
        }
    }
    anyhow::ensure!(
        args.runs > 0 && args.mib > 0,
        "--runs and --mib must be positive"
    );
    Ok(args)
}

type Run<'a> = Box<dyn FnMut() -> anyhow::Result<()> + 'a>;

struct Measurement<'a> {
    data: &'static str,
    name: &'static str,
    threads: usize,
    bytes: usize,
    run: Run<'a>,
    secs: Vec<f64>,
}

/// Per data set: the input, its 64 KiB chunk ids and sealed pieces, scratch buffers.
struct Fixture {
    name: &'static str,
    data: Vec<u8>,
    ids: Vec<ChunkId>,
    sealed: Vec<Vec<u8>>,
}

fn push<'a>(
    all: &mut Vec<Measurement<'a>>,
    wanted: &dyn Fn(&str) -> bool,
    data: &'static str,
    bytes: usize,
    name: &'static str,
    threads: usize,
    run: Run<'a>,
) {
    if wanted(name) {
        all.push(Measurement {
            data,
            name,
            threads,
            bytes,
            run,
            secs: Vec::new(),
        });
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let len = args.mib << 20;
    let vault = BenchVault::new(args.chunker)?;
    let config = vault.chunker.config();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut fixtures = Vec::new();
    for name in ["random", "text"] {
        if args.data.as_deref().is_some_and(|d| d != name) {
            continue;
        }
        let data = match name {
            "random" => random_bytes(len, 1),
            _ => text_like(len, 1),
        };
        let ids: Vec<_> = data
            .chunks(PIECE)
            .map(|p| vault.identity.chunk_id(p))
            .collect();
        let sealed = data
            .chunks(PIECE)
            .zip(&ids)
            .map(|(piece, id)| vault.epoch.seal_chunk(id, piece))
            .collect::<Result<Vec<_>, _>>()?;
        fixtures.push(Fixture {
            name,
            data,
            ids,
            sealed,
        });
    }

    let wanted = |measure: &str| {
        measure == "memcpy_64mib" || args.only.as_deref().is_none_or(|o| measure.starts_with(o))
    };
    let mut all: Vec<Measurement<'_>> = Vec::new();
    for f in &fixtures {
        let data = &f.data[..];
        let mut dst = vec![0u8; len];
        push(
            &mut all,
            &wanted,
            f.name,
            len,
            "memcpy_64mib",
            1,
            Box::new(move || {
                dst.copy_from_slice(black_box(data));
                black_box(&mut dst);
                Ok(())
            }),
        );
        let mut small = vec![0u8; PIECE];
        let piece = data.get(..PIECE).context("input shorter than 64 KiB")?;
        push(
            &mut all,
            &wanted,
            f.name,
            len,
            "memcpy_64kib",
            1,
            Box::new(move || {
                for _ in 0..len / PIECE {
                    small.copy_from_slice(black_box(piece));
                    black_box(&mut small);
                }
                Ok(())
            }),
        );
        let chunker = &vault.chunker;
        push(
            &mut all,
            &wanted,
            f.name,
            len,
            "chunk",
            1,
            Box::new(move || {
                black_box(chunker.cut_points(black_box(data)).count());
                Ok(())
            }),
        );
        let mut buffer = Vec::new();
        push(
            &mut all,
            &wanted,
            f.name,
            len,
            "stream_chunk",
            1,
            Box::new(move || {
                let reader = black_box(data);
                let mut stream = StreamChunker::with_buffer(
                    chunker.clone(),
                    reader,
                    std::mem::take(&mut buffer),
                );
                while let Some(chunk) = stream.next_chunk()? {
                    black_box(chunk.data);
                }
                buffer = stream.into_parts().1;
                Ok(())
            }),
        );
        let identity = &vault.identity;
        push(
            &mut all,
            &wanted,
            f.name,
            len,
            "chunk_id_64kib",
            1,
            Box::new(move || {
                for piece in data.chunks(PIECE) {
                    black_box(identity.chunk_id(black_box(piece)));
                }
                Ok(())
            }),
        );
        let (epoch, ids) = (&vault.epoch, &f.ids);
        let mut out = Vec::new();
        push(
            &mut all,
            &wanted,
            f.name,
            len,
            "seal_64kib",
            1,
            Box::new(move || {
                for (piece, id) in data.chunks(PIECE).zip(ids) {
                    epoch.seal_chunk_into(id, black_box(piece), &mut out)?;
                    black_box(&out);
                }
                Ok(())
            }),
        );
        // The same at the default average chunk size: shows the fixed cost per sealed chunk.
        let mut out = Vec::new();
        push(
            &mut all,
            &wanted,
            f.name,
            len,
            "seal_16kib",
            1,
            Box::new(move || {
                for (piece, id) in data.chunks(SMALL_PIECE).zip(ids.iter().cycle()) {
                    epoch.seal_chunk_into(id, black_box(piece), &mut out)?;
                    black_box(&out);
                }
                Ok(())
            }),
        );
        let (ring, sealed) = (&vault.ring, &f.sealed);
        let mut plain = Vec::new();
        push(
            &mut all,
            &wanted,
            f.name,
            len,
            "open_64kib",
            1,
            Box::new(move || {
                for (s, id) in sealed.iter().zip(ids) {
                    ring.open_chunk_into(id, black_box(s), &mut plain)?;
                    black_box(&plain);
                }
                Ok(())
            }),
        );
        for threads in [1, 2] {
            let vault = &vault;
            let sealed_bytes = AtomicU64::new(0);
            push(
                &mut all,
                &wanted,
                f.name,
                len,
                "pipeline",
                threads,
                Box::new(move || {
                    let sink = |_: &ChunkId, sealed: &[u8]| {
                        sealed_bytes.fetch_add(sealed.len() as u64, Ordering::Relaxed);
                        Ok(())
                    };
                    let up = upload(vault, black_box(data), threads, &sink)?;
                    anyhow::ensure!(up.bytes == len as u64, "the pipeline lost bytes");
                    Ok(())
                }),
            );
        }
    }

    // Warm-up round (page faults, lazy allocations, CPU feature detection), then the rounds.
    for round in 0..=args.runs {
        for m in &mut all {
            let start = Instant::now();
            (m.run)().with_context(|| format!("running {} on {}", m.name, m.data))?;
            if round > 0 {
                m.secs.push(start.elapsed().as_secs_f64());
            }
        }
    }

    let mut memcpy_mb_s = f64::NAN;
    for m in &mut all {
        m.secs.sort_by(f64::total_cmp);
        let median = m.secs.get(m.secs.len() / 2).copied().unwrap_or(f64::NAN);
        let best = m.secs.first().copied().unwrap_or(f64::NAN);
        let mb_s = m.bytes as f64 / median / 1e6;
        if m.name == "memcpy_64mib" {
            memcpy_mb_s = mb_s;
        }
        println!(
            "{{\"data\":\"{}\",\"measure\":\"{}\",\"threads\":{},\"mib\":{},\"runs\":{},\"chunker\":[{},{},{}],\"cpus\":{cpus},\"mb_s\":{mb_s:.0},\"best_mb_s\":{:.0},\"memcpy_ratio\":{:.3}}}",
            m.data,
            m.name,
            m.threads,
            args.mib,
            args.runs,
            config.min(),
            config.avg(),
            config.max(),
            m.bytes as f64 / best / 1e6,
            mb_s / memcpy_mb_s
        );
    }
    Ok(())
}

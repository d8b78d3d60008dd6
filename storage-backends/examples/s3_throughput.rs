//! Put and get throughput of the S3 backend (on an in-process s3s-fs server on 127.0.0.1) next
//! to `LocalDir`, in the same run: 64 KiB objects 16 at a time, and 16 MiB objects one at a
//! time.
//!
//! ```sh
//! cargo run -p dooz-storage --example s3_throughput [-- ROUNDS]
//! ```
//!
//! Dependencies are optimised even in dev builds (see the workspace `Cargo.toml`), so the
//! figures are about the backends, not debug code. Both stores write to the same temporary
//! file system; `LocalDir` also makes each put durable (syncfs), s3s-fs does not fsync.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, ensure};
use bytes::Bytes;
use dooz_storage::{BlobKey, BlobStore, LocalDir};
use futures::{StreamExt, TryStreamExt};

const SMALL: usize = 64 << 10;
const SMALL_COUNT: usize = 512;
const SMALL_PARALLEL: usize = 16;
const LARGE: usize = 16 << 20;
const LARGE_COUNT: usize = 8;

struct Figures {
    put_small: f64,
    get_small: f64,
    put_large: f64,
    get_large: f64,
}

fn payload(size: usize, seed: usize) -> Bytes {
    (0..size)
        .map(|i| (i.wrapping_mul(31) ^ seed) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Objects per second (small) or MiB per second (large), per phase.
async fn measure(store: Arc<dyn BlobStore>, round: usize) -> Result<Figures> {
    let small: Vec<(BlobKey, Bytes)> = (0..SMALL_COUNT)
        .map(|i| {
            let key = BlobKey::new(&format!("r{round}/small/{i:04}")).unwrap();
            (key, payload(SMALL, i))
        })
        .collect();
    let start = Instant::now();
    futures::stream::iter(small.iter().cloned())
        .map(|(k, v)| {
            let store = Arc::clone(&store);
            async move { store.put(&k, v).await }
        })
        .buffer_unordered(SMALL_PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    let put_small = SMALL_COUNT as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let read: Vec<Bytes> = futures::stream::iter(small.iter().cloned())
        .map(|(k, _)| {
            let store = Arc::clone(&store);
            async move { store.get(&k).await }
        })
        .buffered(SMALL_PARALLEL)
        .try_collect()
        .await?;
    let get_small = SMALL_COUNT as f64 / start.elapsed().as_secs_f64();
    ensure!(read.iter().zip(&small).all(|(r, (_, v))| r == v));

    let mib = (LARGE_COUNT * LARGE) as f64 / f64::from(1 << 20);
    let large: Vec<(BlobKey, Bytes)> = (0..LARGE_COUNT)
        .map(|i| {
            let key = BlobKey::new(&format!("r{round}/large/{i}")).unwrap();
            (key, payload(LARGE, i))
        })
        .collect();
    let start = Instant::now();
    for (k, v) in &large {
        store.put(k, v.clone()).await?;
    }
    let put_large = mib / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for (k, v) in &large {
        ensure!(store.get(k).await? == *v);
    }
    let get_large = mib / start.elapsed().as_secs_f64();

    for (k, _) in small.iter().chain(&large) {
        store.delete(k).await?;
    }
    Ok(Figures {
        put_small,
        get_small,
        put_large,
        get_large,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let server = dooz_storage::testing::S3Server::start().await?;
    let s3 = server.config().open()?;
    let dir = tempfile::tempdir()?;
    let local: Arc<dyn BlobStore> = Arc::new(LocalDir::open(dir.path())?);

    println!(
        "{SMALL_COUNT} x 64 KiB ({SMALL_PARALLEL} at a time) and {LARGE_COUNT} x 16 MiB \
         (one at a time), {rounds} rounds, best round shown"
    );
    println!(
        "{:<10} {:>14} {:>14} {:>14} {:>14}",
        "backend", "put 64K obj/s", "get 64K obj/s", "put 16M MiB/s", "get 16M MiB/s"
    );
    for (name, store) in [("LocalDir", local), ("S3 s3s-fs", s3)] {
        let mut best = Figures {
            put_small: 0.0,
            get_small: 0.0,
            put_large: 0.0,
            get_large: 0.0,
        };
        for round in 0..rounds {
            let f = measure(Arc::clone(&store), round).await?;
            best.put_small = best.put_small.max(f.put_small);
            best.get_small = best.get_small.max(f.get_small);
            best.put_large = best.put_large.max(f.put_large);
            best.get_large = best.get_large.max(f.get_large);
        }
        println!(
            "{name:<10} {:>14.0} {:>14.0} {:>14.0} {:>14.0}",
            best.put_small, best.get_small, best.put_large, best.get_large
        );
    }
    Ok(())
}

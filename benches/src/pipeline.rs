//! The upload pipeline: stream-chunk → chunk id → seal → sink, on one or more threads.
//!
//! This is the shape the client's uploader is meant to take:
//!
//! - The calling thread owns the reader. It chunks ([`dooz_client::StreamChunker`]), names each
//!   chunk (keyed BLAKE3, which the client needs first anyway: a chunk the server already has is
//!   never sealed) and appends the id to the file's [`ChunkListBuilder`], so ids stay in file
//!   order without any reordering.
//! - Sealing, the most expensive step, goes to `threads - 1` workers, each fed through its own
//!   bounded `sync_channel`. The chunk is copied into a recycled buffer (a free list returned by
//!   the workers), so memory stays bounded by the queue depths.
//! - When every worker queue is full the calling thread seals the chunk itself ("caller runs").
//!   That balances the two stages on any number of cores without tuning: on 2 cores the caller
//!   chunks, hashes and seals what the worker cannot take.
//! - Sealed chunks go to `sink` from whichever thread sealed them, in no particular order (the
//!   client's uploader does not need an order; the list has it).

use std::io::Read;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread;

use anyhow::Context as _;
use dooz_client::{ChunkList, ChunkListBuilder, ChunkListLimits, Chunker, ChunkerConfig};
use dooz_crypto::{ChunkId, Epoch, EpochKeys, Keyring, VaultId, VaultIdentityKeys, VaultKey};

/// Chunks queued per seal worker.
const QUEUE_DEPTH: usize = 16;

/// Keys and chunker of one benchmark vault (fixed keys, so runs are reproducible).
#[derive(Debug)]
pub struct BenchVault {
    /// The vault's seeded chunker.
    pub chunker: Chunker,
    /// Chunk ids (and the chunker seed).
    pub identity: VaultIdentityKeys,
    /// Sealing keys of epoch 0.
    pub epoch: EpochKeys,
    /// Opening keys.
    pub ring: Keyring,
}

impl BenchVault {
    /// A vault with fixed keys and the given chunk sizes.
    pub fn new(config: ChunkerConfig) -> anyhow::Result<Self> {
        let vault = VaultId([0x42; 16]);
        let key = VaultKey::from_bytes([0x17; 32]);
        let identity = VaultIdentityKeys::derive(vault, &key);
        let chunker = Chunker::new(config, identity.chunker_seed().as_bytes());
        let mut ring = Keyring::new(vault, VaultIdentityKeys::derive(vault, &key));
        ring.insert_epoch(EpochKeys::derive(vault, Epoch(0), &key))?;
        Ok(Self {
            chunker,
            identity,
            epoch: EpochKeys::derive(vault, Epoch(0), &key),
            ring,
        })
    }
}

/// Where sealed chunks go: `(id, sealed bytes)`. Called from several threads.
pub type Sink<'a> = dyn Fn(&ChunkId, &[u8]) -> anyhow::Result<()> + Sync + 'a;

/// What [`upload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The file's chunk list (inline, or a tree whose blocks went to the sink too).
    pub list: ChunkList,
    /// Content chunks sealed.
    pub chunks: u64,
    /// Plaintext bytes read.
    pub bytes: u64,
}

struct Job {
    id: ChunkId,
    data: Vec<u8>,
}

/// Runs the pipeline over `reader` on `threads` threads (the caller's plus `threads - 1` seal
/// workers; `0` and `1` both mean the caller alone).
pub fn upload(
    vault: &BenchVault,
    reader: impl Read,
    threads: usize,
    sink: &Sink<'_>,
) -> anyhow::Result<Uploaded> {
    if threads <= 1 {
        return upload_single(vault, reader, sink);
    }
    thread::scope(|scope| {
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        let mut queues = Vec::new();
        let mut handles = Vec::new();
        for _ in 1..threads {
            let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
            let free_tx = free_tx.clone();
            let epoch = &vault.epoch;
            handles.push(scope.spawn(move || seal_worker(epoch, rx, free_tx, sink)));
            queues.push(tx);
        }
        drop(free_tx);
        let result = feed(vault, reader, &queues, &free_rx, sink);
        drop(queues);
        // A worker's own error explains a failed hand-over better than "disconnected".
        for handle in handles {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => anyhow::bail!("a seal worker panicked"),
            }
        }
        result
    })
}

fn seal_worker(
    epoch: &EpochKeys,
    jobs: Receiver<Job>,
    free: mpsc::Sender<Vec<u8>>,
    sink: &Sink<'_>,
) -> anyhow::Result<()> {
    let mut sealed = Vec::new();
    for job in jobs {
        epoch
            .seal_chunk_into(&job.id, &job.data, &mut sealed)
            .context("sealing a chunk")?;
        sink(&job.id, &sealed)?;
        // The feeder may be gone already; then the buffer is simply dropped.
        let _ = free.send(job.data);
    }
    Ok(())
}

/// The caller's side of the parallel pipeline.
fn feed(
    vault: &BenchVault,
    reader: impl Read,
    queues: &[SyncSender<Job>],
    free: &Receiver<Vec<u8>>,
    sink: &Sink<'_>,
) -> anyhow::Result<Uploaded> {
    let max = vault.chunker.config().max() as usize;
    let mut stream = vault.chunker.stream(reader);
    let mut sealed = Vec::new();
    let mut list = ChunkListBuilder::new(ChunkListLimits::DEFAULT);
    let mut block_out = Vec::new();
    let mut store_block = |block: &[u8]| seal_list_block(vault, block, &mut block_out, sink);
    let mut next_worker = 0;
    let mut spare = None;
    let mut chunks = 0u64;
    while let Some(chunk) = stream.next_chunk().context("reading the input")? {
        let id = vault.identity.chunk_id(chunk.data);
        let mut data = spare
            .take()
            .or_else(|| free.try_recv().ok())
            .unwrap_or_else(|| Vec::with_capacity(max));
        data.clear();
        data.extend_from_slice(chunk.data);
        let mut pending = Some(Job { id, data });
        for k in 0..queues.len() {
            let w = (next_worker + k) % queues.len();
            let (Some(queue), Some(job)) = (queues.get(w), pending.take()) else {
                break;
            };
            match queue.try_send(job) {
                Ok(()) => next_worker = w + 1,
                Err(TrySendError::Full(job)) => pending = Some(job),
                Err(TrySendError::Disconnected(_)) => anyhow::bail!("a seal worker stopped"),
            }
        }
        if let Some(job) = pending {
            // Every worker is busy: seal it here.
            vault
                .epoch
                .seal_chunk_into(&id, &job.data, &mut sealed)
                .context("sealing a chunk")?;
            sink(&id, &sealed)?;
            spare = Some(job.data);
        }
        list.push(*id.as_bytes(), &mut store_block)?;
        chunks += 1;
    }
    let bytes = stream.offset();
    let list = list.finish(&mut store_block)?;
    Ok(Uploaded {
        list,
        chunks,
        bytes,
    })
}

fn upload_single(
    vault: &BenchVault,
    reader: impl Read,
    sink: &Sink<'_>,
) -> anyhow::Result<Uploaded> {
    let mut stream = vault.chunker.stream(reader);
    let mut sealed = Vec::new();
    let mut list = ChunkListBuilder::new(ChunkListLimits::DEFAULT);
    let mut block_out = Vec::new();
    let mut store_block = |block: &[u8]| seal_list_block(vault, block, &mut block_out, sink);
    let mut chunks = 0u64;
    while let Some(chunk) = stream.next_chunk().context("reading the input")? {
        let id = vault.identity.chunk_id(chunk.data);
        vault
            .epoch
            .seal_chunk_into(&id, chunk.data, &mut sealed)
            .context("sealing a chunk")?;
        sink(&id, &sealed)?;
        list.push(*id.as_bytes(), &mut store_block)?;
        chunks += 1;
    }
    let bytes = stream.offset();
    let list = list.finish(&mut store_block)?;
    Ok(Uploaded {
        list,
        chunks,
        bytes,
    })
}

/// List blocks of huge files are stored like content chunks.
fn seal_list_block(
    vault: &BenchVault,
    block: &[u8],
    out: &mut Vec<u8>,
    sink: &Sink<'_>,
) -> anyhow::Result<[u8; 32]> {
    let id = vault.identity.chunk_id(block);
    vault
        .epoch
        .seal_chunk_into(&id, block, out)
        .context("sealing a list block")?;
    sink(&id, out)?;
    Ok(*id.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::random_bytes;

    #[test]
    fn parallel_matches_single_and_opens() {
        let config = ChunkerConfig::new(1024, 4096, 16384).unwrap();
        let vault = BenchVault::new(config).unwrap();
        let input = random_bytes(3 << 20, 9);
        let mut results = Vec::new();
        for threads in [1, 2, 3] {
            let store = Mutex::new(HashMap::new());
            let sink = |id: &ChunkId, sealed: &[u8]| {
                store.lock().unwrap().insert(*id, sealed.to_vec());
                Ok(())
            };
            let up = upload(&vault, &input[..], threads, &sink).unwrap();
            let store = store.into_inner().unwrap();
            let mut rebuilt = Vec::new();
            up.list
                .for_each_chunk(
                    |id| {
                        let id = ChunkId::from_bytes(*id);
                        vault
                            .ring
                            .open_chunk(&id, &store[&id])
                            .map_err(|e| e.to_string())
                    },
                    |id| {
                        let id = ChunkId::from_bytes(*id);
                        let plain = vault.ring.open_chunk(&id, &store[&id]).unwrap();
                        rebuilt.extend_from_slice(&plain);
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(rebuilt, input, "threads={threads}");
            assert_eq!(up.bytes, input.len() as u64);
            results.push(up.list);
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }
}

//! The upload pipeline: stream-chunk → chunk id → seal → sink, on one or more threads.
//!
//! This is the shape the client's uploader is meant to take:
//!
//! - The calling thread owns the reader and chunks it ([`dooz_client::StreamChunker`]): the one
//!   step that is sequential within a file. Each chunk is copied into a recycled buffer and
//!   handed, with its sequence number, to one of `threads - 1` workers through that worker's
//!   bounded `sync_channel`.
//! - A worker names the chunk (keyed BLAKE3; the client will look the id up in its index here and
//!   skip a chunk the server already has, so re-scans parallelise too), seals it and passes it to
//!   `sink`, then returns the id and the buffer. Buffers are reused, so memory is bounded by the
//!   queue depths.
//! - When every worker queue is full the calling thread processes the chunk itself ("caller
//!   runs"). That balances chunking against hashing and sealing on any number of cores without
//!   tuning.
//! - Ids come back out of order; a small reorder window releases them to the file's
//!   [`ChunkListBuilder`] in file order. Sealed chunks reach `sink` in no particular order (the
//!   uploader does not need one; the list has it).

use std::collections::VecDeque;
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
    seq: u64,
    data: Vec<u8>,
}

/// A job done by a worker: its id, and the buffer to reuse.
struct Done {
    seq: u64,
    id: ChunkId,
    data: Vec<u8>,
}

/// Runs the pipeline over `reader` on `threads` threads (the caller's plus `threads - 1`
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
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let mut queues = Vec::new();
        let mut handles = Vec::new();
        for _ in 1..threads {
            let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
            let done_tx = done_tx.clone();
            handles.push(scope.spawn(move || worker(vault, rx, done_tx, sink)));
            queues.push(tx);
        }
        drop(done_tx);
        let result = feed(vault, reader, queues, &done_rx, sink);
        // A worker's own error explains a failed hand-over better than "disconnected".
        for handle in handles {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => anyhow::bail!("a pipeline worker panicked"),
            }
        }
        result
    })
}

/// Names and seals one chunk. (The client will look the id up in its index here and skip
/// sealing and uploading a chunk the server already has.)
fn process(
    vault: &BenchVault,
    data: &[u8],
    sealed: &mut Vec<u8>,
    sink: &Sink<'_>,
) -> anyhow::Result<ChunkId> {
    let id = vault.identity.chunk_id(data);
    vault
        .epoch
        .seal_chunk_into(&id, data, sealed)
        .context("sealing a chunk")?;
    sink(&id, sealed)?;
    Ok(id)
}

fn worker(
    vault: &BenchVault,
    jobs: Receiver<Job>,
    done: mpsc::Sender<Done>,
    sink: &Sink<'_>,
) -> anyhow::Result<()> {
    let mut sealed = Vec::new();
    for job in jobs {
        let id = process(vault, &job.data, &mut sealed, sink)?;
        done.send(Done {
            seq: job.seq,
            id,
            data: job.data,
        })
        .context("the pipeline's feeder stopped")?;
    }
    Ok(())
}

/// Chunk ids that arrive out of order, released to the list builder in order.
struct Reorder {
    /// Sequence number of `ids[0]`.
    base: u64,
    ids: VecDeque<Option<ChunkId>>,
}

impl Reorder {
    fn insert(&mut self, seq: u64, id: ChunkId) -> anyhow::Result<()> {
        let slot = seq
            .checked_sub(self.base)
            .and_then(|i| self.ids.get_mut(i as usize))
            .context("a worker returned an unknown chunk")?;
        *slot = Some(id);
        Ok(())
    }

    /// Pops the ids that are now contiguous with what was already released.
    fn pop_ready(&mut self) -> Option<ChunkId> {
        let id = self.ids.front().copied().flatten()?;
        self.ids.pop_front();
        self.base += 1;
        Some(id)
    }
}

/// The caller's side of the parallel pipeline: reads and chunks, hands chunks to workers, seals
/// itself when they are all busy, and builds the chunk list in file order.
fn feed(
    vault: &BenchVault,
    reader: impl Read,
    queues: Vec<SyncSender<Job>>,
    done: &Receiver<Done>,
    sink: &Sink<'_>,
) -> anyhow::Result<Uploaded> {
    let max = vault.chunker.config().max() as usize;
    let mut stream = vault.chunker.stream(reader);
    let mut sealed = Vec::new();
    let mut list = ChunkListBuilder::new(ChunkListLimits::DEFAULT);
    let mut block_out = Vec::new();
    let mut store_block = |block: &[u8]| seal_list_block(vault, block, &mut block_out, sink);
    let mut reorder = Reorder {
        base: 0,
        ids: VecDeque::new(),
    };
    let mut free: Vec<Vec<u8>> = Vec::new();
    let mut next_worker = 0;
    let mut seq = 0u64;
    let mut in_flight = 0usize;
    while let Some(chunk) = stream.next_chunk().context("reading the input")? {
        reorder.ids.push_back(None);
        let mut data = free.pop().unwrap_or_else(|| Vec::with_capacity(max));
        data.clear();
        data.extend_from_slice(chunk.data);
        let mut pending = Some(Job { seq, data });
        for k in 0..queues.len() {
            let w = (next_worker + k) % queues.len();
            let (Some(queue), Some(job)) = (queues.get(w), pending.take()) else {
                break;
            };
            match queue.try_send(job) {
                Ok(()) => {
                    next_worker = w + 1;
                    in_flight += 1;
                }
                Err(TrySendError::Full(job)) => pending = Some(job),
                Err(TrySendError::Disconnected(_)) => anyhow::bail!("a pipeline worker stopped"),
            }
        }
        if let Some(job) = pending {
            // Every worker is busy: do this one here.
            let id = process(vault, &job.data, &mut sealed, sink)?;
            reorder.insert(seq, id)?;
            free.push(job.data);
        }
        seq += 1;
        while let Ok(d) = done.try_recv() {
            in_flight -= 1;
            free.push(d.data);
            reorder.insert(d.seq, d.id)?;
        }
        while let Some(id) = reorder.pop_ready() {
            list.push(*id.as_bytes(), &mut store_block)?;
        }
    }
    drop(queues);
    while in_flight > 0 {
        let d = done.recv().context("a pipeline worker stopped")?;
        in_flight -= 1;
        free.push(d.data);
        reorder.insert(d.seq, d.id)?;
    }
    while let Some(id) = reorder.pop_ready() {
        list.push(*id.as_bytes(), &mut store_block)?;
    }
    anyhow::ensure!(
        reorder.ids.is_empty(),
        "chunks went missing in the pipeline"
    );
    let bytes = stream.offset();
    let list = list.finish(&mut store_block)?;
    Ok(Uploaded {
        list,
        chunks: seq,
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
        // Small chunks, so that the list (> 4096 ids) spills into list blocks.
        let config = ChunkerConfig::new(512, 1024, 4096).unwrap();
        let vault = BenchVault::new(config).unwrap();
        let input = random_bytes(6 << 20, 9);
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
        assert!(matches!(results[0], ChunkList::Indirect { depth: 1, .. }));
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }
}

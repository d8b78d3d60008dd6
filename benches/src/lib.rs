//! Dooz Sync benchmarks: deterministic inputs ([`random_bytes`], [`text_like`]) and the upload
//! pipeline ([`upload`]: stream-chunk → chunk id → seal, on one or more threads) shared by the
//! criterion benches (`cargo bench -p dooz-benches`) and the harness binaries:
//!
//! - `throughput`: the same measurements without criterion, median of N runs, one JSON line per
//!   measurement with MB/s and the ratio to a memcpy baseline measured in the same run.
//! - `chunk_study`: chunking throughput and upload amplification for edits, per chunk-size
//!   candidate; it chose `dooz_client::ChunkerConfig::DEFAULT`.
//! - `e2e`: end-to-end sync of a generated ~1 GiB folder between two `dooz` CLI devices through
//!   a `dooz-server` process, against `restic backup` and `rsync` on the same data (parts in
//!   [`e2e`]).
//!
//! Results and the commands that produced them are in `benches/RESULTS.md`.
//!
//! ```
//! let random = dooz_benches::random_bytes(1000, 1);
//! let text = dooz_benches::text_like(1000, 1);
//! assert_eq!((random.len(), text.len()), (1000, 1000));
//! assert!(text.is_ascii());
//! assert_eq!(random, dooz_benches::random_bytes(1000, 1));
//! ```

mod data;
pub mod e2e;
mod pipeline;

pub use data::{Rng, random_bytes, text_like};
pub use pipeline::{BenchVault, Sink, Uploaded, upload};

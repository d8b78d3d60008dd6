//! Content-defined chunking: FastCDC v2020 with a per-vault gear table.
//!
//! # Algorithm
//!
//! Cut points come from [`fastcdc::v2020::cut_gear`] (FastCDC 2020, "rolling two bytes each time")
//! with normalization level 1: below the average size the hash must match `log2(avg) + 1` mask
//! bits, above it `log2(avg) - 1` bits, so chunk sizes cluster around the average. Bytes before
//! `min` are never hashed and a chunk never exceeds `max`.
//!
//! # Seeding
//!
//! fastcdc's own `seed: u64` XORs one constant into every entry of its fixed gear table, which
//! keeps the table's structure and is recoverable from chunk sizes (eprint 2025/532). Instead the
//! whole 256-entry gear table is derived from the vault's 32-byte chunker seed:
//!
//! ```text
//! xof  = BLAKE3 derive_key(context = "dooz-sync 2026-11 chunker gear v1", key material = seed)
//!        in XOF mode, first 2048 bytes
//! gear[i]    = u64::from_le_bytes(xof[8*i .. 8*i+8])   for i in 0..256
//! gear_ls[i] = gear[i] << 1                              (the "left-shifted twin" FastCDC 2020 uses)
//! ```
//!
//! Two vaults therefore cut the same file at unrelated offsets, and the sizes of one vault's
//! chunks say nothing about another's table. Chunk sizes still show through sealed sizes (rounded
//! up by PADME padding); the project's security document states that residual leakage.
//!
//! # Streaming
//!
//! [`StreamChunker`] reads from any [`Read`] into one buffer of `max(4 × max, 256 KiB)` bytes,
//! allocated once, and lends each chunk out as a slice of that buffer. When fewer than `max` bytes
//! are left unconsumed it moves them to the front of the buffer (at most `max` bytes, once per
//! several chunks) and refills the rest with as few `read` calls as the reader allows. Memory is
//! bounded by the buffer whatever the input size, and no allocation happens per chunk.
//!
//! The streaming and the slice chunker ([`Chunker::cut_points`]) produce identical cut points:
//! both only call `cut_gear` with at least `max` bytes in view, or with everything that is left.

use std::fmt;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::Arc;

use fastcdc::v2020::{MASKS, cut_gear};

/// Context string for deriving the gear table from the chunker seed. Versioned: changing the
/// derivation changes every cut point, so it needs a new string (and a new vault format).
const GEAR_CONTEXT: &str = "dooz-sync 2026-11 chunker gear v1";

/// FastCDC normalization level: mask bits are `log2(avg) ± NORMALIZATION`.
const NORMALIZATION: u32 = 1;

/// Smallest allowed `min` (fastcdc's `MINIMUM_MIN`).
pub const MIN_CHUNK_SIZE_LIMIT: u32 = 64;
/// Smallest allowed `avg` (fastcdc's `AVERAGE_MIN`).
pub const AVG_CHUNK_SIZE_MIN: u32 = 256;
/// Largest allowed `avg` (fastcdc's `AVERAGE_MAX`).
pub const AVG_CHUNK_SIZE_MAX: u32 = 4 * 1024 * 1024;
/// Largest allowed `max` (fastcdc's `MAXIMUM_MAX`).
pub const MAX_CHUNK_SIZE_LIMIT: u32 = 16 * 1024 * 1024;

/// Smallest stream buffer, so that small chunk sizes still read in large blocks, yet small enough
/// that the buffer, the chunk being sealed and its sealed copy fit a 1 MiB L2 cache together.
const MIN_STREAM_BUFFER: usize = 256 * 1024;

/// Minimum, average and maximum chunk sizes, validated.
///
/// Build one with [`ChunkerConfig::new`] or use [`ChunkerConfig::DEFAULT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkerConfig {
    min: u32,
    avg: u32,
    max: u32,
}

impl ChunkerConfig {
    /// The chunk sizes the client uses: min 8 KiB, avg 16 KiB, max 64 KiB.
    ///
    /// Chosen with `benches/src/bin/chunk_study.rs` on 64 MiB of random and of text-like data
    /// (full figures and the command in `benches/RESULTS.md`, section "Chunk size"). Upload
    /// amplification = bytes of new chunks / bytes changed, for 16 scattered edits (inserts,
    /// overwrites, deletions) totalling 1% of the file, mean of 3 placements:
    ///
    /// | min / avg / max     | mean chunk | 1% edit, random | 1% edit, text | chunking, random (best run) |
    /// |---------------------|------------|-----------------|---------------|-----------------------------|
    /// | 2K / 8K / 32K       | 10 KB      | 1.00×           | 1.05×         | 2.2 GB/s                    |
    /// | 4K / 16K / 64K      | 20 KB      | 1.46×           | 1.31×         | 2.1 GB/s                    |
    /// | **8K / 16K / 64K**  | 22 KB      | **1.54×**       | **1.46×**     | **2.8 GB/s**                |
    /// | 8K / 32K / 128K     | 41 KB      | 2.04×           | 2.51×         | 2.1 GB/s                    |
    /// | 16K / 64K / 256K    | 80 KB      | 4.00×           | 4.00×         | 2.3 GB/s                    |
    /// | 32K / 128K / 512K   | 159 KB     | 7.00×           | 6.47×         | 2.3 GB/s                    |
    /// | 256K / 1M / 4M      | 1.4 MB     | 43.8×           | 37.3×         | 2.3 GB/s                    |
    ///
    /// The sync goal is an upload of at most 2× the changed bytes; only averages of 16 KiB and
    /// below meet it for scattered edits. Between the two 16 KiB candidates, `min = avg / 2`
    /// skips hashing more of each chunk: chunking is about 30% faster (it is a quarter of the
    /// single-thread pipeline's time) for slightly more amplification, still well under 2×. A
    /// contiguous 1% overwrite costs 1.05×, a 1-byte insert one new chunk (about 22 KiB). 64 MiB
    /// is about 3,000 chunks; packing keeps the object count down.
    pub const DEFAULT: ChunkerConfig = ChunkerConfig {
        min: 8 * 1024,
        avg: 16 * 1024,
        max: 64 * 1024,
    };

    /// Validates and builds a configuration.
    ///
    /// Rules: `64 ≤ min`, `min` even, `min < avg < max`, `avg` a power of two in
    /// `256 ..= 4 MiB` (the hash mask has `log2(avg)` bits), `max ≤ 16 MiB`.
    pub fn new(min: u32, avg: u32, max: u32) -> Result<Self, ChunkerConfigError> {
        if min < MIN_CHUNK_SIZE_LIMIT {
            return Err(ChunkerConfigError::MinTooSmall { min });
        }
        if !min.is_multiple_of(2) {
            return Err(ChunkerConfigError::MinOdd { min });
        }
        if !(AVG_CHUNK_SIZE_MIN..=AVG_CHUNK_SIZE_MAX).contains(&avg) {
            return Err(ChunkerConfigError::AvgOutOfRange { avg });
        }
        if !avg.is_power_of_two() {
            return Err(ChunkerConfigError::AvgNotPowerOfTwo { avg });
        }
        if max > MAX_CHUNK_SIZE_LIMIT {
            return Err(ChunkerConfigError::MaxTooLarge { max });
        }
        if !(min < avg && avg < max) {
            return Err(ChunkerConfigError::NotOrdered { min, avg, max });
        }
        Ok(Self { min, avg, max })
    }

    /// Minimum chunk size in bytes (only the last chunk of an input may be smaller).
    pub const fn min(&self) -> u32 {
        self.min
    }

    /// Target average chunk size in bytes (a power of two).
    pub const fn avg(&self) -> u32 {
        self.avg
    }

    /// Maximum chunk size in bytes.
    pub const fn max(&self) -> u32 {
        self.max
    }

    /// Size of the buffer a [`StreamChunker`] allocates for this configuration:
    /// `max(4 × max, 256 KiB)`.
    pub fn stream_buffer_len(&self) -> usize {
        (self.max as usize).saturating_mul(4).max(MIN_STREAM_BUFFER)
    }
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a [`ChunkerConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkerConfigError {
    /// `min` is below 64 bytes.
    #[error(
        "minimum chunk size {min} is too small: it must be at least {MIN_CHUNK_SIZE_LIMIT} bytes"
    )]
    MinTooSmall {
        /// The rejected minimum.
        min: u32,
    },
    /// `min` is odd (FastCDC 2020 examines two bytes per step from `min`).
    #[error("minimum chunk size {min} is odd: it must be an even number of bytes")]
    MinOdd {
        /// The rejected minimum.
        min: u32,
    },
    /// `avg` is outside `256 ..= 4 MiB`.
    #[error(
        "average chunk size {avg} is out of range: it must be between {AVG_CHUNK_SIZE_MIN} and {AVG_CHUNK_SIZE_MAX} bytes"
    )]
    AvgOutOfRange {
        /// The rejected average.
        avg: u32,
    },
    /// `avg` is not a power of two.
    #[error("average chunk size {avg} is not a power of two (for example 65536)")]
    AvgNotPowerOfTwo {
        /// The rejected average.
        avg: u32,
    },
    /// `max` is above 16 MiB.
    #[error(
        "maximum chunk size {max} is too large: it must be at most {MAX_CHUNK_SIZE_LIMIT} bytes"
    )]
    MaxTooLarge {
        /// The rejected maximum.
        max: u32,
    },
    /// The sizes are not strictly increasing.
    #[error("chunk sizes must satisfy min < avg < max, got min {min}, avg {avg}, max {max}")]
    NotOrdered {
        /// The given minimum.
        min: u32,
        /// The given average.
        avg: u32,
        /// The given maximum.
        max: u32,
    },
}

/// Errors while chunking a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The reader failed.
    #[error("reading input at byte offset {offset} failed")]
    Read {
        /// Offset in the input at which the read was attempted.
        offset: u64,
        /// The reader's error.
        #[source]
        source: io::Error,
    },
    /// The reader claimed to have read more bytes than the buffer it was given.
    #[error(
        "the reader returned {returned} bytes for a buffer of {capacity} bytes (broken Read implementation)"
    )]
    ReaderOverflow {
        /// What `read` returned.
        returned: usize,
        /// The length of the buffer passed to `read`.
        capacity: usize,
    },
}

/// The seeded gear tables. Derived from a vault secret, so they are wiped (best effort) on drop
/// and never printed.
struct GearTables {
    gear: [u64; 256],
    gear_ls: [u64; 256],
}

impl GearTables {
    fn derive(seed: &[u8; 32]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(GEAR_CONTEXT);
        hasher.update(seed);
        let mut xof = hasher.finalize_xof();
        let mut gear = [0u64; 256];
        let mut word = [0u8; 8];
        for entry in &mut gear {
            xof.fill(&mut word);
            *entry = u64::from_le_bytes(word);
        }
        word.fill(0);
        let gear_ls = gear.map(|g| g << 1);
        Self { gear, gear_ls }
    }
}

impl Drop for GearTables {
    fn drop(&mut self) {
        self.gear.fill(0);
        self.gear_ls.fill(0);
        std::hint::black_box(&self.gear);
        std::hint::black_box(&self.gear_ls);
    }
}

/// A seeded FastCDC chunker: the configuration plus the vault's gear table.
///
/// Cheap to clone (the tables are shared). Its `Debug` output shows the configuration only.
#[derive(Clone)]
pub struct Chunker {
    config: ChunkerConfig,
    tables: Arc<GearTables>,
    mask_s: u64,
    mask_l: u64,
}

impl fmt::Debug for Chunker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunker")
            .field("config", &self.config)
            .field("gear", &"..")
            .finish()
    }
}

impl Chunker {
    /// Builds a chunker for `config`, with the gear table derived from a vault's 32-byte chunker
    /// seed (`dooz_crypto::ChunkerSeed::as_bytes`).
    pub fn new(config: ChunkerConfig, seed: &[u8; 32]) -> Self {
        let bits = config.avg.trailing_zeros();
        // `ChunkerConfig` guarantees 8 <= bits <= 22, so both indexes are within MASKS (len 26).
        let mask_s = MASKS
            .get((bits + NORMALIZATION) as usize)
            .copied()
            .unwrap_or(0);
        let mask_l = MASKS
            .get((bits - NORMALIZATION) as usize)
            .copied()
            .unwrap_or(0);
        Self {
            config,
            tables: Arc::new(GearTables::derive(seed)),
            mask_s,
            mask_l,
        }
    }

    /// The configuration this chunker cuts with.
    pub fn config(&self) -> ChunkerConfig {
        self.config
    }

    /// Length of the next chunk at the start of `data`, given that `data` holds at least `max`
    /// bytes or everything that is left of the input. Returns 0 only for empty `data`.
    fn next_len(&self, data: &[u8]) -> usize {
        let (_hash, len) = cut_gear(
            data,
            self.config.min as usize,
            self.config.avg as usize,
            self.config.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.tables.gear,
            &self.tables.gear_ls,
        );
        len
    }

    /// Cut points of an in-memory input, in order. They tile `data` exactly; an empty input has
    /// no chunks, an input of at most `min` bytes is one chunk.
    pub fn cut_points<'a>(&'a self, data: &'a [u8]) -> CutPoints<'a> {
        CutPoints {
            chunker: self,
            data,
            offset: 0,
        }
    }

    /// Chunks a stream with a fresh buffer of [`ChunkerConfig::stream_buffer_len`] bytes.
    pub fn stream<R: Read>(&self, reader: R) -> StreamChunker<R> {
        StreamChunker::new(self.clone(), reader)
    }
}

/// One chunk of an in-memory input: `data[offset .. offset + len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CutPoint {
    /// Offset of the chunk's first byte.
    pub offset: usize,
    /// Length of the chunk in bytes (never 0).
    pub len: usize,
}

impl CutPoint {
    /// The chunk's byte range in the input.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Iterator over the [`CutPoint`]s of an in-memory input; see [`Chunker::cut_points`].
#[derive(Debug, Clone)]
pub struct CutPoints<'a> {
    chunker: &'a Chunker,
    data: &'a [u8],
    offset: usize,
}

impl Iterator for CutPoints<'_> {
    type Item = CutPoint;

    fn next(&mut self) -> Option<CutPoint> {
        let rest = self.data.get(self.offset..)?;
        let len = self.chunker.next_len(rest);
        if len == 0 {
            return None;
        }
        let cut = CutPoint {
            offset: self.offset,
            len,
        };
        self.offset += len;
        Some(cut)
    }
}

impl std::iter::FusedIterator for CutPoints<'_> {}

/// A chunk lent out by [`StreamChunker::next_chunk`]; valid until the next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Offset of the chunk's first byte in the stream.
    pub offset: u64,
    /// The chunk's bytes (never empty).
    pub data: &'a [u8],
}

/// Chunks a [`Read`] stream with bounded memory; see the [module docs](self).
///
/// ```
/// use dooz_client::{Chunker, ChunkerConfig};
///
/// let chunker = Chunker::new(ChunkerConfig::DEFAULT, &[7; 32]);
/// let input = vec![42u8; 1_000_000];
/// let mut stream = chunker.stream(&input[..]);
/// let mut total = 0;
/// while let Some(chunk) = stream.next_chunk()? {
///     assert_eq!(chunk.offset, total);
///     total += chunk.data.len() as u64;
/// }
/// assert_eq!(total, 1_000_000);
/// # Ok::<(), dooz_client::ChunkError>(())
/// ```
pub struct StreamChunker<R> {
    chunker: Chunker,
    reader: R,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    /// End of the valid bytes in `buf`.
    end: usize,
    /// Stream offset of `buf[pos]`.
    offset: u64,
    eof: bool,
}

impl<R> fmt::Debug for StreamChunker<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamChunker")
            .field("chunker", &self.chunker)
            .field("buffer_len", &self.buf.len())
            .field("buffered", &(self.end - self.pos))
            .field("offset", &self.offset)
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl<R: Read> StreamChunker<R> {
    /// Chunks `reader` with a fresh buffer of [`ChunkerConfig::stream_buffer_len`] bytes.
    pub fn new(chunker: Chunker, reader: R) -> Self {
        Self::with_buffer(chunker, reader, Vec::new())
    }

    /// Chunks `reader` reusing `buffer`'s allocation (see [`StreamChunker::into_buffer`]); it is
    /// resized to [`ChunkerConfig::stream_buffer_len`] and its contents are ignored.
    pub fn with_buffer(chunker: Chunker, reader: R, buffer: Vec<u8>) -> Self {
        let len = chunker.config.stream_buffer_len();
        Self::with_buffer_len(chunker, reader, buffer, len)
    }

    /// As [`StreamChunker::with_buffer`] with a buffer of `len` bytes (at least `max`). Tests use
    /// small buffers to exercise compaction.
    fn with_buffer_len(chunker: Chunker, reader: R, mut buffer: Vec<u8>, len: usize) -> Self {
        buffer.clear();
        buffer.resize(len.max(chunker.config.max as usize), 0);
        Self {
            chunker,
            reader,
            buf: buffer,
            pos: 0,
            end: 0,
            offset: 0,
            eof: false,
        }
    }

    /// Returns the next chunk, or `None` at the end of the stream. Every chunk but the last is
    /// `min ..= max` bytes long; the last is `1 ..= max` bytes.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk<'_>>, ChunkError> {
        let max = self.chunker.config.max as usize;
        if self.end - self.pos < max && !self.eof {
            self.fill(max)?;
        }
        let window = self.buf.get(self.pos..self.end).unwrap_or_default();
        let len = self.chunker.next_len(window);
        let Some(data) = window.get(..len).filter(|d| !d.is_empty()) else {
            return Ok(None);
        };
        let offset = self.offset;
        self.pos += len;
        self.offset += len as u64;
        Ok(Some(Chunk { offset, data }))
    }

    /// Stream offset of the next chunk (the number of bytes chunked so far).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Gives back the buffer for reuse with [`StreamChunker::with_buffer`], and the reader.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        (self.reader, self.buf)
    }

    /// Reads until at least `want` unconsumed bytes are buffered or the reader is exhausted.
    fn fill(&mut self, want: usize) -> Result<(), ChunkError> {
        // Make room: move the unconsumed tail to the front when the free space behind it is too
        // small for a full window. The tail is shorter than `want` (<= max), and the buffer is
        // at least 4 × max, so this copies little and happens once per several chunks.
        if self.buf.len() - self.pos < want {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        while self.end - self.pos < want && !self.eof {
            let space = self.buf.get_mut(self.end..).unwrap_or_default();
            let capacity = space.len();
            match self.reader.read(space) {
                Ok(0) => self.eof = true,
                Ok(n) if n > capacity => {
                    return Err(ChunkError::ReaderOverflow {
                        returned: n,
                        capacity,
                    });
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ChunkError::Read {
                        offset: self.offset + (self.end - self.pos) as u64,
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            out.extend_from_slice(&z.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn config_validation() {
        assert!(ChunkerConfig::new(16 * 1024, 64 * 1024, 256 * 1024).is_ok());
        assert_eq!(
            ChunkerConfig::new(32, 256, 1024),
            Err(ChunkerConfigError::MinTooSmall { min: 32 })
        );
        assert_eq!(
            ChunkerConfig::new(65, 256, 1024),
            Err(ChunkerConfigError::MinOdd { min: 65 })
        );
        assert_eq!(
            ChunkerConfig::new(64, 128, 1024),
            Err(ChunkerConfigError::AvgOutOfRange { avg: 128 })
        );
        assert_eq!(
            ChunkerConfig::new(64, 8 << 20, 16 << 20),
            Err(ChunkerConfigError::AvgOutOfRange { avg: 8 << 20 })
        );
        assert_eq!(
            ChunkerConfig::new(64, 1000, 4096),
            Err(ChunkerConfigError::AvgNotPowerOfTwo { avg: 1000 })
        );
        assert_eq!(
            ChunkerConfig::new(1024, 4096, (16 << 20) + 2),
            Err(ChunkerConfigError::MaxTooLarge {
                max: (16 << 20) + 2
            })
        );
        assert_eq!(
            ChunkerConfig::new(8192, 4096, 65536),
            Err(ChunkerConfigError::NotOrdered {
                min: 8192,
                avg: 4096,
                max: 65536
            })
        );
        assert_eq!(
            ChunkerConfig::new(1024, 4096, 4096),
            Err(ChunkerConfigError::NotOrdered {
                min: 1024,
                avg: 4096,
                max: 4096
            })
        );
        let d = ChunkerConfig::DEFAULT;
        assert_eq!(ChunkerConfig::new(d.min(), d.avg(), d.max()), Ok(d));
        let msg = ChunkerConfigError::AvgNotPowerOfTwo { avg: 1000 }.to_string();
        assert!(
            msg.contains("1000") && msg.contains("power of two"),
            "{msg}"
        );
    }

    #[test]
    fn gear_table_is_seeded_and_shifted() {
        let a = GearTables::derive(&[1; 32]);
        let b = GearTables::derive(&[2; 32]);
        assert_ne!(a.gear, b.gear);
        for (g, ls) in a.gear.iter().zip(a.gear_ls.iter()) {
            assert_eq!(g << 1, *ls);
        }
        // Not a single constant XORed into a fixed table (the weakness of fastcdc's u64 seed).
        let xor0 = a.gear[0] ^ b.gear[0];
        assert!(a.gear.iter().zip(b.gear.iter()).any(|(x, y)| x ^ y != xor0));
    }

    #[test]
    fn gear_derivation_vector() {
        // Pins the derivation: changing it changes every vault's cut points.
        let t = GearTables::derive(&[0; 32]);
        let mut hasher = blake3::Hasher::new_derive_key("dooz-sync 2026-11 chunker gear v1");
        hasher.update(&[0; 32]);
        let mut bytes = [0u8; 2048];
        hasher.finalize_xof().fill(&mut bytes);
        assert_eq!(t.gear[0].to_le_bytes(), bytes[..8]);
        assert_eq!(t.gear[255].to_le_bytes(), bytes[2040..]);
    }

    #[test]
    fn debug_is_redacted() {
        let c = Chunker::new(ChunkerConfig::DEFAULT, &[9; 32]);
        let s = format!("{c:?}");
        assert!(s.contains("gear: \"..\""), "{s}");
        assert!(!s.contains(&format!("{}", c.tables.gear[0])));
    }

    #[test]
    fn small_and_empty_inputs() {
        let c = Chunker::new(ChunkerConfig::DEFAULT, &[3; 32]);
        assert_eq!(c.cut_points(&[]).count(), 0);
        let mut s = c.stream(&[][..]);
        assert!(s.next_chunk().unwrap().is_none());
        assert!(s.next_chunk().unwrap().is_none());
        let data = pseudo_random(ChunkerConfig::DEFAULT.min() as usize, 1);
        let cuts: Vec<_> = c.cut_points(&data).collect();
        assert_eq!(
            cuts,
            [CutPoint {
                offset: 0,
                len: data.len()
            }]
        );
        let one = [5u8];
        let mut s = c.stream(&one[..]);
        let chunk = s.next_chunk().unwrap().unwrap();
        assert_eq!((chunk.offset, chunk.data), (0, &one[..]));
        assert!(s.next_chunk().unwrap().is_none());
    }

    #[test]
    fn zeros_cut_at_max() {
        let config = ChunkerConfig::new(1024, 4096, 16384).unwrap();
        let c = Chunker::new(config, &[0; 32]);
        let data = vec![0u8; 100_000];
        let lens: Vec<_> = c.cut_points(&data).map(|p| p.len).collect();
        // All-zero input has no content to cut on: every chunk but the last is `max`.
        assert!(
            lens[..lens.len() - 1].iter().all(|&l| l == 16384),
            "{lens:?}"
        );
        assert_eq!(lens.iter().sum::<usize>(), data.len());
    }

    struct FailingReader {
        calls: usize,
    }

    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            match self.calls {
                1 => Err(io::Error::from(io::ErrorKind::Interrupted)),
                2 => {
                    buf[..10].fill(1);
                    Ok(10)
                }
                _ => Err(io::Error::other("disk on fire")),
            }
        }
    }

    #[test]
    fn interrupted_is_retried_and_errors_carry_offset() {
        let c = Chunker::new(ChunkerConfig::DEFAULT, &[3; 32]);
        let mut s = c.stream(FailingReader { calls: 0 });
        match s.next_chunk() {
            Err(ChunkError::Read { offset, source }) => {
                assert_eq!(offset, 10);
                assert_eq!(source.to_string(), "disk on fire");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    struct LyingReader;

    impl Read for LyingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            Ok(buf.len() + 1)
        }
    }

    #[test]
    fn overlong_read_is_an_error() {
        let c = Chunker::new(ChunkerConfig::DEFAULT, &[3; 32]);
        let mut s = c.stream(LyingReader);
        assert!(matches!(
            s.next_chunk(),
            Err(ChunkError::ReaderOverflow { .. })
        ));
    }

    /// Deterministic incompressible data, fast even in debug builds (BLAKE3 is optimised).
    fn xof_data(len: usize, seed: u8) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(&[seed])
            .finalize_xof()
            .fill(&mut out);
        out
    }

    /// A reader that hands out the input in the given (cycled) read sizes, some of them 0-length
    /// `Interrupted` errors.
    struct ShortReader<'a> {
        data: &'a [u8],
        sizes: Vec<usize>,
        call: usize,
    }

    impl Read for ShortReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let size = self.sizes[self.call % self.sizes.len()];
            self.call += 1;
            if size == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = size.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn stream_cuts<R: Read>(mut s: StreamChunker<R>, input: &[u8]) -> Vec<CutPoint> {
        let mut cuts = Vec::new();
        while let Some(chunk) = s.next_chunk().unwrap() {
            let offset = chunk.offset as usize;
            assert_eq!(chunk.data, &input[offset..offset + chunk.data.len()]);
            cuts.push(CutPoint {
                offset,
                len: chunk.data.len(),
            });
        }
        assert_eq!(s.offset(), input.len() as u64);
        cuts
    }

    fn check_tiling(cuts: &[CutPoint], len: usize, config: ChunkerConfig) {
        let mut next = 0;
        for (i, cut) in cuts.iter().enumerate() {
            assert_eq!(cut.offset, next, "chunks must be contiguous");
            assert!(cut.len >= 1 && cut.len <= config.max() as usize);
            if i + 1 < cuts.len() {
                assert!(
                    cut.len >= config.min() as usize,
                    "chunk {i} of {} bytes",
                    cut.len
                );
            }
            next += cut.len;
        }
        assert_eq!(next, len, "chunks must cover the input");
    }

    fn arb_config() -> impl proptest::strategy::Strategy<Value = ChunkerConfig> {
        use proptest::prelude::*;
        (8u32..=14, 1u32..=3, 1u32..=3).prop_map(|(bits, down, up)| {
            let avg = 1 << bits;
            let min = (avg >> down).max(64);
            ChunkerConfig::new(min, avg, avg << up).unwrap()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        #[test]
        fn stream_and_slice_agree_and_tile(
            config in arb_config(),
            len in 0usize..400_000,
            text_like in proptest::bool::ANY,
            seed in proptest::array::uniform32(proptest::num::u8::ANY),
            sizes in proptest::collection::vec(0usize..70_000, 1..8),
            buffer_factor in 1usize..5,
        ) {
            let mut input = xof_data(len, seed[0]);
            if text_like {
                // Low-entropy bytes: long runs of a small alphabet.
                for b in &mut input {
                    *b = b"aaaabbc \n"[usize::from(*b) % 9];
                }
            }
            let chunker = Chunker::new(config, &seed);
            let slice: Vec<_> = chunker.cut_points(&input).collect();
            check_tiling(&slice, len, config);
            let reader = ShortReader { data: &input, sizes, call: 0 };
            let buffer_len = config.max() as usize * buffer_factor;
            let streamed = stream_cuts(
                StreamChunker::with_buffer_len(chunker.clone(), reader, Vec::new(), buffer_len),
                &input,
            );
            proptest::prop_assert_eq!(&streamed, &slice);
            let default_buffer = stream_cuts(chunker.stream(&input[..]), &input);
            proptest::prop_assert_eq!(&default_buffer, &slice);
        }
    }

    #[test]
    fn seed_determines_cuts() {
        let config = ChunkerConfig::new(1024, 4096, 16384).unwrap();
        let input = xof_data(2_000_000, 1);
        let cuts = |seed: &[u8; 32]| -> Vec<usize> {
            Chunker::new(config, seed)
                .cut_points(&input)
                .map(|c| c.offset)
                .collect()
        };
        let a = cuts(&[1; 32]);
        assert_eq!(a, cuts(&[1; 32]));
        let b = cuts(&[2; 32]);
        // Unrelated tables: boundaries coincide only by chance (rarely, except the first
        // chunk's start at 0).
        let a_set: std::collections::HashSet<_> = a.iter().collect();
        let shared = b.iter().filter(|o| a_set.contains(o)).count();
        assert!(
            shared < a.len() / 10,
            "{shared} of {} boundaries shared",
            a.len()
        );
        // Average close to the target on random data (normalization level 1).
        let mean = input.len() / a.len();
        assert!((3000..=6500).contains(&mean), "mean chunk size {mean}");
    }

    #[test]
    fn insert_in_the_middle_of_64_mib_changes_only_nearby_chunks() {
        let config = ChunkerConfig::DEFAULT;
        let chunker = Chunker::new(config, &[42; 32]);
        let original = xof_data(64 << 20, 2);
        let at = 32 << 20;
        let mut edited = original[..at].to_vec();
        edited.extend_from_slice(b"a few inserted bytes");
        edited.extend_from_slice(&original[at..]);

        let before = stream_cuts(chunker.stream(&original[..]), &original);
        let after = stream_cuts(chunker.stream(&edited[..]), &edited);
        check_tiling(&before, original.len(), config);
        check_tiling(&after, edited.len(), config);
        assert!(before.len() > 500, "{} chunks", before.len());

        let chunk = |data: &[u8], c: &CutPoint| data[c.range()].to_vec();
        let prefix = before
            .iter()
            .zip(&after)
            .take_while(|(x, y)| chunk(&original, x) == chunk(&edited, y))
            .count();
        let suffix = before
            .iter()
            .rev()
            .zip(after.iter().rev())
            .take_while(|(x, y)| chunk(&original, x) == chunk(&edited, y))
            .count();
        let changed_before = before.len() - prefix - suffix;
        let changed_after = after.len() - prefix - suffix;
        assert!(
            (1..=3).contains(&changed_before) && (1..=3).contains(&changed_after),
            "{changed_before} old and {changed_after} new chunks differ"
        );
        // The differing chunks are those around the edit point.
        let first_changed = before[prefix];
        assert!(first_changed.offset <= at && at < first_changed.offset + first_changed.len + 1);
        let last_changed = before[prefix + changed_before - 1];
        assert!(last_changed.offset + last_changed.len - at <= 3 * config.max() as usize);
    }

    #[test]
    fn buffer_is_reused() {
        let c = Chunker::new(ChunkerConfig::DEFAULT, &[3; 32]);
        let data = pseudo_random(3_000_000, 7);
        let mut buffer = Vec::new();
        for _ in 0..2 {
            let mut s = StreamChunker::with_buffer(c.clone(), &data[..], buffer);
            let mut n = 0;
            while let Some(chunk) = s.next_chunk().unwrap() {
                n += chunk.data.len();
            }
            assert_eq!(n, data.len());
            let (_, b) = s.into_parts();
            assert_eq!(b.len(), ChunkerConfig::DEFAULT.stream_buffer_len());
            buffer = b;
        }
    }
}

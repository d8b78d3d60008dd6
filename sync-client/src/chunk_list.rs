//! Chunk lists of any length in bounded memory: inline for ordinary files, a tree of list blocks
//! for huge ones.
//!
//! A file's version names its content as the ordered list of its chunk ids. Up to
//! [`ChunkListLimits::inline_max`] ids (4096 by default, 128 KiB) the list is stored inline in the
//! file record. Beyond that the ids are written into *list blocks*, which are stored like any other
//! chunk (padded, sealed, addressed by their keyed chunk id), and the record holds only the ids of
//! the top-level blocks. If those are themselves too many, they go into blocks one level up, and so
//! on: a tree whose leaves are the file's chunks.
//!
//! [`ChunkListBuilder`] takes chunk ids one at a time and hands each list block to the caller the
//! moment it fills, so it holds at most one partial block per tree level: with the defaults,
//! 128 KiB per level, and three levels cover 4096³ chunks (≈ 4 PiB at a 64 KiB average).
//! [`ChunkList::for_each_chunk`] walks a list back, holding one block per level.
//!
//! # List block format, version 1
//!
//! All integers are big-endian.
//!
//! | offset | size      | field    | meaning                                                         |
//! |--------|-----------|----------|-----------------------------------------------------------------|
//! | 0      | 4         | magic    | `"DZCL"` (`44 5A 43 4C`)                                        |
//! | 4      | 1         | version  | `1`                                                             |
//! | 5      | 1         | level    | `0`: the ids are content chunk ids; `n > 0`: ids of level `n-1` list blocks |
//! | 6      | 2         | reserved | `0`                                                             |
//! | 8      | 4         | count    | number of ids, `1 ..= 65536`                                    |
//! | 12     | 32 × count| ids      | 32-byte chunk ids, in file order                                |
//!
//! The block is exactly `12 + 32 × count` bytes. A reader rejects anything else (short input,
//! wrong magic, unknown version, non-zero reserved bits, a count of 0 or above 65536, trailing or
//! missing bytes) with a distinct [`ListBlockError`], and checks while walking that each block sits
//! at the level its parent implies and that the leaves add up to the recorded chunk count.
//!
//! The builder fills every block to [`ChunkListLimits::block_capacity`] ids except the last one of
//! each level, so the tree for a given list and limits is unique, and equal files produce equal
//! blocks (which then deduplicate like content chunks).
//!
//! Example: level 0, two ids `00…00` and `ff…ff`:
//!
//! ```text
//! 44 5a 43 4c 01 00 00 00 00 00 00 02 | 00 × 32 | ff × 32
//! ```

use std::fmt;

/// Length of a chunk id in bytes.
pub const CHUNK_ID_LEN: usize = 32;
/// The list block magic, `"DZCL"`.
pub const LIST_BLOCK_MAGIC: [u8; 4] = *b"DZCL";
/// The list block format version this crate writes and reads.
pub const LIST_BLOCK_VERSION: u8 = 1;
/// Length of the list block header in bytes.
pub const LIST_BLOCK_HEADER_LEN: usize = 12;
/// Largest id count a list block may hold (2 MiB of ids); readers reject more.
pub const MAX_LIST_BLOCK_IDS: usize = 65536;

/// A 32-byte chunk id, as stored in chunk lists.
pub type RawChunkId = [u8; CHUNK_ID_LEN];

/// How many ids a chunk list keeps inline and how many go in one list block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkListLimits {
    inline_max: usize,
    block_capacity: usize,
}

impl ChunkListLimits {
    /// 4096 ids inline (128 KiB), 4096 ids per list block (128 KiB + 12 bytes).
    pub const DEFAULT: ChunkListLimits = ChunkListLimits {
        inline_max: 4096,
        block_capacity: 4096,
    };

    /// Validates limits: `block_capacity` in `2 ..= 65536`, `inline_max ≤ 65536`.
    pub fn new(inline_max: usize, block_capacity: usize) -> Result<Self, ChunkListLimitsError> {
        if !(2..=MAX_LIST_BLOCK_IDS).contains(&block_capacity) {
            return Err(ChunkListLimitsError::BlockCapacity { block_capacity });
        }
        if inline_max > MAX_LIST_BLOCK_IDS {
            return Err(ChunkListLimitsError::InlineMax { inline_max });
        }
        Ok(Self {
            inline_max,
            block_capacity,
        })
    }

    /// Most ids kept inline (in the file record, or as the root of a tree).
    pub const fn inline_max(&self) -> usize {
        self.inline_max
    }

    /// Ids per list block.
    pub const fn block_capacity(&self) -> usize {
        self.block_capacity
    }
}

impl Default for ChunkListLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why [`ChunkListLimits::new`] refused the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkListLimitsError {
    /// The block capacity is outside `2 ..= 65536`.
    #[error(
        "list block capacity {block_capacity} is out of range: it must be between 2 and {MAX_LIST_BLOCK_IDS} ids"
    )]
    BlockCapacity {
        /// The rejected capacity.
        block_capacity: usize,
    },
    /// The inline limit is above 65536.
    #[error(
        "inline chunk list limit {inline_max} is too large: it must be at most {MAX_LIST_BLOCK_IDS} ids"
    )]
    InlineMax {
        /// The rejected limit.
        inline_max: usize,
    },
}

/// A finished chunk list, as stored in a file record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkList {
    /// The chunk ids themselves, in file order.
    Inline(Vec<RawChunkId>),
    /// A tree of list blocks.
    Indirect {
        /// Level of the blocks named in `root`, plus one: `1` means `root` holds ids of level 0
        /// blocks (which hold chunk ids).
        depth: u8,
        /// Ids of the top-level list blocks, in file order.
        root: Vec<RawChunkId>,
        /// Number of content chunks in the whole tree.
        total_chunks: u64,
    },
}

impl ChunkList {
    /// Number of content chunks in the list.
    pub fn total_chunks(&self) -> u64 {
        match self {
            ChunkList::Inline(ids) => ids.len() as u64,
            ChunkList::Indirect { total_chunks, .. } => *total_chunks,
        }
    }

    /// Visits every content chunk id in file order.
    ///
    /// `fetch` returns the plaintext of a list block given its id (the caller downloads, opens
    /// and verifies it). At most one block per tree level is held at a time. Malformed blocks,
    /// blocks at the wrong level and a wrong total are errors, never panics.
    pub fn for_each_chunk<E, F, V>(&self, mut fetch: F, mut visit: V) -> Result<(), WalkError<E>>
    where
        F: FnMut(&RawChunkId) -> Result<Vec<u8>, E>,
        V: FnMut(&RawChunkId) -> Result<(), E>,
    {
        match self {
            ChunkList::Inline(ids) => ids
                .iter()
                .try_for_each(|id| visit(id).map_err(WalkError::Callback)),
            ChunkList::Indirect {
                depth,
                root,
                total_chunks,
            } => {
                if *depth == 0 {
                    return Err(WalkError::ZeroDepth);
                }
                let mut seen = 0u64;
                for id in root {
                    walk_block(id, depth - 1, &mut fetch, &mut visit, &mut seen)?;
                }
                if seen != *total_chunks {
                    return Err(WalkError::CountMismatch {
                        expected: *total_chunks,
                        found: seen,
                    });
                }
                Ok(())
            }
        }
    }
}

fn walk_block<E, F, V>(
    id: &RawChunkId,
    level: u8,
    fetch: &mut F,
    visit: &mut V,
    seen: &mut u64,
) -> Result<(), WalkError<E>>
where
    F: FnMut(&RawChunkId) -> Result<Vec<u8>, E>,
    V: FnMut(&RawChunkId) -> Result<(), E>,
{
    let bytes = fetch(id).map_err(WalkError::Callback)?;
    let block = ListBlock::decode(&bytes).map_err(|source| WalkError::Block { id: *id, source })?;
    if block.level() != level {
        return Err(WalkError::WrongLevel {
            id: *id,
            expected: level,
            found: block.level(),
        });
    }
    for child in block.ids() {
        if level == 0 {
            visit(&child).map_err(WalkError::Callback)?;
            *seen += 1;
        } else {
            walk_block(&child, level - 1, fetch, visit, seen)?;
        }
    }
    Ok(())
}

/// Why walking a [`ChunkList`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalkError<E> {
    /// `fetch` or `visit` failed.
    #[error("fetching or visiting a chunk failed")]
    Callback(#[source] E),
    /// A list block is malformed.
    #[error("list block {} is malformed", hex_prefix(.id))]
    Block {
        /// Id of the bad block.
        id: RawChunkId,
        /// What is wrong with it.
        #[source]
        source: ListBlockError,
    },
    /// A list block is at another level than its place in the tree requires (a block from
    /// another file or another level was substituted).
    #[error("list block {} is at level {found} but its place in the tree needs level {expected}", hex_prefix(.id))]
    WrongLevel {
        /// Id of the bad block.
        id: RawChunkId,
        /// The level its parent implies.
        expected: u8,
        /// The level the block claims.
        found: u8,
    },
    /// An indirect list claims depth 0.
    #[error("indirect chunk list has depth 0; an indirect list needs depth 1 or more")]
    ZeroDepth,
    /// The leaves do not add up to the recorded chunk count.
    #[error("chunk list records {expected} chunks but its blocks hold {found}")]
    CountMismatch {
        /// The count in the record.
        expected: u64,
        /// The number of chunk ids found.
        found: u64,
    },
}

fn hex_prefix(id: &RawChunkId) -> String {
    id.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A decoded view of a list block; see the [module docs](self) for the format.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ListBlock<'a> {
    level: u8,
    ids: &'a [u8],
}

impl fmt::Debug for ListBlock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListBlock")
            .field("level", &self.level)
            .field("len", &self.len())
            .finish()
    }
}

impl<'a> ListBlock<'a> {
    /// Parses and validates a list block.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, ListBlockError> {
        let (header, ids) = bytes
            .split_first_chunk::<LIST_BLOCK_HEADER_LEN>()
            .ok_or(ListBlockError::TooShort { len: bytes.len() })?;
        let [m0, m1, m2, m3, version, level, r0, r1, c0, c1, c2, c3] = *header;
        if [m0, m1, m2, m3] != LIST_BLOCK_MAGIC {
            return Err(ListBlockError::BadMagic);
        }
        if version != LIST_BLOCK_VERSION {
            return Err(ListBlockError::UnsupportedVersion { version });
        }
        if [r0, r1] != [0, 0] {
            return Err(ListBlockError::ReservedNotZero);
        }
        let count = u32::from_be_bytes([c0, c1, c2, c3]);
        if count == 0 {
            return Err(ListBlockError::Empty);
        }
        let count = count as usize;
        if count > MAX_LIST_BLOCK_IDS {
            return Err(ListBlockError::TooManyIds { count });
        }
        let expected = count * CHUNK_ID_LEN;
        if ids.len() != expected {
            return Err(ListBlockError::LengthMismatch {
                count,
                expected: LIST_BLOCK_HEADER_LEN + expected,
                actual: bytes.len(),
            });
        }
        Ok(Self { level, ids })
    }

    /// Level of the block: 0 holds content chunk ids, `n` holds ids of level `n-1` blocks.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// Number of ids (at least 1).
    pub fn len(&self) -> usize {
        self.ids.len() / CHUNK_ID_LEN
    }

    /// Always false: a valid block holds at least one id.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ids, in file order.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = RawChunkId> + 'a {
        self.ids
            .chunks_exact(CHUNK_ID_LEN)
            .map(|c| c.try_into().unwrap_or([0; CHUNK_ID_LEN]))
    }

    /// Encodes a block into `out` (cleared first). `ids` must hold `1 ..= 65536` ids.
    fn encode(level: u8, ids: &[RawChunkId], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(LIST_BLOCK_HEADER_LEN + ids.len() * CHUNK_ID_LEN);
        out.extend_from_slice(&LIST_BLOCK_MAGIC);
        out.extend_from_slice(&[LIST_BLOCK_VERSION, level, 0, 0]);
        // `ids.len()` is at most the block capacity, 65536.
        out.extend_from_slice(&u32::try_from(ids.len()).unwrap_or(u32::MAX).to_be_bytes());
        for id in ids {
            out.extend_from_slice(id);
        }
    }
}

/// Why a list block was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListBlockError {
    /// Shorter than the 12-byte header.
    #[error("list block is {len} bytes, shorter than its {LIST_BLOCK_HEADER_LEN}-byte header")]
    TooShort {
        /// Length of the input.
        len: usize,
    },
    /// Does not start with `"DZCL"`.
    #[error("not a list block: the magic bytes are not \"DZCL\"")]
    BadMagic,
    /// A format version this build does not know.
    #[error(
        "list block version {version} is not supported (this build reads version {LIST_BLOCK_VERSION}); upgrade the client"
    )]
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The reserved header bytes are not zero.
    #[error("list block reserved header bytes are not zero")]
    ReservedNotZero,
    /// The count is 0.
    #[error("list block holds no ids; a block holds at least one")]
    Empty,
    /// The count is above 65536.
    #[error("list block claims {count} ids, more than the limit of {MAX_LIST_BLOCK_IDS}")]
    TooManyIds {
        /// The claimed count.
        count: usize,
    },
    /// The length does not match the count (truncated or trailing bytes).
    #[error("list block of {count} ids must be {expected} bytes, got {actual}")]
    LengthMismatch {
        /// The claimed count.
        count: usize,
        /// The length the count implies.
        expected: usize,
        /// The actual length.
        actual: usize,
    },
}

/// Builds a [`ChunkList`] from chunk ids pushed one at a time, in bounded memory.
///
/// Each time a list block fills, the builder passes its encoded bytes to the `emit` callback,
/// which must store it as a chunk and return its chunk id. Memory stays at one partial block per
/// tree level, whatever the number of chunks.
///
/// ```
/// use dooz_client::{ChunkList, ChunkListBuilder, ChunkListLimits};
///
/// let mut builder = ChunkListBuilder::new(ChunkListLimits::new(2, 2)?);
/// let mut blocks = Vec::new();
/// let mut emit = |block: &[u8]| {
///     blocks.push(block.to_vec());
///     Ok::<_, std::convert::Infallible>([blocks.len() as u8; 32]) // really: seal, store, return id
/// };
/// for i in 0..5u8 {
///     builder.push([i; 32], &mut emit)?;
/// }
/// let list = builder.finish(&mut emit)?;
/// assert_eq!(list.total_chunks(), 5);
/// assert!(matches!(list, ChunkList::Indirect { depth: 2, .. }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ChunkListBuilder {
    limits: ChunkListLimits,
    /// `levels[k]`: ids of level `k - 1` blocks not yet in a level `k` block (level 0: chunk ids).
    levels: Vec<Vec<RawChunkId>>,
    /// Reused encoding buffer.
    encoded: Vec<u8>,
    total: u64,
    blocks_emitted: u64,
}

impl ChunkListBuilder {
    /// An empty builder.
    pub fn new(limits: ChunkListLimits) -> Self {
        Self {
            limits,
            levels: Vec::new(),
            encoded: Vec::new(),
            total: 0,
            blocks_emitted: 0,
        }
    }

    /// Appends the next chunk id; calls `emit` for every list block this fills.
    pub fn push<E>(
        &mut self,
        id: RawChunkId,
        emit: &mut impl FnMut(&[u8]) -> Result<RawChunkId, E>,
    ) -> Result<(), E> {
        self.total += 1;
        self.push_at(0, id, emit)
    }

    /// Appends `id` to `level`. A level holds up to one full block; the block is emitted only
    /// when one more id arrives, so that a list of exactly `inline_max` ids (or a top level of
    /// exactly `inline_max` block ids) still fits inline.
    fn push_at<E>(
        &mut self,
        mut level: usize,
        mut id: RawChunkId,
        emit: &mut impl FnMut(&[u8]) -> Result<RawChunkId, E>,
    ) -> Result<(), E> {
        let capacity = self.limits.block_capacity;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::with_capacity(capacity));
            }
            let full = self
                .levels
                .get(level)
                .is_some_and(|ids| ids.len() >= capacity);
            let block_id = if full {
                Some(self.emit_level(level, emit)?)
            } else {
                None
            };
            if let Some(ids) = self.levels.get_mut(level) {
                ids.push(id);
            }
            match block_id {
                Some(block_id) => {
                    id = block_id;
                    level += 1;
                }
                None => return Ok(()),
            }
        }
    }

    /// Encodes `levels[level]` as one block, hands it to `emit`, clears the level.
    fn emit_level<E>(
        &mut self,
        level: usize,
        emit: &mut impl FnMut(&[u8]) -> Result<RawChunkId, E>,
    ) -> Result<RawChunkId, E> {
        let ids = self
            .levels
            .get_mut(level)
            .map(std::mem::take)
            .unwrap_or_default();
        // Depth is at most ~64 (u64 chunk count, capacity >= 2), far below u8::MAX.
        ListBlock::encode(level as u8, &ids, &mut self.encoded);
        self.blocks_emitted += 1;
        let id = emit(&self.encoded)?;
        if let Some(slot) = self.levels.get_mut(level) {
            *slot = ids;
            slot.clear();
        }
        Ok(id)
    }

    /// Number of chunk ids pushed so far.
    pub fn total_chunks(&self) -> u64 {
        self.total
    }

    /// Number of list blocks emitted so far.
    pub fn blocks_emitted(&self) -> u64 {
        self.blocks_emitted
    }

    /// Number of tree levels holding ids now.
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// Largest number of ids buffered in any one level; never exceeds the block capacity.
    pub fn max_buffered_per_level(&self) -> usize {
        self.levels.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Flushes partial blocks and returns the list: inline if no block was ever emitted and the
    /// ids fit [`ChunkListLimits::inline_max`], otherwise a tree.
    pub fn finish<E>(
        mut self,
        emit: &mut impl FnMut(&[u8]) -> Result<RawChunkId, E>,
    ) -> Result<ChunkList, E> {
        let mut level = 0;
        loop {
            let top = level + 1 >= self.levels.len();
            let len = self.levels.get(level).map_or(0, Vec::len);
            if top && (level > 0 || self.blocks_emitted == 0) && len <= self.limits.inline_max {
                let ids = self
                    .levels
                    .get_mut(level)
                    .map(std::mem::take)
                    .unwrap_or_default();
                return Ok(if level == 0 {
                    ChunkList::Inline(ids)
                } else {
                    ChunkList::Indirect {
                        depth: level as u8,
                        root: ids,
                        total_chunks: self.total,
                    }
                });
            }
            if len > 0 {
                let id = self.emit_level(level, emit)?;
                self.push_at(level + 1, id, emit)?;
            }
            level += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use super::*;

    fn id(n: u64) -> RawChunkId {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&n.to_be_bytes());
        id[31] = 0xa5;
        id
    }

    /// An in-memory block store: content-addressed by BLAKE3 (standing in for the keyed id).
    #[derive(Default)]
    struct Store {
        blocks: HashMap<RawChunkId, Vec<u8>>,
        emitted: u64,
    }

    impl Store {
        fn emit(&mut self, block: &[u8]) -> Result<RawChunkId, Infallible> {
            let id = *blake3::hash(block).as_bytes();
            self.blocks.insert(id, block.to_vec());
            self.emitted += 1;
            Ok(id)
        }

        fn expand(&self, list: &ChunkList) -> Result<Vec<RawChunkId>, WalkError<String>> {
            let mut out = Vec::new();
            list.for_each_chunk(
                |id| {
                    self.blocks
                        .get(id)
                        .cloned()
                        .ok_or_else(|| "missing".to_owned())
                },
                |id| {
                    out.push(*id);
                    Ok(())
                },
            )?;
            Ok(out)
        }
    }

    fn build(limits: ChunkListLimits, n: u64, store: &mut Store) -> ChunkList {
        let mut b = ChunkListBuilder::new(limits);
        let mut emit = |block: &[u8]| store.emit(block);
        for i in 0..n {
            b.push(id(i), &mut emit).unwrap();
            assert!(b.max_buffered_per_level() <= limits.block_capacity());
        }
        b.finish(&mut emit).unwrap()
    }

    #[test]
    fn format_vector() {
        let mut out = Vec::new();
        ListBlock::encode(0, &[[0; 32], [0xff; 32]], &mut out);
        let mut expected = vec![0x44, 0x5a, 0x43, 0x4c, 1, 0, 0, 0, 0, 0, 0, 2];
        expected.extend_from_slice(&[0; 32]);
        expected.extend_from_slice(&[0xff; 32]);
        assert_eq!(out, expected);
        let block = ListBlock::decode(&out).unwrap();
        assert_eq!(block.level(), 0);
        assert_eq!(block.len(), 2);
        assert_eq!(block.ids().collect::<Vec<_>>(), [[0; 32], [0xff; 32]]);
    }

    #[test]
    fn decode_rejects_each_malformation() {
        let mut good = Vec::new();
        ListBlock::encode(3, &[id(1), id(2), id(3)], &mut good);
        assert!(ListBlock::decode(&good).is_ok());
        for len in 0..good.len() {
            let err = ListBlock::decode(&good[..len]).unwrap_err();
            if len < LIST_BLOCK_HEADER_LEN {
                assert_eq!(err, ListBlockError::TooShort { len });
            } else {
                assert!(matches!(
                    err,
                    ListBlockError::LengthMismatch { count: 3, .. }
                ));
            }
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            ListBlock::decode(&long),
            Err(ListBlockError::LengthMismatch { .. })
        ));
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            ListBlock::decode(&b).unwrap_err()
        };
        assert_eq!(with(0, b'X'), ListBlockError::BadMagic);
        assert_eq!(
            with(4, 2),
            ListBlockError::UnsupportedVersion { version: 2 }
        );
        assert_eq!(with(7, 1), ListBlockError::ReservedNotZero);
        let mut empty = good[..LIST_BLOCK_HEADER_LEN].to_vec();
        empty[8..12].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(ListBlock::decode(&empty), Err(ListBlockError::Empty));
        let mut huge = good[..LIST_BLOCK_HEADER_LEN].to_vec();
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            ListBlock::decode(&huge),
            Err(ListBlockError::TooManyIds {
                count: u32::MAX as usize
            })
        );
    }

    #[test]
    fn limits_validation() {
        assert!(ChunkListLimits::new(0, 2).is_ok());
        assert_eq!(
            ChunkListLimits::new(10, 1),
            Err(ChunkListLimitsError::BlockCapacity { block_capacity: 1 })
        );
        assert_eq!(
            ChunkListLimits::new(70000, 100),
            Err(ChunkListLimitsError::InlineMax { inline_max: 70000 })
        );
    }

    #[test]
    fn inline_up_to_the_limit() {
        let mut store = Store::default();
        for n in [0, 1, 4095, 4096] {
            let list = build(ChunkListLimits::DEFAULT, n, &mut store);
            let ChunkList::Inline(ids) = &list else {
                panic!("{n} ids should stay inline");
            };
            assert_eq!(ids.len() as u64, n);
            assert_eq!(
                store.expand(&list).unwrap(),
                (0..n).map(id).collect::<Vec<_>>()
            );
        }
        assert_eq!(store.emitted, 0);
    }

    #[test]
    fn indirect_round_trips_at_every_shape() {
        let limits = ChunkListLimits::new(3, 4).unwrap();
        for n in 0..200u64 {
            let mut store = Store::default();
            let list = build(limits, n, &mut store);
            assert_eq!(list.total_chunks(), n);
            assert_eq!(
                store.expand(&list).unwrap(),
                (0..n).map(id).collect::<Vec<_>>(),
                "n={n}"
            );
            match &list {
                ChunkList::Inline(ids) => assert!(n <= 3 && ids.len() as u64 == n),
                ChunkList::Indirect { depth, root, .. } => {
                    assert!(n > 3);
                    assert!(!root.is_empty() && root.len() <= 3, "n={n}");
                    // Depth is the smallest that fits: capacity^depth * inline_max >= n.
                    let fits = |d: u32| 4u64.pow(d) * 3 >= n;
                    assert!(fits(u32::from(*depth)), "n={n}");
                    assert!(
                        *depth == 1 || !fits(u32::from(*depth) - 1),
                        "n={n} depth={depth}"
                    );
                }
            }
        }
    }

    #[test]
    fn identical_lists_give_identical_blocks() {
        let limits = ChunkListLimits::new(2, 3).unwrap();
        let (mut a, mut b) = (Store::default(), Store::default());
        let la = build(limits, 50, &mut a);
        let lb = build(limits, 50, &mut b);
        assert_eq!(la, lb);
        assert_eq!(a.blocks, b.blocks);
    }

    #[test]
    fn walk_detects_tampering() {
        let limits = ChunkListLimits::new(2, 3).unwrap();
        let mut store = Store::default();
        let list = build(limits, 20, &mut store);
        let ChunkList::Indirect {
            depth,
            root,
            total_chunks,
        } = list.clone()
        else {
            panic!("expected a tree");
        };
        // 20 ids: 7 leaf blocks, 3 level-1 blocks, too many for the root (2): depth 3.
        assert_eq!(depth, 3);
        // Wrong count.
        let wrong = ChunkList::Indirect {
            depth,
            root: root.clone(),
            total_chunks: total_chunks + 1,
        };
        assert!(matches!(
            store.expand(&wrong),
            Err(WalkError::CountMismatch {
                expected: 21,
                found: 20
            })
        ));
        // Wrong depth: the root's blocks are level 2, not level 1.
        let shallow = ChunkList::Indirect {
            depth: 2,
            root: root.clone(),
            total_chunks,
        };
        assert!(matches!(
            store.expand(&shallow),
            Err(WalkError::WrongLevel {
                expected: 1,
                found: 2,
                ..
            })
        ));
        let zero = ChunkList::Indirect {
            depth: 0,
            root: root.clone(),
            total_chunks,
        };
        assert!(matches!(store.expand(&zero), Err(WalkError::ZeroDepth)));
        // A corrupted block.
        let mut bad = Store {
            blocks: store.blocks.clone(),
            emitted: 0,
        };
        if let Some(block) = bad.blocks.get_mut(&root[0]) {
            block.truncate(20);
        }
        assert!(matches!(
            bad.expand(&list),
            Err(WalkError::Block {
                source: ListBlockError::LengthMismatch { .. },
                ..
            })
        ));
        // A missing block surfaces the callback's error.
        let empty = Store::default();
        assert!(matches!(empty.expand(&list), Err(WalkError::Callback(e)) if e == "missing"));
    }

    #[test]
    fn ten_million_ids_in_bounded_memory() {
        let limits = ChunkListLimits::DEFAULT;
        let cap = limits.block_capacity();
        let mut b = ChunkListBuilder::new(limits);
        let mut blocks = 0u64;
        let mut leaf_ids = 0u64;
        let mut emit = |block: &[u8]| {
            let parsed = ListBlock::decode(block).expect("builder emits valid blocks");
            if parsed.level() == 0 {
                leaf_ids += parsed.len() as u64;
            }
            blocks += 1;
            Ok::<_, Infallible>(*blake3::hash(block).as_bytes())
        };
        let n = 10_000_000u64;
        for i in 0..n {
            b.push(id(i), &mut emit).unwrap();
            assert!(b.max_buffered_per_level() <= cap);
        }
        assert!(b.depth() <= 2, "depth {}", b.depth());
        let list = b.finish(&mut emit).unwrap();
        assert_eq!(leaf_ids, n);
        // ceil(10M / 4096) = 2442 leaf blocks, which fit inline as the root.
        assert_eq!(blocks, n.div_ceil(cap as u64));
        match list {
            ChunkList::Indirect {
                depth,
                root,
                total_chunks,
            } => {
                assert_eq!((depth, total_chunks), (1, n));
                assert_eq!(root.len() as u64, blocks);
            }
            ChunkList::Inline(_) => panic!("10M ids cannot be inline"),
        }
    }
}
